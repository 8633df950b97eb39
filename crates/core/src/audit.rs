//! The audit trail: an append-only stream of everything that changed
//! state (runs and their steps, approvals, the registry, keys, policies),
//! each entry with its actor, request id, time and a summary.
//!
//! Entries are numbered by an atomic counter and stored one document each
//! under their number, so appending is an increment and a plain write, and
//! the stream is read newest first by walking numbers down. Queries filter
//! while they walk, examining a bounded number of entries per page (a page
//! may come back short with a cursor to go on from). The tick removes
//! entries older than the retention period from the oldest end.

use serde::{Deserialize, Serialize};

/// Most entries one query examines before it answers (with a cursor).
pub const MAX_EXAMINED: u64 = 2_000;

/// Largest page.
pub const MAX_LIMIT: usize = 200;

/// Longest summary kept.
pub const MAX_SUMMARY_BYTES: usize = 1_024;

/// How far out of time order two entries may be stored (their numbers are
/// taken a moment before their clocks are read, on several instances).
pub const CLOCK_SLACK_MS: u64 = 60_000;

/// The counter numbering entries: its value is the newest entry's number.
pub const HEAD: &str = "counter:audit";

/// The oldest entry not yet removed by retention.
pub const LOW: &str = "audit:low";

/// Entry number `seq`.
pub fn entry_key(seq: u64) -> String {
    format!("audit:e:{seq}")
}

/// The number of the first entry written on day `day` (days since the
/// Unix epoch), for queries that start in the past.
pub fn day_key(day: u64) -> String {
    format!("audit:day:{day}")
}

/// One entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Its number in the stream.
    pub seq: u64,
    /// When, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What happened, e.g. `step_approved`, `agent_created`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Who caused it (`key:ci`, `token:alice`); none for what the engine
    /// did on its own (a timer, a worker's result).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The request it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The run it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// The run's workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// The step (or fan-out item) it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// What happened, in words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub summary: String,
}

impl AuditEntry {
    /// Cuts the summary to [`MAX_SUMMARY_BYTES`] (on a character
    /// boundary), so no entry grows with what it describes.
    pub fn bounded(mut self) -> Self {
        if self.summary.len() > MAX_SUMMARY_BYTES {
            let mut end = MAX_SUMMARY_BYTES;
            while !self.summary.is_char_boundary(end) {
                end -= 1;
            }
            self.summary.truncate(end);
            self.summary.push('…');
        }
        self
    }
}

/// What a query asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Entries at or after this time.
    pub since_ms: Option<u64>,
    /// Entries before this time.
    pub until_ms: Option<u64>,
    /// Only this actor's.
    pub actor: Option<String>,
    /// Only this run's.
    pub run: Option<String>,
    /// Only this type.
    pub kind: Option<String>,
    /// Page size (1 to [`MAX_LIMIT`]).
    pub limit: usize,
    /// Go on below this entry number (a page's `next_cursor`).
    pub before: Option<u64>,
}

impl AuditFilter {
    /// Whether `e` is asked for.
    pub fn matches(&self, e: &AuditEntry) -> bool {
        self.since_ms.is_none_or(|t| e.at_ms >= t)
            && self.until_ms.is_none_or(|t| e.at_ms < t)
            && self
                .actor
                .as_deref()
                .is_none_or(|a| e.actor.as_deref() == Some(a))
            && self
                .run
                .as_deref()
                .is_none_or(|r| e.run.as_deref() == Some(r))
            && self.kind.as_deref().is_none_or(|k| e.kind == k)
    }

    /// Whether walking further down (older) can still find a match: not
    /// once entries are well before `since`.
    pub fn may_go_on(&self, e: &AuditEntry) -> bool {
        self.since_ms
            .is_none_or(|t| e.at_ms.saturating_add(CLOCK_SLACK_MS) >= t)
    }
}

/// A page of entries, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditPage {
    /// The entries.
    pub entries: Vec<AuditEntry>,
    /// Where the next page starts, if older entries may match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// How many entries were examined for this page.
    pub examined: u64,
}

/// The entry type of a change made through the API, from its method and
/// path below `/api` (`agent_created`, `schedule_paused`, `key_revoked`,
/// ...).
pub fn api_change_kind(method: &str, segs: &[&str]) -> String {
    let thing = |plural: &str| match plural {
        "agents" => "agent",
        "workflows" => "workflow",
        "sources" => "source",
        "subscriptions" => "subscription",
        "schedules" => "schedule",
        "keys" => "key",
        "runs" => "run",
        "policies" => "policy",
        _ => "resource",
    };
    match (method, segs) {
        (_, ["schedules", _, "pause"]) => "schedule_paused".into(),
        (_, ["schedules", _, "resume"]) => "schedule_resumed".into(),
        (_, ["runs", _, "cancel"]) => "run_cancel_requested".into(),
        (_, ["runs", _, "rerun"]) => "run_rerun_requested".into(),
        ("PUT", ["policies", "approvals"]) => "approval_policy_updated".into(),
        ("DELETE", ["policies", "approvals"]) => "approval_policy_reset".into(),
        ("DELETE", ["keys", _]) => "key_revoked".into(),
        ("POST", [plural]) => format!("{}_created", thing(plural)),
        ("PUT", [plural, _]) => format!("{}_updated", thing(plural)),
        ("DELETE", [plural, _]) => format!("{}_deleted", thing(plural)),
        (m, [plural, ..]) => format!("{}_{}", thing(plural), m.to_ascii_lowercase()),
        (m, []) => format!("api_{}", m.to_ascii_lowercase()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, at_ms: u64) -> AuditEntry {
        AuditEntry {
            seq,
            at_ms,
            kind: "step_succeeded".into(),
            actor: Some("key:ci".into()),
            request_id: None,
            run: Some("r1-1".into()),
            workflow: Some("wf".into()),
            step: Some("a".into()),
            summary: String::new(),
        }
    }

    #[test]
    fn filters_match_every_field_they_name() {
        let e = entry(1, 1_000);
        assert!(AuditFilter::default().matches(&e));
        let f = |g: fn(&mut AuditFilter)| {
            let mut f = AuditFilter::default();
            g(&mut f);
            f.matches(&e)
        };
        assert!(f(|f| f.since_ms = Some(1_000)));
        assert!(!f(|f| f.since_ms = Some(1_001)));
        assert!(f(|f| f.until_ms = Some(1_001)));
        assert!(!f(|f| f.until_ms = Some(1_000)));
        assert!(f(|f| f.actor = Some("key:ci".into())));
        assert!(!f(|f| f.actor = Some("key:other".into())));
        assert!(f(|f| f.run = Some("r1-1".into())));
        assert!(!f(|f| f.run = Some("r1-2".into())));
        assert!(f(|f| f.kind = Some("step_succeeded".into())));
        assert!(!f(|f| f.kind = Some("step_failed".into())));
    }

    #[test]
    fn a_walk_goes_on_within_the_clock_slack_of_since() {
        let f = AuditFilter {
            since_ms: Some(100_000),
            ..Default::default()
        };
        assert!(f.may_go_on(&entry(1, 100_000 - CLOCK_SLACK_MS)));
        assert!(!f.may_go_on(&entry(1, 100_000 - CLOCK_SLACK_MS - 1)));
        assert!(AuditFilter::default().may_go_on(&entry(1, 0)));
    }

    #[test]
    fn api_changes_are_named_by_resource_and_verb() {
        let cases: &[(&str, &[&str], &str)] = &[
            ("POST", &["agents"], "agent_created"),
            ("PUT", &["workflows", "x"], "workflow_updated"),
            ("DELETE", &["sources", "x"], "source_deleted"),
            ("POST", &["schedules", "x", "pause"], "schedule_paused"),
            ("POST", &["schedules", "x", "resume"], "schedule_resumed"),
            ("POST", &["runs", "r1", "cancel"], "run_cancel_requested"),
            ("POST", &["runs", "r1", "rerun"], "run_rerun_requested"),
            ("POST", &["keys"], "key_created"),
            ("DELETE", &["keys", "k1"], "key_revoked"),
            ("PUT", &["policies", "approvals"], "approval_policy_updated"),
            (
                "DELETE",
                &["policies", "approvals"],
                "approval_policy_reset",
            ),
            ("PATCH", &["nothing"], "resource_patch"),
        ];
        for (m, segs, want) in cases {
            assert_eq!(api_change_kind(m, segs), *want, "{m} {segs:?}");
        }
    }

    #[test]
    fn summaries_are_bounded_on_a_character_boundary() {
        let mut e = entry(1, 0);
        e.summary = "é".repeat(1_000);
        let e = e.bounded();
        assert!(e.summary.len() <= MAX_SUMMARY_BYTES + '…'.len_utf8());
        assert!(e.summary.ends_with('…'));
    }
}
