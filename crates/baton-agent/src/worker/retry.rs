//! Riding out transient server failures: [`retrying`] repeats a call, pausing with [`Backoff`]
//! between attempts.
//!
//! Invariants:
//! - only failures that retrying can fix (transport, 408, 429, 5xx: [`Error::is_retryable`])
//!   are retried; any other answer, success or failure, is returned at once;
//! - there is no attempt limit: a call is retried until it succeeds or its future is dropped,
//!   so a server that is killed and restarted is simply waited for;
//! - the pauses grow exponentially from 50 ms and are capped at 1 s.

use std::future::Future;
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::client::Error;

/// The first pause after a transient failure.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
/// The longest pause between two attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Calls `call` until it succeeds or fails for a reason retrying cannot fix, pausing with
/// [`Backoff`] between attempts. Dropping the future stops it.
pub(super) async fn retrying<T, F, Fut>(what: &'static str, mut call: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let mut backoff = Backoff::new();
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

/// Exponential backoff: 50 ms, 100 ms, 200 ms, ... capped at 1 s.
#[derive(Clone, Debug)]
pub(super) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(super) fn new() -> Backoff {
        Backoff {
            next: BACKOFF_FIRST,
        }
    }

    pub(super) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        delay
    }

    pub(super) fn reset(&mut self) {
        self.next = BACKOFF_FIRST;
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;

    #[test]
    fn backoff_doubles_up_to_one_second_and_resets() {
        let mut backoff = Backoff::new();
        let delays: Vec<u64> = (0..8)
            .map(|_| backoff.next_delay().as_millis() as u64)
            .collect();
        assert_eq!(delays, [50, 100, 200, 400, 800, 1000, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn retrying_waits_out_transport_errors() {
        let mut calls = 0;
        let started = Instant::now();
        let result = retrying("test", || {
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
        // 50 + 100 + 200 ms of backoff, on the paused clock.
        assert_eq!(started.elapsed(), Duration::from_millis(350));
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
