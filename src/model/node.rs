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
    /// Where this node keeps its local-path volumes (`shoal agent --local-path-dir`): the
    /// leader writes it into the volumes it binds here (`spec.local.path`).
    #[serde(default)]
    pub local_path_root: String,
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

/// Key of [`RestartHold`] in a node's own status document.
pub const RESTART_HOLD_KEY: &str = "restart-hold";

/// A planned restart announced by the node itself before it stops ("hold my pods"): while
/// it holds, the leader does not fail the node's pods over (`sched::liveness::held`). It
/// belongs to one life of the agent (`incarnation`, its membership incarnation when it
/// stopped): a later life's death is not covered by it, so the record never needs removing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartHold {
    /// When the node announced it (the node's wall clock).
    pub at: DateTime<Utc>,
    /// How long the node asked its pods to be held, in seconds (`shoal agent
    /// --restart-hold`); peers cap it at `sched::liveness::MAX_RESTART_HOLD`.
    pub seconds: u64,
    /// The membership incarnation the node stopped with.
    pub incarnation: u64,
}

/// Liveness of a member (`membership`'s records carry it; the view the API shows too). The
/// order matters: for one incarnation, a later state wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum MemberState {
    Alive,
    Suspect,
    Dead,
    Left,
}

impl MemberState {
    /// Every state, in order.
    pub const ALL: [MemberState; 4] = [
        MemberState::Alive,
        MemberState::Suspect,
        MemberState::Dead,
        MemberState::Left,
    ];

    /// The name the status route and `shoal status` show: `alive`, `suspect`, `dead`, `left`.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Dead => "dead",
            MemberState::Left => "left",
        }
    }

    /// Alive or suspect: in the live set of a view (epochs, the leader's candidates).
    pub fn is_live(self) -> bool {
        matches!(self, MemberState::Alive | MemberState::Suspect)
    }

    /// Dead or left: gone from the live set.
    pub fn is_gone(self) -> bool {
        !self.is_live()
    }
}

impl std::fmt::Display for MemberState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for MemberState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MemberState::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("unknown member state {s:?}"))
    }
}

/// [`MemberState`] as its lower-case name (the status route's JSON), parsed back once.
mod member_state_name {
    use super::MemberState;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(state: &MemberState, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(state.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<MemberState, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// One member as the serving agent's membership view has it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub name: String,
    /// Shown as `alive`, `suspect`, `dead` or `left`.
    #[serde(with = "member_state_name")]
    pub state: MemberState,
    pub incarnation: u64,
    pub addr: String,
}

/// The resource key under which users' settings of nodes are stored (`obj/nodes/_/<name>`).
pub const NODE_SETTINGS: &str = "nodes";

/// What users set on a node (`kubectl label / annotate / taint / cordon`): stored apart from
/// the node's own record (which stays single-writer) as a user object, replaced as a whole by
/// the agent that served the write, and merged with the record when the node is served or
/// scheduled to. Labels and annotations here are the users' own; the ones the node sets
/// itself are not repeated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeSettings {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub taints: Vec<super::taint::Taint>,
    pub unschedulable: bool,
    /// The resourceVersion of the last write (this serving node's numbering at the time).
    pub resource_version: String,
}

impl NodeSettings {
    /// Reads the stored object; `None` when it is not one (skipped, never fatal).
    pub fn from_object(object: &serde_json::Value) -> Option<(String, NodeSettings)> {
        let meta = &object["metadata"];
        let name = meta["name"].as_str()?.to_string();
        let strings = |v: &serde_json::Value| -> BTreeMap<String, String> {
            v.as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        };
        let taints = super::taint::parse_taints(&object["spec"]["taints"], "spec.taints")
            .unwrap_or_default();
        Some((
            name,
            NodeSettings {
                labels: strings(&meta["labels"]),
                annotations: strings(&meta["annotations"]),
                taints,
                unschedulable: object["spec"]["unschedulable"] == serde_json::json!(true),
                resource_version: meta["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            },
        ))
    }

    /// The object to store for node `name`.
    pub fn to_object(&self, name: &str) -> serde_json::Value {
        let mut spec = serde_json::json!({});
        if !self.taints.is_empty() {
            spec["taints"] = self.taints.iter().map(|t| t.to_json()).collect();
        }
        if self.unschedulable {
            spec["unschedulable"] = serde_json::json!(true);
        }
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": self.labels,
                "annotations": self.annotations,
                "resourceVersion": self.resource_version,
            },
            "spec": spec,
        })
    }

    /// Every stored settings object, by node name.
    pub fn by_node(objects: &[serde_json::Value]) -> BTreeMap<String, NodeSettings> {
        objects
            .iter()
            .filter_map(NodeSettings::from_object)
            .collect()
    }
}

/// Merges users' labels into the node records (the scheduler and the DaemonSet controller
/// match `nodeSelector` against them).
pub fn with_user_labels(
    mut records: Vec<NodeRecord>,
    settings: &BTreeMap<String, NodeSettings>,
) -> Vec<NodeRecord> {
    for r in &mut records {
        if let Some(s) = settings.get(&r.name) {
            r.labels.extend(s.labels.clone());
        }
    }
    records
}
