//! Persistent storage (`docs/workloads.md`, "Persistent volumes"): PersistentVolumeClaims,
//! the PersistentVolumes shoal's built-in local provisioner makes for them, and
//! StorageClasses. Names, the facts the scheduler and the kubelet read from the stored
//! objects, the PersistentVolume a binding writes, and which volumes a node may reclaim. Pure.
//!
//! A claim of the `local-path` provisioner binds when its first pod is placed: the leader
//! that places the pod writes the PersistentVolume `pvc-<claim uid>` naming the pod's node.
//! The directory is `<node's local-path root>/pvc-<uid>_<ns>_<claim>` on that node, made by
//! its kubelet when a pod first mounts it and removed by that kubelet alone, once the claim is
//! gone and the reclaim policy is `Delete`.

use std::collections::BTreeSet;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

/// Backend resource of PersistentVolumeClaims (namespaced).
pub const PVCS: &str = "persistentvolumeclaims";
/// Backend resource of PersistentVolumes (cluster-scoped).
pub const PVS: &str = "persistentvolumes";
/// Backend resource of StorageClasses (cluster-scoped).
pub const STORAGE_CLASSES: &str = "storageclasses.storage.k8s.io";
/// The namespace part of a cluster-scoped object's key in a controller's write.
pub const CLUSTER_SCOPE: &str = "_";
/// The built-in, default StorageClass.
pub const LOCAL_PATH: &str = "local-path";
/// The provisioner of shoal's local volumes (the only one a StorageClass may name).
pub const PROVISIONER: &str = "shoal.io/local-path";
/// Node capacity key: bytes of the filesystem holding the node's local-path root.
pub const CAPACITY_KEY: &str = "shoal.io/local-path";
/// The annotation naming the default class (Kubernetes' name).
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
/// Annotation on a PersistentVolume: the node whose directory holds it.
pub const NODE_ANNOTATION: &str = "shoal.io/node";
/// Finalizer on a claim: kept while a placed pod uses it (Kubernetes' name).
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
/// Finalizer on a volume: kept while its claim exists (Kubernetes' name).
pub const PV_PROTECTION: &str = "kubernetes.io/pv-protection";

/// `metadata.finalizers` of an object.
pub fn finalizers(object: &Value) -> Vec<&str> {
    object["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// `object` with `finalizer` in its `metadata.finalizers` (added if missing).
pub fn with_finalizer(object: &mut Value, finalizer: &str) {
    if finalizers(object).contains(&finalizer) {
        return;
    }
    match object["metadata"]["finalizers"].as_array_mut() {
        Some(list) => list.push(json!(finalizer)),
        None => object["metadata"]["finalizers"] = json!([finalizer]),
    }
}

/// Whether a claim or volume being deleted may be removed now (what Kubernetes' protection
/// controllers and the API server's finalizer handling amount to): nothing but `protection`
/// holds it, and `protection` is absent or no longer `holds`.
pub fn may_remove(object: &Value, protection: &str, holds: bool) -> bool {
    let f = finalizers(object);
    f.iter().all(|x| *x == protection) && (!holds || f.is_empty())
}

/// Access modes a local volume supports.
pub const ACCESS_MODES: [&str; 2] = ["ReadWriteOnce", "ReadWriteOncePod"];

/// The PersistentVolume made for the claim of `claim_uid` (as Kubernetes' provisioners name
/// them). One name per claim: two leaders binding the same claim write the same key.
pub fn pv_name(claim_uid: &str) -> String {
    format!("pvc-{claim_uid}")
}

/// The directory of PersistentVolume `pv` (of claim `namespace/claim`) under a node's root.
pub fn dir_name(pv: &str, namespace: &str, claim: &str) -> String {
    format!("{pv}_{namespace}_{claim}")
}

/// What happens to a volume's data once its claim is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reclaim {
    /// The directory is removed and the PersistentVolume deleted (by the volume's node).
    Delete,
    /// The PersistentVolume stays `Released` and the directory is kept.
    Retain,
}

impl Reclaim {
    pub fn parse(s: &str) -> Option<Reclaim> {
        match s {
            "Delete" => Some(Reclaim::Delete),
            "Retain" => Some(Reclaim::Retain),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Reclaim::Delete => "Delete",
            Reclaim::Retain => "Retain",
        }
    }
}

/// A StorageClass as the provisioner reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Class {
    pub name: String,
    pub reclaim: Reclaim,
}

impl Class {
    /// A stored StorageClass of shoal's provisioner (others are refused by the API).
    pub fn of(v: &Value) -> Option<Class> {
        if v["provisioner"] != PROVISIONER {
            return None;
        }
        Some(Class {
            name: v["metadata"]["name"].as_str()?.to_string(),
            reclaim: Reclaim::parse(v["reclaimPolicy"].as_str().unwrap_or("Delete"))?,
        })
    }

    pub fn builtin() -> Class {
        Class {
            name: LOCAL_PATH.into(),
            reclaim: Reclaim::Delete,
        }
    }
}

/// The built-in `local-path` StorageClass as the API serves it (not stored: every node
/// serves the same object).
pub fn builtin_class(created: DateTime<Utc>) -> Value {
    json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": LOCAL_PATH,
            "uid": "00000000-0000-0000-0000-00000000cafe",
            "resourceVersion": "1",
            "creationTimestamp": created.to_rfc3339_opts(SecondsFormat::Secs, true),
            "annotations": {DEFAULT_CLASS_ANNOTATION: "true"},
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
        "allowVolumeExpansion": false,
    })
}

/// The class named `name` among the stored classes, or the built-in one.
pub fn find_class(classes: &[Value], name: &str) -> Option<Class> {
    if name == LOCAL_PATH {
        return Some(Class::builtin());
    }
    classes
        .iter()
        .filter(|c| c["metadata"]["name"] == name)
        .find_map(Class::of)
}

/// A PersistentVolumeClaim as the scheduler and the provisioner read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub class: String,
    /// `spec.resources.requests.storage` in bytes.
    pub request: u64,
    /// Only one pod may use it (`ReadWriteOncePod`).
    pub one_pod: bool,
    pub terminating: bool,
}

impl Claim {
    /// A stored (admitted) claim; `None` when malformed.
    pub fn of(v: &Value) -> Option<Claim> {
        let meta = &v["metadata"];
        let request = v["spec"]["resources"]["requests"]["storage"].as_str()?;
        Some(Claim {
            namespace: meta["namespace"].as_str().unwrap_or("default").to_string(),
            name: meta["name"].as_str()?.to_string(),
            uid: meta["uid"].as_str().filter(|u| !u.is_empty())?.to_string(),
            class: v["spec"]["storageClassName"]
                .as_str()
                .unwrap_or(LOCAL_PATH)
                .to_string(),
            request: super::quantity::parse_units(request).ok()?,
            one_pod: v["spec"]["accessModes"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|m| m == "ReadWriteOncePod"),
            terminating: !meta["deletionTimestamp"].is_null(),
        })
    }
}

/// A PersistentVolume of the local provisioner as the scheduler and the kubelet read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    pub name: String,
    pub node: String,
    pub claim_namespace: String,
    pub claim_name: String,
    pub claim_uid: String,
    pub capacity: u64,
    pub reclaim: Reclaim,
}

impl Volume {
    pub fn of(v: &Value) -> Option<Volume> {
        let claim = &v["spec"]["claimRef"];
        Some(Volume {
            name: v["metadata"]["name"].as_str()?.to_string(),
            node: v["metadata"]["annotations"][NODE_ANNOTATION]
                .as_str()
                .filter(|n| !n.is_empty())?
                .to_string(),
            claim_namespace: claim["namespace"].as_str()?.to_string(),
            claim_name: claim["name"].as_str()?.to_string(),
            claim_uid: claim["uid"].as_str()?.to_string(),
            capacity: v["spec"]["capacity"]["storage"]
                .as_str()
                .and_then(|q| super::quantity::parse_units(q).ok())
                .unwrap_or(0),
            reclaim: Reclaim::parse(
                v["spec"]["persistentVolumeReclaimPolicy"]
                    .as_str()
                    .unwrap_or("Delete"),
            )?,
        })
    }

    /// The directory's name under the node's root.
    pub fn dir_name(&self) -> String {
        dir_name(&self.name, &self.claim_namespace, &self.claim_name)
    }
}

/// The PersistentVolume binding `claim` (of `class`) to `node`, whose local-path root is
/// `root`. Its uid is derived from the claim's, so every leader writes the same object for
/// the same decision.
pub fn new_volume(
    claim: &Claim,
    class: &Class,
    claim_request: &str,
    access_modes: &Value,
    node: &str,
    root: &str,
    now: DateTime<Utc>,
) -> Value {
    let name = pv_name(&claim.uid);
    let path = format!(
        "{}/{}",
        root.trim_end_matches('/'),
        dir_name(&name, &claim.namespace, &claim.name)
    );
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": name,
            "uid": format!("pv-{}", claim.uid),
            "creationTimestamp": now.to_rfc3339_opts(SecondsFormat::Secs, true),
            "resourceVersion": now.timestamp_micros().max(0).to_string(),
            "annotations": {
                NODE_ANNOTATION: node,
                "pv.kubernetes.io/provisioned-by": PROVISIONER,
            },
            "finalizers": [PV_PROTECTION],
        },
        "spec": {
            "capacity": {"storage": claim_request},
            "accessModes": access_modes,
            "persistentVolumeReclaimPolicy": class.reclaim.as_str(),
            "storageClassName": class.name,
            "volumeMode": "Filesystem",
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": claim.namespace,
                "name": claim.name,
                "uid": claim.uid,
            },
            "local": {"path": path},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [{
                "key": super::workload::HOSTNAME_LABEL,
                "operator": "In",
                "values": [node],
            }]}]}},
        },
    })
}

/// The claims a pod spec mounts: `(volume name, claim name, read only)`.
pub fn pod_claims(spec: &Value) -> Vec<(String, String, bool)> {
    spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| {
            let c = &v["persistentVolumeClaim"];
            Some((
                v["name"].as_str()?.to_string(),
                c["claimName"].as_str()?.to_string(),
                c["readOnly"].as_bool().unwrap_or(false),
            ))
        })
        .collect()
}

/// The phase of a PersistentVolume: `Bound` while its claim (same uid) exists, else `Released`.
pub fn volume_phase(volume: &Volume, claim_uids: &BTreeSet<&str>) -> &'static str {
    if claim_uids.contains(volume.claim_uid.as_str()) {
        "Bound"
    } else {
        "Released"
    }
}

/// The volumes of `node` whose data its kubelet removes now: policy `Delete`, claim gone (no
/// claim with its uid: the document is causal, so a replica holding the volume also held the
/// claim it was made for, and its absence means it was deleted), and no pod of this node
/// (`mounted`: the claims its pods mount, by namespace and name) still mounts that claim.
pub fn reclaimable<'a>(
    node: &str,
    volumes: &'a [Volume],
    claim_uids: &BTreeSet<&str>,
    mounted: &BTreeSet<(String, String)>,
) -> Vec<&'a Volume> {
    volumes
        .iter()
        .filter(|v| v.node == node && v.reclaim == Reclaim::Delete)
        .filter(|v| !claim_uids.contains(v.claim_uid.as_str()))
        .filter(|v| !mounted.contains(&(v.claim_namespace.clone(), v.claim_name.clone())))
        .collect()
}

/// Whether `name` is one plain path component (a directory name that stays under the root).
pub fn is_plain_component(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim_json(name: &str, uid: &str, size: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "ns", "uid": uid},
               "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}})
    }

    #[test]
    fn a_new_volume_reads_back_as_the_binding_it_records() {
        let claim = Claim::of(&claim_json("data", "u1", "1Gi")).unwrap();
        assert_eq!(claim.class, LOCAL_PATH);
        assert_eq!(claim.request, 1 << 30);
        let pv = new_volume(
            &claim,
            &Class::builtin(),
            "1Gi",
            &json!(["ReadWriteOnce"]),
            "n1",
            "/var/lib/shoal/local-path/",
            DateTime::UNIX_EPOCH,
        );
        let v = Volume::of(&pv).unwrap();
        assert_eq!(v.name, "pvc-u1");
        assert_eq!(v.node, "n1");
        assert_eq!(v.claim_uid, "u1");
        assert_eq!(v.capacity, 1 << 30);
        assert_eq!(v.reclaim, Reclaim::Delete);
        assert_eq!(
            pv["spec"]["local"]["path"],
            "/var/lib/shoal/local-path/pvc-u1_ns_data"
        );
        assert_eq!(v.dir_name(), "pvc-u1_ns_data");
    }

    #[test]
    fn only_released_delete_volumes_of_the_node_unmounted_are_reclaimed() {
        let vol = |name: &str, node: &str, uid: &str, reclaim| Volume {
            name: name.into(),
            node: node.into(),
            claim_namespace: "ns".into(),
            claim_name: "c".into(),
            claim_uid: uid.into(),
            capacity: 1,
            reclaim,
        };
        let mut volumes = vec![
            vol("bound", "n1", "live", Reclaim::Delete),
            vol("released", "n1", "gone", Reclaim::Delete),
            vol("kept", "n1", "gone2", Reclaim::Retain),
            vol("other-node", "n2", "gone3", Reclaim::Delete),
            vol("mounted", "n1", "gone4", Reclaim::Delete),
        ];
        volumes[4].claim_name = "in-use".into();
        let live: BTreeSet<&str> = ["live"].into();
        let mounted: BTreeSet<(String, String)> = [("ns".to_string(), "in-use".to_string())].into();
        let names: Vec<&str> = reclaimable("n1", &volumes, &live, &mounted)
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(names, ["released"]);
        assert_eq!(volume_phase(&volumes[0], &live), "Bound");
        assert_eq!(volume_phase(&volumes[1], &live), "Released");
    }

    #[test]
    fn classes_resolve_to_the_builtin_or_a_stored_one_of_our_provisioner() {
        let stored = vec![
            json!({"metadata": {"name": "keep"}, "provisioner": PROVISIONER, "reclaimPolicy": "Retain"}),
            json!({"metadata": {"name": "ebs"}, "provisioner": "ebs.csi.aws.com"}),
        ];
        assert_eq!(find_class(&stored, LOCAL_PATH), Some(Class::builtin()));
        assert_eq!(
            find_class(&stored, "keep").unwrap().reclaim,
            Reclaim::Retain
        );
        assert_eq!(find_class(&stored, "ebs"), None);
        assert_eq!(find_class(&stored, "nope"), None);
    }

    #[test]
    fn pod_claims_lists_claim_volumes() {
        let spec = json!({"volumes": [
            {"name": "a", "persistentVolumeClaim": {"claimName": "data"}},
            {"name": "b", "emptyDir": {}},
            {"name": "c", "persistentVolumeClaim": {"claimName": "logs", "readOnly": true}},
        ]});
        assert_eq!(
            pod_claims(&spec),
            vec![
                ("a".into(), "data".into(), false),
                ("c".into(), "logs".into(), true)
            ]
        );
    }
}
