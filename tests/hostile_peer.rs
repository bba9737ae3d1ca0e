//! A hostile or broken peer talking the wire protocol directly: before admission every request
//! is refused and nothing is learnt; after admission (a member gone bad), malformed changes,
//! sync messages and oversized digests are rejected with a logged reason, the agent stays up
//! and its state does not change. A pre-admission flood (many peer ids, maximal requests of
//! tiny byte strings, connections held open) keeps the agent small and the cluster serving.

mod loopback;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identity, Multiaddr, PeerId, StreamProtocol};
use loopback::{poll, Cluster};
use shoal::membership::{MemberInfo, MemberState, Message, Update};
use shoal::net::gate::{Gate, MAX_UNADMITTED_PER_ADDRESS};
use shoal::net::protocol::{
    serde_bytes_vec::Bytes, Admit, AdmitResponse, DocDigest, DocRef, Request, Response,
    ADMIT_PROTOCOL, PROTOCOL,
};
use shoal::net::{build_swarm, Behaviour, BehaviourEvent};
use shoal::security::{admission_proof, AdmissionClaim, JoinToken};
use shoal::state::DocId;

/// A snapshot fetch the agent sent us: the channel to answer on, the transfer, the offset.
type Fetch = (
    request_response::ResponseChannel<Response>,
    shoal::state::transfer::TransferId,
    u64,
);

struct Peer {
    swarm: libp2p::Swarm<Behaviour>,
    gate: Gate,
    me: PeerId,
    target: Option<PeerId>,
    /// Fetches that arrived while we waited for something else.
    fetches: std::collections::VecDeque<Fetch>,
}

/// The snapshot fetch in a swarm event, if it is one.
fn as_fetch(ev: SwarmEvent<BehaviourEvent>) -> Option<Fetch> {
    match ev {
        SwarmEvent::Behaviour(BehaviourEvent::Rpc(request_response::Event::Message {
            message:
                request_response::Message::Request {
                    request: Request::Fetch { id, offset },
                    channel,
                    ..
                },
            ..
        })) => Some((channel, id, offset)),
        _ => None,
    }
}

impl Peer {
    fn new() -> Peer {
        let key = identity::Keypair::generate_ed25519();
        let me = key.public().to_peer_id();
        let (mut swarm, gate) = build_swarm(key).unwrap();
        swarm
            .listen_on("/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap())
            .unwrap();
        Peer {
            swarm,
            gate,
            me,
            target: None,
            fetches: Default::default(),
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
                // Our side lets the agent in, so that our own admission deadline does not
                // close the connection under the test.
                self.gate.admit(peer_id);
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
                    other => self.fetches.extend(as_fetch(other)),
                }
            }
        }
    }

    /// Waits up to `wait` for the agent to fetch a snapshot chunk from us: the channel to
    /// answer on, the transfer and the offset asked for. Other requests go unanswered.
    async fn next_fetch(&mut self, wait: Duration) -> Option<Fetch> {
        if let Some(f) = self.fetches.pop_front() {
            return Some(f);
        }
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return None,
                ev = self.swarm.select_next_some() => {
                    if let Some(f) = as_fetch(ev) {
                        return Some(f);
                    }
                }
            }
        }
    }

    /// Sends an admission request on `/shoal/admit/1` and returns the answer.
    async fn admit(&mut self, req: Admit) -> Result<AdmitResponse, String> {
        let target = self.target.unwrap();
        let id: OutboundRequestId = self.swarm.behaviour_mut().admit.send_request(&target, req);
        let deadline = tokio::time::sleep(Duration::from_secs(10));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return Err("no response in 10 s".into()),
                ev = self.swarm.select_next_some() => match ev {
                    SwarmEvent::Behaviour(BehaviourEvent::Admit(request_response::Event::Message { message: request_response::Message::Response { request_id, response }, .. })) if request_id == id => return Ok(response),
                    SwarmEvent::Behaviour(BehaviourEvent::Admit(request_response::Event::OutboundFailure { request_id, error, .. })) if request_id == id => return Err(error.to_string()),
                    SwarmEvent::Behaviour(BehaviourEvent::Admit(request_response::Event::Message { message: request_response::Message::Request { channel, .. }, .. })) => {
                        // Say nothing useful to the agent's own admission request.
                        let _ = self.swarm.behaviour_mut().admit.send_response(channel, AdmitResponse::Refused { reason: "no".into() });
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
        // 1. Not admitted: `/shoal/1` is not even offered (no stream, nothing read).
        let mut stranger = Peer::new();
        stranger.connect(addr).await;
        let cluster = DocRef { id: DocId::Cluster, version: 0 };
        for req in [
            Request::Push { doc: cluster.clone(), changes: vec![Bytes(vec![1, 2, 3])] },
            Request::Sync { doc: cluster.clone(), message: Bytes(vec![0x42]) },
            Request::Digest { docs: vec![] },
        ] {
            match stranger.call(req).await {
                Ok(other) => panic!("an unadmitted peer got an answer: {other:?}"),
                Err(e) => assert!(e.contains("protocol"), "{e}"),
            }
        }

        // 2. A forged proof is refused.
        let mut forger = Peer::new();
        let agent = forger.connect(addr).await;
        let claim = AdmissionClaim { cluster_id: token.cluster_id.clone(), generation: token.generation, node_name: "forger".into(), prover: forger.me.to_string(), verifier: agent.to_string() };
        let resp = forger.admit(Admit { claim, proof: Bytes(vec![0; 32]), p2p_addr: "/ip4/127.0.0.1/udp/1/quic-v1".into() }).await;
        assert!(matches!(resp, Ok(AdmitResponse::Refused { ref reason }) if reason.contains("invalid admission proof")), "{resp:?}");

        // 3. A member gone bad (valid token): garbage is rejected, the agent stays up.
        let mut bad = Peer::new();
        let agent = bad.connect(addr).await;
        let identity = token.clone().into_identity();
        let claim = AdmissionClaim { cluster_id: identity.cluster_id.clone(), generation: identity.generation, node_name: "bad".into(), prover: bad.me.to_string(), verifier: agent.to_string() };
        let proof = Bytes(admission_proof(&identity, &claim));
        let resp = bad.admit(Admit { claim, proof, p2p_addr: "/ip4/127.0.0.1/udp/1/quic-v1".into() }).await;
        assert!(matches!(resp, Ok(AdmitResponse::Admitted { .. })), "{resp:?}");
        let garbage = [
            Request::Push { doc: cluster.clone(), changes: vec![Bytes(vec![0x85, 0x6f, 0x4a, 0x83, 1, 2, 3])] },
            Request::Push { doc: DocRef { id: DocId::Status("../../etc".into()), version: 1 }, changes: vec![] },
            Request::Push { doc: DocRef { id: DocId::Cluster, version: 7 }, changes: vec![] },
            Request::Sync { doc: cluster.clone(), message: Bytes(vec![0x42, 0xff, 0xff, 0xff]) },
        ];
        for req in garbage {
            let resp = bad.call(req).await;
            assert!(resp.is_ok(), "the agent must answer, not fail: {resp:?}");
        }
        // Past the element bounds: refused while decoding (the stream is dropped unanswered).
        // libp2p reports a request that fails to decode only at its own debug level (no
        // `InboundFailure` event reaches the actor), so the refusal shows here, not in the log.
        let oversized = [
            Request::Push { doc: cluster.clone(), changes: (0..2000).map(|_| Bytes(vec![0])).collect() },
            Request::Digest { docs: (0..20_000).map(|i| DocDigest { doc: DocRef { id: DocId::Status(format!("x{i}")), version: 0 }, heads: 0 }).collect() },
        ];
        for req in oversized {
            let resp = bad.call(req).await;
            assert!(resp.is_err(), "an oversized request was answered: {resp:?}");
        }
    });

    // The agent is alive, says why it rejected the garbage, and its state did not change.
    poll("agent logs the rejections", Duration::from_secs(10), || {
        let log = c.log(&c.nodes[0]);
        (log.contains("rejected pushed changes") && log.contains("rejected sync message"))
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

/// An attacker's codec: requests are raw bytes written as they are, answers read and dropped.
#[derive(Clone, Default)]
struct Raw;

impl request_response::Codec for Raw {
    type Protocol = StreamProtocol;
    type Request = Arc<Vec<u8>>;
    type Response = Vec<u8>;

    async fn read_request<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
    ) -> std::io::Result<Arc<Vec<u8>>> {
        Err(std::io::ErrorKind::Unsupported.into())
    }

    async fn read_response<T: futures::AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> std::io::Result<Vec<u8>> {
        let mut v = Vec::new();
        io.take(1 << 16).read_to_end(&mut v).await?;
        Ok(v)
    }

    async fn write_request<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Arc<Vec<u8>>,
    ) -> std::io::Result<()> {
        io.write_all(&req).await?;
        io.close().await
    }

    async fn write_response<T: futures::AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: Vec<u8>,
    ) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(NetworkBehaviour)]
#[behaviour(prelude = "libp2p::swarm::derive_prelude")]
struct Flooder {
    main: request_response::Behaviour<Raw>,
    admit: request_response::Behaviour<Raw>,
}

fn flooder() -> libp2p::Swarm<Flooder> {
    let rr = |proto: &'static str| {
        request_response::Behaviour::with_codec(
            Raw,
            [(
                StreamProtocol::new(proto),
                request_response::ProtocolSupport::Outbound,
            )],
            request_response::Config::default()
                .with_request_timeout(Duration::from_secs(5))
                .with_max_concurrent_streams(256),
        )
    };
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_quic()
        .with_behaviour(|_| Flooder {
            main: rr(PROTOCOL),
            admit: rr(ADMIT_PROTOCOL),
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build()
}

/// A `Push` of `n` one-byte changes, as raw CBOR (never built as a value: that would cost the
/// attacker what it is meant to cost the agent).
fn tiny_strings_push(n: u32) -> Vec<u8> {
    let empty = Request::Push {
        doc: DocRef {
            id: DocId::Cluster,
            version: 0,
        },
        changes: vec![],
    };
    let mut enc = cbor4ii::serde::to_vec(Vec::new(), &empty).unwrap();
    assert_eq!(enc.pop(), Some(0x80), "the changes array ends the encoding");
    enc.push(0x9a);
    enc.extend(n.to_be_bytes());
    enc.reserve(2 * n as usize);
    for _ in 0..n {
        enc.extend([0x41, 0x07]);
    }
    enc
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Many fresh peer ids, each sending a maximal (32 MiB) push of one-byte strings on `/shoal/1`
/// and on `/shoal/admit/1`, plus connections held open without a word: the agent's RSS stays
/// under 64 MiB, unadmitted connections are capped per address and closed after the
/// admission deadline, and the cluster keeps replicating and answering its API.
#[test]
fn pre_admission_flood_keeps_the_agent_small_and_the_cluster_serving() {
    let c = Cluster::start(2);
    let pid = c.nodes[0].pid().unwrap();
    let addr = c.nodes[0].p2p;
    let idle_kib = rss_kib(pid).unwrap();
    let payload = Arc::new(tiny_strings_push(16 << 20));
    assert!(payload.len() >= 32 << 20);

    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(idle_kib));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ma: Multiaddr = format!("/ip4/127.0.0.1/udp/{}/quic-v1", addr.port())
        .parse()
        .unwrap();

    // 1. Connections held open without a word, from many peer ids: at most the per-address cap
    //    stays open, and those are closed after the admission deadline.
    let (held, closed_after) = rt.block_on(async {
        let mut swarms: Vec<libp2p::Swarm<Flooder>> = (0..3 * MAX_UNADMITTED_PER_ADDRESS)
            .map(|_| {
                let mut s = flooder();
                s.dial(ma.clone()).unwrap();
                s
            })
            .collect();
        let start = Instant::now();
        let mut open = vec![false; swarms.len()];
        let mut ever = vec![false; swarms.len()];
        let mut all_closed_at = None;
        while start.elapsed() < Duration::from_secs(15) {
            let events =
                futures::future::select_all(swarms.iter_mut().map(|s| s.select_next_some()));
            let Ok((ev, i, _)) = tokio::time::timeout(Duration::from_millis(200), events).await
            else {
                if ever.iter().any(|e| *e) && !open.iter().any(|o| *o) {
                    all_closed_at = Some(start.elapsed());
                    break;
                }
                continue;
            };
            match ev {
                SwarmEvent::ConnectionEstablished { .. } => {
                    open[i] = true;
                    ever[i] = true;
                }
                SwarmEvent::ConnectionClosed {
                    num_established: 0, ..
                } => open[i] = false,
                _ => {}
            }
            // Settled after a second: count what the agent let stay.
            if start.elapsed() > Duration::from_millis(1500) && all_closed_at.is_none() {
                let now_open = open.iter().filter(|o| **o).count();
                assert!(
                    now_open <= MAX_UNADMITTED_PER_ADDRESS,
                    "{now_open} unadmitted connections from one address stay open"
                );
            }
        }
        (ever.iter().filter(|e| **e).count(), all_closed_at)
    });
    assert!(held > 0, "no connection was ever established");
    let closed_after = closed_after.expect("unadmitted connections still open after 15 s");
    assert!(
        closed_after < Duration::from_secs(10),
        "unadmitted connections were closed only after {closed_after:?}"
    );

    // 2. The flood: fresh peer ids sending maximal pushes, while the cluster is used.
    let sent = Arc::new(AtomicU64::new(0));
    let connected = Arc::new(AtomicU64::new(0));
    let flood: Vec<_> = (0..8)
        .map(|_| {
            let (stop, payload, ma) = (stop.clone(), payload.clone(), ma.clone());
            let (sent, connected) = (sent.clone(), connected.clone());
            rt.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let mut s = flooder();
                    s.dial(ma.clone()).unwrap();
                    let deadline = tokio::time::sleep(Duration::from_secs(3));
                    tokio::pin!(deadline);
                    let mut pending = 0;
                    loop {
                        tokio::select! {
                            _ = &mut deadline => break,
                            ev = s.select_next_some() => match ev {
                                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                                    connected.fetch_add(1, Ordering::Relaxed);
                                    for _ in 0..4 {
                                        s.behaviour_mut().main.send_request(&peer_id, payload.clone());
                                        s.behaviour_mut().admit.send_request(&peer_id, payload.clone());
                                        pending += 2;
                                        sent.fetch_add(2, Ordering::Relaxed);
                                    }
                                }
                                SwarmEvent::Behaviour(FlooderEvent::Main(request_response::Event::OutboundFailure { .. }))
                                | SwarmEvent::Behaviour(FlooderEvent::Admit(request_response::Event::OutboundFailure { .. })) => {
                                    pending -= 1;
                                    if pending == 0 { break; }
                                }
                                SwarmEvent::OutgoingConnectionError { .. } => break,
                                _ => {}
                            }
                        }
                    }
                }
            })
        })
        .collect();

    // The cluster serves through the flood: a write on one node is read on the other.
    let flood_start = Instant::now();
    let mut writes = 0;
    while flood_start.elapsed() < Duration::from_secs(20) {
        writes += 1;
        let name = format!("during-flood-{writes}");
        c.create_configmap(&c.nodes[0], &name, "v");
        poll(
            "the write replicates during the flood",
            Duration::from_secs(10),
            || c.configmap_value(&c.nodes[1], &name),
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::Relaxed);
    for f in flood {
        rt.block_on(f).unwrap();
    }
    sampler.join().unwrap();
    let peak_kib = peak.load(Ordering::Relaxed);
    let (sent, connected) = (
        sent.load(Ordering::Relaxed),
        connected.load(Ordering::Relaxed),
    );
    eprintln!(
        "flood: {connected} connections, {sent} requests of {} MiB; agent RSS idle {} MiB, peak {} MiB; {writes} writes replicated",
        payload.len() >> 20,
        idle_kib >> 10,
        peak_kib >> 10
    );
    assert!(
        connected >= 20,
        "the flood hardly reached the agent ({connected} connections)"
    );
    assert!(
        peak_kib < 64 << 10,
        "agent RSS reached {} MiB during the flood (idle {} MiB)",
        peak_kib >> 10,
        idle_kib >> 10
    );
    let members = c.status(&c.nodes[1]);
    assert!(
        members.to_string().contains("alive"),
        "n2's view after the flood: {members}"
    );
}

/// A member gone bad (valid token) forges what only others may say: n2's and n1's own status
/// document at version `u64::MAX`, and `Dead` at incarnation `u64::MAX` for n2 and for n1
/// itself. n1 does not hang (its API answers, writes replicate), nobody is kept dead, the
/// incarnations and versions stay small, and the forgery is logged.
#[test]
fn a_hostile_member_cannot_hang_or_silence_another_node() {
    let c = Cluster::start(2);
    let token: JoinToken = c.token.parse().unwrap();
    let addr = c.nodes[0].p2p;
    let n2_addr = c.status(&c.nodes[1])["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "n2")
        .map(|m| m["addr"].as_str().unwrap().to_string())
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut bad = Peer::new();
        let agent = bad.connect(addr).await;
        let identity = token.clone().into_identity();
        let claim = AdmissionClaim {
            cluster_id: identity.cluster_id.clone(),
            generation: identity.generation,
            node_name: "bad".into(),
            prover: bad.me.to_string(),
            verifier: agent.to_string(),
        };
        let proof = Bytes(admission_proof(&identity, &claim));
        let resp = bad
            .admit(Admit {
                claim,
                proof,
                p2p_addr: "/ip4/127.0.0.1/udp/1/quic-v1".into(),
            })
            .await;
        assert!(
            matches!(resp, Ok(AdmitResponse::Admitted { .. })),
            "{resp:?}"
        );
        let dead = |id: &str, addr: &str| Update {
            member: MemberInfo {
                id: id.into(),
                addr: addr.into(),
                incarnation: u64::MAX,
                state: MemberState::Dead,
            },
            by: "bad".into(),
        };
        let forgeries = [
            Request::Gossip(Message::Gossip {
                updates: vec![dead("n2", &n2_addr), dead("n1", "")],
            }),
            Request::Push {
                doc: DocRef {
                    id: DocId::Status("n1".into()),
                    version: u64::MAX,
                },
                changes: vec![],
            },
            Request::Push {
                doc: DocRef {
                    id: DocId::Status("n2".into()),
                    version: u64::MAX,
                },
                changes: vec![],
            },
            Request::Sync {
                doc: DocRef {
                    id: DocId::Status("n1".into()),
                    version: u64::MAX - 1,
                },
                message: Bytes(vec![0x42]),
            },
            Request::Digest {
                docs: vec![DocDigest {
                    doc: DocRef {
                        id: DocId::Status("n2".into()),
                        version: u64::MAX,
                    },
                    heads: 1,
                }],
            },
        ];
        for req in forgeries {
            let resp = bad.call(req).await;
            assert!(resp.is_ok(), "n1 must answer, not hang: {resp:?}");
        }
    });

    // n1 serves and replicates; both nodes see both alive and Ready, at sane incarnations.
    c.create_configmap(&c.nodes[0], "after-forgery", "1");
    poll(
        "the write replicates after the forgeries",
        Duration::from_secs(15),
        || c.configmap_value(&c.nodes[1], "after-forgery"),
    );
    for observer in &c.nodes {
        for name in ["n1", "n2"] {
            poll(
                &format!("{} sees {name} alive and Ready", observer.name),
                Duration::from_secs(20),
                || {
                    let status = c.status(observer);
                    let member = status["members"]
                        .as_array()?
                        .iter()
                        .find(|m| m["name"] == name)?
                        .clone();
                    let incarnation = member["incarnation"].as_u64()?;
                    assert!(
                        incarnation < u64::MAX / 2,
                        "{name} at incarnation {incarnation} on {}",
                        observer.name
                    );
                    (member["state"] == "alive" && c.node_ready(observer, name) == Some(true))
                        .then_some(())
                },
            );
        }
    }
    // Still so a while later (a forged Dead would have landed by now).
    std::thread::sleep(Duration::from_secs(3));
    for observer in &c.nodes {
        let status = c.status(observer);
        for m in status["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["name"] != "bad")
        {
            assert_eq!(m["state"], "alive", "on {}: {m}", observer.name);
        }
    }
    poll(
        "n1 logs the forged version",
        Duration::from_secs(10),
        || {
            c.log(&c.nodes[0])
                .contains("version its owner never issued")
                .then_some(())
        },
    );
}

/// A member gone bad in a state transfer, on the wire: a fetch for a snapshot it was never
/// offered, offers of a snapshot over the size limit or of another cluster generation, and,
/// when the agent takes an offer and fetches, chunks with a wrong checksum, out of order,
/// beyond the offered length, over the chunk bound (refused while decoding), and a whole that
/// is not a sealed snapshot. Each is refused with its reason in the log, the transfer is
/// abandoned after a few, the agent stays up and its state does not change.
#[test]
fn hostile_state_transfers_are_refused_and_change_nothing() {
    use shoal::state::transfer::{Chunk, TransferId, CHUNK_BYTES, MAX_SNAPSHOT_BYTES};

    let c = Cluster::start(1);
    c.create_configmap(&c.nodes[0], "keep", "1");
    let token: JoinToken = c.token.parse().unwrap();
    let addr = c.nodes[0].p2p;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut bad = Peer::new();
        let agent = bad.connect(addr).await;
        let identity = token.clone().into_identity();
        let generation = identity.generation;
        let claim = AdmissionClaim {
            cluster_id: identity.cluster_id.clone(),
            generation,
            node_name: "bad".into(),
            prover: bad.me.to_string(),
            verifier: agent.to_string(),
        };
        let proof = Bytes(admission_proof(&identity, &claim));
        let resp = bad
            .admit(Admit {
                claim,
                proof,
                p2p_addr: "/ip4/127.0.0.1/udp/1/quic-v1".into(),
            })
            .await;
        assert!(
            matches!(resp, Ok(AdmitResponse::Admitted { .. })),
            "{resp:?}"
        );

        // A fetch for a snapshot the agent never offered: refused, with the reason.
        let unknown = TransferId {
            generation,
            total: 5 << 20,
            tag: 0xdead,
            doc: 0,
        };
        let resp = bad
            .call(Request::Fetch {
                id: unknown,
                offset: 0,
            })
            .await;
        assert!(
            matches!(resp, Ok(Response::Refused { ref reason }) if reason.contains("no such transfer")),
            "{resp:?}"
        );
        // Offers the agent must not take: over the size limit, another generation.
        for id in [
            TransferId {
                generation,
                total: MAX_SNAPSHOT_BYTES + 1,
                tag: 1,
                doc: 0,
            },
            TransferId {
                generation: generation + 1,
                total: 1000,
                tag: 2,
                doc: 0,
            },
        ] {
            let resp = bad.call(Request::Offer { id }).await;
            assert!(matches!(resp, Ok(Response::Ok)), "{resp:?}");
        }

        // An offer it takes (1000 bytes): each fetch is answered with a hostile chunk.
        let small = TransferId {
            generation,
            total: 1000,
            tag: 3,
            doc: 0,
        };
        let wrong_crc = |id: TransferId| {
            let c = Chunk::new(id, 0, vec![7; 1000]);
            (c.bytes, c.crc ^ 1, 0)
        };
        let out_of_order = |id: TransferId| {
            let c = Chunk::new(id, 500, vec![7; 500]);
            (c.bytes, c.crc, 500)
        };
        let past_end = |id: TransferId| {
            let c = Chunk::new(id, 0, vec![7; 1001]);
            (c.bytes, c.crc, 0)
        };
        let oversized = |id: TransferId| {
            let c = Chunk::new(id, 0, vec![7; CHUNK_BYTES + 1]);
            (c.bytes, c.crc, 0)
        };
        let not_a_snapshot = |id: TransferId| {
            let c = Chunk::new(id, 0, vec![7; 1000]);
            (c.bytes, c.crc, 0)
        };
        type Answer = fn(TransferId) -> (Vec<u8>, u32, u64);
        let rounds: [(TransferId, Vec<Answer>); 2] = [
            (small, vec![wrong_crc, out_of_order, past_end]),
            (
                TransferId { tag: 4, ..small },
                vec![oversized, not_a_snapshot],
            ),
        ];
        for (id, answers) in rounds {
            let resp = bad.call(Request::Offer { id }).await;
            assert!(matches!(resp, Ok(Response::Ok)), "{resp:?}");
            for answer in answers {
                let fetched = bad.next_fetch(Duration::from_secs(10)).await;
                let (channel, want, offset) = fetched.expect("the agent fetches a chunk");
                assert_eq!((want, offset), (id, 0), "the agent asks for the start");
                let (bytes, crc, at) = answer(id);
                let _ = bad.swarm.behaviour_mut().rpc.send_response(
                    channel,
                    Response::Chunk {
                        id,
                        offset: at,
                        bytes: Bytes(bytes),
                        crc,
                    },
                );
            }
        }
        // Abandoned: nothing more is fetched.
        assert!(bad.next_fetch(Duration::from_secs(2)).await.is_none());

        // Re-bases (newer document versions) the agent must not take. A version no re-base
        // issues (generation 0 with a tag): refused at the offer, nothing fetched.
        let bogus = TransferId {
            doc: 7,
            tag: 5,
            ..small
        };
        let resp = bad.call(Request::Offer { id: bogus }).await;
        assert!(matches!(resp, Ok(Response::Ok)), "{resp:?}");
        assert!(bad.next_fetch(Duration::from_secs(2)).await.is_none());
        // A well-formed base of generation 1 of this cluster, holding an object of its own,
        // made by "bad", which is not the leader its base records: fetched, checked, refused.
        let base = {
            use shoal::state::{ClusterDoc, ClusterMeta};
            let mut doc = ClusterDoc::empty(automerge::ActorId::random());
            doc.put_meta(&ClusterMeta {
                cluster_id: identity.cluster_id.clone(),
                generation,
                created: chrono::Utc::now(),
                ca_cert_pem: String::new(),
                ca_key_sealed: vec![],
                cluster_cidr: "10.244.0.0/16".into(),
                node_cidr_mask: 24,
                service_cidr: "10.96.0.0/12".into(),
            })
            .unwrap();
            doc.put_leader_record("someone-else").unwrap();
            doc.put_object(
                "configmaps",
                Some("default"),
                "evil",
                &serde_json::json!({"data": {"k": "evil"}}),
            )
            .unwrap();
            let (clock, record, entries) = doc.base_inputs();
            ClusterDoc::build_base(
                &identity.cluster_id,
                "bad",
                clock,
                record.as_ref(),
                entries,
                automerge::ActorId::random(),
            )
            .unwrap()
        };
        let mut base = base;
        let sealed = shoal::state::seal_file(&base.save());
        assert!(sealed.len() <= CHUNK_BYTES);
        let mut id = shoal::state::transfer::transfer_id(generation, &sealed, sealed.len() as u64);
        id.doc = base.version();
        let resp = bad.call(Request::Offer { id }).await;
        assert!(matches!(resp, Ok(Response::Ok)), "{resp:?}");
        let (channel, want, offset) = bad
            .next_fetch(Duration::from_secs(10))
            .await
            .expect("the agent fetches the newer base");
        assert_eq!((want, offset), (id, 0));
        let chunk = Chunk::new(id, 0, sealed);
        let _ = bad.swarm.behaviour_mut().rpc.send_response(
            channel,
            Response::Chunk {
                id,
                offset: 0,
                bytes: Bytes(chunk.bytes),
                crc: chunk.crc,
            },
        );
        // (Polling the swarm delivers the chunk; nothing more is fetched.)
        assert!(bad.next_fetch(Duration::from_secs(3)).await.is_none());
    });

    let log = poll(
        "the agent logs every refusal",
        Duration::from_secs(10),
        || {
            let log = c.log(&c.nodes[0]);
            [
                "no such transfer",
                "over the limit",
                "this node is of generation",
                "fails its checksum",
                "chunk at offset 500, expected 0",
                "past the snapshot's 1000 bytes",
                "a snapshot chunk of 1048577 bytes (at most 1048576)",
                "not a sealed snapshot file",
                "state transfer abandoned",
                "version 0x7 of generation 0",
                "the base was made by bad, but the leader in office at its base was",
            ]
            .iter()
            .all(|s| log.contains(s))
            .then_some(log)
        },
    );
    assert!(!log.contains("panicked"), "{log}");
    assert!(!log.contains("received the cluster state snapshot"));
    // Nothing was merged: the objects are the ones there were (the heads are not compared:
    // the agent writes to its document on its own while "bad" is a member).
    assert_eq!(c.configmap_names(&c.nodes[0]), vec!["keep".to_string()]);
    assert_eq!(c.configmap_value(&c.nodes[0], "keep").as_deref(), Some("1"));
    let st = c.status(&c.nodes[0]);
    let transfers = st.to_string();
    assert!(
        !transfers.contains("\"transfer\""),
        "a transfer is still shown in progress: {transfers}"
    );
}
