//! Adapters between Spindle's Spin components and the Spin runtime.
//!
//! Components stay thin: they parse, authenticate, call the core and answer.
//! This crate gives them typed access to what Spin provides — the key-value
//! store with its atomics, variables — and the HTTP plumbing every component
//! shares (problem+json errors, bounded bodies, JSON answers). It holds no
//! domain logic; that lives in `spindle-core`.
#![deny(missing_docs)]

pub mod engine;
pub mod http;
pub mod store;

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
