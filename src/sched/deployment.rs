//! Deployment → ReplicaSets, as Kubernetes' deployment controller (`rolling.go`,
//! `recreate.go`, `sync.go`): the ReplicaSet of the current template `<deploy>-<hash>` is
//! created and scaled up while older ones are scaled down, within `maxSurge` above and
//! `maxUnavailable` below `replicas`, gated by pod availability (Ready for
//! `minReadySeconds`); `Recreate` scales the old ones to 0 first; a paused Deployment only
//! scales. Revisions and `kubernetes.io/change-cause` are kept on the ReplicaSets, and old
//! ones beyond `revisionHistoryLimit` are deleted once empty.
//!
//! Content is a function of the snapshot and `now` (uids derived from the Deployment's uid and
//! the name), so two leaders write the same thing; each round steps the rollout until no step
//! is left, so a round on its own result plans nothing.

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Map, Value};

use super::hash::{derived_uid, template_hash, without_nulls};
use super::object::{self, controller};
use super::replicaset::{replacement_names, slot_names};
use super::rollout::Rollout;
use super::snapshot::{LeaderCtx, PlannedEvent, PodKey, Write};
use super::{replicas_of, Working, MAX_REPLICAS};
use crate::model::workload::{
    EventReason, EventType, InvolvedObject, REPLICASETS, TEMPLATE_HASH_LABEL,
};

pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
pub const CHANGE_CAUSE_ANNOTATION: &str = "kubernetes.io/change-cause";

/// Deployment annotations never copied to its ReplicaSets (Kubernetes' `annotationsToSkip`).
const SKIPPED_ANNOTATIONS: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION_ANNOTATION,
    "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
    "deprecated.deployment.rollback.to",
];

/// Most steps of one rollout in one round (each step changes some ReplicaSet's size, so a
/// rollout settles in far fewer).
const MAX_STEPS: usize = 1_000;

/// The ReplicaSet a Deployment's current template wants: `(name, spec without replicas,
/// labels)`.
fn desired(deploy: &Value) -> Option<(String, Value, Value)> {
    deploy["spec"]["template"].as_object()?;
    // Nulls dropped: a template that differs only by them (`kubectl rollout undo` sends
    // `creationTimestamp: null`) is the same template, with the same ReplicaSet.
    let mut template = without_nulls(&deploy["spec"]["template"]);
    let hash = template_hash(&template);
    let name = format!("{}-{}", object::name(deploy), hash);
    if !template["metadata"].is_object() {
        template["metadata"] = json!({});
    }
    if !template["metadata"]["labels"].is_object() {
        template["metadata"]["labels"] = json!({});
    }
    template["metadata"]["labels"][TEMPLATE_HASH_LABEL] = json!(hash);
    let labels = template["metadata"]["labels"].clone();
    let mut selector = deploy["spec"]["selector"].clone();
    if !selector.is_object() {
        selector = json!({});
    }
    if !selector["matchLabels"].is_object() {
        selector["matchLabels"] = json!({});
    }
    selector["matchLabels"][TEMPLATE_HASH_LABEL] = json!(hash);
    let mut spec = json!({
        "selector": selector,
        "template": template,
    });
    if let Some(m) = deploy["spec"].get("minReadySeconds") {
        spec["minReadySeconds"] = m.clone();
    }
    Some((name, spec, labels))
}

/// The annotations the current ReplicaSet carries: the Deployment's (minus the skipped ones)
/// and its revision.
fn copied_annotations(deploy: &Value, revision: u64) -> Value {
    let mut out = Map::new();
    for (k, v) in deploy["metadata"]["annotations"]
        .as_object()
        .into_iter()
        .flatten()
    {
        if v.is_string() && !SKIPPED_ANNOTATIONS.contains(&k.as_str()) {
            out.insert(k.clone(), v.clone());
        }
    }
    out.insert(REVISION_ANNOTATION.into(), json!(revision.to_string()));
    Value::Object(out)
}

pub fn revision_of(rs: &Value) -> u64 {
    rs["metadata"]["annotations"][REVISION_ANNOTATION]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn involved(deploy: &Value) -> InvolvedObject {
    InvolvedObject {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        namespace: object::namespace(deploy).to_string(),
        name: object::name(deploy).to_string(),
        uid: object::uid(deploy).to_string(),
    }
}

fn scaling_event(deploy: &Value, rs: &str, from: i64, to: i64) -> PlannedEvent {
    let verb = if to >= from { "up" } else { "down" };
    PlannedEvent {
        involved: involved(deploy),
        event_type: EventType::Normal,
        reason: EventReason::ScalingReplicaSet,
        message: format!("Scaled {verb} replica set {rs} from {from} to {to}"),
        component: "deployment-controller",
    }
}

/// One ReplicaSet of a Deployment as the rollout sees it.
#[derive(Debug)]
struct Member {
    key: PodKey,
    /// Size being decided.
    replicas: i64,
    /// Size stored.
    was: i64,
    /// Per slot below `was`: whether the slot's pod is available.
    available: Vec<bool>,
    /// `(creationTimestamp, name)`: Kubernetes' age order.
    age: (Option<DateTime<Utc>>, String),
    revision: u64,
    /// Any pod of it exists.
    has_pods: bool,
}

impl Member {
    fn available(&self) -> i64 {
        self.available
            .iter()
            .take(self.replicas.max(0) as usize)
            .filter(|a| **a)
            .count() as i64
    }

    fn top_slot_available(&self) -> bool {
        self.replicas > 0
            && self
                .available
                .get(self.replicas as usize - 1)
                .copied()
                .unwrap_or(false)
    }
}

/// What availability is judged by: Ready pods, `minReadySeconds`, `now`; collects the
/// earliest time a Ready pod turns available.
struct Availability<'s> {
    ready: &'s BTreeMap<PodKey, DateTime<Utc>>,
    now: DateTime<Utc>,
    min_ready: i64,
    wake: Option<DateTime<Utc>>,
}

impl Availability<'_> {
    fn of(&mut self, key: &PodKey) -> bool {
        let Some(since) = self.ready.get(key) else {
            return false;
        };
        if self.min_ready <= 0 {
            return true;
        }
        // Bounded (an API object may carry anything): a wait past chrono's range never ends.
        let Some(at) =
            Duration::try_seconds(self.min_ready).and_then(|d| since.checked_add_signed(d))
        else {
            return false;
        };
        if at <= self.now {
            return true;
        }
        self.wake = Some(self.wake.map_or(at, |w| w.min(at)));
        false
    }
}

fn member(rs: &Value, key: &PodKey, w: &Working<'_>, avail: &mut Availability<'_>) -> Member {
    let was = replicas_of(&rs["spec"]).unwrap_or(0).min(MAX_REPLICAS);
    let uid = object::uid(rs);
    // A slot's pod is under the slot's own name or, while a terminating pod holds that, a
    // replacement one (`replicaset::name_for_slot`); terminating pods are not available.
    let mut slot_available = |slot: usize, name: String| {
        let ours = |name: &String| {
            let pod_key = (key.0.clone(), name.clone());
            let pod = w.pods.get(&pod_key)?;
            (controller(pod) == Some(("ReplicaSet", uid)) && !object::is_terminating(pod))
                .then_some(pod_key)
        };
        if let Some(pod_key) = ours(&name) {
            return avail.of(&pod_key);
        }
        let own = w.pods.get(&(key.0.clone(), name));
        own.is_some_and(|p| object::is_terminating(p))
            && replacement_names(&key.1, uid, slot)
                .filter_map(|n| ours(&n))
                .any(|pod_key| avail.of(&pod_key))
    };
    let available = slot_names(&key.1, uid, was as usize)
        .into_iter()
        .enumerate()
        .map(|(slot, name)| slot_available(slot, name))
        .collect();
    let has_pods = w
        .pods
        .values()
        .any(|p| controller(p) == Some(("ReplicaSet", uid)));
    let age = (
        rs["metadata"]["creationTimestamp"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc)),
        key.1.clone(),
    );
    Member {
        key: key.clone(),
        replicas: was,
        was,
        available,
        age,
        revision: revision_of(rs),
        has_pods,
    }
}

/// Runs the Deployment controller over `deployments`, updating `w.replicasets` and the plan.
/// Returns the earliest time a decision changes with no other input (`Plan::wake`).
pub(crate) fn reconcile<'a>(
    deployments: &'a [Value],
    w: &mut Working<'a>,
    ready: &BTreeMap<PodKey, DateTime<Utc>>,
    ctx: &LeaderCtx,
    writes: &mut Vec<Write>,
    events: &mut Vec<PlannedEvent>,
) -> Option<DateTime<Utc>> {
    let owned = owned_by_deployment(w);
    let mut wake: Option<DateTime<Utc>> = None;
    for deploy in deployments.iter().filter(|d| object::is_valid(d)) {
        let siblings = owned.get(object::uid(deploy)).cloned().unwrap_or_default();
        let mut avail = Availability {
            ready,
            now: ctx.now,
            min_ready: 0,
            wake: None,
        };
        rollout(deploy, &siblings, w, &mut avail, ctx, writes, events);
        if let Some(t) = avail.wake {
            wake = Some(wake.map_or(t, |w| w.min(t)));
        }
    }
    wake
}

/// ReplicaSet keys by controlling Deployment uid.
fn owned_by_deployment(w: &Working<'_>) -> BTreeMap<String, Vec<PodKey>> {
    let mut owned: BTreeMap<String, Vec<PodKey>> = BTreeMap::new();
    for (key, rs) in &w.replicasets {
        if let Some(("Deployment", owner)) = controller(rs) {
            if object::is_valid(rs) {
                owned
                    .entry(owner.to_string())
                    .or_default()
                    .push(key.clone());
            }
        }
    }
    owned
}

#[allow(clippy::too_many_arguments)]
fn rollout<'a>(
    deploy: &Value,
    siblings: &[PodKey],
    w: &mut Working<'a>,
    avail: &mut Availability<'_>,
    ctx: &LeaderCtx,
    writes: &mut Vec<Write>,
    events: &mut Vec<PlannedEvent>,
) {
    let Some(want) = replicas_of(&deploy["spec"]).map(|r| r.min(MAX_REPLICAS)) else {
        return;
    };
    let Some((name, spec, labels)) = desired(deploy) else {
        return;
    };
    let params = Rollout::of(&deploy["spec"], want);
    avail.min_ready = params.min_ready_seconds;
    let ns = object::namespace(deploy).to_string();
    let duid = object::uid(deploy);
    let new_key = (ns.clone(), name.clone());
    match w.replicasets.get(&new_key) {
        Some(rs) if controller(rs) != Some(("Deployment", duid)) => return, // not ours: left alone
        _ => {}
    }
    let mut members: Vec<Member> = siblings
        .iter()
        .filter_map(|k| Some(member(w.replicasets.get(k)?, k, w, avail)))
        .collect();
    // Oldest first, the new one (if any) where it falls; `new` indexes it.
    members.sort_by(|a, b| a.age.cmp(&b.age));
    let mut new = members.iter().position(|m| m.key == new_key);
    let max_old_revision = members
        .iter()
        .filter(|m| m.key != new_key)
        .map(|m| m.revision)
        .max()
        .unwrap_or(0);
    let olds_gone = members
        .iter()
        .filter(|m| m.key != new_key)
        .all(|m| m.was == 0 && !m.has_pods);
    let create = new.is_none() && !params.paused && (!params.recreate || olds_gone);
    if create {
        members.push(Member {
            key: new_key.clone(),
            replicas: 0,
            was: 0,
            available: Vec::new(),
            age: (Some(ctx.now), name.clone()),
            revision: max_old_revision + 1,
            has_pods: false,
        });
        new = Some(members.len() - 1);
    }
    if params.paused {
        scale_paused(&mut members, new, want, &params);
    } else if params.recreate {
        recreate(&mut members, new, want);
    } else if let Some(n) = new {
        for _ in 0..MAX_STEPS {
            let up = reconcile_new(&mut members, n, want, &params);
            let down = reconcile_old(&mut members, n, want, &params);
            if !up && !down {
                break;
            }
        }
    }
    let new_revision = new.map(|n| {
        let r = members[n].revision;
        if r > max_old_revision {
            r
        } else {
            max_old_revision + 1
        }
    });
    for (i, m) in members.iter().enumerate() {
        if Some(i) == new {
            let revision = new_revision.unwrap_or(1);
            let annotations = copied_annotations(deploy, revision);
            write_new(
                deploy,
                m,
                &spec,
                &labels,
                annotations,
                w,
                ctx,
                writes,
                events,
            );
        } else if m.replicas != m.was {
            let Some(rs) = w.replicasets.get(&m.key) else {
                continue;
            };
            let mut rs = rs.as_ref().clone();
            rs["spec"]["replicas"] = json!(m.replicas);
            bump(&mut rs, ctx);
            events.push(scaling_event(deploy, &m.key.1, m.was, m.replicas));
            put(w, writes, m.key.clone(), rs);
        }
    }
}

/// Creates or updates the ReplicaSet of the current template.
#[allow(clippy::too_many_arguments)]
fn write_new(
    deploy: &Value,
    m: &Member,
    spec: &Value,
    labels: &Value,
    annotations: Value,
    w: &mut Working<'_>,
    ctx: &LeaderCtx,
    writes: &mut Vec<Write>,
    events: &mut Vec<PlannedEvent>,
) {
    let mut spec = spec.clone();
    spec["replicas"] = json!(m.replicas);
    match w.replicasets.get(&m.key) {
        Some(existing) => {
            let same_spec = existing["spec"]["replicas"] == spec["replicas"]
                && existing["spec"]["selector"] == spec["selector"]
                && existing["spec"]["template"] == spec["template"]
                && existing["spec"].get("minReadySeconds") == spec.get("minReadySeconds");
            let same_meta = existing["metadata"]["labels"] == *labels
                && existing["metadata"]["annotations"] == annotations;
            if same_spec && same_meta {
                return;
            }
            let mut rs = existing.as_ref().clone();
            rs["metadata"]["labels"] = labels.clone();
            rs["metadata"]["annotations"] = annotations;
            if same_spec {
                rs["metadata"]["resourceVersion"] = json!(object::resource_version(ctx.now));
            } else {
                rs["spec"] = spec;
                bump(&mut rs, ctx);
            }
            if m.replicas != m.was {
                events.push(scaling_event(deploy, &m.key.1, m.was, m.replicas));
            }
            put(w, writes, m.key.clone(), rs);
        }
        None => {
            let rs = json!({
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "metadata": {
                    "name": m.key.1,
                    "namespace": m.key.0,
                    "uid": derived_uid("ReplicaSet", object::uid(deploy), &m.key.1),
                    "labels": labels,
                    "annotations": annotations,
                    "ownerReferences": object::owner_reference(deploy, "Deployment"),
                    "creationTimestamp": object::timestamp(ctx.now),
                    "resourceVersion": object::resource_version(ctx.now),
                    "generation": 1,
                },
                "spec": spec,
            });
            events.push(scaling_event(deploy, &m.key.1, 0, m.replicas));
            put(w, writes, m.key.clone(), rs);
        }
    }
}

/// `reconcileNewReplicaSet`: the new ReplicaSet grows while the total stays within
/// `replicas + maxSurge` (or shrinks to `replicas` if above it). Returns whether it changed.
fn reconcile_new(members: &mut [Member], new: usize, want: i64, p: &Rollout) -> bool {
    let current = members[new].replicas;
    if current == want {
        return false;
    }
    if current > want {
        members[new].replicas = want;
        return true;
    }
    let total: i64 = members.iter().map(|m| m.replicas).sum();
    let max_total = want + p.max_surge;
    if total >= max_total {
        return false;
    }
    let up = (max_total - total).min(want - current);
    members[new].replicas += up;
    up > 0
}

/// `reconcileOldReplicaSets` with `cleanupUnhealthyReplicas` and
/// `scaleDownOldReplicaSetsForRollingUpdate`, oldest ReplicaSet first. A ReplicaSet shrinks
/// from its highest slot (that is the pod the ReplicaSet controller deletes), so the unhealthy
/// clean-up takes top slots whose pod is unavailable, and the availability budget
/// (`available - minAvailable`) bounds how many pods the second phase removes.
fn reconcile_old(members: &mut [Member], new: usize, want: i64, p: &Rollout) -> bool {
    let old_total: i64 = (0..members.len())
        .filter(|i| *i != new)
        .map(|i| members[i].replicas)
        .sum();
    if old_total == 0 {
        return false;
    }
    let all_total: i64 = members.iter().map(|m| m.replicas).sum();
    let min_available = p.min_available(want);
    let new_unavailable = members[new].replicas - members[new].available();
    let max_scaled_down = all_total - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return false;
    }
    let mut cleaned = 0;
    for i in (0..members.len()).filter(|i| *i != new) {
        let m = &mut members[i];
        while cleaned < max_scaled_down && m.replicas > 0 && !m.top_slot_available() {
            m.replicas -= 1;
            cleaned += 1;
        }
    }
    let available: i64 = members.iter().map(Member::available).sum();
    let budget = available - min_available;
    let mut removed = 0;
    for i in (0..members.len()).filter(|i| *i != new) {
        let m = &mut members[i];
        while removed < budget && m.replicas > 0 {
            m.replicas -= 1;
            removed += 1;
        }
    }
    cleaned + removed > 0
}

/// `rolloutRecreate`: old ReplicaSets to 0; once their pods are gone the new one (created by
/// the caller only then) goes to `replicas`.
fn recreate(members: &mut [Member], new: Option<usize>, want: i64) {
    let mut scaled_down = false;
    for (i, m) in members.iter_mut().enumerate() {
        if Some(i) != new && m.replicas > 0 {
            m.replicas = 0;
            scaled_down = true;
        }
    }
    let olds_running = members
        .iter()
        .enumerate()
        .any(|(i, m)| Some(i) != new && (m.was > 0 || m.has_pods));
    if scaled_down || olds_running {
        return;
    }
    if let Some(n) = new {
        members[n].replicas = want;
    }
}

/// A paused Deployment only scales (`sync` → `scale`): one active ReplicaSet (or, with none
/// active, the newest) takes `replicas`; a saturated new one sends the old ones to 0;
/// otherwise the active ones are sized in proportion to `replicas + maxSurge`.
fn scale_paused(members: &mut [Member], new: Option<usize>, want: i64, p: &Rollout) {
    if members.is_empty() {
        return;
    }
    let active: Vec<usize> = (0..members.len())
        .filter(|i| members[*i].replicas > 0)
        .collect();
    let target = match active.len() {
        0 => Some(new.unwrap_or(members.len() - 1)),
        1 => Some(active[0]),
        _ => None,
    };
    if let Some(t) = target {
        members[t].replicas = want;
        return;
    }
    if let Some(n) = new.filter(|n| members[*n].replicas == want && members[*n].available() == want)
    {
        for (i, m) in members.iter_mut().enumerate() {
            if i != n {
                m.replicas = 0;
            }
        }
        return;
    }
    if p.recreate {
        return;
    }
    let total: i64 = active.iter().map(|i| members[*i].replicas).sum();
    let allowed = if want > 0 { want + p.max_surge } else { 0 };
    let to_add = allowed - total;
    if to_add == 0 || total == 0 {
        return;
    }
    // Largest first; ties: newer first when growing, older first when shrinking.
    let mut order = active.clone();
    order.sort_by(|a, b| {
        let (ma, mb) = (&members[*a], &members[*b]);
        mb.replicas.cmp(&ma.replicas).then_with(|| {
            if to_add > 0 {
                mb.age.cmp(&ma.age)
            } else {
                ma.age.cmp(&mb.age)
            }
        })
    });
    let mut added = 0;
    for &i in &order {
        let r = members[i].replicas;
        // round(r * allowed / total) - r, within what is left to add.
        let share = (2 * r * allowed + total) / (2 * total) - r;
        let left = to_add - added;
        let share = if to_add > 0 {
            share.min(left)
        } else {
            share.max(left)
        };
        members[i].replicas = r + share;
        added += share;
    }
    let first = order[0];
    members[first].replicas = (members[first].replicas + to_add - added).max(0);
}

/// Deletes old ReplicaSets beyond `revisionHistoryLimit` (lowest revisions first) once they
/// have no replicas and no pods left. Runs after the ReplicaSet controller, so a ReplicaSet
/// emptied this round goes in the same round.
pub(crate) fn prune_history(deployments: &[Value], w: &mut Working<'_>, writes: &mut Vec<Write>) {
    let owned = owned_by_deployment(w);
    for deploy in deployments.iter().filter(|d| object::is_valid(d)) {
        let Some((current, _, _)) = desired(deploy) else {
            continue;
        };
        let limit = Rollout::of(&deploy["spec"], 0).revision_history_limit;
        let mut olds: Vec<(u64, PodKey)> = owned
            .get(object::uid(deploy))
            .into_iter()
            .flatten()
            .filter(|k| k.1 != current)
            .filter_map(|k| Some((revision_of(w.replicasets.get(k)?), k.clone())))
            .collect();
        if olds.len() <= limit {
            continue;
        }
        olds.sort();
        let excess = olds.len() - limit;
        for (_, key) in olds.into_iter().take(excess) {
            let Some(rs) = w.replicasets.get(&key) else {
                continue;
            };
            let uid = object::uid(rs).to_string();
            let empty = replicas_of(&rs["spec"]) == Some(0)
                && !w
                    .pods
                    .values()
                    .any(|p| controller(p) == Some(("ReplicaSet", uid.as_str())));
            if empty {
                w.replicasets.remove(&key);
                writes.push(Write::DeleteObject {
                    resource: REPLICASETS,
                    namespace: key.0,
                    name: key.1,
                });
            }
        }
    }
}

/// New generation and resourceVersion for a changed spec.
pub(crate) fn bump(v: &mut Value, ctx: &LeaderCtx) {
    let generation = v["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
    v["metadata"]["generation"] = json!(generation);
    v["metadata"]["resourceVersion"] = json!(object::resource_version(ctx.now));
}

fn put(w: &mut Working<'_>, writes: &mut Vec<Write>, key: PodKey, rs: Value) {
    writes.push(Write::PutObject {
        resource: REPLICASETS,
        namespace: key.0.clone(),
        name: key.1.clone(),
        object: rs.clone(),
    });
    w.replicasets.insert(key, Cow::Owned(rs));
}
