//! `/api/sources` and `/api/subscriptions`: where webhooks come from and
//! which workflows their events start. Secrets sent with a source are
//! stored for verification and never answered: reads show how many a
//! source has.

use spin_sdk::http::Request;
use spindle_core::keys;
use spindle_core::source::{Source, SourceSpec};
use spindle_core::subscription::{Subscription, SubscriptionSpec};
use spindle_spin::http::{Problem, Response, json, no_content};
use spindle_spin::store::{Kv, StoreExt};

use crate::{check_path_name, load_indexed, read_spec, registry, registry_problem};

fn located(status: u16, value: &impl serde::Serialize, location: String) -> Response {
    let mut resp = json(status, value);
    if let Ok(loc) = location.parse() {
        resp.headers_mut().insert("location", loc);
    }
    resp
}

pub async fn create_source(kv: &Kv, req: Request) -> Result<Response, Problem> {
    let spec: SourceSpec = read_spec(req, None).await?;
    let source = registry(kv)
        .put_source(spec, true)
        .await
        .map_err(registry_problem)?;
    Ok(located(
        201,
        &source.view(),
        format!("/api/sources/{}", source.name),
    ))
}

pub async fn update_source(kv: &Kv, name: &str, req: Request) -> Result<Response, Problem> {
    check_path_name(name, "source")?;
    let spec: SourceSpec = read_spec(req, Some(name)).await?;
    let source = registry(kv)
        .put_source(spec, false)
        .await
        .map_err(registry_problem)?;
    Ok(json(200, &source.view()))
}

pub async fn get_source(kv: &Kv, name: &str) -> Result<Response, Problem> {
    check_path_name(name, "source")?;
    match kv
        .get::<Source>(&keys::source(name))
        .await
        .map_err(Problem::store)?
    {
        Some(s) => Ok(json(200, &s.view())),
        None => Err(Problem::not_found(format!("no source named {name:?}"))),
    }
}

pub async fn delete_source(kv: &Kv, name: &str) -> Result<Response, Problem> {
    check_path_name(name, "source")?;
    registry(kv)
        .delete_source(name)
        .await
        .map_err(registry_problem)?;
    Ok(no_content())
}

pub async fn list_sources(kv: &Kv) -> Result<Response, Problem> {
    let sources: Vec<Source> =
        load_indexed(kv, keys::SOURCE_INDEX, |n| Some(keys::source(n))).await?;
    let views: Vec<_> = sources.iter().map(Source::view).collect();
    Ok(json(200, &serde_json::json!({ "sources": views })))
}

pub async fn create_subscription(kv: &Kv, req: Request) -> Result<Response, Problem> {
    let spec: SubscriptionSpec = read_spec(req, None).await?;
    let sub = registry(kv)
        .put_subscription(spec, true)
        .await
        .map_err(registry_problem)?;
    Ok(located(
        201,
        &sub,
        format!("/api/subscriptions/{}", sub.name),
    ))
}

pub async fn update_subscription(kv: &Kv, name: &str, req: Request) -> Result<Response, Problem> {
    check_path_name(name, "subscription")?;
    let spec: SubscriptionSpec = read_spec(req, Some(name)).await?;
    let sub = registry(kv)
        .put_subscription(spec, false)
        .await
        .map_err(registry_problem)?;
    Ok(json(200, &sub))
}

pub async fn get_subscription(kv: &Kv, name: &str) -> Result<Response, Problem> {
    check_path_name(name, "subscription")?;
    match kv
        .get::<Subscription>(&keys::subscription(name))
        .await
        .map_err(Problem::store)?
    {
        Some(s) => Ok(json(200, &s)),
        None => Err(Problem::not_found(format!(
            "no subscription named {name:?}"
        ))),
    }
}

pub async fn delete_subscription(kv: &Kv, name: &str) -> Result<Response, Problem> {
    check_path_name(name, "subscription")?;
    registry(kv)
        .delete_subscription(name)
        .await
        .map_err(registry_problem)?;
    Ok(no_content())
}

pub async fn list_subscriptions(kv: &Kv) -> Result<Response, Problem> {
    let subs: Vec<Subscription> = load_indexed(kv, keys::SUBSCRIPTION_INDEX, |n| {
        Some(keys::subscription(n))
    })
    .await?;
    Ok(json(200, &serde_json::json!({ "subscriptions": subs })))
}
