//! What a request that fails gets: an HTTP status and `{"error": "…"}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use stmp::{Code, Status};

/// An HTTP error with a message for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
}

impl From<Status> for ApiError {
    fn from(status: Status) -> ApiError {
        let http = match status.code() {
            Code::BadRequest | Code::ProtocolError => StatusCode::BAD_REQUEST,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::RequestTimeout => StatusCode::GATEWAY_TIMEOUT,
            Code::RequestEntityTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Code::ServerShutdown => StatusCode::SERVICE_UNAVAILABLE,
            Code::Ok | Code::Unknown | Code::NetworkError | Code::InternalServerError => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError::new(http, status.message())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message });
        (self.status, axum::Json(body)).into_response()
    }
}
