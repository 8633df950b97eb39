//! The engine side: compile every component once, pre-instantiate, and serve
//! requests through a per-component pool of reusable instances.
//!
//! Like Spin with WASI 0.3 components, an instance serves up to
//! [`ReuseConfig::max_requests`] requests in its life, up to
//! [`ReuseConfig::max_concurrent`] at a time; `--instance-per-request` makes
//! that one and one. Components must be correct either way: they keep no
//! state between requests, everything lives in the key-value store.
//!
//! A request's work belongs to its instance, not to its client: a client
//! that hangs up does not stop it (wasmtime-wasi-http's `ProxyHandler` only
//! drops the answer), so a component is never cut between two store writes
//! by a disconnect. Shutdown waits for every instance to finish. Only the
//! request timeout, which reaches into guest code ([`crate::deadline`]), and
//! a shutdown that outlasts its drain period stop work half-way.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::sync::watch;
use wasmtime::component::{Component, GuestTaskId, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreContextMut,
    UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::handler::{
    ExpirationError, HandlerState, Instance, ProxyHandler, ProxyPre, ShouldAccept,
    WorkerExpiration, WorkerState, WorkerStatus,
};
use wasmtime_wasi_http::{WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::answer::RequestId;
use crate::deadline::{InstanceClock, RequestTimedOut, Ticket};
use crate::host_impl::{ComponentEnv, KvData, KvView};
use crate::kv::SqliteKv;
use crate::manifest::App;
use crate::outbound::{AllowedHosts, Destination};
use crate::routes::{RouteMatch, Router};
use crate::runtime_config::StoreLocation;
use crate::stdio::{ComponentOutput, Stream};

/// How instances are reused.
#[derive(Debug, Clone, Copy)]
pub struct ReuseConfig {
    /// Requests one instance serves before it is retired.
    pub max_requests: usize,
    /// Requests one instance serves at the same time.
    pub max_concurrent: usize,
    /// How long an idle instance is kept for reuse.
    pub idle_timeout: Duration,
}

impl Default for ReuseConfig {
    /// Spin's defaults for WASI 0.3 components.
    fn default() -> Self {
        Self {
            max_requests: Self::SPIN_MAX_REQUESTS,
            max_concurrent: Self::SPIN_MAX_CONCURRENT,
            idle_timeout: Duration::from_secs(1),
        }
    }
}

impl ReuseConfig {
    /// Spin's limit on requests per WASI 0.3 instance.
    pub const SPIN_MAX_REQUESTS: usize = 128;
    /// Spin's limit on concurrent requests per WASI 0.3 instance.
    pub const SPIN_MAX_CONCURRENT: usize = 16;

    /// One fresh instance per request.
    pub fn per_request() -> Self {
        Self {
            max_requests: 1,
            max_concurrent: 1,
            idle_timeout: Duration::ZERO,
        }
    }
}

/// Options for building the runtime.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Instance reuse.
    pub reuse: ReuseConfig,
    /// Directory for `logs/` (and the default store, unless the runtime
    /// configuration puts it elsewhere): Spin's `.spin`.
    pub state_dir: PathBuf,
    /// Where each key-value store label lives.
    pub stores: crate::runtime_config::Stores,
    /// Longest a single request may run inside a component.
    pub request_timeout: Duration,
    /// Where compiled components are cached between starts; `None` compiles
    /// every time.
    pub cache_dir: Option<PathBuf>,
}

/// Per-instance store data.
pub struct HostState {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: OutboundHooks,
    env: Arc<ComponentEnv>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

fn kv_view(state: &mut HostState) -> KvView<'_> {
    KvView {
        env: &state.env,
        table: &mut state.table,
    }
}

/// Where a request entered: the listener (with the client address) or a
/// component calling the application itself.
#[derive(Debug, Clone, Copy)]
pub enum Origin {
    /// A TCP client.
    Client(SocketAddr),
    /// A component's outbound request to `self` or `<id>.spin.internal`.
    Internal,
}

/// Shutdown, and the instances still alive: at shutdown the host waits for
/// every instance to finish its work, whether or not a client still waits
/// for it.
struct Lifecycle {
    shutting_down: watch::Sender<bool>,
    live_instances: watch::Sender<usize>,
}

impl Lifecycle {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            shutting_down: watch::Sender::new(false),
            live_instances: watch::Sender::new(0),
        })
    }

    fn is_shutting_down(&self) -> bool {
        *self.shutting_down.borrow()
    }

    /// Resolves once shutdown has begun (or the runtime is gone).
    fn shutdown_signal(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut rx = self.shutting_down.subscribe();
        async move {
            let _ = rx.wait_for(|down| *down).await;
        }
    }

    fn instance_started(self: &Arc<Self>) -> LiveInstance {
        self.live_instances.send_modify(|n| *n += 1);
        LiveInstance(self.clone())
    }
}

/// Counts one instance as alive until dropped.
struct LiveInstance(Arc<Lifecycle>);

impl Drop for LiveInstance {
    fn drop(&mut self) {
        self.0.live_instances.send_modify(|n| *n -= 1);
    }
}

/// No instance slot came free within the request timeout.
#[derive(Debug, thiserror::Error)]
#[error("every instance slot stayed busy for the whole request timeout")]
pub struct Overloaded;

/// Client requests served at once; more wait their turn (at most the
/// request timeout, then 503). A burst can make
/// the handler start an instance per request (instances starting do not yet
/// take requests), and past the pooling allocator's slots instantiation
/// fails: queueing keeps a burst from turning into errors, and the slots
/// left over are for components calling the app itself.
pub const MAX_CLIENT_REQUESTS: usize = 192;

/// The running application: compiled components and their instance pools.
pub struct Runtime {
    app: App,
    handlers: HashMap<String, ProxyHandler<ComponentHandler>>,
    listen: std::sync::OnceLock<SocketAddr>,
    engine: Engine,
    request_timeout: Duration,
    lifecycle: Arc<Lifecycle>,
    admission: Arc<tokio::sync::Semaphore>,
}

impl Runtime {
    /// Compiles and pre-instantiates every component of `app`.
    pub fn new(app: App, opts: &RuntimeOptions) -> anyhow::Result<Arc<Self>> {
        let engine = engine(opts.cache_dir.as_deref())?;
        crate::deadline::spawn_epoch_ticker(&engine).context("cannot start the epoch thread")?;
        let mut kv = BTreeMap::new();
        // Labels that name one file share one connection, so their writes
        // queue on one lock instead of contending for SQLite's; each memory
        // store is its own database.
        let mut files: HashMap<PathBuf, SqliteKv> = HashMap::new();
        for (label, location) in &opts.stores.labels {
            let store = match location {
                StoreLocation::Sqlite(path) => match files.get(path) {
                    Some(shared) => shared.clone(),
                    None => {
                        let store = SqliteKv::open(path).with_context(|| {
                            format!(
                                "cannot open key-value store {label:?} at {}",
                                path.display()
                            )
                        })?;
                        files.insert(path.clone(), store.clone());
                        store
                    }
                },
                StoreLocation::Memory => SqliteKv::open(std::path::Path::new(":memory:"))
                    .with_context(|| format!("cannot open key-value store {label:?} in memory"))?,
            };
            kv.insert(label.clone(), store);
        }
        let kv = Arc::new(kv);
        let logs = opts.state_dir.join("logs");
        std::fs::create_dir_all(&logs)
            .with_context(|| format!("cannot create log directory {}", logs.display()))?;

        let mut linker: Linker<HostState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi::p3::add_to_linker(&mut linker)?;
        wasmtime_wasi_http::p3::add_to_linker(&mut linker)?;
        crate::bindings::Host_::add_to_linker::<HostState, KvData>(&mut linker, kv_view)?;

        let mut compiled = Vec::new();
        for (id, c) in &app.components {
            let started = Instant::now();
            let component = Component::from_file(&engine, &c.source)
                .map_err(anyhow::Error::from)
                .with_context(|| {
                    format!("component {id:?}: cannot compile {}", c.source.display())
                })?;
            let pre = linker
                .instantiate_pre(&component)
                .map_err(anyhow::Error::from)
                .with_context(|| {
                    format!("component {id:?}: imports something the host does not provide")
                })?;
            let pre = wasmtime_wasi_http::p3::bindings::ServicePre::new(pre).map_err(anyhow::Error::from).with_context(|| {
                format!("component {id:?}: does not export wasi:http/handler@0.3.0 (build it with spin-sdk 7)")
            })?;
            tracing::debug!(component = %id, ms = started.elapsed().as_millis() as u64, "compiled");
            let variables: BTreeMap<String, String> = c
                .variables
                .iter()
                .map(|(k, t)| (k.clone(), app.variables.render(t)))
                .collect();
            let env = Arc::new(ComponentEnv {
                id: id.clone(),
                kv: kv.clone(),
                stores: c.key_value_stores.clone(),
                defined_stores: kv.keys().cloned().collect(),
                variables,
            });
            let open_log = |stream: Stream| -> anyhow::Result<ComponentOutput> {
                let name = match stream {
                    Stream::Stdout => "stdout",
                    Stream::Stderr => "stderr",
                };
                let path = logs.join(format!("{id}_{name}.txt"));
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("cannot open {}", path.display()))?;
                Ok(ComponentOutput::new(file, id, stream))
            };
            compiled.push((
                id.clone(),
                pre,
                env,
                c.allowed_hosts.clone(),
                c.environment.clone(),
                open_log(Stream::Stdout)?,
                open_log(Stream::Stderr)?,
            ));
        }

        let reuse = opts.reuse;
        let request_timeout = opts.request_timeout;
        let lifecycle = Lifecycle::new();
        let rt = Arc::new_cyclic(|weak: &Weak<Runtime>| {
            let handlers = compiled
                .into_iter()
                .map(|(id, pre, env, allowed, environment, stdout, stderr)| {
                    let handler = ProxyHandler::new(ComponentHandler {
                        pre: ProxyPre::P3(pre),
                        env,
                        allowed,
                        environment,
                        stdout,
                        stderr,
                        runtime: weak.clone(),
                        reuse,
                        request_timeout,
                        next_instance: AtomicU64::new(0),
                        lifecycle: lifecycle.clone(),
                    });
                    (id, handler)
                })
                .collect();
            Runtime {
                app,
                handlers,
                listen: std::sync::OnceLock::new(),
                engine: engine.clone(),
                request_timeout,
                lifecycle,
                admission: Arc::new(tokio::sync::Semaphore::new(MAX_CLIENT_REQUESTS)),
            }
        });
        Ok(rt)
    }

    /// The application.
    pub fn app(&self) -> &App {
        &self.app
    }

    /// The engine (for tests and benchmarks that inspect its configuration).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Begins shutdown: the tick stops, and instances retire as soon as they
    /// have no work left instead of idling for reuse.
    pub fn begin_shutdown(&self) {
        self.lifecycle.shutting_down.send_replace(true);
    }

    /// Resolves once [`Runtime::begin_shutdown`] has been called.
    pub fn shutting_down(&self) -> impl Future<Output = ()> + Send + 'static {
        self.lifecycle.shutdown_signal()
    }

    /// Component instances alive (serving, finishing work, or idle).
    pub fn live_instances(&self) -> usize {
        *self.lifecycle.live_instances.borrow()
    }

    /// Resolves when no component instance is alive: every request's work,
    /// including work whose client went away, has finished.
    pub async fn instances_retired(&self) {
        let mut rx = self.lifecycle.live_instances.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Records the address the listener is bound to (used for `spin-full-url`
    /// of internal requests).
    pub fn set_listen_addr(&self, addr: SocketAddr) {
        let _ = self.listen.set(addr);
    }

    /// Routes and serves one request. Returns `None` if no route matches.
    pub async fn handle(
        &self,
        req: http::Request<WasiBody>,
        origin: Origin,
    ) -> anyhow::Result<Option<(String, String, http::Response<WasiBody>)>> {
        let path = req.uri().path().to_owned();
        let Some(m) = self.app.router.route(&path) else {
            return Ok(None);
        };
        let component = m.route.component.clone();
        let raw = m.route.raw.clone();
        // Only clients queue: a component calling the app while holding a
        // permit must never wait for one.
        let _permit = match origin {
            Origin::Client(_) => Some(
                tokio::time::timeout(self.request_timeout, self.admission.clone().acquire_owned())
                    .await
                    .map_err(|_| anyhow::Error::new(Overloaded))??,
            ),
            Origin::Internal => None,
        };
        let resp = self.call(&component, &m, req, origin).await?;
        Ok(Some((raw, component, resp)))
    }

    /// Serves a request straight to one component (service chaining).
    pub async fn handle_component(
        &self,
        component: &str,
        req: http::Request<WasiBody>,
    ) -> anyhow::Result<http::Response<WasiBody>> {
        let route = Router::chain_route(component);
        let path = req.uri().path().to_owned();
        let trailing = if path == "/" { String::new() } else { path };
        let m = RouteMatch {
            route: &route,
            captures: HashMap::new(),
            path_info: trailing,
        };
        self.call(component, &m, req, Origin::Internal).await
    }

    async fn call(
        &self,
        component: &str,
        m: &RouteMatch<'_>,
        mut req: http::Request<WasiBody>,
        origin: Origin,
    ) -> anyhow::Result<http::Response<WasiBody>> {
        let handler = self
            .handlers
            .get(component)
            .with_context(|| format!("no component {component:?}"))?;
        self.add_spin_headers(&mut req, m, origin);
        let ticket = Arc::new(Ticket::default());
        match handler.handle(ticket.clone(), req).await {
            Ok(resp) => Ok(resp),
            // Either the request's own timer (the instance lives on until
            // its next guest code traps) or the epoch check that dropped the
            // instance under it.
            Err(e) if ticket.timed_out() || e.is::<ExpirationError>() => {
                Err(anyhow::Error::new(RequestTimedOut(self.request_timeout)))
                    .with_context(|| format!("component {component:?}"))
            }
            Err(e) => {
                Err(anyhow::Error::from(e)).with_context(|| format!("component {component:?}"))
            }
        }
    }

    fn add_spin_headers(
        &self,
        req: &mut http::Request<WasiBody>,
        m: &RouteMatch<'_>,
        origin: Origin,
    ) {
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| self.listen.get().map(|a| a.to_string()))
            .unwrap_or_else(|| "localhost".into());
        let path_and_query = req
            .uri()
            .path_and_query()
            .map_or("/".to_owned(), |p| p.as_str().to_owned());
        let full_url = format!("http://{host}{path_and_query}");
        // Components see an absolute URI, as under Spin.
        if let Ok(uri) = full_url.parse::<http::Uri>() {
            *req.uri_mut() = uri;
        }
        let client = match origin {
            Origin::Client(addr) => addr.to_string(),
            Origin::Internal => "127.0.0.1:0".to_owned(),
        };
        let headers = req.headers_mut();
        // Transport information only; it confuses guests that forward requests.
        headers.remove(http::header::CONNECTION);
        let mut set = |name: String, value: &str| {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_str(value),
            ) {
                headers.insert(n, v);
            }
        };
        set("spin-full-url".into(), &full_url);
        set("spin-path-info".into(), &m.path_info);
        set("spin-matched-route".into(), &m.route.raw);
        set("spin-base-path".into(), "/");
        set("spin-raw-component-route".into(), &m.route.raw);
        set("spin-component-route".into(), m.route.prefix());
        set("spin-client-addr".into(), &client);
        for (name, value) in &m.captures {
            set(
                format!("spin-path-match-{}", name.to_ascii_lowercase()),
                value,
            );
        }
    }
}

fn engine(cache_dir: Option<&std::path::Path>) -> anyhow::Result<Engine> {
    let mut config = Config::new();
    if let Some(dir) = cache_dir {
        // Compiling the components is most of start-up; the cache keys each
        // artifact by the wasm and the engine settings, so a changed
        // component is always recompiled.
        let mut cc = wasmtime::CacheConfig::new();
        cc.with_directory(dir);
        let cache = wasmtime::Cache::new(cc)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("cannot use {} as the compilation cache", dir.display()))?;
        config.cache(Some(cache));
    }
    config.wasm_component_model(true);
    config.wasm_component_model_async(true);
    // The only way to stop guest code that never calls the host (see
    // `deadline`). Costs a load and compare at loop heads and calls.
    config.epoch_interruption(true);
    config.concurrency_support(true);
    // Pooling: instance slots are pre-reserved and recycled, which is what
    // makes per-request instantiation cheap. Sized for a small app on a
    // small machine; each slot reserves address space, not memory.
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(256)
        .total_core_instances(512)
        .total_memories(512)
        .total_tables(512)
        .total_stacks(256)
        .max_memory_size(256 << 20);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config)
        .map_err(anyhow::Error::from)
        .context("cannot configure wasmtime (pooling allocator)")
}

/// Builds instances of one component for the shared [`ProxyHandler`].
pub struct ComponentHandler {
    pre: ProxyPre<HostState>,
    env: Arc<ComponentEnv>,
    allowed: AllowedHosts,
    environment: BTreeMap<String, String>,
    stdout: ComponentOutput,
    stderr: ComponentOutput,
    runtime: Weak<Runtime>,
    reuse: ReuseConfig,
    request_timeout: Duration,
    next_instance: AtomicU64,
    lifecycle: Arc<Lifecycle>,
}

impl HandlerState for ComponentHandler {
    type StoreData = HostState;
    type WorkerExpiration = Expiration;
    type WorkerState = Worker;

    async fn instantiate(&self) -> wasmtime::Result<Instance<HostState, Expiration, Worker>> {
        let live = self.lifecycle.instance_started();
        let clock = InstanceClock::new(self.request_timeout, Instant::now());
        let engine = match &self.pre {
            ProxyPre::P3(p) => p.engine().clone(),
            #[allow(unreachable_patterns)]
            _ => unreachable!("only WASI 0.3 components are pre-instantiated"),
        };
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(self.stdout.for_instance())
            .stderr(self.stderr.for_instance());
        for (k, v) in &self.environment {
            wasi.env(k, v);
        }
        let state = HostState {
            table: ResourceTable::new(),
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            hooks: OutboundHooks {
                component: self.env.id.clone(),
                allowed: self.allowed.clone(),
                runtime: self.runtime.clone(),
            },
            env: self.env.clone(),
        };
        let mut store = Store::new(&engine, state);
        store.set_epoch_deadline(1);
        let ticks = clock.clone();
        store.epoch_deadline_callback(move |_| {
            ticks.check(Instant::now())?;
            // Tokio's yield lets the I/O driver run before this task again;
            // wasmtime's plain yield does not, and a busy guest then holds
            // up accepting connections for hundreds of milliseconds.
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::task::yield_now()),
            ))
        });
        let proxy = self.pre.instantiate_async(&mut store).await?;
        clock.instantiated();
        let id = self.next_instance.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(component = %self.env.id, instance = id, "instantiated");
        Ok(Instance {
            store,
            proxy,
            view: WasiHttpView::http,
            expiration: Expiration {
                idle_timeout: self.reuse.idle_timeout,
                request_timeout: self.request_timeout,
                sleep: Box::pin(tokio::time::sleep(Duration::MAX)),
                shutdown: Box::pin(self.lifecycle.shutdown_signal()),
                shutting_down: false,
                clock: clock.clone(),
            },
            state: Worker {
                reuse: self.reuse,
                request_timeout: self.request_timeout,
                component: self.env.id.clone(),
                instance: id,
                clock,
                lifecycle: self.lifecycle.clone(),
                _live: live,
            },
        })
    }
}

/// Retires idle instances (at once during shutdown) and bounds request
/// time outside guest code: a request waiting on the host, or work after
/// the last answer.
pub struct Expiration {
    idle_timeout: Duration,
    request_timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    shutdown: Pin<Box<dyn Future<Output = ()> + Send + Sync>>,
    shutting_down: bool,
    clock: Arc<InstanceClock>,
}

impl WorkerExpiration for Expiration {
    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        status: WorkerStatus,
        start: Instant,
    ) -> Poll<()> {
        if !self.shutting_down && self.shutdown.as_mut().poll(cx).is_ready() {
            self.shutting_down = true;
        }
        if self.shutting_down && status == WorkerStatus::Idle {
            return Poll::Ready(());
        }
        let timeout = match status {
            WorkerStatus::Idle => self.idle_timeout,
            WorkerStatus::Requests | WorkerStatus::PostReturn => self.request_timeout,
        };
        let Some(deadline) = start.checked_add(timeout) else {
            return Poll::Pending;
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        if self.sleep.deadline() != deadline {
            self.sleep.as_mut().reset(deadline);
        }
        let expired = self.sleep.as_mut().poll(cx);
        if expired.is_ready() && status != WorkerStatus::Idle {
            self.clock.expire(Instant::now());
        }
        expired
    }
}

/// Decides how many requests an instance takes, times them, and reports
/// how it ended.
pub struct Worker {
    reuse: ReuseConfig,
    request_timeout: Duration,
    component: String,
    instance: u64,
    clock: Arc<InstanceClock>,
    lifecycle: Arc<Lifecycle>,
    _live: LiveInstance,
}

impl WorkerState for Worker {
    type StoreData = HostState;
    type RequestData = Arc<Ticket>;

    fn should_accept_request(&self, concurrent: usize, total: usize) -> ShouldAccept {
        if total >= self.reuse.max_requests {
            ShouldAccept::Never
        } else if concurrent >= self.reuse.max_concurrent {
            ShouldAccept::No
        } else {
            ShouldAccept::Yes
        }
    }

    fn on_request_start(
        &self,
        _store: StoreContextMut<'_, HostState>,
        ticket: Arc<Ticket>,
        _task: GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + Sync>> {
        // Dropped, and so unregistered, when the request answers in time.
        let running = self.clock.start(ticket, Instant::now());
        let timeout = self.request_timeout;
        Box::pin(async move {
            tokio::time::sleep(timeout).await;
            running.expire();
        })
    }

    fn drop(&self, store: Store<HostState>, result: wasmtime::Result<()>) {
        let (component, instance) = (&self.component, self.instance);
        match result {
            Ok(()) => tracing::debug!(%component, instance, "instance retired"),
            Err(_) if self.clock.timed_out() => tracing::warn!(
                %component,
                instance,
                timeout_secs = self.clock.timeout().as_secs_f64(),
                "request timed out: component instance stopped"
            ),
            // wasmtime-wasi-http reports a worker dropped before it finished
            // as "worker panicked"; at shutdown that is the drain giving up.
            Err(e) if self.lifecycle.is_shutting_down() => tracing::warn!(
                %component,
                instance,
                error = %format!("{e:#}"),
                "component instance stopped at shutdown with work in flight"
            ),
            Err(e) => tracing::error!(
                %component,
                instance,
                error = %format!("{e:#}"),
                "component instance failed"
            ),
        }
        drop(store);
    }
}

/// Outbound HTTP for one instance: the allow-list, and routing of requests
/// to the application itself without leaving the process.
pub struct OutboundHooks {
    component: String,
    allowed: AllowedHosts,
    runtime: Weak<Runtime>,
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                ),
                wasmtime_wasi_http::Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> SendFuture {
        let uri = request.uri().clone();
        let destination = self.allowed.check(&uri);
        let component = self.component.clone();
        let runtime = self.runtime.clone();
        Box::new(async move {
            let done: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send> =
                Box::new(async { Ok(()) });
            match destination {
                None => {
                    tracing::warn!(
                        component = %component,
                        url = %uri,
                        "outbound request denied: destination not in allowed_outbound_hosts"
                    );
                    Err(wasmtime_wasi_http::Error::HttpRequestDenied)
                }
                Some(Destination::Remote) => {
                    let (resp, io) =
                        wasmtime_wasi_http::default_send_request(request, options).await?;
                    Ok((resp.map(BodyExt::boxed_unsync), Box::new(io) as Box<_>))
                }
                Some(Destination::ToSelf) => {
                    let rt = runtime
                        .upgrade()
                        .ok_or(wasmtime_wasi_http::Error::DestinationUnavailable)?;
                    let mut request = relative(request);
                    let id = RequestId::adopt(request.headers_mut());
                    let path = request.uri().path().to_owned();
                    match rt.handle(request, Origin::Internal).await {
                        Ok(Some((_, _, resp))) => Ok((resp, done)),
                        Ok(None) => Ok((crate::answer::no_route(&path, &id, false), done)),
                        Err(e) => Err(wasmtime_wasi_http::Error::InternalError(Some(
                            e.to_string(),
                        ))),
                    }
                }
                Some(Destination::Component(target)) => {
                    let rt = runtime
                        .upgrade()
                        .ok_or(wasmtime_wasi_http::Error::DestinationUnavailable)?;
                    if !rt.app().components.contains_key(&target) {
                        return Err(wasmtime_wasi_http::Error::DestinationNotFound);
                    }
                    let mut request = relative(request);
                    request.headers_mut().remove(http::header::HOST);
                    rt.handle_component(&target, request)
                        .await
                        .map(|resp| (resp, done))
                        .map_err(|e| wasmtime_wasi_http::Error::InternalError(Some(e.to_string())))
                }
            }
        })
    }
}

/// Strips scheme and authority so the request routes like an incoming one.
fn relative(mut req: http::Request<WasiBody>) -> http::Request<WasiBody> {
    let pq = req
        .uri()
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());
    if let Ok(uri) = pq.parse() {
        *req.uri_mut() = uri;
    }
    req
}

/// The body of a host-generated response.
pub fn full_body(bytes: impl Into<Bytes>) -> WasiBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}
