-- Workflows and what a workflow step adds to a plan.
--
-- tasks.context: the task's params, metadata, planner record and LLM-derived objectives, as
-- JSON (`TaskContext`); NULL when empty, so plain tasks pay nothing.
-- subtasks.rules: a workflow step's condition, verification, approval and limits, as JSON
-- (`StepRules`); NULL for a plain step.
ALTER TABLE tasks ADD COLUMN context TEXT;
ALTER TABLE subtasks ADD COLUMN rules TEXT;

-- Every published version of every workflow. Versions of a name count from 1; a version is
-- never changed once written (tasks keep the version they started with).
CREATE TABLE workflows (
    name       TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    definition TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (name, version)
) STRICT, WITHOUT ROWID;
