//! The document store the engine runs on, as a trait, and typed access to it.
//!
//! The store is Spin's key-value store: no scans, no transactions. Two kinds
//! of concurrent change are offered, matching the store facts every Spindle
//! design rests on:
//! - [`Store::increment`]: atomic and exact on every Spin backend; exactly-once
//!   decisions (the n-th claimant wins) rest on it. A key that is incremented
//!   must never hold anything but the counter.
//! - [`StoreExt::update`]: compare-and-swap with retries, for documents where
//!   a retry is harmless (indexes, registries, the run document whose
//!   transitions are idempotent).

use serde::{Serialize, de::DeserializeOwned};

/// Errors from the store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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

/// How many times [`StoreExt::update`] retries a lost compare-and-swap.
pub const MAX_CAS_ATTEMPTS: usize = 64;

/// A key-value store with atomics: what Spin's `spin:key-value` and
/// `wasi:keyvalue` give a component, and what the in-memory store of
/// [`crate::testing`] gives a test.
// Components run single-threaded (wasm32-wasip2), so the futures need no
// `Send` bound; the lint that asks for one does not apply.
#[allow(async_fn_in_trait)]
pub trait Store {
    /// A read taken for a later [`Store::swap`].
    type Cas;

    /// The raw bytes under `key`.
    async fn get_raw(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Writes `value` under `key`, unconditionally.
    async fn set_raw(&self, key: &str, value: &[u8]) -> Result<()>;
    /// Deletes `key` (absent is fine).
    async fn delete(&self, key: &str) -> Result<()>;
    /// Atomically adds `delta` to the counter under `key`; returns the new
    /// value. An absent key counts from 0.
    async fn increment(&self, key: &str, delta: i64) -> Result<i64>;
    /// The counter under `key` (0 when absent), read without writing.
    async fn counter(&self, key: &str) -> Result<i64>;
    /// Reads `key` for a compare-and-swap.
    async fn watch(&self, key: &str) -> Result<(Self::Cas, Option<Vec<u8>>)>;
    /// Writes `value` if `key` still holds what `cas` read; `Ok(false)` when
    /// another write came first.
    async fn swap(&self, cas: Self::Cas, value: &[u8]) -> Result<bool>;
}

/// Why [`StoreExt::update`] did not write.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError<E> {
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
    /// The update function refused the change.
    #[error("update rejected")]
    Rejected(E),
}

impl UpdateError<std::convert::Infallible> {
    /// The store error; the update itself cannot refuse.
    pub fn into_store(self) -> StoreError {
        match self {
            UpdateError::Store(e) => e,
            UpdateError::Rejected(never) => match never {},
        }
    }
}

/// Decodes a stored JSON document.
pub fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: key.to_owned(),
        message: e.to_string(),
    })
}

/// Decodes a counter as the stores keep it: Spin's SQLite store (and
/// Spindle's host) as 8 bytes little-endian, Redis as decimal text.
pub fn decode_counter(key: &str, bytes: &[u8]) -> Result<i64> {
    // Text is digits, perhaps after a minus sign. Only the whole shape
    // says so: a little-endian counter's low byte is any byte, `-` (45)
    // included, and must not be taken for a sign.
    let digits = bytes.strip_prefix(b"-").unwrap_or(bytes);
    let text = !digits.is_empty() && digits.iter().all(u8::is_ascii_digit);
    if bytes.len() == 8 && !text {
        return Ok(i64::from_le_bytes(bytes.try_into().expect("8 bytes")));
    }
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .ok_or_else(|| StoreError::Corrupt {
            key: key.to_owned(),
            message: "not a counter".into(),
        })
}

/// Encodes a document as JSON.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| StoreError::Store(e.to_string()))
}

/// Typed, JSON access to any [`Store`].
#[allow(async_fn_in_trait)]
pub trait StoreExt: Store {
    /// Decodes the JSON document under `key`.
    async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.get_raw(key).await? {
            None => Ok(None),
            Some(bytes) => decode(key, &bytes).map(Some),
        }
    }

    /// Writes `value` as JSON under `key`, unconditionally.
    async fn set<T: Serialize>(&self, key: &str, value: &T) -> Result<()> {
        self.set_raw(key, &encode(value)?).await
    }

    /// Read-modify-write of the JSON document under `key` by compare-and-swap.
    ///
    /// `f` sees the current document (or `None`) and returns the new one, or
    /// `Ok(None)` to leave it unchanged, or an error to abort. It may run
    /// several times, so it must not have side effects. Returns what was
    /// written (or the unchanged current value).
    async fn update<T, E>(
        &self,
        key: &str,
        mut f: impl FnMut(Option<T>) -> std::result::Result<Option<T>, E>,
    ) -> std::result::Result<Option<T>, UpdateError<E>>
    where
        T: Serialize + DeserializeOwned,
    {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (cas, bytes) = self.watch(key).await.map_err(UpdateError::Store)?;
            let current: Option<T> = match &bytes {
                None => None,
                Some(b) => Some(decode(key, b).map_err(UpdateError::Store)?),
            };
            let Some(next) = f(current).map_err(UpdateError::Rejected)? else {
                return match bytes {
                    None => Ok(None),
                    Some(b) => decode(key, &b).map(Some).map_err(UpdateError::Store),
                };
            };
            let encoded = encode(&next).map_err(UpdateError::Store)?;
            if self.swap(cas, &encoded).await.map_err(UpdateError::Store)? {
                return Ok(Some(next));
            }
        }
        Err(UpdateError::Store(StoreError::Contention(key.to_owned())))
    }

    /// Adds `item` to, or removes it from, the sorted list document under
    /// `key`, by compare-and-swap; writes nothing when it is already so.
    async fn edit_index(&self, key: &str, item: &str, present: bool) -> Result<()> {
        self.update::<Vec<String>, std::convert::Infallible>(key, |current| {
            let mut list = current.unwrap_or_default();
            Ok(set_member(&mut list, item, present).then_some(list))
        })
        .await
        .map_err(UpdateError::into_store)?;
        Ok(())
    }
}

impl<S: Store + ?Sized> StoreExt for S {}

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

#[cfg(test)]
mod tests {
    use super::decode_counter;

    #[test]
    fn counters_decode_in_both_encodings_whatever_their_low_byte() {
        for n in [
            0_i64,
            1,
            45,
            45 + 256,
            48,
            57,
            300,
            -1,
            -45,
            i64::MAX,
            i64::MIN,
        ] {
            assert_eq!(decode_counter("k", &n.to_le_bytes()).unwrap(), n, "{n}");
        }
        assert_eq!(decode_counter("k", b"45").unwrap(), 45);
        assert_eq!(decode_counter("k", b"-12").unwrap(), -12);
        assert_eq!(decode_counter("k", b"12345678").unwrap(), 12_345_678);
        assert!(decode_counter("k", b"-").is_err());
        assert!(decode_counter("k", b"abc").is_err());
    }
}
