//! Metrics in the store: counting (by atomic increment, so every instance
//! adds to one number) and gathering a scrape (a bounded number of reads:
//! one index document per family and a few counters per series, never one
//! read per run). What the counts mean is in [`spindle_core::metrics`].

use spindle_core::metrics::{self as m, Family, Kind, Observation, Samples, Series, SeriesIndex};

use crate::store::{Result, Store, StoreExt, UpdateError};

/// The document holding when the tick last ran (milliseconds since the
/// Unix epoch), for `spindle_tick_last_run_timestamp_seconds`.
pub const TICK_LAST_RUN: &str = "metrics:tick-last-run";

/// Adds `n` to the counter series of `family` with `labels`. Best effort
/// for callers: a failed count never fails what was counted.
pub async fn count<S: Store>(store: &S, family: &Family, labels: &[&str], n: i64) -> Result<()> {
    let series = family.series(labels);
    let new = store.increment(&family.count_key(&series), n).await?;
    if m::crossed_power_of_two(new, n) {
        file(store, family, &series).await?;
    }
    Ok(())
}

/// Observes a duration of `ms` in the histogram series of `family` with
/// `labels`.
pub async fn observe<S: Store>(store: &S, family: &Family, labels: &[&str], ms: u64) -> Result<()> {
    let series = family.series(labels);
    let bucket = store
        .increment(&family.bucket_key(&series, family.bucket_of(ms)), 1)
        .await?;
    store
        .increment(
            &family.sum_key(&series),
            i64::try_from(ms).unwrap_or(i64::MAX),
        )
        .await?;
    // The count is the buckets' sum (a scrape adds them up): each bucket's
    // counter files the series at its powers of two.
    if m::crossed_power_of_two(bucket, 1) {
        file(store, family, &series).await?;
    }
    Ok(())
}

/// Records what a run's change adds to the metrics (see
/// [`spindle_core::metrics::observe`]). `now_ms` keeps a late end from
/// touching an expiry bucket already passed (and swept).
pub async fn record<S: Store>(store: &S, observations: &[Observation], now_ms: u64) -> Result<()> {
    let mut first_error = None;
    for o in observations {
        let done = match o {
            Observation::Count { family, labels, n } => {
                let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
                count(store, family, &labels, *n).await
            }
            Observation::Duration { family, labels, ms } => {
                let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
                observe(store, family, &labels, *ms).await
            }
            Observation::Expiring { at_ms, delta } => {
                let bucket = at_ms / m::EXPIRY_BUCKET_MS;
                if bucket < now_ms / m::EXPIRY_BUCKET_MS {
                    Ok(())
                } else {
                    store
                        .increment(&m::expiring_key(bucket), *delta)
                        .await
                        .map(drop)
                }
            }
        };
        // Every observation is tried: one failed count loses only itself.
        if let Err(e) = done {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Files `series` in its family's index (a compare-and-swap; a retry is
/// harmless, and a lost write is repeated at the counter's next power of
/// two).
async fn file<S: Store>(store: &S, family: &Family, series: &Series) -> Result<()> {
    let added = store
        .update::<SeriesIndex, std::convert::Infallible>(&family.index_key(), |index| {
            let mut index = index.unwrap_or_default();
            Ok(m::file_series(&mut index, series).then_some(index))
        })
        .await;
    match added {
        Ok(_) => Ok(()),
        Err(UpdateError::Store(e)) => Err(e),
        Err(UpdateError::Rejected(never)) => match never {},
    }
}

/// Where the sweep of passed expiry buckets has got to.
pub const EXPIRING_CURSOR: &str = "metrics:expiring-cursor";

/// Deletes passed expiry buckets from a cursor, at most two a tick (one
/// more passes every ten minutes). It
/// stays a whole bucket behind: [`record`] leaves buckets before the
/// current one alone, but one that checked just before a boundary may
/// still add to the bucket just passed.
pub async fn sweep_expiry_buckets<S: Store>(store: &S, now_ms: u64) -> Result<()> {
    let Some(last) = (now_ms / m::EXPIRY_BUCKET_MS).checked_sub(2) else {
        return Ok(());
    };
    let stored = store.get::<u64>(EXPIRING_CURSOR).await?;
    // A fresh store starts a day back: nothing older was counted.
    let start = stored.unwrap_or_else(|| last.saturating_sub(144));
    let mut next = start;
    while next <= last && next < start + 2 {
        store.delete(&m::expiring_key(next)).await?;
        next += 1;
    }
    if next != start || stored.is_none() {
        store.set(EXPIRING_CURSOR, &next).await?;
    }
    Ok(())
}

/// Reads every stored family and renders it, followed by the gauges the
/// store answers (`spindle_approvals_expiring_soon`,
/// `spindle_tick_last_run_timestamp_seconds`). The reads are one index per
/// family plus one counter per counter series (the bucket count plus two
/// per histogram series), and seven expiry buckets: bounded by the
/// labels' values, not by how many runs, approvals or deliveries exist.
pub async fn gather<S: Store>(store: &S, now_ms: u64) -> Result<String> {
    let mut out = String::new();
    for family in m::STORED {
        let index: SeriesIndex = store.get(&family.index_key()).await?.unwrap_or_default();
        let samples = match family.kind {
            Kind::Histogram => {
                let mut hs = Vec::with_capacity(index.len());
                for s in index {
                    let mut buckets = Vec::with_capacity(family.buckets_ms.len() + 1);
                    for i in 0..=family.buckets_ms.len() {
                        buckets.push(non_negative(
                            store.counter(&family.bucket_key(&s, i)).await?,
                        ));
                    }
                    let sum = non_negative(store.counter(&family.sum_key(&s)).await?);
                    hs.push((s, buckets, sum));
                }
                Samples::Histograms(hs)
            }
            Kind::Counter | Kind::Gauge => {
                let mut values = Vec::with_capacity(index.len());
                for s in index {
                    let v = store.counter(&family.count_key(&s)).await?;
                    values.push((s, non_negative(v) as f64));
                }
                Samples::Values(values)
            }
        };
        m::render(&mut out, family, &samples);
    }
    let mut expiring = 0i64;
    for b in m::expiring_soon_buckets(now_ms) {
        expiring += store.counter(&m::expiring_key(b)).await?;
    }
    m::render_gauge(
        &mut out,
        "spindle_approvals_expiring_soon",
        "Pending approvals that expire within the next hour.",
        &[],
        &[(vec![], expiring.max(0) as f64)],
    );
    if let Some(at) = store.get::<u64>(TICK_LAST_RUN).await? {
        m::render_gauge(
            &mut out,
            "spindle_tick_last_run_timestamp_seconds",
            "When the tick last ran, in seconds since the Unix epoch.",
            &[],
            &[(vec![], at as f64 / 1000.0)],
        );
    }
    Ok(out)
}

fn non_negative(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Records one webhook delivery: counts its outcome in
/// `spindle_webhooks_received_total{source,outcome}` and keeps it as the
/// source's last delivery (one small document per source, rewritten: the
/// last writer wins, so of two deliveries a moment apart either may be
/// shown as the last). Deliveries to no known source and deliveries
/// refused for their rate are counted only: a flood of them costs one
/// write each, not two, and does not hide a source's last real delivery.
pub async fn record_webhook<S: Store>(
    store: &S,
    source: &str,
    outcome: &str,
    now_ms: u64,
) -> Result<()> {
    let counted = count(store, &m::WEBHOOKS, &[source, outcome], 1).await;
    if outcome == "rate-limited" || outcome == "unknown-source" {
        return counted;
    }
    let last = m::WebhookLast {
        at_ms: now_ms,
        outcome: outcome.to_owned(),
    };
    let kept = store.set(&m::webhook_last_key(source), &last).await;
    counted.and(kept)
}

/// The webhook overview: each source's deliveries by outcome, accepted
/// and rejected (see [`m::WEBHOOK_ACCEPTED`]), and its last delivery,
/// sorted by source. The reads are the family's index, one counter per
/// series and one document per source: bounded by the labels' values,
/// never by how many deliveries arrived.
pub async fn webhook_sources<S: Store>(store: &S) -> Result<Vec<m::WebhookSource>> {
    let family = &m::WEBHOOKS;
    let index: SeriesIndex = store.get(&family.index_key()).await?.unwrap_or_default();
    let mut counts = Vec::with_capacity(index.len());
    for s in index {
        let n = non_negative(store.counter(&family.count_key(&s)).await?);
        counts.push((s, n));
    }
    let mut sources = m::webhook_sources(counts);
    for s in &mut sources {
        if let Some(last) = store
            .get::<m::WebhookLast>(&m::webhook_last_key(&s.source))
            .await?
        {
            s.last_delivery_at_ms = Some(last.at_ms);
            s.last_outcome = Some(last.outcome);
        }
    }
    Ok(sources)
}

/// Where the sweep of old activity counts has got to (a day number).
pub const ACTIVITY_CURSOR: &str = "metrics:activity-cursor";

/// Counts audit entry number `seq` in its day's activity, at the cost of a
/// read: the day's first entry number is kept (entries per day are the
/// differences between days' first numbers, so nothing is incremented per
/// entry), and errors are counted.
pub async fn count_event<S: Store>(store: &S, at_ms: u64, kind: &str, seq: u64) -> Result<()> {
    let day = at_ms / m::DAY_MS;
    // The lowest number of the day: entries written at once around
    // midnight race for it, and the lower one wins.
    let kept = store
        .update::<u64, std::convert::Infallible>(&spindle_core::audit::day_key(day), |first| {
            Ok(match first {
                Some(first) if first <= seq => None,
                _ => Some(seq),
            })
        })
        .await;
    if let Err(UpdateError::Store(e)) = kept {
        return Err(e);
    }
    if m::is_error_event(kind) {
        store.increment(&m::activity_key(day, "errors"), 1).await?;
    }
    Ok(())
}

/// Counts a run started at `at_ms` in its day's activity.
pub async fn count_run<S: Store>(store: &S, at_ms: u64) -> Result<()> {
    store
        .increment(&m::activity_key(at_ms / m::DAY_MS, "runs"), 1)
        .await
        .map(drop)
}

/// Activity of the days `first..=last`: the days' first entry numbers
/// (and the newest number, for the last day) give the entries per day;
/// errors and runs are counters. Four reads a day at most.
async fn days_activity<S: Store>(store: &S, first: u64, last: u64) -> Result<Vec<m::DayActivity>> {
    let head = non_negative(store.counter(spindle_core::audit::HEAD).await?);
    // A day's entries end where the next day with entries begins.
    let mut starts = Vec::new();
    for day in first..=last {
        starts.push(store.get::<u64>(&spindle_core::audit::day_key(day)).await?);
    }
    let mut out = Vec::with_capacity(starts.len());
    for (k, day) in (first..=last).enumerate() {
        let events = match starts[k] {
            Some(start) => {
                let end = starts[k + 1..]
                    .iter()
                    .flatten()
                    .next()
                    .copied()
                    .unwrap_or(head + 1);
                end.saturating_sub(start)
            }
            None => 0,
        };
        let read = |what: &'static str| async move {
            store
                .counter(&m::activity_key(day, what))
                .await
                .map(non_negative)
        };
        out.push(m::DayActivity {
            day: spindle_core::keys::utc_day(day * m::DAY_MS),
            events,
            errors: read("errors").await?,
            runs: read("runs").await?,
        });
    }
    Ok(out)
}

/// The last `days` days of activity (today last), at most
/// [`m::MAX_ACTIVITY_DAYS`]: four reads a day.
pub async fn activity<S: Store>(store: &S, now_ms: u64, days: u64) -> Result<Vec<m::DayActivity>> {
    let today = now_ms / m::DAY_MS;
    let days = days.clamp(1, m::MAX_ACTIVITY_DAYS);
    days_activity(store, today.saturating_sub(days - 1), today).await
}

/// Today's totals, error rate, and the ten most frequent event types among
/// today's newest [`m::SUMMARY_EXAMINED`] entries (all of them on most
/// days): a bounded walk down the audit trail.
pub async fn summary<S: Store>(store: &S, now_ms: u64) -> Result<m::Summary> {
    let day = now_ms / m::DAY_MS;
    let today = days_activity(store, day, day)
        .await?
        .pop()
        .unwrap_or(m::DayActivity {
            day: spindle_core::keys::utc_day(now_ms),
            events: 0,
            errors: 0,
            runs: 0,
        });
    let head = non_negative(store.counter(spindle_core::audit::HEAD).await?);
    let low = store
        .get::<u64>(spindle_core::audit::LOW)
        .await?
        .unwrap_or(1)
        .max(1);
    let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
    let mut examined = 0;
    if let Some(start) = store.get::<u64>(&spindle_core::audit::day_key(day)).await? {
        let mut seq = head;
        while seq >= start.max(low) && seq > 0 && examined < m::SUMMARY_EXAMINED {
            examined += 1;
            if let Ok(Some(e)) = store
                .get::<spindle_core::audit::AuditEntry>(&spindle_core::audit::entry_key(seq))
                .await
                && e.at_ms / m::DAY_MS == day
            {
                *counts.entry(e.kind).or_default() += 1;
            }
            seq -= 1;
        }
    }
    let error_rate = if today.events == 0 {
        0.0
    } else {
        (today.errors as f64 / today.events as f64).min(1.0)
    };
    Ok(m::Summary {
        today,
        error_rate,
        top_events: m::top_ten(
            counts
                .into_iter()
                .map(|(kind, count)| m::EventCount { kind, count })
                .collect(),
        ),
        top_events_examined: examined,
    })
}

/// Deletes the activity counts of days older than
/// [`m::ACTIVITY_DAYS_KEPT`], a day per tick; returns how many days it
/// cleared.
pub async fn sweep_activity<S: Store>(store: &S, now_ms: u64) -> Result<u64> {
    let today = now_ms / m::DAY_MS;
    let Some(oldest_kept) = today.checked_sub(m::ACTIVITY_DAYS_KEPT) else {
        return Ok(0);
    };
    // A fresh store starts as far back as anything is kept: counts may
    // come before the first tick (under Spin the tick is set up apart).
    let stored = store.get::<u64>(ACTIVITY_CURSOR).await?;
    let cursor = stored.unwrap_or(oldest_kept.saturating_sub(m::ACTIVITY_DAYS_KEPT));
    let mut day = cursor;
    let mut cleared = 0;
    // One day a tick: the tick's work stays small after a long outage too.
    while day < oldest_kept && cleared < 1 {
        for what in ["errors", "runs"] {
            store.delete(&m::activity_key(day, what)).await?;
        }
        store.delete(&spindle_core::audit::day_key(day)).await?;
        day += 1;
        cleared += 1;
    }
    if day != cursor || stored.is_none() {
        store.set(ACTIVITY_CURSOR, &day).await?;
    }
    Ok(cleared)
}
