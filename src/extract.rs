//! Extractors whose every failure is an [`ApiError`]: a JSON body read by its
//! [`FromJson`](crate::input::FromJson) rules, a query string, and a resource's id.

use std::convert::Infallible;

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::{HeaderMap, StatusCode, header, request::Parts};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::error::{ApiError, FieldError, JSON_REQUIRED};
use crate::input::{self, FromJson};

/// JSON body: wrong content type → 415, oversize → 413, broken JSON → 400 `invalid_json`,
/// anything else wrong → 422 naming every bad field.
pub struct ApiJson<T>(pub T);

impl<T: FromJson, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !has_json_content_type(req.headers()) {
            return Err(ApiError::UnsupportedMediaType(JSON_REQUIRED));
        }
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::InvalidJson("the body could not be read".to_owned())
            }
        })?;
        input::read_body(&bytes).map(ApiJson)
    }
}

pub fn has_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Query string: any failure is 422 `validation_failed` naming the parameter.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let deserializer = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer)
            .map(ApiQuery)
            .map_err(|error| {
                let message = error.inner().to_string();
                let path = error.path().to_string();
                // serde names a missing or unknown parameter only in its message: "unknown field `x`".
                let field = if path == "." {
                    backticked(&message).unwrap_or("query").to_owned()
                } else {
                    path
                };
                ApiError::Validation(vec![FieldError::new(field, message)])
            })
    }
}

fn backticked(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

/// The `{id}` of a resource's path; `None` when it is not a UUID, including bytes that do not
/// decode as UTF-8 (`%FF`): such an id names nothing, so it is a 404 like an unknown one (see
/// `users::own`).
pub struct PathId(pub Option<Uuid>);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Infallible> {
        let id = Path::<String>::from_request_parts(parts, state).await.ok();
        Ok(PathId(id.and_then(|Path(id)| Uuid::parse_str(&id).ok())))
    }
}

/// The `{id}` and the child's id of a nested resource's path (`/projects/{id}/files/{file_id}`),
/// each `None` when it is not a UUID, as for [`PathId`].
pub struct PathIds(pub Option<Uuid>, pub Option<Uuid>);

impl<S: Send + Sync> FromRequestParts<S> for PathIds {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Infallible> {
        let ids = Path::<(String, String)>::from_request_parts(parts, state).await.ok();
        let parse = |id: &str| Uuid::parse_str(id).ok();
        Ok(match ids {
            Some(Path((parent, child))) => PathIds(parse(&parent), parse(&child)),
            None => PathIds(None, None),
        })
    }
}
