//! Job tokens and body signatures (HMAC-SHA256).
//!
//! Each job gets its own token, derived from the orchestrator's callback
//! secret and the job id, so no token is stored and a worker only ever knows
//! the tokens of the jobs it was given. Heartbeats and results are signed with
//! the job's token over the exact body bytes; verification is constant-time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Prefix of the signature header value.
pub const SCHEME: &str = "sha256=";

fn mac(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length")
}

/// The token for `job_id`, as hex: HMAC-SHA256(secret, "job:" + job_id).
pub fn job_token(secret: &str, job_id: &str) -> String {
    let mut m = mac(secret.as_bytes());
    m.update(b"job:");
    m.update(job_id.as_bytes());
    hex::encode(m.finalize().into_bytes())
}

/// The signature header value for `body` under `token`: `sha256=<hex>`.
pub fn sign(token: &str, body: &[u8]) -> String {
    let mut m = mac(token.as_bytes());
    m.update(body);
    format!("{SCHEME}{}", hex::encode(m.finalize().into_bytes()))
}

/// Whether `header` is a valid signature of `body` under `token`, compared
/// in constant time.
pub fn verify(token: &str, body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.trim().strip_prefix(SCHEME) else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let mut m = mac(token.as_bytes());
    m.update(body);
    m.verify_slice(&sig).is_ok()
}

/// SHA-256 of `bytes`, as hex: names derived from client input (such as
/// idempotency keys) in store keys.
pub fn digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(Sha256::digest(bytes))
}

/// Compares two secrets in constant time (for bearer tokens).
pub fn secrets_equal(a: &str, b: &str) -> bool {
    // Comparing MACs of both under one key hides the length difference too.
    let tag = |s: &str| {
        let mut m = mac(b"spindle-compare");
        m.update(s.as_bytes());
        m.finalize()
    };
    tag(a) == tag(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_for_the_same_token_and_body() {
        let token = job_token("secret", "r-1.scan.1");
        assert_eq!(token.len(), 64);
        assert_ne!(token, job_token("secret", "r-1.scan.2"));
        assert_ne!(token, job_token("other", "r-1.scan.1"));
        let sig = sign(&token, b"{\"a\":1}");
        assert!(verify(&token, b"{\"a\":1}", &sig));
        assert!(!verify(&token, b"{\"a\":2}", &sig));
        assert!(!verify(
            &job_token("secret", "r-1.scan.2"),
            b"{\"a\":1}",
            &sig
        ));
        assert!(!verify(
            &token,
            b"{\"a\":1}",
            sig.trim_start_matches(SCHEME)
        ));
        assert!(!verify(&token, b"{\"a\":1}", "sha256=zz"));
        assert!(!verify(&token, b"{\"a\":1}", ""));
    }

    #[test]
    fn known_hmac_vector() {
        // RFC 4231 test case 2.
        let mut m = mac(b"Jefe");
        m.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(m.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn secret_comparison() {
        assert!(secrets_equal("abc", "abc"));
        assert!(!secrets_equal("abc", "abd"));
        assert!(!secrets_equal("abc", "abcd"));
    }
}
