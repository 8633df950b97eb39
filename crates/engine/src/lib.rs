//! The engine: carries out the run state machine on a key-value store.
//!
//! The core decides ([`spindle_core::run::Run::apply`]); the engine stores
//! the decision with one compare-and-swap on the run document and then
//! carries out every effect: timers into time-bucketed timer documents
//! (stored *before* the run change that needs them), jobs to workers, audit
//! lines. Follow-up events (a worker accepted a job, no worker would take it)
//! go through the same path, one at a time, so there is no recursion and no
//! event is applied outside a compare-and-swap.
//!
//! Exactly-once dispatch rests on atomic increment: before sending a job the
//! engine increments the job's claim counter and only the caller that sees 1
//! sends it. That holds even on stores whose compare-and-swap misreports.
//!
//! Dispatch goes through each worker's circuit breaker (a small document
//! per worker, see `breakers`): a worker that keeps failing is skipped for
//! a while, so jobs go to the others or wait instead of failing.
//!
//! The engine talks to the world through three small traits: a document
//! [`Store`], a [`Workers`] client and a [`Host`] (clock and logs). Spin
//! components get them from `spindle-spin`; [`testing`] has in-memory ones
//! with fault injection, so every rule here is tested natively.

mod approvals;
pub mod audit;
pub mod breakers;
mod callbacks;
mod config;
mod dispatch;
mod env;
mod expiry;
pub mod metrics;
pub mod registry;
mod retention;
mod runs;
pub mod schedules;
pub mod store;
pub mod testing;
mod timers;
pub mod webhooks;

use std::collections::VecDeque;

use spindle_core::keys;
use spindle_core::run::{Effect, Event, Reject, Run};

pub use approvals::{ApprovalFilter, ApprovalPage, Decided, DecisionRequest, DecisionResult};
pub use breakers::BreakerView;
pub use callbacks::ResultOutcome;
pub use config::{Config, POOL_VARIABLES, Pool, VARIABLES};
pub use env::{Host, Sent, Workers};
pub use runs::{RunFilter, RunPage, parse_cursor};
pub use store::{Store, StoreError, StoreExt, UpdateError};
pub use timers::TickReport;

/// Most timers one tick fires; the rest wait for the next tick.
pub const MAX_TIMERS_PER_TICK: usize = 200;

/// Why the engine could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A setting is missing or malformed.
    #[error("configuration: {0}")]
    Config(String),
    /// Something named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The event does not apply to the run as it is.
    #[error(transparent)]
    Rejected(#[from] Reject),
    /// A precondition failed.
    #[error("{0}")]
    Conflict(String),
    /// A request doing the same thing (under the same idempotency key) is
    /// still in progress: retry later.
    #[error("{0}")]
    InFlight(String),
    /// A callback's signature is missing or wrong.
    #[error("the signature is missing or does not match")]
    Unauthorized,
    /// A malformed request: JSON Pointer of the field and what is wrong.
    #[error("{0}: {1}")]
    BadRequest(String, String),
    /// The caller is authenticated but may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// A signed approval link that is forged, malformed or expired.
    #[error(transparent)]
    Link(#[from] spindle_core::approval::LinkError),
    /// A signed approval link that was used already.
    #[error("this approval link was used already")]
    LinkUsed,
    /// A document failed validation (a trigger payload its workflow's
    /// input schema, say); nothing was changed.
    #[error(transparent)]
    Invalid(#[from] spindle_core::ValidationError),
}

impl<E: Into<EngineError>> From<UpdateError<E>> for EngineError {
    fn from(e: UpdateError<E>) -> Self {
        match e {
            UpdateError::Store(s) => EngineError::Store(s),
            UpdateError::Rejected(r) => r.into(),
        }
    }
}

impl From<std::convert::Infallible> for EngineError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

/// The engine, for one request.
pub struct Engine<S, W, H> {
    /// The `default` store.
    pub store: S,
    /// The worker client.
    pub workers: W,
    /// Clock and logs.
    pub host: H,
    /// Settings.
    pub config: Config,
}

impl<S: Store, W: Workers, H: Host> Engine<S, W, H> {
    /// Reads a run.
    pub async fn run(&self, id: &str) -> Result<Run, EngineError> {
        if !spindle_core::ids::valid_run_id(id) {
            return Err(EngineError::NotFound(format!("no run {id:?}")));
        }
        self.store
            .get::<Run>(&keys::run(id))
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("no run {id:?}")))
    }

    /// Waits (20 ms at a time, `steps` times) for a document another
    /// request is about to write; `None` if it never comes.
    async fn await_doc<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        steps: u32,
    ) -> Result<Option<T>, EngineError> {
        for _ in 0..steps {
            if let Some(doc) = self.store.get(key).await? {
                return Ok(Some(doc));
            }
            self.host.sleep_ms(20).await;
        }
        Ok(None)
    }

    /// Applies `event` to run `run_id` and everything that follows from it.
    /// Returns the run as it stands afterwards (changed or not).
    pub async fn apply(&self, run_id: &str, event: Event) -> Result<Run, EngineError> {
        let (run, effects) = self.transition(run_id, &event).await?;
        Ok(self.settle(run, effects).await)
    }

    /// Carries out `effects` of a stored transition of `run`, and every
    /// follow-up event they lead to. A follow-up that fails is logged, not
    /// returned: the transition the caller asked for is stored, and what the
    /// follow-up would have recorded is recovered by the step's lease timer.
    async fn settle(&self, mut run: Run, effects: Vec<Effect>) -> Run {
        let mut queue: VecDeque<Event> = self.carry_out(&run, effects).await.into();
        while let Some(next) = queue.pop_front() {
            match self.transition(&run.id, &next).await {
                Ok((r, effects)) => {
                    run = r;
                    self.drop_unrecorded_pointer(&run, &next).await;
                    queue.extend(self.carry_out(&run, effects).await);
                }
                // Overtaken by another request (the job already finished,
                // say): not this caller's concern.
                Err(EngineError::Rejected(_)) => {}
                Err(e) => self.host.log(&format!(
                    "run {}: follow-up {next:?} not recorded ({e}); its lease timer recovers it",
                    run.id
                )),
            }
        }
        run
    }

    /// One event: a compare-and-swap of the run document. The timers the
    /// transition schedules are stored first, so a stored run always has
    /// its timers; a failed timer write stores nothing. Returns the run as
    /// stored and the transition's effects (those of an unchanged run too).
    async fn transition(
        &self,
        run_id: &str,
        event: &Event,
    ) -> Result<(Run, Vec<Effect>), EngineError> {
        let key = keys::run(run_id);
        for _ in 0..store::MAX_CAS_ATTEMPTS {
            let (cas, bytes) = self.store.watch(&key).await?;
            let Some(bytes) = bytes else {
                return Err(EngineError::NotFound(format!("no run {run_id:?}")));
            };
            let run: Run = store::decode(&key, &bytes)?;
            let t = run.apply(event, self.host.now_ms())?;
            self.schedule(&t.effects).await?;
            match t.run {
                None => return Ok((run, t.effects)),
                Some(next) => {
                    if self.store.swap(cas, &store::encode(&next)?).await? {
                        self.count_change(Some(&run), &next).await;
                        return Ok((next, t.effects));
                    }
                }
            }
        }
        Err(StoreError::Contention(key).into())
    }

    /// Counts what a stored change of a run adds to the metrics. Only the
    /// writer whose swap won counts, so each change counts once; a failed
    /// count is logged and loses only itself.
    async fn count_change(&self, old: Option<&Run>, new: &Run) {
        if old.is_none()
            && let Err(e) = metrics::count_run(&self.store, new.created_at_ms).await
        {
            self.host
                .log(&format!("run {}: activity not counted: {e}", new.id));
        }
        let observations = spindle_core::metrics::observe(old, new);
        if observations.is_empty() {
            return;
        }
        if let Err(e) = metrics::record(&self.store, &observations, self.host.now_ms()).await {
            self.host
                .log(&format!("run {}: metrics not counted: {e}", new.id));
        }
    }

    /// Carries out effects in order; returns the follow-up events. Timers
    /// were stored before the transition.
    async fn carry_out(&self, run: &Run, effects: Vec<Effect>) -> Vec<Event> {
        let mut follow = Vec::new();
        for e in effects {
            match e {
                Effect::Schedule(_) => {}
                Effect::Audit(event) => {
                    let entry = spindle_core::audit::AuditEntry {
                        seq: 0,
                        at_ms: event.at_ms,
                        kind: event.kind.clone(),
                        actor: event.actor.clone(),
                        request_id: self.host.request_id(),
                        run: Some(run.id.clone()),
                        workflow: Some(run.workflow.clone()),
                        step: event.step.clone(),
                        summary: event.detail.clone(),
                    };
                    // The run's own trail has it either way.
                    match audit::append(&self.store, entry).await {
                        Ok(audit::Appended {
                            uncounted: Some(e), ..
                        }) => self
                            .host
                            .log(&format!("run {}: activity not counted: {e}", run.id)),
                        Ok(_) => {}
                        Err(e) => self
                            .host
                            .log(&format!("run {}: audit entry not stored: {e}", run.id)),
                    }
                    self.host.audit(
                        &serde_json::json!({
                            "audit": event,
                            "run": run.id,
                            "workflow": run.workflow,
                            "request_id": self.host.request_id(),
                        })
                        .to_string(),
                    );
                }
                Effect::Dispatch { job_id, step } => {
                    if let Some(ev) = self.dispatch(run, &job_id, &step).await {
                        follow.push(ev);
                    }
                }
                Effect::Assess { step } => {
                    if let Some(ev) = self.assess(run, &step).await {
                        follow.push(ev);
                    }
                }
                Effect::CancelJob { job_id, worker } => {
                    self.cancel_job(&job_id, worker.as_deref()).await;
                }
            }
        }
        follow
    }
}
