//! ISO 8601 durations `P[nY][nM][nW][nD][T[nH][nM][n[.f]S]]`, the period of a Chronos schedule.
//! Kept as the fields the client wrote (not a normalised length) so that `P1W` prints back as
//! `P1W` and calendar units keep their calendar meaning.

use super::ScheduleError;
use jiff::{SignedDuration, Span};
use std::fmt;

// jiff's `Span` limits, so that building a span for one period never fails.
const MAX_YEARS: u64 = 19_998;
const MAX_MONTHS: u64 = 239_976;
const MAX_WEEKS: u64 = 1_043_497;
const MAX_DAYS: u64 = 7_304_484;
const MAX_HOURS: u64 = 175_307_616;
const MAX_MINUTES: u64 = 10_518_456_960;
const MAX_SECONDS: u64 = 631_107_417_600;

const NANOS_PER_SEC: i128 = 1_000_000_000;

/// One ISO 8601 duration. Only seconds may carry a fraction (up to nanoseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Period {
    pub years: u64,
    pub months: u64,
    pub weeks: u64,
    pub days: u64,
    pub hours: u64,
    pub minutes: u64,
    pub seconds: u64,
    /// Fraction of a second, 0 to 999,999,999.
    pub nanos: u32,
}

impl Period {
    /// Parses `text`; errors quote it and say which part is wrong.
    pub fn parse(text: &str) -> Result<Period, ScheduleError> {
        let err = |reason: String| ScheduleError::Period {
            text: text.to_string(),
            reason,
        };
        let rest = match text.strip_prefix(['P', 'p']) {
            Some(r) => r,
            None => return Err(err("must start with 'P'".into())),
        };
        let (date, time) = match rest.find(['T', 't']) {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        if date.is_empty() && time.is_none_or(str::is_empty) {
            return Err(err("has no fields".into()));
        }
        if time == Some("") {
            return Err(err(
                "has 'T' but no hours, minutes or seconds after it".into()
            ));
        }
        let mut p = Period::default();
        parse_fields(date, true, &mut p).map_err(err)?;
        if let Some(time) = time {
            parse_fields(time, false, &mut p).map_err(err)?;
        }
        if p.is_zero() {
            return Err(err(
                "is zero; a repeating schedule needs a positive period".into()
            ));
        }
        Ok(p)
    }

    pub fn is_zero(&self) -> bool {
        *self == Period::default()
    }

    /// True when some unit's length depends on the calendar or time zone (days and longer).
    pub fn has_calendar_units(&self) -> bool {
        self.years != 0 || self.months != 0 || self.weeks != 0 || self.days != 0
    }

    /// Hours, minutes and seconds as nanoseconds: always an exact length.
    pub(crate) fn time_nanos(&self) -> i128 {
        (i128::from(self.hours) * 3600 + i128::from(self.minutes) * 60 + i128::from(self.seconds))
            * NANOS_PER_SEC
            + i128::from(self.nanos)
    }

    /// Years, months, weeks and days of `k` periods, or `None` beyond what jiff can represent.
    pub(crate) fn calendar_span_times(&self, k: u64) -> Option<Span> {
        let mul = |v: u64| -> Option<i64> { i64::try_from(v.checked_mul(k)?).ok() };
        Span::new()
            .try_years(mul(self.years)?)
            .ok()?
            .try_months(mul(self.months)?)
            .ok()?
            .try_weeks(mul(self.weeks)?)
            .ok()?
            .try_days(mul(self.days)?)
            .ok()
    }

    /// Hours, minutes and seconds of `k` periods as an exact duration.
    pub(crate) fn time_duration_times(&self, k: u64) -> Option<SignedDuration> {
        nanos_to_duration(self.time_nanos().checked_mul(i128::from(k))?)
    }
}

pub(crate) fn nanos_to_duration(n: i128) -> Option<SignedDuration> {
    let secs = i64::try_from(n.div_euclid(NANOS_PER_SEC)).ok()?;
    // Below 1e9: the cast cannot truncate.
    let nanos = n.rem_euclid(NANOS_PER_SEC) as i32;
    Some(SignedDuration::new(secs, nanos))
}

/// Parses `<digits><unit>...` of the date part (`YMWD`, before any `T`) or the time part
/// (`HMS`), the units in that order, each at most once.
fn parse_fields(mut s: &str, date: bool, p: &mut Period) -> Result<(), String> {
    let (units, part): (&[char], &str) = if date {
        (&['Y', 'M', 'W', 'D'], "before 'T'")
    } else {
        (&['H', 'M', 'S'], "after 'T'")
    };
    let mut next_unit = 0;
    while !s.is_empty() {
        let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (int, rest) = s.split_at(digits_end);
        let (frac, rest) = match rest.strip_prefix(['.', ',']) {
            Some(r) => {
                let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
                (Some(&r[..end]), &r[end..])
            }
            None => (None, rest),
        };
        let Some(unit) = rest.chars().next() else {
            return Err(format!("ends with the number '{}' without a unit", s));
        };
        let upper = unit.to_ascii_uppercase();
        let Some(pos) = units.iter().position(|&u| u == upper) else {
            return Err(format!("has an unknown unit '{unit}' {part}"));
        };
        if pos < next_unit {
            return Err(format!("has '{upper}' out of order or twice {part}"));
        }
        next_unit = pos + 1;
        if int.is_empty() {
            return Err(format!("has no number before '{upper}'"));
        }
        let value: u64 = int
            .parse()
            .map_err(|_| format!("has a number too large before '{upper}'"))?;
        let (slot, max, name) = match (date, upper) {
            (true, 'Y') => (&mut p.years, MAX_YEARS, "years"),
            (true, 'M') => (&mut p.months, MAX_MONTHS, "months"),
            (true, 'W') => (&mut p.weeks, MAX_WEEKS, "weeks"),
            (true, _) => (&mut p.days, MAX_DAYS, "days"),
            (false, 'H') => (&mut p.hours, MAX_HOURS, "hours"),
            (false, 'M') => (&mut p.minutes, MAX_MINUTES, "minutes"),
            (false, _) => (&mut p.seconds, MAX_SECONDS, "seconds"),
        };
        if value > max {
            return Err(format!("has {value} {name}; at most {max} are allowed"));
        }
        *slot = value;
        if let Some(frac) = frac {
            if name != "seconds" {
                return Err(format!(
                    "has a fraction on {name}; only seconds may have one"
                ));
            }
            if frac.is_empty() || frac.len() > 9 {
                return Err("has a fraction of seconds that is not 1 to 9 digits".into());
            }
            let digits: u32 = frac
                .parse()
                .map_err(|_| "has an invalid fraction of seconds".to_string())?;
            // Scale to nanoseconds: "5" means 500,000,000.
            p.nanos = digits * 10u32.pow(9 - frac.len() as u32);
        }
        s = &rest[unit.len_utf8()..];
    }
    Ok(())
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("P")?;
        for (v, u) in [
            (self.years, 'Y'),
            (self.months, 'M'),
            (self.weeks, 'W'),
            (self.days, 'D'),
        ] {
            if v != 0 {
                write!(f, "{v}{u}")?;
            }
        }
        if self.hours != 0 || self.minutes != 0 || self.seconds != 0 || self.nanos != 0 {
            f.write_str("T")?;
            if self.hours != 0 {
                write!(f, "{}H", self.hours)?;
            }
            if self.minutes != 0 {
                write!(f, "{}M", self.minutes)?;
            }
            if self.seconds != 0 || self.nanos != 0 {
                write!(f, "{}", self.seconds)?;
                if self.nanos != 0 {
                    let frac = format!("{:09}", self.nanos);
                    write!(f, ".{}", frac.trim_end_matches('0'))?;
                }
                f.write_str("S")?;
            }
        }
        Ok(())
    }
}
