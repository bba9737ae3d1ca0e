//! Wire messages, member records, configuration, events and epochs of the membership protocol.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A member's id: its node name.
pub type MemberId = String;

/// At most this many piggybacked updates are read from one message; extras are ignored.
pub const MAX_UPDATES: usize = 64;
/// At most this many member records are read from one push-pull; extras are ignored.
pub const MAX_PUSH_PULL: usize = 8192;
/// At most this many members (live or remembered dead) are held; unknown newcomers beyond are ignored.
pub const MAX_MEMBERS: usize = 16384;
/// Records with a longer id are ignored.
pub const MAX_ID_LEN: usize = 253;
/// Records with a longer address are ignored.
pub const MAX_ADDR_LEN: usize = 512;
/// Largest step past a member's known incarnation a record about it may take (refutations
/// add one each; a larger jump is a new life, announced only by the member itself).
pub const MAX_INCARNATION_STEP: u64 = 1 << 20;

/// Tuning of the failure detector. See [`Config::default`] for the reasoning behind the values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// One direct probe per interval.
    pub probe_interval: Duration,
    /// Wait this long for a direct ack before asking others to probe indirectly.
    pub probe_timeout: Duration,
    /// How many others are asked to probe indirectly.
    pub indirect_probes: usize,
    /// Base suspicion timeout; scaled with the cluster size (see [`Config::suspicion_timeouts`]).
    pub suspicion_timeout: Duration,
    /// Full state exchange with one random live member (and one remembered dead one).
    pub push_pull_interval: Duration,
    /// At most this many updates piggybacked on one message.
    pub max_piggyback: usize,
    /// Dead and Left members are remembered this long (so refutations and heals can find them).
    pub dead_reclaim: Duration,
    /// An update is piggybacked `retransmit_mult * ceil(log10(n + 1))` times.
    pub retransmit_mult: u32,
    /// Lifeguard's local health: the highest score. A member's probe interval and timeout are
    /// multiplied by `score + 1`, so a member that is itself starved (missed nacks, refuted
    /// suspicions of itself) probes more slowly instead of accusing healthy members.
    pub max_local_health: u32,
}

impl Default for Config {
    /// Tuned for detection of a `kill -9` within 3 s (p99) on 5..50 nodes without false deaths
    /// on a healthy cluster whose agents stall for 100-300 ms now and then:
    ///
    /// - a 400 ms probe interval with a 300 ms direct timeout: a 300 ms stall of the target
    ///   still answers within the interval (late acks count until the interval ends);
    /// - 3 indirect probes: a lossy path from the prober alone does not raise a suspicion;
    /// - 1.2 s base suspicion, scaled up gently with size and from 1x (3 independent
    ///   confirmations) to 3x (none): enough for a stalled or lossy member to refute, short
    ///   enough that a dead one, which many probers confirm, is Dead about 2 s after its death;
    /// - push-pull every 5 s repairs missed gossip and reunites partitions quickly.
    fn default() -> Self {
        Config {
            probe_interval: Duration::from_millis(400),
            probe_timeout: Duration::from_millis(300),
            indirect_probes: 3,
            suspicion_timeout: Duration::from_millis(1200),
            push_pull_interval: Duration::from_secs(5),
            max_piggyback: 16,
            dead_reclaim: Duration::from_secs(600),
            retransmit_mult: 4,
            max_local_health: 8,
        }
    }
}

impl Config {
    /// The (minimum, maximum) suspicion timeout for a cluster of `n` live members: the minimum
    /// applies once `indirect_probes` independent members confirmed the suspicion, the maximum
    /// (2x) when nobody did. The minimum is `suspicion_timeout` up to 50 members and grows
    /// slowly beyond: `suspicion_timeout * (1 + 0.5 * log10(n / 50))`.
    pub fn suspicion_timeouts(&self, n: usize) -> (Duration, Duration) {
        let n = n.max(1) as f64;
        let scale = (1.0 + 0.5 * (n / 50.0).log10()).max(1.0);
        let min = self.suspicion_timeout.mul_f64(scale);
        (min, min * 2)
    }

    /// Number of times one update is piggybacked in a cluster of `n` live members.
    pub fn retransmit_limit(&self, n: usize) -> u32 {
        let log = ((n as f64) + 1.0).log10().ceil().max(1.0) as u32;
        self.retransmit_mult.max(1) * log
    }

    /// A correctness bound (not a timing guarantee) on how long after a member dies every
    /// other member has declared it Dead, with no message loss and a connected rest: it is
    /// probed within two intervals, suspected after one more, Dead after the longest suspicion,
    /// and the news reaches everyone within a few more intervals of gossip (plus push-pull).
    pub fn detection_bound(&self, n: usize) -> Duration {
        let (_, max) = self.suspicion_timeouts(n);
        let spread = ((n.max(2) as f64).log2().ceil() as u32 + 2) * self.probe_interval;
        self.probe_interval * 3 + max + spread
    }
}

pub use crate::model::MemberState;

/// What is known about one member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: MemberId,
    /// Opaque to the core (a multiaddr for the shell).
    pub addr: String,
    pub incarnation: u64,
    pub state: MemberState,
}

/// A piggybacked state change: the record and the member that declared it (the suspecter for
/// Suspect, so that confirmations count distinct witnesses, not relays).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    pub member: MemberInfo,
    pub by: MemberId,
}

/// Messages between membership cores. Every vector is bounded on receipt.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Message {
    /// Direct probe of `target` (the receiver ignores pings meant for another id).
    Ping {
        seq: u64,
        target: MemberId,
        updates: Vec<Update>,
    },
    /// Answer to a `Ping` (or relayed answer of an indirect probe) with the same `seq`.
    Ack { seq: u64, updates: Vec<Update> },
    /// Ask the receiver to probe `target` and relay its ack.
    PingReq {
        seq: u64,
        target: MemberId,
        target_addr: String,
        updates: Vec<Update>,
    },
    /// Updates only: a graceful leave, or telling a sender what we believe about it.
    Gossip { updates: Vec<Update> },
    /// Answer of an indirect prober whose target did not ack in time: "I am alive and
    /// reachable, the target did not answer me either". An origin that gets fewer nacks than
    /// it asked helpers for learns that its own messages are late (Lifeguard), not the target's.
    Nack { seq: u64 },
    /// Full state exchange; `reply` asks the receiver to answer with its own.
    PushPull {
        members: Vec<MemberInfo>,
        reply: bool,
    },
}

/// What the shell must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    Send {
        to: MemberId,
        addr: String,
        msg: Message,
    },
    Event(MembershipEvent),
}

/// Transitions of the local view, emitted exactly once per transition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipEvent {
    Up(MemberId),
    Suspect(MemberId),
    Down(MemberId),
    Left(MemberId),
    ViewChanged(Epoch),
}

/// A membership view: begins whenever the live set changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Epoch {
    /// Local counter, +1 on every live-set change (not comparable across members).
    pub number: u64,
    /// Stable hash of the sorted live set (equal on members that share the view).
    pub view: u64,
    /// The scheduler leader of this view ([`crate::membership::leader::leader`]).
    pub leader: Option<MemberId>,
}
