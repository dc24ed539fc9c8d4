//! A typed HTTP client for Baton's REST API: one async method per endpoint, typed with the
//! `baton_api` wire types.
//!
//! Invariants:
//! - ids are always put into URLs as percent-encoded path segments, never by string
//!   concatenation, so an id holding `/`, `?`, `#` or `%` addresses exactly that resource;
//! - every failure is one of [`Error`]'s variants: the server's answer ([`Error::Api`]), the
//!   network ([`Error::Transport`], worth retrying), an unreadable answer ([`Error::Decode`]) or
//!   a request that cannot be built ([`Error::InvalidInput`]);
//! - the client itself never retries: retry policy belongs to the caller (the worker retries
//!   transport errors, a CLI reports them).

use std::fmt;
use std::time::Duration;

use baton_api::{
    AgentList, AgentView, AssignmentReply, ClientPlan, CompleteRequest, ErrorBody, EscalationList,
    EscalationView, ExecuteRequest, ExecuteWorkflow, FailRequest, GateDecision, GateReply, Health,
    HeartbeatReply, HeartbeatRequest, LeaseRequest, LeaseResponse, ManualAssign, PlannedTask,
    ProgressRequest, RegisterAgent, RegisteredAgent, ResolveRequest, ResultsReply, ResultsRequest,
    SubmitBatch, SubmitBatchReply, SubmitTask, TaskDetail, TaskList, TaskStatusReply,
    WorkflowCreated, WorkflowDef, WorkflowList, WorkflowView,
};
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, RequestBuilder, StatusCode, Url};
use serde::de::DeserializeOwned;

/// How long establishing a TCP (and TLS) connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The whole-request timeout of ordinary calls.
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A long poll may take `wait_ms` plus this margin before the client gives up on it.
const LONG_POLL_MARGIN: Duration = Duration::from_secs(10);
/// The wait assumed for a lease call that leaves `wait_ms` to the server.
const ASSUMED_SERVER_WAIT: Duration = Duration::from_secs(30);
/// How much of a non-JSON error answer is kept as the message.
const MAX_ERROR_TEXT: usize = 512;

/// Everything that can go wrong with a call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with a non-2xx status.
    #[error("{status} {}: {}", body.error, body.message)]
    Api { status: u16, body: ErrorBody },
    /// The server could not be reached, or the connection broke or timed out. Worth retrying.
    #[error("transport error: {0}")]
    Transport(String),
    /// A 2xx answer that is not the expected JSON.
    #[error("cannot decode the answer: {0}")]
    Decode(String),
    /// The request cannot be built: a malformed base URL, or an id that no URL path can carry
    /// (empty, `.` or `..`).
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

impl Error {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The error body of an API error.
    pub fn body(&self) -> Option<&ErrorBody> {
        match self {
            Error::Api { body, .. } => Some(body),
            _ => None,
        }
    }

    /// A 409: a conflicting resubmission, or a result for a superseded attempt.
    pub fn is_conflict(&self) -> bool {
        self.status() == Some(409)
    }

    /// A 404.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// The server was not reached or the connection broke.
    pub fn is_transport(&self) -> bool {
        matches!(self, Error::Transport(_))
    }

    /// Whether the same call may succeed later unchanged: transport failures, and the
    /// statuses that mean "not now" (408, 429, 5xx).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport(_) => true,
            Error::Api { status, .. } => matches!(status, 408 | 429 | 500..=599),
            Error::Decode(_) | Error::InvalidInput(_) => false,
        }
    }
}

/// The answer to a submission.
#[derive(Clone, Debug, PartialEq)]
pub struct Submitted {
    /// The task and its plan.
    pub task: PlannedTask,
    /// `true` when this call created the task (201), `false` when the same body had already
    /// been submitted under this `task_id` (200).
    pub created: bool,
}

/// Filters of `GET /tasks`; `None` leaves a filter out.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskFilter {
    pub status: Option<String>,
    /// A priority name (`high`) or number (`8`).
    pub priority: Option<String>,
    pub task_type: Option<String>,
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Filters of `GET /agents`; `None` leaves a filter out.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentFilter {
    pub domain: Option<String>,
    pub capability: Option<String>,
    pub health: Option<String>,
}

/// A client of one Baton server. Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// Always ends with `/`, so that path segments are appended after any prefix.
    base: Url,
    /// The bearer token of client and admin calls, when the server requires one.
    token: Option<String>,
    request_timeout: Duration,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl Client {
    /// A client of the server at `base_url` (`http://127.0.0.1:8003`, possibly with a path
    /// prefix).
    pub fn new(base_url: &str) -> Result<Client, Error> {
        let mut base = Url::parse(base_url)
            .map_err(|e| Error::InvalidInput(format!("base URL {base_url:?}: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(Error::InvalidInput(format!(
                "base URL {base_url:?}: expected an http or https URL"
            )));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        base.set_query(None);
        base.set_fragment(None);
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("baton-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::InvalidInput(format!("HTTP client: {}", error_chain(&e))))?;
        Ok(Client {
            http,
            base,
            token: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        })
    }

    /// Sends `token` as the bearer token of client and admin calls. Agent calls use the
    /// agent's own token, given to each of them.
    pub fn with_token(mut self, token: impl Into<String>) -> Client {
        self.token = Some(token.into());
        self
    }

    /// The whole-request timeout of calls other than long polls (default 30 s).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Client {
        self.request_timeout = timeout;
        self
    }

    /// The base URL, ending with `/`.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    // ----- tasks -----

    /// `POST /orchestrate`: submit and plan a task.
    pub async fn orchestrate(&self, task: &SubmitTask) -> Result<Submitted, Error> {
        self.submission(&["orchestrate"], task).await
    }

    /// `POST /tasks`: submit a task and execute it at once.
    pub async fn submit(&self, task: &SubmitTask) -> Result<Submitted, Error> {
        self.submission(&["tasks"], task).await
    }

    async fn submission(
        &self,
        path: &[&str],
        body: &impl serde::Serialize,
    ) -> Result<Submitted, Error> {
        let req = self.request(Method::POST, path, None)?.json(body);
        let (status, task) = self.send(req).await?;
        Ok(Submitted {
            task,
            created: status == StatusCode::CREATED,
        })
    }

    /// `POST /execute/{task_id}`: start or resume a task.
    pub async fn execute(
        &self,
        task_id: &str,
        request: &ExecuteRequest,
    ) -> Result<TaskStatusReply, Error> {
        let req = self
            .request(Method::POST, &["execute", task_id], None)?
            .json(request);
        self.answer(req).await
    }

    /// `GET /tasks/{task_id}`.
    pub async fn task(&self, task_id: &str) -> Result<TaskDetail, Error> {
        let req = self.request(Method::GET, &["tasks", task_id], None)?;
        self.answer(req).await
    }

    /// `POST /tasks/batch`: many submissions in one call; one outcome per task, in order.
    pub async fn submit_batch(&self, batch: &SubmitBatch) -> Result<SubmitBatchReply, Error> {
        let req = self
            .request(Method::POST, &["tasks", "batch"], None)?
            .json(batch);
        self.answer(req).await
    }

    /// `POST /agents/{agent_id}/results`: several completions and failures in one call; the
    /// answer has one outcome per result, in order.
    pub async fn results(
        &self,
        agent_id: &str,
        token: &str,
        request: &ResultsRequest,
    ) -> Result<ResultsReply, Error> {
        let req = self
            .request(Method::POST, &["agents", agent_id, "results"], Some(token))?
            .json(request);
        self.answer(req).await
    }

    /// `GET /tasks/{task_id}?wait_ms=…`: the task once it is finished, or as it is after `wait`.
    pub async fn wait_task(&self, task_id: &str, wait: Duration) -> Result<TaskDetail, Error> {
        let timeout = self.request_timeout.max(wait + LONG_POLL_MARGIN);
        let req = self
            .request(Method::GET, &["tasks", task_id], None)?
            .query(&[("wait_ms", wait.as_millis().to_string())])
            .timeout(timeout);
        self.answer(req).await
    }

    /// `GET /tasks` with filters and cursor paging.
    pub async fn list_tasks(&self, filter: &TaskFilter) -> Result<TaskList, Error> {
        let limit = filter.limit.map(|l| l.to_string());
        let query = [
            ("status", filter.status.as_deref()),
            ("priority", filter.priority.as_deref()),
            ("task_type", filter.task_type.as_deref()),
            ("limit", limit.as_deref()),
            ("cursor", filter.cursor.as_deref()),
        ];
        let url = with_query(self.url(&["tasks"])?, &query);
        self.answer(self.request_to(Method::GET, url, None)).await
    }

    /// `PUT /tasks/{task_id}/plan`: replace the plan of a task that has not started; a 409
    /// once it runs.
    pub async fn replace_plan(
        &self,
        task_id: &str,
        plan: &ClientPlan,
    ) -> Result<PlannedTask, Error> {
        let req = self
            .request(Method::PUT, &["tasks", task_id, "plan"], None)?
            .json(plan);
        self.answer(req).await
    }

    /// `POST /plan`: the plan this submission would get (`status: "preview"`, with its
    /// `planner`); nothing is created.
    pub async fn preview_plan(&self, task: &SubmitTask) -> Result<PlannedTask, Error> {
        let req = self.request(Method::POST, &["plan"], None)?.json(task);
        self.answer(req).await
    }

    /// `PUT /tasks/{task_id}/cancel`.
    pub async fn cancel(&self, task_id: &str) -> Result<TaskStatusReply, Error> {
        let req = self.request(Method::PUT, &["tasks", task_id, "cancel"], None)?;
        self.answer(req).await
    }

    // ----- governance -----

    /// `GET /escalations`, newest first; `None` leaves a filter out (`status`: `open` or
    /// `resolved`; the server's default limit is 50, at most 500).
    pub async fn escalations(
        &self,
        status: Option<&str>,
        task_id: Option<&str>,
        limit: Option<u32>,
    ) -> Result<EscalationList, Error> {
        let limit = limit.map(|l| l.to_string());
        let query = [
            ("status", status),
            ("task_id", task_id),
            ("limit", limit.as_deref()),
        ];
        let url = with_query(self.url(&["escalations"])?, &query);
        self.answer(self.request_to(Method::GET, url, None)).await
    }

    /// `GET /escalations/{escalation_id}`.
    pub async fn escalation(&self, escalation_id: &str) -> Result<EscalationView, Error> {
        let req = self.request(Method::GET, &["escalations", escalation_id], None)?;
        self.answer(req).await
    }

    /// `POST /escalations/{escalation_id}/resolve`: the task continues as decided; the answer
    /// is the resolved escalation. A 409 when it is already resolved or the action does not
    /// fit its kind; a 400 names every bad field.
    pub async fn resolve(
        &self,
        escalation_id: &str,
        request: &ResolveRequest,
    ) -> Result<EscalationView, Error> {
        let req = self
            .request(
                Method::POST,
                &["escalations", escalation_id, "resolve"],
                None,
            )?
            .json(request);
        self.answer(req).await
    }

    /// `POST /tasks/{task_id}/approve`: release subtasks waiting for approval (all of them
    /// when `decision.subtask_ids` is absent). A 409 when none, or a named one, is waiting.
    pub async fn approve(
        &self,
        task_id: &str,
        decision: &GateDecision,
    ) -> Result<GateReply, Error> {
        self.gate(task_id, "approve", decision).await
    }

    /// `POST /tasks/{task_id}/reject`: reject subtasks waiting for approval (each becomes an
    /// escalation); the server requires `decision.note`.
    pub async fn reject(&self, task_id: &str, decision: &GateDecision) -> Result<GateReply, Error> {
        self.gate(task_id, "reject", decision).await
    }

    async fn gate(
        &self,
        task_id: &str,
        action: &str,
        decision: &GateDecision,
    ) -> Result<GateReply, Error> {
        let req = self
            .request(Method::POST, &["tasks", task_id, action], None)?
            .json(decision);
        self.answer(req).await
    }

    /// `POST /tasks/{task_id}/subtasks/{subtask_id}/assign`: route a ready or blocked subtask
    /// by hand to a live agent (at its next lease call); a 409 otherwise.
    pub async fn assign_subtask(
        &self,
        task_id: &str,
        subtask_id: &str,
        assign: &ManualAssign,
    ) -> Result<TaskStatusReply, Error> {
        let req = self
            .request(
                Method::POST,
                &["tasks", task_id, "subtasks", subtask_id, "assign"],
                None,
            )?
            .json(assign);
        self.answer(req).await
    }

    // ----- workflows -----

    /// `POST /workflows`: publish `def` as the next version of its name. A 400 names every
    /// problem in its `fields`.
    pub async fn publish_workflow(&self, def: &WorkflowDef) -> Result<WorkflowCreated, Error> {
        let req = self.request(Method::POST, &["workflows"], None)?.json(def);
        self.answer(req).await
    }

    /// `POST /workflows` with a YAML document, sent as it is (`Content-Type:
    /// application/yaml`), so the server reads it exactly as written.
    pub async fn publish_workflow_yaml(&self, yaml: &str) -> Result<WorkflowCreated, Error> {
        let req = self
            .request(Method::POST, &["workflows"], None)?
            .header(CONTENT_TYPE, "application/yaml")
            .body(yaml.to_owned());
        self.answer(req).await
    }

    /// `GET /workflows`: the latest version of every workflow, the built-ins included.
    pub async fn workflows(&self) -> Result<WorkflowList, Error> {
        let req = self.request(Method::GET, &["workflows"], None)?;
        self.answer(req).await
    }

    /// `GET /workflows/{id}`: the latest version, or `version`. `id` is the workflow's name.
    pub async fn workflow(&self, id: &str, version: Option<u32>) -> Result<WorkflowView, Error> {
        let version = version.map(|v| v.to_string());
        let url = with_query(
            self.url(&["workflows", id])?,
            &[("version", version.as_deref())],
        );
        self.answer(self.request_to(Method::GET, url, None)).await
    }

    /// `POST /workflows/{id}/execute`: a running task of the workflow (its latest version, or
    /// `run.version`).
    pub async fn run_workflow(&self, id: &str, run: &ExecuteWorkflow) -> Result<Submitted, Error> {
        self.submission(&["workflows", id, "execute"], run).await
    }

    // ----- agents -----

    /// `GET /agents` with filters.
    pub async fn agents(&self, filter: &AgentFilter) -> Result<AgentList, Error> {
        let query = [
            ("domain", filter.domain.as_deref()),
            ("capability", filter.capability.as_deref()),
            ("health", filter.health.as_deref()),
        ];
        let url = with_query(self.url(&["agents"])?, &query);
        self.answer(self.request_to(Method::GET, url, None)).await
    }

    /// `GET /agents/{agent_id}`.
    pub async fn agent(&self, agent_id: &str) -> Result<AgentView, Error> {
        let req = self.request(Method::GET, &["agents", agent_id], None)?;
        self.answer(req).await
    }

    /// `POST /agents`: register a remote agent; the answer holds its token (shown once).
    pub async fn register_agent(&self, agent: &RegisterAgent) -> Result<RegisteredAgent, Error> {
        let req = self.request(Method::POST, &["agents"], None)?.json(agent);
        self.answer(req).await
    }

    /// `DELETE /agents/{agent_id}`: drain the agent, then stop it.
    pub async fn drain_agent(&self, agent_id: &str) -> Result<AgentView, Error> {
        let req = self.request(Method::DELETE, &["agents", agent_id], None)?;
        self.answer(req).await
    }

    /// `GET /healthz`.
    pub async fn health(&self) -> Result<Health, Error> {
        let req = self.request(Method::GET, &["healthz"], None)?;
        self.answer(req).await
    }

    // ----- the agent protocol (each call with the agent's token) -----

    /// `POST /agents/{agent_id}/lease`: a long poll for up to `max` assignments. The server
    /// holds the call up to `wait_ms` when there is no work, so the request may take that long
    /// plus 10 s before it times out.
    pub async fn lease(
        &self,
        agent_id: &str,
        token: &str,
        request: &LeaseRequest,
    ) -> Result<LeaseResponse, Error> {
        let wait = request
            .wait_ms
            .map_or(ASSUMED_SERVER_WAIT, Duration::from_millis);
        let timeout = self.request_timeout.max(wait + LONG_POLL_MARGIN);
        let req = self
            .request(Method::POST, &["agents", agent_id, "lease"], Some(token))?
            .timeout(timeout)
            .json(request);
        self.answer(req).await
    }

    /// `POST /agents/{agent_id}/heartbeat`: renews the agent's leases; the answer lists the
    /// assignments to abandon.
    pub async fn heartbeat(
        &self,
        agent_id: &str,
        token: &str,
        request: &HeartbeatRequest,
    ) -> Result<HeartbeatReply, Error> {
        let req = self
            .request(
                Method::POST,
                &["agents", agent_id, "heartbeat"],
                Some(token),
            )?
            .json(request);
        self.answer(req).await
    }

    /// `POST /assignments/{assignment_id}/progress`.
    pub async fn progress(
        &self,
        assignment_id: &str,
        token: &str,
        request: &ProgressRequest,
    ) -> Result<AssignmentReply, Error> {
        self.assignment_call(assignment_id, "progress", token, request)
            .await
    }

    /// `POST /assignments/{assignment_id}/complete`. A 409 means the attempt was superseded
    /// (nothing changed); repeating an accepted completion answers 200 again.
    pub async fn complete(
        &self,
        assignment_id: &str,
        token: &str,
        request: &CompleteRequest,
    ) -> Result<AssignmentReply, Error> {
        self.assignment_call(assignment_id, "complete", token, request)
            .await
    }

    /// `POST /assignments/{assignment_id}/fail`. A 409 means the attempt was superseded.
    pub async fn fail(
        &self,
        assignment_id: &str,
        token: &str,
        request: &FailRequest,
    ) -> Result<AssignmentReply, Error> {
        self.assignment_call(assignment_id, "fail", token, request)
            .await
    }

    async fn assignment_call(
        &self,
        assignment_id: &str,
        action: &str,
        token: &str,
        body: &impl serde::Serialize,
    ) -> Result<AssignmentReply, Error> {
        let req = self
            .request(
                Method::POST,
                &["assignments", assignment_id, action],
                Some(token),
            )?
            .json(body);
        self.answer(req).await
    }

    // ----- plumbing -----

    /// The URL of `segments` under the base URL, each segment percent-encoded.
    fn url(&self, segments: &[&str]) -> Result<Url, Error> {
        for segment in segments {
            // An empty segment would address another resource (`/tasks/` for `/tasks/{id}`),
            // and the URL standard removes `.` and `..` segments, even percent-encoded.
            if segment.is_empty() || *segment == "." || *segment == ".." {
                return Err(Error::InvalidInput(format!(
                    "{segment:?} cannot be used as an id in a URL"
                )));
            }
        }
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| Error::InvalidInput("base URL cannot have a path".into()))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// A request to `segments` with the agent `token`, or the client's own token.
    fn request(
        &self,
        method: Method,
        segments: &[&str],
        token: Option<&str>,
    ) -> Result<RequestBuilder, Error> {
        Ok(self.request_to(method, self.url(segments)?, token))
    }

    fn request_to(&self, method: Method, url: Url, token: Option<&str>) -> RequestBuilder {
        let req = self.http.request(method, url).timeout(self.request_timeout);
        match token.or(self.token.as_deref()) {
            Some(token) => req.bearer_auth(token),
            None => req,
        }
    }

    async fn answer<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T, Error> {
        self.send(req).await.map(|(_, value)| value)
    }

    /// Sends the request and decodes a 2xx answer as `T`, anything else as an [`Error::Api`].
    async fn send<T: DeserializeOwned>(
        &self,
        req: RequestBuilder,
    ) -> Result<(StatusCode, T), Error> {
        let response = req.send().await.map_err(transport)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(transport)?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        let value = serde_json::from_slice(&bytes).map_err(|e| {
            Error::Decode(format!(
                "{e} in a {status} answer: {}",
                truncated(&String::from_utf8_lossy(&bytes))
            ))
        })?;
        Ok((status, value))
    }
}

/// `url` with the present pairs of `query` added.
fn with_query(mut url: Url, query: &[(&str, Option<&str>)]) -> Url {
    let present: Vec<_> = query
        .iter()
        .filter_map(|(key, value)| value.map(|v| (*key, v)))
        .collect();
    if !present.is_empty() {
        url.query_pairs_mut().extend_pairs(present);
    }
    url
}

fn transport(error: reqwest::Error) -> Error {
    Error::Transport(error_chain(&error))
}

/// The error and its sources: reqwest's own message alone ("error sending request") hides the
/// cause ("connection refused").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The error of a non-2xx answer: its `ErrorBody`, or one made from the status and the text
/// (a proxy's HTML page, an empty body).
fn api_error(status: StatusCode, body: &[u8]) -> Error {
    let body = serde_json::from_slice::<ErrorBody>(body).unwrap_or_else(|_| {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        ErrorBody {
            error: error_code(status).to_owned(),
            message: if text.is_empty() {
                status
                    .canonical_reason()
                    .unwrap_or("unknown status")
                    .to_owned()
            } else {
                truncated(text)
            },
            fields: Vec::new(),
        }
    });
    Error::Api {
        status: status.as_u16(),
        body,
    }
}

/// The stable error code the server uses for `status`.
fn error_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        408 => "timeout",
        409 => "conflict",
        413 => "payload_too_large",
        429 => "rate_limited",
        503 => "unavailable",
        500..=599 => "server_error",
        _ => "http_error",
    }
}

fn truncated(text: &str) -> String {
    match text.char_indices().nth(MAX_ERROR_TEXT) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(base: &str) -> Client {
        Client::new(base).unwrap()
    }

    #[test]
    fn ids_are_percent_encoded_path_segments() {
        let c = client("http://127.0.0.1:8003");
        let url = c.url(&["tasks", "a/b?c#d%e f", "cancel"]).unwrap();
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8003/tasks/a%2Fb%3Fc%23d%25e%20f/cancel"
        );
        let url = c
            .url(&["assignments", "code::task-1@x:y.z::2", "complete"])
            .unwrap();
        assert_eq!(
            url.path_segments().unwrap().nth(1),
            Some("code::task-1@x:y.z::2")
        );
        let url = c.url(&["tasks", "é…"]).unwrap();
        assert_eq!(url.path(), "/tasks/%C3%A9%E2%80%A6");
    }

    #[test]
    fn base_url_prefix_is_kept_with_or_without_a_trailing_slash() {
        for base in [
            "http://h:1/baton",
            "http://h:1/baton/",
            "http://h:1/baton/?x=1#f",
        ] {
            let url = client(base).url(&["tasks", "t1"]).unwrap();
            assert_eq!(url.as_str(), "http://h:1/baton/tasks/t1", "{base}");
        }
        let url = client("https://h").url(&["healthz"]).unwrap();
        assert_eq!(url.as_str(), "https://h/healthz");
    }

    #[test]
    fn ids_no_url_can_carry_are_refused() {
        let c = client("http://h");
        for id in ["", ".", ".."] {
            let err = c.url(&["tasks", id]).unwrap_err();
            assert!(matches!(err, Error::InvalidInput(_)), "{id:?}: {err}");
        }
        assert!(c.url(&["tasks", "..."]).is_ok());
    }

    #[test]
    fn bad_base_urls_are_refused() {
        for base in ["not a url", "mailto:x@y", "ftp://h/", "127.0.0.1:8003"] {
            assert!(
                matches!(Client::new(base), Err(Error::InvalidInput(_))),
                "{base}"
            );
        }
    }

    #[test]
    fn query_holds_only_the_given_filters_encoded() {
        let c = client("http://h");
        let url = with_query(
            c.url(&["tasks"]).unwrap(),
            &[
                ("status", Some("running")),
                ("priority", None),
                ("cursor", Some("a&b=c d")),
            ],
        );
        assert_eq!(url.query(), Some("status=running&cursor=a%26b%3Dc+d"));
        let url = with_query(c.url(&["tasks"]).unwrap(), &[("status", None)]);
        assert_eq!(url.as_str(), "http://h/tasks");
    }

    #[test]
    fn an_error_body_is_decoded() {
        let body = br#"{"error":"validation_failed","message":"bad","fields":[{"field":"title","issue":"empty"}]}"#;
        let err = api_error(StatusCode::BAD_REQUEST, body);
        let Error::Api { status, body } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(*status, 400);
        assert_eq!(body.error, "validation_failed");
        assert_eq!(body.fields[0].field, "title");
        assert!(!err.is_retryable());
    }

    #[test]
    fn a_foreign_error_answer_becomes_an_error_body() {
        let err = api_error(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>\n");
        assert_eq!(err.status(), Some(502));
        let body = err.body().unwrap();
        assert_eq!(body.error, "server_error");
        assert_eq!(body.message, "<html>bad gateway</html>");
        assert!(err.is_retryable());

        let err = api_error(StatusCode::NOT_FOUND, b"");
        assert!(err.is_not_found());
        assert_eq!(err.body().unwrap().error, "not_found");
        assert_eq!(err.body().unwrap().message, "Not Found");

        let long = "x".repeat(2000);
        let err = api_error(StatusCode::CONFLICT, long.as_bytes());
        assert!(err.is_conflict());
        assert_eq!(
            err.body().unwrap().message.chars().count(),
            MAX_ERROR_TEXT + 1
        );
    }

    #[test]
    fn error_predicates() {
        let transport = Error::Transport("refused".into());
        assert!(transport.is_transport() && transport.is_retryable());
        assert!(!transport.is_conflict() && !transport.is_not_found());
        for (status, retryable) in [
            (400, false),
            (401, false),
            (404, false),
            (409, false),
            (408, true),
            (429, true),
            (500, true),
            (503, true),
        ] {
            let err = api_error(StatusCode::from_u16(status).unwrap(), b"{}");
            assert_eq!(err.is_retryable(), retryable, "{status}");
            assert!(!err.is_transport());
        }
        assert!(!Error::Decode("x".into()).is_retryable());
    }

    #[tokio::test]
    async fn an_unreachable_server_is_a_transport_error() {
        // Bind then drop a listener: nothing listens on that port afterwards.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let err = client(&format!("http://127.0.0.1:{port}"))
            .health()
            .await
            .unwrap_err();
        assert!(err.is_transport(), "{err}");
    }

    /// A server answering every request with a 404 whose message is the request as it
    /// arrived: method, raw path and query, content type and body.
    async fn echo_server() -> Client {
        use axum::http::header;
        let app = axum::Router::new().fallback(|req: axum::extract::Request| async move {
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20)
                .await
                .unwrap_or_default();
            let content_type = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned();
            let echo = ErrorBody {
                error: "echo".into(),
                message: format!(
                    "{} {} {content_type} {}",
                    parts.method,
                    parts.uri,
                    String::from_utf8_lossy(&body)
                ),
                fields: Vec::new(),
            };
            (StatusCode::NOT_FOUND, axum::Json(echo))
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        client(&format!("http://{addr}"))
    }

    fn echoed<T: fmt::Debug>(result: Result<T, Error>) -> String {
        let err = result.unwrap_err();
        assert!(err.is_not_found(), "{err}");
        err.body().unwrap().message.clone()
    }

    #[tokio::test]
    async fn workflow_and_plan_calls_reach_their_encoded_paths() {
        let c = echo_server().await;
        let def = WorkflowDef {
            name: "w".into(),
            ..WorkflowDef::default()
        };
        assert_eq!(
            echoed(c.publish_workflow(&def).await),
            r#"POST /workflows application/json {"name":"w","steps":[]}"#
        );
        assert_eq!(
            echoed(c.publish_workflow_yaml("name: w\nsteps: []\n").await),
            "POST /workflows application/yaml name: w\nsteps: []\n"
        );
        assert_eq!(echoed(c.workflows().await), "GET /workflows - ");
        assert_eq!(
            echoed(c.workflow("a/b c", None).await),
            "GET /workflows/a%2Fb%20c - "
        );
        assert_eq!(
            echoed(c.workflow("w", Some(2)).await),
            "GET /workflows/w?version=2 - "
        );
        let run = ExecuteWorkflow {
            task_id: Some("t".into()),
            ..ExecuteWorkflow::default()
        };
        assert_eq!(
            echoed(c.run_workflow("a?b", &run).await),
            r#"POST /workflows/a%3Fb/execute application/json {"task_id":"t"}"#
        );
        assert_eq!(
            echoed(c.preview_plan(&SubmitTask::default()).await),
            r#"POST /plan application/json {"title":"","description":""}"#
        );
        assert_eq!(
            echoed(c.replace_plan("t/1", &ClientPlan::default()).await),
            r#"PUT /tasks/t%2F1/plan application/json {"subtasks":[]}"#
        );
        let err = c.workflow("..", None).await.unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    }

    #[tokio::test]
    async fn governance_calls_reach_their_encoded_paths() {
        let c = echo_server().await;
        assert_eq!(
            echoed(c.escalations(None, None, None).await),
            "GET /escalations - "
        );
        assert_eq!(
            echoed(c.escalations(Some("open"), Some("t/1 x"), Some(5)).await),
            "GET /escalations?status=open&task_id=t%2F1+x&limit=5 - "
        );
        assert_eq!(
            echoed(c.escalation("esc?1").await),
            "GET /escalations/esc%3F1 - "
        );
        let resolve = ResolveRequest {
            action: "raise_budget".into(),
            budget: Some(baton_api::Budget {
                max_tokens: Some(10),
                ..baton_api::Budget::default()
            }),
            ..ResolveRequest::default()
        };
        assert_eq!(
            echoed(c.resolve("e/1", &resolve).await),
            r#"POST /escalations/e%2F1/resolve application/json {"action":"raise_budget","budget":{"max_tokens":10}}"#
        );
        let decision = GateDecision {
            subtask_ids: Some(vec!["x::t::1".into()]),
            note: Some("ok".into()),
        };
        assert_eq!(
            echoed(c.approve("t#1", &decision).await),
            r#"POST /tasks/t%231/approve application/json {"subtask_ids":["x::t::1"],"note":"ok"}"#
        );
        assert_eq!(
            echoed(c.reject("t", &GateDecision::default()).await),
            "POST /tasks/t/reject application/json {}"
        );
        let assign = ManualAssign {
            agent_id: "agent-1".into(),
        };
        assert_eq!(
            echoed(c.assign_subtask("t", "x::t/1", &assign).await),
            r#"POST /tasks/t/subtasks/x::t%2F1/assign application/json {"agent_id":"agent-1"}"#
        );
        let manual = ExecuteRequest {
            execution_mode: Some("manual".into()),
            checkpoints: Some(vec!["a".into()]),
        };
        assert_eq!(
            echoed(c.execute("t 1", &manual).await),
            r#"POST /execute/t%201 application/json {"execution_mode":"manual","checkpoints":["a"]}"#
        );
        let err = c.resolve("..", &resolve).await.unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    }

    #[test]
    fn debug_output_hides_the_token() {
        let c = client("http://h").with_token("s3cret");
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
