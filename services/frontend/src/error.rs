//! `ApiError`: every failure the HTTP API returns, in OpenAI's error shape.

use actix_web::{HttpResponse, ResponseError, http::StatusCode};
use ferrite_protocol::openai::ErrorResponse;
use ferrite_protocol::{ErrorInfo, ErrorKind};
use std::fmt;

/// An error answered as `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError(pub ErrorInfo);

pub type ApiResult<T> = std::result::Result<T, ApiError>;

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self(ErrorInfo::new(kind, message))
    }

    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self(ErrorInfo::invalid(param, message))
    }

    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// A JSON body error from serde, naming the field where serde says which one.
    pub fn from_json(err: &serde_json::Error) -> Self {
        let msg = err.to_string();
        let param = msg
            .split('`')
            .nth(1)
            .filter(|_| msg.starts_with("missing field") || msg.starts_with("unknown field"))
            .map(str::to_string);
        Self(ErrorInfo {
            kind: ErrorKind::InvalidRequest,
            message: format!("invalid JSON body: {msg}"),
            param,
        })
    }
}

impl From<ErrorInfo> for ApiError {
    fn from(e: ErrorInfo) -> Self {
        Self(e)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.0.kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(ErrorResponse::from(&self.0))
    }
}
