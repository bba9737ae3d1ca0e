//! The membership state machine: probes, suspicion, refutation, dissemination and the epoch.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use super::broadcast::Broadcasts;
use super::types::*;

/// What this member knows about another (or itself).
#[derive(Debug)]
struct Member {
    info: MemberInfo,
    changed_at: Instant,
    suspicion: Option<Suspicion>,
}

/// A running suspicion: independent witnesses shorten it.
#[derive(Debug)]
struct Suspicion {
    started: Instant,
    witnesses: BTreeSet<MemberId>,
    deadline: Instant,
}

/// The probe of the current interval.
#[derive(Debug)]
struct Probe {
    target: MemberId,
    seq: u64,
    direct_deadline: Instant,
    indirect_sent: bool,
    acked: bool,
    /// The shell asked for more time once (it is still connecting to the target).
    extended: bool,
    /// Indirect probers asked (each owes us an ack or a nack).
    nacks_expected: usize,
    /// Of those, the ones we heard from lately: only their silence says that *we* are slow
    /// (a helper across a partition cannot nack either).
    nacks_owed: usize,
    nacks: usize,
}

/// An indirect probe this member runs for another.
#[derive(Debug)]
struct Relay {
    origin: MemberId,
    origin_addr: String,
    origin_seq: u64,
    expires: Instant,
    /// When to tell the origin that the target has not answered (cleared once sent).
    nack_at: Option<Instant>,
}

/// Urgent updates (deaths, leaves, refutations) are pushed to this many random members on arrival.
const FORWARD_FANOUT: usize = 2;

/// A stall longer than this (tick called this late) shifts every timer: time the process did
/// not observe is not evidence against others.
fn stall_slack(config: &Config) -> Duration {
    (config.probe_timeout / 2).max(Duration::from_millis(50))
}

/// SWIM-like failure detector of one member (sans-IO). See the module docs.
pub struct Membership {
    me: MemberId,
    incarnation: u64,
    left: bool,
    config: Config,
    rng: ChaCha8Rng,
    members: BTreeMap<MemberId, Member>,
    probe_order: Vec<MemberId>,
    probe_pos: usize,
    /// Members suspected by others: probed next, out of turn, to confirm or clear quickly.
    probe_first: VecDeque<MemberId>,
    probe: Option<Probe>,
    next_probe: Instant,
    next_push_pull: Instant,
    next_reclaim: Instant,
    seq: u64,
    relays: BTreeMap<u64, Relay>,
    seeds: BTreeMap<MemberId, String>,
    /// Last time we told a member our opinion of it (or pulled from an unknown sender).
    told: BTreeMap<MemberId, Instant>,
    broadcasts: Broadcasts,
    outputs: VecDeque<Output>,
    /// The live set (ids of `live_now`); the epoch is recomputed from it after each batch.
    live: BTreeSet<MemberId>,
    /// The live set as it is now, with each member's leader weight (cached: SHA-256).
    live_now: BTreeMap<MemberId, u64>,
    /// `live_now` changed since the epoch was last computed.
    live_dirty: bool,
    epoch: Epoch,
    /// Members with a running suspicion (their deadlines live in `members`).
    suspects: BTreeSet<MemberId>,
    /// While set, the epoch is recomputed once at the end of a batch (a push-pull).
    batching: bool,
    /// Lifeguard's local health score, `0..=config.max_local_health`: probe interval and
    /// timeout are multiplied by `health + 1`. Rises when our own messages look late (missing
    /// nacks, suspicions of ourselves to refute), falls with every acked probe.
    health: u32,
    /// Recent recoveries (a member back to Alive from Suspect, Dead or Left), per member, oldest
    /// first, at most [`FLAP_MEMORY`]: the leader's flap damping reads them.
    recoveries: BTreeMap<MemberId, VecDeque<Instant>>,
    /// When each member last sent us anything (Lifeguard: whose missing nack counts).
    heard: BTreeMap<MemberId, Instant>,
}

/// Recoveries remembered per member for [`Membership::flaps`].
const FLAP_MEMORY: usize = 8;

impl Membership {
    pub fn new(
        me: MemberId,
        addr: String,
        incarnation: u64,
        config: Config,
        seed: u64,
        now: Instant,
    ) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let info = MemberInfo {
            id: me.clone(),
            addr,
            incarnation,
            state: MemberState::Alive,
        };
        let mut members = BTreeMap::new();
        members.insert(
            me.clone(),
            Member {
                info,
                changed_at: now,
                suspicion: None,
            },
        );
        let live: BTreeSet<MemberId> = [me.clone()].into_iter().collect();
        let epoch = Epoch {
            number: 0,
            view: view_hash(&live),
            leader: super::leader::leader(&live),
        };
        // Spread the first probe over one interval so members started together do not beat in step.
        let jitter = config.probe_interval.mul_f64(rng.gen_range(0.0..1.0));
        let next_probe = now + jitter;
        let next_push_pull = now + config.push_pull_interval.mul_f64(rng.gen_range(0.5..1.0));
        Membership {
            me,
            incarnation,
            left: false,
            config,
            rng,
            members,
            probe_order: Vec::new(),
            probe_pos: 0,
            probe_first: VecDeque::new(),
            probe: None,
            next_probe,
            next_push_pull,
            next_reclaim: now,
            seq: 0,
            relays: BTreeMap::new(),
            seeds: BTreeMap::new(),
            told: BTreeMap::new(),
            broadcasts: Broadcasts::default(),
            outputs: VecDeque::new(),
            live_now: live
                .iter()
                .map(|id| (id.clone(), super::leader::weight(id)))
                .collect(),
            live,
            live_dirty: false,
            epoch,
            batching: false,
            suspects: BTreeSet::new(),
            health: 0,
            recoveries: BTreeMap::new(),
            heard: BTreeMap::new(),
        }
    }

    /// Lifeguard's local health score (0 = healthy).
    pub fn local_health(&self) -> u32 {
        self.health
    }

    /// How many times `id` came back to Alive (from Suspect, Dead or Left) within `window` before
    /// `now`: a member that flaps under load is not trusted with new work for a while.
    pub fn flaps(&self, id: &str, window: Duration, now: Instant) -> usize {
        self.recoveries.get(id).map_or(0, |r| {
            r.iter()
                .filter(|at| now.saturating_duration_since(**at) < window)
                .count()
        })
    }

    /// When `id` last came back to Alive, oldest first (at most a few).
    pub fn recoveries(&self, id: &str) -> impl Iterator<Item = &Instant> {
        self.recoveries.get(id).into_iter().flatten()
    }

    /// `d` stretched by the local health multiplier.
    fn scaled(&self, d: Duration) -> Duration {
        d * (self.health + 1)
    }

    fn health_up(&mut self, by: u32) {
        self.health = self
            .health
            .saturating_add(by)
            .min(self.config.max_local_health);
    }

    fn health_down(&mut self) {
        self.health = self.health.saturating_sub(1);
    }

    pub fn me(&self) -> &MemberId {
        &self.me
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Every known member, including self and remembered Dead/Left ones, in id order.
    pub fn members(&self) -> impl Iterator<Item = &MemberInfo> {
        self.members.values().map(|m| &m.info)
    }

    pub fn state_of(&self, id: &str) -> Option<MemberState> {
        self.members.get(id).map(|m| m.info.state)
    }

    /// Alive and Suspect members, including self (unless it left).
    pub fn live_members(&self) -> BTreeSet<MemberId> {
        self.live.clone()
    }

    /// The live set of the current epoch, borrowed (what `live_members` copies).
    pub fn live(&self) -> &BTreeSet<MemberId> {
        &self.live
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch.clone()
    }

    /// The work of [`Membership::join`].
    fn join_step(&mut self, id: MemberId, addr: String, now: Instant) {
        let _ = now;
        if id == self.me || !valid_id(&id) || addr.len() > MAX_ADDR_LEN {
            return;
        }
        self.seeds.insert(id.clone(), addr.clone());
        self.send_push_pull(id, addr, true);
    }

    /// The work of [`Membership::leave`].
    fn leave_step(&mut self, now: Instant) {
        if self.left {
            return;
        }
        self.left = true;
        self.probe = None;
        let info = self.set_self(MemberState::Left, now);
        let me = self.me.clone();
        self.set_liveness(&me, false);
        let update = Update {
            member: info,
            by: self.me.clone(),
        };
        self.broadcasts.push(update.clone());
        let targets: Vec<(MemberId, String)> =
            self.others_in(&[MemberState::Alive, MemberState::Suspect]);
        for (to, addr) in targets {
            self.send(
                to,
                addr,
                Message::Gossip {
                    updates: vec![update.clone()],
                },
            );
        }
        self.update_epoch();
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The next instant `tick` must be called at (it may be called more often).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.left {
            return None;
        }
        let mut next = self.next_probe.min(self.next_push_pull);
        if let Some(p) = &self.probe {
            if !p.acked && !p.indirect_sent {
                next = next.min(p.direct_deadline);
            }
        }
        for id in &self.suspects {
            if let Some(s) = self.members.get(id).and_then(|m| m.suspicion.as_ref()) {
                next = next.min(s.deadline);
            }
        }
        for r in self.relays.values() {
            if let Some(at) = r.nack_at {
                next = next.min(at);
            }
        }
        Some(next)
    }

    /// The work of [`Membership::handle_unreachable`].
    fn handle_unreachable_step(&mut self, to: &MemberId, now: Instant) {
        let direct_pending =
            matches!(&self.probe, Some(p) if &p.target == to && !p.acked && !p.indirect_sent);
        if direct_pending {
            self.send_indirect_probes(now);
        }
    }

    /// The work of [`Membership::extend_probe`].
    fn extend_probe_step(&mut self, to: &MemberId, extra: Duration) {
        let interval_rest = self
            .config
            .probe_interval
            .saturating_sub(self.config.probe_timeout);
        if let Some(p) = self.probe.as_mut() {
            if p.target == *to && !p.acked && !p.indirect_sent && !p.extended {
                p.extended = true;
                p.direct_deadline += extra;
                self.next_probe = self.next_probe.max(p.direct_deadline + interval_rest);
            }
        }
    }

    /// The work of [`Membership::tick`].
    fn tick_step(&mut self, now: Instant) {
        if self.left {
            return;
        }
        self.absorb_stall(now);
        self.expire_suspicions(now);
        let direct_expired = matches!(&self.probe, Some(p) if !p.acked && !p.indirect_sent && now >= p.direct_deadline);
        if direct_expired {
            self.send_indirect_probes(now);
        }
        self.send_due_nacks(now);
        if now >= self.next_probe {
            self.finish_probe(now);
            self.start_probe(now);
            self.next_probe = now + self.scaled(self.config.probe_interval);
        }
        if now >= self.next_push_pull {
            self.periodic_push_pull();
            self.next_push_pull = now + self.config.push_pull_interval;
        }
        self.reclaim(now);
    }

    /// The work of [`Membership::handle_message`].
    fn handle_message_step(
        &mut self,
        from: &MemberId,
        from_addr: &str,
        msg: Message,
        now: Instant,
    ) {
        if self.left || from == &self.me || !valid_id(from) || from_addr.len() > MAX_ADDR_LEN {
            return;
        }
        if self.members.contains_key(from) {
            self.heard.insert(from.clone(), now);
        }
        match msg {
            Message::Ping {
                seq,
                target,
                updates,
            } => {
                self.apply_updates(updates, from, now);
                if target != self.me {
                    return;
                }
                let mut piggy = Vec::new();
                if !self.members.contains_key(from) {
                    self.tell_sender(from, from_addr, now);
                } else if let Some(theirs) = self.opinion_to_tell(from, now, true) {
                    piggy.push(theirs);
                }
                let limit = self.config.max_piggyback.saturating_sub(piggy.len());
                piggy.extend(self.take_piggyback(limit));
                self.send(
                    from.clone(),
                    from_addr.to_string(),
                    Message::Ack {
                        seq,
                        updates: piggy,
                    },
                );
            }
            Message::Ack { seq, updates } => {
                self.apply_updates(updates, from, now);
                if let Some(relay) = self.relays.remove(&seq) {
                    let updates = self.take_piggyback(self.config.max_piggyback);
                    self.send(
                        relay.origin,
                        relay.origin_addr,
                        Message::Ack {
                            seq: relay.origin_seq,
                            updates,
                        },
                    );
                } else if let Some(p) = self.probe.as_mut() {
                    if p.seq == seq && !p.acked {
                        p.acked = true;
                        self.health_down();
                    }
                }
                self.tell_sender(from, from_addr, now);
            }
            Message::PingReq {
                seq,
                target,
                target_addr,
                updates,
            } => {
                self.apply_updates(updates, from, now);
                if !valid_id(&target) || target_addr.len() > MAX_ADDR_LEN {
                    return;
                }
                if target == self.me {
                    let updates = self.take_piggyback(self.config.max_piggyback);
                    self.send(
                        from.clone(),
                        from_addr.to_string(),
                        Message::Ack { seq, updates },
                    );
                    return;
                }
                self.seq += 1;
                let relay_seq = self.seq;
                self.relays.insert(
                    relay_seq,
                    Relay {
                        origin: from.clone(),
                        origin_addr: from_addr.to_string(),
                        origin_seq: seq,
                        expires: now + self.config.probe_interval,
                        nack_at: Some(now + self.config.probe_timeout.mul_f64(0.8)),
                    },
                );
                let addr = match self.members.get(&target) {
                    Some(m) if !m.info.addr.is_empty() => m.info.addr.clone(),
                    _ => target_addr,
                };
                let updates = self.take_piggyback(self.config.max_piggyback);
                self.send(
                    target.clone(),
                    addr,
                    Message::Ping {
                        seq: relay_seq,
                        target,
                        updates,
                    },
                );
                self.tell_sender(from, from_addr, now);
            }
            Message::Gossip { updates } => {
                self.apply_updates(updates, from, now);
                self.tell_sender(from, from_addr, now);
            }
            Message::Nack { seq } => {
                if let Some(p) = self.probe.as_mut() {
                    if p.seq == seq && p.indirect_sent && p.nacks < p.nacks_expected {
                        p.nacks += 1;
                    }
                }
            }
            Message::PushPull { members, reply } => {
                self.seeds.remove(from);
                self.batching = true;
                for info in members.into_iter().take(MAX_PUSH_PULL) {
                    let by = from.clone();
                    self.apply_update(Update { member: info, by }, Some(from), now, true);
                }
                self.batching = false;
                self.update_epoch();
                if reply {
                    self.send_push_pull(from.clone(), from_addr.to_string(), false);
                }
                let tell = self.state_of(from).is_some_and(|s| s != MemberState::Alive);
                if tell && !reply {
                    self.tell_sender(from, from_addr, now);
                }
            }
        }
    }

    // ----- probes -----

    fn start_probe(&mut self, now: Instant) {
        let Some(target) = self.next_probe_target() else {
            self.probe = None;
            return;
        };
        let Some(addr) = self.members.get(&target).map(|m| m.info.addr.clone()) else {
            return;
        };
        self.seq += 1;
        let seq = self.seq;
        self.probe = Some(Probe {
            target: target.clone(),
            seq,
            direct_deadline: now + self.scaled(self.config.probe_timeout),
            indirect_sent: false,
            acked: false,
            extended: false,
            nacks_expected: 0,
            nacks_owed: 0,
            nacks: 0,
        });
        let mut updates = Vec::new();
        // A suspect learns of its suspicion from the prober itself, so it can refute quickly.
        if let Some(m) = self.members.get(&target) {
            if m.info.state == MemberState::Suspect {
                updates.push(Update {
                    member: m.info.clone(),
                    by: self.me.clone(),
                });
            }
        }
        let limit = self.config.max_piggyback.saturating_sub(updates.len());
        updates.extend(self.take_piggyback(limit));
        self.send(
            target.clone(),
            addr,
            Message::Ping {
                seq,
                target,
                updates,
            },
        );
    }

    fn next_probe_target(&mut self) -> Option<MemberId> {
        while let Some(id) = self.probe_first.pop_front() {
            if self.state_of(&id) == Some(MemberState::Suspect) {
                return Some(id);
            }
        }
        for _ in 0..2 {
            while self.probe_pos < self.probe_order.len() {
                let id = self.probe_order[self.probe_pos].clone();
                self.probe_pos += 1;
                if self.is_live_other(&id) {
                    return Some(id);
                }
            }
            let mut order: Vec<MemberId> = self
                .members
                .keys()
                .filter(|id| self.is_live_other(id))
                .cloned()
                .collect();
            order.shuffle(&mut self.rng);
            self.probe_order = order;
            self.probe_pos = 0;
            if self.probe_order.is_empty() {
                return None;
            }
        }
        None
    }

    fn is_live_other(&self, id: &str) -> bool {
        id != self.me
            && self
                .members
                .get(id)
                .is_some_and(|m| matches!(m.info.state, MemberState::Alive | MemberState::Suspect))
    }

    /// A newcomer gets a random place among the members not yet probed this round.
    fn insert_in_probe_order(&mut self, id: MemberId) {
        let pos = self.rng.gen_range(self.probe_pos..=self.probe_order.len());
        self.probe_order.insert(pos, id);
    }

    fn send_indirect_probes(&mut self, now: Instant) {
        let Some(p) = self.probe.as_mut() else { return };
        if p.acked || p.indirect_sent {
            return;
        }
        p.indirect_sent = true;
        let (target, seq) = (p.target.clone(), p.seq);
        let Some(target_addr) = self.members.get(&target).map(|m| m.info.addr.clone()) else {
            return;
        };
        let helpers = self.random_alive(self.config.indirect_probes, &target);
        let recent = self.config.probe_interval * 2;
        let owed = helpers
            .iter()
            .filter(|(h, _)| {
                self.heard
                    .get(h)
                    .is_some_and(|at| now.saturating_duration_since(*at) <= recent)
            })
            .count();
        if let Some(p) = self.probe.as_mut() {
            p.nacks_expected = helpers.len();
            p.nacks_owed = owed;
        }
        for (to, addr) in helpers {
            let updates = self.take_piggyback(self.config.max_piggyback);
            let msg = Message::PingReq {
                seq,
                target: target.clone(),
                target_addr: target_addr.clone(),
                updates,
            };
            self.send(to, addr, msg);
        }
    }

    /// The interval is over: an unanswered probe raises (or confirms) a suspicion.
    fn finish_probe(&mut self, now: Instant) {
        let Some(p) = self.probe.take() else { return };
        if p.acked {
            return;
        }
        // Lifeguard: helpers that do not even nack are evidence that our own messages are late
        // (we are the starved one); with no helper to ask, the failed probe is. One step per
        // probe at most: in a partition, helpers on the far side cannot nack either, and
        // stretching every probe there would slow the detection each side needs.
        if p.nacks_expected == 0 || (p.nacks_owed > 0 && p.nacks == 0) {
            self.health_up(1);
        }
        let Some(m) = self.members.get(&p.target) else {
            return;
        };
        if !matches!(m.info.state, MemberState::Alive | MemberState::Suspect) {
            return;
        }
        let mut info = m.info.clone();
        info.state = MemberState::Suspect;
        let addr = info.addr.clone();
        let update = Update {
            member: info,
            by: self.me.clone(),
        };
        self.apply_update(update.clone(), None, now, false);
        // Tell the suspect itself at once: after a stall or a lost ack it can refute right away.
        self.send(
            p.target,
            addr,
            Message::Gossip {
                updates: vec![update],
            },
        );
    }

    /// Indirect probes we run whose target has not acked by their nack time: tell the origin
    /// we are alive and did not hear from the target either.
    fn send_due_nacks(&mut self, now: Instant) {
        let due: Vec<(MemberId, String, u64)> = self
            .relays
            .values_mut()
            .filter(|r| r.nack_at.is_some_and(|at| now >= at))
            .map(|r| {
                r.nack_at = None;
                (r.origin.clone(), r.origin_addr.clone(), r.origin_seq)
            })
            .collect();
        for (to, addr, seq) in due {
            self.send(to, addr, Message::Nack { seq });
        }
    }

    // ----- suspicion -----

    fn expire_suspicions(&mut self, now: Instant) {
        let expired: Vec<MemberInfo> = self
            .suspects
            .iter()
            .filter_map(|id| self.members.get(id))
            .filter(|m| m.suspicion.as_ref().is_some_and(|s| now >= s.deadline))
            .map(|m| m.info.clone())
            .collect();
        for mut info in expired {
            info.state = MemberState::Dead;
            self.apply_update(
                Update {
                    member: info,
                    by: self.me.clone(),
                },
                None,
                now,
                false,
            );
        }
    }

    fn suspicion_deadline(&self, started: Instant, witnesses: usize) -> Instant {
        let (min, max) = self.config.suspicion_timeouts(self.live_now.len());
        let others = self.live_now.len().saturating_sub(2);
        let k = self.config.indirect_probes.min(others);
        let confirmations = witnesses.saturating_sub(1);
        if k == 0 {
            return started + min;
        }
        let frac = ((confirmations as f64) + 1.0).ln() / ((k as f64) + 1.0).ln();
        let timeout = max
            .saturating_sub((max - min).mul_f64(frac.min(1.0)))
            .max(min);
        started + timeout
    }

    // ----- updates -----

    fn apply_updates(&mut self, updates: Vec<Update>, from: &MemberId, now: Instant) {
        for u in updates.into_iter().take(MAX_UPDATES) {
            self.apply_update(u, Some(from), now, false);
        }
    }

    /// Merge one record. For one member, a higher incarnation wins; for the same incarnation
    /// the later state (Alive < Suspect < Dead < Left). A Dead learnt by push-pull counts only
    /// as a suspicion, so the member gets a chance to refute. `sender`: the (authenticated)
    /// member the record came from, `None` for our own.
    ///
    /// Incarnations are bounded: a record more than [`MAX_INCARNATION_STEP`] past the one held
    /// is ignored unless it is the member's own `Alive` (a new life), and the member's own
    /// `Alive` replaces a record that far ahead of it (it never issued that incarnation: a
    /// forgery, such as a `Dead` at `u64::MAX` that nothing could outbid).
    fn apply_update(
        &mut self,
        update: Update,
        sender: Option<&MemberId>,
        now: Instant,
        via_push_pull: bool,
    ) {
        let Update {
            member: mut info,
            by,
        } = update;
        if !valid_id(&info.id) || !valid_id(&by) || info.addr.len() > MAX_ADDR_LEN {
            return;
        }
        if info.id == self.me {
            self.refute(&info, now);
            return;
        }
        if via_push_pull && info.state == MemberState::Dead {
            info.state = MemberState::Suspect;
        }
        let Some(current) = self.members.get(&info.id) else {
            self.discover(info, by, now);
            return;
        };
        let held = current.info.incarnation;
        let own_word = sender == Some(&info.id) && info.state == MemberState::Alive;
        if own_word && held > info.incarnation.saturating_add(MAX_INCARNATION_STEP) {
            self.transition(info, by, now);
            return;
        }
        if !own_word && info.incarnation > held.saturating_add(MAX_INCARNATION_STEP) {
            return;
        }
        let old = (current.info.incarnation, current.info.state);
        let new = (info.incarnation, info.state);
        if new > old {
            self.transition(info, by, now);
        } else if new == old && info.state == MemberState::Suspect && !via_push_pull {
            // A push-pull relays state; only piggybacked updates name an independent witness.
            self.confirm(&info, by);
        }
    }

    fn discover(&mut self, info: MemberInfo, by: MemberId, now: Instant) {
        if matches!(info.state, MemberState::Dead | MemberState::Left)
            || info.addr.is_empty()
            || self.members.len() >= MAX_MEMBERS
        {
            return;
        }
        let id = info.id.clone();
        let state = info.state;
        self.members.insert(
            id.clone(),
            Member {
                info: info.clone(),
                changed_at: now,
                suspicion: None,
            },
        );
        if state == MemberState::Suspect {
            self.start_suspicion(&id, by.clone(), now);
        }
        self.insert_in_probe_order(id.clone());
        self.set_liveness(&id, true);
        self.broadcasts.push(Update { member: info, by });
        self.emit_state(&id, state);
        self.update_epoch();
    }

    fn transition(&mut self, info: MemberInfo, by: MemberId, now: Instant) {
        let id = info.id.clone();
        let Some(m) = self.members.get_mut(&id) else {
            return;
        };
        let was = m.info.state;
        m.info.incarnation = info.incarnation;
        m.info.state = info.state;
        if !info.addr.is_empty() {
            m.info.addr = info.addr.clone();
        }
        m.changed_at = now;
        m.suspicion = None;
        let record = m.info.clone();
        self.suspects.remove(&id);
        if info.state == MemberState::Suspect {
            self.start_suspicion(&id, by.clone(), now);
        }
        if info.state == MemberState::Alive
            && matches!(
                was,
                MemberState::Suspect | MemberState::Dead | MemberState::Left
            )
        {
            let r = self.recoveries.entry(id.clone()).or_default();
            if r.len() >= FLAP_MEMORY {
                r.pop_front();
            }
            r.push_back(now);
        }
        let was_live = matches!(was, MemberState::Alive | MemberState::Suspect);
        let is_live = matches!(info.state, MemberState::Alive | MemberState::Suspect);
        if is_live && !was_live {
            self.insert_in_probe_order(id.clone());
        }
        if is_live != was_live {
            self.set_liveness(&id, is_live);
        }
        let update = Update { member: record, by };
        self.broadcasts.push(update.clone());
        // Deaths, leaves and refutations race against timers elsewhere: besides riding on
        // later messages, they are pushed at once to a few random members (an epidemic of
        // fanout FORWARD_FANOUT, so a cluster learns them in a few network latencies).
        let urgent = match info.state {
            MemberState::Dead | MemberState::Left => was != info.state,
            MemberState::Alive => was != MemberState::Alive,
            MemberState::Suspect => false,
        };
        if urgent {
            self.forward(&update, &id);
        }
        if was != info.state {
            self.emit_state(&id, info.state);
        }
        self.update_epoch();
    }

    fn forward(&mut self, update: &Update, about: &str) {
        let peers = self.random_alive(FORWARD_FANOUT, about);
        for (to, addr) in peers {
            self.send(
                to,
                addr,
                Message::Gossip {
                    updates: vec![update.clone()],
                },
            );
        }
    }

    fn start_suspicion(&mut self, id: &str, by: MemberId, now: Instant) {
        let deadline = self.suspicion_deadline(now, 1);
        if by != self.me
            && self.probe_first.len() < self.config.indirect_probes.max(1)
            && !self.probe_first.iter().any(|p| p == id)
        {
            self.probe_first.push_back(id.to_string());
        }
        if let Some(m) = self.members.get_mut(id) {
            let witnesses: BTreeSet<MemberId> = [by].into_iter().collect();
            m.suspicion = Some(Suspicion {
                started: now,
                witnesses,
                deadline,
            });
            self.suspects.insert(id.to_string());
        }
    }

    /// Another independent witness of a running suspicion shortens it; the news is re-gossiped
    /// (naming the witness) until enough witnesses are known.
    fn confirm(&mut self, info: &MemberInfo, by: MemberId) {
        let k = self.config.indirect_probes;
        let Some(m) = self.members.get_mut(&info.id) else {
            return;
        };
        let Some(s) = m.suspicion.as_mut() else {
            return;
        };
        if by == info.id || s.witnesses.len() > k || !s.witnesses.insert(by.clone()) {
            return;
        }
        let (started, count) = (s.started, s.witnesses.len());
        let record = m.info.clone();
        let deadline = self.suspicion_deadline(started, count);
        if let Some(s) = self
            .members
            .get_mut(&info.id)
            .and_then(|m| m.suspicion.as_mut())
        {
            s.deadline = s.deadline.min(deadline);
        }
        self.broadcasts.push(Update { member: record, by });
    }

    /// Someone believes we are not Alive (or knows a later life of ours): outbid it.
    fn refute(&mut self, info: &MemberInfo, now: Instant) {
        if self.left {
            return;
        }
        let stale_alive = info.state == MemberState::Alive && info.incarnation <= self.incarnation;
        let stale_accusation =
            info.state != MemberState::Alive && info.incarnation < self.incarnation;
        if stale_alive || stale_accusation {
            return;
        }
        // Being suspected is evidence that we answer late (Lifeguard).
        if info.state != MemberState::Alive {
            self.health_up(1);
        }
        // A record of us far past our own incarnation is not one we issued: re-announce our
        // record instead of outbidding it (its holders take our own word over it).
        if info.incarnation <= self.incarnation.saturating_add(MAX_INCARNATION_STEP) {
            self.incarnation = info.incarnation.saturating_add(1);
        }
        let record = self.set_self(MemberState::Alive, now);
        let update = Update {
            member: record,
            by: self.me.clone(),
        };
        self.broadcasts.push(update.clone());
        // Jump-start the refutation: a suspicion is racing against it.
        let me = self.me.clone();
        self.forward(&update, &me);
        self.forward(&update, &me);
    }

    fn set_self(&mut self, state: MemberState, now: Instant) -> MemberInfo {
        let incarnation = self.incarnation;
        let me = self.me.clone();
        let m = self.members.entry(me.clone()).or_insert_with(|| Member {
            info: MemberInfo {
                id: me,
                addr: String::new(),
                incarnation,
                state,
            },
            changed_at: now,
            suspicion: None,
        });
        m.info.state = state;
        m.info.incarnation = incarnation;
        m.changed_at = now;
        m.info.clone()
    }

    // ----- telling senders what we believe -----

    /// Our record of `from` if it should hear it (we hold it not Alive), at most once per
    /// `probe_timeout` unless `always`. An unknown sender gets a push-pull instead.
    fn opinion_to_tell(&mut self, from: &MemberId, now: Instant, always: bool) -> Option<Update> {
        let state = self.members.get(from).map(|m| m.info.state);
        if state == Some(MemberState::Alive) {
            return None;
        }
        let recently = self
            .told
            .get(from)
            .is_some_and(|at| now.saturating_duration_since(*at) < self.config.probe_timeout);
        if recently && !always {
            return None;
        }
        self.told.insert(from.clone(), now);
        match self.members.get(from) {
            Some(m) => Some(Update {
                member: m.info.clone(),
                by: self.me.clone(),
            }),
            None => None,
        }
    }

    fn tell_sender(&mut self, from: &MemberId, from_addr: &str, now: Instant) {
        let known = self.members.contains_key(from);
        if !known {
            if self
                .told
                .get(from)
                .is_some_and(|at| now.saturating_duration_since(*at) < self.config.probe_interval)
            {
                return;
            }
            self.told.insert(from.clone(), now);
            self.send_push_pull(from.clone(), from_addr.to_string(), true);
            return;
        }
        if let Some(update) = self.opinion_to_tell(from, now, false) {
            self.send(
                from.clone(),
                from_addr.to_string(),
                Message::Gossip {
                    updates: vec![update],
                },
            );
        }
    }

    // ----- push-pull -----

    fn periodic_push_pull(&mut self) {
        let live = self.others_in(&[MemberState::Alive]);
        if let Some((to, addr)) = live.choose(&mut self.rng).cloned() {
            self.send_push_pull(to, addr, true);
        }
        // Reconnect: a remembered dead member may be back (a healed partition, a resumed process).
        let dead = self.others_in(&[MemberState::Dead]);
        if let Some((to, addr)) = dead.choose(&mut self.rng).cloned() {
            self.send_push_pull(to, addr, true);
        }
        let seeds: Vec<(MemberId, String)> = self
            .seeds
            .iter()
            .filter(|(id, _)| !self.is_live_other(id))
            .map(|(id, addr)| (id.clone(), addr.clone()))
            .collect();
        for (to, addr) in seeds {
            self.send_push_pull(to, addr, true);
        }
    }

    fn send_push_pull(&mut self, to: MemberId, addr: String, reply: bool) {
        let members: Vec<MemberInfo> = self
            .members
            .values()
            .take(MAX_PUSH_PULL)
            .map(|m| m.info.clone())
            .collect();
        self.send(to, addr, Message::PushPull { members, reply });
    }

    // ----- bookkeeping -----

    fn reclaim(&mut self, now: Instant) {
        if now < self.next_reclaim {
            return;
        }
        self.next_reclaim = now + Duration::from_secs(1);
        let forget: Vec<MemberId> = self
            .members
            .values()
            .filter(|m| {
                matches!(m.info.state, MemberState::Dead | MemberState::Left)
                    && m.info.id != self.me
                    && now.saturating_duration_since(m.changed_at) >= self.config.dead_reclaim
            })
            .map(|m| m.info.id.clone())
            .collect();
        for id in forget {
            self.suspects.remove(&id);
            self.members.remove(&id);
            self.told.remove(&id);
            self.recoveries.remove(&id);
            self.heard.remove(&id);
        }
        self.relays.retain(|_, r| r.expires > now);
        let horizon = self.config.push_pull_interval;
        self.told
            .retain(|_, at| now.saturating_duration_since(*at) < horizon);
    }

    /// If `tick` comes much later than due, the process was stalled: push every timer back by
    /// the stall instead of blaming others for acks we could not read.
    fn absorb_stall(&mut self, now: Instant) {
        let Some(due) = self.poll_timeout() else {
            return;
        };
        let late = now.saturating_duration_since(due);
        if late <= stall_slack(&self.config) {
            return;
        }
        self.next_probe += late;
        self.next_push_pull += late;
        if let Some(p) = self.probe.as_mut() {
            p.direct_deadline += late;
        }
        for m in self.members.values_mut() {
            if let Some(s) = m.suspicion.as_mut() {
                s.started += late;
                s.deadline += late;
            }
        }
        for r in self.relays.values_mut() {
            r.expires += late;
            if let Some(at) = r.nack_at.as_mut() {
                *at += late;
            }
        }
    }

    /// Up to `k` distinct random Alive members other than self and `except`. Samples the probe
    /// order (which holds every live member) instead of scanning all members.
    fn random_alive(&mut self, k: usize, except: &str) -> Vec<(MemberId, String)> {
        let mut chosen: Vec<(MemberId, String)> = Vec::with_capacity(k);
        let len = self.probe_order.len();
        if len == 0 || k == 0 {
            return chosen;
        }
        for _ in 0..k * 4 {
            if chosen.len() >= k {
                break;
            }
            let id = &self.probe_order[self.rng.gen_range(0..len)];
            if id == except || id == &self.me || chosen.iter().any(|(c, _)| c == id) {
                continue;
            }
            if let Some(m) = self.members.get(id) {
                if m.info.state == MemberState::Alive {
                    chosen.push((m.info.id.clone(), m.info.addr.clone()));
                }
            }
        }
        chosen
    }

    fn others_in(&self, states: &[MemberState]) -> Vec<(MemberId, String)> {
        self.members
            .values()
            .filter(|m| m.info.id != self.me && states.contains(&m.info.state))
            .map(|m| (m.info.id.clone(), m.info.addr.clone()))
            .collect()
    }

    fn take_piggyback(&mut self, max: usize) -> Vec<Update> {
        let limit = self.config.retransmit_limit(self.live_now.len());
        self.broadcasts.take(max.min(MAX_UPDATES), limit)
    }

    fn send(&mut self, to: MemberId, addr: String, msg: Message) {
        self.outputs.push_back(Output::Send { to, addr, msg });
    }

    fn emit_state(&mut self, id: &str, state: MemberState) {
        let id = id.to_string();
        let event = match state {
            MemberState::Alive => MembershipEvent::Up(id),
            MemberState::Suspect => MembershipEvent::Suspect(id),
            MemberState::Dead => MembershipEvent::Down(id),
            MemberState::Left => MembershipEvent::Left(id),
        };
        self.outputs.push_back(Output::Event(event));
    }

    fn set_liveness(&mut self, id: &str, live: bool) {
        if live {
            if !self.live_now.contains_key(id) {
                self.live_now
                    .insert(id.to_string(), super::leader::weight(id));
                self.live.insert(id.to_string());
                self.live_dirty = true;
            }
        } else if self.live_now.remove(id).is_some() {
            self.live.remove(id);
            self.live_dirty = true;
        }
    }

    fn update_epoch(&mut self) {
        if self.batching || !self.live_dirty {
            return;
        }
        self.live_dirty = false;
        let view = view_hash(&self.live);
        if view == self.epoch.view {
            return;
        }
        // Same rule as `leader::leader`, with the weights cached.
        let leader = self
            .live_now
            .iter()
            .max_by(|a, b| (a.1, a.0).cmp(&(b.1, b.0)))
            .map(|(id, _)| id.clone());
        self.epoch = Epoch {
            number: self.epoch.number + 1,
            view,
            leader,
        };
        self.outputs
            .push_back(Output::Event(MembershipEvent::ViewChanged(
                self.epoch.clone(),
            )));
    }
}

/// The events a shell feeds the core. After each one, tests check the core's invariants.
impl Membership {
    /// Start exchanging full state with a known peer (a seed). Retried every push-pull
    /// interval while the seed is not live in our view.
    pub fn join(&mut self, id: MemberId, addr: String, now: Instant) {
        self.join_step(id, addr, now);
        self.after_event();
    }

    /// Graceful leave: mark self Left and tell every live member.
    pub fn leave(&mut self, now: Instant) {
        self.leave_step(now);
        self.after_event();
    }

    /// The shell could not deliver a message to `to`: like a missed ack.
    pub fn handle_unreachable(&mut self, to: &MemberId, now: Instant) {
        self.handle_unreachable_step(to, now);
        self.after_event();
    }

    /// The shell cannot deliver the probe in flight to `to` yet because it is still setting up
    /// a connection (dial, handshake, admission): a fresh connection's first round trip is not
    /// evidence of anything. Gives that probe `extra` time once, moving the end of the probe
    /// interval with it. A connection that never comes up ends in `handle_unreachable`.
    pub fn extend_probe(&mut self, to: &MemberId, extra: Duration) {
        self.extend_probe_step(to, extra);
        self.after_event();
    }

    /// Timers: probes, suspicions, nacks, push-pull, reclaiming the long dead.
    pub fn tick(&mut self, now: Instant) {
        self.tick_step(now);
        self.after_event();
    }

    /// A message from member `from` at `from_addr`.
    pub fn handle_message(&mut self, from: &MemberId, from_addr: &str, msg: Message, now: Instant) {
        self.handle_message_step(from, from_addr, msg, now);
        self.after_event();
    }

    #[cfg(not(test))]
    fn after_event(&self) {}

    #[cfg(test)]
    fn after_event(&self) {
        self.check_invariants();
    }

    /// Checks what must hold between events, as iroh-gossip does after every event (the unit
    /// tests after each event, the simulator after each input it feeds a core): our own record
    /// is held; the live set is exactly the members alive or suspect, with its leader weights;
    /// running suspicions are exactly those of suspect members; local health and remembered
    /// recoveries stay within their bounds; a settled epoch is the hash of the live set.
    /// Panics, naming the invariant, when one does not hold; the agent never calls it.
    pub fn check_invariants(&self) {
        assert!(
            self.members.contains_key(&self.me),
            "our own record is held"
        );
        assert!(self.members.len() <= MAX_MEMBERS + 1, "members bounded");
        let live: BTreeSet<MemberId> = self
            .members
            .values()
            .filter(|m| m.info.state.is_live())
            .map(|m| m.info.id.clone())
            .collect();
        assert_eq!(
            self.live, live,
            "the live set is the members alive or suspect"
        );
        assert!(
            self.live_now.keys().eq(self.live.iter()),
            "live_now and live agree"
        );
        let suspected: BTreeSet<MemberId> = self
            .members
            .values()
            .filter(|m| m.suspicion.is_some())
            .map(|m| m.info.id.clone())
            .collect();
        assert_eq!(
            self.suspects, suspected,
            "suspects are the members with a suspicion"
        );
        for id in &self.suspects {
            assert_eq!(
                self.members[id].info.state,
                MemberState::Suspect,
                "{id} suspected"
            );
        }
        assert!(self.health <= self.config.max_local_health);
        for (id, r) in &self.recoveries {
            assert!(r.len() <= FLAP_MEMORY, "{id}: recoveries bounded");
            assert!(
                self.members.contains_key(id),
                "{id}: recoveries of a member held"
            );
        }
        if !self.batching && !self.live_dirty {
            assert_eq!(
                self.epoch.view,
                view_hash(&self.live),
                "the epoch is of the live set"
            );
        }
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN
}

/// Stable hash of a sorted live set: the first 8 bytes of SHA-256 over the ids, each followed by 0.
pub(crate) fn view_hash(live: &BTreeSet<MemberId>) -> u64 {
    let mut hasher = Sha256::new();
    for id in live {
        hasher.update(id.as_bytes());
        hasher.update([0u8]);
    }
    let digest = hasher.finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes)
}

#[cfg(test)]
mod tests;
