//! Rate limits: a fixed one-minute window per caller and class of route,
//! counted with the store's atomic increment.
//!
//! The count lives in the shared store, not in memory, so every instance of
//! every component takes from one budget, and the increment is exact on
//! every Spin store: a limit of 100 admits exactly 100 requests a window,
//! however many arrive at once. A request refused still counts, so a caller
//! hammering a closed window does not get the next one early.
//!
//! Each window has its own counter; the first request of a window deletes
//! the previous one, so a caller leaves at most one counter per class
//! behind, not one per minute of activity.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use spindle_engine::store::{Store, StoreError};

/// Length of a window.
pub const WINDOW_MS: u64 = 60_000;

/// A class of route, each with its own budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// Reads (`GET`).
    Read,
    /// Writes and registry changes.
    Write,
    /// Starting runs.
    Trigger,
}

impl Class {
    /// Every class.
    pub const ALL: [Class; 3] = [Class::Read, Class::Write, Class::Trigger];

    /// The wire name (also in store keys and metrics labels).
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Read => "read",
            Class::Write => "write",
            Class::Trigger => "trigger",
        }
    }

    /// The variable that sets this class's limit.
    pub fn variable(self) -> &'static str {
        match self {
            Class::Read => "rate_limit_read",
            Class::Write => "rate_limit_write",
            Class::Trigger => "rate_limit_trigger",
        }
    }

    /// The limit when the variable is not set.
    pub fn default_limit(self) -> u64 {
        match self {
            Class::Read => 1_000,
            Class::Write => 100,
            Class::Trigger => 500,
        }
    }
}

/// Requests a minute per class; 0 turns a class's limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// For [`Class::Read`].
    pub read: u64,
    /// For [`Class::Write`].
    pub write: u64,
    /// For [`Class::Trigger`].
    pub trigger: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            read: Class::Read.default_limit(),
            write: Class::Write.default_limit(),
            trigger: Class::Trigger.default_limit(),
        }
    }
}

impl Limits {
    /// The limits from variables (`var(name)`); unset ones take the default,
    /// a malformed one is an error naming it.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let mut limits = Limits::default();
        for class in Class::ALL {
            let Some(v) = var(class.variable()).filter(|v| !v.trim().is_empty()) else {
                continue;
            };
            let n: u64 = v.trim().parse().map_err(|_| {
                format!(
                    "variable {} must be a whole number of requests per minute (0: no limit), not {v:?}",
                    class.variable()
                )
            })?;
            *limits.of_mut(class) = n;
        }
        Ok(limits)
    }

    /// The limit of `class`.
    pub fn of(&self, class: Class) -> u64 {
        match class {
            Class::Read => self.read,
            Class::Write => self.write,
            Class::Trigger => self.trigger,
        }
    }

    fn of_mut(&mut self, class: Class) -> &mut u64 {
        match class {
            Class::Read => &mut self.read,
            Class::Write => &mut self.write,
            Class::Trigger => &mut self.trigger,
        }
    }
}

/// The outcome of taking one request from a budget: what the `RateLimit-*`
/// headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Requests a window.
    pub limit: u64,
    /// Requests left in this window.
    pub remaining: u64,
    /// Seconds until the window resets (at least 1).
    pub reset_s: u64,
}

impl Decision {
    /// `Retry-After` for a refused request: when the window resets.
    pub fn retry_after_s(&self) -> u64 {
        self.reset_s
    }
}

/// The store key of `caller`'s counter for `class` in `window`. The caller
/// is hashed: its id may be a client address or a token subject, and keys
/// must stay short and plain.
pub fn counter_key(class: Class, caller: &str, window: u64) -> String {
    let digest = Sha256::digest(caller.as_bytes());
    format!(
        "ratelimit:{}:{}:{window}",
        class.as_str(),
        hex::encode(&digest[..12])
    )
}

/// The counter of refusals for `class` (for the metrics).
pub fn refused_counter(class: Class) -> String {
    spindle_core::keys::counter(&format!("rate_limited:{}", class.as_str()))
}

/// Takes one request of `caller` from its `class` budget of `limit` a
/// window (0: unlimited, nothing stored).
pub async fn take<S: Store>(
    store: &S,
    class: Class,
    caller: &str,
    limit: u64,
    now_ms: u64,
) -> Result<Option<Decision>, StoreError> {
    if limit == 0 {
        return Ok(None);
    }
    let window = now_ms / WINDOW_MS;
    let count = store
        .increment(&counter_key(class, caller, window), 1)
        .await?;
    if count == 1 && window > 0 {
        // Best effort: a counter left behind costs a few bytes, never a
        // wrong decision (its window is over).
        let _ = store.delete(&counter_key(class, caller, window - 1)).await;
    }
    let count = u64::try_from(count).unwrap_or(u64::MAX);
    let allowed = count <= limit;
    if !allowed {
        let _ = store.increment(&refused_counter(class), 1).await;
    }
    let reset_ms = (window + 1) * WINDOW_MS - now_ms;
    Ok(Some(Decision {
        allowed,
        limit,
        remaining: limit.saturating_sub(count),
        reset_s: reset_ms.div_ceil(1000).max(1),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use spindle_engine::testing::MemStore;

    #[tokio::test]
    async fn a_budget_admits_exactly_its_limit_and_resets_with_the_window() {
        let store = MemStore::default();
        let t0 = 10 * WINDOW_MS + 500;
        let mut allowed = 0;
        for i in 0..15 {
            let d = take(&store, Class::Write, "key:ci", 10, t0 + i)
                .await
                .unwrap()
                .unwrap();
            allowed += u32::from(d.allowed);
            assert_eq!(d.limit, 10);
            assert_eq!(d.remaining, 10u64.saturating_sub(i + 1));
            assert_eq!(d.reset_s, 60);
        }
        assert_eq!(allowed, 10);
        assert_eq!(
            store.counter(&refused_counter(Class::Write)).await.unwrap(),
            5
        );
        // Another caller and another class have their own budgets.
        assert!(
            take(&store, Class::Write, "key:other", 10, t0)
                .await
                .unwrap()
                .unwrap()
                .allowed
        );
        assert!(
            take(&store, Class::Read, "key:ci", 10, t0)
                .await
                .unwrap()
                .unwrap()
                .allowed
        );
        // The next window starts afresh and clears the last one's counter.
        let d = take(&store, Class::Write, "key:ci", 10, t0 + WINDOW_MS)
            .await
            .unwrap()
            .unwrap();
        assert!(d.allowed);
        assert_eq!(d.remaining, 9);
        assert_eq!(
            store
                .get_raw(&counter_key(Class::Write, "key:ci", 10))
                .await
                .unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn a_zero_limit_stores_nothing() {
        let store = MemStore::default();
        assert_eq!(take(&store, Class::Read, "x", 0, 1).await.unwrap(), None);
        assert_eq!(store.writes(), Default::default());
    }

    #[test]
    fn limits_come_from_variables() {
        let l = Limits::from_vars(|n| (n == "rate_limit_write").then(|| "7".to_owned())).unwrap();
        assert_eq!((l.write, l.read, l.trigger), (7, 1_000, 500));
        let e = Limits::from_vars(|n| (n == "rate_limit_read").then(|| "lots".to_owned()));
        assert!(e.unwrap_err().contains("rate_limit_read"));
    }
}
