//! Spindle's integration tests: the real `spindle` host, real Wasm
//! components, a real SQLite file and real HTTP on loopback.
//!
//! - `platform`: the shipped application (`spin.toml` at the repository root).
//! - `conformance`: the host behaves like Spin wherever a component can tell,
//!   observed through the test-only probe component.
//! - `manifests`: every bad manifest under `tests/scenarios/bad-manifests/`
//!   stops start-up with the message in its `expected.txt`.
//! - `alerting`: the Prometheus rules and the Alertmanager example under
//!   `deploy/`, checked and unit-tested by promtool and amtool.

mod access;
mod agents;
mod alerting;
mod api_docs;
mod approvals;
mod backup;
mod breaker;
mod conformance;
mod engine;
mod flows;
mod hostile;
mod logs;
mod manifests;
mod metrics;
mod openapi;
mod platform;
mod policy;
mod problems;
mod registry;
mod request_lifetime;
mod soak;
mod stores;
mod ui;
mod webhooks;
mod worker;
