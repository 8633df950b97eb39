//! `spindle-worker`: accepts jobs from Spindle over HTTP, runs each with a
//! bounded number of slots (podman, docker or a local process), renews the
//! job's lease while it holds it, and posts the result back, signed.
//! See `docs/worker-api.md` for the protocol.

mod executor;
mod stop;
mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Parser;
use spindle_core::exec_policy::AllowedCommands;
use spindle_core::job::{Job, SIGNATURE_HEADER};
use spindle_core::problem::ProblemKind;
use spindle_core::sign::secrets_equal;

use crate::executor::{Executor, ExecutorKind};
use crate::worker::{Refusal, Worker};

#[derive(Parser)]
#[command(name = "spindle-worker", version, about = "Runs Spindle agent jobs")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081", env = "SPINDLE_WORKER_LISTEN")]
    listen: SocketAddr,
    /// Name in heartbeats and results (default: worker@<listen address>).
    #[arg(long, env = "SPINDLE_WORKER_NAME")]
    name: Option<String>,
    /// Jobs run at the same time.
    #[arg(long, default_value_t = 2, env = "SPINDLE_WORKER_SLOTS")]
    slots: usize,
    /// Jobs held at once, running or waiting for a slot (default: 4 x slots).
    #[arg(long)]
    capacity: Option<usize>,
    /// How jobs run: in containers (podman, docker), or as processes of
    /// this machine with the worker's own privileges (process: local
    /// development only). No default: running agents on the worker's
    /// machine must be asked for.
    #[arg(
        long,
        value_enum,
        value_name = "podman|docker|process",
        env = "SPINDLE_WORKER_EXECUTOR"
    )]
    executor: ExecutorKind,
    /// A program the process executor may run, as agents name it in
    /// `command[0]` (repeatable; the variable is comma-separated): a name
    /// found on PATH (`spindle-agents`) or an absolute path, compared whole.
    /// `*` allows any. Required with the process executor.
    #[arg(
        long = "allow-command",
        value_name = "PROGRAM",
        env = "SPINDLE_WORKER_ALLOW_COMMANDS",
        value_delimiter = ','
    )]
    allow_commands: Vec<String>,
    /// CPUs each container may use (podman / docker `--cpus`).
    #[arg(long, default_value_t = 1.0, env = "SPINDLE_WORKER_CPUS")]
    cpus: f64,
    /// Global argument for podman / docker, before `run` (repeatable), e.g.
    /// --engine-arg=--runtime --engine-arg=runc.
    #[arg(long = "engine-arg", allow_hyphen_values = true)]
    engine_args: Vec<String>,
    /// Extra argument for `podman run` / `docker run` (repeatable), e.g.
    /// --run-arg=--pull=never.
    #[arg(long = "run-arg", allow_hyphen_values = true)]
    run_args: Vec<String>,
    /// Bearer token Spindle must present (Spindle's `worker_token`).
    #[arg(long, env = "SPINDLE_WORKER_TOKEN", hide_env_values = true)]
    token: String,
    /// On SIGTERM/SIGINT, how long running jobs may finish before they are
    /// handed back to Spindle.
    #[arg(long, default_value_t = 30)]
    shutdown_grace_secs: u64,
    /// How the log on stderr looks: `json` (one object per line) or
    /// `text` (for people at a terminal).
    #[arg(
        long,
        default_value_t,
        value_name = "json|text",
        env = "SPINDLE_LOG_FORMAT"
    )]
    log_format: spindle_log::Format,
}

#[derive(Clone)]
struct AppState {
    worker: Arc<Worker>,
    token: Arc<str>,
}

/// A problem document of `kind`, from the one catalogue of kinds
/// ([`ProblemKind`]: its slug, status and title), with this occurrence's
/// `detail`.
fn problem(kind: ProblemKind, detail: impl Into<String>) -> Response {
    let body = serde_json::json!({
        "type": kind.type_uri(),
        "title": kind.title(),
        "status": kind.status(),
        "detail": detail.into(),
    });
    let status = StatusCode::from_u16(kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [("content-type", "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    secrets_equal(given, &state.token)
}

fn unauthorized() -> Response {
    problem(
        ProblemKind::Unauthorized,
        "send Authorization: Bearer <worker token>",
    )
}

/// Largest job body the worker takes: well above what Spindle sends (an
/// input is at most a few MiB), small enough that a bad caller cannot make
/// the worker buffer much.
const MAX_JOB_BYTES: usize = 16 << 20;

async fn take_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return problem(
                ProblemKind::TooLarge,
                format!("the limit is {MAX_JOB_BYTES} bytes"),
            );
        }
        Err(e) => return problem(ProblemKind::Body, e.body_text()),
    };
    let job: Job = match serde_json::from_slice(&body) {
        Ok(j) => j,
        Err(e) => {
            return problem(ProblemKind::Validation, format!("not a job: {e}"));
        }
    };
    let job_id = job.job_id.clone();
    // Every line about the job, here and through its whole life, names it,
    // its run, and the Spindle request that dispatched it, so the worker's
    // lines can be matched with the app's.
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|id| spindle_core::ids::valid_request_id(id));
    let span = tracing::info_span!("job", job_id = %job.job_id, run_id = %job.run_id, request_id);
    let _in_job = span.enter();
    tracing::info!("job offered");
    match state.worker.accept(job, span.clone()) {
        Ok(()) => (
            StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({"job_id": job_id, "worker": state.worker.name})),
        )
            .into_response(),
        Err(e @ Refusal::NotAllowed(_)) => {
            tracing::warn!(error = %e, "job refused");
            problem(ProblemKind::Validation, e.to_string())
        }
        Err(e) => {
            // Spindle offers it to the next worker, or already has it here.
            tracing::info!(error = %e, "job not taken");
            let kind = match e {
                Refusal::Duplicate(_) => ProblemKind::Duplicate,
                _ => ProblemKind::Unavailable,
            };
            problem(kind, e.to_string())
        }
    }
}

async fn cancel_job(
    State(state): State<AppState>,
    Path(job_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let sig = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match state.worker.cancel(&job_id, &body, sig) {
        Ok(true) => axum::Json(serde_json::json!({"cancelled": job_id})).into_response(),
        Ok(false) => problem(ProblemKind::NotFound, format!("no job {job_id} here")),
        Err(()) => problem(ProblemKind::Signature, "bad job signature"),
    }
}

async fn health(State(state): State<AppState>) -> Response {
    axum::Json(state.worker.load()).into_response()
}

/// Whether `program` is an executable file in one of PATH's directories.
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // One line per failure, with its causes; no backtrace even where
    // RUST_BACKTRACE is set.
    match rt.block_on(serve(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> anyhow::Result<()> {
    spindle_log::init(args.log_format, "info");
    anyhow::ensure!(!args.token.is_empty(), "the worker token must not be empty");
    anyhow::ensure!(args.slots > 0, "--slots must be at least 1");
    // Without its engine, a worker would take every job and fail each as a
    // retryable executor_failed, spending the retry budget of every run it
    // is sent; refusing to start says what is wrong, once.
    if let Some(engine) = args.executor.engine() {
        anyhow::ensure!(
            on_path(engine),
            "the {engine} executor needs `{engine}`, which is not on PATH"
        );
    }
    // A limit the engine refuses would fail every job (and spend every
    // run's retries); refusing to start says so once.
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    anyhow::ensure!(
        args.cpus.is_finite() && (0.01..=host_cpus).contains(&args.cpus),
        "--cpus must be between 0.01 and this machine's {host_cpus} CPUs"
    );
    let allowed_commands = AllowedCommands::from_entries("--allow-command", &args.allow_commands)?;
    if args.executor == ExecutorKind::Process {
        // A process worker runs whatever command a job names; without a
        // list of its own it would trust Spindle's registry entirely.
        anyhow::ensure!(
            !args.allow_commands.is_empty(),
            "the process executor runs agents' commands on this machine: list the programs \
             it may run with --allow-command (e.g. --allow-command spindle-agents; `*` allows \
             any, for tests only)"
        );
        tracing::warn!(
            allowed = %allowed_commands,
            "PROCESS EXECUTOR: agents run on this machine as processes with the worker's own \
             privileges, its network and its files, without memory limits or isolation; it is \
             meant for local development only (use --executor podman or docker elsewhere)"
        );
    } else if !args.allow_commands.is_empty() {
        tracing::warn!(
            executor = ?args.executor,
            "--allow-command applies to the process executor only; ignored"
        );
    }

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("worker@{addr}"));
    let executor = Executor {
        kind: args.executor,
        engine_args: args.engine_args.clone(),
        run_args: args.run_args.clone(),
        allowed_commands,
        cpus: args.cpus,
    };
    let worker = Worker::new(
        name.clone(),
        executor,
        args.slots,
        args.capacity.unwrap_or(args.slots * 4),
    );
    let state = AppState {
        worker: worker.clone(),
        token: args.token.clone().into(),
    };
    let app = axum::Router::new()
        .route("/jobs", post(take_job))
        .route("/jobs/{job_id}/cancel", post(cancel_job))
        .route("/health", get(health))
        // The framework's own answers are problem documents too.
        .fallback(|uri: axum::http::Uri| async move {
            problem(
                ProblemKind::NotFound,
                format!("no worker endpoint at {}", uri.path()),
            )
        })
        .method_not_allowed_fallback(|| async {
            problem(
                ProblemKind::MethodNotAllowed,
                "POST /jobs, POST /jobs/{job_id}/cancel, GET /health",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_JOB_BYTES))
        .with_state(state);

    tracing::info!(%name, executor = ?args.executor, slots = args.slots, "worker ready");
    println!("Worker listening on http://{addr}");
    use std::io::Write as _;
    std::io::stdout().flush().ok();

    let grace = Duration::from_secs(args.shutdown_grace_secs);
    let drained = async move {
        shutdown_signal().await;
        worker.drain();
        tracing::info!(held = worker.held(), "shutting down: finishing held jobs");
        let deadline = tokio::time::Instant::now() + grace;
        while worker.held() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if worker.held() > 0 {
            tracing::warn!(held = worker.held(), "grace period over: handing jobs back");
            worker.hand_back();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            while worker.held() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        tracing::info!("worker stopped");
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(drained)
        .await?;
    Ok(())
}
