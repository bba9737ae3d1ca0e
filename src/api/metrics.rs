//! The API's metrics: `GET /metrics` (the agent's exposition, behind the same TLS and token as
//! every route) and the middleware that counts every request by verb, resource and code,
//! times it to the response head, and keeps watches counted as open while their stream lives.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use super::router::{is_long_running, is_watch, resolve};
use super::status::ApiError;
use super::ApiState;

/// `GET /metrics`.
pub async fn scrape(State(state): State<ApiState>, request: Request) -> Response {
    let accept = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let backend = state.backend.clone();
    let scraped =
        tokio::task::spawn_blocking(move || backend.scrape_metrics(accept.as_deref())).await;
    match scraped {
        Ok(Some((content_type, body))) => {
            ([(header::CONTENT_TYPE, content_type)], body).into_response()
        }
        Ok(None) => ApiError::NoRoute.into_response(),
        Err(e) => ApiError::Internal(format!("metrics task failed: {e}")).into_response(),
    }
}

/// The `verb` and `resource` labels of a request: Kubernetes' verbs for resource paths (the
/// resource from the API's own table, so clients cannot invent label values), a fixed
/// category for the others.
pub fn labels(method: &Method, uri: &Uri) -> (&'static str, String) {
    let Some(resolved) = resolve(uri.path()) else {
        let path = uri.path();
        let category = if path == "/metrics" {
            "metrics"
        } else if matches!(path, "/healthz" | "/readyz" | "/livez") {
            "health"
        } else if path == "/version"
            || path == "/api"
            || path.starts_with("/api/")
            || path.starts_with("/apis")
        {
            "discovery"
        } else if path.starts_with("/openapi/") {
            "openapi"
        } else if path.starts_with("/shoal/v1/") {
            "shoal"
        } else {
            "other"
        };
        let verb = match *method {
            Method::GET => "get",
            Method::POST => "post",
            Method::PUT => "put",
            Method::PATCH => "patch",
            Method::DELETE => "delete",
            _ => "other",
        };
        return (verb, category.to_string());
    };
    let target = &resolved.target;
    let mut resource = if target.info.group.is_empty() {
        target.info.plural.to_string()
    } else {
        format!("{}.{}", target.info.plural, target.info.group)
    };
    if let Some(sub) = &target.subresource {
        if matches!(
            sub.as_str(),
            "status" | "scale" | "log" | "exec" | "binding" | "eviction"
        ) {
            resource.push('/');
            resource.push_str(sub);
        }
    }
    let named = target.name.is_some();
    let verb = if resolved.watch_prefix || is_watch(uri) {
        "watch"
    } else {
        match (method, named) {
            (&Method::GET, true) => "get",
            (&Method::GET, false) => "list",
            (&Method::POST, _) if target.subresource.as_deref() == Some("exec") => "connect",
            (&Method::POST, _) => "create",
            (&Method::PUT, _) => "update",
            (&Method::PATCH, _) => "patch",
            (&Method::DELETE, true) => "delete",
            (&Method::DELETE, false) => "deletecollection",
            _ => "other",
        }
    };
    (verb, resource)
}

/// Counts and times every request; a watch stays counted as open until its body ends.
pub async fn track(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let Some(metrics) = state.backend.metrics() else {
        return next.run(request).await;
    };
    let (verb, resource) = labels(request.method(), request.uri());
    let streaming = is_long_running(request.uri());
    let started = Instant::now();
    let response = next.run(request).await;
    let latency = (!streaming).then(|| started.elapsed());
    metrics.api_request(verb, &resource, response.status().as_u16(), latency);
    if verb != "watch" || !response.status().is_success() {
        return response;
    }
    let guard = metrics.watch_opened();
    let (parts, body) = response.into_parts();
    // The stream holds the guard: the watch counts as open until the body is dropped.
    let stream = body.into_data_stream().map(move |chunk| {
        let _open = &guard;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(method: Method, uri: &str) -> (&'static str, String) {
        labels(&method, &uri.parse().unwrap())
    }

    #[test]
    fn request_labels() {
        assert_eq!(
            l(Method::GET, "/api/v1/namespaces/default/pods"),
            ("list", "pods".into())
        );
        assert_eq!(
            l(Method::GET, "/api/v1/namespaces/default/pods/p"),
            ("get", "pods".into())
        );
        assert_eq!(
            l(Method::GET, "/api/v1/pods?watch=true"),
            ("watch", "pods".into())
        );
        assert_eq!(
            l(Method::GET, "/api/v1/watch/nodes"),
            ("watch", "nodes".into())
        );
        assert_eq!(
            l(Method::PATCH, "/apis/apps/v1/namespaces/d/deployments/web"),
            ("patch", "deployments.apps".into())
        );
        assert_eq!(
            l(
                Method::PUT,
                "/apis/apps/v1/namespaces/d/deployments/web/scale"
            ),
            ("update", "deployments.apps/scale".into())
        );
        assert_eq!(
            l(Method::GET, "/api/v1/namespaces/d/pods/p/log"),
            ("get", "pods/log".into())
        );
        assert_eq!(
            l(Method::DELETE, "/api/v1/namespaces/d/configmaps"),
            ("deletecollection", "configmaps".into())
        );
        assert_eq!(l(Method::GET, "/metrics"), ("get", "metrics".into()));
        assert_eq!(l(Method::GET, "/apis"), ("get", "discovery".into()));
        assert_eq!(
            l(Method::GET, "/openapi/v3/api/v1"),
            ("get", "openapi".into())
        );
        assert_eq!(l(Method::GET, "/shoal/v1/status"), ("get", "shoal".into()));
        // Unknown paths never become label values.
        assert_eq!(
            l(Method::GET, "/x/made-up-by-a-client"),
            ("get", "other".into())
        );
        assert_eq!(
            l(Method::GET, "/api/v1/widgets"),
            ("get", "discovery".into())
        );
    }
}
