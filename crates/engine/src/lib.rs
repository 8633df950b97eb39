//! The engine: carries out the run state machine inside a Spin component.
//!
//! The core decides ([`spindle_core::run::Run::apply`]); the engine stores the
//! decision with one compare-and-swap on the run document and then performs
//! its effects: timers into the timer document, index documents, jobs to
//! workers over outbound HTTP. Follow-up events (a worker accepted a job, no
//! worker would take it) go through the same path, one at a time, so there is
//! no recursion and no event is applied outside a compare-and-swap.
//!
//! Exactly-once dispatch rests on atomic increment: before sending a job the
//! engine increments the job's claim counter and only the caller that sees 1
//! sends it. That holds even on stores whose compare-and-swap misreports.

mod callbacks;
mod config;
mod outbound;
mod store_docs;

use std::collections::{BTreeMap, VecDeque};

use spindle_core::agent::{Agent, AgentName};
use spindle_core::run::{Effect, Event, Reject, Run, Timer, Trigger};
use spindle_core::workflow::Workflow;
use spindle_core::{keys, sign};
use spindle_spin::store::{Kv, StoreError, UpdateError};

pub use callbacks::ResultOutcome;
pub use config::Config;

/// Most timers one tick fires; the rest wait for the next tick.
pub const MAX_TIMERS_PER_TICK: usize = 100;

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
    /// A conflicting request is in progress or a precondition failed.
    #[error("{0}")]
    Conflict(String),
    /// A callback's signature is missing or wrong.
    #[error("the signature is missing or does not match")]
    Unauthorized,
    /// A malformed request: JSON Pointer of the field and what is wrong.
    #[error("{0}: {1}")]
    BadRequest(String, String),
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

/// What a tick did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TickReport {
    /// Timers that came due and were delivered.
    pub fired: usize,
    /// Timers still pending.
    pub pending: usize,
    /// When the next pending timer is due.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_at_ms: Option<u64>,
    /// Timers that could not be delivered and stay for the next tick.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// The engine, for one request.
pub struct Engine {
    /// The `default` store.
    pub kv: Kv,
    /// Settings.
    pub config: Config,
}

impl Engine {
    /// Opens the store and reads the settings.
    pub async fn open() -> Result<Self, EngineError> {
        Ok(Self {
            kv: Kv::open("default").await?,
            config: Config::load().await?,
        })
    }

    /// Reads a run.
    pub async fn run(&self, id: &str) -> Result<Run, EngineError> {
        if !spindle_core::run::valid_run_id(id) {
            return Err(EngineError::NotFound(format!("no run {id:?}")));
        }
        self.kv
            .get::<Run>(&keys::run(id))
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("no run {id:?}")))
    }

    /// Starts a run of `workflow`. With an idempotency key, a repeated request
    /// returns the run the first one created; the flag says whether this call
    /// created it.
    pub async fn create_run(
        &self,
        workflow: &str,
        trigger: Trigger,
        idempotency_key: Option<&str>,
        now: u64,
    ) -> Result<(Run, bool), EngineError> {
        let wf: Workflow = self
            .kv
            .get(&keys::workflow(workflow))
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("no workflow named {workflow:?}")))?;

        let mut agents = BTreeMap::new();
        for name in wf.agents() {
            let agent_name = AgentName::parse(name)
                .map_err(|e| EngineError::Conflict(format!("agent {name:?}: {e}")))?;
            let agent: Agent = self
                .kv
                .get(&keys::agent(&agent_name))
                .await?
                .ok_or_else(|| {
                    EngineError::Conflict(format!(
                        "agent {name:?} used by the workflow is not registered"
                    ))
                })?;
            agents.insert(name.to_owned(), agent);
        }
        let idem = idempotency_key.map(|k| sign::digest(format!("{workflow}\n{k}").as_bytes()));
        if let Some(hash) = &idem {
            // The first request to count 1 owns the key; the others return its
            // run once it is recorded. Claimed only now, after everything
            // that can refuse the request, so a refused request does not
            // burn the key.
            let claim = self
                .kv
                .increment(&keys::counter(&format!("idempotency:{hash}")), 1)?;
            if claim > 1 {
                return self.existing_run(hash).await.map(|run| (run, false));
            }
        }

        let seq = self.kv.increment(&keys::counter("runs"), 1)?;
        let id = keys::run_id(now, seq as u64);
        let (run, start) = Run::new(id.clone(), &wf, &agents, trigger, self.config.settings, now)
            .map_err(EngineError::Conflict)?;

        // The start timer goes first: if this request dies before starting the
        // run, a tick starts it.
        self.add_timers(vec![start])?;
        self.kv.set(&keys::run(&id), &run).await?;
        if let Some(hash) = &idem {
            self.kv.set(&keys::idempotency(hash), &id).await?;
        }
        self.index_add(&keys::runs_by_workflow(&run.workflow), &id)?;
        let day = keys::utc_day(now);
        self.index_add(&keys::runs_by_day(&day), &id)?;
        self.index_add(keys::RUN_DAYS, &day)?;
        self.index_add(&keys::runs_by_status(run.status.as_str()), &id)?;
        for event in &run.events {
            audit(&run, event);
        }

        let run = self.apply(&id, Event::Start, now).await?.unwrap_or(run);
        Ok((run, true))
    }

    async fn existing_run(&self, hash: &str) -> Result<Run, EngineError> {
        // The owner records the run right after creating it; wait briefly.
        for _ in 0..50 {
            if let Some(id) = self.kv.get::<String>(&keys::idempotency(hash)).await? {
                return self.run(&id).await;
            }
            sleep_ms(20).await;
        }
        Err(EngineError::Conflict(
            "a request with this Idempotency-Key is still being processed; retry later".into(),
        ))
    }

    /// Applies `event` to run `run_id` and everything that follows from it.
    /// Returns the run as it stands afterwards, or `None` if the event
    /// changed nothing.
    pub async fn apply(
        &self,
        run_id: &str,
        event: Event,
        now: u64,
    ) -> Result<Option<Run>, EngineError> {
        let first = self.apply_one(run_id, &event, now).await?;
        let Some((mut run, effects)) = first else {
            return Ok(None);
        };
        let mut queue: VecDeque<Event> = self.carry_out(&run, effects).await.into();
        while let Some(next) = queue.pop_front() {
            match self.apply_one(run_id, &next, now).await {
                Ok(Some((r, effects))) => {
                    run = r;
                    queue.extend(self.carry_out(&run, effects).await);
                }
                Ok(None) => {}
                // A follow-up overtaken by another request (the job already
                // finished, say) is not this caller's error.
                Err(EngineError::Rejected(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Some(run))
    }

    /// One compare-and-swap of the run document.
    async fn apply_one(
        &self,
        run_id: &str,
        event: &Event,
        now: u64,
    ) -> Result<Option<(Run, Vec<Effect>)>, EngineError> {
        let mut outcome: Option<(Run, Vec<Effect>)> = None;
        let mut missing = false;
        // The closure may run several times; only the last run's outcome is
        // what was written.
        self.kv
            .update::<Run, Reject>(&keys::run(run_id), |current| {
                outcome = None;
                missing = current.is_none();
                let Some(run) = current else {
                    return Ok(None);
                };
                match run.apply(event, now)? {
                    None => Ok(None),
                    Some(t) => {
                        let next = t.run.clone();
                        outcome = Some((t.run, t.effects));
                        Ok(Some(next))
                    }
                }
            })?;
        if missing {
            return Err(EngineError::NotFound(format!("no run {run_id:?}")));
        }
        Ok(outcome)
    }

    /// Carries out effects in a safe order: timers first (so a job that is
    /// sent always has its lease timer), then indexes, then the network.
    async fn carry_out(&self, run: &Run, effects: Vec<Effect>) -> Vec<Event> {
        let mut follow = Vec::new();
        let timers: Vec<Timer> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Schedule(t) => Some(t.clone()),
                _ => None,
            })
            .collect();
        if !timers.is_empty()
            && let Err(e) = self.add_timers(timers)
        {
            eprintln!("run {}: storing timers failed: {e}", run.id);
        }
        for e in &effects {
            if let Effect::StatusChanged { from, to } = e
                && let Err(err) = self.move_status(&run.id, *from, *to)
            {
                eprintln!("run {}: status index update failed: {err}", run.id);
            }
        }
        for e in effects {
            match e {
                Effect::Dispatch { job_id, step } => {
                    if let Some(ev) = self.dispatch(run, &job_id, &step).await {
                        follow.push(ev);
                    }
                }
                Effect::CancelJob { job_id, worker } => {
                    self.cancel_job(&job_id, worker.as_deref()).await;
                }
                Effect::Audit(event) => audit(run, &event),
                Effect::Schedule(_) | Effect::StatusChanged { .. } => {}
            }
        }
        follow
    }
}

/// Writes one audit event as a JSON line on the component's stdout: Spin
/// keeps it in the component's log, where a log shipper finds every run's
/// trail in one stream.
fn audit(run: &Run, event: &spindle_core::run::RunEvent) {
    println!(
        "{}",
        serde_json::json!({
            "audit": event,
            "run": run.id,
            "workflow": run.workflow,
        })
    );
}

/// Waits without blocking the component's other work.
pub async fn sleep_ms(ms: u64) {
    spin_sdk::wasip3::clocks::monotonic_clock::wait_for(ms * 1_000_000).await;
}

impl From<EngineError> for spindle_spin::http::Problem {
    fn from(e: EngineError) -> Self {
        use spindle_spin::http::Problem;
        match e {
            EngineError::Store(e) => Problem::unavailable(e.to_string()),
            EngineError::Config(m) => Problem::internal(format!("configuration: {m}")),
            EngineError::NotFound(m) => Problem::not_found(m),
            EngineError::Rejected(r) => {
                let (status, kind, title) = match &r {
                    Reject::UnknownJob { .. } => (404, "not-found", "Not found"),
                    Reject::JobNotActive { .. } => (409, "job-not-active", "Job is not active"),
                    Reject::RunFinished { .. } => (409, "run-finished", "Run is finished"),
                    Reject::NotWaitingApproval { .. } => (
                        409,
                        "not-waiting-approval",
                        "Step is not waiting for approval",
                    ),
                };
                Problem::new(status, kind, title, r.to_string())
            }
            EngineError::Conflict(m) => Problem::new(409, "conflict", "Conflict", m),
            EngineError::Unauthorized => Problem::new(
                401,
                "signature",
                "Bad signature",
                format!(
                    "sign the exact body with HMAC-SHA256 under the job token and send it as {}: sha256=<hex>",
                    spindle_core::job::SIGNATURE_HEADER
                ),
            ),
            EngineError::BadRequest(pointer, detail) => {
                Problem::invalid("Invalid request body", pointer, detail)
            }
        }
    }
}
