//! The SQLite backend of [`Store`]: one file, `baton.db`, in WAL mode.
//!
//! Shape:
//! - One writer connection behind a mutex. `commit` runs the whole batch in one
//!   `BEGIN IMMEDIATE … COMMIT` transaction on a blocking thread, with cached prepared
//!   statements, so a group commit of thousands of rows costs one WAL fsync.
//! - A small pool of read-only connections for every read; in WAL mode readers see the last
//!   committed snapshot and never wait for the writer. Multi-query reads (`task`, `recover`)
//!   run inside one read transaction, so they see a single snapshot.
//! - Migrations are embedded SQL files applied in order at open, tracked by `PRAGMA user_version`.
//!
//! Invariants:
//! - Every connection runs with `synchronous=FULL`: a commit that returned `Ok` is in the WAL
//!   on disk and survives a crash or `kill -9`.
//! - A failed statement rolls the whole batch back; nothing of it is visible.
//! - An update of a task or subtask that is not stored fails the batch: a write the engine
//!   believes it made is never dropped silently.
//! - Enums are stored as their wire strings; a value this build cannot decode is
//!   [`Error::Corrupt`], never a panic.
//! - A commit whose future is dropped still runs to completion on its blocking thread (a
//!   transaction cannot be abandoned half way); its outcome is then simply not reported.

use crate::{Error, Recovery, Result, Store, SubtaskUpdate, TaskQuery, TaskUpdate, WriteBatch};
use async_trait::async_trait;
use baton_core::{
    Agent, AgentId, AgentStatus, Assignment, AssignmentId, AssignmentState, Event, Priority,
    Subtask, SubtaskId, SubtaskState, Task, TaskId, TaskStatus,
};
use rusqlite::types::{ToSqlOutput, Value as SqlValue, ValueRef};
use rusqlite::{params, Connection, OpenFlags, Row, ToSql, TransactionBehavior};
use serde_json::Value;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// The database file `open` creates inside the data directory.
pub const DB_FILE: &str = "baton.db";

/// The embedded migrations, in order; migration `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[include_str!("../migrations/sqlite/0001_init.sql")];

/// Read connections opened at start; more are opened on demand when all are busy.
const READERS_AT_OPEN: usize = 4;
/// Idle read connections kept for reuse; extra ones are closed when returned.
const READERS_KEPT: usize = 8;
/// Page cache of the writer, in KiB (negative `cache_size` means KiB).
const WRITER_CACHE_KIB: i64 = 65_536;
/// Page cache of each reader, in KiB.
const READER_CACHE_KIB: i64 = 16_384;
/// How long a connection waits for a lock held by another process, in ms.
const BUSY_TIMEOUT_MS: i64 = 5_000;
/// Room for every statement `commit` and the reads use, so none is evicted.
const STATEMENT_CACHE: usize = 64;

const TASK_COLUMNS: &str = "task_id, seq, title, description, task_type, priority, status, \
     request, due_at, max_attempts, timeout_ms, created_at, started_at, finished_at, result";
const SUBTASK_COLUMNS: &str = "subtask_id, task_id, idx, key, capability, depends_on, input, \
     state, attempts, assigned_agent, outputs, error, updated_at";
const ASSIGNMENT_COLUMNS: &str = "assignment_id, task_id, subtask_id, agent_id, attempt, state, \
     lease_expires_at, created_at, finished_at";
const AGENT_COLUMNS: &str =
    "agent_id, name, kind, capabilities, domains, max_concurrency, status, token_hash, created_at";

/// Must match the `tasks_live` index predicate in `0001_init.sql` exactly.
const LIVE_TASK: &str = "status NOT IN ('completed', 'failed', 'cancelled')";

/// A [`Store`] on one SQLite file. Cloning is cheap and shares the connections.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    // Declared before `writer` so readers close first and the writer, closing last,
    // checkpoints and removes the WAL.
    readers: Mutex<Vec<Connection>>,
    writer: Mutex<Connection>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Open (creating if needed) `data_dir` and the database [`DB_FILE`] inside it, and bring
    /// its schema up to date.
    pub fn open(data_dir: &Path) -> Result<SqliteStore> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            Error::Backend(format!("creating data dir {}: {e}", data_dir.display()))
        })?;
        Self::open_file(&data_dir.join(DB_FILE))
    }

    /// Open (creating if needed) the database file at `path` and bring its schema up to date.
    pub fn open_file(path: &Path) -> Result<SqliteStore> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut writer = Connection::open_with_flags(path, flags)
            .map_err(|e| Error::Backend(format!("opening {}: {e}", path.display())))?;
        configure(&writer, WRITER_CACHE_KIB)?;
        // EXPERIMENT
        for (name, var) in [("page_size", "XP_PAGE"), ("wal_autocheckpoint", "XP_CKPT")] {
            if let Ok(v) = std::env::var(var) {
                writer.pragma_update(None, name, v.parse::<i64>().unwrap())?;
            }
        }
        let mode: String =
            writer.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Backend(format!(
                "{} cannot use WAL (journal_mode is {mode})",
                path.display()
            )));
        }
        // After a checkpoint the WAL is cut back to this size, so one huge batch does not leave
        // a huge file behind, while a normal one is reused without regrowing.
        writer.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        migrate(&mut writer)?;

        let readers = (0..READERS_AT_OPEN)
            .map(|_| open_reader(path))
            .collect::<Result<Vec<_>>>()?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                readers: Mutex::new(readers),
                writer: Mutex::new(writer),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The value of `PRAGMA <name>` on the writer connection, as text (diagnostics and tests:
    /// `journal_mode` is `wal`, `synchronous` is `2`). Waits for a running commit.
    pub fn writer_pragma(&self, name: &str) -> Result<String> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(Error::Backend(format!("not a pragma name: {name:?}")));
        }
        let writer = lock(&self.inner.writer);
        let value: SqlValue = writer.pragma_query_value(None, name, |r| r.get(0))?;
        Ok(match value {
            SqlValue::Null => String::new(),
            SqlValue::Integer(i) => i.to_string(),
            SqlValue::Real(f) => f.to_string(),
            SqlValue::Text(t) => t,
            SqlValue::Blob(b) => format!("{b:?}"),
        })
    }

    /// Run `f` on a pooled read connection on a blocking thread.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = lock(&inner.readers).pop();
            let mut conn = match pooled {
                Some(conn) => conn,
                None => open_reader(&inner.path)?,
            };
            let out = f(&mut conn);
            // A connection left inside a transaction would pin an old snapshot; drop it.
            if conn.is_autocommit() {
                let mut idle = lock(&inner.readers);
                if idle.len() < READERS_KEPT {
                    idle.push(conn);
                }
            }
            out
        })
        .await
        .map_err(|e| Error::Backend(format!("store read task failed: {e}")))?
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn commit(&self, batch: WriteBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut writer = lock(&inner.writer);
            apply(&mut writer, &batch)
        })
        .await
        .map_err(|e| Error::Backend(format!("store commit task failed: {e}")))?
    }

    async fn recover(&self) -> Result<Recovery> {
        self.read(|conn| {
            let tx = conn.transaction()?;
            let agents = query_all(
                &tx,
                &format!(
                    "SELECT {AGENT_COLUMNS} FROM agents WHERE status <> 'stopped' \
                     ORDER BY created_at, agent_id"
                ),
                [],
                decode_agent,
            )?;
            let tasks = query_all(&tx, &live_tasks_sql(), [], decode_task)?;
            let subtasks = query_all(&tx, &live_subtasks_sql(), [], decode_subtask)?;
            let assignments = query_all(&tx, &active_assignments_sql(), [], decode_assignment)?;
            let max_seq: i64 =
                tx.query_row("SELECT COALESCE(MAX(seq), 0) FROM tasks", [], |r| r.get(0))?;
            tx.commit()?;
            Ok(Recovery {
                agents,
                tasks,
                subtasks,
                assignments,
                max_seq,
            })
        })
        .await
    }

    async fn task(&self, task_id: &TaskId) -> Result<Option<(Task, Vec<Subtask>)>> {
        let task_id = task_id.clone();
        self.read(move |conn| {
            let tx = conn.transaction()?;
            let mut tasks = query_all(
                &tx,
                &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = ?1"),
                [task_id.as_str()],
                decode_task,
            )?;
            let Some(task) = tasks.pop() else {
                return Ok(None);
            };
            let subtasks = query_all(
                &tx,
                &format!("SELECT {SUBTASK_COLUMNS} FROM subtasks WHERE task_id = ?1 ORDER BY idx"),
                [task_id.as_str()],
                decode_subtask,
            )?;
            tx.commit()?;
            Ok(Some((task, subtasks)))
        })
        .await
    }

    async fn timeline(&self, task_id: &TaskId) -> Result<Vec<Event>> {
        let task_id = task_id.clone();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT items FROM events WHERE task_id = ?1 ORDER BY commit_no")?;
            let mut rows = stmt.query([task_id.as_str()])?;
            let mut timeline = Vec::new();
            while let Some(row) = rows.next()? {
                let items: Vec<StoredEvent<String>> = json_column(row, 0)?;
                timeline.extend(items.into_iter().map(|e| e.into_event(&task_id)));
            }
            Ok(timeline)
        })
        .await
    }

    async fn list_tasks(&self, query: &TaskQuery) -> Result<Vec<Task>> {
        let (sql, args) = list_tasks_sql(query);
        self.read(move |conn| {
            query_all(
                conn,
                &sql,
                rusqlite::params_from_iter(args.iter()),
                decode_task,
            )
        })
        .await
    }

    async fn assignment(&self, assignment_id: &AssignmentId) -> Result<Option<Assignment>> {
        let assignment_id = assignment_id.clone();
        self.read(move |conn| {
            let mut found = query_all(
                conn,
                &format!("SELECT {ASSIGNMENT_COLUMNS} FROM assignments WHERE assignment_id = ?1"),
                [assignment_id.as_str()],
                decode_assignment,
            )?;
            Ok(found.pop())
        })
        .await
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        match e {
            // The stored value has the wrong type or range for the field it decodes into.
            rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::IntegralValueOutOfRange(..) => Error::Corrupt(e.to_string()),
            other => Error::Backend(other.to_string()),
        }
    }
}

/// Lock a mutex, taking the value over from a thread that panicked while holding it: the
/// connection inside is still sound (an open transaction is rolled back before reuse).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Settings every connection needs.
fn configure(conn: &Connection, cache_kib: i64) -> Result<()> {
    conn.pragma_update(None, "busy_timeout", BUSY_TIMEOUT_MS)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    conn.pragma_update(None, "cache_size", -cache_kib)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

fn open_reader(path: &Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| Error::Backend(format!("opening reader on {}: {e}", path.display())))?;
    configure(&conn, READER_CACHE_KIB)?;
    Ok(conn)
}

/// Apply every migration newer than the file's `user_version`, each in its own transaction.
fn migrate(conn: &mut Connection) -> Result<()> {
    let latest = MIGRATIONS.len();
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Read inside the write lock, so two processes opening at once do not both migrate.
        let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let version = usize::try_from(version)
            .map_err(|_| Error::Corrupt(format!("negative schema version {version}")))?;
        if version > latest {
            return Err(Error::Backend(format!(
                "database schema version {version} is newer than this build knows ({latest})"
            )));
        }
        let Some(sql) = MIGRATIONS.get(version) else {
            return Ok(());
        };
        tx.execute_batch(sql)
            .map_err(|e| Error::Backend(format!("migration {}: {e}", version + 1)))?;
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.commit()?;
        tracing::info!(version = version + 1, "applied sqlite migration");
    }
}

/// The whole batch in one immediate transaction, in the order [`WriteBatch`] documents.
fn apply(conn: &mut Connection, batch: &WriteBatch) -> Result<()> {
    if !conn.is_autocommit() {
        // Left open by a thread that panicked mid-commit; its writes must not join ours.
        conn.execute_batch("ROLLBACK")?;
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO agents (agent_id, name, kind, capabilities, domains, max_concurrency, \
                 status, token_hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
             ON CONFLICT (agent_id) DO UPDATE SET name = excluded.name, kind = excluded.kind, \
                 capabilities = excluded.capabilities, domains = excluded.domains, \
                 max_concurrency = excluded.max_concurrency, status = excluded.status, \
                 token_hash = excluded.token_hash, created_at = excluded.created_at",
        )?;
        for a in &batch.agents {
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
            ])?;
        }
    }
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO tasks (task_id, seq, title, description, task_type, priority, status, \
                 request, due_at, max_attempts, timeout_ms, created_at, started_at, finished_at, \
                 result) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        )?;
        for t in &batch.new_tasks {
            stmt.execute(params![
                t.task_id.as_str(),
                t.seq,
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
            ])
            .map_err(|e| Error::Backend(format!("inserting task {}: {e}", t.task_id)))?;
        }
    }
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO subtasks (subtask_id, task_id, idx, key, capability, depends_on, input, \
                 state, attempts, assigned_agent, outputs, error, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )?;
        for s in &batch.new_subtasks {
            stmt.execute(params![
                s.subtask_id.as_str(),
                s.task_id.as_str(),
                s.index,
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
            ])
            .map_err(|e| Error::Backend(format!("inserting subtask {}: {e}", s.subtask_id)))?;
        }
    }
    {
        let mut stmt = tx.prepare_cached(
            "UPDATE tasks SET status = ?2, started_at = ?3, finished_at = ?4, result = ?5 \
             WHERE task_id = ?1",
        )?;
        for u in &batch.task_updates {
            let TaskUpdate {
                task_id,
                status,
                started_at,
                finished_at,
                result,
            } = u;
            let changed = stmt.execute(params![
                task_id.as_str(),
                status.as_str(),
                started_at,
                finished_at,
                Json(result.as_ref()),
            ])?;
            if changed != 1 {
                return Err(Error::Backend(format!("update of unknown task {task_id}")));
            }
        }
    }
    {
        let mut stmt = tx.prepare_cached(
            "UPDATE subtasks SET state = ?4, attempts = ?5, assigned_agent = ?6, outputs = ?7, \
                 error = ?8, updated_at = ?9 \
             WHERE task_id = ?1 AND idx = ?2 AND subtask_id = ?3",
        )?;
        for u in &batch.subtask_updates {
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
            ])?;
            if changed != 1 {
                return Err(Error::Backend(format!(
                    "update of unknown subtask {subtask_id} (task {task_id}, index {index})"
                )));
            }
        }
    }
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO assignments (assignment_id, task_id, subtask_id, agent_id, attempt, \
                 state, lease_expires_at, created_at, finished_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
             ON CONFLICT (assignment_id) DO UPDATE SET task_id = excluded.task_id, \
                 subtask_id = excluded.subtask_id, agent_id = excluded.agent_id, \
                 attempt = excluded.attempt, state = excluded.state, \
                 lease_expires_at = excluded.lease_expires_at, \
                 created_at = excluded.created_at, finished_at = excluded.finished_at",
        )?;
        for a in &batch.assignments {
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
            ])?;
        }
    }
    if !batch.events.is_empty() {
        append_events(&tx, &batch.events)?;
    }
    // Dropping `tx` on any early return above rolls the batch back.
    tx.commit()?;
    Ok(())
}

/// Append `events` to their timelines: one `events` row per task, holding that task's events of
/// this batch in batch order, under a commit number larger than any before it.
fn append_events(tx: &Connection, events: &[Event]) -> Result<()> {
    let commit_no: i64 = tx
        .prepare_cached("UPDATE event_commits SET last = last + 1 WHERE id = 1 RETURNING last")?
        .query_row([], |r| r.get(0))?;
    // Each task's JSON array, in order of the task's first event.
    let mut slots: HashMap<&str, usize> = HashMap::with_capacity(events.len());
    let mut timelines: Vec<(&str, Vec<u8>)> = Vec::new();
    for e in events {
        let slot = *slots.entry(e.task_id.as_str()).or_insert_with(|| {
            timelines.push((e.task_id.as_str(), Vec::with_capacity(256)));
            timelines.len() - 1
        });
        let items = &mut timelines[slot].1;
        items.push(if items.is_empty() { b'[' } else { b',' });
        serde_json::to_writer(&mut *items, &StoredEvent::of(e))
            .map_err(|e| Error::Backend(format!("encoding event: {e}")))?;
    }
    let mut stmt =
        tx.prepare_cached("INSERT INTO events (task_id, commit_no, items) VALUES (?1, ?2, ?3)")?;
    for (task_id, mut items) in timelines {
        items.push(b']');
        let items = String::from_utf8(items)
            .map_err(|e| Error::Backend(format!("encoded event is not UTF-8: {e}")))?;
        stmt.execute(params![task_id, commit_no, items])?;
    }
    Ok(())
}

/// One event inside an `events` row, without its task id (the row's key):
/// `[at, subtask_id, from, to, agent, note]`.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredEvent<S>(i64, Option<S>, Option<S>, S, Option<S>, Option<S>);

impl<'a> StoredEvent<&'a str> {
    fn of(e: &'a Event) -> Self {
        StoredEvent(
            e.at,
            e.subtask_id.as_ref().map(SubtaskId::as_str),
            e.from.as_deref(),
            &e.to,
            e.agent.as_ref().map(AgentId::as_str),
            e.note.as_deref(),
        )
    }
}

impl StoredEvent<String> {
    fn into_event(self, task_id: &TaskId) -> Event {
        let StoredEvent(at, subtask_id, from, to, agent, note) = self;
        Event {
            task_id: task_id.clone(),
            at,
            subtask_id: subtask_id.map(SubtaskId),
            from,
            to,
            agent: agent.map(AgentId),
            note,
        }
    }
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

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Backend(format!("encoding json: {e}")))
}

fn to_i64(value: u64, field: &str) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::Backend(format!("{field} {value} exceeds i64")))
}

/// Non-terminal tasks in `seq` order; served by the partial index `tasks_live`.
fn live_tasks_sql() -> String {
    format!("SELECT {TASK_COLUMNS} FROM tasks WHERE {LIVE_TASK} ORDER BY seq")
}

/// The subtasks of non-terminal tasks, by task `seq` then plan order.
fn live_subtasks_sql() -> String {
    format!(
        "SELECT {} FROM tasks t JOIN subtasks s ON s.task_id = t.task_id \
         WHERE t.{LIVE_TASK} ORDER BY t.seq, s.idx",
        prefixed("s", SUBTASK_COLUMNS)
    )
}

/// Active assignments; served by the partial index `assignments_active`.
fn active_assignments_sql() -> String {
    format!(
        "SELECT {ASSIGNMENT_COLUMNS} FROM assignments WHERE state = 'active' \
         ORDER BY created_at, assignment_id"
    )
}

/// The SQL and arguments of one `list_tasks` query. There are 16 shapes (each filter present
/// or not), so the statement cache holds them all.
fn list_tasks_sql(query: &TaskQuery) -> (String, Vec<SqlValue>) {
    let mut conditions = Vec::new();
    let mut args: Vec<SqlValue> = Vec::new();
    if let Some(status) = query.status {
        args.push(SqlValue::Text(status.as_str().to_owned()));
        conditions.push(format!("status = ?{}", args.len()));
    }
    if let Some(priority) = query.priority {
        args.push(SqlValue::Integer(i64::from(priority.value())));
        conditions.push(format!("priority = ?{}", args.len()));
    }
    if let Some(task_type) = &query.task_type {
        args.push(SqlValue::Text(task_type.clone()));
        conditions.push(format!("task_type = ?{}", args.len()));
    }
    if let Some(before) = query.before_seq {
        args.push(SqlValue::Integer(before));
        conditions.push(format!("seq < ?{}", args.len()));
    }
    args.push(SqlValue::Integer(i64::from(query.limit)));
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    let sql = format!(
        "SELECT {TASK_COLUMNS} FROM tasks {filter} ORDER BY seq DESC LIMIT ?{}",
        args.len()
    );
    (sql, args)
}

/// `a, b` with every column prefixed by `alias.`.
fn prefixed(alias: &str, columns: &str) -> String {
    columns
        .split(',')
        .map(|c| format!("{alias}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Run a cached query and decode every row.
fn query_all<P: rusqlite::Params, T>(
    conn: &Connection,
    sql: &str,
    params: P,
    decode: fn(&Row<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(decode(row)?);
    }
    Ok(out)
}

/// A text column, borrowed from the row.
fn text_column<'r>(row: &'r Row<'_>, idx: usize) -> Result<&'r str> {
    row.get_ref(idx)?
        .as_str()
        .map_err(|e| Error::Corrupt(format!("column {idx}: {e}")))
}

fn text_enum<T>(row: &Row<'_>, idx: usize, kind: &str, parse: fn(&str) -> Option<T>) -> Result<T> {
    let text = text_column(row, idx)?;
    parse(text).ok_or_else(|| Error::Corrupt(format!("unknown {kind} {text:?}")))
}

fn json_column<T: serde::de::DeserializeOwned>(row: &Row<'_>, idx: usize) -> Result<T> {
    let text = text_column(row, idx)?;
    serde_json::from_str(text).map_err(|e| Error::Corrupt(format!("json in column {idx}: {e}")))
}

fn optional_json(row: &Row<'_>, idx: usize) -> Result<Option<Value>> {
    match row.get_ref(idx)? {
        ValueRef::Null => Ok(None),
        _ => json_column(row, idx).map(Some),
    }
}

fn decode_task(row: &Row<'_>) -> Result<Task> {
    let priority: u8 = row.get(5)?;
    let timeout_ms: i64 = row.get(10)?;
    Ok(Task {
        task_id: TaskId(row.get(0)?),
        seq: row.get(1)?,
        title: row.get(2)?,
        description: row.get(3)?,
        task_type: row.get(4)?,
        priority: Priority::new(priority)
            .ok_or_else(|| Error::Corrupt(format!("priority {priority} outside 1-10")))?,
        status: text_enum(row, 6, "task status", TaskStatus::parse)?,
        request: row.get(7)?,
        due_at: row.get(8)?,
        max_attempts: row.get(9)?,
        timeout_ms: u64::try_from(timeout_ms)
            .map_err(|_| Error::Corrupt(format!("negative timeout_ms {timeout_ms}")))?,
        created_at: row.get(11)?,
        started_at: row.get(12)?,
        finished_at: row.get(13)?,
        result: optional_json(row, 14)?,
    })
}

fn decode_subtask(row: &Row<'_>) -> Result<Subtask> {
    Ok(Subtask {
        subtask_id: SubtaskId(row.get(0)?),
        task_id: TaskId(row.get(1)?),
        index: row.get(2)?,
        key: row.get(3)?,
        capability: row.get(4)?,
        depends_on: json_column(row, 5)?,
        input: json_column(row, 6)?,
        state: text_enum(row, 7, "subtask state", SubtaskState::parse)?,
        attempts: row.get(8)?,
        assigned_agent: row.get::<_, Option<String>>(9)?.map(AgentId),
        outputs: optional_json(row, 10)?,
        error: row.get(11)?,
        updated_at: row.get(12)?,
    })
}

fn decode_assignment(row: &Row<'_>) -> Result<Assignment> {
    Ok(Assignment {
        assignment_id: AssignmentId(row.get(0)?),
        task_id: TaskId(row.get(1)?),
        subtask_id: SubtaskId(row.get(2)?),
        agent_id: AgentId(row.get(3)?),
        attempt: row.get(4)?,
        state: text_enum(row, 5, "assignment state", AssignmentState::parse)?,
        lease_expires_at: row.get(6)?,
        created_at: row.get(7)?,
        finished_at: row.get(8)?,
    })
}

fn decode_agent(row: &Row<'_>) -> Result<Agent> {
    Ok(Agent {
        agent_id: AgentId(row.get(0)?),
        name: row.get(1)?,
        kind: row.get(2)?,
        capabilities: json_column(row, 3)?,
        domains: json_column(row, 4)?,
        max_concurrency: row.get(5)?,
        status: text_enum(row, 6, "agent status", AgentStatus::parse)?,
        token_hash: row.get(7)?,
        created_at: row.get(8)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The query plan of `sql`, one line per step.
    fn plan(conn: &Connection, sql: &str, args: &[SqlValue]) -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args.iter()), |r| {
                r.get::<_, String>(3)
            })
            .unwrap();
        rows.map(|r| r.unwrap()).collect::<Vec<_>>().join("\n")
    }

    fn store() -> (SqliteStore, tempfile::TempDir) {
        let dir = tempfile::TempDir::new().unwrap();
        (SqliteStore::open(dir.path()).unwrap(), dir)
    }

    #[test]
    fn recover_reads_only_live_rows_through_partial_indexes() {
        let (store, _dir) = store();
        let conn = lock(&store.inner.writer);
        let tasks = plan(&conn, &live_tasks_sql(), &[]);
        assert!(tasks.contains("USING INDEX tasks_live"), "{tasks}");
        let subtasks = plan(&conn, &live_subtasks_sql(), &[]);
        assert!(subtasks.contains("USING INDEX tasks_live"), "{subtasks}");
        assert!(subtasks.contains("USING PRIMARY KEY"), "{subtasks}");
        let assignments = plan(&conn, &active_assignments_sql(), &[]);
        assert!(
            assignments.contains("USING INDEX assignments_active"),
            "{assignments}"
        );
        for p in [tasks, subtasks, assignments] {
            assert!(!p.contains("TEMP B-TREE"), "recover must not sort: {p}");
        }
    }

    #[test]
    fn list_tasks_walks_an_index_or_the_table_in_seq_order() {
        let (store, _dir) = store();
        let conn = lock(&store.inner.writer);
        // Priority and type have no index of their own: those filters walk the table by seq.
        let cases = [
            (TaskQuery::default(), "SCAN tasks"),
            (
                TaskQuery {
                    before_seq: Some(10),
                    ..TaskQuery::default()
                },
                "SEARCH tasks USING INTEGER PRIMARY KEY (rowid<?)",
            ),
            (
                TaskQuery {
                    status: Some(TaskStatus::Running),
                    ..TaskQuery::default()
                },
                "USING INDEX tasks_by_status (status=?)",
            ),
            (
                TaskQuery {
                    status: Some(TaskStatus::Running),
                    before_seq: Some(10),
                    ..TaskQuery::default()
                },
                "USING INDEX tasks_by_status (status=? AND rowid<?)",
            ),
            (
                TaskQuery {
                    priority: Some(Priority::HIGH),
                    ..TaskQuery::default()
                },
                "SCAN tasks",
            ),
            (
                TaskQuery {
                    task_type: Some("build".into()),
                    before_seq: Some(10),
                    ..TaskQuery::default()
                },
                "SEARCH tasks USING INTEGER PRIMARY KEY (rowid<?)",
            ),
        ];
        for (query, step) in cases {
            let (sql, args) = list_tasks_sql(&query);
            let p = plan(&conn, &sql, &args);
            assert!(p.contains(step), "{query:?} should run {step}: {p}");
            assert!(!p.contains("TEMP B-TREE"), "{query:?} must not sort: {p}");
        }
    }

    #[test]
    fn updates_and_timelines_use_their_keys() {
        let (store, _dir) = store();
        let conn = lock(&store.inner.writer);
        let cases = [
            (
                "UPDATE tasks SET status = 'running' WHERE task_id = ?1",
                "USING INDEX sqlite_autoindex_tasks_1 (task_id=?)",
            ),
            (
                "UPDATE subtasks SET state = 'ready' WHERE task_id = ?1 AND idx = ?2 \
                 AND subtask_id = ?3",
                "USING PRIMARY KEY (task_id=? AND idx=?)",
            ),
            (
                "SELECT items FROM events WHERE task_id = ?1 ORDER BY commit_no",
                "USING PRIMARY KEY (task_id=?)",
            ),
        ];
        let args = [
            SqlValue::Text("t".into()),
            SqlValue::Integer(0),
            SqlValue::Text("s".into()),
        ];
        for (sql, step) in cases {
            let n = sql.matches('?').count();
            let p = plan(&conn, sql, &args[..n]);
            assert!(p.contains(step), "{sql} should run {step}: {p}");
            assert!(!p.contains("TEMP B-TREE"), "{sql} must not sort: {p}");
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

    #[test]
    fn prefixed_qualifies_every_column() {
        assert_eq!(prefixed("s", "a, b,c"), "s.a, s.b, s.c");
    }
}
