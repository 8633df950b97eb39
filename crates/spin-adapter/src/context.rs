//! The request a component is serving: its id, its caller, its rate-limit
//! budget; and the headers every answer carries.
//!
//! The context is kept in a thread-local, so the engine's audit lines and
//! every log line carry the request id and the actor without threading them
//! through every call. An instance may serve several requests at once (WASI
//! 0.3 components are reused concurrently, by Spin and by Spindle's host),
//! each a future on one thread; so the thread-local is never simply set:
//! [`serve`] keeps each request's context with its future and swaps it in
//! for every poll of that future, and out again before another request's
//! future runs.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use spin_sdk::http::Request;
use spindle_auth::Decision;

use crate::http::{Problem, Response};

#[derive(Default)]
struct Context {
    request_id: String,
    actor: Option<String>,
    rate: Option<Decision>,
    https: bool,
}

thread_local! {
    static CURRENT: RefCell<Context> = RefCell::new(Context::default());
}

/// The current request's id.
pub fn request_id() -> String {
    CURRENT.with(|c| c.borrow().request_id.clone())
}

/// The current request's authenticated actor (`key:ci`, `token:alice`), if
/// it has one.
pub fn actor() -> Option<String> {
    CURRENT.with(|c| c.borrow().actor.clone())
}

/// Records the request's actor (in its log line and audit entries).
pub fn set_actor(actor: String) {
    CURRENT.with(|c| c.borrow_mut().actor = Some(actor));
}

/// Records the rate-limit decision the answer's `RateLimit` headers state.
pub fn set_rate(d: Decision) {
    CURRENT.with(|c| c.borrow_mut().rate = Some(d));
}

/// Writes a line to the component's log (stderr) tagged with the request
/// id, so an operator can find every line about one request.
pub fn log(line: &str) {
    eprintln!("request_id={} {line}", request_id());
}

/// A new request id: 16 random bytes, hex (the time, if the host has no
/// random source: an id only has to tell requests apart in the logs).
pub fn new_request_id() -> String {
    match crate::random::<16>() {
        Ok(bytes) => hex::encode(bytes),
        Err(_) => format!("t{:x}", crate::now_ms()),
    }
}

/// Serves one request: sets up its context, answers CORS preflights, runs
/// `route`, and gives the answer (or the problem) the headers every answer
/// carries.
pub async fn serve<F, Fut>(component: &'static str, req: Request, route: F) -> Response
where
    F: FnOnce(Request) -> Fut + 'static,
    Fut: Future<Output = Result<Response, Problem>> + 'static,
{
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let id = header("x-request-id")
        .filter(|id| spindle_core::ids::valid_request_id(id))
        .unwrap_or_else(new_request_id);
    let https = header("spin-full-url").is_some_and(|u| u.starts_with("https://"))
        || header("x-forwarded-proto").is_some_and(|p| p.eq_ignore_ascii_case("https"));
    let context = Context {
        request_id: id,
        actor: None,
        rate: None,
        https,
    };
    Scoped {
        context,
        inner: Box::pin(answer(component, req, route)),
    }
    .await
}

/// A future that runs with its own request context installed.
struct Scoped<F> {
    context: Context,
    inner: Pin<Box<F>>,
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        // In, poll, out: whatever the poll changed (the actor, the budget)
        // goes back with this request's future.
        CURRENT.with(|c| std::mem::swap(&mut *c.borrow_mut(), &mut this.context));
        let result = this.inner.as_mut().poll(cx);
        CURRENT.with(|c| std::mem::swap(&mut *c.borrow_mut(), &mut this.context));
        result
    }
}

async fn answer<F, Fut>(component: &'static str, req: Request, route: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Result<Response, Problem>>,
{
    let route_label = spindle_core::metrics::route_of(req.uri().path());
    let origin = req
        .headers()
        .get("origin")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let allowed_origin = match origin {
        Some(o) => cors_allowed(&o).await.then_some(o),
        None => None,
    };
    if req.method() == spin_sdk::http::Method::OPTIONS
        && allowed_origin.is_some()
        && req.headers().contains_key("access-control-request-method")
    {
        let mut resp = crate::http::no_content();
        let h = resp.headers_mut();
        h.insert(
            "access-control-allow-methods",
            hv("GET, POST, PUT, DELETE, OPTIONS"),
        );
        h.insert(
            "access-control-allow-headers",
            hv("authorization, x-api-key, content-type, idempotency-key, x-request-id, if-none-match"),
        );
        h.insert("access-control-max-age", hv("600"));
        return finish(resp, allowed_origin.as_deref());
    }
    let resp = match route(req).await {
        Ok(resp) => resp,
        Err(mut problem) => {
            problem.request_id = Some(request_id());
            problem.response()
        }
    };
    count_request(component, route_label, resp.status().as_u16()).await;
    finish(resp, allowed_origin.as_deref())
}

/// Counts the answer in `spindle_http_requests_total`. Health probes and
/// scrapes are left out: they come every few seconds from machines, and
/// counting them would give each a store write. Best effort: a component
/// without the store (the docs) or a failing store counts nothing.
async fn count_request(component: &str, route: &str, status: u16) {
    if route.starts_with("/health") || route == "/metrics" {
        return;
    }
    let Ok(kv) = crate::store::Kv::open("default").await else {
        return;
    };
    let status = status.to_string();
    if let Err(e) = spindle_engine::metrics::count(
        &kv,
        &spindle_core::metrics::HTTP_REQUESTS,
        &[component, route, &status],
        1,
    )
    .await
    {
        log(&format!("request not counted: {e}"));
    }
}

/// Whether browsers from `origin` may call this component: it is on the
/// `cors_origins` allow-list (a component without the variable allows none).
async fn cors_allowed(origin: &str) -> bool {
    let Ok(list) = spin_sdk::variables::get("cors_origins").await else {
        return false;
    };
    list.split(',')
        .map(str::trim)
        .any(|o| !o.is_empty() && o == origin)
}

fn hv(s: &str) -> http::HeaderValue {
    http::HeaderValue::from_str(s).unwrap_or_else(|_| http::HeaderValue::from_static(""))
}

/// Adds the headers every answer carries.
fn finish(mut resp: Response, cors_origin: Option<&str>) -> Response {
    let (request_id, rate, https) = CURRENT.with(|c| {
        let c = c.borrow();
        (c.request_id.clone(), c.rate, c.https)
    });
    let status = resp.status().as_u16();
    let h = resp.headers_mut();
    h.insert("x-request-id", hv(&request_id));
    h.insert("x-content-type-options", hv("nosniff"));
    h.insert("x-frame-options", hv("DENY"));
    h.insert("referrer-policy", hv("no-referrer"));
    if !h.contains_key("cache-control") {
        h.insert("cache-control", hv("no-store"));
    }
    if https {
        h.insert(
            "strict-transport-security",
            hv("max-age=31536000; includeSubDomains"),
        );
    }
    if let Some(d) = rate {
        h.insert("ratelimit-limit", hv(&d.limit.to_string()));
        h.insert("ratelimit-remaining", hv(&d.remaining.to_string()));
        h.insert("ratelimit-reset", hv(&d.reset_s.to_string()));
        if status == 429 {
            h.insert("retry-after", hv(&d.retry_after_s().to_string()));
        }
    }
    if status == 401 && !h.contains_key("www-authenticate") {
        h.insert("www-authenticate", hv(spindle_auth::caller::CHALLENGE));
    }
    if let Some(origin) = cors_origin {
        h.insert("access-control-allow-origin", hv(origin));
        h.insert("vary", hv("origin"));
        h.insert(
            "access-control-expose-headers",
            hv("x-request-id, location, retry-after, ratelimit-limit, ratelimit-remaining, ratelimit-reset, etag"),
        );
    }
    resp
}
