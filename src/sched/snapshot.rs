//! What the leader's reconcile reads (a [`Snapshot`] of the merged cluster document plus the
//! leader's own view) and what it returns (a [`Plan`]: cluster-document writes, scheduling
//! records for the leader's status document, events). Reading a snapshot from the cluster
//! document and applying a plan's writes to it are `state::workloads`' (the document's layer).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::model::storage::{CLUSTER_SCOPE, PVCS, PVS};
use crate::model::workload::{
    self, Binding, EventReason, EventType, InvolvedObject, SchedulingRecord, CONTROLLER_REVISIONS,
    CRONJOBS, DAEMONSETS, DEPLOYMENTS, JOBS, PODS, REPLICASETS, STATEFULSETS,
};
use crate::model::{NodeRecord, NodeSettings};

/// The namespace of a write as object keys in [`Snapshot::after`] hold it (a cluster-scoped
/// object has none).
fn scope(namespace: &str) -> String {
    if namespace == CLUSTER_SCOPE {
        String::new()
    } else {
        namespace.to_string()
    }
}

/// A node's liveness in the leader's membership view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Liveness {
    Alive,
    /// Not trusted with new pods, but its pods stay: probes failing and not yet declared
    /// dead, or flapping (`sched::liveness`).
    Suspect,
    /// Dead, left, or unknown to the view: controller-owned pods bound to it are replaced.
    Dead,
}

/// `(namespace, name)`.
pub type PodKey = (String, String);

/// The state a reconcile works from. Objects are the stored JSON (as the API wrote them);
/// anything malformed is skipped, never fatal.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub deployments: Vec<Value>,
    pub replicasets: Vec<Value>,
    pub pods: Vec<Value>,
    pub jobs: Vec<Value>,
    pub daemonsets: Vec<Value>,
    pub cronjobs: Vec<Value>,
    pub statefulsets: Vec<Value>,
    /// ControllerRevisions (the StatefulSets' and DaemonSets' template history).
    pub revisions: Vec<Value>,
    /// PersistentVolumeClaims, PersistentVolumes and the stored StorageClasses.
    pub claims: Vec<Value>,
    pub volumes: Vec<Value>,
    pub storage_classes: Vec<Value>,
    /// The winning binding of each pod (`bind/<ns>/<pod>`).
    pub bindings: BTreeMap<PodKey, Binding>,
    /// Node records, with the labels users set on them merged in.
    pub nodes: Vec<NodeRecord>,
    /// What users set on each node beside its labels: taints, `unschedulable`.
    pub node_settings: BTreeMap<String, NodeSettings>,
    /// The leader's view; nodes not listed are [`Liveness::Dead`].
    pub liveness: BTreeMap<String, Liveness>,
    /// Scheduling records this leader wrote earlier (its own status document): a record or
    /// event is only written again when the reason changed.
    pub scheduling: BTreeMap<PodKey, SchedulingRecord>,
    /// Pods that are Ready, with the time they became so (the Ready condition's
    /// `lastTransitionTime`), read from the status record of each pod's current placement
    /// ([`Snapshot::with_readiness`]). A pod not listed is not ready; a terminating pod is
    /// not listed. Gates rolling updates.
    pub ready: BTreeMap<PodKey, DateTime<Utc>>,
    /// Pods that ended (`Succeeded` / `Failed`) in the record of their current placement,
    /// whatever their node's liveness ([`Snapshot::with_readiness`]).
    pub finished: BTreeMap<PodKey, super::Finished>,
    /// Each namespace's Pod Security `enforce` level, where it is not `privileged`: the
    /// controllers do not create pods it refuses.
    pub pod_security: BTreeMap<String, crate::model::pod_security::LevelVersion>,
}

/// Status records of every node, by pod: `(node, record)` pairs (`pod/<ns>/<name>` of each
/// status document).
pub type StatusRecords = crate::model::workload::PodStatusRecords;

/// Who is reconciling, in which view, when, and the seed of its fresh identifiers.
#[derive(Clone, Debug)]
pub struct LeaderCtx {
    pub node: String,
    pub epoch: u64,
    pub view: u64,
    pub now: DateTime<Utc>,
    /// Seeds the placement ids of new bindings.
    pub seed: u64,
}

/// One write to the cluster document.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    PutObject {
        resource: &'static str,
        namespace: String,
        name: String,
        object: Value,
    },
    DeleteObject {
        resource: &'static str,
        namespace: String,
        name: String,
    },
    PutBinding {
        namespace: String,
        pod: String,
        binding: Binding,
    },
    DeleteBinding {
        namespace: String,
        pod: String,
    },
}

/// A change to the leader's scheduling records (`sched/<ns>/<pod>`, its status document).
#[derive(Clone, Debug, PartialEq)]
pub enum SchedulingWrite {
    Put {
        namespace: String,
        pod: String,
        record: SchedulingRecord,
    },
    Delete {
        namespace: String,
        pod: String,
    },
}

/// An event to record (`Shared::record_event`).
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedEvent {
    pub involved: InvolvedObject,
    pub event_type: EventType,
    pub reason: EventReason,
    pub message: String,
    /// `default-scheduler`, `deployment-controller`, `replicaset-controller`.
    pub component: &'static str,
}

/// What a reconcile decided. Empty when the state already is what it should be.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub writes: Vec<Write>,
    pub scheduling: Vec<SchedulingWrite>,
    pub events: Vec<PlannedEvent>,
    /// The earliest later time at which this plan's decisions change with no other input
    /// (a Ready pod becomes available after `minReadySeconds`): reconcile again then.
    pub wake: Option<DateTime<Utc>>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.scheduling.is_empty() && self.events.is_empty()
    }

    /// Counts of (object puts, object deletes, binding puts, binding deletes).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let mut c = (0, 0, 0, 0);
        for w in &self.writes {
            match w {
                Write::PutObject { .. } => c.0 += 1,
                Write::DeleteObject { .. } => c.1 += 1,
                Write::PutBinding { .. } => c.2 += 1,
                Write::DeleteBinding { .. } => c.3 += 1,
            }
        }
        c
    }
}

/// Namespace of a stored object (`metadata.namespace`, else the one in its key).
pub fn with_namespace(mut object: Value, namespace: Option<&str>) -> Value {
    if let (Some(ns), Some(meta)) = (namespace, object.get_mut("metadata")) {
        if meta.get("namespace").and_then(Value::as_str).is_none() {
            meta["namespace"] = Value::String(ns.to_string());
        }
    }
    object
}

impl Snapshot {
    /// Fills [`Snapshot::ready`] from the nodes' status records: a pod is ready when the
    /// record of its current placement (`model::workload::current_record`, the one the API
    /// shows) says Ready and its node is not dead in the leader's view. A Ready condition
    /// without a time counts as ready since the epoch. Fills [`Snapshot::finished`] too.
    pub fn with_readiness(mut self, records: &StatusRecords) -> Snapshot {
        (self.ready, self.finished) = self.readiness(records);
        self
    }

    /// The pods that are ready (with since when) and those that ended, by the status record
    /// of each pod's current placement in `records`: what [`Snapshot::with_readiness`] sets.
    #[allow(clippy::type_complexity)]
    pub fn readiness(
        &self,
        records: &StatusRecords,
    ) -> (
        BTreeMap<PodKey, DateTime<Utc>>,
        BTreeMap<PodKey, super::Finished>,
    ) {
        let mut ready = BTreeMap::new();
        let mut finished = BTreeMap::new();
        for pod in &self.pods {
            let key = (
                pod["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                pod["metadata"]["name"].as_str().unwrap_or("").to_string(),
            );
            let uid = pod["metadata"]["uid"].as_str().unwrap_or("");
            let user_node = pod["spec"]["nodeName"].as_str().unwrap_or("");
            let placement = workload::placement(uid, user_node, self.bindings.get(&key));
            let alive = placement.as_ref().is_some_and(|(node, _)| {
                self.liveness
                    .get(node)
                    .is_some_and(|l| *l != Liveness::Dead)
            });
            let record = workload::current_record(
                uid,
                placement.as_ref(),
                records.get(&key).into_iter().flatten(),
            );
            if let Some(f) = record.and_then(|r| super::job::finished(&r.status)) {
                finished.insert(key.clone(), f);
            }
            // A terminating pod is never ready (nor available) to the controllers.
            let alive = alive && !super::object::is_terminating(pod);
            if let (true, Some(since)) =
                (alive, record.and_then(|r| workload::ready_since(&r.status)))
            {
                ready.insert(key, since.unwrap_or(DateTime::UNIX_EPOCH));
            }
        }
        (ready, finished)
    }

    /// The snapshot after `plan` (for tests and the simulator; the real next snapshot is read
    /// from the document).
    pub fn after(&self, plan: &Plan) -> Snapshot {
        let mut next = self.clone();
        let key = |v: &Value| {
            (
                v["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                v["metadata"]["name"].as_str().unwrap_or("").to_string(),
            )
        };
        let mut lists: BTreeMap<&str, BTreeMap<PodKey, Value>> = BTreeMap::new();
        for (resource, list) in [
            (DEPLOYMENTS, &self.deployments),
            (REPLICASETS, &self.replicasets),
            (PODS, &self.pods),
            (JOBS, &self.jobs),
            (DAEMONSETS, &self.daemonsets),
            (CRONJOBS, &self.cronjobs),
            (STATEFULSETS, &self.statefulsets),
            (CONTROLLER_REVISIONS, &self.revisions),
            (PVCS, &self.claims),
            (PVS, &self.volumes),
        ] {
            lists.insert(resource, list.iter().map(|v| (key(v), v.clone())).collect());
        }
        for w in &plan.writes {
            match w {
                Write::PutObject {
                    resource,
                    namespace,
                    name,
                    object,
                } => {
                    if let Some(l) = lists.get_mut(resource) {
                        l.insert((scope(namespace), name.clone()), object.clone());
                    }
                }
                Write::DeleteObject {
                    resource,
                    namespace,
                    name,
                } => {
                    if let Some(l) = lists.get_mut(resource) {
                        l.remove(&(scope(namespace), name.clone()));
                    }
                    if *resource == PODS {
                        next.ready.remove(&(namespace.clone(), name.clone()));
                        next.finished.remove(&(namespace.clone(), name.clone()));
                    }
                }
                Write::PutBinding {
                    namespace,
                    pod,
                    binding,
                } => {
                    next.bindings
                        .insert((namespace.clone(), pod.clone()), binding.clone());
                }
                Write::DeleteBinding { namespace, pod } => {
                    next.bindings.remove(&(namespace.clone(), pod.clone()));
                }
            }
        }
        let mut take = |r: &str| lists.remove(r).unwrap_or_default().into_values().collect();
        next.deployments = take(DEPLOYMENTS);
        next.replicasets = take(REPLICASETS);
        next.pods = take(PODS);
        next.jobs = take(JOBS);
        next.daemonsets = take(DAEMONSETS);
        next.cronjobs = take(CRONJOBS);
        next.statefulsets = take(STATEFULSETS);
        next.revisions = take(CONTROLLER_REVISIONS);
        next.claims = take(PVCS);
        next.volumes = take(PVS);
        for s in &plan.scheduling {
            match s {
                SchedulingWrite::Put {
                    namespace,
                    pod,
                    record,
                } => {
                    next.scheduling
                        .insert((namespace.clone(), pod.clone()), record.clone());
                }
                SchedulingWrite::Delete { namespace, pod } => {
                    next.scheduling.remove(&(namespace.clone(), pod.clone()));
                }
            }
        }
        next
    }
}
