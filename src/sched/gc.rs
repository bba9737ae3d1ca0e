//! Garbage collection by owner uid: ReplicaSets whose controlling Deployment is gone, pods
//! whose controlling ReplicaSet is gone, bindings whose pod is gone or has another uid.
//! The document's changes are causal (a replica holding a ReplicaSet also holds the
//! Deployment that existed when it was made), so "owner absent" means deleted, not "not yet
//! received".

use std::collections::BTreeSet;

use serde_json::Value;

use super::object::{self, controller};
use super::snapshot::{PodKey, Write};
use super::Working;
use crate::model::workload::{PODS, REPLICASETS};

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

/// Pods controlled by a ReplicaSet that is not in the working set.
pub(crate) fn pods(w: &mut Working<'_>, writes: &mut Vec<Write>) {
    let live: BTreeSet<&str> = w.replicasets.values().map(|v| object::uid(v)).collect();
    let orphans: Vec<PodKey> = w
        .pods
        .iter()
        .filter(|(_, p)| matches!(controller(p), Some(("ReplicaSet", o)) if !live.contains(o)))
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
