//! Errors as the server answers them: a status, a stable code and a
//! message (docs/PROTOCOL.md, "Errors"); what each engine error becomes.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use strata_engine::error::Error;

use crate::protocol::{ErrorBody, ErrorDetail};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Tells the client when to try again.
    pub fn retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let message = e.to_string();
        let (status, code) = match &e {
            e if e.is_no_space() => (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage"),
            Error::InvalidInput(_) | Error::UnsafeName { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
            Error::ChunkMissing { .. } | Error::RestorePointNotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            Error::Cold { .. } | Error::RestorePointCold { .. } => (StatusCode::CONFLICT, "chunk_cold"),
            Error::NoSpace { .. } => (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage"),
            Error::Busy { .. } => (StatusCode::CONFLICT, "busy"),
            Error::UnsupportedVersion { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "unsupported_version"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %message, "request failed");
        }
        ApiError::new(status, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert("retry-after", value);
            }
        }
        response
    }
}
