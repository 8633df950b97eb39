//! JWT bearer tokens: verifying the ones callers present, and minting the
//! HS256 ones `spindle token` hands out.
//!
//! Verification is pure: the caller passes the time in, so the same code runs
//! natively and inside a wasm component. It must never read the clock or log:
//! the errors say what was wrong with the token (for the component's logs; the
//! client only ever sees a bare 401) and never carry key material.
//!
//! Which key checks a token is decided by its header's `alg` against a fixed
//! table, and an algorithm whose key is not configured is refused, so neither
//! `alg: none` nor the HS256-keyed-with-the-public-key confusion can get in.

use std::collections::HashSet;

use jwt_simple::JWTError;
use jwt_simple::prelude::{
    Audiences, Duration, ECDSAP256PublicKeyLike, ES256PublicKey, Ed25519PublicKey,
    EdDSAPublicKeyLike, HS256Key, JWTClaims, MACLike, Token, UnixTimeStamp, VerificationOptions,
};
use serde::{Deserialize, Serialize};

use crate::Role;

/// How long a token Spindle mints is valid for, unless told otherwise.
pub const DEFAULT_LIFETIME_S: u64 = 24 * 3600;

/// How far the issuer's clock may be from ours, either way, when checking
/// `exp`, `nbf` and `iat`.
pub const CLOCK_SKEW_S: u64 = 60;

/// Longest token read at all. A bearer token carrying a role is a few hundred
/// bytes; anything near this is an attack on the parser.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Longest `sub` accepted, in characters. It ends up in audit records.
pub const MAX_SUBJECT_CHARS: usize = 200;

/// Fewest bytes an HS256 secret may have: RFC 7518 §3.2 asks for a key at
/// least as long as the hash output.
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// Timestamps at or past this many seconds do not fit jwt-simple's clock
/// (32.32 fixed point) with the skew added, so they are refused up front
/// rather than overflowing (year 2106).
const MAX_TIME_S: u64 = (1 << 32) - CLOCK_SKEW_S - 1;

/// How much of an attacker-chosen string (an `alg`, a role) an error quotes.
const MAX_QUOTED_CHARS: usize = 32;

/// Why a token was refused (or could not be minted). None of the messages
/// carries key material; some quote a short, escaped piece of the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// No JWT algorithm is configured, so no token can be accepted.
    #[error("JWT bearer tokens are not enabled")]
    Disabled,
    /// Longer than [`MAX_TOKEN_BYTES`].
    #[error("token is {len} bytes long; at most {MAX_TOKEN_BYTES} are accepted")]
    TooLong {
        /// The token's length in bytes.
        len: usize,
    },
    /// Not three base64url JSON parts, or a claim of the wrong type.
    #[error("token is malformed: {detail}")]
    Malformed {
        /// What the parser said, shortened.
        detail: String,
    },
    /// The header names an algorithm Spindle never accepts (`none`, `HS512`,
    /// `RS256`...).
    #[error("token algorithm {alg:?} is not accepted (only HS256, ES256 and EdDSA)")]
    UnsupportedAlgorithm {
        /// The header's `alg`, shortened.
        alg: String,
    },
    /// The header names an algorithm Spindle knows but has no key for.
    #[error("token algorithm {alg} is not configured")]
    AlgorithmNotConfigured {
        /// The header's `alg`.
        alg: &'static str,
    },
    /// The signature or MAC does not match the configured key.
    #[error("token signature does not verify")]
    BadSignature,
    /// `exp` is absent: Spindle never accepts a token that lives forever.
    #[error("token has no expiry (`exp`)")]
    MissingExpiry,
    /// `exp` is more than [`CLOCK_SKEW_S`] in the past.
    #[error("token has expired")]
    Expired,
    /// `nbf` is more than [`CLOCK_SKEW_S`] in the future.
    #[error("token is not valid yet (`nbf`)")]
    NotYetValid,
    /// `iat` is more than [`CLOCK_SKEW_S`] in the future.
    #[error("token was issued in the future (`iat`)")]
    IssuedInFuture,
    /// `iss` is absent.
    #[error("token has no issuer (`iss`)")]
    MissingIssuer,
    /// `iss` is not the configured issuer.
    #[error("token issuer (`iss`) is not the expected one")]
    WrongIssuer,
    /// `aud` is absent.
    #[error("token has no audience (`aud`)")]
    MissingAudience,
    /// `aud` does not include the configured audience.
    #[error("token audience (`aud`) does not include the expected one")]
    WrongAudience,
    /// `sub` is absent or empty.
    #[error("token has no subject (`sub`)")]
    MissingSubject,
    /// `sub` is longer than [`MAX_SUBJECT_CHARS`].
    #[error("token subject (`sub`) is longer than {MAX_SUBJECT_CHARS} characters")]
    SubjectTooLong,
    /// `sub` holds control characters, which could forge lines in logs.
    #[error("token subject (`sub`) contains control characters")]
    SubjectHasControlChars,
    /// `role` names no Spindle role.
    #[error("token role {role:?} is not a Spindle role")]
    UnknownRole {
        /// The `role` claim, shortened.
        role: String,
    },
    /// Neither `role` nor any entry of `roles` names a Spindle role.
    #[error("token carries no Spindle role (`role` or `roles`)")]
    NoRole,
    /// Minting with an HS256 secret shorter than [`MIN_HS256_SECRET_BYTES`].
    #[error("HS256 secret is shorter than {MIN_HS256_SECRET_BYTES} bytes")]
    WeakSecret,
    /// The time passed in, or `now + lifetime` when minting, is beyond what
    /// a JWT timestamp here can hold.
    #[error("time is out of range")]
    TimeOutOfRange,
    /// jwt-simple refused to build the token.
    #[error("token could not be signed: {detail}")]
    Mint {
        /// What jwt-simple said.
        detail: String,
    },
}

/// Why a JWT configuration was refused. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtConfigError {
    /// The HS256 secret is shorter than [`MIN_HS256_SECRET_BYTES`].
    #[error(
        "the JWT HS256 secret is shorter than {MIN_HS256_SECRET_BYTES} bytes; use at least {MIN_HS256_SECRET_BYTES} random bytes (e.g. `openssl rand -hex 32`)"
    )]
    WeakSecret,
    /// The public key parses neither as a P-256 nor as an Ed25519 key.
    #[error(
        "the JWT public key is neither a P-256 (ES256) nor an Ed25519 (EdDSA) public key in SPKI PEM form (`-----BEGIN PUBLIC KEY-----`)"
    )]
    InvalidPublicKey,
    /// A key is configured but the issuer to require is empty.
    #[error("the JWT issuer must not be empty when JWT tokens are enabled")]
    EmptyIssuer,
    /// A key is configured but the audience to require is empty.
    #[error("the JWT audience must not be empty when JWT tokens are enabled")]
    EmptyAudience,
}

/// Who a verified token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    /// The `sub` claim: non-empty, at most [`MAX_SUBJECT_CHARS`] characters.
    pub subject: String,
    /// The role the token grants.
    pub role: Role,
    /// The `exp` claim, in seconds since the Unix epoch.
    pub expires_at_s: u64,
}

/// The public key a token may be signed with; one at a time, as configured.
#[derive(Clone)]
enum PublicKey {
    Es256(ES256PublicKey),
    Ed25519(Ed25519PublicKey),
}

impl PublicKey {
    /// Tries P-256 first, then Ed25519: the PEM label is `PUBLIC KEY` for
    /// both, so only the parsers can tell them apart.
    fn from_pem(pem: &str) -> Result<Self, JwtConfigError> {
        if let Ok(key) = ES256PublicKey::from_pem(pem) {
            return Ok(PublicKey::Es256(key));
        }
        Ed25519PublicKey::from_pem(pem)
            .map(PublicKey::Ed25519)
            .map_err(|_| JwtConfigError::InvalidPublicKey)
    }

    fn alg(&self) -> &'static str {
        match self {
            PublicKey::Es256(_) => "ES256",
            PublicKey::Ed25519(_) => "EdDSA",
        }
    }
}

/// Spindle's own claims beside the registered ones.
#[derive(Debug, Default, Serialize, Deserialize)]
struct RoleClaims {
    /// One role by name: Spindle's own form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<String>,
    /// Role names as many identity providers send them; entries that are
    /// not Spindle roles (or not strings) are someone else's and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    roles: Option<Vec<serde_json::Value>>,
}

/// Which JWTs Spindle accepts: the keys, and the issuer and audience every
/// token must name.
#[derive(Clone)]
pub struct JwtConfig {
    hs256: Option<HS256Key>,
    public_key: Option<PublicKey>,
    issuer: String,
    audience: String,
}

// By hand, so the keys never reach a log: only which algorithms are on.
impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field("hs256", &self.hs256.is_some())
            .field("public_key", &self.public_key.as_ref().map(PublicKey::alg))
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

impl JwtConfig {
    /// Builds the configuration from the deployment's variables.
    ///
    /// `hs256_secret`: `Some` non-empty secret enables HS256, keyed with the
    /// secret's UTF-8 bytes as given; it must be at least
    /// [`MIN_HS256_SECRET_BYTES`] long. `public_key_pem`: `Some` non-blank
    /// SPKI PEM (`-----BEGIN PUBLIC KEY-----`) enables ES256 if it is a P-256
    /// key or EdDSA if it is an Ed25519 key; a PEM pasted into one line with
    /// literal `\n` escapes is accepted too. `None` or empty leaves the
    /// algorithm off. `issuer` and `audience` are the `iss` and `aud` every
    /// token must carry; they must be non-empty when any algorithm is on.
    pub fn new(
        hs256_secret: Option<&str>,
        public_key_pem: Option<&str>,
        issuer: &str,
        audience: &str,
    ) -> Result<Self, JwtConfigError> {
        let hs256 = match hs256_secret.filter(|s| !s.is_empty()) {
            Some(secret) if secret.len() < MIN_HS256_SECRET_BYTES => {
                return Err(JwtConfigError::WeakSecret);
            }
            Some(secret) => Some(HS256Key::from_bytes(secret.as_bytes())),
            None => None,
        };
        let public_key = match public_key_pem.map(str::trim).filter(|s| !s.is_empty()) {
            Some(pem) => Some(PublicKey::from_pem(&unescape_newlines(pem))?),
            None => None,
        };
        let config = JwtConfig {
            hs256,
            public_key,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        };
        if config.enabled() && issuer.is_empty() {
            return Err(JwtConfigError::EmptyIssuer);
        }
        if config.enabled() && audience.is_empty() {
            return Err(JwtConfigError::EmptyAudience);
        }
        Ok(config)
    }

    /// Whether any algorithm is configured, i.e. whether bearer JWTs can be
    /// accepted at all.
    pub fn enabled(&self) -> bool {
        self.hs256.is_some() || self.public_key.is_some()
    }

    /// Verifies `token` (without the `Bearer ` prefix) as of `now_s`
    /// (seconds since the Unix epoch) and returns who it speaks for.
    ///
    /// Requires a signature by the key configured for the header's `alg`,
    /// `exp` (with [`CLOCK_SKEW_S`] of grace, as for `nbf` and `iat`), the
    /// configured `iss`, `aud` including the configured audience, a `sub`,
    /// and a Spindle role: the `role` claim if present (which must then
    /// name a role), otherwise the highest role named in the `roles` array.
    pub fn verify(&self, token: &str, now_s: u64) -> Result<TokenClaims, JwtError> {
        if !self.enabled() {
            return Err(JwtError::Disabled);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::TooLong { len: token.len() });
        }
        if now_s > MAX_TIME_S {
            return Err(JwtError::TimeOutOfRange);
        }
        let claims = self.verify_signed(token, self.options(now_s))?;
        let expires_at_s = claims.expires_at.ok_or(JwtError::MissingExpiry)?.as_secs();
        let subject = checked_subject(claims.subject.as_deref())?.to_owned();
        let role = role_of(&claims.custom)?;
        Ok(TokenClaims {
            subject,
            role,
            expires_at_s,
        })
    }

    /// Checks the signature with the key the header's `alg` selects, then
    /// jwt-simple's claim checks (times, `iss`, `aud`).
    fn verify_signed(
        &self,
        token: &str,
        options: VerificationOptions,
    ) -> Result<JWTClaims<RoleClaims>, JwtError> {
        // The header is unauthenticated, so it only picks among the keys we
        // hold; each key then insists on its own algorithm again.
        let metadata = Token::decode_metadata(token).map_err(from_jwt_simple)?;
        let verified = match (metadata.algorithm(), &self.hs256, &self.public_key) {
            ("HS256", Some(key), _) => key.verify_token(token, Some(options)),
            ("ES256", _, Some(PublicKey::Es256(key))) => key.verify_token(token, Some(options)),
            ("EdDSA", _, Some(PublicKey::Ed25519(key))) => key.verify_token(token, Some(options)),
            ("HS256", ..) => return Err(JwtError::AlgorithmNotConfigured { alg: "HS256" }),
            ("ES256", ..) => return Err(JwtError::AlgorithmNotConfigured { alg: "ES256" }),
            ("EdDSA", ..) => return Err(JwtError::AlgorithmNotConfigured { alg: "EdDSA" }),
            (alg, ..) => {
                return Err(JwtError::UnsupportedAlgorithm { alg: quoted(alg) });
            }
        };
        verified.map_err(from_jwt_simple)
    }

    fn options(&self, now_s: u64) -> VerificationOptions {
        VerificationOptions {
            allowed_issuers: Some(HashSet::from([self.issuer.clone()])),
            allowed_audiences: Some(HashSet::from([self.audience.clone()])),
            time_tolerance: Some(Duration::from_secs(CLOCK_SKEW_S)),
            max_token_length: Some(MAX_TOKEN_BYTES),
            // Components run in wasm, and the core never reads the clock.
            artificial_time: Some(UnixTimeStamp::from_secs(now_s)),
            ..VerificationOptions::default()
        }
    }
}

/// Mints an HS256 token for `spindle token` and tests: `sub`, `role`, `iss`,
/// `aud`, `iat` and `nbf` at `now_s`, `exp` at `now_s + lifetime_s`.
///
/// Refuses what [`JwtConfig::verify`] would refuse (a weak secret, an empty
/// or overlong subject, an empty issuer or audience), so a minted token
/// verifies under a matching configuration.
pub fn mint_hs256(
    secret: &str,
    subject: &str,
    role: Role,
    issuer: &str,
    audience: &str,
    lifetime_s: u64,
    now_s: u64,
) -> Result<String, JwtError> {
    if secret.len() < MIN_HS256_SECRET_BYTES {
        return Err(JwtError::WeakSecret);
    }
    checked_subject(Some(subject))?;
    if issuer.is_empty() {
        return Err(JwtError::MissingIssuer);
    }
    if audience.is_empty() {
        return Err(JwtError::MissingAudience);
    }
    let expires_at_s = now_s
        .checked_add(lifetime_s)
        .filter(|&t| t <= MAX_TIME_S)
        .ok_or(JwtError::TimeOutOfRange)?;
    // Built field by field: jwt-simple's `Claims::create` reads the clock.
    let claims = JWTClaims {
        issued_at: Some(UnixTimeStamp::from_secs(now_s)),
        expires_at: Some(UnixTimeStamp::from_secs(expires_at_s)),
        invalid_before: Some(UnixTimeStamp::from_secs(now_s)),
        issuer: Some(issuer.to_owned()),
        subject: Some(subject.to_owned()),
        audiences: Some(Audiences::AsString(audience.to_owned())),
        jwt_id: None,
        nonce: None,
        custom: RoleClaims {
            role: Some(role.as_str().to_owned()),
            roles: None,
        },
    };
    HS256Key::from_bytes(secret.as_bytes())
        .authenticate(claims)
        .map_err(|e| JwtError::Mint {
            detail: e.to_string(),
        })
}

/// The subject if Spindle can use it as a principal.
fn checked_subject(subject: Option<&str>) -> Result<&str, JwtError> {
    let subject = subject
        .filter(|s| !s.is_empty())
        .ok_or(JwtError::MissingSubject)?;
    if subject.chars().count() > MAX_SUBJECT_CHARS {
        return Err(JwtError::SubjectTooLong);
    }
    if subject.chars().any(char::is_control) {
        return Err(JwtError::SubjectHasControlChars);
    }
    Ok(subject)
}

/// The prefix of Spindle's entries in a `roles` array.
pub const ROLES_PREFIX: &str = "spindle:";

/// `role` decides when present, so a token Spindle minted means exactly
/// what it says; `roles` (an identity provider's list, naming other
/// applications' roles too) grants the highest Spindle role in it, and only
/// entries namespaced `spindle:<role>` count: an identity provider's own
/// realm-wide `admin` must not make its holder Spindle's admin.
fn role_of(claims: &RoleClaims) -> Result<Role, JwtError> {
    if let Some(name) = &claims.role {
        return Role::parse(name).ok_or_else(|| JwtError::UnknownRole { role: quoted(name) });
    }
    claims
        .roles
        .iter()
        .flatten()
        .filter_map(serde_json::Value::as_str)
        .filter_map(|r| r.strip_prefix(ROLES_PREFIX))
        .filter_map(Role::parse)
        .max()
        .ok_or(JwtError::NoRole)
}

/// Maps jwt-simple's refusals to ours. Its errors are `anyhow` values that
/// wrap either a [`JWTError`] or a decoding error (base64, JSON).
fn from_jwt_simple(error: jwt_simple::Error) -> JwtError {
    let Some(known) = error.downcast_ref::<JWTError>() else {
        return JwtError::Malformed {
            detail: shortened(&error.to_string(), 120),
        };
    };
    match known {
        JWTError::InvalidAuthenticationTag | JWTError::InvalidSignature => JwtError::BadSignature,
        JWTError::TokenHasExpired => JwtError::Expired,
        JWTError::TokenNotValidYet => JwtError::NotYetValid,
        JWTError::ClockDrift => JwtError::IssuedInFuture,
        JWTError::RequiredIssuerMissing => JwtError::MissingIssuer,
        JWTError::RequiredIssuerMismatch => JwtError::WrongIssuer,
        JWTError::RequiredAudienceMissing => JwtError::MissingAudience,
        JWTError::RequiredAudienceMismatch => JwtError::WrongAudience,
        other => JwtError::Malformed {
            detail: other.to_string(),
        },
    }
}

/// A piece of the token fit to quote in a log line.
fn quoted(s: &str) -> String {
    shortened(s, MAX_QUOTED_CHARS)
}

fn shortened(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_owned(),
    }
}

/// A PEM pasted into an environment variable often arrives on one line with
/// literal `\n`s; the PEM parsers need real line breaks.
fn unescape_newlines(pem: &str) -> String {
    if pem.contains('\n') {
        pem.to_owned()
    } else {
        pem.replace("\\n", "\n")
    }
}

#[cfg(test)]
mod tests {
    use jwt_simple::prelude::{
        ECDSAP256KeyPairLike, ES256KeyPair, Ed25519KeyPair, EdDSAKeyPairLike,
    };
    use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Encoder as _};
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    const SECRET: &str = "test-jwt-secret-0123456789abcdefghijk";
    const ISS: &str = "spindle";
    const AUD: &str = "spindle-api";
    const NOW: u64 = 1_800_000_000;

    fn hs256_config() -> JwtConfig {
        JwtConfig::new(Some(SECRET), None, ISS, AUD).unwrap()
    }

    /// Claims that pass every check; tests take away or change one thing.
    fn good_claims() -> Value {
        json!({
            "sub": "alice@example.com",
            "role": "operator",
            "iss": ISS,
            "aud": AUD,
            "iat": NOW,
            "nbf": NOW,
            "exp": NOW + 3600,
        })
    }

    fn without(mut claims: Value, key: &str) -> Value {
        claims.as_object_mut().unwrap().remove(key);
        claims
    }

    fn with(mut claims: Value, key: &str, value: Value) -> Value {
        claims[key] = value;
        claims
    }

    fn b64(bytes: impl AsRef<[u8]>) -> String {
        Base64UrlSafeNoPadding::encode_to_string(bytes).unwrap()
    }

    /// An HS256 token built by hand, so any header and claims can be sent.
    fn hs256_raw(key: &[u8], header: &Value, claims: &Value) -> String {
        let signing_input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
        let tag = HS256Key::from_bytes(key).authentication_tag(signing_input.as_bytes());
        format!("{signing_input}.{}", b64(tag))
    }

    fn hs256(claims: &Value) -> String {
        let header = json!({"alg": "HS256", "typ": "JWT"});
        hs256_raw(SECRET.as_bytes(), &header, claims)
    }

    type AnyClaims = JWTClaims<serde_json::Map<String, Value>>;

    fn es256(key: &ES256KeyPair, claims: &Value) -> String {
        key.sign(serde_json::from_value::<AnyClaims>(claims.clone()).unwrap())
            .unwrap()
    }

    fn eddsa(key: &Ed25519KeyPair, claims: &Value) -> String {
        key.sign(serde_json::from_value::<AnyClaims>(claims.clone()).unwrap())
            .unwrap()
    }

    /// Verifies expecting a refusal, and checks the message leaks no key.
    fn refused(config: &JwtConfig, token: &str, now_s: u64) -> JwtError {
        let err = config.verify(token, now_s).unwrap_err();
        let message = err.to_string();
        assert!(!message.contains(SECRET), "{message}");
        assert!(!message.contains("BEGIN"), "{message}");
        err
    }

    fn flip_char_at(token: &str, index: usize) -> String {
        let mut bytes = token.as_bytes().to_vec();
        bytes[index] = if bytes[index] == b'A' { b'B' } else { b'A' };
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn minted_hs256_token_verifies() {
        let token = mint_hs256(SECRET, "alice", Role::Approver, ISS, AUD, 600, NOW).unwrap();
        let claims = hs256_config().verify(&token, NOW + 10).unwrap();
        assert_eq!(
            claims,
            TokenClaims {
                subject: "alice".into(),
                role: Role::Approver,
                expires_at_s: NOW + 600,
            }
        );
    }

    #[test]
    fn hand_built_hs256_token_verifies() {
        let claims = hs256_config().verify(&hs256(&good_claims()), NOW).unwrap();
        assert_eq!(claims.subject, "alice@example.com");
        assert_eq!(claims.role, Role::Operator);
        assert_eq!(claims.expires_at_s, NOW + 3600);
    }

    #[test]
    fn es256_token_verifies() {
        let key = ES256KeyPair::generate();
        let pem = key.public_key().to_pem().unwrap();
        let config = JwtConfig::new(None, Some(&pem), ISS, AUD).unwrap();
        let claims = config.verify(&es256(&key, &good_claims()), NOW).unwrap();
        assert_eq!(claims.role, Role::Operator);
        assert_eq!(claims.subject, "alice@example.com");
        let debug = format!("{config:?}");
        assert!(
            debug.contains("ES256") && !debug.contains("BEGIN"),
            "{debug}"
        );
    }

    #[test]
    fn eddsa_token_verifies() {
        let key = Ed25519KeyPair::generate();
        let pem = key.public_key().to_pem();
        let config = JwtConfig::new(None, Some(&pem), ISS, AUD).unwrap();
        let claims = config.verify(&eddsa(&key, &good_claims()), NOW).unwrap();
        assert_eq!(claims.role, Role::Operator);
        assert!(format!("{config:?}").contains("EdDSA"));
    }

    #[test]
    fn a_token_from_another_key_of_the_same_type_is_refused() {
        let config = hs256_config();
        let other = hs256_raw(
            b"another-secret-0123456789abcdefghijklmn",
            &json!({"alg": "HS256"}),
            &good_claims(),
        );
        assert_eq!(refused(&config, &other, NOW), JwtError::BadSignature);

        let key = ES256KeyPair::generate();
        let pem = key.public_key().to_pem().unwrap();
        let config = JwtConfig::new(None, Some(&pem), ISS, AUD).unwrap();
        let other = es256(&ES256KeyPair::generate(), &good_claims());
        assert_eq!(refused(&config, &other, NOW), JwtError::BadSignature);
    }

    #[test]
    fn expiry_has_clock_skew_of_grace_and_no_more() {
        let config = hs256_config();
        let token = hs256(&with(good_claims(), "exp", json!(NOW + 100)));
        assert!(config.verify(&token, NOW + 100).is_ok());
        assert!(config.verify(&token, NOW + 100 + CLOCK_SKEW_S).is_ok());
        assert_eq!(
            refused(&config, &token, NOW + 100 + CLOCK_SKEW_S + 1),
            JwtError::Expired
        );
        assert_eq!(refused(&config, &token, NOW + 10_000), JwtError::Expired);
    }

    #[test]
    fn not_before_has_clock_skew_of_grace_and_no_more() {
        let config = hs256_config();
        let early = hs256(&with(good_claims(), "nbf", json!(NOW + CLOCK_SKEW_S)));
        assert!(config.verify(&early, NOW).is_ok());
        let too_early = hs256(&with(good_claims(), "nbf", json!(NOW + CLOCK_SKEW_S + 1)));
        assert_eq!(refused(&config, &too_early, NOW), JwtError::NotYetValid);
    }

    #[test]
    fn issued_in_the_future_is_refused() {
        let token = hs256(&with(good_claims(), "iat", json!(NOW + CLOCK_SKEW_S + 1)));
        assert_eq!(
            refused(&hs256_config(), &token, NOW),
            JwtError::IssuedInFuture
        );
    }

    #[test]
    fn missing_expiry_is_refused() {
        let token = hs256(&without(good_claims(), "exp"));
        assert_eq!(
            refused(&hs256_config(), &token, NOW),
            JwtError::MissingExpiry
        );
        let null = hs256(&with(good_claims(), "exp", Value::Null));
        assert!(matches!(
            refused(&hs256_config(), &null, NOW),
            JwtError::Malformed { .. }
        ));
    }

    #[test]
    fn issuer_must_be_present_and_match() {
        let config = hs256_config();
        let wrong = hs256(&with(good_claims(), "iss", json!("someone-else")));
        assert_eq!(refused(&config, &wrong, NOW), JwtError::WrongIssuer);
        let missing = hs256(&without(good_claims(), "iss"));
        assert_eq!(refused(&config, &missing, NOW), JwtError::MissingIssuer);
    }

    #[test]
    fn audience_must_be_present_and_include_ours() {
        let config = hs256_config();
        let wrong = hs256(&with(good_claims(), "aud", json!("another-api")));
        assert_eq!(refused(&config, &wrong, NOW), JwtError::WrongAudience);
        let wrong_list = hs256(&with(good_claims(), "aud", json!(["a", "b"])));
        assert_eq!(refused(&config, &wrong_list, NOW), JwtError::WrongAudience);
        let empty_list = hs256(&with(good_claims(), "aud", json!([])));
        assert_eq!(refused(&config, &empty_list, NOW), JwtError::WrongAudience);
        let missing = hs256(&without(good_claims(), "aud"));
        assert_eq!(refused(&config, &missing, NOW), JwtError::MissingAudience);

        let among_others = hs256(&with(good_claims(), "aud", json!(["other", AUD])));
        assert!(config.verify(&among_others, NOW).is_ok());
    }

    #[test]
    fn a_tampered_token_is_refused() {
        let config = hs256_config();
        let token = hs256(&good_claims());
        let payload_at = token.find('.').unwrap() + 5;
        let signature_at = token.rfind('.').unwrap() + 10;
        for tampered in [
            flip_char_at(&token, payload_at),
            flip_char_at(&token, signature_at),
        ] {
            assert_ne!(tampered, token);
            assert_eq!(refused(&config, &tampered, NOW), JwtError::BadSignature);
        }

        // Raising the role in the payload but keeping the signature.
        let parts: Vec<&str> = token.split('.').collect();
        let admin = with(good_claims(), "role", json!("admin"));
        let forged = format!("{}.{}.{}", parts[0], b64(admin.to_string()), parts[2]);
        assert_eq!(refused(&config, &forged, NOW), JwtError::BadSignature);
        let unsigned = format!("{}.{}.", parts[0], parts[1]);
        assert!(config.verify(&unsigned, NOW).is_err());
    }

    #[test]
    fn a_token_for_an_algorithm_without_a_key_is_refused() {
        let key = ES256KeyPair::generate();
        let pem = key.public_key().to_pem().unwrap();
        let es_only = JwtConfig::new(None, Some(&pem), ISS, AUD).unwrap();
        assert_eq!(
            refused(&es_only, &hs256(&good_claims()), NOW),
            JwtError::AlgorithmNotConfigured { alg: "HS256" }
        );
        let ed = eddsa(&Ed25519KeyPair::generate(), &good_claims());
        assert_eq!(
            refused(&es_only, &ed, NOW),
            JwtError::AlgorithmNotConfigured { alg: "EdDSA" }
        );
        assert_eq!(
            refused(&hs256_config(), &es256(&key, &good_claims()), NOW),
            JwtError::AlgorithmNotConfigured { alg: "ES256" }
        );
    }

    #[test]
    fn hmac_keyed_with_the_public_key_is_refused() {
        // The classic confusion: the attacker knows the public key and MACs
        // a token with its PEM text, hoping the verifier uses it as a secret.
        let key = ES256KeyPair::generate();
        let pem = key.public_key().to_pem().unwrap();
        let header = json!({"alg": "HS256", "typ": "JWT"});
        let admin = with(good_claims(), "role", json!("admin"));
        let forged = hs256_raw(pem.as_bytes(), &header, &admin);

        let es_only = JwtConfig::new(None, Some(&pem), ISS, AUD).unwrap();
        assert_eq!(
            refused(&es_only, &forged, NOW),
            JwtError::AlgorithmNotConfigured { alg: "HS256" }
        );
        let both = JwtConfig::new(Some(SECRET), Some(&pem), ISS, AUD).unwrap();
        assert_eq!(refused(&both, &forged, NOW), JwtError::BadSignature);
        // Relabelled as ES256, the MAC is no P-256 signature.
        let relabelled = hs256_raw(pem.as_bytes(), &json!({"alg": "ES256"}), &admin);
        assert!(matches!(
            refused(&both, &relabelled, NOW),
            JwtError::BadSignature | JwtError::Malformed { .. }
        ));
    }

    #[test]
    fn unsigned_and_unsupported_algorithms_are_refused() {
        let payload = b64(good_claims().to_string());
        let configs = [
            hs256_config(),
            JwtConfig::new(
                Some(SECRET),
                Some(&ES256KeyPair::generate().public_key().to_pem().unwrap()),
                ISS,
                AUD,
            )
            .unwrap(),
        ];
        for alg in [
            "none", "None", "NONE", "HS512", "RS256", "PS256", "ES384", "",
        ] {
            let header = b64(json!({"alg": alg, "typ": "JWT"}).to_string());
            for token in [
                format!("{header}.{payload}."),
                format!("{header}.{payload}.{}", b64("signature")),
            ] {
                for config in &configs {
                    assert_eq!(
                        refused(config, &token, NOW),
                        JwtError::UnsupportedAlgorithm { alg: alg.into() }
                    );
                }
            }
        }
        let no_alg = format!("{}.{payload}.", b64(json!({"typ": "JWT"}).to_string()));
        assert!(matches!(
            refused(&hs256_config(), &no_alg, NOW),
            JwtError::Malformed { .. }
        ));
    }

    #[test]
    fn roles_array_grants_the_highest_spindle_role() {
        let config = hs256_config();
        let claims = without(good_claims(), "role");
        let roles = json!([
            "spindle:viewer",
            "billing-admin",
            "spindle:approver",
            7,
            null,
            "spindle:Admin",
            "admin",
            "spindle:operator"
        ]);
        let token = hs256(&with(claims.clone(), "roles", roles));
        assert_eq!(config.verify(&token, NOW).unwrap().role, Role::Approver);

        let token = hs256(&with(
            claims.clone(),
            "roles",
            json!(["spindle:admin", "spindle:viewer"]),
        ));
        assert_eq!(config.verify(&token, NOW).unwrap().role, Role::Admin);

        // Another application's roles, however named, grant nothing.
        let foreign = hs256(&with(
            claims.clone(),
            "roles",
            json!(["root", "admin", "viewer"]),
        ));
        assert_eq!(refused(&config, &foreign, NOW), JwtError::NoRole);
        let empty = hs256(&with(claims.clone(), "roles", json!([])));
        assert_eq!(refused(&config, &empty, NOW), JwtError::NoRole);
        assert_eq!(refused(&config, &hs256(&claims), NOW), JwtError::NoRole);
    }

    #[test]
    fn role_claim_decides_over_roles() {
        let claims = with(good_claims(), "role", json!("viewer"));
        let token = hs256(&with(claims, "roles", json!(["admin"])));
        assert_eq!(
            hs256_config().verify(&token, NOW).unwrap().role,
            Role::Viewer
        );
    }

    #[test]
    fn unknown_role_is_refused() {
        let config = hs256_config();
        for name in ["root", "Admin", "", " admin"] {
            let token = hs256(&with(good_claims(), "role", json!(name)));
            assert_eq!(
                refused(&config, &token, NOW),
                JwtError::UnknownRole { role: name.into() }
            );
        }
        // Even when `roles` would name a good one: `role` decides.
        let claims = with(good_claims(), "role", json!("root"));
        let token = hs256(&with(claims, "roles", json!(["admin"])));
        assert!(matches!(
            refused(&config, &token, NOW),
            JwtError::UnknownRole { .. }
        ));
        let not_a_string = hs256(&with(good_claims(), "role", json!(3)));
        assert!(matches!(
            refused(&config, &not_a_string, NOW),
            JwtError::Malformed { .. }
        ));
    }

    #[test]
    fn subject_must_be_present_short_and_printable() {
        let config = hs256_config();
        let missing = hs256(&without(good_claims(), "sub"));
        assert_eq!(refused(&config, &missing, NOW), JwtError::MissingSubject);
        let empty = hs256(&with(good_claims(), "sub", json!("")));
        assert_eq!(refused(&config, &empty, NOW), JwtError::MissingSubject);

        let longest = "é".repeat(MAX_SUBJECT_CHARS);
        let token = hs256(&with(good_claims(), "sub", json!(longest)));
        assert_eq!(config.verify(&token, NOW).unwrap().subject, longest);
        let too_long = hs256(&with(good_claims(), "sub", json!(format!("{longest}x"))));
        assert_eq!(refused(&config, &too_long, NOW), JwtError::SubjectTooLong);

        let forged_log_line = hs256(&with(good_claims(), "sub", json!("bob\nadmin logged in")));
        assert_eq!(
            refused(&config, &forged_log_line, NOW),
            JwtError::SubjectHasControlChars
        );
    }

    #[test]
    fn overlong_token_is_refused_before_parsing() {
        let padding = "x".repeat(MAX_TOKEN_BYTES);
        let token = hs256(&with(good_claims(), "padding", json!(padding)));
        assert_eq!(
            refused(&hs256_config(), &token, NOW),
            JwtError::TooLong { len: token.len() }
        );
    }

    #[test]
    fn an_unconfigured_verifier_refuses_everything() {
        let config = JwtConfig::new(None, Some("  "), "", "").unwrap();
        assert!(!config.enabled());
        let config = JwtConfig::new(Some(""), None, "", "").unwrap();
        assert!(!config.enabled());
        assert_eq!(
            refused(&config, &hs256(&good_claims()), NOW),
            JwtError::Disabled
        );
        assert!(hs256_config().enabled());
    }

    #[test]
    fn config_refuses_a_bad_public_key_clearly() {
        let private_pem = ES256KeyPair::generate().to_pem().unwrap();
        let truncated = {
            let pem = ES256KeyPair::generate().public_key().to_pem().unwrap();
            pem.replacen("\n", "\nAAAA", 1)
        };
        for pem in [
            "not a pem at all",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            &truncated,
            &private_pem,
        ] {
            let err = JwtConfig::new(None, Some(pem), ISS, AUD).unwrap_err();
            assert_eq!(err, JwtConfigError::InvalidPublicKey);
            let message = err.to_string();
            assert!(
                message.contains("SPKI PEM") && !message.contains("AAAA"),
                "{message}"
            );
        }
    }

    #[test]
    fn config_accepts_a_pem_pasted_on_one_line() {
        let key = Ed25519KeyPair::generate();
        let one_line = key.public_key().to_pem().trim().replace('\n', "\\n");
        let config = JwtConfig::new(None, Some(&one_line), ISS, AUD).unwrap();
        assert!(config.verify(&eddsa(&key, &good_claims()), NOW).is_ok());
    }

    #[test]
    fn config_refuses_a_weak_secret_and_an_empty_issuer_or_audience() {
        let short = &SECRET[..MIN_HS256_SECRET_BYTES - 1];
        let err = JwtConfig::new(Some(short), None, ISS, AUD).unwrap_err();
        assert_eq!(err, JwtConfigError::WeakSecret);
        assert!(!err.to_string().contains(short));
        assert_eq!(
            JwtConfig::new(Some(SECRET), None, "", AUD).unwrap_err(),
            JwtConfigError::EmptyIssuer
        );
        assert_eq!(
            JwtConfig::new(Some(SECRET), None, ISS, "").unwrap_err(),
            JwtConfigError::EmptyAudience
        );
        let debug = format!("{:?}", hs256_config());
        assert!(!debug.contains(SECRET), "{debug}");
    }

    #[test]
    fn mint_refuses_what_verify_would() {
        let mint = |secret, subject, lifetime, now| {
            mint_hs256(secret, subject, Role::Admin, ISS, AUD, lifetime, now)
        };
        assert_eq!(mint("short", "a", 60, NOW), Err(JwtError::WeakSecret));
        assert_eq!(mint(SECRET, "", 60, NOW), Err(JwtError::MissingSubject));
        assert_eq!(
            mint(SECRET, "a", u64::MAX, NOW),
            Err(JwtError::TimeOutOfRange)
        );
        assert_eq!(
            mint_hs256(SECRET, "a", Role::Admin, "", AUD, 60, NOW),
            Err(JwtError::MissingIssuer)
        );
        let token = mint(SECRET, "a", DEFAULT_LIFETIME_S, NOW).unwrap();
        let config = hs256_config();
        assert!(config.verify(&token, NOW + DEFAULT_LIFETIME_S).is_ok());
        assert_eq!(
            refused(&config, &token, NOW + DEFAULT_LIFETIME_S + CLOCK_SKEW_S + 1),
            JwtError::Expired
        );
        let other_audience = mint_hs256(SECRET, "a", Role::Admin, ISS, "x", 60, NOW).unwrap();
        assert_eq!(
            refused(&config, &other_audience, NOW),
            JwtError::WrongAudience
        );
    }

    #[test]
    fn absurd_times_do_not_panic() {
        let config = hs256_config();
        let token = hs256(&good_claims());
        assert_eq!(refused(&config, &token, u64::MAX), JwtError::TimeOutOfRange);
        // `iat` is checked before `nbf`.
        assert_eq!(refused(&config, &token, 0), JwtError::IssuedInFuture);

        // jwt-simple saturates timestamps at 2^32 - 1 s rather than wrapping,
        // so an absurd `exp` is merely far away, never in the past.
        for exp in [json!(u64::MAX), json!(1e300)] {
            let token = hs256(&with(good_claims(), "exp", exp));
            assert_eq!(
                config.verify(&token, NOW).unwrap().expires_at_s,
                u32::MAX as u64
            );
        }
        let negative = hs256(&with(good_claims(), "exp", json!(-1)));
        assert!(matches!(
            refused(&config, &negative, NOW),
            JwtError::Malformed { .. }
        ));
        let never = hs256(&with(good_claims(), "nbf", json!(u64::MAX)));
        assert_eq!(refused(&config, &never, NOW), JwtError::NotYetValid);
        let future = hs256(&with(good_claims(), "iat", json!(1.5e19)));
        assert_eq!(refused(&config, &future, NOW), JwtError::IssuedInFuture);
    }

    fn b64_part() -> impl Strategy<Value = String> {
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(b64)
    }

    proptest! {
        #[test]
        fn garbage_never_panics_and_is_refused(token in ".{0,2048}") {
            prop_assert!(hs256_config().verify(&token, NOW).is_err());
        }

        #[test]
        fn token_alphabet_garbage_never_panics_and_is_refused(token in "[A-Za-z0-9_.=-]{0,2048}") {
            prop_assert!(hs256_config().verify(&token, NOW).is_err());
        }

        #[test]
        fn three_random_parts_never_panic_and_are_refused(
            header in b64_part(), claims in b64_part(), tag in b64_part(),
        ) {
            let token = format!("{header}.{claims}.{tag}");
            prop_assert!(hs256_config().verify(&token, NOW).is_err());
        }

        #[test]
        fn random_claims_under_a_real_header_never_panic(
            claims in "\\{.{0,300}\\}", alg in "(HS256|ES256|EdDSA|none)",
        ) {
            let header = b64(json!({"alg": alg}).to_string());
            let token = format!("{header}.{}.{}", b64(claims), b64([0u8; 64]));
            prop_assert!(hs256_config().verify(&token, NOW).is_err());
        }
    }
}
