//! Task lifecycle: submission (with idempotent resubmission), execution, cancellation, and
//! aggregation once every subtask is terminal.

use std::collections::HashMap;

use baton_core::plan::Plan;
use baton_core::{
    workflow, Change, Event, Millis, PlannerRecord, SubtaskState, Task, TaskId, TaskStatus,
};
use serde_json::json;

use super::{new_uuid, Engine, Internal, StoredTask, TaskRt};
use crate::handle::{Gates, Reply, Submitted, TaskSnapshot};
use crate::intake::NewTask;
use crate::Error;

impl Engine {
    pub(crate) fn submit(&mut self, new: Box<NewTask>, reply: Reply<Submitted>, now: Millis) {
        let Some(task_id) = new.task_id.clone() else {
            // No id of the client's: a new one cannot exist anywhere yet.
            let task_id = TaskId(format!("task-{}", new_uuid(&mut self.rng, now)));
            return self.create(*new, task_id, reply, now);
        };
        if let Some(&seq) = self.task_ids.get(&task_id) {
            let result = self.compare_existing(seq, &new);
            self.reply(reply, result);
            return;
        }
        if let Some(waiting) = self.pending_submits.get_mut(&task_id) {
            waiting.push((new, reply));
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
                    let result = if snapshot.task.request == new.request {
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
                        self.create(*first, task_id, reply, now);
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
        if rt.task.request == new.request {
            Ok(Submitted::Existing(snapshot(rt)))
        } else {
            Err(conflict(&rt.task.task_id))
        }
    }

    fn create(&mut self, new: NewTask, task_id: TaskId, reply: Reply<Submitted>, now: Millis) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let subtasks = new.plan.instantiate(&task_id, now);
        let task = Task {
            task_id: task_id.clone(),
            seq,
            title: new.title,
            description: new.description,
            task_type: new.task_type,
            priority: new.priority,
            status: TaskStatus::Planned,
            request: new.request,
            due_at: new.due_at,
            max_attempts: self.config.retry.max_attempts,
            timeout_ms: self.config.subtask_timeout.as_millis() as u64,
            created_at: now,
            started_at: None,
            finished_at: None,
            result: None,
            context: new.context,
        };
        self.event(Event {
            task_id: task_id.clone(),
            at: now,
            change: Change::Task {
                from: None,
                to: TaskStatus::Planned,
            },
            agent: None,
            note: None,
        });
        self.task_ids.insert(task_id.clone(), seq);
        let rt = TaskRt::new(task, subtasks);
        let open = rt.open;
        self.tasks.insert(seq, rt);
        self.write_new_task(seq);
        tracing::info!(task_id = %task_id, subtasks = open, "task planned");
        let started = if new.execute {
            self.start_task(seq, now)
        } else {
            Ok(())
        };
        let result = started.map(|()| Submitted::Created(snapshot(&self.tasks[&seq])));
        self.reply(reply, result);
    }

    pub(crate) fn execute(
        &mut self,
        task_id: &TaskId,
        gates: Gates,
        now: Millis,
    ) -> Result<TaskStatus, Error> {
        let Some(&seq) = self.task_ids.get(task_id) else {
            return Err(not_found(task_id));
        };
        let status = self.tasks[&seq].task.status;
        match status {
            TaskStatus::Planned => {
                let rt = &self.tasks[&seq];
                let mut checkpoints = Vec::with_capacity(gates.checkpoints.len());
                for id in &gates.checkpoints {
                    match rt.subs.iter().position(|s| &s.sub.subtask_id == id) {
                        Some(i) => checkpoints.push(i as u32),
                        None => {
                            return Err(Error::Invalid(format!(
                                "checkpoints: task {:?} has no subtask {:?}",
                                task_id.as_str(),
                                id.as_str()
                            )))
                        }
                    }
                }
                if let Some(rt) = self.tasks.get_mut(&seq) {
                    rt.task.context.manual |= gates.manual;
                    rt.task.context.checkpoints.extend(checkpoints);
                }
                self.start_task(seq, now)?;
                Ok(self.tasks[&seq].task.status)
            }
            s if s.is_terminal() => Err(Error::Conflict(format!(
                "task {:?} is already {s}; it cannot be executed again",
                task_id.as_str()
            ))),
            s => Ok(s),
        }
    }

    /// `planned → running`; subtasks without dependencies become ready (or skipped).
    fn start_task(&mut self, seq: i64, now: Millis) -> Result<(), Error> {
        self.set_task_status(seq, TaskStatus::Running, None, now)?;
        let roots: Vec<u32> = self.tasks[&seq]
            .subs
            .iter()
            .filter(|s| s.waiting == 0 && s.sub.state == SubtaskState::Pending)
            .map(|s| s.sub.index)
            .collect();
        for idx in roots {
            self.unblocked(seq, idx, now)?;
        }
        self.after_terminal_subtask(seq, now)
    }

    /// A pending subtask whose dependencies are all done: it is skipped when every one of them
    /// was skipped or when its condition is false, else it becomes ready. Skips cascade to
    /// dependents through a worklist (no recursion, however long the chain).
    pub(crate) fn unblocked(&mut self, seq: i64, idx: u32, now: Millis) -> Result<(), Error> {
        let mut work = vec![idx];
        while let Some(idx) = work.pop() {
            let Some(rt) = self.tasks.get(&seq) else {
                return Err(self.missing(format!("task #{seq}")));
            };
            let sub = &rt.subs[idx as usize].sub;
            // Skipped by a false condition, that is: a step a human skipped lets its
            // dependents go on.
            let all_skipped = !sub.depends_on.is_empty()
                && sub.depends_on.iter().all(|&d| {
                    let dep = &rt.subs[d as usize];
                    dep.sub.state == SubtaskState::Skipped
                        && !dep.gov().is_some_and(|g| g.skipped_by_human)
                });
            let skip = if all_skipped {
                Some("every dependency was skipped".to_owned())
            } else {
                workflow::condition_holds(&rt.task, &rt.subs, idx as usize)
                    .err()
                    .map(|when| format!("condition is false: {when}"))
            };
            let Some(why) = skip else {
                if self.gated(seq, idx) {
                    let note = Some("waiting for approval".to_owned());
                    self.set_state(seq, idx, SubtaskState::AwaitingApproval, None, note, now)?;
                    self.refresh_side_status(seq, now)?;
                } else {
                    self.make_ready(seq, idx, now)?;
                }
                continue;
            };
            self.set_state(seq, idx, SubtaskState::Skipped, None, Some(why), now)?;
            work.extend(self.release(seq, idx));
        }
        Ok(())
    }

    /// A subtask is done: count it off its dependents; those with nothing left to wait for
    /// are unblocked.
    pub(crate) fn release_dependents(
        &mut self,
        seq: i64,
        idx: u32,
        now: Millis,
    ) -> Result<(), Error> {
        for d in self.release(seq, idx) {
            self.unblocked(seq, d, now)?;
        }
        Ok(())
    }

    /// Count `idx` off its dependents; the pending ones with nothing left to wait for.
    fn release(&mut self, seq: i64, idx: u32) -> Vec<u32> {
        let Some(rt) = self.tasks.get_mut(&seq) else {
            return Vec::new();
        };
        let dependents = rt.subs[idx as usize].dependents.clone();
        dependents
            .into_iter()
            .filter(|&d| {
                let s = &mut rt.subs[d as usize];
                s.waiting = s.waiting.saturating_sub(1);
                s.waiting == 0 && s.sub.state == SubtaskState::Pending
            })
            .collect()
    }

    /// `PUT /tasks/{id}/plan`: replace the plan of a task that is still `planned`.
    pub(crate) fn replace_plan(
        &mut self,
        task_id: &TaskId,
        plan: Plan,
        now: Millis,
    ) -> Result<TaskSnapshot, Error> {
        let Some(&seq) = self.task_ids.get(task_id) else {
            return Err(not_found(task_id));
        };
        let rt = &self.tasks[&seq];
        if rt.task.status != TaskStatus::Planned {
            return Err(Error::Conflict(format!(
                "task {:?} is {}; only a planned task's plan can be replaced",
                task_id.as_str(),
                rt.task.status
            )));
        }
        let mut task = rt.task.clone();
        task.context.planner = Some(PlannerRecord::Client);
        let subtasks = plan.instantiate(task_id, now);
        let count = subtasks.len();
        self.tasks.insert(seq, TaskRt::new(task, subtasks));
        self.write_plan(seq);
        self.event(Event {
            task_id: task_id.clone(),
            at: now,
            change: Change::Task {
                from: Some(TaskStatus::Planned),
                to: TaskStatus::Planned,
            },
            agent: None,
            note: Some(format!(
                "plan replaced: {count} subtask{}",
                if count == 1 { "" } else { "s" }
            )),
        });
        Ok(snapshot(&self.tasks[&seq]))
    }

    /// `pending|retry_wait|blocked → ready`, then queue it.
    pub(crate) fn make_ready(&mut self, seq: i64, idx: u32, now: Millis) -> Result<(), Error> {
        self.set_state(seq, idx, SubtaskState::Ready, None, None, now)?;
        self.enqueue_ready(seq, idx, now)
    }

    pub(crate) fn set_task_status(
        &mut self,
        seq: i64,
        to: TaskStatus,
        note: Option<String>,
        now: Millis,
    ) -> Result<(), Error> {
        let Some(rt) = self.tasks.get_mut(&seq) else {
            return Err(self.missing(format!("task #{seq}")));
        };
        let from = match rt.task.set_status(to, now) {
            Ok(from) => from,
            Err(e) => {
                let context = format!("task {}", rt.task.task_id);
                return Err(self.bug(context, e));
            }
        };
        let rt = &self.tasks[&seq];
        let event = Event {
            task_id: rt.task.task_id.clone(),
            at: now,
            change: Change::Task {
                from: Some(from),
                to,
            },
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
                "task {:?} is already {status}",
                task_id.as_str()
            )));
        }
        self.close_open_subtasks(seq, "task cancelled", now)?;
        self.close_escalations(seq, "task cancelled", now);
        self.set_task_status(seq, TaskStatus::Cancelled, None, now)?;
        self.aggregate(seq);
        Ok(TaskStatus::Cancelled)
    }

    /// Cancel every subtask that is not terminal, revoking live assignments.
    pub(crate) fn close_open_subtasks(
        &mut self,
        seq: i64,
        why: &str,
        now: Millis,
    ) -> Result<(), Error> {
        let open: Vec<u32> = self.tasks[&seq]
            .subs
            .iter()
            .filter(|s| !s.sub.state.is_terminal())
            .map(|s| s.sub.index)
            .collect();
        for idx in open {
            self.revoke_current(seq, idx, baton_core::AssignmentState::Cancelled, now)?;
            let note = Some(why.to_owned());
            self.set_state(seq, idx, SubtaskState::Cancelled, None, note, now)?;
        }
        Ok(())
    }

    /// Called whenever a subtask reaches a terminal state: finish the task when none is open.
    pub(crate) fn after_terminal_subtask(&mut self, seq: i64, now: Millis) -> Result<(), Error> {
        let rt = &self.tasks[&seq];
        if rt.open > 0 || rt.task.status.is_terminal() {
            return Ok(());
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
        self.set_task_status(seq, to, None, now)?;
        self.aggregate(seq);
        Ok(())
    }

    /// Fail a task because one of its subtasks failed for good.
    pub(crate) fn fail_task(&mut self, seq: i64, why: String, now: Millis) -> Result<(), Error> {
        if self.tasks[&seq].task.status.is_terminal() {
            return Ok(());
        }
        self.close_open_subtasks(seq, "task failed", now)?;
        self.close_escalations(seq, "task failed", now);
        self.set_task_status(seq, TaskStatus::Failed, Some(why), now)?;
        self.aggregate(seq);
        Ok(())
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
        "task {:?} already exists with a different body",
        task_id.as_str()
    ))
}

fn not_found(task_id: &TaskId) -> Error {
    Error::NotFound(format!("task {:?} not found", task_id.as_str()))
}
