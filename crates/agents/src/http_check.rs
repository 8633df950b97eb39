//! `http-check`: checks that a URL answers as expected, for the diagnose and
//! verify steps of a self-healing workflow.
//!
//! Input: `{"url": "http://host:port/path", "method": "GET" | "HEAD",
//! "expect_status": 200 | [200, 204], "max_latency_ms": 500,
//! "body_contains": "ok", "timeout_ms": 5000, "report_only": false}`, only
//! `url` required. Output: `{"ok": bool, "url", "status": 200 | null,
//! "latency_ms", "checks": [{"check", "ok", "detail"}], "error"}`, `error`
//! only when no complete answer came back.
//!
//! A failed check, or a URL that does not answer, exits 1 (transient): the
//! step's retry policy then decides how long a restarting service gets. The
//! report goes to stderr instead of stdout, as its last line, so it is in the
//! job's log tail. With `report_only` it is the output and the exit is 0,
//! for a diagnose step that must go on to decide what to do. Input that can
//! never work exits 65. `https://` goes through `curl` when there is one.

use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::http::{self, Answer, Request, Scheme, Target};
use crate::{Failure, field};

const DEFAULT_TIMEOUT_MS: u64 = 5_000;
const MAX_TIMEOUT_MS: u64 = 60_000;
const USER_AGENT: &str = "spindle-http-check";
/// Every input field: a misspelt check would otherwise pass unchecked.
const FIELDS: &[&str] = &[
    "url",
    "method",
    "expect_status",
    "max_latency_ms",
    "body_contains",
    "timeout_ms",
    "report_only",
];
/// Longest `body_contains` taken.
const MAX_NEEDLE_BYTES: usize = 1024;
/// Longest quotation of `body_contains` in a detail.
const MAX_QUOTED: usize = 80;

struct Check {
    url: String,
    target: Target,
    method: &'static str,
    accept: Vec<u16>,
    max_latency_ms: Option<u64>,
    body_contains: Option<String>,
    timeout: Duration,
    report_only: bool,
}

fn bad(why: impl Into<String>) -> Failure {
    Failure::Permanent(why.into())
}

fn parse(input: &Value) -> Result<Check, Failure> {
    let obj = input
        .as_object()
        .ok_or_else(|| bad("the input must be a JSON object"))?;
    if let Some(k) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(bad(format!(
            "unknown input field {k:?} (known: {})",
            FIELDS.join(", ")
        )));
    }
    let url = field(input, "url")?;
    let target = Target::parse(url).map_err(bad)?;
    let method = match obj.get("method") {
        None => "GET",
        Some(v) if v == "GET" => "GET",
        Some(v) if v == "HEAD" => "HEAD",
        Some(v) => return Err(bad(format!("method must be \"GET\" or \"HEAD\", not {v}"))),
    };
    let status = |v: &Value| {
        v.as_u64()
            .filter(|s| (100..=599).contains(s))
            .and_then(|s| u16::try_from(s).ok())
    };
    let accept = match obj.get("expect_status") {
        None => Some(vec![200]),
        Some(Value::Array(list)) if !list.is_empty() => list.iter().map(status).collect(),
        Some(v) => status(v).map(|s| vec![s]),
    }
    .ok_or_else(|| {
        bad("expect_status must be an HTTP status (100 to 599) or a non-empty list of them")
    })?;
    let max_latency_ms = obj
        .get("max_latency_ms")
        .map(|v| {
            v.as_u64()
                .ok_or_else(|| bad(format!("max_latency_ms must be a whole number, not {v}")))
        })
        .transpose()?;
    let body_contains = obj
        .get("body_contains")
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| bad(format!("body_contains must be a string, not {v}")))
        })
        .transpose()?;
    // The search is a plain scan of the body: a needle is a phrase, not a
    // document.
    if body_contains
        .as_ref()
        .is_some_and(|n| n.len() > MAX_NEEDLE_BYTES)
    {
        return Err(bad(format!(
            "body_contains must be at most {MAX_NEEDLE_BYTES} bytes"
        )));
    }
    if body_contains.is_some() && method == "HEAD" {
        return Err(bad("body_contains needs method GET: HEAD has no body"));
    }
    let timeout_ms = match obj.get("timeout_ms") {
        None => DEFAULT_TIMEOUT_MS,
        Some(v) => v
            .as_u64()
            .filter(|ms| (1..=MAX_TIMEOUT_MS).contains(ms))
            .ok_or_else(|| {
                bad(format!(
                    "timeout_ms must be a whole number from 1 to {MAX_TIMEOUT_MS}, not {v}"
                ))
            })?,
    };
    let report_only = match obj.get("report_only") {
        None => false,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| bad(format!("report_only must be true or false, not {v}")))?,
    };
    Ok(Check {
        url: url.to_owned(),
        target,
        method,
        accept,
        max_latency_ms,
        body_contains,
        timeout: Duration::from_millis(timeout_ms),
        report_only,
    })
}

pub fn run(input: Value) -> Result<Value, Failure> {
    check(input, "curl")
}

/// [`run`] with the program that speaks https named, so a test can name
/// one that is not there.
fn check(input: Value, curl: &str) -> Result<Value, Failure> {
    let c = parse(&input)?;
    let started = Instant::now();
    let answer = match c.target.scheme {
        Scheme::Http => http::exchange(
            &c.target,
            &Request {
                method: c.method,
                user_agent: USER_AGENT,
                headers: &[],
                body: &[],
            },
            c.timeout,
        ),
        Scheme::Https => {
            http::curl(curl, &c.url, c.method, USER_AGENT, c.timeout).map_err(|e| {
                match e.kind() {
                    std::io::ErrorKind::NotFound => bad(format!(
                        "{} is https, which needs curl on the PATH, and there is none",
                        c.url
                    )),
                    std::io::ErrorKind::InvalidInput => bad(format!("curl refuses {}: {e}", c.url)),
                    _ => Failure::Transient(format!("cannot run curl: {e}")),
                }
            })?
        }
    };
    let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let (ok, report, summary) = report(&c, &answer, latency_ms);
    if ok || c.report_only {
        Ok(report)
    } else {
        // main prints this after the agent's name: the summary reads as the
        // reason, and the report is the last line of the log.
        Err(Failure::Transient(format!("{summary}\n{report}")))
    }
}

/// Whether every check passed, the report, and a one-line summary of what
/// failed.
fn report(c: &Check, a: &Answer, latency_ms: u64) -> (bool, Value, String) {
    let mut checks = Vec::new();
    checks.push(match a.status {
        Some(s) if c.accept.contains(&s) => ("status", true, format!("{s} in {:?}", c.accept)),
        Some(s) => ("status", false, format!("{s} not in {:?}", c.accept)),
        None => (
            "status",
            false,
            format!("no answer, expected {:?}", c.accept),
        ),
    });
    if let Some(max) = c.max_latency_ms {
        checks.push(match a.error {
            Some(_) => ("latency", false, "no complete answer".to_owned()),
            None if latency_ms <= max => ("latency", true, format!("{latency_ms} ms <= {max} ms")),
            None => ("latency", false, format!("{latency_ms} ms > {max} ms")),
        });
    }
    if let Some(needle) = &c.body_contains {
        let quoted: String = needle.chars().take(MAX_QUOTED).collect();
        let found =
            needle.is_empty() || a.body.windows(needle.len()).any(|w| w == needle.as_bytes());
        let read = if a.truncated {
            format!("the first {} bytes", a.body.len())
        } else {
            format!("the body ({} bytes)", a.body.len())
        };
        checks.push(match a.error {
            Some(_) => ("body", false, "the body was not read".to_owned()),
            None if found => ("body", true, format!("{quoted:?} found")),
            None => ("body", false, format!("{quoted:?} not in {read}")),
        });
    }
    let ok = a.error.is_none() && checks.iter().all(|(_, ok, _)| *ok);
    let mut failures: Vec<String> = a.error.iter().cloned().collect();
    failures.extend(
        checks
            .iter()
            .filter(|(_, ok, _)| !ok)
            .map(|(name, _, detail)| format!("{name}: {detail}")),
    );
    let summary = format!("{} {} failed: {}", c.method, c.url, failures.join("; "));
    let mut out = Map::new();
    out.insert("ok".into(), ok.into());
    out.insert("url".into(), c.url.clone().into());
    out.insert("status".into(), a.status.into());
    out.insert("latency_ms".into(), latency_ms.into());
    out.insert(
        "checks".into(),
        checks
            .into_iter()
            .map(|(check, ok, detail)| json!({"check": check, "ok": ok, "detail": detail}))
            .collect(),
    );
    if let Some(e) = &a.error {
        out.insert("error".into(), e.clone().into());
    }
    (ok, Value::Object(out), summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::thread::{self, JoinHandle};

    /// A server for one request: it reads the request's head, waits
    /// `delay`, writes `reply` and closes. Gives the base URL, and the
    /// request as read when joined.
    fn serve(reply: Vec<u8>, delay: Duration) -> (String, JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            thread::sleep(delay);
            // The client may have given up and gone; that is its business.
            let _ = s.write_all(&reply);
            String::from_utf8_lossy(&req).into_owned()
        });
        (base, server)
    }

    fn answer(status_line: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status_line}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// The summary line and the report of a failed check.
    fn failed(result: Result<Value, Failure>) -> (String, Value) {
        match result {
            Err(Failure::Transient(m)) => {
                let (summary, last) = m.rsplit_once('\n').unwrap();
                (summary.to_owned(), serde_json::from_str(last).unwrap())
            }
            other => panic!("expected a transient failure, got {other:?}"),
        }
    }

    fn closed_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn a_matching_status_passes_and_the_request_is_plain_http() {
        let (base, server) = serve(answer("200 OK", "ok"), Duration::ZERO);
        let url = format!("{base}/health?deep=1");
        let out = run(json!({"url": url, "max_latency_ms": 5000})).unwrap();
        assert_eq!(out["ok"], true, "{out:#}");
        assert_eq!(out["url"], url);
        assert_eq!(out["status"], 200);
        assert!(out["latency_ms"].as_u64().unwrap() < 5000);
        assert_eq!(
            out["checks"][0],
            json!({"check": "status", "ok": true, "detail": "200 in [200]"})
        );
        assert_eq!(out["checks"][1]["check"], "latency");
        assert_eq!(out["checks"][1]["ok"], true);
        assert!(out.get("error").is_none());
        let req = server.join().unwrap();
        let host = base.strip_prefix("http://").unwrap();
        assert!(req.starts_with("GET /health?deep=1 HTTP/1.1\r\n"), "{req}");
        assert!(req.contains(&format!("\r\nHost: {host}\r\n")), "{req}");
        assert!(req.contains("\r\nUser-Agent: spindle-http-check\r\n"));
        assert!(req.contains("\r\nConnection: close\r\n"));
    }

    #[test]
    fn a_status_mismatch_is_transient_with_the_report_last_on_stderr() {
        let (base, _) = serve(answer("503 Service Unavailable", "down"), Duration::ZERO);
        let (summary, report) = failed(run(json!({"url": base})));
        assert!(summary.contains("503 not in [200]"), "{summary}");
        assert!(!summary.contains('\n'));
        assert_eq!(report["ok"], false);
        assert_eq!(report["status"], 503);
        assert_eq!(report["checks"][0]["ok"], false);
    }

    #[test]
    fn report_only_outputs_a_failed_check_and_succeeds() {
        let (base, _) = serve(answer("503 Service Unavailable", ""), Duration::ZERO);
        let out = run(json!({"url": base, "report_only": true})).unwrap();
        assert_eq!(out["ok"], false);
        assert_eq!(out["status"], 503);
        assert_eq!(out["checks"][0]["detail"], "503 not in [200]");
    }

    #[test]
    fn any_status_of_a_list_passes() {
        let (base, _) = serve(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(), Duration::ZERO);
        let out = run(json!({"url": base, "expect_status": [200, 204]})).unwrap();
        assert_eq!(out["checks"][0]["detail"], "204 in [200, 204]");
        let (base, _) = serve(answer("404 Not Found", ""), Duration::ZERO);
        let (_, report) = failed(run(json!({"url": base, "expect_status": [200, 204]})));
        assert_eq!(report["checks"][0]["detail"], "404 not in [200, 204]");
    }

    #[test]
    fn a_slow_answer_fails_the_latency_check() {
        let (base, _) = serve(answer("200 OK", "ok"), Duration::from_millis(300));
        let (summary, report) = failed(run(json!({"url": base, "max_latency_ms": 100})));
        assert!(summary.contains("latency: "), "{summary}");
        assert_eq!(report["status"], 200);
        assert!(report["latency_ms"].as_u64().unwrap() >= 300);
        assert_eq!(report["checks"][0]["ok"], true);
        assert_eq!(report["checks"][1]["check"], "latency");
        assert_eq!(report["checks"][1]["ok"], false);
        assert!(
            report["checks"][1]["detail"]
                .as_str()
                .unwrap()
                .ends_with("> 100 ms")
        );
    }

    #[test]
    fn body_contains_finds_text_or_reports_its_absence() {
        let (base, _) = serve(answer("200 OK", "{\"db\":\"up\"}"), Duration::ZERO);
        let out = run(json!({"url": base, "body_contains": "\"db\":\"up\""})).unwrap();
        assert_eq!(out["checks"][1]["check"], "body");
        assert_eq!(out["checks"][1]["ok"], true);
        let (base, _) = serve(answer("200 OK", "{\"db\":\"down\"}"), Duration::ZERO);
        let (_, report) = failed(run(json!({"url": base, "body_contains": "\"db\":\"up\""})));
        assert_eq!(report["status"], 200);
        assert_eq!(
            report["checks"][1]["detail"],
            "\"\\\"db\\\":\\\"up\\\"\" not in the body (13 bytes)"
        );
    }

    #[test]
    fn chunked_and_unsized_bodies_are_read_whole() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: t\r\n\r\n";
        let (base, _) = serve(chunked.to_vec(), Duration::ZERO);
        let out = run(json!({"url": base, "body_contains": "Wikipedia"})).unwrap();
        assert_eq!(out["ok"], true, "{out:#}");
        // No length, no chunks: the body ends where the connection does.
        let (base, _) = serve(b"HTTP/1.0 200 OK\r\n\r\nall of it".to_vec(), Duration::ZERO);
        let out = run(json!({"url": base, "body_contains": "of it"})).unwrap();
        assert_eq!(out["ok"], true, "{out:#}");
    }

    #[test]
    fn a_body_is_read_up_to_one_mebibyte() {
        let mut reply = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        reply.extend(std::iter::repeat_n(b'a', http::MAX_BODY));
        reply.extend_from_slice(b"needle");
        let (base, _) = serve(reply, Duration::ZERO);
        let out =
            run(json!({"url": base, "body_contains": "needle", "report_only": true})).unwrap();
        assert_eq!(out["ok"], false);
        assert_eq!(
            out["checks"][1]["detail"],
            format!("\"needle\" not in the first {} bytes", http::MAX_BODY)
        );
    }

    #[test]
    fn head_reads_no_body_whatever_the_length_says() {
        let (base, server) = serve(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec(),
            Duration::ZERO,
        );
        let out = run(json!({"url": base, "method": "HEAD", "timeout_ms": 2000})).unwrap();
        assert_eq!(out["ok"], true, "{out:#}");
        assert!(server.join().unwrap().starts_with("HEAD / HTTP/1.1\r\n"));
    }

    #[test]
    fn an_unreachable_url_has_no_status_and_says_why() {
        let url = format!("http://127.0.0.1:{}/", closed_port());
        let out = run(
            json!({"url": url, "report_only": true, "max_latency_ms": 1000, "body_contains": "x"}),
        )
        .unwrap();
        assert_eq!(out["ok"], false);
        assert_eq!(out["status"], Value::Null);
        let error = out["error"].as_str().unwrap();
        assert!(error.contains("refused"), "{error}");
        assert_eq!(
            out["checks"],
            json!([
                {"check": "status", "ok": false, "detail": "no answer, expected [200]"},
                {"check": "latency", "ok": false, "detail": "no complete answer"},
                {"check": "body", "ok": false, "detail": "the body was not read"},
            ])
        );
        let (summary, report) = failed(run(json!({"url": url})));
        assert!(summary.contains("refused"), "{summary}");
        assert_eq!(report["status"], Value::Null);
    }

    #[test]
    fn a_silent_server_times_out() {
        let (base, _) = serve(answer("200 OK", ""), Duration::from_secs(3));
        let started = Instant::now();
        let out = run(json!({"url": base, "timeout_ms": 200, "report_only": true})).unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(out["ok"], false);
        assert_eq!(out["status"], Value::Null);
        let error = out["error"].as_str().unwrap();
        assert!(error.contains("timed out after 200 ms"), "{error}");
    }

    #[test]
    fn a_broken_answer_is_a_failed_check() {
        let (base, _) = serve(b"SSH-2.0-OpenSSH\r\n\r\n".to_vec(), Duration::ZERO);
        let out = run(json!({"url": base, "report_only": true})).unwrap();
        assert_eq!(out["status"], Value::Null);
        assert!(
            out["error"]
                .as_str()
                .unwrap()
                .contains("not an HTTP answer")
        );
        // The status came, the promised body did not.
        let (base, _) = serve(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort".to_vec(),
            Duration::ZERO,
        );
        let out = run(json!({"url": base, "report_only": true})).unwrap();
        assert_eq!(
            (out["ok"].clone(), out["status"].clone()),
            (json!(false), json!(200))
        );
        assert!(out["error"].as_str().unwrap().contains("5 of 10 bytes"));
    }

    #[test]
    fn https_needs_curl() {
        let err = check(
            json!({"url": "https://127.0.0.1:1/"}),
            "spindle-no-such-curl",
        );
        assert!(matches!(err, Err(Failure::Permanent(m)) if m.contains("needs curl")));
        if std::process::Command::new("curl")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("curl not installed; skipping the rest");
            return;
        }
        let url = format!("https://127.0.0.1:{}/", closed_port());
        let out = run(json!({"url": url, "report_only": true, "timeout_ms": 2000})).unwrap();
        assert_eq!(out["ok"], false);
        assert_eq!(out["status"], Value::Null);
        assert!(out["error"].as_str().unwrap().contains("curl"), "{out:#}");
    }

    #[test]
    fn bad_input_is_permanent() {
        for input in [
            json!({}),
            json!("http://x/"),
            json!({"url": 7}),
            json!({"url": "ftp://x/"}),
            json!({"url": "http://"}),
            json!({"url": "http://x:99999/"}),
            json!({"url": "http://x/a b"}),
            json!({"url": "http://x/", "method": "POST"}),
            json!({"url": "http://x/", "method": "get"}),
            json!({"url": "http://x/", "expect_status": 42}),
            json!({"url": "http://x/", "expect_status": "200"}),
            json!({"url": "http://x/", "expect_status": []}),
            json!({"url": "http://x/", "expect_status": [200, 600]}),
            json!({"url": "http://x/", "max_latency_ms": -1}),
            json!({"url": "http://x/", "max_latency_ms": 1.5}),
            json!({"url": "http://x/", "body_contains": 3}),
            json!({"url": "http://x/", "method": "HEAD", "body_contains": "ok"}),
            json!({"url": "http://x/", "timeout_ms": 0}),
            json!({"url": "http://x/", "timeout_ms": 60_001}),
            json!({"url": "http://x/", "report_only": "yes"}),
            json!({"url": "http://x/", "expect_statuses": [200]}),
        ] {
            assert!(
                matches!(run(input.clone()), Err(Failure::Permanent(_))),
                "{input} was accepted"
            );
        }
    }
}
