//! The HTTP listener: accepts connections, routes requests into the runtime,
//! logs one structured line per request, and shuts down cleanly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use http_body_util::BodyExt;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use wasmtime_wasi_http::WasiBody;

use spindle_core::problem::ProblemKind;

use crate::answer::{self, RequestId};
use crate::deadline::RequestTimedOut;
use crate::runtime::{Origin, Runtime};

/// Binds `addr` the way Spin does (address reuse on, so a restart does not
/// wait out TIME_WAIT).
pub fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket
        .bind(addr)
        .with_context(|| format!("cannot listen on {addr}"))?;
    Ok(socket.listen(1024)?)
}

/// The start-up banner listing routes, in Spin's format.
pub fn banner(rt: &Runtime, addr: SocketAddr) -> String {
    let mut out = format!("Serving http://{addr}\nAvailable Routes:\n");
    for r in rt.app().router.routes() {
        let wildcard = if r.is_wildcard() { " (wildcard)" } else { "" };
        out.push_str(&format!(
            "  {}: http://{addr}{}{wildcard}\n",
            r.component,
            r.prefix()
        ));
    }
    out
}

/// Accepts one connection, ready to serve.
async fn accept(
    listener: &tokio::net::TcpListener,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    let (stream, client) = listener.accept().await?;
    // Responses that wait on the store otherwise stall ~40 ms on delayed
    // ACKs with keep-alive (Nagle); Spin leaves Nagle on, we do not.
    stream.set_nodelay(true)?;
    Ok((stream, client))
}

/// Serves until `shutdown` resolves, then stops accepting and waits (up to
/// `drain`) for requests in flight and for every component instance to
/// finish its work, including work whose client has gone.
pub async fn serve(
    rt: Arc<Runtime>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    rt.set_listen_addr(addr);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, client) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = accept(&listener) => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let rt = rt.clone();
        let service = hyper::service::service_fn(move |req| {
            let rt = rt.clone();
            async move { Ok::<_, std::convert::Infallible>(handle(&rt, req, client).await) }
        });
        let conn = http1::Builder::new()
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection error");
            }
        });
    }
    drop(listener);
    rt.begin_shutdown();
    tracing::info!("shutting down: waiting for requests in flight");
    let drained = async {
        graceful.shutdown().await;
        tracing::info!("all connections closed");
        rt.instances_retired().await;
    };
    tokio::select! {
        _ = drained => tracing::info!("all component work finished"),
        _ = tokio::time::sleep(drain) => tracing::warn!(
            instances = rt.live_instances(),
            "drain timeout: stopping with work in flight"
        ),
    }
    Ok(())
}

async fn handle(
    rt: &Runtime,
    mut req: hyper::Request<hyper::body::Incoming>,
    client: SocketAddr,
) -> http::Response<WasiBody> {
    let started = Instant::now();
    let request_id = RequestId::adopt(req.headers_mut());
    let https = answer::over_https(req.headers());
    let method = req.method().clone();
    let full_path = req.uri().path().to_owned();
    if full_path == "/.well-known/spin/health" {
        return answer::healthy(&request_id, https);
    }
    // What the logs show: a signed approval link's token is a credential.
    let path = loggable_path(&full_path);
    let req = req.map(|b| b.map_err(wasmtime_wasi_http::Error::from).boxed_unsync());
    let mut waiting = ClientWaits {
        method: &method,
        path: &path,
        request_id: &request_id,
        started,
        answered: false,
    };
    let outcome = rt.handle(req, Origin::Client(client)).await;
    waiting.answered = true;
    let id = request_id.as_str();
    let (route, component, resp) = match outcome {
        Ok(Some(found)) => found,
        Ok(None) => (
            String::new(),
            String::new(),
            answer::no_route(&path, &request_id, https),
        ),
        // The error may reach here typed or (through wasmtime-wasi-http's
        // worker) as text only.
        Err(e)
            if e.chain()
                .any(|c| c.is::<wasmtime::PoolConcurrencyLimitError>())
                || e.is::<crate::runtime::Overloaded>()
                || format!("{e:#}").contains("maximum concurrent limit") =>
        {
            // Every instance slot is busy: overload, not a fault; the client
            // may retry.
            tracing::warn!(error = %format!("{e:#}"), %path, request_id = %id, "no instance slot free");
            let mut resp = answer::problem(
                ProblemKind::Unavailable,
                "every component instance is busy; retry shortly",
                &request_id,
                https,
            );
            resp.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
            (String::new(), String::new(), resp)
        }
        Err(e) => {
            let detail = if e.downcast_ref::<RequestTimedOut>().is_some() {
                tracing::warn!(error = %format!("{e:#}"), %path, request_id = %id, "request timed out");
                "the request ran longer than the request timeout and was stopped"
            } else {
                tracing::error!(error = %format!("{e:#}"), %path, request_id = %id, "request failed in component");
                // The cause stays in the host's log, under this request id.
                "the component serving the request failed"
            };
            (
                String::new(),
                String::new(),
                answer::problem(ProblemKind::Internal, detail, &request_id, https),
            )
        }
    };
    // The answer's id: the component's (every Spindle component echoes the
    // one it was given), else the host's.
    let answered_id = resp
        .headers()
        .get(&answer::X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(id);
    tracing::info!(
        target: "spindle::request",
        method = %method,
        path = %path,
        route = %route,
        component = %component,
        status = resp.status().as_u16(),
        request_id = %answered_id,
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    resp
}

/// Logs a request whose client hung up before the answer: hyper drops the
/// request's future then. The component's work is not cancelled with it.
struct ClientWaits<'a> {
    method: &'a http::Method,
    path: &'a str,
    request_id: &'a RequestId,
    started: Instant,
    answered: bool,
}

impl Drop for ClientWaits<'_> {
    fn drop(&mut self) {
        if !self.answered {
            tracing::info!(
                target: "spindle::request",
                method = %self.method,
                path = %self.path,
                request_id = %self.request_id.as_str(),
                duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
                "client went away before the answer; the component finishes its work"
            );
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
///
/// The handlers are installed when this is called, not when the future is
/// first polled: a signal that arrives before the serve loop gets round to
/// polling it (a busy machine, a client already waiting at start) must still
/// stop the host cleanly rather than kill it.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        async move {
            tokio::select! {
                _ = int.recv() => {},
                _ = term.recv() => {},
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_have_nagle_off() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(tokio::net::TcpStream::connect(addr));
        let (stream, peer) = accept(&listener).await.unwrap();
        let client = client.await.unwrap().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        assert!(stream.nodelay().unwrap());
        // The default is on, so the assertion above is about `accept`.
        assert!(!client.nodelay().unwrap());
    }
}

/// `path` as the request log shows it: the token of a signed approval
/// link (`/approvals/link/<token>`) is a bearer credential and is left out.
fn loggable_path(path: &str) -> String {
    const LINK: &str = "/approvals/link/";
    match path.strip_prefix(LINK) {
        Some(rest) if !rest.is_empty() => format!("{LINK}<token>"),
        _ => path.to_owned(),
    }
}

#[cfg(test)]
mod loggable_path_tests {
    use super::loggable_path;

    #[test]
    fn link_tokens_never_reach_the_log() {
        assert_eq!(
            loggable_path("/approvals/link/abc.def-ghi"),
            "/approvals/link/<token>"
        );
        assert_eq!(loggable_path("/approvals/link/"), "/approvals/link/");
        assert_eq!(loggable_path("/api/runs/r1-2"), "/api/runs/r1-2");
    }
}
