//! The DaemonSet controller (apps/v1), pure: one pod per eligible node (its `nodeSelector` and
//! required node affinity against the node's labels). The slot is (DaemonSet, node): the pod
//! `<ds>-<suffix>` (suffix from the DaemonSet uid, the node and the template hash) is pinned
//! with `spec.nodeName`, so it needs no placement decision, two leaders write the same pod,
//! and a pod on a dead node stays there (it is never moved; it goes when the node is deleted
//! or stops matching). A template change rolls node by node: old pods are replaced while at
//! most `maxUnavailable` nodes lack an available pod (`OnDelete`: only pods deleted by hand).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value};

use super::hash::{derived_uid, hash64, safe_suffix, template_hash, without_nulls};
use super::object::{self, controller};
use super::podspec::NodePlacement;
use super::revisions;
use super::rollout::scaled;
use super::snapshot::{LeaderCtx, PlannedEvent, PodKey, Write};
use super::Working;
use crate::model::taint::{self, Effect};
use crate::model::workload::{EventReason, EventType, InvolvedObject, HOSTNAME_LABEL, PODS};
use crate::model::{NodeRecord, NodeSettings};

/// Label on a DaemonSet's pods: the hash of the template they run (Kubernetes' name).
pub const REVISION_LABEL: &str = "controller-revision-hash";
/// Annotation on a DaemonSet's pods: the node they belong to.
pub const NODE_ANNOTATION: &str = "shoal.io/daemon-node";

/// A node's labels, with `kubernetes.io/hostname` set to its name.
pub fn node_labels(node: &NodeRecord) -> BTreeMap<String, String> {
    let mut labels = node.labels.clone();
    labels
        .entry(HOSTNAME_LABEL.to_string())
        .or_insert_with(|| node.name.clone());
    labels
}

/// Whether a pod spec may run on `node`: `nodeSelector` and the required terms of
/// `affinity.nodeAffinity`, as the scheduler reads them ([`NodePlacement`]).
pub fn eligible(spec: &Value, node: &NodeRecord) -> bool {
    NodePlacement::of(spec).matches(&node_labels(node), &node.name)
}

/// The hash of a DaemonSet's current template (nulls dropped, as Deployments).
pub fn revision(ds: &Value) -> String {
    template_hash(&without_nulls(&ds["spec"]["template"]))
}

/// Pod names of `nodes` (sorted) for template `hash`: a suffix taken by an earlier node is
/// drawn again, so names are unique per DaemonSet.
pub fn pod_names<'n>(
    ds_name: &str,
    uid: &str,
    hash: &str,
    nodes: impl IntoIterator<Item = &'n str>,
) -> BTreeMap<&'n str, String> {
    let mut prefix = format!("{ds_name}-");
    if prefix.len() > 58 {
        let mut cut = 57;
        while !prefix.is_char_boundary(cut) {
            cut -= 1;
        }
        prefix.truncate(cut);
        prefix.push('-');
    }
    let mut sorted: Vec<&str> = nodes.into_iter().collect();
    sorted.sort();
    let mut taken = BTreeSet::new();
    let mut out = BTreeMap::new();
    for node in sorted {
        let mut attempt = 0u32;
        loop {
            let h = hash64(&["shoal-daemon", uid, node, hash, &attempt.to_string()]);
            let name = format!("{prefix}{}", safe_suffix(h, 5));
            if taken.insert(name.clone()) {
                out.insert(node, name);
                break;
            }
            attempt += 1;
        }
    }
    out
}

/// One pod of a DaemonSet as the status count sees it.
#[derive(Clone, Debug)]
pub struct DaemonPod {
    pub node: String,
    pub hash: String,
    /// Ready since.
    pub ready: Option<DateTime<Utc>>,
}

/// A DaemonSet's counts (Kubernetes' `DaemonSetStatus`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DaemonCounts {
    pub desired: i64,
    pub current: i64,
    pub misscheduled: i64,
    pub ready: i64,
    pub updated: i64,
    pub available: i64,
    pub unavailable: i64,
}

/// Counts over `pods` for the eligible `nodes` at `now`.
pub fn counts(
    ds: &Value,
    nodes: &[NodeRecord],
    pods: &[DaemonPod],
    now: DateTime<Utc>,
) -> DaemonCounts {
    let spec = &ds["spec"]["template"]["spec"];
    let eligible: BTreeSet<&str> = nodes
        .iter()
        .filter(|n| eligible(spec, n))
        .map(|n| n.name.as_str())
        .collect();
    let hash = revision(ds);
    let min_ready = ds["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
    let mut c = DaemonCounts {
        desired: eligible.len() as i64,
        ..DaemonCounts::default()
    };
    let mut by_node: BTreeMap<&str, Vec<&DaemonPod>> = BTreeMap::new();
    for p in pods {
        by_node.entry(p.node.as_str()).or_default().push(p);
    }
    for (node, pods) in &by_node {
        if !eligible.contains(node) {
            c.misscheduled += 1;
            continue;
        }
        c.current += 1;
        c.ready += i64::from(pods.iter().any(|p| p.ready.is_some()));
        c.updated += i64::from(pods.iter().any(|p| p.hash == hash));
        let available = pods.iter().any(|p| {
            p.ready
                .is_some_and(|t| t + Duration::seconds(min_ready) <= now)
        });
        c.available += i64::from(available);
    }
    c.unavailable = c.desired - c.available;
    c
}

fn involved(ds: &Value) -> InvolvedObject {
    InvolvedObject {
        api_version: "apps/v1".into(),
        kind: "DaemonSet".into(),
        namespace: object::namespace(ds).to_string(),
        name: object::name(ds).to_string(),
        uid: object::uid(ds).to_string(),
    }
}

fn new_pod(ds: &Value, name: &str, node: &str, hash: &str, ctx: &LeaderCtx) -> Value {
    let template = &ds["spec"]["template"];
    let mut annotations = match &template["metadata"]["annotations"] {
        a @ Value::Object(_) => a.clone(),
        _ => json!({}),
    };
    annotations[NODE_ANNOTATION] = json!(node);
    let mut labels = match &template["metadata"]["labels"] {
        l @ Value::Object(_) => l.clone(),
        _ => json!({}),
    };
    labels[REVISION_LABEL] = json!(hash);
    let mut spec = match &template["spec"] {
        s @ Value::Object(_) => s.clone(),
        _ => json!({}),
    };
    spec["nodeName"] = json!(node);
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "generateName": format!("{}-", object::name(ds)),
            "namespace": object::namespace(ds),
            "uid": derived_uid("Pod", object::uid(ds), name),
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": object::owner_reference(ds, "DaemonSet"),
            "creationTimestamp": object::timestamp(ctx.now),
            "resourceVersion": object::resource_version(ctx.now),
            "generation": 1,
        },
        "spec": spec,
    })
}

/// The node a DaemonSet pod is pinned to.
/// What a surging rollout does on one node.
enum Step {
    Create(PodKey, Value),
    Delete(PodKey),
}

/// A rollout with `maxSurge` (Kubernetes' `rollingUpdate` surge branch): a node without pods
/// gets its pod; a node whose new pod is available loses its old ones; a node whose new pod is
/// not yet available counts against the surge; a node whose old pod is not available gets its
/// new pod at once; other nodes with only old pods get new pods, in name order, while fewer than
/// `max_surge` new pods are waiting to become available.
fn surge(
    eligible: &[&str],
    current: &BTreeMap<&str, PodKey>,
    old: &BTreeMap<&str, Vec<PodKey>>,
    max_surge: i64,
    available: &mut impl FnMut(&PodKey) -> bool,
    mut new_pod: impl FnMut(&str) -> (PodKey, Value),
) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut surging = 0i64;
    let mut candidates = Vec::new();
    for node in eligible {
        let olds = old.get(node).map(Vec::as_slice).unwrap_or_default();
        match current.get(node) {
            Some(cur) if available(cur) => {
                steps.extend(olds.iter().cloned().map(Step::Delete));
            }
            Some(_) => surging += i64::from(!olds.is_empty()),
            None if olds.is_empty() => {
                let (key, pod) = new_pod(node);
                steps.push(Step::Create(key, pod));
            }
            None if !olds.iter().any(&mut *available) => {
                let (key, pod) = new_pod(node);
                steps.push(Step::Create(key, pod));
            }
            None => candidates.push(*node),
        }
    }
    let room = usize::try_from((max_surge - surging).max(0)).unwrap_or(0);
    for node in candidates.into_iter().take(room) {
        let (key, pod) = new_pod(node);
        steps.push(Step::Create(key, pod));
    }
    steps
}

pub fn node_of(pod: &Value) -> &str {
    pod["spec"]["nodeName"].as_str().unwrap_or_default()
}

/// Runs the DaemonSet controller: creates the missing pods, deletes pods on nodes that are
/// gone or no longer eligible, and rolls template changes within `maxUnavailable`. Returns the
/// earliest time a decision changes by itself (`minReadySeconds`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn reconcile(
    daemonsets: &[Value],
    revisions: &[Value],
    nodes: &[NodeRecord],
    settings: &BTreeMap<String, NodeSettings>,
    w: &mut Working<'_>,
    ready: &BTreeMap<PodKey, DateTime<Utc>>,
    ctx: &LeaderCtx,
    writes: &mut Vec<Write>,
    events: &mut Vec<PlannedEvent>,
) -> Option<DateTime<Utc>> {
    let mut wake: Option<DateTime<Utc>> = None;
    let mut owned: BTreeMap<&str, Vec<PodKey>> = BTreeMap::new();
    for (key, pod) in &w.pods {
        if let Some(("DaemonSet", owner)) = controller(pod) {
            owned.entry(owner).or_default().push(key.clone());
        }
    }
    let mut deletes: Vec<(PodKey, usize)> = Vec::new();
    let mut creates: Vec<(PodKey, Value, usize)> = Vec::new();
    for (i, ds) in daemonsets.iter().enumerate() {
        if !object::is_valid(ds) || !ds["spec"]["template"].is_object() {
            continue;
        }
        let ns = object::namespace(ds).to_string();
        let spec = &ds["spec"]["template"]["spec"];
        let hash = revision(ds);
        let owner = revisions::Owner {
            object: ds,
            kind: "DaemonSet",
            hash: hash.clone(),
            template: without_nulls(&ds["spec"]["template"]),
            live: owned
                .get(object::uid(ds))
                .into_iter()
                .flatten()
                .filter_map(|k| w.pods.get(k))
                .filter_map(|p| p["metadata"]["labels"][REVISION_LABEL].as_str())
                .map(|h| revisions::name(object::name(ds), h))
                .collect(),
        };
        writes.extend(revisions::sync(&owner, revisions, ctx.now).0);
        let tolerations = taint::tolerations(spec);
        // Taints as Kubernetes' DaemonSet controller reads them: an untolerated NoExecute
        // taint removes the pod, an untolerated NoSchedule one only keeps a new pod off. A
        // cordon does not apply to daemon pods.
        let running: BTreeSet<&str> = owned
            .get(object::uid(ds))
            .into_iter()
            .flatten()
            .filter_map(|k| w.pods.get(k))
            .map(|p| node_of(p))
            .collect();
        let eligible: Vec<&str> = nodes
            .iter()
            .filter(|n| eligible(spec, n))
            .filter(|n| {
                let taints = settings
                    .get(&n.name)
                    .map(|s| s.taints.as_slice())
                    .unwrap_or_default();
                let effects: &[Effect] = if running.contains(n.name.as_str()) {
                    &[Effect::NoExecute]
                } else {
                    &[Effect::NoSchedule, Effect::NoExecute]
                };
                taint::first_untolerated(taints, &tolerations, effects).is_none()
            })
            .map(|n| n.name.as_str())
            .collect();
        let names = pod_names(
            object::name(ds),
            object::uid(ds),
            &hash,
            eligible.iter().copied(),
        );
        let min_ready = ds["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
        let mut available = |key: &PodKey| match ready.get(key) {
            Some(since) => {
                let at = *since + Duration::seconds(min_ready);
                if at <= ctx.now {
                    true
                } else {
                    wake = Some(wake.map_or(at, |w| w.min(at)));
                    false
                }
            }
            None => false,
        };
        // Pods by node: (current, old ones).
        let mut current: BTreeMap<&str, PodKey> = BTreeMap::new();
        let mut old: BTreeMap<&str, Vec<PodKey>> = BTreeMap::new();
        for key in owned.get(object::uid(ds)).into_iter().flatten() {
            let Some(pod) = w.pods.get(key) else { continue };
            if object::is_terminating(pod) {
                // Being deleted: its node gets a new pod once it is gone (the name is its).
                continue;
            }
            let node = node_of(pod);
            let Some(want) = names.get(node) else {
                deletes.push((key.clone(), i)); // node gone, or no longer eligible
                continue;
            };
            if *want == key.1 && !current.contains_key(node) {
                current.insert(
                    eligible
                        .iter()
                        .find(|n| **n == node)
                        .copied()
                        .unwrap_or(node),
                    key.clone(),
                );
            } else if pod["metadata"]["labels"][REVISION_LABEL] == json!(hash) {
                deletes.push((key.clone(), i)); // a second pod of this revision
            } else if let Some(n) = eligible.iter().find(|n| **n == node) {
                old.entry(n).or_default().push(key.clone());
            }
        }
        let on_delete = ds["spec"]["updateStrategy"]["type"] == "OnDelete";
        let rolling = &ds["spec"]["updateStrategy"]["rollingUpdate"];
        let max_surge = match &rolling["maxSurge"] {
            Value::Null => 0,
            v => scaled(v, eligible.len() as i64, true),
        };
        if max_surge > 0 && !on_delete {
            // Surge (Kubernetes' rule: maxUnavailable plays no part): a node's new pod starts
            // beside its old one, which goes once the new one is available.
            surge(
                &eligible,
                &current,
                &old,
                max_surge,
                &mut available,
                |node| {
                    let name = names[node].clone();
                    let key = (ns.clone(), name.clone());
                    (key, new_pod(ds, &name, node, &hash, ctx))
                },
            )
            .into_iter()
            .for_each(|step| match step {
                Step::Create(key, pod) => {
                    if !w.pods.contains_key(&key) {
                        creates.push((key, pod, i));
                    }
                }
                Step::Delete(key) => deletes.push((key, i)),
            });
            continue;
        }
        let max_unavailable = match &rolling["maxUnavailable"] {
            Value::Null => 1,
            v => scaled(v, eligible.len() as i64, true).max(1),
        };
        // Nodes without an available pod (of any revision) count against the budget.
        let mut unavailable = 0i64;
        let mut candidates: Vec<&str> = Vec::new();
        for node in &eligible {
            let cur_ok = current.get(node).is_some_and(&mut available);
            let olds = old.get(node).cloned().unwrap_or_default();
            let old_ok = olds.iter().any(&mut available);
            if !(cur_ok || (!current.contains_key(node) && old_ok)) {
                unavailable += 1;
            }
            if current.contains_key(node) {
                // Updated: old pods on it go.
                deletes.extend(olds.into_iter().map(|k| (k, i)));
            } else if olds.is_empty() {
                let name = names[node].clone();
                let key = (ns.clone(), name.clone());
                if !w.pods.contains_key(&key) {
                    creates.push((key, new_pod(ds, &name, node, &hash, ctx), i));
                }
            } else if !on_delete {
                if old_ok {
                    candidates.push(node);
                } else {
                    // Its old pod is not available anyway: replace it now.
                    deletes.extend(olds.into_iter().map(|k| (k, i)));
                    let name = names[node].clone();
                    creates.push((
                        (ns.clone(), name.clone()),
                        new_pod(ds, &name, node, &hash, ctx),
                        i,
                    ));
                }
            }
        }
        for node in candidates {
            if unavailable >= max_unavailable {
                break;
            }
            unavailable += 1;
            deletes.extend(old[node].iter().map(|k| (k.clone(), i)));
            let name = names[node].clone();
            creates.push((
                (ns.clone(), name.clone()),
                new_pod(ds, &name, node, &hash, ctx),
                i,
            ));
        }
    }
    let mut seen = BTreeSet::new();
    for (key, i) in deletes {
        if !seen.insert(key.clone()) || w.pods.remove(&key).is_none() {
            continue;
        }
        events.push(PlannedEvent {
            involved: involved(&daemonsets[i]),
            event_type: EventType::Normal,
            reason: EventReason::SuccessfulDelete,
            message: format!("Deleted pod: {}", key.1),
            component: "daemonset-controller",
        });
        writes.push(Write::DeleteObject {
            resource: PODS,
            namespace: key.0,
            name: key.1,
        });
    }
    for (key, pod, i) in creates {
        if w.pods.contains_key(&key) {
            continue;
        }
        if let Some(message) = w.refusal(&pod) {
            events.push(Working::failed_create(
                involved(&daemonsets[i]),
                &message,
                "daemonset-controller",
            ));
            continue;
        }
        events.push(PlannedEvent {
            involved: involved(&daemonsets[i]),
            event_type: EventType::Normal,
            reason: EventReason::SuccessfulCreate,
            message: format!("Created pod: {}", key.1),
            component: "daemonset-controller",
        });
        w.put_pod(writes, key, pod);
    }
    wake
}
