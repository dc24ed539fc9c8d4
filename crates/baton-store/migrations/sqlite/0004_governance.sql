-- Governance: verifications, escalations, usage, and what an assignment asks for.
--
-- subtasks.usage: what agents reported they used (`Usage` as JSON); NULL when nothing.
-- assignments.kind: 'work' or 'verification' (a verdict on another agent's output).
ALTER TABLE subtasks ADD COLUMN usage TEXT;
ALTER TABLE assignments ADD COLUMN kind TEXT NOT NULL DEFAULT 'work';

-- Every verdict, appended; read with the task (and by recovery, for live tasks).
CREATE TABLE verifications (
    task_id    TEXT    NOT NULL,
    subtask_id TEXT    NOT NULL,
    n          INTEGER NOT NULL,
    attempt    INTEGER NOT NULL,
    author     TEXT    NOT NULL,
    verifier   TEXT    NOT NULL,
    verified   INTEGER NOT NULL,
    evidence   TEXT    NOT NULL,
    feedback   TEXT,
    at         INTEGER NOT NULL,
    PRIMARY KEY (task_id, subtask_id, n)
) STRICT, WITHOUT ROWID;

-- Escalations, upserted whole (open, then resolved). Listed newest first, by status or task.
CREATE TABLE escalations (
    escalation_id TEXT    NOT NULL PRIMARY KEY,
    task_id       TEXT    NOT NULL,
    subtask_id    TEXT,
    kind          TEXT    NOT NULL,
    status        TEXT    NOT NULL,
    reason        TEXT    NOT NULL,
    evidence      TEXT    NOT NULL,
    suggestions   TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    resolved_at   INTEGER,
    resolution    TEXT
) STRICT;
CREATE INDEX escalations_by_task ON escalations (task_id);
CREATE INDEX escalations_by_status ON escalations (status, created_at);
