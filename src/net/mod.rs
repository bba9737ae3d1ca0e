//! The network shell: one actor owning the libp2p swarm. It admits peers (nothing but the
//! admission exchange flows before a peer proved membership), drives the membership core with
//! messages and time, pushes local document changes to every admitted peer (fast path), runs
//! pairwise automerge sync with a random peer every interval (anti-entropy), persists the
//! document, and publishes the membership view for the API.

mod actor;
mod behaviour;
pub mod gate;
pub mod protocol;

pub use actor::{run, NetConfig, NetError};
pub use behaviour::{build_swarm, Behaviour, BehaviourEvent, SwarmError};

/// The address peers dial to reach a node, as its node record advertises it: `/ip4/…` or
/// `/ip6/…`, UDP, QUIC v1, `/p2p/<peer id>`.
pub fn p2p_addr(addr: std::net::SocketAddr, peer: libp2p::PeerId) -> libp2p::Multiaddr {
    actor::quic_addr(addr).with(libp2p::multiaddr::Protocol::P2p(peer))
}

/// The socket address of a node record's p2p address (`/ip4/A/udp/P/quic-v1/...` as `A:P`,
/// IPv6 too): the inverse of [`p2p_addr`].
pub fn socket_addr(addr: &str) -> Option<std::net::SocketAddr> {
    use libp2p::multiaddr::Protocol;
    let addr: libp2p::Multiaddr = addr.parse().ok()?;
    let mut ip = None;
    let mut port = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(std::net::IpAddr::V4(a)),
            Protocol::Ip6(a) => ip = Some(std::net::IpAddr::V6(a)),
            Protocol::Udp(p) => port = Some(p),
            _ => {}
        }
    }
    Some(std::net::SocketAddr::new(ip?, port?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p2p_addresses_of_both_families() {
        let peer = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let v4 = p2p_addr("10.77.0.2:7946".parse().unwrap(), peer);
        assert_eq!(
            v4.to_string(),
            format!("/ip4/10.77.0.2/udp/7946/quic-v1/p2p/{peer}")
        );
        let v6 = p2p_addr("[fd00::2]:7946".parse().unwrap(), peer);
        assert_eq!(
            v6.to_string(),
            format!("/ip6/fd00::2/udp/7946/quic-v1/p2p/{peer}")
        );
        for a in ["10.77.0.2:7946", "[fd00::2]:7946"] {
            let a: std::net::SocketAddr = a.parse().unwrap();
            assert_eq!(socket_addr(&p2p_addr(a, peer).to_string()), Some(a));
        }
        assert_eq!(socket_addr("/ip4/10.0.0.1/tcp/1"), None, "no UDP port");
        assert_eq!(socket_addr("not an address"), None);
    }
}
