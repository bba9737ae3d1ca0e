//! Persistence of the document in the data dir: whole-document saves written atomically
//! (temp file, fsync, rename, fsync of the directory), so a crash leaves either the old or the
//! new snapshot, never a torn one. A corrupt file is reported, moved aside, never half-used.

use std::io::Write;
use std::path::{Path, PathBuf};

use automerge::ActorId;

use super::{ClusterDoc, StateError};

/// Writes `bytes` to `path` atomically, with `mode` permissions on Unix.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("file")));
    {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
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
        DocStore { path: data_dir.join("state.automerge") }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads the saved document, or `None` if there is none yet. A file that does not load is
    /// reported as an error and left untouched: the agent refuses to start rather than silently
    /// starting empty (the operator moves it away to resync the node from its peers).
    pub fn load(&self, actor: ActorId) -> Result<Option<ClusterDoc>, StateError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StateError::Corrupt { key: self.path.display().to_string(), reason: e.to_string() }),
        };
        match ClusterDoc::load(&bytes, actor) {
            Ok(doc) => Ok(Some(doc)),
            Err(e) => Err(StateError::Corrupt {
                key: self.path.display().to_string(),
                reason: format!("{e}; move it away to resync this node from its peers (every member holds the state)"),
            }),
        }
    }

    pub fn save(&self, doc: &mut ClusterDoc) -> std::io::Result<usize> {
        let bytes = doc.save();
        write_atomic(&self.path, &bytes, 0o600)?;
        Ok(bytes.len())
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
        doc.put_object("namespaces", None, "x", &serde_json::json!({"a": 1})).unwrap();
        store.save(&mut doc).unwrap();
        let back = store.load(ActorId::random()).unwrap().unwrap();
        assert_eq!(back.list_objects("namespaces", None).len(), 1);
        std::fs::write(store.path(), b"garbage").unwrap();
        let err = store.load(ActorId::random()).err().expect("corrupt file must not load");
        assert!(err.to_string().contains("move it away"), "{err}");
        assert_eq!(std::fs::read(store.path()).unwrap(), b"garbage");
    }
}
