//! Verifying that an inbound webhook delivery comes from its source.
//!
//! A source proves a delivery is its own in one of two ways: an HMAC of the
//! body (GitHub, Stripe, Slack and most others), or a shared secret sent as-is
//! in a header (Builder.io, whose webhooks can only carry custom headers).
//! [`Verification`] describes the scheme as data, so a new source is
//! configuration rather than code; [`Verification::verify`] checks a delivery
//! against one or two active secrets (two while a secret is rotated).
//!
//! Everything here runs before the body is parsed: a forged delivery never
//! reaches the JSON parser. Comparisons are constant-time.
//!
//! Hostile headers are expected. Header values are bounded
//! ([`MAX_HEADER_LEN`]), at most [`MAX_CANDIDATES`] signatures are tried, and
//! timestamps must be plain unsigned integers of at most
//! [`MAX_TIMESTAMP_DIGITS`] digits. The outcome for a timestamp is:
//! absent or empty → [`Rejection::MissingTimestamp`]; present but not such an
//! integer, given twice, or outside the tolerance either way →
//! [`Rejection::StaleTimestamp`]. A timestamp is only compared with the clock
//! once the signature has matched, so `stale-timestamp` always means an
//! authentic but old (or replayed, or skewed) delivery, never a forgery.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Sha256, Sha512};

use crate::error::{FieldError, ValidationError};

/// Longest header value looked at, in bytes; longer ones are refused unread.
pub const MAX_HEADER_LEN: usize = 8192;
/// Most signatures tried from one header (Stripe style lists several).
pub const MAX_CANDIDATES: usize = 8;
/// Most digits of a timestamp: unix seconds have 10 until the year 2286.
pub const MAX_TIMESTAMP_DIGITS: usize = 12;
/// Default accepted clock distance, in seconds (Stripe's and Slack's).
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;
/// Largest accepted clock distance, in seconds: one day.
pub const MAX_TOLERANCE_SECS: u64 = 86_400;
/// Longest header name accepted in a scheme.
pub const MAX_HEADER_NAME_LEN: usize = 64;
/// Longest prefix accepted in a scheme.
pub const MAX_PREFIX_LEN: usize = 32;
/// Longest `signed_template`.
pub const MAX_TEMPLATE_LEN: usize = 256;
/// Longest `signature_key` / `timestamp_key`.
pub const MAX_PAIR_KEY_LEN: usize = 16;
/// The header Spindle suggests for Builder.io's token.
pub const BUILDER_HEADER: &str = "x-spindle-webhook-token";

const DEFAULT_TEMPLATE: &str = "{timestamp}.{body}";
const TIMESTAMP: &str = "{timestamp}";
const BODY: &str = "{body}";

/// How a source proves that a delivery is its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Verification {
    /// An HMAC of the body (or of timestamp and body) in a header.
    Hmac(HmacScheme),
    /// A shared secret sent as-is in a header (Builder.io's custom headers).
    Token {
        /// The header carrying the secret, matched case-insensitively.
        header: String,
        /// What precedes the secret in the header value, e.g. `Bearer `.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        prefix: String,
    },
}

/// An HMAC signature scheme.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HmacScheme {
    /// The header carrying the signature, e.g. `x-hub-signature-256`; matched
    /// case-insensitively.
    pub header: String,
    /// What precedes each signature, e.g. `sha256=` or `v0=`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// The MAC.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// How the MAC is written in the header.
    #[serde(default)]
    pub encoding: Encoding,
    /// What the MAC covers.
    #[serde(default)]
    pub signed: Signed,
    /// Header holding the timestamp (Slack: `x-slack-request-timestamp`),
    /// when `signed` is `timestamp_body` and it is not inside the signature
    /// header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_header: Option<String>,
    /// Stripe style: the signature header is comma-separated `k=v` pairs and
    /// the signatures are the values of this key. Several may be present
    /// (Stripe sends more than one while it rotates): any may match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_key: Option<String>,
    /// Stripe style: the key of the timestamp among those pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_key: Option<String>,
    /// What is signed when `signed` is `timestamp_body`: `{timestamp}` and
    /// `{body}` are replaced (the body bytes verbatim). Stripe signs
    /// `{timestamp}.{body}` (the default), Slack `v0:{timestamp}:{body}`.
    #[serde(
        default = "default_template",
        skip_serializing_if = "is_default_template"
    )]
    pub signed_template: String,
    /// Accepted distance between the timestamp (unix seconds) and now, either
    /// way.
    #[serde(default = "default_tolerance")]
    pub tolerance_secs: u64,
}

fn default_template() -> String {
    DEFAULT_TEMPLATE.to_owned()
}

fn is_default_template(t: &str) -> bool {
    t == DEFAULT_TEMPLATE
}

fn default_tolerance() -> u64 {
    DEFAULT_TOLERANCE_SECS
}

/// The MAC of an [`HmacScheme`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// HMAC-SHA256.
    #[default]
    HmacSha256,
    /// HMAC-SHA512.
    HmacSha512,
}

/// How a MAC is written in a header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// Hexadecimal; either case is accepted, lowercase is produced.
    #[default]
    Hex,
    /// Base64, standard alphabet, with padding.
    Base64,
}

/// What an [`HmacScheme`]'s MAC covers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signed {
    /// The body bytes only.
    #[default]
    Body,
    /// A timestamp and the body, laid out by `signed_template`; the timestamp
    /// must be recent.
    TimestampBody,
}

/// Why a delivery was refused.
///
/// [`Rejection::reason`] is the stable label used in problem documents and
/// metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The signature header (or, Stripe style, the signature key in it) is
    /// absent or empty.
    #[error("the delivery carries no signature")]
    MissingSignature,
    /// A signature is present but matches no active secret, or cannot be
    /// decoded.
    #[error("the delivery's signature does not match")]
    BadSignature,
    /// The scheme signs a timestamp and the delivery carries none.
    #[error("the delivery carries no timestamp")]
    MissingTimestamp,
    /// The timestamp is unreadable or outside the accepted window.
    #[error("the delivery's timestamp is unreadable or outside the accepted window")]
    StaleTimestamp,
}

impl Rejection {
    /// The stable label: `missing-signature`, `bad-signature`,
    /// `missing-timestamp` or `stale-timestamp`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingSignature => "missing-signature",
            Self::BadSignature => "bad-signature",
            Self::MissingTimestamp => "missing-timestamp",
            Self::StaleTimestamp => "stale-timestamp",
        }
    }
}

impl Verification {
    /// The scheme GitHub uses: `x-hub-signature-256: sha256=<hex>`, an
    /// HMAC-SHA256 of the body.
    pub fn github() -> Self {
        Self::Hmac(HmacScheme {
            header: "x-hub-signature-256".into(),
            prefix: "sha256=".into(),
            algorithm: Algorithm::HmacSha256,
            encoding: Encoding::Hex,
            signed: Signed::Body,
            timestamp_header: None,
            signature_key: None,
            timestamp_key: None,
            signed_template: default_template(),
            tolerance_secs: DEFAULT_TOLERANCE_SECS,
        })
    }

    /// Builder.io: the secret as-is in `header` (Builder.io lets users add
    /// custom headers to a webhook but does not sign it; Spindle suggests
    /// [`BUILDER_HEADER`]).
    pub fn builder(header: &str) -> Self {
        Self::Token {
            header: header.to_owned(),
            prefix: String::new(),
        }
    }

    /// Checks the scheme, reporting every problem with a JSON Pointer relative
    /// to the verification object (e.g. `/header`).
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut errors = Vec::new();
        match self {
            Self::Token { header, prefix } => {
                check_header_name("/header", header, &mut errors);
                check_prefix(prefix, &mut errors);
            }
            Self::Hmac(s) => s.check(&mut errors),
        }
        ValidationError::check(errors)
    }

    /// Verifies a delivery.
    ///
    /// `header(name)` looks a request header up case-insensitively (names
    /// are passed lowercased); `secrets` are the active secrets, any of which
    /// may match (empty secrets never do); `now_ms` is the clock. On success,
    /// returns the bytes that were signed — the body, or the rendered
    /// template — which a caller can hash as a delivery id when the source
    /// sends none.
    pub fn verify(
        &self,
        header: &dyn Fn(&str) -> Option<String>,
        body: &[u8],
        secrets: &[&[u8]],
        now_ms: u64,
    ) -> Result<Vec<u8>, Rejection> {
        match self {
            Self::Token {
                header: name,
                prefix,
            } => {
                let value = present(header, name).ok_or(Rejection::MissingSignature)?;
                if value.len() > MAX_HEADER_LEN {
                    return Err(Rejection::BadSignature);
                }
                let token = strip_prefix_ignore_case(&value, prefix)
                    .ok_or(Rejection::BadSignature)?
                    .trim();
                // Every secret is compared, so timing does not tell which one
                // (or whether any) was close.
                let mut ok = false;
                for secret in secrets.iter().filter(|s| !s.is_empty()) {
                    ok |= bytes_equal(token.as_bytes(), secret);
                }
                if ok {
                    Ok(body.to_vec())
                } else {
                    Err(Rejection::BadSignature)
                }
            }
            Self::Hmac(s) => s.verify(header, body, secrets, now_ms),
        }
    }

    /// The signature header value for `body` under `secret` (at
    /// `timestamp_secs`, for schemes that sign a timestamp): for tests and
    /// for tooling that sends deliveries.
    ///
    /// Stripe style gives `t=<ts>,v1=<sig>` (with the scheme's keys); a
    /// scheme with a `timestamp_header` gives the signature only, and the
    /// caller sends the timestamp header itself. A token scheme gives the
    /// prefix and the secret (read as UTF-8, lossily).
    pub fn sign(&self, secret: &[u8], body: &[u8], timestamp_secs: u64) -> String {
        match self {
            Self::Token { prefix, .. } => {
                format!("{prefix}{}", String::from_utf8_lossy(secret))
            }
            Self::Hmac(s) => s.sign(secret, body, timestamp_secs),
        }
    }
}

impl HmacScheme {
    fn check(&self, errors: &mut Vec<FieldError>) {
        check_header_name("/header", &self.header, errors);
        check_prefix(&self.prefix, errors);
        if let Some(h) = &self.timestamp_header {
            check_header_name("/timestamp_header", h, errors);
        }
        for (pointer, key) in [
            ("/signature_key", &self.signature_key),
            ("/timestamp_key", &self.timestamp_key),
        ] {
            if let Some(key) = key
                && (key.is_empty()
                    || key.len() > MAX_PAIR_KEY_LEN
                    || !key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
            {
                errors.push(FieldError::new(
                    pointer,
                    format!("must be 1 to {MAX_PAIR_KEY_LEN} of A-Z, a-z, 0-9, '_' and '-'"),
                ));
            }
        }
        if self.timestamp_key.is_some() && self.signature_key.is_none() {
            errors.push(FieldError::new(
                "/timestamp_key",
                "needs signature_key: only then is the header read as k=v pairs",
            ));
        }
        if self.signature_key.is_some() && self.signature_key == self.timestamp_key {
            errors.push(FieldError::new(
                "/timestamp_key",
                "must differ from signature_key",
            ));
        }
        match self.signed {
            Signed::TimestampBody => {
                match (&self.timestamp_header, &self.timestamp_key) {
                    (None, None) => errors.push(FieldError::new(
                        "/signed",
                        "timestamp_body needs timestamp_header or timestamp_key",
                    )),
                    (Some(_), Some(_)) => errors.push(FieldError::new(
                        "/timestamp_key",
                        "give timestamp_header or timestamp_key, not both",
                    )),
                    _ => {}
                }
                let t = &self.signed_template;
                if t.len() > MAX_TEMPLATE_LEN
                    || t.matches(TIMESTAMP).count() != 1
                    || t.matches(BODY).count() != 1
                {
                    errors.push(FieldError::new(
                        "/signed_template",
                        format!(
                            "must hold {TIMESTAMP} and {BODY} exactly once each, \
                             in at most {MAX_TEMPLATE_LEN} bytes"
                        ),
                    ));
                }
            }
            // These settings would be silently ignored; a scheme that names
            // them almost certainly meant timestamp_body.
            Signed::Body => {
                for (pointer, set) in [
                    ("/timestamp_header", self.timestamp_header.is_some()),
                    ("/timestamp_key", self.timestamp_key.is_some()),
                    (
                        "/signed_template",
                        !is_default_template(&self.signed_template),
                    ),
                ] {
                    if set {
                        errors.push(FieldError::new(
                            pointer,
                            "only used when signed is timestamp_body",
                        ));
                    }
                }
            }
        }
        if self.tolerance_secs == 0 || self.tolerance_secs > MAX_TOLERANCE_SECS {
            errors.push(FieldError::new(
                "/tolerance_secs",
                format!("must be between 1 and {MAX_TOLERANCE_SECS}"),
            ));
        }
    }

    fn verify(
        &self,
        header: &dyn Fn(&str) -> Option<String>,
        body: &[u8],
        secrets: &[&[u8]],
        now_ms: u64,
    ) -> Result<Vec<u8>, Rejection> {
        let value = present(header, &self.header).ok_or(Rejection::MissingSignature)?;
        if value.len() > MAX_HEADER_LEN {
            return Err(Rejection::BadSignature);
        }
        let mut candidates: Vec<&str> = Vec::new();
        let mut timestamp: Option<Option<&str>> = None; // Some(None): given twice
        match &self.signature_key {
            None => candidates.push(value.trim()),
            Some(sig_key) => {
                for (k, v) in value
                    .split(',')
                    .filter_map(|pair| pair.split_once('='))
                    .map(|(k, v)| (k.trim(), v.trim()))
                {
                    if k == sig_key && !v.is_empty() && candidates.len() < MAX_CANDIDATES {
                        candidates.push(v);
                    } else if self.timestamp_key.as_deref() == Some(k) {
                        timestamp = Some(match timestamp {
                            None => Some(v),
                            Some(_) => None,
                        });
                    }
                }
                if candidates.is_empty() {
                    return Err(Rejection::MissingSignature);
                }
            }
        }

        let (signed, ts) = match self.signed {
            Signed::Body => (body.to_vec(), None),
            Signed::TimestampBody => {
                let owned;
                let raw = match &self.timestamp_header {
                    Some(name) => {
                        owned = present(header, name);
                        owned.as_deref().map(Some)
                    }
                    None => timestamp,
                };
                let raw = match raw {
                    None => return Err(Rejection::MissingTimestamp),
                    Some(None) => return Err(Rejection::StaleTimestamp),
                    Some(Some(t)) => t.trim(),
                };
                if raw.is_empty() {
                    return Err(Rejection::MissingTimestamp);
                }
                let ts = parse_timestamp(raw).ok_or(Rejection::StaleTimestamp)?;
                (render(&self.signed_template, raw, body), Some(ts))
            }
        };

        let mut ok = false;
        for sig in candidates {
            let Some(sig) = strip_prefix_ignore_case(sig, &self.prefix) else {
                continue;
            };
            let Some(sig) = decode(self.encoding, sig.trim()) else {
                continue;
            };
            for secret in secrets.iter().filter(|s| !s.is_empty()) {
                ok |= self.algorithm.verify(secret, &signed, &sig);
            }
        }
        if !ok {
            return Err(Rejection::BadSignature);
        }
        if let Some(ts) = ts
            && (now_ms / 1000).abs_diff(ts) > self.tolerance_secs
        {
            return Err(Rejection::StaleTimestamp);
        }
        Ok(signed)
    }

    fn sign(&self, secret: &[u8], body: &[u8], timestamp_secs: u64) -> String {
        let ts = timestamp_secs.to_string();
        let signed = match self.signed {
            Signed::Body => body.to_vec(),
            Signed::TimestampBody => render(&self.signed_template, &ts, body),
        };
        let mac = self.algorithm.compute(secret, &signed);
        let sig = match self.encoding {
            Encoding::Hex => hex::encode(mac),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD.encode(mac),
        };
        let sig = format!("{}{sig}", self.prefix);
        match (&self.signature_key, &self.timestamp_key) {
            (Some(sk), Some(tk)) if self.signed == Signed::TimestampBody => {
                format!("{tk}={ts},{sk}={sig}")
            }
            (Some(sk), _) => format!("{sk}={sig}"),
            (None, _) => sig,
        }
    }
}

impl Algorithm {
    fn compute(self, key: &[u8], msg: &[u8]) -> Vec<u8> {
        match self {
            Self::HmacSha256 => {
                let mut m = <Hmac<Sha256>>::new_from_slice(key).expect("HMAC takes any key");
                m.update(msg);
                m.finalize().into_bytes().to_vec()
            }
            Self::HmacSha512 => {
                let mut m = <Hmac<Sha512>>::new_from_slice(key).expect("HMAC takes any key");
                m.update(msg);
                m.finalize().into_bytes().to_vec()
            }
        }
    }

    /// Constant-time check of `tag` (which must have the MAC's full length).
    fn verify(self, key: &[u8], msg: &[u8], tag: &[u8]) -> bool {
        match self {
            Self::HmacSha256 => {
                let mut m = <Hmac<Sha256>>::new_from_slice(key).expect("HMAC takes any key");
                m.update(msg);
                m.verify_slice(tag).is_ok()
            }
            Self::HmacSha512 => {
                let mut m = <Hmac<Sha512>>::new_from_slice(key).expect("HMAC takes any key");
                m.update(msg);
                m.verify_slice(tag).is_ok()
            }
        }
    }
}

/// The header's value, or `None` when absent or blank.
fn present(header: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    header(&name.to_ascii_lowercase()).filter(|v| !v.trim().is_empty())
}

/// `value` (leading whitespace aside) without `prefix`, compared ignoring
/// ASCII case: authentication schemes such as `Bearer` are case-insensitive
/// (RFC 9110 §11.1), and no signature prefix in use differs only by case.
fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let value = value.trim_start();
    let head = value.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        value.get(prefix.len()..)
    } else {
        None
    }
}

fn decode(encoding: Encoding, s: &str) -> Option<Vec<u8>> {
    match encoding {
        Encoding::Hex => hex::decode(s).ok(),
        Encoding::Base64 => base64::engine::general_purpose::STANDARD.decode(s).ok(),
    }
}

/// A plain unsigned integer of at most [`MAX_TIMESTAMP_DIGITS`] digits: no
/// sign, no fraction, no exponent, so every sender's rendering is the same.
fn parse_timestamp(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > MAX_TIMESTAMP_DIGITS || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `template` with `{timestamp}` and `{body}` replaced, as bytes (the body
/// need not be UTF-8).
fn render(template: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(template.len() + timestamp.len() + body.len());
    let mut rest = template;
    loop {
        let next = [(TIMESTAMP, rest.find(TIMESTAMP)), (BODY, rest.find(BODY))]
            .into_iter()
            .filter_map(|(p, at)| at.map(|at| (p, at)))
            .min_by_key(|&(_, at)| at);
        let Some((placeholder, at)) = next else {
            out.extend_from_slice(rest.as_bytes());
            return out;
        };
        out.extend_from_slice(&rest.as_bytes()[..at]);
        if placeholder == TIMESTAMP {
            out.extend_from_slice(timestamp.as_bytes());
        } else {
            out.extend_from_slice(body);
        }
        rest = &rest[at + placeholder.len()..];
    }
}

/// Constant-time equality that does not reveal the lengths either: both
/// sides are MACed under one fixed key and the tags compared in constant
/// time (as [`crate::sign::secrets_equal`] does for strings).
fn bytes_equal(a: &[u8], b: &[u8]) -> bool {
    let tag = |s: &[u8]| {
        let mut m =
            <Hmac<Sha256>>::new_from_slice(b"spindle-webhook-compare").expect("HMAC takes any key");
        m.update(s);
        m.finalize()
    };
    tag(a) == tag(b)
}

/// Header names are HTTP tokens (RFC 9110 §5.6.2).
fn check_header_name(pointer: &str, name: &str, errors: &mut Vec<FieldError>) {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || name.len() > MAX_HEADER_NAME_LEN || !name.bytes().all(tchar) {
        errors.push(FieldError::new(
            pointer,
            format!(
                "must be an HTTP header name: 1 to {MAX_HEADER_NAME_LEN} letters, digits \
                 or !#$%&'*+-.^_`|~"
            ),
        ));
    }
}

fn check_prefix(prefix: &str, errors: &mut Vec<FieldError>) {
    if prefix.len() > MAX_PREFIX_LEN || !prefix.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        errors.push(FieldError::new(
            "/prefix",
            format!("must be at most {MAX_PREFIX_LEN} printable ASCII characters"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const NOW_MS: u64 = 1_700_000_000_000;
    const NOW: u64 = NOW_MS / 1000;

    /// A header lookup over `pairs`, case-insensitive as the caller's is.
    fn headers(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_owned()))
            .collect();
        move |name: &str| map.get(&name.to_ascii_lowercase()).cloned()
    }

    fn check(
        v: &Verification,
        pairs: &[(&str, &str)],
        body: &[u8],
        secrets: &[&[u8]],
    ) -> Result<Vec<u8>, Rejection> {
        v.verify(&headers(pairs), body, secrets, NOW_MS)
    }

    fn hmac(header: &str) -> HmacScheme {
        HmacScheme {
            header: header.into(),
            prefix: String::new(),
            algorithm: Algorithm::HmacSha256,
            encoding: Encoding::Hex,
            signed: Signed::Body,
            timestamp_header: None,
            signature_key: None,
            timestamp_key: None,
            signed_template: default_template(),
            tolerance_secs: DEFAULT_TOLERANCE_SECS,
        }
    }

    fn stripe() -> Verification {
        Verification::Hmac(HmacScheme {
            signed: Signed::TimestampBody,
            signature_key: Some("v1".into()),
            timestamp_key: Some("t".into()),
            ..hmac("stripe-signature")
        })
    }

    fn slack() -> Verification {
        Verification::Hmac(HmacScheme {
            prefix: "v0=".into(),
            signed: Signed::TimestampBody,
            timestamp_header: Some("x-slack-request-timestamp".into()),
            signed_template: "v0:{timestamp}:{body}".into(),
            ..hmac("x-slack-signature")
        })
    }

    fn sha512_base64() -> Verification {
        Verification::Hmac(HmacScheme {
            algorithm: Algorithm::HmacSha512,
            encoding: Encoding::Base64,
            ..hmac("x-signature")
        })
    }

    const GH_SECRET: &[u8] = b"It's a Secret to Everybody";
    const GH_BODY: &[u8] = b"Hello, World!";
    const GH_SIG: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn githubs_published_example_verifies() {
        let gh = Verification::github();
        let got = check(
            &gh,
            &[("X-Hub-Signature-256", GH_SIG)],
            GH_BODY,
            &[GH_SECRET],
        );
        assert_eq!(got.unwrap(), GH_BODY);
        assert_eq!(gh.sign(GH_SECRET, GH_BODY, 0), GH_SIG);
        // Uppercase hex is the same signature.
        let upper = format!("sha256={}", GH_SIG["sha256=".len()..].to_ascii_uppercase());
        assert!(
            check(
                &gh,
                &[("x-hub-signature-256", &upper)],
                GH_BODY,
                &[GH_SECRET]
            )
            .is_ok()
        );
    }

    #[test]
    fn any_one_byte_change_to_githubs_example_fails() {
        let gh = Verification::github();
        let sig = [("x-hub-signature-256", GH_SIG)];
        assert_eq!(
            check(&gh, &sig, b"Hello, World?", &[GH_SECRET]),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            check(&gh, &sig, GH_BODY, &[b"It's a Secret to Everybodz"]),
            Err(Rejection::BadSignature)
        );
        let flipped = GH_SIG.replace("e17", "e18");
        assert_eq!(
            check(
                &gh,
                &[("x-hub-signature-256", &flipped)],
                GH_BODY,
                &[GH_SECRET]
            ),
            Err(Rejection::BadSignature)
        );
        let truncated = &GH_SIG[..GH_SIG.len() - 2];
        assert_eq!(
            check(
                &gh,
                &[("x-hub-signature-256", truncated)],
                GH_BODY,
                &[GH_SECRET]
            ),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn githubs_header_missing_or_with_the_wrong_prefix_is_refused() {
        let gh = Verification::github();
        assert_eq!(
            check(&gh, &[], GH_BODY, &[GH_SECRET]),
            Err(Rejection::MissingSignature)
        );
        assert_eq!(
            check(&gh, &[("x-hub-signature-256", "  ")], GH_BODY, &[GH_SECRET]),
            Err(Rejection::MissingSignature)
        );
        // GitHub's older SHA-1 header does not stand in for the SHA-256 one.
        assert_eq!(
            check(&gh, &[("x-hub-signature", GH_SIG)], GH_BODY, &[GH_SECRET]),
            Err(Rejection::MissingSignature)
        );
        let sha1 = GH_SIG.replace("sha256=", "sha1=");
        assert_eq!(
            check(
                &gh,
                &[("x-hub-signature-256", &sha1)],
                GH_BODY,
                &[GH_SECRET]
            ),
            Err(Rejection::BadSignature)
        );
        let bare = GH_SIG.trim_start_matches("sha256=");
        assert_eq!(
            check(&gh, &[("x-hub-signature-256", bare)], GH_BODY, &[GH_SECRET]),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            check(&gh, &[("x-hub-signature-256", GH_SIG)], GH_BODY, &[]),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn during_rotation_either_secret_verifies_and_no_other() {
        let gh = Verification::github();
        let (old, new, other): (&[u8], &[u8], &[u8]) = (b"old-secret", b"new-secret", b"other");
        for secret in [old, new] {
            let sig = gh.sign(secret, b"{}", 0);
            assert!(check(&gh, &[("x-hub-signature-256", &sig)], b"{}", &[old, new]).is_ok());
        }
        let sig = gh.sign(other, b"{}", 0);
        assert_eq!(
            check(&gh, &[("x-hub-signature-256", &sig)], b"{}", &[old, new]),
            Err(Rejection::BadSignature)
        );
        // An empty secret never matches, even a MAC made with the empty key.
        let sig = gh.sign(b"", b"{}", 0);
        assert_eq!(
            check(&gh, &[("x-hub-signature-256", &sig)], b"{}", &[b""]),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn stripe_style_round_trips_and_refuses_stale_and_future_timestamps() {
        let s = stripe();
        s.validate().unwrap();
        let body = br#"{"id":"evt_1","type":"charge.succeeded"}"#;
        let sig = s.sign(b"whsec", body, NOW);
        assert!(sig.starts_with(&format!("t={NOW},v1=")), "{sig}");
        let signed = check(&s, &[("Stripe-Signature", &sig)], body, &[b"whsec"]).unwrap();
        assert_eq!(signed, [format!("{NOW}.").as_bytes(), body].concat());

        for ts in [NOW - 301, NOW + 301] {
            let sig = s.sign(b"whsec", body, ts);
            assert_eq!(
                check(&s, &[("stripe-signature", &sig)], body, &[b"whsec"]),
                Err(Rejection::StaleTimestamp)
            );
        }
        for ts in [NOW - 300, NOW + 300] {
            let sig = s.sign(b"whsec", body, ts);
            assert!(check(&s, &[("stripe-signature", &sig)], body, &[b"whsec"]).is_ok());
        }
        // A forged delivery is a bad signature whatever its timestamp says.
        let sig = s.sign(b"other", body, NOW - 1000);
        assert_eq!(
            check(&s, &[("stripe-signature", &sig)], body, &[b"whsec"]),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn stripe_style_accepts_any_of_several_signatures() {
        let s = stripe();
        let body = b"{}";
        let good = s.sign(b"whsec", body, NOW);
        let good_v1 = good.split_once(",v1=").unwrap().1;
        let bad_v1 = s
            .sign(b"nope", body, NOW)
            .split_once(",v1=")
            .unwrap()
            .1
            .to_owned();
        let header = format!("t={NOW}, v1={bad_v1}, v0=abc, v1={good_v1}");
        assert!(check(&s, &[("stripe-signature", &header)], body, &[b"whsec"]).is_ok());
        // Only the first MAX_CANDIDATES are tried.
        let padding = format!(",v1={bad_v1}").repeat(MAX_CANDIDATES);
        let header = format!("t={NOW}{padding},v1={good_v1}");
        assert_eq!(
            check(&s, &[("stripe-signature", &header)], body, &[b"whsec"]),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn stripe_style_missing_parts() {
        let s = stripe();
        let body = b"{}";
        let good = s.sign(b"whsec", body, NOW);
        let v1 = good.split_once(',').unwrap().1;
        assert_eq!(
            check(
                &s,
                &[("stripe-signature", &format!("t={NOW}"))],
                body,
                &[b"whsec"]
            ),
            Err(Rejection::MissingSignature)
        );
        assert_eq!(
            check(
                &s,
                &[("stripe-signature", &format!("t={NOW},v1="))],
                body,
                &[b"whsec"]
            ),
            Err(Rejection::MissingSignature)
        );
        assert_eq!(
            check(&s, &[("stripe-signature", v1)], body, &[b"whsec"]),
            Err(Rejection::MissingTimestamp)
        );
        for t in ["t=", "t= "] {
            assert_eq!(
                check(
                    &s,
                    &[("stripe-signature", &format!("{t},{v1}"))],
                    body,
                    &[b"whsec"]
                ),
                Err(Rejection::MissingTimestamp)
            );
        }
        for t in [
            "t=-1",
            "t=1e9",
            "t=1700000000.5",
            "t=0001700000000",
            "t=+1700000000",
        ] {
            assert_eq!(
                check(
                    &s,
                    &[("stripe-signature", &format!("{t},{v1}"))],
                    body,
                    &[b"whsec"]
                ),
                Err(Rejection::StaleTimestamp),
                "{t}"
            );
        }
        // A second timestamp makes the header ambiguous.
        assert_eq!(
            check(
                &s,
                &[("stripe-signature", &format!("t={NOW},{good}"))],
                body,
                &[b"whsec"]
            ),
            Err(Rejection::StaleTimestamp)
        );
    }

    #[test]
    fn slack_style_signs_version_timestamp_and_body() {
        let s = slack();
        s.validate().unwrap();
        let body = b"token=x&team_id=T1&command=%2Fdeploy";
        let sig = s.sign(b"slack-secret", body, NOW);
        assert!(sig.starts_with("v0="), "{sig}");
        // Independently: HMAC-SHA256 over "v0:<ts>:<body>".
        let mut m = <Hmac<Sha256>>::new_from_slice(b"slack-secret").unwrap();
        m.update(format!("v0:{NOW}:").as_bytes());
        m.update(body);
        assert_eq!(
            sig,
            format!("v0={}", hex::encode(m.finalize().into_bytes()))
        );

        let ts = NOW.to_string();
        let ok = [
            ("X-Slack-Signature", sig.as_str()),
            ("X-Slack-Request-Timestamp", &ts),
        ];
        let signed = check(&s, &ok, body, &[b"slack-secret"]).unwrap();
        assert_eq!(signed, [format!("v0:{NOW}:").as_bytes(), body].concat());
        assert_eq!(
            check(&s, &ok[..1], body, &[b"slack-secret"]),
            Err(Rejection::MissingTimestamp)
        );
        let later = (NOW + 1).to_string();
        let moved = [
            ("x-slack-signature", sig.as_str()),
            ("x-slack-request-timestamp", &later),
        ];
        assert_eq!(
            check(&s, &moved, body, &[b"slack-secret"]),
            Err(Rejection::BadSignature)
        );
        let old = (NOW - 301).to_string();
        let sig = s.sign(b"slack-secret", body, NOW - 301);
        let stale = [
            ("x-slack-signature", sig.as_str()),
            ("x-slack-request-timestamp", &old),
        ];
        assert_eq!(
            check(&s, &stale, body, &[b"slack-secret"]),
            Err(Rejection::StaleTimestamp)
        );
    }

    #[test]
    fn sha512_base64_round_trips() {
        let s = sha512_base64();
        s.validate().unwrap();
        let sig = s.sign(b"k", b"payload", 0);
        // 64 bytes of MAC: 88 base64 characters with padding.
        assert_eq!(sig.len(), 88);
        assert!(sig.ends_with("=="));
        assert!(check(&s, &[("x-signature", &sig)], b"payload", &[b"k"]).is_ok());
        assert_eq!(
            check(&s, &[("x-signature", &sig)], b"payloaD", &[b"k"]),
            Err(Rejection::BadSignature)
        );
        let unpadded = sig.trim_end_matches('=');
        assert_eq!(
            check(&s, &[("x-signature", unpadded)], b"payload", &[b"k"]),
            Err(Rejection::BadSignature)
        );
        // A SHA-256 MAC is too short to pass for a SHA-512 one.
        let short = Verification::Hmac(HmacScheme {
            encoding: Encoding::Base64,
            ..hmac("x-signature")
        })
        .sign(b"k", b"payload", 0);
        assert_eq!(
            check(&s, &[("x-signature", &short)], b"payload", &[b"k"]),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn builder_token_must_equal_a_secret() {
        let b = Verification::builder(BUILDER_HEADER);
        b.validate().unwrap();
        let secret: &[u8] = b"s3cret-token-value";
        let h = |v: &str| vec![(BUILDER_HEADER, v.to_owned())];
        let run = |v: &str| {
            let pairs = h(v);
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            check(&b, &pairs, b"{}", &[secret])
        };
        assert_eq!(run("s3cret-token-value").unwrap(), b"{}");
        assert_eq!(b.sign(secret, b"", 0), "s3cret-token-value");
        assert_eq!(run("s3cret-token-valu"), Err(Rejection::BadSignature));
        assert_eq!(run("s3cret-token-valuee"), Err(Rejection::BadSignature));
        assert_eq!(run("s3cret-token-valuf"), Err(Rejection::BadSignature));
        assert_eq!(run("S3cret-token-value"), Err(Rejection::BadSignature));
        assert_eq!(
            check(&b, &[], b"{}", &[secret]),
            Err(Rejection::MissingSignature)
        );
        // An empty configured secret must not admit an empty token.
        assert_eq!(
            check(&b, &[(BUILDER_HEADER, "x")], b"{}", &[b""]),
            Err(Rejection::BadSignature)
        );
        // Rotation.
        assert!(check(&b, &[(BUILDER_HEADER, "new")], b"{}", &[b"old", b"new"]).is_ok());
    }

    #[test]
    fn builder_token_with_a_bearer_prefix() {
        let b = Verification::Token {
            header: "authorization".into(),
            prefix: "Bearer ".into(),
        };
        b.validate().unwrap();
        let secrets: &[&[u8]] = &[b"tok"];
        assert!(check(&b, &[("Authorization", "Bearer tok")], b"", secrets).is_ok());
        assert!(check(&b, &[("Authorization", "bearer tok")], b"", secrets).is_ok());
        assert_eq!(b.sign(b"tok", b"", 0), "Bearer tok");
        assert_eq!(
            check(&b, &[("Authorization", "tok")], b"", secrets),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            check(&b, &[("Authorization", "Basic tok")], b"", secrets),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            check(&b, &[("Authorization", "Bearer ")], b"", secrets),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn reasons_are_stable() {
        let all = [
            (Rejection::MissingSignature, "missing-signature"),
            (Rejection::BadSignature, "bad-signature"),
            (Rejection::MissingTimestamp, "missing-timestamp"),
            (Rejection::StaleTimestamp, "stale-timestamp"),
        ];
        for (r, label) in all {
            assert_eq!(r.reason(), label);
        }
    }

    #[test]
    fn wire_names() {
        let gh: Verification = serde_json::from_str(
            r#"{"type":"hmac","header":"x-hub-signature-256","prefix":"sha256="}"#,
        )
        .unwrap();
        assert_eq!(gh, Verification::github());
        let json = serde_json::to_value(&gh).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "hmac", "header": "x-hub-signature-256", "prefix": "sha256=",
                "algorithm": "hmac-sha256", "encoding": "hex", "signed": "body",
                "tolerance_secs": 300
            })
        );
        let full = serde_json::json!({
            "type": "hmac", "header": "x-slack-signature", "prefix": "v0=",
            "algorithm": "hmac-sha512", "encoding": "base64", "signed": "timestamp_body",
            "timestamp_header": "x-slack-request-timestamp",
            "signed_template": "v0:{timestamp}:{body}", "tolerance_secs": 60
        });
        let v: Verification = serde_json::from_value(full.clone()).unwrap();
        assert_eq!(serde_json::to_value(&v).unwrap(), full);
        let stripe_json = serde_json::json!({
            "type": "hmac", "header": "stripe-signature", "signed": "timestamp_body",
            "signature_key": "v1", "timestamp_key": "t"
        });
        let v: Verification = serde_json::from_value(stripe_json).unwrap();
        assert_eq!(v, stripe());

        let token: Verification =
            serde_json::from_str(r#"{"type":"token","header":"x-spindle-webhook-token"}"#).unwrap();
        assert_eq!(token, Verification::builder(BUILDER_HEADER));
        assert_eq!(
            serde_json::to_string(&token).unwrap(),
            r#"{"type":"token","header":"x-spindle-webhook-token"}"#
        );
        for bad in [
            r#"{"type":"hmac","header":"h","secret":"x"}"#,
            r#"{"type":"token","header":"h","algorithm":"hmac-sha256"}"#,
            r#"{"type":"hmac","header":"h","algorithm":"sha256"}"#,
            r#"{"type":"hmac","header":"h","encoding":"HEX"}"#,
            r#"{"type":"hmac","header":"h","signed":"timestamp-body"}"#,
            r#"{"type":"signature","header":"h"}"#,
        ] {
            assert!(serde_json::from_str::<Verification>(bad).is_err(), "{bad}");
        }
    }

    fn pointers(v: &Verification) -> Vec<String> {
        match v.validate() {
            Ok(()) => vec![],
            Err(e) => e.errors.into_iter().map(|e| e.pointer).collect(),
        }
    }

    #[test]
    fn validate_names_each_field_at_fault() {
        for good in [Verification::github(), stripe(), slack(), sha512_base64()] {
            assert_eq!(pointers(&good), Vec::<String>::new(), "{good:?}");
        }
        let with = |f: &dyn Fn(&mut HmacScheme)| {
            let mut s = hmac("x-sig");
            f(&mut s);
            pointers(&Verification::Hmac(s))
        };
        assert_eq!(with(&|s| s.header = String::new()), ["/header"]);
        assert_eq!(with(&|s| s.header = "x sig".into()), ["/header"]);
        assert_eq!(with(&|s| s.header = "x-sïg".into()), ["/header"]);
        assert_eq!(with(&|s| s.header = "h".repeat(65)), ["/header"]);
        assert_eq!(with(&|s| s.header = "h".repeat(64)), Vec::<String>::new());
        assert_eq!(with(&|s| s.prefix = "p".repeat(33)), ["/prefix"]);
        assert_eq!(with(&|s| s.prefix = "a\nb".into()), ["/prefix"]);
        assert_eq!(with(&|s| s.tolerance_secs = 0), ["/tolerance_secs"]);
        assert_eq!(with(&|s| s.tolerance_secs = 86_401), ["/tolerance_secs"]);
        assert_eq!(
            with(&|s| s.signature_key = Some(String::new())),
            ["/signature_key"]
        );
        assert_eq!(
            with(&|s| s.signature_key = Some("v 1".into())),
            ["/signature_key"]
        );
        assert_eq!(
            with(&|s| s.signature_key = Some("k".repeat(17))),
            ["/signature_key"]
        );
        // Options that only timestamp_body reads.
        assert_eq!(
            with(&|s| s.timestamp_header = Some("x-ts".into())),
            ["/timestamp_header"]
        );
        assert_eq!(
            with(&|s| s.signed_template = "{body}".into()),
            ["/signed_template"]
        );
        let ts_body = |f: &dyn Fn(&mut HmacScheme)| {
            with(&|s| {
                s.signed = Signed::TimestampBody;
                s.timestamp_header = Some("x-ts".into());
                f(s);
            })
        };
        assert_eq!(ts_body(&|_| {}), Vec::<String>::new());
        assert_eq!(ts_body(&|s| s.timestamp_header = None), ["/signed"]);
        assert_eq!(
            ts_body(&|s| s.timestamp_header = Some("x ts".into())),
            ["/timestamp_header"]
        );
        assert_eq!(
            ts_body(&|s| {
                s.signature_key = Some("v1".into());
                s.timestamp_key = Some("t".into());
            }),
            ["/timestamp_key"]
        );
        for t in [
            "{body}",
            "{timestamp}",
            "{timestamp}{body}{body}",
            "{timestamp}.{body}.{timestamp}",
        ] {
            assert_eq!(
                ts_body(&|s| s.signed_template = t.into()),
                ["/signed_template"],
                "{t}"
            );
        }
        assert_eq!(
            ts_body(&|s| s.signed_template = "{body}:{timestamp}".into()),
            Vec::<String>::new()
        );
        assert_eq!(
            ts_body(&|s| s.signed_template = format!("{{timestamp}}{{body}}{}", "x".repeat(250))),
            ["/signed_template"]
        );
        let stripe_with = |f: &dyn Fn(&mut HmacScheme)| {
            let Verification::Hmac(mut s) = stripe() else {
                unreachable!()
            };
            f(&mut s);
            pointers(&Verification::Hmac(s))
        };
        assert_eq!(stripe_with(&|s| s.signature_key = None), ["/timestamp_key"]);
        assert_eq!(
            stripe_with(&|s| s.timestamp_key = Some("v1".into())),
            ["/timestamp_key"]
        );
        assert_eq!(
            stripe_with(&|s| s.timestamp_key = Some("t=".into())),
            ["/timestamp_key"]
        );

        let token = |header: &str, prefix: &str| {
            pointers(&Verification::Token {
                header: header.into(),
                prefix: prefix.into(),
            })
        };
        assert_eq!(token("", ""), ["/header"]);
        assert_eq!(token("authorization", &"p".repeat(33)), ["/prefix"]);
        assert_eq!(token("authorization:", "Bearer "), ["/header"]);
    }

    #[test]
    fn hostile_headers_do_not_panic_or_pass() {
        let secrets: &[&[u8]] = &[b"k"];
        let long = "a".repeat(MAX_HEADER_LEN + 1);
        let many = "v1=00,".repeat(10_000);
        let hostile = [
            "",
            "=",
            "==",
            ",",
            ",,,=,=",
            "=v1",
            "v1",
            "t=,v1=",
            "v1=é",
            "é=é",
            "\u{0}",
            "sha256=é",
            "sha256=ééé",
            "t=99999999999999999999,v1=00",
            "t=1,t=2,v1=00",
            &long,
            &many,
        ];
        for scheme in [Verification::github(), stripe(), slack(), sha512_base64()] {
            for h in hostile {
                let got = check(
                    &scheme,
                    &[
                        ("x-hub-signature-256", h),
                        ("stripe-signature", h),
                        ("x-slack-signature", h),
                        ("x-slack-request-timestamp", h),
                        ("x-signature", h),
                    ],
                    b"body",
                    secrets,
                );
                assert!(got.is_err(), "{scheme:?} {h:?}");
            }
        }
    }

    fn any_scheme() -> impl Strategy<Value = Verification> {
        let slack512 = Verification::Hmac(HmacScheme {
            algorithm: Algorithm::HmacSha512,
            encoding: Encoding::Base64,
            ..match slack() {
                Verification::Hmac(s) => s,
                Verification::Token { .. } => unreachable!(),
            }
        });
        let bearer = Verification::Token {
            header: "authorization".into(),
            prefix: "Bearer ".into(),
        };
        prop::sample::select(vec![
            Verification::github(),
            stripe(),
            slack(),
            slack512,
            sha512_base64(),
            Verification::builder(BUILDER_HEADER),
            bearer,
        ])
    }

    /// The headers a delivery signed by `v` carries.
    fn delivery(v: &Verification, sig: String, ts: u64) -> Vec<(String, String)> {
        match v {
            Verification::Token { header, .. } => vec![(header.clone(), sig)],
            Verification::Hmac(s) => {
                let mut h = vec![(s.header.clone(), sig)];
                if let Some(t) = &s.timestamp_header {
                    h.push((t.clone(), ts.to_string()));
                }
                h
            }
        }
    }

    proptest! {
        #[test]
        fn sign_then_verify_round_trips(
            v in any_scheme(),
            body in prop::collection::vec(any::<u8>(), 0..512),
            secret in "[!-~]{1,40}",
            other in "[!-~]{1,40}",
            skew in -300i64..=300,
        ) {
            let ts = NOW.checked_add_signed(skew).unwrap();
            let sig = v.sign(secret.as_bytes(), &body, ts);
            let pairs = delivery(&v, sig, ts);
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let signed = check(&v, &pairs, &body, &[secret.as_bytes()]);
            prop_assert!(signed.is_ok(), "{:?}", signed);
            let signed = signed.unwrap();
            // Every scheme here signs the body last.
            prop_assert!(signed.ends_with(&body));
            if other != secret {
                prop_assert_eq!(
                    check(&v, &pairs, &body, &[other.as_bytes()]),
                    Err(Rejection::BadSignature)
                );
            }
        }

        #[test]
        fn arbitrary_headers_never_panic(
            v in any_scheme(),
            value in ".{0,200}",
            ts in "[0-9a-z=, .-]{0,30}",
            body in prop::collection::vec(any::<u8>(), 0..64),
            secrets in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..16), 0..3),
            now_ms in any::<u64>(),
        ) {
            let secrets: Vec<&[u8]> = secrets.iter().map(Vec::as_slice).collect();
            let lookup = |name: &str| match name {
                "x-slack-request-timestamp" => Some(ts.clone()),
                _ => Some(value.clone()),
            };
            let _ = v.verify(&lookup, &body, &secrets, now_ms);
        }
    }
}
