//! The key-value store: one SQLite file shared by every component.
//!
//! The table layout is Spin's own (`spin_key_value(store, key, value)`), so a
//! `.spin/sqlite_key_value.db` written by `spin up` opens here and vice versa.
//! Two deliberate differences, both towards correctness:
//! - the database runs in WAL mode, so readers do not block the writer;
//! - compare-and-swap on an absent key inserts only if the key is still absent
//!   (Spin upserts, which can overwrite a concurrent insert).
//!
//! All access goes through one connection behind a mutex on the blocking
//! thread pool: SQLite serialises writers anyway, and one connection makes the
//! read-compare-write of `increment` and `swap` atomic within this process.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};

/// Errors from the store backend, mapped onto each WIT interface's variant at
/// the binding edge.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A value under an incremented key is not an 8-byte counter.
    #[error("value under key {key:?} is not a 64-bit counter ({len} bytes)")]
    NotACounter {
        /// The key.
        key: String,
        /// Its actual length.
        len: usize,
    },
    /// Increment would overflow.
    #[error("counter under key {0:?} would overflow")]
    Overflow(String),
    /// The blocking task was lost.
    #[error("store task failed: {0}")]
    Join(String),
}

/// Result alias for the store.
pub type Result<T, E = KvError> = std::result::Result<T, E>;

/// A connection to the store file at `path`, created (with its directory
/// and Spin's table) if missing: the one way the host and its backup tools
/// open a store.
pub fn connect(path: &Path) -> rusqlite::Result<Connection> {
    if let Some(dir) = path.parent() {
        // A missing directory surfaces as SQLite's own open error below.
        let _ = std::fs::create_dir_all(dir);
    }
    let conn = Connection::open(path)?;
    // WAL lets health checks and reads proceed during a write; a busy
    // timeout covers a second process (e.g. an operator's sqlite3 shell).
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute(
        "CREATE TABLE IF NOT EXISTS spin_key_value (
            store TEXT NOT NULL,
            key   TEXT NOT NULL,
            value BLOB NOT NULL,
            PRIMARY KEY (store, key)
        )",
        [],
    )?;
    Ok(conn)
}

/// The SQLite file behind every store label.
#[derive(Clone)]
pub struct SqliteKv {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl SqliteKv {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = connect(path)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_owned(),
        })
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| KvError::Join(e.to_string()))?
    }

    /// The value under `key` in `store`.
    pub async fn get(&self, store: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let (store, key) = (store.to_owned(), key.to_owned());
        self.with(move |c| {
            Ok(
                c.prepare_cached("SELECT value FROM spin_key_value WHERE store=?1 AND key=?2")?
                    .query_row(params![store, key], |r| r.get(0))
                    .optional()?,
            )
        })
        .await
    }

    /// Sets `key` to `value`.
    pub async fn set(&self, store: &str, key: &str, value: Vec<u8>) -> Result<()> {
        let (store, key) = (store.to_owned(), key.to_owned());
        self.with(move |c| {
            c.prepare_cached(
                "INSERT INTO spin_key_value (store, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT(store, key) DO UPDATE SET value=excluded.value",
            )?
            .execute(params![store, key, value])?;
            Ok(())
        })
        .await
    }

    /// Deletes `key`; absent keys are not an error.
    pub async fn delete(&self, store: &str, key: &str) -> Result<()> {
        let (store, key) = (store.to_owned(), key.to_owned());
        self.with(move |c| {
            c.prepare_cached("DELETE FROM spin_key_value WHERE store=?1 AND key=?2")?
                .execute(params![store, key])?;
            Ok(())
        })
        .await
    }

    /// Whether `key` exists.
    pub async fn exists(&self, store: &str, key: &str) -> Result<bool> {
        Ok(self.get(store, key).await?.is_some())
    }

    /// Every key in `store`, sorted.
    pub async fn keys(&self, store: &str) -> Result<Vec<String>> {
        let store = store.to_owned();
        self.with(move |c| {
            let mut stmt =
                c.prepare_cached("SELECT key FROM spin_key_value WHERE store=?1 ORDER BY key")?;
            let keys = stmt
                .query_map(params![store], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(keys)
        })
        .await
    }

    /// Values for several keys, in the order asked; absent keys map to `None`.
    pub async fn get_many(
        &self,
        store: &str,
        keys: Vec<String>,
    ) -> Result<Vec<(String, Option<Vec<u8>>)>> {
        let store = store.to_owned();
        self.with(move |c| {
            let mut stmt =
                c.prepare_cached("SELECT value FROM spin_key_value WHERE store=?1 AND key=?2")?;
            keys.into_iter()
                .map(|k| {
                    let v = stmt.query_row(params![store, k], |r| r.get(0)).optional()?;
                    Ok((k, v))
                })
                .collect()
        })
        .await
    }

    /// Sets several keys in one transaction.
    pub async fn set_many(&self, store: &str, entries: Vec<(String, Vec<u8>)>) -> Result<()> {
        let store = store.to_owned();
        self.with(move |c| {
            let tx = c.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO spin_key_value (store, key, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT(store, key) DO UPDATE SET value=excluded.value",
                )?;
                for (k, v) in entries {
                    stmt.execute(params![store, k, v])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Deletes several keys in one transaction.
    pub async fn delete_many(&self, store: &str, keys: Vec<String>) -> Result<()> {
        let store = store.to_owned();
        self.with(move |c| {
            let tx = c.transaction()?;
            {
                let mut stmt =
                    tx.prepare_cached("DELETE FROM spin_key_value WHERE store=?1 AND key=?2")?;
                for k in keys {
                    stmt.execute(params![store, k])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Adds `delta` to the little-endian i64 under `key` (absent = 0) and
    /// returns the new value, atomically.
    ///
    /// Unlike Spin's SQLite store, a value that is not 8 bytes is an error for
    /// this call only, never a panic that poisons the store.
    pub async fn increment(&self, store: &str, key: &str, delta: i64) -> Result<i64> {
        let (store, key) = (store.to_owned(), key.to_owned());
        self.with(move |c| {
            // Immediate: take the write lock before the read. A deferred
            // transaction that read first cannot be upgraded once another
            // process (a second host on the same file) has written, and
            // SQLite answers "database is locked" at once, whatever the busy
            // timeout; an immediate one waits its turn.
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let current: Option<Vec<u8>> = tx
                .prepare_cached("SELECT value FROM spin_key_value WHERE store=?1 AND key=?2")?
                .query_row(params![store, key], |r| r.get(0))
                .optional()?;
            let current = match current {
                None => 0,
                Some(bytes) => {
                    let len = bytes.len();
                    let arr: [u8; 8] = bytes.try_into().map_err(|_| KvError::NotACounter {
                        key: key.clone(),
                        len,
                    })?;
                    i64::from_le_bytes(arr)
                }
            };
            let next = current
                .checked_add(delta)
                .ok_or_else(|| KvError::Overflow(key.clone()))?;
            tx.prepare_cached(
                "INSERT INTO spin_key_value (store, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT(store, key) DO UPDATE SET value=excluded.value",
            )?
            .execute(params![store, key, next.to_le_bytes().to_vec()])?;
            tx.commit()?;
            Ok(next)
        })
        .await
    }

    /// Writes `new` under `key` only if the current value is still `expected`
    /// (`None`: the key must still be absent). Returns whether it swapped.
    pub async fn compare_and_swap(
        &self,
        store: &str,
        key: &str,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    ) -> Result<bool> {
        let (store, key) = (store.to_owned(), key.to_owned());
        self.with(move |c| {
            let changed = match expected {
                Some(old) => c
                    .prepare_cached(
                        "UPDATE spin_key_value SET value=?4
                         WHERE store=?1 AND key=?2 AND value=?3",
                    )?
                    .execute(params![store, key, old, new])?,
                None => c
                    .prepare_cached(
                        "INSERT INTO spin_key_value (store, key, value) VALUES (?1, ?2, ?3)
                         ON CONFLICT(store, key) DO NOTHING",
                    )?
                    .execute(params![store, key, new])?,
            };
            Ok(changed == 1)
        })
        .await
    }

    /// A cheap query proving the database answers.
    pub async fn ping(&self) -> Result<()> {
        self.with(|c| {
            c.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }
}

/// An open store (`spin:key-value` store or `wasi:keyvalue` bucket) as held in
/// a component instance's resource table.
pub struct StoreHandle {
    /// The label the component opened.
    pub label: String,
}

/// A compare-and-swap in progress: the value read by `current`, if it was read.
pub struct CasHandle {
    /// The store label.
    pub label: String,
    /// The key being swapped.
    pub key: String,
    /// What the key held when the CAS was created or last read.
    pub observed: Option<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn kv() -> (tempfile::TempDir, SqliteKv) {
        let dir = tempfile::tempdir().unwrap();
        let kv = SqliteKv::open(&dir.path().join("kv.db")).unwrap();
        (dir, kv)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn basic_operations_are_store_scoped() {
        let (_d, kv) = kv().await;
        kv.set("a", "k", b"1".to_vec()).await.unwrap();
        assert_eq!(kv.get("a", "k").await.unwrap(), Some(b"1".to_vec()));
        assert_eq!(kv.get("b", "k").await.unwrap(), None);
        assert!(kv.exists("a", "k").await.unwrap());
        kv.delete("a", "k").await.unwrap();
        assert!(!kv.exists("a", "k").await.unwrap());
        kv.set_many("a", vec![("x".into(), vec![1]), ("y".into(), vec![2])])
            .await
            .unwrap();
        assert_eq!(kv.keys("a").await.unwrap(), ["x", "y"]);
        let many = kv
            .get_many("a", vec!["y".into(), "z".into()])
            .await
            .unwrap();
        assert_eq!(many, vec![("y".into(), Some(vec![2])), ("z".into(), None)]);
        kv.delete_many("a", vec!["x".into(), "y".into()])
            .await
            .unwrap();
        assert!(kv.keys("a").await.unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn increment_is_exact_and_refuses_non_counters() {
        let (_d, kv) = kv().await;
        let mut tasks = Vec::new();
        for _ in 0..40 {
            let kv = kv.clone();
            tasks.push(tokio::spawn(async move { kv.increment("s", "c", 1).await }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(kv.increment("s", "c", 0).await.unwrap(), 40);
        kv.set("s", "text", b"hello".to_vec()).await.unwrap();
        let err = kv.increment("s", "text", 1).await.unwrap_err();
        assert!(matches!(err, KvError::NotACounter { len: 5, .. }), "{err}");
        // The store still works after the refusal.
        assert_eq!(kv.increment("s", "c", 2).await.unwrap(), 42);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn compare_and_swap_detects_changes_and_concurrent_inserts() {
        let (_d, kv) = kv().await;
        assert!(
            kv.compare_and_swap("s", "k", None, b"a".to_vec())
                .await
                .unwrap()
        );
        // A second insert-if-absent loses: the key exists now.
        assert!(
            !kv.compare_and_swap("s", "k", None, b"b".to_vec())
                .await
                .unwrap()
        );
        assert!(
            !kv.compare_and_swap("s", "k", Some(b"stale".to_vec()), b"c".to_vec())
                .await
                .unwrap()
        );
        assert!(
            kv.compare_and_swap("s", "k", Some(b"a".to_vec()), b"d".to_vec())
                .await
                .unwrap()
        );
        assert_eq!(kv.get("s", "k").await.unwrap(), Some(b"d".to_vec()));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn data_survives_reopen_in_spin_layout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sqlite_key_value.db");
        SqliteKv::open(&path)
            .unwrap()
            .set("default", "k", b"v".to_vec())
            .await
            .unwrap();
        let conn = Connection::open(&path).unwrap();
        let v: Vec<u8> = conn
            .query_row(
                "SELECT value FROM spin_key_value WHERE store='default' AND key='k'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(v, b"v");
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }
}
