//! Hostile input at the HTTP edge: no request, however malformed, panics a
//! component or drops the connection, and every refusal is a problem document.
//!
//! The sweep sends a seeded, bounded set of hostile requests (random bytes,
//! truncated, huge and deeply nested JSON, wrong types for every field,
//! unicode, wrong content types, chunked bodies over the limit, odd paths and
//! methods) to every route family of the real host over raw HTTP/1.1, and
//! checks every answer. `SPINDLE_HOSTILE_SEED` replays another seed;
//! `SPINDLE_HOSTILE_REQUESTS` changes how many requests it sends;
//! `SPINDLE_HOSTILE_TRACE=1` prints each request with its answer.
//!
//! The other tests pin each defect the sweep's review found: a chunked body
//! is refused as soon as it passes the limit (never read to its end), a huge
//! configured output cap or lease does not overflow, a cancel body must be a
//! JSON object, and a trigger body must be declared JSON.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use spindle_core::job::SIGNATURE_HEADER;
use spindle_core::sign;
use spindle_tests::{
    Host, HostBuilder, TEST_ADMIN_KEY, TEST_CALLBACK_SECRET, TEST_TICK_SECRET, client, root,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEFAULT_SEED: u64 = 0x5151_d1e0_0007_0002;
const DEFAULT_REQUESTS: usize = 1500;
const CONCURRENCY: usize = 6;
/// The limit of `/api/*` and `/trigger/*` bodies (`DEFAULT_MAX_BODY`).
const MAX_BODY: usize = 1 << 20;
/// How long one hostile request may take before it counts as a hang.
const ANSWER_WITHIN: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// A deterministic random source (SplitMix64): no dependency, same sequence on
// every platform.

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// True `percent` times out of a hundred.
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

// ---------------------------------------------------------------------------
// A raw HTTP/1.1 client: any method, any request target, any header bytes,
// bodies with a length, chunked, or chunked and never finished.

#[derive(Clone)]
enum Body {
    None,
    /// Sent with `content-length`.
    Sized(Vec<u8>),
    /// Sent with `transfer-encoding: chunked`, in these chunks.
    Chunked(Vec<Vec<u8>>),
    /// Chunked, `n` bytes in 16 KiB chunks, then the connection is held open
    /// without the last chunk: only a server that stops reading at its
    /// limit can answer.
    Unfinished(usize),
}

#[derive(Clone)]
struct Hostile {
    method: String,
    target: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Body,
}

impl Hostile {
    fn new(method: &str, target: &str) -> Self {
        Self {
            method: method.into(),
            target: target.into(),
            headers: Vec::new(),
            body: Body::None,
        }
    }

    fn header(mut self, k: &str, v: impl Into<Vec<u8>>) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }

    fn body(mut self, body: Body) -> Self {
        self.body = body;
        self
    }

    /// The path part of the request target, as the host routes it.
    fn path(&self) -> &str {
        let t = self
            .target
            .strip_prefix("http://")
            .map(|rest| &rest[rest.find('/').unwrap_or(rest.len())..])
            .unwrap_or(&self.target);
        t.split('?').next().unwrap_or("")
    }

    /// A short description, for failure messages.
    fn describe(&self) -> String {
        let head: Vec<String> = self
            .headers
            .iter()
            .map(|(k, v)| format!("{k}: {}", preview(v, 80)))
            .collect();
        let body = match &self.body {
            Body::None => "no body".to_owned(),
            Body::Sized(b) => format!("{} bytes: {}", b.len(), preview(b, 200)),
            Body::Chunked(c) => {
                let all: Vec<u8> = c.concat();
                format!(
                    "chunked, {} chunks, {} bytes: {}",
                    c.len(),
                    all.len(),
                    preview(&all, 200)
                )
            }
            Body::Unfinished(n) => format!("chunked, {n} bytes, never finished"),
        };
        format!(
            "{} {} [{}] ({body})",
            self.method,
            preview(self.target.as_bytes(), 200),
            head.join("; ")
        )
    }
}

fn preview(b: &[u8], max: usize) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(max)]).into_owned();
    if b.len() > max {
        format!("{s:?}…")
    } else {
        format!("{s:?}")
    }
}

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses a response out of `buf`; `None` while it is incomplete. `eof`:
/// the server closed the connection (a body without length ends there).
fn parse_answer(buf: &[u8], head_only: bool, eof: bool) -> Option<Answer> {
    let mut buf = buf;
    loop {
        let end = find(buf, b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let rest = &buf[end + 4..];
        let mut lines = head.split("\r\n");
        let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        if (100..200).contains(&status) {
            // 100 Continue: the real answer follows.
            buf = rest;
            continue;
        }
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let body = if head_only || status == 204 || status == 304 {
            Vec::new()
        } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            if rest.len() < len {
                return None;
            }
            rest[..len].to_vec()
        } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            let mut out = Vec::new();
            let mut at = rest;
            loop {
                let line_end = find(at, b"\r\n")?;
                let size_text = String::from_utf8_lossy(&at[..line_end]).into_owned();
                let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
                at = &at[line_end + 2..];
                if size == 0 {
                    break;
                }
                if at.len() < size + 2 {
                    return None;
                }
                out.extend_from_slice(&at[..size]);
                at = &at[size + 2..];
            }
            out
        } else if eof {
            rest.to_vec()
        } else {
            return None;
        };
        return Some(Answer {
            status,
            headers,
            body,
        });
    }
}

/// Sends `req` on a fresh connection and reads the answer, writing the body
/// and reading at the same time (a server may answer before the body ends).
/// `Err` says how the exchange failed: no answer, a dropped connection.
async fn send(addr: &str, req: &Hostile, within: Duration) -> Result<Answer, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut rd, mut wr) = stream.into_split();
    let mut head =
        format!("{} {} HTTP/1.1\r\nhost: {addr}\r\n", req.method, req.target).into_bytes();
    // As the admin, unless the request brings its own credential: hostile
    // input must reach the parsers behind the guard, not stop at a 401.
    if !req
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
    {
        head.extend_from_slice(format!("authorization: Bearer {TEST_ADMIN_KEY}\r\n").as_bytes());
    }
    for (k, v) in &req.headers {
        head.extend_from_slice(k.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(v);
        head.extend_from_slice(b"\r\n");
    }
    match &req.body {
        Body::None => {}
        Body::Sized(b) => {
            head.extend_from_slice(format!("content-length: {}\r\n", b.len()).as_bytes())
        }
        Body::Chunked(_) | Body::Unfinished(_) => {
            head.extend_from_slice(b"transfer-encoding: chunked\r\n")
        }
    }
    head.extend_from_slice(b"connection: close\r\n\r\n");
    let body = req.body.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(&head).await?;
        match body {
            Body::None => {}
            Body::Sized(b) => wr.write_all(&b).await?,
            Body::Chunked(chunks) => {
                for c in chunks.iter().filter(|c| !c.is_empty()) {
                    wr.write_all(format!("{:x}\r\n", c.len()).as_bytes())
                        .await?;
                    wr.write_all(c).await?;
                    wr.write_all(b"\r\n").await?;
                }
                wr.write_all(b"0\r\n\r\n").await?;
            }
            Body::Unfinished(n) => {
                let chunk = vec![b' '; 16 << 10];
                let mut sent = 0;
                while sent < n {
                    wr.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                        .await?;
                    wr.write_all(&chunk).await?;
                    wr.write_all(b"\r\n").await?;
                    sent += chunk.len();
                }
                // Hold the connection open: the body never ends.
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        }
        wr.flush().await?;
        // Keep the write half open until the answer is read.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok::<_, std::io::Error>(())
    });
    let head_only = req.method == "HEAD";
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) => {
                    return parse_answer(&buf, head_only, true).ok_or_else(|| {
                        format!(
                            "connection closed after {} bytes, without a whole answer: {}",
                            buf.len(),
                            preview(&buf, 300)
                        )
                    });
                }
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(a) = parse_answer(&buf, head_only, false) {
                        return Ok(a);
                    }
                }
                Err(e) => {
                    // A reset after a whole answer is the server closing on
                    // a body it did not read: the answer stands.
                    return parse_answer(&buf, head_only, true).ok_or_else(|| {
                        format!(
                            "connection dropped ({e}) after {} bytes: {}",
                            buf.len(),
                            preview(&buf, 300)
                        )
                    });
                }
            }
        }
    };
    let out = tokio::time::timeout(within, read)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {within:?}")));
    writer.abort();
    out
}

// ---------------------------------------------------------------------------
// What every answer must be.

/// The path reaches a component (Spin's routing: empty segments ignored).
/// Other paths are answered by the host (its `404` problem) or, for a
/// request it cannot parse, by the HTTP layer itself.
fn routed(path: &str) -> bool {
    let segs: Vec<&str> = path.split('/').skip(1).filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["internal", "tick"] => true,
        [first, ..] => {
            ["api", "health", "webhooks", "trigger", "approvals", "jobs"].contains(first)
        }
        [] => false,
    }
}

/// Checks one answer; `Err` says what is wrong with it.
fn judge(req: &Hostile, answer: &Answer) -> Result<(), String> {
    let status = answer.status;
    let path = req.path();
    if !routed(path) {
        // The host's own answer, or the HTTP layer's.
        return if status < 500 {
            Ok(())
        } else {
            Err(format!("unrouted path answered {status}"))
        };
    }
    if status >= 500 {
        return Err(format!("answered {status}: {}", preview(&answer.body, 400)));
    }
    if status >= 400 {
        let ct = answer.header("content-type").unwrap_or("");
        if ct != "application/problem+json" {
            return Err(format!(
                "{status} with content-type {ct:?}, not application/problem+json: {}",
                preview(&answer.body, 300)
            ));
        }
        if req.method == "HEAD" {
            return Ok(());
        }
        let doc = answer.json();
        let ok = doc["type"].is_string()
            && doc["title"].is_string()
            && doc["status"].as_u64() == Some(u64::from(status));
        if !ok {
            return Err(format!(
                "{status} is not a problem document (type, title, status): {}",
                preview(&answer.body, 300)
            ));
        }
        if let Some(errors) = doc.get("errors") {
            let all_pointers = errors
                .as_array()
                .is_some_and(|a| a.iter().all(|e| e["pointer"].is_string()));
            if !all_pointers {
                return Err(format!("{status}: errors without pointers: {doc}"));
            }
        }
    }
    Ok(())
}

/// What the host and its components logged that must never appear.
fn crashes_in_logs(host: &Host) -> Vec<String> {
    let mut text = host.stdout();
    text.push_str(&host.stderr());
    if let Ok(dir) = std::fs::read_dir(host.state_dir.join("logs")) {
        for e in dir.flatten() {
            text.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    text.lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("panic")
                || l.contains("component instance failed")
                || l.contains("request failed in component")
                || l.contains("wasm trap")
        })
        .map(str::to_owned)
        .collect()
}

// ---------------------------------------------------------------------------
// The application under attack.

struct App {
    host: Host,
    addr: String,
    /// An existing run and its first job.
    run_id: String,
    job_id: String,
    /// More runs' first jobs, dispatched to the worker and still active,
    /// so signed results get past the lookup into the result parser.
    live_jobs: Vec<String>,
}

/// A worker that takes every job and never reports: each dispatched job
/// stays active (until its lease lapses) for the sweep's callbacks.
async fn accepting_worker() -> String {
    let app = axum::Router::new()
        .route(
            "/jobs",
            axum::routing::post(|| async { axum::http::StatusCode::ACCEPTED }),
        )
        .route(
            "/jobs/{id}/cancel",
            axum::routing::post(|| async { axum::http::StatusCode::OK }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn host_with(worker: &str, env: &[(&str, &str)]) -> Host {
    let mut b = HostBuilder::new(root().join("spin.toml"))
        .env("SPIN_VARIABLE_WORKERS", worker)
        .env("SPIN_VARIABLE_DISPATCH_TIMEOUT_MS", "2000");
    for (k, v) in env {
        b = b.env(k, v);
    }
    b.start()
}

async fn post_json(host: &Host, path: &str, body: &Value) -> (u16, Value) {
    let r = client()
        .post(host.url(path))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn app_with(env: &[(&str, &str)]) -> App {
    let host = host_with(&accepting_worker().await, env);
    let (st, v) = post_json(&host, "/api/agents", &agent_doc("a1")).await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = post_json(&host, "/api/workflows", &workflow_doc("wf1", "a1")).await;
    assert_eq!(st, 201, "{v}");
    // Decoys for the sweep's deletes, so `a1` and `wf1` stay to be hit.
    let (st, v) = post_json(&host, "/api/agents", &agent_doc("a2")).await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = post_json(&host, "/api/workflows", &workflow_doc("wf2", "a2")).await;
    assert_eq!(st, 201, "{v}");
    let mut jobs = Vec::new();
    for x in 0..8 {
        let (st, v) = post_json(&host, "/trigger/wf1", &json!({"x": x})).await;
        assert_eq!(st, 202, "{v}");
        jobs.push(format!("{}.a.1", v["run_id"].as_str().unwrap()));
    }
    let job_id = jobs.remove(0);
    let run_id = job_id.trim_end_matches(".a.1").to_owned();
    let addr = host.base.trim_start_matches("http://").to_owned();
    App {
        host,
        addr,
        run_id,
        job_id,
        live_jobs: jobs,
    }
}

fn agent_doc(name: &str) -> Value {
    json!({
        "name": name,
        "description": "hostile test agent",
        "command": ["cat"],
        "image": "localhost/busybox",
        "risk_level": "auto",
        "network": false,
        "input_schema": {"type": "object", "properties": {"x": {"type": "integer"}}},
        "output_schema": {"type": "object"},
        "timeout_secs": 30,
        "memory_mb": 64,
        "retry": {"max_attempts": 2, "initial_backoff_ms": 100, "max_backoff_ms": 1000}
    })
}

fn workflow_doc(name: &str, agent: &str) -> Value {
    json!({
        "name": name,
        "description": "hostile test workflow",
        "deadline_secs": 600,
        "steps": [
            {"id": "a", "agent": agent, "input": {"x": "{{ trigger.payload.x }}"}},
            {"id": "b", "agent": agent, "needs": ["a"],
             "input": {"y": "{{ steps.a.output.y }}", "run": "{{ run.id }}"},
             "retry": {"max_attempts": 1, "initial_backoff_ms": 10, "max_backoff_ms": 10},
             "timeout_secs": 5}
        ]
    })
}

fn heartbeat_doc(job: &str) -> Value {
    json!({"job_id": job, "worker": "worker@127.0.0.1:1"})
}

fn result_doc(job: &str, failed: bool) -> Value {
    if failed {
        json!({
            "job_id": job, "worker": "worker@127.0.0.1:1", "status": "failed",
            "error": {"kind": "agent_failed", "message": "boom"},
            "exit_code": 1, "logs_tail": "tail", "started_at_ms": 1, "finished_at_ms": 2
        })
    } else {
        json!({
            "job_id": job, "worker": "worker@127.0.0.1:1", "status": "succeeded",
            "output": {"y": 2}, "exit_code": 0, "logs_tail": "tail",
            "started_at_ms": 1, "finished_at_ms": 2
        })
    }
}

// ---------------------------------------------------------------------------
// Generators.

const STRINGS: &[&str] = &[
    "",
    " ",
    "a1",
    "wf1",
    "A1",
    "a-",
    "-a",
    "a--b",
    "..",
    ".",
    "...",
    "%",
    "%%",
    "%2e%2e",
    "%2F",
    "/",
    "\\",
    "\"",
    "'",
    "\u{0}",
    "a\u{0}b",
    "\u{7f}",
    "\t\r\n",
    "é",
    "日本語",
    "🦀",
    "\u{202e}evil",
    "\u{feff}",
    "\u{fffd}",
    "Ａ",
    "{{",
    "}}",
    "{{ trigger.payload }}",
    "{{ steps.a.output }}",
    "{{ steps.zzz.output.x }}",
    "{{ run.id }}{{ run.id }}",
    "{{ 1 + }}",
    "$ref",
    "#/definitions/x",
    "http://127.0.0.1:1/",
    "succeeded",
    "failed",
    "running",
    "agent_failed",
    "approval_required",
    "auto",
    "null",
    "true",
    "-1",
    "0",
    "1e999",
    "18446744073709551616",
    "r0-0",
    "r1-1.a.1",
];

fn hostile_string(rng: &mut Rng) -> String {
    match rng.below(10) {
        0..=5 => rng.pick(STRINGS).to_string(),
        6 => {
            // Random unicode scalar values, some of them rare.
            let n = rng.below(40);
            (0..n)
                .filter_map(|_| {
                    let c = match rng.below(4) {
                        0 => rng.below(0x80) as u32,
                        1 => rng.below(0x800) as u32,
                        2 => rng.below(0x11_0000) as u32,
                        _ => 0x1f600 + rng.below(80) as u32,
                    };
                    char::from_u32(c)
                })
                .collect()
        }
        7 => {
            let unit = rng.pick(STRINGS).to_string();
            let n = rng.pick(&[64usize, 256, 1000, 5000]);
            unit.repeat(*n).chars().take(*n).collect()
        }
        8 => format!("{}{}", rng.pick(STRINGS), rng.pick(STRINGS)),
        _ => format!("x{}", rng.next()),
    }
}

fn hostile_number(rng: &mut Rng) -> Value {
    match rng.below(12) {
        0 => json!(0),
        1 => json!(-1),
        2 => json!(1.5),
        3 => json!(i64::MIN),
        4 => json!(u64::MAX),
        5 => json!(u32::MAX),
        6 => json!(u64::from(u32::MAX) + 1),
        7 => json!(1e300),
        8 => json!(-0.0),
        9 => json!(f64::EPSILON),
        10 => json!(rng.below(10)),
        _ => json!(rng.next()),
    }
}

fn hostile_value(rng: &mut Rng, depth: usize) -> Value {
    let kinds = if depth > 3 { 4 } else { 7 };
    match rng.below(kinds) {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(50)),
        2 => hostile_number(rng),
        3 => Value::String(hostile_string(rng)),
        4 => Value::Array(
            (0..rng.below(4))
                .map(|_| hostile_value(rng, depth + 1))
                .collect(),
        ),
        5 => Value::Object(
            (0..rng.below(4))
                .map(|_| (hostile_string(rng), hostile_value(rng, depth + 1)))
                .collect(),
        ),
        _ => {
            // A valid-looking sub-document in the wrong place.
            rng.pick(&[
                agent_doc("a1"),
                workflow_doc("wf1", "a1"),
                result_doc("x", false),
            ])
            .clone()
        }
    }
}

/// Every JSON Pointer into `v` (its containers' members, recursively).
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        _ => {}
    }
}

/// A valid document with one or more fields broken: a wrong type, a hostile
/// value, removed, or an unknown field added.
fn mutate(rng: &mut Rng, mut doc: Value) -> Value {
    for _ in 0..=rng.below(3) {
        let mut ps = Vec::new();
        pointers(&doc, String::new(), &mut ps);
        if ps.is_empty() {
            return hostile_value(rng, 0);
        }
        let p = rng.pick(&ps).clone();
        match rng.below(6) {
            0 => {
                // Remove it.
                let (parent, key) = p.rsplit_once('/').unwrap();
                match doc.pointer_mut(parent) {
                    Some(Value::Object(m)) => {
                        m.remove(&key.replace("~1", "/").replace("~0", "~"));
                    }
                    Some(Value::Array(a)) => {
                        if let Ok(i) = key.parse::<usize>()
                            && i < a.len()
                        {
                            a.remove(i);
                        }
                    }
                    _ => {}
                }
            }
            1 => {
                // An unknown member next to it.
                let (parent, _) = p.rsplit_once('/').unwrap();
                if let Some(Value::Object(m)) = doc.pointer_mut(parent) {
                    m.insert(hostile_string(rng), hostile_value(rng, 1));
                }
            }
            _ => {
                if let Some(slot) = doc.pointer_mut(&p) {
                    *slot = hostile_value(rng, 1);
                }
            }
        }
    }
    doc
}

/// Deeply nested JSON, as text (a `Value` that deep would overflow the
/// serializer's stack before the server sees it).
fn deep_json(rng: &mut Rng, around: &Value) -> Vec<u8> {
    let depth = *rng.pick(&[64usize, 127, 128, 129, 200, 1000, 20_000]);
    let (open, close) = if rng.chance(50) {
        ("[", "]")
    } else {
        ("{\"a\":", "}")
    };
    let nested = format!("{}1{}", open.repeat(depth), close.repeat(depth));
    // Somewhere inside a real document, or the whole body.
    let mut ps = Vec::new();
    pointers(around, String::new(), &mut ps);
    if ps.is_empty() || rng.chance(30) {
        return nested.into_bytes();
    }
    let marker = "\"__DEEP__\"";
    let mut doc = around.clone();
    let p = rng.pick(&ps).clone();
    if let Some(slot) = doc.pointer_mut(&p) {
        *slot = Value::String("__DEEP__".into());
    }
    doc.to_string().replacen(marker, &nested, 1).into_bytes()
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A path segment: `existing` (a name the route knows, so requests get
/// past the lookup), another existing name, a hostile string
/// percent-encoded, or raw dots and escapes.
fn segment(rng: &mut Rng, app: &App, existing: &str) -> String {
    if rng.chance(35) {
        return existing.to_owned();
    }
    match rng.below(10) {
        0 => "a1".into(),
        1 => "wf1".into(),
        2 => app.run_id.clone(),
        3 => app.job_id.clone(),
        4 => rng
            .pick(&[
                "..",
                ".",
                "%2e%2e",
                "%2E",
                "%2F",
                "a%00b",
                "%ZZ",
                "%",
                "~",
                "%F0%9F%A6%80",
                "%C0%AE",
                "%FF",
                ";x=1",
                "a:b",
                "@",
                "!$&'()*+,;=",
            ])
            .to_string(),
        _ => percent_encode(&hostile_string(rng)),
    }
}

fn query(rng: &mut Rng, app: &App) -> String {
    let keys = [
        "workflow", "status", "since", "until", "limit", "cursor", "x", "", "limit%00",
    ];
    let n = rng.below(5);
    let pairs: Vec<String> = (0..n)
        .map(|_| {
            let k = rng.pick(&keys).to_string();
            let v = match rng.below(8) {
                0 => "wf1".into(),
                1 => rng
                    .pick(&["running", "succeeded", "queued", "RUNNING", "done"])
                    .to_string(),
                2 => rng.next().to_string(),
                3 => rng
                    .pick(&[
                        "-1",
                        "0",
                        "101",
                        "18446744073709551616",
                        "1e3",
                        "1.5",
                        "%205",
                        "5%00",
                    ])
                    .to_string(),
                4 => app.run_id.clone(),
                5 => percent_encode(&format!("{}:{}", app.run_id, rng.below(5))),
                _ => percent_encode(&hostile_string(rng)),
            };
            if rng.chance(10) {
                k
            } else {
                format!("{k}={v}")
            }
        })
        .collect();
    pairs.join(if rng.chance(90) { "&" } else { "&&" })
}

/// A path of one route family, possibly bent (extra segments, slashes, a
/// query), and the method the route takes.
fn target(rng: &mut Rng, app: &App) -> (String, &'static str) {
    let (mut path, method) = match rng.below(16) {
        0 => ("/api/agents".to_owned(), *rng.pick(&["GET", "POST"])),
        1 | 2 => (
            format!("/api/agents/{}", segment(rng, app, "a1")),
            *rng.pick(&["GET", "PUT", "DELETE"]),
        ),
        3 => ("/api/workflows".to_owned(), *rng.pick(&["GET", "POST"])),
        4 | 5 => (
            format!("/api/workflows/{}", segment(rng, app, "wf1")),
            *rng.pick(&["GET", "PUT", "DELETE"]),
        ),
        6 => (format!("/api/runs?{}", query(rng, app)), "GET"),
        7 => (
            format!("/api/runs/{}", segment(rng, app, &app.run_id)),
            "GET",
        ),
        8 => (
            format!("/api/runs/{}/cancel", segment(rng, app, &app.run_id)),
            "POST",
        ),
        9 | 10 => (format!("/trigger/{}", segment(rng, app, "wf1")), "POST"),
        11 => (
            {
                let job = live_job(rng, app);
                format!("/jobs/{}/result", segment(rng, app, &job))
            },
            "POST",
        ),
        12 => (
            {
                let job = live_job(rng, app);
                format!("/jobs/{}/heartbeat", segment(rng, app, &job))
            },
            "POST",
        ),
        13 => ("/internal/tick".to_owned(), "POST"),
        14 => (
            format!(
                "/health/{}",
                rng.pick(&["live", "ready", "ready/", "x", "", "live/.."])
            ),
            "GET",
        ),
        _ => (
            format!(
                "/{}/{}",
                rng.pick(&["webhooks", "approvals"]),
                segment(rng, app, "x")
            ),
            "POST",
        ),
    };
    match rng.below(12) {
        0 => path = path.replacen('/', "//", 1 + rng.below(2)),
        1 => path.push('/'),
        2 => path.push_str(&format!("/{}", segment(rng, app, "x"))),
        3 => path.push_str(&format!("/../{}", segment(rng, app, "x"))),
        4 if !path.contains('?') => path.push_str(&format!("?{}", query(rng, app))),
        5 => path = format!("http://127.0.0.1{path}"),
        _ => {}
    }
    (path, method)
}

fn live_job(rng: &mut Rng, app: &App) -> String {
    rng.pick(&app.live_jobs).clone()
}

/// The limit a route family reads bodies up to.
fn limit_of(path: &str) -> usize {
    if path.contains("/cancel") {
        4 << 10
    } else if path.contains("/jobs/") {
        // max_output_bytes (1 MiB) plus the result envelope (64 KiB).
        MAX_BODY + (64 << 10)
    } else {
        MAX_BODY
    }
}

/// The document a route expects, to break.
fn template_for(rng: &mut Rng, path: &str, app: &App) -> Value {
    if path.contains("/api/agents") {
        agent_doc("a1")
    } else if path.contains("/api/workflows") {
        workflow_doc("wf1", "a1")
    } else if path.contains("/cancel") {
        json!({"reason": "hostile"})
    } else if path.contains("/jobs/") {
        // The job the path names, so a signed body gets to the engine.
        let job = path
            .split('/')
            .skip_while(|s| *s != "jobs")
            .nth(1)
            .unwrap_or(&app.job_id);
        if path.contains("/heartbeat") {
            heartbeat_doc(job)
        } else {
            result_doc(job, rng.chance(30))
        }
    } else {
        json!({"x": 1, "diff": "+++ b/x\n", "nested": {"a": [1, 2, {"b": null}]}})
    }
}

fn chunks(rng: &mut Rng, body: Vec<u8>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = &body[..];
    while !rest.is_empty() {
        let n = (1 + rng.below(4096)).min(rest.len());
        out.push(rest[..n].to_vec());
        rest = &rest[n..];
    }
    out
}

/// One hostile request.
fn hostile(rng: &mut Rng, app: &App) -> Hostile {
    let (path, natural) = target(rng, app);
    let method = if rng.chance(75) {
        natural.to_owned()
    } else {
        rng.pick(&[
            "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "PURGE", "FOO-BAR", "get",
            "M-SEARCH",
        ])
        .to_string()
    };
    let path = if method == "DELETE" {
        // Deletes hit the decoys: the sweep keeps reaching `a1` and `wf1`.
        path.replace("/a1", "/a2").replace("/wf1", "/wf2")
    } else {
        path
    };
    let mut req = Hostile::new(&method, &path);
    let template = template_for(rng, &path, app);

    // The body, as bytes.
    let limit = limit_of(&path);
    let mut oversized = false;
    let body: Option<Vec<u8>> = match rng.below(20) {
        0 | 1 => None,
        2..=7 => Some(mutate(rng, template.clone()).to_string().into_bytes()),
        8 => Some(template.to_string().into_bytes()),
        9 => {
            let n = rng.below(3000);
            Some(rng.bytes(n))
        }
        10 | 11 => {
            let text = mutate(rng, template.clone()).to_string();
            let cut = rng.below(text.len().max(1));
            Some(text.as_bytes()[..cut].to_vec())
        }
        12 | 13 => Some(deep_json(rng, &template)),
        14 => {
            // A huge string inside the document, under or over the limit.
            let size = *rng.pick(&[limit / 2, limit - 200, limit + 1, limit * 2]);
            let huge = Value::String("é".repeat(size / 2));
            let mut doc = template.clone();
            let mut ps = Vec::new();
            pointers(&doc, String::new(), &mut ps);
            if ps.is_empty() {
                doc = huge;
            } else {
                let p = rng.pick(&ps).clone();
                if let Some(slot) = doc.pointer_mut(&p) {
                    *slot = huge;
                }
            }
            let text = doc.to_string().into_bytes();
            oversized = text.len() > limit;
            Some(text)
        }
        15 => {
            oversized = true;
            Some(vec![b'['; limit + 1 + rng.below(limit)])
        }
        16 => Some(
            rng.pick(&[
                &b"reason=x&y=z"[..],
                b"null",
                b"[1]",
                b"\"x\"",
                b"3",
                b"true",
                b"{}",
                b"[]",
                b"{\"reason\": null}",
                b"\xef\xbb\xbf{}",
                b"{} {}",
                b"{\"a\":1,\"a\":2}",
                b"{\"job_id\": \"\\ud800\"}",
                b"1e999999",
                b"-",
                b"\x00",
            ])
            .to_vec(),
        ),
        _ => {
            // A valid document with every string field made unicode-heavy.
            let mut doc = template.clone();
            let mut ps = Vec::new();
            pointers(&doc, String::new(), &mut ps);
            for p in ps {
                if let Some(slot @ Value::String(_)) = doc.pointer_mut(&p) {
                    *slot = Value::String(hostile_string(rng));
                }
            }
            Some(doc.to_string().into_bytes())
        }
    };

    // Framing: with a length, chunked, or (rarely) chunked and endless.
    if let Some(body) = body {
        req = req.body(match rng.below(10) {
            0..=5 => Body::Sized(body),
            6..=8 => Body::Chunked(chunks(rng, body)),
            _ if oversized => Body::Unfinished(limit + (64 << 10)),
            _ => Body::Chunked(vec![body]),
        });
    }

    // Content type.
    let ct: Option<&[u8]> = match rng.below(16) {
        0..=8 => Some(b"application/json"),
        9 => None,
        10 => Some(b"text/plain"),
        11 => Some(b"application/json; charset=utf-16"),
        12 => Some(b"APPLICATION/JSON"),
        13 => Some(*rng.pick(&[
            &b"application/jsonx"[..],
            b"application/problem+json",
            b"multipart/form-data; boundary=x",
            b";",
            b"application/x-www-form-urlencoded",
        ])),
        14 => Some(b"application/json\xe9\xff"),
        _ => Some(b""),
    };
    if let Some(ct) = ct {
        req = req.header("content-type", ct);
        if rng.chance(5) {
            req = req.header("content-type", "text/plain");
        }
    }

    // Credentials and other headers.
    if path.contains("/internal/tick") || rng.chance(5) {
        let auth = match rng.below(5) {
            0 => format!("Bearer {TEST_TICK_SECRET}"),
            1 => "Bearer ".to_owned(),
            2 => format!("bearer {TEST_TICK_SECRET}"),
            3 => format!("Bearer {}", "x".repeat(5000)),
            _ => format!("Basic {}", hostile_string(rng).escape_default()),
        };
        req = req.header("authorization", auth);
    }
    if path.contains("/jobs/") || rng.chance(5) {
        let signed_over = match &req.body {
            Body::Sized(b) => b.clone(),
            Body::Chunked(c) => c.concat(),
            _ => Vec::new(),
        };
        let job = path
            .split('/')
            .skip_while(|s| *s != "jobs")
            .nth(1)
            .unwrap_or("");
        let sig = match rng.below(5) {
            0 | 1 => sign::sign(&sign::job_token(TEST_CALLBACK_SECRET, job), &signed_over),
            2 => "sha256=".to_owned(),
            3 => format!("sha256={}", "zz".repeat(32)),
            _ => hostile_string(rng).escape_default().to_string(),
        };
        req = req.header(SIGNATURE_HEADER, sig);
    }
    if path.contains("/trigger/") && rng.chance(30) {
        let key: Vec<u8> = match rng.below(5) {
            0 => Vec::new(),
            1 => b"k".repeat(300),
            2 => b"caf\xe9".to_vec(),
            3 => b"   ".to_vec(),
            _ => format!("key-{}", rng.below(3)).into_bytes(),
        };
        req = req.header("idempotency-key", key);
    }
    if rng.chance(5) {
        req = req.header("expect", "100-continue");
    }
    if rng.chance(5) {
        req = req.header(
            "accept",
            "application/xml\u{0}".escape_default().to_string(),
        );
    }
    req
}

// ---------------------------------------------------------------------------
// Tests.

#[tokio::test(flavor = "multi_thread")]
async fn hostile_requests_never_crash_and_every_refusal_is_a_problem() {
    let seed = std::env::var("SPINDLE_HOSTILE_SEED")
        .ok()
        .and_then(|s| {
            s.strip_prefix("0x")
                .map(|h| u64::from_str_radix(h, 16).ok())
                .unwrap_or_else(|| s.parse().ok())
        })
        .unwrap_or(DEFAULT_SEED);
    let total: usize = std::env::var("SPINDLE_HOSTILE_REQUESTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_REQUESTS);
    // SPINDLE_HOSTILE_TRACE=1 prints every request and its answer.
    let trace = std::env::var_os("SPINDLE_HOSTILE_TRACE").is_some();
    let app = Arc::new(app_with(&[]).await);
    let next = Arc::new(AtomicUsize::new(0));
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let app = app.clone();
        let next = next.clone();
        tasks.spawn(async move {
            let mut failures = Vec::new();
            let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                // Each request has its own stream, so one is reproducible
                // from (seed, index) whatever the interleaving.
                let mut rng = Rng::new(seed ^ (i as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
                let req = hostile(&mut rng, &app);
                match send(&app.addr, &req, ANSWER_WITHIN).await {
                    Ok(answer) => {
                        *statuses.entry(answer.status).or_default() += 1;
                        if trace {
                            println!(
                                "#{i} {} -> {} {}",
                                req.describe(),
                                answer.status,
                                preview(&answer.body, 160)
                            );
                        }
                        if let Err(why) = judge(&req, &answer) {
                            failures.push(format!("#{i} {}\n    -> {why}", req.describe()));
                        }
                    }
                    Err(why) => failures.push(format!("#{i} {}\n    -> {why}", req.describe())),
                }
            }
            (failures, statuses)
        });
    }
    let mut failures = Vec::new();
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        let (f, s) = done.unwrap();
        failures.extend(f);
        for (k, v) in s {
            *statuses.entry(k).or_default() += v;
        }
    }
    println!(
        "hostile sweep: seed {seed:#x}, {total} requests in {:.1} s, statuses {statuses:?}",
        started.elapsed().as_secs_f64()
    );
    // The application still serves.
    let r = client()
        .get(app.host.url("/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the host no longer serves after the sweep");
    let crashes = crashes_in_logs(&app.host);
    failures.sort();
    assert!(
        failures.is_empty() && crashes.is_empty(),
        "hostile sweep with seed {seed:#x} (SPINDLE_HOSTILE_SEED={seed:#x} replays it): \
         {} of {total} answers wrong, {} crash lines in the logs\n{}\n--- logs ---\n{}",
        failures.len(),
        crashes.len(),
        failures
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        crashes
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
    );
}

/// A chunked body carries no length up front: the server must stop reading
/// at its limit and answer 413, not read (and hold in memory) all of it.
#[tokio::test(flavor = "multi_thread")]
async fn an_endless_chunked_body_is_refused_at_the_limit() {
    let app = app_with(&[]).await;
    let sig = |job: &str| sign::sign(&sign::job_token(TEST_CALLBACK_SECRET, job), b"");
    let cases = [
        ("/api/agents".to_owned(), MAX_BODY, None),
        ("/api/workflows".to_owned(), MAX_BODY, None),
        ("/api/agents/a1".to_owned(), MAX_BODY, None),
        ("/trigger/wf1".to_owned(), MAX_BODY, None),
        (format!("/api/runs/{}/cancel", app.run_id), 4 << 10, None),
        (
            format!("/jobs/{}/result", app.job_id),
            MAX_BODY + (64 << 10),
            Some(sig(&app.job_id)),
        ),
        (
            format!("/jobs/{}/heartbeat", app.job_id),
            MAX_BODY + (64 << 10),
            Some(sig(&app.job_id)),
        ),
    ];
    for (path, limit, signature) in cases {
        let method = if path == "/api/agents/a1" {
            "PUT"
        } else {
            "POST"
        };
        let mut req = Hostile::new(method, &path)
            .header("content-type", "application/json")
            // Four times the limit, then the body never ends.
            .body(Body::Unfinished(4 * limit));
        if let Some(s) = signature {
            req = req.header(SIGNATURE_HEADER, s);
        }
        let answer = send(&app.addr, &req, Duration::from_secs(15))
            .await
            .unwrap_or_else(|e| panic!("{method} {path} with an endless chunked body: {e}"));
        assert_eq!(answer.status, 413, "{method} {path}: {answer:?}");
        judge(&req, &answer).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert!(
            answer.json()["detail"]
                .as_str()
                .is_some_and(|d| d.contains(&limit.to_string())),
            "{method} {path}: {}",
            answer.json()
        );
    }
    // A chunked body under the limit is read whole.
    let doc = agent_doc("chunky").to_string().into_bytes();
    let req = Hostile::new("POST", "/api/agents")
        .header("content-type", "application/json")
        .body(Body::Chunked(doc.chunks(7).map(<[u8]>::to_vec).collect()));
    let answer = send(&app.addr, &req, Duration::from_secs(15))
        .await
        .unwrap();
    assert_eq!(answer.status, 201, "{}", preview(&answer.body, 500));
    // Exactly the limit is accepted; one byte more is not.
    for (extra, want) in [(0usize, 400u16), (1, 413)] {
        let mut body = b"\"".to_vec();
        body.resize(MAX_BODY + extra - 1, b'x');
        body.push(b'"');
        let req = Hostile::new("POST", "/api/agents")
            .header("content-type", "application/json")
            .body(Body::Chunked(chunks(&mut Rng::new(7), body)));
        let answer = send(&app.addr, &req, Duration::from_secs(15))
            .await
            .unwrap();
        assert_eq!(
            answer.status,
            want,
            "limit + {extra}: {}",
            preview(&answer.body, 300)
        );
    }
    assert_eq!(crashes_in_logs(&app.host), Vec::<String>::new());
}

/// A cancel body, when there is one, is a JSON object.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_body_that_is_not_an_object_is_refused() {
    let app = app_with(&[]).await;
    let path = format!("/api/runs/{}/cancel", app.run_id);
    for body in ["[1]", "\"x\"", "3", "null", "true", "[]"] {
        let req = Hostile::new("POST", &path)
            .header("content-type", "application/json")
            .body(Body::Sized(body.as_bytes().to_vec()));
        let answer = send(&app.addr, &req, ANSWER_WITHIN).await.unwrap();
        assert_eq!(
            answer.status,
            400,
            "cancel with {body}: {}",
            preview(&answer.body, 300)
        );
        judge(&req, &answer).unwrap();
        let doc = answer.json();
        assert_eq!(doc["errors"][0]["pointer"], "", "cancel with {body}: {doc}");
    }
    // The run was not cancelled by any of them.
    let run: Value = client()
        .get(app.host.url(&format!("/api/runs/{}", app.run_id)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(run["status"], "cancelled", "{run}");
    // An object is still taken, with or without a reason.
    let req = Hostile::new("POST", &path)
        .header("content-type", "application/json")
        .body(Body::Sized(b"{\"reason\": \"enough\"}".to_vec()));
    let answer = send(&app.addr, &req, ANSWER_WITHIN).await.unwrap();
    assert_eq!(answer.status, 200, "{}", preview(&answer.body, 300));
    assert_eq!(answer.json()["status"], "cancelled");
}

/// A trigger with a body must say it is JSON: a body without a content type
/// (chunked or with a length) is refused with 415, never silently dropped.
#[tokio::test(flavor = "multi_thread")]
async fn a_trigger_body_must_be_declared_json() {
    let app = app_with(&[]).await;
    let undeclared = [
        Body::Chunked(vec![b"{\"x\":".to_vec(), b" 5}".to_vec()]),
        Body::Chunked(vec![b"not json".to_vec()]),
        Body::Sized(b"{\"x\": 5}".to_vec()),
    ];
    for body in undeclared {
        let req = Hostile::new("POST", "/trigger/wf1").body(body);
        let answer = send(&app.addr, &req, ANSWER_WITHIN).await.unwrap();
        assert_eq!(
            answer.status,
            415,
            "{}: {}",
            req.describe(),
            preview(&answer.body, 300)
        );
        judge(&req, &answer).unwrap();
    }
    // A declared JSON body, chunked, is the payload.
    let req = Hostile::new("POST", "/trigger/wf1")
        .header("content-type", "application/json")
        .body(Body::Chunked(vec![b"{\"x\":".to_vec(), b" 5}".to_vec()]));
    let answer = send(&app.addr, &req, ANSWER_WITHIN).await.unwrap();
    assert_eq!(answer.status, 202, "{}", preview(&answer.body, 300));
    let url = answer.json()["url"].as_str().unwrap().to_owned();
    let run: Value = client()
        .get(app.host.url(&url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(run["trigger"]["payload"], json!({"x": 5}), "{run}");
    // No body at all (with or without a length of zero) is an empty payload.
    for req in [
        Hostile::new("POST", "/trigger/wf1"),
        Hostile::new("POST", "/trigger/wf1").body(Body::Sized(Vec::new())),
        Hostile::new("POST", "/trigger/wf1").body(Body::Chunked(Vec::new())),
        Hostile::new("POST", "/trigger/wf1")
            .header("content-type", "application/json")
            .body(Body::Sized(Vec::new())),
    ] {
        let answer = send(&app.addr, &req, ANSWER_WITHIN).await.unwrap();
        assert_eq!(
            answer.status,
            202,
            "{}: {}",
            req.describe(),
            preview(&answer.body, 300)
        );
    }
    // A declared non-JSON type is refused as before.
    let req = Hostile::new("POST", "/trigger/wf1")
        .header("content-type", "text/plain")
        .body(Body::Sized(b"hi".to_vec()));
    assert_eq!(
        send(&app.addr, &req, ANSWER_WITHIN).await.unwrap().status,
        415
    );
}

/// The largest output cap a 32-bit component can hold: the room added for
/// the result envelope must not wrap around to a tiny limit.
#[tokio::test(flavor = "multi_thread")]
async fn a_huge_output_cap_does_not_wrap_the_callback_body_limit() {
    let app = app_with(&[("SPIN_VARIABLE_MAX_OUTPUT_BYTES", &u32::MAX.to_string())]).await;
    let body = serde_json::to_vec(&json!({
        "job_id": app.job_id, "worker": "w", "pad": "x".repeat(200 << 10)
    }))
    .unwrap();
    for action in ["heartbeat", "result"] {
        let req = Hostile::new("POST", &format!("/jobs/{}/{action}", app.job_id))
            .header("content-type", "application/json")
            .header(SIGNATURE_HEADER, "sha256=00")
            .body(Body::Sized(body.clone()));
        let answer = send(&app.addr, &req, ANSWER_WITHIN).await.unwrap();
        // Read whole and refused for its signature, not for its size.
        assert_eq!(
            answer.status,
            401,
            "{action}: {}",
            preview(&answer.body, 300)
        );
        judge(&req, &answer).unwrap();
    }
}

/// Time arithmetic in the run state machine saturates: a huge configured
/// lease (or a clock near the end of time) never overflows.
#[test]
fn a_huge_lease_saturates_instead_of_overflowing() {
    use spindle_core::agent::AgentSpec;
    use spindle_core::approval::GateRequest;
    use spindle_core::job::{ErrorKind, JobError};
    use spindle_core::risk::{ApprovalPolicy, Level};
    use spindle_core::run::{
        Effect, Event, Run, RunSettings, StepStatus, TimerKind, Trigger, TriggerKind,
    };
    use spindle_core::workflow::WorkflowSpec;

    let agent = serde_json::from_value::<AgentSpec>(json!({
        "name": "a", "command": ["a"], "timeout_secs": 86_400,
        "retry": {"max_attempts": 3, "initial_backoff_ms": 1000, "max_backoff_ms": 60_000}
    }))
    .unwrap()
    .into_agent(0)
    .unwrap();
    let spec: WorkflowSpec = serde_json::from_value(json!({
        "name": "w", "deadline_secs": 7 * 86_400,
        "steps": [{"id": "s", "agent": "a"}]
    }))
    .unwrap();
    spec.validate(|_| true).unwrap();
    let workflow = spec.into_workflow(0);
    let agents = BTreeMap::from([("a".to_owned(), agent)]);
    let trigger = Trigger {
        kind: TriggerKind::Manual,
        payload: json!({}),
        actor: None,
    };
    for (lease_ms, now) in [
        (u64::MAX, 1_795_305_600_000u64),
        (u64::MAX / 2 + 1, 1_795_305_600_000),
        (30_000, u64::MAX - 10),
    ] {
        let settings = RunSettings {
            lease_ms,
            max_output_bytes: usize::MAX,
        };
        let what = format!("lease {lease_ms} at {now}");
        let t = Run::create(
            "r-1".into(),
            &workflow,
            &agents,
            trigger.clone(),
            settings,
            now,
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        // Assessed low risk: dispatched at once.
        let gated = t
            .run
            .unwrap()
            .apply(
                &Event::Gated {
                    step: "s".into(),
                    gate: GateRequest {
                        level: Level::Low,
                        score: 0,
                        matched: vec![],
                        rules_checked: 1,
                        input_sha256: "0".repeat(64),
                        approval: None,
                        policy: *ApprovalPolicy::default().levels.of(Level::Low),
                        allow_self_approval: false,
                    },
                    fallback: 0,
                },
                now,
            )
            .unwrap_or_else(|e| panic!("{what}: gate: {e}"));
        let run = gated.run.unwrap();
        let effects: Vec<Effect> = t.effects.into_iter().chain(gated.effects).collect();
        assert!(
            run.deadline_at_ms.unwrap() >= now,
            "{what}: deadline wrapped"
        );
        let s = run.step("s").unwrap();
        assert!(
            s.lease_expires_at_ms.unwrap() > now || now == u64::MAX,
            "{what}: lease wrapped"
        );
        assert!(
            s.attempt_deadline_ms.unwrap() >= s.lease_expires_at_ms.unwrap(),
            "{what}"
        );
        for fx in &effects {
            if let Effect::Schedule(timer) = fx {
                assert!(timer.at_ms >= now, "{what}: {timer:?} is in the past");
            }
        }
        let job = "r-1.s.1".to_owned();
        // A heartbeat renews the lease, capped at the attempt's end.
        let hb = run
            .apply(
                &Event::Heartbeat {
                    job_id: job.clone(),
                    worker: "w".into(),
                },
                now + 1,
            )
            .unwrap_or_else(|e| panic!("{what}: heartbeat: {e}"));
        let run = hb.run.unwrap();
        let s = run.step("s").unwrap();
        assert_eq!(s.status, StepStatus::Running, "{what}");
        assert!(
            s.lease_expires_at_ms.unwrap() > now,
            "{what}: renewed lease wrapped"
        );
        // A retryable failure waits for its backoff, after now.
        let failed = run
            .apply(
                &Event::Failed {
                    job_id: job.clone(),
                    worker: "w".into(),
                    error: JobError {
                        kind: ErrorKind::AgentFailed,
                        message: "boom".into(),
                    },
                    exit_code: Some(1),
                    logs_tail: String::new(),
                    started_at_ms: now,
                },
                now + 2,
            )
            .unwrap_or_else(|e| panic!("{what}: failure: {e}"));
        let retry = failed
            .effects
            .iter()
            .find_map(|fx| match fx {
                Effect::Schedule(t) if t.kind == TimerKind::Retry => Some(t.at_ms),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{what}: no retry timer in {:?}", failed.effects));
        assert!(retry >= now + 2, "{what}: retry at {retry} is in the past");
    }
}

/// `depth` levels of arrays around `leaf`, as JSON text.
fn nested(depth: usize, leaf: &str) -> String {
    format!("{}{leaf}{}", "[".repeat(depth), "]".repeat(depth))
}

/// A document is stored inside others (a trigger payload inside its run, an
/// output inside the next step's input): nesting a request body may have
/// must leave room for that, or the stored document can no longer be read
/// (serde_json stops at 128 levels) and every listing that meets it fails.
#[tokio::test(flavor = "multi_thread")]
async fn documents_too_deep_to_store_are_refused_up_front() {
    let app = app_with(&[]).await;
    let get = |path: String| {
        let url = app.host.url(&path);
        async move {
            let r = client().get(url).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
    };
    for depth in [32usize, 63, 64, 100, 126] {
        // The payload nests one level more than `deep`.
        let body = format!("{{\"x\": 1, \"deep\": {}}}", nested(depth, "1"));
        let req = Hostile::new("POST", "/trigger/wf1")
            .header("content-type", "application/json")
            .body(Body::Sized(body.into_bytes()));
        let answer = send(&app.addr, &req, ANSWER_WITHIN).await.unwrap();
        judge(&req, &answer).unwrap_or_else(|e| panic!("payload depth {depth}: {e}"));
        if depth < 64 {
            assert_eq!(answer.status, 202, "payload depth {depth}");
            let url = answer.json()["url"].as_str().unwrap().to_owned();
            let (st, text) = get(url).await;
            assert_eq!(st, 200, "payload depth {depth}: the run reads back: {text}");
        } else {
            assert_eq!(answer.status, 400, "payload depth {depth}");
            let pointer = answer.json()["errors"][0]["pointer"].clone();
            assert!(
                pointer.as_str().is_some_and(|p| p.starts_with("/deep/0/0")),
                "payload depth {depth}: {pointer}"
            );
        }
        let (st, text) = get("/api/runs".into()).await;
        assert_eq!(st, 200, "payload depth {depth}: the runs list: {text}");
    }
    // A deep output of a live job.
    for (i, depth) in [64usize, 120, 125, 126].into_iter().enumerate() {
        let job = &app.live_jobs[i];
        let body = format!(
            "{{\"job_id\": \"{job}\", \"worker\": \"w\", \"status\": \"succeeded\", \
             \"output\": {{\"y\": {}}}, \"exit_code\": 0, \"logs_tail\": \"\", \
             \"started_at_ms\": 1, \"finished_at_ms\": 2}}",
            nested(depth, "1")
        );
        let signature = sign::sign(&sign::job_token(TEST_CALLBACK_SECRET, job), body.as_bytes());
        let req = Hostile::new("POST", &format!("/jobs/{job}/result"))
            .header("content-type", "application/json")
            .header(SIGNATURE_HEADER, signature)
            .body(Body::Sized(body.into_bytes()));
        let answer = send(&app.addr, &req, ANSWER_WITHIN).await.unwrap();
        judge(&req, &answer).unwrap_or_else(|e| panic!("output depth {depth}: {e}"));
        println!(
            "output depth {depth}: {} {}",
            answer.status,
            preview(&answer.body, 300)
        );
        let run = job.trim_end_matches(".a.1");
        let (st, text) = get(format!("/api/runs/{run}")).await;
        assert_eq!(st, 200, "output depth {depth}: the run reads back: {text}");
    }
    let (st, text) = get("/api/runs".into()).await;
    assert_eq!(st, 200, "the runs list: {text}");
    assert_eq!(crashes_in_logs(&app.host), Vec::<String>::new());
}
