//! Dispatch to workers and cancellation.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::Value;
use spindle_core::breaker::Outcome;
use spindle_core::job::{ErrorKind, Job, JobAgent, JobError, SIGNATURE_HEADER};
use spindle_core::metrics::{DISPATCH_FAILURES, Family, JOBS_DISPATCHED};
use spindle_core::retry::fnv1a;
use spindle_core::run::{Event, MAX_GATHERED_BYTES, OutputSource, Run};
use spindle_core::{approval, keys, sign};

use crate::store::StoreExt;
use crate::{Engine, Host, Sent, Store, Workers};

/// The run's answer to a job that never reached a worker. Only a job the
/// workers refused for itself (`agent_refused`) may move its step to a
/// fallback agent; a store failure or a bad input is no agent's fault.
fn not_dispatched(
    job_id: &str,
    kind: ErrorKind,
    message: String,
    agent_refused: bool,
) -> Option<Event> {
    Some(Event::NotDispatched {
        job_id: job_id.to_owned(),
        error: JobError { kind, message },
        agent_refused,
    })
}

/// Why a step's input could not be rendered.
pub(crate) enum Render {
    /// Reading an ancestor's output failed: worth trying again.
    Store(String),
    /// The template or the agent's input schema refuses it: for good.
    Invalid(JobError),
}

impl<S: Store, W: Workers, H: Host> Engine<S, W, H> {
    /// The outputs `unit`'s templates and expressions may read, from the
    /// store: each readable step's output, a fan-out step's gathered in
    /// item order (`null` for a failed item).
    pub(crate) async fn read_outputs(
        &self,
        run: &Run,
        unit: &str,
    ) -> Result<BTreeMap<String, Value>, Render> {
        let gathered = run.gathered_bytes(unit);
        if gathered > MAX_GATHERED_BYTES {
            return Err(Render::Invalid(JobError {
                kind: ErrorKind::InvalidInput,
                message: format!(
                    "it reads {gathered} bytes of fan-out items' outputs; at most {MAX_GATHERED_BYTES} are gathered"
                ),
            }));
        }
        let mut outputs = BTreeMap::new();
        for (ancestor, source) in run.readable_outputs(unit) {
            let value = match source {
                OutputSource::Job(job) => self.read_output(&ancestor, &job).await?,
                OutputSource::Items(jobs) => {
                    let mut items = Vec::with_capacity(jobs.len());
                    for job in jobs {
                        items.push(match job {
                            Some(job) => self.read_output(&ancestor, &job).await?,
                            None => Value::Null,
                        });
                    }
                    Value::Array(items)
                }
            };
            outputs.insert(ancestor, value);
        }
        Ok(outputs)
    }

    async fn read_output(&self, step: &str, job: &str) -> Result<Value, Render> {
        match self.store.get::<Value>(&keys::output(job)).await {
            Ok(Some(v)) => Ok(v),
            // Written before the step was recorded as succeeded: gone means
            // the store lost it, and no retry brings it back.
            Ok(None) => Err(Render::Invalid(JobError {
                kind: ErrorKind::InvalidInput,
                message: format!("the output of step {step} ({job}) is missing from the store"),
            })),
            Err(e) => Err(Render::Store(format!(
                "reading the output of step {step} failed: {e}"
            ))),
        }
    }

    /// Renders `unit`'s input from the trigger and what it can read, and
    /// checks it against its agent's input schema.
    pub(crate) async fn render_input(&self, run: &Run, unit: &str) -> Result<Value, Render> {
        let outputs = self.read_outputs(run, unit).await?;
        run.input_for(unit, outputs).map_err(Render::Invalid)
    }

    /// Sends one job, at most once (the claim counter decides), to the first
    /// worker of the pool that takes it, starting from a worker chosen by the
    /// job id so jobs spread over the pool. Workers whose circuit breaker is
    /// open are not tried; every answer is recorded in the worker's breaker.
    /// Returns what the run must learn: accepted, or not dispatched and why;
    /// nothing when the job may be in flight (its lease timer decides then).
    pub(crate) async fn dispatch(&self, run: &Run, job_id: &str, step: &str) -> Option<Event> {
        match self
            .store
            .increment(&keys::counter(&format!("dispatch:{job_id}")), 1)
            .await
        {
            Ok(1) => {}
            Ok(_) => return None,
            Err(e) => {
                // Unclaimed and unsent: the lease lapses and the attempt is
                // retried, counted against the budget.
                self.host
                    .log(&format!("job {job_id}: dispatch claim failed: {e}"));
                return None;
            }
        }
        let (agent, _, timeout_secs) = run.agent_for(step)?;
        let input = match self.render_input(run, step).await {
            Ok(v) => v,
            Err(Render::Store(e)) => {
                self.host.log(&format!("job {job_id}: {e}"));
                return not_dispatched(job_id, ErrorKind::DispatchFailed, e, false);
            }
            Err(Render::Invalid(e)) => return not_dispatched(job_id, e.kind, e.message, false),
        };
        // Exactly the input that was assessed (and approved, if it had to
        // be): the ancestors' outputs are written once, so a difference here
        // means a document changed under the run, and nothing is sent.
        if let Some(gate) = run.step(step).and_then(|s| s.gate.as_ref()) {
            let digest = approval::input_digest(&input);
            if digest != gate.input_sha256 {
                return not_dispatched(
                    job_id,
                    ErrorKind::InvalidInput,
                    format!(
                        "the rendered input (sha256 {digest}) is not the one assessed and approved (sha256 {})",
                        gate.input_sha256
                    ),
                    false,
                );
            }
        }
        // Kept for the run's read API; a failed write only loses that view.
        if let Err(e) = self.store.set(&keys::input(job_id), &input).await {
            self.host
                .log(&format!("job {job_id}: storing its input failed: {e}"));
        }
        let job = Job {
            job_id: job_id.to_owned(),
            run_id: run.id.clone(),
            step_id: step.to_owned(),
            attempt: run.step(step).map_or(1, |s| s.attempt_number()),
            agent: JobAgent {
                name: agent.name.to_string(),
                version: agent.version,
                image: agent.image.clone(),
                command: agent.command.clone(),
                timeout_secs,
                memory_mb: agent.memory_mb,
                network: agent.network,
            },
            input,
            lease_ms: run.settings.lease_ms,
            max_output_bytes: run.settings.max_output_bytes,
            callback_url: format!("{}/jobs/{job_id}", self.config.callback_url),
            token: sign::job_token(&self.config.secret, job_id),
        };
        let body = Bytes::from(serde_json::to_vec(&job).unwrap_or_default());
        let workers = &self.config.workers;
        let auth = self.worker_auth();
        let first = (fnv1a(job_id.as_bytes()) % workers.len().max(1) as u64) as usize;
        let mut refusals = Vec::new();
        // Every worker refusing the job itself (a 4xx other than "busy")
        // is a problem of the job, not a saturated pool: it counts.
        let mut job_refused = true;
        for k in 0..workers.len() {
            let worker = &workers[(first + k) % workers.len()];
            let breaker = self.breaker(worker).await;
            let shown = spindle_core::metrics::redact_url(worker);
            if let Some(b) = &breaker
                && !b.admits(self.host.now_ms(), &self.config.breaker)
            {
                // Down a moment ago: another worker, or a wait, not a
                // failed step. Whether it would refuse the job is unknown.
                job_refused = false;
                refusals.push(format!(
                    "{shown}: circuit breaker open until {}",
                    b.reopens_at(&self.config.breaker)
                ));
                continue;
            }
            if let Some(b) = &breaker
                && !self.take_trial(worker, b).await
            {
                job_refused = false;
                refusals.push(format!(
                    "{shown}: circuit breaker half-open, its trial jobs are out"
                ));
                continue;
            }
            let url = format!("{worker}/jobs");
            let sent = self
                .workers
                .post(&url, body.clone(), &auth, self.config.dispatch_timeout_ms)
                .await;
            let outcome = match &sent {
                Sent::Answered(status) => Outcome::of_status(*status),
                Sent::NotReached(_) | Sent::Unknown(_) => Some(Outcome::Failure),
            };
            if let Some(outcome) = outcome {
                self.record_outcome(worker, breaker.as_ref(), outcome).await;
            }
            match sent {
                // 409: the worker already holds this job (an earlier send that
                // looked lost); it is running it.
                Sent::Answered(200 | 201 | 202 | 409) => {
                    self.count_dispatch(&JOBS_DISPATCHED, worker).await;
                    return Some(Event::Accepted {
                        job_id: job_id.to_owned(),
                        worker: worker.clone(),
                    });
                }
                Sent::Answered(status) => {
                    self.count_dispatch(&DISPATCH_FAILURES, worker).await;
                    job_refused &= (400..500).contains(&status) && status != 429;
                    refusals.push(format!("{shown} answered {status}"));
                }
                Sent::NotReached(why) => {
                    self.count_dispatch(&DISPATCH_FAILURES, worker).await;
                    job_refused = false;
                    refusals.push(format!("{shown}: {why}"));
                }
                Sent::Unknown(why) => {
                    self.count_dispatch(&DISPATCH_FAILURES, worker).await;
                    // It may be running there: treat as in flight. Its
                    // heartbeats or its lease decide what happens next.
                    self.host.log(&format!(
                        "job {job_id}: no answer from {shown} ({why}); treating as in flight"
                    ));
                    return None;
                }
            }
        }
        let kind = if job_refused {
            ErrorKind::DispatchFailed
        } else {
            ErrorKind::NoWorker
        };
        not_dispatched(
            job_id,
            kind,
            format!("no worker accepted the job: {}", refusals.join("; ")),
            job_refused,
        )
    }

    async fn count_dispatch(&self, family: &Family, worker: &str) {
        let worker = spindle_core::metrics::redact_url(worker);
        if let Err(e) = crate::metrics::count(&self.store, family, &[&worker], 1).await {
            self.host.log(&format!("{}: not counted: {e}", family.name));
        }
    }

    fn worker_auth(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![(
            "authorization",
            format!("Bearer {}", self.config.worker_token),
        )];
        if let Some(id) = self.host.request_id() {
            headers.push(("x-request-id", id));
        }
        headers
    }

    /// Asks the worker holding a job (or, if unknown, every worker) to stop
    /// it. Best effort: a worker that misses this learns it from its next
    /// heartbeat's answer. Circuit breakers are not consulted: a worker
    /// believed down costs one failed request here, and one that came back
    /// early still stops the job.
    pub(crate) async fn cancel_job(&self, job_id: &str, worker: Option<&str>) {
        let token = sign::job_token(&self.config.secret, job_id);
        let body = Bytes::from(
            serde_json::to_vec(&serde_json::json!({ "job_id": job_id })).unwrap_or_default(),
        );
        let sig = sign::sign(&token, &body);
        let targets: Vec<&String> = match worker {
            Some(w) if self.config.workers.iter().any(|x| x == w) => {
                self.config.workers.iter().filter(|x| *x == w).collect()
            }
            _ => self.config.workers.iter().collect(),
        };
        let mut headers = self.worker_auth();
        headers.push((SIGNATURE_HEADER, sig));
        for w in targets {
            let url = format!("{w}/jobs/{job_id}/cancel");
            if let Sent::NotReached(why) | Sent::Unknown(why) = self
                .workers
                .post(
                    &url,
                    body.clone(),
                    &headers,
                    self.config.dispatch_timeout_ms,
                )
                .await
            {
                self.host
                    .log(&format!("job {job_id}: cancel at {w} failed: {why}"));
            }
        }
    }
}
