//! Spindle's integration tests: the real `spindle` host, real Wasm
//! components, a real SQLite file and real HTTP on loopback.
//!
//! - `platform`: the shipped application (`spin.toml` at the repository root).
//! - `conformance`: the host behaves like Spin wherever a component can tell,
//!   observed through the test-only probe component.
//! - `manifests`: every bad manifest under `tests/scenarios/bad-manifests/`
//!   stops start-up with the message in its `expected.txt`.

mod access;
mod agents;
mod approvals;
mod backup;
mod conformance;
mod engine;
mod flows;
mod hostile;
mod logs;
mod manifests;
mod openapi;
mod platform;
mod policy;
mod problems;
mod registry;
mod request_lifetime;
mod soak;
mod webhooks;
mod worker;
