//! Whole workflows over a real socket with SDK agents: the blog-post template end to end (chain
//! order, dependency outputs, aggregated result, metrics and due dates), a client-planned
//! fan-out/fan-in DAG through `/orchestrate` + `/execute`, a subtask blocked until an agent
//! with its capability registers, and retries (retryable, permanent, exhausted).

mod common;

use std::sync::Arc;
use std::time::Duration;

use baton_agent::api::SubmitTask;
use baton_agent::{Job, JobError};
use common::*;
use serde_json::{json, Value};

const BLOG_STEPS: [&str; 5] = [
    "generate_content",
    "enhance_content",
    "review_content",
    "export_document",
    "publish_content",
];

/// A blog-post step: appends its capability to the chain it finds in its one dependency.
async fn blog_step(job: Job) -> Result<Value, JobError> {
    let deps = job.input["dependencies"]
        .as_object()
        .ok_or_else(|| JobError::permanent("input.dependencies is missing"))?;
    let mut chain: Vec<Value> = match deps.values().next() {
        Some(prev) => prev["chain"].as_array().cloned().unwrap_or_default(),
        None => Vec::new(),
    };
    chain.push(json!(job.capability));
    Ok(json!({ "by": job.capability, "chain": chain, "brief": job.input["brief"] }))
}

fn blog_post(task_id: &str, due_date: Option<&str>) -> SubmitTask {
    SubmitTask {
        task_id: Some(task_id.into()),
        title: "AI ethics".into(),
        description: "Generate a blog post about AI ethics and publish it".into(),
        task_type: Some("create_blog_post".into()),
        metadata: due_date.map(|d| json!({ "due_date": d })),
        ..SubmitTask::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blog_post_workflow_runs_end_to_end_in_chain_order() {
    let server = TestServer::start().await;
    let journal = Journal::default();
    let mut workers = Vec::new();
    for cap in BLOG_STEPS {
        let worker = server
            .spawn_worker(
                worker_config(&format!("{cap}-agent"), &[cap]),
                recording(&journal, blog_step),
            )
            .await;
        workers.push(worker);
    }

    let submitted = server
        .client
        .submit(&blog_post("blog-1", None))
        .await
        .unwrap();
    assert!(submitted.created);
    assert_eq!(submitted.task.task_id, "blog-1");
    let ids: Vec<String> = BLOG_STEPS
        .iter()
        .map(|cap| format!("{cap}::blog-1::1"))
        .collect();
    let planned: Vec<&str> = submitted
        .task
        .subtasks
        .iter()
        .map(|s| s.subtask_id.as_str())
        .collect();
    assert_eq!(planned, ids);

    let detail = server
        .wait_for_status("blog-1", "completed", PATIENCE)
        .await;

    // Five subtasks, each completed once by the agent of its capability.
    assert_eq!(detail.subtasks.len(), 5);
    for (i, cap) in BLOG_STEPS.iter().enumerate() {
        let s = &detail.subtasks[i];
        assert_eq!(s.subtask_id, ids[i]);
        assert_eq!(s.agent, *cap);
        assert_eq!(s.state, "completed");
        assert_eq!(s.attempts, 1);
        assert_eq!(
            s.assigned_agent.as_deref(),
            Some(workers[i].agent_id.as_str())
        );
        let expected_deps: Vec<String> = if i == 0 {
            vec![]
        } else {
            vec![ids[i - 1].clone()]
        };
        assert_eq!(s.depends_on, expected_deps);
        let chain: Vec<Value> = BLOG_STEPS[..=i].iter().map(|c| json!(c)).collect();
        assert_eq!(s.outputs.as_ref().unwrap()["chain"], Value::Array(chain));
    }

    // Chain order in the timeline: each step becomes ready only after the previous completed.
    let running = history_index(&detail, None, "running");
    assert!(running < history_index(&detail, Some(&ids[0]), "ready"));
    for i in 1..5 {
        let prev_done = history_index(&detail, Some(&ids[i - 1]), "completed");
        let ready = history_index(&detail, Some(&ids[i]), "ready");
        assert!(
            prev_done < ready,
            "{} became ready (#{ready}) before {} completed (#{prev_done})",
            ids[i],
            ids[i - 1]
        );
    }
    for (i, id) in ids.iter().enumerate() {
        let assigned = &detail.status_history[history_index(&detail, Some(id), "assigned")];
        assert_eq!(
            assigned.agent.as_deref(),
            Some(workers[i].agent_id.as_str())
        );
        assert_eq!(
            states_of(&detail, id),
            ["ready", "assigned", "running", "completed"],
            "{id}"
        );
    }
    assert_eq!(task_states(&detail), ["planned", "running", "completed"]);

    // Every handler saw the previous step's outputs under `dependencies`, and its brief.
    let briefs = [
        "Draft the blog post: AI ethics",
        "Improve grammar, style and readability: AI ethics",
        "Review for factual accuracy and tone compliance: AI ethics",
        "Format the final blog post as a document: AI ethics",
        "Publish the post to the blog platform: AI ethics",
    ];
    for (i, id) in ids.iter().enumerate() {
        let seen = journal.one(id);
        assert_eq!(seen.task_id, "blog-1");
        assert_eq!(seen.attempt, 1);
        assert_eq!(seen.input["brief"], briefs[i]);
        let expected = if i == 0 {
            json!({})
        } else {
            json!({ ids[i - 1].clone(): detail.subtasks[i - 1].outputs.clone().unwrap() })
        };
        assert_eq!(seen.input["dependencies"], expected, "{id}");
    }

    // The aggregated result and the metrics.
    let result = detail
        .result
        .as_ref()
        .expect("a finished task has a result");
    assert_eq!(result["status"], "completed");
    let outputs = result["outputs"].as_object().unwrap();
    assert_eq!(outputs.len(), 5);
    for s in &detail.subtasks {
        assert_eq!(Some(&outputs[&s.subtask_id]), s.outputs.as_ref());
    }
    assert!(result.get("errors").is_none(), "{result}");
    assert!(detail.metrics.elapsed_seconds > 0.0, "{:?}", detail.metrics);
    assert_eq!(detail.metrics.on_time, None);
    assert_eq!(result["metrics"]["on_time"], Value::Null);
    assert!(detail.started_at.is_some() && detail.finished_at.is_some());

    // Due dates: far in the future is on time, long past is late.
    server
        .client
        .submit(&blog_post("blog-future", Some("2999-12-31")))
        .await
        .unwrap();
    server
        .client
        .submit(&blog_post("blog-past", Some("2000-01-01T00:00:00Z")))
        .await
        .unwrap();
    let future = server
        .wait_for_status("blog-future", "completed", PATIENCE)
        .await;
    let past = server
        .wait_for_status("blog-past", "completed", PATIENCE)
        .await;
    assert_eq!(future.metrics.on_time, Some(true));
    assert_eq!(future.result.as_ref().unwrap()["metrics"]["on_time"], true);
    assert_eq!(past.metrics.on_time, Some(false));
    assert_eq!(past.result.as_ref().unwrap()["metrics"]["on_time"], false);

    for worker in workers {
        let report = worker.stop().await;
        assert_eq!((report.completed, report.failed, report.dropped), (3, 0, 0));
    }
    server.shutdown().await;
}

/// `split → 4 × work → join → publish`, planned by the client.
fn dag_plan() -> Value {
    let mut steps = vec![json!({"id": "split", "capability": "split",
                               "input": {"text": "alpha beta gamma delta"}})];
    for i in 1..=4 {
        steps.push(json!({"id": format!("w{i}"), "capability": "work",
                          "depends_on": ["split"], "input": {"part": i}}));
    }
    steps.push(json!({"id": "join", "capability": "join",
                      "depends_on": ["w1", "w2", "w3", "w4"]}));
    steps.push(json!({"id": "publish", "capability": "publish", "depends_on": ["join"]}));
    json!({ "subtasks": steps })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_planned_fan_out_fan_in_dag() {
    let server = TestServer::start().await;
    let journal = Journal::default();

    // The plan as /orchestrate answers it.
    let planned = server
        .post(
            "/orchestrate",
            json!({"task_id": "t", "title": "Fan out", "description": "words", "plan": dag_plan()}),
        )
        .await;
    assert_eq!(planned.status, 201, "{:?}", planned);
    assert_eq!(planned.body["task_id"], "t");
    assert_eq!(planned.body["status"], "planned");
    let expected = json!([
        {"subtask_id": "split::t::1", "agent": "split", "state": "pending", "depends_on": [], "id": "split"},
        {"subtask_id": "work::t::1", "agent": "work", "state": "pending", "depends_on": ["split::t::1"], "id": "w1"},
        {"subtask_id": "work::t::2", "agent": "work", "state": "pending", "depends_on": ["split::t::1"], "id": "w2"},
        {"subtask_id": "work::t::3", "agent": "work", "state": "pending", "depends_on": ["split::t::1"], "id": "w3"},
        {"subtask_id": "work::t::4", "agent": "work", "state": "pending", "depends_on": ["split::t::1"], "id": "w4"},
        {"subtask_id": "join::t::1", "agent": "join", "state": "pending",
         "depends_on": ["work::t::1", "work::t::2", "work::t::3", "work::t::4"], "id": "join"},
        {"subtask_id": "publish::t::1", "agent": "publish", "state": "pending", "depends_on": ["join::t::1"], "id": "publish"},
    ]);
    assert_eq!(planned.body["subtasks"], expected);
    // Planned, not started: nothing is ready yet.
    let detail = server.task("t").await;
    assert_eq!(detail.status, "planned");
    assert!(detail.subtasks.iter().all(|s| s.state == "pending"));

    // The four `work` jobs wait for each other: they only finish if all four run at once.
    let barrier = Arc::new(tokio::sync::Barrier::new(4));
    let split = recording(&journal, |job: Job| async move {
        let words: Vec<Value> = job.input["text"]
            .as_str()
            .unwrap_or_default()
            .split(' ')
            .map(|w| json!(w))
            .collect();
        Ok(json!({ "parts": words }))
    });
    let work = recording(&journal, move |job: Job| {
        let barrier = barrier.clone();
        async move {
            let part = job.input["part"].as_u64().unwrap_or(0) as usize;
            let words = &job.input["dependencies"]["split::t::1"]["parts"];
            let word = words[part - 1].as_str().unwrap_or("?").to_uppercase();
            tokio::time::timeout(Duration::from_secs(10), barrier.wait())
                .await
                .map_err(|_| JobError::permanent("the four work steps did not run concurrently"))?;
            Ok(json!({ "word": word }))
        }
    });
    let join = recording(&journal, |job: Job| async move {
        let deps = job.input["dependencies"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        // serde_json's map is sorted by key: work::t::1 .. work::t::4.
        let words: Vec<Value> = deps.values().map(|d| d["word"].clone()).collect();
        Ok(json!({ "words": words }))
    });
    let publish = recording(&journal, |job: Job| async move {
        let words = job.input["dependencies"]["join::t::1"]["words"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let text: Vec<&str> = words.iter().filter_map(Value::as_str).collect();
        Ok(json!({ "published": text.join(" ") }))
    });
    let mut workers = vec![
        server
            .spawn_worker(worker_config("splitter", &["split"]), split)
            .await,
        server
            .spawn_worker(
                baton_agent::WorkerConfig {
                    max_concurrency: 4,
                    ..worker_config("worker", &["work"])
                },
                work,
            )
            .await,
        server
            .spawn_worker(worker_config("joiner", &["join"]), join)
            .await,
        server
            .spawn_worker(worker_config("publisher", &["publish"]), publish)
            .await,
    ];

    let executed = server.post("/execute/t", json!({})).await;
    assert_eq!(executed.status, 200, "{executed:?}");
    assert_eq!(executed.body, json!({"task_id": "t", "status": "running"}));

    let detail = server.wait_for_status("t", "completed", PATIENCE).await;
    let work_ids: Vec<String> = (1..=4).map(|i| format!("work::t::{i}")).collect();

    // The join received all four middle outputs; the final step the join's output.
    let joined = journal.one("join::t::1");
    assert_eq!(
        joined.input["dependencies"],
        json!({
            "work::t::1": {"word": "ALPHA"},
            "work::t::2": {"word": "BETA"},
            "work::t::3": {"word": "GAMMA"},
            "work::t::4": {"word": "DELTA"},
        })
    );
    let published = journal.one("publish::t::1");
    assert_eq!(
        published.input["dependencies"],
        json!({"join::t::1": {"words": ["ALPHA", "BETA", "GAMMA", "DELTA"]}})
    );
    assert_eq!(
        subtask(&detail, "publish::t::1").outputs,
        Some(json!({"published": "ALPHA BETA GAMMA DELTA"}))
    );
    for (i, id) in work_ids.iter().enumerate() {
        let seen = journal.one(id);
        assert_eq!(seen.input["part"], json!(i + 1));
        assert_eq!(
            seen.input["dependencies"],
            json!({"split::t::1": {"parts": ["alpha", "beta", "gamma", "delta"]}})
        );
    }

    // The four middle steps all became ready at the moment the split completed, before any of
    // them was assigned; the join only after the last of them completed.
    let split_done = history_index(&detail, Some("split::t::1"), "completed");
    let split_done_at = detail.status_history[split_done].at.clone();
    let first_assigned = work_ids
        .iter()
        .map(|id| history_index(&detail, Some(id), "assigned"))
        .min()
        .unwrap();
    for id in &work_ids {
        let ready = history_index(&detail, Some(id), "ready");
        assert!(
            split_done < ready && ready < first_assigned,
            "{id}: ready at #{ready}"
        );
        assert_eq!(detail.status_history[ready].at, split_done_at, "{id}");
    }
    let last_work_done = work_ids
        .iter()
        .map(|id| history_index(&detail, Some(id), "completed"))
        .max()
        .unwrap();
    assert!(last_work_done < history_index(&detail, Some("join::t::1"), "ready"));
    assert!(
        history_index(&detail, Some("join::t::1"), "completed")
            < history_index(&detail, Some("publish::t::1"), "ready")
    );
    assert_eq!(
        detail.result.as_ref().unwrap()["outputs"]
            .as_object()
            .unwrap()
            .len(),
        7
    );

    // Executing a finished task is a conflict.
    server
        .post("/execute/t", json!({}))
        .await
        .assert_error(409, "conflict");

    for worker in workers.drain(..) {
        worker.stop().await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subtask_without_capable_agent_is_blocked_until_one_registers() {
    let server = TestServer::start().await;
    let plan = json!({"subtasks": [{"id": "only", "capability": "rare"}]});
    let submitted = server
        .post(
            "/tasks",
            json!({"task_id": "b-1", "title": "Rare", "description": "needs a rare skill", "plan": plan}),
        )
        .await;
    assert_eq!(submitted.status, 201, "{submitted:?}");

    let detail = server
        .wait_for_subtask("b-1", "rare::b-1::1", "blocked")
        .await;
    assert_eq!(detail.status, "running");
    let blocked = &detail.status_history[history_index(&detail, Some("rare::b-1::1"), "blocked")];
    assert!(
        blocked.note.as_deref().is_some_and(|n| n.contains("rare")),
        "{blocked:?}"
    );
    assert_eq!(subtask(&detail, "rare::b-1::1").attempts, 0);

    let journal = Journal::default();
    let worker = server
        .spawn_worker(
            worker_config("rare-agent", &["rare"]),
            recording(&journal, |_job: Job| async { Ok(json!({"done": true})) }),
        )
        .await;
    let detail = server.wait_for_status("b-1", "completed", PATIENCE).await;
    let s = subtask(&detail, "rare::b-1::1");
    assert_eq!(s.assigned_agent.as_deref(), Some(worker.agent_id.as_str()));
    assert_eq!(s.attempts, 1);
    assert_eq!(s.outputs, Some(json!({"done": true})));
    assert_eq!(
        states_of(&detail, "rare::b-1::1"),
        [
            "ready",
            "blocked",
            "ready",
            "assigned",
            "running",
            "completed"
        ]
    );
    assert_eq!(journal.all().len(), 1);
    worker.stop().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_follow_the_policy() {
    let server = TestServer::start().await;
    let journal = Journal::default();
    let handler = recording(&journal, |job: Job| async move {
        match job.capability.as_str() {
            "flaky" if job.attempt == 1 => Err(JobError::retryable("transient glitch")),
            "flaky" => Ok(json!({"attempt": job.attempt})),
            "broken" => Err(JobError::permanent("bad input")),
            "hopeless" => Err(JobError::retryable(format!(
                "still down (attempt {})",
                job.attempt
            ))),
            _ => Ok(json!({"ok": true})),
        }
    });
    let worker = server
        .spawn_worker(
            worker_config("retrier", &["flaky", "broken", "hopeless", "after"]),
            handler,
        )
        .await;

    // `broken` runs under the `fail` policy; the others under the default, `escalate`.
    let submit = |id: &str, cap: &str| {
        let policy = if cap == "broken" { "fail" } else { "escalate" };
        json!({"task_id": id, "title": cap, "description": "retry policy", "on_exhausted": policy,
               "plan": {"subtasks": [{"id": "first", "capability": cap},
                                     {"id": "second", "capability": "after", "depends_on": ["first"]}]}})
    };
    for (id, cap) in [
        ("r-flaky", "flaky"),
        ("r-broken", "broken"),
        ("r-hopeless", "hopeless"),
    ] {
        let reply = server.post("/tasks", submit(id, cap)).await;
        assert_eq!(reply.status, 201, "{reply:?}");
    }

    // Retryable once, then success: completed on the second attempt, no errors left.
    let flaky = server
        .wait_for_status("r-flaky", "completed", PATIENCE)
        .await;
    let s = subtask(&flaky, "flaky::r-flaky::1");
    assert_eq!((s.state.as_str(), s.attempts), ("completed", 2));
    assert_eq!(s.outputs, Some(json!({"attempt": 2})));
    assert_eq!(s.error, None);
    assert_eq!(
        states_of(&flaky, "flaky::r-flaky::1"),
        [
            "ready",
            "assigned",
            "running",
            "retry_wait",
            "ready",
            "assigned",
            "running",
            "completed"
        ]
    );
    let retry =
        &flaky.status_history[history_index(&flaky, Some("flaky::r-flaky::1"), "retry_wait")];
    assert!(
        retry
            .note
            .as_deref()
            .is_some_and(|n| n.contains("transient glitch")),
        "{retry:?}"
    );
    assert!(flaky.result.as_ref().unwrap().get("errors").is_none());
    let attempts: Vec<u32> = journal
        .of("flaky::r-flaky::1")
        .iter()
        .map(|s| s.attempt)
        .collect();
    assert_eq!(attempts, [1, 2]);

    // Permanent, under `fail`: failed at once, the rest of the task cancelled, the error in the
    // result.
    let broken = server.wait_for_status("r-broken", "failed", PATIENCE).await;
    let s = subtask(&broken, "broken::r-broken::1");
    assert_eq!((s.state.as_str(), s.attempts), ("failed", 1));
    assert!(
        s.error.as_deref().is_some_and(|e| e.contains("bad input")),
        "{s:?}"
    );
    assert_eq!(subtask(&broken, "after::r-broken::1").state, "cancelled");
    let result = broken.result.as_ref().unwrap();
    assert_eq!(result["status"], "failed");
    assert!(
        result["errors"]["broken::r-broken::1"]
            .as_str()
            .is_some_and(|e| e.contains("bad input")),
        "{result}"
    );
    assert_eq!(journal.of("broken::r-broken::1").len(), 1);
    assert!(journal.of("after::r-broken::1").is_empty());

    // Retryable every time: three attempts, then escalated to a human (never silently
    // failed), with every attempt's error as evidence; the dependent waits.
    let hopeless = server
        .wait_for_status("r-hopeless", "escalated", PATIENCE)
        .await;
    let s = subtask(&hopeless, "hopeless::r-hopeless::1");
    assert_eq!((s.state.as_str(), s.attempts), ("escalated", 3));
    assert!(
        s.error.as_deref().is_some_and(|e| e.contains("attempt 3")),
        "{s:?}"
    );
    let escalation = &hopeless.escalations[0];
    assert_eq!(escalation.kind, "attempts");
    assert_eq!(escalation.evidence["attempts"].as_array().unwrap().len(), 3);
    let attempts: Vec<u32> = journal
        .of("hopeless::r-hopeless::1")
        .iter()
        .map(|s| s.attempt)
        .collect();
    assert_eq!(attempts, [1, 2, 3]);
    assert_eq!(subtask(&hopeless, "after::r-hopeless::1").state, "pending");

    let report = worker.stop().await;
    // flaky: 1 failure + 2 completions (its own and `after`); broken: 1; hopeless: 3.
    assert_eq!((report.completed, report.failed, report.dropped), (2, 5, 0));
    server.shutdown().await;
}
