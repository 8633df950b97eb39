//! Engine settings, read from Spin variables on every request (components
//! keep nothing between requests).

use spindle_core::run::RunSettings;

use crate::EngineError;

/// What the engine needs to know about its surroundings.
#[derive(Clone)]
pub struct Config {
    /// Worker base URLs, e.g. `http://127.0.0.1:8081`.
    pub workers: Vec<String>,
    /// Base URL under which workers reach the `jobs` component.
    pub callback_url: String,
    /// Key for job tokens; absent in components that never dispatch.
    pub secret: Option<String>,
    /// Bearer token workers require on dispatch and cancel requests.
    pub worker_token: Option<String>,
    /// Lease and output cap for new runs.
    pub settings: RunSettings,
    /// How long to wait for a worker to accept a job.
    pub dispatch_timeout_ms: u64,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("workers", &self.workers)
            .field("callback_url", &self.callback_url)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field(
                "worker_token",
                &self.worker_token.as_ref().map(|_| "<redacted>"),
            )
            .field("settings", &self.settings)
            .finish()
    }
}

async fn var(name: &str) -> Option<String> {
    spin_sdk::variables::get(name)
        .await
        .ok()
        .filter(|v| !v.trim().is_empty())
}

async fn number<T: std::str::FromStr>(name: &str, default: T) -> Result<T, EngineError> {
    match var(name).await {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| {
            EngineError::Config(format!("variable {name} must be a number, got {v:?}"))
        }),
    }
}

impl Config {
    /// Reads the component's variables; only those it was granted are seen.
    pub async fn load() -> Result<Self, EngineError> {
        let workers = var("workers")
            .await
            .unwrap_or_default()
            .split(',')
            .map(|w| w.trim().trim_end_matches('/').to_owned())
            .filter(|w| !w.is_empty())
            .collect();
        let defaults = RunSettings::default();
        Ok(Self {
            workers,
            callback_url: var("callback_url")
                .await
                .unwrap_or_else(|| "http://127.0.0.1:3000".into())
                .trim_end_matches('/')
                .to_owned(),
            secret: var("callback_secret").await,
            worker_token: var("worker_token").await,
            settings: RunSettings {
                lease_ms: number("lease_ms", defaults.lease_ms).await?.max(100),
                max_output_bytes: number("max_output_bytes", defaults.max_output_bytes).await?,
            },
            dispatch_timeout_ms: number("dispatch_timeout_ms", 5_000).await?,
        })
    }

    /// The callback secret, required to dispatch or verify jobs.
    pub fn secret(&self) -> Result<&str, EngineError> {
        self.secret
            .as_deref()
            .ok_or_else(|| EngineError::Config("variable callback_secret is not set".into()))
    }
}
