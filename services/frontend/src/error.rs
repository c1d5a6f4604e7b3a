//! `ApiError`: every failure the HTTP API returns, in OpenAI's error shape.

use actix_web::{HttpResponse, ResponseError, http::StatusCode};
use ferrite_protocol::openai::ErrorResponse;
use ferrite_protocol::{ErrorInfo, ErrorKind};
use std::fmt;

/// `Retry-After` of 429 and 503 answers.
pub const RETRY_AFTER_SECONDS: u32 = 1;

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
        let mut r = HttpResponse::build(self.status_code());
        // Overload and unavailability are worth retrying: say when.
        if matches!(
            self.0.kind,
            ErrorKind::Overloaded | ErrorKind::Unavailable | ErrorKind::WorkerLost
        ) {
            r.insert_header(("retry-after", RETRY_AFTER_SECONDS.to_string()));
        }
        r.json(ErrorResponse::from(&self.0))
    }
}
