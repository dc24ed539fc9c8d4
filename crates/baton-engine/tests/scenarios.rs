//! The engine's rules, scenario by scenario, on virtual time: a plan, a script of agent calls
//! and clock moves, then the timeline the engine committed (an `insta` snapshot) and the
//! answers it gave. Each runs in milliseconds; nothing sleeps.

mod common;

use baton_core::retry::RetryPolicy;
use baton_core::{AgentStatus, AssignmentState};
use baton_engine::{Config, Error, Submitted};
use common::{Scenario, LEASE_MS};
use serde_json::json;

#[tokio::test]
async fn a_diamond_releases_the_join_only_after_both_branches() {
    let mut s = Scenario::new().await;
    let w = s.register("w", &["plan", "build", "check"], 4).await;
    s.submit(Scenario::task(
        "diamond",
        &[
            ("a", "plan", &[]),
            ("b", "build", &["a"]),
            ("c", "check", &["a"]),
            ("d", "plan", &["b", "c"]),
        ],
        "normal",
    ))
    .await;
    let a = s.lease_one(&w).await;
    assert_eq!(a.assignment.subtask_id.as_str(), "plan::diamond::1");
    assert!(s.lease(&w, 4).await.is_empty(), "b and c wait for a");
    s.advance(10).await;
    s.complete(&w, &a, json!({"plan": "x"})).await.unwrap();
    let mut bc = s.lease(&w, 4).await;
    assert_eq!(bc.len(), 2, "b and c are released together");
    bc.sort_by_key(|g| g.assignment.subtask_id.clone());
    // Each gets the outputs of its direct dependency, and the task's brief.
    assert_eq!(
        bc[0].input["dependencies"],
        json!({"plan::diamond::1": {"plan": "x"}})
    );
    assert_eq!(bc[0].input["brief"], "a scenario");
    s.advance(10).await;
    s.complete(&w, &bc[0], json!({"built": true}))
        .await
        .unwrap();
    assert!(s.lease(&w, 4).await.is_empty(), "d still waits for c");
    s.advance(10).await;
    s.complete(&w, &bc[1], json!({"checked": true}))
        .await
        .unwrap();
    let d = s.lease_one(&w).await;
    assert_eq!(d.assignment.subtask_id.as_str(), "plan::diamond::2");
    let deps = d.input["dependencies"].as_object().unwrap();
    assert_eq!(deps.len(), 2);
    s.complete(&w, &d, json!({})).await.unwrap();
    assert_eq!(s.status("diamond").await, "completed");
    insta::assert_snapshot!(s.timeline("diamond").await);
    s.finish().await;
}

#[tokio::test]
async fn ready_work_goes_by_priority_then_age() {
    let mut s = Scenario::new().await;
    let w = s.register("w", &["x"], 1).await;
    for (id, priority) in [
        ("old-normal", "normal"),
        ("new-normal", "normal"),
        ("low", "low"),
        ("critical", "critical"),
        ("high", "high"),
    ] {
        s.submit(Scenario::task(id, &[("only", "x", &[])], priority))
            .await;
        s.advance(1).await;
    }
    let mut order = Vec::new();
    for _ in 0..5 {
        let g = s.lease_one(&w).await;
        order.push(g.assignment.task_id.to_string());
        s.complete(&w, &g, json!(null)).await.unwrap();
    }
    assert_eq!(
        order,
        ["critical", "high", "old-normal", "new-normal", "low"]
    );
    s.finish().await;
}

#[tokio::test]
async fn a_lost_lease_is_retried_on_another_agent_and_the_late_result_is_fenced() {
    let mut s = Scenario::new().await;
    let a = s.register("a", &["x"], 1).await;
    let b = s.register("b", &["x"], 1).await;
    s.submit(Scenario::task("lost", &[("only", "x", &[])], "normal"))
        .await;
    // `a` gets it (ties break by agent id; whichever it is, call it `first`).
    let (first, second) = match s.lease(&a, 1).await.pop() {
        Some(g) => ((a, g), b),
        None => {
            let g = s.lease_one(&b).await;
            ((b, g), a)
        }
    };
    let (first, grant) = first;
    s.progress(&first, &grant).await.unwrap();
    // `first` goes silent: one lease period later the attempt is lost.
    s.advance(LEASE_MS - 1).await;
    assert_eq!(s.status("lost").await, "running");
    s.advance(1).await;
    // After the backoff (500–1000 ms for the first retry) it is ready again, and the other
    // agent gets it.
    s.advance(1_000).await;
    let retry = s.lease_one(&second).await;
    assert_eq!(retry.assignment.attempt, 2);
    // The late result of the lost attempt changes nothing.
    let late = s.complete(&first, &grant, json!({"late": true})).await;
    assert!(matches!(late, Err(Error::Conflict(_))), "{late:?}");
    let revoked = s.heartbeat(&first, None).await.revoked;
    assert_eq!(revoked, vec![grant.assignment.assignment_id.clone()]);
    s.complete(&second, &retry, json!({"on": "time"}))
        .await
        .unwrap();
    assert_eq!(s.status("lost").await, "completed");
    let timeline = s.timeline("lost").await;
    let timeline = timeline
        .replace(&format!("[{}]", first.name), "[first]")
        .replace(&format!("[{}]", second.name), "[second]");
    insta::assert_snapshot!(timeline);
    s.finish().await;
}

#[tokio::test]
async fn retries_back_off_exponentially_with_seeded_jitter_then_fail_under_the_fail_policy() {
    let mut s = Scenario::with(|config| Config {
        retry: RetryPolicy {
            max_attempts: 4,
            base_ms: 1_000,
            max_ms: 30_000,
        },
        ..config
    })
    .await;
    let w = s.register("w", &["x"], 1).await;
    let mut flaky = Scenario::task("flaky", &[("only", "x", &[])], "normal");
    flaky.context.on_exhausted = Some(baton_core::ExhaustedPolicy::Fail);
    s.submit(flaky).await;
    for attempt in 1..=4u32 {
        let g = s.lease_one(&w).await;
        assert_eq!(g.assignment.attempt, attempt);
        s.fail(&w, &g, true).await.unwrap();
        if attempt == 4 {
            break;
        }
        let wait = last_retry_wait(&s.timeline("flaky").await);
        let step = 1_000 << (attempt - 1);
        assert!(
            (step / 2..=step).contains(&wait),
            "wait {wait} ms after attempt {attempt} is within [{}, {step}]",
            step / 2
        );
        // The retry is offered exactly when the wait is over, not a millisecond earlier.
        s.advance(wait - 1).await;
        assert!(s.lease(&w, 1).await.is_empty(), "too early after {wait} ms");
        s.advance(1).await;
    }
    assert_eq!(s.status("flaky").await, "failed");
    // The same seed gives the same schedule: the snapshot holds the exact waits.
    insta::assert_snapshot!(s.timeline("flaky").await);
    s.finish().await;
}

/// The wait in the note of the last `retry_wait` of a rendered timeline.
fn last_retry_wait(timeline: &str) -> i64 {
    let line = timeline
        .lines()
        .rfind(|l| l.contains("-> retry_wait"))
        .expect("a retry_wait event");
    let (_, rest) = line.split_once("retry in ").expect("a retry note");
    rest.trim_end_matches(" ms)")
        .parse()
        .expect("a number of ms")
}

/// The orchestrator seed's SLA rule: a subtask over its timeout is retried (even while its agent
/// heartbeats) until its three attempts are used, then escalated with the evidence, never
/// silently failed; a human's output then completes it.
#[tokio::test]
async fn an_sla_timeout_is_retried_three_times_then_escalated_with_the_evidence() {
    let mut s = Scenario::with(|config| Config {
        subtask_timeout: std::time::Duration::from_secs(10),
        retry: RetryPolicy {
            max_attempts: 3,
            base_ms: 100,
            max_ms: 100,
        },
        ..config
    })
    .await;
    let w = s.register("w", &["x"], 1).await;
    s.submit(Scenario::task("slow", &[("only", "x", &[])], "normal"))
        .await;
    let g = s.lease_one(&w).await;
    let held = Some(vec![g.assignment.assignment_id.clone()]);
    for _ in 0..3 {
        s.advance(2_500).await;
        let beat = s.heartbeat(&w, held.clone()).await;
        assert!(beat.revoked.is_empty());
    }
    // 10 s after it was handed out, the attempt times out although its lease is fresh.
    s.advance(2_500).await;
    let beat = s.heartbeat(&w, held.clone()).await;
    assert_eq!(beat.revoked, vec![g.assignment.assignment_id.clone()]);
    for attempt in 2..=3 {
        s.advance(100).await;
        let again = s.lease_one(&w).await;
        assert_eq!(again.assignment.attempt, attempt);
        let held = Some(vec![again.assignment.assignment_id.clone()]);
        s.advance(10_000).await;
        s.heartbeat(&w, held).await;
    }
    // The last attempt timed out too: escalated, not failed; nothing more is dispatched.
    assert_eq!(s.status("slow").await, "escalated");
    s.advance(1_000).await;
    assert!(s.lease(&w, 1).await.is_empty());
    let escalations = s.escalations("slow").await;
    assert_eq!(escalations.len(), 1);
    let e = &escalations[0];
    assert_eq!(e.kind, baton_core::EscalationKind::Attempts);
    assert_eq!(e.status, baton_core::EscalationStatus::Open);
    let attempts = e.evidence["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{}", e.evidence);
    assert!(attempts.iter().all(|a| a["error"]
        .as_str()
        .unwrap()
        .starts_with("timed out after 10 s")));
    assert!(!e.suggestions.is_empty());
    // A human supplies the output: the subtask completes (recorded as such) and so does the task.
    let resolved = s
        .engine
        .resolve(
            e.escalation_id.clone(),
            baton_engine::Resolve {
                action: baton_core::ResolveAction::ProvideOutput,
                outputs: Some(json!({"by": "hand"})),
                note: Some("done it myself".into()),
                budget: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(resolved.status, baton_core::EscalationStatus::Resolved);
    assert_eq!(s.status("slow").await, "completed");
    insta::assert_snapshot!(s.timeline("slow").await);
    s.finish().await;
}

#[tokio::test]
async fn cancelling_a_task_revokes_its_running_assignments() {
    let mut s = Scenario::new().await;
    let w = s.register("w", &["x"], 4).await;
    s.submit(Scenario::task(
        "doomed",
        &[
            ("one", "x", &[]),
            ("two", "x", &[]),
            ("after", "x", &["one"]),
        ],
        "normal",
    ))
    .await;
    let grants = s.lease(&w, 4).await;
    assert_eq!(grants.len(), 2);
    s.progress(&w, &grants[0]).await.unwrap();
    s.advance(5).await;
    assert_eq!(
        s.engine.cancel("doomed".into()).await.unwrap(),
        baton_core::TaskStatus::Cancelled
    );
    let mut revoked = s.heartbeat(&w, None).await.revoked;
    revoked.sort();
    let mut ids: Vec<_> = grants
        .iter()
        .map(|g| g.assignment.assignment_id.clone())
        .collect();
    ids.sort();
    assert_eq!(revoked, ids);
    let late = s.complete(&w, &grants[0], json!(1)).await;
    assert!(matches!(late, Err(Error::Conflict(_))), "{late:?}");
    let info = s.agents().await;
    assert_eq!(info[0].in_flight, 0, "the slots are free again");
    assert_eq!(s.status("doomed").await, "cancelled");
    insta::assert_snapshot!(s.timeline("doomed").await);
    s.finish().await;
}

#[tokio::test]
async fn a_blocked_subtask_starts_when_a_capable_agent_registers() {
    let mut s = Scenario::new().await;
    s.submit(Scenario::task(
        "rare",
        &[("only", "rare_skill", &[])],
        "normal",
    ))
    .await;
    s.advance(1_000).await;
    let r = s.register("r", &["rare_skill"], 1).await;
    let g = s.lease_one(&r).await;
    s.complete(&r, &g, json!("done")).await.unwrap();
    assert_eq!(s.status("rare").await, "completed");
    insta::assert_snapshot!(s.timeline("rare").await);
    s.finish().await;
}

#[tokio::test]
async fn a_restarted_engine_resumes_mid_flight_from_the_store() {
    let mut s = Scenario::new().await;
    let w = s.register("w", &["x"], 2).await;
    s.submit(Scenario::task(
        "resume",
        &[("a", "x", &[]), ("b", "x", &["a"]), ("c", "x", &[])],
        "normal",
    ))
    .await;
    let mut first = s.lease(&w, 2).await;
    first.sort_by_key(|g| g.assignment.subtask_id.clone());
    let (a, c) = (first[0].clone(), first[1].clone());
    s.complete(&w, &a, json!({"a": 1})).await.unwrap();
    let b = s.lease_one(&w).await;
    s.progress(&w, &b).await.unwrap();
    // `c` fails once: it waits for its retry when the engine goes down.
    s.fail(&w, &c, true).await.unwrap();
    s.advance(100).await;

    let s = s.restart().await;
    // The agent is known again with its token; `b`'s lease got a fresh period.
    s.advance(LEASE_MS - 1).await;
    s.complete(&w, &b, json!({"b": 2})).await.unwrap();
    s.advance(1).await;
    let c2 = s.lease_one(&w).await;
    assert_eq!(c2.assignment.attempt, 2);
    s.complete(&w, &c2, json!({"c": 3})).await.unwrap();
    assert_eq!(s.status("resume").await, "completed");
    insta::assert_snapshot!(s.timeline("resume").await);
    s.finish().await;
}

#[tokio::test]
async fn a_draining_agent_finishes_its_work_takes_no_more_and_stops() {
    let mut s = Scenario::new().await;
    let w = s.register("w", &["x"], 2).await;
    s.submit(Scenario::task(
        "drained",
        &[("one", "x", &[]), ("two", "x", &["one"])],
        "normal",
    ))
    .await;
    let one = s.lease_one(&w).await;
    let info = s.engine.drain(w.id.clone()).await.unwrap();
    assert_eq!(info.agent.status, AgentStatus::Draining);
    let refused = s.try_lease(&w, 1, None).await;
    assert!(matches!(refused, Err(Error::Conflict(_))), "{refused:?}");
    s.complete(&w, &one, json!(1)).await.unwrap();
    let info = s.agents().await;
    assert_eq!(info[0].agent.status, AgentStatus::Stopped);
    // With no agent left for `x`, the next step waits blocked.
    assert_eq!(s.status("drained").await, "running");
    insta::assert_snapshot!(s.timeline("drained").await);
    s.finish().await;
}

#[tokio::test]
async fn an_assignment_its_agent_never_received_expires_although_the_agent_keeps_polling() {
    let mut s = Scenario::new().await;
    let w = s.register("w", &["x"], 1).await;
    s.submit(Scenario::task("phantom", &[("only", "x", &[])], "normal"))
        .await;
    // The answer to this lease is lost on the way: the agent never learns of it.
    let lost = s.lease_one(&w).await;
    // A plain agent (no `held`) keeps polling and heartbeating every few seconds.
    for _ in 0..(LEASE_MS / 5_000) {
        s.advance(5_000).await;
        assert!(s.lease(&w, 1).await.is_empty(), "its slot is taken");
        s.heartbeat(&w, None).await;
    }
    // One lease period after it was handed out, the phantom has expired; after the backoff
    // the work is offered again, to the same agent (the only one).
    s.advance(1_000).await;
    let again = s.lease_one(&w).await;
    assert_eq!(again.assignment.attempt, 2);
    assert_ne!(
        again.assignment.assignment_id,
        lost.assignment.assignment_id
    );
    // Acknowledged work (progress) is then kept alive by any call of the agent.
    s.progress(&w, &again).await.unwrap();
    for _ in 0..(2 * LEASE_MS / 5_000) {
        s.advance(5_000).await;
        s.heartbeat(&w, None).await;
    }
    s.complete(&w, &again, json!("ok")).await.unwrap();
    assert_eq!(s.status("phantom").await, "completed");
    insta::assert_snapshot!(s.timeline("phantom").await);
    s.finish().await;
}

#[tokio::test]
async fn a_result_for_a_finished_task_gets_the_same_answer_in_memory_and_from_the_store() {
    let mut s = Scenario::new().await;
    let w = s.register("w", &["x"], 1).await;
    let Submitted::Created(_) = s
        .submit(Scenario::task("once", &[("only", "x", &[])], "normal"))
        .await
    else {
        panic!("new task");
    };
    let g = s.lease_one(&w).await;
    let done = s.complete(&w, &g, json!({"v": 1})).await.unwrap();
    assert_eq!(done.state, AssignmentState::Completed);
    // Whether or not the task has left memory by now, the answers are the same.
    for _ in 0..2 {
        let same = s.complete(&w, &g, json!({"v": 1})).await.unwrap();
        assert_eq!(same.state, AssignmentState::Completed);
        let other = s.complete(&w, &g, json!({"v": 2})).await;
        assert!(matches!(other, Err(Error::Conflict(_))), "{other:?}");
        let progress = s.progress(&w, &g).await;
        assert!(matches!(progress, Err(Error::Conflict(_))), "{progress:?}");
        let fail = s.fail(&w, &g, true).await;
        assert!(matches!(fail, Err(Error::Conflict(_))), "{fail:?}");
        s.advance(1).await;
    }
    s.finish().await;
}

/// A workflow-shaped plan: conditions over metadata and upstream outputs pick a branch; a step
/// whose dependencies were all skipped is skipped too; a join with one branch done runs; inputs
/// read upstream outputs. The skips are in the timeline, and the task completes.
#[tokio::test]
async fn conditions_pick_a_branch_and_skips_cascade() {
    let mut s = Scenario::new().await;
    let w = s
        .register("w", &["write", "edit", "review", "publish"], 4)
        .await;
    s.submit(Scenario::task_from(json!({
        "task_id": "branches",
        "title": "Post",
        "description": "a scenario",
        "metadata": {"lang": "en"},
        "plan": {"subtasks": [
            {"id": "draft", "capability": "write"},
            {"id": "english", "capability": "edit", "depends_on": ["draft"],
             "when": "metadata.lang == 'en'",
             "input": {"text": "${steps.draft.outputs.text}", "note": "for ${metadata.lang}"}},
            {"id": "french", "capability": "edit", "depends_on": ["draft"],
             "when": "metadata.lang == 'fr'"},
            {"id": "french_review", "capability": "review", "depends_on": ["french"]},
            {"id": "long", "capability": "edit", "depends_on": ["draft"],
             "when": "steps.draft.outputs.words > 1000"},
            {"id": "publish", "capability": "publish", "depends_on": ["english", "french"]},
        ]},
    })))
    .await;
    let draft = s.lease_one(&w).await;
    s.advance(5).await;
    s.complete(&w, &draft, json!({"text": "hello", "words": 12}))
        .await
        .unwrap();
    let english = s.lease(&w, 4).await;
    assert_eq!(english.len(), 1, "only the english branch runs");
    assert_eq!(
        english[0].assignment.subtask_id.as_str(),
        "edit::branches::1"
    );
    assert_eq!(english[0].input["text"], "hello");
    assert_eq!(english[0].input["note"], "for en");
    s.advance(5).await;
    s.complete(&w, &english[0], json!({"edited": true}))
        .await
        .unwrap();
    let publish = s.lease_one(&w).await;
    assert_eq!(
        publish.assignment.subtask_id.as_str(),
        "publish::branches::1"
    );
    // The join sees both of its dependencies; the skipped one has no outputs.
    assert_eq!(
        publish.input["dependencies"],
        json!({"edit::branches::1": {"edited": true}, "edit::branches::2": null})
    );
    s.complete(&w, &publish, json!({})).await.unwrap();
    assert_eq!(s.status("branches").await, "completed");
    insta::assert_snapshot!(s.timeline("branches").await);
    s.finish().await;
}

/// A task whose only step's condition is false completes as soon as it starts: nothing reaches
/// an agent.
#[tokio::test]
async fn a_task_of_skipped_steps_completes_at_once() {
    let mut s = Scenario::new().await;
    let w = s.register("w", &["x"], 1).await;
    s.submit(Scenario::task_from(json!({
        "task_id": "nothing",
        "title": "t",
        "description": "d",
        "plan": {"subtasks": [
            {"id": "a", "capability": "x", "when": "exists(metadata.flag)"},
            {"id": "b", "capability": "x", "depends_on": ["a"]},
        ]},
    })))
    .await;
    assert!(s.lease(&w, 1).await.is_empty());
    assert_eq!(s.status("nothing").await, "completed");
    insta::assert_snapshot!(s.timeline("nothing").await);
    s.finish().await;
}

/// A planned task takes a new plan (the timeline says so) until it runs; then 409.
#[tokio::test]
async fn a_planned_task_takes_a_new_plan_until_it_runs() {
    let mut s = Scenario::new().await;
    let w = s.register("w", &["new"], 1).await;
    let planned = baton_engine::intake::NewTask {
        execute: false,
        ..Scenario::task(
            "replan",
            &[("a", "old", &[]), ("b", "old", &["a"])],
            "normal",
        )
    };
    s.submit(planned).await;
    let plan = Scenario::task("x", &[("only", "new", &[])], "normal").plan;
    let snapshot = s
        .engine
        .replace_plan("replan".into(), plan.clone())
        .await
        .unwrap();
    assert_eq!(snapshot.subtasks.len(), 1);
    assert_eq!(snapshot.subtasks[0].subtask_id.as_str(), "new::replan::1");
    assert_eq!(
        snapshot.task.context.planner,
        Some(baton_core::PlannerRecord::Client)
    );
    s.engine
        .execute("replan".into(), Default::default())
        .await
        .unwrap();
    let g = s.lease_one(&w).await;
    assert_eq!(g.assignment.subtask_id.as_str(), "new::replan::1");
    let err = s.engine.replace_plan("replan".into(), plan).await;
    assert!(matches!(err, Err(Error::Conflict(_))), "{err:?}");
    s.complete(&w, &g, json!({})).await.unwrap();
    // The store holds the new plan only.
    let (_, subtasks) = s.store.task(&"replan".into()).await.unwrap().unwrap();
    assert_eq!(subtasks.len(), 1);
    insta::assert_snapshot!(s.timeline("replan").await);
    s.finish().await;
}

/// Independent verification: the author never verifies its own output (refused with 409 and a
/// timeline event; never routed to it); a negative verdict starts a new attempt with the
/// feedback; the third escalates with every verdict as evidence.
#[tokio::test]
async fn verification_refuses_self_attestation_and_three_negative_verdicts_escalate() {
    let mut s = Scenario::new().await;
    // The author can verify too: routing must still never give it its own output.
    let author = s.register("author", &["code", "verify"], 4).await;
    s.submit(Scenario::task_from(json!({
        "task_id": "checked", "title": "Fix", "description": "a scenario",
        "plan": {"subtasks": [
            {"id": "fix", "capability": "code", "verify": {"criteria": "tests pass"}},
            {"id": "after", "capability": "code", "depends_on": ["fix"]},
        ]},
    })))
    .await;
    let checker = s.register("checker", &["verify"], 4).await;
    for round in 1..=3u32 {
        let work = s.lease_one(&author).await;
        assert_eq!(work.assignment.subtask_id.as_str(), "code::checked::1");
        assert_eq!(work.assignment.attempt, round);
        if round > 1 {
            assert!(
                s.lease(&author, 4).await.is_empty(),
                "nothing else is ready"
            );
            // The new attempt gets the last verdict to act on.
            let previous = format!("round {}", round - 1);
            assert_eq!(work.input["verification"]["feedback"], previous.as_str());
            assert_eq!(
                work.input["verification"]["evidence"][0],
                format!("test {} fails", round - 1)
            );
        }
        s.advance(10).await;
        s.complete(&author, &work, json!({"patch": round}))
            .await
            .unwrap();
        // The verification goes to the checker, never to the author.
        assert!(s.lease(&author, 4).await.is_empty(), "not to the author");
        let v = s.lease_one(&checker).await;
        assert_eq!(v.capability, "verify");
        assert_eq!(v.input["verify"]["outputs"], json!({"patch": round}));
        assert_eq!(v.input["verify"]["criteria"], "tests pass");
        if round == 1 {
            // The author tries to give the verdict itself.
            let refused = s
                .engine
                .complete(
                    v.assignment.assignment_id.clone(),
                    author.token_hash.clone(),
                    json!({"verified": true, "evidence": []}),
                    None,
                )
                .await;
            assert!(
                matches!(&refused, Err(Error::Conflict(m)) if m.contains("self-attestation")),
                "{refused:?}"
            );
        }
        s.advance(10).await;
        s.complete(
            &checker,
            &v,
            json!({"verified": false, "evidence": [format!("test {round} fails")], "feedback": format!("round {round}")}),
        )
        .await
        .unwrap();
        s.advance(1_000).await;
    }
    assert_eq!(s.status("checked").await, "escalated");
    let verdicts = s.verifications("checked").await;
    assert_eq!(verdicts.len(), 3);
    assert!(verdicts
        .iter()
        .all(|v| !v.verified && v.verifier != v.author));
    let e = &s.escalations("checked").await[0];
    assert_eq!(e.kind, baton_core::EscalationKind::Verification);
    assert_eq!(e.evidence["verdicts"].as_array().unwrap().len(), 3);
    // A retry gives three more attempts; this time the verdict is positive and the
    // dependent starts.
    s.engine
        .resolve(
            e.escalation_id.clone(),
            baton_engine::Resolve {
                action: baton_core::ResolveAction::Retry,
                outputs: None,
                note: None,
                budget: None,
            },
        )
        .await
        .unwrap();
    let work = s.lease_one(&author).await;
    assert_eq!(work.assignment.attempt, 4);
    assert_eq!(work.input["brief"], "a scenario");
    s.complete(&author, &work, json!({"patch": 4}))
        .await
        .unwrap();
    let v = s.lease_one(&checker).await;
    s.complete(
        &checker,
        &v,
        json!({"verified": true, "evidence": ["green"]}),
    )
    .await
    .unwrap();
    let after = s.lease_one(&author).await;
    assert_eq!(after.assignment.subtask_id.as_str(), "code::checked::2");
    s.complete(&author, &after, json!({})).await.unwrap();
    assert_eq!(s.status("checked").await, "completed");
    insta::assert_snapshot!(s
        .timeline("checked")
        .await
        .replace(&format!("[{}]", author.name), "[author]"));
    s.finish().await;
}

/// A verification with no agent but the author offering the verifier capability waits; it is
/// handed out when another one registers.
#[tokio::test]
async fn a_verification_waits_for_an_agent_other_than_the_author() {
    let mut s = Scenario::new().await;
    let author = s.register("author", &["code", "verify"], 4).await;
    s.submit(Scenario::task_from(json!({
        "task_id": "alone", "title": "t", "description": "d",
        "plan": {"subtasks": [{"id": "fix", "capability": "code", "verify": true}]},
    })))
    .await;
    let work = s.lease_one(&author).await;
    s.complete(&author, &work, json!({"x": 1})).await.unwrap();
    assert!(s.lease(&author, 4).await.is_empty());
    assert!(s.timeline("alone").await.contains("verification blocked"));
    let other = s.register("other", &["verify"], 1).await;
    let v = s.lease_one(&other).await;
    s.complete(&other, &v, json!({"verified": true, "evidence": []}))
        .await
        .unwrap();
    assert_eq!(s.status("alone").await, "completed");
    s.finish().await;
}

/// `execution_mode: manual`: every step waits for approval (the task is `awaiting_approval`
/// while nothing else can run); a rejected step escalates; approving goes on.
#[tokio::test]
async fn manual_execution_waits_for_each_approval_and_a_rejection_escalates() {
    let mut s = Scenario::new().await;
    let w = s.register("w", &["x"], 4).await;
    let planned = baton_engine::intake::NewTask {
        execute: false,
        ..Scenario::task("gated", &[("a", "x", &[]), ("b", "x", &["a"])], "normal")
    };
    s.submit(planned).await;
    let gates = baton_engine::Gates {
        manual: true,
        checkpoints: Vec::new(),
    };
    let status = s.engine.execute("gated".into(), gates).await.unwrap();
    assert_eq!(status, baton_core::TaskStatus::AwaitingApproval);
    assert!(s.lease(&w, 4).await.is_empty(), "nothing runs unapproved");
    let approved = s
        .engine
        .decide_gates("gated".into(), None, true, Some("looks right".into()))
        .await
        .unwrap();
    assert_eq!(approved, vec!["x::gated::1".into()]);
    assert_eq!(s.status("gated").await, "running");
    let a = s.lease_one(&w).await;
    s.complete(&w, &a, json!({})).await.unwrap();
    assert_eq!(s.status("gated").await, "awaiting_approval");
    // Nothing is waiting except b; deciding on a subtask that is not waiting is refused.
    let wrong = s
        .engine
        .decide_gates("gated".into(), Some(vec!["x::gated::1".into()]), true, None)
        .await;
    assert!(matches!(wrong, Err(Error::Conflict(_))), "{wrong:?}");
    s.engine
        .decide_gates("gated".into(), None, false, Some("not today".into()))
        .await
        .unwrap();
    assert_eq!(s.status("gated").await, "escalated");
    assert_eq!(
        s.escalations("gated").await[0].kind,
        baton_core::EscalationKind::Rejected
    );
    insta::assert_snapshot!(s.timeline("gated").await);
    s.finish().await;
}

/// A subtask no agent can serve is blocked; an operator routes it by hand to an agent of their
/// choice (whatever its capabilities), which gets it at its next lease call.
#[tokio::test]
async fn a_blocked_subtask_is_routed_by_hand() {
    let mut s = Scenario::new().await;
    let w = s.register("w", &["other"], 1).await;
    s.submit(Scenario::task("stuck", &[("a", "rare", &[])], "normal"))
        .await;
    assert!(s.timeline("stuck").await.contains("-> blocked"));
    let refused = s
        .engine
        .assign_manually("stuck".into(), "rare::stuck::1".into(), "agent-nope".into())
        .await;
    assert!(matches!(refused, Err(Error::Conflict(_))), "{refused:?}");
    s.engine
        .assign_manually("stuck".into(), "rare::stuck::1".into(), w.id.clone())
        .await
        .unwrap();
    let g = s.lease_one(&w).await;
    assert_eq!(g.assignment.subtask_id.as_str(), "rare::stuck::1");
    assert_eq!(g.capability, "rare");
    s.complete(&w, &g, json!({})).await.unwrap();
    assert_eq!(s.status("stuck").await, "completed");
    insta::assert_snapshot!(s.timeline("stuck").await);
    s.finish().await;
}

/// A task over its budget takes no new dispatch (running work finishes) and escalates; raising
/// the budget lets it go on.
#[tokio::test]
async fn a_crossed_budget_stops_dispatch_and_escalates_until_raised() {
    let mut s = Scenario::new().await;
    let w = s.register("w", &["x"], 4).await;
    s.submit(Scenario::task_from(json!({
        "task_id": "costly", "title": "t", "description": "d",
        "budget": {"max_tokens": 100},
        "plan": {"subtasks": [
            {"id": "a", "capability": "x"},
            {"id": "b", "capability": "x"},
            {"id": "c", "capability": "x", "depends_on": ["a", "b"]},
        ]},
    })))
    .await;
    let mut two = s.lease(&w, 4).await;
    assert_eq!(two.len(), 2);
    two.sort_by_key(|g| g.assignment.subtask_id.clone());
    let id = two[0].assignment.assignment_id.clone();
    s.engine
        .complete(
            id,
            w.token_hash.clone(),
            json!({}),
            Some(baton_core::Usage {
                tokens_in: 80,
                tokens_out: 40,
                cost_usd: 0.01,
            }),
        )
        .await
        .unwrap();
    assert_eq!(s.status("costly").await, "escalated");
    // The running one still finishes; c is ready but held back.
    s.complete(&w, &two[1], json!({})).await.unwrap();
    assert!(s.lease(&w, 4).await.is_empty(), "no dispatch over budget");
    let e = &s.escalations("costly").await[0];
    assert_eq!(e.kind, baton_core::EscalationKind::Budget);
    assert_eq!(e.reason, "used 120 tokens, budget 100");
    s.engine
        .resolve(
            e.escalation_id.clone(),
            baton_engine::Resolve {
                action: baton_core::ResolveAction::RaiseBudget,
                outputs: None,
                note: None,
                budget: Some(baton_core::Budget {
                    max_tokens: Some(1_000),
                    ..Default::default()
                }),
            },
        )
        .await
        .unwrap();
    let c = s.lease_one(&w).await;
    assert_eq!(c.assignment.subtask_id.as_str(), "x::costly::3");
    s.complete(&w, &c, json!({})).await.unwrap();
    assert_eq!(s.status("costly").await, "completed");
    insta::assert_snapshot!(s.timeline("costly").await);
    s.finish().await;
}

/// A verification whose answer never reached its verifier expires after one lease although
/// the verifier keeps polling, and goes to another verifier; the work is not redone.
#[tokio::test]
async fn a_lost_verification_goes_to_another_verifier_without_redoing_the_work() {
    let mut s = Scenario::new().await;
    let author = s.register("author", &["code"], 1).await;
    s.submit(Scenario::task_from(json!({
        "task_id": "lostv", "title": "t", "description": "d",
        "plan": {"subtasks": [{"id": "fix", "capability": "code", "verify": true}]},
    })))
    .await;
    let work = s.lease_one(&author).await;
    s.complete(&author, &work, json!({"x": 1})).await.unwrap();
    let first = s.register("first", &["verify"], 1).await;
    let lost = s.lease_one(&first).await;
    let second = s.register("second", &["verify"], 1).await;
    // `first` keeps calling, but never names the verification it never received.
    for _ in 0..3 {
        s.advance(LEASE_MS / 2).await;
        s.heartbeat(&first, None).await;
        s.heartbeat(&second, None).await;
    }
    let v = s.lease_one(&second).await;
    assert_ne!(v.assignment.assignment_id, lost.assignment.assignment_id);
    assert_eq!(
        v.assignment.attempt, 1,
        "the same attempt's output is verified"
    );
    s.complete(&second, &v, json!({"verified": true, "evidence": ["ok"]}))
        .await
        .unwrap();
    assert_eq!(s.status("lostv").await, "completed");
    let verdicts = s.verifications("lostv").await;
    assert_eq!(verdicts.len(), 1);
    assert_eq!(verdicts[0].verifier, second.id);
    s.finish().await;
}

/// Settings of the circuit breaker scenarios: three failures open a circuit for ten seconds,
/// retries come back after 100 ms, and a subtask has attempts to spare.
fn breaker_config(config: Config) -> Config {
    Config {
        breaker_failures: 3,
        breaker_cooldown: std::time::Duration::from_secs(10),
        retry: RetryPolicy {
            max_attempts: 10,
            base_ms: 100,
            max_ms: 100,
        },
        ..config
    }
}

/// Three failures in a row open the agent's circuit: for the cooldown it gets nothing, though
/// work waits. Then it is half-open and gets exactly one assignment, the probe, however much
/// it asks for; the probe's success closes the circuit and work flows again.
#[tokio::test]
async fn failures_in_a_row_open_the_circuit_and_a_successful_probe_closes_it() {
    let mut s = Scenario::with(breaker_config).await;
    let w = s.register("w", &["x"], 4).await;
    s.submit(Scenario::task(
        "tripped",
        &[("a", "x", &[]), ("b", "x", &[]), ("c", "x", &[])],
        "normal",
    ))
    .await;
    let mut log = vec![s.circuit(&w).await];
    let first = s.lease(&w, 4).await;
    assert_eq!(first.len(), 3);
    for g in &first {
        s.advance(100).await;
        s.fail(&w, g, true).await.unwrap();
        log.push(s.circuit(&w).await);
    }
    // The retries are ready after 100 ms, but the circuit is open.
    s.advance(100).await;
    assert!(s.lease(&w, 4).await.is_empty(), "open: no work");
    s.advance(9_899).await;
    assert!(
        s.lease(&w, 4).await.is_empty(),
        "still open a millisecond before the end"
    );
    log.push(s.circuit(&w).await);
    s.advance(1).await;
    log.push(s.circuit(&w).await);
    let probe = s.lease(&w, 4).await;
    assert_eq!(probe.len(), 1, "half-open: exactly one probe");
    assert!(s.lease(&w, 4).await.is_empty(), "one probe at a time");
    s.advance(100).await;
    s.complete(&w, &probe[0], json!("ok")).await.unwrap();
    log.push(s.circuit(&w).await);
    let rest = s.lease(&w, 4).await;
    assert_eq!(rest.len(), 2, "closed: work flows again");
    for g in &rest {
        s.complete(&w, g, json!("ok")).await.unwrap();
    }
    assert_eq!(s.status("tripped").await, "completed");
    let info = s.agent_info(&w).await;
    assert_eq!(
        info.circuit.state,
        baton_core::breaker::CircuitState::Closed
    );
    assert_eq!(info.circuit.consecutive_failures, 0);
    insta::assert_snapshot!(format!(
        "{}\n\n{}",
        log.join("\n"),
        s.timeline("tripped").await
    ));
    s.finish().await;
}

/// A probe that fails (here: its lease is lost, which counts like a failure) opens the
/// circuit again for a whole new cooldown; the next probe's success closes it.
#[tokio::test]
async fn a_failed_probe_reopens_the_circuit_for_another_cooldown() {
    let mut s = Scenario::with(breaker_config).await;
    let w = s.register("w", &["x"], 4).await;
    s.submit(Scenario::task("again", &[("only", "x", &[])], "normal"))
        .await;
    let mut log = Vec::new();
    for _ in 0..3 {
        let g = s.lease_one(&w).await;
        s.fail(&w, &g, true).await.unwrap();
        s.advance(100).await;
    }
    log.push(s.circuit(&w).await);
    // Open since the third failure at +200, for 10 s.
    s.advance(9_899).await;
    assert!(s.lease(&w, 4).await.is_empty(), "still open");
    s.advance(1).await;
    let probe = s.lease_one(&w).await;
    log.push(s.circuit(&w).await);
    // The agent goes silent with its probe: one lease period later it is lost.
    s.advance(LEASE_MS).await;
    log.push(s.circuit(&w).await);
    s.advance(9_999).await;
    let c = s.agent_info(&w).await.circuit;
    assert_eq!(c.state, baton_core::breaker::CircuitState::Open);
    assert!(s.lease(&w, 4).await.is_empty(), "open again");
    s.advance(1).await;
    log.push(s.circuit(&w).await);
    let second = s.lease_one(&w).await;
    assert_ne!(second.assignment.attempt, probe.assignment.attempt);
    s.complete(&w, &second, json!("ok")).await.unwrap();
    log.push(s.circuit(&w).await);
    assert_eq!(s.status("again").await, "completed");
    insta::assert_snapshot!(log.join("\n"));
    s.finish().await;
}

/// A chain of steps, one ready at a time, with two agents polling together so routing has a
/// choice each time. The agent routing tries first (the lower id) fails every attempt; once
/// routing has seen that, nearly every step goes to the reliable one. Exploration (seeded)
/// still sends the flaky one a step now and then.
#[tokio::test]
async fn learned_routing_sends_most_work_to_the_reliable_agent() {
    let mut s = Scenario::with(breaker_config).await;
    let (flaky, steady) = s.register_pair(["flaky", "steady"], &["x"], 1).await;
    const STEPS: usize = 30;
    let keys: Vec<String> = (0..STEPS).map(|i| format!("s{i}")).collect();
    let steps: Vec<(&str, &str, Vec<&str>)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let deps = if i == 0 {
                vec![]
            } else {
                vec![keys[i - 1].as_str()]
            };
            (k.as_str(), "x", deps)
        })
        .collect();
    let steps: Vec<(&str, &str, &[&str])> = steps
        .iter()
        .map(|(k, c, d)| (*k, *c, d.as_slice()))
        .collect();
    s.submit(Scenario::task("chain", &steps, "normal")).await;
    // Who got each new step (F: flaky, S: steady); a retry is shown in lower case.
    let mut routed = String::new();
    while s.status("chain").await == "running" {
        let (f, g) = s.lease_both(&flaky, &steady, 1).await;
        assert!(f.len() + g.len() <= 1, "one step is ready at a time");
        if let Some(grant) = f.first() {
            routed.push(if grant.assignment.attempt == 1 {
                'F'
            } else {
                'f'
            });
            s.advance(200).await;
            s.fail(&flaky, grant, true).await.unwrap();
        }
        if let Some(grant) = g.first() {
            routed.push(if grant.assignment.attempt == 1 {
                'S'
            } else {
                's'
            });
            s.advance(1_000).await;
            s.complete(&steady, grant, json!("done")).await.unwrap();
        }
        s.advance(100).await;
    }
    assert_eq!(s.status("chain").await, "completed");
    let to_flaky = routed.chars().filter(|c| *c == 'F').count();
    let late_to_flaky = routed.chars().skip(5).filter(|c| *c == 'F').count();
    assert!(
        late_to_flaky * 10 <= STEPS,
        "after its first failures the flaky agent got {late_to_flaky} steps: {routed}"
    );
    assert!(to_flaky >= 1, "it was tried first: {routed}");
    let f = s.agent_info(&flaky).await.agent.stats["x"];
    let g = s.agent_info(&steady).await.agent.stats["x"];
    assert_eq!(f.success_rate, 0.0);
    assert_eq!(f.samples, to_flaky as u64);
    assert_eq!(g.success_rate, 1.0);
    assert_eq!(g.samples, STEPS as u64);
    assert_eq!(g.latency_ms, 1_000.0);
    insta::assert_snapshot!(routed);
    s.finish().await;
}

/// The same chain and agents under round-robin routing: the steps alternate between the two
/// agents whatever they did before, so the flaky one keeps failing half of the new steps.
#[tokio::test]
async fn round_robin_routing_ignores_the_record() {
    let mut s = Scenario::with(|config| Config {
        routing: baton_engine::RoutingMode::RoundRobin,
        breaker_failures: 5,
        ..breaker_config(config)
    })
    .await;
    let (flaky, steady) = s.register_pair(["flaky", "steady"], &["x"], 1).await;
    s.submit(Scenario::task(
        "rr",
        &[
            ("a", "x", &[]),
            ("b", "x", &["a"]),
            ("c", "x", &["b"]),
            ("d", "x", &["c"]),
        ],
        "normal",
    ))
    .await;
    let mut routed = String::new();
    while s.status("rr").await == "running" {
        let (f, g) = s.lease_both(&flaky, &steady, 1).await;
        if let Some(grant) = f.first() {
            routed.push(if grant.assignment.attempt == 1 {
                'F'
            } else {
                'f'
            });
            s.fail(&flaky, grant, true).await.unwrap();
        }
        if let Some(grant) = g.first() {
            routed.push(if grant.assignment.attempt == 1 {
                'S'
            } else {
                's'
            });
            s.complete(&steady, grant, json!("done")).await.unwrap();
        }
        s.advance(100).await;
    }
    // Each new step goes to the flaky agent, its retry to the other one (a retry prefers an
    // agent that has not tried), and the cursor, moved on to the steady agent, wraps around
    // to the flaky one for the next step.
    insta::assert_snapshot!(routed);
    s.finish().await;
}

/// What routing learned is written with the agent's row (at most every few seconds, and when
/// the engine stops) and recovered: after a restart the agents show the same record, and the
/// next step goes to the reliable agent, not to the one ties would pick.
#[tokio::test]
async fn learned_stats_survive_a_restart() {
    let mut s = Scenario::with(breaker_config).await;
    let (flaky, steady) = s.register_pair(["flaky", "steady"], &["x"], 1).await;
    s.submit(Scenario::task(
        "before",
        &[("a", "x", &[]), ("b", "x", &[]), ("c", "x", &[])],
        "normal",
    ))
    .await;
    // Each agent takes one step at a time: the flaky one fails its attempts.
    while s.status("before").await == "running" {
        let (f, g) = s.lease_both(&flaky, &steady, 1).await;
        s.advance(300).await;
        for grant in &f {
            s.fail(&flaky, grant, true).await.unwrap();
        }
        for grant in &g {
            s.complete(&steady, grant, json!(1)).await.unwrap();
        }
        s.advance(100).await;
    }
    let before: Vec<_> = s.agents().await.into_iter().map(|i| i.agent).collect();
    assert!(before.iter().all(|a| a.stats["x"].samples > 0));
    // A sweep writes changed stats at most every 5 s: the stats of the last seconds are not
    // stored yet, but stopping the engine writes them.
    let stored = s.store.recover().await.unwrap().agents;
    assert_ne!(stored, before, "not written on every completion");
    let s = s.restart().await;
    let mut after: Vec<_> = s.agents().await.into_iter().map(|i| i.agent).collect();
    after.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
    let mut before = before;
    before.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
    assert_eq!(after, before, "recovered with their stats");
    s.submit(Scenario::task("after", &[("only", "x", &[])], "normal"))
        .await;
    let (f, g) = s.lease_both(&flaky, &steady, 1).await;
    assert!(f.is_empty(), "the flaky agent's record is remembered");
    assert_eq!(g.len(), 1);
    s.complete(&steady, &g[0], json!(2)).await.unwrap();
    // A sweep more than 5 s later writes what changed since.
    s.advance(6_000).await;
    let stored = s.store.recover().await.unwrap().agents;
    let info = s.agent_info(&steady).await.agent;
    assert_eq!(
        stored.iter().find(|a| a.agent_id == steady.id),
        Some(&info),
        "written by the sweep"
    );
    s.finish().await;
}

/// A verifier's record is learned under the verifier capability, the author's under the
/// work's.
#[tokio::test]
async fn a_verification_teaches_routing_under_the_verifier_capability() {
    let mut s = Scenario::new().await;
    let author = s.register("author", &["code"], 1).await;
    let checker = s.register("checker", &["verify"], 1).await;
    s.submit(Scenario::task_from(json!({
        "task_id": "checked", "title": "t", "description": "d",
        "plan": {"subtasks": [{"id": "fix", "capability": "code", "verify": true}]},
    })))
    .await;
    let work = s.lease_one(&author).await;
    s.advance(300).await;
    s.complete(&author, &work, json!({"x": 1})).await.unwrap();
    let v = s.lease_one(&checker).await;
    s.advance(200).await;
    s.complete(&checker, &v, json!({"verified": true, "evidence": ["ok"]}))
        .await
        .unwrap();
    assert_eq!(s.status("checked").await, "completed");
    let learned = |info: baton_engine::AgentInfo| {
        info.agent
            .stats
            .iter()
            .map(|(cap, st)| format!("{cap}: {} in {} ms", st.samples, st.latency_ms))
            .collect::<Vec<_>>()
    };
    assert_eq!(learned(s.agent_info(&author).await), ["code: 1 in 300 ms"]);
    assert_eq!(
        learned(s.agent_info(&checker).await),
        ["verify: 1 in 200 ms"]
    );
    s.finish().await;
}

/// A step a human skips lets its dependents go on (unlike a false condition, whose branch is
/// skipped whole).
#[tokio::test]
async fn a_step_skipped_by_a_human_lets_its_dependents_run() {
    let mut s = Scenario::new().await;
    let w = s.register("w", &["x"], 1).await;
    s.submit(Scenario::task(
        "skipper",
        &[("a", "x", &[]), ("b", "x", &["a"])],
        "normal",
    ))
    .await;
    let a = s.lease_one(&w).await;
    s.fail(&w, &a, false).await.unwrap();
    let e = &s.escalations("skipper").await[0];
    s.engine
        .resolve(
            e.escalation_id.clone(),
            baton_engine::Resolve {
                action: baton_core::ResolveAction::Skip,
                outputs: None,
                note: Some("not needed".into()),
                budget: None,
            },
        )
        .await
        .unwrap();
    let b = s.lease_one(&w).await;
    assert_eq!(b.assignment.subtask_id.as_str(), "x::skipper::2");
    assert_eq!(b.input["dependencies"]["x::skipper::1"], json!(null));
    s.complete(&w, &b, json!({})).await.unwrap();
    assert_eq!(s.status("skipper").await, "completed");
    s.finish().await;
}
