//! In-memory stand-ins for the store, the workers and the host, with fault
//! injection, so the engine is tested natively, deterministically and fast.
//! Fakes for tests only: components use `spindle-spin`'s real ones.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use spindle_core::job::Job;

use crate::store::{Result, Store, StoreError};
use crate::{Config, Engine, Host, Sent, Workers};

/// A store operation, for fault injection and counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A read.
    Get,
    /// A plain write.
    Set,
    /// A delete.
    Delete,
    /// An atomic increment.
    Increment,
    /// The write half of a compare-and-swap.
    Swap,
}

#[derive(Debug)]
struct Fault {
    op: Op,
    prefix: String,
    skip: usize,
    times: usize,
    lose_race: bool,
}

/// Writes made so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Writes {
    /// Sets, swaps, deletes and increments.
    pub count: u64,
    /// Bytes written by sets and swaps.
    pub bytes: u64,
}

#[derive(Default)]
struct Inner {
    map: BTreeMap<String, Vec<u8>>,
    faults: Vec<Fault>,
    writes: Writes,
    reads: u64,
    /// When set, the state of the generator that decides how many times
    /// each operation yields (0 to 2).
    yielding: Option<u64>,
    /// Spin's stores: a compare-and-swap of a key read as absent always
    /// writes, whatever was written meanwhile.
    blind_inserts: bool,
}

/// An in-memory [`Store`] with Spin's semantics (counters are 8-byte
/// little-endian integers; compare-and-swap compares what was read).
#[derive(Default)]
pub struct MemStore {
    inner: Mutex<Inner>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next `times` operations `op` on keys starting with
    /// `prefix` fail, after letting `skip` of them through.
    pub fn fail(&self, op: Op, prefix: &str, skip: usize, times: usize) {
        self.inner.lock().unwrap().faults.push(Fault {
            op,
            prefix: prefix.to_owned(),
            skip,
            times,
            lose_race: false,
        });
    }

    /// Makes the next `times` swaps on keys starting with `prefix` lose a
    /// race, as if another writer had come first.
    pub fn lose_swaps(&self, prefix: &str, times: usize) {
        self.inner.lock().unwrap().faults.push(Fault {
            op: Op::Swap,
            prefix: prefix.to_owned(),
            skip: 0,
            times,
            lose_race: true,
        });
    }

    /// Makes every operation yield to the executor 0 to 2 times first, as
    /// a generator seeded with `seed` decides, so futures joined on one
    /// thread interleave at store calls; each seed is one interleaving.
    pub fn interleave(&self, seed: u64) {
        self.inner.lock().unwrap().yielding = Some(seed | 1);
    }

    /// Behaves like Spin's key-value stores, whose compare-and-swap of a
    /// key that was absent writes unconditionally: code that must be exact
    /// on them may not create documents by compare-and-swap.
    pub fn blind_inserts(&self) {
        self.inner.lock().unwrap().blind_inserts = true;
    }

    /// Writes made so far.
    pub fn writes(&self) -> Writes {
        self.inner.lock().unwrap().writes
    }

    /// Reads made so far.
    pub fn reads(&self) -> u64 {
        self.inner.lock().unwrap().reads
    }

    /// The largest stored document, in bytes.
    pub fn largest(&self) -> (String, usize) {
        self.inner
            .lock()
            .unwrap()
            .map
            .iter()
            .map(|(k, v)| (k.clone(), v.len()))
            .max_by_key(|(_, n)| *n)
            .unwrap_or_default()
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.inner.lock().unwrap().map.keys().cloned().collect()
    }

    /// The raw value under `key`.
    pub fn raw(&self, key: &str) -> Option<Vec<u8>> {
        self.inner.lock().unwrap().map.get(key).cloned()
    }

    /// Writes `value` directly, bypassing faults (test setup).
    pub fn put(&self, key: &str, value: &[u8]) {
        self.inner
            .lock()
            .unwrap()
            .map
            .insert(key.to_owned(), value.to_vec());
    }

    /// Checks faults for `op` on `key`: `Err` to fail, `Ok(true)` to lose a
    /// race.
    fn check(&self, op: Op, key: &str) -> Result<bool> {
        let mut inner = self.inner.lock().unwrap();
        for f in &mut inner.faults {
            if f.op != op || !key.starts_with(&f.prefix) || f.times == 0 {
                continue;
            }
            if f.skip > 0 {
                f.skip -= 1;
                continue;
            }
            f.times -= 1;
            if f.lose_race {
                return Ok(true);
            }
            return Err(StoreError::Store(format!(
                "injected {op:?} failure on {key}"
            )));
        }
        Ok(false)
    }

    async fn pause(&self) {
        let times = {
            let mut inner = self.inner.lock().unwrap();
            match &mut inner.yielding {
                None => 0,
                Some(state) => {
                    *state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    (*state >> 33) % 3
                }
            }
        };
        for _ in 0..times {
            YieldOnce(false).await;
        }
    }

    fn wrote(&self, bytes: usize) {
        let mut inner = self.inner.lock().unwrap();
        inner.writes.count += 1;
        inner.writes.bytes += bytes as u64;
    }
}

struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

impl Store for MemStore {
    type Cas = (String, Option<Vec<u8>>);

    async fn get_raw(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.pause().await;
        self.check(Op::Get, key)?;
        self.inner.lock().unwrap().reads += 1;
        Ok(self.raw(key))
    }

    async fn set_raw(&self, key: &str, value: &[u8]) -> Result<()> {
        self.pause().await;
        self.check(Op::Set, key)?;
        self.put(key, value);
        self.wrote(value.len());
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.pause().await;
        self.check(Op::Delete, key)?;
        self.inner.lock().unwrap().map.remove(key);
        self.wrote(0);
        Ok(())
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64> {
        self.pause().await;
        self.check(Op::Increment, key)?;
        let mut inner = self.inner.lock().unwrap();
        let current = match inner.map.get(key) {
            None => 0,
            Some(b) => i64::from_le_bytes(b.as_slice().try_into().map_err(|_| {
                StoreError::Store(format!("{key} holds something other than a counter"))
            })?),
        };
        let next = current + delta;
        inner
            .map
            .insert(key.to_owned(), next.to_le_bytes().to_vec());
        if delta != 0 {
            inner.writes.count += 1;
        }
        Ok(next)
    }

    async fn counter(&self, key: &str) -> Result<i64> {
        match self.get_raw(key).await? {
            None => Ok(0),
            Some(bytes) => crate::store::decode_counter(key, &bytes),
        }
    }

    async fn watch(&self, key: &str) -> Result<(Self::Cas, Option<Vec<u8>>)> {
        self.pause().await;
        self.check(Op::Get, key)?;
        self.inner.lock().unwrap().reads += 1;
        let v = self.raw(key);
        Ok(((key.to_owned(), v.clone()), v))
    }

    async fn swap(&self, (key, seen): Self::Cas, value: &[u8]) -> Result<bool> {
        self.pause().await;
        if self.check(Op::Swap, &key)? {
            return Ok(false);
        }
        let mut inner = self.inner.lock().unwrap();
        let blind = inner.blind_inserts && seen.is_none();
        if !blind && inner.map.get(&key) != seen.as_ref() {
            return Ok(false);
        }
        inner.map.insert(key, value.to_vec());
        inner.writes.count += 1;
        inner.writes.bytes += value.len() as u64;
        Ok(true)
    }
}

/// One request a [`FakeWorkers`] received.
#[derive(Debug, Clone)]
pub struct Posted {
    /// Where.
    pub url: String,
    /// The JSON body.
    pub body: Vec<u8>,
}

type Answer = Box<dyn FnMut(&str, &[u8]) -> Sent + Send>;

/// A worker pool that records what it is sent and answers as told.
pub struct FakeWorkers {
    posted: Mutex<Vec<Posted>>,
    answer: Mutex<Answer>,
}

impl FakeWorkers {
    /// Workers that accept every job and every cancel (202).
    pub fn accepting() -> Self {
        Self::answering(|_, _| Sent::Answered(202))
    }

    /// Workers that answer with `f(url, body)`.
    pub fn answering(f: impl FnMut(&str, &[u8]) -> Sent + Send + 'static) -> Self {
        Self {
            posted: Mutex::new(Vec::new()),
            answer: Mutex::new(Box::new(f)),
        }
    }

    /// Changes how they answer from now on.
    pub fn answer_with(&self, f: impl FnMut(&str, &[u8]) -> Sent + Send + 'static) {
        *self.answer.lock().unwrap() = Box::new(f);
    }

    /// Every request so far.
    pub fn posted(&self) -> Vec<Posted> {
        self.posted.lock().unwrap().clone()
    }

    /// Every job dispatched so far (POSTs to `.../jobs`), in order.
    pub fn jobs(&self) -> Vec<Job> {
        self.posted()
            .iter()
            .filter(|p| p.url.ends_with("/jobs"))
            .filter_map(|p| serde_json::from_slice(&p.body).ok())
            .collect()
    }

    /// Every cancel request's URL so far.
    pub fn cancels(&self) -> Vec<String> {
        self.posted()
            .into_iter()
            .filter(|p| p.url.ends_with("/cancel"))
            .map(|p| p.url)
            .collect()
    }
}

impl Workers for FakeWorkers {
    async fn post(&self, url: &str, body: Bytes, _: &[(&str, String)], _: u64) -> Sent {
        self.posted.lock().unwrap().push(Posted {
            url: url.to_owned(),
            body: body.to_vec(),
        });
        (self.answer.lock().unwrap())(url, &body)
    }
}

/// A host with a clock tests move, and logs they can read. Sleeping
/// advances the clock instead of waiting.
#[derive(Default)]
pub struct TestHost {
    now: AtomicU64,
    audit: Mutex<Vec<String>>,
    log: Mutex<Vec<String>>,
}

impl TestHost {
    /// A clock at `now_ms`.
    pub fn at(now_ms: u64) -> Self {
        let h = Self::default();
        h.now.store(now_ms, Ordering::SeqCst);
        h
    }

    /// Moves the clock forward.
    pub fn advance(&self, ms: u64) {
        self.now.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock.
    pub fn set(&self, now_ms: u64) {
        self.now.store(now_ms, Ordering::SeqCst);
    }

    /// Audit lines so far.
    pub fn audit_lines(&self) -> Vec<String> {
        self.audit.lock().unwrap().clone()
    }

    /// Log lines so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Host for TestHost {
    fn now_ms(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }

    async fn sleep_ms(&self, ms: u64) {
        self.advance(ms);
    }

    fn audit(&self, line: &str) {
        self.audit.lock().unwrap().push(line.to_owned());
    }

    fn log(&self, line: &str) {
        self.log.lock().unwrap().push(line.to_owned());
    }
}

/// Settings for tests: two workers, a one-second lease, 30 days'
/// retention, the default circuit breaker.
pub fn config() -> Config {
    Config::from_vars(|name| {
        Some(
            match name {
                "workers" => "http://w1,http://w2",
                "callback_url" => "http://spindle",
                "lease_ms" => "1000",
                "max_output_bytes" => "4096",
                "dispatch_timeout_ms" => "100",
                "retention_days" => "30",
                "breaker_failures" => "5",
                "breaker_window_secs" => "120",
                "breaker_open_secs" => "60",
                "breaker_close_successes" => "3",
                _ => "test-secret-0123456789abcdefghijklmnop",
            }
            .to_owned(),
        )
    })
    .expect("test settings are valid")
}

/// An engine on an empty in-memory store, accepting workers and a test
/// clock at `now_ms`.
pub fn engine(now_ms: u64) -> Engine<MemStore, FakeWorkers, TestHost> {
    Engine {
        store: MemStore::new(),
        workers: FakeWorkers::accepting(),
        host: TestHost::at(now_ms),
        config: config(),
    }
}
