//! `/api/keys`: API keys (admin only). A new key is shown once, in the
//! answer to its creation; the store keeps only its hash.

use serde_json::json as j;
use spin_sdk::http::Request;
use spindle_auth::keys::{self, KeyRequest};
use spindle_spin::http::{DEFAULT_MAX_BODY, Problem, Response, json, read_body, require_json};

use crate::store;

/// Largest key-creation body: a name, a role and a number.
const MAX_BODY: usize = 4 << 10;

pub async fn create(req: Request) -> Result<Response, Problem> {
    require_json(&req)?;
    let body = read_body(req, MAX_BODY.min(DEFAULT_MAX_BODY)).await?;
    let (name, role, days) = KeyRequest::parse(&body).map_err(Problem::validation)?;
    let now = spindle_spin::now_ms();
    let expires_ms = days.map(|d| now.saturating_add(d.saturating_mul(86_400_000)));
    let random = spindle_spin::random::<{ keys::RANDOM_BYTES }>()?;
    let actor = spindle_spin::context::actor().unwrap_or_default();
    let (key, record) = keys::generate(&random, &name, role, expires_ms, &actor, now);
    let kv = store().await?;
    keys::create(&kv, &record).await.map_err(Problem::store)?;
    let mut body = record.public(now);
    body["key"] = j!(key);
    body["url"] = j!(format!("/api/keys/{}", record.id));
    let mut resp = json(201, &body);
    if let Ok(loc) = format!("/api/keys/{}", record.id).parse() {
        resp.headers_mut().insert("location", loc);
    }
    Ok(resp)
}

pub async fn list() -> Result<Response, Problem> {
    let kv = store().await?;
    let now = spindle_spin::now_ms();
    let items: Vec<_> = keys::list(&kv)
        .await
        .map_err(Problem::store)?
        .iter()
        .map(|r| r.public(now))
        .collect();
    Ok(json(200, &j!({ "items": items })))
}

fn check_id(id: &str) -> Result<(), Problem> {
    if keys::valid_id(id) {
        Ok(())
    } else {
        Err(Problem::invalid(
            "Invalid key id",
            "/path/id",
            "must be the 16 hex digits of a key id",
        ))
    }
}

pub async fn get(id: &str) -> Result<Response, Problem> {
    check_id(id)?;
    let kv = store().await?;
    use spindle_spin::store::StoreExt;
    let rec: keys::KeyRecord = kv
        .get(&keys::record_key(id))
        .await
        .map_err(Problem::store)?
        .ok_or_else(|| Problem::not_found(format!("no API key with id {id}")))?;
    Ok(json(200, &rec.public(spindle_spin::now_ms())))
}

/// Revokes a key: it stops working at once and stays listed as revoked.
pub async fn revoke(id: &str) -> Result<Response, Problem> {
    check_id(id)?;
    let kv = store().await?;
    let now = spindle_spin::now_ms();
    let rec = keys::revoke(&kv, id, now)
        .await
        .map_err(Problem::store)?
        .ok_or_else(|| Problem::not_found(format!("no API key with id {id}")))?;
    Ok(json(200, &rec.public(now)))
}
