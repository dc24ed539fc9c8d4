//! Agents written from the README alone: plain HTTP and JSON, no SDK, and no `held` on their
//! lease polls. A lease answer that never reaches such an agent (a crash, a cut connection)
//! leaves an assignment the engine counts against the agent's slots but the agent does not
//! know about; the agent's own lease polls must not keep that phantom alive, or it blocks the
//! agent until the subtask timeout (300 s) and the task stalls. An assignment the agent has
//! acknowledged (progress on it, or `held` naming it) is kept alive by its calls as before.
//!
//! The lost answer is real: a one-shot TCP proxy forwards the lease call to the server, reads
//! the server's whole answer and drops it, closing the agent's connection.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The lease of these tests; the subtask timeout stays at its default (300 s), so only lease
/// expiry can rescue an attempt within a test's lifetime.
const LEASE: Duration = Duration::from_millis(500);
/// How long the plain agent keeps polling before the task counts as stalled: 20 leases, and
/// still far below the subtask timeout.
const STALL_DEADLINE: Duration = Duration::from_secs(10);
/// How long the agent keeps polling while it holds acknowledged work: several leases.
const HOLD_FOR: Duration = Duration::from_millis(3_000);

fn one_step(task_id: &str, capability: &str) -> Value {
    json!({"task_id": task_id, "title": "One step", "description": "plain agent test",
           "plan": {"subtasks": [{"id": "only", "capability": capability}]}})
}

/// An agent that speaks the README's HTTP protocol by hand: JSON bodies and a bearer token.
/// Its lease polls never send `held`.
struct PlainAgent<'s> {
    server: &'s TestServer,
    agent_id: String,
    token: String,
}

impl<'s> PlainAgent<'s> {
    async fn register(server: &'s TestServer, name: &str, capability: &str) -> PlainAgent<'s> {
        let body = json!({"name": name, "capabilities": [capability], "max_concurrency": 1});
        let registered = server.post("/agents", body).await;
        assert_eq!(registered.status, 201, "{registered:?}");
        let field = |f: &str| {
            registered.body[f]
                .as_str()
                .unwrap_or_else(|| panic!("registration answers {f}: {registered:?}"))
                .to_owned()
        };
        PlainAgent {
            server,
            agent_id: field("agent_id"),
            token: field("token"),
        }
    }

    async fn call(&self, path: &str, body: Value) -> Reply {
        self.server
            .raw(Method::POST, path, Body::Json(body), Some(&self.token))
            .await
    }

    /// The body of a README client's lease poll: one slot, a short long poll, no `held`.
    fn lease_body() -> Value {
        json!({"max": 1, "wait_ms": 200})
    }

    /// One lease poll; the assignments it was answered.
    async fn lease(&self) -> Vec<Value> {
        let path = format!("/agents/{}/lease", self.agent_id);
        let reply = self.call(&path, Self::lease_body()).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assignments(&reply.body)
    }

    /// Polls until an assignment comes; panics after `PATIENCE`.
    async fn lease_one(&self) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(lease) = self.lease().await.pop() {
                return lease;
            }
            assert!(
                Instant::now() < deadline,
                "agent {} got no assignment in {PATIENCE:?}",
                self.agent_id
            );
        }
    }

    /// The same lease poll sent through `proxy` (a URL standing for the server).
    async fn lease_through(&self, proxy: &str) -> reqwest::Result<reqwest::Response> {
        reqwest::Client::new()
            .post(format!("{proxy}/agents/{}/lease", self.agent_id))
            .bearer_auth(&self.token)
            .json(&Self::lease_body())
            .timeout(PATIENCE)
            .send()
            .await
    }

    async fn progress(&self, assignment_id: &str, phase: &str) -> Reply {
        let path = format!("/assignments/{assignment_id}/progress");
        self.call(&path, json!({"phase": phase})).await
    }

    async fn complete(&self, assignment_id: &str, outputs: Value) -> Reply {
        let path = format!("/assignments/{assignment_id}/complete");
        self.call(&path, json!({"outputs": outputs})).await
    }

    async fn heartbeat_holding(&self, assignment_id: &str) -> Reply {
        let path = format!("/agents/{}/heartbeat", self.agent_id);
        self.call(&path, json!({"held": [assignment_id]})).await
    }
}

/// The assignments of a lease answer.
fn assignments(body: &Value) -> Vec<Value> {
    body["assignments"]
        .as_array()
        .unwrap_or_else(|| panic!("a lease answer lists assignments: {body}"))
        .clone()
}

fn text<'v>(value: &'v Value, field: &str) -> &'v str {
    value[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is a string: {value}"))
}

/// What the proxy kept of the one exchange it carried.
struct Swallowed {
    /// The server's whole HTTP answer, which the client never received.
    response: Vec<u8>,
    /// When the proxy had read it, that is, when the server had handed the assignment out.
    at: Instant,
}

impl Swallowed {
    fn status_line(&self) -> String {
        let text = String::from_utf8_lossy(&self.response);
        text.lines().next().unwrap_or_default().to_owned()
    }

    fn body(&self) -> Value {
        let start = header_end(&self.response).expect("a whole answer") + 4;
        serde_json::from_slice(&self.response[start..]).unwrap_or_else(|e| {
            panic!(
                "the swallowed answer has a JSON body ({e}): {}",
                String::from_utf8_lossy(&self.response)
            )
        })
    }
}

/// Starts a proxy for one connection to `upstream`: it forwards the request, reads the
/// server's whole answer, then drops it and closes the client's connection without a byte.
/// Returns the proxy's URL and what it swallowed.
async fn swallowing_proxy(upstream: SocketAddr) -> (String, JoinHandle<Swallowed>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the proxy");
    let url = format!("http://{}", listener.local_addr().unwrap());
    let carried = tokio::spawn(async move {
        let (client, _) = listener.accept().await.expect("the client connects");
        drop(listener);
        let server = TcpStream::connect(upstream)
            .await
            .expect("the proxy reaches the server");
        let (mut client_read, client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        let forward = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        });
        let response = read_http_response(&mut server_read).await;
        let at = Instant::now();
        // Closing every half closes both connections: the client sees its connection end
        // before any answer.
        forward.abort();
        let _ = forward.await;
        drop(client_write);
        drop(server_read);
        Swallowed { response, at }
    });
    (url, carried)
}

fn header_end(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Reads one HTTP/1.1 answer with a `content-length`, head and body.
async fn read_http_response(stream: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = header_end(&bytes) {
            let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .unwrap_or_else(|| panic!("the server's answer has a content-length: {head}"))
                .trim()
                .parse()
                .expect("a numeric content-length");
            if bytes.len() >= end + 4 + length {
                return bytes;
            }
        }
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut chunk))
            .await
            .expect("the server answers in time")
            .expect("read the server's answer");
        assert!(
            n > 0,
            "the server closed before a whole answer: {}",
            String::from_utf8_lossy(&bytes)
        );
        bytes.extend_from_slice(&chunk[..n]);
    }
}

fn server_addr(server: &TestServer) -> SocketAddr {
    server
        .url
        .strip_prefix("http://")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("a socket address in {}", server.url))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_answer_that_never_arrived_expires_although_the_plain_agent_keeps_polling() {
    let server = TestServer::start_with(short_lease_config(LEASE)).await;
    let agent = PlainAgent::register(&server, "plain", "plain").await;
    let created = server.post("/tasks", one_step("stall-1", "plain")).await;
    assert_eq!(created.status, 201, "{created:?}");
    let sub_id = "plain::stall-1::1";

    // The lease answer is lost on the way: the server commits the assignment and answers,
    // the agent's connection is closed before a byte of the answer.
    let (proxy, carried) = swallowing_proxy(server_addr(&server)).await;
    let outcome = agent.lease_through(&proxy).await;
    let swallowed = tokio::time::timeout(PATIENCE, carried)
        .await
        .expect("the proxy carries the call in time")
        .expect("the proxy does not panic");
    assert!(
        outcome.is_err(),
        "the agent must not receive the lease answer: {outcome:?}"
    );
    assert!(
        swallowed.status_line().contains(" 200 "),
        "{}",
        swallowed.status_line()
    );
    let lost = assignments(&swallowed.body());
    assert_eq!(lost.len(), 1, "the server handed out the work: {lost:?}");
    let lost = &lost[0];
    assert_eq!(text(lost, "subtask_id"), sub_id);
    assert_eq!(lost["attempt"], 1);
    let lost_id = text(lost, "assignment_id").to_owned();

    let detail = server.task("stall-1").await;
    let s = subtask(&detail, sub_id);
    assert_eq!(s.state, "assigned", "{s:?}");
    assert_eq!(s.assigned_agent.as_deref(), Some(agent.agent_id.as_str()));
    assert_eq!(s.attempts, 1);

    // The agent goes on like any README client: it polls for work and does what it gets.
    let deadline = swallowed.at + STALL_DEADLINE;
    let (retry, retry_after) = loop {
        if let Some(lease) = agent.lease().await.pop() {
            break (lease, swallowed.at.elapsed());
        }
        if Instant::now() >= deadline {
            let detail = server.task("stall-1").await;
            panic!(
                "task stall-1 still {} after {STALL_DEADLINE:?}: the phantom assignment {lost_id} \
                 is kept alive by the agent's polls and fills its only slot, so the work is \
                 never handed out again (subtask {sub_id}: {:?} attempts, states {:?})",
                detail.status,
                subtask(&detail, sub_id).attempts,
                states_of(&detail, sub_id),
            );
        }
    };
    assert_eq!(text(&retry, "subtask_id"), sub_id);
    assert_eq!(retry["attempt"], 2);
    let retry_id = text(&retry, "assignment_id").to_owned();
    assert_ne!(retry_id, lost_id);
    assert!(
        retry_after < LEASE * 5,
        "the retry came {retry_after:?} after the lost answer, more than five leases of {LEASE:?}"
    );
    let done = agent.complete(&retry_id, json!({"by": "plain"})).await;
    assert_eq!(done.status, 200, "{done:?}");
    assert_eq!(done.body["state"], "completed");

    let detail = server
        .wait_for_status("stall-1", "completed", PATIENCE)
        .await;
    assert_lost_lease_then_completed(&detail, sub_id, &agent.agent_id);
    assert_eq!(
        subtask(&detail, sub_id).outputs,
        Some(json!({"by": "plain"}))
    );

    // The attempt whose answer was lost is superseded: a result for it changes nothing.
    agent
        .complete(&lost_id, json!({"by": "ghost"}))
        .await
        .assert_error(409, "conflict");
    let after = server.task("stall-1").await;
    assert_eq!(
        subtask(&after, sub_id).outputs,
        Some(json!({"by": "plain"}))
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_acknowledged_by_progress_stays_alive_while_the_plain_agent_keeps_polling() {
    let server = TestServer::start_with(short_lease_config(LEASE)).await;
    let agent = PlainAgent::register(&server, "plain", "plain").await;
    let created = server.post("/tasks", one_step("long-1", "plain")).await;
    assert_eq!(created.status, 201, "{created:?}");
    let sub_id = "plain::long-1::1";

    let lease = agent.lease_one().await;
    assert_eq!(text(&lease, "subtask_id"), sub_id);
    let id = text(&lease, "assignment_id").to_owned();
    let acknowledged = agent.progress(&id, "executing").await;
    assert_eq!(acknowledged.status, 200, "{acknowledged:?}");
    assert_eq!(acknowledged.body["state"], "active");

    // Long work: for several leases the agent only polls for more (its one slot is taken).
    let until = Instant::now() + HOLD_FOR;
    while Instant::now() < until {
        let got = agent.lease().await;
        assert!(got.is_empty(), "its only slot is taken: {got:?}");
    }
    let detail = server.task("long-1").await;
    let s = subtask(&detail, sub_id);
    assert_eq!(
        (s.state.as_str(), s.attempts),
        ("running", 1),
        "the acknowledged attempt outlives {HOLD_FOR:?} of polls: {:#?}",
        detail.status_history
    );

    let done = agent.complete(&id, json!({"long": true})).await;
    assert_eq!(done.status, 200, "{done:?}");
    assert_eq!(done.body["state"], "completed");
    let detail = server
        .wait_for_status("long-1", "completed", PATIENCE)
        .await;
    let s = subtask(&detail, sub_id);
    assert_eq!(s.attempts, 1);
    assert_eq!(s.outputs, Some(json!({"long": true})));
    assert_eq!(
        states_of(&detail, sub_id),
        ["ready", "assigned", "running", "executing", "completed"]
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_named_in_held_heartbeats_stays_alive_without_progress() {
    let server = TestServer::start_with(short_lease_config(LEASE)).await;
    let agent = PlainAgent::register(&server, "plain", "plain").await;
    let created = server.post("/tasks", one_step("held-1", "plain")).await;
    assert_eq!(created.status, 201, "{created:?}");
    let sub_id = "plain::held-1::1";

    let lease = agent.lease_one().await;
    assert_eq!(text(&lease, "subtask_id"), sub_id);
    let id = text(&lease, "assignment_id").to_owned();

    // The agent reports no progress; it heartbeats five times a lease, naming its work.
    let mut beats = tokio::time::interval(LEASE / 5);
    let until = Instant::now() + HOLD_FOR;
    while Instant::now() < until {
        beats.tick().await;
        let beat = agent.heartbeat_holding(&id).await;
        assert_eq!(beat.status, 200, "{beat:?}");
        assert_eq!(beat.body["revoked"], json!([]), "{beat:?}");
        assert!(beat.body["lease_expires_at"].is_string(), "{beat:?}");
    }
    let detail = server.task("held-1").await;
    let s = subtask(&detail, sub_id);
    assert!(
        matches!(s.state.as_str(), "assigned" | "running") && s.attempts == 1,
        "the held attempt outlives {HOLD_FOR:?} of heartbeats: {s:?}\n{:#?}",
        detail.status_history
    );

    let done = agent.complete(&id, json!({"held": true})).await;
    assert_eq!(done.status, 200, "{done:?}");
    assert_eq!(done.body["state"], "completed");
    let detail = server
        .wait_for_status("held-1", "completed", PATIENCE)
        .await;
    let s = subtask(&detail, sub_id);
    assert_eq!(s.attempts, 1);
    assert!(
        !states_of(&detail, sub_id).contains(&"retry_wait".to_owned()),
        "{:#?}",
        detail.status_history
    );
    server.shutdown().await;
}
