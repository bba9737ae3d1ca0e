//! Unit and property tests of the StatefulSet controller: ordinal names and labels,
//! OrderedReady and Parallel creation, scale-down from the highest ordinal, rolling updates
//! with a partition, OnDelete, and the fencing of identities on unreachable nodes (never two
//! copies of one identity across any sequence of node liveness changes).

use std::collections::{BTreeMap, BTreeSet};

use chrono::Duration;
use proptest::prelude::*;
use serde_json::{json, Value};

use super::fixtures::{cluster_of, key, leader_ctx, node, t0};
use super::statefulset::{
    self, decide, ordinal_of, Action, Desired, Member, Strategy as UpdateStrategy, POD_INDEX_LABEL,
    POD_NAME_LABEL, REVISION_LABEL,
};
use super::*;

fn sts(replicas: i64, image: &str, spec_extra: Value) -> Value {
    let mut s = json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "web", "namespace": "default", "uid": "sts-1", "generation": 1},
        "spec": {
            "replicas": replicas,
            "serviceName": "web",
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": image}]},
            },
        },
    });
    for (k, v) in spec_extra.as_object().into_iter().flatten() {
        s["spec"][k] = v.clone();
    }
    s
}

/// Three nodes, all alive, and the StatefulSet.
fn cluster(set: Value) -> Snapshot {
    Snapshot {
        statefulsets: vec![set],
        ..cluster_of(vec![node("n1"), node("n2"), node("n3")])
    }
}

/// One leader round, then what the nodes do: the kubelets of live nodes remove the
/// terminating pods bound to them (their containers stopped), and pods bound to live nodes
/// become Running and Ready (when `ready`).
fn round(s: Snapshot, step: i64, ready: bool) -> Snapshot {
    let plan = reconcile(
        &s,
        &leader_ctx("n1", t0() + Duration::seconds(step), step as u64),
    );
    let mut s = s.after(&plan);
    kubelets(&mut s, ready);
    s
}

fn placed_on(s: &Snapshot, pod: &Value) -> Option<String> {
    s.bindings
        .get(&key(pod))
        .filter(|b| b.pod_uid == pod["metadata"]["uid"])
        .map(|b| b.node.clone())
}

fn kubelets(s: &mut Snapshot, ready: bool) {
    let live = |n: &str| s.liveness.get(n) == Some(&Liveness::Alive);
    let mut gone = BTreeSet::new();
    let mut up = BTreeMap::new();
    for p in &s.pods {
        let Some(n) = placed_on(s, p) else { continue };
        if !live(&n) {
            continue;
        }
        if object::is_terminating(p) {
            gone.insert(key(p));
        } else if ready {
            up.insert(key(p), t0());
        }
    }
    s.pods.retain(|p| !gone.contains(&key(p)));
    s.ready = up;
}

fn names(s: &Snapshot) -> Vec<String> {
    let mut n: Vec<String> = s
        .pods
        .iter()
        .filter(|p| !object::is_terminating(p))
        .map(|p| object::name(p).to_string())
        .collect();
    n.sort();
    n
}

fn pod<'a>(s: &'a Snapshot, name: &str) -> &'a Value {
    s.pods
        .iter()
        .find(|p| object::name(p) == name)
        .unwrap_or_else(|| panic!("no pod {name}"))
}

#[test]
fn ordinals_parse_only_canonical_names() {
    assert_eq!(ordinal_of("web", "web-0"), Some(0));
    assert_eq!(ordinal_of("web", "web-12"), Some(12));
    for bad in [
        "web-", "web-01", "web-a", "web0", "webx-1", "web--1", "web-1-2",
    ] {
        assert_eq!(ordinal_of("web", bad), None, "{bad}");
    }
    assert_eq!(ordinal_of("a-b", "a-b-3"), Some(3));
}

#[test]
fn ordered_ready_creates_one_at_a_time_each_ready_first() {
    let mut s = cluster(sts(3, "img:1", json!({})));
    // Not ready: only web-0 ever exists.
    for step in 0..3 {
        s = round(s, step, false);
    }
    assert_eq!(names(&s), ["web-0"]);
    let p = pod(&s, "web-0");
    assert_eq!(p["metadata"]["labels"][POD_NAME_LABEL], "web-0");
    assert_eq!(p["metadata"]["labels"][POD_INDEX_LABEL], "0");
    assert_eq!(
        p["metadata"]["labels"][REVISION_LABEL],
        json!(statefulset::update_revision(&s.statefulsets[0]))
    );
    assert_eq!(p["metadata"]["labels"]["app"], "web");
    assert_eq!(p["spec"]["hostname"], "web-0");
    assert_eq!(p["spec"]["subdomain"], "web");
    assert_eq!(p["metadata"]["ownerReferences"][0]["kind"], "StatefulSet");
    // Ready: the next one each round, in order.
    s = round(s, 3, true);
    s = round(s, 4, true);
    assert_eq!(names(&s), ["web-0", "web-1"]);
    s = round(s, 5, true);
    s = round(s, 6, true);
    assert_eq!(names(&s), ["web-0", "web-1", "web-2"]);
    // A fixpoint: nothing more to do.
    let plan = reconcile(&s, &leader_ctx("n1", t0(), 9));
    assert!(plan.writes.is_empty(), "{plan:?}");
}

#[test]
fn parallel_creates_all_at_once() {
    let s = round(
        cluster(sts(3, "img:1", json!({"podManagementPolicy": "Parallel"}))),
        0,
        false,
    );
    assert_eq!(names(&s), ["web-0", "web-1", "web-2"]);
}

#[test]
fn scale_down_removes_the_highest_ordinal_first_one_at_a_time() {
    let mut s = cluster(sts(3, "img:1", json!({})));
    for step in 0..8 {
        s = round(s, step, true);
    }
    assert_eq!(names(&s), ["web-0", "web-1", "web-2"]);
    s.statefulsets[0]["spec"]["replicas"] = json!(1);
    let plan = reconcile(&s, &leader_ctx("n1", t0(), 1));
    let next = s.after(&plan);
    // web-2 terminating, web-1 untouched until web-2 is gone.
    assert!(object::is_terminating(pod(&next, "web-2")));
    assert!(!object::is_terminating(pod(&next, "web-1")));
    let plan = reconcile(&next, &leader_ctx("n1", t0(), 2));
    assert!(plan.writes.is_empty(), "waits for web-2: {plan:?}");
    let mut s = next;
    kubelets(&mut s, true);
    assert_eq!(names(&s), ["web-0", "web-1"]);
    s = round(s, 10, true);
    s = round(s, 11, true);
    assert_eq!(names(&s), ["web-0"]);
}

#[test]
fn deleted_pod_comes_back_under_its_name_with_a_new_uid() {
    let mut s = cluster(sts(2, "img:1", json!({})));
    for step in 0..5 {
        s = round(s, step, true);
    }
    let old_uid = pod(&s, "web-1")["metadata"]["uid"].clone();
    s.pods.retain(|p| object::name(p) != "web-1");
    s = round(s, 20, true);
    assert_eq!(names(&s), ["web-0", "web-1"]);
    assert_ne!(pod(&s, "web-1")["metadata"]["uid"], old_uid);
}

#[test]
fn rolling_update_goes_down_to_the_partition() {
    let mut s = cluster(sts(3, "img:1", json!({})));
    for step in 0..8 {
        s = round(s, step, true);
    }
    let old = statefulset::update_revision(&s.statefulsets[0]);
    s.statefulsets[0]["spec"]["template"]["spec"]["containers"][0]["image"] = json!("img:2");
    s.statefulsets[0]["spec"]["updateStrategy"] =
        json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 1}});
    let new = statefulset::update_revision(&s.statefulsets[0]);
    assert_ne!(old, new);
    let rev = |s: &Snapshot, n: &str| pod(s, n)["metadata"]["labels"][REVISION_LABEL].clone();
    // One at a time from the highest ordinal: web-2 first.
    let plan = reconcile(&s, &leader_ctx("n1", t0(), 1));
    let next = s.after(&plan);
    assert!(object::is_terminating(pod(&next, "web-2")));
    assert!(!object::is_terminating(pod(&next, "web-1")));
    for step in 20..40 {
        s = round(s, step, true);
    }
    assert_eq!(names(&s), ["web-0", "web-1", "web-2"]);
    assert_eq!(rev(&s, "web-2"), json!(new));
    assert_eq!(rev(&s, "web-1"), json!(new));
    assert_eq!(rev(&s, "web-0"), json!(old), "below the partition");
    assert_eq!(pod(&s, "web-0")["spec"]["containers"][0]["image"], "img:1");
    // Both revisions are recorded, numbered in order.
    let history: Vec<(String, i64)> = s
        .revisions
        .iter()
        .map(|r| (object::name(r).to_string(), revisions::number(r)))
        .collect();
    assert_eq!(history, [(old.clone(), 1), (new.clone(), 2)]);
    // Raising the partition to 2 and deleting web-1 brings it back at the current revision,
    // made from its ControllerRevision (not from web-0, whose spec is changed here to tell).
    s.statefulsets[0]["spec"]["updateStrategy"]["rollingUpdate"]["partition"] = json!(2);
    s.pods.retain(|p| object::name(p) != "web-1");
    for p in &mut s.pods {
        if object::name(p) == "web-0" {
            p["spec"]["containers"][0]["image"] = json!("tampered");
        }
    }
    s = round(s, 50, true);
    assert_eq!(rev(&s, "web-1"), json!(old));
    assert_eq!(pod(&s, "web-1")["spec"]["containers"][0]["image"], "img:1");
    assert_eq!(pod(&s, "web-1")["spec"]["hostname"], "web-1");
    // Partition 0: everything rolls.
    s.statefulsets[0]["spec"]["updateStrategy"]["rollingUpdate"]["partition"] = json!(0);
    for step in 60..80 {
        s = round(s, step, true);
    }
    for n in ["web-0", "web-1", "web-2"] {
        assert_eq!(rev(&s, n), json!(new), "{n}");
    }
    // An undo: the first template again reuses its revision, renumbered 3; the set's deletion
    // takes its history with it.
    s.statefulsets[0]["spec"]["template"]["spec"]["containers"][0]["image"] = json!("img:1");
    s = round(s, 90, true);
    let number_of = |s: &Snapshot, n: &str| {
        s.revisions
            .iter()
            .find(|r| object::name(r) == n)
            .map(revisions::number)
    };
    assert_eq!(number_of(&s, &old), Some(3));
    assert_eq!(number_of(&s, &new), Some(2));
    s.statefulsets.clear();
    s = round(s, 100, true);
    assert!(s.revisions.is_empty(), "{:?}", s.revisions);
}

#[test]
fn on_delete_updates_only_deleted_pods() {
    let mut s = cluster(sts(
        2,
        "img:1",
        json!({"updateStrategy": {"type": "OnDelete"}}),
    ));
    for step in 0..5 {
        s = round(s, step, true);
    }
    s.statefulsets[0]["spec"]["template"]["spec"]["containers"][0]["image"] = json!("img:2");
    for step in 5..10 {
        s = round(s, step, true);
    }
    assert_eq!(pod(&s, "web-1")["spec"]["containers"][0]["image"], "img:1");
    s.pods.retain(|p| object::name(p) != "web-1");
    s = round(s, 20, true);
    assert_eq!(pod(&s, "web-1")["spec"]["containers"][0]["image"], "img:2");
    assert_eq!(pod(&s, "web-0")["spec"]["containers"][0]["image"], "img:1");
}

#[test]
fn decide_waits_for_terminating_pods_and_replaces_ended_ones() {
    let m = |rev: &str, ready: bool, terminating: bool, ended: bool| Member {
        revision: rev.into(),
        ready,
        terminating,
        ended,
    };
    let d = Desired {
        replicas: 3,
        parallel: false,
        strategy: UpdateStrategy::RollingUpdate { partition: 0 },
        update_revision: "r2",
        current_revision: "r1",
    };
    let mut members = BTreeMap::new();
    members.insert(0, m("r2", true, false, false));
    members.insert(1, m("r2", false, true, false));
    assert_eq!(decide(&d, &members), vec![], "web-1 still holds its name");
    members.insert(1, m("r2", false, false, true));
    assert_eq!(decide(&d, &members), vec![Action::Delete { ordinal: 1 }]);
    members.remove(&1);
    assert_eq!(
        decide(&d, &members),
        vec![Action::Create {
            ordinal: 1,
            revision: "r2".into()
        }]
    );
}

/// A pod on a node that is unreachable keeps its identity: it is neither re-created nor
/// moved, and a user's delete leaves it terminating, until the node's record is deleted.
#[test]
fn an_unreachable_nodes_pod_is_fenced_until_the_node_is_deleted() {
    let mut s = cluster(sts(3, "img:1", json!({"podManagementPolicy": "Parallel"})));
    for step in 0..4 {
        s = round(s, step, true);
    }
    let web1 = pod(&s, "web-1").clone();
    let node = placed_on(&s, &web1).unwrap();
    s.liveness.insert(node.clone(), Liveness::Dead);
    for step in 10..15 {
        s = round(s, step, true);
    }
    assert_eq!(
        placed_on(&s, pod(&s, "web-1")).as_deref(),
        Some(node.as_str())
    );
    assert_eq!(pod(&s, "web-1")["metadata"]["uid"], web1["metadata"]["uid"]);
    // A user deletes it: it stays terminating.
    let i = s
        .pods
        .iter()
        .position(|p| object::name(p) == "web-1")
        .unwrap();
    s.pods[i] = statefulset::terminating(&s.pods[i], t0());
    for step in 15..20 {
        s = round(s, step, true);
    }
    assert!(object::is_terminating(pod(&s, "web-1")));
    // The node is deleted: the identity is released and web-1 runs elsewhere.
    s.nodes.retain(|n| n.name != node);
    s.liveness.remove(&node);
    for step in 20..25 {
        s = round(s, step, true);
    }
    let now = pod(&s, "web-1");
    assert!(!object::is_terminating(now));
    assert_ne!(now["metadata"]["uid"], web1["metadata"]["uid"]);
    let placed = placed_on(&s, now).unwrap();
    assert_ne!(placed, node);
}

#[derive(Clone, Debug)]
enum Event {
    /// The node as the leader's view sees it; a node not alive keeps running what it ran
    /// (it may be cut off, not down).
    Liveness(usize, Liveness),
    /// An operator deletes the node's record: it is down for sure (stops everything).
    DeleteNode(usize),
    /// A deleted node comes back and registers again.
    Return(usize),
    /// A user deletes a pod (gracefully).
    DeletePod(usize),
    Scale(i64),
    Image(u8),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (
            0..3usize,
            prop_oneof![
                Just(Liveness::Alive),
                Just(Liveness::Suspect),
                Just(Liveness::Dead)
            ]
        )
            .prop_map(|(n, l)| Event::Liveness(n, l)),
        (0..3usize).prop_map(Event::DeleteNode),
        (0..3usize).prop_map(Event::Return),
        (0..4usize).prop_map(Event::DeletePod),
        (0..5i64).prop_map(Event::Scale),
        (0..3u8).prop_map(Event::Image),
    ]
}

/// What runs where: a node the leader sees alive runs what the merged document binds to it;
/// any other node keeps running what it ran; a deleted node runs nothing.
fn running_after(
    s: &Snapshot,
    before: &BTreeMap<String, BTreeSet<String>>,
) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for n in ["n1", "n2", "n3"] {
        let known = s.nodes.iter().any(|r| r.name == n);
        let set = if !known {
            BTreeSet::new()
        } else if s.liveness.get(n) == Some(&Liveness::Alive) {
            s.pods
                .iter()
                .filter(|p| placed_on(s, p).as_deref() == Some(n))
                .map(|p| object::name(p).to_string())
                .collect()
        } else {
            before.get(n).cloned().unwrap_or_default()
        };
        out.insert(n.to_string(), set);
    }
    out
}

fn assert_one_copy(running: &BTreeMap<String, BTreeSet<String>>) {
    let mut seen = BTreeMap::new();
    for (node, pods) in running {
        for p in pods {
            if let Some(other) = seen.insert(p.clone(), node.clone()) {
                panic!("{p} runs on {other} and {node}: {running:?}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Across any sequence of liveness changes, node deletions and returns, pod deletions,
    /// scaling and template changes, no identity ever runs on two nodes at once.
    #[test]
    fn an_identity_never_runs_twice(
        events in proptest::collection::vec(event(), 1..30),
        parallel in any::<bool>(),
    ) {
        let policy = if parallel { "Parallel" } else { "OrderedReady" };
        let mut s = cluster(sts(3, "img:0", json!({"podManagementPolicy": policy})));
        let mut running: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut step = 0i64;
        let settle = |s: Snapshot, running: &mut BTreeMap<String, BTreeSet<String>>, step: &mut i64| {
            let mut s = s;
            for _ in 0..6 {
                *step += 1;
                s = round(s, *step, true);
                *running = running_after(&s, running);
                assert_one_copy(running);
            }
            s
        };
        s = settle(s, &mut running, &mut step);
        for e in events {
            let nodes = ["n1", "n2", "n3"];
            match e {
                Event::Liveness(n, l) => {
                    if s.nodes.iter().any(|r| r.name == nodes[n]) {
                        s.liveness.insert(nodes[n].to_string(), l);
                    }
                }
                Event::DeleteNode(n) => {
                    s.nodes.retain(|r| r.name != nodes[n]);
                    s.liveness.remove(nodes[n]);
                    running.insert(nodes[n].to_string(), BTreeSet::new());
                }
                Event::Return(n) => {
                    if !s.nodes.iter().any(|r| r.name == nodes[n]) {
                        s.nodes.push(node(nodes[n]));
                        s.liveness.insert(nodes[n].to_string(), Liveness::Alive);
                    }
                }
                Event::DeletePod(i) => {
                    let name = format!("web-{i}");
                    if let Some(j) = s.pods.iter().position(|p| object::name(p) == name) {
                        // The API: removed now only when never placed, else marked.
                        if placed_on(&s, &s.pods[j]).is_none() {
                            s.pods.remove(j);
                        } else {
                            s.pods[j] = statefulset::terminating(&s.pods[j], t0());
                        }
                    }
                }
                Event::Scale(r) => s.statefulsets[0]["spec"]["replicas"] = json!(r),
                Event::Image(v) => {
                    s.statefulsets[0]["spec"]["template"]["spec"]["containers"][0]["image"] =
                        json!(format!("img:{v}"));
                }
            }
            running = running_after(&s, &running);
            assert_one_copy(&running);
            s = settle(s, &mut running, &mut step);
        }
    }
}
