//! Discovery as kubectl expects it: `/version`, `/api`, `/api/v1`, `/apis`, `/apis/{g}/{v}`,
//! all built from the resource table, and the health endpoints. Aggregated discovery
//! (`apidiscovery.k8s.io/v2`) is not served: replying with plain `application/json` makes
//! client-go fall back to these legacy documents.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::resources::{self, ResourceInfo};
use super::status::ApiError;
use super::ApiState;

pub async fn version() -> Json<Value> {
    let os_arch = format!(
        "{}/{}",
        std::env::consts::OS,
        match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        }
    );
    Json(json!({
        "major": "1",
        "minor": "32",
        "gitVersion": format!("v1.32.0-shoal.{}", crate::VERSION),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": os_arch,
    }))
}

pub async fn api_versions(headers: HeaderMap) -> Json<Value> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let versions: Vec<&str> = resources::group_versions()
        .into_iter()
        .filter(|(g, _)| g.is_empty())
        .map(|(_, v)| v)
        .collect();
    Json(json!({
        "kind": "APIVersions",
        "versions": versions,
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
    }))
}

fn group_json(group: &str) -> Value {
    let versions: Vec<Value> = resources::group_versions()
        .into_iter()
        .filter(|(g, _)| *g == group)
        .map(|(g, v)| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    json!({
        "name": group,
        "versions": versions,
        "preferredVersion": versions.first().cloned().unwrap_or(Value::Null),
    })
}

fn named_groups() -> Vec<&'static str> {
    let mut groups: Vec<&str> = Vec::new();
    for (g, _) in resources::group_versions() {
        if !g.is_empty() && !groups.contains(&g) {
            groups.push(g);
        }
    }
    groups
}

pub async fn api_groups() -> Json<Value> {
    let groups: Vec<Value> = named_groups().into_iter().map(group_json).collect();
    Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
}

pub async fn api_group(Path(group): Path<String>) -> Result<Json<Value>, ApiError> {
    if !named_groups().contains(&group.as_str()) {
        return Err(ApiError::NoRoute);
    }
    let mut body = group_json(&group);
    body["kind"] = json!("APIGroup");
    body["apiVersion"] = json!("v1");
    Ok(Json(body))
}

fn resource_json(info: &ResourceInfo) -> Value {
    let mut entry = json!({
        "name": info.plural,
        "singularName": info.singular,
        "namespaced": info.namespaced,
        "kind": info.kind,
        "verbs": info.verbs,
    });
    if !info.short_names.is_empty() {
        entry["shortNames"] = json!(info.short_names);
    }
    if !info.categories.is_empty() {
        entry["categories"] = json!(info.categories);
    }
    entry
}

/// `deployments/scale` and friends: client-go's scale client finds the Scale kind here.
fn subresource_json(info: &ResourceInfo) -> Vec<Value> {
    info.subresources
        .iter()
        .map(|sub| {
            let mut entry = json!({
                "name": format!("{}/{}", info.plural, sub.name),
                "singularName": "",
                "namespaced": info.namespaced,
                "kind": info.kind,
                "verbs": sub.verbs,
            });
            if let Some((group, version, kind)) = sub.kind {
                entry["group"] = json!(group);
                entry["version"] = json!(version);
                entry["kind"] = json!(kind);
            }
            entry
        })
        .collect()
}

fn resource_list(group: &str, version: &str) -> Result<Json<Value>, ApiError> {
    let resources: Vec<Value> = resources::in_group_version(group, version)
        .flat_map(|info| std::iter::once(resource_json(info)).chain(subresource_json(info)))
        .collect();
    if resources.is_empty() {
        return Err(ApiError::NoRoute);
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Ok(Json(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    })))
}

pub async fn core_resources(Path(version): Path<String>) -> Result<Json<Value>, ApiError> {
    resource_list("", &version)
}

pub async fn group_resources(
    Path((group, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    resource_list(&group, &version)
}

/// `/healthz`, `/readyz`, `/livez`: this agent serves requests and can read its state.
pub async fn health(State(state): State<ApiState>) -> Response {
    let _ = state.backend.node_name();
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "ok").into_response()
}
