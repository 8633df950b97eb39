//! The worker's job table and each job's life: wait for a slot, renew the
//! lease, run, report. Jobs live in memory only: a worker that dies loses
//! them, and Spindle notices by the lapsed lease and retries elsewhere.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use spindle_core::job::{
    ErrorKind, Heartbeat, HeartbeatReply, Job, JobError, JobResult, JobStatus, SIGNATURE_HEADER,
};
use spindle_core::sign;
use tokio::sync::{Semaphore, watch};
use tracing::Instrument as _;

use crate::executor::{Executor, NotAllowed};
use crate::stop::StopReason;

/// Longest wait between result deliveries.
const MAX_CALLBACK_BACKOFF: Duration = Duration::from_secs(10);

/// A job the worker holds.
struct Held {
    token: String,
    /// Sends the reason to stop.
    stop: watch::Sender<Option<StopReason>>,
    running: bool,
}

/// Shared worker state.
pub struct Worker {
    /// This worker's name in heartbeats and results.
    pub name: String,
    executor: Executor,
    slots: Arc<Semaphore>,
    /// Most jobs held at once (running and waiting for a slot).
    capacity: usize,
    jobs: Mutex<HashMap<String, Held>>,
    http: reqwest::Client,
    /// Set when shutting down: no new jobs.
    draining: watch::Sender<bool>,
}

/// Why a job was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The worker holds it already.
    #[error("job {0} is already held by this worker")]
    Duplicate(String),
    /// No room.
    #[error("the worker is full ({0} jobs held)")]
    Full(usize),
    /// Shutting down.
    #[error("the worker is shutting down")]
    Draining,
    /// This worker will never run it (its program is not allowed): a
    /// refusal of the job itself, which Spindle offers to the next worker
    /// and, if all refuse, fails as `dispatch_failed`.
    #[error(transparent)]
    NotAllowed(#[from] NotAllowed),
}

/// Counts for the health endpoint.
#[derive(Debug, serde::Serialize)]
pub struct Load {
    /// Jobs held.
    pub held: usize,
    /// Jobs running.
    pub running: usize,
    /// Slots.
    pub slots: usize,
}

impl Worker {
    /// A worker with `slots` concurrent jobs and room for `capacity` held.
    pub fn new(name: String, executor: Executor, slots: usize, capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            name,
            executor,
            slots: Arc::new(Semaphore::new(slots)),
            capacity: capacity.max(slots),
            jobs: Mutex::new(HashMap::new()),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("HTTP client"),
            draining: watch::channel(false).0,
        })
    }

    /// Current load.
    pub fn load(&self) -> Load {
        let jobs = self.jobs.lock().unwrap();
        Load {
            held: jobs.len(),
            running: jobs.values().filter(|j| j.running).count(),
            slots: self.slots.available_permits() + jobs.values().filter(|j| j.running).count(),
        }
    }

    /// Takes a job, or says why not. Everything the job's life logs is
    /// logged in `span` (which names the job).
    pub fn accept(self: &Arc<Self>, job: Job, span: tracing::Span) -> Result<(), Refusal> {
        // Before anything else: nothing of a job this worker may not run is
        // kept, let alone started.
        self.executor.admit(&job.agent)?;
        if *self.draining.borrow() {
            return Err(Refusal::Draining);
        }
        let stop_rx = {
            let mut jobs = self.jobs.lock().unwrap();
            if jobs.contains_key(&job.job_id) {
                return Err(Refusal::Duplicate(job.job_id));
            }
            if jobs.len() >= self.capacity {
                return Err(Refusal::Full(jobs.len()));
            }
            let (stop, rx) = watch::channel(None);
            jobs.insert(
                job.job_id.clone(),
                Held {
                    token: job.token.clone(),
                    stop,
                    running: false,
                },
            );
            rx
        };
        tracing::info!(agent = %job.agent.name, "job accepted");
        let me = self.clone();
        tokio::spawn(async move { me.life(job, stop_rx).await }.instrument(span));
        Ok(())
    }

    /// Stops a job if `signature` proves the caller knows its token.
    pub fn cancel(&self, job_id: &str, body: &[u8], signature: &str) -> Result<bool, ()> {
        let jobs = self.jobs.lock().unwrap();
        let Some(held) = jobs.get(job_id) else {
            return Ok(false);
        };
        if !sign::verify(&held.token, body, signature) {
            return Err(());
        }
        let _ = held.stop.send(Some(StopReason::Cancelled));
        Ok(true)
    }

    /// Stops taking jobs; those held finish (or are handed back by
    /// [`Worker::hand_back`]).
    pub fn drain(&self) {
        let _ = self.draining.send(true);
    }

    /// Jobs still held.
    pub fn held(&self) -> usize {
        self.jobs.lock().unwrap().len()
    }

    /// Stops every held job; each reports a retryable failure so Spindle
    /// runs it elsewhere.
    pub fn hand_back(&self) {
        for held in self.jobs.lock().unwrap().values() {
            let _ = held.stop.send(Some(StopReason::HandBack));
        }
    }

    async fn life(self: Arc<Self>, job: Job, stop: watch::Receiver<Option<StopReason>>) {
        let job_id = job.job_id.clone();
        let beat = tokio::spawn(
            self.clone()
                .heartbeats(job.clone())
                .instrument(tracing::Span::current()),
        );
        // Wait for a slot, unless told to stop first.
        let permit = tokio::select! {
            // The slots are never closed; were they, the worker would be
            // going away, which is a hand-back.
            p = self.slots.clone().acquire_owned() => p.map_err(|_| StopReason::HandBack),
            why = stopped(stop.clone()) => Err(why),
        };
        let started = now_ms();
        let result = match permit {
            Err(why) => failure(&job, &self.name, why.kind(), why.to_string(), started),
            Ok(_permit) => {
                if let Some(h) = self.jobs.lock().unwrap().get_mut(&job_id) {
                    h.running = true;
                }
                let out = self
                    .executor
                    .run(
                        &job_id,
                        &job.agent,
                        &job.input,
                        job.max_output_bytes,
                        stopped(stop),
                    )
                    .await;
                let (status, output, error) = match out.result {
                    Ok(v) => (JobStatus::Succeeded, Some(v), None),
                    Err(e) => (JobStatus::Failed, None, Some(e)),
                };
                JobResult {
                    job_id: job_id.clone(),
                    worker: self.name.clone(),
                    status,
                    output,
                    error,
                    exit_code: out.exit_code,
                    logs_tail: out.logs_tail,
                    started_at_ms: started,
                    finished_at_ms: now_ms(),
                }
            }
        };
        tracing::info!(status = ?result.status, error = ?result.error, "job finished");
        self.deliver(&job, &result).await;
        beat.abort();
        self.jobs.lock().unwrap().remove(&job_id);
    }

    /// Renews the lease every third of it until the job ends; stops the job
    /// when Spindle no longer wants it.
    async fn heartbeats(self: Arc<Self>, job: Job) {
        let every = Duration::from_millis((job.lease_ms / 3).max(50));
        let body = serde_json::to_vec(&Heartbeat {
            job_id: job.job_id.clone(),
            worker: self.name.clone(),
        })
        .unwrap_or_default();
        let sig = sign::sign(&job.token, &body);
        loop {
            let sent = self
                .http
                .post(format!("{}/heartbeat", job.callback_url))
                .header("content-type", "application/json")
                .header(SIGNATURE_HEADER, &sig)
                .timeout(every)
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(resp) if resp.status().is_success() => {
                    if let Ok(reply) = resp.json::<HeartbeatReply>().await
                        && !reply.keep_running
                    {
                        tracing::info!("Spindle no longer wants the job; stopping it");
                        self.stop(&job.job_id, StopReason::NoLongerWanted);
                        return;
                    }
                }
                Ok(resp) if resp.status().is_client_error() => {
                    tracing::warn!(status = %resp.status(), "heartbeat refused; stopping the job");
                    self.stop(&job.job_id, StopReason::HeartbeatRefused);
                    return;
                }
                Ok(resp) => {
                    tracing::warn!(status = %resp.status(), "heartbeat failed")
                }
                Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
            }
            tokio::time::sleep(every).await;
        }
    }

    fn stop(&self, job_id: &str, why: StopReason) {
        if let Some(h) = self.jobs.lock().unwrap().get(job_id) {
            let _ = h.stop.send(Some(why));
        }
    }

    /// Posts the result until Spindle takes it (2xx) or refuses it for good
    /// (4xx other than 408 and 429), backing off up to ten seconds.
    async fn deliver(&self, job: &Job, result: &JobResult) {
        let body = serde_json::to_vec(result).unwrap_or_default();
        let sig = sign::sign(&job.token, &body);
        let mut wait = Duration::from_millis(100);
        for attempt in 1.. {
            let sent = self
                .http
                .post(format!("{}/result", job.callback_url))
                .header("content-type", "application/json")
                .header(SIGNATURE_HEADER, &sig)
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(resp) if resp.status().is_success() => return,
                Ok(resp)
                    if resp.status().is_client_error()
                        && resp.status() != reqwest::StatusCode::REQUEST_TIMEOUT
                        && resp.status() != reqwest::StatusCode::TOO_MANY_REQUESTS =>
                {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    tracing::warn!(%status, body = %text, "result refused; not retrying");
                    return;
                }
                Ok(resp) => {
                    tracing::warn!(attempt, status = %resp.status(), "result delivery failed; retrying");
                }
                Err(e) => {
                    tracing::warn!(attempt, error = %e, "result delivery failed; retrying");
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(MAX_CALLBACK_BACKOFF);
        }
    }
}

/// Resolves with the reason sent to stop the job (the latest, should two
/// race). The sender lives in the job table until the job's life ends, so it
/// cannot go first; if it did, nobody could stop the job any more and this
/// never resolves.
async fn stopped(mut stop: watch::Receiver<Option<StopReason>>) -> StopReason {
    if let Ok(why) = stop.wait_for(Option::is_some).await
        && let Some(why) = *why
    {
        return why;
    }
    std::future::pending().await
}

fn failure(job: &Job, worker: &str, kind: ErrorKind, message: String, started: u64) -> JobResult {
    JobResult {
        job_id: job.job_id.clone(),
        worker: worker.to_owned(),
        status: JobStatus::Failed,
        output: None::<Value>,
        error: Some(JobError { kind, message }),
        exit_code: None,
        logs_tail: String::new(),
        started_at_ms: started,
        finished_at_ms: now_ms(),
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
