//! The scenario harness: a real engine on a fresh SQLite file, driven by commands and a
//! [`ManualClock`], with agents named by the test. Nothing sleeps: time moves only in
//! [`Scenario::advance`], which also waits until the engine has handled every timer now due
//! and committed what followed. Timelines are read back from the store and rendered as text
//! (relative times, agent names, plan keys) for `insta` snapshots.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use baton_api as api;
use baton_core::{AgentId, AssignmentId, Change, Millis, Phase, TaskId};
use baton_engine::intake::{self, NewTask};
use baton_engine::{
    AgentInfo, AssignmentInfo, Config, Error, Handle, HeartbeatInfo, LeaseGrant, ManualClock,
    Submitted,
};
use baton_store::{SqliteStore, Store};
use serde_json::{json, Value};
use tempfile::TempDir;

/// Where every scenario's clock starts (2023-11-14T22:13:20Z).
pub const START: Millis = 1_700_000_000_000;
/// The lease of the scenarios' engine (the default).
pub const LEASE_MS: Millis = 30_000;

/// A registered agent as the test knows it.
#[derive(Clone, Debug)]
pub struct Agent {
    pub name: String,
    pub id: AgentId,
    pub token_hash: String,
}

pub struct Scenario {
    pub clock: Arc<ManualClock>,
    pub engine: Handle,
    join: Option<tokio::task::JoinHandle<()>>,
    pub store: Arc<dyn Store>,
    dir: TempDir,
    config: Config,
    agents: BTreeMap<String, Agent>,
}

impl Scenario {
    pub async fn new() -> Scenario {
        Self::with(|config| config).await
    }

    /// A scenario whose engine settings `adjust` derives from the default ones: defaults, a
    /// seeded generator and the scenario's manual clock.
    pub async fn with(adjust: impl FnOnce(Config) -> Config) -> Scenario {
        let clock = Arc::new(ManualClock::new(START));
        let config = adjust(Config {
            clock: clock.clone(),
            seed: Some(7),
            ..Config::default()
        });
        let dir = TempDir::new().expect("temp dir");
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).expect("open store"));
        let (engine, join) = baton_engine::start(config.clone(), store.clone())
            .await
            .expect("engine starts");
        Scenario {
            clock,
            engine,
            join: Some(join),
            store,
            dir,
            config,
            agents: BTreeMap::new(),
        }
    }

    /// Stop this engine (after it committed what it accepted) and start a second one on the
    /// same database file, as a restarted `baton serve` would. Agents keep their tokens.
    pub async fn restart(mut self) -> Scenario {
        self.check_no_internal_errors();
        self.engine.shutdown().await;
        if let Some(join) = self.join.take() {
            join.await.expect("engine loop ends cleanly");
        }
        drop(self.store);
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(self.dir.path()).expect("reopen store"));
        let (engine, join) = baton_engine::start(self.config.clone(), store.clone())
            .await
            .expect("engine restarts");
        Scenario {
            engine,
            join: Some(join),
            store,
            ..self
        }
    }

    /// Move the clock by `ms` and wait until the engine has handled what became due.
    pub async fn advance(&self, ms: Millis) {
        self.clock.advance(ms);
        self.engine.sync().await.expect("engine in sync");
    }

    /// Milliseconds since the scenario started.
    pub fn elapsed(&self) -> Millis {
        use baton_engine::Clock;
        self.clock.now() - START
    }

    pub fn check_no_internal_errors(&self) {
        assert_eq!(
            self.engine.internal_errors(),
            0,
            "the engine met an internal error (an illegal transition): see the log"
        );
    }

    /// Register an agent called `name` (the test's name for it).
    pub async fn register(&mut self, name: &str, capabilities: &[&str], max: u32) -> Agent {
        let request = api::RegisterAgent {
            name: name.into(),
            kind: None,
            capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
            domains: Vec::new(),
            max_concurrency: Some(max),
        };
        let spec = intake::accept(&serde_json::to_vec(&request).unwrap(), intake::registration)
            .expect("valid registration");
        let registered = self.engine.register(spec).await.expect("registered");
        let agent = Agent {
            name: name.into(),
            id: registered.agent.agent_id.clone(),
            token_hash: baton_engine::hash_token(&registered.token),
        };
        self.agents.insert(name.into(), agent.clone());
        agent
    }

    pub fn agent(&self, name: &str) -> Agent {
        self.agents[name].clone()
    }

    /// A task `id` with a plan of `(key, capability, depends_on)` steps, through the intake.
    pub fn task(id: &str, steps: &[(&str, &str, &[&str])], priority: &str) -> NewTask {
        let body = json!({
            "task_id": id,
            "title": format!("task {id}"),
            "description": "a scenario",
            "priority": priority,
            "plan": {"subtasks": steps.iter().map(|(key, cap, deps)| json!({
                "id": key, "capability": cap, "depends_on": deps,
            })).collect::<Vec<_>>()},
        });
        Self::task_from(body)
    }

    /// A task from a whole `POST /tasks` body, through the intake.
    pub fn task_from(body: serde_json::Value) -> NewTask {
        let catalog = intake::Catalog::default();
        intake::accept(body.to_string().as_bytes(), |r, i| {
            intake::submission(r, true, &catalog, i)
        })
        .expect("valid task")
    }

    pub async fn submit(&self, task: NewTask) -> Submitted {
        self.engine.submit(task).await.expect("submitted")
    }

    /// Lease up to `max` assignments without waiting (no `held`: a plain agent).
    pub async fn lease(&self, agent: &Agent, max: u32) -> Vec<LeaseGrant> {
        self.try_lease(agent, max, None).await.expect("lease")
    }

    pub async fn try_lease(
        &self,
        agent: &Agent,
        max: u32,
        held: Option<Vec<AssignmentId>>,
    ) -> Result<Vec<LeaseGrant>, Error> {
        self.engine
            .lease(agent.id.clone(), agent.token_hash.clone(), max, 0, held)
            .await
    }

    /// Lease exactly one assignment.
    pub async fn lease_one(&self, agent: &Agent) -> LeaseGrant {
        let mut got = self.lease(agent, 1).await;
        assert_eq!(got.len(), 1, "{} expected one assignment", agent.name);
        got.pop().unwrap()
    }

    pub async fn heartbeat(&self, agent: &Agent, held: Option<Vec<AssignmentId>>) -> HeartbeatInfo {
        self.engine
            .heartbeat(agent.id.clone(), agent.token_hash.clone(), held)
            .await
            .expect("heartbeat")
    }

    pub async fn progress(
        &self,
        agent: &Agent,
        grant: &LeaseGrant,
    ) -> Result<AssignmentInfo, Error> {
        let id = grant.assignment.assignment_id.clone();
        self.engine
            .progress(id, agent.token_hash.clone(), Phase::Executing, None)
            .await
    }

    pub async fn complete(
        &self,
        agent: &Agent,
        grant: &LeaseGrant,
        outputs: Value,
    ) -> Result<AssignmentInfo, Error> {
        let id = grant.assignment.assignment_id.clone();
        self.engine
            .complete(id, agent.token_hash.clone(), outputs, None)
            .await
    }

    pub async fn fail(
        &self,
        agent: &Agent,
        grant: &LeaseGrant,
        retryable: bool,
    ) -> Result<AssignmentInfo, Error> {
        let id = grant.assignment.assignment_id.clone();
        self.engine
            .fail(id, agent.token_hash.clone(), "it broke".into(), retryable)
            .await
    }

    pub async fn agents(&self) -> Vec<AgentInfo> {
        self.engine.agents().await.expect("agents")
    }

    /// The task's committed escalations, oldest first.
    pub async fn escalations(&self, task: &str) -> Vec<baton_core::Escalation> {
        self.store
            .task_detail(&TaskId::from(task))
            .await
            .unwrap()
            .expect("task stored")
            .escalations
    }

    /// The task's committed verdicts.
    pub async fn verifications(&self, task: &str) -> Vec<baton_core::Verification> {
        self.store
            .task_detail(&TaskId::from(task))
            .await
            .unwrap()
            .expect("task stored")
            .verifications
    }

    /// The task's committed status.
    pub async fn status(&self, task: &str) -> String {
        let (task, _) = self
            .store
            .task(&TaskId::from(task))
            .await
            .unwrap()
            .expect("task stored");
        task.status.to_string()
    }

    /// The task's committed timeline as text: one line per event, `+<ms>` from the start of
    /// the scenario, the plan key of the subtask (or `task`), the change, the agent's name
    /// and the note.
    pub async fn timeline(&self, task: &str) -> String {
        let detail = self
            .store
            .task_detail(&TaskId::from(task))
            .await
            .unwrap()
            .expect("task stored");
        let keys: BTreeMap<String, String> = detail
            .subtasks
            .iter()
            .map(|s| (s.subtask_id.to_string(), s.key.clone()))
            .collect();
        let names: BTreeMap<AgentId, String> = self
            .agents
            .values()
            .map(|a| (a.id.clone(), a.name.clone()))
            .collect();
        let mut out = String::new();
        for e in detail.events {
            let what = match &e.change {
                Change::Task { .. } => "task".to_owned(),
                // A subtask of a replaced plan is shown by its id.
                Change::Subtask { subtask_id, .. } => keys
                    .get(subtask_id.as_str())
                    .cloned()
                    .unwrap_or_else(|| subtask_id.to_string()),
                Change::Phase { subtask_id, .. } => format!(
                    "{} phase",
                    keys.get(subtask_id.as_str())
                        .map_or(subtask_id.as_str(), String::as_str)
                ),
            };
            let (from, to) = e.change.names();
            let mut line = format!(
                "+{:>6} {:<10} {} -> {}",
                e.at - START,
                what,
                from.unwrap_or("·"),
                to
            );
            if let Some(agent) = &e.agent {
                line.push_str(&format!(
                    " [{}]",
                    names.get(agent).map_or("?", String::as_str)
                ));
            }
            if let Some(note) = &e.note {
                line.push_str(&format!(" ({note})"));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// End the scenario: no internal error happened, and the engine stops cleanly.
    pub async fn finish(mut self) {
        self.check_no_internal_errors();
        self.engine.shutdown().await;
        if let Some(join) = self.join.take() {
            tokio::time::timeout(Duration::from_secs(10), join)
                .await
                .expect("engine stops")
                .expect("engine loop ends cleanly");
        }
    }
}

/// Routing helpers: agents polling in the same turn, and how an agent's circuit and record
/// look.
impl Scenario {
    /// Both agents ask for up to `max` assignments in the same engine turn, so routing chooses
    /// between them (a single `lease` only ever sees the one agent that is polling).
    pub async fn lease_both(
        &self,
        a: &Agent,
        b: &Agent,
        max: u32,
    ) -> (Vec<LeaseGrant>, Vec<LeaseGrant>) {
        let (x, y) = tokio::join!(self.lease(a, max), self.lease(b, max));
        (x, y)
    }

    /// The engine's view of one agent.
    pub async fn agent_info(&self, agent: &Agent) -> AgentInfo {
        self.agents()
            .await
            .into_iter()
            .find(|i| i.agent.agent_id == agent.id)
            .expect("agent known")
    }

    /// An agent's circuit as one line: `+<ms> <name>: <state> after <n> failures[ until +<ms>]`.
    pub async fn circuit(&self, agent: &Agent) -> String {
        let c = self.agent_info(agent).await.circuit;
        let mut line = format!(
            "+{:>6} {}: {} after {} failures",
            self.elapsed(),
            agent.name,
            c.state,
            c.consecutive_failures
        );
        if let Some(until) = c.open_until {
            line.push_str(&format!(" until +{}", until - START));
        }
        line
    }

    /// Two agents registered as `names`, the one whose id sorts first first: the one routing
    /// picks when it knows nothing else (ties break by agent id).
    pub async fn register_pair(
        &mut self,
        names: [&str; 2],
        capabilities: &[&str],
        max: u32,
    ) -> (Agent, Agent) {
        let x = self.register("first", capabilities, max).await;
        let y = self.register("second", capabilities, max).await;
        let (lower, higher) = if x.id < y.id { (x, y) } else { (y, x) };
        self.agents.remove("first");
        self.agents.remove("second");
        let rename = |a: Agent, name: &str| Agent {
            name: name.into(),
            ..a
        };
        let (a, b) = (rename(lower, names[0]), rename(higher, names[1]));
        self.agents.insert(a.name.clone(), a.clone());
        self.agents.insert(b.name.clone(), b.clone());
        (a, b)
    }
}
