//! Executors: how a job's agent runs. Every executor has one contract: the
//! job's input as JSON on stdin, the output as JSON on stdout, stderr kept as
//! the logs tail, exit status 0 for success and 65 for a permanent failure,
//! killed at the timeout.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use spindle_core::exec_policy::AllowedCommands;
use spindle_core::job::{EXIT_PERMANENT, ErrorKind, JobAgent, JobError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::stop::StopReason;

/// The bytes of stderr kept for the result.
pub const LOGS_TAIL_BYTES: usize = 4096;

/// Which executor runs jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutorKind {
    /// `podman run`: a hardened container, no network unless the agent asks.
    Podman,
    /// `docker run`: a hardened container, no network unless the agent asks.
    Docker,
    /// The agent's command as a process of this machine (development only).
    Process,
}

impl ExecutorKind {
    /// The container engine's program; `None` for the process executor.
    pub fn engine(self) -> Option<&'static str> {
        match self {
            Self::Podman => Some("podman"),
            Self::Docker => Some("docker"),
            Self::Process => None,
        }
    }
}

/// Executor settings.
#[derive(Debug, Clone)]
pub struct Executor {
    /// Which one.
    pub kind: ExecutorKind,
    /// Global arguments for podman / docker, before `run` (podman's
    /// `--runtime runc`, say).
    pub engine_args: Vec<String>,
    /// Extra arguments for `run`, before the image.
    pub run_args: Vec<String>,
    /// Programs the process executor may run (`--allow-command`); the
    /// container executors run whatever the image holds and ignore it.
    pub allowed_commands: AllowedCommands,
    /// CPUs a container may use (`--cpus`).
    pub cpus: f64,
}

/// The user containers run as: `nobody`, which owns nothing in the image.
pub const CONTAINER_USER: &str = "65534:65534";
/// Processes a container may hold: enough for an agent and its tools, too
/// few for a fork bomb to starve the worker's machine.
pub const CONTAINER_PIDS_LIMIT: u32 = 256;
/// The writable scratch directories of a container (its working directory
/// and `/tmp`): memory-backed, bounded, nothing in them can be executed,
/// setuid or a device. Their pages count against the container's memory
/// limit.
const SCRATCH_TMPFS: &str = "rw,nosuid,nodev,noexec,size=64m,mode=1777";
/// The agent's working directory inside its container.
pub const CONTAINER_WORKDIR: &str = "/work";

/// A job the worker will not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "agent {agent}: program {program:?} is not allowed on this worker (--allow-command: {allowed})"
)]
pub struct NotAllowed {
    /// The agent's name.
    pub agent: String,
    /// Its `command[0]`.
    pub program: String,
    /// The worker's list, as given.
    pub allowed: String,
}

/// How a job's process ended.
#[derive(Debug)]
pub struct Outcome {
    /// The output, or why there is none.
    pub result: Result<Value, JobError>,
    /// Exit status, if it exited.
    pub exit_code: Option<i32>,
    /// The end of stderr.
    pub logs_tail: String,
}

fn fail(kind: ErrorKind, message: impl Into<String>) -> JobError {
    JobError {
        kind,
        message: message.into(),
    }
}

impl Executor {
    /// The container name for a job, so it can be killed by name.
    fn container_name(job_id: &str) -> String {
        format!("spindle-{}", job_id.replace('.', "-"))
    }

    /// Whether this worker will run `agent`. The process executor runs an
    /// agent's command on this machine, with the worker's privileges, even
    /// for an agent that has an image, so its program must be on
    /// `--allow-command`; Spindle's own check at registration covers only
    /// agents without an image. A container runs in its image, where the
    /// command is the image's business.
    pub fn admit(&self, agent: &JobAgent) -> Result<(), NotAllowed> {
        match (self.kind, agent.command.first()) {
            (ExecutorKind::Process, Some(program)) if !self.allowed_commands.allows(program) => {
                Err(NotAllowed {
                    agent: agent.name.clone(),
                    program: program.clone(),
                    allowed: self.allowed_commands.to_string(),
                })
            }
            _ => Ok(()),
        }
    }

    fn command(&self, job_id: &str, agent: &JobAgent) -> Result<Command, JobError> {
        match self.kind.engine() {
            None => {
                // Checked when the job was taken; checked again here, where
                // the process starts, so no other way in can skip it.
                self.admit(agent)
                    .map_err(|e| fail(ErrorKind::ExecutorFailed, e.to_string()))?;
                let (program, args) = agent.command.split_first().ok_or_else(|| {
                    fail(
                        ErrorKind::ExecutorFailed,
                        format!(
                            "agent {} has no command for the process executor",
                            agent.name
                        ),
                    )
                })?;
                let mut cmd = Command::new(program);
                cmd.args(args);
                // The agent runs with the worker's privileges, but not with
                // its credential: with the worker token an agent could offer
                // jobs of its choosing to every worker in the pool.
                cmd.env_remove("SPINDLE_WORKER_TOKEN");
                Ok(cmd)
            }
            Some(engine) => {
                let image = agent.image.as_deref().ok_or_else(|| {
                    fail(
                        ErrorKind::ExecutorFailed,
                        format!(
                            "agent {} has no image for the container executor",
                            agent.name
                        ),
                    )
                })?;
                // Parsed strictly, whatever the registry let through (an
                // agent registered before its policy): an "image" such as
                // `--network=host` would be read as a flag and undo the
                // hardening below.
                if let Err(why) = spindle_core::exec_policy::ImageRef::parse(image) {
                    return Err(fail(
                        ErrorKind::InvalidInput,
                        format!("agent {} has an invalid image reference: {why}", agent.name),
                    ));
                }
                let mut cmd = Command::new(engine);
                cmd.args(&self.engine_args);
                // Never `host`: the worker's machine has Spindle and the
                // worker API on its loopback, and agent code must not reach
                // them. The engine's default bridge gives a network of the
                // container's own (its 127.0.0.1 is its own); docker names it
                // `bridge`, and podman takes `bridge` for its default network.
                let network = if agent.network { "bridge" } else { "none" };
                cmd.args(["run", "--rm", "-i", "--network", network])
                    .arg("--name")
                    .arg(Self::container_name(job_id))
                    .args(self.hardening())
                    .arg("--memory")
                    .arg(format!("{}m", agent.memory_mb))
                    .arg("--cpus")
                    .arg(self.cpus.to_string())
                    .args(&self.run_args)
                    .arg(image)
                    .args(&agent.command);
                Ok(cmd)
            }
        }
    }

    /// What every container runs under, whatever its image says: agent code
    /// is untrusted, so it gets no root, no capabilities, no way to gain
    /// privileges (setuid binaries included), a root filesystem it cannot
    /// change, and bounded scratch space and processes. The only writable
    /// places are its working directory and `/tmp`.
    fn hardening(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            "--user",
            CONTAINER_USER,
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--read-only",
        ]
        .map(String::from)
        .into();
        // podman's --read-only also mounts writable tmpfs on /run, /var/tmp
        // and /tmp unless told not to; docker's does not. Only the two
        // below, in both.
        if self.kind == ExecutorKind::Podman {
            args.push("--read-only-tmpfs=false".into());
        }
        for dir in [CONTAINER_WORKDIR, "/tmp"] {
            args.push("--tmpfs".into());
            args.push(format!("{dir}:{SCRATCH_TMPFS}"));
        }
        // HOME too: the image's home, if any, is read-only now, and an
        // unknown user's differs between the engines (podman: the working
        // directory, docker: `/`).
        args.extend([
            "--workdir".into(),
            CONTAINER_WORKDIR.into(),
            "--env".into(),
            format!("HOME={CONTAINER_WORKDIR}"),
            "--pids-limit".into(),
            CONTAINER_PIDS_LIMIT.to_string(),
        ]);
        args
    }

    /// Runs one job to the end: finished, timed out, or stopped when `stop`
    /// resolves, with the failure kind its reason calls for.
    pub async fn run(
        &self,
        job_id: &str,
        agent: &JobAgent,
        input: &Value,
        max_output_bytes: usize,
        stop: impl Future<Output = StopReason>,
    ) -> Outcome {
        let mut cmd = match self.command(job_id, agent) {
            Ok(c) => c,
            Err(e) => {
                return Outcome {
                    result: Err(e),
                    exit_code: None,
                    logs_tail: String::new(),
                };
            }
        };
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let program = cmd.as_std().get_program().to_string_lossy().into_owned();
                return Outcome {
                    result: Err(fail(
                        ErrorKind::ExecutorFailed,
                        format!("cannot start {program}: {e}"),
                    )),
                    exit_code: None,
                    logs_tail: String::new(),
                };
            }
        };
        let input_bytes = serde_json::to_vec(input).unwrap_or_default();
        let mut stdin = child.stdin.take().expect("piped stdin");
        let feed = tokio::spawn(async move {
            // An agent may exit without reading its input; that is its business.
            let _ = stdin.write_all(&input_bytes).await;
            let _ = stdin.shutdown().await;
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let out_task = tokio::spawn(read_capped(stdout, max_output_bytes + 1));
        let err_task = tokio::spawn(read_tail(stderr, LOGS_TAIL_BYTES));

        let timeout = Duration::from_secs(u64::from(agent.timeout_secs));
        let ended = tokio::select! {
            status = child.wait() => Ended::Exited(status),
            _ = tokio::time::sleep(timeout) => Ended::TimedOut,
            why = stop => Ended::Stopped(why),
        };
        if !matches!(ended, Ended::Exited(_)) {
            self.kill(job_id, &mut child).await;
        }
        feed.abort();
        let stdout = out_task.await.unwrap_or_default();
        let logs_tail = String::from_utf8_lossy(&err_task.await.unwrap_or_default()).into_owned();

        let (result, exit_code) = match ended {
            Ended::TimedOut => (
                Err(fail(
                    ErrorKind::Timeout,
                    format!("killed after its {} s timeout", agent.timeout_secs),
                )),
                None,
            ),
            Ended::Stopped(why) => (Err(fail(why.kind(), why.to_string())), None),
            Ended::Exited(Err(e)) => (
                Err(fail(
                    ErrorKind::ExecutorFailed,
                    format!("waiting for the agent: {e}"),
                )),
                None,
            ),
            Ended::Exited(Ok(status)) => {
                let code = status.code();
                let result = match code {
                    Some(0) if stdout.len() > max_output_bytes => Err(fail(
                        ErrorKind::OutputTooLarge,
                        format!("output is over the {max_output_bytes} byte limit"),
                    )),
                    Some(0) => serde_json::from_slice::<Value>(&stdout).map_err(|e| {
                        fail(
                            ErrorKind::AgentFailed,
                            format!("stdout is not one JSON document: {e}"),
                        )
                    }),
                    Some(EXIT_PERMANENT) => Err(fail(
                        ErrorKind::AgentRejected,
                        format!(
                            "the agent declared a permanent failure (exit status {EXIT_PERMANENT})"
                        ),
                    )),
                    // The container engine's own failures (image missing, bad
                    // flags) exit 125-127 before the agent runs.
                    Some(c @ 125..=127) if self.kind != ExecutorKind::Process => Err(fail(
                        ErrorKind::ExecutorFailed,
                        format!("the container engine failed (exit status {c})"),
                    )),
                    Some(c) => Err(fail(
                        ErrorKind::AgentFailed,
                        format!("exited with status {c}"),
                    )),
                    None => Err(fail(ErrorKind::AgentFailed, "killed by a signal")),
                };
                (result, code)
            }
        };
        Outcome {
            result,
            exit_code,
            logs_tail,
        }
    }

    async fn kill(&self, job_id: &str, child: &mut tokio::process::Child) {
        if let Some(engine) = self.kind.engine() {
            // Killing the client does not always stop the container.
            // `kill` is SIGKILL in both engines and immediate; `rm -f` alone
            // waits ten seconds in podman for a PID 1 that ignores SIGTERM.
            let name = Self::container_name(job_id);
            for action in [&["kill"][..], &["rm", "-f"][..]] {
                let _ = Command::new(engine)
                    .args(&self.engine_args)
                    .args(action)
                    .arg(&name)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .await;
            }
        }
        // The agent's own children go too: it leads its process group.
        if let Some(pid) = child.id() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status()
                .await;
        }
        let _ = child.kill().await;
    }
}

enum Ended {
    Exited(std::io::Result<std::process::ExitStatus>),
    TimedOut,
    Stopped(StopReason),
}

/// Reads everything, keeping only the last `keep` bytes.
async fn read_tail(mut r: impl tokio::io::AsyncRead + Unpin, keep: usize) -> Vec<u8> {
    let mut tail = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > keep {
            tail.drain(..tail.len() - keep);
        }
    }
    tail
}

/// Reads up to `cap` bytes and then drains the rest, so the agent never
/// blocks on a full pipe.
async fn read_capped(mut r: impl tokio::io::AsyncRead + Unpin, cap: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = cap.saturating_sub(out.len());
        out.extend_from_slice(&buf[..n.min(room)]);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use serde_json::json;

    use super::*;

    fn agent(command: &[&str], network: bool) -> JobAgent {
        JobAgent {
            name: "t".into(),
            version: 1,
            image: Some("localhost/spindle/agents:latest".into()),
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            timeout_secs: 60,
            memory_mb: 64,
            network,
        }
    }

    fn executor(kind: ExecutorKind) -> Executor {
        Executor {
            kind,
            engine_args: Vec::new(),
            run_args: Vec::new(),
            allowed_commands: AllowedCommands::Any,
            cpus: 1.0,
        }
    }

    /// A running agent stopped for `why`: the kind comes from the reason
    /// alone, whatever its message says.
    async fn stop_running_agent(why: StopReason) -> JobError {
        let started = Instant::now();
        let out = executor(ExecutorKind::Process)
            .run(
                "r-1.a.1",
                &agent(&["sleep", "30"], false),
                &json!({}),
                1024,
                async move {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    why
                },
            )
            .await;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the agent was not killed"
        );
        assert_eq!(out.exit_code, None);
        out.result.expect_err("a stopped agent has no output")
    }

    #[tokio::test]
    async fn a_hand_back_is_retryable_and_a_cancel_is_not() {
        let handed_back = stop_running_agent(StopReason::HandBack).await;
        assert_eq!(handed_back.kind, ErrorKind::ExecutorFailed);
        assert!(handed_back.kind.retryable());
        for why in [
            StopReason::Cancelled,
            StopReason::NoLongerWanted,
            StopReason::HeartbeatRefused,
        ] {
            let e = stop_running_agent(why).await;
            assert_eq!(e.kind, ErrorKind::Cancelled, "{why:?}");
            assert_eq!(e.message, why.to_string());
        }
    }

    fn args(cmd: &Command) -> Vec<String> {
        cmd.as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn containers_get_a_bridge_or_no_network_never_the_hosts() {
        for kind in [ExecutorKind::Podman, ExecutorKind::Docker] {
            for (network, mode) in [(true, "bridge"), (false, "none")] {
                let cmd = executor(kind)
                    .command("r-1.a.1", &agent(&["true"], network))
                    .unwrap();
                let args = args(&cmd);
                let at = args.iter().position(|a| a == "--network").unwrap();
                assert_eq!(args[at + 1], mode, "{kind:?}: {args:?}");
                assert!(
                    !args.iter().any(|a| a == "host" || a.ends_with("=host")),
                    "{args:?}"
                );
            }
        }
    }

    /// The value after `flag`, wherever it is.
    fn value_of<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn containers_run_hardened_and_limited() {
        for kind in [ExecutorKind::Podman, ExecutorKind::Docker] {
            let mut agent = agent(&["spindle-agents", "security-scanner"], false);
            agent.memory_mb = 300;
            let ex = Executor {
                cpus: 0.5,
                run_args: vec!["--pull=never".into()],
                ..executor(kind)
            };
            let args = args(&ex.command("r-1.a.1", &agent).unwrap());
            assert_eq!(value_of(&args, "--user"), ["65534:65534"], "{args:?}");
            assert_eq!(value_of(&args, "--cap-drop"), ["ALL"]);
            assert_eq!(value_of(&args, "--security-opt"), ["no-new-privileges"]);
            assert!(args.iter().any(|a| a == "--read-only"));
            assert_eq!(
                value_of(&args, "--tmpfs"),
                [
                    "/work:rw,nosuid,nodev,noexec,size=64m,mode=1777",
                    "/tmp:rw,nosuid,nodev,noexec,size=64m,mode=1777"
                ]
            );
            assert_eq!(value_of(&args, "--workdir"), ["/work"]);
            assert_eq!(value_of(&args, "--env"), ["HOME=/work"]);
            assert_eq!(value_of(&args, "--pids-limit"), ["256"]);
            assert_eq!(value_of(&args, "--memory"), ["300m"]);
            assert_eq!(value_of(&args, "--cpus"), ["0.5"]);
            assert_eq!(
                args.iter().any(|a| a == "--read-only-tmpfs=false"),
                kind == ExecutorKind::Podman
            );
            // The operator's own arguments, then the image and its command.
            let tail = &args[args.len() - 4..];
            assert_eq!(
                tail,
                [
                    "--pull=never",
                    "localhost/spindle/agents:latest",
                    "spindle-agents",
                    "security-scanner"
                ]
            );
        }
    }

    #[test]
    fn an_image_that_would_read_as_a_flag_never_reaches_the_engine() {
        for kind in [ExecutorKind::Podman, ExecutorKind::Docker] {
            for image in ["--network=host", "--privileged", "-u0", "Busybox", ""] {
                let mut a = agent(&["true"], false);
                a.image = Some(image.into());
                let e = executor(kind).command("r-1.a.1", &a).unwrap_err();
                assert_eq!(e.kind, ErrorKind::InvalidInput, "{kind:?} {image:?}");
            }
        }
    }

    #[test]
    fn agents_run_as_processes_do_not_get_the_worker_token() {
        let ex = Executor {
            allowed_commands: AllowedCommands::Any,
            ..executor(ExecutorKind::Process)
        };
        let cmd = ex.command("r-1.a.1", &agent(&["true"], false)).unwrap();
        let removed = cmd
            .as_std()
            .get_envs()
            .any(|(k, v)| k == "SPINDLE_WORKER_TOKEN" && v.is_none());
        assert!(
            removed,
            "the token must be removed from the agent's environment"
        );
    }

    #[test]
    fn the_process_executor_runs_only_allowed_programs() {
        let ex = Executor {
            allowed_commands: AllowedCommands::from_entries("--allow-command", ["spindle-agents"])
                .unwrap(),
            ..executor(ExecutorKind::Process)
        };
        ex.admit(&agent(&["spindle-agents", "notifier"], false))
            .unwrap();
        // An image does not help: this executor would run the command here.
        for program in ["sh", "/tmp/spindle-agents", "./spindle-agents"] {
            let err = ex.admit(&agent(&[program, "-c", "id"], false)).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "agent t: program {program:?} is not allowed on this worker (--allow-command: spindle-agents)"
                )
            );
            let e = ex
                .command("r-1.a.1", &agent(&[program], false))
                .unwrap_err();
            assert_eq!(e.kind, ErrorKind::ExecutorFailed);
        }
        // Containers run the image's programs.
        let podman = Executor {
            kind: ExecutorKind::Podman,
            ..ex.clone()
        };
        podman.admit(&agent(&["sh", "-c", "id"], false)).unwrap();
    }
}
