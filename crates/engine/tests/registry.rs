//! Defect 6: workflow writes and agent deletes racing. Every interleaving
//! of their store calls keeps the rule "a workflow never uses a deleted
//! agent", and a failed write leaves no claim behind.

mod common;

use common::*;
use futures::executor::block_on;
use serde_json::json;
use spindle_core::agent::AgentName;
use spindle_core::keys;
use spindle_core::workflow::{Workflow, WorkflowSpec};
use spindle_engine::StoreExt;
use spindle_engine::registry::{AgentUsers, RegistryError};

fn spec(agents: &[&str]) -> WorkflowSpec {
    let steps: Vec<_> = agents
        .iter()
        .enumerate()
        .map(|(i, a)| json!({"id": format!("s{i}"), "agent": a}))
        .collect();
    serde_json::from_value(json!({"name": "w", "steps": steps})).unwrap()
}

fn current(e: &TestEngine) -> Option<Workflow> {
    block_on(e.store.get(&keys::workflow("w"))).unwrap()
}

fn agent_exists(e: &TestEngine, name: &str) -> bool {
    block_on(
        e.store
            .get::<serde_json::Value>(&keys::agent(&AgentName::parse(name).unwrap())),
    )
    .unwrap()
    .is_some()
}

#[test]
fn an_update_racing_an_agent_delete_never_leaves_a_workflow_on_a_deleted_agent() {
    let mut outcomes = std::collections::BTreeSet::new();
    for seed in 0..300 {
        let e = engine();
        agent(&e, "a", 1);
        agent(&e, "b", 1);
        // Half the seeds start from a workflow that used b once (so b's
        // users still list it) and dropped it.
        if seed % 2 == 0 {
            block_on(registry(&e).create_workflow(spec(&["a", "b"]))).unwrap();
            block_on(registry(&e).update_workflow("w", spec(&["a"]))).unwrap();
        } else {
            block_on(registry(&e).create_workflow(spec(&["a"]))).unwrap();
        }
        e.store.interleave(seed);
        let reg = registry(&e);
        let name = AgentName::parse("b").unwrap();
        let (updated, deleted) = block_on(async {
            futures::join!(
                reg.update_workflow("w", spec(&["a", "b"])),
                reg.delete_agent(&name)
            )
        });
        let uses_b = current(&e).unwrap().agents().contains("b");
        assert!(
            !uses_b || agent_exists(&e, "b"),
            "seed {seed}: the workflow uses deleted agent b ({updated:?}, {deleted:?})"
        );
        assert_eq!(updated.is_ok(), uses_b, "seed {seed}");
        assert!(
            updated.is_ok() || deleted.is_ok(),
            "seed {seed}: both refused"
        );
        outcomes.insert((updated.is_ok(), deleted.is_ok()));
    }
    // The interleavings reach both winners.
    assert!(outcomes.contains(&(true, false)), "{outcomes:?}");
    assert!(outcomes.contains(&(false, true)), "{outcomes:?}");
}

#[test]
fn two_updates_racing_leave_the_agents_of_the_final_version_claimed() {
    for seed in 0..200 {
        let e = engine();
        for a in ["a", "b", "c"] {
            agent(&e, a, 1);
        }
        block_on(registry(&e).create_workflow(spec(&["a"]))).unwrap();
        e.store.interleave(seed);
        let reg = registry(&e);
        let (u1, u2) = block_on(async {
            futures::join!(
                reg.update_workflow("w", spec(&["a", "b"])),
                reg.update_workflow("w", spec(&["a", "c"]))
            )
        });
        u1.unwrap();
        u2.unwrap();
        let wf = current(&e).unwrap();
        // Whatever the final version uses cannot be deleted.
        for a in wf.agents() {
            let err = block_on(reg.delete_agent(&AgentName::parse(a).unwrap())).unwrap_err();
            assert!(
                matches!(err, RegistryError::AgentInUse(_)),
                "seed {seed}: {a}: {err}"
            );
        }
        // What it no longer uses can.
        for a in ["b", "c"] {
            if !wf.agents().contains(a) {
                block_on(reg.delete_agent(&AgentName::parse(a).unwrap()))
                    .unwrap_or_else(|e| panic!("seed {seed}: {a}: {e}"));
            }
        }
    }
}

/// A write whose claims could not be settled (a store failure) still keeps
/// the agent from being deleted while the written version uses it.
#[test]
fn an_unsettled_claim_still_protects_the_agent() {
    let e = engine();
    agent(&e, "a", 1);
    agent(&e, "b", 1);
    block_on(registry(&e).create_workflow(spec(&["a"]))).unwrap();
    // The claim's settle (the second swap of b's users) fails.
    e.store
        .fail(spindle_engine::testing::Op::Swap, "agent-users:b", 1, 1);
    let r = block_on(registry(&e).update_workflow("w", spec(&["a", "b"])));
    assert!(r.is_err(), "the settle failure is reported");
    assert!(current(&e).unwrap().agents().contains("b"));
    // Even once the claim has expired.
    e.host.advance(spindle_engine::registry::CLAIM_TTL_MS + 1);
    let err = block_on(registry(&e).delete_agent(&AgentName::parse("b").unwrap())).unwrap_err();
    assert!(matches!(err, RegistryError::AgentInUse(_)), "{err}");
    assert!(agent_exists(&e, "b"));
}

#[test]
fn a_failed_workflow_write_leaves_no_claim() {
    let e = engine();
    agent(&e, "a", 1);
    agent(&e, "b", 1);
    let reg = registry(&e);
    // An update of a workflow that does not exist fails after claiming b.
    let err = block_on(reg.update_workflow("w", spec(&["b"]))).unwrap_err();
    assert!(matches!(err, RegistryError::NotFound(_)), "{err}");
    let users: AgentUsers = block_on(e.store.get(&keys::agent_users("b")))
        .unwrap()
        .unwrap_or_default();
    assert!(users.claims.is_empty(), "{users:?}");
    block_on(reg.delete_agent(&AgentName::parse("b").unwrap())).unwrap();
    // A workflow write that validated before the delete cannot claim it.
    let err = block_on(reg.create_workflow(spec(&["b"]))).unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::Invalid(_) | RegistryError::AgentDeleted(_)
        ),
        "{err}"
    );
    // Registering the agent again makes it usable again.
    agent(&e, "b", 1);
    block_on(registry(&e).agent_created(&AgentName::parse("b").unwrap())).unwrap();
    block_on(registry(&e).create_workflow(spec(&["b"]))).unwrap();
}

#[test]
fn an_agent_used_only_as_a_fallback_cannot_be_deleted() {
    let e = engine();
    agent(&e, "a", 1);
    agent(&e, "b", 1);
    agent(&e, "c", 1);
    let with_fallback = |fallback: &str| -> WorkflowSpec {
        serde_json::from_value(json!({"name": "w", "steps": [
            {"id": "s", "agent": "a", "fallback": [fallback]}
        ]}))
        .unwrap()
    };
    // Created with one fallback, updated to another: both ways claim it.
    block_on(registry(&e).create_workflow(with_fallback("b"))).unwrap();
    let name = |n: &str| AgentName::parse(n).unwrap();
    let refused = block_on(registry(&e).delete_agent(&name("b")));
    assert!(
        matches!(refused, Err(RegistryError::AgentInUse(_))),
        "{refused:?}"
    );
    block_on(registry(&e).update_workflow("w", with_fallback("c"))).unwrap();
    let refused = block_on(registry(&e).delete_agent(&name("c")));
    assert!(
        matches!(refused, Err(RegistryError::AgentInUse(_))),
        "{refused:?}"
    );
    assert!(agent_exists(&e, "c"));
    // No longer used: b goes.
    block_on(registry(&e).delete_agent(&name("b"))).unwrap();
    assert!(!agent_exists(&e, "b"));
}
