//! Marathon path ids (`/group/app`): normalisation and syntax.

use regex::Regex;
use std::sync::OnceLock;

/// Segments Marathon reserves for sub-resources; an app may not end with one.
pub const RESERVED_LAST_SEGMENTS: [&str; 3] = ["restart", "tasks", "versions"];

fn segment_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(
            r"^(([a-z0-9]|[a-z0-9][a-z0-9\-]*[a-z0-9])\.)*([a-z0-9]|[a-z0-9][a-z0-9\-]*[a-z0-9])$",
        )
        .unwrap_or_else(|e| panic!("static regex is valid: {e}"))
    })
}

/// Turns whatever a client pasted (`foo`, `/foo/`, `//foo//bar`) into the canonical absolute
/// form `/foo/bar`. Relative ids are taken relative to the root, as Marathon does.
pub fn normalize(id: &str) -> String {
    let mut out = String::with_capacity(id.len() + 1);
    for seg in id.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        out.push_str(seg);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Checks one path segment against Marathon's id rule.
pub fn valid_segment(seg: &str) -> bool {
    segment_regex().is_match(seg)
}

/// Checks a whole (normalised) id; returns the reason when it is not valid.
pub fn check_id(id: &str) -> Result<(), String> {
    let norm = normalize(id);
    if norm == "/" {
        return Err("id must not be empty or the root group".into());
    }
    for seg in norm.split('/').filter(|s| !s.is_empty()) {
        if seg == "." || seg == ".." {
            return Err(format!("path segment '{seg}' is not allowed"));
        }
        if !valid_segment(seg) {
            return Err(format!(
                "'{seg}' must fully match the regular expression \
                 '^(([a-z0-9]|[a-z0-9][a-z0-9\\-]*[a-z0-9])\\.)*([a-z0-9]|[a-z0-9][a-z0-9\\-]*[a-z0-9])$' \
                 (lowercase letters, digits, '-' and '.')"
            ));
        }
    }
    Ok(())
}

/// The parent group of an id: `/a/b/c` -> `/a/b`, `/a` -> `/`.
pub fn parent(id: &str) -> String {
    match id.rfind('/') {
        Some(0) | None => "/".into(),
        Some(i) => id[..i].to_string(),
    }
}

/// True when `id` is `group` itself or lies below it.
pub fn is_within(id: &str, group: &str) -> bool {
    group == "/" || id == group || id.starts_with(&format!("{group}/"))
}

/// Marathon's flat form of an id (its `safePath`), used in task ids and the `text/plain`
/// task list: no leading `/`, `_` for each `/`. `/shop/web` -> `shop_web`.
pub fn flat_name(id: &str) -> String {
    id.trim_start_matches('/').replace('/', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_name_joins_segments_with_underscores() {
        assert_eq!(flat_name("/shop/web"), "shop_web");
        assert_eq!(flat_name("/web"), "web");
    }

    #[test]
    fn normalizes_slashes() {
        assert_eq!(normalize("foo"), "/foo");
        assert_eq!(normalize("//foo//bar/"), "/foo/bar");
        assert_eq!(normalize(""), "/");
    }

    #[test]
    fn checks_segments() {
        assert!(check_id("/prod/web-1").is_ok());
        assert!(check_id("/a.b/c").is_ok());
        assert!(check_id("/Upper").is_err());
        assert!(check_id("/-lead").is_err());
        assert!(check_id("/trail-").is_err());
        assert!(check_id("/under_score").is_err());
        assert!(check_id("/").is_err());
    }

    #[test]
    fn parents_and_membership() {
        assert_eq!(parent("/a/b/c"), "/a/b");
        assert_eq!(parent("/a"), "/");
        assert!(is_within("/a/b", "/a"));
        assert!(!is_within("/ab", "/a"));
        assert!(is_within("/x", "/"));
    }
}
