//! Tests of what users set on nodes, as the leader's reconcile honours it: labels for
//! `nodeSelector`, `NoSchedule` / `PreferNoSchedule` / `NoExecute` taints against pod
//! tolerations, and cordoned nodes — for placement, DaemonSets and evictions.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use serde_json::{json, Value};

use super::fixtures::{cluster_of, deployment_object as deployment, key, leader_ctx, node, t0};
use super::*;
use crate::model::taint::{self, parse_taints, Effect};
use crate::model::workload::EventReason;
use crate::model::{with_user_labels, NodeSettings};

/// `t0` as a taint's `timeAdded` spells it.
const T0: &str = "2025-01-01T00:00:00Z";

fn settings(taints: Value, unschedulable: bool) -> NodeSettings {
    NodeSettings {
        taints: parse_taints(&taints, "spec.taints").unwrap(),
        unschedulable,
        ..NodeSettings::default()
    }
}

fn cluster(names: &[&str], set: Vec<(&str, NodeSettings)>) -> Snapshot {
    let settings: BTreeMap<String, NodeSettings> =
        set.into_iter().map(|(n, s)| (n.to_string(), s)).collect();
    let mut s = cluster_of(names.iter().map(|n| node(n)).collect());
    s.nodes = with_user_labels(s.nodes, &settings);
    s.node_settings = settings;
    s
}

fn pod(name: &str, spec_extra: Value) -> Value {
    super::fixtures::pod_object(name, json!({}), spec_extra)
}

fn ctx(now: DateTime<Utc>, seed: u64) -> LeaderCtx {
    leader_ctx("leader", now, seed)
}

fn settle(mut s: Snapshot, now: DateTime<Utc>) -> Snapshot {
    for i in 0..20 {
        let plan = reconcile(&s, &ctx(now, i));
        if plan.writes.is_empty() {
            return s;
        }
        s = s.after(&plan);
    }
    panic!("no fixpoint");
}

/// Node of each bound pod.
fn placement(s: &Snapshot) -> BTreeMap<String, String> {
    s.bindings
        .iter()
        .map(|(k, b)| (k.1.clone(), b.node.clone()))
        .collect()
}

/// Why each unplaced pod is unschedulable, from the scheduling records once a reconcile at
/// `now` has run (the scheduler writes a record only when its message changes, so a settled
/// snapshot already holds them).
fn unschedulable(s: &Snapshot, now: DateTime<Utc>) -> BTreeMap<String, String> {
    s.after(&reconcile(s, &ctx(now, 99)))
        .scheduling
        .into_iter()
        .map(|((_, pod), record)| (pod, record.message))
        .collect()
}

#[test]
fn no_schedule_taints_repel_pods_that_do_not_tolerate_them() {
    let gpu = json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]);
    let mut s = cluster(&["a", "b"], vec![("b", settings(gpu, false))]);
    for i in 0..6 {
        s.pods.push(pod(&format!("plain{i}"), json!({})));
    }
    let pin_b = json!({"kubernetes.io/hostname": "b"});
    s.pods.push(pod("tolerates", json!({"nodeSelector": pin_b,
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]})));
    s.pods.push(pod(
        "exists",
        json!({"nodeSelector": pin_b,
        "tolerations": [{"key": "dedicated", "operator": "Exists"}]}),
    ));
    s.pods.push(pod(
        "everything",
        json!({"nodeSelector": pin_b,
        "tolerations": [{"operator": "Exists"}]}),
    ));
    s.pods.push(pod(
        "wrong-value",
        json!({"nodeSelector": pin_b,
        "tolerations": [{"key": "dedicated", "value": "cpu"}]}),
    ));
    s.pods.push(pod(
        "wrong-effect",
        json!({"nodeSelector": pin_b,
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}]}),
    ));
    let s = settle(s, t0());
    let at = placement(&s);
    for i in 0..6 {
        assert_eq!(at[&format!("plain{i}")], "a");
    }
    for p in ["tolerates", "exists", "everything"] {
        assert_eq!(at[p], "b", "{p}");
    }
    assert!(!at.contains_key("wrong-value") && !at.contains_key("wrong-effect"));
    let why = unschedulable(&s, t0());
    assert_eq!(
        why["wrong-value"],
        "0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had untolerated taint {dedicated: gpu}."
    );
}

#[test]
fn prefer_no_schedule_is_a_preference() {
    let soft = json!([{"key": "spare", "effect": "PreferNoSchedule"}]);
    let mut s = cluster(&["a", "b"], vec![("b", settings(soft, false))]);
    s.deployments.push(deployment("web", 4, json!({})));
    let s = settle(s, t0());
    assert!(placement(&s).values().all(|n| n == "a"));
    // When it is the only node, it is used.
    let mut s = cluster(
        &["b"],
        vec![(
            "b",
            settings(
                json!([{"key": "spare", "effect": "PreferNoSchedule"}]),
                false,
            ),
        )],
    );
    s.pods.push(pod("p", json!({})));
    assert_eq!(placement(&settle(s, t0()))["p"], "b");
}

#[test]
fn cordoned_nodes_get_no_new_pods_but_keep_theirs() {
    let mut s = cluster(&["a", "b"], vec![]);
    s.deployments.push(deployment("web", 4, json!({})));
    let s = settle(s, t0());
    let on_b = placement(&s).values().filter(|n| *n == "b").count();
    assert!(on_b > 0);
    let mut s = s;
    s.node_settings
        .insert("b".into(), settings(json!(null), true));
    s.deployments[0]["spec"]["replicas"] = json!(8);
    s.pods.push(pod(
        "bare",
        json!({"nodeSelector": {"kubernetes.io/hostname": "b"}}),
    ));
    s.pods.push(pod(
        "tolerant",
        json!({"nodeSelector": {"kubernetes.io/hostname": "b"},
               "tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}]}),
    ));
    let s = settle(s, t0());
    let at = placement(&s);
    // Its pods stay; new ones go elsewhere.
    assert_eq!(
        at.iter()
            .filter(|(p, n)| p.starts_with("web") && *n == "b")
            .count(),
        on_b
    );
    assert_eq!(at.len(), 9);
    assert_eq!(at["tolerant"], "b");
    assert_eq!(
        unschedulable(&s, t0())["bare"],
        "0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) were unschedulable."
    );
}

#[test]
fn users_labels_serve_node_selectors() {
    let mut ssd = NodeSettings::default();
    ssd.labels.insert("disk".into(), "ssd".into());
    let mut s = cluster(&["a", "b", "c"], vec![("c", ssd)]);
    s.deployments.push(deployment(
        "db",
        3,
        json!({"nodeSelector": {"disk": "ssd"}}),
    ));
    let s = settle(s, t0());
    let at = placement(&s);
    assert_eq!(at.len(), 3);
    assert!(at.values().all(|n| n == "c"));
}

#[test]
fn no_execute_taints_evict_pods_that_do_not_tolerate_them() {
    let secs = Duration::seconds;
    let mut s = cluster(&["a", "b"], vec![]);
    s.deployments.push(deployment("web", 4, json!({})));
    // Pinned to b, so that once evicted they come back to b: their toleration then counts
    // from their new placement, not from the taint's timeAdded.
    s.deployments.push(deployment(
        "patient",
        2,
        json!({"nodeSelector": {"kubernetes.io/hostname": "b"},
               "tolerations": [{"key": "maint", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60}]}),
    ));
    s.deployments.push(deployment(
        "stays",
        2,
        json!({"tolerations": [{"key": "maint", "operator": "Exists"}]}),
    ));
    s.pods.push(pod("bare", json!({"nodeName": "b"})));
    let mut s = settle(s, t0());
    let before = placement(&s);
    assert!(before.values().filter(|n| *n == "b").count() >= 3);
    // The taint comes 10 s after the pods were placed.
    let tainted = t0() + secs(10);
    let mut maint = settings(json!([{"key": "maint", "effect": "NoExecute"}]), false);
    maint.taints[0].time_added = Some(tainted);
    s.node_settings.insert("b".into(), maint);
    let plan = reconcile(&s, &ctx(tainted, 1));
    assert_eq!(plan.wake, Some(tainted + secs(60)));
    assert!(plan
        .events
        .iter()
        .any(|e| e.reason == EventReason::TaintManagerEviction && e.involved.name == "bare"));
    let s = settle(s, tainted);
    let at = placement(&s);
    let on_b = |prefix: &str| {
        at.iter()
            .filter(|(p, n)| p.starts_with(prefix) && *n == "b")
            .count()
    };
    assert_eq!(on_b("web"), 0);
    assert!(!s.pods.iter().any(|p| p["metadata"]["name"] == "bare"));
    assert_eq!(at.keys().filter(|p| p.starts_with("web")).count(), 4);
    let stays_on_b = before
        .iter()
        .filter(|(p, n)| p.starts_with("stays") && *n == "b")
        .count();
    assert_eq!(on_b("stays"), stays_on_b);
    assert_eq!(on_b("patient"), 2);
    let patient_bindings = |s: &Snapshot| -> BTreeMap<String, Binding> {
        s.bindings
            .iter()
            .filter(|(k, _)| k.1.starts_with("patient"))
            .map(|(k, b)| (k.1.clone(), b.clone()))
            .collect()
    };
    let first = patient_bindings(&s);
    assert!(first.values().all(|b| b.node == "b" && b.at == t0()));
    // The bounded toleration has not run out a second before its end...
    let s = settle(s, tainted + secs(59));
    assert_eq!(patient_bindings(&s), first);
    // ...and has then: the pods are deleted, re-created, and placed on b again, where their
    // minute counts from this placement (not from timeAdded: else they would go at once,
    // again and again).
    let out = tainted + secs(60);
    let plan = reconcile(&s, &ctx(out, 2));
    assert_eq!(
        plan.events
            .iter()
            .filter(|e| e.reason == EventReason::TaintManagerEviction)
            .count(),
        2
    );
    let s = settle(s, out);
    let second = patient_bindings(&s);
    assert_eq!(second.len(), 2);
    for (pod, b) in &second {
        assert_eq!((b.node.as_str(), b.at), ("b", out), "{pod}");
    }
    assert_eq!(reconcile(&s, &ctx(out, 3)).wake, Some(out + secs(60)));
}

fn daemonset(spec_extra: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "agent", "namespace": "default", "uid": "ds-agent", "generation": 1},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": {"labels": {"app": "agent"}}, "spec": pod("x", spec_extra)["spec"]},
        },
    })
}

fn daemon_nodes(s: &Snapshot) -> Vec<String> {
    let mut nodes: Vec<String> = s
        .pods
        .iter()
        .filter_map(|p| p["spec"]["nodeName"].as_str().map(str::to_string))
        .collect();
    nodes.sort();
    nodes
}

#[test]
fn daemon_pods_follow_taints_but_not_cordons() {
    let mut s = cluster(&["a", "b", "c"], vec![("c", settings(json!(null), true))]);
    s.daemonsets.push(daemonset(json!({})));
    let s = settle(s, t0());
    assert_eq!(daemon_nodes(&s), ["a", "b", "c"]);
    // A NoSchedule taint keeps the running pod; a new node with it gets none.
    let mut s = s;
    s.node_settings.insert(
        "b".into(),
        settings(json!([{"key": "k", "effect": "NoSchedule"}]), false),
    );
    s.nodes.push(node("d"));
    s.liveness.insert("d".into(), Liveness::Alive);
    s.node_settings.insert(
        "d".into(),
        settings(json!([{"key": "k", "effect": "NoSchedule"}]), false),
    );
    let s = settle(s, t0());
    assert_eq!(daemon_nodes(&s), ["a", "b", "c"]);
    // A NoExecute taint removes it.
    let mut s = s;
    s.node_settings.insert(
        "a".into(),
        settings(
            json!([{"key": "k", "effect": "NoExecute", "timeAdded": T0}]),
            false,
        ),
    );
    let s = settle(s, t0());
    assert_eq!(daemon_nodes(&s), ["b", "c"]);
}

fn arb_settings() -> impl Strategy<Value = NodeSettings> {
    (
        prop::collection::vec(
            (
                prop::sample::select(vec!["a", "b"]),
                prop::sample::select(vec!["", "x"]),
                prop::sample::select(vec![
                    Effect::NoSchedule,
                    Effect::PreferNoSchedule,
                    Effect::NoExecute,
                ]),
            ),
            0..3,
        ),
        any::<bool>(),
    )
        .prop_map(|(taints, unschedulable)| {
            let list: Vec<Value> = taints
                .into_iter()
                .map(|(k, v, e)| json!({"key": k, "value": v, "effect": e.as_str(), "timeAdded": T0}))
                .collect();
            let mut seen = std::collections::BTreeSet::new();
            let list: Vec<Value> = list
                .into_iter()
                .filter(|t| seen.insert((t["key"].to_string(), t["effect"].to_string())))
                .collect();
            settings(Value::Array(list), unschedulable)
        })
}

fn arb_tolerations() -> impl Strategy<Value = Value> {
    prop::collection::vec(
        prop::sample::select(vec![
            json!({"key": "a", "operator": "Exists"}),
            json!({"key": "a", "value": "x"}),
            json!({"key": "b", "value": "", "effect": "NoSchedule"}),
            json!({"key": "b", "operator": "Exists", "effect": "NoExecute"}),
            json!({"operator": "Exists", "effect": "NoSchedule"}),
            json!({"key": "node.kubernetes.io/unschedulable", "operator": "Exists"}),
        ]),
        0..3,
    )
    .prop_map(Value::Array)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Whatever the taints, cordons and tolerations: no pod is placed on a node that is
    /// cordoned (unless it tolerates that) or has a NoSchedule / NoExecute taint it does not
    /// tolerate; no pod stays on a node with a NoExecute taint it does not tolerate; and a
    /// pod that could go somewhere is placed.
    #[test]
    fn placements_respect_taints(
        node_settings in prop::collection::vec(arb_settings(), 3),
        pods in prop::collection::vec(arb_tolerations(), 1..8),
    ) {
        let names = ["n0", "n1", "n2"];
        let mut s = cluster(&names, names.iter().copied().zip(node_settings.clone()).collect());
        for (i, t) in pods.iter().enumerate() {
            s.pods.push(pod(&format!("p{i}"), json!({"tolerations": t})));
        }
        let s = settle(s, t0());
        let allowed = |spec: &Value, node: &str| {
            let set = &s.node_settings[node];
            let tol = taint::tolerations(spec);
            (!set.unschedulable || taint::tolerated(&tol, &taint::unschedulable_taint()))
                && taint::first_untolerated(&set.taints, &tol, &[Effect::NoSchedule, Effect::NoExecute]).is_none()
        };
        for p in &s.pods {
            let key = key(p);
            match s.bindings.get(&key) {
                Some(b) => prop_assert!(allowed(&p["spec"], &b.node), "{} on {}", key.1, b.node),
                None => prop_assert!(!names.iter().any(|n| allowed(&p["spec"], n)), "{} left unplaced", key.1),
            }
        }
    }
}
