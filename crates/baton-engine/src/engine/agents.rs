//! Agents: registration, draining, authentication, lease polls, dispatch (routing a ready
//! subtask to a parked agent) and health.

use baton_core::routing::{self, Candidate};
use baton_core::{
    Agent, AgentId, AgentStatus, Assignment, AssignmentId, AssignmentState, Millis, SubtaskState,
};
use serde_json::{Map, Value};

use super::{assignment_id, AgentRt, AsgRt, Engine, Poll};
use crate::handle::{AgentInfo, AgentSpec, HeartbeatInfo, LeaseGrant, Registered, Reply};
use crate::timers::Timer;
use crate::{hash_token, Error};

impl Engine {
    pub(crate) fn register(&mut self, spec: AgentSpec, now: Millis) -> Result<Registered, Error> {
        let agent_id = AgentId(format!("agent-{}", uuid::Uuid::now_v7().simple()));
        let token = format!("bt_{}", uuid::Uuid::new_v4().simple());
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
        };
        tracing::info!(agent_id = %agent_id, name = %agent.name, capabilities = ?agent.capabilities, "agent registered");
        self.add_agent(agent.clone(), Some(now));
        self.write_agent(&agent_id);
        Ok(Registered { agent, token })
    }

    /// Put an agent in the indexes and unblock what it can serve.
    pub(crate) fn add_agent(&mut self, agent: Agent, last_seen: Option<Millis>) {
        let id = agent.agent_id.clone();
        self.tokens.insert(agent.token_hash.clone(), id.clone());
        let accepts = agent.status.accepts_work() || agent.status == AgentStatus::Unhealthy;
        let caps = agent.capabilities.clone();
        self.agents.insert(
            id.clone(),
            AgentRt {
                agent,
                in_flight: Default::default(),
                last_seen,
                unhealthy: false,
                poll: None,
                revoked: Vec::new(),
                success_rate: 1.0,
                latency_ms: 0.0,
            },
        );
        if accepts {
            for cap in caps {
                self.capable
                    .entry(cap.clone())
                    .or_default()
                    .insert(id.clone());
                self.unblock(&cap);
            }
        }
    }

    /// Every blocked subtask of `cap` becomes ready (an agent for it appeared).
    fn unblock(&mut self, cap: &str) {
        let Some(keys) = self.blocked.remove(cap) else {
            return;
        };
        let now = crate::now_ms();
        for key in keys {
            let still_blocked = self
                .sub(key.seq, key.idx)
                .is_some_and(|s| s.sub.state == SubtaskState::Blocked);
            if still_blocked {
                self.make_ready(key.seq, key.idx, now);
            }
        }
    }

    pub(crate) fn drain(&mut self, agent_id: &AgentId, now: Millis) -> Result<AgentInfo, Error> {
        let rt = self
            .agents
            .get_mut(agent_id)
            .ok_or_else(|| Error::NotFound(format!("agent {agent_id:?} not found")))?;
        if matches!(
            rt.agent.status,
            AgentStatus::Draining | AgentStatus::Stopped
        ) {
            return Ok(info(rt));
        }
        rt.agent.status = rt
            .agent
            .status
            .transition(AgentStatus::Draining)
            .map_err(|e| Error::Conflict(e.to_string()))?;
        if let Some(poll) = rt.poll.take() {
            let _ = poll.reply.send(Ok(poll.grants));
        }
        let caps = rt.agent.capabilities.clone();
        tracing::info!(agent_id = %agent_id, "agent draining");
        for cap in &caps {
            if let Some(set) = self.capable.get_mut(cap) {
                set.remove(agent_id);
            }
            if let Some(set) = self.parked.get_mut(cap) {
                set.remove(agent_id);
            }
            self.block_if_orphaned(cap, now);
        }
        self.stop_if_drained(agent_id);
        self.write_agent(agent_id);
        Ok(info(&self.agents[agent_id]))
    }

    /// A draining agent with nothing in flight is stopped.
    pub(crate) fn stop_if_drained(&mut self, agent_id: &AgentId) {
        let Some(rt) = self.agents.get_mut(agent_id) else {
            return;
        };
        if rt.agent.status == AgentStatus::Draining && rt.in_flight.is_empty() {
            rt.agent.status = AgentStatus::Stopped;
            tracing::info!(agent_id = %agent_id, "agent stopped");
            self.write_agent(agent_id);
        }
    }

    /// When no agent offers `cap` any more, its ready subtasks become blocked.
    fn block_if_orphaned(&mut self, cap: &str, now: Millis) {
        if self.capable.get(cap).is_some_and(|s| !s.is_empty()) {
            return;
        }
        let Some(keys) = self.ready.remove(cap) else {
            return;
        };
        for key in keys {
            let is_ready = self
                .sub(key.seq, key.idx)
                .is_some_and(|s| s.sub.state == SubtaskState::Ready);
            if is_ready {
                self.enqueue_ready(key.seq, key.idx, now);
            }
        }
    }

    pub(crate) fn agent_infos(&self) -> Vec<AgentInfo> {
        let mut list: Vec<AgentInfo> = self.agents.values().map(info).collect();
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
    pub(crate) fn touch(
        &mut self,
        agent_id: Option<&AgentId>,
        token_hash: &str,
        renew: Renew<'_>,
        now: Millis,
    ) -> Result<(AgentId, Option<Millis>), Error> {
        let id = self.authenticate(agent_id, token_hash)?;
        let expires = now + self.config.lease.as_millis() as i64;
        let rt = self.agents.get_mut(&id).ok_or(Error::Unauthorized)?;
        rt.last_seen = Some(now);
        rt.unhealthy = false;
        let mut renewed = false;
        let mut renew_one = |a: &AssignmentId| {
            if let Some(asg) = self.assignments.get_mut(a) {
                asg.a.lease_expires_at = expires;
                renewed = true;
            }
        };
        match renew {
            Renew::All => rt.in_flight.iter().for_each(&mut renew_one),
            Renew::Only(held) => held
                .iter()
                .filter(|a| rt.in_flight.contains(*a))
                .for_each(&mut renew_one),
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
        let rt = self.agents.get_mut(&id).ok_or(Error::Unauthorized)?;
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
    pub(crate) fn dispatch(&mut self, now: Millis) {
        let dirty: Vec<String> = self.dirty.drain().collect();
        for cap in dirty {
            self.dispatch_capability(&cap, now);
        }
        let polls: Vec<AgentId> = self.pending_polls.drain().collect();
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
    }

    fn dispatch_capability(&mut self, cap: &str, now: Millis) {
        loop {
            let Some(&key) = self.ready.get(cap).and_then(|q| q.first()) else {
                return;
            };
            let state_ok = self
                .sub(key.seq, key.idx)
                .is_some_and(|s| s.sub.state == SubtaskState::Ready);
            if !state_ok {
                // Cancelled or otherwise moved on since it was queued.
                self.ready.get_mut(cap).map(|q| q.remove(&key));
                continue;
            }
            let Some(agent_id) = self.route(cap, key.seq, key.idx) else {
                return;
            };
            self.ready.get_mut(cap).map(|q| q.remove(&key));
            self.assign(key.seq, key.idx, &agent_id, now);
        }
    }

    /// The best parked agent for a subtask, by the core's routing rule.
    fn route(&mut self, cap: &str, seq: i64, idx: u32) -> Option<AgentId> {
        let parked = self.parked.get(cap)?;
        let tried = &self.sub(seq, idx)?.tried;
        let mut stale = Vec::new();
        let candidates: Vec<Candidate<'_>> = parked
            .iter()
            .filter_map(|id| {
                let a = self.agents.get(id)?;
                let poll = a.poll.as_ref()?;
                if poll.reply.is_closed() {
                    stale.push(id.clone());
                    return None;
                }
                let room = (poll.max as usize).saturating_sub(poll.grants.len()) as u32;
                Some(Candidate {
                    agent_id: id,
                    in_flight: a.in_flight.len() as u32,
                    max_concurrency: a.agent.max_concurrency.min(a.in_flight.len() as u32 + room),
                    available: a.agent.status.accepts_work() && !a.unhealthy && room > 0,
                    success_rate: a.success_rate,
                    latency_ms: a.latency_ms,
                    tried_before: tried.contains(id),
                })
            })
            .collect();
        let chosen = routing::choose(&candidates).cloned();
        let parked = self.parked.get_mut(cap)?;
        for id in stale {
            parked.remove(&id);
        }
        chosen
    }

    /// `ready → assigned` on `agent_id`: a new attempt with a fresh lease.
    fn assign(&mut self, seq: i64, idx: u32, agent_id: &AgentId, now: Millis) {
        let lease_ms = self.config.lease.as_millis() as i64;
        let (task_id, timeout_ms) = {
            let t = &self.tasks[&seq].task;
            (t.task_id.clone(), t.timeout_ms as i64)
        };
        if self
            .set_state(
                seq,
                idx,
                SubtaskState::Assigned,
                Some(agent_id.clone()),
                None,
                now,
            )
            .is_err()
        {
            return;
        }
        let (attempt, subtask_id, capability, input) = {
            let rt = self.tasks.get_mut(&seq).expect("task exists");
            let s = &mut rt.subs[idx as usize];
            s.sub.attempts += 1;
            s.sub.assigned_agent = Some(agent_id.clone());
            s.tried.push(agent_id.clone());
            let attempt = s.sub.attempts;
            let subtask_id = s.sub.subtask_id.clone();
            let capability = s.sub.capability.clone();
            let deps = s.sub.depends_on.clone();
            let mut input = match &s.sub.input {
                Value::Object(m) => m.clone(),
                other => Map::from_iter([("input".to_owned(), other.clone())]),
            };
            let mut dependencies = Map::new();
            for dep in deps {
                if let Some(d) = rt.subs.iter().find(|o| o.sub.subtask_id == dep) {
                    dependencies.insert(
                        dep.to_string(),
                        d.sub.outputs.clone().unwrap_or(Value::Null),
                    );
                }
            }
            input.insert("dependencies".into(), Value::Object(dependencies));
            (attempt, subtask_id, capability, Value::Object(input))
        };
        let id = assignment_id(seq, idx, attempt);
        let assignment = Assignment {
            assignment_id: id.clone(),
            task_id,
            subtask_id,
            agent_id: agent_id.clone(),
            attempt,
            state: AssignmentState::Active,
            lease_expires_at: now + lease_ms,
            created_at: now,
            finished_at: None,
        };
        if let Some(rt) = self.tasks.get_mut(&seq) {
            rt.assignments.push(id.clone());
            rt.subs[idx as usize].current = Some(id.clone());
        }
        self.write_subtask(seq, idx);
        self.assignments.insert(
            id.clone(),
            AsgRt {
                a: assignment.clone(),
                seq,
                idx,
                timeout_at: now + timeout_ms,
                phase: None,
            },
        );
        self.write_assignment(&id);
        self.timers.at(now + lease_ms, Timer::Lease(id.clone()));
        self.timers.at(now + timeout_ms, Timer::Timeout(id.clone()));
        let rt = self.agents.get_mut(agent_id).expect("routed agent exists");
        rt.in_flight.insert(id.clone());
        let poll = rt.poll.as_mut().expect("routed agent has a poll");
        poll.grants.push(LeaseGrant {
            assignment,
            capability,
            input,
        });
        let full = poll.grants.len() as u32 >= poll.max
            || rt.in_flight.len() as u32 >= rt.agent.max_concurrency;
        self.pending_polls.insert(agent_id.clone());
        if full {
            self.answer_poll(agent_id);
        }
        tracing::debug!(assignment_id = %id, agent_id = %agent_id, "assigned");
    }

    /// After an agent frees a slot, let its parked poll (if any) take more work.
    pub(crate) fn slot_freed(&mut self, agent_id: &AgentId) {
        if let Some(rt) = self.agents.get(agent_id) {
            if rt.poll.is_some() {
                for cap in &rt.agent.capabilities {
                    self.dirty.insert(cap.clone());
                }
            }
        }
        self.stop_if_drained(agent_id);
    }

    /// Agents that have not called for two lease periods are unhealthy: they get no new work
    /// until they call again (their leases expire on their own).
    pub(crate) fn health_sweep(&mut self, now: Millis) {
        let limit = 2 * self.config.lease.as_millis() as i64;
        for rt in self.agents.values_mut() {
            let silent = rt.last_seen.is_some_and(|seen| now - seen > limit);
            if silent && !rt.unhealthy && rt.agent.status.accepts_work() && rt.poll.is_none() {
                rt.unhealthy = true;
                tracing::warn!(agent_id = %rt.agent.agent_id, "agent unhealthy: missed heartbeats");
            }
        }
    }
}

/// Which leases a call renews.
pub(crate) enum Renew<'a> {
    /// Every lease the agent holds (a heartbeat that lists nothing).
    All,
    /// Only these (the agent listed what it is working on).
    Only(&'a [AssignmentId]),
}

fn effective_status(rt: &AgentRt) -> AgentStatus {
    match rt.agent.status {
        AgentStatus::Idle | AgentStatus::Busy if rt.unhealthy => AgentStatus::Unhealthy,
        AgentStatus::Idle if !rt.in_flight.is_empty() => AgentStatus::Busy,
        AgentStatus::Busy if rt.in_flight.is_empty() => AgentStatus::Idle,
        s => s,
    }
}

fn info(rt: &AgentRt) -> AgentInfo {
    AgentInfo {
        agent: rt.agent.clone(),
        status: effective_status(rt),
        in_flight: rt.in_flight.len() as u32,
        last_seen: rt.last_seen,
    }
}
