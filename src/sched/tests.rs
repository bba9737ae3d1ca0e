//! Unit and property tests of the reconcile: exact counts, capacity, spread, idempotence,
//! selectors and anti-affinity, unschedulable reporting, failover, and the deterministic merge
//! of two leaders' concurrent plans on two replicas.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use serde_json::{json, Value};

use super::fixtures::{all_alive, cluster_of, key, leader_ctx, node_with, t0};
use super::replicaset::slot_of;
use super::*;
use crate::model::workload::{Binding, EventReason, SLOT_ANNOTATION};
use crate::model::NodeRecord;
use crate::state::ClusterDoc;

fn deployment(name: &str, replicas: i64, cpu: &str, memory: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default", "uid": format!("d-{name}"), "generation": 1},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "shoal.test/busybox:1",
                    "resources": {"requests": {"cpu": cpu, "memory": memory}}}]},
            },
        },
    })
}

fn bare_pod(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": format!("p-{name}"), "labels": {"app": name}},
        "spec": spec,
    })
}

/// Leader `leader` of epoch 3, view 77, at `t0`.
fn ctx(leader: &str, seed: u64) -> LeaderCtx {
    LeaderCtx {
        epoch: 3,
        view: 77,
        ..leader_ctx(leader, t0(), seed)
    }
}

fn snapshot(deployments: Vec<Value>, nodes: Vec<NodeRecord>) -> Snapshot {
    Snapshot {
        deployments,
        ..cluster_of(nodes)
    }
}

/// Reconciles until the plan is empty (at most `rounds`), returning the final state.
fn settle(mut s: Snapshot, rounds: usize) -> Snapshot {
    for i in 0..rounds {
        let plan = reconcile(&s, &ctx("leader", i as u64));
        if plan.is_empty() {
            return s;
        }
        s = s.after(&plan);
    }
    panic!("no fixpoint after {rounds} rounds");
}

fn owner_uid(v: &Value) -> Option<&str> {
    v["metadata"]["ownerReferences"][0]["uid"].as_str()
}

/// Pods of the current ReplicaSet of each Deployment: `deploy name -> pods`.
fn pods_by_deployment(s: &Snapshot) -> BTreeMap<String, Vec<&Value>> {
    let mut out: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for d in &s.deployments {
        let duid = d["metadata"]["uid"].as_str().unwrap();
        let rs_uids: BTreeSet<&str> = s
            .replicasets
            .iter()
            .filter(|rs| owner_uid(rs) == Some(duid))
            .filter_map(|rs| rs["metadata"]["uid"].as_str())
            .collect();
        let pods = s
            .pods
            .iter()
            .filter(|p| owner_uid(p).is_some_and(|o| rs_uids.contains(o)))
            .collect();
        out.insert(d["metadata"]["name"].as_str().unwrap().to_string(), pods);
    }
    out
}

/// Sum of requests and pod counts bound to each node.
fn node_load(s: &Snapshot) -> BTreeMap<String, (u64, u64, u64)> {
    let pods: BTreeMap<PodKey, &Value> = s.pods.iter().map(|p| (key(p), p)).collect();
    let mut load: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for (key, b) in &s.bindings {
        let (r, _) = podspec::pod_requests(&pods[key]["spec"]);
        let e = load.entry(b.node.clone()).or_default();
        e.0 += r.cpu;
        e.1 += r.memory;
        e.2 += 1;
    }
    load
}

fn assert_within_capacity(s: &Snapshot) {
    for (name, (cpu, memory, pods)) in node_load(s) {
        let n = s.nodes.iter().find(|n| n.name == name).unwrap();
        let cap = |k: &str| n.capacity[k].clone();
        assert!(
            cpu <= crate::model::quantity::parse_milli(&cap("cpu")).unwrap(),
            "{name}: cpu {cpu}"
        );
        assert!(
            memory <= crate::model::quantity::parse_units(&cap("memory")).unwrap(),
            "{name}: memory {memory}"
        );
        assert!(
            pods <= crate::model::quantity::parse_units(&cap("pods")).unwrap(),
            "{name}: pods {pods}"
        );
    }
}

/// Every Deployment has exactly `replicas` pods, one per slot `0..replicas`.
fn assert_exact_counts(s: &Snapshot) {
    let by = pods_by_deployment(s);
    for d in &s.deployments {
        let name = d["metadata"]["name"].as_str().unwrap();
        let want = d["spec"]["replicas"].as_u64().unwrap() as usize;
        let slots: BTreeSet<usize> = by[name].iter().filter_map(|p| slot_of(p)).collect();
        assert_eq!(by[name].len(), want, "{name}: pod count");
        assert_eq!(
            slots,
            (0..want).collect::<BTreeSet<_>>(),
            "{name}: one pod per slot"
        );
    }
}

#[test]
fn pods_the_namespace_enforce_level_refuses_are_not_created_and_say_why() {
    use crate::model::pod_security::{Level, LevelVersion, Version};
    let nodes = vec![node_with("n0", "4", "8Gi", 110)];
    let mut s = snapshot(vec![deployment("web", 2, "100m", "64Mi")], nodes);
    s.pod_security.insert(
        "default".into(),
        LevelVersion {
            level: Level::Restricted,
            version: Version::Latest,
        },
    );
    let plan = reconcile(&s, &ctx("n0", 1));
    let (puts, _, binds, _) = plan.counts();
    assert_eq!((puts, binds), (1, 0), "the ReplicaSet only, no pod");
    let failed: Vec<&PlannedEvent> = plan
        .events
        .iter()
        .filter(|e| e.reason == EventReason::FailedCreate)
        .collect();
    assert_eq!(failed.len(), 2, "{:?}", plan.events);
    assert_eq!(failed[0].involved.kind, "ReplicaSet");
    assert!(
        failed[0].message.starts_with("Error creating: pods \"web-")
            && failed[0].message.contains(
                r#"is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false (container "c" must set securityContext.allowPrivilegeEscalation=false)"#
            ),
        "{}",
        failed[0].message
    );
    // Baseline lets the same pods through.
    s.pod_security.get_mut("default").unwrap().level = Level::Baseline;
    let plan = reconcile(&s, &ctx("n0", 1));
    assert_eq!(plan.counts().0, 3, "the ReplicaSet and its 2 pods");
}

#[test]
fn a_deployment_becomes_a_replicaset_and_bound_pods_spread_over_nodes() {
    let nodes = (0..3)
        .map(|i| node_with(&format!("n{i}"), "4", "8Gi", 110))
        .collect();
    let s = snapshot(vec![deployment("web", 6, "100m", "64Mi")], nodes);
    let plan = reconcile(&s, &ctx("n0", 1));
    let (puts, deletes, binds, unbinds) = plan.counts();
    assert_eq!(
        (puts, deletes, binds, unbinds),
        (7, 0, 6, 0),
        "1 ReplicaSet, 6 pods, 6 bindings"
    );
    let s = s.after(&plan);
    assert_eq!(s.replicasets.len(), 1);
    let rs = &s.replicasets[0];
    let hash = rs["metadata"]["labels"]["pod-template-hash"]
        .as_str()
        .unwrap();
    assert_eq!(
        rs["metadata"]["name"].as_str().unwrap(),
        format!("web-{hash}")
    );
    assert_eq!(rs["metadata"]["ownerReferences"][0]["uid"], "d-web");
    assert_eq!(rs["metadata"]["ownerReferences"][0]["controller"], true);
    assert_eq!(
        rs["spec"]["selector"]["matchLabels"]["pod-template-hash"],
        hash
    );
    for p in &s.pods {
        assert!(p["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with(&format!("web-{hash}-")));
        assert_eq!(p["metadata"]["labels"]["pod-template-hash"], hash);
        assert!(p["metadata"]["annotations"][SLOT_ANNOTATION].is_string());
        let b = &s.bindings[&key(p)];
        assert_eq!(b.pod_uid, p["metadata"]["uid"].as_str().unwrap());
        assert_eq!((b.epoch, b.view, b.leader.as_str()), (3, 77, "n0"));
    }
    let load = node_load(&s);
    assert_eq!(load.len(), 3);
    assert!(load.values().all(|l| l.2 == 2), "2 pods per node: {load:?}");
    assert_exact_counts(&s);
    assert!(
        reconcile(&s, &ctx("n0", 2)).is_empty(),
        "nothing left to do"
    );
    // A scheduled event per pod and a scaling event.
    assert_eq!(
        plan.events
            .iter()
            .filter(|e| e.reason == EventReason::Scheduled)
            .count(),
        6
    );
    assert!(plan
        .events
        .iter()
        .any(|e| e.reason == EventReason::ScalingReplicaSet && e.involved.kind == "Deployment"));
}

#[test]
fn two_leaders_write_identical_objects_for_the_same_deployment() {
    let nodes: Vec<NodeRecord> = (0..3)
        .map(|i| node_with(&format!("n{i}"), "4", "8Gi", 110))
        .collect();
    let s = snapshot(vec![deployment("web", 4, "100m", "64Mi")], nodes);
    let strip = |p: &Plan| -> Vec<Value> {
        p.writes
            .iter()
            .filter_map(|w| match w {
                Write::PutObject { object, .. } => {
                    let mut o = object.clone();
                    o["metadata"]
                        .as_object_mut()
                        .unwrap()
                        .remove("resourceVersion");
                    o["metadata"]
                        .as_object_mut()
                        .unwrap()
                        .remove("creationTimestamp");
                    Some(o)
                }
                _ => None,
            })
            .collect()
    };
    let mut other = ctx("n2", 99);
    other.now = t0() + chrono::Duration::seconds(5);
    assert_eq!(
        strip(&reconcile(&s, &ctx("n0", 1))),
        strip(&reconcile(&s, &other))
    );
}

#[test]
fn scaling_down_and_up_keeps_slots_and_removes_bindings() {
    let nodes: Vec<NodeRecord> = (0..4)
        .map(|i| node_with(&format!("n{i}"), "8", "16Gi", 110))
        .collect();
    let mut s = settle(
        snapshot(vec![deployment("web", 10, "100m", "64Mi")], nodes),
        3,
    );
    let before: BTreeSet<PodKey> = s.pods.iter().map(key).collect();
    s.deployments[0]["spec"]["replicas"] = json!(3);
    let s = settle(s, 3);
    assert_exact_counts(&s);
    assert_eq!(
        s.bindings.len(),
        3,
        "bindings of deleted pods are removed with them"
    );
    let after: BTreeSet<PodKey> = s.pods.iter().map(key).collect();
    assert!(after.is_subset(&before), "lower slots keep their pods");
    let mut s = s;
    s.deployments[0]["spec"]["replicas"] = json!(10);
    let s = settle(s, 3);
    assert_exact_counts(&s);
    assert_eq!(
        s.pods.iter().map(key).collect::<BTreeSet<_>>(),
        before,
        "slots map to the same names"
    );
}

#[test]
fn a_new_template_rolls_out_to_a_new_replicaset_and_the_old_one_goes_to_zero() {
    let nodes = vec![node_with("n0", "8", "16Gi", 110)];
    let mut s = settle(
        snapshot(vec![deployment("web", 3, "100m", "64Mi")], nodes),
        3,
    );
    s.deployments[0]["spec"]["template"]["spec"]["containers"][0]["image"] = json!("other:2");
    // The rollout advances as pods turn Ready (3 replicas: surge 1, unavailable 0).
    for i in 0..20 {
        for p in &s.pods {
            s.ready.entry(key(p)).or_insert(t0());
        }
        let plan = reconcile(&s, &ctx("leader", i));
        if plan.is_empty() {
            break;
        }
        s = s.after(&plan);
    }
    assert_eq!(s.replicasets.len(), 2);
    let old: Vec<&Value> = s
        .replicasets
        .iter()
        .filter(|r| r["spec"]["replicas"] == 0)
        .collect();
    assert_eq!(old.len(), 1);
    assert_exact_counts(&s);
    assert!(s
        .pods
        .iter()
        .all(|p| p["spec"]["containers"][0]["image"] == "other:2"));
    let current = s
        .replicasets
        .iter()
        .find(|r| r["spec"]["replicas"] == 3)
        .unwrap();
    assert_eq!(
        current["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "2"
    );
}

#[test]
fn deleting_a_deployment_collects_its_replicasets_pods_and_bindings() {
    let nodes = vec![node_with("n0", "8", "16Gi", 110)];
    let mut s = settle(
        snapshot(
            vec![
                deployment("web", 3, "100m", "64Mi"),
                deployment("db", 2, "100m", "64Mi"),
            ],
            nodes,
        ),
        3,
    );
    s.deployments.retain(|d| d["metadata"]["name"] != "web");
    let plan = reconcile(&s, &ctx("n0", 5));
    let s = s.after(&plan);
    assert_eq!(s.replicasets.len(), 1);
    assert_eq!(s.pods.len(), 2);
    assert_eq!(s.bindings.len(), 2);
    assert!(reconcile(&s, &ctx("n0", 6)).is_empty());
}

#[test]
fn pods_on_a_dead_node_are_replaced_bare_pods_and_suspect_nodes_are_left_alone() {
    let nodes: Vec<NodeRecord> = (0..3)
        .map(|i| node_with(&format!("n{i}"), "8", "16Gi", 110))
        .collect();
    let mut s = snapshot(vec![deployment("web", 6, "100m", "64Mi")], nodes);
    s.pods.push(bare_pod(
        "solo",
        json!({"containers": [{"name": "c", "image": "i"}]}),
    ));
    let s = settle(s, 3);
    let solo = ("default".to_string(), "solo".to_string());
    let victim = s.bindings[&solo].node.clone();
    let on_victim: Vec<PodKey> = s
        .bindings
        .iter()
        .filter(|(_, b)| b.node == victim)
        .map(|(k, _)| k.clone())
        .collect();
    assert!(on_victim.len() >= 2);

    let mut suspect = s.clone();
    suspect.liveness.insert(victim.clone(), Liveness::Suspect);
    assert!(
        reconcile(&suspect, &ctx("n0", 1)).writes.is_empty(),
        "suspect: nothing moves"
    );

    let mut dead = s.clone();
    dead.liveness.insert(victim.clone(), Liveness::Dead);
    let plan = reconcile(&dead, &ctx("n0", 2));
    let after = dead.after(&plan);
    for key in &on_victim {
        let b = &after.bindings[key];
        if *key == solo {
            assert_eq!(b.node, victim, "a bare pod stays bound");
        } else {
            assert_ne!(b.node, victim, "{key:?} replaced");
            assert_ne!(b.id, s.bindings[key].id, "a fresh placement id");
        }
    }
    assert_exact_counts(&after);
    // A node unknown to the view is dead too.
    let mut unknown = s.clone();
    unknown.liveness.remove(&victim);
    let plan2 = reconcile(&unknown, &ctx("n0", 2));
    assert_eq!(plan2.counts().2, on_victim.len() - 1);
}

#[test]
fn node_selector_and_anti_affinity_are_honoured_and_unschedulable_pods_say_why() {
    let mut nodes: Vec<NodeRecord> = (0..3)
        .map(|i| node_with(&format!("n{i}"), "8", "16Gi", 110))
        .collect();
    nodes[2].labels.insert("disk".into(), "ssd".into());
    let mut ssd = deployment("fast", 2, "100m", "64Mi");
    ssd["spec"]["template"]["spec"]["nodeSelector"] = json!({"disk": "ssd"});
    let mut spread = deployment("spread", 4, "100m", "64Mi");
    spread["spec"]["template"]["spec"]["affinity"] = json!({"podAntiAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [{
            "labelSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["spread"]}]},
            "topologyKey": "kubernetes.io/hostname"}]}});
    let s = snapshot(vec![ssd, spread], nodes);
    let plan = reconcile(&s, &ctx("n0", 1));
    let s2 = s.after(&plan);
    let by = pods_by_deployment(&s2);
    for p in &by["fast"] {
        assert_eq!(s2.bindings[&key(p)].node, "n2");
    }
    let spread_nodes: Vec<&str> = by["spread"]
        .iter()
        .filter_map(|p| s2.bindings.get(&key(p)).map(|b| b.node.as_str()))
        .collect();
    assert_eq!(spread_nodes.len(), 3, "one per node, the fourth waits");
    assert_eq!(spread_nodes.iter().collect::<BTreeSet<_>>().len(), 3);
    assert_eq!(plan.scheduling.len(), 1);
    let SchedulingWrite::Put { record, .. } = &plan.scheduling[0] else {
        panic!("a record")
    };
    assert_eq!(
        record.message,
        "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules."
    );
    let warnings: Vec<&PlannedEvent> = plan
        .events
        .iter()
        .filter(|e| e.reason == EventReason::FailedScheduling)
        .collect();
    assert_eq!(warnings.len(), 1);
    assert_eq!(
        warnings[0].event_type,
        crate::model::workload::EventType::Warning
    );
    // Same reason next round: no new record, no new event.
    let again = reconcile(&s2, &ctx("n0", 2));
    assert!(again.is_empty(), "{again:?}");
    // A fourth node: the pod is placed and its record removed.
    let mut s3 = s2.clone();
    s3.nodes.push(node_with("n3", "8", "16Gi", 110));
    s3.liveness.insert("n3".into(), Liveness::Alive);
    let plan = reconcile(&s3, &ctx("n0", 3));
    assert_eq!(plan.counts().2, 1);
    assert!(matches!(
        plan.scheduling.as_slice(),
        [SchedulingWrite::Delete { .. }]
    ));
}

#[test]
fn unschedulable_messages_follow_kubernetes() {
    let nodes = vec![
        node_with("a", "1", "1Gi", 110),
        node_with("b", "1", "1Gi", 110),
        node_with("c", "8", "16Gi", 110),
    ];
    let mut s = snapshot(vec![], nodes);
    s.liveness.insert("c".into(), Liveness::Dead);
    s.pods.push(bare_pod(
        "big",
        json!({"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "2"}}}]}),
    ));
    s.pods.push(bare_pod(
        "sel",
        json!({"nodeSelector": {"gpu": "yes"}, "containers": [{"name": "c", "image": "i"}]}),
    ));
    let plan = reconcile(&s, &ctx("a", 1));
    let messages: BTreeMap<String, String> = plan
        .scheduling
        .iter()
        .filter_map(|w| match w {
            SchedulingWrite::Put { pod, record, .. } => Some((pod.clone(), record.message.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(messages["big"], "0/3 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/unreachable: }, 2 Insufficient cpu.");
    assert_eq!(messages["sel"], "0/3 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/unreachable: }, 2 node(s) didn't match Pod's node affinity/selector.");
    assert_eq!(
        unschedulable_message(0, &crate::sched::Reasons::default()),
        "no nodes available to schedule pods"
    );
}

#[test]
fn user_bound_pods_are_left_alone_but_use_capacity() {
    let nodes = vec![
        node_with("a", "1", "1Gi", 110),
        node_with("b", "1", "1Gi", 110),
    ];
    let mut s = snapshot(vec![deployment("web", 2, "600m", "64Mi")], nodes);
    s.pods.push(bare_pod(
        "pinned",
        json!({"nodeName": "a", "containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "600m"}}}]}),
    ));
    let plan = reconcile(&s, &ctx("a", 1));
    let s = s.after(&plan);
    assert!(!s
        .bindings
        .contains_key(&("default".to_string(), "pinned".to_string())));
    let web: Vec<&Binding> = s.bindings.values().collect();
    assert_eq!(web.len(), 1, "only b has room for one web pod");
    assert_eq!(web[0].node, "b");
}

#[test]
fn stray_pods_of_a_slot_and_stale_bindings_are_removed() {
    let nodes = vec![node_with("a", "8", "16Gi", 110)];
    let s = settle(
        snapshot(vec![deployment("web", 2, "100m", "64Mi")], nodes),
        3,
    );
    let mut s = s;
    // A copy claiming slot 0 under another name, and a binding for a pod that is gone.
    let mut stray = s.pods[0].clone();
    stray["metadata"]["name"] = json!("web-stray");
    stray["metadata"]["uid"] = json!("stray-uid");
    s.pods.push(stray);
    s.bindings.insert(
        ("default".into(), "gone".into()),
        s.bindings.values().next().unwrap().clone(),
    );
    let plan = reconcile(&s, &ctx("a", 1));
    let s = s.after(&plan);
    assert!(s.pods.iter().all(|p| p["metadata"]["name"] != "web-stray"));
    assert!(!s
        .bindings
        .contains_key(&("default".to_string(), "gone".to_string())));
    assert_exact_counts(&s);
}

fn arb_cluster() -> impl Strategy<Value = (Vec<NodeRecord>, Vec<Value>, Vec<Liveness>)> {
    let nodes = prop::collection::vec((1u32..8, 1u32..16, 1u32..20), 1..10).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (cpu, gib, pods))| {
                node_with(
                    &format!("n{i}"),
                    &cpu.to_string(),
                    &format!("{gib}Gi"),
                    pods,
                )
            })
            .collect::<Vec<_>>()
    });
    let deploys = prop::collection::vec((0i64..25, 0u32..1500, 0u32..3000), 1..5).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (r, cpu, mem))| {
                deployment(&format!("d{i}"), r, &format!("{cpu}m"), &format!("{mem}Mi"))
            })
            .collect::<Vec<_>>()
    });
    let live = prop::collection::vec(
        prop_oneof![
            6 => Just(Liveness::Alive),
            1 => Just(Liveness::Suspect),
            1 => Just(Liveness::Dead)
        ],
        10,
    );
    (nodes, deploys, live)
}

fn with_liveness(nodes: Vec<NodeRecord>, deploys: Vec<Value>, live: &[Liveness]) -> Snapshot {
    let mut s = snapshot(deploys, nodes);
    for (i, n) in s.nodes.iter().enumerate() {
        s.liveness.insert(n.name.clone(), live[i]);
    }
    s
}

proptest! {
    // Failing cases are kept beside this file (`tests.proptest-regressions`), not in a
    // top-level directory.
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    /// After one reconcile: exact counts, never over capacity, bound only to alive nodes, and a
    /// second reconcile has nothing to do.
    #[test]
    fn one_round_is_a_fixpoint_within_capacity((nodes, deploys, live) in arb_cluster(), seed in any::<u64>()) {
        let s = with_liveness(nodes, deploys, &live);
        let plan = reconcile(&s, &ctx("n0", seed));
        let s = s.after(&plan);
        assert_exact_counts(&s);
        assert_within_capacity(&s);
        let again = reconcile(&s, &ctx("n0", seed ^ 1));
        prop_assert!(again.is_empty(), "second plan: {:?}", again);
        // Every pod is bound to a live node, or has a record saying why not.
        for p in &s.pods {
            let k = key(p);
            let placed = s.bindings.get(&k).is_some_and(|b| s.liveness[&b.node] == Liveness::Alive);
            prop_assert!(placed ^ s.scheduling.contains_key(&k));
        }
    }

    /// Pods without requests on equal nodes: per owner, node counts differ by at most one.
    #[test]
    fn replicas_spread_evenly(n_nodes in 1usize..12, replicas in 0i64..60) {
        let nodes = (0..n_nodes).map(|i| node_with(&format!("n{i}"), "64", "256Gi", 500)).collect();
        let s = snapshot(vec![deployment("web", replicas, "0", "0")], nodes);
        let s = s.after(&reconcile(&s, &ctx("n0", 1)));
        let mut per: BTreeMap<&str, i64> = s.nodes.iter().map(|n| (n.name.as_str(), 0)).collect();
        for b in s.bindings.values() {
            *per.get_mut(b.node.as_str()).unwrap() += 1;
        }
        let (lo, hi) = (per.values().min().unwrap(), per.values().max().unwrap());
        prop_assert!(hi - lo <= 1, "{:?}", per);
        prop_assert_eq!(per.values().sum::<i64>(), replicas);
    }

    /// Nodes die and come back between rounds: the state stays exact and within capacity.
    #[test]
    fn failover_rounds_stay_exact((nodes, deploys, _) in arb_cluster(), lives in prop::collection::vec(prop::collection::vec(any::<bool>(), 10), 1..5)) {
        let mut s = snapshot(deploys, nodes);
        for (round, alive) in lives.iter().enumerate() {
            for (i, n) in s.nodes.iter().enumerate() {
                s.liveness.insert(n.name.clone(), if alive[i] { Liveness::Alive } else { Liveness::Dead });
            }
            s = s.after(&reconcile(&s, &ctx("n0", round as u64)));
            assert_exact_counts(&s);
            assert_within_capacity(&s);
            for (k, b) in &s.bindings {
                let pod = s.pods.iter().find(|p| key(p) == *k).unwrap();
                prop_assert_eq!(&b.pod_uid, pod["metadata"]["uid"].as_str().unwrap());
                // On a dead node only while no live node has room (and a record says so).
                prop_assert!(s.liveness[&b.node] == Liveness::Alive || s.scheduling.contains_key(k));
            }
        }
    }
}

/// The cluster document of `s` (objects, bindings, nodes).
fn doc_of(s: &Snapshot, actor: u8) -> ClusterDoc {
    let mut d = ClusterDoc::empty(automerge::ActorId::from(vec![actor; 16]));
    for n in &s.nodes {
        d.put_node(n).unwrap();
    }
    let mut writes = Vec::new();
    for (resource, list) in [
        (crate::model::workload::DEPLOYMENTS, &s.deployments),
        (crate::model::workload::REPLICASETS, &s.replicasets),
        (crate::model::workload::PODS, &s.pods),
    ] {
        for v in list {
            let (namespace, name) = key(v);
            writes.push(Write::PutObject {
                resource,
                namespace,
                name,
                object: v.clone(),
            });
        }
    }
    for ((namespace, pod), binding) in &s.bindings {
        writes.push(Write::PutBinding {
            namespace: namespace.clone(),
            pod: pod.clone(),
            binding: binding.clone(),
        });
    }
    d.apply_writes(&writes).unwrap();
    d
}

fn merge(a: &mut ClusterDoc, b: &mut ClusterDoc) {
    let from_a = a.changes_since(&[]);
    let from_b = b.changes_since(&[]);
    a.apply_pushed(&from_b).unwrap();
    b.apply_pushed(&from_a).unwrap();
    assert_eq!(a.heads_digest(), b.heads_digest());
}

/// Two leaders (a partition: each sees the other half dead) reconcile on two replicas of the
/// same state; merged, every pod has one binding, identical on both replicas; the copies the
/// losing bindings started stop, leaving exactly one per slot; and one more round by a
/// single leader with the whole view restores capacity and leaves every pod on a live node.
#[test]
fn concurrent_leaders_merge_to_one_binding_per_pod() {
    for seed in 0..8u64 {
        let nodes: Vec<NodeRecord> = (0..6)
            .map(|i| node_with(&format!("n{i}"), "2", "4Gi", 8))
            .collect();
        let base = settle(
            snapshot(
                vec![
                    deployment("web", 12, "300m", "256Mi"),
                    deployment("api", 6, "500m", "512Mi"),
                ],
                nodes.clone(),
            ),
            3,
        );
        let mut a = doc_of(&base, 1);
        let mut b = ClusterDoc::load(&a.save(), automerge::ActorId::from(vec![2u8; 16])).unwrap();
        // Partition: A sees n0..n2, B sees n3..n5; B also scales web down to 9.
        let view = |alive: std::ops::Range<usize>| -> BTreeMap<String, Liveness> {
            (0..6)
                .map(|i| {
                    let l = if alive.contains(&i) {
                        Liveness::Alive
                    } else {
                        Liveness::Dead
                    };
                    (format!("n{i}"), l)
                })
                .collect()
        };
        let mut scaled = base
            .deployments
            .iter()
            .find(|d| d["metadata"]["name"] == "web")
            .unwrap()
            .clone();
        scaled["spec"]["replicas"] = json!(9);
        b.put_object("deployments.apps", Some("default"), "web", &scaled)
            .unwrap();
        let mut copies: BTreeSet<(PodKey, String)> = base
            .bindings
            .iter()
            .map(|(k, b)| (k.clone(), b.node.clone()))
            .collect();
        for (doc, alive, leader) in [(&mut a, 0..3, "n0"), (&mut b, 3..6, "n5")] {
            let s = doc.workload_snapshot(view(alive), BTreeMap::new());
            let plan = reconcile(&s, &ctx(leader, seed * 2 + u64::from(leader == "n5")));
            doc.apply_writes(&plan.writes).unwrap();
            for w in &plan.writes {
                if let Write::PutBinding {
                    namespace,
                    pod,
                    binding,
                } = w
                {
                    copies.insert(((namespace.clone(), pod.clone()), binding.node.clone()));
                }
            }
            let after = doc.workload_snapshot(BTreeMap::new(), BTreeMap::new());
            assert_exact_counts(&after);
        }
        merge(&mut a, &mut b);
        let merged_a = a.workload_snapshot(all_alive(&nodes), BTreeMap::new());
        let merged_b = b.workload_snapshot(all_alive(&nodes), BTreeMap::new());
        assert_eq!(
            merged_a.bindings, merged_b.bindings,
            "same winners everywhere"
        );
        // Kubelets keep only the copy their node's winning binding names.
        let running: BTreeSet<&(PodKey, String)> = copies
            .iter()
            .filter(|(k, node)| merged_a.bindings.get(k).is_some_and(|b| b.node == *node))
            .collect();
        let per_pod: BTreeMap<&PodKey, usize> =
            running.iter().fold(BTreeMap::new(), |mut m, (k, _)| {
                *m.entry(k).or_default() += 1;
                m
            });
        assert!(per_pod.values().all(|&c| c == 1), "one copy per pod");
        // The healed leader converges to exact counts within capacity.
        let healed = settle(merged_a, 4);
        assert_exact_counts(&healed);
        assert_within_capacity(&healed);
        assert_eq!(pods_by_deployment(&healed)["web"].len(), 9);
        assert_eq!(healed.bindings.len(), 15);
    }
}

/// Two leaders whose views differ both place pods: merged, a node may hold more than fits;
/// the next round moves the newest placements until it fits.
#[test]
fn overcommit_from_concurrent_leaders_is_repaired() {
    let nodes: Vec<NodeRecord> = (0..4)
        .map(|i| node_with(&format!("n{i}"), "1", "4Gi", 110))
        .collect();
    let base = snapshot(vec![deployment("web", 4, "600m", "0")], nodes.clone());
    let mut created = base.after(&reconcile(&base, &ctx("n0", 0)));
    created.bindings.clear();
    let a_bytes = doc_of(&created, 1).save();
    let mut any_overcommit = false;
    for i in 0..4 {
        for j in (0..4).filter(|&j| j > i) {
            let mut a2 =
                ClusterDoc::load(&a_bytes, automerge::ActorId::from(vec![3u8; 16])).unwrap();
            let mut b2 =
                ClusterDoc::load(&a_bytes, automerge::ActorId::from(vec![4u8; 16])).unwrap();
            // A sees only n_i and n_j, and has written more since the base (its binding ops
            // get higher counters and win their keys); B sees every node.
            for k in 0..10 {
                a2.put_object("configmaps", Some("default"), &format!("c{k}"), &json!({}))
                    .unwrap();
            }
            let mut view_a: BTreeMap<String, Liveness> = nodes
                .iter()
                .map(|n| (n.name.clone(), Liveness::Dead))
                .collect();
            view_a.insert(format!("n{i}"), Liveness::Alive);
            view_a.insert(format!("n{j}"), Liveness::Alive);
            for (doc, view, leader) in [(&mut a2, view_a, "n0"), (&mut b2, all_alive(&nodes), "n1")]
            {
                let snap = doc.workload_snapshot(view, BTreeMap::new());
                let plan = reconcile(&snap, &ctx(leader, 7));
                doc.apply_writes(&plan.writes).unwrap();
            }
            merge(&mut a2, &mut b2);
            let merged = a2.workload_snapshot(all_alive(&nodes), BTreeMap::new());
            any_overcommit |= node_load(&merged).values().any(|l| l.0 > 1000);
            let healed = settle(merged, 4);
            assert_within_capacity(&healed);
            assert_exact_counts(&healed);
            assert_eq!(healed.bindings.len(), 4, "views ({i}, {j})");
        }
    }
    assert!(
        any_overcommit,
        "some pair of views produced an overcommit to repair"
    );
}

#[test]
fn a_plan_is_one_change() {
    let nodes: Vec<NodeRecord> = (0..3)
        .map(|i| node_with(&format!("n{i}"), "4", "8Gi", 110))
        .collect();
    let s = snapshot(vec![deployment("web", 5, "100m", "64Mi")], nodes);
    let mut d = doc_of(&s, 1);
    let before = d.heads();
    let plan = reconcile(
        &d.workload_snapshot(s.liveness.clone(), BTreeMap::new()),
        &ctx("n0", 1),
    );
    assert_eq!(d.apply_writes(&plan.writes).unwrap(), 11);
    assert_eq!(d.changes_since(&before).len(), 1);
    let after = d.workload_snapshot(s.liveness.clone(), BTreeMap::new());
    assert_eq!(after.pods.len(), 5);
    assert_eq!(after.bindings.len(), 5);
}
