//! `spindle-bench`: requests per second and p50/p99 latency for one small GET
//! route through the local host, against a native axum server returning the
//! same body, measured in the same run and reported as ratios.
//!
//! With `trigger`, it measures the trigger path instead (see `trigger.rs`);
//! with `webhook`, signed GitHub deliveries through the host against a
//! native server running the same engine (see `webhook.rs`); with `ui`,
//! the dashboard's first page (see `ui.rs`).
//!
//! Usage: spindle-bench [--secs N] [--connections N]
//!        spindle-bench trigger [--runs N] [--fill N] [--clients N]
//!        spindle-bench webhook [--deliveries N] [--fill N] [--clients N]
//!        spindle-bench ui [--loads N]
//! (run through `scripts/bench`, which builds everything in release mode).

mod trigger;
mod ui;
mod webhook;

use std::time::{Duration, Instant};

use spindle_tests::{HostBuilder, root};

struct Figures {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
}

async fn load(url: String, secs: u64, connections: usize) -> Figures {
    // Warm up: instances, connection pools, caches.
    let warm = reqwest::Client::new();
    for _ in 0..200 {
        let _ = warm
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status());
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .unwrap();
            let mut lat = Vec::new();
            let mut errors = 0;
            while Instant::now() < deadline {
                let t = Instant::now();
                match client.get(&url).send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        lat.push(t.elapsed());
                    }
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    };
    Figures {
        rps: all.len() as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        errors,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut secs = 5;
    let mut connections = 16;
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("trigger") {
        args.next();
        return trigger_main(args).await;
    }
    if args.peek().map(String::as_str) == Some("ui") {
        args.next();
        let mut n = 500;
        while let Some(a) = args.next() {
            match a.as_str() {
                "--loads" => n = args.next().unwrap_or_default().parse()?,
                other => {
                    anyhow::bail!("unknown argument {other:?}; usage: spindle-bench ui [--loads N]")
                }
            }
        }
        return ui::run(n.max(1)).await;
    }
    if args.peek().map(String::as_str) == Some("webhook") {
        args.next();
        return webhook_main(args).await;
    }
    while let Some(a) = args.next() {
        match a.as_str() {
            "--secs" => secs = args.next().unwrap_or_default().parse()?,
            "--connections" => connections = args.next().unwrap_or_default().parse()?,
            other => anyhow::bail!(
                "unknown argument {other:?}; usage: spindle-bench [--secs N] [--connections N]"
            ),
        }
    }

    // Baseline: the same JSON body `/health/live` returns.
    let app = axum::Router::new().route(
        "/health/live",
        axum::routing::get(|| async {
            ([("content-type", "application/json")], r#"{"status":"ok"}"#)
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let native = format!("http://{}/health/live", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let host = HostBuilder::new(root().join("spin.toml")).release().start();
    let spindle = host.url("/health/live");

    eprintln!("measuring native axum ({secs} s, {connections} connections)...");
    let base = load(native, secs, connections).await;
    eprintln!("measuring spindle host ({secs} s, {connections} connections)...");
    let wasm = load(spindle, secs, connections).await;

    println!("| server | req/s | p50 ms | p99 ms | errors |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (name, f) in [
        ("native axum (baseline)", &base),
        ("spindle host, GET /health/live", &wasm),
    ] {
        println!(
            "| {name} | {:.0} | {:.3} | {:.3} | {} |",
            f.rps, f.p50_ms, f.p99_ms, f.errors
        );
    }
    println!();
    println!(
        "ratios (host / baseline): throughput {:.2}x, p50 {:.2}x, p99 {:.2}x",
        wasm.rps / base.rps,
        wasm.p50_ms / base.p50_ms,
        wasm.p99_ms / base.p99_ms
    );
    drop(host);
    Ok(())
}

async fn trigger_main(mut args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let (mut runs, mut fill, mut clients) = (1_000, 20_000, 8);
    while let Some(a) = args.next() {
        let mut value =
            || -> anyhow::Result<usize> { Ok(args.next().unwrap_or_default().parse()?) };
        match a.as_str() {
            "--runs" => runs = value()?,
            "--fill" => fill = value()?,
            "--clients" => clients = value()?,
            other => anyhow::bail!(
                "unknown argument {other:?}; usage: spindle-bench trigger [--runs N] [--fill N] [--clients N]"
            ),
        }
    }
    let (first, last) = trigger::bench(runs, fill, clients).await?;
    println!("| store | runs | runs/s | errors |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| empty | {} | {:.0} | {} |",
        first.runs,
        first.per_sec(),
        first.errors
    );
    println!(
        "| after {fill} runs | {} | {:.0} | {} |",
        last.runs,
        last.per_sec(),
        last.errors
    );
    println!();
    println!(
        "ratio (after {fill} / empty): {:.2}x",
        last.per_sec() / first.per_sec()
    );
    Ok(())
}

async fn webhook_main(mut args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let (mut deliveries, mut fill, mut clients) = (1_000, 10_000, 8);
    while let Some(a) = args.next() {
        let mut value =
            || -> anyhow::Result<usize> { Ok(args.next().unwrap_or_default().parse()?) };
        match a.as_str() {
            "--deliveries" => deliveries = value()?,
            "--fill" => fill = value()?,
            "--clients" => clients = value()?,
            other => anyhow::bail!(
                "unknown argument {other:?}; usage: spindle-bench webhook [--deliveries N] [--fill N] [--clients N]"
            ),
        }
    }
    let [host_first, host_last, native_first, native_last] =
        webhook::bench(deliveries, fill, clients).await?;
    println!("| server | store | deliveries | deliveries/s | errors |");
    println!("| --- | --- | ---: | ---: | ---: |");
    for (server, store, r) in [
        ("host", "empty", &host_first),
        ("host", &format!("after {fill}") as &str, &host_last),
        ("native", "empty", &native_first),
        ("native", &format!("after {fill}") as &str, &native_last),
    ] {
        println!(
            "| {server} | {store} | {} | {:.0} | {} |",
            r.runs,
            r.per_sec(),
            r.errors
        );
    }
    println!();
    println!(
        "ratios: host / native {:.2}x (empty), {:.2}x (after {fill}); host after {fill} / empty {:.2}x",
        host_first.per_sec() / native_first.per_sec(),
        host_last.per_sec() / native_last.per_sec(),
        host_last.per_sec() / host_first.per_sec()
    );
    Ok(())
}
