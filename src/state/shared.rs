//! The state every shell of an agent shares: the cluster document and its write-ahead log,
//! the status documents, the membership view, and the channels that wake the network actor
//! and the watchers. Its methods own the locking: callers pass a closure that sees one
//! document (or the set of status documents) while the lock is held, and no lock is public,
//! so no caller has a lock order to keep. Shared's own methods must not be called from inside
//! such a closure (they would wait for the lock the closure holds).

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, RwLock};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};

use crate::model::MemberStatus;
use crate::security::ClusterIdentity;
use crate::state::{ClusterDoc, DocId, StateError, StatusDoc, Wal};

/// Most status documents an agent holds (one per node ever seen).
pub const MAX_STATUS_DOCS: usize = 16384;

/// Events a node keeps in its status document, at most...
pub const MAX_EVENTS_PER_NODE: usize = 500;
/// ...and for at most this long (Kubernetes' default event TTL).
pub const EVENT_TTL: chrono::Duration = chrono::Duration::hours(1);

/// Changes made locally to one document, for the push path.
pub struct LocalChange {
    pub doc: DocId,
    pub version: u64,
    pub changes: Vec<Vec<u8>>,
}

/// The membership view as last published by the network actor.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub epoch: u64,
    pub view_hash: u64,
    pub leader: Option<String>,
    pub members: Vec<MemberStatus>,
    /// When each member's state last changed, in this agent's wall clock.
    pub since: BTreeMap<String, DateTime<Utc>>,
    /// When each member recently came back to alive (from suspect, dead or left), oldest first, in
    /// this agent's wall clock: the leader's flap damping (`sched::liveness`).
    pub recoveries: BTreeMap<String, Vec<DateTime<Utc>>>,
    pub admitted: Vec<String>,
}

pub struct Shared {
    pub node_name: String,
    pub identity: ClusterIdentity,
    doc: Mutex<ClusterDoc>,
    /// The write-ahead log of API writes; also held while a snapshot replaces it.
    wal: Mutex<Wal>,
    /// Size of the cluster document as last saved (reported by the status route, which must
    /// not serialise the whole document on every request).
    saved_bytes: std::sync::atomic::AtomicU64,
    /// Status documents by owner; this node's own is created at start.
    status: Mutex<BTreeMap<String, StatusDoc>>,
    view: RwLock<View>,
    changes_tx: watch::Sender<u64>,
    /// Locally made changes, for the push path. Bounded: if the network actor falls behind,
    /// anti-entropy carries what the push path dropped.
    local_tx: mpsc::Sender<LocalChange>,
    /// The agent's Prometheus metrics, updated by every shell.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl Shared {
    pub fn new(
        node_name: String,
        identity: ClusterIdentity,
        doc: ClusterDoc,
        wal: Wal,
        status: BTreeMap<String, StatusDoc>,
    ) -> (Self, mpsc::Receiver<LocalChange>) {
        let (local_tx, local_rx) = mpsc::channel(1024);
        let (changes_tx, _) = watch::channel(0);
        let shared = Shared {
            node_name,
            identity,
            doc: Mutex::new(doc),
            wal: Mutex::new(wal),
            saved_bytes: std::sync::atomic::AtomicU64::new(0),
            status: Mutex::new(status),
            view: RwLock::new(View::default()),
            changes_tx,
            local_tx,
            metrics: Default::default(),
        };
        (shared, local_rx)
    }

    fn doc(&self) -> MutexGuard<'_, ClusterDoc> {
        self.doc
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on the cluster document (a read: local writes go through [`Shared::write`]).
    pub fn read<T>(&self, f: impl FnOnce(&ClusterDoc) -> T) -> T {
        f(&self.doc())
    }

    /// Runs `f` on the cluster document to merge what peers sent (sync messages, pushed
    /// changes): those are logged by the network actor's saves, not the write-ahead log.
    pub fn replicate<T>(&self, f: impl FnOnce(&mut ClusterDoc) -> T) -> T {
        f(&mut self.doc())
    }

    /// The digest of the cluster document's heads (anti-entropy, the controllers' change
    /// detection).
    pub fn heads_digest(&self) -> u64 {
        self.doc().heads_digest()
    }

    /// The cluster document's heads (the status route).
    pub fn heads(&self) -> Vec<automerge::ChangeHash> {
        self.doc().heads()
    }

    /// The whole cluster document, saved (backups).
    pub fn save_doc(&self) -> Vec<u8> {
        self.doc().save()
    }

    /// Runs a local write of the cluster document. Its changes are in the write-ahead log
    /// (checksummed, fsynced) before anyone can see them: the document lock is held from the
    /// write to the end of the append, and only then are they queued for the push path. If the
    /// append fails (a full disk: [`StateError::NoSpace`]) the document is rolled back to
    /// where it was, so nothing half-applied stays or leaves. What `f` wrote before returning
    /// an error is kept, logged and pushed like a success (as a controller's partial plan).
    pub fn write<T>(
        &self,
        f: impl FnOnce(&mut ClusterDoc) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        // Lock order: log, then document (as `snapshot`).
        let mut wal = self.wal();
        let mut doc = self.doc();
        let before = doc.heads();
        let out = f(&mut doc);
        let changes = doc.changes_since(&before);
        if !changes.is_empty() {
            if let Err(e) = wal.append(&changes) {
                rollback(&mut doc, &before);
                let message = format!("write-ahead log {}: {e}", wal.path().display());
                tracing::error!(%message, "a write was refused");
                return Err(if crate::state::is_out_of_space(&e) {
                    StateError::NoSpace(message)
                } else {
                    StateError::Io(message)
                });
            }
        }
        let version = doc.version();
        drop(doc);
        drop(wal);
        self.queue_push(DocId::Cluster, version, changes);
        out
    }

    /// The cluster document's version (`state::history`).
    pub fn cluster_version(&self) -> u64 {
        self.doc().version()
    }

    /// Replaces the cluster document by what `f` makes of it (a re-base: see
    /// `ClusterDoc::move_onto`), holding the log's lock and the document's from the moment `f`
    /// sees the document to the end: no write falls between the tail `f` computes and the
    /// swap. The new document is saved with `persist` and the log emptied before anyone sees
    /// it (a crash leaves the old snapshot and its log, or the new snapshot); if `persist`
    /// fails nothing changes. `f` returning `None` changes nothing. The changes made on top of
    /// the base are queued for the push path.
    pub fn replace_doc<T>(
        &self,
        f: impl FnOnce(&mut ClusterDoc) -> Result<Option<(crate::state::Moved, T)>, StateError>,
        persist: impl FnOnce(&[u8]) -> std::io::Result<()>,
    ) -> Result<Option<T>, StateError> {
        // Lock order: log, then document (as `write`).
        let mut wal = self.wal();
        let mut doc = self.doc();
        let Some((mut moved, out)) = f(&mut doc)? else {
            return Ok(None);
        };
        let bytes = moved.doc.save();
        persist(&bytes)
            .map_err(|e| StateError::Io(format!("saving the re-based document: {e}")))?;
        self.set_saved_bytes(bytes.len() as u64);
        let version = moved.doc.version();
        *doc = moved.doc;
        if let Err(e) = wal.truncate() {
            // The snapshot holds everything: a stale log replays as changes of an older
            // generation, which never apply (their dependencies are not in this one).
            tracing::warn!(%e, "emptying the write-ahead log after a re-base failed");
        }
        drop(doc);
        drop(wal);
        self.queue_push(DocId::Cluster, version, moved.changes);
        self.notify();
        Ok(Some(out))
    }

    fn wal(&self) -> MutexGuard<'_, Wal> {
        self.wal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes a snapshot of the cluster document with `persist` and empties the write-ahead
    /// log, holding the log's lock so no acknowledged write can fall between the two.
    pub fn snapshot(
        &self,
        persist: impl FnOnce(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        // Lock order: log, then document (as `write`).
        let mut wal = self.wal();
        let bytes = self.doc().save();
        persist(&bytes)?;
        self.set_saved_bytes(bytes.len() as u64);
        wal.truncate()
    }

    pub fn saved_bytes(&self) -> u64 {
        self.saved_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_saved_bytes(&self, bytes: u64) {
        self.saved_bytes
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    fn status_docs(&self) -> MutexGuard<'_, BTreeMap<String, StatusDoc>> {
        self.status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on the status documents, by owner (a read: this node writes its own through
    /// [`Shared::write_status`]).
    pub fn read_status<T>(&self, f: impl FnOnce(&BTreeMap<String, StatusDoc>) -> T) -> T {
        f(&self.status_docs())
    }

    /// This node's own status entries `<prefix><namespace>/<name>` (pod status records,
    /// scheduling records), by `(namespace, name)`.
    pub fn own_entries<T>(&self, prefix: &str) -> BTreeMap<(String, String), T>
    where
        T: serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
    {
        use crate::model::workload::keys;
        let entries = self.read_status(|docs| {
            docs.get(&self.node_name)
                .map(|own| own.entries::<T>(prefix))
        });
        entries
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(k, v)| {
                let (ns, name) = keys::split(&k, prefix)?;
                Some(((ns.to_string(), name.to_string()), v))
            })
            .collect()
    }

    /// Whether `owner` may have a status document on this node: itself, a node with a record
    /// in the cluster document, or a live (alive or suspect) member. A deleted node that is gone
    /// is none of these: its document is dropped ([`Shared::prune_status_docs`]) and not taken
    /// back from a peer that still has it.
    pub fn status_owner_known(&self, owner: &str) -> bool {
        owner == self.node_name
            || self.live_member(owner)
            || self.read(|d| d.node(owner).ok().flatten().is_some())
    }

    fn live_member(&self, name: &str) -> bool {
        let view = self.view.read().unwrap_or_else(|p| p.into_inner());
        view.members
            .iter()
            .any(|m| m.name == name && m.state.is_live())
    }

    /// Drops the status documents of owners no longer known ([`Shared::status_owner_known`]):
    /// without this, every node ever deleted kept its document on every node for ever, and past
    /// [`MAX_STATUS_DOCS`] new nodes were refused. Returns the owners dropped.
    pub fn prune_status_docs(&self) -> Vec<String> {
        let owners: Vec<String> = self.read_status(|docs| docs.keys().cloned().collect());
        let gone: Vec<String> = owners
            .into_iter()
            .filter(|o| !self.status_owner_known(o))
            .collect();
        if !gone.is_empty() {
            self.replicate_status(|docs| {
                for owner in &gone {
                    docs.remove(owner);
                }
            });
        }
        gone
    }

    /// Runs `f` on the status documents to merge, replace or re-base them (the network
    /// actor's replication).
    pub fn replicate_status<T>(&self, f: impl FnOnce(&mut BTreeMap<String, StatusDoc>) -> T) -> T {
        f(&mut self.status_docs())
    }

    /// Runs a write on this node's own status document; its changes go to the push path.
    pub fn write_status<T>(
        &self,
        f: impl FnOnce(&mut StatusDoc) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let mut docs = self.status_docs();
        let own = docs
            .entry(self.node_name.clone())
            .or_insert_with(|| StatusDoc::empty(&self.node_name, 0, automerge::ActorId::random()));
        let before = own.heads();
        let out = f(own)?;
        let changes = own.changes_since(&before);
        let version = own.version();
        drop(docs);
        self.queue_push(DocId::Status(self.node_name.clone()), version, changes);
        Ok(out)
    }

    /// Records an event in this node's status document (see `model::workload::new_event`),
    /// dropping this node's events older than [`EVENT_TTL`] and the oldest beyond
    /// [`MAX_EVENTS_PER_NODE`], so events never grow the documents without bound.
    pub fn record_event(
        &self,
        involved: &crate::model::workload::InvolvedObject,
        event_type: crate::model::workload::EventType,
        reason: crate::model::workload::EventReason,
        message: &str,
        component: &str,
    ) {
        use crate::model::workload::{keys, new_event};
        let now = Utc::now();
        let (name, event) = new_event(
            involved,
            event_type,
            reason,
            message,
            component,
            &self.node_name,
            now,
        );
        let result = self.write_status(|doc| {
            let mut existing: Vec<(String, DateTime<Utc>)> = doc
                .shared_entries::<serde_json::Value>(keys::EVENT_PREFIX)
                .into_iter()
                .map(|(k, v)| {
                    let at = v
                        .get("lastTimestamp")
                        .and_then(|t| t.as_str())
                        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                        .map(|t| t.with_timezone(&Utc))
                        .unwrap_or(now);
                    (k, at)
                })
                .collect();
            existing.sort_by_key(|(_, at)| *at);
            let excess = (existing.len() + 1).saturating_sub(MAX_EVENTS_PER_NODE);
            for (i, (key, at)) in existing.iter().enumerate() {
                if i < excess || now - *at > EVENT_TTL {
                    doc.delete(key)?;
                }
            }
            doc.put(&keys::event(&involved.namespace, &name), &event)
        });
        if let Err(e) = result {
            tracing::warn!(%e, %reason, "could not record an event");
        }
    }

    pub fn queue_push(&self, doc: DocId, version: u64, changes: Vec<Vec<u8>>) {
        if changes.is_empty() {
            return;
        }
        if self
            .local_tx
            .try_send(LocalChange {
                doc,
                version,
                changes,
            })
            .is_err()
        {
            tracing::debug!("push queue full; anti-entropy will carry the change");
        }
        self.notify();
    }

    /// Wakes watchers (API watches) after any change of state or view.
    pub fn notify(&self) {
        self.changes_tx.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes_tx.subscribe()
    }

    /// Publishes a new membership view (the network actor) and wakes the watchers.
    pub fn set_view(&self, view: View) {
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = view;
        self.notify();
    }

    /// The membership view, with the leader in office (`membership::leader::in_office`: the
    /// leader recorded in the document while it is live, else the view's candidate).
    pub fn view(&self) -> View {
        let mut view = self.view.read().unwrap_or_else(|p| p.into_inner()).clone();
        let recorded = self.doc().leader_record();
        let live: Vec<String> = view
            .members
            .iter()
            .filter(|m| m.state.is_live())
            .map(|m| m.name.clone())
            .collect();
        if !live.is_empty() {
            view.leader = crate::membership::leader::in_office(recorded.as_deref(), &live);
        }
        view
    }
}

/// Undoes a local write that cannot be logged. The document was locked since `before`, so
/// nobody saw the change; a failed rollback leaves the process unable to tell its state apart
/// from what it acknowledged, so it stops (peers and the log hold everything acknowledged).
fn rollback(doc: &mut ClusterDoc, before: &[automerge::ChangeHash]) {
    if let Err(e) = doc.rollback_to(before) {
        tracing::error!(%e, "rolling back an unlogged write failed; stopping");
        std::process::exit(70);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::ActorId;

    fn shared(wal: Wal) -> (Shared, mpsc::Receiver<LocalChange>) {
        let identity = ClusterIdentity {
            cluster_id: "c".into(),
            generation: 1,
            secret: [7; 32],
        };
        let mut doc = ClusterDoc::empty(ActorId::random());
        doc.put_object("namespaces", None, "kept", &serde_json::json!({"a": 1}))
            .unwrap();
        Shared::new("n1".into(), identity, doc, wal, BTreeMap::new())
    }

    #[test]
    fn status_documents_of_deleted_nodes_that_are_gone_are_dropped() {
        use crate::model::{MemberState, NodeRecord};
        let (shared, _pushed) = shared(Wal::new("/dev/null".into()));
        let record = |name: &str| NodeRecord {
            name: name.into(),
            uid: format!("uid-{name}"),
            peer_id: String::new(),
            p2p_addr: String::new(),
            api_addr: String::new(),
            internal_ip: String::new(),
            created: Utc::now(),
            labels: BTreeMap::new(),
            capacity: BTreeMap::new(),
            system: Default::default(),
        };
        shared.replicate(|d| d.put_node(&record("n2")).unwrap());
        let member = |name: &str, state| MemberStatus {
            name: name.into(),
            state,
            incarnation: 1,
            addr: String::new(),
        };
        shared.set_view(View {
            members: vec![
                member("n3", MemberState::Suspect),
                member("n4", MemberState::Dead),
            ],
            ..View::default()
        });
        shared.replicate_status(|docs| {
            for owner in ["n1", "n2", "n3", "n4"] {
                docs.insert(owner.into(), StatusDoc::empty(owner, 1, ActorId::random()));
            }
        });
        // n1 is this node, n2 has a record, n3 is live; n4 is dead with no record.
        assert_eq!(shared.prune_status_docs(), vec!["n4".to_string()]);
        assert!(!shared.status_owner_known("n4"));
        assert!(shared.status_owner_known("n2") && shared.status_owner_known("n3"));
        let left: Vec<String> = shared.read_status(|d| d.keys().cloned().collect());
        assert_eq!(left, ["n1", "n2", "n3"]);
        assert!(shared.prune_status_docs().is_empty());
    }

    #[test]
    fn a_write_the_log_cannot_take_is_refused_and_leaves_nothing() {
        // /dev/full answers every write with ENOSPC.
        let (shared, mut pushed) = shared(Wal::new("/dev/full".into()));
        let before = shared.doc().heads();
        let err = shared
            .write(|d| {
                d.put_object("namespaces", None, "x", &serde_json::json!(1))?;
                d.delete_object("namespaces", None, "kept")
            })
            .unwrap_err();
        assert!(matches!(err, StateError::NoSpace(_)), "{err}");
        let mut doc = shared.doc();
        assert_eq!(doc.heads(), before, "the document is back where it was");
        assert!(doc.get_object("namespaces", None, "x").unwrap().is_none());
        assert!(doc
            .get_object("namespaces", None, "kept")
            .unwrap()
            .is_some());
        drop(doc);
        assert!(pushed.try_recv().is_err(), "nothing was queued for peers");
        // The next write is refused too (here the log could not even cut its torn tail, as
        // /dev/full cannot be truncated, so it refuses to append after it): no partial state.
        assert!(shared
            .write(|d| d.put_object("namespaces", None, "y", &serde_json::json!(2)))
            .is_err());
        assert_eq!(shared.doc().len(), 1);
    }

    #[test]
    fn a_logged_write_is_on_disk_before_it_is_pushed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.wal");
        let (shared, mut pushed) = shared(Wal::new(path.clone()));
        shared
            .write(|d| d.put_object("namespaces", None, "x", &serde_json::json!(1)))
            .unwrap();
        let change = pushed.try_recv().expect("queued for peers");
        let logged = crate::state::Wal::recover(&path).unwrap();
        assert_eq!(
            logged, change.changes,
            "exactly the pushed changes are logged"
        );
        // A failed write still logs and pushes what it wrote before failing.
        let err = shared.write(|d| {
            d.put_object("namespaces", None, "y", &serde_json::json!(2))?;
            Err::<(), _>(StateError::TooLarge(1))
        });
        assert!(err.is_err());
        assert_eq!(crate::state::Wal::recover(&path).unwrap().len(), 2);
        assert!(pushed.try_recv().is_ok());
    }
}
