//! The running orchestrator: one event loop that owns every in-memory index (live tasks and
//! their subtasks, ready queues per capability, agents and their parked lease polls,
//! assignments and timers), talks to storage through [`baton_store::Store`], and answers the
//! server through a cheap [`Handle`].
//!
//! Requests reach it through [`intake`], the one place where a transport's JSON becomes a
//! validated, planned request.
//!
//! Invariants:
//! - One task owns the state; everyone else sends commands through the [`Handle`]. No shared
//!   mutable state.
//! - The loop is deterministic given its inputs: time comes from the configured [`Clock`],
//!   randomness (ids, tokens, backoff jitter) from one generator seeded from the config, and
//!   every iteration whose order shows in the timeline is over an ordered collection.
//! - Every reply is sent only after every write issued before it is committed, so a 2xx
//!   answer never reveals or acknowledges anything a crash could lose (group commit: many
//!   commands share one transaction and one fsync).
//! - Every state change goes through the core's transition functions (the records' `set_*`
//!   methods) and appends an event. An illegal transition is a bug: [`Error::Internal`],
//!   logged with its context and counted ([`Handle::internal_errors`]), never a 409.
//! - A result is accepted only from the subtask's current, active assignment (fencing).

mod clock;
mod committer;
mod engine;
mod handle;
pub mod intake;
mod timers;

pub use clock::{Clock, ManualClock, SystemClock};
pub use handle::{
    AgentInfo, AgentSpec, AssignmentInfo, AttemptOutcome, Gates, Handle, HeartbeatInfo, LeaseGrant,
    Registered, Resolve, Submitted, TaskSnapshot,
};
pub use intake::NewTask;

use std::sync::Arc;
use std::time::Duration;

use baton_core::breaker::BreakerPolicy;
use baton_core::retry::RetryPolicy;
pub use baton_core::routing::RoutingMode;
use baton_store::Store;

/// Engine errors as the server maps them to HTTP statuses.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 409: the request conflicts with the current state; nothing changed.
    #[error("{0}")]
    Conflict(String),
    /// 400: the request is well-formed but its content breaks a rule only the engine can
    /// check (a verdict without `verified`); nothing changed.
    #[error("{0}")]
    Invalid(String),
    /// 401: missing or wrong bearer token.
    #[error("invalid or missing agent token")]
    Unauthorized,
    /// 403: authenticated, but not allowed to touch this.
    #[error("{0}")]
    Forbidden(String),
    /// 503: storage failed; the change was not committed.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// 503: the engine has stopped.
    #[error("the orchestrator is shutting down")]
    Stopped,
    /// 500: the engine broke one of its own rules (an illegal transition); a bug, logged with
    /// its context when it happened. Nothing of the request was changed after it.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Engine settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// How long a lease lasts without a heartbeat.
    pub lease: Duration,
    /// Default per-subtask timeout.
    pub subtask_timeout: Duration,
    /// Attempts and backoff.
    pub retry: RetryPolicy,
    /// Longest long-poll a lease call may ask for.
    pub max_lease_wait: Duration,
    /// Largest batch one lease call may ask for.
    pub max_lease_batch: u32,
    /// Commands waiting for the loop before senders wait (backpressure).
    pub queue_capacity: usize,
    /// Where time comes from ([`SystemClock`]; scenario tests use a [`ManualClock`]).
    pub clock: Arc<dyn Clock>,
    /// Seed of the generator behind ids, tokens and backoff jitter (and of the one behind
    /// routing's exploration, derived from it). `None` (the default) seeds it from the
    /// operating system; a fixed seed is for tests only, since it makes agent tokens
    /// predictable.
    pub seed: Option<u64>,
    /// How routing picks among eligible agents: learned from their records (the default), or
    /// round robin.
    pub routing: RoutingMode,
    /// Share of learned routing decisions for a first attempt that explore (pick uniformly
    /// among the other eligible agents), 0–1. Retries never explore.
    pub explore_share: f64,
    /// Consecutive failures (failed attempts, lost leases, timeouts) that open an agent's
    /// circuit.
    pub breaker_failures: u32,
    /// How long an open circuit gives its agent no work before one probe may go.
    pub breaker_cooldown: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            subtask_timeout: Duration::from_millis(baton_core::model::DEFAULT_TIMEOUT_MS),
            retry: RetryPolicy::default(),
            max_lease_wait: Duration::from_secs(60),
            max_lease_batch: 256,
            queue_capacity: 65_536,
            clock: Arc::new(SystemClock),
            seed: None,
            routing: RoutingMode::Learned,
            explore_share: 0.05,
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(30),
        }
    }
}

impl Config {
    /// The circuit breaker's policy from these settings.
    pub fn breaker(&self) -> BreakerPolicy {
        BreakerPolicy {
            failures: self.breaker_failures.max(1),
            cooldown_ms: self.breaker_cooldown.as_millis().min(i64::MAX as u128) as i64,
        }
    }
}

/// Recover state from `store` and start the engine on the current tokio runtime.
///
/// Returns the handle and the loop's join handle; the loop ends when every [`Handle`] is
/// dropped or [`Handle::shutdown`] is called, after committing what it has accepted.
pub async fn start(
    config: Config,
    store: Arc<dyn Store>,
) -> Result<(Handle, tokio::task::JoinHandle<()>), baton_store::Error> {
    engine::Engine::start(config, store).await
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> baton_core::Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The sha256 of a bearer token, hex: how tokens are stored and compared.
pub fn hash_token(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}
