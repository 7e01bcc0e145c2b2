//! Timestamps in the one format every Marathon client parses: `2024-01-31T12:00:00.123Z`.
//! (marathon-python uses `%Y-%m-%dT%H:%M:%S.%fZ`; `+00:00` offsets or nanoseconds break it.)

use jiff::Timestamp;

/// Formats a timestamp as UTC with millisecond precision and a `Z` suffix.
pub fn format(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// The current time in Marathon's format.
pub fn now() -> String {
    format(Timestamp::now())
}

/// Earliest and latest instants RFC 3339 can write (years 0000 to 9999).
const FIRST_MS: i64 = -62_167_219_200_000;
const LAST_MS: i64 = 253_402_300_799_999;

/// Parses any RFC 3339 timestamp (what we and Marathon emit). Years outside 0000 to 9999
/// (jiff also reads ISO 8601's signed six-digit years, `-002024...`) are refused: they would
/// be formatted as text that no RFC 3339 parser reads back.
pub fn parse(s: &str) -> Option<Timestamp> {
    s.parse::<Timestamp>()
        .ok()
        .filter(|t| (FIRST_MS..=LAST_MS).contains(&t.as_millisecond()))
}

/// Milliseconds since the Unix epoch, for arithmetic on stored timestamps.
pub fn now_millis() -> i64 {
    Timestamp::now().as_millisecond()
}

/// The last epoch millisecond that formats and parses back unchanged (jiff's last instant,
/// 9999-12-30T22:00:00.999Z).
pub fn last_millis() -> i64 {
    Timestamp::MAX.as_millisecond()
}

/// Formats epoch milliseconds in Marathon's format. Values beyond what jiff represents
/// (about years -9999 to 9999) are clamped to its first or last instant.
pub fn format_millis(ms: i64) -> String {
    format(from_millis_clamped(ms))
}

/// `Timestamp::from_millisecond` refuses the last 999 ms jiff can represent
/// (9999-12-30T22:00:00.001Z and later), so build it from seconds and nanoseconds instead.
fn from_millis_clamped(ms: i64) -> Timestamp {
    if ms <= Timestamp::MIN.as_millisecond() {
        return Timestamp::MIN;
    }
    if ms >= Timestamp::MAX.as_millisecond() {
        return Timestamp::MAX;
    }
    // Sub-second part as nanoseconds: below 1e9, so the cast cannot truncate.
    let nanos = (ms.rem_euclid(1000) * 1_000_000) as i32;
    Timestamp::new(ms.div_euclid(1000), nanos).unwrap_or(Timestamp::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn years_rfc_3339_cannot_write_are_refused() {
        // Found by `cargo fuzz run time`: it parsed, and formatted as "-2024-01-13T...".
        assert_eq!(parse("-0020240113T01-00"), None);
        assert_eq!(parse("+010000-01-01T00:00:00Z"), None);
        let first = parse("0000-01-01T00:00:00Z").expect("year 0");
        assert_eq!(parse(&format(first)), Some(first));
        // jiff's last instant is in 9999-12-30 (UTC).
        let last = parse("9999-12-30T00:00:00Z").expect("year 9999");
        assert_eq!(parse(&format(last)), Some(last));
    }

    #[test]
    fn format_has_millis_and_z() {
        let ts: Timestamp = "2024-01-31T12:00:00.123456789Z".parse().unwrap();
        assert_eq!(format(ts), "2024-01-31T12:00:00.123Z");
        let ts: Timestamp = "2024-01-31T12:00:00Z".parse().unwrap();
        assert_eq!(format(ts), "2024-01-31T12:00:00.000Z");
    }

    #[test]
    fn millis_in_jiffs_last_second_round_trip() {
        // Found by `cargo fuzz run time` (input AaOLzHfmAAAhNTk=): from_millisecond refused
        // it and the text came out as 1970-01-01.
        let ms = 253_402_207_200_001;
        let text = format_millis(ms);
        assert_eq!(text, "9999-12-30T22:00:00.001Z");
        assert_eq!(parse(&text).map(|t| t.as_millisecond()), Some(ms));
        let last = last_millis();
        assert_eq!(
            parse(&format_millis(last)).map(|t| t.as_millisecond()),
            Some(last)
        );
    }

    #[test]
    fn millis_out_of_range_clamp_instead_of_jumping_to_1970() {
        assert_eq!(format_millis(i64::MAX), format(Timestamp::MAX));
        assert_eq!(format_millis(i64::MIN), format(Timestamp::MIN));
        assert_eq!(format_millis(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn millis_round_trip() {
        assert_eq!(format_millis(1_706_702_400_123), "2024-01-31T12:00:00.123Z");
        assert_eq!(
            parse("2024-01-31T12:00:00.123Z").unwrap().as_millisecond(),
            1_706_702_400_123
        );
    }
}
