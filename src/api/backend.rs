//! The seam between the API and the agent: everything the API needs from the cluster.
//! The agent implements it over the replicated document and the membership view; unit tests
//! implement it in memory.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::NodeView;

/// Addresses one stored object. `resource` is the lower-case plural, qualified by its API group
/// unless it is in the core group: `configmaps`, `namespaces`, `deployments.apps`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    pub resource: String,
    /// `None` for cluster-scoped resources (namespaces, nodes).
    pub namespace: Option<String>,
    pub name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("state unavailable: {0}")]
    Unavailable(String),
}

/// One member as the serving agent's membership view has it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub name: String,
    /// `alive`, `suspect`, `dead` or `left`.
    pub state: String,
    pub incarnation: u64,
    pub addr: String,
}

/// The serving agent's view: served at `/shoal/v1/status` and printed by `shoal status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub node: String,
    pub cluster_id: String,
    pub generation: u64,
    /// Local epoch counter: bumps whenever this agent's live set changes.
    pub epoch: u64,
    /// Hash of the live set; agents with equal `view` share the same view.
    pub view: String,
    pub leader: Option<String>,
    pub members: Vec<MemberStatus>,
    /// Heads of the replicated document, hex; equal heads mean equal state.
    pub heads: Vec<String>,
    /// Size of the cluster document as last saved to disk.
    pub doc_bytes: u64,
    pub admitted_peers: Vec<String>,
}

/// What the API needs from the agent. Implementations are cheap to call from request handlers
/// (they read in-memory state; writes are applied locally and replicated in the background).
pub trait Backend: Send + Sync + 'static {
    /// The name of the node serving the API.
    fn node_name(&self) -> String;
    /// Every node record with this agent's readiness view.
    fn nodes(&self) -> Vec<NodeView>;
    /// Removes a node's record (`kubectl delete node`). The node, if alive, re-registers.
    fn delete_node(&self, name: &str) -> Result<(), BackendError>;
    /// All objects of `resource`, in `namespace` if given, else in every namespace.
    fn list_objects(&self, resource: &str, namespace: Option<&str>) -> Vec<Value>;
    fn get_object(&self, key: &ObjectKey) -> Option<Value>;
    /// Stores `object` as a whole under `key`, replacing what was there.
    fn put_object(&self, key: &ObjectKey, object: Value) -> Result<(), BackendError>;
    /// Removes the object; returns what was stored.
    fn delete_object(&self, key: &ObjectKey) -> Result<Option<Value>, BackendError>;
    /// Whether `token` is a valid bearer token of this cluster.
    fn authenticate(&self, token: &str) -> bool;
    fn status(&self) -> AgentStatus;
    /// A snapshot of the whole replicated state (`shoal backup`).
    fn backup(&self) -> Result<Vec<u8>, BackendError>;
    /// Ticks whenever the state or the membership view changed (drives `watch=true`).
    fn changes(&self) -> tokio::sync::watch::Receiver<u64>;
}
