use super::*;
use proptest::prelude::*;

fn ts(s: &str) -> Timestamp {
    s.parse().expect("test timestamp")
}

fn iso(s: &str, tz: &str) -> Schedule {
    Schedule::parse_iso(s, tz).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn cron(s: &str, tz: &str) -> Schedule {
    Schedule::parse_cron(s, tz).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn err(s: &str, tz: &str) -> String {
    match Schedule::parse_iso(s, tz) {
        Ok(s) => panic!("parsed: {s}"),
        Err(e) => e.to_string(),
    }
}

fn cron_err(s: &str) -> String {
    match Schedule::parse_cron(s, "") {
        Ok(s) => panic!("parsed: {s}"),
        Err(e) => e.to_string(),
    }
}

/// The first `n` due times after `after`.
fn nexts(s: &Schedule, after: &str, n: usize) -> Vec<String> {
    let mut out = vec![];
    let mut t = ts(after);
    for _ in 0..n {
        match s.next_after(t) {
            Some(next) => {
                out.push(next.to_string());
                t = next;
            }
            None => break,
        }
    }
    out
}

#[test]
fn periods_parse_and_print() {
    for (text, shown) in [
        ("P1D", "P1D"),
        ("PT2S", "PT2S"),
        ("P1Y2M3W4DT5H6M7S", "P1Y2M3W4DT5H6M7S"),
        ("PT0.5S", "PT0.5S"),
        ("PT1,25S", "PT1.25S"),
        ("PT0.000000001S", "PT0.000000001S"),
        ("pt1h", "PT1H"),
        ("P0DT1M", "PT1M"),
    ] {
        let p = Period::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(p.to_string(), shown, "{text}");
    }
}

#[test]
fn period_errors_say_what_is_wrong() {
    let e = |s: &str| {
        Period::parse(s)
            .map(|p| p.to_string())
            .unwrap_err()
            .to_string()
    };
    assert_eq!(e("PT"), "period 'PT' has no fields");
    assert_eq!(e("P"), "period 'P' has no fields");
    assert_eq!(e("1D"), "period '1D' must start with 'P'");
    assert!(e("P1DT").contains("'T' but no hours"), "{}", e("P1DT"));
    assert!(e("P0D").contains("is zero"));
    assert!(e("PT0.0S").contains("is zero"));
    assert!(e("P1H").contains("unknown unit 'H' before 'T'"));
    assert!(e("PT1D").contains("unknown unit 'D' after 'T'"));
    assert!(e("P1D1Y").contains("'Y' out of order"));
    assert!(e("PT1M1M").contains("'M' out of order or twice"));
    assert!(e("PD").contains("no number before 'D'"));
    assert!(e("P1").contains("'1' without a unit"));
    assert!(e("P1.5D").contains("fraction on days"));
    assert!(e("PT1.S").contains("1 to 9 digits"));
    assert!(e("PT1.0000000001S").contains("1 to 9 digits"));
    assert!(e("P99999Y").contains("99999 years; at most 19998"));
    assert!(e("P99999999999999999999999D").contains("too large"));
}

#[test]
fn schedule_errors_point_at_the_part() {
    assert_eq!(
        err("R/2026-01-01T00:00:00Z/PT", ""),
        "period 'PT' has no fields"
    );
    assert_eq!(
        err("R/2026-01-01T00:00:00Z/PT1H", "Mars/Base"),
        "unknown time zone 'Mars/Base' (expected an IANA name like Europe/Berlin)"
    );
    assert!(
        err("R/2026-01-01T00:00:00Z", "").starts_with("schedule 'R/2026-01-01T00:00:00Z' is not")
    );
    assert!(err("X/2026-01-01T00:00:00Z/P1D", "").starts_with("repetitions 'X'"));
    assert!(err("R-1/2026-01-01T00:00:00Z/P1D", "").starts_with("repetitions 'R-1'"));
    assert!(err("R/2026-13-01T00:00:00Z/P1D", "").starts_with("start '2026-13-01T00:00:00Z'"));
    assert!(err("R/yesterday/P1D", "").starts_with("start 'yesterday'"));
    assert!(err("R/2026-01-01T00:00:00Z[Europe/Berlin]/P1D", "").contains("scheduleTimeZone"));
    assert!(err("R/2026-01-01T00:00:00Z/P1D/x", "").starts_with("period 'x'"));
    assert!(err("R//", "").starts_with("period ''"));
    assert!(err("R/P1D", "").starts_with("schedule 'R/P1D' is not"));
    assert!(err(&format!("R/{}/P1D", "9".repeat(300)), "").contains("at most 256"));
    assert!(
        Schedule::parse_iso("R/2026-01-01T00:00:00Z/PT1H", "Mars/Base")
            .unwrap_err()
            .is_time_zone()
    );
}

#[test]
fn repetitions_count_due_times() {
    let s = iso("R3/2026-01-01T00:00:00Z/PT2S", "");
    assert_eq!(s.repetitions(), Some(3));
    assert_eq!(
        nexts(&s, "2025-12-31T00:00:00Z", 10),
        [
            "2026-01-01T00:00:00Z",
            "2026-01-01T00:00:02Z",
            "2026-01-01T00:00:04Z"
        ]
    );
    let never = iso("R0/2026-01-01T00:00:00Z/PT2S", "");
    assert!(never.is_exhausted());
    assert_eq!(never.next_after(ts("2000-01-01T00:00:00Z")), None);
    let forever = iso("R/2026-01-01T00:00:00Z/PT2S", "");
    assert_eq!(forever.repetitions(), None);
    assert_eq!(
        forever.next_after(ts("2126-01-01T00:00:01Z")),
        Some(ts("2126-01-01T00:00:02Z"))
    );
}

#[test]
fn after_run_decrements_and_moves_the_start() {
    let s = iso("R3/2026-01-01T00:00:00Z/PT2S", "");
    let s1 = s.after_run(ts("2026-01-01T00:00:00Z"));
    assert_eq!(s1.to_string(), "R2/2026-01-01T00:00:02Z/PT2S");
    let s2 = s1.after_run(ts("2026-01-01T00:00:02Z"));
    assert_eq!(s2.to_string(), "R1/2026-01-01T00:00:04Z/PT2S");
    let s3 = s2.after_run(ts("2026-01-01T00:00:04Z"));
    assert_eq!(s3.to_string(), "R0/2026-01-01T00:00:06Z/PT2S");
    assert!(s3.is_exhausted());
    // A collapsed run for the last of several missed due times uses them all up.
    let late = s.after_run(ts("2026-01-01T00:00:03Z"));
    assert_eq!(late.to_string(), "R1/2026-01-01T00:00:04Z/PT2S");
    let forever = iso("R/2026-01-01T00:00:00Z/P1D", "");
    assert_eq!(
        forever.after_run(ts("2026-03-05T00:00:00Z")).to_string(),
        "R/2026-03-06T00:00:00Z/P1D"
    );
    // Cron has no repetitions to count.
    let c = cron("*/5 * * * *", "");
    assert_eq!(c.after_run(ts("2026-01-01T00:00:00Z")), c);
}

#[test]
fn daily_job_keeps_local_time_across_dst() {
    let s = iso("R/2026-03-27T02:30:00+01:00/P1D", "Europe/Berlin");
    assert_eq!(
        nexts(&s, "2026-03-27T00:00:00Z", 4),
        [
            "2026-03-27T01:30:00Z", // 02:30 CET
            "2026-03-28T01:30:00Z", // 02:30 CET
            // 02:30 does not exist on 2026-03-29 (02:00 -> 03:00): 03:30 CEST.
            "2026-03-29T01:30:00Z",
            "2026-03-30T00:30:00Z", // 02:30 CEST
        ]
    );
    // Autumn: 02:30 happens twice on 2026-10-25; the job runs once, at the first.
    let s = iso("R/2026-10-24T02:30:00+02:00/P1D", "Europe/Berlin");
    assert_eq!(
        nexts(&s, "2026-10-24T00:00:00Z", 3),
        [
            "2026-10-24T00:30:00Z", // 02:30 CEST
            "2026-10-25T00:30:00Z", // first 02:30 (CEST)
            "2026-10-26T01:30:00Z", // 02:30 CET
        ]
    );
    // Exact periods ignore wall clocks: PT24H is 23 hours of wall clock in spring.
    let s = iso("R/2026-03-28T02:30:00+01:00/PT24H", "Europe/Berlin");
    assert_eq!(
        nexts(&s, "2026-03-28T00:00:00Z", 2),
        ["2026-03-28T01:30:00Z", "2026-03-29T01:30:00Z"]
    );
}

#[test]
fn rewritten_start_keeps_the_wall_clock_time_on_a_skipped_day() {
    let s = iso("R/2026-03-28T02:30:00+01:00/P1D", "Europe/Berlin");
    let after_gap = s.after_run(ts("2026-03-28T01:30:00Z"));
    // The start names the instant 03:30 CEST while keeping 02:30 as the wall-clock time.
    assert_eq!(after_gap.to_string(), "R/2026-03-29T02:30:00+01:00/P1D");
    assert_eq!(after_gap.start(), Some(ts("2026-03-29T01:30:00Z")));
    let reparsed = iso(&after_gap.to_string(), "Europe/Berlin");
    assert_eq!(reparsed, after_gap);
    let next = reparsed.after_run(ts("2026-03-29T01:30:00Z"));
    assert_eq!(next.to_string(), "R/2026-03-30T02:30:00+02:00/P1D");
}

#[test]
fn schedule_time_zone_takes_the_wall_clock_fields() {
    // Chronos: the zone takes precedence over the start's offset (withZoneRetainFields).
    let s = iso("R/2026-01-10T18:32:00Z/PT60M", "America/Los_Angeles");
    assert_eq!(s.start(), Some(ts("2026-01-11T02:32:00Z")));
    assert_eq!(s.to_string(), "R/2026-01-10T18:32:00-08:00/PT60M");
    // Without a zone the offset is the zone.
    let s = iso("R/2026-01-10T18:32:00+05:30/P1D", "");
    assert_eq!(s.start(), Some(ts("2026-01-10T13:02:00Z")));
    assert_eq!(s.to_string(), "R/2026-01-10T18:32:00+05:30/P1D");
    // A start without an offset is in the zone, or UTC.
    assert_eq!(
        iso("R/2026-01-10T18:32:00/P1D", "").start(),
        Some(ts("2026-01-10T18:32:00Z"))
    );
    assert_eq!(
        iso("R/2026-01-10/P1D", "Europe/Berlin").start(),
        Some(ts("2026-01-09T23:00:00Z"))
    );
}

#[test]
fn offset_breaks_the_tie_of_a_repeated_wall_clock_time() {
    // 02:30 on 2026-10-25 Berlin happens at +02:00 and at +01:00.
    let first = iso("R/2026-10-25T02:30:00+02:00/PT1H", "Europe/Berlin");
    let second = iso("R/2026-10-25T02:30:00+01:00/PT1H", "Europe/Berlin");
    assert_eq!(first.start(), Some(ts("2026-10-25T00:30:00Z")));
    assert_eq!(second.start(), Some(ts("2026-10-25T01:30:00Z")));
    assert_eq!(iso(&second.to_string(), "Europe/Berlin"), second);
    // An hourly schedule runs in both 02:30s.
    assert_eq!(
        nexts(&first, "2026-10-25T00:00:00Z", 3),
        [
            "2026-10-25T00:30:00Z",
            "2026-10-25T01:30:00Z",
            "2026-10-25T02:30:00Z"
        ]
    );
    let rebased = first.after_run(ts("2026-10-25T00:30:00Z"));
    assert_eq!(rebased.to_string(), "R/2026-10-25T02:30:00+01:00/PT1H");
    assert_eq!(iso(&rebased.to_string(), "Europe/Berlin"), rebased);
}

#[test]
fn months_are_calendar_months_without_drift() {
    let s = iso("R/2026-01-31T12:00:00Z/P1M", "");
    assert_eq!(
        nexts(&s, "2026-01-01T00:00:00Z", 4),
        [
            "2026-01-31T12:00:00Z",
            "2026-02-28T12:00:00Z",
            "2026-03-31T12:00:00Z",
            "2026-04-30T12:00:00Z"
        ]
    );
    let leap = iso("R/2024-02-29T00:00:00Z/P1Y", "");
    assert_eq!(
        nexts(&leap, "2025-01-01T00:00:00Z", 4),
        [
            "2025-02-28T00:00:00Z",
            "2026-02-28T00:00:00Z",
            "2027-02-28T00:00:00Z",
            "2028-02-29T00:00:00Z"
        ]
    );
}

#[test]
fn far_past_start_does_not_loop_per_period() {
    // About 3e17 periods of 1 ns, and 3e8 days: answered by division and by halving.
    let ns = iso("R/1970-01-01T00:00:00Z/PT0.000000001S", "");
    assert_eq!(
        ns.next_after(ts("2026-01-01T00:00:00Z")),
        Some(ts("2026-01-01T00:00:00.000000001Z"))
    );
    let daily = iso("R/0001-01-01T03:00:00Z/P1D", "Europe/Berlin");
    assert_eq!(
        daily.next_after(ts("2026-07-01T12:00:00Z")),
        Some(ts("2026-07-02T01:00:00Z"))
    );
    let monthly = iso("R/0001-01-31T00:00:00Z/P1M", "");
    assert_eq!(
        monthly.next_after(ts("9999-11-01T00:00:00Z")),
        Some(ts("9999-11-30T00:00:00Z"))
    );
    // The last representable due time has no successor.
    assert_eq!(monthly.next_after(ts("9999-12-01T00:00:00Z")), None);
    let counted = daily.due_between(ts("0001-01-01T00:00:00Z"), ts("9999-01-01T00:00:00Z"));
    assert!(counted.is_some_and(|d| d.count > 3_600_000 && d.count_exact));
}

#[test]
fn missed_periods_collapse_into_one_due() {
    let s = iso("R/2026-01-01T00:00:00Z/PT1H", "");
    let due = s
        .due_between(ts("2026-01-01T00:30:00Z"), ts("2026-01-01T05:00:00Z"))
        .expect("due");
    assert_eq!(due.first, ts("2026-01-01T01:00:00Z"));
    assert_eq!(due.latest, ts("2026-01-01T05:00:00Z"));
    assert_eq!(due.count, 5);
    assert!(due.count_exact);
    assert_eq!(
        s.due_between(ts("2026-01-01T01:00:00Z"), ts("2026-01-01T01:59:59Z")),
        None
    );
    assert_eq!(
        s.due_between(ts("2026-01-01T05:00:00Z"), ts("2026-01-01T01:00:00Z")),
        None
    );
    let r2 = iso("R2/2026-01-01T00:00:00Z/PT1H", "");
    let due = r2
        .due_between(ts("2025-01-01T00:00:00Z"), ts("2027-01-01T00:00:00Z"))
        .expect("due");
    assert_eq!((due.count, due.latest), (2, ts("2026-01-01T01:00:00Z")));
    // Cron: counted up to a limit, the latest found anyway.
    let c = cron("* * * * *", "");
    let due = c
        .due_between(ts("2026-01-01T00:00:00Z"), ts("2026-02-01T00:00:00Z"))
        .expect("due");
    assert_eq!(due.first, ts("2026-01-01T00:01:00Z"));
    assert_eq!(due.latest, ts("2026-02-01T00:00:00Z"));
    assert_eq!((due.count, due.count_exact), (MAX_COUNTED_CRON_RUNS, false));
    let c = cron("0 0 1 1 *", "");
    let due = c
        .due_between(ts("2000-06-01T00:00:00Z"), ts("2026-06-01T00:00:00Z"))
        .expect("due");
    assert_eq!((due.count, due.latest), (26, ts("2026-01-01T00:00:00Z")));
}

#[test]
fn empty_start_is_now() {
    let now = ts("2026-05-01T10:20:30.123456Z");
    let s = Schedule::parse_iso_at("R5//PT10M", "", now).expect("parse");
    assert_eq!(s.start(), Some(ts("2026-05-01T10:20:30.123Z")));
    assert_eq!(s.to_string(), "R5/2026-05-01T10:20:30.123Z/PT10M");
    let s = Schedule::parse_iso_at("R//P1D", "Europe/Berlin", now).expect("parse");
    assert_eq!(s.to_string(), "R/2026-05-01T12:20:30.123+02:00/P1D");
}

#[test]
fn cron_fields() {
    let c = cron("*/15 9-17 * * MON-FRI", "");
    assert_eq!(
        nexts(&c, "2026-01-02T16:50:00Z", 3), // a Friday
        [
            "2026-01-02T17:00:00Z",
            "2026-01-02T17:15:00Z",
            "2026-01-02T17:30:00Z"
        ]
    );
    assert_eq!(
        c.next_after(ts("2026-01-02T17:45:00Z")),
        Some(ts("2026-01-05T09:00:00Z"))
    );
    let c = cron("5,10-12 0 1 jan,Jul *", "");
    assert_eq!(
        nexts(&c, "2026-01-01T00:00:00Z", 5),
        [
            "2026-01-01T00:05:00Z",
            "2026-01-01T00:10:00Z",
            "2026-01-01T00:11:00Z",
            "2026-01-01T00:12:00Z",
            "2026-07-01T00:05:00Z"
        ]
    );
    // 7 is Sunday too; `a/n` runs to the maximum.
    let c = cron("50/5 0 * * 7", "");
    assert_eq!(
        nexts(&c, "2026-01-01T00:00:00Z", 3),
        [
            "2026-01-04T00:50:00Z",
            "2026-01-04T00:55:00Z",
            "2026-01-11T00:50:00Z"
        ]
    );
    assert_eq!(
        cron("@daily", "").next_after(ts("2026-01-01T00:00:00Z")),
        Some(ts("2026-01-02T00:00:00Z"))
    );
    assert_eq!(cron("  0   0  * * *", "").to_string(), "0 0 * * *");
    // February 29th only; February 29th that is a Sunday (`*/7` starts with `*`: AND)
    // skips 2100, which is not a leap year.
    assert_eq!(
        cron("0 0 29 2 *", "").next_after(ts("2026-01-01T00:00:00Z")),
        Some(ts("2028-02-29T00:00:00Z"))
    );
    assert_eq!(
        cron("0 0 29 2 */7", "").next_after(ts("2090-01-01T00:00:00Z")),
        Some(ts("2128-02-29T00:00:00Z"))
    );
}

#[test]
fn cron_day_fields_follow_vixie() {
    // Both restricted: the 13th OR a Friday.
    let c = cron("0 0 13 * FRI", "");
    assert_eq!(
        nexts(&c, "2026-02-01T00:00:00Z", 4),
        [
            "2026-02-06T00:00:00Z",
            "2026-02-13T00:00:00Z", // a Friday and the 13th: once
            "2026-02-20T00:00:00Z",
            "2026-02-27T00:00:00Z"
        ]
    );
    assert_eq!(
        c.next_after(ts("2026-03-12T00:00:00Z")),
        Some(ts("2026-03-13T00:00:00Z"))
    );
    // A day field starting with `*` makes it AND: odd days that are Mondays.
    let c = cron("0 0 */2 * MON", "");
    assert_eq!(
        nexts(&c, "2026-01-01T00:00:00Z", 2),
        ["2026-01-05T00:00:00Z", "2026-01-19T00:00:00Z"]
    );
}

#[test]
fn cron_errors_name_the_field() {
    assert_eq!(
        cron_err("* * *"),
        "cron expression '* * *' has 3 fields; expected 5 (minute hour day-of-month month day-of-week)"
    );
    assert_eq!(
        cron_err("60 * * * *"),
        "cron expression '60 * * * *' field 1 (minute) '60' has 60, outside 0-59"
    );
    assert!(cron_err("* * 0 * *").contains("field 3 (day of month) '0' has 0, outside 1-31"));
    assert!(
        cron_err("* * * FOO *")
            .contains("field 4 (month) 'FOO' has 'FOO', which is not a number or a name like JAN")
    );
    assert!(cron_err("* 5-2 * * *").contains("range 5-2, which runs backwards"));
    assert!(cron_err("*/0 * * * *").contains("step 0"));
    assert!(cron_err("1,,2 * * * *").contains("empty list item"));
    assert!(cron_err("@reboot").contains("unknown macro"));
    assert!(cron_err("0 0 30 2 *").contains("never matches"));
    assert!(
        Schedule::parse_cron("0 0 * * *", "Mars/Base")
            .unwrap_err()
            .is_time_zone()
    );
    // Feb 30th or any Monday: Vixie OR semantics make it satisfiable.
    assert!(Schedule::parse_cron("0 0 30 2 MON", "").is_ok());
}

#[test]
fn cron_across_dst() {
    // Daily 02:30 Berlin: on the skipped day at 03:30, on the repeated day once.
    let c = cron("30 2 * * *", "Europe/Berlin");
    assert_eq!(
        nexts(&c, "2026-03-28T00:00:00Z", 3),
        [
            "2026-03-28T01:30:00Z",
            "2026-03-29T01:30:00Z", // 03:30 CEST
            "2026-03-30T00:30:00Z"
        ]
    );
    // Asked from just after the gap, the shifted 02:30 is still found.
    assert_eq!(
        c.next_after(ts("2026-03-29T01:10:00Z")),
        Some(ts("2026-03-29T01:30:00Z"))
    );
    assert_eq!(
        nexts(&c, "2026-10-24T12:00:00Z", 2),
        ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
    );
    // Every 20 minutes through the gap: 02:00-02:40 resolve to 03:00-03:40, merged with
    // the real 03:xx minutes.
    let c = cron("*/20 * * * *", "Europe/Berlin");
    assert_eq!(
        nexts(&c, "2026-03-29T00:30:00Z", 5),
        [
            "2026-03-29T00:40:00Z", // 01:40 CET
            "2026-03-29T01:00:00Z", // 03:00 CEST (02:00 and 03:00)
            "2026-03-29T01:20:00Z",
            "2026-03-29T01:40:00Z",
            "2026-03-29T02:00:00Z"
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

fn arb_period() -> impl Strategy<Value = Period> {
    (
        0u64..3,
        0u64..14,
        0u64..3,
        0u64..40,
        0u64..30,
        0u64..90,
        0u64..90,
        prop_oneof![Just(0u32), 0u32..1_000_000_000],
    )
        .prop_map(
            |(years, months, weeks, days, hours, minutes, seconds, nanos)| Period {
                years,
                months,
                weeks,
                days,
                hours,
                minutes,
                seconds,
                nanos,
            },
        )
        .prop_filter("non-zero", |p| !p.is_zero())
}

fn arb_zone() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "",
        "UTC",
        "Europe/Berlin",
        "America/New_York",
        "Australia/Lord_Howe",
        "Pacific/Apia",
        "Asia/Kolkata",
    ])
}

fn arb_instant() -> impl Strategy<Value = Timestamp> {
    // 1900 to 2200.
    (-2_208_988_800i64..7_258_118_400, 0i32..1_000_000_000)
        .prop_map(|(s, n)| Timestamp::new(s, n).unwrap_or(Timestamp::UNIX_EPOCH))
}

fn arb_iso() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            Just(String::from("R")),
            (0u64..50).prop_map(|n| format!("R{n}"))
        ],
        arb_instant(),
        prop::sample::select(vec!["Z", "+00:00", "+01:00", "-05:00", "+05:30", "+02:00"]),
        arb_period(),
    )
        .prop_map(|(r, t, off, p)| {
            let civil = TimeZone::UTC.to_datetime(t);
            format!("{r}/{civil}{off}/{p}")
        })
}

fn is_due_time(s: &Schedule, t: Timestamp) -> bool {
    let Kind::Iso(iso) = &s.kind else {
        return false;
    };
    let k = iso.index_after(
        &s.tz,
        t.checked_sub(SignedDuration::from_nanos(1)).unwrap_or(t),
    );
    iso.due(&s.tz, k) == Some(t)
}

proptest! {
    #[test]
    fn iso_next_after_is_a_later_due_time(text in arb_iso(), tz in arb_zone(), after in arb_instant()) {
        let s = Schedule::parse_iso(&text, tz).expect("generated schedule parses");
        if let Some(next) = s.next_after(after) {
            prop_assert!(next > after);
            prop_assert!(is_due_time(&s, next));
            // Nothing due in between.
            prop_assert_eq!(s.due_between(after, next).map(|d| (d.count, d.latest)), Some((1, next)));
            if let Kind::Iso(iso) = &s.kind {
                let k = iso.index_after(&s.tz, after);
                prop_assert!(k == 0 || iso.due(&s.tz, k - 1).is_some_and(|t| t <= after));
            }
        }
    }

    #[test]
    fn iso_display_round_trips(text in arb_iso(), tz in arb_zone(), ran in arb_instant()) {
        let s = Schedule::parse_iso(&text, tz).expect("generated schedule parses");
        let again = Schedule::parse_iso(&s.to_string(), tz).expect("display parses");
        prop_assert_eq!(&again, &s);
        prop_assert_eq!(again.to_string(), s.to_string());
        let next = s.after_run(ran);
        let again = Schedule::parse_iso(&next.to_string(), tz).expect("rewritten parses");
        prop_assert_eq!(again, next);
    }

    #[test]
    fn after_run_keeps_the_next_due_time(text in arb_iso(), tz in arb_zone(), ran in arb_instant()) {
        let s = Schedule::parse_iso(&text, tz).expect("generated schedule parses");
        let next = s.after_run(ran);
        prop_assert_eq!(next.next_after(ran), s.next_after(ran));
        if let (Some(a), Some(b)) = (s.repetitions(), next.repetitions()) {
            prop_assert!(b <= a);
        }
    }

    #[test]
    fn cron_next_after_matches_and_is_later(
        minute in prop::sample::select(vec!["*", "0", "*/7", "15,45", "0-10/3"]),
        hour in prop::sample::select(vec!["*", "2", "1-3", "*/5"]),
        dom in prop::sample::select(vec!["*", "1", "13", "31", "*/10"]),
        month in prop::sample::select(vec!["*", "2", "MAR-OCT"]),
        dow in prop::sample::select(vec!["*", "0", "FRI", "1-5"]),
        tz in arb_zone(),
        after in arb_instant(),
    ) {
        let text = format!("{minute} {hour} {dom} {month} {dow}");
        let Ok(s) = Schedule::parse_cron(&text, tz) else { return Ok(()) };
        let again = Schedule::parse_cron(&s.to_string(), tz);
        prop_assert_eq!(again.as_ref(), Ok(&s));
        if let Some(next) = s.next_after(after) {
            prop_assert!(next > after);
            let Kind::Cron(c) = &s.kind else { unreachable!() };
            // The wall-clock minute of `next`, or (for a skipped time) one the zone skipped.
            let civil = s.tz.to_datetime(next);
            let matched = c.next_match(truncate_to_minute(civil)) == Some(civil)
                || recent_gap(&s.tz, next).is_some();
            prop_assert!(matched, "{} in {:?}: {} ({})", text, tz, next, civil);
        }
    }
}

#[test]
fn a_skipped_day_runs_once() {
    // Pacific/Apia skipped 2011-12-30 entirely (-10:00 to +14:00): its noon resolves to the
    // same instant as the 31st's noon, and runs once.
    let c = cron("0 12 * * *", "Pacific/Apia");
    assert_eq!(
        nexts(&c, "2011-12-29T00:00:00Z", 3),
        [
            "2011-12-29T22:00:00Z",
            "2011-12-30T22:00:00Z",
            "2011-12-31T22:00:00Z"
        ]
    );
    // Asked from inside the skipped day's shadow, the shifted noon is still found.
    assert_eq!(
        c.next_after(ts("2011-12-30T12:00:00Z")),
        Some(ts("2011-12-30T22:00:00Z"))
    );
    let s = iso("R/2011-12-28T12:00:00-10:00/P1D", "Pacific/Apia");
    assert_eq!(
        nexts(&s, "2011-12-29T00:00:00Z", 3),
        [
            "2011-12-29T22:00:00Z",
            "2011-12-30T22:00:00Z",
            "2011-12-31T22:00:00Z"
        ]
    );
    let due = s
        .due_between(ts("2011-12-30T00:00:00Z"), ts("2011-12-31T00:00:00Z"))
        .expect("due");
    // Due times 2 (the 30th) and 3 (the 31st) are the same instant.
    assert_eq!((due.count, due.latest), (2, ts("2011-12-30T22:00:00Z")));
    assert_eq!(
        s.after_run(due.latest).to_string(),
        "R/2012-01-01T12:00:00+14:00/P1D"
    );
}
