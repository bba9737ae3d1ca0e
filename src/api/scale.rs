//! The `scale` subresource of Deployments and ReplicaSets: an `autoscaling/v1` Scale read from
//! the object (GET) and written back as `spec.replicas` (PUT, and PATCH of every patch type,
//! which `kubectl scale` sends as a merge patch).

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use super::body::read_body;
use super::objects::{find, find_stored, json_response, store, FieldOwner, Target};
use super::patch::{self, no_merge_keys, PatchKind};
use super::status::{ApiError, Cause};
use super::workloads::format_selector;
use super::{typed, ApiState};

type Query = std::collections::BTreeMap<String, String>;

/// The Scale of a served object (status computed).
pub fn scale_of(object: &Value) -> Value {
    let meta = &object["metadata"];
    let selector = format_selector(&object["spec"]["selector"]);
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
            "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": object["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {
            "replicas": object["status"]["replicas"].as_i64().unwrap_or(0),
            "selector": if selector == "<none>" { String::new() } else { selector },
        },
    })
}

fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let value: Value = if content_type.contains("yaml") {
        serde_yaml::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("the body is not valid YAML: {e}")))?
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("the body is not valid JSON: {e}")))?
    };
    Ok(value)
}

/// Field checks of a Scale body (`fieldValidation` Strict rejects unknown fields).
fn check(scale: &mut Value, query: &Query) -> Result<(), ApiError> {
    if scale["kind"].as_str().is_some_and(|k| k != "Scale") {
        return Err(ApiError::BadRequest(format!(
            "the kind in the data ({}) is not Scale",
            scale["kind"]
        )));
    }
    scale["kind"] = json!("Scale");
    scale["apiVersion"] = json!("autoscaling/v1");
    let report = typed::check_scale(scale);
    let prefix = "Scale in version \"v1\" cannot be handled as a Scale";
    if !report.type_errors.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "{prefix}: {}",
            report.type_errors.join(", ")
        )));
    }
    let strict = query.get("fieldValidation").is_some_and(|v| v == "Strict");
    if strict && !report.unknown.is_empty() {
        let unknown: Vec<String> = report
            .unknown
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect();
        return Err(ApiError::BadRequest(format!(
            "{prefix}: strict decoding error: {}",
            unknown.join(", ")
        )));
    }
    Ok(())
}

pub async fn handle(
    state: &ApiState,
    method: &Method,
    target: &Target,
    name: &str,
    query: &Query,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let info = target.info;
    let namespace = target.namespace.as_deref();
    let served =
        find(state, info, namespace, name).ok_or_else(|| ApiError::not_found(info.plural, name))?;
    let current = scale_of(&served);
    let mut wanted = match *method {
        Method::GET => return Ok(json_response(StatusCode::OK, &current)),
        Method::PUT => {
            let body = read_body(body, headers, state.config.max_body_bytes).await?;
            parse_body(headers, &body)?
        }
        Method::PATCH => {
            let body = read_body(body, headers, state.config.max_body_bytes).await?;
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let kind = PatchKind::from_content_type(content_type)
                .ok_or_else(|| ApiError::UnsupportedMediaType(PatchKind::refusal(content_type)))?;
            let patch_body: Value = serde_json::from_slice(&body)
                .map_err(|e| ApiError::BadRequest(format!("the patch is not valid JSON: {e}")))?;
            patch::apply(kind, &current, &patch_body, no_merge_keys).map_err(|e| e.to_api())?
        }
        _ => return Err(ApiError::MethodNotAllowed),
    };
    if !wanted.is_object() {
        return Err(ApiError::BadRequest(
            "the body must be a JSON object".into(),
        ));
    }
    check(&mut wanted, query)?;
    let replicas = wanted["spec"]["replicas"].as_i64().unwrap_or(0);
    if replicas < 0 {
        return Err(ApiError::Invalid {
            kind: "Scale.autoscaling".into(),
            name: name.to_string(),
            causes: vec![Cause {
                reason: "FieldValueInvalid".into(),
                field: "spec.replicas".into(),
                message: format!("Invalid value: {replicas}: must be greater than or equal to 0"),
            }],
        });
    }
    let existing = find_stored(state, info, namespace, name)
        .ok_or_else(|| ApiError::not_found(info.plural, name))?;
    let mut object = existing.clone();
    object["spec"]["replicas"] = json!(replicas);
    // The Scale's resourceVersion (if any) is the precondition.
    object["metadata"]["resourceVersion"] = match wanted["metadata"]["resourceVersion"].as_str() {
        Some(rv) if method == Method::PUT => json!(rv),
        _ => json!(""),
    };
    let owner = FieldOwner::update(query, headers, "scale")?;
    let stored = store(
        state,
        target,
        name,
        &existing,
        object,
        query,
        &owner,
        &mut Vec::new(),
    )?;
    let mut response = current;
    response["spec"]["replicas"] = json!(replicas);
    response["metadata"]["resourceVersion"] = stored["metadata"]["resourceVersion"].clone();
    Ok(json_response(StatusCode::OK, &response))
}
