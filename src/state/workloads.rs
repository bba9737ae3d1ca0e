//! The cluster document as the scheduler's input and output: a [`Snapshot`] read from a
//! [`ClusterDoc`] and a [`Plan`](crate::sched::Plan)'s writes applied to one, shared by the
//! agent's controllers and the simulator (`sched` itself never sees the document).

use std::collections::BTreeMap;

use serde_json::Value;

use super::{ClusterDoc, StateError};
use crate::model::workload::{
    SchedulingRecord, CRONJOBS, DAEMONSETS, DEPLOYMENTS, JOBS, PODS, REPLICASETS, STATEFULSETS,
};
use crate::model::{with_user_labels, NodeSettings, NODE_SETTINGS};
use crate::sched::snapshot::with_namespace;
use crate::sched::{Liveness, PodKey, Snapshot, Write};

impl ClusterDoc {
    /// Reads the workload objects, bindings and node records; `liveness` and `scheduling`
    /// come from the caller (membership view, own status document).
    pub fn workload_snapshot(
        &self,
        liveness: BTreeMap<String, Liveness>,
        scheduling: BTreeMap<PodKey, SchedulingRecord>,
    ) -> Snapshot {
        let objects = |resource: &str| -> Vec<Value> {
            self.list_objects(resource, None)
                .into_iter()
                .map(|(path, v)| with_namespace(v, path.namespace.as_deref()))
                .collect()
        };
        let node_settings = NodeSettings::by_node(&objects(NODE_SETTINGS));
        Snapshot {
            deployments: objects(DEPLOYMENTS),
            replicasets: objects(REPLICASETS),
            pods: objects(PODS),
            jobs: objects(JOBS),
            daemonsets: objects(DAEMONSETS),
            cronjobs: objects(CRONJOBS),
            statefulsets: objects(STATEFULSETS),
            revisions: objects(crate::model::workload::CONTROLLER_REVISIONS),
            claims: objects(crate::model::storage::PVCS),
            volumes: objects(crate::model::storage::PVS),
            storage_classes: objects(crate::model::storage::STORAGE_CLASSES),
            bindings: self.bindings().into_iter().collect(),
            nodes: with_user_labels(self.nodes(), &node_settings),
            node_settings,
            liveness,
            scheduling,
            ready: BTreeMap::new(),
            finished: BTreeMap::new(),
            pod_security: objects("namespaces")
                .iter()
                .filter_map(|ns| {
                    let enforce =
                        crate::model::pod_security::Policy::fail_closed(&ns["metadata"]["labels"])
                            .enforce;
                    let name = ns["metadata"]["name"].as_str()?;
                    (enforce.level != crate::model::pod_security::Level::Privileged)
                        .then(|| (name.to_string(), enforce))
                })
                .collect(),
        }
    }

    /// Applies the cluster-document writes of a plan as one change. Returns how many changed
    /// the document.
    pub fn apply_writes(&mut self, writes: &[Write]) -> Result<usize, StateError> {
        self.set_batching(true);
        let out = self.apply_each(writes);
        self.set_batching(false);
        out
    }

    fn apply_each(&mut self, writes: &[Write]) -> Result<usize, StateError> {
        let mut changed = 0;
        for w in writes {
            let did = match w {
                Write::PutObject {
                    resource,
                    namespace,
                    name,
                    object,
                } => {
                    self.put_object(resource, Some(namespace), name, object)?;
                    true
                }
                Write::DeleteObject {
                    resource,
                    namespace,
                    name,
                } => self.delete_object(resource, Some(namespace), name)?,
                Write::PutBinding {
                    namespace,
                    pod,
                    binding,
                } => self.put_binding(namespace, pod, binding)?,
                Write::DeleteBinding { namespace, pod } => self.delete_binding(namespace, pod)?,
            };
            changed += usize::from(did);
        }
        Ok(changed)
    }
}
