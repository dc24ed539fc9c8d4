//! The records Baton keeps: tasks, subtasks, assignments, agents and timeline events.
//!
//! These are plain data; the rules that change them live in [`crate::state`] and the engine.
//! A state field changes only through the record's `set_*` method, which asks the state
//! machine and returns the state it left (so the caller can record the event). Stores persist
//! exactly these types, so a backend cannot add behaviour of its own.

use crate::routing::CapabilityStats;
use crate::state::{
    AssignmentKind, AssignmentState, EscalationKind, EscalationStatus, ExhaustedPolicy,
    IllegalTransition, Phase, ResolveAction,
};
use crate::{
    AgentId, AgentStatus, AssignmentId, Millis, Priority, SubtaskId, SubtaskState, TaskId,
    TaskStatus,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

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
    /// What the task's steps may read besides their own input, and how it was planned.
    pub context: TaskContext,
}

/// A task's shared context: the values workflow references read (`${params.x}`,
/// `${metadata.x}`), the record of how the plan was made, and what an LLM planner derived.
/// Never changes once the task runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskContext {
    /// Workflow parameters, defaults applied.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub params: Map<String, Value>,
    /// The client's `metadata` object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// Which planner made the plan, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planner: Option<PlannerRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objectives: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acceptance_criteria: Vec<String>,
    /// What happens when a step's attempts are used up, unless the step says (default
    /// escalate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_exhausted: Option<ExhaustedPolicy>,
    /// `execution_mode: manual`: every step waits for approval.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub manual: bool,
    /// Steps (by plan index) that wait for approval (`checkpoints`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checkpoints: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
}

/// Limits of a task; crossing one stops new dispatch and escalates.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration_s: Option<u64>,
}

/// What agents report they used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub tokens_in: u64,
    #[serde(default)]
    pub tokens_out: u64,
    #[serde(default)]
    pub cost_usd: f64,
}

impl Usage {
    pub fn add(&mut self, other: &Usage) {
        self.tokens_in = self.tokens_in.saturating_add(other.tokens_in);
        self.tokens_out = self.tokens_out.saturating_add(other.tokens_out);
        self.cost_usd += other.cost_usd;
    }

    pub fn tokens(&self) -> u64 {
        self.tokens_in.saturating_add(self.tokens_out)
    }

    pub fn is_zero(&self) -> bool {
        *self == Usage::default()
    }
}

impl Budget {
    /// The first limit `usage` (after `elapsed_s` seconds) crosses, as a sentence.
    pub fn crossed(&self, usage: &Usage, elapsed_s: u64) -> Option<String> {
        if let Some(max) = self.max_tokens.filter(|&m| usage.tokens() > m) {
            return Some(format!("used {} tokens, budget {max}", usage.tokens()));
        }
        if let Some(max) = self.max_cost_usd.filter(|&m| usage.cost_usd > m) {
            return Some(format!("cost {:.4} USD, budget {max}", usage.cost_usd));
        }
        if let Some(max) = self.max_duration_s.filter(|&m| elapsed_s > m) {
            return Some(format!("ran {elapsed_s} s, budget {max} s"));
        }
        None
    }
}

/// A verifier's verdict on one attempt of a subtask.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    pub task_id: TaskId,
    pub subtask_id: SubtaskId,
    /// Counts the verdicts of the subtask from 1.
    pub n: u32,
    /// The attempt whose output was checked.
    pub attempt: u32,
    /// Who produced the output.
    pub author: AgentId,
    pub verifier: AgentId,
    pub verified: bool,
    pub evidence: Value,
    pub feedback: Option<String>,
    pub at: Millis,
}

/// A subtask (or a task) handed to a human, with the evidence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Escalation {
    /// `esc-<task seq>-<subtask index or "task">-<n>`.
    pub escalation_id: String,
    pub task_id: TaskId,
    /// `None` for a task-wide escalation (budget).
    pub subtask_id: Option<SubtaskId>,
    pub kind: EscalationKind,
    pub status: EscalationStatus,
    pub reason: String,
    /// The attempts (agents, errors) and verdicts that led here.
    pub evidence: Value,
    /// What a human can do next.
    pub suggestions: Vec<String>,
    pub created_at: Millis,
    pub resolved_at: Option<Millis>,
    pub resolution: Option<Resolution>,
}

/// How an escalation was resolved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Resolution {
    pub action: ResolveAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// The subtask's attempts when it was resolved (a retry's fresh budget counts from here).
    #[serde(default)]
    pub attempts: u32,
}

impl Escalation {
    /// `open → resolved`.
    pub fn resolve(
        &mut self,
        resolution: Resolution,
        now: Millis,
    ) -> Result<(), IllegalTransition> {
        self.status = self.status.transition(EscalationStatus::Resolved)?;
        self.resolved_at = Some(now);
        self.resolution = Some(resolution);
        Ok(())
    }
}

impl TaskContext {
    /// Nothing recorded (stored as SQL `NULL`).
    pub fn is_empty(&self) -> bool {
        *self == TaskContext::default()
    }
}

/// How a task's plan was made (`planner` in `GET /tasks/{id}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PlannerRecord {
    /// The client sent the plan (with the submission or through `PUT /tasks/{id}/plan`).
    Client,
    /// A version of a stored workflow.
    Workflow { name: String, version: u32 },
    /// The rule-based planner; `matched` lists the keywords found per domain.
    Rules {
        matched: BTreeMap<String, Vec<String>>,
    },
    /// The LLM planner's plan, accepted by the guardrails.
    Llm { model: String },
    /// The LLM planner failed (`reason`); the rule-based plan runs instead.
    LlmFallback {
        reason: String,
        matched: BTreeMap<String, Vec<String>>,
    },
}

/// What a workflow step adds to a plain plan step; `None` everywhere for a plain step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepRules {
    /// Condition over params, metadata and upstream outputs; false makes the step `skipped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// Verification request (`true` or `{capability?, criteria?}`), stored for governance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Value>,
    /// Approval gate (`true` or an object), stored for governance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Value>,
    /// Per-attempt timeout, instead of the task's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Attempts, instead of the task's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// What happens when its attempts are used up, instead of the task's policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_exhausted: Option<ExhaustedPolicy>,
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
    /// The plan indices of the subtasks this one waits for (indices, not ids: a plan of many
    /// edges costs four bytes per edge, not a subtask id each).
    pub depends_on: Vec<u32>,
    /// The step's parameters. The agent receives them with `brief` (the task's description
    /// unless the step sets one) and the outputs of the direct dependencies added.
    pub input: Value,
    pub state: SubtaskState,
    /// Attempts started so far.
    pub attempts: u32,
    pub assigned_agent: Option<AgentId>,
    pub outputs: Option<Value>,
    pub error: Option<String>,
    pub updated_at: Millis,
    /// Workflow rules (condition, verification, approval, limits); boxed because most
    /// subtasks have none and a plan may hold many subtasks.
    pub rules: Option<Box<StepRules>>,
    /// What its agents reported they used, all attempts together.
    pub usage: Option<Usage>,
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
    /// The work itself, or a verification of attempt `attempt`'s output.
    pub kind: AssignmentKind,
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
    /// What routing learned of its attempts, per capability.
    #[serde(default)]
    pub stats: BTreeMap<String, CapabilityStats>,
}

/// What an event records: a change of state, or a phase an agent reported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// The task's status changed; `from` is `None` when the task was created.
    Task {
        from: Option<TaskStatus>,
        to: TaskStatus,
    },
    /// A subtask's state changed.
    Subtask {
        subtask_id: SubtaskId,
        from: SubtaskState,
        to: SubtaskState,
    },
    /// The agent working on a subtask reported a phase; `from` is its previous phase.
    Phase {
        subtask_id: SubtaskId,
        from: Option<Phase>,
        to: Phase,
    },
}

impl Change {
    /// The subtask the change is about; `None` for the task itself.
    pub fn subtask_id(&self) -> Option<&SubtaskId> {
        match self {
            Change::Task { .. } => None,
            Change::Subtask { subtask_id, .. } | Change::Phase { subtask_id, .. } => {
                Some(subtask_id)
            }
        }
    }

    /// The wire names of the states or phases: `(from, to)`.
    pub fn names(&self) -> (Option<&'static str>, &'static str) {
        match self {
            Change::Task { from, to } => (from.map(TaskStatus::as_str), to.as_str()),
            Change::Subtask { from, to, .. } => (Some(from.as_str()), to.as_str()),
            Change::Phase { from, to, .. } => (from.map(Phase::as_str), to.as_str()),
        }
    }

    /// `task`, `subtask` or `phase`.
    pub fn kind(&self) -> &'static str {
        match self {
            Change::Task { .. } => "task",
            Change::Subtask { .. } => "subtask",
            Change::Phase { .. } => "phase",
        }
    }
}

/// One entry of a task's timeline (`status_history`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub task_id: TaskId,
    pub at: Millis,
    pub change: Change,
    pub agent: Option<AgentId>,
    /// Why, when there is more to say (an error, a lost lease).
    pub note: Option<String>,
}

impl Task {
    /// Move to `to` through the task machine, stamping `started_at` / `finished_at`; returns
    /// the status it left.
    pub fn set_status(
        &mut self,
        to: TaskStatus,
        now: Millis,
    ) -> Result<TaskStatus, IllegalTransition> {
        let from = self.status;
        self.status = from.transition(to)?;
        if to == TaskStatus::Running && self.started_at.is_none() {
            self.started_at = Some(now);
        }
        if to.is_terminal() {
            self.finished_at = Some(now);
        }
        Ok(from)
    }
}

impl AsRef<Subtask> for Subtask {
    fn as_ref(&self) -> &Subtask {
        self
    }
}

impl Subtask {
    /// The per-attempt timeout: the step's own, else `default` (the task's).
    pub fn timeout_ms(&self, default: u64) -> u64 {
        self.rules
            .as_ref()
            .and_then(|r| r.timeout_ms)
            .unwrap_or(default)
    }

    /// The attempts allowed: the step's own, else `default` (the task's).
    pub fn max_attempts(&self, default: u32) -> u32 {
        self.rules
            .as_ref()
            .and_then(|r| r.max_attempts)
            .unwrap_or(default)
    }

    /// Move to `to` through the subtask machine; returns the state it left.
    pub fn set_state(
        &mut self,
        to: SubtaskState,
        now: Millis,
    ) -> Result<SubtaskState, IllegalTransition> {
        let from = self.state;
        self.state = from.transition(to)?;
        self.updated_at = now;
        Ok(from)
    }
}

impl Assignment {
    /// End the attempt (`active → to`) at `now`; returns the state it left.
    pub fn set_state(
        &mut self,
        to: AssignmentState,
        now: Millis,
    ) -> Result<AssignmentState, IllegalTransition> {
        let from = self.state;
        self.state = from.transition(to)?;
        self.finished_at = Some(now);
        Ok(from)
    }
}

impl Agent {
    /// Move to `to` through the agent machine; returns the status it left.
    pub fn set_status(&mut self, to: AgentStatus) -> Result<AgentStatus, IllegalTransition> {
        let from = self.status;
        self.status = from.transition(to)?;
        Ok(from)
    }
}
