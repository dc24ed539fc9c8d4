//! Riding out transient server failures: [`retrying`] repeats a call, pausing with [`Backoff`]
//! between attempts.
//!
//! Invariants:
//! - only failures that retrying can fix (transport, 408, 429, 5xx: [`Error::is_retryable`])
//!   are retried; any other answer, success or failure, is returned at once;
//! - there is no attempt limit: a call is retried until it succeeds or its future is dropped,
//!   so a server that is killed and restarted is simply waited for;
//! - the pauses carry "equal jitter": the n-th pause is drawn uniformly from `[s/2, s]`, where
//!   the step `s` is 50 ms · 2ⁿ⁻¹ capped at 1 s (25–50 ms, 50–100 ms, ..., then 0.5–1 s for
//!   good). Many agents that lost the same server thus spread their retries instead of hitting
//!   it in lockstep when it restarts, and no pause is shorter than half its step. Equal rather
//!   than full jitter (`[0, s]`) so that an outage is never answered with near-zero pauses; it
//!   is also the rule of `baton-core`'s `RetryPolicy::backoff_ms`;
//! - the randomness is injected ([`Backoff::with_jitter`]), so tests fix it and assert exact
//!   schedules.

use std::future::Future;
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::client::Error;

/// The first pause after a transient failure.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
/// The longest pause between two attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Calls `call` until it succeeds or fails for a reason retrying cannot fix, pausing with a
/// randomly jittered [`Backoff`] between attempts. Dropping the future stops it.
pub(super) async fn retrying<T, F, Fut>(what: &'static str, call: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    retrying_with(what, Backoff::new(), call).await
}

/// [`retrying`] with the given backoff.
async fn retrying_with<T, F, Fut>(
    what: &'static str,
    mut backoff: Backoff,
    mut call: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let mut failures = 0u32;
    loop {
        match call().await {
            Err(error) if error.is_retryable() => {
                failures += 1;
                let delay = backoff.next_delay();
                if failures == 1 {
                    warn!(call = what, %error, "server unavailable: retrying");
                } else {
                    debug!(call = what, failures, %error, ?delay, "retrying");
                }
                tokio::time::sleep(delay).await;
            }
            result => {
                if failures > 0 && result.is_ok() {
                    info!(call = what, failures, "server reachable again");
                }
                return result;
            }
        }
    }
}

/// Exponential backoff with equal jitter: the step goes 50 ms, 100 ms, 200 ms, ... capped at
/// 1 s, and each delay is drawn from `[step / 2, step]`.
#[derive(Clone, Debug)]
pub(super) struct Backoff {
    /// The exponential step of the next delay.
    step: Duration,
    /// Draws the jitter: a number in `[0, 1]` (anything else is clamped into it).
    jitter: fn() -> f64,
}

impl Backoff {
    /// A backoff whose jitter comes from the thread's random generator.
    pub(super) fn new() -> Backoff {
        Backoff::with_jitter(rand::random::<f64>)
    }

    /// A backoff whose jitter comes from `jitter`: a constant in tests.
    pub(super) fn with_jitter(jitter: fn() -> f64) -> Backoff {
        Backoff {
            step: BACKOFF_FIRST,
            jitter,
        }
    }

    /// `step / 2 + jitter · step / 2`; then the step doubles, up to the cap.
    pub(super) fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(BACKOFF_MAX);
        let half = step / 2;
        let jitter = (self.jitter)().clamp(0.0, 1.0);
        // In whole nanoseconds, so a fixed jitter gives exact delays.
        half + Duration::from_nanos((half.as_nanos() as f64 * jitter).round() as u64)
    }

    /// Back to the first step.
    pub(super) fn reset(&mut self) {
        self.step = BACKOFF_FIRST;
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;

    /// The delays of a fresh backoff in microseconds, for `n` failures in a row.
    fn delays_us(backoff: &mut Backoff, n: usize) -> Vec<u128> {
        (0..n).map(|_| backoff.next_delay().as_micros()).collect()
    }

    #[test]
    fn backoff_doubles_up_to_one_second_with_equal_jitter_and_resets() {
        // The jitter places each delay between half its step and the whole step.
        let mut lowest = Backoff::with_jitter(|| 0.0);
        let mut middle = Backoff::with_jitter(|| 0.5);
        let mut highest = Backoff::with_jitter(|| 1.0);
        assert_eq!(
            delays_us(&mut lowest, 8),
            [25_000, 50_000, 100_000, 200_000, 400_000, 500_000, 500_000, 500_000]
        );
        assert_eq!(
            delays_us(&mut middle, 8),
            [37_500, 75_000, 150_000, 300_000, 600_000, 750_000, 750_000, 750_000]
        );
        assert_eq!(
            delays_us(&mut highest, 8),
            [50_000, 100_000, 200_000, 400_000, 800_000, 1_000_000, 1_000_000, 1_000_000]
        );
        // A jitter source out of range cannot leave the bounds.
        let mut wild = Backoff::with_jitter(|| 7.0);
        assert_eq!(delays_us(&mut wild, 2), [50_000, 100_000]);
        let mut wild = Backoff::with_jitter(|| f64::NAN);
        assert_eq!(delays_us(&mut wild, 2), [25_000, 50_000]);

        middle.reset();
        assert_eq!(middle.next_delay(), Duration::from_micros(37_500));
    }

    #[test]
    fn random_delays_stay_within_their_step_and_spread() {
        const STEPS_US: [u128; 8] = [
            50_000, 100_000, 200_000, 400_000, 800_000, 1_000_000, 1_000_000, 1_000_000,
        ];
        let firsts: Vec<u128> = (0..1_000)
            .map(|_| {
                let delays = delays_us(&mut Backoff::new(), STEPS_US.len());
                for (delay, step) in delays.iter().zip(STEPS_US) {
                    assert!(
                        (step / 2..=step).contains(delay),
                        "{delay} µs for a step of {step} µs"
                    );
                }
                delays[0]
            })
            .collect();
        // Agents retrying after the same outage do not wait alike: a thousand first delays
        // cover both ends of 25–50 ms (each miss has a probability of 0.9¹⁰⁰⁰).
        assert!(firsts.iter().any(|&d| d < 27_500), "{firsts:?}");
        assert!(firsts.iter().any(|&d| d > 47_500), "{firsts:?}");
    }

    /// Runs `retrying_with` over a call that fails three times with transport errors; returns
    /// the time spent, on the paused clock.
    async fn time_to_ride_out_three_failures(backoff: Backoff) -> Duration {
        let mut calls = 0;
        let started = Instant::now();
        let result = retrying_with("test", backoff, || {
            calls += 1;
            let attempt = calls;
            async move {
                if attempt < 4 {
                    Err(Error::Transport("refused".into()))
                } else {
                    Ok(attempt)
                }
            }
        })
        .await;
        assert_eq!(result.unwrap(), 4);
        started.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn retrying_waits_out_transport_errors() {
        // Steps of 50 + 100 + 200 ms; with a jitter of 0.2 each pause is 60 % of its step.
        let elapsed = time_to_ride_out_three_failures(Backoff::with_jitter(|| 0.2)).await;
        assert_eq!(elapsed, Duration::from_millis(30 + 60 + 120));
        let elapsed = time_to_ride_out_three_failures(Backoff::with_jitter(|| 1.0)).await;
        assert_eq!(elapsed, Duration::from_millis(350));
        // With random jitter (what `retrying` uses): between half the steps and all of them.
        for _ in 0..20 {
            let elapsed = time_to_ride_out_three_failures(Backoff::new()).await;
            assert!(
                (Duration::from_millis(175)..=Duration::from_millis(350)).contains(&elapsed),
                "{elapsed:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retrying_returns_final_errors_at_once() {
        let mut calls = 0;
        let result: Result<(), Error> = retrying("test", || {
            calls += 1;
            async {
                Err(Error::Api {
                    status: 409,
                    body: baton_api::ErrorBody {
                        error: "conflict".into(),
                        message: "superseded".into(),
                        fields: Vec::new(),
                    },
                })
            }
        })
        .await;
        assert!(result.unwrap_err().is_conflict());
        assert_eq!(calls, 1);
    }
}
