//! Why the worker stops a job before it ends by itself. The reason travels
//! typed from whoever decides (Spindle's cancel request, a heartbeat's
//! answer, the worker's own shutdown) to the result, so the failure kind is
//! chosen by matching the reason, never by reading a message.

use std::fmt;

use spindle_core::job::ErrorKind;

/// Why a held job is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Spindle asked, with a signed `POST /jobs/{job_id}/cancel`.
    Cancelled,
    /// The worker is shutting down and gives the job back to be run
    /// elsewhere.
    HandBack,
    /// A heartbeat answered `keep_running: false` (cancelled, timed out,
    /// run over).
    NoLongerWanted,
    /// Spindle refused a heartbeat (a 4xx): it does not know the job as
    /// active, so running on is wasted work.
    HeartbeatRefused,
}

impl StopReason {
    /// The failure kind the result reports. Only a hand-back is retryable:
    /// the job itself did nothing wrong. Every other reason comes from
    /// Spindle no longer wanting the job, where a retry would be unwanted too.
    pub fn kind(self) -> ErrorKind {
        match self {
            Self::HandBack => ErrorKind::ExecutorFailed,
            Self::Cancelled | Self::NoLongerWanted | Self::HeartbeatRefused => ErrorKind::Cancelled,
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cancelled => "cancelled by Spindle",
            // docs/worker-api.md quotes this one.
            Self::HandBack => "worker shutting down",
            Self::NoLongerWanted => "stopped: Spindle no longer wants the job",
            Self::HeartbeatRefused => "stopped: heartbeat refused",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_hand_back_is_retried() {
        assert_eq!(StopReason::HandBack.kind(), ErrorKind::ExecutorFailed);
        assert!(StopReason::HandBack.kind().retryable());
        for spindle_said_stop in [
            StopReason::Cancelled,
            StopReason::NoLongerWanted,
            StopReason::HeartbeatRefused,
        ] {
            assert_eq!(spindle_said_stop.kind(), ErrorKind::Cancelled);
            assert!(!spindle_said_stop.kind().retryable());
        }
    }
}
