//! `/api/schedules`: cron schedules that start workflows. Each answer shows
//! the schedule's `next_fire_at_ms` (absent while paused) and its counts of
//! fired, missed, skipped and failed fires.

use spin_sdk::http::Request;
use spindle_core::keys;
use spindle_core::schedule::{Schedule, ScheduleSpec};
use spindle_spin::http::{Problem, Response, json, no_content};
use spindle_spin::store::{Kv, StoreExt};

use crate::{check_path_name, load_indexed, read_spec, registry_problem};

pub async fn create(kv: Kv, req: Request) -> Result<Response, Problem> {
    let spec: ScheduleSpec = read_spec(req, None).await?;
    let engine = spindle_spin::engine::open_on(kv).await?;
    let s = engine
        .put_schedule(spec, true)
        .await
        .map_err(registry_problem)?;
    let mut resp = json(201, &s);
    if let Ok(loc) = format!("/api/schedules/{}", s.name).parse() {
        resp.headers_mut().insert("location", loc);
    }
    Ok(resp)
}

pub async fn update(kv: Kv, name: &str, req: Request) -> Result<Response, Problem> {
    check_path_name(name, "schedule")?;
    let spec: ScheduleSpec = read_spec(req, Some(name)).await?;
    let engine = spindle_spin::engine::open_on(kv).await?;
    let s = engine
        .put_schedule(spec, false)
        .await
        .map_err(registry_problem)?;
    Ok(json(200, &s))
}

pub async fn pause(kv: Kv, name: &str, paused: bool) -> Result<Response, Problem> {
    check_path_name(name, "schedule")?;
    let engine = spindle_spin::engine::open_on(kv).await?;
    let s = engine
        .pause_schedule(name, paused)
        .await
        .map_err(registry_problem)?;
    Ok(json(200, &s))
}

pub async fn get(kv: &Kv, name: &str) -> Result<Response, Problem> {
    check_path_name(name, "schedule")?;
    match kv
        .get::<Schedule>(&keys::schedule(name))
        .await
        .map_err(Problem::store)?
    {
        Some(s) => Ok(json(200, &s)),
        None => Err(Problem::not_found(format!("no schedule named {name:?}"))),
    }
}

pub async fn delete(kv: Kv, name: &str) -> Result<Response, Problem> {
    check_path_name(name, "schedule")?;
    let engine = spindle_spin::engine::open_on(kv).await?;
    engine
        .delete_schedule(name)
        .await
        .map_err(registry_problem)?;
    Ok(no_content())
}

pub async fn list(kv: &Kv) -> Result<Response, Problem> {
    let schedules: Vec<Schedule> =
        load_indexed(kv, keys::SCHEDULE_INDEX, |n| Some(keys::schedule(n))).await?;
    Ok(json(200, &serde_json::json!({ "schedules": schedules })))
}
