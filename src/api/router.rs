//! Maps request paths to handlers: fixed routes for discovery, OpenAPI, health and shoal's own
//! routes; everything under `/api/{v}` and `/apis/{g}/{v}` goes through the resource table.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::objects::{self, Target};
use super::resources::{self, ResourceInfo};
use super::status::ApiError;
use super::{auth, discovery, exec, images, metrics, openapi, portforward, ApiState};

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/version", get(discovery::version))
        .route("/api", get(discovery::api_versions))
        .route("/apis", get(discovery::api_groups))
        .route("/api/{version}", get(discovery::core_resources))
        .route("/apis/{group}", get(discovery::api_group))
        .route("/apis/{group}/{version}", get(discovery::group_resources))
        .route("/healthz", get(discovery::health))
        .route("/readyz", get(discovery::health))
        .route("/livez", get(discovery::health))
        .route("/openapi/v3", get(openapi::index))
        .route("/openapi/v3/{*path}", get(openapi::document))
        .route("/metrics", get(metrics::scrape))
        .route("/shoal/v1/status", get(shoal_status))
        .route("/shoal/v1/usage", get(shoal_usage))
        .route("/shoal/v1/backup", get(shoal_backup))
        .route("/shoal/v1/images", get(images::list).delete(images::remove))
        .route("/shoal/v1/images/import", post(images::import))
        .route("/shoal/v1/images/pull", post(images::pull))
        .route("/shoal/v1/blobs/{digest}", get(images::blob))
        .route("/shoal/v1/blobs/{digest}/fetch", post(images::fetch))
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/exec",
            get(exec::handle).post(exec::handle),
        )
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/portforward",
            get(portforward::handle).post(portforward::handle),
        )
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/attach",
            get(attach_refused).post(attach_refused),
        )
        .fallback(dispatch)
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_timeout,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .with_state(state)
}

/// `kubectl attach` (and the attach of `kubectl run -it`) is refused at once with a reason, so
/// the client says why instead of waiting: containers' stdio are not attachable.
async fn attach_refused() -> ApiError {
    ApiError::BadRequest(
        "attach is not supported by shoal: a container's standard streams cannot be attached (its output is in `kubectl logs`); use `kubectl exec -it POD -- sh`".into(),
    )
}

/// Whether the query of `uri` sets boolean `name` (`true`, `1` or `True`).
fn query_flag(uri: &Uri, name: &str) -> bool {
    uri.query().is_some_and(|q| {
        form_urlencoded::parse(q.as_bytes())
            .any(|(k, v)| k == name && matches!(&*v, "true" | "1" | "True"))
    })
}

/// Whether a request is a watch (exempt from the request timeout; bounded by `max_watch`).
pub(super) fn is_watch(uri: &Uri) -> bool {
    let query_watch = query_flag(uri, "watch");
    query_watch || uri.path().contains("/watch/")
}

/// Requests exempt from the request timeout: watches, followed logs (they end with the
/// stream, the client or shutdown) and image uploads (their own timeout).
pub(super) fn is_long_running(uri: &Uri) -> bool {
    let follow = uri.path().ends_with("/log") && query_flag(uri, "follow");
    is_watch(uri) || follow || uri.path() == "/shoal/v1/images/import"
}

async fn request_timeout(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    if is_long_running(request.uri()) {
        return next.run(request).await;
    }
    match tokio::time::timeout(state.config.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout.into_response(),
    }
}

async fn shoal_status(State(state): State<ApiState>) -> Response {
    Json(state.backend.status()).into_response()
}

/// This node's own CPU and memory use (`null` before its second sample): what other nodes
/// gather for `metrics.k8s.io`.
async fn shoal_usage(State(state): State<ApiState>) -> Response {
    Json(state.backend.local_usage()).into_response()
}

async fn shoal_backup(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let backend = state.backend.clone();
    let bytes = tokio::task::spawn_blocking(move || backend.backup())
        .await
        .map_err(|e| ApiError::Internal(format!("backup task failed: {e}")))??;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// A request path resolved against the resource table.
pub(super) struct Resolved {
    pub target: Target,
    /// The legacy `/watch/` path prefix was used.
    pub watch_prefix: bool,
}

pub(super) fn resolve(path: &str) -> Option<Resolved> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest): (&str, &str, &[&str]) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", version, rest),
        ["apis", group, version, rest @ ..] => (group, version, rest),
        _ => return None,
    };
    let (watch_prefix, rest) = match rest {
        ["watch", tail @ ..] => (true, tail),
        _ => (false, rest),
    };
    let namespaced_info =
        |plural: &str| resources::find(group, version, plural).filter(|r| r.namespaced);
    let target = match rest {
        ["namespaces", namespace, plural, tail @ ..] if namespaced_info(plural).is_some() => {
            target(namespaced_info(plural)?, Some(namespace), tail)?
        }
        [plural, tail @ ..] => {
            let info = resources::find(group, version, plural)?;
            if info.namespaced && !tail.is_empty() {
                return None;
            }
            target(info, None, tail)?
        }
        [] => return None,
    };
    Some(Resolved {
        target,
        watch_prefix,
    })
}

fn target(info: &'static ResourceInfo, namespace: Option<&str>, tail: &[&str]) -> Option<Target> {
    let non_empty = |s: &&str| !s.is_empty();
    let (name, subresource) = match tail {
        [] => (None, None),
        [name] => (Some(name.to_string()), None),
        [name, sub] => (Some(name.to_string()), Some(sub.to_string())),
        _ => return None,
    };
    if namespace.is_some_and(|n| n.is_empty()) || tail.iter().any(|s| !non_empty(s)) {
        return None;
    }
    Some(Target {
        info,
        namespace: namespace.map(str::to_string),
        name,
        subresource,
    })
}

async fn dispatch(
    State(state): State<ApiState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let resolved = resolve(uri.path()).ok_or(ApiError::NoRoute)?;
    let Query(mut query) = Query::<BTreeMap<String, String>>::try_from_uri(&uri)
        .map_err(|e| ApiError::BadRequest(format!("invalid query: {e}")))?;
    if resolved.watch_prefix {
        query.insert("watch".into(), "true".into());
    }
    if resolved.target.info.storage == resources::Storage::Usage {
        return super::usage::handle(state, method, resolved.target, query).await;
    }
    objects::handle(state, method, resolved.target, query, headers, body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_resource_paths() {
        let r = resolve("/api/v1/namespaces/default/configmaps/x").unwrap();
        assert_eq!(r.target.info.plural, "configmaps");
        assert_eq!(r.target.namespace.as_deref(), Some("default"));
        assert_eq!(r.target.name.as_deref(), Some("x"));
        let r = resolve("/api/v1/namespaces/kube-system").unwrap();
        assert_eq!(r.target.info.plural, "namespaces");
        assert_eq!(r.target.name.as_deref(), Some("kube-system"));
        let r = resolve("/api/v1/configmaps").unwrap();
        assert!(r.target.namespace.is_none() && r.target.name.is_none());
        let r = resolve("/api/v1/watch/nodes").unwrap();
        assert!(r.watch_prefix);
        assert!(resolve("/api/v1/configmaps/x").is_none());
        assert!(resolve("/api/v1/widgets").is_none());
        assert!(resolve("/api/v1/namespaces/a/configmaps/b/c/d").is_none());
        assert!(resolve("/apis/apps/v1/widgets").is_none());
        let r = resolve("/apis/apps/v1/namespaces/default/deployments/web/scale").unwrap();
        assert_eq!(r.target.subresource.as_deref(), Some("scale"));
        assert!(is_long_running(
            &"/api/v1/namespaces/default/pods/p/log?follow=true"
                .parse()
                .unwrap()
        ));
        assert!(!is_long_running(
            &"/api/v1/namespaces/default/pods/p/log".parse().unwrap()
        ));
        assert!(is_watch(&"/api/v1/nodes?watch=true&x=1".parse().unwrap()));
        assert!(!is_watch(&"/api/v1/nodes?watch=false".parse().unwrap()));
    }
}
