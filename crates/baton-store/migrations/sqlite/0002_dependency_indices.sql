-- Subtask dependencies are stored as plan indices (`[0, 3]`) instead of subtask ids
-- (`["code::t::1", ...]`): a plan of many edges then costs a few bytes per edge, on disk and in
-- the engine's memory. Rewrites the rows written before, resolving each id within its task.
-- The order of a subtask's dependencies carries no meaning.
UPDATE subtasks
SET depends_on = (
    SELECT json_group_array(d.idx)
    FROM json_each(subtasks.depends_on) AS j
    JOIN subtasks AS d ON d.task_id = subtasks.task_id AND d.subtask_id = j.value
)
WHERE depends_on <> '[]';
