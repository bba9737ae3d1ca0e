//! Persistence of the document in the data dir: whole-document snapshots written atomically
//! (temp file, fsync, rename, fsync of the directory), so a crash leaves either the old or the
//! new snapshot, never a torn one; and a write-ahead log of the changes this agent accepted
//! through its API, each entry checksummed, appended and fsynced before the change is visible or
//! replicated, so an acknowledged write survives `kill -9` and a failed append leaves nothing.
//! Snapshots and status documents are sealed with a CRC-32; a damaged one is moved aside with a
//! timestamp and the node resyncs from its peers. A torn or corrupt log tail (a crash
//! mid-append) is cut off after the last good entry with a warning: its write was never
//! acknowledged.

use std::io::Write;
use std::path::{Path, PathBuf};

use automerge::ActorId;

use super::{ClusterDoc, StateError};

/// Writes `bytes` to `path` atomically, with `mode` permissions on Unix.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_parent(path)
}

/// The first bytes of a checksummed state file (snapshot or status document).
const FILE_MAGIC: &[u8; 8] = b"SHOALCK1";
pub(crate) const FILE_HEADER: usize = 8 + 8 + 4;

/// Whether `bytes` start like a sealed state file.
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(FILE_MAGIC)
}

/// Wraps a state file's bytes in a checksummed envelope: magic, `len: u64 LE`,
/// `crc32(payload): u32 LE`, payload.
pub fn seal_file(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FILE_HEADER + payload.len());
    out.extend_from_slice(FILE_MAGIC);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payload of a sealed state file, or why it is not intact. A file without the magic is
/// from before the envelope and is returned whole (its own format's checks still apply).
pub fn open_file(bytes: &[u8]) -> Result<&[u8], String> {
    if !bytes.starts_with(FILE_MAGIC) {
        return Ok(bytes);
    }
    if bytes.len() < FILE_HEADER {
        return Err(format!(
            "torn: {} bytes, shorter than the header",
            bytes.len()
        ));
    }
    let len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
    let payload = &bytes[FILE_HEADER..];
    if payload.len() as u64 != len {
        return Err(format!(
            "torn: {} bytes of payload, the header says {len}",
            payload.len()
        ));
    }
    if crc32fast::hash(payload) != crc {
        return Err("checksum mismatch".into());
    }
    Ok(payload)
}

/// Moves a damaged state file aside as `NAME.corrupt-<UTC time>` (kept for inspection) and
/// fsyncs its directory. Returns the new path.
pub fn set_aside(path: &Path, now: chrono::DateTime<chrono::Utc>) -> std::io::Result<PathBuf> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let aside = path.with_file_name(format!(
        "{name}.corrupt-{}",
        now.format("%Y%m%dT%H%M%S%.3fZ")
    ));
    std::fs::rename(path, &aside)?;
    sync_parent(path)?;
    Ok(aside)
}

/// What [`DocStore::load`] found.
pub struct Loaded {
    /// The document, `None` if there was none (or it was set aside).
    pub doc: Option<ClusterDoc>,
    /// A damaged snapshot moved aside, and why it was damaged: the node must resync.
    pub set_aside: Option<(PathBuf, String)>,
    /// Log entries of this node's writes that were on top of a set-aside snapshot: they are
    /// applied again once the state has come back from a peer (their history comes with it).
    pub unmerged: Vec<Vec<u8>>,
}

/// The document file of one data dir.
pub struct DocStore {
    path: PathBuf,
}

impl DocStore {
    pub fn new(data_dir: &Path) -> Self {
        DocStore {
            path: data_dir.join("state.automerge"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads the saved document and replays the log over it. A snapshot that is torn or
    /// corrupt (checksum, or automerge's own checks) is moved aside with a timestamp and the log
    /// with it (its entries are returned to apply after the resync): the node then starts empty
    /// and resyncs from its peers, keeping its name and key. I/O errors (permissions, a failing
    /// disk) are errors: the agent refuses to start rather than guess.
    pub fn load(
        &self,
        actor: ActorId,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Loaded, StateError> {
        let io_err = |path: &Path, e: std::io::Error| StateError::Corrupt {
            key: path.display().to_string(),
            reason: e.to_string(),
        };
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&self.path, e)),
        };
        let wal_path = self.wal_path();
        let logged = Wal::recover(&wal_path).map_err(|e| io_err(&wal_path, e))?;
        let loaded = bytes.map(|bytes| {
            open_file(&bytes).and_then(|payload| {
                ClusterDoc::load(payload, actor.clone()).map_err(|e| e.to_string())
            })
        });
        let mut doc = match loaded {
            Some(Ok(doc)) => doc,
            Some(Err(reason)) => {
                let aside = set_aside(&self.path, now).map_err(|e| io_err(&self.path, e))?;
                if !logged.is_empty() {
                    set_aside(&wal_path, now).map_err(|e| io_err(&wal_path, e))?;
                }
                tracing::error!(path = %self.path.display(), %reason, aside = %aside.display(), "the state file is damaged: moved it aside; this node resyncs from its peers");
                return Ok(Loaded {
                    doc: None,
                    set_aside: Some((aside, reason)),
                    unmerged: logged,
                });
            }
            None if logged.is_empty() => {
                return Ok(Loaded {
                    doc: None,
                    set_aside: None,
                    unmerged: Vec::new(),
                })
            }
            None => ClusterDoc::empty(actor),
        };
        for change in logged {
            // Changes already in the snapshot apply as no-ops; a bad one is skipped, not fatal.
            if let Err(e) = doc.apply_pushed(std::slice::from_ref(&change)) {
                tracing::warn!(%e, "skipping an unreadable write-ahead log entry");
            }
        }
        Ok(Loaded {
            doc: Some(doc),
            set_aside: None,
            unmerged: Vec::new(),
        })
    }

    pub fn wal_path(&self) -> PathBuf {
        self.path.with_extension("wal")
    }

    pub fn save(&self, doc: &mut ClusterDoc) -> std::io::Result<usize> {
        let bytes = doc.save();
        self.write(&bytes)?;
        Ok(bytes.len())
    }

    /// Writes a saved document as the snapshot (sealed, atomically).
    pub fn write(&self, saved: &[u8]) -> std::io::Result<()> {
        write_atomic(&self.path, &seal_file(saved), 0o600)
    }

    /// Where the document of the generation before the current one is kept
    /// ([`DocStore::keep_previous`]).
    pub fn previous(&self) -> DocStore {
        let dir = self
            .path
            .parent()
            .unwrap_or(Path::new("."))
            .join("previous");
        DocStore::new(&dir)
    }

    /// Keeps the document as saved now (snapshot and write-ahead log) as the previous
    /// generation's, replacing the one kept before: called when the document moves up a
    /// generation, before the new snapshot is written, with the log's lock held. The snapshot
    /// is hard-linked (writing the new one renames over the name, the old bytes stay under the
    /// link), the log copied. A replica that later learns its base lost to a concurrent one
    /// moves this document onto the winner (`ClusterDoc::move_onto_from`).
    pub fn keep_previous(&self) -> std::io::Result<()> {
        let previous = self.previous();
        std::fs::create_dir_all(previous.path.parent().unwrap_or(Path::new(".")))?;
        for path in [previous.path.clone(), previous.wal_path()] {
            unless_absent(std::fs::remove_file(&path))?;
        }
        unless_absent(std::fs::hard_link(&self.path, &previous.path))?;
        if unless_absent(std::fs::copy(self.wal_path(), previous.wal_path()))?.is_some() {
            std::fs::File::open(previous.wal_path())?.sync_all()?;
        }
        sync_parent(&previous.path)
    }
}

/// `Ok(None)` where the file was not there; any other error stays one.
fn unless_absent<T>(result: std::io::Result<T>) -> std::io::Result<Option<T>> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The write-ahead log: framed automerge changes, appended and fsynced. Each entry is
/// `len: u32 LE`, `crc32(len bytes ‖ payload): u32 LE`, `payload`. The file always ends at the
/// last good entry: a failed append is cut back off before anything else is appended, and a
/// replay cuts a torn or corrupt tail away, so a bad entry can never shift the framing of
/// entries appended after it.
pub struct Wal {
    path: PathBuf,
    file: Option<std::fs::File>,
    /// Length of the good prefix of the file (where the next entry starts).
    len: u64,
    /// A failed append may have left part of an entry after `len`: cut it before appending.
    torn: bool,
}

/// Largest entry accepted when reading the log back (a torn or corrupt length ends the log).
const MAX_WAL_ENTRY: usize = 64 << 20;
/// Bytes of an entry's frame before its payload.
const WAL_FRAME: usize = 8;

/// Whether `e` means the file system is out of space (or out of the user's quota).
pub fn is_out_of_space(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

fn entry_crc(len: &[u8; 4], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len);
    h.update(payload);
    h.finalize()
}

/// Encodes one log entry (frame and payload).
pub fn wal_entry(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_le_bytes();
    let mut out = Vec::with_capacity(WAL_FRAME + payload.len());
    out.extend_from_slice(&len);
    out.extend_from_slice(&entry_crc(&len, payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Splits log bytes into their good entries and the length of the good prefix: decoding
/// stops at the first entry that is torn (shorter than its length), oversized, or fails its
/// checksum.
pub fn decode_wal(bytes: &[u8]) -> (Vec<Vec<u8>>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= WAL_FRAME {
        let len_bytes: [u8; 4] = bytes[at..at + 4].try_into().expect("4 bytes");
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        let len = u32::from_le_bytes(len_bytes) as usize;
        if len > MAX_WAL_ENTRY || bytes.len() - at - WAL_FRAME < len {
            break;
        }
        let payload = &bytes[at + WAL_FRAME..at + WAL_FRAME + len];
        if entry_crc(&len_bytes, payload) != crc {
            break;
        }
        out.push(payload.to_vec());
        at += WAL_FRAME + len;
    }
    (out, at)
}

/// fsyncs the directory holding `path`, so a created, renamed or removed entry is durable.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

impl Wal {
    /// The log at `path`; its length is read when it is first opened for appending.
    pub fn new(path: PathBuf) -> Self {
        Wal {
            path,
            file: None,
            len: 0,
            torn: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open(&mut self) -> std::io::Result<&mut std::fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        if self.file.is_none() {
            let existed = self.path.exists();
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&self.path)?;
            if !existed {
                sync_parent(&self.path)?;
            }
            self.len = file.metadata()?.len();
            self.file = Some(file);
        }
        Ok(self.file.as_mut().expect("opened above"))
    }

    /// Appends `changes` and fsyncs before returning. On error nothing of this append stays
    /// in the log (or, if even cutting it back failed, it is cut before the next append).
    pub fn append(&mut self, changes: &[Vec<u8>]) -> std::io::Result<()> {
        let mut buf = Vec::new();
        for change in changes {
            if change.len() > MAX_WAL_ENTRY {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "change of {} bytes exceeds the log's entry limit",
                        change.len()
                    ),
                ));
            }
            buf.extend_from_slice(&wal_entry(change));
        }
        self.open()?;
        let good = self.len;
        if self.torn {
            let file = self.file.as_mut().expect("opened above");
            file.set_len(good)?;
            file.sync_data()?;
            self.torn = false;
        }
        let file = self.file.as_mut().expect("opened above");
        let result = file.write_all(&buf).and_then(|()| file.sync_data());
        match result {
            Ok(()) => {
                self.len = good + buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Cut the partial entry off now (this also frees the space it took); if that
                // fails too, the next append does it first.
                self.torn = file.set_len(good).and_then(|()| file.sync_data()).is_err();
                Err(e)
            }
        }
    }

    /// Empties the log (everything in it is in a snapshot that is on disk).
    pub fn truncate(&mut self) -> std::io::Result<()> {
        if self.file.is_none() && !self.path.exists() {
            return Ok(());
        }
        let file = self.open()?;
        file.set_len(0)?;
        file.sync_data()?;
        self.len = 0;
        self.torn = false;
        Ok(())
    }

    /// Every good entry of the log at `path`. A torn or corrupt tail (a crash mid-append, a
    /// damaged sector) is cut off the file with a warning: its writes were never acknowledged,
    /// or the disk lost them, and appending after it would hide later entries from a replay.
    pub fn recover(path: &Path) -> std::io::Result<Vec<Vec<u8>>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let (entries, good) = decode_wal(&bytes);
        if good < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                entries = entries.len(),
                dropped_bytes = bytes.len() - good,
                "cutting a torn or corrupt write-ahead log tail off after the last good entry"
            );
            let file = std::fs::OpenOptions::new().write(true).open(path)?;
            file.set_len(good as u64)?;
            file.sync_all()?;
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn load(store: &DocStore) -> Loaded {
        store.load(ActorId::random(), now()).unwrap()
    }

    #[test]
    fn save_load_and_a_damaged_snapshot_is_set_aside_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = DocStore::new(dir.path());
        assert!(load(&store).doc.is_none());
        let mut doc = ClusterDoc::empty(ActorId::random());
        doc.put_object("namespaces", None, "x", &serde_json::json!({"a": 1}))
            .unwrap();
        store.save(&mut doc).unwrap();
        let back = load(&store).doc.unwrap();
        assert_eq!(back.list_objects("namespaces", None).len(), 1);
        let before = doc.heads();
        doc.put_object("namespaces", None, "y", &serde_json::json!(2))
            .unwrap();
        let logged = doc.changes_since(&before);
        Wal::new(store.wal_path()).append(&logged).unwrap();
        let good = std::fs::read(store.path()).unwrap();
        // Every single flipped byte (header or payload) and every truncation is detected.
        for at in (8..good.len()).step_by(7).chain([good.len() - 1]) {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            assert!(open_file(&bad).is_err(), "flip at {at}");
        }
        for len in [8, FILE_HEADER - 1, FILE_HEADER, good.len() - 1] {
            assert!(open_file(&good[..len]).is_err(), "cut at {len}");
        }
        let mut bad = good.clone();
        bad[FILE_HEADER + 3] ^= 1;
        std::fs::write(store.path(), &bad).unwrap();
        let got = load(&store);
        assert!(got.doc.is_none());
        let (aside, reason) = got.set_aside.expect("set aside");
        assert!(reason.contains("checksum"), "{reason}");
        assert_eq!(
            aside.file_name().unwrap().to_str().unwrap(),
            "state.automerge.corrupt-20270115T080000.000Z"
        );
        assert_eq!(std::fs::read(&aside).unwrap(), bad, "kept for inspection");
        assert_eq!(got.unmerged, logged, "this node's logged writes come back");
        assert!(!store.path().exists() && !store.wal_path().exists());
        // Next start: nothing there, the node is empty until a peer syncs it.
        assert!(load(&store).doc.is_none());
    }

    #[test]
    fn the_previous_generations_document_is_kept_with_its_log_until_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = DocStore::new(dir.path());
        assert!(load(&store.previous()).doc.is_none());
        // Nothing saved yet: keeping nothing is not an error.
        store.keep_previous().unwrap();
        let mut doc = ClusterDoc::empty(ActorId::random());
        doc.put_object("namespaces", None, "x", &serde_json::json!(1))
            .unwrap();
        store.save(&mut doc).unwrap();
        let before = doc.heads();
        doc.put_object("namespaces", None, "y", &serde_json::json!(2))
            .unwrap();
        let mut wal = Wal::new(store.wal_path());
        wal.append(&doc.changes_since(&before)).unwrap();
        // The move up a generation: keep, then the new snapshot replaces the old, log emptied.
        store.keep_previous().unwrap();
        let mut next = ClusterDoc::empty(ActorId::random());
        next.put_object("namespaces", None, "z", &serde_json::json!(3))
            .unwrap();
        store.save(&mut next).unwrap();
        wal.truncate().unwrap();
        let mut kept = load(&store.previous()).doc.unwrap();
        assert_eq!(
            kept.heads_digest(),
            doc.heads_digest(),
            "snapshot and log kept"
        );
        assert_eq!(
            load(&store).doc.unwrap().heads_digest(),
            next.heads_digest()
        );
        // The next move up replaces it.
        store.keep_previous().unwrap();
        assert_eq!(
            load(&store.previous()).doc.unwrap().heads_digest(),
            next.heads_digest()
        );
    }

    #[test]
    fn a_snapshot_from_before_the_envelope_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let store = DocStore::new(dir.path());
        let mut doc = ClusterDoc::empty(ActorId::random());
        doc.put_object("namespaces", None, "x", &serde_json::json!(1))
            .unwrap();
        std::fs::write(store.path(), doc.save()).unwrap();
        assert_eq!(
            load(&store)
                .doc
                .unwrap()
                .list_objects("namespaces", None)
                .len(),
            1
        );
        std::fs::write(store.path(), b"garbage").unwrap();
        assert!(load(&store).set_aside.is_some());
    }

    fn entries(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| vec![i as u8; 10 + i]).collect()
    }

    #[test]
    fn a_torn_tail_is_cut_and_later_appends_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.wal");
        let mut wal = Wal::new(path.clone());
        wal.append(&entries(3)).unwrap();
        let full = std::fs::metadata(&path).unwrap().len();
        // A crash mid-append: the third entry is torn (every cut point inside it).
        let third = (WAL_FRAME + 12) as u64;
        for cut in 1..third {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("state.wal");
            std::fs::copy(&path, &p).unwrap();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .unwrap()
                .set_len(full - cut)
                .unwrap();
            assert_eq!(Wal::recover(&p).unwrap(), entries(2), "cut {cut}");
            assert_eq!(std::fs::metadata(&p).unwrap().len(), full - third);
            // The next append starts where the good entries end: nothing hides it.
            let mut again = Wal::new(p.clone());
            again.append(&[b"after".to_vec()]).unwrap();
            let mut want = entries(2);
            want.push(b"after".to_vec());
            assert_eq!(Wal::recover(&p).unwrap(), want);
        }
    }

    #[test]
    fn a_corrupt_entry_ends_the_replay_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.wal");
        let mut wal = Wal::new(path.clone());
        wal.append(&entries(4)).unwrap();
        let clean = std::fs::read(&path).unwrap();
        let second = WAL_FRAME + 10;
        // Flip one bit anywhere in the second entry (its length, checksum or payload).
        for at in second..second + WAL_FRAME + 11 {
            let mut bytes = clean.clone();
            bytes[at] ^= 0x10;
            let (got, good) = decode_wal(&bytes);
            assert_eq!(got, entries(1), "flip at {at}");
            assert_eq!(good, second);
        }
        // A length pointing past the end of the file, or absurdly large, is no entry either.
        let mut bytes = clean.clone();
        bytes[second..second + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_wal(&bytes).0, entries(1));
        assert_eq!(decode_wal(&clean), (entries(4), clean.len()));
    }

    #[test]
    fn truncate_empties_the_log_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.wal");
        let mut wal = Wal::new(path.clone());
        wal.truncate().unwrap();
        assert!(!path.exists(), "truncating no log creates none");
        wal.append(&entries(2)).unwrap();
        wal.truncate().unwrap();
        assert_eq!(Wal::recover(&path).unwrap(), Vec::<Vec<u8>>::new());
        wal.append(&entries(1)).unwrap();
        assert_eq!(Wal::recover(&path).unwrap(), entries(1));
    }

    #[test]
    fn a_full_disk_fails_the_append_as_out_of_space() {
        // /dev/full answers every write with ENOSPC.
        let mut wal = Wal::new(PathBuf::from("/dev/full"));
        let err = wal.append(&entries(1)).unwrap_err();
        assert!(is_out_of_space(&err), "{err:?}");
    }

    #[test]
    fn logged_writes_survive_without_a_snapshot_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = DocStore::new(dir.path());
        let mut doc = ClusterDoc::empty(ActorId::random());
        doc.put_object("namespaces", None, "a", &serde_json::json!(1))
            .unwrap();
        store.save(&mut doc).unwrap();
        let mut wal = Wal::new(store.wal_path());
        let before = doc.heads();
        doc.put_object("namespaces", None, "b", &serde_json::json!(2))
            .unwrap();
        wal.append(&doc.changes_since(&before)).unwrap();
        // A crash mid-append leaves a torn entry.
        std::fs::OpenOptions::new()
            .append(true)
            .open(store.wal_path())
            .unwrap()
            .write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 5])
            .unwrap();
        let back = load(&store).doc.unwrap();
        assert_eq!(back.list_objects("namespaces", None).len(), 2);
        wal.truncate().unwrap();
        assert_eq!(
            load(&store)
                .doc
                .unwrap()
                .list_objects("namespaces", None)
                .len(),
            1
        );
    }
}
