//! Retention: finished runs older than the retention period are removed by
//! the tick, a bounded batch at a time, with everything kept about them
//! (their jobs' inputs, outputs and counters, their idempotency record,
//! their listing entries).
//!
//! Runs are visited in creation order through the pages of all runs, from a
//! cursor (`retention:cursor`, the oldest page not yet cleared). A run still
//! going when its page is cleared is remembered in `retention:held` and
//! looked at again on later passes, so one long-lived run does not stop
//! retention; that list holds only runs in flight.

use std::convert::Infallible;

use spindle_core::ids::{job_id, run_created_ms};
use spindle_core::keys::{self, RUN_PAGE};
use spindle_core::run::Run;

use crate::store::{StoreExt, UpdateError};
use crate::{Engine, EngineError, Host, Store, Workers};

/// Most runs one tick removes.
pub const MAX_PURGE_PER_TICK: usize = 20;

impl<S: Store, W: Workers, H: Host> Engine<S, W, H> {
    /// Removes up to [`MAX_PURGE_PER_TICK`] finished runs older than the
    /// retention period; returns how many.
    pub(crate) async fn purge_old_runs(&self, now: u64) -> Result<usize, EngineError> {
        let cutoff = now.saturating_sub(self.config.retention_ms);
        let mut purged = 0;

        let held: Vec<String> = self
            .store
            .get(keys::RETENTION_HELD)
            .await?
            .unwrap_or_default();
        for id in held {
            if purged == MAX_PURGE_PER_TICK {
                return Ok(purged);
            }
            if self.purge_if_done(&id, cutoff).await? {
                purged += 1;
                self.store
                    .edit_index(keys::RETENTION_HELD, &id, false)
                    .await?;
            }
        }

        // The page runs are being added to is never cleared.
        let top = self.store.counter(&keys::run_counter()).await? as u64 / RUN_PAGE;
        let mut page: u64 = self.store.get(keys::RETENTION_CURSOR).await?.unwrap_or(0);
        while page < top && purged < MAX_PURGE_PER_TICK {
            let ids: Vec<String> = self
                .store
                .get(&keys::run_page(page))
                .await?
                .unwrap_or_default();
            for id in &ids {
                if run_created_ms(id).is_some_and(|c| c >= cutoff) {
                    // Pages are in creation order: nothing later is old
                    // enough yet.
                    return Ok(purged);
                }
                if purged == MAX_PURGE_PER_TICK {
                    return Ok(purged);
                }
                if self.purge_if_done(id, cutoff).await? {
                    purged += 1;
                } else {
                    self.store
                        .edit_index(keys::RETENTION_HELD, id, true)
                        .await?;
                }
                self.store
                    .edit_index(&keys::run_page(page), id, false)
                    .await?;
            }
            // Nobody adds to a page below the top: once empty it can go.
            self.store.delete(&keys::run_page(page)).await?;
            page += 1;
            self.store
                .update::<u64, Infallible>(keys::RETENTION_CURSOR, |c| {
                    Ok(c.is_none_or(|c| c < page).then_some(page))
                })
                .await
                .map_err(UpdateError::into_store)?;
        }
        Ok(purged)
    }

    /// Removes run `id` and everything kept about it if it finished before
    /// `cutoff` (or is already gone); `false` if it must be kept.
    async fn purge_if_done(&self, id: &str, cutoff: u64) -> Result<bool, EngineError> {
        let Some(run) = self.store.get::<Run>(&keys::run(id)).await? else {
            return Ok(true);
        };
        if !run.status.is_terminal() || run.finished_at_ms.is_none_or(|f| f >= cutoff) {
            return Ok(false);
        }
        for step in &run.steps {
            for a in 1..=step.attempts.len() as u32 {
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
            ] {
                self.store.delete(&key).await?;
            }
        }
        let wf_page = keys::workflow_run_page(&run.workflow, run.workflow_seq / RUN_PAGE);
        let left = self
            .store
            .update::<Vec<String>, Infallible>(&wf_page, |current| {
                let Some(mut ids) = current else {
                    return Ok(None);
                };
                Ok(crate::store::set_member(&mut ids, id, false).then_some(ids))
            })
            .await
            .map_err(UpdateError::into_store)?;
        let wf_top = self
            .store
            .counter(&keys::workflow_run_counter(&run.workflow))
            .await? as u64
            / RUN_PAGE;
        if left.is_some_and(|ids| ids.is_empty()) && run.workflow_seq / RUN_PAGE < wf_top {
            self.store.delete(&wf_page).await?;
        }
        // Last, so a pass that dies part-way finds the run again.
        self.store.delete(&keys::run(id)).await?;
        Ok(true)
    }
}
