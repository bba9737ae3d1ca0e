//! Tests of the Deployment controller's rollouts: the surge and availability bounds under
//! random readiness (property), a stalled rollout and its undo, Recreate, pause, revisions
//! and history, minReadySeconds, readiness from the current status record only.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::deployment::{CHANGE_CAUSE_ANNOTATION, REVISION_ANNOTATION};
use super::fixtures::{cluster_of, key, leader_ctx, node, t0};
use super::rollout::Rollout;
use super::*;
use crate::model::workload::PodStatusRecord;

fn at(secs: i64) -> LeaderCtx {
    leader_ctx("leader", t0() + Duration::seconds(secs), secs as u64)
}

fn deployment(replicas: i64, strategy: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "uid": "d-web", "generation": 1},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": strategy,
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "a:1"}]},
            },
        },
    })
}

fn cluster(d: Value) -> Snapshot {
    Snapshot {
        deployments: vec![d],
        ..cluster_of(vec![node("n0"), node("n1")])
    }
}

fn set_image(s: &mut Snapshot, image: &str) {
    s.deployments[0]["spec"]["template"]["spec"]["containers"][0]["image"] = json!(image);
}

fn image_of(p: &Value) -> &str {
    p["spec"]["containers"][0]["image"].as_str().unwrap()
}

/// Marks every pod for which `ready(pod)` holds Ready since `when` (pods already Ready keep
/// their time).
fn make_ready(s: &mut Snapshot, when: DateTime<Utc>, ready: impl Fn(&Value) -> bool) {
    for p in &s.pods {
        if ready(p) {
            s.ready.entry(key(p)).or_insert(when);
        }
    }
}

/// Reconciles at `secs` until nothing is left to do, with every pod Ready.
fn settle_ready(mut s: Snapshot, secs: i64) -> Snapshot {
    for _ in 0..50 {
        make_ready(&mut s, t0(), |_| true);
        let plan = reconcile(&s, &at(secs));
        if plan.is_empty() {
            return s;
        }
        s = s.after(&plan);
    }
    panic!("no fixpoint");
}

fn rs_sizes(s: &Snapshot) -> BTreeMap<String, i64> {
    s.replicasets
        .iter()
        .map(|rs| {
            (
                image_of(&rs["spec"]["template"]).to_string(),
                rs["spec"]["replicas"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn available(s: &Snapshot, now: DateTime<Utc>, min_ready: i64) -> i64 {
    s.pods
        .iter()
        .filter(|p| {
            s.ready
                .get(&key(p))
                .is_some_and(|t| now - *t >= Duration::seconds(min_ready))
        })
        .count() as i64
}

fn revision(rs: &Value) -> &str {
    rs["metadata"]["annotations"][REVISION_ANNOTATION]
        .as_str()
        .unwrap_or("")
}

fn rs_with_image<'s>(s: &'s Snapshot, image: &str) -> &'s Value {
    s.replicasets
        .iter()
        .find(|rs| image_of(&rs["spec"]["template"]) == image)
        .unwrap()
}

fn arb_intstr() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0i64..5).prop_map(|n| json!(n)),
        (0i64..=100).prop_map(|p| json!(format!("{p}%"))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    /// A rollout under random readiness (pods turn Ready at random, and Ready pods sometimes
    /// fail): no round of the controller takes availability below `replicas - maxUnavailable`
    /// (nor below what it was, if it already was), the pods never exceed
    /// `replicas + maxSurge`, every round is a fixpoint of itself, and once pods stop
    /// failing the rollout completes.
    #[test]
    fn rollouts_stay_within_surge_and_unavailable(
        replicas in 1i64..16,
        surge in arb_intstr(),
        unavailable in arb_intstr(),
        min_ready in prop_oneof![Just(0i64), 1i64..4],
        seed in any::<u64>(),
    ) {
        let mut d = deployment(replicas, json!({"type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}));
        d["spec"]["minReadySeconds"] = json!(min_ready);
        let p = Rollout::of(&d["spec"], replicas);
        let mut s = settle_ready(cluster(d), 0);
        prop_assert_eq!(s.pods.len() as i64, replicas);
        set_image(&mut s, "b:2");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let min_available = replicas - p.max_unavailable;
        let mut done = false;
        for round in 1..400i64 {
            let now = t0() + Duration::seconds(round);
            let failing = round < 150;
            // Readiness changes between rounds (the kubelets' doing, not the controller's).
            let keys: Vec<PodKey> = s.pods.iter().map(key).collect();
            for k in keys {
                match s.ready.entry(k) {
                    std::collections::btree_map::Entry::Occupied(e) => {
                        if failing && rng.gen_ratio(1, 20) {
                            e.remove();
                        }
                    }
                    std::collections::btree_map::Entry::Vacant(e) => {
                        if rng.gen_ratio(1, 3) || !failing {
                            e.insert(now - Duration::seconds(rng.gen_range(0..3)));
                        }
                    }
                }
            }
            let before = available(&s, now, min_ready);
            let plan = reconcile(&s, &at(round));
            let next = s.after(&plan);
            let after = available(&next, now, min_ready);
            prop_assert!(after >= before.min(min_available),
                "round {}: available {} → {} (min {}), sizes {:?}", round, before, after, min_available, rs_sizes(&next));
            prop_assert!(next.pods.len() as i64 <= replicas + p.max_surge,
                "round {}: {} pods, sizes {:?}", round, next.pods.len(), rs_sizes(&next));
            let total: i64 = rs_sizes(&next).values().sum();
            prop_assert!(total <= replicas + p.max_surge);
            let again = reconcile(&next, &at(round));
            prop_assert!(again.writes.is_empty(), "round {}: not a fixpoint: {:?}", round, again.writes);
            s = next;
            let sizes = rs_sizes(&s);
            if sizes.get("a:1") == Some(&0) && sizes.get("b:2") == Some(&replicas)
                && s.pods.iter().all(|p| image_of(p) == "b:2") {
                done = true;
                break;
            }
        }
        prop_assert!(done, "rollout did not complete: {:?}", rs_sizes(&s));
    }
}

#[test]
fn a_broken_rollout_stalls_and_undo_recovers() {
    // 4 replicas, 25%/25%: surge 1, unavailable 1.
    let mut s = settle_ready(cluster(deployment(4, json!({}))), 0);
    set_image(&mut s, "broken:1");
    // New pods never become Ready.
    for round in 1..20 {
        make_ready(&mut s, t0(), |p| image_of(p) == "a:1");
        s = s.after(&reconcile(&s, &at(round)));
        assert!(available(&s, t0() + Duration::seconds(round), 0) >= 3);
        assert!(s.pods.len() <= 5);
    }
    let sizes = rs_sizes(&s);
    assert_eq!(sizes["a:1"], 3, "one old pod given up for the budget");
    assert_eq!(
        sizes["broken:1"], 2,
        "surge plus the freed one, all unavailable"
    );
    assert_eq!(revision(rs_with_image(&s, "broken:1")), "2");
    // `rollout undo`: the Deployment's template goes back to the first revision.
    set_image(&mut s, "a:1");
    let s = settle_ready(s, 30);
    let sizes = rs_sizes(&s);
    assert_eq!((sizes["a:1"], sizes["broken:1"]), (4, 0));
    assert!(s.pods.iter().all(|p| image_of(p) == "a:1"));
    // Current again: revision max + 1.
    assert_eq!(revision(rs_with_image(&s, "a:1")), "3");
    assert_eq!(revision(rs_with_image(&s, "broken:1")), "2");
}

#[test]
fn undo_as_kubectl_sends_it_reuses_the_old_replicaset() {
    let mut s = settle_ready(cluster(deployment(2, json!({}))), 0);
    let first: Vec<String> = s.replicasets.iter().map(|rs| key(rs).1).collect();
    set_image(&mut s, "b:1");
    let mut s = settle_ready(s, 10);
    assert_eq!(s.replicasets.len(), 2);
    // kubectl 1.32's undo replaces the template with the old ReplicaSet's, serialized from a Go
    // struct: `metadata.creationTimestamp: null` comes along.
    set_image(&mut s, "a:1");
    s.deployments[0]["spec"]["template"]["metadata"]["creationTimestamp"] = Value::Null;
    let s = settle_ready(s, 20);
    assert_eq!(
        s.replicasets.len(),
        2,
        "no third ReplicaSet for the same template"
    );
    let current = rs_with_image(&s, "a:1");
    assert_eq!(key(current).1, first[0]);
    assert_eq!(revision(current), "3");
    assert_eq!(rs_sizes(&s)["a:1"], 2);
}

#[test]
fn recreate_scales_old_to_zero_before_the_new_replicaset_exists() {
    let mut s = settle_ready(cluster(deployment(3, json!({"type": "Recreate"}))), 0);
    set_image(&mut s, "b:2");
    let plan = reconcile(&s, &at(1));
    s = s.after(&plan);
    assert_eq!(rs_sizes(&s), BTreeMap::from([("a:1".to_string(), 0)]));
    assert!(s.pods.is_empty(), "old pods deleted in the same round");
    // The round after: old pods gone, the new ReplicaSet at full size.
    s = s.after(&reconcile(&s, &at(2)));
    assert_eq!(rs_sizes(&s)["b:2"], 3);
    assert_eq!(s.pods.len(), 3);
    assert!(reconcile(&s, &at(3)).writes.is_empty());
}

#[test]
fn a_paused_deployment_scales_but_does_not_roll_out() {
    let mut s = settle_ready(cluster(deployment(4, json!({}))), 0);
    s.deployments[0]["spec"]["paused"] = json!(true);
    set_image(&mut s, "b:2");
    s.deployments[0]["spec"]["replicas"] = json!(6);
    let s2 = settle_ready(s.clone(), 1);
    assert_eq!(rs_sizes(&s2), BTreeMap::from([("a:1".to_string(), 6)]));
    // Resumed: the rollout runs to the end.
    let mut s = s2;
    s.deployments[0]["spec"]["paused"] = json!(false);
    let s = settle_ready(s, 2);
    assert_eq!(
        rs_sizes(&s),
        BTreeMap::from([("a:1".to_string(), 0), ("b:2".to_string(), 6)])
    );
}

#[test]
fn paused_mid_rollout_scales_replicasets_in_proportion() {
    let mut s = settle_ready(cluster(deployment(10, json!({}))), 0);
    set_image(&mut s, "b:2");
    // One round with no new pod Ready (surge 3, unavailable 2): new to 3, old to 8, then the
    // new one to 5 (13 in all).
    s = s.after(&reconcile(&s, &at(1)));
    let sizes = rs_sizes(&s);
    assert_eq!((sizes["a:1"], sizes["b:2"]), (8, 5));
    s.deployments[0]["spec"]["paused"] = json!(true);
    s.deployments[0]["spec"]["replicas"] = json!(20);
    s = s.after(&reconcile(&s, &at(2)));
    let sizes = rs_sizes(&s);
    // 13 → 25 (20 + surge 5): 8·25/13 ≈ 15, 5·25/13 ≈ 10.
    assert_eq!((sizes["a:1"], sizes["b:2"]), (15, 10));
    assert!(reconcile(&s, &at(3)).writes.is_empty());
}

#[test]
fn revisions_change_causes_and_history_limit() {
    let mut d = deployment(2, json!({}));
    d["spec"]["revisionHistoryLimit"] = json!(2);
    d["metadata"]["annotations"] = json!({
        CHANGE_CAUSE_ANNOTATION: "v1",
        "kubectl.kubernetes.io/last-applied-configuration": "{}",
    });
    let mut s = settle_ready(cluster(d), 0);
    for (i, image) in ["b:2", "c:3", "d:4", "e:5"].iter().enumerate() {
        set_image(&mut s, image);
        s.deployments[0]["metadata"]["annotations"][CHANGE_CAUSE_ANNOTATION] =
            json!(format!("to {image}"));
        s = settle_ready(s, i as i64 + 1);
    }
    // Current plus two old ones kept: revisions 3, 4 and 5.
    let mut revisions: Vec<(String, String)> = s
        .replicasets
        .iter()
        .map(|rs| {
            (
                revision(rs).to_string(),
                image_of(&rs["spec"]["template"]).to_string(),
            )
        })
        .collect();
    revisions.sort();
    assert_eq!(
        revisions,
        vec![
            ("3".to_string(), "c:3".to_string()),
            ("4".to_string(), "d:4".to_string()),
            ("5".to_string(), "e:5".to_string())
        ]
    );
    let current = rs_with_image(&s, "e:5");
    assert_eq!(
        current["metadata"]["annotations"][CHANGE_CAUSE_ANNOTATION],
        "to e:5"
    );
    assert!(current["metadata"]["annotations"]
        .get("kubectl.kubernetes.io/last-applied-configuration")
        .is_none());
    // An old ReplicaSet keeps the change cause it had.
    assert_eq!(
        rs_with_image(&s, "d:4")["metadata"]["annotations"][CHANGE_CAUSE_ANNOTATION],
        "to d:4"
    );
    // Only the ReplicaSets' own pods remain.
    let uids: BTreeSet<&str> = s
        .replicasets
        .iter()
        .filter_map(|rs| rs["metadata"]["uid"].as_str())
        .collect();
    assert!(s
        .pods
        .iter()
        .all(|p| uids.contains(p["metadata"]["ownerReferences"][0]["uid"].as_str().unwrap())));
}

#[test]
fn min_ready_seconds_gates_on_time_and_asks_to_be_woken() {
    let mut d = deployment(
        2,
        json!({"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}),
    );
    d["spec"]["minReadySeconds"] = json!(10);
    let mut s = settle_ready(cluster(d), 0);
    set_image(&mut s, "b:2");
    s = s.after(&reconcile(&s, &at(100)));
    assert_eq!(rs_sizes(&s)["b:2"], 1);
    // The new pod is Ready at 101: available at 111.
    make_ready(&mut s, t0() + Duration::seconds(101), |p| {
        image_of(p) == "b:2"
    });
    let plan = reconcile(&s, &at(105));
    assert!(plan.writes.is_empty());
    assert_eq!(plan.wake, Some(t0() + Duration::seconds(111)));
    let plan = reconcile(&s, &at(111));
    s = s.after(&plan);
    let sizes = rs_sizes(&s);
    assert_eq!((sizes["a:1"], sizes["b:2"]), (1, 2));
}

/// A `minReadySeconds` past chrono's range (stored before the API bounded it, or written by a
/// member) never panics the leader's round: the pod just never becomes available.
#[test]
fn min_ready_seconds_near_i64_max_does_not_panic() {
    let mut d = deployment(
        2,
        json!({"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}),
    );
    d["spec"]["minReadySeconds"] = json!(i64::MAX - 1);
    let mut s = settle_ready(cluster(d), 0);
    set_image(&mut s, "b:2");
    s = s.after(&reconcile(&s, &at(100)));
    make_ready(&mut s, t0() + Duration::seconds(101), |p| {
        image_of(p) == "b:2"
    });
    let plan = reconcile(&s, &at(105));
    assert!(plan.writes.is_empty());
}

#[test]
fn two_leaders_plan_the_same_rollout_step() {
    let mut s = settle_ready(cluster(deployment(10, json!({}))), 0);
    set_image(&mut s, "b:2");
    let a = reconcile(
        &s,
        &LeaderCtx {
            node: "a".into(),
            seed: 1,
            ..at(5)
        },
    );
    let b = reconcile(
        &s,
        &LeaderCtx {
            node: "b".into(),
            seed: 99,
            ..at(5)
        },
    );
    let objects = |p: &Plan| -> Vec<Write> {
        p.writes
            .iter()
            .filter(|w| matches!(w, Write::PutObject { .. } | Write::DeleteObject { .. }))
            .cloned()
            .collect()
    };
    assert!(!objects(&a).is_empty());
    assert_eq!(objects(&a), objects(&b));
}

#[test]
fn readiness_comes_from_the_current_record_only() {
    let s = settle_ready(cluster(deployment(2, json!({}))), 0);
    let mut s = Snapshot {
        ready: BTreeMap::new(),
        ..s
    };
    let pods: Vec<PodKey> = s.pods.iter().map(key).collect();
    let ready_status = json!({"phase": "Running", "conditions": [
        {"type": "Ready", "status": "True", "lastTransitionTime": "2025-01-01T00:00:07Z"}]});
    let mut records = StatusRecords::new();
    for (i, k) in pods.iter().enumerate() {
        let b = &s.bindings[k];
        let uid = s.pods[i]["metadata"]["uid"].as_str().unwrap().to_string();
        // Pod 0: the record of its binding. Pod 1: a stale record of an earlier placement.
        let binding = if i == 0 {
            b.id.clone()
        } else {
            "earlier".into()
        };
        records.insert(
            k.clone(),
            vec![(
                b.node.clone(),
                std::sync::Arc::new(PodStatusRecord {
                    binding,
                    pod_uid: uid,
                    status: ready_status.clone(),
                }),
            )],
        );
    }
    s = s.with_readiness(&records);
    assert_eq!(
        s.ready.keys().cloned().collect::<Vec<_>>(),
        vec![pods[0].clone()]
    );
    assert_eq!(s.ready[&pods[0]], t0() + Duration::seconds(7));
    // Its node dead in the leader's view: not ready.
    let node0 = s.bindings[&pods[0]].node.clone();
    s.liveness.insert(node0, Liveness::Dead);
    assert!(s.with_readiness(&records).ready.is_empty());
}
