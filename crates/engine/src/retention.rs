//! Retention: finished runs older than the retention period are removed by
//! the tick, a bounded batch at a time, with everything kept about them
//! (their jobs' inputs, outputs and counters, their idempotency record,
//! their listing pointers).
//!
//! Runs are visited in creation order by sequence number from a cursor
//! (`retention:cursor`). A run still going when the cursor reaches it keeps
//! its pointers (so it is still listed) and is remembered in a slot of its
//! own (`retention:held:<n>`); each tick looks at a few of those slots in
//! turn, so the cost of a tick does not grow with them either.

use std::convert::Infallible;

use spindle_core::ids::{job_id, run_created_ms};
use spindle_core::keys;
use spindle_core::run::Run;

use crate::store::{StoreExt, UpdateError};
use crate::{Engine, EngineError, Host, Store, Workers};

/// Most runs one tick looks at.
pub const MAX_PURGE_PER_TICK: usize = 20;
/// Most held runs one tick looks at again.
pub const MAX_HELD_PER_TICK: i64 = 5;
/// How many attempt numbers before a step's oldest recorded attempt (those
/// compacted away) retention cleans up after.
const MAX_COMPACTED_PURGED: u32 = 50;
/// How far behind the newest run a missing listing pointer is taken for a
/// run that will never be stored.
const IN_FLIGHT_MARGIN: u64 = 1_000;

impl<S: Store, W: Workers, H: Host> Engine<S, W, H> {
    /// Removes finished runs older than the retention period, looking at
    /// no more than [`MAX_PURGE_PER_TICK`] new runs and
    /// [`MAX_HELD_PER_TICK`] held ones; returns how many it removed.
    pub(crate) async fn purge_old_runs(&self, now: u64) -> Result<usize, EngineError> {
        let cutoff = now.saturating_sub(self.config.retention_ms);
        let mut purged = self.purge_held(cutoff).await?;

        let top = self.store.counter(&keys::run_counter()).await? as u64;
        let start: u64 = self
            .store
            .get(keys::RETENTION_CURSOR)
            .await?
            .unwrap_or(1)
            .max(1);
        // The cursor only moves past a run that was looked at; pointers not
        // written yet (a run being created) are not passed over.
        let mut next = start;
        let mut seq = start;
        let mut looked = 0;
        while seq <= top && looked < MAX_PURGE_PER_TICK {
            looked += 1;
            let Some(id) = self.store.get::<String>(&keys::run_at(seq)).await? else {
                // Removed already, or never created (its creator died), or
                // being created right now: passed over once a later run is
                // old enough, or once far behind the newest runs (creations
                // in flight hold the newest numbers).
                seq += 1;
                if seq + IN_FLIGHT_MARGIN <= top {
                    next = seq;
                }
                continue;
            };
            if run_created_ms(&id).is_none_or(|c| c >= cutoff) {
                break;
            }
            match self.purge_if_done(&id, cutoff).await {
                Ok(true) => purged += 1,
                Ok(false) => self.hold(&id).await?,
                // A run that no longer decodes is kept (and logged), never
                // a reason to stop retention here for good.
                Err(EngineError::Store(e @ crate::StoreError::Corrupt { .. })) => {
                    self.host.log(&format!("retention: keeping run {id}: {e}"));
                    self.hold(&id).await?;
                }
                Err(e) => return Err(e),
            }
            seq += 1;
            next = seq;
        }
        if next > start {
            self.store
                .update::<u64, Infallible>(keys::RETENTION_CURSOR, |c| {
                    Ok(c.is_none_or(|c| c < next).then_some(next))
                })
                .await
                .map_err(UpdateError::into_store)?;
        }
        Ok(purged)
    }

    async fn hold(&self, id: &str) -> Result<(), EngineError> {
        let slot = self
            .store
            .increment(&keys::retention_held_slots(), 1)
            .await?;
        self.store.set(&keys::retention_held(slot), &id).await?;
        Ok(())
    }

    /// Looks again at a few held runs, in turn.
    async fn purge_held(&self, cutoff: u64) -> Result<usize, EngineError> {
        let slots = self.store.counter(&keys::retention_held_slots()).await?;
        if slots == 0 {
            return Ok(0);
        }
        let mut purged = 0;
        for _ in 0..MAX_HELD_PER_TICK.min(slots) {
            let turn = self
                .store
                .increment(&keys::counter("retention:held-turn"), 1)
                .await?;
            let slot = (turn - 1).rem_euclid(slots) + 1;
            let key = keys::retention_held(slot);
            let Some(id) = self.store.get::<String>(&key).await? else {
                continue;
            };
            match self.purge_if_done(&id, cutoff).await {
                Ok(true) => {
                    purged += 1;
                    self.store.delete(&key).await?;
                }
                Ok(false) | Err(EngineError::Store(crate::StoreError::Corrupt { .. })) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(purged)
    }

    /// Removes run `id` and everything kept about it if it finished before
    /// `cutoff` (or is already gone); `false` if it must be kept.
    async fn purge_if_done(&self, id: &str, cutoff: u64) -> Result<bool, EngineError> {
        let seq = spindle_core::ids::run_seq(id).unwrap_or(0);
        let Some(run) = self.store.get::<Run>(&keys::run(id)).await? else {
            self.store.delete(&keys::run_at(seq)).await?;
            return Ok(true);
        };
        if !run.status.is_terminal() || run.finished_at_ms.is_none_or(|f| f >= cutoff) {
            return Ok(false);
        }
        for step in run.units() {
            let recorded = step.gate.as_ref().and_then(|g| g.approval.as_ref());
            for a in recorded.into_iter().chain(&step.superseded_approvals) {
                self.forget_approval(&a.id, a.seq).await?;
            }
            // Attempts no worker took may have been compacted out of the
            // run; their documents go too, up to a bound, so one run's
            // purge stays a bounded amount of work.
            let last = step.attempts.last().map_or(0, |a| a.number);
            let first = step
                .attempts
                .first()
                .map_or(1, |a| a.number.saturating_sub(MAX_COMPACTED_PURGED).max(1));
            for a in first..=last {
                let job = job_id(&run.id, &step.id, a);
                for key in [
                    keys::input(&job),
                    keys::output(&job),
                    keys::counter(&format!("dispatch:{job}")),
                    keys::counter(&format!("result:{job}")),
                    format!("result:{job}"),
                ] {
                    self.store.delete(&key).await?;
                }
            }
        }
        if let Some(hash) = &run.idempotency {
            for key in [
                keys::idempotency(hash),
                keys::counter(&format!("idempotency:{hash}")),
                keys::counter(&format!("idempotency-takeover:{hash}")),
                keys::counter(&format!("start:{id}")),
            ] {
                self.store.delete(&key).await?;
            }
        }
        self.store
            .delete(&keys::workflow_run_at(&run.workflow, run.workflow_seq))
            .await?;
        self.store.delete(&keys::run(id)).await?;
        // The sequence pointer last: a pass that dies part-way finds the
        // run (or its absence) there again.
        self.store.delete(&keys::run_at(seq)).await?;
        Ok(true)
    }
}
