//! Dispatch to workers and cancellation, over outbound HTTP.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::Value;
use spin_sdk::http::FullBody;
use spin_sdk::wasip3::http::types::{ErrorCode, RequestOptions};
use spin_sdk::wasip3::http_compat::RequestOptionsExtension;
use spindle_core::job::{ErrorKind, Job, JobAgent, JobError, SIGNATURE_HEADER};
use spindle_core::retry::fnv1a;
use spindle_core::run::{Event, Run};
use spindle_core::{keys, schema, sign, template};

use crate::Engine;

/// How a POST to a worker went.
enum Sent {
    /// The worker answered with this status.
    Answered(u16),
    /// The request never reached the worker (refused, no route, denied).
    NotReached(String),
    /// It may have reached the worker, which did not answer in time.
    Unknown(String),
}

async fn post(url: &str, body: Bytes, headers: &[(&str, String)], timeout_ms: u64) -> Sent {
    let mut builder = http::Request::post(url).header("content-type", "application/json");
    for (k, v) in headers {
        builder = builder.header(*k, v);
    }
    let Ok(mut req) = builder.body(FullBody::new(body)) else {
        return Sent::NotReached(format!("invalid worker URL {url:?}"));
    };
    let options = RequestOptions::new();
    let ns = timeout_ms.saturating_mul(1_000_000);
    // A host that does not support timeouts still sends the request.
    let _ = options.set_connect_timeout(Some(ns));
    let _ = options.set_first_byte_timeout(Some(ns));
    req.extensions_mut()
        .insert(RequestOptionsExtension(options));
    match spin_sdk::http::send(req).await {
        Ok(resp) => Sent::Answered(resp.status().as_u16()),
        Err(code) => {
            let text = format!("{code:?}");
            match code {
                ErrorCode::DnsTimeout
                | ErrorCode::DnsError(_)
                | ErrorCode::DestinationNotFound
                | ErrorCode::DestinationUnavailable
                | ErrorCode::DestinationIpProhibited
                | ErrorCode::DestinationIpUnroutable
                | ErrorCode::ConnectionRefused
                | ErrorCode::ConnectionTimeout
                | ErrorCode::ConnectionLimitReached
                | ErrorCode::HttpRequestDenied
                | ErrorCode::HttpRequestUriInvalid => Sent::NotReached(text),
                _ => Sent::Unknown(text),
            }
        }
    }
}

fn not_dispatched(job_id: &str, kind: ErrorKind, message: String) -> Option<Event> {
    Some(Event::NotDispatched {
        job_id: job_id.to_owned(),
        error: JobError { kind, message },
    })
}

impl Engine {
    /// Sends one job, at most once (the claim counter decides), to the first
    /// worker of the pool that takes it, starting from a worker chosen by the
    /// job id so jobs spread over the pool.
    pub(crate) async fn dispatch(&self, run: &Run, job_id: &str, step: &str) -> Option<Event> {
        match self
            .kv
            .increment(&keys::counter(&format!("dispatch:{job_id}")), 1)
        {
            Ok(1) => {}
            Ok(_) => return None,
            Err(e) => {
                // Unclaimed: the lease timer retries the step later.
                eprintln!("job {job_id}: dispatch claim failed: {e}");
                return None;
            }
        }
        let planned = run.planned(step)?;

        let mut outputs = BTreeMap::new();
        for (ancestor, job) in run.readable_outputs(step) {
            match self.kv.get::<Value>(&keys::output(&job)).await {
                Ok(Some(v)) => {
                    outputs.insert(ancestor, v);
                }
                Ok(None) => {}
                Err(e) => {
                    return not_dispatched(
                        job_id,
                        ErrorKind::NoWorker,
                        format!("reading output of {ancestor}: {e}"),
                    );
                }
            }
        }
        let input = match template::render(&planned.input, &run.template_context(outputs)) {
            Ok(v) => v,
            Err(e) => {
                return not_dispatched(
                    job_id,
                    ErrorKind::InvalidInput,
                    format!("input template {e}"),
                );
            }
        };
        if let Err(e) = schema::check(&planned.agent.input_schema, &input) {
            return not_dispatched(
                job_id,
                ErrorKind::InvalidInput,
                format!(
                    "input does not match agent {}'s input schema: {e}",
                    planned.agent.name
                ),
            );
        }
        // Kept for the run's read API; a failed write only loses that view.
        if let Err(e) = self.kv.set(&keys::input(job_id), &input).await {
            eprintln!("job {job_id}: storing its input failed: {e}");
        }
        let secret = match self.config.secret() {
            Ok(s) => s,
            Err(e) => return not_dispatched(job_id, ErrorKind::NoWorker, e.to_string()),
        };
        let job = Job {
            job_id: job_id.to_owned(),
            run_id: run.id.clone(),
            step_id: step.to_owned(),
            attempt: run.step(step).map_or(1, |s| s.attempts.len() as u32),
            agent: JobAgent {
                name: planned.agent.name.to_string(),
                version: planned.agent.version,
                image: planned.agent.image.clone(),
                command: planned.agent.command.clone(),
                timeout_secs: planned.timeout_secs,
                memory_mb: planned.agent.memory_mb,
                network: planned.agent.network,
            },
            input,
            lease_ms: run.settings.lease_ms,
            max_output_bytes: run.settings.max_output_bytes,
            callback_url: format!("{}/jobs/{job_id}", self.config.callback_url),
            token: sign::job_token(secret, job_id),
        };
        let body = Bytes::from(serde_json::to_vec(&job).unwrap_or_default());
        let workers = &self.config.workers;
        if workers.is_empty() {
            return not_dispatched(
                job_id,
                ErrorKind::NoWorker,
                "no workers configured (variable workers)".into(),
            );
        }
        let auth = self.worker_auth();
        let first = (fnv1a(job_id.as_bytes()) % workers.len() as u64) as usize;
        let mut refusals = Vec::new();
        for k in 0..workers.len() {
            let worker = &workers[(first + k) % workers.len()];
            let url = format!("{worker}/jobs");
            match post(&url, body.clone(), &auth, self.config.dispatch_timeout_ms).await {
                // 409: the worker already holds this job (an earlier send that
                // looked lost); it is running it.
                Sent::Answered(200 | 201 | 202 | 409) => {
                    return Some(Event::Accepted {
                        job_id: job_id.to_owned(),
                        worker: worker.clone(),
                    });
                }
                Sent::Answered(status) => refusals.push(format!("{worker} answered {status}")),
                Sent::NotReached(why) => refusals.push(format!("{worker}: {why}")),
                Sent::Unknown(why) => {
                    // It may be running there: treat as in flight. Its
                    // heartbeats or its lease decide what happens next.
                    eprintln!(
                        "job {job_id}: no answer from {worker} ({why}); treating as in flight"
                    );
                    return None;
                }
            }
        }
        not_dispatched(
            job_id,
            ErrorKind::NoWorker,
            format!("no worker accepted the job: {}", refusals.join("; ")),
        )
    }

    fn worker_auth(&self) -> Vec<(&'static str, String)> {
        self.config
            .worker_token
            .as_ref()
            .map(|t| vec![("authorization", format!("Bearer {t}"))])
            .unwrap_or_default()
    }

    /// Asks the worker holding a job (or, if unknown, every worker) to stop
    /// it. Best effort: a worker that misses this learns it from its next
    /// heartbeat's answer.
    pub(crate) async fn cancel_job(&self, job_id: &str, worker: Option<&str>) {
        let Ok(secret) = self.config.secret() else {
            return;
        };
        let token = sign::job_token(secret, job_id);
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
            if let Sent::NotReached(why) | Sent::Unknown(why) = post(
                &url,
                body.clone(),
                &headers,
                self.config.dispatch_timeout_ms,
            )
            .await
            {
                eprintln!("job {job_id}: cancel at {w} failed: {why}");
            }
        }
    }
}
