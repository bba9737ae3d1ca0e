//! PersistentVolumeClaims, PersistentVolumes and StorageClasses as the API serves them
//! (`docs/api.md`, "Storage"): claim defaulting and validation (what the local-path
//! provisioner cannot honour is refused, naming the field), StorageClass validation (shoal's
//! provisioner only), PersistentVolumes refused to users (the provisioner makes them), the
//! built-in `local-path` class, and the claims' and volumes' status computed on read from
//! each other. Pure.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::resources::ResourceInfo;
use super::status::Cause;
use crate::model::storage::{self, Volume, ACCESS_MODES, LOCAL_PATH, PROVISIONER};

pub fn is_claim(info: &ResourceInfo) -> bool {
    info.group.is_empty() && info.kind == "PersistentVolumeClaim"
}

pub fn is_volume(info: &ResourceInfo) -> bool {
    info.group.is_empty() && info.kind == "PersistentVolume"
}

pub fn is_class(info: &ResourceInfo) -> bool {
    info.group == "storage.k8s.io" && info.kind == "StorageClass"
}

fn cause(reason: &str, field: &str, message: String) -> Cause {
    Cause {
        reason: reason.into(),
        field: field.into(),
        message,
    }
}

fn unsupported(field: &str, value: &str, supported: &[&str]) -> Cause {
    let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
    cause(
        "FieldValueNotSupported",
        field,
        format!(
            "Unsupported value: {value:?}: supported values: {}",
            list.join(", ")
        ),
    )
}

fn forbidden(field: &str, detail: &str) -> Cause {
    cause("FieldValueForbidden", field, format!("Forbidden: {detail}"))
}

/// Kubernetes' defaults of a claim, with shoal's default class.
pub fn default_claim(claim: &mut Value) {
    let spec = &mut claim["spec"];
    if !spec.is_object() {
        return;
    }
    if spec["storageClassName"].is_null() {
        spec["storageClassName"] = json!(LOCAL_PATH);
    }
    if spec["volumeMode"].is_null() {
        spec["volumeMode"] = json!("Filesystem");
    }
}

/// `spec.volumeName` as served (the bound volume's name, computed on read): dropped from an
/// update that sends the served object back, so only a user's own pre-binding is refused.
pub fn strip_served_volume_name(claim: &mut Value) {
    let uid = claim["metadata"]["uid"].as_str().unwrap_or_default();
    if !uid.is_empty() && claim["spec"]["volumeName"] == storage::pv_name(uid) {
        if let Some(m) = claim["spec"].as_object_mut() {
            m.remove("volumeName");
        }
    }
}

/// A claim or volume with a finalizer, marked as being deleted (`deletionTimestamp` now,
/// no grace period): it stays until nothing holds it (`docs/workloads.md`, "Persistent
/// volumes").
pub fn mark_terminating(object: &mut Value, now: chrono::DateTime<chrono::Utc>) {
    let meta = &mut object["metadata"];
    meta["deletionTimestamp"] = json!(now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    meta["deletionGracePeriodSeconds"] = json!(0);
}

/// Semantic checks of a defaulted claim; `old`: the stored claim on update.
pub fn validate_claim(claim: &Value, old: Option<&Value>) -> Vec<Cause> {
    let spec = &claim["spec"];
    let mut causes = Vec::new();
    let modes: Vec<&str> = spec["accessModes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if modes.is_empty() {
        causes.push(cause(
            "FieldValueRequired",
            "spec.accessModes",
            "Required value: at least 1 access mode is required".into(),
        ));
    }
    for m in &modes {
        if !ACCESS_MODES.contains(m) {
            causes.push(unsupported("spec.accessModes", m, &ACCESS_MODES));
        }
    }
    if modes.contains(&"ReadWriteOncePod") && modes.len() > 1 {
        causes.push(forbidden(
            "spec.accessModes",
            "may not use ReadWriteOncePod with other access modes",
        ));
    }
    match &spec["resources"]["requests"]["storage"] {
        Value::Null => causes.push(cause(
            "FieldValueRequired",
            "spec.resources[storage]",
            "Required value".into(),
        )),
        v => match v.as_str().map(crate::model::quantity::parse_units) {
            Some(Ok(n)) if n > 0 => {}
            _ => causes.push(cause(
                "FieldValueInvalid",
                "spec.resources.requests[storage]",
                format!("Invalid value: {v}: must be a positive quantity"),
            )),
        },
    }
    if let Some(limits) = spec["resources"]["limits"].as_object() {
        if !limits.is_empty() {
            causes.push(forbidden(
                "spec.resources.limits",
                "not supported by shoal's local-path volumes (a directory has no size limit)",
            ));
        }
    }
    if let Some(mode) = spec["volumeMode"].as_str() {
        if mode != "Filesystem" {
            causes.push(unsupported("spec.volumeMode", mode, &["Filesystem"]));
        }
    }
    for (field, what) in [
        (
            "dataSource",
            "volumes cannot be populated from another volume or a snapshot",
        ),
        (
            "dataSourceRef",
            "volumes cannot be populated from another volume or a snapshot",
        ),
        (
            "selector",
            "claims bind to a volume the local-path provisioner makes, not to existing volumes",
        ),
        (
            "volumeName",
            "claims bind to a volume the local-path provisioner makes, not to existing volumes",
        ),
        (
            "volumeAttributesClassName",
            "volume attributes classes are not supported",
        ),
    ] {
        if !spec[field].is_null() {
            causes.push(forbidden(
                &format!("spec.{field}"),
                &format!("not supported by shoal: {what}"),
            ));
        }
    }
    if let Some(class) = spec["storageClassName"].as_str() {
        if class.is_empty() {
            causes.push(forbidden(
                "spec.storageClassName",
                "not supported by shoal: a claim without a class binds to an existing volume; use a StorageClass (default local-path)",
            ));
        }
    }
    if let Some(old) = old {
        if old["spec"] != claim["spec"] {
            causes.push(forbidden(
                "spec",
                "spec is immutable after creation (shoal does not resize or rebind volumes)",
            ));
        }
    }
    causes
}

/// Semantic checks of a StorageClass: shoal's provisioner, binding when the first pod is
/// placed, `Delete` or `Retain`; nothing the provisioner would ignore.
pub fn validate_class(class: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = class["metadata"]["name"].as_str().unwrap_or_default();
    if name == LOCAL_PATH {
        causes.push(forbidden(
            "metadata.name",
            "local-path is shoal's built-in StorageClass",
        ));
    }
    match class["provisioner"].as_str() {
        None => causes.push(cause(
            "FieldValueRequired",
            "provisioner",
            "Required value".into(),
        )),
        Some(p) if p != PROVISIONER => causes.push(unsupported("provisioner", p, &[PROVISIONER])),
        Some(_) => {}
    }
    if let Some(p) = class["reclaimPolicy"].as_str() {
        if storage::Reclaim::parse(p).is_none() {
            causes.push(unsupported("reclaimPolicy", p, &["Delete", "Retain"]));
        }
    }
    if let Some(m) = class["volumeBindingMode"].as_str() {
        if m != "WaitForFirstConsumer" {
            causes.push(unsupported(
                "volumeBindingMode",
                m,
                &["WaitForFirstConsumer"],
            ));
        }
    }
    if class["allowVolumeExpansion"].as_bool() == Some(true) {
        causes.push(forbidden(
            "allowVolumeExpansion",
            "not supported by shoal: local-path volumes are not resized",
        ));
    }
    for field in ["parameters", "mountOptions", "allowedTopologies"] {
        let set = match &class[field] {
            Value::Null => false,
            Value::Object(m) => !m.is_empty(),
            Value::Array(a) => !a.is_empty(),
            _ => true,
        };
        if set {
            causes.push(forbidden(
                field,
                "not supported by shoal's local-path provisioner",
            ));
        }
    }
    if let Some(old) = old {
        for field in [
            "provisioner",
            "reclaimPolicy",
            "volumeBindingMode",
            "parameters",
        ] {
            if old[field] != class[field] {
                causes.push(forbidden(field, "updates to this field are forbidden"));
            }
        }
    }
    causes
}

/// Defaults of a StorageClass (Kubernetes').
pub fn default_class(class: &mut Value) {
    if class["reclaimPolicy"].is_null() {
        class["reclaimPolicy"] = json!("Delete");
    }
    if class["volumeBindingMode"].is_null() {
        class["volumeBindingMode"] = json!("WaitForFirstConsumer");
    }
}

/// Users may not create or change PersistentVolumes: the local-path provisioner makes them
/// (static volumes are not supported). Deleting one is allowed (a Released volume of policy
/// `Retain`, typically).
pub fn validate_volume(volume: &Value, old: Option<&Value>) -> Vec<Cause> {
    let changed = old.is_none_or(|o| o["spec"] != volume["spec"]);
    if changed {
        vec![forbidden(
            "spec",
            "not supported by shoal: PersistentVolumes are made by the local-path provisioner for claims (create a PersistentVolumeClaim)",
        )]
    } else {
        Vec::new()
    }
}

/// Claims as served: `spec.volumeName` and `status` (phase `Bound` with the volume's
/// capacity and access modes, else `Pending`) from the volume made for each.
pub fn with_claim_status(claims: Vec<Value>, volumes: &[Value]) -> Vec<Value> {
    let by_name: BTreeMap<&str, &Value> = volumes
        .iter()
        .filter_map(|v| Some((v["metadata"]["name"].as_str()?, v)))
        .collect();
    claims
        .into_iter()
        .map(|mut c| {
            let uid = c["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let pv = storage::pv_name(&uid);
            let bound = by_name
                .get(pv.as_str())
                .filter(|v| v["spec"]["claimRef"]["uid"] == uid.as_str());
            match bound {
                Some(v) => {
                    c["spec"]["volumeName"] = json!(pv);
                    c["status"] = json!({
                        "phase": "Bound",
                        "accessModes": v["spec"]["accessModes"],
                        "capacity": v["spec"]["capacity"],
                    });
                }
                None => c["status"] = json!({"phase": "Pending"}),
            }
            c
        })
        .collect()
}

/// Volumes as served: `status.phase` `Bound` while the claim they were made for exists,
/// then `Released`.
pub fn with_volume_status(volumes: Vec<Value>, claims: &[Value]) -> Vec<Value> {
    let uids: BTreeSet<&str> = claims
        .iter()
        .filter_map(|c| c["metadata"]["uid"].as_str())
        .collect();
    volumes
        .into_iter()
        .map(|mut v| {
            let phase = match Volume::of(&v) {
                Some(vol) => storage::volume_phase(&vol, &uids),
                None => "Failed",
            };
            v["status"] = json!({"phase": phase});
            v
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(spec: Value) -> Value {
        let mut c =
            json!({"metadata": {"name": "c", "namespace": "default", "uid": "u1"}, "spec": spec});
        default_claim(&mut c);
        c
    }

    fn fields(causes: &[Cause]) -> Vec<&str> {
        causes.iter().map(|c| c.field.as_str()).collect()
    }

    #[test]
    fn claims_default_to_local_path_and_refuse_what_it_cannot_honour() {
        let ok = claim(
            json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}),
        );
        assert_eq!(ok["spec"]["storageClassName"], "local-path");
        assert!(validate_claim(&ok, None).is_empty());
        let bad = claim(json!({
            "accessModes": ["ReadWriteMany"],
            "volumeMode": "Block",
            "resources": {"requests": {"storage": "1Gi"}},
            "dataSource": {"kind": "PersistentVolumeClaim", "name": "x"},
            "selector": {"matchLabels": {"a": "b"}},
        }));
        assert_eq!(
            fields(&validate_claim(&bad, None)),
            [
                "spec.accessModes",
                "spec.volumeMode",
                "spec.dataSource",
                "spec.selector"
            ]
        );
        let no_size = claim(json!({"accessModes": ["ReadWriteOnce"]}));
        assert_eq!(
            fields(&validate_claim(&no_size, None)),
            ["spec.resources[storage]"]
        );
        let mut bigger = ok.clone();
        bigger["spec"]["resources"]["requests"]["storage"] = json!("2Gi");
        assert_eq!(fields(&validate_claim(&bigger, Some(&ok))), ["spec"]);
    }

    #[test]
    fn classes_must_be_ours_and_bind_on_first_consumer() {
        let mut ok = json!({"metadata": {"name": "keep"}, "provisioner": PROVISIONER, "reclaimPolicy": "Retain"});
        default_class(&mut ok);
        assert!(validate_class(&ok, None).is_empty());
        let bad = json!({"metadata": {"name": "local-path"}, "provisioner": "ebs.csi.aws.com",
            "volumeBindingMode": "Immediate", "parameters": {"type": "gp3"}});
        assert_eq!(
            fields(&validate_class(&bad, None)),
            [
                "metadata.name",
                "provisioner",
                "volumeBindingMode",
                "parameters"
            ]
        );
    }

    #[test]
    fn status_is_bound_while_the_volume_and_its_claim_both_exist() {
        let c = claim(
            json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}),
        );
        let parsed = storage::Claim::of(&c).unwrap();
        let pv = storage::new_volume(
            &parsed,
            &storage::Class::builtin(),
            "1Gi",
            &json!(["ReadWriteOnce"]),
            "n1",
            "/r",
            chrono::DateTime::UNIX_EPOCH,
        );
        let served = with_claim_status(vec![c.clone()], std::slice::from_ref(&pv));
        assert_eq!(served[0]["status"]["phase"], "Bound");
        assert_eq!(served[0]["spec"]["volumeName"], "pvc-u1");
        let mut back = served[0].clone();
        strip_served_volume_name(&mut back);
        assert!(validate_claim(&back, Some(&c)).is_empty());
        assert_eq!(
            with_claim_status(vec![c.clone()], &[])[0]["status"]["phase"],
            "Pending"
        );
        let v = with_volume_status(vec![pv.clone()], &[c]);
        assert_eq!(v[0]["status"]["phase"], "Bound");
        assert_eq!(
            with_volume_status(vec![pv], &[])[0]["status"]["phase"],
            "Released"
        );
    }
}
