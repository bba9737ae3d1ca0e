//! Admission first, bytes later: the admitted-peer set shared by the actor and the swarm, a
//! wrapper behaviour that refuses `/shoal/1` streams (at protocol negotiation, before a byte of
//! a request is read) from peers that have not been admitted, and connection limits for
//! unadmitted peers (per source address, in total, and a deadline to be admitted by).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::{InboundUpgrade, UpgradeInfo};
use libp2p::core::Endpoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::handler::{
    ConnectionEvent, FullyNegotiatedInbound, InboundUpgradeSend, ListenUpgradeError,
    SubstreamProtocol,
};
use libp2p::swarm::{
    dummy, CloseConnection, ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent,
    ConnectionId, FromSwarm, NetworkBehaviour, Stream, THandler, THandlerInEvent, THandlerOutEvent,
    ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

/// Most connections (being set up, TLS handshake included) from one source address.
pub const MAX_PENDING_PER_ADDRESS: usize = 8;
/// Most established but not yet admitted connections from one source address.
pub const MAX_UNADMITTED_PER_ADDRESS: usize = 8;
/// Most established but not yet admitted connections in total.
pub const MAX_UNADMITTED: usize = 64;
/// A connection whose peer is not admitted by then is closed.
pub const ADMISSION_DEADLINE: Duration = Duration::from_secs(4);

/// The set of admitted peer ids, written by the actor, read by every connection.
#[derive(Clone, Default, Debug)]
pub struct Gate(Arc<RwLock<HashSet<PeerId>>>);

impl Gate {
    pub fn admit(&self, peer: PeerId) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer);
    }

    pub fn remove(&self, peer: &PeerId) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(peer);
    }

    pub fn is_admitted(&self, peer: &PeerId) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(peer)
    }
}

/// The source address of a connection, without port (all QUIC connections of one host share
/// it whatever port or peer id they use).
fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(v4) => Some(IpAddr::V4(v4)),
        Protocol::Ip6(v6) => Some(IpAddr::V6(v6)),
        _ => None,
    })
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Denied(String);

struct Conn {
    peer: PeerId,
    /// Source address of an inbound connection (outbound ones are not capped).
    ip: Option<IpAddr>,
    since: Instant,
    closing: bool,
}

/// Caps on connections of peers that have not been admitted, and the admission deadline.
pub struct AdmissionLimits {
    gate: Gate,
    pending: HashMap<ConnectionId, IpAddr>,
    conns: HashMap<ConnectionId, Conn>,
    deadline: Duration,
    tick: tokio::time::Interval,
}

impl AdmissionLimits {
    pub fn new(gate: Gate, deadline: Duration) -> Self {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        AdmissionLimits {
            gate,
            pending: HashMap::new(),
            conns: HashMap::new(),
            deadline,
            tick,
        }
    }

    fn unadmitted(&self) -> impl Iterator<Item = &Conn> {
        self.conns
            .values()
            .filter(|c| !self.gate.is_admitted(&c.peer))
    }
}

impl NetworkBehaviour for AdmissionLimits {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = std::convert::Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        let Some(ip) = ip_of(remote_addr) else {
            return Ok(());
        };
        let from_ip = self.pending.values().filter(|p| **p == ip).count();
        if from_ip >= MAX_PENDING_PER_ADDRESS {
            return Err(ConnectionDenied::new(Denied(format!(
                "{from_ip} connections from {ip} are already being set up"
            ))));
        }
        self.pending.insert(connection_id, ip);
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.pending.remove(&connection_id);
        let ip = ip_of(remote_addr);
        if !self.gate.is_admitted(&peer) {
            let total = self.unadmitted().count();
            if total >= MAX_UNADMITTED {
                return Err(ConnectionDenied::new(Denied(format!(
                    "{total} connections are waiting for admission"
                ))));
            }
            if let Some(ip) = ip {
                let from_ip = self.unadmitted().filter(|c| c.ip == Some(ip)).count();
                if from_ip >= MAX_UNADMITTED_PER_ADDRESS {
                    return Err(ConnectionDenied::new(Denied(format!(
                        "{from_ip} connections from {ip} are waiting for admission"
                    ))));
                }
            }
        }
        self.conns.insert(
            connection_id,
            Conn {
                peer,
                ip,
                since: Instant::now(),
                closing: false,
            },
        );
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.conns.insert(
            connection_id,
            Conn {
                peer,
                ip: None,
                since: Instant::now(),
                closing: false,
            },
        );
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionClosed(c) => {
                self.conns.remove(&c.connection_id);
            }
            FromSwarm::ListenFailure(f) => {
                self.pending.remove(&f.connection_id);
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer_id: PeerId,
        _connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        while self.tick.poll_tick(cx).is_ready() {}
        let now = Instant::now();
        let gate = &self.gate;
        let expired = self.conns.iter_mut().find(|(_, c)| {
            !c.closing && now.duration_since(c.since) > self.deadline && !gate.is_admitted(&c.peer)
        });
        if let Some((id, c)) = expired {
            c.closing = true;
            tracing::debug!(peer = %c.peer, "closing a connection not admitted in time");
            return Poll::Ready(ToSwarm::CloseConnection {
                peer_id: c.peer,
                connection: CloseConnection::One(*id),
            });
        }
        Poll::Pending
    }
}

/// A behaviour whose inbound streams are offered only to admitted peers: for anyone else the
/// protocol list is empty, so stream negotiation fails before the behaviour's codec reads.
pub struct Gated<B> {
    pub inner: B,
    gate: Gate,
}

impl<B> Gated<B> {
    pub fn new(inner: B, gate: Gate) -> Self {
        Gated { inner, gate }
    }
}

impl<B> std::ops::Deref for Gated<B> {
    type Target = B;
    fn deref(&self) -> &B {
        &self.inner
    }
}

impl<B> std::ops::DerefMut for Gated<B> {
    fn deref_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

impl<B: NetworkBehaviour> NetworkBehaviour for Gated<B> {
    type ConnectionHandler = GatedHandler<THandler<B>>;
    type ToSwarm = B::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let inner = self.inner.handle_established_inbound_connection(
            connection_id,
            peer,
            local_addr,
            remote_addr,
        )?;
        Ok(GatedHandler {
            inner,
            peer,
            gate: self.gate.clone(),
        })
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        )
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let inner = self.inner.handle_established_outbound_connection(
            connection_id,
            peer,
            addr,
            role_override,
            port_use,
        )?;
        Ok(GatedHandler {
            inner,
            peer,
            gate: self.gate.clone(),
        })
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.inner.on_swarm_event(event)
    }

    fn on_connection_handler_event(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner
            .on_connection_handler_event(peer_id, connection_id, event)
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx)
    }
}

pub struct GatedHandler<H> {
    inner: H,
    peer: PeerId,
    gate: Gate,
}

/// An inbound upgrade that offers its protocols only when `open`.
pub struct GatedUpgrade<U> {
    inner: U,
    open: bool,
}

impl<U: InboundUpgradeSend> UpgradeInfo for GatedUpgrade<U> {
    type Info = U::Info;
    type InfoIter = Vec<U::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        if self.open {
            self.inner.protocol_info().collect()
        } else {
            Vec::new()
        }
    }
}

impl<U: InboundUpgradeSend> InboundUpgrade<Stream> for GatedUpgrade<U> {
    type Output = U::Output;
    type Error = U::Error;
    type Future = U::Future;

    fn upgrade_inbound(self, socket: Stream, info: Self::Info) -> Self::Future {
        self.inner.upgrade_inbound(socket, info)
    }
}

impl<H: ConnectionHandler> ConnectionHandler for GatedHandler<H> {
    type FromBehaviour = H::FromBehaviour;
    type ToBehaviour = H::ToBehaviour;
    type InboundProtocol = GatedUpgrade<H::InboundProtocol>;
    type OutboundProtocol = H::OutboundProtocol;
    type InboundOpenInfo = H::InboundOpenInfo;
    type OutboundOpenInfo = H::OutboundOpenInfo;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, Self::InboundOpenInfo> {
        let open = self.gate.is_admitted(&self.peer);
        self.inner
            .listen_protocol()
            .map_upgrade(|inner| GatedUpgrade { inner, open })
    }

    fn connection_keep_alive(&self) -> bool {
        self.inner.connection_keep_alive()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<
        ConnectionHandlerEvent<Self::OutboundProtocol, Self::OutboundOpenInfo, Self::ToBehaviour>,
    > {
        self.inner.poll(cx)
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Option<Self::ToBehaviour>> {
        self.inner.poll_close(cx)
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        self.inner.on_behaviour_event(event)
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<
            Self::InboundProtocol,
            Self::OutboundProtocol,
            Self::InboundOpenInfo,
            Self::OutboundOpenInfo,
        >,
    ) {
        let event = match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound { protocol, info }) => {
                ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound { protocol, info })
            }
            ConnectionEvent::ListenUpgradeError(ListenUpgradeError { info, error }) => {
                ConnectionEvent::ListenUpgradeError(ListenUpgradeError { info, error })
            }
            ConnectionEvent::FullyNegotiatedOutbound(e) => {
                ConnectionEvent::FullyNegotiatedOutbound(e)
            }
            ConnectionEvent::DialUpgradeError(e) => ConnectionEvent::DialUpgradeError(e),
            ConnectionEvent::AddressChange(e) => ConnectionEvent::AddressChange(e),
            ConnectionEvent::LocalProtocolsChange(e) => ConnectionEvent::LocalProtocolsChange(e),
            ConnectionEvent::RemoteProtocolsChange(e) => ConnectionEvent::RemoteProtocolsChange(e),
            _ => return,
        };
        self.inner.on_connection_event(event)
    }
}
