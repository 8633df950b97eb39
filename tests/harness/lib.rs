//! Test harness: starts the real `spindle` host binary with real components on
//! a free loopback port and talks to it over real HTTP.
//!
//! `scripts/test` builds the host binary and the wasm components once before
//! the tests run; the harness only checks they are there and says how to
//! build them if not.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Cargo's target directory (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root().join(p) })
        .unwrap_or_else(|| root().join("target"))
}

/// The host binary, built by `scripts/test`.
pub fn spindle_bin() -> PathBuf {
    spindle_bin_in("debug")
}

fn spindle_bin_in(profile: &str) -> PathBuf {
    let bin = target_dir().join(profile).join("spindle");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p spindle-host` (scripts/test does)",
        bin.display()
    );
    bin
}

/// A built component's `.wasm` path.
pub fn wasm(name: &str) -> PathBuf {
    let p = target_dir()
        .join("wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        p.is_file(),
        "{} is missing: run scripts/build-components (scripts/test does)",
        p.display()
    );
    p
}

/// A running host process; killed on drop.
pub struct Host {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// The state directory (key-value database, logs).
    pub state_dir: PathBuf,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
}

/// How to start a host.
pub struct HostBuilder {
    manifest: PathBuf,
    state_dir: Option<PathBuf>,
    env: Vec<(String, String)>,
    args: Vec<String>,
    profile: &'static str,
    listen: String,
}

impl HostBuilder {
    /// A host for `manifest`.
    pub fn new(manifest: impl Into<PathBuf>) -> Self {
        Self {
            manifest: manifest.into(),
            state_dir: None,
            env: Vec::new(),
            args: Vec::new(),
            profile: "debug",
            listen: "127.0.0.1:0".into(),
        }
        .env("SPIN_VARIABLE_CALLBACK_SECRET", TEST_CALLBACK_SECRET)
        .env("SPIN_VARIABLE_WORKER_TOKEN", TEST_WORKER_TOKEN)
        .env("SPIN_VARIABLE_TICK_SECRET", TEST_TICK_SECRET)
        .env("SPIN_VARIABLE_ADMIN_KEY", TEST_ADMIN_KEY)
        .env("SPIN_VARIABLE_JWT_SECRET", TEST_JWT_SECRET)
        // `/webhooks/github` is live: deliveries signed with this verify.
        .env(
            "SPIN_VARIABLE_GITHUB_WEBHOOK_SECRET",
            TEST_GITHUB_WEBHOOK_SECRET,
        )
        // Tests register agents running `sh`, `cat`, `sleep`...
        .env("SPIN_VARIABLE_ALLOWED_COMMANDS", "*")
        // Limits high enough that no test but the rate-limit ones meets
        // them; those set their own.
        .env("SPIN_VARIABLE_RATE_LIMIT_WRITE", "1000000")
        .env("SPIN_VARIABLE_RATE_LIMIT_TRIGGER", "1000000")
        .env("SPIN_VARIABLE_RATE_LIMIT_READ", "1000000")
    }

    /// Listens on `port` (for apps that must know their own URL up front,
    /// such as the worker callback URL).
    pub fn port(mut self, port: u16) -> Self {
        self.listen = format!("127.0.0.1:{port}");
        self
    }

    /// Keeps state in `dir` (to restart over the same store).
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// Sets an environment variable for the host.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Uses the release build of the host (for benchmarks).
    pub fn release(mut self) -> Self {
        self.profile = "release";
        self
    }

    /// Adds a command-line argument.
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.into());
        self
    }

    fn command(&self, state: &Path) -> Command {
        let mut cmd = Command::new(spindle_bin_in(self.profile));
        cmd.arg("up")
            .arg("--from")
            .arg(&self.manifest)
            .arg("--listen")
            .arg(&self.listen)
            .arg("--state-dir")
            .arg(state)
            .args(&self.args)
            .env("SPINDLE_TARGET_DIR", target_dir())
            // Every test starts a host: compile each component once per run.
            .env("SPINDLE_CACHE_DIR", target_dir().join("wasmtime-cache"))
            .env_remove("SPINDLE_LISTEN")
            // Tests read the log as JSON lines, at the default levels.
            .env_remove("SPINDLE_LOG_FORMAT")
            .env_remove("SPINDLE_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts the host and waits until it serves; panics with its stderr if
    /// it exits first.
    pub fn start(self) -> Host {
        match self.try_start() {
            Ok(h) => h,
            Err(e) => panic!("host did not start: {e}"),
        }
    }

    /// Starts the host; `Err` carries its stderr if it exits before serving.
    pub fn try_start(self) -> Result<Host, String> {
        let state = self
            .state_dir
            .clone()
            .unwrap_or_else(|| tempfile::tempdir().unwrap().keep());
        let (child, base, out_buf, err_buf) = spawn_ready(self.command(&state), "Serving ")?;
        Ok(Host {
            child: Some(child),
            base,
            state_dir: state,
            stderr: err_buf,
            stdout: out_buf,
        })
    }
}

/// Spawns `cmd` and waits (up to two minutes: compiling components takes a
/// few seconds on a slow machine) for a stdout line starting with `prefix`;
/// returns the child, the rest of that line, and its captured stdout and
/// stderr. `Err` carries the stderr if it exits first.
#[allow(clippy::type_complexity)]
fn spawn_ready(
    mut cmd: Command,
    prefix: &'static str,
) -> Result<(Child, String, Arc<Mutex<String>>, Arc<Mutex<String>>), String> {
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let err_buf = Arc::new(Mutex::new(String::new()));
    let out_buf = Arc::new(Mutex::new(String::new()));
    {
        let err_buf = err_buf.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut b = err_buf.lock().unwrap();
                b.push_str(&line);
                b.push('\n');
            }
        });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let out_buf = out_buf.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !sent && let Some(rest) = line.strip_prefix(prefix) {
                    let _ = tx.send(rest.trim().to_owned());
                    sent = true;
                }
                let mut b = out_buf.lock().unwrap();
                b.push_str(&line);
                b.push('\n');
            }
        });
    }
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(rest) => Ok((child, rest, out_buf, err_buf)),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(100));
            Err(err_buf.lock().unwrap().clone())
        }
    }
}

/// The callback secret test hosts run with.
pub const TEST_CALLBACK_SECRET: &str = "test-callback-secret-0123456789abcdef";
/// The worker token test hosts and workers share.
pub const TEST_WORKER_TOKEN: &str = "test-worker-token-0123456789abcdefgh";
/// The tick secret test hosts run with.
pub const TEST_TICK_SECRET: &str = "test-tick-secret-0123456789abcdefghij";
/// The bootstrap admin key every test host is given (`admin_key`); the
/// default [`client`] sends it.
pub const TEST_ADMIN_KEY: &str = "test-admin-key-0123456789abcdefghijkl";
/// The HS256 secret test hosts accept tokens under (`jwt_secret`).
pub const TEST_JWT_SECRET: &str = "test-jwt-secret-0123456789abcdefghijk";
/// The GitHub webhook secret test hosts verify `/webhooks/github`
/// deliveries with (`github_webhook_secret`).
pub const TEST_GITHUB_WEBHOOK_SECRET: &str = "test-github-webhook-secret-0123456789abc";

/// A free loopback port (there is a small window in which another process
/// could take it; tests use it at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `spindle-worker`, killed on drop.
pub struct Worker {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
}

impl Worker {
    /// Starts a worker with the process executor and `extra` arguments.
    /// The reference agents' binary (`target/debug/spindle-agents`) is on its
    /// PATH, as the process executor expects.
    pub fn start(extra: &[&str]) -> Worker {
        Self::start_with_path(extra, None)
    }

    /// Like [`Worker::start`], with `dir` first on the worker's PATH.
    pub fn start_with_path(extra: &[&str], dir: Option<&Path>) -> Worker {
        Self::spawn("127.0.0.1:0", extra, dir)
            .unwrap_or_else(|e| panic!("worker did not start: {e}"))
    }

    /// Starts a worker listening on `port` (to restart one at the address
    /// Spindle's pool names); `Err` carries its stderr if it exits first,
    /// e.g. because the port is taken.
    pub fn try_start_on(port: u16, extra: &[&str]) -> Result<Worker, String> {
        Self::spawn(&format!("127.0.0.1:{port}"), extra, None)
    }

    /// The worker's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(listen: &str, extra: &[&str], dir: Option<&Path>) -> Result<Worker, String> {
        let mut cmd = Command::new(target_dir().join("debug/spindle-worker"));
        let mut path = format!(
            "{}:{}",
            target_dir().join("debug").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        if let Some(dir) = dir {
            path = format!("{}:{path}", dir.display());
        }
        cmd.args(["--listen", listen, "--slots", "2"]);
        // The worker has no default executor; tests that do not name one
        // run agents as processes, any program allowed (the agents they
        // register run `sh`, `cat`, `sleep`...).
        if !extra
            .iter()
            .any(|a| *a == "--executor" || a.starts_with("--executor="))
        {
            cmd.args(["--executor", "process", "--allow-command", "*"]);
        }
        cmd.env("PATH", path)
            .env("CONTAINERS_CONF", root().join("scripts/containers.conf"))
            .args(extra)
            .env("SPINDLE_WORKER_TOKEN", TEST_WORKER_TOKEN)
            .env_remove("SPINDLE_WORKER_LISTEN")
            .env_remove("SPINDLE_WORKER_EXECUTOR")
            .env_remove("SPINDLE_WORKER_ALLOW_COMMANDS")
            .env_remove("SPINDLE_LOG_FORMAT")
            .env_remove("SPINDLE_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (child, base, out, err) = spawn_ready(cmd, "Worker listening on ")?;
        Ok(Worker {
            child: Some(child),
            base,
            stderr: err,
            stdout: out,
        })
    }

    /// Everything the worker logged so far (stderr: one JSON object a line).
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The worker's log lines so far, each parsed; panics on a line that is
    /// not a JSON object.
    pub fn log(&self) -> Vec<serde_json::Value> {
        json_lines("the worker", &self.stderr())
    }

    /// Like [`Host::log_line`], for the worker's log.
    pub fn log_line(&self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        wait_for_line("the worker", || self.log(), pred)
    }

    /// Waits (up to ten seconds) until the worker's stderr holds `text`,
    /// and returns it.
    pub fn stderr_with(&self, text: &str) -> String {
        for _ in 0..200 {
            let err = self.stderr();
            if err.contains(text) {
                return err;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the worker never logged {text:?}: {}", self.stderr())
    }

    /// Everything the worker wrote to stdout so far (its start-up line).
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Kills the worker at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits up to `secs` for a clean exit.
    pub fn terminate(&mut self, secs: u64) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        for _ in 0..secs * 20 {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        None
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Host {
    /// The full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Everything the host wrote to stderr so far: its log, one JSON object
    /// a line.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The host's log lines so far, each parsed; panics on a line that is
    /// not a JSON object.
    pub fn log(&self) -> Vec<serde_json::Value> {
        json_lines("the host", &self.stderr())
    }

    /// The first line of the host's log that `pred` accepts, waiting (up to
    /// ten seconds) for it to arrive: the log is read on another thread,
    /// so a line written just before an answer may land just after it.
    /// Panics with the whole log if none comes.
    pub fn log_line(&self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        wait_for_line("the host", || self.log(), pred)
    }

    /// Everything the host wrote to stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits for exit; returns the exit status.
    pub fn stop(self) -> std::process::ExitStatus {
        self.signal("TERM")
    }

    /// Sends `signal` (a name such as `INT`) and waits up to 10 s for exit;
    /// returns the exit status.
    pub fn signal(mut self, signal: &str) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status();
        for _ in 0..200 {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        panic!("host did not exit within 10 s of SIG{signal}");
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_for_line(
    who: &str,
    log: impl Fn() -> Vec<serde_json::Value>,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    for _ in 0..200 {
        if let Some(l) = log().into_iter().find(|l| pred(l)) {
            return l;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{who} logged no such line: {:#?}", log())
}

/// Parses each line of `who`'s log; panics naming the first line that is
/// not a JSON object with the fields every line has (`ts`, `level`, `msg`).
pub fn json_lines(who: &str, text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{who} logged a line that is not JSON ({e}): {l}"));
            assert!(
                v["ts"].is_string() && v["level"].is_string() && v["msg"].is_string(),
                "{who} logged a line without ts, level and msg: {l}"
            );
            v
        })
        .collect()
}

/// Writes a scenario manifest into a fresh directory, with `{{PROBE}}`,
/// `{{API}}` and `{{METRICS}}` replaced by the built wasm paths.
pub fn manifest(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let text = expand(text);
    let path = dir.path().join("spin.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// Replaces the wasm placeholders in manifest text.
pub fn expand(text: &str) -> String {
    let mut text = text.to_owned();
    for (ph, name) in [
        ("{{PROBE}}", "spindle_probe"),
        ("{{API}}", "spindle_api"),
        ("{{METRICS}}", "spindle_metrics"),
    ] {
        if text.contains(ph) {
            text = text.replace(ph, &wasm(name).display().to_string());
        }
    }
    text
}

/// An HTTP client with short timeouts that authenticates as the test
/// host's bootstrap admin ([`TEST_ADMIN_KEY`]).
pub fn client() -> reqwest::Client {
    client_with(Some(TEST_ADMIN_KEY))
}

/// An HTTP client that sends no credentials.
pub fn anon_client() -> reqwest::Client {
    client_with(None)
}

/// An HTTP client sending `Authorization: Bearer <credential>`, if any.
pub fn client_with(credential: Option<&str>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(c) = credential {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {c}").parse().unwrap(),
        );
    }
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        // A redirect is an answer to check, not to follow.
        .redirect(reqwest::redirect::Policy::none())
        .default_headers(headers)
        .build()
        .unwrap()
}

/// Starts an axum server on a free loopback port answering `GET /hello` with
/// `upstream says hi`; returns its port.
pub async fn upstream() -> u16 {
    let app = axum::Router::new().route(
        "/hello",
        axum::routing::get(|| async { "upstream says hi" }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

/// Sends a `method` request that announces a `len`-byte body but sends only the
/// headers, and returns the status. A server that refuses oversized bodies by
/// their Content-Length answers at once; sending the whole body would race
/// the server closing the connection on the unread rest.
pub fn oversized_status(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    len: usize,
) -> u16 {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {len}\r\n");
    // As the admin unless told otherwise: the limit is checked behind the
    // guard.
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
    {
        req.push_str(&format!("authorization: Bearer {TEST_ADMIN_KEY}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    // The status line may arrive in pieces.
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while !got.windows(2).any(|w| w == b"\r\n") {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"))
}

/// The wall clock in milliseconds since the Unix epoch (what the host's
/// components read as now).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The wall clock in whole seconds since the Unix epoch (JWT and signed
/// webhook timestamps).
pub fn now_s() -> u64 {
    now_ms() / 1000
}
