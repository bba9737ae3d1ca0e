//! ReplicaSet → Pods, by slot. A ReplicaSet of `replicas = N` owns slots `0..N`; slot `i` is
//! the pod `<rs>-<suffix>` whose suffix is derived from (ReplicaSet uid, i), annotated
//! `shoal.io/slot: "i"`. Missing slots are created, pods of other slots (or stray copies) are
//! deleted. Names and uids are functions of the slot, so two leaders never make two pods for
//! one slot: they write the same key.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::hash::{derived_uid, hash64, safe_suffix};
use super::object::{self, controller};
use super::snapshot::{LeaderCtx, PlannedEvent, Write};
use super::{replicas_of, Working, MAX_REPLICAS};
use crate::model::workload::{EventReason, EventType, InvolvedObject, PODS, SLOT_ANNOTATION};

/// Longest generated-name prefix (Kubernetes: 63 minus the 5 random characters).
const MAX_PREFIX: usize = 58;

/// The pod names of slots `0..n` of the ReplicaSet `rs_name` (uid `rs_uid`). A slot's name
/// depends only on the lower slots, so it stays the same when the ReplicaSet is scaled.
pub fn slot_names(rs_name: &str, rs_uid: &str, n: usize) -> Vec<String> {
    let prefix = name_prefix(rs_name);
    let mut taken = BTreeSet::new();
    let mut names = Vec::with_capacity(n);
    for slot in 0..n {
        let slot_s = slot.to_string();
        let mut attempt = 0u32;
        loop {
            let attempt_s = attempt.to_string();
            let h = hash64(&["shoal-slot", rs_uid, &slot_s, &attempt_s]);
            let name = format!("{prefix}{}", safe_suffix(h, 5));
            if taken.insert(name.clone()) {
                names.push(name);
                break;
            }
            attempt += 1;
        }
    }
    names
}

/// `<rs>-`, cut to [`MAX_PREFIX`].
fn name_prefix(rs_name: &str) -> String {
    let mut prefix = format!("{rs_name}-");
    if prefix.len() > MAX_PREFIX {
        let mut cut = MAX_PREFIX;
        while !prefix.is_char_boundary(cut) {
            cut -= 1;
        }
        prefix.truncate(cut);
    }
    prefix
}

/// Replacement names a slot may take while a terminating pod still holds its name (and
/// those of earlier replacements); a slot with this many pods terminating at once waits.
pub const MAX_REPLACEMENTS: u32 = 8;

/// The replacement names of `slot` (after its own name from [`slot_names`]), in the order
/// they are taken: functions of (ReplicaSet uid, slot, n), so two leaders pick the same.
pub fn replacement_names(rs_name: &str, rs_uid: &str, slot: usize) -> impl Iterator<Item = String> {
    let prefix = name_prefix(rs_name);
    let rs_uid = rs_uid.to_string();
    let slot = slot.to_string();
    (1..=MAX_REPLACEMENTS).map(move |n| {
        let h = hash64(&["shoal-slot-replacement", &rs_uid, &slot, &n.to_string()]);
        format!("{prefix}{}", safe_suffix(h, 5))
    })
}

/// Whether `name` is a name of `slot` (`own`, from [`slot_names`], or a replacement one).
pub fn is_slot_name(rs_name: &str, rs_uid: &str, slot: usize, own: &str, name: &str) -> bool {
    name == own || replacement_names(rs_name, rs_uid, slot).any(|r| r == name)
}

/// The name a missing slot's pod is created under: its own (`own`) if free; while a
/// terminating pod of the ReplicaSet holds it, the first free replacement name after
/// terminating holders; `None` while a pod that is not terminating holds the name it would
/// take (a stranger's pod, or this ReplicaSet's pod of another slot about to go).
fn name_for_slot(w: &Working<'_>, rs: &Value, slot: usize, own: &str) -> Option<String> {
    let ns = object::namespace(rs);
    let held = |name: &str| w.pods.get(&(ns.to_string(), name.to_string()));
    let terminating_here = |p: &Value| {
        object::is_terminating(p) && controller(p) == Some(("ReplicaSet", object::uid(rs)))
    };
    match held(own) {
        None => return Some(own.to_string()),
        Some(p) if terminating_here(p) => {}
        Some(_) => return None,
    }
    for name in replacement_names(object::name(rs), object::uid(rs), slot) {
        match held(&name) {
            None => return Some(name),
            Some(p) if terminating_here(p) => {}
            Some(_) => return None,
        }
    }
    None
}

pub fn slot_of(pod: &Value) -> Option<usize> {
    pod["metadata"]["annotations"][SLOT_ANNOTATION]
        .as_str()?
        .parse()
        .ok()
}

fn involved(rs: &Value) -> InvolvedObject {
    InvolvedObject {
        api_version: "apps/v1".into(),
        kind: "ReplicaSet".into(),
        namespace: object::namespace(rs).to_string(),
        name: object::name(rs).to_string(),
        uid: object::uid(rs).to_string(),
    }
}

fn new_pod(rs: &Value, name: &str, slot: usize, ctx: &LeaderCtx) -> Value {
    let template = &rs["spec"]["template"];
    let rs_name = object::name(rs);
    let mut annotations = template["metadata"]["annotations"].clone();
    if !annotations.is_object() {
        annotations = json!({});
    }
    annotations[SLOT_ANNOTATION] = json!(slot.to_string());
    let labels = match &template["metadata"]["labels"] {
        l @ Value::Object(_) => l.clone(),
        _ => json!({}),
    };
    let spec = match &template["spec"] {
        s @ Value::Object(_) => s.clone(),
        _ => json!({}),
    };
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "generateName": format!("{rs_name}-"),
            "namespace": object::namespace(rs),
            "uid": derived_uid("Pod", object::uid(rs), name),
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": object::owner_reference(rs, "ReplicaSet"),
            "creationTimestamp": object::timestamp(ctx.now),
            "resourceVersion": object::resource_version(ctx.now),
            "generation": 1,
        },
        "spec": spec,
    })
}

/// Runs the ReplicaSet controller over `w.replicasets`, updating `w.pods` and the plan.
pub(crate) fn reconcile(
    w: &mut Working<'_>,
    ctx: &LeaderCtx,
    writes: &mut Vec<Write>,
    events: &mut Vec<PlannedEvent>,
) {
    // Pods by controlling ReplicaSet uid.
    let mut owned: BTreeMap<&str, Vec<(String, String)>> = BTreeMap::new();
    for (key, pod) in &w.pods {
        if let Some(("ReplicaSet", owner)) = controller(pod) {
            owned.entry(owner).or_default().push(key.clone());
        }
    }
    let mut deletes: Vec<((String, String), &Value)> = Vec::new();
    let mut creates: Vec<((String, String), Value)> = Vec::new();
    let mut refused: Vec<PlannedEvent> = Vec::new();
    for rs in w.replicasets.values().filter(|v| object::is_valid(v)) {
        let Some(n) = replicas_of(&rs["spec"]) else {
            continue;
        };
        if !rs["spec"]["template"].is_object() {
            continue;
        }
        let n = n.min(MAX_REPLICAS) as usize;
        let ns = object::namespace(rs);
        let names = slot_names(object::name(rs), object::uid(rs), n);
        let mut filled = vec![false; n];
        for key in owned.get(object::uid(rs)).map(Vec::as_slice).unwrap_or(&[]) {
            let Some(pod) = w.pods.get(key) else {
                continue;
            };
            if object::is_terminating(pod) {
                continue; // being deleted: not one of the replicas, and already going
            }
            let rs_name = object::name(rs);
            let keep = match slot_of(pod) {
                Some(slot)
                    if slot < n
                        && !filled[slot]
                        && is_slot_name(rs_name, object::uid(rs), slot, &names[slot], &key.1) =>
                {
                    filled[slot] = true;
                    true
                }
                _ => false,
            };
            if !keep {
                deletes.push((key.clone(), rs));
            }
        }
        for (slot, own) in names.iter().enumerate() {
            if filled[slot] {
                continue;
            }
            // The slot's name, a replacement one while terminating pods hold it, or none
            // while a pod this ReplicaSet does not own (or about to go) holds it.
            let Some(name) = name_for_slot(w, rs, slot, own) else {
                continue;
            };
            let key = (ns.to_string(), name.clone());
            let pod = new_pod(rs, &name, slot, ctx);
            if let Some(message) = w.refusal(&pod) {
                refused.push(Working::failed_create(
                    involved(rs),
                    &message,
                    "replicaset-controller",
                ));
                continue;
            }
            creates.push((key, pod));
        }
    }
    let mut new_events = refused;
    for (key, rs) in &deletes {
        new_events.push(PlannedEvent {
            involved: involved(rs),
            event_type: EventType::Normal,
            reason: EventReason::SuccessfulDelete,
            message: format!("Deleted pod: {}", key.1),
            component: "replicaset-controller",
        });
    }
    for (key, pod) in &creates {
        let owner = &pod["metadata"]["ownerReferences"][0];
        new_events.push(PlannedEvent {
            involved: InvolvedObject {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                namespace: key.0.clone(),
                name: owner["name"].as_str().unwrap_or("").to_string(),
                uid: owner["uid"].as_str().unwrap_or("").to_string(),
            },
            event_type: EventType::Normal,
            reason: EventReason::SuccessfulCreate,
            message: format!("Created pod: {}", key.1),
            component: "replicaset-controller",
        });
    }
    let deletes: Vec<(String, String)> = deletes.into_iter().map(|(k, _)| k).collect();
    for key in deletes {
        writes.push(Write::DeleteObject {
            resource: PODS,
            namespace: key.0.clone(),
            name: key.1.clone(),
        });
        w.pods.remove(&key);
    }
    for (key, pod) in creates {
        w.put_pod(writes, key, pod);
    }
    events.extend(new_events);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_are_stable_under_scaling_and_unique() {
        let five = slot_names("web-abc", "uid-1", 5);
        let ten = slot_names("web-abc", "uid-1", 10);
        assert_eq!(&ten[..5], &five[..]);
        let set: BTreeSet<_> = slot_names("web-abc", "uid-1", 3000).into_iter().collect();
        assert_eq!(set.len(), 3000, "3000 slots get 3000 names");
        assert!(five
            .iter()
            .all(|n| n.starts_with("web-abc-") && n.len() == 13));
        assert_ne!(five, slot_names("web-abc", "uid-2", 5));
    }

    #[test]
    fn long_names_are_cut_to_a_63_character_pod_name() {
        let long = "a".repeat(80);
        let names = slot_names(&long, "u", 2);
        assert!(names.iter().all(|n| n.len() == 63), "{names:?}");
    }
}
