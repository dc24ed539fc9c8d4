//! The governance commands as a user runs them: a real `baton serve` child process on a temp
//! data dir and a free port, agents driven by hand over HTTP, and the `baton` binary run as
//! child processes against it. Every wait is bounded by a deadline; the waiting itself is
//! the server's long polls (lease `wait_ms`, task `wait_ms`), never a sleep.

mod common;

use std::time::{Duration, Instant};

use baton_agent::api::{ClientPlan, ClientStep, EscalationList, EscalationView, SubmitTask};
use common::{Server, PATIENCE};
use serde_json::{json, Value};

/// A task with a client plan of independent steps, one per `(id, capability)`.
fn task(task_id: &str, steps: &[(&str, &str)]) -> SubmitTask {
    let subtasks = steps
        .iter()
        .map(|(id, capability)| ClientStep {
            id: (*id).to_owned(),
            capability: (*capability).to_owned(),
            ..ClientStep::default()
        })
        .collect();
    SubmitTask {
        task_id: Some(task_id.into()),
        title: "governed".into(),
        description: "a task a human steers".into(),
        plan: Some(ClientPlan { subtasks }),
        ..SubmitTask::default()
    }
}

/// The data rows of a table (its header checked), split on whitespace.
fn rows(table: &str) -> Vec<Vec<&str>> {
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(
        header,
        ["ID", "TASK", "SUBTASK", "KIND", "STATUS", "REASON"],
        "{table}"
    );
    lines.map(|l| l.split_whitespace().collect()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_task_is_approved_escalated_and_resolved_from_the_cli() {
    let server = Server::start().await;
    let client = server.client();
    client
        .orchestrate(&task("g-1", &[("a", "x")]))
        .await
        .unwrap();
    let sid = "x::g-1::1";

    // Nothing waits for approval before the task runs.
    let out = server.fails(&["approve", "g-1"]).await;
    assert!(out.stderr.contains("409 conflict"), "{out:?}");

    let out = server.ok(&["execute", "g-1", "--manual"]).await;
    assert_eq!(out, "task g-1 awaiting_approval\n");
    let out = server.ok(&["approve", "g-1", "--note", "ok by ana"]).await;
    assert_eq!(out, format!("approved {sid}\ntask g-1 running\n"));

    // An agent takes the step and fails it for good: the default policy escalates.
    let agent = server.hand_agent(&["x"]).await;
    let lease = agent.lease_one().await;
    assert_eq!(lease.subtask_id, sid);
    agent.fail(&lease, "boom").await;
    server.wait_for_status("g-1", "escalated").await;

    let table = server.ok(&["escalations", "--status", "open"]).await;
    let rows = rows(&table);
    assert_eq!(rows.len(), 1, "{table}");
    assert_eq!(rows[0][1..5], ["g-1", sid, "attempts", "open"], "{table}");
    let id = rows[0][0].to_owned();
    let listed: EscalationList =
        serde_json::from_str(&server.ok(&["escalations", "--task", "g-1", "--json"]).await)
            .unwrap();
    assert_eq!(listed.escalations.len(), 1);
    assert_eq!(listed.escalations[0].escalation_id, id);
    assert_eq!(
        listed.escalations[0].evidence["attempts"][0]["error"],
        "boom"
    );

    // provide_output without outputs: the server names the field, the command fails.
    let out = server
        .fails(&["resolve", &id, "--action", "provide_output"])
        .await;
    assert!(out.stderr.contains("400 validation_failed"), "{out:?}");
    assert!(
        out.stderr.lines().any(|l| l.starts_with("  outputs: ")),
        "{out:?}"
    );

    let out = server
        .ok(&[
            "resolve",
            &id,
            "--action",
            "provide_output",
            "--outputs",
            r#"{"ok":true}"#,
            "--note",
            "by hand",
        ])
        .await;
    assert_eq!(out, format!("resolved {id}: provide_output\n"));
    server.wait_for_status("g-1", "completed").await;
    let detail = server.status("g-1").await;
    assert_eq!(detail.subtasks[0].outputs, Some(json!({"ok": true})));
    assert_eq!(detail.escalations[0].status, "resolved");

    // Once resolved, it stays resolved.
    let out = server.fails(&["resolve", &id, "--action", "skip"]).await;
    assert!(out.stderr.contains("409 conflict"), "{out:?}");
    assert!(out.stderr.contains("already resolved"), "{out:?}");
    let table = server.ok(&["escalations", "--status", "open"]).await;
    assert_eq!(table, "no escalations\n");
    let shown = server.ok(&["escalations", "show", &id]).await;
    assert!(
        shown.starts_with(&format!("escalation {id} (attempts, resolved)\n")),
        "{shown}"
    );
    let resolution = shown.split_once("\nResolution:\n").unwrap().1;
    assert!(
        resolution.starts_with("  action: provide_output\n"),
        "{shown}"
    );
    assert!(resolution.contains("\n  note: by hand\n"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_checkpoint_is_skipped_and_a_blocked_step_is_assigned_by_hand() {
    let server = Server::start().await;
    let client = server.client();
    let agent = server.hand_agent(&["x"]).await;
    client
        .orchestrate(&task("g-2", &[("a", "x"), ("b", "unserved")]))
        .await
        .unwrap();
    let planned = server.status("g-2").await;
    let sid = |step: &str| {
        let sub = planned.subtasks.iter().find(|s| s.id == step);
        sub.unwrap().subtask_id.clone()
    };
    let (a, b) = (sid("a"), sid("b"));
    let (a, b) = (a.as_str(), b.as_str());

    let out = server
        .ok(&["execute", "g-2", "--checkpoint", a, "--json"])
        .await;
    let reply: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reply["status"], "awaiting_approval", "{out}");

    // A reject needs a note; with one, the step becomes an escalation of kind `rejected`.
    let out = server.fails(&["reject", "g-2", "--subtask", a]).await;
    assert!(out.stderr.contains("--note"), "{out:?}");
    let out = server.fails(&["approve", "g-2", "--subtask", b]).await;
    assert!(out.stderr.contains("409 conflict"), "{out:?}");
    let out = server
        .ok(&["reject", "g-2", "--subtask", a, "--note", "too risky"])
        .await;
    assert!(
        out.starts_with(&format!("rejected {a}\ntask g-2 ")),
        "{out}"
    );
    server.wait_for_status("g-2", "escalated").await;

    let listed: EscalationList = serde_json::from_str(
        &server
            .ok(&["escalations", "--status", "open", "--task", "g-2", "--json"])
            .await,
    )
    .unwrap();
    assert_eq!(listed.escalations.len(), 1);
    let id = listed.escalations[0].escalation_id.clone();
    let shown = server.ok(&["escalations", "show", &id]).await;
    assert!(
        shown.starts_with(&format!("escalation {id} (rejected, open)\n")),
        "{shown}"
    );
    assert!(shown.contains("too risky"), "{shown}");
    assert!(shown.contains("\nSuggestions:\n  - retry: "), "{shown}");
    assert!(
        shown.contains(&format!("baton resolve {id} --action <action>")),
        "{shown}"
    );
    let one: EscalationView =
        serde_json::from_str(&server.ok(&["escalations", "show", &id, "--json"]).await).unwrap();
    assert_eq!(one.subtask_id.as_deref(), Some(a));

    // raise_budget does not fit a rejected step; unknown escalations are 404s.
    let out = server
        .fails(&[
            "resolve",
            &id,
            "--action",
            "raise_budget",
            "--max-tokens",
            "9",
        ])
        .await;
    assert!(out.stderr.contains("409 conflict"), "{out:?}");
    let out = server.fails(&["escalations", "show", "esc-nope"]).await;
    assert!(out.stderr.contains("404 not_found"), "{out:?}");

    let out = server
        .ok(&["resolve", &id, "--action", "skip", "--json"])
        .await;
    let resolved: EscalationView = serde_json::from_str(&out).unwrap();
    assert_eq!(resolved.status, "resolved");
    assert_eq!(resolved.resolution.unwrap()["action"], "skip");

    // The other step needs a capability nobody offers: it is blocked until routed by hand.
    let deadline = Instant::now() + PATIENCE;
    let blocked = loop {
        let detail = server.status("g-2").await;
        let sub = detail.subtasks.iter().find(|s| s.subtask_id == b).unwrap();
        if sub.state == "blocked" {
            break sub.clone();
        }
        assert!(Instant::now() < deadline, "{b} never blocked: {detail:#?}");
        // A long poll on the task paces the loop.
        let _ = client.wait_task("g-2", Duration::from_millis(100)).await;
    };
    assert!(
        blocked
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("unserved")),
        "{blocked:?}"
    );
    let out = server
        .fails(&["assign", "g-2", b, "--agent", "agent-unknown"])
        .await;
    assert!(out.stderr.contains("409 conflict"), "{out:?}");
    let out = server
        .ok(&["assign", "g-2", b, "--agent", &agent.agent_id])
        .await;
    assert!(
        out.starts_with(&format!("assigned {b} to {}\ntask g-2 ", agent.agent_id)),
        "{out}"
    );
    let lease = agent.lease_one().await;
    assert_eq!(lease.subtask_id, b);
    agent.complete(&lease, json!({"done": true})).await;
    let detail = server.wait_for_status("g-2", "completed").await;
    let states: Vec<&str> = detail.subtasks.iter().map(|s| s.state.as_str()).collect();
    assert_eq!(states, ["skipped", "completed"]);
}
