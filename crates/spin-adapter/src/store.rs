//! The engine's [`Store`] on Spin's key-value store: `spin:key-value` for
//! plain reads and writes, the `wasi:keyvalue` bucket for atomics.

use crate::generated::wasi::keyvalue::{atomics, store as wasi_store};

pub use spindle_engine::store::{
    MAX_CAS_ATTEMPTS, Result, Store, StoreError, StoreExt, UpdateError, set_member,
};

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
}

impl Store for Kv {
    type Cas = atomics::Cas;

    async fn get_raw(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.store.get(key).await.map_err(spin_err)
    }

    async fn set_raw(&self, key: &str, value: &[u8]) -> Result<()> {
        self.store.set(key, value).await.map_err(spin_err)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.store.delete(key).await.map_err(spin_err)
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64> {
        atomics::increment(&self.bucket, key, delta).map_err(wasi_err)
    }

    async fn counter(&self, key: &str) -> Result<i64> {
        match self.get_raw(key).await? {
            None => Ok(0),
            Some(bytes) => spindle_engine::store::decode_counter(key, &bytes),
        }
    }

    async fn watch(&self, key: &str) -> Result<(Self::Cas, Option<Vec<u8>>)> {
        let cas = atomics::Cas::new(&self.bucket, key).map_err(wasi_err)?;
        let current = cas.current().map_err(wasi_err)?;
        Ok((cas, current))
    }

    async fn swap(&self, cas: Self::Cas, value: &[u8]) -> Result<bool> {
        match atomics::swap(cas, value) {
            Ok(()) => Ok(true),
            Err(atomics::CasError::CasFailed(_)) => Ok(false),
            Err(atomics::CasError::StoreError(e)) => Err(wasi_err(e)),
        }
    }
}
