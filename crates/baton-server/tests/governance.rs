//! Governance over a real socket: a `bug_fix` run whose verifier rejects the first fix and
//! accepts the second (both verdicts visible, the author never verifying); an escalation
//! resolved with `provide_output` that lets the task complete; `execution_mode: manual`
//! approved step by step; a blocked subtask routed by hand; usage and a budget; every bad
//! body named.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use baton_agent::{Job, JobError};
use common::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bug_fix_whose_first_fix_is_rejected_completes_with_both_verdicts() {
    let server = TestServer::start().await;
    let journal = Journal::default();
    // The fixer can verify too: routing must never hand it its own fix.
    let fixer = server
        .spawn_worker(
            worker_config("fixer", &["debugging", "bugfix", "testing", "verify"]),
            recording(&journal, |job: Job| async move {
                if job.capability == "verify" {
                    return Err(JobError::permanent("the author was asked to verify"));
                }
                let feedback = job.input["verification"]["feedback"].clone();
                Ok(json!({"by": job.capability, "attempt": job.attempt, "acting_on": feedback}))
            }),
        )
        .await;
    let verdicts = Arc::new(AtomicU32::new(0));
    let seen = verdicts.clone();
    let reviewer = server
        .spawn_worker(
            worker_config("reviewer", &["verify"]),
            recording(&journal, move |job: Job| {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                async move {
                    let attempt = job.input["verify"]["attempt"].clone();
                    Ok(if n == 0 {
                        json!({"verified": false, "evidence": ["regression test still fails"],
                               "feedback": "handle the empty file"})
                    } else {
                        json!({"verified": true, "evidence": ["all tests pass", attempt]})
                    })
                }
            }),
        )
        .await;
    let reply = server
        .post(
            "/tasks",
            json!({"task_id": "bug-1", "title": "Crash on save", "description": "stack trace",
                   "task_type": "bug_fix"}),
        )
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    let detail = server.wait_for_status("bug-1", "completed", PATIENCE).await;
    let fix = subtask(&detail, "bugfix::bug-1::1");
    assert_eq!((fix.state.as_str(), fix.attempts), ("completed", 2));
    assert_eq!(
        fix.outputs.as_ref().unwrap()["acting_on"],
        "handle the empty file"
    );
    let shown: Vec<(bool, &str, &str)> = detail
        .verifications
        .iter()
        .map(|v| (v.verified, v.author.as_str(), v.verifier.as_str()))
        .collect();
    assert_eq!(
        shown,
        [
            (false, fixer.agent_id.as_str(), reviewer.agent_id.as_str()),
            (true, fixer.agent_id.as_str(), reviewer.agent_id.as_str()),
        ]
    );
    assert_eq!(
        detail.verifications[0].evidence,
        json!(["regression test still fails"])
    );
    // The test step ran after the positive verdict only.
    assert!(
        history_index(&detail, Some("testing::bug-1::1"), "ready")
            > history_index(&detail, Some("bugfix::bug-1::1"), "completed")
    );
    fixer.stop().await;
    reviewer.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escalation_resolved_with_provide_output_lets_the_task_complete() {
    let server = TestServer::start().await;
    let agent = server.hand_agent("h", &["flaky", "next"]).await;
    let reply = server
        .post(
            "/tasks",
            json!({"task_id": "esc-1", "title": "t", "description": "d",
                   "plan": {"subtasks": [
                       {"id": "a", "capability": "flaky"},
                       {"id": "b", "capability": "next", "depends_on": ["a"],
                        "input": {"from_a": "${steps.a.outputs.value}"}}]}}),
        )
        .await;
    assert_eq!(reply.status, 201);
    let a = agent.lease_one().await;
    agent
        .fail(&a.assignment_id, "cannot parse the input", false)
        .await
        .unwrap();
    let detail = server.wait_for_status("esc-1", "escalated", PATIENCE).await;
    let a_detail = subtask(&detail, "flaky::esc-1::1");
    assert_eq!(a_detail.state, "escalated");
    assert!(
        a_detail
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("not retryable")),
        "{a_detail:?}"
    );
    let listed = server.get("/escalations?status=open&task_id=esc-1").await;
    let list = listed.body["escalations"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{listed:?}");
    let id = list[0]["escalation_id"].as_str().unwrap().to_owned();
    assert_eq!(list[0]["kind"], "attempts");
    assert_eq!(
        list[0]["evidence"]["attempts"][0]["error"],
        "cannot parse the input"
    );
    assert!(!list[0]["suggestions"].as_array().unwrap().is_empty());

    // Bad resolutions change nothing.
    let path = format!("/escalations/{id}/resolve");
    server
        .post(&path, json!({"action": "provide_output"}))
        .await
        .assert_invalid(&["outputs"]);
    server
        .post(&path, json!({"action": "shrug", "note": 3}))
        .await
        .assert_invalid(&["action", "note"]);
    server
        .post(
            &path,
            json!({"action": "raise_budget", "budget": {"max_tokens": 5}}),
        )
        .await
        .assert_error(409, "conflict");
    server
        .post("/escalations/esc-none/resolve", json!({"action": "skip"}))
        .await
        .assert_error(404, "not_found");

    let resolved = server
        .post(
            &path,
            json!({"action": "provide_output", "outputs": {"value": 42}, "note": "typed it in"}),
        )
        .await;
    assert_eq!(resolved.status, 200, "{resolved:?}");
    assert_eq!(resolved.body["status"], "resolved");
    assert_eq!(resolved.body["resolution"]["action"], "provide_output");
    server
        .post(&path, json!({"action": "skip"}))
        .await
        .assert_error(409, "conflict");
    let b = agent.lease_one().await;
    assert_eq!(b.input["from_a"], 42, "the human's output flows on");
    agent.complete(&b.assignment_id, json!({})).await.unwrap();
    let detail = server.wait_for_status("esc-1", "completed", PATIENCE).await;
    let a_detail = subtask(&detail, "flaky::esc-1::1");
    assert_eq!(a_detail.outputs, Some(json!({"value": 42})));
    assert!(a_detail
        .reason
        .as_deref()
        .is_some_and(|r| r.contains("output provided by a human")));
    assert_eq!(detail.escalations[0].status, "resolved");
    let one = server.get(&format!("/escalations/{id}")).await;
    assert_eq!(one.body["resolution"]["note"], "typed it in");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_execution_is_approved_step_by_step() {
    let server = TestServer::start().await;
    let agent = server.hand_agent("h", &["x"]).await;
    server
        .post(
            "/orchestrate",
            json!({"task_id": "m-1", "title": "t", "description": "d",
                   "plan": {"subtasks": [{"id": "a", "capability": "x"},
                                         {"id": "b", "capability": "x", "depends_on": ["a"]}]}}),
        )
        .await;
    server
        .post("/tasks/m-1/approve", json!({}))
        .await
        .assert_error(409, "conflict");
    let started = server
        .post("/execute/m-1", json!({"execution_mode": "manual"}))
        .await;
    assert_eq!(started.body["status"], "awaiting_approval", "{started:?}");
    assert!(
        agent.lease(1, 0).await.is_empty(),
        "nothing runs unapproved"
    );
    server
        .post("/tasks/m-1/reject", json!({}))
        .await
        .assert_invalid(&["note"]);
    for step in ["x::m-1::1", "x::m-1::2"] {
        let approved = server
            .post(
                "/tasks/m-1/approve",
                json!({"subtask_ids": [step], "note": "ok by ana"}),
            )
            .await;
        assert_eq!(approved.status, 200, "{approved:?}");
        assert_eq!(approved.body["subtask_ids"], json!([step]));
        assert_eq!(approved.body["status"], "running");
        let g = agent.lease_one().await;
        assert_eq!(g.subtask_id, step);
        agent.complete(&g.assignment_id, json!({})).await.unwrap();
    }
    let detail = server.wait_for_status("m-1", "completed", PATIENCE).await;
    let approvals = detail
        .status_history
        .iter()
        .filter(|e| e.note.as_deref() == Some("approved: ok by ana"))
        .count();
    assert_eq!(approvals, 2, "who approved and when is in the timeline");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_subtask_says_why_and_is_routed_by_hand() {
    let server = TestServer::start().await;
    let agent = server.hand_agent("generalist", &["other"]).await;
    server
        .post(
            "/tasks",
            json!({"task_id": "b-1", "title": "t", "description": "d",
                   "plan": {"subtasks": [{"id": "a", "capability": "unserved"}]}}),
        )
        .await;
    let detail = server.task("b-1").await;
    let a = subtask(&detail, "unserved::b-1::1");
    assert_eq!(a.state, "blocked");
    assert_eq!(
        a.reason.as_deref(),
        Some("no registered agent offers capability \"unserved\"")
    );
    let path = "/tasks/b-1/subtasks/unserved::b-1::1/assign";
    server
        .post(path, json!({"agent_id": "agent-unknown"}))
        .await
        .assert_error(409, "conflict");
    server
        .post(path, json!({}))
        .await
        .assert_invalid(&["agent_id"]);
    let routed = server.post(path, json!({"agent_id": agent.agent_id})).await;
    assert_eq!(routed.status, 200, "{routed:?}");
    let g = agent.lease_one().await;
    assert_eq!(g.capability, "unserved");
    agent.complete(&g.assignment_id, json!({})).await.unwrap();
    server.wait_for_status("b-1", "completed", PATIENCE).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_summed_and_a_crossed_budget_escalates_until_raised() {
    let server = TestServer::start().await;
    let agent = server.hand_agent("h", &["llm"]).await;
    server
        .post(
            "/tasks",
            json!({"task_id": "u-1", "title": "t", "description": "d",
                   "budget": {"max_cost_usd": 0.05},
                   "plan": {"subtasks": [{"id": "a", "capability": "llm"},
                                         {"id": "b", "capability": "llm", "depends_on": ["a"]}]}}),
        )
        .await;
    let a = agent.lease_one().await;
    let done = agent
        .client
        .results(
            &agent.agent_id,
            &agent.token,
            &baton_agent::api::ResultsRequest {
                results: vec![baton_agent::api::ResultItem {
                    assignment_id: a.assignment_id.clone(),
                    outputs: Some(json!({"text": "hi"})),
                    usage: Some(baton_agent::api::Usage {
                        tokens_in: Some(1_000),
                        tokens_out: Some(500),
                        cost_usd: Some(0.08),
                    }),
                    ..Default::default()
                }],
                held: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(done.results[0].status, 200);
    let detail = server.wait_for_status("u-1", "escalated", PATIENCE).await;
    let usage = detail.usage.expect("usage summed");
    assert_eq!(
        (usage.tokens_in, usage.tokens_out),
        (Some(1_000), Some(500))
    );
    assert_eq!(
        subtask(&detail, "llm::u-1::1").usage.unwrap().cost_usd,
        Some(0.08)
    );
    assert!(
        agent.lease(1, 300).await.is_empty(),
        "no dispatch over budget"
    );
    let e = &detail.escalations[0];
    assert_eq!((e.kind.as_str(), e.subtask_id.as_deref()), ("budget", None));
    let raised = server
        .post(
            &format!("/escalations/{}/resolve", e.escalation_id),
            json!({"action": "raise_budget", "budget": {"max_cost_usd": 1.0}}),
        )
        .await;
    assert_eq!(raised.status, 200, "{raised:?}");
    let b = agent.lease_one().await;
    agent.complete(&b.assignment_id, json!({})).await.unwrap();
    let detail = server.wait_for_status("u-1", "completed", PATIENCE).await;
    assert_eq!(detail.budget.unwrap().max_cost_usd, Some(1.0));
    // A negative cost is refused.
    let bad: Value = server
        .post(
            "/tasks",
            json!({"title": "t", "description": "d", "budget": {"max_cost_usd": -1},
                   "on_exhausted": "explode"}),
        )
        .await
        .body;
    let mut fields: Vec<&str> = bad["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    fields.sort_unstable();
    assert_eq!(fields, ["budget.max_cost_usd", "on_exhausted"]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_reports_usage_with_each_result() {
    let server = TestServer::start().await;
    let worker = server
        .spawn_worker(
            worker_config("llm", &["llm"]),
            baton_agent::handler_fn(|job: Job| async move {
                job.add_usage(10, 5, 0.25);
                job.add_usage(1, 0, 0.0);
                Ok(json!({"ok": true}))
            }),
        )
        .await;
    server
        .post(
            "/tasks",
            json!({"task_id": "sdk-u", "title": "t", "description": "d",
                   "plan": {"subtasks": [{"id": "a", "capability": "llm"},
                                         {"id": "b", "capability": "llm", "depends_on": ["a"]}]}}),
        )
        .await;
    let detail = server.wait_for_status("sdk-u", "completed", PATIENCE).await;
    let usage = detail.usage.expect("usage");
    assert_eq!(
        (usage.tokens_in, usage.tokens_out, usage.cost_usd),
        (Some(22), Some(10), Some(0.5))
    );
    assert_eq!(
        subtask(&detail, "llm::sdk-u::1").usage.unwrap().tokens_in,
        Some(11)
    );
    worker.stop().await;
    server.shutdown().await;
}
