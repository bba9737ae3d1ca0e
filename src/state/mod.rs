//! The replicated cluster state: one automerge document with a flat key space, typed reads and
//! writes, change extraction for the push path, per-peer sync for anti-entropy, persistence to
//! the data dir, and the deterministic rebuild that bounds history (compaction and restore).

mod doc;
mod keys;
mod persist;

pub use doc::{ClusterDoc, ClusterMeta, StateError};
pub use keys::{object_key, ObjectPath};
pub use persist::{write_atomic, DocStore};
