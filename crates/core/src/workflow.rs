//! Workflows: DAGs of agent steps, and their validation.
//!
//! Validation reports every problem at once, each with the JSON Pointer of
//! the field at fault: bad names, unknown agents, `needs` naming missing
//! steps, cycles, templates that are malformed or read a step that is not an
//! ancestor, and the size limits.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::agent::check_name;
use crate::error::{FieldError, ValidationError};
use crate::retry::RetryPolicy;
use crate::template;

/// Most steps one workflow may have.
pub const MAX_STEPS: usize = 64;
/// Longest run deadline: one week.
pub const MAX_DEADLINE_SECS: u32 = 7 * 86_400;

/// One step as a client writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// Unique within the workflow; used in `needs` and in templates.
    pub id: String,
    /// The agent that runs this step.
    pub agent: String,
    /// Steps that must succeed before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    /// The job input, with templates (see [`crate::template`]).
    #[serde(default = "empty_object")]
    pub input: Value,
    /// Overrides the agent's retry policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Overrides the agent's timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u32>,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// A workflow as a client writes it (create or update).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowSpec {
    /// Unique name, used in trigger URLs.
    pub name: String,
    /// Free-form description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The steps, in any order; `needs` gives the graph.
    pub steps: Vec<StepSpec>,
    /// Wall-clock limit for a whole run; none if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_secs: Option<u32>,
}

/// A stored, validated workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workflow {
    /// Validated name.
    pub name: String,
    /// Starts at 1, bumped by every update.
    pub version: u32,
    /// Description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Validated steps, in the order written.
    pub steps: Vec<StepSpec>,
    /// Run deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_secs: Option<u32>,
    /// When version 1 was created, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// When this version was written, milliseconds since the Unix epoch.
    pub updated_at_ms: u64,
}

impl WorkflowSpec {
    /// Decodes a JSON body; call [`WorkflowSpec::validate`] next.
    pub fn parse(body: &[u8]) -> Result<Self, ValidationError> {
        serde_json::from_slice(body).map_err(|e| crate::error::from_json_error(&e))
    }

    /// Checks everything, reporting every problem; `agent_exists` answers
    /// whether an agent of that name is registered.
    pub fn validate(&self, agent_exists: impl Fn(&str) -> bool) -> Result<(), ValidationError> {
        let mut errors = Vec::new();
        if let Err(e) = check_name(&self.name) {
            errors.push(FieldError::new("/name", e));
        }
        if self.steps.is_empty() {
            errors.push(FieldError::new(
                "/steps",
                "a workflow needs at least one step",
            ));
        }
        if self.steps.len() > MAX_STEPS {
            errors.push(FieldError::new(
                "/steps",
                format!("at most {MAX_STEPS} steps (found {})", self.steps.len()),
            ));
            return ValidationError::check(errors);
        }
        if let Some(d) = self.deadline_secs
            && (d == 0 || d > MAX_DEADLINE_SECS)
        {
            errors.push(FieldError::new(
                "/deadline_secs",
                format!("must be between 1 and {MAX_DEADLINE_SECS}"),
            ));
        }

        let mut index: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, step) in self.steps.iter().enumerate() {
            let at = format!("/steps/{i}");
            if let Err(e) = check_name(&step.id) {
                errors.push(FieldError::new(format!("{at}/id"), e));
            } else if let Some(first) = index.insert(&step.id, i) {
                index.insert(&step.id, first);
                errors.push(FieldError::new(
                    format!("{at}/id"),
                    format!("duplicate step id {:?} (also /steps/{first})", step.id),
                ));
            }
            if check_name(&step.agent).is_err() || !agent_exists(&step.agent) {
                errors.push(FieldError::new(
                    format!("{at}/agent"),
                    format!("no agent named {:?} is registered", step.agent),
                ));
            }
            if let Some(retry) = &step.retry {
                retry.check(&format!("{at}/retry"), &mut errors);
            }
            if let Some(t) = step.timeout_secs
                && (t == 0 || t > crate::agent::MAX_TIMEOUT_SECS)
            {
                errors.push(FieldError::new(
                    format!("{at}/timeout_secs"),
                    format!("must be between 1 and {}", crate::agent::MAX_TIMEOUT_SECS),
                ));
            }
        }
        let mut graph_ok = true;
        for (i, step) in self.steps.iter().enumerate() {
            let mut seen = BTreeSet::new();
            for (j, need) in step.needs.iter().enumerate() {
                let at = format!("/steps/{i}/needs/{j}");
                if need == &step.id {
                    errors.push(FieldError::new(at, "a step cannot need itself"));
                    graph_ok = false;
                } else if !index.contains_key(need.as_str()) {
                    errors.push(FieldError::new(at, format!("no step with id {need:?}")));
                    graph_ok = false;
                } else if !seen.insert(need) {
                    errors.push(FieldError::new(at, format!("{need:?} is listed twice")));
                }
            }
        }
        if graph_ok && let Err(cycle) = topo_order(&self.steps) {
            let first = index[cycle[0].as_str()];
            errors.push(FieldError::new(
                format!("/steps/{first}/needs"),
                format!("the steps form a cycle: {}", cycle.join(" -> ")),
            ));
            graph_ok = false;
        }

        let ancestors = if graph_ok {
            Some(ancestors(&self.steps))
        } else {
            None
        };
        for (i, step) in self.steps.iter().enumerate() {
            let at = format!("/steps/{i}/input");
            let mut strings = Vec::new();
            if let Err(deep) = template::visit(&step.input, &at, 0, &mut strings) {
                errors.push(FieldError::new(
                    deep,
                    format!(
                        "input nests deeper than {} levels",
                        template::MAX_INPUT_DEPTH
                    ),
                ));
                continue;
            }
            for (pointer, s) in strings {
                match template::parse(s) {
                    Err(e) => errors.push(FieldError::new(pointer, format!("bad template: {e}"))),
                    Ok(parts) => {
                        for part in parts {
                            let template::Part::Expr(expr) = part else {
                                continue;
                            };
                            let Some(read) = expr.step() else { continue };
                            let ok = match &ancestors {
                                Some(a) => a[step.id.as_str()].contains(read),
                                None => true,
                            };
                            if !ok {
                                errors.push(FieldError::new(
                                    pointer.clone(),
                                    format!(
                                        "{{{{ {expr} }}}} reads step {read:?}, which is not an ancestor of {:?}; add it to needs (directly or through another step)",
                                        step.id
                                    ),
                                ));
                            }
                        }
                    }
                }
            }
        }
        ValidationError::check(errors)
    }

    /// Version 1 of a workflow from a validated spec.
    pub fn into_workflow(self, now_ms: u64) -> Workflow {
        Workflow {
            name: self.name,
            version: 1,
            description: self.description,
            steps: self.steps,
            deadline_secs: self.deadline_secs,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
        }
    }
}

impl Workflow {
    /// The next version of this workflow with a validated `spec`.
    pub fn updated(&self, spec: WorkflowSpec, now_ms: u64) -> Result<Workflow, ValidationError> {
        if spec.name != self.name {
            return Err(ValidationError::single(
                "/name",
                format!(
                    "a workflow cannot be renamed (path names '{}', body names '{}')",
                    self.name, spec.name
                ),
            ));
        }
        let mut next = spec.into_workflow(now_ms);
        next.version = self.version + 1;
        next.created_at_ms = self.created_at_ms;
        Ok(next)
    }

    /// The names of the agents its steps use.
    pub fn agents(&self) -> BTreeSet<&str> {
        self.steps.iter().map(|s| s.agent.as_str()).collect()
    }
}

/// The steps in an order where every step comes after the steps it needs
/// (ties kept in written order), or the ids along one cycle.
pub fn topo_order(steps: &[StepSpec]) -> Result<Vec<&str>, Vec<String>> {
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut order = Vec::with_capacity(steps.len());
    while order.len() < steps.len() {
        let before = order.len();
        for s in steps {
            if !done.contains(s.id.as_str()) && s.needs.iter().all(|n| done.contains(n.as_str())) {
                done.insert(&s.id);
                order.push(s.id.as_str());
            }
        }
        if order.len() == before {
            return Err(find_cycle(steps, &done));
        }
    }
    Ok(order)
}

/// Walks `needs` edges from a step left unordered until a step repeats.
fn find_cycle(steps: &[StepSpec], done: &BTreeSet<&str>) -> Vec<String> {
    let by_id: BTreeMap<&str, &StepSpec> = steps.iter().map(|s| (s.id.as_str(), s)).collect();
    let mut path: Vec<&str> = Vec::new();
    let mut cur = steps
        .iter()
        .find(|s| !done.contains(s.id.as_str()))
        .map(|s| s.id.as_str())
        .unwrap_or_default();
    loop {
        if let Some(pos) = path.iter().position(|p| *p == cur) {
            let mut cycle: Vec<String> = path[pos..].iter().map(|s| s.to_string()).collect();
            cycle.push(cur.to_owned());
            return cycle;
        }
        path.push(cur);
        let Some(next) = by_id
            .get(cur)
            .and_then(|s| s.needs.iter().find(|n| !done.contains(n.as_str())))
        else {
            return path.iter().map(|s| s.to_string()).collect();
        };
        cur = next;
    }
}

/// Every step's transitive `needs`. The graph must be acyclic.
pub fn ancestors(steps: &[StepSpec]) -> BTreeMap<&str, BTreeSet<&str>> {
    let by_id: BTreeMap<&str, &StepSpec> = steps.iter().map(|s| (s.id.as_str(), s)).collect();
    let mut out: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for id in topo_order(steps).unwrap_or_default() {
        let mut set = BTreeSet::new();
        for n in &by_id[id].needs {
            set.insert(n.as_str());
            set.extend(out[n.as_str()].iter().copied());
        }
        out.insert(id, set);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Value) -> WorkflowSpec {
        serde_json::from_value(v).unwrap()
    }

    fn known(name: &str) -> bool {
        ["scanner", "reviewer", "compliance", "notifier"].contains(&name)
    }

    fn pointers(e: ValidationError) -> Vec<String> {
        e.errors.into_iter().map(|e| e.pointer).collect()
    }

    fn diamond() -> WorkflowSpec {
        spec(json!({
            "name": "pr-checks",
            "steps": [
                {"id": "notify", "agent": "notifier", "needs": ["compliance", "review"],
                 "input": {"findings": "{{ steps.scan.output.findings }}",
                           "summary": "{{ steps.review.output.summary }} / {{ steps.compliance.output.ok }}"}},
                {"id": "compliance", "agent": "compliance", "needs": ["scan"]},
                {"id": "review", "agent": "reviewer", "needs": ["scan"]},
                {"id": "scan", "agent": "scanner",
                 "input": {"repo": "{{ trigger.payload.repository.full_name }}"}}
            ]
        }))
    }

    #[test]
    fn a_diamond_validates_and_orders_parents_first() {
        let w = diamond();
        w.validate(known).unwrap();
        assert_eq!(
            topo_order(&w.steps).unwrap(),
            ["scan", "compliance", "review", "notify"]
        );
        let a = ancestors(&w.steps);
        assert_eq!(
            a["notify"].iter().copied().collect::<Vec<_>>(),
            ["compliance", "review", "scan"]
        );
        assert!(a["scan"].is_empty());
    }

    #[test]
    fn cycles_are_named_with_their_path() {
        let w = spec(json!({"name": "loop", "steps": [
            {"id": "a", "agent": "scanner", "needs": ["c"]},
            {"id": "b", "agent": "scanner", "needs": ["a"]},
            {"id": "c", "agent": "scanner", "needs": ["b"]},
            {"id": "d", "agent": "scanner"}
        ]}));
        let err = w.validate(known).unwrap_err();
        assert_eq!(err.errors.len(), 1, "{err}");
        assert_eq!(err.errors[0].pointer, "/steps/0/needs");
        assert!(err.errors[0].detail.contains("a -> c -> b -> a"), "{err}");
    }

    #[test]
    fn unknown_agents_missing_needs_and_self_needs_are_each_named() {
        let w = spec(json!({"name": "bad", "steps": [
            {"id": "a", "agent": "ghost"},
            {"id": "b", "agent": "scanner", "needs": ["zzz", "b"]},
            {"id": "a", "agent": "scanner"}
        ]}));
        assert_eq!(
            pointers(w.validate(known).unwrap_err()),
            [
                "/steps/0/agent",
                "/steps/2/id",
                "/steps/1/needs/0",
                "/steps/1/needs/1"
            ]
        );
    }

    #[test]
    fn templates_must_parse_and_read_only_ancestors() {
        let w = spec(json!({"name": "t", "steps": [
            {"id": "a", "agent": "scanner", "input": {"x": "{{ steps.b.output }}"}},
            {"id": "b", "agent": "scanner", "input": {"y": ["ok", "{{ trigger.payload"]}},
            {"id": "c", "agent": "scanner", "needs": ["a"], "input": "{{ steps.a.output.z }}"}
        ]}));
        let err = w.validate(known).unwrap_err();
        assert_eq!(
            pointers(err.clone()),
            ["/steps/0/input/x", "/steps/1/input/y/1"]
        );
        assert!(err.errors[0].detail.contains("not an ancestor"), "{err}");
        assert!(err.errors[1].detail.contains("unclosed"), "{err}");
    }

    #[test]
    fn limits_are_enforced() {
        let steps: Vec<Value> = (0..=MAX_STEPS)
            .map(|i| json!({"id": format!("s{i}"), "agent": "scanner"}))
            .collect();
        let w = spec(json!({"name": "big", "steps": steps}));
        assert_eq!(pointers(w.validate(known).unwrap_err()), ["/steps"]);

        let mut deep = json!("x");
        for _ in 0..=template::MAX_INPUT_DEPTH {
            deep = json!({"k": deep});
        }
        let w = spec(json!({"name": "deep", "deadline_secs": 0,
            "steps": [{"id": "a", "agent": "scanner", "input": deep, "timeout_secs": 0,
                        "retry": {"max_attempts": 0}}]}));
        let p = pointers(w.validate(known).unwrap_err());
        assert_eq!(p[0], "/deadline_secs");
        assert_eq!(p[1], "/steps/0/retry/max_attempts");
        assert_eq!(p[2], "/steps/0/timeout_secs");
        assert!(p[3].starts_with("/steps/0/input/k/k/"), "{p:?}");
        assert!(
            spec(json!({"name": "empty", "steps": []}))
                .validate(known)
                .is_err()
        );
    }

    #[test]
    fn unknown_fields_are_refused_at_parse() {
        let err = WorkflowSpec::parse(br#"{"name":"x","steps":[],"stpes":1}"#).unwrap_err();
        assert!(err.to_string().contains("stpes"), "{err}");
    }

    #[test]
    fn updates_bump_the_version_and_keep_the_name() {
        let w = diamond().into_workflow(10);
        let next = w.updated(diamond(), 20).unwrap();
        assert_eq!(
            (next.version, next.created_at_ms, next.updated_at_ms),
            (2, 10, 20)
        );
        let mut renamed = diamond();
        renamed.name = "other".into();
        assert!(w.updated(renamed, 30).is_err());
        assert_eq!(
            w.agents().into_iter().collect::<Vec<_>>(),
            ["compliance", "notifier", "reviewer", "scanner"]
        );
    }
}
