//! The Kubernetes `PodStatus` the planner records: container states (waiting / running /
//! terminated, lastState, restartCount; ready and started from the probes), the pod phase,
//! conditions (transition times kept from the last record while a condition holds), hostIP,
//! podIP (the pod's recorded CNI address) and startTime.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use k8s_openapi::api::core::v1::Container;

use super::{is_sidecar, ContainerPlan, DesiredPod, Inputs};
use crate::model::observed::{AttemptState, ExitRecord, ObservedAttempt, ObservedPod};
use crate::model::workload::PodStatusRecord;

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn terminated(e: &ExitRecord) -> Value {
    let mut t = json!({
        "exitCode": e.exit_code,
        "reason": e.reason,
        "finishedAt": ts(e.finished_at),
    });
    if let Some(s) = e.started_at {
        t["startedAt"] = json!(ts(s));
    }
    if let Some(sig) = e.signal {
        t["signal"] = json!(sig);
    }
    if let Some(m) = &e.message {
        t["message"] = json!(m);
    }
    json!({"terminated": t})
}

fn state_of(a: &ObservedAttempt) -> Value {
    match &a.state {
        AttemptState::Creating => json!({"waiting": {"reason": "ContainerCreating"}}),
        AttemptState::Running { started_at } => json!({"running": {"startedAt": ts(*started_at)}}),
        AttemptState::Exited(e) => terminated(e),
    }
}

/// One `containerStatuses` entry.
#[allow(clippy::too_many_arguments)]
pub fn container_status(
    name: &str,
    image: &str,
    observed: Option<&crate::model::observed::ObservedContainer>,
    plan_backoff: Option<i64>,
    image_missing: Option<(&str, &str)>,
    restarting: bool,
    pod: (&str, &str, &str),
    pod_key: &str,
) -> Value {
    let (pod_name, ns, uid) = pod;
    let (state, last, restarts) = match observed {
        None => {
            let waiting = match image_missing {
                Some((reason, m)) => json!({"waiting": {"reason": reason, "message": m}}),
                None => json!({"waiting": {"reason": "ContainerCreating"}}),
            };
            (waiting, json!({}), 0)
        }
        Some(oc) => {
            let previous = oc
                .previous
                .as_ref()
                .map(state_of)
                .unwrap_or_else(|| json!({}));
            match (&oc.latest.state, plan_backoff, image_missing, restarting) {
                (AttemptState::Exited(e), _, Some((reason, m)), _) => (
                    json!({"waiting": {"reason": reason, "message": m}}),
                    terminated(e),
                    oc.latest.restart,
                ),
                (AttemptState::Exited(e), Some(delay), _, _) => {
                    let waiting = if e.reason == "StartError" {
                        json!({"waiting": {"reason": "RunContainerError", "message": e.message.clone().unwrap_or_default()}})
                    } else {
                        json!({"waiting": {"reason": "CrashLoopBackOff", "message": format!(
                            "back-off {} restarting failed container={name} pod={pod_name}_{ns}({uid})",
                            human(delay)
                        )}})
                    };
                    (waiting, terminated(e), oc.latest.restart)
                }
                (AttemptState::Exited(e), None, None, true) => (
                    json!({"waiting": {"reason": "ContainerCreating"}}),
                    terminated(e),
                    oc.latest.restart,
                ),
                _ => (state_of(&oc.latest), previous, oc.latest.restart),
            }
        }
    };
    let running = state.get("running").is_some();
    let mut status = json!({
        "name": name,
        "image": image,
        "imageID": "",
        "state": state,
        "lastState": last,
        "ready": running,
        "started": running,
        "restartCount": restarts,
    });
    if let Some(id) = observed.map(|oc| oc.latest.restart) {
        // The runc id of the attempt (`runtime::pods::container_id`), so `runc kill` on the
        // host finds it.
        status["containerID"] = json!(format!("runc://{pod_key}-{name}-{id}"));
    }
    status
}

fn human(secs: i64) -> String {
    if secs >= 60 && secs % 60 == 0 {
        format!("{}m0s", secs / 60)
    } else if secs >= 60 {
        format!("{}m{}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    }
}

/// Kubernetes' phase rules (kubelet `getPhase`) over the container statuses.
pub fn pod_phase(statuses: &[Value], policy: &str) -> &'static str {
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for s in statuses {
        let state = &s["state"];
        if state.get("running").is_some() {
            running += 1;
        } else if let Some(t) = state.get("terminated") {
            stopped += 1;
            if t["exitCode"] == 0 {
                succeeded += 1;
            }
        } else if s["lastState"].get("terminated").is_some() {
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    if waiting > 0 || statuses.is_empty() {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        match policy {
            "Always" => "Running",
            "OnFailure" if stopped == succeeded => "Succeeded",
            "OnFailure" => "Running",
            _ if stopped == succeeded => "Succeeded",
            _ => "Failed",
        }
    } else {
        "Pending"
    }
}

fn is_init(desired: &DesiredPod, c: &Container) -> bool {
    desired.init_containers().iter().any(|i| i.name == c.name)
}

/// Kubernetes' phase rules with init containers (kubelet `getPhase`): a regular init
/// container still to complete keeps the pod `Pending` (until an app container has run), a
/// failed one under `Never` fails it; a sidecar counts as running once started, and a
/// stopped sidecar does not count. `sidecars[i]` says whether init container `i` is one.
pub fn pod_phase_with_init(
    sidecars: &[bool],
    init: &[Value],
    app: &[Value],
    policy: &str,
) -> &'static str {
    let (mut pending, mut failed) = (0, 0);
    let mut sidecars_running = 0;
    for (s, sidecar) in init.iter().zip(sidecars) {
        let state = &s["state"];
        let last_exit = &s["lastState"]["terminated"]["exitCode"];
        if *sidecar {
            if state.get("running").is_some() {
                if s["started"] != true {
                    pending += 1;
                }
                sidecars_running += 1;
            } else if state.get("waiting").is_some() && last_exit.is_null() {
                pending += 1;
            }
        } else if let Some(t) = state.get("terminated") {
            if t["exitCode"] != 0 {
                failed += 1;
            }
        } else if state.get("waiting").is_some() && !last_exit.is_null() {
            if *last_exit != 0 {
                failed += 1;
            }
        } else {
            pending += 1;
        }
    }
    if failed > 0 && policy == "Never" {
        return "Failed";
    }
    let app_started = app
        .iter()
        .any(|s| s["state"].get("waiting").is_none() || !s["lastState"]["terminated"].is_null());
    if pending > 0 && !app_started {
        return "Pending";
    }
    match pod_phase(app, policy) {
        // Every app container has stopped, but a sidecar still runs.
        "Succeeded" | "Failed" if sidecars_running > 0 => "Running",
        phase => phase,
    }
}

/// The `initContainerStatuses` or `containerStatuses` entry of container `name`.
pub fn container_entry<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    ["initContainerStatuses", "containerStatuses"]
        .iter()
        .filter_map(|list| status[*list].as_array())
        .flatten()
        .find(|c| c["name"] == name)
}

/// `state.waiting.reason` of container `name` (init or app) in a recorded status.
pub fn waiting_reason(status: &Value, name: &str) -> Option<String> {
    container_entry(status, name)?["state"]["waiting"]["reason"]
        .as_str()
        .map(str::to_string)
}

pub(crate) fn pod_status(
    desired: &DesiredPod,
    observed: Option<&ObservedPod>,
    plans: &BTreeMap<String, ContainerPlan>,
    input: &Inputs,
    recorded: Option<&PodStatusRecord>,
    sandbox_message: Option<&str>,
    initialized: bool,
) -> Value {
    let (name, ns, uid) = (desired.name(), desired.namespace(), desired.uid());
    // A container not created yet waits as `PodInitializing` in a pod with init containers
    // (the kubelet's default waiting state), `ContainerCreating` otherwise.
    let creating = if desired.init_containers().is_empty() {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    let entry = |c: &Container| {
        let plan = plans.get(&c.name);
        let oc = observed.and_then(|o| o.containers.get(&c.name));
        let mut s = container_status(
            &c.name,
            c.image.as_deref().unwrap_or_default(),
            oc,
            plan.and_then(|p| p.backoff),
            plan.and_then(|p| {
                p.image_missing
                    .as_ref()
                    .map(|(r, m)| (r.as_str(), m.as_str()))
            }),
            plan.is_some_and(|p| p.start.is_some()),
            (&name, &ns, &uid),
            &desired.key,
        );
        if oc.is_none() && s["state"]["waiting"]["reason"] == "ContainerCreating" {
            s["state"]["waiting"]["reason"] = json!(creating);
        }
        // A running container is started once its startup probe passed, ready once started
        // and its readiness probe passes (each true without the probe).
        let running = oc.filter(|oc| matches!(oc.latest.state, AttemptState::Running { .. }));
        if let (Some(oc), true) = (running, is_sidecar(c) || !is_init(desired, c)) {
            let v = input.probes.verdict(&desired.key, c, oc.latest.restart);
            s["started"] = json!(v.started);
            s["ready"] = json!(v.ready);
        } else if is_init(desired, c) && !is_sidecar(c) {
            // A regular init container is ready once it completed.
            s["ready"] = json!(s["state"]["terminated"]["exitCode"] == 0);
        }
        s
    };
    let mut init_statuses: Vec<Value> = desired.init_containers().iter().map(entry).collect();
    let mut statuses: Vec<Value> = desired.containers().iter().map(entry).collect();
    if let Some(message) = sandbox_message {
        // Containers waiting for their sandbox say why.
        for s in init_statuses.iter_mut().chain(&mut statuses) {
            let reason = &s["state"]["waiting"]["reason"];
            if reason == "ContainerCreating" || reason == "PodInitializing" {
                s["state"]["waiting"]["message"] = json!(message);
            }
        }
    }
    let sidecars: Vec<bool> = desired.init_containers().iter().map(is_sidecar).collect();
    let phase = pod_phase_with_init(
        &sidecars,
        &init_statuses,
        &statuses,
        desired.restart_policy(),
    );
    // The sidecars count for readiness beside the app containers (Kubernetes' ContainersReady).
    let readiness: Vec<&Value> = init_statuses
        .iter()
        .zip(&sidecars)
        .filter(|(_, sidecar)| **sidecar)
        .map(|(s, _)| s)
        .chain(&statuses)
        .collect();
    let all_ready =
        initialized && !statuses.is_empty() && readiness.iter().all(|s| s["ready"] == true);
    let incomplete: Vec<&str> = init_statuses
        .iter()
        .zip(&sidecars)
        .filter(|(s, sidecar)| {
            if **sidecar {
                s["started"] != true
            } else {
                s["state"]["terminated"]["exitCode"] != 0
            }
        })
        .filter_map(|(s, _)| s["name"].as_str())
        .collect();
    let old_conditions = recorded
        .map(|r| r.status["conditions"].clone())
        .unwrap_or(Value::Null);
    let condition = |kind: &str, ok: bool| {
        let value = if ok { "True" } else { "False" };
        let since = old_conditions
            .as_array()
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c["type"] == kind && c["status"] == value)
            })
            .and_then(|c| c["lastTransitionTime"].as_str().map(str::to_string))
            .unwrap_or_else(|| ts(input.now));
        let mut c = json!({"type": kind, "status": value, "lastTransitionTime": since, "lastProbeTime": null});
        if !ok && kind == "Initialized" {
            c["reason"] = json!("ContainersNotInitialized");
            c["message"] = json!(format!(
                "containers with incomplete status: [{}]",
                incomplete.join(" ")
            ));
        } else if !ok && (kind == "Ready" || kind == "ContainersReady") {
            let not_ready: Vec<&str> = readiness
                .iter()
                .filter(|s| s["ready"] != true)
                .filter_map(|s| s["name"].as_str())
                .collect();
            c["reason"] = json!("ContainersNotReady");
            c["message"] = json!(format!(
                "containers with unready status: [{}]",
                not_ready.join(" ")
            ));
        }
        c
    };
    let conditions = vec![
        condition("PodScheduled", true),
        condition("Initialized", initialized),
        condition("ContainersReady", all_ready),
        condition("Ready", all_ready),
    ];
    let mut status = json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": input.node_ip,
        "hostIPs": [{"ip": input.node_ip}],
        "containerStatuses": statuses,
    });
    if !init_statuses.is_empty() {
        status["initContainerStatuses"] = json!(init_statuses);
    }
    if let Some(o) = observed {
        status["startTime"] = json!(ts(o.meta.created_at));
    }
    if desired.host_network() {
        // A hostNetwork pod's address is its node's, once its sandbox runs (Kubernetes).
        if observed.is_some_and(|o| o.sandbox.is_some()) {
            status["podIP"] = json!(input.node_ip);
            status["podIPs"] = json!([{"ip": input.node_ip}]);
        }
    } else if let Some(a) = observed
        .and_then(|o| o.network.as_ref())
        .and_then(|n| n.address)
    {
        status["podIP"] = json!(a.ip.to_string());
        status["podIPs"] = json!([{"ip": a.ip.to_string()}]);
    }
    status
}
