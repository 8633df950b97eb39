//! Agents: the registered kinds of job a workflow step can run.
//!
//! An agent is a container image and command (or, for the process executor, a
//! command line) with a risk level, JSON Schemas for its input and output, and
//! resource limits. Definitions are versioned: every update bumps `version`,
//! and a run keeps the version it started with.

use serde::{Deserialize, Serialize};

use crate::error::{FieldError, MAX_ERRORS, ValidationError};
use crate::retry::RetryPolicy;

/// Default wall-clock limit for one job of an agent.
pub const DEFAULT_TIMEOUT_SECS: u32 = 300;
/// Default memory limit for one job of an agent.
pub const DEFAULT_MEMORY_MB: u32 = 512;
/// Longest accepted timeout: one day.
pub const MAX_TIMEOUT_SECS: u32 = 86_400;
/// Memory limits accepted, in MiB.
pub const MEMORY_MB_RANGE: std::ops::RangeInclusive<u32> = 16..=65_536;
/// Longest agent name.
pub const MAX_NAME_LEN: usize = 63;
/// Longest description (of an agent or a workflow), in bytes.
pub const MAX_DESCRIPTION_LEN: usize = 4096;
/// Longest image reference, in bytes (more than registries accept).
pub const MAX_IMAGE_LEN: usize = 512;
/// Most words in an agent's command.
pub const MAX_COMMAND_ARGS: usize = 256;
/// Longest word of an agent's command, in bytes.
pub const MAX_ARG_LEN: usize = 4096;

/// A field error if `description` is longer than [`MAX_DESCRIPTION_LEN`].
pub fn check_description(description: &str) -> Option<FieldError> {
    (description.len() > MAX_DESCRIPTION_LEN).then(|| {
        FieldError::new(
            "/description",
            format!("must be at most {MAX_DESCRIPTION_LEN} bytes"),
        )
    })
}

/// Checks the naming rule shared by agents, workflows and steps: 1 to 63 of
/// `a-z`, `0-9` and `-`, starting and ending with a letter or digit. Such names
/// are safe in store keys, URLs, job ids and template paths unescaped.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("must be at most {MAX_NAME_LEN} characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("may contain only lowercase letters, digits and '-'".into());
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("must start and end with a letter or digit".into());
    }
    Ok(())
}

/// A validated agent name: 1 to 63 of `a-z`, `0-9` and `-`, starting with a
/// letter or digit. Safe to embed in store keys and URLs unescaped.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AgentName(String);

impl AgentName {
    /// Parses and validates a name.
    pub fn parse(name: &str) -> Result<Self, String> {
        check_name(name)?;
        Ok(Self(name.to_owned()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AgentName {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<AgentName> for String {
    fn from(value: AgentName) -> Self {
        value.0
    }
}

impl std::fmt::Display for AgentName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a step running this agent may start on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskLevel {
    /// Runs as soon as its dependencies have succeeded.
    #[default]
    Auto,
    /// Waits for a human approval before it is dispatched.
    ApprovalRequired,
}

/// An agent definition as a client submits it (create or update).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    /// Unique name, used in workflow steps.
    pub name: String,
    /// Container image for the podman/docker executors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Command (argv). For containers it overrides the image's entrypoint; for
    /// the process executor it is the command line to run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Whether steps need approval before dispatch.
    #[serde(default)]
    pub risk_level: RiskLevel,
    /// JSON Schema the rendered step input must satisfy.
    #[serde(default = "any_schema")]
    pub input_schema: serde_json::Value,
    /// JSON Schema the job's output must satisfy.
    #[serde(default = "any_schema")]
    pub output_schema: serde_json::Value,
    /// Wall-clock limit for one job.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u32,
    /// Memory limit for one job.
    #[serde(default = "default_memory")]
    pub memory_mb: u32,
    /// How failed jobs are retried; steps may override it.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Whether the agent's container gets a network; off by default, so an
    /// agent can reach nothing unless it must (a notifier must).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub network: bool,
    /// Free-form description shown in the dashboard.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

fn any_schema() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}
fn default_timeout() -> u32 {
    DEFAULT_TIMEOUT_SECS
}
fn default_memory() -> u32 {
    DEFAULT_MEMORY_MB
}

/// A stored, validated agent definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    /// Validated name.
    pub name: AgentName,
    /// Starts at 1, bumped by every update.
    pub version: u32,
    /// Container image, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Command (argv).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Approval gate.
    pub risk_level: RiskLevel,
    /// Input JSON Schema.
    pub input_schema: serde_json::Value,
    /// Output JSON Schema.
    pub output_schema: serde_json::Value,
    /// Timeout per job.
    pub timeout_secs: u32,
    /// Memory limit per job.
    pub memory_mb: u32,
    /// Retry policy for its jobs.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Whether its container gets a network.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub network: bool,
    /// Description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// When version 1 was created, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// When this version was written, milliseconds since the Unix epoch.
    pub updated_at_ms: u64,
}

impl AgentSpec {
    /// Decodes and validates a JSON body into an [`Agent`] at version 1.
    pub fn parse(body: &[u8]) -> Result<Self, ValidationError> {
        let spec: AgentSpec =
            serde_json::from_slice(body).map_err(|e| crate::error::from_json_error(&e))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks every field, reporting all problems at once.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut errors = Vec::new();
        if let Err(e) = AgentName::parse(&self.name) {
            errors.push(FieldError::new("/name", e));
        }
        match &self.image {
            Some(image) if image.trim().is_empty() || image.chars().any(char::is_whitespace) => {
                errors.push(FieldError::new(
                    "/image",
                    "must be a non-empty image reference without spaces",
                ));
            }
            // Passed to `podman run` as an argument: one that starts with
            // `-` would be read as a flag.
            Some(image) if image.starts_with('-') => {
                errors.push(FieldError::new(
                    "/image",
                    "must be an image reference, not something starting with '-'",
                ));
            }
            Some(image) if image.len() > MAX_IMAGE_LEN => {
                errors.push(FieldError::new(
                    "/image",
                    format!("must be at most {MAX_IMAGE_LEN} bytes"),
                ));
            }
            _ => {}
        }
        if self.command.len() > MAX_COMMAND_ARGS {
            errors.push(FieldError::new(
                "/command",
                format!("at most {MAX_COMMAND_ARGS} words"),
            ));
        }
        errors.extend(check_description(&self.description));
        if self.image.is_none() && self.command.is_empty() {
            errors.push(FieldError::new(
                "/command",
                "an agent needs an image, a command, or both",
            ));
        }
        for (i, arg) in self.command.iter().enumerate() {
            if errors.len() > MAX_ERRORS {
                break; // `check` lists no more than this
            }
            if arg.contains('\0') {
                errors.push(FieldError::new(
                    format!("/command/{i}"),
                    "must not contain NUL bytes",
                ));
            } else if arg.len() > MAX_ARG_LEN {
                errors.push(FieldError::new(
                    format!("/command/{i}"),
                    format!("must be at most {MAX_ARG_LEN} bytes"),
                ));
            }
        }
        if self.command.first().is_some_and(|c| c.trim().is_empty()) {
            errors.push(FieldError::new(
                "/command/0",
                "the program must not be empty",
            ));
        }
        for (field, schema) in [
            ("/input_schema", &self.input_schema),
            ("/output_schema", &self.output_schema),
        ] {
            if !(schema.is_object() || schema.is_boolean()) {
                errors.push(FieldError::new(
                    field,
                    "must be a JSON Schema (an object or a boolean)",
                ));
            } else if let Some(e) = crate::schema::compile_error(schema) {
                errors.push(FieldError::new(
                    format!("{field}{}", e.pointer),
                    format!("not an accepted JSON Schema: {}", e.detail),
                ));
            }
        }
        if self.timeout_secs == 0 || self.timeout_secs > MAX_TIMEOUT_SECS {
            errors.push(FieldError::new(
                "/timeout_secs",
                format!("must be between 1 and {MAX_TIMEOUT_SECS}"),
            ));
        }
        if !MEMORY_MB_RANGE.contains(&self.memory_mb) {
            errors.push(FieldError::new(
                "/memory_mb",
                format!(
                    "must be between {} and {}",
                    MEMORY_MB_RANGE.start(),
                    MEMORY_MB_RANGE.end()
                ),
            ));
        }
        self.retry.check("/retry", &mut errors);
        ValidationError::check(errors)
    }

    /// The first version of an agent, created at `now_ms`.
    ///
    /// Call only on a validated spec; the name is re-checked so an unvalidated
    /// spec cannot produce an agent with an illegal name.
    pub fn into_agent(self, now_ms: u64) -> Result<Agent, ValidationError> {
        self.validate()?;
        let name = AgentName::parse(&self.name).map_err(|e| ValidationError::single("/name", e))?;
        Ok(Agent {
            name,
            version: 1,
            image: self.image,
            command: self.command,
            risk_level: self.risk_level,
            input_schema: self.input_schema,
            output_schema: self.output_schema,
            timeout_secs: self.timeout_secs,
            memory_mb: self.memory_mb,
            retry: self.retry,
            network: self.network,
            description: self.description,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
        })
    }
}

impl Agent {
    /// The next version of this agent with `spec`'s fields, written at `now_ms`.
    /// The name cannot change.
    pub fn updated(&self, spec: AgentSpec, now_ms: u64) -> Result<Agent, ValidationError> {
        if spec.name != self.name.as_str() {
            return Err(ValidationError::single(
                "/name",
                format!(
                    "an agent cannot be renamed (path names '{}', body names '{}')",
                    self.name, spec.name
                ),
            ));
        }
        let mut next = spec.into_agent(now_ms)?;
        // A stored document is only as trustworthy as the store; a wrapped
        // version would make an update look older than the runs it replaces.
        next.version = self.version.checked_add(1).ok_or_else(|| {
            ValidationError::single("", "this agent has reached its last version number")
        })?;
        next.created_at_ms = self.created_at_ms;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> Result<AgentSpec, ValidationError> {
        AgentSpec::parse(v.to_string().as_bytes())
    }

    #[test]
    fn every_string_and_list_is_bounded() {
        let long = "x".repeat(MAX_ARG_LEN + 1);
        let err = spec(json!({
            "name": "a",
            "image": format!("localhost/{}", "i".repeat(MAX_IMAGE_LEN)),
            "command": ["ok", long],
            "description": "d".repeat(MAX_DESCRIPTION_LEN + 1),
        }))
        .unwrap_err();
        let pointers: Vec<&str> = err.errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, ["/image", "/description", "/command/1"]);
        let many: Vec<String> = (0..=MAX_COMMAND_ARGS).map(|i| i.to_string()).collect();
        let err = spec(json!({"name": "a", "command": many})).unwrap_err();
        assert_eq!(err.errors[0].pointer, "/command");
        // At the limits, accepted.
        spec(json!({
            "name": "a",
            "command": ["x".repeat(MAX_ARG_LEN)],
            "description": "d".repeat(MAX_DESCRIPTION_LEN),
        }))
        .unwrap();
    }

    #[test]
    fn defaults_apply() {
        let s = spec(json!({"name": "security-scanner", "image": "spindle/scanner:1"})).unwrap();
        assert_eq!(s.timeout_secs, 300);
        assert_eq!(s.memory_mb, 512);
        assert_eq!(s.risk_level, RiskLevel::Auto);
        let a = s.into_agent(7).unwrap();
        assert_eq!((a.version, a.created_at_ms, a.updated_at_ms), (1, 7, 7));
    }

    #[test]
    fn risk_level_wire_names() {
        for (level, wire) in [
            (RiskLevel::Auto, "\"auto\""),
            (RiskLevel::ApprovalRequired, "\"approval_required\""),
        ] {
            assert_eq!(serde_json::to_string(&level).unwrap(), wire);
            assert_eq!(serde_json::from_str::<RiskLevel>(wire).unwrap(), level);
        }
    }

    #[test]
    fn every_bad_field_is_named() {
        let err = spec(json!({
            "name": "Bad Name",
            "input_schema": 3,
            "timeout_secs": 0,
            "memory_mb": 1
        }))
        .unwrap_err();
        let pointers: Vec<_> = err.errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(
            pointers,
            [
                "/name",
                "/command",
                "/input_schema",
                "/timeout_secs",
                "/memory_mb"
            ]
        );
    }

    #[test]
    fn unknown_fields_and_bad_json_are_rejected() {
        let err = spec(json!({"name": "a", "command": ["x"], "colour": "red"})).unwrap_err();
        assert!(
            err.errors[0].detail.contains("unknown field `colour`"),
            "{err}"
        );
        let err = AgentSpec::parse(b"{not json").unwrap_err();
        assert_eq!(err.errors[0].pointer, "");
        let err =
            spec(json!({"name": "a", "command": ["x"], "risk_level": "sometimes"})).unwrap_err();
        assert!(
            err.errors[0].detail.contains("unknown variant `sometimes`"),
            "{err}"
        );
    }

    #[test]
    fn names() {
        for ok in ["a", "notifier", "code-reviewer2", &"x".repeat(63)] {
            AgentName::parse(ok).unwrap();
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a b", "a/b", &"x".repeat(64)] {
            assert!(AgentName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn update_bumps_version_and_keeps_creation() {
        let a = spec(json!({"name": "patcher", "command": ["patch"]}))
            .unwrap()
            .into_agent(10)
            .unwrap();
        let s = spec(json!({"name": "patcher", "command": ["patch", "-v"], "risk_level": "approval_required"})).unwrap();
        let b = a.updated(s, 20).unwrap();
        assert_eq!((b.version, b.created_at_ms, b.updated_at_ms), (2, 10, 20));
        assert_eq!(b.risk_level, RiskLevel::ApprovalRequired);
        let renamed = spec(json!({"name": "other", "command": ["x"]})).unwrap();
        assert_eq!(
            a.updated(renamed, 30).unwrap_err().errors[0].pointer,
            "/name"
        );
        let last = Agent {
            version: u32::MAX,
            ..a.clone()
        };
        let s = spec(json!({"name": "patcher", "command": ["patch"]})).unwrap();
        assert!(last.updated(s, 40).is_err());
    }

    #[test]
    fn stored_agent_round_trips() {
        let a = spec(json!({"name": "notifier", "image": "n:1", "command": ["notify"]}))
            .unwrap()
            .into_agent(1)
            .unwrap();
        let back: Agent = serde_json::from_value(serde_json::to_value(&a).unwrap()).unwrap();
        assert_eq!(a, back);
    }
}
