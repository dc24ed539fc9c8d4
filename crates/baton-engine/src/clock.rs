//! Where the engine's time comes from. The loop asks its [`Clock`] for the time and to wait for
//! its next deadline, and never reads the system time itself, so scenario tests run it on a
//! [`ManualClock`] that moves only when they say: lease expiries, retries and timeouts happen
//! at exact virtual instants, in microseconds of real time.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};

use baton_core::Millis;
use tokio::sync::watch;

/// A source of time for the engine.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Milliseconds since the Unix epoch.
    fn now(&self) -> Millis;

    /// Resolves once [`Clock::now`] has reached `at`.
    fn sleep_until(&self, at: Millis) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// The system clock, waiting with tokio's timers.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        crate::now_ms()
    }

    fn sleep_until(&self, at: Millis) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let wait = (at - self.now()).max(0) as u64;
        Box::pin(tokio::time::sleep(std::time::Duration::from_millis(wait)))
    }
}

/// A clock that stands still until [`ManualClock::advance`] moves it.
#[derive(Debug)]
pub struct ManualClock {
    now: AtomicI64,
    moved: watch::Sender<Millis>,
}

impl ManualClock {
    /// A clock showing `start`.
    pub fn new(start: Millis) -> ManualClock {
        ManualClock {
            now: AtomicI64::new(start),
            moved: watch::Sender::new(start),
        }
    }

    /// Move the clock forward by `ms` and wake whoever waits for a deadline now passed.
    pub fn advance(&self, ms: Millis) {
        let now = self.now.fetch_add(ms.max(0), Ordering::SeqCst) + ms.max(0);
        self.moved.send_replace(now);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        self.now.load(Ordering::SeqCst)
    }

    fn sleep_until(&self, at: Millis) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let mut moved = self.moved.subscribe();
        Box::pin(async move {
            while *moved.borrow_and_update() < at {
                if moved.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_manual_sleep_ends_when_the_clock_passes_its_deadline() {
        let clock = std::sync::Arc::new(ManualClock::new(1_000));
        let sleep = clock.sleep_until(1_500);
        let waiter = tokio::spawn(sleep);
        clock.advance(499);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        clock.advance(1);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(clock.now(), 1_500);
        // A deadline already passed resolves at once.
        clock.sleep_until(1_000).await;
    }
}
