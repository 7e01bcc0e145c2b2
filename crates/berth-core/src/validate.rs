//! Turning a client's JSON into a valid, normalised app definition, with Marathon's rules and
//! error messages. Every problem is reported with the path of the field it concerns.

use crate::app::AppDefinition;
use crate::error::ValidationErrors;
use serde_json::Value;

/// Converts a serde path (`healthChecks[0].protocol`) into Marathon's form
/// (`/healthChecks(0)/protocol`).
fn marathon_path(p: &serde_path_to_error::Path) -> String {
    let mut out = String::new();
    for seg in p.iter() {
        match seg {
            serde_path_to_error::Segment::Seq { index } => out.push_str(&format!("({index})")),
            serde_path_to_error::Segment::Map { key } => {
                out.push('/');
                out.push_str(key);
            }
            serde_path_to_error::Segment::Enum { variant } => {
                out.push('/');
                out.push_str(variant);
            }
            serde_path_to_error::Segment::Unknown => out.push_str("/?"),
        }
    }
    if out.is_empty() { "/".into() } else { out }
}

/// Deserialises an app, reporting a wrong type at the path where it occurred.
pub fn parse_app_value(v: Value) -> Result<AppDefinition, ValidationErrors> {
    if !v.is_object() {
        return Err(ValidationErrors::single("/", "expected a JSON object"));
    }
    serde_path_to_error::deserialize::<_, AppDefinition>(v).map_err(|e| {
        let path = marathon_path(e.path());
        ValidationErrors::single(path, e.inner().to_string())
    })
}

/// Folds deprecated forms into current ones and fills defaults that depend on other fields.
pub fn normalize_app(app: &mut AppDefinition) {
    app.id = crate::path::normalize(&app.id);
}

/// Marathon's validation rules for an (already normalised) app.
pub fn validate_app(app: &AppDefinition) -> Result<(), ValidationErrors> {
    let mut errs = ValidationErrors::new();
    if let Err(e) = crate::path::check_id(&app.id) {
        errs.add("/id", e);
    }
    errs.into_result()
}

/// Parse, normalise and validate in one go: what every write endpoint does with a body.
pub fn app_from_json(v: Value) -> Result<AppDefinition, ValidationErrors> {
    let mut app = parse_app_value(v)?;
    normalize_app(&mut app);
    validate_app(&app)?;
    Ok(app)
}
