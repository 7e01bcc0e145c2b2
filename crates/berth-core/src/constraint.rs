//! Placement constraints: `[field, OPERATOR, value?]`, exactly Marathon's seven operators.

use crate::error::ValidationErrors;
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConstraintOp {
    Unique,
    Cluster,
    GroupBy,
    Like,
    Unlike,
    MaxPer,
    Is,
}

impl ConstraintOp {
    pub const ALL_NAMES: &'static str = "UNIQUE, CLUSTER, GROUP_BY, LIKE, MAX_PER, UNLIKE or IS";

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "UNIQUE" => Self::Unique,
            "CLUSTER" => Self::Cluster,
            "GROUP_BY" => Self::GroupBy,
            "LIKE" => Self::Like,
            "UNLIKE" => Self::Unlike,
            "MAX_PER" => Self::MaxPer,
            "IS" => Self::Is,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unique => "UNIQUE",
            Self::Cluster => "CLUSTER",
            Self::GroupBy => "GROUP_BY",
            Self::Like => "LIKE",
            Self::Unlike => "UNLIKE",
            Self::MaxPer => "MAX_PER",
            Self::Is => "IS",
        }
    }
}

impl fmt::Display for ConstraintOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed, validated constraint. `field` is `hostname`, `@region`, `@zone` or an attribute.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Constraint {
    pub field: String,
    pub op: ConstraintOp,
    pub value: Option<String>,
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}:{}:{}", self.field, self.op, v),
            None => write!(f, "{}:{}", self.field, self.op),
        }
    }
}

impl Constraint {
    /// Parses the JSON array form. Errors are reported at paths relative to the constraint.
    pub fn parse(parts: &[String]) -> Result<Constraint, ValidationErrors> {
        let mut errs = ValidationErrors::new();
        if parts.len() < 2 || parts.len() > 3 {
            errs.add(
                "",
                "Each constraint must have either 2 or 3 fields: [field, operator] or [field, operator, value]",
            );
            return Err(errs);
        }
        let field = parts[0].clone();
        if field.is_empty() {
            errs.add("", "constraint field must not be empty");
        }
        let Some(op) = ConstraintOp::parse(&parts[1]) else {
            errs.add(
                "",
                format!(
                    "'{}' is not a valid operator: operator must be one of the following {}",
                    parts[1],
                    ConstraintOp::ALL_NAMES
                ),
            );
            return Err(errs);
        };
        let value = parts.get(2).cloned();
        match (op, value.as_deref()) {
            (ConstraintOp::Unique, Some(_)) => errs.add("", "UNIQUE does not take a value"),
            (ConstraintOp::GroupBy, Some(v)) if v.parse::<u32>().is_err() => errs.add(
                "",
                format!("GROUP_BY may either have no value or an integer value, got '{v}'"),
            ),
            (ConstraintOp::MaxPer, Some(v)) if v.parse::<u32>().map(|n| n == 0).unwrap_or(true) => {
                errs.add(
                    "",
                    format!("MAX_PER requires a positive integer value, got '{v}'"),
                )
            }
            (ConstraintOp::MaxPer, None) => errs.add("", "MAX_PER requires an integer value"),
            (ConstraintOp::Like | ConstraintOp::Unlike, None) => {
                errs.add("", format!("{op} requires a regular expression value"))
            }
            (ConstraintOp::Like | ConstraintOp::Unlike, Some(v)) => {
                if let Err(e) = regex::Regex::new(&format!("^(?:{v})$")) {
                    errs.add("", format!("'{v}' is not a valid regular expression: {e}"));
                }
            }
            (ConstraintOp::Is, None) => errs.add("", "IS requires a value"),
            (ConstraintOp::Is, Some(v))
                if !v
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_/.-".contains(c)) =>
            {
                errs.add("", format!("IS value '{v}' must match ^[a-zA-Z0-9_/.-]*$"))
            }
            _ => {}
        }
        errs.into_result()?;
        Ok(Constraint { field, op, value })
    }

    /// The JSON array form, as Marathon returns it.
    pub fn to_parts(&self) -> Vec<String> {
        let mut v = vec![self.field.clone(), self.op.as_str().to_string()];
        if let Some(val) = &self.value {
            v.push(val.clone());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(parts: &[&str]) -> Result<Constraint, ValidationErrors> {
        Constraint::parse(&parts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn parses_every_operator() {
        assert_eq!(p(&["hostname", "UNIQUE"]).unwrap().op, ConstraintOp::Unique);
        assert_eq!(
            p(&["rack", "CLUSTER", "r1"]).unwrap().op,
            ConstraintOp::Cluster
        );
        assert_eq!(p(&["rack", "CLUSTER"]).unwrap().value, None);
        assert_eq!(p(&["rack", "GROUP_BY"]).unwrap().op, ConstraintOp::GroupBy);
        assert_eq!(
            p(&["rack", "GROUP_BY", "3"]).unwrap().value.as_deref(),
            Some("3")
        );
        assert_eq!(
            p(&["rack", "LIKE", "r[0-9]"]).unwrap().op,
            ConstraintOp::Like
        );
        assert_eq!(
            p(&["rack", "UNLIKE", "r1"]).unwrap().op,
            ConstraintOp::Unlike
        );
        assert_eq!(
            p(&["rack", "MAX_PER", "2"]).unwrap().op,
            ConstraintOp::MaxPer
        );
        assert_eq!(
            p(&["rack", "IS", "r-1.a/b_c"]).unwrap().op,
            ConstraintOp::Is
        );
    }

    #[test]
    fn rejects_bad_constraints_with_reasons() {
        let e = p(&["hostname", "UNIQUEE"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("operator must be one of the following")
        );
        assert!(
            p(&["hostname"])
                .unwrap_err()
                .to_string()
                .contains("2 or 3 fields")
        );
        assert!(p(&["hostname", "UNIQUE", "x"]).is_err());
        assert!(p(&["rack", "GROUP_BY", "x"]).is_err());
        assert!(p(&["rack", "MAX_PER"]).is_err());
        assert!(p(&["rack", "MAX_PER", "0"]).is_err());
        assert!(
            p(&["rack", "LIKE", "("])
                .unwrap_err()
                .to_string()
                .contains("regular expression")
        );
        assert!(p(&["rack", "IS", "a b"]).is_err());
    }
}
