//! API keys: created by an admin, shown once, stored only as a SHA-256 hash.
//!
//! A key reads `spk_<id>_<secret>`: the id (16 hex digits) names the stored
//! record so a presented key costs one read, and the secret (64 hex digits,
//! 256 random bits) is what the hash protects. A plain SHA-256 is enough for
//! a secret of that entropy: nothing is left to guess that a slow hash would
//! protect. The hash is compared in constant time.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use spindle_core::ValidationError;
use spindle_core::error::FieldError;
use spindle_engine::store::{Store, StoreError, StoreExt, UpdateError};

use crate::Role;

/// Every key starts with this, so a key in a log or a leaked file is
/// recognisable (and secret scanners can match it).
pub const PREFIX: &str = "spk_";
/// Random bytes a new key needs: 8 for the id, 32 for the secret.
pub const RANDOM_BYTES: usize = 40;
/// Longest key name.
pub const MAX_NAME_LEN: usize = 63;
/// Longest lifetime a key may be given.
pub const MAX_EXPIRES_IN_DAYS: u64 = 3650;
/// How stale a key's `last_used_ms` may get before a use rewrites it: one
/// write a minute per key at most, not one per request.
pub const LAST_USED_RESOLUTION_MS: u64 = 60_000;
/// The index of every key id, newest last.
pub const KEY_INDEX: &str = "index:apikeys";

/// The store key of the record with `id`.
pub fn record_key(id: &str) -> String {
    format!("apikey:{id}")
}

/// A stored API key: everything but the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The id embedded in the key.
    pub id: String,
    /// Who or what uses it (`ci`, `deploy-bot`); the actor in audit lines.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Hex SHA-256 of the whole key. Never shown.
    #[serde(rename = "sha256")]
    pub hash: String,
    /// When it was created.
    pub created_ms: u64,
    /// Who created it (an actor).
    pub created_by: String,
    /// When it stops working, if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    /// When it was revoked, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<u64>,
    /// When it last authenticated a request (to the minute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_ms: Option<u64>,
}

impl KeyRecord {
    /// The record as listed: no hash.
    pub fn public(&self, now_ms: u64) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "created_ms": self.created_ms,
            "created_by": self.created_by,
            "expires_ms": self.expires_ms,
            "revoked_ms": self.revoked_ms,
            "last_used_ms": self.last_used_ms,
            "active": self.check(now_ms).is_ok(),
        })
    }

    /// Whether the key still works at `now_ms`.
    pub fn check(&self, now_ms: u64) -> Result<(), KeyRefusal> {
        if self.revoked_ms.is_some() {
            return Err(KeyRefusal::Revoked);
        }
        if self.expires_ms.is_some_and(|at| now_ms >= at) {
            return Err(KeyRefusal::Expired);
        }
        Ok(())
    }
}

/// Why a well-formed key does not authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyRefusal {
    /// No record has the key's id, or the secret does not match it.
    #[error("unknown API key")]
    Unknown,
    /// Past its expiry.
    #[error("the API key has expired")]
    Expired,
    /// Revoked.
    #[error("the API key was revoked")]
    Revoked,
}

/// What `POST /api/keys` asks for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRequest {
    /// The key's name.
    pub name: String,
    /// Its role.
    pub role: String,
    /// Lifetime in days; none: it does not expire.
    #[serde(default)]
    pub expires_in_days: Option<u64>,
}

impl KeyRequest {
    /// Parses and validates a request body, naming every field at fault.
    pub fn parse(body: &[u8]) -> Result<(String, Role, Option<u64>), ValidationError> {
        let req: KeyRequest =
            serde_json::from_slice(body).map_err(|e| ValidationError::single("", e.to_string()))?;
        let mut errors = Vec::new();
        if let Err(e) = check_key_name(&req.name) {
            errors.push(FieldError::new("/name", e));
        }
        let role = Role::parse(&req.role);
        if role.is_none() {
            errors.push(FieldError::new(
                "/role",
                "must be one of viewer, operator, approver, admin",
            ));
        }
        if let Some(d) = req.expires_in_days
            && !(1..=MAX_EXPIRES_IN_DAYS).contains(&d)
        {
            errors.push(FieldError::new(
                "/expires_in_days",
                format!("must be between 1 and {MAX_EXPIRES_IN_DAYS}"),
            ));
        }
        ValidationError::check(errors)?;
        let role = role.expect("an unknown role is a field error");
        Ok((req.name, role, req.expires_in_days))
    }
}

/// Key names: what agent names allow (lowercase letters, digits, `-`), so
/// they can go into audit lines and headers unescaped.
pub fn check_key_name(name: &str) -> Result<(), String> {
    spindle_core::agent::check_name(name)?;
    if name == crate::caller::BOOTSTRAP_NAME {
        // Its actor is the bootstrap key's: the audit trail must tell them
        // apart.
        return Err(format!("{name:?} is reserved for the bootstrap admin key"));
    }
    Ok(())
}

/// Whether `id` is a well-formed key id (checked before any store read).
pub fn valid_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A new key from `random` bytes: the key to show once, and its record.
pub fn generate(
    random: &[u8; RANDOM_BYTES],
    name: &str,
    role: Role,
    expires_ms: Option<u64>,
    created_by: &str,
    now_ms: u64,
) -> (String, KeyRecord) {
    let id = hex::encode(&random[..8]);
    let key = format!("{PREFIX}{id}_{}", hex::encode(&random[8..]));
    let record = KeyRecord {
        id,
        name: name.to_owned(),
        role,
        hash: hash(&key),
        created_ms: now_ms,
        created_by: created_by.to_owned(),
        expires_ms,
        revoked_ms: None,
        last_used_ms: None,
    };
    (key, record)
}

/// The id of a presented key, if it has the key format at all.
pub fn parse(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (valid_id(id) && secret.len() == 64 && secret.bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some(id)
}

/// Hex SHA-256 of a key.
pub fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Whether `key` hashes to `record`'s hash, in constant time.
pub fn matches(record: &KeyRecord, key: &str) -> bool {
    spindle_core::sign::secrets_equal(&hash(key), &record.hash)
}

/// Stores a new key's record and lists it.
pub async fn create<S: Store>(store: &S, record: &KeyRecord) -> Result<(), StoreError> {
    // Record first: an index entry whose record is missing would be listed
    // as a ghost; a record missing from the index still authenticates and is
    // found again on the next create (the index is only for listing).
    store.set(&record_key(&record.id), record).await?;
    store.edit_index(KEY_INDEX, &record.id, true).await
}

/// The record a presented key names, if the key matches it and still works.
pub async fn authenticate<S: Store>(
    store: &S,
    key: &str,
    now_ms: u64,
) -> Result<Result<KeyRecord, KeyRefusal>, StoreError> {
    let Some(id) = parse(key) else {
        return Ok(Err(KeyRefusal::Unknown));
    };
    let Some(mut record) = store.get::<KeyRecord>(&record_key(id)).await? else {
        return Ok(Err(KeyRefusal::Unknown));
    };
    if !matches(&record, key) {
        return Ok(Err(KeyRefusal::Unknown));
    }
    if let Err(refusal) = record.check(now_ms) {
        return Ok(Err(refusal));
    }
    let stale = record
        .last_used_ms
        .is_none_or(|t| now_ms.saturating_sub(t) >= LAST_USED_RESOLUTION_MS);
    if stale {
        // Compare-and-swap, so a use never undoes a concurrent revocation;
        // a failure here must not fail the request it authenticates.
        let _ = store
            .update::<KeyRecord, std::convert::Infallible>(&record_key(id), |cur| {
                Ok(cur.filter(|c| c.hash == record.hash).map(|mut c| {
                    c.last_used_ms = Some(now_ms);
                    c
                }))
            })
            .await;
        record.last_used_ms = Some(now_ms);
    }
    Ok(Ok(record))
}

/// Every key, in creation order (ids whose record is gone are skipped).
pub async fn list<S: Store>(store: &S) -> Result<Vec<KeyRecord>, StoreError> {
    let ids: Vec<String> = store.get(KEY_INDEX).await?.unwrap_or_default();
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(r) = store.get::<KeyRecord>(&record_key(&id)).await? {
            out.push(r);
        }
    }
    out.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
    Ok(out)
}

/// Revokes the key `id`; `None` if there is no such key. Revoking twice
/// keeps the first revocation's time.
pub async fn revoke<S: Store>(
    store: &S,
    id: &str,
    now_ms: u64,
) -> Result<Option<KeyRecord>, StoreError> {
    store
        .update::<KeyRecord, std::convert::Infallible>(&record_key(id), |cur| {
            Ok(cur.and_then(|mut r| {
                (r.revoked_ms.is_none()).then(|| {
                    r.revoked_ms = Some(now_ms);
                    r
                })
            }))
        })
        .await
        .map_err(UpdateError::into_store)
}

#[cfg(test)]
mod tests {
    use super::*;
    use spindle_engine::testing::MemStore;

    fn new_key(seed: u8, role: Role, expires_ms: Option<u64>) -> (String, KeyRecord) {
        generate(
            &[seed; RANDOM_BYTES],
            "ci",
            role,
            expires_ms,
            "key:bootstrap",
            1_000,
        )
    }

    #[test]
    fn a_key_has_the_documented_shape_and_its_record_no_secret() {
        let (key, rec) = new_key(7, Role::Admin, None);
        assert_eq!(parse(&key), Some(rec.id.as_str()));
        assert!(key.starts_with("spk_0707070707070707_"));
        let stored = serde_json::to_string(&rec).unwrap();
        assert!(
            !stored.contains(&key[21..]),
            "the secret must not be stored"
        );
        let listed = rec.public(2_000).to_string();
        assert!(!listed.contains(&rec.hash), "listings carry no hash");
        assert!(matches(&rec, &key));
        let mut other = key.clone();
        other.replace_range(key.len() - 1.., "0");
        assert!(!matches(&rec, &other) || key.ends_with('0'));
    }

    #[test]
    fn malformed_keys_are_not_parsed() {
        for k in [
            "",
            "spk_",
            "spk_abc_def",
            "spk_0707070707070707_",
            "spk_0707070707070707_zz",
            "spk_070707070707070G_0707070707070707070707070707070707070707070707070707070707070707",
            "xpk_0707070707070707_0707070707070707070707070707070707070707070707070707070707070707",
        ] {
            assert_eq!(parse(k), None, "{k}");
        }
    }

    #[tokio::test]
    async fn a_created_key_authenticates_until_revoked_or_expired() {
        let store = MemStore::default();
        let (key, rec) = new_key(1, Role::Operator, Some(100_000));
        create(&store, &rec).await.unwrap();
        let ok = authenticate(&store, &key, 5_000).await.unwrap().unwrap();
        assert_eq!((ok.name.as_str(), ok.role), ("ci", Role::Operator));
        assert_eq!(ok.last_used_ms, Some(5_000));
        // A second use within the resolution writes nothing.
        let writes = store.writes();
        authenticate(&store, &key, 6_000).await.unwrap().unwrap();
        assert_eq!(store.writes(), writes);

        // Same id, wrong secret.
        let forged = format!("{PREFIX}{}_{}", rec.id, "a".repeat(64));
        assert_eq!(
            authenticate(&store, &forged, 5_000).await.unwrap(),
            Err(KeyRefusal::Unknown)
        );
        assert_eq!(
            authenticate(&store, &key, 100_000).await.unwrap(),
            Err(KeyRefusal::Expired)
        );
        let revoked = revoke(&store, &rec.id, 7_000).await.unwrap().unwrap();
        assert_eq!(revoked.revoked_ms, Some(7_000));
        assert_eq!(
            authenticate(&store, &key, 8_000).await.unwrap(),
            Err(KeyRefusal::Revoked)
        );
        // Revoking again keeps the first time; an unknown id is None.
        let again = revoke(&store, &rec.id, 9_000).await.unwrap().unwrap();
        assert_eq!(again.revoked_ms, Some(7_000));
        assert!(
            revoke(&store, "0000000000000000", 9_000)
                .await
                .unwrap()
                .is_none()
        );
        let listed = list(&store).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].public(9_000)["active"], false);
    }

    #[test]
    fn key_requests_name_every_field_at_fault() {
        let err = KeyRequest::parse(br#"{"name":"Bad Name","role":"root","expires_in_days":0}"#)
            .unwrap_err();
        let pointers: Vec<&str> = err.errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, ["/name", "/role", "/expires_in_days"]);
        assert!(KeyRequest::parse(br#"{"name":"ci","role":"admin","extra":1}"#).is_err());
        let err = KeyRequest::parse(br#"{"name":"bootstrap","role":"viewer"}"#).unwrap_err();
        assert_eq!(err.errors[0].pointer, "/name");
        assert_eq!(
            KeyRequest::parse(br#"{"name":"ci","role":"viewer","expires_in_days":30}"#).unwrap(),
            ("ci".to_owned(), Role::Viewer, Some(30))
        );
    }
}
