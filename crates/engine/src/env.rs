//! What the engine needs from the world besides the store: a way to reach
//! workers, a clock, and a place for log lines. Spin components get these
//! from `spindle-spin`; tests get controllable ones from
//! [`crate::testing`].

use bytes::Bytes;

/// How a POST to a worker went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// The worker answered with this status.
    Answered(u16),
    /// The request never reached the worker (refused, no route, denied).
    NotReached(String),
    /// It may have reached the worker, which did not answer in time.
    Unknown(String),
}

/// The worker client: one POST, with a time limit for the answer.
#[allow(async_fn_in_trait)]
pub trait Workers {
    /// POSTs `body` (JSON) to `url` with `headers`; gives up waiting for an
    /// answer after `timeout_ms`.
    async fn post(
        &self,
        url: &str,
        body: Bytes,
        headers: &[(&str, String)],
        timeout_ms: u64,
    ) -> Sent;
}

/// Time and logs, from wherever the engine runs.
#[allow(async_fn_in_trait)]
pub trait Host {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// Waits without blocking other work.
    async fn sleep_ms(&self, ms: u64);
    /// One line of the audit trail (JSON), for the audit log.
    fn audit(&self, line: &str);
    /// One line for operators: a fault the engine recovered from or
    /// passed on.
    fn log(&self, line: &str);
    /// The id of the request being served, if any: it goes into audit
    /// lines and onto every job sent to a worker (`X-Request-Id`), so one
    /// request can be followed from the API to the worker.
    fn request_id(&self) -> Option<String> {
        None
    }
}
