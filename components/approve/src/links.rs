//! Signed single-use approval links: minted through the API for a named
//! approver, opened from a chat message or an email.
//!
//! Opening a link (`GET`) decides nothing: it shows the approval and a
//! button, because chat apps and mail scanners fetch links to preview them.
//! Only the `POST` the button sends decides, once.

use serde::Deserialize;
use serde_json::json;
use spin_sdk::http::FullBody;
use spin_sdk::http::Request;
use spindle_auth::Role;
use spindle_core::approval::{ApprovalView, LinkClaims, Verdict};
use spindle_core::problem::ProblemKind;
use spindle_spin::http::{Problem, Response, json, read_body, require_json};
use spindle_spin::store::{Store, StoreExt};

/// Longest an approval link lasts when the caller does not say (it never
/// outlives its approval either).
const DEFAULT_LINK_SECS: u64 = 24 * 3600;
/// Longest a caller may ask for.
const MAX_LINK_SECS: u64 = 7 * 24 * 3600;
/// Failed link uses an address may make a minute.
const FAILED_LINKS_PER_MINUTE: u64 = 30;
/// Longest approver name.
const MAX_APPROVER: usize = 128;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MintBody {
    #[serde(default)]
    approver: Option<String>,
    #[serde(default)]
    expires_in_secs: Option<u64>,
}

fn valid_approver(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_APPROVER
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'.' | b'_' | b'-' | b'@'))
}

/// `POST /approvals/{id}/links` (admin): an approve link and a reject link
/// for one approver: whoever the body names (by default the caller).
pub async fn mint(
    req: Request,
    kv: spindle_spin::store::Kv,
    id: &str,
    caller: &spindle_auth::Caller,
) -> Result<Response, Problem> {
    let declared_json = require_json(&req);
    let body = read_body(req, 4096).await?;
    let b: MintBody = if body.iter().all(u8::is_ascii_whitespace) {
        MintBody::default()
    } else {
        declared_json?;
        serde_json::from_slice(&body).map_err(|e| Problem::not_json(&e))?
    };
    let me = caller.actor();
    let by = b.approver.unwrap_or_else(|| me.clone());
    if !valid_approver(&by) {
        return Err(Problem::invalid(
            "Invalid request body",
            "/approver",
            format!(
                "must be an actor name like key:alice or token:bob (1 to {MAX_APPROVER} of A-Z a-z 0-9 : . _ - @)"
            ),
        ));
    }
    if caller.role != Role::Admin {
        return Err(Problem::of(
            ProblemKind::Forbidden,
            "only an admin may mint approval links",
        ));
    }
    let secs = b.expires_in_secs.unwrap_or(DEFAULT_LINK_SECS);
    if !(60..=MAX_LINK_SECS).contains(&secs) {
        return Err(Problem::invalid(
            "Invalid request body",
            "/expires_in_secs",
            format!("must be between 60 and {MAX_LINK_SECS}"),
        ));
    }
    let engine = spindle_spin::engine::open_on(kv).await?;
    let approval = engine.approval(id).await?.approval;
    let roles = approval.approver_roles;
    let key = match may_approve(&engine.store, &by, None, &roles).await? {
        Ok(key) => key,
        Err(why) => return Err(Problem::at(ProblemKind::Validation, "/approver", why)),
    };
    let base = public_url().await;
    let exp = spindle_spin::now_ms().saturating_add(secs * 1000);
    let mut links = serde_json::Map::new();
    let mut expires_at = exp;
    for verdict in [Verdict::Approve, Verdict::Reject] {
        let nonce = hex::encode(spindle_spin::random::<16>()?);
        let (token, at) = engine
            .approval_link(id, verdict, &by, key.as_deref(), exp, &nonce)
            .await?;
        expires_at = at;
        links.insert(
            verdict.as_str().to_owned(),
            json!({"url": format!("{base}/approvals/link/{token}"), "token": token}),
        );
    }
    // Counted for the metrics: links are bearer credentials, and how many
    // exist is worth seeing.
    engine
        .store
        .increment(&spindle_core::keys::counter("approval_links_minted"), 1)
        .await
        .map_err(Problem::store)?;
    // Audited like every other change: who handed whom a way to decide, until
    // when. Never the links themselves.
    println!(
        "{}",
        json!({
            "audit": {
                "kind": "approval_link_minted",
                "at_ms": spindle_spin::now_ms(),
                "step": approval.step,
                "approval": id,
                "approver": by,
                "expires_at_ms": expires_at,
                "actor": me,
            },
            "run": approval.run_id,
            "workflow": approval.workflow,
            "request_id": spindle_spin::context::request_id(),
        })
    );
    let entry = spindle_core::audit::AuditEntry {
        seq: 0,
        at_ms: spindle_spin::now_ms(),
        kind: "approval_link_minted".into(),
        actor: Some(me.clone()),
        request_id: Some(spindle_spin::context::request_id()),
        run: Some(approval.run_id.clone()),
        workflow: Some(approval.workflow.clone()),
        step: Some(approval.step.clone()),
        summary: format!("approve and reject links for {by} on {id}, until {expires_at}"),
    };
    if let Err(e) = spindle_engine::audit::append(&engine.store, entry).await {
        spindle_spin::context::log(&format!("audit entry not stored: {e}"));
    }
    Ok(json(
        201,
        &json!({
            "approval": id,
            "approver": by,
            "expires_at_ms": expires_at,
            "approve": links["approve"],
            "reject": links["reject"],
        }),
    ))
}

/// Whether `by` may approve under `roles`, and through which API key.
/// An API key's actor (`key:<name>`) needs a working key of that name with
/// one of the roles; once a link is minted it names that key (`key`), and
/// only that key keeps it working, so revoking or downgrading it disables
/// the link even if another key shares the name. The bootstrap admin needs
/// the admin role allowed and its key still configured. A token's subject
/// (`token:<sub>`) comes from an identity provider Spindle cannot ask: the
/// admin who mints the link vouches for it. `Err` says why not.
async fn may_approve(
    store: &spindle_spin::store::Kv,
    by: &str,
    key: Option<&str>,
    roles: &[String],
) -> Result<Result<Option<String>, String>, Problem> {
    let allowed = |role: Role| roles.iter().any(|r| r == role.as_str());
    let Some(name) = by.strip_prefix("key:") else {
        return Ok(if by.starts_with("token:") {
            Ok(None)
        } else {
            Err("must name an API key (key:<name>) or a token subject (token:<sub>)".into())
        });
    };
    if name == spindle_auth::caller::BOOTSTRAP_NAME {
        let configured = spin_sdk::variables::get("admin_key")
            .await
            .is_ok_and(|k| !k.trim().is_empty());
        return Ok(if allowed(Role::Admin) && configured {
            Ok(None)
        } else {
            Err("the bootstrap admin key is not configured, or admins may not approve".into())
        });
    }
    let now = spindle_spin::now_ms();
    let works = |k: &spindle_auth::keys::KeyRecord| {
        k.name == name && k.check(now).is_ok() && allowed(k.role)
    };
    let found = match key {
        Some(id) if spindle_auth::keys::valid_id(id) => store
            .get::<spindle_auth::keys::KeyRecord>(&spindle_auth::keys::record_key(id))
            .await
            .map_err(Problem::store)?
            .filter(|k| works(k)),
        Some(_) => None,
        None => spindle_auth::keys::list(store)
            .await
            .map_err(Problem::store)?
            .into_iter()
            .find(|k| works(k)),
    };
    Ok(match found {
        Some(k) => Ok(Some(k.id)),
        None => Err(format!(
            "no working API key named {name:?} has a role that may approve ({})",
            roles.join(", ")
        )),
    })
}

/// Refuses a link whose approver lost the right since it was minted.
async fn still_approver(
    engine: &spindle_spin::engine::SpinEngine,
    claims: &LinkClaims,
    roles: &[String],
) -> Result<(), Problem> {
    match may_approve(&engine.store, &claims.by, claims.key.as_deref(), roles).await? {
        Ok(_) => Ok(()),
        Err(why) => Err(Problem::of(
            ProblemKind::Forbidden,
            format!("{} may no longer approve: {why}", claims.by),
        )),
    }
}

/// Where links point: the `public_url` variable.
async fn public_url() -> String {
    spin_sdk::variables::get("public_url")
        .await
        .unwrap_or_default()
        .trim()
        .trim_end_matches('/')
        .to_owned()
}

fn wants_html(req: &Request) -> bool {
    req.headers()
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

/// Refuses a bad link, counting it against the sender's address.
async fn refuse(req: &Request, e: spindle_engine::EngineError) -> Problem {
    let kv = spindle_spin::store::Kv::open("default").await.ok();
    if let Some(kv) = &kv
        && let Some(limited) = spindle_spin::auth::charge_address(
            spindle_spin::auth::client_addr(req).as_deref(),
            kv,
            FAILED_LINKS_PER_MINUTE,
            "bad approval links",
            spindle_spin::now_ms(),
        )
        .await
    {
        return limited;
    }
    e.into()
}

/// `GET /approvals/link/{token}`: what the link would do, and (for a
/// browser) a page with the button that does it.
pub async fn show(req: &Request, token: &str) -> Result<Response, Problem> {
    let engine = spindle_spin::engine::open().await?;
    let claims = match engine.read_link(token) {
        Ok(c) => c,
        Err(e) => return Err(refuse(req, e).await),
    };
    let mut view = engine.approval(&claims.approval).await?;
    still_approver(&engine, &claims, &view.approval.approver_roles).await?;
    // The preview is what a link shows; the full input stays behind the API.
    view.approval.input = serde_json::Value::Null;
    if wants_html(req) {
        return Ok(html(200, &confirm_page(&claims, &view, token)));
    }
    Ok(json(
        200,
        &json!({
            "decision": claims.decision,
            "approver": claims.by,
            "expires_at_ms": claims.exp_ms,
            "approval": view,
        }),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct UseBody {
    #[serde(default)]
    comment: String,
}

/// `POST /approvals/link/{token}`: makes the link's decision, once.
pub async fn use_link(req: Request, token: &str) -> Result<Response, Problem> {
    let html_wanted = wants_html(&req);
    let form = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
    // The page's button posts a form; API clients post JSON.
    let declared = if form { Ok(()) } else { require_json(&req) };
    let engine = spindle_spin::engine::open().await?;
    let claims = match engine.read_link(token) {
        Ok(c) => c,
        Err(e) => return Err(refuse(&req, e).await),
    };
    let roles = engine
        .approval(&claims.approval)
        .await?
        .approval
        .approver_roles;
    still_approver(&engine, &claims, &roles).await?;
    let body = read_body(req, 4096).await?;
    let comment = if body.iter().all(u8::is_ascii_whitespace) {
        String::new()
    } else if form {
        url::form_urlencoded::parse(&body)
            .find(|(k, _)| k == "comment")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    } else {
        declared?;
        let b: UseBody = serde_json::from_slice(&body).map_err(|e| Problem::not_json(&e))?;
        b.comment
    };
    crate::check_comment(&comment)?;
    let decided = engine.use_link(token, comment).await?;
    let answer = crate::answer(&decided);
    if html_wanted {
        let message = answer["message"].as_str().unwrap_or("").to_owned();
        return Ok(html(
            200,
            &page("Decision recorded", &format!("<p>{}</p>", escape(&message))),
        ));
    }
    Ok(json(200, &answer))
}

fn confirm_page(claims: &LinkClaims, view: &ApprovalView, token: &str) -> String {
    let a = &view.approval;
    let rules: String = a
        .matched
        .iter()
        .map(|m| {
            format!(
                "<li><b>{}</b> ({}): {}</li>",
                escape(&m.rule),
                m.level.as_str(),
                escape(&m.reason)
            )
        })
        .collect();
    let verb = match claims.decision {
        Verdict::Approve => "Approve",
        Verdict::Reject => "Reject",
    };
    let body = format!(
        "<p>{asked}</p>\
         <p>Risk: <b>{level}</b> (score {score}). Status: <b>{status}</b>. \
         Approvals: {n} of {needed}. You act as <b>{by}</b>.</p>\
         <ul>{rules}</ul>\
         <pre>{preview}</pre>\
         <p>Input sha256: <code>{hash}</code></p>\
         <form method=\"post\" action=\"/approvals/link/{token}\">\
         <label>Comment <input name=\"comment\" maxlength=\"1000\"></label> \
         <button type=\"submit\">{verb}</button></form>",
        asked = escape(&a.asked),
        level = a.level.as_str(),
        score = a.score,
        status = view.status.as_str(),
        n = view.approvals,
        needed = view.approvers_needed,
        by = escape(&claims.by),
        preview = escape(&a.preview),
        hash = escape(&a.input_sha256),
        token = escape(token),
    );
    page(&format!("{verb} step {}", escape(&a.step)), &body)
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · Spindle</title></head><body><h1>{title}</h1>{body}</body></html>"
    )
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An HTML answer with a strict policy: no scripts, no outside anything,
/// forms only to this app, never framed.
fn html(status: u16, body: &str) -> Response {
    ::http::Response::builder()
        .status(status)
        .header("content-type", "text/html; charset=utf-8")
        .header(
            "content-security-policy",
            "default-src 'none'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        )
        .header("referrer-policy", "no-referrer")
        .header("cache-control", "no-store")
        .header("x-content-type-options", "nosniff")
        .body(FullBody::new(bytes::Bytes::from(body.to_owned())))
        .expect("valid response")
}
