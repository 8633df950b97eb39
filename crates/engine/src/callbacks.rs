//! Worker callbacks: results and heartbeats, verified before anything else.

use serde_json::Value;
use spindle_core::job::{
    ErrorKind, Heartbeat, HeartbeatReply, JobError, JobResult, JobStatus, parse_job_id,
};
use spindle_core::run::{Event, Reject};
use spindle_core::{keys, schema, sign};

use crate::{Engine, EngineError};

/// What became of a result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ResultOutcome {
    /// The job.
    pub job_id: String,
    /// The step's status after the result.
    pub step_status: spindle_core::run::StepStatus,
    /// The run's status after the result.
    pub run_status: spindle_core::run::RunStatus,
    /// Why the result was turned into a failure (bad or oversized output).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected_output: Option<String>,
}

impl Engine {
    /// Checks a callback's signature against the job's token, in constant
    /// time, before the body is even parsed.
    fn verify(
        &self,
        job_id: &str,
        body: &[u8],
        signature: Option<&str>,
    ) -> Result<(), EngineError> {
        let secret = self.config.secret()?;
        let token = sign::job_token(secret, job_id);
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

    fn split_job(job_id: &str) -> Result<(&str, &str, u32), EngineError> {
        parse_job_id(job_id).ok_or_else(|| EngineError::NotFound(format!("no job {job_id:?}")))
    }

    /// Takes a job's result.
    pub async fn job_result(
        &self,
        job_id: &str,
        body: &[u8],
        signature: Option<&str>,
        now: u64,
    ) -> Result<ResultOutcome, EngineError> {
        let (run_id, step, _) = Self::split_job(job_id)?;
        let result: JobResult =
            self.signed_body(job_id, body, signature, |r: &JobResult| &r.job_id)?;
        let run = self.run(run_id).await?;
        let planned = run
            .planned(step)
            .ok_or_else(|| EngineError::NotFound(format!("no job {job_id:?}")))?;

        // One result per job, decided by atomic increment: concurrent
        // deliveries of different bodies must not race on the output
        // document. A stale result is refused before it takes the claim.
        let probe = Event::Heartbeat {
            job_id: job_id.to_owned(),
            worker: String::new(),
        };
        run.apply(&probe, now)?;
        let claim = self
            .kv
            .increment(&keys::counter(&format!("result:{job_id}")), 1)?;
        if claim > 1 {
            return Err(EngineError::Conflict(format!(
                "a result for job {job_id} was already received"
            )));
        }

        let mut rejected_output = None;
        let event = match result.status {
            JobStatus::Succeeded => {
                let output = result.output.unwrap_or(Value::Null);
                let size = serde_json::to_vec(&output).map_or(usize::MAX, |b| b.len());
                let problem = if size > run.settings.max_output_bytes {
                    Some((
                        ErrorKind::OutputTooLarge,
                        format!(
                            "output is {size} bytes; the limit is {}",
                            run.settings.max_output_bytes
                        ),
                    ))
                } else {
                    schema::check(&planned.agent.output_schema, &output)
                        .err()
                        .map(|e| {
                            (
                                ErrorKind::InvalidOutput,
                                format!(
                                    "output does not match agent {}'s output schema: {e}",
                                    planned.agent.name
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
                        let ev = Event::Succeeded {
                            job_id: job_id.to_owned(),
                            worker: result.worker,
                            output_bytes: size,
                            exit_code: result.exit_code,
                            started_at_ms: result.started_at_ms,
                        };
                        self.kv.set(&keys::output(job_id), &output).await?;
                        ev
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
        let after = self.apply(run_id, event, now).await?;
        let run = match after {
            Some(r) => r,
            None => self.run(run_id).await?,
        };
        let step_status = run
            .step(step)
            .map(|s| s.status)
            .ok_or_else(|| EngineError::NotFound(format!("no job {job_id:?}")))?;
        Ok(ResultOutcome {
            job_id: job_id.to_owned(),
            step_status,
            run_status: run.status,
            rejected_output,
        })
    }

    /// Renews a job's lease; tells the worker to stop when the job is no
    /// longer wanted (cancelled, timed out, superseded).
    pub async fn heartbeat(
        &self,
        job_id: &str,
        body: &[u8],
        signature: Option<&str>,
        now: u64,
    ) -> Result<HeartbeatReply, EngineError> {
        let (run_id, step, attempt) = Self::split_job(job_id)?;
        let hb: Heartbeat = self.signed_body(job_id, body, signature, |h: &Heartbeat| &h.job_id)?;
        let stop = HeartbeatReply {
            keep_running: false,
            lease_expires_at_ms: None,
        };
        let event = Event::Heartbeat {
            job_id: job_id.to_owned(),
            worker: hb.worker,
        };
        let run = match self.apply(run_id, event, now).await {
            Ok(Some(run)) => run,
            Ok(None) => self.run(run_id).await?,
            Err(EngineError::Rejected(
                Reject::JobNotActive { .. } | Reject::RunFinished { .. },
            )) => {
                return Ok(stop);
            }
            Err(e) => return Err(e),
        };
        let Some(s) = run.step(step) else {
            return Ok(stop);
        };
        if s.status.is_active() && s.attempts.len() as u32 == attempt {
            Ok(HeartbeatReply {
                keep_running: true,
                lease_expires_at_ms: s.lease_expires_at_ms,
            })
        } else {
            Ok(stop)
        }
    }

    /// Cancels a run; its running jobs are told to stop.
    pub async fn cancel(
        &self,
        run_id: &str,
        reason: &str,
        now: u64,
    ) -> Result<spindle_core::Run, EngineError> {
        self.run(run_id).await?;
        let ev = Event::Cancel {
            reason: reason.to_owned(),
        };
        match self.apply(run_id, ev, now).await? {
            Some(run) => Ok(run),
            None => self.run(run_id).await,
        }
    }
}
