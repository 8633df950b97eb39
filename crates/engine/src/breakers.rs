//! Each worker's circuit breaker, kept in the store so every instance of
//! every component sees the same one.
//!
//! The rule is [`spindle_core::breaker`]; here is where its document lives
//! (`breaker:<sha256 of the worker URL>`) and how it is read and written.
//! Dispatch reads a worker's document before trying it: one read, and no
//! write while the worker is closed and taking jobs, which is nearly always.
//! Only a change (a failure, a trial, a transition) is written, by
//! compare-and-swap; a lost race is retried a few times and then given up,
//! which at worst delays opening or closing by one outcome. On Spin's stores
//! the first write of a document inserts blindly (architecture, "Store
//! facts"), so the first failures of a worker recorded at the same moment
//! may count as one: the breaker opens a few failures later, once.
//!
//! A breaker must never stop a dispatch: a document that cannot be read,
//! decoded or written is logged and the worker treated as closed.

use serde::Serialize;
use spindle_core::breaker::{Breaker, BreakerState, Outcome, Recorded};
use spindle_core::keys;

use crate::store::{decode, encode};
use crate::{Engine, Host, Store, Workers};

/// How many times recording an outcome retries a lost compare-and-swap.
const CAS_ATTEMPTS: usize = 8;

/// One worker's circuit breaker as dispatch sees it now: what `/health`
/// and the metrics show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BreakerView {
    /// The worker's base URL, as the `workers` variable lists it.
    pub worker: String,
    /// The state now: an open breaker whose open period is over shows as
    /// `half_open`, though nothing has been written yet.
    pub state: BreakerState,
    /// When that state began (Unix milliseconds; 0: never changed).
    pub since_ms: u64,
    /// How many times the breaker ever opened.
    pub opened_total: u64,
    /// Failures counted towards opening (closed only: within the window).
    pub recent_failures: u32,
    /// Why the document could not be read, if it could not; the state is
    /// then `closed`, which is what dispatch assumes too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Every worker's breaker in `pool`, in the order of the `workers`
/// variable: one store read per worker. For components that watch the
/// pool without an engine (health, metrics).
pub async fn views<S: Store>(store: &S, pool: &crate::Pool, now: u64) -> Vec<BreakerView> {
    let s = &pool.breaker;
    let mut out = Vec::with_capacity(pool.workers.len());
    for worker in &pool.workers {
        let (b, error) = match read(store, worker).await {
            Ok(b) => (b, None),
            Err(e) => (Breaker::new(worker), Some(e)),
        };
        let (state, since_ms) = if s.enabled() {
            b.effective(now, s)
        } else {
            (BreakerState::Closed, b.since_ms)
        };
        out.push(BreakerView {
            worker: worker.clone(),
            state,
            since_ms,
            opened_total: b.opened_total,
            recent_failures: match state {
                BreakerState::Closed => b.recent_failures(now, s) as u32,
                _ => 0,
            },
            error,
        });
    }
    out
}

/// `worker`'s breaker as stored (a fresh closed one if none); `Err` says
/// why it could not be read.
async fn read<S: Store>(store: &S, worker: &str) -> Result<Breaker, String> {
    let key = keys::breaker(worker);
    match store.get_raw(&key).await {
        Ok(None) => Ok(Breaker::new(worker)),
        Ok(Some(bytes)) => decode(&key, &bytes).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

impl<S: Store, W: Workers, H: Host> Engine<S, W, H> {
    /// Every worker's breaker, in the order of the `workers` variable: one
    /// store read per worker.
    pub async fn breakers(&self) -> Vec<BreakerView> {
        let pool = crate::Pool {
            workers: self.config.workers.clone(),
            breaker: self.config.breaker,
        };
        views(&self.store, &pool, self.host.now_ms()).await
    }

    /// `worker`'s breaker as stored (a fresh closed one if none); `Err`
    /// says why it could not be read.
    async fn read_breaker(&self, worker: &str) -> Result<Breaker, String> {
        read(&self.store, worker).await
    }

    /// What dispatch goes by: `worker`'s breaker, or a closed one (logged)
    /// when it cannot be read. `None` when breakers are off.
    pub(crate) async fn breaker(&self, worker: &str) -> Option<Breaker> {
        if !self.config.breaker.enabled() {
            return None;
        }
        let shown = spindle_core::metrics::redact_url(worker);
        Some(self.read_breaker(worker).await.unwrap_or_else(|e| {
            self.host.log(&format!(
                "worker {shown}: circuit breaker unreadable ({e}); treating it as closed"
            ));
            Breaker::new(worker)
        }))
    }

    /// Whether a job may go to `worker` whose breaker dispatch read as `b`:
    /// always unless it is half-open, when only as many trial jobs as close
    /// it go through in each open period (an increment decides; a counter
    /// that cannot be taken lets the job through, as a breaker that cannot
    /// be read does). The period's counter expires a day later.
    pub(crate) async fn take_trial(&self, worker: &str, b: &Breaker) -> bool {
        let s = &self.config.breaker;
        let now = self.host.now_ms();
        let (state, since) = b.effective(now, s);
        if !s.enabled() || state != BreakerState::HalfOpen {
            return true;
        }
        let period = now.saturating_sub(since) / s.open_ms.max(1);
        let key = keys::breaker_trials(worker, since, period);
        match self.store.increment(&key, 1).await {
            Ok(n) => {
                if n == 1
                    && let Err(e) = self.expire_at(&[key], now.saturating_add(86_400_000)).await
                {
                    self.host.log(&format!(
                        "worker {}: trial counter not filed for expiry: {e}",
                        spindle_core::metrics::redact_url(worker)
                    ));
                }
                n <= i64::from(s.close_successes)
            }
            Err(e) => {
                self.host.log(&format!(
                    "worker {}: trial counter unavailable ({e}); letting the job through",
                    spindle_core::metrics::redact_url(worker)
                ));
                true
            }
        }
    }

    /// Records what offering a job to `worker` showed, given the breaker
    /// dispatch read (`seen`). Writes only when the breaker changes; logs
    /// and counts every transition.
    pub(crate) async fn record_outcome(
        &self,
        worker: &str,
        seen: Option<&Breaker>,
        outcome: Outcome,
    ) {
        let Some(seen) = seen else { return };
        let now = self.host.now_ms();
        let s = &self.config.breaker;
        if seen.record(outcome, now, s).is_none() {
            return;
        }
        let key = keys::breaker(worker);
        for _ in 0..CAS_ATTEMPTS {
            let (cas, bytes) = match self.store.watch(&key).await {
                Ok(read) => read,
                Err(e) => return self.breaker_write_failed(worker, &e.to_string()),
            };
            // A document that does not decode is replaced: the breaker
            // starts over rather than staying broken.
            let current = bytes
                .and_then(|b| decode::<Breaker>(&key, &b).ok())
                .unwrap_or_else(|| Breaker::new(worker));
            let Some(r) = current.record(outcome, now, s) else {
                return;
            };
            let encoded = match encode(&r.breaker) {
                Ok(e) => e,
                Err(e) => return self.breaker_write_failed(worker, &e.to_string()),
            };
            match self.store.swap(cas, &encoded).await {
                Ok(true) => return self.announce(worker, &r).await,
                Ok(false) => {}
                Err(e) => return self.breaker_write_failed(worker, &e.to_string()),
            }
        }
        self.breaker_write_failed(worker, "too much contention");
    }

    fn breaker_write_failed(&self, worker: &str, why: &str) {
        let shown = spindle_core::metrics::redact_url(worker);
        self.host.log(&format!(
            "worker {shown}: recording a dispatch outcome in its circuit breaker failed: {why}"
        ));
    }

    /// Logs and counts the transitions of a stored change.
    async fn announce(&self, worker: &str, r: &Recorded) {
        let shown = spindle_core::metrics::redact_url(worker);
        let s = &self.config.breaker;
        for t in &r.transitions {
            let why = match (t.from, t.to) {
                (BreakerState::Closed, BreakerState::Open) => format!(
                    "{} failures within {} s; not tried for {} s",
                    s.failures,
                    s.window_ms / 1000,
                    s.open_ms / 1000
                ),
                (BreakerState::HalfOpen, BreakerState::Open) => {
                    format!("a trial job failed; not tried for {} s", s.open_ms / 1000)
                }
                (_, BreakerState::HalfOpen) => "open period over; trial jobs go to it".into(),
                (_, BreakerState::Closed) => format!("{} trial jobs taken", s.close_successes),
                _ => String::new(),
            };
            self.host.log(&format!(
                "worker {shown}: circuit breaker {} -> {} at {} ({why}; opened {} times in all)",
                t.from, t.to, t.at_ms, r.breaker.opened_total
            ));
            if let Err(e) = self
                .store
                .increment(&keys::breaker_transitions(t.to.as_str()), 1)
                .await
            {
                self.host.log(&format!(
                    "worker {shown}: counting a circuit breaker transition failed: {e}"
                ));
            }
        }
    }
}
