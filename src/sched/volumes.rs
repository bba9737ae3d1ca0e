//! Volume binding (pure), the leader's side of the local-path provisioner
//! (`docs/workloads.md`, "Persistent volumes"): what a pod's PersistentVolumeClaims ask of its
//! node ([`need`], read by placement: a bound claim pins the pod to its volume's node, an
//! unbound one needs that much free local-path storage), the PersistentVolume written for each
//! unbound claim once a pod using it is placed ([`provision`]), and the pods whose placement
//! and volume disagree after two leaders' writes merged ([`fence`]).
//!
//! **One decision per claim.** The volume of a claim is `pvc-<claim uid>`, one key: two
//! leaders that bind the same claim during a partition write the same key, and the document's
//! deterministic winner is the one volume every replica sees after the heal. A pod is only
//! ever run where its claim's volume is (the kubelet refuses to mount a volume of another
//! node), so the losing side's pod stops; its directory on the losing node is kept (never
//! removed: only the volume's own node removes, and only its own volumes).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::object;
use super::snapshot::{LeaderCtx, PlannedEvent, PodKey, Write};
use super::statefulset;
use super::Working;
use crate::model::storage::{self, Claim, Volume, CLUSTER_SCOPE, PVS};
use crate::model::workload::{self, EventReason, EventType, InvolvedObject, PODS};
use crate::model::NodeRecord;

/// The storage objects of a reconcile: claims (by namespace and name), volumes (by name) and
/// the stored StorageClasses.
#[derive(Clone, Debug, Default)]
pub struct Storage<'a> {
    pub claims: BTreeMap<PodKey, Cow<'a, Value>>,
    pub volumes: BTreeMap<String, Volume>,
    pub classes: &'a [Value],
}

impl<'a> Storage<'a> {
    pub fn new(claims: &'a [Value], volumes: &'a [Value], classes: &'a [Value]) -> Self {
        Storage {
            claims: claims
                .iter()
                .map(|c| {
                    let key = (
                        object::namespace(c).to_string(),
                        object::name(c).to_string(),
                    );
                    (key, Cow::Borrowed(c))
                })
                .collect(),
            volumes: volumes
                .iter()
                .filter_map(Volume::of)
                .map(|v| (v.name.clone(), v))
                .collect(),
            classes,
        }
    }

    /// Bytes of local-path storage the volumes on each node hold (released ones too: their
    /// data is still on the disk).
    pub fn used_by_node(&self) -> BTreeMap<&str, u64> {
        let mut used: BTreeMap<&str, u64> = BTreeMap::new();
        for v in self.volumes.values() {
            let u = used.entry(v.node.as_str()).or_default();
            *u = u.saturating_add(v.capacity);
        }
        used
    }

    /// The volume bound to `claim` (same uid), if any.
    pub fn volume_of(&self, claim: &Claim) -> Option<&Volume> {
        self.volumes
            .get(&storage::pv_name(&claim.uid))
            .filter(|v| v.claim_uid == claim.uid)
    }
}

/// What a pod's claims ask of its node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Need {
    /// The node of its bound claims' volumes.
    pub pinned: Option<String>,
    /// Its unbound claims: `(claim key, bytes)`.
    pub unbound: Vec<(PodKey, u64)>,
}

/// Why a pod's claims let it be placed nowhere: the message (after `0/N nodes are
/// available: `) and, for a fault of the claim itself, the claim and the event it gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    pub message: String,
    pub claim_event: Option<(PodKey, String)>,
}

/// What `pod`'s claims ask (see [`Need`]), or why it cannot be placed. `users`: for each
/// `ReadWriteOncePod` claim, the pods (not terminating) that use it.
pub fn need(
    pod: &Value,
    storage: &Storage<'_>,
    one_pod_users: &BTreeMap<PodKey, BTreeSet<PodKey>>,
) -> Result<Need, Blocked> {
    let ns = object::namespace(pod);
    let pod_key = (ns.to_string(), object::name(pod).to_string());
    let mut out = Need::default();
    for (_, claim_name, _) in storage::pod_claims(&pod["spec"]) {
        let key = (ns.to_string(), claim_name.clone());
        let blocked = |message: String| Blocked {
            message,
            claim_event: None,
        };
        let Some(claim) = storage.claims.get(&key).and_then(|c| Claim::of(c)) else {
            return Err(blocked(format!(
                "persistentvolumeclaim \"{claim_name}\" not found"
            )));
        };
        if claim.terminating {
            return Err(blocked(format!(
                "persistentvolumeclaim \"{claim_name}\" is being deleted"
            )));
        }
        if claim.one_pod
            && one_pod_users
                .get(&key)
                .is_some_and(|users| users.iter().any(|u| *u != pod_key))
        {
            return Err(blocked(
                "node has pod using PersistentVolumeClaim with the same name and ReadWriteOncePod access mode".into(),
            ));
        }
        match storage.volume_of(&claim) {
            Some(v) => match &out.pinned {
                Some(n) if *n != v.node => {
                    return Err(blocked(format!(
                        "persistentvolumeclaims of the pod are on different nodes ({n}, {})",
                        v.node
                    )))
                }
                _ => out.pinned = Some(v.node.clone()),
            },
            None => {
                if storage::find_class(storage.classes, &claim.class).is_none() {
                    let message =
                        format!("storageclass.storage.k8s.io \"{}\" not found", claim.class);
                    return Err(Blocked {
                        message: format!("persistentvolumeclaim \"{claim_name}\": {message}"),
                        claim_event: Some((key, message)),
                    });
                }
                out.unbound.push((key, claim.request));
            }
        }
    }
    Ok(out)
}

/// For each `ReadWriteOncePod` claim, the pods (not terminating) that use it.
pub fn one_pod_users<'p>(
    pods: impl IntoIterator<Item = (&'p PodKey, &'p Value)>,
    storage: &Storage<'_>,
) -> BTreeMap<PodKey, BTreeSet<PodKey>> {
    let mut out: BTreeMap<PodKey, BTreeSet<PodKey>> = BTreeMap::new();
    for (key, pod) in pods {
        if object::is_terminating(pod) {
            continue;
        }
        for (_, claim, _) in storage::pod_claims(&pod["spec"]) {
            let ck = (key.0.clone(), claim);
            let one = storage
                .claims
                .get(&ck)
                .and_then(|c| Claim::of(c))
                .is_some_and(|c| c.one_pod);
            if one {
                out.entry(ck).or_default().insert(key.clone());
            }
        }
    }
    out
}

fn claim_involved(claim: &Value) -> InvolvedObject {
    InvolvedObject {
        api_version: "v1".into(),
        kind: "PersistentVolumeClaim".into(),
        namespace: object::namespace(claim).to_string(),
        name: object::name(claim).to_string(),
        uid: object::uid(claim).to_string(),
    }
}

/// The event on a claim no node can provision (its class is unknown, or it asks more than
/// any node's local-path storage holds), recorded with its pod's `FailedScheduling`.
pub fn claim_event(claim: &Value, message: String) -> PlannedEvent {
    PlannedEvent {
        involved: claim_involved(claim),
        event_type: EventType::Warning,
        reason: EventReason::ProvisioningFailed,
        message,
        component: "persistentvolume-controller",
    }
}

/// The node a pod runs on: its `spec.nodeName`, else its binding's node.
fn node_of(w: &Working<'_>, key: &PodKey, pod: &Value) -> Option<String> {
    let user_node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
    let binding = w.bindings.get(key).map(|b| b.as_ref());
    workload::placement(object::uid(pod), user_node, binding).map(|(n, _)| n)
}

/// Writes the PersistentVolume of every unbound claim (of a known class) that a placed pod
/// (not terminating) uses, on that pod's node, and records it in `w.storage`. Idempotent:
/// a bound claim is never bound again.
pub(crate) fn provision(
    w: &mut Working<'_>,
    nodes: &[NodeRecord],
    ctx: &LeaderCtx,
    writes: &mut Vec<Write>,
    events: &mut Vec<PlannedEvent>,
) {
    let roots: BTreeMap<&str, &str> = nodes
        .iter()
        .map(|n| (n.name.as_str(), n.system.local_path_root.as_str()))
        .collect();
    let mut made: Vec<(Value, Volume, Value)> = Vec::new();
    for (key, pod) in &w.pods {
        if !object::is_valid(pod) || object::is_terminating(pod) {
            continue;
        }
        let claims = storage::pod_claims(&pod["spec"]);
        if claims.is_empty() {
            continue;
        }
        let Some(node) = node_of(w, key, pod) else {
            continue;
        };
        let Some(root) = roots.get(node.as_str()).filter(|r| !r.is_empty()) else {
            continue;
        };
        for (_, claim_name, _) in claims {
            let ck = (key.0.clone(), claim_name);
            let Some(raw) = w.storage.claims.get(&ck) else {
                continue;
            };
            let Some(claim) = Claim::of(raw).filter(|c| !c.terminating) else {
                continue;
            };
            let name = storage::pv_name(&claim.uid);
            if w.storage.volumes.contains_key(&name) || made.iter().any(|m| m.1.name == name) {
                continue;
            }
            let Some(class) = storage::find_class(w.storage.classes, &claim.class) else {
                continue;
            };
            let request = raw["spec"]["resources"]["requests"]["storage"]
                .as_str()
                .unwrap_or("0");
            let pv = storage::new_volume(
                &claim,
                &class,
                request,
                &raw["spec"]["accessModes"],
                &node,
                root,
                ctx.now,
            );
            if let Some(v) = Volume::of(&pv) {
                made.push((pv, v, raw.as_ref().clone()));
            }
        }
    }
    for (pv, v, claim) in made {
        events.push(PlannedEvent {
            involved: claim_involved(&claim),
            event_type: EventType::Normal,
            reason: EventReason::ProvisioningSucceeded,
            message: format!(
                "Successfully provisioned volume {} on node {} (class {})",
                v.name,
                v.node,
                pv["spec"]["storageClassName"].as_str().unwrap_or_default()
            ),
            component: "persistentvolume-controller",
        });
        writes.push(Write::PutObject {
            resource: PVS,
            namespace: CLUSTER_SCOPE.into(),
            name: v.name.clone(),
            object: pv,
        });
        w.storage.volumes.insert(v.name.clone(), v);
    }
}

/// Pods placed on a node other than their claims' volume (two leaders' writes merged after a
/// partition, each side having bound the claim to its own pick): a StatefulSet's pod is
/// deleted gracefully (its controller re-creates it, then placement pins it to the volume's
/// node: at most one copy of the identity at any time), another pod loses its binding and is
/// placed again. A pod bound by the user (`nodeName`) stays: its kubelet refuses the mount.
pub(crate) fn fence(w: &mut Working<'_>, ctx: &LeaderCtx, writes: &mut Vec<Write>) {
    let mut mismatched: Vec<PodKey> = Vec::new();
    for (key, pod) in &w.pods {
        if object::is_terminating(pod) || !pod["spec"]["nodeName"].is_null() {
            continue;
        }
        let Some(b) = w.bindings.get(key) else {
            continue;
        };
        if b.pod_uid != object::uid(pod) {
            continue;
        }
        let elsewhere = storage::pod_claims(&pod["spec"])
            .into_iter()
            .any(|(_, c, _)| {
                w.storage
                    .claims
                    .get(&(key.0.clone(), c))
                    .and_then(|c| Claim::of(c))
                    .and_then(|c| w.storage.volume_of(&c).map(|v| v.node != b.node))
                    .unwrap_or(false)
            });
        if elsewhere {
            mismatched.push(key.clone());
        }
    }
    for key in mismatched {
        let Some(pod) = w.pods.get(&key) else {
            continue;
        };
        if statefulset::holds_identity(pod) {
            let marked = statefulset::terminating(pod, ctx.now);
            writes.push(Write::PutObject {
                resource: PODS,
                namespace: key.0.clone(),
                name: key.1.clone(),
                object: marked.clone(),
            });
            w.pods.insert(key, Cow::Owned(marked));
        } else {
            w.bindings.remove(&key);
            writes.push(Write::DeleteBinding {
                namespace: key.0,
                pod: key.1,
            });
        }
    }
}

/// Claims and volumes being deleted (`deletionTimestamp`, set by the API when they carry a
/// finalizer) that nothing holds any more, removed: a claim that no **placed** pod (bound, or
/// `spec.nodeName`) uses (`kubernetes.io/pvc-protection`; a pod still Pending does not hold
/// it, as in Kubernetes, so a StatefulSet's re-created pod cannot keep its own claim from
/// going), and a `Retain` volume whose claim is gone (`kubernetes.io/pv-protection`). A
/// `Delete` volume whose claim is gone is its node's to remove, with its directory
/// (`kubelet::volumes`). A finalizer shoal does not know keeps the object until a user
/// removes it. `volumes`: the stored volumes.
pub(crate) fn release(w: &mut Working<'_>, volumes: &[Value], writes: &mut Vec<Write>) {
    let mut used: BTreeSet<PodKey> = BTreeSet::new();
    for (key, pod) in &w.pods {
        if node_of(w, key, pod).is_none() {
            continue;
        }
        for (_, claim, _) in storage::pod_claims(&pod["spec"]) {
            used.insert((key.0.clone(), claim));
        }
    }
    let gone: Vec<PodKey> = w
        .storage
        .claims
        .iter()
        .filter(|(_, c)| object::is_terminating(c))
        .filter(|(key, c)| storage::may_remove(c, storage::PVC_PROTECTION, used.contains(*key)))
        .map(|(k, _)| k.clone())
        .collect();
    for key in gone {
        w.storage.claims.remove(&key);
        writes.push(Write::DeleteObject {
            resource: storage::PVCS,
            namespace: key.0,
            name: key.1,
        });
    }
    let claim_uids: BTreeSet<&str> = w.storage.claims.values().map(|c| object::uid(c)).collect();
    for v in volumes.iter().filter(|v| object::is_terminating(v)) {
        let Some(parsed) = Volume::of(v) else {
            continue;
        };
        let bound = claim_uids.contains(parsed.claim_uid.as_str());
        let retained = parsed.reclaim == storage::Reclaim::Retain;
        if storage::may_remove(v, storage::PV_PROTECTION, bound || !retained) {
            w.storage.volumes.remove(&parsed.name);
            writes.push(Write::DeleteObject {
                resource: PVS,
                namespace: CLUSTER_SCOPE.to_string(),
                name: parsed.name,
            });
        }
    }
}

/// Claims a StatefulSet's pod of `ordinal` needs: `<template>-<sts>-<ordinal>` for each of its
/// `volumeClaimTemplates`, as new claim objects (labels of the template plus the set's
/// selector labels, as Kubernetes makes them; no owner: the claims are kept, policy `Retain`).
pub fn statefulset_claims(sts: &Value, ordinal: usize, ctx: &LeaderCtx) -> Vec<(String, Value)> {
    let sts_name = object::name(sts);
    let ns = object::namespace(sts);
    sts["spec"]["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| {
            let template = t["metadata"]["name"].as_str()?;
            let name = claim_name(template, sts_name, ordinal);
            let mut labels = match &t["metadata"]["labels"] {
                Value::Object(m) => Value::Object(m.clone()),
                _ => serde_json::json!({}),
            };
            for (k, v) in sts["spec"]["selector"]["matchLabels"]
                .as_object()
                .into_iter()
                .flatten()
            {
                labels[k] = v.clone();
            }
            let mut spec = t["spec"].clone();
            if spec["storageClassName"].is_null() {
                spec["storageClassName"] = Value::String(storage::LOCAL_PATH.into());
            }
            if spec["volumeMode"].is_null() {
                spec["volumeMode"] = Value::String("Filesystem".into());
            }
            let claim = serde_json::json!({
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {
                    "name": name,
                    "namespace": ns,
                    "uid": super::hash::derived_uid("PersistentVolumeClaim", object::uid(sts), &format!("{name}@{}", ctx.now.timestamp_micros())),
                    "labels": labels,
                    "finalizers": [storage::PVC_PROTECTION],
                    "creationTimestamp": object::timestamp(ctx.now),
                    "resourceVersion": object::resource_version(ctx.now),
                },
                "spec": spec,
            });
            Some((name, claim))
        })
        .collect()
}

/// `<template>-<sts>-<ordinal>`.
pub fn claim_name(template: &str, sts_name: &str, ordinal: usize) -> String {
    format!("{template}-{sts_name}-{ordinal}")
}

/// The pod template's volumes with one `persistentVolumeClaim` volume per claim template
/// (replacing a volume of the same name, as Kubernetes does).
pub fn with_claim_volumes(spec: &mut Value, sts: &Value, ordinal: usize) {
    let sts_name = object::name(sts);
    let templates: Vec<&str> = sts["spec"]["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["metadata"]["name"].as_str())
        .collect();
    if templates.is_empty() {
        return;
    }
    let mut volumes: Vec<Value> = spec["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|v| !templates.iter().any(|t| v["name"] == *t))
        .collect();
    for t in templates {
        volumes.push(serde_json::json!({
            "name": t,
            "persistentVolumeClaim": {"claimName": claim_name(t, sts_name, ordinal)},
        }));
    }
    spec["volumes"] = Value::Array(volumes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claim(name: &str, uid: &str, class: Option<&str>, size: &str, modes: &[&str]) -> Value {
        let mut c = json!({"metadata": {"name": name, "namespace": "default", "uid": uid},
            "spec": {"accessModes": modes, "resources": {"requests": {"storage": size}}}});
        if let Some(class) = class {
            c["spec"]["storageClassName"] = json!(class);
        }
        c
    }

    fn pod(name: &str, claims: &[&str]) -> Value {
        let volumes: Vec<Value> = claims
            .iter()
            .map(|c| json!({"name": c, "persistentVolumeClaim": {"claimName": c}}))
            .collect();
        json!({"metadata": {"name": name, "namespace": "default", "uid": format!("u-{name}")},
               "spec": {"containers": [{"name": "c", "image": "i"}], "volumes": volumes}})
    }

    fn bound_volume(claim: &Value, node: &str) -> Value {
        let c = Claim::of(claim).unwrap();
        storage::new_volume(
            &c,
            &storage::Class::builtin(),
            "1Gi",
            &json!(["ReadWriteOnce"]),
            node,
            "/r",
            chrono::DateTime::UNIX_EPOCH,
        )
    }

    #[test]
    fn bound_claims_pin_and_unbound_claims_ask_for_room() {
        let claims = vec![
            claim("a", "ua", None, "1Gi", &["ReadWriteOnce"]),
            claim("b", "ub", None, "2Gi", &["ReadWriteOnce"]),
        ];
        let volumes = vec![bound_volume(&claims[0], "n2")];
        let s = Storage::new(&claims, &volumes, &[]);
        let users = BTreeMap::new();
        let n = need(&pod("p", &["a", "b"]), &s, &users).unwrap();
        assert_eq!(n.pinned.as_deref(), Some("n2"));
        assert_eq!(n.unbound, vec![(("default".into(), "b".into()), 2 << 30)]);
        assert_eq!(s.used_by_node().get("n2"), Some(&(1 << 30)));
    }

    #[test]
    fn missing_claims_and_unknown_classes_block_with_their_reason() {
        let claims = vec![claim("x", "ux", Some("fast"), "1Gi", &["ReadWriteOnce"])];
        let s = Storage::new(&claims, &[], &[]);
        let users = BTreeMap::new();
        let e = need(&pod("p", &["nope"]), &s, &users).unwrap_err();
        assert_eq!(e.message, "persistentvolumeclaim \"nope\" not found");
        let e = need(&pod("p", &["x"]), &s, &users).unwrap_err();
        assert_eq!(
            e.claim_event,
            Some((
                ("default".into(), "x".into()),
                "storageclass.storage.k8s.io \"fast\" not found".into()
            ))
        );
    }

    #[test]
    fn a_read_write_once_pod_claim_takes_one_pod() {
        let claims = vec![claim("x", "ux", None, "1Gi", &["ReadWriteOncePod"])];
        let s = Storage::new(&claims, &[], &[]);
        let p1 = pod("p1", &["x"]);
        let p2 = pod("p2", &["x"]);
        let k1 = ("default".to_string(), "p1".to_string());
        let users = one_pod_users([(&k1, &p1)], &s);
        assert!(need(&p1, &s, &users).is_ok());
        assert!(need(&p2, &s, &users)
            .unwrap_err()
            .message
            .contains("ReadWriteOncePod"));
    }

    #[test]
    fn statefulset_claims_are_named_by_template_set_and_ordinal() {
        let sts = json!({"metadata": {"name": "web", "namespace": "default", "uid": "s1"},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}});
        let ctx = LeaderCtx {
            node: "n".into(),
            epoch: 1,
            view: 1,
            now: chrono::DateTime::UNIX_EPOCH,
            seed: 0,
        };
        let claims = statefulset_claims(&sts, 2, &ctx);
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].0, "data-web-2");
        assert_eq!(claims[0].1["metadata"]["labels"]["app"], "web");
        assert_eq!(claims[0].1["spec"]["storageClassName"], "local-path");
        let mut spec =
            json!({"volumes": [{"name": "data", "emptyDir": {}}, {"name": "o", "emptyDir": {}}]});
        with_claim_volumes(&mut spec, &sts, 2);
        assert_eq!(
            spec["volumes"],
            json!([{"name": "o", "emptyDir": {}},
                   {"name": "data", "persistentVolumeClaim": {"claimName": "data-web-2"}}])
        );
    }
}
