//! How long a request's work lives: a component stuck in a CPU loop is
//! stopped at the request timeout, and a request whose client hangs up is
//! still carried out in full, even when the host is stopped right after.

use std::time::{Duration, Instant};

use serde_json::Value;
use spindle_tests::{Host, HostBuilder, client, manifest};
use tokio::io::AsyncWriteExt;

const APP: &str = r#"
spin_manifest_version = 2
[application]
name = "lifetimes"

[[trigger.http]]
route = "/probe/..."
component = "probe"

[component.probe]
source = "{{PROBE}}"
key_value_stores = ["default"]
"#;

fn start(args: &[&str]) -> (tempfile::TempDir, Host) {
    let (dir, path) = manifest(APP);
    let mut b = HostBuilder::new(path);
    for a in args {
        b = b.arg(a);
    }
    (dir, b.start())
}

async fn get(host: &Host, path: &str) -> (u16, Value) {
    let resp = client().get(host.url(path)).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The host's process id. The harness owns the child, so find it by the
/// state directory only this host was given.
fn pid(host: &Host) -> u32 {
    let needle = host.state_dir.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == "up") && args.contains(&needle) {
            return pid;
        }
    }
    panic!("no host process with state dir {needle}");
}

/// CPU time the process has used so far (user and system).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // USER_HZ is 100 on every Linux the tests run on.
    Duration::from_millis(ticks * 10)
}

/// Sends SIGTERM and waits for the process to exit, keeping the `Host` (and
/// so its captured log) around.
fn terminate(host: &Host) {
    let pid = pid(host);
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        // An exited child stays a zombie until the harness reaps it.
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat)
                if !stat
                    .rsplit_once(')')
                    .unwrap()
                    .1
                    .trim_start()
                    .starts_with('Z') => {}
            _ => {
                // Let the log reader drain the last lines.
                std::thread::sleep(Duration::from_millis(200));
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("host did not exit within 20 s of SIGTERM");
}

/// Sends `GET path` on a raw connection and returns it unread; see
/// [`hang_up`].
async fn send(host: &Host, path: &str) -> tokio::net::TcpStream {
    let addr = host.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!(
                "GET {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\n\r\n",
                spindle_tests::TEST_ADMIN_KEY
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    stream
}

/// Closes a connection before the answer, the way a stopped load generator
/// does: with a FIN, or with an RST (`reset`) as a killed process does.
fn hang_up(stream: tokio::net::TcpStream, reset: bool) {
    if reset {
        stream.set_zero_linger().unwrap();
    }
    drop(stream);
}

/// Waits for `key` to hold a value (a request still running after its
/// client left writes it later).
async fn wait_for_key(host: &Host, key: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (_, v) = get(host, &format!("/probe/kv/{key}")).await;
        if !v["value"].is_null() || Instant::now() > deadline {
            return v["value"].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_component_in_a_cpu_loop_is_stopped_at_the_request_timeout() {
    for mode in [&[][..], &["--instance-per-request"][..]] {
        let args = [&["--request-timeout-secs", "1"][..], mode].concat();
        let (_d, host) = start(&args);
        let pid = pid(&host);
        assert_eq!(get(&host, "/probe/instance-hits").await.0, 200);

        let started = Instant::now();
        let resp = client()
            .get(host.url("/probe/spin"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap_or_else(|e| panic!("mode {mode:?}: the looping request never ended: {e}"));
        let took = started.elapsed();
        assert_eq!(resp.status().as_u16(), 500, "mode {mode:?}");
        assert!(
            took >= Duration::from_millis(950) && took < Duration::from_secs(5),
            "mode {mode:?}: answered after {took:?}, the timeout is 1 s"
        );

        // The loop is gone, not merely abandoned: the host idles.
        let before = cpu_time(pid);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let used = cpu_time(pid) - before;
        assert!(
            used < Duration::from_millis(500),
            "mode {mode:?}: the host used {used:?} of CPU in 1 s after the timeout"
        );

        // The same component serves on, from a fresh instance.
        let (s, v) = get(&host, "/probe/instance-hits").await;
        assert_eq!(s, 200, "mode {mode:?}: {v}");
        host.log_line(|l| {
            l["msg"] == "request timed out: component instance stopped" && l["component"] == "probe"
        });
        host.log_line(|l| {
            l["msg"] == "request timed out"
                && l["error"] == r#"component "probe": request timed out after 1s"#
                && l["path"] == "/probe/spin"
        });
    }
}

/// The answers the host makes itself (a component that traps, one that
/// runs out of time, a path no route matches) carry what a component's
/// answers carry: the request id (the client's, if well-formed), the
/// security headers, and a problem document naming the id; and the host's
/// warning line about each names the id too.
#[tokio::test(flavor = "multi_thread")]
async fn the_hosts_own_answers_carry_the_request_id_and_the_security_headers() {
    let (_d, host) = start(&["--request-timeout-secs", "1"]);
    for (path, id, status, kind, warning) in [
        (
            "/probe/trap",
            "trap-1",
            500,
            "internal",
            Some("request failed in component"),
        ),
        (
            "/probe/spin",
            "spin-1",
            500,
            "internal",
            Some("request timed out"),
        ),
        ("/nowhere", "lost-1", 404, "not-found", None),
    ] {
        let resp = client()
            .get(host.url(path))
            .header("x-request-id", id)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{path}");
        let h = resp.headers().clone();
        let header = |name: &str| h.get(name).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(header("x-request-id").as_deref(), Some(id), "{path}");
        assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"));
        assert_eq!(header("x-frame-options").as_deref(), Some("DENY"));
        assert_eq!(header("referrer-policy").as_deref(), Some("no-referrer"));
        assert_eq!(header("cache-control").as_deref(), Some("no-store"));
        assert_eq!(
            header("content-type").as_deref(),
            Some("application/problem+json"),
            "{path}"
        );
        let doc: Value = resp.json().await.unwrap();
        assert_eq!(
            doc["type"],
            format!("/docs/problems#{kind}"),
            "{path}: {doc}"
        );
        assert_eq!(doc["status"], status, "{path}: {doc}");
        assert_eq!(doc["request_id"], id, "{path}: {doc}");
        // What failed inside stays in the log.
        assert!(!doc.to_string().contains("traps on purpose"), "{doc}");
        if let Some(warning) = warning {
            host.log_line(|l| l["msg"] == warning && l["request_id"] == id && l["path"] == path);
        }
        // So does the request line.
        host.log_line(|l| l["msg"] == "request" && l["request_id"] == id && l["status"] == status);
    }
    // Without an id of the client's, the host makes one and gives it to the
    // component, so the component's lines and the host's match.
    let resp = client().get(host.url("/probe/trap")).send().await.unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    let doc: Value = resp.json().await.unwrap();
    assert_eq!(doc["request_id"], id.as_str());
    let (_, seen) = get(&host, "/probe/headers").await;
    let given = seen["headers"]["x-request-id"].as_str().unwrap();
    assert!(given.len() == 32 && given != id, "{seen}");
    // The request line names the id the component was given.
    host.log_line(|l| {
        l["msg"] == "request" && l["path"] == "/probe/headers" && l["request_id"] == given
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_on_other_instances_are_served_while_components_loop() {
    let (_d, host) = start(&["--request-timeout-secs", "2"]);
    // Two loops: on a two-core machine, every core is busy in guest code.
    let loops: Vec<_> = (0..2)
        .map(|_| {
            let url = host.url("/probe/spin");
            tokio::spawn(async move {
                let started = Instant::now();
                let resp = client()
                    .get(url)
                    .timeout(Duration::from_secs(15))
                    .send()
                    .await
                    .unwrap();
                (resp.status().as_u16(), started.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..5 {
        let (s, v) = get(&host, "/probe/instance-hits").await;
        assert_eq!(s, 200, "{v}");
    }
    assert!(
        loops.iter().all(|l| !l.is_finished()),
        "the other requests were served while the loops still ran"
    );
    for l in loops {
        let (status, took) = l.await.unwrap();
        assert_eq!(status, 500);
        assert!(took >= Duration::from_millis(1950), "{took:?}");
    }
    assert_eq!(get(&host, "/probe/instance-hits").await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_whose_client_hangs_up_is_carried_out_in_full() {
    let (_d, host) = start(&[]);
    // Five writes 200 ms apart; the client leaves after the first.
    for (key, reset) in [("fin", false), ("rst", true)] {
        let stream = send(
            &host,
            &format!("/probe/slow-writes?key={key}&n=5&sleep_ms=200"),
        )
        .await;
        assert_eq!(
            wait_for_key(&host, &format!("{key}.1"), Duration::from_secs(5)).await,
            "1"
        );
        hang_up(stream, reset);
        assert!(
            get(&host, &format!("/probe/kv/{key}.5")).await.1["value"].is_null(),
            "{key}: the client left before the work was done"
        );
        assert_eq!(
            wait_for_key(&host, &format!("{key}.5"), Duration::from_secs(5)).await,
            "5",
            "{key}: the last write happened"
        );
        for i in 1..=5 {
            assert_eq!(
                get(&host, &format!("/probe/kv/{key}.{i}")).await.1["value"],
                i.to_string(),
                "{key}: write {i}"
            );
        }
    }
    let log = host.stderr();
    assert!(log.contains("client went away before the answer"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(!log.contains("component instance failed"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn work_whose_clients_hung_up_is_finished_before_the_host_stops() {
    let (_d, path) = manifest(APP);
    let state = tempfile::tempdir().unwrap();
    let host = HostBuilder::new(&path).state_dir(state.path()).start();
    // Twenty clients at once, all gone after their first write of five (a
    // load generator killed mid-run), then SIGTERM at once.
    let mut clients = Vec::new();
    for c in 0..20 {
        clients.push(
            send(
                &host,
                &format!("/probe/slow-writes?key=c{c}&n=5&sleep_ms=200"),
            )
            .await,
        );
    }
    for c in 0..20 {
        assert_eq!(
            wait_for_key(&host, &format!("c{c}.1"), Duration::from_secs(5)).await,
            "1"
        );
    }
    for stream in clients {
        hang_up(stream, true);
    }
    terminate(&host);
    let log = host.stderr();
    drop(host);

    // Every write of every request is there after a restart over the store.
    let host = HostBuilder::new(&path).state_dir(state.path()).start();
    for c in 0..20 {
        for i in 1..=5 {
            assert_eq!(
                get(&host, &format!("/probe/kv/c{c}.{i}")).await.1["value"],
                i.to_string(),
                "request {c}, write {i}"
            );
        }
    }
    assert!(log.contains("all component work finished"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(!log.contains("component instance"), "{log}");
}
