//! Conformance probe: one endpoint per host behaviour under test. Each answers
//! JSON describing exactly what the component observed, so the tests assert
//! on the host's behaviour as a component sees it.

use spin_sdk::http::{EmptyBody, Request, body::IncomingBodyExt};
use spin_sdk::http_service;
use spindle_spin::http::{Response, json};
use spindle_spin::store::{Kv, Store, StoreExt, UpdateError};

mod config_bindings {
    #![allow(missing_docs, clippy::all, unsafe_code)]
    spin_sdk::wit_bindgen::generate!({
        runtime_path: "spin_sdk::wit_bindgen::rt",
        path: "../../wit",
        world: "spindle:platform/config",
        generate_all,
    });
}

static HITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[http_service]
async fn handle(req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    match segs.as_slice() {
        ["probe", "var", name] => variable(name).await,
        ["probe", "open", label] => open(label).await,
        ["probe", "config", name] => {
            use config_bindings::wasi::config::store;
            match store::get(name) {
                Ok(v) => json(200, &serde_json::json!({"value": v})),
                Err(e) => json(500, &serde_json::json!({"error": format!("{e:?}")})),
            }
        }
        ["probe", "config-all"] => match config_bindings::wasi::config::store::get_all() {
            Ok(all) => json(
                200,
                &serde_json::json!({"values": all.into_iter().collect::<std::collections::BTreeMap<_, _>>()}),
            ),
            Err(e) => json(500, &serde_json::json!({"error": format!("{e:?}")})),
        },
        ["probe", "incr", key] => {
            // `?store=<label>` picks another store than `default`.
            let label = query
                .split('&')
                .find_map(|p| p.strip_prefix("store="))
                .unwrap_or("default");
            let kv = Kv::open(label).await.unwrap();
            json(
                200,
                &serde_json::json!({"value": kv.increment(key, 1).await.unwrap()}),
            )
        }
        ["probe", "cas", key] => cas_increment(key).await,
        ["probe", "kv", key] => {
            let kv = Kv::open("default").await.unwrap();
            let v = kv.get_raw(key).await.unwrap();
            json(
                200,
                &serde_json::json!({"value": v.map(|b| String::from_utf8_lossy(&b).into_owned())}),
            )
        }
        ["probe", "outbound"] => outbound(&query).await,
        ["probe", "log", msg] => {
            println!("probe says {msg}");
            eprintln!("probe warns {msg}");
            json(200, &serde_json::json!({"logged": msg}))
        }
        ["probe", "instance-hits"] => {
            // Test-only: counts requests this instance has served, so the
            // tests can see instance reuse. Real components keep no globals.
            let n = HITS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            json(200, &serde_json::json!({"hits": n}))
        }
        ["probe", "env", name] => {
            json(200, &serde_json::json!({"value": std::env::var(name).ok()}))
        }
        ["probe", "body"] => {
            let n = req.into_body().bytes().await.map(|b| b.len()).unwrap_or(0);
            json(200, &serde_json::json!({"received": n}))
        }
        ["probe", "spin"] => spin_forever(),
        ["probe", "trap"] => panic!("the probe traps on purpose"),
        ["probe", "burn", rounds] => burn(rounds.parse().unwrap_or(0)),
        ["probe", "slow-writes"] => slow_writes(&query).await,
        _ => headers(&req),
    }
}

/// A component stuck in a CPU loop: only the host's request timeout ends it.
/// `black_box` keeps the optimiser from proving the loop useless.
fn spin_forever() -> ! {
    let mut x = 0u64;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

/// Bounded CPU work (a linear congruential walk), for measuring what the
/// host's interruption checks cost.
fn burn(rounds: u64) -> Response {
    let mut x = 0u64;
    for _ in 0..rounds {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
    json(200, &serde_json::json!({"rounds": rounds, "result": x}))
}

/// `n` writes of `<key>.<i>` = `i`, `sleep_ms` apart, like a transition that
/// stores several documents: the tests drop the client half-way and look at
/// what was written.
async fn slow_writes(query: &str) -> Response {
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    };
    let key = param("key").unwrap_or("slow").to_owned();
    let n: u32 = param("n").and_then(|v| v.parse().ok()).unwrap_or(5);
    let sleep_ms: u64 = param("sleep_ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let kv = match Kv::open("default").await {
        Ok(kv) => kv,
        Err(e) => return json(503, &serde_json::json!({"error": e.to_string()})),
    };
    for i in 1..=n {
        if i > 1 {
            spin_sdk::wasip3::clocks::monotonic_clock::wait_for(sleep_ms * 1_000_000).await;
        }
        if let Err(e) = kv.set(&format!("{key}.{i}"), &i).await {
            return json(
                503,
                &serde_json::json!({"error": e.to_string(), "written": i - 1}),
            );
        }
    }
    json(200, &serde_json::json!({"written": n}))
}

fn headers(req: &Request) -> Response {
    let mut seen = serde_json::Map::new();
    for (k, v) in req.headers() {
        if k.as_str().starts_with("spin-")
            || matches!(k.as_str(), "host" | "connection" | "x-request-id")
        {
            seen.insert(k.as_str().to_owned(), v.to_str().unwrap_or("").into());
        }
    }
    json(
        200,
        &serde_json::json!({"uri": req.uri().to_string(), "method": req.method().as_str(), "headers": seen}),
    )
}

async fn variable(name: &str) -> Response {
    match spin_sdk::variables::get(name).await {
        Ok(v) => json(200, &serde_json::json!({"value": v})),
        Err(e) => json(404, &serde_json::json!({"error": format!("{e:?}")})),
    }
}

async fn open(label: &str) -> Response {
    match spin_sdk::key_value::Store::open(label).await {
        Ok(_) => json(200, &serde_json::json!({"result": "ok"})),
        Err(e) => {
            let kind = match e {
                spin_sdk::key_value::Error::AccessDenied => "access-denied",
                spin_sdk::key_value::Error::NoSuchStore => "no-such-store",
                spin_sdk::key_value::Error::StoreTableFull => "store-table-full",
                spin_sdk::key_value::Error::Other(_) => "other",
            };
            json(403, &serde_json::json!({"error": kind}))
        }
    }
}

async fn cas_increment(key: &str) -> Response {
    let kv = Kv::open("default").await.unwrap();
    match kv
        .update::<u64, std::convert::Infallible>(key, |n| Ok(Some(n.unwrap_or(0) + 1)))
        .await
    {
        Ok(v) => json(200, &serde_json::json!({"value": v})),
        Err(UpdateError::Store(e)) => json(503, &serde_json::json!({"error": e.to_string()})),
        Err(UpdateError::Rejected(never)) => match never {},
    }
}

async fn outbound(query: &str) -> Response {
    let url = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("url="))
        .map(|u| u.replace("%3A", ":").replace("%2F", "/"))
        .unwrap_or_default();
    let req = match http::Request::get(&url).body(EmptyBody::new()) {
        Ok(r) => r,
        Err(e) => return json(400, &serde_json::json!({"error": e.to_string()})),
    };
    match spin_sdk::http::send(req).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .bytes()
                .await
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            json(200, &serde_json::json!({"status": status, "body": body}))
        }
        Err(e) => json(502, &serde_json::json!({"error": format!("{e:?}")})),
    }
}
