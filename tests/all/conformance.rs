//! The host behaves like Spin wherever a component can tell, as seen by the
//! probe component.

use serde_json::Value;
use spindle_tests::{HostBuilder, client, manifest, upstream};

const PROBE_APP: &str = r#"
spin_manifest_version = 2
[application]
name = "probe"

[variables]
greeting = { default = "hello" }
upstream_port = { required = true }
api_token = { required = true, secret = true }

[[trigger.http]]
route = "/..."
component = "probe"
[[trigger.http]]
route = "/exact"
component = "probe"
[[trigger.http]]
route = "/items/:id/parts/:part"
component = "probe"
[[trigger.http]]
route = "/probe/..."
component = "probe"
[[trigger.http]]
route = { private = true }
component = "hidden"

[component.probe]
source = "{{PROBE}}"
key_value_stores = ["default"]
allowed_outbound_hosts = ["http://127.0.0.1:{{ upstream_port }}", "http://self", "http://hidden.spin.internal"]
environment = { PROBE_ENV = "from-manifest" }
[component.probe.variables]
greeting = "{{ greeting }}, world"
token = "{{ api_token }}"

[component.hidden]
source = "{{PROBE}}"
"#;

async fn start(extra: &[&str]) -> (tempfile::TempDir, spindle_tests::Host, u16) {
    let port = upstream().await;
    let (dir, path) = manifest(PROBE_APP);
    let mut b = HostBuilder::new(path)
        .env("SPIN_VARIABLE_UPSTREAM_PORT", &port.to_string())
        .env(
            "SPIN_VARIABLE_API_TOKEN",
            "s3cret-token-value-0123456789abcdef",
        );
    for a in extra {
        b = b.arg(a);
    }
    (dir, b.start(), port)
}

async fn get(host: &spindle_tests::Host, path: &str) -> (u16, Value) {
    let resp = client().get(host.url(path)).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn routing_and_spin_headers() {
    let (_d, host, _) = start(&[]).await;
    let (s, v) = get(&host, "/items/42/parts/bolt?x=1").await;
    assert_eq!(s, 200);
    let h = &v["headers"];
    assert_eq!(h["spin-matched-route"], "/items/:id/parts/:part");
    assert_eq!(h["spin-raw-component-route"], "/items/:id/parts/:part");
    assert_eq!(h["spin-component-route"], "/items/:id/parts/:part");
    assert_eq!(h["spin-path-match-id"], "42");
    assert_eq!(h["spin-path-match-part"], "bolt");
    assert_eq!(h["spin-path-info"], "");
    assert_eq!(h["spin-base-path"], "/");
    assert!(
        h["spin-full-url"]
            .as_str()
            .unwrap()
            .ends_with("/items/42/parts/bolt?x=1")
    );
    assert!(
        h["spin-client-addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(
        v["uri"].as_str().unwrap().starts_with("http://127.0.0.1:"),
        "{v}"
    );

    // Exact beats wildcard; the catch-all takes the rest with path info.
    let (_, v) = get(&host, "/exact").await;
    assert_eq!(v["headers"]["spin-matched-route"], "/exact");
    let (_, v) = get(&host, "/exact/deeper/still").await;
    assert_eq!(v["headers"]["spin-matched-route"], "/...");
    assert_eq!(v["headers"]["spin-path-info"], "/exact/deeper/still");
    assert_eq!(v["headers"]["spin-component-route"], "/");
    // Longer wildcard prefix wins.
    let (_, v) = get(&host, "/probe/other").await;
    assert_eq!(v["headers"]["spin-matched-route"], "/probe/...");
    assert_eq!(v["headers"]["spin-path-info"], "/other");
}

#[tokio::test(flavor = "multi_thread")]
async fn variables_reach_the_component_and_secrets_stay_out_of_logs() {
    let (_d, host, _) = start(&[]).await;
    assert_eq!(
        get(&host, "/probe/var/greeting").await.1["value"],
        "hello, world"
    );
    assert_eq!(
        get(&host, "/probe/var/token").await.1["value"],
        "s3cret-token-value-0123456789abcdef"
    );
    let (s, v) = get(&host, "/probe/var/missing").await;
    assert_eq!(s, 404);
    assert!(v["error"].as_str().unwrap().contains("Undefined"), "{v}");
    let (s, v) = get(&host, "/probe/var/Bad-Name").await;
    assert_eq!(s, 404);
    assert!(v["error"].as_str().unwrap().contains("InvalidName"), "{v}");
    assert_eq!(
        get(&host, "/probe/env/PROBE_ENV").await.1["value"],
        "from-manifest"
    );

    // wasi:config/store sees the same resolved values; an undefined key is
    // absent there rather than an error, as in Spin.
    assert_eq!(
        get(&host, "/probe/config/greeting").await.1["value"],
        "hello, world"
    );
    let (s, v) = get(&host, "/probe/config/missing").await;
    assert_eq!((s, &v["value"]), (200, &Value::Null));
    let (s, v) = get(&host, "/probe/config-all").await;
    assert_eq!(s, 200);
    assert_eq!(v["values"]["greeting"], "hello, world");
    assert_eq!(v["values"]["token"], "s3cret-token-value-0123456789abcdef");

    let logs = format!("{}{}", host.stdout(), host.stderr());
    assert!(
        !logs.contains("s3cret-token-value-0123456789abcdef"),
        "secret leaked into host output"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn key_value_access_is_limited_to_granted_labels() {
    let (_d, host, _) = start(&[]).await;
    assert_eq!(get(&host, "/probe/open/default").await.1["result"], "ok");
    let (s, v) = get(&host, "/probe/open/secrets").await;
    assert_eq!((s, v["error"].as_str()), (403, Some("access-denied")));
}

#[tokio::test(flavor = "multi_thread")]
async fn outbound_http_is_limited_to_allowed_hosts() {
    let (_d, host, port) = start(&[]).await;
    let (s, v) = get(
        &host,
        &format!("/probe/outbound?url=http://127.0.0.1:{port}/hello"),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["body"], "upstream says hi");

    // Same host, another port: denied with the WASI HTTP error Spin returns.
    let other = upstream().await;
    let (s, v) = get(
        &host,
        &format!("/probe/outbound?url=http://127.0.0.1:{other}/hello"),
    )
    .await;
    assert_eq!(s, 502);
    assert!(
        v["error"].as_str().unwrap().contains("HttpRequestDenied"),
        "{v}"
    );
    let (s, v) = get(&host, "/probe/outbound?url=http://example.invalid/").await;
    assert_eq!(s, 502);
    assert!(
        v["error"].as_str().unwrap().contains("HttpRequestDenied"),
        "{v}"
    );
    // The denial is logged by the host (its log line may land a moment
    // after the answer).
    let want = format!(":{other}/hello");
    let mut err = host.stderr();
    for _ in 0..50 {
        if err.contains("outbound request denied") && err.contains(&want) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        err = host.stderr();
    }
    assert!(
        err.contains("outbound request denied") && err.contains(&format!(":{other}/hello")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn self_requests_and_service_chaining_stay_inside_the_app() {
    let (_d, host, _) = start(&[]).await;
    let (s, v) = get(&host, "/probe/outbound?url=http://self.alt/exact").await;
    assert_eq!(s, 200, "{v}");
    let inner: Value = serde_json::from_str(v["body"].as_str().unwrap()).unwrap();
    assert_eq!(inner["headers"]["spin-matched-route"], "/exact");
    // A private component is reachable only by chaining, which is allowed.
    let (s, v) = get(
        &host,
        "/probe/outbound?url=http://hidden.spin.internal/items/x",
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let inner: Value = serde_json::from_str(v["body"].as_str().unwrap()).unwrap();
    assert_eq!(inner["headers"]["spin-matched-route"], "/...");
    assert_eq!(inner["headers"]["spin-path-info"], "/items/x");
}

async fn hammer(host: &spindle_tests::Host, path: &str, n: usize) -> Vec<i64> {
    let c = client();
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (c, url) = (c.clone(), host.url(path));
        tasks.push(tokio::spawn(async move {
            let v: Value = c.post(url).send().await.unwrap().json().await.unwrap();
            v["value"].as_i64().unwrap_or_else(|| panic!("{v}"))
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_compare_and_swap_increments_lose_no_update() {
    for mode in [&[][..], &["--instance-per-request"][..]] {
        let (_d, host, _) = start(mode).await;
        let seen = hammer(&host, "/probe/cas/counter", 50).await;
        assert_eq!(
            seen,
            (1..=50).collect::<Vec<_>>(),
            "mode {mode:?}: every increment seen once"
        );
        assert_eq!(get(&host, "/probe/kv/counter").await.1["value"], "50");
        let seen = hammer(&host, "/probe/incr/atomic", 50).await;
        assert_eq!(
            seen,
            (1..=50).collect::<Vec<_>>(),
            "mode {mode:?}: atomic increment exact"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn component_output_goes_to_log_files() {
    let (_d, host, _) = start(&[]).await;
    assert_eq!(get(&host, "/probe/log/marker-123").await.0, 200);
    let logs = host.state_dir.join("logs");
    let mut found = (false, false);
    for _ in 0..50 {
        let out = std::fs::read_to_string(logs.join("probe_stdout.txt")).unwrap_or_default();
        let err = std::fs::read_to_string(logs.join("probe_stderr.txt")).unwrap_or_default();
        found = (
            out.contains("probe says marker-123"),
            err.contains("probe warns marker-123"),
        );
        if found == (true, true) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(found, (true, true));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_and_sigint_stop_the_host_cleanly() {
    for signal in ["TERM", "INT"] {
        let (_d, host, _) = start(&[]).await;
        assert_eq!(get(&host, "/exact").await.0, 200);
        let status = host.signal(signal);
        assert_eq!(status.code(), Some(0), "exit after SIG{signal}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_are_reused_unless_asked_for_one_per_request() {
    for (mode, expect_reuse) in [(&[][..], true), (&["--instance-per-request"][..], false)] {
        let (_d, host, _) = start(mode).await;
        let mut max = 0;
        for _ in 0..10 {
            let (s, v) = get(&host, "/probe/instance-hits").await;
            assert_eq!(s, 200);
            max = max.max(v["hits"].as_u64().unwrap());
        }
        if expect_reuse {
            assert!(
                max > 1,
                "default mode should reuse instances (max hits {max})"
            );
            assert!(max <= 128, "an instance serves at most 128 requests");
        } else {
            assert_eq!(
                max, 1,
                "--instance-per-request must use a fresh instance each time"
            );
        }
    }
}
