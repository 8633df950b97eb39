//! Creating runs (with idempotency keys) and listing them.
//!
//! Listing without scans: every run has a pointer document by its
//! store-wide sequence number (`runs:seq:<seq>`, its id) and one by its
//! place among its workflow's runs (`runs:workflow:<name>:<n>`), each written
//! once with a plain write. A listing walks the pointers down from the
//! counter, newest first, and reads a bounded number per request; nothing
//! written when a run is created grows with the number of runs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use spindle_core::agent::{Agent, AgentName};
use spindle_core::ids::{run_created_ms, run_seq};
use spindle_core::keys;
use spindle_core::run::{Reuse, Run, RunStatus, Transition, Trigger};
use spindle_core::workflow::Workflow;
use spindle_core::{ids, sign};

use crate::store::StoreExt;
use crate::{Engine, EngineError, Host, Store, Workers};

/// How long a request that lost the race for an idempotency key waits for
/// the winner to record its run, in 20 ms steps (10 s: the owner records
/// right after claiming, so only a dead owner takes this long).
const IDEMPOTENCY_WAIT_STEPS: u32 = 500;

/// Most runs one listing looks at before it answers with what it found and
/// a cursor to continue from: a filter that matches few runs costs bounded
/// work per request.
pub const MAX_SCAN: usize = 500;

/// How far a run's creation time may run ahead of a later run's (clocks of
/// several instances, a slow request): a `since` listing stops only at runs
/// older than `since` by more than this.
const CLOCK_SLACK_MS: u64 = 60_000;

/// What an idempotency key created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct IdempotencyRecord {
    /// The run.
    run_id: String,
    /// Digest of the request's payload: the same key with another body is
    /// refused rather than answered with the first body's run.
    request: String,
    /// When it was recorded.
    at_ms: u64,
}

/// Which runs to list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunFilter {
    /// Only this workflow's.
    pub workflow: Option<String>,
    /// Only in this status.
    pub status: Option<RunStatus>,
    /// Created at or after (ms since the epoch).
    pub since: Option<u64>,
    /// Created at or before.
    pub until: Option<u64>,
    /// Page size.
    pub limit: usize,
    /// Continue after this cursor (from an earlier page's `next_cursor`).
    pub cursor: Option<String>,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPage {
    /// The runs, newest first.
    pub runs: Vec<Run>,
    /// Where the next page starts, if there may be more.
    pub next_cursor: Option<String>,
}

/// A listing cursor: the position (sequence number, or a workflow's run
/// number) of the last run looked at.
pub fn parse_cursor(cursor: &str) -> Option<u64> {
    cursor.parse().ok().filter(|n| *n > 0)
}

/// The documents an idempotency key of `workflow` keeps (its record, its
/// claim and takeover counters), then the key's hash: what a caller that
/// wants the key forgotten before its run is removed deletes.
pub(crate) fn idempotency_keys(workflow: &str, key: &str) -> [String; 4] {
    let hash = sign::digest(format!("{workflow}\n{key}").as_bytes());
    [
        keys::idempotency(&hash),
        keys::counter(&format!("idempotency:{hash}")),
        keys::counter(&format!("idempotency-takeover:{hash}")),
        hash,
    ]
}

impl<S: Store, W: Workers, H: Host> Engine<S, W, H> {
    /// Starts a run of `workflow`. With an idempotency key, a repeated
    /// request returns the run the first one created; the flag says whether
    /// this call created it.
    pub async fn create_run(
        &self,
        workflow: &str,
        trigger: Trigger,
        idempotency_key: Option<&str>,
    ) -> Result<(Run, bool), EngineError> {
        let wf: Workflow = self
            .store
            .get(&keys::workflow(workflow))
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("no workflow named {workflow:?}")))?;
        // Before anything is claimed or written: a refused payload changes
        // nothing and does not burn its idempotency key.
        wf.check_payload(&trigger.payload)?;
        let mut agents = BTreeMap::new();
        for name in wf.agents() {
            let agent_name = AgentName::parse(name)
                .map_err(|e| EngineError::Conflict(format!("agent {name:?}: {e}")))?;
            let agent: Agent = self
                .store
                .get(&keys::agent(&agent_name))
                .await?
                .ok_or_else(|| {
                    EngineError::Conflict(format!(
                        "agent {name:?} used by the workflow is not registered"
                    ))
                })?;
            agents.insert(name.to_owned(), agent);
        }
        let Some(key) = idempotency_key else {
            let id = self.next_run_id().await?;
            return self.start(&id, &wf, &agents, trigger, None).await;
        };
        // Claimed only now, after everything that can refuse the request, so
        // a refused request does not burn the key.
        let [_, claim_key, takeover_key, hash] = idempotency_keys(workflow, key);
        let request = sign::digest(&serde_json::to_vec(&trigger.payload).unwrap_or_default());
        if self.store.increment(&claim_key, 1).await? == 1 {
            return self
                .start_keyed(&wf, &agents, trigger, &hash, &request, &claim_key)
                .await;
        }
        if let Some(rec) = self.await_record(&hash).await? {
            return self
                .resume(rec, &wf, &agents, trigger, &hash, &request)
                .await;
        }
        // The owner claimed the key and recorded nothing: it died between
        // the two, or its store write failed. One waiter takes over (if
        // that one fails too, the key answers 409 from then on: send
        // another key).
        if self.store.increment(&takeover_key, 1).await? == 1 {
            return self
                .start_keyed(&wf, &agents, trigger, &hash, &request, &takeover_key)
                .await;
        }
        match self.await_record(&hash).await? {
            Some(rec) => {
                self.resume(rec, &wf, &agents, trigger, &hash, &request)
                    .await
            }
            None => Err(still_processing()),
        }
    }

    async fn next_run_id(&self) -> Result<String, EngineError> {
        let seq = self.store.increment(&keys::run_counter(), 1).await?;
        Ok(ids::run_id(self.host.now_ms(), seq as u64))
    }

    /// Records the key's run id, then starts the run. The caller owns the
    /// key (through `_claim`, the counter it won). A failure here leaves
    /// the key claimed and unrecorded: a later request takes it over after
    /// a wait. Releasing the claim instead would let a request that is
    /// already waiting take over while a retry owns the key anew: two runs.
    async fn start_keyed(
        &self,
        wf: &Workflow,
        agents: &BTreeMap<String, Agent>,
        trigger: Trigger,
        hash: &str,
        request: &str,
        _claim: &str,
    ) -> Result<(Run, bool), EngineError> {
        let id = self.next_run_id().await?;
        let rec = IdempotencyRecord {
            run_id: id.clone(),
            request: request.to_owned(),
            at_ms: self.host.now_ms(),
        };
        self.store.set(&keys::idempotency(hash), &rec).await?;
        self.start(&id, wf, agents, trigger, Some(hash)).await
    }

    /// Answers a repeated request from the key's record; starts the
    /// recorded run if its creator died before storing it.
    async fn resume(
        &self,
        rec: IdempotencyRecord,
        wf: &Workflow,
        agents: &BTreeMap<String, Agent>,
        trigger: Trigger,
        hash: &str,
        request: &str,
    ) -> Result<(Run, bool), EngineError> {
        if rec.request != request {
            return Err(EngineError::Conflict(
                "this Idempotency-Key was used with a different request body".into(),
            ));
        }
        for _ in 0..IDEMPOTENCY_WAIT_STEPS {
            if let Some(run) = self.store.get::<Run>(&keys::run(&rec.run_id)).await? {
                return Ok((run, false));
            }
            if self.host.now_ms().saturating_sub(rec.at_ms) > 2_000 {
                // Recorded long ago and never stored: its creator is gone.
                // Starting it under the recorded id is safe: which request
                // stores it is decided by increment, and its jobs are
                // claimed by id.
                return self
                    .start(&rec.run_id, wf, agents, trigger, Some(hash))
                    .await;
            }
            self.host.sleep_ms(20).await;
        }
        Err(still_processing())
    }

    async fn await_record(&self, hash: &str) -> Result<Option<IdempotencyRecord>, EngineError> {
        self.await_doc(&keys::idempotency(hash), IDEMPOTENCY_WAIT_STEPS)
            .await
    }

    /// Creates run `id` already started and stores it: its timers first,
    /// then its listing pointers, then the run, then its effects. A request
    /// that dies part-way leaves at most timers and pointers to a run that
    /// does not exist (skipped by the tick and the listings, removed by
    /// retention), or a stored run whose first dispatch never happened,
    /// which its lease timer retries. A keyed run may be started by more
    /// than one request (its creator died, or is slow); an increment
    /// decides which one stores it.
    async fn start(
        &self,
        id: &str,
        wf: &Workflow,
        agents: &BTreeMap<String, Agent>,
        trigger: Trigger,
        idempotency: Option<&str>,
    ) -> Result<(Run, bool), EngineError> {
        if idempotency.is_some() {
            let starts = self
                .store
                .increment(&keys::counter(&format!("start:{id}")), 1)
                .await?;
            if starts > 1 {
                match self.await_run(id).await {
                    Ok(run) => return Ok((run, false)),
                    // The request that began storing it is gone: store it
                    // here (at worst over a run that only just started,
                    // whose first job's lease then retries it).
                    Err(EngineError::InFlight(_)) => self.host.log(&format!(
                        "run {id}: its creator never stored it; starting it here"
                    )),
                    Err(e) => return Err(e),
                }
            }
        }
        let wf_seq = self
            .store
            .increment(&keys::workflow_run_counter(&wf.name), 1)
            .await? as u64;
        let t = Run::create(
            id.to_owned(),
            wf,
            agents,
            trigger,
            self.config.settings,
            self.host.now_ms(),
        )
        .map_err(EngineError::Conflict)?;
        self.store_started(id, t, wf_seq, idempotency).await
    }

    /// Stores a run just created and started (`t`): its timers first,
    /// then its listing pointers, then the run, then its effects.
    async fn store_started(
        &self,
        id: &str,
        t: Transition,
        wf_seq: u64,
        idempotency: Option<&str>,
    ) -> Result<(Run, bool), EngineError> {
        let Some(mut run) = t.run else {
            return Err(EngineError::Conflict(
                "the new run could not be started".into(),
            ));
        };
        // The id carries the creation time listings filter on; the run says
        // the same (a recorded run started late keeps its first moment).
        if let Some(created) = run_created_ms(id) {
            run.created_at_ms = created;
        }
        run.workflow_seq = wf_seq;
        run.idempotency = idempotency.map(str::to_owned);
        self.schedule(&t.effects).await?;
        let seq = run_seq(id).unwrap_or(0);
        self.store.set(&keys::run_at(seq), &id).await?;
        self.store
            .set(&keys::workflow_run_at(&run.workflow, wf_seq), &id)
            .await?;
        if idempotency.is_some()
            && let Some(existing) = self.store.get::<Run>(&keys::run(id)).await?
        {
            // Stored meanwhile by the request we took over from: never
            // write over a run that may have moved on.
            return Ok((existing, false));
        }
        self.store.set(&keys::run(id), &run).await?;
        self.count_change(None, &run).await;
        Ok((self.settle(run, t.effects).await, true))
    }

    /// Re-runs finished run `id`: a new run of the same workflow and agent
    /// versions and the same payload, started by `actor`, that reuses the
    /// outputs of the steps that succeeded (see [`Run::reusable`]) and runs
    /// the rest; with `from`, that step and everything after it run again.
    /// The new run names the old one in `rerun_of`.
    pub async fn rerun(
        &self,
        id: &str,
        from: Option<&str>,
        actor: Option<String>,
    ) -> Result<Run, EngineError> {
        let old = self.run(id).await?;
        if !old.status.is_terminal() {
            return Err(EngineError::Conflict(format!(
                "run {id} is still {}; wait for it to end or cancel it before re-running it",
                old.status.as_str()
            )));
        }
        // Refused before anything is claimed or written.
        old.reusable("", from)
            .map_err(|e| EngineError::BadRequest("/from".into(), e))?;
        // The old plan carries its agents' versions, but an agent deleted
        // since (a bad image, a retired tool) is not run again.
        for p in &old.plan {
            for agent in std::iter::once(&p.agent).chain(p.fallbacks.iter().map(|f| &f.agent)) {
                if self
                    .store
                    .get::<Agent>(&keys::agent(&agent.name))
                    .await?
                    .is_none()
                {
                    return Err(EngineError::Conflict(format!(
                        "agent {} of step {} was deleted since run {id} ran; register it again to re-run this run",
                        agent.name, p.id
                    )));
                }
            }
        }
        // The payload was checked when the old run started; the schema it
        // was checked against is part of the workflow version it kept.
        let new_id = self.next_run_id().await?;
        let reuse = old
            .reusable(&new_id, from)
            .map_err(|e| EngineError::BadRequest("/from".into(), e))?;
        // Copied, not pointed at: retention may remove the old run first.
        // A step whose output is gone (or one of whose needs is not reused)
        // runs again.
        let mut kept: Vec<Reuse> = Vec::with_capacity(reuse.len());
        let mut copies: Vec<String> = Vec::new();
        let stored = async {
            for r in reuse {
                let needs_kept = old
                    .planned(&r.step)
                    .is_some_and(|p| p.needs.iter().all(|n| kept.iter().any(|k| &k.step == n)));
                if !needs_kept {
                    continue;
                }
                let mut copied = true;
                let mut mine = Vec::new();
                for (from_job, to_job) in &r.outputs {
                    match self.store.get::<Value>(&keys::output(from_job)).await? {
                        Some(v) => {
                            mine.push(keys::output(to_job));
                            self.store.set(&keys::output(to_job), &v).await?;
                        }
                        None => {
                            copied = false;
                            break;
                        }
                    }
                }
                if copied {
                    copies.extend(mine);
                    kept.push(r);
                } else {
                    // The step runs again, maybe with other items: what
                    // was copied of it would never be pointed at.
                    for key in &mine {
                        self.store.delete(key).await?;
                    }
                    self.host.log(&format!(
                        "re-run {new_id} of {id}: the output of step {} is gone; it runs again",
                        r.step
                    ));
                }
            }
            let wf_seq = self
                .store
                .increment(&keys::workflow_run_counter(&old.workflow), 1)
                .await? as u64;
            let t = old
                .rerun(
                    new_id.clone(),
                    &kept,
                    actor,
                    self.config.settings,
                    self.host.now_ms(),
                )
                .map_err(EngineError::Conflict)?;
            Ok::<_, EngineError>(self.store_started(&new_id, t, wf_seq, None).await?.0)
        }
        .await;
        if stored.is_err() {
            // Nothing will ever point at the copies (retention finds runs,
            // not loose outputs): removed now, as far as the store lets us.
            for key in &copies {
                if let Err(e) = self.store.delete(key).await {
                    self.host.log(&format!(
                        "re-run {new_id} of {id}: removing the copy {key}: {e}"
                    ));
                }
            }
        }
        stored
    }

    /// Waits for another request to store run `id`.
    async fn await_run(&self, id: &str) -> Result<Run, EngineError> {
        self.await_doc(&keys::run(id), IDEMPOTENCY_WAIT_STEPS)
            .await?
            .ok_or_else(still_processing)
    }

    /// Lists runs newest first, per `filter`. Looks at most at
    /// [`MAX_SCAN`] runs; when it stops early, `next_cursor` says where to
    /// go on.
    pub async fn list_runs(&self, filter: &RunFilter) -> Result<RunPage, EngineError> {
        let top = match &filter.workflow {
            Some(w) => self.store.counter(&keys::workflow_run_counter(w)).await?,
            None => self.store.counter(&keys::run_counter()).await?,
        } as u64;
        let start = match filter.cursor.as_deref().and_then(parse_cursor) {
            Some(after) => after.saturating_sub(1).min(top),
            None => top,
        };
        let mut runs = Vec::new();
        let mut looked = 0;
        let mut n = start;
        // Pointers retention removed count against the budget too, so a
        // request's work stays bounded however old the store is.
        while n > 0 {
            if runs.len() == filter.limit || looked == MAX_SCAN {
                return Ok(RunPage {
                    runs,
                    next_cursor: Some((n + 1).to_string()),
                });
            }
            looked += 1;
            let pointer = match &filter.workflow {
                Some(w) => keys::workflow_run_at(w, n),
                None => keys::run_at(n),
            };
            n -= 1;
            let Some(id) = self.store.get::<String>(&pointer).await? else {
                continue;
            };
            let created = run_created_ms(&id).unwrap_or(0);
            if filter.until.is_some_and(|u| created > u) {
                continue;
            }
            if filter.since.is_some_and(|s| created < s) {
                if filter
                    .since
                    .is_some_and(|s| created.saturating_add(CLOCK_SLACK_MS) < s)
                {
                    break;
                }
                continue;
            }
            let Some(run) = self.store.get::<Run>(&keys::run(&id)).await? else {
                continue;
            };
            if filter.status.is_some_and(|s| run.status != s)
                || filter.workflow.as_ref().is_some_and(|w| &run.workflow != w)
            {
                continue;
            }
            runs.push(run);
        }
        Ok(RunPage {
            runs,
            next_cursor: None,
        })
    }
}

fn still_processing() -> EngineError {
    EngineError::InFlight(
        "a request with this Idempotency-Key is still being processed; retry later".into(),
    )
}
