//! Whether a configured secret is strong enough to trust.
//!
//! Checked by the host at start-up for every variable the manifest declares
//! secret, and by components on first use under Spin, so a deployment with
//! `changeme` as its admin key fails loudly instead of running open.

/// Fewest bytes a secret may have.
pub const MIN_SECRET_BYTES: usize = 32;

/// Words that mark a value someone forgot to replace.
const PLACEHOLDERS: &[&str] = &[
    "changeme",
    "changeit",
    "secret",
    "password",
    "passwd",
    "example",
    "default",
    "placeholder",
    "replaceme",
    "todo",
    "test",
    "xxx",
    "admin",
    "token",
    "key",
];

/// Why a secret was refused. Never carries the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WeakSecret {
    /// Shorter than [`MIN_SECRET_BYTES`].
    #[error(
        "is {0} bytes long; use at least {MIN_SECRET_BYTES} random bytes (e.g. `openssl rand -hex 32`)"
    )]
    TooShort(usize),
    /// A placeholder, or too repetitive to be random.
    #[error(
        "looks like a placeholder, not a random value; use at least {MIN_SECRET_BYTES} random bytes (e.g. `openssl rand -hex 32`)"
    )]
    Placeholder,
}

/// Refuses a secret that is short, a known placeholder (in any case, with
/// any punctuation, repeated), or made of a handful of distinct characters.
pub fn check_secret(value: &str) -> Result<(), WeakSecret> {
    if value.len() < MIN_SECRET_BYTES {
        return Err(WeakSecret::TooShort(value.len()));
    }
    let letters: String = value
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    // `CHANGE_ME_CHANGE_ME...`, `secretsecretsecret...`, `your-secret-here`.
    let mut rest = letters.as_str();
    let mut words = 0;
    'strip: while !rest.is_empty() {
        for word in PLACEHOLDERS
            .iter()
            .chain(&["your", "here", "my", "the", "a"])
        {
            if let Some(r) = rest.strip_prefix(word) {
                rest = r;
                words += 1;
                continue 'strip;
            }
        }
        break;
    }
    if words > 0 && rest.chars().all(|c| c.is_ascii_digit()) {
        return Err(WeakSecret::Placeholder);
    }
    let mut distinct: Vec<char> = value.chars().collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < 6 {
        return Err(WeakSecret::Placeholder);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_placeholder_secrets_are_refused() {
        assert_eq!(check_secret("abc"), Err(WeakSecret::TooShort(3)));
        for weak in [
            "changemechangemechangemechangeme",
            "CHANGE_ME_CHANGE_ME_CHANGE_ME_CHANGE_ME",
            "secretsecretsecretsecretsecretsecret",
            "Your-Secret-Here-Your-Secret-Here-1234",
            "password1234567890123456789012345",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "abababababababababababababababababab",
        ] {
            assert_eq!(check_secret(weak), Err(WeakSecret::Placeholder), "{weak}");
        }
    }

    #[test]
    fn random_looking_secrets_pass_and_errors_never_echo_them() {
        for ok in [
            "3f9a1c0e7b2d4f6a8c1e3b5d7f9a2c4e6b8d0f1a3c5e7b9d",
            "test-admin-key-0123456789abcdefghijkl",
            "It's a Secret to Everybody, but a longer one here",
        ] {
            assert_eq!(check_secret(ok), Ok(()), "{ok}");
        }
        let msg = check_secret("changemechangemechangemechangeme")
            .unwrap_err()
            .to_string();
        assert!(!msg.contains("changeme"));
    }
}
