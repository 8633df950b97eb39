//! Webhook sources and subscriptions, and turning a verified delivery into
//! runs exactly once.
//!
//! A delivery is its source and its body (what the signature covers; the
//! delivery id comes from a header nobody signed). The first request to
//! increment the delivery's counter starts one run per matching
//! subscription and records what it started (`delivery:<hash>`); every other
//! copy (a redelivery, one of a hundred concurrent copies, a body resent
//! under a new id) waits for that record and answers with it, starting
//! nothing. Each start is keyed (`webhook:<hash>:<subscription>`, through
//! the idempotency keys of [`Engine::create_run`]), so a copy that finds no
//! record after the wait, because the first request died or is slow, goes
//! on as the first would have and starts only what was not started; a
//! record whose starts failed is retried the same way by a redelivery.
//! Which body a delivery id first came with is kept too, decided by an
//! increment (`delivery-id:<hash>`): the same id with another body is a
//! replay, even when the two bodies arrive at the same instant. All
//! of it, the keyed starts' records included, is deleted when the dedupe
//! window ends; the same delivery after that is a new one.

use serde::{Deserialize, Serialize};
use spindle_core::keys;
use spindle_core::run::{Trigger, TriggerKind};
use spindle_core::sign;
use spindle_core::source::{Source, SourceSpec};
use spindle_core::subscription::{InboundEvent, Subscription, SubscriptionSpec};
use spindle_core::{FieldError, ValidationError};

use crate::registry::{Registry, RegistryError};
use crate::store::StoreExt;
use crate::{Engine, EngineError, Host, Store, Workers};

/// Most subscriptions one source may have: a delivery reads them all.
pub const MAX_SUBSCRIPTIONS_PER_SOURCE: usize = 100;
/// How long a duplicate waits for the owner's record, in 20 ms steps (10 s:
/// the owner records right after starting its runs).
const RECORD_WAIT_STEPS: u32 = 500;
/// How long a second body under a delivery id waits for the first body's
/// claim to be written, in 20 ms steps (1 s: it is written right after).
const ID_WAIT_STEPS: u32 = 50;

/// What one subscription's match did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Start {
    /// The subscription.
    pub subscription: String,
    /// Its workflow.
    pub workflow: String,
    /// The run it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Why no run was started (the workflow is gone, the payload fails its
    /// input schema, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The fields at fault, when the payload failed the input schema.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// What a delivery did, kept for the dedupe window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// The source.
    pub source: String,
    /// The delivery id.
    pub delivery: String,
    /// The event type.
    pub event: String,
    /// The action, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// SHA-256 of the body: a redelivery carries the same; a delivery id
    /// reused with another body is a replay.
    pub digest: String,
    /// When it was first received.
    pub received_at_ms: u64,
    /// One entry per matching subscription.
    pub starts: Vec<Start>,
}

impl DeliveryRecord {
    /// `started`, `unmatched` or `failed` (matched, but nothing started):
    /// the outcome label of metrics and answers.
    pub fn outcome(&self) -> &'static str {
        if self.starts.is_empty() {
            "unmatched"
        } else if self.starts.iter().any(|s| s.run_id.is_some()) {
            "started"
        } else {
            "failed"
        }
    }
}

fn delivery_hash(source: &str, delivery: &str) -> String {
    sign::digest(format!("{source}\n{delivery}").as_bytes())
}

/// What became of a delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Ingested {
    /// This request started its runs (or retried the starts an earlier
    /// copy could not make).
    New(DeliveryRecord),
    /// The same body arrived before (a redelivery, a retry signed anew, a
    /// copy sent again under another delivery id): what it started.
    Duplicate(DeliveryRecord),
    /// The delivery id arrived before with another body.
    Replay {
        /// The delivery id.
        delivery: String,
    },
}

impl<S: Store, W: Workers, H: Host> Engine<S, W, H> {
    /// Starts the runs `ev` asks for, once per delivery, for `dedupe_ms`.
    /// `digest` is the SHA-256 of the body.
    ///
    /// A delivery is its source and body: the body is what the signature
    /// covers, while a delivery id comes from a header nobody signed, so a
    /// body resent under a new id (or, from a sender that signs a
    /// timestamp, a retry signed anew) starts nothing. An id seen before
    /// with another body is a replay.
    pub async fn ingest(
        &self,
        ev: InboundEvent,
        digest: &str,
        dedupe_ms: u64,
    ) -> Result<Ingested, EngineError> {
        let hash = delivery_hash(&ev.source, digest);
        let record_key = keys::delivery(&hash);
        let id_hash = delivery_hash(&ev.source, &ev.delivery);
        let id_key = keys::delivery_id(&id_hash);
        // Which body an id came with first is decided by increment: two
        // bodies racing under one id cannot both pass as the first.
        let mut id_first = false;
        match self.store.get::<String>(&id_key).await? {
            Some(first) if first != hash => {
                return Ok(Ingested::Replay {
                    delivery: ev.delivery,
                });
            }
            Some(_) => {}
            None => {
                let id_claim = keys::counter(&format!("delivery-id:{id_hash}"));
                if self.store.increment(&id_claim, 1).await? == 1 {
                    self.store.set(&id_key, &hash).await?;
                    id_first = true;
                } else if let Some(first) = self.await_doc::<String>(&id_key, ID_WAIT_STEPS).await?
                    && first != hash
                {
                    return Ok(Ingested::Replay {
                        delivery: ev.delivery,
                    });
                }
            }
        }
        let id_keys = if id_first {
            vec![
                id_key.clone(),
                keys::counter(&format!("delivery-id:{id_hash}")),
            ]
        } else {
            Vec::new()
        };
        let claim = keys::counter(&format!("delivery:{hash}"));
        let mut retry_of = None;
        if self.store.increment(&claim, 1).await? > 1 {
            match self
                .await_doc::<DeliveryRecord>(&record_key, RECORD_WAIT_STEPS)
                .await?
            {
                Some(rec) if rec.starts.iter().all(|s| s.run_id.is_some()) => {
                    // A new id for a body seen before: its id documents
                    // go with the window too.
                    if !id_keys.is_empty() {
                        let until = rec.received_at_ms.saturating_add(dedupe_ms);
                        self.expire_at(&id_keys, until.max(self.host.now_ms()))
                            .await?;
                    }
                    return Ok(Ingested::Duplicate(rec));
                }
                // Some starts failed (the workflow was missing, the payload
                // did not fit): a redelivery tries them again, since the
                // sender cannot know better than to resend.
                Some(rec) => retry_of = Some(rec),
                // The first copy's request died before recording, or is
                // still busy: go on as it would have. Every start is keyed,
                // so the runs it did start are found, not started again.
                None => {}
            }
        }
        let outcome = self
            .record_delivery(ev, digest, dedupe_ms, &hash, retry_of, id_keys)
            .await;
        if outcome.is_err() {
            // Give the claim back (best effort), so the sender's retry goes
            // on at once instead of waiting for a record that never comes.
            let _ = self.store.increment(&claim, -1).await;
        }
        outcome
    }

    /// Matches, starts and records the delivery whose claim this request
    /// holds (or took over after the wait); `retry_of` is the record of an
    /// earlier copy whose starts failed.
    async fn record_delivery(
        &self,
        mut ev: InboundEvent,
        digest: &str,
        dedupe_ms: u64,
        hash: &str,
        retry_of: Option<DeliveryRecord>,
        id_keys: Vec<String>,
    ) -> Result<Ingested, EngineError> {
        let record_key = keys::delivery(hash);
        let claim = keys::counter(&format!("delivery:{hash}"));
        let now = self.host.now_ms();
        let expires = now.saturating_add(dedupe_ms);
        // A retry matches as the first copy did: event and action come
        // from headers nobody signed, and a resent body must not reach
        // other subscriptions under a forged event name.
        if let Some(first) = &retry_of {
            ev.event.clone_from(&first.event);
            ev.action.clone_from(&first.action);
        }
        let subs: Vec<Subscription> = self
            .subscriptions_of(&ev.source)
            .await?
            .into_iter()
            .filter(|s| s.matches(&ev))
            .collect();
        // Everything this delivery keeps goes when its window ends, the
        // keyed starts' records too: after the window, the same delivery
        // is a new one. Filed before anything is written, so nothing
        // written outlives the window for good.
        // A retry's keys were filed by the request that recorded; filing
        // them again would delete a later delivery's keys early. (A first
        // request that dies between its claim and this leaves the claim
        // counter behind: eight bytes, once per such crash.)
        let already_started = |name: &str| {
            retry_of.as_ref().is_some_and(|r| {
                r.starts
                    .iter()
                    .any(|s| s.subscription == name && s.run_id.is_some())
            })
        };
        let mut doomed = id_keys;
        if retry_of.is_none() {
            doomed.extend([record_key.clone(), claim]);
        }
        for sub in subs.iter().filter(|s| !already_started(&s.name)) {
            let [record, claim, takeover, _] =
                crate::runs::idempotency_keys(&sub.workflow, &start_key(hash, &sub.name));
            doomed.extend([record, claim, takeover]);
        }
        if !doomed.is_empty() {
            // A retry's new starts go with the first copy's window.
            let until = retry_of
                .as_ref()
                .map_or(expires, |r| r.received_at_ms.saturating_add(dedupe_ms));
            self.expire_at(&doomed, until).await?;
        }
        let mut starts = Vec::with_capacity(subs.len());
        for sub in &subs {
            // A retry keeps what started: the subscription may have
            // changed since, and its run is the delivery's run.
            let started = retry_of.as_ref().and_then(|r| {
                r.starts
                    .iter()
                    .find(|s| s.subscription == sub.name && s.run_id.is_some())
            });
            match started {
                Some(s) => starts.push(s.clone()),
                None => starts.push(self.start_for(sub, &ev, hash).await?),
            }
        }
        // A retry keeps the first copy's id, event and action (they come
        // from headers nobody signed), and the runs started for
        // subscriptions that no longer match.
        let rec = match &retry_of {
            Some(first) => {
                for old in &first.starts {
                    if old.run_id.is_some()
                        && !starts.iter().any(|s| s.subscription == old.subscription)
                    {
                        starts.push(old.clone());
                    }
                }
                DeliveryRecord {
                    starts,
                    ..first.clone()
                }
            }
            None => DeliveryRecord {
                source: ev.source,
                delivery: ev.delivery,
                event: ev.event,
                action: ev.action,
                digest: digest.to_owned(),
                received_at_ms: now,
                starts,
            },
        };
        self.store.set(&record_key, &rec).await?;
        let started_now = |r: &DeliveryRecord| {
            r.starts
                .iter()
                .filter_map(|s| s.run_id.clone())
                .collect::<std::collections::BTreeSet<_>>()
        };
        match retry_of {
            Some(old) if started_now(&old) == started_now(&rec) => Ok(Ingested::Duplicate(rec)),
            _ => Ok(Ingested::New(rec)),
        }
    }

    /// The enabled subscriptions of `source`, by name.
    async fn subscriptions_of(&self, source: &str) -> Result<Vec<Subscription>, EngineError> {
        let names: Vec<String> = self
            .store
            .get(&keys::source_subscriptions(source))
            .await?
            .unwrap_or_default();
        let mut subs = Vec::with_capacity(names.len());
        for name in names.iter().take(MAX_SUBSCRIPTIONS_PER_SOURCE) {
            if let Some(sub) = self
                .store
                .get::<Subscription>(&keys::subscription(name))
                .await?
                && sub.source == source
                && sub.enabled
            {
                subs.push(sub);
            }
        }
        Ok(subs)
    }

    /// Starts `sub`'s run for the delivery, or says why not (its workflow
    /// or an agent is gone, the payload does not fit the input schema). A
    /// passing trouble (the store, a start still in flight) is an error:
    /// the delivery is then not recorded, and a redelivery goes on where
    /// this one stopped.
    async fn start_for(
        &self,
        sub: &Subscription,
        ev: &InboundEvent,
        hash: &str,
    ) -> Result<Start, EngineError> {
        let trigger = Trigger {
            kind: TriggerKind::Webhook,
            payload: sub.payload(ev),
            actor: Some(format!("webhook:{}", ev.source)),
        };
        let key = start_key(hash, &sub.name);
        let mut start = Start {
            subscription: sub.name.clone(),
            workflow: sub.workflow.clone(),
            run_id: None,
            error: None,
            errors: Vec::new(),
        };
        match self.create_run(&sub.workflow, trigger, Some(&key)).await {
            Ok((run, _)) => start.run_id = Some(run.id),
            // Passing troubles are not the delivery's fault: nothing is
            // recorded, and a redelivery goes on from here.
            Err(
                e @ (EngineError::Store(_) | EngineError::InFlight(_) | EngineError::Config(_)),
            ) => {
                return Err(e);
            }
            Err(EngineError::Invalid(v)) => {
                start.error = Some("the payload does not match the workflow's input_schema".into());
                start.errors = v.errors;
            }
            Err(e) => start.error = Some(e.to_string()),
        }
        Ok(start)
    }
}

/// The idempotency key of the run subscription `sub` starts for the
/// delivery whose body hash is `hash`.
fn start_key(hash: &str, sub: &str) -> String {
    format!("webhook:{hash}:{sub}")
}

/// Adds `name` to the index under `key` and reads it back: the first
/// write of an index document is blind on some stores, so two first writers
/// can lose one name; the one that finds its name missing writes again.
async fn ensure_listed<S: Store>(store: &S, key: &str, name: &str) -> Result<(), RegistryError> {
    for _ in 0..crate::store::MAX_CAS_ATTEMPTS {
        store.edit_index(key, name, true).await?;
        let listed: Vec<String> = store.get(key).await?.unwrap_or_default();
        if listed.binary_search_by(|n| n.as_str().cmp(name)).is_ok() {
            return Ok(());
        }
    }
    Err(crate::StoreError::Contention(key.to_owned()).into())
}

/// Names a source can have without being registered (their secrets come
/// from Spin variables).
pub const BUILTIN_SOURCES: [&str; 2] = ["github", "builder"];

impl<S: Store> Registry<'_, S> {
    /// Registers source `spec.name`; `create` refuses an existing one,
    /// otherwise it must exist.
    pub async fn put_source(
        &self,
        spec: SourceSpec,
        create: bool,
    ) -> Result<Source, RegistryError> {
        let key = keys::source(&spec.name);
        let previous: Option<Source> = self.store.get(&key).await?;
        match (&previous, create) {
            (Some(_), true) => {
                return Err(RegistryError::Exists(format!("source {:?}", spec.name)));
            }
            (None, false) => {
                return Err(RegistryError::NotFound(format!(
                    "no source named {:?}",
                    spec.name
                )));
            }
            _ => {}
        }
        let name = spec.name.clone();
        // Validated against the document each swap attempt sees: a secret
        // kept from the stored version is the one stored right then, so a
        // concurrent rotation is never written back over.
        let written = self
            .store
            .update::<Source, RegistryError>(&key, |current| match (current, create) {
                (Some(_), true) => Err(RegistryError::Exists(format!("source {name:?}"))),
                (None, false) => Err(RegistryError::NotFound(format!("no source named {name:?}"))),
                (current, _) => Ok(Some(spec.clone().validate(self.now_ms, current.as_ref())?)),
            })
            .await?
            .ok_or_else(|| RegistryError::NotFound(format!("no source named {name:?}")))?;
        self.store
            .edit_index(keys::SOURCE_INDEX, &written.name, true)
            .await?;
        Ok(written)
    }

    /// Deletes a source; its subscriptions stay (they match nothing until
    /// a source of that name exists again).
    pub async fn delete_source(&self, name: &str) -> Result<(), RegistryError> {
        let key = keys::source(name);
        if self.store.get::<Source>(&key).await?.is_none() {
            return Err(RegistryError::NotFound(format!("no source named {name:?}")));
        }
        self.store.delete(&key).await?;
        self.store
            .edit_index(keys::SOURCE_INDEX, name, false)
            .await?;
        Ok(())
    }

    /// Registers or replaces a subscription. Its source must be registered
    /// (or built in) and its workflow must exist.
    pub async fn put_subscription(
        &self,
        spec: SubscriptionSpec,
        create: bool,
    ) -> Result<Subscription, RegistryError> {
        let key = keys::subscription(&spec.name);
        let previous: Option<Subscription> = self.store.get(&key).await?;
        match (&previous, create) {
            (Some(_), true) => {
                return Err(RegistryError::Exists(format!(
                    "subscription {:?}",
                    spec.name
                )));
            }
            (None, false) => {
                return Err(RegistryError::NotFound(format!(
                    "no subscription named {:?}",
                    spec.name
                )));
            }
            _ => {}
        }
        let sub = spec.validate(self.now_ms, previous.as_ref())?;
        let mut errors = Vec::new();
        if !BUILTIN_SOURCES.contains(&sub.source.as_str())
            && self
                .store
                .get_raw(&keys::source(&sub.source))
                .await?
                .is_none()
        {
            errors.push(FieldError::new(
                "/source",
                format!(
                    "no source named {:?}; register it under /api/sources (github and builder are built in)",
                    sub.source
                ),
            ));
        }
        if self
            .store
            .get_raw(&keys::workflow(&sub.workflow))
            .await?
            .is_none()
        {
            errors.push(FieldError::new(
                "/workflow",
                format!("no workflow named {:?}", sub.workflow),
            ));
        }
        let listed: Vec<String> = self
            .store
            .get(&keys::source_subscriptions(&sub.source))
            .await?
            .unwrap_or_default();
        if !listed.contains(&sub.name) && listed.len() >= MAX_SUBSCRIPTIONS_PER_SOURCE {
            errors.push(FieldError::new(
                "/source",
                format!(
                    "source {:?} has {MAX_SUBSCRIPTIONS_PER_SOURCE} subscriptions, the most it may have",
                    sub.source
                ),
            ));
        }
        ValidationError::check(errors)?;
        // Listed under its source before it is written, so a delivery that
        // reads the document finds it; a source it moved away from drops it
        // only after.
        ensure_listed(
            self.store,
            &keys::source_subscriptions(&sub.source),
            &sub.name,
        )
        .await?;
        let name = sub.name.clone();
        let written = self
            .store
            .update::<Subscription, RegistryError>(&key, |current| match (current, create) {
                (Some(_), true) => Err(RegistryError::Exists(format!("subscription {name:?}"))),
                (None, false) => Err(RegistryError::NotFound(format!(
                    "no subscription named {name:?}"
                ))),
                _ => Ok(Some(sub.clone())),
            })
            .await?
            .unwrap_or(sub);
        if let Some(old) = previous
            && old.source != written.source
        {
            self.store
                .edit_index(
                    &keys::source_subscriptions(&old.source),
                    &written.name,
                    false,
                )
                .await?;
        }
        self.store
            .edit_index(keys::SUBSCRIPTION_INDEX, &written.name, true)
            .await?;
        Ok(written)
    }

    /// Deletes a subscription.
    pub async fn delete_subscription(&self, name: &str) -> Result<(), RegistryError> {
        let key = keys::subscription(name);
        let Some(sub) = self.store.get::<Subscription>(&key).await? else {
            return Err(RegistryError::NotFound(format!(
                "no subscription named {name:?}"
            )));
        };
        self.store.delete(&key).await?;
        self.store
            .edit_index(&keys::source_subscriptions(&sub.source), name, false)
            .await?;
        self.store
            .edit_index(keys::SUBSCRIPTION_INDEX, name, false)
            .await?;
        Ok(())
    }
}
