//! The one error type at the edge: every failure becomes `{error, message, fields?}` with the
//! right status. Internal details are logged, not sent.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use baton_api::{ErrorBody, FieldIssue};

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub fields: Vec<FieldIssue>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            fields: Vec::new(),
        }
    }

    /// 400 listing every invalid field.
    pub fn invalid(fields: Vec<FieldIssue>) -> Self {
        let n = fields.len();
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "validation_failed",
            message: format!("{n} invalid field{}", if n == 1 { "" } else { "s" }),
            fields,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid bearer token",
        )
    }

    /// A fault of the server itself: logged with `context`, answered without it.
    pub fn internal(context: impl Into<String>) -> Self {
        tracing::error!(context = %context.into(), "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal error; the request was not completed",
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl From<baton_engine::Error> for ApiError {
    fn from(e: baton_engine::Error) -> Self {
        use baton_engine::Error as E;
        match e {
            E::NotFound(m) => Self::not_found(m),
            E::Conflict(m) => Self::conflict(m),
            E::Invalid(m) => Self::bad_request(m),
            E::Unauthorized => Self::unauthorized(),
            E::Forbidden(m) => Self::new(StatusCode::FORBIDDEN, "forbidden", m),
            E::Unavailable(m) => {
                tracing::error!(error = %m, "storage unavailable");
                Self::unavailable("storage is unavailable; the change was not committed")
            }
            E::Stopped => Self::unavailable("the orchestrator is shutting down"),
            // Logged with its context by the engine; the client learns nothing of internals.
            E::Internal(_) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "internal error; the request was not completed",
            ),
        }
    }
}

impl From<baton_store::Error> for ApiError {
    fn from(e: baton_store::Error) -> Self {
        tracing::error!(error = %e, "store read failed");
        Self::unavailable("storage is unavailable")
    }
}

impl From<baton_engine::intake::Rejection> for ApiError {
    fn from(r: baton_engine::intake::Rejection) -> Self {
        match r {
            baton_engine::intake::Rejection::Malformed(m) => Self::bad_request(m),
            baton_engine::intake::Rejection::Invalid(fields) => Self::invalid(fields),
        }
    }
}

impl ApiError {
    /// The JSON body of this error (also used per item in batch answers).
    pub fn into_body(self) -> ErrorBody {
        ErrorBody {
            error: self.code.to_owned(),
            message: self.message,
            fields: self.fields,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status;
        (status, Json(self.into_body())).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_engine_bug_is_a_500_that_tells_nothing_of_its_internals() {
        let e = ApiError::from(baton_engine::Error::Internal(
            "subtask x::t::1: illegal subtask transition completed -> running".into(),
        ));
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.code, "internal_error");
        assert!(!e.message.contains("subtask"), "{}", e.message);
        // Never a 409: the SDK would take that for ordinary fencing ("superseded").
        assert_ne!(e.status, StatusCode::CONFLICT);
    }
}
