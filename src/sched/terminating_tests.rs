//! Tests of how the controllers treat terminating pods (`metadata.deletionTimestamp`, a
//! graceful deletion in progress): never counted as replicas nor available, replaced at once
//! under a replacement name while they hold their slot's name, left for their kubelet to
//! remove on a live node, and removed by the leader when never placed or on a dead node.

use serde_json::{json, Value};

use super::fixtures::{cluster_of, deployment_object, key, leader_ctx, node, t0};
use super::object;
use super::replicaset::{replacement_names, slot_of};
use super::*;
use crate::model::workload::Binding;

fn settle(mut s: Snapshot) -> Snapshot {
    for i in 0..20 {
        let plan = reconcile(&s, &leader_ctx("n0", t0(), i));
        if plan.is_empty() {
            return s;
        }
        s = s.after(&plan);
    }
    panic!("no fixpoint");
}

fn terminate(s: &mut Snapshot, name: &str) {
    let pod = s
        .pods
        .iter_mut()
        .find(|p| object::name(p) == name)
        .expect("the pod exists");
    pod["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:30Z");
    pod["metadata"]["deletionGracePeriodSeconds"] = json!(30);
}

fn live_pods(s: &Snapshot) -> Vec<&Value> {
    s.pods
        .iter()
        .filter(|p| !object::is_terminating(p))
        .collect()
}

#[test]
fn a_terminating_replica_is_replaced_at_once_and_its_replacement_stays() {
    let mut s = cluster_of(vec![node("n0"), node("n1")]);
    s.deployments = vec![deployment_object("web", 3, json!({}))];
    let s = settle(s);
    assert_eq!(s.pods.len(), 3);
    let mut s = s;
    let victim = object::name(&s.pods[0]).to_string();
    let slot = slot_of(&s.pods[0]).unwrap();
    terminate(&mut s, &victim);

    let plan = reconcile(&s, &leader_ctx("n0", t0(), 7));
    assert!(
        !plan.writes.iter().any(|w| matches!(w,
            Write::DeleteObject { name, .. } if *name == victim)),
        "the kubelet removes it, not the controller: {:?}",
        plan.writes
    );
    let s = settle(s);
    assert_eq!(s.pods.len(), 4, "three replicas and the one terminating");
    let live = live_pods(&s);
    assert_eq!(live.len(), 3);
    let rs = &s.replicasets[0];
    let replacement = replacement_names(object::name(rs), object::uid(rs), slot)
        .next()
        .unwrap();
    let new = live
        .iter()
        .find(|p| object::name(p) == replacement)
        .expect("the slot's first replacement name");
    assert_eq!(slot_of(new), Some(slot));
    assert!(s.bindings.contains_key(&key(new)), "and it is placed");

    // Its kubelet removes the terminating pod: nothing moves back to the slot's own name.
    let mut s = s;
    s.pods.retain(|p| object::name(p) != victim);
    s.bindings.retain(|k, _| k.1 != victim);
    let plan = reconcile(&s, &leader_ctx("n0", t0(), 8));
    assert!(plan.is_empty(), "{plan:?}");
}

#[test]
fn terminating_pods_are_not_ready_to_the_rollout() {
    let mut s = cluster_of(vec![node("n0")]);
    s.deployments = vec![deployment_object("web", 1, json!({}))];
    let mut s = settle(s);
    let pod = s.pods[0].clone();
    s.ready.insert(key(&pod), t0());
    terminate(&mut s, object::name(&pod));
    let records: StatusRecords = [(
        key(&pod),
        vec![(
            "n0".to_string(),
            std::sync::Arc::new(crate::model::workload::PodStatusRecord {
                binding: s.bindings[&key(&pod)].id.clone(),
                pod_uid: object::uid(&pod).to_string(),
                status: json!({"conditions": [{"type": "Ready", "status": "True"}]}),
            }),
        )],
    )]
    .into_iter()
    .collect();
    let s = s.with_readiness(&records);
    assert!(s.ready.is_empty(), "{:?}", s.ready);
}

fn binding(node: &str, uid: &str) -> Binding {
    Binding {
        node: node.into(),
        id: format!("b-{uid}"),
        pod_uid: uid.into(),
        epoch: 1,
        view: 1,
        leader: "n0".into(),
        at: t0(),
    }
}

#[test]
fn the_leader_removes_terminating_pods_no_kubelet_will_finish() {
    let mut s = cluster_of(vec![node("n0"), node("n1")]);
    s.liveness.insert("n1".into(), Liveness::Dead);
    let pod = |name: &str| super::fixtures::pod_object(name, json!({}), json!({}));
    s.pods = vec![
        pod("on-live"),
        pod("on-dead"),
        pod("unplaced"),
        pod("named"),
    ];
    s.pods[3]["spec"]["nodeName"] = json!("n1");
    for name in ["on-live", "on-dead", "unplaced", "named"] {
        terminate(&mut s, name);
    }
    s.bindings
        .insert(key(&s.pods[0]), binding("n0", object::uid(&s.pods[0])));
    s.bindings
        .insert(key(&s.pods[1]), binding("n1", object::uid(&s.pods[1])));
    let plan = reconcile(&s, &leader_ctx("n0", t0(), 1));
    let mut deleted: Vec<&str> = plan
        .writes
        .iter()
        .filter_map(|w| match w {
            Write::DeleteObject { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    deleted.sort();
    assert_eq!(deleted, ["named", "on-dead", "unplaced"]);
    assert!(
        !plan
            .writes
            .iter()
            .any(|w| matches!(w, Write::PutBinding { .. })),
        "a terminating pod is never placed: {plan:?}"
    );
    let s = settle(s);
    assert_eq!(
        s.pods.len(),
        1,
        "the one on a live node waits for its kubelet"
    );
    assert_eq!(s.bindings.len(), 1);
}

#[test]
fn a_deleted_job_pod_counts_as_failed_and_is_replaced() {
    let mut s = cluster_of(vec![node("n0")]);
    s.jobs = vec![json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "j", "namespace": "default", "uid": "j-j",
                     "creationTimestamp": "2025-01-01T00:00:00Z"},
        "spec": {"completions": 1, "parallelism": 1, "backoffLimit": 3,
                 "template": {"spec": {"restartPolicy": "Never",
                     "containers": [{"name": "c", "image": "i"}]}}},
    })];
    let mut s = settle(s);
    assert_eq!(s.pods.len(), 1);
    let first = object::name(&s.pods[0]).to_string();
    terminate(&mut s, &first);
    let s = settle(s);
    let live = live_pods(&s);
    assert_eq!(live.len(), 1, "a new attempt");
    assert_ne!(object::name(live[0]), first);
}

#[test]
fn a_terminating_daemon_pod_is_neither_deleted_again_nor_doubled() {
    let mut s = cluster_of(vec![node("n0")]);
    s.daemonsets = vec![json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "d", "namespace": "default", "uid": "ds-d"},
        "spec": {"selector": {"matchLabels": {"app": "d"}},
                 "template": {"metadata": {"labels": {"app": "d"}},
                              "spec": {"containers": [{"name": "c", "image": "i"}]}}},
    })];
    let mut s = settle(s);
    assert_eq!(s.pods.len(), 1);
    let name = object::name(&s.pods[0]).to_string();
    terminate(&mut s, &name);
    let plan = reconcile(&s, &leader_ctx("n0", t0(), 3));
    assert!(plan.writes.is_empty(), "{plan:?}");
    // Once its kubelet removed it, the node gets its pod back.
    s.pods.clear();
    let s = settle(s);
    assert_eq!(live_pods(&s).len(), 1);
}
