//! The key-value layout, written down once.
//!
//! Every document Spindle keeps lives under a key built here, so components,
//! the host's tests and operators' tooling agree on where things are. The store
//! has no scans, so collections are explicit index documents.

use crate::agent::AgentName;

/// The agent definition document for `name` (latest version).
pub fn agent(name: &AgentName) -> String {
    format!("agent:{}", name.as_str())
}

/// The index document listing every agent name, sorted.
pub const AGENT_INDEX: &str = "index:agents";

/// Workflows that use an agent, and whether the agent is being deleted: the
/// document both sides compare-and-swap, so a workflow cannot start using an
/// agent while it is deleted.
pub fn agent_users(name: &str) -> String {
    format!("agent-users:{name}")
}

/// The workflow document for `name` (latest version).
pub fn workflow(name: &str) -> String {
    format!("workflow:{name}")
}

/// The index document listing every workflow name, sorted.
pub const WORKFLOW_INDEX: &str = "index:workflows";

/// The run document.
pub fn run(id: &str) -> String {
    format!("run:{id}")
}

/// A job's output, written once before the run records the success.
pub fn output(job_id: &str) -> String {
    format!("output:{job_id}")
}

/// A job's rendered input, written when it is dispatched.
pub fn input(job_id: &str) -> String {
    format!("input:{job_id}")
}

/// Every pending timer, sorted by due time.
pub const TIMERS: &str = "timers";

/// Run ids of one workflow, oldest first.
pub fn runs_by_workflow(workflow: &str) -> String {
    format!("index:runs:workflow:{workflow}")
}

/// Run ids in one status, oldest first.
pub fn runs_by_status(status: &str) -> String {
    format!("index:runs:status:{status}")
}

/// Run ids created on one UTC day (`YYYY-MM-DD`), oldest first.
pub fn runs_by_day(day: &str) -> String {
    format!("index:runs:day:{day}")
}

/// The days that have runs, sorted.
pub const RUN_DAYS: &str = "index:runs:days";

/// The run an idempotency key created (`hash` names workflow and key).
pub fn idempotency(hash: &str) -> String {
    format!("idempotency:{hash}")
}

/// A key that only ever holds an 8-byte counter (see the store facts in the
/// architecture doc: never store anything else under an incremented key).
pub fn counter(name: &str) -> String {
    format!("counter:{name}")
}

/// The UTC calendar day of a Unix time in milliseconds, as `YYYY-MM-DD`.
pub fn utc_day(ms: u64) -> String {
    // Howard Hinnant's days-to-civil algorithm.
    let z = (ms / 86_400_000) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The creation time a run id carries.
pub fn run_created_ms(id: &str) -> Option<u64> {
    id.strip_prefix('r')?.split('-').next()?.parse().ok()
}

/// A run id: creation time and a store-wide sequence number, so ids sort by
/// creation and never collide.
pub fn run_id(now_ms: u64, seq: u64) -> String {
    format!("r{now_ms:013}-{seq:06}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_namespaced() {
        let name = AgentName::parse("security-scanner").unwrap();
        assert_eq!(agent(&name), "agent:security-scanner");
        assert_eq!(counter("probe"), "counter:probe");
        assert_eq!(run("r-1"), "run:r-1");
        assert_eq!(output("r-1.scan.1"), "output:r-1.scan.1");
        assert_eq!(runs_by_status("running"), "index:runs:status:running");
    }

    #[test]
    fn days_and_run_ids() {
        assert_eq!(utc_day(0), "1970-01-01");
        assert_eq!(utc_day(951_782_400_000), "2000-02-29");
        assert_eq!(utc_day(1_795_305_599_999), "2026-11-21");
        let id = run_id(1_795_305_599_999, 7);
        assert_eq!(id, "r1795305599999-000007");
        assert!(crate::run::valid_run_id(&id));
        assert!(run_id(5, 1) < run_id(6, 0), "ids sort by creation time");
        assert_eq!(run_created_ms(&id), Some(1_795_305_599_999));
        assert_eq!(run_created_ms("x"), None);
    }
}
