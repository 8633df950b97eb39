//! `spindle`: the command line of Spindle's local host.

mod access;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use spindle_host::manifest::App;
use spindle_host::runtime::{ReuseConfig, Runtime, RuntimeOptions};
use spindle_host::server;

#[derive(Parser)]
#[command(
    name = "spindle",
    version,
    about = "Spindle: an edge-native orchestrator for automation agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a Spin application on the local host, as `spin up` would.
    Up(UpArgs),
    /// Validate a manifest and print its routes without serving.
    Check {
        /// The manifest.
        #[arg(short = 'f', long = "from", default_value = "spin.toml")]
        manifest: PathBuf,
        /// Spin's runtime configuration file: the store labels it defines.
        #[arg(long, env = "SPINDLE_RUNTIME_CONFIG_FILE")]
        runtime_config_file: Option<PathBuf>,
    },
    /// Create, list and revoke API keys of a running app.
    #[command(subcommand)]
    Keys(access::KeysCommand),
    /// Mint a JWT bearer token (HS256, under the app's jwt_secret) for local use.
    Token(access::TokenArgs),
    /// Write a consistent backup of the key-value store file (every store
    /// label in it: all of them unless a runtime configuration puts some in
    /// other files) to a file, or to stdout with `-o -`.
    Export {
        /// The manifest, whose `.spin` directory holds the store.
        #[arg(short = 'f', long = "from", default_value = "spin.toml")]
        manifest: PathBuf,
        /// Where the store lives (default: `.spin` beside the manifest).
        #[arg(long, env = "SPINDLE_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// Spin's runtime configuration file: its `default` store is the
        /// one read or written.
        #[arg(long, env = "SPINDLE_RUNTIME_CONFIG_FILE")]
        runtime_config_file: Option<PathBuf>,
        /// The backup file to write.
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
    },
    /// Restore a backup into an empty key-value store. Stop the app that
    /// uses the store first.
    Import {
        /// The backup file.
        file: PathBuf,
        /// The manifest, whose `.spin` directory holds the store.
        #[arg(short = 'f', long = "from", default_value = "spin.toml")]
        manifest: PathBuf,
        /// Where the store lives (default: `.spin` beside the manifest).
        #[arg(long, env = "SPINDLE_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// Spin's runtime configuration file: its `default` store is the
        /// one read or written.
        #[arg(long, env = "SPINDLE_RUNTIME_CONFIG_FILE")]
        runtime_config_file: Option<PathBuf>,
        /// Replace every entry of a store that is not empty.
        #[arg(long)]
        overwrite: bool,
    },
}

/// The file of the `default` store: the runtime configuration's, else the
/// one in `--state-dir`, or in `.spin` beside the manifest.
fn store_path(
    manifest: &std::path::Path,
    state_dir: Option<PathBuf>,
    runtime_config: Option<&std::path::Path>,
) -> anyhow::Result<PathBuf> {
    let state_dir = state_dir.unwrap_or_else(|| {
        manifest
            .parent()
            .map_or_else(|| PathBuf::from(".spin"), |d| d.join(".spin"))
    });
    let stores = stores(runtime_config, &state_dir)?;
    match stores
        .labels
        .get(spindle_host::runtime_config::DEFAULT_LABEL)
    {
        Some(spindle_host::runtime_config::StoreLocation::Sqlite(path)) => {
            let elsewhere: Vec<&str> = stores
                .labels
                .iter()
                .filter(|(_, l)| !matches!(l, spindle_host::runtime_config::StoreLocation::Sqlite(p) if p == path))
                .map(|(label, _)| label.as_str())
                .collect();
            if !elsewhere.is_empty() {
                eprintln!(
                    "note: only {} is read or written; the runtime configuration keeps {} elsewhere (back those up on their own)",
                    path.display(),
                    elsewhere.join(", ")
                );
            }
            Ok(path.clone())
        }
        _ => anyhow::bail!(
            "the default store is kept in memory (no `path` in the runtime configuration): there is no file to back up or restore"
        ),
    }
}

/// The stores of the runtime configuration file, if any, with `default` in
/// `state_dir` unless it says otherwise.
fn stores(
    runtime_config: Option<&std::path::Path>,
    state_dir: &std::path::Path,
) -> anyhow::Result<spindle_host::runtime_config::Stores> {
    Ok(match runtime_config {
        Some(file) => spindle_host::runtime_config::Stores::load(file, state_dir)?,
        None => spindle_host::runtime_config::Stores::default_in(state_dir),
    })
}

#[derive(Parser)]
struct UpArgs {
    /// The manifest.
    #[arg(short = 'f', long = "from", default_value = "spin.toml")]
    manifest: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3000", env = "SPINDLE_LISTEN")]
    listen: SocketAddr,
    /// Where the key-value database and component logs live (default:
    /// `.spin` beside the manifest, where Spin keeps them).
    #[arg(long, env = "SPINDLE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Spin's runtime configuration file (`[key_value_store.<label>]`
    /// sections), the same file `spin up --runtime-config-file` takes.
    #[arg(long, env = "SPINDLE_RUNTIME_CONFIG_FILE")]
    runtime_config_file: Option<PathBuf>,
    /// Use a fresh component instance for every request.
    #[arg(long)]
    instance_per_request: bool,
    /// Requests one instance serves before it is retired.
    #[arg(long, default_value_t = ReuseConfig::SPIN_MAX_REQUESTS)]
    max_instance_reuse_count: usize,
    /// Requests one instance serves concurrently.
    #[arg(long, default_value_t = ReuseConfig::SPIN_MAX_CONCURRENT)]
    max_instance_concurrent_reuse_count: usize,
    /// Longest a request may run inside a component, in seconds.
    #[arg(long, default_value_t = 60)]
    request_timeout_secs: u64,
    /// Where compiled components are cached between starts (default: the
    /// user's cache directory, `$XDG_CACHE_HOME/spindle` or
    /// `~/.cache/spindle`).
    #[arg(long, env = "SPINDLE_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Compile every component at every start.
    #[arg(long)]
    no_cache: bool,
    /// How often to POST the tick route (timers: retries, leases,
    /// deadlines), in milliseconds; 0 turns ticking off.
    #[arg(long, default_value_t = 1000, env = "SPINDLE_TICK_INTERVAL_MS")]
    tick_interval_ms: u64,
    /// The route the host ticks.
    #[arg(long, default_value = "/internal/tick")]
    tick_path: String,
    /// How the log on stderr looks: `json` (one object per line) or
    /// `text` (for people at a terminal).
    #[arg(
        long,
        default_value_t,
        value_name = "json|text",
        env = "SPINDLE_LOG_FORMAT"
    )]
    log_format: spindle_log::Format,
}

fn load(manifest: &std::path::Path) -> anyhow::Result<App> {
    Ok(App::load(manifest, &|name| std::env::var(name).ok())?)
}

fn main() -> std::process::ExitCode {
    // One line per failure, with its causes; no backtrace even where
    // RUST_BACKTRACE is set: these are a user's errors, not Spindle's bugs.
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Check {
            manifest,
            runtime_config_file,
        } => {
            let app = load(&manifest)?;
            // The labels are what matters here, not where the stores live.
            let stores = stores(runtime_config_file.as_deref(), &app.base_dir.join(".spin"))?;
            app.check_stores(&manifest, &|label| stores.defines(label))?;
            println!(
                "{}: ok ({} components)",
                manifest.display(),
                app.components.len()
            );
            for r in app.router.routes() {
                println!("  {} -> {}", r.raw, r.component);
            }
            Ok(())
        }
        Command::Keys(cmd) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(access::keys(cmd)),
        Command::Token(args) => access::token(args),
        Command::Export {
            manifest,
            state_dir,
            runtime_config_file,
            output,
        } => {
            let db = store_path(&manifest, state_dir, runtime_config_file.as_deref())?;
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let summary = if output.as_os_str() == "-" {
                let stdout = std::io::stdout();
                spindle_host::backup::export(&db, &mut stdout.lock(), now_ms)?
            } else {
                // Written beside the target and renamed: a failed export
                // never leaves a half file under the name asked for.
                let partial = output.with_extension("partial");
                let file = std::fs::File::create(&partial)
                    .with_context(|| format!("cannot create {}", partial.display()))?;
                let mut out = std::io::BufWriter::new(file);
                let summary = spindle_host::backup::export(&db, &mut out, now_ms);
                drop(out);
                match summary {
                    Ok(s) => {
                        std::fs::rename(&partial, &output)?;
                        s
                    }
                    Err(e) => {
                        let _ = std::fs::remove_file(&partial);
                        return Err(e.into());
                    }
                }
            };
            eprintln!(
                "exported {} entries ({} store(s): {}) from {} to {}",
                summary.entries,
                summary.stores.len(),
                summary.stores.join(", "),
                db.display(),
                output.display()
            );
            Ok(())
        }
        Command::Import {
            file,
            manifest,
            state_dir,
            runtime_config_file,
            overwrite,
        } => {
            let db = store_path(&manifest, state_dir, runtime_config_file.as_deref())?;
            let input = std::fs::File::open(&file)
                .with_context(|| format!("cannot open {}", file.display()))?;
            let summary =
                spindle_host::backup::import(&db, &mut std::io::BufReader::new(input), overwrite)
                    .with_context(|| format!("{} was not imported", file.display()))?;
            eprintln!(
                "imported {} entries ({} store(s)) into {}{}",
                summary.entries,
                summary.stores.len(),
                db.display(),
                if summary.replaced > 0 {
                    format!(", replacing {} entries", summary.replaced)
                } else {
                    String::new()
                }
            );
            Ok(())
        }
        Command::Up(args) => {
            spindle_log::init(args.log_format, "info,wasmtime=warn,cranelift=warn");
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(up(args))
        }
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("spindle"))
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    let app = load(&args.manifest)?;
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| app.base_dir.join(".spin"));
    let stores = stores(args.runtime_config_file.as_deref(), &state_dir)?;
    app.check_stores(&args.manifest, &|label| stores.defines(label))?;
    let reuse = if args.instance_per_request {
        ReuseConfig::per_request()
    } else {
        ReuseConfig {
            max_requests: args.max_instance_reuse_count.max(1),
            max_concurrent: args.max_instance_concurrent_reuse_count.max(1),
            ..ReuseConfig::default()
        }
    };
    let opts = RuntimeOptions {
        reuse,
        state_dir: state_dir.clone(),
        stores: stores.clone(),
        request_timeout: Duration::from_secs(args.request_timeout_secs.max(1)),
        cache_dir: if args.no_cache {
            None
        } else {
            args.cache_dir.clone().or_else(default_cache_dir)
        },
    };
    let listener = server::bind(args.listen)?;
    let started = std::time::Instant::now();
    let rt = Runtime::new(app, &opts).context("cannot start the application")?;
    let addr = listener.local_addr()?;
    tracing::info!(
        components = rt.app().components.len(),
        ms = started.elapsed().as_millis() as u64,
        state_dir = %state_dir.display(),
        "components compiled and pre-instantiated"
    );
    println!(
        "Logging component stdio to \"{}\"",
        state_dir.join("logs").display()
    );
    // Where each store lives (Spin prints the first line only).
    for (label, location) in &stores.labels {
        match location {
            spindle_host::runtime_config::StoreLocation::Sqlite(path) if label == "default" => {
                println!("Storing default key-value data to \"{}\"", path.display())
            }
            spindle_host::runtime_config::StoreLocation::Sqlite(path) => {
                println!(
                    "Storing key-value data for {label:?} to \"{}\"",
                    path.display()
                )
            }
            spindle_host::runtime_config::StoreLocation::Memory if label == "default" => {
                println!("Storing default key-value data to a temporary in-memory store.")
            }
            spindle_host::runtime_config::StoreLocation::Memory => {
                println!("Storing key-value data for {label:?} to a temporary in-memory store.")
            }
        }
    }
    println!();
    print!("{}", server::banner(&rt, addr));
    use std::io::Write as _;
    std::io::stdout().flush().ok();
    if args.tick_interval_ms > 0 {
        match spindle_host::ticker::check(&rt, &args.tick_path) {
            Ok(()) => {
                tracing::info!(path = %args.tick_path, every_ms = args.tick_interval_ms, "ticking");
                tokio::spawn(spindle_host::ticker::run(
                    rt.clone(),
                    args.tick_path.clone(),
                    Duration::from_millis(args.tick_interval_ms),
                ));
            }
            Err(why) => tracing::info!(path = %args.tick_path, "not ticking: {why}"),
        }
    }
    server::serve(
        rt,
        listener,
        server::shutdown_signal(),
        Duration::from_secs(10),
    )
    .await
}
