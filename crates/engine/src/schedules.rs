//! Cron schedules: stored documents, each armed by one timer at its next
//! fire time, fired by the tick.
//!
//! A schedule document holds its next fire time and an epoch; its timer
//! carries both. Every write of the schedule (create, update, pause, resume,
//! re-arm) bumps the epoch and stores the new timer *before* the document,
//! so a stored schedule always has its timer and an older timer finds the
//! epoch changed and does nothing. No tick reads every schedule to find the
//! next fire: the timer buckets do that. An update keeps a fire that is due
//! but not handled yet (the new timer fires it, catching up as the plan
//! says); a resume fires next at the first time after now.
//!
//! Firing the timer of epoch `E` and fire time `T`, while the document
//! still holds both: the request that brings the counter of `(name, E, T)`
//! from 0 to 1 claims the fire and is the only one to handle it (a racing
//! tick, or a stale copy of the timer, gives its count back and does
//! nothing; the counter is deleted a day later). The claimer plans what is
//! due ([`Schedule::plan`], from `T`, or from just after the last fire the
//! document records, so no recorded fire is planned again): on time, caught
//! up after downtime, or missed. It starts one run per fire time with the
//! idempotency key of that schedule and time (under [`Overlap::Skip`] and
//! [`Overlap::CancelPrevious`] only the newest fire of a catch-up starts;
//! the older ones count as skipped), arms the timer of the next fire, and
//! only then moves the document on by compare-and-swap. A claimer that
//! fails with an error gives the claim back, so the tick's retry of the
//! timer claims it again.
//!
//! The swap records the fire (last run, last fire time, counters) whenever
//! its newest fire time is newer than the one stored, even when an update
//! or a pause came in between: the next fire's overlap check must see the
//! run this one started. It moves the next fire time only when the document
//! still holds `E` and `T`. A fire that plans nothing to start (all missed)
//! is counted with that move instead, so each fire is counted once.
//!
//! Liveness does not rest on the claimer surviving: each tick also looks at
//! a few schedules in turn ([`MAX_CHECKED_PER_TICK`]) and re-arms one whose
//! timer is lost (its claimer died between the claim and the swap, or the
//! timer itself was lost): the tick's timer cursor has finished the bucket
//! the timer went to (its fire time's, or its arming time's if later) and
//! the fire is [`REARM_AFTER_MS`] overdue, so a timer that is only late
//! behind a cursor catching up is left alone. Re-arming bumps the epoch (a
//! fresh claim) and stamps `updated_at_ms`; the fires it catches up on
//! start under the same idempotency keys, so nothing runs twice. A schedule
//! document that does not decode is reported in the tick's errors and
//! passed over.
//!
//! Counted per fire, in the document, the tick's [`ScheduleReport`] and
//! `spindle_schedule_fires_total{outcome}`: `started`, `skipped` (overlap, or an
//! older fire of a catch-up), `missed` (too late) and `failed` (the
//! workflow is gone or refuses the payload: nothing could start).

use std::convert::Infallible;

use spindle_core::keys;
use spindle_core::run::{Event, Run, ScheduleRef, Timer, TimerKind, Trigger, TriggerKind};
use spindle_core::schedule::{Overlap, Schedule, ScheduleSpec, schedule_run_key};
use spindle_core::workflow::Workflow;

use crate::registry::RegistryError;
use crate::store::{StoreExt, UpdateError};
use crate::{Engine, EngineError, Host, Store, Workers};

/// How overdue a schedule's next fire must be before the tick re-arms it:
/// well past the timer's own bucket grace and a slow handler.
pub const REARM_AFTER_MS: u64 = 2 * 60_000;
/// Most schedules one tick looks at for a lost timer.
pub const MAX_CHECKED_PER_TICK: usize = 10;
/// How long the claim counter of a fire is kept: far longer than any
/// handler or retry of its timer takes.
pub const CLAIM_KEPT_MS: u64 = 86_400_000;

/// What the tick did with schedules.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ScheduleReport {
    /// Runs started by fires.
    pub started: u64,
    /// Fires that came too late and were skipped.
    pub missed: u64,
    /// Fires skipped because the previous run was still going, or older
    /// fires of a catch-up that only starts the newest.
    pub skipped: u64,
    /// Fires that could start nothing: the workflow is gone, or it refuses
    /// the payload.
    pub failed: u64,
    /// Schedules re-armed after their timer was lost.
    pub rearmed: u64,
}

/// What one fire did.
enum Fired {
    /// Started (or found, started already under its key) this run.
    Started(String),
    /// Skipped: the previous run is still going ([`Overlap::Skip`]).
    Skipped,
    /// Could start nothing: the workflow is gone or refuses the payload.
    Failed,
}

/// The counter whose first increment claims the fire at `at_ms` of epoch
/// `epoch` of schedule `name`.
fn claim_key(name: &str, epoch: u64, at_ms: u64) -> String {
    keys::counter(&format!("schedule-fire:{name}:{epoch}:{at_ms}"))
}

fn timer_at(name: &str, epoch: u64, at_ms: u64) -> Timer {
    Timer {
        at_ms,
        run_id: String::new(),
        kind: TimerKind::Schedule,
        step: None,
        attempt: 0,
        schedule: Some(ScheduleRef {
            name: name.to_owned(),
            epoch,
        }),
        fallback: 0,
    }
}

fn timer_for(s: &Schedule) -> Option<Timer> {
    Some(timer_at(&s.name, s.epoch, s.next_fire_at_ms?))
}

fn store_err(e: EngineError) -> RegistryError {
    match e {
        EngineError::Store(s) => RegistryError::Store(s),
        other => RegistryError::Store(crate::StoreError::Store(other.to_string())),
    }
}

impl<S: Store, W: Workers, H: Host> Engine<S, W, H> {
    /// Creates (`create`) or replaces a schedule and arms its timer. The
    /// workflow must exist and accept the payload (its input schema).
    ///
    /// An update of a schedule whose fire is due but not handled yet keeps
    /// that fire time: the new timer fires it (catching up as
    /// [`Schedule::plan`] says) rather than drop it.
    pub async fn put_schedule(
        &self,
        spec: ScheduleSpec,
        create: bool,
    ) -> Result<Schedule, RegistryError> {
        let name = spec.name.clone();
        let key = keys::schedule(&name);
        let previous: Option<Schedule> = self.store.get(&key).await?;
        match (&previous, create) {
            (Some(_), true) => return Err(RegistryError::Exists(format!("schedule {name:?}"))),
            (None, false) => {
                return Err(RegistryError::NotFound(format!(
                    "no schedule named {name:?}"
                )));
            }
            _ => {}
        }
        // Validated once up front for the errors, then again against the
        // document each swap attempt sees (its epoch and counters).
        spec.clone()
            .validate(self.host.now_ms(), previous.as_ref())?;
        let Some(wf) = self
            .store
            .get::<Workflow>(&keys::workflow(&spec.workflow))
            .await?
        else {
            return Err(spindle_core::ValidationError::single(
                "/workflow",
                format!("no workflow named {:?}", spec.workflow),
            )
            .into());
        };
        // Every fire would start nothing: say so now (pointers under
        // "/payload").
        wf.check_payload(&spec.payload)?;
        // Listed before it is written, so the tick's check of lost timers
        // sees every stored schedule (a name without a document is skipped).
        self.store
            .edit_index(keys::SCHEDULE_INDEX, &name, true)
            .await?;
        let written = self
            .write_schedule(&name, |current| match (current, create) {
                (Some(_), true) => Err(RegistryError::Exists(format!("schedule {name:?}"))),
                (None, false) => Err(RegistryError::NotFound(format!(
                    "no schedule named {name:?}"
                ))),
                (current, _) => {
                    let now = self.host.now_ms();
                    let mut s = spec.clone().validate(now, current.as_ref())?;
                    // A fire due and not handled yet is kept, not dropped.
                    if let Some(c) = &current
                        && !c.paused
                        && !s.paused
                        && let Some(due) = c.next_fire_at_ms.filter(|&due| due <= now)
                    {
                        s.next_fire_at_ms = Some(due);
                    }
                    Ok(s)
                }
            })
            .await?;
        Ok(written)
    }

    /// Pauses or resumes a schedule. Resuming fires next at the first time
    /// after now: what fell due while paused is not caught up.
    pub async fn pause_schedule(
        &self,
        name: &str,
        paused: bool,
    ) -> Result<Schedule, RegistryError> {
        self.write_schedule(name, |current| {
            let current = current
                .ok_or_else(|| RegistryError::NotFound(format!("no schedule named {name:?}")))?;
            let mut spec = current.to_spec();
            spec.paused = paused;
            Ok(spec.validate(self.host.now_ms(), Some(&current))?)
        })
        .await
    }

    /// Deletes a schedule; its timer finds it gone and does nothing.
    pub async fn delete_schedule(&self, name: &str) -> Result<(), RegistryError> {
        let key = keys::schedule(name);
        if self.store.get_raw(&key).await?.is_none() {
            return Err(RegistryError::NotFound(format!(
                "no schedule named {name:?}"
            )));
        }
        self.store.delete(&key).await?;
        self.store
            .edit_index(keys::SCHEDULE_INDEX, name, false)
            .await?;
        Ok(())
    }

    /// Writes schedule `name` as `next` computes it from the stored one,
    /// by compare-and-swap, its timer stored first.
    async fn write_schedule(
        &self,
        name: &str,
        mut next: impl FnMut(Option<Schedule>) -> Result<Schedule, RegistryError>,
    ) -> Result<Schedule, RegistryError> {
        let key = keys::schedule(name);
        for _ in 0..crate::store::MAX_CAS_ATTEMPTS {
            let (cas, bytes) = self.store.watch(&key).await?;
            let current: Option<Schedule> = match &bytes {
                None => None,
                Some(b) => Some(crate::store::decode(&key, b)?),
            };
            let s = next(current)?;
            if let Some(t) = timer_for(&s) {
                self.schedule(&[spindle_core::Effect::Schedule(t)])
                    .await
                    .map_err(store_err)?;
            }
            if self.store.swap(cas, &crate::store::encode(&s)?).await? {
                return Ok(s);
            }
        }
        Err(crate::StoreError::Contention(key).into())
    }

    /// Handles a schedule's timer: the request that claims the fire
    /// handles it, every other one does nothing. Errors are store failures
    /// (the claim given back): the tick puts the timer back and tries
    /// again.
    pub(crate) async fn fire_schedule(
        &self,
        t: &Timer,
        report: &mut ScheduleReport,
    ) -> Result<(), EngineError> {
        let Some(sref) = &t.schedule else {
            return Ok(());
        };
        let key = keys::schedule(&sref.name);
        let Some(s) = self.store.get::<Schedule>(&key).await? else {
            return Ok(());
        };
        if s.paused || s.epoch != sref.epoch || s.next_fire_at_ms != Some(t.at_ms) {
            return Ok(());
        }
        let claim = claim_key(&s.name, s.epoch, t.at_ms);
        if self.store.increment(&claim, 1).await? != 1 {
            // Another request holds the claim. Give this count back, so
            // that a claim given back on failure can be taken again.
            if let Err(e) = self.store.increment(&claim, -1).await {
                self.host
                    .log(&format!("schedule {}: {claim} not given back: {e}", s.name));
            }
            return Ok(());
        }
        match self.handle_fire(&s, t, &claim, report).await {
            Ok(()) => Ok(()),
            Err(e) => {
                if let Err(r) = self.store.increment(&claim, -1).await {
                    // The re-arm check recovers it.
                    self.host
                        .log(&format!("schedule {}: {claim} not given back: {r}", s.name));
                }
                Err(e)
            }
        }
    }

    /// The claimer's part of [`Engine::fire_schedule`]: `s` as read before
    /// the claim.
    async fn handle_fire(
        &self,
        s: &Schedule,
        t: &Timer,
        claim: &str,
        report: &mut ScheduleReport,
    ) -> Result<(), EngineError> {
        let now = self.host.now_ms();
        self.expire_at(&[claim.to_owned()], now.saturating_add(CLAIM_KEPT_MS))
            .await?;
        // Fires the document records already (handled under an earlier
        // epoch, when an update kept the due time) are not planned again.
        let due = s
            .last_fire_at_ms
            .map_or(t.at_ms, |last| t.at_ms.max(last.saturating_add(1)));
        let plan = s.plan(due, now);
        // Under skip and cancel_previous a catch-up starts only its newest
        // fire: the older ones would be skipped or cancelled at once.
        let keep = match s.overlap {
            Overlap::Allow => plan.fire.len(),
            Overlap::Skip | Overlap::CancelPrevious => plan.fire.len().min(1),
        };
        let (older, to_start) = plan.fire.split_at(plan.fire.len() - keep);
        let (mut started, mut skipped, mut failed) = (0, older.len() as u64, 0);
        if !older.is_empty() {
            self.host.log(&format!(
                "schedule {}: catching up, {} older fire(s) skipped; only the newest starts",
                s.name,
                older.len()
            ));
        }
        let mut last_run = s.last_run_id.clone();
        let mut started_run = None;
        for fire in to_start {
            match self.fire_once(s, *fire, last_run.as_deref()).await? {
                Fired::Started(id) => {
                    started += 1;
                    last_run = Some(id.clone());
                    started_run = Some(id);
                }
                Fired::Skipped => skipped += 1,
                Fired::Failed => failed += 1,
            }
        }
        // The next timer before the document moves on: a document that has
        // moved on always has its timer. Should the swap below find the
        // schedule rewritten meanwhile, this timer's epoch is stale and it
        // does nothing.
        if let Some(next) = plan.next {
            self.schedule(&[spindle_core::Effect::Schedule(timer_at(
                &s.name, s.epoch, next,
            ))])
            .await?;
        }
        let newest = plan.fire.last().copied();
        // Whether this request's swap wrote, and whether it counted this
        // fire: a racing write can leave the document looking exactly as
        // this one would have, so the document alone cannot tell.
        let (mut wrote, mut counted) = (false, false);
        self.store
            .update::<Schedule, Infallible>(&keys::schedule(&s.name), |current| {
                (wrote, counted) = (false, false);
                let Some(mut c) = current else {
                    return Ok(None);
                };
                // Recorded whatever was written meanwhile, unless a newer
                // fire is recorded already.
                let record = newest.is_some_and(|n| c.last_fire_at_ms.is_none_or(|l| n > l));
                let advance = c.epoch == s.epoch && c.next_fire_at_ms == Some(t.at_ms);
                if !record && !advance {
                    return Ok(None);
                }
                if record {
                    c.last_fire_at_ms = newest;
                    if let Some(id) = &started_run {
                        c.last_run_id = Some(id.clone());
                    }
                }
                // Counted with the fires recorded or, when none fired,
                // with the move to the next fire.
                let count = record || (advance && newest.is_none());
                if count {
                    c.fired += started;
                    c.skipped += skipped;
                    c.failed += failed;
                    c.missed += plan.missed;
                }
                if advance {
                    c.next_fire_at_ms = plan.next;
                }
                (wrote, counted) = (true, count);
                Ok(Some(c))
            })
            .await
            .map_err(UpdateError::into_store)?;
        if !(wrote && counted) {
            return Ok(());
        }
        report.started += started;
        report.skipped += skipped;
        report.failed += failed;
        report.missed += plan.missed;
        for (what, n) in [
            ("started", started),
            ("skipped", skipped),
            ("failed", failed),
            ("missed", plan.missed),
        ] {
            if n > 0 {
                // Counting is best effort: the fires are done either way.
                if let Err(e) = crate::metrics::count(
                    &self.store,
                    &spindle_core::metrics::SCHEDULE_FIRES,
                    &[what],
                    n as i64,
                )
                .await
                {
                    self.host
                        .log(&format!("schedule {}: fires not counted: {e}", s.name));
                }
            }
        }
        Ok(())
    }

    /// Starts the run of one fire, minding the overlap policy.
    async fn fire_once(
        &self,
        s: &Schedule,
        fire_ms: u64,
        previous: Option<&str>,
    ) -> Result<Fired, EngineError> {
        let actor = format!("schedule:{}", s.name);
        let still_going = match previous {
            Some(id) => match self.store.get::<Run>(&keys::run(id)).await {
                Ok(run) => run.filter(|r| !r.status.is_terminal()),
                // A previous run that no longer decodes is not going.
                Err(crate::StoreError::Corrupt { .. }) => None,
                Err(e) => return Err(e.into()),
            },
            None => None,
        };
        if let Some(prev) = still_going {
            match s.overlap {
                Overlap::Allow => {}
                Overlap::Skip => {
                    self.host.log(&format!(
                        "schedule {}: fire at {fire_ms} skipped, run {} still going",
                        s.name, prev.id
                    ));
                    return Ok(Fired::Skipped);
                }
                Overlap::CancelPrevious => {
                    let cancel = Event::Cancel {
                        reason: format!(
                            "schedule {} fired again (overlap: cancel_previous)",
                            s.name
                        ),
                        by: Some(actor.clone()),
                    };
                    match self.apply(&prev.id, cancel).await {
                        Ok(_) | Err(EngineError::Rejected(_)) | Err(EngineError::NotFound(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        let trigger = Trigger {
            kind: TriggerKind::Schedule,
            payload: s.payload.clone(),
            actor: Some(actor),
        };
        match self
            .create_run(
                &s.workflow,
                trigger,
                Some(&schedule_run_key(&s.name, fire_ms)),
            )
            .await
        {
            Ok((run, _)) => Ok(Fired::Started(run.id)),
            // A document that no longer decodes (the workflow, an agent)
            // will not decode on a retry either: the fire fails and the
            // schedule goes on, rather than retrying it for ever.
            Err(EngineError::Store(e @ crate::StoreError::Corrupt { .. })) => {
                self.host.log(&format!(
                    "schedule {}: fire at {fire_ms} started nothing: {e}",
                    s.name
                ));
                Ok(Fired::Failed)
            }
            Err(EngineError::Store(e)) => Err(e.into()),
            // The workflow is gone or the payload no longer fits it: this
            // fire cannot start anything; the schedule goes on.
            Err(e) => {
                self.host.log(&format!(
                    "schedule {}: fire at {fire_ms} started nothing: {e}",
                    s.name
                ));
                Ok(Fired::Failed)
            }
        }
    }

    /// Looks at the next few schedules in turn and re-arms those whose
    /// timer was lost. `timer_cursor` is the timer cursor the tick read
    /// (the oldest bucket it has not finished). A schedule that cannot be
    /// checked (its document does not decode, a store failure) goes into
    /// `errors` and the check goes on; the round-robin cursor always moves.
    pub(crate) async fn check_schedules(
        &self,
        now: u64,
        timer_cursor: Option<u64>,
        report: &mut ScheduleReport,
        errors: &mut Vec<String>,
    ) -> Result<(), EngineError> {
        let names: Vec<String> = self
            .store
            .get(keys::SCHEDULE_INDEX)
            .await?
            .unwrap_or_default();
        if names.is_empty() {
            return Ok(());
        }
        let after: Option<String> = self.store.get(keys::SCHEDULE_CHECK_CURSOR).await?;
        let start = after
            .as_deref()
            .map_or(0, |a| names.partition_point(|n| n.as_str() <= a));
        let batch: Vec<&String> = names
            .iter()
            .cycle()
            .skip(start)
            .take(MAX_CHECKED_PER_TICK.min(names.len()))
            .collect();
        // No cursor: no timer was ever written through `schedule`, so none
        // can be waiting; a schedule overdue by then has lost its timer.
        let finished = timer_cursor.unwrap_or_else(|| keys::timer_bucket_of(now));
        for name in &batch {
            match self.check_schedule(name, now, finished).await {
                Ok(true) => {
                    report.rearmed += 1;
                    self.host
                        .log(&format!("schedule {name}: its timer was lost; re-armed"));
                }
                Ok(false) => {}
                Err(e) => errors.push(format!("schedule {name}: {e}")),
            }
        }
        if let Some(last) = batch.last() {
            self.store.set(keys::SCHEDULE_CHECK_CURSOR, last).await?;
        }
        Ok(())
    }

    /// Re-arms schedule `name` if its timer is lost: the tick's cursor has
    /// finished (with its grace) the bucket the timer went to, and the
    /// timer is [`REARM_AFTER_MS`] overdue. Whether it re-armed.
    ///
    /// A timer goes to the bucket of its fire time, or of the time it was
    /// armed if that is later (an update that kept a due fire, a re-arm):
    /// the document's `updated_at_ms`, which a re-arm sets too. A timer
    /// that is only waiting behind a cursor catching up is not lost.
    async fn check_schedule(
        &self,
        name: &str,
        now: u64,
        finished: u64,
    ) -> Result<bool, EngineError> {
        let Some(s) = self.store.get::<Schedule>(&keys::schedule(name)).await? else {
            return Ok(false);
        };
        let lost = s.next_fire_at_ms.is_some_and(|at| {
            let due = at.max(s.updated_at_ms);
            keys::timer_bucket_of(due).saturating_add(crate::timers::GRACE_BUCKETS) < finished
                && due.saturating_add(REARM_AFTER_MS) < now
        });
        if s.paused || !lost {
            return Ok(false);
        }
        let epoch = s.epoch;
        let rearmed = self
            .write_schedule(name, |current| {
                let Some(mut c) = current else {
                    return Err(RegistryError::NotFound(String::new()));
                };
                if c.epoch != epoch {
                    // Written meanwhile: armed by whoever wrote it.
                    return Err(RegistryError::Exists(String::new()));
                }
                c.epoch += 1;
                // Its timer goes to now's bucket: the check waits for that
                // one before it looks again.
                c.updated_at_ms = c.updated_at_ms.max(now);
                Ok(c)
            })
            .await;
        match rearmed {
            Ok(_) => Ok(true),
            Err(RegistryError::Store(e)) => Err(e.into()),
            Err(_) => Ok(false),
        }
    }
}
