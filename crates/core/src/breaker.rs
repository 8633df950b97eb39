//! The circuit breaker each worker of the pool has on dispatch.
//!
//! A worker that keeps failing (refused connections, 5xx answers, no answer
//! in time) is taken out of dispatch for a while instead of costing every
//! job a failed request and its timeout: after [`BreakerSettings::failures`]
//! failures within [`BreakerSettings::window_ms`] its breaker *opens* and
//! dispatch skips it for [`BreakerSettings::open_ms`]; then it is
//! *half-open*, jobs go to it again as trials, one failure opens it anew and
//! [`BreakerSettings::close_successes`] accepted jobs *close* it.
//!
//! This module is the rule only: a [`Breaker`] is a small document the engine
//! keeps per worker, time comes in as an argument, and a change comes back as
//! data (the next document and its [`Transition`]s) for the engine to store,
//! log and count. Open turns half-open lazily: nothing writes when the open
//! period ends; readers see it ([`Breaker::effective`]) and the next outcome
//! recorded stores it.

use serde::{Deserialize, Serialize};

/// Where a worker's breaker stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Jobs go to the worker; failures are counted.
    #[default]
    Closed,
    /// The worker failed too often: dispatch does not try it.
    Open,
    /// The open period is over: jobs go to it as trials.
    HalfOpen,
}

impl BreakerState {
    /// The wire name (`closed`, `open`, `half_open`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

impl std::fmt::Display for BreakerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When a breaker opens and closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Failures within [`Self::window_ms`] that open the breaker; 0 turns
    /// the breaker off (every worker is always tried).
    pub failures: u32,
    /// How far back failures count.
    pub window_ms: u64,
    /// How long an open breaker keeps its worker out of dispatch.
    pub open_ms: u64,
    /// Accepted trial jobs that close a half-open breaker (at least 1).
    pub close_successes: u32,
}

impl Default for BreakerSettings {
    /// 5 failures within 2 minutes open it for 60 s; 3 successes close it.
    fn default() -> Self {
        Self {
            failures: 5,
            window_ms: 120_000,
            open_ms: 60_000,
            close_successes: 3,
        }
    }
}

impl BreakerSettings {
    /// Whether breakers are on at all.
    pub fn enabled(&self) -> bool {
        self.failures > 0
    }

    fn close_after(&self) -> u32 {
        self.close_successes.max(1)
    }
}

/// What one offer of a job to a worker tells its breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The worker took the job.
    Success,
    /// The worker is broken or away: not reached, a 5xx other than 503, or
    /// no answer in time.
    Failure,
}

impl Outcome {
    /// What a worker's answer with HTTP `status` to a job offer tells its
    /// breaker; `None` for answers that say nothing about its health: a
    /// refusal of the job itself (4xx) and "busy" (429, and 503, which a
    /// worker answers when it is full or shutting down): a worker protecting
    /// itself is not broken, and opening its breaker would only take
    /// capacity away from a saturated pool.
    /// The statuses that count as taken are those dispatch takes as
    /// accepted (`409`: the worker holds the job already).
    pub fn of_status(status: u16) -> Option<Self> {
        match status {
            200 | 201 | 202 | 409 => Some(Self::Success),
            503 => None,
            500..=599 => Some(Self::Failure),
            _ => None,
        }
    }
}

/// One change of a breaker's state, for the log and the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// The state it left.
    pub from: BreakerState,
    /// The state it entered.
    pub to: BreakerState,
    /// When (Unix milliseconds): for open to half-open, when the open
    /// period ended, not when it was noticed.
    pub at_ms: u64,
}

/// One worker's breaker: the document the engine stores per worker. Small
/// and bounded: at most [`BreakerSettings::failures`] timestamps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Breaker {
    /// The worker's base URL (the key holds only its digest).
    pub worker: String,
    /// The state as stored; an open breaker whose period is over is
    /// half-open already ([`Breaker::effective`]).
    pub state: BreakerState,
    /// When the stored state began (0: never changed).
    #[serde(default)]
    pub since_ms: u64,
    /// Closed: the times of the latest failures within the window, oldest
    /// first. Empty in the other states.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<u64>,
    /// Half-open: the trial jobs accepted so far.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub successes: u32,
    /// How many times it ever opened.
    #[serde(default)]
    pub opened_total: u64,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A change to store: the next document and what happened on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The document to store.
    pub breaker: Breaker,
    /// The state changes, in order (none when only counts changed).
    pub transitions: Vec<Transition>,
}

impl Breaker {
    /// A closed breaker for `worker` that never saw a failure.
    pub fn new(worker: &str) -> Self {
        Self {
            worker: worker.to_owned(),
            ..Self::default()
        }
    }

    /// The state at `now` and since when: an open breaker whose period is
    /// over is half-open from the moment it ended.
    pub fn effective(&self, now: u64, s: &BreakerSettings) -> (BreakerState, u64) {
        match self.state {
            BreakerState::Open if now >= self.reopens_at(s) => {
                (BreakerState::HalfOpen, self.reopens_at(s))
            }
            state => (state, self.since_ms),
        }
    }

    /// Whether dispatch may try the worker at `now`.
    pub fn admits(&self, now: u64, s: &BreakerSettings) -> bool {
        !s.enabled() || self.effective(now, s).0 != BreakerState::Open
    }

    /// When an open breaker turns half-open.
    pub fn reopens_at(&self, s: &BreakerSettings) -> u64 {
        self.since_ms.saturating_add(s.open_ms)
    }

    /// The failures counted towards opening at `now` (closed only).
    pub fn recent_failures(&self, now: u64, s: &BreakerSettings) -> usize {
        let floor = now.saturating_sub(s.window_ms);
        self.failures.iter().filter(|t| **t >= floor).count()
    }

    /// Records `outcome` at `now`. `None` when nothing changes, so the
    /// common case (a closed worker taking a job) writes nothing.
    pub fn record(&self, outcome: Outcome, now: u64, s: &BreakerSettings) -> Option<Recorded> {
        if !s.enabled() {
            return None;
        }
        let mut next = self.clone();
        let mut transitions = Vec::new();
        let mut enter = |next: &mut Breaker, to: BreakerState, at_ms: u64| {
            transitions.push(Transition {
                from: next.state,
                to,
                at_ms,
            });
            next.state = to;
            next.since_ms = at_ms;
            next.failures.clear();
            next.successes = 0;
            if to == BreakerState::Open {
                next.opened_total = next.opened_total.saturating_add(1);
            }
        };
        if let (BreakerState::HalfOpen, at) = self.effective(now, s)
            && self.state == BreakerState::Open
        {
            enter(&mut next, BreakerState::HalfOpen, at);
        }
        match (next.state, outcome) {
            // Still open: an answer to a job sent before it opened says
            // nothing new. Closed and taking jobs: nothing to note (old
            // failures leave with the next write).
            (BreakerState::Open, _) | (BreakerState::Closed, Outcome::Success) => {}
            (BreakerState::Closed, Outcome::Failure) => {
                let floor = now.saturating_sub(s.window_ms);
                next.failures.retain(|t| *t >= floor);
                next.failures.push(now);
                // Instances' clocks differ a little: keep the order anyway.
                next.failures.sort_unstable();
                let keep = s.failures as usize;
                if next.failures.len() > keep {
                    next.failures.drain(..next.failures.len() - keep);
                }
                if next.failures.len() >= keep {
                    enter(&mut next, BreakerState::Open, now);
                }
            }
            (BreakerState::HalfOpen, Outcome::Failure) => {
                enter(&mut next, BreakerState::Open, now);
            }
            (BreakerState::HalfOpen, Outcome::Success) => {
                next.successes = next.successes.saturating_add(1);
                if next.successes >= s.close_after() {
                    enter(&mut next, BreakerState::Closed, now);
                }
            }
        }
        (next != *self).then_some(Recorded {
            breaker: next,
            transitions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: BreakerSettings = BreakerSettings {
        failures: 5,
        window_ms: 120_000,
        open_ms: 60_000,
        close_successes: 3,
    };

    /// Records every outcome in turn; returns the breaker and every
    /// transition.
    fn replay(b: &Breaker, events: &[(Outcome, u64)]) -> (Breaker, Vec<Transition>) {
        let mut b = b.clone();
        let mut all = Vec::new();
        for (o, t) in events {
            if let Some(r) = b.record(*o, *t, &S) {
                b = r.breaker;
                all.extend(r.transitions);
            }
        }
        (b, all)
    }

    fn failures_at(times: &[u64]) -> Vec<(Outcome, u64)> {
        times.iter().map(|t| (Outcome::Failure, *t)).collect()
    }

    fn t(from: BreakerState, to: BreakerState, at_ms: u64) -> Transition {
        Transition { from, to, at_ms }
    }

    use BreakerState::{Closed, HalfOpen, Open};

    #[test]
    fn wire_names() {
        for (s, name) in [(Closed, "closed"), (Open, "open"), (HalfOpen, "half_open")] {
            assert_eq!(serde_json::to_value(s).unwrap(), name);
            assert_eq!(s.as_str(), name);
            let back: BreakerState = serde_json::from_value(name.into()).unwrap();
            assert_eq!(back, s);
        }
        let doc = serde_json::to_value(Breaker::new("http://w1")).unwrap();
        assert_eq!(
            doc,
            serde_json::json!({"worker": "http://w1", "state": "closed", "since_ms": 0, "opened_total": 0})
        );
    }

    #[test]
    fn what_counts() {
        assert_eq!(Outcome::of_status(202), Some(Outcome::Success));
        assert_eq!(Outcome::of_status(409), Some(Outcome::Success));
        assert_eq!(Outcome::of_status(500), Some(Outcome::Failure));
        assert_eq!(Outcome::of_status(502), Some(Outcome::Failure));
        assert_eq!(Outcome::of_status(504), Some(Outcome::Failure));
        for busy_or_refused in [503, 429, 400, 401, 413] {
            assert_eq!(
                Outcome::of_status(busy_or_refused),
                None,
                "{busy_or_refused}"
            );
        }
    }

    #[test]
    fn five_failures_within_the_window_open_it() {
        let b = Breaker::new("http://w1");
        let (b4, tr) = replay(&b, &failures_at(&[0, 10, 20, 30]));
        assert_eq!(b4.state, Closed);
        assert!(tr.is_empty());
        assert_eq!(b4.failures, [0, 10, 20, 30]);
        let r = b4.record(Outcome::Failure, 119_000, &S).unwrap();
        assert_eq!(r.breaker.state, Open);
        assert_eq!(r.breaker.since_ms, 119_000);
        assert_eq!(r.breaker.opened_total, 1);
        assert!(r.breaker.failures.is_empty());
        assert_eq!(r.transitions, [t(Closed, Open, 119_000)]);
        assert!(!r.breaker.admits(119_000 + 59_999, &S));
    }

    #[test]
    fn failures_spread_over_ten_minutes_do_not() {
        let times: Vec<u64> = (0..5).map(|i| i * 150_000).collect();
        let (b, tr) = replay(&Breaker::new("w"), &failures_at(&times));
        assert_eq!(b.state, Closed, "{b:?}");
        assert!(tr.is_empty());
        assert_eq!(
            b.failures,
            [600_000],
            "old failures leave with the next write"
        );
        assert_eq!(b.recent_failures(600_000, &S), 1);
        assert_eq!(b.recent_failures(800_000, &S), 0);
    }

    #[test]
    fn successes_while_closed_write_nothing() {
        let b = Breaker::new("w");
        assert_eq!(b.record(Outcome::Success, 5, &S), None);
        let (b2, _) = replay(&b, &failures_at(&[1, 2]));
        assert_eq!(b2.record(Outcome::Success, 5, &S), None);
    }

    #[test]
    fn open_turns_half_open_lazily_and_three_successes_close_it() {
        let (open, _) = replay(&Breaker::new("w"), &failures_at(&[1, 2, 3, 4, 5]));
        assert_eq!(open.effective(60_004, &S), (Open, 5));
        assert_eq!(open.effective(60_005, &S), (HalfOpen, 60_005));
        assert!(open.admits(60_005, &S));
        // A late answer to a job sent before it opened changes nothing.
        assert_eq!(open.record(Outcome::Success, 100, &S), None);
        assert_eq!(open.record(Outcome::Failure, 100, &S), None);

        let r = open.record(Outcome::Success, 70_000, &S).unwrap();
        assert_eq!(r.transitions, [t(Open, HalfOpen, 60_005)]);
        assert_eq!((r.breaker.state, r.breaker.successes), (HalfOpen, 1));
        let r2 = r.breaker.record(Outcome::Success, 71_000, &S).unwrap();
        assert!(r2.transitions.is_empty());
        let r3 = r2.breaker.record(Outcome::Success, 72_000, &S).unwrap();
        assert_eq!(r3.transitions, [t(HalfOpen, Closed, 72_000)]);
        assert_eq!(r3.breaker.state, Closed);
        assert_eq!(r3.breaker.successes, 0);
        assert_eq!(r3.breaker.opened_total, 1);
    }

    #[test]
    fn a_failure_while_half_open_reopens_for_a_fresh_period() {
        let (open, _) = replay(&Breaker::new("w"), &failures_at(&[1, 2, 3, 4, 5]));
        let (half, _) = replay(&open, &[(Outcome::Success, 61_000)]);
        let r = half.record(Outcome::Failure, 62_000, &S).unwrap();
        assert_eq!(r.transitions, [t(HalfOpen, Open, 62_000)]);
        assert_eq!(r.breaker.opened_total, 2);
        assert_eq!(r.breaker.successes, 0);
        assert!(!r.breaker.admits(62_000 + 59_999, &S));
        assert!(r.breaker.admits(62_000 + 60_000, &S));
        // Straight from open once the period is over: both transitions.
        let r = open.record(Outcome::Failure, 90_000, &S).unwrap();
        assert_eq!(
            r.transitions,
            [t(Open, HalfOpen, 60_005), t(HalfOpen, Open, 90_000)]
        );
    }

    #[test]
    fn switched_off_it_admits_everything_and_records_nothing() {
        let off = BreakerSettings { failures: 0, ..S };
        let (open, _) = replay(&Breaker::new("w"), &failures_at(&[1, 2, 3, 4, 5]));
        assert!(open.admits(6, &off));
        assert_eq!(open.record(Outcome::Failure, 6, &off), None);
    }

    #[test]
    fn a_document_kept_under_larger_settings_is_cut_down() {
        let mut b = Breaker::new("w");
        b.failures = (1..=9).collect();
        let r = b.record(Outcome::Failure, 10, &S).unwrap();
        assert_eq!(r.breaker.state, Open);
        assert!(r.breaker.failures.is_empty());
    }

    /// What must hold of every stored breaker.
    fn check(b: &Breaker, s: &BreakerSettings) -> Result<(), String> {
        if !b.failures.is_sorted() {
            return Err(format!("failures out of order: {b:?}"));
        }
        match b.state {
            Closed if b.failures.len() >= s.failures as usize || b.successes != 0 => {
                Err(format!("closed with too much: {b:?}"))
            }
            Open | HalfOpen if !b.failures.is_empty() || b.opened_total == 0 => {
                Err(format!("open without failures cleared or counted: {b:?}"))
            }
            Open if b.successes != 0 => Err(format!("open with successes: {b:?}")),
            HalfOpen if b.successes >= s.close_successes.max(1) => {
                Err(format!("half-open past closing: {b:?}"))
            }
            _ => Ok(()),
        }
    }

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![Just(Outcome::Success), Just(Outcome::Failure)]
    }

    fn settings() -> impl Strategy<Value = BreakerSettings> {
        (1u32..8, 1u64..200_000, 1u64..100_000, 1u32..5).prop_map(
            |(failures, window_ms, open_ms, close_successes)| BreakerSettings {
                failures,
                window_ms,
                open_ms,
                close_successes,
            },
        )
    }

    proptest! {
        /// Any outcomes at any times (clocks of instances disagree, so
        /// not even in order): no panic, never an invalid document.
        #[test]
        fn never_panics_nor_leaves_an_invalid_state(
            s in settings(),
            events in prop::collection::vec((outcome(), any::<u64>()), 0..60),
        ) {
            let mut b = Breaker::new("w");
            for (o, now) in events {
                let _ = b.effective(now, &s);
                let _ = b.admits(now, &s);
                let _ = b.recent_failures(now, &s);
                if let Some(r) = b.record(o, now, &s) {
                    prop_assert_ne!(&r.breaker, &b);
                    b = r.breaker;
                    check(&b, &s).map_err(TestCaseError::fail)?;
                    for tr in &r.transitions {
                        prop_assert_ne!(tr.from, tr.to);
                    }
                }
            }
        }

        /// With time moving forward: a closed breaker opens exactly when
        /// the threshold of failures fell within the window since it
        /// last closed.
        #[test]
        fn opens_only_after_enough_failures_within_the_window(
            s in settings(),
            events in prop::collection::vec((outcome(), 0u64..100_000), 0..80),
        ) {
            let mut b = Breaker::new("w");
            let mut now = 1_000_000u64;
            // Failures recorded while closed, since it last closed.
            let mut seen: Vec<u64> = Vec::new();
            for (o, step) in events {
                now += step;
                let was = b.effective(now, &s).0;
                let r = b.record(o, now, &s);
                let within = |seen: &[u64]| {
                    seen.iter().filter(|t| **t >= now.saturating_sub(s.window_ms)).count()
                };
                if was == Closed && o == Outcome::Failure {
                    seen.push(now);
                    let opened = r.as_ref().is_some_and(|r| r.breaker.state == Open);
                    prop_assert_eq!(opened, within(&seen) >= s.failures as usize,
                        "failures {:?} at {}", seen, now);
                }
                if let Some(r) = r {
                    for tr in &r.transitions {
                        if tr.from == Closed {
                            prop_assert_eq!(tr.to, Open);
                            prop_assert!(within(&seen) >= s.failures as usize);
                        }
                        if tr.to == Closed {
                            seen.clear();
                        }
                    }
                    b = r.breaker;
                }
            }
        }
    }
}
