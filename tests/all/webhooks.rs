//! Signed webhooks, subscriptions and cron schedules (issue 9) through the
//! real host: the shipped `spin.toml`, the real `webhook`, `api`, `trigger`
//! and tick components, a real SQLite store and real HTTP on loopback.
//!
//! Deliveries are real GitHub bodies (`tests/fixtures/webhooks/github`, from
//! the octokit/webhooks examples) signed exactly as GitHub signs them,
//! Builder.io publish and unpublish bodies, and a Stripe-style timestamped
//! generic source registered through the API. Every refusal is checked for
//! its status and problem type, and for leaving the store as it was (no
//! run, no delivery record; only the refusal counters move).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spindle_core::webhook::Verification;
use spindle_tests::{
    Host, HostBuilder, TEST_GITHUB_WEBHOOK_SECRET, Worker, anon_client, client, client_with,
    free_port, now_ms, now_s, oversized_status, root,
};

// ---------------------------------------------------------------------------
// Fixtures

/// GitHub's `ping`, sent when a webhook is created.
const PING: &[u8] = include_bytes!("../fixtures/webhooks/github/ping.payload.json");
/// A `push` of a tag (`refs/tags/simple-tag`).
const PUSH_TAG: &[u8] = include_bytes!("../fixtures/webhooks/github/push.payload.json");
/// A `push` creating a branch (`refs/heads/master`).
const PUSH_BRANCH: &[u8] =
    include_bytes!("../fixtures/webhooks/github/push.with-new-branch.payload.json");
const PR_OPENED: &[u8] =
    include_bytes!("../fixtures/webhooks/github/pull_request.opened.payload.json");
const PR_SYNC: &[u8] =
    include_bytes!("../fixtures/webhooks/github/pull_request.synchronize.payload.json");
/// A successful `workflow_run` of `octo-org/octo-repo`, run 289782451.
const RUN_COMPLETED: &[u8] =
    include_bytes!("../fixtures/webhooks/github/workflow_run.completed.payload.json");
const ISSUE_OPENED: &[u8] =
    include_bytes!("../fixtures/webhooks/github/issues.opened.payload.json");
const BUILDER_PUBLISH: &[u8] = include_bytes!("../fixtures/webhooks/builder/publish.json");
const BUILDER_UNPUBLISH: &[u8] = include_bytes!("../fixtures/webhooks/builder/unpublish.json");

/// `body` (a GitHub `push` or `pull_request.synchronize`) as another push
/// to the same branch: its `after` commit replaced by one made of `n`, every
/// other byte as GitHub sent it. A delivery is its body, so tests that want
/// several deliveries of one event send such variants.
fn another_commit(body: &[u8], n: u64) -> Vec<u8> {
    let key = b"\"after\": \"";
    let at = body
        .windows(key.len())
        .position(|w| w == key)
        .expect("the body has an `after` commit")
        + key.len();
    let sha = format!("{n:040x}");
    let mut out = body.to_vec();
    out[at..at + 40].copy_from_slice(sha.as_bytes());
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["after"], sha.as_str());
    out
}

/// The repository of the GitHub fixtures (but `workflow_run`'s).
const REPO: &str = "Codertocat/Hello-World";

/// GitHub's published example; 26 bytes, too short for the host.
const GITHUB_EXAMPLE_SECRET: &str = "It's a Secret to Everybody";
const GITHUB_EXAMPLE_SIGNATURE: &str =
    "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

// Secrets of at least 32 random-looking bytes, as the host demands.
const GH_SECRET: &str = "gh-current-9c4e1a7f3b2d8e6051f7a3c9e2b4d6f8";
const GH_PREVIOUS: &str = "gh-previous-2b7d9f1c4e6a8035d2c9e7f1a3b5d7e9";
const GH_STRANGER: &str = "gh-stranger-5e1c3a9f7d2b4068e3a1c5f7b9d2e4a6";
const BUILDER_SECRET: &str = "bld-current-7a3f9c1e5b2d8e4f6a0c9e1b3d5f7a2c";
const BUILDER_PREVIOUS: &str = "bld-previous-3d8b1f6a9c2e4d7051b8e3a6c9f2d4b7";
const PAY_SECRET: &str = "whsec_4f7a9c2e1b3d5f8a0c6e9b1d3f5a7c2e8b4d";
const PAY_NEXT: &str = "whsec_8e2c6a0f4b9d1e7c3a5f8b2d6e0c4a9f1b7d";

// ---------------------------------------------------------------------------
// Hosts

/// The shipped app with a GitHub secret set and no webhook rate limit in
/// the way. No worker listens at the pool's address (runs are created and
/// their dispatch fails), and `tick_ms: Some(0)` turns the tick off, so the
/// store changes only when a request changes it. `None` keeps the host's
/// default tick (every second).
fn host(tick_ms: Option<u64>, env: &[(&str, &str)]) -> Host {
    let mut b = base(tick_ms).env(
        "SPIN_VARIABLE_WORKERS",
        &format!("http://127.0.0.1:{}", free_port()),
    );
    for (k, v) in env {
        b = b.env(k, v);
    }
    b.start()
}

fn base(tick_ms: Option<u64>) -> HostBuilder {
    let mut b = HostBuilder::new(root().join("spin.toml"))
        .env("SPIN_VARIABLE_GITHUB_WEBHOOK_SECRET", GH_SECRET)
        .env("SPIN_VARIABLE_RATE_LIMIT_WEBHOOK", "1000000");
    if let Some(ms) = tick_ms {
        b = b.arg("--tick-interval-ms").arg(&ms.to_string());
    }
    b
}

/// The app with a real worker running agents as processes.
struct WithWorker {
    host: Host,
    worker: Worker,
}

fn host_with_worker() -> WithWorker {
    let worker = Worker::start(&[]);
    let port = free_port();
    let host = base(Some(200))
        .port(port)
        .env("SPIN_VARIABLE_WORKERS", &worker.base)
        .env(
            "SPIN_VARIABLE_CALLBACK_URL",
            &format!("http://127.0.0.1:{port}"),
        )
        .start();
    WithWorker { host, worker }
}

// ---------------------------------------------------------------------------
// HTTP

/// An answer, read whole.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: Option<String>,
    location: Option<String>,
    text: String,
    body: Value,
}

async fn read(resp: reqwest::Response) -> Answer {
    let status = resp.status().as_u16();
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header("content-type");
    let location = header("location");
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        content_type,
        location,
        text,
        body,
    }
}

async fn call(
    http: &reqwest::Client,
    host: &Host,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Answer {
    let mut req = http.request(method.parse().unwrap(), host.url(path));
    if let Some(b) = body {
        req = req.json(b);
    }
    read(req.send().await.unwrap()).await
}

/// As the bootstrap admin.
async fn admin(host: &Host, method: &str, path: &str, body: Option<&Value>) -> Answer {
    call(&client(), host, method, path, body).await
}

/// Checks `a` is the problem document of `slug` with `status`.
#[track_caller]
fn assert_problem(a: &Answer, status: u16, slug: &str, what: &str) {
    assert_eq!(a.status, status, "{what}: {}", a.text);
    assert_eq!(
        a.content_type.as_deref(),
        Some("application/problem+json"),
        "{what}: {}",
        a.text
    );
    assert_eq!(
        a.body["type"],
        format!("/docs/problems#{slug}"),
        "{what}: {}",
        a.text
    );
    assert_eq!(a.body["status"], status, "{what}: {}", a.text);
}

/// The JSON Pointers of a problem's `errors`.
fn pointers(a: &Answer) -> Vec<String> {
    a.body["errors"]
        .as_array()
        .map(|e| {
            e.iter()
                .map(|e| e["pointer"].as_str().unwrap_or("?").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Checks `a` is a 400 validation problem naming exactly `want`.
#[track_caller]
fn assert_invalid(a: &Answer, want: &[&str], what: &str) {
    assert_problem(a, 400, "validation", what);
    assert_eq!(pointers(a), want, "{what}: {}", a.text);
}

// ---------------------------------------------------------------------------
// Deliveries

type Headers = Vec<(String, String)>;

/// A fresh delivery id shaped as GitHub's (a UUID).
fn delivery_id() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = now_ms();
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (t >> 16) as u32,
        (t & 0xffff) as u16,
        n & 0xfff,
        std::process::id() & 0xfff,
        n
    )
}

/// `X-Hub-Signature-256` of `body` under `secret`: `sha256=` and the hex
/// HMAC-SHA256 of the raw bytes.
fn github_signature(secret: &str, body: &[u8]) -> String {
    Verification::github().sign(secret.as_bytes(), body, 0)
}

/// The headers GitHub sends with a delivery.
fn github_headers(secret: &str, event: &str, delivery: &str, body: &[u8]) -> Headers {
    [
        ("Content-Type", "application/json".to_owned()),
        ("User-Agent", "GitHub-Hookshot/044aadd".to_owned()),
        ("X-GitHub-Event", event.to_owned()),
        ("X-GitHub-Delivery", delivery.to_owned()),
        ("X-GitHub-Hook-ID", "109948940".to_owned()),
        ("X-Hub-Signature-256", github_signature(secret, body)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// `headers` without `name`.
fn without(headers: &Headers, name: &str) -> Headers {
    headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case(name))
        .cloned()
        .collect()
}

/// `headers` with `name` set to `value`.
fn with(headers: &Headers, name: &str, value: &str) -> Headers {
    let mut h = without(headers, name);
    h.push((name.to_owned(), value.to_owned()));
    h
}

/// POSTs `body` to `/webhooks/<source>` with exactly `headers` and no
/// credential.
async fn deliver(host: &Host, source: &str, headers: &Headers, body: &[u8]) -> Answer {
    deliver_with(&anon_client(), host, source, headers, body).await
}

async fn deliver_with(
    http: &reqwest::Client,
    host: &Host,
    source: &str,
    headers: &Headers,
    body: &[u8],
) -> Answer {
    let mut req = http
        .post(host.url(&format!("/webhooks/{source}")))
        .body(body.to_vec());
    for (k, v) in headers {
        req = req.header(k, v);
    }
    read(req.send().await.unwrap()).await
}

/// Delivers `body` as GitHub event `event` signed with `secret`.
async fn github(host: &Host, secret: &str, event: &str, delivery: &str, body: &[u8]) -> Answer {
    deliver(
        host,
        "github",
        &github_headers(secret, event, delivery, body),
        body,
    )
    .await
}

/// Checks a delivery was taken: 202 (or 200 for a duplicate) with
/// `outcome`; returns the ids of the runs it names.
#[track_caller]
fn assert_taken(a: &Answer, status: u16, outcome: &str, what: &str) -> Vec<String> {
    assert_eq!(a.status, status, "{what}: {}", a.text);
    assert_eq!(a.body["outcome"], outcome, "{what}: {}", a.text);
    assert_eq!(a.body["duplicate"], status == 200, "{what}: {}", a.text);
    let runs: Vec<String> = a.body["runs"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no runs in {}", a.text))
        .iter()
        .map(|r| {
            let id = r["run_id"].as_str().unwrap().to_owned();
            assert_eq!(r["url"], format!("/api/runs/{id}"), "{what}");
            id
        })
        .collect();
    if outcome == "unmatched" {
        assert!(runs.is_empty(), "{what}: {}", a.text);
    }
    runs
}

/// The Stripe-style scheme of the `payments` source: `stripe-signature:
/// t=<unix secs>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
fn stripe_scheme() -> Value {
    json!({"type": "hmac", "header": "stripe-signature", "signature_key": "v1",
           "timestamp_key": "t", "signed": "timestamp_body"})
}

fn stripe_signature(secret: &str, body: &[u8], ts: u64) -> String {
    let v: Verification = serde_json::from_value(stripe_scheme()).unwrap();
    v.sign(secret.as_bytes(), body, ts)
}

fn stripe_headers(signature: &str) -> Headers {
    vec![
        (
            "Content-Type".into(),
            "application/json; charset=utf-8".into(),
        ),
        (
            "User-Agent".into(),
            "Stripe/1.0 (+https://stripe.com/docs/webhooks)".into(),
        ),
        ("Stripe-Signature".into(), signature.into()),
    ]
}

/// A Stripe event body as Stripe sends it; `n` makes it unique.
fn stripe_event(kind: &str, n: u64) -> Vec<u8> {
    json!({
        "id": format!("evt_1PqR2sT3uV4wX5y{n}"),
        "object": "event",
        "api_version": "2024-06-20",
        "created": now_s(),
        "type": kind,
        "livemode": false,
        "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null},
        "data": {"object": {
            "id": format!("in_1PqR2sT3uV4wX5y{n}"), "object": "invoice",
            "amount_paid": 2000, "currency": "usd", "customer": "cus_Q1w2E3r4T5y6",
            "status": "paid"
        }}
    })
    .to_string()
    .into_bytes()
}

/// Registers the `payments` source (Stripe style) with `secrets`.
async fn register_payments(host: &Host, secrets: &[&str]) -> Answer {
    let a = admin(
        host,
        "POST",
        "/api/sources",
        Some(&json!({
            "name": "payments", "kind": "generic", "description": "Stripe",
            "verification": stripe_scheme(), "event_field": "type", "secrets": secrets
        })),
    )
    .await;
    assert_eq!(a.status, 201, "source: {}", a.text);
    a
}

// ---------------------------------------------------------------------------
// Registering workflows, subscriptions, schedules

/// Registers the `echo` agent (`cat`: its output is its input) unless it
/// exists, and workflow `name` with one `echo` step taking `input`.
async fn workflow(host: &Host, name: &str, input: Value, extra: Value) {
    let agent = json!({"name": "echo", "command": ["sh", "-c", "cat"], "timeout_secs": 20,
                       "retry": {"max_attempts": 1}});
    let a = admin(host, "POST", "/api/agents", Some(&agent)).await;
    assert!(a.status == 201 || a.status == 409, "agent: {}", a.text);
    let mut spec =
        json!({"name": name, "steps": [{"id": "echo", "agent": "echo", "input": input}]});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    let a = admin(host, "POST", "/api/workflows", Some(&spec)).await;
    assert_eq!(a.status, 201, "workflow {name}: {}", a.text);
}

/// POSTs `spec` to `/api/<collection>`; expects 201 and its Location.
async fn create(host: &Host, collection: &str, spec: Value) -> Value {
    let a = admin(host, "POST", &format!("/api/{collection}"), Some(&spec)).await;
    assert_eq!(a.status, 201, "{collection}: {}", a.text);
    assert_eq!(
        a.location,
        Some(format!(
            "/api/{collection}/{}",
            spec["name"].as_str().unwrap()
        )),
        "{collection}"
    );
    a.body
}

/// A subscription of `source` events `events` starting `workflow`.
async fn subscribe(
    host: &Host,
    name: &str,
    source: &str,
    events: &[&str],
    workflow: &str,
    extra: Value,
) {
    let mut spec = json!({"name": name, "source": source, "events": events, "workflow": workflow});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    create(host, "subscriptions", spec).await;
}

// ---------------------------------------------------------------------------
// Runs and the store

/// The ids of every run (newest first), optionally of one workflow.
async fn run_ids(host: &Host, workflow: Option<&str>) -> Vec<String> {
    let path = match workflow {
        Some(w) => format!("/api/runs?limit=100&workflow={w}"),
        None => "/api/runs?limit=100".to_owned(),
    };
    let a = admin(host, "GET", &path, None).await;
    assert_eq!(a.status, 200, "{}", a.text);
    a.body["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn run(host: &Host, id: &str) -> Value {
    let a = admin(host, "GET", &format!("/api/runs/{id}"), None).await;
    assert_eq!(a.status, 200, "{}", a.text);
    a.body
}

/// Polls run `id` until it is over; returns it.
async fn finished(host: &Host, worker: &Worker, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = run(host, id).await;
        if ["succeeded", "failed", "cancelled", "timed_out"]
            .contains(&v["status"].as_str().unwrap())
        {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "run {id} is not over after 30 s: {v:#}\nhost: {}\nworker: {}",
            host.stderr(),
            worker.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every row of the host's store, as text.
fn rows(host: &Host) -> BTreeMap<String, Vec<u8>> {
    let db = rusqlite::Connection::open_with_flags(
        host.state_dir.join("sqlite_key_value.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = db
        .prepare("SELECT store, key, value FROM spin_key_value")
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            format!("{}/{}", r.get::<_, String>(0)?, r.get::<_, String>(1)?),
            r.get::<_, Vec<u8>>(2)?,
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// The rows a refused request must not change: all but counters and the
/// metrics' series indexes (a refusal is counted by design) and rate-limit
/// buckets (a failed
/// verification spends the client address's budget by design), with API
/// keys' `last_used_ms` left out (authenticating refreshes it).
fn state(host: &Host) -> BTreeMap<String, Vec<u8>> {
    rows(host)
        .into_iter()
        .filter(|(k, _)| {
            let key = k.split_once('/').map_or(k.as_str(), |(_, k)| k);
            !key.starts_with("counter:")
                && !key.starts_with("ratelimit:")
                && !key.starts_with("metrics:")
        })
        .map(|(k, v)| {
            if k.contains("/apikey:")
                && let Ok(Value::Object(mut doc)) = serde_json::from_slice::<Value>(&v)
            {
                doc.remove("last_used_ms");
                return (k, Value::Object(doc).to_string().into_bytes());
            }
            (k, v)
        })
        .collect()
}

#[track_caller]
fn assert_unchanged(before: &BTreeMap<String, Vec<u8>>, host: &Host, what: &str) {
    let after = state(host);
    let changed: BTreeSet<&String> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .collect();
    assert!(changed.is_empty(), "{what} changed the store: {changed:?}");
}

/// Everything the host and its components logged.
fn logs(host: &Host) -> String {
    let mut logs = host.stderr() + &host.stdout();
    for entry in std::fs::read_dir(host.state_dir.join("logs"))
        .into_iter()
        .flatten()
    {
        logs += &std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default();
    }
    logs
}

/// A counter of the store (`counter:<name>`), 0 if absent.
/// A count as the metrics keep it: `schedule_fires:<outcome>` or
/// `webhooks:<source>:<outcome>`.
fn counter(host: &Host, name: &str) -> i64 {
    use spindle_core::metrics::{SCHEDULE_FIRES, WEBHOOKS};
    let key = match name.split(':').collect::<Vec<_>>()[..] {
        ["schedule_fires", outcome] => SCHEDULE_FIRES.count_key(&SCHEDULE_FIRES.series(&[outcome])),
        ["webhooks", source, outcome] => WEBHOOKS.count_key(&WEBHOOKS.series(&[source, outcome])),
        _ => panic!("no such count: {name}"),
    };
    let Some((_, bytes)) = rows(host)
        .into_iter()
        .find(|(k, _)| k.split_once('/').is_some_and(|(_, k)| k == key))
    else {
        return 0;
    };
    let text = bytes.iter().all(u8::is_ascii_digit) || bytes.first() == Some(&b'-');
    if bytes.len() == 8 && !text {
        i64::from_le_bytes(bytes.try_into().unwrap())
    } else {
        String::from_utf8(bytes).unwrap().trim().parse().unwrap()
    }
}

// ---------------------------------------------------------------------------
// 1. GitHub

/// The tests sign as GitHub does (its published example), and the host
/// refuses to start with that example's secret: 26 bytes is below the 32
/// every secret variable needs. (The core unit tests verify the example
/// itself against `Verification::verify`.)
#[test]
fn githubs_example_signs_as_the_tests_do_but_its_secret_is_too_short_for_the_host() {
    assert_eq!(
        github_signature(GITHUB_EXAMPLE_SECRET, b"Hello, World!"),
        GITHUB_EXAMPLE_SIGNATURE
    );
    let err = match base(Some(0))
        .env("SPIN_VARIABLE_GITHUB_WEBHOOK_SECRET", GITHUB_EXAMPLE_SECRET)
        .try_start()
    {
        Ok(_) => panic!("the host started with a 26-byte github_webhook_secret"),
        Err(e) => e,
    };
    assert!(
        err.to_ascii_lowercase().contains("github_webhook_secret") && err.contains("26 bytes"),
        "{err}"
    );
    assert!(
        !err.contains(GITHUB_EXAMPLE_SECRET),
        "the secret is echoed: {err}"
    );
}

/// Blanks do not get a short secret past the host's start-up check: it
/// checks the value as components read it, trimmed. (Under Spin, where
/// nothing checks at start-up, the webhook component refuses a weak
/// built-in secret itself with a 500 configuration problem.)
#[tokio::test(flavor = "multi_thread")]
async fn a_builtin_secret_too_short_once_trimmed_stops_the_host() {
    let padded = format!("    {GITHUB_EXAMPLE_SECRET}      ");
    assert!(padded.len() >= 32);
    let err = match base(Some(0))
        .env("SPIN_VARIABLE_BUILDER_WEBHOOK_SECRET", &padded)
        .try_start()
    {
        Ok(_) => panic!("the host started with a padded 26-byte builder_webhook_secret"),
        Err(e) => e,
    };
    assert!(
        err.to_ascii_lowercase().contains("builder_webhook_secret") && err.contains("26 bytes"),
        "{err}"
    );
    assert!(
        !err.contains(GITHUB_EXAMPLE_SECRET),
        "the secret is echoed: {err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn github_deliveries_start_the_subscribed_workflows_and_a_worker_runs_them() {
    let app = host_with_worker();
    let h = &app.host;
    workflow(
        h,
        "on-push",
        json!({"repo": "{{ trigger.payload.repository.full_name }}", "ref": "{{ trigger.payload.ref }}"}),
        json!({}),
    )
    .await;
    workflow(
        h,
        "on-pr",
        json!({"number": "{{ trigger.payload.number }}", "action": "{{ trigger.payload.action }}"}),
        json!({}),
    )
    .await;
    workflow(
        h,
        "on-ci",
        json!({"branch": "{{ trigger.payload.branch }}"}),
        json!({}),
    )
    .await;
    subscribe(
        h,
        "push-branches",
        "github",
        &["push"],
        "on-push",
        json!({"filters": [{"field": "ref", "glob": "refs/heads/*"},
                           {"field": "repository.full_name", "equals": REPO}]}),
    )
    .await;
    subscribe(
        h,
        "pr-opened",
        "github",
        &["pull_request.opened"],
        "on-pr",
        json!({}),
    )
    .await;
    // A disabled subscription matches nothing.
    subscribe(
        h,
        "pr-any-disabled",
        "github",
        &["pull_request.*", "push"],
        "on-pr",
        json!({"enabled": false}),
    )
    .await;
    subscribe(
        h,
        "ci-green",
        "github",
        &["workflow_run.completed"],
        "on-ci",
        json!({"filters": [{"field": "workflow_run.conclusion", "equals": "success"}],
               "payload": {"type": "fields", "fields": {"run_id": "workflow_run.id",
                 "branch": "workflow_run.head_branch", "repo": "repository.full_name"}}}),
    )
    .await;

    // ping: answered, starts nothing.
    let a = github(h, GH_SECRET, "ping", &delivery_id(), PING).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["pong"], true, "{}", a.text);
    assert_eq!(a.body["hook_id"], 109948940);
    assert_eq!(a.body["zen"], "Anything added dilutes everything else.");

    // Deliveries no subscription wants: 202, recorded, nothing started.
    let mut unmatched_sync = String::new();
    for (event, body, what) in [
        (
            "push",
            PUSH_TAG,
            "a tag push (the filter wants refs/heads/*)",
        ),
        ("issues", ISSUE_OPENED, "an event nobody subscribed to"),
        (
            "pull_request",
            PR_SYNC,
            "pull_request.synchronize (only opened is subscribed)",
        ),
    ] {
        let d = delivery_id();
        let a = github(h, GH_SECRET, event, &d, body).await;
        assert_taken(&a, 202, "unmatched", what);
        assert_eq!(a.body["delivery"], d.as_str(), "{what}");
        assert_eq!(a.body["event"], event, "{what}");
        if body == PR_SYNC {
            unmatched_sync = d;
        }
    }
    assert_eq!(run_ids(h, None).await, Vec::<String>::new());

    // A branch push of the repository starts on-push with the whole body.
    let d = delivery_id();
    let a = github(h, GH_SECRET, "push", &d, PUSH_BRANCH).await;
    let runs = assert_taken(&a, 202, "started", "branch push");
    assert_eq!(runs.len(), 1, "{}", a.text);
    assert_eq!(
        (&a.body["source"], &a.body["event"], &a.body["action"]),
        (&json!("github"), &json!("push"), &Value::Null)
    );
    assert_eq!(a.body["runs"][0]["subscription"], "push-branches");
    assert_eq!(a.body["runs"][0]["workflow"], "on-push");
    let push_run = runs[0].clone();
    let v = run(h, &push_run).await;
    assert_eq!(v["workflow"], "on-push");
    assert_eq!(v["trigger"]["kind"], "webhook", "{v:#}");
    assert_eq!(v["trigger"]["actor"], "webhook:github", "{v:#}");
    assert_eq!(
        v["trigger"]["payload"],
        serde_json::from_slice::<Value>(PUSH_BRANCH).unwrap()
    );

    // pull_request.opened starts on-pr.
    let a = github(h, GH_SECRET, "pull_request", &delivery_id(), PR_OPENED).await;
    let runs = assert_taken(&a, 202, "started", "pull_request.opened");
    assert_eq!(a.body["action"], "opened");
    assert_eq!(runs.len(), 1);
    let opened_run = runs[0].clone();

    // Once subscribed, synchronize starts on-pr too; the earlier
    // synchronize delivery, sent again, is remembered as unmatched (a
    // delivery is handled once: a subscription made after it does not
    // reach back), and so is its body under a new delivery id.
    subscribe(
        h,
        "pr-sync",
        "github",
        &["pull_request.synchronize"],
        "on-pr",
        json!({}),
    )
    .await;
    for d in [unmatched_sync.clone(), delivery_id()] {
        let a = github(h, GH_SECRET, "pull_request", &d, PR_SYNC).await;
        assert_taken(&a, 200, "unmatched", "the earlier synchronize again");
        assert_eq!(a.body["delivery"], unmatched_sync.as_str(), "{}", a.text);
    }
    assert_eq!(
        run_ids(h, None).await.into_iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([opened_run.clone(), push_run.clone()])
    );
    let a = github(
        h,
        GH_SECRET,
        "pull_request",
        &delivery_id(),
        &another_commit(PR_SYNC, 1),
    )
    .await;
    let runs = assert_taken(&a, 202, "started", "pull_request.synchronize");
    assert_eq!(a.body["runs"][0]["subscription"], "pr-sync");
    let sync_run = runs[0].clone();

    // workflow_run.completed gets the selected fields only.
    let a = github(h, GH_SECRET, "workflow_run", &delivery_id(), RUN_COMPLETED).await;
    let runs = assert_taken(&a, 202, "started", "workflow_run.completed");
    let ci_run = runs[0].clone();
    assert_eq!(
        run(h, &ci_run).await["trigger"]["payload"],
        json!({"run_id": 289782451, "branch": "master", "repo": "octo-org/octo-repo"})
    );

    let all: BTreeSet<String> = run_ids(h, None).await.into_iter().collect();
    let want: BTreeSet<String> = [&push_run, &opened_run, &sync_run, &ci_run]
        .into_iter()
        .cloned()
        .collect();
    assert_eq!(all, want);

    // The worker runs them, with the webhook payloads in their inputs.
    for (id, output) in [
        (&push_run, json!({"repo": REPO, "ref": "refs/heads/master"})),
        (&opened_run, json!({"number": 2, "action": "opened"})),
        (&sync_run, json!({"number": 2, "action": "synchronize"})),
        (&ci_run, json!({"branch": "master"})),
    ] {
        let v = finished(h, &app.worker, id).await;
        assert_eq!(v["status"], "succeeded", "{v:#}");
        assert_eq!(v["steps"][0]["output"], output, "{v:#}");
    }
    assert_eq!(counter(h, "webhooks:github:started"), 4);
    assert_eq!(counter(h, "webhooks:github:unmatched"), 3);
    assert_eq!(counter(h, "webhooks:github:duplicate"), 2);
    assert_eq!(counter(h, "webhooks:github:ping"), 1);
}

// ---------------------------------------------------------------------------
// 2. Refusals

#[tokio::test(flavor = "multi_thread")]
async fn each_refusal_has_its_status_and_problem_type_and_starts_nothing() {
    let h = &host(Some(0), &[("SPIN_VARIABLE_WEBHOOK_MAX_BODY", "65536")]);
    workflow(h, "anything", json!({}), json!({})).await;
    // Any delivery that got through would start a run.
    subscribe(h, "all-github", "github", &["*"], "anything", json!({})).await;
    register_payments(h, &[PAY_SECRET]).await;
    subscribe(h, "all-payments", "payments", &["*"], "anything", json!({})).await;
    let a = admin(
        h,
        "POST",
        "/api/sources",
        Some(
            &json!({"name": "gh-small", "kind": "github", "secrets": [GH_SECRET],
                     "max_body_bytes": 2048}),
        ),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text);
    subscribe(h, "all-small", "gh-small", &["*"], "anything", json!({})).await;

    let before = state(h);
    let good = github_headers(GH_SECRET, "push", &delivery_id(), PUSH_BRANCH);
    let mut big = br#"{"pad":""#.to_vec();
    big.extend(std::iter::repeat_n(b'x', 70_000));
    big.extend(br#""}"#);
    let not_json = b"{\"ref\": \"refs/heads/main\",".to_vec();
    let form = b"payload=%7B%22ref%22%3A%22refs%2Fheads%2Fmain%22%7D".to_vec();
    let ts = now_s();
    let pay_body = stripe_event("invoice.paid", 1);

    type Case = (
        &'static str,
        &'static str,
        Headers,
        Vec<u8>,
        u16,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "a ping signed with another secret",
            "github",
            github_headers(GH_STRANGER, "ping", &delivery_id(), PING),
            PING.to_vec(),
            401,
            "bad-signature",
        ),
        (
            "no signature header",
            "github",
            without(&good, "X-Hub-Signature-256"),
            PUSH_BRANCH.to_vec(),
            401,
            "missing-signature",
        ),
        (
            "an empty signature header",
            "github",
            with(&good, "X-Hub-Signature-256", ""),
            PUSH_BRANCH.to_vec(),
            401,
            "missing-signature",
        ),
        (
            "signed with another secret",
            "github",
            with(
                &good,
                "X-Hub-Signature-256",
                &github_signature(GH_STRANGER, PUSH_BRANCH),
            ),
            PUSH_BRANCH.to_vec(),
            401,
            "bad-signature",
        ),
        (
            // Every test host gets one from the harness; these hosts set
            // their own after it, and the later setting wins.
            "signed with the harness's github_webhook_secret, overridden here",
            "github",
            with(
                &good,
                "X-Hub-Signature-256",
                &github_signature(TEST_GITHUB_WEBHOOK_SECRET, PUSH_BRANCH),
            ),
            PUSH_BRANCH.to_vec(),
            401,
            "bad-signature",
        ),
        (
            "a signature of another body",
            "github",
            with(
                &good,
                "X-Hub-Signature-256",
                &github_signature(GH_SECRET, PUSH_TAG),
            ),
            PUSH_BRANCH.to_vec(),
            401,
            "bad-signature",
        ),
        (
            "the body changed by one byte",
            "github",
            good.clone(),
            {
                let mut b = PUSH_BRANCH.to_vec();
                b[2] ^= 1;
                b
            },
            401,
            "bad-signature",
        ),
        (
            "a signature that is not hex",
            "github",
            with(
                &good,
                "X-Hub-Signature-256",
                &format!("sha256={}", "zz".repeat(32)),
            ),
            PUSH_BRANCH.to_vec(),
            401,
            "bad-signature",
        ),
        (
            "the SHA-1 signature in the SHA-256 header",
            "github",
            with(
                &good,
                "X-Hub-Signature-256",
                &github_signature(GH_SECRET, PUSH_BRANCH).replace("sha256=", "sha1="),
            ),
            PUSH_BRANCH.to_vec(),
            401,
            "bad-signature",
        ),
        (
            "a body over webhook_max_body",
            "github",
            github_headers(GH_SECRET, "push", &delivery_id(), &big),
            big.clone(),
            413,
            "too-large",
        ),
        (
            "a body over the source's max_body_bytes",
            "gh-small",
            github_headers(GH_SECRET, "push", &delivery_id(), PUSH_BRANCH),
            PUSH_BRANCH.to_vec(),
            413,
            "too-large",
        ),
        (
            "a source nobody registered",
            "gitlab",
            good.clone(),
            PUSH_BRANCH.to_vec(),
            404,
            "unknown-source",
        ),
        (
            "builder without builder_webhook_secret",
            "builder",
            vec![
                ("Content-Type".into(), "application/json".into()),
                ("x-spindle-webhook-token".into(), BUILDER_SECRET.into()),
            ],
            BUILDER_PUBLISH.to_vec(),
            404,
            "unknown-source",
        ),
        (
            "a source name that cannot be",
            "GitHub",
            good.clone(),
            PUSH_BRANCH.to_vec(),
            404,
            "unknown-source",
        ),
        (
            "a signed body that is not JSON",
            "github",
            github_headers(GH_SECRET, "push", &delivery_id(), &not_json),
            not_json.clone(),
            400,
            "malformed-payload",
        ),
        (
            "a GitHub delivery without X-GitHub-Event",
            "github",
            without(&good, "X-GitHub-Event"),
            PUSH_BRANCH.to_vec(),
            400,
            "malformed-payload",
        ),
        (
            "a form-encoded delivery",
            "github",
            with(
                &github_headers(GH_SECRET, "push", &delivery_id(), &form),
                "Content-Type",
                "application/x-www-form-urlencoded",
            ),
            form.clone(),
            415,
            "media-type",
        ),
        (
            "a Stripe delivery signed ten minutes ago",
            "payments",
            stripe_headers(&stripe_signature(PAY_SECRET, &pay_body, ts - 600)),
            pay_body.clone(),
            401,
            "stale-timestamp",
        ),
        (
            "a Stripe delivery signed ten minutes ahead",
            "payments",
            stripe_headers(&stripe_signature(PAY_SECRET, &pay_body, ts + 600)),
            pay_body.clone(),
            401,
            "stale-timestamp",
        ),
        (
            "a Stripe delivery without t=",
            "payments",
            stripe_headers(
                stripe_signature(PAY_SECRET, &pay_body, ts)
                    .split(',')
                    .find(|p| p.starts_with("v1="))
                    .unwrap(),
            ),
            pay_body.clone(),
            401,
            "missing-timestamp",
        ),
        (
            "a Stripe delivery with a timestamp that is not a number",
            "payments",
            stripe_headers(&stripe_signature(PAY_SECRET, &pay_body, ts).replacen(
                &format!("t={ts}"),
                "t=yesterday",
                1,
            )),
            pay_body.clone(),
            401,
            "stale-timestamp",
        ),
        (
            "a Stripe delivery signed with another secret",
            "payments",
            stripe_headers(&stripe_signature(PAY_NEXT, &pay_body, ts)),
            pay_body.clone(),
            401,
            "bad-signature",
        ),
        (
            "a Stripe delivery without its header",
            "payments",
            vec![("Content-Type".into(), "application/json".into())],
            pay_body.clone(),
            401,
            "missing-signature",
        ),
    ];
    for (what, source, headers, body, status, slug) in &cases {
        let a = deliver(h, source, headers, body).await;
        assert_problem(&a, *status, slug, what);
        assert_unchanged(&before, h, what);
    }
    let a = deliver(h, "github", &without(&good, "X-GitHub-Event"), PUSH_BRANCH).await;
    assert_eq!(pointers(&a), ["/headers/x-github-event"], "{}", a.text);

    // A body announced larger than the limit is refused from its headers.
    let status = oversized_status(
        &h.base,
        "POST",
        "/webhooks/github",
        &[
            ("content-type", "application/json"),
            ("x-github-event", "push"),
        ],
        10 << 20,
    );
    assert_eq!(status, 413);
    assert_unchanged(&before, h, "an announced 10 MiB body");

    // Each refusal is counted under its own label.
    for (label, at_least) in [
        ("github:missing-signature", 2),
        ("github:bad-signature", 7),
        ("github:too-large", 2),
        ("gh-small:too-large", 1),
        ("unknown:unknown-source", 3),
        ("github:malformed", 3),
        ("payments:stale-timestamp", 3),
        ("payments:missing-timestamp", 1),
        ("payments:bad-signature", 1),
        ("payments:missing-signature", 1),
    ] {
        let n = counter(h, &format!("webhooks:{label}"));
        assert!(n >= at_least, "counter webhooks:{label} is {n}");
    }

    // Replay: a delivery id seen before, with other content, both validly
    // signed.
    let d = delivery_id();
    let a = github(h, GH_SECRET, "push", &d, PUSH_BRANCH).await;
    let runs = assert_taken(&a, 202, "started", "the original delivery");
    assert_eq!(run_ids(h, None).await, runs);
    let before = state(h);
    let a = github(h, GH_SECRET, "push", &d, PUSH_TAG).await;
    assert_problem(&a, 409, "replay", "the same delivery id with another body");
    let a = github(h, GH_SECRET, "pull_request", &d, PR_OPENED).await;
    assert_problem(&a, 409, "replay", "the same delivery id with another event");
    assert_unchanged(&before, h, "a replay");
    assert_eq!(run_ids(h, None).await, runs);
    assert_eq!(counter(h, "webhooks:github:replay"), 2);
}

// ---------------------------------------------------------------------------
// 3. Redelivery and concurrent copies

#[tokio::test(flavor = "multi_thread")]
async fn a_redelivery_starts_nothing_and_a_hundred_concurrent_copies_start_one_run() {
    let h = &host(Some(0), &[]);
    workflow(h, "on-push", json!({}), json!({})).await;
    subscribe(h, "pushes", "github", &["push"], "on-push", json!({})).await;
    workflow(h, "on-pr", json!({}), json!({})).await;
    subscribe(
        h,
        "prs",
        "github",
        &["pull_request.opened"],
        "on-pr",
        json!({}),
    )
    .await;

    let d = delivery_id();
    let first = github(h, GH_SECRET, "push", &d, PUSH_BRANCH).await;
    let runs = assert_taken(&first, 202, "started", "first delivery");
    let before = state(h);
    for attempt in 0..2 {
        let again = github(h, GH_SECRET, "push", &d, PUSH_BRANCH).await;
        let again_runs = assert_taken(&again, 200, "started", "redelivery");
        assert_eq!(again_runs, runs, "redelivery {attempt}");
        assert_eq!(again.body["delivery"], d.as_str());
    }
    assert_unchanged(&before, h, "a redelivery");
    assert_eq!(run_ids(h, None).await, runs);

    // A hundred copies of one delivery at once.
    let d = delivery_id();
    let headers = github_headers(GH_SECRET, "pull_request", &d, PR_OPENED);
    let http = anon_client();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let (http, url, headers) = (http.clone(), h.url("/webhooks/github"), headers.clone());
        set.spawn(async move {
            let mut req = http.post(url).body(PR_OPENED.to_vec());
            for (k, v) in &headers {
                req = req.header(k, v);
            }
            read(req.send().await.unwrap()).await
        });
    }
    let mut created = 0;
    let mut named = BTreeSet::new();
    while let Some(a) = set.join_next().await {
        let a = a.unwrap();
        let status = a.status;
        assert!(status == 202 || status == 200, "{}", a.text);
        created += usize::from(status == 202);
        let ids = assert_taken(&a, status, "started", "a concurrent copy");
        assert_eq!(ids.len(), 1, "{}", a.text);
        named.extend(ids);
    }
    assert_eq!(created, 1, "exactly one copy starts the run");
    assert_eq!(named.len(), 1, "every copy names the same run: {named:?}");
    let prs = run_ids(h, Some("on-pr")).await;
    assert_eq!(prs, named.into_iter().collect::<Vec<_>>());
    assert_eq!(run_ids(h, None).await.len(), 2);
    assert_eq!(counter(h, "webhooks:github:duplicate"), 2 + 99);
}

/// The signature covers the body, not `X-GitHub-Delivery` or
/// `X-GitHub-Event`: a captured delivery (body and signature) resent under
/// a fresh delivery id, or under another event name too, is the delivery
/// it was, and starts nothing, however many copies arrive at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_captured_github_delivery_resent_under_a_fresh_delivery_id_starts_nothing() {
    let h = &host(Some(0), &[]);
    workflow(h, "on-push", json!({}), json!({})).await;
    subscribe(h, "pushes", "github", &["push"], "on-push", json!({})).await;
    workflow(h, "on-pr", json!({}), json!({})).await;
    subscribe(h, "prs", "github", &["pull_request"], "on-pr", json!({})).await;

    let d = delivery_id();
    let captured = github_headers(GH_SECRET, "push", &d, PUSH_BRANCH);
    let a = deliver(h, "github", &captured, PUSH_BRANCH).await;
    let runs = assert_taken(&a, 202, "started", "the original delivery");
    assert_eq!(runs.len(), 1, "{}", a.text);

    let before = state(h);
    let fresh = |event: &str| {
        with(
            &with(&captured, "X-GitHub-Delivery", &delivery_id()),
            "X-GitHub-Event",
            event,
        )
    };
    for (headers, what) in [
        (fresh("push"), "the captured delivery under a fresh id"),
        (fresh("push"), "and again under another"),
        (
            fresh("pull_request"),
            "under a fresh id and another event name",
        ),
    ] {
        let a = deliver(h, "github", &headers, PUSH_BRANCH).await;
        assert_eq!(assert_taken(&a, 200, "started", what), runs, "{what}");
        // The answer is the first delivery's.
        assert_eq!(a.body["delivery"], d.as_str(), "{what}: {}", a.text);
        assert_eq!(a.body["event"], "push", "{what}: {}", a.text);
    }
    // Twenty copies at once, each under its own fresh id.
    let http = anon_client();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (http, url, headers) = (http.clone(), h.url("/webhooks/github"), fresh("push"));
        set.spawn(async move {
            let mut req = http.post(url).body(PUSH_BRANCH.to_vec());
            for (k, v) in &headers {
                req = req.header(k, v);
            }
            read(req.send().await.unwrap()).await
        });
    }
    while let Some(a) = set.join_next().await {
        let a = a.unwrap();
        assert_eq!(
            assert_taken(&a, 200, "started", "a concurrent copy under a fresh id"),
            runs
        );
    }
    // Each fresh id is remembered with the body it first came with (so
    // the same id with another body is a replay) until the window ends;
    // nothing else changes.
    let after = state(h);
    let changed: BTreeSet<&String> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .filter(|k| !k.contains("/delivery-id:") && !k.contains("/expire:"))
        .collect();
    assert!(
        changed.is_empty(),
        "the captured delivery resent changed: {changed:?}"
    );
    assert_eq!(run_ids(h, None).await, runs);
    assert_eq!(counter(h, "webhooks:github:duplicate"), 3 + 20);
    assert_eq!(counter(h, "webhooks:github:started"), 1);

    // The original id with another body is still a replay; another push
    // under a fresh id is a delivery of its own.
    let a = github(h, GH_SECRET, "push", &d, &another_commit(PUSH_BRANCH, 1)).await;
    assert_problem(&a, 409, "replay", "the captured id with another body");
    let a = github(
        h,
        GH_SECRET,
        "push",
        &delivery_id(),
        &another_commit(PUSH_BRANCH, 1),
    )
    .await;
    let next = assert_taken(&a, 202, "started", "another push");
    assert_ne!(next, runs);
    assert_eq!(run_ids(h, None).await.len(), 2);
}

/// A source's budget (`rate_limit_webhook`) caps verified deliveries; a
/// client address's write budget (`rate_limit_write`) caps failed
/// verifications, so a flood of forgeries meets 429s.
#[tokio::test(flavor = "multi_thread")]
async fn deliveries_beyond_a_sources_budget_and_forgeries_beyond_an_addresses_are_refused() {
    let h = &host(
        Some(0),
        &[
            ("SPIN_VARIABLE_RATE_LIMIT_WEBHOOK", "3"),
            ("SPIN_VARIABLE_RATE_LIMIT_WRITE", "5"),
        ],
    );
    workflow(h, "anything", json!({}), json!({})).await;
    subscribe(h, "all-github", "github", &["*"], "anything", json!({})).await;
    for i in 0..3 {
        let body = another_commit(PUSH_BRANCH, i);
        let a = github(h, GH_SECRET, "push", &delivery_id(), &body).await;
        assert_taken(&a, 202, "started", &format!("delivery {i}"));
    }
    let before = state(h);
    let body = another_commit(PUSH_BRANCH, 3);
    let a = github(h, GH_SECRET, "push", &delivery_id(), &body).await;
    assert_problem(&a, 429, "rate-limited", "a fourth delivery in a minute");
    assert_unchanged(&before, h, "a delivery over the source's budget");
    assert_eq!(counter(h, "webhooks:github:rate-limited"), 1);

    for i in 0..5 {
        let a = github(h, GH_STRANGER, "push", &delivery_id(), PUSH_BRANCH).await;
        assert_problem(&a, 401, "bad-signature", &format!("forgery {i}"));
    }
    let a = github(h, GH_STRANGER, "push", &delivery_id(), PUSH_BRANCH).await;
    assert_problem(&a, 429, "rate-limited", "a sixth forgery in a minute");
    assert_unchanged(&before, h, "forgeries");
    assert_eq!(run_ids(h, None).await.len(), 3);
}

// ---------------------------------------------------------------------------
// 4. Secret rotation

#[tokio::test(flavor = "multi_thread")]
async fn both_active_secrets_verify_while_a_secret_is_rotated() {
    let h = &host(
        Some(0),
        &[("SPIN_VARIABLE_GITHUB_WEBHOOK_SECRET_PREVIOUS", GH_PREVIOUS)],
    );
    workflow(h, "anything", json!({}), json!({})).await;
    subscribe(h, "all-github", "github", &["*"], "anything", json!({})).await;

    // Built-in GitHub source: github_webhook_secret and _previous.
    for (n, secret) in [GH_SECRET, GH_PREVIOUS].into_iter().enumerate() {
        let body = another_commit(PUSH_BRANCH, n as u64);
        let a = github(h, secret, "push", &delivery_id(), &body).await;
        assert_taken(&a, 202, "started", "a delivery under an active secret");
    }
    let before = state(h);
    let a = github(h, GH_STRANGER, "push", &delivery_id(), PUSH_BRANCH).await;
    assert_problem(&a, 401, "bad-signature", "a third secret");
    assert_unchanged(&before, h, "a third secret");
    assert_eq!(run_ids(h, None).await.len(), 2);

    // A registered source rotated through the API.
    register_payments(h, &[PAY_SECRET]).await;
    subscribe(h, "all-payments", "payments", &["*"], "anything", json!({})).await;
    let n = AtomicU64::new(100);
    let pay = |secret: &'static str| {
        let body = stripe_event("invoice.paid", n.fetch_add(1, Ordering::Relaxed));
        async move {
            let sig = stripe_signature(secret, &body, now_s());
            deliver(h, "payments", &stripe_headers(&sig), &body).await
        }
    };
    assert_taken(&pay(PAY_SECRET).await, 202, "started", "the first secret");
    assert_problem(
        &pay(PAY_NEXT).await,
        401,
        "bad-signature",
        "the next secret, too early",
    );

    let a = admin(
        h,
        "PUT",
        "/api/sources/payments",
        Some(
            &json!({"kind": "generic", "verification": stripe_scheme(), "event_field": "type",
                     "secrets": [PAY_NEXT, PAY_SECRET]}),
        ),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["secrets"], 2);
    for secret in [PAY_NEXT, PAY_SECRET] {
        assert_taken(&pay(secret).await, 202, "started", "while rotating");
    }

    let a = admin(
        h,
        "PUT",
        "/api/sources/payments",
        Some(
            &json!({"name": "payments", "kind": "generic", "verification": stripe_scheme(),
                     "event_field": "type", "secrets": [PAY_NEXT]}),
        ),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["secrets"], 1);
    assert_problem(
        &pay(PAY_SECRET).await,
        401,
        "bad-signature",
        "the retired secret",
    );
    assert_taken(&pay(PAY_NEXT).await, 202, "started", "the new secret");

    // An update that sends no secrets keeps the stored one.
    let a = admin(
        h,
        "PUT",
        "/api/sources/payments",
        Some(
            &json!({"kind": "generic", "verification": stripe_scheme(), "event_field": "type",
                     "description": "Stripe, rotated"}),
        ),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["secrets"], 1);
    assert_taken(
        &pay(PAY_NEXT).await,
        202,
        "started",
        "after an update without secrets",
    );
    assert_eq!(run_ids(h, None).await.len(), 2 + 5);
}

// ---------------------------------------------------------------------------
// 5. Builder.io

#[tokio::test(flavor = "multi_thread")]
async fn builder_publish_starts_the_subscribed_workflow_and_unpublish_does_not() {
    let h = &host(
        Some(0),
        &[
            ("SPIN_VARIABLE_BUILDER_WEBHOOK_SECRET", BUILDER_SECRET),
            (
                "SPIN_VARIABLE_BUILDER_WEBHOOK_SECRET_PREVIOUS",
                BUILDER_PREVIOUS,
            ),
        ],
    );
    workflow(
        h,
        "publish-page",
        json!({"url": "{{ trigger.payload.newValue.data.url }}"}),
        json!({}),
    )
    .await;
    subscribe(
        h,
        "pages",
        "builder",
        &["page.publish"],
        "publish-page",
        json!({}),
    )
    .await;
    let headers = |token: &str| -> Headers {
        vec![
            ("Content-Type".into(), "application/json".into()),
            ("User-Agent".into(), "Builder.io Webhooks".into()),
            ("x-spindle-webhook-token".into(), token.into()),
        ]
    };

    let a = deliver(h, "builder", &headers(BUILDER_SECRET), BUILDER_PUBLISH).await;
    let runs = assert_taken(&a, 202, "started", "publish");
    assert_eq!(
        (&a.body["event"], &a.body["action"]),
        (&json!("page"), &json!("publish"))
    );
    assert_eq!(runs.len(), 1);
    let v = run(h, &runs[0]).await;
    assert_eq!(v["workflow"], "publish-page");
    assert_eq!(v["trigger"]["kind"], "webhook");
    assert_eq!(v["trigger"]["actor"], "webhook:builder");
    assert_eq!(
        v["trigger"]["payload"],
        serde_json::from_slice::<Value>(BUILDER_PUBLISH).unwrap()
    );

    // Builder.io sends no delivery id: the same body is the same delivery.
    let before = state(h);
    let a = deliver(h, "builder", &headers(BUILDER_SECRET), BUILDER_PUBLISH).await;
    assert_eq!(
        assert_taken(&a, 200, "started", "the same publish again"),
        runs
    );
    assert_unchanged(&before, h, "the same publish again");

    let a = deliver(h, "builder", &headers(BUILDER_SECRET), BUILDER_UNPUBLISH).await;
    assert_taken(&a, 202, "unmatched", "unpublish");
    assert_eq!(a.body["action"], "unpublish");
    assert_eq!(run_ids(h, None).await, runs);

    // Refusals.
    let before = state(h);
    for (what, hs, slug) in [
        ("a wrong token", headers(GH_SECRET), "bad-signature"),
        (
            "the token with a prefix",
            headers(&format!("Bearer {BUILDER_SECRET}")),
            "bad-signature",
        ),
        (
            "a token one byte short",
            headers(&BUILDER_SECRET[1..]),
            "bad-signature",
        ),
        (
            "no token header",
            without(&headers(BUILDER_SECRET), "x-spindle-webhook-token"),
            "missing-signature",
        ),
        (
            "the token in another header",
            with(
                &without(&headers(BUILDER_SECRET), "x-spindle-webhook-token"),
                "authorization",
                BUILDER_SECRET,
            ),
            "missing-signature",
        ),
    ] {
        let a = deliver(h, "builder", &hs, BUILDER_PUBLISH).await;
        assert_problem(&a, 401, slug, what);
        assert_unchanged(&before, h, what);
    }
    // A publish body without its model name is malformed.
    let a = deliver(
        h,
        "builder",
        &headers(BUILDER_SECRET),
        br#"{"operation":"publish"}"#,
    )
    .await;
    assert_problem(&a, 400, "malformed-payload", "no modelName");
    assert_unchanged(&before, h, "no modelName");

    // The previous secret is accepted too (another publish of the page).
    let mut republish: Value = serde_json::from_slice(BUILDER_PUBLISH).unwrap();
    republish["newValue"]["lastUpdated"] = json!(1717300000000u64);
    republish["previousValue"] =
        serde_json::from_slice::<Value>(BUILDER_PUBLISH).unwrap()["newValue"].clone();
    let body = serde_json::to_vec(&republish).unwrap();
    let a = deliver(h, "builder", &headers(BUILDER_PREVIOUS), &body).await;
    let second = assert_taken(&a, 202, "started", "a publish under the previous secret");
    assert_eq!(run_ids(h, None).await.len(), 2);
    assert_ne!(second, runs);
}

// ---------------------------------------------------------------------------
// 6. A Stripe-style generic source

#[tokio::test(flavor = "multi_thread")]
async fn a_stripe_style_source_verifies_timestamped_deliveries_and_never_shows_its_secret() {
    let h = &host(Some(0), &[]);
    let mut answers = Vec::new();
    let a = register_payments(h, &[PAY_SECRET]).await;
    assert_eq!(a.location.as_deref(), Some("/api/sources/payments"));
    answers.push(a.text.clone());
    for a in [
        admin(h, "GET", "/api/sources/payments", None).await,
        admin(h, "GET", "/api/sources", None).await,
    ] {
        assert_eq!(a.status, 200, "{}", a.text);
        answers.push(a.text.clone());
    }
    let a = admin(h, "GET", "/api/sources/payments", None).await;
    assert_eq!(a.body["secrets"], 1, "{}", a.text);
    assert_eq!(a.body["url"], "/webhooks/payments");
    assert_eq!(a.body["kind"], "generic");
    assert_eq!(a.body["event_field"], "type");
    assert_eq!(a.body["verification"]["header"], "stripe-signature");
    assert_eq!(a.body["verification"]["tolerance_secs"], 300);
    let list = admin(h, "GET", "/api/sources", None).await;
    assert_eq!(list.body["sources"][0]["name"], "payments");
    assert_eq!(list.body["sources"][0]["secrets"], 1);

    workflow(
        h,
        "record-payment",
        json!({"invoice": "{{ trigger.payload.invoice }}"}),
        json!({}),
    )
    .await;
    subscribe(
        h,
        "paid-invoices",
        "payments",
        &["*"],
        "record-payment",
        json!({"filters": [{"field": "type", "equals": "invoice.paid"}],
               "payload": {"type": "fields", "fields": {
                   "invoice": "data.object.id", "amount": "data.object.amount_paid"}}}),
    )
    .await;

    let body = stripe_event("invoice.paid", 7);
    let sig = stripe_signature(PAY_SECRET, &body, now_s());
    assert!(sig.starts_with("t=") && sig.contains(",v1="), "{sig}");
    let a = deliver(h, "payments", &stripe_headers(&sig), &body).await;
    answers.push(a.text.clone());
    let runs = assert_taken(&a, 202, "started", "a fresh Stripe delivery");
    assert_eq!(a.body["event"], "invoice.paid");
    assert_eq!(a.body["source"], "payments");
    assert_eq!(runs.len(), 1);
    let v = run(h, &runs[0]).await;
    answers.push(v.to_string());
    assert_eq!(v["workflow"], "record-payment");
    assert_eq!(v["trigger"]["kind"], "webhook");
    assert_eq!(v["trigger"]["actor"], "webhook:payments");
    assert_eq!(
        v["trigger"]["payload"],
        json!({"invoice": "in_1PqR2sT3uV4wX5y7", "amount": 2000})
    );

    // The same signed delivery again (Stripe retries) starts nothing.
    let a = deliver(h, "payments", &stripe_headers(&sig), &body).await;
    assert_eq!(assert_taken(&a, 200, "started", "Stripe's retry"), runs);
    // Another event type is taken but matches nothing.
    let other = stripe_event("customer.created", 8);
    let a = deliver(
        h,
        "payments",
        &stripe_headers(&stripe_signature(PAY_SECRET, &other, now_s())),
        &other,
    )
    .await;
    assert_taken(&a, 202, "unmatched", "customer.created");
    assert_eq!(run_ids(h, None).await, runs);

    // Updating the source answers without the secret too.
    let a = admin(
        h,
        "PUT",
        "/api/sources/payments",
        Some(
            &json!({"kind": "generic", "verification": stripe_scheme(), "event_field": "type",
                     "secrets": [PAY_SECRET]}),
        ),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    answers.push(a.text.clone());
    for text in &answers {
        assert!(!text.contains(PAY_SECRET), "the secret is shown: {text}");
    }
    // Nor does it reach the host's logs.
    assert!(!logs(h).contains(PAY_SECRET), "the secret is logged");
}

/// The names of the subscriptions whose runs answer `a` names.
fn started_by(a: &Answer) -> BTreeSet<String> {
    a.body["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r["subscription"].as_str().unwrap().to_owned())
        .collect()
}

/// Stripe's event types have dots (`invoice.paid`,
/// `customer.subscription.created`): a pattern matches the full name part
/// by part, `*` standing for one part, and a shorter pattern matches every
/// name it begins.
#[tokio::test(flavor = "multi_thread")]
async fn a_dotted_generic_event_type_can_be_subscribed_by_name() {
    let h = &host(Some(0), &[]);
    register_payments(h, &[PAY_SECRET]).await;
    workflow(h, "record-payment", json!({}), json!({})).await;
    for (name, events) in [
        ("paid", vec!["invoice.paid"]),
        ("invoices", vec!["invoice"]),
        ("any-paid", vec!["*.paid"]),
        // Three parts: Stripe's `customer.subscription.created`.
        ("subs", vec!["customer.subscription.created"]),
        ("customers", vec!["customer.*"]),
        // Longer than any name it meets: matches none of them.
        ("paid-twice", vec!["invoice.paid.paid"]),
        // Eight parts, the most a pattern may have.
        ("deep", vec!["a.b.c.d.e.f.g.h"]),
    ] {
        subscribe(h, name, "payments", &events, "record-payment", json!({})).await;
    }
    let subs =
        |names: &[&str]| -> BTreeSet<String> { names.iter().map(|n| (*n).to_owned()).collect() };
    let mut started = 0;
    for (n, (kind, want)) in [
        ("invoice.paid", subs(&["paid", "invoices", "any-paid"])),
        ("invoice.payment_failed", subs(&["invoices"])),
        (
            "customer.subscription.created",
            subs(&["subs", "customers"]),
        ),
        ("customer.created", subs(&["customers"])),
        ("charge.refunded", subs(&[])),
        ("invoice", subs(&["invoices"])),
    ]
    .into_iter()
    .enumerate()
    {
        let body = stripe_event(kind, 20 + n as u64);
        let sig = stripe_signature(PAY_SECRET, &body, now_s());
        let a = deliver(h, "payments", &stripe_headers(&sig), &body).await;
        let outcome = if want.is_empty() {
            "unmatched"
        } else {
            "started"
        };
        let runs = assert_taken(&a, 202, outcome, kind);
        assert_eq!(a.body["event"], kind, "{}", a.text);
        assert_eq!(a.body["action"], Value::Null, "{}", a.text);
        assert_eq!(started_by(&a), want, "{kind}: {}", a.text);
        started += runs.len();
    }
    assert_eq!(run_ids(h, None).await.len(), started);

    // Nine parts, or an empty part, are refused.
    let before = state(h);
    for (events, what) in [
        (json!(["invoice", "a.b.c.d.e.f.g.h.i"]), "nine parts"),
        (json!(["invoice", "invoice..paid"]), "an empty part"),
        (json!(["invoice", "invoice.pa*d"]), "a '*' inside a part"),
    ] {
        let a = admin(
            h,
            "POST",
            "/api/subscriptions",
            Some(
                &json!({"name": "bad", "source": "payments", "events": events,
                         "workflow": "record-payment"}),
            ),
        )
        .await;
        assert_invalid(&a, &["/events/1"], what);
    }
    assert_unchanged(&before, h, "refused patterns");
}

/// Stripe signs every attempt anew: a retry of an event carries the same
/// body under a new `t=` and signature. It is the same delivery and starts
/// nothing, whether the source names the delivery by its body (the
/// default) or by the event's `id` (`delivery_field`); under
/// `delivery_field`, the same id with another body is a replay.
#[tokio::test(flavor = "multi_thread")]
async fn a_stripe_retry_signed_at_a_new_time_starts_nothing() {
    let h = &host(Some(0), &[]);
    register_payments(h, &[PAY_SECRET]).await;
    let a = admin(
        h,
        "POST",
        "/api/sources",
        Some(&json!({
            "name": "stripe", "kind": "generic", "verification": stripe_scheme(),
            "event_field": "type", "delivery_field": "id", "secrets": [PAY_NEXT]
        })),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.body["delivery_field"], "id", "{}", a.text);
    workflow(h, "record-payment", json!({}), json!({})).await;
    subscribe(h, "all", "payments", &["*"], "record-payment", json!({})).await;
    subscribe(
        h,
        "all-stripe",
        "stripe",
        &["*"],
        "record-payment",
        json!({}),
    )
    .await;

    let mut all = Vec::new();
    for (source, secret, n) in [("payments", PAY_SECRET, 11), ("stripe", PAY_NEXT, 12)] {
        let body = stripe_event("invoice.paid", n);
        let delivery = if source == "stripe" {
            format!("evt_1PqR2sT3uV4wX5y{n}")
        } else {
            spindle_core::sign::digest(&body)
        };
        let t = now_s();
        let first = deliver(
            h,
            source,
            &stripe_headers(&stripe_signature(secret, &body, t - 60)),
            &body,
        )
        .await;
        let runs = assert_taken(
            &first,
            202,
            "started",
            &format!("{source}: the first attempt"),
        );
        assert_eq!(first.body["delivery"], delivery.as_str(), "{}", first.text);
        all.extend(runs.iter().cloned());
        let before = state(h);
        for (ts, what) in [(t, "Stripe's retry"), (t + 1, "and another")] {
            let retry = deliver(
                h,
                source,
                &stripe_headers(&stripe_signature(secret, &body, ts)),
                &body,
            )
            .await;
            let what = format!("{source}: {what}");
            assert_eq!(assert_taken(&retry, 200, "started", &what), runs, "{what}");
            assert_eq!(retry.body["delivery"], delivery.as_str(), "{}", retry.text);
        }
        assert_unchanged(&before, h, &format!("{source}: retries"));
    }
    assert_eq!(run_ids(h, None).await.len(), 2);
    assert_eq!(counter(h, "webhooks:payments:duplicate"), 2);
    assert_eq!(counter(h, "webhooks:stripe:duplicate"), 2);

    // Under delivery_field, the event id is the delivery: the same id with
    // another body is a replay, and a body without one is malformed.
    let before = state(h);
    let other = stripe_event("invoice.payment_failed", 12);
    let a = deliver(
        h,
        "stripe",
        &stripe_headers(&stripe_signature(PAY_NEXT, &other, now_s())),
        &other,
    )
    .await;
    assert_problem(&a, 409, "replay", "an event id again with another body");
    let mut no_id: Value = serde_json::from_slice(&stripe_event("invoice.paid", 13)).unwrap();
    no_id.as_object_mut().unwrap().remove("id");
    let no_id = serde_json::to_vec(&no_id).unwrap();
    let a = deliver(
        h,
        "stripe",
        &stripe_headers(&stripe_signature(PAY_NEXT, &no_id, now_s())),
        &no_id,
    )
    .await;
    assert_problem(&a, 400, "malformed-payload", "an event without an id");
    assert_eq!(pointers(&a), ["/id"], "{}", a.text);
    assert_unchanged(&before, h, "a replay and a body without an id");
    let ids: BTreeSet<String> = run_ids(h, None).await.into_iter().collect();
    assert_eq!(ids, all.into_iter().collect());
}

/// A delivery that found its subscription's workflow gone started nothing:
/// 409 (the delivery is fine, the app is not), and once the workflow is
/// back, the sender's redelivery starts it.
#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_that_found_its_workflow_gone_starts_it_when_redelivered_after_the_fix() {
    let h = &host(Some(0), &[]);
    workflow(h, "on-push", json!({}), json!({})).await;
    subscribe(h, "pushes", "github", &["push"], "on-push", json!({})).await;
    let a = admin(h, "DELETE", "/api/workflows/on-push", None).await;
    assert_eq!(a.status, 204, "{}", a.text);
    let d = delivery_id();
    for what in ["the delivery", "its redelivery before the fix"] {
        let a = github(h, GH_SECRET, "push", &d, PUSH_BRANCH).await;
        assert_problem(&a, 409, "conflict", what);
        let detail = a.body["detail"].as_str().unwrap_or_default();
        assert!(
            detail.starts_with("no run could be started (")
                && detail.contains("subscription pushes")
                && detail.contains("on-push")
                && detail.ends_with("redeliver once that is fixed"),
            "{what}: {}",
            a.text
        );
        assert_eq!(run_ids(h, None).await, Vec::<String>::new(), "{what}");
    }
    // Both refusals are counted (a redelivery failing again as a
    // duplicate).
    let failed = counter(h, "webhooks:github:failed");
    assert!(failed >= 1, "failed deliveries are not counted");
    assert_eq!(failed + counter(h, "webhooks:github:duplicate"), 2);

    workflow(h, "on-push", json!({}), json!({})).await;
    let a = github(h, GH_SECRET, "push", &d, PUSH_BRANCH).await;
    let runs = assert_taken(&a, 202, "started", "the redelivery after the fix");
    assert_eq!(runs.len(), 1, "{}", a.text);
    assert_eq!(a.body["delivery"], d.as_str());
    assert_eq!(run_ids(h, None).await, runs);
    assert_eq!(run(h, &runs[0]).await["workflow"], "on-push");
    // Once started, it is a duplicate like any other.
    let before = state(h);
    let a = github(h, GH_SECRET, "push", &d, PUSH_BRANCH).await;
    assert_eq!(
        assert_taken(&a, 200, "started", "one more redelivery"),
        runs
    );
    assert_unchanged(&before, h, "one more redelivery");
    assert_eq!(run_ids(h, None).await, runs);
    assert_eq!(counter(h, "webhooks:github:started"), 1);
}

// ---------------------------------------------------------------------------
// 7. The API: CRUD and roles

#[tokio::test(flavor = "multi_thread")]
async fn sources_subscriptions_and_schedules_are_managed_by_admins_and_read_by_viewers() {
    let h = &host(Some(0), &[]);
    workflow(h, "wf", json!({}), json!({})).await;
    let a = admin(
        h,
        "POST",
        "/api/keys",
        Some(&json!({"name": "dash", "role": "viewer"})),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text);
    let viewer = client_with(Some(a.body["key"].as_str().unwrap()));
    let anon = anon_client();

    let specs = [
        (
            "sources",
            json!({"name": "ci", "kind": "github", "secrets": [GH_PREVIOUS]}),
            json!({"kind": "github", "description": "CI org hooks"}),
        ),
        (
            "subscriptions",
            json!({"name": "ci-push", "source": "ci", "events": ["push"], "workflow": "wf"}),
            json!({"source": "ci", "events": ["push", "pull_request.opened"], "workflow": "wf"}),
        ),
        (
            "schedules",
            json!({"name": "nightly", "workflow": "wf", "cron": "0 3 * * *",
                   "timezone": "Europe/Berlin", "payload": {"ref": "main"}}),
            json!({"workflow": "wf", "cron": "30 4 * * 1-5", "timezone": "America/New_York"}),
        ),
    ];
    for (collection, spec, update) in &specs {
        let name = spec["name"].as_str().unwrap();
        let list = format!("/api/{collection}");
        let one = format!("/api/{collection}/{name}");
        let what = |s: &str| format!("{collection}: {s}");

        // Nobody but an admin creates.
        let before = state(h);
        let a = call(&viewer, h, "POST", &list, Some(spec)).await;
        assert_problem(&a, 403, "forbidden", &what("viewer POST"));
        let a = call(&anon, h, "POST", &list, Some(spec)).await;
        assert_problem(&a, 401, "unauthorized", &what("anonymous POST"));
        let a = call(&anon, h, "GET", &list, None).await;
        assert_problem(&a, 401, "unauthorized", &what("anonymous GET"));
        assert_unchanged(&before, h, &what("refused creates"));
        let a = admin(h, "GET", &one, None).await;
        assert_problem(&a, 404, "not-found", &what("before creation"));

        let created = create(h, collection, spec.clone()).await;
        assert_eq!(created["name"], name);
        let a = admin(h, "POST", &list, Some(spec)).await;
        assert_problem(&a, 409, "exists", &what("duplicate"));

        // Viewers read.
        let a = call(&viewer, h, "GET", &list, None).await;
        assert_eq!(a.status, 200, "{}", a.text);
        let names: Vec<&str> = a.body[*collection]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, [name], "{}", what("list"));
        let a = call(&viewer, h, "GET", &one, None).await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(a.body["name"], name);

        // Viewers change nothing.
        let before = state(h);
        let a = call(&viewer, h, "PUT", &one, Some(update)).await;
        assert_problem(&a, 403, "forbidden", &what("viewer PUT"));
        let a = call(&viewer, h, "DELETE", &one, None).await;
        assert_problem(&a, 403, "forbidden", &what("viewer DELETE"));
        if *collection == "schedules" {
            for action in ["pause", "resume"] {
                let a = call(&viewer, h, "POST", &format!("{one}/{action}"), None).await;
                assert_problem(&a, 403, "forbidden", &what(action));
            }
        }
        assert_unchanged(&before, h, &what("refused changes"));

        // Admin updates; the body's name must be the path's.
        let mut renamed = update.clone();
        renamed["name"] = json!("other");
        let a = admin(h, "PUT", &one, Some(&renamed)).await;
        assert_invalid(&a, &["/name"], &what("PUT renaming"));
        let a = admin(h, "PUT", &format!("/api/{collection}/ghost"), Some(update)).await;
        assert_problem(&a, 404, "not-found", &what("PUT of an unknown name"));
        let a = admin(h, "PUT", &one, Some(update)).await;
        assert_eq!(a.status, 200, "{}: {}", what("PUT"), a.text);
        assert_eq!(a.body["name"], name);
        let a = admin(h, "GET", &format!("/api/{collection}/ghost"), None).await;
        assert_problem(&a, 404, "not-found", &what("GET of an unknown name"));
        let a = admin(h, "DELETE", &format!("/api/{collection}/ghost"), None).await;
        assert_problem(&a, 404, "not-found", &what("DELETE of an unknown name"));
    }
    let a = admin(h, "GET", "/api/subscriptions/ci-push", None).await;
    assert_eq!(a.body["events"], json!(["push", "pull_request.opened"]));
    let a = admin(h, "GET", "/api/sources/ci", None).await;
    assert_eq!(
        (&a.body["description"], &a.body["secrets"]),
        (&json!("CI org hooks"), &json!(1))
    );

    // Schedules show their next fire, and none while paused.
    let a = admin(h, "GET", "/api/schedules/nightly", None).await;
    assert_eq!(a.body["cron"], "30 4 * * 1-5");
    assert_eq!(a.body["timezone"], "America/New_York");
    assert_eq!(a.body["overlap"], "skip");
    assert_eq!(a.body["catch_up_secs"], 300);
    let next = a.body["next_fire_at_ms"].as_u64().unwrap();
    assert!(
        next > now_ms() && next < now_ms() + 4 * 86_400_000,
        "{}",
        a.text
    );
    let a = admin(h, "POST", "/api/schedules/nightly/pause", None).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["paused"], true);
    assert!(a.body.get("next_fire_at_ms").is_none(), "{}", a.text);
    let a = admin(h, "POST", "/api/schedules/nightly/resume", None).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["paused"], false);
    assert_eq!(a.body["next_fire_at_ms"], next);
    let a = admin(h, "POST", "/api/schedules/ghost/pause", None).await;
    assert_problem(&a, 404, "not-found", "pausing an unknown schedule");

    // Validation: 400 with pointers, nothing stored.
    let before = state(h);
    for (collection, spec, want) in [
        (
            "schedules",
            json!({"name": "s1", "workflow": "wf", "cron": "61 * * * *"}),
            vec!["/cron"],
        ),
        (
            "schedules",
            json!({"name": "s1", "workflow": "wf", "cron": "0 3 * * *", "timezone": "Mars/Olympus_Mons"}),
            vec!["/timezone"],
        ),
        (
            "schedules",
            json!({"name": "s1", "workflow": "ghost", "cron": "0 3 * * *"}),
            vec!["/workflow"],
        ),
        (
            "schedules",
            json!({"name": "s1", "workflow": "wf", "cron": "0 3 * * *", "overlap": "sometimes"}),
            // serde's parse errors point at the root, naming the field's
            // value in the detail (crates/core/src/error.rs).
            vec![""],
        ),
        (
            "subscriptions",
            json!({"name": "s1", "source": "github", "events": ["push"], "workflow": "ghost"}),
            vec!["/workflow"],
        ),
        (
            "subscriptions",
            json!({"name": "s1", "source": "gitlab", "events": ["push"], "workflow": "wf"}),
            vec!["/source"],
        ),
        (
            "subscriptions",
            json!({"name": "s1", "source": "github", "events": ["push", "a b"], "workflow": "wf"}),
            vec!["/events/1"],
        ),
        (
            "subscriptions",
            json!({"name": "s1", "source": "github", "events": [], "workflow": "wf"}),
            vec!["/events"],
        ),
        (
            "sources",
            json!({"name": "s1", "kind": "generic", "secrets": [PAY_SECRET]}),
            vec!["/verification"],
        ),
        (
            "sources",
            json!({"name": "s1", "kind": "github", "secrets": [GITHUB_EXAMPLE_SECRET]}),
            vec!["/secrets/0"],
        ),
        (
            "sources",
            json!({"name": "s1", "kind": "github", "secrets": [GH_SECRET, GH_PREVIOUS, PAY_SECRET]}),
            vec!["/secrets"],
        ),
    ] {
        let a = admin(h, "POST", &format!("/api/{collection}"), Some(&spec)).await;
        assert_invalid(&a, &want, &format!("{collection} {spec}"));
    }
    assert_unchanged(&before, h, "invalid specs");

    // Deletes.
    // The registered source takes deliveries (its subscription now also
    // wants pull_request.opened), until it is deleted.
    let a = deliver(
        h,
        "ci",
        &github_headers(GH_PREVIOUS, "pull_request", &delivery_id(), PR_OPENED),
        PR_OPENED,
    )
    .await;
    assert_taken(&a, 202, "started", "a delivery to a registered source");
    assert_eq!(a.body["source"], "ci");
    assert_eq!(run_ids(h, None).await.len(), 1);

    for (collection, name) in [
        ("schedules", "nightly"),
        ("subscriptions", "ci-push"),
        ("sources", "ci"),
    ] {
        let one = format!("/api/{collection}/{name}");
        let a = admin(h, "DELETE", &one, None).await;
        assert_eq!(a.status, 204, "{collection}: {}", a.text);
        let a = admin(h, "GET", &one, None).await;
        assert_problem(&a, 404, "not-found", collection);
        let a = admin(h, "DELETE", &one, None).await;
        assert_problem(&a, 404, "not-found", collection);
        let a = admin(h, "GET", &format!("/api/{collection}"), None).await;
        assert_eq!(a.body[collection], json!([]), "{collection}");
    }
    let a = deliver(
        h,
        "ci",
        &github_headers(GH_PREVIOUS, "pull_request", &delivery_id(), PR_OPENED),
        PR_OPENED,
    )
    .await;
    assert_problem(&a, 404, "unknown-source", "a delivery to a deleted source");
    assert_eq!(run_ids(h, None).await.len(), 1);
}

// ---------------------------------------------------------------------------
// 8. Workflow input_schema

#[tokio::test(flavor = "multi_thread")]
async fn a_workflows_input_schema_guards_manual_and_webhook_payloads() {
    let h = &host(Some(0), &[]);
    workflow(
        h,
        "release",
        json!({"ref": "{{ trigger.payload.ref }}"}),
        json!({"input_schema": {"type": "object", "required": ["ref"],
                                "properties": {"ref": {"type": "string"}}}}),
    )
    .await;
    let a = admin(h, "GET", "/api/workflows/release", None).await;
    assert_eq!(
        a.body["input_schema"]["required"],
        json!(["ref"]),
        "{}",
        a.text
    );

    // Manual triggers.
    let before = state(h);
    // Each violation points into the payload; a missing member is the
    // object's fault.
    for (payload, want) in [
        (json!({}), "/payload"),
        (json!({"ref": 3}), "/payload/ref"),
        (json!([]), "/payload"),
    ] {
        let a = admin(h, "POST", "/trigger/release", Some(&payload)).await;
        assert_invalid(&a, &[want], &format!("trigger with {payload}"));
    }
    assert_unchanged(&before, h, "refused triggers");
    assert_eq!(run_ids(h, None).await, Vec::<String>::new());
    let a = admin(h, "POST", "/trigger/release", Some(&json!({"ref": "main"}))).await;
    assert_eq!(a.status, 202, "{}", a.text);
    let manual = a.body["run_id"].as_str().unwrap().to_owned();

    // A subscription whose payload lacks `ref`: the delivery is refused
    // with the schema's problem and starts nothing.
    subscribe(
        h,
        "push-repo",
        "github",
        &["push"],
        "release",
        json!({"payload": {"type": "fields", "fields": {"repo": "repository.full_name"}}}),
    )
    .await;
    let d = delivery_id();
    let a = github(h, GH_SECRET, "push", &d, PUSH_BRANCH).await;
    assert_invalid(&a, &["/payload"], "a webhook payload without ref");
    assert!(a.text.contains("push-repo"), "{}", a.text);
    assert_eq!(run_ids(h, None).await, std::slice::from_ref(&manual));
    // Sent again (under its id or another), it is refused again.
    for (d, what) in [
        (d.clone(), "the same delivery again"),
        (delivery_id(), "its body under another id"),
    ] {
        let a = github(h, GH_SECRET, "push", &d, PUSH_BRANCH).await;
        assert_invalid(&a, &["/payload"], what);
        assert_eq!(run_ids(h, None).await, std::slice::from_ref(&manual));
    }

    // With a second subscription handing over the whole body (which has a
    // `ref`), the redelivery starts that one and reports the other: the
    // starts of a delivery that started nothing are tried again.
    subscribe(h, "push-whole", "github", &["push"], "release", json!({})).await;
    let a = github(h, GH_SECRET, "push", &d, PUSH_BRANCH).await;
    let runs = assert_taken(&a, 202, "started", "one of two subscriptions");
    assert_eq!(a.body["runs"][0]["subscription"], "push-whole");
    assert_eq!(
        a.body["failed"][0]["subscription"], "push-repo",
        "{}",
        a.text
    );
    assert_eq!(a.body["failed"][0]["errors"][0]["pointer"], "/payload");
    assert_eq!(runs.len(), 1);
    assert_eq!(run_ids(h, None).await.len(), 2);
    assert_eq!(
        run(h, &runs[0]).await["trigger"]["payload"]["ref"],
        "refs/heads/master"
    );
    // Sent again, it names the same run and starts nothing more.
    let a = github(h, GH_SECRET, "push", &d, PUSH_BRANCH).await;
    assert_eq!(assert_taken(&a, 200, "started", "once more"), runs);
    assert_eq!(a.body["failed"][0]["subscription"], "push-repo");
    assert_eq!(run_ids(h, None).await.len(), 2);

    // A new push, delivered once, does the same.
    let a = github(
        h,
        GH_SECRET,
        "push",
        &delivery_id(),
        &another_commit(PUSH_BRANCH, 1),
    )
    .await;
    let next = assert_taken(&a, 202, "started", "a new push");
    assert_eq!(a.body["failed"][0]["subscription"], "push-repo");
    assert_ne!(next, runs);
    assert_eq!(run_ids(h, None).await.len(), 3);
}

// ---------------------------------------------------------------------------
// 9. Schedules through the host's own tick

/// The runs of `workflow`, waiting up to `secs` for more than `than`.
async fn runs_beyond(host: &Host, workflow: &str, than: usize, secs: u64) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let ids = run_ids(host, Some(workflow)).await;
        if ids.len() > than || Instant::now() > deadline {
            return ids;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The number of runs of `workflow` once it stops growing: a fire in
/// flight when the schedule was paused or deleted may still land.
async fn settled(host: &Host, workflow: &str) -> usize {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    run_ids(host, Some(workflow)).await.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schedule_fires_every_second_on_the_hosts_tick_until_paused_or_deleted() {
    // No --tick-interval-ms: the host ticks /internal/tick every second.
    let h = &host(None, &[]);
    workflow(h, "tick-tock", json!({}), json!({})).await;
    let created = create(
        h,
        "schedules",
        json!({"name": "every-second", "workflow": "tick-tock", "cron": "*/1 * * * * *",
               "overlap": "allow", "payload": {"from": "cron"}}),
    )
    .await;
    let first_fire = created["next_fire_at_ms"].as_u64().unwrap();
    assert_eq!(first_fire % 1000, 0, "{created}");
    // The default overlap policy: no second run while the first is going
    // (with no worker to take its job, it keeps retrying for seconds).
    workflow(h, "slowpoke", json!({}), json!({})).await;
    create(
        h,
        "schedules",
        json!({"name": "one-at-a-time", "workflow": "slowpoke", "cron": "*/1 * * * * *"}),
    )
    .await;

    let ids = runs_beyond(h, "tick-tock", 2, 10).await;
    assert!(
        ids.len() >= 3,
        "{} runs after 10 s\n{}",
        ids.len(),
        h.stderr()
    );
    for id in &ids {
        let v = run(h, id).await;
        assert_eq!(v["trigger"]["kind"], "schedule", "{v:#}");
        assert_eq!(v["trigger"]["payload"], json!({"from": "cron"}), "{v:#}");
        assert_eq!(v["events"][0]["actor"], "schedule:every-second", "{v:#}");
    }
    let a = admin(h, "GET", "/api/schedules/every-second", None).await;
    let s = &a.body;
    let next = s["next_fire_at_ms"].as_u64().unwrap();
    let last = s["last_fire_at_ms"].as_u64().unwrap();
    assert!(next > last && next % 1000 == 0, "{s}");
    assert!(next + 1500 > now_ms(), "the next fire is long past: {s}");
    assert!(s["fired"].as_u64().unwrap() >= 3, "{s}");
    assert!(
        ids.contains(&s["last_run_id"].as_str().unwrap().to_owned()),
        "{s}"
    );

    // The overlapping schedule started a run per fire that found none
    // going, and skipped (and counted) the others.
    let a = admin(h, "POST", "/api/schedules/one-at-a-time/pause", None).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let slow = settled(h, "slowpoke").await;
    let a = admin(h, "GET", "/api/schedules/one-at-a-time", None).await;
    let s = &a.body;
    assert_eq!(s["overlap"], "skip", "{s}");
    assert!(slow >= 1 && s["fired"] == slow, "{slow} runs: {s}");
    assert!(s["skipped"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["missed"], 0, "{s}");
    assert!(
        counter(h, "schedule_fires:skipped") >= 1,
        "skipped fires are not counted"
    );

    // Paused: no next fire, no runs.
    let a = admin(h, "POST", "/api/schedules/every-second/pause", None).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(a.body.get("next_fire_at_ms").is_none(), "{}", a.text);
    let paused = settled(h, "tick-tock").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        run_ids(h, Some("tick-tock")).await.len(),
        paused,
        "runs while paused"
    );
    let a = admin(h, "GET", "/api/schedules/every-second", None).await;
    assert!(a.body.get("next_fire_at_ms").is_none(), "{}", a.text);
    assert_eq!(a.body["paused"], true);

    // Resumed: it fires again.
    let a = admin(h, "POST", "/api/schedules/every-second/resume", None).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let next = a.body["next_fire_at_ms"].as_u64().unwrap();
    assert!(next + 1000 > now_ms(), "resuming catches up: {}", a.text);
    let ids = runs_beyond(h, "tick-tock", paused, 8).await;
    assert!(ids.len() > paused, "no run after resuming\n{}", h.stderr());

    // Deleted: it stops.
    let a = admin(h, "DELETE", "/api/schedules/every-second", None).await;
    assert_eq!(a.status, 204, "{}", a.text);
    let deleted = settled(h, "tick-tock").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        run_ids(h, Some("tick-tock")).await.len(),
        deleted,
        "runs after delete"
    );
    let a = admin(h, "GET", "/api/schedules/every-second", None).await;
    assert_problem(&a, 404, "not-found", "a deleted schedule");
    assert!(
        counter(h, "schedule_fires:started") >= deleted as i64,
        "fires counted"
    );
}

// ---------------------------------------------------------------------------
// The webhook overview

/// `GET /api/metrics/webhooks` after known good and forged deliveries:
/// each source's counts by outcome, accepted and rejected, and its last
/// delivery; viewers read it, nobody without a credential does.
#[tokio::test(flavor = "multi_thread")]
async fn the_webhook_overview_counts_good_and_forged_deliveries_by_source() {
    let h = &host(Some(0), &[]);
    workflow(h, "on-push", json!({}), json!({})).await;
    subscribe(h, "pushes", "github", &["push"], "on-push", json!({})).await;
    let overview = || admin(h, "GET", "/api/metrics/webhooks", None);
    let a = overview().await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body, json!({"sources": []}));

    // Accepted: a ping, a push that starts a run, its redelivery, an
    // event nobody subscribed to.
    let a = github(h, GH_SECRET, "ping", &delivery_id(), PING).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let d = delivery_id();
    let a = github(h, GH_SECRET, "push", &d, PUSH_BRANCH).await;
    assert_taken(&a, 202, "started", "a push");
    let a = github(h, GH_SECRET, "push", &d, PUSH_BRANCH).await;
    assert_taken(&a, 200, "started", "its redelivery");
    let a = github(h, GH_SECRET, "issues", &delivery_id(), ISSUE_OPENED).await;
    assert_taken(&a, 202, "unmatched", "an issue");
    // Rejected: two forgeries, one unsigned, one to no known source.
    for _ in 0..2 {
        let a = github(h, GH_STRANGER, "push", &delivery_id(), PUSH_TAG).await;
        assert_problem(&a, 401, "bad-signature", "a forgery");
    }
    let headers = github_headers(GH_SECRET, "push", &delivery_id(), PUSH_TAG);
    let a = deliver(h, "nobody", &headers, PUSH_TAG).await;
    assert_problem(&a, 404, "unknown-source", "no such source");
    let sent = now_ms();
    let unsigned = without(&headers, "X-Hub-Signature-256");
    let a = deliver(h, "github", &unsigned, PUSH_TAG).await;
    assert_problem(&a, 401, "missing-signature", "unsigned");
    let done = now_ms();

    let a = overview().await;
    assert_eq!(a.status, 200, "{}", a.text);
    let sources = a.body["sources"].as_array().unwrap();
    let names: Vec<&str> = sources
        .iter()
        .map(|s| s["source"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["github", "unknown"], "{}", a.text);
    let github = &sources[0];
    assert_eq!(github["accepted"], 4, "{}", a.text);
    assert_eq!(github["rejected"], 3, "{}", a.text);
    assert_eq!(
        github["by_outcome"],
        json!({"ping": 1, "started": 1, "duplicate": 1, "unmatched": 1,
               "bad-signature": 2, "missing-signature": 1})
    );
    let at = github["last_delivery_at_ms"].as_u64().unwrap();
    assert!((sent..=done).contains(&at), "{at} not in {sent}..={done}");
    assert_eq!(github["last_outcome"], "missing-signature");
    let unknown = &sources[1];
    assert_eq!(
        (unknown["accepted"].as_u64(), unknown["rejected"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(unknown["by_outcome"], json!({"unknown-source": 1}));
    // Deliveries to no known source are counted only (one write each).
    assert_eq!(unknown["last_outcome"], Value::Null);
    assert_eq!(unknown["last_delivery_at_ms"], Value::Null);

    let key = admin(
        h,
        "POST",
        "/api/keys",
        Some(&json!({"name": "dash", "role": "viewer"})),
    )
    .await;
    assert_eq!(key.status, 201, "{}", key.text);
    let viewer = client_with(Some(key.body["key"].as_str().unwrap()));
    let a = call(&viewer, h, "GET", "/api/metrics/webhooks", None).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["sources"], json!(sources));
    let a = call(&anon_client(), h, "GET", "/api/metrics/webhooks", None).await;
    assert_problem(&a, 401, "unauthorized", "no credential");
}
