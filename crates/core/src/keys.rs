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

/// How much time one timer bucket covers. The tick reads the buckets
/// between its cursor and now.
pub const TIMER_BUCKET_MS: u64 = 250;

/// The bucket a timer due at `at_ms` belongs to.
pub fn timer_bucket_of(at_ms: u64) -> u64 {
    at_ms / TIMER_BUCKET_MS
}

/// The counter of timers ever written into bucket `bucket`: each timer
/// takes the next slot, so adding one is an increment and a plain write,
/// never a compare-and-swap on a document that may not exist yet.
pub fn timer_slots(bucket: u64) -> String {
    counter(&format!("timers:{bucket}"))
}

/// Slot `slot` (1-based) of bucket `bucket`: one timer, deleted once fired.
pub fn timer(bucket: u64, slot: i64) -> String {
    format!("timers:{bucket}:{slot}")
}

/// The oldest timer bucket the tick has not finished with.
pub const TIMER_CURSOR: &str = "timers:cursor";

/// The run with sequence number `seq` (its id), written once when the run
/// is created: the listing of all runs, newest first, walks these down
/// from the run counter.
pub fn run_at(seq: u64) -> String {
    format!("runs:seq:{seq}")
}

/// The `n`-th run (1-based) of `workflow` (its id).
pub fn workflow_run_at(workflow: &str, n: u64) -> String {
    format!("runs:workflow:{workflow}:{n}")
}

/// The counter of runs ever created (each run's sequence number).
pub fn run_counter() -> String {
    counter("runs")
}

/// The counter of one workflow's runs.
pub fn workflow_run_counter(workflow: &str) -> String {
    counter(&format!("runs:workflow:{workflow}"))
}

/// The next run sequence number retention looks at.
pub const RETENTION_CURSOR: &str = "retention:cursor";

/// The counter of runs retention passed over because they were still
/// going; each is kept in a slot ([`retention_held`]) until it is removed.
pub fn retention_held_slots() -> String {
    counter("retention:held")
}

/// Slot `slot` of the runs retention passed over (a run id).
pub fn retention_held(slot: i64) -> String {
    format!("retention:held:{slot}")
}

/// The run an idempotency key created (`hash` names workflow and key).
pub fn idempotency(hash: &str) -> String {
    format!("idempotency:{hash}")
}

/// A registered webhook source.
pub fn source(name: &str) -> String {
    format!("source:{name}")
}

/// The index document listing every registered source, sorted.
pub const SOURCE_INDEX: &str = "index:sources";

/// A subscription: which events start which workflow.
pub fn subscription(name: &str) -> String {
    format!("subscription:{name}")
}

/// The index document listing every subscription, sorted.
pub const SUBSCRIPTION_INDEX: &str = "index:subscriptions";

/// The subscriptions that may listen to `source` (a superset: a name is
/// added before its document is written and removed after): what a
/// delivery reads to find its subscriptions without reading them all.
pub fn source_subscriptions(source: &str) -> String {
    format!("index:subscriptions:{source}")
}

/// What a webhook delivery started (`hash` names source and body), kept
/// for the dedupe window to answer redeliveries.
pub fn delivery(hash: &str) -> String {
    format!("delivery:{hash}")
}

/// Which body a delivery id first came with (`hash` names source and id):
/// the same id with another body is a replay.
pub fn delivery_id(hash: &str) -> String {
    format!("delivery-id:{hash}")
}

/// A cron schedule.
pub fn schedule(name: &str) -> String {
    format!("schedule:{name}")
}

/// The index document listing every schedule, sorted.
pub const SCHEDULE_INDEX: &str = "index:schedules";

/// Where the tick's round of schedule checks goes on from (a name).
pub const SCHEDULE_CHECK_CURSOR: &str = "schedules:check-cursor";

/// How much time one expiry bucket covers: keys with a time to live are
/// deleted by the tick within about this long after they expire.
pub const EXPIRY_BUCKET_MS: u64 = 3_600_000;

/// The counter of entries ever written into expiry bucket `bucket`.
pub fn expiry_slots(bucket: u64) -> String {
    counter(&format!("expire:{bucket}"))
}

/// Slot `slot` of expiry bucket `bucket`: keys to delete once it is due.
pub fn expiry(bucket: u64, slot: i64) -> String {
    format!("expire:{bucket}:{slot}")
}

/// Where the tick's expiry sweep goes on from: a bucket and the slots of
/// it already done.
pub const EXPIRY_CURSOR: &str = "expire:cursor";

/// An approval document (what a gated step asks; `id` is `<run>.<step>`)
/// as assessment number `seq` filed it: a second assessment of the step
/// (a retried one) files its own, and never overwrites the one the run
/// recorded.
pub fn approval(id: &str, seq: u64) -> String {
    format!("approval:{id}:{seq}")
}

/// The rendered input an approval asks about, beside its document.
pub fn approval_input(id: &str, seq: u64) -> String {
    format!("approval-input:{id}:{seq}")
}

/// The approval with listing number `seq` (its id), written once when the
/// approval is asked for: the listing walks these down from the counter.
pub fn approval_at(seq: u64) -> String {
    format!("approvals:seq:{seq}")
}

/// The counter of approvals ever asked for.
pub fn approval_counter() -> String {
    counter("approvals")
}

/// The approval policy (rules and levels); absent: the shipped default.
pub const APPROVAL_POLICY: &str = "policy:approvals";

/// The claim that makes an approval link single-use (`hash`: the token's
/// digest).
pub fn approval_link_claim(hash: &str) -> String {
    counter(&format!("approval-link:{hash}"))
}

/// The circuit breaker document of the worker with base URL `worker`
/// ([`crate::breaker::Breaker`]): the URL's SHA-256 in hex, so any URL
/// makes a short key of safe characters (the document names the URL).
pub fn breaker(worker: &str) -> String {
    use sha2::Digest;
    format!(
        "breaker:{}",
        hex::encode(sha2::Sha256::digest(worker.as_bytes()))
    )
}

/// The counter of trial jobs let through to `worker` in one period of a
/// half-open breaker (`since`: when it turned half-open; `period`: how many
/// open periods since then): at most the successes that close it go
/// through per period, so a worker that hangs is not sent every job.
pub fn breaker_trials(worker: &str, since: u64, period: u64) -> String {
    use sha2::Digest;
    counter(&format!(
        "breaker-trials:{}:{since}:{period}",
        hex::encode(sha2::Sha256::digest(worker.as_bytes()))
    ))
}

/// The counter of breaker transitions into state `to` (a
/// [`crate::breaker::BreakerState`] wire name), over every worker.
pub fn breaker_transitions(to: &str) -> String {
    counter(&format!("breaker_transitions:{to}"))
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
        assert_eq!(run_at(3), "runs:seq:3");
        assert_eq!(workflow_run_at("pr", 1), "runs:workflow:pr:1");
        assert_eq!(timer(timer_bucket_of(12_345), 2), "timers:49:2");
        assert_eq!(timer_slots(49), "counter:timers:49");
        let b = breaker("http://127.0.0.1:8081");
        assert!(
            b.starts_with("breaker:") && b.len() == "breaker:".len() + 64,
            "{b}"
        );
        assert_ne!(b, breaker("http://127.0.0.1:8082"));
        assert_eq!(
            breaker_transitions("open"),
            "counter:breaker_transitions:open"
        );
    }

    #[test]
    fn days() {
        assert_eq!(utc_day(0), "1970-01-01");
        assert_eq!(utc_day(951_782_400_000), "2000-02-29");
        assert_eq!(utc_day(1_795_305_599_999), "2026-11-21");
    }
}
