//! What one task lifecycle costs the SQLite commit path, as printed figures.
//!
//! Runs the engine's write pattern for one-step tasks through [`SqliteStore::commit`] on a real
//! file (WAL, `synchronous=FULL`): every commit is a group commit holding three stages of
//! `batch` tasks each, the way a busy engine's flush does:
//! - submitted: the task inserted already running, its subtask inserted ready, 3 events;
//! - dispatched (the previous group): subtask update, assignment insert, 1 event;
//! - finished (the group before): subtask update, assignment update, task update with a small
//!   JSON result, 3 events.
//!
//! That is 7 events, 2 subtask updates and 2 assignment writes per lifecycle, about what
//! `baton bench independent` writes. Each batch is cloned from prepared rows just before its
//! commit, as the engine materializes its flush. Figures per lifecycle:
//! - wall: time inside `commit` (including the fsyncs);
//! - cpu: user + system time of every thread but the one building batches, i.e. the commit
//!   threads (from `/proc`, Linux only; 10 ms ticks, so use enough lifecycles);
//! - read: one `task` plus one `timeline` call afterwards, as `GET /tasks/{id}` makes them.
//!
//! ```text
//! cargo run --release -p baton-store --example commit_bench -- [lifecycles] [batch…] [--dir D]
//! ```

use baton_core::{
    AgentId, Assignment, AssignmentId, AssignmentState, Change, Event, Priority, Subtask,
    SubtaskId, SubtaskState, Task, TaskId, TaskStatus,
};
use baton_store::{SqliteStore, Store, SubtaskUpdate, TaskUpdate, WriteBatch};
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The allocator of the `baton` binary, so freeing a committed batch costs what it costs there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const AGENTS: usize = 4;
const T0: i64 = 1_750_000_000_000;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut lifecycles = 100_000usize;
    let mut batches = Vec::new();
    let mut dir: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    let mut positional = 0;
    while let Some(arg) = args.next() {
        if arg == "--dir" {
            dir = Some(args.next().expect("--dir needs a path").into());
            continue;
        }
        let n: usize = arg
            .parse()
            .expect("arguments: [lifecycles] [batch…] [--dir D]");
        if positional == 0 {
            lifecycles = n;
        } else {
            batches.push(n);
        }
        positional += 1;
    }
    if batches.is_empty() {
        batches = vec![256, 1024, 2048];
    }
    println!(
        "sqlite commit path: {lifecycles} one-step task lifecycles per run, \
         3 stages per group commit, WAL + synchronous=FULL"
    );
    println!(
        "{:>6} {:>8} {:>12} {:>10} {:>10} {:>11} {:>11} {:>8} {:>7}",
        "batch",
        "commits",
        "lifecycles/s",
        "wall µs/lc",
        "cpu µs/lc",
        "p50 commit",
        "p99 commit",
        "read µs",
        "db MiB"
    );
    for batch in batches {
        let tmp;
        let data_dir = match &dir {
            Some(d) => {
                let d = d.join(format!("commit-bench-{batch}"));
                let _ = std::fs::remove_dir_all(&d);
                d
            }
            None => {
                tmp = tempfile::TempDir::new().expect("temp dir");
                tmp.path().to_owned()
            }
        };
        run(&data_dir, lifecycles, batch).await;
    }
}

async fn run(data_dir: &std::path::Path, lifecycles: usize, batch: usize) {
    let store = SqliteStore::open(data_dir).expect("open store");
    let agents: Vec<AgentId> = (0..AGENTS)
        .map(|i| AgentId(format!("agent-{:032x}", splitmix(i as u64 + 7))))
        .collect();
    store
        .commit(WriteBatch {
            agents: agents
                .iter()
                .map(|id| baton_core::Agent {
                    agent_id: id.clone(),
                    name: format!("noop-{id}"),
                    kind: "sdk".into(),
                    capabilities: vec!["noop".into()],
                    domains: Vec::new(),
                    max_concurrency: 64,
                    status: baton_core::AgentStatus::Busy,
                    token_hash: format!("{:064x}", 1),
                    created_at: T0,
                    stats: Default::default(),
                })
                .collect(),
            ..WriteBatch::default()
        })
        .await
        .expect("register agents");

    let groups = lifecycles.div_ceil(batch);
    let life: Vec<Lifecycle> = (0..groups * batch)
        .map(|i| Lifecycle::new(i as i64 + 1, &agents[i % AGENTS]))
        .collect();
    // Commit k: group k submitted, group k-1 dispatched, group k-2 finished. Each batch is
    // cloned from the lifecycles just before its commit, as the engine materializes its flush.
    let group = |g: usize| &life[g * batch..(g + 1) * batch];
    let done = groups * batch;
    let cpu_before = cpu_times();
    let mut wall = Duration::ZERO;
    let mut latencies = Vec::with_capacity(groups + 2);
    for k in 0..groups + 2 {
        let mut b = WriteBatch::default();
        if k < groups {
            group(k).iter().for_each(|l| l.submitted(&mut b));
        }
        if (1..=groups).contains(&k) {
            group(k - 1).iter().for_each(|l| l.dispatched(&mut b));
        }
        if k >= 2 {
            group(k - 2).iter().for_each(|l| l.finished(&mut b));
        }
        let t = Instant::now();
        store.commit(b).await.expect("commit");
        let took = t.elapsed();
        wall += took;
        latencies.push(took);
    }
    let cpu = cpu_times()
        .zip(cpu_before)
        .map(|((all, this), (all0, this0))| {
            (all.saturating_sub(all0)).saturating_sub(this.saturating_sub(this0))
        });
    latencies.sort();
    let q = |f: f64| latencies[((latencies.len() - 1) as f64 * f).round() as usize];
    let per = |d: Duration| d.as_secs_f64() * 1e6 / done as f64;
    let db_bytes = std::fs::metadata(store.path())
        .map(|m| m.len())
        .unwrap_or(0);

    // Reads of tasks spread over the whole history; every one is whole.
    const READS: u64 = 2_000;
    let started = Instant::now();
    for n in 0..READS {
        let seq = 1 + (splitmix(n) % done as u64) as i64;
        let id = TaskId(task_id(seq));
        let (task, subtasks) = store.task(&id).await.expect("task").expect("stored");
        let timeline = store.timeline(&id).await.expect("timeline");
        assert_eq!((task.seq, subtasks.len(), timeline.len()), (seq, 1, 7));
    }
    let read = started.elapsed().as_secs_f64() * 1e6 / READS as f64;

    println!(
        "{:>6} {:>8} {:>12.0} {:>10.2} {:>10} {:>9.1}ms {:>9.1}ms {:>8.1} {:>7.1}",
        batch,
        latencies.len(),
        done as f64 / wall.as_secs_f64(),
        per(wall),
        cpu.map_or("n/a".into(), |c| format!("{:.2}", per(c))),
        q(0.5).as_secs_f64() * 1e3,
        q(0.99).as_secs_f64() * 1e3,
        read,
        db_bytes as f64 / (1024.0 * 1024.0),
    );

    // The writes landed: nothing is live.
    let recovery = store.recover().await.expect("recover");
    assert!(recovery.tasks.is_empty() && recovery.assignments.is_empty());
    assert_eq!(recovery.max_seq, done as i64);
}

/// CPU time (user + system) of the whole process and of this thread, which builds the
/// batches; the difference is the store's commit threads. `None` where `/proc` cannot tell.
fn cpu_times() -> Option<(Duration, Duration)> {
    let all = cpu_ticks("/proc/self/stat")?;
    let this = cpu_ticks("/proc/thread-self/stat")?;
    // USER_HZ is 100 on every Linux this runs on.
    Some((
        Duration::from_millis(all * 10),
        Duration::from_millis(this * 10),
    ))
}

fn cpu_ticks(stat: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(stat).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Like a UUIDv7 id: a time-ordered prefix, random below it.
fn task_id(seq: i64) -> String {
    format!("task-{:012x}7{:019x}", seq / 8, splitmix(seq as u64) >> 6)
}

/// One one-step task's rows, as the engine would write them.
struct Lifecycle {
    task: Task,
    sub: Subtask,
    agent: AgentId,
    assignment: Assignment,
}

impl Lifecycle {
    fn new(seq: i64, agent: &AgentId) -> Lifecycle {
        let at = T0 + seq;
        let task_id = TaskId(task_id(seq));
        let title = format!("bench {seq}");
        let task = Task {
            task_id: task_id.clone(),
            seq,
            title: title.clone(),
            description: "no-op".into(),
            task_type: None,
            priority: Priority::NORMAL,
            status: TaskStatus::Running,
            request: format!(
                r#"{{"description":"no-op","plan":{{"subtasks":[{{"capability":"noop","depends_on":[],"id":"only"}}]}},"title":"{title}"}}"#
            ),
            due_at: None,
            max_attempts: 3,
            timeout_ms: 300_000,
            created_at: at,
            started_at: Some(at),
            finished_at: None,
            result: None,
            context: Default::default(),
        };
        let sub = Subtask {
            subtask_id: SubtaskId::compose("noop", &task_id, 1),
            task_id: task_id.clone(),
            index: 0,
            key: "only".into(),
            capability: "noop".into(),
            depends_on: Vec::new(),
            input: json!({ "brief": title, "params": {} }),
            state: SubtaskState::Ready,
            attempts: 0,
            assigned_agent: None,
            outputs: None,
            error: None,
            updated_at: at,
            rules: None,
            usage: None,
        };
        let assignment = Assignment {
            assignment_id: AssignmentId(format!("as-{seq}-0-1")),
            task_id,
            subtask_id: sub.subtask_id.clone(),
            agent_id: agent.clone(),
            attempt: 1,
            state: AssignmentState::Active,
            lease_expires_at: at + 30_000,
            created_at: at + 1,
            finished_at: None,
            kind: baton_core::AssignmentKind::Work,
        };
        Lifecycle {
            task,
            sub,
            agent: agent.clone(),
            assignment,
        }
    }

    fn event(&self, at: i64, sub: bool, from: Option<&str>, to: &str, agent: bool) -> Event {
        let change = if sub {
            Change::Subtask {
                subtask_id: self.sub.subtask_id.clone(),
                from: from.and_then(SubtaskState::parse).expect("a subtask state"),
                to: SubtaskState::parse(to).expect("a subtask state"),
            }
        } else {
            Change::Task {
                from: from.and_then(TaskStatus::parse),
                to: TaskStatus::parse(to).expect("a task status"),
            }
        };
        Event {
            task_id: self.task.task_id.clone(),
            at,
            change,
            agent: agent.then(|| self.agent.clone()),
            note: None,
        }
    }

    fn sub_update(
        &self,
        state: SubtaskState,
        outputs: Option<serde_json::Value>,
        at: i64,
    ) -> SubtaskUpdate {
        SubtaskUpdate {
            task_id: self.task.task_id.clone(),
            index: 0,
            subtask_id: self.sub.subtask_id.clone(),
            state,
            attempts: 1,
            assigned_agent: Some(self.agent.clone()),
            outputs,
            error: None,
            updated_at: at,
            usage: None,
        }
    }

    fn submitted(&self, b: &mut WriteBatch) {
        let at = self.task.created_at;
        b.new_tasks.push(self.task.clone());
        b.new_subtasks.push(self.sub.clone());
        b.events.push(self.event(at, false, None, "planned", false));
        b.events
            .push(self.event(at, false, Some("planned"), "running", false));
        b.events
            .push(self.event(at, true, Some("pending"), "ready", false));
    }

    fn dispatched(&self, b: &mut WriteBatch) {
        let at = self.assignment.created_at;
        b.subtask_updates
            .push(self.sub_update(SubtaskState::Assigned, None, at));
        b.assignments.push(self.assignment.clone());
        b.events
            .push(self.event(at, true, Some("ready"), "assigned", true));
    }

    fn finished(&self, b: &mut WriteBatch) {
        let at = self.assignment.created_at + 2;
        let outputs = json!({ "ok": true });
        b.subtask_updates
            .push(self.sub_update(SubtaskState::Completed, Some(outputs.clone()), at));
        b.assignments.push(Assignment {
            state: AssignmentState::Completed,
            finished_at: Some(at),
            ..self.assignment.clone()
        });
        b.task_updates.push(TaskUpdate {
            task_id: self.task.task_id.clone(),
            status: TaskStatus::Completed,
            started_at: self.task.started_at,
            finished_at: Some(at),
            result: Some(json!({
                "status": "completed",
                "summary": "1 of 1 subtasks completed; task completed",
                "outputs": { self.sub.subtask_id.as_str(): outputs },
                "metrics": { "elapsed_seconds": 0.003, "on_time": null },
            })),
            context: Default::default(),
        });
        b.events
            .push(self.event(at, true, Some("assigned"), "running", true));
        b.events
            .push(self.event(at, true, Some("running"), "completed", true));
        b.events
            .push(self.event(at, false, Some("running"), "completed", false));
    }
}
