//! The one error type. Every handler returns `Result<_, ApiError>`; every error the service
//! sends, including axum's rejections and bare errors from middleware, leaves as the JSON of
//! docs/api.md, "Errors" (or, for a browser on a non-API path, as the HTML error page).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::telemetry::{self, sentry};

/// One field that failed validation.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("the Host header names a host this service does not serve")]
    InvalidHost,
    #[error("the cursor is not valid")]
    InvalidCursor,
    #[error("this password-reset link is unknown, used or expired: ask for a new one")]
    InvalidToken,
    #[error("a valid bearer token is required")]
    Unauthorized,
    #[error("the email or password is wrong")]
    InvalidCredentials,
    #[error("this route is for administrators")]
    Forbidden,
    #[error("this account is disabled")]
    AccountDisabled,
    // example-domain:begin
    #[error("the webhook signature or timestamp is not valid")]
    InvalidSignature,
    // example-domain:end
    #[error("no such resource")]
    NotFound,
    #[error("this method is not allowed here")]
    MethodNotAllowed,
    #[error("the request took too long")]
    Timeout,
    #[error("this email is already registered")]
    EmailTaken,
    #[error("this is the only enabled administrator: make another one first")]
    LastAdmin,
    // example-domain:begin
    #[error("{0}")]
    InvalidTransition(&'static str),
    // example-domain:end
    #[error("this upload would put you over your storage quota")]
    QuotaExceeded,
    #[error("the request body is too large")]
    PayloadTooLarge,
    /// A body of a type the route does not take: says which it does.
    #[error("{0}")]
    UnsupportedMediaType(&'static str),
    #[error("the requested range is not satisfiable")]
    RangeNotSatisfiable,
    #[error("a precondition of the request failed")]
    PreconditionFailed,
    #[error("the request is not valid")]
    Validation(Vec<FieldError>),
    #[error("too many requests")]
    RateLimited { retry_after_secs: u64 },
    #[error("the service is temporarily unavailable")]
    ServiceUnavailable,
    /// The database (or its pooler) cannot serve requests now. Rendered like
    /// `ServiceUnavailable`, but logged and reported once a minute by `db::faults`, not per request.
    #[error("the database is temporarily unavailable")]
    DatabaseUnavailable,
    /// A statement ran past `DATABASE_STATEMENT_TIMEOUT_SECS`: 503 `timeout`, logged by `db::faults`.
    #[error("the database took too long to answer")]
    DatabaseTimeout,
    /// The file storage failed or cannot be reached: 503 like `ServiceUnavailable`, the cause logged.
    #[error("the file storage is temporarily unavailable")]
    StorageUnavailable(#[source] anyhow::Error),
    #[error("an internal error occurred")]
    Internal(#[source] anyhow::Error),
    /// A handler panicked. Rendered like `Internal`, but not sent to Sentry again: its
    /// panic hook has already reported it, with the stack trace.
    #[error("an internal error occurred")]
    Panic(String),
}

/// The JSON error body (docs/api.md, "Errors").
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `validation_failed`.
    pub code: &'static str,
    pub message: String,
    /// The request id, also in the `X-Request-Id` response header and the log line.
    #[schema(value_type = String)]
    pub request_id: telemetry::RequestId,
    /// The fields that are wrong: at most 20 (the message says how many there were).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Vec<FieldError>>,
}

/// The errors every route with a JSON body can answer, for its OpenAPI `responses(...)`.
#[derive(utoipa::IntoResponses)]
pub enum JsonBodyErrors {
    /// `invalid_json`: the body is not syntactically valid JSON.
    #[response(status = 400)]
    InvalidJson(ErrorBody),
    /// `payload_too_large`: the body is over MAX_BODY_BYTES.
    #[response(status = 413)]
    PayloadTooLarge(ErrorBody),
    /// `unsupported_media_type`: no `Content-Type: application/json`.
    #[response(status = 415)]
    UnsupportedMediaType(ErrorBody),
}

/// Marks a response as an error the service rendered, with its code (read by the log line
/// and by [`render_bare_errors`], which leaves such responses alone).
#[derive(Clone, Copy, Debug)]
pub struct ErrorCode(pub &'static str);

/// A 422 lists at most this many fields; its message says how many there were. A body of a
/// megabyte of distinct unknown keys would otherwise answer several megabytes.
pub const MAX_DETAILS: usize = 20;

/// What a JSON route says to a body of another type.
pub const JSON_REQUIRED: &str = "expected Content-Type: application/json";

/// Retry-After for 503s: long enough for a pool or database to recover, short for clients.
const RETRY_AFTER_UNAVAILABLE_SECS: u64 = 5;

impl ApiError {
    pub fn validation(field: &str, message: &str) -> Self {
        ApiError::Validation(vec![FieldError::new(field, message)])
    }

    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use ApiError::*;
        match self {
            InvalidJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            InvalidHost => (StatusCode::BAD_REQUEST, "invalid_host"),
            InvalidCursor => (StatusCode::BAD_REQUEST, "invalid_cursor"),
            InvalidToken => (StatusCode::BAD_REQUEST, "invalid_token"),
            Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            InvalidCredentials => (StatusCode::UNAUTHORIZED, "invalid_credentials"),
            Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            AccountDisabled => (StatusCode::FORBIDDEN, "account_disabled"),
            // example-domain:begin
            InvalidSignature => (StatusCode::UNAUTHORIZED, "invalid_signature"),
            // example-domain:end
            NotFound => (StatusCode::NOT_FOUND, "not_found"),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Timeout | DatabaseTimeout => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
            EmailTaken => (StatusCode::CONFLICT, "email_taken"),
            LastAdmin => (StatusCode::CONFLICT, "last_admin"),
            // example-domain:begin
            InvalidTransition(_) => (StatusCode::CONFLICT, "invalid_transition"),
            // example-domain:end
            QuotaExceeded => (StatusCode::CONFLICT, "quota_exceeded"),
            PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            RangeNotSatisfiable => (StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable"),
            PreconditionFailed => (StatusCode::PRECONDITION_FAILED, "precondition_failed"),
            Validation(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ServiceUnavailable | DatabaseUnavailable | StorageUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable")
            }
            Internal(_) | Panic(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }

    /// The error a bare status from middleware, axum's router or the static files stands for.
    fn from_status(status: StatusCode) -> ApiError {
        match status {
            StatusCode::NOT_FOUND => ApiError::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(JSON_REQUIRED),
            // The static files' answers to `Range` and `If-Match` / `If-Unmodified-Since`.
            StatusCode::RANGE_NOT_SATISFIABLE => ApiError::RangeNotSatisfiable,
            StatusCode::PRECONDITION_FAILED => ApiError::PreconditionFailed,
            StatusCode::REQUEST_TIMEOUT => ApiError::Timeout,
            StatusCode::SERVICE_UNAVAILABLE => ApiError::ServiceUnavailable,
            StatusCode::TOO_MANY_REQUESTS => ApiError::RateLimited { retry_after_secs: 1 },
            StatusCode::BAD_REQUEST => ApiError::InvalidJson("the request could not be read".to_owned()),
            _ => ApiError::Internal(anyhow::anyhow!("bare {status} response from a middleware")),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> Self {
        ApiError::Internal(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let request = telemetry::current_request();
        let retry_after = match &self {
            ApiError::RateLimited { retry_after_secs } => Some(*retry_after_secs),
            ApiError::ServiceUnavailable
            | ApiError::Timeout
            | ApiError::DatabaseUnavailable
            | ApiError::DatabaseTimeout
            | ApiError::StorageUnavailable(_) => Some(RETRY_AFTER_UNAVAILABLE_SECS),
            _ => None,
        };
        let mut message = self.to_string();
        match &self {
            ApiError::Internal(cause) => {
                // The cause chain goes to the log and Sentry, never to the client unless DEBUG.
                let cause = format!("{cause:#}");
                tracing::error!(error = cause, "internal error");
                sentry::report_server_error(code, &cause);
                if request.expose_internal_errors {
                    message = format!("{message}: {cause}");
                }
            }
            ApiError::Panic(detail) => tracing::error!(panic = detail, "handler panicked"),
            ApiError::DatabaseUnavailable | ApiError::DatabaseTimeout => {}
            // An outage, not a bug: a warning per request, no Sentry event each.
            ApiError::StorageUnavailable(cause) => tracing::warn!(error = format!("{cause:#}"), "file storage failed"),
            _ if status.is_server_error() => {
                tracing::error!(code, "request failed");
                sentry::report_server_error(code, &message);
            }
            _ => {}
        }
        let details = match self {
            ApiError::Validation(mut details) => {
                if details.len() > MAX_DETAILS {
                    message = format!(
                        "the request is not valid: {} fields are wrong; the first {MAX_DETAILS} are listed",
                        details.len()
                    );
                    details.truncate(MAX_DETAILS);
                }
                Some(details)
            }
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code,
                message,
                request_id: request.id,
                details,
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(secs) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if matches!(code, "unauthorized" | "invalid_credentials") {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response.extensions_mut().insert(ErrorCode(code));
        response
    }
}

/// Turns any error response that did not come from [`ApiError`] (axum's 404 and 405, a
/// middleware's 413 or 408, ...) into one that did, keeping its headers (`Allow`,
/// `Retry-After`). Runs inside the request-id scope, so the body carries the request id.
pub fn render_bare_error(response: Response) -> Response {
    let already_rendered = response.extensions().get::<ErrorCode>().is_some()
        // A handler's own JSON answer with an error status (e.g. `/readyz` 503) is deliberate.
        || response.headers().get(header::CONTENT_TYPE).is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if response.status().as_u16() < 400 || already_rendered {
        return response;
    }
    let (parts, _body) = response.into_parts();
    let mut rendered = ApiError::from_status(parts.status).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rendered.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rendered
}

/// The 404 for every path no route matches.
pub async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// A panic in a handler: a 500 of the usual shape; the connection and process carry on.
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    ApiError::Panic(detail).into_response()
}
