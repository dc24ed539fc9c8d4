//! The store conformance suite: what every [`Store`] backend must do, as test cases.
//!
//! Each case is a `pub async fn(&dyn Store)` that expects a fresh, empty store and panics with
//! a message naming what went wrong. A backend runs all of them with
//! [`store_conformance_tests!`](crate::store_conformance_tests), which turns every case into
//! its own `#[tokio::test]` with a fresh store:
//!
//! ```text
//! async fn fresh() -> (SqliteStore, tempfile::TempDir) { /* a new store and its guard */ }
//! baton_store::store_conformance_tests!(fresh);
//! ```
//!
//! Invariants: cases assert exact values (whole structs, exact orders), so a backend that
//! drops, reorders or alters anything fails. Where the trait leaves an order unspecified
//! (agents and assignments in [`Recovery`]) the cases sort before comparing. Values stay within
//! what every backend can hold (no NUL characters), but cover the full range of the types
//! (`u32::MAX`, negative millis, `Some(Value::Null)`, non-ASCII text).

use crate::{
    EscalationQuery, PlanReplacement, Recovery, Store, StoredWorkflow, SubtaskUpdate, TaskQuery,
    TaskUpdate, WriteBatch,
};
use baton_core::routing::CapabilityStats;
use baton_core::{
    Agent, AgentId, AgentStatus, Assignment, AssignmentId, AssignmentKind, AssignmentState, Budget,
    Change, Escalation, EscalationKind, EscalationStatus, Event, ExhaustedPolicy, Phase,
    PlannerRecord, Priority, Resolution, ResolveAction, StepRules, Subtask, SubtaskId,
    SubtaskState, Task, TaskContext, TaskId, TaskStatus, Usage, Verification,
};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Generate one `#[tokio::test]` per conformance case.
///
/// `$make` is the path of an `async fn() -> (S, G)` where `S: Store` is a fresh, empty store
/// and `G` is whatever must outlive it (a temporary directory, a database handle); `G` is
/// dropped after the store.
#[macro_export]
macro_rules! store_conformance_tests {
    ($make:path) => {
        $crate::store_conformance_tests!(@cases $make;
            empty_store_reads_nothing,
            empty_batch_commits,
            round_trips_every_type,
            task_reads_only_its_own_subtasks_in_plan_order,
            task_updates_apply_and_last_wins,
            subtask_updates_apply_and_last_wins,
            rows_created_and_updated_in_one_batch,
            upserts_replace_whole_rows,
            agent_stats_follow_the_agent_row,
            timeline_keeps_commit_order,
            task_detail_matches_task_and_timeline,
            timeline_of_many_interleaved_tasks,
            list_tasks_filters,
            list_tasks_pages_newest_first,
            recover_returns_live_state,
            recover_max_seq_counts_terminal_tasks,
            failed_batch_leaves_nothing,
            update_of_unknown_row_fails_whole_batch,
            reads_of_unknown_ids,
            concurrent_commits_all_land,
            plan_replacement_swaps_subtasks_and_context,
            workflow_versions_count_up_per_name,
            concurrent_publications_get_distinct_versions,
        );
    };
    (@cases $make:path; $($case:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, guard) = $make().await;
                $crate::conformance::$case(&store).await;
                drop(store);
                drop(guard);
            }
        )+
    };
}

// ---------------------------------------------------------------------------------------------
// Fixtures

/// A task with every optional field empty.
pub fn task(id: &str, seq: i64) -> Task {
    Task {
        task_id: TaskId::from(id),
        seq,
        title: format!("title of {id}"),
        description: String::new(),
        task_type: None,
        priority: Priority::NORMAL,
        status: TaskStatus::Planned,
        request: format!(r#"{{"title":"title of {id}"}}"#),
        due_at: None,
        max_attempts: 3,
        timeout_ms: 300_000,
        created_at: 1_700_000_000_000 + seq,
        started_at: None,
        finished_at: None,
        result: None,
        context: TaskContext::default(),
    }
}

/// A subtask of `task_id` at plan position `index`, with every optional field empty.
pub fn subtask(task_id: &str, index: u32) -> Subtask {
    let task_id = TaskId::from(task_id);
    Subtask {
        subtask_id: SubtaskId::compose("code", &task_id, index + 1),
        task_id,
        index,
        key: format!("step-{index}"),
        capability: "code".into(),
        depends_on: Vec::new(),
        input: json!({ "brief": format!("step {index}") }),
        state: SubtaskState::Pending,
        attempts: 0,
        assigned_agent: None,
        outputs: None,
        error: None,
        updated_at: 1_700_000_000_000,
        rules: None,
        usage: None,
    }
}

/// An agent serving `code`.
pub fn agent(id: &str, status: AgentStatus) -> Agent {
    Agent {
        agent_id: AgentId::from(id),
        name: format!("agent {id}"),
        kind: "llm".into(),
        capabilities: vec!["code".into()],
        domains: Vec::new(),
        max_concurrency: 4,
        status,
        token_hash: "ab".repeat(32),
        created_at: 1_700_000_000_000,
        stats: BTreeMap::new(),
    }
}

/// A routing record (values exact in binary, so every backend holds them exactly).
pub fn stats(success_rate: f64, latency_ms: f64, samples: u64) -> CapabilityStats {
    CapabilityStats {
        success_rate,
        latency_ms,
        samples,
    }
}

/// First attempt of `subtask` on `agent`.
pub fn assignment(id: &str, subtask: &Subtask, agent: &str, state: AssignmentState) -> Assignment {
    Assignment {
        assignment_id: AssignmentId::from(id),
        task_id: subtask.task_id.clone(),
        subtask_id: subtask.subtask_id.clone(),
        agent_id: AgentId::from(agent),
        attempt: 1,
        state,
        lease_expires_at: 1_700_000_060_000,
        created_at: 1_700_000_000_000,
        finished_at: None,
        kind: AssignmentKind::Work,
    }
}

/// A task-level event; `to` names a task status.
pub fn event(task_id: &str, at: i64, to: &str) -> Event {
    Event {
        task_id: TaskId::from(task_id),
        at,
        change: Change::Task {
            from: None,
            to: TaskStatus::parse(to).expect("a task status"),
        },
        agent: None,
        note: None,
    }
}

/// A subtask-level event.
pub fn subtask_event(
    task_id: &str,
    at: i64,
    subtask: &str,
    from: SubtaskState,
    to: SubtaskState,
) -> Event {
    Event {
        change: Change::Subtask {
            subtask_id: SubtaskId::from(subtask),
            from,
            to,
        },
        ..event(task_id, at, "running")
    }
}

async fn commit(store: &dyn Store, batch: WriteBatch) {
    if let Err(e) = store.commit(batch).await {
        panic!("commit failed: {e}");
    }
}

async fn read_task(store: &dyn Store, id: &str) -> Option<(Task, Vec<Subtask>)> {
    store
        .task(&TaskId::from(id))
        .await
        .unwrap_or_else(|e| panic!("task({id}) failed: {e}"))
}

async fn read_timeline(store: &dyn Store, id: &str) -> Vec<Event> {
    store
        .timeline(&TaskId::from(id))
        .await
        .unwrap_or_else(|e| panic!("timeline({id}) failed: {e}"))
}

async fn read_assignment(store: &dyn Store, id: &str) -> Option<Assignment> {
    store
        .assignment(&AssignmentId::from(id))
        .await
        .unwrap_or_else(|e| panic!("assignment({id}) failed: {e}"))
}

async fn list(store: &dyn Store, query: TaskQuery) -> Vec<Task> {
    store
        .list_tasks(&query)
        .await
        .unwrap_or_else(|e| panic!("list_tasks({query:?}) failed: {e}"))
}

async fn list_ids(store: &dyn Store, query: TaskQuery) -> Vec<String> {
    list(store, query)
        .await
        .into_iter()
        .map(|t| t.task_id.0)
        .collect()
}

/// `recover`, with the parts whose order the trait leaves open sorted by id.
async fn recover(store: &dyn Store) -> Recovery {
    let mut recovery = store
        .recover()
        .await
        .unwrap_or_else(|e| panic!("recover failed: {e}"));
    recovery.agents.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
    recovery
        .assignments
        .sort_by(|a, b| a.assignment_id.cmp(&b.assignment_id));
    recovery
}

/// A batch of new tasks only.
fn new_tasks(tasks: Vec<Task>) -> WriteBatch {
    WriteBatch {
        new_tasks: tasks,
        ..WriteBatch::default()
    }
}

fn task_update(
    task_id: &str,
    status: TaskStatus,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    result: Option<Value>,
) -> TaskUpdate {
    TaskUpdate {
        task_id: TaskId::from(task_id),
        status,
        started_at,
        finished_at,
        result,
        context: TaskContext::default(),
    }
}

fn query(limit: u32) -> TaskQuery {
    TaskQuery {
        limit,
        ..TaskQuery::default()
    }
}

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// Cases

/// A fresh store has nothing to read and nothing to recover.
pub async fn empty_store_reads_nothing(store: &dyn Store) {
    assert_eq!(read_task(store, "t-1").await, None, "task");
    assert_eq!(read_timeline(store, "t-1").await, vec![], "timeline");
    assert_eq!(read_assignment(store, "as-1").await, None, "assignment");
    assert_eq!(list(store, query(100)).await, vec![], "list_tasks");
    assert_eq!(recover(store).await, Recovery::default(), "recover");
}

/// Committing an empty batch succeeds, writes nothing, and the store keeps working.
pub async fn empty_batch_commits(store: &dyn Store) {
    commit(store, WriteBatch::default()).await;
    commit(store, WriteBatch::default()).await;
    assert_eq!(
        recover(store).await,
        Recovery::default(),
        "empty batches wrote"
    );
    commit(store, new_tasks(vec![task("t-1", 1)])).await;
    commit(store, WriteBatch::default()).await;
    assert_eq!(list_ids(store, query(10)).await, ids(&["t-1"]));
}

/// Every type comes back field for field: full and empty optionals, JSON `null` versus no
/// value, extreme numbers and non-ASCII text.
pub async fn round_trips_every_type(store: &dyn Store) {
    let full_task = Task {
        task_id: TaskId::from("tâche-東京-1"),
        seq: 41,
        title: "Déployer l'API 🚀 — 東京 \"quoted\" 'single' \\ back".into(),
        description: "line one\nline two\ttabbed — ünïcödé".into(),
        task_type: Some("feature-dev".into()),
        priority: Priority::CRITICAL,
        status: TaskStatus::Escalated,
        request: r#"{"description":"x","priority":"critical","title":"Déployer"}"#.into(),
        due_at: Some(1_800_000_000_123),
        max_attempts: u32::MAX,
        timeout_ms: i64::MAX as u64,
        created_at: -1_000,
        started_at: Some(0),
        finished_at: Some(i64::MAX),
        result: Some(json!({
            "summary": "fait ✓",
            "nested": { "list": [1, -2, 1.5, true, null, "s"], "empty": {} },
            "big": u64::MAX,
            "negative": i64::MIN,
        })),
        context: TaskContext {
            params: json!({ "topic": "éthique", "n": 3 })
                .as_object()
                .cloned()
                .unwrap_or_default(),
            metadata: Some(json!({ "requester": "ü", "due_date": "2030-01-01" })),
            planner: Some(PlannerRecord::LlmFallback {
                reason: "timeout after 20 s".into(),
                matched: [("backend".to_owned(), vec!["api".to_owned()])].into(),
            }),
            objectives: vec!["one".into()],
            constraints: vec!["two".into()],
            acceptance_criteria: vec!["three ✓".into()],
            on_exhausted: Some(ExhaustedPolicy::Fail),
            manual: true,
            checkpoints: vec![0, u32::MAX],
            budget: Some(Budget {
                max_tokens: Some(u64::MAX),
                max_cost_usd: Some(0.125),
                max_duration_s: Some(60),
            }),
        },
    };
    let empty_task = Task {
        priority: Priority::new(1).expect("1 is a priority"),
        ..task("t-empty", 42)
    };
    let full_subtask = Subtask {
        subtask_id: SubtaskId::from("review::tâche-東京-1::1"),
        task_id: full_task.task_id.clone(),
        index: 1,
        key: "revue-✓".into(),
        capability: "review".into(),
        depends_on: vec![0, u32::MAX],
        input: json!({ "brief": "vérifier", "params": { "strict": true, "n": 3 } }),
        state: SubtaskState::RetryWait,
        attempts: u32::MAX,
        assigned_agent: Some(AgentId::from("agent-ü")),
        outputs: Some(json!(["a", { "b": null }])),
        error: Some("échec: délai dépassé ⏱".into()),
        updated_at: -5,
        rules: Some(Box::new(StepRules {
            when: Some("params.n > 2 and exists(steps.code.outputs.x)".into()),
            verify: Some(json!({ "capability": "verify" })),
            approval: Some(json!(true)),
            timeout_ms: Some(u64::MAX >> 1),
            max_attempts: Some(u32::MAX),
            on_exhausted: Some(ExhaustedPolicy::Escalate),
        })),
        usage: Some(Usage {
            tokens_in: u64::MAX,
            tokens_out: 0,
            cost_usd: 1.5,
        }),
    };
    let empty_subtask = Subtask {
        subtask_id: SubtaskId::from("code::tâche-東京-1::1"),
        task_id: full_task.task_id.clone(),
        index: 0,
        key: "code".into(),
        capability: "code".into(),
        depends_on: Vec::new(),
        input: Value::Null,
        state: SubtaskState::Completed,
        attempts: 0,
        assigned_agent: None,
        outputs: Some(Value::Null),
        error: None,
        updated_at: 0,
        rules: Some(Box::default()),
        usage: Some(Usage::default()),
    };
    let empty_task_subtask = Subtask {
        input: json!("just a string"),
        ..subtask("t-empty", 0)
    };
    let full_agent = Agent {
        agent_id: AgentId::from("agent-ü"),
        name: "Agent Ünïcode 🤖".into(),
        kind: "tool".into(),
        capabilities: vec!["review".into(), "code".into(), "lint".into()],
        domains: vec!["backend".into(), "données".into()],
        max_concurrency: u32::MAX,
        status: AgentStatus::Unhealthy,
        token_hash: "0123456789abcdef".repeat(4),
        created_at: -42,
        stats: BTreeMap::from([
            ("review".to_owned(), stats(0.0, 0.0, 1)),
            ("code".to_owned(), stats(0.734_375, 98_765.25, u64::MAX)),
            ("données".to_owned(), stats(1.0, 0.007_812_5, 0)),
        ]),
    };
    let bare_agent = Agent {
        capabilities: Vec::new(),
        max_concurrency: 0,
        ..agent("agent-bare", AgentStatus::Starting)
    };
    let open_assignment = Assignment {
        attempt: u32::MAX,
        lease_expires_at: i64::MAX,
        created_at: i64::MIN,
        ..assignment("as-ü-1", &full_subtask, "agent-ü", AssignmentState::Active)
    };
    let closed_assignment = Assignment {
        finished_at: Some(1_700_000_001_000),
        kind: AssignmentKind::Verification,
        ..assignment("as-2", &empty_subtask, "agent-bare", AssignmentState::Lost)
    };
    let verdict = Verification {
        task_id: full_task.task_id.clone(),
        subtask_id: full_subtask.subtask_id.clone(),
        n: u32::MAX,
        attempt: 3,
        author: AgentId::from("agent-ü"),
        verifier: AgentId::from("agent-bare"),
        verified: false,
        evidence: json!(["log ✓", { "line": 3 }]),
        feedback: Some("réessayer".into()),
        at: -3,
    };
    let bare_verdict = Verification {
        n: 1,
        verified: true,
        evidence: json!([]),
        feedback: None,
        ..verdict.clone()
    };
    let open_escalation = Escalation {
        escalation_id: "esc-ü-1".into(),
        task_id: full_task.task_id.clone(),
        subtask_id: Some(full_subtask.subtask_id.clone()),
        kind: EscalationKind::Verification,
        status: EscalationStatus::Open,
        reason: "3 négatifs".into(),
        evidence: json!({ "verdicts": [1, 2, 3] }),
        suggestions: vec!["retry".into(), "provide_output ✓".into()],
        created_at: 5,
        resolved_at: None,
        resolution: None,
    };
    let resolved_escalation = Escalation {
        escalation_id: "esc-task".into(),
        subtask_id: None,
        kind: EscalationKind::Budget,
        status: EscalationStatus::Resolved,
        suggestions: Vec::new(),
        created_at: 4,
        resolved_at: Some(9),
        resolution: Some(Resolution {
            action: ResolveAction::RaiseBudget,
            note: Some("ok".into()),
            outputs: Some(json!({ "x": null })),
            budget: Some(Budget::default()),
            attempts: u32::MAX,
        }),
        ..open_escalation.clone()
    };
    let full_event = Event {
        agent: Some(AgentId::from("agent-ü")),
        note: Some("bail expiré — réessai 🔁".into()),
        ..subtask_event(
            full_task.task_id.as_str(),
            -7,
            full_subtask.subtask_id.as_str(),
            SubtaskState::Running,
            SubtaskState::RetryWait,
        )
    };
    let bare_event = event(full_task.task_id.as_str(), 0, "planned");

    commit(
        store,
        WriteBatch {
            plans: Vec::new(),
            agents: vec![full_agent.clone(), bare_agent.clone()],
            new_tasks: vec![full_task.clone(), empty_task.clone()],
            new_subtasks: vec![
                full_subtask.clone(),
                empty_subtask.clone(),
                empty_task_subtask.clone(),
            ],
            task_updates: Vec::new(),
            subtask_updates: Vec::new(),
            assignments: vec![open_assignment.clone(), closed_assignment.clone()],
            verifications: vec![bare_verdict.clone(), verdict.clone()],
            escalations: vec![open_escalation.clone(), resolved_escalation.clone()],
            events: vec![bare_event.clone(), full_event.clone()],
        },
    )
    .await;
    let detail = store
        .task_detail(&full_task.task_id)
        .await
        .expect("task detail")
        .expect("stored");
    assert_eq!(
        detail.verifications,
        vec![bare_verdict, verdict],
        "verdicts in order"
    );
    assert_eq!(
        detail.escalations,
        vec![resolved_escalation.clone(), open_escalation.clone()],
        "escalations oldest first"
    );
    assert_eq!(
        store.escalation("esc-task").await.expect("read"),
        Some(resolved_escalation.clone())
    );
    let open_only = EscalationQuery {
        status: Some(EscalationStatus::Open),
        limit: 10,
        ..EscalationQuery::default()
    };
    assert_eq!(
        store.escalations(&open_only).await.expect("list"),
        vec![open_escalation]
    );

    assert_eq!(
        read_task(store, "tâche-東京-1").await,
        Some((full_task.clone(), vec![empty_subtask, full_subtask])),
        "full task and its subtasks"
    );
    assert_eq!(
        read_task(store, "t-empty").await,
        Some((empty_task.clone(), vec![empty_task_subtask])),
        "task with empty optionals"
    );
    assert_eq!(
        read_assignment(store, "as-ü-1").await,
        Some(open_assignment.clone()),
        "active assignment"
    );
    assert_eq!(
        read_assignment(store, "as-2").await,
        Some(closed_assignment),
        "finished assignment"
    );
    assert_eq!(
        read_timeline(store, "tâche-東京-1").await,
        vec![bare_event, full_event],
        "events"
    );
    assert_eq!(
        list(store, query(10)).await,
        vec![empty_task.clone(), full_task.clone()],
        "list_tasks returns whole tasks"
    );
    let recovery = recover(store).await;
    assert_eq!(recovery.agents, vec![bare_agent, full_agent], "agents");
    assert_eq!(
        recovery.assignments,
        vec![open_assignment],
        "active assignments"
    );
    assert_eq!(
        recovery.tasks,
        vec![full_task, empty_task],
        "recovered tasks"
    );
    assert_eq!(recovery.max_seq, 42, "max_seq");
}

/// `task` returns only that task's subtasks, in plan order whatever the insertion order.
pub async fn task_reads_only_its_own_subtasks_in_plan_order(store: &dyn Store) {
    let a: Vec<Subtask> = (0..5).map(|i| subtask("t-a", i)).collect();
    let b: Vec<Subtask> = (0..3).map(|i| subtask("t-b", i)).collect();
    commit(
        store,
        WriteBatch {
            new_subtasks: vec![
                a[3].clone(),
                b[2].clone(),
                a[0].clone(),
                a[4].clone(),
                b[0].clone(),
            ],
            ..new_tasks(vec![task("t-a", 1), task("t-b", 2), task("t-c", 3)])
        },
    )
    .await;
    commit(
        store,
        WriteBatch {
            new_subtasks: vec![a[2].clone(), b[1].clone(), a[1].clone()],
            ..WriteBatch::default()
        },
    )
    .await;
    assert_eq!(read_task(store, "t-a").await, Some((task("t-a", 1), a)));
    assert_eq!(read_task(store, "t-b").await, Some((task("t-b", 2), b)));
    assert_eq!(
        read_task(store, "t-c").await,
        Some((task("t-c", 3), vec![])),
        "a task without subtasks"
    );
}

/// Task updates change exactly the lifecycle fields; the last update of a row in a batch wins,
/// and an update can clear a field.
pub async fn task_updates_apply_and_last_wins(store: &dyn Store) {
    let base = Task {
        task_type: Some("build".into()),
        due_at: Some(5_000),
        ..task("t-1", 1)
    };
    let other = task("t-2", 2);
    commit(store, new_tasks(vec![base.clone(), other.clone()])).await;
    commit(
        store,
        WriteBatch {
            task_updates: vec![
                task_update("t-1", TaskStatus::Running, Some(100), None, None),
                task_update(
                    "t-1",
                    TaskStatus::Completed,
                    Some(100),
                    Some(900),
                    Some(json!({ "ok": true })),
                ),
            ],
            ..WriteBatch::default()
        },
    )
    .await;
    let completed = Task {
        status: TaskStatus::Completed,
        started_at: Some(100),
        finished_at: Some(900),
        result: Some(json!({ "ok": true })),
        ..base.clone()
    };
    assert_eq!(
        read_task(store, "t-1").await,
        Some((completed, vec![])),
        "the second update of the batch must win"
    );
    assert_eq!(
        read_task(store, "t-2").await,
        Some((other, vec![])),
        "another task must be untouched"
    );

    // A later commit can clear what an earlier one set.
    commit(
        store,
        WriteBatch {
            task_updates: vec![task_update(
                "t-1",
                TaskStatus::Failed,
                None,
                Some(1_000),
                None,
            )],
            ..WriteBatch::default()
        },
    )
    .await;
    let failed = Task {
        status: TaskStatus::Failed,
        finished_at: Some(1_000),
        ..base
    };
    assert_eq!(read_task(store, "t-1").await, Some((failed, vec![])));
}

/// Subtask updates change exactly the mutable fields; the last update of a row in a batch wins,
/// and an update can clear a field.
pub async fn subtask_updates_apply_and_last_wins(store: &dyn Store) {
    let s0 = Subtask {
        depends_on: vec![],
        ..subtask("t-1", 0)
    };
    let s1 = Subtask {
        depends_on: vec![0],
        ..subtask("t-1", 1)
    };
    commit(
        store,
        WriteBatch {
            new_subtasks: vec![s0.clone(), s1.clone()],
            ..new_tasks(vec![task("t-1", 1)])
        },
    )
    .await;
    let update =
        |state, attempts, agent: Option<&str>, outputs, error: Option<&str>, at| SubtaskUpdate {
            task_id: s0.task_id.clone(),
            index: s0.index,
            subtask_id: s0.subtask_id.clone(),
            state,
            attempts,
            assigned_agent: agent.map(AgentId::from),
            outputs,
            error: error.map(String::from),
            updated_at: at,
            usage: None,
        };
    commit(
        store,
        WriteBatch {
            subtask_updates: vec![
                update(SubtaskState::Ready, 0, None, None, None, 10),
                update(SubtaskState::Assigned, 1, Some("ag-1"), None, None, 20),
                update(
                    SubtaskState::RetryWait,
                    1,
                    Some("ag-1"),
                    Some(json!({ "partial": [1, 2] })),
                    Some("boom"),
                    30,
                ),
            ],
            ..WriteBatch::default()
        },
    )
    .await;
    let retrying = Subtask {
        state: SubtaskState::RetryWait,
        attempts: 1,
        assigned_agent: Some(AgentId::from("ag-1")),
        outputs: Some(json!({ "partial": [1, 2] })),
        error: Some("boom".into()),
        updated_at: 30,
        ..s0.clone()
    };
    assert_eq!(
        read_task(store, "t-1").await,
        Some((task("t-1", 1), vec![retrying, s1.clone()])),
        "the last update of the batch must win; the sibling must be untouched"
    );

    commit(
        store,
        WriteBatch {
            subtask_updates: vec![update(SubtaskState::Ready, 1, None, None, None, 40)],
            ..WriteBatch::default()
        },
    )
    .await;
    let ready = Subtask {
        state: SubtaskState::Ready,
        attempts: 1,
        updated_at: 40,
        ..s0
    };
    assert_eq!(
        read_task(store, "t-1").await,
        Some((task("t-1", 1), vec![ready, s1])),
        "an update must clear agent, outputs and error"
    );
}

/// Rows inserted and then updated in the same batch end in their updated state, because
/// inserts are applied before updates whatever the order the engine produced them in.
pub async fn rows_created_and_updated_in_one_batch(store: &dyn Store) {
    let t = task("t-1", 1);
    let s = subtask("t-1", 0);
    let first = assignment("as-1", &s, "ag-1", AssignmentState::Active);
    let done = Assignment {
        state: AssignmentState::Completed,
        finished_at: Some(50),
        ..first.clone()
    };
    commit(
        store,
        WriteBatch {
            plans: Vec::new(),
            agents: vec![agent("ag-1", AgentStatus::Idle)],
            new_tasks: vec![t.clone()],
            new_subtasks: vec![s.clone()],
            task_updates: vec![task_update(
                t.task_id.as_str(),
                TaskStatus::Running,
                Some(10),
                None,
                None,
            )],
            subtask_updates: vec![SubtaskUpdate {
                task_id: s.task_id.clone(),
                index: s.index,
                subtask_id: s.subtask_id.clone(),
                state: SubtaskState::Completed,
                attempts: 1,
                assigned_agent: Some(AgentId::from("ag-1")),
                outputs: Some(json!({ "diff": "+1" })),
                error: None,
                updated_at: 50,
                usage: Some(Usage {
                    tokens_in: 3,
                    tokens_out: 4,
                    cost_usd: 0.5,
                }),
            }],
            assignments: vec![first, done.clone()],
            verifications: Vec::new(),
            escalations: Vec::new(),
            events: vec![event("t-1", 10, "running")],
        },
    )
    .await;
    let running = Task {
        status: TaskStatus::Running,
        started_at: Some(10),
        ..t
    };
    let completed = Subtask {
        state: SubtaskState::Completed,
        attempts: 1,
        assigned_agent: Some(AgentId::from("ag-1")),
        outputs: Some(json!({ "diff": "+1" })),
        updated_at: 50,
        usage: Some(Usage {
            tokens_in: 3,
            tokens_out: 4,
            cost_usd: 0.5,
        }),
        ..s
    };
    assert_eq!(
        read_task(store, "t-1").await,
        Some((running, vec![completed]))
    );
    assert_eq!(read_assignment(store, "as-1").await, Some(done));
    assert_eq!(
        read_timeline(store, "t-1").await,
        vec![event("t-1", 10, "running")]
    );
}

/// Agents and assignments are replaced whole, across commits and within one batch.
pub async fn upserts_replace_whole_rows(store: &dyn Store) {
    let s = subtask("t-1", 0);
    let original_agent = Agent {
        domains: vec!["web".into()],
        stats: BTreeMap::from([("code".to_owned(), stats(1.0, 10.0, 1))]),
        ..agent("ag-1", AgentStatus::Starting)
    };
    let original_assignment = assignment("as-1", &s, "ag-1", AssignmentState::Active);
    commit(
        store,
        WriteBatch {
            agents: vec![original_agent.clone()],
            new_tasks: vec![task("t-1", 1)],
            new_subtasks: vec![s.clone()],
            assignments: vec![original_assignment.clone()],
            ..WriteBatch::default()
        },
    )
    .await;
    let replaced_agent = Agent {
        agent_id: original_agent.agent_id.clone(),
        name: "renamed".into(),
        kind: "http".into(),
        capabilities: vec!["review".into()],
        domains: Vec::new(),
        max_concurrency: 1,
        status: AgentStatus::Busy,
        token_hash: "cd".repeat(32),
        created_at: 7,
        stats: BTreeMap::from([("review".to_owned(), stats(0.5, 250.0, 3))]),
    };
    let replaced_assignment = Assignment {
        assignment_id: original_assignment.assignment_id.clone(),
        task_id: TaskId::from("t-other"),
        subtask_id: SubtaskId::from("code::t-other::9"),
        agent_id: AgentId::from("ag-2"),
        attempt: 2,
        state: AssignmentState::Failed,
        lease_expires_at: 99,
        created_at: 98,
        finished_at: Some(100),
        kind: AssignmentKind::Verification,
    };
    commit(
        store,
        WriteBatch {
            agents: vec![
                Agent {
                    status: AgentStatus::Idle,
                    ..original_agent.clone()
                },
                replaced_agent.clone(),
            ],
            assignments: vec![
                Assignment {
                    state: AssignmentState::Lost,
                    ..original_assignment.clone()
                },
                replaced_assignment.clone(),
            ],
            ..WriteBatch::default()
        },
    )
    .await;
    assert_eq!(
        read_assignment(store, "as-1").await,
        Some(replaced_assignment),
        "assignment must be replaced whole by the last write"
    );
    assert_eq!(
        recover(store).await.agents,
        vec![replaced_agent],
        "agent must be replaced whole by the last write"
    );
}

/// An agent's routing stats are written with its row and recovered as last written: a
/// capability learned later appears, one left out disappears, and a row written again without
/// changes keeps them.
pub async fn agent_stats_follow_the_agent_row(store: &dyn Store) {
    let learning = Agent {
        capabilities: vec!["code".into(), "review".into()],
        ..agent("ag-learning", AgentStatus::Idle)
    };
    let learned = Agent {
        stats: BTreeMap::from([
            ("code".to_owned(), stats(0.8, 1_250.0, 1)),
            ("review".to_owned(), stats(0.25, 64.0, 4)),
        ]),
        ..learning.clone()
    };
    let relearned = Agent {
        stats: BTreeMap::from([("review".to_owned(), stats(0.5, 96.0, 5))]),
        ..learning.clone()
    };
    let batch = |agents: Vec<Agent>| WriteBatch {
        agents,
        ..WriteBatch::default()
    };
    commit(store, batch(vec![learning.clone()])).await;
    assert_eq!(
        recover(store).await.agents,
        vec![learning.clone()],
        "no stats yet"
    );
    commit(store, batch(vec![learned.clone()])).await;
    assert_eq!(
        recover(store).await.agents,
        vec![learned.clone()],
        "stats learned"
    );
    commit(store, batch(vec![learned.clone(), relearned.clone()])).await;
    assert_eq!(
        recover(store).await.agents,
        vec![relearned.clone()],
        "the last write of the row wins, stats included"
    );
    let drained = Agent {
        status: AgentStatus::Draining,
        ..relearned
    };
    commit(store, batch(vec![drained.clone()])).await;
    assert_eq!(
        recover(store).await.agents,
        vec![drained],
        "kept across a status change"
    );
}

/// A timeline is in commit order, then batch order, regardless of the events' timestamps,
/// and holds only that task's events.
pub async fn timeline_keeps_commit_order(store: &dyn Store) {
    let step = |task: &str, at, to: &str, subtask: Option<&str>| match subtask {
        None => event(task, at, to),
        Some(s) => subtask_event(
            task,
            at,
            s,
            SubtaskState::Pending,
            SubtaskState::parse(to).expect("a subtask state"),
        ),
    };
    let batches = vec![
        vec![
            step("t-1", 100, "planned", None),
            step("t-1", 50, "running", None),
            step("t-2", 100, "planned", None),
        ],
        vec![
            step("t-2", 10, "running", None),
            step("t-1", 10, "ready", Some("code::t-1::1")),
            step("t-1", 10, "assigned", Some("code::t-1::1")),
        ],
        vec![step("t-1", 5, "completed", None)],
    ];
    commit(store, new_tasks(vec![task("t-1", 1), task("t-2", 2)])).await;
    for events in batches.iter().cloned() {
        commit(
            store,
            WriteBatch {
                events,
                ..WriteBatch::default()
            },
        )
        .await;
    }
    let all: Vec<Event> = batches.into_iter().flatten().collect();
    let of = |id: &str| -> Vec<Event> {
        all.iter()
            .filter(|e| e.task_id.as_str() == id)
            .cloned()
            .collect()
    };
    assert_eq!(
        read_timeline(store, "t-1").await,
        of("t-1"),
        "timeline of t-1"
    );
    assert_eq!(
        read_timeline(store, "t-2").await,
        of("t-2"),
        "timeline of t-2"
    );
    assert_eq!(of("t-1").len(), 5, "fixture sanity");
}

/// `task_detail` returns the task, its subtasks and its timeline exactly as `task` and
/// `timeline` do, and `None` for an unknown task.
pub async fn task_detail_matches_task_and_timeline(store: &dyn Store) {
    let t = task("td-1", 1);
    let subs = vec![subtask("td-1", 0), subtask("td-1", 1)];
    commit(
        store,
        WriteBatch {
            new_tasks: vec![t.clone()],
            new_subtasks: subs.clone(),
            events: vec![event("td-1", 1, "planned"), event("td-1", 2, "running")],
            ..WriteBatch::default()
        },
    )
    .await;
    commit(
        store,
        WriteBatch {
            events: vec![event("td-1", 3, "completed")],
            ..WriteBatch::default()
        },
    )
    .await;
    let id = TaskId::from("td-1");
    let detail = store
        .task_detail(&id)
        .await
        .expect("task_detail reads")
        .expect("the task exists");
    let (task_read, subtasks_read) = store.task(&id).await.unwrap().unwrap();
    assert_eq!(detail.task, task_read, "task");
    assert_eq!(detail.subtasks, subtasks_read, "subtasks");
    assert_eq!(detail.subtasks, subs, "subtasks as committed");
    assert_eq!(
        detail.events,
        store.timeline(&id).await.unwrap(),
        "timeline"
    );
    assert_eq!(detail.events.len(), 3, "every event");
    assert!(store
        .task_detail(&TaskId::from("nope"))
        .await
        .unwrap()
        .is_none());
}

/// Many tasks whose events interleave within each batch and across batches, with every field
/// shape (usual and unusual subtask ids, agents, notes, extreme and unordered times): each
/// timeline is exactly that task's events in commit order, then batch order.
pub async fn timeline_of_many_interleaved_tasks(store: &dyn Store) {
    const TASKS: usize = 40;
    let ids: Vec<String> = (0..TASKS).map(|i| format!("t-{i}")).collect();
    commit(
        store,
        new_tasks(ids.iter().zip(1..).map(|(id, seq)| task(id, seq)).collect()),
    )
    .await;
    let shaped = |i: usize, n: usize| -> Event {
        let id = &ids[i];
        let at = match (i + n) % 5 {
            0 => i64::MIN,
            1 => i64::MAX,
            2 => -((i * 7 + n) as i64),
            _ => 1_700_000_000_000 + ((i * 31 + n * 17) % 97) as i64,
        };
        let subtask = match n % 4 {
            0 => None,
            1 => Some(SubtaskId::compose(
                "code",
                &TaskId::from(id.as_str()),
                n as u32,
            )),
            2 => Some(SubtaskId::from(format!("odd::{id}"))),
            _ => Some(SubtaskId::from(format!("review::{id}::{id}::x"))),
        };
        let change = match subtask {
            None => Change::Task {
                from: (!n.is_multiple_of(3)).then(|| TaskStatus::ALL[n % 7]),
                to: TaskStatus::ALL[n % TaskStatus::ALL.len()],
            },
            Some(subtask_id) if n.is_multiple_of(3) => Change::Phase {
                subtask_id,
                from: n.is_multiple_of(2).then(|| Phase::ALL[n % 3]),
                to: Phase::ALL[(n + 1) % 3],
            },
            Some(subtask_id) => Change::Subtask {
                subtask_id,
                from: SubtaskState::ALL[n % 7],
                to: SubtaskState::ALL[n % SubtaskState::ALL.len()],
            },
        };
        Event {
            task_id: TaskId::from(id.as_str()),
            at,
            change,
            agent: (n % 2 == 1).then(|| AgentId::from(format!("ag-{}", i % 3))),
            note: (n % 5 == 4).then(|| format!("note {n} of {id} — ü")),
        }
    };
    // Round-robin in varying orders, a task's events never adjacent; then runs of one task;
    // then a batch with a single task; some tasks sit out some batches.
    let mut batches: Vec<Vec<Event>> = Vec::new();
    let mut n = 0;
    for round in 0..3 {
        let mut batch = Vec::new();
        for _ in 0..3 {
            for k in 0..TASKS {
                let i = (k * 7 + round * 11) % TASKS;
                if (i + round) % 4 != 3 {
                    batch.push(shaped(i, n));
                    n += 1;
                }
            }
        }
        batches.push(batch);
    }
    batches.push(
        (0..TASKS)
            .rev()
            .flat_map(|i| (0..3).map(move |k| (i, k)))
            .map(|(i, k)| shaped(i, n + k))
            .collect(),
    );
    batches.push((0..5).map(|k| shaped(17, n + 3 + k)).collect());

    for events in batches.iter().cloned() {
        commit(
            store,
            WriteBatch {
                events,
                ..WriteBatch::default()
            },
        )
        .await;
    }
    let all: Vec<Event> = batches.into_iter().flatten().collect();
    for id in &ids {
        let expected: Vec<Event> = all
            .iter()
            .filter(|e| e.task_id.as_str() == id)
            .cloned()
            .collect();
        assert!(expected.len() >= 8, "fixture sanity: {id}");
        assert_eq!(read_timeline(store, id).await, expected, "timeline of {id}");
    }
}

/// The `list_tasks` fixture: (id, seq, status, priority, task_type), inserted out of order.
fn list_fixture() -> Vec<Task> {
    let rows: [(&str, i64, TaskStatus, u8, Option<&str>); 8] = [
        ("t-e", 5, TaskStatus::Failed, 10, Some("build")),
        ("t-a", 1, TaskStatus::Completed, 5, Some("build")),
        ("t-h", 8, TaskStatus::Running, 5, Some("build")),
        ("t-c", 3, TaskStatus::Planned, 5, None),
        ("t-b", 2, TaskStatus::Running, 8, Some("build")),
        ("t-g", 7, TaskStatus::Cancelled, 3, Some("review")),
        ("t-d", 4, TaskStatus::Running, 5, Some("review")),
        ("t-f", 6, TaskStatus::Running, 8, None),
    ];
    rows.into_iter()
        .map(|(id, seq, status, priority, task_type)| Task {
            status,
            priority: Priority::new(priority).expect("fixture priority"),
            task_type: task_type.map(String::from),
            ..task(id, seq)
        })
        .collect()
}

/// `list_tasks` filters by status, priority and type (alone and combined), newest first.
pub async fn list_tasks_filters(store: &dyn Store) {
    let mut tasks = list_fixture();
    let second = tasks.split_off(4);
    commit(store, new_tasks(tasks.clone())).await;
    commit(store, new_tasks(second.clone())).await;
    let mut newest_first: Vec<Task> = tasks.into_iter().chain(second).collect();
    newest_first.sort_by_key(|t| std::cmp::Reverse(t.seq));
    assert_eq!(list(store, query(100)).await, newest_first, "no filter");

    let q = |status, priority: Option<u8>, task_type: Option<&str>| TaskQuery {
        status,
        priority: priority.map(|p| Priority::new(p).expect("priority")),
        task_type: task_type.map(String::from),
        before_seq: None,
        limit: 100,
    };
    let cases: Vec<(TaskQuery, &[&str])> = vec![
        (
            q(Some(TaskStatus::Running), None, None),
            &["t-h", "t-f", "t-d", "t-b"],
        ),
        (q(None, Some(5), None), &["t-h", "t-d", "t-c", "t-a"]),
        (q(None, None, Some("build")), &["t-h", "t-e", "t-b", "t-a"]),
        (q(None, None, Some("review")), &["t-g", "t-d"]),
        (q(Some(TaskStatus::Running), Some(8), None), &["t-f", "t-b"]),
        (
            q(Some(TaskStatus::Running), Some(5), Some("build")),
            &["t-h"],
        ),
        (q(Some(TaskStatus::Completed), None, Some("review")), &[]),
        (q(Some(TaskStatus::Blocked), None, None), &[]),
        (q(None, Some(1), None), &[]),
        (q(None, None, Some("nope")), &[]),
        (q(None, None, Some("")), &[]),
    ];
    for (query, expected) in cases {
        assert_eq!(
            list_ids(store, query.clone()).await,
            ids(expected),
            "list_tasks({query:?})"
        );
    }
}

/// `list_tasks` honours `limit` and pages with `before_seq`, newest first.
pub async fn list_tasks_pages_newest_first(store: &dyn Store) {
    commit(store, new_tasks(list_fixture())).await;
    assert_eq!(
        list_ids(store, query(3)).await,
        ids(&["t-h", "t-g", "t-f"]),
        "limit 3"
    );
    assert_eq!(list_ids(store, query(1)).await, ids(&["t-h"]), "limit 1");
    assert_eq!(list_ids(store, query(0)).await, ids(&[]), "limit 0");
    let before = |seq, limit| TaskQuery {
        before_seq: Some(seq),
        ..query(limit)
    };
    assert_eq!(
        list_ids(store, before(6, 100)).await,
        ids(&["t-e", "t-d", "t-c", "t-b", "t-a"]),
        "before_seq 6"
    );
    assert_eq!(
        list_ids(store, before(1, 100)).await,
        ids(&[]),
        "before_seq 1"
    );
    assert_eq!(
        list_ids(store, before(100, 2)).await,
        ids(&["t-h", "t-g"]),
        "before_seq above every seq"
    );
    assert_eq!(
        list_ids(
            store,
            TaskQuery {
                status: Some(TaskStatus::Running),
                ..before(6, 1)
            }
        )
        .await,
        ids(&["t-d"]),
        "before_seq with a filter"
    );

    let mut pages = Vec::new();
    let mut cursor = None;
    loop {
        let page = list_ids(
            store,
            TaskQuery {
                before_seq: cursor,
                ..query(3)
            },
        )
        .await;
        let Some(last) = page.last() else { break };
        let last = read_task(store, last).await.expect("listed task exists").0;
        cursor = Some(last.seq);
        pages.push(page);
        assert!(pages.len() <= 4, "paging does not terminate: {pages:?}");
    }
    assert_eq!(
        pages,
        vec![
            ids(&["t-h", "t-g", "t-f"]),
            ids(&["t-e", "t-d", "t-c"]),
            ids(&["t-b", "t-a"]),
        ],
        "pages of 3"
    );
}

/// `recover` returns non-stopped agents, non-terminal tasks (by their current status) in seq
/// order with their subtasks in (seq, index) order, and only active assignments.
pub async fn recover_returns_live_state(store: &dyn Store) {
    use TaskStatus::*;
    // Ids deliberately not in seq order.
    let statuses = [
        ("t-z", Completed),
        ("t-y", Running),
        ("t-x", AwaitingApproval),
        ("t-w", Cancelled),
        ("t-v", Blocked),
        ("t-u", Planned),
        ("t-t", Escalated),
        ("t-s", Failed),
    ];
    let tasks: Vec<Task> = statuses
        .iter()
        .zip(1..)
        .map(|(&(id, status), seq)| Task {
            status,
            ..task(id, seq)
        })
        .collect();
    // Two tasks change status later: one finishes, one starts.
    let finishing = Task {
        status: Running,
        ..task("t-r", 9)
    };
    let starting = task("t-q", 10);
    let all_tasks: Vec<Task> = tasks
        .iter()
        .cloned()
        .chain([finishing.clone(), starting.clone()])
        .collect();
    // Subtasks inserted in reverse plan order, newest task first.
    let subtasks: Vec<Subtask> = all_tasks
        .iter()
        .rev()
        .flat_map(|t| (0..3).rev().map(|i| subtask(t.task_id.as_str(), i)))
        .collect();
    let sub = |id: &str| subtask(id, 0);
    let assignments = vec![
        assignment("as-1", &sub("t-y"), "ag-idle", AssignmentState::Active),
        assignment("as-2", &sub("t-y"), "ag-idle", AssignmentState::Completed),
        assignment("as-3", &sub("t-x"), "ag-busy", AssignmentState::Lost),
        assignment("as-4", &sub("t-v"), "ag-busy", AssignmentState::Failed),
        assignment("as-5", &sub("t-w"), "ag-busy", AssignmentState::Cancelled),
        assignment("as-6", &sub("t-u"), "ag-busy", AssignmentState::Active),
        assignment("as-7", &sub("t-r"), "ag-idle", AssignmentState::Active),
    ];
    let agents = vec![
        agent("ag-stopped", AgentStatus::Stopped),
        agent("ag-idle", AgentStatus::Idle),
        agent("ag-busy", AgentStatus::Busy),
        agent("ag-draining", AgentStatus::Draining),
        agent("ag-unhealthy", AgentStatus::Unhealthy),
        agent("ag-failed", AgentStatus::Failed),
        agent("ag-starting", AgentStatus::Starting),
        agent("ag-stopping", AgentStatus::Draining),
    ];
    let verdict = |task: &str, n: u32| Verification {
        task_id: TaskId::from(task),
        subtask_id: sub(task).subtask_id,
        n,
        attempt: n,
        author: AgentId::from("ag-busy"),
        verifier: AgentId::from("ag-idle"),
        verified: n > 1,
        evidence: json!([n]),
        feedback: None,
        at: n as i64,
    };
    let escalation = |id: &str, task: &str, at: i64| Escalation {
        escalation_id: id.into(),
        task_id: TaskId::from(task),
        subtask_id: Some(sub(task).subtask_id),
        kind: EscalationKind::Attempts,
        status: EscalationStatus::Open,
        reason: "attempts used up".into(),
        evidence: json!({}),
        suggestions: Vec::new(),
        created_at: at,
        resolved_at: None,
        resolution: None,
    };
    commit(
        store,
        WriteBatch {
            agents,
            new_tasks: all_tasks,
            new_subtasks: subtasks,
            assignments,
            verifications: vec![verdict("t-y", 2), verdict("t-y", 1), verdict("t-w", 1)],
            escalations: vec![
                escalation("esc-2", "t-x", 20),
                escalation("esc-1", "t-u", 10),
                escalation("esc-w", "t-w", 5),
            ],
            ..WriteBatch::default()
        },
    )
    .await;
    commit(
        store,
        WriteBatch {
            agents: vec![agent("ag-stopping", AgentStatus::Stopped)],
            task_updates: vec![
                task_update(
                    finishing.task_id.as_str(),
                    Completed,
                    Some(1),
                    Some(2),
                    Some(json!("done")),
                ),
                task_update(starting.task_id.as_str(), Running, Some(3), None, None),
            ],
            assignments: vec![
                Assignment {
                    state: AssignmentState::Completed,
                    finished_at: Some(2),
                    ..assignment("as-7", &sub("t-r"), "ag-idle", AssignmentState::Active)
                },
                assignment("as-8", &sub("t-q"), "ag-busy", AssignmentState::Active),
            ],
            ..WriteBatch::default()
        },
    )
    .await;

    let live_tasks: Vec<Task> = tasks
        .into_iter()
        .filter(|t| !t.status.is_terminal())
        .chain([Task {
            status: Running,
            started_at: Some(3),
            ..starting
        }])
        .collect();
    let live_ids: Vec<&str> = live_tasks.iter().map(|t| t.task_id.as_str()).collect();
    assert_eq!(
        live_ids,
        ["t-y", "t-x", "t-v", "t-u", "t-t", "t-q"],
        "fixture sanity"
    );
    let expected = Recovery {
        agents: vec![
            agent("ag-busy", AgentStatus::Busy),
            agent("ag-draining", AgentStatus::Draining),
            agent("ag-failed", AgentStatus::Failed),
            agent("ag-idle", AgentStatus::Idle),
            agent("ag-starting", AgentStatus::Starting),
            agent("ag-unhealthy", AgentStatus::Unhealthy),
        ],
        subtasks: live_ids
            .iter()
            .flat_map(|id| (0..3).map(|i| subtask(id, i)))
            .collect(),
        tasks: live_tasks,
        assignments: vec![
            assignment("as-1", &sub("t-y"), "ag-idle", AssignmentState::Active),
            assignment("as-6", &sub("t-u"), "ag-busy", AssignmentState::Active),
            assignment("as-8", &sub("t-q"), "ag-busy", AssignmentState::Active),
        ],
        // Of live tasks only; verdicts in order, escalations oldest first.
        verifications: vec![verdict("t-y", 1), verdict("t-y", 2)],
        escalations: vec![
            escalation("esc-1", "t-u", 10),
            escalation("esc-2", "t-x", 20),
        ],
        max_seq: 10,
    };
    let got = recover(store).await;
    assert_eq!(got.agents, expected.agents, "recovered agents");
    assert_eq!(got.tasks, expected.tasks, "recovered tasks");
    assert_eq!(got.subtasks, expected.subtasks, "recovered subtasks");
    assert_eq!(
        got.assignments, expected.assignments,
        "recovered assignments"
    );
    assert_eq!(got.max_seq, expected.max_seq, "max_seq");
}

/// `max_seq` is over every task ever stored, terminal ones included.
pub async fn recover_max_seq_counts_terminal_tasks(store: &dyn Store) {
    commit(
        store,
        new_tasks(vec![
            Task {
                status: TaskStatus::Running,
                ..task("t-live", 3)
            },
            Task {
                status: TaskStatus::Cancelled,
                ..task("t-done", 17)
            },
        ]),
    )
    .await;
    let got = recover(store).await;
    assert_eq!(got.max_seq, 17, "max_seq must count the terminal task");
    assert_eq!(
        got.tasks,
        vec![Task {
            status: TaskStatus::Running,
            ..task("t-live", 3)
        }]
    );

    commit(
        store,
        WriteBatch {
            task_updates: vec![task_update(
                "t-live",
                TaskStatus::Failed,
                None,
                Some(1),
                None,
            )],
            ..WriteBatch::default()
        },
    )
    .await;
    let got = recover(store).await;
    assert_eq!(
        got,
        Recovery {
            max_seq: 17,
            ..Recovery::default()
        },
        "only terminal tasks left"
    );
}

/// The state `failed_batch_leaves_nothing` starts from and checks against.
struct Snapshot {
    recovery: Recovery,
    task: Option<(Task, Vec<Subtask>)>,
    timeline: Vec<Event>,
    assignment: Option<Assignment>,
    listed: Vec<Task>,
}

async fn snapshot(store: &dyn Store) -> Snapshot {
    Snapshot {
        recovery: recover(store).await,
        task: read_task(store, "t-1").await,
        timeline: read_timeline(store, "t-1").await,
        assignment: read_assignment(store, "as-1").await,
        listed: list(store, query(100)).await,
    }
}

async fn assert_unchanged(store: &dyn Store, before: &Snapshot, what: &str) {
    let after = snapshot(store).await;
    assert_eq!(after.recovery, before.recovery, "{what}: recover changed");
    assert_eq!(after.task, before.task, "{what}: task t-1 changed");
    assert_eq!(
        after.timeline, before.timeline,
        "{what}: timeline of t-1 changed"
    );
    assert_eq!(
        after.assignment, before.assignment,
        "{what}: assignment as-1 changed"
    );
    assert_eq!(after.listed, before.listed, "{what}: list_tasks changed");
    assert_eq!(
        read_task(store, "t-2").await,
        None,
        "{what}: t-2 is visible"
    );
    assert_eq!(
        read_timeline(store, "t-2").await,
        vec![],
        "{what}: t-2 events are visible"
    );
    assert_eq!(
        read_assignment(store, "as-2").await,
        None,
        "{what}: as-2 is visible"
    );
}

/// Commit the base state of the atomicity cases: t-1 running with one subtask on ag-1.
async fn atomicity_base(store: &dyn Store) -> Snapshot {
    let s = subtask("t-1", 0);
    commit(
        store,
        WriteBatch {
            agents: vec![agent("ag-1", AgentStatus::Busy)],
            new_tasks: vec![Task {
                status: TaskStatus::Running,
                ..task("t-1", 1)
            }],
            new_subtasks: vec![s.clone()],
            assignments: vec![assignment("as-1", &s, "ag-1", AssignmentState::Active)],
            events: vec![event("t-1", 1, "running")],
            ..WriteBatch::default()
        },
    )
    .await;
    snapshot(store).await
}

/// A batch touching every kind of row on top of the atomicity base; valid on its own.
fn doomed_batch() -> WriteBatch {
    let s1 = subtask("t-1", 0);
    let s2 = subtask("t-2", 0);
    WriteBatch {
        plans: Vec::new(),
        agents: vec![
            agent("ag-1", AgentStatus::Draining),
            agent("ag-2", AgentStatus::Idle),
        ],
        new_tasks: vec![task("t-2", 2)],
        new_subtasks: vec![s2.clone()],
        task_updates: vec![task_update(
            "t-1",
            TaskStatus::Completed,
            Some(1),
            Some(2),
            Some(json!({ "ok": true })),
        )],
        subtask_updates: vec![SubtaskUpdate {
            task_id: s1.task_id.clone(),
            index: s1.index,
            subtask_id: s1.subtask_id.clone(),
            state: SubtaskState::Completed,
            attempts: 1,
            assigned_agent: Some(AgentId::from("ag-1")),
            outputs: Some(json!(1)),
            error: None,
            updated_at: 2,
            usage: None,
        }],
        assignments: vec![
            Assignment {
                state: AssignmentState::Completed,
                finished_at: Some(2),
                ..assignment("as-1", &s1, "ag-1", AssignmentState::Active)
            },
            assignment("as-2", &s2, "ag-2", AssignmentState::Active),
        ],
        verifications: vec![Verification {
            task_id: s2.task_id.clone(),
            subtask_id: s2.subtask_id.clone(),
            n: 1,
            attempt: 1,
            author: AgentId::from("ag-1"),
            verifier: AgentId::from("ag-2"),
            verified: true,
            evidence: json!([]),
            feedback: None,
            at: 2,
        }],
        escalations: vec![Escalation {
            escalation_id: "esc-doomed".into(),
            task_id: s2.task_id.clone(),
            subtask_id: None,
            kind: EscalationKind::Budget,
            status: EscalationStatus::Open,
            reason: "budget".into(),
            evidence: json!({}),
            suggestions: Vec::new(),
            created_at: 2,
            resolved_at: None,
            resolution: None,
        }],
        events: vec![event("t-1", 2, "completed"), event("t-2", 2, "planned")],
    }
}

/// A batch that fails (it inserts a task id that exists) leaves nothing of itself visible, and
/// the store keeps working: the same rows commit fine afterwards.
pub async fn failed_batch_leaves_nothing(store: &dyn Store) {
    let before = atomicity_base(store).await;

    let mut duplicate_existing = doomed_batch();
    duplicate_existing.new_tasks.push(Task {
        title: "a second t-1".into(),
        ..task("t-1", 3)
    });
    if store.commit(duplicate_existing).await.is_ok() {
        panic!("inserting an existing task id must fail the batch");
    }
    assert_unchanged(store, &before, "after inserting an existing task").await;

    let mut duplicate_in_batch = doomed_batch();
    duplicate_in_batch.new_tasks.push(task("t-2", 4));
    if store.commit(duplicate_in_batch).await.is_ok() {
        panic!("inserting one task id twice in a batch must fail the batch");
    }
    assert_unchanged(store, &before, "after inserting a task twice").await;

    // The store still works, and none of the failed rows is in the way.
    commit(store, doomed_batch()).await;
    let (t1, subtasks) = read_task(store, "t-1").await.expect("t-1 exists");
    assert_eq!(t1.status, TaskStatus::Completed, "t-1 after the good batch");
    assert_eq!(subtasks[0].state, SubtaskState::Completed);
    assert_eq!(
        read_task(store, "t-2").await,
        Some((task("t-2", 2), vec![subtask("t-2", 0)]))
    );
    assert_eq!(
        read_timeline(store, "t-1").await,
        vec![event("t-1", 1, "running"), event("t-1", 2, "completed")]
    );
    assert_eq!(
        read_timeline(store, "t-2").await,
        vec![event("t-2", 2, "planned")]
    );
    assert_eq!(
        read_assignment(store, "as-2").await.map(|a| a.state),
        Some(AssignmentState::Active)
    );
}

/// An update of a task or subtask that is not stored fails the whole batch (it is an engine
/// bug, and dropping the write silently would hide it); earlier writes of the batch vanish.
pub async fn update_of_unknown_row_fails_whole_batch(store: &dyn Store) {
    let before = atomicity_base(store).await;

    let mut unknown_task = doomed_batch();
    unknown_task.task_updates.push(task_update(
        "t-unknown",
        TaskStatus::Running,
        None,
        None,
        None,
    ));
    if store.commit(unknown_task).await.is_ok() {
        panic!("updating an unknown task must fail the batch");
    }
    assert_unchanged(store, &before, "after updating an unknown task").await;

    // Only t-1 has a subtask: index 0, `code::t-1::1`.
    let unknown_subtasks = [
        ("t-unknown", 0, "code::t-unknown::1", "of an unknown task"),
        ("t-1", 1, "code::t-1::2", "at an unknown index"),
        (
            "t-1",
            0,
            "code::t-1::2",
            "whose id names no row at its (task, index)",
        ),
    ];
    for (task_id, index, subtask_id, what) in unknown_subtasks {
        let mut unknown_subtask = doomed_batch();
        unknown_subtask.subtask_updates.push(SubtaskUpdate {
            task_id: TaskId::from(task_id),
            index,
            subtask_id: SubtaskId::from(subtask_id),
            state: SubtaskState::Ready,
            attempts: 0,
            assigned_agent: None,
            outputs: None,
            error: None,
            updated_at: 0,
            usage: None,
        });
        if store.commit(unknown_subtask).await.is_ok() {
            panic!("updating a subtask {what} must fail the batch");
        }
        assert_unchanged(store, &before, &format!("after updating a subtask {what}")).await;
    }

    commit(store, doomed_batch()).await;
    assert!(
        read_task(store, "t-2").await.is_some(),
        "store works after failures"
    );
}

/// Unknown ids read as nothing, next to stored data.
pub async fn reads_of_unknown_ids(store: &dyn Store) {
    let s = subtask("t-1", 0);
    commit(
        store,
        WriteBatch {
            new_subtasks: vec![s.clone()],
            assignments: vec![assignment("as-1", &s, "ag-1", AssignmentState::Active)],
            events: vec![event("t-1", 1, "planned")],
            ..new_tasks(vec![task("t-1", 1)])
        },
    )
    .await;
    for id in ["t-2", "T-1", "t-1 ", "", "%", "t-%"] {
        assert_eq!(read_task(store, id).await, None, "task({id:?})");
        assert_eq!(read_timeline(store, id).await, vec![], "timeline({id:?})");
    }
    for id in ["as-2", "AS-1", "", "as-%"] {
        assert_eq!(read_assignment(store, id).await, None, "assignment({id:?})");
    }
    // A subtask id is not a task id.
    assert_eq!(read_task(store, s.subtask_id.as_str()).await, None);
}

/// Commits issued at the same time all land, each whole, while reads run beside them.
pub async fn concurrent_commits_all_land(store: &dyn Store) {
    const WRITERS: i64 = 4;
    const PER_WRITER: i64 = 50;
    let write = |w: i64| async move {
        for i in 0..PER_WRITER {
            let seq = 1 + w * PER_WRITER + i;
            let id = format!("t-{seq}");
            commit(
                store,
                WriteBatch {
                    new_subtasks: vec![subtask(&id, 0), subtask(&id, 1)],
                    events: vec![event(&id, seq, "planned")],
                    ..new_tasks(vec![task(&id, seq)])
                },
            )
            .await;
        }
    };
    let read = async {
        for _ in 0..PER_WRITER {
            for t in list(store, query(10)).await {
                let (_, subtasks) = read_task(store, t.task_id.as_str())
                    .await
                    .expect("a listed task can be read");
                assert_eq!(subtasks.len(), 2, "a task seen without all its subtasks");
            }
        }
    };
    tokio::join!(write(0), write(1), write(2), write(3), read);

    let listed = list(store, query(1_000)).await;
    let seqs: Vec<i64> = listed.iter().map(|t| t.seq).collect();
    let expected: Vec<i64> = (1..=WRITERS * PER_WRITER).rev().collect();
    assert_eq!(seqs, expected, "every committed task is listed once");
    let recovery = recover(store).await;
    assert_eq!(recovery.subtasks.len(), 2 * (WRITERS * PER_WRITER) as usize);
    assert_eq!(recovery.max_seq, WRITERS * PER_WRITER);
    for seq in [1, 77, WRITERS * PER_WRITER] {
        let id = format!("t-{seq}");
        assert_eq!(
            read_timeline(store, &id).await,
            vec![event(&id, seq, "planned")]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Plans and workflows

/// A replaced plan: the old subtasks are gone, the new ones and the new context are read back;
/// replacing the plan of an unknown task fails the batch.
pub async fn plan_replacement_swaps_subtasks_and_context(store: &dyn Store) {
    let t = task("t-plan", 1);
    let old: Vec<Subtask> = (0..3).map(|i| subtask("t-plan", i)).collect();
    commit(
        store,
        WriteBatch {
            new_tasks: vec![t.clone()],
            new_subtasks: old,
            ..WriteBatch::default()
        },
    )
    .await;
    let context = TaskContext {
        planner: Some(PlannerRecord::Client),
        ..TaskContext::default()
    };
    let new = vec![Subtask {
        key: "only".into(),
        rules: Some(Box::new(StepRules {
            when: Some("true".into()),
            ..StepRules::default()
        })),
        ..subtask("t-plan", 0)
    }];
    commit(
        store,
        WriteBatch {
            plans: vec![PlanReplacement {
                task_id: t.task_id.clone(),
                context: context.clone(),
                subtasks: new.clone(),
            }],
            ..WriteBatch::default()
        },
    )
    .await;
    let (read, subtasks) = read_task(store, "t-plan").await.expect("task stored");
    assert_eq!(read.context, context, "the context is replaced");
    assert_eq!(
        subtasks, new,
        "the old subtasks are gone, the new ones stored"
    );

    let unknown = WriteBatch {
        plans: vec![PlanReplacement {
            task_id: TaskId::from("nope"),
            context: TaskContext::default(),
            subtasks: vec![subtask("nope", 0)],
        }],
        ..WriteBatch::default()
    };
    assert!(
        store.commit(unknown).await.is_err(),
        "replacing the plan of an unknown task must fail"
    );
    assert!(read_task(store, "nope").await.is_none());
}

/// Versions count from 1 per name; a version reads back exactly; the list holds the latest of
/// each name, by name.
pub async fn workflow_versions_count_up_per_name(store: &dyn Store) {
    assert!(store.workflows().await.expect("list").is_empty());
    assert!(store.workflow("wf", None).await.expect("read").is_none());
    let v1 = store
        .publish_workflow("wf", &json!({ "name": "wf", "steps": [1] }), 10)
        .await
        .expect("publish v1");
    let other = store
        .publish_workflow("another", &json!({ "name": "another" }), 11)
        .await
        .expect("publish another");
    let v2 = store
        .publish_workflow("wf", &json!({ "name": "wf", "steps": [2, "ü"] }), 12)
        .await
        .expect("publish v2");
    assert_eq!(
        (v1.version, other.version, v2.version),
        (1, 1, 2),
        "versions count per name"
    );
    assert_eq!(
        v2,
        StoredWorkflow {
            name: "wf".into(),
            version: 2,
            definition: json!({ "name": "wf", "steps": [2, "ü"] }),
            created_at: 12,
        }
    );
    assert_eq!(
        store.workflow("wf", None).await.expect("read"),
        Some(v2.clone())
    );
    assert_eq!(store.workflow("wf", Some(1)).await.expect("read"), Some(v1));
    assert!(store.workflow("wf", Some(3)).await.expect("read").is_none());
    assert_eq!(store.workflows().await.expect("list"), vec![other, v2]);
}

/// Publications of one name racing each other all land, each with its own version.
pub async fn concurrent_publications_get_distinct_versions(store: &dyn Store) {
    let publish = |w: i64| async move {
        let mut versions = Vec::new();
        for i in 0..8 {
            let definition = json!({ "writer": w, "i": i });
            let stored = store
                .publish_workflow("race", &definition, w * 100 + i)
                .await
                .expect("publish");
            versions.push(stored.version);
        }
        versions
    };
    let (a, b, c, d) = tokio::join!(publish(0), publish(1), publish(2), publish(3));
    let mut versions: Vec<u32> = [a, b, c, d].concat();
    versions.sort_unstable();
    assert_eq!(versions, (1..=32).collect::<Vec<u32>>());
    let latest = store.workflow("race", None).await.expect("read");
    assert_eq!(latest.map(|w| w.version), Some(32));
}
