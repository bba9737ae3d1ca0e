//! Garbage collection by owner uid: ReplicaSets whose controlling Deployment is gone, Jobs
//! whose CronJob is gone, ControllerRevisions whose DaemonSet or StatefulSet is gone, pods
//! whose controlling ReplicaSet, Job, DaemonSet or StatefulSet is gone, bindings whose pod is gone or has another uid;
//! and terminating pods no kubelet will finish (never placed, or on a dead node).
//! The document's changes are causal (a replica holding a ReplicaSet also holds the
//! Deployment that existed when it was made), so "owner absent" means deleted, not "not yet
//! received".

use std::collections::BTreeSet;

use serde_json::Value;

use super::object::{self, controller};
use super::snapshot::{Liveness, PodKey, Write};
use super::statefulset;
use super::Working;
use crate::model::workload::{self, JOBS, PODS, REPLICASETS};
use crate::model::NodeRecord;

/// ReplicaSets controlled by a Deployment whose uid is not among `deployments`.
pub(crate) fn replicasets(deployments: &[Value], w: &mut Working<'_>, writes: &mut Vec<Write>) {
    let live: BTreeSet<&str> = deployments.iter().map(object::uid).collect();
    let orphans: Vec<PodKey> = w
        .replicasets
        .iter()
        .filter(|(_, rs)| matches!(controller(rs), Some(("Deployment", o)) if !live.contains(o)))
        .map(|(k, _)| k.clone())
        .collect();
    for key in orphans {
        w.replicasets.remove(&key);
        writes.push(Write::DeleteObject {
            resource: REPLICASETS,
            namespace: key.0,
            name: key.1,
        });
    }
}

/// Jobs controlled by a CronJob whose uid is not among `cronjobs` (removed from `jobs`).
pub(crate) fn jobs(cronjobs: &[Value], jobs: &mut Vec<Value>, writes: &mut Vec<Write>) {
    let live: BTreeSet<&str> = cronjobs.iter().map(object::uid).collect();
    let mut kept = Vec::with_capacity(jobs.len());
    for j in jobs.drain(..) {
        match controller(&j) {
            Some(("CronJob", o)) if !live.contains(o) => writes.push(Write::DeleteObject {
                resource: JOBS,
                namespace: object::namespace(&j).to_string(),
                name: object::name(&j).to_string(),
            }),
            _ => kept.push(j),
        }
    }
    *jobs = kept;
}

/// Pods controlled by a ReplicaSet that is not in the working set, or by a Job, DaemonSet or
/// StatefulSet not in `jobs` / `daemonsets` / `statefulsets`.
pub(crate) fn pods(
    jobs: &[Value],
    daemonsets: &[Value],
    statefulsets: &[Value],
    w: &mut Working<'_>,
    now: chrono::DateTime<chrono::Utc>,
    writes: &mut Vec<Write>,
) {
    let live: BTreeSet<&str> = w.replicasets.values().map(|v| object::uid(v)).collect();
    let live_jobs: BTreeSet<&str> = jobs.iter().map(object::uid).collect();
    let live_daemons: BTreeSet<&str> = daemonsets.iter().map(object::uid).collect();
    let live_sets: BTreeSet<&str> = statefulsets.iter().map(object::uid).collect();
    let orphans: Vec<PodKey> = w
        .pods
        .iter()
        .filter(|(_, p)| match controller(p) {
            Some(("ReplicaSet", o)) => !live.contains(o),
            Some(("Job", o)) => !live_jobs.contains(o),
            Some(("DaemonSet", o)) => !live_daemons.contains(o),
            Some(("StatefulSet", o)) => !live_sets.contains(o),
            _ => false,
        })
        .map(|(k, _)| k.clone())
        .collect();
    for key in orphans {
        // A StatefulSet's pod is deleted gracefully (its identity stays taken until no copy
        // runs); a second round leaves it terminating.
        if let Some(pod) = w.pods.get(&key).filter(|p| statefulset::holds_identity(p)) {
            if !object::is_terminating(pod) {
                let marked = statefulset::terminating(pod, now);
                w.put_pod(writes, key, marked);
            }
            continue;
        }
        w.pods.remove(&key);
        writes.push(Write::DeleteObject {
            resource: PODS,
            namespace: key.0,
            name: key.1,
        });
    }
}

/// Terminating pods (`metadata.deletionTimestamp`) that no kubelet will remove: not placed,
/// or placed on a node that is dead in the leader's view (as the node lifecycle controller
/// finishes them in Kubernetes). A pod on a live node is its kubelet's to remove once its
/// containers have stopped. Not destructive on a stale view: the pod is being deleted
/// anyway, and a node that is in fact alive stops its containers when the object goes, as
/// for any deleted pod. A StatefulSet's pod is the exception: its name is an identity that
/// must never run twice, so it stays terminating until its node returns or its node record
/// is deleted (`statefulset::identity_released`).
pub(crate) fn terminated_pods(
    w: &mut Working<'_>,
    liveness: &std::collections::BTreeMap<String, Liveness>,
    nodes: &[NodeRecord],
    writes: &mut Vec<Write>,
) {
    let alive = |node: &str| liveness.get(node).is_some_and(|l| *l != Liveness::Dead);
    let known: BTreeSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    let done: Vec<PodKey> = w
        .pods
        .iter()
        .filter(|(_, p)| object::is_terminating(p))
        .filter(|(key, p)| {
            let user_node = p["spec"]["nodeName"].as_str().unwrap_or_default();
            let binding = w.bindings.get(*key).map(|b| b.as_ref());
            let node = workload::placement(object::uid(p), user_node, binding).map(|(n, _)| n);
            if statefulset::holds_identity(p) {
                return statefulset::identity_released(node.as_deref(), |n| known.contains(n));
            }
            node.is_none_or(|node| !alive(&node))
        })
        .map(|(k, _)| k.clone())
        .collect();
    for key in done {
        w.pods.remove(&key);
        writes.push(Write::DeleteObject {
            resource: PODS,
            namespace: key.0,
            name: key.1,
        });
    }
}

/// ControllerRevisions controlled by a DaemonSet or StatefulSet that is not in `daemonsets` /
/// `statefulsets` (other controllers' and users' own revisions are left alone).
pub(crate) fn revisions(
    daemonsets: &[Value],
    statefulsets: &[Value],
    revisions: &[Value],
    writes: &mut Vec<Write>,
) {
    let live: BTreeSet<&str> = daemonsets
        .iter()
        .chain(statefulsets)
        .map(object::uid)
        .collect();
    for r in revisions {
        if matches!(controller(r), Some(("DaemonSet" | "StatefulSet", o)) if !live.contains(o)) {
            writes.push(Write::DeleteObject {
                resource: workload::CONTROLLER_REVISIONS,
                namespace: object::namespace(r).to_string(),
                name: object::name(r).to_string(),
            });
        }
    }
}

/// Bindings whose pod is gone, or is another object now (uid differs).
pub(crate) fn bindings(w: &mut Working<'_>, writes: &mut Vec<Write>) {
    let stale: Vec<PodKey> = w
        .bindings
        .iter()
        .filter(|(key, b)| {
            w.pods
                .get(*key)
                .is_none_or(|pod| object::uid(pod) != b.pod_uid)
        })
        .map(|(k, _)| k.clone())
        .collect();
    for key in stale {
        w.bindings.remove(&key);
        writes.push(Write::DeleteBinding {
            namespace: key.0,
            pod: key.1,
        });
    }
}
