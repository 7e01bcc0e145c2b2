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

/// Parses any RFC 3339 timestamp (what we and Marathon emit).
pub fn parse(s: &str) -> Option<Timestamp> {
    s.parse::<Timestamp>().ok()
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
