//! A simulated node's replica of the cluster document: local writes, pushed changes, pairwise sync.

use std::collections::BTreeMap;

use automerge::sync::{State as SyncState, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ChangeHash, ReadDoc, ROOT};

/// Most rounds one anti-entropy session may take before it is abandoned (it resumes next time).
const MAX_SYNC_ROUNDS: usize = 32;

/// One node's document and its per-peer sync states.
pub struct Replica {
    doc: AutoCommit,
    sync: BTreeMap<usize, SyncState>,
}

impl Replica {
    /// A fresh document with a fixed actor id, so runs with the same seed are identical.
    pub fn new(node: usize) -> Self {
        let mut actor = [0u8; 16];
        actor[..8].copy_from_slice(b"shoalsim");
        actor[8..].copy_from_slice(&(node as u64).to_be_bytes());
        let doc = AutoCommit::new().with_actor(ActorId::from(actor));
        Replica {
            doc,
            sync: BTreeMap::new(),
        }
    }

    /// Write one key and return the encoded change, to push to peers.
    pub fn write(&mut self, key: &str, value: u64) -> Option<Vec<u8>> {
        self.doc.put(ROOT, key, value).ok()?;
        self.doc.commit();
        self.doc
            .get_last_local_change()
            .map(|c| c.raw_bytes().to_vec())
    }

    /// Apply a pushed change (changes whose dependencies are missing wait in automerge's queue).
    pub fn receive_change(&mut self, bytes: &[u8]) -> bool {
        self.doc.load_incremental(bytes).is_ok()
    }

    /// Forget sync states (a restarted process lost them).
    pub fn reset_sync(&mut self) {
        self.sync.clear();
    }

    pub fn heads(&mut self) -> Vec<ChangeHash> {
        let mut heads = self.doc.get_heads();
        heads.sort();
        heads
    }

    pub fn len(&self) -> usize {
        self.doc.length(ROOT)
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
        if let Some(msg) = a.doc.sync().generate_sync_message(sa) {
            let sb = b.sync.entry(ia).or_default();
            let _ = b.doc.sync().receive_sync_message(sb, msg);
            messages += 1;
            progressed = true;
        }
        let sb = b.sync.entry(ia).or_default();
        if let Some(msg) = b.doc.sync().generate_sync_message(sb) {
            let sa = a.sync.entry(ib).or_default();
            let _ = a.doc.sync().receive_sync_message(sa, msg);
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
