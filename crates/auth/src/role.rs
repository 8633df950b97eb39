//! Roles: what a caller may do. Each role includes every role below it.

use serde::{Deserialize, Serialize};

/// A caller's role, ordered: `viewer < operator < approver < admin`.
///
/// The order is the rule: a route states the least role it needs and any
/// caller at or above it passes. An approver can therefore also trigger and
/// cancel runs, which is what the people who release risky steps expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads everything but secrets.
    Viewer,
    /// Triggers and cancels runs.
    Operator,
    /// Decides approvals.
    Approver,
    /// The registry, keys, policy: everything.
    Admin,
}

impl Role {
    /// Every role, lowest first.
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Operator, Role::Approver, Role::Admin];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }

    /// The role named `s` (exact, lower case), if any.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether this role may do what `needed` allows.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }

    /// The role just below this one, if any (what the role matrix test
    /// presents to check a 403).
    pub fn below(self) -> Option<Role> {
        match self {
            Role::Viewer => None,
            Role::Operator => Some(Role::Viewer),
            Role::Approver => Some(Role::Operator),
            Role::Admin => Some(Role::Approver),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_round_trip() {
        assert!(Role::Admin.allows(Role::Viewer));
        assert!(Role::Approver.allows(Role::Operator));
        assert!(!Role::Operator.allows(Role::Approver));
        assert!(!Role::Viewer.allows(Role::Operator));
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{r}\""));
        }
        assert_eq!(Role::parse("Admin"), None);
        assert_eq!(Role::parse("root"), None);
    }
}
