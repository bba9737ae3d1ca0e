//! `GET /api/v1/namespaces/{ns}/pods/{name}/log`: Kubernetes' PodLogOptions from the query,
//! the container checked against the pod spec here, and the bytes streamed as `text/plain`
//! from `Backend::pod_logs` (a follow stays open until the stream ends, the client goes away
//! or the server shuts down).

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::Response;
use futures::StreamExt;
use serde_json::Value;

use super::backend::LogRequest;
use super::objects::{find_stored, is_true, Target};
use super::status::ApiError;
use super::ApiState;

type Query = std::collections::BTreeMap<String, String>;

fn number(query: &Query, field: &str) -> Result<Option<i64>, ApiError> {
    match query.get(field).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v
            .parse::<i64>()
            .map(Some)
            .map_err(|_| ApiError::BadRequest(format!("invalid {field} {v:?}: not an integer"))),
    }
}

fn names(pod: &Value, list: &str) -> Vec<String> {
    pod["spec"][list]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect()
}

/// The log request for `pod` from the query, with Kubernetes' checks and messages.
pub fn log_request(pod: &Value, query: &Query) -> Result<LogRequest, ApiError> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let containers = names(pod, "containers");
    let init = names(pod, "initContainers");
    let container = match query.get("container").filter(|c| !c.is_empty()) {
        Some(c) if containers.contains(c) || init.contains(c) => c.clone(),
        Some(c) => {
            return Err(ApiError::BadRequest(format!(
                "container {c} is not valid for pod {name}"
            )))
        }
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            let mut message = format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            );
            if !init.is_empty() {
                message.push_str(&format!(
                    " or one of the init containers: [{}]",
                    init.join(" ")
                ));
            }
            return Err(ApiError::BadRequest(message));
        }
    };
    let tail_lines = number(query, "tailLines")?;
    let since_seconds = number(query, "sinceSeconds")?;
    let limit_bytes = number(query, "limitBytes")?;
    if tail_lines.is_some_and(|t| t < 0) {
        return Err(ApiError::BadRequest(
            "tailLines: Invalid value: must be greater than or equal to 0".into(),
        ));
    }
    if since_seconds.is_some_and(|s| s < 1) {
        return Err(ApiError::BadRequest(
            "sinceSeconds: Invalid value: must be greater than 0".into(),
        ));
    }
    if limit_bytes.is_some_and(|l| l < 1) {
        return Err(ApiError::BadRequest(
            "limitBytes: Invalid value: must be greater than 0".into(),
        ));
    }
    let since_time = query.get("sinceTime").filter(|t| !t.is_empty()).cloned();
    if let Some(t) = &since_time {
        chrono::DateTime::parse_from_rfc3339(t)
            .map_err(|_| ApiError::BadRequest(format!("invalid sinceTime {t:?}: not RFC 3339")))?;
    }
    if since_time.is_some() && since_seconds.is_some() {
        return Err(ApiError::BadRequest(
            "at most one of `sinceTime` or `sinceSeconds` may be specified".into(),
        ));
    }
    Ok(LogRequest {
        namespace: pod["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        pod: name.to_string(),
        container: Some(container),
        follow: is_true(query.get("follow")),
        previous: is_true(query.get("previous")),
        timestamps: is_true(query.get("timestamps")),
        tail_lines: tail_lines.map(|t| t as u64),
        since_seconds: since_seconds.map(|s| s as u64),
        since_time,
        limit_bytes: limit_bytes.map(|l| l as u64),
    })
}

pub async fn respond(
    state: &ApiState,
    target: &Target,
    name: &str,
    query: &Query,
) -> Result<Response, ApiError> {
    let pod = find_stored(state, target.info, target.namespace.as_deref(), name)
        .ok_or_else(|| ApiError::not_found(target.info.plural, name))?;
    let request = log_request(&pod, query)?;
    let stream = state.backend.pod_logs(request).await?;
    let mut shutdown = state.shutdown.clone();
    let stopped = async move {
        let _ = shutdown.wait_for(|stopping| *stopping).await;
    };
    let stream = stream.take_until(Box::pin(stopped));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::Internal(format!("building the log response: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn query(pairs: &[(&str, &str)]) -> Query {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn container_is_required_when_several() {
        let pod = json!({"metadata": {"name": "web-x", "namespace": "default"},
                         "spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        let err = log_request(&pod, &query(&[])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a container name must be specified for pod web-x, choose one of: [a b]"
        );
        let err = log_request(&pod, &query(&[("container", "c")])).unwrap_err();
        assert_eq!(err.to_string(), "container c is not valid for pod web-x");
        let req = log_request(
            &pod,
            &query(&[
                ("container", "b"),
                ("follow", "true"),
                ("previous", "true"),
                ("tailLines", "5"),
            ]),
        )
        .unwrap();
        assert_eq!(req.container.as_deref(), Some("b"));
        assert!(req.follow && req.previous && !req.timestamps);
        assert_eq!(req.tail_lines, Some(5));
        assert_eq!(req.namespace, "default");
    }

    #[test]
    fn options_are_checked() {
        let pod = json!({"metadata": {"name": "p", "namespace": "default"},
                         "spec": {"containers": [{"name": "a"}]}});
        assert_eq!(
            log_request(&pod, &query(&[])).unwrap().container.as_deref(),
            Some("a")
        );
        assert!(log_request(&pod, &query(&[("tailLines", "-1")])).is_err());
        assert!(log_request(&pod, &query(&[("sinceSeconds", "0")])).is_err());
        assert!(log_request(&pod, &query(&[("sinceTime", "yesterday")])).is_err());
        assert!(log_request(
            &pod,
            &query(&[("sinceTime", "2024-01-01T00:00:00Z"), ("sinceSeconds", "5")])
        )
        .is_err());
        let req = log_request(
            &pod,
            &query(&[("sinceSeconds", "10"), ("limitBytes", "100")]),
        )
        .unwrap();
        assert_eq!((req.since_seconds, req.limit_bytes), (Some(10), Some(100)));
    }
}
