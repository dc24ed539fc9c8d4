//! The SQLite backend of [`Store`]: one file, `baton.db`, in WAL mode.
//!
//! Shape:
//! - One writer connection behind a mutex. `commit` runs the whole batch in one
//!   `BEGIN IMMEDIATE … COMMIT` transaction on a blocking thread, with cached prepared
//!   statements, so a group commit of thousands of rows costs one WAL fsync (`sqlite/write.rs`).
//! - A small pool of read-only connections for every read; in WAL mode readers see the last
//!   committed snapshot and never wait for the writer. Multi-query reads (`task`, `recover`)
//!   run inside one read transaction, so they see a single snapshot.
//! - The schema keeps the B-trees a commit touches few (see `0001_init.sql`); a task's events of
//!   one commit are one row (`sqlite/timeline.rs`).
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

mod timeline;
mod write;

use crate::{
    Error, EscalationQuery, Recovery, Result, Store, StoredWorkflow, TaskDetail, TaskQuery,
    WriteBatch,
};
use async_trait::async_trait;
use baton_core::{
    Agent, AgentId, AgentStatus, Assignment, AssignmentId, AssignmentKind, AssignmentState,
    Escalation, EscalationKind, EscalationStatus, Event, Millis, Priority, Subtask, SubtaskId,
    SubtaskState, Task, TaskId, TaskStatus, Verification,
};
use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{Connection, OpenFlags, Row, TransactionBehavior};
use serde_json::Value;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// The database file `open` creates inside the data directory.
pub const DB_FILE: &str = "baton.db";

/// The embedded migrations, in order; migration `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/sqlite/0001_init.sql"),
    include_str!("../migrations/sqlite/0002_dependency_indices.sql"),
    include_str!("../migrations/sqlite/0003_workflows.sql"),
    include_str!("../migrations/sqlite/0004_governance.sql"),
    include_str!("../migrations/sqlite/0005_agent_stats.sql"),
];

/// Read connections opened at start; more are opened on demand when all are busy.
const READERS_AT_OPEN: usize = 4;
/// Idle read connections kept for reuse; extra ones are closed when returned.
const READERS_KEPT: usize = 8;
/// Page cache of the writer, in KiB (negative `cache_size` means KiB).
const WRITER_CACHE_KIB: i64 = 65_536;
/// Page cache of each reader, in KiB.
const READER_CACHE_KIB: i64 = 16_384;
/// Page size of a new database file (an existing file keeps its own). A commit writes every page
/// it dirtied into the WAL; 16 KiB pages make the B-trees a level shallower and a group commit
/// a few fuller frames instead of many small ones: in `examples/commit_bench`, about 10% less
/// CPU per task lifecycle than 4 KiB at 1024-task batches, and no worse at 48-task ones.
const PAGE_SIZE: i64 = 16_384;
/// The WAL is checkpointed into the database file by the commit that grows it past this size
/// (SQLite's default of 1000 pages, at [`PAGE_SIZE`]). Larger made no difference to CPU per
/// lifecycle in `examples/commit_bench` but lengthened the commit that pays for the checkpoint
/// (p99 33 ms at 16 MiB, 55 ms at 64 MiB for 1024-task batches). Durability does not depend on
/// it: a commit is durable once its WAL frames are synced.
const CHECKPOINT_AFTER_BYTES: i64 = 16 << 20;
/// After a checkpoint the WAL file is cut back to this size, so one huge batch does not leave a
/// huge file behind, while the normal cycle reuses the file without regrowing it.
const WAL_SIZE_LIMIT_BYTES: i64 = 64 << 20;
/// Readers map this much of the database file instead of copying pages out of the OS cache.
const READER_MMAP_BYTES: i64 = 256 << 20;
/// How long a connection waits for a lock held by another process, in ms.
const BUSY_TIMEOUT_MS: i64 = 5_000;
/// Room for every statement `commit` and the reads use, so none is evicted.
const STATEMENT_CACHE: usize = 64;

const TASK_COLUMNS: &str = "task_id, seq, title, description, task_type, priority, status, \
     request, due_at, max_attempts, timeout_ms, created_at, started_at, finished_at, result, \
     context";
const SUBTASK_COLUMNS: &str = "subtask_id, task_id, idx, key, capability, depends_on, input, \
     state, attempts, assigned_agent, outputs, error, updated_at, rules, usage";
const ASSIGNMENT_COLUMNS: &str = "assignment_id, task_id, subtask_id, agent_id, attempt, state, \
     lease_expires_at, created_at, finished_at, kind";
const VERIFICATION_COLUMNS: &str =
    "task_id, subtask_id, n, attempt, author, verifier, verified, evidence, feedback, at";
const ESCALATION_COLUMNS: &str = "escalation_id, task_id, subtask_id, kind, status, reason, \
     evidence, suggestions, created_at, resolved_at, resolution";
const WORKFLOW_COLUMNS: &str = "name, version, definition, created_at";
const AGENT_COLUMNS: &str = "agent_id, name, kind, capabilities, domains, max_concurrency, \
     status, token_hash, created_at, stats";

/// Must match the `tasks_live` index predicate in `0001_init.sql` exactly. Only `tasks` has a
/// `status` column, so it needs no table prefix in joins.
const LIVE_TASK: &str = "status <> 'completed' AND status <> 'failed' AND status <> 'cancelled'";

/// A task's `events` rows, oldest first.
const TIMELINE_SQL: &str = "SELECT items FROM events WHERE task_id = ?1 ORDER BY commit_no";

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
        std::fs::create_dir_all(data_dir)
            .map_err(|e| Error::backend(format!("creating data dir {}", data_dir.display()), e))?;
        Self::open_file(&data_dir.join(DB_FILE))
    }

    /// Open (creating if needed) the database file at `path` and bring its schema up to date.
    pub fn open_file(path: &Path) -> Result<SqliteStore> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut writer = Connection::open_with_flags(path, flags)
            .map_err(|e| Error::backend(format!("opening {}", path.display()), e))?;
        configure(&writer, WRITER_CACHE_KIB)?;
        // Only takes effect while the file is empty, so before WAL mode writes its header.
        writer.pragma_update(None, "page_size", PAGE_SIZE)?;
        let mode: String =
            writer.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::backend_msg(format!(
                "{} cannot use WAL (journal_mode is {mode})",
                path.display()
            )));
        }
        writer.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT_BYTES)?;
        migrate(&mut writer)?;
        let page_size: i64 = writer.pragma_query_value(None, "page_size", |r| r.get(0))?;
        let checkpoint_pages = (CHECKPOINT_AFTER_BYTES / page_size.max(512)).max(1);
        writer.pragma_update(None, "wal_autocheckpoint", checkpoint_pages)?;

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
            return Err(Error::backend_msg(format!("not a pragma name: {name:?}")));
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
        .map_err(|e| Error::backend("store read task failed", e))?
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
            write::apply(&mut writer, &batch)
        })
        .await
        .map_err(|e| Error::backend("store commit task failed", e))?
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
            let verifications = query_all(
                &tx,
                &format!(
                    "SELECT {} FROM tasks t JOIN verifications v ON v.task_id = t.task_id \
                     WHERE {LIVE_TASK} ORDER BY t.seq, v.subtask_id, v.n",
                    prefixed("v", VERIFICATION_COLUMNS)
                ),
                [],
                decode_verification,
            )?;
            let escalations = query_all(
                &tx,
                &format!(
                    "SELECT {} FROM tasks t JOIN escalations e ON e.task_id = t.task_id \
                     WHERE {} ORDER BY e.created_at, e.escalation_id",
                    prefixed("e", ESCALATION_COLUMNS),
                    // `escalations` has a status column too.
                    LIVE_TASK.replace("status", "t.status")
                ),
                [],
                decode_escalation,
            )?;
            let max_seq: i64 =
                tx.query_row("SELECT COALESCE(MAX(seq), 0) FROM tasks", [], |r| r.get(0))?;
            tx.commit()?;
            Ok(Recovery {
                agents,
                tasks,
                subtasks,
                assignments,
                verifications,
                escalations,
                max_seq,
            })
        })
        .await
    }

    async fn task(&self, task_id: &TaskId) -> Result<Option<(Task, Vec<Subtask>)>> {
        let task_id = task_id.clone();
        self.read(move |conn| {
            let tx = conn.transaction()?;
            let found = read_task(&tx, &task_id)?;
            tx.commit()?;
            Ok(found)
        })
        .await
    }

    async fn task_detail(&self, task_id: &TaskId) -> Result<Option<TaskDetail>> {
        let task_id = task_id.clone();
        self.read(move |conn| {
            let tx = conn.transaction()?;
            let Some((task, subtasks)) = read_task(&tx, &task_id)? else {
                return Ok(None);
            };
            let events = read_timeline(&tx, &task_id)?;
            let (verifications, escalations) = read_governance(&tx, &task_id)?;
            tx.commit()?;
            Ok(Some(TaskDetail {
                task,
                subtasks,
                events,
                verifications,
                escalations,
            }))
        })
        .await
    }

    async fn timeline(&self, task_id: &TaskId) -> Result<Vec<Event>> {
        let task_id = task_id.clone();
        self.read(move |conn| read_timeline(conn, &task_id)).await
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

    async fn escalations(&self, query: &EscalationQuery) -> Result<Vec<Escalation>> {
        let mut conditions = Vec::new();
        let mut args: Vec<SqlValue> = Vec::new();
        if let Some(status) = query.status {
            args.push(SqlValue::Text(status.as_str().to_owned()));
            conditions.push(format!("status = ?{}", args.len()));
        }
        if let Some(task_id) = &query.task_id {
            args.push(SqlValue::Text(task_id.to_string()));
            conditions.push(format!("task_id = ?{}", args.len()));
        }
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        args.push(SqlValue::Integer(i64::from(query.limit)));
        let sql = format!(
            "SELECT {ESCALATION_COLUMNS} FROM escalations {filter} \
             ORDER BY created_at DESC, escalation_id DESC LIMIT ?{}",
            args.len()
        );
        self.read(move |conn| {
            query_all(
                conn,
                &sql,
                rusqlite::params_from_iter(args.iter()),
                decode_escalation,
            )
        })
        .await
    }

    async fn escalation(&self, escalation_id: &str) -> Result<Option<Escalation>> {
        let id = escalation_id.to_owned();
        self.read(move |conn| {
            let mut found = query_all(
                conn,
                &format!("SELECT {ESCALATION_COLUMNS} FROM escalations WHERE escalation_id = ?1"),
                [id.as_str()],
                decode_escalation,
            )?;
            Ok(found.pop())
        })
        .await
    }

    async fn publish_workflow(
        &self,
        name: &str,
        definition: &Value,
        now: Millis,
    ) -> Result<StoredWorkflow> {
        let name = name.to_owned();
        let text = serde_json::to_string(definition)
            .map_err(|e| Error::backend("encoding a workflow", e))?;
        let definition = definition.clone();
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut writer = lock(&inner.writer);
            let tx = writer.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let version: u32 = tx.query_row(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM workflows WHERE name = ?1",
                [&name],
                |r| r.get(0),
            )?;
            tx.execute(
                "INSERT INTO workflows (name, version, definition, created_at) \
                 VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![name, version, text, now],
            )?;
            tx.commit()?;
            Ok(StoredWorkflow {
                name,
                version,
                definition,
                created_at: now,
            })
        })
        .await
        .map_err(|e| Error::backend("store commit task failed", e))?
    }

    async fn workflow(&self, name: &str, version: Option<u32>) -> Result<Option<StoredWorkflow>> {
        let name = name.to_owned();
        self.read(move |conn| {
            let mut found = match version {
                Some(v) => query_all(
                    conn,
                    &format!(
                        "SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE name = ?1 AND version = ?2"
                    ),
                    rusqlite::params![name, v],
                    decode_workflow,
                )?,
                None => query_all(
                    conn,
                    &format!(
                        "SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE name = ?1 \
                         ORDER BY version DESC LIMIT 1"
                    ),
                    [&name],
                    decode_workflow,
                )?,
            };
            Ok(found.pop())
        })
        .await
    }

    async fn workflows(&self) -> Result<Vec<StoredWorkflow>> {
        self.read(|conn| {
            query_all(
                conn,
                &format!(
                    "SELECT {WORKFLOW_COLUMNS} FROM workflows AS w WHERE version = \
                     (SELECT MAX(version) FROM workflows WHERE name = w.name) ORDER BY name"
                ),
                [],
                decode_workflow,
            )
        })
        .await
    }
}

fn decode_workflow(row: &Row<'_>) -> Result<StoredWorkflow> {
    Ok(StoredWorkflow {
        name: row.get(0)?,
        version: row.get(1)?,
        definition: json_column(row, 2)?,
        created_at: row.get(3)?,
    })
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        match e {
            // The stored value has the wrong type or range for the field it decodes into.
            rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::IntegralValueOutOfRange(..) => Error::corrupt("decoding a row", e),
            other => Error::backend("sqlite", other),
        }
    }
}

/// Lock a mutex, taking the value over from a thread that panicked while holding it: the
/// connection inside is still sound (an open transaction is rolled back before reuse).
/// A task and its subtasks (plan order), inside the caller's transaction.
fn read_task(conn: &Connection, task_id: &TaskId) -> Result<Option<(Task, Vec<Subtask>)>> {
    let mut tasks = query_all(
        conn,
        &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = ?1"),
        [task_id.as_str()],
        decode_task,
    )?;
    let Some(task) = tasks.pop() else {
        return Ok(None);
    };
    let subtasks = query_all(
        conn,
        &format!("SELECT {SUBTASK_COLUMNS} FROM subtasks WHERE task_id = ?1 ORDER BY idx"),
        [task_id.as_str()],
        decode_subtask,
    )?;
    Ok(Some((task, subtasks)))
}

/// A task's timeline, oldest first.
fn read_timeline(conn: &Connection, task_id: &TaskId) -> Result<Vec<Event>> {
    let mut stmt = conn.prepare_cached(TIMELINE_SQL)?;
    let mut rows = stmt.query([task_id.as_str()])?;
    let mut events = Vec::new();
    while let Some(row) = rows.next()? {
        timeline::decode(task_id, text_column(row, 0)?, &mut events)
            .map_err(|e| Error::corrupt(format!("events of {task_id}"), e))?;
    }
    Ok(events)
}

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
        .map_err(|e| Error::backend(format!("opening reader on {}", path.display()), e))?;
    configure(&conn, READER_CACHE_KIB)?;
    conn.pragma_update(None, "mmap_size", READER_MMAP_BYTES)?;
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
            .map_err(|_| Error::corrupt_msg(format!("negative schema version {version}")))?;
        if version > latest {
            return Err(Error::backend_msg(format!(
                "database schema version {version} is newer than this build knows ({latest})"
            )));
        }
        let Some(sql) = MIGRATIONS.get(version) else {
            return Ok(());
        };
        tx.execute_batch(sql)
            .map_err(|e| Error::backend(format!("migration {}", version + 1), e))?;
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.commit()?;
        tracing::info!(version = version + 1, "applied sqlite migration");
    }
}

/// Non-terminal tasks in `seq` order; served by the partial index `tasks_live`.
fn live_tasks_sql() -> String {
    format!("SELECT {TASK_COLUMNS} FROM tasks WHERE {LIVE_TASK} ORDER BY seq")
}

/// The subtasks of non-terminal tasks, by task `seq` then plan order.
fn live_subtasks_sql() -> String {
    format!(
        "SELECT {} FROM tasks t JOIN subtasks s ON s.task_id = t.task_id \
         WHERE {LIVE_TASK} ORDER BY t.seq, s.idx",
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
        .map_err(|e| Error::corrupt(format!("column {idx}"), e))
}

fn text_enum<T>(row: &Row<'_>, idx: usize, kind: &str, parse: fn(&str) -> Option<T>) -> Result<T> {
    let text = text_column(row, idx)?;
    parse(text).ok_or_else(|| Error::corrupt_msg(format!("unknown {kind} {text:?}")))
}

fn json_column<T: serde::de::DeserializeOwned>(row: &Row<'_>, idx: usize) -> Result<T> {
    let text = text_column(row, idx)?;
    serde_json::from_str(text).map_err(|e| Error::corrupt(format!("json in column {idx}"), e))
}

fn optional_json(row: &Row<'_>, idx: usize) -> Result<Option<Value>> {
    optional_typed(row, idx)
}

/// A JSON column decoded into `T`; SQL `NULL` is `None`.
fn optional_typed<T: serde::de::DeserializeOwned>(row: &Row<'_>, idx: usize) -> Result<Option<T>> {
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
            .ok_or_else(|| Error::corrupt_msg(format!("priority {priority} outside 1-10")))?,
        status: text_enum(row, 6, "task status", TaskStatus::parse)?,
        request: row.get(7)?,
        due_at: row.get(8)?,
        max_attempts: row.get(9)?,
        timeout_ms: u64::try_from(timeout_ms)
            .map_err(|_| Error::corrupt_msg(format!("negative timeout_ms {timeout_ms}")))?,
        created_at: row.get(11)?,
        started_at: row.get(12)?,
        finished_at: row.get(13)?,
        result: optional_json(row, 14)?,
        context: optional_typed(row, 15)?.unwrap_or_default(),
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
        rules: optional_typed(row, 13)?.map(Box::new),
        usage: optional_typed(row, 14)?,
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
        kind: text_enum(row, 9, "assignment kind", AssignmentKind::parse)?,
    })
}

fn decode_verification(row: &Row<'_>) -> Result<Verification> {
    Ok(Verification {
        task_id: TaskId(row.get(0)?),
        subtask_id: SubtaskId(row.get(1)?),
        n: row.get(2)?,
        attempt: row.get(3)?,
        author: AgentId(row.get(4)?),
        verifier: AgentId(row.get(5)?),
        verified: row.get(6)?,
        evidence: json_column(row, 7)?,
        feedback: row.get(8)?,
        at: row.get(9)?,
    })
}

fn decode_escalation(row: &Row<'_>) -> Result<Escalation> {
    Ok(Escalation {
        escalation_id: row.get(0)?,
        task_id: TaskId(row.get(1)?),
        subtask_id: row.get::<_, Option<String>>(2)?.map(SubtaskId),
        kind: text_enum(row, 3, "escalation kind", EscalationKind::parse)?,
        status: text_enum(row, 4, "escalation status", EscalationStatus::parse)?,
        reason: row.get(5)?,
        evidence: json_column(row, 6)?,
        suggestions: json_column(row, 7)?,
        created_at: row.get(8)?,
        resolved_at: row.get(9)?,
        resolution: optional_typed(row, 10)?,
    })
}

/// A task's verdicts and escalations, in order.
fn read_governance(
    conn: &Connection,
    task_id: &TaskId,
) -> Result<(Vec<Verification>, Vec<Escalation>)> {
    let verifications = query_all(
        conn,
        &format!(
            "SELECT {VERIFICATION_COLUMNS} FROM verifications WHERE task_id = ?1 \
             ORDER BY subtask_id, n"
        ),
        [task_id.as_str()],
        decode_verification,
    )?;
    let escalations = query_all(
        conn,
        &format!(
            "SELECT {ESCALATION_COLUMNS} FROM escalations WHERE task_id = ?1 \
             ORDER BY created_at, escalation_id"
        ),
        [task_id.as_str()],
        decode_escalation,
    )?;
    Ok((verifications, escalations))
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
        stats: json_column(row, 9)?,
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
                write::UPDATE_TASK,
                "USING INDEX sqlite_autoindex_tasks_1 (task_id=?)",
            ),
            (
                write::UPDATE_SUBTASK,
                "USING PRIMARY KEY (task_id=? AND idx=?)",
            ),
            (TIMELINE_SQL, "USING PRIMARY KEY (task_id=?)"),
        ];
        for (sql, step) in cases {
            let args = vec![SqlValue::Null; sql.matches('?').count()];
            let p = plan(&conn, sql, &args);
            assert!(p.contains(step), "{sql} should run {step}: {p}");
            assert!(!p.contains("TEMP B-TREE"), "{sql} must not sort: {p}");
        }
    }

    #[test]
    fn prefixed_qualifies_every_column() {
        assert_eq!(prefixed("s", "a, b,c"), "s.a, s.b, s.c");
    }
}
