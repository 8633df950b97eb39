//! The job protocol between Spindle and its workers, as wire types.
//!
//! Spindle POSTs a [`Job`] to a worker; the worker answers `202`, renews the
//! job's lease with [`Heartbeat`]s while it holds the job, and posts one
//! [`JobResult`] to the callback URL. Heartbeats and results are signed with
//! HMAC-SHA256 over the body, keyed by the job's token. See `docs/worker-api.md`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Header carrying the hex HMAC-SHA256 of the body, as `sha256=<hex>`.
pub const SIGNATURE_HEADER: &str = "x-spindle-signature";

/// A unit of work for a worker: one attempt of one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// `<run>.<step>.<attempt>`; unique, and the key of everything about it.
    pub job_id: String,
    /// The run.
    pub run_id: String,
    /// The step.
    pub step_id: String,
    /// 1-based attempt number.
    pub attempt: u32,
    /// What to run.
    pub agent: JobAgent,
    /// The rendered input, already checked against the agent's input schema.
    pub input: Value,
    /// The worker must renew the lease (heartbeat) at least this often, or
    /// the job is presumed lost and retried elsewhere.
    pub lease_ms: u64,
    /// Largest output Spindle accepts, in bytes of JSON.
    pub max_output_bytes: usize,
    /// Where heartbeats (`POST {callback_url}/heartbeat`) and the result
    /// (`POST {callback_url}/result`) go.
    pub callback_url: String,
    /// Secret for signing this job's heartbeats and result. Never logged.
    pub token: String,
}

/// The agent part of a job: a snapshot of the agent version the run uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobAgent {
    /// Agent name.
    pub name: String,
    /// Agent version.
    pub version: u32,
    /// Container image, for the podman/docker executors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Command (argv).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Kill the job after this long.
    pub timeout_secs: u32,
    /// Memory limit.
    pub memory_mb: u32,
    /// Whether the container gets a network (`--network none` otherwise).
    #[serde(default)]
    pub network: bool,
}

/// A worker's renewal of a job's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The job.
    pub job_id: String,
    /// The worker holding it.
    pub worker: String,
}

/// The answer to a heartbeat: keep going until `lease_expires_at_ms`, or stop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// Whether the worker should keep running the job.
    pub keep_running: bool,
    /// The new lease end (milliseconds since the Unix epoch) when it should.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at_ms: Option<u64>,
}

/// How a job ended, as the worker saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Exit status 0 and JSON on stdout.
    Succeeded,
    /// Anything else.
    Failed,
}

/// A job's result, posted by the worker to the callback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    /// The job.
    pub job_id: String,
    /// The worker that ran it.
    pub worker: String,
    /// How it ended.
    pub status: JobStatus,
    /// The agent's output (when it succeeded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Why it failed (when it failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    /// The process's exit status, if it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The last lines of the agent's stderr.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub logs_tail: String,
    /// When the agent started, milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// When it ended.
    pub finished_at_ms: u64,
}

/// A failure as the worker classifies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    /// The class of failure.
    pub kind: ErrorKind,
    /// One line for humans.
    pub message: String,
}

/// Classes of step failure. Whether a class is retried is decided here, in
/// one place, for the worker and the orchestrator alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The agent exited non-zero or printed no JSON.
    AgentFailed,
    /// The agent declared the failure permanent (exit status 65,
    /// `EX_DATAERR`): retrying the same input cannot help.
    AgentRejected,
    /// The job ran past its timeout, or its lease lapsed.
    Timeout,
    /// The rendered input could not be built or broke the input schema.
    InvalidInput,
    /// The output broke the agent's output schema.
    InvalidOutput,
    /// The output was larger than the cap.
    OutputTooLarge,
    /// No worker accepted the job.
    NoWorker,
    /// Spindle could not prepare the job (a store read failed while
    /// rendering its input). Retried, and counted against the budget, so a
    /// lasting fault fails the run instead of retrying forever.
    DispatchFailed,
    /// The executor could not start the agent (missing image or program).
    ExecutorFailed,
    /// A human rejected the step.
    Rejected,
    /// The run was cancelled or timed out while the job ran.
    Cancelled,
}

impl ErrorKind {
    /// Whether another attempt might succeed.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Self::AgentFailed
                | Self::Timeout
                | Self::NoWorker
                | Self::ExecutorFailed
                | Self::DispatchFailed
        )
    }
}

/// The exit status by which an agent declares a permanent failure.
pub const EXIT_PERMANENT: i32 = 65;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_are_snake_case() {
        assert_eq!(
            serde_json::to_value(ErrorKind::OutputTooLarge).unwrap(),
            "output_too_large"
        );
        assert_eq!(
            serde_json::to_value(JobStatus::Succeeded).unwrap(),
            "succeeded"
        );
        assert!(!ErrorKind::InvalidOutput.retryable());
        assert!(ErrorKind::Timeout.retryable());
    }
}
