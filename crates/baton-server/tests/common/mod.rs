//! The harness of the socket-level server tests: a real Baton server (SQLite in a temporary
//! directory, the engine, axum) on a loopback port, agents that talk to it over HTTP (the SDK's
//! `Worker`, or a hand-driven agent for exact control of the pull protocol), a raw HTTP helper
//! for malformed requests, and polling waits with deadlines instead of sleeps.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_agent::api::{
    AssignmentReply, CompleteRequest, FailRequest, HeartbeatReply, Lease, LeaseRequest,
    ProgressRequest, RegisterAgent, RegisteredAgent, TaskDetail,
};
use baton_agent::{Client, Handler, Job, JobError, Worker, WorkerConfig, WorkerReport};
use baton_core::retry::RetryPolicy;
use baton_server::{Options, Server};
use reqwest::Method;
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The longest a test waits for a condition before it fails.
pub const PATIENCE: Duration = Duration::from_secs(20);
/// How often a wait polls.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Engine settings for tests: the default lease, but retries that back off for milliseconds
/// instead of seconds so that retry scenarios stay fast.
pub fn engine_config() -> baton_engine::Config {
    baton_engine::Config {
        retry: RetryPolicy {
            max_attempts: 3,
            base_ms: 20,
            max_ms: 100,
        },
        ..baton_engine::Config::default()
    }
}

/// `engine_config()` with a short lease, for lease-expiry scenarios.
pub fn short_lease_config(lease: Duration) -> baton_engine::Config {
    baton_engine::Config {
        lease,
        ..engine_config()
    }
}

/// One answer of the raw HTTP helper.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    /// `error` of an error body.
    pub fn code(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }

    /// The field names of a `validation_failed` body.
    pub fn fields(&self) -> BTreeSet<String> {
        self.body["fields"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|f| f["field"].as_str().expect("field is a string").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Asserts a 400 `validation_failed` listing exactly `fields`.
    #[track_caller]
    pub fn assert_invalid(&self, fields: &[&str]) {
        assert_eq!(self.status, 400, "{self:?}");
        assert_eq!(self.code(), "validation_failed", "{self:?}");
        let expected: BTreeSet<String> = fields.iter().map(|f| (*f).to_owned()).collect();
        assert_eq!(self.fields(), expected, "{:#}", self.body);
        for issue in self.body["fields"].as_array().unwrap() {
            assert!(
                issue["issue"].as_str().is_some_and(|s| !s.is_empty()),
                "every field has an issue: {issue}"
            );
        }
    }

    /// Asserts an error answer with `status` and `code`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.code(), code, "{self:?}");
    }
}

/// A request body for the raw helper.
pub enum Body {
    None,
    Json(Value),
    /// Sent verbatim as `application/json`, for malformed or key-ordered bodies.
    Text(String),
    /// Sent verbatim as `application/yaml`.
    Yaml(String),
}

/// A running server on a loopback port.
pub struct TestServer {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// The typed client of the API.
    pub client: Client,
    http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    serving: Option<JoinHandle<Result<(), baton_server::Error>>>,
    _dir: TempDir,
}

impl TestServer {
    /// A server with [`engine_config`].
    pub async fn start() -> TestServer {
        TestServer::start_with(engine_config()).await
    }

    /// A server with the given engine settings, on a fresh data directory.
    pub async fn start_with(engine: baton_engine::Config) -> TestServer {
        TestServer::start_with_llm(engine, None).await
    }

    /// A server with the given engine settings and LLM planner, on a fresh data directory.
    pub async fn start_with_llm(
        engine: baton_engine::Config,
        llm: Option<baton_server::LlmConfig>,
    ) -> TestServer {
        let dir = tempfile::tempdir().expect("temporary directory");
        let server = Server::open(Options {
            data_dir: dir.path().to_path_buf(),
            engine,
            llm,
        })
        .await
        .expect("the server opens");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let serving = tokio::spawn(server.serve(listener, async {
            let _ = rx.await;
        }));
        let client = Client::new(&url).expect("client");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        TestServer {
            url,
            client,
            http,
            shutdown: Some(tx),
            serving: Some(serving),
            _dir: dir,
        }
    }

    /// Stops serving and the engine; fails the test if either fails.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let serving = self.serving.take().expect("still serving");
        let result = tokio::time::timeout(PATIENCE, serving)
            .await
            .expect("the server stops in time")
            .expect("the server task does not panic");
        result.expect("the server stops cleanly");
    }

    /// Any request; the answer must be JSON and never a 5xx.
    pub async fn raw(&self, method: Method, path: &str, body: Body, token: Option<&str>) -> Reply {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.url));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req = match body {
            Body::None => req,
            Body::Json(v) => req.json(&v),
            Body::Text(t) => req.header("content-type", "application/json").body(t),
            Body::Yaml(t) => req.header("content-type", "application/yaml").body(t),
        };
        let response = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let bytes = response.bytes().await.expect("read the answer");
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            status < 500,
            "{method} {path} answered {status} (no request may cause a 5xx): {text}"
        );
        assert!(
            content_type.starts_with("application/json"),
            "{method} {path} answered {status} with content type {content_type:?}: {text}"
        );
        let body: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!("{method} {path} answered {status} with non-JSON {e}: {text}")
        });
        if status >= 400 {
            assert!(
                body["error"].as_str().is_some_and(|s| !s.is_empty())
                    && body["message"].as_str().is_some(),
                "{method} {path}: an error body has `error` and `message`: {body}"
            );
        }
        Reply { status, body }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.raw(Method::GET, path, Body::None, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.raw(Method::POST, path, Body::Json(body), None).await
    }

    pub async fn post_text(&self, path: &str, body: impl Into<String>) -> Reply {
        self.raw(Method::POST, path, Body::Text(body.into()), None)
            .await
    }

    pub async fn put(&self, path: &str) -> Reply {
        self.raw(Method::PUT, path, Body::None, None).await
    }

    pub async fn put_json(&self, path: &str, body: Value) -> Reply {
        self.raw(Method::PUT, path, Body::Json(body), None).await
    }

    pub async fn post_yaml(&self, path: &str, body: impl Into<String>) -> Reply {
        self.raw(Method::POST, path, Body::Yaml(body.into()), None)
            .await
    }

    /// `GET /tasks/{id}`, which must exist.
    pub async fn task(&self, task_id: &str) -> TaskDetail {
        self.client
            .task(task_id)
            .await
            .unwrap_or_else(|e| panic!("GET /tasks/{task_id}: {e}"))
    }

    /// Polls the task until `done` holds; panics with the last detail after `patience`.
    pub async fn wait_for_task(
        &self,
        task_id: &str,
        what: &str,
        patience: Duration,
        done: impl Fn(&TaskDetail) -> bool,
    ) -> TaskDetail {
        let deadline = Instant::now() + patience;
        loop {
            let detail = self.task(task_id).await;
            if done(&detail) {
                return detail;
            }
            if Instant::now() >= deadline {
                panic!(
                    "task {task_id}: timed out after {patience:?} waiting for {what}; last seen:\n{}",
                    serde_json::to_string_pretty(&detail).unwrap()
                );
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Polls until the task has `status`; fails at once if it ends in another terminal status.
    pub async fn wait_for_status(
        &self,
        task_id: &str,
        status: &str,
        patience: Duration,
    ) -> TaskDetail {
        let detail = self
            .wait_for_task(task_id, &format!("status {status}"), patience, |d| {
                d.status == status || is_terminal(&d.status)
            })
            .await;
        assert_eq!(
            detail.status,
            status,
            "task {task_id} ended otherwise:\n{}",
            serde_json::to_string_pretty(&detail).unwrap()
        );
        detail
    }

    /// Polls until the subtask is in `state`.
    pub async fn wait_for_subtask(
        &self,
        task_id: &str,
        subtask_id: &str,
        state: &str,
    ) -> TaskDetail {
        self.wait_for_task(
            task_id,
            &format!("subtask {subtask_id} in state {state}"),
            PATIENCE,
            |d| subtask(d, subtask_id).state == state,
        )
        .await
    }

    /// Registers an agent driven by hand (max concurrency 4).
    pub async fn hand_agent(&self, name: &str, capabilities: &[&str]) -> HandAgent {
        self.hand_agent_with(name, capabilities, 4).await
    }

    /// Registers an agent driven by hand with the given max concurrency.
    pub async fn hand_agent_with(
        &self,
        name: &str,
        capabilities: &[&str],
        max_concurrency: u32,
    ) -> HandAgent {
        let registered = self
            .client
            .register_agent(&RegisterAgent {
                name: name.into(),
                kind: Some("test".into()),
                capabilities: capabilities.iter().map(|c| (*c).to_owned()).collect(),
                domains: Vec::new(),
                max_concurrency: Some(max_concurrency),
            })
            .await
            .expect("register an agent");
        HandAgent {
            client: self.client.clone(),
            agent_id: registered.agent_id,
            token: registered.token,
        }
    }

    /// Registers an SDK worker and runs it in a task until stopped.
    pub async fn spawn_worker(&self, config: WorkerConfig, handler: impl Handler) -> RunningWorker {
        let mut worker = Worker::new(self.client.clone(), config, handler);
        let registered: RegisteredAgent = worker.register().await.expect("register the worker");
        let (tx, rx) = oneshot::channel::<()>();
        let join = tokio::spawn(worker.run(async {
            let _ = rx.await;
        }));
        RunningWorker {
            agent_id: registered.agent_id,
            token: registered.token,
            stop: Some(tx),
            join: Some(join),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn is_terminal(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "cancelled")
}

/// A worker configuration for tests: short long polls and frequent heartbeats.
pub fn worker_config(name: &str, capabilities: &[&str]) -> WorkerConfig {
    WorkerConfig {
        lease_wait_ms: 1_000,
        heartbeat_every: Duration::from_millis(100),
        drain_timeout: Duration::from_secs(2),
        ..WorkerConfig::new(name, capabilities.iter().copied())
    }
}

/// An SDK worker running in a task.
pub struct RunningWorker {
    pub agent_id: String,
    pub token: String,
    stop: Option<oneshot::Sender<()>>,
    join: Option<JoinHandle<Result<WorkerReport, baton_agent::Error>>>,
}

impl RunningWorker {
    /// Asks the worker to stop and waits for its report.
    pub async fn stop(mut self) -> WorkerReport {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let join = self.join.take().expect("running");
        tokio::time::timeout(PATIENCE, join)
            .await
            .expect("the worker stops in time")
            .expect("the worker does not panic")
            .expect("the worker ends without error")
    }
}

impl Drop for RunningWorker {
    fn drop(&mut self) {
        if let Some(join) = &self.join {
            join.abort();
        }
    }
}

/// An agent whose every protocol call the test makes itself.
#[derive(Clone)]
pub struct HandAgent {
    pub client: Client,
    pub agent_id: String,
    pub token: String,
}

impl HandAgent {
    pub async fn lease(&self, max: u32, wait_ms: u64) -> Vec<Lease> {
        self.try_lease(max, wait_ms)
            .await
            .unwrap_or_else(|e| panic!("lease of {}: {e}", self.agent_id))
    }

    pub async fn try_lease(
        &self,
        max: u32,
        wait_ms: u64,
    ) -> Result<Vec<Lease>, baton_agent::Error> {
        let request = LeaseRequest {
            max: Some(max),
            wait_ms: Some(wait_ms),
            held: None,
        };
        self.client
            .lease(&self.agent_id, &self.token, &request)
            .await
            .map(|r| r.assignments)
    }

    /// Starts a lease long poll in a task and returns once the server has taken the call
    /// (the agent's `last_seen` moved), so the poll is parked or already answered.
    pub async fn park_lease(
        &self,
        max: u32,
        wait_ms: u64,
    ) -> JoinHandle<Result<Vec<Lease>, baton_agent::Error>> {
        let seen = |agent: baton_agent::api::AgentView| agent.last_seen;
        let before = seen(self.client.agent(&self.agent_id).await.expect("agent"));
        // `last_seen` has millisecond precision: let the clock move past `before` so that the
        // lease call is stamped later than it.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let agent = self.clone();
        let poll = tokio::spawn(async move { agent.try_lease(max, wait_ms).await });
        let deadline = Instant::now() + PATIENCE;
        while seen(self.client.agent(&self.agent_id).await.expect("agent")) == before {
            assert!(
                Instant::now() < deadline,
                "the lease call never reached the server"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        poll
    }

    /// Leases until exactly one assignment comes (long polls of up to `PATIENCE`).
    pub async fn lease_one(&self) -> Lease {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut got = self.lease(1, 2_000).await;
            if let Some(lease) = got.pop() {
                assert!(got.is_empty(), "max 1 gives at most one assignment");
                return lease;
            }
            assert!(
                Instant::now() < deadline,
                "agent {} got no assignment in {PATIENCE:?}",
                self.agent_id
            );
        }
    }

    pub async fn heartbeat(&self) -> HeartbeatReply {
        self.client
            .heartbeat(&self.agent_id, &self.token, &Default::default())
            .await
            .unwrap_or_else(|e| panic!("heartbeat of {}: {e}", self.agent_id))
    }

    pub async fn complete(
        &self,
        assignment_id: &str,
        outputs: Value,
    ) -> Result<AssignmentReply, baton_agent::Error> {
        self.client
            .complete(
                assignment_id,
                &self.token,
                &CompleteRequest {
                    outputs,
                    usage: None,
                },
            )
            .await
    }

    pub async fn fail(
        &self,
        assignment_id: &str,
        error: &str,
        retryable: bool,
    ) -> Result<AssignmentReply, baton_agent::Error> {
        let request = FailRequest {
            error: error.into(),
            retryable,
        };
        self.client.fail(assignment_id, &self.token, &request).await
    }

    pub async fn progress(
        &self,
        assignment_id: &str,
        request: &ProgressRequest,
    ) -> Result<AssignmentReply, baton_agent::Error> {
        self.client
            .progress(assignment_id, &self.token, request)
            .await
    }
}

/// What a recording handler saw of one job.
#[derive(Clone, Debug)]
pub struct Seen {
    pub assignment_id: String,
    pub task_id: String,
    pub subtask_id: String,
    pub capability: String,
    pub attempt: u32,
    pub input: Value,
}

/// The jobs handlers saw, shared with the test.
#[derive(Clone, Default)]
pub struct Journal(Arc<Mutex<Vec<Seen>>>);

impl Journal {
    pub fn record(&self, job: &Job) {
        self.0.lock().unwrap().push(Seen {
            assignment_id: job.assignment_id.clone(),
            task_id: job.task_id.clone(),
            subtask_id: job.subtask_id.clone(),
            capability: job.capability.clone(),
            attempt: job.attempt,
            input: job.input.clone(),
        });
    }

    pub fn all(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }

    /// The jobs of one subtask, in the order they ran.
    pub fn of(&self, subtask_id: &str) -> Vec<Seen> {
        self.all()
            .into_iter()
            .filter(|s| s.subtask_id == subtask_id)
            .collect()
    }

    /// The single job of a subtask.
    #[track_caller]
    pub fn one(&self, subtask_id: &str) -> Seen {
        let mut seen = self.of(subtask_id);
        assert_eq!(seen.len(), 1, "one job for {subtask_id}: {seen:?}");
        seen.pop().unwrap()
    }
}

/// A handler that records each job in `journal`, then runs `f`.
pub fn recording<F, Fut>(journal: &Journal, f: F) -> impl Handler
where
    F: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, JobError>> + Send + 'static,
{
    let journal = journal.clone();
    baton_agent::handler_fn(move |job: Job| {
        journal.record(&job);
        f(job)
    })
}

/// The subtask `subtask_id` of a detail.
#[track_caller]
pub fn subtask<'a>(
    detail: &'a TaskDetail,
    subtask_id: &str,
) -> &'a baton_agent::api::SubtaskDetail {
    detail
        .subtasks
        .iter()
        .find(|s| s.subtask_id == subtask_id)
        .unwrap_or_else(|| panic!("no subtask {subtask_id} in {:?}", detail.subtasks))
}

/// The position of the first timeline entry of `subtask_id` (`None`: the task) reaching `to`.
#[track_caller]
pub fn history_index(detail: &TaskDetail, subtask_id: Option<&str>, to: &str) -> usize {
    detail
        .status_history
        .iter()
        .position(|e| e.subtask_id.as_deref() == subtask_id && e.to == to)
        .unwrap_or_else(|| {
            panic!(
                "no history entry {subtask_id:?} -> {to}:\n{}",
                serde_json::to_string_pretty(&detail.status_history).unwrap()
            )
        })
}

/// Asserts that the subtask's first attempt was lost to the expired lease of `lost_by`, and
/// that the retry then ran and completed: the timeline of one lost lease.
#[track_caller]
pub fn assert_lost_lease_then_completed(detail: &TaskDetail, subtask_id: &str, lost_by: &str) {
    assert_eq!(subtask(detail, subtask_id).attempts, 2);
    assert_eq!(
        states_of(detail, subtask_id),
        [
            "ready",
            "assigned",
            "retry_wait",
            "ready",
            "assigned",
            "running",
            "completed"
        ]
    );
    let lost = &detail.status_history[history_index(detail, Some(subtask_id), "retry_wait")];
    assert!(
        lost.note
            .as_deref()
            .is_some_and(|n| n.contains("lease expired")),
        "{lost:?}"
    );
    assert_eq!(lost.agent.as_deref(), Some(lost_by));
}

/// The states a subtask went through, in timeline order.
pub fn states_of(detail: &TaskDetail, subtask_id: &str) -> Vec<String> {
    detail
        .status_history
        .iter()
        .filter(|e| e.subtask_id.as_deref() == Some(subtask_id))
        .map(|e| e.to.clone())
        .collect()
}

/// The task's own states, in timeline order.
pub fn task_states(detail: &TaskDetail) -> Vec<String> {
    detail
        .status_history
        .iter()
        .filter(|e| e.subtask_id.is_none())
        .map(|e| e.to.clone())
        .collect()
}
