//! The guard every protected route passes: authenticate the caller, check
//! its role, take the request from its rate-limit budget.

use spin_sdk::http::Request;
use spindle_auth::{AuthConfig, AuthFailure, Caller, Class, Role};
use spindle_core::problem::ProblemKind;

use crate::context;
use crate::http::Problem;
use crate::store::Kv;

/// Reads the auth settings from the component's variables. A missing or
/// weak secret is a 500 `configuration` problem (checked on every use, so a
/// deployment with a placeholder never serves a protected route) that does
/// not say which variable is wrong; the component's log does.
pub async fn load_config() -> Result<AuthConfig, Problem> {
    let mut values = std::collections::BTreeMap::new();
    for name in spindle_auth::caller::VARIABLES {
        if let Ok(v) = spin_sdk::variables::get(name).await {
            values.insert(name, v);
        }
    }
    AuthConfig::from_vars(|name| values.get(name).cloned()).map_err(|m| {
        // The specifics (which variable, how short) go to the log only:
        // this answer reaches callers who are not authenticated.
        context::log(&format!("configuration: {m}"));
        Problem::of(
            ProblemKind::Configuration,
            "the app's access settings are invalid; the component's log says which",
        )
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
    let failure =
        match spindle_auth::caller::credential(header("authorization"), header("x-api-key")) {
            Err(failure) => failure,
            Ok(None) => AuthFailure::Missing,
            Ok(Some(credential)) => match config
                .authenticate(kv, &credential, now)
                .await
                .map_err(Problem::store)?
            {
                Ok(caller) => return admit(kv, &config, caller, need, class, now).await,
                Err(failure) => failure,
            },
        };
    Err(refuse(req, kv, &config, failure, now).await)
}

/// Checks an authenticated caller's role and takes the request from its
/// budget.
async fn admit(
    kv: &Kv,
    config: &AuthConfig,
    caller: Caller,
    need: Role,
    class: Class,
    now: u64,
) -> Result<Caller, Problem> {
    context::set_actor(caller.actor());
    // The budget first: a caller sending requests its role does not allow
    // spends its budget like any other (each costs the app a lookup).
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
    Ok(caller)
}

/// The 401 for `failure`: the same for every reason; the reason goes to the
/// log and its counter. Failures are also taken from the client address's
/// write budget (nothing else identifies such a caller; IPv6 addresses by
/// their /64, which one client holds), so a flood of bad credentials meets
/// 429s instead of costing a key lookup each. A valid credential from the
/// same address is not refused: every credential is 256 random bits or
/// signed, so the limit protects the store, not against guessing, and one
/// misconfigured client must not lock out its neighbours behind one NAT.
async fn refuse(
    req: &Request,
    kv: &Kv,
    config: &AuthConfig,
    failure: AuthFailure,
    now: u64,
) -> Problem {
    context::log(&format!("authentication failed: {failure}"));
    // Counting is best effort: the answer is a 401 either way.
    let _ = spindle_engine::metrics::count(
        kv,
        &spindle_core::metrics::AUTH_FAILURES,
        &[failure.reason()],
        1,
    )
    .await;
    let addr = client_addr(req);
    if let Some(limited) = charge_address(
        addr.as_deref(),
        kv,
        config.limits.of(Class::Write),
        "failed authentications",
        now,
    )
    .await
    {
        return limited;
    }
    Problem::of(
        ProblemKind::Unauthorized,
        "send a valid API key or bearer token: Authorization: Bearer <credential>",
    )
}

/// The client's address as the budget of failed requests counts it: the
/// IP, an IPv6 address by its /64 (which one client holds).
pub fn client_addr(req: &Request) -> Option<String> {
    req.headers()
        .get("spin-client-addr")
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .map(|a| match a.ip() {
            std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
                let s = v6.segments();
                std::net::IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
            std::net::IpAddr::V6(v6) => std::net::IpAddr::V4(
                v6.to_ipv4_mapped()
                    .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
            ),
            ip => ip,
        })
        .map(|ip| ip.to_string())
}

/// Takes one failed request from the budget of client address `addr`
/// ([`client_addr`]; `limit` a minute, the write class): the 429 to answer
/// once it is spent, naming `what` failed. `None` while there is budget, or
/// when the address is unknown or the store fails (the caller's own
/// refusal stands).
pub async fn charge_address(
    addr: Option<&str>,
    kv: &Kv,
    limit: u64,
    what: &str,
    now: u64,
) -> Option<Problem> {
    let caller = format!("addr:{}", addr?);
    let decision = spindle_auth::ratelimit::take(kv, Class::Write, &caller, limit, now)
        .await
        .ok()??;
    if decision.allowed {
        return None;
    }
    context::set_rate(decision);
    Some(Problem::of(
        ProblemKind::RateLimited,
        format!(
            "too many {what} from this address; retry in {} s",
            decision.retry_after_s()
        ),
    ))
}
