//! `spindle keys ...` and `spindle token`: API keys through a running app's
//! API, and locally minted JWTs.
//!
//! Credentials never go on the command line (other users see it in `ps`):
//! they come from the environment or from `.spin/secrets.env`, the file
//! `scripts/up` writes.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use spindle_auth::Role;

/// Where a running app and its credentials are.
#[derive(Args)]
pub struct Target {
    /// The app's base URL.
    #[arg(long, default_value = "http://127.0.0.1:3000", env = "SPINDLE_URL")]
    url: String,
    /// The secrets file `scripts/up` writes; read when SPINDLE_API_KEY (or,
    /// for `token`, SPIN_VARIABLE_JWT_SECRET) is not set.
    #[arg(long, default_value = ".spin/secrets.env")]
    secrets: PathBuf,
}

/// `spindle keys`.
#[derive(Subcommand)]
pub enum KeysCommand {
    /// Creates an API key and prints it (once: it is stored only as a hash).
    Create {
        /// Who or what uses it, e.g. `ci`.
        #[arg(long)]
        name: String,
        /// viewer, operator, approver or admin.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Lifetime in days (default: no expiry).
        #[arg(long)]
        expires_in_days: Option<u64>,
        #[command(flatten)]
        target: Target,
    },
    /// Lists API keys (without secrets).
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Revokes an API key by id: it stops working at once.
    Revoke {
        /// The key's id (the 16 hex digits after `spk_`).
        id: String,
        #[command(flatten)]
        target: Target,
    },
}

/// `spindle token`.
#[derive(Args)]
pub struct TokenArgs {
    /// The caller the token speaks for (`sub`).
    #[arg(long)]
    sub: String,
    /// viewer, operator, approver or admin.
    #[arg(long, value_parser = parse_role)]
    role: Role,
    /// Lifetime in seconds (at most 30 days: a token cannot be revoked
    /// before it expires, except by rotating the app's jwt_secret).
    #[arg(long, default_value_t = spindle_auth::jwt::DEFAULT_LIFETIME_S,
          value_parser = clap::value_parser!(u64).range(1..=MAX_LIFETIME_S))]
    lifetime_secs: u64,
    /// `iss`: must match the app's `jwt_issuer`.
    #[arg(long, default_value = "spindle", env = "SPIN_VARIABLE_JWT_ISSUER")]
    issuer: String,
    /// `aud`: must match the app's `jwt_audience`.
    #[arg(long, default_value = "spindle", env = "SPIN_VARIABLE_JWT_AUDIENCE")]
    audience: String,
    /// The secrets file holding SPIN_VARIABLE_JWT_SECRET.
    #[arg(long, default_value = ".spin/secrets.env")]
    secrets: PathBuf,
}

/// The longest lifetime `spindle token` mints.
const MAX_LIFETIME_S: u64 = 30 * 86_400;

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| "must be viewer, operator, approver or admin".into())
}

/// A value from the environment, else from the secrets file.
fn secret(env_name: &str, file: &Path) -> anyhow::Result<Option<String>> {
    if let Ok(v) = std::env::var(env_name)
        && !v.is_empty()
    {
        return Ok(Some(v));
    }
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    Ok(text.lines().find_map(|l| {
        l.strip_prefix(env_name)
            .and_then(|r| r.strip_prefix('='))
            .map(str::to_owned)
    }))
}

/// Mints a token and prints it.
pub fn token(args: TokenArgs) -> anyhow::Result<()> {
    let Some(key) = secret("SPIN_VARIABLE_JWT_SECRET", &args.secrets)? else {
        bail!(
            "no JWT secret: set SPIN_VARIABLE_JWT_SECRET (the app's jwt_secret) or run from the directory whose {} scripts/up wrote",
            args.secrets.display()
        );
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let token = spindle_auth::jwt::mint_hs256(
        &key,
        &args.sub,
        args.role,
        &args.issuer,
        &args.audience,
        args.lifetime_secs,
        now,
    )
    .context("cannot mint the token")?;
    println!("{token}");
    Ok(())
}

/// Runs a `spindle keys` command against the app.
pub async fn keys(cmd: KeysCommand) -> anyhow::Result<()> {
    let (target, method, path, body) = match &cmd {
        KeysCommand::Create {
            name,
            role,
            expires_in_days,
            target,
        } => (
            target,
            reqwest::Method::POST,
            "/api/keys".to_owned(),
            Some(serde_json::json!({
                "name": name, "role": role, "expires_in_days": expires_in_days,
            })),
        ),
        KeysCommand::List { target } => (target, reqwest::Method::GET, "/api/keys".into(), None),
        KeysCommand::Revoke { id, target } => {
            // Checked here, so an id can never turn the path into another
            // resource (`../agents/x`) sent with the admin's credential.
            if !spindle_auth::keys::valid_id(id) {
                bail!("{id:?} is not a key id: the 16 hex digits after spk_");
            }
            (
                target,
                reqwest::Method::DELETE,
                format!("/api/keys/{id}"),
                None,
            )
        }
    };
    let url_ok = url::Url::parse(&target.url)
        .with_context(|| format!("--url {:?} is not a URL", target.url))?;
    let loopback = match url_ok.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    if url_ok.scheme() == "http" && !loopback {
        eprintln!(
            "warning: sending an admin credential over plain HTTP to {}; use https",
            target.url
        );
    }
    let key = match secret("SPINDLE_API_KEY", &target.secrets)? {
        Some(k) => k,
        None => secret("SPIN_VARIABLE_ADMIN_KEY", &target.secrets)?.with_context(|| {
            format!(
                "no admin credential: set SPINDLE_API_KEY or run from the directory whose {} scripts/up wrote",
                target.secrets.display()
            )
        })?,
    };
    let url = format!("{}{path}", target.url.trim_end_matches('/'));
    let mut req = reqwest::Client::new()
        .request(method, &url)
        .bearer_auth(key)
        .timeout(std::time::Duration::from_secs(30));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach {url}; is Spindle running?"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let value: serde_json::Value =
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    if !status.is_success() {
        let detail = value
            .get("detail")
            .and_then(|d| d.as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| value.to_string());
        bail!("{status}: {detail}");
    }
    match cmd {
        KeysCommand::Create { .. } => {
            let key = value["key"].as_str().unwrap_or_default();
            eprintln!(
                "created key {} ({}, role {}); it is shown only now:",
                value["id"].as_str().unwrap_or_default(),
                value["name"].as_str().unwrap_or_default(),
                value["role"].as_str().unwrap_or_default()
            );
            println!("{key}");
        }
        KeysCommand::List { .. } => {
            for k in value["items"].as_array().into_iter().flatten() {
                println!(
                    "{}  {:<24} {:<9} {}",
                    k["id"].as_str().unwrap_or_default(),
                    k["name"].as_str().unwrap_or_default(),
                    k["role"].as_str().unwrap_or_default(),
                    if k["active"].as_bool() == Some(true) {
                        "active"
                    } else if k["revoked_ms"].is_number() {
                        "revoked"
                    } else {
                        "expired"
                    }
                );
            }
        }
        KeysCommand::Revoke { id, .. } => println!("revoked {id}"),
    }
    Ok(())
}
