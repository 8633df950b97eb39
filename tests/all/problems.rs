//! The problem catalogue (`ProblemKind`), its page (`docs/problems.md`,
//! served at `/docs/problems`) and the answers of the running app and worker
//! agree: every kind has its section, every `type` URI resolves, and every
//! problem answered is a catalogue kind with that kind's status and title.
//!
//! Also here: each component in `spin.toml` is granted exactly the
//! variables, stores and outbound hosts its crate uses (least privilege).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::time::Duration;

use serde_json::{Value, json};
use spindle_core::problem::ProblemKind;
use spindle_core::{ids, sign};
use spindle_tests::{
    HostBuilder, TEST_ADMIN_KEY, TEST_CALLBACK_SECRET, TEST_TICK_SECRET, TEST_WORKER_TOKEN, Worker,
    client, root,
};

const PAGE_PREFIX: &str = "/docs/problems#";

fn page() -> String {
    std::fs::read_to_string(root().join("docs/problems.md")).unwrap()
}

/// One kind's section of `docs/problems.md`.
#[derive(Debug)]
struct Section {
    slug: String,
    status: Option<String>,
    title: Option<String>,
    text: String,
}

/// Whether a `## ` heading names a kind: a slug is lowercase letters,
/// digits and `-`, so the heading's anchor (as GitHub and other renderers
/// derive it) is the slug itself.
fn is_slug(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The page's kind sections, in page order (other `## ` headings, such as
/// the introduction's, end a section but start none).
fn sections(page: &str) -> Vec<Section> {
    let mut out: Vec<Section> = Vec::new();
    let mut current: Option<Section> = None;
    for line in page.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            out.extend(current.take());
            let heading = heading.trim();
            if is_slug(heading) {
                current = Some(Section {
                    slug: heading.to_owned(),
                    status: None,
                    title: None,
                    text: String::new(),
                });
            }
            continue;
        }
        if let Some(s) = current.as_mut() {
            let field = |prefix: &str| {
                line.strip_prefix(prefix)
                    .map(|v| v.trim().trim_matches('`').to_owned())
            };
            if let Some(v) = field("- Status:") {
                s.status = Some(v);
            } else if let Some(v) = field("- Title:") {
                s.title = Some(v);
            }
            s.text.push_str(line);
            s.text.push('\n');
        }
    }
    out.extend(current);
    out
}

/// The JSON code blocks of `text`.
fn json_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim()) {
            (None, "```json") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn the_page_has_a_section_for_every_kind_and_no_other() {
    let page = page();
    let sections = sections(&page);
    let on_page: Vec<&str> = sections.iter().map(|s| s.slug.as_str()).collect();
    let catalogue: Vec<&str> = ProblemKind::ALL.iter().map(|k| k.slug()).collect();
    for slug in &on_page {
        assert!(
            ProblemKind::from_slug(slug).is_some(),
            "docs/problems.md has a section `## {slug}`, which is no kind of ProblemKind"
        );
    }
    for slug in &catalogue {
        let n = on_page.iter().filter(|s| *s == slug).count();
        assert_eq!(
            n, 1,
            "docs/problems.md needs exactly one section `## {slug}`, has {n}"
        );
    }
    assert_eq!(
        on_page, catalogue,
        "docs/problems.md lists the kinds in ProblemKind::ALL order"
    );

    for (s, kind) in sections.iter().zip(ProblemKind::ALL) {
        let slug = kind.slug();
        assert!(is_slug(slug), "slug {slug:?} would not be its own anchor");
        assert_eq!(
            s.status.as_deref(),
            Some(kind.status().to_string().as_str()),
            "section {slug}: `- Status:` must be the catalogue's"
        );
        assert_eq!(
            s.title.as_deref(),
            Some(kind.title()),
            "section {slug}: `- Title:` must be the catalogue's, exactly"
        );
        for part in ["When:", "What to do:"] {
            assert!(
                s.text.lines().any(|l| l.starts_with(part)),
                "section {slug} needs a paragraph starting `{part}`"
            );
        }
        let examples = json_blocks(&s.text);
        assert!(
            !examples.is_empty(),
            "section {slug} needs an example problem document (a ```json block)"
        );
        for example in examples {
            let doc: Value = serde_json::from_str(&example)
                .unwrap_or_else(|e| panic!("section {slug}: example is not JSON: {e}"));
            assert_eq!(doc["type"], kind.type_uri(), "section {slug}: example type");
            assert_eq!(
                doc["status"],
                kind.status(),
                "section {slug}: example status"
            );
            assert_eq!(doc["title"], kind.title(), "section {slug}: example title");
        }
    }

    // The introduction's example, and the JSON Pointer forms it explains.
    let intro = &page[..page.find("\n## validation").unwrap()];
    for shape in ["type", "title", "status", "detail", "errors"] {
        assert!(
            intro.contains(&format!("`{shape}`")),
            "intro explains {shape}"
        );
    }
    for pointer in ["/query/", "/headers/", "/path/"] {
        assert!(intro.contains(pointer), "intro explains {pointer} pointers");
    }
}

/// An answer, however it was obtained.
struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

impl Answer {
    async fn of(resp: reqwest::Response) -> Self {
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = resp.bytes().await.unwrap().to_vec();
        Answer {
            status,
            content_type,
            body,
        }
    }
}

/// Checks that `answer` is a problem document of a catalogue kind with that
/// kind's status and title, and returns the kind.
fn kind_of(what: &str, answer: &Answer) -> ProblemKind {
    let text = String::from_utf8_lossy(&answer.body);
    assert_eq!(
        answer.content_type, "application/problem+json",
        "{what}: {} {text}",
        answer.status
    );
    let doc: Value = serde_json::from_slice(&answer.body)
        .unwrap_or_else(|e| panic!("{what}: problem is not JSON ({e}): {text}"));
    let ty = doc["type"].as_str().unwrap_or_default();
    let slug = ty
        .strip_prefix(PAGE_PREFIX)
        .unwrap_or_else(|| panic!("{what}: type {ty:?} is not {PAGE_PREFIX}<slug>: {doc}"));
    let kind = ProblemKind::from_slug(slug)
        .unwrap_or_else(|| panic!("{what}: type {ty:?} names no catalogue kind: {doc}"));
    assert_eq!(answer.status, kind.status(), "{what}: HTTP status: {doc}");
    assert_eq!(doc["status"], kind.status(), "{what}: status member: {doc}");
    assert_eq!(doc["title"], kind.title(), "{what}: title: {doc}");
    if let Some(errors) = doc.get("errors") {
        for e in errors.as_array().expect("errors is an array") {
            let pointer = e["pointer"].as_str().expect("every error has a pointer");
            assert!(
                pointer.is_empty() || pointer.starts_with('/'),
                "{what}: {pointer:?} is not a JSON Pointer"
            );
        }
    }
    kind
}

/// Sends `head` (a request's head and perhaps part of its body) on a fresh
/// connection, then, with `half_close`, ends the sending side; reads the
/// whole answer. For bodies that announce more than they send.
fn raw(base: &str, head: &str, half_close: bool) -> Answer {
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(head.replace("{host}", addr).as_bytes())
        .unwrap();
    if half_close {
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap_or(0);
        got.extend_from_slice(&buf[..n]);
        if let Some(answer) = parse_answer(&got) {
            return answer;
        }
        assert!(
            n > 0,
            "connection closed before a whole answer: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
}

/// The answer in `got`, once it is complete (a `content-length` body or a
/// chunked one).
fn parse_answer(got: &[u8]) -> Option<Answer> {
    let end = got.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&got[..end]).into_owned();
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let mut rest = &got[end + 4..];
    let body = if let Some(len) = header("content-length") {
        let len: usize = len.parse().unwrap();
        rest.get(..len)?.to_vec()
    } else {
        assert_eq!(
            header("transfer-encoding").as_deref(),
            Some("chunked"),
            "an answer without a length: {head}"
        );
        let mut body = Vec::new();
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
            let size_line = String::from_utf8_lossy(&rest[..line_end]).into_owned();
            let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size {size_line:?}"));
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            body.extend_from_slice(rest.get(..size)?);
            rest = rest.get(size + 2..)?;
        }
        body
    };
    Some(Answer {
        status: head.split_whitespace().nth(1)?.parse().ok()?,
        content_type: header("content-type").unwrap_or_default(),
        body,
    })
}

/// A request head announcing a `len`-byte JSON body (none of it sent).
fn announcing(method: &str, path: &str, len: usize, extra: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nhost: {{host}}\r\nauthorization: Bearer {TEST_ADMIN_KEY}\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n{extra}\r\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_app_serves_the_page_and_every_type_resolves_to_it() {
    let host = HostBuilder::new(root().join("spin.toml")).start();
    let c = client();

    let resp = c.get(host.url("/docs/problems")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "text/markdown; charset=utf-8"
    );
    assert_eq!(resp.text().await.unwrap(), page(), "the page is the file");

    let resp = c.head(host.url("/docs/problems")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "HEAD");
    assert_eq!(
        resp.headers()["content-type"],
        "text/markdown; charset=utf-8"
    );
    assert!(resp.bytes().await.unwrap().is_empty(), "HEAD has no body");

    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let resp = c
            .request(method.parse().unwrap(), host.url("/docs/problems"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["allow"], "GET, HEAD", "{method}");
        let kind = kind_of(method, &Answer::of(resp).await);
        assert_eq!(
            kind,
            ProblemKind::MethodNotAllowed,
            "{method} /docs/problems"
        );
    }
    for path in [
        "/docs/",
        "/docs/problems/",
        "/docs/nothing",
        "/docs/problems.md",
    ] {
        let resp = c.get(host.url(path)).send().await.unwrap();
        let kind = kind_of(path, &Answer::of(resp).await);
        assert_eq!(kind, ProblemKind::NotFound, "GET {path}");
    }

    // A `type` is a URI reference: resolved against the URL that answered,
    // its page is this one and its fragment one of the page's headings.
    let resp = c.get(host.url("/api/agents/nobody")).send().await.unwrap();
    let answered = resp.url().clone();
    let doc: Value = resp.json().await.unwrap();
    let ty = answered.join(doc["type"].as_str().unwrap()).unwrap();
    assert_eq!(ty.fragment(), Some("not-found"));
    let mut page_url = ty.clone();
    page_url.set_fragment(None);
    let resp = c.get(page_url.as_str()).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{page_url}");
    let text = resp.text().await.unwrap();
    assert!(
        text.lines().any(|l| l == "## not-found"),
        "{ty} has a heading"
    );
}

/// Registers `body` at `path` (201 expected).
async fn create(host: &spindle_tests::Host, path: &str, body: Value) {
    let resp = client()
        .post(host.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        201,
        "POST {path}: {}",
        resp.text().await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_problem_the_app_answers_is_a_catalogue_kind() {
    use ProblemKind as K;
    let host = HostBuilder::new(root().join("spin.toml")).start();
    let c = client();
    let base = host.base.clone();
    let json_ct = ("content-type", "application/json");

    create(
        &host,
        "/api/agents",
        json!({"name": "scanner", "command": ["cat"], "risk_level": "auto"}),
    )
    .await;
    create(
        &host,
        "/api/workflows",
        json!({"name": "wf", "steps": [{"id": "a", "agent": "scanner"}]}),
    )
    .await;
    let run: Value = c
        .post(host.url("/trigger/wf"))
        .header("idempotency-key", "k1")
        .json(&json!({"n": 1}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let run_id = run["run_id"].as_str().expect("a run").to_owned();
    let job_id = ids::job_id(&run_id, "a", 1);

    // (what, the answer, the kinds it may be)
    let mut cases: Vec<(String, Answer, Vec<ProblemKind>)> = Vec::new();
    macro_rules! case {
        ($what:expr, $req:expr, $($kind:expr),+) => {
            cases.push(($what.to_string(), Answer::of($req.send().await.unwrap()).await, vec![$($kind),+]))
        };
    }

    case!(
        "bad JSON to /api/agents",
        c.post(host.url("/api/agents"))
            .header(json_ct.0, json_ct.1)
            .body("{not json"),
        K::Validation
    );
    case!(
        "an invalid agent",
        c.post(host.url("/api/agents"))
            .json(&json!({"name": "Bad Name", "timeout_secs": 0})),
        K::Validation
    );
    case!(
        "an invalid path segment",
        c.get(host.url("/api/agents/Not_Valid")),
        K::Validation
    );
    case!(
        "an invalid query",
        c.get(host.url("/api/runs?limit=0")),
        K::Validation
    );
    case!(
        "an invalid header",
        c.post(host.url("/trigger/wf"))
            .header("idempotency-key", "k".repeat(300))
            .json(&json!({})),
        K::Validation
    );
    case!(
        "an invalid cancel reason",
        c.post(host.url(&format!("/api/runs/{run_id}/cancel")))
            .json(&json!({"reason": 7})),
        K::Validation
    );
    case!(
        "text/plain to /api/agents",
        c.post(host.url("/api/agents"))
            .header("content-type", "text/plain")
            .body("{}"),
        K::MediaType
    );
    case!(
        "text/plain to /trigger",
        c.post(host.url("/trigger/wf"))
            .header("content-type", "text/plain")
            .body("x"),
        K::MediaType
    );
    case!(
        "text/plain to a job callback",
        c.post(host.url(&format!("/jobs/{job_id}/heartbeat")))
            .header("content-type", "text/plain")
            .body("x"),
        K::MediaType
    );
    case!(
        "an unknown API route",
        c.get(host.url("/api/nothing")),
        K::NotFound
    );
    case!(
        "an unknown agent",
        c.get(host.url("/api/agents/nobody")),
        K::NotFound
    );
    case!(
        "an unknown run",
        c.get(host.url("/api/runs/r1-000001")),
        K::NotFound
    );
    case!(
        "an unknown workflow",
        c.post(host.url("/trigger/nobody")).json(&json!({})),
        K::NotFound
    );
    case!(
        "an unknown job route",
        c.post(host.url("/jobs/x")),
        K::NotFound
    );
    case!(
        "an unknown health route",
        c.get(host.url("/health/nothing")),
        K::NotFound
    );
    case!(
        "an unknown docs page",
        c.get(host.url("/docs/nothing")),
        K::NotFound
    );
    case!(
        "DELETE /api/agents",
        c.delete(host.url("/api/agents")),
        K::MethodNotAllowed
    );
    case!(
        "GET /trigger/wf",
        c.get(host.url("/trigger/wf")),
        K::MethodNotAllowed
    );
    case!(
        "GET a job callback",
        c.get(host.url("/jobs/x.y.1/result")),
        K::MethodNotAllowed
    );
    case!(
        "GET /internal/tick",
        c.get(host.url("/internal/tick")),
        K::MethodNotAllowed
    );
    case!(
        "POST /health/live",
        c.post(host.url("/health/live")),
        K::MethodNotAllowed
    );
    case!(
        "PUT /docs/problems",
        c.put(host.url("/docs/problems")),
        K::MethodNotAllowed
    );
    case!(
        "an unsigned result for an unknown job",
        c.post(host.url("/jobs/x.y.1/result"))
            .json(&json!({"job_id": "x.y.1"})),
        K::Signature,
        K::NotFound
    );
    case!(
        "an unsigned result",
        c.post(host.url(&format!("/jobs/{job_id}/result")))
            .json(&json!({"job_id": job_id})),
        K::Signature
    );
    case!(
        "a badly signed heartbeat",
        c.post(host.url(&format!("/jobs/{job_id}/heartbeat")))
            .header("x-spindle-signature", "sha256=00")
            .json(&json!({"job_id": job_id, "worker": "w"})),
        K::Signature
    );
    case!(
        "a tick without its secret",
        c.post(host.url("/internal/tick")),
        K::Unauthorized
    );
    case!(
        "a tick with a wrong secret",
        c.post(host.url("/internal/tick"))
            .bearer_auth(format!("{TEST_TICK_SECRET}x")),
        K::Unauthorized
    );
    case!(
        "an agent that exists",
        c.post(host.url("/api/agents"))
            .json(&json!({"name": "scanner", "command": ["cat"]})),
        K::Exists
    );
    case!(
        "a workflow that exists",
        c.post(host.url("/api/workflows"))
            .json(&json!({"name": "wf", "steps": [{"id": "a", "agent": "scanner"}]})),
        K::Exists
    );
    case!(
        "deleting an agent a workflow uses",
        c.delete(host.url("/api/agents/scanner")),
        K::AgentInUse
    );
    case!(
        "an Idempotency-Key with another body",
        c.post(host.url("/trigger/wf"))
            .header("idempotency-key", "k1")
            .json(&json!({"n": 2})),
        K::Conflict
    );
    case!(
        "an unsigned webhook delivery",
        c.post(host.url("/webhooks/github")),
        K::MissingSignature
    );
    case!(
        "a delivery to a source nobody registered",
        c.post(host.url("/webhooks/nobody")),
        K::UnknownSource
    );
    case!(
        "an approval that does not exist",
        c.get(host.url("/approvals/x")),
        K::NotFound
    );
    case!(
        "a forged approval link",
        c.post(host.url("/approvals/link/e30.AAAA")),
        K::BadLink
    );

    // A finished run refuses changes.
    let resp = c
        .post(host.url(&format!("/api/runs/{run_id}/cancel")))
        .send()
        .await
        .unwrap();
    assert!(
        resp.status() == 200 || resp.status() == 409,
        "cancel: {}",
        resp.status()
    );
    case!(
        "cancelling a finished run",
        c.post(host.url(&format!("/api/runs/{run_id}/cancel"))),
        K::RunFinished
    );
    let result = serde_json::to_vec(&json!({
        "job_id": job_id, "worker": "w", "status": "succeeded", "output": {},
        "exit_code": 0, "started_at_ms": 1, "finished_at_ms": 2,
    }))
    .unwrap();
    let token = sign::job_token(TEST_CALLBACK_SECRET, &job_id);
    case!(
        "a result for a job of a finished run",
        c.post(host.url(&format!("/jobs/{job_id}/result")))
            .header(json_ct.0, json_ct.1)
            .header("x-spindle-signature", sign::sign(&token, &result))
            .body(result.clone()),
        K::RunFinished,
        K::JobNotActive
    );

    // Bodies over the limit are refused by their announced length.
    let big = 2 << 20;
    let cancel = format!("/api/runs/{run_id}/cancel");
    let result_path = format!("/jobs/{job_id}/result");
    for (what, path, extra) in [
        ("an oversized agent", "/api/agents", ""),
        ("an oversized trigger", "/trigger/wf", ""),
        ("an oversized cancel", cancel.as_str(), ""),
        (
            "an oversized result",
            result_path.as_str(),
            "x-spindle-signature: sha256=00\r\n",
        ),
    ] {
        let head = announcing("POST", path, big, extra);
        cases.push((what.into(), raw(&base, &head, false), vec![K::TooLarge]));
    }
    // A body that ends before its announced length cannot be read.
    let mut head = announcing("POST", "/api/agents", 100, "");
    head.push_str("{\"name\":");
    cases.push((
        "a body cut short".into(),
        raw(&base, &head, true),
        vec![K::Body],
    ));

    let mut failures = Vec::new();
    let mut seen = BTreeSet::new();
    for (what, answer, expected) in &cases {
        let kind = kind_of(what, answer);
        seen.insert(kind);
        if !expected.contains(&kind) {
            failures.push(format!(
                "{what}: answered {}, expected one of {:?}",
                kind.slug(),
                expected.iter().map(|k| k.slug()).collect::<Vec<_>>()
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    eprintln!(
        "kinds seen: {:?}",
        seen.iter().map(|k| k.slug()).collect::<Vec<_>>()
    );
}

/// The shipped manifest's text, with the components' sources made absolute
/// (so it can be written anywhere).
fn shipped_manifest_text() -> String {
    let text = std::fs::read_to_string(root().join("spin.toml")).unwrap();
    let target = spindle_tests::target_dir();
    text.replace(
        "source = \"target/",
        &format!("source = \"{}/", target.display()),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_component_missing_a_variable_answers_a_configuration_problem() {
    // The shipped manifest, with one engine variable taken from the api
    // component.
    let text = shipped_manifest_text();
    let api_vars = "[component.api.variables]\n";
    let at = text.find(api_vars).unwrap() + api_vars.len();
    let (before, after) = text.split_at(at);
    let after = after.replacen("lease_ms = \"{{ lease_ms }}\"\n", "", 1);
    let (_dir, manifest) = spindle_tests::manifest(&format!("{before}{after}"));
    let host = HostBuilder::new(manifest).start();
    let resp = client().get(host.url("/api/runs")).send().await.unwrap();
    let answer = Answer::of(resp).await;
    assert_eq!(
        kind_of("a missing variable", &answer),
        ProblemKind::Configuration
    );
    let doc: Value = serde_json::from_slice(&answer.body).unwrap();
    assert!(
        doc["detail"].as_str().unwrap().contains("lease_ms"),
        "names the variable: {doc}"
    );
}

/// Under Spin nothing checks secrets at start-up (the local host does, for
/// the variables the manifest declares `secret`), so each component checks
/// them on first use: with the admin key, the callback secret and the tick
/// secret declared as plain variables and set to placeholders, the host
/// starts, and the guarded routes, the worker callbacks and the tick each
/// answer a 500 `configuration` problem that shows no secret, and for the
/// secrets unauthenticated callers could probe, does not say which
/// variable is wrong; the component's log does.
#[tokio::test(flavor = "multi_thread")]
async fn components_refuse_weak_secrets_on_first_use() {
    const ADMIN_KEY: &str = "changeme";
    const CALLBACK_SECRET: &str = "CHANGE_ME_CHANGE_ME_CHANGE_ME_CHANGE_ME";
    const TICK_SECRET: &str = "tick-secret";
    let mut text = shipped_manifest_text();
    for name in ["admin_key", "callback_secret", "tick_secret"] {
        let declared = format!("{name} = {{ required = true, secret = true }}");
        assert!(text.contains(&declared), "spin.toml declares {declared}");
        text = text.replace(&declared, &format!("{name} = {{ required = true }}"));
    }
    let (_dir, manifest) = spindle_tests::manifest(&text);
    let host = HostBuilder::new(manifest)
        .env("SPIN_VARIABLE_ADMIN_KEY", ADMIN_KEY)
        .env("SPIN_VARIABLE_CALLBACK_SECRET", CALLBACK_SECRET)
        .env("SPIN_VARIABLE_TICK_SECRET", TICK_SECRET)
        .arg("--tick-interval-ms")
        .arg("0")
        .start();
    let c = reqwest::Client::new();
    let cases = [
        (
            "a guarded route, with the weak key itself",
            c.get(host.url("/api/agents")).bearer_auth(ADMIN_KEY),
            None,
        ),
        (
            "a guarded route, with no credential",
            c.post(host.url("/trigger/anything")).json(&json!({})),
            None,
        ),
        (
            "a worker's result callback",
            c.post(host.url("/jobs/r1-1.a.1/result"))
                .header(spindle_core::job::SIGNATURE_HEADER, "sha256=00")
                .json(&json!({})),
            Some("callback_secret"),
        ),
        (
            "the tick, with the weak secret itself",
            c.post(host.url("/internal/tick")).bearer_auth(TICK_SECRET),
            None,
        ),
    ];
    for (what, req, names) in cases {
        let answer = Answer::of(req.send().await.unwrap()).await;
        assert_eq!(kind_of(what, &answer), ProblemKind::Configuration);
        let text = String::from_utf8_lossy(&answer.body).into_owned();
        for secret in [ADMIN_KEY, CALLBACK_SECRET, TICK_SECRET] {
            assert!(!text.contains(secret), "{what} shows a secret: {text}");
        }
        match names {
            Some(name) => assert!(text.contains(name), "{what} names {name}: {text}"),
            None => {
                for name in ["admin_key", "callback_secret", "tick_secret", "jwt_secret"] {
                    assert!(!text.contains(name), "{what} names {name}: {text}");
                }
            }
        }
    }
    // The logs say which, and never the value.
    let logs = host.state_dir.join("logs");
    let read = |name: &str| std::fs::read_to_string(logs.join(name)).unwrap_or_default();
    for (file, says) in [
        (
            "api_stderr.txt",
            "configuration: variable admin_key is 8 bytes long",
        ),
        (
            "trigger_stderr.txt",
            "configuration: variable admin_key is 8 bytes long",
        ),
        (
            "jobs_stderr.txt",
            "configuration: variable callback_secret looks like a placeholder",
        ),
        (
            "scheduler_stderr.txt",
            "configuration: variable tick_secret is 11 bytes long",
        ),
    ] {
        assert!(read(file).contains(says), "{file}: {}", read(file));
    }
    let everything = format!(
        "{}{}{}{}{}",
        host.stderr(),
        read("api_stderr.txt"),
        read("trigger_stderr.txt"),
        read("jobs_stderr.txt"),
        read("scheduler_stderr.txt")
    );
    for secret in [ADMIN_KEY, CALLBACK_SECRET, TICK_SECRET] {
        assert!(!everything.contains(secret), "a log shows {secret}");
    }
}

/// A fake Spindle that keeps every job running, so the worker holds it.
async fn keep_running() -> String {
    let app = axum::Router::new().route(
        "/jobs/{job_id}/heartbeat",
        axum::routing::post(|| async { axum::Json(json!({"keep_running": true})) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

#[tokio::test(flavor = "multi_thread")]
async fn every_problem_the_worker_answers_is_a_catalogue_kind() {
    use ProblemKind as K;
    let spindle = keep_running().await;
    // The harness gives a worker 2 slots; it holds as many jobs.
    let worker = Worker::start(&["--capacity", "2"]);
    let c = client();
    let job = |id: &str| {
        json!({
            "job_id": id, "run_id": "r-1", "step_id": "a", "attempt": 1,
            "agent": {"name": "sleeper", "version": 1,
                      "command": ["sh", "-c", "cat >/dev/null; sleep 30"],
                      "timeout_secs": 60, "memory_mb": 64},
            "input": {}, "lease_ms": 30000, "max_output_bytes": 65536,
            "callback_url": format!("{spindle}/jobs/{id}"), "token": "job-token",
        })
    };
    let url = |p: &str| format!("{}{p}", worker.base);
    let mut cases: Vec<(&str, Answer, ProblemKind)> = Vec::new();
    cases.push((
        "a job without the worker token",
        Answer::of(
            c.post(url("/jobs"))
                .json(&job("r-1.a.1"))
                .send()
                .await
                .unwrap(),
        )
        .await,
        K::Unauthorized,
    ));
    cases.push((
        "a body that is not a job",
        Answer::of(
            c.post(url("/jobs"))
                .bearer_auth(TEST_WORKER_TOKEN)
                .json(&json!({"job_id": 7}))
                .send()
                .await
                .unwrap(),
        )
        .await,
        K::Validation,
    ));
    for id in ["r-1.a.1", "r-1.c.1"] {
        let taken = c
            .post(url("/jobs"))
            .bearer_auth(TEST_WORKER_TOKEN)
            .json(&job(id))
            .send()
            .await
            .unwrap();
        assert_eq!(taken.status(), 202, "{}", taken.text().await.unwrap());
    }
    for (what, id, kind) in [
        ("a job held already", "r-1.a.1", K::Duplicate),
        ("a job beyond capacity", "r-1.b.1", K::Unavailable),
    ] {
        let resp = c
            .post(url("/jobs"))
            .bearer_auth(TEST_WORKER_TOKEN)
            .json(&job(id))
            .send()
            .await
            .unwrap();
        cases.push((what, Answer::of(resp).await, kind));
    }
    for (what, id, kind) in [
        ("cancelling a job not held", "r-1.z.1", K::NotFound),
        ("cancelling with a bad signature", "r-1.a.1", K::Signature),
    ] {
        let resp = c
            .post(url(&format!("/jobs/{id}/cancel")))
            .bearer_auth(TEST_WORKER_TOKEN)
            .header("x-spindle-signature", "sha256=00")
            .json(&json!({"job_id": id}))
            .send()
            .await
            .unwrap();
        cases.push((what, Answer::of(resp).await, kind));
    }
    // The framework's own answers are problem documents too.
    cases.push((
        "an unknown worker path",
        Answer::of(c.get(url("/nope")).send().await.unwrap()).await,
        K::NotFound,
    ));
    cases.push((
        "a method the route does not take",
        Answer::of(c.delete(url("/jobs")).send().await.unwrap()).await,
        K::MethodNotAllowed,
    ));
    cases.push((
        "a job body over the limit",
        Answer::of(
            c.post(url("/jobs"))
                .bearer_auth(TEST_WORKER_TOKEN)
                .header("content-type", "application/json")
                .body(vec![b' '; 17 << 20])
                .send()
                .await
                .unwrap(),
        )
        .await,
        K::TooLarge,
    ));
    for (what, answer, expected) in &cases {
        assert_eq!(kind_of(what, answer), *expected, "{what}");
    }
}

// ---------------------------------------------------------------------------
// spin.toml grants each component exactly what its crate uses.

/// What a component's sources use.
#[derive(Debug, Default, PartialEq)]
struct Uses {
    variables: BTreeSet<String>,
    stores: BTreeSet<String>,
    outbound_hosts: BTreeSet<String>,
}

/// The rule that admits the worker pool: what a component that dispatches
/// or cancels jobs needs.
const WORKER_HOSTS: &str = "{{ worker_hosts }}";

/// The string literals of `pub const VARIABLES` in the engine's config: the
/// variables `spindle_spin::engine::open()` reads.
fn engine_variables() -> BTreeSet<String> {
    variables_const("crates/engine/src/config.rs")
}

/// The variables `spindle_spin::auth::authorize` reads: `pub const
/// VARIABLES` in `spindle-auth`.
fn auth_variables() -> BTreeSet<String> {
    variables_const("crates/auth/src/caller.rs")
}

/// The variables a component that watches the worker pool reads:
/// `pub const POOL_VARIABLES` in the engine's config.
fn pool_variables() -> BTreeSet<String> {
    string_const("crates/engine/src/config.rs", "POOL_VARIABLES")
}

/// The string literals of `pub const VARIABLES` in `file`.
fn variables_const(file: &str) -> BTreeSet<String> {
    string_const(file, "VARIABLES")
}

/// The string literals of `pub const <name>: [&str; N]` in `file`.
fn string_const(file: &str, name: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join(file)).unwrap();
    let head = format!("pub const {name}: [&str; ");
    let start = text
        .find(&head)
        .unwrap_or_else(|| panic!("{file} defines pub const {name}"));
    let decl = &text[start..];
    let len: usize = decl[head.len()..]
        .split(']')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let body = &decl[decl.find("= [").unwrap() + 3..decl.find("];").unwrap()];
    let names: BTreeSet<String> = body
        .split(',')
        .map(|s| s.trim().trim_matches('"'))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    assert_eq!(names.len(), len, "VARIABLES parsed: {names:?}");
    names
}

/// Every string literal after `call` in `text` (e.g. `variables::get(`);
/// `Err` names a call whose argument is not a literal, which a text scan
/// cannot follow.
fn literal_args(text: &str, call: &str) -> Result<BTreeSet<String>, String> {
    let mut out = BTreeSet::new();
    for (at, _) in text.match_indices(call) {
        let rest = text[at + call.len()..].trim_start();
        let Some(rest) = rest.strip_prefix('"') else {
            let line = text[..at].matches('\n').count() + 1;
            return Err(format!(
                "line {line}: {call}...) with a name that is not a string literal"
            ));
        };
        out.insert(rest[..rest.find('"').unwrap()].to_owned());
    }
    Ok(out)
}

/// What the sources (`file name -> text`) of a component use.
fn uses(
    sources: &BTreeMap<String, String>,
    engine_vars: &BTreeSet<String>,
) -> Result<Uses, String> {
    let mut u = Uses::default();
    for (file, text) in sources {
        let err = |e: String| format!("{file}: {e}");
        u.variables
            .extend(literal_args(text, "variables::get(").map_err(err)?);
        u.stores
            .extend(literal_args(text, "Kv::open(").map_err(err)?);
        if text.contains("engine::open()") || text.contains("engine::open_on(") {
            u.variables.extend(engine_vars.iter().cloned());
            u.stores.insert("default".into());
            u.outbound_hosts.insert(WORKER_HOSTS.into());
        }
        if text.contains("engine::load_pool()") {
            u.variables.extend(pool_variables());
        }
        // Components send HTTP to workers only.
        if text.contains("spin_sdk::http::send(") || text.contains("engine::send_within(") {
            u.outbound_hosts.insert(WORKER_HOSTS.into());
        }
        if text.contains("engine::load_config()") {
            u.variables.extend(engine_vars.iter().cloned());
        }
        // The guard of every protected route: the auth settings, and the
        // store its keys and rate-limit counters live in.
        if text.contains("auth::authorize(") {
            u.variables.extend(auth_variables());
            u.stores.insert("default".into());
        }
    }
    Ok(u)
}

/// What `spin.toml` grants component `name`.
fn grants(manifest: &toml::Value, name: &str) -> Uses {
    let c = &manifest["component"][name];
    let strings = |key: &str| -> BTreeSet<String> {
        c.get(key)
            .and_then(toml::Value::as_array)
            .into_iter()
            .flatten()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    Uses {
        variables: c
            .get("variables")
            .and_then(toml::Value::as_table)
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default(),
        stores: strings("key_value_stores"),
        outbound_hosts: strings("allowed_outbound_hosts"),
    }
}

/// Every difference between what each component is granted and what its
/// sources (`component -> file -> text`) use, one line each.
fn mismatches(
    manifest: &toml::Value,
    sources: &BTreeMap<String, BTreeMap<String, String>>,
    engine_vars: &BTreeSet<String>,
) -> Vec<String> {
    let mut out = Vec::new();
    let components = manifest["component"].as_table().unwrap();
    for name in components.keys() {
        let Some(files) = sources.get(name) else {
            out.push(format!(
                "component {name}: spin.toml has it, but there is no components/{name}/src"
            ));
            continue;
        };
        let used = match uses(files, engine_vars) {
            Ok(u) => u,
            Err(e) => {
                out.push(format!("component {name}: {e}"));
                continue;
            }
        };
        let granted = grants(manifest, name);
        for (what, key, g, u) in [
            (
                "variable",
                "[component.{name}.variables]",
                &granted.variables,
                &used.variables,
            ),
            ("store", "key_value_stores", &granted.stores, &used.stores),
            (
                "outbound host",
                "allowed_outbound_hosts",
                &granted.outbound_hosts,
                &used.outbound_hosts,
            ),
        ] {
            let key = key.replace("{name}", name);
            for extra in g.difference(u) {
                out.push(format!(
                    "component {name}: spin.toml grants {what} {extra:?} in {key}, which its crate never uses (least privilege: remove it)"
                ));
            }
            for missing in u.difference(g) {
                out.push(format!(
                    "component {name}: its crate uses {what} {missing:?}, which spin.toml does not grant in {key}"
                ));
            }
        }
    }
    for name in sources.keys() {
        if !components.contains_key(name) {
            out.push(format!(
                "component {name}: components/{name} is not in spin.toml"
            ));
        }
    }
    out
}

/// The `.rs` files under `dir`, by path relative to the repository.
fn rust_sources(dir: &std::path::Path, out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(root()).unwrap().display().to_string();
            out.insert(rel, std::fs::read_to_string(&path).unwrap());
        }
    }
}

/// Every component crate's sources: `components/<name>/src/**/*.rs`.
fn component_sources() -> BTreeMap<String, BTreeMap<String, String>> {
    let mut all = BTreeMap::new();
    for entry in std::fs::read_dir(root().join("components")).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.join("src").is_dir() {
            continue;
        }
        let name = dir.file_name().unwrap().to_str().unwrap().to_owned();
        let mut files = BTreeMap::new();
        rust_sources(&dir.join("src"), &mut files);
        all.insert(name, files);
    }
    all
}

fn shipped_manifest() -> toml::Value {
    toml::from_str(&std::fs::read_to_string(root().join("spin.toml")).unwrap()).unwrap()
}

#[test]
fn every_component_is_granted_exactly_what_its_crate_uses() {
    let manifest = shipped_manifest();
    let sources = component_sources();
    let engine_vars = engine_variables();
    let problems = mismatches(&manifest, &sources, &engine_vars);
    assert!(
        problems.is_empty(),
        "spin.toml and the component crates disagree:\n{}",
        problems.join("\n")
    );
    // The docs component is the least privileged of all.
    assert_eq!(grants(&manifest, "docs"), Uses::default());
}

#[test]
fn the_grant_check_names_the_component_and_the_item() {
    let engine_vars = engine_variables();
    assert!(engine_vars.contains("callback_secret"), "{engine_vars:?}");
    let manifest: toml::Value = toml::from_str(
        r#"
        [component.a]
        key_value_stores = ["default"]
        allowed_outbound_hosts = ["{{ worker_hosts }}", "https://example.com"]
        [component.a.variables]
        tick_secret = "{{ tick_secret }}"
        spare = "{{ spare }}"
        [component.b]
        [component.c]
        [component.d]
        "#,
    )
    .unwrap();
    let src = |text: &str| BTreeMap::from([("src/lib.rs".to_owned(), text.to_owned())]);
    let sources = BTreeMap::from([
        (
            "a".to_owned(),
            src(r#"let e = spindle_spin::engine::open().await?; variables::get("tick_secret")"#),
        ),
        ("b".to_owned(), src(r#"Kv::open("default")"#)),
        ("c".to_owned(), src("spin_sdk::variables::get(name)")),
        ("e".to_owned(), src("")),
    ]);
    let got = mismatches(&manifest, &sources, &engine_vars);
    let has = |needle: &str| {
        assert!(
            got.iter().any(|m| m.contains(needle)),
            "no message with {needle:?} in {got:#?}"
        )
    };
    has(r#"component a: spin.toml grants variable "spare""#);
    has(r#"component a: its crate uses variable "callback_secret""#);
    has(r#"component a: spin.toml grants outbound host "https://example.com""#);
    has(r#"component b: its crate uses store "default""#);
    has(
        "component c: src/lib.rs: line 1: variables::get(...) with a name that is not a string literal",
    );
    has("component d: spin.toml has it, but there is no components/d/src");
    has("component e: components/e is not in spin.toml");
    assert!(
        !got.iter().any(|m| m.contains("tick_secret")),
        "tick_secret is both granted and used: {got:#?}"
    );
}
