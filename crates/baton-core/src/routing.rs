//! Routing: which agent gets a subtask. Capability match, health and a free slot are
//! filters; among the rest the lowest score wins (load, recent failure rate, latency), ties
//! broken by agent id so the choice is deterministic. A retry prefers an agent that has not
//! tried the subtask yet, when one is available.

use crate::AgentId;

/// What routing knows of one agent that offers the capability.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate<'a> {
    pub agent_id: &'a AgentId,
    /// Assignments in flight.
    pub in_flight: u32,
    pub max_concurrency: u32,
    /// Healthy, accepting work, circuit closed.
    pub available: bool,
    /// Recent success rate for this capability, 0–1.
    pub success_rate: f64,
    /// Recent mean latency for this capability, in milliseconds.
    pub latency_ms: f64,
    /// This agent ran an earlier attempt of the subtask.
    pub tried_before: bool,
}

impl Candidate<'_> {
    fn has_slot(&self) -> bool {
        self.available && self.in_flight < self.max_concurrency
    }

    /// Lower is better: load dominates, then failures, then latency (seconds, saturating).
    pub fn score(&self) -> f64 {
        let load = self.in_flight as f64 / self.max_concurrency.max(1) as f64;
        let failures = 1.0 - self.success_rate.clamp(0.0, 1.0);
        let latency = (self.latency_ms.max(0.0) / 1000.0).min(60.0) / 60.0;
        load + 0.5 * failures + 0.25 * latency
    }
}

/// The agent to route to, if any has a free slot.
pub fn choose<'a>(candidates: &[Candidate<'a>]) -> Option<&'a AgentId> {
    let eligible = candidates.iter().filter(|c| c.has_slot());
    let fresh_exists = candidates.iter().any(|c| c.has_slot() && !c.tried_before);
    eligible
        .filter(|c| !fresh_exists || !c.tried_before)
        .min_by(|a, b| {
            a.score()
                .total_cmp(&b.score())
                .then_with(|| a.agent_id.cmp(b.agent_id))
        })
        .map(|c| c.agent_id)
}

/// Exponentially weighted moving average used for success rate and latency.
pub fn ewma(previous: f64, sample: f64) -> f64 {
    const ALPHA: f64 = 0.2;
    previous + ALPHA * (sample - previous)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(id: &AgentId, in_flight: u32, success: f64) -> Candidate<'_> {
        Candidate {
            agent_id: id,
            in_flight,
            max_concurrency: 4,
            available: true,
            success_rate: success,
            latency_ms: 100.0,
            tried_before: false,
        }
    }

    #[test]
    fn prefers_less_loaded_then_more_successful_then_id() {
        let (a, b, c) = (AgentId::from("a"), AgentId::from("b"), AgentId::from("c"));
        assert_eq!(choose(&[cand(&a, 3, 1.0), cand(&b, 1, 1.0)]), Some(&b));
        assert_eq!(choose(&[cand(&a, 1, 0.5), cand(&b, 1, 1.0)]), Some(&b));
        assert_eq!(choose(&[cand(&c, 1, 1.0), cand(&b, 1, 1.0)]), Some(&b));
    }

    #[test]
    fn skips_full_and_unavailable_agents() {
        let (a, b) = (AgentId::from("a"), AgentId::from("b"));
        let mut full = cand(&a, 4, 1.0);
        assert_eq!(choose(std::slice::from_ref(&full)), None);
        full.in_flight = 0;
        full.available = false;
        assert_eq!(choose(&[full, cand(&b, 3, 0.0)]), Some(&b));
        assert_eq!(choose(&[]), None);
    }

    #[test]
    fn a_retry_prefers_a_fresh_agent_but_falls_back() {
        let (a, b) = (AgentId::from("a"), AgentId::from("b"));
        let mut tried = cand(&a, 0, 1.0);
        tried.tried_before = true;
        assert_eq!(choose(&[tried.clone(), cand(&b, 3, 0.2)]), Some(&b));
        assert_eq!(choose(std::slice::from_ref(&tried)), Some(&a));
    }

    #[test]
    fn ewma_moves_toward_samples() {
        assert!((ewma(1.0, 0.0) - 0.8).abs() < 1e-9);
    }
}
