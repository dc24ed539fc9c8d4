//! The task, subtask, assignment and agent state machines of DESIGN.md as pure transition
//! functions, and the phases an agent reports.
//!
//! Each machine is a closed enum with one `transition(self, to)` that returns the new state or an
//! [`IllegalTransition`]; an illegal transition is an error, never a silent no-op. The records
//! in [`crate::model`] change state only through these (their `set_*` methods), and the engine
//! changes records only through those methods, so the tables below are the single source of
//! truth.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A transition the state machine does not allow.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("illegal {machine} transition {from} -> {to}")]
pub struct IllegalTransition {
    /// `task`, `subtask`, `assignment` or `agent`.
    pub machine: &'static str,
    /// The state the entity was in.
    pub from: &'static str,
    /// The state asked for.
    pub to: &'static str,
}

/// A closed enum with wire names (`snake_case`), parsing and `Display`.
macro_rules! named_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire name (`snake_case`).
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Parse a wire name.
            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// A [`named_enum!`] that is a state machine: `transition` follows its `can_transition` table.
macro_rules! state_enum {
    ($(#[$doc:meta])* $name:ident, $machine:literal { $($body:tt)+ }) => {
        named_enum!($(#[$doc])* $name { $($body)+ });

        impl $name {
            /// Move to `to` if the machine allows it.
            pub fn transition(self, to: $name) -> Result<$name, IllegalTransition> {
                if self.can_transition(to) {
                    Ok(to)
                } else {
                    Err(IllegalTransition { machine: $machine, from: self.as_str(), to: to.as_str() })
                }
            }
        }
    };
}

state_enum!(
    /// `planned → running → completed | failed | cancelled`, with side states.
    TaskStatus, "task" {
        Planned => "planned",
        Running => "running",
        AwaitingApproval => "awaiting_approval",
        Blocked => "blocked",
        Escalated => "escalated",
        Completed => "completed",
        Failed => "failed",
        Cancelled => "cancelled",
    }
);

impl TaskStatus {
    /// No transition leaves a terminal state.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// Whether the machine allows `self → to`.
    #[allow(clippy::match_like_matches_macro)] // a table of arms reads better than one pattern
    pub fn can_transition(self, to: TaskStatus) -> bool {
        use TaskStatus::*;
        match (self, to) {
            (Planned, Running | Cancelled | Failed) => true,
            (Running, AwaitingApproval | Blocked | Escalated) => true,
            (AwaitingApproval | Blocked | Escalated, Running) => true,
            (AwaitingApproval, Blocked | Escalated) => true,
            (Blocked, AwaitingApproval | Escalated) => true,
            (Escalated, AwaitingApproval | Blocked) => true,
            (Running | AwaitingApproval | Blocked | Escalated, Completed | Failed | Cancelled) => {
                true
            }
            _ => false,
        }
    }
}

state_enum!(
    /// `pending → ready → assigned → running → (verifying →) completed`, with retries and side states.
    SubtaskState, "subtask" {
        Pending => "pending",
        Ready => "ready",
        Assigned => "assigned",
        Running => "running",
        Verifying => "verifying",
        RetryWait => "retry_wait",
        AwaitingApproval => "awaiting_approval",
        Blocked => "blocked",
        Escalated => "escalated",
        Completed => "completed",
        Skipped => "skipped",
        Failed => "failed",
        Cancelled => "cancelled",
    }
);

impl SubtaskState {
    /// No transition leaves a terminal state.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Skipped | Self::Failed | Self::Cancelled
        )
    }

    /// Finished in a way that lets its dependents go on: `completed` or `skipped`.
    pub fn is_done(self) -> bool {
        matches!(self, Self::Completed | Self::Skipped)
    }

    /// Holds an agent slot: an assignment is live in this state.
    pub fn is_assigned(self) -> bool {
        matches!(self, Self::Assigned | Self::Running | Self::Verifying)
    }

    /// Whether the machine allows `self → to`.
    pub fn can_transition(self, to: SubtaskState) -> bool {
        use SubtaskState::*;
        if self.is_terminal() {
            return false;
        }
        match (self, to) {
            // Every live state may be cancelled (task cancelled or failed).
            (_, Cancelled) => true,
            (Pending, Ready | AwaitingApproval | Skipped) => true,
            (Ready, Assigned | Blocked) => true,
            (Blocked, Ready | Escalated) => true,
            (AwaitingApproval, Ready | Skipped | Failed | Escalated) => true,
            (Assigned, Running | RetryWait | Failed | Escalated) => true,
            (Running, Verifying | Completed | RetryWait | Failed | Escalated) => true,
            (Verifying, Completed | RetryWait | Failed | Escalated) => true,
            (RetryWait, Ready) => true,
            (Escalated, Ready | Completed | Skipped | Failed) => true,
            _ => false,
        }
    }
}

state_enum!(
    /// `starting → idle ⇄ busy → draining → stopped`; `unhealthy` after missed heartbeats.
    AgentStatus, "agent" {
        Starting => "starting",
        Idle => "idle",
        Busy => "busy",
        Draining => "draining",
        Stopped => "stopped",
        Unhealthy => "unhealthy",
        Failed => "failed",
    }
);

impl AgentStatus {
    /// Whether the machine allows `self → to`.
    #[allow(clippy::match_like_matches_macro)] // a table of arms reads better than one pattern
    pub fn can_transition(self, to: AgentStatus) -> bool {
        use AgentStatus::*;
        match (self, to) {
            (Starting, Idle | Failed | Stopped | Unhealthy) => true,
            (Idle, Busy) | (Busy, Idle) => true,
            (Idle | Busy | Unhealthy, Draining) => true,
            (Draining, Stopped | Unhealthy) => true,
            (Idle | Busy, Unhealthy) => true,
            (Unhealthy, Idle | Busy | Stopped | Failed) => true,
            (Idle | Busy, Stopped) => true,
            _ => false,
        }
    }

    /// May receive new work (lease new assignments).
    pub fn accepts_work(self) -> bool {
        matches!(self, Self::Idle | Self::Busy)
    }

    /// Still counts as a registered agent that could serve its capabilities.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            Self::Starting | Self::Idle | Self::Busy | Self::Unhealthy
        )
    }
}

state_enum!(
    /// One attempt: `active → completed | failed | lost | cancelled`.
    AssignmentState, "assignment" {
        Active => "active",
        Completed => "completed",
        Failed => "failed",
        Lost => "lost",
        Cancelled => "cancelled",
    }
);

impl AssignmentState {
    /// Whether the machine allows `self → to`: only a live attempt ends, and it ends once.
    pub fn can_transition(self, to: AssignmentState) -> bool {
        self == Self::Active && to != Self::Active
    }
}

named_enum!(
    /// What an agent says it is doing with an assignment (`reasoning → executing → validating`,
    /// in any order: phases are reports, not a machine the engine enforces).
    Phase {
        Reasoning => "reasoning",
        Executing => "executing",
        Validating => "validating",
    }
);

named_enum!(
    /// What an assignment asks of its agent: the subtask's work, or a verdict on another
    /// agent's output of it.
    AssignmentKind {
        Work => "work",
        Verification => "verification",
    }
);

named_enum!(
    /// What happens when a subtask's attempts, timeouts or verifications are used up.
    ExhaustedPolicy {
        Escalate => "escalate",
        Fail => "fail",
    }
);

named_enum!(
    /// Why a human is asked to decide: attempts (failures, lost leases, timeouts) used up, the
    /// third negative verdict, a rejected gate, or a crossed budget.
    EscalationKind {
        Attempts => "attempts",
        Verification => "verification",
        Rejected => "rejected",
        Budget => "budget",
    }
);

state_enum!(
    /// `open → resolved`.
    EscalationStatus, "escalation" {
        Open => "open",
        Resolved => "resolved",
    }
);

impl EscalationStatus {
    /// Whether the machine allows `self → to`: an escalation is resolved once.
    pub fn can_transition(self, to: EscalationStatus) -> bool {
        self == Self::Open && to == Self::Resolved
    }
}

named_enum!(
    /// How a human resolves an escalation: run the subtask again with a fresh attempt budget,
    /// continue without it (`skipped`), fail it, complete it with the human's outputs, continue
    /// a task under a raised budget, or cancel the task.
    ResolveAction {
        Retry => "retry",
        Skip => "skip",
        Fail => "fail",
        ProvideOutput => "provide_output",
        RaiseBudget => "raise_budget",
        Cancel => "cancel",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_happy_path_and_terminals() {
        let s = TaskStatus::Planned.transition(TaskStatus::Running).unwrap();
        let s = s.transition(TaskStatus::Completed).unwrap();
        assert!(s.is_terminal());
        for &to in TaskStatus::ALL {
            assert!(TaskStatus::Completed.transition(to).is_err());
            assert!(TaskStatus::Cancelled.transition(to).is_err());
        }
        let err = TaskStatus::Planned
            .transition(TaskStatus::Completed)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "illegal task transition planned -> completed"
        );
    }

    #[test]
    fn subtask_paths() {
        use SubtaskState::*;
        let path = [Pending, Ready, Assigned, Running, Verifying, Completed];
        for w in path.windows(2) {
            assert!(w[0].can_transition(w[1]), "{} -> {}", w[0], w[1]);
        }
        let retry = [
            Assigned, RetryWait, Ready, Blocked, Ready, Assigned, Running, Completed,
        ];
        for w in retry.windows(2) {
            assert!(w[0].can_transition(w[1]), "{} -> {}", w[0], w[1]);
        }
        assert!(!Pending.can_transition(Assigned));
        assert!(!Ready.can_transition(Completed));
        assert!(!RetryWait.can_transition(Assigned));
        for &s in SubtaskState::ALL {
            for &t in SubtaskState::ALL {
                if s.is_terminal() {
                    assert!(s.transition(t).is_err());
                }
            }
            assert_eq!(SubtaskState::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn agent_paths() {
        use AgentStatus::*;
        for w in [Starting, Idle, Busy, Idle, Draining, Stopped].windows(2) {
            assert!(w[0].can_transition(w[1]));
        }
        assert!(Busy.can_transition(Unhealthy) && Unhealthy.can_transition(Idle));
        assert!(!Stopped.can_transition(Idle));
        assert!(!Draining.can_transition(Busy));
        assert!(Idle.accepts_work() && !Draining.accepts_work());
    }

    #[test]
    fn assignment_paths() {
        use AssignmentState::*;
        for &end in &[Completed, Failed, Lost, Cancelled] {
            assert_eq!(Active.transition(end), Ok(end));
            for &to in AssignmentState::ALL {
                assert!(end.transition(to).is_err(), "{end} -> {to}");
            }
        }
        assert!(Active.transition(Active).is_err());
    }

    #[test]
    fn wire_names_round_trip() {
        for &s in TaskStatus::ALL {
            assert_eq!(TaskStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        for &s in AgentStatus::ALL {
            assert_eq!(AgentStatus::parse(s.as_str()), Some(s));
        }
    }
}
