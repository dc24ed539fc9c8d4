//! `baton bench routing`: learned routing against round robin, on a simulated mixed fleet
//! driven through the real engine.
//!
//! ## The model (seed [`SEED`] unless `--seed` says otherwise)
//! - One capability, `sim`; six agents of max concurrency 4 each:
//!   - 2 **fast**: an attempt takes U[800, 1200] ms and fails 1% of the time;
//!   - 2 **slow**: U[4000, 6000] ms, fails 1%;
//!   - 2 **flaky**: half of the attempts fail after U[200, 400] ms, the rest succeed after
//!     U[800, 1200] ms.
//!
//!   Every failure is reported as retryable. Each agent draws its durations and outcomes from
//!   its own generator (seeded from the seed and its position), in the order it receives
//!   work.
//! - The work: [`CHAINS`] tasks submitted at once, each a chain of steps (step `i` depends on
//!   step `i - 1`): 8 × 125 = 1,000 subtasks (8 × 25 with `--quick` and in `smoke`). At most
//!   one step per chain is ready at a time, so at most 8 of the fleet's 24 slots are busy and
//!   every dispatch is a real choice between agents with free slots. The makespan is then
//!   the sum of the steps' times along each chain: what routing picks is what the run costs.
//! - The engine is the real one (`baton_engine::start`) on a fresh SQLite store in a
//!   temporary directory (default durability), a `ManualClock`, the same seed, default lease,
//!   breaker (5 failures, 30 s) and backoff, and 10 attempts per subtask so that no chain fails
//!   in either mode. The only difference between the two runs is `Config::routing`.
//!
//! ## The simulation
//! Event-driven, on one thread (a current-thread runtime), so a run is reproducible. Agents
//! only have what the engine's lease calls hand them: each agent with a free slot keeps one
//! long poll (`lease`, 60 s) parked, and takes whatever the answer holds; at the instant a
//! simulated job ends its agent reports it (`complete` or `fail`) and polls again, in the same
//! engine turn. The clock only moves forward, to the earliest of the next job end and the
//! engine's own next deadline (a retry's backoff, a poll expiring, the health sweep:
//! [`ManualClock::next_wakeup`]), so the engine acts at the instants it would in real time.
//! Nothing bypasses the engine's routing: the simulation never picks an agent for a subtask.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use baton_agent::api::{ClientPlan, ClientStep, SubmitTask};
use baton_core::{AgentId, AssignmentId, Millis, TaskId};
use baton_engine::{intake, AgentSpec, Clock, Handle, LeaseGrant, ManualClock, RoutingMode};
use baton_store::{SqliteStore, Store};
use futures::FutureExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::Figure;

/// Seed of the engine and of the simulated agents, by default.
pub const SEED: u64 = 42;
/// Tasks, each one chain of steps.
pub const CHAINS: usize = 8;
/// Slots of each simulated agent.
const MAX_CONCURRENCY: u32 = 4;
/// How long a simulated agent's lease poll waits for work.
const POLL_WAIT_MS: u64 = 60_000;
/// Where the virtual clock starts.
const T0: Millis = 1_700_000_000_000;
/// A run that has not finished after this much virtual time is broken.
const MAX_VIRTUAL_MS: Millis = 24 * 3_600_000;

/// The three kinds of simulated agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Fast,
    Slow,
    Flaky,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Fast, Kind::Slow, Kind::Flaky];

    fn name(self) -> &'static str {
        match self {
            Kind::Fast => "fast",
            Kind::Slow => "slow",
            Kind::Flaky => "flaky",
        }
    }

    /// One attempt: how long it takes and whether it succeeds.
    fn attempt(self, rng: &mut StdRng) -> (Millis, bool) {
        match self {
            Kind::Fast => (rng.gen_range(800..=1_200), rng.gen::<f64>() >= 0.01),
            Kind::Slow => (rng.gen_range(4_000..=6_000), rng.gen::<f64>() >= 0.01),
            Kind::Flaky => {
                if rng.gen::<f64>() < 0.5 {
                    (rng.gen_range(200..=400), false)
                } else {
                    (rng.gen_range(800..=1_200), true)
                }
            }
        }
    }
}

/// The fleet, in registration order.
const FLEET: [Kind; 6] = [
    Kind::Fast,
    Kind::Fast,
    Kind::Slow,
    Kind::Slow,
    Kind::Flaky,
    Kind::Flaky,
];

type LeaseCall = Pin<Box<dyn Future<Output = Result<Vec<LeaseGrant>, baton_engine::Error>>>>;
type ResultCall = Pin<Box<dyn Future<Output = (usize, bool, ResultAnswer)>>>;
type ResultAnswer = Result<baton_engine::AssignmentInfo, baton_engine::Error>;

/// A job a simulated agent is working on.
struct Job {
    assignment_id: AssignmentId,
    ends_at: Millis,
    success: bool,
}

struct SimAgent {
    kind: Kind,
    id: AgentId,
    token_hash: String,
    rng: StdRng,
    jobs: Vec<Job>,
    poll: Option<LeaseCall>,
    attempts: u64,
    failures: u64,
}

/// What one run measured.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Virtual time from submission to the last completion, in ms.
    pub makespan_ms: Millis,
    pub attempts: u64,
    pub failed_attempts: u64,
    pub completed_subtasks: u64,
    pub completed_tasks: usize,
    /// Attempts per kind of agent: fast, slow, flaky.
    pub attempts_by_kind: [u64; 3],
    /// Real time the run took, in seconds.
    pub wall_s: f64,
}

/// Both runs, one after the other, each on its own thread with a current-thread runtime.
pub async fn run(chain_len: usize, seed: u64) -> anyhow::Result<Vec<Figure>> {
    let learned = on_own_thread(RoutingMode::Learned, chain_len, seed).await?;
    let round_robin = on_own_thread(RoutingMode::RoundRobin, chain_len, seed).await?;
    print_comparison(&learned, &round_robin, chain_len, seed);
    Ok(figures(&learned, &round_robin, chain_len, seed))
}

async fn on_own_thread(mode: RoutingMode, chain_len: usize, seed: u64) -> anyhow::Result<Outcome> {
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // The simulated failures are the point of the run: the engine's warning for each
        // would drown the table. Errors still show.
        let errors_only = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::ERROR)
            .with_writer(std::io::stderr)
            .finish();
        tracing::subscriber::with_default(errors_only, || {
            runtime.block_on(simulate(mode, chain_len, seed))
        })
    })
    .await?
}

/// One run of the whole workload under `mode`.
pub async fn simulate(mode: RoutingMode, chain_len: usize, seed: u64) -> anyhow::Result<Outcome> {
    let wall = Instant::now();
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path())?);
    let clock = Arc::new(ManualClock::new(T0));
    let config = baton_engine::Config {
        clock: clock.clone(),
        seed: Some(seed),
        routing: mode,
        retry: baton_core::retry::RetryPolicy {
            max_attempts: 10,
            ..Default::default()
        },
        ..baton_engine::Config::default()
    };
    let (engine, join) = baton_engine::start(config, store.clone()).await?;
    let mut agents = Vec::new();
    for (i, kind) in FLEET.into_iter().enumerate() {
        let registered = engine
            .register(AgentSpec {
                name: format!("{}-{i}", kind.name()),
                kind: "sim".into(),
                capabilities: vec!["sim".into()],
                domains: Vec::new(),
                max_concurrency: MAX_CONCURRENCY,
            })
            .await?;
        agents.push(SimAgent {
            kind,
            id: registered.agent.agent_id,
            token_hash: baton_engine::hash_token(&registered.token),
            rng: StdRng::seed_from_u64(seed.wrapping_mul(1_000).wrapping_add(i as u64)),
            jobs: Vec::new(),
            poll: None,
            attempts: 0,
            failures: 0,
        });
    }
    let catalog = intake::Catalog::default();
    let mut task_ids = Vec::new();
    for c in 0..CHAINS {
        let body = serde_json::to_vec(&chain(c, chain_len))?;
        let new = intake::accept(&body, |r, i| intake::submission(r, true, &catalog, i))
            .map_err(|e| anyhow::anyhow!("the bench's task is invalid: {e:?}"))?;
        let submitted = engine.submit(new).await?;
        let baton_engine::Submitted::Created(snapshot) = submitted else {
            bail!("task {c} existed already");
        };
        task_ids.push(snapshot.task.task_id);
    }
    let total = (CHAINS * chain_len) as u64;
    let mut sim = Sim {
        engine: engine.clone(),
        clock,
        agents,
        completed: 0,
        last_completion: T0,
    };
    loop {
        sim.settle().await?;
        if sim.completed == total || (sim.idle() && all_terminal(&*store, &task_ids).await?) {
            break;
        }
        let now = sim.clock.now();
        ensure!(
            now - T0 < MAX_VIRTUAL_MS,
            "the {mode} run did not finish in {} virtual hours",
            MAX_VIRTUAL_MS / 3_600_000
        );
        let next_job = sim
            .agents
            .iter()
            .flat_map(|a| &a.jobs)
            .map(|j| j.ends_at)
            .min();
        let next = [next_job, sim.clock.next_wakeup()]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + 1)
            .max(now + 1);
        sim.clock.advance(next - now);
        engine.sync().await?;
        sim.collect_grants()?;
    }
    let mut completed_tasks = 0;
    for id in &task_ids {
        let (task, _) = store.task(id).await?.context("a bench task is missing")?;
        if task.status == baton_core::TaskStatus::Completed {
            completed_tasks += 1;
        }
    }
    let mut outcome = Outcome {
        makespan_ms: sim.last_completion - T0,
        completed_subtasks: sim.completed,
        completed_tasks,
        ..Outcome::default()
    };
    for a in &sim.agents {
        outcome.attempts += a.attempts;
        outcome.failed_attempts += a.failures;
        let k = Kind::ALL.iter().position(|k| *k == a.kind).unwrap_or(0);
        outcome.attempts_by_kind[k] += a.attempts;
    }
    engine.shutdown().await;
    drop(sim);
    drop(engine);
    join.await?;
    outcome.wall_s = wall.elapsed().as_secs_f64();
    Ok(outcome)
}

struct Sim {
    engine: Handle,
    clock: Arc<ManualClock>,
    agents: Vec<SimAgent>,
    completed: u64,
    last_completion: Millis,
}

impl Sim {
    /// Everything that happens at the current instant: the jobs that end report, every agent
    /// with a free slot polls (in one engine turn), and the grants are taken, until no agent
    /// has a free slot without a parked poll.
    async fn settle(&mut self) -> anyhow::Result<()> {
        loop {
            let now = self.clock.now();
            let mut results: Vec<ResultCall> = Vec::new();
            for (i, a) in self.agents.iter_mut().enumerate() {
                let (done, running): (Vec<Job>, Vec<Job>) =
                    a.jobs.drain(..).partition(|j| j.ends_at <= now);
                a.jobs = running;
                for job in done {
                    results.push(report(&self.engine, i, a, job));
                }
            }
            let mut polled = false;
            for a in &mut self.agents {
                let free = MAX_CONCURRENCY.saturating_sub(a.jobs.len() as u32);
                if a.poll.is_none() && free > 0 {
                    let engine = self.engine.clone();
                    let (id, token) = (a.id.clone(), a.token_hash.clone());
                    let mut call: LeaseCall =
                        Box::pin(
                            async move { engine.lease(id, token, free, POLL_WAIT_MS, None).await },
                        );
                    // Polling once sends the command; the answer is read after the turn.
                    if let Some(answer) = (&mut call).now_or_never() {
                        answer?;
                        bail!("a lease answered before the engine ran");
                    }
                    a.poll = Some(call);
                    polled = true;
                }
            }
            if results.is_empty() && !polled {
                return Ok(());
            }
            for (i, success, answer) in futures::future::join_all(results).await {
                answer.with_context(|| {
                    format!("a result of {} was refused", self.agents[i].kind.name())
                })?;
                if success {
                    self.completed += 1;
                    self.last_completion = now;
                }
            }
            self.engine.sync().await?;
            self.collect_grants()?;
        }
    }

    /// Take every answered poll: each grant becomes a job of its agent.
    fn collect_grants(&mut self) -> anyhow::Result<()> {
        let now = self.clock.now();
        for a in &mut self.agents {
            let Some(call) = a.poll.as_mut() else {
                continue;
            };
            let Some(answer) = call.now_or_never() else {
                continue;
            };
            a.poll = None;
            for grant in answer? {
                let (took, success) = a.kind.attempt(&mut a.rng);
                a.attempts += 1;
                if !success {
                    a.failures += 1;
                }
                a.jobs.push(Job {
                    assignment_id: grant.assignment.assignment_id,
                    ends_at: now + took,
                    success,
                });
            }
        }
        Ok(())
    }

    fn idle(&self) -> bool {
        self.agents.iter().all(|a| a.jobs.is_empty())
    }
}

/// The call that reports `job` of agent `i`.
fn report(engine: &Handle, i: usize, a: &SimAgent, job: Job) -> ResultCall {
    let engine = engine.clone();
    let token = a.token_hash.clone();
    let kind = a.kind.name();
    Box::pin(async move {
        let answer = if job.success {
            engine
                .complete(job.assignment_id, token, json!({"by": kind}), None)
                .await
        } else {
            engine
                .fail(job.assignment_id, token, format!("{kind} failed"), true)
                .await
        };
        (i, job.success, answer)
    })
}

async fn all_terminal(store: &dyn Store, ids: &[TaskId]) -> anyhow::Result<bool> {
    for id in ids {
        let (task, _) = store.task(id).await?.context("a bench task is missing")?;
        if !task.status.is_terminal() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Task `c`: a chain of `len` steps.
fn chain(c: usize, len: usize) -> SubmitTask {
    let subtasks = (0..len)
        .map(|i| ClientStep {
            id: format!("s{i}"),
            capability: "sim".into(),
            depends_on: if i == 0 {
                Vec::new()
            } else {
                vec![format!("s{}", i - 1)]
            },
            ..ClientStep::default()
        })
        .collect();
    SubmitTask {
        task_id: Some(format!("chain-{c}")),
        title: format!("routing bench chain {c}"),
        description: "a chain of simulated steps".into(),
        plan: Some(ClientPlan { subtasks }),
        ..SubmitTask::default()
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else if a > 0.0 {
        f64::INFINITY
    } else {
        0.0
    }
}

/// The side-by-side table of both runs.
fn print_comparison(learned: &Outcome, rr: &Outcome, chain_len: usize, seed: u64) {
    let n = CHAINS * chain_len;
    let fleet = FLEET.len();
    println!(
        "routing: {n} subtasks ({CHAINS} chains of {chain_len} steps) on {fleet} simulated \
         agents x {MAX_CONCURRENCY} slots (2 fast, 2 slow, 2 flaky), seed {seed}, virtual time"
    );
    println!(
        "  {:<30} {:>12} {:>12} {:>8}  {:<8} met",
        "", "learned", "round-robin", "ratio", "target"
    );
    let row = |what: &str, l: f64, r: f64, target: f64, decimals: usize| {
        let x = ratio(l, r);
        let met = if x <= target { "met" } else { "NOT met" };
        println!("  {what:<30} {l:>12.decimals$} {r:>12.decimals$} {x:>8.2}  <= {target:<5} {met}");
    };
    row(
        "makespan (virtual s)",
        learned.makespan_ms as f64 / 1000.0,
        rr.makespan_ms as f64 / 1000.0,
        0.6,
        1,
    );
    row(
        "failed attempts",
        learned.failed_attempts as f64,
        rr.failed_attempts as f64,
        0.3,
        0,
    );
    let shares = |o: &Outcome| {
        let total = o.attempts.max(1) as f64;
        o.attempts_by_kind
            .iter()
            .map(|k| format!("{:.0}", 100.0 * *k as f64 / total))
            .collect::<Vec<_>>()
            .join("/")
    };
    println!(
        "  {:<30} {:>12} {:>12}",
        "attempts (fast/slow/flaky %)",
        format!("{} ({})", learned.attempts, shares(learned)),
        format!("{} ({})", rr.attempts, shares(rr)),
    );
    println!(
        "  {:<30} {:>12} {:>12}",
        "subtasks completed",
        format!("{}/{n}", learned.completed_subtasks),
        format!("{}/{n}", rr.completed_subtasks),
    );
    println!(
        "  {:<30} {:>12} {:>12}",
        "tasks completed",
        format!("{}/{CHAINS}", learned.completed_tasks),
        format!("{}/{CHAINS}", rr.completed_tasks),
    );
    println!(
        "  {:<30} {:>12.2} {:>12.2}",
        "wall time (s)", learned.wall_s, rr.wall_s
    );
}

fn figures(learned: &Outcome, rr: &Outcome, chain_len: usize, seed: u64) -> Vec<Figure> {
    let n = CHAINS * chain_len;
    let setup = format!("{n} subtasks, {CHAINS} chains, 2 fast/2 slow/2 flaky agents, seed {seed}");
    let secs = |o: &Outcome| o.makespan_ms as f64 / 1000.0;
    vec![
        Figure::new("routing", "learned makespan", secs(learned), "s").note(format!(
            "virtual; {} attempts, {}/{CHAINS} tasks completed",
            learned.attempts, learned.completed_tasks
        )),
        Figure::new("routing", "round-robin makespan", secs(rr), "s").note(format!(
            "virtual; {} attempts, {}/{CHAINS} tasks completed",
            rr.attempts, rr.completed_tasks
        )),
        Figure::new(
            "routing",
            "makespan learned/rr",
            ratio(secs(learned), secs(rr)),
            "x",
        )
        .at_most(0.6)
        .note(&setup),
        Figure::new(
            "routing",
            "learned failed attempts",
            learned.failed_attempts as f64,
            "",
        ),
        Figure::new(
            "routing",
            "round-robin failed attempts",
            rr.failed_attempts as f64,
            "",
        ),
        Figure::new(
            "routing",
            "failed attempts learned/rr",
            ratio(learned.failed_attempts as f64, rr.failed_attempts as f64),
            "x",
        )
        .at_most(0.3)
        .note(&setup),
    ]
}
