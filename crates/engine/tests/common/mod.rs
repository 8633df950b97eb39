//! Shared set-up for the engine's tests: agents and workflows registered
//! through the registry, results signed as a worker signs them, the tick
//! driven by a test clock.
#![allow(dead_code)]

use futures::executor::block_on;
use serde_json::{Value, json};
use spindle_core::agent::AgentSpec;
use spindle_core::job::{JobError, JobResult, JobStatus};
use spindle_core::keys;
use spindle_core::run::{Run, RunStatus, StepStatus, Trigger, TriggerKind};
use spindle_core::sign;
use spindle_core::workflow::WorkflowSpec;
use spindle_engine::registry::Registry;
use spindle_engine::testing::{FakeWorkers, MemStore, TestHost};
use spindle_engine::{Engine, StoreExt};

pub type TestEngine = Engine<MemStore, FakeWorkers, TestHost>;

/// A moment on 2026-11-22.
pub const T0: u64 = 1_795_305_600_000;

pub fn engine() -> TestEngine {
    spindle_engine::testing::engine(T0)
}

pub fn now(e: &TestEngine) -> u64 {
    use spindle_engine::Host;
    e.host.now_ms()
}

/// Registers an agent `name` with `max_attempts` and a 10 s timeout.
pub fn agent(e: &TestEngine, name: &str, max_attempts: u32) {
    agent_from(
        e,
        json!({
            "name": name, "command": [name], "risk_level": "auto", "timeout_secs": 10,
            "retry": {"max_attempts": max_attempts, "initial_backoff_ms": 100, "max_backoff_ms": 400}
        }),
    );
}

pub fn agent_from(e: &TestEngine, doc: Value) {
    let spec: AgentSpec = serde_json::from_value(doc).unwrap();
    let a = spec.into_agent(now(e)).unwrap();
    block_on(async {
        e.store.set(&keys::agent(&a.name), &a).await.unwrap();
        registry(e).agent_created(&a.name).await.unwrap();
        e.store
            .edit_index(keys::AGENT_INDEX, a.name.as_str(), true)
            .await
            .unwrap();
    });
}

pub fn registry(e: &TestEngine) -> Registry<'_, MemStore> {
    Registry {
        store: &e.store,
        now_ms: now(e),
    }
}

/// Registers a workflow.
pub fn workflow(e: &TestEngine, doc: Value) {
    let spec: WorkflowSpec = serde_json::from_value(doc).unwrap();
    block_on(registry(e).create_workflow(spec)).unwrap();
}

/// The one-step workflow `one` on agent `scanner` (2 attempts).
pub fn one_step(e: &TestEngine) {
    agent(e, "scanner", 2);
    workflow(
        e,
        json!({"name": "one", "steps": [{"id": "scan", "agent": "scanner"}]}),
    );
}

pub fn manual(payload: Value) -> Trigger {
    Trigger {
        kind: TriggerKind::Manual,
        payload,
        actor: None,
    }
}

pub fn start(e: &TestEngine, wf: &str) -> Run {
    block_on(e.create_run(wf, manual(json!({})), None))
        .unwrap()
        .0
}

pub fn run(e: &TestEngine, id: &str) -> Run {
    block_on(e.run(id)).unwrap()
}

pub fn step_status(e: &TestEngine, id: &str, step: &str) -> StepStatus {
    run(e, id).step(step).unwrap().status
}

/// A result body and its signature, as a worker makes them.
pub fn signed(job_id: &str, result: &JobResult) -> (Vec<u8>, String) {
    let body = serde_json::to_vec(result).unwrap();
    let token = sign::job_token("test-secret-0123456789abcdefghijklmnop", job_id);
    let sig = sign::sign(&token, &body);
    (body, sig)
}

pub fn success(job_id: &str, output: Value) -> JobResult {
    JobResult {
        job_id: job_id.into(),
        worker: "http://w1".into(),
        status: JobStatus::Succeeded,
        output: Some(output),
        error: None,
        exit_code: Some(0),
        logs_tail: String::new(),
        started_at_ms: T0,
        finished_at_ms: T0,
    }
}

pub fn failure(job_id: &str, kind: spindle_core::job::ErrorKind) -> JobResult {
    JobResult {
        job_id: job_id.into(),
        worker: "http://w1".into(),
        status: JobStatus::Failed,
        output: None,
        error: Some(JobError {
            kind,
            message: "boom".into(),
        }),
        exit_code: Some(1),
        logs_tail: String::new(),
        started_at_ms: T0,
        finished_at_ms: T0,
    }
}

pub fn deliver(
    e: &TestEngine,
    result: &JobResult,
) -> Result<spindle_engine::ResultOutcome, spindle_engine::EngineError> {
    let (body, sig) = signed(&result.job_id, result);
    block_on(e.job_result(&result.job_id, &body, Some(&sig)))
}

pub fn heartbeat(e: &TestEngine, job_id: &str) -> spindle_core::job::HeartbeatReply {
    let body = serde_json::to_vec(&json!({"job_id": job_id, "worker": "http://w1"})).unwrap();
    let sig = sign::sign(
        &sign::job_token("test-secret-0123456789abcdefghijklmnop", job_id),
        &body,
    );
    block_on(e.heartbeat(job_id, &body, Some(&sig))).unwrap()
}

/// Ticks every `step_ms` until `until` says stop or `max_ms` pass.
pub fn tick_until(
    e: &TestEngine,
    step_ms: u64,
    max_ms: u64,
    mut until: impl FnMut(&TestEngine) -> bool,
) {
    let end = now(e) + max_ms;
    while !until(e) {
        assert!(now(e) < end, "condition not reached within {max_ms} ms");
        e.host.advance(step_ms);
        let report = block_on(e.tick()).unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
    }
}

pub fn is_terminal(e: &TestEngine, id: &str) -> bool {
    run(e, id).status.is_terminal()
}

pub fn status(e: &TestEngine, id: &str) -> RunStatus {
    run(e, id).status
}

/// Job ids dispatched so far.
pub fn dispatched(e: &TestEngine) -> Vec<String> {
    e.workers.jobs().into_iter().map(|j| j.job_id).collect()
}
