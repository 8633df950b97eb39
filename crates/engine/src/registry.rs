//! The registry's cross-document rules: a workflow may only use agents that
//! exist, and an agent may only be deleted when no workflow uses it.
//!
//! Each agent has a users document (`agent-users:<agent>`): the workflows
//! that may use it (a superset: an update that stops using an agent does not
//! have to remove itself) and the claims of writes in flight. A workflow
//! write first claims every agent its new version uses, which also lists the
//! workflow (refused if the agent is being deleted), then writes the
//! workflow, then drops its claims. Deleting an agent first marks it
//! deleting (refused while a claim is in flight; from then on no claim is
//! taken), then reads the current version of every listed workflow and
//! clears the mark again if one uses the agent. A write either claimed
//! before the mark (and the delete sees its claim, or its workflow) or is
//! refused after it. A claim whose writer died expires after
//! [`CLAIM_TTL_MS`], longer than any request may run, so nothing leaks for
//! good.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use spindle_core::ValidationError;
use spindle_core::agent::{Agent, AgentName};
use spindle_core::keys;
use spindle_core::workflow::{Workflow, WorkflowSpec};

use crate::store::{Store, StoreError, StoreExt, UpdateError, set_member};

/// How long a workflow write's claim on an agent holds if the writer never
/// settles it: longer than any request may run.
pub const CLAIM_TTL_MS: u64 = 10 * 60_000;

/// Who uses an agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentUsers {
    /// Workflows that may use it, sorted (a superset of those that do).
    #[serde(default)]
    pub workflows: Vec<String>,
    /// Workflow writes in flight that will use it.
    #[serde(default)]
    pub claims: Vec<Claim>,
    /// Set once a delete passed its checks: no new claims.
    #[serde(default)]
    pub deleting: bool,
}

/// A workflow write in flight that will use an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The workflow being written.
    pub workflow: String,
    /// Tells this write's claim from another write's.
    pub token: u64,
    /// When the claim lapses if never settled.
    pub until_ms: u64,
}

/// Why a registry change was refused. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The document is invalid.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// No such agent or workflow.
    #[error("{0}")]
    NotFound(String),
    /// A workflow of that name exists.
    #[error("workflow {0:?} exists; update it with PUT")]
    Exists(String),
    /// An agent the workflow uses is being deleted.
    #[error("agent {0:?} is being deleted")]
    AgentDeleted(String),
    /// The agent is used by workflows, or a write that will use it is in
    /// flight.
    #[error("{0}")]
    AgentInUse(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl<E: Into<RegistryError>> From<UpdateError<E>> for RegistryError {
    fn from(e: UpdateError<E>) -> Self {
        match e {
            UpdateError::Store(s) => s.into(),
            UpdateError::Rejected(r) => r.into(),
        }
    }
}

impl From<std::convert::Infallible> for RegistryError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

fn missing(name: &str) -> RegistryError {
    RegistryError::NotFound(format!("no workflow named {name:?}"))
}

/// The registry on a store; `now_ms` dates claims.
pub struct Registry<'a, S> {
    /// The store.
    pub store: &'a S,
    /// Now, in milliseconds since the epoch.
    pub now_ms: u64,
}

impl<S: Store> Registry<'_, S> {
    /// Validates `spec` against the registered agents.
    pub async fn validate(&self, spec: &WorkflowSpec) -> Result<(), RegistryError> {
        let agents: BTreeSet<String> = self
            .store
            .get::<Vec<String>>(keys::AGENT_INDEX)
            .await?
            .unwrap_or_default()
            .into_iter()
            .collect();
        spec.validate(|a| agents.contains(a))?;
        Ok(())
    }

    /// Registers a new workflow (version 1).
    pub async fn create_workflow(&self, spec: WorkflowSpec) -> Result<Workflow, RegistryError> {
        self.validate(&spec).await?;
        let wf = spec.into_workflow(self.now_ms);
        let name = wf.name.clone();
        self.write_workflow(&name, wf.agents(), |current| match current {
            Some(_) => Err(RegistryError::Exists(name.clone())),
            None => Ok(wf.clone()),
        })
        .await
    }

    /// Writes the next version of workflow `name`.
    pub async fn update_workflow(
        &self,
        name: &str,
        spec: WorkflowSpec,
    ) -> Result<Workflow, RegistryError> {
        self.validate(&spec).await?;
        // Fallback agents are used as much as the steps' own: claimed too,
        // so neither can be deleted from under the workflow.
        let agents: BTreeSet<String> = spec
            .steps
            .iter()
            .flat_map(|s| std::iter::once(&s.agent).chain(&s.fallback))
            .cloned()
            .collect();
        let now = self.now_ms;
        self.write_workflow(
            name,
            agents.iter().map(String::as_str).collect(),
            |current| {
                let current = current.ok_or_else(|| missing(name))?;
                Ok(current.updated(spec.clone(), now)?)
            },
        )
        .await
    }

    /// Claims `agents`, writes the workflow by compare-and-swap with
    /// `next`, then settles the claims (entries if written, nothing if not).
    async fn write_workflow(
        &self,
        name: &str,
        agents: BTreeSet<&str>,
        mut next: impl FnMut(Option<Workflow>) -> Result<Workflow, RegistryError>,
    ) -> Result<Workflow, RegistryError> {
        let token = self
            .store
            .increment(&keys::counter("registry-claims"), 1)
            .await? as u64;
        let mut claimed = Vec::new();
        let mut outcome = Ok(());
        for agent in &agents {
            match self.claim(agent, name, token).await {
                Ok(()) => claimed.push(*agent),
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        let written = match outcome {
            Ok(()) => self
                .store
                .update::<Workflow, RegistryError>(&keys::workflow(name), |current| {
                    next(current).map(Some)
                })
                .await
                .map_err(RegistryError::from)
                .and_then(|w| w.ok_or_else(|| missing(name))),
            Err(e) => Err(e),
        };
        // Settle even after a failure, so no claim outlives this request
        // (one that does expires).
        for agent in claimed {
            self.settle(agent, token).await?;
        }
        let wf = written?;
        self.store
            .edit_index(keys::WORKFLOW_INDEX, name, true)
            .await?;
        Ok(wf)
    }

    async fn claim(&self, agent: &str, workflow: &str, token: u64) -> Result<(), RegistryError> {
        let now = self.now_ms;
        self.store
            .update::<AgentUsers, RegistryError>(&keys::agent_users(agent), |current| {
                let mut users = current.unwrap_or_default();
                if users.deleting {
                    return Err(RegistryError::AgentDeleted(agent.to_owned()));
                }
                users.claims.retain(|c| c.until_ms > now);
                set_member(&mut users.workflows, workflow, true);
                users.claims.push(Claim {
                    workflow: workflow.to_owned(),
                    token,
                    until_ms: now + CLAIM_TTL_MS,
                });
                Ok(Some(users))
            })
            .await?;
        Ok(())
    }

    async fn settle(&self, agent: &str, token: u64) -> Result<(), RegistryError> {
        self.store
            .update::<AgentUsers, std::convert::Infallible>(&keys::agent_users(agent), |current| {
                let Some(mut users) = current else {
                    return Ok(None);
                };
                let before = users.claims.len();
                users.claims.retain(|c| c.token != token);
                Ok((users.claims.len() != before).then_some(users))
            })
            .await?;
        Ok(())
    }

    /// Deletes a workflow. Runs in flight keep their plan.
    pub async fn delete_workflow(&self, name: &str) -> Result<(), RegistryError> {
        if self
            .store
            .get::<Workflow>(&keys::workflow(name))
            .await?
            .is_none()
        {
            return Err(missing(name));
        }
        self.store.delete(&keys::workflow(name)).await?;
        self.store
            .edit_index(keys::WORKFLOW_INDEX, name, false)
            .await?;
        Ok(())
    }

    /// Deletes an agent, refused while a workflow uses it or a write that
    /// will use it is in flight.
    pub async fn delete_agent(&self, name: &AgentName) -> Result<(), RegistryError> {
        if self.store.get::<Agent>(&keys::agent(name)).await?.is_none() {
            return Err(RegistryError::NotFound(format!(
                "no agent named {:?}",
                name.as_str()
            )));
        }
        let users_key = keys::agent_users(name.as_str());
        let now = self.now_ms;
        // Mark it first: from here on no workflow write can claim it.
        let users = self
            .store
            .update::<AgentUsers, RegistryError>(&users_key, |current| {
                let mut users = current.unwrap_or_default();
                if users.claims.iter().any(|c| c.until_ms > now) {
                    return Err(RegistryError::AgentInUse(format!(
                        "a workflow that uses agent {:?} is being written; retry",
                        name.as_str()
                    )));
                }
                users.claims.clear();
                users.deleting = true;
                Ok(Some(users))
            })
            .await?
            .unwrap_or_default();
        // Which listed workflows really use it now.
        let mut using = Vec::new();
        for w in &users.workflows {
            if let Some(wf) = self.store.get::<Workflow>(&keys::workflow(w)).await?
                && wf.agents().contains(name.as_str())
            {
                using.push(w.clone());
            }
        }
        if !using.is_empty() {
            self.store
                .update::<AgentUsers, std::convert::Infallible>(&users_key, |current| {
                    Ok(current.map(|mut u| {
                        u.deleting = false;
                        u
                    }))
                })
                .await?;
            return Err(RegistryError::AgentInUse(format!(
                "agent {:?} is used by workflow(s) {}; change or delete them first",
                name.as_str(),
                using.join(", ")
            )));
        }
        self.store.delete(&keys::agent(name)).await?;
        self.store
            .edit_index(keys::AGENT_INDEX, name.as_str(), false)
            .await?;
        // The users document stays, marked deleting, so a workflow write
        // that validated against the old agent cannot claim it; creating
        // the agent again clears the mark.
        Ok(())
    }

    /// Gives a (re)created agent an empty users document, before it is
    /// listed and so before any workflow can claim it: claims then always
    /// swap a document that exists (Spin's stores get a compare-and-swap on
    /// an absent key wrong), and a deleting mark left by an earlier agent of
    /// that name is cleared.
    pub async fn agent_created(&self, name: &AgentName) -> Result<(), RegistryError> {
        self.store
            .update::<AgentUsers, std::convert::Infallible>(
                &keys::agent_users(name.as_str()),
                |current| match current {
                    None => Ok(Some(AgentUsers::default())),
                    Some(u) if u.deleting => Ok(Some(AgentUsers::default())),
                    Some(_) => Ok(None),
                },
            )
            .await?;
        Ok(())
    }
}
