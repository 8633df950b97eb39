//! Cron schedules: when a workflow starts on its own.
//!
//! A schedule names a workflow, a cron pattern and an IANA time zone; the
//! engine keeps one timer per schedule, armed at [`Schedule::next_fire_at_ms`].
//! When the tick finds it due, [`Schedule::plan`] says which fire times to
//! start a run for (each with the idempotency key of [`schedule_run_key`]),
//! how many were missed, and when to fire next. Nothing here reads a clock:
//! every instant is passed in as milliseconds since the Unix epoch.
//!
//! Patterns are parsed and walked by [`croner`]: 5 fields (minute hour
//! day-of-month month day-of-week) or 6 (seconds first), the nicknames
//! `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily` and `@hourly`, and
//! croner's extensions (`L`, `W`, `#`, a `+` before day-of-week to require
//! both day fields). As in Vixie cron, day-of-month and day-of-week are
//! alternatives when both are restricted. Fire times are whole seconds.
//!
//! # Daylight saving time
//!
//! Patterns are read on the wall clock of the schedule's time zone. Where the
//! clock jumps, croner (4.x, following its OCPS rules) and this module do:
//!
//! - A *fixed time of day* (second, minute and hour each one number, like
//!   `30 2 * * *`) that falls in a spring-forward gap fires once, at the end
//!   of the gap (02:30 in Berlin on 2026-03-29 fires at 03:00 CEST); one that
//!   happens twice in a fall-back overlap fires once, at the earlier instant
//!   (the summer-time one). A daily job fires exactly once a day.
//! - A *repeating* pattern (a `*`, a step or a range in second, minute or
//!   hour, like `0 * * * *`) fires at the real instants whose wall clock
//!   matches: nothing inside a gap, and both passes through an overlap.
//!   An hourly job fires once in every real hour, 23 on the spring day and
//!   25 on the fall day, never twice at one instant.
//! - Croner counts a *list* of times (`30 2,14 * * *`) as repeating, so its
//!   02:30 would be skipped on the spring day and run twice on the fall day.
//!   We correct that: when second, minute and hour are each a plain number
//!   or a comma list of numbers (at most [`MAX_FIXED_TIMES`] combinations),
//!   every combination is walked as a fixed time of its own and the walks
//!   are merged, so each listed time fires once a day like a daily job.
//!   Listed times that all fall in one gap fire once, at its end.

use std::collections::BTreeSet;
use std::str::FromStr;

use chrono::{DateTime, TimeZone};
use chrono_tz::Tz;
use croner::Cron;
use croner::errors::CronError;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Serialize};

use crate::agent::check_name;
use crate::error::{FieldError, ValidationError};

/// A tick a little late is not downtime: a fire this late still counts as
/// on time even when `catch_up_secs` is 0.
pub const ON_TIME_MS: u64 = 60_000;
/// Default of [`ScheduleSpec::catch_up_secs`]: five minutes.
pub const DEFAULT_CATCH_UP_SECS: u64 = 300;
/// Largest accepted [`ScheduleSpec::catch_up_secs`]: seven days.
pub const MAX_CATCH_UP_SECS: u64 = 7 * 86_400;
/// Most fires one tick starts for one schedule; older due fires are missed.
/// A schedule firing every second that comes back from an outage must not
/// start hundreds of runs at once.
pub const MAX_CATCH_UP_FIRES: usize = 10;
/// Most missed fires one [`Schedule::plan`] counts one by one; beyond it the
/// count stops and [`FirePlan::missed_capped`] is set. A per-second schedule
/// after a month of downtime missed millions; walking them all would stall
/// the tick, and the exact number tells an operator nothing more.
pub const MAX_COUNTED_MISSES: u64 = 100_000;
/// Longest accepted cron pattern, in bytes.
pub const MAX_CRON_LEN: usize = 256;
/// Longest accepted time zone name, in bytes (IANA names are at most 30).
pub const MAX_TIMEZONE_LEN: usize = 64;
/// Most time-of-day combinations of a listed pattern that are walked as
/// fixed times (see the module documentation); a longer list keeps croner's
/// repeating rules, as its times are evidently meant as a series.
pub const MAX_FIXED_TIMES: usize = 64;

/// A schedule as a client writes it (create or update).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Unique name; the agent naming rules ([`check_name`]).
    pub name: String,
    /// Free-form description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The workflow each fire starts a run of; the naming rules apply.
    pub workflow: String,
    /// 5 fields (minute hour day-of-month month day-of-week) or 6 (seconds
    /// first), or a nickname like `@daily`; see the module documentation.
    pub cron: String,
    /// IANA zone name the pattern is read in, default `"UTC"`.
    #[serde(default = "utc")]
    pub timezone: String,
    /// The trigger payload of each run: any JSON, at most
    /// [`crate::template::MAX_VALUE_DEPTH`] deep.
    #[serde(default)]
    pub payload: serde_json::Value,
    /// What a fire does while the previous run is still going.
    #[serde(default)]
    pub overlap: Overlap,
    /// Fire times missed by at most this much (downtime, ticks stopped)
    /// still fire when the tick comes back; older ones are skipped and
    /// counted. Default [`DEFAULT_CATCH_UP_SECS`], at most
    /// [`MAX_CATCH_UP_SECS`].
    #[serde(default = "default_catch_up")]
    pub catch_up_secs: u64,
    /// A paused schedule keeps its definition but never fires.
    #[serde(default)]
    pub paused: bool,
}

fn utc() -> String {
    "UTC".to_owned()
}
fn default_catch_up() -> u64 {
    DEFAULT_CATCH_UP_SECS
}

/// What a fire does when the schedule's previous run is still going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// No run is started; the fire is counted as skipped. The default: a
    /// slow run must not pile up copies of itself.
    #[default]
    Skip,
    /// Another run starts beside the one still going.
    Allow,
    /// The run still going is cancelled, then the new one starts.
    CancelPrevious,
}

/// A validated schedule as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Validated name.
    pub name: String,
    /// Description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The workflow it starts.
    pub workflow: String,
    /// The validated cron pattern.
    pub cron: String,
    /// The validated IANA zone name.
    pub timezone: String,
    /// Trigger payload of each run.
    pub payload: serde_json::Value,
    /// What a fire does while the previous run is still going.
    pub overlap: Overlap,
    /// How late a fire may be and still fire.
    pub catch_up_secs: u64,
    /// Whether it is paused.
    pub paused: bool,
    /// When it was created, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// When it was last written, milliseconds since the Unix epoch.
    pub updated_at_ms: u64,
    /// Bumped whenever the schedule is written (create, update, pause,
    /// resume) or re-armed: a timer carries the epoch it was armed in, and
    /// one from an older epoch is stale.
    pub epoch: u64,
    /// The next fire time (ms), `None` when paused or when the pattern
    /// never fires again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_fire_at_ms: Option<u64>,
    /// The last fire time a run was started (or skipped) for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fire_at_ms: Option<u64>,
    /// The run the last fire started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_id: Option<String>,
    /// Fires that started a run.
    #[serde(default)]
    pub fired: u64,
    /// Fires that came too late to start one (see [`ScheduleSpec::catch_up_secs`]).
    #[serde(default)]
    pub missed: u64,
    /// Fires that started nothing because the previous run was still going
    /// ([`Overlap::Skip`]), and the older fires of a catch-up under
    /// [`Overlap::Skip`] or [`Overlap::CancelPrevious`], where only the
    /// newest due fire starts a run.
    #[serde(default)]
    pub skipped: u64,
    /// Fires that could start nothing: the workflow is gone, or it refuses
    /// the payload (its input schema changed after the schedule was
    /// written).
    #[serde(default)]
    pub failed: u64,
}

/// What a tick does about a due schedule: see [`Schedule::plan`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FirePlan {
    /// Fire times to start a run for, ascending; at most
    /// [`MAX_CATCH_UP_FIRES`].
    pub fire: Vec<u64>,
    /// Fire times due but not fired: too late, or beyond
    /// [`MAX_CATCH_UP_FIRES`].
    pub missed: u64,
    /// `missed` stopped counting at [`MAX_COUNTED_MISSES`]: more were missed.
    pub missed_capped: bool,
    /// When to fire next, strictly after the tick; `None` if never.
    pub next: Option<u64>,
}

/// The idempotency key that starts the run of the fire at `fire_ms`, so a
/// tick that runs twice (a retry, two ticks racing) starts it once.
pub fn schedule_run_key(name: &str, fire_ms: u64) -> String {
    format!("schedule:{name}:{fire_ms}")
}

impl ScheduleSpec {
    /// Decodes a JSON body; call [`ScheduleSpec::validate`] next.
    pub fn parse(body: &[u8]) -> Result<Self, ValidationError> {
        serde_json::from_slice(body).map_err(|e| crate::error::from_json_error(&e))
    }

    /// Checks every field, reporting every problem with its JSON Pointer,
    /// and computes the first fire time strictly after `now_ms` (`None` when
    /// paused). A pattern that can never fire (February 30th) is refused.
    ///
    /// `previous` is the stored schedule this one replaces: its creation
    /// time, bookkeeping and counters are kept and its epoch bumped; a new
    /// schedule starts at epoch 1.
    pub fn validate(
        self,
        now_ms: u64,
        previous: Option<&Schedule>,
    ) -> Result<Schedule, ValidationError> {
        let mut errors = Vec::new();
        if let Err(e) = check_name(&self.name) {
            errors.push(FieldError::new("/name", e));
        } else if let Some(p) = previous
            && p.name != self.name
        {
            errors.push(FieldError::new(
                "/name",
                format!(
                    "a schedule cannot be renamed (path names '{}', body names '{}')",
                    p.name, self.name
                ),
            ));
        }
        errors.extend(crate::agent::check_description(&self.description));
        if let Err(e) = check_name(&self.workflow) {
            errors.push(FieldError::new("/workflow", e));
        }
        let cron = parse_cron(&self.cron);
        if let Err(e) = &cron {
            errors.push(FieldError::new("/cron", e.clone()));
        }
        let tz = parse_timezone(&self.timezone);
        if let Err(e) = &tz {
            errors.push(FieldError::new("/timezone", e.clone()));
        }
        if let Some(at) = crate::template::too_deep(&self.payload, crate::template::MAX_VALUE_DEPTH)
        {
            errors.push(FieldError::new(
                format!("/payload{at}"),
                format!(
                    "nests deeper than {} levels",
                    crate::template::MAX_VALUE_DEPTH
                ),
            ));
        }
        if self.catch_up_secs > MAX_CATCH_UP_SECS {
            errors.push(FieldError::new(
                "/catch_up_secs",
                format!("must be at most {MAX_CATCH_UP_SECS} (seven days)"),
            ));
        }
        let mut next = None;
        if let (Ok(cron), Ok(tz)) = (cron, tz) {
            let compiled = Compiled::new(cron, &self.cron, tz);
            if compiled.never_fires_after(now_ms) {
                errors.push(FieldError::new(
                    "/cron",
                    "never fires: no date matches the day-of-month, month and day-of-week fields together (like February 30th)",
                ));
            } else {
                next = compiled.next_after(now_ms);
            }
        }
        ValidationError::check(errors)?;

        let epoch = match previous {
            None => 1,
            Some(p) => p.epoch.checked_add(1).ok_or_else(|| {
                ValidationError::single("", "this schedule has reached its last epoch")
            })?,
        };
        Ok(Schedule {
            next_fire_at_ms: if self.paused { None } else { next },
            name: self.name,
            description: self.description,
            workflow: self.workflow,
            cron: self.cron,
            timezone: self.timezone,
            payload: self.payload,
            overlap: self.overlap,
            catch_up_secs: self.catch_up_secs,
            paused: self.paused,
            created_at_ms: previous.map_or(now_ms, |p| p.created_at_ms),
            updated_at_ms: now_ms,
            epoch,
            last_fire_at_ms: previous.and_then(|p| p.last_fire_at_ms),
            last_run_id: previous.and_then(|p| p.last_run_id.clone()),
            fired: previous.map_or(0, |p| p.fired),
            missed: previous.map_or(0, |p| p.missed),
            skipped: previous.map_or(0, |p| p.skipped),
            failed: previous.map_or(0, |p| p.failed),
        })
    }
}

impl Schedule {
    /// The spec this schedule was written from, to change a field (pause,
    /// resume) and validate again with this schedule as `previous`.
    pub fn to_spec(&self) -> ScheduleSpec {
        ScheduleSpec {
            name: self.name.clone(),
            description: self.description.clone(),
            workflow: self.workflow.clone(),
            cron: self.cron.clone(),
            timezone: self.timezone.clone(),
            payload: self.payload.clone(),
            overlap: self.overlap,
            catch_up_secs: self.catch_up_secs,
            paused: self.paused,
        }
    }

    /// The first fire time strictly after `after_ms`, in ms (whole seconds),
    /// or `None` if there is none before croner's horizon (the year 5000),
    /// or if the stored pattern or zone no longer parses. Pausing is not
    /// looked at.
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        self.compiled()?.next_after(after_ms)
    }

    /// What a tick that finds the fire at `due_ms` (the stored
    /// [`Schedule::next_fire_at_ms`]) due at `now_ms` should do.
    ///
    /// The fire times in `[due_ms, now_ms]` are due. Those no older than the
    /// window, `now_ms - max(catch_up_secs * 1000, ON_TIME_MS)` inclusive
    /// (a fire exactly `catch_up_secs` late still fires), fire, at most the
    /// [`MAX_CATCH_UP_FIRES`] newest of them; every other due fire is
    /// missed. `next` is the first fire time after `now_ms`.
    ///
    /// The work is bounded however long the outage: the fires to start are
    /// found walking back from `now_ms`, and the missed ones are counted
    /// walking forward from `due_ms` up to [`MAX_COUNTED_MISSES`], where
    /// the count saturates and [`FirePlan::missed_capped`] is set.
    ///
    /// A paused schedule, or one whose stored pattern no longer parses,
    /// plans nothing and has no next fire. A tick early (`due_ms` after
    /// `now_ms`) fires nothing and misses nothing.
    pub fn plan(&self, due_ms: u64, now_ms: u64) -> FirePlan {
        if self.paused {
            return FirePlan::default();
        }
        let Some(c) = self.compiled() else {
            return FirePlan::default();
        };
        let next = c.next_after(now_ms);
        if due_ms > now_ms {
            return FirePlan {
                next,
                ..FirePlan::default()
            };
        }
        let late = self.catch_up_secs.saturating_mul(1000).max(ON_TIME_MS);
        let oldest = now_ms.saturating_sub(late).max(due_ms);
        let mut fire = Vec::new();
        let mut at = now_ms;
        while fire.len() < MAX_CATCH_UP_FIRES {
            match c.last_at_or_before(at) {
                Some(t) if t >= oldest => {
                    fire.push(t);
                    let Some(before) = t.checked_sub(1) else {
                        break;
                    };
                    at = before;
                }
                _ => break,
            }
        }
        fire.reverse();
        // Everything due before the first fire (or at all, if none fires)
        // was missed.
        let end = fire.first().copied().unwrap_or(now_ms.saturating_add(1));
        let (missed, missed_capped) = c.count(due_ms, end, MAX_COUNTED_MISSES);
        FirePlan {
            fire,
            missed,
            missed_capped,
            next,
        }
    }

    fn compiled(&self) -> Option<Compiled> {
        let cron = parse_cron(&self.cron).ok()?;
        let tz = parse_timezone(&self.timezone).ok()?;
        Some(Compiled::new(cron, &self.cron, tz))
    }
}

/// The parser every pattern goes through: seconds optional (5 or 6
/// fields), no year field, Vixie weekdays (0 and 7 are Sunday).
fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
}

const NICKNAMES: [&str; 6] = [
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@hourly",
];

/// The six fields of a pattern: name, what it takes (for messages), letters
/// it may hold besides names, and the names it may hold.
const FIELDS: [(&str, &str, &str, &[&str]); 6] = [
    ("second", "0-59", "", &[]),
    ("minute", "0-59", "", &[]),
    ("hour", "0-23", "", &[]),
    (
        "day-of-month",
        "1-31, L (the last day) or 15W (the weekday nearest the 15th)",
        "LW?",
        &[],
    ),
    (
        "month",
        "1-12 or JAN-DEC",
        "",
        &[
            "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
        ],
    ),
    (
        "day-of-week",
        "0-7 or SUN-SAT (0 and 7 are Sunday), MON#2 (the second Monday), FRI#L (the last Friday)",
        "L#?+",
        &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
    ),
];

/// Parses a pattern, or says in words what is wrong with it and which
/// field is at fault.
fn parse_cron(cron: &str) -> Result<Cron, String> {
    let pattern = cron.trim();
    if pattern.is_empty() {
        return Err(
            "must not be empty: write 5 fields (minute hour day-of-month month day-of-week), e.g. \"0 9 * * 1-5\", 6 with seconds first, or a nickname like \"@daily\"".into(),
        );
    }
    if cron.len() > MAX_CRON_LEN {
        return Err(format!("must be at most {MAX_CRON_LEN} bytes"));
    }
    if pattern.contains('@') {
        if !NICKNAMES.iter().any(|n| pattern.eq_ignore_ascii_case(n)) {
            return Err(format!(
                "{pattern:?} is not a nickname croner knows; use one of {}",
                NICKNAMES.join(", ")
            ));
        }
        return parser().parse(pattern).map_err(|e| describe(&e));
    }
    let fields: Vec<&str> = pattern.split_whitespace().collect();
    let skip = match fields.len() {
        5 => 1,
        6 => 0,
        n => {
            return Err(format!(
                "has {n} field{}; write 5 (minute hour day-of-month month day-of-week), e.g. \"0 9 * * 1-5\", or 6 with seconds first",
                if n == 1 { "" } else { "s" }
            ));
        }
    };
    for (i, token) in fields.iter().enumerate() {
        let (name, takes, letters, names) = FIELDS[i + skip];
        let hint = format!("use {takes}, with '*', ',', '-' and '/' (e.g. */15)");
        // Croner turns day and month names into numbers anywhere in the
        // pattern, so "MON" would quietly mean minute 1: names and letters
        // are only accepted in the fields they belong to.
        let mut rest = token.to_ascii_uppercase();
        for n in names {
            rest = rest.replace(n, " ");
        }
        if let Some(c) = rest
            .chars()
            .find(|c| !(c.is_ascii_digit() || "*,-/ ".contains(*c) || letters.contains(*c)))
        {
            return Err(format!(
                "{name} field {token:?}: {c:?} is not allowed there; {hint}"
            ));
        }
        // The field alone in an otherwise catch-all pattern: croner's
        // messages do not say which field they are about.
        let mut probe = ["0", "*", "*", "*", "*", "*"];
        probe[i + skip] = token;
        if let Err(e) = parser().parse(&probe.join(" ")) {
            return Err(format!("{name} field {token:?}: {}; {hint}", describe(&e)));
        }
    }
    parser().parse(pattern).map_err(|e| describe(&e))
}

/// Croner's error in words for a message that already names the field.
fn describe(e: &CronError) -> String {
    match e {
        CronError::EmptyPattern => "is empty".into(),
        CronError::InvalidPattern(m) | CronError::ComponentError(m) => {
            let m = m.trim_end_matches('.');
            let mut chars = m.chars();
            match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect(),
                None => "is not a valid pattern".into(),
            }
        }
        CronError::IllegalCharacters(_) => "holds a character that is not allowed".into(),
        CronError::InvalidDate | CronError::InvalidTime | CronError::TimeSearchLimitExceeded => {
            "never matches a real date".into()
        }
    }
}

fn parse_timezone(name: &str) -> Result<Tz, String> {
    let hint =
        "must be an IANA time zone name like \"Europe/Berlin\", \"America/New_York\" or \"UTC\"";
    if name.len() > MAX_TIMEZONE_LEN {
        return Err(format!("{hint} (at most {MAX_TIMEZONE_LEN} bytes)"));
    }
    Tz::from_str(name).map_err(|_| format!("{hint}; {name:?} is not one"))
}

/// A pattern ready to walk in its zone: the pattern itself, and when it
/// lists fixed times of day, one fixed-time pattern per combination (see
/// the module documentation).
struct Compiled {
    whole: Cron,
    times: Vec<Cron>,
    tz: Tz,
}

impl Compiled {
    fn new(whole: Cron, pattern: &str, tz: Tz) -> Self {
        let times = fixed_times(pattern).unwrap_or_default();
        Self { whole, times, tz }
    }

    /// The patterns a walk merges.
    fn walks(&self) -> &[Cron] {
        if self.times.is_empty() {
            std::slice::from_ref(&self.whole)
        } else {
            &self.times
        }
    }

    fn at(&self, secs: i64) -> Option<DateTime<Tz>> {
        self.tz.timestamp_opt(secs, 0).single()
    }

    /// The first fire strictly after `secs`, in seconds.
    ///
    /// Always searched exclusively: croner's inclusive search from the
    /// instant a gap ends does not find the fixed time the gap moved
    /// there (from 03:00 CEST, `0 2 * * *` answers the next day), while an
    /// exclusive search from the second before does.
    fn first_after(&self, secs: i64) -> Option<i64> {
        let start = self.at(secs)?;
        self.walks()
            .iter()
            .filter_map(|c| c.find_next_occurrence(&start, false).ok())
            .map(|t| t.timestamp())
            .min()
    }

    /// The last fire at or before `secs`, in seconds.
    fn last_until(&self, secs: i64) -> Option<i64> {
        let start = self.at(secs)?;
        self.walks()
            .iter()
            .filter_map(|c| c.find_previous_occurrence(&start, true).ok())
            .map(|t| t.timestamp())
            .max()
    }

    fn next_after(&self, after_ms: u64) -> Option<u64> {
        to_ms(self.first_after(i64::try_from(after_ms / 1000).ok()?)?)
    }

    fn last_at_or_before(&self, at_ms: u64) -> Option<u64> {
        to_ms(self.last_until(i64::try_from(at_ms / 1000).ok()?)?)
    }

    /// Whether no fire follows `now_ms`. Asked of the whole pattern first:
    /// one failed search (a few milliseconds) instead of one per listed time.
    fn never_fires_after(&self, now_ms: u64) -> bool {
        let Some(start) = i64::try_from(now_ms / 1000).ok().and_then(|s| self.at(s)) else {
            return true;
        };
        self.whole.find_next_occurrence(&start, false).is_err() || self.next_after(now_ms).is_none()
    }

    /// How many fires fall in `[from_ms, until_ms)`, counting at most `cap`;
    /// the flag says there were more.
    fn count(&self, from_ms: u64, until_ms: u64, cap: u64) -> (u64, bool) {
        // Exclusively from the second before, as in `first_after`.
        let Some(start) = i64::try_from(from_ms.div_ceil(1000))
            .ok()
            .and_then(|s| self.at(s.checked_sub(1)?))
        else {
            return (0, false);
        };
        // One head per merged walk, advanced only when it is the earliest:
        // a step costs one croner search whatever the number of walks.
        let mut heads: Vec<Option<DateTime<Tz>>> = self
            .walks()
            .iter()
            .map(|c| c.find_next_occurrence(&start, false).ok())
            .collect();
        let mut counted = 0;
        loop {
            let Some(t) = heads.iter().flatten().min().cloned() else {
                return (counted, false);
            };
            if to_ms(t.timestamp()).is_none_or(|ms| ms >= until_ms) {
                return (counted, false);
            }
            if counted == cap {
                return (counted, true);
            }
            counted += 1;
            for (head, c) in heads.iter_mut().zip(self.walks()) {
                // Equal heads are one instant (two listed times in one
                // gap): it is counted once and every walk moves past it.
                if head.as_ref() == Some(&t) {
                    *head = c.find_next_occurrence(&t, false).ok();
                }
            }
        }
    }
}

fn to_ms(secs: i64) -> Option<u64> {
    u64::try_from(secs).ok()?.checked_mul(1000)
}

/// One fixed-time pattern per combination of listed seconds, minutes and
/// hours, when the pattern lists more than one but at most
/// [`MAX_FIXED_TIMES`]; `None` otherwise.
fn fixed_times(pattern: &str) -> Option<Vec<Cron>> {
    let fields: Vec<&str> = pattern.split_whitespace().collect();
    let (seconds, rest) = match fields.as_slice() {
        [m, h, dom, mon, dow] => ("0", [*m, *h, dom, mon, dow]),
        [s, m, h, dom, mon, dow] => (*s, [*m, *h, dom, mon, dow]),
        _ => return None,
    };
    let list = |field: &str| -> Option<BTreeSet<u32>> {
        field.split(',').map(|n| n.parse::<u32>().ok()).collect()
    };
    let (seconds, minutes, hours) = (list(seconds)?, list(rest[0])?, list(rest[1])?);
    let combinations = seconds.len() * minutes.len() * hours.len();
    if combinations <= 1 || combinations > MAX_FIXED_TIMES {
        return None;
    }
    let days = rest[2..].join(" ");
    let mut crons = Vec::with_capacity(combinations);
    for h in &hours {
        for m in &minutes {
            for s in &seconds {
                crons.push(parser().parse(&format!("{s} {m} {h} {days}")).ok()?);
            }
        }
    }
    Some(crons)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// An instant written in RFC 3339, in ms.
    fn at(rfc3339: &str) -> u64 {
        let t = DateTime::parse_from_rfc3339(rfc3339).unwrap();
        u64::try_from(t.timestamp_millis()).unwrap()
    }

    fn rfc(ms: u64) -> String {
        DateTime::from_timestamp_millis(i64::try_from(ms).unwrap())
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }

    fn schedule(cron: &str, timezone: &str) -> Schedule {
        spec(json!({"name": "s", "workflow": "w", "cron": cron, "timezone": timezone}))
            .validate(at("2026-01-01T00:00:00Z"), None)
            .unwrap()
    }

    fn spec(v: serde_json::Value) -> ScheduleSpec {
        serde_json::from_value(v).unwrap()
    }

    /// The first `n` fires after `from`, as RFC 3339 UTC strings.
    fn fires(s: &Schedule, from: &str, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut t = at(from);
        for _ in 0..n {
            t = s.next_after(t).unwrap();
            out.push(rfc(t));
        }
        out
    }

    fn errors(v: serde_json::Value) -> Vec<(String, String)> {
        spec(v)
            .validate(0, None)
            .unwrap_err()
            .errors
            .into_iter()
            .map(|e| (e.pointer, e.detail))
            .collect()
    }

    #[test]
    fn berlin_daily_fires_once_on_the_spring_forward_day() {
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00Z); 02:30 never
        // happens, so the fire moves to the end of the gap.
        let s = schedule("30 2 * * *", "Europe/Berlin");
        assert_eq!(
            fires(&s, "2026-03-27T12:00:00Z", 3),
            [
                "2026-03-28T01:30:00Z", // 02:30 CET
                "2026-03-29T01:00:00Z", // 03:00 CEST, the end of the gap
                "2026-03-30T00:30:00Z", // 02:30 CEST
            ]
        );
        // The moved fire is counted where it moved to: due at 03:00 CEST,
        // the tick back two days later has missed three.
        let plan = s.plan(at("2026-03-29T01:00:00Z"), at("2026-03-31T12:00:00Z"));
        assert_eq!((plan.fire, plan.missed), (vec![], 3));
        let plan = s.plan(at("2026-03-29T01:00:00Z"), at("2026-03-29T01:00:01Z"));
        assert_eq!(
            (plan.fire, plan.missed),
            (vec![at("2026-03-29T01:00:00Z")], 0)
        );
    }

    #[test]
    fn berlin_daily_fires_once_on_the_fall_back_day() {
        // 2026-10-25: 03:00 CEST goes back to 02:00 CET (01:00Z); 02:30
        // happens at 00:30Z and again at 01:30Z. Only the first fires.
        let s = schedule("30 2 * * *", "Europe/Berlin");
        assert_eq!(
            fires(&s, "2026-10-23T12:00:00Z", 3),
            [
                "2026-10-24T00:30:00Z", // 02:30 CEST
                "2026-10-25T00:30:00Z", // the first 02:30 (CEST)
                "2026-10-26T01:30:00Z", // 02:30 CET
            ]
        );
    }

    #[test]
    fn berlin_hourly_fires_every_real_hour_once_across_both_nights() {
        let s = schedule("0 * * * *", "Europe/Berlin");
        assert_eq!(
            fires(&s, "2026-03-28T22:30:00Z", 4),
            [
                "2026-03-28T23:00:00Z", // 00:00 CET
                "2026-03-29T00:00:00Z", // 01:00 CET
                "2026-03-29T01:00:00Z", // 03:00 CEST: 02:00 does not exist
                "2026-03-29T02:00:00Z", // 04:00 CEST
            ]
        );
        assert_eq!(
            fires(&s, "2026-10-24T22:30:00Z", 5),
            [
                "2026-10-24T23:00:00Z", // 01:00 CEST
                "2026-10-25T00:00:00Z", // 02:00 CEST
                "2026-10-25T01:00:00Z", // 02:00 CET, the second pass
                "2026-10-25T02:00:00Z", // 03:00 CET
                "2026-10-25T03:00:00Z", // 04:00 CET
            ]
        );
    }

    #[test]
    fn new_york_daily_and_hourly_across_both_transitions() {
        // 2026-03-08: 02:00 EST jumps to 03:00 EDT (07:00Z).
        let daily = schedule("30 2 * * *", "America/New_York");
        assert_eq!(
            fires(&daily, "2026-03-06T12:00:00Z", 3),
            [
                "2026-03-07T07:30:00Z", // 02:30 EST
                "2026-03-08T07:00:00Z", // 03:00 EDT, the end of the gap
                "2026-03-09T06:30:00Z", // 02:30 EDT
            ]
        );
        let hourly = schedule("0 * * * *", "America/New_York");
        assert_eq!(
            fires(&hourly, "2026-03-08T04:30:00Z", 4),
            [
                "2026-03-08T05:00:00Z", // 00:00 EST
                "2026-03-08T06:00:00Z", // 01:00 EST
                "2026-03-08T07:00:00Z", // 03:00 EDT
                "2026-03-08T08:00:00Z", // 04:00 EDT
            ]
        );
        // 2026-11-01: 02:00 EDT goes back to 01:00 EST (06:00Z), so 01:00 to
        // 02:00 happens twice.
        let daily = schedule("30 1 * * *", "America/New_York");
        assert_eq!(
            fires(&daily, "2026-10-30T12:00:00Z", 3),
            [
                "2026-10-31T05:30:00Z", // 01:30 EDT
                "2026-11-01T05:30:00Z", // the first 01:30 (EDT)
                "2026-11-02T06:30:00Z", // 01:30 EST
            ]
        );
        assert_eq!(
            fires(&hourly, "2026-11-01T03:30:00Z", 4),
            [
                "2026-11-01T04:00:00Z", // 00:00 EDT
                "2026-11-01T05:00:00Z", // 01:00 EDT
                "2026-11-01T06:00:00Z", // 01:00 EST, the second pass
                "2026-11-01T07:00:00Z", // 02:00 EST
            ]
        );
    }

    #[test]
    fn listed_times_of_day_fire_once_a_day_across_transitions() {
        // Croner alone would skip 02:30 on the spring day and fire it twice
        // on the fall day: the wrapper walks each listed time as a daily
        // fixed time.
        let s = schedule("30 2,14 * * *", "Europe/Berlin");
        assert_eq!(s.next_after(0), Some(at("1970-01-01T01:30:00Z")));
        assert_eq!(
            fires(&s, "2026-03-28T12:00:00Z", 4),
            [
                "2026-03-28T13:30:00Z", // 14:30 CET
                "2026-03-29T01:00:00Z", // 02:30 moved to the end of the gap
                "2026-03-29T12:30:00Z", // 14:30 CEST
                "2026-03-30T00:30:00Z", // 02:30 CEST
            ]
        );
        assert_eq!(
            fires(&s, "2026-10-24T13:00:00Z", 3),
            [
                "2026-10-25T00:30:00Z", // the first 02:30 only
                "2026-10-25T13:30:00Z", // 14:30 CET
                "2026-10-26T01:30:00Z", // 02:30 CET
            ]
        );
        // Two listed times in one gap fire once, at its end; counting and
        // walking back agree.
        let s = schedule("15,45 2 * * *", "Europe/Berlin");
        assert_eq!(
            fires(&s, "2026-03-28T12:00:00Z", 2),
            ["2026-03-29T01:00:00Z", "2026-03-30T00:15:00Z"]
        );
        let c = s.compiled().unwrap();
        assert_eq!(
            c.count(at("2026-03-28T12:00:00Z"), at("2026-03-30T12:00:00Z"), 100),
            (3, false)
        );
        assert_eq!(
            c.last_at_or_before(at("2026-03-29T12:00:00Z")),
            Some(at("2026-03-29T01:00:00Z"))
        );
    }

    #[test]
    fn six_fields_fire_every_fifteen_seconds() {
        let s = schedule("*/15 * * * * *", "UTC");
        assert_eq!(
            fires(&s, "2026-01-01T00:00:00Z", 5),
            [
                "2026-01-01T00:00:15Z",
                "2026-01-01T00:00:30Z",
                "2026-01-01T00:00:45Z",
                "2026-01-01T00:01:00Z",
                "2026-01-01T00:01:15Z",
            ]
        );
        // Strictly after, from inside a second too.
        assert_eq!(
            s.next_after(at("2026-01-01T00:00:15Z") + 999),
            Some(at("2026-01-01T00:00:30Z"))
        );
        assert_eq!(
            s.next_after(at("2026-01-01T00:00:14Z") + 999),
            Some(at("2026-01-01T00:00:15Z"))
        );
    }

    #[test]
    fn weekdays_skip_the_weekend() {
        // 2026-01-02 is a Friday.
        let s = schedule("0 9 * * 1-5", "UTC");
        assert_eq!(
            fires(&s, "2026-01-02T09:00:00Z", 2),
            ["2026-01-05T09:00:00Z", "2026-01-06T09:00:00Z"]
        );
        let s = schedule("0 9 * * MON-FRI", "Europe/Berlin");
        assert_eq!(
            fires(&s, "2026-01-02T08:00:00Z", 1),
            ["2026-01-05T08:00:00Z"] // 09:00 CET
        );
        assert_eq!(
            fires(&schedule("@daily", "UTC"), "2026-01-02T08:00:00Z", 1),
            ["2026-01-03T00:00:00Z"]
        );
    }

    fn minutely(catch_up_secs: u64) -> Schedule {
        spec(json!({"name": "s", "workflow": "w", "cron": "* * * * *",
            "catch_up_secs": catch_up_secs}))
        .validate(0, None)
        .unwrap()
    }

    #[test]
    fn a_tick_on_time_fires_the_due_time() {
        let s = minutely(300);
        let due = at("2026-05-01T12:00:00Z");
        assert_eq!(
            s.plan(due, due + 1000),
            FirePlan {
                fire: vec![due],
                missed: 0,
                missed_capped: false,
                next: Some(at("2026-05-01T12:01:00Z")),
            }
        );
        // A tick early fires nothing.
        let early = s.plan(due, due - 1);
        assert_eq!(
            (early.fire, early.missed, early.next),
            (vec![], 0, Some(due))
        );
    }

    #[test]
    fn after_an_outage_the_last_five_minutes_fire_and_the_rest_are_missed() {
        // Ticks stopped at 12:00 and came back at 12:10:01: the window is
        // [12:05:01, 12:10:01], so 12:06 to 12:10 fire; 12:00 to 12:05 (six)
        // are missed.
        let s = minutely(300);
        let plan = s.plan(at("2026-05-01T12:00:00Z"), at("2026-05-01T12:10:01Z"));
        let fired: Vec<String> = plan.fire.iter().map(|&t| rfc(t)).collect();
        assert_eq!(
            fired,
            [
                "2026-05-01T12:06:00Z",
                "2026-05-01T12:07:00Z",
                "2026-05-01T12:08:00Z",
                "2026-05-01T12:09:00Z",
                "2026-05-01T12:10:00Z",
            ]
        );
        assert_eq!((plan.missed, plan.missed_capped), (6, false));
        assert_eq!(plan.next, Some(at("2026-05-01T12:11:00Z")));
        // The window's start is inclusive: a fire exactly catch_up_secs late
        // still fires.
        let plan = s.plan(at("2026-05-01T12:00:00Z"), at("2026-05-01T12:10:00Z"));
        assert_eq!(plan.fire.first(), Some(&at("2026-05-01T12:05:00Z")));
        assert_eq!((plan.fire.len(), plan.missed), (6, 5));
    }

    #[test]
    fn without_catch_up_only_fires_within_a_minute_fire() {
        let s = minutely(0);
        let plan = s.plan(at("2026-05-01T12:00:00Z"), at("2026-05-01T12:10:01Z"));
        assert_eq!(plan.fire, [at("2026-05-01T12:10:00Z")]);
        assert_eq!(plan.missed, 10);
        // On time is on time, even with no catch-up.
        let plan = s.plan(at("2026-05-01T12:00:00Z"), at("2026-05-01T12:00:59Z"));
        assert_eq!(
            (plan.fire, plan.missed),
            (vec![at("2026-05-01T12:00:00Z")], 0)
        );
        // Too late, even the newest: nothing fires, all were missed.
        let s = schedule("0 * * * *", "UTC");
        let plan = s.plan(at("2026-05-01T12:00:00Z"), at("2026-05-01T14:30:00Z"));
        assert_eq!((plan.fire, plan.missed), (vec![], 3));
        assert_eq!(plan.next, Some(at("2026-05-01T15:00:00Z")));
    }

    #[test]
    fn catching_up_fires_at_most_the_newest_ten() {
        let s = spec(json!({"name": "s", "workflow": "w", "cron": "* * * * * *"}))
            .validate(0, None)
            .unwrap();
        let due = at("2026-05-01T12:00:00Z");
        let plan = s.plan(due, due + 60_000);
        assert_eq!(plan.fire.len(), MAX_CATCH_UP_FIRES);
        assert_eq!(plan.fire.first(), Some(&(due + 51_000)));
        assert_eq!(plan.fire.last(), Some(&(due + 60_000)));
        assert_eq!((plan.missed, plan.missed_capped), (51, false));
    }

    #[test]
    fn a_month_of_downtime_on_a_per_second_schedule_is_bounded() {
        let s = spec(json!({"name": "s", "workflow": "w", "cron": "* * * * * *",
            "timezone": "Europe/Berlin", "catch_up_secs": MAX_CATCH_UP_SECS}))
        .validate(0, None)
        .unwrap();
        let due = at("2026-03-01T00:00:00Z");
        let now = at("2026-04-01T00:00:00.250Z");
        let started = std::time::Instant::now();
        let plan = s.plan(due, now);
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        assert_eq!(plan.fire.len(), MAX_CATCH_UP_FIRES);
        assert_eq!(plan.fire.last(), Some(&at("2026-04-01T00:00:00Z")));
        assert_eq!(
            (plan.missed, plan.missed_capped),
            (MAX_COUNTED_MISSES, true)
        );
        assert_eq!(plan.next, Some(at("2026-04-01T00:00:01Z")));
    }

    #[test]
    fn paused_schedules_have_no_next_fire_and_plan_nothing() {
        let s = spec(json!({"name": "s", "workflow": "w", "cron": "* * * * *", "paused": true}))
            .validate(at("2026-05-01T12:00:00Z"), None)
            .unwrap();
        assert_eq!(s.next_fire_at_ms, None);
        assert_eq!(
            s.plan(at("2026-05-01T12:00:00Z"), at("2026-05-01T12:00:01Z")),
            FirePlan::default()
        );
        let mut resumed = s.to_spec();
        resumed.paused = false;
        let r = resumed
            .validate(at("2026-05-01T12:00:30Z"), Some(&s))
            .unwrap();
        assert_eq!(r.next_fire_at_ms, Some(at("2026-05-01T12:01:00Z")));
        assert_eq!(r.epoch, 2);
    }

    #[test]
    fn an_update_keeps_creation_and_counters_and_bumps_the_epoch() {
        let first = schedule("0 * * * *", "UTC");
        assert_eq!(
            (first.epoch, first.created_at_ms),
            (1, at("2026-01-01T00:00:00Z"))
        );
        assert_eq!(first.next_fire_at_ms, Some(at("2026-01-01T01:00:00Z")));
        let stored = Schedule {
            fired: 7,
            missed: 2,
            skipped: 1,
            failed: 3,
            last_fire_at_ms: Some(5),
            last_run_id: Some("r1".into()),
            ..first.clone()
        };
        let mut next = stored.to_spec();
        next.cron = "*/5 * * * *".into();
        let updated = next
            .validate(at("2026-01-02T00:01:00Z"), Some(&stored))
            .unwrap();
        assert_eq!(updated.epoch, 2);
        assert_eq!(updated.created_at_ms, first.created_at_ms);
        assert_eq!(updated.updated_at_ms, at("2026-01-02T00:01:00Z"));
        assert_eq!(
            (
                updated.fired,
                updated.missed,
                updated.skipped,
                updated.failed
            ),
            (7, 2, 1, 3)
        );
        assert_eq!(updated.last_run_id.as_deref(), Some("r1"));
        assert_eq!(updated.next_fire_at_ms, Some(at("2026-01-02T00:05:00Z")));
        let mut renamed = stored.to_spec();
        renamed.name = "other".into();
        let err = renamed.validate(0, Some(&stored)).unwrap_err();
        assert_eq!(err.errors[0].pointer, "/name");
    }

    #[test]
    fn bad_patterns_are_named_in_words() {
        for (cron, says) in [
            ("61 * * * *", "minute field \"61\""),
            ("* 24 * * *", "hour field \"24\""),
            ("* * *", "has 3 fields"),
            ("", "must not be empty"),
            ("   ", "must not be empty"),
            ("*/0 * * * *", "step cannot be zero"),
            ("MON * * * *", "minute field \"MON\": 'M' is not allowed"),
            ("0 0 * * JAN", "day-of-week field \"JAN\""),
            ("0 0 * MON *", "month field \"MON\""),
            ("@every 5m", "not a nickname"),
            ("0 0 31 2 *", "never fires"),
            ("0 0 1 1 * 2030", "day-of-week field \"2030\""),
        ] {
            let errs = errors(json!({"name": "s", "workflow": "w", "cron": cron}));
            assert_eq!(errs.len(), 1, "{cron:?}: {errs:?}");
            assert_eq!(errs[0].0, "/cron", "{cron:?}");
            assert!(errs[0].1.contains(says), "{cron:?}: {}", errs[0].1);
        }
        for ok in [
            "@hourly",
            "@WEEKLY",
            "0 0 L * *",
            "0 0 * * 5#L",
            "0 0 15W * *",
            "0 0 1 * +MON",
            " 0 9 * * 1-5 ",
        ] {
            spec(json!({"name": "s", "workflow": "w", "cron": ok}))
                .validate(0, None)
                .unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
    }

    #[test]
    fn every_bad_field_is_named() {
        let deep = (0..=crate::template::MAX_VALUE_DEPTH).fold(json!(1), |v, _| json!([v]));
        let errs = errors(
            json!({"name": "Bad", "workflow": "no/such", "cron": "* * * * *",
            "timezone": "Mars/Olympus", "catch_up_secs": MAX_CATCH_UP_SECS + 1,
            "payload": {"a": deep}, "description": "d".repeat(crate::agent::MAX_DESCRIPTION_LEN + 1)}),
        );
        let mut pointers: Vec<&str> = errs.iter().map(|(p, _)| p.as_str()).collect();
        assert!(pointers[4].starts_with("/payload/a/0/0/"), "{pointers:?}");
        pointers[4] = "/payload...";
        assert_eq!(
            pointers,
            [
                "/name",
                "/description",
                "/workflow",
                "/timezone",
                "/payload...",
                "/catch_up_secs"
            ]
        );
        assert!(
            errs[3]
                .1
                .contains("IANA time zone name like \"Europe/Berlin\""),
            "{errs:?}"
        );
        assert!(errs[3].1.contains("\"Mars/Olympus\""), "{errs:?}");
        let long = "x".repeat(MAX_TIMEZONE_LEN + 1);
        let errs = errors(
            json!({"name": "s", "workflow": "w", "cron": "x".repeat(MAX_CRON_LEN + 1),
            "timezone": long}),
        );
        assert_eq!(errs.len(), 2);
        assert!(!errs[1].1.contains("xxx"), "{errs:?}");
    }

    #[test]
    fn defaults_and_wire_names() {
        let s = spec(json!({"name": "nightly", "workflow": "pr-checks", "cron": "0 3 * * *"}));
        assert_eq!(
            (s.timezone.as_str(), s.catch_up_secs, s.overlap, s.paused),
            ("UTC", 300, Overlap::Skip, false)
        );
        assert_eq!(s.payload, serde_json::Value::Null);
        for (o, wire) in [
            (Overlap::Skip, "\"skip\""),
            (Overlap::Allow, "\"allow\""),
            (Overlap::CancelPrevious, "\"cancel_previous\""),
        ] {
            assert_eq!(serde_json::to_string(&o).unwrap(), wire);
            assert_eq!(serde_json::from_str::<Overlap>(wire).unwrap(), o);
        }
        let err =
            ScheduleSpec::parse(br#"{"name":"a","workflow":"w","cron":"* * * * *","cronn":1}"#)
                .unwrap_err();
        assert!(err.to_string().contains("cronn"), "{err}");
        let stored = schedule("0 * * * *", "UTC");
        let back: Schedule =
            serde_json::from_value(serde_json::to_value(&stored).unwrap()).unwrap();
        assert_eq!(back, stored);
        // Documents stored before the `failed` counter existed still read.
        let mut old = serde_json::to_value(&stored).unwrap();
        old.as_object_mut().unwrap().remove("failed").unwrap();
        let back: Schedule = serde_json::from_value(old).unwrap();
        assert_eq!(back.failed, 0);
        assert_eq!(
            schedule_run_key("nightly", 1_700_000_000_000),
            "schedule:nightly:1700000000000"
        );
    }

    /// Simple patterns: second (sometimes), minute, hour and day-of-week
    /// each a star, a step, a number, a range or a list.
    fn simple_pattern() -> impl Strategy<Value = String> {
        // Values 0 to `n - 1`.
        let field = |n: u32| {
            prop_oneof![
                Just("*".to_owned()),
                (1..n).prop_map(|k| format!("*/{k}")),
                (0..n).prop_map(|v| v.to_string()),
                (0..n, 0..n).prop_map(|(a, b)| format!("{}-{}", a.min(b), a.max(b))),
                proptest::collection::btree_set(0..n, 1..4).prop_map(|s| s
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")),
            ]
        };
        let seconds = prop_oneof![
            3 => Just(String::new()),
            1 => field(60).prop_map(|s| format!("{s} ")),
        ];
        let dom = prop_oneof![
            Just("*".to_owned()),
            (1u32..=28).prop_map(|d| d.to_string())
        ];
        (seconds, field(60), field(24), dom, field(7))
            .prop_map(|(s, m, h, dom, dow)| format!("{s}{m} {h} {dom} * {dow}"))
    }

    fn zone() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            Just("UTC"),
            Just("Europe/Berlin"),
            Just("America/New_York"),
            // Half-hour daylight saving time.
            Just("Australia/Lord_Howe"),
            // Clocks change at midnight.
            Just("America/Santiago"),
            // Two-hour daylight saving time.
            Just("Antarctica/Troll"),
            Just("Pacific/Chatham"),
            Just("Asia/Kolkata"),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn validate_never_panics(cron in ".{0,40}", tz in ".{0,20}", fields in proptest::collection::vec("[0-9*/,#LW?+A-Z-]{1,6}", 0..8)) {
            for c in [cron, fields.join(" ")] {
                let _ = spec(json!({"name": "s", "workflow": "w", "cron": c, "timezone": tz}))
                    .validate(1_780_000_000_000, None);
            }
        }

        #[test]
        fn fires_strictly_increase_and_walking_back_agrees(
            cron in simple_pattern(),
            tz in zone(),
            // Around the transitions of 2026 and anywhere else.
            start in prop_oneof![
                Just(at("2026-03-28T12:00:00Z")),
                Just(at("2026-10-24T12:00:00Z")),
                Just(at("2026-04-04T12:00:00Z")),
                Just(at("2026-09-05T12:00:00Z")),
                0u64..4_000_000_000_000,
            ],
        ) {
            let s = spec(json!({"name": "s", "workflow": "w", "cron": cron, "timezone": tz}))
                .validate(start, None)
                .unwrap();
            let mut forward = Vec::new();
            let mut t = start;
            for _ in 0..30 {
                let Some(next) = s.next_after(t) else { break };
                prop_assert!(next > t, "{} then {}", rfc(t), rfc(next));
                prop_assert_eq!(next % 1000, 0);
                forward.push(next);
                t = next;
            }
            prop_assert!(!forward.is_empty());
            let c = s.compiled().unwrap();
            let mut back = Vec::new();
            let mut t = *forward.last().unwrap();
            while back.len() < forward.len() {
                let Some(prev) = c.last_at_or_before(t) else { break };
                back.push(prev);
                t = prev - 1;
            }
            back.reverse();
            prop_assert_eq!(&back, &forward);
            // Each fire is found again from itself, both ways.
            for &f in &forward {
                prop_assert_eq!(c.last_at_or_before(f), Some(f), "{}", rfc(f));
                prop_assert_eq!(c.count(f, f + 1, 10), (1, false), "{}", rfc(f));
            }
            let last = *forward.last().unwrap();
            prop_assert_eq!(c.count(forward[0], last + 1, 1000), (forward.len() as u64, false));
        }
    }
}
