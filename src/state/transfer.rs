//! State transfer in bounded chunks (sans-IO): a node whose sync with a peer would need one
//! message larger than [`MAX_SYNC_MESSAGE_BYTES`] (a joiner, a node whose state file was set
//! aside, one that was away for long) receives the peer's sealed snapshot file instead, piece by
//! piece ([`CHUNK_BYTES`] each, one in flight), checks every chunk against the transfer it
//! belongs to and the whole against the file's checksum, and only then merges it; the changes
//! made since the snapshot follow by ordinary sync. [`Receiver`] is the receiving side and
//! [`Sender`] the serving side's bookkeeping; the network actor reads the file and moves bytes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Bytes per chunk: the largest transfer message stays far below the wire limit.
pub const CHUNK_BYTES: usize = 1 << 20;
/// A sync message larger than this is not sent: the peer is offered the snapshot instead.
pub const MAX_SYNC_MESSAGE_BYTES: usize = 4 << 20;
/// Largest snapshot a node accepts to receive (it is assembled in memory).
pub const MAX_SNAPSHOT_BYTES: u64 = 2 << 30;
/// A transfer with no chunk for this long is abandoned (the next sync offers a new one).
pub const STALL: Duration = Duration::from_secs(20);
/// Consecutive failed or refused fetches after which a transfer is abandoned.
pub const MAX_FAILURES: u32 = 3;
/// Most snapshot files a node keeps open for its peers at once.
pub const MAX_SERVING: usize = 4;
/// A served transfer not asked for a chunk for this long is closed.
pub const SERVE_IDLE: Duration = Duration::from_secs(30);
/// An offer not taken up (the peer is receiving from another member) is repeated at most this
/// often.
pub const REOFFER: Duration = Duration::from_secs(5);

/// Names one transfer: a snapshot file as it was when the transfer was offered (its length and
/// a CRC-32 of its header, which holds the payload's checksum: another file is another id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TransferId {
    /// The cluster generation the snapshot belongs to.
    pub generation: u64,
    pub total: u64,
    pub tag: u32,
    /// The version of the document the snapshot holds (`state::history::version`): a
    /// receiver at a lower version moves to it (re-applying its tail), one at a higher version
    /// refuses it. Absent (0) from agents before document generations.
    #[serde(default)]
    pub doc: u64,
}

/// The transfer id of a sealed snapshot file of cluster generation `generation`, from its
/// first bytes (at least the header) and its length.
pub fn transfer_id(generation: u64, head: &[u8], total: u64) -> TransferId {
    let mut h = crc32fast::Hasher::new();
    h.update(&head[..head.len().min(64)]);
    h.update(&total.to_le_bytes());
    TransferId {
        generation,
        total,
        tag: h.finalize(),
        doc: 0,
    }
}

/// One piece of a snapshot, with the CRC-32 of its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub id: TransferId,
    pub offset: u64,
    pub bytes: Vec<u8>,
    pub crc: u32,
}

impl Chunk {
    /// The chunk of `id` at `offset` holding `bytes`, with their checksum.
    pub fn new(id: TransferId, offset: u64, bytes: Vec<u8>) -> Chunk {
        let crc = crc32fast::hash(&bytes);
        Chunk {
            id,
            offset,
            bytes,
            crc,
        }
    }
}

/// Why a chunk, an offer or a request was refused (logged; the assembly is unchanged).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("chunk of transfer {got:?}, expected {want:?}")]
    OtherTransfer { want: TransferId, got: TransferId },
    #[error("snapshot of cluster generation {got}, this node is of generation {want}")]
    OtherGeneration { want: u64, got: u64 },
    #[error("chunk at offset {got}, expected {want}")]
    OutOfOrder { want: u64, got: u64 },
    #[error("chunk of {0} bytes is over the limit")]
    Oversized(usize),
    #[error("chunk at offset {offset} fails its checksum")]
    Checksum { offset: u64 },
    #[error("empty chunk before the end")]
    Empty,
    #[error("chunk ends at {end}, past the snapshot's {total} bytes")]
    PastEnd { end: u64, total: u64 },
    #[error("snapshot of {0} bytes is over the limit")]
    TooLarge(u64),
    #[error("the assembled snapshot is damaged: {0}")]
    Damaged(String),
    #[error("a chunk nobody asked for")]
    Unexpected,
    #[error("no such transfer (closed or never offered)")]
    Unknown,
}

/// A snapshot being received.
#[derive(Debug)]
pub struct Assembly {
    id: TransferId,
    bytes: Vec<u8>,
}

/// What accepting a chunk led to.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Ask for the next chunk at this offset.
    Next(u64),
    /// Every byte is here and the file's checksum holds: the snapshot's payload (a saved
    /// automerge document).
    Done(Vec<u8>),
}

impl Assembly {
    /// Starts receiving the transfer `id` for a node of cluster generation `generation`.
    pub fn new(id: TransferId, generation: u64) -> Result<Assembly, Refusal> {
        if id.generation != generation {
            return Err(Refusal::OtherGeneration {
                want: generation,
                got: id.generation,
            });
        }
        if id.total > MAX_SNAPSHOT_BYTES {
            return Err(Refusal::TooLarge(id.total));
        }
        Ok(Assembly {
            id,
            bytes: Vec::new(),
        })
    }

    pub fn id(&self) -> TransferId {
        self.id
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Takes the next chunk. A refused chunk changes nothing.
    pub fn accept(&mut self, chunk: Chunk) -> Result<Step, Refusal> {
        if chunk.id.generation != self.id.generation {
            return Err(Refusal::OtherGeneration {
                want: self.id.generation,
                got: chunk.id.generation,
            });
        }
        if chunk.id != self.id {
            return Err(Refusal::OtherTransfer {
                want: self.id,
                got: chunk.id,
            });
        }
        if chunk.offset != self.received() {
            return Err(Refusal::OutOfOrder {
                want: self.received(),
                got: chunk.offset,
            });
        }
        if chunk.bytes.len() > CHUNK_BYTES {
            return Err(Refusal::Oversized(chunk.bytes.len()));
        }
        if crc32fast::hash(&chunk.bytes) != chunk.crc {
            return Err(Refusal::Checksum {
                offset: chunk.offset,
            });
        }
        let end = chunk.offset + chunk.bytes.len() as u64;
        if end > self.id.total {
            return Err(Refusal::PastEnd {
                end,
                total: self.id.total,
            });
        }
        if chunk.bytes.is_empty() && end < self.id.total {
            return Err(Refusal::Empty);
        }
        if end < self.id.total {
            self.bytes.extend_from_slice(&chunk.bytes);
            return Ok(Step::Next(end));
        }
        let mut whole = std::mem::take(&mut self.bytes);
        whole.extend_from_slice(&chunk.bytes);
        match sealed_payload(&whole) {
            Ok(()) => {
                whole.drain(..super::persist::FILE_HEADER);
                Ok(Step::Done(whole))
            }
            Err(e) => {
                // Nothing of the last chunk stays.
                whole.truncate(chunk.offset as usize);
                self.bytes = whole;
                Err(Refusal::Damaged(e))
            }
        }
    }
}

/// Checks that `file` is a whole sealed state file (a transfer never carries an unsealed one).
fn sealed_payload(file: &[u8]) -> Result<(), String> {
    if !super::persist::is_sealed(file) {
        return Err("not a sealed snapshot file".into());
    }
    super::persist::open_file(file).map(|_| ())
}

/// What the receiving side asks its shell to do or report.
#[derive(Debug, PartialEq, Eq)]
pub enum Output<P> {
    /// Ask `from` for the chunk of `id` at `offset`.
    Fetch {
        from: P,
        id: TransferId,
        offset: u64,
    },
    /// The snapshot arrived whole and checked: merge `payload` into the cluster document.
    Install {
        from: P,
        id: TransferId,
        payload: Vec<u8>,
        took: Duration,
    },
    /// Progress to log (a transfer started, or crossed another tenth).
    Progress { from: P, received: u64, total: u64 },
    /// Hostile or stale input that was refused and changed nothing (log it with the reason).
    Refused { from: P, reason: Refusal },
    /// The transfer was given up (the next sync offers a new one).
    Abandoned { from: P, reason: String },
}

#[derive(Debug)]
struct Receiving<P> {
    from: P,
    assembly: Assembly,
    started: Instant,
    last: Instant,
    failures: u32,
    /// Tenths of the total reported so far.
    tenths: u64,
}

/// The receiving side: at most one transfer at a time, from one peer.
#[derive(Debug)]
pub struct Receiver<P> {
    generation: u64,
    current: Option<Receiving<P>>,
    out: VecDeque<Output<P>>,
}

/// A transfer in progress, for status and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress<P> {
    pub from: P,
    pub received: u64,
    pub total: u64,
}

impl<P: Clone + Eq + std::fmt::Debug> Receiver<P> {
    /// The receiving side of a node of cluster generation `generation`.
    pub fn new(generation: u64) -> Self {
        Receiver {
            generation,
            current: None,
            out: VecDeque::new(),
        }
    }

    pub fn poll_output(&mut self) -> Option<Output<P>> {
        self.out.pop_front()
    }

    /// When [`Receiver::handle_tick`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.current.as_ref().map(|r| r.last + STALL)
    }

    pub fn progress(&self) -> Option<Progress<P>> {
        self.current.as_ref().map(|r| Progress {
            from: r.from.clone(),
            received: r.assembly.received(),
            total: r.assembly.id().total,
        })
    }

    /// `from` offers its snapshot `id`. Taken unless a transfer is already running (one at a
    /// time: later offers are ignored, and come again with the next sync).
    pub fn handle_offer(&mut self, from: P, id: TransferId, now: Instant) {
        if self.current.is_some() {
            return;
        }
        match Assembly::new(id, self.generation) {
            Err(reason) => self.out.push_back(Output::Refused { from, reason }),
            Ok(assembly) => {
                self.out.push_back(Output::Progress {
                    from: from.clone(),
                    received: 0,
                    total: id.total,
                });
                self.out.push_back(Output::Fetch {
                    from: from.clone(),
                    id,
                    offset: 0,
                });
                self.current = Some(Receiving {
                    from,
                    assembly,
                    started: now,
                    last: now,
                    failures: 0,
                    tenths: 0,
                });
            }
        }
    }

    /// A chunk arrived from `from`.
    pub fn handle_chunk(&mut self, from: P, chunk: Chunk, now: Instant) {
        let Some(r) = self.current.as_mut().filter(|r| r.from == from) else {
            self.out.push_back(Output::Refused {
                from,
                reason: Refusal::Unexpected,
            });
            return;
        };
        match r.assembly.accept(chunk) {
            Ok(Step::Next(offset)) => {
                r.last = now;
                r.failures = 0;
                let total = r.assembly.id().total.max(1);
                let tenths = offset * 10 / total;
                if tenths > r.tenths {
                    r.tenths = tenths;
                    self.out.push_back(Output::Progress {
                        from: from.clone(),
                        received: offset,
                        total,
                    });
                }
                self.out.push_back(Output::Fetch {
                    from,
                    id: r.assembly.id(),
                    offset,
                });
            }
            Ok(Step::Done(payload)) => {
                let took = now.saturating_duration_since(r.started);
                let id = r.assembly.id();
                self.current = None;
                self.out.push_back(Output::Install {
                    from,
                    id,
                    payload,
                    took,
                });
            }
            Err(Refusal::Damaged(reason)) => {
                self.current = None;
                self.out.push_back(Output::Refused {
                    from: from.clone(),
                    reason: Refusal::Damaged(reason.clone()),
                });
                self.out.push_back(Output::Abandoned {
                    from,
                    reason: format!("the assembled snapshot is damaged: {reason}"),
                });
            }
            Err(reason) => {
                self.out.push_back(Output::Refused {
                    from: from.clone(),
                    reason,
                });
                self.failed(from, "too many refused chunks".into());
            }
        }
    }

    /// A fetch from `from` failed (timeout, connection lost) or was refused.
    pub fn handle_fetch_failed(&mut self, from: P, reason: &str) {
        if self.current.as_ref().is_some_and(|r| r.from == from) {
            self.failed(from, format!("fetches keep failing: {reason}"));
        }
    }

    /// Asks again for the expected chunk, or gives up after [`MAX_FAILURES`] in a row.
    fn failed(&mut self, from: P, reason: String) {
        let Some(r) = self.current.as_mut() else {
            return;
        };
        r.failures += 1;
        if r.failures >= MAX_FAILURES {
            self.current = None;
            self.out.push_back(Output::Abandoned { from, reason });
            return;
        }
        self.out.push_back(Output::Fetch {
            from,
            id: r.assembly.id(),
            offset: r.assembly.received(),
        });
    }

    /// The connection to `from` is gone: its transfer cannot go on.
    pub fn handle_peer_lost(&mut self, from: &P) {
        if self.current.as_ref().is_some_and(|r| r.from == *from) {
            self.current = None;
            self.out.push_back(Output::Abandoned {
                from: from.clone(),
                reason: "the connection to the sender closed".into(),
            });
        }
    }

    /// Gives up a transfer that stalled.
    pub fn handle_tick(&mut self, now: Instant) {
        if let Some(r) = self.current.as_ref() {
            if now.saturating_duration_since(r.last) >= STALL {
                let from = r.from.clone();
                self.current = None;
                self.out.push_back(Output::Abandoned {
                    from,
                    reason: format!("no chunk for {} s", STALL.as_secs()),
                });
            }
        }
    }
}

#[derive(Debug)]
struct Serving<P> {
    id: TransferId,
    to: P,
    offered: Instant,
    used: Option<Instant>,
    /// Bytes served so far (the end of the last chunk).
    served: u64,
    /// The served file's own check, while it is served in order from its first byte.
    check: Option<FileCheck>,
}

/// The CRC-32 of a sealed file's payload, computed over the chunks as they are served, against
/// the one its header holds: a server whose snapshot file rotted on disk finds out by serving
/// it, not only the receivers it fails.
#[derive(Debug)]
struct FileCheck {
    want: u32,
    hasher: crc32fast::Hasher,
    /// The end of the bytes hashed so far.
    next: u64,
}

/// The serving side's bookkeeping: which snapshot files are open for which peer. One transfer
/// (one snapshot file) is often served to several peers at once (every member behind a re-base
/// fetches the same snapshot): each (transfer, peer) pair is served on its own. The shell holds
/// the open files, one per transfer id (so a snapshot replaced on disk meanwhile stays
/// readable), and closes the ones this returns: a transfer no peer is served any more.
#[derive(Debug)]
pub struct Sender<P> {
    /// At most [`MAX_SERVING`] entries, at most one per (transfer, peer).
    open: Vec<Serving<P>>,
}

impl<P: Clone + Eq> Default for Sender<P> {
    fn default() -> Self {
        Sender { open: Vec::new() }
    }
}

/// What [`Sender::handle_offer`] decided.
#[derive(Debug, PartialEq, Eq)]
pub struct Offer {
    /// Send the offer (false: the peer is already being served, or the id is open for it).
    pub send: bool,
    /// Transfers closed to make room (close their files).
    pub closed: Vec<TransferId>,
}

impl<P: Clone + Eq> Sender<P> {
    /// Whether to offer snapshot `id` to `to` now. A peer that fetched from us lately is not
    /// offered another transfer (it is receiving one), nor one offered an untaken transfer
    /// less than [`REOFFER`] ago; the least recently used transfer is closed when
    /// [`MAX_SERVING`] are open.
    pub fn handle_offer(&mut self, to: P, id: TransferId, now: Instant) -> Offer {
        if self.is_busy(&to, now) {
            return Offer {
                send: false,
                closed: Vec::new(),
            };
        }
        if let Some(s) = self.entry(&to, id) {
            s.offered = now;
            return Offer {
                send: true,
                closed: Vec::new(),
            };
        }
        let mut dropped = Vec::new();
        while self.open.len() >= MAX_SERVING {
            let oldest = (0..self.open.len())
                .min_by_key(|&i| self.open[i].used.unwrap_or(self.open[i].offered));
            match oldest {
                Some(i) => dropped.push(self.open.remove(i).id),
                None => break,
            }
        }
        self.open.push(Serving {
            id,
            to,
            offered: now,
            used: None,
            served: 0,
            check: None,
        });
        Offer {
            send: true,
            closed: self.unused(dropped),
        }
    }

    fn entry(&mut self, to: &P, id: TransferId) -> Option<&mut Serving<P>> {
        self.open.iter_mut().find(|s| s.id == id && s.to == *to)
    }

    /// Of the transfers in `ids`, those no peer is served any more (sorted, each once).
    fn unused(&self, mut ids: Vec<TransferId>) -> Vec<TransferId> {
        ids.sort();
        ids.dedup();
        ids.retain(|id| !self.is_open(id));
        ids
    }

    /// Whether `to` is fetching a transfer from us, or was offered one less than [`REOFFER`]
    /// ago: no other offer for it, and no point in computing a sync of the cluster document.
    pub fn is_busy(&self, to: &P, now: Instant) -> bool {
        self.open.iter().any(|s| {
            s.to == *to
                && match s.used {
                    Some(t) => now.saturating_duration_since(t) < SERVE_IDLE,
                    None => now.saturating_duration_since(s.offered) < REOFFER,
                }
        })
    }

    /// Whether transfer `id` is open for some peer (the shell holds its file).
    pub fn is_open(&self, id: &TransferId) -> bool {
        self.open.iter().any(|s| s.id == *id)
    }

    /// `from` asks for the chunk of `id` at `offset`: the length to read there, or why not.
    pub fn handle_fetch(
        &mut self,
        from: &P,
        id: TransferId,
        offset: u64,
        now: Instant,
    ) -> Result<usize, Refusal> {
        let s = self.entry(from, id).ok_or(Refusal::Unknown)?;
        if offset > id.total {
            return Err(Refusal::PastEnd {
                end: offset,
                total: id.total,
            });
        }
        let len = (id.total - offset).min(CHUNK_BYTES as u64) as usize;
        s.used = Some(now);
        s.served = offset + len as u64;
        Ok(len)
    }

    /// The shell read `bytes` of transfer `id` at `offset` to serve them to `to`. Served in
    /// order, the file's payload is checked against its header's CRC-32; `Err` when the last
    /// byte is read and it fails: the file on this node's disk is damaged (the transfer is
    /// closed for every peer: save the document anew and do not send the chunk).
    pub fn handle_read(
        &mut self,
        to: &P,
        id: TransferId,
        offset: u64,
        bytes: &[u8],
    ) -> Result<(), Refusal> {
        let Some(s) = self.entry(to, id) else {
            return Ok(());
        };
        let header = super::persist::FILE_HEADER;
        if offset == 0 {
            s.check = (bytes.len() >= header).then(|| {
                let mut hasher = crc32fast::Hasher::new();
                hasher.update(&bytes[header..]);
                FileCheck {
                    want: u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]),
                    hasher,
                    next: bytes.len() as u64,
                }
            });
        } else if let Some(c) = s.check.as_mut() {
            if offset == c.next {
                c.hasher.update(bytes);
                c.next += bytes.len() as u64;
            } else if offset > c.next {
                // Not served in order (never by our receiver): no check.
                s.check = None;
            }
        }
        match s.check.as_ref() {
            Some(c) if c.next == id.total && c.hasher.clone().finalize() != c.want => {
                self.open.retain(|s| s.id != id);
                Err(Refusal::Damaged(
                    "the snapshot file on the serving node's disk fails its checksum".into(),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Closes transfers idle for [`SERVE_IDLE`] or served to the end; returns the ones no peer
    /// is served any more.
    pub fn handle_tick(&mut self, now: Instant) -> Vec<TransferId> {
        let mut done = Vec::new();
        self.open.retain(|s| {
            let over = now.saturating_duration_since(s.used.unwrap_or(s.offered)) >= SERVE_IDLE
                || (s.used.is_some() && s.served >= s.id.total);
            if over {
                done.push(s.id);
            }
            !over
        });
        self.unused(done)
    }

    /// Transfers being served: peer, bytes served, total.
    pub fn progress(&self) -> Vec<Progress<P>> {
        self.open
            .iter()
            .filter(|s| s.used.is_some())
            .map(|s| Progress {
                from: s.to.clone(),
                received: s.served,
                total: s.id.total,
            })
            .collect()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.open
            .iter()
            .map(|s| s.used.unwrap_or(s.offered) + SERVE_IDLE)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{seal_file, ClusterDoc};
    use automerge::ActorId;

    /// A sealed snapshot of `objects` ConfigMaps of 3000 pseudo-random letters each (little
    /// for the document's compression to take: many 4 KiB chunks).
    fn snapshot(objects: usize) -> Vec<u8> {
        let mut doc = ClusterDoc::empty(ActorId::random());
        let mut seed = 11u64;
        for i in 0..objects {
            let value: String = (0..3000 + i)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    char::from(b'a' + ((seed >> 33) % 26) as u8)
                })
                .collect();
            doc.put_object(
                "configmaps",
                Some("default"),
                &format!("c{i}"),
                &serde_json::json!({ "data": value }),
            )
            .unwrap();
        }
        seal_file(&doc.save())
    }

    fn chunks(id: TransferId, file: &[u8], size: usize) -> Vec<Chunk> {
        file.chunks(size)
            .enumerate()
            .map(|(i, b)| Chunk::new(id, (i * size) as u64, b.to_vec()))
            .collect()
    }

    fn drain(r: &mut Receiver<&'static str>) -> Vec<Output<&'static str>> {
        std::iter::from_fn(|| r.poll_output()).collect()
    }

    /// Serves `file` to a receiver through both cores, as the actor does; returns the payload.
    fn transfer(file: &[u8]) -> (Vec<u8>, Vec<Output<&'static str>>) {
        let now = Instant::now();
        let id = transfer_id(3, file, file.len() as u64);
        let mut sender: Sender<&str> = Sender::default();
        assert!(sender.handle_offer("joiner", id, now).send);
        let mut rx: Receiver<&str> = Receiver::new(3);
        rx.handle_offer("member", id, now);
        let mut log = Vec::new();
        for _ in 0..10_000 {
            let outs = drain(&mut rx);
            let mut next = None;
            for o in outs {
                match o {
                    Output::Fetch { id, offset, .. } => next = Some((id, offset)),
                    Output::Install { payload, .. } => return (payload, log),
                    other => log.push(other),
                }
            }
            let (id, offset) = next.expect("a fetch");
            let len = sender.handle_fetch(&"joiner", id, offset, now).unwrap();
            let bytes = file[offset as usize..offset as usize + len].to_vec();
            rx.handle_chunk("member", Chunk::new(id, offset, bytes), now);
        }
        panic!("no end");
    }

    #[test]
    fn a_snapshot_in_chunks_arrives_whole_with_progress() {
        // Big enough for several 1 MiB chunks (incompressible values).
        let mut doc = ClusterDoc::empty(ActorId::random());
        let mut seed = 7u64;
        for i in 0..5 {
            let value: String = (0..700_000)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    char::from(b'a' + ((seed >> 33) % 26) as u8)
                })
                .collect();
            doc.put_object(
                "configmaps",
                Some("default"),
                &format!("big{i}"),
                &serde_json::json!({ "data": value }),
            )
            .unwrap();
        }
        let file = seal_file(&doc.save());
        assert!(file.len() > 2 * CHUNK_BYTES, "{}", file.len());
        let (payload, log) = transfer(&file);
        let back = ClusterDoc::load(&payload, ActorId::random()).unwrap();
        assert_eq!(back.list_objects("configmaps", Some("default")).len(), 5);
        let progress = log
            .iter()
            .filter(|o| matches!(o, Output::Progress { .. }))
            .count();
        assert!(progress >= 2, "{log:?}");
        assert!(!log.iter().any(|o| matches!(o, Output::Refused { .. })));
    }

    #[test]
    fn merging_a_snapshot_into_a_replica_brings_its_state_and_keeps_local_writes() {
        let (payload, _) = transfer(&snapshot(30));
        let mut mine = ClusterDoc::empty(ActorId::random());
        mine.put_object(
            "configmaps",
            Some("default"),
            "local",
            &serde_json::json!({}),
        )
        .unwrap();
        assert!(mine.merge_saved(&payload).unwrap());
        assert_eq!(mine.list_objects("configmaps", Some("default")).len(), 31);
        assert!(
            !mine.merge_saved(&payload).unwrap(),
            "a second merge is a no-op"
        );
    }

    #[test]
    fn hostile_chunks_are_refused_and_change_nothing() {
        let now = Instant::now();
        let file = snapshot(20);
        let id = transfer_id(3, &file, file.len() as u64);
        let parts = chunks(id, &file, 4096);
        assert!(parts.len() >= 5, "{} chunks", parts.len());
        let mut a = Assembly::new(id, 3).unwrap();
        assert_eq!(a.accept(parts[0].clone()), Ok(Step::Next(4096)));
        // Out of order: a later chunk, a repeated one.
        assert!(matches!(
            a.accept(parts[2].clone()),
            Err(Refusal::OutOfOrder { want: 4096, .. })
        ));
        assert!(matches!(
            a.accept(parts[0].clone()),
            Err(Refusal::OutOfOrder { .. })
        ));
        // Another transfer (the member saved a new snapshot meanwhile), another generation.
        let other = TransferId {
            tag: id.tag ^ 1,
            ..id
        };
        assert!(matches!(
            a.accept(Chunk {
                id: other,
                ..parts[1].clone()
            }),
            Err(Refusal::OtherTransfer { .. })
        ));
        let old_gen = TransferId {
            generation: 2,
            ..id
        };
        assert!(matches!(
            a.accept(Chunk {
                id: old_gen,
                ..parts[1].clone()
            }),
            Err(Refusal::OtherGeneration { want: 3, got: 2 })
        ));
        // Oversized, empty, past the end.
        assert!(matches!(
            a.accept(Chunk {
                bytes: vec![0; CHUNK_BYTES + 1],
                ..parts[1].clone()
            }),
            Err(Refusal::Oversized(_))
        ));
        assert_eq!(
            a.accept(Chunk::new(id, parts[1].offset, Vec::new())),
            Err(Refusal::Empty)
        );
        let big = TransferId { total: 10, ..id };
        let mut small = Assembly::new(big, 3).unwrap();
        assert!(matches!(
            small.accept(Chunk::new(big, 0, vec![1; 11])),
            Err(Refusal::PastEnd { end: 11, total: 10 })
        ));
        assert_eq!(small.received(), 0);
        // A chunk whose bytes do not match its checksum (one bit flipped, or the checksum
        // forged): refused before it is kept.
        let mut flipped = parts[1].clone();
        flipped.bytes[17] ^= 0x10;
        assert_eq!(a.accept(flipped), Err(Refusal::Checksum { offset: 4096 }));
        assert_eq!(
            a.accept(Chunk {
                crc: parts[1].crc ^ 1,
                ..parts[1].clone()
            }),
            Err(Refusal::Checksum { offset: 4096 })
        );
        // None of it moved the assembly: the rest completes it.
        assert_eq!(a.received(), 4096);
        let mut done = None;
        for c in parts[1..].iter().cloned() {
            if let Step::Done(p) = a.accept(c).unwrap() {
                done = Some(p);
            }
        }
        assert!(ClusterDoc::load(&done.unwrap(), ActorId::random()).is_ok());

        // Through the receiver: offers for another generation or of an oversized total are
        // refused and start nothing; a chunk from a peer nobody asked is refused.
        let mut rx: Receiver<&str> = Receiver::new(3);
        rx.handle_offer("m", old_gen, now);
        rx.handle_offer(
            "m",
            TransferId {
                total: MAX_SNAPSHOT_BYTES + 1,
                ..id
            },
            now,
        );
        rx.handle_chunk("m", parts[0].clone(), now);
        let outs = drain(&mut rx);
        assert!(matches!(
            outs[0],
            Output::Refused {
                reason: Refusal::OtherGeneration { want: 3, got: 2 },
                ..
            }
        ));
        assert!(matches!(
            outs[1],
            Output::Refused {
                reason: Refusal::TooLarge(_),
                ..
            }
        ));
        assert!(matches!(
            outs[2],
            Output::Refused {
                reason: Refusal::Unexpected,
                ..
            }
        ));
        assert_eq!(outs.len(), 3);
        assert!(rx.progress().is_none());
        // A running transfer: a chunk from another peer, an out-of-order one: refused, the
        // expected chunk is asked again, nothing moved.
        rx.handle_offer("m", id, now);
        drain(&mut rx);
        rx.handle_chunk("intruder", parts[0].clone(), now);
        rx.handle_chunk("m", parts[1].clone(), now);
        let outs = drain(&mut rx);
        assert!(matches!(
            outs[0],
            Output::Refused {
                from: "intruder",
                reason: Refusal::Unexpected
            }
        ));
        assert!(matches!(
            outs[1],
            Output::Refused {
                reason: Refusal::OutOfOrder { want: 0, got: 4096 },
                ..
            }
        ));
        assert!(matches!(outs[2], Output::Fetch { offset: 0, .. }));
        assert_eq!(outs.len(), 3);
        assert_eq!(rx.progress().unwrap().received, 0);
        // A damaged chunk: refused, asked again.
        let mut flipped = parts[0].clone();
        flipped.bytes[0] ^= 1;
        rx.handle_chunk("m", flipped, now);
        let outs = drain(&mut rx);
        assert!(matches!(
            outs[..],
            [
                Output::Refused {
                    reason: Refusal::Checksum { offset: 0 },
                    ..
                },
                Output::Fetch { offset: 0, .. }
            ]
        ));
        assert_eq!(rx.progress().unwrap().received, 0);
        // A later offer while one runs is ignored.
        rx.handle_offer("other", TransferId { tag: 9, ..id }, now);
        assert!(drain(&mut rx).is_empty());
        assert_eq!(rx.progress().unwrap().from, "m");
        // Refusals in a row (the third here) end the transfer.
        rx.handle_chunk("m", parts[3].clone(), now);
        let outs = drain(&mut rx);
        assert!(
            matches!(outs.last(), Some(Output::Abandoned { .. })),
            "{outs:?}"
        );
        assert!(!outs.iter().any(|o| matches!(o, Output::Install { .. })));
        assert!(rx.progress().is_none());
    }

    #[test]
    fn a_damaged_or_truncated_snapshot_is_refused_at_the_end() {
        let file = snapshot(20);
        let id = transfer_id(3, &file, file.len() as u64);
        let mut parts = chunks(id, &file, 4096);
        // A flipped byte in the middle of the file, as a server reading a rotten file sends
        // it (the chunk's own CRC is of the bytes read): every chunk is in order and passes,
        // the file's checksum fails.
        let mut rotten = parts[1].bytes.clone();
        rotten[100] ^= 1;
        parts[1] = Chunk::new(id, parts[1].offset, rotten);
        let mut a = Assembly::new(id, 3).unwrap();
        let mut result = Ok(Step::Next(0));
        for c in parts.iter().cloned() {
            result = a.accept(c);
        }
        assert!(matches!(result, Err(Refusal::Damaged(_))), "{result:?}");
        // A sender that claims a shorter file (a truncated snapshot): the seal says so.
        let cut = &file[..file.len() - 10];
        let short = transfer_id(3, cut, cut.len() as u64);
        let mut a = Assembly::new(short, 3).unwrap();
        let mut result = Ok(Step::Next(0));
        for c in chunks(short, cut, 4096) {
            result = a.accept(c);
        }
        assert!(matches!(result, Err(Refusal::Damaged(_))), "{result:?}");
        // An unsealed file is never taken.
        let raw = &file[crate::state::persist::FILE_HEADER..];
        let rid = transfer_id(3, raw, raw.len() as u64);
        let mut a = Assembly::new(rid, 3).unwrap();
        let mut result = Ok(Step::Next(0));
        for c in chunks(rid, raw, 4096) {
            result = a.accept(c);
        }
        assert!(matches!(result, Err(Refusal::Damaged(_))), "{result:?}");
        // Through the receiver: the damage is refused, the transfer abandoned, nothing
        // installed.
        let now = Instant::now();
        let mut rx: Receiver<&str> = Receiver::new(3);
        rx.handle_offer("m", id, now);
        for c in parts {
            rx.handle_chunk("m", c, now);
        }
        let outs = drain(&mut rx);
        assert!(!outs.iter().any(|o| matches!(o, Output::Install { .. })));
        assert!(matches!(outs.last(), Some(Output::Abandoned { .. })));
    }

    #[test]
    fn failures_and_stalls_end_a_transfer_and_free_the_receiver() {
        let now = Instant::now();
        let file = snapshot(5);
        let id = transfer_id(3, &file, file.len() as u64);
        let mut rx: Receiver<&str> = Receiver::new(3);
        rx.handle_offer("m", id, now);
        drain(&mut rx);
        rx.handle_fetch_failed("m", "timeout");
        assert!(matches!(
            drain(&mut rx)[..],
            [Output::Fetch { offset: 0, .. }]
        ));
        rx.handle_fetch_failed("m", "timeout");
        rx.handle_fetch_failed("m", "timeout");
        assert!(matches!(
            drain(&mut rx).last(),
            Some(Output::Abandoned { .. })
        ));
        rx.handle_offer("m", id, now);
        assert_eq!(rx.poll_timeout(), Some(now + STALL));
        rx.handle_tick(now + STALL / 2);
        assert!(rx.progress().is_some());
        rx.handle_tick(now + STALL);
        assert!(rx.progress().is_none());
        rx.handle_offer("m", id, now);
        rx.handle_peer_lost(&"m");
        assert!(rx.progress().is_none());
        assert!(matches!(
            drain(&mut rx).last(),
            Some(Output::Abandoned { .. })
        ));
    }

    #[test]
    fn the_sender_serves_only_what_it_offered_and_stays_bounded() {
        let now = Instant::now();
        let id = |tag| TransferId {
            generation: 1,
            total: 3 * CHUNK_BYTES as u64 + 5,
            tag,
            doc: 0,
        };
        let mut s: Sender<&str> = Sender::default();
        assert_eq!(s.handle_fetch(&"a", id(1), 0, now), Err(Refusal::Unknown));
        assert!(s.handle_offer("a", id(1), now).send);
        assert_eq!(s.handle_fetch(&"b", id(1), 0, now), Err(Refusal::Unknown));
        assert_eq!(s.handle_fetch(&"a", id(1), 0, now), Ok(CHUNK_BYTES));
        assert_eq!(
            s.handle_fetch(&"a", id(1), 3 * CHUNK_BYTES as u64, now),
            Ok(5)
        );
        assert!(matches!(
            s.handle_fetch(&"a", id(1), u64::MAX, now),
            Err(Refusal::PastEnd { .. })
        ));
        // Being served: no second offer to the same peer.
        assert!(!s.handle_offer("a", id(2), now).send);
        // Offered but not taken: offered again only after REOFFER.
        assert!(s.handle_offer("z", id(7), now).send);
        assert!(!s.handle_offer("z", id(7), now + REOFFER / 2).send);
        assert!(s.handle_offer("z", id(7), now + REOFFER).send);
        // At most MAX_SERVING open: the least recently used is closed.
        for (tag, peer) in [(3, "b"), (4, "c"), (5, "d")] {
            assert!(s.handle_offer(peer, id(tag), now).send);
        }
        let later = now + Duration::from_secs(1);
        let offer = s.handle_offer("e", id(6), later);
        assert!(offer.send);
        assert_eq!(offer.closed.len(), 1);
        assert!(s.open.len() <= MAX_SERVING);
        // Served to the end, or idle: closed.
        let closed = s.handle_tick(later);
        assert!(closed.is_empty() || closed == vec![id(1)], "{closed:?}");
        // The last offer was to "z", at now + REOFFER.
        let closed = s.handle_tick(now + REOFFER + SERVE_IDLE + Duration::from_secs(1));
        assert!(!closed.is_empty());
        assert!(
            s.open.is_empty(),
            "{:?}",
            s.open.iter().map(|s| s.id).collect::<Vec<_>>()
        );
    }

    /// Every member behind a re-base fetches the same snapshot at once: each is served on its
    /// own, an offer to one never takes the transfer from another (the 01:35 CI run: n2 and n4
    /// took the one entry from each other on every re-offer, neither ever got past the first
    /// chunks, and the testnet never converged).
    #[test]
    fn one_snapshot_is_served_to_several_peers_at_once() {
        let now = Instant::now();
        let id = TransferId {
            generation: 1,
            total: 3 * CHUNK_BYTES as u64,
            tag: 9,
            doc: 4,
        };
        let mut s: Sender<&str> = Sender::default();
        assert!(s.handle_offer("n2", id, now).send);
        let offer = s.handle_offer("n4", id, now);
        assert!(offer.send && offer.closed.is_empty(), "{offer:?}");
        for offset in [0, CHUNK_BYTES as u64, 2 * CHUNK_BYTES as u64] {
            assert_eq!(s.handle_fetch(&"n2", id, offset, now), Ok(CHUNK_BYTES));
            assert_eq!(s.handle_fetch(&"n4", id, offset, now), Ok(CHUNK_BYTES));
            // Being served: neither is offered anything else meanwhile.
            assert!(!s.handle_offer("n2", id, now).send);
            assert!(!s.handle_offer("n4", id, now).send);
        }
        let progress = s.progress();
        assert_eq!(progress.len(), 2);
        assert!(progress.iter().all(|p| p.received == id.total));
        // Both served to the end: closed once, for both.
        assert_eq!(s.handle_tick(now), vec![id]);
        assert!(!s.is_open(&id));
    }

    /// While one peer is still served a transfer, closing it for another does not close the
    /// file the shell holds for it.
    #[test]
    fn a_transfer_stays_open_while_any_peer_is_served() {
        let now = Instant::now();
        let id = |tag| TransferId {
            generation: 1,
            total: 2 * CHUNK_BYTES as u64,
            tag,
            doc: 0,
        };
        let mut s: Sender<&str> = Sender::default();
        assert!(s.handle_offer("a", id(1), now).send);
        assert!(s.handle_offer("b", id(1), now).send);
        assert_eq!(s.handle_fetch(&"a", id(1), 0, now), Ok(CHUNK_BYTES));
        assert_eq!(
            s.handle_fetch(&"a", id(1), CHUNK_BYTES as u64, now),
            Ok(CHUNK_BYTES)
        );
        // "a" is done, "b" has not started: the transfer stays open.
        assert_eq!(s.handle_tick(now), Vec::<TransferId>::new());
        assert!(s.is_open(&id(1)));
        assert_eq!(s.handle_fetch(&"b", id(1), 0, now), Ok(CHUNK_BYTES));
        // Room for others: filling up evicts the least recently used entry, and reports the
        // transfer closed only when no entry of it is left.
        let later = now + Duration::from_secs(1);
        for (tag, peer) in [(2, "c"), (3, "d"), (4, "e")] {
            let offer = s.handle_offer(peer, id(tag), later);
            assert!(offer.send);
            assert!(
                offer.closed.is_empty() || offer.closed == vec![id(1)],
                "{offer:?}"
            );
        }
        assert!(s.open.len() <= MAX_SERVING);
    }

    /// A server whose snapshot file rotted on its disk (a byte flipped after it was sealed)
    /// finds out by serving it: the last read fails the check and closes the transfer. The
    /// intact file passes, also when a chunk is fetched twice.
    #[test]
    fn the_sender_checks_the_file_it_serves() {
        let now = Instant::now();
        let serve = |file: &[u8], twice: u64| -> Result<(), Refusal> {
            let id = transfer_id(1, file, file.len() as u64);
            let mut s: Sender<&str> = Sender::default();
            assert!(s.handle_offer("a", id, now).send);
            let mut offset = 0;
            while offset < id.total {
                let len = s.handle_fetch(&"a", id, offset, now).unwrap();
                let bytes = &file[offset as usize..offset as usize + len];
                s.handle_read(&"a", id, offset, bytes)?;
                if offset == twice {
                    s.handle_read(&"a", id, offset, bytes)?;
                }
                offset += len as u64;
            }
            assert!(s.is_open(&id));
            Ok(())
        };
        // Two chunks (what the file holds does not matter to the server).
        let payload: Vec<u8> = (0..3 * CHUNK_BYTES / 2)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let file = seal_file(&payload);
        assert_eq!(serve(&file, CHUNK_BYTES as u64), Ok(()));
        assert_eq!(serve(&file, 0), Ok(()));
        let mut rotten = file.clone();
        rotten[CHUNK_BYTES + 7] ^= 0x40;
        let id = transfer_id(1, &rotten, rotten.len() as u64);
        let mut s: Sender<&str> = Sender::default();
        s.handle_offer("a", id, now);
        let first = s.handle_fetch(&"a", id, 0, now).unwrap();
        assert_eq!(s.handle_read(&"a", id, 0, &rotten[..first]), Ok(()));
        let rest = s.handle_fetch(&"a", id, first as u64, now).unwrap();
        assert!(matches!(
            s.handle_read(&"a", id, first as u64, &rotten[first..first + rest]),
            Err(Refusal::Damaged(_))
        ));
        assert!(!s.is_open(&id), "a damaged file is not served further");
        assert_eq!(
            s.handle_fetch(&"a", id, first as u64, now),
            Err(Refusal::Unknown)
        );
    }
}
