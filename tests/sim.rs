//! Simulator scenarios for membership, epochs, leader choice and document replication.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shoal::membership::{MemberId, MemberState, MembershipEvent};
use shoal::sim::{NodeStatus, Sim, SimConfig};

const SEC: Duration = Duration::from_secs(1);

fn all_names(sim: &Sim) -> BTreeSet<MemberId> {
    sim.names(0..sim.len())
}

/// Nodes whose live set is not exactly `expected`.
fn disagreeing(sim: &Sim, nodes: &[usize], expected: &BTreeSet<MemberId>) -> Vec<usize> {
    nodes
        .iter()
        .copied()
        .filter(|&i| sim.live_set(i) != expected)
        .collect()
}

fn leaders(sim: &Sim, nodes: &[usize]) -> BTreeSet<Option<MemberId>> {
    nodes.iter().map(|&i| sim.leader(i)).collect()
}

fn assert_converged(sim: &mut Sim, nodes: &[usize], expected: &BTreeSet<MemberId>) {
    let off = disagreeing(sim, nodes, expected);
    assert!(
        off.is_empty(),
        "{} nodes disagree on the live set, e.g. {:?}: {:?}",
        off.len(),
        off.first(),
        off.first().map(|&i| sim
            .live_set(i)
            .symmetric_difference(expected)
            .cloned()
            .collect::<Vec<_>>())
    );
    let l = leaders(sim, nodes);
    assert_eq!(l.len(), 1, "one leader: {l:?}");
    let leader = l.into_iter().next().flatten().expect("a leader");
    assert!(expected.contains(&leader), "leader {leader} is in the view");
    assert_eq!(Some(leader), shoal::membership::leader::leader(expected));
}

/// Nodes not killed (running, or briefly stalled by a hiccup).
fn not_killed(sim: &Sim) -> Vec<usize> {
    (0..sim.len())
        .filter(|&i| sim.status(i) != NodeStatus::Killed)
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

/// Partition history: (start, group of each node).
struct Topology {
    changes: Vec<(Duration, Vec<usize>)>,
}

impl Topology {
    fn new(n: usize) -> Self {
        Topology {
            changes: vec![(Duration::ZERO, vec![0; n])],
        }
    }

    fn set(&mut self, sim: &mut Sim, groups: Option<&[Vec<usize>]>) {
        let n = sim.len();
        let mut of = vec![0; n];
        match groups {
            Some(groups) => {
                sim.partition(groups);
                for (g, members) in groups.iter().enumerate() {
                    for &i in members {
                        of[i] = g;
                    }
                }
            }
            None => sim.heal(),
        }
        self.changes.push((sim.elapsed(), of));
    }

    /// A Down of `subject` by `observer` at `at` is false if both had been on the same side
    /// for longer than `grace` (enough for every earlier suspicion to have been refuted).
    fn is_false_death(
        &self,
        at: Duration,
        observer: usize,
        subject: usize,
        grace: Duration,
    ) -> bool {
        let Some((start, of)) = self.changes.iter().rev().find(|(start, _)| *start <= at) else {
            return false;
        };
        of[observer] == of[subject] && at.saturating_sub(*start) > grace
    }
}

fn random_groups(rng: &mut ChaCha8Rng, n: usize) -> Vec<Vec<usize>> {
    let k = rng.gen_range(2..=3);
    let mut nodes: Vec<usize> = (0..n).collect();
    nodes.shuffle(rng);
    let mut groups = vec![Vec::new(); k];
    for (i, node) in nodes.into_iter().enumerate() {
        groups[i % k].push(node);
    }
    groups
}

fn downs(sim: &Sim) -> Vec<(Duration, usize, usize)> {
    sim.observed()
        .iter()
        .filter_map(|o| match &o.event {
            MembershipEvent::Down(id) => sim.index_of(id).map(|s| (o.at, o.node, s)),
            _ => None,
        })
        .collect()
}

/// 200 nodes, 1% loss, writes everywhere, random 2-3 way partitions and heals over simulated
/// minutes: each side agrees on a leader inside it; after the final heal everything converges.
#[test]
fn two_hundred_nodes_partitions_heal_and_converge() {
    let n = 200;
    let wall = Instant::now();
    let config = SimConfig {
        drop_rate: 0.01,
        write_every: Some(Duration::from_millis(400)),
        ..SimConfig::default()
    };
    let mut sim = Sim::new(n, 0x5EED_0001, config, Instant::now());
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let mut topo = Topology::new(n);
    let everyone: Vec<usize> = (0..n).collect();
    let names = all_names(&sim);

    let formed = sim.run_until(60 * SEC, SEC, |s| {
        disagreeing(s, &everyone, &names).is_empty()
    });
    assert!(formed.is_some(), "cluster formed");
    sim.run_for(10 * SEC);
    assert_converged(&mut sim, &everyone, &names);

    for round in 0..3 {
        let groups = random_groups(&mut rng, n);
        topo.set(&mut sim, Some(&groups));
        sim.run_for(Duration::from_secs(rng.gen_range(30..=45)));
        for group in &groups {
            let expected = sim.names(group.iter().copied());
            assert_converged(&mut sim, group, &expected);
        }
        topo.set(&mut sim, None);
        let healed = sim.run_until(90 * SEC, SEC, |s| {
            disagreeing(s, &everyone, &names).is_empty()
        });
        assert!(healed.is_some(), "round {round}: views reunite after heal");
        sim.run_for(Duration::from_secs(rng.gen_range(5..=15)));
    }

    // Final quiet period without writes: views, leader and documents converge.
    sim.set_write_every(None);
    sim.run_for(45 * SEC);
    assert_converged(&mut sim, &everyone, &names);
    let heads: BTreeSet<_> = everyone.iter().map(|&i| sim.heads(i)).collect();
    assert_eq!(heads.len(), 1, "all documents have identical heads");
    assert!(
        sim.doc_len(0) as u64 >= sim.writes() * 9 / 10,
        "writes replicated"
    );

    let false_deaths: Vec<_> = downs(&sim)
        .into_iter()
        .filter(|&(at, o, s)| topo.is_false_death(at, o, s, 20 * SEC))
        .collect();
    assert!(
        false_deaths.is_empty(),
        "false deaths: {:?}",
        &false_deaths[..false_deaths.len().min(10)]
    );
    println!(
        "sim200-partitions: sim {:?}, wall {:?}, {} writes, {} messages, {} events",
        sim.elapsed(),
        wall.elapsed(),
        sim.writes(),
        sim.messages(),
        sim.observed().len()
    );
}

/// 200 nodes, 1% loss, 100-300 ms stalls: zero false deaths over several simulated minutes.
/// Then kill nodes one by one and measure detection (kill -> every survivor has it Dead).
#[test]
fn two_hundred_nodes_no_false_deaths_and_detection_times() {
    let n = 200;
    let wall = Instant::now();
    let config = SimConfig {
        drop_rate: 0.01,
        hiccup_every: Some(Duration::from_secs(20)),
        ..SimConfig::default()
    };
    let bound = config.membership.detection_bound(n);
    let mut sim = Sim::new(n, 0x5EED_0002, config, Instant::now());
    let everyone: Vec<usize> = (0..n).collect();
    let names = all_names(&sim);
    assert!(sim
        .run_until(60 * SEC, SEC, |s| disagreeing(s, &everyone, &names)
            .is_empty())
        .is_some());
    sim.run_for(180 * SEC);
    let deaths = downs(&sim);
    assert!(
        deaths.is_empty(),
        "false deaths in a healthy cluster: {:?}",
        &deaths[..deaths.len().min(10)]
    );
    assert_converged(&mut sim, &everyone, &names);
    let suspicions = sim
        .observed()
        .iter()
        .filter(|o| matches!(o.event, MembershipEvent::Suspect(_)))
        .count();

    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut per_observer = Vec::new();
    let mut until_all = Vec::new();
    let mut killed = Vec::new();
    for _ in 0..5 {
        let victim = *everyone
            .iter()
            .filter(|i| !killed.contains(*i))
            .collect::<Vec<_>>()
            .choose(&mut rng)
            .unwrap();
        killed.push(*victim);
        let victim = *victim;
        let start = sim.elapsed();
        let events_before = sim.observed().len();
        sim.kill(victim);
        let survivors: Vec<usize> = not_killed(&sim);
        let took = sim.run_until(60 * SEC, Duration::from_millis(100), |s| {
            survivors
                .iter()
                .all(|&o| s.state_of(o, victim) == Some(MemberState::Dead))
        });
        let took = took.expect("every survivor detects the death");
        until_all.push(took);
        let victim_name = sim.name(victim).clone();
        for o in &sim.observed()[events_before..] {
            if o.event == MembershipEvent::Down(victim_name.clone()) {
                per_observer.push(o.at - start);
            }
        }
        assert!(
            took <= bound,
            "detection {took:?} within the bound {bound:?}"
        );
        sim.run_for(5 * SEC);
    }
    per_observer.sort();
    until_all.sort();
    let survivors = not_killed(&sim);
    let expected = sim.names(survivors.iter().copied());
    assert_converged(&mut sim, &survivors, &expected);
    let unexpected: Vec<_> = downs(&sim)
        .into_iter()
        .filter(|(_, _, s)| !killed.contains(s))
        .collect();
    assert!(
        unexpected.is_empty(),
        "only killed nodes die: {unexpected:?}"
    );
    println!(
        "sim200-detection: n={n} loss=1% stalls=100-300ms/20s: false deaths 0 in 180 s ({suspicions} refuted suspicions); \
         kill -> Down per observer p50 {:?} p99 {:?} max {:?}; kill -> all survivors p50 {:?} max {:?} (bound {bound:?}); wall {:?}",
        percentile(&per_observer, 0.5),
        percentile(&per_observer, 0.99),
        per_observer.last().copied().unwrap_or_default(),
        percentile(&until_all, 0.5),
        until_all.last().copied().unwrap_or_default(),
        wall.elapsed()
    );
}

/// During a partition, every side agrees on a leader that is on that side.
#[test]
fn partition_sides_each_elect_a_leader_inside() {
    let n = 60;
    let mut sim = Sim::new(
        n,
        0x5EED_0003,
        SimConfig {
            drop_rate: 0.01,
            ..SimConfig::default()
        },
        Instant::now(),
    );
    let everyone: Vec<usize> = (0..n).collect();
    let names = all_names(&sim);
    assert!(sim
        .run_until(60 * SEC, SEC, |s| disagreeing(s, &everyone, &names)
            .is_empty())
        .is_some());
    let groups: Vec<Vec<usize>> = vec![(0..10).collect(), (10..35).collect(), (35..60).collect()];
    sim.partition(&groups);
    sim.run_for(30 * SEC);
    let mut side_leaders = BTreeSet::new();
    for group in &groups {
        let expected = sim.names(group.iter().copied());
        assert_converged(&mut sim, group, &expected);
        side_leaders.insert(sim.leader(group[0]));
    }
    assert_eq!(side_leaders.len(), 3, "one leader per side");
    sim.heal();
    assert!(sim
        .run_until(60 * SEC, SEC, |s| disagreeing(s, &everyone, &names)
            .is_empty())
        .is_some());
    assert_converged(&mut sim, &everyone, &names);
}

/// Killing the leader: survivors detect it within the bound and agree on a new leader.
#[test]
fn killed_leader_is_replaced() {
    let n = 50;
    let config = SimConfig::default();
    let bound = config.membership.detection_bound(n);
    let mut sim = Sim::new(n, 0x5EED_0004, config, Instant::now());
    let everyone: Vec<usize> = (0..n).collect();
    let names = all_names(&sim);
    assert!(sim
        .run_until(60 * SEC, SEC, |s| disagreeing(s, &everyone, &names)
            .is_empty())
        .is_some());
    sim.run_for(10 * SEC);
    let old = sim.leader(0).expect("a leader");
    let victim = sim.index_of(&old).unwrap();
    sim.kill(victim);
    let survivors = not_killed(&sim);
    let took = sim
        .run_until(30 * SEC, Duration::from_millis(50), |s| {
            survivors
                .iter()
                .all(|&o| s.state_of(o, victim) == Some(MemberState::Dead))
        })
        .expect("detected");
    assert!(took <= bound, "detected in {took:?}, bound {bound:?}");
    sim.run_for(5 * SEC);
    let expected = sim.names(survivors.iter().copied());
    assert_converged(&mut sim, &survivors, &expected);
    assert_ne!(sim.leader(survivors[0]), Some(old));

    // The restarted node (incarnation 0, nothing persisted) refutes its death and rejoins.
    sim.revive(victim);
    assert!(sim
        .run_until(30 * SEC, SEC, |s| disagreeing(s, &everyone, &names)
            .is_empty())
        .is_some());
    assert!(sim.core(victim).incarnation() > 0);
    assert_converged(&mut sim, &everyone, &names);
}

/// SIGSTOP: the node is declared Dead; after SIGCONT it refutes with a higher incarnation.
#[test]
fn paused_node_dies_and_comes_back() {
    let n = 20;
    let mut sim = Sim::new(n, 0x5EED_0005, SimConfig::default(), Instant::now());
    let everyone: Vec<usize> = (0..n).collect();
    let names = all_names(&sim);
    assert!(sim
        .run_until(60 * SEC, SEC, |s| disagreeing(s, &everyone, &names)
            .is_empty())
        .is_some());
    let victim = 7;
    let before = sim.core(victim).incarnation();
    sim.pause(victim);
    assert_eq!(sim.status(victim), NodeStatus::Paused);
    let others: Vec<usize> = everyone.iter().copied().filter(|&i| i != victim).collect();
    let dead = sim.run_until(20 * SEC, Duration::from_millis(100), |s| {
        others
            .iter()
            .all(|&o| s.state_of(o, victim) == Some(MemberState::Dead))
    });
    assert!(dead.is_some(), "paused node declared dead");
    sim.run_for(10 * SEC);
    sim.resume(victim);
    let back = sim.run_until(20 * SEC, Duration::from_millis(100), |s| {
        others
            .iter()
            .all(|&o| s.state_of(o, victim) == Some(MemberState::Alive))
    });
    assert!(back.is_some(), "resumed node is alive again");
    assert!(
        sim.core(victim).incarnation() > before,
        "refuted with a higher incarnation"
    );
    sim.run_for(5 * SEC);
    assert_converged(&mut sim, &everyone, &names);
    // The resumed node blamed nobody for its own stall.
    let blamed = sim
        .observed()
        .iter()
        .any(|o| o.node == victim && matches!(o.event, MembershipEvent::Down(_)));
    assert!(!blamed, "the stalled node declared nobody dead");
}

fn scenario_digest(seed: u64) -> [u8; 32] {
    let config = SimConfig {
        drop_rate: 0.02,
        write_every: Some(Duration::from_millis(300)),
        ..SimConfig::default()
    };
    let mut sim = Sim::new(30, seed, config, Instant::now());
    sim.run_for(15 * SEC);
    sim.partition(&[(0..12).collect(), (12..30).collect()]);
    sim.run_for(15 * SEC);
    sim.kill(3);
    sim.pause(20);
    sim.run_for(10 * SEC);
    sim.heal();
    sim.resume(20);
    sim.revive(3);
    sim.run_for(20 * SEC);
    let mut h = sim.digest().to_vec();
    for i in 0..sim.len() {
        for head in sim.heads(i) {
            h.extend_from_slice(head.as_ref());
        }
    }
    use sha2::Digest;
    sha2::Sha256::digest(&h).into()
}

/// The same seed gives the same trace (events and document heads); another seed does not.
#[test]
fn same_seed_same_trace() {
    let a = scenario_digest(42);
    let b = scenario_digest(42);
    assert_eq!(a, b);
    assert_ne!(a, scenario_digest(43));
}

/// Several seeds, 60 nodes, 2% loss, writes, random 2-3 way partitions: every side elects a
/// leader inside it, and after the final heal views, leaders and documents converge.
#[test]
fn partitions_converge_over_seeds() {
    for seed in [11u64, 12, 13] {
        let n = 60;
        let config = SimConfig {
            drop_rate: 0.02,
            write_every: Some(Duration::from_millis(300)),
            ..SimConfig::default()
        };
        let mut sim = Sim::new(n, seed, config, Instant::now());
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let everyone: Vec<usize> = (0..n).collect();
        let names = all_names(&sim);
        assert!(
            sim.run_until(60 * SEC, SEC, |s| disagreeing(s, &everyone, &names)
                .is_empty())
                .is_some(),
            "seed {seed}: formed"
        );
        for _ in 0..2 {
            let groups = random_groups(&mut rng, n);
            sim.partition(&groups);
            sim.run_for(25 * SEC);
            for group in &groups {
                let expected = sim.names(group.iter().copied());
                assert_converged(&mut sim, group, &expected);
            }
            sim.heal();
            sim.run_for(Duration::from_secs(rng.gen_range(5..=20)));
        }
        sim.set_write_every(None);
        let healed = sim.run_until(60 * SEC, SEC, |s| {
            disagreeing(s, &everyone, &names).is_empty()
        });
        assert!(healed.is_some(), "seed {seed}: views reunite");
        sim.run_for(30 * SEC);
        assert_converged(&mut sim, &everyone, &names);
        let heads: BTreeSet<_> = everyone.iter().map(|&i| sim.heads(i)).collect();
        assert_eq!(heads.len(), 1, "seed {seed}: identical heads");
    }
}

// ----- workloads: the controllers of every node on its own replica -----

const DEPLOYMENTS: [(&str, i64); 8] = [
    ("web", 500),
    ("api", 400),
    ("worker", 300),
    ("cache", 250),
    ("queue", 200),
    ("search", 150),
    ("mail", 120),
    ("cron", 80),
];

fn deployment(name: &str, replicas: i64) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-deploy-{name}"), "generation": 1},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "c", "image": "shoal.test/busybox:1",
                                       "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]}}}
    })
}

fn set_replicas(sim: &mut Sim, via: usize, name: &str, replicas: i64) {
    let d = deployment(name, replicas);
    sim.user_write(via, |doc| {
        doc.put_object("deployments.apps", Some("default"), name, &d)
            .unwrap()
    });
}

/// What must hold once the cluster is quiet, checked on one replica: every Deployment's
/// current ReplicaSet has exactly its replicas, one pod per slot, each bound (binding for the
/// pod's uid) to a node that is running; no other pods; no node over capacity. Returns a
/// description of the first violation.
fn workload_violations(
    sim: &Sim,
    node: usize,
    want: &BTreeMap<&str, i64>,
) -> Result<usize, String> {
    use shoal::sched::replicaset::slot_of;
    let s = sim
        .doc(node)
        .workload_snapshot(BTreeMap::new(), BTreeMap::new());
    let running: BTreeSet<String> = sim.names(sim.running());
    let uid = |v: &serde_json::Value| v["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let owner = |v: &serde_json::Value| {
        v["metadata"]["ownerReferences"][0]["uid"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let mut total = 0;
    for d in &s.deployments {
        let name = d["metadata"]["name"].as_str().unwrap_or("");
        let replicas = want[name];
        let sets: Vec<&serde_json::Value> = s
            .replicasets
            .iter()
            .filter(|rs| owner(rs) == uid(d))
            .collect();
        let live: Vec<&&serde_json::Value> = sets
            .iter()
            .filter(|rs| rs["spec"]["replicas"].as_i64() != Some(0))
            .collect();
        if live.len() != 1 || live[0]["spec"]["replicas"].as_i64() != Some(replicas) {
            return Err(format!("{name}: ReplicaSets {}", live.len()));
        }
        let rs_uid = uid(live[0]);
        let pods: Vec<&serde_json::Value> = s.pods.iter().filter(|p| owner(p) == rs_uid).collect();
        let slots: BTreeSet<usize> = pods.iter().filter_map(|p| slot_of(p)).collect();
        if pods.len() as i64 != replicas || slots.len() as i64 != replicas {
            return Err(format!(
                "{name}: {} pods in {} slots, want {replicas}",
                pods.len(),
                slots.len()
            ));
        }
        for p in pods {
            let key = (
                "default".to_string(),
                p["metadata"]["name"].as_str().unwrap_or("").to_string(),
            );
            match s.bindings.get(&key) {
                None => return Err(format!("{name}: {} unbound", key.1)),
                Some(b) if b.pod_uid != uid(p) => {
                    return Err(format!("{name}: {} bound for another uid", key.1))
                }
                Some(b) if !running.contains(&b.node) => {
                    return Err(format!("{name}: {} on dead node {}", key.1, b.node))
                }
                Some(_) => {}
            }
        }
        total += replicas as usize;
    }
    if s.pods.len() != total || s.bindings.len() != total {
        return Err(format!(
            "{} pods and {} bindings, want {total}",
            s.pods.len(),
            s.bindings.len()
        ));
    }
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for b in s.bindings.values() {
        *per_node.entry(b.node.as_str()).or_default() += 1;
    }
    if let Some((n, c)) = per_node.iter().find(|(_, c)| **c > 80) {
        return Err(format!("{n} holds {c} pods, over its 8 CPUs"));
    }
    Ok(total)
}

/// 200 nodes, 2,000 pods in 8 Deployments, every node running the controllers on its own
/// replica (acting while it leads). Random kills (the leader among them), 2-3 way partitions
/// with a Deployment scaled on one side, heals and restarts. After the last heal and a quiet
/// period: every Deployment has exactly its replicas, one per slot, all bound to running nodes,
/// none lost, none on a dead node, no node over capacity, all replicas identical.
#[test]
fn two_hundred_nodes_two_thousand_pods_survive_kills_and_partitions() {
    let n = 200;
    let wall = Instant::now();
    let config = SimConfig {
        drop_rate: 0.01,
        controllers: Some(SEC),
        ..SimConfig::default()
    };
    let mut sim = Sim::new(n, 0x5EED_0010, config, Instant::now());
    let mut rng = ChaCha8Rng::seed_from_u64(0x10);
    let everyone: Vec<usize> = (0..n).collect();
    let names = all_names(&sim);
    assert!(sim
        .run_until(60 * SEC, SEC, |s| disagreeing(s, &everyone, &names)
            .is_empty())
        .is_some());
    sim.register_nodes(&[("cpu", "8"), ("memory", "32Gi"), ("pods", "110")]);
    let mut want: BTreeMap<&str, i64> = BTreeMap::new();
    for (name, replicas) in DEPLOYMENTS {
        let via = rng.gen_range(0..n);
        set_replicas(&mut sim, via, name, replicas);
        want.insert(name, replicas);
    }
    sim.run_for(15 * SEC);
    eprintln!("placed at {:?}, wall {:?}", sim.elapsed(), wall.elapsed());
    let leader = sim.index_of(&sim.leader(0).unwrap()).unwrap();
    assert_eq!(workload_violations(&sim, leader, &want), Ok(2000), "placed");

    let mut killed: BTreeSet<usize> = BTreeSet::new();
    for round in 0..2 {
        // Kill a few nodes, the leader in the first round.
        let mut victims: Vec<usize> = (0..n).filter(|i| !killed.contains(i)).collect();
        victims.shuffle(&mut rng);
        victims.truncate(6);
        if round == 0 {
            victims[0] = sim.index_of(&sim.leader(0).unwrap()).unwrap();
        }
        for &v in &victims {
            sim.kill(v);
            killed.insert(v);
        }
        sim.run_for(10 * SEC);
        eprintln!(
            "round {round}: kills done at {:?}, wall {:?}",
            sim.elapsed(),
            wall.elapsed()
        );
        // Partition the survivors; scale a Deployment on one side.
        let groups = random_groups(&mut rng, n);
        sim.partition(&groups);
        sim.run_for(8 * SEC);
        let (name, _) = DEPLOYMENTS[rng.gen_range(0..DEPLOYMENTS.len())];
        // Down in the first round (every Deployment has at least 80), anything in the next.
        let replicas = if round == 0 {
            rng.gen_range(20..=60)
        } else {
            rng.gen_range(50..=300)
        };
        let side = &groups[rng.gen_range(0..groups.len())];
        let via = *side.iter().find(|i| !killed.contains(i)).unwrap();
        set_replicas(&mut sim, via, name, replicas);
        want.insert(name, replicas);
        sim.run_for(Duration::from_secs(rng.gen_range(10..=15)));
        eprintln!(
            "round {round}: partition done at {:?}, wall {:?}",
            sim.elapsed(),
            wall.elapsed()
        );
        sim.heal();
        // Bring back some of the dead.
        let back: Vec<usize> = killed
            .iter()
            .copied()
            .filter(|_| rng.gen_bool(0.5))
            .collect();
        for v in back {
            sim.revive(v);
            killed.remove(&v);
        }
        sim.run_for(Duration::from_secs(rng.gen_range(5..=10)));
    }

    // Quiet: views reunite, replicas converge, the controllers finish.
    let alive: Vec<usize> = (0..n).filter(|i| !killed.contains(i)).collect();
    let expected = sim.names(alive.iter().copied());
    let healed = sim.run_until(90 * SEC, SEC, |s| {
        disagreeing(s, &alive, &expected).is_empty()
    });
    assert!(healed.is_some(), "views reunite");
    let mut result = Err(String::new());
    let quiet = sim.run_until(120 * SEC, 5 * SEC, |s| {
        result = workload_violations(s, alive[0], &want);
        result.is_ok()
    });
    assert!(quiet.is_some(), "workloads exact after heal: {result:?}");
    eprintln!("exact at {:?}, wall {:?}", sim.elapsed(), wall.elapsed());
    // Identical heads mean identical documents: checking one more replica is enough.
    let total: i64 = want.values().sum();
    let mut distinct = usize::MAX;
    for _ in 0..30 {
        let heads: BTreeSet<_> = alive.iter().map(|&i| sim.heads(i)).collect();
        distinct = heads.len();
        if distinct == 1 {
            break;
        }
        sim.run_for(SEC);
    }
    assert_eq!(distinct, 1, "all replicas identical");
    let other = alive[alive.len() / 2];
    assert_eq!(workload_violations(&sim, other, &want), Ok(total as usize));
    let stats = sim.workload_stats().clone();
    assert!(stats.leaders.len() >= 2, "leadership moved: {stats:?}");
    println!(
        "sim200-workloads: {total} pods, {} killed at the end; {} reconcile rounds with writes by {} leaders, {} placements, {} binding deletes, {} object puts, {} object deletes; sim {:?}, wall {:?}",
        killed.len(),
        stats.rounds,
        stats.leaders.len(),
        stats.placements,
        stats.binding_deletes,
        stats.object_puts,
        stats.object_deletes,
        sim.elapsed(),
        wall.elapsed()
    );
}
