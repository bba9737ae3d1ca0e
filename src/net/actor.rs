//! The network actor's event loop and handlers.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use automerge::sync;
use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{identity, Multiaddr, PeerId, Swarm};
use tokio::sync::mpsc;

use super::behaviour::{build_swarm, Behaviour, BehaviourEvent};
use super::gate::Gate;
use super::protocol::{serde_bytes_vec::Bytes, Admit, AdmitResponse, Request, Response};
use crate::membership::{self, MemberState, Membership, MembershipEvent, Output};
use crate::model::is_dns1123_subdomain;
use crate::model::MemberStatus;
use crate::security::{admission_proof, verify_admission, AdmissionClaim};
use crate::state::shared::{LocalChange, Shared, View};
use crate::state::{transfer, DocId, DocStore};

mod replication;

#[derive(Clone, Debug)]
pub struct NetConfig {
    pub listen: SocketAddr,
    /// The address peers dial (the host's address on the cluster network).
    pub advertise: IpAddr,
    /// Members to contact at start (join addresses and known peers).
    pub join: Vec<SocketAddr>,
    pub anti_entropy_interval: Duration,
    pub save_interval: Duration,
    pub membership: membership::Config,
    /// On shutdown, announce a planned restart asking peers to hold this node's pods this
    /// long (`model::RestartHold`); zero: leave at once, the pods fail over.
    pub restart_hold: Duration,
    /// Set by the agent when the shutdown is the one asked for (a signal), not a failure: only
    /// then is a restart announced.
    pub planned: Arc<std::sync::atomic::AtomicBool>,
}

/// How long a shutdown waits for peers to acknowledge the restart announcement before it
/// says it leaves.
const ANNOUNCE_WAIT: Duration = Duration::from_secs(2);

impl NetConfig {
    pub fn new(listen: SocketAddr, advertise: IpAddr) -> Self {
        NetConfig {
            listen,
            advertise,
            join: Vec::new(),
            anti_entropy_interval: Duration::from_millis(1000),
            save_interval: Duration::from_millis(300),
            membership: membership::Config::default(),
            restart_hold: Duration::ZERO,
            planned: Arc::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Swarm(#[from] super::SwarmError),
    #[error("listening on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    /// The actor's own thread or runtime failed.
    #[error("the network thread: {0}")]
    Thread(String),
}

/// Extra time a probe gets when its target's connection is still being set up.
const CONNECT_GRACE: Duration = Duration::from_millis(700);
/// Most messages queued for a peer while its connection is being set up.
const MAX_PENDING_PER_PEER: usize = 64;
/// The first wake-up after start; later ones follow what is due.
const TICK: Duration = Duration::from_millis(50);

struct Peer {
    name: String,
    addr: Multiaddr,
}

/// What an outbound request was, to handle its failure or response.
enum Sent {
    Gossip(String),
    Push,
    Digest,
    Sync,
    Offer,
    Fetch,
}

struct Actor {
    swarm: Swarm<Behaviour>,
    /// Opens `/shoal/1` to the peers in `peers` (kept equal to its key set).
    gate: Gate,
    shared: Arc<Shared>,
    config: NetConfig,
    me: PeerId,
    my_addr: Multiaddr,
    membership: Membership,
    peers: HashMap<PeerId, Peer>,
    admitting: HashSet<PeerId>,
    /// Open connections per peer, oldest first.
    connections: HashMap<PeerId, Vec<ConnectionId>>,
    pending: HashMap<PeerId, VecDeque<(Request, Option<String>)>>,
    sent: HashMap<OutboundRequestId, Sent>,
    /// Admission requests in flight (their own id space: another behaviour).
    admit_sent: HashSet<OutboundRequestId>,
    sync_states: HashMap<(PeerId, DocId), (u64, sync::State)>,
    to_disconnect: Vec<(Instant, PeerId)>,
    store: DocStore,
    status_dir: std::path::PathBuf,
    dirty: BTreeSet<DocId>,
    last_save: Instant,
    /// The wait after the last save before the next ([`replication::save_gap`]).
    save_gap: Duration,
    /// When other nodes' status documents were last saved ([`replication::PEER_STATUS_SAVE`]).
    last_peer_status_save: Instant,
    last_anti_entropy: Instant,
    last_connect_sweep: Instant,
    since: BTreeMap<String, chrono::DateTime<chrono::Utc>>,
    refusals_logged: HashMap<PeerId, Instant>,
    refused_us_logged: HashMap<PeerId, Instant>,
    /// When a forged status-document version was last logged.
    forgeries_logged: Option<Instant>,
    /// The cluster document version each peer (by name) last reported (the re-base gate).
    peer_versions: HashMap<String, u64>,
    /// The saved size at the leader's last measurement of a fresh rebuild.
    rebase_measured: u64,
    /// The fresh size the last measurement found (written by the re-base thread).
    rebase_fresh: Arc<std::sync::atomic::AtomicU64>,
    /// A re-base (or its measurement) is running on its own thread.
    rebasing: Arc<std::sync::atomic::AtomicBool>,
    /// When a bogus document version was last logged.
    bogus_logged: Option<Instant>,
    started: Instant,
    /// Since when this node has been the leader in office without a break (re-base gate).
    leading_since: Option<Instant>,
    /// State transfer, receiving side (pure core).
    receiver: transfer::Receiver<PeerId>,
    /// State transfer, serving side (pure core) and the snapshot files it keeps open.
    sender: transfer::Sender<PeerId>,
    serving: HashMap<transfer::TransferId, std::fs::File>,
}

pub(super) fn quic_addr(addr: SocketAddr) -> Multiaddr {
    let ip = match addr.ip() {
        IpAddr::V4(v4) => Protocol::Ip4(v4),
        IpAddr::V6(v6) => Protocol::Ip6(v6),
    };
    Multiaddr::empty()
        .with(ip)
        .with(Protocol::Udp(addr.port()))
        .with(Protocol::QuicV1)
}

fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        Protocol::P2p(id) => Some(id),
        _ => None,
    })
}

fn without_p2p(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect()
}

/// Runs the network actor until `shutdown` resolves; saves the document on the way out.
pub async fn run(
    key: identity::Keypair,
    shared: Arc<Shared>,
    config: NetConfig,
    state_dir: std::path::PathBuf,
    mut local_rx: mpsc::Receiver<LocalChange>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), NetError> {
    let me = key.public().to_peer_id();
    let (mut swarm, gate) = build_swarm(key)?;
    let listen = quic_addr(config.listen);
    swarm
        .listen_on(listen.clone())
        .map_err(|e| NetError::Listen {
            addr: listen.to_string(),
            // libp2p's transport error says nothing itself: the reason is in its sources.
            reason: std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
                .map(|e| e.to_string())
                .filter(|s| !s.is_empty())
                .fold(Vec::<String>::new(), |mut all, s| {
                    if all.last() != Some(&s) {
                        all.push(s);
                    }
                    all
                })
                .join(": "),
        })?;
    let my_addr =
        quic_addr(SocketAddr::new(config.advertise, config.listen.port())).with(Protocol::P2p(me));
    let now = Instant::now();
    // A restarted agent starts with a higher incarnation than any it had, so its "alive"
    // overrides the "dead" its peers remember without waiting for a refutation round.
    let incarnation = chrono::Utc::now().timestamp_millis().max(0) as u64;
    let seed = rand::random();
    let membership = Membership::new(
        shared.node_name.clone(),
        my_addr.to_string(),
        incarnation,
        config.membership.clone(),
        seed,
        now,
    );
    let shared_generation = shared.identity.generation;
    let mut actor = Actor {
        swarm,
        gate,
        shared,
        me,
        my_addr,
        membership,
        peers: HashMap::new(),
        admitting: HashSet::new(),
        connections: HashMap::new(),
        pending: HashMap::new(),
        sent: HashMap::new(),
        admit_sent: HashSet::new(),
        sync_states: HashMap::new(),
        to_disconnect: Vec::new(),
        store: DocStore::new(&state_dir),
        status_dir: state_dir.join("status"),
        dirty: BTreeSet::new(),
        last_save: now,
        save_gap: config.save_interval,
        last_peer_status_save: now,
        last_anti_entropy: now,
        last_connect_sweep: now - Duration::from_secs(10),
        since: BTreeMap::new(),
        refusals_logged: HashMap::new(),
        refused_us_logged: HashMap::new(),
        forgeries_logged: None,
        peer_versions: HashMap::new(),
        rebase_measured: 0,
        rebase_fresh: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        rebasing: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        bogus_logged: None,
        started: now,
        leading_since: None,
        receiver: transfer::Receiver::new(shared_generation),
        sender: transfer::Sender::default(),
        serving: HashMap::new(),
        config,
    };
    if let Err(e) = std::fs::create_dir_all(&actor.status_dir) {
        tracing::error!(%e, "creating the status dir failed");
    }
    tracing::info!(peer = %actor.me, addr = %actor.my_addr, "network up");
    actor.publish_view();
    // One timer, always armed for the earliest thing due (a probe timeout, anti-entropy, a
    // save): the actor wakes only when there is work, which keeps an idle agent cheap.
    let timer = tokio::time::sleep(TICK);
    tokio::pin!(timer);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Some(change) = local_rx.recv() => actor.push_local(change),
            event = actor.swarm.select_next_some() => actor.on_swarm_event(event),
            _ = &mut timer => {
                actor.on_tick();
                timer.as_mut().reset(actor.next_deadline().into());
            }
        }
        let next = actor.next_deadline();
        if next < timer.deadline().into_std() {
            timer.as_mut().reset(next.into());
        }
    }
    if !actor.config.restart_hold.is_zero()
        && actor
            .config
            .planned
            .load(std::sync::atomic::Ordering::SeqCst)
    {
        actor.announce_restart(&mut local_rx).await;
    }
    // Say goodbye: peers mark us Left at once instead of suspecting us.
    actor.membership.leave(Instant::now());
    actor.drain_membership();
    let _ = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            let event = actor.swarm.select_next_some().await;
            actor.on_swarm_event(event);
        }
    })
    .await;
    actor.save(true);
    Ok(())
}

impl Actor {
    /// A planned restart: writes this life's `RestartHold` into our status document, pushes
    /// it (with any local change not pushed yet) to every admitted peer and waits up to
    /// [`ANNOUNCE_WAIT`] for their answers, so that the hold is replicated before we leave.
    async fn announce_restart(&mut self, local_rx: &mut mpsc::Receiver<LocalChange>) {
        let hold = crate::model::RestartHold {
            at: chrono::Utc::now(),
            seconds: self.config.restart_hold.as_secs(),
            incarnation: self.membership.incarnation(),
        };
        if let Err(e) = self
            .shared
            .write_status(|d| d.put(crate::model::RESTART_HOLD_KEY, &hold).map(|_| ()))
        {
            tracing::error!(%e, "writing the planned-restart hold failed: pods will fail over");
            return;
        }
        while let Ok(change) = local_rx.try_recv() {
            self.push_local(change);
        }
        let peers = self.peers.len();
        let waited = tokio::time::timeout(ANNOUNCE_WAIT, async {
            while self.sent.values().any(|s| matches!(s, Sent::Push)) {
                let event = self.swarm.select_next_some().await;
                self.on_swarm_event(event);
            }
        })
        .await;
        match waited {
            Ok(()) => tracing::info!(
                peers,
                seconds = hold.seconds,
                "planned restart announced: peers hold this node's pods"
            ),
            Err(_) => tracing::warn!(
                peers,
                seconds = hold.seconds,
                "planned restart announced, not every peer answered in time (anti-entropy carries it)"
            ),
        }
    }

    // ---- time ----

    fn on_tick(&mut self) {
        let now = Instant::now();
        self.membership.tick(now);
        self.drain_membership();
        if now.duration_since(self.last_anti_entropy) >= self.config.anti_entropy_interval {
            self.last_anti_entropy = now;
            self.anti_entropy();
        }
        if now.duration_since(self.last_connect_sweep) >= Duration::from_secs(2) {
            self.last_connect_sweep = now;
            self.connect_sweep();
            self.on_slow_tick();
        }
        let due: Vec<PeerId> = self
            .to_disconnect
            .iter()
            .filter(|(t, _)| *t <= now)
            .map(|(_, p)| *p)
            .collect();
        self.to_disconnect.retain(|(t, _)| *t > now);
        for p in due {
            let _ = self.swarm.disconnect_peer_id(p);
        }
        self.transfer_tick(now);
        self.save(false);
    }

    /// The earliest moment something is due.
    fn next_deadline(&self) -> Instant {
        let now = Instant::now();
        let mut next = now + Duration::from_secs(1);
        if let Some(t) = self.membership.poll_timeout() {
            next = next.min(t);
        }
        next = next.min(self.last_anti_entropy + self.config.anti_entropy_interval);
        next = next.min(self.last_connect_sweep + Duration::from_secs(2));
        if !self.dirty.is_empty() {
            next = next.min(self.last_save + self.save_gap);
        }
        for t in [self.receiver.poll_timeout(), self.sender.poll_timeout()]
            .into_iter()
            .flatten()
        {
            next = next.min(t);
        }
        if let Some((t, _)) = self.to_disconnect.iter().min_by_key(|(t, _)| *t) {
            next = next.min(*t);
        }
        next.max(now + Duration::from_millis(5))
    }

    fn on_slow_tick(&mut self) {
        self.maybe_rebase_own_status();
        self.maybe_rebase_cluster();
    }

    /// Keeps a connection to every live member (the push path reaches them directly), and
    /// keeps trying the join addresses while no peer is admitted.
    fn connect_sweep(&mut self) {
        let window = Duration::from_secs(60);
        self.refusals_logged.retain(|_, t| t.elapsed() < window);
        self.refused_us_logged.retain(|_, t| t.elapsed() < window);
        let wanted: Vec<(PeerId, Multiaddr)> = self
            .membership
            .members()
            .filter(|m| {
                m.id != *self.membership.me()
                    && matches!(m.state, MemberState::Alive | MemberState::Suspect)
            })
            .filter_map(|m| {
                let addr: Multiaddr = m.addr.parse().ok()?;
                Some((peer_of(&addr)?, addr))
            })
            .collect();
        for (peer, addr) in wanted {
            if !self.swarm.is_connected(&peer) {
                self.dial(peer, addr);
            }
        }
        if self.peers.is_empty() {
            let mut targets: Vec<Multiaddr> =
                self.config.join.iter().map(|a| quic_addr(*a)).collect();
            let known: Vec<Multiaddr> = self
                .shared
                .read(|d| d.nodes())
                .into_iter()
                .filter(|n| n.name != self.shared.node_name)
                .filter_map(|n| n.p2p_addr.parse().ok())
                .collect();
            targets.extend(known);
            for addr in targets {
                if let Err(e) = self.swarm.dial(
                    DialOpts::unknown_peer_id()
                        .address(without_p2p(&addr))
                        .build(),
                ) {
                    tracing::debug!(%addr, %e, "dial failed");
                }
            }
        }
    }

    fn connect_to_member(&mut self, id: &str) {
        let addr = self
            .membership
            .members()
            .find(|m| m.id == id)
            .and_then(|m| m.addr.parse::<Multiaddr>().ok());
        if let Some(addr) = addr {
            if let Some(peer) = peer_of(&addr) {
                if !self.swarm.is_connected(&peer) {
                    self.dial(peer, addr);
                }
            }
        }
    }

    fn dial(&mut self, peer: PeerId, addr: Multiaddr) {
        let opts = DialOpts::peer_id(peer)
            .addresses(vec![without_p2p(&addr)])
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(%peer, %e, "dial failed");
        }
    }

    // ---- membership ----

    fn drain_membership(&mut self) {
        let mut view_changed = false;
        while let Some(out) = self.membership.poll_output() {
            match out {
                Output::Send { to, addr, msg } => self.send_gossip(to, addr, msg),
                Output::Event(event) => {
                    view_changed = true;
                    self.on_membership_event(event);
                }
            }
        }
        if view_changed {
            self.publish_view();
        }
    }

    fn on_membership_event(&mut self, event: MembershipEvent) {
        let now = chrono::Utc::now();
        match &event {
            MembershipEvent::Up(id) => {
                tracing::info!(member = %id, "member up");
                self.since.insert(id.clone(), now);
                // Connect now rather than at the next sweep, before our first probe of it.
                self.connect_to_member(id);
            }
            MembershipEvent::Suspect(id) => {
                tracing::info!(member = %id, "member suspect");
                self.shared.metrics.suspicions.inc();
                self.since.insert(id.clone(), now);
            }
            MembershipEvent::Down(id) => {
                tracing::warn!(member = %id, "member down");
                self.shared.metrics.deaths.inc();
                self.since.insert(id.clone(), now);
            }
            MembershipEvent::Left(id) => {
                tracing::info!(member = %id, "member left");
                self.since.insert(id.clone(), now);
            }
            MembershipEvent::ViewChanged(epoch) => {
                tracing::info!(epoch = epoch.number, view = format!("{:016x}", epoch.view), leader = ?epoch.leader, "new epoch");
            }
        }
    }

    fn send_gossip(&mut self, to: String, addr: String, msg: membership::Message) {
        let Some(peer) = addr.parse::<Multiaddr>().ok().as_ref().and_then(peer_of) else {
            tracing::debug!(member = %to, %addr, "member address has no peer id");
            self.membership.handle_unreachable(&to, Instant::now());
            return;
        };
        if let membership::Message::Ping { seq, .. } = &msg {
            self.shared.metrics.probe_sent(*seq);
        }
        let request = Request::Gossip(msg);
        if self.peers.contains_key(&peer) && self.swarm.is_connected(&peer) {
            let id = self.swarm.behaviour_mut().rpc.send_request(&peer, request);
            self.sent.insert(id, Sent::Gossip(to));
        } else {
            // The ping waits for a connection to be set up (dial, handshake, admission): that
            // first round trip is no evidence against the member, so give the probe more time.
            if matches!(request, Request::Gossip(membership::Message::Ping { .. })) {
                self.membership.extend_probe(&to, CONNECT_GRACE);
            }
            self.queue(peer, request, Some(to));
            if !self.swarm.is_connected(&peer) {
                if let Ok(a) = addr.parse() {
                    self.dial(peer, a);
                }
            }
        }
    }

    fn queue(&mut self, peer: PeerId, request: Request, member: Option<String>) {
        let q = self.pending.entry(peer).or_default();
        if q.len() >= MAX_PENDING_PER_PEER {
            q.pop_front();
        }
        q.push_back((request, member));
    }

    fn publish_view(&mut self) {
        let epoch = self.membership.epoch();
        let mut members: Vec<MemberStatus> = self
            .membership
            .members()
            .map(|m| MemberStatus {
                name: m.id.clone(),
                state: m.state,
                incarnation: m.incarnation,
                addr: m.addr.clone(),
            })
            .collect();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        let mut admitted: Vec<String> = self.peers.values().map(|p| p.name.clone()).collect();
        admitted.sort();
        let (now, wall) = (Instant::now(), chrono::Utc::now());
        let recoveries = members
            .iter()
            .map(|m| {
                let at: Vec<chrono::DateTime<chrono::Utc>> = self
                    .membership
                    .recoveries(&m.name)
                    .filter_map(|t| {
                        chrono::Duration::from_std(now.saturating_duration_since(*t)).ok()
                    })
                    .map(|ago| wall - ago)
                    .collect();
                (m.name.clone(), at)
            })
            .filter(|(_, at)| !at.is_empty())
            .collect();
        let view = View {
            epoch: epoch.number,
            view_hash: epoch.view,
            leader: epoch.leader,
            members,
            since: self.since.clone(),
            recoveries,
            admitted,
        };
        self.shared.set_view(view);
    }

    // ---- swarm events ----

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                ..
            } => {
                self.connections
                    .entry(peer_id)
                    .or_default()
                    .push(connection_id);
                self.on_connected(peer_id);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                if let Some(ids) = self.connections.get_mut(&peer_id) {
                    ids.retain(|c| *c != connection_id);
                }
                if num_established == 0 {
                    self.connections.remove(&peer_id);
                    self.on_disconnected(peer_id);
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                tracing::debug!(%peer, %error, "outgoing connection failed");
                self.fail_pending(peer);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Rpc(event)) => self.on_rpc(event),
            SwarmEvent::Behaviour(BehaviourEvent::Admit(event)) => self.on_admit_event(event),
            SwarmEvent::NewListenAddr { address, .. } => tracing::info!(%address, "listening"),
            SwarmEvent::IncomingConnectionError { error, .. } => {
                tracing::debug!(%error, "incoming connection failed")
            }
            _ => {}
        }
    }

    fn on_connected(&mut self, peer: PeerId) {
        if self.peers.contains_key(&peer) || self.admitting.contains(&peer) {
            return;
        }
        self.admitting.insert(peer);
        let request = self.admit_request(peer);
        let id = self
            .swarm
            .behaviour_mut()
            .admit
            .send_request(&peer, request);
        self.admit_sent.insert(id);
    }

    /// An admitted peer asks for admission again: it is a new process with the same key (a
    /// restart). Connections to the old process may still look alive until the QUIC idle
    /// timeout, and requests sent on them are lost: close every connection but the new one, and
    /// start replication afresh.
    fn on_readmission(&mut self, peer: PeerId, current: ConnectionId) {
        let stale: Vec<ConnectionId> = self
            .connections
            .get(&peer)
            .into_iter()
            .flatten()
            .copied()
            .filter(|c| *c != current)
            .collect();
        for id in stale {
            self.swarm.close_connection(id);
        }
        self.peers.remove(&peer);
        self.gate.remove(&peer);
        self.sync_states.retain(|(p, _), _| *p != peer);
    }

    fn on_disconnected(&mut self, peer: PeerId) {
        self.admitting.remove(&peer);
        self.gate.remove(&peer);
        if let Some(p) = self.peers.remove(&peer) {
            tracing::debug!(member = %p.name, "peer disconnected");
            self.publish_view();
        }
        // Keep only what both sides agreed on; in-flight bookkeeping dies with the connection.
        self.forget_in_flight(peer);
        self.receiver.handle_peer_lost(&peer);
        self.drain_transfer();
        self.fail_pending(peer);
    }

    fn fail_pending(&mut self, peer: PeerId) {
        if let Some(q) = self.pending.remove(&peer) {
            let now = Instant::now();
            for member in q.into_iter().filter_map(|(_, m)| m) {
                self.membership.handle_unreachable(&member, now);
            }
        }
    }

    fn on_rpc(&mut self, event: request_response::Event<Request, Response>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => self.on_request(peer, request, channel),
                request_response::Message::Response {
                    request_id,
                    response,
                } => self.on_response(peer, request_id, response),
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => match self.sent.remove(&request_id) {
                // The peer has not opened `/shoal/1` to us yet (its half of the admission
                // exchange is still in flight): no evidence against it, as a refusal was not.
                Some(Sent::Gossip(_))
                    if matches!(
                        error,
                        request_response::OutboundFailure::UnsupportedProtocols
                    ) =>
                {
                    tracing::debug!(%peer, "gossip sent before the peer admitted us")
                }
                Some(Sent::Gossip(member)) => {
                    self.membership.handle_unreachable(&member, Instant::now())
                }
                Some(Sent::Fetch) => {
                    // A chunk over the bound or malformed is refused while decoding: it
                    // arrives here as a failure, asked again (or the transfer abandoned).
                    tracing::warn!(%peer, %error, "fetching a snapshot chunk failed (nothing changed)");
                    self.receiver.handle_fetch_failed(peer, &error.to_string());
                    self.drain_transfer();
                }
                _ => tracing::debug!(%peer, %error, "request failed"),
            },
            request_response::Event::InboundFailure { peer, error, .. } => {
                // From an admitted peer (no other gets a stream): an undecodable or oversized
                // request is a member gone bad or broken; say so, at most every 30 s.
                if matches!(error, request_response::InboundFailure::Io(_)) {
                    self.log_refusal(peer, &format!("bad or broken request: {error}"));
                } else {
                    tracing::debug!(%peer, %error, "inbound request failed")
                }
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn respond(&mut self, channel: ResponseChannel<Response>, response: Response) {
        // The peer may have gone; nothing to do then.
        let _ = self
            .swarm
            .behaviour_mut()
            .rpc
            .send_response(channel, response);
    }

    fn on_request(&mut self, peer: PeerId, request: Request, channel: ResponseChannel<Response>) {
        let Some(name) = self.peers.get(&peer).map(|p| p.name.clone()) else {
            self.log_refusal(peer, "message from a peer that has not been admitted");
            self.respond(
                channel,
                Response::Refused {
                    reason: "not admitted".into(),
                },
            );
            return;
        };
        match request {
            Request::Gossip(msg) => {
                if let membership::Message::Ack { seq, .. } = &msg {
                    self.shared.metrics.probe_acked(*seq);
                }
                let addr = self
                    .peers
                    .get(&peer)
                    .map(|p| p.addr.to_string())
                    .unwrap_or_default();
                self.membership
                    .handle_message(&name, &addr, msg, Instant::now());
                self.respond(channel, Response::Ok);
                self.drain_membership();
            }
            Request::Push { doc, changes } => {
                let response = self.on_push(&name, doc, changes);
                self.respond(channel, response);
            }
            Request::Digest { docs } => {
                let response = self.on_digest_request(&name, docs);
                self.respond(channel, response);
            }
            Request::Sync { doc, message } => {
                let response = self.on_sync_request(peer, &name, doc, message);
                self.respond(channel, response);
            }
            Request::Offer { id } => {
                self.on_offer(peer, &name, id);
                self.respond(channel, Response::Ok);
            }
            Request::Fetch { id, offset } => {
                let response = self.on_fetch(peer, &name, id, offset);
                self.respond(channel, response);
            }
        }
    }

    fn on_response(&mut self, peer: PeerId, request_id: OutboundRequestId, response: Response) {
        let sent = self.sent.remove(&request_id);
        match (sent, response) {
            (Some(Sent::Sync), Response::Sync { doc, message }) => {
                self.on_sync_response(peer, doc, message)
            }
            (Some(Sent::Digest), Response::Digest { differ }) => {
                self.on_digest_response(peer, differ)
            }
            (
                Some(Sent::Fetch),
                Response::Chunk {
                    id,
                    offset,
                    bytes,
                    crc,
                },
            ) => {
                let chunk = transfer::Chunk {
                    id,
                    offset,
                    bytes: bytes.0,
                    crc,
                };
                self.receiver.handle_chunk(peer, chunk, Instant::now());
                self.drain_transfer();
            }
            (Some(Sent::Fetch), response) => {
                let reason = match response {
                    Response::Refused { reason } => reason,
                    other => format!("unexpected answer {other:?}"),
                };
                self.receiver.handle_fetch_failed(peer, &reason);
                self.drain_transfer();
            }
            (_, Response::Refused { reason }) => tracing::debug!(%peer, %reason, "request refused"),
            _ => {}
        }
    }

    // ---- admission ----

    fn on_admit_event(&mut self, event: request_response::Event<Admit, AdmitResponse>) {
        match event {
            request_response::Event::Message {
                peer,
                connection_id,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
            } => {
                // An admitted peer asking again is a restart of the same key: the new process
                // is checked afresh.
                if self.peers.contains_key(&peer) {
                    self.on_readmission(peer, connection_id);
                }
                let response = match self.check_admission(peer, &request.claim, &request.proof.0) {
                    Ok(()) => {
                        self.admit(peer, request.claim.node_name.clone(), request.p2p_addr);
                        AdmitResponse::Admitted(self.admit_request(peer))
                    }
                    Err(reason) => {
                        self.log_refusal(peer, &reason);
                        self.to_disconnect
                            .push((Instant::now() + Duration::from_millis(500), peer));
                        AdmitResponse::Refused { reason }
                    }
                };
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .admit
                    .send_response(channel, response);
            }
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if !self.admit_sent.remove(&request_id) {
                    return;
                }
                self.admitting.remove(&peer);
                match response {
                    AdmitResponse::Admitted(theirs) => {
                        match self.check_admission(peer, &theirs.claim, &theirs.proof.0) {
                            Ok(()) => self.admit(peer, theirs.claim.node_name, theirs.p2p_addr),
                            Err(reason) => {
                                self.log_refusal(peer, &reason);
                                let _ = self.swarm.disconnect_peer_id(peer);
                            }
                        }
                    }
                    AdmitResponse::Refused { reason } => {
                        if self
                            .refused_us_logged
                            .get(&peer)
                            .is_none_or(|t| t.elapsed() > Duration::from_secs(30))
                        {
                            tracing::error!(%peer, %reason, "peer refused to admit us");
                            self.refused_us_logged.insert(peer, Instant::now());
                        }
                    }
                }
            }
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                self.admit_sent.remove(&request_id);
                self.admitting.remove(&peer);
                tracing::debug!(%peer, %error, "admission request failed");
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                self.log_refusal(peer, &format!("bad admission request: {error}"));
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn admit_request(&self, peer: PeerId) -> Admit {
        let (claim, proof, p2p_addr) = self.admission_for(peer);
        Admit {
            claim,
            proof,
            p2p_addr,
        }
    }

    /// Our claim and proof addressed to `peer`, and the address peers should dial us at.
    fn admission_for(&self, peer: PeerId) -> (AdmissionClaim, Bytes, String) {
        let identity = &self.shared.identity;
        let claim = AdmissionClaim {
            cluster_id: identity.cluster_id.clone(),
            generation: identity.generation,
            node_name: self.shared.node_name.clone(),
            prover: self.me.to_string(),
            verifier: peer.to_string(),
        };
        let proof = Bytes(admission_proof(identity, &claim));
        (claim, proof, self.my_addr.to_string())
    }

    /// Checks a peer's claim. The peer id in the claim must be the one QUIC authenticated.
    fn check_admission(
        &self,
        peer: PeerId,
        claim: &AdmissionClaim,
        proof: &[u8],
    ) -> Result<(), String> {
        let identity = &self.shared.identity;
        if claim.cluster_id != identity.cluster_id {
            return Err(format!(
                "peer belongs to another cluster ({})",
                claim.cluster_id
            ));
        }
        if claim.generation != identity.generation {
            return Err(format!(
                "peer is of cluster generation {} but this cluster is at generation {} (a restore started a new generation; old-generation agents are refused)",
                claim.generation, identity.generation
            ));
        }
        if claim.prover != peer.to_string() || claim.verifier != self.me.to_string() {
            return Err("admission proof was made for other peer ids (replay?)".into());
        }
        verify_admission(identity, claim, proof)
            .map_err(|_| "invalid admission proof (wrong join token)".to_string())?;
        if !is_dns1123_subdomain(&claim.node_name) {
            return Err(format!("invalid node name {:?}", claim.node_name));
        }
        if claim.node_name == self.shared.node_name {
            return Err(format!(
                "peer claims our own node name {:?}",
                claim.node_name
            ));
        }
        if let Ok(Some(record)) = self.shared.read(|d| d.node(&claim.node_name)) {
            if record.peer_id != peer.to_string() {
                return Err(format!(
                    "node name {:?} is registered to peer {}; delete that node first (kubectl delete node {})",
                    claim.node_name, record.peer_id, claim.node_name
                ));
            }
        }
        Ok(())
    }

    fn log_refusal(&mut self, peer: PeerId, reason: &str) {
        if self
            .refusals_logged
            .get(&peer)
            .is_none_or(|t| t.elapsed() > Duration::from_secs(30))
        {
            tracing::warn!(%peer, reason, "refused peer");
            self.refusals_logged.insert(peer, Instant::now());
        }
    }

    fn admit(&mut self, peer: PeerId, name: String, p2p_addr: String) {
        let addr: Multiaddr = match p2p_addr.parse::<Multiaddr>() {
            Ok(a) if peer_of(&a) == Some(peer) => a,
            Ok(a) => a.with(Protocol::P2p(peer)),
            Err(_) => {
                tracing::warn!(%peer, %p2p_addr, "admitted peer sent a bad address");
                return;
            }
        };
        self.admitting.remove(&peer);
        if self.peers.contains_key(&peer) {
            return;
        }
        tracing::info!(member = %name, %peer, "peer admitted");
        self.gate.admit(peer);
        self.swarm.add_peer_address(peer, without_p2p(&addr));
        self.peers.insert(
            peer,
            Peer {
                name: name.clone(),
                addr: addr.clone(),
            },
        );
        self.membership.join(name, addr.to_string(), Instant::now());
        if let Some(q) = self.pending.remove(&peer) {
            for (request, member) in q {
                let sent = match member {
                    Some(m) => Sent::Gossip(m),
                    None => Sent::Push,
                };
                self.send_to_admitted(peer, request, sent);
            }
        }
        self.anti_entropy_with(peer);
        self.drain_membership();
        self.publish_view();
    }
}
