//! The LLM planner against a fake OpenAI-compatible server started inside the test: a good
//! plan is used (with its objectives passed to every subtask); malformed JSON, a cycle, 500
//! steps, an unknown capability, an HTTP 500, a hang past the timeout and a refused connection
//! each fall back to the rule-based plan with the reason recorded; the fake server sees at most
//! one request per task, also when the same task is submitted twice at once or again later;
//! and the API key reaches the fake server's `Authorization` header but no answer and no log
//! line.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use baton_server::LlmConfig;
use common::*;
use serde_json::{json, Value};

const KEY: &str = "sk-test-0123456789-secret";
const TIMEOUT: Duration = Duration::from_millis(400);

/// What the fake server saw: requests per task title, and the authorization headers.
#[derive(Clone, Default)]
struct Seen {
    requests: Arc<Mutex<HashMap<String, usize>>>,
    authorization: Arc<Mutex<Vec<String>>>,
}

impl Seen {
    fn count(&self, title: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .get(title)
            .copied()
            .unwrap_or(0)
    }
}

/// A chat-completions answer whose message content is `content`.
fn completion(content: &str) -> Response {
    Json(json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}],
    }))
    .into_response()
}

fn step(id: &str, capability: &str, deps: &[&str]) -> Value {
    json!({"id": id, "capability": capability, "depends_on": deps, "brief": format!("do {id}")})
}

fn plan(subtasks: Vec<Value>) -> String {
    json!({
        "objectives": ["a good report"],
        "constraints": ["no more than two pages"],
        "acceptance_criteria": ["cites its sources"],
        "subtasks": subtasks,
    })
    .to_string()
}

/// The fake OpenAI-compatible endpoint: the task's title (in the user message) picks the answer.
async fn chat(State(seen): State<Seen>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    seen.authorization.lock().unwrap().push(auth);
    let task: Value = body["messages"][1]["content"]
        .as_str()
        .and_then(|c| serde_json::from_str(c).ok())
        .unwrap_or(Value::Null);
    let title = task["title"].as_str().unwrap_or("").to_owned();
    *seen
        .requests
        .lock()
        .unwrap()
        .entry(title.clone())
        .or_default() += 1;
    assert_eq!(body["response_format"], json!({"type": "json_object"}));
    let offered: Vec<&str> = task["capabilities"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(offered.contains(&"research"), "offered: {offered:?}");
    match title.as_str() {
        "good" | "twice" => completion(&plan(vec![
            step("find", "research", &[]),
            step("report", "write", &["find"]),
        ])),
        "malformed" => completion("{\"subtasks\": [ this is not json"),
        "cycle" => completion(&plan(vec![
            step("a", "research", &["b"]),
            step("b", "write", &["a"]),
        ])),
        "huge" => completion(&plan(
            (0..500)
                .map(|i| step(&format!("s{i}"), "research", &[]))
                .collect(),
        )),
        "unknown" => completion(&plan(vec![step("a", "teleport", &[])])),
        "http500" => (StatusCode::INTERNAL_SERVER_ERROR, "upstream exploded").into_response(),
        "hang" => {
            tokio::time::sleep(TIMEOUT * 10).await;
            completion(&plan(vec![step("late", "research", &[])]))
        }
        other => panic!("unexpected title {other:?}"),
    }
}

async fn fake_llm() -> (String, Seen) {
    let seen = Seen::default();
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

/// Every log line of this test binary, captured (the server logs through `tracing`).
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = Capture(buffer.clone());
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .init();
        buffer
    })
    .clone()
}

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn llm(url: &str) -> Option<LlmConfig> {
    Some(LlmConfig {
        url: url.to_owned(),
        model: "fake-model".into(),
        api_key: Some(KEY.into()),
        timeout: TIMEOUT,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_llm_failure_falls_back_to_a_running_rule_plan_and_the_llm_is_asked_once() {
    let logs = logs();
    let (url, seen) = fake_llm().await;
    let server = TestServer::start_with_llm(engine_config(), llm(&url)).await;
    let agent = server
        .hand_agent_with("h", &["research", "write", "general"], 16)
        .await;
    let mut answers = Vec::new();
    let cases = [
        ("good", "llm", None),
        ("malformed", "llm_fallback", Some("not JSON")),
        ("cycle", "llm_fallback", Some("dependency cycle")),
        ("huge", "llm_fallback", Some("500 subtasks (at most 50)")),
        ("unknown", "llm_fallback", Some("teleport")),
        ("http500", "llm_fallback", Some("HTTP 500")),
        ("hang", "llm_fallback", Some("no answer within 400 ms")),
    ];
    for (title, kind, reason) in cases {
        let body = json!({"task_id": title, "title": title, "description": "zzz"});
        let reply = server.post("/tasks", body).await;
        assert_eq!(reply.status, 201, "{title}: {reply:?}");
        assert_eq!(reply.body["status"], "running", "{title}: {reply:?}");
        assert_eq!(reply.body["planner"]["kind"], kind, "{title}: {reply:?}");
        if let Some(reason) = reason {
            let got = reply.body["planner"]["reason"].as_str().unwrap_or("");
            assert!(got.contains(reason), "{title}: reason {got:?}");
            // The fallback is the rule-based plan, and it runs.
            assert_eq!(reply.body["subtasks"][0]["agent"], "general", "{title}");
        }
        assert_eq!(seen.count(title), 1, "{title}: one request");
        answers.push(reply.body.to_string());
    }
    let good = server.task("good").await;
    let caps: Vec<&str> = good.subtasks.iter().map(|s| s.agent.as_str()).collect();
    assert_eq!(caps, ["research", "write"]);
    assert_eq!(
        good.planner,
        Some(json!({"kind": "llm", "model": "fake-model"}))
    );
    assert_eq!(good.objectives, ["a good report"]);

    // Each subtask gets the task's objectives, constraints and acceptance criteria and its brief.
    let mut leased = Vec::new();
    while leased.len() < cases.len() {
        leased.push(agent.lease_one().await);
    }
    let find = leased
        .iter()
        .find(|l| l.subtask_id == "research::good::1")
        .expect("the good plan's first step runs");
    assert_eq!(find.input["brief"], "do find");
    assert_eq!(find.input["objectives"], json!(["a good report"]));
    assert_eq!(find.input["constraints"], json!(["no more than two pages"]));
    assert_eq!(
        find.input["acceptance_criteria"],
        json!(["cites its sources"])
    );

    // The same task again, and one submitted twice at once: still one request each.
    let again = server
        .post(
            "/tasks",
            json!({"task_id": "good", "title": "good", "description": "zzz"}),
        )
        .await;
    assert_eq!(again.status, 200, "{again:?}");
    let twice = json!({"task_id": "twice", "title": "twice", "description": "zzz"});
    let (a, b) = tokio::join!(
        server.post("/tasks", twice.clone()),
        server.post("/tasks", twice)
    );
    let mut statuses = [a.status, b.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 201]);
    assert_eq!(seen.count("good"), 1);
    assert_eq!(seen.count("twice"), 1);

    // The key went to the endpoint, and nowhere else.
    assert!(seen
        .authorization
        .lock()
        .unwrap()
        .iter()
        .all(|a| a == &format!("Bearer {KEY}")));
    for title in ["good", "malformed", "hang"] {
        answers.push(
            server
                .get(&format!("/tasks/{title}"))
                .await
                .body
                .to_string(),
        );
    }
    assert!(answers.iter().all(|a| !a.contains(KEY)));
    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        logged.contains("LLM planner failed"),
        "the logs were captured"
    );
    assert!(!logged.contains(KEY), "the API key is in a log line");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_falls_back_and_a_client_plan_or_workflow_never_asks() {
    // A port nothing listens on.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", closed.local_addr().unwrap());
    drop(closed);
    let server = TestServer::start_with_llm(engine_config(), llm(&url)).await;
    let reply = server
        .post(
            "/orchestrate",
            json!({"title": "Fix CSS", "description": "the page layout"}),
        )
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(reply.body["planner"]["kind"], "llm_fallback");
    assert_eq!(
        reply.body["planner"]["reason"],
        "could not connect to the LLM endpoint"
    );
    assert_eq!(
        reply.body["planner"]["matched"],
        json!({"frontend": ["page", "css", "layout"]})
    );
    assert_eq!(reply.body["subtasks"][0]["agent"], "frontend");
    // A client plan and a workflow are not the LLM's to plan.
    let client = server
        .post(
            "/orchestrate",
            json!({"title": "t", "description": "d",
                   "plan": {"subtasks": [{"id": "a", "capability": "x"}]}}),
        )
        .await;
    assert_eq!(client.body["planner"], json!({"kind": "client"}));
    let workflow = server
        .post(
            "/orchestrate",
            json!({"title": "t", "description": "d", "task_type": "bug_fix"}),
        )
        .await;
    assert_eq!(workflow.body["planner"]["kind"], "workflow");
    server.shutdown().await;
}
