//! `v1` Node objects built from [`NodeView`]s: the node's own record plus the serving agent's
//! readiness view, its pod CIDR, and what users set on it ([`NodeSettings`]: labels,
//! annotations, taints, `unschedulable`). Nodes are rendered on every request; a write
//! (`kubectl label / annotate / taint / cordon`) is checked against what the node owns and
//! stores only the users' part.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::status::{ApiError, Cause};
use super::ApiState;
use crate::model::taint::{self, Effect};
use crate::model::{is_qualified_name, NodeSettings, NodeView, Readiness, NODE_SETTINGS};

/// Annotations the node sets itself start with this.
const OWN_ANNOTATION_PREFIX: &str = "shoal.dev/";
/// The label of the node this agent's view names the scheduler leader.
const LEADER_LABEL: &str = "node-role.kubernetes.io/leader";
/// Most bytes of users' annotations on one node (Kubernetes' limit for all of them).
const MAX_ANNOTATION_BYTES: usize = 256 << 10;

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

/// `spec`: the node's pod subnet, once it holds one (`model::ipam`), and the users' taints
/// and `unschedulable`.
fn spec(view: &NodeView, settings: Option<&NodeSettings>) -> Value {
    let mut spec = match &view.pod_cidr {
        Some(cidr) => json!({"podCIDR": cidr, "podCIDRs": [cidr]}),
        None => json!({}),
    };
    if let Some(s) = settings {
        if !s.taints.is_empty() {
            spec["taints"] = s.taints.iter().map(|t| t.to_json()).collect();
        }
        if s.unschedulable {
            spec["unschedulable"] = json!(true);
        }
    }
    spec
}

fn architecture(view: &NodeView) -> &str {
    let system = &view.record.system;
    let arch = if system.architecture.is_empty() {
        std::env::consts::ARCH
    } else {
        &system.architecture
    };
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn operating_system(view: &NodeView) -> &str {
    let os = &view.record.system.operating_system;
    if os.is_empty() {
        "linux"
    } else {
        os
    }
}

/// The labels the node sets itself (its record's and the well-known ones).
pub fn own_labels(view: &NodeView) -> Map<String, Value> {
    let record = &view.record;
    let mut labels = Map::new();
    for (k, v) in &record.labels {
        labels.insert(k.clone(), json!(v));
    }
    let os = operating_system(view);
    let arch = architecture(view);
    labels.insert("kubernetes.io/hostname".into(), json!(record.name));
    labels.insert("kubernetes.io/os".into(), json!(os));
    labels.insert("kubernetes.io/arch".into(), json!(arch));
    labels.insert("beta.kubernetes.io/os".into(), json!(os));
    labels.insert("beta.kubernetes.io/arch".into(), json!(arch));
    if view.is_leader {
        labels.insert(LEADER_LABEL.into(), json!(""));
    }
    labels
}

/// The annotations the node sets itself.
fn own_annotations(view: &NodeView) -> Map<String, Value> {
    let record = &view.record;
    let mut annotations = Map::new();
    annotations.insert("shoal.dev/peer-id".into(), json!(record.peer_id));
    annotations.insert("shoal.dev/p2p-addr".into(), json!(record.p2p_addr));
    annotations.insert("shoal.dev/api-addr".into(), json!(record.api_addr));
    annotations
}

/// The `v1` Node for one view, with the users' settings of it.
pub fn node_object(view: &NodeView, settings: Option<&NodeSettings>) -> Value {
    let record = &view.record;
    let system = &record.system;
    let os = operating_system(view);
    let arch = architecture(view);
    let mut labels = own_labels(view);
    let mut annotations = own_annotations(view);
    if let Some(s) = settings {
        for (k, v) in &s.labels {
            labels.entry(k.clone()).or_insert_with(|| json!(v));
        }
        for (k, v) in &s.annotations {
            annotations.entry(k.clone()).or_insert_with(|| json!(v));
        }
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
            "annotations": annotations,
        },
        "spec": spec(view, settings),
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
    // A users' write counts too (its resourceVersion is microseconds of this numbering).
    let changed = record.created.max(view.since).timestamp_micros().max(0);
    let written = settings
        .and_then(|s| s.resource_version.parse::<i64>().ok())
        .unwrap_or(0);
    node["metadata"]["resourceVersion"] = json!(changed.max(written).to_string());
    node
}

/// Every node with its users' settings, sorted by name.
pub fn node_objects(views: &[NodeView], settings: &BTreeMap<String, NodeSettings>) -> Vec<Value> {
    let mut nodes: Vec<Value> = views
        .iter()
        .map(|v| node_object(v, settings.get(&v.record.name)))
        .collect();
    nodes.sort_by(|a, b| {
        a["metadata"]["name"]
            .as_str()
            .cmp(&b["metadata"]["name"].as_str())
    });
    nodes
}

/// The users' settings of every node, as stored.
pub fn settings(state: &ApiState) -> BTreeMap<String, NodeSettings> {
    NodeSettings::by_node(&state.backend.list_objects(NODE_SETTINGS, None))
}

/// Every node as served.
pub fn served(state: &ApiState) -> Vec<Value> {
    node_objects(&state.backend.nodes(), &settings(state))
}

fn settings_key(name: &str) -> super::backend::ObjectKey {
    super::backend::ObjectKey {
        resource: NODE_SETTINGS.into(),
        namespace: None,
        name: name.into(),
    }
}

fn cause(reason: &str, field: impl Into<String>, message: impl Into<String>) -> Cause {
    Cause {
        reason: reason.into(),
        field: field.into(),
        message: message.into(),
    }
}

/// Splits a written string map into the users' part, checking that what the node owns
/// (`own`; for annotations also anything under `shoal.dev/`) is left as it is.
fn users_part(
    written: &Value,
    own: &Map<String, Value>,
    field: &str,
    owned: impl Fn(&str) -> bool,
    causes: &mut Vec<Cause>,
) -> BTreeMap<String, String> {
    let mut users = BTreeMap::new();
    let empty = Map::new();
    let map = match written {
        Value::Null => &empty,
        Value::Object(m) => m,
        _ => {
            causes.push(cause(
                "FieldValueInvalid",
                field,
                "must be a map of strings",
            ));
            return users;
        }
    };
    for (k, v) in own {
        if map.get(k) != Some(v) {
            causes.push(cause(
                "FieldValueForbidden",
                format!("{field}[{k}]"),
                format!("Forbidden: set by the node itself ({v}); it cannot be changed or removed"),
            ));
        }
    }
    for (k, v) in map {
        if own.contains_key(k) {
            continue;
        }
        if owned(k) {
            causes.push(cause(
                "FieldValueForbidden",
                format!("{field}[{k}]"),
                "Forbidden: this prefix is reserved for what the node sets itself",
            ));
            continue;
        }
        let Some(v) = v.as_str() else {
            causes.push(cause(
                "FieldValueInvalid",
                format!("{field}[{k}]"),
                format!("Invalid value: {v}: must be a string"),
            ));
            continue;
        };
        if !is_qualified_name(k) {
            causes.push(cause(
                "FieldValueInvalid",
                field,
                format!("Invalid value: {k:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (with an optional DNS subdomain prefix and '/')"),
            ));
        }
        users.insert(k.clone(), v.to_string());
    }
    users
}

/// The settings a write of node `view` (the whole object after the patch, or the body of a
/// PUT) stands for, or why it is refused. What the node reports itself (status, addresses,
/// pod CIDR) is not the users' to change: status is ignored as on any main resource; spec and
/// metadata fields shoal does not support are refused, naming the field. A `NoExecute` taint
/// without `timeAdded` gets `now` (or the time of the same taint already there).
pub fn settings_from_write(
    view: &NodeView,
    old: Option<&NodeSettings>,
    written: &Value,
    now: chrono::DateTime<chrono::Utc>,
    resource_version: String,
) -> Result<NodeSettings, Vec<Cause>> {
    let mut causes = Vec::new();
    let meta = &written["metadata"];
    let labels = users_part(
        &meta["labels"],
        &own_labels(view),
        "metadata.labels",
        |k| k == LEADER_LABEL,
        &mut causes,
    );
    for (k, v) in &labels {
        if !crate::model::is_label_value(v) {
            causes.push(cause(
                "FieldValueInvalid",
                format!("metadata.labels[{k}]"),
                format!("Invalid value: {v:?}: a valid label must be an empty string or consist of at most 63 alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"),
            ));
        }
    }
    let annotations = users_part(
        &meta["annotations"],
        &own_annotations(view),
        "metadata.annotations",
        |k| k.starts_with(OWN_ANNOTATION_PREFIX),
        &mut causes,
    );
    let size: usize = annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_ANNOTATION_BYTES {
        causes.push(cause(
            "FieldValueTooLong",
            "metadata.annotations",
            format!("Too long: must have at most {MAX_ANNOTATION_BYTES} bytes"),
        ));
    }
    for field in ["finalizers", "ownerReferences"] {
        if meta[field].as_array().is_some_and(|a| !a.is_empty()) {
            causes.push(cause(
                "FieldValueForbidden",
                format!("metadata.{field}"),
                "Forbidden: not supported on nodes by shoal",
            ));
        }
    }
    let spec = &written["spec"];
    let mut unschedulable = false;
    let mut taints = Vec::new();
    match spec {
        Value::Null => {}
        Value::Object(fields) => {
            for (k, v) in fields {
                match k.as_str() {
                    "taints" => match taint::parse_taints(v, "spec.taints") {
                        Ok(t) => taints = t,
                        Err(problems) => causes.extend(
                            problems
                                .into_iter()
                                .map(|(f, m)| cause("FieldValueInvalid", f, m)),
                        ),
                    },
                    "unschedulable" => match v {
                        Value::Null => {}
                        Value::Bool(b) => unschedulable = *b,
                        other => causes.push(cause(
                            "FieldValueInvalid",
                            "spec.unschedulable",
                            format!("Invalid value: {other}: must be a boolean"),
                        )),
                    },
                    "podCIDR" | "podCIDRs" => {
                        let own = match (&view.pod_cidr, k.as_str()) {
                            (Some(c), "podCIDR") => json!(c),
                            (Some(c), _) => json!([c]),
                            (None, _) => Value::Null,
                        };
                        let same = *v == own || (v.is_null() && view.pod_cidr.is_none());
                        if !same {
                            causes.push(cause(
                                "FieldValueForbidden",
                                format!("spec.{k}"),
                                "Forbidden: the node claims its pod CIDR itself; it cannot be changed",
                            ));
                        }
                    }
                    other => {
                        if !v.is_null() {
                            causes.push(cause(
                                "FieldValueForbidden",
                                format!("spec.{other}"),
                                "Forbidden: not supported on nodes by shoal (supported: taints, unschedulable)",
                            ));
                        }
                    }
                }
            }
        }
        other => causes.push(cause(
            "FieldValueInvalid",
            "spec",
            format!("Invalid value: {other}: must be an object"),
        )),
    }
    if !causes.is_empty() {
        return Err(causes);
    }
    for t in taints.iter_mut().filter(|t| t.effect == Effect::NoExecute) {
        if t.time_added.is_none() {
            let before = old
                .into_iter()
                .flat_map(|o| &o.taints)
                .find(|o| o.key == t.key && o.effect == t.effect && o.value == t.value)
                .and_then(|o| o.time_added);
            t.time_added = Some(before.unwrap_or(now));
        }
    }
    Ok(NodeSettings {
        labels,
        annotations,
        taints,
        unschedulable,
        resource_version,
    })
}

/// Stores a users' write of node `name` (`written`: the object after the patch, or the body
/// of a PUT); returns the node as it is now served (for a dry run, as it would be).
pub fn store(state: &ApiState, name: &str, written: &Value, dry: bool) -> Result<Value, ApiError> {
    let views = state.backend.nodes();
    let view = views
        .iter()
        .find(|v| v.record.name == name)
        .ok_or_else(|| ApiError::not_found("nodes", name))?;
    let old = settings(state).remove(name);
    let settings = settings_from_write(
        view,
        old.as_ref(),
        written,
        chrono::Utc::now(),
        state.versions.next(),
    )
    .map_err(|causes| ApiError::Invalid {
        kind: "Node".into(),
        name: name.into(),
        causes,
    })?;
    if !dry {
        state
            .backend
            .put_object(&settings_key(name), settings.to_object(name))?;
    }
    Ok(node_object(view, Some(&settings)))
}

/// Forgets the users' settings of a node that was deleted.
pub fn forget(state: &ApiState, name: &str) -> Result<(), ApiError> {
    state.backend.delete_object(&settings_key(name))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NodeRecord, NodeSystemInfo};
    use chrono::{DateTime, Utc};

    fn view() -> NodeView {
        let created = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        NodeView {
            record: NodeRecord {
                name: "n2".into(),
                uid: "u".into(),
                peer_id: "p".into(),
                p2p_addr: "/ip4/10.77.0.3/udp/7946/quic-v1".into(),
                api_addr: "10.77.0.3:6443".into(),
                internal_ip: "10.77.0.3".into(),
                created,
                labels: Default::default(),
                capacity: Default::default(),
                system: NodeSystemInfo::default(),
            },
            readiness: Readiness::Ready,
            since: created,
            is_leader: true,
            pod_cidr: Some("10.244.1.0/24".into()),
            pressure: None,
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-02-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    /// What kubectl's strategic merge patch leaves: the served object with the patch applied.
    fn written(change: impl Fn(&mut Value)) -> Value {
        let mut node = node_object(&view(), None);
        change(&mut node);
        node
    }

    fn fields(result: Result<NodeSettings, Vec<Cause>>) -> Vec<String> {
        result.unwrap_err().into_iter().map(|c| c.field).collect()
    }

    #[test]
    fn users_labels_annotations_taints_and_cordon_round_trip() {
        let w = written(|n| {
            n["metadata"]["labels"]["disk"] = json!("ssd");
            n["metadata"]["annotations"]["team"] = json!("infra");
            n["spec"]["taints"] = json!([
                {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
                {"key": "maint", "effect": "NoExecute"},
            ]);
            n["spec"]["unschedulable"] = json!(true);
            n["status"] = json!({"anything": "ignored as on every main resource"});
        });
        let s = settings_from_write(&view(), None, &w, now(), "7".into()).unwrap();
        assert_eq!(s.labels, BTreeMap::from([("disk".into(), "ssd".into())]));
        assert_eq!(
            s.annotations,
            BTreeMap::from([("team".into(), "infra".into())])
        );
        assert!(s.unschedulable);
        assert_eq!(s.taints[1].time_added, Some(now()));
        let (name, back) = NodeSettings::from_object(&s.to_object("n2")).unwrap();
        assert_eq!((name.as_str(), &back), ("n2", &s));
        let served = node_object(&view(), Some(&s));
        assert_eq!(served["metadata"]["labels"]["disk"], "ssd");
        assert_eq!(served["metadata"]["labels"]["kubernetes.io/hostname"], "n2");
        assert_eq!(served["metadata"]["annotations"]["team"], "infra");
        assert_eq!(served["spec"]["unschedulable"], true);
        assert_eq!(served["spec"]["podCIDR"], "10.244.1.0/24");
        assert_eq!(served["spec"]["taints"][0]["key"], "dedicated");
        // Writing the served object back changes nothing; an unchanged NoExecute taint keeps
        // the time it was added.
        let later = now() + chrono::Duration::hours(1);
        let again = settings_from_write(&view(), Some(&s), &served, later, "7".into()).unwrap();
        assert_eq!(again, s);
        let mut untimed = served.clone();
        untimed["spec"]["taints"][1]
            .as_object_mut()
            .unwrap()
            .remove("timeAdded");
        let kept = settings_from_write(&view(), Some(&s), &untimed, later, "8".into()).unwrap();
        assert_eq!(kept.taints[1].time_added, Some(now()));
        // Removing a label, the taints and the cordon.
        let mut cleared = served;
        cleared["metadata"]["labels"]
            .as_object_mut()
            .unwrap()
            .remove("disk");
        cleared["spec"]["taints"] = Value::Null;
        cleared["spec"]["unschedulable"] = Value::Null;
        let s = settings_from_write(&view(), Some(&s), &cleared, later, "9".into()).unwrap();
        assert!(s.labels.is_empty() && s.taints.is_empty() && !s.unschedulable);
    }

    #[test]
    fn what_the_node_owns_or_shoal_lacks_is_refused_by_field() {
        let f = |change: fn(&mut Value)| {
            fields(settings_from_write(
                &view(),
                None,
                &written(change),
                now(),
                "1".into(),
            ))
        };
        assert_eq!(
            f(|n| n["metadata"]["labels"]["kubernetes.io/hostname"] = json!("other")),
            ["metadata.labels[kubernetes.io/hostname]"]
        );
        assert_eq!(
            f(|n| {
                n["metadata"]["labels"]
                    .as_object_mut()
                    .unwrap()
                    .remove("kubernetes.io/os");
            }),
            ["metadata.labels[kubernetes.io/os]"]
        );
        assert_eq!(
            f(|n| n["metadata"]["annotations"]["shoal.dev/mine"] = json!("x")),
            ["metadata.annotations[shoal.dev/mine]"]
        );
        assert_eq!(
            f(|n| n["metadata"]["labels"]["bad key!"] = json!("x")),
            ["metadata.labels"]
        );
        assert_eq!(
            f(|n| n["metadata"]["labels"]["k"] = json!("not a label value")),
            ["metadata.labels[k]"]
        );
        assert_eq!(
            f(|n| n["spec"]["podCIDR"] = json!("10.9.0.0/24")),
            ["spec.podCIDR"]
        );
        assert_eq!(
            f(|n| n["spec"]["providerID"] = json!("aws://x")),
            ["spec.providerID"]
        );
        assert_eq!(
            f(|n| n["spec"]["unschedulable"] = json!("yes")),
            ["spec.unschedulable"]
        );
        assert_eq!(
            f(|n| n["spec"]["taints"] = json!([{"key": "k", "effect": "Maybe"}])),
            ["spec.taints[0].effect"]
        );
        assert_eq!(
            f(|n| n["metadata"]["finalizers"] = json!(["x"])),
            ["metadata.finalizers"]
        );
        assert_eq!(f(|n| n["spec"] = json!(3)), ["spec"]);
    }
}
