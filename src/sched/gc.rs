//! Garbage collection by owner uid: ReplicaSets whose controlling Deployment is gone, Jobs
//! whose CronJob is gone, pods
//! whose controlling ReplicaSet, Job or DaemonSet is gone, bindings whose pod is gone or has another uid;
//! and terminating pods no kubelet will finish (never placed, or on a dead node).
//! The document's changes are causal (a replica holding a ReplicaSet also holds the
//! Deployment that existed when it was made), so "owner absent" means deleted, not "not yet
//! received".

use std::collections::BTreeSet;

use serde_json::Value;

use super::object::{self, controller};
use super::snapshot::{Liveness, PodKey, Write};
use super::Working;
use crate::model::workload::{self, JOBS, PODS, REPLICASETS};

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

/// Pods controlled by a ReplicaSet that is not in the working set, or by a Job or DaemonSet
/// not in `jobs` / `daemonsets`.
pub(crate) fn pods(
    jobs: &[Value],
    daemonsets: &[Value],
    w: &mut Working<'_>,
    writes: &mut Vec<Write>,
) {
    let live: BTreeSet<&str> = w.replicasets.values().map(|v| object::uid(v)).collect();
    let live_jobs: BTreeSet<&str> = jobs.iter().map(object::uid).collect();
    let live_daemons: BTreeSet<&str> = daemonsets.iter().map(object::uid).collect();
    let orphans: Vec<PodKey> = w
        .pods
        .iter()
        .filter(|(_, p)| match controller(p) {
            Some(("ReplicaSet", o)) => !live.contains(o),
            Some(("Job", o)) => !live_jobs.contains(o),
            Some(("DaemonSet", o)) => !live_daemons.contains(o),
            _ => false,
        })
        .map(|(k, _)| k.clone())
        .collect();
    for key in orphans {
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
/// for any deleted pod.
pub(crate) fn terminated_pods(
    w: &mut Working<'_>,
    liveness: &std::collections::BTreeMap<String, Liveness>,
    writes: &mut Vec<Write>,
) {
    let alive = |node: &str| liveness.get(node).is_some_and(|l| *l != Liveness::Dead);
    let done: Vec<PodKey> = w
        .pods
        .iter()
        .filter(|(_, p)| object::is_terminating(p))
        .filter(|(key, p)| {
            let user_node = p["spec"]["nodeName"].as_str().unwrap_or_default();
            let binding = w.bindings.get(*key).map(|b| b.as_ref());
            workload::placement(object::uid(p), user_node, binding)
                .is_none_or(|(node, _)| !alive(&node))
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
