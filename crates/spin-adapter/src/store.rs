//! Typed access to the key-value store.
//!
//! Documents are JSON. Two kinds of concurrent change are offered, matching
//! the store facts every Spindle design rests on:
//! - [`Kv::increment`]: atomic and exact on every Spin backend; exactly-once
//!   decisions (the n-th claimant wins) rest on it. A key that is incremented
//!   must never hold anything but the counter.
//! - [`Kv::update`]: compare-and-swap with retries, for documents where a
//!   retry is harmless (indexes, registries).

use serde::{Serialize, de::DeserializeOwned};

use crate::generated::wasi::keyvalue::{atomics, store as wasi_store};

/// Errors from the store adapter.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store refused or failed an operation.
    #[error("key-value store: {0}")]
    Store(String),
    /// A stored document does not decode.
    #[error("stored document {key:?} is corrupt: {message}")]
    Corrupt {
        /// The key.
        key: String,
        /// The decoder's message.
        message: String,
    },
    /// Compare-and-swap kept losing.
    #[error("too much contention updating {0:?}; retry later")]
    Contention(String),
}

/// Result alias for store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

fn spin_err(e: spin_sdk::key_value::Error) -> StoreError {
    StoreError::Store(format!("{e:?}"))
}

fn wasi_err(e: wasi_store::Error) -> StoreError {
    StoreError::Store(match e {
        wasi_store::Error::NoSuchStore => "no such store".into(),
        wasi_store::Error::AccessDenied => "access denied".into(),
        wasi_store::Error::Other(m) => m,
    })
}

/// How many times [`Kv::update`] retries a lost compare-and-swap.
pub const MAX_CAS_ATTEMPTS: usize = 64;

/// An open store: Spin's key-value API for plain reads and writes, and the
/// `wasi:keyvalue` bucket for atomics.
pub struct Kv {
    store: spin_sdk::key_value::Store,
    bucket: wasi_store::Bucket,
}

impl Kv {
    /// Opens the store with `label` (normally `default`).
    pub async fn open(label: &str) -> Result<Self> {
        let store = spin_sdk::key_value::Store::open(label)
            .await
            .map_err(spin_err)?;
        let bucket = wasi_store::open(label).map_err(wasi_err)?;
        Ok(Self { store, bucket })
    }

    /// The raw bytes under `key`.
    pub async fn get_raw(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.store.get(key).await.map_err(spin_err)
    }

    /// Decodes the JSON document under `key`.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.get_raw(key).await? {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt {
                        key: key.to_owned(),
                        message: e.to_string(),
                    })
            }
        }
    }

    /// Writes `value` as JSON under `key`, unconditionally.
    pub async fn set<T: Serialize>(&self, key: &str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Store(e.to_string()))?;
        self.store.set(key, &bytes).await.map_err(spin_err)
    }

    /// Deletes `key`.
    pub async fn delete(&self, key: &str) -> Result<()> {
        self.store.delete(key).await.map_err(spin_err)
    }

    /// Atomically adds `delta` to the counter under `key`; returns the new value.
    pub fn increment(&self, key: &str, delta: i64) -> Result<i64> {
        atomics::increment(&self.bucket, key, delta).map_err(wasi_err)
    }

    /// Adds `item` to, or removes it from, the sorted list document under
    /// `key`, by compare-and-swap; writes nothing when it is already so.
    pub fn edit_index(&self, key: &str, item: &str, present: bool) -> Result<()> {
        self.update::<Vec<String>, std::convert::Infallible>(key, |current| {
            let mut list = current.unwrap_or_default();
            Ok(set_member(&mut list, item, present).then_some(list))
        })
        .map_err(|e| match e {
            UpdateError::Store(e) => e,
            UpdateError::Rejected(never) => match never {},
        })?;
        Ok(())
    }

    /// Read-modify-write of the JSON document under `key` by compare-and-swap.
    ///
    /// `f` sees the current document (or `None`) and returns the new one, or
    /// `Ok(None)` to leave it unchanged, or an error to abort. It may run
    /// several times, so it must not have side effects. Returns what was
    /// written (or the unchanged current value).
    pub fn update<T, E>(
        &self,
        key: &str,
        mut f: impl FnMut(Option<T>) -> std::result::Result<Option<T>, E>,
    ) -> std::result::Result<Option<T>, UpdateError<E>>
    where
        T: Serialize + DeserializeOwned,
    {
        let mut cas =
            atomics::Cas::new(&self.bucket, key).map_err(|e| UpdateError::Store(wasi_err(e)))?;
        for _ in 0..MAX_CAS_ATTEMPTS {
            let current_bytes = cas.current().map_err(|e| UpdateError::Store(wasi_err(e)))?;
            let current: Option<T> = match &current_bytes {
                None => None,
                Some(b) => Some(serde_json::from_slice(b).map_err(|e| {
                    UpdateError::Store(StoreError::Corrupt {
                        key: key.to_owned(),
                        message: e.to_string(),
                    })
                })?),
            };
            let Some(next) = f(current).map_err(UpdateError::Rejected)? else {
                return Ok(current_bytes.and_then(|b| serde_json::from_slice(&b).ok()));
            };
            let bytes = serde_json::to_vec(&next)
                .map_err(|e| UpdateError::Store(StoreError::Store(e.to_string())))?;
            match atomics::swap(cas, &bytes) {
                Ok(()) => return Ok(Some(next)),
                Err(atomics::CasError::CasFailed(fresh)) => cas = fresh,
                Err(atomics::CasError::StoreError(e)) => {
                    return Err(UpdateError::Store(wasi_err(e)));
                }
            }
        }
        Err(UpdateError::Store(StoreError::Contention(key.to_owned())))
    }
}

/// Makes `item` a member of the sorted `list` or not, as `present` says;
/// returns whether the list changed. Index documents and membership lists
/// are kept sorted so this stays a binary search.
pub fn set_member(list: &mut Vec<String>, item: &str, present: bool) -> bool {
    match (list.binary_search_by(|x| x.as_str().cmp(item)), present) {
        (Ok(_), true) | (Err(_), false) => false,
        (Err(pos), true) => {
            list.insert(pos, item.to_owned());
            true
        }
        (Ok(pos), false) => {
            list.remove(pos);
            true
        }
    }
}

/// Why [`Kv::update`] did not write.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError<E> {
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
    /// The update function refused the change.
    #[error("update rejected")]
    Rejected(E),
}
