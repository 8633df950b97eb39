//! Who may do what: API keys, JWT bearer tokens, roles, rate limits and the
//! strength of configured secrets.
//!
//! The rules here are pure (time and randomness passed in) and tested
//! natively; the parts that touch the store are generic over the engine's
//! [`spindle_engine::Store`], so components run them on Spin's store and
//! tests on the in-memory one.
#![deny(missing_docs)]

pub mod caller;
pub mod jwt;
pub mod keys;
pub mod ratelimit;
pub mod role;

pub use caller::{AuthConfig, AuthFailure, Caller, CallerKind};
pub use ratelimit::{Class, Decision, Limits};
pub use role::Role;
pub use spindle_core::secret::{WeakSecret, check_secret};
