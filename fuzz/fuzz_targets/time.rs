//! Timestamps (`berth_core::time`): parsing any string never panics; a parsed timestamp
//! formats in Marathon's form, which parses back to itself; formatting any
//! epoch millisecond value never panics, and within RFC 3339's years (0000 to 9999) its text
//! parses back. (Before year 0, `%Y` writes `-6950`, which no RFC 3339 parser reads; the
//! server only formats its own clock's times.)
#![no_main]

use berth_core::time;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 8 {
        let ms = i64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
        let s = time::format_millis(ms);
        // 0000-01-01T00:00:00Z .. 9999-12-31T23:59:59.999Z
        if (-62_167_219_200_000..=253_402_300_799_999).contains(&ms) {
            let back = time::parse(&s)
                .unwrap_or_else(|| panic!("format_millis({ms}) = {s:?} does not parse"));
            assert_eq!(back.as_millisecond(), ms, "{s:?}");
        }
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(ts) = time::parse(text) {
        let s = time::format(ts);
        let back =
            time::parse(&s).unwrap_or_else(|| panic!("{s:?} (from {text:?}) does not parse"));
        assert_eq!(time::format(back), s, "{text:?} -> {s:?}");
    }
});
