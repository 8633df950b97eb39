//! The host side of `spin:key-value`, `wasi:keyvalue`, `spin:variables` and
//! `wasi:config/store` for one component instance.
//!
//! Access control follows Spin: opening a label the component was not granted
//! in `key_value_stores` is `access-denied`; a granted label the host does not
//! define is `no-such-store` (start-up already refuses such manifests).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use wasmtime::component::{Accessor, FutureReader, HasData, Resource, ResourceTable, StreamReader};

use crate::bindings::spin::key_value::key_value as spin_kv;
use crate::bindings::spin::variables::variables as spin_vars;
use crate::bindings::wasi::config::store as wasi_config;
use crate::bindings::wasi::keyvalue::{atomics, batch, store as wasi_kv};
use crate::kv::{CasHandle, KvError, SqliteKv, StoreHandle};

/// Per-component data the interfaces need; shared by all its instances.
#[derive(Debug, Clone)]
pub struct ComponentEnv {
    /// The component id.
    pub id: String,
    /// The store behind each defined label.
    pub kv: Arc<BTreeMap<String, SqliteKv>>,
    /// Labels the component may open.
    pub stores: HashSet<String>,
    /// Labels the host defines.
    pub defined_stores: HashSet<String>,
    /// The component's variables, rendered.
    pub variables: BTreeMap<String, String>,
}

impl std::fmt::Debug for SqliteKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteKv")
            .field("path", &self.path())
            .finish()
    }
}

/// The slice of an instance's store data the interfaces use.
pub struct KvView<'a> {
    /// The component's environment.
    pub env: &'a ComponentEnv,
    /// The instance's resource table.
    pub table: &'a mut ResourceTable,
}

/// Marker tying the generated `*WithStore` traits to [`KvView`].
pub struct KvData;

impl HasData for KvData {
    type Data<'a> = KvView<'a>;
}

fn other(e: KvError) -> String {
    tracing::warn!(error = %e, "key-value store error");
    e.to_string()
}

enum OpenError {
    AccessDenied,
    NoSuchStore,
}

impl KvView<'_> {
    fn open(&mut self, label: &str) -> Result<Resource<StoreHandle>, OpenError> {
        if !self.env.stores.contains(label) {
            return Err(OpenError::AccessDenied);
        }
        if !self.env.defined_stores.contains(label) {
            return Err(OpenError::NoSuchStore);
        }
        // A full table is a host fault; report as access denied would mislead,
        // so it is mapped by the callers to their `other`/`store-table-full`.
        self.table
            .push(StoreHandle {
                label: label.to_owned(),
            })
            .map_err(|_| OpenError::NoSuchStore)
    }

    fn label(&self, r: &Resource<StoreHandle>) -> wasmtime::Result<String> {
        Ok(self.table.get(r)?.label.clone())
    }

    /// The store behind a `wasi:keyvalue` bucket, and its label.
    fn wasi_store(&self, r: &Resource<StoreHandle>) -> Result<(SqliteKv, String), wasi_kv::Error> {
        let label = self.wasi_label(r)?;
        // A handle exists only for a defined label (see `open`).
        let kv = self.env.kv.get(&label).cloned().ok_or_else(|| {
            wasi_kv::Error::Other(format!("key-value store {label:?} is not defined"))
        })?;
        Ok((kv, label))
    }

    fn wasi_label(&self, r: &Resource<StoreHandle>) -> Result<String, wasi_kv::Error> {
        self.label(r)
            .map_err(|e| wasi_kv::Error::Other(e.to_string()))
    }
}

fn with_label<T>(
    accessor: &Accessor<T, KvData>,
    store: &Resource<StoreHandle>,
) -> wasmtime::Result<(SqliteKv, String)> {
    accessor.with(|mut a| {
        let v = a.get();
        let label = v.label(store)?;
        // A handle exists only for a defined label (see `open`).
        let kv = v.env.kv.get(&label).cloned().ok_or_else(|| {
            wasmtime::Error::msg(format!("key-value store {label:?} is not defined"))
        })?;
        Ok((kv, label))
    })
}

/// Runs one spin:key-value call on the store behind `store`, mapping every
/// failure to the interface's `other` error as Spin does.
async fn spin_call<T, R, Fut>(
    accessor: &Accessor<T, KvData>,
    store: &Resource<StoreHandle>,
    call: impl FnOnce(SqliteKv, String) -> Fut,
) -> Result<R, spin_kv::Error>
where
    Fut: Future<Output = Result<R, KvError>>,
{
    let (kv, label) =
        with_label(accessor, store).map_err(|e| spin_kv::Error::Other(e.to_string()))?;
    call(kv, label)
        .await
        .map_err(|e| spin_kv::Error::Other(other(e)))
}

// ---------------------------------------------------------------- spin:key-value@3.0.0

impl spin_kv::Host for KvView<'_> {
    fn convert_error(&mut self, err: spin_kv::Error) -> wasmtime::Result<spin_kv::Error> {
        Ok(err)
    }
}

impl spin_kv::HostStore for KvView<'_> {
    async fn drop(&mut self, rep: Resource<StoreHandle>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

impl<T> spin_kv::HostStoreWithStore<T> for KvData {
    async fn open(
        accessor: &Accessor<T, Self>,
        label: String,
    ) -> Result<Resource<StoreHandle>, spin_kv::Error> {
        accessor.with(|mut a| {
            a.get().open(&label).map_err(|e| match e {
                OpenError::AccessDenied => spin_kv::Error::AccessDenied,
                OpenError::NoSuchStore => spin_kv::Error::NoSuchStore,
            })
        })
    }

    async fn get(
        accessor: &Accessor<T, Self>,
        store: Resource<StoreHandle>,
        key: String,
    ) -> Result<Option<Vec<u8>>, spin_kv::Error> {
        spin_call(accessor, &store, |kv, label| async move {
            kv.get(&label, &key).await
        })
        .await
    }

    async fn set(
        accessor: &Accessor<T, Self>,
        store: Resource<StoreHandle>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), spin_kv::Error> {
        spin_call(accessor, &store, |kv, label| async move {
            kv.set(&label, &key, value).await
        })
        .await
    }

    async fn delete(
        accessor: &Accessor<T, Self>,
        store: Resource<StoreHandle>,
        key: String,
    ) -> Result<(), spin_kv::Error> {
        spin_call(accessor, &store, |kv, label| async move {
            kv.delete(&label, &key).await
        })
        .await
    }

    async fn exists(
        accessor: &Accessor<T, Self>,
        store: Resource<StoreHandle>,
        key: String,
    ) -> Result<bool, spin_kv::Error> {
        spin_call(accessor, &store, |kv, label| async move {
            kv.exists(&label, &key).await
        })
        .await
    }

    async fn get_keys(
        accessor: &Accessor<T, Self>,
        store: Resource<StoreHandle>,
    ) -> wasmtime::Result<(
        StreamReader<String>,
        FutureReader<Result<(), spin_kv::Error>>,
    )> {
        let (kv, label) = with_label(accessor, &store)?;
        let (keys, result) = match kv.keys(&label).await {
            Ok(keys) => (keys, Ok(())),
            Err(e) => (Vec::new(), Err(spin_kv::Error::Other(other(e)))),
        };
        accessor.with(|mut a| {
            let stream = StreamReader::new(&mut a, keys)?;
            let done = FutureReader::new(&mut a, async move { Ok::<_, wasmtime::Error>(result) })?;
            Ok((stream, done))
        })
    }
}

// ---------------------------------------------------------------- wasi:keyvalue@0.2.0-draft2

fn wasi_other(e: KvError) -> wasi_kv::Error {
    wasi_kv::Error::Other(other(e))
}

impl wasi_kv::Host for KvView<'_> {
    async fn open(&mut self, identifier: String) -> Result<Resource<StoreHandle>, wasi_kv::Error> {
        self.open(&identifier).map_err(|e| match e {
            OpenError::AccessDenied => wasi_kv::Error::AccessDenied,
            OpenError::NoSuchStore => wasi_kv::Error::NoSuchStore,
        })
    }

    fn convert_error(&mut self, err: wasi_kv::Error) -> wasmtime::Result<wasi_kv::Error> {
        Ok(err)
    }
}

impl wasi_kv::HostBucket for KvView<'_> {
    async fn get(
        &mut self,
        bucket: Resource<StoreHandle>,
        key: String,
    ) -> Result<Option<Vec<u8>>, wasi_kv::Error> {
        let (kv, label) = self.wasi_store(&bucket)?;
        kv.get(&label, &key).await.map_err(wasi_other)
    }

    async fn set(
        &mut self,
        bucket: Resource<StoreHandle>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), wasi_kv::Error> {
        let (kv, label) = self.wasi_store(&bucket)?;
        kv.set(&label, &key, value).await.map_err(wasi_other)
    }

    async fn delete(
        &mut self,
        bucket: Resource<StoreHandle>,
        key: String,
    ) -> Result<(), wasi_kv::Error> {
        let (kv, label) = self.wasi_store(&bucket)?;
        kv.delete(&label, &key).await.map_err(wasi_other)
    }

    async fn exists(
        &mut self,
        bucket: Resource<StoreHandle>,
        key: String,
    ) -> Result<bool, wasi_kv::Error> {
        let (kv, label) = self.wasi_store(&bucket)?;
        kv.exists(&label, &key).await.map_err(wasi_other)
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<StoreHandle>,
        cursor: Option<String>,
    ) -> Result<wasi_kv::KeyResponse, wasi_kv::Error> {
        let (kv, label) = self.wasi_store(&bucket)?;
        let keys = kv.keys(&label).await.map_err(wasi_other)?;
        // Keys come back sorted, so a cursor is simply the last key returned.
        let keys = match cursor {
            Some(after) => keys.into_iter().filter(|k| *k > after).collect(),
            None => keys,
        };
        Ok(wasi_kv::KeyResponse { keys, cursor: None })
    }

    async fn drop(&mut self, rep: Resource<StoreHandle>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

impl atomics::Host for KvView<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<StoreHandle>,
        key: String,
        delta: i64,
    ) -> Result<i64, wasi_kv::Error> {
        let (kv, label) = self.wasi_store(&bucket)?;
        kv.increment(&label, &key, delta).await.map_err(wasi_other)
    }

    async fn swap(
        &mut self,
        cas: Resource<CasHandle>,
        value: Vec<u8>,
    ) -> Result<(), atomics::CasError> {
        let handle = self
            .table
            .delete(cas)
            .map_err(|e| atomics::CasError::StoreError(wasi_kv::Error::Other(e.to_string())))?;
        let kv = self.env.kv.get(&handle.label).cloned().ok_or_else(|| {
            atomics::CasError::StoreError(wasi_kv::Error::Other(format!(
                "key-value store {:?} is not defined",
                handle.label
            )))
        })?;
        let swapped = kv
            .compare_and_swap(&handle.label, &handle.key, handle.observed, value)
            .await
            .map_err(|e| atomics::CasError::StoreError(wasi_other(e)))?;
        if swapped {
            return Ok(());
        }
        // The contract: a failed swap hands back a CAS already reading the
        // latest value, ready for a retry.
        let observed = kv
            .get(&handle.label, &handle.key)
            .await
            .map_err(|e| atomics::CasError::StoreError(wasi_other(e)))?;
        let fresh = self
            .table
            .push(CasHandle {
                label: handle.label,
                key: handle.key,
                observed,
            })
            .map_err(|e| atomics::CasError::StoreError(wasi_kv::Error::Other(e.to_string())))?;
        Err(atomics::CasError::CasFailed(fresh))
    }

    fn convert_cas_error(&mut self, err: atomics::CasError) -> wasmtime::Result<atomics::CasError> {
        Ok(err)
    }
}

impl atomics::HostCas for KvView<'_> {
    async fn new(
        &mut self,
        bucket: Resource<StoreHandle>,
        key: String,
    ) -> Result<Resource<CasHandle>, wasi_kv::Error> {
        let (kv, label) = self.wasi_store(&bucket)?;
        // Read now: the swap compares against what the key held when the CAS
        // began, whether or not the guest calls `current`.
        let observed = kv.get(&label, &key).await.map_err(wasi_other)?;
        self.table
            .push(CasHandle {
                label,
                key,
                observed,
            })
            .map_err(|e| wasi_kv::Error::Other(e.to_string()))
    }

    async fn current(
        &mut self,
        cas: Resource<CasHandle>,
    ) -> Result<Option<Vec<u8>>, wasi_kv::Error> {
        let h = self
            .table
            .get(&cas)
            .map_err(|e| wasi_kv::Error::Other(e.to_string()))?;
        Ok(h.observed.clone())
    }

    async fn drop(&mut self, rep: Resource<CasHandle>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}

impl batch::Host for KvView<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<StoreHandle>,
        keys: Vec<String>,
    ) -> Result<Vec<(String, Option<Vec<u8>>)>, wasi_kv::Error> {
        let (kv, label) = self.wasi_store(&bucket)?;
        kv.get_many(&label, keys).await.map_err(wasi_other)
    }

    async fn set_many(
        &mut self,
        bucket: Resource<StoreHandle>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), wasi_kv::Error> {
        let (kv, label) = self.wasi_store(&bucket)?;
        kv.set_many(&label, key_values).await.map_err(wasi_other)
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<StoreHandle>,
        keys: Vec<String>,
    ) -> Result<(), wasi_kv::Error> {
        let (kv, label) = self.wasi_store(&bucket)?;
        kv.delete_many(&label, keys).await.map_err(wasi_other)
    }
}

// ---------------------------------------------------------------- variables

impl spin_vars::Host for KvView<'_> {
    fn convert_error(&mut self, err: spin_vars::Error) -> wasmtime::Result<spin_vars::Error> {
        Ok(err)
    }
}

impl<T> spin_vars::HostWithStore<T> for KvData {
    async fn get(accessor: &Accessor<T, Self>, name: String) -> Result<String, spin_vars::Error> {
        if crate::variables::check_name(&name).is_err() {
            return Err(spin_vars::Error::InvalidName(name));
        }
        accessor.with(|mut a| {
            a.get()
                .env
                .variables
                .get(&name)
                .cloned()
                .ok_or(spin_vars::Error::Undefined(format!(
                    "no variable for component {:?} named {name:?}",
                    a.get().env.id
                )))
        })
    }
}

impl wasi_config::Host for KvView<'_> {
    async fn get(&mut self, key: String) -> Result<Option<String>, wasi_config::Error> {
        Ok(self.env.variables.get(&key).cloned())
    }

    async fn get_all(&mut self) -> Result<Vec<(String, String)>, wasi_config::Error> {
        Ok(self
            .env
            .variables
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn convert_error(&mut self, err: wasi_config::Error) -> wasmtime::Result<wasi_config::Error> {
        Ok(err)
    }
}
