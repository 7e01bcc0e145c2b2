//! Standard 5-field cron expressions (a Berth extension; Chronos only has ISO 8601 schedules):
//! `minute hour day-of-month month day-of-week`, each `*`, a value, a range `a-b`, a step
//! `*/n`, `a-b/n` or `a/n` (a to the field's maximum), or a comma list of those. Months and
//! weekdays take English names (`JAN`, `MON`, any case); weekday 0 and 7 are both Sunday.
//! Also `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`.
//!
//! Day matching follows Vixie cron: when both day fields are restricted (neither starts with
//! `*`), a day matches if EITHER matches (`0 0 1 * MON` = the 1st and every Monday); otherwise
//! both must match.
//!
//! This file only matches civil (wall-clock) minutes; turning them into instants in a time zone
//! is the caller's job (see `Schedule::next_after`).

use jiff::civil::{Date, DateTime};
use std::fmt;

/// Upper bound on how far ahead a match is searched for. Every expression accepted by
/// [`Cron::parse`] matches within it: the rarest, Feb 29 on one weekday, recurs every 28 years
/// but skips non-leap centuries (2088, then 2128). A year with no match costs about 12 + 31
/// steps, so the bound is cheap.
const SEARCH_YEARS: i16 = 100;

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// A parsed cron expression: one bit per allowed value of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cron {
    minutes: u64,
    hours: u32,
    /// Bits 1 to 31.
    dom: u32,
    /// Bits 1 to 12.
    months: u16,
    /// Bits 0 (Sunday) to 6.
    dow: u8,
    /// The day-of-month field started with `*` (Vixie's DOM_STAR).
    dom_star: bool,
    /// The day-of-week field started with `*` (Vixie's DOW_STAR).
    dow_star: bool,
    /// The expression as written, whitespace collapsed: what `Display` prints.
    text: String,
}

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const FIELDS: [Field; 5] = [
    Field {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
    },
    Field {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
    },
    Field {
        name: "day of month",
        min: 1,
        max: 31,
        names: &[],
    },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: &MONTHS,
    },
    // 7 is accepted as Sunday and folded onto 0.
    Field {
        name: "day of week",
        min: 0,
        max: 7,
        names: &DAYS,
    },
];

impl Cron {
    /// Parses an expression. Errors name the field (number and meaning) and the bad part.
    pub(crate) fn parse(text: &str) -> Result<Cron, String> {
        let trimmed = text.trim();
        let expanded = match trimmed.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            s if s.starts_with('@') => {
                return Err(format!(
                    "has the unknown macro '{trimmed}' (known: @yearly, @annually, \
                     @monthly, @weekly, @daily, @midnight, @hourly)"
                ));
            }
            _ => trimmed,
        };
        let parts: Vec<&str> = expanded.split_whitespace().collect();
        if parts.len() != 5 {
            return Err(format!(
                "has {} fields; expected 5 (minute hour day-of-month month day-of-week)",
                parts.len()
            ));
        }
        let mut bits = [0u64; 5];
        for (i, (part, field)) in parts.iter().zip(FIELDS.iter()).enumerate() {
            bits[i] = parse_field(part, field)
                .map_err(|e| format!("field {} ({}) '{part}' {e}", i + 1, field.name))?;
        }
        // Sunday written as 7 is Sunday (bit 0).
        let dow = ((bits[4] | (bits[4] >> 7)) & 0x7f) as u8;
        let cron = Cron {
            minutes: bits[0],
            hours: bits[1] as u32,
            dom: bits[2] as u32,
            months: bits[3] as u16,
            dow,
            dom_star: parts[2].starts_with('*'),
            dow_star: parts[4].starts_with('*'),
            text: if expanded == trimmed {
                parts.join(" ")
            } else {
                trimmed.to_string()
            },
        };
        if cron.and_days() && !cron.some_month_has_day() {
            return Err(format!(
                "never matches: day of month '{}' never occurs in month '{}'",
                parts[2], parts[3]
            ));
        }
        Ok(cron)
    }

    /// Days must match both fields (Vixie: either field starts with `*`).
    fn and_days(&self) -> bool {
        self.dom_star || self.dow_star
    }

    fn some_month_has_day(&self) -> bool {
        (1..=12u32).any(|m| {
            // February counts 29 days: leap years come within the search window.
            let max = match m {
                2 => 29,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            self.months & (1 << m) != 0 && (1..=max).any(|d| self.dom & (1 << d) != 0)
        })
    }

    fn day_matches(&self, date: Date) -> bool {
        let dom = self.dom & (1 << date.day()) != 0;
        let dow = self.dow & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        if self.and_days() {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first civil minute at or after `from` (seconds ignored) that matches, within
    /// [`SEARCH_YEARS`] years and jiff's range.
    pub(crate) fn next_match(&self, from: DateTime) -> Option<DateTime> {
        let limit = from.year().saturating_add(SEARCH_YEARS);
        let (mut y, mut mo, mut d) = (from.year(), from.month(), from.day());
        let (mut h, mut mi) = (from.hour(), from.minute());
        // Each step below either returns or moves to the next candidate month, day, hour or
        // minute, so the loop runs at most about 12 + 31 + 24 + 60 times per matched year.
        loop {
            if y > limit || y > 9999 {
                return None;
            }
            if self.months & (1 << mo) == 0 {
                (d, h, mi) = (1, 0, 0);
                mo += 1;
                if mo > 12 {
                    (y, mo) = (y + 1, 1);
                }
                continue;
            }
            let date = Date::new(y, mo, 1).ok()?;
            if d > date.days_in_month() {
                (d, h, mi) = (1, 0, 0);
                mo += 1;
                if mo > 12 {
                    (y, mo) = (y + 1, 1);
                }
                continue;
            }
            let date = Date::new(y, mo, d).ok()?;
            if !self.day_matches(date) {
                (d, h, mi) = (d + 1, 0, 0);
                continue;
            }
            if self.hours & (1 << h) == 0 {
                (h, mi) = (h + 1, 0);
                if h > 23 {
                    (d, h) = (d + 1, 0);
                }
                continue;
            }
            if self.minutes & (1 << mi) == 0 {
                mi += 1;
                if mi > 59 {
                    (h, mi) = (h + 1, 0);
                    if h > 23 {
                        (d, h) = (d + 1, 0);
                    }
                }
                continue;
            }
            return Some(date.at(h, mi, 0, 0));
        }
    }
}

impl fmt::Display for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// One field: a comma list of `*`, `n`, `a-b`, each optionally `/step`.
fn parse_field(s: &str, field: &Field) -> Result<u64, String> {
    let mut bits = 0u64;
    for item in s.split(',') {
        if item.is_empty() {
            return Err("has an empty list item".into());
        }
        let (range, step) = match item.split_once('/') {
            Some((r, st)) => {
                let step: u32 = st
                    .parse()
                    .map_err(|_| format!("has the step '{st}', which is not a number"))?;
                if step == 0 || step > field.max {
                    return Err(format!(
                        "has the step {step}; it must be 1 to {}",
                        field.max
                    ));
                }
                (r, Some(step))
            }
            None => (item, None),
        };
        let (lo, hi) = if range == "*" {
            // Day-of-week `*` is 0-6: 7 is only another name for 0.
            (field.min, if field.max == 7 { 6 } else { field.max })
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (value(a, field)?, value(b, field)?);
            if a > b {
                return Err(format!("has the range {a}-{b}, which runs backwards"));
            }
            (a, b)
        } else {
            let a = value(range, field)?;
            // `a/n` means from a to the maximum, as in cronie.
            (a, if step.is_some() { field.max } else { a })
        };
        let step = step.unwrap_or(1);
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

fn value(s: &str, field: &Field) -> Result<u32, String> {
    if let Some(i) = field.names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
        // Month names start at 1, day names at 0.
        return Ok(i as u32 + field.min);
    }
    let v: u32 = s.parse().map_err(|_| {
        if field.names.is_empty() {
            format!("has '{s}', which is not a number")
        } else {
            format!(
                "has '{s}', which is not a number or a name like {}",
                field.names[0]
            )
        }
    })?;
    if v < field.min || v > field.max {
        return Err(format!("has {v}, outside {}-{}", field.min, field.max));
    }
    Ok(v)
}
