//! A simulated node's replica of the cluster document (a real `ClusterDoc`): local writes,
//! pushed changes, pairwise sync.

use std::collections::BTreeMap;

use automerge::sync::State as SyncState;
use automerge::{ActorId, ChangeHash};

use crate::sched::Write;
use crate::state::ClusterDoc;

/// Most rounds one anti-entropy session may take before it is abandoned (it resumes next time).
const MAX_SYNC_ROUNDS: usize = 32;

/// One node's document and its per-peer sync states.
pub struct Replica {
    doc: ClusterDoc,
    sync: BTreeMap<usize, SyncState>,
}

impl Replica {
    /// A fresh document with a fixed actor id, so runs with the same seed are identical.
    pub fn new(node: usize) -> Self {
        let mut actor = [0u8; 16];
        actor[..8].copy_from_slice(b"shoalsim");
        actor[8..].copy_from_slice(&(node as u64).to_be_bytes());
        Replica {
            doc: ClusterDoc::empty(ActorId::from(actor)),
            sync: BTreeMap::new(),
        }
    }

    /// Write one key and return the encoded change, to push to peers.
    pub fn write(&mut self, key: &str, value: u64) -> Option<Vec<u8>> {
        let before = self.doc.heads();
        self.doc.put_typed(key, &value).ok()?;
        self.doc.changes_since(&before).pop()
    }

    /// Apply a plan's writes as one change; returns the changes to push.
    pub fn apply(&mut self, writes: &[Write]) -> Vec<Vec<u8>> {
        let before = self.doc.heads();
        if self.doc.apply_writes(writes).is_err() {
            return Vec::new();
        }
        self.doc.changes_since(&before)
    }

    /// Any write through the typed document; returns the changes to push.
    pub fn edit(&mut self, f: impl FnOnce(&mut ClusterDoc)) -> Vec<Vec<u8>> {
        let before = self.doc.heads();
        f(&mut self.doc);
        self.doc.changes_since(&before)
    }

    pub fn doc(&self) -> &ClusterDoc {
        &self.doc
    }

    /// Apply a pushed change (changes whose dependencies are missing wait in automerge's queue).
    pub fn receive_change(&mut self, bytes: &[u8]) -> bool {
        self.doc.apply_pushed(&[bytes.to_vec()]).is_ok()
    }

    /// Apply pushed changes.
    pub fn receive_changes(&mut self, changes: &[Vec<u8>]) -> bool {
        self.doc.apply_pushed(changes).is_ok()
    }

    /// Forget sync states (a restarted process lost them).
    pub fn reset_sync(&mut self) {
        self.sync.clear();
    }

    pub fn heads(&mut self) -> Vec<ChangeHash> {
        let mut heads = self.doc.heads();
        heads.sort();
        heads
    }

    pub fn heads_digest(&mut self) -> u64 {
        self.doc.heads_digest()
    }

    pub fn len(&self) -> usize {
        self.doc.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Run one anti-entropy session between replicas `a` (node `ia`) and `b` (node `ib`) until
/// neither has anything to send. Returns the number of messages exchanged.
pub fn sync_pair(a: &mut Replica, ia: usize, b: &mut Replica, ib: usize) -> usize {
    let mut messages = 0;
    for _ in 0..MAX_SYNC_ROUNDS {
        let mut progressed = false;
        let sa = a.sync.entry(ib).or_default();
        if let Some(msg) = a.doc.generate_sync(sa) {
            let sb = b.sync.entry(ia).or_default();
            let _ = b.doc.receive_sync(sb, &msg);
            messages += 1;
            progressed = true;
        }
        let sb = b.sync.entry(ia).or_default();
        if let Some(msg) = b.doc.generate_sync(sb) {
            let sa = a.sync.entry(ib).or_default();
            let _ = a.doc.receive_sync(sa, &msg);
            messages += 1;
            progressed = true;
        }
        if !progressed {
            break;
        }
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushed_changes_and_sync_converge() {
        let mut a = Replica::new(0);
        let mut b = Replica::new(1);
        let change = a.write("x", 1).unwrap();
        assert!(b.receive_change(&change));
        assert_eq!(a.heads(), b.heads());
        b.write("y", 2);
        a.write("z", 3);
        sync_pair(&mut a, 0, &mut b, 1);
        assert_eq!(a.heads(), b.heads());
        assert_eq!(a.len(), 3);
    }
}
