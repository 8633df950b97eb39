//! Webhook sources: who may send deliveries to `/webhooks/<name>`, how a
//! delivery proves it is theirs, and how its event type and delivery id are
//! read.
//!
//! Three kinds. `github` and `builder` know their sender's conventions
//! (GitHub's `X-Hub-Signature-256`, `X-GitHub-Event` and
//! `X-GitHub-Delivery`; Builder.io's model name and operation in the body,
//! its shared secret in a custom header). `generic` takes every convention
//! from the source document: the verification scheme
//! ([`crate::webhook::Verification`]), and where the event type, action and
//! delivery id are found. A source named `github` or `builder` need not be
//! registered at all: the webhook component then takes its secrets from Spin
//! variables ([`Source::builtin`]).
//!
//! Secrets are write-only: a stored [`Source`] keeps them (verification needs
//! them), but [`SourceView`], what the API answers, only counts them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{FieldError, ValidationError};
use crate::subscription::InboundEvent;
use crate::webhook::Verification;

/// Most active secrets per source: two, so a secret can be rotated with no
/// delivery refused (send the new one first, the old one second, and drop
/// the old one once the sender uses the new one).
pub const MAX_SECRETS: usize = 2;
/// Largest body a source may accept (GitHub caps its own at 25 MB).
pub const MAX_BODY_LIMIT: u64 = 25 * 1024 * 1024;
/// The body limit when neither the source nor the `webhook_max_body`
/// variable sets one.
pub const DEFAULT_MAX_BODY: u64 = 1024 * 1024;
/// Longest delivery id taken from a header; longer ones are refused.
pub const MAX_DELIVERY_ID: usize = 128;
/// Longest event type or action read from a delivery.
pub const MAX_EVENT_LEN: usize = 128;
/// Header Builder.io deliveries carry their shared secret in unless the
/// source names another. Builder.io sends whatever custom headers the
/// webhook is configured with.
pub use crate::webhook::BUILDER_HEADER as BUILDER_DEFAULT_HEADER;

/// What sends to a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// A GitHub repository or organisation webhook.
    Github,
    /// A Builder.io space webhook.
    Builder,
    /// Anything else that signs its deliveries.
    Generic,
}

/// A source as registered through the API.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// Name, the last segment of its URL (`/webhooks/<name>`).
    pub name: String,
    /// Free-form description.
    #[serde(default)]
    pub description: String,
    /// What sends to it.
    pub kind: SourceKind,
    /// How deliveries are verified: required for `generic`; for `builder`,
    /// a `token` scheme naming the header (default
    /// [`BUILDER_DEFAULT_HEADER`]); not allowed for `github`.
    #[serde(default)]
    pub verification: Option<Verification>,
    /// The active secrets, one or two. Write-only. On an update, leaving
    /// them out keeps the stored ones.
    #[serde(default, deserialize_with = "secrets_or_refuse")]
    pub secrets: Option<Vec<String>>,
    /// `generic`: header with the sender's delivery id. Without it (or
    /// [`SourceSpec::delivery_field`]), the SHA-256 of the body is the
    /// delivery id.
    #[serde(default)]
    pub delivery_header: Option<String>,
    /// `generic`: dotted path to the delivery id in the body (Stripe's
    /// `id`: a retry, signed anew at another time, carries the same).
    #[serde(default)]
    pub delivery_field: Option<String>,
    /// `generic`: header with the event type.
    #[serde(default)]
    pub event_header: Option<String>,
    /// `generic`: dotted path to the event type in the body (`type`).
    #[serde(default)]
    pub event_field: Option<String>,
    /// `generic`: dotted path to the action in the body.
    #[serde(default)]
    pub action_field: Option<String>,
    /// Largest body accepted, in bytes.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
}

/// Reads `secrets` with an error of its own: serde's would quote the value,
/// and a secret sent in the wrong shape must not come back in a 400.
fn secrets_or_refuse<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<String>>, D::Error> {
    Option::<Vec<String>>::deserialize(d)
        .map_err(|_| serde::de::Error::custom("secrets must be a list of one or two strings"))
}

impl std::fmt::Debug for SourceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceSpec")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("verification", &self.verification)
            .field(
                "secrets",
                &self
                    .secrets
                    .as_ref()
                    .map(|s| format!("[{} redacted]", s.len())),
            )
            .finish_non_exhaustive()
    }
}

/// A stored source.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    /// Name.
    pub name: String,
    /// Description.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// What sends to it.
    pub kind: SourceKind,
    /// How deliveries are verified.
    pub verification: Verification,
    /// The active secrets.
    pub secrets: Vec<String>,
    /// Header with the delivery id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_header: Option<String>,
    /// Path to the delivery id in the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_field: Option<String>,
    /// Header with the event type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_header: Option<String>,
    /// Path to the event type in the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_field: Option<String>,
    /// Path to the action in the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_field: Option<String>,
    /// Largest body accepted, in bytes (the deployment's default if none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// When it was registered.
    pub created_at_ms: u64,
    /// When it was last changed.
    pub updated_at_ms: u64,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets never reach a log line, even through `{:?}`.
        f.debug_struct("Source")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("verification", &self.verification)
            .field(
                "secrets",
                &format_args!("[{} redacted]", self.secrets.len()),
            )
            .finish_non_exhaustive()
    }
}

/// A source as the API shows it: everything but the secrets.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceView {
    /// Name.
    pub name: String,
    /// Description.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// What sends to it.
    pub kind: SourceKind,
    /// How deliveries are verified.
    pub verification: Verification,
    /// How many secrets are active.
    pub secrets: usize,
    /// Header with the delivery id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_header: Option<String>,
    /// Path to the delivery id in the body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_field: Option<String>,
    /// Header with the event type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_header: Option<String>,
    /// Path to the event type in the body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_field: Option<String>,
    /// Path to the action in the body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action_field: Option<String>,
    /// Largest body accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// The URL senders post to.
    pub url: String,
    /// When it was registered.
    pub created_at_ms: u64,
    /// When it was last changed.
    pub updated_at_ms: u64,
}

fn check_header_name(errors: &mut Vec<FieldError>, pointer: &str, name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
    if !ok {
        errors.push(FieldError::new(
            pointer,
            "must be a header name: 1 to 64 letters, digits, '-' or '_'",
        ));
    }
}

fn check_path(errors: &mut Vec<FieldError>, pointer: &str, path: &str) {
    let ok = !path.is_empty()
        && path.len() <= 256
        && path.split('.').count() <= 16
        && path.split('.').all(|p| !p.is_empty());
    if !ok {
        errors.push(FieldError::new(
            pointer,
            "must be a dotted path into the body such as `type` or `data.object.id` (at most 16 parts)",
        ));
    }
}

impl SourceSpec {
    /// Parses a request body.
    pub fn parse(body: &[u8]) -> Result<Self, ValidationError> {
        serde_json::from_slice(body).map_err(|e| crate::error::from_json_error(&e))
    }

    /// Validates the spec into the stored source. `previous` is the stored
    /// version on an update: it keeps its creation time, and its secrets
    /// when the spec sends none.
    pub fn validate(
        self,
        now_ms: u64,
        previous: Option<&Source>,
    ) -> Result<Source, ValidationError> {
        let mut errors = Vec::new();
        if let Err(e) = crate::agent::check_name(&self.name) {
            errors.push(FieldError::new("/name", e));
        }
        if self.description.len() > crate::agent::MAX_DESCRIPTION_LEN {
            errors.push(FieldError::new(
                "/description",
                format!(
                    "must be at most {} bytes",
                    crate::agent::MAX_DESCRIPTION_LEN
                ),
            ));
        }
        let verification = match (self.kind, self.verification) {
            (SourceKind::Github, None) => Verification::github(),
            (SourceKind::Github, Some(_)) => {
                errors.push(FieldError::new(
                    "/verification",
                    "a github source always uses X-Hub-Signature-256; leave verification out",
                ));
                Verification::github()
            }
            (SourceKind::Builder, None) => Verification::builder(BUILDER_DEFAULT_HEADER),
            (SourceKind::Builder, Some(v @ Verification::Token { .. })) => v,
            (SourceKind::Builder, Some(v)) => {
                errors.push(FieldError::new(
                    "/verification/type",
                    "a builder source verifies a shared secret header: use type \"token\"",
                ));
                v
            }
            (SourceKind::Generic, Some(v)) => v,
            (SourceKind::Generic, None) => {
                errors.push(FieldError::new(
                    "/verification",
                    "a generic source needs a verification scheme",
                ));
                Verification::github()
            }
        };
        if let Err(e) = verification.validate() {
            errors.extend(
                e.errors
                    .into_iter()
                    .map(|f| FieldError::new(format!("/verification{}", f.pointer), f.detail)),
            );
        }
        let secrets = match (self.secrets, previous) {
            (Some(s), _) => s,
            (None, Some(p)) => p.secrets.clone(),
            (None, None) => Vec::new(),
        };
        if secrets.is_empty() || secrets.len() > MAX_SECRETS {
            errors.push(FieldError::new(
                "/secrets",
                format!("give 1 or {MAX_SECRETS} secrets (two while rotating: both are accepted)"),
            ));
        }
        for (i, s) in secrets.iter().enumerate() {
            if let Err(e) = crate::secret::check_secret(s) {
                errors.push(FieldError::new(format!("/secrets/{i}"), e.to_string()));
            }
        }
        let generic_only = [
            ("/delivery_header", self.delivery_header.is_some()),
            ("/delivery_field", self.delivery_field.is_some()),
            ("/event_header", self.event_header.is_some()),
            ("/event_field", self.event_field.is_some()),
            ("/action_field", self.action_field.is_some()),
        ];
        if self.kind != SourceKind::Generic {
            for (pointer, set) in generic_only {
                if set {
                    errors.push(FieldError::new(
                        pointer,
                        "only a generic source reads its events this way; github and builder sources know their sender's",
                    ));
                }
            }
        }
        for (pointer, h) in [
            ("/delivery_header", &self.delivery_header),
            ("/event_header", &self.event_header),
        ] {
            if let Some(h) = h {
                check_header_name(&mut errors, pointer, h);
            }
        }
        if self.delivery_header.is_some() && self.delivery_field.is_some() {
            errors.push(FieldError::new(
                "/delivery_field",
                "give delivery_header or delivery_field, not both",
            ));
        }
        if self.event_header.is_some() && self.event_field.is_some() {
            errors.push(FieldError::new(
                "/event_field",
                "give event_header or event_field, not both",
            ));
        }
        for (pointer, p) in [
            ("/delivery_field", &self.delivery_field),
            ("/event_field", &self.event_field),
            ("/action_field", &self.action_field),
        ] {
            if let Some(p) = p {
                check_path(&mut errors, pointer, p);
            }
        }
        if let Some(n) = self.max_body_bytes
            && !(1..=MAX_BODY_LIMIT).contains(&n)
        {
            errors.push(FieldError::new(
                "/max_body_bytes",
                format!("must be between 1 and {MAX_BODY_LIMIT}"),
            ));
        }
        ValidationError::check(errors)?;
        let lower = |h: Option<String>| h.map(|h| h.to_ascii_lowercase());
        Ok(Source {
            name: self.name,
            description: self.description,
            kind: self.kind,
            verification,
            secrets,
            delivery_header: lower(self.delivery_header),
            delivery_field: self.delivery_field,
            event_header: lower(self.event_header),
            event_field: self.event_field,
            action_field: self.action_field,
            max_body_bytes: self.max_body_bytes,
            created_at_ms: previous.map_or(now_ms, |p| p.created_at_ms),
            updated_at_ms: now_ms,
        })
    }
}

/// Why a verified delivery could not be read as an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct Malformed {
    /// Where: `/headers/<name>` or a JSON Pointer into the body.
    pub pointer: String,
    /// What is wrong.
    pub detail: String,
}

fn malformed(pointer: impl Into<String>, detail: impl Into<String>) -> Malformed {
    Malformed {
        pointer: pointer.into(),
        detail: detail.into(),
    }
}

/// The string at dotted `path` in `v`, if there is one.
fn string_at<'a>(v: &'a Value, path: &str) -> Option<&'a str> {
    path.split('.')
        .try_fold(v, |v, part| match v {
            Value::Object(m) => m.get(part),
            Value::Array(a) => part.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        })?
        .as_str()
}

fn pointer_of(path: &str) -> String {
    path.split('.')
        .map(|p| format!("/{}", crate::template::escape_pointer(p)))
        .collect()
}

fn check_token(value: &str, what: &str, pointer: &str) -> Result<String, Malformed> {
    let ok = !value.is_empty()
        && value.len() <= MAX_EVENT_LEN
        && value.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(value.to_owned())
    } else {
        Err(malformed(
            pointer,
            format!("the {what} must be 1 to {MAX_EVENT_LEN} visible ASCII characters"),
        ))
    }
}

impl Source {
    /// The source for `/webhooks/github` or `/webhooks/builder` when none is
    /// registered under that name, with secrets from Spin variables (empty
    /// ones dropped). `None` for any other name, or without a secret.
    pub fn builtin(name: &str, secrets: Vec<String>, builder_header: Option<&str>) -> Option<Self> {
        let secrets: Vec<String> = secrets.into_iter().filter(|s| !s.is_empty()).collect();
        if secrets.is_empty() {
            return None;
        }
        let (kind, verification) = match name {
            "github" => (SourceKind::Github, Verification::github()),
            "builder" => (
                SourceKind::Builder,
                Verification::builder(
                    builder_header
                        .filter(|h| !h.is_empty())
                        .unwrap_or(BUILDER_DEFAULT_HEADER),
                ),
            ),
            _ => return None,
        };
        Some(Source {
            name: name.to_owned(),
            description: String::new(),
            kind,
            verification,
            secrets,
            delivery_header: None,
            delivery_field: None,
            event_header: None,
            event_field: None,
            action_field: None,
            max_body_bytes: None,
            created_at_ms: 0,
            updated_at_ms: 0,
        })
    }

    /// What the API shows.
    pub fn view(&self) -> SourceView {
        SourceView {
            name: self.name.clone(),
            description: self.description.clone(),
            kind: self.kind,
            verification: self.verification.clone(),
            secrets: self.secrets.len(),
            delivery_header: self.delivery_header.clone(),
            delivery_field: self.delivery_field.clone(),
            event_header: self.event_header.clone(),
            event_field: self.event_field.clone(),
            action_field: self.action_field.clone(),
            max_body_bytes: self.max_body_bytes,
            url: format!("/webhooks/{}", self.name),
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
        }
    }

    /// Reads a verified delivery as an event: its type, action and
    /// delivery id. `header` looks a header up by its lowercase name;
    /// `body` is the raw body, whose SHA-256 is the delivery id where the
    /// sender gives none (the body, not the signed bytes: a sender that
    /// signs a timestamp signs a retry anew, and the retry must still be
    /// the same delivery).
    pub fn describe(
        &self,
        header: &dyn Fn(&str) -> Option<String>,
        payload: Value,
        body: &[u8],
    ) -> Result<InboundEvent, Malformed> {
        let hashed = || crate::sign::digest(body);
        let delivery_from = |name: &str| -> Result<String, Malformed> {
            match header(name) {
                None => Ok(hashed()),
                Some(v) => {
                    let v = v.trim();
                    let ok = !v.is_empty()
                        && v.len() <= MAX_DELIVERY_ID
                        && v.bytes().all(|b| b.is_ascii_graphic());
                    if ok {
                        Ok(v.to_owned())
                    } else {
                        Err(malformed(
                            format!("/headers/{name}"),
                            format!(
                                "a delivery id must be 1 to {MAX_DELIVERY_ID} visible ASCII characters"
                            ),
                        ))
                    }
                }
            }
        };
        let (event, action, delivery) = match self.kind {
            SourceKind::Github => {
                let event = header("x-github-event").ok_or_else(|| {
                    malformed(
                        "/headers/x-github-event",
                        "a GitHub delivery names its event in X-GitHub-Event",
                    )
                })?;
                let event = check_token(event.trim(), "event", "/headers/x-github-event")?;
                let action = match payload.get("action") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(a)) => Some(check_token(a, "action", "/action")?),
                    Some(_) => return Err(malformed("/action", "the action must be a string")),
                };
                (event, action, delivery_from("x-github-delivery")?)
            }
            SourceKind::Builder => {
                let (model, operation) = crate::subscription::builder_event(&payload)
                    .ok_or_else(|| {
                        malformed(
                            "",
                            "a Builder.io delivery names its model and operation (modelName, operation)",
                        )
                    })?;
                (
                    check_token(&model, "model name", "/modelName")?,
                    Some(check_token(&operation, "operation", "/operation")?),
                    hashed(),
                )
            }
            SourceKind::Generic => {
                let event = if let Some(h) = &self.event_header {
                    let v = header(h).ok_or_else(|| {
                        malformed(format!("/headers/{h}"), "the event type header is missing")
                    })?;
                    check_token(v.trim(), "event", &format!("/headers/{h}"))?
                } else if let Some(path) = &self.event_field {
                    let v = string_at(&payload, path).ok_or_else(|| {
                        malformed(
                            pointer_of(path),
                            "the event type is missing or not a string",
                        )
                    })?;
                    check_token(v, "event", &pointer_of(path))?
                } else {
                    "event".to_owned()
                };
                let action = match &self.action_field {
                    None => None,
                    Some(path) => string_at(&payload, path)
                        .map(|a| check_token(a, "action", &pointer_of(path)))
                        .transpose()?,
                };
                let delivery = match (&self.delivery_header, &self.delivery_field) {
                    (Some(h), _) => delivery_from(h)?,
                    (None, Some(path)) => {
                        let id = string_at(&payload, path).ok_or_else(|| {
                            malformed(
                                pointer_of(path),
                                "the delivery id is missing or not a string",
                            )
                        })?;
                        let ok = !id.is_empty()
                            && id.len() <= MAX_DELIVERY_ID
                            && id.bytes().all(|b| b.is_ascii_graphic());
                        if !ok {
                            return Err(malformed(
                                pointer_of(path),
                                format!(
                                    "a delivery id must be 1 to {MAX_DELIVERY_ID} visible ASCII characters"
                                ),
                            ));
                        }
                        id.to_owned()
                    }
                    (None, None) => hashed(),
                };
                (event, action, delivery)
            }
        };
        Ok(InboundEvent {
            source: self.name.clone(),
            event,
            action,
            delivery,
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-test";

    fn spec(json: Value) -> Result<Source, ValidationError> {
        let spec: SourceSpec = serde_json::from_value(json).unwrap();
        spec.validate(1_000, None)
    }

    fn pointers(e: ValidationError) -> Vec<String> {
        e.errors.into_iter().map(|f| f.pointer).collect()
    }

    #[test]
    fn a_github_source_needs_only_a_name_and_a_secret() {
        let s = spec(serde_json::json!({"name": "gh-org", "kind": "github", "secrets": [SECRET]}))
            .unwrap();
        assert_eq!(s.verification, Verification::github());
        assert_eq!(s.created_at_ms, 1_000);
        let view = serde_json::to_value(s.view()).unwrap();
        assert_eq!(view["secrets"], 1);
        assert_eq!(view["url"], "/webhooks/gh-org");
        assert!(!view.to_string().contains(SECRET), "{view}");
        assert!(!format!("{s:?}").contains(SECRET));
    }

    #[test]
    fn bad_specs_name_every_field_at_fault() {
        let e = spec(serde_json::json!({
            "name": "Bad Name", "kind": "github", "secrets": ["short", SECRET, SECRET],
            "event_field": "type", "max_body_bytes": 0,
            "verification": {"type": "token", "header": "x-token"}
        }))
        .unwrap_err();
        let p = pointers(e);
        for want in [
            "/name",
            "/verification",
            "/secrets",
            "/secrets/0",
            "/event_field",
            "/max_body_bytes",
        ] {
            assert!(p.contains(&want.to_owned()), "{want} not in {p:?}");
        }
        let e = spec(serde_json::json!({"name": "x", "kind": "generic", "secrets": [SECRET]}))
            .unwrap_err();
        assert_eq!(pointers(e), ["/verification"]);
        let e = spec(serde_json::json!({"name": "x", "kind": "github"})).unwrap_err();
        assert_eq!(pointers(e), ["/secrets"]);
        let e = spec(serde_json::json!({
            "name": "x", "kind": "generic", "secrets": [SECRET],
            "verification": {"type": "token", "header": "x-token"},
            "event_header": "x-event", "event_field": "type", "action_field": "a..b"
        }))
        .unwrap_err();
        assert_eq!(pointers(e), ["/event_field", "/action_field"]);
    }

    #[test]
    fn an_update_without_secrets_keeps_the_stored_ones() {
        let first =
            spec(serde_json::json!({"name": "gh", "kind": "github", "secrets": [SECRET]})).unwrap();
        let spec: SourceSpec = serde_json::from_value(serde_json::json!({
            "name": "gh", "kind": "github", "description": "org hooks"
        }))
        .unwrap();
        let second = spec.validate(2_000, Some(&first)).unwrap();
        assert_eq!(second.secrets, first.secrets);
        assert_eq!((second.created_at_ms, second.updated_at_ms), (1_000, 2_000));
    }

    fn headers(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn github_events_come_from_headers_and_the_action_field() {
        let s = Source::builtin("github", vec![SECRET.into()], None).unwrap();
        let h = headers(&[
            ("X-GitHub-Event", "pull_request"),
            ("X-GitHub-Delivery", "d-1"),
        ]);
        let ev = s
            .describe(&h, serde_json::json!({"action": "opened"}), b"{}")
            .unwrap();
        assert_eq!(
            (
                ev.event.as_str(),
                ev.action.as_deref(),
                ev.delivery.as_str()
            ),
            ("pull_request", Some("opened"), "d-1")
        );
        let no_event = s.describe(&headers(&[]), serde_json::json!({}), b"{}");
        assert_eq!(no_event.unwrap_err().pointer, "/headers/x-github-event");
        let bad_action = s.describe(&h, serde_json::json!({"action": 3}), b"{}");
        assert_eq!(bad_action.unwrap_err().pointer, "/action");
        // No delivery header: the signed bytes name the delivery.
        let h = headers(&[("X-GitHub-Event", "push")]);
        let a = s.describe(&h, serde_json::json!({}), b"one").unwrap();
        let b = s.describe(&h, serde_json::json!({}), b"two").unwrap();
        assert_ne!(a.delivery, b.delivery);
        assert_eq!(a.delivery, crate::sign::digest(b"one"));
    }

    #[test]
    fn generic_events_come_from_where_the_source_says() {
        let s = spec(serde_json::json!({
            "name": "payments", "kind": "generic", "secrets": [SECRET],
            "verification": {"type": "hmac", "header": "stripe-signature", "signature_key": "v1",
                             "timestamp_key": "t", "signed": "timestamp_body"},
            "event_field": "type", "action_field": "data.object.status",
            "delivery_header": "Idempotency-Key"
        }))
        .unwrap();
        let body = serde_json::json!({"id": "evt_1", "type": "invoice.paid",
                                      "data": {"object": {"status": "paid"}}});
        let ev = s
            .describe(&headers(&[("idempotency-key", "k-9")]), body.clone(), b"x")
            .unwrap();
        assert_eq!(
            (
                ev.event.as_str(),
                ev.action.as_deref(),
                ev.delivery.as_str()
            ),
            ("invoice.paid", Some("paid"), "k-9")
        );
        let e = s
            .describe(&headers(&[]), serde_json::json!({"type": 5}), b"x")
            .unwrap_err();
        assert_eq!(e.pointer, "/type");
        let e = s
            .describe(&headers(&[("idempotency-key", " ")]), body, b"x")
            .unwrap_err();
        assert_eq!(e.pointer, "/headers/idempotency-key");
    }

    #[test]
    fn a_delivery_field_names_retries_signed_anew_as_one_delivery() {
        let s = spec(serde_json::json!({
            "name": "payments", "kind": "generic", "secrets": [SECRET],
            "verification": {"type": "hmac", "header": "stripe-signature", "signature_key": "v1",
                             "timestamp_key": "t", "signed": "timestamp_body"},
            "event_field": "type", "delivery_field": "id"
        }))
        .unwrap();
        let body = serde_json::json!({"id": "evt_1", "type": "invoice.paid"});
        let ev = s.describe(&headers(&[]), body, b"{}").unwrap();
        assert_eq!(ev.delivery, "evt_1");
        let e = s
            .describe(&headers(&[]), serde_json::json!({"type": "x"}), b"{}")
            .unwrap_err();
        assert_eq!(e.pointer, "/id");
        let both = spec(serde_json::json!({
            "name": "payments", "kind": "generic", "secrets": [SECRET],
            "verification": {"type": "token", "header": "x-token"},
            "delivery_field": "id", "delivery_header": "x-id"
        }))
        .unwrap_err();
        assert_eq!(pointers(both), ["/delivery_field"]);
    }

    #[test]
    fn a_secret_in_the_wrong_shape_is_not_echoed() {
        let body = format!(r#"{{"name": "x", "kind": "github", "secrets": "{SECRET}"}}"#);
        let e = SourceSpec::parse(body.as_bytes()).unwrap_err();
        assert!(!e.to_string().contains(SECRET), "{e}");
        let spec: SourceSpec = serde_json::from_value(serde_json::json!({
            "name": "x", "kind": "github", "secrets": [SECRET]
        }))
        .unwrap();
        assert!(!format!("{spec:?}").contains(SECRET));
    }

    #[test]
    fn builtin_sources_exist_only_with_a_secret() {
        assert!(Source::builtin("github", vec![String::new()], None).is_none());
        assert!(Source::builtin("stripe", vec![SECRET.into()], None).is_none());
        let b =
            Source::builtin("builder", vec![SECRET.into(), String::new()], Some("x-b")).unwrap();
        assert_eq!(b.secrets.len(), 1);
        assert_eq!(b.verification, Verification::builder("x-b"));
    }
}
