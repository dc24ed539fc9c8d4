//! Deadlines the engine waits for. Timers are checked lazily: when one fires, the engine
//! looks at the current state and ignores it if it no longer applies (a renewed lease, a
//! finished assignment), so nothing ever needs to be removed from the heap.

use baton_core::{AgentId, AssignmentId, Millis};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// What to look at when a deadline passes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// The lease of an assignment may have expired.
    Lease(AssignmentId),
    /// An assignment may have run past the subtask timeout.
    Timeout(AssignmentId),
    /// A subtask in `retry_wait` may become ready: (task seq, subtask index).
    Retry(i64, u32),
    /// A parked lease poll may have waited long enough.
    Poll(AgentId, u64),
    /// Look for agents that stopped calling.
    HealthSweep,
    /// An agent's open circuit may have cooled down (it may take a probe).
    CircuitCooled(AgentId),
}

/// A min-heap of deadlines.
#[derive(Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Millis, u64, Timer)>>,
    next: u64,
}

impl Timers {
    pub(crate) fn at(&mut self, when: Millis, timer: Timer) {
        self.next += 1;
        self.heap.push(Reverse((when, self.next, timer)));
    }

    /// The earliest deadline, if any.
    pub(crate) fn next_deadline(&self) -> Option<Millis> {
        self.heap.peek().map(|Reverse((when, _, _))| *when)
    }

    /// Pop one timer that is due at `now`.
    pub(crate) fn pop_due(&mut self, now: Millis) -> Option<Timer> {
        match self.heap.peek() {
            Some(Reverse((when, _, _))) if *when <= now => {
                self.heap.pop().map(|Reverse((_, _, t))| t)
            }
            _ => None,
        }
    }
}
