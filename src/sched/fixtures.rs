//! Test fixtures the scheduler's tests share: a fixed time, nodes, a leader's context, the
//! liveness of an all-alive cluster, pod keys.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Value};

use super::snapshot::{LeaderCtx, Liveness, PodKey, Snapshot};
use crate::model::{NodeRecord, NodeSystemInfo};

/// The tests' time zero: 2025-01-01T00:00:00Z.
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap()
}

/// A node created at [`t0`] with this capacity and no labels.
pub fn node_with(name: &str, cpu: &str, memory: &str, pods: u32) -> NodeRecord {
    NodeRecord {
        name: name.into(),
        uid: format!("uid-{name}"),
        peer_id: String::new(),
        p2p_addr: String::new(),
        api_addr: String::new(),
        internal_ip: String::new(),
        created: t0(),
        labels: BTreeMap::new(),
        capacity: [("cpu", cpu), ("memory", memory)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain([("pods".to_string(), pods.to_string())])
            .collect(),
        system: NodeSystemInfo::default(),
    }
}

/// A node with room for anything the tests run (64 CPUs, 256Gi, 1000 pods).
pub fn node(name: &str) -> NodeRecord {
    node_with(name, "64", "256Gi", 1000)
}

/// `node` with these labels.
pub fn labelled(mut node: NodeRecord, labels: &[(&str, &str)]) -> NodeRecord {
    node.labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    node
}

/// Every node of `nodes` alive.
pub fn all_alive(nodes: &[NodeRecord]) -> BTreeMap<String, Liveness> {
    nodes
        .iter()
        .map(|n| (n.name.clone(), Liveness::Alive))
        .collect()
}

/// A snapshot of `nodes`, all alive, and nothing else (the caller adds the objects).
pub fn cluster_of(nodes: Vec<NodeRecord>) -> Snapshot {
    Snapshot {
        liveness: all_alive(&nodes),
        nodes,
        ..Snapshot::default()
    }
}

/// The context of leader `node` of epoch 1 (view 1) at `now`.
pub fn leader_ctx(node: &str, now: DateTime<Utc>, seed: u64) -> LeaderCtx {
    LeaderCtx {
        node: node.into(),
        epoch: 1,
        view: 1,
        now,
        seed,
    }
}

/// `(namespace, name)` of an object.
pub fn key(v: &Value) -> PodKey {
    (
        v["metadata"]["namespace"].as_str().unwrap().to_string(),
        v["metadata"]["name"].as_str().unwrap().to_string(),
    )
}

/// A pod object named `name` with `labels` and one container, its spec extended by
/// `spec_extra`'s fields.
pub fn pod_object(name: &str, labels: Value, spec_extra: Value) -> Value {
    let mut spec = json!({"containers": [{"name": "c", "image": "i"}]});
    for (k, v) in spec_extra.as_object().into_iter().flatten() {
        spec[k] = v.clone();
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": format!("p-{name}"), "labels": labels},
        "spec": spec,
    })
}

/// A Deployment of `replicas` pods labelled `app: name`, their spec as [`pod_object`]'s.
pub fn deployment_object(name: &str, replicas: i64, spec_extra: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default", "uid": format!("d-{name}"), "generation": 1},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": pod_object("x", json!({}), spec_extra)["spec"]},
        },
    })
}
