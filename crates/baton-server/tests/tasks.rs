//! Task submission and listing over a real socket: idempotent resubmission by `task_id`
//! (equal bodies in any key order → 200 with the existing task, different → 409, before and
//! after the task finished, and under concurrent duplicates), and `GET /tasks` ordering,
//! filters and cursor paging.

mod common;

use std::collections::HashSet;

use baton_agent::{Job, TaskFilter};
use common::*;
use futures::future::join_all;
use reqwest::Method;
use serde_json::{json, Value};

const BODY: &str = r#"{"task_id":"dup-1","title":"Post","description":"About AI","priority":"high",
  "metadata":{"a":1,"b":{"x":true,"y":[1,2]}},
  "plan":{"subtasks":[{"id":"s","capability":"echo","input":{"k":"v","n":1}}]}}"#;
/// `BODY` with the keys in another order at every level.
const REORDERED: &str = r#"{"plan":{"subtasks":[{"input":{"n":1,"k":"v"},"capability":"echo","id":"s"}]},
  "metadata":{"b":{"y":[1,2],"x":true},"a":1},"priority":"high","description":"About AI",
  "title":"Post","task_id":"dup-1"}"#;
/// `BODY` with another title.
const DIFFERENT: &str = r#"{"task_id":"dup-1","title":"Another post","description":"About AI","priority":"high",
  "metadata":{"a":1,"b":{"x":true,"y":[1,2]}},
  "plan":{"subtasks":[{"id":"s","capability":"echo","input":{"k":"v","n":1}}]}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_and_conflicting_submissions() {
    let server = TestServer::start().await;

    let first = server.post_text("/orchestrate", BODY).await;
    assert_eq!(first.status, 201, "{first:?}");
    assert_eq!(first.body["task_id"], "dup-1");
    assert_eq!(first.body["status"], "planned");

    // The same body, keys reordered: the existing task, unchanged.
    let again = server.post_text("/orchestrate", REORDERED).await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.body, first.body);
    let through_tasks = server.post_text("/tasks", REORDERED).await;
    assert_eq!(through_tasks.status, 200, "{through_tasks:?}");
    assert_eq!(through_tasks.body, first.body);

    // Another body under the same id conflicts and changes nothing.
    for path in ["/orchestrate", "/tasks"] {
        let conflict = server.post_text(path, DIFFERENT).await;
        conflict.assert_error(409, "conflict");
        assert!(conflict.body["message"].as_str().unwrap().contains("dup-1"));
    }
    let detail = server.task("dup-1").await;
    assert_eq!(detail.title, "Post");
    assert_eq!(detail.status, "planned");
    assert_eq!(detail.priority, 8);
    let listed = server
        .client
        .list_tasks(&TaskFilter::default())
        .await
        .unwrap();
    assert_eq!(listed.tasks.len(), 1);

    // Run it to the end; resubmitting then answers the finished task.
    let worker = server
        .spawn_worker(
            worker_config("echo", &["echo"]),
            baton_agent::handler_fn(|job: Job| async move { Ok(json!({"echo": job.input["k"]})) }),
        )
        .await;
    let executed = server
        .post("/execute/dup-1", json!({"execution_mode": "auto"}))
        .await;
    assert_eq!(
        executed.body,
        json!({"task_id": "dup-1", "status": "running"})
    );
    let done = server.wait_for_status("dup-1", "completed", PATIENCE).await;
    assert_eq!(done.subtasks[0].outputs, Some(json!({"echo": "v"})));

    for (path, body) in [("/orchestrate", BODY), ("/tasks", REORDERED)] {
        let after = server.post_text(path, body).await;
        assert_eq!(after.status, 200, "{path}: {after:?}");
        assert_eq!(after.body["task_id"], "dup-1");
        assert_eq!(after.body["status"], "completed");
        assert_eq!(after.body["subtasks"][0]["subtask_id"], "echo::dup-1::1");
        assert_eq!(after.body["subtasks"][0]["state"], "completed");
        server
            .post_text(path, DIFFERENT)
            .await
            .assert_error(409, "conflict");
    }
    // Nothing new was created or run.
    assert_eq!(server.task("dup-1").await, done);
    let listed = server
        .client
        .list_tasks(&TaskFilter::default())
        .await
        .unwrap();
    assert_eq!(listed.tasks.len(), 1);
    let report = worker.stop().await;
    assert_eq!(report.completed, 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_create_one_task() {
    let server = TestServer::start().await;
    let body =
        json!({"task_id": "race-1", "title": "Race", "description": "same body, many times"});
    let replies = join_all((0..8).map(|_| server.post("/orchestrate", body.clone()))).await;
    let created = replies.iter().filter(|r| r.status == 201).count();
    let existing = replies.iter().filter(|r| r.status == 200).count();
    assert_eq!((created, existing), (1, 7), "{replies:?}");
    for r in &replies {
        assert_eq!(r.body, replies[0].body);
    }
    // Conflicting bodies racing for a new id: one wins, the others conflict.
    let bodies: Vec<Value> = (0..6)
        .map(|i| json!({"task_id": "race-2", "title": format!("Title {i}"), "description": "d"}))
        .collect();
    let replies = join_all(
        bodies
            .iter()
            .map(|b| server.post("/orchestrate", b.clone())),
    )
    .await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        5,
        "{statuses:?}"
    );
    let winner = replies.iter().position(|r| r.status == 201).unwrap();
    assert_eq!(server.task("race-2").await.title, format!("Title {winner}"));
    let listed = server
        .client
        .list_tasks(&TaskFilter::default())
        .await
        .unwrap();
    assert_eq!(listed.tasks.len(), 2);
    server.shutdown().await;
}

fn ids(list: &baton_agent::api::TaskList) -> Vec<String> {
    list.tasks.iter().map(|t| t.task_id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_is_newest_first_filtered_and_paged() {
    let server = TestServer::start().await;
    // (id, task_type, priority as sent, priority as stored)
    let tasks: [(&str, Option<&str>, Value, u8); 6] = [
        ("l-1", Some("report"), json!("low"), 3),
        ("l-2", Some("create_blog_post"), json!("high"), 8),
        ("l-3", Some("report"), json!(8), 8),
        ("l-4", None, Value::Null, 5),
        ("l-5", Some("report"), json!("critical"), 10),
        ("l-6", Some("create_blog_post"), json!("normal"), 5),
    ];
    for (id, task_type, priority, _) in &tasks {
        let mut body =
            json!({"task_id": id, "title": format!("Task {id}"), "description": "listing"});
        if let Some(t) = task_type {
            body["task_type"] = json!(t);
        }
        if !priority.is_null() {
            body["priority"] = priority.clone();
        }
        let reply = server.post("/orchestrate", body).await;
        assert_eq!(reply.status, 201, "{reply:?}");
    }
    // l-3 runs (and blocks: no agents); the others stay planned.
    let executed = server.post("/execute/l-3", json!({})).await;
    assert_eq!(executed.body["status"], "running");
    // Executing a running task again changes nothing.
    let again = server.post("/execute/l-3", json!({})).await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.body, json!({"task_id": "l-3", "status": "running"}));

    let list = |filter: TaskFilter| {
        let client = server.client.clone();
        async move { client.list_tasks(&filter).await.expect("list tasks") }
    };
    let all = list(TaskFilter::default()).await;
    assert_eq!(ids(&all), ["l-6", "l-5", "l-4", "l-3", "l-2", "l-1"]);
    assert_eq!(all.next_cursor, None);
    for summary in &all.tasks {
        let (_, task_type, _, priority) = tasks.iter().find(|t| t.0 == summary.task_id).unwrap();
        assert_eq!(summary.task_type.as_deref(), *task_type, "{summary:?}");
        assert_eq!(summary.priority, *priority, "{summary:?}");
        assert_eq!(summary.title, format!("Task {}", summary.task_id));
        let status = if summary.task_id == "l-3" {
            "running"
        } else {
            "planned"
        };
        assert_eq!(summary.status, status);
        assert_eq!(summary.finished_at, None);
    }

    let by = |status: Option<&str>, priority: Option<&str>, task_type: Option<&str>| TaskFilter {
        status: status.map(Into::into),
        priority: priority.map(Into::into),
        task_type: task_type.map(Into::into),
        ..TaskFilter::default()
    };
    assert_eq!(ids(&list(by(Some("running"), None, None)).await), ["l-3"]);
    assert_eq!(
        ids(&list(by(Some("planned"), None, None)).await),
        ["l-6", "l-5", "l-4", "l-2", "l-1"]
    );
    assert!(list(by(Some("completed"), None, None))
        .await
        .tasks
        .is_empty());
    assert_eq!(
        ids(&list(by(None, Some("high"), None)).await),
        ["l-3", "l-2"]
    );
    assert_eq!(ids(&list(by(None, Some("8"), None)).await), ["l-3", "l-2"]);
    assert_eq!(
        ids(&list(by(None, Some("normal"), None)).await),
        ["l-6", "l-4"]
    );
    assert_eq!(ids(&list(by(None, Some("critical"), None)).await), ["l-5"]);
    assert_eq!(
        ids(&list(by(None, None, Some("report"))).await),
        ["l-5", "l-3", "l-1"]
    );
    assert_eq!(
        ids(&list(by(None, Some("high"), Some("report"))).await),
        ["l-3"]
    );
    assert_eq!(
        ids(&list(by(Some("planned"), Some("high"), Some("report"))).await),
        Vec::<String>::new()
    );
    assert!(list(by(None, None, Some("nothing"))).await.tasks.is_empty());

    // limit=2 pages through everything, newest first, without duplicates or gaps.
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = list(TaskFilter {
            limit: Some(2),
            cursor: cursor.clone(),
            ..TaskFilter::default()
        })
        .await;
        pages += 1;
        assert!(page.tasks.len() <= 2);
        seen.extend(ids(&page));
        match page.next_cursor {
            Some(next) => {
                assert_eq!(page.tasks.len(), 2, "a page with a next cursor is full");
                cursor = Some(next);
            }
            None => break,
        }
        assert!(pages < 10, "paging does not end: {seen:?}");
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids(&all));
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 6);

    // Paging within a filter.
    let first = list(TaskFilter {
        limit: Some(2),
        ..by(None, None, Some("report"))
    })
    .await;
    assert_eq!(ids(&first), ["l-5", "l-3"]);
    let second = list(TaskFilter {
        limit: Some(2),
        cursor: first.next_cursor.clone(),
        ..by(None, None, Some("report"))
    })
    .await;
    assert_eq!(ids(&second), ["l-1"]);
    assert_eq!(second.next_cursor, None);

    // A task submitted after a cursor was issued does not shift the later pages.
    let page1 = list(TaskFilter {
        limit: Some(3),
        ..TaskFilter::default()
    })
    .await;
    assert_eq!(ids(&page1), ["l-6", "l-5", "l-4"]);
    let reply = server
        .post(
            "/orchestrate",
            json!({"task_id": "l-7", "title": "Task l-7", "description": "late"}),
        )
        .await;
    assert_eq!(reply.status, 201);
    let page2 = list(TaskFilter {
        limit: Some(3),
        cursor: page1.next_cursor.clone(),
        ..TaskFilter::default()
    })
    .await;
    assert_eq!(ids(&page2), ["l-3", "l-2", "l-1"]);
    assert_eq!(page2.next_cursor, None);
    assert_eq!(ids(&list(TaskFilter::default()).await)[0], "l-7");

    // A bad cursor is a validation error naming it.
    server
        .get("/tasks?cursor=not-a-cursor")
        .await
        .assert_invalid(&["cursor"]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_without_a_plan_are_planned_by_type_or_category() {
    let server = TestServer::start().await;
    let reply = server
        .post(
            "/orchestrate",
            json!({"task_id": "Rel-1.2_rc:3@team", "title": "Fix CSS",
                                     "description": "the page layout is broken"}),
        )
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    assert_eq!(
        reply.body["subtasks"],
        json!([{"subtask_id": "frontend::Rel-1.2_rc:3@team::1", "agent": "frontend",
                "state": "pending", "depends_on": [], "id": "frontend"}])
    );
    assert_eq!(reply.body["planner"]["kind"], "rules", "{reply:?}");
    // Ids with punctuation address the task through the path.
    let detail = server.task("Rel-1.2_rc:3@team").await;
    assert_eq!(detail.task_id, "Rel-1.2_rc:3@team");
    let reply = server.get("/tasks/Rel-1.2_rc:3@team").await;
    assert_eq!(reply.status, 200);

    let reply = server
        .post(
            "/orchestrate",
            json!({"task_id": "g-1", "title": "Ponder", "description": "zzz"}),
        )
        .await;
    assert_eq!(reply.body["subtasks"][0]["subtask_id"], "general::g-1::1");
    let reply = server
        .post("/orchestrate", json!({"task_id": "g-2", "title": "Write a schema migration",
                                     "description": "with a new SQL query", "task_type": "unknown_type"}))
        .await;
    assert_eq!(reply.body["subtasks"][0]["subtask_id"], "database::g-2::1");
    let reply = server
        .post(
            "/orchestrate",
            json!({"task_id": "g-3", "title": "Blog", "description": "d",
                                     "task_type": "create_blog_post"}),
        )
        .await;
    let caps: Vec<&str> = reply.body["subtasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["agent"].as_str().unwrap())
        .collect();
    assert_eq!(
        caps,
        [
            "generate_content",
            "enhance_content",
            "review_content",
            "export_document",
            "publish_content"
        ]
    );

    // Leased work carries the stable idempotency key `<task_id>/<subtask_id>`.
    let h = server.hand_agent("fe", &["frontend"]).await;
    let executed = server.post("/execute/Rel-1.2_rc:3@team", json!({})).await;
    assert_eq!(executed.body["status"], "running");
    let lease = h.lease_one().await;
    assert_eq!(
        lease.idempotency_key,
        "Rel-1.2_rc:3@team/frontend::Rel-1.2_rc:3@team::1"
    );
    assert_eq!(lease.input["brief"], "the page layout is broken");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_submission_validates_all_then_reports_each() {
    let server = TestServer::start().await;
    let one = |id: &str, title: &str| {
        json!({"task_id": id, "title": title, "description": "d",
               "plan": {"subtasks": [{"id": "s", "capability": "echo"}]}})
    };

    // One bad task refuses the whole batch, listing every bad field, and creates nothing.
    let bad = server
        .post(
            "/tasks/batch",
            json!({"tasks": [one("b-1", "ok"), {"title": ""}, one("b 3", "x")]}),
        )
        .await;
    bad.assert_invalid(&["tasks[1].title", "tasks[1].description", "tasks[2].task_id"]);
    assert!(server.get("/tasks").await.body["tasks"]
        .as_array()
        .unwrap()
        .is_empty());
    server
        .post("/tasks/batch", json!({"tasks": []}))
        .await
        .assert_invalid(&["tasks"]);

    // Then each task gets what a single submission would: created, existing, conflict.
    server.post("/tasks", one("b-2", "first")).await;
    let reply = server
        .post(
            "/tasks/batch",
            json!({"tasks": [one("b-1", "new"), one("b-2", "first"), one("b-2", "changed")],
                   "execute": false}),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let outcomes = reply.body["tasks"].as_array().unwrap();
    let statuses: Vec<u64> = outcomes
        .iter()
        .map(|o| o["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [201, 200, 409]);
    assert_eq!(outcomes[0]["task"]["status"], "planned");
    assert_eq!(
        outcomes[0]["task"]["subtasks"][0]["subtask_id"],
        "echo::b-1::1"
    );
    assert_eq!(outcomes[2]["error"]["error"], "conflict");
    assert_eq!(server.task("b-1").await.status, "planned");
    assert_eq!(server.task("b-2").await.title, "first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_results_settle_each_attempt_on_its_own() {
    let server = TestServer::start().await;
    let agent = server.hand_agent("batcher", &["echo"]).await;
    for id in ["r-1", "r-2"] {
        server
            .post(
                "/tasks",
                json!({"task_id": id, "title": "t", "description": "d", "on_exhausted": "fail",
                       "plan": {"subtasks": [{"id": "s", "capability": "echo"}]}}),
            )
            .await;
    }
    let leases = agent.lease(2, 1_000).await;
    assert_eq!(leases.len(), 2);
    let path = format!("/agents/{}/results", agent.agent_id);
    let body = json!({"results": [
        {"assignment_id": leases[0].assignment_id, "outputs": {"n": 1}},
        {"assignment_id": leases[1].assignment_id, "error": "boom", "retryable": false},
        {"assignment_id": "as-999-0-1", "outputs": {}},
    ]});
    let reply = server
        .raw(
            Method::POST,
            &path,
            Body::Json(body.clone()),
            Some(&agent.token),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let outcomes = reply.body["results"].as_array().unwrap();
    let statuses: Vec<u64> = outcomes
        .iter()
        .map(|o| o["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 200, 404]);
    assert_eq!(outcomes[0]["state"], "completed");
    assert_eq!(outcomes[1]["state"], "failed");
    let done = server
        .wait_for_status(
            &leases[0].task_id,
            "completed",
            std::time::Duration::from_secs(10),
        )
        .await;
    assert_eq!(done.subtasks[0].outputs, Some(json!({"n": 1})));
    server
        .wait_for_status(
            &leases[1].task_id,
            "failed",
            std::time::Duration::from_secs(10),
        )
        .await;

    // The same batch again: the completion is acknowledged again, the failure is settled.
    let again = server
        .raw(Method::POST, &path, Body::Json(body), Some(&agent.token))
        .await;
    let statuses: Vec<u64> = again.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 409, 404]);

    // Without the agent's token nothing is settled; a malformed item is a 400.
    server
        .raw(
            Method::POST,
            &path,
            Body::Json(json!({"results": []})),
            None,
        )
        .await
        .assert_error(401, "unauthorized");
    server
        .raw(
            Method::POST,
            &path,
            Body::Json(json!({"results": [{"assignment_id": "x"}]})),
            Some(&agent.token),
        )
        .await
        .assert_invalid(&["results[0].outputs"]);
}
