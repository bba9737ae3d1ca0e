//! The controllers' loop of every simulated node, as in `agent/controllers.rs`: while its
//! view names it leader and its membership has settled (`sched::settle`), a node reconciles
//! its own replica and pushes the plan (one change) to its live members. Scheduling records
//! stay in the node's memory (the real agent keeps them in its status document).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use rand::Rng;

use super::{NodeStatus, Sim};
use crate::membership::MemberState;
use crate::model::workload::SchedulingRecord;
use crate::model::NodeRecord;
use crate::sched::settle::Settle;
use crate::sched::{self, LeaderCtx, Liveness, PodKey};
use crate::state::ClusterDoc;

/// The controllers' state of one node for one process life.
pub(super) struct LeaderState {
    settle: Settle,
    /// Simulated time this life started.
    started: Duration,
    /// Simulated time the live set last changed.
    pub(super) view_changed: Duration,
    records: BTreeMap<PodKey, SchedulingRecord>,
    /// Inputs of the last round (heads digest, view hash, liveness): unchanged inputs give an
    /// empty plan, so the round is skipped.
    last: Option<(u64, u64, BTreeMap<String, Liveness>)>,
}

impl LeaderState {
    pub(super) fn new(started: Duration) -> Self {
        LeaderState {
            settle: Settle::default(),
            started,
            view_changed: started,
            records: BTreeMap::new(),
            last: None,
        }
    }
}

/// What the controllers did over a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadStats {
    /// Rounds that produced a non-empty plan.
    pub rounds: u64,
    pub object_puts: u64,
    pub object_deletes: u64,
    pub placements: u64,
    pub binding_deletes: u64,
    /// Distinct leaders that wrote something.
    pub leaders: std::collections::BTreeSet<String>,
}

/// Wall-clock origin of simulated time for the timestamps objects carry.
fn wall(elapsed: Duration) -> DateTime<Utc> {
    let base = Utc
        .timestamp_opt(1_767_225_600, 0)
        .single()
        .unwrap_or_default();
    base + chrono::Duration::from_std(elapsed).unwrap_or_default()
}

impl Sim {
    /// One tick of `node`'s controllers' loop.
    pub(super) fn controllers(&mut self, node: usize) {
        let elapsed = self.elapsed();
        let n = &mut self.nodes[node];
        if n.status != NodeStatus::Running {
            return;
        }
        let epoch = n.core.epoch();
        if epoch.leader.as_ref() != Some(&n.name) {
            n.leader.records.clear();
            n.leader.last = None;
            return;
        }
        let mut liveness: BTreeMap<String, Liveness> = n
            .core
            .members()
            .map(|m| {
                let l = match m.state {
                    MemberState::Alive => Liveness::Alive,
                    MemberState::Suspect => Liveness::Suspect,
                    MemberState::Dead | MemberState::Left => Liveness::Dead,
                };
                (m.id.clone(), l)
            })
            .collect();
        liveness.insert(n.name.clone(), Liveness::Alive);
        let peers = liveness
            .iter()
            .filter(|(id, l)| **id != n.name && **l == Liveness::Alive)
            .count();
        let st = &mut n.leader;
        let settled = st.settle.may_act(
            elapsed.saturating_sub(st.started),
            elapsed.saturating_sub(st.view_changed),
            peers,
        );
        if epoch.leader.as_ref() != Some(&n.name) || !settled {
            st.records.clear();
            st.last = None;
            return;
        }
        let inputs = (n.replica.heads_digest(), epoch.view, liveness.clone());
        if st.last.as_ref() == Some(&inputs) {
            return;
        }
        let snapshot = n
            .replica
            .doc()
            .workload_snapshot(liveness, st.records.clone());
        let ctx = LeaderCtx {
            node: n.name.clone(),
            epoch: epoch.number,
            view: epoch.view,
            now: wall(elapsed),
            seed: self.rng.gen(),
        };
        let plan = sched::reconcile(&snapshot, &ctx);
        sched::check_invariants(&snapshot, &plan);
        let n = &mut self.nodes[node];
        n.leader.last = Some(inputs);
        if plan.is_empty() {
            return;
        }
        for w in &plan.scheduling {
            match w {
                sched::SchedulingWrite::Put {
                    namespace,
                    pod,
                    record,
                } => {
                    n.leader
                        .records
                        .insert((namespace.clone(), pod.clone()), record.clone());
                }
                sched::SchedulingWrite::Delete { namespace, pod } => {
                    n.leader.records.remove(&(namespace.clone(), pod.clone()));
                }
            }
        }
        let (puts, deletes, binds, unbinds) = plan.counts();
        self.stats.rounds += 1;
        self.stats.object_puts += puts as u64;
        self.stats.object_deletes += deletes as u64;
        self.stats.placements += binds as u64;
        self.stats.binding_deletes += unbinds as u64;
        if !plan.writes.is_empty() {
            self.stats.leaders.insert(n.name.clone());
        }
        let changes = n.replica.apply(&plan.writes);
        self.push(node, changes);
    }

    /// A write by a user (through the API of `node`): applied to its replica and pushed.
    pub fn user_write(&mut self, node: usize, f: impl FnOnce(&mut ClusterDoc)) {
        let changes = self.nodes[node].replica.edit(f);
        self.push(node, changes);
    }

    /// Every running node writes its own node record with `capacity` (`cpu`, `memory`,
    /// `pods` quantities), as the agent's registrar does.
    pub fn register_nodes(&mut self, capacity: &[(&str, &str)]) {
        let when = wall(self.elapsed());
        for i in self.running() {
            let name = self.nodes[i].name.clone();
            let record = NodeRecord {
                name: name.clone(),
                uid: format!("uid-{name}"),
                peer_id: String::new(),
                p2p_addr: self.nodes[i].addr.clone(),
                api_addr: String::new(),
                internal_ip: String::new(),
                created: when,
                labels: BTreeMap::new(),
                capacity: capacity
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                system: Default::default(),
            };
            self.user_write(i, |d| {
                let _ = d.put_node(&record);
            });
        }
    }

    /// `node`'s replica of the cluster document.
    pub fn doc(&self, node: usize) -> &ClusterDoc {
        self.nodes[node].replica.doc()
    }

    pub fn workload_stats(&self) -> &WorkloadStats {
        &self.stats
    }
}
