//! `NoExecute` taints (Kubernetes' taint-eviction controller), pure: a pod on a node with a
//! `NoExecute` taint it does not tolerate is deleted (its controller re-creates it
//! elsewhere); one that tolerates it for `tolerationSeconds` is deleted once that time has
//! passed since the later of the taint's `timeAdded` and the pod's placement on the node.
//! Pods that ended stay (a Job's record). The pod's binding is deleted with it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::object;
use super::snapshot::{LeaderCtx, PlannedEvent, PodKey, Write};
use super::Working;
use crate::model::taint::{self, Effect};
use crate::model::workload::{EventReason, EventType, InvolvedObject, PODS};
use crate::model::NodeSettings;

/// Deletes the pods of `w` that must leave their node; returns the earliest later time at
/// which another must (a bounded toleration running out).
pub(crate) fn evict(
    w: &mut Working<'_>,
    settings: &BTreeMap<String, NodeSettings>,
    ctx: &LeaderCtx,
    writes: &mut Vec<Write>,
    events: &mut Vec<PlannedEvent>,
) -> Option<DateTime<Utc>> {
    let tainted: BTreeMap<&str, &NodeSettings> = settings
        .iter()
        .filter(|(_, s)| s.taints.iter().any(|t| t.effect == Effect::NoExecute))
        .map(|(n, s)| (n.as_str(), s))
        .collect();
    if tainted.is_empty() {
        return None;
    }
    let mut wake: Option<DateTime<Utc>> = None;
    let mut gone: Vec<(PodKey, String)> = Vec::new();
    for (key, pod) in &w.pods {
        if w.finished.contains_key(key) || !object::is_valid(pod) {
            continue;
        }
        // The node and when the pod was placed there: its binding's time, or the creation
        // of a pod created with `spec.nodeName`.
        let (node, bound) = match pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            Some(n) => (n, created(pod)),
            None => match w.bindings.get(key) {
                Some(b) if b.pod_uid == object::uid(pod) => (b.node.as_str(), Some(b.at)),
                _ => continue,
            },
        };
        let Some(s) = tainted.get(node) else { continue };
        if super::statefulset::holds_identity(pod) && object::is_terminating(pod) {
            continue; // already going; its identity stays taken until it is gone
        }
        let tolerations = taint::tolerations(&pod["spec"]);
        match taint::no_execute_deadline(&s.taints, &tolerations, bound) {
            Some(at) if at <= ctx.now => gone.push((key.clone(), node.to_string())),
            Some(at) => wake = Some(wake.map_or(at, |w| w.min(at))),
            None => {}
        }
    }
    for (key, node) in gone {
        let Some(pod) = w.pods.remove(&key) else {
            continue;
        };
        // A StatefulSet's pod is deleted gracefully: its name stays taken (and its binding
        // kept) until its kubelet has stopped it, so its identity never runs twice.
        let marked = super::statefulset::holds_identity(&pod)
            .then(|| super::statefulset::terminating(&pod, ctx.now));
        events.push(PlannedEvent {
            involved: InvolvedObject {
                api_version: "v1".into(),
                kind: "Pod".into(),
                namespace: key.0.clone(),
                name: key.1.clone(),
                uid: object::uid(&pod).to_string(),
            },
            event_type: EventType::Normal,
            reason: EventReason::TaintManagerEviction,
            message: format!(
                "Marking for deletion Pod {}/{} (a NoExecute taint of node {node})",
                key.0, key.1
            ),
            component: "taint-eviction-controller",
        });
        if let Some(marked) = marked {
            w.put_pod(writes, key, marked);
            continue;
        }
        writes.push(Write::DeleteObject {
            resource: PODS,
            namespace: key.0.clone(),
            name: key.1.clone(),
        });
        // The binding goes with the pod: its controller re-creates it under the same name and
        // uid (functions of the slot), and that pod must be placed afresh, not back on the
        // tainted node.
        if w.bindings.remove(&key).is_some() {
            writes.push(Write::DeleteBinding {
                namespace: key.0,
                pod: key.1,
            });
        }
    }
    wake
}

/// A pod's `metadata.creationTimestamp`, when it has a valid one.
fn created(pod: &serde_json::Value) -> Option<DateTime<Utc>> {
    let at = pod["metadata"]["creationTimestamp"].as_str()?;
    DateTime::parse_from_rfc3339(at)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}
