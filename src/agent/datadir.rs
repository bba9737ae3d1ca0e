//! The agent's data dir: what lives where, with owner-only permissions for secrets.
//!
//! ```text
//! D/agent.json        AgentSettings (name, listen addresses, join addresses)
//! D/cluster.cbor      ClusterIdentity (cluster id, generation, secret)      0600
//! D/node.key          the node's libp2p ed25519 key (its peer id)         0600
//! D/state.automerge   the replicated cluster document (snapshot, sealed with a CRC-32)  0600
//! D/state.wal         API writes since the snapshot, each entry checksummed, fsynced first
//! D/known-peers.json  the other members' p2p addresses, to resync from after losing the state
//! D/*.corrupt-<time>  a damaged state file or log set aside (kept for inspection)
//! D/status/<node>.cbor status documents (this node's own and replicas of its peers')
//! D/tls/ca.crt        the cluster CA certificate
//! D/tls/server.{crt,key}  this node's API certificate (re-issued at every start)
//! D/join-token        the join token (0600)       D/admin-token  (init node only, 0600)
//! D/lock              held while an agent runs on this data dir
//! ```
//!
//! `state.automerge`, `state.wal` and `status/` live in the state dir instead when one is set
//! (`shoal agent --state-dir S`, saved in `agent.json`).

use std::path::{Path, PathBuf};

use libp2p::identity;

use super::settings::AgentSettings;
use crate::security::ClusterIdentity;
use crate::state::write_atomic;

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("another agent is running on data dir {0}")]
    Locked(String),
}

#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn create(&self) -> Result<(), DataDirError> {
        std::fs::create_dir_all(self.root.join("tls")).map_err(io(&self.root))?;
        std::fs::create_dir_all(self.root.join("status")).map_err(io(&self.root))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))
            .map_err(io(&self.root))
    }

    pub fn is_initialized(&self) -> bool {
        self.path("cluster.cbor").exists()
    }

    /// Takes the data dir's lock for the life of the returned file.
    pub fn lock(&self) -> Result<std::fs::File, DataDirError> {
        let path = self.path("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => {
                Err(DataDirError::Locked(self.root.display().to_string()))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(io(&path)(e)),
        }
    }

    pub fn write(&self, name: &str, bytes: &[u8], mode: u32) -> Result<(), DataDirError> {
        let path = self.path(name);
        write_atomic(&path, bytes, mode).map_err(io(&path))
    }

    pub fn read(&self, name: &str) -> Result<Vec<u8>, DataDirError> {
        let path = self.path(name);
        std::fs::read(&path).map_err(io(&path))
    }

    pub fn identity(&self) -> Result<ClusterIdentity, DataDirError> {
        let bytes = self.read("cluster.cbor")?;
        cbor4ii::serde::from_slice(&bytes).map_err(|e| DataDirError::Corrupt {
            path: self.path("cluster.cbor").display().to_string(),
            reason: e.to_string(),
        })
    }

    pub fn write_identity(&self, identity: &ClusterIdentity) -> Result<(), DataDirError> {
        let bytes =
            cbor4ii::serde::to_vec(Vec::new(), identity).map_err(|e| DataDirError::Corrupt {
                path: "cluster.cbor".into(),
                reason: e.to_string(),
            })?;
        self.write("cluster.cbor", &bytes, 0o600)
    }

    /// The node's libp2p key, created on first use.
    pub fn node_key(&self) -> Result<identity::Keypair, DataDirError> {
        let path = self.path("node.key");
        match std::fs::read(&path) {
            Ok(bytes) => identity::Keypair::from_protobuf_encoding(&bytes).map_err(|e| {
                DataDirError::Corrupt {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                }
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = identity::Keypair::generate_ed25519();
                let bytes = key
                    .to_protobuf_encoding()
                    .map_err(|e| DataDirError::Corrupt {
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    })?;
                self.write("node.key", &bytes, 0o600)?;
                Ok(key)
            }
            Err(e) => Err(io(&path)(e)),
        }
    }

    pub fn settings(&self) -> Result<Option<AgentSettings>, DataDirError> {
        let path = self.path("agent.json");
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| DataDirError::Corrupt {
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    pub fn write_settings(&self, settings: &AgentSettings) -> Result<(), DataDirError> {
        let mut bytes = serde_json::to_vec_pretty(settings).expect("settings serialize");
        bytes.push(b'\n');
        self.write("agent.json", &bytes, 0o644)
    }
}
