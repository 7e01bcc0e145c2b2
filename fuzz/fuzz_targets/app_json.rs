//! App JSON as a client sends it (`POST /v2/apps`): parse, normalise and validate
//! (`berth_core::validate::app_from_json`) must never panic, and an accepted app must be
//! accepted again, unchanged, from its own JSON (what the server stores and merges partial
//! updates into).
#![no_main]

use berth_core::validate::app_from_json;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(app) = app_from_json(v) else {
        return;
    };
    // What the scheduler and the agent ask of an accepted app.
    let _ = app.driver();
    let _ = app.requested_host_ports();
    let _ = app.host_port_names();
    let _ = app.service_ports();
    let _ = app.config_version();
    let _ = app.log_rotation();
    let _ = app.pids_limit();
    let _ = app.spread();
    let _ = app.pinned_cpus();
    let _ = app.cpu_quota();
    let _ = app.auto_uid();
    let stored = serde_json::to_value(&app).expect("an accepted app serialises");
    let again = app_from_json(stored.clone())
        .unwrap_or_else(|e| panic!("an accepted app's own JSON is rejected: {e}\n{stored:#}"));
    assert_eq!(
        again, app,
        "the app changed on a round trip through its JSON"
    );
});
