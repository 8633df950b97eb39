//! The engine inside a Spin component: Spin's store, outbound HTTP to
//! workers, the wall clock, component logs; settings from the component's
//! variables.

use bytes::Bytes;
use spin_sdk::http::FullBody;
use spin_sdk::wasip3::http::types::{ErrorCode, RequestOptions};
use spin_sdk::wasip3::http_compat::RequestOptionsExtension;
use spindle_core::run::Reject;
use spindle_engine::{Config, Engine, EngineError, Host, Sent, VARIABLES, Workers};

use crate::http::Problem;
use crate::store::Kv;

/// The engine as components run it.
pub type SpinEngine = Engine<Kv, SpinWorkers, SpinHost>;

/// Opens the `default` store and reads the engine's variables; a missing
/// variable is a 500 naming it (and a log line), before anything is done.
pub async fn open() -> Result<SpinEngine, Problem> {
    open_on(Kv::open("default").await.map_err(Problem::store)?).await
}

/// [`open`] on a store the request already opened (for the guard).
pub async fn open_on(store: Kv) -> Result<SpinEngine, Problem> {
    let config = load_config().await.map_err(Problem::from)?;
    Ok(Engine {
        store,
        workers: SpinWorkers,
        host: SpinHost,
        config,
    })
}

/// Reads every variable the engine needs.
pub async fn load_config() -> Result<Config, EngineError> {
    let mut values = std::collections::BTreeMap::new();
    for name in VARIABLES {
        if let Ok(v) = spin_sdk::variables::get(name).await {
            values.insert(name, v);
        }
    }
    Config::from_vars(|name| values.get(name).cloned())
}

/// Reads the worker pool and its breakers' settings alone (no secret):
/// for components that watch the pool without running the engine.
pub async fn load_pool() -> Result<spindle_engine::Pool, EngineError> {
    let mut values = std::collections::BTreeMap::new();
    for name in spindle_engine::POOL_VARIABLES {
        if let Ok(v) = spin_sdk::variables::get(name).await {
            values.insert(name, v);
        }
    }
    spindle_engine::Pool::from_vars(|name| values.get(name).cloned())
}

/// Sends `req` with `timeout_ms` to connect and to the first byte of the
/// answer (a host that does not support timeouts still sends it).
pub async fn send_within(
    mut req: http::Request<FullBody<Bytes>>,
    timeout_ms: u64,
) -> Result<spin_sdk::http::Response, ErrorCode> {
    let options = RequestOptions::new();
    let ns = timeout_ms.saturating_mul(1_000_000);
    let _ = options.set_connect_timeout(Some(ns));
    let _ = options.set_first_byte_timeout(Some(ns));
    req.extensions_mut()
        .insert(RequestOptionsExtension(options));
    spin_sdk::http::send(req).await
}

/// Workers over `wasi:http` outbound requests.
pub struct SpinWorkers;

impl Workers for SpinWorkers {
    async fn post(
        &self,
        url: &str,
        body: Bytes,
        headers: &[(&str, String)],
        timeout_ms: u64,
    ) -> Sent {
        let mut builder = http::Request::post(url).header("content-type", "application/json");
        for (k, v) in headers {
            builder = builder.header(*k, v);
        }
        let Ok(req) = builder.body(FullBody::new(body)) else {
            return Sent::NotReached(format!("invalid worker URL {url:?}"));
        };
        match send_within(req, timeout_ms).await {
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
}

/// The wall clock; audit lines to stdout and faults to stderr, which Spin
/// keeps in the component's logs.
pub struct SpinHost;

impl Host for SpinHost {
    fn now_ms(&self) -> u64 {
        crate::now_ms()
    }

    async fn sleep_ms(&self, ms: u64) {
        spin_sdk::wasip3::clocks::monotonic_clock::wait_for(ms * 1_000_000).await;
    }

    fn audit(&self, line: &str) {
        println!("{line}");
    }

    fn log(&self, line: &str) {
        crate::context::log(line);
    }

    fn request_id(&self) -> Option<String> {
        Some(crate::context::request_id()).filter(|id| !id.is_empty())
    }
}

impl From<EngineError> for Problem {
    fn from(e: EngineError) -> Self {
        use spindle_core::problem::ProblemKind as K;
        match e {
            EngineError::Store(e) => Problem::store(e),
            EngineError::Config(m) => {
                crate::context::log(&format!("configuration: {m}"));
                Problem::of(K::Configuration, m)
            }
            EngineError::NotFound(m) => Problem::of(K::NotFound, m),
            EngineError::Rejected(r) => {
                let kind = match &r {
                    Reject::UnknownJob { .. } => K::NotFound,
                    Reject::JobNotActive { .. } => K::JobNotActive,
                    Reject::RunFinished { .. } => K::RunFinished,
                    Reject::NotWaitingApproval { .. } => K::NotWaitingApproval,
                    Reject::ApprovalExpired { .. } => K::ApprovalExpired,
                    Reject::AlreadyDecided { .. } => K::AlreadyDecided,
                    Reject::SelfApproval { .. } => K::SelfApproval,
                    Reject::InputChanged { .. } => K::InputChanged,
                    // The stored run, not the request, is at fault.
                    Reject::Corrupt { .. } => K::Internal,
                };
                Problem::of(kind, r.to_string())
            }
            EngineError::Conflict(m) | EngineError::InFlight(m) => Problem::of(K::Conflict, m),
            EngineError::Unauthorized => Problem::of(
                K::Signature,
                format!(
                    "sign the exact body with HMAC-SHA256 under the job token and send it as {}: sha256=<hex>",
                    spindle_core::job::SIGNATURE_HEADER
                ),
            ),
            EngineError::Invalid(v) => Problem::validation(v),
            EngineError::Forbidden(m) => Problem::of(K::Forbidden, m),
            EngineError::Link(e) => Problem::of(K::BadLink, e.to_string()),
            EngineError::LinkUsed => Problem::of(
                K::LinkUsed,
                "this approval link was used already; ask for a new one",
            ),
            EngineError::BadRequest(pointer, detail) => {
                Problem::invalid("Invalid request body", pointer, detail)
            }
        }
    }
}
