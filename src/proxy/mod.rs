//! Service load balancing, the pure core: the desired state of this node's data path (every
//! Service port with its ready endpoints, the host ports of this node's pods, plus the node's
//! network facts) → a model of the
//! nftables ruleset of table `ip shoal` ([`build`]), and that model → `nft -f` transaction
//! scripts: [`full`] replaces the whole table atomically (start-up), [`diff`] touches only what
//! changed (every later update). No I/O, no clocks; the shell is `agent/proxy.rs`, the layout
//! is described in `docs/networking.md` ("Load balancing (proxy)").

mod input;
mod names;
mod ruleset;
mod script;
#[cfg(test)]
mod tests;

// `core::net` holds only the address value types (no sockets, no I/O).
use core::net::Ipv4Addr;

use ipnet::Ipv4Net;

pub use crate::model::service::Protocol;
pub use input::service_ports;
pub use names::{endpoint_chain, service_chain};
pub use ruleset::{build, Chain, Ruleset, HOST_PORTS, MAPS, POD_TO_AGENT, POD_TO_AGENTS};
pub use script::{diff, full, Change, TABLE};

/// What a node knows about its own network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFacts {
    /// The whole pod address space (`ClusterMeta.cluster_cidr`): sources outside it reaching a
    /// ClusterIP are masqueraded, so replies come back through this node.
    pub cluster_cidr: Ipv4Net,
    /// This node's pod subnet: its pods' traffic leaving the cluster CIDR is masqueraded.
    pub pod_cidr: Ipv4Net,
    /// The bridge the node's pods hang off (for documentation in the ruleset's comments).
    pub bridge: String,
    /// This node's agent ports (p2p UDP, API TCP, metrics TCP): pods (sources in the cluster
    /// CIDR) are refused on them at every local address (chain `pods-to-agent`).
    pub agent_ports: Vec<(Protocol, u16)>,
    /// Every node's advertised agent endpoints (address, protocol, port) from the node
    /// records: pods of this node are refused on them when forwarded (chain `pods-to-agents`),
    /// before the masquerade would hide them behind this node's own address.
    pub agents: Vec<(Ipv4Addr, Protocol, u16)>,
}

/// One ready endpoint of a Service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// Whether the endpoint's pod runs on this node (for `*TrafficPolicy: Local`).
    pub local: bool,
}

/// One port of one Service, with everything the data path needs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServicePort {
    pub namespace: String,
    pub name: String,
    /// `spec.ports[].name` (empty for a single unnamed port).
    pub port_name: String,
    pub protocol: Protocol,
    /// `None`: headless — nothing to program for the ClusterIP.
    pub cluster_ip: Option<Ipv4Addr>,
    pub port: u16,
    pub node_port: Option<u16>,
    /// `sessionAffinity: ClientIP` timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// `externalTrafficPolicy: Local`: NodePort traffic goes to this node's endpoints only,
    /// with the client's source address kept.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`: ClusterIP traffic goes to this node's endpoints only.
    pub internal_local: bool,
    /// The ready endpoints (order does not matter; the planner sorts them).
    pub backends: Vec<Backend>,
}

impl ServicePort {
    /// `namespace/name/protocol/port-name`, the identity chain names are hashed from.
    pub fn id(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.namespace,
            self.name,
            self.protocol.nft(),
            self.port_name
        )
    }
}

/// One `hostPort` of a pod on this node (not a `hostNetwork` pod, which listens on the node
/// itself): traffic to `host_ip` (every local address when `None`) on `host_port` goes to
/// `pod_ip:container_port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPortRule {
    pub protocol: Protocol,
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub pod_ip: Ipv4Addr,
    pub container_port: u16,
}

/// The desired state of this node's data path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub node: NodeFacts,
    pub ports: Vec<ServicePort>,
    /// The host ports of this node's pods (any order; conflicts: the first in sort order wins).
    pub host_ports: Vec<HostPortRule>,
}
