//! A hostile or broken peer talking the wire protocol directly: before admission every request
//! is refused and nothing is learnt; after admission (a member gone bad), malformed changes,
//! sync messages and oversized digests are rejected with a logged reason, the agent stays up
//! and its state does not change.

mod loopback;

use std::time::Duration;

use futures::StreamExt;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::SwarmEvent;
use libp2p::{identity, Multiaddr, PeerId};
use loopback::{poll, Cluster};
use shoal::net::protocol::{serde_bytes_vec::Bytes, DocDigest, DocRef, Request, Response};
use shoal::net::{build_swarm, Behaviour, BehaviourEvent};
use shoal::security::{admission_proof, AdmissionClaim, JoinToken};
use shoal::state::DocId;

struct Peer {
    swarm: libp2p::Swarm<Behaviour>,
    me: PeerId,
    target: Option<PeerId>,
}

impl Peer {
    fn new() -> Peer {
        let key = identity::Keypair::generate_ed25519();
        let me = key.public().to_peer_id();
        let mut swarm = build_swarm(key).unwrap();
        swarm
            .listen_on("/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap())
            .unwrap();
        Peer {
            swarm,
            me,
            target: None,
        }
    }

    /// Dials the agent and waits for the connection; answers nothing the agent asks.
    async fn connect(&mut self, addr: std::net::SocketAddr) -> PeerId {
        let ma: Multiaddr = format!("/ip4/{}/udp/{}/quic-v1", addr.ip(), addr.port())
            .parse()
            .unwrap();
        self.swarm.dial(ma).unwrap();
        loop {
            if let SwarmEvent::ConnectionEstablished { peer_id, .. } =
                self.swarm.select_next_some().await
            {
                self.target = Some(peer_id);
                return peer_id;
            }
        }
    }

    /// Sends a request and returns its response (or the failure as text).
    async fn call(&mut self, req: Request) -> Result<Response, String> {
        let target = self.target.unwrap();
        let id: OutboundRequestId = self.swarm.behaviour_mut().rpc.send_request(&target, req);
        let deadline = tokio::time::sleep(Duration::from_secs(10));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return Err("no response in 10 s".into()),
                ev = self.swarm.select_next_some() => match ev {
                    SwarmEvent::Behaviour(BehaviourEvent::Rpc(request_response::Event::Message { message: request_response::Message::Response { request_id, response }, .. })) if request_id == id => return Ok(response),
                    SwarmEvent::Behaviour(BehaviourEvent::Rpc(request_response::Event::OutboundFailure { request_id, error, .. })) if request_id == id => return Err(error.to_string()),
                    SwarmEvent::Behaviour(BehaviourEvent::Rpc(request_response::Event::Message { message: request_response::Message::Request { channel, .. }, .. })) => {
                        // Say nothing useful to the agent's own requests (its admission proof).
                        let _ = self.swarm.behaviour_mut().rpc.send_response(channel, Response::Ok);
                    }
                    _ => {}
                }
            }
        }
    }
}

#[test]
fn hostile_peers_are_refused_or_ignored_and_change_nothing() {
    let c = Cluster::start(1);
    c.create_configmap(&c.nodes[0], "keep", "1");
    let heads_before = c.status(&c.nodes[0])["heads"].clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let token: JoinToken = c.token.parse().unwrap();
    let addr = c.nodes[0].p2p;

    rt.block_on(async {
        // 1. Not admitted: every request is refused, and the refusal teaches nothing.
        let mut stranger = Peer::new();
        stranger.connect(addr).await;
        let cluster = DocRef { id: DocId::Cluster, version: 0 };
        for req in [
            Request::Push { doc: cluster.clone(), changes: vec![Bytes(vec![1, 2, 3])] },
            Request::Sync { doc: cluster.clone(), message: Bytes(vec![0x42]) },
            Request::Digest { docs: vec![] },
        ] {
            match stranger.call(req).await {
                Ok(Response::Refused { reason }) => assert_eq!(reason, "not admitted"),
                Ok(other) => panic!("an unadmitted peer got an answer: {other:?}"),
                Err(_) => {} // disconnected: also nothing learnt
            }
        }

        // 2. A forged proof is refused.
        let mut forger = Peer::new();
        let agent = forger.connect(addr).await;
        let claim = AdmissionClaim { cluster_id: token.cluster_id.clone(), generation: token.generation, node_name: "forger".into(), prover: forger.me.to_string(), verifier: agent.to_string() };
        let resp = forger.call(Request::Admit { claim, proof: Bytes(vec![0; 32]), p2p_addr: "/ip4/127.0.0.1/udp/1/quic-v1".into() }).await;
        assert!(matches!(resp, Ok(Response::Refused { ref reason }) if reason.contains("invalid admission proof")), "{resp:?}");

        // 3. A member gone bad (valid token): garbage is rejected, the agent stays up.
        let mut bad = Peer::new();
        let agent = bad.connect(addr).await;
        let identity = token.clone().into_identity();
        let claim = AdmissionClaim { cluster_id: identity.cluster_id.clone(), generation: identity.generation, node_name: "bad".into(), prover: bad.me.to_string(), verifier: agent.to_string() };
        let proof = Bytes(admission_proof(&identity, &claim));
        let resp = bad.call(Request::Admit { claim, proof, p2p_addr: "/ip4/127.0.0.1/udp/1/quic-v1".into() }).await;
        assert!(matches!(resp, Ok(Response::Admitted { .. })), "{resp:?}");
        let garbage = [
            Request::Push { doc: cluster.clone(), changes: vec![Bytes(vec![0x85, 0x6f, 0x4a, 0x83, 1, 2, 3])] },
            Request::Push { doc: cluster.clone(), changes: (0..2000).map(|_| Bytes(vec![0])).collect() },
            Request::Push { doc: DocRef { id: DocId::Status("../../etc".into()), version: 1 }, changes: vec![] },
            Request::Push { doc: DocRef { id: DocId::Cluster, version: 7 }, changes: vec![] },
            Request::Sync { doc: cluster.clone(), message: Bytes(vec![0x42, 0xff, 0xff, 0xff]) },
            Request::Digest { docs: (0..20_000).map(|i| DocDigest { doc: DocRef { id: DocId::Status(format!("x{i}")), version: 0 }, heads: 0 }).collect() },
        ];
        for req in garbage {
            let resp = bad.call(req).await;
            assert!(resp.is_ok(), "the agent must answer, not fail: {resp:?}");
        }
    });

    // The agent is alive, says why it rejected the garbage, and its state did not change.
    poll("agent logs the rejections", Duration::from_secs(10), || {
        let log = c.log(&c.nodes[0]);
        (log.contains("rejected pushed changes")
            && log.contains("rejected sync message")
            && log.contains("push with too many changes refused"))
        .then_some(())
    });
    assert_eq!(c.configmap_value(&c.nodes[0], "keep").as_deref(), Some("1"));
    assert_eq!(
        c.status(&c.nodes[0])["heads"],
        heads_before,
        "garbage changed the document"
    );
    assert!(!c.nodes[0]
        .dir
        .join("status")
        .join("..")
        .join("..")
        .join("etc.cbor")
        .exists());
}
