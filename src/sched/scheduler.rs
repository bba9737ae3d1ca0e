//! Placement: every pod without a binding, and every controller-owned pod bound to a node the
//! leader's view says is dead, gets a fresh binding (a StatefulSet's pod only once its node's
//! record is deleted: `statefulset::identity_released`). Filters, in Kubernetes' order (alive,
//! cordoned (`spec.unschedulable`), `NoSchedule`/`NoExecute` taints the pod does not tolerate,
//! nodeSelector and required node affinity, pod count, CPU/memory requests against capacity
//! minus what is bound, host ports (`hostPort`/protocol/`hostIP` already taken on the node:
//! Kubernetes' NodePorts), `DoNotSchedule` topology spread constraints, required pod
//! anti-affinity (the pod's own terms and those of pods already placed) and affinity), then
//! score: fewest untolerated `PreferNoSchedule` taints; then the preferences, Kubernetes'
//! weighted sum of its normalized plugin scores (preferred node affinity, preferred pod
//! affinity and anti-affinity with the placed pods' terms in both directions, `ScheduleAnyway`
//! spread, each 0–100 and weighted 2); then fewest pods of the same owner on the node; then
//! least requested; ties broken by a rendezvous hash of (pod, node). Pods placed earlier in the
//! same round count, so one round never overcommits and a round spreads as it goes.
//!
//! The hot loop touches only a flat node table: per-node free capacity and per-owner counts
//! are precomputed once per round, node masks are cached per distinct nodeSelector and
//! required node affinity, and JSON is read once per pod. Placed pods are tracked (labels,
//! terms) only when some pod has constraints between pods, and a pod without preferences is
//! ranked in one pass.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use super::hash::{hash64, rendezvous};
use super::object::{self, controller};
use super::podspec::{self, Constraints, NodePlacement, PlacementKey, Resources};
use super::snapshot::{LeaderCtx, Liveness, PlannedEvent, PodKey, SchedulingWrite, Write};
use super::statefulset;
use super::volumes;
use super::Working;
use crate::model::host_port::{self, HostPort};
use crate::model::quantity::{parse_milli, parse_units};
use crate::model::storage;
use crate::model::taint::{self, Effect, Taint, Toleration};
use crate::model::workload::{
    Binding, EventReason, EventType, InvolvedObject, SchedulingRecord, HOSTNAME_LABEL,
};
use crate::model::{NodeRecord, NodeSettings};

/// Orders placements newest first: (binding time, binding id), reversed.
type NewestFirst = std::cmp::Reverse<(chrono::DateTime<chrono::Utc>, String)>;

/// Pods a node takes when its record does not say (Kubernetes' default).
pub const DEFAULT_MAX_PODS: u64 = 110;

/// Most pods moved off dead nodes in one round; the rest move in the next rounds (a round
/// follows each applied plan at once, so a real failover of a few hundred pods takes a few
/// rounds, while a storm of false deaths cannot re-bind the whole cluster in one go).
pub const REBIND_BUDGET: usize = 100;

/// Filter failure reasons, in Kubernetes' wording (untolerated taints are counted apart, by
/// taint: [`Reasons::taints`]).
const REASONS: [&str; 14] = [
    "node(s) had untolerated taint {node.kubernetes.io/unreachable: }",
    "node(s) didn't match Pod's node affinity/selector",
    "Too many pods",
    "Insufficient cpu",
    "Insufficient memory",
    "node(s) didn't match pod anti-affinity rules",
    "node(s) didn't satisfy existing pods anti-affinity rules",
    "node(s) were unschedulable",
    "node(s) didn't match pod affinity rules",
    "node(s) didn't match pod topology spread constraints",
    "node(s) didn't match pod topology spread constraints (missing required label)",
    "node(s) had volume node affinity conflict",
    "node(s) did not have enough free storage",
    "node(s) didn't have free ports for the requested pod ports",
];
const R_UNREACHABLE: usize = 0;
const R_SELECTOR: usize = 1;
const R_PODS: usize = 2;
const R_CPU: usize = 3;
const R_MEMORY: usize = 4;
const R_ANTI: usize = 5;
const R_EXISTING_ANTI: usize = 6;
const R_CORDONED: usize = 7;
const R_AFFINITY: usize = 8;
const R_SPREAD: usize = 9;
const R_SPREAD_LABEL: usize = 10;
const R_VOLUME_NODE: usize = 11;
const R_STORAGE: usize = 12;
const R_PORTS: usize = 13;

/// Kubernetes' default weights of the scoring plugins that rank preferences (NodeAffinity,
/// InterPodAffinity, PodTopologySpread) and the top of a normalized score.
const PLUGIN_WEIGHT: i64 = 2;
const MAX_NODE_SCORE: i64 = 100;
/// The weight an existing pod's required affinity term gives a node (Kubernetes'
/// `hardPodAffinityWeight` default).
const HARD_POD_AFFINITY_WEIGHT: i64 = 1;
/// Why a pod fits no node: how many nodes each filter turned away.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reasons {
    /// By [`REASONS`] index.
    pub counts: [u32; REASONS.len()],
    /// Nodes turned away by an untolerated taint, by the taint as Kubernetes shows it.
    pub taints: BTreeMap<String, u32>,
}

struct NodeSlot<'a> {
    name: &'a str,
    alive: bool,
    /// Cordoned (`spec.unschedulable`).
    cordoned: bool,
    /// Users' taints.
    taints: &'a [Taint],
    labels: BTreeMap<String, String>,
    cap: Resources,
    /// 1 / capacity, for the least-requested score (0 when the capacity is 0).
    inv_cpu: f64,
    inv_memory: f64,
    max_pods: u64,
    used: Resources,
    used_nonzero: Resources,
    pods: u64,
    hash: u64,
    /// Bytes of local-path storage (`storage::CAPACITY_KEY`; 0 when the node has none) and
    /// the bytes its volumes hold.
    storage_cap: u64,
    storage_used: u64,
    /// The host ports of the pods placed on it.
    host_ports: Vec<HostPort>,
}

fn capacity(
    record: &NodeRecord,
    key: &str,
    parse: fn(&str) -> Result<u64, crate::model::quantity::QuantityError>,
    missing: u64,
) -> u64 {
    match record.capacity.get(key) {
        None => missing,
        Some(q) => parse(q).unwrap_or(0),
    }
}

fn node_table<'a>(
    nodes: &'a [NodeRecord],
    settings: &'a BTreeMap<String, NodeSettings>,
    liveness: &BTreeMap<String, Liveness>,
    storage_used: &BTreeMap<&str, u64>,
) -> Vec<NodeSlot<'a>> {
    let mut seen = BTreeSet::new();
    let mut table: Vec<NodeSlot<'a>> = nodes
        .iter()
        .filter(|n| seen.insert(n.name.as_str()))
        .map(|n| {
            let cap = Resources {
                cpu: capacity(n, "cpu", parse_milli, u64::MAX),
                memory: capacity(n, "memory", parse_units, u64::MAX),
            };
            let inv = |c: u64| if c == 0 { 0.0 } else { 1.0 / c as f64 };
            let mut labels = n.labels.clone();
            labels.insert(HOSTNAME_LABEL.to_string(), n.name.clone());
            let set = settings.get(&n.name);
            NodeSlot {
                name: &n.name,
                alive: liveness.get(&n.name) == Some(&Liveness::Alive),
                cordoned: set.is_some_and(|s| s.unschedulable),
                taints: set.map(|s| s.taints.as_slice()).unwrap_or_default(),
                labels,
                cap,
                inv_cpu: inv(cap.cpu),
                inv_memory: inv(cap.memory),
                max_pods: capacity(n, "pods", parse_units, DEFAULT_MAX_PODS),
                used: Resources::default(),
                used_nonzero: Resources::default(),
                pods: 0,
                hash: hash64(&["shoal-node", &n.name]),
                storage_cap: capacity(n, storage::CAPACITY_KEY, parse_units, 0),
                storage_used: storage_used.get(n.name.as_str()).copied().unwrap_or(0),
                host_ports: Vec::new(),
            }
        })
        .collect();
    table.sort_by(|a, b| a.name.cmp(b.name));
    table
}

/// One pod as the scheduler sees it.
struct PodInfo<'a> {
    key: &'a PodKey,
    uid: &'a str,
    /// Controlling owner's uid.
    owner: Option<&'a str>,
    requests: Resources,
    nonzero: Resources,
    /// Terms and preferences (`None`: none at all).
    constraints: Option<Rc<Constraints>>,
    /// Its labels, read when the round tracks placed pods.
    labels: BTreeMap<String, String>,
    tolerations: Vec<Toleration>,
    /// Tolerates the cordon (`node.kubernetes.io/unschedulable:NoSchedule`).
    ignores_cordon: bool,
    /// What its PersistentVolumeClaims ask of its node.
    volumes: volumes::Need,
    /// Why its claims let it be placed nowhere.
    volumes_blocked: Option<volumes::Blocked>,
    /// `containers[].ports[].hostPort`s it wants.
    host_ports: Vec<HostPort>,
    pod: &'a Value,
}

/// A pod already on a node (for the constraints between pods).
#[derive(Clone)]
struct Placed {
    key: PodKey,
    labels: BTreeMap<String, String>,
    node: usize,
    constraints: Option<Rc<Constraints>>,
}

impl Placed {
    fn namespace(&self) -> &str {
        &self.key.0
    }
}

fn pod_labels(pod: &Value) -> BTreeMap<String, String> {
    object::labels(pod)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

struct Round<'a> {
    nodes: Vec<NodeSlot<'a>>,
    /// Per owner uid with pending pods: pods of that owner on each node.
    owner_counts: BTreeMap<&'a str, Vec<u32>>,
    /// Nodes each distinct nodeSelector + required node affinity admits.
    placement_masks: BTreeMap<PlacementKey, Vec<bool>>,
    /// Only filled when some pod has constraints between pods (`track`).
    placed: Vec<Placed>,
    /// The placed pods whose terms bind other pods too ([`Constraints::binds_others`]).
    binding_others: Vec<Placed>,
    track: bool,
    /// Claims bound in this round, to the node of the pod that bound them.
    claim_nodes: BTreeMap<PodKey, usize>,
}

impl NodeSlot<'_> {
    /// Holds no more than it has room for, and no host port twice.
    fn fits(&self) -> bool {
        self.pods <= self.max_pods
            && self.used.cpu <= self.cap.cpu
            && self.used.memory <= self.cap.memory
            && !host_port::any_conflict(&self.host_ports)
    }

    /// Whether one of `wanted` is taken on the node.
    fn ports_taken(&self, wanted: &[HostPort]) -> bool {
        wanted
            .iter()
            .any(|w| self.host_ports.iter().any(|h| h.conflicts(w)))
    }
}

/// What one pending pod's constraints between pods and preferences make of the nodes, computed
/// once per pod before the node loop.
#[derive(Default)]
struct PodEval {
    /// Per node: 0 passes, else 1 + the [`REASONS`] index of the first pod-level filter
    /// (topology spread, anti-affinity, affinity) it fails. `None`: every node passes.
    filter: Option<Vec<u8>>,
    /// Raw preference scores, when the pod has any (see [`Soft::preferences`]).
    soft: Option<Soft>,
}

/// The raw inputs of a pod's preference scores.
struct Soft {
    /// Per node: the summed weights of the preferred node affinity terms it matches.
    node_affinity: Option<Vec<i64>>,
    /// Per node: Kubernetes' InterPodAffinity raw score.
    inter_pod: Option<Vec<i64>>,
    /// The `ScheduleAnyway` constraints.
    spread: Vec<SoftSpread>,
}

struct SoftSpread {
    /// Index in the pod's `Constraints::spread`.
    index: usize,
    /// Per node: placed pods the constraint's selector matches (in the pod's namespace).
    counts: Vec<u32>,
    /// Per node: passes the constraint's node inclusion policies.
    included: Vec<bool>,
}

impl<'a> Round<'a> {
    fn remove(&mut self, node: usize, p: &PodInfo<'_>) {
        let n = &mut self.nodes[node];
        n.used = Resources {
            cpu: n.used.cpu.saturating_sub(p.requests.cpu),
            memory: n.used.memory.saturating_sub(p.requests.memory),
        };
        n.used_nonzero = Resources {
            cpu: n.used_nonzero.cpu.saturating_sub(p.nonzero.cpu),
            memory: n.used_nonzero.memory.saturating_sub(p.nonzero.memory),
        };
        n.pods = n.pods.saturating_sub(1);
        for hp in &p.host_ports {
            if let Some(at) = n.host_ports.iter().position(|h| h == hp) {
                n.host_ports.swap_remove(at);
            }
        }
        if let Some(counts) = p.owner.and_then(|o| self.owner_counts.get_mut(o)) {
            counts[node] = counts[node].saturating_sub(1);
        }
        for list in [&mut self.placed, &mut self.binding_others] {
            if let Some(at) = list.iter().position(|q| q.node == node && q.key == *p.key) {
                list.swap_remove(at);
            }
        }
    }

    fn add(&mut self, node: usize, p: &PodInfo<'_>) {
        let n = &mut self.nodes[node];
        n.used = Resources {
            cpu: n.used.cpu.saturating_add(p.requests.cpu),
            memory: n.used.memory.saturating_add(p.requests.memory),
        };
        n.used_nonzero = Resources {
            cpu: n.used_nonzero.cpu.saturating_add(p.nonzero.cpu),
            memory: n.used_nonzero.memory.saturating_add(p.nonzero.memory),
        };
        n.pods += 1;
        n.host_ports.extend_from_slice(&p.host_ports);
        for (claim, bytes) in &p.volumes.unbound {
            if !self.claim_nodes.contains_key(claim) {
                let n = &mut self.nodes[node];
                n.storage_used = n.storage_used.saturating_add(*bytes);
                self.claim_nodes.insert(claim.clone(), node);
            }
        }
        if let Some(counts) = p.owner.and_then(|o| self.owner_counts.get_mut(o)) {
            counts[node] += 1;
        }
        if self.track {
            let placed = Placed {
                key: p.key.clone(),
                labels: p.labels.clone(),
                node,
                constraints: p.constraints.clone(),
            };
            if placed
                .constraints
                .as_ref()
                .is_some_and(|c| c.binds_others())
            {
                self.binding_others.push(placed.clone());
            }
            self.placed.push(placed);
        }
    }

    /// The mask of nodes a nodeSelector + required node affinity admits, cached per key.
    fn placement_mask(&mut self, key: PlacementKey, spec: &Value) {
        let nodes = &self.nodes;
        self.placement_masks.entry(key).or_insert_with(|| {
            let placement = NodePlacement::of(spec);
            nodes
                .iter()
                .map(|n| placement.matches(&n.labels, n.name))
                .collect()
        });
    }

    /// The value of `key` on the node of a placed pod.
    fn domain_of(&self, q: &Placed, key: &str) -> Option<&str> {
        self.nodes[q.node].labels.get(key).map(String::as_str)
    }

    /// Whether node `i` carries a `NoSchedule`/`NoExecute` taint the pod does not tolerate
    /// (a dead node counts as `node.kubernetes.io/unreachable`, a cordoned one as
    /// `node.kubernetes.io/unschedulable`): `nodeTaintsPolicy: Honor`.
    fn tainted_for(&self, i: usize, p: &PodInfo<'_>) -> bool {
        let n = &self.nodes[i];
        !n.alive
            || (n.cordoned && !p.ignores_cordon)
            || taint::first_untolerated(
                n.taints,
                &p.tolerations,
                &[Effect::NoSchedule, Effect::NoExecute],
            )
            .is_some()
    }

    /// Per node, the placed pods in `namespace` that `selects` picks.
    fn counts_on_nodes(&self, selects: impl Fn(&Placed) -> bool) -> Vec<u32> {
        let mut counts = vec![0u32; self.nodes.len()];
        for q in self.placed.iter().filter(|q| selects(q)) {
            counts[q.node] += 1;
        }
        counts
    }

    /// The key of `p`'s node placement mask (the mask cached) and its evaluation.
    fn prepare(&mut self, p: &PodInfo<'_>) -> (Option<PlacementKey>, PodEval) {
        let spec = &p.pod["spec"];
        let key = NodePlacement::key(spec);
        if let Some(k) = &key {
            self.placement_mask(k.clone(), spec);
        }
        let eval = if self.track || p.constraints.is_some() {
            let mask = key.as_ref().and_then(|k| self.placement_masks.get(k));
            self.evaluate(p, mask.map(Vec::as_slice))
        } else {
            PodEval::default()
        };
        (key, eval)
    }

    /// What `p`'s constraints between pods and preferences make of the nodes; `mask` is its
    /// node placement mask.
    fn evaluate(&self, p: &PodInfo<'_>, mask: Option<&[bool]>) -> PodEval {
        let empty = Constraints::default();
        let c = p.constraints.as_deref().unwrap_or(&empty);
        let mut filter: Option<Vec<u8>> = None;
        let mut fail = |i: usize, reason: usize, nodes: usize| {
            let f = filter.get_or_insert_with(|| vec![0u8; nodes]);
            if f[i] == 0 {
                f[i] = reason as u8 + 1;
            }
        };
        let nodes = self.nodes.len();
        let namespace = p.key.0.as_str();

        // Topology spread, DoNotSchedule (Kubernetes' PodTopologySpread filter).
        let hard: Vec<&podspec::SpreadConstraint> = c.spread.iter().filter(|s| s.hard).collect();
        if !hard.is_empty() {
            let has_keys = |i: usize| {
                hard.iter()
                    .all(|s| self.nodes[i].labels.contains_key(&s.topology_key))
            };
            for s in &hard {
                let counts =
                    self.counts_on_nodes(|q| q.namespace() == namespace && s.selects(&q.labels));
                let mut domains: BTreeMap<&str, u32> = BTreeMap::new();
                for (i, n) in self.nodes.iter().enumerate() {
                    let counted = has_keys(i)
                        && (!s.honor_affinity || mask.is_none_or(|m| m[i]))
                        && (!s.honor_taints || !self.tainted_for(i, p));
                    if let (true, Some(v)) = (counted, n.labels.get(&s.topology_key)) {
                        *domains.entry(v.as_str()).or_default() += counts[i];
                    }
                }
                let global_min = if domains.len() < s.min_domains {
                    0
                } else {
                    domains.values().copied().min().unwrap_or(0)
                };
                let own = u32::from(s.selects(&p.labels));
                for (i, n) in self.nodes.iter().enumerate() {
                    match n.labels.get(&s.topology_key) {
                        None => fail(i, R_SPREAD_LABEL, nodes),
                        Some(v) => {
                            let here = domains.get(v.as_str()).copied().unwrap_or(0);
                            let skew = i64::from(here + own) - i64::from(global_min);
                            if skew > s.max_skew {
                                fail(i, R_SPREAD, nodes);
                            }
                        }
                    }
                }
            }
        }

        // Inter-pod affinity (Kubernetes' InterPodAffinity filter): the pod's own anti-affinity,
        // the placed pods' anti-affinity towards it, its affinity.
        let mut blocked: BTreeSet<(&str, &str)> = BTreeSet::new();
        for term in &c.anti_required {
            for q in &self.placed {
                if term.selects(q.namespace(), &q.labels) {
                    if let Some(v) = self.domain_of(q, &term.topology_key) {
                        blocked.insert((term.topology_key.as_str(), v));
                    }
                }
            }
        }
        let mut blocked_by_others: BTreeSet<(&str, &str)> = BTreeSet::new();
        for q in &self.binding_others {
            for term in q.constraints.iter().flat_map(|c| &c.anti_required) {
                if term.selects(namespace, &p.labels) {
                    if let Some(v) = self.domain_of(q, &term.topology_key) {
                        blocked_by_others.insert((term.topology_key.as_str(), v));
                    }
                }
            }
        }
        // Domains holding a placed pod that matches every required affinity term.
        let mut wanted: BTreeSet<(&str, &str)> = BTreeSet::new();
        if !c.affinity_required.is_empty() {
            for q in &self.placed {
                if c.affinity_required
                    .iter()
                    .all(|t| t.selects(q.namespace(), &q.labels))
                {
                    for t in &c.affinity_required {
                        if let Some(v) = self.domain_of(q, &t.topology_key) {
                            wanted.insert((t.topology_key.as_str(), v));
                        }
                    }
                }
            }
        }
        // The first of a group with affinity to itself may go anywhere the keys exist.
        let first_of_group = wanted.is_empty()
            && c.affinity_required
                .iter()
                .all(|t| t.selects(namespace, &p.labels));
        let in_any = |set: &BTreeSet<(&str, &str)>, labels: &BTreeMap<String, String>| {
            set.iter()
                .any(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        };
        if !blocked.is_empty() || !blocked_by_others.is_empty() || !c.affinity_required.is_empty() {
            for (i, n) in self.nodes.iter().enumerate() {
                if in_any(&blocked, &n.labels) {
                    fail(i, R_ANTI, nodes);
                } else if in_any(&blocked_by_others, &n.labels) {
                    fail(i, R_EXISTING_ANTI, nodes);
                } else if !c.affinity_required.is_empty() {
                    let ok = c.affinity_required.iter().all(|t| {
                        n.labels.get(&t.topology_key).is_some_and(|v| {
                            first_of_group
                                || wanted.contains(&(t.topology_key.as_str(), v.as_str()))
                        })
                    });
                    if !ok {
                        fail(i, R_AFFINITY, nodes);
                    }
                }
            }
        }
        PodEval {
            filter,
            soft: self.soft(p, c, mask),
        }
    }

    /// The raw preference inputs of `p`, `None` when it has no preference and no placed pod's
    /// terms reach it.
    fn soft(&self, p: &PodInfo<'_>, c: &Constraints, mask: Option<&[bool]>) -> Option<Soft> {
        let node_affinity = (!c.node_preferred.is_empty()).then(|| {
            self.nodes
                .iter()
                .map(|n| {
                    c.node_preferred
                        .iter()
                        .filter(|(_, t)| t.matches(&n.labels, n.name))
                        .map(|(w, _)| *w)
                        .sum::<i64>()
                })
                .collect()
        });
        // Kubernetes' InterPodAffinity score: weights summed per topology domain, from the
        // pod's preferred terms over the placed pods and from the placed pods' terms over it.
        let namespace = p.key.0.as_str();
        let mut domains: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        if !c.affinity_preferred.is_empty() || !c.anti_preferred.is_empty() {
            let own = c
                .affinity_preferred
                .iter()
                .map(|(w, t)| (*w, t))
                .chain(c.anti_preferred.iter().map(|(w, t)| (-*w, t)));
            for (w, t) in own {
                for q in &self.placed {
                    if t.selects(q.namespace(), &q.labels) {
                        if let Some(v) = self.domain_of(q, &t.topology_key) {
                            *domains.entry((t.topology_key.as_str(), v)).or_default() += w;
                        }
                    }
                }
            }
        }
        for q in &self.binding_others {
            let Some(qc) = q.constraints.as_deref() else {
                continue;
            };
            let terms = qc
                .affinity_preferred
                .iter()
                .map(|(w, t)| (*w, t))
                .chain(qc.anti_preferred.iter().map(|(w, t)| (-*w, t)))
                .chain(
                    qc.affinity_required
                        .iter()
                        .map(|t| (HARD_POD_AFFINITY_WEIGHT, t)),
                );
            for (w, t) in terms {
                if t.selects(namespace, &p.labels) {
                    if let Some(v) = self.domain_of(q, &t.topology_key) {
                        *domains.entry((t.topology_key.as_str(), v)).or_default() += w;
                    }
                }
            }
        }
        let inter_pod = (!domains.is_empty()).then(|| {
            self.nodes
                .iter()
                .map(|n| {
                    domains
                        .iter()
                        .filter(|((k, v), _)| n.labels.get(*k).map(String::as_str) == Some(*v))
                        .map(|(_, w)| *w)
                        .sum::<i64>()
                })
                .collect()
        });
        let spread: Vec<SoftSpread> = c
            .spread
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.hard)
            .map(|(index, s)| SoftSpread {
                index,
                counts: self
                    .counts_on_nodes(|q| q.namespace() == namespace && s.selects(&q.labels)),
                included: (0..self.nodes.len())
                    .map(|i| {
                        (!s.honor_affinity || mask.is_none_or(|m| m[i]))
                            && (!s.honor_taints || !self.tainted_for(i, p))
                    })
                    .collect(),
            })
            .collect();
        if node_affinity.is_none() && inter_pod.is_none() && spread.is_empty() {
            return None;
        }
        Some(Soft {
            node_affinity,
            inter_pod,
            spread,
        })
    }
}

/// Kubernetes' FitError text: `0/3 nodes are available: 1 Insufficient cpu, 2 ....`
pub fn unschedulable_message(nodes: usize, reasons: &Reasons) -> String {
    if nodes == 0 {
        return "no nodes available to schedule pods".to_string();
    }
    let mut parts: Vec<String> = reasons
        .counts
        .iter()
        .zip(REASONS)
        .filter(|(n, _)| **n > 0)
        .map(|(n, r)| format!("{n} {r}"))
        .chain(
            reasons
                .taints
                .iter()
                .map(|(t, n)| format!("{n} node(s) had untolerated taint {t}")),
        )
        .collect();
    parts.sort();
    format!("0/{nodes} nodes are available: {}.", parts.join(", "))
}

fn binding_id(rng: &mut ChaCha8Rng) -> String {
    uuid::Builder::from_random_bytes(rng.gen())
        .into_uuid()
        .to_string()
}

fn pod_event(
    key: &PodKey,
    uid: &str,
    event_type: EventType,
    reason: EventReason,
    message: String,
) -> PlannedEvent {
    PlannedEvent {
        involved: InvolvedObject {
            api_version: "v1".into(),
            kind: "Pod".into(),
            namespace: key.0.clone(),
            name: key.1.clone(),
            uid: uid.to_string(),
        },
        event_type,
        reason,
        message,
        component: "default-scheduler",
    }
}

/// Places the pods of `w` that need a node; see the module doc.
#[allow(clippy::too_many_arguments)]
pub(crate) fn schedule(
    w: &mut Working<'_>,
    nodes: &[NodeRecord],
    settings: &BTreeMap<String, NodeSettings>,
    liveness: &BTreeMap<String, Liveness>,
    previous: &BTreeMap<PodKey, SchedulingRecord>,
    ctx: &LeaderCtx,
    writes: &mut Vec<Write>,
    scheduling: &mut Vec<SchedulingWrite>,
    events: &mut Vec<PlannedEvent>,
) {
    let Working {
        pods,
        bindings,
        finished,
        storage: volume_state,
        ..
    } = w;
    let table = node_table(nodes, settings, liveness, &volume_state.used_by_node());
    let one_pod_users =
        volumes::one_pod_users(pods.iter().map(|(k, p)| (k, p.as_ref())), volume_state);
    // Pods whose claims let them be placed nowhere, with why.
    let mut blocked: Vec<(&PodKey, &str, volumes::Blocked)> = Vec::new();
    let cordon = taint::unschedulable_taint();
    let by_name: BTreeMap<&str, usize> =
        table.iter().enumerate().map(|(i, n)| (n.name, i)).collect();
    let dead = |node: &str| liveness.get(node).is_none_or(|l| *l == Liveness::Dead);

    // (pod, node, its binding when the pod may be moved: controller-owned, not `nodeName`)
    let mut placed: Vec<(PodInfo<'_>, usize, Option<Binding>)> = Vec::new();
    let mut rebinds = 0usize;
    let mut pending: Vec<PodInfo<'_>> = Vec::new();
    let mut track = false;
    for (key, pod) in pods.iter() {
        // A pod that ended (a Job's) stays where it ran and takes no room.
        if !object::is_valid(pod) || finished.contains_key(key) {
            continue;
        }
        let spec = &pod["spec"];
        let (requests, nonzero) = podspec::pod_requests(spec);
        let (labels, constraints) = if Constraints::present(spec) {
            let labels = pod_labels(pod);
            let c = Constraints::parse(spec, &key.0, &labels);
            (labels, (!c.is_empty()).then(|| Rc::new(c)))
        } else {
            (BTreeMap::new(), None)
        };
        track |= constraints.as_ref().is_some_and(|c| c.between_pods());
        let tolerations = taint::tolerations(spec);
        let need = volumes::need(pod, volume_state, &one_pod_users);
        let info = PodInfo {
            ignores_cordon: taint::tolerated(&tolerations, &cordon),
            tolerations,
            key,
            uid: object::uid(pod),
            owner: controller(pod).map(|(_, uid)| uid),
            requests,
            nonzero,
            constraints,
            labels,
            volumes: need.clone().unwrap_or_default(),
            volumes_blocked: need.err(),
            host_ports: host_port::of_spec(spec),
            pod,
        };
        if let Some(node) = spec["nodeName"].as_str().filter(|n| !n.is_empty()) {
            // Bound by the user: never moved, but it uses the node's capacity.
            if let Some(&i) = by_name.get(node) {
                placed.push((info, i, None));
            }
            continue;
        }
        let identity = statefulset::holds_identity(pod);
        match bindings.get(key) {
            // A StatefulSet's pod keeps its node until the node's record is deleted: the node
            // may still run it across a partition (at most one pod per identity). It is
            // never moved to relieve an overcommitted node either.
            Some(b) if identity => {
                let released =
                    statefulset::identity_released(Some(&b.node), |n| by_name.contains_key(n));
                if !released {
                    if let Some(&i) = by_name.get(b.node.as_str()) {
                        placed.push((info, i, None));
                    }
                } else if rebinds < REBIND_BUDGET {
                    rebinds += 1;
                    pending.push(info);
                }
            }
            // Controllers replace their pods on dead nodes (at most REBIND_BUDGET a round: a
            // storm of failovers must not double the work it fixes); bare pods stay.
            Some(b) if dead(&b.node) && info.owner.is_some() => {
                if rebinds < REBIND_BUDGET {
                    rebinds += 1;
                    pending.push(info);
                }
            }
            Some(b) => {
                if let Some(&i) = by_name.get(b.node.as_str()) {
                    let movable = info.owner.is_some().then(|| b.as_ref().clone());
                    placed.push((info, i, movable));
                }
            }
            None => pending.push(info),
        }
    }

    // Constraints between pods need every placed pod's labels.
    if track {
        for p in pending.iter_mut().chain(placed.iter_mut().map(|(p, ..)| p)) {
            if p.labels.is_empty() {
                p.labels = pod_labels(p.pod);
            }
        }
    }
    let mut round = Round {
        owner_counts: pending
            .iter()
            .filter_map(|p| p.owner)
            .map(|o| (o, vec![0u32; table.len()]))
            .collect(),
        nodes: table,
        placement_masks: BTreeMap::new(),
        placed: Vec::new(),
        binding_others: Vec::new(),
        track,
        claim_nodes: BTreeMap::new(),
    };
    for (p, node, _) in &placed {
        round.add(*node, p);
    }
    // Concurrent leaders (a partition, a lagging view) may each have filled a node; after
    // their bindings merged it can hold more than it has room for. The newest placements of
    // controller-owned pods on such a node are moved, until it fits.
    let mut movable: Vec<(usize, NewestFirst, usize)> = placed
        .iter()
        .enumerate()
        .filter_map(|(i, (_, node, b))| {
            let b = b.as_ref()?;
            Some((*node, std::cmp::Reverse((b.at, b.id.clone())), i))
        })
        .collect();
    movable.sort();
    let mut evicted = BTreeSet::new();
    for (node, _, i) in movable {
        if round.nodes[node].alive && !round.nodes[node].fits() {
            round.remove(node, &placed[i].0);
            evicted.insert(i);
        }
    }
    let missing: BTreeSet<&str> = evicted
        .iter()
        .filter_map(|&i| placed[i].0.owner)
        .filter(|o| !round.owner_counts.contains_key(o))
        .collect();
    for owner in missing {
        let mut counts = vec![0u32; round.nodes.len()];
        for (i, (p, node, _)) in placed.iter().enumerate() {
            if p.owner == Some(owner) && !evicted.contains(&i) {
                counts[*node] += 1;
            }
        }
        round.owner_counts.insert(owner, counts);
    }
    for (i, (p, _, _)) in placed.into_iter().enumerate() {
        if evicted.contains(&i) {
            pending.push(p);
        }
    }
    pending.retain_mut(|p| match p.volumes_blocked.take() {
        Some(b) => {
            blocked.push((p.key, p.uid, b));
            false
        }
        None => true,
    });
    pending.sort_by(|a, b| a.key.cmp(b.key));

    let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed);
    let mut failed: Vec<&PodInfo<'_>> = Vec::new();
    for p in &pending {
        let (mask, eval) = round.prepare(p);
        match choose(&round, p, mask.as_ref(), &eval) {
            Ok(node) => {
                let binding = Binding {
                    node: round.nodes[node].name.to_string(),
                    id: binding_id(&mut rng),
                    pod_uid: p.uid.to_string(),
                    epoch: ctx.epoch,
                    view: ctx.view,
                    leader: ctx.node.clone(),
                    at: ctx.now,
                };
                events.push(pod_event(
                    p.key,
                    p.uid,
                    EventType::Normal,
                    EventReason::Scheduled,
                    format!(
                        "Successfully assigned {}/{} to {}",
                        p.key.0, p.key.1, binding.node
                    ),
                ));
                writes.push(Write::PutBinding {
                    namespace: p.key.0.clone(),
                    pod: p.key.1.clone(),
                    binding: binding.clone(),
                });
                bindings.insert(p.key.clone(), std::borrow::Cow::Owned(binding));
                round.add(node, p);
            }
            Err(_) => failed.push(p),
        }
    }
    // Why each pod that found no node fits nowhere, against the state at the end of the
    // round (what the next round will see, so the message is stable).
    let mut unschedulable: BTreeMap<&PodKey, (&str, String)> = BTreeMap::new();
    // Events on claims that no node can provision, recorded with their pod's.
    let mut claim_events: BTreeMap<&PodKey, Vec<PlannedEvent>> = BTreeMap::new();
    let largest = round.nodes.iter().map(|n| n.storage_cap).max().unwrap_or(0);
    for p in failed {
        let (mask, eval) = round.prepare(p);
        let reasons = match choose(&round, p, mask.as_ref(), &eval) {
            Err(r) => r,
            Ok(_) => Reasons::default(), // cannot happen: placements only take room
        };
        let message = unschedulable_message(round.nodes.len(), &reasons);
        for (claim, bytes) in &p.volumes.unbound {
            if *bytes > largest {
                if let Some(c) = volume_state.claims.get(claim) {
                    claim_events.entry(p.key).or_default().push(volumes::claim_event(
                        c,
                        format!(
                            "no node can provision it: it asks for {bytes} bytes, the largest local-path storage of a node is {largest} bytes"
                        ),
                    ));
                }
            }
        }
        unschedulable.insert(p.key, (p.uid, message));
    }
    for (key, uid, b) in blocked {
        let message = if round.nodes.is_empty() {
            unschedulable_message(0, &Reasons::default())
        } else {
            format!(
                "0/{} nodes are available: {}.",
                round.nodes.len(),
                b.message
            )
        };
        if let Some((claim, text)) = b.claim_event {
            if let Some(c) = volume_state.claims.get(&claim) {
                claim_events
                    .entry(key)
                    .or_default()
                    .push(volumes::claim_event(c, text));
            }
        }
        unschedulable.insert(key, (uid, message));
    }

    for (key, (uid, message)) in &unschedulable {
        let unchanged = previous
            .get(*key)
            .is_some_and(|r| r.pod_uid == *uid && r.message == *message);
        if unchanged {
            continue;
        }
        scheduling.push(SchedulingWrite::Put {
            namespace: key.0.clone(),
            pod: key.1.clone(),
            record: SchedulingRecord {
                pod_uid: uid.to_string(),
                reason: "Unschedulable".into(),
                message: message.clone(),
                at: ctx.now,
            },
        });
        events.push(pod_event(
            key,
            uid,
            EventType::Warning,
            EventReason::FailedScheduling,
            message.clone(),
        ));
        events.extend(claim_events.remove(*key).into_iter().flatten());
    }
    for key in previous.keys() {
        if !unschedulable.contains_key(key) {
            scheduling.push(SchedulingWrite::Delete {
                namespace: key.0.clone(),
                pod: key.1.clone(),
            });
        }
    }
}

/// A node being considered: (index, (untolerated PreferNoSchedule taints, minus the
/// preference score, same-owner pods), least-requested score, rendezvous weight once computed).
type Candidate = (usize, (usize, i64, u32), u64, Option<u64>);

/// The better of the best so far and `c`: lower rank, then higher least-requested score, then
/// the higher rendezvous weight of (pod, node).
fn better(round: &Round<'_>, pod_hash: u64, best: Option<Candidate>, c: Candidate) -> Candidate {
    let Some((b, bc, bs, bt)) = best else {
        return c;
    };
    let (i, count, score, _) = c;
    if count < bc || (count == bc && score > bs) {
        c
    } else if count == bc && score == bs {
        let bt = bt.unwrap_or_else(|| rendezvous(pod_hash, round.nodes[b].hash));
        let t = rendezvous(pod_hash, round.nodes[i].hash);
        if t > bt {
            (i, count, score, Some(t))
        } else {
            (b, bc, bs, Some(bt))
        }
    } else {
        (b, bc, bs, bt)
    }
}

/// `scores` normalized as Kubernetes' `DefaultNormalizeScore` (0–`MAX_NODE_SCORE`, relative to
/// the highest).
fn normalize_by_max(scores: &mut [i64]) {
    let max = scores.iter().copied().max().unwrap_or(0);
    for s in scores.iter_mut() {
        *s = if max > 0 {
            *s * MAX_NODE_SCORE / max
        } else {
            0
        };
    }
}

impl Soft {
    /// Kubernetes' weighted sum of the normalized NodeAffinity, InterPodAffinity and
    /// PodTopologySpread scores of each of the `feasible` nodes (normalized over them).
    fn preferences(&self, round: &Round<'_>, c: &Constraints, feasible: &[usize]) -> Vec<i64> {
        let mut total = vec![0i64; feasible.len()];
        if let Some(raw) = &self.node_affinity {
            let mut scores: Vec<i64> = feasible.iter().map(|&i| raw[i]).collect();
            normalize_by_max(&mut scores);
            for (t, s) in total.iter_mut().zip(scores) {
                *t += PLUGIN_WEIGHT * s;
            }
        }
        if let Some(raw) = &self.inter_pod {
            let scores: Vec<i64> = feasible.iter().map(|&i| raw[i]).collect();
            let min = scores.iter().copied().min().unwrap_or(0);
            let max = scores.iter().copied().max().unwrap_or(0);
            for (t, s) in total.iter_mut().zip(scores) {
                if max > min {
                    *t += PLUGIN_WEIGHT * (MAX_NODE_SCORE * (s - min) / (max - min));
                }
            }
        }
        if !self.spread.is_empty() {
            for (t, s) in total.iter_mut().zip(self.spread_scores(round, c, feasible)) {
                *t += PLUGIN_WEIGHT * s;
            }
        }
        total
    }

    /// Kubernetes' PodTopologySpread score of the `ScheduleAnyway` constraints, normalized:
    /// fewer matching pods in the node's domain score higher; a node missing a constraint's
    /// key scores 0.
    fn spread_scores(&self, round: &Round<'_>, c: &Constraints, feasible: &[usize]) -> Vec<i64> {
        let constraints: Vec<(&podspec::SpreadConstraint, &SoftSpread)> = self
            .spread
            .iter()
            .map(|s| (&c.spread[s.index], s))
            .collect();
        let has_keys = |i: usize| {
            constraints
                .iter()
                .all(|(sc, _)| round.nodes[i].labels.contains_key(&sc.topology_key))
        };
        let scored: Vec<usize> = feasible.iter().copied().filter(|&i| has_keys(i)).collect();
        let mut raw: BTreeMap<usize, f64> = scored.iter().map(|&i| (i, 0.0)).collect();
        for (sc, ss) in &constraints {
            let hostname = sc.topology_key == HOSTNAME_LABEL;
            // Domains of the scored nodes; pods counted on every node that has all the keys
            // and passes the constraint's inclusion policies.
            let mut domains: BTreeMap<&str, u64> = scored
                .iter()
                .filter_map(|&i| round.nodes[i].labels.get(&sc.topology_key))
                .map(|v| (v.as_str(), 0))
                .collect();
            let size = if hostname {
                scored.len()
            } else {
                domains.len()
            };
            if !hostname {
                for (i, n) in round.nodes.iter().enumerate() {
                    if !ss.included[i] || !has_keys(i) {
                        continue;
                    }
                    if let Some(d) = n
                        .labels
                        .get(&sc.topology_key)
                        .and_then(|v| domains.get_mut(v.as_str()))
                    {
                        *d += u64::from(ss.counts[i]);
                    }
                }
            }
            let weight = ((size + 2) as f64).ln();
            for (&i, score) in raw.iter_mut() {
                let count = if hostname {
                    u64::from(ss.counts[i])
                } else {
                    round.nodes[i]
                        .labels
                        .get(&sc.topology_key)
                        .and_then(|v| domains.get(v.as_str()))
                        .copied()
                        .unwrap_or(0)
                };
                *score += count as f64 * weight + (sc.max_skew - 1) as f64;
            }
        }
        let rounded: BTreeMap<usize, i64> = raw
            .into_iter()
            .map(|(i, s)| (i, s.round() as i64))
            .collect();
        let min = rounded.values().copied().min().unwrap_or(0);
        let max = rounded.values().copied().max().unwrap_or(0);
        feasible
            .iter()
            .map(|i| match rounded.get(i) {
                None => 0,
                Some(_) if max == 0 => MAX_NODE_SCORE,
                Some(s) => MAX_NODE_SCORE * (max + min - s) / max,
            })
            .collect()
    }
}

/// Why node `i` cannot take `p`'s claims: a bound claim's volume is on another node (also a
/// claim bound earlier in this round), or it lacks the free local-path storage its unbound
/// claims ask for.
fn volume_misfit(round: &Round<'_>, p: &PodInfo<'_>, i: usize) -> Option<usize> {
    let n = &round.nodes[i];
    if p.volumes.pinned.as_deref().is_some_and(|pin| pin != n.name) {
        return Some(R_VOLUME_NODE);
    }
    let mut bytes = 0u64;
    for (claim, b) in &p.volumes.unbound {
        match round.claim_nodes.get(claim) {
            Some(&at) if at != i => return Some(R_VOLUME_NODE),
            Some(_) => {}
            None => bytes = bytes.saturating_add(*b),
        }
    }
    (bytes > 0 && n.storage_cap.saturating_sub(n.storage_used) < bytes).then_some(R_STORAGE)
}

/// The best node for `p`, or the reasons why none fits. `mask`: the key of its node placement
/// mask; `eval`: its constraints between pods and preferences.
fn choose(
    round: &Round<'_>,
    p: &PodInfo<'_>,
    mask: Option<&PlacementKey>,
    eval: &PodEval,
) -> Result<usize, Reasons> {
    let mask = mask.and_then(|k| round.placement_masks.get(k));
    let counts = p.owner.and_then(|o| round.owner_counts.get(o));
    let pod_hash = hash64(&[&p.key.0, &p.key.1, p.uid]);
    let mut reasons = Reasons::default();
    let histogram = &mut reasons.counts;
    let mut best: Option<Candidate> = None;
    // With preferences, the nodes that pass every filter, ranked once all are known.
    let mut feasible: Vec<Candidate> = Vec::new();
    for (i, n) in round.nodes.iter().enumerate() {
        if !n.alive {
            histogram[R_UNREACHABLE] += 1;
            continue;
        }
        if n.cordoned && !p.ignores_cordon {
            histogram[R_CORDONED] += 1;
            continue;
        }
        if let Some(t) = taint::first_untolerated(
            n.taints,
            &p.tolerations,
            &[Effect::NoSchedule, Effect::NoExecute],
        ) {
            *reasons.taints.entry(t.shown()).or_default() += 1;
            continue;
        }
        if mask.is_some_and(|m| !m[i]) {
            histogram[R_SELECTOR] += 1;
            continue;
        }
        let mut fits = true;
        if n.pods >= n.max_pods {
            histogram[R_PODS] += 1;
            fits = false;
        }
        if p.requests.cpu > 0 && n.cap.cpu.saturating_sub(n.used.cpu) < p.requests.cpu {
            histogram[R_CPU] += 1;
            fits = false;
        }
        if p.requests.memory > 0 && n.cap.memory.saturating_sub(n.used.memory) < p.requests.memory {
            histogram[R_MEMORY] += 1;
            fits = false;
        }
        if !p.host_ports.is_empty() && n.ports_taken(&p.host_ports) {
            histogram[R_PORTS] += 1;
            fits = false;
        }
        if !fits {
            continue;
        }
        if let Some(reason) = volume_misfit(round, p, i) {
            histogram[reason] += 1;
            continue;
        }
        if let Some(reason) = eval.filter.as_ref().map(|f| f[i]).filter(|r| *r > 0) {
            histogram[usize::from(reason - 1)] += 1;
            continue;
        }
        let preferred = n
            .taints
            .iter()
            .filter(|t| {
                t.effect == Effect::PreferNoSchedule && !taint::tolerated(&p.tolerations, t)
            })
            .count();
        let rank = (preferred, 0, counts.map_or(0, |c| c[i]));
        let free_cpu = n
            .cap
            .cpu
            .saturating_sub(n.used_nonzero.cpu.saturating_add(p.nonzero.cpu));
        let free_memory = n
            .cap
            .memory
            .saturating_sub(n.used_nonzero.memory.saturating_add(p.nonzero.memory));
        let score =
            ((free_cpu as f64 * n.inv_cpu + free_memory as f64 * n.inv_memory) * 1e6) as u64;
        if eval.soft.is_some() {
            feasible.push((i, rank, score, None));
        } else {
            best = Some(better(round, pod_hash, best, (i, rank, score, None)));
        }
    }
    if let Some(soft) = &eval.soft {
        let empty = Constraints::default();
        let c = p.constraints.as_deref().unwrap_or(&empty);
        let nodes: Vec<usize> = feasible.iter().map(|f| f.0).collect();
        let preferences = soft.preferences(round, c, &nodes);
        for (mut candidate, preference) in feasible.into_iter().zip(preferences) {
            candidate.1 .1 = -preference;
            best = Some(better(round, pod_hash, best, candidate));
        }
    }
    best.map(|(i, ..)| i).ok_or(reasons)
}
