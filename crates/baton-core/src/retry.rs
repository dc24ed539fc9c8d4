//! Retry policy: how many attempts a subtask gets and how long to wait between them
//! (exponential backoff with jitter). Randomness is an argument, so the policy is deterministic.

use crate::model::DEFAULT_MAX_ATTEMPTS;

/// Attempts and backoff for one subtask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, the first included.
    pub max_attempts: u32,
    /// Wait before the second attempt, before jitter.
    pub base_ms: u64,
    /// Upper bound of any wait.
    pub max_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            base_ms: 500,
            max_ms: 30_000,
        }
    }
}

impl RetryPolicy {
    /// Whether a failure of attempt `attempt` (from 1) may be retried.
    pub fn may_retry(&self, attempt: u32, retryable: bool) -> bool {
        retryable && attempt < self.max_attempts
    }

    /// The wait after attempt `attempt` (from 1) failed: `base · 2^(attempt-1)`, capped, then
    /// scaled into `[½, 1]` of itself by `jitter` in `[0, 1)` ("equal jitter").
    pub fn backoff_ms(&self, attempt: u32, jitter: f64) -> u64 {
        let exp = attempt.saturating_sub(1).min(32);
        let raw = self.base_ms.saturating_mul(1u64 << exp).min(self.max_ms);
        let jitter = jitter.clamp(0.0, 1.0);
        (raw as f64 * (0.5 + jitter / 2.0)).round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_up_to_the_budget() {
        let p = RetryPolicy::default();
        assert!(p.may_retry(1, true));
        assert!(p.may_retry(2, true));
        assert!(!p.may_retry(3, true));
        assert!(!p.may_retry(1, false));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            max_attempts: 10,
            base_ms: 100,
            max_ms: 1_000,
        };
        assert_eq!(p.backoff_ms(1, 1.0), 100);
        assert_eq!(p.backoff_ms(2, 1.0), 200);
        assert_eq!(p.backoff_ms(3, 0.0), 200);
        assert_eq!(p.backoff_ms(9, 1.0), 1_000);
        assert_eq!(p.backoff_ms(u32::MAX, 1.0), 1_000);
        for j in [0.0, 0.3, 0.99] {
            let w = p.backoff_ms(2, j);
            assert!((100..=200).contains(&w));
        }
    }
}
