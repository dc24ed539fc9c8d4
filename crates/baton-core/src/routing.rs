//! Routing: which agent gets a subtask. Capability match, health, a closed (or probing)
//! circuit and a free slot are filters; among the rest the rule of the [`RoutingMode`] picks:
//!
//! - **Learned**: the lowest score, an estimate of the time to a successful result from the
//!   agent's decayed success rate and latency *for this capability*, scaled up a little by its
//!   load, so a flaky or slow agent loses work to a reliable fast one even when it is less
//!   loaded, and equals share work by load.
//!   Agents with few samples are judged optimistically (blended with a perfect prior), so a new
//!   agent gets tried. A small share of decisions explores ([`Pick::Explore`], the caller rolls
//!   the dice): it picks uniformly among the other eligible agents, so an agent that recovered
//!   gets noticed.
//! - **RoundRobin**: the next eligible agent by id after the one that got the last subtask of
//!   the capability, ignoring stats (the baseline `baton bench routing` compares with).
//!
//! Either way ties break by agent id, randomness is an argument, and a retry prefers an agent
//! that has not tried the subtask yet, when one is eligible.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{AgentId, Millis};

/// How routing picks among eligible agents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RoutingMode {
    /// By learned success rate and latency per capability, against load, with exploration.
    #[default]
    Learned,
    /// Capability-only round robin over agents with a free slot.
    RoundRobin,
}

impl RoutingMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RoutingMode::Learned => "learned",
            RoutingMode::RoundRobin => "round-robin",
        }
    }
}

impl fmt::Display for RoutingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RoutingMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "learned" => Ok(RoutingMode::Learned),
            "round-robin" | "round_robin" | "roundrobin" => Ok(RoutingMode::RoundRobin),
            other => Err(format!(
                "unknown routing mode {other:?} (expected learned or round-robin)"
            )),
        }
    }
}

/// What an agent's attempts of one capability taught: decayed success rate and latency, and
/// how many attempts they come from. Persisted with the agent.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CapabilityStats {
    /// Exponentially weighted share of attempts that succeeded, 0–1.
    pub success_rate: f64,
    /// Exponentially weighted duration of its attempts (failed ones included), in ms.
    pub latency_ms: f64,
    /// Attempts seen.
    pub samples: u64,
}

impl Default for CapabilityStats {
    fn default() -> Self {
        Self {
            success_rate: 1.0,
            latency_ms: 0.0,
            samples: 0,
        }
    }
}

impl CapabilityStats {
    /// Learn from one attempt that took `elapsed_ms`. The first sample sets the averages.
    pub fn record(&mut self, success: bool, elapsed_ms: Millis) {
        let outcome = if success { 1.0 } else { 0.0 };
        let latency = elapsed_ms.max(0) as f64;
        if self.samples == 0 {
            self.success_rate = outcome;
            self.latency_ms = latency;
        } else {
            self.success_rate = ewma(self.success_rate, outcome).clamp(0.0, 1.0);
            self.latency_ms = ewma(self.latency_ms, latency).max(0.0);
        }
        self.samples = self.samples.saturating_add(1);
    }
}

/// What routing knows of one agent that offers the capability.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate<'a> {
    pub agent_id: &'a AgentId,
    /// Assignments in flight.
    pub in_flight: u32,
    pub max_concurrency: u32,
    /// Healthy, accepting work, circuit closed (or half-open with no probe out).
    pub available: bool,
    /// What its attempts of this capability taught (default when it has none).
    pub stats: CapabilityStats,
    /// This agent ran an earlier attempt of the subtask.
    pub tried_before: bool,
}

/// Weight of the optimistic prior (a perfect, instant agent), in samples: an agent with `n`
/// samples is judged `n / (n + PRIOR_SAMPLES)` on its record.
const PRIOR_SAMPLES: f64 = 3.0;
/// A fixed cost of any attempt (dispatch, round trips), so load still separates agents whose
/// records are equally good, in ms.
const BASE_MS: f64 = 100.0;
/// What a failure costs beyond its own duration (backoff, a new dispatch), in ms.
const RETRY_MS: f64 = 1_000.0;
/// How much a full agent's estimate grows over an idle one's (a quarter): enough to spread
/// work among agents with equal records, small against the gap between a reliable fast agent
/// and a flaky or slow one (2–5×), so the reliable one gets work while it has a free slot.
const LOAD_WEIGHT: f64 = 0.25;
/// Success rates below this are treated as this (an estimate stays finite).
const MIN_SUCCESS: f64 = 0.02;

impl Candidate<'_> {
    fn has_slot(&self) -> bool {
        self.available && self.in_flight < self.max_concurrency
    }

    /// Lower is better: the expected time to a successful result, `(base + latency + (1 −
    /// success) · retry) / success` in ms, with success and latency blended toward a perfect
    /// prior while samples are few, times `1 + load / 4` (load = in flight / max).
    pub fn score(&self) -> f64 {
        let n = self.stats.samples as f64;
        let trust = n / (n + PRIOR_SAMPLES);
        let success = trust * self.stats.success_rate.clamp(0.0, 1.0) + (1.0 - trust);
        let latency = trust * self.stats.latency_ms.max(0.0);
        let success = success.max(MIN_SUCCESS);
        let expected = (BASE_MS + latency + (1.0 - success) * RETRY_MS) / success;
        let load = self.in_flight as f64 / self.max_concurrency.max(1) as f64;
        expected * (1.0 + LOAD_WEIGHT * load)
    }
}

/// How to pick among the eligible candidates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pick<'a> {
    /// The lowest score.
    Best,
    /// Explore: uniformly among the eligible agents other than the best, by `roll` in
    /// `[0, 1)`; the best when it is the only one.
    Explore(f64),
    /// The first eligible agent by id after `after` (wrapping around), ignoring stats.
    RoundRobin { after: Option<&'a AgentId> },
}

/// The agent to route to, if any has a free slot.
pub fn choose<'a>(candidates: &[Candidate<'a>], pick: Pick<'_>) -> Option<&'a AgentId> {
    let fresh_exists = candidates.iter().any(|c| c.has_slot() && !c.tried_before);
    let eligible = || {
        candidates
            .iter()
            .filter(|c| c.has_slot() && (!fresh_exists || !c.tried_before))
    };
    let by_id = |a: &&Candidate<'_>, b: &&Candidate<'_>| a.agent_id.cmp(b.agent_id);
    match pick {
        Pick::RoundRobin { after } => {
            let next =
                after.and_then(|after| eligible().filter(|c| c.agent_id > after).min_by(by_id));
            next.or_else(|| eligible().min_by(by_id))
                .map(|c| c.agent_id)
        }
        Pick::Best | Pick::Explore(_) => {
            let best = eligible().min_by(|a, b| {
                a.score()
                    .total_cmp(&b.score())
                    .then_with(|| a.agent_id.cmp(b.agent_id))
            })?;
            let Pick::Explore(roll) = pick else {
                return Some(best.agent_id);
            };
            let mut others: Vec<&Candidate<'a>> =
                eligible().filter(|c| c.agent_id != best.agent_id).collect();
            if others.is_empty() {
                return Some(best.agent_id);
            }
            others.sort_by(by_id);
            let i = ((roll.clamp(0.0, 1.0) * others.len() as f64) as usize).min(others.len() - 1);
            Some(others[i].agent_id)
        }
    }
}

/// Exponentially weighted moving average used for success rate and latency. A sample weighs
/// a tenth (about the last twenty attempts count): one failure of a reliable agent costs it
/// a little, a lucky streak of a flaky one does not make it look reliable.
pub fn ewma(previous: f64, sample: f64) -> f64 {
    const ALPHA: f64 = 0.1;
    previous + ALPHA * (sample - previous)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record of `samples` attempts at `success` rate and `latency_ms`.
    fn stats(success: f64, latency_ms: f64, samples: u64) -> CapabilityStats {
        CapabilityStats {
            success_rate: success,
            latency_ms,
            samples,
        }
    }

    fn cand(id: &AgentId, in_flight: u32, success: f64) -> Candidate<'_> {
        Candidate {
            agent_id: id,
            in_flight,
            max_concurrency: 4,
            available: true,
            stats: stats(success, 100.0, 50),
            tried_before: false,
        }
    }

    #[test]
    fn between_equal_records_load_decides_then_id() {
        let (a, b, c) = (AgentId::from("a"), AgentId::from("b"), AgentId::from("c"));
        assert_eq!(
            choose(&[cand(&a, 3, 1.0), cand(&b, 1, 1.0)], Pick::Best),
            Some(&b)
        );
        assert_eq!(
            choose(&[cand(&a, 1, 0.5), cand(&b, 1, 1.0)], Pick::Best),
            Some(&b)
        );
        assert_eq!(
            choose(&[cand(&c, 1, 1.0), cand(&b, 1, 1.0)], Pick::Best),
            Some(&b)
        );
    }

    #[test]
    fn a_reliable_fast_agent_wins_even_when_more_loaded() {
        let (fast, slow, flaky) = (
            AgentId::from("fast"),
            AgentId::from("slow"),
            AgentId::from("flaky"),
        );
        let busy_fast = Candidate {
            stats: stats(0.99, 1_000.0, 40),
            ..cand(&fast, 3, 1.0)
        };
        let idle_slow = Candidate {
            stats: stats(0.99, 5_000.0, 40),
            ..cand(&slow, 0, 1.0)
        };
        let idle_flaky = Candidate {
            stats: stats(0.5, 700.0, 40),
            ..cand(&flaky, 0, 1.0)
        };
        let all = [idle_slow.clone(), idle_flaky.clone(), busy_fast.clone()];
        assert_eq!(choose(&all, Pick::Best), Some(&fast));
        // Full, it cannot take more: the flaky one beats the slow one (about 2.3 s expected
        // per success against 4.8 s).
        let full_fast = Candidate {
            in_flight: 4,
            ..busy_fast
        };
        assert_eq!(
            choose(&[idle_slow, idle_flaky, full_fast], Pick::Best),
            Some(&flaky)
        );
    }

    #[test]
    fn few_samples_are_judged_optimistically() {
        let (known, new) = (AgentId::from("known"), AgentId::from("new"));
        let good = Candidate {
            stats: stats(1.0, 1_000.0, 100),
            ..cand(&known, 0, 1.0)
        };
        let unknown = Candidate {
            stats: CapabilityStats::default(),
            ..cand(&new, 2, 1.0)
        };
        assert_eq!(
            choose(&[good.clone(), unknown.clone()], Pick::Best),
            Some(&new)
        );
        // One failure in one attempt is not yet a verdict...
        let one_failure = Candidate {
            stats: stats(0.0, 200.0, 1),
            in_flight: 0,
            ..unknown.clone()
        };
        assert_eq!(choose(&[good.clone(), one_failure], Pick::Best), Some(&new));
        // ...but a record of them is.
        let failing = Candidate {
            stats: stats(0.0, 200.0, 6),
            in_flight: 0,
            ..unknown
        };
        assert_eq!(choose(&[good, failing], Pick::Best), Some(&known));
    }

    #[test]
    fn skips_full_and_unavailable_agents() {
        let (a, b) = (AgentId::from("a"), AgentId::from("b"));
        let mut full = cand(&a, 4, 1.0);
        assert_eq!(choose(std::slice::from_ref(&full), Pick::Best), None);
        full.in_flight = 0;
        full.available = false;
        assert_eq!(
            choose(&[full.clone(), cand(&b, 3, 0.0)], Pick::Best),
            Some(&b)
        );
        assert_eq!(choose(&[full], Pick::RoundRobin { after: None }), None);
        assert_eq!(choose(&[], Pick::Best), None);
        assert_eq!(choose(&[], Pick::Explore(0.5)), None);
    }

    #[test]
    fn a_retry_prefers_a_fresh_agent_but_falls_back() {
        let (a, b) = (AgentId::from("a"), AgentId::from("b"));
        let mut tried = cand(&a, 0, 1.0);
        tried.tried_before = true;
        assert_eq!(
            choose(&[tried.clone(), cand(&b, 3, 0.2)], Pick::Best),
            Some(&b)
        );
        assert_eq!(
            choose(&[tried.clone(), cand(&b, 3, 0.2)], Pick::Explore(0.0)),
            Some(&b),
            "exploring does not bring back an agent that tried"
        );
        assert_eq!(
            choose(
                &[tried.clone(), cand(&b, 3, 0.2)],
                Pick::RoundRobin { after: Some(&a) }
            ),
            Some(&b)
        );
        assert_eq!(choose(std::slice::from_ref(&tried), Pick::Best), Some(&a));
    }

    #[test]
    fn exploring_picks_uniformly_among_the_others_by_the_roll() {
        let ids: Vec<AgentId> = ["a", "b", "c", "d"].map(AgentId::from).into();
        let mut all: Vec<Candidate<'_>> = ids.iter().map(|id| cand(id, 0, 0.5)).collect();
        all[2].stats = stats(1.0, 100.0, 50); // `c` is the best
        assert_eq!(choose(&all, Pick::Best), Some(&ids[2]));
        let explored = |roll| choose(&all, Pick::Explore(roll)).unwrap().as_str();
        assert_eq!(explored(0.0), "a");
        assert_eq!(explored(0.33), "a");
        assert_eq!(explored(0.34), "b");
        assert_eq!(explored(0.7), "d");
        assert_eq!(explored(0.999_999), "d");
        assert_eq!(explored(1.0), "d", "a roll of 1 stays in range");
        // Alone, the best is the only choice.
        assert_eq!(choose(&all[2..3], Pick::Explore(0.5)), Some(&ids[2]));
    }

    #[test]
    fn round_robin_takes_the_next_id_with_a_free_slot_and_wraps() {
        let ids: Vec<AgentId> = ["a", "b", "c"].map(AgentId::from).into();
        let mut all: Vec<Candidate<'_>> = ids.iter().map(|id| cand(id, 0, 1.0)).collect();
        // Stats are ignored: `b` is terrible and still gets its turn.
        all[1].stats = stats(0.0, 60_000.0, 100);
        let next = |after: Option<&AgentId>, all: &[Candidate<'_>]| {
            choose(all, Pick::RoundRobin { after }).unwrap().to_string()
        };
        assert_eq!(next(None, &all), "a");
        assert_eq!(next(Some(&ids[0]), &all), "b");
        assert_eq!(next(Some(&ids[1]), &all), "c");
        assert_eq!(next(Some(&ids[2]), &all), "a");
        all[1].in_flight = 4;
        assert_eq!(next(Some(&ids[0]), &all), "c", "a full agent is skipped");
        let gone = AgentId::from("bb");
        assert_eq!(
            next(Some(&gone), &all),
            "c",
            "the cursor need not be eligible"
        );
    }

    #[test]
    fn stats_start_from_the_first_sample_then_decay() {
        let mut s = CapabilityStats::default();
        s.record(false, 400);
        assert_eq!(s, stats(0.0, 400.0, 1));
        s.record(true, 900);
        assert!((s.success_rate - 0.1).abs() < 1e-9);
        assert!((s.latency_ms - 450.0).abs() < 1e-9);
        assert_eq!(s.samples, 2);
        s.record(true, -5);
        assert!(s.latency_ms >= 0.0);
    }

    #[test]
    fn ewma_moves_toward_samples() {
        assert!((ewma(1.0, 0.0) - 0.9).abs() < 1e-9);
    }

    #[test]
    fn routing_modes_parse_and_print() {
        for mode in [RoutingMode::Learned, RoutingMode::RoundRobin] {
            assert_eq!(mode.to_string().parse::<RoutingMode>(), Ok(mode));
        }
        assert!("fastest".parse::<RoutingMode>().is_err());
        assert_eq!(RoutingMode::default(), RoutingMode::Learned);
    }
}
