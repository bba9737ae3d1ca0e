//! Status computed on read (docs/workloads.md): a Pod's `spec.nodeName` and `status` from its
//! binding, its node's status record or the leader's scheduling record; ReplicaSet and
//! Deployment status counted over their pods. Pure: the serving agent's [`WorkloadView`], the
//! stored objects and `now` in, objects out. Also label selectors (`matchLabels`,
//! `matchExpressions`) as JSON.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use super::backend::WorkloadView;
use crate::model::workload::{self, TEMPLATE_HASH_LABEL};
use crate::model::Readiness;
use crate::sched::deployment::{revision_of, REVISION_ANNOTATION};
use crate::sched::rollout::Rollout;

fn text<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cursor = v;
    for p in path {
        cursor = &cursor[*p];
    }
    cursor.as_str().unwrap_or_default()
}

fn ns_name(object: &Value) -> (String, String) {
    (
        text(object, &["metadata", "namespace"]).to_string(),
        text(object, &["metadata", "name"]).to_string(),
    )
}

fn labels_of(object: &Value, path: &[&str]) -> BTreeMap<String, String> {
    let mut cursor = object;
    for p in path {
        cursor = &cursor[*p];
    }
    cursor
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a `metav1.LabelSelector` (JSON) selects `labels`. A null selector selects nothing;
/// an empty one selects everything.
pub fn selector_matches(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    crate::model::selector::LabelSelector::parse(selector).is_some_and(|s| s.matches(labels))
}

/// `metav1.FormatLabelSelector`: `app=web,tier in (a,b)`; `<none>` for an empty selector.
pub fn format_selector(selector: &Value) -> String {
    let mut parts: Vec<String> = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    for e in selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let key = e["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        parts.push(match e["operator"].as_str().unwrap_or_default() {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            other => format!("{key} {other}"),
        });
    }
    if parts.is_empty() {
        "<none>".to_string()
    } else {
        parts.join(",")
    }
}

/// The uid of the controller owner of `object`, if any.
pub fn controller_uid(object: &Value) -> Option<&str> {
    object["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"] == json!(true))
        .and_then(|r| r["uid"].as_str())
}

/// Latest RFC 3339 timestamp anywhere inside `value`.
fn latest_time(value: &Value) -> Option<DateTime<Utc>> {
    match value {
        Value::String(s) if s.len() >= 20 && s.as_bytes().get(4) == Some(&b'-') => {
            DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|t| t.with_timezone(&Utc))
        }
        Value::Array(items) => items.iter().filter_map(latest_time).max(),
        Value::Object(map) => map.values().filter_map(latest_time).max(),
        _ => None,
    }
}

fn rv_of(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Raises `resourceVersion` to cover a status change at `changed` (rounded up to the end of
/// its second, since status timestamps have second precision), so that a watch started from a
/// list's resourceVersion still reports a status that changed in between.
fn cover(object: &mut Value, changed: Option<DateTime<Utc>>) {
    let Some(changed) = changed else { return };
    let micros = u64::try_from(changed.timestamp()).unwrap_or(0) * 1_000_000 + 999_999;
    if micros > rv_of(object) {
        object["metadata"]["resourceVersion"] = json!(micros.to_string());
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Kubernetes' QoS class of a pod spec.
fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .flat_map(|f| spec[*f].as_array().into_iter().flatten())
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let requests = c["resources"]["requests"].as_object();
        let limits = c["resources"]["limits"].as_object();
        if requests.is_some_and(|r| !r.is_empty()) || limits.is_some_and(|l| !l.is_empty()) {
            any = true;
        }
        for resource in ["cpu", "memory"] {
            let limit = c["resources"]["limits"][resource].clone();
            let request = c["resources"]["requests"][resource].clone();
            if limit.is_null() || (!request.is_null() && request != limit) {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// A pod as served: `spec.nodeName` from its binding and `status` from the matching status
/// record, else `Pending` (with `PodScheduled=False` from a scheduling record when there is
/// one). A pod whose node is NotReady in the view keeps its last status, but reads not Ready.
pub fn pod_view(pod: &Value, view: &WorkloadView) -> Value {
    let mut pod = pod.clone();
    let key = ns_name(&pod);
    let uid = text(&pod, &["metadata", "uid"]).to_string();
    let binding = view.bindings.get(&key).filter(|b| b.pod_uid == uid);
    let user_node = text(&pod, &["spec", "nodeName"]).to_string();
    let placement = workload::placement(&uid, &user_node, binding);
    let mut changed = binding.map(|b| b.at);
    if let (Some(b), true) = (binding, user_node.is_empty()) {
        pod["spec"]["nodeName"] = json!(b.node);
    }
    let record = workload::current_record(
        &uid,
        placement.as_ref(),
        view.pod_status.get(&key).into_iter().flatten(),
    );
    let mut status = match (record, &placement) {
        (Some(r), _) if r.status.is_object() => r.status.clone(),
        (_, Some(_)) => {
            let mut scheduled = json!({"type": "PodScheduled", "status": "True"});
            if let Some(b) = binding {
                scheduled["lastTransitionTime"] = json!(rfc3339(b.at));
            }
            json!({"phase": "Pending", "conditions": [scheduled]})
        }
        (_, None) => {
            let mut status = json!({"phase": "Pending"});
            let unschedulable = view
                .scheduling
                .get(&key)
                .into_iter()
                .flatten()
                .find(|s| s.pod_uid == uid);
            if let Some(s) = unschedulable {
                status["conditions"] = json!([{
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": s.reason,
                    "message": s.message,
                    "lastTransitionTime": rfc3339(s.at),
                }]);
                changed = Some(s.at);
            }
            status
        }
    };
    if status["qosClass"].is_null() {
        status["qosClass"] = json!(qos_class(&pod["spec"]));
    }
    let node_down = placement
        .as_ref()
        .is_some_and(|(node, _)| view.node_readiness.get(node) == Some(&Readiness::NotReady));
    if node_down {
        mark_not_ready(&mut status);
    }
    changed = changed.max(latest_time(&status));
    pod["status"] = status;
    cover(&mut pod, changed);
    pod
}

/// What Kubernetes' node lifecycle controller does to pods of an unreachable node.
fn mark_not_ready(status: &mut Value) {
    if let Some(conditions) = status["conditions"].as_array_mut() {
        for c in conditions.iter_mut().filter(|c| c["type"] == "Ready") {
            c["status"] = json!("False");
            c["reason"] = json!("NodeNotReady");
            c["message"] = json!("the pod's node is not ready in this agent's view");
        }
    }
    if let Some(containers) = status["containerStatuses"].as_array_mut() {
        for c in containers {
            c["ready"] = json!(false);
        }
    }
}

fn is_active(pod: &Value) -> bool {
    let phase = text(pod, &["status", "phase"]);
    phase != "Succeeded" && phase != "Failed" && pod["metadata"]["deletionTimestamp"].is_null()
}

fn ready_since(pod: &Value) -> Option<Option<DateTime<Utc>>> {
    workload::ready_since(&pod["status"])
}

/// Counts over the active pods of one controller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    replicas: i64,
    fully_labeled: i64,
    ready: i64,
    available: i64,
}

fn count(
    pods: &[&Value],
    template_labels: &BTreeMap<String, String>,
    min_ready: i64,
    now: DateTime<Utc>,
) -> Counts {
    let mut c = Counts::default();
    for pod in pods.iter().filter(|p| is_active(p)) {
        c.replicas += 1;
        let labels = labels_of(pod, &["metadata", "labels"]);
        if template_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
        {
            c.fully_labeled += 1;
        }
        if let Some(since) = ready_since(pod) {
            c.ready += 1;
            let available =
                min_ready <= 0 || since.is_some_and(|s| (now - s).num_seconds() >= min_ready);
            c.available += i64::from(available);
        }
    }
    c
}

fn put_nonzero(status: &mut Map<String, Value>, field: &str, value: i64) {
    if value != 0 {
        status.insert(field.into(), json!(value));
    }
}

fn latest_of(objects: &[&Value]) -> Option<DateTime<Utc>> {
    objects
        .iter()
        .filter_map(|o| {
            o["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|v| v.parse::<i64>().ok())
                .and_then(DateTime::from_timestamp_micros)
        })
        .max()
}

/// Pods (as served, with status) grouped by the uid of their controller.
pub fn by_controller(objects: &[Value]) -> BTreeMap<String, Vec<&Value>> {
    let mut out: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for o in objects {
        if let Some(uid) = controller_uid(o) {
            out.entry(uid.to_string()).or_default().push(o);
        }
    }
    out
}

/// A ReplicaSet with its status counted over `pods` (its own, as served).
pub fn replicaset_view(rs: &Value, pods: &[&Value], now: DateTime<Utc>) -> Value {
    let mut rs = rs.clone();
    let counts = count(
        pods,
        &labels_of(&rs, &["spec", "template", "metadata", "labels"]),
        rs["spec"]["minReadySeconds"].as_i64().unwrap_or(0),
        now,
    );
    let mut status = Map::new();
    status.insert("replicas".into(), json!(counts.replicas));
    put_nonzero(&mut status, "fullyLabeledReplicas", counts.fully_labeled);
    put_nonzero(&mut status, "readyReplicas", counts.ready);
    put_nonzero(&mut status, "availableReplicas", counts.available);
    put_nonzero(
        &mut status,
        "observedGeneration",
        rs["metadata"]["generation"].as_i64().unwrap_or(0),
    );
    rs["status"] = Value::Object(status);
    cover(&mut rs, latest_of(pods));
    rs
}

/// A Job with its status counted over `pods` (its own, as served): `active`, `ready`,
/// `succeeded` (indexes done), `failed`, `startTime`, `completedIndexes` (Indexed), and the
/// `Complete` / `Failed` conditions (with `SuccessCriteriaMet` / `FailureTarget` before them, as
/// Kubernetes 1.31+) and `completionTime` once it ended; `Suspended` while suspended. The same
/// count the leader's Job controller acts on (`sched::job::state`).
pub fn job_view(job: &Value, pods: &[&Value], now: DateTime<Utc>) -> Value {
    use crate::sched::job::{self, JobPod, Params};
    let mut out = job.clone();
    let Some(p) = Params::of(job) else {
        return out;
    };
    let members: Vec<JobPod> = pods
        .iter()
        .filter_map(|pod| {
            let (index, attempt) = job::index_of(pod)?;
            let (outcome, failure) = job::outcome_of(job::finished(&pod["status"]).as_ref(), false);
            Some(JobPod {
                key: ns_name(pod),
                index,
                attempt,
                created: pod["metadata"]["creationTimestamp"]
                    .as_str()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc)),
                outcome,
                failure,
                ready: workload::ready_since(&pod["status"]).is_some(),
            })
        })
        .collect();
    let st = job::state(job, &p, &members, now);
    let mut status = Map::new();
    if let Some(start) = st.start {
        status.insert("startTime".into(), json!(rfc3339(start)));
    }
    // Pods of an ended Job are being stopped: not counted as active any more.
    let (active, ready) = if st.ending.is_some() {
        (0, 0)
    } else {
        (st.active, st.ready)
    };
    put_nonzero(&mut status, "active", active);
    status.insert("ready".into(), json!(ready));
    status.insert("terminating".into(), json!(0));
    put_nonzero(&mut status, "succeeded", st.succeeded);
    put_nonzero(&mut status, "failed", st.failed);
    if p.indexed && !st.completed.is_empty() {
        status.insert(
            "completedIndexes".into(),
            json!(job::index_ranges(&st.completed)),
        );
    }
    if p.backoff_limit_per_index.is_some() {
        status.insert(
            "failedIndexes".into(),
            json!(job::index_ranges(&st.failed_indexes)),
        );
    }
    status.insert("uncountedTerminatedPods".into(), json!({}));
    let mut conditions = Vec::new();
    if p.suspend && st.ending.is_none() {
        // Since the write that suspended it (the Job's last write).
        let since = rfc3339(latest_of(&[job]).unwrap_or(DateTime::UNIX_EPOCH));
        conditions.push(json!({
            "type": "Suspended", "status": "True", "reason": "JobSuspended",
            "message": "Job suspended",
            "lastProbeTime": since, "lastTransitionTime": since,
        }));
    }
    if let Some(end) = &st.ending {
        let at = rfc3339(end.at);
        let first = if end.condition == "Complete" {
            "SuccessCriteriaMet"
        } else {
            "FailureTarget"
        };
        for kind in [first, end.condition] {
            conditions.push(json!({
                "type": kind, "status": "True", "reason": end.reason,
                "message": end.message, "lastProbeTime": at, "lastTransitionTime": at,
            }));
        }
        if end.condition == "Complete" {
            status.insert("completionTime".into(), json!(at));
        }
    }
    if !conditions.is_empty() {
        status.insert("conditions".into(), Value::Array(conditions));
    }
    out["status"] = Value::Object(status);
    cover(&mut out, latest_of(pods));
    cover(&mut out, st.ending.as_ref().map(|e| e.at));
    out
}

/// A CronJob with its status from its Jobs (as served): `active` (references to the Jobs that
/// have not ended), `lastScheduleTime` (the newest Job's scheduled time) and
/// `lastSuccessfulTime` (the newest completion).
pub fn cronjob_view(cj: &Value, jobs: &[&Value]) -> Value {
    use crate::sched::cronjob::{self, ChildJob};
    let mut out = cj.clone();
    let ended = |j: &Value| {
        j["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True")
            .map(|c| {
                let at = c["lastTransitionTime"]
                    .as_str()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map_or(DateTime::UNIX_EPOCH, |t| t.with_timezone(&Utc));
                (c["type"] == "Complete", at)
            })
    };
    let children: Vec<ChildJob<'_>> = jobs
        .iter()
        .map(|j| ChildJob {
            job: j,
            scheduled: cronjob::scheduled_time(j),
            ended: ended(j),
        })
        .collect();
    let (last_schedule, last_success) = cronjob::last_times(&children);
    let mut status = Map::new();
    let mut active: Vec<&ChildJob<'_>> = children.iter().filter(|c| c.ended.is_none()).collect();
    active.sort_by_key(|c| (c.scheduled, text(c.job, &["metadata", "name"]).to_string()));
    if !active.is_empty() {
        let refs: Vec<Value> = active
            .iter()
            .map(|c| {
                json!({
                    "apiVersion": "batch/v1", "kind": "Job",
                    "name": text(c.job, &["metadata", "name"]),
                    "namespace": text(c.job, &["metadata", "namespace"]),
                    "uid": text(c.job, &["metadata", "uid"]),
                    "resourceVersion": text(c.job, &["metadata", "resourceVersion"]),
                })
            })
            .collect();
        status.insert("active".into(), Value::Array(refs));
    }
    if let Some(t) = last_schedule {
        status.insert("lastScheduleTime".into(), json!(rfc3339(t)));
    }
    if let Some(t) = last_success {
        status.insert("lastSuccessfulTime".into(), json!(rfc3339(t)));
    }
    out["status"] = Value::Object(status);
    cover(&mut out, latest_of(jobs));
    out
}

/// A DaemonSet with its status counted over `pods` (its own, as served) and the eligible
/// `nodes` (`sched::daemonset::counts`); `observedGeneration` = `generation` (the controller
/// acts on every spec at once), so `kubectl rollout status ds/x` waits for the counts.
pub fn daemonset_view(
    ds: &Value,
    pods: &[&Value],
    nodes: &[crate::model::NodeRecord],
    now: DateTime<Utc>,
) -> Value {
    use crate::sched::daemonset::{self, DaemonPod, REVISION_LABEL};
    let mut out = ds.clone();
    let members: Vec<DaemonPod> = pods
        .iter()
        .map(|p| DaemonPod {
            node: daemonset::node_of(p).to_string(),
            hash: text(p, &["metadata", "labels", REVISION_LABEL]).to_string(),
            ready: workload::ready_since(&p["status"]).map(|t| t.unwrap_or(DateTime::UNIX_EPOCH)),
        })
        .collect();
    let c = daemonset::counts(ds, nodes, &members, now);
    let mut status = Map::new();
    status.insert("desiredNumberScheduled".into(), json!(c.desired));
    status.insert("currentNumberScheduled".into(), json!(c.current));
    status.insert("numberMisscheduled".into(), json!(c.misscheduled));
    status.insert("numberReady".into(), json!(c.ready));
    put_nonzero(&mut status, "updatedNumberScheduled", c.updated);
    put_nonzero(&mut status, "numberAvailable", c.available);
    put_nonzero(&mut status, "numberUnavailable", c.unavailable);
    status.insert(
        "observedGeneration".into(),
        json!(ds["metadata"]["generation"].as_i64().unwrap_or(1)),
    );
    out["status"] = Value::Object(status);
    cover(&mut out, latest_of(pods));
    out
}

/// A StatefulSet with its status counted over `pods` (its own, as served; terminating ones
/// left out) by `sched::statefulset::counts`: replicas, ready, available (`minReadySeconds`),
/// current and updated counts and revisions; `observedGeneration` = `generation` (the
/// controller acts on every spec at once), so `kubectl rollout status sts/x` waits for them.
pub fn statefulset_view(sts: &Value, pods: &[&Value], now: DateTime<Utc>) -> Value {
    use crate::sched::statefulset::{self, ordinal_of, REVISION_LABEL};
    let mut out = sts.clone();
    let name = text(sts, &["metadata", "name"]);
    let min_ready = sts["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
    let members: Vec<statefulset::CountedPod> = pods
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|p| {
            let ordinal = ordinal_of(name, text(p, &["metadata", "name"]))?;
            let since =
                workload::ready_since(&p["status"]).map(|t| t.unwrap_or(DateTime::UNIX_EPOCH));
            let available = since.is_some_and(|t| {
                chrono::Duration::try_seconds(min_ready)
                    .and_then(|d| t.checked_add_signed(d))
                    .is_some_and(|at| at <= now)
            });
            Some((
                ordinal,
                text(p, &["metadata", "labels", REVISION_LABEL]).to_string(),
                since.is_some(),
                available,
            ))
        })
        .collect();
    let c = statefulset::counts(sts, &members);
    let mut status = Map::new();
    status.insert(
        "observedGeneration".into(),
        json!(sts["metadata"]["generation"].as_i64().unwrap_or(1)),
    );
    status.insert("replicas".into(), json!(c.replicas));
    put_nonzero(&mut status, "readyReplicas", c.ready);
    put_nonzero(&mut status, "currentReplicas", c.current);
    put_nonzero(&mut status, "updatedReplicas", c.updated);
    status.insert("availableReplicas".into(), json!(c.available));
    status.insert("currentRevision".into(), json!(c.current_revision));
    status.insert("updateRevision".into(), json!(c.update_revision));
    status.insert("collisionCount".into(), json!(0));
    out["status"] = Value::Object(status);
    cover(&mut out, latest_of(pods));
    out
}

/// A pod template with the `pod-template-hash` label removed and nulls dropped, for comparing
/// a ReplicaSet's template with its Deployment's (Kubernetes' `EqualIgnoreHash`).
fn template_sans_hash(template: &Value) -> Value {
    let mut t = crate::sched::hash::without_nulls(template);
    if let Some(labels) = t["metadata"]["labels"].as_object_mut() {
        labels.remove(TEMPLATE_HASH_LABEL);
        if labels.is_empty() {
            if let Some(meta) = t["metadata"].as_object_mut() {
                meta.remove("labels");
            }
        }
    }
    if t["metadata"].as_object().is_some_and(|m| m.is_empty()) {
        if let Some(m) = t.as_object_mut() {
            m.remove("metadata");
        }
    }
    t
}

/// The stored object a patch applies to. A Deployment always has `metadata.annotations` in
/// Kubernetes (its controller writes the revision there), and `kubectl rollout undo` sends a
/// JSON patch that *replaces* `/metadata/annotations`; here the revision is computed on read,
/// so a Deployment stored without annotations gets an empty map to patch.
pub fn patch_base(kind: &str, stored: &Value) -> Value {
    let mut base = stored.clone();
    if kind == "Deployment"
        && base["metadata"].is_object()
        && !base["metadata"]["annotations"].is_object()
    {
        base["metadata"]["annotations"] = json!({});
    }
    base
}

/// Seconds-precision time of a `metadata.resourceVersion` (microseconds, as written here).
fn rv_time(object: &Value) -> Option<DateTime<Utc>> {
    object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse::<i64>().ok())
        .and_then(DateTime::from_timestamp_micros)
}

fn parsed_time(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// When a rollout last made progress, from timestamps already in the records (nothing is
/// written for it): the Deployment's last spec write (its resourceVersion: a template change,
/// a resume, a scale), the current ReplicaSet's creation, the newest pod creation (the leader
/// creates pods as it scales up) and the newest Ready transition among the Deployment's pods.
fn last_progress(deployment: &Value, current: &Value, pods: &[&Value]) -> Option<DateTime<Utc>> {
    let mut times = vec![
        rv_time(deployment),
        parsed_time(&current["metadata"]["creationTimestamp"]),
    ];
    for p in pods {
        times.push(parsed_time(&p["metadata"]["creationTimestamp"]));
        times.push(ready_since(p).flatten());
    }
    times.into_iter().flatten().max()
}

/// A Deployment with its status counted over its ReplicaSets (`rss`, as served) and their
/// pods; the ReplicaSet whose template equals the Deployment's (ignoring the hash label) is
/// the current one. `metadata.annotations` gets the current revision
/// (`deployment.kubernetes.io/revision`), as Kubernetes' controller writes it.
pub fn deployment_view(
    deployment: &Value,
    rss: &[&Value],
    pods_of: &BTreeMap<String, Vec<&Value>>,
    now: DateTime<Utc>,
) -> Value {
    let mut d = deployment.clone();
    let desired = d["spec"]["replicas"].as_i64().unwrap_or(1);
    let params = Rollout::of(&d["spec"], desired);
    let min_ready = params.min_ready_seconds;
    let template = template_sans_hash(&d["spec"]["template"]);
    let current = rss
        .iter()
        .find(|rs| template_sans_hash(&rs["spec"]["template"]) == template);
    let mut total = Counts::default();
    let mut updated = 0;
    let mut all_pods: Vec<&Value> = Vec::new();
    for rs in rss {
        let uid = text(rs, &["metadata", "uid"]);
        let pods = pods_of.get(uid).map(Vec::as_slice).unwrap_or_default();
        let c = count(pods, &BTreeMap::new(), min_ready, now);
        total.replicas += c.replicas;
        total.ready += c.ready;
        total.available += c.available;
        if current.is_some_and(|cur| text(cur, &["metadata", "uid"]) == uid) {
            updated = c.replicas;
        }
        all_pods.extend(pods);
    }
    let revision = current
        .map(|c| revision_of(c))
        .or_else(|| rss.iter().map(|rs| revision_of(rs)).max())
        .filter(|r| *r > 0);
    if let Some(r) = revision {
        if !d["metadata"]["annotations"].is_object() {
            d["metadata"]["annotations"] = json!({});
        }
        d["metadata"]["annotations"][REVISION_ANNOTATION] = json!(r.to_string());
    }
    let generation = d["metadata"]["generation"].as_i64().unwrap_or(1);
    let mut status = Map::new();
    // Observed once the controller can have acted on this generation: the current ReplicaSet
    // exists, or the Deployment is paused, or (Recreate) the old ones are being scaled to 0.
    let recreating = params.recreate
        && rss
            .iter()
            .all(|rs| rs["spec"]["replicas"].as_i64().unwrap_or(1) == 0);
    let observed = if current.is_some() || params.paused || recreating {
        generation
    } else {
        generation - 1
    };
    put_nonzero(&mut status, "observedGeneration", observed);
    put_nonzero(&mut status, "replicas", total.replicas);
    put_nonzero(&mut status, "updatedReplicas", updated);
    put_nonzero(&mut status, "readyReplicas", total.ready);
    put_nonzero(&mut status, "availableReplicas", total.available);
    put_nonzero(
        &mut status,
        "unavailableReplicas",
        (desired - total.available).max(0),
    );
    let created = text(&d, &["metadata", "creationTimestamp"]).to_string();
    let mut conditions = Vec::new();
    let (available, reason, message) = if total.available >= params.min_available(desired) {
        (
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
        )
    } else {
        (
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
        )
    };
    conditions.push(json!({
        "type": "Available", "status": available, "reason": reason, "message": message,
        "lastUpdateTime": created, "lastTransitionTime": created,
    }));
    let mut changed = None;
    if params.paused {
        let since = rv_time(&d).map(rfc3339).unwrap_or_else(|| created.clone());
        conditions.push(json!({
            "type": "Progressing", "status": "Unknown", "reason": "DeploymentPaused",
            "message": "Deployment is paused",
            "lastUpdateTime": since, "lastTransitionTime": since,
        }));
    } else if let Some(cur) = current {
        let name = text(cur, &["metadata", "name"]);
        let complete =
            updated == desired && total.replicas == updated && total.available >= updated;
        let progressed = last_progress(&d, cur, &all_pods);
        let deadline =
            progressed.map(|t| t + chrono::Duration::seconds(params.progress_deadline_seconds));
        let (status, reason, message, at) = if complete {
            let at = progressed.map(rfc3339).unwrap_or_else(|| created.clone());
            (
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{name}\" has successfully progressed."),
                at,
            )
        } else if let Some(deadline) = deadline.filter(|t| *t < now) {
            changed = Some(deadline);
            (
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{name}\" has timed out progressing."),
                rfc3339(deadline),
            )
        } else {
            let at = progressed.map(rfc3339).unwrap_or_else(|| created.clone());
            (
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{name}\" is progressing."),
                at,
            )
        };
        conditions.push(json!({
            "type": "Progressing", "status": status, "reason": reason, "message": message,
            "lastUpdateTime": at, "lastTransitionTime": at,
        }));
    }
    status.insert("conditions".into(), json!(conditions));
    d["status"] = Value::Object(status);
    let mut inputs: Vec<&Value> = rss.to_vec();
    inputs.extend(all_pods);
    cover(&mut d, latest_of(&inputs).max(changed));
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::workload::{Binding, PodStatusRecord, SchedulingRecord};

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn pod(name: &str, uid: &str, owner: Option<&str>) -> Value {
        let mut p = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "uid": uid,
                         "resourceVersion": "1000", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
        });
        if let Some(o) = owner {
            p["metadata"]["labels"][TEMPLATE_HASH_LABEL] = json!("abc");
            p["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": o, "controller": true}]);
        }
        p
    }

    fn binding(node: &str, id: &str, uid: &str) -> Binding {
        Binding {
            node: node.into(),
            id: id.into(),
            pod_uid: uid.into(),
            epoch: 1,
            view: 1,
            leader: "n1".into(),
            at: at("2024-05-01T10:00:00Z"),
        }
    }

    fn running(ready: bool) -> Value {
        json!({
            "phase": "Running", "podIP": "10.0.0.5",
            "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"},
                            "lastTransitionTime": "2024-05-01T10:00:05Z"}],
            "containerStatuses": [{"name": "c", "ready": ready, "restartCount": 0,
                                   "state": {"running": {"startedAt": "2024-05-01T10:00:04Z"}}}],
        })
    }

    fn key(name: &str) -> (String, String) {
        ("default".into(), name.into())
    }

    #[test]
    fn pod_status_comes_from_the_record_of_the_winning_binding() {
        let p = pod("web-1", "u1", None);
        let mut view = WorkloadView::default();
        view.bindings
            .insert(key("web-1"), binding("n2", "b2", "u1"));
        view.pod_status.insert(
            key("web-1"),
            vec![
                (
                    "n1".into(),
                    std::sync::Arc::new(PodStatusRecord {
                        binding: "b1".into(),
                        pod_uid: "u1".into(),
                        status: json!({"phase": "Failed"}),
                    }),
                ),
                (
                    "n2".into(),
                    std::sync::Arc::new(PodStatusRecord {
                        binding: "b2".into(),
                        pod_uid: "u1".into(),
                        status: running(true),
                    }),
                ),
            ],
        );
        view.node_readiness.insert("n2".into(), Readiness::Ready);
        let served = pod_view(&p, &view);
        assert_eq!(served["spec"]["nodeName"], "n2");
        assert_eq!(served["status"]["phase"], "Running");
        assert_eq!(served["status"]["qosClass"], "BestEffort");
        // The status timestamps raise the resourceVersion (end of their second).
        let rv: u64 = served["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            rv,
            at("2024-05-01T10:00:05Z").timestamp() as u64 * 1_000_000 + 999_999
        );
        // Stable: the same inputs give the same object (watches diff these).
        assert_eq!(pod_view(&p, &view), served);

        // The node goes NotReady: last status kept, Ready reads False.
        view.node_readiness.insert("n2".into(), Readiness::NotReady);
        let served = pod_view(&p, &view);
        assert_eq!(served["status"]["phase"], "Running");
        assert_eq!(served["status"]["conditions"][0]["status"], "False");
        assert_eq!(served["status"]["containerStatuses"][0]["ready"], false);
    }

    #[test]
    fn stale_bindings_and_records_are_ignored() {
        let p = pod("web-1", "u1", None);
        let mut view = WorkloadView::default();
        view.bindings
            .insert(key("web-1"), binding("n2", "b2", "old-uid"));
        view.scheduling.insert(
            key("web-1"),
            vec![SchedulingRecord {
                pod_uid: "u1".into(),
                reason: "Unschedulable".into(),
                message: "0/3 nodes are available: 3 Insufficient cpu.".into(),
                at: at("2024-05-01T10:00:00Z"),
            }],
        );
        let served = pod_view(&p, &view);
        assert!(served["spec"]["nodeName"].is_null());
        assert_eq!(served["status"]["phase"], "Pending");
        assert_eq!(served["status"]["conditions"][0]["type"], "PodScheduled");
        assert_eq!(served["status"]["conditions"][0]["status"], "False");
        assert_eq!(
            served["status"]["conditions"][0]["message"],
            "0/3 nodes are available: 3 Insufficient cpu."
        );
        // Bound, no record yet: Pending and scheduled.
        view.bindings
            .insert(key("web-1"), binding("n2", "b2", "u1"));
        let served = pod_view(&p, &view);
        assert_eq!(served["spec"]["nodeName"], "n2");
        assert_eq!(served["status"]["phase"], "Pending");
        assert_eq!(served["status"]["conditions"][0]["status"], "True");
    }

    fn template() -> Value {
        json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}})
    }

    fn rs(name: &str, uid: &str, replicas: i64, template: Value) -> Value {
        json!({
            "metadata": {"name": name, "namespace": "default", "uid": uid, "generation": 1,
                         "creationTimestamp": "2024-05-01T09:00:00Z", "resourceVersion": "5",
                         "ownerReferences": [{"uid": "d1", "controller": true, "kind": "Deployment", "name": "web"}]},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}}, "template": template},
        })
    }

    #[test]
    fn replicaset_and_deployment_status_count_pods() {
        let now = at("2024-05-01T11:00:00Z");
        let mut pods = Vec::new();
        for (i, ready) in [true, true, false].iter().enumerate() {
            let mut p = pod(&format!("web-{i}"), &format!("u{i}"), Some("rs1"));
            p["status"] = running(*ready);
            pods.push(p);
        }
        let mut t = template();
        t["metadata"]["labels"][TEMPLATE_HASH_LABEL] = json!("abc");
        let current = rs("web-abc", "rs1", 3, t);
        let grouped = by_controller(&pods);
        let served_rs = replicaset_view(&current, &grouped["rs1"], now);
        assert_eq!(
            served_rs["status"],
            json!({"replicas": 3, "fullyLabeledReplicas": 3, "readyReplicas": 2,
                   "availableReplicas": 2, "observedGeneration": 1})
        );
        let old = rs(
            "web-old",
            "rs0",
            0,
            json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "old"}]}}),
        );
        let deployment = json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "d1", "generation": 2,
                         "creationTimestamp": "2024-05-01T09:00:00Z", "resourceVersion": "1"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": template(),
                     "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}},
        });
        let served = deployment_view(&deployment, &[&old, &served_rs], &grouped, now);
        let status = &served["status"];
        assert_eq!(status["observedGeneration"], 2);
        assert_eq!(status["replicas"], 3);
        assert_eq!(status["updatedReplicas"], 3);
        assert_eq!(status["readyReplicas"], 2);
        assert_eq!(status["availableReplicas"], 2);
        // 3 desired, 25% unavailable allowed (0 rounded down): not available yet.
        assert_eq!(status["conditions"][0]["status"], "False");
        // Last progress: the newest Ready transition (10:00:05); an hour later the 600 s
        // deadline has passed.
        assert_eq!(status["conditions"][1]["status"], "False");
        assert_eq!(
            status["conditions"][1]["reason"],
            "ProgressDeadlineExceeded"
        );
        assert_eq!(
            status["conditions"][1]["lastUpdateTime"],
            "2024-05-01T10:10:05Z"
        );
        // The served revision is the current ReplicaSet's (none written: absent).
        assert!(served["metadata"]["annotations"].is_null());
        // Within the deadline: progressing.
        let soon = at("2024-05-01T10:09:00Z");
        let served = deployment_view(&deployment, &[&old, &served_rs], &grouped, soon);
        assert_eq!(served["status"]["conditions"][1]["status"], "True");
        assert_eq!(
            served["status"]["conditions"][1]["reason"],
            "ReplicaSetUpdated"
        );
        // A write of the Deployment (resume, edit) counts as progress.
        let mut touched = deployment.clone();
        touched["metadata"]["resourceVersion"] =
            json!(at("2024-05-01T10:55:00Z").timestamp_micros().to_string());
        let served = deployment_view(&touched, &[&old, &served_rs], &grouped, now);
        assert_eq!(
            served["status"]["conditions"][1]["reason"],
            "ReplicaSetUpdated"
        );
        // Paused: Unknown / DeploymentPaused, and the generation counts as observed.
        let mut paused = deployment.clone();
        paused["spec"]["paused"] = json!(true);
        let served = deployment_view(&paused, &[&old], &grouped, now);
        assert_eq!(served["status"]["observedGeneration"], 2);
        assert_eq!(served["status"]["conditions"][1]["status"], "Unknown");
        assert_eq!(
            served["status"]["conditions"][1]["reason"],
            "DeploymentPaused"
        );

        // All ready: complete.
        pods[2]["status"] = running(true);
        let grouped = by_controller(&pods);
        let served = deployment_view(&deployment, &[&old, &served_rs], &grouped, now);
        assert_eq!(served["status"]["conditions"][0]["status"], "True");
        assert_eq!(
            served["status"]["conditions"][1]["reason"],
            "NewReplicaSetAvailable"
        );

        // No ReplicaSet for the template yet: the generation is not observed.
        let served = deployment_view(&deployment, &[&old], &grouped, now);
        assert_eq!(served["status"]["observedGeneration"], 1);
        assert!(served["status"].get("updatedReplicas").is_none());

        // Revisions: the Deployment shows its current ReplicaSet's.
        let mut old = old;
        old["metadata"]["annotations"] = json!({REVISION_ANNOTATION: "1"});
        let mut current = served_rs.clone();
        current["metadata"]["annotations"] = json!({REVISION_ANNOTATION: "3"});
        let served = deployment_view(&deployment, &[&old, &current], &grouped, now);
        assert_eq!(served["metadata"]["annotations"][REVISION_ANNOTATION], "3");
    }

    #[test]
    fn selectors_match_and_format() {
        let labels: BTreeMap<String, String> = [
            ("app".to_string(), "web".to_string()),
            ("tier".to_string(), "a".to_string()),
        ]
        .into();
        let sel = json!({"matchLabels": {"app": "web"},
                         "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]},
                                              {"key": "x", "operator": "DoesNotExist"}]});
        assert!(selector_matches(&sel, &labels));
        assert_eq!(format_selector(&sel), "app=web,tier in (a,b),!x");
        assert!(!selector_matches(
            &json!({"matchLabels": {"app": "db"}}),
            &labels
        ));
        assert!(!selector_matches(&Value::Null, &labels));
        assert!(selector_matches(&json!({}), &labels));
    }

    fn job_pod(name: &str, index: usize, attempt: u32, phase: &str, finished: &str) -> Value {
        let mut status = json!({"phase": phase});
        if !finished.is_empty() {
            status["containerStatuses"] = json!([{"name": "c", "state": {"terminated": {
                "exitCode": if phase == "Succeeded" { 0 } else { 1 }, "finishedAt": finished}}}]);
        }
        json!({
            "metadata": {"name": name, "namespace": "default",
                "creationTimestamp": "2025-01-01T00:00:01Z", "resourceVersion": "1",
                "annotations": {"shoal.io/slot": index.to_string(), "shoal.io/attempt": attempt.to_string()},
                "ownerReferences": [{"uid": "j1", "controller": true, "kind": "Job", "name": "j"}]},
            "status": status,
        })
    }

    #[test]
    fn job_status_counts_pods_and_ends_with_conditions() {
        let now = DateTime::parse_from_rfc3339("2025-01-01T00:10:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let job = json!({
            "metadata": {"name": "j", "namespace": "default", "uid": "j1", "resourceVersion": "1",
                         "creationTimestamp": "2025-01-01T00:00:00Z"},
            "spec": {"completions": 3, "parallelism": 2, "completionMode": "Indexed",
                     "backoffLimit": 6, "template": {"spec": {}}},
        });
        let pods = [
            job_pod("j-0-a", 0, 0, "Succeeded", "2025-01-01T00:00:05Z"),
            job_pod("j-1-a", 1, 0, "Failed", "2025-01-01T00:00:06Z"),
            job_pod("j-1-b", 1, 1, "Running", ""),
            job_pod("j-2-a", 2, 0, "Succeeded", "2025-01-01T00:00:07Z"),
        ];
        let refs: Vec<&Value> = pods.iter().collect();
        let v = job_view(&job, &refs, now);
        let st = &v["status"];
        assert_eq!(
            (
                st["succeeded"].as_i64(),
                st["failed"].as_i64(),
                st["active"].as_i64()
            ),
            (Some(2), Some(1), Some(1))
        );
        assert_eq!(st["completedIndexes"], "0,2");
        assert_eq!(st["startTime"], "2025-01-01T00:00:01Z");
        assert!(st["conditions"].is_null());
        let mut done = pods.to_vec();
        done[2] = job_pod("j-1-b", 1, 1, "Succeeded", "2025-01-01T00:00:09Z");
        let refs: Vec<&Value> = done.iter().collect();
        let v = job_view(&job, &refs, now);
        let st = &v["status"];
        assert_eq!(st["completedIndexes"], "0-2");
        assert_eq!(st["completionTime"], "2025-01-01T00:00:09Z");
        let types: Vec<&str> = st["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["SuccessCriteriaMet", "Complete"]);
        assert_eq!(st["conditions"][1]["reason"], "CompletionsReached");
        // A later reader sees the same (no time-dependent fields).
        assert_eq!(job_view(&job, &refs, now + chrono::Duration::hours(1)), v);
    }
}
