//! The libp2p swarm: QUIC transport (TLS 1.3 authenticates peer ids), connection limits, the
//! small `/shoal/admit/1` admission protocol and the `/shoal/1` request-response protocol,
//! offered only to admitted peers, with bounded message sizes and flow-control windows.

use std::time::Duration;

use libp2p::swarm::NetworkBehaviour;
use libp2p::{connection_limits, identity, request_response, StreamProtocol, Swarm};

use super::gate::{AdmissionLimits, Gate, Gated, ADMISSION_DEADLINE};
use super::protocol::{
    Admit, AdmitResponse, Request, Response, ADMIT_PROTOCOL, MAX_ADMIT_BYTES, MAX_MESSAGE_BYTES,
    PROTOCOL,
};

/// Most connections an agent keeps in total and per peer.
pub const MAX_CONNECTIONS: u32 = 4096;
pub const MAX_CONNECTIONS_PER_PEER: u32 = 2;
pub const MAX_PENDING_INCOMING: u32 = 256;
/// QUIC flow-control windows: what a peer may have in flight unread, per stream and per
/// connection (quinn buffers that much for streams nobody reads yet).
pub const STREAM_WINDOW: u32 = 1 << 20;
pub const CONNECTION_WINDOW: u32 = 2 << 20;
/// Requests one connection may have in progress at once, per protocol.
pub const MAX_CONCURRENT_STREAMS: usize = 64;

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub limits: connection_limits::Behaviour,
    pub admission: AdmissionLimits,
    pub admit: request_response::cbor::Behaviour<Admit, AdmitResponse>,
    pub rpc: Gated<request_response::cbor::Behaviour<Request, Response>>,
}

#[derive(Debug, thiserror::Error)]
#[error("building the libp2p swarm: {0}")]
pub struct SwarmError(String);

/// The swarm, and the admitted-peer set that opens `/shoal/1` to a peer.
pub fn build_swarm(key: identity::Keypair) -> Result<(Swarm<Behaviour>, Gate), SwarmError> {
    let gate = Gate::default();
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established(Some(MAX_CONNECTIONS))
        .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
        .with_max_pending_incoming(Some(MAX_PENDING_INCOMING));
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_quic_config(|mut c| {
            // Liveness is membership's job, not the transport's: connections to a restarted
            // peer are replaced when it is re-admitted, so keep-alives can stay rare.
            c.max_idle_timeout = 10_000;
            c.keep_alive_interval = Duration::from_secs(3);
            c.handshake_timeout = Duration::from_secs(3);
            c.max_concurrent_stream_limit = 64;
            c.max_stream_data = STREAM_WINDOW;
            c.max_connection_data = CONNECTION_WINDOW;
            c
        })
        .with_behaviour(|_| {
            let codec = request_response::cbor::codec::Codec::<Request, Response>::default()
                .set_request_size_maximum(MAX_MESSAGE_BYTES)
                .set_response_size_maximum(MAX_MESSAGE_BYTES);
            let cfg = request_response::Config::default()
                .with_request_timeout(Duration::from_secs(5))
                .with_max_concurrent_streams(MAX_CONCURRENT_STREAMS);
            let rpc = request_response::Behaviour::with_codec(
                codec,
                [(
                    StreamProtocol::new(PROTOCOL),
                    request_response::ProtocolSupport::Full,
                )],
                cfg,
            );
            let admit_codec =
                request_response::cbor::codec::Codec::<Admit, AdmitResponse>::default()
                    .set_request_size_maximum(MAX_ADMIT_BYTES)
                    .set_response_size_maximum(MAX_ADMIT_BYTES);
            let admit = request_response::Behaviour::with_codec(
                admit_codec,
                [(
                    StreamProtocol::new(ADMIT_PROTOCOL),
                    request_response::ProtocolSupport::Full,
                )],
                request_response::Config::default()
                    .with_request_timeout(ADMISSION_DEADLINE)
                    .with_max_concurrent_streams(2),
            );
            Behaviour {
                limits: connection_limits::Behaviour::new(limits),
                admission: AdmissionLimits::new(gate.clone(), ADMISSION_DEADLINE),
                admit,
                rpc: Gated::new(rpc, gate.clone()),
            }
        })
        .map_err(|e| SwarmError(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    Ok((swarm, gate))
}
