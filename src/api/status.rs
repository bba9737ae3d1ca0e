//! Kubernetes `Status` errors: one [`ApiError`] enum whose responses are `meta/v1` Status JSON.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::backend::BackendError;

/// One invalid field, reported in `details.causes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, ...
    pub reason: String,
    pub field: String,
    pub message: String,
}

/// Every error the API returns; each becomes a Kubernetes `Status` body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Unauthorized")]
    Unauthorized,
    #[error("{resource} \"{name}\" not found")]
    NotFound { resource: String, name: String },
    /// Something the backend could not find, in its own words.
    #[error("{0} not found")]
    Missing(String),
    /// A conflicting write reported by the backend.
    #[error("{0}")]
    StateConflict(String),
    /// A path or resource the server does not serve.
    #[error("the server could not find the requested resource")]
    NoRoute,
    #[error("{resource} \"{name}\" already exists")]
    AlreadyExists { resource: String, name: String },
    #[error("Operation cannot be fulfilled on {resource} \"{name}\": {message}")]
    Conflict {
        resource: String,
        name: String,
        message: String,
    },
    #[error("{kind} \"{name}\" is invalid: {}", join_causes(.causes))]
    Invalid {
        kind: String,
        name: String,
        causes: Vec<Cause>,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    #[error("the request body is too large (limit {limit} bytes)")]
    TooLarge { limit: usize },
    /// A request whose effect would be too large (a JSON patch's operations or copies).
    #[error("{0}")]
    EffectTooLarge(String),
    #[error(
        "the body of the request was in an unknown format - accepted media types include: {0}"
    )]
    UnsupportedMediaType(String),
    #[error("the request did not complete within the allowed duration")]
    Timeout,
    #[error("{0}")]
    Unavailable(String),
    /// The serving node's disk is full (507 Insufficient Storage).
    #[error("{0}")]
    InsufficientStorage(String),
    #[error("{0}")]
    Internal(String),
    /// A resourceVersion or continue token older than the change log's window, or from
    /// another node (`changelog.rs`): 410, reason `Expired`; clients relist.
    #[error("{0}")]
    Gone(String),
    /// A request refused for now (an eviction a disruption budget forbids): 429, the client
    /// retries later.
    #[error("{message}")]
    TooManyRequests { message: String, causes: Vec<Cause> },
    /// A server-side apply that would take fields other managers own: 409, reason
    /// `Conflict`, one `FieldManagerConflict` cause per field.
    #[error("{message}")]
    ApplyConflict { message: String, causes: Vec<Cause> },
    /// Bad TLS material given to [`super::tls_config`].
    #[error("tls: {0}")]
    Tls(String),
}

fn join_causes(causes: &[Cause]) -> String {
    causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect::<Vec<_>>()
        .join(", ")
}

impl ApiError {
    pub fn not_found(resource: &str, name: &str) -> Self {
        ApiError::NotFound {
            resource: resource.to_string(),
            name: name.to_string(),
        }
    }

    pub fn invalid(kind: &str, name: &str, field: &str, value: &str, message: &str) -> Self {
        ApiError::Invalid {
            kind: kind.to_string(),
            name: name.to_string(),
            causes: vec![Cause {
                reason: "FieldValueInvalid".into(),
                field: field.to_string(),
                message: format!("Invalid value: {value:?}: {message}"),
            }],
        }
    }

    pub fn code(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound { .. } | ApiError::NoRoute | ApiError::Missing(_) => {
                StatusCode::NOT_FOUND
            }
            ApiError::AlreadyExists { .. }
            | ApiError::Conflict { .. }
            | ApiError::StateConflict(_) => StatusCode::CONFLICT,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooLarge { .. } | ApiError::EffectTooLarge(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Internal(_) | ApiError::Tls(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::ApplyConflict { .. } => StatusCode::CONFLICT,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "Unauthorized",
            ApiError::NotFound { .. } | ApiError::NoRoute | ApiError::Missing(_) => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } | ApiError::StateConflict(_) => "Conflict",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Forbidden(_) => "Forbidden",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::TooLarge { .. } | ApiError::EffectTooLarge(_) => "RequestEntityTooLarge",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::Timeout => "Timeout",
            ApiError::Unavailable(_) => "ServiceUnavailable",
            ApiError::InsufficientStorage(_) => "InsufficientStorage",
            ApiError::Internal(_) | ApiError::Tls(_) => "InternalError",
            ApiError::Gone(_) => "Expired",
            ApiError::TooManyRequests { .. } => "TooManyRequests",
            ApiError::ApplyConflict { .. } => "Conflict",
        }
    }

    fn details(&self) -> Option<Value> {
        match self {
            ApiError::NotFound { resource, name } | ApiError::AlreadyExists { resource, name } => {
                Some(json!({ "name": name, "kind": resource }))
            }
            ApiError::Conflict { resource, name, .. } => {
                Some(json!({ "name": name, "kind": resource }))
            }
            ApiError::Invalid { kind, name, causes } => Some(json!({
                "name": name,
                // `kind` may be qualified (`Deployment.apps`) for the message.
                "kind": kind.split_once('.').map_or(kind.as_str(), |(k, _)| k),
                "group": kind.split_once('.').map_or("", |(_, g)| g),
                "causes": causes.iter().map(|c| json!({
                    "reason": c.reason, "message": c.message, "field": c.field,
                })).collect::<Vec<_>>(),
            })),
            ApiError::ApplyConflict { causes, .. } => Some(json!({
                "causes": causes.iter().map(|c| json!({
                    "reason": c.reason, "message": c.message, "field": c.field,
                })).collect::<Vec<_>>(),
            })),
            ApiError::TooManyRequests { causes, .. } => Some(json!({
                "causes": causes.iter().map(|c| json!({
                    "reason": c.reason, "message": c.message,
                })).collect::<Vec<_>>(),
            })),
            _ => None,
        }
    }

    /// The `meta/v1` Status object for this error.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code().as_u16(),
        });
        if let Some(details) = self.details() {
            status["details"] = details;
        }
        status
    }
}

impl From<BackendError> for ApiError {
    fn from(err: BackendError) -> Self {
        match err {
            BackendError::Invalid(m) => ApiError::BadRequest(m),
            BackendError::NotFound(what) => ApiError::Missing(what),
            BackendError::Conflict(m) => ApiError::StateConflict(m),
            BackendError::Unavailable(m) => {
                ApiError::Unavailable(format!("state unavailable: {m}"))
            }
            BackendError::InsufficientStorage(m) => {
                ApiError::InsufficientStorage(format!("insufficient storage: {m}"))
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.code().is_server_error() {
            tracing::warn!(error = %self, "api request failed");
        }
        let body = serde_json::to_vec(&self.to_status()).unwrap_or_default();
        let mut response = (self.code(), body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

/// A success `Status` (what `DELETE` returns when it has no object to return).
pub fn success_status(resource: &str, name: &str, uid: Option<&str>) -> Value {
    let mut details = json!({ "name": name, "kind": resource });
    if let Some(uid) = uid {
        details["uid"] = json!(uid);
    }
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthorized_status_reveals_nothing_else() {
        let status = ApiError::Unauthorized.to_status();
        assert_eq!(
            status,
            json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                   "message":"Unauthorized","reason":"Unauthorized","code":401})
        );
    }

    #[test]
    fn not_found_has_kubernetes_message_shape() {
        let err = ApiError::not_found("configmaps", "x");
        let status = err.to_status();
        assert_eq!(status["message"], "configmaps \"x\" not found");
        assert_eq!(status["reason"], "NotFound");
        assert_eq!(status["code"], 404);
        assert_eq!(
            status["details"],
            json!({"name": "x", "kind": "configmaps"})
        );
    }

    #[test]
    fn invalid_lists_causes_with_fields() {
        let err = ApiError::invalid(
            "ConfigMap",
            "Bad_Name",
            "metadata.name",
            "Bad_Name",
            "must be lower case",
        );
        assert_eq!(err.code(), StatusCode::UNPROCESSABLE_ENTITY);
        let status = err.to_status();
        assert_eq!(status["reason"], "Invalid");
        assert_eq!(status["details"]["causes"][0]["field"], "metadata.name");
        assert!(status["message"]
            .as_str()
            .unwrap()
            .starts_with("ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value"));
    }

    #[test]
    fn backend_errors_map_to_statuses() {
        assert_eq!(
            ApiError::from(BackendError::NotFound("node \"x\"".into())).code(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            ApiError::from(BackendError::Conflict("lost a race".into())).code(),
            StatusCode::CONFLICT
        );
        assert_eq!(
            ApiError::from(BackendError::Invalid("bad".into())).code(),
            StatusCode::BAD_REQUEST
        );
        let unavailable = ApiError::from(BackendError::Unavailable("loading".into()));
        assert_eq!(unavailable.code(), StatusCode::SERVICE_UNAVAILABLE);
        let full = ApiError::from(BackendError::InsufficientStorage("disk full".into()));
        assert_eq!(full.code(), StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(full.to_status()["reason"], "InsufficientStorage");
    }

    #[test]
    fn too_large_is_413() {
        let status = ApiError::TooLarge { limit: 10 }.to_status();
        assert_eq!(status["code"], 413);
        assert_eq!(status["reason"], "RequestEntityTooLarge");
    }
}
