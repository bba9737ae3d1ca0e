//! Tests of the placement constraints beyond resources and taints, as the leader's reconcile
//! honours them: required and preferred node affinity, required and preferred pod affinity
//! and anti-affinity (both directions), and topology spread constraints (DoNotSchedule,
//! ScheduleAnyway, minDomains, node inclusion policies), with Kubernetes' messages.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use serde_json::{json, Value};

use super::fixtures::{
    cluster_of, deployment_object as deployment, labelled, leader_ctx, node, node_with,
    pod_object as pod, t0,
};
use super::*;
use crate::model::NodeRecord;

fn ctx(now: DateTime<Utc>, seed: u64) -> LeaderCtx {
    leader_ctx("leader", now, seed)
}

fn settle(mut s: Snapshot) -> Snapshot {
    for i in 0..30 {
        let plan = reconcile(&s, &ctx(t0(), i));
        if plan.writes.is_empty() {
            return s;
        }
        s = s.after(&plan);
    }
    panic!("no fixpoint");
}

/// Nodes `name:zone`, each with room for anything.
fn zoned(nodes: &[(&str, &str)]) -> Vec<NodeRecord> {
    nodes
        .iter()
        .map(|(n, z)| {
            if z.is_empty() {
                node(n)
            } else {
                labelled(node(n), &[("zone", z)])
            }
        })
        .collect()
}

/// Node of each bound pod, by pod name.
fn placement(s: &Snapshot) -> BTreeMap<String, String> {
    s.bindings
        .iter()
        .map(|(k, b)| (k.1.clone(), b.node.clone()))
        .collect()
}

/// How many pods whose name starts with `prefix` run on each node.
fn per_node(s: &Snapshot, prefix: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (pod, node) in placement(s) {
        if pod.starts_with(prefix) {
            *out.entry(node).or_default() += 1;
        }
    }
    out
}

/// How many pods whose name starts with `prefix` run in each zone.
fn per_zone(s: &Snapshot, prefix: &str) -> BTreeMap<String, usize> {
    let zone: BTreeMap<&str, &str> = s
        .nodes
        .iter()
        .map(|n| {
            (
                n.name.as_str(),
                n.labels.get("zone").map_or("", String::as_str),
            )
        })
        .collect();
    let mut out = BTreeMap::new();
    for (node, n) in per_node(s, prefix) {
        *out.entry(zone[node.as_str()].to_string()).or_default() += n;
    }
    out
}

/// Why each unplaced pod is unschedulable.
fn unschedulable(s: &Snapshot) -> BTreeMap<String, String> {
    s.after(&reconcile(s, &ctx(t0(), 99)))
        .scheduling
        .into_iter()
        .map(|((_, pod), record)| (pod, record.message))
        .collect()
}

fn spread(key: &str, max_skew: i64, when: &str, extra: Value) -> Value {
    let mut c = json!({"maxSkew": max_skew, "topologyKey": key, "whenUnsatisfiable": when,
                       "labelSelector": {"matchLabels": {"app": "web"}}});
    for (k, v) in extra.as_object().into_iter().flatten() {
        c[k] = v.clone();
    }
    c
}

fn term(app: &str, key: &str) -> Value {
    json!({"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key})
}

#[test]
fn required_node_affinity_pins_pods_and_says_why_when_nothing_matches() {
    let mut s = cluster_of(zoned(&[("a1", "a"), ("a2", "a"), ("b1", "b"), ("c1", "c")]));
    let in_zones = |zones: Value| {
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": zones}]},
                                  {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["c1"]}]}]}}}})
    };
    s.deployments
        .push(deployment("web", 6, in_zones(json!(["b"]))));
    s.pods.push(pod("nowhere", json!({}), {
        let mut spec = in_zones(json!(["x"]));
        spec["nodeSelector"] = json!({"zone": "a"});
        spec
    }));
    let s = settle(s);
    let web = per_node(&s, "web");
    assert_eq!(web.values().sum::<usize>(), 6);
    assert!(
        web.keys().all(|n| n == "b1" || n == "c1"),
        "zone b or the named node: {web:?}"
    );
    assert_eq!(
        unschedulable(&s)["nowhere"],
        "0/4 nodes are available: 4 node(s) didn't match Pod's node affinity/selector."
    );
}

#[test]
fn preferred_node_affinity_is_followed_while_there_is_room() {
    let mut nodes = zoned(&[("a1", "a"), ("b1", "b"), ("b2", "b")]);
    nodes[0] = labelled(node_with("a1", "1", "64Gi", 110), &[("zone", "a")]);
    let mut s = cluster_of(nodes);
    let prefer_a = json!({
        "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 80, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}},
            {"weight": 20, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}}]}},
        "containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "400m"}}}],
    });
    s.deployments.push(deployment("web", 4, prefer_a));
    let s = settle(s);
    let web = per_zone(&s, "web");
    assert_eq!(web["a"], 2, "a1 takes two 400m pods, then is full: {web:?}");
    assert_eq!(web["b"], 2);
}

#[test]
fn hard_topology_spread_keeps_the_skew_and_names_the_constraint() {
    let mut s = cluster_of(zoned(&[
        ("a1", "a"),
        ("a2", "a"),
        ("a3", "a"),
        ("b1", "b"),
        ("nolabel", ""),
    ]));
    s.deployments.push(deployment(
        "web",
        6,
        json!({"topologySpreadConstraints": [spread("zone", 1, "DoNotSchedule", json!({}))]}),
    ));
    let s = settle(s);
    let zones = per_zone(&s, "web");
    assert_eq!(zones.get("a"), Some(&3), "{zones:?}");
    assert_eq!(zones.get("b"), Some(&3), "{zones:?}");
    assert!(!per_node(&s, "web").contains_key("nolabel"));

    // Zone b full: the seventh pod goes to a (skew 1), an eighth there would make it 2.
    let mut s = s;
    s.deployments[0]["spec"]["replicas"] = json!(8);
    s.nodes[3].capacity.insert("pods".into(), "3".into());
    let s = settle(s);
    let why = unschedulable(&s);
    assert_eq!(why.len(), 1, "{why:?}");
    assert_eq!(
        why.values().next().unwrap(),
        "0/5 nodes are available: 1 Too many pods, 1 node(s) didn't match pod topology spread constraints (missing required label), 3 node(s) didn't match pod topology spread constraints."
    );
}

#[test]
fn node_inclusion_policies_and_min_domains_decide_the_domains_that_count() {
    // A cordoned zone counts (nodeTaintsPolicy Ignore, the default): with zone b empty, zone a
    // takes one pod only.
    let nodes = zoned(&[("a1", "a"), ("a2", "a"), ("b1", "b")]);
    let mut s = cluster_of(nodes.clone());
    s.node_settings.insert(
        "b1".into(),
        crate::model::NodeSettings {
            unschedulable: true,
            ..Default::default()
        },
    );
    let honor = |policy: &str| json!({"topologySpreadConstraints": [spread("zone", 1, "DoNotSchedule", json!({"nodeTaintsPolicy": policy}))]});
    s.deployments.push(deployment("web", 3, honor("Ignore")));
    let ignored = settle(s.clone());
    assert_eq!(per_zone(&ignored, "web").get("a"), Some(&1));
    // Honor: the cordoned node's zone is not a domain; zone a takes them all.
    s.deployments[0] = deployment("web", 3, honor("Honor"));
    let honored = settle(s);
    assert_eq!(per_zone(&honored, "web").get("a"), Some(&3));

    // minDomains 3 with two domains: the global minimum is 0, so each zone takes maxSkew.
    let mut s = cluster_of(nodes);
    s.deployments.push(deployment(
        "web",
        4,
        json!({"topologySpreadConstraints": [spread("zone", 1, "DoNotSchedule", json!({"minDomains": 3}))]}),
    ));
    let s = settle(s);
    assert_eq!(per_zone(&s, "web").values().sum::<usize>(), 2);
    assert_eq!(unschedulable(&s).len(), 2);

    // nodeAffinityPolicy Honor (default): zones the pod may not run in do not count.
    let mut s = cluster_of(zoned(&[("a1", "a"), ("a2", "a"), ("b1", "b")]));
    let mut spec = json!({"topologySpreadConstraints": [spread("zone", 1, "DoNotSchedule", json!({}))],
                          "nodeSelector": {"zone": "a"}});
    s.deployments.push(deployment("web", 3, spec.clone()));
    assert_eq!(per_zone(&settle(s.clone()), "web").get("a"), Some(&3));
    spec["topologySpreadConstraints"][0]["nodeAffinityPolicy"] = json!("Ignore");
    s.deployments[0] = deployment("web", 3, spec);
    assert_eq!(per_zone(&settle(s), "web").get("a"), Some(&1));
}

#[test]
fn soft_topology_spread_balances_zones_not_just_nodes() {
    let mut s = cluster_of(zoned(&[("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b")]));
    s.deployments.push(deployment(
        "web",
        6,
        json!({"topologySpreadConstraints": [spread("zone", 1, "ScheduleAnyway", json!({}))]}),
    ));
    let s = settle(s);
    assert_eq!(
        per_zone(&s, "web"),
        BTreeMap::from([("a".into(), 3), ("b".into(), 3)])
    );
    // Without the constraint the per-owner spread fills nodes evenly instead.
    let mut plain = cluster_of(zoned(&[("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b")]));
    plain.deployments.push(deployment("web", 8, json!({})));
    let plain = settle(plain);
    assert_eq!(per_zone(&plain, "web")["a"], 6);
}

#[test]
fn preferred_pod_affinity_and_anti_affinity_score_in_both_directions() {
    // A filler makes b the busier node: least-requested alone picks a.
    let filler = pod(
        "filler",
        json!({}),
        json!({"nodeName": "b", "containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "32"}}}]}),
    );
    let db_on_b = pod("db", json!({"app": "db"}), json!({"nodeName": "b"}));
    let base = || {
        let mut s = cluster_of(vec![node("a"), node("b")]);
        s.pods.push(filler.clone());
        s
    };
    let mut s = base();
    s.pods.push(db_on_b.clone());
    s.pods.push(pod("plain", json!({"app": "web"}), json!({})));
    s.pods.push(pod("near", json!({"app": "web"}), json!({"affinity": {"podAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 10, "podAffinityTerm": term("db", "kubernetes.io/hostname")}]}}})));
    let at = placement(&settle(s));
    assert_eq!(at["plain"], "a");
    assert_eq!(
        at["near"], "b",
        "preferred affinity outweighs least-requested"
    );

    // The placed pod's preferred anti-affinity pushes a pod without terms away (symmetry).
    let mut s = base();
    s.pods.push(pod("db", json!({"app": "db"}), json!({"nodeName": "a", "affinity": {"podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": term("web", "kubernetes.io/hostname")}]}}})));
    s.pods.push(pod("web", json!({"app": "web"}), json!({})));
    assert_eq!(placement(&settle(s))["web"], "b");

    // A Deployment with preferred anti-affinity to itself spreads over zones first.
    let mut s = cluster_of(zoned(&[("a1", "a"), ("a2", "a"), ("b1", "b"), ("c1", "c")]));
    s.deployments.push(deployment("web", 3, json!({"affinity": {"podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": term("web", "zone")}]}}})));
    let zones = per_zone(&settle(s), "web");
    assert_eq!(zones.len(), 3, "one per zone: {zones:?}");
}

#[test]
fn required_pod_affinity_follows_the_pods_it_names() {
    let mut s = cluster_of(zoned(&[("a1", "a"), ("a2", "a"), ("b1", "b")]));
    s.pods
        .push(pod("db", json!({"app": "db"}), json!({"nodeName": "b1"})));
    let with_db = json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term("db", "zone")]}}});
    s.deployments.push(deployment("web", 3, with_db));
    s.pods.push(pod(
        "lonely",
        json!({"app": "lonely"}),
        json!({"affinity": {"podAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [term("cache", "zone")]}}}),
    ));
    // The first of a group with affinity to itself goes anywhere; the rest follow it.
    s.deployments.push(deployment(
        "cache",
        4,
        json!({"affinity": {"podAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [term("cache", "zone")]}}}),
    ));
    let s = settle(s);
    assert_eq!(per_zone(&s, "web"), BTreeMap::from([("b".into(), 3)]));
    assert_eq!(per_zone(&s, "cache").len(), 1);
    assert_eq!(per_zone(&s, "cache").values().sum::<usize>(), 4);
    // `lonely` needs a cache pod in its zone: it joins the cache's zone.
    let cache_zone = per_zone(&s, "cache").into_keys().next().unwrap();
    let lonely_node = &placement(&s)["lonely"];
    let lonely_zone = s
        .nodes
        .iter()
        .find(|n| &n.name == lonely_node)
        .unwrap()
        .labels["zone"]
        .clone();
    assert_eq!(lonely_zone, cache_zone);
    assert!(unschedulable(&s).is_empty());
}

#[test]
fn required_pod_affinity_with_no_match_anywhere_is_unschedulable() {
    let mut s = cluster_of(zoned(&[("a1", "a"), ("b1", "b")]));
    s.pods.push(pod(
        "lonely",
        json!({"app": "lonely"}),
        json!({"affinity": {"podAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [term("cache", "zone")]}}}),
    ));
    let s = settle(s);
    assert_eq!(
        unschedulable(&s)["lonely"],
        "0/2 nodes are available: 2 node(s) didn't match pod affinity rules."
    );
}

#[test]
fn daemonsets_share_the_node_affinity_matcher() {
    let spec = json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}]}}}});
    let nodes = zoned(&[("a1", "a"), ("b1", "b"), ("plain", "")]);
    let eligible: Vec<&str> = nodes
        .iter()
        .filter(|n| daemonset::eligible(&spec, n))
        .map(|n| n.name.as_str())
        .collect();
    assert_eq!(eligible, ["b1", "plain"]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Whatever the zones and replica counts: a DoNotSchedule constraint holds among the pods
    /// placed (skew over the zones ≤ maxSkew), every pod that could be placed within the skew is,
    /// and the leader's plan is a function of its inputs (the merge of concurrent leaders
    /// relies on it).
    #[test]
    fn hard_spread_holds_and_plans_are_deterministic(
        zones in prop::collection::vec(0usize..3, 2..7),
        replicas in 1i64..12,
        max_skew in 1i64..3,
        soft in any::<bool>(),
    ) {
        let names: Vec<String> = (0..zones.len()).map(|i| format!("n{i}")).collect();
        let zone_names = ["a", "b", "c"];
        let nodes: Vec<(&str, &str)> = names
            .iter()
            .zip(&zones)
            .map(|(n, z)| (n.as_str(), zone_names[*z]))
            .collect();
        let mut s = cluster_of(zoned(&nodes));
        let mut constraints = vec![spread("zone", max_skew, "DoNotSchedule", json!({}))];
        if soft {
            constraints.push(spread("kubernetes.io/hostname", 1, "ScheduleAnyway", json!({})));
        }
        s.deployments.push(deployment("web", replicas, json!({
            "topologySpreadConstraints": constraints,
            "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 5, "podAffinityTerm": term("web", "kubernetes.io/hostname")}]}},
        })));
        let plan = reconcile(&s, &ctx(t0(), 7));
        prop_assert_eq!(&plan, &reconcile(&s, &ctx(t0(), 7)));
        let s = settle(s);
        let counts = per_zone(&s, "web");
        let domains: std::collections::BTreeSet<usize> = zones.iter().copied().collect();
        let min = if counts.len() < domains.len() { 0 } else { *counts.values().min().unwrap_or(&0) };
        let max = *counts.values().max().unwrap_or(&0);
        prop_assert!((max - min) as i64 <= max_skew, "{:?}", counts);
        // A zone with the fewest pods always has room within the skew: every pod is placed.
        let placed: usize = counts.values().sum();
        prop_assert_eq!(placed, replicas as usize, "{:?}", counts);
    }
}
