//! Timer and index documents.
//!
//! The store has no scans, so everything that must be found again without a
//! key in hand lives in an explicit document, changed by compare-and-swap:
//! one sorted timer document, and run id lists by workflow, status and day.

use std::convert::Infallible;

use spindle_core::keys;
use spindle_core::run::{Event, RunStatus, Timer};

use crate::{Engine, EngineError, MAX_TIMERS_PER_TICK, TickReport};

impl Engine {
    /// Adds timers to the timer document (one write for all of them).
    pub(crate) fn add_timers(&self, timers: Vec<Timer>) -> Result<(), EngineError> {
        self.kv
            .update::<Vec<Timer>, Infallible>(keys::TIMERS, |current| {
                let mut all = current.unwrap_or_default();
                let before = all.len();
                for t in &timers {
                    if let Err(pos) = all.binary_search(t) {
                        all.insert(pos, t.clone());
                    }
                }
                Ok((all.len() != before).then_some(all))
            })?;
        Ok(())
    }

    /// Delivers every due timer (at most [`MAX_TIMERS_PER_TICK`]), then
    /// removes the delivered ones. Delivery is idempotent, so two ticks racing
    /// over the same timer are harmless.
    pub async fn tick(&self, now: u64) -> Result<TickReport, EngineError> {
        let timers: Vec<Timer> = self.kv.get(keys::TIMERS).await?.unwrap_or_default();
        let due: Vec<Timer> = timers
            .iter()
            .take_while(|t| t.at_ms <= now)
            .take(MAX_TIMERS_PER_TICK)
            .cloned()
            .collect();
        let mut report = TickReport::default();
        let mut done = Vec::with_capacity(due.len());
        for t in due {
            match self.apply(&t.run_id, Event::Timer(t.clone()), now).await {
                // A timer for a run that is gone or finished has nothing to do.
                Ok(_) | Err(EngineError::NotFound(_)) | Err(EngineError::Rejected(_)) => {
                    report.fired += 1;
                    done.push(t);
                }
                Err(e) => report
                    .errors
                    .push(format!("{} {:?}: {e}", t.run_id, t.kind)),
            }
        }
        let left = self
            .kv
            .update::<Vec<Timer>, Infallible>(keys::TIMERS, |current| {
                let mut all = current.unwrap_or_default();
                let before = all.len();
                all.retain(|t| done.binary_search(t).is_err());
                Ok((all.len() != before).then_some(all))
            })?
            .unwrap_or_default();
        report.pending = left.len();
        report.next_at_ms = left.first().map(|t| t.at_ms);
        Ok(report)
    }

    /// Adds `item` to the sorted list under `key`.
    pub(crate) fn index_add(&self, key: &str, item: &str) -> Result<(), EngineError> {
        Ok(self.kv.edit_index(key, item, true)?)
    }

    /// Removes `item` from the sorted list under `key`.
    pub(crate) fn index_remove(&self, key: &str, item: &str) -> Result<(), EngineError> {
        Ok(self.kv.edit_index(key, item, false)?)
    }

    /// Moves a run between status indexes: added to the new one first, so a
    /// reader may briefly see it in both (lists re-check the run's status)
    /// but never in neither.
    pub(crate) fn move_status(
        &self,
        run_id: &str,
        from: RunStatus,
        to: RunStatus,
    ) -> Result<(), EngineError> {
        self.index_add(&keys::runs_by_status(to.as_str()), run_id)?;
        self.index_remove(&keys::runs_by_status(from.as_str()), run_id)
    }

    /// Reads a sorted id list.
    pub async fn index(&self, key: &str) -> Result<Vec<String>, EngineError> {
        Ok(self.kv.get(key).await?.unwrap_or_default())
    }
}
