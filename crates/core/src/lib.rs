//! Spindle's pure domain.
//!
//! This crate holds the types and rules of Spindle — agents, workflows, step
//! templates, the job protocol and the run state machine — with no I/O at all:
//! no clock, no randomness, no store, no HTTP. Time and ids are passed in by the
//! caller, so everything here is deterministic, builds for both native and
//! `wasm32-wasip2`, and is tested natively.
//!
//! It must not depend on `spin-sdk`, `wasmtime` or anything that performs I/O;
//! adapters at the edge (the Spin components, the local host, the worker)
//! translate between this crate and the outside world.
#![deny(missing_docs)]

pub mod agent;
pub mod approval;
pub mod audit;
pub mod breaker;
pub mod error;
pub mod exec_policy;
pub mod expr;
pub mod ids;
pub mod job;
pub mod keys;
pub mod metrics;
pub mod problem;
pub mod retry;
pub mod risk;
pub mod run;
pub mod schedule;
pub mod schema;
pub mod secret;
pub mod sign;
pub mod source;
pub mod subscription;
pub mod template;
pub mod webhook;
pub mod workflow;

pub use agent::{Agent, AgentSpec, RiskLevel};
pub use error::{FieldError, ValidationError};
pub use run::{Effect, Event, Run, RunStatus, StepStatus, Timer, Transition};
pub use workflow::{Workflow, WorkflowSpec};
