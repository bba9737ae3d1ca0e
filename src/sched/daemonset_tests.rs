//! Unit and property tests of the DaemonSet controller: one pod per eligible node, later
//! nodes, label changes, dead and deleted nodes, rolling updates within `maxUnavailable`,
//! OnDelete, and two leaders writing the same pods.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use serde_json::{json, Value};

use super::daemonset::{self, node_of, REVISION_LABEL};
use super::fixtures::{cluster_of, key, labelled, leader_ctx, node_with, t0};
use super::*;
use crate::model::NodeRecord;

/// A node with 4 CPUs, 8Gi and 110 pods, and these labels.
fn node(name: &str, labels: &[(&str, &str)]) -> NodeRecord {
    labelled(node_with(name, "4", "8Gi", 110), labels)
}

fn daemonset(image: &str, spec_extra: Value) -> Value {
    let mut ds = json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "agent", "namespace": "default", "uid": "ds-1", "generation": 1},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {
                "metadata": {"labels": {"app": "agent"}},
                "spec": {"containers": [{"name": "c", "image": image}]},
            },
        },
    });
    if let Some(m) = spec_extra.as_object() {
        for (k, v) in m {
            ds["spec"][k] = v.clone();
        }
    }
    ds
}

fn cluster(nodes: Vec<NodeRecord>, ds: Value) -> Snapshot {
    Snapshot {
        daemonsets: vec![ds],
        ..cluster_of(nodes)
    }
}

fn ctx(seed: u64) -> LeaderCtx {
    leader_ctx("n0", t0() + Duration::seconds(100), seed)
}

fn settle(mut s: Snapshot) -> Snapshot {
    for i in 0..10 {
        let plan = reconcile(&s, &ctx(i));
        if plan.writes.is_empty() {
            return s;
        }
        s = s.after(&plan);
    }
    panic!("no fixpoint");
}

fn pods_by_node(s: &Snapshot) -> BTreeMap<String, Vec<&Value>> {
    let mut out: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for p in &s.pods {
        out.entry(node_of(p).to_string()).or_default().push(p);
    }
    out
}

#[test]
fn one_pod_per_eligible_node_and_later_nodes_get_theirs() {
    let nodes = vec![
        node("n1", &[("disk", "ssd")]),
        node("n2", &[("disk", "ssd")]),
        node("n3", &[]),
    ];
    let ds = daemonset("img:1", json!({}));
    let s = settle(cluster(nodes.clone(), ds));
    let by = pods_by_node(&s);
    assert_eq!(by.keys().collect::<Vec<_>>(), ["n1", "n2", "n3"]);
    assert!(by.values().all(|p| p.len() == 1));
    assert!(s.bindings.is_empty(), "pinned by nodeName, never bound");
    // nodeSelector: only ssd nodes.
    let ds = daemonset("img:1", json!({}));
    let mut picky = ds.clone();
    picky["spec"]["template"]["spec"]["nodeSelector"] = json!({"disk": "ssd"});
    let mut s2 = s.clone();
    s2.daemonsets = vec![picky];
    let s2 = settle(s2);
    assert_eq!(
        pods_by_node(&s2).keys().collect::<Vec<_>>(),
        ["n1", "n2"],
        "a node that stopped matching loses its pod"
    );
    // A fourth node joins.
    let mut s3 = s.clone();
    s3.nodes.push(node("n4", &[]));
    s3.liveness.insert("n4".into(), Liveness::Alive);
    let s3 = settle(s3);
    assert_eq!(pods_by_node(&s3).len(), 4);
    // A dead node keeps its pod (not moved), a deleted node's pod goes.
    let mut s4 = s3.clone();
    s4.liveness.insert("n2".into(), Liveness::Dead);
    let plan = reconcile(&s4, &ctx(7));
    assert!(plan.writes.is_empty(), "{:?}", plan.writes);
    s4.nodes.retain(|n| n.name != "n2");
    let s4 = settle(s4);
    assert_eq!(
        pods_by_node(&s4).keys().collect::<Vec<_>>(),
        ["n1", "n3", "n4"]
    );
}

#[test]
fn required_node_affinity_selects_nodes() {
    let nodes = vec![
        node("a", &[("zone", "x")]),
        node("b", &[("zone", "y")]),
        node("c", &[]),
    ];
    let mut ds = daemonset("img:1", json!({}));
    ds["spec"]["template"]["spec"]["affinity"] = json!({"nodeAffinity": {
    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["x"]}]},
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["c"]}]},
    ]}}});
    let s = settle(cluster(nodes, ds));
    assert_eq!(pods_by_node(&s).keys().collect::<Vec<_>>(), ["a", "c"]);
}

#[test]
fn two_leaders_write_the_same_pods() {
    let nodes: Vec<NodeRecord> = (0..50).map(|i| node(&format!("n{i}"), &[])).collect();
    let s = cluster(nodes, daemonset("img:1", json!({})));
    let a = reconcile(&s, &ctx(1));
    let b = reconcile(&s, &ctx(2));
    assert_eq!(a.writes, b.writes);
    let names: BTreeSet<String> = s.after(&a).pods.iter().map(|p| key(p).1).collect();
    assert_eq!(names.len(), 50, "names are unique");
}

/// Marks every pod of the snapshot Ready at `at` (the kubelet's part).
fn all_ready(s: &mut Snapshot, at: DateTime<Utc>) {
    for p in &s.pods {
        s.ready.entry(key(p)).or_insert(at);
    }
}

#[test]
fn on_delete_replaces_only_deleted_pods() {
    let nodes = vec![node("n1", &[]), node("n2", &[])];
    let s = settle(cluster(
        nodes,
        daemonset("img:1", json!({"updateStrategy": {"type": "OnDelete"}})),
    ));
    let mut s2 = s.clone();
    s2.daemonsets[0]["spec"]["template"]["spec"]["containers"][0]["image"] = json!("img:2");
    // Only the new template's ControllerRevision is written (revision 2).
    let writes = reconcile(&s2, &ctx(3)).writes;
    let revisions: Vec<(&str, i64)> = writes
        .iter()
        .map(|w| match w {
            Write::PutObject {
                resource, object, ..
            } if *resource == crate::model::workload::CONTROLLER_REVISIONS => {
                (object::name(object), super::revisions::number(object))
            }
            other => panic!("unexpected write {other:?}"),
        })
        .collect();
    let hash = super::daemonset::revision(&s2.daemonsets[0]);
    assert_eq!(revisions, [(format!("agent-{hash}").as_str(), 2)]);
    assert_eq!(s.revisions.len(), 1, "the first template's revision");
    assert_eq!(
        s.revisions[0]["metadata"]["labels"]["controller-revision-hash"],
        json!(super::daemonset::revision(&s.daemonsets[0]))
    );
    let victim = key(&s2.pods[0]);
    s2.pods.remove(0);
    let s2 = settle(s2);
    let images: Vec<&str> = s2
        .pods
        .iter()
        .map(|p| p["spec"]["containers"][0]["image"].as_str().unwrap())
        .collect();
    assert_eq!(images.iter().filter(|i| **i == "img:2").count(), 1);
    assert!(!s2.pods.iter().any(|p| key(p) == victim));
}

/// A template change (`img:1` → `img:2`) rolled out on `n` nodes under `rolling` (the
/// `rollingUpdate` object), the kubelet making one waiting pod Ready per round (picked by
/// `ready_order`). `each_round` checks every round's pods by node. Err names the first failed
/// check, or a rollout that did not end with one updated pod per node.
fn roll_out(
    n: usize,
    rolling: Value,
    ready_order: Vec<u16>,
    mut each_round: impl FnMut(usize, &Snapshot, &BTreeMap<String, Vec<&Value>>) -> Result<(), String>,
) -> Result<(), String> {
    let nodes: Vec<NodeRecord> = (0..n).map(|i| node(&format!("n{i}"), &[])).collect();
    let strategy = json!({"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": rolling}});
    let mut s = settle(cluster(nodes, daemonset("img:1", strategy)));
    all_ready(&mut s, t0());
    s.daemonsets[0]["spec"]["template"]["spec"]["containers"][0]["image"] = json!("img:2");
    let new_hash = daemonset::revision(&s.daemonsets[0]);
    let mut pick = ready_order.into_iter().cycle();
    for round in 0..(4 * n + 8) {
        let plan = reconcile(&s, &ctx(round as u64));
        s = s.after(&plan);
        each_round(round, &s, &pods_by_node(&s))?;
        // The kubelet: one new pod becomes ready per step.
        let waiting: Vec<PodKey> = s
            .pods
            .iter()
            .map(key)
            .filter(|k| !s.ready.contains_key(k))
            .collect();
        if !waiting.is_empty() {
            let k = waiting[pick.next().unwrap_or(0) as usize % waiting.len()].clone();
            s.ready.insert(k, t0());
        }
    }
    let by = pods_by_node(&s);
    if by.len() != n {
        return Err(format!("pods on {} of {n} nodes", by.len()));
    }
    for (node, pods) in &by {
        if pods.len() != 1 || pods[0]["metadata"]["labels"][REVISION_LABEL] != json!(new_hash) {
            return Err(format!(
                "{node} ends with {} pods, not one updated",
                pods.len()
            ));
        }
    }
    Ok(())
}

/// Nodes of `0..n` with a Ready pod.
fn served(n: usize, s: &Snapshot, by: &BTreeMap<String, Vec<&Value>>) -> usize {
    (0..n)
        .filter(|i| {
            by.get(&format!("n{i}"))
                .is_some_and(|ps| ps.iter().any(|p| s.ready.contains_key(&key(p))))
        })
        .count()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// A template change on `n` nodes: every round keeps at most `maxUnavailable` nodes without
    /// an available pod, and the rollout ends with one updated pod per node.
    #[test]
    fn rolling_update_stays_within_max_unavailable(
        n in 1usize..12,
        max_unavailable in 1i64..4,
        ready_order in prop::collection::vec(any::<u16>(), 1..40),
    ) {
        let r = roll_out(n, json!({"maxUnavailable": max_unavailable}), ready_order, |round, s, by| {
            let unavailable = (n - served(n, s, by)) as i64;
            (unavailable <= max_unavailable)
                .then_some(())
                .ok_or(format!("round {round}: {unavailable} unavailable"))
        });
        prop_assert!(r.is_ok(), "{:?}", r);
    }

    /// With `maxSurge` (and `maxUnavailable: 0`): no node is ever without an available pod,
    /// at most `maxSurge` nodes run two pods at once, and the rollout ends with one updated pod
    /// per node.
    #[test]
    fn surging_update_keeps_every_node_served(
        n in 1usize..12,
        max_surge in 1i64..4,
        ready_order in prop::collection::vec(any::<u16>(), 1..40),
    ) {
        let rolling = json!({"maxUnavailable": 0, "maxSurge": max_surge});
        let r = roll_out(n, rolling, ready_order, |round, s, by| {
            if served(n, s, by) != n {
                return Err(format!("round {round}: a node has no available pod"));
            }
            let doubled = by.values().filter(|ps| ps.len() > 1).count() as i64;
            (doubled <= max_surge)
                .then_some(())
                .ok_or(format!("round {round}: {doubled} nodes with two pods"))
        });
        prop_assert!(r.is_ok(), "{:?}", r);
    }
}
