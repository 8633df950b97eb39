//! Creating runs (with idempotency keys) and listing them.
//!
//! Listing without scans: every run id is added to a page of all runs
//! (`runs:page:<seq / RUN_PAGE>`) and to a page of its workflow's runs
//! (`runs:workflow:<name>:page:<n>`, numbered by the workflow's own run
//! counter). A page holds at most [`keys::RUN_PAGE`] ids, so adding a run
//! rewrites a bounded document however many runs exist, and a listing walks
//! pages newest first.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use spindle_core::agent::{Agent, AgentName};
use spindle_core::ids::{run_created_ms, run_seq, valid_run_id};
use spindle_core::keys::{self, RUN_PAGE};
use spindle_core::run::{Run, RunStatus, Trigger};
use spindle_core::workflow::Workflow;
use spindle_core::{ids, sign};

use crate::store::{StoreExt, UpdateError};
use crate::{Engine, EngineError, Host, Store, Workers};

/// How long a request that lost the race for an idempotency key waits for
/// the winner to record its run, in 20 ms steps.
const IDEMPOTENCY_WAIT_STEPS: u32 = 150;

/// Most runs one listing reads before it answers with what it found and a
/// cursor to continue from: a filter that matches few runs costs bounded
/// work per request.
pub const MAX_SCAN: usize = 500;

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

/// A listing cursor: the index page to go on in and the last run id seen.
pub fn parse_cursor(cursor: &str) -> Option<(u64, &str)> {
    let (page, id) = cursor.split_once(':')?;
    let page = page.parse().ok()?;
    valid_run_id(id).then_some((page, id))
}

fn cursor(page: u64, id: &str) -> String {
    format!("{page}:{id}")
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
        let hash = sign::digest(format!("{workflow}\n{key}").as_bytes());
        let request = sign::digest(&serde_json::to_vec(&trigger.payload).unwrap_or_default());
        let claim = self
            .store
            .increment(&keys::counter(&format!("idempotency:{hash}")), 1)
            .await?;
        if claim == 1 {
            return self
                .start_keyed(&wf, &agents, trigger, &hash, &request)
                .await;
        }
        if let Some(rec) = self.await_record(&hash).await? {
            return self
                .resume(rec, &wf, &agents, trigger, &hash, &request)
                .await;
        }
        // The owner claimed the key and recorded nothing: it died between
        // the two, or its store write failed. One waiter takes over.
        let takeover = self
            .store
            .increment(&keys::counter(&format!("idempotency-takeover:{hash}")), 1)
            .await?;
        if takeover == 1 {
            return self
                .start_keyed(&wf, &agents, trigger, &hash, &request)
                .await;
        }
        match self.await_record(&hash).await? {
            Some(rec) => {
                self.resume(rec, &wf, &agents, trigger, &hash, &request)
                    .await
            }
            None => Err(EngineError::Conflict(
                "a request with this Idempotency-Key is still being processed; retry later".into(),
            )),
        }
    }

    async fn next_run_id(&self) -> Result<String, EngineError> {
        let seq = self.store.increment(&keys::run_counter(), 1).await?;
        Ok(ids::run_id(self.host.now_ms(), seq as u64))
    }

    /// Records the key's run id (first writer wins), then starts the run.
    async fn start_keyed(
        &self,
        wf: &Workflow,
        agents: &BTreeMap<String, Agent>,
        trigger: Trigger,
        hash: &str,
        request: &str,
    ) -> Result<(Run, bool), EngineError> {
        let id = self.next_run_id().await?;
        let mine = IdempotencyRecord {
            run_id: id.clone(),
            request: request.to_owned(),
            at_ms: self.host.now_ms(),
        };
        let rec = self
            .store
            .update::<IdempotencyRecord, std::convert::Infallible>(
                &keys::idempotency(hash),
                |current| Ok(current.is_none().then(|| mine.clone())),
            )
            .await
            .map_err(UpdateError::into_store)?
            .unwrap_or(mine);
        if rec.run_id != id {
            return self.resume(rec, wf, agents, trigger, hash, request).await;
        }
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
                // Starting it under the recorded id is safe: the run
                // document is inserted only if absent, and its jobs are
                // claimed by id.
                return self
                    .start(&rec.run_id, wf, agents, trigger, Some(hash))
                    .await;
            }
            self.host.sleep_ms(20).await;
        }
        Err(EngineError::Conflict(
            "a request with this Idempotency-Key is still being processed; retry later".into(),
        ))
    }

    async fn await_record(&self, hash: &str) -> Result<Option<IdempotencyRecord>, EngineError> {
        for _ in 0..IDEMPOTENCY_WAIT_STEPS {
            if let Some(rec) = self.store.get(&keys::idempotency(hash)).await? {
                return Ok(Some(rec));
            }
            self.host.sleep_ms(20).await;
        }
        Ok(None)
    }

    /// Creates run `id` already started and stores it: its timers first,
    /// then its listing entries, then the run (only if no run has that id),
    /// then its effects. A request that dies part-way leaves at most timers
    /// and listing entries that point at nothing, which the tick and the
    /// listings skip.
    async fn start(
        &self,
        id: &str,
        wf: &Workflow,
        agents: &BTreeMap<String, Agent>,
        trigger: Trigger,
        idempotency: Option<&str>,
    ) -> Result<(Run, bool), EngineError> {
        let wf_seq = self
            .store
            .increment(&keys::workflow_run_counter(&wf.name), 1)
            .await? as u64;
        // The id carries the creation time listings filter on; the run
        // says the same.
        let now = run_created_ms(id).unwrap_or_else(|| self.host.now_ms());
        let t = Run::create(
            id.to_owned(),
            wf,
            agents,
            trigger,
            self.config.settings,
            now,
        )
        .map_err(EngineError::Conflict)?;
        let Some(mut run) = t.run else {
            return Err(EngineError::Conflict(
                "the new run could not be started".into(),
            ));
        };
        run.workflow_seq = wf_seq;
        run.idempotency = idempotency.map(str::to_owned);
        self.schedule(&t.effects).await?;
        let seq = run_seq(id).unwrap_or(0);
        self.store
            .edit_index(&keys::run_page(seq / RUN_PAGE), id, true)
            .await?;
        self.store
            .edit_index(
                &keys::workflow_run_page(&wf.name, wf_seq / RUN_PAGE),
                id,
                true,
            )
            .await?;
        let mut inserted = false;
        let stored = self
            .store
            .update::<Run, std::convert::Infallible>(&keys::run(id), |current| {
                inserted = current.is_none();
                Ok(inserted.then(|| run.clone()))
            })
            .await
            .map_err(UpdateError::into_store)?;
        match stored {
            Some(existing) if !inserted => Ok((existing, false)),
            _ => Ok((self.settle(run, t.effects).await, true)),
        }
    }

    /// Lists runs newest first, per `filter`. Reads at most [`MAX_SCAN`]
    /// runs; when it stops early, `next_cursor` says where to go on.
    pub async fn list_runs(&self, filter: &RunFilter) -> Result<RunPage, EngineError> {
        let (top, page_key): (u64, Box<dyn Fn(u64) -> String>) = match &filter.workflow {
            Some(w) => {
                let count = self.store.counter(&keys::workflow_run_counter(w)).await? as u64;
                let w = w.clone();
                (
                    count / RUN_PAGE,
                    Box::new(move |p| keys::workflow_run_page(&w, p)),
                )
            }
            None => {
                let count = self.store.counter(&keys::run_counter()).await? as u64;
                (count / RUN_PAGE, Box::new(keys::run_page))
            }
        };
        let (start_page, after) = match filter.cursor.as_deref().and_then(parse_cursor) {
            Some((p, id)) => (p.min(top), Some(id.to_owned())),
            None => (top, None),
        };
        let mut runs = Vec::new();
        let mut scanned = 0;
        let mut last_seen: Option<(u64, String)> = None;
        for page in (0..=start_page).rev() {
            let mut ids: Vec<String> = self.store.get(&page_key(page)).await?.unwrap_or_default();
            ids.sort_unstable_by(|a, b| b.cmp(a));
            let mut older_than_since = !ids.is_empty();
            for id in ids {
                if after
                    .as_deref()
                    .is_some_and(|c| page == start_page && id.as_str() >= c)
                {
                    continue;
                }
                let created = run_created_ms(&id).unwrap_or(0);
                if filter.since.is_none_or(|s| created >= s) {
                    older_than_since = false;
                }
                if filter.since.is_some_and(|s| created < s)
                    || filter.until.is_some_and(|u| created > u)
                {
                    continue;
                }
                if runs.len() == filter.limit || scanned == MAX_SCAN {
                    let (p, id) = last_seen.unwrap_or((page, id));
                    return Ok(RunPage {
                        runs,
                        next_cursor: Some(cursor(p, &id)),
                    });
                }
                scanned += 1;
                last_seen = Some((page, id.clone()));
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
            if older_than_since {
                break;
            }
        }
        Ok(RunPage {
            runs,
            next_cursor: None,
        })
    }
}
