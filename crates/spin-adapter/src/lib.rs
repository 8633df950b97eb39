//! Adapters between Spindle's Spin components and the Spin runtime.
//!
//! Components stay thin: they parse, authenticate, call the core and answer.
//! This crate gives them typed access to what Spin provides — the key-value
//! store with its atomics, variables — and the HTTP plumbing every component
//! shares (problem+json errors, bounded bodies, JSON answers). It holds no
//! domain logic; that lives in `spindle-core`.
#![deny(missing_docs)]

pub mod auth;
pub mod context;
pub mod engine;
pub mod http;
pub mod store;

pub use context::serve;

mod generated {
    #![allow(missing_docs, clippy::all, unsafe_code)]
    spin_sdk::wit_bindgen::generate!({
        runtime_path: "spin_sdk::wit_bindgen::rt",
        path: "../../wit",
        world: "spindle:platform/store-atomics",
        generate_all,
    });
}

/// Milliseconds since the Unix epoch, from the host's wall clock.
///
/// The core never reads a clock; components read it here and pass it in.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `N` bytes from the host's secure random source (`wasi:random`), or a
/// 500 if the host has none: a secret must never fall back to anything
/// predictable.
pub fn random<const N: usize>() -> Result<[u8; N], http::Problem> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|e| {
        context::log(&format!("no secure random source: {e}"));
        http::Problem::internal("no secure random source")
    })?;
    Ok(buf)
}
