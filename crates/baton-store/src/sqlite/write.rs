//! The write path: one [`WriteBatch`] as one `BEGIN IMMEDIATE … COMMIT` transaction.
//!
//! Invariants:
//! - Rows are written in the order [`WriteBatch`] documents (agents, new tasks, new subtasks,
//!   plan replacements, task updates, subtask updates, assignments, verifications, escalations,
//!   events), each kind in list order, so a later
//!   write of the same row wins.
//! - Any failed statement returns early and drops the transaction, which rolls the whole batch
//!   back.
//! - An update that matches no stored row fails the batch.
//! - Every statement is prepared once per connection and then taken from its statement cache.
//! - No statement builds a temporary table or sorts (checked by a test below): a commit's cost
//!   is its rows' B-tree writes.

use super::timeline;
use crate::{Error, PlanReplacement, Result, SubtaskUpdate, TaskUpdate, WriteBatch};
use baton_core::{Agent, AgentId, Assignment, Escalation, Event, Subtask, Task, Verification};
use rusqlite::types::{ToSqlOutput, Value as SqlValue, ValueRef};
use rusqlite::{params, Connection, ToSql, TransactionBehavior};
use serde_json::Value;
use std::collections::HashMap;

const UPSERT_AGENT: &str = "INSERT INTO agents (agent_id, name, kind, capabilities, domains, \
         max_concurrency, status, token_hash, created_at, stats) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
     ON CONFLICT (agent_id) DO UPDATE SET name = excluded.name, kind = excluded.kind, \
         capabilities = excluded.capabilities, domains = excluded.domains, \
         max_concurrency = excluded.max_concurrency, status = excluded.status, \
         token_hash = excluded.token_hash, created_at = excluded.created_at, \
         stats = excluded.stats";
const INSERT_TASK: &str = "INSERT INTO tasks (seq, task_id, title, description, task_type, \
         priority, status, request, due_at, max_attempts, timeout_ms, created_at, started_at, \
         finished_at, result, context) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)";
const INSERT_SUBTASK: &str = "INSERT INTO subtasks (task_id, idx, subtask_id, key, capability, \
         depends_on, input, state, attempts, assigned_agent, outputs, error, updated_at, rules, \
         usage) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)";
const DELETE_SUBTASKS: &str = "DELETE FROM subtasks WHERE task_id = ?1";
const UPDATE_CONTEXT: &str = "UPDATE tasks SET context = ?2 WHERE task_id = ?1";
pub(super) const UPDATE_TASK: &str = "UPDATE tasks \
     SET status = ?2, started_at = ?3, finished_at = ?4, result = ?5, context = ?6 \
     WHERE task_id = ?1";
pub(super) const UPDATE_SUBTASK: &str = "UPDATE subtasks \
     SET state = ?4, attempts = ?5, assigned_agent = ?6, outputs = ?7, error = ?8, \
         updated_at = ?9, usage = ?10 \
     WHERE task_id = ?1 AND idx = ?2 AND subtask_id = ?3";
const UPSERT_ASSIGNMENT: &str = "INSERT INTO assignments (assignment_id, task_id, subtask_id, \
         agent_id, attempt, state, lease_expires_at, created_at, finished_at, kind) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
     ON CONFLICT (assignment_id) DO UPDATE SET task_id = excluded.task_id, \
         subtask_id = excluded.subtask_id, agent_id = excluded.agent_id, \
         attempt = excluded.attempt, state = excluded.state, \
         lease_expires_at = excluded.lease_expires_at, created_at = excluded.created_at, \
         finished_at = excluded.finished_at, kind = excluded.kind";
const INSERT_VERIFICATION: &str = "INSERT INTO verifications (task_id, subtask_id, n, attempt, \
         author, verifier, verified, evidence, feedback, at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";
const UPSERT_ESCALATION: &str = "INSERT INTO escalations (escalation_id, task_id, subtask_id, \
         kind, status, reason, evidence, suggestions, created_at, resolved_at, resolution) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
     ON CONFLICT (escalation_id) DO UPDATE SET task_id = excluded.task_id, \
         subtask_id = excluded.subtask_id, kind = excluded.kind, status = excluded.status, \
         reason = excluded.reason, evidence = excluded.evidence, \
         suggestions = excluded.suggestions, created_at = excluded.created_at, \
         resolved_at = excluded.resolved_at, resolution = excluded.resolution";
// Two statements, not `UPDATE … RETURNING`, which collects its rows in a temporary table.
const BUMP_COMMIT_NO: &str = "UPDATE event_commits SET last = last + 1 WHERE id = 1";
const READ_COMMIT_NO: &str = "SELECT last FROM event_commits WHERE id = 1";
const INSERT_EVENTS: &str = "INSERT INTO events (task_id, commit_no, items) VALUES (?1, ?2, ?3)";

/// Every statement a commit runs.
#[cfg(test)]
const STATEMENTS: [&str; 13] = [
    UPSERT_AGENT,
    INSERT_TASK,
    INSERT_SUBTASK,
    DELETE_SUBTASKS,
    UPDATE_CONTEXT,
    UPDATE_TASK,
    UPDATE_SUBTASK,
    UPSERT_ASSIGNMENT,
    INSERT_VERIFICATION,
    UPSERT_ESCALATION,
    BUMP_COMMIT_NO,
    READ_COMMIT_NO,
    INSERT_EVENTS,
];

/// The whole batch in one immediate transaction.
pub(super) fn apply(conn: &mut Connection, batch: &WriteBatch) -> Result<()> {
    if !conn.is_autocommit() {
        // Left open by a thread that panicked mid-commit; its writes must not join ours.
        conn.execute_batch("ROLLBACK")?;
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    upsert_agents(&tx, &batch.agents)?;
    insert_tasks(&tx, &batch.new_tasks)?;
    insert_subtasks(&tx, &batch.new_subtasks)?;
    replace_plans(&tx, &batch.plans)?;
    update_tasks(&tx, &batch.task_updates)?;
    update_subtasks(&tx, &batch.subtask_updates)?;
    upsert_assignments(&tx, &batch.assignments)?;
    insert_verifications(&tx, &batch.verifications)?;
    upsert_escalations(&tx, &batch.escalations)?;
    append_events(&tx, &batch.events)?;
    tx.commit()?;
    Ok(())
}

fn upsert_agents(tx: &Connection, agents: &[Agent]) -> Result<()> {
    if agents.is_empty() {
        return Ok(());
    }
    let mut stmt = tx.prepare_cached(UPSERT_AGENT)?;
    for a in agents {
        stmt.execute(params![
            a.agent_id.as_str(),
            a.name,
            a.kind,
            to_json(&a.capabilities)?,
            to_json(&a.domains)?,
            a.max_concurrency,
            a.status.as_str(),
            a.token_hash,
            a.created_at,
            to_json(&a.stats)?,
        ])?;
    }
    Ok(())
}

fn insert_tasks(tx: &Connection, tasks: &[Task]) -> Result<()> {
    if tasks.is_empty() {
        return Ok(());
    }
    let mut stmt = tx.prepare_cached(INSERT_TASK)?;
    for t in tasks {
        stmt.execute(params![
            t.seq,
            t.task_id.as_str(),
            t.title,
            t.description,
            t.task_type,
            t.priority.value(),
            t.status.as_str(),
            t.request,
            t.due_at,
            t.max_attempts,
            to_i64(t.timeout_ms, "timeout_ms")?,
            t.created_at,
            t.started_at,
            t.finished_at,
            Json(t.result.as_ref()),
            optional_json(&t.context, t.context.is_empty())?,
        ])
        .map_err(|e| Error::backend(format!("inserting task {}", t.task_id), e))?;
    }
    Ok(())
}

fn insert_subtasks(tx: &Connection, subtasks: &[Subtask]) -> Result<()> {
    if subtasks.is_empty() {
        return Ok(());
    }
    let mut stmt = tx.prepare_cached(INSERT_SUBTASK)?;
    for s in subtasks {
        stmt.execute(params![
            s.task_id.as_str(),
            s.index,
            s.subtask_id.as_str(),
            s.key,
            s.capability,
            to_json(&s.depends_on)?,
            Json(Some(&s.input)),
            s.state.as_str(),
            s.attempts,
            s.assigned_agent.as_ref().map(AgentId::as_str),
            Json(s.outputs.as_ref()),
            s.error,
            s.updated_at,
            optional_json(&s.rules, s.rules.is_none())?,
            optional_json(&s.usage, s.usage.is_none())?,
        ])
        .map_err(|e| Error::backend(format!("inserting subtask {}", s.subtask_id), e))?;
    }
    Ok(())
}

/// Replace the subtasks of each task (still `planned`) and its context.
fn replace_plans(tx: &Connection, plans: &[PlanReplacement]) -> Result<()> {
    for p in plans {
        let found = tx.prepare_cached(UPDATE_CONTEXT)?.execute(params![
            p.task_id.as_str(),
            optional_json(&p.context, p.context.is_empty())?
        ])?;
        if found != 1 {
            return Err(Error::backend_msg(format!(
                "plan replacement of unknown task {}",
                p.task_id
            )));
        }
        tx.prepare_cached(DELETE_SUBTASKS)?
            .execute([p.task_id.as_str()])?;
        insert_subtasks(tx, &p.subtasks)?;
    }
    Ok(())
}

fn update_tasks(tx: &Connection, updates: &[TaskUpdate]) -> Result<()> {
    if updates.is_empty() {
        return Ok(());
    }
    let mut stmt = tx.prepare_cached(UPDATE_TASK)?;
    for u in updates {
        let TaskUpdate {
            task_id,
            status,
            started_at,
            finished_at,
            result,
            context,
        } = u;
        let changed = stmt.execute(params![
            task_id.as_str(),
            status.as_str(),
            started_at,
            finished_at,
            Json(result.as_ref()),
            optional_json(context, context.is_empty())?,
        ])?;
        if changed != 1 {
            return Err(Error::backend_msg(format!(
                "update of unknown task {task_id}"
            )));
        }
    }
    Ok(())
}

/// Finds the row by its key `(task_id, idx)`; a `subtask_id` that does not name that row is an
/// unknown subtask too, so an engine that mixed up its ids fails loudly.
fn update_subtasks(tx: &Connection, updates: &[SubtaskUpdate]) -> Result<()> {
    if updates.is_empty() {
        return Ok(());
    }
    let mut stmt = tx.prepare_cached(UPDATE_SUBTASK)?;
    for u in updates {
        let SubtaskUpdate {
            task_id,
            index,
            subtask_id,
            state,
            attempts,
            assigned_agent,
            outputs,
            error,
            updated_at,
            usage,
        } = u;
        let changed = stmt.execute(params![
            task_id.as_str(),
            index,
            subtask_id.as_str(),
            state.as_str(),
            attempts,
            assigned_agent.as_ref().map(AgentId::as_str),
            Json(outputs.as_ref()),
            error,
            updated_at,
            optional_json(usage, usage.is_none())?,
        ])?;
        if changed != 1 {
            return Err(Error::backend_msg(format!(
                "update of unknown subtask {subtask_id} (task {task_id}, index {index})"
            )));
        }
    }
    Ok(())
}

fn upsert_assignments(tx: &Connection, assignments: &[Assignment]) -> Result<()> {
    if assignments.is_empty() {
        return Ok(());
    }
    let mut stmt = tx.prepare_cached(UPSERT_ASSIGNMENT)?;
    for a in assignments {
        stmt.execute(params![
            a.assignment_id.as_str(),
            a.task_id.as_str(),
            a.subtask_id.as_str(),
            a.agent_id.as_str(),
            a.attempt,
            a.state.as_str(),
            a.lease_expires_at,
            a.created_at,
            a.finished_at,
            a.kind.as_str(),
        ])?;
    }
    Ok(())
}

fn insert_verifications(tx: &Connection, verifications: &[Verification]) -> Result<()> {
    if verifications.is_empty() {
        return Ok(());
    }
    let mut stmt = tx.prepare_cached(INSERT_VERIFICATION)?;
    for v in verifications {
        stmt.execute(params![
            v.task_id.as_str(),
            v.subtask_id.as_str(),
            v.n,
            v.attempt,
            v.author.as_str(),
            v.verifier.as_str(),
            v.verified,
            Json(Some(&v.evidence)),
            v.feedback,
            v.at,
        ])
        .map_err(|e| Error::backend(format!("inserting verdict {} of {}", v.n, v.subtask_id), e))?;
    }
    Ok(())
}

fn upsert_escalations(tx: &Connection, escalations: &[Escalation]) -> Result<()> {
    if escalations.is_empty() {
        return Ok(());
    }
    let mut stmt = tx.prepare_cached(UPSERT_ESCALATION)?;
    for e in escalations {
        stmt.execute(params![
            e.escalation_id,
            e.task_id.as_str(),
            e.subtask_id.as_ref().map(|s| s.as_str()),
            e.kind.as_str(),
            e.status.as_str(),
            e.reason,
            Json(Some(&e.evidence)),
            to_json(&e.suggestions)?,
            e.created_at,
            e.resolved_at,
            optional_json(&e.resolution, e.resolution.is_none())?,
        ])?;
    }
    Ok(())
}

/// Append `events` to their timelines: one `events` row per task, holding that task's events of
/// this batch in batch order (encoded by [`timeline::encode`]), under a commit number larger
/// than any before.
fn append_events(tx: &Connection, events: &[Event]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    if tx.prepare_cached(BUMP_COMMIT_NO)?.execute([])? != 1 {
        return Err(Error::corrupt_msg("the event_commits row is missing"));
    }
    let commit_no: i64 = tx
        .prepare_cached(READ_COMMIT_NO)?
        .query_row([], |r| r.get(0))?;

    // Number the tasks in order of their first event. The engine emits a task's events in
    // runs, so most events skip the hash lookup.
    let mut slot_of_task: HashMap<&str, usize> = HashMap::with_capacity(events.len() / 2);
    let mut tasks: Vec<&str> = Vec::new();
    let mut slots: Vec<usize> = Vec::with_capacity(events.len());
    let mut previous: Option<(&str, usize)> = None;
    for e in events {
        let task_id = e.task_id.as_str();
        let slot = match previous {
            Some((id, slot)) if id == task_id => slot,
            _ => *slot_of_task.entry(task_id).or_insert_with(|| {
                tasks.push(task_id);
                tasks.len() - 1
            }),
        };
        previous = Some((task_id, slot));
        slots.push(slot);
    }
    // Group the events by task, keeping batch order within a task (a counting sort):
    // the events of task `slot` are `events[order[starts[slot]..starts[slot + 1]]]`.
    let mut starts = vec![0; tasks.len() + 1];
    for &slot in &slots {
        starts[slot + 1] += 1;
    }
    for i in 1..starts.len() {
        starts[i] += starts[i - 1];
    }
    let mut next = starts.clone();
    let mut order = vec![0; events.len()];
    for (i, &slot) in slots.iter().enumerate() {
        order[next[slot]] = i;
        next[slot] += 1;
    }

    let mut stmt = tx.prepare_cached(INSERT_EVENTS)?;
    let mut items = Vec::with_capacity(1024);
    for (slot, task_id) in tasks.into_iter().enumerate() {
        items.clear();
        let of_task = order[starts[slot]..starts[slot + 1]]
            .iter()
            .map(|&i| &events[i]);
        timeline::encode(of_task, &mut items)
            .map_err(|e| Error::backend(format!("encoding events of {task_id}"), e))?;
        stmt.execute(params![task_id, commit_no, JsonText(&items)])?;
    }
    Ok(())
}

/// An optional JSON value bound as text; `None` is SQL NULL, `Some(Value::Null)` the text `null`.
struct Json<'a>(Option<&'a Value>);

impl ToSql for Json<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        match self.0 {
            None => Ok(ToSqlOutput::Owned(SqlValue::Null)),
            Some(value) => serde_json::to_string(value)
                .map(|text| ToSqlOutput::Owned(SqlValue::Text(text)))
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e))),
        }
    }
}

/// JSON that serde_json wrote (so UTF-8), bound as text without checking it again.
struct JsonText<'a>(&'a [u8]);

impl ToSql for JsonText<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(ValueRef::Text(self.0)))
    }
}

/// `value` as JSON text, or SQL `NULL` when `empty`.
fn optional_json<T: serde::Serialize>(value: &T, empty: bool) -> Result<Option<String>> {
    if empty {
        Ok(None)
    } else {
        to_json(value).map(Some)
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::backend("encoding json", e))
}

fn to_i64(value: u64, field: &str) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::backend_msg(format!("{field} {value} exceeds i64")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every commit statement runs on keys alone: no temporary table (as `NOT IN (…)` in a
    /// partial index predicate or `RETURNING` would build on every execution), no sort.
    #[test]
    fn commit_statements_build_no_temporary_tables() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = super::super::SqliteStore::open(dir.path()).unwrap();
        drop(store);
        let conn = Connection::open(dir.path().join(super::super::DB_FILE)).unwrap();
        for sql in STATEMENTS {
            let mut stmt = conn.prepare(&format!("EXPLAIN {sql}")).unwrap();
            // Unbound parameters are NULL, which is fine for EXPLAIN.
            let mut rows = stmt.raw_query();
            let mut opcodes = Vec::new();
            while let Some(row) = rows.next().unwrap() {
                opcodes.push(row.get::<_, String>(1).unwrap());
            }
            assert!(opcodes.contains(&"Halt".to_owned()), "{sql}: {opcodes:?}");
            for temporary in ["OpenEphemeral", "OpenAutoindex", "SorterOpen"] {
                assert!(
                    !opcodes.iter().any(|op| op == temporary),
                    "{sql} runs {temporary}"
                );
            }
        }
    }

    #[test]
    fn json_binds_none_as_null_and_null_as_text() {
        let null = Value::Null;
        assert_eq!(
            Json(None).to_sql().unwrap(),
            ToSqlOutput::Owned(SqlValue::Null)
        );
        assert_eq!(
            Json(Some(&null)).to_sql().unwrap(),
            ToSqlOutput::Owned(SqlValue::Text("null".into()))
        );
    }
}
