//! Timers, bucketed by due time.
//!
//! A timer lives in the document of the bucket it falls due in
//! (`timers:<bucket>`, one bucket per [`keys::TIMER_BUCKET_MS`]), so adding
//! one rewrites only the few timers due in the same quarter second, and the tick
//! reads only the buckets between its cursor (`timers:cursor`, the oldest
//! bucket it has not finished) and now. Nothing here grows with the number
//! of runs ever made.
//!
//! A timer is never written behind the cursor: it goes to the later of its
//! own bucket, the current one and the cursor's, and after writing, the
//! writer moves the cursor back if a tick passed it meanwhile. The tick only
//! leaves a bucket behind once it is empty and [`GRACE_BUCKETS`] old, and
//! deletes empty bucket documents long after that.

use std::collections::BTreeMap;
use std::convert::Infallible;

use spindle_core::keys::{self, timer_bucket, timer_bucket_of};
use spindle_core::run::{Effect, Event, Timer};

use crate::store::{StoreExt, UpdateError};
use crate::{Engine, EngineError, Host, MAX_TIMERS_PER_TICK, Store, Workers};

/// Buckets the tick keeps reading after their time has passed (two
/// seconds), for timers written a little late (a slow request, a clock
/// slightly behind); a writer that finds the cursor past its bucket moves
/// it back anyway.
pub const GRACE_BUCKETS: u64 = 8;
/// Most buckets one tick walks (five minutes, when catching up after ticks
/// stopped).
pub const MAX_BUCKETS_PER_TICK: u64 = 1_200;
/// How far behind the cursor empty bucket documents are deleted (ten
/// minutes: no writer is that late).
pub const DELETE_LAG_BUCKETS: u64 = 2_400;

/// What a tick did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct TickReport {
    /// Timers that came due and were delivered.
    pub fired: usize,
    /// Timers that are due but wait for the next tick (over this tick's
    /// budget, or their delivery failed).
    pub pending: usize,
    /// How far the oldest unfinished bucket is behind now, in
    /// milliseconds: a few seconds normally; growing means nothing ticks
    /// or timers keep failing.
    pub lag_ms: u64,
    /// Timers that could not be delivered and stay for the next tick.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Finished runs removed by retention.
    pub purged: usize,
}

impl<S: Store, W: Workers, H: Host> Engine<S, W, H> {
    /// Stores the timers `effects` schedule (one write per bucket touched).
    pub(crate) async fn schedule(&self, effects: &[Effect]) -> Result<(), EngineError> {
        let timers: Vec<&Timer> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Schedule(t) => Some(t),
                _ => None,
            })
            .collect();
        if timers.is_empty() {
            return Ok(());
        }
        let cursor: Option<u64> = self.store.get(keys::TIMER_CURSOR).await?;
        let floor = timer_bucket_of(self.host.now_ms()).max(cursor.unwrap_or(0));
        let mut buckets: BTreeMap<u64, Vec<Timer>> = BTreeMap::new();
        for t in timers {
            let b = timer_bucket_of(t.at_ms).max(floor);
            buckets.entry(b).or_default().push(t.clone());
        }
        for (b, add) in &buckets {
            self.store
                .update::<Vec<Timer>, Infallible>(&timer_bucket(*b), |current| {
                    let mut all = current.unwrap_or_default();
                    let before = all.len();
                    for t in add {
                        if let Err(pos) = all.binary_search(t) {
                            all.insert(pos, t.clone());
                        }
                    }
                    Ok((all.len() != before).then_some(all))
                })
                .await
                .map_err(UpdateError::into_store)?;
        }
        let first = *buckets.keys().next().expect("at least one timer");
        // A tick may have moved past `first` while we wrote (or no tick has
        // ever run): bring the cursor back so the tick reads it.
        let now_cursor: Option<u64> = self.store.get(keys::TIMER_CURSOR).await?;
        if now_cursor.is_none_or(|c| c > first) {
            self.store
                .update::<u64, Infallible>(keys::TIMER_CURSOR, |c| {
                    Ok(c.is_none_or(|c| c > first).then_some(first))
                })
                .await
                .map_err(UpdateError::into_store)?;
        }
        Ok(())
    }

    /// Forgets a timer that can no longer do anything.
    pub(crate) async fn unschedule(&self, t: &Timer) -> Result<(), EngineError> {
        let cursor: Option<u64> = self.store.get(keys::TIMER_CURSOR).await?;
        let b = timer_bucket_of(t.at_ms);
        if cursor.is_some_and(|c| b < c) {
            return Ok(());
        }
        self.store
            .update::<Vec<Timer>, Infallible>(&timer_bucket(b), |current| {
                let Some(mut all) = current else {
                    return Ok(None);
                };
                let Ok(pos) = all.binary_search(t) else {
                    return Ok(None);
                };
                all.remove(pos);
                Ok(Some(all))
            })
            .await
            .map_err(UpdateError::into_store)?;
        Ok(())
    }

    /// Delivers every due timer (at most [`MAX_TIMERS_PER_TICK`]), removes
    /// the delivered ones, moves the cursor past finished buckets, then
    /// lets retention remove a bounded batch of old runs. Delivery is
    /// idempotent, so two ticks racing over the same timer are harmless.
    pub async fn tick(&self) -> Result<TickReport, EngineError> {
        let now = self.host.now_ms();
        let now_bucket = timer_bucket_of(now);
        let mut report = TickReport::default();
        if let Some(cursor) = self.store.get::<u64>(keys::TIMER_CURSOR).await? {
            self.fire_due(cursor, now, now_bucket, &mut report).await?;
        }
        report.purged = self.purge_old_runs(now).await?;
        Ok(report)
    }

    async fn fire_due(
        &self,
        cursor: u64,
        now: u64,
        now_bucket: u64,
        report: &mut TickReport,
    ) -> Result<(), EngineError> {
        let last = now_bucket.min(cursor.saturating_add(MAX_BUCKETS_PER_TICK - 1));
        let mut budget = MAX_TIMERS_PER_TICK;
        let mut next_cursor = cursor;
        let mut finished = true;
        for b in cursor..=last {
            let timers: Vec<Timer> = self.store.get(&timer_bucket(b)).await?.unwrap_or_default();
            let mut done = Vec::new();
            let mut left = 0;
            for t in timers {
                if t.at_ms > now || budget == 0 {
                    left += usize::from(t.at_ms <= now);
                    continue;
                }
                budget -= 1;
                match self.apply(&t.run_id, Event::Timer(t.clone())).await {
                    // A timer for a run that is gone or finished has nothing
                    // to do.
                    Ok(_) | Err(EngineError::NotFound(_)) | Err(EngineError::Rejected(_)) => {
                        report.fired += 1;
                        done.push(t);
                    }
                    Err(e) => {
                        left += 1;
                        report
                            .errors
                            .push(format!("{} {:?}: {e}", t.run_id, t.kind));
                    }
                }
            }
            let remaining = if done.is_empty() {
                self.store
                    .get::<Vec<Timer>>(&timer_bucket(b))
                    .await?
                    .unwrap_or_default()
                    .len()
            } else {
                self.store
                    .update::<Vec<Timer>, Infallible>(&timer_bucket(b), |current| {
                        let mut all = current.unwrap_or_default();
                        let before = all.len();
                        all.retain(|t| done.binary_search(t).is_err());
                        Ok((all.len() != before).then_some(all))
                    })
                    .await
                    .map_err(UpdateError::into_store)?
                    .map_or(0, |all| all.len())
            };
            report.pending += left;
            if finished && remaining == 0 && b.saturating_add(GRACE_BUCKETS) < now_bucket {
                next_cursor = b + 1;
            } else {
                finished = false;
            }
        }
        report.lag_ms = now.saturating_sub(next_cursor.saturating_mul(keys::TIMER_BUCKET_MS));
        if next_cursor > cursor {
            // Only from where this tick started: a writer that moved the
            // cursor back meanwhile wins, and the next tick reads again.
            let moved = self
                .store
                .update::<u64, Infallible>(keys::TIMER_CURSOR, |c| {
                    Ok((c == Some(cursor)).then_some(next_cursor))
                })
                .await
                .map_err(UpdateError::into_store)?;
            if moved == Some(next_cursor) {
                for b in cursor..next_cursor {
                    if let Some(old) = b.checked_sub(DELETE_LAG_BUCKETS) {
                        self.store.delete(&timer_bucket(old)).await?;
                    }
                }
            }
        }
        Ok(())
    }
}
