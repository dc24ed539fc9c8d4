//! The SQLite backend on real files: the conformance suite (one fresh database per case), and
//! what only this backend has — reopening, migrations, pragmas, crash durability, decoding of
//! damaged rows, the layout of timelines, and reads beside a held write lock.

use baton_core::{
    AgentStatus, AssignmentId, AssignmentState, SubtaskState, Task, TaskId, TaskStatus,
};
use baton_store::conformance::{agent, assignment, event, subtask, task};
use baton_store::{
    Error, Recovery, SqliteStore, Store, SubtaskUpdate, TaskQuery, TaskUpdate, WriteBatch,
};
use rusqlite::Connection;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;
use tempfile::TempDir;

async fn fresh() -> (SqliteStore, TempDir) {
    let dir = TempDir::new().expect("temp dir");
    let store = SqliteStore::open(dir.path()).expect("open fresh store");
    (store, dir)
}

mod conformance {
    use super::fresh;
    baton_store::store_conformance_tests!(fresh);
}

/// A raw connection to the store's file, for inspecting and damaging it behind its back.
fn raw(dir: &Path) -> Connection {
    Connection::open(dir.join(baton_store::sqlite::DB_FILE)).expect("raw connection")
}

/// A running task with two subtasks, an agent, an assignment and events.
fn sample_batch(id: &str, seq: i64) -> WriteBatch {
    let s0 = subtask(id, 0);
    let s1 = subtask(id, 1);
    WriteBatch {
        agents: vec![agent(&format!("ag-{id}"), AgentStatus::Busy)],
        new_tasks: vec![Task {
            status: TaskStatus::Running,
            started_at: Some(seq),
            result: Some(json!({ "partial": "ü" })),
            ..task(id, seq)
        }],
        new_subtasks: vec![s0.clone(), s1],
        assignments: vec![assignment(
            &format!("as-{id}"),
            &s0,
            &format!("ag-{id}"),
            AssignmentState::Active,
        )],
        events: vec![event(id, seq, "planned"), event(id, seq + 1, "running")],
        ..WriteBatch::default()
    }
}

/// Everything a reader can see of the tasks `ids`.
async fn everything(store: &SqliteStore, ids: &[&str]) -> (Recovery, Vec<Task>, Vec<String>) {
    let recovery = store.recover().await.expect("recover");
    let listed = store
        .list_tasks(&TaskQuery {
            limit: 1_000,
            ..TaskQuery::default()
        })
        .await
        .expect("list");
    let mut details = Vec::new();
    for id in ids {
        let id = TaskId::from(*id);
        details.push(format!(
            "{:?} {:?}",
            store.task(&id).await.expect("task"),
            store.timeline(&id).await.expect("timeline")
        ));
    }
    (recovery, listed, details)
}

#[tokio::test]
async fn data_survives_drop_and_reopen() {
    let (store, dir) = fresh().await;
    store.commit(sample_batch("t-1", 1)).await.unwrap();
    store.commit(sample_batch("t-2", 2)).await.unwrap();
    store
        .commit(WriteBatch {
            task_updates: vec![TaskUpdate {
                task_id: TaskId::from("t-1"),
                status: TaskStatus::Completed,
                started_at: Some(1),
                finished_at: Some(9),
                result: Some(json!(null)),
                context: Default::default(),
            }],
            ..WriteBatch::default()
        })
        .await
        .unwrap();
    let before = everything(&store, &["t-1", "t-2"]).await;
    assert_eq!(before.0.tasks.len(), 1, "t-2 is the only live task");
    assert_eq!(before.0.max_seq, 2);
    drop(store);

    let reopened = SqliteStore::open(dir.path()).expect("reopen");
    let after = everything(&reopened, &["t-1", "t-2"]).await;
    assert_eq!(after, before, "state after reopen");
}

#[tokio::test]
async fn migrations_are_idempotent() {
    let (first, dir) = fresh().await;
    first.commit(sample_batch("t-1", 1)).await.unwrap();
    // A second store on the same file while the first is open, then again after it closed.
    let second = SqliteStore::open(dir.path()).expect("second open");
    second.commit(sample_batch("t-2", 2)).await.unwrap();
    let seen_by_first = first.recover().await.unwrap();
    assert_eq!(
        seen_by_first.max_seq, 2,
        "writes of one store are visible to the other"
    );
    drop(first);
    drop(second);
    let third = SqliteStore::open(dir.path()).expect("third open");
    assert_eq!(third.recover().await.unwrap(), seen_by_first);

    let version: i64 = raw(dir.path())
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 5, "schema version after three opens");
    let tables: i64 = raw(dir.path())
        .query_row(
            "SELECT COUNT(*) FROM sqlite_schema WHERE type = 'table' AND name IN \
             ('tasks', 'subtasks', 'assignments', 'agents', 'events')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 5);
}

#[tokio::test]
async fn open_creates_the_data_dir() {
    let dir = TempDir::new().unwrap();
    let nested = dir.path().join("a").join("b");
    let store = SqliteStore::open(&nested).expect("open nested dir");
    store.commit(sample_batch("t-1", 1)).await.unwrap();
    assert!(nested.join("baton.db").is_file());
    assert_eq!(store.path(), nested.join("baton.db"));

    let file = SqliteStore::open_file(&dir.path().join("other.db")).expect("open_file");
    assert_eq!(file.recover().await.unwrap(), Recovery::default());
}

#[tokio::test]
async fn writer_uses_wal_and_full_sync() {
    let (store, dir) = fresh().await;
    assert_eq!(store.writer_pragma("journal_mode").unwrap(), "wal");
    assert_eq!(
        store.writer_pragma("synchronous").unwrap(),
        "2",
        "synchronous=FULL"
    );
    assert_eq!(store.writer_pragma("busy_timeout").unwrap(), "5000");
    assert_eq!(store.writer_pragma("foreign_keys").unwrap(), "0");
    assert_eq!(store.writer_pragma("page_size").unwrap(), "16384");
    let checkpoint_pages: i64 = store
        .writer_pragma("wal_autocheckpoint")
        .unwrap()
        .parse()
        .unwrap();
    assert!(checkpoint_pages > 0, "the WAL must not grow without bound");
    assert!(matches!(
        store.writer_pragma("user_version; DROP TABLE tasks"),
        Err(Error::Backend { .. })
    ));
    // WAL is a property of the file: a fresh connection sees it too.
    let mode: String = raw(dir.path())
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn newer_schema_is_refused() {
    let (store, dir) = fresh().await;
    drop(store);
    raw(dir.path())
        .pragma_update(None, "user_version", 99)
        .unwrap();
    match SqliteStore::open(dir.path()) {
        Err(e @ Error::Backend { .. }) => {
            assert!(e.to_string().contains("newer"), "unexpected message: {e}")
        }
        other => panic!("opening a newer schema must fail, got {other:?}"),
    }
}

#[tokio::test]
async fn damaged_rows_read_as_corrupt() {
    let (store, dir) = fresh().await;
    store.commit(sample_batch("t-1", 1)).await.unwrap();
    let conn = raw(dir.path());
    let id = TaskId::from("t-1");
    let query = TaskQuery {
        limit: 10,
        ..TaskQuery::default()
    };

    let damage = |sql: &str| {
        conn.execute(sql, []).expect("damaging update");
    };
    let repair = |sql: &str| {
        conn.execute(sql, []).expect("repairing update");
    };

    damage("UPDATE tasks SET status = 'exploded'");
    assert!(
        matches!(store.task(&id).await, Err(Error::Corrupt { .. })),
        "task status"
    );
    assert!(matches!(
        store.list_tasks(&query).await,
        Err(Error::Corrupt { .. })
    ));
    assert!(matches!(store.recover().await, Err(Error::Corrupt { .. })));
    repair("UPDATE tasks SET status = 'running'");
    assert!(store.task(&id).await.unwrap().is_some(), "repaired");

    for (damage_sql, repair_sql) in [
        (
            "UPDATE tasks SET priority = 11",
            "UPDATE tasks SET priority = 5",
        ),
        (
            "UPDATE tasks SET max_attempts = -1",
            "UPDATE tasks SET max_attempts = 3",
        ),
        (
            "UPDATE tasks SET timeout_ms = -1",
            "UPDATE tasks SET timeout_ms = 1",
        ),
        (
            "UPDATE tasks SET result = '{nope'",
            "UPDATE tasks SET result = NULL",
        ),
        (
            "UPDATE subtasks SET state = 'zombie'",
            "UPDATE subtasks SET state = 'ready'",
        ),
        (
            "UPDATE subtasks SET input = '[1,'",
            "UPDATE subtasks SET input = 'null'",
        ),
        (
            "UPDATE subtasks SET depends_on = '{}'",
            "UPDATE subtasks SET depends_on = '[]'",
        ),
        (
            "UPDATE subtasks SET attempts = 4294967296",
            "UPDATE subtasks SET attempts = 0",
        ),
    ] {
        damage(damage_sql);
        assert!(
            matches!(store.task(&id).await, Err(Error::Corrupt { .. })),
            "{damage_sql} must read as corrupt"
        );
        repair(repair_sql);
        assert!(store.task(&id).await.is_ok(), "{repair_sql} must repair");
    }

    let timeline = store.timeline(&id).await.unwrap();
    assert_eq!(timeline.len(), 2, "sample events");
    for items in [
        "{nope",
        "[[1]]",
        "[[\"1\",\"running\"]]",
        "[[1,\"running\",null,7]]",
    ] {
        conn.execute("UPDATE events SET items = ?1", [items])
            .expect("damaging update");
        assert!(
            matches!(store.timeline(&id).await, Err(Error::Corrupt { .. })),
            "events {items} must read as corrupt"
        );
    }
    conn.execute(
        "UPDATE events SET items = '[[1,\"planned\"],[1,\"running\"]]'",
        [],
    )
    .expect("repairing update");
    assert_eq!(
        store.timeline(&id).await.unwrap(),
        vec![event("t-1", 1, "planned"), event("t-1", 2, "running")],
        "repaired events"
    );

    let assignment_id = AssignmentId::from("as-t-1");
    damage("UPDATE assignments SET state = 'zombie'");
    assert!(matches!(
        store.assignment(&assignment_id).await,
        Err(Error::Corrupt { .. })
    ));
    repair("UPDATE assignments SET state = 'active'");
    damage("UPDATE agents SET capabilities = '\"code\"'");
    assert!(
        matches!(store.recover().await, Err(Error::Corrupt { .. })),
        "agent capabilities"
    );
    repair("UPDATE agents SET capabilities = '[]'");
    damage("UPDATE agents SET status = 'asleep'");
    assert!(
        matches!(store.recover().await, Err(Error::Corrupt { .. })),
        "agent status"
    );
    repair("UPDATE agents SET status = 'idle'");
    assert!(store.recover().await.is_ok(), "all repaired");
}

#[tokio::test]
async fn reads_proceed_while_another_connection_holds_the_write_lock() {
    let (store, dir) = fresh().await;
    store.commit(sample_batch("t-1", 1)).await.unwrap();
    let mut conn = raw(dir.path());
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    tx.execute(
        "UPDATE tasks SET title = 'uncommitted' WHERE task_id = 't-1'",
        [],
    )
    .unwrap();
    // The write lock is held; reads must neither wait nor see the uncommitted title.
    let (seen, _) = store.task(&TaskId::from("t-1")).await.unwrap().unwrap();
    assert_eq!(seen.title, "title of t-1");
    assert_eq!(store.recover().await.unwrap().tasks, vec![seen]);
    tx.commit().unwrap();
    let (seen, _) = store.task(&TaskId::from("t-1")).await.unwrap().unwrap();
    assert_eq!(seen.title, "uncommitted", "committed writes become visible");
}

/// A commit stores each task's events as one row (what keeps timelines cheap to write), and
/// the rows of later commits sort after it.
#[tokio::test]
async fn events_of_one_commit_are_one_row_per_task() {
    let (store, dir) = fresh().await;
    let ids = ["t-a", "t-b", "t-c"];
    store
        .commit(WriteBatch {
            new_tasks: ids.iter().zip(1..).map(|(id, seq)| task(id, seq)).collect(),
            events: (0..4)
                .flat_map(|n| ids.iter().map(move |id| event(id, n, "running")))
                .collect(),
            ..WriteBatch::default()
        })
        .await
        .unwrap();
    store
        .commit(WriteBatch {
            events: vec![event("t-b", 9, "completed"), event("t-b", 10, "failed")],
            ..WriteBatch::default()
        })
        .await
        .unwrap();
    let rows: Vec<(String, i64)> = raw(dir.path())
        .prepare("SELECT task_id, commit_no FROM events ORDER BY task_id, commit_no")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    let first = rows[0].1;
    assert_eq!(
        rows,
        vec![
            ("t-a".to_owned(), first),
            ("t-b".to_owned(), first),
            ("t-b".to_owned(), first + 1),
            ("t-c".to_owned(), first),
        ]
    );
    let timeline = store.timeline(&TaskId::from("t-b")).await.unwrap();
    let ats: Vec<i64> = timeline.iter().map(|e| e.at).collect();
    assert_eq!(ats, [0, 1, 2, 3, 9, 10]);
}

const KILL_CHILD_DIR: &str = "BATON_STORE_KILL_9_CHILD_DIR";
const KILL_BATCHES: i64 = 20;
const COMMITTED: &str = "baton-child committed";

/// A child process commits, reports each `Ok`, and is killed with SIGKILL; every reported
/// commit must be there on reopen.
#[tokio::test]
async fn committed_data_survives_kill_9() {
    if let Ok(dir) = std::env::var(KILL_CHILD_DIR) {
        let store = SqliteStore::open(Path::new(&dir)).expect("child open");
        for seq in 1..=KILL_BATCHES {
            store
                .commit(sample_batch(&format!("t-{seq}"), seq))
                .await
                .expect("child commit");
            // The leading newline keeps the marker off libtest's "test … " line.
            println!("\n{COMMITTED} {seq}");
        }
        // Wait to be killed; stdin closes only if the parent died first.
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        std::process::exit(3);
    }

    let dir = TempDir::new().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "committed_data_survives_kill_9",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(KILL_CHILD_DIR, dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().unwrap();
    let mut reported = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(seq) = line.strip_prefix(COMMITTED) {
            reported.push(seq.trim().parse::<i64>().expect("child seq"));
        }
        if reported.last() == Some(&KILL_BATCHES) {
            break;
        }
    }
    let reported = reported.len() as i64;
    assert_eq!(reported, KILL_BATCHES, "child reported every commit");
    child.kill().expect("SIGKILL child");
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "child must die by the signal, got {status}"
    );

    let store = SqliteStore::open(dir.path()).expect("reopen after kill");
    let recovery = store.recover().await.unwrap();
    assert_eq!(recovery.max_seq, KILL_BATCHES);
    assert_eq!(recovery.tasks.len() as i64, KILL_BATCHES);
    assert_eq!(recovery.subtasks.len() as i64, 2 * KILL_BATCHES);
    assert_eq!(recovery.assignments.len() as i64, KILL_BATCHES);
    let last_id = TaskId::from(format!("t-{KILL_BATCHES}"));
    assert_eq!(store.timeline(&last_id).await.unwrap().len(), 2);
}

/// Thousands of subtask lifecycles in three group commits: all land, and the commit rate is
/// printed (a figure, not an assertion; run with `--release --nocapture` for a meaningful number).
#[tokio::test]
async fn group_commit_of_many_lifecycles() {
    const TASKS: i64 = 200;
    const SUBTASKS: u32 = 10;
    let (store, _dir) = fresh().await;
    let ids: Vec<String> = (1..=TASKS).map(|seq| format!("t-{seq}")).collect();
    let subtasks: Vec<_> = ids
        .iter()
        .flat_map(|id| (0..SUBTASKS).map(move |i| subtask(id, i)))
        .collect();
    let update = |s: &baton_core::Subtask, state, at| SubtaskUpdate {
        task_id: s.task_id.clone(),
        index: s.index,
        subtask_id: s.subtask_id.clone(),
        state,
        attempts: 1,
        assigned_agent: Some("ag-1".into()),
        outputs: (state == SubtaskState::Completed).then(|| json!({ "ok": at })),
        error: None,
        updated_at: at,
        usage: None,
    };
    let created = WriteBatch {
        agents: vec![agent("ag-1", AgentStatus::Busy)],
        new_tasks: ids.iter().zip(1..).map(|(id, seq)| task(id, seq)).collect(),
        new_subtasks: subtasks.clone(),
        events: ids.iter().map(|id| event(id, 1, "planned")).collect(),
        ..WriteBatch::default()
    };
    let mut dispatched = WriteBatch::default();
    let mut finished = WriteBatch::default();
    for s in &subtasks {
        let leased = assignment(
            &format!("as-{}", s.subtask_id),
            s,
            "ag-1",
            AssignmentState::Active,
        );
        for (state, at) in [
            (SubtaskState::Ready, 2),
            (SubtaskState::Assigned, 3),
            (SubtaskState::Running, 4),
        ] {
            dispatched.subtask_updates.push(update(s, state, at));
            dispatched
                .events
                .push(baton_store::conformance::subtask_event(
                    s.task_id.as_str(),
                    at,
                    s.subtask_id.as_str(),
                    SubtaskState::Pending,
                    state,
                ));
        }
        dispatched.assignments.push(leased.clone());
        finished
            .subtask_updates
            .push(update(s, SubtaskState::Completed, 5));
        finished
            .events
            .push(baton_store::conformance::subtask_event(
                s.task_id.as_str(),
                5,
                s.subtask_id.as_str(),
                SubtaskState::Running,
                SubtaskState::Completed,
            ));
        finished.assignments.push(baton_core::Assignment {
            state: AssignmentState::Completed,
            finished_at: Some(5),
            ..leased
        });
    }
    finished.task_updates = ids
        .iter()
        .map(|id| TaskUpdate {
            task_id: TaskId::from(id.as_str()),
            status: TaskStatus::Completed,
            started_at: Some(2),
            finished_at: Some(5),
            result: Some(json!({ "subtasks": SUBTASKS })),
            context: Default::default(),
        })
        .collect();
    let rows = [&created, &dispatched, &finished]
        .iter()
        .map(|b| {
            b.agents.len()
                + b.new_tasks.len()
                + b.new_subtasks.len()
                + b.task_updates.len()
                + b.subtask_updates.len()
                + b.assignments.len()
                + b.events.len()
        })
        .sum::<usize>();
    let started = Instant::now();
    store.commit(created).await.unwrap();
    store.commit(dispatched).await.unwrap();
    store.commit(finished).await.unwrap();
    let elapsed = started.elapsed();
    let lifecycles = subtasks.len();
    eprintln!(
        "sqlite group commit: {lifecycles} subtask lifecycles, {rows} rows in 3 commits, \
         {:.1} ms, {:.0} lifecycles/s",
        elapsed.as_secs_f64() * 1e3,
        lifecycles as f64 / elapsed.as_secs_f64()
    );

    let recovery = store.recover().await.unwrap();
    assert_eq!(recovery.tasks, vec![], "every task completed");
    assert_eq!(recovery.assignments, vec![], "no active assignment left");
    assert_eq!(recovery.max_seq, TASKS);
    let (t, subs) = store.task(&TaskId::from("t-77")).await.unwrap().unwrap();
    assert_eq!(t.status, TaskStatus::Completed);
    assert_eq!(subs.len() as u32, SUBTASKS);
    assert!(subs.iter().all(|s| s.state == SubtaskState::Completed));
    let timeline = store.timeline(&TaskId::from("t-77")).await.unwrap();
    assert_eq!(timeline.len(), 1 + 4 * SUBTASKS as usize);
    assert_eq!(
        timeline.first().map(|e| e.change.names().1),
        Some("planned")
    );
    assert_eq!(
        timeline.last().map(|e| e.change.names().1),
        Some("completed")
    );
}

/// A database written before dependencies were stored as plan indices (schema 1, ids in
/// `depends_on`) opens with every dependency rewritten as the index of the subtask it named.
#[tokio::test]
async fn dependency_ids_of_schema_1_become_indices() {
    let dir = TempDir::new().expect("temp dir");
    {
        let conn = raw(dir.path());
        conn.execute_batch(include_str!("../migrations/sqlite/0001_init.sql"))
            .unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute_batch(
            "INSERT INTO tasks (seq, task_id, title, description, priority, status, request, \
                 max_attempts, timeout_ms, created_at) \
             VALUES (1, 't-1', 't', 'd', 5, 'running', '{}', 3, 1000, 0), \
                    (2, 't-2', 't', 'd', 5, 'running', '{}', 3, 1000, 0);
             INSERT INTO subtasks (task_id, idx, subtask_id, key, capability, depends_on, input, \
                 state, attempts, updated_at) VALUES \
             ('t-1', 0, 'a::t-1::1', 'a', 'a', '[]', '{}', 'completed', 1, 0), \
             ('t-1', 1, 'b::t-1::1', 'b', 'b', '[\"a::t-1::1\"]', '{}', 'ready', 0, 0), \
             ('t-1', 2, 'a::t-1::2', 'c', 'a', '[\"b::t-1::1\",\"a::t-1::1\"]', '{}', 'pending', 0, 0), \
             ('t-2', 0, 'a::t-2::1', 'a', 'a', '[]', '{}', 'ready', 0, 0), \
             ('t-2', 1, 'a::t-2::2', 'b', 'a', '[\"a::t-2::1\"]', '{}', 'pending', 0, 0);",
        )
        .unwrap();
    }
    let store = SqliteStore::open(dir.path()).expect("open migrates");
    let deps = |subs: Vec<baton_core::Subtask>| -> Vec<Vec<u32>> {
        subs.into_iter()
            .map(|s| {
                let mut d = s.depends_on;
                d.sort();
                d
            })
            .collect()
    };
    let (_, t1) = store.task(&TaskId::from("t-1")).await.unwrap().unwrap();
    assert_eq!(deps(t1), vec![vec![], vec![0], vec![0, 1]]);
    let (_, t2) = store.task(&TaskId::from("t-2")).await.unwrap().unwrap();
    assert_eq!(deps(t2), vec![vec![], vec![0]]);
    let version: i64 = raw(dir.path())
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 5);
    // Rows written before schema 3 have no context and no rules.
    let (task, subtasks) = store.task(&TaskId::from("t-1")).await.unwrap().unwrap();
    assert!(task.context.is_empty());
    assert!(subtasks.iter().all(|s| s.rules.is_none()));
}

/// An agent written before routing stats were stored (schema 4) opens with no stats, and
/// keeps the ones it is written with from then on.
#[tokio::test]
async fn agents_of_schema_4_open_without_stats() {
    let dir = TempDir::new().expect("temp dir");
    {
        let conn = raw(dir.path());
        for sql in [
            include_str!("../migrations/sqlite/0001_init.sql"),
            include_str!("../migrations/sqlite/0002_dependency_indices.sql"),
            include_str!("../migrations/sqlite/0003_workflows.sql"),
            include_str!("../migrations/sqlite/0004_governance.sql"),
        ] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 4).unwrap();
        conn.execute_batch(
            "INSERT INTO agents (agent_id, name, kind, capabilities, domains, max_concurrency, \
                 status, token_hash, created_at) \
             VALUES ('ag-old', 'old', 'llm', '[\"code\"]', '[]', 2, 'idle', 'ab', 0);",
        )
        .unwrap();
    }
    let store = SqliteStore::open(dir.path()).expect("open migrates");
    let agents = store.recover().await.unwrap().agents;
    assert_eq!(agents.len(), 1);
    assert!(agents[0].stats.is_empty(), "{:?}", agents[0].stats);
    let learned = baton_core::Agent {
        stats: [(
            "code".to_owned(),
            baton_core::routing::CapabilityStats {
                success_rate: 0.5,
                latency_ms: 1_000.0,
                samples: 2,
            },
        )]
        .into(),
        ..agents[0].clone()
    };
    store
        .commit(WriteBatch {
            agents: vec![learned.clone()],
            ..WriteBatch::default()
        })
        .await
        .unwrap();
    assert_eq!(store.recover().await.unwrap().agents, vec![learned]);
}
