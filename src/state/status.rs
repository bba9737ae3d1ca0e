//! `StatusDoc`: a document written by exactly one node, its owner: the observed status of what
//! that node runs (pod phases, container states, restarts). Keeping this churn out of the
//! cluster document is what bounds the cluster document's history; a status document bounds
//! its own by re-basing: because it has a single writer, the owner can replace it with a fresh
//! document of the same state (a higher `version`) at any time without losing anybody's write,
//! and replicas simply drop an older version for a newer one.

use std::ops::{Deref, DerefMut};

use automerge::ActorId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::replica::Replica;
use super::StateError;

/// Re-base when the document's history has grown past this many times its live size.
pub const REBASE_RATIO: usize = 2;
/// ...and is at least this large (tiny documents are not worth re-basing).
pub const REBASE_MIN_BYTES: usize = 16 << 10;

pub struct StatusDoc {
    owner: String,
    version: u64,
    r: Replica,
    writes_since_check: u64,
}

impl Deref for StatusDoc {
    type Target = Replica;
    fn deref(&self) -> &Replica {
        &self.r
    }
}

impl DerefMut for StatusDoc {
    fn deref_mut(&mut self) -> &mut Replica {
        &mut self.r
    }
}

/// On-disk form: the version travels with the document bytes.
#[derive(Serialize, Deserialize)]
struct Saved {
    owner: String,
    version: u64,
    #[serde(with = "serde_bytes")]
    doc: Vec<u8>,
}

impl StatusDoc {
    pub fn empty(owner: &str, version: u64, actor: ActorId) -> Self {
        StatusDoc {
            owner: owner.to_string(),
            version,
            r: Replica::empty(actor),
            writes_since_check: 0,
        }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StateError> {
        self.r.get_typed(key)
    }

    /// Writes `value` under `key` if it differs from what is there (only real transitions).
    pub fn put<T: Serialize + DeserializeOwned + PartialEq>(
        &mut self,
        key: &str,
        value: &T,
    ) -> Result<bool, StateError> {
        if self.get::<T>(key).ok().flatten().as_ref() == Some(value) {
            return Ok(false);
        }
        self.r.put_typed(key, value)?;
        self.writes_since_check += 1;
        Ok(true)
    }

    pub fn delete(&mut self, key: &str) -> Result<bool, StateError> {
        self.writes_since_check += 1;
        self.r.delete_key(key)
    }

    pub fn entries<T>(&self, prefix: &str) -> Vec<(String, T)>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        self.r
            .scan_decoded::<T>(prefix)
            .into_iter()
            .map(|(k, v)| (k, (*v).clone()))
            .collect()
    }

    /// [`StatusDoc::entries`], sharing the decoded values (no copy of an unchanged record).
    pub fn shared_entries<T>(&self, prefix: &str) -> Vec<(String, std::sync::Arc<T>)>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        self.r.scan_decoded(prefix)
    }

    /// Whether history has outgrown the live state enough to re-base. Cheap unless writes
    /// happened since the last check; then it compares the saved size with a rebuilt one.
    pub fn needs_rebase(&mut self) -> bool {
        if self.writes_since_check < 64 {
            return false;
        }
        self.writes_since_check = 0;
        let current = self.r.save().len();
        if current < REBASE_MIN_BYTES {
            return false;
        }
        match self.r.rebuild(ActorId::from(&[0u8; 16][..]), |_| true) {
            Ok(mut fresh) => current > REBASE_RATIO * fresh.save().len(),
            Err(_) => false,
        }
    }

    /// The owner's re-base: the same state, no history, the next version.
    pub fn rebased(&self, actor: ActorId) -> Result<StatusDoc, StateError> {
        self.rebased_to(actor, self.version.saturating_add(1))
    }

    /// The owner's re-base to `version` (past one a peer still holds, or the next one): the
    /// same state, no history, in one rebuild.
    pub fn rebased_to(&self, actor: ActorId, version: u64) -> Result<StatusDoc, StateError> {
        let r = self.r.rebuild(actor, |_| true)?;
        Ok(StatusDoc {
            owner: self.owner.clone(),
            version: version.max(self.version),
            r,
            writes_since_check: 0,
        })
    }

    pub fn encode(&mut self) -> Result<Vec<u8>, StateError> {
        super::replica::to_cbor(&Saved {
            owner: self.owner.clone(),
            version: self.version,
            doc: self.r.save(),
        })
    }

    pub fn decode(bytes: &[u8], actor: ActorId) -> Result<StatusDoc, StateError> {
        let saved: Saved = super::replica::from_cbor("status document", bytes)?;
        Ok(StatusDoc {
            owner: saved.owner,
            version: saved.version,
            r: Replica::load(&saved.doc, actor)?,
            writes_since_check: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transitions_are_written() {
        let mut d = StatusDoc::empty("n1", 0, ActorId::random());
        assert!(d.put("pod/a", &"Running".to_string()).unwrap());
        assert!(!d.put("pod/a", &"Running".to_string()).unwrap());
        assert_eq!(d.change_count(), 1);
    }

    #[test]
    fn rebase_bounds_history_and_keeps_state() {
        let mut d = StatusDoc::empty("n1", 3, ActorId::random());
        let mut writes = 0u32;
        let triggered = loop {
            writes += 1;
            let i = writes % 100;
            d.put(
                &format!("pod/p{i}"),
                &format!("Running restarts={writes} ip=10.0.{i}.{}", writes % 250),
            )
            .unwrap();
            if d.needs_rebase() {
                break true;
            }
            if writes > 100_000 {
                break false;
            }
        };
        assert!(triggered, "history never outgrew the state");
        let mut fresh = d.rebased(ActorId::random()).unwrap();
        assert_eq!(fresh.version(), 4);
        assert_eq!(fresh.entries::<u32>("pod/"), d.entries::<u32>("pod/"));
        assert!(fresh.save().len() * REBASE_RATIO < d.save().len());
        let bytes = fresh.encode().unwrap();
        let back = StatusDoc::decode(&bytes, ActorId::random()).unwrap();
        assert_eq!(back.version(), 4);
        assert_eq!(back.owner(), "n1");
        assert!(StatusDoc::decode(b"junk", ActorId::random()).is_err());
    }
}
