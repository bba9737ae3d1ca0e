//! The pods this node should run, as an index kept across kubelet rounds: each round hands it
//! the raw (CBOR) records of every pod object and every binding, and only records whose bytes
//! changed since the last round are decoded again; a pod object is parsed into a typed `Pod`
//! only once it is this node's. A burst of 300 pods decoded every pod of the cluster on every
//! node at every round (13 % of the machine in a profile of the burst); unchanged records now
//! cost a byte comparison. Pure: no I/O, no clock.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

use super::plan::DesiredPod;
use crate::model::workload::{keys, Binding};
use crate::state::ObjectPath;

/// A pod object as last seen, with what decides whose it is.
struct PodEntry {
    bytes: Vec<u8>,
    namespace: String,
    name: String,
    /// `metadata.uid`, empty when missing.
    uid: String,
    /// `spec.nodeName`.
    node_name: Option<String>,
    /// The typed pod, parsed the first time it is this node's (`Some(None)`: it does not parse).
    parsed: Option<Option<Pod>>,
}

/// A binding as last seen (`None`: it does not decode).
struct BindingEntry {
    bytes: Vec<u8>,
    binding: Option<Binding>,
}

/// Pod objects and bindings by document key, with their decoded forms.
#[derive(Default)]
pub struct DesiredIndex {
    pods: BTreeMap<String, PodEntry>,
    bindings: BTreeMap<String, BindingEntry>,
    /// Records decoded (pods and bindings), for tests and the round's debug log.
    decoded: u64,
}

impl DesiredIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many records were decoded since the index was made.
    pub fn decoded(&self) -> u64 {
        self.decoded
    }

    /// Takes this round's records (`pods`: `obj/pods/...` keys; `bindings`: `bind/...` keys,
    /// each with its bytes) and returns the pods `node` should run: those whose winning binding
    /// names `node` for the pod's current uid, and those whose `spec.nodeName` is `node`. Keyed
    /// by binding id (uid for `nodeName` pods); keys that are not a safe path component and
    /// pods that do not parse are left out.
    pub fn refresh(
        &mut self,
        node: &str,
        pods: Vec<(String, Vec<u8>)>,
        bindings: Vec<(String, Vec<u8>)>,
    ) -> BTreeMap<String, DesiredPod> {
        let mut old = std::mem::take(&mut self.bindings);
        for (key, bytes) in bindings {
            let entry = match old.remove(&key) {
                Some(e) if e.bytes == bytes => e,
                _ => {
                    self.decoded += 1;
                    let binding = crate::state::from_cbor(&key, &bytes).ok();
                    BindingEntry { bytes, binding }
                }
            };
            self.bindings.insert(key, entry);
        }
        let mut old = std::mem::take(&mut self.pods);
        for (key, bytes) in pods {
            let entry = match old.remove(&key) {
                Some(e) if e.bytes == bytes => Some(e),
                _ => {
                    self.decoded += 1;
                    PodEntry::decode(&key, bytes)
                }
            };
            if let Some(e) = entry {
                self.pods.insert(key, e);
            }
        }
        let mut out = BTreeMap::new();
        for entry in self.pods.values_mut() {
            let key = match &entry.node_name {
                Some(n) if n == node => Some(entry.uid.clone()),
                Some(_) => None,
                None => self
                    .bindings
                    .get(&keys::binding(&entry.namespace, &entry.name))
                    .and_then(|b| b.binding.as_ref())
                    .filter(|b| b.node == node && b.pod_uid == entry.uid)
                    .map(|b| b.id.clone()),
            };
            let Some(key) = key.filter(|k| crate::runtime::check_component("pod key", k).is_ok())
            else {
                continue;
            };
            if entry.parsed.is_none() {
                self.decoded += 1;
                let value = crate::state::from_cbor::<Value>("pod", &entry.bytes).ok();
                entry.parsed = Some(value.and_then(parse_pod));
            }
            if let Some(Some(pod)) = &entry.parsed {
                out.insert(
                    key.clone(),
                    DesiredPod {
                        key,
                        pod: pod.clone(),
                    },
                );
            }
        }
        out
    }
}

impl PodEntry {
    /// What decides whose the pod is; `None` for a key that is no object path or bytes that
    /// are no CBOR (a corrupt object is skipped, as the document's listing does).
    fn decode(key: &str, bytes: Vec<u8>) -> Option<PodEntry> {
        let path = ObjectPath::parse(key)?;
        let value: Value = match crate::state::from_cbor(key, &bytes) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(%e, "skipping corrupt object");
                return None;
            }
        };
        let text = |p: &str| {
            value
                .pointer(p)
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        Some(PodEntry {
            namespace: path.namespace.unwrap_or_else(|| "default".into()),
            name: path.name,
            uid: text("/metadata/uid").unwrap_or_default(),
            node_name: text("/spec/nodeName"),
            parsed: None,
            bytes,
        })
    }
}

/// A pod object as k8s-openapi types. If the strict parse fails, empty lists are dropped
/// first (a typeless store can turn an empty map `{}` into `[]`).
pub fn parse_pod(value: Value) -> Option<Pod> {
    fn strip_empty(v: &mut Value) {
        match v {
            Value::Object(m) => {
                if m.get("emptyDir")
                    .is_some_and(|e| e.as_array().is_some_and(Vec::is_empty))
                {
                    m.insert("emptyDir".into(), serde_json::json!({}));
                }
                m.retain(|k, x| k == "containers" || !matches!(x, Value::Array(a) if a.is_empty()));
                m.values_mut().for_each(strip_empty);
            }
            Value::Array(a) => a.iter_mut().for_each(strip_empty),
            _ => {}
        }
    }
    match <Pod as serde::Deserialize>::deserialize(&value) {
        Ok(p) => Some(p),
        Err(_) => {
            let mut v = value;
            strip_empty(&mut v);
            serde_json::from_value::<Pod>(v).ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod_rec(ns: &str, name: &str, uid: &str, node_name: Option<&str>) -> (String, Vec<u8>) {
        let mut v = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "uid": uid},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}
        });
        if let Some(n) = node_name {
            v["spec"]["nodeName"] = json!(n);
        }
        (
            crate::state::object_key("pods", Some(ns), name),
            crate::state::to_cbor(&v).unwrap(),
        )
    }

    fn bind_rec(ns: &str, pod: &str, node: &str, id: &str, uid: &str) -> (String, Vec<u8>) {
        let b = Binding {
            node: node.into(),
            id: id.into(),
            pod_uid: uid.into(),
            epoch: 1,
            view: 2,
            leader: "n1".into(),
            at: chrono::DateTime::UNIX_EPOCH,
        };
        (keys::binding(ns, pod), crate::state::to_cbor(&b).unwrap())
    }

    #[test]
    fn this_nodes_pods_by_binding_or_node_name() {
        let mut idx = DesiredIndex::new();
        let pods = vec![
            pod_rec("default", "a", "ua", None),
            pod_rec("default", "b", "ub", None),
            pod_rec("default", "c", "uc", Some("n1")),
            pod_rec("default", "d", "ud", Some("n2")),
            pod_rec("default", "stale", "new-uid", None),
            pod_rec("default", "unbound", "uu", None),
        ];
        let binds = vec![
            bind_rec("default", "a", "n1", "bind-a", "ua"),
            bind_rec("default", "b", "n2", "bind-b", "ub"),
            bind_rec("default", "stale", "n1", "bind-s", "old-uid"),
        ];
        let got = idx.refresh("n1", pods, binds);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            ["bind-a", "uc"],
            "bound here for the current uid, or nodeName here"
        );
        assert_eq!(got["bind-a"].name(), "a");
        assert_eq!(got["uc"].uid(), "uc");
    }

    #[test]
    fn unchanged_records_are_not_decoded_again() {
        let mut idx = DesiredIndex::new();
        let pods: Vec<_> = (0..50)
            .map(|i| pod_rec("default", &format!("p{i}"), &format!("u{i}"), None))
            .collect();
        let binds: Vec<_> = (0..50)
            .map(|i| {
                let node = if i % 5 == 0 { "n1" } else { "n2" };
                bind_rec(
                    "default",
                    &format!("p{i}"),
                    node,
                    &format!("b{i}"),
                    &format!("u{i}"),
                )
            })
            .collect();
        let first = idx.refresh("n1", pods.clone(), binds.clone());
        assert_eq!(first.len(), 10);
        // 50 pods + 50 bindings + 10 pods of this node parsed.
        assert_eq!(idx.decoded(), 110);
        let again = idx.refresh("n1", pods.clone(), binds.clone());
        assert_eq!(
            again.keys().collect::<Vec<_>>(),
            first.keys().collect::<Vec<_>>()
        );
        assert_eq!(idx.decoded(), 110, "nothing changed, nothing decoded");

        // One binding moves a pod here: one binding decoded, one pod parsed.
        let mut binds2 = binds.clone();
        binds2[1] = bind_rec("default", "p1", "n1", "b1-again", "u1");
        let moved = idx.refresh("n1", pods.clone(), binds2.clone());
        assert_eq!(moved.len(), 11);
        assert!(moved.contains_key("b1-again"));
        assert_eq!(idx.decoded(), 112);

        // A pod replaced under the same name (new uid): its old binding no longer matches.
        let mut pods3 = pods.clone();
        pods3[0] = pod_rec("default", "p0", "u0-new", None);
        let replaced = idx.refresh("n1", pods3, binds2.clone());
        assert!(!replaced.contains_key("b0"));
        assert_eq!(replaced.len(), 10);
        assert_eq!(
            idx.decoded(),
            113,
            "the new object decoded, not parsed (not ours)"
        );

        // Deleted records leave the index.
        let gone = idx.refresh("n1", pods[..1].to_vec(), binds2[..1].to_vec());
        assert_eq!(gone.keys().collect::<Vec<_>>(), ["b0"]);
        assert_eq!(idx.pods.len(), 1);
        assert_eq!(idx.bindings.len(), 1);
    }

    #[test]
    fn bad_records_are_skipped_without_panicking() {
        let mut idx = DesiredIndex::new();
        let mut bad_pod = pod_rec("default", "x", "ux", Some("n1"));
        bad_pod.1 = vec![0xff, 0x00, 0x13];
        let mut bad_bind = bind_rec("default", "y", "n1", "by", "uy");
        bad_bind.1 = b"not cbor".to_vec();
        let not_a_pod = (
            crate::state::object_key("pods", Some("default"), "z"),
            crate::state::to_cbor(
                &json!({"spec": {"nodeName": "n1", "containers": 7}, "metadata": {"uid": "uz"}}),
            )
            .unwrap(),
        );
        let unsafe_key = pod_rec("default", "w", "../etc", Some("n1"));
        let got = idx.refresh(
            "n1",
            vec![
                bad_pod,
                pod_rec("default", "y", "uy", None),
                not_a_pod,
                unsafe_key,
                ("obj/pods".into(), vec![]),
            ],
            vec![bad_bind],
        );
        assert!(got.is_empty(), "{:?}", got.keys().collect::<Vec<_>>());
    }

    #[test]
    fn empty_lists_from_a_typeless_store_still_parse() {
        let v = json!({
            "metadata": {"name": "p", "uid": "u"},
            "spec": {"containers": [{"name": "c", "image": "i", "env": []}],
                     "volumes": [{"name": "v", "emptyDir": []}]}
        });
        let pod = parse_pod(v).expect("parses once empty lists are dropped");
        let vols = pod.spec.unwrap().volumes.unwrap();
        assert!(vols[0].empty_dir.is_some());
    }
}
