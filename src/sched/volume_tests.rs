//! Reconcile-level tests of local-path volumes: a StatefulSet's claims are created and bound
//! to its pods' nodes, a re-created pod goes back to its volume's node, free storage is
//! accounted per node, and after two leaders bound the same claim to different nodes the
//! merged state converges on one volume with the pod on its node.

use chrono::Duration;
use serde_json::{json, Value};

use super::fixtures::{cluster_of, key, leader_ctx, node, t0};
use super::*;
use crate::model::storage::{self, Volume, CAPACITY_KEY};
use crate::model::NodeRecord;

fn disk_node(name: &str, bytes: u64) -> NodeRecord {
    let mut n = node(name);
    n.capacity.insert(CAPACITY_KEY.into(), bytes.to_string());
    n.system.local_path_root = format!("/data/{name}");
    n
}

fn web(replicas: i64, size: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "web", "namespace": "default", "uid": "sts-1", "generation": 1},
        "spec": {
            "replicas": replicas, "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "c", "image": "i"}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}}],
        },
    })
}

fn settle(mut s: Snapshot, from: i64) -> Snapshot {
    for step in from..from + 6 {
        let plan = reconcile(
            &s,
            &leader_ctx("n1", t0() + Duration::seconds(step), step as u64),
        );
        s = s.after(&plan);
        // Kubelets: terminating pods on live nodes are removed.
        let bindings = s.bindings.clone();
        s.pods.retain(|p| {
            !(object::is_terminating(p)
                && bindings
                    .get(&key(p))
                    .is_some_and(|b| b.pod_uid == object::uid(p)))
        });
    }
    s
}

fn node_of(s: &Snapshot, pod: &str) -> Option<String> {
    let p = s.pods.iter().find(|p| object::name(p) == pod)?;
    s.bindings
        .get(&key(p))
        .filter(|b| b.pod_uid == object::uid(p))
        .map(|b| b.node.clone())
}

fn volume_of(s: &Snapshot, claim: &str) -> Option<Volume> {
    let c = s.claims.iter().find(|c| object::name(c) == claim)?;
    let name = storage::pv_name(object::uid(c));
    s.volumes
        .iter()
        .filter_map(Volume::of)
        .find(|v| v.name == name && v.claim_uid == object::uid(c))
}

#[test]
fn claims_bind_to_their_pods_nodes_and_recreated_pods_follow_them() {
    let nodes = vec![
        disk_node("n1", 10 << 30),
        disk_node("n2", 10 << 30),
        disk_node("n3", 10 << 30),
    ];
    let s = Snapshot {
        statefulsets: vec![web(3, "1Gi")],
        ..cluster_of(nodes)
    };
    let s = settle(s, 0);
    for i in 0..3 {
        let pod = format!("web-{i}");
        let claim = format!("data-web-{i}");
        let v = volume_of(&s, &claim).unwrap_or_else(|| panic!("{claim} bound: {:?}", s.volumes));
        assert_eq!(
            Some(v.node.clone()),
            node_of(&s, &pod),
            "{pod} on its volume's node"
        );
        assert_eq!(v.capacity, 1 << 30);
        let p = s.pods.iter().find(|p| object::name(p) == pod).unwrap();
        assert_eq!(
            p["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
            claim
        );
    }
    // Idempotent: another round plans nothing.
    let again = reconcile(&s, &leader_ctx("n1", t0() + Duration::seconds(60), 60));
    assert!(again.is_empty(), "{again:?}");

    // web-1 deleted (its kubelet removed it): re-created, and placed on its volume's node even
    // when that node is the most loaded.
    let before = volume_of(&s, "data-web-1").unwrap();
    let mut s2 = s.clone();
    s2.pods.retain(|p| object::name(p) != "web-1");
    let s2 = settle(s2, 100);
    assert_eq!(node_of(&s2, "web-1"), Some(before.node.clone()));
    assert_eq!(volume_of(&s2, "data-web-1"), Some(before));
    assert_eq!(s2.claims.len(), 3, "claims kept, not duplicated");

    // Scaled down: the claims and volumes stay.
    let mut s3 = s2.clone();
    s3.statefulsets = vec![web(1, "1Gi")];
    let s3 = settle(s3, 200);
    assert_eq!(s3.pods.len(), 1);
    assert_eq!(s3.claims.len(), 3);
    assert_eq!(s3.volumes.len(), 3);
}

#[test]
fn free_storage_is_accounted_and_too_large_claims_wait_with_an_event() {
    let s = Snapshot {
        statefulsets: vec![web(3, "6Gi")],
        ..cluster_of(vec![disk_node("n1", 10 << 30), disk_node("n2", 10 << 30)])
    };
    let s = settle(s, 0);
    // 6Gi each: two nodes hold one each; the third waits.
    let bound: Vec<Volume> = s.volumes.iter().filter_map(Volume::of).collect();
    assert_eq!(bound.len(), 2, "{bound:?}");
    assert_ne!(bound[0].node, bound[1].node);
    let waiting = (0..3)
        .map(|i| format!("web-{i}"))
        .find(|p| node_of(&s, p).is_none())
        .unwrap();
    let plan = reconcile(
        &Snapshot {
            scheduling: BTreeMap::new(),
            ..s.clone()
        },
        &leader_ctx("n1", t0() + Duration::seconds(50), 50),
    );
    let message = plan
        .events
        .iter()
        .find(|e| e.involved.name == waiting)
        .map(|e| e.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains("2 node(s) did not have enough free storage"),
        "{message}"
    );

    // More than any node has: the claim gets an event too.
    let s = settle(
        Snapshot {
            statefulsets: vec![web(1, "100Gi")],
            ..cluster_of(vec![disk_node("n1", 10 << 30)])
        },
        0,
    );
    assert!(s.volumes.is_empty());
    let fresh = reconcile(
        &Snapshot {
            scheduling: BTreeMap::new(),
            ..s
        },
        &leader_ctx("n1", t0(), 9),
    );
    assert!(
        fresh
            .events
            .iter()
            .any(|e| e.involved.kind == "PersistentVolumeClaim"
                && e.reason == crate::model::workload::EventReason::ProvisioningFailed),
        "{:?}",
        fresh.events
    );
}

#[test]
fn after_two_leaders_bound_a_claim_differently_the_pod_follows_the_winning_volume() {
    // Side A placed web-0 on n1 and bound its claim there; side B on n2. The merge kept A's
    // pod binding but B's volume (different keys may resolve to different writers).
    let nodes = vec![disk_node("n1", 10 << 30), disk_node("n2", 10 << 30)];
    let s = settle(
        Snapshot {
            statefulsets: vec![web(1, "1Gi")],
            ..cluster_of(nodes)
        },
        0,
    );
    let v = volume_of(&s, "data-web-0").unwrap();
    let other = if v.node == "n1" { "n2" } else { "n1" };
    let mut merged = s.clone();
    let claim = merged
        .claims
        .iter()
        .find(|c| object::name(c) == "data-web-0")
        .unwrap()
        .clone();
    let c = storage::Claim::of(&claim).unwrap();
    merged.volumes = vec![storage::new_volume(
        &c,
        &storage::Class::builtin(),
        "1Gi",
        &json!(["ReadWriteOnce"]),
        other,
        "/data",
        t0(),
    )];
    let old_uid = object::uid(
        merged
            .pods
            .iter()
            .find(|p| object::name(p) == "web-0")
            .unwrap(),
    )
    .to_string();
    let healed = settle(merged, 300);
    let pod = healed
        .pods
        .iter()
        .find(|p| object::name(p) == "web-0")
        .unwrap();
    assert_ne!(
        object::uid(pod),
        old_uid,
        "the identity was re-created, not moved"
    );
    assert_eq!(node_of(&healed, "web-0").as_deref(), Some(other));
    assert_eq!(
        volume_of(&healed, "data-web-0").unwrap().node,
        other,
        "one volume, unchanged"
    );
}

/// `kubernetes.io/pvc-protection` and `pv-protection`: a claim being deleted stays while a
/// placed pod uses it and goes in the round after its last pod; a `Retain` volume being
/// deleted stays while its claim exists; a `Delete` one is left to its node.
#[test]
fn claims_and_volumes_being_deleted_stay_while_in_use() {
    let s = Snapshot {
        statefulsets: vec![web(2, "1Gi")],
        ..cluster_of(vec![disk_node("n1", 10 << 30), disk_node("n2", 10 << 30)])
    };
    let mut s = settle(s, 0);
    for c in &s.claims {
        assert_eq!(
            c["metadata"]["finalizers"],
            json!([storage::PVC_PROTECTION])
        );
    }
    for v in &s.volumes {
        assert_eq!(v["metadata"]["finalizers"], json!([storage::PV_PROTECTION]));
    }
    let terminating = |v: &mut Value| {
        v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    };
    // data-web-0 is deleted while web-0 runs: it stays.
    for c in &mut s.claims {
        if object::name(c) == "data-web-0" {
            terminating(c);
        }
    }
    // The volume of data-web-1, made `Retain`, is deleted while its claim exists: it stays.
    let v1 = volume_of(&s, "data-web-1").unwrap().name;
    for v in &mut s.volumes {
        if object::name(v) == v1 {
            terminating(v);
            v["spec"]["persistentVolumeReclaimPolicy"] = json!("Retain");
        }
    }
    let plan = reconcile(&s, &leader_ctx("n1", t0() + Duration::seconds(50), 50));
    assert!(plan.is_empty(), "{plan:?}");
    // A finalizer shoal does not know holds a claim nobody uses.
    let mut held = s.clone();
    held.statefulsets = vec![web(0, "1Gi")];
    for c in &mut held.claims {
        if object::name(c) == "data-web-0" {
            c["metadata"]["finalizers"] = json!([storage::PVC_PROTECTION, "example.com/keep"]);
        }
    }
    let held = settle(held, 60);
    assert!(held.claims.iter().any(|c| object::name(c) == "data-web-0"));
    // Scaled to 0 (the pods go): both claims' ... data-web-0 goes, and with data-web-1
    // deleted too, its Retain volume follows.
    s.statefulsets = vec![web(0, "1Gi")];
    for c in &mut s.claims {
        if object::name(c) == "data-web-1" {
            terminating(c);
        }
    }
    let v0 = volume_of(&s, "data-web-0").unwrap().name;
    let s = settle(s, 100);
    assert!(s.pods.is_empty());
    assert!(s.claims.is_empty(), "{:?}", s.claims);
    let left: Vec<&str> = s.volumes.iter().map(object::name).collect();
    assert_eq!(
        left,
        [v0.as_str()],
        "the Delete volume is its node's to remove"
    );
    let again = reconcile(&s, &leader_ctx("n1", t0() + Duration::seconds(200), 200));
    assert!(again.is_empty(), "{again:?}");
}

/// A StatefulSet pod re-created while its claim was being deleted waits (the claim is being
/// deleted), does not hold the claim (it is not placed), and gets a new claim once the old one
/// is gone.
#[test]
fn a_pending_pods_deleted_claim_is_made_again() {
    let s = Snapshot {
        statefulsets: vec![web(1, "1Gi")],
        ..cluster_of(vec![disk_node("n1", 10 << 30)])
    };
    let mut s = settle(s, 0);
    let old_uid = object::uid(&s.claims[0]).to_string();
    s.claims[0]["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    s.pods.clear();
    let s = settle(s, 100);
    assert_eq!(s.claims.len(), 1);
    assert_ne!(object::uid(&s.claims[0]), old_uid, "a new claim");
    assert!(node_of(&s, "web-0").is_some(), "web-0 placed with it");
    let again = reconcile(&s, &leader_ctx("n1", t0() + Duration::seconds(300), 300));
    assert!(again.is_empty(), "{again:?}");
}
