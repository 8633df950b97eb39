//! `/approvals`: list and read approvals, decide them, and mint and use
//! signed single-use approval links.
//!
//! Thin by design: authenticate, parse, call the engine, answer. Who may
//! decide beyond the route's role (the policy's approver roles,
//! self-approval, one decision per approver) is the engine's and the run's.

mod links;

use serde::Deserialize;
use serde_json::json;
use spin_sdk::http::{Method, Request};
use spin_sdk::http_service;
use spindle_auth::{Class, Role};
use spindle_core::approval::{ApprovalStatus, MAX_COMMENT, Verdict};
use spindle_core::risk::Level;
use spindle_engine::{ApprovalFilter, Decided, DecisionRequest};
use spindle_spin::http::{
    Problem, Response, bad_query, json, page_cursor, page_limit, read_body, require_json,
};

/// Default and largest page size.
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;
/// Largest decision body.
const MAX_BODY: usize = 16 * 1024;

#[http_service]
async fn handle(req: Request) -> Response {
    spindle_spin::serve("approve", req, route).await
}

async fn route(req: Request) -> Result<Response, Problem> {
    let path = spindle_spin::http::path_info(&req);
    let segs = spindle_spin::http::segments(&path);
    let method = req.method().clone();
    // A link is its own credential: nothing else is asked of its holder.
    if let ["link", token] = segs.as_slice() {
        let token = (*token).to_owned();
        return match method {
            Method::GET => links::show(&req, &token).await,
            Method::POST => links::use_link(req, &token).await,
            _ => Err(Problem::method_not_allowed("GET, POST")),
        };
    }
    let (need, class) = match (&method, segs.as_slice()) {
        (&Method::GET, _) => (Role::Viewer, Class::Read),
        // A link is a bearer credential for someone else: an admin's to
        // hand out.
        (_, [_, "links"]) => (Role::Admin, Class::Write),
        _ => (Role::Approver, Class::Write),
    };
    let kv = spindle_spin::store::Kv::open("default")
        .await
        .map_err(Problem::store)?;
    let caller = spindle_spin::auth::authorize(&req, &kv, need, class).await?;
    match (method, segs.as_slice()) {
        (Method::GET, []) => list(&req).await,
        (_, []) => Err(Problem::method_not_allowed("GET")),
        (Method::GET, [id]) => {
            let engine = spindle_spin::engine::open_on(kv).await?;
            Ok(json(200, &engine.approval(id).await?))
        }
        (_, [_]) => Err(Problem::method_not_allowed("GET")),
        (Method::POST, [id, "decision"]) => decide(req, kv, id, &caller).await,
        (_, [_, "decision"]) => Err(Problem::method_not_allowed("POST")),
        (Method::POST, [id, "links"]) => links::mint(req, kv, id, &caller).await,
        (_, [_, "links"]) => Err(Problem::method_not_allowed("POST")),
        _ => Err(Problem::not_found(format!("no route {path}"))),
    }
}

fn parse_filter(query: &str) -> Result<ApprovalFilter, Problem> {
    let mut f = ApprovalFilter {
        limit: DEFAULT_LIMIT,
        ..ApprovalFilter::default()
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "status" => {
                f.status = Some(ApprovalStatus::parse(v).ok_or_else(|| {
                    let names: Vec<&str> = ApprovalStatus::ALL.iter().map(|s| s.as_str()).collect();
                    bad_query(k, format!("must be one of {}", names.join(", ")))
                })?);
            }
            "level" => {
                f.level = Some(
                    Level::ALL
                        .into_iter()
                        .find(|l| l.as_str() == v)
                        .ok_or_else(|| {
                            bad_query(k, "must be one of low, medium, high, critical")
                        })?,
                );
            }
            "run" => {
                if !spindle_core::ids::valid_run_id(v) {
                    return Err(bad_query(k, "must be a run id"));
                }
                f.run = Some(v.to_owned());
            }
            "workflow" => {
                spindle_core::agent::check_name(v).map_err(|e| bad_query(k, e))?;
                f.workflow = Some(v.to_owned());
            }
            "limit" => f.limit = page_limit(v, MAX_LIMIT)?,
            "cursor" => f.cursor = Some(page_cursor(v)?),
            other => {
                return Err(bad_query(
                    other,
                    "unknown parameter; use status, run, workflow, level, limit, cursor",
                ));
            }
        }
    }
    Ok(f)
}

async fn list(req: &Request) -> Result<Response, Problem> {
    let f = parse_filter(req.uri().query().unwrap_or(""))?;
    let engine = spindle_spin::engine::open().await?;
    let page = engine.list_approvals(&f).await?;
    Ok(json(
        200,
        &json!({"approvals": page.approvals, "next_cursor": page.next_cursor}),
    ))
}

/// A decision's body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    decision: String,
    #[serde(default)]
    comment: String,
    #[serde(default)]
    input_sha256: Option<String>,
}

/// Parses a decision body: every field checked, each fault named by its
/// pointer.
fn parse_decision(body: &[u8]) -> Result<(Verdict, String, Option<String>), Problem> {
    let b: DecisionBody = serde_json::from_slice(body).map_err(|e| Problem::not_json(&e))?;
    let decision = Verdict::parse(&b.decision).ok_or_else(|| {
        Problem::invalid(
            "Invalid request body",
            "/decision",
            "must be \"approve\" or \"reject\"",
        )
    })?;
    check_comment(&b.comment)?;
    if let Some(h) = &b.input_sha256
        && (h.len() != 64 || !h.bytes().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(Problem::invalid(
            "Invalid request body",
            "/input_sha256",
            "must be 64 hex digits: the input_sha256 of the approval",
        ));
    }
    Ok((
        decision,
        b.comment,
        b.input_sha256.map(|h| h.to_ascii_lowercase()),
    ))
}

pub(crate) fn check_comment(comment: &str) -> Result<(), Problem> {
    if comment.len() > MAX_COMMENT || comment.chars().any(|c| c.is_control() && c != '\n') {
        return Err(Problem::invalid(
            "Invalid request body",
            "/comment",
            format!("must be at most {MAX_COMMENT} bytes, without control characters"),
        ));
    }
    Ok(())
}

async fn decide(
    req: Request,
    kv: spindle_spin::store::Kv,
    id: &str,
    caller: &spindle_auth::Caller,
) -> Result<Response, Problem> {
    require_json(&req)?;
    let body = read_body(req, MAX_BODY).await?;
    let (decision, comment, input_sha256) = parse_decision(&body)?;
    let engine = spindle_spin::engine::open_on(kv).await?;
    let decided = engine
        .decide(
            id,
            DecisionRequest {
                decision,
                by: caller.actor(),
                role: Some(caller.role.as_str().to_owned()),
                comment,
                input_sha256,
                via_link: false,
            },
        )
        .await?;
    Ok(json(200, &answer(&decided)))
}

/// What a decision answers: what happened, in words and as data.
pub(crate) fn answer(d: &Decided) -> serde_json::Value {
    let message = match d.result {
        spindle_engine::DecisionResult::ApprovedAndDispatched => {
            "approved; the step was dispatched".to_owned()
        }
        spindle_engine::DecisionResult::WaitingForApprovers => format!(
            "approval recorded; waiting for {} more approver(s)",
            d.remaining
        ),
        spindle_engine::DecisionResult::Rejected => {
            "rejected; the step failed and the run with it".to_owned()
        }
        spindle_engine::DecisionResult::ApprovedNotDispatched => {
            "approved, but the step could not be dispatched; see the run".to_owned()
        }
    };
    json!({
        "result": d.result,
        "message": message,
        "remaining": d.remaining,
        "approval": d.approval,
    })
}
