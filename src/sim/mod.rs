//! Deterministic simulator: many membership cores and document replicas in one process, on a
//! simulated network with latency, loss, partitions, crashes and stalls, all from one seed.
//!
//! Time is simulated (`base + offset`); nothing here reads a clock. Every node is driven by
//! its core's `poll_timeout`; messages are delivered after a random latency unless dropped.
//! A send to a node that is killed or on the other side of a partition is reported back with
//! `handle_unreachable` after `unreachable_after`, as a real transport would. A paused node
//! (SIGSTOP) neither ticks nor reads; its messages queue until it resumes. After every input
//! it feeds a core, and after every reconcile, it checks the core's invariants
//! (`Membership::check_invariants`, `sched::check_invariants`): a violation panics the test.
//!
//! With `SimConfig::controllers` set, every node also runs the controllers' loop of the agent
//! (`agent/controllers.rs`) on its own replica: when its view names it leader and its
//! membership has settled, it reconciles (`sched::reconcile`) and pushes the plan's change to
//! its live members (see `workload.rs`).

mod replica;
mod workload;

pub use replica::{sync_pair, Replica};
pub use workload::WorkloadStats;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use crate::membership::{
    Config, Epoch, MemberId, MemberState, Membership, MembershipEvent, Message, Output,
};

/// Messages a paused node can queue before further ones are lost.
const PAUSED_INBOX: usize = 4096;

/// Knobs of the simulated world.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub membership: Config,
    /// Per-message latency, uniform in `[min, max]`.
    pub latency: (Duration, Duration),
    /// Probability that a message between reachable nodes is lost.
    pub drop_rate: f64,
    /// Delay after which an undeliverable send (killed peer, partition) is reported; `None`: never.
    pub unreachable_after: Option<Duration>,
    /// Mean time between document writes (by a random running node); `None`: no writes.
    pub write_every: Option<Duration>,
    /// Each node runs a sync session with a random reachable live member this often.
    pub anti_entropy_every: Duration,
    /// Mean time between short stalls (scheduling hiccups) of each node; `None`: none.
    pub hiccup_every: Option<Duration>,
    /// Length of a stall, uniform in `[min, max]`.
    pub hiccup_len: (Duration, Duration),
    /// Each node runs the controllers' loop this often (acting only while it leads); `None`:
    /// no controllers.
    pub controllers: Option<Duration>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            membership: Config::default(),
            latency: (Duration::from_millis(1), Duration::from_millis(20)),
            drop_rate: 0.0,
            unreachable_after: Some(Duration::from_millis(500)),
            write_every: None,
            anti_entropy_every: Duration::from_secs(3),
            hiccup_every: None,
            hiccup_len: (Duration::from_millis(100), Duration::from_millis(300)),
            controllers: None,
        }
    }
}

/// Whether a simulated process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeStatus {
    Running,
    /// SIGSTOP: no ticks, incoming messages queue.
    Paused,
    /// kill -9: gone until revived (the document survives, like a file on disk).
    Killed,
}

/// One membership event as observed by one node at one simulated time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub at: Duration,
    pub node: usize,
    pub event: MembershipEvent,
}

enum Payload {
    Membership(Message),
    /// Shared between the receivers of one push (a plan's change can be large).
    Changes(std::sync::Arc<[Vec<u8>]>),
}

enum Event {
    Deliver {
        from: usize,
        to: usize,
        payload: Payload,
    },
    Unreachable {
        node: usize,
        life: u64,
        to: usize,
    },
    Wake {
        node: usize,
        life: u64,
    },
    AntiEntropy {
        node: usize,
    },
    Write,
    Hiccup {
        node: usize,
    },
    EndHiccup {
        node: usize,
        life: u64,
    },
    Reconcile {
        node: usize,
    },
}

struct Node {
    name: MemberId,
    addr: String,
    core: Membership,
    status: NodeStatus,
    /// Bumped on every restart, so timers of a previous life are ignored.
    life: u64,
    /// The instant of the wake event currently scheduled.
    wake: Option<Instant>,
    inbox: Vec<(usize, Payload)>,
    replica: Replica,
    /// Paused by a hiccup (resumed by its end), not by the test.
    hiccup: bool,
    /// The controllers' loop state of this life.
    leader: workload::LeaderState,
}

/// The simulated cluster.
pub struct Sim {
    config: SimConfig,
    seed: u64,
    base: Instant,
    now: Instant,
    rng: ChaCha8Rng,
    nodes: Vec<Node>,
    index: BTreeMap<MemberId, usize>,
    /// Partition group of each node; reachable iff equal.
    group: Vec<usize>,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    events: BTreeMap<u64, Event>,
    next_event: u64,
    observed: Vec<Observed>,
    digest: Sha256,
    writes: u64,
    messages: u64,
    stats: WorkloadStats,
}

impl Sim {
    /// `n` nodes named `n000`, `n001`, ...; every node joins through `n000`. `base` is the
    /// origin of simulated time (any instant; the caller reads the clock, the simulator never
    /// does); only offsets from it matter, so traces do not depend on it.
    pub fn new(n: usize, seed: u64, config: SimConfig, base: Instant) -> Self {
        let mut sim = Sim {
            seed,
            base,
            now: base,
            rng: ChaCha8Rng::seed_from_u64(seed),
            nodes: Vec::with_capacity(n),
            index: BTreeMap::new(),
            group: vec![0; n],
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            next_event: 0,
            observed: Vec::new(),
            digest: Sha256::new(),
            writes: 0,
            messages: 0,
            stats: WorkloadStats::default(),
            config,
        };
        for i in 0..n {
            let name = format!("n{i:03}");
            let addr = format!("/sim/{name}");
            let core = Membership::new(
                name.clone(),
                addr.clone(),
                1,
                sim.config.membership.clone(),
                sim.node_seed(i, 0),
                base,
            );
            sim.index.insert(name.clone(), i);
            sim.nodes.push(Node {
                name,
                addr,
                core,
                status: NodeStatus::Running,
                life: 0,
                wake: None,
                inbox: Vec::new(),
                replica: Replica::new(i),
                hiccup: false,
                leader: workload::LeaderState::new(Duration::ZERO),
            });
        }
        for i in 0..n {
            if i > 0 {
                let (seed_name, seed_addr) = (sim.nodes[0].name.clone(), sim.nodes[0].addr.clone());
                sim.nodes[i].core.join(seed_name, seed_addr, base);
            }
            sim.after_input(i);
            let jitter = sim
                .config
                .anti_entropy_every
                .mul_f64(sim.rng.gen_range(0.0..1.0));
            sim.schedule(base + jitter, Event::AntiEntropy { node: i });
            if let Some(every) = sim.config.controllers {
                let jitter = every.mul_f64(sim.rng.gen_range(0.0..1.0));
                sim.schedule(base + jitter, Event::Reconcile { node: i });
            }
            sim.schedule_hiccup(i);
        }
        if let Some(every) = sim.config.write_every {
            let at = base + every.mul_f64(sim.rng.gen_range(0.0..2.0));
            sim.schedule(at, Event::Write);
        }
        sim
    }

    fn node_seed(&self, node: usize, life: u64) -> u64 {
        self.seed
            ^ (node as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ life.wrapping_mul(0xD1B5_4A32_D192_ED03)
    }

    // ----- driving -----

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.base
    }

    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(Reverse((at, id))) = self.queue.peek().copied() {
            if at > end {
                break;
            }
            self.queue.pop();
            self.now = self.now.max(at);
            if let Some(event) = self.events.remove(&id) {
                self.handle(event);
            }
        }
        self.now = end;
    }

    /// Run in `step`s until `done` holds or `limit` passed; returns the simulated time taken.
    pub fn run_until(
        &mut self,
        limit: Duration,
        step: Duration,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Option<Duration> {
        let start = self.now;
        while self.now - start < limit {
            if done(self) {
                return Some(self.now - start);
            }
            self.run_for(step);
        }
        done(self).then(|| self.now - start)
    }

    fn schedule(&mut self, at: Instant, event: Event) {
        let id = self.next_event;
        self.next_event += 1;
        self.events.insert(id, event);
        self.queue.push(Reverse((at, id)));
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver { from, to, payload } => self.deliver(from, to, payload),
            Event::Unreachable { node, life, to } => {
                if self.nodes[node].life == life && self.nodes[node].status == NodeStatus::Running {
                    let to = self.nodes[to].name.clone();
                    self.nodes[node].core.handle_unreachable(&to, self.now);
                    self.after_input(node);
                }
            }
            Event::Wake { node, life } => {
                let n = &mut self.nodes[node];
                if n.life != life || n.wake != Some(self.now) || n.status != NodeStatus::Running {
                    return;
                }
                n.wake = None;
                n.core.tick(self.now);
                self.after_input(node);
            }
            Event::AntiEntropy { node } => {
                self.anti_entropy(node);
                let every = self.config.anti_entropy_every;
                let at = self.now + every.mul_f64(self.rng.gen_range(0.75..1.25));
                self.schedule(at, Event::AntiEntropy { node });
            }
            Event::Write => {
                self.random_write();
                if let Some(every) = self.config.write_every {
                    let at = self.now + every.mul_f64(self.rng.gen_range(0.0..2.0));
                    self.schedule(at, Event::Write);
                }
            }
            Event::Hiccup { node } => {
                if self.nodes[node].status == NodeStatus::Running {
                    let (lo, hi) = self.config.hiccup_len;
                    let len = lo + (hi.saturating_sub(lo)).mul_f64(self.rng.gen_range(0.0..=1.0));
                    self.nodes[node].status = NodeStatus::Paused;
                    self.nodes[node].hiccup = true;
                    let life = self.nodes[node].life;
                    self.schedule(self.now + len, Event::EndHiccup { node, life });
                }
                self.schedule_hiccup(node);
            }
            Event::EndHiccup { node, life } => {
                if self.nodes[node].life == life && self.nodes[node].hiccup {
                    self.resume(node);
                }
            }
            Event::Reconcile { node } => {
                self.controllers(node);
                if let Some(every) = self.config.controllers {
                    let at = self.now + every.mul_f64(self.rng.gen_range(0.75..1.25));
                    self.schedule(at, Event::Reconcile { node });
                }
            }
        }
    }

    fn schedule_hiccup(&mut self, node: usize) {
        if let Some(every) = self.config.hiccup_every {
            let at = self.now + every.mul_f64(self.rng.gen_range(0.0..2.0));
            self.schedule(at, Event::Hiccup { node });
        }
    }

    fn deliver(&mut self, from: usize, to: usize, payload: Payload) {
        if self.nodes[to].status == NodeStatus::Killed || self.group[from] != self.group[to] {
            return;
        }
        if self.nodes[to].status == NodeStatus::Paused {
            if self.nodes[to].inbox.len() < PAUSED_INBOX {
                self.nodes[to].inbox.push((from, payload));
            }
            return;
        }
        self.receive(from, to, payload);
    }

    fn receive(&mut self, from: usize, to: usize, payload: Payload) {
        match payload {
            Payload::Membership(msg) => {
                let (name, addr) = (self.nodes[from].name.clone(), self.nodes[from].addr.clone());
                self.nodes[to]
                    .core
                    .handle_message(&name, &addr, msg, self.now);
                self.after_input(to);
            }
            Payload::Changes(changes) => {
                self.nodes[to].replica.receive_changes(&changes);
            }
        }
    }

    /// Check the core's invariants, drain its outputs into the network and the event log, and
    /// reschedule its wake-up.
    fn after_input(&mut self, node: usize) {
        self.nodes[node].core.check_invariants();
        while let Some(out) = self.nodes[node].core.poll_output() {
            match out {
                Output::Send { to, msg, .. } => {
                    if let Some(&dest) = self.index.get(&to) {
                        self.send(node, dest, Payload::Membership(msg));
                    }
                }
                Output::Event(event) => self.record(node, event),
            }
        }
        let n = &mut self.nodes[node];
        if n.status != NodeStatus::Running {
            return;
        }
        let next = n.core.poll_timeout().map(|t| t.max(self.now));
        if next != n.wake {
            n.wake = next;
            if let Some(at) = next {
                let life = n.life;
                self.schedule(at, Event::Wake { node, life });
            }
        }
    }

    fn send(&mut self, from: usize, to: usize, payload: Payload) {
        self.messages += 1;
        let reachable =
            self.nodes[to].status != NodeStatus::Killed && self.group[from] == self.group[to];
        if !reachable {
            if let (Payload::Membership(_), Some(after)) = (&payload, self.config.unreachable_after)
            {
                let life = self.nodes[from].life;
                self.schedule(
                    self.now + after,
                    Event::Unreachable {
                        node: from,
                        life,
                        to,
                    },
                );
            }
            return;
        }
        if self.rng.gen_bool(self.config.drop_rate.clamp(0.0, 1.0)) {
            return;
        }
        let (lo, hi) = self.config.latency;
        let latency = lo + hi.saturating_sub(lo).mul_f64(self.rng.gen_range(0.0..=1.0));
        self.schedule(self.now + latency, Event::Deliver { from, to, payload });
    }

    fn record(&mut self, node: usize, event: MembershipEvent) {
        let at = self.elapsed();
        if matches!(event, MembershipEvent::ViewChanged(_)) {
            self.nodes[node].leader.view_changed = at;
        }
        self.digest
            .update(format!("{}|{}|{:?}\n", at.as_nanos(), node, event).as_bytes());
        self.observed.push(Observed { at, node, event });
    }

    // ----- replication -----

    fn random_write(&mut self) {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].status == NodeStatus::Running)
            .collect();
        let Some(&node) = running.choose(&mut self.rng) else {
            return;
        };
        self.write(node);
    }

    /// Node `node` writes a new key and pushes the change to its live members (lossy fast path).
    pub fn write(&mut self, node: usize) {
        self.writes += 1;
        let key = format!("k{}-{}", node, self.writes);
        let value = self.rng.gen::<u64>();
        let Some(change) = self.nodes[node].replica.write(&key, value) else {
            return;
        };
        self.push(node, vec![change]);
    }

    /// Push locally made changes of `node` to its live members (lossy fast path).
    fn push(&mut self, node: usize, changes: Vec<Vec<u8>>) {
        if changes.is_empty() {
            return;
        }
        let changes: std::sync::Arc<[Vec<u8>]> = changes.into();
        let peers: Vec<usize> = self.live_peers(node);
        for peer in peers {
            self.send(node, peer, Payload::Changes(changes.clone()));
        }
    }

    fn live_peers(&self, node: usize) -> Vec<usize> {
        self.nodes[node]
            .core
            .live()
            .iter()
            .filter_map(|id| self.index.get(id).copied())
            .filter(|&i| i != node)
            .collect()
    }

    fn anti_entropy(&mut self, node: usize) {
        if self.nodes[node].status != NodeStatus::Running {
            return;
        }
        let candidates: Vec<usize> = self
            .live_peers(node)
            .into_iter()
            .filter(|&p| {
                self.group[p] == self.group[node] && self.nodes[p].status == NodeStatus::Running
            })
            .collect();
        let Some(&peer) = candidates.choose(&mut self.rng) else {
            return;
        };
        let (a, b) = pair_mut(&mut self.nodes, node, peer);
        self.messages += sync_pair(&mut a.replica, node, &mut b.replica, peer) as u64;
    }

    /// Change the write rate; `None` stops writing (e.g. before checking convergence).
    pub fn set_write_every(&mut self, every: Option<Duration>) {
        let was = self.config.write_every;
        self.config.write_every = every;
        if let (None, Some(every)) = (was, every) {
            let at = self.now + every.mul_f64(self.rng.gen_range(0.0..2.0));
            self.schedule(at, Event::Write);
        }
    }

    // ----- faults -----

    /// Split the cluster: nodes in the same group reach each other; unlisted nodes are alone.
    pub fn partition(&mut self, groups: &[Vec<usize>]) {
        let n = self.nodes.len();
        self.group = (0..n).map(|i| usize::MAX - i).collect();
        for (g, members) in groups.iter().enumerate() {
            for &i in members {
                if i < n {
                    self.group[i] = g;
                }
            }
        }
    }

    pub fn heal(&mut self) {
        self.group = vec![0; self.nodes.len()];
    }

    /// kill -9: the process is gone; its document survives.
    pub fn kill(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        n.status = NodeStatus::Killed;
        n.wake = None;
        n.inbox.clear();
        n.hiccup = false;
        n.life += 1;
    }

    /// Restart a killed node: a fresh core with incarnation 0 (nothing persisted) that joins
    /// through a random running node; the document is kept, sync states are lost.
    pub fn revive(&mut self, node: usize) {
        if self.nodes[node].status != NodeStatus::Killed {
            return;
        }
        let life = self.nodes[node].life;
        let seed = self.node_seed(node, life);
        let (name, addr) = (self.nodes[node].name.clone(), self.nodes[node].addr.clone());
        let core = Membership::new(
            name,
            addr,
            0,
            self.config.membership.clone(),
            seed,
            self.now,
        );
        let others: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| i != node && self.nodes[i].status == NodeStatus::Running)
            .collect();
        let elapsed = self.now - self.base;
        let n = &mut self.nodes[node];
        n.core = core;
        n.status = NodeStatus::Running;
        n.replica.reset_sync();
        n.leader = workload::LeaderState::new(elapsed);
        if let Some(&via) = others.choose(&mut self.rng) {
            let (via_name, via_addr) = (self.nodes[via].name.clone(), self.nodes[via].addr.clone());
            self.nodes[node].core.join(via_name, via_addr, self.now);
        }
        self.after_input(node);
    }

    /// SIGSTOP.
    pub fn pause(&mut self, node: usize) {
        if self.nodes[node].status == NodeStatus::Running {
            self.nodes[node].status = NodeStatus::Paused;
            self.nodes[node].wake = None;
        }
        self.nodes[node].hiccup = false;
    }

    /// SIGCONT: queued messages are read, then the core ticks.
    pub fn resume(&mut self, node: usize) {
        if self.nodes[node].status != NodeStatus::Paused {
            return;
        }
        self.nodes[node].status = NodeStatus::Running;
        self.nodes[node].hiccup = false;
        self.nodes[node].wake = None;
        let inbox = std::mem::take(&mut self.nodes[node].inbox);
        for (from, payload) in inbox {
            if self.nodes[node].status == NodeStatus::Running {
                self.receive(from, node, payload);
            }
        }
        self.nodes[node].core.tick(self.now);
        self.after_input(node);
    }

    // ----- observers -----

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn name(&self, node: usize) -> &MemberId {
        &self.nodes[node].name
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    pub fn status(&self, node: usize) -> NodeStatus {
        self.nodes[node].status
    }

    pub fn core(&self, node: usize) -> &Membership {
        &self.nodes[node].core
    }

    pub fn live_set(&self, node: usize) -> &BTreeSet<MemberId> {
        self.nodes[node].core.live()
    }

    pub fn epoch(&self, node: usize) -> Epoch {
        self.nodes[node].core.epoch()
    }

    pub fn leader(&self, node: usize) -> Option<MemberId> {
        self.nodes[node].core.epoch().leader
    }

    /// What `observer` believes about `subject`.
    pub fn state_of(&self, observer: usize, subject: usize) -> Option<MemberState> {
        self.nodes[observer]
            .core
            .state_of(&self.nodes[subject].name)
    }

    pub fn heads(&mut self, node: usize) -> Vec<automerge::ChangeHash> {
        self.nodes[node].replica.heads()
    }

    pub fn doc_len(&self, node: usize) -> usize {
        self.nodes[node].replica.len()
    }

    /// Every membership event so far, in order.
    pub fn observed(&self) -> &[Observed] {
        &self.observed
    }

    /// SHA-256 of the event trace (time, node, event): equal seeds give equal digests.
    pub fn digest(&self) -> [u8; 32] {
        self.digest.clone().finalize().into()
    }

    pub fn writes(&self) -> u64 {
        self.writes
    }

    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// The names of the given nodes.
    pub fn names(&self, nodes: impl IntoIterator<Item = usize>) -> BTreeSet<MemberId> {
        nodes
            .into_iter()
            .map(|i| self.nodes[i].name.clone())
            .collect()
    }

    /// Indices of running nodes.
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].status == NodeStatus::Running)
            .collect()
    }
}

fn pair_mut<T>(v: &mut [T], a: usize, b: usize) -> (&mut T, &mut T) {
    assert_ne!(a, b);
    if a < b {
        let (lo, hi) = v.split_at_mut(b);
        (&mut lo[a], &mut hi[0])
    } else {
        let (lo, hi) = v.split_at_mut(a);
        (&mut hi[0], &mut lo[b])
    }
}
