//! Spindle's reference agents, one multi-call binary:
//! `spindle-agents <agent>` (or a link named after the agent).
//!
//! Every agent follows the agent contract: its input as JSON on stdin, its
//! output as one JSON document on stdout, logs on stderr, exit status 0 on
//! success, 65 when the input can never work (permanent), 1 otherwise. The
//! binary has no dependencies beyond the standard library and serde, so it
//! links statically and runs in a busybox container as well as on the host.

mod diff;
mod http;
mod http_check;
mod notifier;
mod patcher;
mod review;
mod scan;

use std::io::Read;
use std::process::ExitCode;

use serde_json::Value;

/// Exit status for a permanent failure (`EX_DATAERR`).
const EXIT_PERMANENT: u8 = 65;

/// How an agent run ends.
#[derive(Debug)]
pub enum Failure {
    /// The input can never work; do not retry.
    Permanent(String),
    /// Something went wrong that might not next time.
    Transient(String),
}

type AgentFn = fn(Value) -> Result<Value, Failure>;

const AGENTS: &[(&str, AgentFn)] = &[
    ("security-scanner", scan::run),
    ("code-reviewer", review::run),
    ("compliance-checker", review::compliance),
    ("patcher", patcher::run),
    ("notifier", notifier::run),
    ("http-check", http_check::run),
];

fn main() -> ExitCode {
    let mut args = std::env::args();
    let argv0 = args.next().unwrap_or_default();
    let called = std::path::Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = if AGENTS.iter().any(|(n, _)| *n == called) {
        called
    } else {
        args.next().unwrap_or_default()
    };
    let Some((_, agent)) = AGENTS.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = AGENTS.iter().map(|(n, _)| *n).collect();
        eprintln!("usage: spindle-agents <{}>", names.join("|"));
        return ExitCode::from(EXIT_PERMANENT);
    };
    let mut raw = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut raw) {
        eprintln!("{name}: reading stdin: {e}");
        return ExitCode::FAILURE;
    }
    let input: Value = if raw.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Default::default())
    } else {
        match serde_json::from_slice(&raw) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("{name}: input is not JSON: {e}");
                return ExitCode::from(EXIT_PERMANENT);
            }
        }
    };
    match agent(input) {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(Failure::Permanent(why)) => {
            eprintln!("{name}: {why}");
            ExitCode::from(EXIT_PERMANENT)
        }
        Err(Failure::Transient(why)) => {
            eprintln!("{name}: {why}");
            ExitCode::FAILURE
        }
    }
}

/// A string field of the input, or a permanent failure naming it.
pub fn field<'a>(input: &'a Value, name: &str) -> Result<&'a str, Failure> {
    input
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| Failure::Permanent(format!("input needs a string field {name:?}")))
}
