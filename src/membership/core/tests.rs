//! Unit tests of the membership core, driven by a tiny lossless in-memory router.

use super::*;

const MS: Duration = Duration::from_millis(1);

fn node(name: &str, now: Instant) -> Membership {
    Membership::new(
        name.into(),
        format!("/test/{name}"),
        1,
        Config::default(),
        7,
        now,
    )
}

/// Cores keyed by name; `cut` lists directed links that lose every message.
struct Net {
    nodes: BTreeMap<MemberId, Membership>,
    now: Instant,
    cut: BTreeSet<(MemberId, MemberId)>,
    events: Vec<(MemberId, MembershipEvent)>,
    inflight: Vec<(MemberId, MemberId, Message)>,
}

impl Net {
    fn new(names: &[&str]) -> Self {
        let now = Instant::now();
        let nodes = names
            .iter()
            .map(|n| (n.to_string(), node(n, now)))
            .collect();
        let mut net = Net {
            nodes,
            now,
            cut: BTreeSet::new(),
            events: Vec::new(),
            inflight: Vec::new(),
        };
        for n in names.iter().skip(1) {
            let seed = names[0].to_string();
            net.nodes
                .get_mut(*n)
                .unwrap()
                .join(seed.clone(), format!("/test/{seed}"), now);
        }
        net
    }

    /// Advance in 10 ms steps; messages take one step.
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += 10 * MS;
            let now = self.now;
            for (from, to, msg) in std::mem::take(&mut self.inflight) {
                if self.cut.contains(&(from.clone(), to.clone())) {
                    continue;
                }
                if let Some(n) = self.nodes.get_mut(&to) {
                    n.handle_message(&from, &format!("/test/{from}"), msg, now);
                }
            }
            for n in self.nodes.values_mut() {
                if n.poll_timeout().is_some_and(|t| t <= now) {
                    n.tick(now);
                }
            }
            self.drain();
        }
    }

    fn drain(&mut self) {
        for (name, n) in self.nodes.iter_mut() {
            while let Some(out) = n.poll_output() {
                match out {
                    Output::Send { to, msg, .. } => self.inflight.push((name.clone(), to, msg)),
                    Output::Event(e) => self.events.push((name.clone(), e)),
                }
            }
        }
    }

    fn get(&self, name: &str) -> &Membership {
        &self.nodes[name]
    }
}

fn alive(id: &str, inc: u64) -> MemberInfo {
    MemberInfo {
        id: id.into(),
        addr: format!("/test/{id}"),
        incarnation: inc,
        state: MemberState::Alive,
    }
}

fn with_state(mut info: MemberInfo, state: MemberState) -> MemberInfo {
    info.state = state;
    info
}

fn upd(info: MemberInfo, by: &str) -> Update {
    Update {
        member: info,
        by: by.into(),
    }
}

#[test]
fn probe_and_ack_keep_everyone_alive() {
    let mut net = Net::new(&["a", "b", "c"]);
    net.run(Duration::from_secs(20));
    for n in ["a", "b", "c"] {
        assert_eq!(net.get(n).live_members().len(), 3, "{n} sees everyone");
    }
    assert!(
        !net.events
            .iter()
            .any(|(_, e)| matches!(e, MembershipEvent::Suspect(_) | MembershipEvent::Down(_))),
        "no suspicion on a lossless network: {:?}",
        net.events
    );
    let leaders: BTreeSet<_> = ["a", "b", "c"]
        .iter()
        .map(|n| net.get(n).epoch().leader)
        .collect();
    assert_eq!(leaders.len(), 1);
}

#[test]
fn ping_is_acked_with_same_seq() {
    let now = Instant::now();
    let mut b = node("b", now);
    b.handle_message(
        &"a".into(),
        "/test/a",
        Message::Ping {
            seq: 42,
            target: "b".into(),
            updates: vec![],
        },
        now,
    );
    let acks: Vec<_> = std::iter::from_fn(|| b.poll_output())
        .filter_map(|o| match o {
            Output::Send {
                to,
                msg: Message::Ack { seq, .. },
                ..
            } => Some((to, seq)),
            _ => None,
        })
        .collect();
    assert_eq!(acks, vec![("a".to_string(), 42)]);
}

#[test]
fn indirect_probe_success_prevents_suspicion() {
    let mut net = Net::new(&["a", "b", "c", "d"]);
    net.run(Duration::from_secs(8));
    // a and b cannot talk directly; c and d relay.
    net.cut.insert(("a".into(), "b".into()));
    net.cut.insert(("b".into(), "a".into()));
    net.events.clear();
    net.run(Duration::from_secs(20));
    assert_eq!(net.get("a").state_of("b"), Some(MemberState::Alive));
    assert_eq!(net.get("b").state_of("a"), Some(MemberState::Alive));
    assert!(
        !net.events
            .iter()
            .any(|(_, e)| matches!(e, MembershipEvent::Down(_))),
        "no deaths: {:?}",
        net.events
    );
}

#[test]
fn unreachable_member_is_suspected_then_dead() {
    let mut net = Net::new(&["a", "b", "c"]);
    net.run(Duration::from_secs(8));
    for other in ["a", "b"] {
        net.cut.insert(("c".into(), other.into()));
        net.cut.insert((other.into(), "c".into()));
    }
    net.run(Duration::from_secs(15));
    assert_eq!(net.get("a").state_of("c"), Some(MemberState::Dead));
    assert_eq!(net.get("b").state_of("c"), Some(MemberState::Dead));
    let downs = net
        .events
        .iter()
        .filter(|(o, e)| o == "a" && *e == MembershipEvent::Down("c".into()))
        .count();
    assert_eq!(downs, 1, "exactly one Down event per transition");
    assert_eq!(
        net.get("c").state_of("c"),
        Some(MemberState::Alive),
        "never declares itself dead"
    );
    // Heal: c comes back with a higher incarnation.
    net.cut.clear();
    net.run(Duration::from_secs(15));
    assert_eq!(net.get("a").state_of("c"), Some(MemberState::Alive));
    assert!(net.get("c").incarnation() > 1);
}

#[test]
fn refutes_suspicion_with_higher_incarnation() {
    let now = Instant::now();
    let mut a = node("a", now);
    let accusation = upd(with_state(alive("a", 1), MemberState::Suspect), "b");
    a.handle_message(
        &"b".into(),
        "/test/b",
        Message::Gossip {
            updates: vec![accusation],
        },
        now,
    );
    assert_eq!(a.incarnation(), 2);
    assert_eq!(a.state_of("a"), Some(MemberState::Alive));
    // The refutation rides on the next message.
    a.handle_message(
        &"b".into(),
        "/test/b",
        Message::Ping {
            seq: 1,
            target: "a".into(),
            updates: vec![],
        },
        now,
    );
    let refuted = std::iter::from_fn(|| a.poll_output()).any(|o| match o {
        Output::Send {
            msg: Message::Ack { updates, .. },
            ..
        } => updates.iter().any(|u| {
            u.member.id == "a" && u.member.incarnation == 2 && u.member.state == MemberState::Alive
        }),
        _ => false,
    });
    assert!(refuted);
    // An old accusation is ignored.
    let stale = upd(with_state(alive("a", 1), MemberState::Dead), "b");
    a.handle_message(
        &"b".into(),
        "/test/b",
        Message::Gossip {
            updates: vec![stale],
        },
        now,
    );
    assert_eq!(a.incarnation(), 2);
}

#[test]
fn dead_is_overridden_only_by_higher_incarnation_and_left_is_final() {
    let now = Instant::now();
    let mut a = node("a", now);
    let gossip = |a: &mut Membership, info: MemberInfo| {
        a.handle_message(
            &"c".into(),
            "/test/c",
            Message::Gossip {
                updates: vec![upd(info, "c")],
            },
            now,
        );
    };
    gossip(&mut a, alive("b", 3));
    gossip(&mut a, with_state(alive("b", 3), MemberState::Dead));
    assert_eq!(a.state_of("b"), Some(MemberState::Dead));
    gossip(&mut a, alive("b", 3));
    assert_eq!(
        a.state_of("b"),
        Some(MemberState::Dead),
        "same incarnation does not resurrect"
    );
    gossip(&mut a, alive("b", 4));
    assert_eq!(a.state_of("b"), Some(MemberState::Alive));
    gossip(&mut a, with_state(alive("b", 4), MemberState::Left));
    gossip(&mut a, with_state(alive("b", 4), MemberState::Dead));
    gossip(&mut a, with_state(alive("b", 4), MemberState::Suspect));
    assert_eq!(
        a.state_of("b"),
        Some(MemberState::Left),
        "left is final for the incarnation"
    );
    let events: Vec<_> = std::iter::from_fn(|| a.poll_output())
        .filter_map(|o| match o {
            Output::Event(MembershipEvent::ViewChanged(_)) => None,
            Output::Event(e) => Some(e),
            _ => None,
        })
        .collect();
    use MembershipEvent::*;
    assert_eq!(
        events,
        vec![
            Up("b".into()),
            Down("b".into()),
            Up("b".into()),
            Left("b".into())
        ]
    );
}

#[test]
fn bounded_inputs_are_ignored_beyond_limits() {
    let now = Instant::now();
    let mut a = node("a", now);
    let updates: Vec<Update> = (0..1000)
        .map(|i| upd(alive(&format!("m{i}"), 1), "x"))
        .collect();
    a.handle_message(&"x".into(), "/test/x", Message::Gossip { updates }, now);
    // MAX_UPDATES new members plus self (the unknown sender gets a push-pull, not a record).
    assert_eq!(a.members().count(), MAX_UPDATES + 1);

    let members: Vec<MemberInfo> = (0..MAX_PUSH_PULL + 500)
        .map(|i| alive(&format!("p{i}"), 1))
        .collect();
    let mut b = node("b", now);
    b.handle_message(
        &"x".into(),
        "/test/x",
        Message::PushPull {
            members,
            reply: false,
        },
        now,
    );
    assert_eq!(b.members().count(), MAX_PUSH_PULL + 1);

    let mut c = node("c", now);
    let long = "z".repeat(MAX_ID_LEN + 1);
    let bad = vec![
        upd(alive(&long, 1), "x"),
        upd(alive("", 1), "x"),
        upd(alive("ok", 1), &long),
    ];
    c.handle_message(
        &"x".into(),
        "/test/x",
        Message::Gossip { updates: bad },
        now,
    );
    assert_eq!(c.members().count(), 1);
    let mut huge_addr = alive("y", 1);
    huge_addr.addr = "a".repeat(MAX_ADDR_LEN + 1);
    c.handle_message(
        &"x".into(),
        "/test/x",
        Message::Gossip {
            updates: vec![upd(huge_addr, "x")],
        },
        now,
    );
    assert_eq!(c.members().count(), 1);
}

#[test]
fn never_declares_itself_dead() {
    let now = Instant::now();
    let mut a = node("a", now);
    for inc in [1, 5, 9] {
        for state in [MemberState::Suspect, MemberState::Dead, MemberState::Left] {
            let u = upd(with_state(alive("a", inc), state), "b");
            a.handle_message(
                &"b".into(),
                "/test/b",
                Message::Gossip { updates: vec![u] },
                now,
            );
            assert_eq!(a.state_of("a"), Some(MemberState::Alive));
            assert!(a.live_members().contains("a"));
        }
    }
    assert_eq!(a.incarnation(), 10);
}

#[test]
fn leave_is_broadcast_and_final() {
    let mut net = Net::new(&["a", "b", "c"]);
    net.run(Duration::from_secs(8));
    let now = net.now;
    net.nodes.get_mut("c").unwrap().leave(now);
    net.drain();
    net.run(Duration::from_secs(2));
    assert_eq!(net.get("a").state_of("c"), Some(MemberState::Left));
    assert_eq!(net.get("b").state_of("c"), Some(MemberState::Left));
    assert!(!net.get("a").live_members().contains("c"));
    assert_eq!(net.get("c").poll_timeout(), None);
}

#[test]
fn stalled_member_does_not_blame_others() {
    let mut net = Net::new(&["a", "b", "c"]);
    net.run(Duration::from_secs(8));
    // a stalls for 5 s: no ticks, messages to it are lost.
    let a = net.nodes.remove("a").unwrap();
    net.run(Duration::from_secs(5));
    net.nodes.insert("a".into(), a);
    net.events.clear();
    net.run(Duration::from_millis(50));
    assert!(
        !net.events.iter().any(|(o, e)| o == "a"
            && matches!(e, MembershipEvent::Suspect(_) | MembershipEvent::Down(_))),
        "{:?}",
        net.events
    );
}

#[test]
fn epoch_changes_with_the_live_set() {
    let now = Instant::now();
    let mut a = node("a", now);
    let e0 = a.epoch();
    assert_eq!(e0.leader.as_deref(), Some("a"));
    a.handle_message(
        &"b".into(),
        "/test/b",
        Message::PushPull {
            members: vec![alive("b", 1)],
            reply: false,
        },
        now,
    );
    let e1 = a.epoch();
    assert_eq!(e1.number, e0.number + 1);
    assert_ne!(e1.view, e0.view);
    let set: BTreeSet<MemberId> = ["a".to_string(), "b".to_string()].into_iter().collect();
    assert_eq!(e1.view, view_hash(&set));
    assert_eq!(e1.leader, crate::membership::leader::leader(&set));
}

#[test]
fn suspicion_timeouts_scale_and_shrink() {
    let c = Config::default();
    let (min5, max5) = c.suspicion_timeouts(5);
    let (min200, _) = c.suspicion_timeouts(200);
    assert_eq!(min5, c.suspicion_timeout);
    assert_eq!(max5, min5 * 2);
    assert!(min200 > min5);
    assert!(c.retransmit_limit(200) >= c.retransmit_limit(5));
}

/// Drives one core alone until it sends a ping to `to`; returns the ping's seq and the time.
fn until_ping(
    a: &mut Membership,
    to: &str,
    mut t: Instant,
    events: &mut Vec<MembershipEvent>,
) -> (u64, Instant) {
    for _ in 0..1000 {
        t += 10 * MS;
        if a.poll_timeout().is_some_and(|d| d <= t) {
            a.tick(t);
        }
        while let Some(out) = a.poll_output() {
            match out {
                Output::Send {
                    to: dest,
                    msg: Message::Ping { seq, .. },
                    ..
                } if dest == to => return (seq, t),
                Output::Event(e) => events.push(e),
                _ => {}
            }
        }
    }
    panic!("no ping to {to}");
}

fn run_alone(a: &mut Membership, from: Instant, to: Instant, events: &mut Vec<MembershipEvent>) {
    let mut t = from;
    while t < to {
        t += 10 * MS;
        if a.poll_timeout().is_some_and(|d| d <= t) {
            a.tick(t);
        }
        while let Some(out) = a.poll_output() {
            if let Output::Event(e) = out {
                events.push(e);
            }
        }
    }
}

#[test]
fn a_probe_over_a_connection_being_set_up_gets_more_time_once() {
    let now = Instant::now();
    let b = MemberInfo {
        id: "b".into(),
        addr: "/test/b".into(),
        incarnation: 1,
        state: MemberState::Alive,
    };
    for extend in [true, false] {
        let mut a = node("a", now);
        a.handle_message(
            &"b".to_string(),
            "/test/b",
            Message::PushPull {
                members: vec![b.clone()],
                reply: false,
            },
            now,
        );
        let mut events = Vec::new();
        let (seq, sent) = until_ping(&mut a, "b", now, &mut events);
        if extend {
            a.extend_probe(&"b".to_string(), 700 * MS);
            a.extend_probe(&"b".to_string(), 700 * MS); // only once
        }
        // The ack comes 800 ms after the ping: late for a normal probe, in time for an extended one.
        run_alone(&mut a, sent, sent + 800 * MS, &mut events);
        a.handle_message(
            &"b".to_string(),
            "/test/b",
            Message::Ack {
                seq,
                updates: vec![],
            },
            sent + 800 * MS,
        );
        let suspected = events
            .iter()
            .any(|e| matches!(e, MembershipEvent::Suspect(id) if id == "b"));
        assert_eq!(suspected, !extend, "extend={extend}: {events:?}");
    }
}

#[test]
fn a_prober_cut_off_from_everyone_slows_down_instead_of_accusing_at_full_speed() {
    let mut net = Net::new(&["a", "b", "c", "d", "e"]);
    net.run(Duration::from_secs(8));
    assert_eq!(
        net.get("a").local_health(),
        0,
        "a healthy cluster stays at 0"
    );
    // a's outgoing messages are all lost (a starved or cut-off prober): no acks, no nacks.
    for other in ["b", "c", "d", "e"] {
        net.cut.insert(("a".into(), other.into()));
    }
    net.run(Duration::from_secs(3));
    let health = net.get("a").local_health();
    assert!(
        health >= 3,
        "missing nacks raise a's local health: {health}"
    );
    assert!(health <= Config::default().max_local_health);
    // Its messages flow again: acked probes bring it back down.
    net.cut.clear();
    net.run(Duration::from_secs(30));
    assert_eq!(net.get("a").local_health(), 0);
}

#[test]
fn helpers_nack_when_the_target_does_not_answer_and_the_origin_stays_healthy() {
    let mut net = Net::new(&["a", "b", "c", "d"]);
    net.run(Duration::from_secs(8));
    // d dies: everyone's probes of d fail, but helpers nack, so nobody blames itself.
    for other in ["a", "b", "c"] {
        net.cut.insert(("d".into(), other.into()));
        net.cut.insert((other.into(), "d".into()));
    }
    let mut nacks = 0;
    let end = net.now + Duration::from_secs(6);
    while net.now < end {
        net.run(10 * MS);
        nacks += net
            .inflight
            .iter()
            .filter(|(_, _, m)| matches!(m, Message::Nack { .. }))
            .count();
    }
    assert!(nacks > 0, "helpers sent nacks for the silent target");
    for n in ["a", "b", "c"] {
        assert_eq!(
            net.get(n).state_of("d"),
            Some(MemberState::Dead),
            "{n} sees d dead"
        );
        assert!(
            net.get(n).local_health() <= 1,
            "{n} blamed itself: health {}",
            net.get(n).local_health()
        );
    }
}

#[test]
fn being_suspected_raises_local_health_and_recoveries_are_counted() {
    let now = Instant::now();
    let mut a = node("a", now);
    a.handle_message(
        &"b".to_string(),
        "/test/b",
        Message::Gossip {
            updates: vec![upd(with_state(alive("a", 1), MemberState::Suspect), "b")],
        },
        now,
    );
    assert_eq!(a.local_health(), 1, "refuting a suspicion of itself");
    // b: suspect then alive twice within a minute -> two recoveries.
    let mut t = now;
    for inc in [1u64, 2, 3] {
        t += Duration::from_secs(1);
        a.handle_message(
            &"c".to_string(),
            "/test/c",
            Message::Gossip {
                updates: vec![upd(with_state(alive("b", inc), MemberState::Suspect), "c")],
            },
            t,
        );
        a.handle_message(
            &"b".to_string(),
            "/test/b",
            Message::Gossip {
                updates: vec![upd(alive("b", inc + 1), "b")],
            },
            t,
        );
    }
    assert_eq!(a.flaps("b", Duration::from_secs(60), t), 3);
    assert_eq!(
        a.flaps("b", Duration::from_secs(60), t + Duration::from_secs(120)),
        0,
        "recoveries age out of the window"
    );
}

/// A member that left (a planned restart) and came back with a new life counts as a recovery:
/// the leader bounds how often a member's planned restarts hold its pods (`sched::liveness`).
#[test]
fn a_return_after_leaving_is_a_recovery() {
    let now = Instant::now();
    let mut a = node("a", now);
    a.handle_message(
        &"b".to_string(),
        "/test/b",
        Message::Gossip {
            updates: vec![upd(alive("b", 1), "b")],
        },
        now,
    );
    let mut t = now;
    for inc in [1u64, 100, 200] {
        t += Duration::from_secs(1);
        a.handle_message(
            &"b".to_string(),
            "/test/b",
            Message::Gossip {
                updates: vec![upd(with_state(alive("b", inc), MemberState::Left), "b")],
            },
            t,
        );
        a.handle_message(
            &"b".to_string(),
            "/test/b",
            Message::Gossip {
                updates: vec![upd(alive("b", inc + 50), "b")],
            },
            t,
        );
    }
    assert_eq!(a.recoveries("b").count(), 3);
    assert_eq!(a.flaps("b", Duration::from_secs(60), t), 3);
}

/// A hostile member's records at `u64::MAX` (a victim `Dead`, an accusation of the receiver
/// itself, an unknown member suspected in advance) neither take effect nor wrap anything: the
/// victims stay alive, incarnations stay small, and a member's own word replaces a record of it
/// that it never issued.
#[test]
fn forged_incarnations_do_not_keep_a_member_dead() {
    let mut net = Net::new(&["a", "b", "c"]);
    net.run(Duration::from_secs(5));
    let forged = |id: &str, state| upd(with_state(alive(id, u64::MAX), state), "x");
    for to in ["a", "c"] {
        let now = net.now;
        net.nodes.get_mut(to).unwrap().handle_message(
            &"x".into(),
            "/test/x",
            Message::Gossip {
                updates: vec![
                    forged("b", MemberState::Dead),
                    forged("a", MemberState::Dead),
                    forged("c", MemberState::Suspect),
                ],
            },
            now,
        );
    }
    net.drain();
    net.run(Duration::from_secs(20));
    for n in ["a", "b", "c"] {
        for m in ["a", "b", "c"] {
            assert_eq!(
                net.get(n).state_of(m),
                Some(MemberState::Alive),
                "{n} sees {m}"
            );
        }
        assert!(net.get(n).incarnation() < 16, "{n} outbid a forgery");
    }

    // Suspected in advance at u64::MAX, before it was ever heard of: its own word wins.
    let now = Instant::now();
    let mut a = node("a", now);
    let mut suspect = with_state(alive("d", u64::MAX - 3), MemberState::Suspect);
    suspect.addr = "/test/nowhere".into();
    a.handle_message(
        &"x".into(),
        "/test/x",
        Message::Gossip {
            updates: vec![upd(suspect, "x")],
        },
        now,
    );
    assert_eq!(a.state_of("d"), Some(MemberState::Suspect));
    a.handle_message(
        &"d".into(),
        "/test/d",
        Message::PushPull {
            members: vec![alive("d", 7)],
            reply: false,
        },
        now,
    );
    assert_eq!(a.state_of("d"), Some(MemberState::Alive));
    let d = a.members().find(|m| m.id == "d").unwrap();
    assert_eq!((d.incarnation, d.addr.as_str()), (7, "/test/d"));
    // A third party cannot do the same for it.
    a.handle_message(
        &"x".into(),
        "/test/x",
        Message::Gossip {
            updates: vec![upd(
                with_state(alive("d", u64::MAX), MemberState::Dead),
                "d",
            )],
        },
        now,
    );
    assert_eq!(a.state_of("d"), Some(MemberState::Alive));
}
