//! Deployment → ReplicaSet: the ReplicaSet `<deploy>-<template hash>` with the Deployment's
//! replicas, older ReplicaSets of the Deployment scaled to 0. Content is a function of the
//! Deployment (uid derived from the Deployment's uid and the name), so two leaders write the
//! same thing.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::hash::{derived_uid, template_hash};
use super::object::{self, controller};
use super::snapshot::{LeaderCtx, PlannedEvent, Write};
use super::{replicas_of, Working, MAX_REPLICAS};
use crate::model::workload::{InvolvedObject, REPLICASETS, TEMPLATE_HASH_LABEL};

pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";

/// The ReplicaSet a Deployment wants: `(name, spec, labels)`.
fn desired(deploy: &Value) -> Option<(String, Value, Value)> {
    let replicas = replicas_of(&deploy["spec"])?;
    let template = deploy["spec"]["template"].as_object()?;
    let hash = template_hash(&Value::Object(template.clone()));
    let name = format!("{}-{}", object::name(deploy), hash);
    let mut template = Value::Object(template.clone());
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
        "replicas": replicas.min(MAX_REPLICAS),
        "selector": selector,
        "template": template,
    });
    if let Some(m) = deploy["spec"].get("minReadySeconds") {
        spec["minReadySeconds"] = m.clone();
    }
    Some((name, spec, labels))
}

fn involved(rs_or_deploy: &Value, kind: &str) -> InvolvedObject {
    InvolvedObject {
        api_version: "apps/v1".into(),
        kind: kind.into(),
        namespace: object::namespace(rs_or_deploy).to_string(),
        name: object::name(rs_or_deploy).to_string(),
        uid: object::uid(rs_or_deploy).to_string(),
    }
}

fn scaling_event(deploy: &Value, rs: &str, from: i64, to: i64) -> PlannedEvent {
    let verb = if to >= from { "up" } else { "down" };
    PlannedEvent {
        involved: involved(deploy, "Deployment"),
        event_type: "Normal",
        reason: "ScalingReplicaSet",
        message: format!("Scaled {verb} replica set {rs} from {from} to {to}"),
        component: "deployment-controller",
    }
}

/// Runs the Deployment controller over `deployments`, updating `w.replicasets` and the plan.
pub(crate) fn reconcile<'a>(
    deployments: &'a [Value],
    w: &mut Working<'a>,
    ctx: &LeaderCtx,
    writes: &mut Vec<Write>,
    events: &mut Vec<PlannedEvent>,
) {
    // ReplicaSets by controlling Deployment uid.
    let mut owned: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (key, rs) in &w.replicasets {
        if let Some(("Deployment", owner)) = controller(rs) {
            owned
                .entry(owner.to_string())
                .or_default()
                .push(key.clone());
        }
    }
    for deploy in deployments.iter().filter(|d| object::is_valid(d)) {
        let Some((name, spec, labels)) = desired(deploy) else {
            continue;
        };
        let ns = object::namespace(deploy).to_string();
        let duid = object::uid(deploy);
        let key = (ns.clone(), name.clone());
        let siblings = owned.get(duid).cloned().unwrap_or_default();
        let want = spec["replicas"].as_i64().unwrap_or(0);
        match w.replicasets.get(&key) {
            Some(existing) if controller(existing) == Some(("Deployment", duid)) => {
                let same = existing["spec"]["replicas"] == spec["replicas"]
                    && existing["spec"]["selector"] == spec["selector"]
                    && existing["spec"]["template"] == spec["template"]
                    && existing["metadata"]["labels"] == labels;
                if !same {
                    let from = replicas_of(&existing["spec"]).unwrap_or(0);
                    let mut rs = existing.as_ref().clone();
                    rs["spec"] = spec;
                    rs["metadata"]["labels"] = labels;
                    bump(&mut rs, ctx);
                    if from != want {
                        events.push(scaling_event(deploy, &name, from, want));
                    }
                    put(w, writes, key, rs);
                }
            }
            Some(_) => continue, // a ReplicaSet of that name that this Deployment does not control
            None => {
                let revision = siblings
                    .iter()
                    .filter_map(|k| w.replicasets.get(k))
                    .filter_map(|rs| {
                        rs["metadata"]["annotations"][REVISION_ANNOTATION]
                            .as_str()?
                            .parse::<u64>()
                            .ok()
                    })
                    .max()
                    .unwrap_or(0)
                    + 1;
                let rs = json!({
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "metadata": {
                        "name": name,
                        "namespace": ns,
                        "uid": derived_uid("ReplicaSet", duid, &name),
                        "labels": labels,
                        "annotations": {REVISION_ANNOTATION: revision.to_string()},
                        "ownerReferences": object::owner_reference(deploy, "Deployment"),
                        "creationTimestamp": object::timestamp(ctx.now),
                        "resourceVersion": object::resource_version(ctx.now),
                        "generation": 1,
                    },
                    "spec": spec,
                });
                events.push(scaling_event(deploy, &name, 0, want));
                put(w, writes, key, rs);
            }
        }
        // Older ReplicaSets of this Deployment: scaled to 0.
        for old in siblings.iter().filter(|k| k.1 != name) {
            let Some(rs) = w.replicasets.get(old) else {
                continue;
            };
            let from = replicas_of(&rs["spec"]).unwrap_or(0);
            if rs["spec"]["replicas"] == json!(0) {
                continue;
            }
            let mut rs = rs.as_ref().clone();
            rs["spec"]["replicas"] = json!(0);
            bump(&mut rs, ctx);
            events.push(scaling_event(deploy, &old.1, from, 0));
            put(w, writes, old.clone(), rs);
        }
    }
}

/// New generation and resourceVersion for a changed spec.
pub(crate) fn bump(v: &mut Value, ctx: &LeaderCtx) {
    let generation = v["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
    v["metadata"]["generation"] = json!(generation);
    v["metadata"]["resourceVersion"] = json!(object::resource_version(ctx.now));
}

fn put<'a>(w: &mut Working<'a>, writes: &mut Vec<Write>, key: (String, String), rs: Value) {
    writes.push(Write::PutObject {
        resource: REPLICASETS,
        namespace: key.0.clone(),
        name: key.1.clone(),
        object: rs.clone(),
    });
    w.replicasets.insert(key, Cow::Owned(rs));
}
