//! Subscriptions: which inbound events start which workflows.
//!
//! A verified webhook delivery becomes an [`InboundEvent`]: its source, an
//! event name, an optional action, and the JSON body. A [`Subscription`]
//! starts its workflow for every event that matches it, with a trigger
//! payload it selects from the body.
//!
//! # Matching
//!
//! A subscription matches when it is enabled, names the event's source, one
//! of its event patterns matches, and every filter matches.
//!
//! An event's full name is its event name, then its action if it has one,
//! joined by `.` (`pull_request.opened`, `page.publish`; a generic source's
//! event type may have dots of its own: `invoice.paid`). Event patterns are
//! up to [`MAX_EVENT_PARTS`] parts separated by `.`, each a name
//! (`A-Z a-z 0-9 _ -`, compared exactly, case included: Builder.io's
//! operations are `scheduledStart` and the like) or `*`, standing for any
//! one part. A pattern matches a full name part by part from the start,
//! and a shorter pattern matches every name it begins:
//! - `push` matches a `push` whatever its action, and without one;
//! - `pull_request.opened` only that action;
//! - `pull_request.*` any `pull_request` that carries an action;
//! - `*` everything, `*.opened` any event whose action is `opened`;
//! - `invoice` every `invoice.*` event of a Stripe-style source,
//!   `invoice.paid` only that one.
//!
//! A filter's `field` is a dotted path into the body
//! (`repository.full_name`, `pull_request.labels.*.name`). A part is an
//! object key, or, on an array, a decimal index; `*` steps to every element
//! of an array or every value of an object. Keys containing `.` cannot be
//! named. A path can reach no value, one, or (through `*`) several, and a
//! filter matches when **any** reached value passes its test, so a label
//! filter `pull_request.labels.*.name` `equals "security"` matches a pull
//! request carrying that label among others. The tests:
//! - `equals`: the JSON values are equal exactly (`5` is not `"5"`);
//! - `glob`: the value is a string matching the pattern (other values never
//!   match): `*` is any run of characters, `/` included, `?` one character,
//!   everything else literal and case-sensitive; there is no escape;
//! - `one_of`: `equals` one of the listed values;
//! - `exists: true`: the path reaches at least one value (`null` counts);
//!   `exists: false`: it reaches none.
//!
//! Matching a stored subscription against a body is bounded: paths have at
//! most [`MAX_PATH_PARTS`] parts and each step visits every reached node's
//! children at most once, so a path costs at most the size of the body per
//! part; globs run without recursion in time proportional to the string
//! times the pattern.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::agent::{check_description, check_name};
use crate::error::{FieldError, MAX_ERRORS, ValidationError};

/// Most event patterns in one subscription.
pub const MAX_EVENTS: usize = 32;
/// Longest event pattern.
pub const MAX_EVENT_PATTERN_LEN: usize = 128;
/// Most filters in one subscription.
pub const MAX_FILTERS: usize = 32;
/// Longest filter or payload path.
pub const MAX_PATH_LEN: usize = 256;
/// Most parts of a path.
pub const MAX_PATH_PARTS: usize = 16;
/// Longest glob.
pub const MAX_GLOB_LEN: usize = 256;
/// Most values in a `one_of`.
pub const MAX_ONE_OF: usize = 64;
/// Longest `equals` or `one_of` value, as compact JSON.
pub const MAX_VALUE_LEN: usize = 1024;
/// Most fields a payload selection picks.
pub const MAX_PAYLOAD_FIELDS: usize = 64;
/// Longest name of a picked payload field.
pub const MAX_PAYLOAD_FIELD_NAME_LEN: usize = 64;
/// Longest model name or operation [`builder_event`] accepts.
pub const MAX_BUILDER_NAME_LEN: usize = 128;

/// An event that passed verification, as subscriptions see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboundEvent {
    /// `github`, `builder`, or a registered source name.
    pub source: String,
    /// GitHub: the `X-GitHub-Event` header (`push`); Builder.io: the model
    /// name (`page`); other sources: per the source's configuration.
    pub event: String,
    /// GitHub: the body's `action` (`opened`); Builder.io: the operation
    /// (`publish`); other sources: per the source's configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The delivery id.
    pub delivery: String,
    /// The JSON body.
    pub payload: Value,
}

/// A subscription as submitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSpec {
    /// Its name (the naming rule of agents and workflows).
    pub name: String,
    /// What it is for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The source whose events it takes (the naming rule of agents).
    pub source: String,
    /// Event patterns (see the module documentation), 1 to [`MAX_EVENTS`];
    /// any may match.
    pub events: Vec<String>,
    /// Tests on the body, at most [`MAX_FILTERS`]; all must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
    /// The workflow it starts.
    pub workflow: String,
    /// What the run gets as its trigger payload.
    #[serde(default)]
    pub payload: PayloadSelect,
    /// A disabled subscription matches nothing.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// One test on the body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Dotted path into the body, e.g. `repository.full_name` or
    /// `pull_request.labels.*.name`: 1 to [`MAX_PATH_LEN`] bytes, at most
    /// [`MAX_PATH_PARTS`] non-empty parts.
    pub field: String,
    /// The test, written beside `field`: `{"field": "ref", "glob": "refs/heads/*"}`.
    #[serde(flatten)]
    pub test: Match,
}

/// The test of a [`Filter`]: exactly one of these keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Match {
    /// `{"equals": <value>}`: a reached value equals this one exactly.
    Equals(Value),
    /// `{"glob": "refs/heads/release-*"}`: a reached string matches.
    Glob(String),
    /// `{"one_of": [..]}`: a reached value equals one of these (1 to
    /// [`MAX_ONE_OF`]).
    OneOf(Vec<Value>),
    /// `{"exists": true}`: the path reaches a value (`null` counts), or with
    /// `false`, reaches none.
    Exists(bool),
}

/// What a run gets as its trigger payload.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    deny_unknown_fields,
    from = "PayloadSelectWire"
)]
pub enum PayloadSelect {
    /// `{"type":"event"}`: the whole body.
    #[default]
    Event,
    /// `{"type":"fields","fields":{"repo":"repository.full_name"}}`: an object
    /// of the named paths' values, 1 to [`MAX_PAYLOAD_FIELDS`]. A path that
    /// reaches nothing gives `null`; a path through `*` gives the array of
    /// every value it reaches.
    Fields {
        /// Output field name → path into the body.
        fields: BTreeMap<String, String>,
    },
}

/// [`PayloadSelect`] as read: serde ignores `deny_unknown_fields` on the
/// unit variant of an internally tagged enum, so `{"type": "event",
/// "fields": {..}}` (a selection that cannot mean what it says) would pass
/// silently; an empty struct variant refuses it.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum PayloadSelectWire {
    Event {},
    Fields { fields: BTreeMap<String, String> },
}

impl From<PayloadSelectWire> for PayloadSelect {
    fn from(wire: PayloadSelectWire) -> Self {
        match wire {
            PayloadSelectWire::Event {} => Self::Event,
            PayloadSelectWire::Fields { fields } => Self::Fields { fields },
        }
    }
}

/// A validated subscription, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscription {
    /// Its name.
    pub name: String,
    /// What it is for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The source whose events it takes.
    pub source: String,
    /// Event patterns; any may match.
    pub events: Vec<String>,
    /// Tests on the body; all must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
    /// The workflow it starts.
    pub workflow: String,
    /// What the run gets as its trigger payload.
    #[serde(default)]
    pub payload: PayloadSelect,
    /// A disabled subscription matches nothing.
    pub enabled: bool,
    /// When it was first created, milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// When it was last written, milliseconds since the Unix epoch.
    pub updated_at_ms: u64,
}

impl SubscriptionSpec {
    /// Checks every field, reporting all problems at once with JSON
    /// Pointers (e.g. `/filters/2/glob`), and gives the subscription to store
    /// at `now_ms`. With `previous` (the stored version it replaces), the
    /// creation time is kept and the name cannot change.
    pub fn validate(
        self,
        now_ms: u64,
        previous: Option<&Subscription>,
    ) -> Result<Subscription, ValidationError> {
        let mut errors = Vec::new();
        for (pointer, value) in [
            ("/name", &self.name),
            ("/source", &self.source),
            ("/workflow", &self.workflow),
        ] {
            if let Err(e) = check_name(value) {
                errors.push(FieldError::new(pointer, e));
            }
        }
        if let Some(prev) = previous
            && prev.name != self.name
        {
            errors.push(FieldError::new(
                "/name",
                format!(
                    "a subscription cannot be renamed (was '{}', now '{}')",
                    prev.name, self.name
                ),
            ));
        }
        errors.extend(check_description(&self.description));
        if self.events.is_empty() || self.events.len() > MAX_EVENTS {
            errors.push(FieldError::new(
                "/events",
                format!("must list 1 to {MAX_EVENTS} event patterns"),
            ));
        }
        for (i, pattern) in self.events.iter().enumerate().take(MAX_EVENTS + 1) {
            if let Err(e) = check_event_pattern(pattern) {
                errors.push(FieldError::new(format!("/events/{i}"), e));
            }
        }
        if self.filters.len() > MAX_FILTERS {
            errors.push(FieldError::new(
                "/filters",
                format!("at most {MAX_FILTERS} filters"),
            ));
        }
        for (i, filter) in self.filters.iter().enumerate().take(MAX_FILTERS + 1) {
            if errors.len() > MAX_ERRORS {
                break; // `check` lists no more than this
            }
            filter.check(&format!("/filters/{i}"), &mut errors);
        }
        if let PayloadSelect::Fields { fields } = &self.payload {
            if fields.is_empty() || fields.len() > MAX_PAYLOAD_FIELDS {
                errors.push(FieldError::new(
                    "/payload/fields",
                    format!("must name 1 to {MAX_PAYLOAD_FIELDS} fields"),
                ));
            }
            for (name, path) in fields.iter().take(MAX_PAYLOAD_FIELDS + 1) {
                let pointer = format!("/payload/fields/{}", escape_pointer(name));
                if name.is_empty() || name.len() > MAX_PAYLOAD_FIELD_NAME_LEN {
                    errors.push(FieldError::new(
                        &pointer,
                        format!("a field name must be 1 to {MAX_PAYLOAD_FIELD_NAME_LEN} bytes"),
                    ));
                }
                if let Err(e) = check_path(path) {
                    errors.push(FieldError::new(pointer, e));
                }
            }
        }
        ValidationError::check(errors)?;
        Ok(Subscription {
            name: self.name,
            description: self.description,
            source: self.source,
            events: self.events,
            filters: self.filters,
            workflow: self.workflow,
            payload: self.payload,
            enabled: self.enabled,
            created_at_ms: previous.map_or(now_ms, |p| p.created_at_ms),
            updated_at_ms: now_ms,
        })
    }
}

impl Filter {
    fn check(&self, at: &str, errors: &mut Vec<FieldError>) {
        if let Err(e) = check_path(&self.field) {
            errors.push(FieldError::new(format!("{at}/field"), e));
        }
        let too_big =
            |v: &Value| serde_json::to_string(v).map_or(true, |s| s.len() > MAX_VALUE_LEN);
        match &self.test {
            Match::Equals(v) if too_big(v) => errors.push(FieldError::new(
                format!("{at}/equals"),
                format!("must be at most {MAX_VALUE_LEN} bytes of JSON"),
            )),
            Match::Glob(g) if g.len() > MAX_GLOB_LEN => errors.push(FieldError::new(
                format!("{at}/glob"),
                format!("must be at most {MAX_GLOB_LEN} bytes"),
            )),
            Match::OneOf(vs) => {
                if vs.is_empty() || vs.len() > MAX_ONE_OF {
                    errors.push(FieldError::new(
                        format!("{at}/one_of"),
                        format!("must list 1 to {MAX_ONE_OF} values"),
                    ));
                }
                for (j, v) in vs.iter().enumerate().take(MAX_ONE_OF + 1) {
                    if too_big(v) {
                        errors.push(FieldError::new(
                            format!("{at}/one_of/{j}"),
                            format!("must be at most {MAX_VALUE_LEN} bytes of JSON"),
                        ));
                    }
                }
            }
            _ => {}
        }
    }

    fn matches(&self, payload: &Value) -> bool {
        let reached = reach(payload, &self.field);
        match &self.test {
            Match::Equals(want) => reached.contains(&want),
            Match::Glob(pattern) => reached
                .iter()
                .any(|v| v.as_str().is_some_and(|s| glob(pattern, s))),
            Match::OneOf(wants) => reached.iter().any(|v| wants.iter().any(|w| *v == w)),
            Match::Exists(want) => reached.is_empty() != *want,
        }
    }
}

impl Subscription {
    /// Whether `ev` starts this subscription's workflow: it is enabled, names
    /// the event's source, one event pattern matches and every filter does.
    pub fn matches(&self, ev: &InboundEvent) -> bool {
        self.enabled
            && self.source == ev.source
            && self
                .events
                .iter()
                .any(|p| event_matches(p, &ev.event, ev.action.as_deref()))
            && self.filters.iter().all(|f| f.matches(&ev.payload))
    }

    /// The trigger payload a run started by `ev` gets.
    pub fn payload(&self, ev: &InboundEvent) -> Value {
        match &self.payload {
            PayloadSelect::Event => ev.payload.clone(),
            PayloadSelect::Fields { fields } => Value::Object(
                fields
                    .iter()
                    .map(|(name, path)| {
                        let reached = reach(&ev.payload, path);
                        let value = if path.split('.').any(|p| p == "*") {
                            Value::Array(reached.into_iter().cloned().collect())
                        } else {
                            reached.first().map_or(Value::Null, |v| (*v).clone())
                        };
                        (name.clone(), value)
                    })
                    .collect(),
            ),
        }
    }
}

/// The model name and operation of a Builder.io webhook body: its
/// `modelName` and `operation` (`publish`, `unpublish`, `archive`, `delete`,
/// `scheduledStart`, `scheduledEnd`), both non-empty strings of at most
/// [`MAX_BUILDER_NAME_LEN`] bytes. They are present even when the webhook's
/// "Disable Payload" option leaves out `newValue` and `previousValue`.
pub fn builder_event(payload: &Value) -> Option<(String, String)> {
    let field = |key: &str| {
        payload
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= MAX_BUILDER_NAME_LEN)
            .map(str::to_owned)
    };
    Some((field("modelName")?, field("operation")?))
}

/// Most dot-separated parts of an event pattern (Stripe's
/// `customer.subscription.created` has three).
pub const MAX_EVENT_PARTS: usize = 8;

fn check_event_pattern(pattern: &str) -> Result<(), String> {
    let part_ok = |p: &str| {
        p == "*"
            || (!p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
    };
    if pattern.is_empty() || pattern.len() > MAX_EVENT_PATTERN_LEN {
        return Err(format!("must be 1 to {MAX_EVENT_PATTERN_LEN} bytes"));
    }
    if pattern.split('.').count() <= MAX_EVENT_PARTS && pattern.split('.').all(part_ok) {
        Ok(())
    } else {
        Err(format!(
            "must be up to {MAX_EVENT_PARTS} parts separated by '.', each a name of A-Z, a-z, \
             0-9, '_' and '-', or '*'"
        ))
    }
}

/// Whether `pattern` matches the event's full name, `event` or
/// `event.action`: part by part, `*` standing for any one part, and a
/// pattern with fewer parts matching every name it begins (`push` any
/// push, `invoice` Stripe's `invoice.paid`).
fn event_matches(pattern: &str, event: &str, action: Option<&str>) -> bool {
    let mut name = event.split('.').chain(action);
    pattern
        .split('.')
        .all(|p| name.next().is_some_and(|n| p == "*" || p == n))
}

fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.len() > MAX_PATH_LEN {
        return Err(format!("must be 1 to {MAX_PATH_LEN} bytes"));
    }
    if path.split('.').count() > MAX_PATH_PARTS {
        return Err(format!("at most {MAX_PATH_PARTS} parts"));
    }
    if path.split('.').any(str::is_empty) {
        return Err("parts between '.' must not be empty".into());
    }
    Ok(())
}

/// Every value `path` reaches in `root` (see the module documentation).
fn reach<'a>(root: &'a Value, path: &str) -> Vec<&'a Value> {
    let mut frontier = vec![root];
    for part in path.split('.') {
        let mut next = Vec::new();
        for v in frontier {
            match v {
                Value::Array(items) if part == "*" => next.extend(items),
                Value::Object(map) if part == "*" => next.extend(map.values()),
                Value::Object(map) => next.extend(map.get(part)),
                Value::Array(items) => {
                    if let Some(i) = array_index(part) {
                        next.extend(items.get(i));
                    }
                }
                _ => {}
            }
        }
        if next.is_empty() {
            return next;
        }
        frontier = next;
    }
    frontier
}

/// A canonical decimal index: digits only, no sign, no leading zero.
fn array_index(part: &str) -> Option<usize> {
    let canonical =
        part.bytes().all(|b| b.is_ascii_digit()) && (part == "0" || !part.starts_with('0'));
    if canonical { part.parse().ok() } else { None }
}

/// Whether `text` matches `pattern` (`*` any run, `?` one character).
///
/// The classic two-pointer algorithm: on a mismatch, only the most recent
/// `*` is retried one character further, so there is no recursion and the
/// time is at most the product of the lengths, whatever the input.
fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let (mut pi, mut ti) = (0, 0); // index into `p`; byte offset into `text`
    // After the latest `*`: where the pattern resumes, and where the text
    // the star has swallowed so far ends.
    let mut star: Option<(usize, usize)> = None;
    while let Some(c) = text.get(ti..).and_then(|t| t.chars().next()) {
        match p.get(pi) {
            Some('*') => {
                pi += 1;
                star = Some((pi, ti));
            }
            Some(&q) if q == '?' || q == c => {
                pi += 1;
                ti += c.len_utf8();
            }
            _ => {
                let Some((resume, swallowed)) = star else {
                    return false;
                };
                let Some(s) = text.get(swallowed..).and_then(|t| t.chars().next()) else {
                    return false;
                };
                let swallowed = swallowed + s.len_utf8();
                star = Some((resume, swallowed));
                pi = resume;
                ti = swallowed;
            }
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|&q| q == '*'))
}

/// `s` escaped as one JSON Pointer reference token (RFC 6901).
fn escape_pointer(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const PUSH_TAG: &str = include_str!("../tests/fixtures/github/push.payload.json");
    const PUSH_BRANCH: &str =
        include_str!("../tests/fixtures/github/push.with-new-branch.payload.json");
    const PR_OPENED: &str =
        include_str!("../tests/fixtures/github/pull_request.opened.payload.json");
    const PR_LABELED: &str =
        include_str!("../tests/fixtures/github/pull_request.labeled.payload.json");
    const RUN_COMPLETED: &str =
        include_str!("../tests/fixtures/github/workflow_run.completed.payload.json");
    const BUILDER_PUBLISH: &str = include_str!("../tests/fixtures/builder/publish.json");
    const BUILDER_UNPUBLISH: &str = include_str!("../tests/fixtures/builder/unpublish.json");

    /// A GitHub delivery of `fixture` as event `event`, its action read from
    /// the body as the webhook component does.
    fn github(event: &str, fixture: &str) -> InboundEvent {
        let payload: Value = serde_json::from_str(fixture).unwrap();
        InboundEvent {
            source: "github".into(),
            event: event.into(),
            action: payload["action"].as_str().map(str::to_owned),
            delivery: "d-1".into(),
            payload,
        }
    }

    fn builder(fixture: &str) -> InboundEvent {
        let payload: Value = serde_json::from_str(fixture).unwrap();
        let (event, action) = builder_event(&payload).unwrap();
        InboundEvent {
            source: "builder".into(),
            event,
            action: Some(action),
            delivery: "d-2".into(),
            payload,
        }
    }

    /// A subscription from its JSON form, with the given events and filters.
    fn sub(source: &str, events: &[&str], filters: Value) -> Subscription {
        spec(json!({
            "name": "s", "source": source, "events": events, "filters": filters, "workflow": "w",
        }))
        .validate(1, None)
        .unwrap()
    }

    fn spec(v: Value) -> SubscriptionSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_branch_push_matches_a_branch_glob_and_a_tag_push_does_not() {
        let s = sub(
            "github",
            &["push"],
            json!([{"field": "ref", "glob": "refs/heads/*"}]),
        );
        let branch = github("push", PUSH_BRANCH);
        assert_eq!(branch.payload["ref"], "refs/heads/master");
        assert!(s.matches(&branch));
        let tag = github("push", PUSH_TAG);
        assert_eq!(tag.payload["ref"], "refs/tags/simple-tag");
        assert!(!s.matches(&tag));

        let main = sub(
            "github",
            &["push"],
            json!([{"field": "ref", "equals": "refs/heads/main"}]),
        );
        assert!(!main.matches(&branch));
        let mut to_main = branch.clone();
        to_main.payload["ref"] = json!("refs/heads/main");
        assert!(main.matches(&to_main));
        assert!(s.matches(&to_main));
        // Events from another source or of another kind do not match.
        assert!(!s.matches(&InboundEvent {
            source: "gitlab".into(),
            ..branch.clone()
        }));
        assert!(!s.matches(&InboundEvent {
            event: "create".into(),
            ..branch
        }));
    }

    #[test]
    fn a_filter_on_the_repository() {
        let ours = sub(
            "github",
            &["push"],
            json!([{"field": "repository.full_name", "equals": "Codertocat/Hello-World"}]),
        );
        let theirs = sub(
            "github",
            &["push"],
            json!([{"field": "repository.full_name", "equals": "octo-org/octo-repo"}]),
        );
        let push = github("push", PUSH_TAG);
        assert!(ours.matches(&push));
        assert!(!theirs.matches(&push));
        let either = sub(
            "github",
            &["push"],
            json!([{"field": "repository.full_name", "one_of": ["a/b", "Codertocat/Hello-World"]}]),
        );
        assert!(either.matches(&push));
        // Both filters must hold.
        let both = sub(
            "github",
            &["push"],
            json!([
                {"field": "repository.full_name", "equals": "Codertocat/Hello-World"},
                {"field": "sender.login", "glob": "octo*"},
            ]),
        );
        assert!(!both.matches(&push));
    }

    #[test]
    fn pull_request_patterns_by_action() {
        let opened = github("pull_request", PR_OPENED);
        assert_eq!(opened.action.as_deref(), Some("opened"));
        for (pattern, want) in [
            ("pull_request.opened", true),
            ("pull_request", true),
            ("pull_request.*", true),
            ("*.opened", true),
            ("*", true),
            ("pull_request.closed", false),
            ("push", false),
            ("pull_request.Opened", false),
        ] {
            assert_eq!(
                sub("github", &[pattern], json!([])).matches(&opened),
                want,
                "{pattern}"
            );
        }
        // Any pattern of the list may match.
        assert!(sub("github", &["push", "pull_request.opened"], json!([])).matches(&opened));
        // `event.*` needs an action; a plain `push` carries none.
        let push = github("push", PUSH_TAG);
        assert_eq!(push.action, None);
        assert!(!sub("github", &["push.*"], json!([])).matches(&push));
        assert!(sub("github", &["push"], json!([])).matches(&push));
    }

    #[test]
    fn a_label_filter_matches_any_label() {
        let labeled = github("pull_request", PR_LABELED);
        let bug = sub(
            "github",
            &["pull_request.labeled"],
            json!([{"field": "pull_request.labels.*.name", "equals": "bug"}]),
        );
        let security = sub(
            "github",
            &["pull_request.labeled"],
            json!([{"field": "pull_request.labels.*.name", "equals": "security"}]),
        );
        assert!(bug.matches(&labeled));
        assert!(!security.matches(&labeled));
        // Among several labels, one is enough.
        let mut more = labeled.clone();
        more.payload["pull_request"]["labels"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "security"}));
        assert!(security.matches(&more));
        assert!(bug.matches(&more));
        // The label just added, by index and by key.
        let first = sub(
            "github",
            &["pull_request.labeled"],
            json!([
                {"field": "label.name", "equals": "bug"},
                {"field": "pull_request.labels.0.name", "glob": "b?g"},
            ]),
        );
        assert!(first.matches(&labeled));
        assert!(!sub("github", &["pull_request.opened"], json!([])).matches(&labeled));
    }

    #[test]
    fn a_completed_workflow_run() {
        let run = github("workflow_run", RUN_COMPLETED);
        let s = sub(
            "github",
            &["workflow_run.completed"],
            json!([
                {"field": "workflow_run.conclusion", "one_of": ["success", "neutral"]},
                {"field": "workflow_run.head_branch", "equals": "master"},
            ]),
        );
        assert!(s.matches(&run));
        let failed = sub(
            "github",
            &["workflow_run.completed"],
            json!([{"field": "workflow_run.conclusion", "equals": "failure"}]),
        );
        assert!(!failed.matches(&run));
        assert!(!sub("github", &["workflow_run.requested"], json!([])).matches(&run));
    }

    #[test]
    fn star_matches_every_event_of_the_source() {
        let s = sub("github", &["*"], json!([]));
        for ev in [
            github("push", PUSH_TAG),
            github("pull_request", PR_OPENED),
            github("workflow_run", RUN_COMPLETED),
        ] {
            assert!(s.matches(&ev), "{}", ev.event);
        }
        assert!(!s.matches(&builder(BUILDER_PUBLISH)));
    }

    #[test]
    fn dotted_event_types_of_generic_sources_match_part_by_part() {
        let ev = |event: &str, action: Option<&str>| InboundEvent {
            source: "stripe".into(),
            event: event.into(),
            action: action.map(Into::into),
            delivery: "d".into(),
            payload: json!({}),
        };
        let cases = [
            ("invoice.paid", ev("invoice.paid", None), true),
            ("invoice", ev("invoice.paid", None), true),
            ("invoice.*", ev("invoice.paid", None), true),
            ("invoice.failed", ev("invoice.paid", None), false),
            ("invoice.paid.x", ev("invoice.paid", None), false),
            (
                "customer.subscription.created",
                ev("customer.subscription.created", None),
                true,
            ),
            (
                "customer.*.created",
                ev("customer.subscription.created", None),
                true,
            ),
            ("*.paid", ev("invoice.paid", None), true),
            // An action extends the name: `charge.succeeded` + `captured`.
            (
                "charge.succeeded.captured",
                ev("charge.succeeded", Some("captured")),
                true,
            ),
            (
                "charge.succeeded",
                ev("charge.succeeded", Some("captured")),
                true,
            ),
        ];
        for (pattern, event, want) in cases {
            let s = sub("stripe", &[pattern], json!([]));
            assert_eq!(s.matches(&event), want, "{pattern} vs {event:?}");
        }
    }

    #[test]
    fn a_disabled_subscription_never_matches() {
        let mut s = sub("github", &["*"], json!([]));
        s.enabled = false;
        assert!(!s.matches(&github("push", PUSH_TAG)));
        let off = spec(json!({
            "name": "s", "source": "github", "events": ["*"], "workflow": "w", "enabled": false,
        }))
        .validate(1, None)
        .unwrap();
        assert!(!off.matches(&github("push", PUSH_TAG)));
    }

    #[test]
    fn equals_is_exact_and_glob_takes_strings_only() {
        let ev = InboundEvent {
            source: "custom".into(),
            event: "e".into(),
            action: None,
            delivery: "d".into(),
            payload: json!({"n": 5, "s": "5", "nil": null, "o": {"a": [1, {"b": "x/y"}]}}),
        };
        let one = |filter: Value| sub("custom", &["e"], json!([filter])).matches(&ev);
        assert!(one(json!({"field": "n", "equals": 5})));
        assert!(!one(json!({"field": "n", "equals": "5"})));
        assert!(!one(json!({"field": "s", "equals": 5})));
        assert!(!one(json!({"field": "n", "glob": "*"})));
        assert!(one(json!({"field": "s", "glob": "*"})));
        assert!(one(json!({"field": "o.a.1.b", "glob": "x*"})));
        assert!(one(json!({"field": "o.a.*.b", "glob": "?/?"})));
        assert!(one(json!({"field": "o.*.*.b", "equals": "x/y"})));
        assert!(!one(json!({"field": "o.a.01.b", "exists": true})));
        assert!(one(json!({"field": "nil", "exists": true})));
        assert!(one(json!({"field": "nil", "equals": null})));
        assert!(one(json!({"field": "missing", "exists": false})));
        assert!(!one(json!({"field": "missing", "exists": true})));
        assert!(!one(json!({"field": "n.deeper", "exists": true})));
        assert!(!one(json!({"field": "missing", "equals": null})));
    }

    #[test]
    fn fields_payload_picks_values() {
        let s = spec(json!({
            "name": "s", "source": "github", "events": ["pull_request"], "workflow": "w",
            "payload": {"type": "fields", "fields": {
                "repo": "repository.full_name",
                "number": "number",
                "labels": "pull_request.labels.*.name",
                "nothing": "no.such.path",
            }},
        }))
        .validate(1, None)
        .unwrap();
        let ev = github("pull_request", PR_LABELED);
        assert_eq!(
            s.payload(&ev),
            json!({
                "repo": "Codertocat/Hello-World",
                "number": 2,
                "labels": ["bug"],
                "nothing": null,
            })
        );
        let whole = sub("github", &["*"], json!([]));
        assert_eq!(whole.payload(&ev), ev.payload);
    }

    #[test]
    fn builder_bodies_give_model_and_operation() {
        let publish: Value = serde_json::from_str(BUILDER_PUBLISH).unwrap();
        assert_eq!(
            builder_event(&publish),
            Some(("page".into(), "publish".into()))
        );
        let unpublish: Value = serde_json::from_str(BUILDER_UNPUBLISH).unwrap();
        assert_eq!(
            builder_event(&unpublish),
            Some(("page".into(), "unpublish".into()))
        );
        for bad in [
            json!({}),
            json!({"modelName": "page"}),
            json!({"modelName": "page", "operation": ""}),
            json!({"modelName": 5, "operation": "publish"}),
            json!({"modelName": "p".repeat(129), "operation": "publish"}),
            json!([]),
        ] {
            assert_eq!(builder_event(&bad), None, "{bad}");
        }

        let pages = sub(
            "builder",
            &["page.publish"],
            json!([{"field": "newValue.data.url", "glob": "/spring-*"}]),
        );
        assert!(pages.matches(&builder(BUILDER_PUBLISH)));
        assert!(!pages.matches(&builder(BUILDER_UNPUBLISH)));
        let gone = sub(
            "builder",
            &["page.unpublish", "page.archive", "page.delete"],
            json!([{"field": "previousValue.query.*.value", "glob": "/spring-*"}]),
        );
        assert!(gone.matches(&builder(BUILDER_UNPUBLISH)));
        assert!(!gone.matches(&builder(BUILDER_PUBLISH)));
        // A first publish has a null previousValue: present, and null.
        let first = sub(
            "builder",
            &["page.publish"],
            json!([{"field": "previousValue", "equals": null}]),
        );
        assert!(first.matches(&builder(BUILDER_PUBLISH)));
        assert!(!first.matches(&builder(BUILDER_UNPUBLISH)));
        // Operations are compared with their case.
        assert!(
            sub("builder", &["page.scheduledStart"], json!([])).matches(&InboundEvent {
                action: Some("scheduledStart".into()),
                ..builder(BUILDER_PUBLISH)
            })
        );
    }

    #[test]
    fn wire_forms_round_trip() {
        let s = spec(json!({
            "name": "deploy-on-push", "source": "github", "events": ["push"],
            "filters": [
                {"field": "ref", "glob": "refs/heads/*"},
                {"field": "repository.full_name", "equals": "a/b"},
                {"field": "sender.login", "one_of": ["x", 5, null]},
                {"field": "deleted", "exists": false},
            ],
            "workflow": "deploy",
            "payload": {"type": "fields", "fields": {"sha": "after"}},
        }));
        assert_eq!(
            s.filters.iter().map(|f| f.test.clone()).collect::<Vec<_>>(),
            [
                Match::Glob("refs/heads/*".into()),
                Match::Equals(json!("a/b")),
                Match::OneOf(vec![json!("x"), json!(5), Value::Null]),
                Match::Exists(false),
            ]
        );
        assert!(s.enabled);
        assert_eq!(
            serde_json::from_value::<SubscriptionSpec>(serde_json::to_value(&s).unwrap()).unwrap(),
            s
        );
        let stored = s.validate(3, None).unwrap();
        let text = serde_json::to_value(&stored).unwrap();
        assert_eq!(
            text["filters"][0],
            json!({"field": "ref", "glob": "refs/heads/*"})
        );
        assert_eq!(
            text["payload"],
            json!({"type": "fields", "fields": {"sha": "after"}})
        );
        assert_eq!(
            serde_json::from_value::<Subscription>(text).unwrap(),
            stored
        );
        assert_eq!(
            serde_json::to_value(PayloadSelect::Event).unwrap(),
            json!({"type": "event"})
        );
        assert_eq!(
            serde_json::from_value::<PayloadSelect>(json!({"type": "event"})).unwrap(),
            PayloadSelect::Event
        );
        // `equals: null` is a test, not a missing one.
        let f: Filter = serde_json::from_value(json!({"field": "a", "equals": null})).unwrap();
        assert_eq!(f.test, Match::Equals(Value::Null));

        for bad in [
            json!({"field": "a"}),
            json!({"field": "a", "equals": 1, "glob": "x"}),
            json!({"field": "a", "equal": 1}),
            json!({"field": "a", "glob": 5}),
            json!({"field": "a", "exists": "yes"}),
        ] {
            assert!(
                serde_json::from_value::<Filter>(bad.clone()).is_err(),
                "{bad}"
            );
        }
        for bad in [
            json!({"name": "s", "source": "g", "events": ["push"], "workflow": "w", "extra": 1}),
            json!({"name": "s", "source": "g", "events": ["push"], "workflow": "w",
                   "payload": {"type": "body"}}),
            json!({"name": "s", "source": "g", "events": ["push"], "workflow": "w",
                   "payload": {"type": "event", "fields": {}}}),
        ] {
            assert!(
                serde_json::from_value::<SubscriptionSpec>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    fn pointers(v: Value) -> Vec<String> {
        match spec(v).validate(1, None) {
            Ok(_) => vec![],
            Err(e) => e.errors.into_iter().map(|e| e.pointer).collect(),
        }
    }

    #[test]
    fn validate_points_at_each_field_at_fault() {
        let base = json!({"name": "s", "source": "github", "events": ["push"], "workflow": "w"});
        let with = |patch: Value| {
            let mut v = base.clone();
            for (k, x) in patch.as_object().unwrap() {
                v[k] = x.clone();
            }
            pointers(v)
        };
        assert_eq!(with(json!({})), Vec::<String>::new());
        assert_eq!(
            with(
                json!({"name": "S", "source": "", "workflow": "-w", "description": "d".repeat(5000)})
            ),
            ["/name", "/source", "/workflow", "/description"]
        );
        assert_eq!(with(json!({"events": []})), ["/events"]);
        assert_eq!(with(json!({"events": vec!["push"; 33]})), ["/events"]);
        assert_eq!(
            with(
                // Three parts are fine (Stripe's `customer.subscription.created`);
                // nine are not.
                json!({"events": ["push", "", "a.b.c", "a.b.c.d.e.f.g.h.i", "pull*", "a.", ".a", "a b", "x".repeat(129), "*.*", "page.scheduledStart"]})
            ),
            [
                "/events/1",
                "/events/3",
                "/events/4",
                "/events/5",
                "/events/6",
                "/events/7",
                "/events/8"
            ]
        );
        let filters: Vec<Value> = (0..33)
            .map(|_| json!({"field": "a", "exists": true}))
            .collect();
        assert_eq!(with(json!({"filters": filters})), ["/filters"]);
        assert_eq!(
            with(json!({"filters": [
                {"field": "", "exists": true},
                {"field": "a..b", "exists": true},
                {"field": vec!["a"; 17].join("."), "exists": true},
                {"field": "a".repeat(257), "exists": true},
                {"field": "a", "glob": "*".repeat(257)},
                {"field": "a", "one_of": []},
                {"field": "a", "one_of": ["ok", "x".repeat(1100)]},
                {"field": "a", "equals": {"big": "x".repeat(1100)}},
                {"field": vec!["a"; 16].join("."), "glob": "*".repeat(256)},
            ]})),
            [
                "/filters/0/field",
                "/filters/1/field",
                "/filters/2/field",
                "/filters/3/field",
                "/filters/4/glob",
                "/filters/5/one_of",
                "/filters/6/one_of/1",
                "/filters/7/equals",
            ]
        );
        assert_eq!(
            with(json!({"payload": {"type": "fields", "fields": {}}})),
            ["/payload/fields"]
        );
        assert_eq!(
            with(json!({"payload": {"type": "fields", "fields": {
                "ok": "a.b", "a/b": "", "": "x", "long": "a..b",
            }}})),
            [
                "/payload/fields/",
                "/payload/fields/a~1b",
                "/payload/fields/long"
            ]
        );
    }

    #[test]
    fn an_update_keeps_the_creation_time_and_the_name() {
        let v = json!({"name": "s", "source": "github", "events": ["push"], "workflow": "w"});
        let first = spec(v.clone()).validate(10, None).unwrap();
        assert_eq!((first.created_at_ms, first.updated_at_ms), (10, 10));
        let second = spec(v).validate(20, Some(&first)).unwrap();
        assert_eq!((second.created_at_ms, second.updated_at_ms), (10, 20));
        let renamed =
            spec(json!({"name": "t", "source": "github", "events": ["push"], "workflow": "w"}))
                .validate(30, Some(&first))
                .unwrap_err();
        assert_eq!(renamed.errors[0].pointer, "/name");
    }

    #[test]
    fn glob_examples() {
        for (p, t, want) in [
            ("refs/heads/*", "refs/heads/main", true),
            ("refs/heads/*", "refs/heads/feature/x", true),
            ("refs/heads/*", "refs/tags/v1", false),
            ("release-?", "release-1", true),
            ("release-?", "release-10", false),
            ("*", "", true),
            ("", "", true),
            ("", "a", false),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("*.md", "README.MD", false),
            ("?", "é", true),
            ("é*", "éa", true),
            ("**a", "bba", true),
            ("a*", "b", false),
        ] {
            assert_eq!(glob(p, t), want, "{p} {t}");
        }
        // The pathological case for backtracking matchers stays fast.
        let text = "a".repeat(10_000);
        let pattern = format!("{}b", "*a".repeat(100));
        assert!(!glob(&pattern, &text));
    }

    /// A plain recursive matcher: obviously right, exponential, short inputs only.
    fn reference(p: &[char], t: &[char]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some('*'), _) => reference(&p[1..], t) || (!t.is_empty() && reference(p, &t[1..])),
            (Some('?'), Some(_)) => reference(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a == b => reference(&p[1..], &t[1..]),
            _ => false,
        }
    }

    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[a-c0-9*./é]{0,6}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("[a-c0-9*]{0,2}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn glob_agrees_with_the_reference(p in "[ab*?/é]{0,10}", t in "[ab/é]{0,14}") {
            let (pc, tc): (Vec<char>, Vec<char>) = (p.chars().collect(), t.chars().collect());
            prop_assert_eq!(glob(&p, &t), reference(&pc, &tc));
        }

        #[test]
        fn glob_never_panics(p in ".{0,40}", t in ".{0,80}") {
            let _ = glob(&p, &t);
        }

        #[test]
        fn matching_arbitrary_payloads_never_panics(
            payload in any_json(),
            path in "[a-c0-9*.]{0,20}",
            value in any_json(),
            pattern in "[a-c0-9*?./é]{0,8}",
        ) {
            let ev = InboundEvent {
                source: "src".into(),
                event: "e".into(),
                action: None,
                delivery: "d".into(),
                payload,
            };
            // Built directly: stored documents are not always validated ones.
            let filters = vec![
                Filter { field: path.clone(), test: Match::Equals(value.clone()) },
                Filter { field: path.clone(), test: Match::Glob(pattern) },
                Filter { field: path.clone(), test: Match::OneOf(vec![value]) },
                Filter { field: path.clone(), test: Match::Exists(true) },
            ];
            let s = Subscription {
                name: "s".into(),
                description: String::new(),
                source: "src".into(),
                events: vec!["*".into()],
                filters: vec![],
                workflow: "w".into(),
                payload: PayloadSelect::Fields {
                    fields: [("x".to_owned(), path.clone())].into_iter().collect(),
                },
                enabled: true,
                created_at_ms: 0,
                updated_at_ms: 0,
            };
            for f in filters {
                let _ = Subscription { filters: vec![f], ..s.clone() }.matches(&ev);
            }
            // `exists` true and false disagree on every payload and path.
            let exists = |want| Subscription {
                filters: vec![Filter { field: path.clone(), test: Match::Exists(want) }],
                ..s.clone()
            };
            prop_assert_ne!(exists(true).matches(&ev), exists(false).matches(&ev));
            let _ = s.payload(&ev);
        }
    }
}
