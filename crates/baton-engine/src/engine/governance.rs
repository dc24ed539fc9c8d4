//! Governance: escalation to a human when a subtask's attempts, timeouts or verifications are
//! used up (or a gate is rejected, or a budget crossed) and its resolution; independent
//! verification; approval gates; manual routing; usage and budgets.
//!
//! Invariants:
//! - A verification is never routed to the agent whose output it checks, and a verdict from
//!   that agent is refused (409, with a timeline event).
//! - A subtask's dependents start only after it is `completed`: after a positive verdict when
//!   it is verified, after an approval when it is gated.
//! - Nothing is failed silently: under the default policy (`escalate`) exhausted work waits in
//!   `escalated` with its evidence until a human resolves it; independent branches go on.
//! - The task's side status follows its subtasks: `escalated` while any subtask is escalated or
//!   the task is over its budget, `awaiting_approval` while only gated work is left.

use baton_core::{
    AgentId, AssignmentId, AssignmentKind, AssignmentState, Budget, Change, Escalation,
    EscalationKind, EscalationStatus, Event, ExhaustedPolicy, Millis, Resolution, ResolveAction,
    SubtaskId, SubtaskState, TaskId, TaskStatus, Usage, Verification,
};
use rand::Rng;
use serde_json::{json, Value};

use super::agents::Grant;
use super::{Engine, ReadyKey};
use crate::handle::AssignmentInfo;
use crate::Error;

/// Negative verdicts that escalate a subtask.
pub const MAX_NEGATIVE_VERDICTS: usize = 3;
/// The verifier capability when a step's `verify` names none.
pub const DEFAULT_VERIFIER: &str = "verify";

/// A human's decision on an escalation.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolve {
    pub action: ResolveAction,
    pub outputs: Option<Value>,
    pub note: Option<String>,
    pub budget: Option<Budget>,
}

impl Engine {
    // ---- escalations ----

    /// A subtask's attempts (or verifications) are used up: escalate it, or fail it when its
    /// policy says so.
    pub(crate) fn exhausted(
        &mut self,
        seq: i64,
        idx: u32,
        kind: EscalationKind,
        reason: String,
        agent: Option<AgentId>,
        now: Millis,
    ) -> Result<(), Error> {
        let Some(rt) = self.tasks.get(&seq) else {
            return Err(self.missing(format!("task #{seq}")));
        };
        let s = &rt.subs[idx as usize].sub;
        let policy = s
            .rules
            .as_ref()
            .and_then(|r| r.on_exhausted)
            .or(rt.task.context.on_exhausted)
            .unwrap_or(ExhaustedPolicy::Escalate);
        let subtask_id = s.subtask_id.clone();
        match policy {
            ExhaustedPolicy::Fail => {
                let note = Some(reason.clone());
                self.set_state(seq, idx, SubtaskState::Failed, agent, note, now)?;
                self.fail_task(seq, format!("subtask {subtask_id} failed: {reason}"), now)
            }
            ExhaustedPolicy::Escalate => {
                self.escalate(seq, Some(idx), kind, reason, agent, now)?;
                Ok(())
            }
        }
    }

    /// Hand a subtask (or, with `idx: None`, the task) to a human: the record with its
    /// evidence, the subtask `escalated`, the task `escalated`.
    pub(crate) fn escalate(
        &mut self,
        seq: i64,
        idx: Option<u32>,
        kind: EscalationKind,
        reason: String,
        agent: Option<AgentId>,
        now: Millis,
    ) -> Result<String, Error> {
        let Some(rt) = self.tasks.get_mut(&seq) else {
            return Err(self.missing(format!("task #{seq}")));
        };
        rt.escalations += 1;
        let escalation_id = format!("esc-{seq}-{}", rt.escalations);
        let (subtask_id, evidence) = match idx {
            Some(i) => {
                let s = &rt.subs[i as usize];
                let (verdicts, attempts): (Vec<Value>, &[Value]) = match s.gov() {
                    Some(g) => (
                        g.verdicts[g.verdict_base..]
                            .iter()
                            .map(verdict_json)
                            .collect(),
                        &g.log[log_start(&g.log, g.attempt_base)..],
                    ),
                    None => (Vec::new(), &[]),
                };
                (
                    Some(s.sub.subtask_id.clone()),
                    json!({
                        "capability": s.sub.capability,
                        "attempts": attempts,
                        "verdicts": verdicts,
                        "last_error": s.sub.error,
                    }),
                )
            }
            None => (
                None,
                json!({
                    "usage": usage_of(rt),
                    "budget": rt.task.context.budget,
                }),
            ),
        };
        let task_id = rt.task.task_id.clone();
        let record = Escalation {
            escalation_id: escalation_id.clone(),
            task_id,
            subtask_id,
            kind,
            status: EscalationStatus::Open,
            reason: reason.clone(),
            evidence,
            suggestions: suggestions(kind),
            created_at: now,
            resolved_at: None,
            resolution: None,
        };
        tracing::warn!(task_seq = seq, escalation_id = %escalation_id, reason = %reason, "escalated to a human");
        self.outbox.escalations.push(record.clone());
        self.escalations.insert(escalation_id.clone(), record);
        match idx {
            Some(i) => {
                let note = Some(format!("escalated ({escalation_id}): {reason}"));
                self.set_state(seq, i, SubtaskState::Escalated, agent, note, now)?;
                if let Some(s) = self.sub_mut(seq, i) {
                    s.gov_mut().escalation = Some(escalation_id.clone());
                }
            }
            None => {
                if let Some(rt) = self.tasks.get_mut(&seq) {
                    rt.paused = Some(escalation_id.clone());
                }
            }
        }
        self.refresh_side_status(seq, now)?;
        Ok(escalation_id)
    }

    /// A human's decision: the task continues accordingly.
    pub(crate) fn resolve(
        &mut self,
        escalation_id: &str,
        decision: Resolve,
        now: Millis,
    ) -> Result<Escalation, Error> {
        let Some(open) = self.escalations.get(escalation_id).cloned() else {
            return Err(Error::NotFound(format!(
                "no open escalation {escalation_id:?} (unknown, or already resolved)"
            )));
        };
        let Some(&seq) = self.task_ids.get(&open.task_id) else {
            return Err(self.missing(format!("the task of escalation {escalation_id}")));
        };
        let idx = match &open.subtask_id {
            Some(id) => self.tasks[&seq]
                .subs
                .iter()
                .position(|s| &s.sub.subtask_id == id)
                .map(|i| i as u32),
            None => None,
        };
        use ResolveAction as A;
        let allowed: &[ResolveAction] = match open.kind {
            EscalationKind::Budget => &[A::RaiseBudget, A::Cancel],
            _ => &[A::Retry, A::Skip, A::Fail, A::ProvideOutput, A::Cancel],
        };
        if !allowed.contains(&decision.action) {
            let names: Vec<&str> = allowed.iter().map(|a| a.as_str()).collect();
            return Err(Error::Conflict(format!(
                "a {} escalation is resolved with {}, not {}",
                open.kind,
                names.join(", "),
                decision.action
            )));
        }
        if decision.action == A::ProvideOutput && decision.outputs.is_none() {
            return Err(Error::Conflict(
                "provide_output needs the outputs".to_owned(),
            ));
        }
        if decision.action == A::RaiseBudget && decision.budget.is_none() {
            return Err(Error::Conflict(
                "raise_budget needs the new budget".to_owned(),
            ));
        }
        let attempts = idx
            .and_then(|i| self.sub(seq, i))
            .map_or(0, |s| s.sub.attempts);
        let mut record = open;
        let resolution = Resolution {
            action: decision.action,
            note: decision.note.clone(),
            outputs: decision.outputs.clone(),
            budget: decision.budget.clone(),
            attempts,
        };
        if let Err(e) = record.resolve(resolution, now) {
            return Err(self.bug(format!("escalation {escalation_id}"), e));
        }
        self.escalations.remove(escalation_id);
        self.outbox.escalations.push(record.clone());
        let why = |what: &str| {
            let note = decision
                .note
                .as_deref()
                .map(|n| format!(": {n}"))
                .unwrap_or_default();
            Some(format!("{what} by a human ({escalation_id}){note}"))
        };
        if let Some(i) = idx {
            if let Some(s) = self.sub_mut(seq, i) {
                if let Some(g) = s.gov.as_mut() {
                    g.escalation = None;
                }
            }
        }
        match (decision.action, idx) {
            (A::Cancel, _) => {
                let task_id = self.tasks[&seq].task.task_id.clone();
                self.cancel(&task_id, now)?;
            }
            (A::RaiseBudget, _) => {
                if let Some(rt) = self.tasks.get_mut(&seq) {
                    rt.task.context.budget = decision.budget;
                    rt.paused = None;
                    for (cap, key) in std::mem::take(&mut rt.held_back) {
                        self.ready.entry(cap.clone()).or_default().insert(key);
                        self.dirty.insert(cap);
                    }
                }
                self.write_task(seq);
                // The new budget may be crossed already.
                self.check_budget(seq, now)?;
                self.refresh_side_status(seq, now)?;
            }
            (A::Retry, Some(i)) => {
                if let Some(s) = self.sub_mut(seq, i) {
                    let attempts = s.sub.attempts;
                    let g = s.gov_mut();
                    g.attempt_base = attempts;
                    g.verdict_base = g.verdicts.len();
                }
                self.set_state(seq, i, SubtaskState::Ready, None, why("retried"), now)?;
                self.enqueue_ready(seq, i, now)?;
                self.refresh_side_status(seq, now)?;
            }
            (A::Skip, Some(i)) => {
                if let Some(s) = self.sub_mut(seq, i) {
                    s.gov_mut().skipped_by_human = true;
                }
                self.set_state(seq, i, SubtaskState::Skipped, None, why("skipped"), now)?;
                self.release_dependents(seq, i, now)?;
                self.refresh_side_status(seq, now)?;
                self.after_terminal_subtask(seq, now)?;
            }
            (A::ProvideOutput, Some(i)) => {
                if let Some(s) = self.sub_mut(seq, i) {
                    s.sub.outputs = decision.outputs;
                    s.sub.error = None;
                }
                let note = why("output provided");
                self.set_state(seq, i, SubtaskState::Completed, None, note, now)?;
                self.release_dependents(seq, i, now)?;
                self.refresh_side_status(seq, now)?;
                self.after_terminal_subtask(seq, now)?;
            }
            (A::Fail, Some(i)) => {
                let subtask_id = self.tasks[&seq].subs[i as usize].sub.subtask_id.clone();
                self.set_state(seq, i, SubtaskState::Failed, None, why("failed"), now)?;
                self.fail_task(seq, format!("subtask {subtask_id} failed by a human"), now)?;
            }
            (action, None) => {
                return Err(self.missing(format!(
                    "the subtask of escalation {escalation_id} ({action})"
                )));
            }
        }
        Ok(record)
    }

    /// The task ends (cancelled or failed): its open escalations are closed with it.
    pub(crate) fn close_escalations(&mut self, seq: i64, why: &str, now: Millis) {
        let Some(task_id) = self.tasks.get(&seq).map(|t| t.task.task_id.clone()) else {
            return;
        };
        let mut ids: Vec<String> = self
            .escalations
            .values()
            .filter(|e| e.task_id == task_id)
            .map(|e| e.escalation_id.clone())
            .collect();
        ids.sort();
        for id in ids {
            if let Some(mut record) = self.escalations.remove(&id) {
                let resolution = Resolution {
                    action: ResolveAction::Cancel,
                    note: Some(why.to_owned()),
                    outputs: None,
                    budget: None,
                    attempts: 0,
                };
                if record.resolve(resolution, now).is_ok() {
                    self.outbox.escalations.push(record);
                }
            }
        }
    }

    /// Set the task's side status from its subtasks: `escalated` while any subtask is escalated
    /// or it is over budget, `awaiting_approval` while gated work is all that is left to run,
    /// else `running`.
    pub(crate) fn refresh_side_status(&mut self, seq: i64, now: Millis) -> Result<(), Error> {
        let Some(rt) = self.tasks.get(&seq) else {
            return Ok(());
        };
        let status = rt.task.status;
        if status.is_terminal() || status == TaskStatus::Planned {
            return Ok(());
        }
        let any = |state: SubtaskState| rt.subs.iter().any(|s| s.sub.state == state);
        let runnable = rt.subs.iter().any(|s| {
            matches!(
                s.sub.state,
                SubtaskState::Ready
                    | SubtaskState::Assigned
                    | SubtaskState::Running
                    | SubtaskState::Verifying
                    | SubtaskState::RetryWait
                    | SubtaskState::Blocked
            )
        });
        let want = if rt.paused.is_some() || any(SubtaskState::Escalated) {
            TaskStatus::Escalated
        } else if any(SubtaskState::AwaitingApproval) && !runnable {
            TaskStatus::AwaitingApproval
        } else {
            TaskStatus::Running
        };
        if want != status {
            self.set_task_status(seq, want, None, now)?;
        }
        Ok(())
    }

    // ---- approvals ----

    /// Whether subtask `idx` waits for approval before it runs.
    pub(crate) fn gated(&self, seq: i64, idx: u32) -> bool {
        let Some(rt) = self.tasks.get(&seq) else {
            return false;
        };
        let ctx = &rt.task.context;
        ctx.manual
            || ctx.checkpoints.contains(&idx)
            || rt.subs[idx as usize]
                .sub
                .rules
                .as_ref()
                .and_then(|r| r.approval.as_ref())
                .is_some_and(|a| a != &Value::Bool(false))
    }

    /// Approve (or reject) the task's subtasks waiting for approval: `subtask_ids`, or all.
    pub(crate) fn decide_gates(
        &mut self,
        task_id: &TaskId,
        subtask_ids: Option<Vec<SubtaskId>>,
        approve: bool,
        note: Option<String>,
        now: Millis,
    ) -> Result<Vec<SubtaskId>, Error> {
        let Some(&seq) = self.task_ids.get(task_id) else {
            return Err(Error::NotFound(format!(
                "task {:?} not found",
                task_id.as_str()
            )));
        };
        let rt = &self.tasks[&seq];
        let waiting: Vec<(u32, SubtaskId)> = rt
            .subs
            .iter()
            .filter(|s| s.sub.state == SubtaskState::AwaitingApproval)
            .map(|s| (s.sub.index, s.sub.subtask_id.clone()))
            .collect();
        let chosen: Vec<(u32, SubtaskId)> = match subtask_ids {
            None => waiting,
            Some(ids) => {
                let mut chosen = Vec::new();
                for id in ids {
                    match waiting.iter().find(|(_, w)| w == &id) {
                        Some(w) => chosen.push(w.clone()),
                        None => {
                            return Err(Error::Conflict(format!(
                                "subtask {:?} is not waiting for approval",
                                id.as_str()
                            )))
                        }
                    }
                }
                chosen
            }
        };
        if chosen.is_empty() {
            return Err(Error::Conflict(format!(
                "task {:?} has no subtask waiting for approval",
                task_id.as_str()
            )));
        }
        let suffix = note
            .as_deref()
            .map(|n| format!(": {n}"))
            .unwrap_or_default();
        for (idx, _) in &chosen {
            if approve {
                let note = Some(format!("approved{suffix}"));
                self.set_state(seq, *idx, SubtaskState::Ready, None, note, now)?;
                self.enqueue_ready(seq, *idx, now)?;
            } else if self
                .tasks
                .get(&seq)
                .is_some_and(|t| !t.task.status.is_terminal())
            {
                let reason = format!("rejected{suffix}");
                self.exhausted(seq, *idx, EscalationKind::Rejected, reason, None, now)?;
            }
        }
        self.refresh_side_status(seq, now)?;
        Ok(chosen.into_iter().map(|(_, id)| id).collect())
    }

    // ---- verification ----

    /// The verifier capability of subtask `idx`, when its step asks for verification.
    pub(crate) fn verifier_capability(&self, seq: i64, idx: u32) -> Option<String> {
        let verify = self.sub(seq, idx)?.sub.rules.as_ref()?.verify.as_ref()?;
        match verify {
            Value::Bool(false) => None,
            Value::Object(m) => Some(
                m.get("capability")
                    .and_then(Value::as_str)
                    .unwrap_or(DEFAULT_VERIFIER)
                    .to_owned(),
            ),
            _ => Some(DEFAULT_VERIFIER.to_owned()),
        }
    }

    /// Queue the verification of subtask `idx` (in `verifying`) for an agent with the
    /// verifier capability other than the author; blocked (with an event) while none exists.
    pub(crate) fn enqueue_verification(
        &mut self,
        seq: i64,
        idx: u32,
        now: Millis,
    ) -> Result<(), Error> {
        let Some(cap) = self.verifier_capability(seq, idx) else {
            return Err(self.missing(format!("the verifier of subtask {idx} of task #{seq}")));
        };
        let rt = &self.tasks[&seq];
        let author = rt.subs[idx as usize].sub.assigned_agent.clone();
        let key = ReadyKey::new(rt.task.priority, seq, idx);
        let other_exists = self
            .capable
            .get(&cap)
            .is_some_and(|set| set.iter().any(|a| Some(a) != author.as_ref()));
        if other_exists {
            self.ready.entry(cap.clone()).or_default().insert(key);
            self.dirty.insert(cap);
        } else {
            let note = format!(
                "verification blocked: no agent other than the author offers capability {cap:?}"
            );
            self.verifying_note(seq, idx, None, note, now);
            self.blocked.entry(cap).or_default().insert(key);
        }
        Ok(())
    }

    /// Hand the verification of subtask `idx` to `verifier`.
    pub(crate) fn assign_verification(
        &mut self,
        seq: i64,
        idx: u32,
        verifier: &AgentId,
        now: Millis,
    ) -> Result<(), Error> {
        let Some(cap) = self.verifier_capability(seq, idx) else {
            return Err(self.missing(format!("the verifier of subtask {idx} of task #{seq}")));
        };
        let rt = &self.tasks[&seq];
        let s = &rt.subs[idx as usize];
        let criteria = s
            .sub
            .rules
            .as_ref()
            .and_then(|r| r.verify.as_ref())
            .and_then(|v| v.get("criteria").cloned());
        let attempt = s.sub.attempts;
        // A verification may be handed out several times for one attempt (a verifier that
        // vanished): a random suffix from the seeded generator keeps the ids apart, also
        // across restarts.
        let suffix: u32 = self.rng.gen();
        let id = AssignmentId(format!("as-{seq}-{idx}-{attempt}-v{suffix:08x}"));
        let input = json!({
            "brief": format!(
                "Verify the output of {} ({}) for: {}",
                s.sub.subtask_id, s.sub.capability, rt.task.title
            ),
            "verify": {
                "subtask_id": s.sub.subtask_id,
                "capability": s.sub.capability,
                "attempt": attempt,
                "input": s.sub.input,
                "outputs": s.sub.outputs,
                "criteria": criteria,
            },
            "answer_with": {"verified": "bool", "evidence": "[...]", "feedback": "string, optional"},
        });
        self.grant(
            Grant {
                seq,
                idx,
                id,
                attempt,
                kind: AssignmentKind::Verification,
                capability: cap,
                input,
            },
            verifier,
            now,
        )
    }

    /// A verdict on a verification assignment: `{verified, evidence, feedback?}`. Positive
    /// completes the subtask; negative starts a new attempt with the feedback, and the third
    /// escalates.
    pub(crate) fn verdict(
        &mut self,
        id: &AssignmentId,
        verifier: &AgentId,
        seq: i64,
        idx: u32,
        outputs: Value,
        now: Millis,
    ) -> Result<AssignmentInfo, Error> {
        let verified = outputs.get("verified").and_then(Value::as_bool);
        let evidence = outputs.get("evidence").cloned();
        let (Some(verified), Some(evidence @ Value::Array(_))) = (verified, evidence) else {
            return Err(Error::Invalid(
                "a verdict is {\"verified\": true|false, \"evidence\": [...], \"feedback\"?: \"...\"}"
                    .to_owned(),
            ));
        };
        let feedback = outputs
            .get("feedback")
            .and_then(Value::as_str)
            .map(str::to_owned);
        self.finish_verification(id, AssignmentState::Completed, now)?;
        let rt = &self.tasks[&seq];
        let s = &rt.subs[idx as usize];
        let record = Verification {
            task_id: rt.task.task_id.clone(),
            subtask_id: s.sub.subtask_id.clone(),
            n: s.gov().map_or(0, |g| g.verdicts.len()) as u32 + 1,
            attempt: s.sub.attempts,
            author: s
                .sub
                .assigned_agent
                .clone()
                .unwrap_or_else(|| AgentId::from("")),
            verifier: verifier.clone(),
            verified,
            evidence,
            feedback: feedback.clone(),
            at: now,
        };
        self.outbox.verifications.push(record.clone());
        let negatives = {
            let s = self.sub_mut(seq, idx).expect("checked above");
            let g = s.gov_mut();
            g.verdicts.push(record);
            g.verdicts[g.verdict_base..]
                .iter()
                .filter(|v| !v.verified)
                .count()
        };
        let agent = Some(verifier.clone());
        if verified {
            let note = Some("verified".to_owned());
            self.set_state(seq, idx, SubtaskState::Completed, agent, note, now)?;
            self.release_dependents(seq, idx, now)?;
            self.after_terminal_subtask(seq, now)?;
        } else if negatives >= MAX_NEGATIVE_VERDICTS {
            let reason = format!("{negatives} negative verdicts");
            self.exhausted(seq, idx, EscalationKind::Verification, reason, agent, now)?;
        } else {
            let note = Some(format!(
                "verification {negatives} of {MAX_NEGATIVE_VERDICTS} negative: {}; a new attempt",
                feedback.as_deref().unwrap_or("no feedback")
            ));
            if let Some(s) = self.sub_mut(seq, idx) {
                s.sub.outputs = None;
            }
            self.set_state(seq, idx, SubtaskState::RetryWait, agent, note, now)?;
            self.make_ready(seq, idx, now)?;
        }
        Ok(AssignmentInfo {
            assignment_id: id.clone(),
            state: AssignmentState::Completed,
            lease_expires_at: None,
        })
    }

    /// A timeline entry about a subtask's verification that changes no state
    /// (`verifying -> verifying` with a note).
    fn verifying_note(
        &mut self,
        seq: i64,
        idx: u32,
        agent: Option<AgentId>,
        note: String,
        now: Millis,
    ) {
        let Some(rt) = self.tasks.get(&seq) else {
            return;
        };
        let subtask_id = rt.subs[idx as usize].sub.subtask_id.clone();
        self.event(Event {
            task_id: rt.task.task_id.clone(),
            at: now,
            change: Change::Subtask {
                subtask_id,
                from: SubtaskState::Verifying,
                to: SubtaskState::Verifying,
            },
            agent,
            note: Some(note),
        });
    }

    /// End a verification assignment; the verifier's slot is free.
    pub(crate) fn finish_verification(
        &mut self,
        id: &AssignmentId,
        state: AssignmentState,
        now: Millis,
    ) -> Result<(), Error> {
        let Some(asg) = self.assignments.get_mut(id) else {
            return Err(self.missing(format!("assignment {id}")));
        };
        if let Err(e) = asg.a.set_state(state, now) {
            return Err(self.bug(format!("assignment {id}"), e));
        }
        let (seq, idx, agent_id) = (asg.seq, asg.idx, asg.a.agent_id.clone());
        self.write_assignment(id);
        if let Some(s) = self.sub_mut(seq, idx) {
            if s.current.as_ref() == Some(id) {
                s.current = None;
            }
        }
        if let Some(rt) = self.agents.get_mut(&agent_id) {
            rt.in_flight.remove(id);
        }
        self.slot_freed(&agent_id)
    }

    /// The author of the work a verification checks tried to give the verdict itself.
    pub(crate) fn refuse_self_attestation(
        &mut self,
        id: &AssignmentId,
        author: &AgentId,
        now: Millis,
    ) -> Error {
        if let Some((seq, idx)) = self.assignments.get(id).map(|a| (a.seq, a.idx)) {
            let note = "self-attestation refused: the author cannot verify its own output";
            self.verifying_note(seq, idx, Some(author.clone()), note.into(), now);
        }
        tracing::warn!(assignment_id = %id, agent_id = %author, "self-attestation refused");
        Error::Conflict(format!(
            "self-attestation refused: agent {author} produced the output that assignment {id} verifies"
        ))
    }

    // ---- manual routing ----

    /// `POST /tasks/{id}/subtasks/{sid}/assign`: a `ready` or `blocked` subtask goes to the
    /// agent the operator chose, at its next lease call, whatever its capabilities.
    pub(crate) fn assign_manually(
        &mut self,
        task_id: &TaskId,
        subtask_id: &SubtaskId,
        agent_id: &AgentId,
        now: Millis,
    ) -> Result<(), Error> {
        let Some(&seq) = self.task_ids.get(task_id) else {
            return Err(Error::NotFound(format!(
                "task {:?} not found",
                task_id.as_str()
            )));
        };
        let Some(idx) = self.tasks[&seq]
            .subs
            .iter()
            .position(|s| &s.sub.subtask_id == subtask_id)
            .map(|i| i as u32)
        else {
            return Err(Error::NotFound(format!(
                "task {:?} has no subtask {:?}",
                task_id.as_str(),
                subtask_id.as_str()
            )));
        };
        let live = self
            .agents
            .get(agent_id)
            .is_some_and(|a| a.agent.status.accepts_work());
        if !live {
            return Err(Error::Conflict(format!(
                "agent {:?} is unknown or takes no new work",
                agent_id.as_str()
            )));
        }
        let rt = &self.tasks[&seq];
        let s = &rt.subs[idx as usize].sub;
        let (state, cap, priority) = (s.state, s.capability.clone(), rt.task.priority);
        let key = ReadyKey::new(priority, seq, idx);
        match state {
            SubtaskState::Blocked => {
                if let Some(set) = self.blocked.get_mut(&cap) {
                    set.remove(&key);
                }
                let note = Some(format!("routed by hand to {agent_id}"));
                self.set_state(seq, idx, SubtaskState::Ready, None, note, now)?;
            }
            SubtaskState::Ready => {
                if let Some(q) = self.ready.get_mut(&cap) {
                    q.remove(&key);
                }
            }
            other => {
                return Err(Error::Conflict(format!(
                "subtask {:?} is {other}; only a ready or blocked subtask can be routed by hand",
                subtask_id.as_str()
            )))
            }
        }
        self.pinned
            .entry(agent_id.clone())
            .or_default()
            .push_back((seq, idx));
        self.refresh_side_status(seq, now)
    }

    /// Hand subtasks routed by hand to their agents when those have a parked poll with room.
    pub(crate) fn dispatch_pinned(&mut self, now: Millis) -> Result<(), Error> {
        let agents: Vec<AgentId> = self.pinned.keys().cloned().collect();
        for agent_id in agents {
            loop {
                let room = self.agents.get(&agent_id).is_some_and(|a| {
                    a.poll
                        .as_ref()
                        .is_some_and(|p| (p.grants.len() as u32) < p.max)
                        && (a.in_flight.len() as u32) < a.agent.max_concurrency
                });
                if !room {
                    break;
                }
                let Some((seq, idx)) = self.pinned.get_mut(&agent_id).and_then(|q| q.pop_front())
                else {
                    break;
                };
                if self
                    .sub(seq, idx)
                    .is_some_and(|s| s.sub.state == SubtaskState::Ready)
                {
                    self.assign(seq, idx, &agent_id, now)?;
                }
            }
            if self.pinned.get(&agent_id).is_some_and(|q| q.is_empty()) {
                self.pinned.remove(&agent_id);
            }
        }
        Ok(())
    }

    // ---- usage and budgets ----

    /// Add what an agent reported to its subtask, then check the task's budget.
    pub(crate) fn add_usage(
        &mut self,
        seq: i64,
        idx: u32,
        usage: Option<Usage>,
        now: Millis,
    ) -> Result<(), Error> {
        let Some(usage) = usage.filter(|u| !u.is_zero()) else {
            return Ok(());
        };
        if let Some(s) = self.sub_mut(seq, idx) {
            let mut total = s.sub.usage.unwrap_or_default();
            total.add(&usage);
            s.sub.usage = Some(total);
        }
        self.write_subtask(seq, idx);
        self.check_budget(seq, now)
    }

    /// Tasks with a duration budget are checked every sweep (time passes without any event).
    pub(crate) fn budget_sweep(&mut self, now: Millis) -> Result<(), Error> {
        let mut timed: Vec<i64> = self
            .tasks
            .iter()
            .filter(|(_, rt)| {
                rt.paused.is_none()
                    && rt.task.status != TaskStatus::Planned
                    && rt
                        .task
                        .context
                        .budget
                        .as_ref()
                        .is_some_and(|b| b.max_duration_s.is_some())
            })
            .map(|(&seq, _)| seq)
            .collect();
        timed.sort_unstable();
        for seq in timed {
            self.check_budget(seq, now)?;
        }
        Ok(())
    }

    /// Over its budget, a task takes no new dispatch and escalates (once).
    pub(crate) fn check_budget(&mut self, seq: i64, now: Millis) -> Result<(), Error> {
        let Some(rt) = self.tasks.get(&seq) else {
            return Ok(());
        };
        if rt.paused.is_some() || rt.task.status.is_terminal() {
            return Ok(());
        }
        let Some(budget) = &rt.task.context.budget else {
            return Ok(());
        };
        let started = rt.task.started_at.unwrap_or(rt.task.created_at);
        let elapsed_s = ((now - started).max(0) / 1000) as u64;
        if let Some(reason) = budget.crossed(&usage_of(rt), elapsed_s) {
            self.escalate(seq, None, EscalationKind::Budget, reason, None, now)?;
        }
        Ok(())
    }
}

/// The usage of a task: its subtasks' together.
pub(crate) fn usage_of(rt: &super::TaskRt) -> Usage {
    let mut total = Usage::default();
    for s in &rt.subs {
        if let Some(u) = &s.sub.usage {
            total.add(u);
        }
    }
    total
}

/// Where the attempts after `base` start in an attempt log.
fn log_start(log: &[Value], base: u32) -> usize {
    log.iter()
        .position(|e| e["attempt"].as_u64().is_some_and(|a| a > u64::from(base)))
        .unwrap_or(log.len())
}

fn verdict_json(v: &Verification) -> Value {
    json!({
        "n": v.n,
        "attempt": v.attempt,
        "author": v.author,
        "verifier": v.verifier,
        "verified": v.verified,
        "evidence": v.evidence,
        "feedback": v.feedback,
    })
}

/// What a human can do about an escalation of `kind`.
fn suggestions(kind: EscalationKind) -> Vec<String> {
    let s = |t: &str| t.to_owned();
    match kind {
        EscalationKind::Budget => vec![
            s("raise_budget: continue under a higher budget"),
            s("cancel: stop the task"),
        ],
        EscalationKind::Verification => vec![
            s("provide_output: supply an output that meets the criteria"),
            s("retry: three more attempts (consider a clearer brief or other agents)"),
            s("skip: continue without this step"),
            s("fail: fail the task"),
        ],
        EscalationKind::Rejected => vec![
            s("retry: run the step after all"),
            s("provide_output: do the step by hand"),
            s("skip: continue without this step"),
            s("fail: fail the task"),
        ],
        EscalationKind::Attempts => vec![
            s("retry: a fresh set of attempts (after fixing the agent, or raising timeout_s)"),
            s("provide_output: supply the result yourself"),
            s("skip: continue without this step"),
            s("fail: fail the task"),
        ],
    }
}
