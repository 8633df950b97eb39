//! The key-value layout, written down once.
//!
//! Every document Spindle keeps lives under a key built here, so components,
//! the host's tests and operators' tooling agree on where things are. The store
//! has no scans, so collections are explicit index documents.

use crate::agent::AgentName;

/// The agent definition document for `name` (latest version).
pub fn agent(name: &AgentName) -> String {
    format!("agent:{}", name.as_str())
}

/// The index document listing every agent name, sorted.
pub const AGENT_INDEX: &str = "index:agents";

/// A key that only ever holds an 8-byte counter (see the store facts in the
/// architecture doc: never store anything else under an incremented key).
pub fn counter(name: &str) -> String {
    format!("counter:{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_namespaced() {
        let name = AgentName::parse("security-scanner").unwrap();
        assert_eq!(agent(&name), "agent:security-scanner");
        assert_eq!(counter("probe"), "counter:probe");
    }
}
