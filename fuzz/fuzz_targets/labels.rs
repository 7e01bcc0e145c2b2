//! The `BERTH_*` labels (`AppDefinition`'s label parsers, `parse_log_size`) and their check in
//! `validate_app`. The input is `KEY=VALUE` lines; a key without `BERTH_` in front is taken as
//! one of the labels Berth reads, chosen by its first byte. Never panics, and validation agrees
//! with the parsers: an app whose labels all parse passes the label checks.
#![no_main]

use berth_core::app::{
    self, AppDefinition, LABEL_CPU_MODE, LABEL_CPU_QUOTA, LABEL_DRIVER, LABEL_LOG_MAX_FILES,
    LABEL_LOG_MAX_SIZE, LABEL_PIDS_LIMIT, LABEL_PLACEMENT, LABEL_UID,
};
use berth_core::validate;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

const LABELS: [&str; 8] = [
    LABEL_DRIVER,
    LABEL_CPU_QUOTA,
    LABEL_PIDS_LIMIT,
    LABEL_UID,
    LABEL_PLACEMENT,
    LABEL_CPU_MODE,
    LABEL_LOG_MAX_SIZE,
    LABEL_LOG_MAX_FILES,
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = app::parse_log_size(text);
    let mut labels = BTreeMap::new();
    for line in text.split('\n') {
        let (k, v) = line.split_once('=').unwrap_or(("", line));
        let key = if k.starts_with("BERTH_") {
            k.to_string()
        } else {
            let pick = k.bytes().next().unwrap_or(0) as usize % LABELS.len();
            LABELS[pick].to_string()
        };
        // A NUL is refused for any label (not the parsers' business).
        labels.insert(key, v.replace('\0', ""));
    }
    let mut app: AppDefinition =
        serde_json::from_value(serde_json::json!({"id": "/fuzz", "cmd": "true"}))
            .expect("a minimal app");
    app.labels = labels;
    let parsed_ok = [
        app.driver_label().is_ok(),
        app.cpu_quota().is_ok(),
        app.pids_limit().is_ok(),
        app.spread().is_ok(),
        app.pinned_cpus().is_ok(),
        app.log_rotation().is_ok(),
        app.auto_uid().is_ok(),
    ]
    .iter()
    .all(|ok| *ok);
    let _ = app.driver();
    let label_errors: Vec<String> = match validate::validate_app(&app) {
        Ok(()) => vec![],
        Err(e) => {
            e.0.iter()
                .filter(|f| LABELS.iter().any(|l| f.path == format!("/labels/{l}")))
                .map(|f| format!("{f:?}"))
                .collect()
        }
    };
    assert_eq!(
        parsed_ok,
        label_errors.is_empty(),
        "parsers and validation disagree: {label_errors:?}"
    );
});
