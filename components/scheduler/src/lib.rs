//! `POST /internal/tick`: fires the timers that are due (retries after
//! backoff, lease checks, run deadlines, runs whose creator did not start
//! them). Serverless components have no background threads, so something
//! outside calls this: the local host every second, or under Spin a cron
//! trigger or any scheduler. It requires `Authorization: Bearer <tick_secret>`.

use spin_sdk::http::{Method, Request};
use spin_sdk::http_service;
use spindle_core::problem::ProblemKind;
use spindle_core::sign::secrets_equal;
use spindle_spin::http::{Problem, Response, json};

#[http_service]
async fn handle(req: Request) -> Response {
    spindle_spin::serve("scheduler", req, route).await
}

async fn route(req: Request) -> Result<Response, Problem> {
    if req.uri().path() != "/internal/tick" {
        return Err(Problem::not_found(format!(
            "no scheduler endpoint at {}",
            req.uri().path()
        )));
    }
    if req.method() != Method::POST {
        return Err(Problem::method_not_allowed("POST"));
    }
    let expected = spin_sdk::variables::get("tick_secret")
        .await
        .ok()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            spindle_spin::context::log("configuration: variable tick_secret is not set");
            Problem::of(
                ProblemKind::Configuration,
                "variable tick_secret is not set",
            )
        })?;
    // Under Spin nothing checked the secret at start-up: a weak one would
    // let anyone drive the timers.
    if let Err(e) = spindle_core::secret::check_secret(&expected) {
        spindle_spin::context::log(&format!("configuration: variable tick_secret {e}"));
        return Err(Problem::of(
            ProblemKind::Configuration,
            "the tick secret is not usable; see the component's log",
        ));
    }
    let given = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !secrets_equal(given, &expected) {
        return Err(Problem::of(
            ProblemKind::Unauthorized,
            "send Authorization: Bearer <tick_secret>",
        ));
    }
    let engine = spindle_spin::engine::open().await?;
    let report = engine.tick().await?;
    let mut body = serde_json::to_value(&report).unwrap_or_default();
    // Expired rate-limit counters go on the same clock; a failure here is
    // retried next tick and must not hide the timers' report.
    let swept = match spindle_auth::ratelimit::sweep(&engine.store, spindle_spin::now_ms()).await {
        Ok(n) => n,
        Err(e) => {
            spindle_spin::context::log(&format!("rate-limit sweep failed: {e}"));
            0
        }
    };
    body["rate_limit_counters_swept"] = serde_json::json!(swept);
    Ok(json(200, &body))
}
