//! `Replica`: one automerge document with a flat key space of CBOR values, and the
//! operations replication needs (changes for the push path, sync messages for anti-entropy,
//! save/load, and the deterministic rebuild that drops history). `ClusterDoc` and `StatusDoc`
//! are typed views over it.

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, Change, ChangeHash, ReadDoc, ScalarValueRef, ValueRef, ROOT};
use serde::de::DeserializeOwned;
use serde::Serialize;

use std::collections::{BTreeMap, BTreeSet};

use super::keys::prefix_end;
use super::StateError;

/// Upper bound on one stored value (a Kubernetes object): the API limits bodies below this.
pub const MAX_VALUE_BYTES: usize = 4 << 20;

pub(crate) fn to_cbor<T: Serialize>(value: &T) -> Result<Vec<u8>, StateError> {
    super::cbor::to_vec(value).map_err(StateError::Encode)
}

pub(crate) fn from_cbor<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StateError> {
    cbor4ii::serde::from_slice(bytes).map_err(|e| StateError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

fn bytes_of<'a>(value: &'a ValueRef<'a>) -> Option<&'a [u8]> {
    match value {
        ValueRef::Scalar(ScalarValueRef::Bytes(b)) => Some(b),
        _ => None,
    }
}

/// The digest a stored value is compared by when tails are re-applied (128 bits of SHA-256).
pub fn value_digest(bytes: &[u8]) -> Digest {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)[..16].try_into().expect("16 bytes")
}

/// A stored value's digest ([`value_digest`]); `None` where one is optional stands for a delete.
pub type Digest = [u8; 16];

/// What a set of changes did to root keys ([`Replica::key_writes`]).
#[derive(Default)]
pub struct KeyWrites {
    /// The changes selected, in causal order, with their commit messages.
    pub changes: Vec<(ChangeHash, Option<String>)>,
    /// The same changes, by hash.
    pub hashes: BTreeSet<ChangeHash>,
    /// Per key, in causal order: each change (an index into `changes`) that wrote or deleted
    /// it and the state it left (a value's digest, `None` for a delete).
    pub keys: BTreeMap<String, Vec<(usize, Option<Digest>)>>,
}

impl KeyWrites {
    /// The change among these that left `state` on `key` last (in causal order), if any.
    pub fn origin(&self, key: &str, state: Option<Digest>) -> Option<ChangeHash> {
        self.keys
            .get(key)?
            .iter()
            .rev()
            .find(|(_, s)| *s == state)
            .map(|(i, _)| self.changes[*i].0)
    }
}

pub struct Replica {
    doc: AutoCommit,
    /// Writes accumulate in one change until the batch ends (see [`Replica::set_batching`]).
    batching: bool,
    /// What [`Replica::scan_decoded`] decoded, by key, with the bytes it came from.
    decoded: Decoded,
}

/// Decoded values by key, each with the exact bytes it was decoded from: a value is decoded
/// again only when its stored bytes differ (compared whole, so a hit is always right).
/// Readers list the same few hundred records on every round (a leader reads every pod's
/// status on each status change), and decoding CBOR costs about twice a clone of the value.
#[derive(Default)]
struct Decoded(std::sync::Mutex<BTreeMap<String, (Vec<u8>, Cached)>>);

type Cached = std::sync::Arc<dyn std::any::Any + Send + Sync>;

impl Decoded {
    fn fresh() -> Self {
        Self::default()
    }
}

impl Replica {
    pub fn empty(actor: ActorId) -> Self {
        Replica {
            doc: AutoCommit::new().with_actor(actor),
            batching: false,
            decoded: Decoded::fresh(),
        }
    }

    pub fn load(bytes: &[u8], actor: ActorId) -> Result<Self, StateError> {
        Ok(Replica {
            doc: AutoCommit::load(bytes)?.with_actor(actor),
            batching: false,
            decoded: Decoded::fresh(),
        })
    }

    pub fn save(&mut self) -> Vec<u8> {
        self.doc.save()
    }

    pub fn heads(&mut self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    /// A short digest of the heads: equal digests mean equal documents.
    pub fn heads_digest(&mut self) -> u64 {
        use sha2::{Digest, Sha256};
        let mut heads = self.heads();
        heads.sort();
        let mut h = Sha256::new();
        for head in heads {
            h.update(head.0);
        }
        u64::from_be_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
    }

    pub fn is_empty(&self) -> bool {
        self.doc.is_empty()
    }

    /// While on, writes are not committed one by one; turning it off commits them as one
    /// change (one history entry, one change to push), e.g. a controller's whole plan.
    pub fn set_batching(&mut self, on: bool) {
        self.batching = on;
        if !on {
            self.doc.commit();
        }
    }

    pub fn set_actor(&mut self, actor: ActorId) {
        self.doc.set_actor(actor);
    }

    pub fn change_count(&mut self) -> usize {
        self.doc.get_changes(&[]).len()
    }

    pub(crate) fn get_bytes(&self, key: &str) -> Option<Vec<u8>> {
        match self.doc.get(ROOT, key) {
            Ok(Some((value, _))) => value.into_bytes().ok(),
            _ => None,
        }
    }

    pub(crate) fn put_bytes(&mut self, key: &str, bytes: Vec<u8>) -> Result<(), StateError> {
        if bytes.len() > MAX_VALUE_BYTES {
            return Err(StateError::TooLarge(bytes.len()));
        }
        self.doc.put(ROOT, key, bytes)?;
        if !self.batching {
            self.doc.commit();
        }
        Ok(())
    }

    pub(crate) fn delete_key(&mut self, key: &str) -> Result<bool, StateError> {
        if self.doc.get(ROOT, key)?.is_none() {
            return Ok(false);
        }
        self.doc.delete(ROOT, key)?;
        if !self.batching {
            self.doc.commit();
        }
        Ok(true)
    }

    pub fn get_typed<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StateError> {
        self.get_bytes(key).map(|b| from_cbor(key, &b)).transpose()
    }

    pub fn put_typed<T: Serialize>(&mut self, key: &str, value: &T) -> Result<(), StateError> {
        self.put_bytes(key, to_cbor(value)?)
    }

    /// Every `(key, bytes)` whose key starts with `prefix`, in key order.
    pub(crate) fn scan(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        self.doc
            .map_range(ROOT, prefix.to_string()..prefix_end(prefix))
            .filter_map(|item| bytes_of(&item.value).map(|b| (item.key.to_string(), b.to_vec())))
            .collect()
    }

    /// Every `(key, value)` whose key starts with `prefix`, in key order, decoded as `T`;
    /// records that do not decode are skipped with a warning. Values whose bytes are unchanged
    /// since the last call are shared from the cache instead of decoded; the cache keeps only
    /// keys that still exist under the prefixes scanned.
    pub fn scan_decoded<T>(&self, prefix: &str) -> Vec<(String, std::sync::Arc<T>)>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        let mut cache = self.decoded.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<(String, std::sync::Arc<T>)> = Vec::new();
        for item in self
            .doc
            .map_range(ROOT, prefix.to_string()..prefix_end(prefix))
        {
            let Some(bytes) = bytes_of(&item.value) else {
                continue;
            };
            let key = item.key.as_ref();
            let hit = cache
                .get(key)
                .filter(|(b, _)| b.as_slice() == bytes)
                .and_then(|(_, v)| v.clone().downcast::<T>().ok());
            let value = match hit {
                Some(v) => v,
                None => match from_cbor::<T>(key, bytes) {
                    Ok(v) => {
                        let v = std::sync::Arc::new(v);
                        cache.insert(key.to_string(), (bytes.to_vec(), v.clone()));
                        v
                    }
                    Err(e) => {
                        tracing::warn!(%e, "skipping a record that does not decode");
                        cache.remove(key);
                        continue;
                    }
                },
            };
            out.push((key.to_string(), value));
        }
        let gone: Vec<String> = cache
            .range(prefix.to_string()..prefix_end(prefix))
            .map(|(k, _)| k)
            .filter(|k| {
                out.binary_search_by(|(o, _)| o.as_str().cmp(k.as_str()))
                    .is_err()
            })
            .cloned()
            .collect();
        for key in gone {
            cache.remove(&key);
        }
        out
    }

    /// Number of live keys.
    pub fn len(&self) -> usize {
        self.doc.length(ROOT)
    }

    /// Keys with concurrent writes whose losers are still visible (surfaced as events).
    pub fn conflicts(&self, prefix: &str) -> Vec<String> {
        self.doc
            .map_range(ROOT, prefix.to_string()..prefix_end(prefix))
            .filter(|item| item.conflict)
            .map(|item| item.key.to_string())
            .collect()
    }

    /// Changes made since `heads`, encoded for the push path.
    pub fn changes_since(&mut self, heads: &[ChangeHash]) -> Vec<Vec<u8>> {
        self.doc
            .get_changes(heads)
            .into_iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect()
    }

    /// Drops every change made since `heads` (which must be heads this document had), under
    /// a fresh actor id: for a local write whose log append failed, so nothing of it stays.
    /// Rebuilds the document from its history: call it only on that error path.
    pub fn rollback_to(&mut self, heads: &[ChangeHash]) -> Result<(), StateError> {
        self.doc.commit();
        let actor = ActorId::random();
        self.doc = self.doc.fork_at(heads)?.with_actor(actor);
        self.batching = false;
        Ok(())
    }

    /// Applies pushed changes. Returns whether the document's heads moved. Changes whose
    /// dependencies are missing are queued by automerge until anti-entropy brings them.
    pub fn apply_pushed(&mut self, changes: &[Vec<u8>]) -> Result<bool, StateError> {
        let before = self.heads();
        let decoded = changes
            .iter()
            .map(|b| Change::from_bytes(b.clone()).map_err(|e| StateError::Change(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        self.doc.apply_changes(decoded)?;
        Ok(self.heads() != before)
    }

    /// Merges a whole saved document (a snapshot received from a peer) into this one: every
    /// change it holds that this one lacks is applied. Returns whether the heads moved.
    pub fn merge_saved(&mut self, saved: &[u8]) -> Result<bool, StateError> {
        let before = self.heads();
        self.doc.load_incremental(saved)?;
        Ok(self.heads() != before)
    }

    pub fn generate_sync(&mut self, state: &mut sync::State) -> Option<Vec<u8>> {
        self.doc
            .sync()
            .generate_sync_message(state)
            .map(|m| m.encode())
    }

    /// Receives a sync message; returns whether the document's heads moved.
    pub fn receive_sync(
        &mut self,
        state: &mut sync::State,
        message: &[u8],
    ) -> Result<bool, StateError> {
        let before = self.heads();
        let msg =
            sync::Message::decode(message).map_err(|e| StateError::SyncMessage(e.to_string()))?;
        self.doc.sync().receive_sync_message(state, msg)?;
        Ok(self.heads() != before)
    }

    /// The vector clock of this document: each actor's last sequence number.
    pub fn clock(&mut self) -> super::history::Clock {
        let mut clock = super::history::Clock::new();
        for meta in self.doc.get_changes_meta(&[]) {
            let seq = clock.entry(meta.actor.to_hex_string()).or_insert(0);
            *seq = (*seq).max(meta.seq);
        }
        clock
    }

    /// The hashes of every change of this document.
    pub fn change_hashes(&mut self) -> BTreeSet<ChangeHash> {
        self.doc
            .get_changes_meta(&[])
            .into_iter()
            .map(|m| m.hash)
            .collect()
    }

    /// What the changes `select` picks (by actor hex, sequence number and commit message) did
    /// to root keys: for each key they wrote or deleted, in causal order, each change and the
    /// state it left on the key — the digest of a value put there ([`value_digest`]), or `None`
    /// for a delete.
    pub fn key_writes(&mut self, select: impl Fn(&str, u64, Option<&str>) -> bool) -> KeyWrites {
        let selected: Vec<(ChangeHash, Option<String>)> = self
            .doc
            .get_changes_meta(&[])
            .into_iter()
            .filter(|m| select(&m.actor.to_hex_string(), m.seq, m.message.as_deref()))
            .map(|m| (m.hash, m.message.map(|m| m.into_owned())))
            .collect();
        let mut writes = KeyWrites::default();
        for (hash, message) in selected {
            let Some(change) = self.doc.get_change_by_hash(&hash) else {
                continue;
            };
            let index = writes.changes.len();
            writes.changes.push((hash, message));
            writes.hashes.insert(hash);
            for op in change.decode().operations {
                let automerge::legacy::Key::Map(key) = &op.key else {
                    continue;
                };
                let state = match &op.action {
                    automerge::legacy::OpType::Put(automerge::ScalarValue::Bytes(b)) => {
                        Some(value_digest(b))
                    }
                    automerge::legacy::OpType::Delete => None,
                    // Nothing else is ever written at the root; a key touched some other way
                    // is still the selection's.
                    _ => Some([0; 16]),
                };
                writes
                    .keys
                    .entry(key.to_string())
                    .or_default()
                    .push((index, state));
            }
        }
        writes
    }

    /// The value of `key` as of the first change `actor` (hex) made: for a based document,
    /// what its base change wrote (`None`: no such change, or no bytes there then).
    pub(crate) fn get_bytes_at_first_change_of(
        &mut self,
        actor: &str,
        key: &str,
    ) -> Option<Vec<u8>> {
        let hash = self
            .doc
            .get_changes_meta(&[])
            .into_iter()
            .find(|m| m.seq == 1 && m.actor.to_hex_string() == actor)?
            .hash;
        match self.doc.get_at(ROOT, key, &[hash]) {
            Ok(Some((value, _))) => value.into_bytes().ok(),
            _ => None,
        }
    }

    /// The digest of this document's current value of `key` (`None`: absent), comparable with
    /// the states [`Replica::key_writes`] reports.
    pub fn key_state(&self, key: &str) -> Option<Digest> {
        self.get_bytes(key).map(|b| value_digest(&b))
    }

    /// Whether change `ancestor` is a strict causal ancestor of change `of`, looking only
    /// through the changes in `within` (a causally closed-upwards set, such as a tail: every
    /// descendant of one of its changes is in it).
    pub fn precedes(
        &mut self,
        ancestor: &ChangeHash,
        of: &ChangeHash,
        within: &BTreeSet<ChangeHash>,
    ) -> bool {
        if ancestor == of || !within.contains(ancestor) {
            return false;
        }
        let mut seen = BTreeSet::new();
        let mut stack = vec![*of];
        while let Some(hash) = stack.pop() {
            let Some(change) = self.doc.get_change_by_hash(&hash) else {
                continue;
            };
            for dep in change.deps() {
                if dep == ancestor {
                    return true;
                }
                if within.contains(dep) && seen.insert(*dep) {
                    stack.push(*dep);
                }
            }
        }
        false
    }

    /// Ends a batch (see [`Replica::set_batching`]) committing its writes as one change that
    /// carries `message` (the marker of a re-applied tail: `ClusterDoc::move_onto`); with no
    /// writes, an empty change carrying it is made only if `even_empty`.
    pub fn end_batch_as(&mut self, message: &str, even_empty: bool) {
        self.batching = false;
        let options =
            || automerge::transaction::CommitOptions::default().with_message(message.to_string());
        if self.doc.commit_with(options()).is_none() && even_empty {
            self.doc.empty_change(options());
        }
    }

    /// A fresh document holding exactly `entries` and no history, written by `actor` in one
    /// change with keys in order and a zero timestamp (deterministic: see [`Replica::rebuild`]).
    pub fn from_entries(
        actor: ActorId,
        entries: &std::collections::BTreeMap<String, Vec<u8>>,
    ) -> Result<Replica, StateError> {
        let mut fresh = AutoCommit::new().with_actor(actor);
        for (key, bytes) in entries {
            fresh.put(ROOT, key.as_str(), bytes.clone())?;
        }
        fresh.commit_with(automerge::transaction::CommitOptions::default().with_time(0));
        Ok(Replica {
            doc: fresh,
            batching: false,
            decoded: Decoded::fresh(),
        })
    }

    /// A fresh document holding exactly the current state (keys for which `keep` holds) and no
    /// history, written by `actor` in one change with keys in order and a zero timestamp: two
    /// replicas that rebuild the same state with the same actor get byte-identical documents.
    pub fn rebuild(
        &self,
        actor: ActorId,
        keep: impl Fn(&str) -> bool,
    ) -> Result<Replica, StateError> {
        let mut fresh = AutoCommit::new().with_actor(actor);
        for (key, bytes) in self.scan("") {
            if keep(&key) {
                fresh.put(ROOT, key.as_str(), bytes)?;
            }
        }
        fresh.commit_with(automerge::transaction::CommitOptions::default().with_time(0));
        Ok(Replica {
            doc: fresh,
            batching: false,
            decoded: Decoded::fresh(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoded_values_follow_their_bytes_and_leave_with_their_keys() {
        let mut r = Replica::empty(ActorId::from(vec![1; 16]));
        r.put_typed("pod/a", &1u32).unwrap();
        r.put_typed("pod/b", &2u32).unwrap();
        r.put_typed("other/x", &9u32).unwrap();
        let first = r.scan_decoded::<u32>("pod/");
        assert_eq!(first.len(), 2);
        let again = r.scan_decoded::<u32>("pod/");
        assert!(
            std::sync::Arc::ptr_eq(&first[0].1, &again[0].1),
            "unchanged bytes are not decoded again"
        );
        r.put_typed("pod/a", &3u32).unwrap();
        r.delete_key("pod/b").unwrap();
        r.put_bytes("pod/c", vec![0xff]).unwrap();
        let now: Vec<(String, u32)> = r
            .scan_decoded::<u32>("pod/")
            .into_iter()
            .map(|(k, v)| (k, *v))
            .collect();
        assert_eq!(now, [("pod/a".to_string(), 3)], "changed, deleted, corrupt");
        let cached: Vec<String> = r.decoded.0.lock().unwrap().keys().cloned().collect();
        assert_eq!(cached, ["pod/a"], "only live, decodable keys stay cached");
        // Another type under the same key is decoded, not mistaken for the cached one.
        let as_i64 = r.scan_decoded::<i64>("pod/");
        assert_eq!(*as_i64[0].1, 3);
    }
}
