//! What an agent author writes: a [`Handler`] turns a [`Job`] into outputs or a [`JobError`].
//!
//! This is the whole contract between the author's code and the [`Worker`](super::Worker):
//! the worker builds the jobs, calls the handler and posts what it returns.
//!
//! Invariants:
//! - a handler never sees the protocol: no ids to renew, no results to post, no retries of
//!   transient server failures; it only does the work and may report progress;
//! - [`Job::progress`] is best effort: one attempt, failures only logged, so a server outage
//!   never holds the work up; a detached job (no server) reports nowhere.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use baton_api::{Lease, Phase, ProgressRequest, Usage};
use serde_json::Value;
use tracing::{debug, warn};

use super::Session;

/// The work of an agent: turns one job into its outputs.
///
/// Implement it on your own type, or wrap a closure with [`handler_fn`]. The worker calls it
/// from spawned tokio tasks, up to `max_concurrency` at a time. A panic counts as a retryable
/// failure.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Does the job. `Ok` posts `complete` with the value as outputs; `Err` posts `fail`.
    async fn handle(&self, job: Job) -> Result<Value, JobError>;
}

#[async_trait]
impl<H: Handler + ?Sized> Handler for Arc<H> {
    async fn handle(&self, job: Job) -> Result<Value, JobError> {
        (**self).handle(job).await
    }
}

/// A [`Handler`] made of a closure; see [`handler_fn`].
#[derive(Clone)]
pub struct HandlerFn<F>(F);

/// Makes a [`Handler`] of an async closure:
///
/// ```no_run
/// use baton_agent::{handler_fn, Job};
///
/// let handler = handler_fn(|job: Job| async move { Ok(serde_json::json!({"echo": job.input})) });
/// ```
pub fn handler_fn<F, Fut>(f: F) -> HandlerFn<F>
where
    F: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, JobError>> + Send + 'static,
{
    HandlerFn(f)
}

#[async_trait]
impl<F, Fut> Handler for HandlerFn<F>
where
    F: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, JobError>> + Send + 'static,
{
    async fn handle(&self, job: Job) -> Result<Value, JobError> {
        (self.0)(job).await
    }
}

/// Why a job failed, and whether another attempt may succeed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct JobError {
    pub message: String,
    /// `true` lets the orchestrator retry the subtask (possibly on another agent).
    pub retryable: bool,
}

impl JobError {
    /// A failure another attempt may not repeat (a timeout, a busy dependency).
    pub fn retryable(message: impl fmt::Display) -> JobError {
        JobError {
            message: message.to_string(),
            retryable: true,
        }
    }

    /// A failure every attempt would repeat (invalid input, an unsupported request).
    pub fn permanent(message: impl fmt::Display) -> JobError {
        JobError {
            message: message.to_string(),
            retryable: false,
        }
    }
}

/// One assignment handed to the handler: the lease's fields, and a way to report progress.
pub struct Job {
    pub assignment_id: String,
    pub task_id: String,
    pub subtask_id: String,
    pub capability: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Stable across attempts (`<task_id>/<subtask_id>`): dedupe external side effects on it.
    pub idempotency_key: String,
    pub lease_expires_at: String,
    /// The brief, the step's parameters, and `dependencies`: the outputs of the direct
    /// dependencies keyed by subtask id.
    pub input: Value,
    /// Where progress goes; `None` for a detached job.
    session: Option<Arc<Session>>,
    /// What the handler reports it used, sent with the result.
    usage: Arc<std::sync::Mutex<Option<Usage>>>,
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("assignment_id", &self.assignment_id)
            .field("task_id", &self.task_id)
            .field("subtask_id", &self.subtask_id)
            .field("capability", &self.capability)
            .field("attempt", &self.attempt)
            .field("idempotency_key", &self.idempotency_key)
            .field("lease_expires_at", &self.lease_expires_at)
            .field("input", &self.input)
            .finish_non_exhaustive()
    }
}

impl Job {
    pub(super) fn new(lease: Lease, session: Option<Arc<Session>>) -> Job {
        Job {
            assignment_id: lease.assignment_id,
            task_id: lease.task_id,
            subtask_id: lease.subtask_id,
            capability: lease.capability,
            attempt: lease.attempt,
            idempotency_key: lease.idempotency_key,
            lease_expires_at: lease.lease_expires_at,
            input: lease.input,
            session,
            usage: Arc::default(),
        }
    }

    /// Adds to what this attempt used (tokens, cost): sent with its result, summed per subtask
    /// and per task by the orchestrator, and checked against the task's budget.
    pub fn add_usage(&self, tokens_in: u64, tokens_out: u64, cost_usd: f64) {
        let mut cell = self.usage.lock().unwrap_or_else(|e| e.into_inner());
        let u = cell.get_or_insert_with(Usage::default);
        u.tokens_in = Some(u.tokens_in.unwrap_or(0).saturating_add(tokens_in));
        u.tokens_out = Some(u.tokens_out.unwrap_or(0).saturating_add(tokens_out));
        u.cost_usd = Some(u.cost_usd.unwrap_or(0.0) + cost_usd);
    }

    /// The usage reported so far (shared with the worker, which reads it after the handler).
    pub(super) fn usage_cell(&self) -> Arc<std::sync::Mutex<Option<Usage>>> {
        self.usage.clone()
    }

    /// A job that reports nowhere: for testing a handler without a server. Its
    /// [`progress`](Job::progress) does nothing.
    pub fn detached(lease: Lease) -> Job {
        Job::new(lease, None)
    }

    /// Reports the phase the work is in. Best effort: one attempt, failures are only logged,
    /// so a server outage never holds the work up.
    pub async fn progress(&self, phase: Phase, message: Option<String>) {
        let Some(session) = &self.session else {
            return;
        };
        let request = ProgressRequest { phase, message };
        match session
            .client
            .progress(&self.assignment_id, &session.token, &request)
            .await
        {
            Ok(reply) => {
                debug!(assignment_id = %self.assignment_id, ?phase, state = %reply.state, "progress reported")
            }
            Err(error) => {
                warn!(assignment_id = %self.assignment_id, ?phase, %error, "progress not reported")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(id: &str) -> Lease {
        Lease {
            assignment_id: id.into(),
            task_id: "t1".into(),
            subtask_id: "code::t1::1".into(),
            capability: "code".into(),
            attempt: 1,
            idempotency_key: "t1/code::t1::1".into(),
            lease_expires_at: "2030-01-01T00:00:00Z".into(),
            input: serde_json::json!({"n": 2}),
        }
    }

    #[tokio::test]
    async fn closures_are_handlers_and_detached_jobs_report_nowhere() {
        let handler: Arc<dyn Handler> = Arc::new(handler_fn(|job: Job| async move {
            job.progress(Phase::Executing, Some("working".into())).await;
            let n = job.input["n"]
                .as_i64()
                .ok_or_else(|| JobError::permanent("no n"))?;
            Ok(serde_json::json!({"double": n * 2}))
        }));
        let outputs = handler.handle(Job::detached(lease("a1"))).await.unwrap();
        assert_eq!(outputs, serde_json::json!({"double": 4}));

        let mut bad = lease("a2");
        bad.input = serde_json::json!({});
        let error = handler.handle(Job::detached(bad)).await.unwrap_err();
        assert_eq!(error, JobError::permanent("no n"));
    }
}
