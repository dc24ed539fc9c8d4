//! Routes, one module per resource, each with its own `router()`.

mod agents;
mod assignments;
mod escalations;
mod tasks;
mod workflows;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};

use crate::{ApiError, AppState, MAX_BODY_BYTES};

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(tasks::router())
        .merge(agents::router())
        .merge(assignments::router())
        .merge(workflows::router())
        .merge(escalations::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn healthz() -> Json<baton_api::Health> {
    Json(baton_api::Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

/// Ready when the engine accepts changes: 503 after a failed commit (the engine refuses
/// changes until it is restarted and recovers from the store) or during shutdown.
async fn readyz(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<Json<baton_api::Health>, ApiError> {
    if state.engine.is_healthy() {
        Ok(healthz().await)
    } else {
        Err(ApiError::unavailable(
            "the engine refuses changes after a storage failure; restart it to recover",
        ))
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}
