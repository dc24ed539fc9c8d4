//! Results of attempts: progress, completion, failure, lost leases and timeouts, and the
//! retries they lead to. Fencing lives here: only the subtask's current active assignment
//! may change it; anything else gets 409 and changes nothing.

use baton_core::{
    AgentId, AssignmentId, AssignmentKind, AssignmentState, Change, EscalationKind, Millis, Phase,
    SubtaskState, Usage,
};
use rand::Rng;
use serde_json::{json, Value};

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
    /// A phase report. Like a result, it is answered from the store when the assignment's
    /// task has left memory, so the same call gets the same status either way.
    pub(crate) fn progress(
        &mut self,
        id: AssignmentId,
        token_hash: &str,
        phase: Phase,
        message: Option<String>,
        reply: Reply<AssignmentInfo>,
        now: Millis,
    ) {
        let renew = Renew::Only(std::slice::from_ref(&id));
        let result = self
            .touch(None, token_hash, renew, now)
            .and_then(|(agent_id, _)| {
                if !self.assignments.contains_key(&id) {
                    return Ok(Err(self.answer_from_store(id.clone(), agent_id, None)));
                }
                self.record_phase(&id, &agent_id, phase, message, now)
                    .map(Ok)
            });
        match result {
            Ok(Ok(info)) => self.reply(reply, Ok(info)),
            Ok(Err(lookup)) => {
                tokio::spawn(async move {
                    let _ = reply.send(lookup.await);
                });
            }
            Err(e) => self.reply(reply, Err(e)),
        }
    }

    fn record_phase(
        &mut self,
        id: &AssignmentId,
        agent_id: &AgentId,
        phase: Phase,
        message: Option<String>,
        now: Millis,
    ) -> Result<AssignmentInfo, Error> {
        let (seq, idx) = self.owned_active(id, agent_id)?;
        self.mark_running(seq, idx, agent_id, now)?;
        let Some(asg) = self.assignments.get_mut(id) else {
            return Err(self.missing(format!("assignment {id}")));
        };
        if asg.phase != Some(phase) {
            let from = asg.phase.replace(phase);
            let event = baton_core::Event {
                task_id: asg.a.task_id.clone(),
                at: now,
                change: Change::Phase {
                    subtask_id: asg.a.subtask_id.clone(),
                    from,
                    to: phase,
                },
                agent: Some(agent_id.clone()),
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
            return Settled::Stored(self.answer_from_store(id, agent_id.clone(), Some(result)));
        };
        if &asg.a.agent_id != agent_id {
            let author = self
                .sub(asg.seq, asg.idx)
                .and_then(|s| s.sub.assigned_agent.as_ref());
            if asg.a.kind == AssignmentKind::Verification && author == Some(agent_id) {
                return Settled::Now(Err(self.refuse_self_attestation(&id, agent_id, now)));
            }
            return Settled::Now(Err(not_yours(&id)));
        }
        let (seq, idx) = (asg.seq, asg.idx);
        match result {
            AttemptResult::Outputs(outputs, _) if asg.a.state == AssignmentState::Completed => {
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
            AttemptResult::Outputs(outputs, usage) => {
                Settled::Now(self.accept_completion(&id, agent_id, seq, idx, outputs, usage, now))
            }
            AttemptResult::Failure { error, retryable } => {
                Settled::Now(self.owned_active(&id, agent_id).and_then(|(seq, idx)| {
                    self.mark_running(seq, idx, agent_id, now)?;
                    self.lose(&id, Loss::Failed { error, retryable }, now)?;
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
        // A single result call counts as a heartbeat of the agent: its acknowledged leases
        // are renewed (see `touch`).
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

    #[allow(clippy::too_many_arguments)] // one result, taken apart by `settle`
    fn accept_completion(
        &mut self,
        id: &AssignmentId,
        agent_id: &AgentId,
        seq: i64,
        idx: u32,
        outputs: Value,
        usage: Option<Usage>,
        now: Millis,
    ) -> Result<AssignmentInfo, Error> {
        self.owned_active(id, agent_id)?;
        if self.assignments.get(id).map(|a| a.a.kind) == Some(AssignmentKind::Verification) {
            let started = self.assignments.get(id).map_or(now, |a| a.a.created_at);
            let info = self.verdict(id, agent_id, seq, idx, outputs, now)?;
            self.record_outcome(id, agent_id, true, started, now);
            return Ok(info);
        }
        self.mark_running(seq, idx, agent_id, now)?;
        let attempt = self.assignments.get(id).map_or(0, |a| a.a.attempt);
        let verified = self.verifier_capability(seq, idx).is_some();
        if let Some(s) = self.sub_mut(seq, idx) {
            s.sub.outputs = Some(outputs);
            s.sub.error = None;
            s.current = None;
            // A completed attempt is evidence only when a verdict may still reject it (the
            // common case, a plain completion, costs no log entry).
            if verified {
                s.gov_mut().log.push(json!({
                    "attempt": attempt, "agent": agent_id, "outcome": "completed", "at": now,
                }));
            }
        }
        let started = self.finish_assignment(id, AssignmentState::Completed, now)?;
        self.record_outcome(id, agent_id, true, started, now);
        let agent = Some(agent_id.clone());
        if verified {
            // Checked by another agent before anything depends on it.
            self.set_state(seq, idx, SubtaskState::Verifying, agent, None, now)?;
            self.enqueue_verification(seq, idx, now)?;
        } else {
            self.set_state(seq, idx, SubtaskState::Completed, agent, None, now)?;
            self.release_dependents(seq, idx, now)?;
            self.after_terminal_subtask(seq, now)?;
        }
        self.add_usage(seq, idx, usage, now)?;
        Ok(self.assignment_info(id))
    }

    /// The lease timer fired: expire the attempt unless it was renewed since.
    pub(crate) fn check_lease(&mut self, id: &AssignmentId, now: Millis) -> Result<(), Error> {
        let Some(asg) = self.assignments.get(id) else {
            return Ok(());
        };
        if asg.a.state != AssignmentState::Active {
            return Ok(());
        }
        if asg.a.lease_expires_at > now {
            let at = asg.a.lease_expires_at;
            self.timers.at(at, Timer::Lease(id.clone()));
            return Ok(());
        }
        self.lose(id, Loss::LeaseExpired, now)
    }

    pub(crate) fn check_timeout(&mut self, id: &AssignmentId, now: Millis) -> Result<(), Error> {
        let Some(asg) = self.assignments.get(id) else {
            return Ok(());
        };
        if asg.a.state != AssignmentState::Active || asg.timeout_at > now {
            return Ok(());
        }
        let secs = (asg.timeout_at - asg.a.created_at).max(0) as u64 / 1000;
        self.lose(id, Loss::TimedOut(secs), now)
    }

    pub(crate) fn retry_due(&mut self, seq: i64, idx: u32, now: Millis) -> Result<(), Error> {
        if self
            .sub(seq, idx)
            .is_some_and(|s| s.sub.state == SubtaskState::RetryWait)
        {
            self.make_ready(seq, idx, now)?;
        }
        Ok(())
    }

    /// End an active attempt without a result; retry the subtask or fail it (and its task).
    fn lose(&mut self, id: &AssignmentId, loss: Loss, now: Millis) -> Result<(), Error> {
        let Some(asg) = self.assignments.get(id) else {
            return Err(self.missing(format!("assignment {id}")));
        };
        let (seq, idx, agent_id, attempt) =
            (asg.seq, asg.idx, asg.a.agent_id.clone(), asg.a.attempt);
        if asg.a.kind == AssignmentKind::Verification {
            // The verifier failed or vanished: the verification goes to another one; the
            // work's attempts are not touched.
            let state = match loss {
                Loss::Failed { .. } => AssignmentState::Failed,
                _ => AssignmentState::Lost,
            };
            let started = asg.a.created_at;
            self.finish_verification(id, state, now)?;
            self.record_outcome(id, &agent_id, false, started, now);
            if state == AssignmentState::Lost {
                if let Some(rt) = self.agents.get_mut(&agent_id) {
                    rt.revoked.push(id.clone());
                }
            }
            return self.enqueue_verification(seq, idx, now);
        }
        let (state, retryable, note) = match loss {
            Loss::Failed { error, retryable } => (AssignmentState::Failed, retryable, error),
            Loss::LeaseExpired => {
                let acknowledged = self
                    .sub(seq, idx)
                    .is_some_and(|s| s.sub.state != SubtaskState::Assigned);
                let why = if acknowledged {
                    "lease expired: no heartbeat from the agent"
                } else {
                    "lease expired: the agent never acknowledged the assignment \
                     (no progress, result or held naming it)"
                };
                (AssignmentState::Lost, true, why.to_owned())
            }
            Loss::TimedOut(secs) => (
                AssignmentState::Lost,
                true,
                format!("timed out after {secs} s"),
            ),
        };
        let started = self.finish_assignment(id, state, now)?;
        self.record_outcome(id, &agent_id, false, started, now);
        if state == AssignmentState::Lost {
            if let Some(rt) = self.agents.get_mut(&agent_id) {
                rt.revoked.push(id.clone());
            }
        }
        tracing::warn!(assignment_id = %id, agent_id = %agent_id, attempt, reason = %note, "attempt ended without a result");
        let outcome = match state {
            AssignmentState::Failed => "failed",
            _ => "lost",
        };
        let mut base = 0;
        if let Some(s) = self.sub_mut(seq, idx) {
            s.current = None;
            s.sub.error = Some(note.clone());
            let g = s.gov_mut();
            g.log.push(json!({
                "attempt": attempt, "agent": agent_id, "outcome": outcome, "error": note, "at": now,
            }));
            base = g.attempt_base;
        }
        let max_attempts = self.tasks.get(&seq).map_or(1, |rt| {
            rt.subs[idx as usize].sub.max_attempts(rt.task.max_attempts)
        });
        let retry = baton_core::retry::RetryPolicy {
            max_attempts,
            ..self.config.retry
        };
        let agent = Some(agent_id);
        if retry.may_retry(attempt.saturating_sub(base), retryable) {
            let jitter = self.rng.gen::<f64>();
            let wait = retry.backoff_ms(attempt, jitter) as i64;
            let note = Some(format!("{note}; retry in {wait} ms"));
            self.set_state(seq, idx, SubtaskState::RetryWait, agent, note, now)?;
            self.timers.at(now + wait, Timer::Retry(seq, idx));
        } else {
            let why = if retryable {
                format!("attempt {attempt} failed: {note}; no attempts left")
            } else {
                format!("attempt {attempt} failed: {note}; not retryable")
            };
            self.exhausted(seq, idx, EscalationKind::Attempts, why, agent, now)?;
        }
        Ok(())
    }

    /// Take the live assignment of a subtask away (task cancelled or failed).
    pub(crate) fn revoke_current(
        &mut self,
        seq: i64,
        idx: u32,
        state: AssignmentState,
        now: Millis,
    ) -> Result<(), Error> {
        let Some(id) = self.sub_mut(seq, idx).and_then(|s| s.current.take()) else {
            return Ok(());
        };
        let agent = self.assignments.get(&id).map(|a| a.a.agent_id.clone());
        self.finish_assignment(&id, state, now)?;
        if let Some(agent) = agent {
            if let Some(rt) = self.agents.get_mut(&agent) {
                rt.revoked.push(id);
            }
        }
        Ok(())
    }

    /// Close an assignment (through the assignment machine) and free the agent's slot.
    /// Returns when it started.
    fn finish_assignment(
        &mut self,
        id: &AssignmentId,
        state: AssignmentState,
        now: Millis,
    ) -> Result<Millis, Error> {
        let Some(asg) = self.assignments.get_mut(id) else {
            return Err(self.missing(format!("assignment {id}")));
        };
        if let Err(e) = asg.a.set_state(state, now) {
            return Err(self.bug(format!("assignment {id}"), e));
        }
        let started = asg.a.created_at;
        let agent_id = asg.a.agent_id.clone();
        self.write_assignment(id);
        if let Some(rt) = self.agents.get_mut(&agent_id) {
            rt.in_flight.remove(id);
        }
        self.slot_freed(&agent_id)?;
        Ok(started)
    }

    /// `assigned → running` on the first sign of life from the agent.
    pub(crate) fn mark_running(
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
    /// `result` is `None` for a progress report.
    fn answer_from_store(
        &self,
        id: AssignmentId,
        agent_id: AgentId,
        result: Option<AttemptResult>,
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
                (AssignmentState::Completed, Some(AttemptResult::Outputs(outputs, _))) => {
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
    Outputs(Value, Option<Usage>),
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
