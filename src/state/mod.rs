//! The replicated cluster state: the cluster document (cluster metadata, tokens, node records
//! and users' objects; a flat key space of whole CBOR values), per-node status documents (one
//! writer each, re-based by their owner to bound history), change extraction for the push path,
//! sync for anti-entropy, state transfer in bounded chunks, persistence in the data dir, and the deterministic rebuild that
//! compaction and restore are built on.

mod cbor;
mod doc;
pub mod history;
mod keys;
mod persist;
mod replica;
pub mod secrets;
pub mod shared;
mod status;
pub mod transfer;
mod workloads;

pub use doc::{base_actor, ClusterDoc, ClusterMeta, Moved, StateError};
pub use keys::{object_key, ObjectPath};
pub use persist::{
    is_out_of_space, is_sealed, open_file, seal_file, set_aside, sync_parent, write_atomic,
    DocStore, Loaded, Wal,
};
pub(crate) use replica::from_cbor;
#[cfg(test)]
pub(crate) use replica::to_cbor;
pub use replica::{Replica, MAX_VALUE_BYTES};
pub use shared::{LocalChange, Shared, View};
pub use status::StatusDoc;

/// Identifies one replicated document.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum DocId {
    /// The cluster document (many writers).
    Cluster,
    /// The status document of the named node (one writer: that node).
    Status(String),
}
