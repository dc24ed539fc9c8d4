//! Identifier newtypes. All ids are strings on the wire; the newtypes keep them from being mixed up.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }
    };
}

string_id!(
    /// A task id: chosen by the client (it is the idempotency key) or generated.
    TaskId
);
string_id!(
    /// A subtask id, `<capability>::<task_id>::<n>`.
    SubtaskId
);
string_id!(
    /// A registered agent.
    AgentId
);
string_id!(
    /// One attempt of one subtask on one agent.
    AssignmentId
);

impl SubtaskId {
    /// `<capability>::<task_id>::<n>`, `n` counting that capability's steps in the task from 1.
    pub fn compose(capability: &str, task_id: &TaskId, n: u32) -> Self {
        Self(format!("{capability}::{task_id}::{n}"))
    }
}

/// Longest accepted client-chosen id or capability name.
pub const MAX_ID_LEN: usize = 128;

/// Why a client-supplied id or capability name is unacceptable, if it is.
///
/// Ids may hold letters, digits and `-_.:@`; `forbid_double_colon` (capabilities) also forbids
/// `:`, the subtask id separator. An id must travel unchanged as one URL path segment, so `.`
/// and `..` (which URL normalization removes) are refused.
pub fn check_name(value: &str, forbid_double_colon: bool) -> Option<String> {
    if value.is_empty() {
        return Some("must not be empty".into());
    }
    if value.len() > MAX_ID_LEN {
        return Some(format!("must be at most {MAX_ID_LEN} characters"));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@')))
    {
        return Some(format!("contains {c:?}; use letters, digits and - _ . : @"));
    }
    if value == "." || value == ".." {
        return Some("must not be \".\" or \"..\" (it cannot be a URL path segment)".into());
    }
    if forbid_double_colon && value.contains(':') {
        return Some("must not contain ':'".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtask_id_has_seed_shape() {
        let id = SubtaskId::compose("feature-dev", &TaskId::from("feature-1087"), 1);
        assert_eq!(id.as_str(), "feature-dev::feature-1087::1");
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("feature-1087", false).is_none());
        assert!(check_name("", false).is_some());
        assert!(check_name("a b", false).is_some());
        assert!(check_name("a/b", false).is_some());
        assert!(check_name(&"x".repeat(129), false).is_some());
        assert!(check_name("gen:x", true).is_some());
        assert!(check_name("gen:x", false).is_none());
        assert!(check_name(".", false).is_some());
        assert!(check_name("..", false).is_some());
        assert!(check_name("...", false).is_none());
        assert!(check_name("a.b", false).is_none());
    }
}
