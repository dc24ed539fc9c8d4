-- Baton's first SQLite schema. Applied once, inside one transaction, by `SqliteStore::open`;
-- `PRAGMA user_version` records that it ran. Never edit an applied migration: add 0002_*.sql.
--
-- Enums are stored as their wire strings, times as Unix milliseconds, JSON as text
-- (SQL NULL means `None`; the text 'null' means `Some(Value::Null)`). STRICT tables reject
-- values of the wrong type.
--
-- Every commit pays for each B-tree a row touches, so each table has only what its reads need:
-- tasks 4 (the table, task_id, status, live), subtasks and events 1 each, assignments 2 (the
-- table and its active ones). Tables read by a text key are WITHOUT ROWID: the key is the row.

-- Keyed by `seq` (the rowid): new tasks append, and `list_tasks` walks it newest first.
CREATE TABLE tasks (
    seq          INTEGER PRIMARY KEY,
    task_id      TEXT    NOT NULL UNIQUE,
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

-- `list_tasks` by status, newest first (index entries end with the rowid, which is seq).
-- Filters by priority or type are rare and walk the table by seq instead: an index each would
-- cost every task insert and every status change more than those reads save.
CREATE INDEX tasks_by_status ON tasks (status);
-- `recover`: only live tasks, so a restart does not scan the whole history. The WHERE clause
-- must match the one in sqlite.rs word for word for the planner to use this index; it avoids
-- `NOT IN (…)`, which builds a temporary table on every insert and update of a task. Not
-- UNIQUE: seq is the rowid, so the planner already knows it is unique (subtasks come out in
-- (seq, idx) order straight from the subtasks key, without a sort), and a UNIQUE index would
-- cost every insert and status change a uniqueness probe.
CREATE INDEX tasks_live ON tasks (seq)
    WHERE status <> 'completed' AND status <> 'failed' AND status <> 'cancelled';

-- Read by task, updated by (task_id, idx): the key is the only B-tree.
CREATE TABLE subtasks (
    task_id        TEXT    NOT NULL,
    idx            INTEGER NOT NULL,
    subtask_id     TEXT    NOT NULL,
    key            TEXT    NOT NULL,
    capability     TEXT    NOT NULL,
    depends_on     TEXT    NOT NULL,
    input          TEXT    NOT NULL,
    state          TEXT    NOT NULL,
    attempts       INTEGER NOT NULL,
    assigned_agent TEXT,
    outputs        TEXT,
    error          TEXT,
    updated_at     INTEGER NOT NULL,
    PRIMARY KEY (task_id, idx)
) STRICT, WITHOUT ROWID;

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
) STRICT, WITHOUT ROWID;

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

-- Numbers the commits that append events; its one row counts up, never down.
CREATE TABLE event_commits (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    last INTEGER NOT NULL
) STRICT;
INSERT INTO event_commits (id, last) VALUES (1, 0);

-- Timelines: one row per task per commit, holding that commit's events of the task in batch
-- order as a JSON array of compact events (`[at, to, from, subtask, agent, note]`, see
-- src/sqlite/timeline.rs). A timeline is its rows in `commit_no` order, each expanded in order.
-- Rows of one task are adjacent, so reading a timeline touches a page or two.
CREATE TABLE events (
    task_id   TEXT    NOT NULL,
    commit_no INTEGER NOT NULL,
    items     TEXT    NOT NULL,
    PRIMARY KEY (task_id, commit_no)
) STRICT, WITHOUT ROWID;
