//! `notifier`: posts a summary to a webhook URL.
//!
//! Input: `{"webhook_url": "http://...", "summary": "...", "details": any}`.
//! Output: `{"delivered": true, "status": 200, "url": "..."}`. Plain
//! `http://` is spoken directly; `https://` goes through `curl` when it is
//! installed. A non-2xx answer or an unreachable host is a transient failure
//! (retried); a malformed URL a permanent one. Its agent definition turns the
//! container network on, which agents otherwise run without.

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::{Failure, field, http};

fn post_http(url: &str, body: &[u8]) -> Result<u16, Failure> {
    let target = http::Target::parse(url).map_err(Failure::Permanent)?;
    if target.scheme != http::Scheme::Http {
        return Err(Failure::Permanent(format!("not an http URL: {url}")));
    }
    let length = body.len().to_string();
    let answer = http::exchange(
        &target,
        &http::Request {
            method: "POST",
            user_agent: "spindle-notifier",
            headers: &[
                ("content-type", "application/json"),
                ("content-length", &length),
            ],
            body,
        },
        Duration::from_secs(10),
    );
    // A status means the hook got the summary, even if its answer broke off.
    answer.status.ok_or_else(|| {
        Failure::Transient(format!(
            "{url}: {}",
            answer.error.as_deref().unwrap_or("no answer")
        ))
    })
}

fn post_curl(url: &str, body: &[u8]) -> Result<u16, Failure> {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-m",
            "10",
            "-H",
            "content-type: application/json",
            "--data-binary",
            "@-",
            url,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            if let Some(mut stdin) = c.stdin.take() {
                stdin.write_all(body)?;
            }
            c.wait_with_output()
        })
        .map_err(|e| Failure::Transient(format!("https needs curl: {e}")))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| {
            Failure::Transient(format!(
                "curl: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        })
}

pub fn run(input: Value) -> Result<Value, Failure> {
    let url = field(&input, "webhook_url")?;
    let summary = input
        .get("summary")
        .and_then(Value::as_str)
        .unwrap_or("Spindle run finished");
    let body = serde_json::to_vec(&json!({
        "text": summary,
        "details": input.get("details").cloned().unwrap_or(Value::Null),
    }))
    .map_err(|e| Failure::Permanent(e.to_string()))?;
    let status = if url.starts_with("https://") {
        post_curl(url, &body)?
    } else {
        post_http(url, &body)?
    };
    if !(200..300).contains(&status) {
        return Err(Failure::Transient(format!("{url} answered {status}")));
    }
    Ok(json!({"delivered": true, "status": status, "url": url}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn posts_the_summary_and_reports_the_status() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            // Read the whole request: headers and body may arrive apart.
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = s.read(&mut buf).unwrap();
                req.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&req);
                let complete = text.find("\r\n\r\n").is_some_and(|end| {
                    let len: usize = text[..end]
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    req.len() >= end + 4 + len
                });
                if complete || n == 0 {
                    break;
                }
            }
            s.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                .unwrap();
            String::from_utf8_lossy(&req).into_owned()
        });
        let out = run(json!({"webhook_url": format!("http://127.0.0.1:{port}/hook"), "summary": "2 findings"})).unwrap();
        assert_eq!(out["status"], 204);
        let req = server.join().unwrap();
        assert!(req.starts_with("POST /hook HTTP/1.1"));
        assert!(req.contains("\"text\":\"2 findings\""));
    }

    #[test]
    fn bad_urls_are_permanent_and_dead_hosts_transient() {
        assert!(matches!(
            run(json!({"webhook_url": "ftp://x"})),
            Err(Failure::Permanent(_))
        ));
        assert!(matches!(run(json!({})), Err(Failure::Permanent(_))));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(matches!(
            run(json!({"webhook_url": format!("http://127.0.0.1:{port}/")})),
            Err(Failure::Transient(_))
        ));
    }
}
