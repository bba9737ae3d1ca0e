//! Scheduling decisions (pure): the per-epoch scheduler leader, and the leader's reconcile —
//! Deployment (rolling updates) and ReplicaSet controllers, garbage collection and placement — from a snapshot
//! of the merged state to a plan of writes (`docs/workloads.md`, "The controllers").

pub mod deployment;
mod gc;
pub mod hash;
pub mod leader;
mod object;
pub mod podspec;
pub mod replicaset;
pub mod rollout;
mod scheduler;
pub mod settle;
pub mod snapshot;

#[cfg(test)]
mod rollout_tests;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::Value;

use crate::model::workload::Binding;
pub use scheduler::{unschedulable_message, DEFAULT_MAX_PODS};
pub use snapshot::{
    apply_writes, LeaderCtx, Liveness, Plan, PlannedEvent, PodKey, SchedulingWrite, Snapshot,
    StatusRecords, Write,
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

/// The object set as the reconcile changes it, stage by stage: later stages (garbage
/// collection, placement) see what earlier stages created or deleted.
pub(crate) struct Working<'a> {
    pub replicasets: BTreeMap<PodKey, Cow<'a, Value>>,
    pub pods: BTreeMap<PodKey, Cow<'a, Value>>,
    pub bindings: BTreeMap<PodKey, Cow<'a, Binding>>,
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
    };
    let mut plan = Plan::default();
    plan.wake = deployment::reconcile(
        &s.deployments,
        &mut w,
        &s.ready,
        ctx,
        &mut plan.writes,
        &mut plan.events,
    );
    gc::replicasets(&s.deployments, &mut w, &mut plan.writes);
    replicaset::reconcile(&mut w, ctx, &mut plan.writes, &mut plan.events);
    deployment::prune_history(&s.deployments, &mut w, &mut plan.writes);
    gc::pods(&mut w, &mut plan.writes);
    gc::bindings(&mut w, &mut plan.writes);
    scheduler::schedule(
        &mut w,
        &s.nodes,
        &s.liveness,
        &s.scheduling,
        ctx,
        &mut plan.writes,
        &mut plan.scheduling,
        &mut plan.events,
    );
    plan
}
