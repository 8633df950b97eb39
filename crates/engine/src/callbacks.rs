//! Worker callbacks: results and heartbeats, verified before anything else.

use serde_json::Value;
use spindle_core::ids::{JobRef, parse_job_id};
use spindle_core::job::{ErrorKind, Heartbeat, HeartbeatReply, JobError, JobResult, JobStatus};
use spindle_core::run::{Event, Reject, Run, RunStatus, StepStatus};
use spindle_core::{keys, schema, sign, template};

use crate::store::StoreExt;
use crate::{Engine, EngineError, Host, Store, Workers};

/// How long a second delivery of a result waits for the first one's record,
/// in 20 ms steps.
const RESULT_WAIT_STEPS: u32 = 50;

/// What became of a result.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ResultOutcome {
    /// The job.
    pub job_id: String,
    /// The step's status after the result.
    pub step_status: StepStatus,
    /// The run's status after the result.
    pub run_status: RunStatus,
    /// Why the result was turned into a failure (bad or oversized output).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected_output: Option<String>,
}

/// The key recording which result body a job's first delivery carried.
fn result_record(job_id: &str) -> String {
    format!("result:{job_id}")
}

/// Whether `event` (a job's result) is already recorded in `run`.
fn already_applied(run: &Run, job: &JobRef<'_>, event: &Event) -> bool {
    let Some(s) = run.step(job.step) else {
        return false;
    };
    let Some(a) = s.attempt(job.attempt) else {
        return false;
    };
    match event {
        Event::Succeeded { job_id, .. } => s.output_job() == Some(job_id.as_str()),
        Event::Failed { error, .. } => {
            a.finished_at_ms.is_some() && a.error.as_ref().is_some_and(|e| e.kind == error.kind)
        }
        _ => false,
    }
}

impl<S: Store, W: Workers, H: Host> Engine<S, W, H> {
    /// Checks a callback's signature against the job's token, in constant
    /// time, before the body is even parsed.
    fn verify(
        &self,
        job_id: &str,
        body: &[u8],
        signature: Option<&str>,
    ) -> Result<(), EngineError> {
        let token = sign::job_token(&self.config.secret, job_id);
        match signature {
            Some(sig) if sign::verify(&token, body, sig) => Ok(()),
            _ => Err(EngineError::Unauthorized),
        }
    }

    /// Verifies a callback's signature, then parses its body, which must
    /// name the job the URL names.
    fn signed_body<T: serde::de::DeserializeOwned>(
        &self,
        job_id: &str,
        body: &[u8],
        signature: Option<&str>,
        named: impl Fn(&T) -> &str,
    ) -> Result<T, EngineError> {
        self.verify(job_id, body, signature)?;
        let doc: T = serde_json::from_slice(body)
            .map_err(|e| EngineError::BadRequest(String::new(), e.to_string()))?;
        if named(&doc) != job_id {
            return Err(EngineError::BadRequest(
                "/job_id".into(),
                format!("names {:?}, but the URL names {job_id:?}", named(&doc)),
            ));
        }
        Ok(doc)
    }

    fn split_job(job_id: &str) -> Result<JobRef<'_>, EngineError> {
        parse_job_id(job_id).ok_or_else(|| EngineError::NotFound(format!("no job {job_id:?}")))
    }

    /// Takes a job's result. Safe to deliver again: a delivery whose answer
    /// was lost, or that failed part-way (a store error), is completed by
    /// the worker's retry of the same body and answered like the first.
    pub async fn job_result(
        &self,
        job_id: &str,
        body: &[u8],
        signature: Option<&str>,
    ) -> Result<ResultOutcome, EngineError> {
        let job = Self::split_job(job_id)?;
        let result: JobResult =
            self.signed_body(job_id, body, signature, |r: &JobResult| &r.job_id)?;
        let run = self.run(job.run).await?;
        // The agent the unit runs now: a result for an earlier agent's job
        // is refused by the run as no longer active anyway.
        let (agent, _, _) = run
            .agent_for(job.step)
            .ok_or_else(|| EngineError::NotFound(format!("no job {job_id:?}")))?;

        let mut rejected_output = None;
        let mut output = None;
        let event = match result.status {
            JobStatus::Succeeded => {
                let out = result.output.unwrap_or(Value::Null);
                let size = serde_json::to_vec(&out).map_or(usize::MAX, |b| b.len());
                let problem = if let Some(at) = template::too_deep(&out, template::MAX_VALUE_DEPTH)
                {
                    Some((
                        ErrorKind::InvalidOutput,
                        format!(
                            "output nests deeper than {} levels (at {at})",
                            template::MAX_VALUE_DEPTH
                        ),
                    ))
                } else if size > run.settings.max_output_bytes {
                    Some((
                        ErrorKind::OutputTooLarge,
                        format!(
                            "output is {size} bytes; the limit is {}",
                            run.settings.max_output_bytes
                        ),
                    ))
                } else {
                    schema::check(&agent.output_schema, &out).err().map(|e| {
                        (
                            ErrorKind::InvalidOutput,
                            format!(
                                "output does not match agent {}'s output schema: {e}",
                                agent.name
                            ),
                        )
                    })
                };
                match problem {
                    Some((kind, message)) => {
                        rejected_output = Some(message.clone());
                        Event::Failed {
                            job_id: job_id.to_owned(),
                            worker: result.worker,
                            error: JobError { kind, message },
                            exit_code: result.exit_code,
                            logs_tail: result.logs_tail,
                            started_at_ms: result.started_at_ms,
                        }
                    }
                    None => {
                        output = Some(out);
                        Event::Succeeded {
                            job_id: job_id.to_owned(),
                            worker: result.worker,
                            output_bytes: size,
                            exit_code: result.exit_code,
                            started_at_ms: result.started_at_ms,
                        }
                    }
                }
            }
            JobStatus::Failed => Event::Failed {
                job_id: job_id.to_owned(),
                worker: result.worker,
                error: result.error.unwrap_or(JobError {
                    kind: ErrorKind::AgentFailed,
                    message: "the worker reported a failure without a reason".into(),
                }),
                exit_code: result.exit_code,
                logs_tail: result.logs_tail,
                started_at_ms: result.started_at_ms,
            },
        };
        let outcome = |run: &Run, rejected_output: Option<String>| ResultOutcome {
            job_id: job_id.to_owned(),
            step_status: run.step(job.step).map_or(StepStatus::Pending, |s| s.status),
            run_status: run.status,
            rejected_output,
        };
        let digest = sign::digest(body);
        if already_applied(&run, &job, &event) {
            // Only a retry of the body that was applied is answered as
            // done; another body for a finished job is refused, however
            // quickly the first one finished.
            let first: Option<String> = self.store.get(&result_record(job_id)).await?;
            if first.is_some_and(|d| d != digest) {
                return Err(EngineError::Conflict(format!(
                    "a different result for job {job_id} was already received"
                )));
            }
            return Ok(outcome(&run, rejected_output));
        }
        // A stale result is refused before it takes the claim.
        let probe = Event::Heartbeat {
            job_id: job_id.to_owned(),
            worker: String::new(),
        };
        run.apply(&probe, self.host.now_ms())?;

        // One result per job, decided by atomic increment; the winner
        // records which body it carried. A later delivery of the same body
        // is a retry and completes what the first began; another body is
        // refused, so two bodies never race on the output document.
        let claim = self
            .store
            .increment(&keys::counter(&format!("result:{job_id}")), 1)
            .await?;
        if claim == 1 {
            self.store.set(&result_record(job_id), &digest).await?;
        } else {
            let first: Option<String> = self
                .await_doc(&result_record(job_id), RESULT_WAIT_STEPS)
                .await?;
            match first {
                Some(d) if d == digest => {}
                Some(_) => {
                    return Err(EngineError::Conflict(format!(
                        "a different result for job {job_id} was already received"
                    )));
                }
                // The first delivery died between its claim and its record:
                // this one finishes the job's result.
                None => self.store.set(&result_record(job_id), &digest).await?,
            }
        }
        if let Some(out) = &output {
            self.store.set(&keys::output(job_id), out).await?;
        }
        let run = match self.apply(job.run, event.clone()).await {
            Ok(run) => run,
            // Applied meanwhile by a concurrent delivery of the same body.
            Err(EngineError::Rejected(Reject::JobNotActive { .. })) => {
                let run = self.run(job.run).await?;
                if !already_applied(&run, &job, &event) {
                    return Err(EngineError::Rejected(Reject::JobNotActive {
                        job_id: job_id.to_owned(),
                        status: run.step(job.step).map_or(StepStatus::Pending, |s| s.status),
                        current: run.step(job.step).map_or(0, |s| s.attempt_number()),
                    }));
                }
                run
            }
            Err(e) => return Err(e),
        };
        Ok(outcome(&run, rejected_output))
    }

    /// Renews a job's lease; tells the worker to stop when the job is no
    /// longer wanted (cancelled, timed out, superseded).
    pub async fn heartbeat(
        &self,
        job_id: &str,
        body: &[u8],
        signature: Option<&str>,
    ) -> Result<HeartbeatReply, EngineError> {
        let job = Self::split_job(job_id)?;
        let hb: Heartbeat = self.signed_body(job_id, body, signature, |h: &Heartbeat| &h.job_id)?;
        let stop = HeartbeatReply {
            keep_running: false,
            lease_expires_at_ms: None,
        };
        let event = Event::Heartbeat {
            job_id: job_id.to_owned(),
            worker: hb.worker,
        };
        let run = match self.apply(job.run, event).await {
            Ok(run) => run,
            Err(EngineError::Rejected(
                Reject::JobNotActive { .. } | Reject::RunFinished { .. },
            )) => {
                return Ok(stop);
            }
            Err(e) => return Err(e),
        };
        let Some(s) = run.step(job.step) else {
            return Ok(stop);
        };
        if s.status.is_active() && s.attempt_number() == job.attempt {
            Ok(HeartbeatReply {
                keep_running: true,
                lease_expires_at_ms: s.lease_expires_at_ms,
            })
        } else {
            Ok(stop)
        }
    }

    /// Cancels a run on behalf of `by` (an actor, if a caller asked); its
    /// running jobs are told to stop.
    pub async fn cancel(
        &self,
        run_id: &str,
        reason: &str,
        by: Option<&str>,
    ) -> Result<Run, EngineError> {
        let ev = Event::Cancel {
            reason: reason.to_owned(),
            by: by.map(str::to_owned),
        };
        self.apply(run_id, ev).await
    }
}
