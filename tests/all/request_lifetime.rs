//! How long a request's work lives: a component stuck in a CPU loop is
//! stopped at the request timeout.

use std::time::{Duration, Instant};

use serde_json::Value;
use spindle_tests::{Host, HostBuilder, client, manifest};

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
        let log = host.stderr();
        assert!(
            log.contains("request timed out: component instance stopped component=probe"),
            "mode {mode:?}: {log}"
        );
        assert!(
            log.contains(r#"request timed out error=component "probe": request timed out after 1s path=/probe/spin"#),
            "mode {mode:?}: {log}"
        );
    }
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
