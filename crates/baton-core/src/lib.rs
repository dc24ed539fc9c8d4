//! The Baton domain: ids, tasks, subtasks, agents, assignments, plans, and the rules that
//! govern them (state machines, plan validation, planning, routing, retries).
//!
//! Invariant: this crate does no IO and knows no async runtime, SQL or HTTP. Every function is
//! a pure function of its arguments; time arrives as a [`Millis`] argument and randomness as a
//! number supplied by the caller, so every decision is deterministic and unit-testable.

pub mod breaker;
pub mod expr;
pub mod ids;
pub mod model;
pub mod plan;
pub mod planner;
pub mod priority;
pub mod retry;
pub mod routing;
pub mod state;
pub mod workflow;

pub use ids::{AgentId, AssignmentId, SubtaskId, TaskId};
pub use model::{
    Agent, Assignment, Budget, Change, Escalation, Event, PlannerRecord, Resolution, StepRules,
    Subtask, Task, TaskContext, Usage, Verification,
};
pub use priority::Priority;
pub use state::{
    AgentStatus, AssignmentKind, AssignmentState, EscalationKind, EscalationStatus,
    ExhaustedPolicy, IllegalTransition, Phase, ResolveAction, SubtaskState, TaskStatus,
};

/// Milliseconds since the Unix epoch; the only notion of time in the core.
pub type Millis = i64;
