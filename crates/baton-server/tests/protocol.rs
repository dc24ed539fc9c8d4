//! The agent pull protocol over a real socket: a lost lease is retried on another agent and
//! the late result of the superseded attempt is fenced off (409, outputs unchanged, reported as
//! revoked); repeated results are idempotent; cancellation and a failed sibling revoke running
//! assignments (also aborting an SDK worker's job); long polls wake up for new work, respect
//! max concurrency and priority order, and do not hold up shutdown; the subtask timeout ends an
//! attempt; agent discovery filters; draining takes an agent out of routing.

mod common;

use std::time::Duration;

use baton_agent::api::{Phase, ProgressRequest};
use baton_agent::{AgentFilter, Job};
use common::*;
use serde_json::json;

fn one_step(task_id: &str, capability: &str) -> serde_json::Value {
    json!({"task_id": task_id, "title": "One step", "description": "protocol test",
           "plan": {"subtasks": [{"id": "only", "capability": capability}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_is_retried_elsewhere_and_the_late_result_is_fenced() {
    let server = TestServer::start_with(short_lease_config(Duration::from_millis(400))).await;
    let a = server.hand_agent("agent-a", &["flaky"]).await;
    let created = server.post("/tasks", one_step("lease-1", "flaky")).await;
    assert_eq!(created.status, 201, "{created:?}");
    let sub_id = "flaky::lease-1::1";

    // A takes the assignment, then falls silent.
    let lease_a = a.lease_one().await;
    assert_eq!(lease_a.subtask_id, sub_id);
    assert_eq!(lease_a.task_id, "lease-1");
    assert_eq!(lease_a.attempt, 1);
    assert_eq!(lease_a.idempotency_key, format!("lease-1/{sub_id}"));

    // B, registered after A leased, gets the retry once A's lease expires.
    let journal = Journal::default();
    let b = server
        .spawn_worker(
            worker_config("agent-b", &["flaky"]),
            recording(&journal, |job: Job| async move {
                Ok(json!({"by": "b", "attempt": job.attempt}))
            }),
        )
        .await;
    let detail = server
        .wait_for_status("lease-1", "completed", PATIENCE)
        .await;
    assert_lost_lease_then_completed(&detail, sub_id, &a.agent_id);
    let s = subtask(&detail, sub_id);
    assert_eq!(s.assigned_agent.as_deref(), Some(b.agent_id.as_str()));
    let b_outputs = json!({"by": "b", "attempt": 2});
    assert_eq!(s.outputs.as_ref(), Some(&b_outputs));
    let seen_b = journal.one(sub_id);
    assert_eq!(seen_b.attempt, 2);
    assert_ne!(seen_b.assignment_id, lease_a.assignment_id);

    // A's late result is refused and changes nothing.
    let late = a
        .complete(&lease_a.assignment_id, json!({"by": "a"}))
        .await
        .expect_err("a superseded attempt cannot complete");
    assert_eq!(late.status(), Some(409), "{late}");
    assert_eq!(late.body().unwrap().error, "conflict");
    let late_fail = a
        .fail(&lease_a.assignment_id, "gave up", false)
        .await
        .expect_err("a superseded attempt cannot fail");
    assert_eq!(late_fail.status(), Some(409), "{late_fail}");
    let after = server.task("lease-1").await;
    assert_eq!(after.status, "completed");
    let s = subtask(&after, sub_id);
    assert_eq!(s.outputs.as_ref(), Some(&b_outputs));
    assert_eq!(s.assigned_agent.as_deref(), Some(b.agent_id.as_str()));
    assert_eq!(after.result.as_ref().unwrap()["outputs"][sub_id], b_outputs);
    assert_eq!(after.status_history, detail.status_history);

    // A learns at its next heartbeat that the assignment was taken away (once).
    let beat = a.heartbeat().await;
    assert_eq!(beat.revoked, vec![lease_a.assignment_id.clone()]);
    assert_eq!(beat.lease_expires_at, None, "A holds no lease any more");
    assert!(a.heartbeat().await.revoked.is_empty());

    // B repeating its own completion: the same outputs are acknowledged again, others are not.
    let again = server
        .client
        .complete(
            &seen_b.assignment_id,
            &b.token,
            &baton_agent::api::CompleteRequest {
                outputs: b_outputs.clone(),
                usage: None,
            },
        )
        .await
        .expect("an identical repeat is acknowledged");
    assert_eq!(again.assignment_id, seen_b.assignment_id);
    assert_eq!(again.state, "completed");
    let different = server
        .client
        .complete(
            &seen_b.assignment_id,
            &b.token,
            &baton_agent::api::CompleteRequest {
                outputs: json!({"by": "b", "attempt": 99}),
                usage: None,
            },
        )
        .await
        .expect_err("different outputs are a conflict");
    assert_eq!(different.status(), Some(409), "{different}");
    assert_eq!(
        subtask(&server.task("lease-1").await, sub_id)
            .outputs
            .as_ref(),
        Some(&b_outputs)
    );

    let report = b.stop().await;
    assert_eq!((report.completed, report.failed, report.dropped), (1, 0, 0));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_results_of_a_live_task_are_idempotent_and_fenced() {
    let server = TestServer::start().await;
    let h = server.hand_agent("hand", &["first"]).await;
    let other = server.hand_agent("other", &["first"]).await;
    // The second step has no agent: the task stays running (and in the engine's memory).
    let body = json!({"task_id": "rep-1", "title": "Two steps", "description": "repeat",
                      "plan": {"subtasks": [{"id": "a", "capability": "first"},
                                            {"id": "b", "capability": "nobody", "depends_on": ["a"]}]}});
    assert_eq!(server.post("/tasks", body).await.status, 201);
    let lease = h.lease_one().await;
    assert_eq!(lease.subtask_id, "first::rep-1::1");
    assert_eq!(lease.input["dependencies"], json!({}));

    // Only the holder may report on it.
    let stolen = other
        .complete(&lease.assignment_id, json!({"v": 0}))
        .await
        .expect_err("another agent's assignment");
    assert_eq!(stolen.status(), Some(403), "{stolen}");

    let progress = h
        .progress(
            &lease.assignment_id,
            &ProgressRequest {
                phase: Phase::Executing,
                message: Some("half way".into()),
            },
        )
        .await
        .expect("progress");
    assert_eq!(progress.state, "active");
    assert!(progress.lease_expires_at.is_some());

    let done = h
        .complete(&lease.assignment_id, json!({"v": 1}))
        .await
        .unwrap();
    assert_eq!(done.state, "completed");
    assert_eq!(done.lease_expires_at, None);
    let again = h
        .complete(&lease.assignment_id, json!({"v": 1}))
        .await
        .unwrap();
    assert_eq!(again.state, "completed");
    let different = h
        .complete(&lease.assignment_id, json!({"v": 2}))
        .await
        .expect_err("different outputs");
    assert_eq!(different.status(), Some(409), "{different}");
    let fail = h
        .fail(&lease.assignment_id, "too late", true)
        .await
        .expect_err("a completed attempt cannot fail");
    assert_eq!(fail.status(), Some(409), "{fail}");
    let progress = h
        .progress(
            &lease.assignment_id,
            &ProgressRequest {
                phase: Phase::Validating,
                message: None,
            },
        )
        .await
        .expect_err("no progress on a completed attempt");
    assert_eq!(progress.status(), Some(409), "{progress}");

    let detail = server
        .wait_for_subtask("rep-1", "nobody::rep-1::1", "blocked")
        .await;
    assert_eq!(detail.status, "running");
    let first = subtask(&detail, "first::rep-1::1");
    assert_eq!((first.state.as_str(), first.attempts), ("completed", 1));
    assert_eq!(first.outputs, Some(json!({"v": 1})));
    assert_eq!(
        states_of(&detail, "first::rep-1::1"),
        ["ready", "assigned", "running", "executing", "completed"]
    );

    // Once the task is over (and possibly gone from memory), the answers are the same.
    assert_eq!(server.put("/tasks/rep-1/cancel").await.status, 200);
    let again = h
        .complete(&lease.assignment_id, json!({"v": 1}))
        .await
        .unwrap();
    assert_eq!(again.state, "completed");
    let different = h
        .complete(&lease.assignment_id, json!({"v": 3}))
        .await
        .expect_err("different outputs");
    assert_eq!(different.status(), Some(409), "{different}");
    let stolen = other
        .complete(&lease.assignment_id, json!({"v": 1}))
        .await
        .expect_err("another agent's assignment");
    assert_eq!(stolen.status(), Some(403), "{stolen}");
    let unknown = h
        .complete("as-999-0-1", json!({"v": 1}))
        .await
        .expect_err("no such assignment");
    assert_eq!(unknown.status(), Some(404), "{unknown}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_revokes_the_running_assignment() {
    let server = TestServer::start().await;
    let h = server.hand_agent("holder", &["step"]).await;
    let body = json!({"task_id": "c-1", "title": "Cancel me", "description": "three steps",
                      "plan": {"subtasks": [
                          {"id": "a", "capability": "step"},
                          {"id": "b", "capability": "step", "depends_on": ["a"]},
                          {"id": "c", "capability": "other", "depends_on": ["b"]}]}});
    assert_eq!(server.post("/tasks", body).await.status, 201);
    let lease = h.lease_one().await;
    assert_eq!(lease.subtask_id, "step::c-1::1");
    h.progress(
        &lease.assignment_id,
        &ProgressRequest {
            phase: Phase::Executing,
            message: None,
        },
    )
    .await
    .unwrap();

    let cancelled = server.put("/tasks/c-1/cancel").await;
    assert_eq!(cancelled.status, 200, "{cancelled:?}");
    assert_eq!(
        cancelled.body,
        json!({"task_id": "c-1", "status": "cancelled"})
    );

    let detail = server.task("c-1").await;
    assert_eq!(detail.status, "cancelled");
    assert!(detail.finished_at.is_some());
    assert_eq!(detail.subtasks.len(), 3);
    for s in &detail.subtasks {
        assert_eq!(s.state, "cancelled", "{s:?}");
        assert_eq!(s.outputs, None);
    }
    assert_eq!(
        states_of(&detail, "step::c-1::1"),
        ["ready", "assigned", "running", "executing", "cancelled"]
    );
    assert_eq!(states_of(&detail, "step::c-1::2"), ["cancelled"]);
    assert_eq!(task_states(&detail), ["planned", "running", "cancelled"]);
    let result = detail
        .result
        .as_ref()
        .expect("a cancelled task has a result");
    assert_eq!(result["status"], "cancelled");
    assert_eq!(result["outputs"], json!({}));

    // The holder's result is refused; its heartbeat says to stop.
    let late = h
        .complete(&lease.assignment_id, json!({"v": 1}))
        .await
        .expect_err("a cancelled attempt cannot complete");
    assert_eq!(late.status(), Some(409), "{late}");
    let late = h
        .fail(&lease.assignment_id, "stopped", false)
        .await
        .expect_err("a cancelled attempt cannot fail");
    assert_eq!(late.status(), Some(409), "{late}");
    let beat = h.heartbeat().await;
    assert_eq!(beat.revoked, vec![lease.assignment_id.clone()]);
    assert_eq!(beat.status, "idle");
    assert_eq!(server.task("c-1").await.subtasks, detail.subtasks);

    // Cancelling twice conflicts; executing a cancelled task too; an unknown task is 404.
    server
        .put("/tasks/c-1/cancel")
        .await
        .assert_error(409, "conflict");
    server
        .post("/execute/c-1", json!({}))
        .await
        .assert_error(409, "conflict");
    server
        .put("/tasks/no-such-task/cancel")
        .await
        .assert_error(404, "not_found");
    server
        .post("/execute/no-such-task", json!({}))
        .await
        .assert_error(404, "not_found");

    // The agent is free again and takes the next task's work.
    assert_eq!(
        server.post("/tasks", one_step("c-2", "step")).await.status,
        201
    );
    let next = h.lease_one().await;
    assert_eq!(next.task_id, "c-2");
    h.complete(&next.assignment_id, json!({"ok": true}))
        .await
        .unwrap();
    server.wait_for_status("c-2", "completed", PATIENCE).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_task_can_be_cancelled_before_it_runs() {
    let server = TestServer::start().await;
    let planned = server.post("/orchestrate", one_step("p-1", "x")).await;
    assert_eq!(planned.status, 201);
    let cancelled = server.put("/tasks/p-1/cancel").await;
    assert_eq!(
        cancelled.body,
        json!({"task_id": "p-1", "status": "cancelled"})
    );
    let detail = server.task("p-1").await;
    assert_eq!(detail.status, "cancelled");
    assert_eq!(detail.subtasks[0].state, "cancelled");
    assert_eq!(detail.started_at, None);
    server
        .post("/execute/p-1", json!({}))
        .await
        .assert_error(409, "conflict");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_are_discoverable_and_a_drained_agent_gets_no_new_work() {
    let server = TestServer::start().await;
    let x = server.hand_agent("x-only", &["x"]).await;
    let y = server.hand_agent("y-only", &["y"]).await;
    let xz = server.hand_agent("x-and-z", &["x", "z"]).await;

    let ids = |list: baton_agent::api::AgentList| {
        let mut ids: Vec<String> = list.agents.into_iter().map(|a| a.agent_id).collect();
        ids.sort();
        ids
    };
    let sorted = |mut v: Vec<&str>| {
        v.sort();
        v.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let filter = |cap: &str| AgentFilter {
        capability: Some(cap.into()),
        ..AgentFilter::default()
    };
    let all = server.client.agents(&AgentFilter::default()).await.unwrap();
    assert_eq!(
        ids(all.clone()),
        sorted(vec![&x.agent_id, &y.agent_id, &xz.agent_id])
    );
    assert!(all
        .agents
        .iter()
        .all(|a| a.status == "idle" && a.in_flight == 0));
    assert_eq!(
        ids(server.client.agents(&filter("x")).await.unwrap()),
        sorted(vec![&x.agent_id, &xz.agent_id])
    );
    assert_eq!(
        ids(server.client.agents(&filter("z")).await.unwrap()),
        vec![xz.agent_id.clone()]
    );
    assert!(server
        .client
        .agents(&filter("nope"))
        .await
        .unwrap()
        .agents
        .is_empty());
    let view = server.client.agent(&xz.agent_id).await.unwrap();
    assert_eq!(view.name, "x-and-z");
    assert_eq!(view.skills, ["x", "z"]);
    assert_eq!(view.kind, "test");
    assert_eq!(view.max_concurrency, 4);
    server
        .get("/agents/agent-unknown")
        .await
        .assert_error(404, "not_found");
    let web = server
        .post(
            "/agents",
            json!({"name": "web", "capabilities": ["x"], "domains": ["web"]}),
        )
        .await;
    assert_eq!(web.status, 201);
    let web_id = web.body["agent_id"].as_str().unwrap().to_owned();
    let by_domain = server
        .client
        .agents(&AgentFilter {
            domain: Some("web".into()),
            ..AgentFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(by_domain), vec![web_id.clone()]);
    server.client.drain_agent(&web_id).await.unwrap();

    // x holds work while it is drained: it finishes that work, then stops.
    assert_eq!(
        server.post("/tasks", one_step("d-1", "y")).await.status,
        201
    );
    let held = y.lease_one().await;
    let busy = server.client.agent(&y.agent_id).await.unwrap();
    assert_eq!((busy.status.as_str(), busy.in_flight), ("busy", 1));
    assert!((busy.load - 0.25).abs() < 1e-9, "{busy:?}");
    let drained = server
        .raw(
            reqwest::Method::DELETE,
            &format!("/agents/{}", y.agent_id),
            Body::None,
            None,
        )
        .await;
    assert_eq!(drained.status, 200, "{drained:?}");
    assert_eq!(drained.body["status"], "draining");
    assert_eq!(drained.body["in_flight"], 1);
    let refused = y
        .try_lease(1, 0)
        .await
        .expect_err("a draining agent gets no work");
    assert_eq!(refused.status(), Some(409), "{refused}");

    // New work for its capability is not routed to it: no one else offers it, so it blocks.
    assert_eq!(
        server.post("/tasks", one_step("d-2", "y")).await.status,
        201
    );
    let blocked = server.wait_for_subtask("d-2", "y::d-2::1", "blocked").await;
    assert_eq!(subtask(&blocked, "y::d-2::1").assigned_agent, None);

    // Its current work may still finish; then it is stopped.
    y.complete(&held.assignment_id, json!({"ok": 1}))
        .await
        .unwrap();
    server.wait_for_status("d-1", "completed", PATIENCE).await;
    assert_eq!(
        server.client.agent(&y.agent_id).await.unwrap().status,
        "stopped"
    );
    assert!(
        !ids(server.client.agents(&AgentFilter::default()).await.unwrap()).contains(&y.agent_id)
    );
    let stopped = server
        .client
        .agents(&AgentFilter {
            health: Some("stopped".into()),
            ..AgentFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(stopped), sorted(vec![&y.agent_id, &web_id]));
    assert!(server
        .client
        .agents(&filter("y"))
        .await
        .unwrap()
        .agents
        .is_empty());
    let healthy = server
        .client
        .agents(&AgentFilter {
            health: Some("healthy".into()),
            ..AgentFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(healthy), sorted(vec![&x.agent_id, &xz.agent_id]));
    // Draining again answers the agent as it is.
    assert_eq!(
        server.client.drain_agent(&y.agent_id).await.unwrap().status,
        "stopped"
    );
    let refused = y
        .try_lease(1, 0)
        .await
        .expect_err("a stopped agent gets no work");
    assert_eq!(refused.status(), Some(409), "{refused}");

    // An idle agent drained is stopped at once; the blocked work goes to a new agent.
    let idle = server.client.drain_agent(&x.agent_id).await.unwrap();
    assert_eq!(idle.status, "stopped");
    let fresh = server.hand_agent("y-new", &["y"]).await;
    let lease = fresh.lease_one().await;
    assert_eq!(lease.task_id, "d-2");
    fresh
        .complete(&lease.assignment_id, json!({"ok": 2}))
        .await
        .unwrap();
    let done = server.wait_for_status("d-2", "completed", PATIENCE).await;
    assert_eq!(
        subtask(&done, "y::d-2::1").assigned_agent.as_deref(),
        Some(fresh.agent_id.as_str())
    );
    server
        .raw(
            reqwest::Method::DELETE,
            "/agents/agent-unknown",
            Body::None,
            None,
        )
        .await
        .assert_error(404, "not_found");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_long_poll_receives_new_work() {
    let server = TestServer::start().await;
    let h = server.hand_agent("poller", &["late"]).await;
    // The poll is parked (there is no work yet) when the task arrives.
    let poll = h.park_lease(1, 10_000).await;
    let reply = server.post("/tasks", one_step("lp-1", "late")).await;
    assert_eq!(reply.status, 201);
    let got = tokio::time::timeout(PATIENCE, poll)
        .await
        .expect("the poll is answered")
        .expect("the poll task does not panic")
        .expect("the poll succeeds");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].task_id, "lp-1");
    assert_eq!(got[0].subtask_id, "late::lp-1::1");
    server.shutdown().await;
}

/// A lease call that does not wait (`wait_ms: 0`, the default when the body names none) must
/// still hand out work that is ready at that moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_without_wait_takes_ready_work_at_once() {
    let server = TestServer::start().await;
    let h = server.hand_agent("eager", &["now"]).await;
    assert_eq!(
        server.post("/tasks", one_step("w0-1", "now")).await.status,
        201
    );
    assert_eq!(
        server.post("/tasks", one_step("w0-2", "now")).await.status,
        201
    );
    server
        .wait_for_subtask("w0-1", "now::w0-1::1", "ready")
        .await;

    let got = h.lease(1, 0).await;
    assert_eq!(got.len(), 1, "wait_ms 0 with ready work: {got:?}");
    assert_eq!(got[0].task_id, "w0-1");
    // No `wait_ms` at all.
    let reply = server
        .raw(
            reqwest::Method::POST,
            &format!("/agents/{}/lease", h.agent_id),
            Body::Json(json!({"max": 1})),
            Some(&h.token),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.body["assignments"].as_array().map(Vec::len),
        Some(1),
        "lease without wait_ms with ready work: {}",
        reply.body
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_respect_max_concurrency_and_priority() {
    let server = TestServer::start().await;
    let h = server.hand_agent_with("pair", &["job"], 2).await;
    for (id, priority) in [
        ("q-low", "low"),
        ("q-normal-1", "normal"),
        ("q-high", "high"),
        ("q-normal-2", "normal"),
    ] {
        let mut body = one_step(id, "job");
        body["priority"] = json!(priority);
        assert_eq!(server.post("/tasks", body).await.status, 201);
    }
    // Two slots: the highest priority first, then the older of equal priority.
    let first = h.lease(10, 1_000).await;
    let tasks: Vec<&str> = first.iter().map(|l| l.task_id.as_str()).collect();
    assert_eq!(tasks, ["q-high", "q-normal-1"]);
    let view = server.client.agent(&h.agent_id).await.unwrap();
    assert_eq!((view.status.as_str(), view.in_flight), ("busy", 2));
    assert!((view.load - 1.0).abs() < 1e-9, "{view:?}");
    // No free slot: nothing more, however long it waits.
    assert!(h.lease(10, 200).await.is_empty());

    h.complete(&first[0].assignment_id, json!({"n": 1}))
        .await
        .unwrap();
    let next = h.lease(10, 1_000).await;
    let tasks: Vec<&str> = next.iter().map(|l| l.task_id.as_str()).collect();
    assert_eq!(tasks, ["q-normal-2"]);
    h.complete(&first[1].assignment_id, json!({"n": 2}))
        .await
        .unwrap();
    h.complete(&next[0].assignment_id, json!({"n": 3}))
        .await
        .unwrap();
    let last = h.lease(10, 1_000).await;
    let tasks: Vec<&str> = last.iter().map(|l| l.task_id.as_str()).collect();
    assert_eq!(tasks, ["q-low"]);
    h.complete(&last[0].assignment_id, json!({"n": 4}))
        .await
        .unwrap();
    for id in ["q-low", "q-normal-1", "q-high", "q-normal-2"] {
        server.wait_for_status(id, "completed", PATIENCE).await;
    }
    server.shutdown().await;
}

/// `Config::subtask_timeout` (`--timeout-seconds` / `AGENT_TIMEOUT_SECONDS`) bounds one
/// attempt: an agent that keeps its lease alive but never answers loses the attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_past_the_subtask_timeout_is_retried() {
    let server = TestServer::start_with(baton_engine::Config {
        subtask_timeout: Duration::from_millis(300),
        ..engine_config()
    })
    .await;
    let h = server.hand_agent("sluggish", &["slow"]).await;
    assert_eq!(
        server.post("/tasks", one_step("to-1", "slow")).await.status,
        201
    );
    let lease = h.lease_one().await;
    let sub_id = "slow::to-1::1";
    // Heartbeats keep the lease alive; only the timeout can end the attempt.
    let detail = {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            h.heartbeat().await;
            let detail = server.task("to-1").await;
            if states_of(&detail, sub_id).iter().any(|s| s == "retry_wait") {
                break detail;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the attempt never timed out (subtask_timeout 300 ms); after 5 s: {:?}",
                subtask(&detail, sub_id)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let lost = &detail.status_history[history_index(&detail, Some(sub_id), "retry_wait")];
    assert!(
        lost.note
            .as_deref()
            .is_some_and(|n| n.contains("timed out")),
        "{lost:?}"
    );
    let late = h
        .complete(&lease.assignment_id, json!({"late": true}))
        .await
        .expect_err("a timed-out attempt cannot complete");
    assert_eq!(late.status(), Some(409), "{late}");
    let retry = h.lease_one().await;
    assert_eq!(retry.attempt, 2);
    h.complete(&retry.assignment_id, json!({"ok": true}))
        .await
        .unwrap();
    let done = server.wait_for_status("to-1", "completed", PATIENCE).await;
    assert_eq!(subtask(&done, sub_id).attempts, 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_subtask_revokes_its_running_siblings() {
    let server = TestServer::start().await;
    let slow = server.hand_agent("slow", &["slow"]).await;
    let bad = server.hand_agent("bad", &["bad"]).await;
    // Under the `fail` policy a permanent failure fails the task (by default it escalates).
    let body = json!({"task_id": "f-1", "title": "Fails", "description": "siblings",
                      "on_exhausted": "fail",
                      "plan": {"subtasks": [
                          {"id": "a", "capability": "slow"},
                          {"id": "b", "capability": "bad"},
                          {"id": "c", "capability": "slow", "depends_on": ["a", "b"]}]}});
    assert_eq!(server.post("/tasks", body).await.status, 201);
    let held = slow.lease_one().await;
    let doomed = bad.lease_one().await;
    assert_eq!(held.subtask_id, "slow::f-1::1");
    assert_eq!(doomed.subtask_id, "bad::f-1::1");

    let failed = bad
        .fail(&doomed.assignment_id, "cannot do it", false)
        .await
        .unwrap();
    assert_eq!(failed.state, "failed");
    let detail = server.wait_for_status("f-1", "failed", PATIENCE).await;
    assert_eq!(subtask(&detail, "bad::f-1::1").state, "failed");
    assert_eq!(subtask(&detail, "slow::f-1::1").state, "cancelled");
    assert_eq!(subtask(&detail, "slow::f-1::2").state, "cancelled");
    let result = detail.result.as_ref().unwrap();
    assert_eq!(result["outputs"], json!({}));
    assert!(result["errors"]["bad::f-1::1"]
        .as_str()
        .is_some_and(|e| e.contains("cannot do it")));
    let task_failed = &detail.status_history[history_index(&detail, None, "failed")];
    assert!(
        task_failed
            .note
            .as_deref()
            .is_some_and(|n| n.contains("bad::f-1::1")),
        "{task_failed:?}"
    );

    let beat = slow.heartbeat().await;
    assert_eq!(beat.revoked, vec![held.assignment_id.clone()]);
    let late = slow
        .complete(&held.assignment_id, json!({"late": true}))
        .await
        .expect_err("the sibling's attempt was revoked");
    assert_eq!(late.status(), Some(409), "{late}");
    assert!(
        bad.heartbeat().await.revoked.is_empty(),
        "a reported failure is not revoked"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_aborts_the_job_of_an_sdk_worker() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// Sets its flag when the job's future is dropped (aborted) before it finished.
    struct OnDrop(Arc<AtomicBool>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    let server = TestServer::start().await;
    let started = Arc::new(AtomicBool::new(false));
    let aborted = Arc::new(AtomicBool::new(false));
    let handler = {
        let (started, aborted) = (started.clone(), aborted.clone());
        baton_agent::handler_fn(move |_job: Job| {
            let guard = OnDrop(aborted.clone());
            started.store(true, Ordering::SeqCst);
            async move {
                // Far longer than the test: only an abort ends it early.
                tokio::time::sleep(Duration::from_secs(60)).await;
                std::mem::forget(guard);
                Ok(json!({"finished": true}))
            }
        })
    };
    let worker = server
        .spawn_worker(worker_config("long-runner", &["long"]), handler)
        .await;
    assert_eq!(
        server
            .post("/tasks", one_step("sdk-c", "long"))
            .await
            .status,
        201
    );
    // Handed out: `assigned`, or already `running` once the SDK named it in `held`.
    server
        .wait_for_task("sdk-c", "its subtask handed out", PATIENCE, |d| {
            matches!(
                subtask(d, "long::sdk-c::1").state.as_str(),
                "assigned" | "running"
            )
        })
        .await;
    let deadline = std::time::Instant::now() + PATIENCE;
    while !started.load(Ordering::SeqCst) {
        assert!(
            std::time::Instant::now() < deadline,
            "the job never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!aborted.load(Ordering::SeqCst));

    let cancelled = server.put("/tasks/sdk-c/cancel").await;
    assert_eq!(cancelled.body["status"], "cancelled");
    // The worker learns of the revocation at its next heartbeat and aborts the job.
    while !aborted.load(Ordering::SeqCst) {
        assert!(
            std::time::Instant::now() < deadline,
            "the revoked job was not aborted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = worker.stop().await;
    assert_eq!((report.completed, report.failed, report.dropped), (0, 0, 1));
    let detail = server.task("sdk-c").await;
    assert_eq!(detail.status, "cancelled");
    assert_eq!(detail.subtasks[0].outputs, None);
    server.shutdown().await;
}

/// Stopping the server must not wait out the long polls agents have parked: they are
/// answered when shutdown begins, so `Server::serve` returns promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_parked_long_polls() {
    let server = TestServer::start().await;
    let h = server.hand_agent("parked", &["idle"]).await;
    let poll = h.park_lease(1, 30_000).await;
    tokio::time::timeout(Duration::from_secs(5), server.shutdown())
        .await
        .expect("shutdown waited for a parked 30 s long poll instead of answering it");
    let answered = tokio::time::timeout(Duration::from_secs(1), poll)
        .await
        .expect("the parked poll is answered by shutdown")
        .expect("the poll task does not panic");
    match answered {
        Ok(assignments) => assert!(assignments.is_empty()),
        Err(e) => assert_eq!(e.status(), Some(503), "{e}"),
    }
}
