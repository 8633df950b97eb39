//! Who is calling: the credential a request presents, checked against API
//! keys, the bootstrap admin key and JWT bearer tokens.

use sha2::{Digest, Sha256};
use spindle_engine::store::{Store, StoreError};

use crate::Role;
use crate::jwt::JwtConfig;
use crate::keys::{self, KeyRefusal};
use crate::ratelimit::Limits;
use spindle_core::secret::check_secret;

/// Longest credential read from a header; anything longer is malformed.
pub const MAX_CREDENTIAL_BYTES: usize = 8 << 10;

/// The name the bootstrap admin key authenticates as.
pub const BOOTSTRAP_NAME: &str = "bootstrap";

/// What `WWW-Authenticate` says on every 401.
pub const CHALLENGE: &str = "Bearer realm=\"spindle\"";

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// How it authenticated.
    pub kind: CallerKind,
    /// The key's name or the token's subject.
    pub name: String,
    /// What it may do.
    pub role: Role,
}

/// How a caller authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallerKind {
    /// A stored API key, by id.
    ApiKey(String),
    /// The bootstrap admin key from the `admin_key` variable.
    Bootstrap,
    /// A JWT bearer token.
    Token,
}

impl Caller {
    /// The actor recorded in runs and audit lines: `key:<name>` or
    /// `token:<subject>`.
    pub fn actor(&self) -> String {
        match self.kind {
            CallerKind::ApiKey(_) | CallerKind::Bootstrap => format!("key:{}", self.name),
            CallerKind::Token => format!("token:{}", self.name),
        }
    }

    /// Whose budget the caller's requests come out of: the key (not its
    /// name, which two keys may share) or the token's subject.
    pub fn rate_key(&self) -> String {
        match &self.kind {
            CallerKind::ApiKey(id) => format!("key:{id}"),
            CallerKind::Bootstrap => format!("key:{BOOTSTRAP_NAME}"),
            CallerKind::Token => format!("token:{}", self.name),
        }
    }
}

/// Why a request is not authenticated. The HTTP answer is the same 401 for
/// every one of them (it never says which secret was wrong); the reason goes
/// to the logs and the failure counters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// No credential.
    #[error("no credential")]
    Missing,
    /// A credential header that is not `Bearer <token>`, or two of them.
    #[error("malformed credential: {0}")]
    Malformed(&'static str),
    /// No key or token matches.
    #[error("unknown credential")]
    Unknown,
    /// An API key past its expiry.
    #[error("expired API key")]
    Expired,
    /// A revoked API key.
    #[error("revoked API key")]
    Revoked,
    /// A JWT that does not verify.
    #[error("invalid token: {0}")]
    InvalidToken(String),
}

impl AuthFailure {
    /// A short name for counters and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed(_) => "malformed",
            AuthFailure::Unknown => "unknown",
            AuthFailure::Expired => "expired",
            AuthFailure::Revoked => "revoked",
            AuthFailure::InvalidToken(_) => "invalid_token",
        }
    }
}

/// The credential a request presents: `Authorization: Bearer <credential>`
/// or `X-API-Key: <key>`; `None` if neither header is there.
pub fn credential(
    authorization: Option<&[u8]>,
    api_key: Option<&[u8]>,
) -> Result<Option<String>, AuthFailure> {
    let text = |v: &[u8]| -> Result<String, AuthFailure> {
        if v.len() > MAX_CREDENTIAL_BYTES {
            return Err(AuthFailure::Malformed("credential too long"));
        }
        let s = std::str::from_utf8(v)
            .ok()
            .filter(|s| s.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
            .ok_or(AuthFailure::Malformed("credential is not visible ASCII"))?;
        Ok(s.trim().to_owned())
    };
    let bearer = match authorization {
        None => None,
        Some(v) => {
            let v = text(v)?;
            let (scheme, token) = v.split_once(' ').ok_or(AuthFailure::Malformed(
                "expected Authorization: Bearer <credential>",
            ))?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(AuthFailure::Malformed(
                    "expected Authorization: Bearer <credential>",
                ));
            }
            let token = token.trim();
            if token.is_empty() || token.contains(' ') {
                return Err(AuthFailure::Malformed(
                    "expected Authorization: Bearer <credential>",
                ));
            }
            Some(token.to_owned())
        }
    };
    let key = match api_key {
        None => None,
        Some(v) => {
            let v = text(v)?;
            if v.is_empty() || v.contains(' ') {
                return Err(AuthFailure::Malformed("X-API-Key must hold one key"));
            }
            Some(v)
        }
    };
    match (bearer, key) {
        (Some(_), Some(_)) => Err(AuthFailure::Malformed(
            "send one credential, in Authorization or in X-API-Key",
        )),
        (b, k) => Ok(b.or(k)),
    }
}

/// How callers are authenticated: the bootstrap key, JWT settings, limits.
pub struct AuthConfig {
    /// SHA-256 of the bootstrap admin key (the key itself is not kept).
    bootstrap_hash: String,
    /// JWT verification.
    pub jwt: JwtConfig,
    /// Rate limits.
    pub limits: Limits,
    /// Origins whose browsers may call the API (CORS).
    pub cors_origins: Vec<String>,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("jwt", &self.jwt)
            .field("limits", &self.limits)
            .field("cors_origins", &self.cors_origins)
            .finish_non_exhaustive()
    }
}

/// Variables [`AuthConfig::from_vars`] reads.
pub const VARIABLES: [&str; 9] = [
    "admin_key",
    "jwt_secret",
    "jwt_public_key",
    "jwt_issuer",
    "jwt_audience",
    "rate_limit_read",
    "rate_limit_write",
    "rate_limit_trigger",
    "cors_origins",
];

impl AuthConfig {
    /// Reads the settings (`var(name)`); refuses a missing or weak admin
    /// key or JWT secret with a message naming the variable (never its
    /// value).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let admin_key = var("admin_key")
            .filter(|v| !v.is_empty())
            .ok_or("variable admin_key is not set: it is the bootstrap admin API key")?;
        check_secret(&admin_key).map_err(|e| format!("variable admin_key {e}"))?;
        if keys::parse(&admin_key).is_some() {
            // It would be looked up as a stored key and never match.
            return Err(
                "variable admin_key has the shape of a stored API key (spk_...); use any other random value".into(),
            );
        }
        let jwt_secret = var("jwt_secret").filter(|v| !v.is_empty());
        if let Some(s) = &jwt_secret {
            check_secret(s).map_err(|e| format!("variable jwt_secret {e}"))?;
        }
        let public_key = var("jwt_public_key").filter(|v| !v.trim().is_empty());
        let issuer = var("jwt_issuer")
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "spindle".into());
        let audience = var("jwt_audience")
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "spindle".into());
        let jwt = JwtConfig::new(
            jwt_secret.as_deref(),
            public_key.as_deref(),
            &issuer,
            &audience,
        )
        .map_err(|e| format!("JWT settings: {e}"))?;
        let limits = Limits::from_vars(&var)?;
        let cors_origins = var("cors_origins")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(str::to_owned)
            .collect();
        Ok(Self {
            bootstrap_hash: hash(&admin_key),
            jwt,
            limits,
            cors_origins,
        })
    }

    /// Who presents `credential`, at `now_ms`.
    pub async fn authenticate<S: Store>(
        &self,
        store: &S,
        credential: &str,
        now_ms: u64,
    ) -> Result<Result<Caller, AuthFailure>, StoreError> {
        if keys::parse(credential).is_some() {
            return Ok(match keys::authenticate(store, credential, now_ms).await? {
                Ok(rec) => Ok(Caller {
                    kind: CallerKind::ApiKey(rec.id),
                    name: rec.name,
                    role: rec.role,
                }),
                Err(KeyRefusal::Unknown) => Err(AuthFailure::Unknown),
                Err(KeyRefusal::Expired) => Err(AuthFailure::Expired),
                Err(KeyRefusal::Revoked) => Err(AuthFailure::Revoked),
            });
        }
        if spindle_core::sign::secrets_equal(&hash(credential), &self.bootstrap_hash) {
            return Ok(Ok(Caller {
                kind: CallerKind::Bootstrap,
                name: BOOTSTRAP_NAME.into(),
                role: Role::Admin,
            }));
        }
        if credential.split('.').count() == 3 && self.jwt.enabled() {
            return Ok(match self.jwt.verify(credential, now_ms / 1000) {
                Ok(claims) => Ok(Caller {
                    kind: CallerKind::Token,
                    name: claims.subject,
                    role: claims.role,
                }),
                Err(e) => Err(AuthFailure::InvalidToken(e.to_string())),
            });
        }
        Ok(Err(AuthFailure::Unknown))
    }
}

fn hash(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use spindle_engine::testing::MemStore;

    const ADMIN: &str = "bootstrap-admin-key-0123456789abcdefghij";
    const JWT: &str = "jwt-hs256-secret-0123456789abcdefghijklmn";

    fn config() -> AuthConfig {
        AuthConfig::from_vars(|n| match n {
            "admin_key" => Some(ADMIN.into()),
            "jwt_secret" => Some(JWT.into()),
            _ => None,
        })
        .unwrap()
    }

    #[test]
    fn credentials_come_from_one_header() {
        assert_eq!(credential(None, None), Ok(None));
        assert_eq!(
            credential(Some(b"Bearer abc"), None),
            Ok(Some("abc".into()))
        );
        assert_eq!(
            credential(Some(b"bearer  abc "), None),
            Ok(Some("abc".into()))
        );
        assert_eq!(credential(None, Some(b"abc")), Ok(Some("abc".into())));
        for bad in [
            &b"Basic abc"[..],
            b"Bearer",
            b"Bearer ",
            b"Bearer a b",
            b"abc",
            b"Bearer \xff",
        ] {
            assert!(
                matches!(credential(Some(bad), None), Err(AuthFailure::Malformed(_))),
                "{bad:?}"
            );
        }
        assert!(credential(Some(b"Bearer a"), Some(b"b")).is_err());
        assert!(credential(None, Some(&vec![b'a'; MAX_CREDENTIAL_BYTES + 1])).is_err());
    }

    #[test]
    fn weak_or_missing_secrets_are_refused_by_name_not_value() {
        let e = AuthConfig::from_vars(|_| None).unwrap_err();
        assert!(e.contains("admin_key"), "{e}");
        let e =
            AuthConfig::from_vars(|n| (n == "admin_key").then(|| "changeme".into())).unwrap_err();
        assert!(e.contains("admin_key") && !e.contains("changeme"), "{e}");
        let e = AuthConfig::from_vars(|n| match n {
            "admin_key" => Some(ADMIN.into()),
            "jwt_secret" => Some("CHANGE_ME".into()),
            _ => None,
        })
        .unwrap_err();
        assert!(e.contains("jwt_secret") && !e.contains("CHANGE_ME"), "{e}");
        let shaped = format!("spk_{}_{}", "0a".repeat(8), "1b2c".repeat(16));
        let e = AuthConfig::from_vars(|n| (n == "admin_key").then(|| shaped.clone())).unwrap_err();
        assert!(e.contains("admin_key"), "{e}");
    }

    #[tokio::test]
    async fn keys_the_bootstrap_key_and_tokens_authenticate() {
        let store = MemStore::default();
        let cfg = config();
        let now = 1_700_000_000_000;
        let boot = cfg.authenticate(&store, ADMIN, now).await.unwrap().unwrap();
        assert_eq!(
            (boot.role, boot.actor().as_str()),
            (Role::Admin, "key:bootstrap")
        );

        let (key, rec) = keys::generate(
            &[3; keys::RANDOM_BYTES],
            "ci",
            Role::Viewer,
            None,
            "key:bootstrap",
            now,
        );
        keys::create(&store, &rec).await.unwrap();
        let ci = cfg.authenticate(&store, &key, now).await.unwrap().unwrap();
        assert_eq!((ci.role, ci.actor().as_str()), (Role::Viewer, "key:ci"));
        assert_eq!(ci.rate_key(), format!("key:{}", rec.id));

        let token = crate::jwt::mint_hs256(
            JWT,
            "alice",
            Role::Approver,
            "spindle",
            "spindle",
            3600,
            now / 1000,
        )
        .unwrap();
        let alice = cfg
            .authenticate(&store, &token, now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (alice.role, alice.actor().as_str()),
            (Role::Approver, "token:alice")
        );

        for wrong in [
            "nope",
            "a.b.c",
            &format!("{ADMIN}x"),
            &key.replace("_", "-"),
        ] {
            assert!(
                cfg.authenticate(&store, wrong, now).await.unwrap().is_err(),
                "{wrong}"
            );
        }
        let late = cfg
            .authenticate(&store, &token, now + 2 * 3600 * 1000)
            .await
            .unwrap();
        assert_eq!(late.unwrap_err().reason(), "invalid_token");
    }
}
