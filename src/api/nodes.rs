//! `v1` Node objects built from [`NodeView`]s: the node's own record plus the serving agent's
//! readiness view, and its pod CIDR. Nodes are not stored as objects; they are rendered on
//! every request.

use serde_json::{json, Value};

use crate::model::{NodeView, Readiness};

fn ready_condition(view: &NodeView) -> Value {
    let (status, reason, message) = match view.readiness {
        Readiness::Ready => (
            "True",
            "ShoalAgentReady",
            "shoal agent is alive in the membership view",
        ),
        Readiness::Suspect => (
            "Unknown",
            "NodeStatusUnknown",
            "shoal agent is suspected: membership probes are failing",
        ),
        Readiness::NotReady => (
            "False",
            "ShoalAgentNotReady",
            "shoal agent is not alive in the membership view",
        ),
    };
    let since = view
        .since
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    json!({
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message,
        "lastHeartbeatTime": since,
        "lastTransitionTime": since,
    })
}

/// `RuntimePressure`: whether the node's kubelet is behind on its runtime work (a burst of pod
/// starts); while True the scheduler gives it no new pods.
fn pressure_condition(view: &NodeView) -> Value {
    let (status, reason, message, since) = match &view.pressure {
        Some(p) => (
            "True",
            "KubeletRuntimeBacklog",
            format!(
                "the kubelet has {} runtime actions queued or running; no new pods until it catches up",
                p.backlog
            ),
            p.since,
        ),
        None => (
            "False",
            "KubeletKeepingUp",
            "the kubelet keeps up with its pods".to_string(),
            view.record.created,
        ),
    };
    let since = since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    json!({
        "type": "RuntimePressure",
        "status": status,
        "reason": reason,
        "message": message,
        "lastHeartbeatTime": since,
        "lastTransitionTime": since,
    })
}

/// `spec`: the node's pod subnet, once it holds one (`model::ipam`).
fn spec(view: &NodeView) -> Value {
    match &view.pod_cidr {
        Some(cidr) => json!({"podCIDR": cidr, "podCIDRs": [cidr]}),
        None => json!({}),
    }
}

/// The `v1` Node for one view.
pub fn node_object(view: &NodeView) -> Value {
    let record = &view.record;
    let system = &record.system;
    let mut labels = serde_json::Map::new();
    for (k, v) in &record.labels {
        labels.insert(k.clone(), json!(v));
    }
    let os = if system.operating_system.is_empty() {
        "linux"
    } else {
        &system.operating_system
    };
    let arch = if system.architecture.is_empty() {
        std::env::consts::ARCH
    } else {
        &system.architecture
    };
    let arch = match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    labels.insert("kubernetes.io/hostname".into(), json!(record.name));
    labels.insert("kubernetes.io/os".into(), json!(os));
    labels.insert("kubernetes.io/arch".into(), json!(arch));
    labels.insert("beta.kubernetes.io/os".into(), json!(os));
    labels.insert("beta.kubernetes.io/arch".into(), json!(arch));
    if view.is_leader {
        labels.insert("node-role.kubernetes.io/leader".into(), json!(""));
    }
    let shoal_version = if system.shoal_version.is_empty() {
        crate::VERSION
    } else {
        &system.shoal_version
    };
    let mut node = json!({
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": record.name,
            "uid": record.uid,
            "creationTimestamp": record.created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "labels": labels,
            "annotations": {
                "shoal.dev/peer-id": record.peer_id,
                "shoal.dev/p2p-addr": record.p2p_addr,
                "shoal.dev/api-addr": record.api_addr,
            },
        },
        "spec": spec(view),
        "status": {
            "capacity": record.capacity,
            "allocatable": record.capacity,
            "conditions": [ready_condition(view), pressure_condition(view)],
            "addresses": [
                {"type": "InternalIP", "address": record.internal_ip},
                {"type": "Hostname", "address": record.name},
            ],
            "nodeInfo": {
                "machineID": system.machine_id,
                "systemUUID": system.machine_id,
                "bootID": "",
                "kernelVersion": system.kernel_version,
                "osImage": system.os_image,
                "containerRuntimeVersion": system.container_runtime_version,
                "kubeletVersion": format!("v1.32.0-shoal.{shoal_version}"),
                "kubeProxyVersion": format!("v1.32.0-shoal.{shoal_version}"),
                "operatingSystem": os,
                "architecture": arch,
            },
        },
    });
    // Microseconds of the last transition: comparable with the list resourceVersions this
    // server hands out, so a watch started from a list sees transitions made in between.
    let changed = record.created.max(view.since).timestamp_micros().max(0);
    node["metadata"]["resourceVersion"] = json!(changed.to_string());
    node
}

/// Every node, sorted by name.
pub fn node_objects(views: &[NodeView]) -> Vec<Value> {
    let mut nodes: Vec<Value> = views.iter().map(node_object).collect();
    nodes.sort_by(|a, b| {
        a["metadata"]["name"]
            .as_str()
            .cmp(&b["metadata"]["name"].as_str())
    });
    nodes
}
