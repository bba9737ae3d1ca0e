//! `ClusterDoc`: typed access to the automerge document. Values are CBOR blobs stored as
//! automerge byte scalars, so a write replaces an object as a whole (never a field-by-field
//! merge that nobody wrote) and concurrent writes resolve to automerge's deterministic winner.

use std::collections::BTreeMap;

use automerge::ActorId;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::keys::{self, object_key, ObjectPath};
use super::replica::{from_cbor, Replica};
use crate::model::ipam::{self, PodCidrClaim, PodCidrConfig};
use crate::model::workload::{self, Binding};
use crate::model::NodeRecord;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("automerge: {0}")]
    Automerge(#[from] automerge::AutomergeError),
    #[error("corrupt value at {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("value too large: {0} bytes")]
    TooLarge(usize),
    #[error("sync message: {0}")]
    SyncMessage(String),
    #[error("change: {0}")]
    Change(String),
    #[error("encoding: {0}")]
    Encode(String),
    #[error("disk: {0}")]
    Io(String),
    /// The data dir's file system is full: the write was not made (HTTP 507).
    #[error("no space left for the state: {0}")]
    NoSpace(String),
}

/// Cluster-wide facts written once by `shoal init` (or a restore).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMeta {
    pub cluster_id: String,
    pub generation: u64,
    pub created: chrono::DateTime<chrono::Utc>,
    pub ca_cert_pem: String,
    /// The CA's private key, sealed with the cluster secret (see `security::seal`).
    pub ca_key_sealed: Vec<u8>,
    /// The pod address space node subnets are carved from (`shoal init --cluster-cidr`).
    /// Documents from before the setting read as [`ipam::DEFAULT_CLUSTER_CIDR`].
    #[serde(default = "default_cluster_cidr")]
    pub cluster_cidr: String,
    /// Prefix length of each node's subnet (`shoal init --node-cidr-mask`).
    #[serde(default = "default_node_cidr_mask")]
    pub node_cidr_mask: u8,
    /// The Service address space ClusterIPs come from (`shoal init --service-cidr`).
    /// Documents from before the setting read as `model::network::DEFAULT_SERVICE_CIDR`.
    #[serde(default = "default_service_cidr")]
    pub service_cidr: String,
}

fn default_service_cidr() -> String {
    crate::model::network::DEFAULT_SERVICE_CIDR.to_string()
}

fn default_cluster_cidr() -> String {
    ipam::DEFAULT_CLUSTER_CIDR.to_string()
}

fn default_node_cidr_mask() -> u8 {
    ipam::DEFAULT_NODE_CIDR_MASK
}

impl ClusterMeta {
    /// The validated pod-CIDR settings.
    pub fn pod_cidr_config(&self) -> Result<PodCidrConfig, ipam::IpamError> {
        PodCidrConfig::new(&self.cluster_cidr, self.node_cidr_mask)
    }

    /// The Service address range.
    pub fn service_cidr(&self) -> Option<ipnet::Ipv4Net> {
        crate::model::network::parse_cidr(&self.service_cidr)
    }
}

/// The cluster document: cluster metadata, tokens, node records and users' objects.
pub struct ClusterDoc {
    r: Replica,
}

impl std::ops::Deref for ClusterDoc {
    type Target = Replica;
    fn deref(&self) -> &Replica {
        &self.r
    }
}

impl std::ops::DerefMut for ClusterDoc {
    fn deref_mut(&mut self) -> &mut Replica {
        &mut self.r
    }
}

impl ClusterDoc {
    /// An empty document (a joiner before its first sync).
    pub fn empty(actor: ActorId) -> Self {
        ClusterDoc {
            r: Replica::empty(actor),
        }
    }

    pub fn load(bytes: &[u8], actor: ActorId) -> Result<Self, StateError> {
        Ok(ClusterDoc {
            r: Replica::load(bytes, actor)?,
        })
    }

    /// See [`Replica::rebuild`].
    pub fn rebuild(
        &self,
        actor: ActorId,
        keep: impl Fn(&str) -> bool,
    ) -> Result<ClusterDoc, StateError> {
        Ok(ClusterDoc {
            r: self.r.rebuild(actor, keep)?,
        })
    }

    // ---- cluster metadata and tokens ----

    pub fn meta(&self) -> Result<Option<ClusterMeta>, StateError> {
        self.get_typed(keys::META)
    }

    pub fn put_meta(&mut self, meta: &ClusterMeta) -> Result<(), StateError> {
        self.put_typed(keys::META, meta)
    }

    pub fn add_token(&mut self, hash: &str, user: &str) -> Result<(), StateError> {
        self.put_typed(&format!("{}{hash}", keys::TOKEN_PREFIX), &user)
    }

    /// The user a token hash belongs to.
    pub fn token_user(&self, hash: &str) -> Option<String> {
        self.get_typed(&format!("{}{hash}", keys::TOKEN_PREFIX))
            .ok()
            .flatten()
    }

    // ---- the leader in office ----

    /// The scheduler leader in office, as last recorded (`membership::leader::in_office`).
    pub fn leader_record(&self) -> Option<String> {
        self.get_typed(keys::LEADER).ok().flatten()
    }

    /// Records `node` as the leader in office unless it already is (only real transitions).
    pub fn put_leader_record(&mut self, node: &str) -> Result<bool, StateError> {
        if self.leader_record().as_deref() == Some(node) {
            return Ok(false);
        }
        self.put_typed(keys::LEADER, &node)?;
        Ok(true)
    }

    // ---- nodes ----

    pub fn node(&self, name: &str) -> Result<Option<NodeRecord>, StateError> {
        self.get_typed(&format!("{}{name}", keys::NODE_PREFIX))
    }

    /// Writes the node record if it differs from what is stored (only real transitions).
    pub fn put_node(&mut self, record: &NodeRecord) -> Result<bool, StateError> {
        if self.node(&record.name)?.as_ref() == Some(record) {
            return Ok(false);
        }
        self.put_typed(&format!("{}{}", keys::NODE_PREFIX, record.name), record)?;
        Ok(true)
    }

    pub fn delete_node(&mut self, name: &str) -> Result<bool, StateError> {
        self.delete_key(&format!("{}{name}", keys::NODE_PREFIX))
    }

    /// All node records; corrupt entries are skipped (and logged), never fatal.
    pub fn nodes(&self) -> Vec<NodeRecord> {
        self.scan(keys::NODE_PREFIX)
            .into_iter()
            .filter_map(|(k, b)| match from_cbor(&k, &b) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(%e, "skipping corrupt node record");
                    None
                }
            })
            .collect()
    }

    // ---- scheduler bindings (`bind/<ns>/<pod>`, written by the epoch leader) ----

    pub fn binding(&self, namespace: &str, pod: &str) -> Result<Option<Binding>, StateError> {
        self.get_typed(&workload::keys::binding(namespace, pod))
    }

    /// Writes a binding; skipped (returns `false`) when the same one is already there.
    pub fn put_binding(
        &mut self,
        namespace: &str,
        pod: &str,
        binding: &Binding,
    ) -> Result<bool, StateError> {
        if self.binding(namespace, pod).ok().flatten().as_ref() == Some(binding) {
            return Ok(false);
        }
        self.put_typed(&workload::keys::binding(namespace, pod), binding)?;
        Ok(true)
    }

    pub fn delete_binding(&mut self, namespace: &str, pod: &str) -> Result<bool, StateError> {
        self.delete_key(&workload::keys::binding(namespace, pod))
    }

    /// Every binding: `((namespace, pod), binding)` in key order. Corrupt values are skipped.
    pub fn bindings(&self) -> Vec<((String, String), Binding)> {
        self.scan(workload::keys::BINDING_PREFIX)
            .into_iter()
            .filter_map(|(k, b)| {
                let (ns, pod) = workload::keys::split(&k, workload::keys::BINDING_PREFIX)?;
                match from_cbor(&k, &b) {
                    Ok(v) => Some(((ns.to_string(), pod.to_string()), v)),
                    Err(e) => {
                        tracing::warn!(%e, "skipping corrupt binding");
                        None
                    }
                }
            })
            .collect()
    }

    // ---- pod-CIDR claims (`podcidr/<index>`, written by the claiming node) ----

    /// The cluster's pod-CIDR settings (`None` before the metadata has arrived).
    pub fn pod_cidr_config(&self) -> Option<PodCidrConfig> {
        match self.meta() {
            Ok(Some(meta)) => match meta.pod_cidr_config() {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(%e, "the cluster metadata's pod-CIDR settings are invalid");
                    None
                }
            },
            _ => None,
        }
    }

    /// Every claim by subnet index. Corrupt values and keys are skipped.
    pub fn pod_cidr_claims(&self) -> BTreeMap<u32, PodCidrClaim> {
        self.scan(ipam::CLAIM_PREFIX)
            .into_iter()
            .filter_map(|(k, b)| {
                let index = ipam::parse_claim_key(&k)?;
                match from_cbor(&k, &b) {
                    Ok(v) => Some((index, v)),
                    Err(e) => {
                        tracing::warn!(%e, "skipping corrupt pod-CIDR claim");
                        None
                    }
                }
            })
            .collect()
    }

    /// What [`ipam::plan`] decides from: the claims and the existing nodes (name → uid).
    pub fn pod_cidr_inputs(&self) -> (BTreeMap<u32, PodCidrClaim>, BTreeMap<String, String>) {
        let nodes = self.nodes().into_iter().map(|r| (r.name, r.uid)).collect();
        (self.pod_cidr_claims(), nodes)
    }

    /// Node name → the pod CIDR it holds (see [`ipam::assignments`]).
    pub fn pod_cidrs(&self) -> BTreeMap<String, String> {
        let Some(config) = self.pod_cidr_config() else {
            return BTreeMap::new();
        };
        let (claims, nodes) = self.pod_cidr_inputs();
        ipam::assignments(&config, &claims, &nodes)
            .into_iter()
            .map(|(node, (_, cidr))| (node, cidr))
            .collect()
    }

    /// Applies node `me`'s plan; returns whether it changed the document.
    pub fn apply_pod_cidr_plan(
        &mut self,
        plan: &ipam::Plan,
        me: &str,
        uid: &str,
    ) -> Result<bool, StateError> {
        let mut changed = false;
        if let (true, Some(index)) = (plan.write, plan.index) {
            let claim = PodCidrClaim {
                node: me.to_string(),
                uid: uid.to_string(),
            };
            self.put_typed(&ipam::claim_key(index), &claim)?;
            changed = true;
        }
        for index in &plan.release {
            changed |= self.delete_key(&ipam::claim_key(*index))?;
        }
        Ok(changed)
    }

    // ---- users' objects ----

    pub fn get_object(
        &self,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>, StateError> {
        self.get_typed(&object_key(resource, namespace, name))
    }

    pub fn put_object(
        &mut self,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
        object: &Value,
    ) -> Result<(), StateError> {
        self.put_typed(&object_key(resource, namespace, name), object)
    }

    pub fn delete_object(
        &mut self,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<bool, StateError> {
        self.delete_key(&object_key(resource, namespace, name))
    }

    /// Objects of `resource`, optionally within one namespace, in key order.
    pub fn list_objects(
        &self,
        resource: &str,
        namespace: Option<&str>,
    ) -> Vec<(ObjectPath, Value)> {
        let prefix = match namespace {
            Some(ns) => format!("{}{resource}/{ns}/", keys::OBJ_PREFIX),
            None => format!("{}{resource}/", keys::OBJ_PREFIX),
        };
        self.scan(&prefix)
            .into_iter()
            .filter_map(|(k, b)| {
                let path = ObjectPath::parse(&k)?;
                match from_cbor(&k, &b) {
                    Ok(v) => Some((path, v)),
                    Err(e) => {
                        tracing::warn!(%e, "skipping corrupt object");
                        None
                    }
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::sync;
    use serde_json::json;

    fn actor(n: u8) -> ActorId {
        ActorId::from(vec![n; 16])
    }

    #[test]
    fn objects_round_trip_and_list_by_namespace() {
        let mut d = ClusterDoc::empty(actor(1));
        d.put_object("configmaps", Some("a"), "x", &json!({"data": {"k": "v"}}))
            .unwrap();
        d.put_object("configmaps", Some("b"), "y", &json!({"data": {}}))
            .unwrap();
        d.put_object("namespaces", None, "a", &json!({})).unwrap();
        assert_eq!(
            d.get_object("configmaps", Some("a"), "x").unwrap().unwrap()["data"]["k"],
            "v"
        );
        assert_eq!(d.list_objects("configmaps", None).len(), 2);
        assert_eq!(d.list_objects("configmaps", Some("a")).len(), 1);
        assert_eq!(d.list_objects("namespaces", None).len(), 1);
        assert!(d.delete_object("configmaps", Some("a"), "x").unwrap());
        assert!(!d.delete_object("configmaps", Some("a"), "x").unwrap());
        assert_eq!(d.list_objects("configmaps", None).len(), 1);
    }

    #[test]
    fn concurrent_whole_object_writes_pick_one_writer_everywhere() {
        let mut a = ClusterDoc::empty(actor(1));
        a.put_object(
            "configmaps",
            Some("d"),
            "x",
            &json!({"data": {"from": "a", "a": "1"}}),
        )
        .unwrap();
        let mut b = ClusterDoc::load(&a.save(), actor(2)).unwrap();
        a.put_object(
            "configmaps",
            Some("d"),
            "x",
            &json!({"data": {"from": "a2"}}),
        )
        .unwrap();
        b.put_object(
            "configmaps",
            Some("d"),
            "x",
            &json!({"data": {"from": "b", "b": "2"}}),
        )
        .unwrap();
        let from_a = a.changes_since(&[]);
        let from_b = b.changes_since(&[]);
        a.apply_pushed(&from_b).unwrap();
        b.apply_pushed(&from_a).unwrap();
        let va = a.get_object("configmaps", Some("d"), "x").unwrap().unwrap();
        let vb = b.get_object("configmaps", Some("d"), "x").unwrap().unwrap();
        assert_eq!(va, vb);
        // The winner is exactly one writer's object, never a mix.
        assert!(
            va == json!({"data": {"from": "a2"}}) || va == json!({"data": {"from": "b", "b": "2"}}),
            "{va}"
        );
        assert_eq!(a.conflicts("obj/"), vec!["obj/configmaps/d/x".to_string()]);
    }

    #[test]
    fn sync_converges_two_replicas() {
        let mut a = ClusterDoc::empty(actor(1));
        let mut b = ClusterDoc::empty(actor(2));
        a.put_object("configmaps", Some("d"), "a", &json!(1))
            .unwrap();
        b.put_object("configmaps", Some("d"), "b", &json!(2))
            .unwrap();
        let (mut sa, mut sb) = (sync::State::new(), sync::State::new());
        for _ in 0..10 {
            if let Some(m) = a.generate_sync(&mut sa) {
                b.receive_sync(&mut sb, &m).unwrap();
            }
            if let Some(m) = b.generate_sync(&mut sb) {
                a.receive_sync(&mut sa, &m).unwrap();
            }
        }
        assert_eq!(a.heads(), b.heads());
        assert_eq!(a.list_objects("configmaps", None).len(), 2);
    }

    #[test]
    fn garbage_is_rejected_without_changing_state() {
        let mut a = ClusterDoc::empty(actor(1));
        a.put_object("configmaps", Some("d"), "a", &json!(1))
            .unwrap();
        let heads = a.heads();
        assert!(a.apply_pushed(&[vec![1, 2, 3]]).is_err());
        assert!(a
            .receive_sync(&mut sync::State::new(), &[0x42, 0, 1])
            .is_err());
        assert!(ClusterDoc::load(b"not a document", actor(1)).is_err());
        assert_eq!(a.heads(), heads);
    }

    #[test]
    fn metadata_from_before_pod_cidrs_reads_as_the_defaults() {
        #[derive(Serialize)]
        struct OldMeta {
            cluster_id: String,
            generation: u64,
            created: chrono::DateTime<chrono::Utc>,
            ca_cert_pem: String,
            ca_key_sealed: Vec<u8>,
        }
        let mut a = ClusterDoc::empty(actor(1));
        let old = OldMeta {
            cluster_id: "c".into(),
            generation: 1,
            created: chrono::DateTime::UNIX_EPOCH,
            ca_cert_pem: String::new(),
            ca_key_sealed: vec![1],
        };
        a.put_typed(keys::META, &old).unwrap();
        let meta = a.meta().unwrap().unwrap();
        assert_eq!(meta.cluster_cidr, "10.244.0.0/16");
        assert_eq!(meta.node_cidr_mask, 24);
        assert_eq!(a.pod_cidr_config(), Some(PodCidrConfig::default_config()));
    }

    #[test]
    fn corrupt_pod_cidr_claims_are_skipped() {
        let mut a = ClusterDoc::empty(actor(1));
        a.put_bytes("podcidr/3", vec![0xff, 0x00]).unwrap();
        a.put_typed(
            "podcidr/x",
            &PodCidrClaim {
                node: "n".into(),
                uid: "u".into(),
            },
        )
        .unwrap();
        a.put_typed(
            "podcidr/4",
            &PodCidrClaim {
                node: "n".into(),
                uid: "u".into(),
            },
        )
        .unwrap();
        assert_eq!(
            a.pod_cidr_claims().keys().copied().collect::<Vec<_>>(),
            vec![4]
        );
    }

    #[test]
    fn corrupt_values_are_skipped_not_fatal() {
        let mut a = ClusterDoc::empty(actor(1));
        a.put_bytes("node/bad", vec![0xff, 0x00]).unwrap();
        assert!(a.nodes().is_empty());
        assert!(a.node("bad").is_err());
    }

    #[test]
    fn rebuild_is_byte_identical_across_replicas() {
        let mut a = ClusterDoc::empty(actor(1));
        for i in 0..50 {
            a.put_object("configmaps", Some("d"), &format!("c{i}"), &json!({"v": i}))
                .unwrap();
            a.put_object(
                "configmaps",
                Some("d"),
                &format!("c{i}"),
                &json!({"v": i + 1}),
            )
            .unwrap();
        }
        let b = ClusterDoc::load(&a.save(), actor(2)).unwrap();
        let mut ra = a.rebuild(actor(9), |_| true).unwrap();
        let mut rb = b.rebuild(actor(9), |_| true).unwrap();
        assert_eq!(ra.save(), rb.save());
        assert!(ra.save().len() < a.save().len());
        assert_eq!(
            ra.list_objects("configmaps", None),
            b.list_objects("configmaps", None)
        );
    }
}
