//! The wire types of Baton's HTTP API, shared by the server, the client, the agent SDK and the
//! CLI. Field names follow the seed API exactly. Timestamps are RFC 3339 strings (UTC).
//!
//! Invariant: plain serde data only; no behaviour, no domain rules. The server converts domain
//! types into these at its edge. Request types deny unknown fields: they are the one definition
//! of what a transport accepts (the engine's intake deserializes into them).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// A priority as clients send it: a name (`low|normal|high|critical`) or a number 1–10.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum PriorityInput {
    Name(String),
    Number(u8),
}

impl<'de> Deserialize<'de> for PriorityInput {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        const EXPECTED: &str = "low, normal, high, critical or a number from 1 to 10";
        impl serde::de::Visitor<'_> for V {
            type Value = PriorityInput;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PriorityInput, E> {
                Ok(PriorityInput::Name(v.to_owned()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PriorityInput, E> {
                u8::try_from(v)
                    .map(PriorityInput::Number)
                    .map_err(|_| E::custom(format!("must be {EXPECTED}")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PriorityInput, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("must be {EXPECTED}")))
                    .and_then(|v| self.visit_u64(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// `POST /orchestrate` and `POST /tasks`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitTask {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    pub title: String,
    pub description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<PriorityInput>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<ClientPlan>,
    /// Parameters of the workflow that `task_type` names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
    /// Limits; crossing one stops new dispatch and escalates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// `escalate` (default) or `fail`: what happens when a step's attempts are used up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_exhausted: Option<String>,
}

/// A task's limits.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration_s: Option<u64>,
}

/// A plan supplied by the client.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientPlan {
    pub subtasks: Vec<ClientStep>,
}

/// One step of a client plan or a workflow.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientStep {
    pub id: String,
    pub capability: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Parameters for the agent; strings may hold `${params.x}`, `${metadata.x}`,
    /// `${task.title}` and `${steps.<id>.outputs.x}` references.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// A condition; when false the step is `skipped`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// `true` or `{capability?, criteria?}`: independent verification (stored; enforced by
    /// governance).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<Value>,
    /// `true` or an object: an approval gate (stored; enforced by governance).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval: Option<Value>,
    /// Per-attempt timeout in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// `escalate` or `fail`, instead of the task's policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_exhausted: Option<String>,
}

/// `POST /workflows`: a named, versioned plan template.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowDef {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub params: std::collections::BTreeMap<String, ParamDef>,
    pub steps: Vec<ClientStep>,
}

/// One declared workflow parameter.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamDef {
    /// `string`, `number`, `integer`, `boolean`, `object` or `array`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
}

/// The answer to `POST /workflows`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkflowCreated {
    /// The workflow's id: its name (stable across versions).
    pub workflow_id: String,
    pub name: String,
    pub version: u32,
}

/// `GET /workflows/{id}`: one version, as published.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkflowView {
    pub workflow_id: String,
    pub name: String,
    pub version: u32,
    pub created_at: String,
    pub definition: WorkflowDef,
}

/// `GET /workflows`: the latest version of each workflow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkflowList {
    pub workflows: Vec<WorkflowSummary>,
}

/// One workflow in a listing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkflowSummary {
    pub workflow_id: String,
    pub name: String,
    pub version: u32,
    pub description: Option<String>,
    pub steps: usize,
    pub params: Vec<String>,
    pub created_at: String,
}

/// `POST /workflows/{id}/execute`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecuteWorkflow {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// The task's title; the workflow's name when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The task's description; the workflow's description when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<PriorityInput>,
    /// Which version to run; the latest when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

/// The answer to a submission: the task and its plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlannedTask {
    pub task_id: String,
    pub status: String,
    pub subtasks: Vec<PlannedSubtask>,
    /// How the plan was made: `{kind: client | workflow | rules | llm | llm_fallback, ...}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planner: Option<Value>,
}

/// One subtask of a plan as a submission reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlannedSubtask {
    pub subtask_id: String,
    /// The capability (the seed calls it the agent).
    pub agent: String,
    pub state: String,
    pub depends_on: Vec<String>,
    /// The step's id within the plan.
    #[serde(default)]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// The step's input as planned (references not resolved yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
}

/// `POST /tasks/batch`: many submissions in one call.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitBatch {
    pub tasks: Vec<SubmitTask>,
    /// Start the tasks at once (like `POST /tasks`, the default) or only plan them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execute: Option<bool>,
}

/// The answer to a batch: one outcome per task, in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubmitBatchReply {
    pub tasks: Vec<SubmitOutcome>,
}

/// What happened to one task of a batch: the status a single submission would have had
/// (201 created, 200 existing, 409 conflict, ...) with the task or the error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubmitOutcome {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<PlannedTask>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// `POST /execute/{task_id}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecuteRequest {
    /// `auto` (default) or `manual`: every subtask waits for approval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_mode: Option<String>,
    /// Subtask ids that wait for approval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoints: Option<Vec<String>>,
}

/// `POST /tasks/{id}/approve` and `POST /tasks/{id}/reject`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateDecision {
    /// The subtasks decided; every one waiting for approval when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subtask_ids: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The answer to approve and reject.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateReply {
    pub task_id: String,
    pub status: String,
    /// The subtasks approved (or rejected).
    pub subtask_ids: Vec<String>,
}

/// `POST /tasks/{id}/subtasks/{sid}/assign`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManualAssign {
    pub agent_id: String,
}

/// `POST /escalations/{id}/resolve`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// `retry`, `skip`, `fail`, `provide_output` (a subtask); `raise_budget`, `cancel` (a
    /// budget); `cancel` (any).
    pub action: String,
    /// With `provide_output`: the subtask's outputs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Value>,
    /// With `raise_budget`: the new budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// An escalation as clients see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EscalationView {
    pub escalation_id: String,
    pub task_id: String,
    pub subtask_id: Option<String>,
    /// `attempts`, `verification`, `rejected` or `budget`.
    pub kind: String,
    /// `open` or `resolved`.
    pub status: String,
    pub reason: String,
    /// The attempts (agents, errors) and verdicts that led here.
    pub evidence: Value,
    pub suggestions: Vec<String>,
    pub created_at: String,
    pub resolved_at: Option<String>,
    /// `{action, note?, outputs?, budget?}` once resolved.
    pub resolution: Option<Value>,
}

/// `GET /escalations`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EscalationList {
    pub escalations: Vec<EscalationView>,
}

/// A verdict in a task's detail.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerificationView {
    pub subtask_id: String,
    pub n: u32,
    pub attempt: u32,
    /// The agent whose output was checked.
    pub author: String,
    pub verifier: String,
    pub verified: bool,
    pub evidence: Value,
    pub feedback: Option<String>,
    pub at: String,
}

/// The answer to execute and cancel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskStatusReply {
    pub task_id: String,
    pub status: String,
}

/// `GET /tasks/{task_id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskDetail {
    pub task_id: String,
    pub title: String,
    pub description: String,
    pub task_type: Option<String>,
    pub priority: u8,
    pub status: String,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub subtasks: Vec<SubtaskDetail>,
    pub metrics: Metrics,
    pub result: Option<Value>,
    pub status_history: Vec<HistoryEntry>,
    /// How the plan was made: `{kind: client | workflow | rules | llm | llm_fallback, ...}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planner: Option<Value>,
    /// Workflow parameters, defaults applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objectives: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acceptance_criteria: Vec<String>,
    /// Every verdict on its subtasks, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verifications: Vec<VerificationView>,
    /// Its escalations, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub escalations: Vec<EscalationView>,
    /// What its agents reported, all subtasks together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
}

/// One subtask in a task's detail.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubtaskDetail {
    pub subtask_id: String,
    /// The capability (the seed calls it the agent).
    pub agent: String,
    /// The agent id of the latest attempt, once assigned.
    pub assigned_agent: Option<String>,
    pub state: String,
    pub attempts: u32,
    pub depends_on: Vec<String>,
    pub outputs: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The step's id within the plan.
    #[serde(default)]
    pub id: String,
    /// The step's input, its references resolved once the step became ready (the agent also
    /// gets the brief and its dependencies' outputs).
    #[serde(default)]
    pub input: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Why it is in its state, when the timeline says (`blocked`: no agent offers its
    /// capability; `escalated`: the escalation and its reason; `skipped`: the condition...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Timing of a task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub elapsed_seconds: f64,
    /// Against `metadata.due_date`; `null` without one.
    pub on_time: Option<bool>,
}

/// One entry of the timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub at: String,
    /// What changed: `task` (its status), `subtask` (a subtask's state) or `phase` (the phase
    /// an agent reported for a subtask).
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtask_id: Option<String>,
    pub from: Option<String>,
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// `GET /tasks`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskList {
    pub tasks: Vec<TaskSummary>,
    pub next_cursor: Option<String>,
}

/// One task in a listing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskSummary {
    pub task_id: String,
    pub title: String,
    pub task_type: Option<String>,
    pub priority: u8,
    pub status: String,
    pub created_at: String,
    pub finished_at: Option<String>,
}

/// `POST /agents`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterAgent {
    pub name: String,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub capabilities: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
}

/// The answer to a registration: the id and the bearer token (shown once).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegisteredAgent {
    pub agent_id: String,
    pub token: String,
}

/// `GET /agents`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentList {
    pub agents: Vec<AgentView>,
}

/// An agent as clients see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentView {
    pub agent_id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Its capabilities.
    pub skills: Vec<String>,
    pub domains: Vec<String>,
    pub status: String,
    /// In-flight assignments over max concurrency, 0–1.
    pub load: f64,
    pub in_flight: u32,
    pub max_concurrency: u32,
    pub last_seen: Option<String>,
    /// Its circuit breaker.
    #[serde(default)]
    pub circuit: Circuit,
    /// What routing learned of it, per capability.
    #[serde(default)]
    pub routing: BTreeMap<String, RoutingStats>,
}

/// An agent's circuit breaker: `closed` (work flows), `open` (no work until `open_until`,
/// after consecutive failures), `half_open` (one probe assignment decides).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Circuit {
    pub state: String,
    pub consecutive_failures: u32,
    /// While `open`: when a probe may go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_until: Option<String>,
}

impl Default for Circuit {
    fn default() -> Self {
        Self {
            state: "closed".into(),
            consecutive_failures: 0,
            open_until: None,
        }
    }
}

/// What routing learned of an agent's attempts of one capability.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoutingStats {
    /// Decayed share of attempts that succeeded, 0–1.
    pub success_rate: f64,
    /// Decayed duration of its attempts (failed ones included), in milliseconds.
    pub latency_ms: f64,
    /// Attempts seen.
    pub samples: u64,
}

/// `POST /agents/{id}/lease`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
    /// The assignments the agent is working on; see [`HeartbeatRequest::held`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<Vec<String>>,
}

/// `POST /agents/{id}/heartbeat`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// The assignments the agent is working on. When given, only these leases are renewed, so
    /// an assignment whose lease answer never reached the agent expires and is retried; when
    /// absent, every lease of the agent is renewed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<Vec<String>>,
}

/// The answer to a lease call: possibly empty after the wait.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeaseResponse {
    pub assignments: Vec<Lease>,
}

/// One assignment handed to an agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub assignment_id: String,
    pub task_id: String,
    pub subtask_id: String,
    pub capability: String,
    pub attempt: u32,
    pub idempotency_key: String,
    pub lease_expires_at: String,
    /// The brief, the step's parameters, and `dependencies`: the outputs of direct dependencies
    /// keyed by subtask id.
    pub input: Value,
}

/// The answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    pub agent_id: String,
    pub status: String,
    /// Leases renewed by this call, with their new deadline.
    pub lease_expires_at: Option<String>,
    /// Assignments of this agent that were cancelled or lost: stop working on them.
    pub revoked: Vec<String>,
}

/// Agent-reported phases of an assignment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Reasoning,
    Executing,
    Validating,
}

/// `POST /assignments/{id}/progress`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgressRequest {
    pub phase: Phase,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `POST /assignments/{id}/complete`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    pub outputs: Value,
    /// What the attempt used (summed per subtask and per task; checked against a budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// Tokens and cost an attempt used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_in: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_out: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

/// `POST /assignments/{id}/fail`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailRequest {
    pub error: String,
    /// Whether another attempt may succeed; `true` when absent.
    #[serde(default = "yes")]
    pub retryable: bool,
}

fn yes() -> bool {
    true
}

/// `POST /agents/{id}/results`: several results in one call (one commit for all).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultsRequest {
    pub results: Vec<ResultItem>,
    /// The assignments the agent is still working on; see [`HeartbeatRequest::held`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<Vec<String>>,
}

/// One result: `outputs` for a completion, or `error` (and `retryable`) for a failure.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultItem {
    pub assignment_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
    /// With `outputs`: what the attempt used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// The answer to a results call: one outcome per item, in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultsReply {
    pub results: Vec<ResultOutcome>,
}

/// What the server did with one result: the HTTP status the single call would have
/// answered (200, 403, 404, 409, ...), with the assignment's state or the error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultOutcome {
    pub assignment_id: String,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// The answer to progress, complete and fail.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AssignmentReply {
    pub assignment_id: String,
    /// `active`, `completed`, `failed`, `lost` or `cancelled`.
    pub state: String,
    pub lease_expires_at: Option<String>,
}

/// Every error answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable machine-readable code (`validation_failed`, `not_found`, `conflict`, ...).
    pub error: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldIssue>,
}

/// One invalid field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldIssue {
    pub field: String,
    pub issue: String,
}

/// `GET /healthz`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
}
