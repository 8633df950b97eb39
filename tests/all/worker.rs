//! `spindle-worker` on its own: a real worker process fed jobs by the test,
//! which plays Spindle's side of the protocol (`docs/worker-api.md`) with a
//! callback server that answers heartbeats and records results.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse as _;
use serde_json::{Value, json};
use spindle_core::sign;
use spindle_tests::{TEST_WORKER_TOKEN, Worker, client, root, target_dir};

const IMAGE: &str = "localhost/spindle/agents:latest";
const JOB_TOKEN: &str = "test-job-token";

/// How the fake Spindle answers heartbeats.
#[derive(Clone, Copy)]
enum Beat {
    KeepRunning,
    /// `keep_running: false`: the job is no longer wanted.
    Stop,
    /// `404`: Spindle does not know the job.
    Refuse,
}

/// Spindle's callback routes: heartbeats answered as told, results recorded.
struct Spindle {
    base: String,
    results: Arc<Mutex<Vec<Value>>>,
}

impl Spindle {
    async fn start(beat: Beat) -> Spindle {
        let results = Arc::new(Mutex::new(Vec::new()));
        let store = results.clone();
        let app = axum::Router::new()
            .route(
                "/jobs/{job_id}/heartbeat",
                axum::routing::post(move || async move {
                    match beat {
                        Beat::KeepRunning => {
                            axum::Json(json!({"keep_running": true})).into_response()
                        }
                        Beat::Stop => axum::Json(json!({"keep_running": false})).into_response(),
                        Beat::Refuse => StatusCode::NOT_FOUND.into_response(),
                    }
                }),
            )
            .route(
                "/jobs/{job_id}/result",
                axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
                    let store = store.clone();
                    async move {
                        store.lock().unwrap().push(v);
                        StatusCode::OK
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Spindle { base, results }
    }

    /// Posts a job for `agent` to `worker`; the worker must take it.
    async fn send(&self, worker: &Worker, job_id: &str, agent: Value) {
        let resp = self.offer(worker, job_id, agent).await;
        assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
    }

    /// Posts a job for `agent` to `worker`; the answer, whatever it is.
    async fn offer(&self, worker: &Worker, job_id: &str, agent: Value) -> reqwest::Response {
        let job = json!({
            "job_id": job_id, "run_id": "r-1", "step_id": "a", "attempt": 1,
            "agent": agent, "input": {}, "lease_ms": 3000, "max_output_bytes": 65536,
            "callback_url": format!("{}/jobs/{job_id}", self.base), "token": JOB_TOKEN,
        });
        client()
            .post(format!("{}/jobs", worker.base))
            .bearer_auth(TEST_WORKER_TOKEN)
            .json(&job)
            .send()
            .await
            .unwrap()
    }

    /// The job's result, once the worker has posted it.
    async fn result(&self, worker: &Worker, job_id: &str, secs: u64) -> Value {
        for _ in 0..secs * 10 {
            let found = self
                .results
                .lock()
                .unwrap()
                .iter()
                .find(|r| r["job_id"] == job_id)
                .cloned();
            if let Some(r) = found {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no result for {job_id}: {}", worker.stderr());
    }
}

/// Waits until the worker runs `n` jobs (not merely holds them).
async fn running(worker: &Worker, n: u64) {
    for _ in 0..100 {
        let load: Value = client()
            .get(format!("{}/health", worker.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if load["running"] == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the job never ran: {}", worker.stderr());
}

fn sleeper() -> Value {
    json!({"name": "sleeper", "version": 1, "command": ["sh", "-c", "cat >/dev/null; sleep 30"],
           "timeout_secs": 60, "memory_mb": 64})
}

fn error_kind(result: &Value) -> &str {
    assert_eq!(result["status"], "failed", "{result:#}");
    result["error"]["kind"].as_str().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_cancelled_by_spindle_reports_cancelled() {
    let spindle = Spindle::start(Beat::KeepRunning).await;
    let worker = Worker::start(&[]);
    spindle.send(&worker, "r-1.a.1", sleeper()).await;
    running(&worker, 1).await;
    let body = serde_json::to_vec(&json!({"job_id": "r-1.a.1"})).unwrap();
    let resp = client()
        .post(format!("{}/jobs/r-1.a.1/cancel", worker.base))
        .bearer_auth(TEST_WORKER_TOKEN)
        .header("x-spindle-signature", sign::sign(JOB_TOKEN, &body))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let r = spindle.result(&worker, "r-1.a.1", 20).await;
    assert_eq!(error_kind(&r), "cancelled", "{r:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_spindle_no_longer_wants_or_does_not_know_reports_cancelled() {
    for beat in [Beat::Stop, Beat::Refuse] {
        let spindle = Spindle::start(beat).await;
        let worker = Worker::start(&[]);
        spindle.send(&worker, "r-1.a.1", sleeper()).await;
        let r = spindle.result(&worker, "r-1.a.1", 20).await;
        assert_eq!(error_kind(&r), "cancelled", "{r:#}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_handed_back_at_shutdown_reports_a_retryable_failure() {
    // Two slots: two jobs run, the third waits for a slot; all are handed
    // back, from either state.
    let spindle = Spindle::start(Beat::KeepRunning).await;
    let mut worker = Worker::start(&["--shutdown-grace-secs", "0"]);
    let jobs = ["r-1.a.1", "r-2.a.1", "r-3.a.1"];
    for job in jobs {
        spindle.send(&worker, job, sleeper()).await;
    }
    running(&worker, 2).await;
    let status = worker.terminate(20).expect("the worker exits");
    assert!(status.success(), "{status:?}");
    for job in jobs {
        let r = spindle.result(&worker, job, 5).await;
        assert_eq!(error_kind(&r), "executor_failed", "{r:#}");
    }
}

/// Runs the worker with `args` (and `PATH` set to `path`, if given),
/// expecting it to refuse to start; returns its exit code and stderr.
fn refused_start(args: &[&str], path: Option<&std::path::Path>) -> (Option<i32>, String) {
    let mut cmd = std::process::Command::new(target_dir().join("debug/spindle-worker"));
    cmd.args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("SPINDLE_WORKER_TOKEN", TEST_WORKER_TOKEN)
        .env_remove("SPINDLE_WORKER_LISTEN")
        .env_remove("SPINDLE_WORKER_EXECUTOR")
        .env_remove("SPINDLE_WORKER_ALLOW_COMMANDS")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    if let Some(path) = path {
        cmd.env("PATH", path);
    }
    let mut child = cmd.spawn().unwrap();
    for _ in 0..200 {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if child.try_wait().unwrap().is_none() {
        let _ = child.kill();
        panic!("the worker started with {args:?}");
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_worker_without_its_container_engine_refuses_to_start() {
    // Were it to start, it would take every job and fail each as a retryable
    // executor_failed.
    let empty = tempfile::tempdir().unwrap();
    let (code, stderr) = refused_start(&["--executor", "docker"], Some(empty.path()));
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("the docker executor needs `docker`, which is not on PATH"),
        "{stderr}"
    );
}

#[test]
fn a_worker_runs_nothing_on_its_own_machine_unless_told_to() {
    // No default executor: clap's usage error lists the choices.
    let (code, stderr) = refused_start(&[], None);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("the following required arguments were not provided")
            && stderr.contains("--executor <podman|docker|process>"),
        "{stderr}"
    );
    // The process executor, and no list of what it may run.
    let (code, stderr) = refused_start(&["--executor", "process"], None);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "the process executor runs agents' commands on this machine: list the programs it may run with --allow-command"
        ),
        "{stderr}"
    );
    // A list it cannot read.
    let (code, stderr) = refused_start(
        &[
            "--executor",
            "process",
            "--allow-command",
            "spindle-agents,,sh",
        ],
        None,
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("--allow-command: entry 2 is empty"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_process_worker_refuses_programs_off_its_list_before_running_anything() {
    let spindle = Spindle::start(Beat::KeepRunning).await;
    let worker = Worker::start(&["--executor", "process", "--allow-command", "cat"]);
    // The start-up warning.
    worker.stderr_with(
        "PROCESS EXECUTOR: agents run on this machine as processes with the worker's own privileges",
    );
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let script = format!("touch {}; cat", marker.display());
    let refused = [
        ("r-1.sh.1", json!(["sh", "-c", script]), None),
        // An image does not help: this executor would run the command here.
        ("r-1.img.1", json!(["sh", "-c", script]), Some(IMAGE)),
        // A path is not the program the list names.
        ("r-1.path.1", json!(["/bin/cat"]), None),
    ];
    for (job, command, image) in refused {
        let mut agent = json!({"name": "intruder", "version": 1, "command": command,
            "timeout_secs": 10, "memory_mb": 64});
        if let Some(image) = image {
            agent["image"] = json!(image);
        }
        let resp = spindle.offer(&worker, job, agent).await;
        // A refusal of the job itself: Spindle tries the next worker and,
        // if every one refuses, fails the attempt as dispatch_failed.
        assert_eq!(resp.status(), 400, "{job}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let problem: Value = resp.json().await.unwrap();
        assert_eq!(problem["type"], "/docs/problems#validation", "{problem:#}");
        let program = command[0].as_str().unwrap();
        assert_eq!(
            problem["detail"],
            format!(
                "agent intruder: program {program:?} is not allowed on this worker (--allow-command: cat)"
            ),
        );
    }
    let load: Value = client()
        .get(format!("{}/health", worker.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(load["held"], 0, "{load}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!marker.exists(), "a refused job ran");
    assert!(spindle.results.lock().unwrap().is_empty(), "no results");

    // What the list names runs.
    let cat = json!({"name": "cat", "version": 1, "command": ["cat"], "timeout_secs": 10,
        "memory_mb": 64});
    spindle.send(&worker, "r-1.cat.1", cat).await;
    let r = spindle.result(&worker, "r-1.cat.1", 20).await;
    assert_eq!(r["status"], "succeeded", "{r:#}");
    assert_eq!(r["output"], json!({}));
}

/// Whether podman can run containers on its default bridge network here.
/// `Err` carries podman's words when only the bridge fails (no netavark or
/// CNI plugins, say); if podman cannot run containers at all, the test runs
/// and fails on that.
fn bridge_available() -> Result<(), String> {
    let run = |network: &str| {
        std::process::Command::new("podman")
            .args(["--runtime", "runc", "run", "--rm", "--network", network])
            .args([IMAGE, "true"])
            .env("CONTAINERS_CONF", root().join("scripts/containers.conf"))
            .output()
            .unwrap()
    };
    let bridge = run("bridge");
    if bridge.status.success() || !run("none").status.success() {
        return Ok(());
    }
    Err(String::from_utf8_lossy(&bridge.stderr).trim().to_owned())
}

/// What an agent sees of its network, as JSON: its interfaces, its default
/// gateway, and whether a TCP connection opens to the worker's port on the
/// container's 127.0.0.1, to the worker's port through the gateway, and to
/// the control port through the gateway. (Only a connection: busybox `nc`
/// half-closes after its input, and hyper then hangs up without answering.)
fn network_probe(worker_port: u16, control_port: u16) -> String {
    format!(
        r#"cat >/dev/null
ifaces=$(sed -n 's/^ *\([^:]*\):.*/\1/p' /proc/net/dev)
gw=$(ip route 2>/dev/null | sed -n 's/^default via \([0-9.]*\).*/\1/p')
reach() {{
  if nc -w 3 "$1" "$2" -e echo 2>/dev/null; then echo yes; else echo no; fi
}}
echo "{{\"ifaces\": \"$(echo $ifaces)\", \"gateway\": \"$gw\", \"loopback_worker\": \"$(reach 127.0.0.1 {worker_port})\", \"gateway_worker\": \"$(reach "$gw" {worker_port})\", \"gateway_control\": \"$(reach "$gw" {control_port})\"}}""#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_with_a_network_is_on_a_bridge_and_cannot_reach_the_hosts_loopback() {
    if !crate::agents::podman_ready() {
        eprintln!("podman or {IMAGE} not available; skipping");
        return;
    }
    if let Err(why) = bridge_available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must test bridge networking: {why}"
        );
        eprintln!("podman's bridge network is unavailable here; skipping: {why}");
        return;
    }
    // A control service on every address of this machine, which the bridge
    // reaches through its gateway: proof that the agent's network works and
    // that only loopback is out of reach.
    let control = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let control_port = control.local_addr().unwrap().port();
    tokio::spawn(async move { while control.accept().await.is_ok() {} });

    let spindle = Spindle::start(Beat::KeepRunning).await;
    let worker = Worker::start(&[
        "--executor",
        "podman",
        "--engine-arg=--runtime",
        "--engine-arg=runc",
    ]);
    // The worker listens on 127.0.0.1 only, as Spindle does by default.
    let worker_port: u16 = worker.base.rsplit(':').next().unwrap().parse().unwrap();
    let probe = network_probe(worker_port, control_port);
    for (job, network) in [("r-1.net.1", true), ("r-1.nonet.1", false)] {
        let agent = json!({"name": "probe", "version": 1, "image": IMAGE,
            "command": ["sh", "-c", probe], "timeout_secs": 60, "memory_mb": 64,
            "network": network});
        spindle.send(&worker, job, agent).await;
        let r = spindle.result(&worker, job, 60).await;
        assert_eq!(r["status"], "succeeded", "{r:#}\n{}", worker.stderr());
        let seen = &r["output"];
        // The worker's port on 127.0.0.1 and through the bridge's gateway.
        assert_eq!(seen["loopback_worker"], "no", "{seen:#}");
        assert_eq!(seen["gateway_worker"], "no", "{seen:#}");
        let ifaces: Vec<&str> = seen["ifaces"].as_str().unwrap().split(' ').collect();
        assert!(ifaces.contains(&"lo"), "{seen:#}");
        if network {
            assert!(ifaces.iter().any(|i| *i != "lo"), "{seen:#}");
            assert_eq!(
                seen["gateway_control"], "yes",
                "the bridge reaches nothing (is {IMAGE} built with nc and ip? \
                 scripts/build-agent-image): {seen:#}"
            );
        } else {
            assert_eq!(ifaces, ["lo"], "{seen:#}");
            assert_eq!(seen["gateway"], "", "{seen:#}");
            assert_eq!(seen["gateway_control"], "no", "{seen:#}");
        }
    }
}

/// What an agent finds it may do in its container, as JSON: who it is,
/// where it starts, where it can write, whether a binary copied into its
/// work dir can run, and its capabilities and no-new-privileges flag as the
/// kernel reports them. It then stays up a few seconds to be inspected.
const CONTAINED_PROBE: &str = r#"cat >/dev/null
w() { if (echo x > "$1") 2>/dev/null; then echo yes; else echo no; fi; }
x() { if busybox cp /bin/busybox "$1" 2>/dev/null && "$1" true 2>/dev/null; then echo yes; else echo no; fi; }
status() { sed -n "s/^$1:[[:space:]]*//p" /proc/self/status; }
echo "{\"uid\": \"$(busybox id -u)\", \"gid\": \"$(busybox id -g)\", \"pwd\": \"$(pwd)\",
 \"work\": \"$(w /work/f)\", \"tmp\": \"$(w /tmp/f)\", \"etc\": \"$(w /etc/f)\",
 \"root\": \"$(w /f)\", \"bin\": \"$(w /bin/f)\", \"exec_work\": \"$(x /work/true)\",
 \"cap_eff\": \"$(status CapEff)\", \"cap_bnd\": \"$(status CapBnd)\",
 \"no_new_privs\": \"$(status NoNewPrivs)\"}"
sleep 6"#;

/// `podman inspect` of a running container, once it runs.
async fn inspect_running(name: &str, worker: &Worker) -> Value {
    for _ in 0..300 {
        let out = std::process::Command::new("podman")
            .args(["--runtime", "runc", "inspect", name])
            .env("CONTAINERS_CONF", root().join("scripts/containers.conf"))
            .output()
            .unwrap();
        if out.status.success() {
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            if v[0]["State"]["Running"] == true {
                return v[0].clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("container {name} never ran: {}", worker.stderr());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_runs_unprivileged_read_only_and_limited() {
    if !crate::agents::podman_ready() {
        eprintln!("podman or {IMAGE} not available; skipping");
        return;
    }
    let spindle = Spindle::start(Beat::KeepRunning).await;
    let worker = Worker::start(&[
        "--executor",
        "podman",
        "--engine-arg=--runtime",
        "--engine-arg=runc",
        "--cpus",
        "0.5",
    ]);
    let job = "r-1.hardened.1";
    let agent = json!({"name": "hardened", "version": 1, "image": IMAGE,
        "command": ["sh", "-c", CONTAINED_PROBE], "timeout_secs": 60, "memory_mb": 96});
    spindle.send(&worker, job, agent).await;

    // The running container, as the engine set it up.
    let c = inspect_running("spindle-r-1-hardened-1", &worker).await;
    let host = &c["HostConfig"];
    assert_eq!(c["Config"]["User"], "65534:65534", "{c:#}");
    assert_eq!(c["Config"]["WorkingDir"], "/work");
    assert_eq!(host["ReadonlyRootfs"], true);
    assert_eq!(host["CapAdd"], json!([]));
    let dropped: Vec<&str> = host["CapDrop"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for cap in ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_SETUID", "CAP_NET_RAW"] {
        assert!(dropped.contains(&cap), "{cap} kept: {dropped:?}");
    }
    assert!(
        host["SecurityOpt"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o == "no-new-privileges"),
        "{:#}",
        host["SecurityOpt"]
    );
    assert_eq!(host["PidsLimit"], 256);
    assert_eq!(host["Memory"], 96 * 1024 * 1024);
    assert_eq!(host["NanoCpus"], 500_000_000);
    assert_eq!(host["NetworkMode"], "none");
    assert_eq!(host["Privileged"], false);
    let tmpfs = host["Tmpfs"].as_object().unwrap();
    let mut dirs: Vec<&str> = tmpfs.keys().map(String::as_str).collect();
    dirs.sort();
    assert_eq!(
        dirs,
        ["/tmp", "/work"],
        "only these are writable: {tmpfs:?}"
    );
    for opts in tmpfs.values() {
        let opts = opts.as_str().unwrap();
        for o in ["rw", "nosuid", "nodev", "noexec", "size=64m"] {
            assert!(opts.split(',').any(|x| x == o), "{o} missing: {opts}");
        }
    }

    // And as the agent found it from inside.
    let r = spindle.result(&worker, job, 60).await;
    assert_eq!(r["status"], "succeeded", "{r:#}\n{}", worker.stderr());
    let seen = &r["output"];
    assert_eq!(
        (&seen["uid"], &seen["gid"], &seen["pwd"]),
        (&json!("65534"), &json!("65534"), &json!("/work")),
        "{seen:#}"
    );
    assert_eq!(seen["work"], "yes", "its work dir is writable: {seen:#}");
    assert_eq!(seen["tmp"], "yes", "{seen:#}");
    for outside in ["etc", "root", "bin"] {
        assert_eq!(seen[outside], "no", "wrote to {outside}: {seen:#}");
    }
    assert_eq!(seen["exec_work"], "no", "ran a binary it wrote: {seen:#}");
    assert_eq!(seen["cap_eff"], "0000000000000000", "{seen:#}");
    assert_eq!(seen["cap_bnd"], "0000000000000000", "{seen:#}");
    assert_eq!(seen["no_new_privs"], "1", "{seen:#}");
}
