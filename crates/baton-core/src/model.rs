//! The records Baton keeps: tasks, subtasks, assignments, agents and timeline events.
//!
//! These are plain data; the rules that change them live in [`crate::state`] and the engine.
//! Stores persist exactly these types, so a backend cannot add behaviour of its own.

use crate::{
    AgentId, AgentStatus, AssignmentId, Millis, Priority, SubtaskId, SubtaskState, TaskId,
    TaskStatus,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Default attempts per subtask (`MAX_RETRIES`).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Default per-subtask timeout (`AGENT_TIMEOUT_SECONDS`), in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 300_000;

/// A high-level request and its lifecycle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub task_id: TaskId,
    /// Creation order, strictly increasing; pages `GET /tasks` newest first.
    pub seq: i64,
    pub title: String,
    pub description: String,
    pub task_type: Option<String>,
    pub priority: Priority,
    pub status: TaskStatus,
    /// The submitted body as canonical JSON (sorted keys); equal bodies are equal strings.
    pub request: String,
    /// `metadata.due_date`, when given.
    pub due_at: Option<Millis>,
    pub max_attempts: u32,
    pub timeout_ms: u64,
    pub created_at: Millis,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    /// The aggregated result, once terminal.
    pub result: Option<Value>,
}

impl Task {
    /// Seconds from creation to the end (or to `now` while unfinished).
    pub fn elapsed_seconds(&self, now: Millis) -> f64 {
        let end = self.finished_at.unwrap_or(now);
        (end - self.created_at).max(0) as f64 / 1000.0
    }

    /// Whether the task finished (or, unfinished, still can finish) by its due date; `None` without one.
    pub fn on_time(&self, now: Millis) -> Option<bool> {
        self.due_at
            .map(|due| self.finished_at.unwrap_or(now) <= due)
    }
}

/// One node of a task's plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Subtask {
    pub subtask_id: SubtaskId,
    pub task_id: TaskId,
    /// Position in plan order, from 0.
    pub index: u32,
    /// The step's id within the plan (the client's `id`).
    pub key: String,
    pub capability: String,
    pub depends_on: Vec<SubtaskId>,
    /// The brief and the step's parameters, as the agent receives them.
    pub input: Value,
    pub state: SubtaskState,
    /// Attempts started so far.
    pub attempts: u32,
    pub assigned_agent: Option<AgentId>,
    pub outputs: Option<Value>,
    pub error: Option<String>,
    pub updated_at: Millis,
}

/// The fate of one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssignmentState {
    /// Leased and not yet answered.
    Active,
    /// Its result was accepted.
    Completed,
    /// The agent reported failure.
    Failed,
    /// The lease expired or the attempt timed out; a result now gets 409.
    Lost,
    /// The task was cancelled or failed while this attempt ran.
    Cancelled,
}

impl AssignmentState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Lost => "lost",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parse a wire name.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "active" => Self::Active,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "lost" => Self::Lost,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }
}

/// One attempt of one subtask on one agent. `attempt` is the fencing token: only the subtask's
/// current attempt may report a result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub assignment_id: AssignmentId,
    pub task_id: TaskId,
    pub subtask_id: SubtaskId,
    pub agent_id: AgentId,
    pub attempt: u32,
    pub state: AssignmentState,
    pub lease_expires_at: Millis,
    pub created_at: Millis,
    pub finished_at: Option<Millis>,
}

impl Assignment {
    /// The stable key agents use to dedupe external side effects: `<task_id>/<subtask_id>`.
    pub fn idempotency_key(&self) -> String {
        format!("{}/{}", self.task_id, self.subtask_id)
    }
}

/// A registered worker identity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    pub agent_id: AgentId,
    pub name: String,
    /// Free-form agent type (`llm`, `tool`, `http`, ...).
    pub kind: String,
    pub capabilities: Vec<String>,
    pub domains: Vec<String>,
    pub max_concurrency: u32,
    pub status: AgentStatus,
    /// sha256 of the bearer token, hex; the token itself is never stored.
    pub token_hash: String,
    pub created_at: Millis,
}

/// One state change, appended to a task's timeline (`status_history`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub task_id: TaskId,
    pub at: Millis,
    /// `None` for a change of the task itself.
    pub subtask_id: Option<SubtaskId>,
    /// `None` when the entity was created by this event.
    pub from: Option<String>,
    pub to: String,
    pub agent: Option<AgentId>,
    /// Why, when there is more to say (an error, a lost lease).
    pub note: Option<String>,
}
