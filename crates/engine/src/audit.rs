//! The audit trail in the store (see [`spindle_core::audit`]): appending,
//! querying newest first with a bounded walk, and retention from the
//! oldest end.

use spindle_core::audit::{
    self as a, AuditEntry, AuditFilter, AuditPage, CLOCK_SLACK_MS, HEAD, LOW, MAX_EXAMINED,
};
use spindle_core::metrics::DAY_MS;

use crate::store::{Result, Store, StoreError, StoreExt};

/// Most entries one retention sweep removes; the rest wait for the next
/// tick.
pub const MAX_SWEEP: u64 = 200;

/// How many numbers a missing entry must lie below the newest before the
/// sweep passes it over as a hole (its writer failed after taking the
/// number) rather than a write still under way.
const SETTLED_GAP: u64 = 1_000;

/// What [`append`] did.
#[derive(Debug)]
pub struct Appended {
    /// The entry's number.
    pub seq: u64,
    /// Counting it in its day's activity failed (the entry is stored).
    pub uncounted: Option<StoreError>,
}

/// Appends `entry` (its `seq` is set here): an increment for its number,
/// a plain write, and its day's activity counts (best effort: a failed
/// count is reported in [`Appended`], the entry stands).
pub async fn append<S: Store>(store: &S, mut entry: AuditEntry) -> Result<Appended> {
    let seq = u64::try_from(store.increment(HEAD, 1).await?).unwrap_or(0);
    entry.seq = seq;
    let entry = entry.bounded();
    store.set(&a::entry_key(seq), &entry).await?;
    // Also the day's first number: where a query for an earlier time
    // starts, and what the day's activity is counted from.
    let counted = crate::metrics::count_event(store, entry.at_ms, &entry.kind, seq).await;
    Ok(Appended {
        seq,
        uncounted: counted.err(),
    })
}

/// A page of entries matching `f`, newest first. Examines at most
/// [`MAX_EXAMINED`] entries: a page may come back short, with a cursor to
/// go on from.
pub async fn query<S: Store>(store: &S, f: &AuditFilter) -> Result<AuditPage> {
    let head = u64::try_from(store.counter(HEAD).await?).unwrap_or(0);
    let low = store.get::<u64>(LOW).await?.unwrap_or(1).max(1);
    let mut f = f.clone();
    // A run's entries start with the run.
    if f.since_ms.is_none()
        && let Some(created) = f.run.as_deref().and_then(spindle_core::ids::run_created_ms)
    {
        f.since_ms = Some(created);
    }
    let mut seq = match f.before {
        Some(b) => b.saturating_sub(1).min(head),
        None => head,
    };
    // Entries before `until` were numbered before the first entry of the
    // day after it (give or take the clock slack).
    if f.before.is_none()
        && let Some(until) = f.until_ms
    {
        let day_after = until.saturating_add(CLOCK_SLACK_MS) / DAY_MS + 1;
        if let Some(first) = store.get::<u64>(&a::day_key(day_after)).await? {
            seq = seq.min(first);
        }
    }
    let limit = f.limit.clamp(1, a::MAX_LIMIT);
    let mut entries = Vec::new();
    let mut examined = 0;
    let mut next = None;
    while seq >= low && seq > 0 {
        if entries.len() >= limit || examined >= MAX_EXAMINED {
            next = Some((seq + 1).to_string());
            break;
        }
        examined += 1;
        match store.get::<AuditEntry>(&a::entry_key(seq)).await {
            Ok(Some(e)) => {
                if !f.may_go_on(&e) {
                    break;
                }
                if f.matches(&e) {
                    entries.push(e);
                }
            }
            // Removed meanwhile, or its writer failed: nothing to show.
            Ok(None) | Err(StoreError::Corrupt { .. }) => {}
            Err(e) => return Err(e),
        }
        seq -= 1;
    }
    Ok(AuditPage {
        entries,
        next_cursor: next,
        examined,
    })
}

/// Removes entries older than `retention_ms` from the oldest end, at most
/// [`MAX_SWEEP`] a call; returns how many it removed.
pub async fn sweep<S: Store>(store: &S, now_ms: u64, retention_ms: u64) -> Result<u64> {
    let head = u64::try_from(store.counter(HEAD).await?).unwrap_or(0);
    let stored = store.get::<u64>(LOW).await?;
    let start = stored.unwrap_or(1).max(1);
    let cutoff = now_ms.saturating_sub(retention_ms);
    let mut low = start;
    let mut removed = 0;
    while low <= head && removed < MAX_SWEEP {
        let key = a::entry_key(low);
        match store.get::<AuditEntry>(&key).await {
            Ok(Some(e)) if e.at_ms < cutoff => {
                // (Day markers stay: the activity figures count entries
                // per day from them, and keep them 100 days.)
                store.delete(&key).await?;
                removed += 1;
            }
            Ok(Some(_)) => break,
            Err(StoreError::Corrupt { .. }) => {
                store.delete(&key).await?;
                removed += 1;
            }
            Ok(None) => {
                if !settled_hole(store, low, head, now_ms).await? {
                    break;
                }
            }
            Err(e) => return Err(e),
        }
        low += 1;
    }
    if low != start || stored.is_none() {
        store.set(LOW, &low).await?;
    }
    Ok(removed)
}

/// Whether the missing entry `seq` is a hole for good: far below the
/// newest, or followed by an entry written over a minute ago (a write
/// still under way would have finished by then).
async fn settled_hole<S: Store>(store: &S, seq: u64, head: u64, now_ms: u64) -> Result<bool> {
    if head.saturating_sub(seq) > SETTLED_GAP {
        return Ok(true);
    }
    if seq >= head {
        return Ok(false);
    }
    Ok(matches!(
        store.get::<AuditEntry>(&a::entry_key(seq + 1)).await,
        Ok(Some(next)) if next.at_ms.saturating_add(CLOCK_SLACK_MS) < now_ms
    ))
}
