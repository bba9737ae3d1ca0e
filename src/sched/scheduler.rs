//! Placement: every pod without a binding, and every controller-owned pod bound to a node the
//! leader's view says is dead, gets a fresh binding. Filters (alive, cordoned
//! (`spec.unschedulable`), `NoSchedule`/`NoExecute` taints the pod does not tolerate, pod
//! count, nodeSelector,
//! CPU/memory requests against capacity minus what is bound, required pod anti-affinity, both
//! the pod's own terms and those of pods already placed), then score (fewest pods of the same
//! owner on the node, then least requested; before both, fewest untolerated
//! `PreferNoSchedule` taints), ties broken by a rendezvous hash of
//! (pod, node). Pods placed earlier in the same round count, so one round never overcommits.
//!
//! The hot loop touches only a flat node table: per-node free capacity and per-owner counts
//! are precomputed once per round, selector masks are cached per distinct selector, and JSON
//! is read once per pod.

use std::collections::{BTreeMap, BTreeSet};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use super::hash::{hash64, rendezvous};
use super::object::{self, controller};
use super::podspec::{self, AntiAffinityTerm, Resources};
use super::snapshot::{LeaderCtx, Liveness, PlannedEvent, PodKey, SchedulingWrite, Write};
use super::Working;
use crate::model::quantity::{parse_milli, parse_units};
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
const REASONS: [&str; 8] = [
    "node(s) had untolerated taint {node.kubernetes.io/unreachable: }",
    "node(s) didn't match Pod's node affinity/selector",
    "Too many pods",
    "Insufficient cpu",
    "Insufficient memory",
    "node(s) didn't match pod anti-affinity rules",
    "node(s) didn't satisfy existing pods anti-affinity rules",
    "node(s) were unschedulable",
];
const R_UNREACHABLE: usize = 0;
const R_SELECTOR: usize = 1;
const R_PODS: usize = 2;
const R_CPU: usize = 3;
const R_MEMORY: usize = 4;
const R_ANTI: usize = 5;
const R_EXISTING_ANTI: usize = 6;
const R_CORDONED: usize = 7;

/// Why a pod fits no node: how many nodes each filter turned away.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reasons {
    /// By [`REASONS`] index.
    pub counts: [u32; 8],
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
    terms: Vec<AntiAffinityTerm>,
    tolerations: Vec<Toleration>,
    /// Tolerates the cordon (`node.kubernetes.io/unschedulable:NoSchedule`).
    ignores_cordon: bool,
    pod: &'a Value,
}

/// A pod already on a node (for anti-affinity).
struct Placed {
    key: PodKey,
    namespace: String,
    labels: BTreeMap<String, String>,
    node: usize,
    terms: Vec<AntiAffinityTerm>,
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
    selector_masks: BTreeMap<Vec<(String, String)>, Vec<bool>>,
    /// Only filled when some pod uses anti-affinity.
    placed: Vec<Placed>,
    anti_affinity: bool,
}

impl NodeSlot<'_> {
    /// Holds no more than it has room for.
    fn fits(&self) -> bool {
        self.pods <= self.max_pods
            && self.used.cpu <= self.cap.cpu
            && self.used.memory <= self.cap.memory
    }
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
        if let Some(counts) = p.owner.and_then(|o| self.owner_counts.get_mut(o)) {
            counts[node] = counts[node].saturating_sub(1);
        }
        if let Some(at) = self
            .placed
            .iter()
            .position(|q| q.node == node && q.key == *p.key)
        {
            self.placed.swap_remove(at);
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
        if let Some(counts) = p.owner.and_then(|o| self.owner_counts.get_mut(o)) {
            counts[node] += 1;
        }
        if self.anti_affinity {
            self.placed.push(Placed {
                key: p.key.clone(),
                namespace: p.key.0.clone(),
                labels: pod_labels_of(p),
                node,
                terms: p.terms.clone(),
            });
        }
    }

    fn selector_mask(&mut self, selector: Vec<(String, String)>) -> &[bool] {
        let nodes = &self.nodes;
        self.selector_masks
            .entry(selector)
            .or_insert_with_key(|sel| {
                nodes
                    .iter()
                    .map(|n| sel.iter().all(|(k, v)| n.labels.get(k) == Some(v)))
                    .collect()
            })
    }

    /// Nodes excluded by anti-affinity for `pod`: 1 = the pod's own terms, 2 = placed pods'.
    fn anti_affinity_mask(&self, pod: &PodInfo<'_>) -> Option<Vec<u8>> {
        if !self.anti_affinity {
            return None;
        }
        let labels = pod_labels_of(pod);
        let mut blocked: BTreeSet<(u8, &str, &str)> = BTreeSet::new();
        for term in &pod.terms {
            for q in &self.placed {
                if term.applies_to_namespace(&q.namespace) && term.selector.matches(&q.labels) {
                    if let Some(v) = self.nodes[q.node].labels.get(&term.topology_key) {
                        blocked.insert((1, &term.topology_key, v));
                    }
                }
            }
        }
        for q in self.placed.iter().filter(|q| !q.terms.is_empty()) {
            for term in &q.terms {
                if term.applies_to_namespace(&pod.key.0) && term.selector.matches(&labels) {
                    if let Some(v) = self.nodes[q.node].labels.get(&term.topology_key) {
                        blocked.insert((2, &term.topology_key, v));
                    }
                }
            }
        }
        if blocked.is_empty() {
            return None;
        }
        Some(
            self.nodes
                .iter()
                .map(|n| {
                    blocked
                        .iter()
                        .filter(|(_, k, v)| n.labels.get(*k).map(String::as_str) == Some(*v))
                        .map(|(kind, _, _)| *kind)
                        .min()
                        .unwrap_or(0)
                })
                .collect(),
        )
    }
}

fn pod_labels_of(p: &PodInfo<'_>) -> BTreeMap<String, String> {
    pod_labels(p.pod)
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
        ..
    } = w;
    let table = node_table(nodes, settings, liveness);
    let cordon = taint::unschedulable_taint();
    let by_name: BTreeMap<&str, usize> =
        table.iter().enumerate().map(|(i, n)| (n.name, i)).collect();
    let dead = |node: &str| liveness.get(node).is_none_or(|l| *l == Liveness::Dead);

    // (pod, node, its binding when the pod may be moved: controller-owned, not `nodeName`)
    let mut placed: Vec<(PodInfo<'_>, usize, Option<Binding>)> = Vec::new();
    let mut rebinds = 0usize;
    let mut pending: Vec<PodInfo<'_>> = Vec::new();
    let mut anti_affinity = false;
    for (key, pod) in pods.iter() {
        // A pod that ended (a Job's) stays where it ran and takes no room.
        if !object::is_valid(pod) || finished.contains_key(key) {
            continue;
        }
        let spec = &pod["spec"];
        let (requests, nonzero) = podspec::pod_requests(spec);
        let terms = podspec::anti_affinity(spec, &key.0);
        anti_affinity |= !terms.is_empty();
        let tolerations = taint::tolerations(spec);
        let info = PodInfo {
            ignores_cordon: taint::tolerated(&tolerations, &cordon),
            tolerations,
            key,
            uid: object::uid(pod),
            owner: controller(pod).map(|(_, uid)| uid),
            requests,
            nonzero,
            terms,
            pod,
        };
        if let Some(node) = spec["nodeName"].as_str().filter(|n| !n.is_empty()) {
            // Bound by the user: never moved, but it uses the node's capacity.
            if let Some(&i) = by_name.get(node) {
                placed.push((info, i, None));
            }
            continue;
        }
        match bindings.get(key) {
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

    let mut round = Round {
        owner_counts: pending
            .iter()
            .filter_map(|p| p.owner)
            .map(|o| (o, vec![0u32; table.len()]))
            .collect(),
        nodes: table,
        selector_masks: BTreeMap::new(),
        placed: Vec::new(),
        anti_affinity,
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
    pending.sort_by(|a, b| a.key.cmp(b.key));

    let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed);
    let mut failed: Vec<&PodInfo<'_>> = Vec::new();
    for p in &pending {
        let selector = podspec::node_selector(&p.pod["spec"]);
        if let Some(s) = &selector {
            round.selector_mask(s.clone());
        }
        let anti = round.anti_affinity_mask(p);
        match choose(&round, p, selector.as_ref(), anti.as_deref()) {
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
    for p in failed {
        let selector = podspec::node_selector(&p.pod["spec"]);
        let anti = round.anti_affinity_mask(p);
        let reasons = match choose(&round, p, selector.as_ref(), anti.as_deref()) {
            Err(r) => r,
            Ok(_) => Reasons::default(), // cannot happen: placements only take room
        };
        let message = unschedulable_message(round.nodes.len(), &reasons);
        unschedulable.insert(p.key, (p.uid, message));
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

/// A node being considered: (index, (untolerated PreferNoSchedule taints, same-owner pods),
/// least-requested score, rendezvous weight once computed).
type Candidate = (usize, (usize, u32), u64, Option<u64>);

/// The best node for `p`, or the reasons why none fits.
fn choose(
    round: &Round<'_>,
    p: &PodInfo<'_>,
    selector: Option<&Vec<(String, String)>>,
    anti: Option<&[u8]>,
) -> Result<usize, Reasons> {
    let mask = selector.and_then(|s| round.selector_masks.get(s));
    let counts = p.owner.and_then(|o| round.owner_counts.get(o));
    let pod_hash = hash64(&[&p.key.0, &p.key.1, p.uid]);
    let mut reasons = Reasons::default();
    let histogram = &mut reasons.counts;
    // (node, untolerated PreferNoSchedule taints and same-owner pods, least-requested score,
    // rendezvous weight once computed)
    let mut best: Option<Candidate> = None;
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
        if !fits {
            continue;
        }
        match anti.map_or(0, |a| a[i]) {
            1 => {
                histogram[R_ANTI] += 1;
                continue;
            }
            2 => {
                histogram[R_EXISTING_ANTI] += 1;
                continue;
            }
            _ => {}
        }
        let preferred = n
            .taints
            .iter()
            .filter(|t| {
                t.effect == Effect::PreferNoSchedule && !taint::tolerated(&p.tolerations, t)
            })
            .count();
        let count = (preferred, counts.map_or(0, |c| c[i]));
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
        best = match best {
            None => Some((i, count, score, None)),
            Some((b, bc, bs, bt)) => {
                if count < bc || (count == bc && score > bs) {
                    Some((i, count, score, None))
                } else if count == bc && score == bs {
                    let bt = bt.unwrap_or_else(|| rendezvous(pod_hash, round.nodes[b].hash));
                    let t = rendezvous(pod_hash, n.hash);
                    if t > bt {
                        Some((i, count, score, Some(t)))
                    } else {
                        Some((b, bc, bs, Some(bt)))
                    }
                } else {
                    Some((b, bc, bs, bt))
                }
            }
        };
    }
    best.map(|(i, ..)| i).ok_or(reasons)
}
