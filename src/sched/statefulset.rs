//! The StatefulSet controller (apps/v1), pure: pods with stable identities `<sts>-0 ..
//! <sts>-(N-1)` (labels `statefulset.kubernetes.io/pod-name`, `apps.kubernetes.io/pod-index`,
//! `controller-revision-hash`; `spec.hostname` / `spec.subdomain` for their DNS names),
//! created in order and each Running and Ready before the next (`OrderedReady`) or all at
//! once (`Parallel`), removed from the highest ordinal down, and rolled from the highest
//! ordinal down to `partition` (`RollingUpdate`) or only when deleted by hand (`OnDelete`).
//!
//! **At most one pod per identity.** A pod is only ever replaced after its old copy is
//! gone: the controller deletes gracefully (the pod stays, terminating, until its node's
//! kubelet has stopped it) and waits for the name to be free. A pod placed on a node that is
//! unreachable, suspect or dead keeps its identity ([`identity_released`]): the scheduler
//! does not move it and garbage collection does not finish its deletion until the node's
//! record is deleted (`kubectl delete node`) or the node returns, as Kubernetes fences it.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::hash::{derived_uid, template_hash, without_nulls};
use super::object::{self, controller};
use super::revisions;
use super::snapshot::{LeaderCtx, PlannedEvent, PodKey, Write};
use super::{replicas_of, Working, MAX_REPLICAS};
use crate::model::workload::{EventReason, EventType, InvolvedObject};

/// Label on a StatefulSet's pods: the pod's own name (Kubernetes' name).
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// Label on a StatefulSet's pods: the pod's ordinal (Kubernetes' name).
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
/// Label on a StatefulSet's pods: the revision they run, `<sts>-<template hash>`.
pub const REVISION_LABEL: &str = "controller-revision-hash";
/// The owner kind whose pods carry an identity.
pub const KIND: &str = "StatefulSet";

/// Whether `pod` is a StatefulSet's, so it holds an identity that must never run twice.
pub fn holds_identity(pod: &Value) -> bool {
    matches!(controller(pod), Some((KIND, _)))
}

/// Whether the identity of a pod placed on `node` (`None`: never placed) may be given to
/// another copy without the old one possibly running: the pod was never placed, or its node's
/// record is gone (deleted by an operator who asserts the node is down, as in Kubernetes). A
/// node that is merely unreachable, suspect or dead in a view may still run the pod on the
/// other side of a partition, so its pod keeps the identity until the node returns (and
/// stops it on evidence in the merged document) or is deleted.
pub fn identity_released(node: Option<&str>, node_exists: impl Fn(&str) -> bool) -> bool {
    node.is_none_or(|n| !node_exists(n))
}

/// `<sts>-<ordinal>`.
pub fn pod_name(sts_name: &str, ordinal: usize) -> String {
    format!("{sts_name}-{ordinal}")
}

/// The ordinal of `pod_name` among the pods of the StatefulSet `sts_name`: `<sts>-<n>` with
/// `n` a decimal without leading zeros.
pub fn ordinal_of(sts_name: &str, pod_name: &str) -> Option<usize> {
    let rest = pod_name.strip_prefix(sts_name)?.strip_prefix('-')?;
    let canonical = !rest.is_empty()
        && rest.bytes().all(|b| b.is_ascii_digit())
        && (rest == "0" || !rest.starts_with('0'));
    canonical.then(|| rest.parse().ok()).flatten()
}

/// The revision of a StatefulSet's current template: `<sts>-<hash>` (the
/// `controller-revision-hash` its updated pods carry and `status.updateRevision`).
pub fn update_revision(sts: &Value) -> String {
    format!(
        "{}-{}",
        object::name(sts),
        template_hash(&without_nulls(&sts["spec"]["template"]))
    )
}

/// The revision label of a pod.
pub fn revision_of(pod: &Value) -> &str {
    pod["metadata"]["labels"][REVISION_LABEL]
        .as_str()
        .unwrap_or_default()
}

/// `spec.updateStrategy` as the controller reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Replace pods with ordinal ≥ `partition` from the highest down, one at a time.
    RollingUpdate { partition: usize },
    /// Pods are updated only when deleted by hand.
    OnDelete,
}

impl Strategy {
    pub fn of(sts: &Value) -> Strategy {
        let s = &sts["spec"]["updateStrategy"];
        if s["type"] == "OnDelete" {
            return Strategy::OnDelete;
        }
        let partition = s["rollingUpdate"]["partition"]
            .as_i64()
            .unwrap_or(0)
            .clamp(0, MAX_REPLICAS) as usize;
        Strategy::RollingUpdate { partition }
    }
}

/// One existing pod of a StatefulSet as the decision sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub revision: String,
    /// Running and Ready (on a node that is not dead in the leader's view).
    pub ready: bool,
    /// Being deleted: it still holds its name.
    pub terminating: bool,
    /// Ended (`Failed` or `Succeeded`): deleted and re-created.
    pub ended: bool,
}

/// What the controller does to one identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create the pod of this ordinal at `revision`.
    Create { ordinal: usize, revision: String },
    /// Delete (gracefully) the pod of this ordinal.
    Delete { ordinal: usize },
}

/// The inputs of one StatefulSet's decision.
#[derive(Clone, Debug)]
pub struct Desired<'a> {
    pub replicas: usize,
    /// `podManagementPolicy: Parallel`.
    pub parallel: bool,
    pub strategy: Strategy,
    pub update_revision: &'a str,
    /// The revision pods below the partition are re-created at: the revision of the
    /// lowest-ordinal pod not at `update_revision` (`update_revision` if none).
    pub current_revision: &'a str,
}

/// The revision a re-created pod of `ordinal` gets: the update revision at or above the
/// partition (and always with `OnDelete`, as Kubernetes re-creates deleted pods at the update
/// revision), the current one below it.
fn revision_for<'a>(d: &Desired<'a>, ordinal: usize) -> &'a str {
    match d.strategy {
        Strategy::RollingUpdate { partition } if ordinal < partition => d.current_revision,
        _ => d.update_revision,
    }
}

/// The actions for one StatefulSet with pods `members` (by ordinal), as Kubernetes'
/// `updateStatefulSet` orders them: first the replicas `0..N` (create missing ones, replace
/// ended ones; with `OrderedReady` stop at the first that is not Running and Ready), then the
/// condemned ordinals ≥ N from the highest (with `OrderedReady` one at a time), then the
/// rolling update from the highest ordinal down to the partition, one pod at a time, each
/// Ready before the next. Deterministic; running it again on its own result repeats nothing
/// (a pod deleted stays terminating, holding its name, until its kubelet has stopped it).
pub fn decide(d: &Desired<'_>, members: &BTreeMap<usize, Member>) -> Vec<Action> {
    let ordered = !d.parallel;
    let mut actions = Vec::new();
    let mut healthy = true;
    for ordinal in 0..d.replicas {
        match members.get(&ordinal) {
            None => {
                actions.push(Action::Create {
                    ordinal,
                    revision: revision_for(d, ordinal).to_string(),
                });
                healthy = false;
                if ordered {
                    return actions;
                }
            }
            Some(m) if m.terminating => {
                healthy = false;
                if ordered {
                    return actions;
                }
            }
            Some(m) if m.ended => {
                actions.push(Action::Delete { ordinal });
                healthy = false;
                if ordered {
                    return actions;
                }
            }
            Some(m) if !m.ready => {
                healthy = false;
                if ordered {
                    return actions;
                }
            }
            Some(_) => {}
        }
    }
    for (&ordinal, m) in members.range(d.replicas..).rev() {
        if m.terminating {
            if ordered {
                return actions;
            }
            continue;
        }
        actions.push(Action::Delete { ordinal });
        if ordered {
            return actions;
        }
    }
    let Strategy::RollingUpdate { partition } = d.strategy else {
        return actions;
    };
    if !healthy && ordered {
        return actions;
    }
    for ordinal in (partition..d.replicas).rev() {
        let Some(m) = members.get(&ordinal) else {
            return actions; // being created
        };
        if m.revision != d.update_revision && !m.terminating {
            if !actions.contains(&Action::Delete { ordinal }) {
                actions.push(Action::Delete { ordinal });
            }
            return actions;
        }
        if !m.ready || m.terminating {
            return actions;
        }
    }
    actions
}

/// A StatefulSet's status counts (Kubernetes' `StatefulSetStatus`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub replicas: i64,
    pub ready: i64,
    pub available: i64,
    pub current: i64,
    pub updated: i64,
    pub current_revision: String,
    pub update_revision: String,
}

/// One pod as the status count sees it: (ordinal, revision, ready, available).
pub type CountedPod = (usize, String, bool, bool);

/// The current revision among pods (by ordinal): the update revision once every pod runs it,
/// else the revision of the lowest-ordinal pod that does not.
pub fn current_revision<'a>(
    update_revision: &'a str,
    pods: impl IntoIterator<Item = (usize, &'a str)>,
) -> &'a str {
    pods.into_iter()
        .filter(|(_, r)| *r != update_revision && !r.is_empty())
        .min_by_key(|(o, _)| *o)
        .map(|(_, r)| r)
        .unwrap_or(update_revision)
}

/// Counts over a StatefulSet's pods (not terminating) as Kubernetes reports them.
pub fn counts(sts: &Value, pods: &[CountedPod]) -> Counts {
    let update = update_revision(sts);
    let current = current_revision(&update, pods.iter().map(|p| (p.0, p.1.as_str()))).to_string();
    let mut c = Counts {
        replicas: pods.len() as i64,
        ..Counts::default()
    };
    for (_, rev, ready, available) in pods {
        c.ready += i64::from(*ready);
        c.available += i64::from(*available);
        c.current += i64::from(*rev == current);
        c.updated += i64::from(*rev == update);
    }
    c.current_revision = current;
    c.update_revision = update;
    c
}

fn involved(sts: &Value) -> InvolvedObject {
    InvolvedObject {
        api_version: "apps/v1".into(),
        kind: KIND.into(),
        namespace: object::namespace(sts).to_string(),
        name: object::name(sts).to_string(),
        uid: object::uid(sts).to_string(),
    }
}

fn object_or_empty(v: &Value) -> Value {
    match v {
        o @ Value::Object(_) => o.clone(),
        _ => json!({}),
    }
}

/// The pod of `ordinal` at `revision`, made from `template`: the StatefulSet's own when
/// `revision` is its update revision, else the one its ControllerRevision of that name holds.
fn new_pod(
    sts: &Value,
    ordinal: usize,
    revision: &str,
    template: &Value,
    ctx: &LeaderCtx,
) -> Value {
    let sts_name = object::name(sts);
    let name = pod_name(sts_name, ordinal);
    let (meta, spec) = (&template["metadata"], &template["spec"]);
    let mut labels = object_or_empty(&meta["labels"]);
    labels[POD_NAME_LABEL] = json!(name);
    labels[POD_INDEX_LABEL] = json!(ordinal.to_string());
    labels[REVISION_LABEL] = json!(revision);
    let annotations = object_or_empty(&meta["annotations"]);
    let mut spec = object_or_empty(spec);
    super::volumes::with_claim_volumes(&mut spec, sts, ordinal);
    spec["hostname"] = json!(name);
    match sts["spec"]["serviceName"]
        .as_str()
        .filter(|s| !s.is_empty())
    {
        Some(service) => spec["subdomain"] = json!(service),
        None => {
            if let Some(m) = spec.as_object_mut() {
                m.remove("subdomain");
            }
        }
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": object::namespace(sts),
            // A fresh uid for every incarnation of the identity: a binding or status record
            // of an earlier copy never applies to the new one.
            "uid": derived_uid("Pod", object::uid(sts), &format!("{name}@{}", ctx.now.timestamp_micros())),
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": object::owner_reference(sts, KIND),
            "creationTimestamp": object::timestamp(ctx.now),
            "resourceVersion": object::resource_version(ctx.now),
            "generation": 1,
        },
        "spec": spec,
    })
}

/// `pod` marked terminating by the controller (its grace period, default 30 s): its node's
/// kubelet stops it and then removes it, so the name stays taken until no copy runs.
pub(crate) fn terminating(pod: &Value, now: DateTime<Utc>) -> Value {
    let mut pod = pod.clone();
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_i64()
        .unwrap_or(30)
        .clamp(0, i64::from(i32::MAX));
    let at = now
        .checked_add_signed(chrono::Duration::seconds(grace))
        .unwrap_or(now);
    pod["metadata"]["deletionTimestamp"] = json!(object::timestamp(at));
    pod["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
    pod["metadata"]["resourceVersion"] = json!(object::resource_version(now));
    pod
}

/// Runs the StatefulSet controller over `statefulsets`, updating `w.pods` and the plan.
pub(crate) fn reconcile(
    statefulsets: &[Value],
    revisions: &[Value],
    w: &mut Working<'_>,
    ready: &BTreeMap<PodKey, DateTime<Utc>>,
    ctx: &LeaderCtx,
    writes: &mut Vec<Write>,
    events: &mut Vec<PlannedEvent>,
) {
    let mut owned: BTreeMap<&str, Vec<PodKey>> = BTreeMap::new();
    for (key, pod) in &w.pods {
        if let Some((KIND, owner)) = controller(pod) {
            owned.entry(owner).or_default().push(key.clone());
        }
    }
    let mut marks: Vec<(PodKey, Value, usize)> = Vec::new();
    let mut creates: Vec<(PodKey, Value, usize)> = Vec::new();
    for (i, sts) in statefulsets.iter().enumerate() {
        if !object::is_valid(sts) || !sts["spec"]["template"].is_object() {
            continue;
        }
        let Some(replicas) = replicas_of(&sts["spec"]) else {
            continue;
        };
        let ns = object::namespace(sts).to_string();
        let name = object::name(sts);
        let update = update_revision(sts);
        let mut members: BTreeMap<usize, Member> = BTreeMap::new();
        for key in owned.get(object::uid(sts)).into_iter().flatten() {
            let Some(pod) = w.pods.get(key) else { continue };
            let Some(ordinal) = ordinal_of(name, &key.1) else {
                // Not a name of this StatefulSet's: it holds no identity of it.
                if !object::is_terminating(pod) {
                    marks.push((key.clone(), terminating(pod, ctx.now), i));
                }
                continue;
            };
            members.insert(
                ordinal,
                Member {
                    revision: revision_of(pod).to_string(),
                    ready: ready.contains_key(key),
                    terminating: object::is_terminating(pod),
                    ended: w.finished.contains_key(key),
                },
            );
        }
        let current = current_revision(
            &update,
            members.iter().map(|(o, m)| (*o, m.revision.as_str())),
        )
        .to_string();
        let template = without_nulls(&sts["spec"]["template"]);
        let owner = revisions::Owner {
            object: sts,
            kind: KIND,
            hash: template_hash(&template),
            template,
            live: members.values().map(|m| m.revision.clone()).collect(),
        };
        let (history, _) = revisions::sync(&owner, revisions, ctx.now);
        writes.extend(history);
        let history_of = revisions::owned(revisions, &ns, object::uid(sts));
        let desired = Desired {
            replicas: replicas.min(MAX_REPLICAS) as usize,
            parallel: sts["spec"]["podManagementPolicy"] == "Parallel",
            strategy: Strategy::of(sts),
            update_revision: &update,
            current_revision: &current,
        };
        for action in decide(&desired, &members) {
            match action {
                Action::Create { ordinal, revision } => {
                    let key = (ns.clone(), pod_name(name, ordinal));
                    if w.pods.contains_key(&key) {
                        continue; // a stranger holds the name
                    }
                    // Below the partition: the template of that revision, as its
                    // ControllerRevision holds it (the update revision if it is gone).
                    let old = (revision != update)
                        .then(|| revisions::find(&history_of, &revision))
                        .flatten()
                        .and_then(revisions::template_of);
                    let (revision, template) = match old {
                        Some(t) => (revision, t),
                        None => (update.clone(), owner.template.clone()),
                    };
                    let pod = new_pod(sts, ordinal, &revision, &template, ctx);
                    creates.push((key, pod, i));
                }
                Action::Delete { ordinal } => {
                    let key = (ns.clone(), pod_name(name, ordinal));
                    if let Some(pod) = w.pods.get(&key) {
                        marks.push((key, terminating(pod, ctx.now), i));
                    }
                }
            }
        }
    }
    let mut seen = BTreeSet::new();
    for (key, pod, i) in marks {
        if !seen.insert(key.clone()) {
            continue;
        }
        events.push(PlannedEvent {
            involved: involved(&statefulsets[i]),
            event_type: EventType::Normal,
            reason: EventReason::SuccessfulDelete,
            message: format!(
                "delete Pod {} in StatefulSet {} successful",
                key.1,
                object::name(&statefulsets[i])
            ),
            component: "statefulset-controller",
        });
        w.put_pod(writes, key, pod);
    }
    for (key, pod, i) in creates {
        if w.pods.contains_key(&key) {
            continue;
        }
        if let Some(message) = w.refusal(&pod) {
            events.push(Working::failed_create(
                involved(&statefulsets[i]),
                &message,
                "statefulset-controller",
            ));
            continue;
        }
        if let Some(ordinal) = ordinal_of(object::name(&statefulsets[i]), &key.1) {
            create_claims(&statefulsets[i], ordinal, w, ctx, writes, events);
        }
        events.push(PlannedEvent {
            involved: involved(&statefulsets[i]),
            event_type: EventType::Normal,
            reason: EventReason::SuccessfulCreate,
            message: format!(
                "create Pod {} in StatefulSet {} successful",
                key.1,
                object::name(&statefulsets[i])
            ),
            component: "statefulset-controller",
        });
        w.put_pod(writes, key, pod);
    }
    // A pod still waiting to be placed whose claim is gone (deleted while it waited: a
    // Pending pod does not hold it) gets the claim again, as Kubernetes' controller creates
    // the missing claims of a pending pod.
    let mut missing: Vec<(usize, usize)> = Vec::new();
    for (key, pod) in &w.pods {
        let Some((KIND, owner)) = controller(pod) else {
            continue;
        };
        let user_node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        let binding = w.bindings.get(key).map(|b| b.as_ref());
        if object::is_terminating(pod)
            || crate::model::workload::placement(object::uid(pod), user_node, binding).is_some()
        {
            continue;
        }
        let Some(i) = statefulsets.iter().position(|s| object::uid(s) == owner) else {
            continue;
        };
        if let Some(ordinal) = ordinal_of(object::name(&statefulsets[i]), &key.1) {
            missing.push((i, ordinal));
        }
    }
    for (i, ordinal) in missing {
        create_claims(&statefulsets[i], ordinal, w, ctx, writes, events);
    }
}

/// Creates the claims of `sts`'s pod `ordinal` that do not exist yet (Kubernetes creates them
/// before the pod; an existing claim of that name, kept from an earlier pod, is used as is).
fn create_claims(
    sts: &Value,
    ordinal: usize,
    w: &mut Working<'_>,
    ctx: &LeaderCtx,
    writes: &mut Vec<Write>,
    events: &mut Vec<PlannedEvent>,
) {
    for (name, claim) in super::volumes::statefulset_claims(sts, ordinal, ctx) {
        let key = (object::namespace(sts).to_string(), name);
        if w.storage.claims.contains_key(&key) {
            continue;
        }
        events.push(PlannedEvent {
            involved: involved(sts),
            event_type: EventType::Normal,
            reason: EventReason::SuccessfulCreate,
            message: format!(
                "create Claim {} Pod {} in StatefulSet {} success",
                key.1,
                pod_name(object::name(sts), ordinal),
                object::name(sts)
            ),
            component: "statefulset-controller",
        });
        writes.push(Write::PutObject {
            resource: crate::model::storage::PVCS,
            namespace: key.0.clone(),
            name: key.1.clone(),
            object: claim.clone(),
        });
        w.storage.claims.insert(key, std::borrow::Cow::Owned(claim));
    }
}
