//! Scheduling decisions (pure): the scheduler leader's reconcile — Deployment (rolling updates),
//! ReplicaSet, CronJob, Job, DaemonSet and StatefulSet controllers, `NoExecute` taint evictions, garbage collection and placement — from a
//! snapshot of the merged state to a plan of writes (`docs/workloads.md`, "The controllers").
//! Which node leads is `membership::leader`'s choice.

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
mod gc;
pub mod hash;
pub mod hpa;
pub mod job;
pub mod liveness;
mod noexecute;
mod object;
pub mod podspec;
pub mod replicaset;
pub mod revisions;
pub mod rollout;
mod scheduler;
pub mod settle;
pub mod snapshot;
pub mod statefulset;
pub mod volumes;

#[cfg(test)]
mod affinity_tests;
#[cfg(test)]
mod cronjob_tests;
#[cfg(test)]
mod daemonset_tests;
#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod host_port_tests;
#[cfg(test)]
mod job_tests;
#[cfg(test)]
mod rollout_tests;
#[cfg(test)]
mod statefulset_tests;
#[cfg(test)]
mod taint_tests;
#[cfg(test)]
mod terminating_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod volume_tests;

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::Value;

use crate::model::pod_security::{self, LevelVersion};
use crate::model::workload::{Binding, EventReason, EventType, InvolvedObject};
pub use scheduler::{unschedulable_message, Reasons, DEFAULT_MAX_PODS};
pub use snapshot::{
    LeaderCtx, Liveness, Plan, PlannedEvent, PodKey, SchedulingWrite, Snapshot, StatusRecords,
    Write,
};

/// Most replicas one ReplicaSet is given slots for (larger values are cut to this).
pub const MAX_REPLICAS: i64 = 100_000;

/// `spec.replicas` of a Deployment or ReplicaSet: 1 when absent, `None` when not a
/// non-negative integer.
pub(crate) fn replicas_of(spec: &Value) -> Option<i64> {
    match spec.get("replicas") {
        None | Some(Value::Null) => Some(1),
        Some(v) => v.as_i64().filter(|n| *n >= 0),
    }
}

/// A pod that ended (phase `Succeeded` or `Failed` in the status record of its current
/// placement), when its last container finished, and what a Job's `podFailurePolicy` matches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Finished {
    pub succeeded: bool,
    pub at: Option<chrono::DateTime<chrono::Utc>>,
    pub failure: job::Failure,
}

/// The object set as the reconcile changes it, stage by stage: later stages (garbage
/// collection, placement) see what earlier stages created or deleted.
pub(crate) struct Working<'a> {
    pub replicasets: BTreeMap<PodKey, Cow<'a, Value>>,
    pub pods: BTreeMap<PodKey, Cow<'a, Value>>,
    pub bindings: BTreeMap<PodKey, Cow<'a, Binding>>,
    /// Pods that ended: never placed again, and they take no room on their node.
    pub finished: &'a BTreeMap<PodKey, Finished>,
    /// Each namespace's Pod Security `enforce` level (absent: privileged).
    pub pod_security: &'a BTreeMap<String, LevelVersion>,
    /// Claims, volumes and classes (the StatefulSet controller adds claims, placement
    /// volumes).
    pub storage: volumes::Storage<'a>,
}

impl<'a> Working<'a> {
    /// Why the controllers may not create `pod`: its namespace's Pod Security `enforce` level
    /// refuses it (the API would refuse it too). Kubernetes' message, as its controllers
    /// report it in their `FailedCreate` events (after `Error creating: `).
    pub fn refusal(&self, pod: &Value) -> Option<String> {
        let lv = self.pod_security.get(object::namespace(pod))?;
        let violations = pod_security::evaluate(*lv, &pod["metadata"], &pod["spec"]);
        (!violations.is_empty()).then(|| {
            format!(
                "pods \"{}\" is forbidden: {}",
                object::name(pod),
                pod_security::forbidden_message(*lv, &violations)
            )
        })
    }

    /// The `FailedCreate` Warning a controller (`component`) records on its object
    /// (`involved`) for a pod [`Working::refusal`] refused with `message`.
    pub fn failed_create(
        involved: InvolvedObject,
        message: &str,
        component: &'static str,
    ) -> PlannedEvent {
        PlannedEvent {
            involved,
            event_type: EventType::Warning,
            reason: EventReason::FailedCreate,
            message: format!("Error creating: {message}"),
            component,
        }
    }

    /// Writes pod `key` (a new pod, or a new version of one): its write, and the pod in the set
    /// the later stages see.
    pub fn put_pod(&mut self, writes: &mut Vec<Write>, key: PodKey, pod: Value) {
        writes.push(Write::PutObject {
            resource: crate::model::workload::PODS,
            namespace: key.0.clone(),
            name: key.1.clone(),
            object: pod.clone(),
        });
        self.pods.insert(key, Cow::Owned(pod));
    }
}

fn keyed(list: &[Value]) -> BTreeMap<PodKey, Cow<'_, Value>> {
    list.iter()
        .map(|v| {
            (
                (
                    object::namespace(v).to_string(),
                    object::name(v).to_string(),
                ),
                Cow::Borrowed(v),
            )
        })
        .collect()
}

/// One reconcile of the whole state: what the leader must write so that every Deployment has
/// its ReplicaSet, every ReplicaSet its pods, nothing orphaned remains, and every pod that
/// can be placed is bound. Running it again on the state after its plan gives an empty plan.
pub fn reconcile(s: &Snapshot, ctx: &LeaderCtx) -> Plan {
    let mut w = Working {
        replicasets: keyed(&s.replicasets),
        pods: keyed(&s.pods),
        bindings: s
            .bindings
            .iter()
            .map(|(k, b)| (k.clone(), Cow::Borrowed(b)))
            .collect(),
        finished: &s.finished,
        pod_security: &s.pod_security,
        storage: volumes::Storage::new(&s.claims, &s.volumes, &s.storage_classes),
    };
    let mut plan = Plan::default();
    gc::terminated_pods(&mut w, &s.liveness, &s.nodes, &mut plan.writes);
    volumes::fence(&mut w, ctx, &mut plan.writes);
    let taint_wake = noexecute::evict(
        &mut w,
        &s.node_settings,
        ctx,
        &mut plan.writes,
        &mut plan.events,
    );
    plan.wake = deployment::reconcile(
        &s.deployments,
        &mut w,
        &s.ready,
        ctx,
        &mut plan.writes,
        &mut plan.events,
    );
    let mut jobs = s.jobs.clone();
    let cron_wake = cronjob::reconcile(
        &s.cronjobs,
        &mut jobs,
        &w,
        ctx,
        &mut plan.writes,
        &mut plan.events,
    );
    plan.wake = earliest(earliest(plan.wake, cron_wake), taint_wake);
    let keep = cronjob::newest_jobs(&s.cronjobs, &jobs);
    let job_wake = job::reconcile(
        &jobs,
        &keep,
        &mut w,
        ctx,
        &mut plan.writes,
        &mut plan.events,
    );
    plan.wake = earliest(plan.wake, job_wake);
    let daemon_wake = daemonset::reconcile(
        &s.daemonsets,
        &s.revisions,
        &s.nodes,
        &s.node_settings,
        &mut w,
        &s.ready,
        ctx,
        &mut plan.writes,
        &mut plan.events,
    );
    plan.wake = earliest(plan.wake, daemon_wake);
    statefulset::reconcile(
        &s.statefulsets,
        &s.revisions,
        &mut w,
        &s.ready,
        ctx,
        &mut plan.writes,
        &mut plan.events,
    );
    gc::replicasets(&s.deployments, &mut w, &mut plan.writes);
    replicaset::reconcile(&mut w, ctx, &mut plan.writes, &mut plan.events);
    deployment::prune_history(&s.deployments, &mut w, &mut plan.writes);
    gc::jobs(&s.cronjobs, &mut jobs, &mut plan.writes);
    gc::pods(
        &jobs,
        &s.daemonsets,
        &s.statefulsets,
        &mut w,
        ctx.now,
        &mut plan.writes,
    );
    volumes::release(&mut w, &s.volumes, &mut plan.writes);
    gc::revisions(
        &s.daemonsets,
        &s.statefulsets,
        &s.revisions,
        &mut plan.writes,
    );
    gc::bindings(&mut w, &mut plan.writes);
    scheduler::schedule(
        &mut w,
        &s.nodes,
        &s.node_settings,
        &s.liveness,
        &s.scheduling,
        ctx,
        &mut plan.writes,
        &mut plan.scheduling,
        &mut plan.events,
    );
    volumes::provision(&mut w, &s.nodes, ctx, &mut plan.writes, &mut plan.events);
    #[cfg(test)]
    check_invariants(s, &plan);
    plan
}

/// What every plan must satisfy, checked after every reconcile by the unit tests and the
/// simulator (as iroh-gossip checks its protocol state after every event): at most one binding
/// and one scheduling record per pod, and a binding names a known node and the uid of a pod
/// that exists once the plan is applied (not one it deletes). Panics, naming the invariant,
/// when one does not hold; the agent never calls it.
pub fn check_invariants(s: &Snapshot, plan: &Plan) {
    use std::collections::BTreeSet;
    let next = s.after(plan);
    let uids: BTreeMap<PodKey, &str> = next
        .pods
        .iter()
        .map(|p| {
            let key = (
                object::namespace(p).to_string(),
                object::name(p).to_string(),
            );
            (key, object::uid(p))
        })
        .collect();
    let mut bound = BTreeSet::new();
    for w in &plan.writes {
        let Write::PutBinding {
            namespace,
            pod,
            binding,
        } = w
        else {
            continue;
        };
        let key = (namespace.clone(), pod.clone());
        assert!(
            bound.insert(key.clone()),
            "two bindings for {key:?}: {plan:?}"
        );
        assert!(
            s.nodes.iter().any(|n| n.name == binding.node),
            "{key:?} bound to an unknown node: {binding:?}"
        );
        assert_eq!(
            uids.get(&key).copied(),
            Some(binding.pod_uid.as_str()),
            "{key:?} bound for a uid that is not the pod's after the plan"
        );
    }
    let mut recorded = BTreeSet::new();
    for w in &plan.scheduling {
        let (SchedulingWrite::Put { namespace, pod, .. }
        | SchedulingWrite::Delete { namespace, pod }) = w;
        let key = (namespace.clone(), pod.clone());
        assert!(
            recorded.insert(key.clone()),
            "two scheduling records for {key:?}"
        );
    }
}

fn earliest(
    a: Option<chrono::DateTime<chrono::Utc>>,
    b: Option<chrono::DateTime<chrono::Utc>>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
