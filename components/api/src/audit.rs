//! `GET /api/audit`: the audit trail, newest first, filtered by time,
//! actor, run and type; and the entries for changes made through the API.

use spin_sdk::http::Method;
use spindle_core::audit::{AuditEntry, AuditFilter, MAX_LIMIT};
use spindle_spin::http::{Problem, Response, bad_query, json, page_limit};
use spindle_spin::store::Kv;

/// Default page size.
const DEFAULT_LIMIT: usize = 50;

/// Longest actor, run or type a query names.
const MAX_VALUE: usize = 256;

fn parse(query: &str) -> Result<AuditFilter, Problem> {
    let mut f = AuditFilter {
        limit: DEFAULT_LIMIT,
        ..AuditFilter::default()
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, raw) = pair.split_once('=').unwrap_or((pair, ""));
        let v = spindle_core::schema::percent_decode(&raw.replace('+', " "))
            .ok_or_else(|| bad_query(k, "is not valid percent-encoded UTF-8"))?;
        let text = |what: &str| -> Result<String, Problem> {
            if v.is_empty() || v.len() > MAX_VALUE || v.chars().any(char::is_control) {
                return Err(bad_query(
                    k,
                    format!("must be a {what} of 1 to {MAX_VALUE} printable characters"),
                ));
            }
            Ok(v.clone())
        };
        match k {
            "since" | "until" => {
                let ms: u64 = v
                    .parse()
                    .map_err(|_| bad_query(k, "must be milliseconds since the Unix epoch"))?;
                if k == "since" {
                    f.since_ms = Some(ms);
                } else {
                    f.until_ms = Some(ms);
                }
            }
            "actor" => f.actor = Some(text("caller such as key:ci or token:alice")?),
            "run" => {
                if !spindle_core::ids::valid_run_id(&v) {
                    return Err(bad_query(k, "must be a run id such as r1795305600000-1"));
                }
                f.run = Some(v.clone());
            }
            "type" => f.kind = Some(text("type such as step_approved")?),
            "limit" => f.limit = page_limit(&v, MAX_LIMIT)?,
            "cursor" => {
                f.before =
                    Some(v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        bad_query(k, "must be a next_cursor from an earlier page")
                    })?);
            }
            other => {
                return Err(bad_query(
                    other,
                    "unknown parameter; use since, until, actor, run, type, limit, cursor",
                ));
            }
        }
    }
    if let (Some(s), Some(u)) = (f.since_ms, f.until_ms)
        && s >= u
    {
        return Err(bad_query("until", "must be after since"));
    }
    Ok(f)
}

pub async fn list(kv: &Kv, query: &str) -> Result<Response, Problem> {
    let f = parse(query)?;
    let page = spindle_engine::audit::query(kv, &f)
        .await
        .map_err(Problem::store)?;
    Ok(json(200, &page))
}

/// Records a change made through the API: who, what, when, how it ended.
/// Best effort: the change stands whether or not its entry is stored (the
/// component's log line keeps it either way).
pub async fn record(method: &Method, path: &str, status: u16, created: Option<String>) {
    let segs = spindle_spin::http::segments(path);
    let summary = match &created {
        Some(at) => format!(
            "{} /api{path} answered {status}, created {at}",
            method.as_str()
        ),
        None => format!("{} /api{path} answered {status}", method.as_str()),
    };
    let run = match segs.as_slice() {
        ["runs", id, ..] => Some((*id).to_owned()),
        _ => None,
    };
    let entry = AuditEntry {
        seq: 0,
        at_ms: spindle_spin::now_ms(),
        kind: spindle_core::audit::api_change_kind(method.as_str(), &segs),
        actor: spindle_spin::context::actor(),
        request_id: Some(spindle_spin::context::request_id()),
        run,
        workflow: None,
        step: None,
        summary,
    };
    let stored = match Kv::open("default").await {
        Ok(kv) => spindle_engine::audit::append(&kv, entry).await,
        Err(e) => Err(e),
    };
    match stored {
        Ok(spindle_engine::audit::Appended {
            uncounted: Some(e), ..
        }) => spindle_spin::context::log(&format!("activity not counted: {e}")),
        Ok(_) => {}
        Err(e) => spindle_spin::context::log(&format!("audit entry not stored: {e}")),
    }
}
