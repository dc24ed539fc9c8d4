//! The SDK for agent authors: a [`Worker`] speaks Baton's HTTP pull protocol (register → lease
//! → heartbeat / progress → complete or fail) around a [`Handler`] that does the actual work.
//!
//! Shape: [`Worker::run`] is one event loop that owns the in-flight jobs (a `JoinSet` and their
//! abort handles); the heartbeat runs in its own task and reports to the loop over a channel;
//! each job runs in its own task and posts its own result.
//!
//! Invariants:
//! - at most `max_concurrency` jobs are in flight, and a lease never asks for more than the free
//!   slots;
//! - a call that fails for a transient reason (transport, 408, 429, 5xx) is retried until it
//!   succeeds or the worker stops, so a server that is killed and restarted is simply waited
//!   for; the pauses back off exponentially (steps of 50 ms, 100 ms, ... capped at 1 s) with
//!   equal jitter, each pause random between half its step and the step, so agents that lost
//!   the same server do not retry in lockstep when it comes back;
//! - a result the server refuses with 409 (a superseded, lost or cancelled attempt) is dropped:
//!   the server changed nothing and the work belongs to another attempt;
//! - the agent being unknown (404) or its token refused (401/403) is fatal: [`Worker::run`]
//!   returns the error;
//! - a job whose assignment the heartbeat reports revoked is aborted and posts nothing.
//!
//! Layout: this module holds the configuration, the [`Worker`] and the event loop of a run
//! (with the life of one job: run the handler, hand the result over, count the outcome);
//! `handler` holds what agent authors implement ([`Handler`], [`Job`], [`JobError`]);
//! `reporter` posts results in batches; `heartbeat` keeps the agent alive and relays revocations;
//! `retry` rides out transient failures.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use baton_api::{Lease, LeaseRequest, LeaseResponse, RegisterAgent, RegisteredAgent, ResultItem};
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinError, JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

pub use self::handler::{handler_fn, Handler, HandlerFn, Job, JobError};
use self::heartbeat::{heartbeat_loop, HeartbeatEvent};
use self::reporter::{reporter_loop, PendingResult};
use self::retry::{retrying, Backoff};
use crate::client::{Client, Error};

mod handler;
mod heartbeat;
mod reporter;
mod retry;

/// An empty lease answer faster than this (and than half the wait) means the server did not
/// hold the long poll; the next lease then waits a backoff delay instead of spinning.
const FAST_EMPTY_LEASE: Duration = Duration::from_millis(50);

/// How a [`Worker`] presents itself and works.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The agent's name, as operators see it.
    pub name: String,
    /// The agent's type (`llm`, `tool`, ...); the server picks one when absent.
    pub kind: Option<String>,
    /// The capabilities (skills) it serves.
    pub capabilities: Vec<String>,
    pub domains: Vec<String>,
    /// Jobs in flight at most (default 4).
    pub max_concurrency: u32,
    /// How long one lease call waits for work (default 10 000 ms).
    pub lease_wait_ms: u64,
    /// The heartbeat period (default 10 s).
    pub heartbeat_every: Duration,
    /// After shutdown, how long in-flight jobs may take to finish and report (default 30 s).
    pub drain_timeout: Duration,
    /// `(agent_id, token)` of an existing registration to reuse instead of registering.
    pub credentials: Option<(String, String)>,
}

impl Default for WorkerConfig {
    fn default() -> WorkerConfig {
        WorkerConfig {
            name: String::new(),
            kind: None,
            capabilities: Vec::new(),
            domains: Vec::new(),
            max_concurrency: 4,
            lease_wait_ms: 10_000,
            heartbeat_every: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            credentials: None,
        }
    }
}

impl WorkerConfig {
    /// A configuration with the defaults.
    pub fn new(
        name: impl Into<String>,
        capabilities: impl IntoIterator<Item = impl Into<String>>,
    ) -> WorkerConfig {
        WorkerConfig {
            name: name.into(),
            capabilities: capabilities.into_iter().map(Into::into).collect(),
            ..WorkerConfig::default()
        }
    }

    fn validate(&self) -> Result<(), Error> {
        if self.max_concurrency == 0 {
            return Err(Error::InvalidInput(
                "max_concurrency must be at least 1".into(),
            ));
        }
        if self.heartbeat_every.is_zero() {
            return Err(Error::InvalidInput(
                "heartbeat_every must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// The agent's id (empty when shutdown came before the registration succeeded).
    pub agent_id: String,
    /// Jobs whose completion the server accepted.
    pub completed: u64,
    /// Jobs whose failure the server accepted.
    pub failed: u64,
    /// Jobs whose result was not accepted: superseded (409), revoked, refused, or cut short by
    /// the drain timeout.
    pub dropped: u64,
}

/// An agent of the HTTP pull protocol around a [`Handler`].
pub struct Worker {
    client: Client,
    config: WorkerConfig,
    handler: Arc<dyn Handler>,
    registered: Option<RegisteredAgent>,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("client", &self.client)
            .field("config.name", &self.config.name)
            .field("agent_id", &self.agent_id())
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker that will register with `config` (or reuse `config.credentials`).
    pub fn new(client: Client, config: WorkerConfig, handler: impl Handler) -> Worker {
        let registered = config
            .credentials
            .clone()
            .map(|(agent_id, token)| RegisteredAgent { agent_id, token });
        Worker {
            client,
            config,
            handler: Arc::new(handler),
            registered,
        }
    }

    /// The agent id, once registered (or given in the credentials).
    pub fn agent_id(&self) -> Option<&str> {
        self.registered.as_ref().map(|r| r.agent_id.as_str())
    }

    /// The agent token, once registered (or given in the credentials).
    pub fn token(&self) -> Option<&str> {
        self.registered.as_ref().map(|r| r.token.as_str())
    }

    /// Registers the agent, unless it already is; retries transient failures until the server
    /// answers. Call it before [`run`](Worker::run) to learn the id and token first; `run`
    /// registers by itself otherwise.
    pub async fn register(&mut self) -> Result<RegisteredAgent, Error> {
        if let Some(registered) = &self.registered {
            return Ok(registered.clone());
        }
        self.config.validate()?;
        let request = RegisterAgent {
            name: self.config.name.clone(),
            kind: self.config.kind.clone(),
            capabilities: self.config.capabilities.clone(),
            domains: self.config.domains.clone(),
            max_concurrency: Some(self.config.max_concurrency),
        };
        let client = &self.client;
        let registered = retrying("register", || client.register_agent(&request)).await?;
        info!(agent_id = %registered.agent_id, name = %self.config.name, "registered");
        self.registered = Some(registered.clone());
        Ok(registered)
    }

    /// Registers if needed, then leases and runs jobs until `shutdown` resolves or the server
    /// stops the agent; then lets in-flight jobs finish and report (up to the drain timeout).
    ///
    /// Errors: the configuration is invalid, the registration is refused, or the server no
    /// longer knows the agent or refuses its token.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<WorkerReport, Error> {
        self.config.validate()?;
        tokio::pin!(shutdown);
        let registered = tokio::select! {
            registered = self.register() => registered?,
            () = &mut shutdown => {
                info!(name = %self.config.name, "shutdown before registration");
                return Ok(WorkerReport::default());
            }
        };
        let (reporter_tx, reporter_rx) = mpsc::unbounded_channel();
        let session = Arc::new(Session {
            client: self.client.clone(),
            agent_id: registered.agent_id,
            token: registered.token,
            held: Default::default(),
            reporter: reporter_tx,
        });
        let _reporter = AbortOnDrop(tokio::spawn(
            reporter_loop(session.clone(), reporter_rx)
                .instrument(tracing::info_span!("reporter", agent_id = %session.agent_id)),
        ));
        let (events_tx, events) = mpsc::channel(16);
        let _heartbeat = AbortOnDrop(tokio::spawn(
            heartbeat_loop(session.clone(), self.config.heartbeat_every, events_tx)
                .instrument(tracing::info_span!("heartbeat", agent_id = %session.agent_id)),
        ));
        info!(agent_id = %session.agent_id, capabilities = ?self.config.capabilities, "worker started");
        let run = Run {
            report: WorkerReport {
                agent_id: session.agent_id.clone(),
                ..WorkerReport::default()
            },
            session,
            handler: self.handler,
            config: self.config,
            jobs: JoinSet::new(),
            in_flight: HashMap::new(),
            by_task: HashMap::new(),
            idle: Backoff::new(),
        };
        let span = tracing::info_span!("worker", agent_id = %run.report.agent_id);
        run.event_loop(shutdown, events).instrument(span).await
    }
}

/// The agent identity every call of a run uses.
struct Session {
    client: Client,
    agent_id: String,
    token: String,
    /// Assignments with a running job: heartbeats and lease calls renew exactly these, so a
    /// lease whose answer never arrived (a server crash, a cut connection) expires and is retried.
    held: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Where finished jobs hand their results; the reporter posts them in batches.
    reporter: mpsc::UnboundedSender<PendingResult>,
}

impl Session {
    fn held(&self) -> Vec<String> {
        self.held
            .lock()
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn hold(&self, assignment_id: &str, holding: bool) {
        if let Ok(mut held) = self.held.lock() {
            if holding {
                held.insert(assignment_id.to_owned());
            } else {
                held.remove(assignment_id);
            }
        }
    }
}

/// What the event loop of a run reacts to.
enum Event {
    Shutdown,
    Leased(Result<Leased, Error>),
    JobEnded(Result<(tokio::task::Id, Outcome), JoinError>),
    Heartbeat(HeartbeatEvent),
    DrainTimedOut,
}

/// How a job ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Completed,
    Failed,
    Dropped,
}

/// The answer to one lease call.
struct Leased {
    response: LeaseResponse,
    /// How long the server held the call.
    took: Duration,
}

/// The state of one run, owned by its event loop.
struct Run {
    session: Arc<Session>,
    handler: Arc<dyn Handler>,
    config: WorkerConfig,
    jobs: JoinSet<Outcome>,
    /// Abort handles of the jobs in flight, by assignment id.
    in_flight: HashMap<String, AbortHandle>,
    /// The assignment id of each job task.
    by_task: HashMap<tokio::task::Id, String>,
    /// The pause before the next lease after answers that came back empty too fast.
    idle: Backoff,
    report: WorkerReport,
}

impl Run {
    async fn event_loop(
        mut self,
        mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
        mut events: mpsc::Receiver<HeartbeatEvent>,
    ) -> Result<WorkerReport, Error> {
        let mut lease: Option<BoxFuture<'static, Result<Leased, Error>>> = None;
        let mut lease_pause = Duration::ZERO;
        let mut drain_deadline: Option<Instant> = None;
        let mut abandoned = false;
        loop {
            if drain_deadline.is_some() && self.jobs.is_empty() {
                break;
            }
            let free = (self.config.max_concurrency as usize).saturating_sub(self.jobs.len());
            if drain_deadline.is_none() && lease.is_none() && free > 0 {
                lease = Some(self.lease_call(free as u32, lease_pause));
            }
            let event = tokio::select! {
                () = &mut shutdown, if drain_deadline.is_none() => Event::Shutdown,
                leased = async { lease.as_mut().expect("guarded by is_some").await },
                    if lease.is_some() => Event::Leased(leased),
                Some(ended) = self.jobs.join_next_with_id() => Event::JobEnded(ended),
                Some(event) = events.recv() => Event::Heartbeat(event),
                () = tokio::time::sleep_until(drain_deadline.unwrap_or_else(Instant::now)),
                    if drain_deadline.is_some() && !abandoned => Event::DrainTimedOut,
            };
            match event {
                Event::Shutdown => {
                    info!(in_flight = self.jobs.len(), "shutdown requested: draining");
                    lease = None;
                    drain_deadline = Some(Instant::now() + self.config.drain_timeout);
                }
                Event::Leased(Ok(leased)) => {
                    lease = None;
                    lease_pause = self.pause_after(&leased);
                    for assignment in leased.response.assignments {
                        self.start(assignment);
                    }
                }
                Event::Leased(Err(error)) if error.is_conflict() => {
                    info!(%error, "the server gives this agent no more work: draining");
                    lease = None;
                    drain_deadline.get_or_insert(Instant::now() + self.config.drain_timeout);
                }
                Event::Leased(Err(error)) => {
                    warn!(%error, "lease refused: stopping");
                    return Err(error);
                }
                Event::JobEnded(ended) => self.finished(ended),
                Event::Heartbeat(HeartbeatEvent::Revoked(ids)) => {
                    for id in ids {
                        if let Some(job) = self.in_flight.get(&id) {
                            info!(assignment_id = %id, "revoked: abandoning");
                            job.abort();
                        }
                    }
                }
                Event::Heartbeat(HeartbeatEvent::Stopped) => {
                    if drain_deadline.is_none() {
                        info!("the server stopped this agent: draining");
                        lease = None;
                        drain_deadline = Some(Instant::now() + self.config.drain_timeout);
                    }
                }
                Event::Heartbeat(HeartbeatEvent::Fatal(error)) => {
                    warn!(%error, "heartbeat refused: stopping");
                    return Err(error);
                }
                Event::DrainTimedOut => {
                    warn!(
                        in_flight = self.jobs.len(),
                        "drain timeout: abandoning the jobs still running"
                    );
                    self.jobs.abort_all();
                    abandoned = true;
                }
            }
        }
        let report = self.report;
        info!(
            agent_id = %report.agent_id,
            completed = report.completed,
            failed = report.failed,
            dropped = report.dropped,
            "worker stopped"
        );
        Ok(report)
    }

    /// One lease call for `max` assignments after `pause`, retried through transient failures.
    fn lease_call(&self, max: u32, pause: Duration) -> BoxFuture<'static, Result<Leased, Error>> {
        let session = self.session.clone();
        let wait_ms = self.config.lease_wait_ms;
        Box::pin(async move {
            tokio::time::sleep(pause).await;
            let request = LeaseRequest {
                max: Some(max),
                wait_ms: Some(wait_ms),
                held: Some(session.held()),
            };
            let started = Instant::now();
            let response = retrying("lease", || {
                session
                    .client
                    .lease(&session.agent_id, &session.token, &request)
            })
            .await?;
            Ok(Leased {
                response,
                took: started.elapsed(),
            })
        })
    }

    /// Guards against a server that answers a long poll at once with nothing: without a
    /// pause the loop would spin.
    fn pause_after(&mut self, leased: &Leased) -> Duration {
        let held_long_enough = Duration::from_millis(self.config.lease_wait_ms / 2);
        if leased.response.assignments.is_empty()
            && leased.took < held_long_enough.max(FAST_EMPTY_LEASE)
        {
            self.idle.next_delay()
        } else {
            self.idle.reset();
            Duration::ZERO
        }
    }

    fn start(&mut self, lease: Lease) {
        if self.in_flight.contains_key(&lease.assignment_id) {
            debug!(assignment_id = %lease.assignment_id, "already running: lease ignored");
            return;
        }
        let assignment_id = lease.assignment_id.clone();
        let span = tracing::info_span!(
            "job",
            assignment_id = %lease.assignment_id,
            task_id = %lease.task_id,
            subtask_id = %lease.subtask_id,
            attempt = lease.attempt,
        );
        let job = run_job(self.session.clone(), self.handler.clone(), lease).instrument(span);
        let handle = self.jobs.spawn(job);
        self.by_task.insert(handle.id(), assignment_id.clone());
        self.session.hold(&assignment_id, true);
        self.in_flight.insert(assignment_id, handle);
    }

    fn finished(&mut self, ended: Result<(tokio::task::Id, Outcome), JoinError>) {
        let (task, outcome) = match ended {
            Ok((task, outcome)) => (task, outcome),
            Err(error) => {
                // Cancelled: revoked or cut short by the drain timeout. A panic is caught
                // inside the job, so this is not one unless posting the result panicked.
                if error.is_panic() {
                    warn!(%error, "job task panicked");
                }
                (error.id(), Outcome::Dropped)
            }
        };
        if let Some(assignment_id) = self.by_task.remove(&task) {
            self.in_flight.remove(&assignment_id);
            self.session.hold(&assignment_id, false);
        }
        match outcome {
            Outcome::Completed => self.report.completed += 1,
            Outcome::Failed => self.report.failed += 1,
            Outcome::Dropped => self.report.dropped += 1,
        }
    }
}

/// Runs the handler on one lease and posts the result.
async fn run_job(session: Arc<Session>, handler: Arc<dyn Handler>, lease: Lease) -> Outcome {
    let assignment_id = lease.assignment_id.clone();
    info!("job started");
    let job = Job::new(lease, Some(session.clone()));
    let usage = job.usage_cell();
    let result = AssertUnwindSafe(handler.handle(job))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            Err(JobError::retryable(format!(
                "handler panicked: {}",
                panic_message(panic.as_ref())
            )))
        });
    let (item, accepted) = match result {
        Ok(outputs) => (
            ResultItem {
                assignment_id: assignment_id.clone(),
                outputs: Some(outputs),
                usage: *usage.lock().unwrap_or_else(|e| e.into_inner()),
                ..ResultItem::default()
            },
            Outcome::Completed,
        ),
        Err(error) => {
            info!(error = %error.message, retryable = error.retryable, "job failed");
            (
                ResultItem {
                    assignment_id: assignment_id.clone(),
                    error: Some(error.message),
                    retryable: Some(error.retryable),
                    ..ResultItem::default()
                },
                Outcome::Failed,
            )
        }
    };
    let (answer, answered) = oneshot::channel();
    if session
        .reporter
        .send(PendingResult { item, answer })
        .is_err()
    {
        warn!("result dropped: the worker is stopping");
        return Outcome::Dropped;
    }
    match answered.await {
        Ok(Ok(outcome)) if outcome.status == 200 => {
            let state = outcome.state.unwrap_or_default();
            match accepted {
                Outcome::Completed => info!(%state, "completed"),
                _ => info!(%state, "failure reported"),
            }
            accepted
        }
        Ok(Ok(outcome)) if outcome.status == 409 => {
            let message = outcome.error.map(|e| e.message).unwrap_or_default();
            info!(%message, "result dropped: the attempt was superseded");
            Outcome::Dropped
        }
        Ok(Ok(outcome)) => {
            let message = outcome.error.map(|e| e.message).unwrap_or_default();
            warn!(status = outcome.status, %message, "result dropped: the server refused it");
            Outcome::Dropped
        }
        Ok(Err(error)) => {
            warn!(%error, "result dropped: it could not be posted");
            Outcome::Dropped
        }
        Err(_) => {
            warn!("result dropped: the worker is stopping");
            Outcome::Dropped
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(text) = panic.downcast_ref::<&str>() {
        text
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text
    } else {
        "(no message)"
    }
}

/// Aborts the task when the run ends, however it ends.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn invalid_configurations_are_refused() {
        let mut config = WorkerConfig::new("echo", ["echo"]);
        assert!(config.validate().is_ok());
        config.max_concurrency = 0;
        assert!(matches!(config.validate(), Err(Error::InvalidInput(_))));
        let config = WorkerConfig {
            heartbeat_every: Duration::ZERO,
            ..WorkerConfig::new("echo", ["echo"])
        };
        assert!(matches!(config.validate(), Err(Error::InvalidInput(_))));
    }
}
