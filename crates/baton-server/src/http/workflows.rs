//! Workflows: publish (JSON or YAML), list, read a version, and run one.
//!
//! A workflow's id is its name: versions of one name share it, and `?version=N` picks one.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use baton_api as api;
use baton_engine::intake::{self, planning, Published};
use baton_engine::{now_ms, Submitted};
use baton_store::StoredWorkflow;

use crate::convert;
use crate::extract::{PathId, RawBody};
use crate::{ApiError, AppState};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/workflows", post(publish).get(list))
        .route("/workflows/{id}", get(show))
        .route("/workflows/{id}/execute", post(execute))
}

/// Whether the body is YAML (`application/yaml`, `application/x-yaml`, `text/yaml`).
fn is_yaml(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|t| {
            matches!(
                t.as_str(),
                "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml"
            )
        })
}

/// `POST /workflows`: validate and store as the next version of its name.
async fn publish(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: RawBody,
) -> Result<(StatusCode, Json<api::WorkflowCreated>), ApiError> {
    let bytes = if is_yaml(&headers) {
        planning::yaml_to_json(&body.0)?
    } else {
        body.0.to_vec()
    };
    let (workflow, definition) = planning::read_definition(&bytes)?;
    let value = serde_json::to_value(&definition)
        .map_err(|e| ApiError::internal(format!("encoding a workflow: {e}")))?;
    let stored = state
        .store
        .publish_workflow(&workflow.name, &value, now_ms())
        .await?;
    tracing::info!(workflow = %stored.name, version = stored.version, "workflow published");
    state.planning.published(Published {
        workflow: std::sync::Arc::new(workflow),
        version: stored.version,
        created_at: stored.created_at,
        definition: std::sync::Arc::new(definition),
    });
    Ok((
        StatusCode::CREATED,
        Json(api::WorkflowCreated {
            workflow_id: stored.name.clone(),
            name: stored.name,
            version: stored.version,
        }),
    ))
}

async fn list(State(state): State<AppState>) -> Result<Json<api::WorkflowList>, ApiError> {
    let workflows = state
        .store
        .workflows()
        .await?
        .into_iter()
        .filter_map(|w| {
            let view = view(w).ok()?;
            let d = view.definition;
            Some(api::WorkflowSummary {
                workflow_id: view.workflow_id,
                name: view.name,
                version: view.version,
                description: d.description,
                steps: d.steps.len(),
                params: d.params.into_keys().collect(),
                created_at: view.created_at,
            })
        })
        .collect();
    Ok(Json(api::WorkflowList { workflows }))
}

/// `?version=N`, the only query parameter of a workflow's routes.
fn version(params: &HashMap<String, String>) -> Result<Option<u32>, ApiError> {
    let mut issues = Vec::new();
    let mut version = None;
    for (key, value) in params {
        match (key.as_str(), value.parse::<u32>()) {
            ("version", Ok(v)) if v >= 1 => version = Some(v),
            ("version", _) => issues.push(api::FieldIssue {
                field: key.clone(),
                issue: "must be a version number from 1".into(),
            }),
            _ => issues.push(api::FieldIssue {
                field: key.clone(),
                issue: "unknown query parameter".into(),
            }),
        }
    }
    if issues.is_empty() {
        Ok(version)
    } else {
        Err(ApiError::invalid(issues))
    }
}

async fn stored(
    state: &AppState,
    id: &str,
    version: Option<u32>,
) -> Result<StoredWorkflow, ApiError> {
    state.store.workflow(id, version).await?.ok_or_else(|| {
        ApiError::not_found(match version {
            Some(v) => format!("workflow {id:?} has no version {v}"),
            None => format!("workflow {id:?} not found"),
        })
    })
}

fn view(w: StoredWorkflow) -> Result<api::WorkflowView, ApiError> {
    let definition: api::WorkflowDef = serde_json::from_value(w.definition)
        .map_err(|e| ApiError::internal(format!("stored workflow {:?}: {e}", w.name)))?;
    Ok(api::WorkflowView {
        workflow_id: w.name.clone(),
        name: w.name,
        version: w.version,
        created_at: convert::timestamp(w.created_at),
        definition,
    })
}

/// `GET /workflows/{id}`: the latest version, or `?version=N`.
async fn show(
    State(state): State<AppState>,
    PathId(id): PathId,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<api::WorkflowView>, ApiError> {
    let version = version(&params)?;
    view(stored(&state, &id, version).await?).map(Json)
}

/// A stored version, ready to run (it was valid when published).
fn load(w: &StoredWorkflow) -> Result<Published, ApiError> {
    Published::from_stored(w).map_err(|e| {
        ApiError::internal(format!(
            "stored workflow {:?} v{}: {e:?}",
            w.name, w.version
        ))
    })
}

/// `POST /workflows/{id}/execute`: a running task of the latest version (or `version`).
async fn execute(
    State(state): State<AppState>,
    PathId(id): PathId,
    body: RawBody,
) -> Result<(StatusCode, Json<api::PlannedTask>), ApiError> {
    // Read the body first, so a bad body is a 400 whatever the workflow.
    let req: api::ExecuteWorkflow = intake::accept(&body.0, |r, _| Some(r))?;
    let published = match req.version {
        None => match state.planning.with_catalog(|c| c.get(&id).cloned()) {
            Some(p) => p,
            None => load(&stored(&state, &id, None).await?)?,
        },
        Some(v) => load(&stored(&state, &id, Some(v)).await?)?,
    };
    let new = intake::accept(&body.0, |r, issues| {
        intake::workflow_run(r, &published, issues)
    })?;
    Ok(match state.engine.submit(new).await? {
        Submitted::Created(s) => (StatusCode::CREATED, Json(convert::planned(&s))),
        Submitted::Existing(s) => (StatusCode::OK, Json(convert::planned(&s))),
    })
}
