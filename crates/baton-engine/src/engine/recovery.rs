//! Restart recovery: rebuild the in-memory indexes from what the store committed. Running
//! tasks resume; live assignments get a fresh lease period (agents could not reach us while
//! we were down) and are reclaimed if their agent does not come back in time.

use std::collections::HashMap;

use baton_core::{AgentStatus, Millis, SubtaskState, TaskStatus};
use baton_store::Recovery;

use super::{AsgRt, Engine, TaskRt};
use crate::timers::Timer;
use crate::Error;

impl Engine {
    /// Rebuild from `recovered`. A bug met on the way (an illegal transition in stored state)
    /// is logged and counted, and recovery goes on with the next subtask.
    pub(crate) fn recover(&mut self, recovered: Recovery, now: Millis) {
        let Recovery {
            agents,
            tasks,
            subtasks,
            assignments,
            verifications,
            escalations,
            ..
        } = recovered;
        let (n_agents, n_tasks, n_assignments) = (agents.len(), tasks.len(), assignments.len());
        for agent in agents {
            let id = agent.agent_id.clone();
            if let Err(e) = self.add_agent(agent, Some(now), now) {
                tracing::error!(agent_id = %id, error = %e, "recovering an agent");
            }
        }
        let mut subs_by_task: HashMap<baton_core::TaskId, Vec<baton_core::Subtask>> =
            HashMap::new();
        for s in subtasks {
            subs_by_task.entry(s.task_id.clone()).or_default().push(s);
        }
        for task in tasks {
            let subtasks = subs_by_task.remove(&task.task_id).unwrap_or_default();
            let seq = task.seq;
            self.task_ids.insert(task.task_id.clone(), seq);
            self.tasks.insert(seq, TaskRt::new(task, subtasks));
        }
        self.recover_governance(verifications, escalations);
        let lease_ms = self.config.lease.as_millis() as i64;
        for mut a in assignments {
            let Some(&seq) = self.task_ids.get(&a.task_id) else {
                continue;
            };
            let Some(idx) = self.tasks[&seq]
                .subs
                .iter()
                .position(|s| s.sub.subtask_id == a.subtask_id)
            else {
                continue;
            };
            let idx = idx as u32;
            let rt = &self.tasks[&seq];
            let timeout_ms = rt.subs[idx as usize].sub.timeout_ms(rt.task.timeout_ms) as i64;
            a.lease_expires_at = a.lease_expires_at.max(now + lease_ms);
            let id = a.assignment_id.clone();
            if let Some(agent) = self.agents.get_mut(&a.agent_id) {
                agent.in_flight.insert(id.clone());
            }
            self.timers.at(a.lease_expires_at, Timer::Lease(id.clone()));
            self.timers
                .at(a.created_at + timeout_ms, Timer::Timeout(id.clone()));
            self.assignments.insert(
                id.clone(),
                AsgRt {
                    timeout_at: a.created_at + timeout_ms,
                    a,
                    seq,
                    idx,
                    phase: None,
                    // A verification's acknowledgement is not stored: after a restart its
                    // agent names it again (as `held`, progress or its verdict), or it expires.
                    acked: false,
                },
            );
            if let Some(rt) = self.tasks.get_mut(&seq) {
                rt.assignments.push(id.clone());
                rt.subs[idx as usize].current = Some(id);
            }
        }
        // Put every live subtask back where it belongs.
        let mut seqs: Vec<i64> = self.tasks.keys().copied().collect();
        seqs.sort_unstable();
        for seq in seqs {
            if self.tasks[&seq].task.status == TaskStatus::Planned {
                continue;
            }
            let n = self.tasks[&seq].subs.len() as u32;
            for idx in 0..n {
                if let Err(e) = self.recover_subtask(seq, idx, now) {
                    tracing::error!(task_seq = seq, idx, error = %e, "recovering a subtask");
                }
            }
            if let Err(e) = self.after_terminal_subtask(seq, now) {
                tracing::error!(task_seq = seq, error = %e, "recovering a task");
            }
        }
        // Draining agents whose work is done are stopped.
        let draining: Vec<_> = self
            .agents
            .values()
            .filter(|a| a.agent.status == AgentStatus::Draining)
            .map(|a| a.agent.agent_id.clone())
            .collect();
        for id in draining {
            if let Err(e) = self.stop_if_drained(&id) {
                tracing::error!(agent_id = %id, error = %e, "recovering a draining agent");
            }
        }
        tracing::info!(
            agents = n_agents,
            tasks = n_tasks,
            assignments = n_assignments,
            "recovered"
        );
    }

    /// Verdicts, escalations and what they imply: negative verdicts counted since the last
    /// retry, attempt budgets restarted by a retry, open escalations, budget pauses. (The
    /// attempt log of an escalation's evidence starts again after a restart.)
    fn recover_governance(
        &mut self,
        verifications: Vec<baton_core::Verification>,
        escalations: Vec<baton_core::Escalation>,
    ) {
        let position = |engine: &Engine, task: &baton_core::TaskId, sub: &baton_core::SubtaskId| {
            let seq = *engine.task_ids.get(task)?;
            let idx = engine.tasks[&seq]
                .subs
                .iter()
                .position(|s| &s.sub.subtask_id == sub)?;
            Some((seq, idx as u32))
        };
        for v in verifications {
            if let Some((seq, idx)) = position(self, &v.task_id, &v.subtask_id) {
                if let Some(s) = self.sub_mut(seq, idx) {
                    s.gov_mut().verdicts.push(v);
                }
            }
        }
        for e in escalations {
            let Some(&seq) = self.task_ids.get(&e.task_id) else {
                continue;
            };
            let at = e
                .subtask_id
                .as_ref()
                .and_then(|sub| position(self, &e.task_id, sub));
            if let Some(rt) = self.tasks.get_mut(&seq) {
                rt.escalations += 1;
                if e.status == baton_core::EscalationStatus::Open && at.is_none() {
                    rt.paused = Some(e.escalation_id.clone());
                }
            }
            if let Some((_, idx)) = at {
                if let Some(s) = self.sub_mut(seq, idx) {
                    match (&e.status, &e.resolution) {
                        (baton_core::EscalationStatus::Open, _) => {
                            s.gov_mut().escalation = Some(e.escalation_id.clone());
                        }
                        (_, Some(r)) if r.action == baton_core::ResolveAction::Retry => {
                            let g = s.gov_mut();
                            g.attempt_base = r.attempts;
                            g.verdict_base = g
                                .verdicts
                                .iter()
                                .filter(|v| v.at <= e.resolved_at.unwrap_or(i64::MAX))
                                .count();
                        }
                        _ => {}
                    }
                }
            }
            if e.status == baton_core::EscalationStatus::Open {
                self.escalations.insert(e.escalation_id.clone(), e);
            }
        }
    }

    /// Put one live subtask back where it belongs.
    fn recover_subtask(&mut self, seq: i64, idx: u32, now: Millis) -> Result<(), Error> {
        let s = &self.tasks[&seq].subs[idx as usize];
        let (state, has_current, waiting) = (s.sub.state, s.current.is_some(), s.waiting);
        let cap = s.sub.capability.clone();
        match state {
            SubtaskState::Ready => self.enqueue_ready(seq, idx, now)?,
            SubtaskState::Blocked => {
                if self.capable.get(&cap).is_some_and(|s| !s.is_empty()) {
                    self.make_ready(seq, idx, now)?;
                } else {
                    let key = super::ReadyKey {
                        priority: std::cmp::Reverse(self.tasks[&seq].task.priority),
                        seq,
                        idx,
                    };
                    self.blocked.entry(cap).or_default().insert(key);
                }
            }
            SubtaskState::RetryWait => self.timers.at(now, Timer::Retry(seq, idx)),
            SubtaskState::Pending if waiting == 0 => self.unblocked(seq, idx, now)?,
            // Its work is done; the verification still has to be handed out.
            SubtaskState::Verifying if !has_current => self.enqueue_verification(seq, idx, now)?,
            s if s.is_assigned() && !has_current => {
                // Committed as assigned without a live assignment: treat the attempt as lost.
                tracing::warn!(
                    task_seq = seq,
                    idx,
                    "assigned subtask without a live assignment; retrying"
                );
                let note = Some("recovered without a live assignment".into());
                self.set_state(seq, idx, SubtaskState::RetryWait, None, note, now)?;
                self.timers.at(now, Timer::Retry(seq, idx));
            }
            _ => {}
        }
        Ok(())
    }
}
