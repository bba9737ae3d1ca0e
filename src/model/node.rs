//! Node records (written only by the node they describe) and the API's node view.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What a node writes about itself into the replicated document. Only that node writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub uid: String,
    /// libp2p peer id (base58): the node's authenticated identity.
    pub peer_id: String,
    /// QUIC multiaddr peers dial, e.g. `/ip4/10.77.0.2/udp/7946/quic-v1`.
    pub p2p_addr: String,
    /// `host:port` of the node's HTTPS API.
    pub api_addr: String,
    pub internal_ip: String,
    pub created: DateTime<Utc>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Kubernetes quantities: `cpu`, `memory`, `pods`, `ephemeral-storage`.
    #[serde(default)]
    pub capacity: BTreeMap<String, String>,
    #[serde(default)]
    pub system: NodeSystemInfo,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSystemInfo {
    pub os_image: String,
    pub kernel_version: String,
    pub architecture: String,
    pub operating_system: String,
    pub container_runtime_version: String,
    pub shoal_version: String,
    pub machine_id: String,
}

/// Readiness of a node as seen by the agent serving the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Readiness {
    /// Alive in the local membership view.
    Ready,
    /// Suspected: probes are failing but the node is not declared dead yet.
    Suspect,
    /// Dead or never seen alive by this agent.
    NotReady,
}

/// A node as the API shows it: its record plus the serving agent's view of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub record: NodeRecord,
    pub readiness: Readiness,
    /// When `readiness` last changed in this agent's view (wall clock of the serving agent).
    pub since: DateTime<Utc>,
    /// This agent's current view names this node the scheduler leader.
    pub is_leader: bool,
    /// The pod subnet the node holds (`model::ipam`), once it has claimed one.
    pub pod_cidr: Option<String>,
    /// The node's kubelet is behind (its own status document says so): no new pods for now.
    pub pressure: Option<RuntimePressure>,
}

/// Key of [`RuntimePressure`] in a node's own status document (present only while it holds).
pub const PRESSURE_KEY: &str = "pressure";

/// A kubelet that has more runtime actions queued than it can carry out soon (a burst, a slow
/// disk): it takes no new pods until it has caught up (`kubelet::PRESSURE_ON/OFF`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimePressure {
    pub since: DateTime<Utc>,
    /// Runtime actions queued or running when it began.
    pub backlog: u32,
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
