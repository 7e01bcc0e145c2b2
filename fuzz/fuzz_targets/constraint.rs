//! Placement constraints (`berth_core::constraint::Constraint::parse`): the input is split
//! into the JSON array's fields at NUL bytes. Never panics; an accepted constraint gives back
//! its fields (`to_parts`) and parses again to itself.
#![no_main]

use berth_core::constraint::Constraint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parts: Vec<String> = text.split('\0').map(str::to_string).collect();
    let Ok(c) = Constraint::parse(&parts) else {
        return;
    };
    assert_eq!(c.to_parts(), parts, "to_parts differs from the input");
    assert_eq!(Constraint::parse(&c.to_parts()).ok(), Some(c.clone()));
    let _ = c.to_string();
});
