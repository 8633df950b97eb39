//! Timers, bucketed by due time, one document each.
//!
//! A timer lives in a slot of the bucket it falls due in (one bucket per
//! [`keys::TIMER_BUCKET_MS`]): the bucket's counter gives it a slot
//! (`counter:timers:<bucket>`) and the timer is written there with a plain
//! write (`timers:<bucket>:<slot>`). Adding a timer is an increment and a
//! write of one small document, exact on every store (no compare-and-swap
//! on a document that may not exist yet, which Spin's stores get wrong),
//! and nothing grows with the number of runs. The tick reads the buckets
//! between its cursor (`timers:cursor`, the oldest bucket not finished) and
//! now, fires what is due, and deletes each fired timer.
//!
//! No timer is lost behind the cursor: a timer goes to the later of its own
//! bucket, now's and the cursor's; after writing it, the writer moves the
//! cursor back if a tick passed its bucket; after moving the cursor, the
//! tick re-reads the counters of the buckets it passed and moves back if
//! one changed. Whichever of the two comes second sees the other.

use std::convert::Infallible;

use spindle_core::keys::{self, timer, timer_bucket_of, timer_slots};
use spindle_core::run::{Effect, Event, Timer, TimerKind};

use crate::store::{StoreExt, UpdateError};
use crate::{Engine, EngineError, Host, MAX_TIMERS_PER_TICK, Store, Workers};

/// Buckets the tick keeps reading after their time has passed (five
/// seconds, well over the clock skew between instances and a write's
/// latency), for timers being written right then.
pub const GRACE_BUCKETS: u64 = 20;
/// Most buckets one tick walks (five minutes, when catching up after ticks
/// stopped).
pub const MAX_BUCKETS_PER_TICK: u64 = 1_200;
/// How far behind the cursor a bucket's counter is deleted (ten minutes:
/// no writer is that late).
pub const DELETE_LAG_BUCKETS: u64 = 2_400;
/// How long a timer whose delivery failed waits before it is tried again,
/// from a later bucket, so one failing timer never holds the cursor (and
/// with it every other timer) back.
pub const FAILED_TIMER_DELAY_MS: u64 = 5_000;

/// What a tick did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct TickReport {
    /// Timers that came due and were delivered.
    pub fired: usize,
    /// Timers that are due but wait for a later tick (over this tick's
    /// budget, or their delivery failed and they were put back).
    pub pending: usize,
    /// How far the oldest unfinished bucket is behind now, in
    /// milliseconds: five or six seconds normally; growing means nothing
    /// ticks, or the tick cannot keep up.
    pub lag_ms: u64,
    /// What went wrong, all tried again later: timers that could not be
    /// delivered, and stages of the tick that failed (firing timers,
    /// retention, the schedule check, the expiry sweep) or schedules the
    /// check could not look at.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Finished runs removed by retention.
    pub purged: usize,
    /// What schedules did.
    pub schedules: crate::schedules::ScheduleReport,
    /// Entries of keys with a time to live deleted.
    pub expired: usize,
    /// Audit entries removed by retention.
    pub audit_removed: u64,
}

impl<S: Store, W: Workers, H: Host> Engine<S, W, H> {
    /// Stores the timers `effects` schedule.
    pub(crate) async fn schedule(&self, effects: &[Effect]) -> Result<(), EngineError> {
        let mut timers = effects.iter().filter_map(|e| match e {
            Effect::Schedule(t) => Some(t),
            _ => None,
        });
        let Some(first) = timers.next() else {
            return Ok(());
        };
        let cursor: Option<u64> = self.store.get(keys::TIMER_CURSOR).await?;
        let floor = timer_bucket_of(self.host.now_ms()).max(cursor.unwrap_or(0));
        let mut lowest = u64::MAX;
        for t in std::iter::once(first).chain(timers) {
            let b = timer_bucket_of(t.at_ms).max(floor);
            self.put_timer(b, t).await?;
            lowest = lowest.min(b);
        }
        // A tick may have moved past `lowest` while we wrote (or no tick
        // has ever run): bring the cursor back so the tick reads it.
        self.cursor_at_most(lowest).await
    }

    async fn put_timer(&self, bucket: u64, t: &Timer) -> Result<(), EngineError> {
        let slot = self.store.increment(&timer_slots(bucket), 1).await?;
        self.store.set(&timer(bucket, slot), t).await?;
        Ok(())
    }

    async fn cursor_at_most(&self, bucket: u64) -> Result<(), EngineError> {
        // Read again after writing: the very first write is a swap of an
        // absent key, which Spin's stores do blindly, so a racing first
        // writer may have put a later bucket over ours.
        for _ in 0..crate::store::MAX_CAS_ATTEMPTS {
            let cursor: Option<u64> = self.store.get(keys::TIMER_CURSOR).await?;
            if cursor.is_some_and(|c| c <= bucket) {
                return Ok(());
            }
            self.store
                .update::<u64, Infallible>(keys::TIMER_CURSOR, |c| {
                    Ok(c.is_none_or(|c| c > bucket).then_some(bucket))
                })
                .await
                .map_err(UpdateError::into_store)?;
        }
        Err(crate::StoreError::Contention(keys::TIMER_CURSOR.into()).into())
    }

    /// Delivers every due timer (at most [`MAX_TIMERS_PER_TICK`]), deletes
    /// the delivered ones, moves the cursor past finished buckets, then
    /// lets retention remove a bounded batch of old runs, looks at a few
    /// schedules for a lost timer and deletes expired keys. Delivery is
    /// idempotent, so two ticks racing over the same timer are harmless.
    ///
    /// Only a failure to read the timer cursor fails the tick. Each stage
    /// after it (firing timers, retention, the schedule check, the expiry
    /// sweep) runs whatever the others did; a failed stage is reported in
    /// [`TickReport::errors`] and tried again next tick.
    pub async fn tick(&self) -> Result<TickReport, EngineError> {
        let now = self.host.now_ms();
        let mut report = TickReport::default();
        let cursor = self.store.get::<u64>(keys::TIMER_CURSOR).await?;
        if let Some(cursor) = cursor
            && let Err(e) = self.fire_due(cursor, now, &mut report).await
        {
            report.errors.push(format!("timers: {e}"));
        }
        match self.purge_old_runs(now).await {
            Ok(n) => report.purged = n,
            Err(e) => report.errors.push(format!("retention: {e}")),
        }
        if let Err(e) = self
            .check_schedules(now, cursor, &mut report.schedules, &mut report.errors)
            .await
        {
            report.errors.push(format!("schedule check: {e}"));
        }
        match self.sweep_expired(now).await {
            Ok(n) => report.expired = n,
            Err(e) => report.errors.push(format!("expiry: {e}")),
        }
        if let Err(e) = self.store.set(crate::metrics::TICK_LAST_RUN, &now).await {
            report.errors.push(format!("metrics: {e}"));
        }
        if let Err(e) = crate::metrics::sweep_expiry_buckets(&self.store, now).await {
            report.errors.push(format!("metrics: {e}"));
        }
        if let Err(e) = crate::metrics::sweep_activity(&self.store, now).await {
            report.errors.push(format!("activity: {e}"));
        }
        match crate::audit::sweep(&self.store, now, self.config.retention_ms).await {
            Ok(n) => report.audit_removed = n,
            Err(e) => report.errors.push(format!("audit: {e}")),
        }
        Ok(report)
    }

    async fn fire_due(
        &self,
        cursor: u64,
        now: u64,
        report: &mut TickReport,
    ) -> Result<(), EngineError> {
        let now_bucket = timer_bucket_of(now);
        let last = now_bucket.min(cursor.saturating_add(MAX_BUCKETS_PER_TICK - 1));
        let mut budget = MAX_TIMERS_PER_TICK;
        let mut next_cursor = cursor;
        let mut finished = true;
        // Slot counts of the buckets this tick passes, and the slots it
        // found empty in them, to check again once the cursor has moved.
        let mut passed: Vec<(u64, i64)> = Vec::new();
        let mut empty_slots: Vec<(u64, i64)> = Vec::new();
        for b in cursor..=last {
            let slots = self.store.counter(&timer_slots(b)).await?;
            let settled = b.saturating_add(GRACE_BUCKETS) < now_bucket;
            let mut left = 0;
            for slot in 1..=slots {
                let key = timer(b, slot);
                // Absent: fired and deleted, or (in a bucket still within
                // its grace) being written right now.
                let t = match self.store.get::<Timer>(&key).await {
                    Ok(Some(t)) => t,
                    Ok(None) => {
                        left += usize::from(!settled);
                        empty_slots.push((b, slot));
                        continue;
                    }
                    // A timer that no longer decodes can never fire: say
                    // so and drop it, rather than stop every timer behind it.
                    Err(e @ crate::StoreError::Corrupt { .. }) => {
                        report.errors.push(format!("dropped {key}: {e}"));
                        self.store.delete(&key).await?;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                if t.at_ms > now || budget == 0 {
                    left += 1;
                    report.pending += usize::from(t.at_ms <= now);
                    continue;
                }
                budget -= 1;
                let delivered = if t.kind == TimerKind::Schedule {
                    self.fire_schedule(&t, &mut report.schedules).await
                } else {
                    self.apply(&t.run_id, Event::Timer(t.clone()))
                        .await
                        .map(drop)
                };
                match delivered {
                    // A timer for a run that is gone or finished has
                    // nothing to do.
                    Ok(_) | Err(EngineError::NotFound(_)) | Err(EngineError::Rejected(_)) => {
                        report.fired += 1;
                    }
                    Err(e) => {
                        report.pending += 1;
                        report
                            .errors
                            .push(format!("{} {:?}: {e}", t.run_id, t.kind));
                        let later = timer_bucket_of(now + FAILED_TIMER_DELAY_MS);
                        self.put_timer(later, &t).await?;
                    }
                }
                self.store.delete(&key).await?;
            }
            if finished && left == 0 && settled {
                next_cursor = b + 1;
                passed.push((b, slots));
            } else {
                finished = false;
            }
        }
        report.lag_ms = now.saturating_sub(next_cursor.saturating_mul(keys::TIMER_BUCKET_MS));
        if next_cursor == cursor {
            return Ok(());
        }
        // Only from where this tick started: a writer that moved the
        // cursor back meanwhile wins, and the next tick reads again.
        let moved = self
            .store
            .update::<u64, Infallible>(keys::TIMER_CURSOR, |c| {
                Ok((c == Some(cursor)).then_some(next_cursor))
            })
            .await
            .map_err(UpdateError::into_store)?;
        if moved != Some(next_cursor) {
            return Ok(());
        }
        // A writer counted before we read the counter but wrote its timer
        // after we read the slot, or counted after: either way it shows
        // now, and the cursor goes back to read it.
        for (b, slot) in empty_slots {
            if b < next_cursor && self.store.get_raw(&timer(b, slot)).await?.is_some() {
                return self.cursor_at_most(b).await;
            }
        }
        for (b, slots) in passed {
            if self.store.counter(&timer_slots(b)).await? != slots {
                return self.cursor_at_most(b).await;
            }
            if let Some(old) = b.checked_sub(DELETE_LAG_BUCKETS) {
                self.store.delete(&timer_slots(old)).await?;
            }
        }
        Ok(())
    }
}
