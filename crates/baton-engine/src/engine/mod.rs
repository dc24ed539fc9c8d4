//! The event loop and the state it owns. Command handlers live in the submodules:
//! `tasks` (submit, execute, cancel, aggregation), `agents` (registration, leases, dispatch,
//! health), `routing` (choosing an agent, learning from outcomes, circuit breakers),
//! `results` (progress, complete, fail, lost leases, retries) and `recovery`.

mod agents;
mod governance;

pub use governance::Resolve;
mod recovery;
mod results;
mod routing;
mod tasks;

use results::AttemptResult;

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use baton_core::breaker::Breaker;
use baton_core::{
    Agent, AgentId, Assignment, AssignmentId, Change, Escalation, Event, IllegalTransition, Millis,
    Priority, Subtask, SubtaskState, Task, TaskId, Verification,
};
use baton_store::{PlanReplacement, Store, SubtaskUpdate, TaskUpdate, WriteBatch};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

use crate::committer::{self, Deferred, Flush, Outcome};
use crate::handle::{Command, Handle, LeaseGrant, Reply, Submitted};
use crate::intake::NewTask;
use crate::timers::{Timer, Timers};
use crate::{Clock, Config, Error};

/// Commands handled per turn before the turn's writes are flushed.
const MAX_COMMANDS_PER_TURN: usize = 4096;
/// How often agents are checked for missed heartbeats (and learned stats may be written).
const HEALTH_SWEEP_MS: i64 = 1_000;
/// Mixed into the configured seed for routing's generator.
const ROUTING_SEED_SALT: u64 = 0x5eed_0f4a_u64;

/// Order of a ready queue: higher priority first, then older tasks (so workflows in flight
/// finish before new ones start), then plan order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ReadyKey {
    priority: Reverse<Priority>,
    seq: i64,
    idx: u32,
}

impl ReadyKey {
    pub(crate) fn new(priority: Priority, seq: i64, idx: u32) -> ReadyKey {
        ReadyKey {
            priority: Reverse(priority),
            seq,
            idx,
        }
    }
}

pub(crate) struct TaskRt {
    pub task: Task,
    pub subs: Vec<SubRt>,
    /// Subtasks not yet terminal.
    pub open: usize,
    /// Every assignment of this task held in memory, dropped with it on eviction.
    pub assignments: Vec<AssignmentId>,
    /// Escalations of this task so far (numbers the next one's id).
    pub escalations: u32,
    /// The open budget escalation that stops new dispatch for this task.
    pub paused: Option<String>,
    /// Ready subtasks held back while paused: `(capability, key)`.
    pub held_back: Vec<(String, ReadyKey)>,
}

impl TaskRt {
    /// Live state of a task: each subtask knows its dependents and how many of its
    /// dependencies are not done (completed or skipped) yet. Works for new tasks and for recovered ones.
    /// Edges are plan indices both ways, so a plan costs memory by its size, not by its edge
    /// count times the length of an id.
    pub fn new(task: Task, mut subtasks: Vec<Subtask>) -> TaskRt {
        subtasks.sort_by_key(|s| s.index);
        let mut dependents = vec![Vec::new(); subtasks.len()];
        let mut waiting = vec![0u32; subtasks.len()];
        for (i, s) in subtasks.iter().enumerate() {
            for &d in &s.depends_on {
                if let Some(dep) = subtasks.get(d as usize) {
                    dependents[d as usize].push(i as u32);
                    if !dep.state.is_done() {
                        waiting[i] += 1;
                    }
                }
            }
        }
        for list in &mut dependents {
            list.shrink_to_fit();
        }
        let open = subtasks.iter().filter(|s| !s.state.is_terminal()).count();
        let subs = subtasks
            .into_iter()
            .zip(dependents.into_iter().zip(waiting))
            .map(|(sub, (dependents, waiting))| SubRt {
                tried: sub.assigned_agent.iter().cloned().collect(),
                sub,
                waiting,
                dependents,
                current: None,
                gov: None,
            })
            .collect();
        TaskRt {
            task,
            subs,
            open,
            assignments: Vec::new(),
            escalations: 0,
            paused: None,
            held_back: Vec::new(),
        }
    }
}

impl AsRef<Subtask> for SubRt {
    fn as_ref(&self) -> &Subtask {
        &self.sub
    }
}

pub(crate) struct SubRt {
    pub sub: Subtask,
    /// Dependencies not yet done (completed or skipped).
    pub waiting: u32,
    /// Indices of the subtasks that depend on this one.
    pub dependents: Vec<u32>,
    /// The live assignment, if any.
    pub current: Option<AssignmentId>,
    /// Agents that ran earlier attempts.
    pub tried: Vec<AgentId>,
    /// Governance state, boxed: most subtasks never fail, get verified or escalate, and a
    /// plan may hold many subtasks.
    pub gov: Option<Box<SubGov>>,
}

/// What governance remembers of a subtask.
#[derive(Default)]
pub(crate) struct SubGov {
    /// How each attempt ended (agent, outcome, error), the evidence of an escalation.
    pub log: Vec<serde_json::Value>,
    /// Attempts used before the last `retry` resolution: the attempt budget counts from here.
    pub attempt_base: u32,
    /// Every verdict on this subtask, in order.
    pub verdicts: Vec<Verification>,
    /// Verdicts before the last `retry` resolution: negative verdicts count from here.
    pub verdict_base: usize,
    /// Its open escalation.
    pub escalation: Option<String>,
    /// Skipped by a human (`skip`): its dependents go on, unlike after a false condition.
    pub skipped_by_human: bool,
}

impl SubRt {
    pub fn gov(&self) -> Option<&SubGov> {
        self.gov.as_deref()
    }

    pub fn gov_mut(&mut self) -> &mut SubGov {
        self.gov.get_or_insert_with(Default::default)
    }
}

pub(crate) struct AsgRt {
    pub a: Assignment,
    pub seq: i64,
    pub idx: u32,
    pub timeout_at: Millis,
    pub phase: Option<baton_core::Phase>,
    /// A verification assignment its agent has named (work is acknowledged through its
    /// subtask's state).
    pub acked: bool,
}

pub(crate) struct Poll {
    pub id: u64,
    pub max: u32,
    pub grants: Vec<LeaseGrant>,
    pub reply: Reply<Vec<LeaseGrant>>,
}

pub(crate) struct AgentRt {
    pub agent: Agent,
    pub in_flight: HashSet<AssignmentId>,
    pub last_seen: Option<Millis>,
    pub poll: Option<Poll>,
    /// Assignments taken away from it, reported at its next heartbeat.
    pub revoked: Vec<AssignmentId>,
    /// Its circuit (not persisted: a restart closes every circuit).
    pub breaker: Breaker,
    /// `agent.stats` changed since the agent's row was last written.
    pub stats_dirty: bool,
}

/// What the current turn changed, and the replies waiting for it. Rows are only marked here
/// and read from live state at flush, so a row changed many times in one turn is written
/// once, and a task created and changed in one turn is inserted in its final shape.
#[derive(Default)]
struct Outbox {
    /// Tasks created this turn, in order (inserted whole with their subtasks).
    new_tasks: Vec<i64>,
    /// Tasks whose plan was replaced this turn (their subtasks rewritten whole).
    plans: Vec<i64>,
    tasks: HashSet<i64>,
    subtasks: HashSet<(i64, u32)>,
    assignments: HashSet<AssignmentId>,
    agents: HashSet<AgentId>,
    verifications: Vec<Verification>,
    escalations: Vec<Escalation>,
    events: Vec<Event>,
    replies: Vec<Deferred>,
}

impl Outbox {
    fn is_empty(&self) -> bool {
        self.new_tasks.is_empty()
            && self.plans.is_empty()
            && self.tasks.is_empty()
            && self.subtasks.is_empty()
            && self.assignments.is_empty()
            && self.agents.is_empty()
            && self.verifications.is_empty()
            && self.escalations.is_empty()
            && self.events.is_empty()
            && self.replies.is_empty()
    }
}

pub(crate) struct Engine {
    config: Config,
    clock: Arc<dyn Clock>,
    /// Ids, tokens and jitter: seeded once, so a seeded engine is reproducible.
    rng: StdRng,
    /// Routing's exploration, seeded from the same seed (its draws do not shift `rng`'s).
    routing_rng: StdRng,
    /// Round-robin routing: the agent that got the last subtask, per capability.
    rr_cursor: HashMap<String, AgentId>,
    /// When learned stats were last written.
    stats_written_at: Millis,
    store: Arc<dyn Store>,
    tasks: HashMap<i64, TaskRt>,
    task_ids: HashMap<TaskId, i64>,
    next_seq: i64,
    /// Submissions of client-chosen ids waiting for a store lookup, by id.
    pending_submits: HashMap<TaskId, Vec<PendingSubmit>>,
    agents: HashMap<AgentId, AgentRt>,
    tokens: HashMap<String, AgentId>,
    /// Agents that accept work, per capability.
    capable: HashMap<String, BTreeSet<AgentId>>,
    /// Agents with a parked lease poll and a free slot, per capability.
    parked: HashMap<String, BTreeSet<AgentId>>,
    ready: HashMap<String, BTreeSet<ReadyKey>>,
    blocked: HashMap<String, BTreeSet<ReadyKey>>,
    /// Capabilities whose queue or parked agents changed this turn (ordered: dispatch order
    /// shows in the timeline).
    dirty: BTreeSet<String>,
    /// Agents whose poll may need answering at the end of this turn.
    pending_polls: BTreeSet<AgentId>,
    assignments: HashMap<AssignmentId, AsgRt>,
    timers: Timers,
    outbox: Outbox,
    /// Number of the flush the current turn will produce.
    flush_no: u64,
    /// Terminal tasks to drop from memory once the flush that finished them is durable.
    evictions: VecDeque<(u64, i64)>,
    flush_tx: mpsc::UnboundedSender<Flush>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    /// Set after a failed commit: every later change is refused.
    failed: Option<String>,
    poll_ids: u64,
    /// Clients waiting for a task to finish, by task seq.
    waiters: HashMap<i64, Vec<Reply<()>>>,
    /// Shutdown is coming: lease polls are answered at once instead of parked.
    quiesced: bool,
    stopping: bool,
    committer: Option<tokio::task::JoinHandle<()>>,
    /// Shared with every [`Handle`], so health checks see a failed commit.
    failed_flag: Arc<AtomicBool>,
    /// Bugs caught so far (illegal transitions), shared with every [`Handle`].
    internal_errors: Arc<AtomicU64>,
    /// Open escalations, by id.
    escalations: HashMap<String, Escalation>,
    /// Subtasks routed by hand, waiting for their agent's next lease call.
    pinned: std::collections::BTreeMap<AgentId, VecDeque<(i64, u32)>>,
}

/// A submission waiting for the store lookup of its task id.
pub(crate) type PendingSubmit = (Box<NewTask>, Reply<Submitted>);

/// A stored task with its subtasks.
pub(crate) type StoredTask = (Task, Vec<Subtask>);

/// Messages the engine sends itself from spawned work.
pub(crate) enum Internal {
    Commit(Outcome),
    /// The store lookup for a client-chosen task id finished.
    Looked(TaskId, Result<Option<Box<StoredTask>>, String>),
}

impl Engine {
    pub(crate) async fn start(
        config: Config,
        store: Arc<dyn Store>,
    ) -> Result<(Handle, tokio::task::JoinHandle<()>), baton_store::Error> {
        let recovered = store.recover().await?;
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let (flush_tx, flush_rx) = mpsc::unbounded_channel();
        let (outcome_tx, mut outcome_rx) = mpsc::unbounded_channel();
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        let committer = tokio::spawn(committer::run(store.clone(), flush_rx, outcome_tx));
        let forward = internal_tx.clone();
        tokio::spawn(async move {
            while let Some(outcome) = outcome_rx.recv().await {
                if forward.send(Internal::Commit(outcome)).is_err() {
                    break;
                }
            }
        });
        let failed = Arc::new(AtomicBool::new(false));
        let internal_errors = Arc::new(AtomicU64::new(0));
        let (rng, routing_rng) = match config.seed {
            Some(seed) => (
                StdRng::seed_from_u64(seed),
                StdRng::seed_from_u64(seed ^ ROUTING_SEED_SALT),
            ),
            None => (StdRng::from_entropy(), StdRng::from_entropy()),
        };
        let clock = config.clock.clone();
        let mut engine = Engine {
            config,
            clock: clock.clone(),
            rng,
            routing_rng,
            rr_cursor: HashMap::new(),
            stats_written_at: clock.now(),
            store,
            tasks: HashMap::new(),
            task_ids: HashMap::new(),
            next_seq: recovered.max_seq + 1,
            pending_submits: HashMap::new(),
            agents: HashMap::new(),
            tokens: HashMap::new(),
            capable: HashMap::new(),
            parked: HashMap::new(),
            ready: HashMap::new(),
            blocked: HashMap::new(),
            dirty: BTreeSet::new(),
            pending_polls: BTreeSet::new(),
            assignments: HashMap::new(),
            timers: Timers::default(),
            outbox: Outbox::default(),
            flush_no: 1,
            evictions: VecDeque::new(),
            flush_tx,
            internal_tx,
            failed: None,
            poll_ids: 0,
            waiters: HashMap::new(),
            quiesced: false,
            stopping: false,
            committer: Some(committer),
            failed_flag: failed.clone(),
            internal_errors: internal_errors.clone(),
            escalations: HashMap::new(),
            pinned: Default::default(),
        };
        let now = clock.now();
        engine.recover(recovered, now);
        engine.timers.at(now + HEALTH_SWEEP_MS, Timer::HealthSweep);
        engine.end_turn(now);
        let join = tokio::spawn(engine.run(rx, internal_rx));
        Ok((
            Handle {
                tx,
                failed,
                internal_errors,
            },
            join,
        ))
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        mut internal: mpsc::UnboundedReceiver<Internal>,
    ) {
        loop {
            let deadline = self.timers.next_deadline();
            let sleep = async {
                match deadline {
                    Some(at) => self.clock.sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                Some(msg) = internal.recv() => self.on_internal(msg),
                cmd = rx.recv(), if !self.stopping => match cmd {
                    Some(cmd) => {
                        self.on_command(cmd);
                        let mut n = 1;
                        while n < MAX_COMMANDS_PER_TURN && !self.stopping {
                            match rx.try_recv() {
                                Ok(cmd) => self.on_command(cmd),
                                Err(_) => break,
                            }
                            n += 1;
                        }
                    }
                    None => self.stopping = true,
                },
                _ = sleep => {}
            }
            self.end_turn(self.clock.now());
            if self.stopping && self.pending_submits.is_empty() {
                break;
            }
        }
        // What routing learned since the last sweep goes with the last flush.
        self.write_learned_stats(self.clock.now(), true);
        // Hand the last flush to the committer and let it finish: dropping our sender ends it.
        self.flush();
        let committer = self.committer.take();
        drop(self);
        if let Some(committer) = committer {
            let _ = committer.await;
        }
        tracing::info!("engine stopped");
    }

    /// Dispatch what this turn's commands made possible (before a zero-wait poll's timer
    /// answers it), fire due timers, dispatch what they freed, and flush.
    fn end_turn(&mut self, now: Millis) {
        self.dispatch_or_log(now);
        while let Some(timer) = self.timers.pop_due(now) {
            self.on_timer(timer, now);
        }
        self.dispatch_or_log(now);
        self.flush();
    }

    fn dispatch_or_log(&mut self, now: Millis) {
        if let Err(e) = self.dispatch(now) {
            // Already logged and counted where it happened; say what it interrupted.
            tracing::error!(error = %e, "dispatch stopped");
        }
    }

    fn flush(&mut self) {
        let mut outbox = std::mem::take(&mut self.outbox);
        if outbox.is_empty() {
            return;
        }
        let flush = Flush {
            no: self.flush_no,
            batch: self.materialize(&mut outbox),
            replies: outbox.replies,
        };
        self.flush_no += 1;
        if self.flush_tx.send(flush).is_err() {
            tracing::error!("committer is gone");
        }
    }

    fn on_internal(&mut self, msg: Internal) {
        match msg {
            Internal::Commit(Outcome::Durable(no)) => {
                while let Some(&(at, seq)) = self.evictions.front() {
                    if at > no {
                        break;
                    }
                    self.evictions.pop_front();
                    self.evict(seq);
                }
            }
            Internal::Commit(Outcome::Failed(error)) => {
                self.failed = Some(error);
                self.failed_flag.store(true, Ordering::Relaxed);
            }
            Internal::Looked(task_id, found) => {
                let now = self.clock.now();
                self.on_looked(task_id, found, now)
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        let now = self.clock.now();
        if let Some(error) = &self.failed {
            let error = Error::Unavailable(error.clone());
            refuse(cmd, error);
            return;
        }
        match cmd {
            Command::Submit(new, reply) => self.submit(new, reply, now),
            Command::Execute(task_id, gates, reply) => {
                let result = self.execute(&task_id, gates, now);
                self.reply(reply, result);
            }
            Command::Resolve(id, decision, reply) => {
                let result = self.resolve(&id, decision, now);
                self.reply(reply, result);
            }
            Command::DecideGates {
                task_id,
                subtask_ids,
                approve,
                note,
                reply,
            } => {
                let result = self.decide_gates(&task_id, subtask_ids, approve, note, now);
                self.reply(reply, result);
            }
            Command::AssignManually {
                task_id,
                subtask_id,
                agent_id,
                reply,
            } => {
                let result = self.assign_manually(&task_id, &subtask_id, &agent_id, now);
                self.reply(reply, result);
            }
            Command::Cancel(task_id, reply) => {
                let result = self.cancel(&task_id, now);
                self.reply(reply, result);
            }
            Command::ReplacePlan(task_id, plan, reply) => {
                let result = self.replace_plan(&task_id, *plan, now);
                self.reply(reply, result);
            }
            Command::Register(spec, reply) => {
                let result = self.register(spec, now);
                self.reply(reply, result);
            }
            Command::Drain(agent_id, reply) => {
                let result = self.drain(&agent_id, now);
                self.reply(reply, result);
            }
            Command::WaitTerminal(task_id, reply) => match self.task_ids.get(&task_id) {
                Some(seq) if !self.tasks[seq].task.status.is_terminal() => {
                    self.waiters.entry(*seq).or_default().push(reply);
                }
                _ => self.reply(reply, Ok(())),
            },
            Command::Agents(reply) => {
                let result = Ok(self.agent_infos(now));
                self.reply(reply, result);
            }
            Command::Lease {
                agent_id,
                token_hash,
                max,
                wait_ms,
                held,
                reply,
            } => {
                let wait_ms = if self.quiesced { 0 } else { wait_ms };
                self.lease(agent_id, &token_hash, max, wait_ms, held, reply, now)
            }
            Command::Heartbeat {
                agent_id,
                token_hash,
                held,
                reply,
            } => {
                let result = self.heartbeat(&agent_id, &token_hash, held, now);
                self.reply(reply, result);
            }
            Command::Quiesce(done) => {
                self.quiesced = true;
                let mut parked: Vec<AgentId> = self
                    .agents
                    .values()
                    .filter(|a| a.poll.is_some())
                    .map(|a| a.agent.agent_id.clone())
                    .collect();
                parked.sort();
                for id in parked {
                    self.answer_poll(&id);
                }
                self.outbox.replies.push(Box::new(move |_| {
                    let _ = done.send(());
                }));
            }
            Command::Progress {
                assignment_id,
                token_hash,
                phase,
                message,
                reply,
            } => self.progress(assignment_id, &token_hash, phase, message, reply, now),
            Command::Sync(reply) => self.reply(reply, Ok(())),
            Command::Complete {
                assignment_id,
                token_hash,
                outputs,
                usage,
                reply,
            } => {
                let result = AttemptResult::Outputs(outputs, usage);
                self.report(assignment_id, &token_hash, result, reply, now)
            }
            Command::Fail {
                assignment_id,
                token_hash,
                error,
                retryable,
                reply,
            } => {
                let result = AttemptResult::Failure { error, retryable };
                self.report(assignment_id, &token_hash, result, reply, now)
            }
            Command::Results {
                agent_id,
                token_hash,
                held,
                items,
                reply,
            } => {
                let items = items
                    .into_iter()
                    .map(|(id, r)| {
                        let r = match r {
                            Ok((outputs, usage)) => AttemptResult::Outputs(outputs, usage),
                            Err((error, retryable)) => AttemptResult::Failure { error, retryable },
                        };
                        (id, r)
                    })
                    .collect();
                self.report_many(&agent_id, &token_hash, held, items, reply, now)
            }
            Command::Shutdown => self.stopping = true,
        }
    }

    fn on_timer(&mut self, timer: Timer, now: Millis) {
        let result = match &timer {
            Timer::Lease(id) => self.check_lease(id, now),
            Timer::Timeout(id) => self.check_timeout(id, now),
            Timer::Retry(seq, idx) => self.retry_due(*seq, *idx, now),
            Timer::Poll(agent_id, poll_id) => {
                self.poll_expired(agent_id, *poll_id);
                Ok(())
            }
            Timer::HealthSweep => {
                self.timers.at(now + HEALTH_SWEEP_MS, Timer::HealthSweep);
                self.write_learned_stats(now, false);
                self.health_sweep(now).and_then(|()| self.budget_sweep(now))
            }
            Timer::CircuitCooled(agent_id) => {
                self.circuit_cooled(agent_id, now);
                Ok(())
            }
        };
        if let Err(e) = result {
            // Already logged and counted where it happened; say what it interrupted.
            tracing::error!(timer = ?timer, error = %e, "timer handling stopped");
        }
    }

    /// Send `result` once everything written so far is durable.
    pub(crate) fn reply<T: Send + 'static>(&mut self, reply: Reply<T>, result: Result<T, Error>) {
        self.outbox.replies.push(Box::new(move |failure| {
            let result = match failure {
                None => result,
                Some(e) => Err(Error::Unavailable(e.to_owned())),
            };
            let _ = reply.send(result);
        }));
    }

    // ---- writes: mark now, read at flush ----

    pub(crate) fn write_new_task(&mut self, seq: i64) {
        self.outbox.new_tasks.push(seq);
    }

    pub(crate) fn write_plan(&mut self, seq: i64) {
        self.outbox.plans.push(seq);
    }

    pub(crate) fn write_task(&mut self, seq: i64) {
        self.outbox.tasks.insert(seq);
    }

    pub(crate) fn write_subtask(&mut self, seq: i64, idx: u32) {
        self.outbox.subtasks.insert((seq, idx));
    }

    pub(crate) fn write_assignment(&mut self, id: &AssignmentId) {
        if !self.outbox.assignments.contains(id) {
            self.outbox.assignments.insert(id.clone());
        }
    }

    /// Mark an agent's row (with its learned stats) for this turn's flush.
    pub(crate) fn write_agent(&mut self, id: &AgentId) {
        if !self.outbox.agents.contains(id) {
            self.outbox.agents.insert(id.clone());
        }
        if let Some(rt) = self.agents.get_mut(id) {
            rt.stats_dirty = false;
        }
    }

    pub(crate) fn event(&mut self, event: Event) {
        self.outbox.events.push(event);
    }

    /// The rows a turn marked, as they are now. A marked row is always in memory: tasks
    /// leave memory only after the flush that finished them is durable.
    fn materialize(&self, outbox: &mut Outbox) -> WriteBatch {
        let mut batch = WriteBatch::default();
        let new: HashSet<i64> = outbox.new_tasks.iter().copied().collect();
        for seq in &outbox.new_tasks {
            if let Some(rt) = self.tasks.get(seq) {
                batch.new_tasks.push(rt.task.clone());
                batch
                    .new_subtasks
                    .extend(rt.subs.iter().map(|s| s.sub.clone()));
            }
        }
        for seq in std::mem::take(&mut outbox.plans) {
            if let Some(rt) = self.tasks.get(&seq) {
                batch.plans.push(PlanReplacement {
                    task_id: rt.task.task_id.clone(),
                    context: rt.task.context.clone(),
                    subtasks: rt.subs.iter().map(|s| s.sub.clone()).collect(),
                });
            }
        }
        for seq in outbox.tasks.iter().filter(|s| !new.contains(s)) {
            if let Some(rt) = self.tasks.get(seq) {
                let t = &rt.task;
                batch.task_updates.push(TaskUpdate {
                    task_id: t.task_id.clone(),
                    status: t.status,
                    started_at: t.started_at,
                    finished_at: t.finished_at,
                    result: t.result.clone(),
                    context: t.context.clone(),
                });
            }
        }
        for (seq, idx) in outbox.subtasks.iter().filter(|(s, _)| !new.contains(s)) {
            if let Some(s) = self.sub(*seq, *idx) {
                let s = &s.sub;
                batch.subtask_updates.push(SubtaskUpdate {
                    task_id: s.task_id.clone(),
                    index: s.index,
                    subtask_id: s.subtask_id.clone(),
                    state: s.state,
                    attempts: s.attempts,
                    assigned_agent: s.assigned_agent.clone(),
                    outputs: s.outputs.clone(),
                    error: s.error.clone(),
                    updated_at: s.updated_at,
                    usage: s.usage,
                });
            }
        }
        batch.assignments = outbox
            .assignments
            .iter()
            .filter_map(|id| self.assignments.get(id).map(|a| a.a.clone()))
            .collect();
        batch.agents = outbox
            .agents
            .iter()
            .filter_map(|id| self.agents.get(id).map(|a| a.agent.clone()))
            .collect();
        batch.verifications = std::mem::take(&mut outbox.verifications);
        batch.escalations = std::mem::take(&mut outbox.escalations);
        batch.events = std::mem::take(&mut outbox.events);
        batch
    }

    pub(crate) fn sub(&self, seq: i64, idx: u32) -> Option<&SubRt> {
        self.tasks.get(&seq)?.subs.get(idx as usize)
    }

    pub(crate) fn sub_mut(&mut self, seq: i64, idx: u32) -> Option<&mut SubRt> {
        self.tasks.get_mut(&seq)?.subs.get_mut(idx as usize)
    }

    /// An illegal transition, which is a bug of the engine: logged with its context, counted
    /// (scenario tests fail on any), and answered 500. The caller stops what it was doing.
    pub(crate) fn bug(&self, context: String, e: IllegalTransition) -> Error {
        self.internal_errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(context = %context, error = %e, "engine attempted an illegal transition");
        Error::Internal(format!("{context}: {e}"))
    }

    /// A record the engine's own indexes point at is missing: a bug as well.
    pub(crate) fn missing(&self, what: String) -> Error {
        self.internal_errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(what = %what, "engine lost track of a record");
        Error::Internal(format!("{what} is missing"))
    }

    /// Move a subtask to `to` (through the core state machine), stamp it, write it and
    /// append the event.
    pub(crate) fn set_state(
        &mut self,
        seq: i64,
        idx: u32,
        to: SubtaskState,
        agent: Option<AgentId>,
        note: Option<String>,
        now: Millis,
    ) -> Result<(), Error> {
        let Some(s) = self
            .tasks
            .get_mut(&seq)
            .and_then(|rt| rt.subs.get_mut(idx as usize))
        else {
            return Err(self.missing(format!("subtask {idx} of task #{seq}")));
        };
        let from = match s.sub.set_state(to, now) {
            Ok(from) => from,
            Err(e) => {
                let context = format!("subtask {}", s.sub.subtask_id);
                return Err(self.bug(context, e));
            }
        };
        let subtask_id = s.sub.subtask_id.clone();
        let rt = self.tasks.get_mut(&seq).expect("checked above");
        if to.is_terminal() {
            rt.open -= 1;
        }
        let event = Event {
            task_id: rt.task.task_id.clone(),
            at: now,
            change: Change::Subtask {
                subtask_id,
                from,
                to,
            },
            agent,
            note,
        };
        self.event(event);
        self.write_subtask(seq, idx);
        Ok(())
    }

    /// Queue a subtask that just became `ready`, or block it if no agent offers its capability.
    pub(crate) fn enqueue_ready(&mut self, seq: i64, idx: u32, now: Millis) -> Result<(), Error> {
        let Some(rt) = self.tasks.get(&seq) else {
            return Err(self.missing(format!("task #{seq}")));
        };
        let priority = rt.task.priority;
        let cap = rt.subs[idx as usize].sub.capability.clone();
        let key = ReadyKey {
            priority: Reverse(priority),
            seq,
            idx,
        };
        if self.capable.get(&cap).is_some_and(|s| !s.is_empty()) {
            self.ready.entry(cap.clone()).or_default().insert(key);
            self.dirty.insert(cap);
        } else {
            let note = Some(format!("no registered agent offers capability {cap:?}"));
            self.set_state(seq, idx, SubtaskState::Blocked, None, note, now)?;
            tracing::warn!(capability = %cap, task_seq = seq, "subtask blocked: no capable agent");
            self.blocked.entry(cap).or_default().insert(key);
        }
        Ok(())
    }

    /// Drop a durable terminal task from memory.
    fn evict(&mut self, seq: i64) {
        let Some(rt) = self.tasks.get(&seq) else {
            return;
        };
        if !rt.task.status.is_terminal() {
            return;
        }
        if let Some(rt) = self.tasks.remove(&seq) {
            self.task_ids.remove(&rt.task.task_id);
            for id in &rt.assignments {
                self.assignments.remove(id);
            }
        }
    }

    /// Remember to evict a task once this turn's flush is durable.
    pub(crate) fn evict_when_durable(&mut self, seq: i64) {
        self.evictions.push_back((self.flush_no, seq));
    }
}

/// Assignment ids are derived from (task seq, subtask index, attempt): unique, stable across
/// restarts, and cheap to make.
pub(crate) fn assignment_id(seq: i64, idx: u32, attempt: u32) -> AssignmentId {
    AssignmentId(format!("as-{seq}-{idx}-{attempt}"))
}

/// A fresh id: a UUID v7 (time-ordered) of the engine's clock and generator, in simple form.
pub(crate) fn new_uuid(rng: &mut StdRng, now: Millis) -> String {
    let random: [u8; 10] = rng.gen();
    uuid::Builder::from_unix_timestamp_millis(now.max(0) as u64, &random)
        .into_uuid()
        .simple()
        .to_string()
}

/// Answer a command with an error without touching state.
fn refuse(cmd: Command, error: Error) {
    match cmd {
        Command::Submit(_, r) => drop(r.send(Err(error))),
        Command::Execute(_, _, r) | Command::Cancel(_, r) => drop(r.send(Err(error))),
        Command::Resolve(_, _, r) => drop(r.send(Err(error))),
        Command::DecideGates { reply, .. } => drop(reply.send(Err(error))),
        Command::AssignManually { reply, .. } => drop(reply.send(Err(error))),
        Command::ReplacePlan(_, _, r) => drop(r.send(Err(error))),
        Command::Register(_, r) => drop(r.send(Err(error))),
        Command::Drain(_, r) => drop(r.send(Err(error))),
        Command::Agents(r) => drop(r.send(Err(error))),
        Command::WaitTerminal(_, r) => drop(r.send(Err(error))),
        Command::Lease { reply, .. } => drop(reply.send(Err(error))),
        Command::Heartbeat { reply, .. } => drop(reply.send(Err(error))),
        Command::Progress { reply, .. }
        | Command::Complete { reply, .. }
        | Command::Fail { reply, .. } => drop(reply.send(Err(error))),
        Command::Results { reply, .. } => drop(reply.send(Err(error))),
        Command::Sync(reply) => drop(reply.send(Err(error))),
        Command::Quiesce(done) => drop(done.send(())),
        Command::Shutdown => {}
    }
}
