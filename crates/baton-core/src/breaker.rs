//! The per-agent circuit breaker, as a pure state machine: time is an argument, and the
//! engine tells it what happened (an assignment made, an attempt's outcome, an assignment
//! abandoned without one).
//!
//! - **Closed**: work flows. Every failure (a failed attempt, a lost lease, a timeout) counts;
//!   any success resets the count. `policy.failures` consecutive failures open it.
//! - **Open** until `now + policy.cooldown_ms`: no assignment at all.
//! - **Half-open** once the cooldown is over: exactly one assignment, the probe, may go out.
//!   Its success closes the circuit (count reset); its failure opens it for another cooldown.
//!   A probe that ends without an outcome (its task was cancelled) frees the probe slot.
//!
//! Outcomes of work handed out before the circuit opened still reset or count, but only the
//! probe moves an open circuit.
//!
//! Invariant (checked by a property test): while half-open, at most one probe is in flight,
//! and nothing is assigned while open.

use serde::{Deserialize, Serialize};

use crate::{AssignmentId, Millis};

/// When a circuit opens and how long it stays open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive failures that open the circuit (at least 1).
    pub failures: u32,
    /// How long an open circuit refuses work before a probe may go.
    pub cooldown_ms: Millis,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            failures: 5,
            cooldown_ms: 30_000,
        }
    }
}

/// The state a circuit shows at some instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }
}

impl std::fmt::Display for CircuitState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a circuit shows: its state, the failure count, and the end of the cooldown while open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CircuitView {
    pub state: CircuitState,
    pub consecutive_failures: u32,
    /// Set while `open`.
    pub open_until: Option<Millis>,
}

/// One agent's circuit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Breaker {
    consecutive_failures: u32,
    /// Set from the moment it opens until a probe succeeds; half-open once `now` reaches it.
    open_until: Option<Millis>,
    /// The probe in flight while half-open.
    probe: Option<AssignmentId>,
}

impl Breaker {
    /// The state at `now`.
    pub fn state(&self, now: Millis) -> CircuitState {
        match self.open_until {
            None => CircuitState::Closed,
            Some(until) if now < until => CircuitState::Open,
            Some(_) => CircuitState::HalfOpen,
        }
    }

    pub fn view(&self, now: Millis) -> CircuitView {
        let state = self.state(now);
        CircuitView {
            state,
            consecutive_failures: self.consecutive_failures,
            open_until: self.open_until.filter(|_| state == CircuitState::Open),
        }
    }

    /// Whether an assignment may go to the agent at `now`: always when closed, never when
    /// open, and when half-open only while no probe is out.
    pub fn allows(&self, now: Millis) -> bool {
        match self.state(now) {
            CircuitState::Closed => true,
            CircuitState::Open => false,
            CircuitState::HalfOpen => self.probe.is_none(),
        }
    }

    /// The probe in flight, if any.
    pub fn probe(&self) -> Option<&AssignmentId> {
        self.probe.as_ref()
    }

    /// An assignment went to the agent (the caller checked [`Breaker::allows`]). Returns
    /// whether it is the probe of a half-open circuit.
    pub fn assigned(&mut self, id: &AssignmentId, now: Millis) -> bool {
        if self.state(now) == CircuitState::HalfOpen && self.probe.is_none() {
            self.probe = Some(id.clone());
            true
        } else {
            false
        }
    }

    /// An attempt of the agent ended with `success` or not (a failure, a lost lease, a
    /// timeout). Returns the state it moved from and to, when it moved.
    pub fn outcome(
        &mut self,
        id: &AssignmentId,
        success: bool,
        now: Millis,
        policy: &BreakerPolicy,
    ) -> Option<(CircuitState, CircuitState)> {
        let before = self.state(now);
        let was_probe = self.probe.as_ref() == Some(id);
        if success {
            self.consecutive_failures = 0;
            if was_probe {
                self.probe = None;
                self.open_until = None;
            }
        } else {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            let trips = before == CircuitState::Closed
                && self.consecutive_failures >= policy.failures.max(1);
            if was_probe || trips {
                self.probe = None;
                self.open_until = Some(now.saturating_add(policy.cooldown_ms.max(0)));
            }
        }
        let after = self.state(now);
        (before != after || (was_probe && !success)).then_some((before, after))
    }

    /// An assignment ended without an outcome (cancelled): if it was the probe, another may go.
    pub fn abandoned(&mut self, id: &AssignmentId) {
        if self.probe.as_ref() == Some(id) {
            self.probe = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const POLICY: BreakerPolicy = BreakerPolicy {
        failures: 3,
        cooldown_ms: 1_000,
    };

    fn id(n: u32) -> AssignmentId {
        AssignmentId(format!("as-{n}"))
    }

    #[test]
    fn consecutive_failures_open_it_and_a_success_in_between_resets_the_count() {
        let mut b = Breaker::default();
        assert_eq!(b.outcome(&id(1), false, 0, &POLICY), None);
        assert_eq!(b.outcome(&id(2), false, 0, &POLICY), None);
        assert_eq!(b.outcome(&id(3), true, 0, &POLICY), None);
        assert_eq!(b.view(0).consecutive_failures, 0);
        b.outcome(&id(4), false, 10, &POLICY);
        b.outcome(&id(5), false, 10, &POLICY);
        let moved = b.outcome(&id(6), false, 10, &POLICY);
        assert_eq!(moved, Some((CircuitState::Closed, CircuitState::Open)));
        assert_eq!(
            b.view(10),
            CircuitView {
                state: CircuitState::Open,
                consecutive_failures: 3,
                open_until: Some(1_010),
            }
        );
        assert!(!b.allows(1_009));
    }

    #[test]
    fn after_the_cooldown_one_probe_goes_and_its_success_closes_it() {
        let mut b = Breaker::default();
        for n in 0..3 {
            b.outcome(&id(n), false, 0, &POLICY);
        }
        assert_eq!(b.state(999), CircuitState::Open);
        assert_eq!(b.state(1_000), CircuitState::HalfOpen);
        assert_eq!(b.view(1_000).open_until, None, "shown only while open");
        assert!(b.allows(1_000));
        assert!(b.assigned(&id(10), 1_000));
        assert!(!b.allows(1_000), "one probe at a time");
        // An older attempt's success resets the count but does not close the circuit.
        assert_eq!(b.outcome(&id(2), true, 1_100, &POLICY), None);
        assert_eq!(b.state(1_100), CircuitState::HalfOpen);
        let moved = b.outcome(&id(10), true, 1_200, &POLICY);
        assert_eq!(moved, Some((CircuitState::HalfOpen, CircuitState::Closed)));
        assert_eq!(b, Breaker::default());
    }

    #[test]
    fn a_failed_probe_reopens_it_for_another_cooldown() {
        let mut b = Breaker::default();
        for n in 0..3 {
            b.outcome(&id(n), false, 0, &POLICY);
        }
        assert!(b.assigned(&id(10), 1_500));
        let moved = b.outcome(&id(10), false, 1_700, &POLICY);
        assert_eq!(moved, Some((CircuitState::HalfOpen, CircuitState::Open)));
        assert_eq!(b.view(1_700).open_until, Some(2_700));
        assert_eq!(b.view(1_700).consecutive_failures, 4);
        assert!(!b.allows(2_699));
        assert!(b.allows(2_700));
    }

    #[test]
    fn an_abandoned_probe_frees_the_slot() {
        let mut b = Breaker::default();
        for n in 0..3 {
            b.outcome(&id(n), false, 0, &POLICY);
        }
        assert!(b.assigned(&id(10), 1_000));
        b.abandoned(&id(9));
        assert!(!b.allows(1_000));
        b.abandoned(&id(10));
        assert!(b.allows(1_000));
        assert_eq!(b.state(1_000), CircuitState::HalfOpen);
    }

    #[test]
    fn failures_while_open_count_but_do_not_extend_the_cooldown() {
        let mut b = Breaker::default();
        for n in 0..3 {
            b.outcome(&id(n), false, 0, &POLICY);
        }
        assert_eq!(b.outcome(&id(3), false, 500, &POLICY), None);
        assert_eq!(b.view(500).open_until, Some(1_000));
        assert_eq!(b.view(500).consecutive_failures, 4);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Wait(Millis),
        Assign,
        /// The outcome of the in-flight assignment at this position (modulo their number).
        Outcome(usize, bool),
        Abandon(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0i64..1_500).prop_map(Op::Wait),
            Just(Op::Assign),
            (any::<usize>(), any::<bool>()).prop_map(|(i, s)| Op::Outcome(i, s)),
            any::<usize>().prop_map(Op::Abandon),
        ]
    }

    proptest! {
        /// Whatever happens, nothing is assigned while open, and a half-open circuit never
        /// has two probes out at once.
        #[test]
        fn never_two_probes_at_once(ops in prop::collection::vec(op(), 0..200)) {
            let mut b = Breaker::default();
            let mut now: Millis = 0;
            let mut next = 0u32;
            // In flight: (id, made as a probe).
            let mut flying: Vec<(AssignmentId, bool)> = Vec::new();
            for op in ops {
                match op {
                    Op::Wait(ms) => now += ms,
                    Op::Assign => {
                        if b.allows(now) {
                            let state = b.state(now);
                            prop_assert_ne!(state, CircuitState::Open);
                            next += 1;
                            let probe = b.assigned(&id(next), now);
                            prop_assert_eq!(probe, state == CircuitState::HalfOpen);
                            flying.push((id(next), probe));
                        } else {
                            prop_assert_ne!(b.state(now), CircuitState::Closed);
                        }
                    }
                    Op::Outcome(i, success) if !flying.is_empty() => {
                        let (a, _) = flying.remove(i % flying.len());
                        b.outcome(&a, success, now, &POLICY);
                    }
                    Op::Abandon(i) if !flying.is_empty() => {
                        let (a, _) = flying.remove(i % flying.len());
                        b.abandoned(&a);
                    }
                    Op::Outcome(..) | Op::Abandon(_) => {}
                }
                let probes = flying.iter().filter(|(_, p)| *p).count();
                prop_assert!(probes <= 1, "{probes} probes in flight");
                if probes == 1 {
                    prop_assert!(!b.allows(now) || b.state(now) == CircuitState::Closed);
                }
            }
        }
    }
}
