//! `spindle-bench ui`: how long the dashboard's first page takes to load
//! from the host: the page and the three files it names (script, style
//! sheet, icon), fetched one after another on a new connection as a
//! browser with an empty cache does, measured many times. The baseline is
//! a native axum server answering the same bytes, in the same run.
//!
//! The goal (issue 13) is under 200 ms for the first page on this machine;
//! the figures are printed, with their ratio to native, not asserted.

use std::time::Instant;

use spindle_tests::{HostBuilder, root};

/// The page's own files, by the address the page names them with.
async fn assets(
    client: &reqwest::Client,
    base: &str,
) -> anyhow::Result<Vec<(String, String, Vec<u8>)>> {
    let page = client
        .get(format!("{base}/ui/"))
        .send()
        .await?
        .text()
        .await?;
    let mut out = vec![(
        "/ui/".to_owned(),
        "text/html; charset=utf-8".to_owned(),
        page.clone().into_bytes(),
    )];
    for marker in ["src=\"/ui/assets/", "href=\"/ui/assets/"] {
        for (i, _) in page.match_indices(marker) {
            let start = i + marker.find('/').unwrap_or(0);
            let end = start + page[start..].find('"').unwrap_or(0);
            let path = page[start..end].to_owned();
            if out.iter().any(|(p, _, _)| *p == path) {
                continue;
            }
            let resp = client
                .get(format!("{base}{path}"))
                .send()
                .await?
                .error_for_status()?;
            let ct = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/octet-stream")
                .to_owned();
            out.push((path, ct, resp.bytes().await?.to_vec()));
        }
    }
    anyhow::ensure!(
        out.len() >= 3,
        "the page names its script and style sheet: {out:?}"
    );
    Ok(out)
}

/// Milliseconds for each of `n` first-page loads of `paths` from `base`.
async fn loads(base: &str, paths: &[String], n: usize) -> anyhow::Result<Vec<f64>> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        // A new client: a new connection and no cache, like a first visit.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()?;
        let t = Instant::now();
        for p in paths {
            let resp = client
                .get(format!("{base}{p}"))
                .send()
                .await?
                .error_for_status()?;
            resp.bytes().await?;
        }
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

pub async fn run(n: usize) -> anyhow::Result<()> {
    let host = HostBuilder::new(root().join("spin.toml")).release().start();
    let base = host.url("").trim_end_matches('/').to_owned();
    let files = assets(&reqwest::Client::new(), &base).await?;
    let bytes: usize = files.iter().map(|(_, _, b)| b.len()).sum();

    let mut app = axum::Router::new();
    for (path, ct, body) in files.clone() {
        let route = path.split('?').next().unwrap_or(&path).to_owned();
        app = app.route(
            &route,
            axum::routing::get(move || {
                let (ct, body) = (ct.clone(), body.clone());
                async move { ([("content-type", ct)], body) }
            }),
        );
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let native = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let paths: Vec<String> = files.iter().map(|(p, _, _)| p.clone()).collect();
    eprintln!(
        "the first page: {} files, {bytes} bytes; {n} loads each from native axum and the host...",
        paths.len()
    );
    // Warm up both (the host's instances, both servers' code paths).
    loads(&native, &paths, 20).await?;
    loads(&base, &paths, 20).await?;
    let started = Instant::now();
    let baseline = loads(&native, &paths, n).await?;
    let hosted = loads(&base, &paths, n).await?;
    println!("| server | first page p50 ms | p99 ms | max ms |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, t) in [
        ("native axum, same bytes (baseline)", &baseline),
        ("spindle host, /ui/ and its assets", &hosted),
    ] {
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} |",
            pct(t, 0.5),
            pct(t, 0.99),
            t[t.len() - 1]
        );
    }
    println!();
    println!(
        "ratio (host / baseline): p50 {:.2}x, p99 {:.2}x; the goal is a first page under 200 ms: p99 {:.1} ms ({:.1} s measured)",
        pct(&hosted, 0.5) / pct(&baseline, 0.5),
        pct(&hosted, 0.99) / pct(&baseline, 0.99),
        pct(&hosted, 0.99),
        started.elapsed().as_secs_f64(),
    );
    drop(host);
    Ok(())
}
