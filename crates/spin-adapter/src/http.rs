//! HTTP plumbing shared by every component: RFC 9457 problem documents,
//! bounded request bodies, JSON answers.

use spin_sdk::http::{FullBody, IntoResponse, Request};
use spin_sdk::wasip3::http::types;
use spin_sdk::wasip3::wit_future;
use spin_sdk::wit_bindgen::StreamResult;
use spindle_core::problem::ProblemKind;
use spindle_core::{FieldError, ValidationError};

/// The response type every handler returns.
pub type Response = ::http::Response<FullBody<bytes::Bytes>>;

/// Largest request body any Spindle endpoint accepts by default.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

/// An RFC 9457 problem document.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Problem {
    /// A URI reference naming the problem type; relative to the API docs.
    #[serde(rename = "type")]
    pub type_: String,
    /// Short summary, the same for every occurrence of the type.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// This occurrence, in words.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// Every field at fault, as JSON Pointers into the request body.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// The request's id (set when the answer is sent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl Problem {
    /// A problem of `kind`, from the one catalogue of kinds
    /// ([`ProblemKind`]), with this occurrence's `detail`.
    pub fn of(kind: ProblemKind, detail: impl Into<String>) -> Self {
        Self {
            type_: kind.type_uri(),
            title: kind.title().to_owned(),
            status: kind.status(),
            detail: detail.into(),
            errors: Vec::new(),
            request_id: None,
        }
    }

    /// 400 for a document that failed validation, naming every field.
    pub fn validation(err: ValidationError) -> Self {
        let mut p = Self::of(ProblemKind::Validation, err.to_string());
        p.errors = err.errors;
        p
    }

    /// 400 for one field at fault (`pointer`, a JSON Pointer into the
    /// request; `/query/<name>` and `/headers/<name>` for those parts).
    /// `what` says which part of the request (e.g. `Invalid query`), as
    /// the detail's prefix.
    pub fn invalid(what: &str, pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        let mut p = Self::of(ProblemKind::Validation, format!("{what}: {detail}"));
        p.errors = vec![FieldError::new(pointer, detail)];
        p
    }

    /// A problem of `kind` about one field (`pointer`, as for
    /// [`Problem::invalid`]).
    pub fn at(kind: ProblemKind, pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        let mut p = Self::of(kind, detail.clone());
        p.errors = vec![FieldError::new(pointer, detail)];
        p
    }

    /// 503 for a store failure: logged in full (the component's stderr),
    /// answered without internals.
    pub fn store(e: impl std::fmt::Display) -> Self {
        crate::context::log(&format!("store failure: {e}"));
        Self::of(
            ProblemKind::Unavailable,
            "the key-value store is unavailable; retry later",
        )
    }

    /// 400 for a body that is not JSON.
    pub fn not_json(err: &serde_json::Error) -> Self {
        Self::invalid("Invalid request body", "", err.to_string())
    }

    /// 404 for a missing resource.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::of(ProblemKind::NotFound, what)
    }

    /// 405 with the methods the route accepts.
    pub fn method_not_allowed(allowed: &str) -> Self {
        Self::of(ProblemKind::MethodNotAllowed, format!("allowed: {allowed}"))
    }

    /// 501 for a route reserved for a feature not built yet: a clear,
    /// machine-readable answer rather than a 404 or a hang.
    pub fn not_implemented(req: &Request, reserved_for: &str) -> Self {
        Self::of(
            ProblemKind::NotImplemented,
            format!(
                "{} {} is reserved for {reserved_for}",
                req.method(),
                req.uri().path()
            ),
        )
    }

    /// 500 for a fault of ours; `detail` must not leak secrets or internals
    /// beyond a one-line cause.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::of(ProblemKind::Internal, detail)
    }

    /// The response.
    pub fn response(&self) -> Response {
        let body = serde_json::to_vec(self).unwrap_or_default();
        ::http::Response::builder()
            .status(self.status)
            .header("content-type", "application/problem+json")
            .body(FullBody::new(bytes::Bytes::from(body)))
            .expect("valid response")
    }
}

impl IntoResponse for Problem {
    fn into_response(
        self,
    ) -> Result<spin_sdk::wasip3::http::types::Response, spin_sdk::wasip3::http::types::ErrorCode>
    {
        self.response().into_response()
    }
}

/// A refused query parameter: the pointer is `/query/<field>` and the
/// detail names the parameter.
pub fn bad_query(field: &str, detail: impl Into<String>) -> Problem {
    let detail = detail.into();
    let mut p = Problem::invalid("Invalid query", format!("/query/{field}"), detail.clone());
    p.detail = format!("{field}: {detail}");
    p
}

/// A listing's page size (`limit`): 1 to `max`.
pub fn page_limit(value: &str, max: usize) -> Result<usize, Problem> {
    value
        .parse()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| bad_query("limit", format!("must be between 1 and {max}")))
}

/// A listing's `cursor`: a `next_cursor` from an earlier page.
pub fn page_cursor(value: &str) -> Result<String, Problem> {
    match spindle_engine::parse_cursor(value) {
        Some(_) => Ok(value.to_owned()),
        None => Err(bad_query(
            "cursor",
            "must be a next_cursor from an earlier page",
        )),
    }
}

/// `204 No Content`.
pub fn no_content() -> Response {
    ::http::Response::builder()
        .status(204)
        .body(FullBody::new(bytes::Bytes::new()))
        .expect("valid response")
}

/// The non-empty segments of a path.
pub fn segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

/// A JSON answer with `status`.
pub fn json<T: serde::Serialize>(status: u16, value: &T) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    ::http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(FullBody::new(bytes::Bytes::from(body)))
        .expect("valid response")
}

/// Reads the whole body, refusing more than `max` bytes with a 413 problem.
///
/// A body announced longer than `max` by its `Content-Length` is refused
/// before any of it is read. A body without one (chunked) is streamed, and
/// refused as soon as `max + 1` bytes have arrived: at most that much is ever
/// held in memory, however long the client keeps sending.
pub async fn read_body(req: Request, max: usize) -> Result<bytes::Bytes, Problem> {
    if let Some(len) = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        && len > u64::try_from(max).unwrap_or(u64::MAX)
    {
        return Err(too_large(max));
    }
    let mut body = req.into_body();
    let Some(msg) = body.take_unstarted() else {
        return Err(Problem::of(
            ProblemKind::Body,
            "the request body was already read",
        ));
    };
    // What `IncomingBody` does inside, with a bound: consume the body as a
    // stream and read it in pieces no larger than what is left of the limit.
    let (_result, reader) = wit_future::new(|| Ok(()));
    let (mut stream, trailers) = types::Request::consume_body(msg, reader);
    let mut out: Vec<u8> = Vec::new();
    loop {
        let room = max.saturating_add(1).saturating_sub(out.len());
        let (status, chunk) = stream
            .read(Vec::with_capacity(room.clamp(1, READ_CHUNK)))
            .await;
        match status {
            StreamResult::Complete(_) => {
                out.extend_from_slice(&chunk);
                if out.len() > max {
                    // Dropping the stream tells the host to stop reading.
                    return Err(too_large(max));
                }
            }
            StreamResult::Dropped => break,
            StreamResult::Cancelled => {
                return Err(Problem::of(
                    ProblemKind::Body,
                    "reading the request body was cancelled",
                ));
            }
        }
    }
    drop(stream);
    // The transfer's own outcome (a client that broke off mid-body).
    trailers
        .await
        .map_err(|e| Problem::of(ProblemKind::Body, format!("{e:?}")))?;
    Ok(bytes::Bytes::from(out))
}

/// The most read from a body stream at once (what spin-sdk reads).
const READ_CHUNK: usize = 16 << 10;

fn too_large(max: usize) -> Problem {
    Problem::of(ProblemKind::TooLarge, format!("the limit is {max} bytes"))
}

/// Requires `content-type: application/json` (with any parameters).
pub fn require_json(req: &Request) -> Result<(), Problem> {
    let ct = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
    {
        Ok(())
    } else {
        Err(Problem::of(
            ProblemKind::MediaType,
            "send the body as application/json",
        ))
    }
}

/// The path as the route saw it: Spin's `spin-path-info` (the part after a
/// wildcard route's prefix), or `/`.
pub fn path_info(req: &Request) -> String {
    req.headers()
        .get("spin-path-info")
        .and_then(|v| v.to_str().ok())
        .filter(|p| !p.is_empty())
        .unwrap_or("/")
        .to_owned()
}

/// Whether the request's `If-None-Match` names `etag`, the current version
/// of what it asks for (RFC 9110, 13.1.2: weak comparison, `*` matches
/// any), so the answer may be `304 Not Modified`.
pub fn not_modified(req: &Request, etag: &str) -> bool {
    req.headers()
        .get_all("if-none-match")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// The Content-Security-Policy of a built-in file that is not a page:
/// nothing in it may run or load anything, should a browser be talked into
/// rendering it as one.
pub const INERT_CSP: &str = "default-src 'none'; frame-ancestors 'none'; sandbox";

/// `405` with `Allow: GET, HEAD` unless the request is a `GET` or `HEAD`.
pub fn refuse_unless_get(req: &Request) -> Option<Response> {
    use spin_sdk::http::Method;
    const ALLOWED: &str = "GET, HEAD";
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return None;
    }
    let mut problem = Problem::method_not_allowed(ALLOWED);
    problem.request_id = Some(crate::context::request_id());
    let mut resp = problem.response();
    resp.headers_mut()
        .insert("allow", http::HeaderValue::from_static(ALLOWED));
    Some(resp)
}

/// A file built into a component, and how it is answered.
pub struct Builtin<'a> {
    /// The bytes.
    pub body: &'static str,
    /// Its media type.
    pub content_type: &'a str,
    /// Its entity tag, quoted.
    pub etag: &'a str,
    /// Its `Cache-Control`.
    pub cache: &'a str,
    /// Its `Content-Security-Policy`.
    pub csp: &'a str,
}

/// Answers `GET` or `HEAD` for a built-in file: `304` when the client's
/// `If-None-Match` names its entity tag, else the file (for `HEAD` too: the
/// host sends only the headers). Any other method gets `405` with `Allow`.
pub fn builtin(req: &Request, file: &Builtin<'_>) -> Response {
    if let Some(refused) = refuse_unless_get(req) {
        return refused;
    }
    let builder = http::Response::builder()
        .header("etag", file.etag)
        .header("cache-control", file.cache)
        .header("content-security-policy", file.csp);
    let resp = if not_modified(req, file.etag) {
        builder.status(304).body(FullBody::new(bytes::Bytes::new()))
    } else {
        builder
            .status(200)
            .header("content-type", file.content_type)
            .body(FullBody::new(bytes::Bytes::from_static(
                file.body.as_bytes(),
            )))
    };
    resp.expect("valid response")
}
