//! Task lifecycle: submission (with idempotent resubmission), execution, cancellation, and
//! aggregation once every subtask is terminal.

use std::collections::HashMap;

use baton_core::{Event, Millis, SubtaskState, TaskId, TaskStatus};
use serde_json::json;

use super::{Engine, Internal, StoredTask, TaskRt};
use crate::handle::{NewTask, Reply, Submitted, TaskSnapshot};
use crate::Error;

impl Engine {
    pub(crate) fn submit(&mut self, new: Box<NewTask>, reply: Reply<Submitted>, now: Millis) {
        let task_id = new.task.task_id.clone();
        if let Some(&seq) = self.task_ids.get(&task_id) {
            let result = self.compare_existing(seq, &new);
            self.reply(reply, result);
            return;
        }
        if let Some(waiting) = self.pending_submits.get_mut(&task_id) {
            waiting.push((new, reply));
            return;
        }
        if !new.client_chosen_id {
            self.create(*new, reply, now);
            return;
        }
        // Not in memory: it may be a finished task that was evicted. Look it up off the loop;
        // later submissions of the same id wait behind this one.
        self.pending_submits
            .insert(task_id.clone(), vec![(new, reply)]);
        let store = self.store.clone();
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let found = store
                .task(&task_id)
                .await
                .map(|t| t.map(Box::new))
                .map_err(|e| e.to_string());
            let _ = tx.send(Internal::Looked(task_id, found));
        });
    }

    pub(crate) fn on_looked(
        &mut self,
        task_id: TaskId,
        found: Result<Option<Box<StoredTask>>, String>,
        now: Millis,
    ) {
        let waiting = self.pending_submits.remove(&task_id).unwrap_or_default();
        match found {
            Err(e) => {
                for (_, reply) in waiting {
                    let _ = reply.send(Err(Error::Unavailable(e.clone())));
                }
            }
            Ok(Some(stored)) => {
                let (task, subtasks) = *stored;
                let snapshot = TaskSnapshot { task, subtasks };
                for (new, reply) in waiting {
                    let result = if snapshot.task.request == new.task.request {
                        Ok(Submitted::Existing(snapshot.clone()))
                    } else {
                        Err(conflict(&task_id))
                    };
                    self.reply(reply, result);
                }
            }
            Ok(None) => {
                let mut waiting = waiting.into_iter();
                if let Some((first, reply)) = waiting.next() {
                    if let Some(error) = &self.failed {
                        let _ = reply.send(Err(Error::Unavailable(error.clone())));
                    } else {
                        self.create(*first, reply, now);
                    }
                }
                for (new, reply) in waiting {
                    self.submit(new, reply, now);
                }
            }
        }
    }

    fn compare_existing(&self, seq: i64, new: &NewTask) -> Result<Submitted, Error> {
        let rt = &self.tasks[&seq];
        if rt.task.request == new.task.request {
            Ok(Submitted::Existing(snapshot(rt)))
        } else {
            Err(conflict(&rt.task.task_id))
        }
    }

    fn create(&mut self, new: NewTask, reply: Reply<Submitted>, now: Millis) {
        let NewTask {
            mut task,
            subtasks,
            execute,
            ..
        } = new;
        let seq = self.next_seq;
        self.next_seq += 1;
        task.seq = seq;
        task.status = TaskStatus::Planned;
        task.created_at = now;
        task.max_attempts = self.config.retry.max_attempts;
        task.timeout_ms = self.config.subtask_timeout.as_millis() as u64;
        self.event(Event {
            task_id: task.task_id.clone(),
            at: now,
            subtask_id: None,
            from: None,
            to: TaskStatus::Planned.as_str().to_owned(),
            agent: None,
            note: None,
        });
        self.task_ids.insert(task.task_id.clone(), seq);
        let rt = TaskRt::new(task, subtasks);
        let open = rt.open;
        self.tasks.insert(seq, rt);
        self.write_new_task(seq);
        tracing::info!(task_id = %self.tasks[&seq].task.task_id, subtasks = open, "task planned");
        if execute {
            if let Err(e) = self.start_task(seq, now) {
                tracing::error!(error = %e, "could not start a new task");
            }
        }
        let result = Ok(Submitted::Created(snapshot(&self.tasks[&seq])));
        self.reply(reply, result);
    }

    pub(crate) fn execute(&mut self, task_id: &TaskId, now: Millis) -> Result<TaskStatus, Error> {
        let Some(&seq) = self.task_ids.get(task_id) else {
            return Err(not_found(task_id));
        };
        let status = self.tasks[&seq].task.status;
        match status {
            TaskStatus::Planned => {
                self.start_task(seq, now)?;
                Ok(self.tasks[&seq].task.status)
            }
            s if s.is_terminal() => Err(Error::Conflict(format!(
                "task {task_id:?} is already {s}; it cannot be executed again"
            ))),
            s => Ok(s),
        }
    }

    /// `planned → running`; subtasks without dependencies become ready.
    fn start_task(&mut self, seq: i64, now: Millis) -> Result<(), Error> {
        self.set_task_status(seq, TaskStatus::Running, None, now)?;
        let roots: Vec<u32> = self.tasks[&seq]
            .subs
            .iter()
            .filter(|s| s.waiting == 0 && s.sub.state == SubtaskState::Pending)
            .map(|s| s.sub.index)
            .collect();
        for idx in roots {
            self.make_ready(seq, idx, now);
        }
        Ok(())
    }

    /// `pending|retry_wait|blocked → ready`, then queue it.
    pub(crate) fn make_ready(&mut self, seq: i64, idx: u32, now: Millis) {
        if self
            .set_state(seq, idx, SubtaskState::Ready, None, None, now)
            .is_ok()
        {
            self.enqueue_ready(seq, idx, now);
        }
    }

    pub(crate) fn set_task_status(
        &mut self,
        seq: i64,
        to: TaskStatus,
        note: Option<String>,
        now: Millis,
    ) -> Result<(), Error> {
        let rt = self
            .tasks
            .get_mut(&seq)
            .ok_or_else(|| Error::NotFound(format!("task #{seq}")))?;
        let from = rt.task.status;
        rt.task.status = from
            .transition(to)
            .map_err(|e| Error::Conflict(e.to_string()))?;
        if to == TaskStatus::Running && rt.task.started_at.is_none() {
            rt.task.started_at = Some(now);
        }
        if to.is_terminal() {
            rt.task.finished_at = Some(now);
        }
        let event = Event {
            task_id: rt.task.task_id.clone(),
            at: now,
            subtask_id: None,
            from: Some(from.as_str().to_owned()),
            to: to.as_str().to_owned(),
            agent: None,
            note,
        };
        tracing::info!(task_id = %rt.task.task_id, from = %from, to = %to, "task status");
        self.event(event);
        self.write_task(seq);
        if to.is_terminal() {
            self.evict_when_durable(seq);
            for waiter in self.waiters.remove(&seq).unwrap_or_default() {
                self.reply(waiter, Ok(()));
            }
        }
        Ok(())
    }

    pub(crate) fn cancel(&mut self, task_id: &TaskId, now: Millis) -> Result<TaskStatus, Error> {
        let Some(&seq) = self.task_ids.get(task_id) else {
            return Err(not_found(task_id));
        };
        let status = self.tasks[&seq].task.status;
        if status.is_terminal() {
            return Err(Error::Conflict(format!(
                "task {task_id:?} is already {status}"
            )));
        }
        self.close_open_subtasks(seq, "task cancelled", now);
        self.set_task_status(seq, TaskStatus::Cancelled, None, now)?;
        self.aggregate(seq);
        Ok(TaskStatus::Cancelled)
    }

    /// Cancel every subtask that is not terminal, revoking live assignments.
    pub(crate) fn close_open_subtasks(&mut self, seq: i64, why: &str, now: Millis) {
        let open: Vec<u32> = self.tasks[&seq]
            .subs
            .iter()
            .filter(|s| !s.sub.state.is_terminal())
            .map(|s| s.sub.index)
            .collect();
        for idx in open {
            self.revoke_current(seq, idx, baton_core::AssignmentState::Cancelled, now);
            let _ = self.set_state(
                seq,
                idx,
                SubtaskState::Cancelled,
                None,
                Some(why.to_owned()),
                now,
            );
        }
    }

    /// Called whenever a subtask reaches a terminal state: finish the task when none is open.
    pub(crate) fn after_terminal_subtask(&mut self, seq: i64, now: Millis) {
        let rt = &self.tasks[&seq];
        if rt.open > 0 || rt.task.status.is_terminal() {
            return;
        }
        let all_done = rt
            .subs
            .iter()
            .all(|s| matches!(s.sub.state, SubtaskState::Completed | SubtaskState::Skipped));
        let to = if all_done {
            TaskStatus::Completed
        } else {
            TaskStatus::Failed
        };
        if self.set_task_status(seq, to, None, now).is_ok() {
            self.aggregate(seq);
        }
    }

    /// Fail a task because one of its subtasks failed for good.
    pub(crate) fn fail_task(&mut self, seq: i64, why: String, now: Millis) {
        if self.tasks[&seq].task.status.is_terminal() {
            return;
        }
        self.close_open_subtasks(seq, "task failed", now);
        if self
            .set_task_status(seq, TaskStatus::Failed, Some(why), now)
            .is_ok()
        {
            self.aggregate(seq);
        }
    }

    /// Build the task result: a summary and the metrics. The outputs and errors per subtask
    /// are stored once, on the subtasks; readers merge them into the result (see the server).
    fn aggregate(&mut self, seq: i64) {
        let Some(rt) = self.tasks.get_mut(&seq) else {
            return;
        };
        let mut counts: HashMap<&'static str, usize> = HashMap::new();
        for s in &rt.subs {
            *counts.entry(s.sub.state.as_str()).or_default() += 1;
        }
        let done = counts.get("completed").copied().unwrap_or(0);
        let total = rt.subs.len();
        let finished = rt.task.finished_at.unwrap_or(rt.task.created_at);
        rt.task.result = Some(json!({
            "status": rt.task.status.as_str(),
            "summary": format!("{done} of {total} subtasks completed; task {}", rt.task.status),
            "metrics": {
                "elapsed_seconds": rt.task.elapsed_seconds(finished),
                "on_time": rt.task.on_time(finished),
                "subtasks": counts,
            },
        }));
        self.write_task(seq);
    }
}

pub(crate) fn snapshot(rt: &TaskRt) -> TaskSnapshot {
    TaskSnapshot {
        task: rt.task.clone(),
        subtasks: rt.subs.iter().map(|s| s.sub.clone()).collect(),
    }
}

fn conflict(task_id: &TaskId) -> Error {
    Error::Conflict(format!(
        "task {task_id:?} already exists with a different body"
    ))
}

fn not_found(task_id: &TaskId) -> Error {
    Error::NotFound(format!("task {task_id:?} not found"))
}
