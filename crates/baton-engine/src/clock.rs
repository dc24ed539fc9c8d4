//! Where the engine's time comes from. The loop asks its [`Clock`] for the time and to wait for
//! its next deadline, and never reads the system time itself, so scenario tests run it on a
//! [`ManualClock`] that moves only when they say: lease expiries, retries and timeouts happen
//! at exact virtual instants, in microseconds of real time.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

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

/// A clock that stands still until [`ManualClock::advance`] moves it. It knows the deadlines
/// it is being waited for ([`ManualClock::next_wakeup`]), so an event-driven simulation can
/// stop at each of them, as real time would.
#[derive(Debug)]
pub struct ManualClock {
    now: AtomicI64,
    moved: watch::Sender<Millis>,
    /// Deadlines of pending sleeps, with how many sleeps wait for each.
    sleepers: Arc<Mutex<BTreeMap<Millis, usize>>>,
}

impl ManualClock {
    /// A clock showing `start`.
    pub fn new(start: Millis) -> ManualClock {
        ManualClock {
            now: AtomicI64::new(start),
            moved: watch::Sender::new(start),
            sleepers: Arc::default(),
        }
    }

    /// The earliest deadline a pending [`Clock::sleep_until`] waits for, if any: the engine's
    /// next timer once it is idle. Moving the clock there, and no further, lets the engine act
    /// at that exact instant.
    pub fn next_wakeup(&self) -> Option<Millis> {
        lock(&self.sleepers).keys().next().copied()
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
        // Registered now, not at the first poll, so the deadline is known as soon as the
        // sleeper has decided to wait; forgotten when the sleep ends or is dropped.
        *lock(&self.sleepers).entry(at).or_default() += 1;
        let registered = Registered {
            sleepers: self.sleepers.clone(),
            at,
        };
        Box::pin(async move {
            let _registered = registered;
            while *moved.borrow_and_update() < at {
                if moved.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
    }
}

/// One pending sleep's deadline, removed from its clock when dropped.
struct Registered {
    sleepers: Arc<Mutex<BTreeMap<Millis, usize>>>,
    at: Millis,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut sleepers = lock(&self.sleepers);
        if let Some(n) = sleepers.get_mut(&self.at) {
            *n -= 1;
            if *n == 0 {
                sleepers.remove(&self.at);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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

    #[tokio::test]
    async fn it_knows_the_earliest_deadline_waited_for() {
        let clock = ManualClock::new(0);
        assert_eq!(clock.next_wakeup(), None);
        let late = clock.sleep_until(300);
        let early = clock.sleep_until(100);
        let also_early = clock.sleep_until(100);
        assert_eq!(clock.next_wakeup(), Some(100));
        drop(early);
        assert_eq!(
            clock.next_wakeup(),
            Some(100),
            "another sleep still waits for 100"
        );
        clock.advance(100);
        also_early.await;
        assert_eq!(
            clock.next_wakeup(),
            Some(300),
            "an ended sleep is forgotten"
        );
        drop(late);
        assert_eq!(clock.next_wakeup(), None);
    }
}
