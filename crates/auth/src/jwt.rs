//! JWT bearer tokens.
