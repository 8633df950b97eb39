//! `/api/policies/approvals`: the approval policy (risk rules, and per level
//! how long an approval waits, how many approvers it needs and what expiry
//! does). Absent, the shipped default applies; `DELETE` goes back to it.

use spin_sdk::http::Request;
use spindle_core::keys;
use spindle_core::risk::ApprovalPolicy;
use spindle_spin::http::{Problem, Response, json, no_content, read_body, require_json};
use spindle_spin::store::{Kv, Store, StoreExt};

/// Largest policy document.
const MAX_BODY: usize = 512 * 1024;

/// The policy in force, and whether it is the shipped default.
pub async fn get(kv: &Kv) -> Result<Response, Problem> {
    let stored: Option<ApprovalPolicy> = kv
        .get(keys::APPROVAL_POLICY)
        .await
        .map_err(Problem::store)?;
    let default = stored.is_none();
    let mut doc = serde_json::to_value(stored.unwrap_or_default()).unwrap_or_default();
    doc["default"] = serde_json::Value::Bool(default);
    Ok(json(200, &doc))
}

/// Replaces the policy; applies to steps assessed from now on.
pub async fn put(kv: &Kv, req: Request) -> Result<Response, Problem> {
    require_json(&req)?;
    let body = read_body(req, MAX_BODY).await?;
    let policy = ApprovalPolicy::parse(&body).map_err(Problem::validation)?;
    kv.set(keys::APPROVAL_POLICY, &policy)
        .await
        .map_err(Problem::store)?;
    get(kv).await
}

/// Goes back to the shipped default.
pub async fn reset(kv: &Kv) -> Result<Response, Problem> {
    kv.delete(keys::APPROVAL_POLICY)
        .await
        .map_err(Problem::store)?;
    Ok(no_content())
}
