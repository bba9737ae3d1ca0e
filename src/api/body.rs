//! Request bodies: read with a size limit (413 beyond it) and decoded from JSON, YAML or
//! Kubernetes protobuf into a JSON object.

use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::Value;

use super::proto;
use super::status::ApiError;

/// How much of a body that is too large we still read (and discard, never buffer) before
/// answering 413, so that the client, still writing, reads the 413 rather than a reset stream
/// (curl reports an HTTP/2 stream error when the server resets an upload before its end).
/// Bodies declared larger than this are refused without reading them.
pub(crate) const DRAIN_REJECTED_BYTES: usize = 64 << 20;

/// Reads and discards up to `max` bytes of `body`.
pub(crate) async fn drain(mut body: Body, max: usize) {
    let mut seen = 0usize;
    while seen < max {
        match body.frame().await {
            Some(Ok(frame)) => seen += frame.data_ref().map(|d| d.len()).unwrap_or(0),
            _ => return,
        }
    }
}

/// Reads a request body up to `limit` bytes; larger bodies are a 413.
pub async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(len) = declared.filter(|len| *len > limit) {
        if len <= DRAIN_REJECTED_BYTES {
            drain(body, len).await;
        }
        return Err(ApiError::TooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::TooLarge { limit })
        }
        Err(e) => Err(ApiError::BadRequest(format!(
            "reading the request body: {e}"
        ))),
    }
}

/// The request's media type, lower-case without parameters (`default` when it has none).
pub fn media_type(headers: &HeaderMap, default: &str) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(default)
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// A protobuf body as the JSON object it encodes; a kind without a schema is a 415 naming it.
pub fn proto_object(body: &[u8]) -> Result<Value, ApiError> {
    proto::decode_object(body).map_err(|e| match e {
        proto::ProtoError::UnsupportedKind { api_version, kind } => {
            ApiError::UnsupportedMediaType(format!(
                "application/json, application/yaml (shoal has no protobuf schema for kind \"{kind}\" of \"{api_version}\": send it as JSON)"
            ))
        }
        other => ApiError::BadRequest(other.to_string()),
    })
}

pub fn decode(headers: &HeaderMap, body: &Bytes) -> Result<Value, ApiError> {
    let content_type = media_type(headers, "application/json");
    let value: Value = match content_type.as_str() {
        "application/yaml" | "application/x-yaml" | "text/yaml" => serde_yaml::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("the body is not valid YAML: {e}")))?,
        "application/json" | "" | "*/*" => serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("the body is not valid JSON: {e}")))?,
        "application/vnd.kubernetes.protobuf" => proto_object(body)?,
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
            "application/json, application/yaml, application/vnd.kubernetes.protobuf (got {other})"
        )))
        }
    };
    if !value.is_object() {
        return Err(ApiError::BadRequest(
            "the body must be a JSON object".into(),
        ));
    }
    Ok(value)
}
