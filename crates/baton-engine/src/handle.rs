//! The engine's public face: the [`Handle`] the server holds, the commands it sends, and the
//! data that comes back.

use baton_core::{
    Agent, AgentId, AgentStatus, Assignment, AssignmentId, AssignmentState, Escalation, Millis,
    Phase, Subtask, SubtaskId, Task, TaskId, TaskStatus, Usage,
};

pub use crate::engine::Resolve;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::intake::NewTask;
use crate::Error;
use baton_core::breaker::CircuitView;
use baton_core::plan::Plan;

/// Approval gates set when a task starts: every subtask (`execution_mode: manual`) or the
/// listed ones (`checkpoints`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Gates {
    pub manual: bool,
    pub checkpoints: Vec<SubtaskId>,
}

/// A task and its subtasks as of a reply.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskSnapshot {
    pub task: Task,
    pub subtasks: Vec<Subtask>,
}

/// The outcome of a submission.
#[derive(Clone, Debug, PartialEq)]
pub enum Submitted {
    /// Accepted and committed now.
    Created(TaskSnapshot),
    /// The same body was submitted before; nothing changed.
    Existing(TaskSnapshot),
}

/// A registration request.
#[derive(Clone, Debug)]
pub struct AgentSpec {
    pub name: String,
    pub kind: String,
    pub capabilities: Vec<String>,
    pub domains: Vec<String>,
    pub max_concurrency: u32,
}

/// A new registration: the agent and its token (the only time the token is seen).
#[derive(Clone, Debug)]
pub struct Registered {
    pub agent: Agent,
    pub token: String,
}

/// An agent with its live figures.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentInfo {
    pub agent: Agent,
    /// Effective status: `busy` while an idle agent has work in flight.
    pub status: AgentStatus,
    pub in_flight: u32,
    pub last_seen: Option<Millis>,
    /// Its circuit breaker as of the answer.
    pub circuit: CircuitView,
}

/// One assignment handed out by a lease call.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaseGrant {
    pub assignment: Assignment,
    pub capability: String,
    /// Brief, parameters and the outputs of direct dependencies.
    pub input: Value,
}

/// The answer to a heartbeat.
#[derive(Clone, Debug, PartialEq)]
pub struct HeartbeatInfo {
    pub status: AgentStatus,
    /// The renewed deadline of its leases, when it holds any.
    pub lease_expires_at: Option<Millis>,
    /// Assignments it should abandon (cancelled or lost).
    pub revoked: Vec<AssignmentId>,
}

/// The state of an assignment after progress, complete or fail.
#[derive(Clone, Debug, PartialEq)]
pub struct AssignmentInfo {
    pub assignment_id: AssignmentId,
    pub state: AssignmentState,
    pub lease_expires_at: Option<Millis>,
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// What an agent reports for one attempt: its outputs, or `(error, retryable)`.
pub type AttemptOutcome = Result<(Value, Option<Usage>), (String, bool)>;

/// What the engine can be asked. Token fields carry the sha256 of the bearer token.
pub(crate) enum Command {
    Submit(Box<NewTask>, Reply<Submitted>),
    Execute(TaskId, Gates, Reply<TaskStatus>),
    Cancel(TaskId, Reply<TaskStatus>),
    ReplacePlan(TaskId, Box<Plan>, Reply<TaskSnapshot>),
    Resolve(String, Resolve, Reply<Escalation>),
    DecideGates {
        task_id: TaskId,
        subtask_ids: Option<Vec<SubtaskId>>,
        approve: bool,
        note: Option<String>,
        reply: Reply<Vec<SubtaskId>>,
    },
    AssignManually {
        task_id: TaskId,
        subtask_id: SubtaskId,
        agent_id: AgentId,
        reply: Reply<()>,
    },
    Register(AgentSpec, Reply<Registered>),
    Drain(AgentId, Reply<AgentInfo>),
    Agents(Reply<Vec<AgentInfo>>),
    /// Answer once the task is terminal and durable (at once if the engine does not hold it).
    WaitTerminal(TaskId, Reply<()>),
    Lease {
        agent_id: AgentId,
        token_hash: String,
        max: u32,
        wait_ms: u64,
        held: Option<Vec<AssignmentId>>,
        reply: Reply<Vec<LeaseGrant>>,
    },
    Heartbeat {
        agent_id: AgentId,
        token_hash: String,
        held: Option<Vec<AssignmentId>>,
        reply: Reply<HeartbeatInfo>,
    },
    Progress {
        assignment_id: AssignmentId,
        token_hash: String,
        phase: Phase,
        message: Option<String>,
        reply: Reply<AssignmentInfo>,
    },
    /// Answer once everything sent before has been handled and is durable.
    Sync(Reply<()>),
    Complete {
        assignment_id: AssignmentId,
        token_hash: String,
        outputs: Value,
        usage: Option<Usage>,
        reply: Reply<AssignmentInfo>,
    },
    Fail {
        assignment_id: AssignmentId,
        token_hash: String,
        error: String,
        retryable: bool,
        reply: Reply<AssignmentInfo>,
    },
    /// Several results of one agent: `Ok(outputs)` or `Err((error, retryable))` each.
    Results {
        agent_id: AgentId,
        token_hash: String,
        held: Option<Vec<AssignmentId>>,
        items: Vec<(AssignmentId, AttemptOutcome)>,
        reply: Reply<Vec<Result<AssignmentInfo, Error>>>,
    },
    /// Answer every parked lease poll now and park no more (shutdown is coming).
    Quiesce(oneshot::Sender<()>),
    Shutdown,
}

/// A cheap, cloneable way to talk to the engine.
#[derive(Clone, Debug)]
pub struct Handle {
    pub(crate) tx: mpsc::Sender<Command>,
    /// Set by the engine after a failed commit (it then refuses every change).
    pub(crate) failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Counted by the engine for every bug it caught (an illegal transition).
    pub(crate) internal_errors: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Handle {
    /// Whether the engine accepts changes: false after a commit failed (fail-stop) or once
    /// it has stopped.
    pub fn is_healthy(&self) -> bool {
        !self.failed.load(std::sync::atomic::Ordering::Relaxed) && !self.tx.is_closed()
    }

    /// How many internal errors (illegal transitions: engine bugs) the engine has met. Always
    /// 0 unless something is wrong; scenario tests check it.
    pub fn internal_errors(&self) -> u64 {
        self.internal_errors
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Resolve once every command sent before this one has been handled (with the timers
    /// due by then) and its writes are durable.
    pub async fn sync(&self) -> Result<(), Error> {
        self.ask(Command::Sync).await
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, Error> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// Accept a planned task (and start it when `new.execute`).
    pub async fn submit(&self, new: NewTask) -> Result<Submitted, Error> {
        self.ask(|r| Command::Submit(Box::new(new), r)).await
    }

    /// Start a planned task; a running one stays running.
    pub async fn execute(&self, task_id: TaskId, gates: Gates) -> Result<TaskStatus, Error> {
        self.ask(|r| Command::Execute(task_id, gates, r)).await
    }

    /// Resolve an open escalation; the task continues accordingly.
    pub async fn resolve(
        &self,
        escalation_id: String,
        decision: Resolve,
    ) -> Result<Escalation, Error> {
        self.ask(|r| Command::Resolve(escalation_id, decision, r))
            .await
    }

    /// Approve (`approve: true`) or reject the task's subtasks waiting for approval (`None`:
    /// all of them); returns the ones decided.
    pub async fn decide_gates(
        &self,
        task_id: TaskId,
        subtask_ids: Option<Vec<SubtaskId>>,
        approve: bool,
        note: Option<String>,
    ) -> Result<Vec<SubtaskId>, Error> {
        self.ask(|reply| Command::DecideGates {
            task_id,
            subtask_ids,
            approve,
            note,
            reply,
        })
        .await
    }

    /// Route a ready or blocked subtask by hand to `agent_id` (at its next lease call).
    pub async fn assign_manually(
        &self,
        task_id: TaskId,
        subtask_id: SubtaskId,
        agent_id: AgentId,
    ) -> Result<(), Error> {
        self.ask(|reply| Command::AssignManually {
            task_id,
            subtask_id,
            agent_id,
            reply,
        })
        .await
    }

    /// Replace the plan of a task that is still `planned` (409 once it runs).
    pub async fn replace_plan(&self, task_id: TaskId, plan: Plan) -> Result<TaskSnapshot, Error> {
        self.ask(|r| Command::ReplacePlan(task_id, Box::new(plan), r))
            .await
    }

    /// Cancel a task and its running assignments.
    pub async fn cancel(&self, task_id: TaskId) -> Result<TaskStatus, Error> {
        self.ask(|r| Command::Cancel(task_id, r)).await
    }

    /// Register an agent.
    pub async fn register(&self, spec: AgentSpec) -> Result<Registered, Error> {
        self.ask(|r| Command::Register(spec, r)).await
    }

    /// Stop giving an agent new work; it stops once its assignments finish.
    pub async fn drain(&self, agent_id: AgentId) -> Result<AgentInfo, Error> {
        self.ask(|r| Command::Drain(agent_id, r)).await
    }

    /// Resolve once the task is terminal and its final state committed; resolves at once
    /// for a task the engine does not hold (finished long ago, or unknown).
    pub async fn wait_terminal(&self, task_id: TaskId) -> Result<(), Error> {
        self.ask(|r| Command::WaitTerminal(task_id, r)).await
    }

    /// Every registered agent, stopped ones included.
    pub async fn agents(&self) -> Result<Vec<AgentInfo>, Error> {
        self.ask(Command::Agents).await
    }

    /// Lease up to `max` assignments, waiting up to `wait_ms` for work. `held` renews those
    /// leases of the agent (see [`Handle::heartbeat`]).
    pub async fn lease(
        &self,
        agent_id: AgentId,
        token_hash: String,
        max: u32,
        wait_ms: u64,
        held: Option<Vec<AssignmentId>>,
    ) -> Result<Vec<LeaseGrant>, Error> {
        self.ask(|reply| Command::Lease {
            agent_id,
            token_hash,
            max,
            wait_ms,
            held,
            reply,
        })
        .await
    }

    /// Renew the agent's leases and learn what it should abandon. With `held`, only the
    /// listed assignments are renewed: one whose lease answer never reached the agent then
    /// expires and is retried instead of being kept alive by an agent that does not know it.
    pub async fn heartbeat(
        &self,
        agent_id: AgentId,
        token_hash: String,
        held: Option<Vec<AssignmentId>>,
    ) -> Result<HeartbeatInfo, Error> {
        self.ask(|reply| Command::Heartbeat {
            agent_id,
            token_hash,
            held,
            reply,
        })
        .await
    }

    /// Report a phase of an assignment (renews its lease).
    pub async fn progress(
        &self,
        assignment_id: AssignmentId,
        token_hash: String,
        phase: Phase,
        message: Option<String>,
    ) -> Result<AssignmentInfo, Error> {
        self.ask(|reply| Command::Progress {
            assignment_id,
            token_hash,
            phase,
            message,
            reply,
        })
        .await
    }

    /// Report the outputs of an assignment.
    pub async fn complete(
        &self,
        assignment_id: AssignmentId,
        token_hash: String,
        outputs: Value,
        usage: Option<Usage>,
    ) -> Result<AssignmentInfo, Error> {
        self.ask(|reply| Command::Complete {
            assignment_id,
            token_hash,
            outputs,
            usage,
            reply,
        })
        .await
    }

    /// Report the failure of an assignment.
    pub async fn fail(
        &self,
        assignment_id: AssignmentId,
        token_hash: String,
        error: String,
        retryable: bool,
    ) -> Result<AssignmentInfo, Error> {
        self.ask(|reply| Command::Fail {
            assignment_id,
            token_hash,
            error,
            retryable,
            reply,
        })
        .await
    }

    /// Report several results of one agent at once (one commit for all). Each item is
    /// settled on its own: the answer lists, in order, what `complete`/`fail` would have said.
    /// The call counts as a heartbeat; `held` renews those leases (see [`Handle::heartbeat`]).
    pub async fn results(
        &self,
        agent_id: AgentId,
        token_hash: String,
        held: Option<Vec<AssignmentId>>,
        items: Vec<(AssignmentId, AttemptOutcome)>,
    ) -> Result<Vec<Result<AssignmentInfo, Error>>, Error> {
        self.ask(|reply| Command::Results {
            agent_id,
            token_hash,
            held,
            items,
            reply,
        })
        .await
    }

    /// Answer parked lease polls at once and stop parking new ones, so that HTTP shutdown
    /// need not wait out long polls.
    pub async fn quiesce(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Quiesce(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Ask the loop to stop after committing what it has accepted.
    pub async fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown).await;
    }
}
