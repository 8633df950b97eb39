//! Metrics: the families Spindle exports, where their counts live in the
//! store, what a run transition adds to them, and the Prometheus text
//! exposition.
//!
//! Every count is a store counter changed by atomic increment, so all
//! instances of all components add to one number and a scrape reads the
//! sum. A scrape must cost the same with ten runs stored as with ten
//! million, so it never lists runs: each family keeps a small index document
//! of the label sets it has seen (its *series*), bounded by what the labels
//! can take (routes, statuses, workers, agents), never by the amount of work.
//! A series files itself in that index when its count crosses a power of two
//! (1, 2, 4, ...): the first increment files it, and should that write be
//! lost (a crash, a racing first write of the index) a later crossing files
//! it again, at a cost of a few dozen writes over a counter's life.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::approval::Outcome;
use crate::run::{Run, StepStatus};

/// How a family's samples behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// A value now.
    Gauge,
    /// Observations counted into buckets, with their sum and count.
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family.
#[derive(Debug, PartialEq, Eq)]
pub struct Family {
    /// The exported name (`_total` included for counters).
    pub name: &'static str,
    /// Its `# HELP` text.
    pub help: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// Its label names, in the order [`Family::series`] takes values.
    pub labels: &'static [&'static str],
    /// A histogram's bucket upper bounds in milliseconds (exported in
    /// seconds); empty for other kinds.
    pub buckets_ms: &'static [u64],
}

/// Duration buckets for runs and steps: a second to an hour.
const DURATION_BUCKETS_MS: &[u64] = &[
    1_000, 5_000, 15_000, 30_000, 60_000, 300_000, 900_000, 3_600_000,
];

/// Wait buckets for approvals: a minute to a day.
const WAIT_BUCKETS_MS: &[u64] = &[
    60_000, 300_000, 900_000, 3_600_000, 14_400_000, 28_800_000, 86_400_000,
];

macro_rules! family {
    ($id:ident, $name:literal, $kind:ident, [$($label:literal),*], $help:literal) => {
        family!($id, $name, $kind, [$($label),*], &[], $help);
    };
    ($id:ident, $name:literal, $kind:ident, [$($label:literal),*], $buckets:expr, $help:literal) => {
        #[doc = $help]
        pub const $id: Family = Family {
            name: $name,
            help: $help,
            kind: Kind::$kind,
            labels: &[$($label),*],
            buckets_ms: $buckets,
        };
    };
}

family!(
    HTTP_REQUESTS,
    "spindle_http_requests_total",
    Counter,
    ["component", "route", "status"],
    "HTTP requests answered, by component, route (the API path template) and status; health probes and scrapes are not counted."
);
family!(
    WEBHOOKS,
    "spindle_webhooks_received_total",
    Counter,
    ["source", "outcome"],
    "Webhook deliveries received, by source and outcome (started, unmatched, failed, duplicate, ping, or the reason it was refused)."
);
family!(
    RUNS_STARTED,
    "spindle_runs_started_total",
    Counter,
    ["trigger"],
    "Runs started, by what started them (manual, webhook, schedule, rerun)."
);
family!(
    RUNS_FINISHED,
    "spindle_runs_finished_total",
    Counter,
    ["status"],
    "Runs ended, by final status."
);
family!(
    RUN_DURATION,
    "spindle_run_duration_seconds",
    Histogram,
    ["status"],
    DURATION_BUCKETS_MS,
    "Time from a run's creation to its end, by final status."
);
family!(
    STEP_DURATION,
    "spindle_step_duration_seconds",
    Histogram,
    ["agent", "status"],
    DURATION_BUCKETS_MS,
    "Time from a step's (or fan-out item's) first dispatch to its end, by agent and final status."
);
family!(
    JOBS_DISPATCHED,
    "spindle_jobs_dispatched_total",
    Counter,
    ["worker"],
    "Jobs a worker accepted."
);
family!(
    DISPATCH_FAILURES,
    "spindle_dispatch_failures_total",
    Counter,
    ["worker"],
    "Dispatches to a worker that failed: not reached, no answer, or refused."
);
family!(
    APPROVALS_CREATED,
    "spindle_approvals_created_total",
    Counter,
    ["level"],
    "Approvals asked for, by risk level."
);
family!(
    APPROVALS_DECIDED,
    "spindle_approvals_decided_total",
    Counter,
    ["decision"],
    "Approvals decided by approvers (approved or rejected)."
);
family!(
    APPROVALS_EXPIRED,
    "spindle_approvals_expired_total",
    Counter,
    [],
    "Approvals nobody decided in time."
);
family!(
    APPROVAL_WAIT,
    "spindle_approval_wait_seconds",
    Histogram,
    ["outcome"],
    WAIT_BUCKETS_MS,
    "Time from an approval being asked for to its end, by outcome (approved, rejected, expired)."
);
family!(
    SCHEDULE_FIRES,
    "spindle_schedule_fires_total",
    Counter,
    ["outcome"],
    "Schedule fires, by outcome (started, skipped, missed, failed)."
);
family!(
    RATE_LIMITED,
    "spindle_rate_limited_total",
    Counter,
    ["class"],
    "Requests refused by a rate limit, by class of route."
);
family!(
    AUTH_FAILURES,
    "spindle_auth_failures_total",
    Counter,
    ["reason"],
    "Failed authentications, by reason."
);
/// The families kept as store counters, in exposition order.
pub const STORED: &[&Family] = &[
    &HTTP_REQUESTS,
    &WEBHOOKS,
    &RUNS_STARTED,
    &RUNS_FINISHED,
    &RUN_DURATION,
    &STEP_DURATION,
    &JOBS_DISPATCHED,
    &DISPATCH_FAILURES,
    &APPROVALS_CREATED,
    &APPROVALS_DECIDED,
    &APPROVALS_EXPIRED,
    &APPROVAL_WAIT,
    &SCHEDULE_FIRES,
    &RATE_LIMITED,
    &AUTH_FAILURES,
];

/// Most series one family keeps; a series beyond it is counted but not
/// exported, so no label can grow a scrape without bound.
pub const MAX_SERIES: usize = 2_000;

/// Longest label value kept; longer ones are cut.
pub const MAX_LABEL_BYTES: usize = 200;

/// One series: a family's label values, in its label order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Series(pub Vec<String>);

impl Family {
    /// The series with these label values (cut to [`MAX_LABEL_BYTES`]).
    pub fn series(&self, values: &[&str]) -> Series {
        Series(
            values
                .iter()
                .map(|v| cut(v, MAX_LABEL_BYTES).to_owned())
                .collect(),
        )
    }

    /// The document listing the family's series.
    pub fn index_key(&self) -> String {
        format!("metrics:series:{}", self.name)
    }

    /// The counter behind a counter series (or a histogram's count).
    pub fn count_key(&self, s: &Series) -> String {
        format!("counter:m:{}:{}", self.name, series_id(s))
    }

    /// A histogram series' sum of observations, in milliseconds.
    pub fn sum_key(&self, s: &Series) -> String {
        format!("counter:m:{}:{}:sum", self.name, series_id(s))
    }

    /// A histogram series' count of observations in bucket `i` alone (not
    /// cumulative; `i == buckets_ms.len()` is the overflow bucket).
    pub fn bucket_key(&self, s: &Series, i: usize) -> String {
        format!("counter:m:{}:{}:b{i}", self.name, series_id(s))
    }

    /// The bucket an observation of `ms` falls in.
    pub fn bucket_of(&self, ms: u64) -> usize {
        self.buckets_ms
            .iter()
            .position(|&b| ms <= b)
            .unwrap_or(self.buckets_ms.len())
    }
}

fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A short, key-safe id for a series: its label values may hold anything
/// (a worker's URL, a route template).
fn series_id(s: &Series) -> String {
    let joined = serde_json::to_vec(&s.0).unwrap_or_default();
    crate::sign::digest(&joined)[..16].to_owned()
}

/// A worker's URL as metrics and health show it: without credentials
/// (`user:pass@`), query or fragment, which a pool URL might carry and which
/// must not end up in labels or answers.
pub fn redact_url(url: &str) -> String {
    let url = url.split(['?', '#']).next().unwrap_or_default();
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://{host}{path}")
        }
        None => url.rsplit_once('@').map_or(url, |(_, h)| h).to_owned(),
    }
}

/// Whether a counter that moved by `delta` to `new` crossed a power of two,
/// which is when its series files itself (again) in its family's index.
pub fn crossed_power_of_two(new: i64, delta: i64) -> bool {
    if new <= 0 || delta <= 0 {
        return false;
    }
    let old = new.saturating_sub(delta);
    old <= 0 || new.ilog2() > old.ilog2()
}

/// A family's index document: the series it has seen, sorted.
pub type SeriesIndex = Vec<Series>;

/// Adds `s` to `index`; false if it was there already or the index is full.
pub fn file_series(index: &mut SeriesIndex, s: &Series) -> bool {
    if index.len() >= MAX_SERIES {
        return false;
    }
    match index.binary_search(s) {
        Ok(_) => false,
        Err(at) => {
            index.insert(at, s.clone());
            true
        }
    }
}

/// A count to add, as data: what the engine (or a component) increments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// Add `n` to a counter series.
    Count {
        /// The family.
        family: &'static Family,
        /// Its label values.
        labels: Vec<String>,
        /// How much.
        n: i64,
    },
    /// Observe a duration in a histogram series.
    Duration {
        /// The family.
        family: &'static Family,
        /// Its label values.
        labels: Vec<String>,
        /// The duration in milliseconds.
        ms: u64,
    },
    /// A pending approval appeared (`+1`) or ended (`-1`): kept per
    /// ten-minute bucket of its expiry, for [`expiring_key`].
    Expiring {
        /// When it expires.
        at_ms: u64,
        /// +1 or -1.
        delta: i64,
    },
}

/// How much time one expiry bucket covers.
pub const EXPIRY_BUCKET_MS: u64 = 600_000;

/// The counter of pending approvals expiring in the ten minutes from
/// `bucket * EXPIRY_BUCKET_MS`.
pub fn expiring_key(bucket: u64) -> String {
    format!("counter:m:approvals-expiring:{bucket}")
}

/// The expiry buckets within the next hour from `now_ms`, which
/// `spindle_approvals_expiring_soon` sums.
pub fn expiring_soon_buckets(now_ms: u64) -> std::ops::RangeInclusive<u64> {
    let first = now_ms / EXPIRY_BUCKET_MS;
    first..=(now_ms + 3_600_000) / EXPIRY_BUCKET_MS
}

fn status_str<T: Serialize>(s: &T) -> String {
    match serde_json::to_value(s) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "unknown".to_owned(),
    }
}

/// What a run's change from `old` to `new` adds to the metrics: runs ended,
/// steps (and fan-out items) ended, approvals asked for and ended. `old` is
/// `None` for a run just created. A pure function of the two documents, so
/// whoever stores the change (and only the writer that won the swap) counts
/// it exactly once.
pub fn observe(old: Option<&Run>, new: &Run) -> Vec<Observation> {
    let mut out = Vec::new();
    if old.is_none() {
        out.push(Observation::Count {
            family: &RUNS_STARTED,
            labels: vec![if new.rerun_of.is_some() {
                "rerun".to_owned()
            } else {
                status_str(&new.trigger.kind)
            }],
            n: 1,
        });
    }
    // A run may end in the very change that creates it (a re-run whose
    // every step is reused).
    if new.status.is_terminal() && !old.is_some_and(|o| o.status.is_terminal()) {
        let status = status_str(&new.status);
        out.push(Observation::Count {
            family: &RUNS_FINISHED,
            labels: vec![status.clone()],
            n: 1,
        });
        let end = new.finished_at_ms.unwrap_or(new.created_at_ms);
        out.push(Observation::Duration {
            family: &RUN_DURATION,
            labels: vec![status],
            ms: end.saturating_sub(new.created_at_ms),
        });
    }
    for (i, step) in new.steps.iter().enumerate() {
        let agent = new
            .plan
            .get(i)
            .map(|p| p.agent.name.to_string())
            .unwrap_or_default();
        let before = old.and_then(|o| o.steps.get(i)).filter(|s| s.id == step.id);
        observe_unit(before, step, &agent, &mut out);
        for item in &step.items {
            let before = before.and_then(|b| b.items.iter().find(|x| x.id == item.id));
            observe_unit(before, item, &agent, &mut out);
        }
    }
    out
}

fn observe_unit(
    old: Option<&crate::run::StepState>,
    new: &crate::run::StepState,
    agent: &str,
    out: &mut Vec<Observation>,
) {
    let ended = |s: StepStatus| matches!(s, StepStatus::Succeeded | StepStatus::Failed);
    if ended(new.status) && !old.is_some_and(|o| ended(o.status)) && new.reused_from.is_none() {
        // Steps that never ran here (reused by a re-run: see the
        // condition above; failed before any dispatch) have no duration
        // worth a bucket.
        if let (Some(first), Some(done)) = (new.attempts.first(), new.done_at_ms) {
            let agent = new
                .attempts
                .last()
                .and_then(|a| a.agent.clone())
                .unwrap_or_else(|| agent.to_owned());
            out.push(Observation::Duration {
                family: &STEP_DURATION,
                labels: vec![agent, status_str(&new.status)],
                ms: done.saturating_sub(first.dispatched_at_ms),
            });
        }
    }
    let Some(gate) = new.gate.as_ref().filter(|g| g.approval.is_some()) else {
        return;
    };
    let before = old
        .and_then(|o| o.gate.as_ref())
        .filter(|g| g.approval == gate.approval);
    if before.is_none() {
        out.push(Observation::Count {
            family: &APPROVALS_CREATED,
            labels: vec![status_str(&gate.level)],
            n: 1,
        });
        if gate.outcome.is_none()
            && let Some(at) = gate.expires_at_ms
        {
            out.push(Observation::Expiring {
                at_ms: at,
                delta: 1,
            });
        }
    }
    let (Some(outcome), None) = (gate.outcome, before.and_then(|b| b.outcome)) else {
        return;
    };
    // Filed and ended in one change (nothing pending was counted).
    if before.is_some()
        && let Some(at) = gate.expires_at_ms
    {
        out.push(Observation::Expiring {
            at_ms: at,
            delta: -1,
        });
    }
    let label = match outcome {
        Outcome::Approved => "approved",
        Outcome::Rejected => "rejected",
        Outcome::Expired => "expired",
        Outcome::AutoApproved | Outcome::Cancelled => return,
    };
    if outcome == Outcome::Expired {
        out.push(Observation::Count {
            family: &APPROVALS_EXPIRED,
            labels: vec![],
            n: 1,
        });
    } else {
        out.push(Observation::Count {
            family: &APPROVALS_DECIDED,
            labels: vec![label.to_owned()],
            n: 1,
        });
    }
    if let (Some(asked), Some(done)) = (gate.requested_at_ms, gate.decided_at_ms) {
        out.push(Observation::Duration {
            family: &APPROVAL_WAIT,
            labels: vec![label.to_owned()],
            ms: done.saturating_sub(asked),
        });
    }
}

/// A family's samples as read from the store (or computed), ready to
/// render.
#[derive(Debug, Clone, PartialEq)]
pub enum Samples {
    /// Counter or gauge values per series.
    Values(Vec<(Series, f64)>),
    /// Histogram series: per-bucket counts (not cumulative, overflow last)
    /// and the sum in milliseconds.
    Histograms(Vec<(Series, Vec<u64>, u64)>),
}

/// Renders one family in the Prometheus text format (version 0.0.4):
/// `# HELP`, `# TYPE`, then its samples (cumulative buckets with `le`
/// including `+Inf`, `_sum` in seconds, `_count`).
pub fn render(out: &mut String, family: &Family, samples: &Samples) {
    let _ = writeln!(out, "# HELP {} {}", family.name, escape_help(family.help));
    let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind.as_str());
    match samples {
        Samples::Values(values) => {
            for (s, v) in values {
                let _ = writeln!(
                    out,
                    "{}{} {}",
                    family.name,
                    labels(family.labels, &s.0, None),
                    number(*v)
                );
            }
        }
        Samples::Histograms(hs) => {
            for (s, buckets, sum_ms) in hs {
                let mut total = 0u64;
                for (i, n) in buckets.iter().enumerate() {
                    total = total.saturating_add(*n);
                    let le = match family.buckets_ms.get(i) {
                        Some(ms) => number(*ms as f64 / 1000.0),
                        None => "+Inf".to_owned(),
                    };
                    let _ = writeln!(
                        out,
                        "{}_bucket{} {total}",
                        family.name,
                        labels(family.labels, &s.0, Some(&le))
                    );
                }
                let plain = labels(family.labels, &s.0, None);
                let _ = writeln!(
                    out,
                    "{}_sum{plain} {}",
                    family.name,
                    number(*sum_ms as f64 / 1000.0)
                );
                let _ = writeln!(out, "{}_count{plain} {total}", family.name);
            }
        }
    }
}

fn labels(names: &[&str], values: &[String], le: Option<&str>) -> String {
    let mut pairs: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape_label(v)))
        .collect();
    if let Some(le) = le {
        pairs.push(format!("le=\"{le}\""));
    }
    if pairs.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", pairs.join(","))
    }
}

fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Renders a gauge family computed at scrape time (not stored).
pub fn render_gauge(
    out: &mut String,
    name: &str,
    help: &str,
    label_names: &[&str],
    values: &[(Vec<String>, f64)],
) {
    render_computed(out, Kind::Gauge, name, help, label_names, values);
}

/// Renders a counter or gauge family computed at scrape time from
/// documents other than counters (a breaker's `opened_total`, say).
pub fn render_computed(
    out: &mut String,
    kind: Kind,
    name: &str,
    help: &str,
    label_names: &[&str],
    values: &[(Vec<String>, f64)],
) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {}", kind.as_str());
    for (vals, v) in values {
        let _ = writeln!(
            out,
            "{name}{} {}",
            labels(label_names, vals, None),
            number(*v)
        );
    }
}

/// How many days of activity counts are kept (the activity API serves at
/// most [`MAX_ACTIVITY_DAYS`] of them).
pub const ACTIVITY_DAYS_KEPT: u64 = 100;

/// Most days `GET /api/metrics/activity` answers for.
pub const MAX_ACTIVITY_DAYS: u64 = 90;

/// One milliseconds day.
pub const DAY_MS: u64 = 86_400_000;

/// The counter of one day's activity: `what` is `errors` or `runs`; `day`
/// counts days since the Unix epoch (UTC). (Entries per day come from the
/// audit trail's day markers.)
pub fn activity_key(day: u64, what: &str) -> String {
    format!("counter:m:activity:{day}:{what}")
}

/// How many of today's newest audit entries the summary's top ten is
/// counted over.
pub const SUMMARY_EXAMINED: u64 = 2_000;

/// Whether an event of the run trail counts as an error in the activity
/// figures: something failed, timed out, or expired unanswered.
pub fn is_error_event(kind: &str) -> bool {
    kind.ends_with("_failed") || kind.ends_with("_timed_out") || kind == "approval_expired"
}

/// One day of activity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayActivity {
    /// The UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// Audit entries written that day (run changes and API changes).
    pub events: u64,
    /// Those that were errors (see [`is_error_event`]).
    pub errors: u64,
    /// Runs started that day.
    pub runs: u64,
}

/// An event type and how often it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCount {
    /// The event type, e.g. `step_succeeded`.
    #[serde(rename = "type")]
    pub kind: String,
    /// How many.
    pub count: u64,
}

/// Today's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Today's totals.
    #[serde(flatten)]
    pub today: DayActivity,
    /// Errors per event, 0 when there were no events.
    pub error_rate: f64,
    /// The ten most frequent event types among today's newest
    /// `top_events_examined` entries, most frequent first (ties by name).
    pub top_events: Vec<EventCount>,
    /// How many of today's entries `top_events` counts (at most
    /// [`SUMMARY_EXAMINED`]; all of today's unless more were written).
    pub top_events_examined: u64,
}

/// The ten most frequent of `counts`, most frequent first, ties by name.
pub fn top_ten(mut counts: Vec<EventCount>) -> Vec<EventCount> {
    counts.retain(|c| c.count > 0);
    counts.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.kind.cmp(&b.kind)));
    counts.truncate(10);
    counts
}

/// Webhook outcomes counted as accepted in the webhook overview: the
/// delivery was verified and taken, and answered with success (`started`
/// runs, matched no subscription: `unmatched`, a redelivery: `duplicate`,
/// GitHub's `ping`). Every other outcome counts as rejected (see
/// [`WEBHOOK_REJECTED`]).
pub const WEBHOOK_ACCEPTED: &[&str] = &["started", "unmatched", "duplicate", "ping"];

/// Webhook outcomes counted as rejected: the delivery was refused with a
/// problem. Its source is unknown (under source `unknown`), its body too
/// large, its signature or timestamp missing, wrong or stale, its source
/// over its rate budget, its body not the JSON it should be, its delivery
/// id reused with another body (`replay`), or it matched subscriptions but
/// none could start a run (`failed`). Listed for the documentation and
/// tests; an outcome in neither list counts as rejected too.
pub const WEBHOOK_REJECTED: &[&str] = &[
    "unknown-source",
    "too-large",
    "missing-signature",
    "bad-signature",
    "missing-timestamp",
    "stale-timestamp",
    "rate-limited",
    "malformed",
    "replay",
    "failed",
];

/// Whether a webhook outcome counts as accepted (see [`WEBHOOK_ACCEPTED`]).
pub fn webhook_accepted(outcome: &str) -> bool {
    WEBHOOK_ACCEPTED.contains(&outcome)
}

/// The document holding a webhook source's last delivery
/// ([`WebhookLast`]): one per source label, rewritten by each delivery,
/// so bounded by the sources, never by the deliveries.
pub fn webhook_last_key(source: &str) -> String {
    format!("metrics:webhook-last:{}", cut(source, MAX_LABEL_BYTES))
}

/// A webhook source's last delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookLast {
    /// When it arrived (milliseconds since the Unix epoch).
    pub at_ms: u64,
    /// Its outcome, as the `outcome` label of
    /// `spindle_webhooks_received_total` names it.
    pub outcome: String,
}

/// One webhook source in the overview: its deliveries by outcome, and its
/// last delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookSource {
    /// The source label (`unknown` for deliveries to no known source).
    pub source: String,
    /// Deliveries with an accepted outcome ([`WEBHOOK_ACCEPTED`]).
    pub accepted: u64,
    /// Deliveries with any other outcome.
    pub rejected: u64,
    /// Deliveries by outcome.
    pub by_outcome: std::collections::BTreeMap<String, u64>,
    /// When the last delivery arrived, if it was recorded.
    pub last_delivery_at_ms: Option<u64>,
    /// The last delivery's outcome, if it was recorded.
    pub last_outcome: Option<String>,
}

/// The webhook overview of the counts of
/// [`WEBHOOKS`]' series (`[source, outcome]`): one entry per source,
/// sorted by name, without the last delivery (the caller reads it).
pub fn webhook_sources(counts: impl IntoIterator<Item = (Series, u64)>) -> Vec<WebhookSource> {
    let mut by_source: std::collections::BTreeMap<String, WebhookSource> = Default::default();
    for (series, n) in counts {
        let [source, outcome] = &series.0[..] else {
            continue;
        };
        let entry = by_source
            .entry(source.clone())
            .or_insert_with(|| WebhookSource {
                source: source.clone(),
                accepted: 0,
                rejected: 0,
                by_outcome: Default::default(),
                last_delivery_at_ms: None,
                last_outcome: None,
            });
        if webhook_accepted(outcome) {
            entry.accepted += n;
        } else {
            entry.rejected += n;
        }
        *entry.by_outcome.entry(outcome.clone()).or_default() += n;
    }
    by_source.into_values().collect()
}

/// The API's path templates, for the `route` label: a request's path is
/// named by the template it matches, so the label takes one value per
/// route, never one per run or key. Kept equal to `docs/openapi.json`'s
/// paths by a test.
pub const ROUTES: &[&str] = &[
    "/api/agents",
    "/api/agents/{name}",
    "/health/live",
    "/health/ready",
    "/health",
    "/metrics",
    "/webhooks/{source}",
    "/trigger/{workflow}",
    "/api/workflows",
    "/api/workflows/{name}",
    "/api/sources",
    "/api/sources/{name}",
    "/api/subscriptions",
    "/api/subscriptions/{name}",
    "/api/schedules",
    "/api/schedules/{name}",
    "/api/schedules/{name}/pause",
    "/api/schedules/{name}/resume",
    "/api/runs",
    "/api/runs/{id}",
    "/api/runs/{id}/cancel",
    "/api/runs/{id}/rerun",
    "/api/runs/{id}/steps/{step}/output",
    "/api/keys",
    "/api/keys/{id}",
    "/api/whoami",
    "/api/audit",
    "/api/metrics/activity",
    "/api/metrics/summary",
    "/api/metrics/webhooks",
    "/jobs/{job_id}/result",
    "/jobs/{job_id}/heartbeat",
    "/internal/tick",
    "/docs/problems",
    "/api/openapi.json",
    "/api/docs",
    "/approvals",
    "/approvals/{id}",
    "/approvals/{id}/decision",
    "/approvals/{id}/links",
    "/approvals/link/{token}",
    "/api/policies/approvals",
    "/",
    "/ui/",
    "/ui/{view}",
    "/ui/assets/{name}",
];

/// The template in [`ROUTES`] that `path` matches (literal segments before
/// parameters), or `other`.
pub fn route_of(path: &str) -> &'static str {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let mut best: Option<(&'static str, usize)> = None;
    for template in ROUTES {
        let t: Vec<&str> = template.split('/').collect();
        if t.len() != segs.len() {
            continue;
        }
        let mut literal = 0;
        let fits = t.iter().zip(&segs).all(|(t, s)| {
            if t.starts_with('{') {
                !s.is_empty()
            } else if t == s {
                literal += 1;
                true
            } else {
                false
            }
        });
        if fits && best.is_none_or(|(_, l)| literal > l) {
            best = Some((template, literal));
        }
    }
    best.map_or("other", |(t, _)| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_files_itself_at_each_power_of_two() {
        let crossings: Vec<i64> = (1..=20).filter(|&n| crossed_power_of_two(n, 1)).collect();
        assert_eq!(crossings, vec![1, 2, 4, 8, 16]);
        // Bigger steps still notice the crossing they jump over.
        assert!(crossed_power_of_two(10, 5));
        assert!(!crossed_power_of_two(14, 3));
        assert!(!crossed_power_of_two(0, 1));
        assert!(!crossed_power_of_two(5, -1));
        assert!(crossed_power_of_two(i64::MAX, i64::MAX));
    }

    #[test]
    fn worker_urls_lose_their_credentials() {
        assert_eq!(redact_url("http://127.0.0.1:8081"), "http://127.0.0.1:8081");
        assert_eq!(
            redact_url("https://u:p@w.example:443/base?token=x#f"),
            "https://w.example:443/base"
        );
        assert_eq!(redact_url("http://a@b@w/x"), "http://w/x");
        assert_eq!(redact_url("u:p@w"), "w");
        assert_eq!(redact_url(""), "");
    }

    #[test]
    fn routes_are_named_by_template() {
        assert_eq!(route_of("/api/runs/r1-2"), "/api/runs/{id}");
        assert_eq!(route_of("/api/runs/r1-2/cancel"), "/api/runs/{id}/cancel");
        assert_eq!(route_of("/api/runs"), "/api/runs");
        assert_eq!(route_of("/api/runs/"), "/api/runs");
        assert_eq!(route_of("/api/whoami"), "/api/whoami");
        assert_eq!(route_of("/approvals/link/abc"), "/approvals/link/{token}");
        assert_eq!(route_of("/approvals/x/links"), "/approvals/{id}/links");
        assert_eq!(route_of("/api/metrics/summary"), "/api/metrics/summary");
        assert_eq!(
            route_of("/api/runs/r1-2/steps/scan/output"),
            "/api/runs/{id}/steps/{step}/output"
        );
        assert_eq!(route_of("/api/metrics/webhooks"), "/api/metrics/webhooks");
        assert_eq!(route_of("/nope/at/all"), "other");
        assert_eq!(route_of(""), "other");
        assert_eq!(route_of("/api/runs//cancel"), "other");
    }

    #[test]
    fn the_exposition_is_cumulative_and_escaped() {
        let mut out = String::new();
        let s = RUN_DURATION.series(&["succeeded"]);
        let mut buckets = vec![0; RUN_DURATION.buckets_ms.len() + 1];
        buckets[0] = 2;
        buckets[3] = 1;
        buckets[8] = 1;
        render(
            &mut out,
            &RUN_DURATION,
            &Samples::Histograms(vec![(s, buckets, 3_601_500)]),
        );
        assert!(out.contains("# TYPE spindle_run_duration_seconds histogram"));
        assert!(
            out.contains("spindle_run_duration_seconds_bucket{status=\"succeeded\",le=\"1\"} 2")
        );
        assert!(
            out.contains("spindle_run_duration_seconds_bucket{status=\"succeeded\",le=\"30\"} 3")
        );
        assert!(
            out.contains("spindle_run_duration_seconds_bucket{status=\"succeeded\",le=\"+Inf\"} 4")
        );
        assert!(out.contains("spindle_run_duration_seconds_sum{status=\"succeeded\"} 3601.5"));
        assert!(out.contains("spindle_run_duration_seconds_count{status=\"succeeded\"} 4"));

        let mut out = String::new();
        let s = WEBHOOKS.series(&["a\"b\\c\nd", "accepted"]);
        render(&mut out, &WEBHOOKS, &Samples::Values(vec![(s, 3.0)]));
        assert!(out.contains(
            "spindle_webhooks_received_total{source=\"a\\\"b\\\\c\\nd\",outcome=\"accepted\"} 3"
        ));
    }

    #[test]
    fn buckets_include_their_upper_bound() {
        assert_eq!(RUN_DURATION.bucket_of(0), 0);
        assert_eq!(RUN_DURATION.bucket_of(1_000), 0);
        assert_eq!(RUN_DURATION.bucket_of(1_001), 1);
        assert_eq!(RUN_DURATION.bucket_of(u64::MAX), 8);
    }

    #[test]
    fn the_series_index_is_sorted_bounded_and_without_repeats() {
        let mut index = SeriesIndex::new();
        assert!(file_series(&mut index, &Series(vec!["b".into()])));
        assert!(file_series(&mut index, &Series(vec!["a".into()])));
        assert!(!file_series(&mut index, &Series(vec!["b".into()])));
        assert_eq!(
            index,
            vec![Series(vec!["a".into()]), Series(vec!["b".into()])]
        );
        let mut full: SeriesIndex = (0..MAX_SERIES)
            .map(|i| Series(vec![format!("{i:05}")]))
            .collect();
        full.sort();
        assert!(!file_series(&mut full, &Series(vec!["new".into()])));
    }

    #[test]
    fn errors_are_failures_timeouts_and_expiries() {
        for kind in [
            "step_failed",
            "run_failed",
            "attempt_failed",
            "run_timed_out",
            "approval_expired",
        ] {
            assert!(is_error_event(kind), "{kind}");
        }
        for kind in [
            "step_succeeded",
            "step_rejected",
            "run_started",
            "failed_something",
        ] {
            assert!(!is_error_event(kind), "{kind}");
        }
    }

    #[test]
    fn the_top_ten_are_the_most_frequent_with_ties_by_name() {
        let counts: Vec<EventCount> = (0..15)
            .map(|i| EventCount {
                kind: format!("k{i:02}"),
                count: i % 7,
            })
            .collect();
        let top = top_ten(counts);
        assert_eq!(top.len(), 10);
        assert_eq!(
            top[0],
            EventCount {
                kind: "k06".into(),
                count: 6
            }
        );
        assert_eq!(
            top[1],
            EventCount {
                kind: "k13".into(),
                count: 6
            }
        );
        assert!(top.windows(2).all(|w| w[0].count >= w[1].count));
        assert!(top.iter().all(|c| c.count > 0));
    }

    #[test]
    fn long_label_values_are_cut_on_a_character_boundary() {
        let long = "é".repeat(300);
        let s = HTTP_REQUESTS.series(&["api", &long, "200"]);
        assert!(s.0[1].len() <= MAX_LABEL_BYTES);
        assert!(s.0[1].chars().all(|c| c == 'é'));
    }

    #[test]
    fn webhook_outcomes_are_accepted_or_rejected_and_grouped_by_source() {
        for o in WEBHOOK_ACCEPTED {
            assert!(webhook_accepted(o), "{o}");
            assert!(!WEBHOOK_REJECTED.contains(o), "{o} is in both lists");
        }
        for o in WEBHOOK_REJECTED {
            assert!(!webhook_accepted(o), "{o}");
        }
        // Every refused signature or timestamp is a rejection.
        use crate::webhook::Rejection;
        for r in [
            Rejection::MissingSignature,
            Rejection::BadSignature,
            Rejection::MissingTimestamp,
            Rejection::StaleTimestamp,
        ] {
            assert!(WEBHOOK_REJECTED.contains(&r.reason()), "{}", r.reason());
        }

        let s = |source: &str, outcome: &str| WEBHOOKS.series(&[source, outcome]);
        let sources = webhook_sources([
            (s("github", "started"), 3),
            (s("builder", "unmatched"), 1),
            (s("github", "bad-signature"), 2),
            (s("github", "ping"), 1),
            (s("github", "something-new"), 1),
            (s("unknown", "unknown-source"), 4),
            // Not a series of this family: ignored.
            (Series(vec!["x".into()]), 9),
        ]);
        let names: Vec<&str> = sources.iter().map(|s| s.source.as_str()).collect();
        assert_eq!(names, ["builder", "github", "unknown"]);
        let github = &sources[1];
        assert_eq!((github.accepted, github.rejected), (4, 3));
        assert_eq!(github.by_outcome["bad-signature"], 2);
        assert_eq!(github.by_outcome.len(), 4);
        assert_eq!((sources[2].accepted, sources[2].rejected), (0, 4));
        assert_eq!(github.last_delivery_at_ms, None);
        assert_eq!(webhook_last_key("github"), "metrics:webhook-last:github");
    }
}
