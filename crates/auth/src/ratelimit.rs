//! Rate limits: a fixed one-minute window per caller and class of route,
//! counted with the store's atomic increment.
//!
//! The count lives in the shared store, not in memory, so every instance of
//! every component takes from one budget, and the increment is exact on
//! every Spin store: a limit of 100 admits exactly 100 requests a window,
//! however many arrive at once. A request refused still counts, so a caller
//! hammering a closed window does not get the next one early.
//!
//! Each window has its own counter, so nothing is ever reset in place. The
//! request that creates a counter also files it for expiry: a window's
//! expiry list is a set of numbered slots (`ratelimit:expire:<window>:<n>`,
//! `n` from an atomic counter, one plain write each, so no concurrent filing
//! is ever lost), and the tick ([`sweep`]) deletes every counter of windows
//! two or more minutes old, with their slots. The store holds the counters
//! of the last few minutes, however many callers there ever were.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use spindle_engine::store::{Store, StoreError, StoreExt};

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

/// The counter numbering window `window`'s expiry slots.
fn expiry_counter(window: u64) -> String {
    spindle_core::keys::counter(&format!("ratelimit-expire:{window}"))
}

/// Expiry slot `n` of `window`: the key of one counter to delete.
fn expiry_slot(window: u64, n: i64) -> String {
    format!("ratelimit:expire:{window}:{n}")
}

/// Where [`sweep`] has got to.
pub const SWEEP_CURSOR: &str = "ratelimit:sweep:cursor";

/// Most counters one sweep deletes; the rest wait for the next tick.
pub const MAX_SWEEP: usize = 500;

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
    let key = counter_key(class, caller, window);
    let count = store.increment(&key, 1).await?;
    if count == 1 {
        // File the new counter for the sweep. Best effort: a counter that
        // misses its slot costs a few bytes, never a wrong decision (its
        // window is over).
        if let Ok(n) = store.increment(&expiry_counter(window), 1).await {
            let _ = store.set_raw(&expiry_slot(window, n), key.as_bytes()).await;
            if n == 1 {
                // Once a window: make sure the sweep starts no later than
                // the first window ever filed.
                let _ = start_sweep_at(store, window).await;
            }
        }
    }
    let count = u64::try_from(count).unwrap_or(u64::MAX);
    let allowed = count <= limit;
    if !allowed {
        let _ = spindle_engine::metrics::count(
            store,
            &spindle_core::metrics::RATE_LIMITED,
            &[class.as_str()],
            1,
        )
        .await;
    }
    let reset_ms = (window + 1) * WINDOW_MS - now_ms;
    Ok(Some(Decision {
        allowed,
        limit,
        remaining: limit.saturating_sub(count),
        reset_s: reset_ms.div_ceil(1000).max(1),
    }))
}

/// Where the sweep stands: the oldest window not yet cleared and the next
/// slot of it to look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct SweepCursor {
    window: u64,
    slot: i64,
}

/// Sets the sweep's cursor to `window` if there is none yet.
async fn start_sweep_at<S: Store>(store: &S, window: u64) -> Result<(), StoreError> {
    if store.get_raw(SWEEP_CURSOR).await?.is_none() {
        store
            .set(SWEEP_CURSOR, &SweepCursor { window, slot: 1 })
            .await?;
    }
    Ok(())
}

/// Deletes the counters (and expiry slots) of windows that ended at least a
/// minute before `now_ms`, at most [`MAX_SWEEP`] a call; returns how many
/// slots it cleared. Run by the tick; a failure leaves the cursor where it
/// was, so the next tick retries.
pub async fn sweep<S: Store>(store: &S, now_ms: u64) -> Result<usize, StoreError> {
    let current = now_ms / WINDOW_MS;
    let Some(last_done) = current.checked_sub(2) else {
        return Ok(0);
    };
    let mut cursor = match store.get::<SweepCursor>(SWEEP_CURSOR).await {
        Ok(Some(c)) => c,
        // Nothing filed yet, or a cursor nobody can read: a few windows
        // back is as far as anything can be missing from.
        _ => SweepCursor {
            window: last_done.saturating_sub(5),
            slot: 1,
        },
    };
    let mut cleared = 0;
    while cursor.window <= last_done && cleared < MAX_SWEEP {
        let filed = store.counter(&expiry_counter(cursor.window)).await?;
        while cursor.slot <= filed && cleared < MAX_SWEEP {
            let slot = expiry_slot(cursor.window, cursor.slot);
            if let Some(key) = store.get_raw(&slot).await? {
                // Only ever a rate-limit counter, whatever the slot holds.
                if let Ok(key) = std::str::from_utf8(&key)
                    && key.starts_with("ratelimit:")
                    && !key.starts_with("ratelimit:expire:")
                {
                    store.delete(key).await?;
                }
                store.delete(&slot).await?;
            }
            cursor.slot += 1;
            cleared += 1;
        }
        if cursor.slot > filed {
            store.delete(&expiry_counter(cursor.window)).await?;
            cursor = SweepCursor {
                window: cursor.window + 1,
                slot: 1,
            };
        }
    }
    store.set(SWEEP_CURSOR, &cursor).await?;
    Ok(cleared)
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
            store
                .counter(
                    &spindle_core::metrics::RATE_LIMITED
                        .count_key(&spindle_core::metrics::RATE_LIMITED.series(&["write"]))
                )
                .await
                .unwrap(),
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
        // The next window starts afresh.
        let d = take(&store, Class::Write, "key:ci", 10, t0 + WINDOW_MS)
            .await
            .unwrap()
            .unwrap();
        assert!(d.allowed);
        assert_eq!(d.remaining, 9);
    }

    #[tokio::test]
    async fn the_sweep_leaves_only_recent_counters_however_many_callers_came() {
        let store = MemStore::default();
        let t0 = 100 * WINDOW_MS;
        // A thousand distinct callers (addresses, say) over ten minutes.
        for minute in 0..10 {
            for caller in 0..100 {
                let now = t0 + minute * WINDOW_MS + caller;
                take(
                    &store,
                    Class::Write,
                    &format!("addr:{minute}.{caller}"),
                    5,
                    now,
                )
                .await
                .unwrap();
            }
        }
        // Sweeping as the tick would, with the clock in the last minute.
        let now = t0 + 9 * WINDOW_MS + 30_000;
        let mut total = 0;
        loop {
            let n = sweep(&store, now).await.unwrap();
            total += n;
            if n < MAX_SWEEP {
                break;
            }
        }
        // Windows two minutes old or more are gone (800 counters); the last
        // two minutes' 200 stay, and nothing of the sweep's own filing for
        // the swept windows is left.
        assert_eq!(total, 800);
        let mut keys = store.keys();
        keys.retain(|k| k.starts_with("ratelimit:write:"));
        assert_eq!(keys.len(), 200);
        let slots = store
            .keys()
            .into_iter()
            .filter(|k| k.starts_with("ratelimit:expire:"))
            .count();
        assert_eq!(slots, 200);
        assert_eq!(sweep(&store, now).await.unwrap(), 0);
        // A budget still counts right in the current window.
        let d = take(&store, Class::Write, "addr:9.0", 5, now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d.remaining, 3);
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
