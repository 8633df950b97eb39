//! The answers the host makes itself rather than a component: a path no
//! route matches, a component that failed or ran out of time, no instance
//! slot free, Spin's health check.
//!
//! They carry what every Spindle component's answers carry (see
//! `spindle_spin::context`): the request id, the security headers, and for
//! errors an RFC 9457 problem document naming the request id, so a client
//! sees one shape whoever answered and an operator finds the host's log
//! line by the id the client got.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use spindle_core::problem::ProblemKind;
use wasmtime_wasi_http::WasiBody;

use crate::runtime::full_body;

/// The header carrying the request id.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A request's id, as its answer's `X-Request-Id` states it.
#[derive(Debug, Clone)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The id the client sent, if well-formed by the components' rule
    /// ([`spindle_core::ids::valid_request_id`]); else a fresh one, written
    /// into `headers` so the component serving the request uses it too and
    /// its log lines match the host's.
    pub fn adopt(headers: &mut HeaderMap) -> Self {
        if let Some(v) = headers.get(&X_REQUEST_ID)
            && v.to_str().is_ok_and(spindle_core::ids::valid_request_id)
        {
            return Self(v.clone());
        }
        let fresh = HeaderValue::from_str(&fresh_id()).expect("hex is a header value");
        headers.insert(X_REQUEST_ID, fresh.clone());
        Self(fresh)
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        // Only ever built from a valid id or hex: always visible ASCII.
        self.0.to_str().unwrap_or_default()
    }
}

/// A fresh request id: 32 hex digits, as the components make them.
///
/// Ids only have to tell requests apart, not be secret: a counter run
/// through two hashes keyed at random per process is unique within the
/// process and unlike any other process's, without a system call per
/// request.
pub fn fresh_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static KEYS: OnceLock<(RandomState, RandomState)> = OnceLock::new();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let (a, b) = KEYS.get_or_init(|| (RandomState::new(), RandomState::new()));
    format!("{:016x}{:016x}", a.hash_one(n), b.hash_one(n))
}

/// Whether the client reached the app over https (through a proxy that says
/// so), as the components decide it: HSTS is sent only then.
pub fn over_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

/// Adds the headers every answer carries.
pub fn harden(headers: &mut HeaderMap, id: &RequestId, https: bool) {
    headers.insert(X_REQUEST_ID, id.0.clone());
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    if !headers.contains_key(CACHE_CONTROL) {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if https {
        headers.insert(
            "strict-transport-security",
            HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        );
    }
}

/// A problem document of `kind` for the request `id`.
pub fn problem(
    kind: ProblemKind,
    detail: &str,
    id: &RequestId,
    https: bool,
) -> http::Response<WasiBody> {
    let body = serde_json::json!({
        "type": kind.type_uri(),
        "title": kind.title(),
        "status": kind.status(),
        "detail": detail,
        "request_id": id.as_str(),
    });
    let mut resp = http::Response::builder()
        .status(kind.status())
        .header(CONTENT_TYPE, "application/problem+json")
        .body(full_body(body.to_string()))
        .expect("a problem is a valid response");
    harden(resp.headers_mut(), id, https);
    resp
}

/// The answer for a path no route matches.
pub fn no_route(path: &str, id: &RequestId, https: bool) -> http::Response<WasiBody> {
    // Bounded: the path is the client's, and may be long.
    let shown: String = path.chars().take(200).collect();
    problem(
        ProblemKind::NotFound,
        &format!("no route of this app matches {shown}"),
        id,
        https,
    )
}

/// Spin's health answer (`/.well-known/spin/health`): `200 OK`, plain text.
pub fn healthy(id: &RequestId, https: bool) -> http::Response<WasiBody> {
    let mut resp = http::Response::builder()
        .header(CONTENT_TYPE, "text/plain")
        .body(full_body("OK"))
        .expect("static response");
    harden(resp.headers_mut(), id, https);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_id_is_kept_and_anything_else_replaced_on_the_request() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("trace-42_a.b:c"));
        assert_eq!(RequestId::adopt(&mut h).as_str(), "trace-42_a.b:c");

        for bad in ["has spaces", "semi;colon", &"a".repeat(129)] {
            let mut h = HeaderMap::new();
            h.insert(X_REQUEST_ID, HeaderValue::from_str(bad).unwrap());
            let id = RequestId::adopt(&mut h);
            assert_ne!(id.as_str(), bad);
            assert_eq!(h[X_REQUEST_ID], id.as_str(), "the component gets it too");
        }
    }

    #[test]
    fn fresh_ids_are_32_hex_digits_and_differ() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| fresh_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| id.len() == 32
            && id.bytes().all(|b| b.is_ascii_hexdigit())
            && spindle_core::ids::valid_request_id(id)));
    }

    #[test]
    fn problems_carry_the_id_and_the_security_headers() {
        let mut h = HeaderMap::new();
        let id = RequestId::adopt(&mut h);
        let resp = problem(ProblemKind::Unavailable, "busy", &id, true);
        assert_eq!(resp.status(), 503);
        let h = resp.headers();
        assert_eq!(h["content-type"], "application/problem+json");
        assert_eq!(h["x-request-id"], id.as_str());
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert_eq!(h["cache-control"], "no-store");
        assert!(h.contains_key("strict-transport-security"));
    }
}
