//! Timestamps (`berth_core::time`): parsing any string never panics; a parsed timestamp
//! formats in Marathon's form, which parses back to itself; formatting any
//! epoch millisecond value never panics, and from year 0000 to `time::last_millis()`
//! (9999-12-30T22:00:00.999Z) its text parses back. (Before year 0, `%Y` writes `-6950`, which no RFC 3339 parser reads; the
//! server only formats its own clock's times.)
#![no_main]

use berth_core::time;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 8 {
        let ms = i64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
        let s = time::format_millis(ms);
        // 0000-01-01T00:00:00Z .. jiff's last instant, 9999-12-30T22:00:00.999Z
        let last = time::last_millis();
        if (-62_167_219_200_000..=last).contains(&ms) {
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
