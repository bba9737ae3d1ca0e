//! Persistence of the document in the data dir: whole-document snapshots written atomically
//! (temp file, fsync, rename, fsync of the directory), so a crash leaves either the old or the
//! new snapshot, never a torn one; and a write-ahead log of the changes this agent accepted
//! through its API, fsynced before the API answers, so an acknowledged write survives `kill -9`.
//! A corrupt snapshot is reported and left alone; a torn log tail (a crash mid-append) is
//! dropped with a warning: its write was never acknowledged.

use std::io::{Read, Write};
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
    std::fs::File::open(dir)?.sync_all()
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

    /// Loads the saved document, or `None` if there is none yet. A file that does not load is
    /// reported as an error and left untouched: the agent refuses to start rather than silently
    /// starting empty (the operator moves it away to resync the node from its peers).
    pub fn load(&self, actor: ActorId) -> Result<Option<ClusterDoc>, StateError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(StateError::Corrupt {
                    key: self.path.display().to_string(),
                    reason: e.to_string(),
                })
            }
        };
        let logged = Wal::read(&self.wal_path());
        let mut doc = match bytes {
            Some(bytes) => ClusterDoc::load(&bytes, actor).map_err(|e| StateError::Corrupt {
                key: self.path.display().to_string(),
                reason: format!("{e}; move it away to resync this node from its peers (every member holds the state)"),
            })?,
            None if logged.is_empty() => return Ok(None),
            None => ClusterDoc::empty(actor),
        };
        for change in logged {
            // Changes already in the snapshot apply as no-ops; a bad one is skipped, not fatal.
            if let Err(e) = doc.apply_pushed(std::slice::from_ref(&change)) {
                tracing::warn!(%e, "skipping an unreadable write-ahead log entry");
            }
        }
        Ok(Some(doc))
    }

    pub fn wal_path(&self) -> PathBuf {
        self.path.with_extension("wal")
    }

    pub fn save(&self, doc: &mut ClusterDoc) -> std::io::Result<usize> {
        let bytes = doc.save();
        write_atomic(&self.path, &bytes, 0o600)?;
        Ok(bytes.len())
    }
}

/// The write-ahead log: length-prefixed automerge changes, appended and fsynced.
pub struct Wal {
    path: PathBuf,
    file: Option<std::fs::File>,
}

/// Largest entry accepted when reading the log back (a torn or corrupt length ends the log).
const MAX_WAL_ENTRY: usize = 64 << 20;

impl Wal {
    pub fn new(path: PathBuf) -> Self {
        Wal { path, file: None }
    }

    /// Appends `changes` and fsyncs before returning.
    pub fn append(&mut self, changes: &[Vec<u8>]) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        if self.file.is_none() {
            self.file = Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(&self.path)?,
            );
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        let mut buf = Vec::new();
        for change in changes {
            buf.extend_from_slice(&(change.len() as u32).to_le_bytes());
            buf.extend_from_slice(change);
        }
        file.write_all(&buf)?;
        file.sync_data()
    }

    /// Empties the log (everything in it is in a snapshot that is on disk).
    pub fn truncate(&mut self) -> std::io::Result<()> {
        self.file = None;
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every complete entry of the log at `path`; a torn tail is dropped with a warning.
    pub fn read(path: &Path) -> Vec<Vec<u8>> {
        let mut bytes = Vec::new();
        match std::fs::File::open(path) {
            Ok(mut f) => {
                if let Err(e) = f.read_to_end(&mut bytes) {
                    tracing::warn!(%e, path = %path.display(), "reading the write-ahead log failed");
                    return Vec::new();
                }
            }
            Err(_) => return Vec::new(),
        }
        let mut out = Vec::new();
        let mut rest = &bytes[..];
        while rest.len() >= 4 {
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            if len > MAX_WAL_ENTRY || rest.len() < 4 + len {
                break;
            }
            out.push(rest[4..4 + len].to_vec());
            rest = &rest[4 + len..];
        }
        if !rest.is_empty() {
            tracing::warn!(path = %path.display(), bytes = rest.len(), "dropping a torn write-ahead log tail");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_and_corrupt_file_is_reported_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = DocStore::new(dir.path());
        assert!(store.load(ActorId::random()).unwrap().is_none());
        let mut doc = ClusterDoc::empty(ActorId::random());
        doc.put_object("namespaces", None, "x", &serde_json::json!({"a": 1}))
            .unwrap();
        store.save(&mut doc).unwrap();
        let back = store.load(ActorId::random()).unwrap().unwrap();
        assert_eq!(back.list_objects("namespaces", None).len(), 1);
        std::fs::write(store.path(), b"garbage").unwrap();
        let err = store
            .load(ActorId::random())
            .err()
            .expect("corrupt file must not load");
        assert!(err.to_string().contains("move it away"), "{err}");
        assert_eq!(std::fs::read(store.path()).unwrap(), b"garbage");
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
            .write_all(&[200, 0, 0, 0, 1, 2])
            .unwrap();
        let back = store.load(ActorId::random()).unwrap().unwrap();
        assert_eq!(back.list_objects("namespaces", None).len(), 2);
        wal.truncate().unwrap();
        assert!(!store.wal_path().exists());
        assert_eq!(
            store
                .load(ActorId::random())
                .unwrap()
                .unwrap()
                .list_objects("namespaces", None)
                .len(),
            1
        );
    }
}
