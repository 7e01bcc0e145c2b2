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

/// Formats epoch milliseconds in Marathon's format.
pub fn format_millis(ms: i64) -> String {
    Timestamp::from_millisecond(ms)
        .map(format)
        .unwrap_or_else(|_| format(Timestamp::UNIX_EPOCH))
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
    fn millis_round_trip() {
        assert_eq!(format_millis(1_706_702_400_123), "2024-01-31T12:00:00.123Z");
        assert_eq!(
            parse("2024-01-31T12:00:00.123Z").unwrap().as_millisecond(),
            1_706_702_400_123
        );
    }
}
