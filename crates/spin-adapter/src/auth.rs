//! The guard every protected route passes: authenticate the caller, check
//! its role, take the request from its rate-limit budget.

use spin_sdk::http::Request;
use spindle_auth::{AuthConfig, AuthFailure, Caller, Class, Role};
use spindle_core::problem::ProblemKind;

use crate::context;
use crate::http::Problem;
use crate::store::{Kv, Store};

/// Reads the auth settings from the component's variables. A missing or
/// weak secret is a 500 naming the variable (checked on every use, so a
/// deployment with a placeholder never serves a protected route).
pub async fn load_config() -> Result<AuthConfig, Problem> {
    let mut values = std::collections::BTreeMap::new();
    for name in spindle_auth::caller::VARIABLES {
        if let Ok(v) = spin_sdk::variables::get(name).await {
            values.insert(name, v);
        }
    }
    AuthConfig::from_vars(|name| values.get(name).cloned()).map_err(|m| {
        context::log(&format!("configuration: {m}"));
        Problem::of(ProblemKind::Configuration, m)
    })
}

/// Lets the request through if its caller is authenticated, has at least
/// `need`, and has budget left in `class`; records the caller as the
/// request's actor. Otherwise the 401, 403 or 429 to answer.
pub async fn authorize(
    req: &Request,
    kv: &Kv,
    need: Role,
    class: Class,
) -> Result<Caller, Problem> {
    let config = load_config().await?;
    let now = crate::now_ms();
    let header = |name: &str| req.headers().get(name).map(|v| v.as_bytes());
    let caller =
        match spindle_auth::caller::credential(header("authorization"), header("x-api-key")) {
            Err(failure) => return Err(refuse(kv, failure).await),
            Ok(None) => return Err(refuse(kv, AuthFailure::Missing).await),
            Ok(Some(credential)) => match config
                .authenticate(kv, &credential, now)
                .await
                .map_err(Problem::store)?
            {
                Ok(caller) => caller,
                Err(failure) => return Err(refuse(kv, failure).await),
            },
        };
    context::set_actor(caller.actor());
    if !caller.role.allows(need) {
        context::log(&format!(
            "forbidden: {} has {}, the route needs {need}",
            caller.actor(),
            caller.role
        ));
        return Err(Problem::of(
            ProblemKind::Forbidden,
            format!(
                "this request needs the {need} role; {} has {}",
                caller.actor(),
                caller.role
            ),
        ));
    }
    let limit = config.limits.of(class);
    if let Some(decision) = spindle_auth::ratelimit::take(kv, class, &caller.rate_key(), limit, now)
        .await
        .map_err(Problem::store)?
    {
        context::set_rate(decision);
        if !decision.allowed {
            return Err(Problem::of(
                ProblemKind::RateLimited,
                format!(
                    "the {} limit is {} requests a minute; retry in {} s",
                    class.as_str(),
                    decision.limit,
                    decision.retry_after_s()
                ),
            ));
        }
    }
    Ok(caller)
}

/// The 401 for `failure`: the same for every reason; the reason goes to the
/// log and its counter.
async fn refuse(kv: &Kv, failure: AuthFailure) -> Problem {
    context::log(&format!("authentication failed: {failure}"));
    // Counting is best effort: the answer is a 401 either way.
    let _ = kv.increment(&failure.counter(), 1).await;
    Problem::of(
        ProblemKind::Unauthorized,
        "send a valid API key or bearer token: Authorization: Bearer <credential>",
    )
}
