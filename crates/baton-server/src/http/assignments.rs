//! Assignments: progress, completion and failure reported by the agent that holds them.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use baton_api as api;
use baton_core::AssignmentId;
use baton_engine::{intake, AssignmentInfo};

use crate::convert;
use crate::extract::{BearerHash, PathId, RawBody};
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
    body: RawBody,
) -> Result<Json<api::AssignmentReply>, ApiError> {
    let (phase, message) = intake::accept(&body.0, intake::progress)?;
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
    body: RawBody,
) -> Result<Json<api::AssignmentReply>, ApiError> {
    let (outputs, usage) = intake::accept(&body.0, intake::complete)?;
    let info = state
        .engine
        .complete(AssignmentId(id), token_hash, outputs, usage)
        .await?;
    Ok(reply(info))
}

async fn fail(
    State(state): State<AppState>,
    PathId(id): PathId,
    BearerHash(token_hash): BearerHash,
    body: RawBody,
) -> Result<Json<api::AssignmentReply>, ApiError> {
    let (error, retryable) = intake::accept(&body.0, intake::fail)?;
    let info = state
        .engine
        .fail(AssignmentId(id), token_hash, error, retryable)
        .await?;
    Ok(reply(info))
}
