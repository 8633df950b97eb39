//! Approvals: what a gated step asks of humans, their decisions, and the
//! signed links that carry a decision to an approver outside the API.
//!
//! The run document is the source of truth. A step's [`Gate`] (in its
//! [`crate::run::StepState`]) holds the assessment's verdict, the decisions
//! so far and the outcome, and every decision is a transition of the run:
//! approval, rejection and expiry all go through the run's
//! compare-and-swap, so exactly one of them ends the wait however they race,
//! and the approved step's job is then claimed by increment like any other.
//! A claim taken outside the run (an increment per approval) would add a
//! second place to decide and strand the run if its holder died between
//! claiming and recording.
//!
//! The [`Approval`] document beside the run holds what does not change and
//! is too big for the run: the rendered input, its preview and the matched
//! rules. Views ([`ApprovalView`]) join the two, taking everything that
//! moves from the run.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

use crate::risk::{Level, LevelPolicy, Matched, OnExpiry};
use crate::run::{Run, StepStatus};

/// Longest comment kept with a decision.
pub const MAX_COMMENT: usize = 1_000;
/// Longest preview kept in an approval document.
pub const MAX_PREVIEW: usize = 16 * 1024;

/// A decision's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Let the step run.
    Approve,
    /// Refuse it: the step fails.
    Reject,
}

impl Verdict {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Reject => "reject",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Approve, Self::Reject]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// One approver's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Who (`key:alice`, `token:bob`).
    pub by: String,
    /// What.
    pub decision: Verdict,
    /// When.
    pub at_ms: u64,
    /// Why, in the approver's words.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub comment: String,
    /// Whether it came through a signed link rather than the API.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub via_link: bool,
}

/// How a gate ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Low risk on an `auto` agent: dispatched without asking anyone.
    AutoApproved,
    /// Enough approvers approved.
    Approved,
    /// An approver rejected it.
    Rejected,
    /// Nobody decided in time; the policy's on-expiry action was taken.
    Expired,
    /// The run ended (cancelled, timed out, another step failed) while it
    /// waited.
    Cancelled,
}

/// Where an approval stands, as listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    /// Waiting for decisions.
    Pending,
    /// Approved; the step was dispatched.
    Approved,
    /// Rejected; the step failed.
    Rejected,
    /// Expired before enough approvers decided.
    Expired,
    /// The run ended while it waited.
    Cancelled,
}

impl ApprovalStatus {
    /// Every status.
    pub const ALL: [Self; 5] = [
        Self::Pending,
        Self::Approved,
        Self::Rejected,
        Self::Expired,
        Self::Cancelled,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// What the engine learned assessing a step, delivered to the run as
/// [`crate::run::Event::Gated`]. The run turns it into the step's [`Gate`],
/// taking times from its own clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateRequest {
    /// The assessed level.
    pub level: Level,
    /// The score behind it.
    pub score: u32,
    /// Ids of the rules that matched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matched: Vec<String>,
    /// How many rules were checked.
    pub rules_checked: usize,
    /// SHA-256 (hex) of the rendered input: the only input the step may
    /// be dispatched with.
    pub input_sha256: String,
    /// `None`: dispatch at once (low risk on an `auto` agent). Otherwise
    /// the approval document already written, and its listing slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalRef>,
    /// The policy for the level.
    pub policy: LevelPolicy,
    /// Whether the run's requester may approve it.
    #[serde(default)]
    pub allow_self_approval: bool,
}

/// An approval document and its listing pointer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRef {
    /// The approval's id.
    pub id: String,
    /// Its place in the listing (`approvals:seq:<seq>`).
    pub seq: u64,
}

/// A step's gate: the verdict of its risk assessment and, when it needed
/// approval, the decisions so far and how the wait ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gate {
    /// The assessed level.
    pub level: Level,
    /// The score behind it.
    pub score: u32,
    /// Ids of the rules that matched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matched: Vec<String>,
    /// How many rules were checked.
    pub rules_checked: usize,
    /// SHA-256 (hex) of the approved input.
    pub input_sha256: String,
    /// The approval, when one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalRef>,
    /// Approvals needed.
    #[serde(default)]
    pub needed: u8,
    /// Who started the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// Whether the requester may approve.
    #[serde(default)]
    pub allow_self_approval: bool,
    /// When the wait ends unless decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// What expiry does.
    #[serde(default)]
    pub on_expiry: OnExpiry,
    /// Decisions so far, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decisions: Vec<Decision>,
    /// How it ended, once it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at_ms: Option<u64>,
    /// When it was assessed (and the approval, if any, asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_at_ms: Option<u64>,
}

impl Gate {
    /// Approvals so far.
    pub fn approvals(&self) -> usize {
        self.decisions
            .iter()
            .filter(|d| d.decision == Verdict::Approve)
            .count()
    }

    /// The listed status of the gate's approval.
    pub fn status(&self) -> ApprovalStatus {
        match self.outcome {
            None => ApprovalStatus::Pending,
            Some(Outcome::Approved | Outcome::AutoApproved) => ApprovalStatus::Approved,
            Some(Outcome::Rejected) => ApprovalStatus::Rejected,
            Some(Outcome::Expired) => ApprovalStatus::Expired,
            Some(Outcome::Cancelled) => ApprovalStatus::Cancelled,
        }
    }
}

/// An approval's id: `<run>.<step>` (neither contains a dot). One per
/// step, so assessing a step twice (a retried assessment) names the same
/// approval.
pub fn approval_id(run_id: &str, step: &str, fallback: u32) -> String {
    // A fallback agent's approval is another question than the primary's:
    // a decision taken on the primary's page must not answer it.
    if fallback == 0 {
        format!("{run_id}.{step}")
    } else {
        format!("{run_id}.{step}.{fallback}")
    }
}

/// The run and unit (a step, or an item of one) an approval id names, if
/// it is well formed.
pub fn parse_approval_id(id: &str) -> Option<(&str, &str)> {
    let mut parts = id.splitn(3, '.');
    let (run, step) = (parts.next()?, parts.next()?);
    let fallback_ok = parts
        .next()
        .is_none_or(|f| f.parse::<u32>().is_ok_and(|n| n > 0 && n.to_string() == f));
    (fallback_ok && crate::ids::valid_run_id(run) && crate::ids::valid_unit(step))
        .then_some((run, step))
}

/// What an approval asks, kept beside the run: the part that never changes
/// and is too big for the run document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    /// `<run>.<step>`.
    pub id: String,
    /// The run.
    pub run_id: String,
    /// Its workflow.
    pub workflow: String,
    /// The step.
    pub step: String,
    /// The agent the step runs.
    pub agent: String,
    /// The agent's version.
    pub agent_version: u32,
    /// What is asked, in a sentence.
    pub asked: String,
    /// The rendered input the step will be dispatched with: kept in a
    /// document of its own (it may be large), filled in when one approval
    /// is read, left out of listings.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub input: Value,
    /// Its SHA-256 (hex).
    pub input_sha256: String,
    /// A preview for humans: the diff or command in the input, else the
    /// input itself, pretty-printed and cut at [`MAX_PREVIEW`].
    pub preview: String,
    /// The assessed level.
    pub level: Level,
    /// The score behind it.
    pub score: u32,
    /// The rules that matched, with their reasons.
    #[serde(default)]
    pub matched: Vec<Matched>,
    /// How many rules were checked.
    pub rules_checked: usize,
    /// Who started the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// Roles that may decide.
    pub approver_roles: Vec<String>,
    /// When it was asked.
    pub created_at_ms: u64,
}

/// An approval as the API shows it: the document joined with the run's gate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApprovalView {
    /// The document.
    #[serde(flatten)]
    pub approval: Approval,
    /// Where it stands.
    pub status: ApprovalStatus,
    /// Approvals needed.
    pub approvers_needed: u8,
    /// Approvals so far.
    pub approvals: usize,
    /// Whether the requester may approve.
    pub allow_self_approval: bool,
    /// Decisions so far.
    pub decisions: Vec<Decision>,
    /// When the wait ends unless decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// What expiry does.
    pub on_expiry: OnExpiry,
    /// When it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_at_ms: Option<u64>,
    /// The step's status now.
    pub step_status: StepStatus,
}

impl ApprovalView {
    /// Joins `approval` with its run as of `now`; `None` if the run's step
    /// holds no gate for it (a document written by an assessment the run
    /// never recorded). An approval past its expiry shows as expired even
    /// before the tick carries the expiry out: no decision is taken then.
    pub fn of(approval: Approval, run: &Run, now_ms: u64) -> Option<Self> {
        let step = run.step(&approval.step)?;
        let gate = step.gate.as_ref()?;
        if gate.approval.as_ref().map(|a| a.id.as_str()) != Some(approval.id.as_str()) {
            return None;
        }
        let status = match gate.status() {
            ApprovalStatus::Pending if gate.expires_at_ms.is_some_and(|at| now_ms >= at) => {
                ApprovalStatus::Expired
            }
            s => s,
        };
        Some(Self {
            status,
            approvers_needed: gate.needed,
            approvals: gate.approvals(),
            allow_self_approval: gate.allow_self_approval,
            decisions: gate.decisions.clone(),
            expires_at_ms: gate.expires_at_ms,
            on_expiry: gate.on_expiry,
            decided_at_ms: gate.decided_at_ms,
            step_status: step.status,
            approval,
        })
    }
}

/// The preview of an input: the first string field that looks like a diff
/// or a command, else the input pretty-printed; at most [`MAX_PREVIEW`]
/// bytes, cut on a character boundary.
pub fn preview(input: &Value) -> String {
    const FIELDS: [&str; 6] = ["diff", "patch", "command", "script", "sql", "body"];
    let found = input.as_object().and_then(|o| {
        FIELDS.iter().find_map(|f| match o.get(*f) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(a)) if a.iter().all(Value::is_string) => Some(
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            _ => None,
        })
    });
    let text = found.unwrap_or_else(|| serde_json::to_string_pretty(input).unwrap_or_default());
    cut(text, MAX_PREVIEW)
}

fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// The SHA-256 (hex) of an input as the engine dispatches it.
pub fn input_digest(input: &Value) -> String {
    crate::sign::digest(&serde_json::to_vec(input).unwrap_or_default())
}

/// What a signed approval link grants: one decision on one approval, by
/// the approver it names, until it expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkClaims {
    /// The approval.
    pub approval: String,
    /// The decision the link makes.
    pub decision: Verdict,
    /// The approver it is recorded as.
    pub by: String,
    /// The id of the API key that made `by` an approver when the link was
    /// minted: the link works while that key does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// When it stops working (ms since the epoch).
    pub exp_ms: u64,
    /// Tells two links with the same fields apart.
    pub nonce: String,
}

/// Why a link is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// Not a link this app signed (malformed, forged, or signed with
    /// another secret).
    #[error("the approval link is not valid")]
    Invalid,
    /// Signed, but past its expiry.
    #[error("the approval link has expired")]
    Expired,
}

/// Domain separation: the link key is derived from the app's secret, so a
/// link's signature can never pass as a job token or a callback signature.
fn link_key(secret: &str) -> Vec<u8> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(b"spindle approval links v1");
    mac.finalize().into_bytes().to_vec()
}

/// Signs `claims` into a link token: `<payload>.<signature>`, both
/// base64url.
pub fn sign_link(secret: &str, claims: &LinkClaims) -> String {
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    let mut mac = Hmac::<Sha256>::new_from_slice(&link_key(secret)).expect("any key length");
    mac.update(payload.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{payload}.{sig}")
}

/// Longest token accepted (a link's claims are small).
const MAX_TOKEN: usize = 2_048;

/// Checks a link token's signature (in constant time) and expiry.
pub fn verify_link(secret: &str, token: &str, now_ms: u64) -> Result<LinkClaims, LinkError> {
    if token.len() > MAX_TOKEN {
        return Err(LinkError::Invalid);
    }
    let (payload, sig) = token.split_once('.').ok_or(LinkError::Invalid)?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| LinkError::Invalid)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&link_key(secret)).expect("any key length");
    mac.update(payload.as_bytes());
    mac.verify_slice(&sig).map_err(|_| LinkError::Invalid)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| LinkError::Invalid)?;
    let claims: LinkClaims = serde_json::from_slice(&bytes).map_err(|_| LinkError::Invalid)?;
    if now_ms >= claims.exp_ms {
        return Err(LinkError::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const SECRET: &str = "an-app-secret-of-at-least-32-bytes!!";

    fn claims() -> LinkClaims {
        LinkClaims {
            approval: "r1-1.patch".into(),
            decision: Verdict::Approve,
            by: "token:alice".into(),
            key: None,
            exp_ms: 10_000,
            nonce: "n1".into(),
        }
    }

    #[test]
    fn a_signed_link_verifies_until_it_expires() {
        let t = sign_link(SECRET, &claims());
        assert_eq!(verify_link(SECRET, &t, 9_999), Ok(claims()));
        assert_eq!(verify_link(SECRET, &t, 10_000), Err(LinkError::Expired));
    }

    #[test]
    fn forged_links_are_invalid() {
        let t = sign_link(SECRET, &claims());
        assert_eq!(
            verify_link("another-secret-of-at-least-32-bytes!", &t, 0),
            Err(LinkError::Invalid)
        );
        // Swapping the decision in the payload breaks the signature.
        let (_, sig) = t.split_once('.').unwrap();
        let other = LinkClaims {
            decision: Verdict::Reject,
            ..claims()
        };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&other).unwrap());
        assert_eq!(
            verify_link(SECRET, &format!("{payload}.{sig}"), 0),
            Err(LinkError::Invalid)
        );
        for bad in ["", ".", "abc", "a.b", &"x".repeat(5000)] {
            assert_eq!(verify_link(SECRET, bad, 0), Err(LinkError::Invalid));
        }
    }

    #[test]
    fn approval_ids_split_into_run_and_step() {
        let id = approval_id("r0000000000001-000001", "patch", 0);
        assert_eq!(
            parse_approval_id(&id),
            Some(("r0000000000001-000001", "patch"))
        );
        let id = approval_id("r0000000000001-000001", "patch_3", 2);
        assert_eq!(id, "r0000000000001-000001.patch_3.2");
        assert_eq!(
            parse_approval_id(&id),
            Some(("r0000000000001-000001", "patch_3"))
        );
        assert_eq!(parse_approval_id("nodot"), None);
        assert_eq!(parse_approval_id("a.b.c"), None);
        assert_eq!(parse_approval_id("a.b.0"), None);
        assert_eq!(parse_approval_id("a.b.01"), None);
        assert_eq!(parse_approval_id("a.b.1.1"), None);
        assert_eq!(parse_approval_id("../x.y"), None);
    }

    #[test]
    fn previews_pick_the_diff_or_command() {
        assert_eq!(preview(&json!({"diff": "+a", "x": 1})), "+a");
        assert_eq!(preview(&json!({"command": ["rm", "-rf", "/"]})), "rm -rf /");
        assert!(preview(&json!({"n": 1})).contains("\"n\": 1"));
        let big = preview(&json!({"diff": "é".repeat(MAX_PREVIEW)}));
        assert!(big.len() <= MAX_PREVIEW + '…'.len_utf8());
    }

    #[test]
    fn wire_names_round_trip() {
        for s in ApprovalStatus::ALL {
            assert_eq!(ApprovalStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), json!(s.as_str()));
        }
        for v in [Verdict::Approve, Verdict::Reject] {
            assert_eq!(Verdict::parse(v.as_str()), Some(v));
            assert_eq!(serde_json::to_value(v).unwrap(), json!(v.as_str()));
        }
        assert_eq!(
            serde_json::to_value(Outcome::AutoApproved).unwrap(),
            json!("auto_approved")
        );
    }

    proptest! {
        #[test]
        fn link_verification_never_panics(token in ".{0,300}", now in any::<u64>()) {
            let _ = verify_link(SECRET, &token, now);
        }

        #[test]
        fn approval_id_parsing_never_panics(id in ".{0,100}") {
            let _ = parse_approval_id(&id);
        }
    }
}
