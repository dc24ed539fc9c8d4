//! Assignments: progress, completion and failure reported by the agent that holds them.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use baton_api as api;
use baton_core::AssignmentId;
use baton_engine::AssignmentInfo;

use crate::convert;
use crate::extract::{BearerHash, JsonBody, PathId};
use crate::validate::Fields;
use crate::{ApiError, AppState};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/assignments/{assignment_id}/progress", post(progress))
        .route("/assignments/{assignment_id}/complete", post(complete))
        .route("/assignments/{assignment_id}/fail", post(fail))
}

fn reply(info: AssignmentInfo) -> Json<api::AssignmentReply> {
    Json(api::AssignmentReply {
        assignment_id: info.assignment_id.to_string(),
        state: info.state.as_str().to_owned(),
        lease_expires_at: info.lease_expires_at.map(convert::timestamp),
    })
}

async fn progress(
    State(state): State<AppState>,
    PathId(id): PathId,
    BearerHash(token_hash): BearerHash,
    JsonBody(body): JsonBody,
) -> Result<Json<api::AssignmentReply>, ApiError> {
    let mut f = Fields::new(&body, &["phase", "message"]);
    let phase = f.string("phase", true, 32);
    if let Some(p) = &phase {
        if !matches!(p.as_str(), "reasoning" | "executing" | "validating") {
            f.problem("phase", "must be reasoning, executing or validating");
        }
    }
    let message = f.string("message", false, 4096);
    let phase = f.finish(phase).map_err(ApiError::invalid)?;
    let info = state
        .engine
        .progress(AssignmentId(id), token_hash, phase, message)
        .await?;
    Ok(reply(info))
}

async fn complete(
    State(state): State<AppState>,
    PathId(id): PathId,
    BearerHash(token_hash): BearerHash,
    JsonBody(body): JsonBody,
) -> Result<Json<api::AssignmentReply>, ApiError> {
    let mut f = Fields::new(&body, &["outputs"]);
    let outputs = f.raw("outputs").cloned();
    if outputs.is_none() && body.is_object() {
        f.problem("outputs", "required");
    }
    let outputs = f.finish(outputs).map_err(ApiError::invalid)?;
    let info = state
        .engine
        .complete(AssignmentId(id), token_hash, outputs)
        .await?;
    Ok(reply(info))
}

async fn fail(
    State(state): State<AppState>,
    PathId(id): PathId,
    BearerHash(token_hash): BearerHash,
    JsonBody(body): JsonBody,
) -> Result<Json<api::AssignmentReply>, ApiError> {
    let mut f = Fields::new(&body, &["error", "retryable"]);
    let error = f.string("error", true, 16_384);
    let retryable = f.boolean("retryable").unwrap_or(true);
    let error = f.finish(error).map_err(ApiError::invalid)?;
    let info = state
        .engine
        .fail(AssignmentId(id), token_hash, error, retryable)
        .await?;
    Ok(reply(info))
}
