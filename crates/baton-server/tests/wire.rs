//! The wire types of `baton-api` and what the server accepts cannot drift apart.
//!
//! Every request struct is built below with an exhaustive struct literal (no `..`), so adding
//! a field to one breaks this file until the field is filled in here; the filled-in body is
//! then sent over a real socket and no field of it may be refused as unknown. The other way
//! round, a body with one key more than the struct is refused naming that key, so the server
//! cannot accept a field the wire type lacks.

mod common;

use baton_agent::api::{
    Budget, ClientPlan, ClientStep, CompleteRequest, ExecuteRequest, ExecuteWorkflow, FailRequest,
    GateDecision, HeartbeatRequest, LeaseRequest, ManualAssign, ParamDef, Phase, PriorityInput,
    ProgressRequest, RegisterAgent, ResolveRequest, ResultItem, ResultsRequest, SubmitBatch,
    SubmitTask, Usage, WorkflowDef,
};
use common::{Body, Reply, TestServer};
use reqwest::Method;
use serde::Serialize;
use serde_json::{json, Value};

fn submit_task(id: &str) -> SubmitTask {
    SubmitTask {
        task_id: Some(id.into()),
        title: "every field".into(),
        description: "a submission with every field of the wire type".into(),
        priority: Some(PriorityInput::Name("high".into())),
        task_type: Some("custom".into()),
        metadata: Some(json!({"requester": "wire-test", "due_date": "2999-01-01"})),
        payload: Some(json!({"any": ["thing"]})),
        plan: Some(ClientPlan {
            subtasks: vec![
                ClientStep {
                    id: "first".into(),
                    capability: "cap".into(),
                    depends_on: Vec::new(),
                    input: Some(json!({"k": "${params.topic}"})),
                    when: None,
                    verify: None,
                    approval: None,
                    timeout_s: None,
                    max_attempts: None,
                    on_exhausted: None,
                },
                every_field_step(),
            ],
        }),
        params: Some(json!({"topic": "wires"})),
        budget: Some(Budget {
            max_tokens: Some(1_000_000),
            max_cost_usd: Some(100.0),
            max_duration_s: Some(3_600),
        }),
        on_exhausted: Some("escalate".into()),
    }
}

/// A step with every field of the wire type.
fn every_field_step() -> ClientStep {
    ClientStep {
        id: "second".into(),
        capability: "cap".into(),
        depends_on: vec!["first".into()],
        input: Some(json!({"from_first": "${steps.first.outputs.x}"})),
        when: Some("metadata.requester == 'wire-test'".into()),
        verify: Some(json!({"capability": "verify"})),
        approval: Some(json!(true)),
        timeout_s: Some(60),
        max_attempts: Some(2),
        on_exhausted: Some("fail".into()),
    }
}

/// The body of `value` as JSON, checking that every field of the struct is in it (a field
/// left out by `skip_serializing_if` would not be exercised).
fn full_body(value: &impl Serialize, fields: &[&str]) -> Value {
    let body = serde_json::to_value(value).unwrap();
    let mut keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    let mut expected = fields.to_vec();
    expected.sort();
    assert_eq!(keys, expected, "fill every field of the wire type");
    body
}

/// No field of the body was refused as unknown (other rules may still refuse values).
#[track_caller]
fn no_unknown_field(reply: &Reply, what: &str) {
    assert!(reply.status < 500, "{what}: {reply:?}");
    let unknown: Vec<String> = reply.body["fields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["issue"].as_str().unwrap_or("").contains("unknown"))
        .map(|f| f["field"].to_string())
        .collect();
    assert!(unknown.is_empty(), "{what}: the server refuses {unknown:?}");
}

/// Adding a key the wire type lacks gets that key refused.
async fn extra_key_is_refused(server: &TestServer, path: &str, body: &Value, token: Option<&str>) {
    let mut extra = body.clone();
    extra
        .as_object_mut()
        .unwrap()
        .insert("not_a_field".into(), json!(1));
    let reply = server
        .raw(Method::POST, path, Body::Json(extra), token)
        .await;
    assert_eq!(reply.status, 400, "{path}: {reply:?}");
    assert!(reply.fields().contains("not_a_field"), "{path}: {reply:?}");
}

async fn post(server: &TestServer, path: &str, body: &Value, token: Option<&str>) -> Reply {
    server
        .raw(Method::POST, path, Body::Json(body.clone()), token)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_of_every_request_type_is_accepted_and_nothing_more() {
    let server = TestServer::start().await;

    let register = RegisterAgent {
        name: "wire".into(),
        kind: Some("test".into()),
        capabilities: vec!["cap".into()],
        domains: vec!["web".into()],
        max_concurrency: Some(4),
    };
    let body = full_body(
        &register,
        &["name", "type", "capabilities", "domains", "max_concurrency"],
    );
    let reply = post(&server, "/agents", &body, None).await;
    assert_eq!(reply.status, 201, "{reply:?}");
    extra_key_is_refused(&server, "/agents", &body, None).await;
    let agent_id = reply.body["agent_id"].as_str().unwrap().to_owned();
    let token = reply.body["token"].as_str().unwrap().to_owned();
    let token = Some(token.as_str());

    let submit = submit_task("wire-1");
    let fields = [
        "task_id",
        "title",
        "description",
        "priority",
        "task_type",
        "metadata",
        "payload",
        "plan",
        "params",
        "budget",
        "on_exhausted",
    ];
    let body = full_body(&submit, &fields);
    let reply = post(&server, "/orchestrate", &body, None).await;
    assert_eq!(reply.status, 201, "{reply:?}");
    extra_key_is_refused(&server, "/orchestrate", &body, None).await;
    extra_key_is_refused(&server, "/tasks", &body, None).await;
    // Nested types: a plan and a step with one key too many.
    let mut nested = body.clone();
    nested["plan"]["extra_plan_key"] = json!(1);
    nested["plan"]["subtasks"][1]["extra_step_key"] = json!(1);
    let reply = post(&server, "/tasks", &nested, None).await;
    assert_eq!(
        reply.fields(),
        ["plan.extra_plan_key", "plan.subtasks[1].extra_step_key"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    let step = serde_json::to_value(&submit.plan.as_ref().unwrap().subtasks[1]).unwrap();
    assert_eq!(step.as_object().unwrap().len(), 10, "every field of a step");

    let workflow = WorkflowDef {
        name: "wire-flow".into(),
        description: Some("every field".into()),
        params: [(
            "topic".to_owned(),
            ParamDef {
                kind: Some("string".into()),
                default: Some(json!("wires")),
                required: Some(false),
            },
        )]
        .into(),
        steps: vec![
            ClientStep {
                input: Some(json!({"k": "${params.topic}"})),
                ..every_field_step()
            },
            ClientStep {
                id: "first".into(),
                depends_on: Vec::new(),
                ..ClientStep::default()
            },
        ],
    };
    let mut workflow = workflow;
    workflow.steps[1].capability = "cap".into();
    let body = full_body(&workflow, &["name", "description", "params", "steps"]);
    let param = &body["params"]["topic"];
    assert_eq!(
        param.as_object().unwrap().len(),
        3,
        "every field of a param"
    );
    let reply = post(&server, "/workflows", &body, None).await;
    assert_eq!(reply.status, 201, "{reply:?}");
    extra_key_is_refused(&server, "/workflows", &body, None).await;

    let run = ExecuteWorkflow {
        task_id: Some("wire-run".into()),
        title: Some("run".into()),
        description: Some("a run with every field".into()),
        params: Some(json!({"topic": "x"})),
        metadata: Some(json!({"requester": "wire-test"})),
        priority: Some(PriorityInput::Number(7)),
        version: Some(1),
    };
    let fields = [
        "task_id",
        "title",
        "description",
        "params",
        "metadata",
        "priority",
        "version",
    ];
    let body = full_body(&run, &fields);
    let path = "/workflows/wire-flow/execute";
    let reply = post(&server, path, &body, None).await;
    assert_eq!(reply.status, 201, "{reply:?}");
    extra_key_is_refused(&server, path, &body, None).await;
    let cancel = server
        .raw(Method::PUT, "/tasks/wire-run/cancel", Body::None, None)
        .await;
    assert_eq!(cancel.status, 200, "{cancel:?}");

    let batch = SubmitBatch {
        tasks: vec![submit_task("wire-2")],
        execute: Some(false),
    };
    let body = full_body(&batch, &["tasks", "execute"]);
    let reply = post(&server, "/tasks/batch", &body, None).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    extra_key_is_refused(&server, "/tasks/batch", &body, None).await;

    let execute = ExecuteRequest {
        execution_mode: Some("auto".into()),
        checkpoints: Some(Vec::new()),
    };
    let body = full_body(&execute, &["execution_mode", "checkpoints"]);
    no_unknown_field(
        &post(&server, "/execute/wire-1", &body, None).await,
        "execute",
    );
    extra_key_is_refused(&server, "/execute/wire-1", &body, None).await;
    let reply = post(
        &server,
        "/execute/wire-1",
        &json!({"execution_mode": "auto"}),
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");

    let gate = GateDecision {
        subtask_ids: Some(vec!["cap::wire-1::2".into()]),
        note: Some("why".into()),
    };
    let body = full_body(&gate, &["subtask_ids", "note"]);
    for path in ["/tasks/wire-1/approve", "/tasks/wire-1/reject"] {
        no_unknown_field(&post(&server, path, &body, None).await, path);
        extra_key_is_refused(&server, path, &body, None).await;
    }
    let assign = ManualAssign {
        agent_id: agent_id.clone(),
    };
    let body = full_body(&assign, &["agent_id"]);
    let path = "/tasks/wire-1/subtasks/cap::wire-1::2/assign";
    no_unknown_field(&post(&server, path, &body, None).await, path);
    extra_key_is_refused(&server, path, &body, None).await;
    let resolve = ResolveRequest {
        action: "provide_output".into(),
        outputs: Some(json!({"x": 1})),
        budget: Some(Budget::default()),
        note: Some("by hand".into()),
    };
    let body = full_body(&resolve, &["action", "outputs", "budget", "note"]);
    let path = "/escalations/esc-none/resolve";
    no_unknown_field(&post(&server, path, &body, None).await, path);
    extra_key_is_refused(&server, path, &body, None).await;

    let lease = LeaseRequest {
        max: Some(1),
        wait_ms: Some(2_000),
        held: Some(Vec::new()),
    };
    let path = format!("/agents/{agent_id}/lease");
    let body = full_body(&lease, &["max", "wait_ms", "held"]);
    let reply = post(&server, &path, &body, token).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let assignment = reply.body["assignments"][0]["assignment_id"]
        .as_str()
        .expect("the first step is leased")
        .to_owned();
    extra_key_is_refused(&server, &path, &body, token).await;

    let heartbeat = HeartbeatRequest {
        held: Some(vec![assignment.clone()]),
    };
    let path = format!("/agents/{agent_id}/heartbeat");
    let body = full_body(&heartbeat, &["held"]);
    let reply = post(&server, &path, &body, token).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    extra_key_is_refused(&server, &path, &body, token).await;

    let progress = ProgressRequest {
        phase: Phase::Executing,
        message: Some("working".into()),
    };
    let path = format!("/assignments/{assignment}/progress");
    let body = full_body(&progress, &["phase", "message"]);
    let reply = post(&server, &path, &body, token).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    extra_key_is_refused(&server, &path, &body, token).await;

    let fail = FailRequest {
        error: "not really".into(),
        retryable: true,
    };
    let body = full_body(&fail, &["error", "retryable"]);
    extra_key_is_refused(
        &server,
        &format!("/assignments/{assignment}/fail"),
        &body,
        token,
    )
    .await;

    let results = ResultsRequest {
        results: vec![ResultItem {
            assignment_id: assignment.clone(),
            outputs: Some(json!({"x": 1})),
            error: Some("both".into()),
            retryable: Some(false),
            usage: Some(Usage {
                tokens_in: Some(1),
                tokens_out: Some(2),
                cost_usd: Some(0.5),
            }),
        }],
        held: Some(Vec::new()),
    };
    let path = format!("/agents/{agent_id}/results");
    let body = full_body(&results, &["results", "held"]);
    // Outputs and an error at once is refused by a rule, not as unknown fields.
    no_unknown_field(&post(&server, &path, &body, token).await, "results");
    let item = serde_json::to_value(&results.results[0]).unwrap();
    assert_eq!(
        item.as_object().unwrap().len(),
        5,
        "every field of a result"
    );
    extra_key_is_refused(&server, &path, &body, token).await;

    let complete = CompleteRequest {
        outputs: json!({"done": true}),
        usage: Some(Usage {
            tokens_in: Some(10),
            tokens_out: Some(20),
            cost_usd: Some(0.25),
        }),
    };
    let path = format!("/assignments/{assignment}/complete");
    let body = full_body(&complete, &["outputs", "usage"]);
    extra_key_is_refused(&server, &path, &body, token).await;
    let reply = post(&server, &path, &body, token).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    server.shutdown().await;
}
