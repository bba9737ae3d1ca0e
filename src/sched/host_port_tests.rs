//! Reconcile-level tests of host ports (Kubernetes' NodePorts filter): two pods wanting the
//! same `hostPort`/protocol/`hostIP` never share a node, the one without a free node waits
//! with Kubernetes' reason, and the property that no reconciled state ever holds a conflict.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::{json, Value};

use super::fixtures::{cluster_of, deployment_object, key, leader_ctx, node, pod_object, t0};
use super::*;
use crate::model::host_port::{self, HostPort};

fn ports(list: Value) -> Value {
    json!({"containers": [{"name": "c", "image": "i", "ports": list}]})
}

/// Every node's host ports in `s` (bound pods).
fn ports_by_node(s: &Snapshot) -> BTreeMap<String, Vec<HostPort>> {
    let mut out: BTreeMap<String, Vec<HostPort>> = BTreeMap::new();
    for p in &s.pods {
        let node = match p["spec"]["nodeName"].as_str() {
            Some(n) => Some(n.to_string()),
            None => s.bindings.get(&key(p)).map(|b| b.node.clone()),
        };
        if let Some(n) = node {
            out.entry(n)
                .or_default()
                .extend(host_port::of_spec(&p["spec"]));
        }
    }
    out
}

#[test]
fn a_taken_host_port_sends_the_pod_elsewhere_or_keeps_it_pending() {
    let mut s = cluster_of(vec![node("n1"), node("n2")]);
    let web = ports(json!([{"containerPort": 80, "hostPort": 8080}]))["containers"].clone();
    for name in ["a", "b", "c"] {
        s.pods.push(pod_object(
            name,
            json!({}),
            json!({"containers": web.clone()}),
        ));
    }
    // Another protocol, or another hostIP, on the same port does not conflict... but an
    // unset hostIP overlaps every address.
    s.pods.push(pod_object(
        "udp",
        json!({}),
        ports(json!([{"containerPort": 80, "hostPort": 8080, "protocol": "UDP"}])),
    ));
    let plan = reconcile(&s, &leader_ctx("n1", t0(), 1));
    let s = s.after(&plan);
    let bound: Vec<&str> = ["a", "b", "c"]
        .iter()
        .filter(|n| {
            s.bindings
                .contains_key(&("default".to_string(), n.to_string()))
        })
        .map(|n| {
            s.bindings[&("default".to_string(), n.to_string())]
                .node
                .as_str()
        })
        .collect();
    assert_eq!(bound.len(), 2, "two nodes, two pods with port 8080/TCP");
    assert_ne!(bound[0], bound[1]);
    assert!(s
        .bindings
        .contains_key(&("default".to_string(), "udp".to_string())));
    let messages: Vec<&str> = plan
        .scheduling
        .iter()
        .filter_map(|w| match w {
            SchedulingWrite::Put { record, .. } => Some(record.message.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        messages,
        ["0/2 nodes are available: 2 node(s) didn't have free ports for the requested pod ports."]
    );
    // Nothing more to do: the pending pod stays pending with the same record.
    assert!(reconcile(&s, &leader_ctx("n1", t0(), 2)).is_empty());
}

#[test]
fn host_ips_and_user_bound_pods_count() {
    let mut s = cluster_of(vec![node("n1")]);
    // Pinned by the user to n1 with hostIP 10.0.0.1: a pod wanting 10.0.0.2 fits beside it,
    // one wanting every address does not.
    s.pods.push(pod_object(
        "pinned",
        json!({}),
        json!({"nodeName": "n1", "containers": ports(json!([{"containerPort": 53, "hostPort": 53, "hostIP": "10.0.0.1"}]))["containers"]}),
    ));
    s.pods.push(pod_object(
        "other-ip",
        json!({}),
        ports(json!([{"containerPort": 53, "hostPort": 53, "hostIP": "10.0.0.2"}])),
    ));
    s.pods.push(pod_object(
        "any-ip",
        json!({}),
        ports(json!([{"containerPort": 53, "hostPort": 53}])),
    ));
    let s = s.after(&reconcile(&s, &leader_ctx("n1", t0(), 1)));
    assert!(s
        .bindings
        .contains_key(&("default".to_string(), "other-ip".to_string())));
    assert!(!s
        .bindings
        .contains_key(&("default".to_string(), "any-ip".to_string())));
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    /// Deployments whose pods want a few host ports on a few nodes: after reconciling to a
    /// fixpoint no node holds two conflicting host ports, and each node holds at most one pod
    /// per (port, protocol) of a Deployment.
    #[test]
    fn no_node_ever_holds_a_host_port_twice(
        n_nodes in 1usize..5,
        deploys in prop::collection::vec((1i64..5, 1u16..4, any::<bool>(), proptest::option::of(1u8..3)), 1..4),
        seed in any::<u64>(),
    ) {
        let nodes = (0..n_nodes).map(|i| node(&format!("n{i}"))).collect();
        let mut s = cluster_of(nodes);
        for (i, (replicas, port, udp, ip)) in deploys.iter().enumerate() {
            let mut p = json!({"containerPort": 80, "hostPort": 9000 + port,
                "protocol": if *udp { "UDP" } else { "TCP" }});
            if let Some(o) = ip {
                p["hostIP"] = json!(format!("10.0.0.{o}"));
            }
            s.deployments.push(deployment_object(&format!("d{i}"), *replicas, ports(json!([p]))));
        }
        for step in 0..8u64 {
            let plan = reconcile(&s, &leader_ctx("n0", t0() + chrono::Duration::seconds(step as i64), seed ^ step));
            if plan.is_empty() {
                break;
            }
            s = s.after(&plan);
        }
        for (node, ports) in ports_by_node(&s) {
            prop_assert!(!host_port::any_conflict(&ports), "{node}: {ports:?}");
        }
    }
}
