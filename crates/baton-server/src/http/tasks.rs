//! Tasks: submit (`/orchestrate`, `POST /tasks`), execute, read, list, cancel.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::Engine as _;
use baton_api as api;
use baton_core::{Priority, TaskId, TaskStatus};
use baton_engine::{now_ms, Submitted};
use baton_store::TaskQuery;
use std::collections::HashMap;
use std::time::Duration;

use crate::convert;
use crate::extract::{PathId, RawBody};
use crate::{ApiError, AppState};
use baton_engine::intake;

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 500;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/orchestrate", post(orchestrate))
        .route("/tasks", post(submit).get(list))
        .route("/tasks/batch", post(submit_batch))
        .route("/tasks/{task_id}", get(detail))
        .route("/tasks/{task_id}/cancel", put(cancel))
        .route("/tasks/{task_id}/plan", put(replace_plan))
        .route("/tasks/{task_id}/approve", post(approve))
        .route("/tasks/{task_id}/reject", post(reject))
        .route(
            "/tasks/{task_id}/subtasks/{subtask_id}/assign",
            post(assign_manually),
        )
        .route("/plan", post(preview))
        .route("/execute/{task_id}", post(execute))
}

async fn accept(
    state: &AppState,
    body: RawBody,
    execute: bool,
) -> Result<(StatusCode, Json<api::PlannedTask>), ApiError> {
    let new = state.planning.with_catalog(|catalog| {
        intake::accept(&body.0, |req, issues| {
            intake::submission(req, execute, catalog, issues)
        })
    })?;
    let submitted = state
        .planning
        .submit(&state.engine, state.store.as_ref(), new)
        .await?;
    Ok(match submitted {
        Submitted::Created(s) => (StatusCode::CREATED, Json(convert::planned(&s))),
        Submitted::Existing(s) => (StatusCode::OK, Json(convert::planned(&s))),
    })
}

async fn orchestrate(
    State(state): State<AppState>,
    body: RawBody,
) -> Result<(StatusCode, Json<api::PlannedTask>), ApiError> {
    accept(&state, body, false).await
}

async fn submit(
    State(state): State<AppState>,
    body: RawBody,
) -> Result<(StatusCode, Json<api::PlannedTask>), ApiError> {
    accept(&state, body, true).await
}

/// `POST /tasks/batch`: every task is validated first (one 400 lists every bad field, and
/// nothing is created); then each is submitted as `POST /tasks` would, all in one commit when
/// the engine can, and the answer lists each outcome in order.
async fn submit_batch(
    State(state): State<AppState>,
    body: RawBody,
) -> Result<Json<api::SubmitBatchReply>, ApiError> {
    let tasks = state.planning.with_catalog(|catalog| {
        intake::accept(&body.0, |req, issues| intake::batch(req, catalog, issues))
    })?;
    let store = state.store.as_ref();
    let answers = futures::future::join_all(
        tasks
            .into_iter()
            .map(|t| state.planning.submit(&state.engine, store, t)),
    )
    .await;
    let tasks = answers
        .into_iter()
        .map(|answer| match answer {
            Ok(Submitted::Created(s)) => api::SubmitOutcome {
                status: 201,
                task: Some(convert::planned(&s)),
                error: None,
            },
            Ok(Submitted::Existing(s)) => api::SubmitOutcome {
                status: 200,
                task: Some(convert::planned(&s)),
                error: None,
            },
            Err(e) => {
                let e = ApiError::from(e);
                api::SubmitOutcome {
                    status: e.status.as_u16(),
                    task: None,
                    error: Some(e.into_body()),
                }
            }
        })
        .collect();
    Ok(Json(api::SubmitBatchReply { tasks }))
}

async fn execute(
    State(state): State<AppState>,
    PathId(task_id): PathId,
    body: RawBody,
) -> Result<Json<api::TaskStatusReply>, ApiError> {
    let gates = intake::accept(&body.0, intake::execute)?;
    let task_id = TaskId(task_id);
    let status = or_finished(
        &state,
        &task_id,
        state.engine.execute(task_id.clone(), gates).await,
    )
    .await?;
    Ok(Json(api::TaskStatusReply {
        task_id: task_id.to_string(),
        status: status.to_string(),
    }))
}

/// `PUT /tasks/{id}/plan`: replace the plan of a task that is still `planned`.
async fn replace_plan(
    State(state): State<AppState>,
    PathId(task_id): PathId,
    body: RawBody,
) -> Result<Json<api::PlannedTask>, ApiError> {
    let task_id = TaskId(task_id);
    // The new plan may read the task's params; an unknown task has none (and is a 404 below).
    let params = match state.store.task(&task_id).await? {
        Some((task, _)) => task.context.params,
        None => Default::default(),
    };
    let plan = intake::accept(&body.0, |req, issues| {
        intake::planning::replacement_plan(req, &params, issues)
    })?;
    let replaced = state.engine.replace_plan(task_id.clone(), plan).await;
    let snapshot = or_finished(&state, &task_id, replaced).await?;
    Ok(Json(convert::planned(&snapshot)))
}

async fn approve(
    State(state): State<AppState>,
    PathId(task_id): PathId,
    body: RawBody,
) -> Result<Json<api::GateReply>, ApiError> {
    decide(state, task_id, body, true).await
}

async fn reject(
    State(state): State<AppState>,
    PathId(task_id): PathId,
    body: RawBody,
) -> Result<Json<api::GateReply>, ApiError> {
    decide(state, task_id, body, false).await
}

/// Approve or reject gated subtasks; the answer names them and the task's status after.
async fn decide(
    state: AppState,
    task_id: String,
    body: RawBody,
    approve: bool,
) -> Result<Json<api::GateReply>, ApiError> {
    let (ids, note) = intake::accept(&body.0, |r, i| intake::gate_decision(r, !approve, i))?;
    let task_id = TaskId(task_id);
    let decided = state
        .engine
        .decide_gates(task_id.clone(), ids, approve, note)
        .await;
    let decided = or_finished(&state, &task_id, decided).await?;
    Ok(Json(api::GateReply {
        status: committed_status(&state, &task_id).await?,
        task_id: task_id.to_string(),
        subtask_ids: decided.into_iter().map(|s| s.to_string()).collect(),
    }))
}

/// `POST /tasks/{id}/subtasks/{sid}/assign`: manual routing of a ready or blocked subtask.
async fn assign_manually(
    State(state): State<AppState>,
    axum::extract::Path((task_id, subtask_id)): axum::extract::Path<(String, String)>,
    body: RawBody,
) -> Result<Json<api::TaskStatusReply>, ApiError> {
    let agent_id = intake::accept(&body.0, intake::manual_assign)?;
    let task_id = TaskId(task_id);
    let assigned = state
        .engine
        .assign_manually(task_id.clone(), baton_core::SubtaskId(subtask_id), agent_id)
        .await;
    or_finished(&state, &task_id, assigned).await?;
    Ok(Json(api::TaskStatusReply {
        status: committed_status(&state, &task_id).await?,
        task_id: task_id.to_string(),
    }))
}

/// The task's status as committed (after a change the engine answered once durable).
async fn committed_status(state: &AppState, task_id: &TaskId) -> Result<String, ApiError> {
    Ok(match state.store.task(task_id).await? {
        Some((task, _)) => task.status.to_string(),
        None => String::new(),
    })
}

/// `POST /plan`: the plan a submission of this body would get, without creating anything.
async fn preview(
    State(state): State<AppState>,
    body: RawBody,
) -> Result<Json<api::PlannedTask>, ApiError> {
    let new = state.planning.with_catalog(|catalog| {
        intake::accept(&body.0, |req, issues| {
            intake::submission(req, false, catalog, issues)
        })
    })?;
    let new = state.planning.preview(&state.engine, new).await;
    Ok(Json(convert::preview(&new, now_ms())))
}

async fn cancel(
    State(state): State<AppState>,
    PathId(task_id): PathId,
) -> Result<Json<api::TaskStatusReply>, ApiError> {
    let task_id = TaskId(task_id);
    let status = or_finished(&state, &task_id, state.engine.cancel(task_id.clone()).await).await?;
    Ok(Json(api::TaskStatusReply {
        task_id: task_id.to_string(),
        status: status.to_string(),
    }))
}

/// The engine forgets finished tasks once they are durable; a task it does not know may
/// still be in the store, finished, which makes the request a conflict rather than a 404.
async fn or_finished<T>(
    state: &AppState,
    task_id: &TaskId,
    result: Result<T, baton_engine::Error>,
) -> Result<T, ApiError> {
    match result {
        Err(baton_engine::Error::NotFound(m)) => match state.store.task(task_id).await? {
            Some((task, _)) => Err(ApiError::conflict(format!(
                "task {:?} is already {}",
                task_id.as_str(),
                task.status
            ))),
            None => Err(ApiError::not_found(m)),
        },
        other => Ok(other?),
    }
}

/// Longest `wait_ms` a task read may ask for.
const MAX_WAIT_MS: u64 = 60_000;

/// `GET /tasks/{id}`; with `?wait_ms=N` it first waits (up to N ms) for the task to finish.
async fn detail(
    State(state): State<AppState>,
    PathId(task_id): PathId,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<api::TaskDetail>, ApiError> {
    let mut issues = Vec::new();
    let mut wait_ms = 0;
    for (key, value) in &params {
        match (key.as_str(), value.parse::<u64>()) {
            ("wait_ms", Ok(n)) if n <= MAX_WAIT_MS => wait_ms = n,
            ("wait_ms", _) => issues.push(api::FieldIssue {
                field: key.clone(),
                issue: format!("must be an integer from 0 to {MAX_WAIT_MS}"),
            }),
            _ => issues.push(api::FieldIssue {
                field: key.clone(),
                issue: "unknown query parameter".into(),
            }),
        }
    }
    if !issues.is_empty() {
        return Err(ApiError::invalid(issues));
    }
    let task_id = TaskId(task_id);
    if wait_ms > 0 {
        let wait = state.engine.wait_terminal(task_id.clone());
        // Timing out is not an error: the answer is the task as it is now.
        if let Ok(result) = tokio::time::timeout(Duration::from_millis(wait_ms), wait).await {
            result?;
        }
    }
    let Some(d) = state.store.task_detail(&task_id).await? else {
        return Err(ApiError::not_found(format!(
            "task {:?} not found",
            task_id.as_str()
        )));
    };
    Ok(Json(convert::detail(d, now_ms())))
}

async fn list(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<api::TaskList>, ApiError> {
    let mut issues = Vec::new();
    let mut query = TaskQuery {
        limit: DEFAULT_LIMIT,
        ..TaskQuery::default()
    };
    for (key, value) in &params {
        let problem = match key.as_str() {
            "status" => match TaskStatus::parse(value) {
                Some(s) => {
                    query.status = Some(s);
                    None
                }
                None => Some("unknown status"),
            },
            "priority" => match Priority::parse(value) {
                Some(p) => {
                    query.priority = Some(p);
                    None
                }
                None => Some("must be low, normal, high, critical or 1-10"),
            },
            "task_type" => {
                query.task_type = Some(value.clone());
                None
            }
            "limit" => match value.parse::<u32>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => {
                    query.limit = n;
                    None
                }
                _ => Some("must be an integer from 1 to 500"),
            },
            "cursor" => match decode_cursor(value) {
                Some(seq) => {
                    query.before_seq = Some(seq);
                    None
                }
                None => Some("not a cursor returned by this API"),
            },
            _ => Some("unknown query parameter"),
        };
        if let Some(problem) = problem {
            issues.push(api::FieldIssue {
                field: key.clone(),
                issue: problem.into(),
            });
        }
    }
    if !issues.is_empty() {
        issues.sort_by(|a, b| a.field.cmp(&b.field));
        return Err(ApiError::invalid(issues));
    }
    let limit = query.limit;
    query.limit = limit + 1;
    let mut tasks = state.store.list_tasks(&query).await?;
    let next_cursor = if tasks.len() > limit as usize {
        tasks.truncate(limit as usize);
        tasks.last().map(|t| encode_cursor(t.seq))
    } else {
        None
    };
    Ok(Json(api::TaskList {
        tasks: tasks.into_iter().map(convert::summary).collect(),
        next_cursor,
    }))
}

fn encode_cursor(seq: i64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("seq:{seq}"))
}

fn decode_cursor(text: &str) -> Option<i64> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()?;
    std::str::from_utf8(&bytes)
        .ok()?
        .strip_prefix("seq:")?
        .parse()
        .ok()
}
