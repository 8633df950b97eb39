//! Workflows: DAGs of agent steps, and their validation.
//!
//! Validation reports every problem at once, each with the JSON Pointer of
//! the field at fault: bad names, unknown agents, `needs` naming missing
//! steps, cycles, templates and expressions that are malformed or read a
//! step that is not an ancestor, fan-out settings, fallbacks, compensation
//! and on-failure steps, and the size limits.
//!
//! Beyond the plain DAG, a step may have a condition (`when`), fan out over
//! a list (`for_each`), fall back to other agents (`fallback`) and name a
//! compensation step (`compensate`); a workflow may name `on_failure`
//! steps. Compensation and on-failure steps are *handlers*: they are not
//! part of the normal flow and run only when the run fails (see
//! [`crate::run`] for the order).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::agent::check_name;
use crate::error::{FieldError, MAX_ERRORS, ValidationError};
use crate::expr;
use crate::retry::RetryPolicy;
use crate::template;

/// Most steps one workflow may have.
pub const MAX_STEPS: usize = 64;
/// Most fallback agents one step may name.
pub const MAX_FALLBACKS: usize = 3;
/// Most items of one fan-out step running at once.
pub const MAX_PARALLEL: u32 = 64;
/// Items of a fan-out step running at once unless it says.
pub const DEFAULT_MAX_PARALLEL: u32 = 4;
/// Items a fan-out step takes unless it says; more fail the step.
pub const DEFAULT_MAX_ITEMS: u32 = 100;

/// What a step does when a step it needs was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IfNeedsSkipped {
    /// It is skipped too (the default).
    #[default]
    Skip,
    /// It runs anyway; the skipped step's output reads as `null`.
    Run,
}

impl IfNeedsSkipped {
    fn is_default(&self) -> bool {
        *self == Self::Skip
    }
}

/// The part a step plays in a workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepRole {
    /// Part of the DAG: runs once its needs are done.
    #[default]
    Normal,
    /// Undoes another step's work when a later step fails.
    Compensation,
    /// Runs once when the run fails, after the compensations.
    OnFailure,
}

impl StepRole {
    /// Whether this is the default, for serde.
    pub fn is_normal(&self) -> bool {
        *self == Self::Normal
    }
}
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
    /// Runs the step only when this expression (see [`crate::expr`]) is
    /// true; it is skipped, with the reason, otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// What the step does when a step it needs was skipped.
    #[serde(default, skip_serializing_if = "IfNeedsSkipped::is_default")]
    pub if_needs_skipped: IfNeedsSkipped,
    /// Runs one job per item of the list this expression gives; the step's
    /// output is the items' outputs, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<String>,
    /// With `for_each`: most items running at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
    /// With `for_each`: most items taken; a longer list fails the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_items: Option<u32>,
    /// With `for_each`: a failed item leaves `null` in the output instead
    /// of failing the step.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_partial_failure: bool,
    /// Agents tried in order when the agent fails for good.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback: Vec<String>,
    /// The step that undoes this one's work when a later step fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensate: Option<String>,
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
    /// JSON Schema every trigger payload must satisfy; any payload if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
    /// Steps that run once when a run fails (after its compensations).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_failure: Vec<String>,
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
    /// JSON Schema of the trigger payload, vetted at registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
    /// Steps that run once when a run fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_failure: Vec<String>,
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
        errors.extend(crate::agent::check_description(&self.description));
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
        if let Some(schema) = &self.input_schema {
            // Vetted exactly as an agent's schemas are (see `crate::schema`):
            // it runs against payloads anyone allowed to trigger may send.
            if !(schema.is_object() || schema.is_boolean()) {
                errors.push(FieldError::new(
                    "/input_schema",
                    "must be a JSON Schema (an object or a boolean)",
                ));
            } else if let Some(e) = crate::schema::compile_error(schema) {
                errors.push(FieldError::new(
                    format!("/input_schema{}", e.pointer),
                    format!("not an accepted JSON Schema: {}", e.detail),
                ));
            }
        }

        // Every position of every id, so a duplicate can name all the others
        // and `needs` can resolve ids whatever their spelling.
        let mut index: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, step) in self.steps.iter().enumerate() {
            index.entry(step.id.as_str()).or_default().push(i);
        }
        // With an id written twice, `needs` and templates are ambiguous, so the
        // graph checks below would only add noise (and used to panic).
        let mut graph_ok = index.values().all(|at| at.len() == 1);
        for (i, step) in self.steps.iter().enumerate() {
            let at = format!("/steps/{i}");
            let twins = index.get(step.id.as_str()).map_or(&[][..], Vec::as_slice);
            if let Err(e) = check_name(&step.id) {
                errors.push(FieldError::new(format!("{at}/id"), e));
            } else if twins.len() > 1 {
                let others: Vec<String> = twins
                    .iter()
                    .filter(|&&j| j != i)
                    .map(|j| format!("/steps/{j}/id"))
                    .collect();
                errors.push(FieldError::new(
                    format!("{at}/id"),
                    format!(
                        "duplicate step id {:?} (also at {}); step ids must be unique",
                        step.id,
                        others.join(", ")
                    ),
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
        for (i, step) in self.steps.iter().enumerate() {
            // A longer list must repeat or invent ids; one error says so
            // instead of one per entry.
            if step.needs.len() >= MAX_STEPS {
                errors.push(FieldError::new(
                    format!("/steps/{i}/needs"),
                    format!(
                        "at most {} needs (found {})",
                        MAX_STEPS - 1,
                        step.needs.len()
                    ),
                ));
                graph_ok = false;
                continue;
            }
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
            let at = cycle
                .first()
                .and_then(|id| index.get(id.as_str()))
                .and_then(|at| at.first())
                .map_or_else(|| "/steps".to_owned(), |i| format!("/steps/{i}/needs"));
            errors.push(FieldError::new(
                at,
                format!("the steps form a cycle: {}", cycle.join(" -> ")),
            ));
            graph_ok = false;
        }

        let roles = roles(&self.steps, &self.on_failure);
        self.check_handlers(&index, &roles, &mut errors);
        let readable = graph_ok.then(|| readable(&self.steps, &self.on_failure));
        for (i, step) in self.steps.iter().enumerate() {
            if errors.len() > MAX_ERRORS {
                break; // `check` lists no more than this
            }
            let role = roles.get(step.id.as_str()).copied().unwrap_or_default();
            let reads = |read: &str| match &readable {
                Some(r) => r.get(step.id.as_str()).is_some_and(|a| a.contains(read)),
                None => true,
            };
            check_fan_out(i, step, &index, &reads, &mut errors);
            if let Some(src) = &step.when {
                check_expression(
                    src,
                    &format!("/steps/{i}/when"),
                    Wanted::Condition,
                    step,
                    &index,
                    &reads,
                    &mut errors,
                );
            }
            for (j, agent) in step.fallback.iter().enumerate() {
                let at = format!("/steps/{i}/fallback/{j}");
                if check_name(agent).is_err() || !agent_exists(agent) {
                    errors.push(FieldError::new(
                        at,
                        format!("no agent named {agent:?} is registered"),
                    ));
                } else if agent == &step.agent {
                    errors.push(FieldError::new(
                        at,
                        format!("{agent:?} is the step's own agent; a fallback must be another"),
                    ));
                } else if step.fallback[..j].contains(agent) {
                    errors.push(FieldError::new(at, format!("{agent:?} is listed twice")));
                }
            }
            if step.fallback.len() > MAX_FALLBACKS {
                errors.push(FieldError::new(
                    format!("/steps/{i}/fallback"),
                    format!(
                        "at most {MAX_FALLBACKS} fallback agents (found {})",
                        step.fallback.len()
                    ),
                ));
            }
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
                if errors.len() > MAX_ERRORS {
                    break;
                }
                match template::parse(s) {
                    Err(e) => errors.push(FieldError::new(pointer, format!("bad template: {e}"))),
                    Ok(parts) => {
                        for part in parts {
                            let template::Part::Expr(expr) = part else {
                                continue;
                            };
                            let misplaced = match expr.root() {
                                "item" | "item_index" if step.for_each.is_none() => Some(
                                    "is only defined in a step with for_each (one job per item)",
                                ),
                                "failure" if role.is_normal() => {
                                    Some("is only defined in compensation and on-failure steps")
                                }
                                _ => None,
                            };
                            if let Some(why) = misplaced {
                                errors.push(FieldError::new(
                                    pointer.clone(),
                                    format!("{{{{ {expr} }}}} {why}"),
                                ));
                                continue;
                            }
                            let Some(read) = expr.step() else { continue };
                            if let Some(why) = read_problem(read, step, &index, &reads) {
                                errors.push(FieldError::new(
                                    pointer.clone(),
                                    format!("{{{{ {expr} }}}} {why}"),
                                ));
                            }
                        }
                    }
                }
            }
        }
        ValidationError::check(errors)
    }

    /// Checks `compensate` and `on_failure`: each names a step that plays
    /// no other part, no compensation chains or cycles, and handlers stay
    /// out of the normal flow.
    fn check_handlers(
        &self,
        index: &BTreeMap<&str, Vec<usize>>,
        roles: &BTreeMap<&str, StepRole>,
        errors: &mut Vec<FieldError>,
    ) {
        let position = |id: &str| index.get(id).and_then(|at| at.first()).copied();
        let mut compensates: BTreeMap<&str, &str> = BTreeMap::new();
        for (i, step) in self.steps.iter().enumerate() {
            let Some(target) = &step.compensate else {
                continue;
            };
            let at = format!("/steps/{i}/compensate");
            if target == &step.id {
                errors.push(FieldError::new(
                    at,
                    format!(
                        "compensation cycle: {0} -> {0}; a step cannot compensate itself",
                        step.id
                    ),
                ));
                continue;
            }
            let Some(t) = position(target) else {
                errors.push(FieldError::new(at, format!("no step with id {target:?}")));
                continue;
            };
            if let Some(first) = compensates.insert(target, &step.id) {
                compensates.insert(target, first);
                errors.push(FieldError::new(
                    at,
                    format!(
                        "step {target:?} already compensates {first:?}; give each step its own compensation step"
                    ),
                ));
                continue;
            }
            if self.steps[t].compensate.is_some() {
                // Walk the chain: back to this step is a cycle, anything
                // else a compensation that would need compensating.
                let mut path = vec![step.id.as_str(), target.as_str()];
                let mut cur = t;
                let mut cycle = false;
                while let Some(next) = self.steps[cur].compensate.as_deref() {
                    let seen = path.contains(&next);
                    path.push(next);
                    if seen {
                        cycle = true;
                        break;
                    }
                    match position(next) {
                        Some(n) => cur = n,
                        None => break,
                    }
                }
                let detail = if cycle {
                    format!("compensation cycle: {}", path.join(" -> "))
                } else {
                    format!(
                        "step {target:?} is a compensation step, so it cannot name a compensation of its own"
                    )
                };
                errors.push(FieldError::new(at, detail));
            }
        }
        for (j, name) in self.on_failure.iter().enumerate() {
            let at = format!("/on_failure/{j}");
            if position(name).is_none() {
                errors.push(FieldError::new(at, format!("no step with id {name:?}")));
            } else if self.on_failure[..j].contains(name) {
                errors.push(FieldError::new(at, format!("{name:?} is listed twice")));
            } else if roles.get(name.as_str()) == Some(&StepRole::Compensation) {
                errors.push(FieldError::new(
                    at,
                    format!(
                        "{name:?} is a compensation step; it cannot also be an on-failure step"
                    ),
                ));
            }
        }
        if self.on_failure.len() > MAX_STEPS {
            errors.push(FieldError::new(
                "/on_failure",
                format!("at most {MAX_STEPS} on-failure steps"),
            ));
        }
        let what = |role: StepRole| match role {
            StepRole::Compensation => "a compensation step",
            _ => "an on-failure step",
        };
        for (i, step) in self.steps.iter().enumerate() {
            let role = roles.get(step.id.as_str()).copied().unwrap_or_default();
            if !role.is_normal() {
                if !step.needs.is_empty() {
                    errors.push(FieldError::new(
                        format!("/steps/{i}/needs"),
                        format!(
                            "{:?} is {}: it runs only when the run fails, so it cannot have needs",
                            step.id,
                            what(role)
                        ),
                    ));
                }
                if step.for_each.is_some() {
                    errors.push(FieldError::new(
                        format!("/steps/{i}/for_each"),
                        format!("{:?} is {} and cannot fan out", step.id, what(role)),
                    ));
                }
                if role == StepRole::OnFailure && step.compensate.is_some() {
                    errors.push(FieldError::new(
                        format!("/steps/{i}/compensate"),
                        "an on-failure step cannot name a compensation",
                    ));
                }
            }
            for (j, need) in step.needs.iter().enumerate() {
                let role = roles.get(need.as_str()).copied().unwrap_or_default();
                if !role.is_normal() {
                    errors.push(FieldError::new(
                        format!("/steps/{i}/needs/{j}"),
                        format!(
                            "{need:?} is {}: it runs only when the run fails, so no step can need it",
                            what(role)
                        ),
                    ));
                }
            }
        }
        if !self.steps.is_empty() && roles.values().all(|r| !r.is_normal()) {
            errors.push(FieldError::new(
                "/steps",
                "a workflow needs at least one step that is not a compensation or on-failure step",
            ));
        }
    }

    /// Version 1 of a workflow from a validated spec.
    pub fn into_workflow(self, now_ms: u64) -> Workflow {
        Workflow {
            name: self.name,
            version: 1,
            description: self.description,
            steps: self.steps,
            deadline_secs: self.deadline_secs,
            input_schema: self.input_schema,
            on_failure: self.on_failure,
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
        // A stored document is only as trustworthy as the store; a wrapped
        // version would make an update look older than the runs it replaces.
        next.version = self.version.checked_add(1).ok_or_else(|| {
            ValidationError::single("", "this workflow has reached its last version number")
        })?;
        next.created_at_ms = self.created_at_ms;
        Ok(next)
    }

    /// Checks a trigger payload against the workflow's input schema (any
    /// payload passes without one). Each violation points into the
    /// payload under `/payload` (`/payload/ref`; a missing member is the
    /// object's fault, so `/payload` itself).
    pub fn check_payload(&self, payload: &Value) -> Result<(), ValidationError> {
        let Some(schema) = &self.input_schema else {
            return Ok(());
        };
        crate::schema::check_fields(schema, payload, "/payload")
            .map_err(|errors| ValidationError { errors })
    }

    /// The names of the agents its steps use, fallbacks included.
    pub fn agents(&self) -> BTreeSet<&str> {
        self.steps
            .iter()
            .flat_map(|s| std::iter::once(&s.agent).chain(&s.fallback))
            .map(String::as_str)
            .collect()
    }

    /// The part each step plays.
    pub fn roles(&self) -> BTreeMap<&str, StepRole> {
        roles(&self.steps, &self.on_failure)
    }
}

/// What an expression must give.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wanted {
    Condition,
    List,
}

/// Why a template or expression of `step` may not read step `read`, if
/// it may not.
fn read_problem(
    read: &str,
    step: &StepSpec,
    index: &BTreeMap<&str, Vec<usize>>,
    reads: &dyn Fn(&str) -> bool,
) -> Option<String> {
    if !index.contains_key(read) {
        Some(format!("reads step {read:?}, which does not exist"))
    } else if !reads(read) {
        Some(format!(
            "reads step {read:?}, which is not an ancestor of {:?}; add it to needs (directly or through another step)",
            step.id
        ))
    } else {
        None
    }
}

/// Parses and type-checks an expression of `step` at pointer `at`.
fn check_expression(
    src: &str,
    at: &str,
    wanted: Wanted,
    step: &StepSpec,
    index: &BTreeMap<&str, Vec<usize>>,
    reads: &dyn Fn(&str) -> bool,
    errors: &mut Vec<FieldError>,
) {
    let parsed = match expr::parse(src) {
        Ok(e) => e,
        Err(e) => {
            errors.push(FieldError::new(at, format!("bad expression: {e}")));
            return;
        }
    };
    for path in parsed.paths() {
        if let Some(read) = path.step()
            && let Some(why) = read_problem(read, step, index, reads)
        {
            errors.push(FieldError::new(
                at,
                format!("{} {why}", path.segments.join(".")),
            ));
            return;
        }
    }
    match (parsed.type_check(), wanted) {
        (Err(e), _) => errors.push(FieldError::new(at, format!("bad expression: {e}"))),
        (Ok(expr::Type::Bool | expr::Type::Any), Wanted::Condition)
        | (Ok(expr::Type::List | expr::Type::Any), Wanted::List) => {}
        (Ok(t), Wanted::Condition) => errors.push(FieldError::new(
            at,
            format!(
                "a condition must give true or false; this one gives {}",
                t.name()
            ),
        )),
        (Ok(t), Wanted::List) => errors.push(FieldError::new(
            at,
            format!("for_each needs a list; this expression gives {}", t.name()),
        )),
    }
}

/// Checks `for_each` and the settings that only make sense with it.
fn check_fan_out(
    i: usize,
    step: &StepSpec,
    index: &BTreeMap<&str, Vec<usize>>,
    reads: &dyn Fn(&str) -> bool,
    errors: &mut Vec<FieldError>,
) {
    let at = |field: &str| format!("/steps/{i}/{field}");
    let Some(src) = &step.for_each else {
        let only = "only a step with for_each takes this";
        if step.max_parallel.is_some() {
            errors.push(FieldError::new(at("max_parallel"), only));
        }
        if step.max_items.is_some() {
            errors.push(FieldError::new(at("max_items"), only));
        }
        if step.allow_partial_failure {
            errors.push(FieldError::new(at("allow_partial_failure"), only));
        }
        return;
    };
    check_expression(
        src,
        &at("for_each"),
        Wanted::List,
        step,
        index,
        reads,
        errors,
    );
    if let Some(n) = step.max_parallel
        && !(1..=MAX_PARALLEL).contains(&n)
    {
        errors.push(FieldError::new(
            at("max_parallel"),
            format!("must be between 1 and {MAX_PARALLEL}"),
        ));
    }
    let most = crate::ids::MAX_ITEMS as u32;
    if let Some(n) = step.max_items
        && !(1..=most).contains(&n)
    {
        errors.push(FieldError::new(
            at("max_items"),
            format!("must be between 1 and {most}"),
        ));
    }
}

/// The steps whose outputs `step` reads: those its input templates, its
/// condition and its fan-out list name. Only these are read from the store
/// when it runs (statuses come with the run). Unparsable parts name
/// nothing (validation refuses them).
pub fn reads(step: &StepSpec) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut strings = Vec::new();
    if template::visit(&step.input, "", 0, &mut strings).is_ok() {
        for (_, s) in strings {
            for part in template::parse(s).unwrap_or_default() {
                if let template::Part::Expr(e) = part
                    && e.path.get(2).is_some_and(|seg| seg == "output")
                    && let Some(read) = e.step()
                {
                    out.insert(read.to_owned());
                }
            }
        }
    }
    for src in step.when.iter().chain(&step.for_each) {
        if let Ok(e) = expr::parse(src) {
            for path in e.paths() {
                if path.segments.get(2).is_some_and(|seg| seg == "output")
                    && let Some(read) = path.step()
                {
                    out.insert(read.to_owned());
                }
            }
        }
    }
    out
}

/// The part each step plays: a step named by another's `compensate` is a
/// compensation step, one named in `on_failure` an on-failure step, every
/// other a normal one. Safe on unvalidated steps.
pub fn roles<'a>(steps: &'a [StepSpec], on_failure: &[String]) -> BTreeMap<&'a str, StepRole> {
    let mut out: BTreeMap<&str, StepRole> = steps
        .iter()
        .map(|s| (s.id.as_str(), StepRole::Normal))
        .collect();
    for s in steps {
        if let Some(r) = s.compensate.as_deref().and_then(|c| out.get_mut(c)) {
            *r = StepRole::Compensation;
        }
    }
    for f in on_failure {
        if let Some(r) = out.get_mut(f.as_str())
            && r.is_normal()
        {
            *r = StepRole::OnFailure;
        }
    }
    out
}

/// The steps each step's templates and expressions may read: a normal
/// step its ancestors; a compensation step the step it undoes and that
/// step's ancestors; an on-failure step every normal step.
pub fn readable<'a>(
    steps: &'a [StepSpec],
    on_failure: &[String],
) -> BTreeMap<&'a str, BTreeSet<&'a str>> {
    let mut out = ancestors(steps);
    let roles = roles(steps, on_failure);
    let normal: BTreeSet<&str> = roles
        .iter()
        .filter(|(_, r)| r.is_normal())
        .map(|(id, _)| *id)
        .collect();
    for s in steps {
        let Some(c) = s.compensate.as_deref() else {
            continue;
        };
        let Some((&key, _)) = roles.get_key_value(c) else {
            continue;
        };
        let mut set = out.get(s.id.as_str()).cloned().unwrap_or_default();
        set.insert(s.id.as_str());
        out.insert(key, set);
    }
    for (id, role) in &roles {
        if *role == StepRole::OnFailure {
            out.insert(id, normal.clone());
        }
    }
    out
}

/// The steps in an order where every step comes after the steps it needs
/// (ties kept in written order), or, when some steps can never be ordered,
/// the ids along the path that blocks them: a cycle (its first id repeated
/// at the end), or a chain ending at an id no step has.
///
/// Safe on unvalidated steps: a step written twice is ordered twice, once
/// per occurrence, and nothing here can panic.
pub fn topo_order(steps: &[StepSpec]) -> Result<Vec<&str>, Vec<String>> {
    Ok(order_of(steps)?
        .into_iter()
        .filter_map(|i| steps.get(i))
        .map(|s| s.id.as_str())
        .collect())
}

/// [`topo_order`] as positions in `steps`, so a repeated id stays tied to
/// its own occurrence.
fn order_of(steps: &[StepSpec]) -> Result<Vec<usize>, Vec<String>> {
    let mut placed = vec![false; steps.len()];
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut order = Vec::with_capacity(steps.len());
    while order.len() < steps.len() {
        let before = order.len();
        for (i, s) in steps.iter().enumerate() {
            if !placed[i] && s.needs.iter().all(|n| done.contains(n.as_str())) {
                placed[i] = true;
                done.insert(&s.id);
                order.push(i);
            }
        }
        if order.len() == before {
            return Err(find_cycle(steps, &placed, &done));
        }
    }
    Ok(order)
}

/// Walks unmet `needs` edges from the first step left unordered until an id
/// repeats (a cycle) or reaches an id no waiting step has (a missing id).
fn find_cycle(steps: &[StepSpec], placed: &[bool], done: &BTreeSet<&str>) -> Vec<String> {
    let mut waiting: BTreeMap<&str, &StepSpec> = BTreeMap::new();
    for (s, _) in steps.iter().zip(placed).filter(|(_, p)| !**p).rev() {
        // Reversed so the first occurrence of a repeated id wins.
        waiting.insert(&s.id, s);
    }
    let mut path: Vec<&str> = Vec::new();
    let Some(mut cur) = steps
        .iter()
        .zip(placed)
        .find(|(_, p)| !**p)
        .map(|(s, _)| s.id.as_str())
    else {
        return Vec::new();
    };
    loop {
        if let Some(pos) = path.iter().position(|p| *p == cur) {
            let mut cycle: Vec<String> = path[pos..].iter().map(|s| s.to_string()).collect();
            cycle.push(cur.to_owned());
            return cycle;
        }
        path.push(cur);
        let Some(next) = waiting
            .get(cur)
            .and_then(|s| s.needs.iter().find(|n| !done.contains(n.as_str())))
        else {
            return path.iter().map(|s| s.to_string()).collect();
        };
        cur = next;
    }
}

/// Every step's transitive `needs`; empty when the steps cannot be ordered
/// (a cycle or a missing need). Meant for validated steps; on a repeated id
/// (which validation refuses) it still answers without panicking, merging
/// the occurrences.
pub fn ancestors(steps: &[StepSpec]) -> BTreeMap<&str, BTreeSet<&str>> {
    let mut out: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let Ok(order) = order_of(steps) else {
        return out;
    };
    for step in order.into_iter().filter_map(|i| steps.get(i)) {
        let mut set = BTreeSet::new();
        for n in &step.needs {
            set.insert(n.as_str());
            if let Some(more) = out.get(n.as_str()) {
                set.extend(more.iter().copied());
            }
        }
        out.entry(step.id.as_str()).or_default().extend(set);
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

    #[test]
    fn a_description_is_bounded() {
        let mut w = diamond();
        w.description = "d".repeat(crate::agent::MAX_DESCRIPTION_LEN + 1);
        assert_eq!(pointers(w.validate(known).unwrap_err()), ["/description"]);
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
                "/steps/0/id",
                "/steps/0/agent",
                "/steps/2/id",
                "/steps/1/needs/0",
                "/steps/1/needs/1"
            ]
        );
    }

    #[test]
    fn duplicate_step_ids_name_both_pointers_and_never_panic() {
        // Today's code skipped the cycle check's guard and panicked on a map
        // lookup: `POST /api/workflows` answered 500 instead of 400.
        let w = spec(json!({"name": "dup", "steps": [
            {"id": "a", "agent": "scanner"},
            {"id": "b", "agent": "scanner", "needs": ["a"]},
            {"id": "a", "agent": "scanner"}
        ]}));
        let err = w.validate(known).unwrap_err();
        assert_eq!(pointers(err.clone()), ["/steps/0/id", "/steps/2/id"]);
        assert!(err.errors[0].detail.contains("/steps/2/id"), "{err}");
        assert!(err.errors[1].detail.contains("/steps/0/id"), "{err}");
    }

    #[test]
    fn a_duplicate_with_needs_edges_is_reported_once_per_occurrence() {
        let w = spec(json!({"name": "dup", "steps": [
            {"id": "a", "agent": "scanner", "needs": ["b"]},
            {"id": "b", "agent": "scanner"},
            {"id": "a", "agent": "scanner", "needs": ["a"]},
            {"id": "c", "agent": "scanner", "needs": ["a"],
             "input": "{{ steps.a.output }} {{ steps.zz.output }}"},
            {"id": "a", "agent": "scanner"}
        ]}));
        let err = w.validate(known).unwrap_err();
        assert_eq!(
            pointers(err.clone()),
            [
                "/steps/0/id",
                "/steps/2/id",
                "/steps/4/id",
                "/steps/2/needs/0",
                "/steps/3/input"
            ]
        );
        assert!(
            err.errors[1].detail.contains("/steps/0/id, /steps/4/id"),
            "{err}"
        );
        assert!(err.errors[4].detail.contains("does not exist"), "{err}");
    }

    #[test]
    fn graph_helpers_never_panic_on_unvalidated_steps() {
        let steps = |v: Value| spec(json!({"name": "x", "steps": v})).steps;
        // Repeated ids are ordered once per occurrence.
        let dup = steps(json!([
            {"id": "a", "agent": "s", "needs": ["b"]},
            {"id": "b", "agent": "s"},
            {"id": "a", "agent": "s"}
        ]));
        assert_eq!(topo_order(&dup).unwrap(), ["b", "a", "a"]);
        assert_eq!(
            ancestors(&dup)["a"].iter().copied().collect::<Vec<_>>(),
            ["b"]
        );
        // A missing need ends the blocking path; a self need is a cycle.
        let missing = steps(json!([{"id": "a", "agent": "s", "needs": ["ghost"]}]));
        assert_eq!(topo_order(&missing).unwrap_err(), ["a", "ghost"]);
        assert!(ancestors(&missing).is_empty());
        let own = steps(json!([{"id": "", "agent": "s", "needs": [""]}]));
        assert_eq!(topo_order(&own).unwrap_err(), ["", ""]);
        assert_eq!(topo_order(&[]).unwrap(), Vec::<&str>::new());
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
    fn huge_lists_of_bad_entries_give_a_bounded_refusal() {
        let needs = vec!["ghost"; 250_000];
        let bad: Vec<&str> = vec!["{{"; 250_000];
        let w = spec(json!({"name": "big", "steps": [
            {"id": "a", "agent": "scanner", "needs": needs},
            {"id": "b", "agent": "scanner", "input": bad}
        ]}));
        let err = w.validate(known).unwrap_err();
        assert_eq!(err.errors[0].pointer, "/steps/0/needs");
        assert!(err.errors[0].detail.contains("found 250000"), "{err}");
        assert_eq!(err.errors.len(), MAX_ERRORS + 1);
        assert!(err.to_string().len() < 20_000);
    }

    #[test]
    fn an_input_schema_checks_trigger_payloads() {
        let mut w = diamond();
        w.input_schema = Some(json!({"type": "object", "required": ["ref"],
            "properties": {"ref": {"type": "string"}}}));
        w.validate(known).unwrap();
        let w = w.into_workflow(1);
        // A missing member is the object's fault: jsonschema reports it at
        // the payload's root, so the pointer is "/payload".
        let err = w.check_payload(&json!({})).unwrap_err();
        assert_eq!(pointers(err.clone()), ["/payload"]);
        assert!(
            err.errors[0]
                .detail
                .contains("\"ref\" is a required property"),
            "{err}"
        );
        // A wrong member is pointed at.
        let err = w.check_payload(&json!({"ref": 3})).unwrap_err();
        assert_eq!(pointers(err.clone()), ["/payload/ref"]);
        assert!(err.errors[0].detail.contains("3 is not of type"), "{err}");
        w.check_payload(&json!({"ref": "main"})).unwrap();
        // Without a schema, anything goes.
        let w = diamond().into_workflow(1);
        assert_eq!(w.input_schema, None);
        for payload in [json!(null), json!({}), json!([1, "x"]), json!("x")] {
            w.check_payload(&payload).unwrap();
        }
        let back: Workflow = serde_json::from_value(serde_json::to_value(&w).unwrap()).unwrap();
        assert_eq!(back, w);
        assert!(!serde_json::to_string(&w).unwrap().contains("input_schema"));
    }

    #[test]
    fn hostile_input_schemas_are_refused_at_registration() {
        for (schema, at) in [
            (
                json!({"$ref": "http://127.0.0.1:9/schema.json"}),
                "/input_schema/$ref",
            ),
            (
                json!({"properties": {"ref": {"$ref": "file:///etc/passwd"}}}),
                "/input_schema/properties/ref/$ref",
            ),
            (json!({"type": "no-such-type"}), "/input_schema/type"),
            (json!(3), "/input_schema"),
        ] {
            let mut w = diamond();
            w.input_schema = Some(schema.clone());
            assert_eq!(pointers(w.validate(known).unwrap_err()), [at], "{schema}");
        }
        let mut w = diamond();
        w.input_schema = Some(json!(true));
        w.validate(known).unwrap();
    }

    fn rich() -> WorkflowSpec {
        spec(json!({"name": "rich", "on_failure": ["tell"], "steps": [
            {"id": "scan", "agent": "scanner", "compensate": "undo"},
            {"id": "each", "agent": "reviewer", "needs": ["scan"],
             "for_each": "steps.scan.output.files", "max_parallel": 3, "max_items": 20,
             "allow_partial_failure": true, "fallback": ["compliance"],
             "input": {"path": "{{ item.path }}", "n": "{{ item_index }}"}},
            {"id": "fix", "agent": "compliance", "needs": ["each"],
             "when": "steps.scan.output.summary.high > 0 && trigger.kind == 'manual'"},
            {"id": "report", "agent": "notifier", "needs": ["fix"], "if_needs_skipped": "run"},
            {"id": "undo", "agent": "scanner", "input": {"of": "{{ steps.scan.output }}", "why": "{{ failure.error }}"}},
            {"id": "tell", "agent": "notifier", "input": {"failed": "{{ failure.step }}", "r": "{{ steps.report.output }}"}}
        ]}))
    }

    #[test]
    fn conditions_fan_out_fallbacks_and_handlers_validate() {
        let w = rich();
        w.validate(known).unwrap();
        let w = w.into_workflow(1);
        let roles = w.roles();
        assert_eq!(roles["undo"], StepRole::Compensation);
        assert_eq!(roles["tell"], StepRole::OnFailure);
        assert_eq!(roles["fix"], StepRole::Normal);
        assert!(w.agents().contains("compliance"));
        let r = readable(&w.steps, &w.on_failure);
        assert_eq!(r["undo"].iter().copied().collect::<Vec<_>>(), ["scan"]);
        assert_eq!(
            r["tell"].iter().copied().collect::<Vec<_>>(),
            ["each", "fix", "report", "scan"]
        );
        let back: Workflow = serde_json::from_value(serde_json::to_value(&w).unwrap()).unwrap();
        assert_eq!(back, w);
    }

    fn refusal(v: Value) -> Vec<(String, String)> {
        spec(v)
            .validate(known)
            .unwrap_err()
            .errors
            .into_iter()
            .map(|e| (e.pointer, e.detail))
            .collect()
    }

    #[test]
    fn conditions_and_lists_are_parsed_type_checked_and_read_only_ancestors() {
        let errs = refusal(json!({"name": "w", "steps": [
            {"id": "a", "agent": "scanner"},
            {"id": "b", "agent": "scanner", "when": "steps.c.output.ok == true"},
            {"id": "c", "agent": "scanner", "needs": ["a"], "when": "steps.a.output.n >"},
            {"id": "d", "agent": "scanner", "needs": ["a"], "when": "len(steps.a.output)"},
            {"id": "e", "agent": "scanner", "needs": ["a"], "for_each": "len(steps.a.output.files)"},
            {"id": "f", "agent": "scanner", "for_each": "steps.ghost.output"}
        ]}));
        let at: Vec<&str> = errs.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            at,
            [
                "/steps/1/when",
                "/steps/2/when",
                "/steps/3/when",
                "/steps/4/for_each",
                "/steps/5/for_each"
            ]
        );
        assert!(errs[0].1.contains("not an ancestor"), "{errs:?}");
        assert!(errs[1].1.starts_with("bad expression"), "{errs:?}");
        assert!(errs[2].1.contains("true or false"), "{errs:?}");
        assert!(errs[3].1.contains("needs a list"), "{errs:?}");
        assert!(errs[4].1.contains("does not exist"), "{errs:?}");
    }

    #[test]
    fn fan_out_settings_need_for_each_and_items_and_failures_their_steps() {
        let errs = refusal(json!({"name": "w", "steps": [
            {"id": "a", "agent": "scanner", "max_parallel": 2, "max_items": 3,
             "allow_partial_failure": true, "input": {"p": "{{ item.path }}", "f": "{{ failure }}"}},
            {"id": "b", "agent": "scanner", "for_each": "trigger.payload.x",
             "max_parallel": 0, "max_items": 100000}
        ]}));
        let at: Vec<&str> = errs.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            at,
            [
                "/steps/0/max_parallel",
                "/steps/0/max_items",
                "/steps/0/allow_partial_failure",
                "/steps/0/input/f",
                "/steps/0/input/p",
                "/steps/1/max_parallel",
                "/steps/1/max_items"
            ]
        );
        assert!(
            errs[3].1.contains("compensation and on-failure"),
            "{errs:?}"
        );
        assert!(errs[4].1.contains("for_each"), "{errs:?}");
    }

    #[test]
    fn fallbacks_must_be_other_registered_agents() {
        let errs = refusal(json!({"name": "w", "steps": [
            {"id": "a", "agent": "scanner",
             "fallback": ["ghost", "scanner", "reviewer", "reviewer"]}
        ]}));
        let at: Vec<&str> = errs.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            at,
            [
                "/steps/0/fallback/0",
                "/steps/0/fallback/1",
                "/steps/0/fallback/3",
                "/steps/0/fallback"
            ]
        );
    }

    #[test]
    fn compensation_cycles_chains_and_misplaced_handlers_are_refused() {
        let errs = refusal(
            json!({"name": "w", "on_failure": ["u", "ghost", "tell", "tell"], "steps": [
                {"id": "a", "agent": "scanner"},
                {"id": "u", "agent": "scanner", "compensate": "v"},
                {"id": "v", "agent": "scanner", "compensate": "u"},
                {"id": "b", "agent": "scanner", "compensate": "b"},
                {"id": "c", "agent": "scanner", "needs": ["tell"], "compensate": "u"},
                {"id": "tell", "agent": "notifier", "needs": ["a"], "for_each": "trigger.payload.x"}
            ]}),
        );
        let find = |p: &str| {
            errs.iter()
                .filter(|(at, _)| at == p)
                .map(|(_, d)| d.as_str())
                .collect::<Vec<_>>()
        };
        assert!(
            find("/steps/1/compensate")[0].contains("compensation cycle: u -> v -> u"),
            "{errs:?}"
        );
        assert!(
            find("/steps/2/compensate")[0].contains("compensation cycle: v -> u -> v"),
            "{errs:?}"
        );
        assert!(
            find("/steps/3/compensate")[0].contains("compensation cycle: b -> b"),
            "{errs:?}"
        );
        assert!(
            find("/steps/4/compensate")[0].contains("already compensates"),
            "{errs:?}"
        );
        assert!(
            find("/on_failure/0")[0].contains("compensation step"),
            "{errs:?}"
        );
        assert!(find("/on_failure/1")[0].contains("no step"), "{errs:?}");
        assert!(find("/on_failure/3")[0].contains("twice"), "{errs:?}");
        assert!(
            find("/steps/5/needs")[0].contains("cannot have needs"),
            "{errs:?}"
        );
        assert!(
            find("/steps/5/for_each")[0].contains("cannot fan out"),
            "{errs:?}"
        );
        assert!(
            find("/steps/4/needs/0")[0].contains("no step can need it"),
            "{errs:?}"
        );

        let errs = refusal(json!({"name": "w", "on_failure": ["b"], "steps": [
            {"id": "a", "agent": "scanner", "compensate": "b"},
            {"id": "b", "agent": "scanner"}
        ]}));
        assert_eq!(errs[0].0, "/on_failure/0");
        let errs = refusal(json!({"name": "w", "on_failure": ["a"], "steps": [
            {"id": "a", "agent": "scanner"}
        ]}));
        assert_eq!(errs[0].0, "/steps");
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
        let last = Workflow {
            version: u32::MAX,
            ..w.clone()
        };
        assert!(last.updated(diamond(), 40).is_err());
        assert_eq!(
            w.agents().into_iter().collect::<Vec<_>>(),
            ["compliance", "notifier", "reviewer", "scanner"]
        );
    }
}
