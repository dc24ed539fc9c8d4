//! Escalations: what humans are asked to decide, and their decisions.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use baton_api as api;
use baton_core::{EscalationStatus, TaskId};
use baton_engine::intake;
use baton_store::EscalationQuery;

use crate::convert;
use crate::extract::{PathId, RawBody};
use crate::{ApiError, AppState};

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 500;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/escalations", get(list))
        .route("/escalations/{id}", get(show))
        .route("/escalations/{id}/resolve", post(resolve))
}

/// `GET /escalations?status=open|resolved&task_id=..&limit=..`, newest first.
async fn list(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<api::EscalationList>, ApiError> {
    let mut query = EscalationQuery {
        limit: DEFAULT_LIMIT,
        ..EscalationQuery::default()
    };
    let mut issues = Vec::new();
    for (key, value) in &params {
        let problem = match key.as_str() {
            "status" => match EscalationStatus::parse(value) {
                Some(s) => {
                    query.status = Some(s);
                    None
                }
                None => Some("must be open or resolved"),
            },
            "task_id" => {
                query.task_id = Some(TaskId(value.clone()));
                None
            }
            "limit" => match value.parse::<u32>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => {
                    query.limit = n;
                    None
                }
                _ => Some("must be an integer from 1 to 500"),
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
    let escalations = state.store.escalations(&query).await?;
    Ok(Json(api::EscalationList {
        escalations: escalations.into_iter().map(convert::escalation).collect(),
    }))
}

async fn show(
    State(state): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<api::EscalationView>, ApiError> {
    match state.store.escalation(&id).await? {
        Some(e) => Ok(Json(convert::escalation(e))),
        None => Err(ApiError::not_found(format!("escalation {id:?} not found"))),
    }
}

/// `POST /escalations/{id}/resolve`: the task continues as the human decided.
async fn resolve(
    State(state): State<AppState>,
    PathId(id): PathId,
    body: RawBody,
) -> Result<Json<api::EscalationView>, ApiError> {
    let decision = intake::accept(&body.0, intake::resolution)?;
    match state.engine.resolve(id.clone(), decision).await {
        Ok(e) => Ok(Json(convert::escalation(e))),
        // Resolved before (and perhaps its task finished): a conflict, not a 404.
        Err(baton_engine::Error::NotFound(m)) => match state.store.escalation(&id).await? {
            Some(e) => Err(ApiError::conflict(format!(
                "escalation {id:?} is already {}",
                e.status
            ))),
            None => Err(ApiError::not_found(m)),
        },
        Err(e) => Err(e.into()),
    }
}
