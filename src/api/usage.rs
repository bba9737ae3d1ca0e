//! `metrics.k8s.io/v1beta1` (what `kubectl top` reads): NodeMetrics and PodMetrics rendered
//! from every node's CPU and memory use ([`NodeUsage`], sampled from cgroups by each agent and
//! gathered by the serving one through [`super::Backend::usage`]). Read-only: `get` and `list`.

use std::collections::BTreeMap;

use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::objects::Target;
use super::selectors::LabelSelector;
use super::status::ApiError;
use super::ApiState;

/// The API group and version `kubectl top` asks for.
pub const GROUP: &str = "metrics.k8s.io";

/// One container's use, over the node's last sampling window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerUsage {
    pub name: String,
    /// CPU in nanocores (1e9: one core busy the whole window).
    pub cpu_nanocores: u64,
    /// Memory working set in bytes.
    pub memory_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodUsage {
    pub namespace: String,
    pub name: String,
    pub containers: Vec<ContainerUsage>,
}

/// What one node measured: the host and the pods it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeUsage {
    pub node: String,
    /// End of the sampling window.
    pub timestamp: DateTime<Utc>,
    pub window_ms: u64,
    pub cpu_nanocores: u64,
    pub memory_bytes: u64,
    pub pods: Vec<PodUsage>,
}

fn quantities(cpu_nanocores: u64, memory_bytes: u64) -> Value {
    json!({
        "cpu": format!("{cpu_nanocores}n"),
        "memory": format!("{}Ki", memory_bytes / 1024),
    })
}

fn window(ms: u64) -> String {
    format!("{}s", (ms as f64 / 1000.0).max(0.001))
}

pub fn node_metrics(u: &NodeUsage) -> Value {
    json!({
        "kind": "NodeMetrics",
        "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": {"name": u.node, "creationTimestamp": u.timestamp.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)},
        "timestamp": u.timestamp.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "window": window(u.window_ms),
        "usage": quantities(u.cpu_nanocores, u.memory_bytes),
    })
}

pub fn pod_metrics(node: &NodeUsage, p: &PodUsage, labels: &BTreeMap<String, String>) -> Value {
    let containers: Vec<Value> = p
        .containers
        .iter()
        .map(|c| json!({"name": c.name, "usage": quantities(c.cpu_nanocores, c.memory_bytes)}))
        .collect();
    json!({
        "kind": "PodMetrics",
        "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": {
            "name": p.name,
            "namespace": p.namespace,
            "labels": labels,
            "creationTimestamp": node.timestamp.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        },
        "timestamp": node.timestamp.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "window": window(node.window_ms),
        "containers": containers,
    })
}

/// A named get answers with its one item (404 naming `resource` if there is none); a list
/// answers with all of them as a `list_kind`.
fn respond(
    target: &Target,
    items: Vec<Value>,
    resource: &str,
    list_kind: &str,
) -> Result<Response, ApiError> {
    match &target.name {
        Some(name) => items
            .into_iter()
            .next()
            .map(|v| Json(v).into_response())
            .ok_or_else(|| ApiError::not_found(resource, name)),
        None => Ok(Json(list(list_kind, items)).into_response()),
    }
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({
        "kind": kind,
        "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": {},
        "items": items,
    })
}

/// The labels of every stored pod, by (namespace, name): for label selectors.
fn pod_labels(
    state: &ApiState,
    namespace: Option<&str>,
) -> BTreeMap<(String, String), BTreeMap<String, String>> {
    state
        .backend
        .list_objects("pods", namespace)
        .into_iter()
        .filter_map(|p| {
            let ns = p["metadata"]["namespace"].as_str()?.to_string();
            let name = p["metadata"]["name"].as_str()?.to_string();
            let labels = p["metadata"]["labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .collect()
                })
                .unwrap_or_default();
            Some(((ns, name), labels))
        })
        .collect()
}

/// `GET /apis/metrics.k8s.io/v1beta1/...`.
pub(crate) async fn handle(
    state: ApiState,
    method: Method,
    target: Target,
    query: BTreeMap<String, String>,
) -> Result<Response, ApiError> {
    if method != Method::GET {
        return Err(ApiError::MethodNotAllowed);
    }
    if target.subresource.is_some() || query.get("watch").is_some_and(|w| w == "true" || w == "1") {
        return Err(ApiError::BadRequest(
            "metrics.k8s.io serves get and list only".into(),
        ));
    }
    let selector = match query.get("labelSelector") {
        Some(s) => Some(LabelSelector::parse(s)?),
        None => None,
    };
    let usage = state
        .backend
        .usage()
        .await
        .map_err(|e| ApiError::Unavailable(format!("metrics: {e}")))?;
    match target.info.plural {
        "nodes" => {
            let nodes = state.backend.nodes();
            let labels: BTreeMap<String, BTreeMap<String, String>> = nodes
                .iter()
                .map(|n| (n.record.name.clone(), n.record.labels.clone()))
                .collect();
            let wanted = |u: &&NodeUsage| {
                target.name.as_ref().is_none_or(|n| *n == u.node)
                    && selector.as_ref().is_none_or(|s| {
                        s.matches_labels(&labels.get(&u.node).cloned().unwrap_or_default())
                    })
            };
            let items: Vec<Value> = usage.iter().filter(wanted).map(node_metrics).collect();
            respond(&target, items, "nodes.metrics.k8s.io", "NodeMetricsList")
        }
        _ => {
            let labels = pod_labels(&state, target.namespace.as_deref());
            let mut items = Vec::new();
            for node in &usage {
                for p in &node.pods {
                    let key = (p.namespace.clone(), p.name.clone());
                    let Some(l) = labels.get(&key) else { continue };
                    let in_scope = target
                        .namespace
                        .as_ref()
                        .is_none_or(|ns| *ns == p.namespace)
                        && target.name.as_ref().is_none_or(|n| *n == p.name)
                        && selector.as_ref().is_none_or(|s| s.matches_labels(l));
                    if in_scope {
                        items.push(pod_metrics(node, p, l));
                    }
                }
            }
            respond(&target, items, "pods.metrics.k8s.io", "PodMetricsList")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_kubectl_top_shapes() {
        let at = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let node = NodeUsage {
            node: "n1".into(),
            timestamp: at,
            window_ms: 5000,
            cpu_nanocores: 1_000_000_000,
            memory_bytes: 64 << 20,
            pods: vec![PodUsage {
                namespace: "default".into(),
                name: "busy".into(),
                containers: vec![ContainerUsage {
                    name: "c".into(),
                    cpu_nanocores: 990_000_000,
                    memory_bytes: 2048,
                }],
            }],
        };
        let n = node_metrics(&node);
        assert_eq!(
            n["usage"],
            json!({"cpu": "1000000000n", "memory": "65536Ki"})
        );
        assert_eq!(n["window"], "5s");
        assert_eq!(n["timestamp"], "2026-01-02T03:04:05Z");
        let p = pod_metrics(&node, &node.pods[0], &BTreeMap::new());
        assert_eq!(p["metadata"]["namespace"], "default");
        assert_eq!(p["containers"][0]["usage"]["cpu"], "990000000n");
        assert_eq!(p["containers"][0]["usage"]["memory"], "2Ki");
    }
}
