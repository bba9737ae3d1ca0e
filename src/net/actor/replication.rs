//! Replication of the documents between admitted peers: the push path (local changes to every
//! peer at once), digest-driven anti-entropy (compare heads of every document with one random
//! peer per interval, then automerge-sync the ones that differ), status-document versions
//! (a newer version replaces an older one), state transfer (a sync that would need one message
//! above `transfer::MAX_SYNC_MESSAGE_BYTES` becomes an offer of the snapshot file, fetched in
//! chunks: the decisions are `state::transfer`'s, this shell reads files and moves bytes), and
//! persistence of what changed.

use std::time::Duration;

use automerge::sync;
use libp2p::PeerId;
use rand::seq::IteratorRandom;

use super::{Actor, Sent};
use crate::metrics::{Direction, SyncPath};
use crate::net::protocol::{
    serde_bytes_vec::Bytes, DocDigest, DocRef, Request, Response, MAX_DIGEST_DOCS, MAX_PUSH_CHANGES,
};
use crate::state::shared::{LocalChange, Shared, MAX_STATUS_DOCS};
use crate::state::transfer::{self, TransferId};
use crate::state::{history, ClusterDoc, DocId, DocStore, Replica, StatusDoc};

/// Largest step past the version held that a claim about a status document may take (the owner
/// re-bases one version at a time; a replica long offline misses at most a few thousand).
pub const MAX_VERSION_STEP: u64 = 1 << 20;

/// Runs `f` on our replica of `id`, if we hold one.
fn with_replica<T>(shared: &Shared, id: &DocId, f: impl FnOnce(&mut Replica) -> T) -> Option<T> {
    match id {
        DocId::Cluster => Some(shared.replicate(|d| f(d))),
        DocId::Status(owner) => shared.replicate_status(|docs| docs.get_mut(owner).map(|d| f(d))),
    }
}

impl Actor {
    pub(super) fn send_to_admitted(&mut self, peer: PeerId, request: Request, sent: Sent) {
        let id = self.swarm.behaviour_mut().rpc.send_request(&peer, request);
        self.sent.insert(id, sent);
    }

    fn mark_dirty(&mut self, id: DocId) {
        self.dirty.insert(id);
        self.shared.notify();
    }

    pub(super) fn push_local(&mut self, change: LocalChange) {
        self.dirty.insert(change.doc.clone());
        let request = Request::Push {
            doc: DocRef {
                id: change.doc,
                version: change.version,
            },
            changes: change.changes.into_iter().map(Bytes).collect(),
        };
        let peers: Vec<PeerId> = self.peers.keys().copied().collect();
        let bytes: usize = match &request {
            Request::Push { changes, .. } => changes.iter().map(|c| c.0.len()).sum(),
            _ => 0,
        };
        self.shared
            .metrics
            .sync_bytes(Direction::Sent, SyncPath::Push, bytes * peers.len());
        for peer in peers {
            self.send_to_admitted(peer, request.clone(), Sent::Push);
        }
    }

    /// Our version of `id` after taking member `from`'s `remote` version into account: an
    /// older replica of someone else's status document is replaced by an empty one at the
    /// newer version (sync then fills it); our own is re-based past any version a peer still
    /// holds (our data dir was lost). `None`: a document we refuse to hold.
    ///
    /// Versions are bounded: a claim more than [`MAX_VERSION_STEP`] past the version held was
    /// never issued by the owner (re-bases add one each) and is ignored, and the owner's own
    /// word replaces a replica that far ahead of it. So a member cannot make an owner re-base
    /// up to `u64::MAX`, nor silence it by holding a forged version above it.
    fn align(&mut self, id: &DocId, remote: u64, from: &str) -> Option<u64> {
        match id {
            DocId::Cluster => {
                let mine = self.shared.cluster_version();
                self.judge_cluster_version(from, mine, remote);
                Some(mine)
            }
            DocId::Status(owner) if !crate::model::is_dns1123_subdomain(owner) => None,
            DocId::Status(owner) if *owner == self.shared.node_name => {
                // Re-based past `remote`: the new version and its changes, pushed below. A
                // claim far past our own version is not one we issued: we keep ours (its holders
                // take our own word over it).
                let (version, rebased) = self.shared.replicate_status(|docs| {
                    let own = docs.get_mut(owner)?;
                    let mine = own.version();
                    if remote <= mine || remote > mine.saturating_add(MAX_VERSION_STEP) {
                        return Some((mine, None));
                    }
                    *own = own
                        .rebased_to(automerge::ActorId::random(), remote.saturating_add(1))
                        .ok()?;
                    Some((own.version(), Some(own.changes_since(&[]))))
                })?;
                if remote > version.saturating_add(MAX_VERSION_STEP) {
                    self.log_forged_version(from, id, remote, version);
                }
                if let Some(changes) = rebased {
                    self.shared.queue_push(id.clone(), version, changes);
                }
                Some(version)
            }
            DocId::Status(owner) => {
                // Checked outside the status documents' lock (it reads the cluster document),
                // and only for a document not held yet.
                let known = self.shared.read_status(|docs| docs.contains_key(owner))
                    || self.shared.status_owner_known(owner);
                /// What the replica held when a claim came that it did not follow.
                enum Odd {
                    OwnerWord(u64),
                    Forged(u64),
                }
                let (answer, odd) = self.shared.replicate_status(|docs| {
                    let empty = || StatusDoc::empty(owner, remote, automerge::ActorId::random());
                    match docs.get(owner).map(|d| d.version()) {
                        Some(mine)
                            if from == owner && mine > remote.saturating_add(MAX_VERSION_STEP) =>
                        {
                            docs.insert(owner.clone(), empty());
                            (Some(remote), Some(Odd::OwnerWord(mine)))
                        }
                        Some(mine) if mine >= remote => (Some(mine), None),
                        Some(mine) if remote > mine.saturating_add(MAX_VERSION_STEP) => {
                            (Some(mine), Some(Odd::Forged(mine)))
                        }
                        Some(_) => {
                            docs.insert(owner.clone(), empty());
                            (Some(remote), None)
                        }
                        None if known && docs.len() < MAX_STATUS_DOCS => {
                            docs.insert(owner.clone(), empty());
                            (Some(remote), None)
                        }
                        None => (None, None),
                    }
                });
                match odd {
                    Some(Odd::OwnerWord(mine)) => {
                        tracing::warn!(member = %from, held = mine, version = remote, "the owner's own status document replaces a version it never issued")
                    }
                    Some(Odd::Forged(mine)) => self.log_forged_version(from, id, remote, mine),
                    None => {}
                }
                answer
            }
        }
    }

    /// Acts on a peer's cluster document version: remembered for the re-base gate; a peer
    /// behind us is offered our snapshot (it moves to our version and re-applies its tail);
    /// a peer ahead offers us its own; a version no re-base issues is logged and ignored.
    fn judge_cluster_version(&mut self, from: &str, mine: u64, remote: u64) {
        if from.is_empty() {
            return;
        }
        match history::judge(mine, remote) {
            history::Verdict::Same | history::Verdict::Ahead => {
                self.peer_versions.insert(from.to_string(), remote);
            }
            history::Verdict::Behind => {
                self.peer_versions.insert(from.to_string(), remote);
                let peer = self
                    .peers
                    .iter()
                    .find(|(_, p)| p.name == from)
                    .map(|(id, _)| *id);
                if let Some(peer) = peer {
                    self.offer_snapshot(peer, "the member's cluster document is of an older generation: it re-bases onto ours");
                }
            }
            history::Verdict::Bogus(reason) => {
                let now = std::time::Instant::now();
                if self
                    .bogus_logged
                    .is_none_or(|t| now.duration_since(t) > std::time::Duration::from_secs(30))
                {
                    self.bogus_logged = Some(now);
                    tracing::warn!(member = %from, %reason, "ignored a cluster document version no re-base issued");
                }
            }
        }
    }

    fn log_forged_version(&mut self, from: &str, id: &DocId, claimed: u64, held: u64) {
        let now = std::time::Instant::now();
        if self
            .forgeries_logged
            .is_none_or(|t| now.duration_since(t) > std::time::Duration::from_secs(30))
        {
            self.forgeries_logged = Some(now);
            tracing::warn!(member = %from, doc = ?id, claimed, held, "ignored a status document version its owner never issued");
        }
    }

    /// The sync state for one peer and document at `version` (reset when the version moved).
    fn sync_state(&mut self, peer: PeerId, id: &DocId, version: u64) -> &mut sync::State {
        let entry = self
            .sync_states
            .entry((peer, id.clone()))
            .or_insert_with(|| (version, sync::State::new()));
        if entry.0 != version {
            *entry = (version, sync::State::new());
        }
        &mut entry.1
    }

    /// Keeps only what both sides agreed on; in-flight bookkeeping dies with a connection.
    pub(super) fn forget_in_flight(&mut self, peer: PeerId) {
        for ((p, _), (_, state)) in self.sync_states.iter_mut() {
            if *p == peer {
                *state = sync::State::decode(&state.encode()).unwrap_or_default();
            }
        }
    }

    pub(super) fn on_push(&mut self, from: &str, doc: DocRef, changes: Vec<Bytes>) -> Response {
        if changes.len() > MAX_PUSH_CHANGES {
            tracing::warn!(member = %from, count = changes.len(), "push with too many changes refused");
            return Response::Refused {
                reason: "too many changes".into(),
            };
        }
        let Some(mine) = self.align(&doc.id, doc.version, from) else {
            return Response::Refused {
                reason: format!("unknown document {:?}", doc.id),
            };
        };
        if mine != doc.version {
            return Response::Ok; // The sender is behind; anti-entropy brings it forward.
        }
        let changes: Vec<Vec<u8>> = changes.into_iter().map(|b| b.0).collect();
        let bytes = changes.iter().map(Vec::len).sum();
        self.shared
            .metrics
            .sync_bytes(Direction::Received, SyncPath::Push, bytes);
        match with_replica(&self.shared, &doc.id, |r| r.apply_pushed(&changes)) {
            Some(Ok(true)) => self.mark_dirty(doc.id),
            Some(Ok(false)) | None => {}
            Some(Err(e)) => tracing::warn!(member = %from, %e, "rejected pushed changes"),
        }
        Response::Ok
    }

    pub(super) fn on_sync_request(
        &mut self,
        peer: PeerId,
        from: &str,
        doc: DocRef,
        message: Bytes,
    ) -> Response {
        let Some(mine) = self.align(&doc.id, doc.version, from) else {
            return Response::Refused {
                reason: format!("unknown document {:?}", doc.id),
            };
        };
        let reply_ref = DocRef {
            id: doc.id.clone(),
            version: mine,
        };
        if mine > doc.version && doc.id != DocId::Cluster {
            // The sender holds an older version: open a fresh exchange at ours.
            let state = self.sync_state(peer, &doc.id, mine);
            *state = sync::State::new();
            let mut state = std::mem::take(state);
            let opening =
                with_replica(&self.shared, &doc.id, |r| r.generate_sync(&mut state)).flatten();
            *self.sync_state(peer, &doc.id, mine) = state;
            let opening = self.bounded(peer, &doc.id, mine, opening);
            let sent = opening.as_ref().map_or(0, Vec::len);
            self.shared
                .metrics
                .sync_bytes(Direction::Sent, SyncPath::Sync, sent);
            return Response::Sync {
                doc: reply_ref,
                message: opening.map(Bytes),
            };
        }
        if mine != doc.version {
            // Another version of the document (a cluster document of another generation, or a
            // claim we did not follow): never merged.
            return Response::Sync {
                doc: reply_ref,
                message: None,
            };
        }
        let reply = self.exchange(peer, from, &doc.id, mine, &message.0);
        Response::Sync {
            doc: reply_ref,
            message: reply.map(Bytes),
        }
    }

    /// Receives one sync message for `id` and returns our next message, if any.
    fn exchange(
        &mut self,
        peer: PeerId,
        from: &str,
        id: &DocId,
        version: u64,
        message: &[u8],
    ) -> Option<Vec<u8>> {
        // A peer fetching our snapshot gets the rest once it has it: no sync of the cluster
        // document to compute meanwhile (it would be over the limit again).
        let busy = *id == DocId::Cluster && self.sender.is_busy(&peer, std::time::Instant::now());
        let mut state = std::mem::take(self.sync_state(peer, id, version));
        self.shared
            .metrics
            .sync_bytes(Direction::Received, SyncPath::Sync, message.len());
        let result = with_replica(&self.shared, id, |r| {
            let moved = r.receive_sync(&mut state, message)?;
            let reply = if busy {
                None
            } else {
                r.generate_sync(&mut state)
            };
            Ok::<_, crate::state::StateError>((moved, reply))
        });
        *self.sync_state(peer, id, version) = state;
        match result {
            Some(Ok((moved, reply))) => {
                if moved {
                    self.mark_dirty(id.clone());
                }
                let reply = self.bounded(peer, id, version, reply);
                let sent = reply.as_ref().map_or(0, Vec::len);
                self.shared
                    .metrics
                    .sync_bytes(Direction::Sent, SyncPath::Sync, sent);
                reply
            }
            Some(Err(e)) => {
                tracing::warn!(member = %from, %e, doc = ?id, "rejected sync message");
                None
            }
            None => None,
        }
    }

    pub(super) fn on_sync_response(&mut self, peer: PeerId, doc: DocRef, message: Option<Bytes>) {
        let from = self
            .peers
            .get(&peer)
            .map(|p| p.name.clone())
            .unwrap_or_default();
        let Some(mine) = self.align(&doc.id, doc.version, &from) else {
            return;
        };
        if mine != doc.version {
            return;
        }
        let Some(message) = message else { return };
        if let Some(next) = self.exchange(peer, &from, &doc.id, mine, &message.0) {
            self.send_to_admitted(
                peer,
                Request::Sync {
                    doc: DocRef {
                        id: doc.id,
                        version: mine,
                    },
                    message: Bytes(next),
                },
                Sent::Sync,
            );
        }
    }

    fn start_sync(&mut self, peer: PeerId, id: &DocId) {
        let version = match id {
            DocId::Cluster if self.sender.is_busy(&peer, std::time::Instant::now()) => return,
            DocId::Cluster => self.shared.cluster_version(),
            DocId::Status(owner) => {
                let held = self
                    .shared
                    .read_status(|docs| docs.get(owner).map(|d| d.version()));
                match held.or_else(|| self.align(id, 0, "")) {
                    Some(v) => v,
                    None => return,
                }
            }
        };
        let mut state = std::mem::take(self.sync_state(peer, id, version));
        let message = with_replica(&self.shared, id, |r| r.generate_sync(&mut state)).flatten();
        *self.sync_state(peer, id, version) = state;
        if let Some(m) = self.bounded(peer, id, version, message) {
            self.shared
                .metrics
                .sync_bytes(Direction::Sent, SyncPath::Sync, m.len());
            self.send_to_admitted(
                peer,
                Request::Sync {
                    doc: DocRef {
                        id: id.clone(),
                        version,
                    },
                    message: Bytes(m),
                },
                Sent::Sync,
            );
        }
    }

    /// `message` if it is within the transfer limit. A larger sync message for the cluster
    /// document is not sent: the exchange starts over and the peer is offered our snapshot.
    fn bounded(
        &mut self,
        peer: PeerId,
        id: &DocId,
        version: u64,
        message: Option<Vec<u8>>,
    ) -> Option<Vec<u8>> {
        let m = message?;
        if m.len() <= transfer::MAX_SYNC_MESSAGE_BYTES || *id != DocId::Cluster {
            return Some(m);
        }
        *self.sync_state(peer, id, version) = sync::State::new();
        self.offer_snapshot(
            peer,
            &format!("a sync would exceed the message limit ({} bytes)", m.len()),
        );
        None
    }

    /// Offers our snapshot file to `peer` (`why`: its sync would need a message over the
    /// limit, or it is at an older document version).
    fn offer_snapshot(&mut self, peer: PeerId, why: &str) {
        use std::io::Read;
        let name = self.peer_name(peer);
        let path = self.store.path().to_path_buf();
        let opened = std::fs::File::open(&path).and_then(|mut f| {
            let len = f.metadata()?.len();
            let mut head = vec![0; 64.min(len as usize)];
            f.read_exact(&mut head)?;
            Ok((f, len, head))
        });
        let (file, len, head) = match opened {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(member = %name, %e, path = %path.display(), "cannot offer the snapshot for a state transfer; saving one");
                self.mark_dirty(DocId::Cluster);
                return;
            }
        };
        if !crate::state::is_sealed(&head) {
            tracing::warn!(member = %name, "the snapshot on disk is not sealed; saving a new one before offering it");
            self.mark_dirty(DocId::Cluster);
            return;
        }
        let mut id = transfer::transfer_id(self.shared.identity.generation, &head, len);
        id.doc = self.shared.cluster_version();
        let offer = self
            .sender
            .handle_offer(peer, id, std::time::Instant::now());
        for closed in offer.closed {
            self.serving.remove(&closed);
        }
        if !offer.send {
            return;
        }
        self.serving.entry(id).or_insert(file);
        tracing::info!(member = %name, snapshot_bytes = len, version = id.doc, reason = why, "offering the cluster state as a chunked snapshot");
        self.send_to_admitted(peer, Request::Offer { id }, Sent::Offer);
    }

    /// A peer fetches a chunk of a snapshot we offered it.
    pub(super) fn on_fetch(
        &mut self,
        peer: PeerId,
        from: &str,
        id: TransferId,
        offset: u64,
    ) -> Response {
        use std::os::unix::fs::FileExt;
        let len = match self
            .sender
            .handle_fetch(&peer, id, offset, std::time::Instant::now())
        {
            Ok(len) => len,
            Err(reason) => {
                tracing::warn!(member = %from, %reason, "refused a snapshot fetch");
                return Response::Refused {
                    reason: reason.to_string(),
                };
            }
        };
        let Some(file) = self.serving.get(&id) else {
            return Response::Refused {
                reason: transfer::Refusal::Unknown.to_string(),
            };
        };
        let mut bytes = vec![0; len];
        if let Err(e) = file.read_exact_at(&mut bytes, offset) {
            tracing::warn!(member = %from, %e, "reading the snapshot for a transfer failed");
            return Response::Refused {
                reason: format!("reading the snapshot: {e}"),
            };
        }
        if let Err(reason) = self.sender.handle_read(&peer, id, offset, &bytes) {
            tracing::error!(member = %from, %reason, path = %self.store.path().display(), "the snapshot being served is damaged on disk: saving the cluster document anew, the transfer starts over");
            self.serving.remove(&id);
            self.mark_dirty(DocId::Cluster);
            self.publish_transfers();
            return Response::Refused {
                reason: reason.to_string(),
            };
        }
        self.shared
            .metrics
            .sync_bytes(Direction::Sent, SyncPath::Snapshot, len);
        self.publish_transfers();
        let chunk = transfer::Chunk::new(id, offset, bytes);
        Response::Chunk {
            id,
            offset,
            bytes: Bytes(chunk.bytes),
            crc: chunk.crc,
        }
    }

    fn peer_name(&self, peer: PeerId) -> String {
        self.peers
            .get(&peer)
            .map(|p| p.name.clone())
            .unwrap_or_else(|| peer.to_string())
    }

    /// Carries out what the receiving core decided.
    pub(super) fn drain_transfer(&mut self) {
        let mut any = false;
        while let Some(out) = self.receiver.poll_output() {
            any = true;
            match out {
                transfer::Output::Fetch { from, id, offset } => {
                    if self.peers.contains_key(&from) {
                        self.send_to_admitted(from, Request::Fetch { id, offset }, Sent::Fetch);
                    } else {
                        self.receiver.handle_peer_lost(&from);
                    }
                }
                transfer::Output::Install {
                    from,
                    id,
                    payload,
                    took,
                } => self.install_snapshot(from, id, payload, took),
                transfer::Output::Progress {
                    from,
                    received,
                    total,
                } => {
                    tracing::info!(
                        member = %self.peer_name(from),
                        received_mib = received >> 20,
                        total_mib = total >> 20,
                        percent = received * 100 / total.max(1),
                        "receiving the cluster state in chunks"
                    );
                }
                transfer::Output::Refused { from, reason } => {
                    tracing::warn!(member = %self.peer_name(from), %reason, "refused state transfer input (nothing changed)");
                }
                transfer::Output::Abandoned { from, reason } => {
                    tracing::warn!(member = %self.peer_name(from), %reason, "state transfer abandoned; the next sync offers a new one");
                }
            }
        }
        if any {
            self.publish_transfers();
        }
    }

    fn install_snapshot(
        &mut self,
        from: PeerId,
        id: TransferId,
        payload: Vec<u8>,
        took: std::time::Duration,
    ) {
        let name = self.peer_name(from);
        self.shared
            .metrics
            .sync_bytes(Direction::Received, SyncPath::Snapshot, id.total as usize);
        let mine = self.shared.cluster_version();
        if id.doc != mine {
            if id.doc > mine {
                self.move_to_received(&name, id, &payload, took);
            } else {
                tracing::info!(member = %name, version = id.doc, mine, "ignored a received snapshot of an older document version");
            }
            self.sync_states.remove(&(from, DocId::Cluster));
            if self.peers.contains_key(&from) {
                self.anti_entropy_with(from);
            }
            return;
        }
        match with_replica(&self.shared, &DocId::Cluster, |r| r.merge_saved(&payload)) {
            Some(Ok(moved)) => {
                tracing::info!(member = %name, bytes = id.total, secs = took.as_secs_f64(), moved, "received the cluster state snapshot; syncing the changes made since");
                if moved {
                    self.mark_dirty(DocId::Cluster);
                }
            }
            Some(Err(e)) => {
                tracing::warn!(member = %name, %e, "the received snapshot does not load (nothing changed)")
            }
            None => {}
        }
        self.sync_states.remove(&(from, DocId::Cluster));
        if self.peers.contains_key(&from) {
            self.anti_entropy_with(from);
        }
    }

    /// A peer offers a snapshot: taken if it is of our document version (it merges) or a newer
    /// one (we move to it); an older one is ignored, a bogus one refused with a logged reason.
    pub(super) fn on_offer(&mut self, peer: PeerId, from: &str, id: TransferId) {
        let mine = self.shared.cluster_version();
        match history::judge(mine, id.doc) {
            history::Verdict::Same | history::Verdict::Ahead => {
                self.receiver
                    .handle_offer(peer, id, std::time::Instant::now());
                self.drain_transfer();
            }
            history::Verdict::Behind => {
                tracing::info!(member = %from, version = id.doc, mine, "ignored an offer of an older cluster document version");
            }
            history::Verdict::Bogus(reason) => {
                tracing::warn!(member = %from, %reason, "refused state transfer input (nothing changed)");
            }
        }
    }

    /// Moves our cluster document onto a received snapshot of a newer version, once the
    /// snapshot passes `history::check_received`: our tail is re-applied on top of it.
    fn move_to_received(
        &mut self,
        name: &str,
        id: TransferId,
        payload: &[u8],
        took: std::time::Duration,
    ) {
        let mut base = match ClusterDoc::load(payload, automerge::ActorId::random()) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(member = %name, %e, "the received snapshot does not load (nothing changed)");
                return;
            }
        };
        let record = base.rebase_record();
        // The leader in office when the base was made (the latest record may name a later one).
        let leader = base.leader_at_base(&self.shared.identity.cluster_id);
        let cluster = base.meta().ok().flatten().map(|m| m.cluster_id);
        let mine = self.shared.cluster_version();
        let checked = history::check_received(&history::Received {
            mine,
            offered: id.doc,
            record: record.as_ref(),
            leader: leader.as_deref(),
            cluster: cluster.as_deref(),
            my_cluster: &self.shared.identity.cluster_id,
        });
        if let Err(reason) = checked {
            tracing::warn!(member = %name, %reason, "refused state transfer input (nothing changed)");
            return;
        }
        let generation = history::generation_of(id.doc);
        // Off the base's lineage (our base lost to a concurrent one, of this generation or an
        // older one): the document we had before our base moves first
        // (`ClusterDoc::move_onto_from`). Up a generation, the document we leave is kept for
        // that case (after the one kept before is loaded).
        let up = generation > history::generation_of(mine);
        let off = record
            .as_ref()
            .is_some_and(|r| self.shared.read(|d| d.is_off_lineage_of(r)));
        let mut previous = if off { self.load_previous() } else { None };
        let store = &self.store;
        let cluster_id = self.shared.identity.cluster_id.clone();
        let moved = self.shared.replace_doc(
            |doc| {
                if doc.version() >= id.doc {
                    return Ok(None);
                }
                let moved = doc.move_onto_from(&cluster_id, base, previous.as_mut())?;
                let info = (moved.rewritten.clone(), moved.tail_unknown);
                Ok(Some((moved, info)))
            },
            |bytes| {
                if up {
                    store.keep_previous()?;
                }
                store.write(bytes)
            },
        );
        match moved {
            Ok(Some((rewritten, unknown))) => {
                if unknown {
                    tracing::error!(member = %name, generation, "this replica was more generations behind than the base records: the writes it held beyond its last base were dropped");
                }
                tracing::info!(member = %name, bytes = id.total, secs = took.as_secs_f64(), generation, version = id.doc, tail_keys = rewritten.len(), keys = ?rewritten.iter().take(16).collect::<Vec<_>>(), "received the cluster state snapshot of a newer document generation: moved onto its base, this replica's tail re-applied");
                self.mark_dirty(DocId::Cluster);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(member = %name, %e, "moving onto the received base failed (nothing changed)")
            }
        }
    }

    /// The document this node had before it moved onto its current base
    /// (`DocStore::keep_previous`), for a move onto a concurrent base that won; `None` (logged)
    /// if none was kept or it does not load: then only the writes since our base are re-applied.
    fn load_previous(&self) -> Option<ClusterDoc> {
        let store = self.store.previous();
        match store.load(automerge::ActorId::random(), chrono::Utc::now()) {
            Ok(loaded) if loaded.doc.is_some() => loaded.doc,
            Ok(_) => {
                tracing::warn!(path = %store.path().display(), "no document of the previous generation was kept: writes folded into our losing base that the winner lacks cannot be re-applied");
                None
            }
            Err(e) => {
                tracing::warn!(%e, path = %store.path().display(), "the document of the previous generation does not load: writes folded into our losing base that the winner lacks cannot be re-applied");
                None
            }
        }
    }

    /// The leader re-bases the cluster document when its saved size has outgrown a fresh
    /// rebuild (`history::should_rebase`), once the gate (`history::may_rebase`) opens. The
    /// rebuild runs on its own thread: only taking the base's inputs and the final swap (with
    /// the tail written meanwhile re-applied) hold the document lock, so writes go on.
    pub(super) fn maybe_rebase_cluster(&mut self) {
        use std::sync::atomic::Ordering;
        let me = self.shared.node_name.clone();
        let view = self.shared.view();
        let recorded = self.shared.read(|d| d.leader_record());
        let leading =
            view.leader.as_deref() == Some(me.as_str()) && recorded.as_deref() == Some(me.as_str());
        if !leading {
            self.leading_since = None;
        } else if self.leading_since.is_none() {
            self.leading_since = Some(std::time::Instant::now());
        }
        if self.rebasing.load(Ordering::Acquire) || !rebase_enabled() {
            return;
        }
        let saved = self.shared.saved_bytes();
        let fresh = self.rebase_fresh.load(Ordering::Acquire);
        if saved < self.rebase_measured {
            // Re-based (or moved onto a base) since: measure from here.
            self.rebase_measured = 0;
        }
        if !history::should_measure(saved, fresh, self.rebase_measured) {
            return;
        }
        let mine = self.shared.cluster_version();
        let live: Vec<String> = self
            .membership
            .members()
            .filter(|m| {
                m.id != *self.membership.me()
                    && matches!(
                        m.state,
                        crate::membership::MemberState::Alive
                            | crate::membership::MemberState::Suspect
                    )
            })
            .map(|m| m.id.clone())
            .collect();
        let gate = history::GateInputs {
            leader: leading,
            in_office: self
                .leading_since
                .map_or(std::time::Duration::ZERO, |t| t.elapsed()),
            settled: self.started.elapsed() >= std::time::Duration::from_secs(20),
            live_peers: live.len(),
            peers_at_my_version: live
                .iter()
                .filter(|n| self.peer_versions.get(*n) == Some(&mine))
                .count(),
            receiving: self.receiver.progress().is_some(),
        };
        if !history::may_rebase(&gate) {
            return;
        }
        self.rebase_measured = saved;
        self.rebasing.store(true, Ordering::Release);
        let shared = self.shared.clone();
        let rebasing = self.rebasing.clone();
        let fresh_out = self.rebase_fresh.clone();
        let dir = self
            .store
            .path()
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .to_path_buf();
        let spawned = std::thread::Builder::new()
            .name("shoal-rebase".into())
            .spawn(move || {
                if let Some(fresh) = rebase_cluster(&shared, &dir, &me, saved, mine) {
                    fresh_out.store(fresh, Ordering::Release);
                }
                rebasing.store(false, Ordering::Release);
            });
        if let Err(e) = spawned {
            tracing::warn!(%e, "could not start the re-base thread");
            self.rebasing.store(false, Ordering::Release);
        }
    }

    /// Expires stalled and idle transfers.
    pub(super) fn transfer_tick(&mut self, now: std::time::Instant) {
        self.receiver.handle_tick(now);
        self.drain_transfer();
        let closed = self.sender.handle_tick(now);
        if !closed.is_empty() {
            for id in closed {
                self.serving.remove(&id);
            }
            self.publish_transfers();
        }
    }

    /// Transfers in progress, for `shoal status`.
    fn publish_transfers(&mut self) {
        let mut all = std::collections::BTreeMap::new();
        if let Some(p) = self.receiver.progress() {
            all.insert(
                self.peer_name(p.from),
                crate::metrics::Transfer {
                    sending: false,
                    done: p.received,
                    total: p.total,
                },
            );
        }
        for p in self.sender.progress() {
            all.insert(
                self.peer_name(p.from),
                crate::metrics::Transfer {
                    sending: true,
                    done: p.received,
                    total: p.total,
                },
            );
        }
        self.shared.metrics.set_transfers(all);
    }

    fn digest(&self) -> Vec<DocDigest> {
        let mut out = vec![DocDigest {
            doc: DocRef {
                id: DocId::Cluster,
                version: self.shared.cluster_version(),
            },
            heads: self.shared.heads_digest(),
        }];
        self.shared.replicate_status(|docs| {
            for (owner, doc) in docs.iter_mut() {
                out.push(DocDigest {
                    doc: DocRef {
                        id: DocId::Status(owner.clone()),
                        version: doc.version(),
                    },
                    heads: doc.heads_digest(),
                });
            }
        });
        out
    }

    pub(super) fn on_digest_request(&mut self, from: &str, docs: Vec<DocDigest>) -> Response {
        if docs.len() > MAX_DIGEST_DOCS {
            return Response::Refused {
                reason: "digest too large".into(),
            };
        }
        let mine: std::collections::BTreeMap<DocId, (u64, u64)> = self
            .digest()
            .into_iter()
            .map(|d| (d.doc.id, (d.doc.version, d.heads)))
            .collect();
        if let Some(cluster) = docs.iter().find(|d| d.doc.id == DocId::Cluster) {
            let mine = self.shared.cluster_version();
            self.judge_cluster_version(from, mine, cluster.doc.version);
        }
        let theirs: std::collections::BTreeMap<DocId, (u64, u64)> = docs
            .into_iter()
            .map(|d| (d.doc.id, (d.doc.version, d.heads)))
            .collect();
        let mut differ: Vec<DocId> = mine
            .iter()
            .filter(|(id, v)| theirs.get(*id) != Some(*v))
            .map(|(id, _)| id.clone())
            .collect();
        differ.extend(theirs.keys().filter(|id| !mine.contains_key(*id)).cloned());
        differ.truncate(MAX_DIGEST_DOCS);
        self.shared.metrics.peer_digest(from, differ.len());
        Response::Digest { differ }
    }

    pub(super) fn on_digest_response(&mut self, peer: PeerId, differ: Vec<DocId>) {
        if let Some(p) = self.peers.get(&peer) {
            self.shared.metrics.peer_digest(&p.name, differ.len());
        }
        for id in differ.into_iter().take(MAX_DIGEST_DOCS) {
            // Forget what we believe was in flight: the push path may have raced this peer.
            if let Some((_, state)) = self.sync_states.get_mut(&(peer, id.clone())) {
                *state = sync::State::decode(&state.encode()).unwrap_or_default();
            }
            self.start_sync(peer, &id);
        }
    }

    pub(super) fn anti_entropy(&mut self) {
        if let Some(peer) = self.peers.keys().copied().choose(&mut rand::thread_rng()) {
            self.anti_entropy_with(peer);
        }
    }

    pub(super) fn anti_entropy_with(&mut self, peer: PeerId) {
        let docs = self.digest();
        self.send_to_admitted(peer, Request::Digest { docs }, Sent::Digest);
    }

    /// The owner re-bases its status document when history outgrew the state.
    pub(super) fn maybe_rebase_own_status(&mut self) {
        let me = &self.shared.node_name;
        let rebased = self.shared.replicate_status(|docs| {
            let own = docs.get_mut(me)?;
            if !own.needs_rebase() {
                return None;
            }
            let fresh = own.rebased(automerge::ActorId::random()).ok()?;
            let before = own.save().len();
            *own = fresh;
            Some((
                own.version(),
                own.changes_since(&[]),
                before,
                own.save().len(),
            ))
        });
        let Some((version, changes, before, after)) = rebased else {
            return;
        };
        tracing::info!(version, before, after, "re-based own status document");
        self.shared.queue_push(
            DocId::Status(self.shared.node_name.clone()),
            version,
            changes,
        );
        self.dirty
            .insert(DocId::Status(self.shared.node_name.clone()));
    }

    /// Writes changed documents to the data dir (at most every `save_gap` unless forced).
    pub(super) fn save(&mut self, force: bool) {
        if self.dirty.is_empty() || (!force && self.last_save.elapsed() < self.save_gap) {
            return;
        }
        self.last_save = std::time::Instant::now();
        self.save_documents(force);
        self.save_gap = save_gap(self.config.save_interval, self.last_save.elapsed());
    }

    fn save_documents(&mut self, force: bool) {
        let peers_due = force || self.last_peer_status_save.elapsed() >= PEER_STATUS_SAVE;
        if peers_due {
            self.last_peer_status_save = std::time::Instant::now();
            self.prune_status_docs();
        }
        for id in std::mem::take(&mut self.dirty) {
            if !saved_now(&id, &self.shared.node_name, peers_due) {
                self.dirty.insert(id);
                continue;
            }
            let (path, bytes) = match &id {
                DocId::Cluster => {
                    let path = self.store.path().to_path_buf();
                    let store = &self.store;
                    if let Err(e) = self.shared.snapshot(|bytes| store.write(bytes)) {
                        tracing::error!(%e, path = %path.display(), "saving the cluster document failed");
                        self.dirty.insert(id);
                    }
                    continue;
                }
                DocId::Status(owner) => {
                    let path = self.status_dir.join(format!("{owner}.cbor"));
                    let encoded = self
                        .shared
                        .replicate_status(|docs| docs.get_mut(owner).map(|d| d.encode()));
                    match encoded {
                        Some(bytes) => (path, bytes),
                        None => continue,
                    }
                }
            };
            let result = bytes
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|b| {
                    crate::state::write_atomic(&path, &crate::state::seal_file(&b), 0o600)
                });
            if let Err(e) = result {
                tracing::error!(%e, path = %path.display(), "saving a document failed");
                self.dirty.insert(id);
            }
        }
    }
}

impl Actor {
    /// Drops the documents (and their files) of nodes deleted and gone.
    fn prune_status_docs(&mut self) {
        for owner in self.shared.prune_status_docs() {
            self.dirty.remove(&DocId::Status(owner.clone()));
            let path = self.status_dir.join(format!("{owner}.cbor"));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(%e, path = %path.display(), "removing a deleted node's status document failed; it is loaded again at restart and dropped again")
                }
            }
            tracing::info!(node = %owner, "dropped the status document of a deleted node that is gone");
        }
    }
}

/// Other nodes' status documents are saved at most this often (their owners save them, and
/// anti-entropy brings a restarted agent whatever its copy missed). During a burst every
/// status document changes all the time, and re-encoding all of them whole on every save
/// took about a sixth of each agent's CPU.
pub(super) const PEER_STATUS_SAVE: Duration = Duration::from_secs(10);

/// Whether a dirty document is written by this save: the cluster document and this node's own
/// status document always; other nodes' status documents when `peers_due`.
fn saved_now(id: &DocId, me: &str, peers_due: bool) -> bool {
    match id {
        DocId::Cluster => true,
        DocId::Status(owner) => peers_due || owner == me,
    }
}

/// A save costs this many times its own time in wait before the next...
const SAVE_GAP_FACTOR: u32 = 10;
/// ...but never more than this.
const MAX_SAVE_GAP: Duration = Duration::from_secs(3);

/// The wait after a save that took `took` before the next: the configured `interval`, or ten
/// times what the save took if that is longer (at most [`MAX_SAVE_GAP`]). Saving re-encodes
/// every changed document whole (automerge's `save`, deflated columns); during a burst every
/// document changes all the time, and saving every 300 ms whatever it costs took a tenth of
/// the network thread's time. Paced, saves keep to about a tenth of it; a restart loses at
/// most the last few seconds of other nodes' changes, which anti-entropy brings back (this
/// node's own cluster writes are in the write-ahead log).
pub(super) fn save_gap(interval: Duration, took: Duration) -> Duration {
    interval.max((took * SAVE_GAP_FACTOR).min(MAX_SAVE_GAP))
}

/// Whether this agent, as leader, re-bases the cluster document: on unless
/// `SHOAL_CLUSTER_REBASE=off` (moving onto a base another agent made is always on).
fn rebase_enabled() -> bool {
    std::env::var("SHOAL_CLUSTER_REBASE").map_or(true, |v| v != "off")
}

/// The leader's re-base, on its own thread: the base's inputs are taken under the document
/// lock, the base is built outside it (writes go on), and if it is under half the saved size
/// the document moves onto it with the writes made meanwhile re-applied as its tail
/// (`Shared::replace_doc`, under the lock). `mine`: the version the gate saw; if the document
/// moved since (a newer base arrived), nothing is done.
/// Returns the fresh size measured, if it got that far.
fn rebase_cluster(
    shared: &Shared,
    dir: &std::path::Path,
    me: &str,
    saved: u64,
    mine: u64,
) -> Option<u64> {
    let began = std::time::Instant::now();
    let (clock, record, entries) = shared.replicate(|d| d.base_inputs());
    let cluster_id = shared.identity.cluster_id.clone();
    let base = ClusterDoc::build_base(
        &cluster_id,
        me,
        clock,
        record.as_ref(),
        entries,
        automerge::ActorId::random(),
    );
    let mut base = match base {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(%e, "building a base of the cluster document failed");
            return None;
        }
    };
    let fresh = base.save().len() as u64;
    if !history::should_rebase(saved, fresh) {
        tracing::info!(
            saved,
            fresh,
            "cluster document measured: its history is within bounds"
        );
        return Some(fresh);
    }
    let generation = history::generation_of(base.version());
    let store = DocStore::new(dir);
    let result = shared.replace_doc(
        |doc| {
            if doc.version() != mine {
                return Ok(None);
            }
            let moved = doc.move_onto(&cluster_id, base)?;
            let tail = moved.rewritten.len();
            Ok(Some((moved, tail)))
        },
        |bytes| {
            store.keep_previous()?;
            store.write(bytes)
        },
    );
    match result {
        Ok(Some(tail)) => tracing::info!(
            generation,
            before = saved,
            fresh,
            after = shared.saved_bytes(),
            tail_keys = tail,
            ms = began.elapsed().as_millis() as u64,
            "re-based the cluster document"
        ),
        Ok(None) => tracing::info!("the cluster document moved meanwhile; re-base dropped"),
        Err(e) => tracing::error!(%e, "re-basing the cluster document failed (nothing changed)"),
    }
    Some(fresh)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_nodes_status_documents_wait_for_their_own_cadence() {
        let own = DocId::Status("n1".into());
        let peer = DocId::Status("n2".into());
        assert!(saved_now(&DocId::Cluster, "n1", false));
        assert!(saved_now(&own, "n1", false));
        assert!(!saved_now(&peer, "n1", false), "a peer's document waits");
        assert!(saved_now(&peer, "n1", true));
    }

    #[test]
    fn saves_wait_ten_times_their_cost_within_the_interval_and_the_cap() {
        let interval = Duration::from_millis(300);
        assert_eq!(save_gap(interval, Duration::from_millis(2)), interval);
        assert_eq!(
            save_gap(interval, Duration::from_millis(80)),
            Duration::from_millis(800)
        );
        assert_eq!(save_gap(interval, Duration::from_secs(2)), MAX_SAVE_GAP);
        assert_eq!(
            save_gap(Duration::from_secs(5), Duration::from_secs(2)),
            Duration::from_secs(5),
            "never below the configured interval"
        );
    }
}
