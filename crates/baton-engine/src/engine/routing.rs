//! Routing in the loop: which parked agent gets a ready subtask (the core's rule, in the
//! configured [`RoutingMode`]), what every attempt's outcome teaches (per agent and
//! capability), the agents' circuit breakers, and writing what was learned.
//!
//! Invariants:
//! - Learning never writes on the path of a completion: an outcome only marks its agent's
//!   stats dirty; the health sweep writes dirty agents at most every [`STATS_WRITE_MS`]
//!   (and the last flush before the loop stops writes the rest). A crash loses at most those
//!   few seconds of learning, never a state change.
//! - Exploration draws from its own generator, seeded from the configured seed, so routing
//!   stays reproducible without shifting the ids, tokens and jitter drawn from the main one.
//! - An open circuit gets no assignment; a half-open one gets exactly one (the probe).

use baton_core::breaker::CircuitState;
use baton_core::routing::{self, Candidate, CapabilityStats, Pick, RoutingMode};
use baton_core::{AgentId, AssignmentId, AssignmentKind, Millis};
use rand::Rng;

use super::{AgentRt, Engine};
use crate::timers::Timer;

/// How often, at most, learned stats are written with their agents' rows.
pub(crate) const STATS_WRITE_MS: Millis = 5_000;

impl AgentRt {
    /// Whether its circuit lets an assignment through at `now`. A probe that left without
    /// an outcome (its task was cancelled) no longer holds the half-open slot.
    fn circuit_allows(&self, now: Millis) -> bool {
        self.breaker.allows(now)
            || (self.breaker.state(now) == CircuitState::HalfOpen
                && self
                    .breaker
                    .probe()
                    .is_some_and(|p| !self.in_flight.contains(p)))
    }
}

impl Engine {
    /// The parked agent a subtask of `cap` goes to, by the configured rule, if any can take it;
    /// never `exclude` (the author of the output a verification checks).
    pub(crate) fn route(
        &mut self,
        cap: &str,
        seq: i64,
        idx: u32,
        exclude: Option<&AgentId>,
        now: Millis,
    ) -> Option<AgentId> {
        let parked = self.parked.get(cap)?;
        // Only a first attempt explores: a retry has already cost its task one attempt and
        // goes to the best agent that has not tried it.
        let first_attempt = self.sub(seq, idx)?.sub.attempts == 0;
        let pick_roll = match self.config.routing {
            RoutingMode::Learned if parked.len() > 1 && first_attempt => {
                let explore = self.routing_rng.gen::<f64>() < self.config.explore_share;
                let roll = self.routing_rng.gen::<f64>();
                explore.then_some(roll)
            }
            _ => None,
        };
        let parked = self.parked.get(cap)?;
        let tried = &self.sub(seq, idx)?.tried;
        let mut stale = Vec::new();
        let candidates: Vec<Candidate<'_>> = parked
            .iter()
            .filter(|id| Some(*id) != exclude)
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
                    available: a.agent.status.accepts_work() && room > 0 && a.circuit_allows(now),
                    stats: a.agent.stats.get(cap).copied().unwrap_or_default(),
                    tried_before: tried.contains(id),
                })
            })
            .collect();
        let pick = match (self.config.routing, pick_roll) {
            (RoutingMode::RoundRobin, _) => Pick::RoundRobin {
                after: self.rr_cursor.get(cap),
            },
            (RoutingMode::Learned, Some(roll)) => Pick::Explore(roll),
            (RoutingMode::Learned, None) => Pick::Best,
        };
        let chosen = routing::choose(&candidates, pick).cloned();
        if let Some(parked) = self.parked.get_mut(cap) {
            for id in stale {
                parked.remove(&id);
            }
        }
        if let (RoutingMode::RoundRobin, Some(chosen)) = (self.config.routing, &chosen) {
            match self.rr_cursor.get_mut(cap) {
                Some(cursor) => cursor.clone_from(chosen),
                None => {
                    self.rr_cursor.insert(cap.to_owned(), chosen.clone());
                }
            }
        }
        chosen
    }

    /// An assignment went to `agent_id`: it may be its circuit's probe.
    pub(crate) fn circuit_assigned(&mut self, agent_id: &AgentId, id: &AssignmentId, now: Millis) {
        let Some(rt) = self.agents.get_mut(agent_id) else {
            return;
        };
        if let Some(probe) = rt.breaker.probe().cloned() {
            if &probe != id && !rt.in_flight.contains(&probe) {
                rt.breaker.abandoned(&probe);
            }
        }
        if rt.breaker.assigned(id, now) {
            tracing::info!(agent_id = %agent_id, assignment_id = %id, "circuit half-open: probe sent");
        }
    }

    /// Learn from one attempt of assignment `id` on `agent_id`, which started at `started`
    /// and ended now with `success` or not (failed, lost, timed out): the agent's stats for
    /// the subtask's capability and its circuit.
    pub(crate) fn record_outcome(
        &mut self,
        id: &AssignmentId,
        agent_id: &AgentId,
        success: bool,
        started: Millis,
        now: Millis,
    ) {
        let policy = self.config.breaker();
        let Some((seq, idx, kind)) = self.assignments.get(id).map(|a| (a.seq, a.idx, a.a.kind))
        else {
            return;
        };
        // A verification ran under the verifier's capability, not the work's.
        let verifier = match kind {
            AssignmentKind::Verification => self.verifier_capability(seq, idx),
            AssignmentKind::Work => None,
        };
        let Some(cap) = verifier.as_deref().or_else(|| {
            self.tasks
                .get(&seq)
                .and_then(|rt| rt.subs.get(idx as usize))
                .map(|s| s.sub.capability.as_str())
        }) else {
            return;
        };
        let Some(rt) = self.agents.get_mut(agent_id) else {
            return;
        };
        let elapsed = now - started;
        match rt.agent.stats.get_mut(cap) {
            Some(stats) => stats.record(success, elapsed),
            None => {
                let mut stats = CapabilityStats::default();
                stats.record(success, elapsed);
                rt.agent.stats.insert(cap.to_owned(), stats);
            }
        }
        rt.stats_dirty = true;
        let Some((from, to)) = rt.breaker.outcome(id, success, now, &policy) else {
            return;
        };
        let failures = rt.breaker.view(now).consecutive_failures;
        if to == CircuitState::Open {
            tracing::warn!(agent_id = %agent_id, from = %from, failures, "circuit open");
            self.timers.at(
                now + policy.cooldown_ms,
                Timer::CircuitCooled(agent_id.clone()),
            );
        } else {
            tracing::info!(agent_id = %agent_id, from = %from, to = %to, "circuit");
        }
    }

    /// An open circuit's cooldown may be over: its agent's parked poll may take a probe.
    pub(crate) fn circuit_cooled(&mut self, agent_id: &AgentId, now: Millis) {
        let Some(rt) = self.agents.get(agent_id) else {
            return;
        };
        if rt.breaker.state(now) == CircuitState::HalfOpen && rt.poll.is_some() {
            self.dirty.extend(rt.agent.capabilities.iter().cloned());
        }
    }

    /// Write the agents whose stats changed, at most every [`STATS_WRITE_MS`] unless `now_anyway`.
    pub(crate) fn write_learned_stats(&mut self, now: Millis, now_anyway: bool) {
        if !now_anyway && now < self.stats_written_at + STATS_WRITE_MS {
            return;
        }
        self.stats_written_at = now;
        let mut dirty: Vec<AgentId> = self
            .agents
            .values()
            .filter(|rt| rt.stats_dirty)
            .map(|rt| rt.agent.agent_id.clone())
            .collect();
        dirty.sort();
        for id in dirty {
            self.write_agent(&id);
        }
    }
}
