//! Spindle's local host: runs a Spin application — the same `spin.toml` and
//! the same `.wasm` files `spin up` runs — on wasmtime, where the `spin` CLI is
//! not installed.
//!
//! It implements the parts of Spin a Spindle component can observe: HTTP
//! routing and the request headers Spin adds, `spin:key-value` and
//! `wasi:keyvalue` on one SQLite file in Spin's layout, `spin:variables` and
//! `wasi:config`, outbound HTTP restricted by `allowed_outbound_hosts`, and
//! component logs under `.spin/logs/` (forwarded to the host's own log as
//! well). It holds no application state of its own: everything a component
//! keeps lives in the key-value store.
#![deny(missing_docs)]

pub mod answer;
pub mod backup;
pub mod bindings;
pub mod deadline;
pub mod host_impl;
pub mod kv;
pub mod manifest;
pub mod outbound;
pub mod routes;
pub mod runtime;
pub mod runtime_config;
pub mod server;
pub mod stdio;
pub mod ticker;
pub mod variables;
