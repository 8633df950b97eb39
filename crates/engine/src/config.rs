//! Engine settings, read from the component's variables on every request
//! (components keep nothing between requests).
//!
//! Every setting is required here: the defaults live in one place, the
//! `[variables]` of `spin.toml`, and a component that was not given a
//! variable fails at the start of the request with a clear error instead of
//! quietly using a second default written in code.

use spindle_core::breaker::BreakerSettings;
use spindle_core::run::RunSettings;

use crate::EngineError;

/// The variables [`Config::from_vars`] reads. A component that builds an
/// engine must be given every one of them in `spin.toml`.
pub const VARIABLES: [&str; 12] = [
    "workers",
    "callback_url",
    "callback_secret",
    "worker_token",
    "lease_ms",
    "max_output_bytes",
    "dispatch_timeout_ms",
    "retention_days",
    "breaker_failures",
    "breaker_window_secs",
    "breaker_open_secs",
    "breaker_close_successes",
];

/// What the engine needs to know about its surroundings.
#[derive(Clone)]
pub struct Config {
    /// Worker base URLs, e.g. `http://127.0.0.1:8081`.
    pub workers: Vec<String>,
    /// Base URL under which workers reach the `jobs` component.
    pub callback_url: String,
    /// Key for job tokens.
    pub secret: String,
    /// Bearer token workers require on dispatch and cancel requests.
    pub worker_token: String,
    /// Lease and output cap for new runs.
    pub settings: RunSettings,
    /// How long to wait for a worker to accept a job.
    pub dispatch_timeout_ms: u64,
    /// How long finished runs are kept.
    pub retention_ms: u64,
    /// When a worker's circuit breaker opens and closes.
    pub breaker: BreakerSettings,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("workers", &self.workers)
            .field("callback_url", &self.callback_url)
            .field("secret", &"<redacted>")
            .field("worker_token", &"<redacted>")
            .field("settings", &self.settings)
            .field("dispatch_timeout_ms", &self.dispatch_timeout_ms)
            .field("retention_ms", &self.retention_ms)
            .field("breaker", &self.breaker)
            .finish()
    }
}

/// The variables [`Pool::from_vars`] reads: what a component that only
/// watches the workers (health, metrics) needs, and no secret.
pub const POOL_VARIABLES: [&str; 5] = [
    "workers",
    "breaker_failures",
    "breaker_window_secs",
    "breaker_open_secs",
    "breaker_close_successes",
];

/// The worker pool and its circuit breakers' settings.
#[derive(Debug, Clone)]
pub struct Pool {
    /// Worker base URLs.
    pub workers: Vec<String>,
    /// When a worker's circuit breaker opens and closes.
    pub breaker: BreakerSettings,
}

fn required_var(
    var: &mut impl FnMut(&str) -> Option<String>,
    name: &str,
) -> Result<String, EngineError> {
    var(name)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            EngineError::Config(format!(
                "variable {name} is not set (give the component `{name} = \"{{{{ {name} }}}}\"` in spin.toml)"
            ))
        })
}

impl Pool {
    /// Reads [`POOL_VARIABLES`] through `var`; names the first one missing
    /// or malformed.
    pub fn from_vars(mut var: impl FnMut(&str) -> Option<String>) -> Result<Self, EngineError> {
        let mut required = |name: &str| required_var(&mut var, name);
        let workers: Vec<String> = required("workers")?
            .split(',')
            .map(|w| w.trim().trim_end_matches('/').to_owned())
            .filter(|w| !w.is_empty())
            .collect();
        if workers.is_empty() {
            return Err(EngineError::Config(
                "variable workers lists no worker URL".into(),
            ));
        }
        let breaker = BreakerSettings {
            failures: number("breaker_failures", &required("breaker_failures")?)?,
            window_ms: secs("breaker_window_secs", &required("breaker_window_secs")?)?,
            open_ms: secs("breaker_open_secs", &required("breaker_open_secs")?)?,
            close_successes: number(
                "breaker_close_successes",
                &required("breaker_close_successes")?,
            )?,
        };
        if breaker.close_successes == 0 {
            return Err(EngineError::Config(
                "variable breaker_close_successes must be at least 1".into(),
            ));
        }
        Ok(Self { workers, breaker })
    }
}

impl Config {
    /// Reads every setting through `var` (the component's variables);
    /// names the first one missing or malformed.
    pub fn from_vars(mut var: impl FnMut(&str) -> Option<String>) -> Result<Self, EngineError> {
        let Pool { workers, breaker } = Pool::from_vars(&mut var)?;
        let mut required = |name: &str| required_var(&mut var, name);
        let callback_url = required("callback_url")?.trim_end_matches('/').to_owned();
        let secret = required("callback_secret")?;
        let worker_token = required("worker_token")?;
        for (name, value) in [
            ("callback_secret", &secret),
            ("worker_token", &worker_token),
        ] {
            spindle_core::secret::check_secret(value)
                .map_err(|e| EngineError::Config(format!("variable {name} {e}")))?;
        }
        let lease_ms: u64 = number("lease_ms", &required("lease_ms")?)?;
        let max_output_bytes: usize = number("max_output_bytes", &required("max_output_bytes")?)?;
        let dispatch_timeout_ms = number("dispatch_timeout_ms", &required("dispatch_timeout_ms")?)?;
        let retention_days: u64 = number("retention_days", &required("retention_days")?)?;
        if lease_ms < 100 {
            return Err(EngineError::Config(format!(
                "variable lease_ms must be at least 100, got {lease_ms}"
            )));
        }
        if retention_days == 0 {
            return Err(EngineError::Config(
                "variable retention_days must be at least 1".into(),
            ));
        }
        Ok(Self {
            workers,
            callback_url,
            secret,
            worker_token,
            settings: RunSettings {
                lease_ms,
                max_output_bytes,
            },
            dispatch_timeout_ms,
            retention_ms: retention_days.saturating_mul(86_400_000),
            breaker,
        })
    }
}

fn number<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, EngineError> {
    v.parse()
        .map_err(|_| EngineError::Config(format!("variable {name} must be a number, got {v:?}")))
}

/// A positive number of seconds, in milliseconds.
fn secs(name: &str, v: &str) -> Result<u64, EngineError> {
    match number::<u64>(name, v)? {
        0 => Err(EngineError::Config(format!(
            "variable {name} must be at least 1"
        ))),
        n => Ok(n.saturating_mul(1000)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(skip: &str) -> impl FnMut(&str) -> Option<String> {
        let skip = skip.to_owned();
        move |name: &str| {
            if name == skip {
                return None;
            }
            Some(
                match name {
                    "workers" => "http://a:1/, http://b:2",
                    "callback_url" => "http://app/",
                    "lease_ms" => "3000",
                    "max_output_bytes" => "1000",
                    "dispatch_timeout_ms" => "500",
                    "retention_days" => "30",
                    "breaker_failures" => "5",
                    "breaker_window_secs" => "120",
                    "breaker_open_secs" => "60",
                    "breaker_close_successes" => "3",
                    _ => "s3cret-0123456789abcdefghijklmnopqrstuv",
                }
                .to_owned(),
            )
        }
    }

    #[test]
    fn every_variable_is_required_and_named_when_missing() {
        let c = Config::from_vars(vars("")).unwrap();
        assert_eq!(c.workers, ["http://a:1", "http://b:2"]);
        assert_eq!(c.callback_url, "http://app");
        assert_eq!(c.retention_ms, 30 * 86_400_000);
        assert_eq!(c.breaker, BreakerSettings::default());
        assert!(!format!("{c:?}").contains("s3cret"), "secrets are redacted");
        for name in VARIABLES {
            let err = Config::from_vars(vars(name)).unwrap_err().to_string();
            assert!(err.contains(name), "{name}: {err}");
        }
    }

    #[test]
    fn weak_secrets_are_refused_by_name_never_shown() {
        for name in ["callback_secret", "worker_token"] {
            let err = Config::from_vars(|n: &str| {
                if n == name {
                    return Some("changeme".into());
                }
                vars("")(n)
            })
            .unwrap_err()
            .to_string();
            assert!(err.contains(name) && !err.contains("changeme"), "{err}");
        }
    }

    #[test]
    fn breaker_periods_and_successes_must_be_positive() {
        for name in [
            "breaker_window_secs",
            "breaker_open_secs",
            "breaker_close_successes",
        ] {
            let err = Config::from_vars(|n: &str| {
                if n == name {
                    return Some("0".into());
                }
                vars("")(n)
            })
            .unwrap_err()
            .to_string();
            assert!(err.contains(name) && err.contains("at least 1"), "{err}");
        }
        // No failures threshold: the breaker is off.
        let off = Config::from_vars(|n: &str| {
            if n == "breaker_failures" {
                return Some("0".into());
            }
            vars("")(n)
        })
        .unwrap();
        assert!(!off.breaker.enabled());
    }

    #[test]
    fn malformed_numbers_are_refused() {
        let err = Config::from_vars(|n: &str| {
            if n == "lease_ms" {
                return Some("soon".into());
            }
            vars("")(n)
        })
        .unwrap_err();
        assert!(err.to_string().contains("lease_ms"), "{err}");
    }
}
