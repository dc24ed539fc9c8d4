//! Planning over a real socket: workflows published as YAML and JSON, conditions that take one
//! branch and skip another, versions that never disturb running tasks, the built-in workflows
//! end to end with SDK agents, the rule-based planner on the seed's sample request, plan
//! preview, plan replacement, and every validation problem named.

mod common;

use std::time::Duration;

use baton_agent::{Job, JobError};
use common::*;
use serde_json::{json, Value};

const TRIAGE: &str = r#"
name: triage
description: Summarize, then write in the requested language
params:
  lang: {type: string, default: en}
steps:
  - id: detect
    capability: classify
  - id: english
    capability: write
    depends_on: [detect]
    when: params.lang == 'en'
    input:
      text: "${steps.detect.outputs.summary}"
      for: "${metadata.requester}"
  - id: french
    capability: write
    depends_on: [detect]
    when: params.lang == "fr"
  - id: french_check
    capability: review
    depends_on: [french]
  - id: publish
    capability: publish
    depends_on: [english, french]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yaml_workflow_takes_one_branch_and_skips_the_other() {
    let server = TestServer::start().await;
    let published = server.post_yaml("/workflows", TRIAGE).await;
    assert_eq!(published.status, 201, "{published:?}");
    assert_eq!(
        published.body,
        json!({"workflow_id": "triage", "name": "triage", "version": 1})
    );
    let agent = server
        .hand_agent("w", &["classify", "write", "review", "publish"])
        .await;
    let run = server
        .post(
            "/workflows/triage/execute",
            json!({"task_id": "tri-1", "metadata": {"requester": "ana"}}),
        )
        .await;
    assert_eq!(run.status, 201, "{run:?}");
    assert_eq!(run.body["status"], "running");
    assert_eq!(
        run.body["planner"],
        json!({"kind": "workflow", "name": "triage", "version": 1})
    );

    let detect = agent.lease_one().await;
    assert_eq!(detect.subtask_id, "classify::tri-1::1");
    agent
        .complete(&detect.assignment_id, json!({"summary": "short"}))
        .await
        .unwrap();
    let english = agent.lease_one().await;
    assert_eq!(english.subtask_id, "write::tri-1::1", "only english runs");
    assert_eq!(english.input["text"], "short", "resolved from detect");
    assert_eq!(english.input["for"], "ana", "resolved from metadata");
    agent
        .complete(&english.assignment_id, json!({"post": "hello"}))
        .await
        .unwrap();
    let publish = agent.lease_one().await;
    assert_eq!(publish.subtask_id, "publish::tri-1::1");
    agent
        .complete(&publish.assignment_id, json!({"url": "u"}))
        .await
        .unwrap();

    let detail = server.wait_for_status("tri-1", "completed", PATIENCE).await;
    let states: Vec<(&str, &str)> = detail
        .subtasks
        .iter()
        .map(|s| (s.id.as_str(), s.state.as_str()))
        .collect();
    assert_eq!(
        states,
        [
            ("detect", "completed"),
            ("english", "completed"),
            ("french", "skipped"),
            ("french_check", "skipped"),
            ("publish", "completed")
        ]
    );
    let notes: Vec<&str> = detail
        .status_history
        .iter()
        .filter(|e| e.to == "skipped")
        .filter_map(|e| e.note.as_deref())
        .collect();
    assert_eq!(
        notes,
        [
            "condition is false: params.lang == \"fr\"",
            "every dependency was skipped"
        ]
    );
    // The detail shows each step's resolved input, its condition and the run's params.
    let english = subtask(&detail, "write::tri-1::1");
    assert_eq!(english.input["text"], "short");
    assert_eq!(english.when.as_deref(), Some("params.lang == 'en'"));
    assert_eq!(detail.params, Some(json!({"lang": "en"})));
    server.shutdown().await;
}

const V1: &str = r#"{"name": "versioned", "steps": [
    {"id": "a", "capability": "one"},
    {"id": "b", "capability": "one", "depends_on": ["a"]}]}"#;
const V2: &str = r#"{"name": "versioned", "steps": [
    {"id": "a", "capability": "two"}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_never_disturbs_a_running_task() {
    let server = TestServer::start().await;
    let v1 = server.post_text("/workflows", V1).await;
    assert_eq!(v1.body["version"], 1, "{v1:?}");
    let one = server.hand_agent("one", &["one"]).await;
    let two = server.hand_agent("two", &["two"]).await;
    // Through `task_type`, as a client of `POST /tasks` names it.
    let first = server
        .post(
            "/tasks",
            json!({"task_id": "v-1", "title": "t", "description": "d", "task_type": "versioned"}),
        )
        .await;
    assert_eq!(first.status, 201, "{first:?}");
    let a = one.lease_one().await;

    let v2 = server.post_text("/workflows", V2).await;
    assert_eq!(v2.body["version"], 2, "{v2:?}");
    let second = server
        .post("/workflows/versioned/execute", json!({"task_id": "v-2"}))
        .await;
    assert_eq!(second.status, 201, "{second:?}");
    assert_eq!(second.body["subtasks"][0]["agent"], "two");

    // The running task goes on with version 1's second step.
    one.complete(&a.assignment_id, json!({})).await.unwrap();
    let b = one.lease_one().await;
    assert_eq!(b.subtask_id, "one::v-1::2");
    one.complete(&b.assignment_id, json!({})).await.unwrap();
    let only = two.lease_one().await;
    two.complete(&only.assignment_id, json!({})).await.unwrap();
    let d1 = server.wait_for_status("v-1", "completed", PATIENCE).await;
    assert_eq!(
        d1.planner,
        Some(json!({"kind": "workflow", "name": "versioned", "version": 1}))
    );
    server.wait_for_status("v-2", "completed", PATIENCE).await;

    // Both versions stay readable; the latest is the default; an old one can still run.
    let latest = server.get("/workflows/versioned").await;
    assert_eq!(latest.body["version"], 2);
    assert_eq!(latest.body["definition"]["steps"][0]["capability"], "two");
    let old = server.get("/workflows/versioned?version=1").await;
    assert_eq!(old.body["definition"]["steps"][1]["id"], "b");
    let rerun = server
        .post(
            "/workflows/versioned/execute",
            json!({"task_id": "v-3", "version": 1}),
        )
        .await;
    assert_eq!(rerun.body["subtasks"].as_array().unwrap().len(), 2);
    // The same run again is the same task (whatever version is the latest by then); the same
    // id with another body is a conflict.
    let v3 = server.post_text("/workflows", V1).await;
    assert_eq!(v3.body["version"], 3, "{v3:?}");
    let again = server
        .post("/workflows/versioned/execute", json!({"task_id": "v-2"}))
        .await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.body["subtasks"][0]["agent"], "two");
    server
        .post(
            "/workflows/versioned/execute",
            json!({"task_id": "v-2", "title": "other"}),
        )
        .await
        .assert_error(409, "conflict");
    server
        .get("/workflows/versioned?version=9")
        .await
        .assert_error(404, "not_found");
    server
        .get("/workflows/versioned?version=zero")
        .await
        .assert_invalid(&["version"]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_workflows_are_refused_naming_every_problem() {
    let server = TestServer::start().await;
    let bad = json!({"name": "bad", "params": {"n": {"type": "number", "default": "x"}}, "steps": [
        {"id": "a", "capability": "c", "depends_on": ["nope"]},
        {"id": "b", "capability": "c", "depends_on": ["c"]},
        {"id": "c", "capability": "c", "depends_on": ["b"]},
        {"id": "a", "capability": "c"},
        {"id": "d", "capability": "c", "input": {"x": "${steps.e.outputs.y}", "p": "${params.zz}"}},
        {"id": "e", "capability": "c", "when": "params.n >"},
        {"id": "f", "capability": "c", "timeout_s": 0, "verify": "yes"},
    ]});
    let reply = server.post("/workflows", bad).await;
    reply.assert_invalid(&[
        "params.n.default",
        "steps[0].depends_on[0]",
        "steps[3].id",
        "steps[4].input.p",
        "steps[5].when",
        "steps[6].timeout_s",
        "steps[6].verify",
    ]);
    // A cycle is found once the ids and dependencies are otherwise sound; a reference to a
    // step that is not upstream is named too.
    let cyclic = json!({"name": "cyclic", "steps": [
        {"id": "b", "capability": "c", "depends_on": ["c"]},
        {"id": "c", "capability": "c", "depends_on": ["b"]}]});
    let reply = server.post("/workflows", cyclic).await;
    reply.assert_invalid(&["steps"]);
    assert!(
        reply.body.to_string().contains("dependency cycle"),
        "{reply:?}"
    );
    let sideways = json!({"name": "sideways", "steps": [
        {"id": "a", "capability": "c"},
        {"id": "b", "capability": "c", "input": {"x": "${steps.a.outputs.y}"}}]});
    let reply = server.post("/workflows", sideways).await;
    reply.assert_invalid(&["steps[1].input.x"]);
    assert!(reply.body.to_string().contains("not upstream"), "{reply:?}");
    server
        .post_yaml("/workflows", "name: [unclosed")
        .await
        .assert_error(400, "bad_request");
    server
        .post_yaml("/workflows", "name: x\nname: y\nsteps: []\n")
        .await
        .assert_error(400, "bad_request");
    // Nothing of the refused ones was stored.
    for name in ["bad", "cyclic", "sideways"] {
        server
            .get(&format!("/workflows/{name}"))
            .await
            .assert_error(404, "not_found");
    }

    let required = json!({"name": "needs", "params": {"topic": {"type": "string", "required": true}},
        "steps": [{"id": "a", "capability": "c", "input": {"t": "${params.topic}"}}]});
    assert_eq!(server.post("/workflows", required).await.status, 201);
    server
        .post(
            "/workflows/needs/execute",
            json!({"params": {"other": 1}, "priority": "whenever"}),
        )
        .await
        .assert_invalid(&["params.other", "params.topic", "priority"]);
    server
        .post("/workflows/needs/execute", json!({"params": {"topic": 3}}))
        .await
        .assert_invalid(&["params.topic"]);
    server
        .post("/workflows/nothing/execute", json!({}))
        .await
        .assert_error(404, "not_found");
    // Params belong to a workflow (or a client plan), not to the rule-based planner.
    server
        .post(
            "/tasks",
            json!({"title": "t", "description": "d", "params": {"x": 1}}),
        )
        .await
        .assert_invalid(&["params"]);
    server.shutdown().await;
}

/// A generic specialist: answers with its capability and the keys it was given.
async fn specialist(job: Job) -> Result<Value, JobError> {
    let keys: Vec<String> = job
        .input
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    Ok(json!({"by": job.capability, "keys": keys}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_built_in_workflow_runs_end_to_end() {
    let server = TestServer::start().await;
    let listed = server.get("/workflows").await;
    let names: Vec<&str> = listed.body["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["bug_fix", "create_blog_post", "feature_development"]
    );
    let journal = Journal::default();
    let caps = [
        "generate_content",
        "enhance_content",
        "review_content",
        "export_document",
        "publish_content",
        "requirements",
        "frontend",
        "backend",
        "database",
        "integration",
        "testing",
        "review",
        "debugging",
        "bugfix",
    ];
    let worker = server
        .spawn_worker(
            worker_config("specialist", &caps),
            recording(&journal, specialist),
        )
        .await;
    // `verify` steps are checked by another agent.
    let verifier = server
        .spawn_worker(
            worker_config("verifier", &["verify"]),
            recording(&journal, |job: Job| async move {
                let checked = job.input["verify"]["subtask_id"].clone();
                Ok(json!({"verified": true, "evidence": [checked]}))
            }),
        )
        .await;
    for (task_id, body) in [
        (
            "blog",
            json!({"task_id": "blog", "title": "AI ethics", "description": "a post",
                   "task_type": "create_blog_post"}),
        ),
        (
            "feature",
            json!({"task_id": "feature", "title": "Invoice export", "description": "PDF export",
                   "task_type": "feature_development", "params": {"database": false}}),
        ),
        (
            "bug",
            json!({"task_id": "bug", "title": "Crash on save", "description": "stack trace",
                   "task_type": "bug_fix"}),
        ),
    ] {
        let reply = server.post("/tasks", body).await;
        assert_eq!(reply.status, 201, "{task_id}: {reply:?}");
        assert_eq!(reply.body["planner"]["kind"], "workflow");
        server.wait_for_status(task_id, "completed", PATIENCE).await;
    }
    let blog = journal.one("generate_content::blog::1");
    assert_eq!(blog.input["brief"], "Draft the blog post: AI ethics");
    let feature = server.task("feature").await;
    let states: Vec<(&str, &str)> = feature
        .subtasks
        .iter()
        .map(|s| (s.id.as_str(), s.state.as_str()))
        .collect();
    assert_eq!(
        states,
        [
            ("requirements", "completed"),
            ("frontend", "completed"),
            ("backend", "completed"),
            ("database", "skipped"),
            ("integrate", "completed"),
            ("test", "completed"),
            ("review", "completed"),
        ]
    );
    // Stored with the step, for governance to enforce.
    assert_eq!(
        subtask(&feature, "integration::feature::1").verify,
        Some(json!(true))
    );
    // A step reads the outputs its input references.
    let backend = journal.one("backend::feature::1");
    assert_eq!(backend.input["requirements"]["by"], "requirements");
    let fix = journal
        .of("bugfix::bug::1")
        .into_iter()
        .find(|j| j.capability == "bugfix")
        .expect("the fix ran");
    assert_eq!(fix.input["diagnosis"]["by"], "debugging");
    let bug = server.task("bug").await;
    assert_eq!(bug.verifications.len(), 1);
    assert!(bug.verifications[0].verified);
    assert_ne!(bug.verifications[0].verifier, bug.verifications[0].author);
    worker.stop().await;
    verifier.stop().await;
    server.shutdown().await;
}

const SAMPLE: &str =
    "Add PDF export support to the billing dashboard including automated regression tests.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_sample_gets_a_multi_domain_plan_and_a_preview_creates_nothing() {
    let server = TestServer::start().await;
    let body = json!({"task_id": "feature-1087", "title": "Invoice export", "description": SAMPLE});
    let preview = server.post("/plan", body.clone()).await;
    assert_eq!(preview.status, 200, "{preview:?}");
    assert_eq!(preview.body["status"], "preview");
    server
        .get("/tasks/feature-1087")
        .await
        .assert_error(404, "not_found");

    let planned = server.post("/orchestrate", body).await;
    assert_eq!(planned.status, 201, "{planned:?}");
    for reply in [&preview, &planned] {
        let shape: Vec<(&str, &str, Vec<&str>)> = reply.body["subtasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let deps = s["depends_on"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_str().unwrap())
                    .collect();
                (
                    s["id"].as_str().unwrap(),
                    s["agent"].as_str().unwrap(),
                    deps,
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                ("frontend", "frontend", vec![]),
                ("backend", "backend", vec![]),
                (
                    "integrate",
                    "integration",
                    vec!["frontend::feature-1087::1", "backend::feature-1087::1"]
                ),
                ("test", "testing", vec!["integration::feature-1087::1"]),
                ("review", "review", vec!["testing::feature-1087::1"]),
            ]
        );
        assert_eq!(reply.body["planner"]["kind"], "rules");
        assert_eq!(
            reply.body["planner"]["matched"]["frontend"],
            json!(["dashboard"])
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_task_takes_a_new_plan_until_it_runs() {
    let server = TestServer::start().await;
    let planned = server
        .post(
            "/orchestrate",
            json!({"task_id": "re", "title": "t", "description": "zzz"}),
        )
        .await;
    assert_eq!(planned.body["subtasks"][0]["agent"], "general");
    let new_plan = json!({"subtasks": [
        {"id": "a", "capability": "fetch"},
        {"id": "b", "capability": "write", "depends_on": ["a"],
         "input": {"from": "${steps.a.outputs.data}"}}]});
    server
        .put_json(
            "/tasks/re/plan",
            json!({"subtasks": [{"id": "a", "capability": "x", "depends_on": ["zz"]}]}),
        )
        .await
        .assert_invalid(&["plan.subtasks[0].depends_on[0]"]);
    let replaced = server.put_json("/tasks/re/plan", new_plan.clone()).await;
    assert_eq!(replaced.status, 200, "{replaced:?}");
    assert_eq!(replaced.body["planner"], json!({"kind": "client"}));
    assert_eq!(replaced.body["subtasks"][1]["subtask_id"], "write::re::1");
    let agent = server.hand_agent("h", &["fetch", "write"]).await;
    assert_eq!(server.post("/execute/re", json!({})).await.status, 200);
    server
        .put_json("/tasks/re/plan", new_plan.clone())
        .await
        .assert_error(409, "conflict");
    server
        .put_json("/tasks/nope/plan", new_plan)
        .await
        .assert_error(404, "not_found");
    let a = agent.lease_one().await;
    agent
        .complete(&a.assignment_id, json!({"data": [1, 2]}))
        .await
        .unwrap();
    let b = agent.lease_one().await;
    assert_eq!(b.input["from"], json!([1, 2]));
    agent.complete(&b.assignment_id, json!({})).await.unwrap();
    let detail = server
        .wait_for_status("re", "completed", Duration::from_secs(10))
        .await;
    assert!(detail
        .status_history
        .iter()
        .any(|e| e.note.as_deref() == Some("plan replaced: 2 subtasks")));

    // A new plan may read the params the task was submitted with, and no others.
    let from_workflow = server
        .post(
            "/orchestrate",
            json!({"task_id": "re-wf", "title": "t", "description": "d",
                   "task_type": "feature_development", "params": {"database": false}}),
        )
        .await;
    assert_eq!(from_workflow.status, 201, "{from_workflow:?}");
    server
        .put_json(
            "/tasks/re-wf/plan",
            json!({"subtasks": [{"id": "a", "capability": "x", "input": {"n": "${params.nope}"}}]}),
        )
        .await
        .assert_invalid(&["plan.subtasks[0].input.n"]);
    let replaced = server
        .put_json(
            "/tasks/re-wf/plan",
            json!({"subtasks": [{"id": "a", "capability": "x", "when": "params.database",
                                 "input": {"db": "${params.database}"}}]}),
        )
        .await;
    assert_eq!(replaced.status, 200, "{replaced:?}");
    server.shutdown().await;
}
