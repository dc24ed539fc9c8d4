//! Results of attempts: progress, completion, failure, lost leases and timeouts, and the
//! retries they lead to. Fencing lives here: only the subtask's current active assignment
//! may change it; anything else gets 409 and changes nothing.

use baton_core::{AgentId, AssignmentId, AssignmentState, Millis, SubtaskState};
use serde_json::Value;

use super::agents::Renew;
use super::Engine;
use crate::handle::{AssignmentInfo, Reply};
use crate::timers::Timer;
use crate::Error;

/// How an attempt ended without a result.
enum Loss {
    Failed { error: String, retryable: bool },
    LeaseExpired,
    TimedOut(u64),
}

impl Engine {
    pub(crate) fn progress(
        &mut self,
        id: &AssignmentId,
        token_hash: &str,
        phase: String,
        message: Option<String>,
        now: Millis,
    ) -> Result<AssignmentInfo, Error> {
        let renew = Renew::Only(std::slice::from_ref(id));
        let (agent_id, _) = self.touch(None, token_hash, renew, now)?;
        let (seq, idx) = self.owned_active(id, &agent_id)?;
        self.mark_running(seq, idx, &agent_id, now)?;
        let asg = self
            .assignments
            .get_mut(id)
            .expect("owned assignment exists");
        if asg.phase.as_deref() != Some(phase.as_str()) {
            let from = asg.phase.replace(phase.clone());
            let event = baton_core::Event {
                task_id: asg.a.task_id.clone(),
                at: now,
                subtask_id: Some(asg.a.subtask_id.clone()),
                from,
                to: phase,
                agent: Some(agent_id),
                note: message,
            };
            self.event(event);
        }
        Ok(self.assignment_info(id))
    }

    /// Settle one attempt with a result: outputs (`Ok`) or a failure.
    fn settle(
        &mut self,
        agent_id: &AgentId,
        id: AssignmentId,
        result: AttemptResult,
        now: Millis,
    ) -> Settled {
        let Some(asg) = self.assignments.get(&id) else {
            return Settled::Stored(self.answer_from_store(id, agent_id.clone(), result));
        };
        if &asg.a.agent_id != agent_id {
            return Settled::Now(Err(not_yours(&id)));
        }
        let (seq, idx) = (asg.seq, asg.idx);
        match result {
            AttemptResult::Outputs(outputs) if asg.a.state == AssignmentState::Completed => {
                // The same result again is acknowledged again; a different one is a conflict.
                let same = self
                    .sub(seq, idx)
                    .is_some_and(|s| s.sub.outputs.as_ref() == Some(&outputs));
                Settled::Now(if same {
                    Ok(self.assignment_info(&id))
                } else {
                    Err(Error::Conflict(format!(
                        "assignment {id} was already completed with different outputs"
                    )))
                })
            }
            AttemptResult::Outputs(outputs) => {
                Settled::Now(self.accept_completion(&id, agent_id, seq, idx, outputs, now))
            }
            AttemptResult::Failure { error, retryable } => {
                Settled::Now(self.owned_active(&id, agent_id).and_then(|(seq, idx)| {
                    self.mark_running(seq, idx, agent_id, now)?;
                    self.lose(&id, Loss::Failed { error, retryable }, now);
                    Ok(self.assignment_info(&id))
                }))
            }
        }
    }

    /// One result, answered after its changes are durable.
    pub(crate) fn report(
        &mut self,
        id: AssignmentId,
        token_hash: &str,
        result: AttemptResult,
        reply: Reply<AssignmentInfo>,
        now: Millis,
    ) {
        // A single result call counts as a heartbeat of the agent: every lease is renewed.
        let agent_id = match self.touch(None, token_hash, Renew::All, now) {
            Ok((agent_id, _)) => agent_id,
            Err(e) => return self.reply(reply, Err(e)),
        };
        match self.settle(&agent_id, id, result, now) {
            Settled::Now(result) => self.reply(reply, result),
            Settled::Stored(lookup) => {
                tokio::spawn(async move {
                    let _ = reply.send(lookup.await);
                });
            }
        }
    }

    /// Many results of one agent in one call; each is settled on its own, and the answers
    /// (in order) go out once every change is durable.
    pub(crate) fn report_many(
        &mut self,
        agent_id: &AgentId,
        token_hash: &str,
        held: Option<Vec<AssignmentId>>,
        items: Vec<(AssignmentId, AttemptResult)>,
        reply: Reply<Vec<Result<AssignmentInfo, Error>>>,
        now: Millis,
    ) {
        let renew = held.as_deref().map_or(Renew::All, Renew::Only);
        let agent_id = match self.touch(Some(agent_id), token_hash, renew, now) {
            Ok((agent_id, _)) => agent_id,
            Err(e) => return self.reply(reply, Err(e)),
        };
        let mut settled_now = Vec::with_capacity(items.len());
        let mut lookups = Vec::new();
        for (i, (id, result)) in items.into_iter().enumerate() {
            match self.settle(&agent_id, id, result, now) {
                Settled::Now(r) => settled_now.push((i, r)),
                Settled::Stored(lookup) => lookups.push((i, lookup)),
            }
        }
        if lookups.is_empty() {
            let answers = settled_now.into_iter().map(|(_, r)| r).collect();
            return self.reply(reply, Ok(answers));
        }
        let (durable_tx, durable_rx) = tokio::sync::oneshot::channel();
        self.reply(durable_tx, Ok(settled_now));
        tokio::spawn(async move {
            let mut all = match durable_rx.await {
                Ok(Ok(now)) => now,
                Ok(Err(e)) => return drop(reply.send(Err(e))),
                Err(_) => return drop(reply.send(Err(Error::Stopped))),
            };
            for (i, lookup) in lookups {
                all.push((i, lookup.await));
            }
            all.sort_by_key(|(i, _)| *i);
            let _ = reply.send(Ok(all.into_iter().map(|(_, r)| r).collect()));
        });
    }

    fn accept_completion(
        &mut self,
        id: &AssignmentId,
        agent_id: &AgentId,
        seq: i64,
        idx: u32,
        outputs: Value,
        now: Millis,
    ) -> Result<AssignmentInfo, Error> {
        self.owned_active(id, agent_id)?;
        self.mark_running(seq, idx, agent_id, now)?;
        if let Some(s) = self.sub_mut(seq, idx) {
            s.sub.outputs = Some(outputs);
            s.sub.error = None;
            s.current = None;
        }
        self.set_state(
            seq,
            idx,
            SubtaskState::Completed,
            Some(agent_id.clone()),
            None,
            now,
        )?;
        let started = self.finish_assignment(id, AssignmentState::Completed, now);
        self.record_outcome(agent_id, true, now - started);
        let dependents = self
            .sub(seq, idx)
            .map(|s| s.dependents.clone())
            .unwrap_or_default();
        for d in dependents {
            let ready = match self.sub_mut(seq, d) {
                Some(s) => {
                    s.waiting = s.waiting.saturating_sub(1);
                    s.waiting == 0 && s.sub.state == SubtaskState::Pending
                }
                None => false,
            };
            if ready {
                self.make_ready(seq, d, now);
            }
        }
        self.after_terminal_subtask(seq, now);
        Ok(self.assignment_info(id))
    }

    /// The lease timer fired: expire the attempt unless it was renewed since.
    pub(crate) fn check_lease(&mut self, id: &AssignmentId, now: Millis) {
        let Some(asg) = self.assignments.get(id) else {
            return;
        };
        if asg.a.state != AssignmentState::Active {
            return;
        }
        if asg.a.lease_expires_at > now {
            let at = asg.a.lease_expires_at;
            self.timers.at(at, Timer::Lease(id.clone()));
            return;
        }
        self.lose(id, Loss::LeaseExpired, now);
    }

    pub(crate) fn check_timeout(&mut self, id: &AssignmentId, now: Millis) {
        let Some(asg) = self.assignments.get(id) else {
            return;
        };
        if asg.a.state != AssignmentState::Active || asg.timeout_at > now {
            return;
        }
        let secs = (asg.timeout_at - asg.a.created_at).max(0) as u64 / 1000;
        self.lose(id, Loss::TimedOut(secs), now);
    }

    pub(crate) fn retry_due(&mut self, seq: i64, idx: u32, now: Millis) {
        if self
            .sub(seq, idx)
            .is_some_and(|s| s.sub.state == SubtaskState::RetryWait)
        {
            self.make_ready(seq, idx, now);
        }
    }

    /// End an active attempt without a result; retry the subtask or fail it (and its task).
    fn lose(&mut self, id: &AssignmentId, loss: Loss, now: Millis) {
        let Some(asg) = self.assignments.get(id) else {
            return;
        };
        let (seq, idx, agent_id, attempt) =
            (asg.seq, asg.idx, asg.a.agent_id.clone(), asg.a.attempt);
        let (state, retryable, note) = match loss {
            Loss::Failed { error, retryable } => (AssignmentState::Failed, retryable, error),
            Loss::LeaseExpired => (
                AssignmentState::Lost,
                true,
                "lease expired: no heartbeat from the agent".to_owned(),
            ),
            Loss::TimedOut(secs) => (
                AssignmentState::Lost,
                true,
                format!("timed out after {secs} s"),
            ),
        };
        let started = self.finish_assignment(id, state, now);
        self.record_outcome(&agent_id, false, now - started);
        if state == AssignmentState::Lost {
            if let Some(rt) = self.agents.get_mut(&agent_id) {
                rt.revoked.push(id.clone());
            }
        }
        tracing::warn!(assignment_id = %id, agent_id = %agent_id, attempt, reason = %note, "attempt ended without a result");
        if let Some(s) = self.sub_mut(seq, idx) {
            s.current = None;
            s.sub.error = Some(note.clone());
        }
        let retry = baton_core::retry::RetryPolicy {
            max_attempts: self.tasks.get(&seq).map_or(1, |t| t.task.max_attempts),
            ..self.config.retry
        };
        if retry.may_retry(attempt, retryable) {
            let wait = retry.backoff_ms(attempt, rand::random::<f64>()) as i64;
            let note = Some(format!("{note}; retry in {wait} ms"));
            if self
                .set_state(seq, idx, SubtaskState::RetryWait, Some(agent_id), note, now)
                .is_ok()
            {
                self.timers.at(now + wait, Timer::Retry(seq, idx));
            }
        } else {
            let why = format!("attempt {attempt} failed: {note}");
            if self
                .set_state(
                    seq,
                    idx,
                    SubtaskState::Failed,
                    Some(agent_id),
                    Some(why.clone()),
                    now,
                )
                .is_ok()
            {
                let subtask_id = self
                    .sub(seq, idx)
                    .map(|s| s.sub.subtask_id.to_string())
                    .unwrap_or_default();
                self.fail_task(seq, format!("subtask {subtask_id} failed: {why}"), now);
            }
        }
    }

    /// Take the live assignment of a subtask away (task cancelled or failed).
    pub(crate) fn revoke_current(
        &mut self,
        seq: i64,
        idx: u32,
        state: AssignmentState,
        now: Millis,
    ) {
        let Some(id) = self.sub_mut(seq, idx).and_then(|s| s.current.take()) else {
            return;
        };
        let agent = self.assignments.get(&id).map(|a| a.a.agent_id.clone());
        self.finish_assignment(&id, state, now);
        if let Some(agent) = agent {
            if let Some(rt) = self.agents.get_mut(&agent) {
                rt.revoked.push(id);
            }
        }
    }

    /// Close an assignment and free the agent's slot. Returns when it started.
    fn finish_assignment(
        &mut self,
        id: &AssignmentId,
        state: AssignmentState,
        now: Millis,
    ) -> Millis {
        let Some(asg) = self.assignments.get_mut(id) else {
            return now;
        };
        asg.a.state = state;
        asg.a.finished_at = Some(now);
        let started = asg.a.created_at;
        let agent_id = asg.a.agent_id.clone();
        self.write_assignment(id);
        if let Some(rt) = self.agents.get_mut(&agent_id) {
            rt.in_flight.remove(id);
        }
        self.slot_freed(&agent_id);
        started
    }

    fn record_outcome(&mut self, agent_id: &AgentId, success: bool, elapsed_ms: Millis) {
        if let Some(rt) = self.agents.get_mut(agent_id) {
            use baton_core::routing::ewma;
            rt.success_rate = ewma(rt.success_rate, if success { 1.0 } else { 0.0 });
            rt.latency_ms = ewma(rt.latency_ms, elapsed_ms as f64);
        }
    }

    /// `assigned → running` on the first sign of life from the agent.
    fn mark_running(
        &mut self,
        seq: i64,
        idx: u32,
        agent_id: &AgentId,
        now: Millis,
    ) -> Result<(), Error> {
        if self
            .sub(seq, idx)
            .is_some_and(|s| s.sub.state == SubtaskState::Assigned)
        {
            self.set_state(
                seq,
                idx,
                SubtaskState::Running,
                Some(agent_id.clone()),
                None,
                now,
            )?;
        }
        Ok(())
    }

    /// The (task seq, subtask index) of an assignment that belongs to `agent_id` and is the
    /// subtask's current active attempt; 404/403/409 otherwise.
    fn owned_active(&self, id: &AssignmentId, agent_id: &AgentId) -> Result<(i64, u32), Error> {
        let asg = self
            .assignments
            .get(id)
            .ok_or_else(|| Error::NotFound(format!("assignment {id} not found")))?;
        if &asg.a.agent_id != agent_id {
            return Err(not_yours(id));
        }
        if asg.a.state != AssignmentState::Active {
            return Err(superseded(id, asg.a.state));
        }
        Ok((asg.seq, asg.idx))
    }

    fn assignment_info(&self, id: &AssignmentId) -> AssignmentInfo {
        let asg = self.assignments.get(id);
        AssignmentInfo {
            assignment_id: id.clone(),
            state: asg.map(|a| a.a.state).unwrap_or(AssignmentState::Completed),
            lease_expires_at: asg
                .filter(|a| a.a.state == AssignmentState::Active)
                .map(|a| a.a.lease_expires_at),
        }
    }

    /// A result for an assignment no longer in memory (its task finished and was evicted):
    /// answered from the store. Nothing can change any more, so no state is touched.
    fn answer_from_store(
        &self,
        id: AssignmentId,
        agent_id: AgentId,
        result: AttemptResult,
    ) -> StoreLookup {
        let store = self.store.clone();
        Box::pin(async move {
            let asg = store
                .assignment(&id)
                .await
                .map_err(|e| Error::Unavailable(e.to_string()))?
                .ok_or_else(|| Error::NotFound(format!("assignment {id} not found")))?;
            if asg.agent_id != agent_id {
                return Err(not_yours(&id));
            }
            let info = AssignmentInfo {
                assignment_id: id.clone(),
                state: asg.state,
                lease_expires_at: None,
            };
            match (asg.state, result) {
                (AssignmentState::Completed, AttemptResult::Outputs(outputs)) => {
                    let accepted = store
                        .task(&asg.task_id)
                        .await
                        .map_err(|e| Error::Unavailable(e.to_string()))?
                        .and_then(|(_, subs)| {
                            subs.into_iter().find(|s| s.subtask_id == asg.subtask_id)
                        })
                        .and_then(|s| s.outputs);
                    if accepted.as_ref() == Some(&outputs) {
                        Ok(info)
                    } else {
                        Err(Error::Conflict(format!(
                            "assignment {id} was already completed with different outputs"
                        )))
                    }
                }
                (state, _) => Err(superseded(&id, state)),
            }
        })
    }
}

/// What an agent reports for one attempt.
pub(crate) enum AttemptResult {
    Outputs(Value),
    Failure { error: String, retryable: bool },
}

type StoreLookup = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<AssignmentInfo, Error>> + Send + 'static>,
>;

/// How a result was settled: now (answered after the turn's commit), or by a store lookup.
enum Settled {
    Now(Result<AssignmentInfo, Error>),
    Stored(StoreLookup),
}

fn not_yours(id: &AssignmentId) -> Error {
    Error::Forbidden(format!("assignment {id} belongs to another agent"))
}

fn superseded(id: &AssignmentId, state: AssignmentState) -> Error {
    Error::Conflict(format!(
        "assignment {id} is {}; its result is not accepted",
        state.as_str()
    ))
}
