//! Agents: registration, draining, authentication, lease polls, dispatch (routing a ready
//! subtask to a parked agent) and health.

use baton_core::workflow;
use baton_core::{
    Agent, AgentId, AgentStatus, Assignment, AssignmentId, AssignmentKind, AssignmentState, Millis,
    SubtaskState,
};
use rand::Rng;
use serde_json::Value;

use super::{assignment_id, new_uuid, AgentRt, AsgRt, Engine, Poll};

/// One assignment about to be handed out.
pub(crate) struct Grant {
    pub seq: i64,
    pub idx: u32,
    pub id: AssignmentId,
    pub attempt: u32,
    pub kind: AssignmentKind,
    pub capability: String,
    pub input: Value,
}
use crate::handle::{AgentInfo, AgentSpec, HeartbeatInfo, LeaseGrant, Registered, Reply};
use crate::timers::Timer;
use crate::{hash_token, Error};

impl Engine {
    pub(crate) fn register(&mut self, spec: AgentSpec, now: Millis) -> Result<Registered, Error> {
        let agent_id = AgentId(format!("agent-{}", new_uuid(&mut self.rng, now)));
        let token = format!("bt_{:032x}", self.rng.gen::<u128>());
        let agent = Agent {
            agent_id: agent_id.clone(),
            name: spec.name,
            kind: spec.kind,
            capabilities: spec.capabilities,
            domains: spec.domains,
            max_concurrency: spec.max_concurrency.max(1),
            status: AgentStatus::Idle,
            token_hash: hash_token(&token),
            created_at: now,
            stats: Default::default(),
        };
        tracing::info!(agent_id = %agent_id, name = %agent.name, capabilities = ?agent.capabilities, "agent registered");
        self.add_agent(agent.clone(), Some(now), now)?;
        self.write_agent(&agent_id);
        Ok(Registered { agent, token })
    }

    /// Put an agent in the indexes and unblock what it can serve.
    pub(crate) fn add_agent(
        &mut self,
        agent: Agent,
        last_seen: Option<Millis>,
        now: Millis,
    ) -> Result<(), Error> {
        let id = agent.agent_id.clone();
        self.tokens.insert(agent.token_hash.clone(), id.clone());
        let serves = agent.status.accepts_work() || agent.status == AgentStatus::Unhealthy;
        let caps = agent.capabilities.clone();
        self.agents.insert(
            id.clone(),
            AgentRt {
                agent,
                in_flight: Default::default(),
                last_seen,
                poll: None,
                revoked: Vec::new(),
                breaker: Default::default(),
                stats_dirty: false,
            },
        );
        if serves {
            for cap in caps {
                self.capable
                    .entry(cap.clone())
                    .or_default()
                    .insert(id.clone());
                self.unblock(&cap, now)?;
            }
        }
        Ok(())
    }

    /// Every blocked subtask of `cap` becomes ready (an agent for it appeared).
    fn unblock(&mut self, cap: &str, now: Millis) -> Result<(), Error> {
        let Some(keys) = self.blocked.remove(cap) else {
            return Ok(());
        };
        for key in keys {
            match self.sub(key.seq, key.idx).map(|s| s.sub.state) {
                Some(SubtaskState::Blocked) => self.make_ready(key.seq, key.idx, now)?,
                // A verification that waited for an agent other than the author.
                Some(SubtaskState::Verifying) => {
                    self.enqueue_verification(key.seq, key.idx, now)?
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Move an agent through the agent machine and write it.
    fn set_agent_status(&mut self, agent_id: &AgentId, to: AgentStatus) -> Result<(), Error> {
        let Some(rt) = self.agents.get_mut(agent_id) else {
            return Err(self.missing(format!("agent {agent_id}")));
        };
        if let Err(e) = rt.agent.set_status(to) {
            return Err(self.bug(format!("agent {agent_id}"), e));
        }
        tracing::info!(agent_id = %agent_id, status = %to, "agent status");
        self.write_agent(agent_id);
        Ok(())
    }

    pub(crate) fn drain(&mut self, agent_id: &AgentId, now: Millis) -> Result<AgentInfo, Error> {
        let rt = self
            .agents
            .get_mut(agent_id)
            .ok_or_else(|| Error::NotFound(format!("agent {agent_id:?} not found")))?;
        if matches!(
            rt.agent.status,
            AgentStatus::Draining | AgentStatus::Stopped | AgentStatus::Failed
        ) {
            return Ok(info(rt, now));
        }
        if let Some(poll) = rt.poll.take() {
            let _ = poll.reply.send(Ok(poll.grants));
        }
        let caps = rt.agent.capabilities.clone();
        self.set_agent_status(agent_id, AgentStatus::Draining)?;
        for cap in &caps {
            if let Some(set) = self.capable.get_mut(cap) {
                set.remove(agent_id);
            }
            if let Some(set) = self.parked.get_mut(cap) {
                set.remove(agent_id);
            }
            self.block_if_orphaned(cap, now)?;
        }
        self.stop_if_drained(agent_id)?;
        Ok(info(&self.agents[agent_id], now))
    }

    /// A draining agent with nothing in flight is stopped.
    pub(crate) fn stop_if_drained(&mut self, agent_id: &AgentId) -> Result<(), Error> {
        let drained = self
            .agents
            .get(agent_id)
            .is_some_and(|rt| rt.agent.status == AgentStatus::Draining && rt.in_flight.is_empty());
        if drained {
            self.set_agent_status(agent_id, AgentStatus::Stopped)?;
        }
        Ok(())
    }

    /// When no agent offers `cap` any more, its ready subtasks become blocked.
    fn block_if_orphaned(&mut self, cap: &str, now: Millis) -> Result<(), Error> {
        if self.capable.get(cap).is_some_and(|s| !s.is_empty()) {
            return Ok(());
        }
        let Some(keys) = self.ready.remove(cap) else {
            return Ok(());
        };
        for key in keys {
            let is_ready = self
                .sub(key.seq, key.idx)
                .is_some_and(|s| s.sub.state == SubtaskState::Ready);
            if is_ready {
                self.enqueue_ready(key.seq, key.idx, now)?;
            }
        }
        Ok(())
    }

    pub(crate) fn agent_infos(&self, now: Millis) -> Vec<AgentInfo> {
        let mut list: Vec<AgentInfo> = self.agents.values().map(|rt| info(rt, now)).collect();
        list.sort_by(|a, b| a.agent.agent_id.cmp(&b.agent.agent_id));
        list
    }

    /// The agent a token hash belongs to, checked against the agent the call names.
    fn authenticate(&self, agent_id: Option<&AgentId>, token_hash: &str) -> Result<AgentId, Error> {
        let owner = self.tokens.get(token_hash).ok_or(Error::Unauthorized)?;
        if let Some(named) = agent_id {
            if !self.agents.contains_key(named) {
                return Err(Error::NotFound(format!("agent {named:?} not found")));
            }
            if named != owner {
                return Err(Error::Forbidden(format!(
                    "this token does not belong to agent {named:?}"
                )));
            }
        }
        Ok(owner.clone())
    }

    /// Any authenticated call counts as a heartbeat: the agent is seen (and healthy again),
    /// and the leases `renew` names get a new deadline, which is returned when there were any.
    ///
    /// The rule that keeps plain agents from stalling: an assignment the agent has not
    /// acknowledged yet (its subtask still `assigned`: no progress, no result, no `held`
    /// naming it) is renewed only by a call that names it. A lease answer that never reached
    /// its agent therefore expires one lease period after it was handed out, however often
    /// that agent calls. Naming an assignment in `held` acknowledges it.
    pub(crate) fn touch(
        &mut self,
        agent_id: Option<&AgentId>,
        token_hash: &str,
        renew: Renew<'_>,
        now: Millis,
    ) -> Result<(AgentId, Option<Millis>), Error> {
        let id = self.authenticate(agent_id, token_hash)?;
        let expires = now + self.config.lease.as_millis() as i64;
        let Some(rt) = self.agents.get_mut(&id) else {
            return Err(self.missing(format!("agent {id}")));
        };
        rt.last_seen = Some(now);
        let was_unhealthy = rt.agent.status == AgentStatus::Unhealthy;
        let (renew, named): (Vec<AssignmentId>, bool) = match renew {
            Renew::All => (rt.in_flight.iter().cloned().collect(), false),
            Renew::Only(held) => (
                held.iter()
                    .filter(|a| rt.in_flight.contains(*a))
                    .cloned()
                    .collect(),
                true,
            ),
        };
        if was_unhealthy {
            self.set_agent_status(&id, AgentStatus::Idle)?;
            let caps = self.agents[&id].agent.capabilities.clone();
            self.dirty.extend(caps);
        }
        let mut renewed = false;
        for a in renew {
            let Some((seq, idx, verification, acked)) = self.assignments.get(&a).map(|asg| {
                (
                    asg.seq,
                    asg.idx,
                    asg.a.kind == AssignmentKind::Verification,
                    asg.acked,
                )
            }) else {
                continue;
            };
            // A verification is acknowledged like work: once a call of its agent names it.
            let unacknowledged = if verification {
                !acked
            } else {
                self.sub(seq, idx)
                    .is_some_and(|s| s.sub.state == SubtaskState::Assigned)
            };
            if unacknowledged {
                if !named {
                    continue;
                }
                if verification {
                    if let Some(asg) = self.assignments.get_mut(&a) {
                        asg.acked = true;
                    }
                } else {
                    self.mark_running(seq, idx, &id, now)?;
                }
            }
            if let Some(asg) = self.assignments.get_mut(&a) {
                asg.a.lease_expires_at = expires;
                renewed = true;
            }
        }
        Ok((id, renewed.then_some(expires)))
    }

    pub(crate) fn heartbeat(
        &mut self,
        agent_id: &AgentId,
        token_hash: &str,
        held: Option<Vec<AssignmentId>>,
        now: Millis,
    ) -> Result<HeartbeatInfo, Error> {
        let renew = held.as_deref().map_or(Renew::All, Renew::Only);
        let (id, lease_expires_at) = self.touch(Some(agent_id), token_hash, renew, now)?;
        let Some(rt) = self.agents.get_mut(&id) else {
            return Err(self.missing(format!("agent {id}")));
        };
        let mut revoked = std::mem::take(&mut rt.revoked);
        // Whatever it says it holds that is no longer its live work must be abandoned too
        // (the revocation may have been answered to a heartbeat it never received).
        for a in held.into_iter().flatten() {
            if !rt.in_flight.contains(&a) && !revoked.contains(&a) {
                revoked.push(a);
            }
        }
        Ok(HeartbeatInfo {
            status: effective_status(rt),
            lease_expires_at,
            revoked,
        })
    }

    #[allow(clippy::too_many_arguments)] // the fields of one command
    pub(crate) fn lease(
        &mut self,
        agent_id: AgentId,
        token_hash: &str,
        max: u32,
        wait_ms: u64,
        held: Option<Vec<AssignmentId>>,
        reply: Reply<Vec<LeaseGrant>>,
        now: Millis,
    ) {
        let renew = held.as_deref().map_or(Renew::All, Renew::Only);
        let id = match self.touch(Some(&agent_id), token_hash, renew, now) {
            Ok((id, _)) => id,
            Err(e) => return self.reply(reply, Err(e)),
        };
        let max = max.clamp(1, self.config.max_lease_batch);
        let wait_ms = wait_ms.min(self.config.max_lease_wait.as_millis() as u64);
        self.poll_ids += 1;
        let poll_id = self.poll_ids;
        let rt = self
            .agents
            .get_mut(&id)
            .expect("authenticated agent exists");
        if !rt.agent.status.accepts_work() {
            let status = rt.agent.status;
            return self.reply(
                reply,
                Err(Error::Conflict(format!(
                    "agent {id:?} is {status} and takes no new work"
                ))),
            );
        }
        // A new poll replaces an older one, which is answered with what it has.
        if let Some(old) = rt.poll.take() {
            let _ = old.reply.send(Ok(old.grants));
        }
        rt.poll = Some(Poll {
            id: poll_id,
            max,
            grants: Vec::new(),
            reply,
        });
        let caps = rt.agent.capabilities.clone();
        for cap in caps {
            self.parked
                .entry(cap.clone())
                .or_default()
                .insert(id.clone());
            self.dirty.insert(cap);
        }
        self.timers
            .at(now + wait_ms as i64, Timer::Poll(id.clone(), poll_id));
        self.pending_polls.insert(id);
    }

    pub(crate) fn poll_expired(&mut self, agent_id: &AgentId, poll_id: u64) {
        let Some(rt) = self.agents.get_mut(agent_id) else {
            return;
        };
        if rt.poll.as_ref().is_some_and(|p| p.id == poll_id) {
            self.answer_poll(agent_id);
        }
    }

    /// Answer an agent's parked poll with the grants it has (after this turn's commit).
    pub(crate) fn answer_poll(&mut self, agent_id: &AgentId) {
        let Some(rt) = self.agents.get_mut(agent_id) else {
            return;
        };
        let Some(poll) = rt.poll.take() else { return };
        for cap in &rt.agent.capabilities {
            if let Some(set) = self.parked.get_mut(cap) {
                set.remove(agent_id);
            }
        }
        self.reply(poll.reply, Ok(poll.grants));
    }

    /// Route ready subtasks to parked agents, then answer every poll that got work.
    pub(crate) fn dispatch(&mut self, now: Millis) -> Result<(), Error> {
        if !self.pinned.is_empty() {
            self.dispatch_pinned(now)?;
        }
        let dirty = std::mem::take(&mut self.dirty);
        for cap in dirty {
            self.dispatch_capability(&cap, now)?;
        }
        let polls = std::mem::take(&mut self.pending_polls);
        for id in polls {
            let has_work = self
                .agents
                .get(&id)
                .and_then(|a| a.poll.as_ref())
                .is_some_and(|p| !p.grants.is_empty());
            let gone = self
                .agents
                .get(&id)
                .and_then(|a| a.poll.as_ref())
                .is_some_and(|p| p.reply.is_closed());
            if has_work {
                self.answer_poll(&id);
            } else if gone {
                if let Some(rt) = self.agents.get_mut(&id) {
                    rt.poll = None;
                    for cap in &rt.agent.capabilities {
                        if let Some(set) = self.parked.get_mut(cap) {
                            set.remove(&id);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn dispatch_capability(&mut self, cap: &str, now: Millis) -> Result<(), Error> {
        loop {
            let Some(&key) = self.ready.get(cap).and_then(|q| q.first()) else {
                return Ok(());
            };
            let (state_ok, verification, author) = match self.sub(key.seq, key.idx) {
                Some(s) if s.sub.state == SubtaskState::Ready => (true, false, None),
                // A verification waiting for its verifier.
                Some(s) if s.sub.state == SubtaskState::Verifying && s.current.is_none() => {
                    (true, true, s.sub.assigned_agent.clone())
                }
                _ => (false, false, None),
            };
            if !state_ok {
                // Cancelled or otherwise moved on since it was queued.
                self.ready.get_mut(cap).map(|q| q.remove(&key));
                continue;
            }
            if self.tasks.get(&key.seq).is_some_and(|t| t.paused.is_some()) {
                // Over its budget: held back until the escalation is resolved.
                self.ready.get_mut(cap).map(|q| q.remove(&key));
                if let Some(t) = self.tasks.get_mut(&key.seq) {
                    t.held_back.push((cap.to_owned(), key));
                }
                continue;
            }
            let Some(agent_id) = self.route(cap, key.seq, key.idx, author.as_ref(), now) else {
                return Ok(());
            };
            self.ready.get_mut(cap).map(|q| q.remove(&key));
            if verification {
                self.assign_verification(key.seq, key.idx, &agent_id, now)?;
            } else {
                self.assign(key.seq, key.idx, &agent_id, now)?;
            }
        }
    }

    /// `ready → assigned` on `agent_id`: a new attempt with a fresh lease.
    pub(crate) fn assign(
        &mut self,
        seq: i64,
        idx: u32,
        agent_id: &AgentId,
        now: Millis,
    ) -> Result<(), Error> {
        let agent = Some(agent_id.clone());
        self.set_state(seq, idx, SubtaskState::Assigned, agent, None, now)?;
        let rt = self.tasks.get_mut(&seq).expect("set_state found it");
        let mut input = workflow::agent_input(&rt.task, &rt.subs, idx as usize);
        let s = &mut rt.subs[idx as usize];
        // A new attempt after a negative verdict gets the verdict to act on.
        if let (Some(v), Value::Object(m)) = (
            s.gov()
                .and_then(|g| g.verdicts.last())
                .filter(|v| !v.verified),
            &mut input,
        ) {
            m.insert(
                "verification".into(),
                serde_json::json!({"verified": false, "feedback": v.feedback, "evidence": v.evidence}),
            );
        }
        s.sub.attempts += 1;
        s.sub.assigned_agent = Some(agent_id.clone());
        s.tried.push(agent_id.clone());
        let attempt = s.sub.attempts;
        let capability = s.sub.capability.clone();
        let id = assignment_id(seq, idx, attempt);
        self.write_subtask(seq, idx);
        self.grant(
            Grant {
                seq,
                idx,
                id,
                attempt,
                kind: AssignmentKind::Work,
                capability,
                input,
            },
            agent_id,
            now,
        )
    }

    /// Hand `g` to `agent_id`'s parked poll: the assignment with a fresh lease and its timers.
    pub(crate) fn grant(&mut self, g: Grant, agent_id: &AgentId, now: Millis) -> Result<(), Error> {
        let lease_ms = self.config.lease.as_millis() as i64;
        let Some(rt) = self.tasks.get_mut(&g.seq) else {
            return Err(self.missing(format!("task #{}", g.seq)));
        };
        let timeout_ms = rt.subs[g.idx as usize].sub.timeout_ms(rt.task.timeout_ms) as i64;
        let task_id = rt.task.task_id.clone();
        let s = &mut rt.subs[g.idx as usize];
        let id = g.id;
        let assignment = Assignment {
            assignment_id: id.clone(),
            task_id,
            subtask_id: s.sub.subtask_id.clone(),
            agent_id: agent_id.clone(),
            attempt: g.attempt,
            state: AssignmentState::Active,
            lease_expires_at: now + lease_ms,
            created_at: now,
            finished_at: None,
            kind: g.kind,
        };
        s.current = Some(id.clone());
        rt.assignments.push(id.clone());
        self.assignments.insert(
            id.clone(),
            AsgRt {
                a: assignment.clone(),
                seq: g.seq,
                idx: g.idx,
                timeout_at: now + timeout_ms,
                phase: None,
                acked: false,
            },
        );
        self.write_assignment(&id);
        self.timers.at(now + lease_ms, Timer::Lease(id.clone()));
        self.timers.at(now + timeout_ms, Timer::Timeout(id.clone()));
        let Some(rt) = self.agents.get_mut(agent_id) else {
            return Err(self.missing(format!("routed agent {agent_id}")));
        };
        rt.in_flight.insert(id.clone());
        if rt.poll.is_none() {
            return Err(self.missing(format!("the poll of routed agent {agent_id}")));
        }
        self.circuit_assigned(agent_id, &id, now);
        let rt = self.agents.get_mut(agent_id).expect("checked above");
        let poll = rt.poll.as_mut().expect("checked above");
        poll.grants.push(LeaseGrant {
            assignment,
            capability: g.capability,
            input: g.input,
        });
        let full = poll.grants.len() as u32 >= poll.max
            || rt.in_flight.len() as u32 >= rt.agent.max_concurrency;
        self.pending_polls.insert(agent_id.clone());
        if full {
            self.answer_poll(agent_id);
        }
        tracing::debug!(assignment_id = %id, agent_id = %agent_id, "assigned");
        Ok(())
    }

    /// After an agent frees a slot, let its parked poll (if any) take more work.
    pub(crate) fn slot_freed(&mut self, agent_id: &AgentId) -> Result<(), Error> {
        if let Some(rt) = self.agents.get(agent_id) {
            if rt.poll.is_some() {
                for cap in &rt.agent.capabilities {
                    self.dirty.insert(cap.clone());
                }
            }
        }
        self.stop_if_drained(agent_id)
    }

    /// Agents that have not called for two lease periods are unhealthy: they get no new work
    /// until they call again (their leases expire on their own).
    pub(crate) fn health_sweep(&mut self, now: Millis) -> Result<(), Error> {
        let limit = 2 * self.config.lease.as_millis() as i64;
        let mut silent: Vec<AgentId> = self
            .agents
            .values()
            .filter(|rt| {
                rt.last_seen.is_some_and(|seen| now - seen > limit)
                    && rt.agent.status.accepts_work()
                    && rt.poll.is_none()
            })
            .map(|rt| rt.agent.agent_id.clone())
            .collect();
        silent.sort();
        for id in silent {
            tracing::warn!(agent_id = %id, "agent unhealthy: missed heartbeats");
            self.set_agent_status(&id, AgentStatus::Unhealthy)?;
        }
        Ok(())
    }
}

/// Which leases a call renews.
pub(crate) enum Renew<'a> {
    /// Every lease the agent holds (a heartbeat that lists nothing).
    All,
    /// Only these (the agent listed what it is working on).
    Only(&'a [AssignmentId]),
}

/// The status shown: `busy` is an idle agent with work in flight (derived, never stored, so
/// taking and finishing work writes no agent row).
fn effective_status(rt: &AgentRt) -> AgentStatus {
    match rt.agent.status {
        AgentStatus::Idle if !rt.in_flight.is_empty() => AgentStatus::Busy,
        AgentStatus::Busy if rt.in_flight.is_empty() => AgentStatus::Idle,
        s => s,
    }
}

fn info(rt: &AgentRt, now: Millis) -> AgentInfo {
    AgentInfo {
        agent: rt.agent.clone(),
        status: effective_status(rt),
        in_flight: rt.in_flight.len() as u32,
        last_seen: rt.last_seen,
        circuit: rt.breaker.view(now),
    }
}
