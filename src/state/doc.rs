//! `ClusterDoc`: typed access to the automerge document. Values are CBOR blobs stored as
//! automerge byte scalars, so a write replaces an object as a whole (never a field-by-field
//! merge that nobody wrote) and concurrent writes resolve to automerge's deterministic winner.

use std::collections::{BTreeMap, BTreeSet};

use automerge::ActorId;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::history::{self, RebaseRecord};
use super::keys::{self, object_key, ObjectPath};
use super::replica::{from_cbor, KeyWrites, Replica};
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
    /// The document version (`history::version`): 0 until the first re-base, then its
    /// generation and base tag. Set when the document is made or loaded; merges never change
    /// it (only documents of one version are merged).
    version: u64,
}

/// What a base is built from: the document's clock, its record, its live entries.
pub type BaseInputs = (
    history::Clock,
    Option<RebaseRecord>,
    BTreeMap<String, Vec<u8>>,
);

/// The commit message of the change in which a replica that moved onto a base re-applied its
/// tail (`ClusterDoc::move_onto` tells such writes from writes made in the new generation).
pub const TAIL_MESSAGE: &str = "shoal: re-applied tail";

/// The keys the re-applied tails among `since` (changes whose message starts with
/// [`TAIL_MESSAGE`], then one line `<change hash> <key>` per key) claim: per key, the index of
/// the last such change and the old-generation change it names as the origin of the key's
/// state.
fn tail_claims(since: &KeyWrites) -> BTreeMap<&str, (usize, automerge::ChangeHash)> {
    let mut claims = BTreeMap::new();
    for (i, (_, message)) in since.changes.iter().enumerate() {
        for (hash, key) in claim_lines(message.as_deref()) {
            claims.insert(key, (i, hash));
        }
    }
    claims
}

/// The `(origin change, key)` lines of a change's message if it is a re-applied tail
/// ([`TAIL_MESSAGE`]); nothing for any other change.
fn claim_lines(message: Option<&str>) -> impl Iterator<Item = (automerge::ChangeHash, &str)> {
    let mut lines = message.unwrap_or_default().lines();
    let tail = lines.next() == Some(TAIL_MESSAGE);
    lines
        .filter(move |_| tail)
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(hash, key)| Some((hash.parse().ok()?, key)))
}

/// The outcome of moving a replica onto a base (`ClusterDoc::move_onto`).
pub struct Moved {
    /// The base with the replica's tail re-applied.
    pub doc: ClusterDoc,
    /// The changes made on top of the base (the tail's whole-value writes), for the push path.
    pub changes: Vec<Vec<u8>>,
    /// The keys the tail re-wrote or re-deleted.
    pub rewritten: Vec<String>,
    /// The tail could not be told (the replica was too many generations behind): the changes
    /// it held beyond its last base were dropped.
    pub tail_unknown: bool,
}

/// The actor of the base change of document generation `generation` of cluster `cluster_id`
/// (it writes nothing else).
pub fn base_actor(cluster_id: &str, generation: u64) -> ActorId {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"shoal/base/");
    h.update(cluster_id.as_bytes());
    h.update(generation.to_be_bytes());
    ActorId::from(&h.finalize()[..16])
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
            version: 0,
        }
    }

    pub fn load(bytes: &[u8], actor: ActorId) -> Result<Self, StateError> {
        let r = Replica::load(bytes, actor)?;
        let version = match r.get_typed::<RebaseRecord>(history::RECORD_KEY) {
            Ok(Some(rec)) => history::version(rec.generation, rec.tag),
            _ => 0,
        };
        Ok(ClusterDoc { r, version })
    }

    /// The document version (see `state::history`).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The record of the base this document started from (`None`: never re-based).
    pub fn rebase_record(&self) -> Option<RebaseRecord> {
        self.get_typed(history::RECORD_KEY).ok().flatten()
    }

    /// The generation and tag of the base this document started from (`(0, 0)`: never
    /// re-based).
    pub fn lineage(&self) -> (u64, u32) {
        self.rebase_record()
            .map_or((0, 0), |r| (r.generation, r.tag))
    }

    /// Whether this document's base is one `record`'s lineage did not take
    /// (`history::off_lineage`): moving onto it needs the document kept from before our base
    /// ([`ClusterDoc::move_onto_from`]).
    pub fn is_off_lineage_of(&self, record: &RebaseRecord) -> bool {
        let (generation, tag) = self.lineage();
        history::off_lineage(generation, tag, record)
    }

    /// What a base is built from, taken under the document lock: this document's clock, its
    /// record, and its live entries (without the record).
    pub fn base_inputs(&mut self) -> BaseInputs {
        let clock = self.clock();
        let record = self.rebase_record();
        let entries = self
            .scan("")
            .into_iter()
            .filter(|(k, _)| k != history::RECORD_KEY)
            .collect();
        (clock, record, entries)
    }

    /// The base of the next generation made by `by` from [`ClusterDoc::base_inputs`]: the
    /// same state, no history, one change by the generation's base actor carrying the record;
    /// local writes on it use `actor`.
    pub fn build_base(
        cluster_id: &str,
        by: &str,
        clock: history::Clock,
        previous: Option<&RebaseRecord>,
        mut entries: BTreeMap<String, Vec<u8>>,
        actor: ActorId,
    ) -> Result<ClusterDoc, StateError> {
        let generation = previous.map_or(0, |p| p.generation) + 1;
        if generation > history::MAX_GENERATION {
            return Err(StateError::Change(format!(
                "generation {generation} out of range"
            )));
        }
        let mut record = history::next_record(previous, generation, by, clock);
        let tag = history::content_tag(
            &record,
            entries.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
        );
        record.seal(tag);
        entries.insert(
            history::RECORD_KEY.to_string(),
            super::replica::to_cbor(&record)?,
        );
        let mut r = Replica::from_entries(base_actor(cluster_id, generation), &entries)?;
        r.set_actor(actor);
        Ok(ClusterDoc {
            r,
            version: history::version(generation, record.tag),
        })
    }

    /// Moves this replica onto `base` (a newer version, checked by the caller): the base with
    /// this replica's tail (its changes the base does not hold, `history::tail_rule`) re-applied
    /// as whole-value writes of the keys those changes touched: the value this replica holds,
    /// or a delete where it holds none. Keys no tail change touched keep the base's value, so
    /// nothing deleted before the base comes back. Where the new generation already wrote a
    /// key since its base:
    /// - a write made in the new generation (by a replica that had moved) is newer than our
    ///   view of the key, or concurrent with it: it stays;
    /// - a tail another replica re-applied before us (a change marked [`TAIL_MESSAGE`], which
    ///   names for each key the old-generation change that left the state it re-applied) is
    ///   its view of the same old-generation writes: ours replaces it only if that change
    ///   causally precedes the one that left our state (we saw that write and a later one);
    ///   otherwise they are concurrent and it stays.
    ///
    /// `base`'s local writes use its actor. A replica at a concurrent base of `base`'s own
    /// generation (which lost) should use [`ClusterDoc::move_onto_from`] with the document it
    /// had before that base: this one re-applies only its writes since its base.
    pub fn move_onto(&mut self, cluster_id: &str, base: ClusterDoc) -> Result<Moved, StateError> {
        self.move_onto_from(cluster_id, base, None)
    }

    /// [`ClusterDoc::move_onto`], for a replica that may be at a concurrent base of `base`'s
    /// generation that lost (`history::Tail::AllButBase`). That losing base folded into one
    /// change the writes of the generation before that it held; those the winning base lacks
    /// (such as this replica's own writes not yet pushed when the bases were made) would be
    /// lost with it. `previous` is the document this replica had before it moved onto its
    /// base (kept on disk until the next generation: `DocStore::keep_previous`); with it the
    /// move is made in two steps:
    /// 1. `previous` moves onto `base` as any replica of that older generation does (its tail
    ///    beyond the winner's clock), which brings back every folded write the winner lacks;
    /// 2. this document's writes since its own base are re-applied on top. They were made
    ///    after the losing base, which held everything in `previous`: a key another replica
    ///    re-applied from an old-generation change that `previous` holds, or that a tail
    ///    re-applied on our base named as its origin, is older than ours and is replaced.
    ///
    /// Without `previous` (or when not at a concurrent base) this is [`ClusterDoc::move_onto`].
    pub fn move_onto_from(
        &mut self,
        cluster_id: &str,
        base: ClusterDoc,
        previous: Option<&mut ClusterDoc>,
    ) -> Result<Moved, StateError> {
        let record = base
            .rebase_record()
            .ok_or_else(|| StateError::Change("the base carries no re-base record".into()))?;
        let (mine, tag) = self.lineage();
        let empty = self.meta().ok().flatten().is_none();
        let rule = history::tail_rule(
            mine,
            &base_actor(cluster_id, mine).to_hex_string(),
            tag,
            empty,
            &record,
        );
        let tail = self.key_writes(|actor, seq, _| history::in_tail(&rule, actor, seq));
        let unknown = rule == history::Tail::Unknown;
        let previous = previous
            .filter(|p| matches!(rule, history::Tail::AllButBase(_)) && p.lineage().0 < mine);
        let Some(previous) = previous else {
            return self.reapply(
                cluster_id,
                base,
                record.generation,
                &tail,
                unknown,
                &|_, _| false,
            );
        };
        let first = previous.move_onto_from(cluster_id, base, None)?;
        let old: BTreeSet<automerge::ChangeHash> = previous.change_hashes();
        let named: BTreeSet<(&str, automerge::ChangeHash)> = tail
            .changes
            .iter()
            .flat_map(|(_, message)| claim_lines(message.as_deref()))
            .map(|(hash, key)| (key, hash))
            .collect();
        let older =
            |key: &str, t: &automerge::ChangeHash| old.contains(t) || named.contains(&(key, *t));
        let second = self.reapply(
            cluster_id,
            first.doc,
            record.generation,
            &tail,
            unknown,
            &older,
        )?;
        let mut changes = first.changes;
        changes.extend(second.changes);
        let mut rewritten = first.rewritten;
        for key in second.rewritten {
            if !rewritten.contains(&key) {
                rewritten.push(key);
            }
        }
        Ok(Moved {
            doc: second.doc,
            changes,
            rewritten,
            tail_unknown: first.tail_unknown || second.tail_unknown,
        })
    }

    /// Re-applies `tail` (this replica's changes beyond `base`, `unknown` if they could not be
    /// told) onto `base`, of generation `generation` (see [`ClusterDoc::move_onto`]).
    /// `older(key, change)`: whether a tail another replica re-applied on `key`, whose state
    /// came from `change` (of another generation than ours), is known to be older than ours.
    fn reapply(
        &mut self,
        cluster_id: &str,
        mut base: ClusterDoc,
        generation: u64,
        tail: &KeyWrites,
        unknown: bool,
        older: &dyn Fn(&str, &automerge::ChangeHash) -> bool,
    ) -> Result<Moved, StateError> {
        let new_base = base_actor(cluster_id, generation).to_hex_string();
        let since = base.key_writes(|actor, _, _| actor != new_base);
        let claims = tail_claims(&since);
        let before = base.heads();
        let mut rewritten = Vec::new();
        let mut origins = Vec::new();
        base.set_batching(true);
        for key in tail.keys.keys() {
            if key == history::RECORD_KEY {
                continue;
            }
            let ours = self.key_state(key);
            let our_origin = tail.origin(key, ours);
            // The last change of the new generation that wrote this key or claimed it: a tail
            // another replica re-applied first (its view of the same old-generation writes,
            // with the change that left it), or a write made in the new generation.
            let last_write = since.keys.get(key).and_then(|w| w.last()).map(|(i, _)| *i);
            let last_claim = claims.get(key.as_str()).copied();
            let theirs_known = last_write.is_some() || last_claim.is_some();
            if ours == base.key_state(key) {
                // Nothing to write; the first to move claims the key with the change that left
                // its state, so a replica whose view is older does not revert it.
                if !theirs_known {
                    if let Some(o) = our_origin {
                        origins.push(format!("{o} {key}"));
                    }
                }
                continue;
            }
            if theirs_known {
                // Ours replaces theirs only if theirs is another replica's tail whose change
                // precedes ours (we saw that write and a later one); a write made in the new
                // generation, or a concurrent view, stays.
                let last = last_write.max(last_claim.map(|(i, _)| i));
                let their_origin = match last_claim {
                    Some((i, origin)) if Some(i) == last => Some(origin),
                    _ => None,
                };
                let newer = match (their_origin, our_origin) {
                    (Some(t), Some(o)) => older(key, &t) || self.precedes(&t, &o, &tail.hashes),
                    _ => false,
                };
                if !newer {
                    continue;
                }
            }
            match self.get_bytes(key) {
                Some(bytes) => base.put_bytes(key, bytes)?,
                None => {
                    base.delete_key(key)?;
                }
            }
            if let Some(o) = our_origin {
                origins.push(format!("{o} {key}"));
            }
            rewritten.push(key.clone());
        }
        let claimed = !origins.is_empty();
        let mut message = TAIL_MESSAGE.to_string();
        for line in origins {
            message.push('\n');
            message.push_str(&line);
        }
        base.end_batch_as(&message, claimed);
        let changes = base.changes_since(&before);
        Ok(Moved {
            doc: base,
            changes,
            rewritten,
            tail_unknown: unknown,
        })
    }

    /// See [`Replica::rebuild`].
    pub fn rebuild(
        &self,
        actor: ActorId,
        keep: impl Fn(&str) -> bool,
    ) -> Result<ClusterDoc, StateError> {
        let r = self.r.rebuild(actor, keep)?;
        let version = match r.get_typed::<RebaseRecord>(history::RECORD_KEY) {
            Ok(Some(rec)) => history::version(rec.generation, rec.tag),
            _ => 0,
        };
        Ok(ClusterDoc { r, version })
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

    /// The leader in office recorded in this document's base change (`None`: never re-based,
    /// or none recorded then): who may have made the base. The current record may name a later
    /// leader (leadership moved since the base, or a tail re-applied its record).
    pub fn leader_at_base(&mut self, cluster_id: &str) -> Option<String> {
        let generation = self.rebase_record()?.generation;
        let actor = base_actor(cluster_id, generation).to_hex_string();
        let bytes = self.get_bytes_at_first_change_of(&actor, keys::LEADER)?;
        from_cbor(keys::LEADER, &bytes).ok()
    }

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
        self.scan_decoded::<NodeRecord>(keys::NODE_PREFIX)
            .into_iter()
            .map(|(_, r)| (*r).clone())
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
        self.scan_decoded::<Binding>(workload::keys::BINDING_PREFIX)
            .into_iter()
            .filter_map(|(k, v)| {
                let (ns, pod) = workload::keys::split(&k, workload::keys::BINDING_PREFIX)?;
                Some(((ns.to_string(), pod.to_string()), (*v).clone()))
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
        self.scan_decoded::<PodCidrClaim>(ipam::CLAIM_PREFIX)
            .into_iter()
            .filter_map(|(k, v)| Some((ipam::parse_claim_key(&k)?, (*v).clone())))
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

    /// The raw (CBOR) records of every object of `resource`, by key, in key order: for
    /// readers that keep what they decoded and decode only records whose bytes changed.
    pub fn raw_objects(&self, resource: &str) -> Vec<(String, Vec<u8>)> {
        self.scan(&format!("{}{resource}/", keys::OBJ_PREFIX))
    }

    /// The raw (CBOR) records of every binding, by key (`bind/<ns>/<pod>`), in key order.
    pub fn raw_bindings(&self) -> Vec<(String, Vec<u8>)> {
        self.scan(workload::keys::BINDING_PREFIX)
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
        self.scan_decoded::<Value>(&prefix)
            .into_iter()
            .filter_map(|(k, v)| Some((ObjectPath::parse(&k)?, (*v).clone())))
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

    fn meta(d: &mut ClusterDoc) {
        d.put_meta(&ClusterMeta {
            cluster_id: "c".into(),
            generation: 1,
            created: chrono::DateTime::UNIX_EPOCH,
            ca_cert_pem: String::new(),
            ca_key_sealed: vec![],
            cluster_cidr: "10.244.0.0/16".into(),
            node_cidr_mask: 24,
            service_cidr: "10.96.0.0/12".into(),
        })
        .unwrap();
        d.put_leader_record("n1").unwrap();
    }

    /// The leader's re-base as `rebase_cluster` does it, without the lock.
    fn rebase(d: &mut ClusterDoc, by: &str) -> Moved {
        let (clock, record, entries) = d.base_inputs();
        let base =
            ClusterDoc::build_base("c", by, clock, record.as_ref(), entries, actor(50)).unwrap();
        d.move_onto("c", base).unwrap()
    }

    fn state(d: &ClusterDoc) -> Vec<(String, Vec<u8>)> {
        d.scan("")
            .into_iter()
            .filter(|(k, _)| k != history::RECORD_KEY)
            .collect()
    }

    fn merge(into: &mut ClusterDoc, from: &mut ClusterDoc) {
        assert_eq!(into.version(), from.version(), "only one version merges");
        let changes = from.changes_since(&[]);
        into.apply_pushed(&changes).unwrap();
    }

    /// Puts (`Some`) or deletes (`None`) ConfigMap `k<key>` for each op.
    fn apply_ops(d: &mut ClusterDoc, ops: &[(u8, Option<u8>)]) {
        for (k, v) in ops {
            let name = format!("k{k}");
            match v {
                Some(v) => d
                    .put_object("configmaps", Some("d"), &name, &json!(v))
                    .unwrap(),
                None => {
                    d.delete_object("configmaps", Some("d"), &name).unwrap();
                }
            }
        }
    }

    /// Two replicas of one version exchange every change (a full sync).
    fn sync(a: &mut ClusterDoc, b: &mut ClusterDoc) {
        merge(a, b);
        merge(b, a);
    }

    /// The orders three replicas can move in.
    const ORDERS: [[usize; 3]; 6] = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];

    #[test]
    fn a_rebase_keeps_the_state_drops_the_history_and_writes_made_meanwhile() {
        let mut a = ClusterDoc::empty(actor(1));
        meta(&mut a);
        // Values that do not compress away (automerge deflates its columns).
        let noise = |seed: u64| -> String {
            let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            (0..2000)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    char::from(b'a' + (x % 26) as u8)
                })
                .collect()
        };
        for i in 0..40 {
            a.put_object(
                "configmaps",
                Some("d"),
                &format!("c{}", i % 4),
                &json!({"v": i, "pad": noise(i)}),
            )
            .unwrap();
        }
        a.delete_object("configmaps", Some("d"), "c3").unwrap();
        let before = a.save().len();
        let (clock, record, entries) = a.base_inputs();
        assert!(record.is_none());
        let base = ClusterDoc::build_base("c", "n1", clock, None, entries, actor(50)).unwrap();
        // A write accepted while the base was being built is the tail: kept.
        a.put_object("configmaps", Some("d"), "late", &json!({"v": "late"}))
            .unwrap();
        let live = state(&a);
        let mut moved = a.move_onto("c", base).unwrap();
        assert_eq!(moved.rewritten, vec!["obj/configmaps/d/late".to_string()]);
        assert!(!moved.tail_unknown);
        assert_eq!(state(&moved.doc), live);
        assert_eq!(history::generation_of(moved.doc.version()), 1);
        assert!(moved.doc.save().len() * 4 < before, "history dropped");
        assert!(moved
            .doc
            .get_object("configmaps", Some("d"), "c3")
            .unwrap()
            .is_none());
        // The saved base loads at its version, and the next re-base is generation 2.
        let mut loaded = ClusterDoc::load(&moved.doc.save(), actor(2)).unwrap();
        assert_eq!(loaded.version(), moved.doc.version());
        let next = rebase(&mut loaded, "n1");
        assert_eq!(history::generation_of(next.doc.version()), 2);
        assert_eq!(next.doc.rebase_record().unwrap().clocks.len(), 2);
    }

    #[test]
    fn a_replica_cut_off_across_a_rebase_keeps_its_writes_and_resurrects_nothing() {
        let mut a = ClusterDoc::empty(actor(1));
        meta(&mut a);
        for name in ["keep", "gone", "mine", "theirs"] {
            a.put_object("configmaps", Some("d"), name, &json!({"v": 0}))
                .unwrap();
        }
        let mut b = ClusterDoc::load(&a.save(), actor(2)).unwrap();
        // Partition. The majority deletes `gone`, updates `theirs`, then re-bases.
        a.delete_object("configmaps", Some("d"), "gone").unwrap();
        a.put_object("configmaps", Some("d"), "theirs", &json!({"v": "a"}))
            .unwrap();
        let mut leader = rebase(&mut a, "n1").doc;
        // Cut off, b writes `mine`, creates `new` and deletes `keep`.
        b.put_object("configmaps", Some("d"), "mine", &json!({"v": "b"}))
            .unwrap();
        b.put_object("configmaps", Some("d"), "new", &json!({"v": "b"}))
            .unwrap();
        b.delete_object("configmaps", Some("d"), "keep").unwrap();
        // Heal: b is sent the leader's document and moves onto it.
        let base = ClusterDoc::load(&leader.save(), actor(3)).unwrap();
        let mut moved = b.move_onto("c", base).unwrap();
        let mut keys = moved.rewritten.clone();
        keys.sort();
        assert_eq!(
            keys,
            [
                "obj/configmaps/d/keep",
                "obj/configmaps/d/mine",
                "obj/configmaps/d/new"
            ]
        );
        let get = |d: &ClusterDoc, n: &str| d.get_object("configmaps", Some("d"), n).unwrap();
        assert_eq!(get(&moved.doc, "mine"), Some(json!({"v": "b"})));
        assert_eq!(get(&moved.doc, "new"), Some(json!({"v": "b"})));
        assert_eq!(get(&moved.doc, "keep"), None);
        assert_eq!(
            get(&moved.doc, "gone"),
            None,
            "a deleted object stays deleted"
        );
        assert_eq!(get(&moved.doc, "theirs"), Some(json!({"v": "a"})));
        // Its tail reaches the leader as ordinary changes of the new generation.
        leader.apply_pushed(&moved.changes).unwrap();
        assert_eq!(state(&leader), state(&moved.doc));
        assert_eq!(leader.heads(), moved.doc.heads());
    }

    #[test]
    fn of_two_concurrent_bases_the_loser_moves_with_its_writes_since() {
        let mut a = ClusterDoc::empty(actor(1));
        meta(&mut a);
        a.put_object("configmaps", Some("d"), "x", &json!(0))
            .unwrap();
        let mut b = ClusterDoc::load(&a.save(), actor(2)).unwrap();
        a.put_object("configmaps", Some("d"), "x", &json!("a"))
            .unwrap();
        b.put_leader_record("n2").unwrap();
        b.put_object("configmaps", Some("d"), "y", &json!("b"))
            .unwrap();
        let mut da = rebase(&mut a, "n1").doc;
        let mut db = rebase(&mut b, "n2").doc;
        assert_eq!(history::generation_of(da.version()), 1);
        assert_ne!(da.version(), db.version());
        db.put_object("configmaps", Some("d"), "z", &json!("b-after"))
            .unwrap();
        da.put_object("configmaps", Some("d"), "w", &json!("a-after"))
            .unwrap();
        let (mut winner, mut loser) = if da.version() > db.version() {
            (da, db)
        } else {
            (db, da)
        };
        let base = ClusterDoc::load(&winner.save(), actor(4)).unwrap();
        let moved = loser.move_onto("c", base).unwrap();
        // Only the loser's writes after its own base are its tail.
        assert_eq!(moved.rewritten.len(), 1, "{:?}", moved.rewritten);
        winner.apply_pushed(&moved.changes).unwrap();
        let mut m = moved.doc;
        assert_eq!(winner.heads(), m.heads());
        merge(&mut m, &mut winner);
    }

    proptest::proptest! {
        /// Any history, any partition: after the majority re-bases and the cut-off replica
        /// moves onto its base, every key the cut-off replica wrote holds its value (or stays
        /// deleted), every other key holds the majority's (nothing deleted comes back), and
        /// both replicas converge once the tail is pushed.
        #[test]
        fn moving_onto_a_base_keeps_the_tail_and_nothing_else(
            common in proptest::collection::vec((0u8..6, proptest::option::of(0u8..4)), 0..12),
            majority in proptest::collection::vec((0u8..6, proptest::option::of(0u8..4)), 0..12),
            cut_off in proptest::collection::vec((0u8..6, proptest::option::of(0u8..4)), 0..12),
        ) {
            // The keys a replica's ops changed (a delete of an absent key changes nothing).
            let apply = |d: &mut ClusterDoc, ops: &[(u8, Option<u8>)]| {
                let mut touched = std::collections::BTreeSet::new();
                for (k, v) in ops {
                    let name = format!("k{k}");
                    // (automerge makes no change for a put of the value already there)
                    let before = d.heads();
                    match v {
                        Some(v) => d.put_object("configmaps", Some("d"), &name, &json!(v)).unwrap(),
                        None => {
                            d.delete_object("configmaps", Some("d"), &name).unwrap();
                        }
                    }
                    let changed = d.heads() != before;
                    if changed {
                        touched.insert(*k);
                    }
                }
                touched
            };
            let mut a = ClusterDoc::empty(actor(1));
            meta(&mut a);
            apply(&mut a, &common);
            let mut b = ClusterDoc::load(&a.save(), actor(2)).unwrap();
            apply(&mut a, &majority);
            let touched = apply(&mut b, &cut_off);
            let mut leader = rebase(&mut a, "n1").doc;
            let base = ClusterDoc::load(&leader.save(), actor(3)).unwrap();
            let moved = b.move_onto("c", base).unwrap();
            for k in 0..6u8 {
                let name = format!("k{k}");
                let want = if touched.contains(&k) {
                    b.get_object("configmaps", Some("d"), &name).unwrap()
                } else {
                    leader.get_object("configmaps", Some("d"), &name).unwrap()
                };
                proptest::prop_assert_eq!(moved.doc.get_object("configmaps", Some("d"), &name).unwrap(), want);
            }
            leader.apply_pushed(&moved.changes).unwrap();
            proptest::prop_assert_eq!(state(&leader), state(&moved.doc));
        }
    }

    #[test]
    fn a_later_write_beats_another_replicas_earlier_view_of_it() {
        // a leads; b writes x twice, c has seen only the first write when a re-bases.
        let mut a = ClusterDoc::empty(actor(1));
        meta(&mut a);
        a.put_object("configmaps", Some("d"), "x", &json!("v0"))
            .unwrap();
        let mut b = ClusterDoc::load(&a.save(), actor(2)).unwrap();
        let mut c = ClusterDoc::load(&a.save(), actor(3)).unwrap();
        let heads = b.heads();
        b.put_object("configmaps", Some("d"), "x", &json!("v1"))
            .unwrap();
        c.apply_pushed(&b.changes_since(&heads)).unwrap();
        b.put_object("configmaps", Some("d"), "x", &json!("v2"))
            .unwrap();
        let mut leader = rebase(&mut a, "n1").doc;
        let get = |d: &ClusterDoc| d.get_object("configmaps", Some("d"), "x").unwrap();
        // c moves first and re-applies its view of x (v1)...
        let moved_c = c
            .move_onto("c", ClusterDoc::load(&leader.save(), actor(4)).unwrap())
            .unwrap();
        assert_eq!(get(&moved_c.doc), Some(json!("v1")));
        leader.apply_pushed(&moved_c.changes).unwrap();
        // ...then b, which wrote v2 after v1: v2 wins, everywhere.
        let moved_b = b
            .move_onto("c", ClusterDoc::load(&leader.save(), actor(5)).unwrap())
            .unwrap();
        assert_eq!(moved_b.rewritten, vec!["obj/configmaps/d/x".to_string()]);
        assert_eq!(get(&moved_b.doc), Some(json!("v2")));
        leader.apply_pushed(&moved_b.changes).unwrap();
        assert_eq!(get(&leader), Some(json!("v2")));
        // c converges on v2 once b's re-applied tail reaches it.
        let mut c2 = moved_c.doc;
        c2.apply_pushed(&moved_b.changes).unwrap();
        assert_eq!(get(&c2), Some(json!("v2")));
    }

    #[test]
    fn the_leader_at_a_base_is_read_from_the_base_change_not_the_latest_record() {
        let mut a = ClusterDoc::empty(actor(1));
        meta(&mut a);
        assert_eq!(a.leader_at_base("c"), None, "never re-based");
        let mut based = rebase(&mut a, "n1").doc;
        assert_eq!(based.leader_at_base("c").as_deref(), Some("n1"));
        // Leadership moves after the base: the base was still made by the leader of its time.
        based.put_leader_record("n2").unwrap();
        let mut sent = ClusterDoc::load(&based.save(), actor(7)).unwrap();
        assert_eq!(sent.leader_record().as_deref(), Some("n2"));
        assert_eq!(sent.leader_at_base("c").as_deref(), Some("n1"));
    }

    #[test]
    fn a_write_made_in_the_new_generation_is_not_undone_by_a_tail() {
        let mut a = ClusterDoc::empty(actor(1));
        meta(&mut a);
        a.put_object("configmaps", Some("d"), "x", &json!("v0"))
            .unwrap();
        let mut b = ClusterDoc::load(&a.save(), actor(2)).unwrap();
        b.put_object("configmaps", Some("d"), "x", &json!("old"))
            .unwrap();
        let mut leader = rebase(&mut a, "n1").doc;
        leader
            .put_object("configmaps", Some("d"), "x", &json!("new"))
            .unwrap();
        let moved = b
            .move_onto("c", ClusterDoc::load(&leader.save(), actor(5)).unwrap())
            .unwrap();
        assert!(moved.rewritten.is_empty(), "{:?}", moved.rewritten);
        assert_eq!(
            moved.doc.get_object("configmaps", Some("d"), "x").unwrap(),
            Some(json!("new"))
        );
    }

    proptest::proptest! {
        /// Two writers (b on keys k0-k2, c on k3-k5, as clients writing each object through
        /// one node), each having seen part of the other's writes, and a replica d that has
        /// seen only those first writes, are all behind the leader's re-base and move onto it
        /// in any order: every key ends at its writer's last value on every replica, every
        /// other key at the leader's.
        #[test]
        fn each_writers_last_value_survives_a_rebase_whatever_order_replicas_move_in(
            common in proptest::collection::vec((0u8..8, proptest::option::of(0u8..4)), 0..10),
            b_ops in proptest::collection::vec((0u8..3, proptest::option::of(0u8..4)), 0..10),
            c_ops in proptest::collection::vec((3u8..6, proptest::option::of(0u8..4)), 0..10),
            leader_ops in proptest::collection::vec((6u8..8, proptest::option::of(0u8..4)), 0..4),
            b_seen in 0usize..11, c_seen in 0usize..11, order in 0usize..6,
        ) {
            let mut a = ClusterDoc::empty(actor(1));
            meta(&mut a);
            apply_ops(&mut a, &common);
            let mut b = ClusterDoc::load(&a.save(), actor(2)).unwrap();
            let mut c = ClusterDoc::load(&a.save(), actor(3)).unwrap();
            let (b0, c0) = (b.heads(), c.heads());
            // Each writer's first ops reach the other (pushed), then each writes on.
            let (b_early, b_late) = b_ops.split_at(b_seen.min(b_ops.len()));
            let (c_early, c_late) = c_ops.split_at(c_seen.min(c_ops.len()));
            apply_ops(&mut b, b_early);
            apply_ops(&mut c, c_early);
            let (from_b, from_c) = (b.changes_since(&b0), c.changes_since(&c0));
            c.apply_pushed(&from_b).unwrap();
            b.apply_pushed(&from_c).unwrap();
            // d writes nothing and has seen only the writers' first ops.
            let mut d = ClusterDoc::load(&c.save(), actor(4)).unwrap();
            apply_ops(&mut b, b_late);
            apply_ops(&mut c, c_late);
            apply_ops(&mut a, &leader_ops);
            let mut leader = rebase(&mut a, "n1").doc;
            let mut replicas = [Some(&mut b), Some(&mut c), Some(&mut d)];
            let mut moved_docs = Vec::new();
            for (i, who) in ORDERS[order].into_iter().enumerate() {
                let d = replicas[who].take().unwrap();
                let base = ClusterDoc::load(&leader.save(), actor(10 + i as u8)).unwrap();
                let moved = d.move_onto("c", base).unwrap();
                leader.apply_pushed(&moved.changes).unwrap();
                moved_docs.push(moved.doc);
            }
            for m in &mut moved_docs {
                let changes = leader.changes_since(&[]);
                m.apply_pushed(&changes).unwrap();
                proptest::prop_assert_eq!(state(m), state(&leader));
            }
            for k in 0..8u8 {
                let name = format!("k{k}");
                let writer = match k { 0..=2 => &b, 3..=5 => &c, _ => &a };
                proptest::prop_assert_eq!(
                    leader.get_object("configmaps", Some("d"), &name).unwrap(),
                    writer.get_object("configmaps", Some("d"), &name).unwrap(),
                    "{}", name
                );
            }
        }
    }

    /// A replica of a test: its document and the one it had before its last move up a
    /// generation (what `DocStore::keep_previous` keeps on disk).
    struct Node {
        doc: ClusterDoc,
        previous: Option<ClusterDoc>,
    }

    impl Node {
        fn new(doc: ClusterDoc) -> Self {
            Node {
                doc,
                previous: None,
            }
        }

        fn generation(&self) -> u64 {
            self.doc.rebase_record().map_or(0, |r| r.generation)
        }

        /// Moves onto `base` as the agent does: up a generation, keeping the document it leaves;
        /// sideways (a concurrent base that won), from the kept one. Returns the tail's changes.
        fn move_onto(&mut self, base: &mut ClusterDoc, actor_id: u8) -> Vec<Vec<u8>> {
            let base = ClusterDoc::load(&base.save(), actor(actor_id)).unwrap();
            let up = history::generation_of(base.version()) > self.generation();
            let mut doc = std::mem::replace(&mut self.doc, ClusterDoc::empty(actor(0)));
            let moved = doc
                .move_onto_from("c", base, self.previous.as_mut())
                .unwrap();
            if up {
                self.previous = Some(doc);
            }
            self.doc = moved.doc;
            moved.changes
        }

        /// Makes a base of the next generation as the leader `by` (`rebase_cluster`).
        fn rebase(&mut self, by: &str) {
            let (clock, record, entries) = self.doc.base_inputs();
            let mut base =
                ClusterDoc::build_base("c", by, clock, record.as_ref(), entries, actor(60))
                    .unwrap();
            self.move_onto(&mut base, 61);
        }
    }

    #[test]
    fn of_two_concurrent_bases_the_losers_own_folded_writes_survive() {
        // n2 writes x and, before that write reached anyone, makes a base; n3 makes another of
        // the same generation without it. Whichever loses, x and the writes after either
        // base survive on both.
        let mut a = ClusterDoc::empty(actor(1));
        meta(&mut a);
        a.put_object("configmaps", Some("d"), "x", &json!("v0"))
            .unwrap();
        let mut n2 = Node::new(ClusterDoc::load(&a.save(), actor(2)).unwrap());
        let mut n3 = Node::new(ClusterDoc::load(&a.save(), actor(3)).unwrap());
        n2.doc
            .put_object("configmaps", Some("d"), "x", &json!("v1"))
            .unwrap();
        n3.doc
            .put_object("configmaps", Some("d"), "z", &json!("n3"))
            .unwrap();
        n2.rebase("n2");
        n3.rebase("n3");
        assert_ne!(n2.doc.version(), n3.doc.version());
        n2.doc
            .put_object("configmaps", Some("d"), "y", &json!("after"))
            .unwrap();
        let (winner, loser) = if n2.doc.version() > n3.doc.version() {
            (&mut n2, &mut n3)
        } else {
            (&mut n3, &mut n2)
        };
        let changes = loser.move_onto(&mut winner.doc, 9);
        winner.doc.apply_pushed(&changes).unwrap();
        for node in [&n2, &n3] {
            let get = |n: &str| node.doc.get_object("configmaps", Some("d"), n).unwrap();
            assert_eq!(get("x"), Some(json!("v1")));
            assert_eq!(get("y"), Some(json!("after")));
            assert_eq!(get("z"), Some(json!("n3")));
        }
        assert_eq!(n2.doc.heads(), n3.doc.heads());
    }

    proptest::proptest! {
        /// Two leaders make concurrent bases of one generation: a (keys k6-k7) and the writer b
        /// itself (keys k0-k2), each from its own view. Writers b and c (k3-k5) have seen part
        /// of each other's writes; c and the reader d may move onto b's base first, and c may
        /// write again after its move; the replicas on one base may or may not have synced.
        /// Then everyone moves onto the base that won, in any order: every key ends at its
        /// writer's last value on every replica.
        #[test]
        fn each_writers_last_value_survives_concurrent_bases(
            common in proptest::collection::vec((0u8..8, proptest::option::of(0u8..4)), 0..8),
            b_ops in proptest::collection::vec((0u8..3, proptest::option::of(0u8..4)), 0..8),
            c_ops in proptest::collection::vec((3u8..6, proptest::option::of(0u8..4)), 0..8),
            b_post in proptest::collection::vec((0u8..3, proptest::option::of(0u8..4)), 0..4),
            c_post in proptest::collection::vec((3u8..6, proptest::option::of(0u8..4)), 0..4),
            leader_ops in proptest::collection::vec((6u8..8, proptest::option::of(0u8..4)), 0..4),
            b_seen in 0usize..9, c_seen in 0usize..9,
            c_first in proptest::bool::ANY, d_first in proptest::bool::ANY,
            synced in proptest::bool::ANY, order in 0usize..6,
            again in proptest::bool::ANY,
        ) {
            let mut a0 = ClusterDoc::empty(actor(1));
            meta(&mut a0);
            apply_ops(&mut a0, &common);
            let load = |d: &mut ClusterDoc, i: u8| ClusterDoc::load(&d.save(), actor(i)).unwrap();
            let mut b = Node::new(load(&mut a0, 2));
            let mut c = Node::new(load(&mut a0, 3));
            let (b0, c0) = (b.doc.heads(), c.doc.heads());
            let (b_early, b_late) = b_ops.split_at(b_seen.min(b_ops.len()));
            let (c_early, c_late) = c_ops.split_at(c_seen.min(c_ops.len()));
            apply_ops(&mut b.doc, b_early);
            apply_ops(&mut c.doc, c_early);
            let (from_b, from_c) = (b.doc.changes_since(&b0), c.doc.changes_since(&c0));
            c.doc.apply_pushed(&from_b).unwrap();
            b.doc.apply_pushed(&from_c).unwrap();
            let mut d = Node::new(load(&mut c.doc, 4));
            apply_ops(&mut b.doc, b_late);
            apply_ops(&mut c.doc, c_late);
            let mut a = Node::new(a0);
            apply_ops(&mut a.doc, &leader_ops);
            a.rebase("n1");
            b.doc.put_leader_record("n2").unwrap();
            b.rebase("n2");
            // c and d may take b's base first; c writes on after its move.
            if c_first {
                let changes = c.move_onto(&mut b.doc, 20);
                if synced {
                    b.doc.apply_pushed(&changes).unwrap();
                }
            }
            if d_first {
                let changes = d.move_onto(&mut b.doc, 21);
                if synced {
                    b.doc.apply_pushed(&changes).unwrap();
                }
            }
            apply_ops(&mut b.doc, &b_post);
            apply_ops(&mut c.doc, &c_post);
            if synced && c_first {
                sync(&mut b.doc, &mut c.doc);
            }
            let want: Vec<_> = (0..8u8)
                .map(|k| {
                    let name = format!("k{k}");
                    let writer = match k { 0..=2 => &b.doc, 3..=5 => &c.doc, _ => &a.doc };
                    writer.get_object("configmaps", Some("d"), &name).unwrap()
                })
                .collect();
            let a_wins = a.doc.version() > b.doc.version();
            let (mut winner, mut others) = if a_wins {
                (a, vec![b, c, d])
            } else {
                (b, vec![a, c, d])
            };
            // The winner's side may compact once more before the others hear of it: the
            // losers are then a generation behind, on a base the lineage did not take.
            if again {
                winner.rebase("n9");
            }
            for (i, who) in ORDERS[order].into_iter().enumerate() {
                let node = &mut others[who];
                if node.doc.version() == winner.doc.version() {
                    // Already at the winner's base (c or d took it first): they sync.
                    sync(&mut winner.doc, &mut node.doc);
                    continue;
                }
                let changes = node.move_onto(&mut winner.doc, 30 + i as u8);
                winner.doc.apply_pushed(&changes).unwrap();
            }
            for (k, want) in want.iter().enumerate() {
                let name = format!("k{k}");
                proptest::prop_assert_eq!(
                    &winner.doc.get_object("configmaps", Some("d"), &name).unwrap(),
                    want,
                    "{}", name
                );
            }
            for node in &mut others {
                let changes = winner.doc.changes_since(&[]);
                node.doc.apply_pushed(&changes).unwrap();
                proptest::prop_assert_eq!(state(&node.doc), state(&winner.doc));
            }
        }
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
