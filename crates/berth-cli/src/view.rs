//! Lenient accessors and formatters for the server's JSON: a missing or odd field shows as
//! empty / `-` instead of failing the command.

use serde_json::Value;

pub fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

pub fn num(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(0.0)
}

pub fn int(v: &Value, key: &str) -> i64 {
    v.get(key)
        .and_then(|x| x.as_i64().or_else(|| x.as_f64().map(|f| f as i64)))
        .unwrap_or(0)
}

pub fn arr<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// `0.1`, `128`, `1.5`: no trailing zeros, at most 3 decimals.
pub fn fmt_num(x: f64) -> String {
    let text = format!("{x:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".into()
    } else {
        text.to_string()
    }
}

/// `2024-01-01T10:00:00.123Z` -> `2024-01-01T10:00:00Z`; empty -> `-`.
pub fn short_time(ts: &str) -> String {
    if ts.is_empty() {
        return "-".into();
    }
    match (ts.find('.'), ts.ends_with('Z')) {
        (Some(dot), true) if ts[..dot].contains('T') => format!("{}Z", &ts[..dot]),
        _ => ts.to_string(),
    }
}

/// `-` for empty strings.
pub fn or_dash(text: impl Into<String>) -> String {
    let text = text.into();
    if text.is_empty() { "-".into() } else { text }
}

/// A JSON value as a plain string (strings unquoted).
pub fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `k=v, k2=v2` for an object of strings.
pub fn kv_list(v: Option<&Value>) -> String {
    match v.and_then(Value::as_object) {
        Some(m) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", plain(v)))
            .collect::<Vec<_>>()
            .join(", "),
        None => String::new(),
    }
}

/// Appends `Key:` padded to a fixed column, then the value.
pub fn kv(out: &mut String, key: &str, value: &str) {
    let line = format!("{:<16}{}", format!("{key}:"), value);
    out.push_str(line.trim_end());
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn formatting() {
        assert_eq!(fmt_num(0.1), "0.1");
        assert_eq!(fmt_num(128.0), "128");
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(1.25), "1.25");
        assert_eq!(
            short_time("2024-01-01T10:00:00.123Z"),
            "2024-01-01T10:00:00Z"
        );
        assert_eq!(short_time("2024-01-01T10:00:00Z"), "2024-01-01T10:00:00Z");
        assert_eq!(short_time(""), "-");
        assert_eq!(kv_list(Some(&json!({"a": "1", "b": 2}))), "a=1, b=2");
        let mut out = String::new();
        kv(&mut out, "ID", "/web");
        kv(&mut out, "Labels", "");
        assert_eq!(out, "ID:             /web\nLabels:\n");
    }

    #[test]
    fn lenient_access() {
        let v = json!({"a": "x", "n": 2.5, "i": 3, "l": [1]});
        assert_eq!(s(&v, "a"), "x");
        assert_eq!(s(&v, "n"), "");
        assert_eq!(num(&v, "n"), 2.5);
        assert_eq!(int(&v, "i"), 3);
        assert_eq!(int(&v, "missing"), 0);
        assert_eq!(arr(&v, "l").len(), 1);
        assert!(arr(&v, "a").is_empty());
    }
}
