//! Retry policy: how often a failed step is tried again, and how long to wait.
//!
//! Backoff is exponential with "equal jitter": the wait for a retry is half the
//! exponential delay plus a jitter of up to the other half. The jitter is not
//! random: it is a hash of the job's identity, so the core stays deterministic
//! while retries of different jobs still spread out instead of arriving in
//! lockstep.

use serde::{Deserialize, Serialize};

use crate::error::FieldError;

/// Most attempts a policy may ask for.
pub const MAX_ATTEMPTS: u32 = 20;
/// Longest backoff a policy may ask for: one hour.
pub const MAX_BACKOFF_MS: u64 = 3_600_000;

/// How a failed step is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 means never retry.
    pub max_attempts: u32,
    /// Delay before the first retry.
    pub initial_backoff_ms: u64,
    /// Upper bound of the delay, however many attempts have failed.
    pub max_backoff_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff_ms: 1_000,
            max_backoff_ms: 60_000,
        }
    }
}

impl RetryPolicy {
    /// Field errors for this policy, with pointers under `at`.
    pub fn check(&self, at: &str, errors: &mut Vec<FieldError>) {
        if self.max_attempts == 0 || self.max_attempts > MAX_ATTEMPTS {
            errors.push(FieldError::new(
                format!("{at}/max_attempts"),
                format!("must be between 1 and {MAX_ATTEMPTS}"),
            ));
        }
        if self.initial_backoff_ms == 0 || self.initial_backoff_ms > MAX_BACKOFF_MS {
            errors.push(FieldError::new(
                format!("{at}/initial_backoff_ms"),
                format!("must be between 1 and {MAX_BACKOFF_MS}"),
            ));
        }
        if self.max_backoff_ms == 0
            || self.max_backoff_ms < self.initial_backoff_ms
            || self.max_backoff_ms > MAX_BACKOFF_MS
        {
            errors.push(FieldError::new(
                format!("{at}/max_backoff_ms"),
                format!("must be between initial_backoff_ms and {MAX_BACKOFF_MS}"),
            ));
        }
    }

    /// Whether another attempt follows attempt number `attempt` (1-based).
    pub fn allows_retry_after(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }

    /// The wait before the attempt after `failed_attempt` (1-based), with a
    /// jitter derived from `seed` (anything naming the job).
    pub fn backoff_ms(&self, failed_attempt: u32, seed: &str) -> u64 {
        let exp = failed_attempt.saturating_sub(1).min(32);
        let delay = self
            .initial_backoff_ms
            .saturating_mul(1u64 << exp)
            .min(self.max_backoff_ms);
        let half = delay / 2;
        half + fnv1a(seed.as_bytes()) % (delay - half + 1)
    }
}

/// 64-bit FNV-1a: a stable, well-spread hash for jitter and worker choice.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_within_jitter_bounds_and_caps() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial_backoff_ms: 100,
            max_backoff_ms: 1_000,
        };
        for (attempt, full) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1_000),
            (9, 1_000),
        ] {
            for seed in ["a", "b", "run-1.scan.3"] {
                let d = p.backoff_ms(attempt, seed);
                assert!(
                    (full / 2..=full).contains(&d),
                    "attempt {attempt}: {d} outside [{}, {full}]",
                    full / 2
                );
            }
        }
    }

    #[test]
    fn jitter_is_deterministic_per_job_and_differs_between_jobs() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff_ms(2, "r1.scan.2"), p.backoff_ms(2, "r1.scan.2"));
        let distinct: std::collections::BTreeSet<u64> = (0..20)
            .map(|i| p.backoff_ms(3, &format!("r{i}.scan.3")))
            .collect();
        assert!(
            distinct.len() > 10,
            "jitter should spread retries: {distinct:?}"
        );
    }

    #[test]
    fn huge_attempt_numbers_do_not_overflow() {
        let p = RetryPolicy {
            max_attempts: 20,
            initial_backoff_ms: MAX_BACKOFF_MS,
            max_backoff_ms: MAX_BACKOFF_MS,
        };
        assert!(p.backoff_ms(u32::MAX, "x") <= MAX_BACKOFF_MS);
    }

    #[test]
    fn retry_allowance_counts_the_first_attempt() {
        let p = RetryPolicy {
            max_attempts: 2,
            ..RetryPolicy::default()
        };
        assert!(p.allows_retry_after(1));
        assert!(!p.allows_retry_after(2));
    }

    #[test]
    fn bad_policies_name_their_fields() {
        let mut errors = Vec::new();
        RetryPolicy {
            max_attempts: 0,
            initial_backoff_ms: 0,
            max_backoff_ms: 0,
        }
        .check("/retry", &mut errors);
        let pointers: Vec<_> = errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(
            pointers,
            [
                "/retry/max_attempts",
                "/retry/initial_backoff_ms",
                "/retry/max_backoff_ms"
            ]
        );
    }
}
