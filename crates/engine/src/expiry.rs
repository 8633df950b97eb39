//! Keys with a time to live, deleted by the tick.
//!
//! The store has no TTLs. A writer that wants keys gone later appends one
//! entry to the expiry bucket of that time ([`keys::EXPIRY_BUCKET_MS`]): an
//! increment for a slot and a plain write of the key list, the same layout
//! as timers, so nothing grows with the number of entries. The tick walks
//! the buckets that are over from a cursor, deleting a bounded number of
//! entries per tick and remembering how far into a bucket it got.
//!
//! An entry is always written into now's bucket or a later one (a TTL is
//! never negative), the cursor starts at the first writer's now, and the
//! tick takes a bucket on only once it ended [`GRACE_MS`] ago, so a writer
//! never appends to a bucket the tick has finished unless the clocks of two
//! instances are minutes apart; then the keys stay (storage, not
//! correctness).

use spindle_core::keys;

use crate::store::StoreExt;
use crate::{Engine, EngineError, Host, Store, Workers};

/// How long after a bucket ends the tick takes it on.
pub const GRACE_MS: u64 = 5 * 60_000;
/// Most entries (and empty buckets) one tick deals with: with a tick a
/// second, well above the rate deliveries come in at (each files one).
pub const MAX_EXPIRED_PER_TICK: i64 = 1_000;

/// How far the sweep got: the bucket it is in and the slots of it done.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct Cursor {
    bucket: u64,
    done: i64,
}

impl<S: Store, W: Workers, H: Host> Engine<S, W, H> {
    /// Has the tick delete `keys` once `at_ms` has passed.
    pub async fn expire_at(&self, keys: &[String], at_ms: u64) -> Result<(), EngineError> {
        let bucket = at_ms.max(self.host.now_ms()) / keys::EXPIRY_BUCKET_MS;
        let slot = self.store.increment(&keys::expiry_slots(bucket), 1).await?;
        self.store.set(&keys::expiry(bucket, slot), &keys).await?;
        // The very first entry starts the sweep's cursor, at now's bucket,
        // not its own (which may be days ahead): every entry ever written
        // is at or after now's bucket, and the sweep never passes a bucket
        // before it is over, so no entry lands behind the cursor.
        if self
            .store
            .get::<Cursor>(keys::EXPIRY_CURSOR)
            .await?
            .is_none()
        {
            let start = self.host.now_ms() / keys::EXPIRY_BUCKET_MS;
            self.store
                .update::<Cursor, std::convert::Infallible>(keys::EXPIRY_CURSOR, |c| {
                    Ok(c.is_none_or(|c| c.bucket > start).then_some(Cursor {
                        bucket: start,
                        done: 0,
                    }))
                })
                .await
                .map_err(crate::store::UpdateError::into_store)?;
        }
        Ok(())
    }

    /// Deletes the keys of expired entries, at most
    /// [`MAX_EXPIRED_PER_TICK`] entries; returns how many entries it
    /// finished. Two ticks racing delete the same keys twice, which is
    /// harmless.
    pub(crate) async fn sweep_expired(&self, now: u64) -> Result<usize, EngineError> {
        let Some(ended) = now.checked_sub(GRACE_MS) else {
            return Ok(0);
        };
        // Buckets strictly before this one are over (with the grace).
        let open = ended / keys::EXPIRY_BUCKET_MS;
        let Some(mut cursor) = self.store.get::<Cursor>(keys::EXPIRY_CURSOR).await? else {
            return Ok(0);
        };
        let start = cursor;
        let mut budget = MAX_EXPIRED_PER_TICK;
        let mut finished = 0;
        while cursor.bucket < open && budget > 0 {
            // An empty bucket costs a read too: after a quiet spell the
            // cursor catches up a bounded number of buckets per tick.
            budget -= 1;
            let slots = self
                .store
                .counter(&keys::expiry_slots(cursor.bucket))
                .await?;
            while cursor.done < slots && budget > 0 {
                let slot = cursor.done + 1;
                let key = keys::expiry(cursor.bucket, slot);
                let listed = match self.store.get::<Vec<String>>(&key).await {
                    Ok(listed) => listed.unwrap_or_default(),
                    // An entry that no longer decodes names nothing we can
                    // delete; drop it rather than stop the sweep.
                    Err(crate::StoreError::Corrupt { .. }) => Vec::new(),
                    Err(e) => return Err(e.into()),
                };
                for k in listed {
                    self.store.delete(&k).await?;
                }
                self.store.delete(&key).await?;
                cursor.done = slot;
                budget -= 1;
                finished += 1;
            }
            if cursor.done >= slots {
                self.store
                    .delete(&keys::expiry_slots(cursor.bucket))
                    .await?;
                cursor = Cursor {
                    bucket: cursor.bucket + 1,
                    done: 0,
                };
            }
        }
        if cursor != start {
            self.store.set(keys::EXPIRY_CURSOR, &cursor).await?;
        }
        Ok(finished)
    }
}
