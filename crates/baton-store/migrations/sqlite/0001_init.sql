-- Baton's first SQLite schema. Applied once, inside one transaction, by `SqliteStore::open`;
-- `PRAGMA user_version` records that it ran. Never edit an applied migration: add 0002_*.sql.
--
-- Enums are stored as their wire strings, times as Unix milliseconds, JSON as text
-- (SQL NULL means `None`; the text 'null' means `Some(Value::Null)`). STRICT tables reject
-- values of the wrong type.

CREATE TABLE tasks (
    task_id      TEXT    NOT NULL PRIMARY KEY,
    seq          INTEGER NOT NULL UNIQUE,
    title        TEXT    NOT NULL,
    description  TEXT    NOT NULL,
    task_type    TEXT,
    priority     INTEGER NOT NULL,
    status       TEXT    NOT NULL,
    request      TEXT    NOT NULL,
    due_at       INTEGER,
    max_attempts INTEGER NOT NULL,
    timeout_ms   INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    started_at   INTEGER,
    finished_at  INTEGER,
    result       TEXT
) STRICT;

-- `list_tasks`: newest first, optionally filtered by one column (seq itself is UNIQUE above).
CREATE INDEX tasks_by_status   ON tasks (status, seq);
CREATE INDEX tasks_by_type     ON tasks (task_type, seq);
CREATE INDEX tasks_by_priority ON tasks (priority, seq);
-- `recover`: only live tasks, so a restart does not scan the whole history. The WHERE clause
-- must match the one in sqlite.rs word for word for the planner to use this index. UNIQUE
-- (as seq is) tells the planner one row per seq, so subtasks come out in (seq, idx) order
-- straight from subtasks_by_task, without a sort.
CREATE UNIQUE INDEX tasks_live ON tasks (seq)
    WHERE status NOT IN ('completed', 'failed', 'cancelled');

CREATE TABLE subtasks (
    subtask_id     TEXT    NOT NULL PRIMARY KEY,
    task_id        TEXT    NOT NULL,
    idx            INTEGER NOT NULL,
    key            TEXT    NOT NULL,
    capability     TEXT    NOT NULL,
    depends_on     TEXT    NOT NULL,
    input          TEXT    NOT NULL,
    state          TEXT    NOT NULL,
    attempts       INTEGER NOT NULL,
    assigned_agent TEXT,
    outputs        TEXT,
    error          TEXT,
    updated_at     INTEGER NOT NULL
) STRICT;

CREATE INDEX subtasks_by_task ON subtasks (task_id, idx);

CREATE TABLE assignments (
    assignment_id    TEXT    NOT NULL PRIMARY KEY,
    task_id          TEXT    NOT NULL,
    subtask_id       TEXT    NOT NULL,
    agent_id         TEXT    NOT NULL,
    attempt          INTEGER NOT NULL,
    state            TEXT    NOT NULL,
    lease_expires_at INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    finished_at      INTEGER
) STRICT;

-- `recover`: only live leases. Same rule as tasks_live about the WHERE clause.
CREATE INDEX assignments_active ON assignments (created_at, assignment_id)
    WHERE state = 'active';

CREATE TABLE agents (
    agent_id        TEXT    NOT NULL PRIMARY KEY,
    name            TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    capabilities    TEXT    NOT NULL,
    domains         TEXT    NOT NULL,
    max_concurrency INTEGER NOT NULL,
    status          TEXT    NOT NULL,
    token_hash      TEXT    NOT NULL,
    created_at      INTEGER NOT NULL
) STRICT;

-- AUTOINCREMENT: ids are never reused, so `ORDER BY id` is commit order forever.
CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id    TEXT    NOT NULL,
    at         INTEGER NOT NULL,
    subtask_id TEXT,
    from_state TEXT,
    to_state   TEXT    NOT NULL,
    agent      TEXT,
    note       TEXT
) STRICT;

CREATE INDEX events_by_task ON events (task_id, id);
