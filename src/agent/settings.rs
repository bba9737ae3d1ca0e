//! `AgentSettings`: the agent's configuration, one serde struct with defaults. Persisted in the
//! data dir as `agent.json` at first start; flags given on later starts override and are saved.
//!
//! ```json
//! { "name": "n1", "listen_p2p": "0.0.0.0:7946", "listen_api": "0.0.0.0:6443",
//!   "advertise": "10.77.0.11", "join": ["10.77.0.12:7946"] }
//! ```

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSettings {
    /// The node's name (a DNS-1123 subdomain); defaults to the host name.
    pub name: String,
    /// UDP address of the QUIC (libp2p) endpoint.
    pub listen_p2p: SocketAddr,
    /// TCP address of the HTTPS API.
    pub listen_api: SocketAddr,
    /// Address peers and clients use to reach this node; detected when absent.
    pub advertise: Option<IpAddr>,
    /// Members' p2p addresses to contact when no peer is known.
    pub join: Vec<SocketAddr>,
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            name: String::new(),
            listen_p2p: SocketAddr::from(([0, 0, 0, 0], 7946)),
            listen_api: SocketAddr::from(([0, 0, 0, 0], 6443)),
            advertise: None,
            join: Vec::new(),
        }
    }
}

impl AgentSettings {
    /// The advertised address: explicit, else the listen address if specific, else the first
    /// non-loopback IPv4 address of the host, else loopback.
    pub fn advertise_ip(&self) -> IpAddr {
        if let Some(ip) = self.advertise {
            return ip;
        }
        if !self.listen_p2p.ip().is_unspecified() {
            return self.listen_p2p.ip();
        }
        if_addrs::get_if_addrs()
            .ok()
            .and_then(|addrs| {
                addrs
                    .into_iter()
                    .find(|a| !a.is_loopback() && a.ip().is_ipv4())
                    .map(|a| a.ip())
            })
            .unwrap_or(IpAddr::from([127, 0, 0, 1]))
    }
}
