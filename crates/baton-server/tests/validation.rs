//! Input validation and error answers over a real socket: every bad field of a submission,
//! plan, registration, query or agent-protocol body is listed in one 400 `validation_failed`
//! and nothing changes; malformed and oversized bodies; bearer authentication (401/403);
//! unknown tasks, agents and routes. Every answer is JSON and none is a 5xx.

mod common;

use baton_agent::TaskFilter;
use common::*;
use reqwest::Method;
use serde_json::{json, Value};

fn plan_body(plan: Value) -> Value {
    json!({"title": "Plan", "description": "validation", "plan": plan})
}

async fn assert_nothing_created(server: &TestServer) {
    let listed = server
        .client
        .list_tasks(&TaskFilter::default())
        .await
        .unwrap();
    assert!(listed.tasks.is_empty(), "{listed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_lists_every_bad_field_at_once() {
    let server = TestServer::start().await;
    let body = json!({
        "task_id": "bad id",
        "description": 42,
        "priority": 11,
        "task_type": 7,
        "metadata": {"due_date": "soon"},
        "bogus": true,
    });
    for path in ["/orchestrate", "/tasks"] {
        server.post(path, body.clone()).await.assert_invalid(&[
            "task_id",
            "title",
            "description",
            "priority",
            "task_type",
            "metadata.due_date",
            "bogus",
        ]);
    }
    let body = json!({
        "task_id": "x/y",
        "title": 5,
        "description": "   ",
        "priority": "urgentish",
        "task_type": "a:b",
        "metadata": "later",
        "plan": "steps",
    });
    server.post("/tasks", body).await.assert_invalid(&[
        "task_id",
        "title",
        "description",
        "priority",
        "task_type",
        "metadata",
        "plan",
    ]);
    let body = json!({"title": "t", "description": "d", "priority": 0,
                      "metadata": {"due_date": 20250101}, "task_id": "x".repeat(129)});
    server
        .post("/tasks", body)
        .await
        .assert_invalid(&["priority", "metadata.due_date", "task_id"]);
    server
        .post(
            "/tasks",
            json!({"title": "t", "description": "d", "priority": "3.5"}),
        )
        .await
        .assert_invalid(&["priority"]);
    // A plan given as an array (serde reads a struct from its fields in order): refused.
    server
        .post(
            "/tasks",
            json!({"title": "t", "description": "d",
                   "plan": [[{"id": "a", "capability": "c"}]]}),
        )
        .await
        .assert_invalid(&["plan"]);
    // Duplicate keys, at any depth, are refused naming the key.
    let reply = server
        .post_text(
            "/tasks",
            r#"{"title": "t", "description": "d", "title": "u"}"#,
        )
        .await;
    reply.assert_invalid(&["title"]);
    assert_eq!(reply.body["fields"][0]["issue"], "duplicate key");
    server
        .post_text(
            "/tasks",
            r#"{"title": "t", "description": "d", "metadata": {"a": 1, "a": 2}}"#,
        )
        .await
        .assert_invalid(&["metadata.a"]);
    // Ids that cannot travel as a URL path segment.
    for id in [".", ".."] {
        server
            .post(
                "/tasks",
                json!({"task_id": id, "title": "t", "description": "d"}),
            )
            .await
            .assert_invalid(&["task_id"]);
    }
    // Not an object at all.
    server
        .post("/tasks", json!([1, 2]))
        .await
        .assert_invalid(&["body"]);
    server
        .post("/tasks", json!("text"))
        .await
        .assert_invalid(&["body"]);
    assert_nothing_created(&server).await;

    // The good parts of the same requests are accepted once the bad ones are fixed.
    let ok = server
        .post(
            "/tasks",
            json!({"title": "t", "description": "d", "priority": "urgent",
                               "metadata": {"due_date": "2999-01-01"}, "payload": [1, "any"]}),
        )
        .await;
    assert_eq!(ok.status, 201, "{ok:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_plans_are_refused() {
    let server = TestServer::start().await;
    let step = |id: &str, cap: &str, deps: &[&str]| json!({"id": id, "capability": cap, "depends_on": deps});

    // A cycle.
    let cycle = json!({"subtasks": [step("a", "c", &["c"]), step("b", "c", &["a"]), step("c", "c", &["b"])]});
    let reply = server.post("/orchestrate", plan_body(cycle)).await;
    reply.assert_invalid(&["plan.subtasks"]);
    let issue = reply.body["fields"][0]["issue"].as_str().unwrap();
    assert!(issue.contains("cycle"), "{issue}");
    // An unknown dependency, a self-dependency, a duplicate id, a malformed capability.
    let edges = json!({"subtasks": [step("a", "c", &["zz"]), step("b", "c", &["b"]),
                                    step("b", "c", &[]), step("d", "x::y", &[])]});
    server
        .post("/orchestrate", plan_body(edges))
        .await
        .assert_invalid(&[
            "plan.subtasks[0].depends_on[0]",
            "plan.subtasks[1].depends_on[0]",
            "plan.subtasks[2].id",
            "plan.subtasks[3].capability",
        ]);
    // Malformed steps: a missing capability, wrong types, unknown keys.
    let steps = json!({"subtasks": [{"id": "a"}, {"id": 2, "capability": "ok", "depends_on": "a"},
                                    {"id": "c", "capability": "ok", "extra": 1, "input": [1]}, 7],
                       "more": true});
    server
        .post("/orchestrate", plan_body(steps))
        .await
        .assert_invalid(&[
            "plan.subtasks[0].capability",
            "plan.subtasks[1].id",
            "plan.subtasks[1].depends_on",
            "plan.subtasks[2].extra",
            "plan.subtasks[2].input",
            "plan.subtasks[3]",
            "plan.more",
        ]);
    server
        .post("/orchestrate", plan_body(json!({"steps": []})))
        .await
        .assert_invalid(&["plan.steps", "plan.subtasks"]);
    // Empty, and too big.
    server
        .post("/orchestrate", plan_body(json!({"subtasks": []})))
        .await
        .assert_invalid(&["plan.subtasks"]);
    let big: Vec<Value> = (0..1001)
        .map(|i| step(&format!("s{i}"), "c", &[]))
        .collect();
    let reply = server
        .post("/orchestrate", plan_body(json!({"subtasks": big})))
        .await;
    reply.assert_invalid(&["plan.subtasks"]);
    assert!(reply.body["fields"][0]["issue"]
        .as_str()
        .unwrap()
        .contains("1000"));
    // Plan problems are listed together with the other fields' problems.
    let both = json!({"task_id": "bad id", "description": "d",
                      "plan": {"subtasks": [step("a", "c", &["a"])]}});
    server.post("/tasks", both).await.assert_invalid(&[
        "task_id",
        "title",
        "plan.subtasks[0].depends_on[0]",
    ]);
    assert_nothing_created(&server).await;

    // Exactly 1000 steps is fine.
    let max: Vec<Value> = (0..1000)
        .map(|i| step(&format!("s{i}"), "c", &[]))
        .collect();
    let reply = server
        .post("/orchestrate", plan_body(json!({"subtasks": max})))
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body["message"]);
    assert_eq!(reply.body["subtasks"].as_array().unwrap().len(), 1000);
    assert_eq!(
        reply.body["subtasks"][999]["subtask_id"]
            .as_str()
            .unwrap()
            .rsplit("::")
            .next(),
        Some("1000")
    );
    server.shutdown().await;
}

/// The server promises that every problem of a body is listed in one 400 (`lib.rs`,
/// `validate.rs`), and plan parsing that "every problem is reported, not just the first"
/// (`baton-core/src/plan.rs`). A step with no capability must not hide another step's unknown
/// dependency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_plan_problem_is_listed_in_one_answer() {
    let server = TestServer::start().await;
    let plan = json!({"subtasks": [
        {"id": "a", "capability": "c", "depends_on": ["zz"]},
        {"id": "b"},
    ]});
    server
        .post("/orchestrate", plan_body(plan))
        .await
        .assert_invalid(&[
            "plan.subtasks[0].depends_on[0]",
            "plan.subtasks[1].capability",
        ]);
    assert_nothing_created(&server).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_bodies() {
    let server = TestServer::start().await;
    let reply = server
        .post_text("/tasks", r#"{"title": "t", "description": "#)
        .await;
    reply.assert_error(400, "bad_request");
    assert!(
        reply.body["message"].as_str().unwrap().contains("JSON"),
        "{reply:?}"
    );
    server
        .post_text("/orchestrate", "title=t")
        .await
        .assert_error(400, "bad_request");
    server
        .post_text("/agents", "\u{0}\u{1}")
        .await
        .assert_error(400, "bad_request");

    // Just under the limit: read, then refused for the field that is too long.
    let under = json!({"title": "t", "description": "x".repeat(1024 * 1024 - 100)}).to_string();
    assert!(under.len() <= 1024 * 1024);
    server
        .post_text("/tasks", under)
        .await
        .assert_invalid(&["description"]);
    // Over the limit: 413 with a JSON error body.
    let over = json!({"title": "t", "description": "x".repeat(1024 * 1024)}).to_string();
    server
        .post_text("/tasks", over.clone())
        .await
        .assert_error(413, "payload_too_large");
    server
        .post_text("/orchestrate", over)
        .await
        .assert_error(413, "payload_too_large");
    assert_nothing_created(&server).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_calls_need_the_agents_own_token() {
    let server = TestServer::start().await;
    let a = server.hand_agent("a", &["cap"]).await;
    let b = server.hand_agent("b", &["other"]).await;
    assert_eq!(
        server
            .post(
                "/tasks",
                json!({"title": "t", "description": "d",
        "plan": {"subtasks": [{"id": "s", "capability": "cap"}]}})
            )
            .await
            .status,
        201
    );
    let lease = a.lease_one().await;

    let lease_path = format!("/agents/{}/lease", a.agent_id);
    let heartbeat_path = format!("/agents/{}/heartbeat", a.agent_id);
    let complete_path = format!("/assignments/{}/complete", lease.assignment_id);
    let calls = [
        (lease_path.as_str(), json!({"max": 1, "wait_ms": 0})),
        (heartbeat_path.as_str(), json!({})),
        (
            complete_path.as_str(),
            json!({"outputs": {"by": "intruder"}}),
        ),
    ];
    for (path, body) in &calls {
        // No token, an empty one, a malformed header, an unknown token: 401.
        server
            .raw(Method::POST, path, Body::Json(body.clone()), None)
            .await
            .assert_error(401, "unauthorized");
        server
            .raw(Method::POST, path, Body::Json(body.clone()), Some(""))
            .await
            .assert_error(401, "unauthorized");
        server
            .raw(
                Method::POST,
                path,
                Body::Json(body.clone()),
                Some("bt_not_a_token"),
            )
            .await
            .assert_error(401, "unauthorized");
        // Another agent's token: 403.
        server
            .raw(Method::POST, path, Body::Json(body.clone()), Some(&b.token))
            .await
            .assert_error(403, "forbidden");
    }
    let basic = reqwest::Client::new()
        .post(format!("{}{heartbeat_path}", server.url))
        .basic_auth("a", Some("b"))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status().as_u16(), 401);

    // A valid token naming an agent that does not exist: 404.
    server
        .raw(
            Method::POST,
            "/agents/agent-nope/heartbeat",
            Body::Json(json!({})),
            Some(&a.token),
        )
        .await
        .assert_error(404, "not_found");

    // None of that changed the assignment: its holder completes it.
    let detail = server.task(&lease.task_id).await;
    assert_eq!(detail.subtasks[0].state, "assigned");
    let done = a
        .complete(&lease.assignment_id, json!({"by": "a"}))
        .await
        .unwrap();
    assert_eq!(done.state, "completed");
    let detail = server
        .wait_for_status(&lease.task_id, "completed", PATIENCE)
        .await;
    assert_eq!(detail.subtasks[0].outputs, Some(json!({"by": "a"})));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_things_are_404_json() {
    let server = TestServer::start().await;
    server
        .get("/tasks/no-such-task")
        .await
        .assert_error(404, "not_found");
    server
        .get("/agents/no-such-agent")
        .await
        .assert_error(404, "not_found");
    server
        .get("/no/such/route")
        .await
        .assert_error(404, "not_found");
    server
        .post("/nowhere", json!({}))
        .await
        .assert_error(404, "not_found");
    server
        .raw(Method::PATCH, "/tasks", Body::None, None)
        .await
        .assert_error(405, "method_not_allowed");
    let health = server.get("/healthz").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.body["status"], "ok");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_parameters_are_validated() {
    let server = TestServer::start().await;
    server
        .get("/tasks?limit=0&status=bogus&foo=1")
        .await
        .assert_invalid(&["limit", "status", "foo"]);
    server
        .get("/tasks?limit=501")
        .await
        .assert_invalid(&["limit"]);
    server
        .get("/tasks?limit=two")
        .await
        .assert_invalid(&["limit"]);
    server
        .get("/tasks?priority=11")
        .await
        .assert_invalid(&["priority"]);
    server
        .get("/agents?health=bogus&x=1")
        .await
        .assert_invalid(&["health", "x"]);
    let fine = server
        .get("/tasks?limit=500&status=completed&priority=high&task_type=x")
        .await;
    assert_eq!(fine.status, 200, "{fine:?}");
    assert_eq!(fine.body, json!({"tasks": [], "next_cursor": null}));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_registration_is_validated() {
    let server = TestServer::start().await;
    server
        .post(
            "/agents",
            json!({"name": "a", "capabilities": [], "max_concurrency": 0}),
        )
        .await
        .assert_invalid(&["capabilities", "max_concurrency"]);
    server
        .post(
            "/agents",
            json!({"capabilities": ["ok", "bad cap", "a:b", 5], "max_concurrency": "4",
                   "domains": "web", "type": 3, "extra": 1}),
        )
        .await
        .assert_invalid(&[
            "name",
            "capabilities[1]",
            "capabilities[2]",
            "capabilities[3]",
            "max_concurrency",
            "domains",
            "type",
            "extra",
        ]);
    server
        .post("/agents", json!({"name": "a", "max_concurrency": 1025}))
        .await
        .assert_invalid(&["capabilities", "max_concurrency"]);
    let agents = server.get("/agents").await;
    assert_eq!(agents.body, json!({"agents": []}));

    let ok = server
        .post(
            "/agents",
            json!({"name": "a", "capabilities": ["x", "x"], "domains": ["web"]}),
        )
        .await;
    assert_eq!(ok.status, 201, "{ok:?}");
    assert!(ok.body["agent_id"].is_string() && ok.body["token"].is_string());
    let view = server
        .get(&format!(
            "/agents/{}",
            ok.body["agent_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(view.body["skills"], json!(["x"]));
    assert_eq!(view.body["domains"], json!(["web"]));
    assert_eq!(view.body["max_concurrency"], 4);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_protocol_bodies_are_validated() {
    let server = TestServer::start().await;
    let a = server.hand_agent("a", &["cap"]).await;
    assert_eq!(
        server
            .post(
                "/tasks",
                json!({"task_id": "v-1", "title": "t", "description": "d",
        "plan": {"subtasks": [{"id": "s", "capability": "cap"}]}})
            )
            .await
            .status,
        201
    );
    let lease = a.lease_one().await;
    let post = |path: String, body: Value| {
        let server = &server;
        let token = a.token.clone();
        async move {
            server
                .raw(Method::POST, &path, Body::Json(body), Some(&token))
                .await
        }
    };
    let asg = |action: &str| format!("/assignments/{}/{action}", lease.assignment_id);

    post(
        format!("/agents/{}/lease", a.agent_id),
        json!({"max": 0, "wait_ms": -1, "x": 1}),
    )
    .await
    .assert_invalid(&["max", "wait_ms", "x"]);
    post(
        format!("/agents/{}/lease", a.agent_id),
        json!({"max": 1025}),
    )
    .await
    .assert_invalid(&["max"]);
    post(asg("complete"), json!({}))
        .await
        .assert_invalid(&["outputs"]);
    post(asg("complete"), json!({"outputs": 1, "extra": 2}))
        .await
        .assert_invalid(&["extra"]);
    post(asg("fail"), json!({"retryable": "yes"}))
        .await
        .assert_invalid(&["error", "retryable"]);
    post(asg("progress"), json!({"phase": "sleeping", "message": 5}))
        .await
        .assert_invalid(&["phase", "message"]);
    post(asg("progress"), json!({}))
        .await
        .assert_invalid(&["phase"]);
    server
        .post(
            "/execute/v-1",
            json!({"execution_mode": "sideways", "checkpoints": ["a b"]}),
        )
        .await
        .assert_invalid(&["execution_mode", "checkpoints[0]"]);

    // None of it touched the assignment.
    let detail = server.task("v-1").await;
    assert_eq!(detail.subtasks[0].state, "assigned");
    assert_eq!(detail.status, "running");
    let done = a.complete(&lease.assignment_id, json!(1)).await.unwrap();
    assert_eq!(done.state, "completed");
    let detail = server.wait_for_status("v-1", "completed", PATIENCE).await;
    assert_eq!(detail.subtasks[0].outputs, Some(json!(1)));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_engine() {
    let server = TestServer::start().await;
    let ready = server.get("/readyz").await;
    assert_eq!(ready.status, 200, "{ready:?}");
    assert_eq!(ready.body["status"], "ok");
    let health = server.get("/healthz").await;
    assert_eq!(health.status, 200, "{health:?}");
}
