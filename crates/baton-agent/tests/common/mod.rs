//! A scripted stand-in for Baton's server, for testing the client and the worker without the
//! engine: it implements the agent protocol and a few task endpoints over an in-memory state,
//! and can be killed (its runtime shut down, every connection cut) and restarted on the same
//! port with the same state, like `kill -9` and a restart on the same data directory.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use baton_agent::api::{
    AssignmentReply, CompleteRequest, ErrorBody, FailRequest, HeartbeatReply, Lease, LeaseRequest,
    LeaseResponse, Metrics, PlannedTask, ProgressRequest, RegisterAgent, RegisteredAgent,
    SubmitTask, TaskDetail,
};
use serde_json::Value;
use tokio::sync::Notify;

/// How long a test waits for a condition before failing.
const PATIENCE: Duration = Duration::from_secs(15);

/// What the mock server knows and what it was told.
#[derive(Default)]
pub struct MockState {
    /// agent id → token.
    pub agents: HashMap<String, String>,
    pub registrations: Vec<RegisterAgent>,
    /// Assignments waiting for a lease.
    pub queue: VecDeque<Lease>,
    pub lease_requests: Vec<LeaseRequest>,
    pub heartbeats: u32,
    /// Handed out on the next heartbeat.
    pub revoke_next: Vec<String>,
    /// The agent status heartbeats answer.
    pub agent_status: Option<String>,
    pub progress: Vec<(String, ProgressRequest)>,
    pub completed: Vec<(String, Value)>,
    pub failed: Vec<(String, FailRequest)>,
    /// Assignments whose results get 409.
    pub superseded: HashSet<String>,
    /// How many result posts answer 503 before one is accepted.
    pub unavailable_results: u32,
    pub tasks: HashMap<String, SubmitTask>,
}

/// The state shared by every incarnation of the server, and the test.
#[derive(Default)]
pub struct Shared {
    state: Mutex<MockState>,
    changed: Notify,
}

impl Shared {
    pub fn update<R>(&self, f: impl FnOnce(&mut MockState) -> R) -> R {
        let result = f(&mut self.state.lock().unwrap());
        self.changed.notify_waiters();
        result
    }

    pub fn read<R>(&self, f: impl FnOnce(&MockState) -> R) -> R {
        f(&self.state.lock().unwrap())
    }

    /// Waits until `f` answers `Some`, failing the test after a while.
    pub async fn wait_for<R>(&self, what: &str, f: impl Fn(&MockState) -> Option<R>) -> R {
        let wait = async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if let Some(result) = self.read(&f) {
                    return result;
                }
                changed.await;
            }
        };
        tokio::time::timeout(PATIENCE, wait)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    }

    /// Queues an assignment for the next lease.
    pub fn enqueue(&self, assignment_id: &str, input: Value) {
        self.update(|s| s.queue.push_back(lease(assignment_id, input)));
    }
}

pub fn lease(assignment_id: &str, input: Value) -> Lease {
    Lease {
        assignment_id: assignment_id.into(),
        task_id: "task-1".into(),
        subtask_id: format!("work::task-1::{assignment_id}"),
        capability: "work".into(),
        attempt: 1,
        idempotency_key: format!("task-1/work::task-1::{assignment_id}"),
        lease_expires_at: "2030-01-01T00:00:00Z".into(),
        input,
    }
}

/// One incarnation of the server.
pub struct MockServer {
    pub shared: Arc<Shared>,
    pub addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl MockServer {
    /// Starts a server with a fresh state on a free port.
    pub fn start() -> MockServer {
        MockServer::start_on(Arc::new(Shared::default()), 0)
    }

    /// Starts a server with `shared` as its state on `port` (0 for any).
    pub fn start_on(shared: Arc<Shared>, port: u16) -> MockServer {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let app = router(shared.clone());
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
        MockServer {
            shared,
            addr,
            runtime: Some(runtime),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kills the server: every task of its runtime is dropped, every connection cut, the port
    /// freed. Returns once that is done.
    pub async fn kill(mut self) -> (Arc<Shared>, u16) {
        let runtime = self.runtime.take().unwrap();
        tokio::task::spawn_blocking(move || runtime.shutdown_timeout(Duration::from_secs(5)))
            .await
            .unwrap();
        (self.shared.clone(), self.addr.port())
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/agents", post(register))
        .route("/agents/{id}/lease", post(lease_handler))
        .route("/agents/{id}/heartbeat", post(heartbeat))
        .route("/assignments/{id}/{action}", post(assignment))
        .route("/agents/{id}/results", post(results))
        .route("/orchestrate", post(orchestrate))
        .route("/tasks/{id}", get(task))
        .with_state(shared)
}

/// An error answer; small, so closures can return it.
struct Refusal(StatusCode, &'static str, &'static str);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.1.into(),
            message: self.2.into(),
            fields: Vec::new(),
        };
        (self.0, Json(body)).into_response()
    }
}

fn error(status: StatusCode, code: &'static str, message: &'static str) -> Refusal {
    Refusal(status, code, message)
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("authorization")?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(str::to_owned)
}

/// Checks that the caller is agent `id` (or any agent when `id` is `None`).
fn authorize(shared: &Shared, headers: &HeaderMap, id: Option<&str>) -> Result<(), Refusal> {
    let token = bearer(headers);
    shared.read(|s| match id {
        Some(id) => match s.agents.get(id) {
            None => Err(error(StatusCode::NOT_FOUND, "not_found", "unknown agent")),
            Some(t) if Some(t) == token.as_ref() => Ok(()),
            Some(_) => Err(error(StatusCode::UNAUTHORIZED, "unauthorized", "bad token")),
        },
        None if s.agents.values().any(|t| Some(t) == token.as_ref()) => Ok(()),
        None => Err(error(StatusCode::UNAUTHORIZED, "unauthorized", "bad token")),
    })
}

async fn register(State(shared): State<Arc<Shared>>, Json(body): Json<RegisterAgent>) -> Response {
    let registered = shared.update(|s| {
        let n = s.registrations.len() + 1;
        // Characters a URL path must carry faithfully.
        let registered = RegisteredAgent {
            agent_id: format!("agent:{n}@mock/a b"),
            token: format!("token-{n}"),
        };
        s.agents
            .insert(registered.agent_id.clone(), registered.token.clone());
        s.registrations.push(body);
        registered
    });
    (StatusCode::CREATED, Json(registered)).into_response()
}

async fn lease_handler(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(request): Json<LeaseRequest>,
) -> Response {
    if let Err(refusal) = authorize(&shared, &headers, Some(&id)) {
        return refusal.into_response();
    }
    shared.update(|s| s.lease_requests.push(request.clone()));
    let max = request.max.unwrap_or(1) as usize;
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(request.wait_ms.unwrap_or(0));
    loop {
        let changed = shared.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        // Not `update`: waking every waiter, this handler included, when nothing was taken
        // would make it spin.
        let taken = {
            let mut state = shared.state.lock().unwrap();
            let n = max.min(state.queue.len());
            state.queue.drain(..n).collect::<Vec<_>>()
        };
        if !taken.is_empty() {
            shared.changed.notify_waiters();
            return Json(LeaseResponse { assignments: taken }).into_response();
        }
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            return Json(LeaseResponse {
                assignments: Vec::new(),
            })
            .into_response();
        }
    }
}

async fn heartbeat(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(_): Json<Value>,
) -> Response {
    if let Err(refusal) = authorize(&shared, &headers, Some(&id)) {
        return refusal.into_response();
    }
    let reply = shared.update(|s| {
        s.heartbeats += 1;
        HeartbeatReply {
            agent_id: id.clone(),
            status: s.agent_status.clone().unwrap_or_else(|| "idle".into()),
            lease_expires_at: None,
            revoked: std::mem::take(&mut s.revoke_next),
        }
    });
    Json(reply).into_response()
}

async fn assignment(
    State(shared): State<Arc<Shared>>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if let Err(refusal) = authorize(&shared, &headers, None) {
        return refusal.into_response();
    }
    let answer = shared.update(|s| {
        if action == "progress" {
            s.progress
                .push((id.clone(), serde_json::from_value(body).unwrap()));
            return Ok("active");
        }
        if s.superseded.contains(&id) {
            return Err(error(
                StatusCode::CONFLICT,
                "conflict",
                "the attempt was superseded",
            ));
        }
        if s.unavailable_results > 0 {
            s.unavailable_results -= 1;
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "busy",
            ));
        }
        match action.as_str() {
            "complete" => {
                let request: CompleteRequest = serde_json::from_value(body).unwrap();
                s.completed.push((id.clone(), request.outputs));
                Ok("completed")
            }
            "fail" => {
                s.failed
                    .push((id.clone(), serde_json::from_value(body).unwrap()));
                Ok("failed")
            }
            _ => Err(error(StatusCode::NOT_FOUND, "not_found", "no such action")),
        }
    });
    match answer {
        Ok(state) => Json(AssignmentReply {
            assignment_id: id,
            state: state.into(),
            lease_expires_at: None,
        })
        .into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

/// The batch form of complete/fail: one outcome per result, the same rules per item; a busy
/// server refuses the whole call.
async fn results(
    State(shared): State<Arc<Shared>>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<baton_agent::api::ResultsRequest>,
) -> Response {
    if let Err(refusal) = authorize(&shared, &headers, Some(&agent_id)) {
        return refusal.into_response();
    }
    let answer = shared.update(|s| {
        if s.unavailable_results > 0 {
            s.unavailable_results -= 1;
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "busy",
            ));
        }
        let outcomes = body
            .results
            .into_iter()
            .map(|item| {
                let id = item.assignment_id;
                if s.superseded.contains(&id) {
                    return baton_agent::api::ResultOutcome {
                        assignment_id: id,
                        status: 409,
                        state: None,
                        error: Some(baton_agent::api::ErrorBody {
                            error: "conflict".into(),
                            message: "the attempt was superseded".into(),
                            fields: Vec::new(),
                        }),
                    };
                }
                let state = match (item.outputs, item.error) {
                    (Some(outputs), _) => {
                        s.completed.push((id.clone(), outputs));
                        "completed"
                    }
                    (None, error) => {
                        let request = baton_agent::api::FailRequest {
                            error: error.unwrap_or_default(),
                            retryable: item.retryable.unwrap_or(true),
                        };
                        s.failed.push((id.clone(), request));
                        "failed"
                    }
                };
                baton_agent::api::ResultOutcome {
                    assignment_id: id,
                    status: 200,
                    state: Some(state.into()),
                    error: None,
                }
            })
            .collect();
        Ok(outcomes)
    });
    match answer {
        Ok(results) => Json(baton_agent::api::ResultsReply { results }).into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

async fn orchestrate(State(shared): State<Arc<Shared>>, Json(body): Json<SubmitTask>) -> Response {
    let task_id = body.task_id.clone().unwrap_or_else(|| "generated".into());
    let status = shared.update(|s| match s.tasks.get(&task_id) {
        Some(existing) if *existing == body => Ok(StatusCode::OK),
        Some(_) => Err(error(
            StatusCode::CONFLICT,
            "conflict",
            "task_id already used by another task",
        )),
        None => {
            s.tasks.insert(task_id.clone(), body);
            Ok(StatusCode::CREATED)
        }
    });
    match status {
        Ok(status) => (
            status,
            Json(PlannedTask {
                task_id,
                status: "planned".into(),
                subtasks: Vec::new(),
                planner: None,
            }),
        )
            .into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

async fn task(Path(id): Path<String>) -> Response {
    if id == "missing" {
        return error(StatusCode::NOT_FOUND, "not_found", "no such task").into_response();
    }
    if id == "broken" {
        return (StatusCode::OK, "not json").into_response();
    }
    if id == "proxy" {
        return (StatusCode::BAD_GATEWAY, "<html>bad gateway</html>").into_response();
    }
    Json(TaskDetail {
        task_id: id,
        title: "t".into(),
        description: "d".into(),
        task_type: None,
        priority: 5,
        status: "planned".into(),
        created_at: "2030-01-01T00:00:00Z".into(),
        started_at: None,
        finished_at: None,
        subtasks: Vec::new(),
        metrics: Metrics {
            elapsed_seconds: 0.0,
            on_time: None,
        },
        result: None,
        status_history: Vec::new(),
        planner: None,
        params: None,
        objectives: Vec::new(),
        constraints: Vec::new(),
        acceptance_criteria: Vec::new(),
        verifications: Vec::new(),
        escalations: Vec::new(),
        usage: None,
        budget: None,
    })
    .into_response()
}
