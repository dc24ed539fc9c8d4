//! Durable storage for Baton: the [`Store`] trait every backend implements, its error type,
//! the write batch the engine hands over, and the conformance suite every backend must pass.
//!
//! Invariants:
//! - `commit` is atomic and durable: when it returns `Ok`, the whole batch survives a crash
//!   (SQLite: WAL with `synchronous=FULL`); when it returns `Err`, none of it is visible.
//! - Reads see only committed data.
//! - Backends persist the core types as they are and add no behaviour of their own, so the
//!   engine behaves the same on every backend. Only store crates hold SQL.

pub mod conformance;
pub mod sqlite;

use async_trait::async_trait;
use baton_core::{
    Agent, Assignment, AssignmentId, Escalation, EscalationStatus, Event, Millis, Priority,
    Subtask, SubtaskId, SubtaskState, Task, TaskContext, TaskId, TaskStatus, Usage, Verification,
};
use serde_json::Value;

pub use sqlite::SqliteStore;

/// The error a store failure came from, kept for `source()` chains.
pub type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Storage failures. None of them is caused by client input. Each keeps the error it came
/// from (a driver error, an IO error, a JSON error) as its `source`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backend failed (IO, constraint, connection).
    #[error("storage backend: {context}{}", suffix(.source))]
    Backend {
        context: String,
        #[source]
        source: Option<Source>,
    },
    /// Stored data could not be decoded.
    #[error("corrupt stored data: {context}{}", suffix(.source))]
    Corrupt {
        context: String,
        #[source]
        source: Option<Source>,
    },
}

impl Error {
    /// The backend failed doing `context` because of `source`.
    pub fn backend(context: impl Into<String>, source: impl Into<Source>) -> Self {
        Error::Backend {
            context: context.into(),
            source: Some(source.into()),
        }
    }

    /// The backend refused for a reason of its own (no underlying error).
    pub fn backend_msg(context: impl Into<String>) -> Self {
        Error::Backend {
            context: context.into(),
            source: None,
        }
    }

    /// Stored data could not be decoded because of `source`.
    pub fn corrupt(context: impl Into<String>, source: impl Into<Source>) -> Self {
        Error::Corrupt {
            context: context.into(),
            source: Some(source.into()),
        }
    }

    /// Stored data breaks a rule of its own (no underlying error).
    pub fn corrupt_msg(context: impl Into<String>) -> Self {
        Error::Corrupt {
            context: context.into(),
            source: None,
        }
    }
}

/// `": <source>"`, so the one-line message still says what went wrong underneath.
fn suffix(source: &Option<Source>) -> String {
    source
        .as_ref()
        .map(|s| format!(": {s}"))
        .unwrap_or_default()
}

/// Result alias for store calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A change of a task's lifecycle fields.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskUpdate {
    pub task_id: TaskId,
    pub status: TaskStatus,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    pub result: Option<Value>,
    /// Approval gates and budget can change after submission.
    pub context: TaskContext,
}

/// A change of a subtask's mutable fields. The row is identified by `(task_id, index)`;
/// `subtask_id` names the same row, and an update whose `subtask_id` does not is an update of
/// an unknown subtask.
#[derive(Clone, Debug, PartialEq)]
pub struct SubtaskUpdate {
    pub task_id: TaskId,
    pub index: u32,
    pub subtask_id: SubtaskId,
    pub state: SubtaskState,
    pub attempts: u32,
    pub assigned_agent: Option<baton_core::AgentId>,
    pub outputs: Option<Value>,
    pub error: Option<String>,
    pub updated_at: Millis,
    pub usage: Option<Usage>,
}

/// A task's new plan (the task is still `planned`): its subtasks replace the stored ones, and
/// its context the stored context.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanReplacement {
    pub task_id: TaskId,
    pub context: TaskContext,
    pub subtasks: Vec<Subtask>,
}

/// Everything one commit writes. Applied in field order: agents, new tasks, new subtasks,
/// plan replacements, task updates, subtask updates, assignments, verifications, escalations,
/// events; within a field in list order, so a
/// later update of the same row wins. Inserting a task id or `seq` that exists, or updating a
/// task or subtask that does not exist, fails the whole batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WriteBatch {
    /// Inserted or replaced whole.
    pub agents: Vec<Agent>,
    /// Inserted; a task id is never inserted twice.
    pub new_tasks: Vec<Task>,
    /// Inserted with their task.
    pub new_subtasks: Vec<Subtask>,
    /// Replacing a stored plan; replacing the plan of an unknown task fails the batch.
    pub plans: Vec<PlanReplacement>,
    pub task_updates: Vec<TaskUpdate>,
    pub subtask_updates: Vec<SubtaskUpdate>,
    /// Inserted or replaced whole.
    pub assignments: Vec<Assignment>,
    /// Appended; a verdict is never written twice.
    pub verifications: Vec<Verification>,
    /// Inserted or replaced whole.
    pub escalations: Vec<Escalation>,
    /// Appended to the timeline.
    pub events: Vec<Event>,
}

impl WriteBatch {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
            && self.new_tasks.is_empty()
            && self.new_subtasks.is_empty()
            && self.plans.is_empty()
            && self.task_updates.is_empty()
            && self.subtask_updates.is_empty()
            && self.assignments.is_empty()
            && self.verifications.is_empty()
            && self.escalations.is_empty()
            && self.events.is_empty()
    }

    /// Append `other` after this batch's writes (group commit).
    pub fn extend(&mut self, other: WriteBatch) {
        self.agents.extend(other.agents);
        self.new_tasks.extend(other.new_tasks);
        self.new_subtasks.extend(other.new_subtasks);
        self.plans.extend(other.plans);
        self.task_updates.extend(other.task_updates);
        self.subtask_updates.extend(other.subtask_updates);
        self.assignments.extend(other.assignments);
        self.verifications.extend(other.verifications);
        self.escalations.extend(other.escalations);
        self.events.extend(other.events);
    }
}

/// What the engine needs to resume after a restart.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Recovery {
    /// Every agent that is not `stopped`.
    pub agents: Vec<Agent>,
    /// Every task that is not terminal, in `seq` order.
    pub tasks: Vec<Task>,
    /// The subtasks of those tasks, by task then plan order.
    pub subtasks: Vec<Subtask>,
    /// Every assignment in state `active`.
    pub assignments: Vec<Assignment>,
    /// The verdicts on those tasks' subtasks, in order.
    pub verifications: Vec<Verification>,
    /// The escalations of those tasks (open and resolved), oldest first.
    pub escalations: Vec<Escalation>,
    /// The largest task `seq` ever stored (0 when none).
    pub max_seq: i64,
}

/// A task with everything a reader shows of it.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskDetail {
    pub task: Task,
    pub subtasks: Vec<Subtask>,
    pub events: Vec<Event>,
    /// Every verdict on its subtasks, in order.
    pub verifications: Vec<Verification>,
    /// Its escalations, oldest first.
    pub escalations: Vec<Escalation>,
}

/// Filters of `GET /escalations`; results come newest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EscalationQuery {
    pub status: Option<EscalationStatus>,
    pub task_id: Option<TaskId>,
    pub limit: u32,
}

/// Filters of `GET /tasks`; results come newest first (by `seq`, descending).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskQuery {
    pub status: Option<TaskStatus>,
    pub priority: Option<Priority>,
    pub task_type: Option<String>,
    /// Only tasks with `seq` below this (the cursor).
    pub before_seq: Option<i64>,
    pub limit: u32,
}

/// One published version of a workflow.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredWorkflow {
    pub name: String,
    /// From 1, one more than the previous version of the same name.
    pub version: u32,
    /// The definition as published (its wire form).
    pub definition: Value,
    pub created_at: Millis,
}

/// A durable home for tasks, subtasks, assignments, agents and timelines.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Apply `batch` atomically and durably.
    async fn commit(&self, batch: WriteBatch) -> Result<()>;

    /// Load the state to resume from.
    async fn recover(&self) -> Result<Recovery>;

    /// A task and its subtasks (plan order).
    async fn task(&self, task_id: &TaskId) -> Result<Option<(Task, Vec<Subtask>)>>;

    /// A task's timeline, oldest first (commit order, then order within the batch).
    async fn timeline(&self, task_id: &TaskId) -> Result<Vec<Event>>;

    /// A task, its subtasks, timeline, verdicts and escalations as of one commit.
    async fn task_detail(&self, task_id: &TaskId) -> Result<Option<TaskDetail>>;

    /// Escalations matching `query`, newest first, at most `query.limit`.
    async fn escalations(&self, query: &EscalationQuery) -> Result<Vec<Escalation>>;

    /// One escalation.
    async fn escalation(&self, escalation_id: &str) -> Result<Option<Escalation>>;

    /// Tasks matching `query`, newest first, at most `query.limit`.
    async fn list_tasks(&self, query: &TaskQuery) -> Result<Vec<Task>>;

    /// One assignment.
    async fn assignment(&self, assignment_id: &AssignmentId) -> Result<Option<Assignment>>;

    /// Store `definition` as the next version of workflow `name` (1 for a new name),
    /// atomically: two concurrent publications of one name get different versions.
    async fn publish_workflow(
        &self,
        name: &str,
        definition: &Value,
        now: Millis,
    ) -> Result<StoredWorkflow>;

    /// Version `version` of workflow `name`, or its latest version when `None`.
    async fn workflow(&self, name: &str, version: Option<u32>) -> Result<Option<StoredWorkflow>>;

    /// The latest version of every workflow, by name.
    async fn workflows(&self) -> Result<Vec<StoredWorkflow>>;
}
