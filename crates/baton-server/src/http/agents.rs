//! Agents: registration, discovery, draining, and the agent side of the pull protocol
//! (lease long-polls and heartbeats).

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use baton_api as api;
use baton_core::AgentId;
use baton_engine::intake;
use std::collections::HashMap;

use crate::convert;
use crate::extract::{BearerHash, PathId, RawBody};
use crate::{ApiError, AppState};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/agents", get(list).post(register))
        .route("/agents/{agent_id}", get(one).delete(drain))
        .route("/agents/{agent_id}/lease", post(lease))
        .route("/agents/{agent_id}/heartbeat", post(heartbeat))
        .route("/agents/{agent_id}/results", post(results))
}

async fn register(
    State(state): State<AppState>,
    body: RawBody,
) -> Result<(StatusCode, Json<api::RegisteredAgent>), ApiError> {
    let spec = intake::accept(&body.0, intake::registration)?;
    let registered = state.engine.register(spec).await?;
    Ok((
        StatusCode::CREATED,
        Json(api::RegisteredAgent {
            agent_id: registered.agent.agent_id.to_string(),
            token: registered.token,
        }),
    ))
}

async fn list(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<api::AgentList>, ApiError> {
    let mut issues = Vec::new();
    for key in params.keys() {
        if !matches!(key.as_str(), "domain" | "capability" | "health") {
            issues.push(api::FieldIssue {
                field: key.clone(),
                issue: "unknown query parameter".into(),
            });
        }
    }
    if let Some(h) = params.get("health") {
        let known = [
            "healthy",
            "idle",
            "busy",
            "draining",
            "stopped",
            "unhealthy",
            "starting",
            "failed",
        ];
        if !known.contains(&h.as_str()) {
            issues.push(api::FieldIssue {
                field: "health".into(),
                issue: format!("must be one of {}", known.join(", ")),
            });
        }
    }
    if !issues.is_empty() {
        return Err(ApiError::invalid(issues));
    }
    let agents = state
        .engine
        .agents()
        .await?
        .into_iter()
        .map(convert::agent)
        .filter(|a| match params.get("health").map(String::as_str) {
            None => a.status != "stopped",
            Some("healthy") => matches!(a.status.as_str(), "idle" | "busy"),
            Some(status) => a.status == status,
        })
        .filter(|a| params.get("domain").is_none_or(|d| a.domains.contains(d)))
        .filter(|a| {
            params
                .get("capability")
                .is_none_or(|c| a.skills.contains(c))
        })
        .collect();
    Ok(Json(api::AgentList { agents }))
}

async fn find(state: &AppState, agent_id: &str) -> Result<api::AgentView, ApiError> {
    state
        .engine
        .agents()
        .await?
        .into_iter()
        .find(|a| a.agent.agent_id.as_str() == agent_id)
        .map(convert::agent)
        .ok_or_else(|| ApiError::not_found(format!("agent {agent_id:?} not found")))
}

async fn one(
    State(state): State<AppState>,
    PathId(agent_id): PathId,
) -> Result<Json<api::AgentView>, ApiError> {
    Ok(Json(find(&state, &agent_id).await?))
}

async fn drain(
    State(state): State<AppState>,
    PathId(agent_id): PathId,
) -> Result<Json<api::AgentView>, ApiError> {
    let info = state.engine.drain(AgentId(agent_id)).await?;
    Ok(Json(convert::agent(info)))
}

async fn lease(
    State(state): State<AppState>,
    PathId(agent_id): PathId,
    BearerHash(token_hash): BearerHash,
    body: RawBody,
) -> Result<Json<api::LeaseResponse>, ApiError> {
    let ask = intake::accept(&body.0, intake::lease)?;
    let grants = state
        .engine
        .lease(
            AgentId(agent_id),
            token_hash,
            ask.max,
            ask.wait_ms,
            ask.held,
        )
        .await?;
    Ok(Json(api::LeaseResponse {
        assignments: grants.into_iter().map(convert::lease).collect(),
    }))
}

async fn heartbeat(
    State(state): State<AppState>,
    PathId(agent_id): PathId,
    BearerHash(token_hash): BearerHash,
    body: RawBody,
) -> Result<Json<api::HeartbeatReply>, ApiError> {
    let held = intake::accept(&body.0, intake::heartbeat)?;
    let info = state
        .engine
        .heartbeat(AgentId(agent_id.clone()), token_hash, held)
        .await?;
    Ok(Json(api::HeartbeatReply {
        agent_id,
        status: info.status.to_string(),
        lease_expires_at: info.lease_expires_at.map(convert::timestamp),
        revoked: info.revoked.iter().map(ToString::to_string).collect(),
    }))
}

async fn results(
    State(state): State<AppState>,
    PathId(agent_id): PathId,
    BearerHash(token_hash): BearerHash,
    body: RawBody,
) -> Result<Json<api::ResultsReply>, ApiError> {
    let (items, held) = intake::accept(&body.0, intake::results)?;
    let ids: Vec<String> = items.iter().map(|(id, _)| id.to_string()).collect();
    let answers = state
        .engine
        .results(AgentId(agent_id), token_hash, held, items)
        .await?;
    let results = ids
        .into_iter()
        .zip(answers)
        .map(|(assignment_id, answer)| match answer {
            Ok(info) => api::ResultOutcome {
                assignment_id,
                status: 200,
                state: Some(info.state.as_str().to_owned()),
                error: None,
            },
            Err(e) => {
                let e = ApiError::from(e);
                api::ResultOutcome {
                    assignment_id,
                    status: e.status.as_u16(),
                    state: None,
                    error: Some(e.into_body()),
                }
            }
        })
        .collect();
    Ok(Json(api::ResultsReply { results }))
}
