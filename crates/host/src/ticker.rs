//! The host's clock for the application: serverless components have no
//! background threads, so the host POSTs the application's tick route at a
//! fixed interval, the way a cron trigger or an external scheduler would
//! under Spin. The request goes through the router like any other, with
//! `Authorization: Bearer <tick_secret>` from the application's variables.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;

use crate::runtime::{Origin, Runtime, full_body};

/// The variable holding the tick route's bearer secret.
pub const SECRET_VARIABLE: &str = "tick_secret";

/// Whether the application can be ticked: a route serves `path` and the
/// secret variable is defined. The reason when not.
pub fn check(rt: &Runtime, path: &str) -> Result<(), String> {
    if rt.app().router.route(path).is_none() {
        return Err(format!("no route serves {path}"));
    }
    if rt.app().variables.get(SECRET_VARIABLE).is_none() {
        return Err(format!(
            "the application defines no {SECRET_VARIABLE} variable"
        ));
    }
    Ok(())
}

/// Ticks until shutdown begins. Failures are logged, once per change of
/// outcome, so a broken tick does not flood the log every second.
pub async fn run(rt: Arc<Runtime>, path: String, every: Duration) {
    let secret = rt
        .app()
        .variables
        .get(SECRET_VARIABLE)
        .unwrap_or_default()
        .to_owned();
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_ok = true;
    let shutdown = rt.shutting_down();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            // A tick in flight is not cut: its instance finishes it.
            _ = &mut shutdown => return,
        }
        let req = http::Request::post(format!("http://localhost{path}"))
            .header("authorization", format!("Bearer {secret}"))
            .body(full_body(""))
            .expect("static request");
        let outcome = match rt.handle(req, Origin::Internal).await {
            Ok(Some((_, _, resp))) => {
                let status = resp.status();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                if status.is_success() {
                    tracing::debug!(target: "spindle::tick", body = %String::from_utf8_lossy(&body), "tick");
                    Ok(())
                } else {
                    Err(format!("{status}: {}", String::from_utf8_lossy(&body)))
                }
            }
            Ok(None) => Err(format!("no route serves {path}")),
            Err(e) => Err(format!("{e:#}")),
        };
        match outcome {
            Ok(()) if !last_ok => {
                tracing::info!(target: "spindle::tick", "tick recovered");
                last_ok = true;
            }
            Err(e) if last_ok => {
                tracing::warn!(target: "spindle::tick", error = %e, "tick failed");
                last_ok = false;
            }
            _ => {}
        }
    }
}
