//! Job schedules: Chronos' ISO 8601 repeating intervals `R[n]/<start>/<period>` and, as a Berth
//! extension, 5-field cron expressions. Pure functions of the schedule and the instants passed
//! in; reading the clock is left to the caller (except [`Schedule::parse_iso`]'s empty start).
//!
//! # Semantics
//!
//! * `R` repeats forever, `Rn` gives n due times (start, start + period, ...), `R0` none.
//! * Due time k is `start + k × period`, always computed from the start (never by adding one
//!   period at a time), so month ends and DST do not make it drift.
//! * Time zone: with a `scheduleTimeZone` (IANA name), the start's wall-clock fields are read
//!   in that zone and its offset only breaks ties (Chronos: `withZoneRetainFields`; Chronos'
//!   docs: the zone "takes precedence over any time zone specified in schedule"). Without
//!   one, the start's own offset is the zone (`Z` or no offset: UTC).
//! * Years, months, weeks and days are added to the wall-clock date and time, then resolved
//!   in the zone; hours, minutes and seconds are then added as exact durations. So `P1D` at
//!   02:30 Europe/Berlin stays at 02:30 local across DST, and `PT24H` stays 24 hours apart.
//! * A wall-clock time the zone skips (spring forward) or repeats (fall back) resolves with
//!   jiff's "compatible" rule, as Joda and RFC 5545 do: a skipped 02:30 runs at 03:30 (after
//!   the gap), a repeated 02:30 runs once, at its first occurrence. The next due time is back
//!   at 02:30.
//! * An empty start means "now" (Chronos uses now minus one second), rounded down to the
//!   millisecond. Store [`Schedule::to_string`], not the original text, or "now" moves.
//! * Cron: wall-clock minutes in the zone (UTC without one), resolved the same way; a
//!   minute resolving to an instant another minute already produced runs once.

mod cron;
mod period;
#[cfg(test)]
mod tests;

use cron::Cron;
pub use period::Period;

use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, Offset, TimeZone};
use jiff::{SignedDuration, Timestamp};
use std::fmt;

/// Longest schedule, cron expression or time zone name accepted (bytes).
pub const MAX_SCHEDULE_LEN: usize = 256;

/// Most due times [`Schedule::due_between`] counts one by one for a cron schedule; beyond it
/// the count is a lower bound.
pub const MAX_COUNTED_CRON_RUNS: u64 = 1000;

/// Why a schedule, cron expression or time zone was refused. Messages quote the bad part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "'{}...' is {len} bytes long; at most {MAX_SCHEDULE_LEN} are allowed",
        prefix(text)
    )]
    TooLong { text: String, len: usize },
    #[error(
        "schedule '{0}' is not R[n]/<start>/<period> (for example R/2026-01-01T00:00:00Z/PT1H)"
    )]
    Shape(String),
    #[error("repetitions '{0}' must be R (forever) or R followed by a count, like R5")]
    Repetitions(String),
    #[error("start '{text}' is not an ISO 8601 date-time like 2026-01-01T00:00:00Z: {reason}")]
    Start { text: String, reason: String },
    #[error("period '{text}' {reason}")]
    Period { text: String, reason: String },
    #[error("unknown time zone '{0}' (expected an IANA name like Europe/Berlin)")]
    TimeZone(String),
    #[error("cron expression '{text}' {reason}")]
    Cron { text: String, reason: String },
}

impl ScheduleError {
    /// The problem is the time zone name, not the schedule text.
    pub fn is_time_zone(&self) -> bool {
        matches!(self, ScheduleError::TimeZone(_))
    }
}

fn prefix(s: &str) -> String {
    s.chars().take(32).collect()
}

fn check_len(text: &str) -> Result<(), ScheduleError> {
    if text.len() > MAX_SCHEDULE_LEN {
        return Err(ScheduleError::TooLong {
            text: text.to_string(),
            len: text.len(),
        });
    }
    Ok(())
}

/// Looks up an IANA zone; `""` is no zone (the caller picks the default).
fn zone(name: &str) -> Result<Option<TimeZone>, ScheduleError> {
    check_len(name)?;
    if name.is_empty() {
        return Ok(None);
    }
    TimeZone::get(name)
        .map(Some)
        .map_err(|_| ScheduleError::TimeZone(name.to_string()))
}

/// A parsed schedule, ready for due-time arithmetic.
#[derive(Debug, Clone)]
pub struct Schedule {
    kind: Kind,
    tz: TimeZone,
    /// The `scheduleTimeZone` as given; `""` when none.
    tz_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Iso(Iso),
    Cron(Cron),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Iso {
    /// `None`: forever.
    repetitions: Option<u64>,
    /// The start's wall-clock fields in the zone; calendar units are added to this.
    civil: DateTime,
    /// Due time 0. Differs from `civil` resolved "compatibly" only when the start named the
    /// later of two offsets of a repeated wall-clock time.
    start: Timestamp,
    period: Period,
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        // The zone is determined by its name (or, without one, by the start's offset, which
        // `civil` and `start` together fix).
        self.kind == other.kind && self.tz_name == other.tz_name
    }
}

impl Eq for Schedule {}

/// Due times in a window, for collapsing missed periods into one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// The earliest due time in the window.
    pub first: Timestamp,
    /// The latest due time in the window: the one a collapsed run stands for.
    pub latest: Timestamp,
    /// How many due times fell in the window (at least 1).
    pub count: u64,
    /// `false` when `count` is only a lower bound (cron, more than [`MAX_COUNTED_CRON_RUNS`]).
    pub count_exact: bool,
}

impl Schedule {
    /// Parses a Chronos schedule in `tz` (`""`: the start's own offset). An empty start is
    /// the current time.
    pub fn parse_iso(text: &str, tz: &str) -> Result<Schedule, ScheduleError> {
        Self::parse_iso_at(text, tz, Timestamp::now())
    }

    /// [`Schedule::parse_iso`] with "now" given, for an empty start.
    pub fn parse_iso_at(text: &str, tz: &str, now: Timestamp) -> Result<Schedule, ScheduleError> {
        check_len(text)?;
        let named = zone(tz)?;
        // First and last slash, like Chronos' `(R[0-9]*)/(.*)/(P.*)`.
        let (Some((rep, rest)), Some((middle, period))) = (
            text.split_once('/'),
            text.rsplit_once('/')
                .filter(|(m, _)| m.len() > rep_len(text)),
        ) else {
            return Err(ScheduleError::Shape(text.to_string()));
        };
        let start = &rest[..middle.len() - rep.len() - 1];
        let repetitions = parse_repetitions(rep)?;
        let period = Period::parse(period)?;
        let (civil, start, zone) = if start.is_empty() {
            // Whole milliseconds, as Chronos prints them.
            let now = Timestamp::from_millisecond(now.as_millisecond()).unwrap_or(now);
            let zone = named.clone().unwrap_or(TimeZone::UTC);
            (zone.to_datetime(now), now, zone)
        } else {
            parse_start(start, named.as_ref())?
        };
        Ok(Schedule {
            kind: Kind::Iso(Iso {
                repetitions,
                civil,
                start,
                period,
            }),
            tz: zone,
            tz_name: tz_name_of(named.as_ref(), tz),
        })
    }

    /// Parses a 5-field cron expression read in `tz` (`""`: UTC).
    pub fn parse_cron(text: &str, tz: &str) -> Result<Schedule, ScheduleError> {
        check_len(text)?;
        let named = zone(tz)?;
        let cron = Cron::parse(text).map_err(|reason| ScheduleError::Cron {
            text: text.to_string(),
            reason,
        })?;
        Ok(Schedule {
            kind: Kind::Cron(cron),
            tz_name: tz_name_of(named.as_ref(), tz),
            tz: named.unwrap_or(TimeZone::UTC),
        })
    }

    /// The `scheduleTimeZone` this schedule was parsed with (`""` when none).
    pub fn time_zone_name(&self) -> &str {
        &self.tz_name
    }

    pub fn is_cron(&self) -> bool {
        matches!(self.kind, Kind::Cron(_))
    }

    /// Repetitions left: `None` for forever (`R`) and for cron.
    pub fn repetitions(&self) -> Option<u64> {
        match &self.kind {
            Kind::Iso(iso) => iso.repetitions,
            Kind::Cron(_) => None,
        }
    }

    /// `R0`: nothing is ever due again (Chronos then disables the job).
    pub fn is_exhausted(&self) -> bool {
        self.repetitions() == Some(0)
    }

    /// The ISO schedule's start (due time 0); `None` for cron.
    pub fn start(&self) -> Option<Timestamp> {
        match &self.kind {
            Kind::Iso(iso) => Some(iso.start),
            Kind::Cron(_) => None,
        }
    }

    /// The ISO schedule's period; `None` for cron.
    pub fn period(&self) -> Option<Period> {
        match &self.kind {
            Kind::Iso(iso) => Some(iso.period),
            Kind::Cron(_) => None,
        }
    }

    /// The first due time strictly after `after`, or `None` when no more are due (repetitions
    /// used up, beyond year 9999, or a cron expression with no match within 100 years).
    ///
    /// Bounded work: an ISO schedule whose start lies far in the past is not walked period by
    /// period (division for exact periods, a doubling-then-halving search for calendar ones).
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        match &self.kind {
            Kind::Iso(iso) => {
                let k = iso.index_after(&self.tz, after);
                if iso.repetitions.is_some_and(|n| k >= n) {
                    return None;
                }
                iso.due(&self.tz, k)
            }
            Kind::Cron(cron) => cron_next_after(cron, &self.tz, after),
        }
    }

    /// The due times in `(from, to]`, or `None` when there are none. A scheduler that last
    /// looked at `from` and now sees `to` runs the job once, for `latest`, however many
    /// periods it missed (Chronos: missed periods collapse into one run).
    pub fn due_between(&self, from: Timestamp, to: Timestamp) -> Option<Due> {
        if to <= from {
            return None;
        }
        let first = self.next_after(from)?;
        if first > to {
            return None;
        }
        match &self.kind {
            Kind::Iso(iso) => {
                let k_first = iso.index_after(&self.tz, from);
                let mut end = iso.index_after(&self.tz, to);
                if let Some(n) = iso.repetitions {
                    end = end.min(n);
                }
                // end > k_first: due(k_first) <= to.
                let latest = iso.due(&self.tz, end - 1).unwrap_or(first);
                Some(Due {
                    first,
                    latest,
                    count: end - k_first,
                    count_exact: true,
                })
            }
            Kind::Cron(cron) => {
                let mut latest = first;
                let mut count = 1;
                while count < MAX_COUNTED_CRON_RUNS {
                    match cron_next_after(cron, &self.tz, latest) {
                        Some(t) if t <= to => {
                            latest = t;
                            count += 1;
                        }
                        _ => {
                            return Some(Due {
                                first,
                                latest,
                                count,
                                count_exact: true,
                            });
                        }
                    }
                }
                let latest = cron_latest_at_or_before(cron, &self.tz, latest, to);
                Some(Due {
                    first,
                    latest,
                    count,
                    count_exact: false,
                })
            }
        }
    }

    /// The schedule Chronos stores after running the job for due time `ran`: the same due
    /// times, minus those at or before `ran`. For `R3/2026-01-01T00:00:00Z/PT2S` after the run
    /// due at 00:00:00 that is `R2/2026-01-01T00:00:02Z/PT2S`. Due times skipped by a collapsed
    /// run count as used, so `Rn` never runs past its last due time. Cron is returned as is.
    ///
    /// Rewriting the start loses what a later start cannot express: after a `P1M` schedule
    /// from January 31st runs in February, the rewritten schedule continues on the 28th.
    pub fn after_run(&self, ran: Timestamp) -> Schedule {
        let Kind::Iso(iso) = &self.kind else {
            return self.clone();
        };
        let k = iso.index_after(&self.tz, ran);
        let repetitions = iso.repetitions.map(|n| n.saturating_sub(k));
        let next = match iso.rebased(&self.tz, k) {
            Some((civil, start)) => Iso {
                repetitions,
                civil,
                start,
                period: iso.period,
            },
            // Beyond jiff's range: nothing more can run.
            None => Iso {
                repetitions: Some(0),
                ..iso.clone()
            },
        };
        Schedule {
            kind: Kind::Iso(next),
            tz: self.tz.clone(),
            tz_name: self.tz_name.clone(),
        }
    }
}

fn tz_name_of(named: Option<&TimeZone>, tz: &str) -> String {
    if named.is_some() {
        tz.to_string()
    } else {
        String::new()
    }
}

/// Length of the text before the first slash.
fn rep_len(text: &str) -> usize {
    text.find('/').unwrap_or(text.len())
}

fn parse_repetitions(rep: &str) -> Result<Option<u64>, ScheduleError> {
    let err = || ScheduleError::Repetitions(rep.to_string());
    let digits = rep.strip_prefix(['R', 'r']).ok_or_else(err)?;
    if digits.is_empty() {
        return Ok(None);
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    digits.parse().map(Some).map_err(|_| err())
}

/// The start's wall-clock fields, its instant and the zone to compute in.
fn parse_start(
    text: &str,
    named: Option<&TimeZone>,
) -> Result<(DateTime, Timestamp, TimeZone), ScheduleError> {
    use jiff::fmt::temporal::{Pieces, PiecesOffset};
    let err = |reason: String| ScheduleError::Start {
        text: text.to_string(),
        reason,
    };
    let pieces = Pieces::parse(text).map_err(|e| err(e.to_string()))?;
    if pieces.time_zone_annotation().is_some() {
        return Err(err(
            "time zone annotations like [Europe/Berlin] are not supported; \
             use scheduleTimeZone"
                .into(),
        ));
    }
    let date = pieces.date();
    if date.year() < 0 {
        return Err(err("years before 0000 are not supported".into()));
    }
    let civil = date.to_datetime(pieces.time().unwrap_or_default());
    let offset = match pieces.offset() {
        Some(PiecesOffset::Numeric(n)) => Some(n.offset()),
        // `Z` and no offset both mean UTC when it matters (no named zone), and express no
        // preference between a repeated wall-clock time's two offsets when it does not.
        Some(PiecesOffset::Zulu) | None => None,
        // PiecesOffset is non-exhaustive; jiff has no other kind today.
        Some(_) => None,
    };
    match named {
        Some(tz) => {
            let start = resolve(tz, civil, offset)
                .ok_or_else(|| err("outside the supported range".into()))?;
            Ok((civil, start, tz.clone()))
        }
        None => {
            let offset = offset.unwrap_or(Offset::UTC);
            let start = offset
                .to_timestamp(civil)
                .map_err(|_| err("outside the supported range".into()))?;
            Ok((civil, start, TimeZone::fixed(offset)))
        }
    }
}

/// A wall-clock time in `tz` as an instant: `preferred` when it is one of the time's offsets,
/// else jiff's compatible rule (a skipped time moves past the gap, a repeated one takes its
/// first occurrence).
fn resolve(tz: &TimeZone, civil: DateTime, preferred: Option<Offset>) -> Option<Timestamp> {
    let amb = tz.to_ambiguous_timestamp(civil);
    if let Some(p) = preferred {
        let valid = match amb.offset() {
            AmbiguousOffset::Unambiguous { offset } => offset == p,
            AmbiguousOffset::Gap { before, after } | AmbiguousOffset::Fold { before, after } => {
                p == before || p == after
            }
        };
        if valid {
            return p.to_timestamp(civil).ok();
        }
    }
    amb.compatible().ok()
}

impl Iso {
    /// Due time `k`, ignoring the repetition count; `None` beyond jiff's range.
    fn due(&self, tz: &TimeZone, k: u64) -> Option<Timestamp> {
        if k == 0 {
            return Some(self.start);
        }
        let base = if self.period.has_calendar_units() {
            let civil = self
                .civil
                .checked_add(self.period.calendar_span_times(k)?)
                .ok()?;
            resolve(tz, civil, None)?
        } else {
            self.start
        };
        base.checked_add(self.period.time_duration_times(k)?).ok()
    }

    /// The smallest k with due(k) > `after`, ignoring the repetition count. Due times never
    /// decrease with k, and once out of range stay so: the search doubles k, then halves.
    fn index_after(&self, tz: &TimeZone, after: Timestamp) -> u64 {
        if self.start > after {
            return 0;
        }
        if !self.period.has_calendar_units() {
            // Exact period: divide.
            let elapsed = after.as_duration().as_nanos() - self.start.as_duration().as_nanos();
            let k = elapsed / self.period.time_nanos() + 1;
            return u64::try_from(k).unwrap_or(u64::MAX);
        }
        let past = |k: u64| self.due(tz, k).is_some_and(|t| t <= after);
        // Invariant: past(lo), !past(hi).
        let mut lo = 0u64;
        let mut step = 1u64;
        let mut hi = loop {
            let probe = lo.saturating_add(step);
            if !past(probe) {
                break probe;
            }
            if probe == u64::MAX {
                return u64::MAX;
            }
            lo = probe;
            step = step.saturating_mul(2);
        };
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if past(mid) { lo = mid } else { hi = mid }
        }
        hi
    }

    /// The wall-clock start and instant of a schedule whose due time 0 is this one's due time
    /// `k`, so that the rewritten string keeps the wall-clock time where possible.
    fn rebased(&self, tz: &TimeZone, k: u64) -> Option<(DateTime, Timestamp)> {
        let start = self.due(tz, k)?;
        let p = &self.period;
        let civil = if p.has_calendar_units() && p.time_nanos() == 0 {
            // Keep the unresolved wall-clock time (02:30 even on the day 02:30 is skipped), so
            // the next periods land on 02:30 again; the printed offset still names `start`.
            self.civil.checked_add(p.calendar_span_times(k)?).ok()?
        } else {
            tz.to_datetime(start)
        };
        Some((civil, start))
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Cron(c) => write!(f, "{c}"),
            Kind::Iso(iso) => {
                match iso.repetitions {
                    Some(n) => write!(f, "R{n}/")?,
                    None => f.write_str("R/")?,
                }
                // The offset that makes the wall-clock fields name `start`: for a skipped
                // wall-clock time that is the offset before the gap.
                let offset_secs = iso
                    .civil
                    .to_zoned(TimeZone::UTC)
                    .map(|z| z.timestamp().as_second() - iso.start.as_second())
                    .unwrap_or(0);
                write!(f, "{}", iso.civil)?;
                write_offset(f, offset_secs, self.tz_name.is_empty())?;
                write!(f, "/{}", iso.period)
            }
        }
    }
}

/// `Z` for UTC without a named zone; `+00:00` with one, where it is a tie-breaker.
fn write_offset(f: &mut fmt::Formatter<'_>, secs: i64, zulu: bool) -> fmt::Result {
    if secs == 0 && zulu {
        return f.write_str("Z");
    }
    let sign = if secs < 0 { '-' } else { '+' };
    let a = secs.unsigned_abs();
    write!(f, "{sign}{:02}:{:02}", a / 3600, a / 60 % 60)?;
    if !a.is_multiple_of(60) {
        write!(f, ":{:02}", a % 60)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Cron in a time zone
// ---------------------------------------------------------------------------------------------

/// Most matching minutes looked at in one search: two days of every-minute matches, which the
/// scan after a skipped hour may need.
const MAX_CRON_STEPS: usize = 3 * 24 * 60;

fn cron_next_after(cron: &Cron, tz: &TimeZone, after: Timestamp) -> Option<Timestamp> {
    let minute = SignedDuration::from_mins(1);
    let c0 = truncate_to_minute(tz.to_datetime(after));
    // Wall-clock times in a gap resolve to after the gap, so a minute shortly before `c0`
    // can be due after `after`: look back by the size of a recent gap.
    let scan_from = match recent_gap(tz, after) {
        Some(len) => c0.checked_sub(len).ok()?,
        None => c0,
    };
    let mut m = cron.next_match(scan_from)?;
    let mut best: Option<Timestamp> = None;
    // While scanning wall-clock times up to `horizon`, a later time may still resolve earlier.
    let mut horizon: Option<DateTime> = None;
    for _ in 0..MAX_CRON_STEPS {
        let amb = tz.to_ambiguous_timestamp(m);
        let gap = match amb.offset() {
            AmbiguousOffset::Gap { before, after } => Some(SignedDuration::from_secs(i64::from(
                after.seconds() - before.seconds(),
            ))),
            _ => None,
        };
        let t = amb.compatible().ok()?;
        let past_horizon = horizon.is_none_or(|h| m >= h);
        if t > after {
            best = Some(best.map_or(t, |b| b.min(t)));
            match gap {
                Some(len) => {
                    let h = m.checked_add(len).ok()?;
                    horizon = Some(horizon.map_or(h, |old| old.max(h)));
                }
                None if past_horizon => return best,
                None => {}
            }
        } else if best.is_some() && past_horizon {
            return best;
        }
        m = match m.checked_add(minute).ok().and_then(|n| cron.next_match(n)) {
            Some(n) => n,
            None => return best,
        };
    }
    best
}

/// The length of the last gap (clocks moving forward) if it ended so recently before `t` that
/// wall-clock times skipped by it resolve to after `t` (plus an hour of slack).
fn recent_gap(tz: &TimeZone, t: Timestamp) -> Option<SignedDuration> {
    let tr = tz
        .preceding(t.checked_add(SignedDuration::from_nanos(1)).ok()?)
        .next()?;
    let since = t.duration_since(tr.timestamp());
    let before = tz.to_offset(
        tr.timestamp()
            .checked_sub(SignedDuration::from_secs(1))
            .ok()?,
    );
    let jump = i64::from(tr.offset().seconds() - before.seconds());
    let len = SignedDuration::from_secs(jump);
    (jump > 0 && since <= len + SignedDuration::from_hours(1)).then_some(len)
}

fn truncate_to_minute(dt: DateTime) -> DateTime {
    dt.date().at(dt.hour(), dt.minute(), 0, 0)
}

/// The last due time at or before `to`, given `known`, a due time at or before `to`: looks
/// back from `to` over doubling windows instead of walking every due time since `known`.
fn cron_latest_at_or_before(
    cron: &Cron,
    tz: &TimeZone,
    known: Timestamp,
    to: Timestamp,
) -> Timestamp {
    let mut window = SignedDuration::from_hours(1);
    loop {
        let from = to.checked_sub(window).unwrap_or(known).max(known);
        if let Some(mut latest) = cron_next_after(cron, tz, from).filter(|&t| t <= to) {
            // At most the due times in one window: a few times the gap before `to`.
            for _ in 0..MAX_CRON_STEPS {
                match cron_next_after(cron, tz, latest) {
                    Some(t) if t <= to => latest = t,
                    _ => break,
                }
            }
            return latest;
        }
        if from == known {
            return known;
        }
        window = window.checked_mul(2).unwrap_or(SignedDuration::MAX);
    }
}
