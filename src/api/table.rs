//! `meta.k8s.io/v1` Tables for `kubectl get`: content negotiation, per-kind columns and the
//! human-readable ages Kubernetes prints.

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::resources::{Columns, ResourceInfo};
use super::services;

/// What to embed in each row's `object` (`includeObject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(value: Option<&str>) -> Self {
        match value {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

/// The Table apiVersion the client accepts (`meta.k8s.io/v1` or `v1beta1`), if it asked for one.
pub fn negotiate(headers: &HeaderMap) -> Option<&'static str> {
    let accept = headers.get(axum::http::header::ACCEPT)?.to_str().ok()?;
    for media in accept.split(',') {
        let params: Vec<&str> = media.split(';').map(str::trim).collect();
        let has = |p: &str| params.iter().any(|x| x.eq_ignore_ascii_case(p));
        if has("as=Table") && has("g=meta.k8s.io") {
            if has("v=v1") {
                return Some("meta.k8s.io/v1");
            }
            if has("v=v1beta1") {
                return Some("meta.k8s.io/v1beta1");
            }
        }
    }
    None
}

/// Kubernetes' `duration.HumanDuration`: `45s`, `5m12s`, `3h4m`, `2d5h`, `400d`, `3y12d`.
pub fn human_duration(seconds: i64) -> String {
    let s = seconds.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let minutes = s / 60;
    if minutes < 10 {
        let rem = s % 60;
        return if rem == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{rem}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = s / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 192 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let d = (hours / 24) % 365;
        return if d == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{d}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// AGE of an object from its `metadata.creationTimestamp`.
pub fn age(object: &Value, now: DateTime<Utc>) -> String {
    object["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| human_duration((now - t.with_timezone(&Utc)).num_seconds()))
        .unwrap_or_else(|| "<unknown>".to_string())
}

fn column(name: &str, kind: &str, priority: u32, description: &str) -> Value {
    let format = if name == "Name" { "name" } else { "" };
    json!({"name": name, "type": kind, "format": format, "description": description, "priority": priority})
}

fn column_definitions(columns: Columns) -> Vec<Value> {
    let name = column(
        "Name",
        "string",
        0,
        "Name must be unique within a namespace.",
    );
    let age = column("Age", "string", 0, "Time since the object was created.");
    match columns {
        Columns::Node => vec![
            name,
            column("Status", "string", 0, "The status of the node"),
            column("Roles", "string", 0, "The roles of the node"),
            age,
            column(
                "Version",
                "string",
                0,
                "Kubelet Version reported by the node.",
            ),
            column(
                "Internal-IP",
                "string",
                1,
                "List of internal IPs for the node.",
            ),
            column(
                "External-IP",
                "string",
                1,
                "List of external IPs for this node.",
            ),
            column("OS-Image", "string", 1, "OS Image reported by the node."),
            column(
                "Kernel-Version",
                "string",
                1,
                "Kernel Version reported by the node.",
            ),
            column(
                "Container-Runtime",
                "string",
                1,
                "Container Runtime Version reported by the node.",
            ),
        ],
        Columns::Namespace => vec![
            name,
            column("Status", "string", 0, "The status of the namespace"),
            age,
        ],
        Columns::ConfigMap => vec![
            name,
            column("Data", "string", 0, "Number of keys in the config map"),
            age,
        ],
        Columns::Secret => vec![
            name,
            column("Type", "string", 0, "The type of the secret"),
            column("Data", "string", 0, "The number of data items in the secret"),
            age,
        ],
        Columns::Pod => vec![
            name,
            column("Ready", "string", 0, "The aggregate readiness state of this pod for accepting traffic."),
            column("Status", "string", 0, "The aggregate status of the containers in this pod."),
            column("Restarts", "string", 0, "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
            age,
            column("IP", "string", 1, "IP address allocated to the pod."),
            column("Node", "string", 1, "Name of the node the pod is assigned to."),
            column("Nominated Node", "string", 1, "Name of the node where the pod is nominated."),
            column("Readiness Gates", "string", 1, "Readiness gates of the pod."),
        ],
        Columns::Deployment => vec![
            name,
            column("Ready", "string", 0, "Number of the pod with ready state"),
            column("Up-to-date", "integer", 0, "Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
            column("Available", "integer", 0, "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
            age,
            column("Containers", "string", 1, "Names of each container in the template."),
            column("Images", "string", 1, "Images referenced by each container in the template."),
            column("Selector", "string", 1, "Label selector for pods."),
        ],
        Columns::ReplicaSet => vec![
            name,
            column("Desired", "integer", 0, "Number of desired pods."),
            column("Current", "integer", 0, "Number of actual replicas."),
            column("Ready", "integer", 0, "The number of ready replicas for this replica set."),
            age,
            column("Containers", "string", 1, "Names of each container in the template."),
            column("Images", "string", 1, "Images referenced by each container in the template."),
            column("Selector", "string", 1, "Label selector for pods."),
        ],
        Columns::CronJob => vec![
            name,
            column("Schedule", "string", 0, "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron."),
            column("Timezone", "string", 0, "The time zone name for the given schedule, see https://en.wikipedia.org/wiki/List_of_tz_database_time_zones."),
            column("Suspend", "boolean", 0, "This flag tells the controller to suspend subsequent executions."),
            column("Active", "integer", 0, "A list of pointers to currently running jobs."),
            column("Last Schedule", "string", 0, "Information when was the last time the job was successfully scheduled."),
            age,
            column("Containers", "string", 1, "Names of each container in the template."),
            column("Images", "string", 1, "Images referenced by each container in the template."),
            column("Selector", "string", 1, "Label selector for pods."),
        ],
        Columns::DaemonSet => vec![
            name,
            column("Desired", "integer", 0, "The desired number of pods."),
            column("Current", "integer", 0, "The current number of pods."),
            column("Ready", "integer", 0, "The number of pods ready."),
            column("Up-to-date", "integer", 0, "The number of pods updated."),
            column("Available", "integer", 0, "The number of pods available."),
            column("Node Selector", "string", 0, "Which nodes will have the daemon pods."),
            age,
            column("Containers", "string", 1, "Names of each container in the template."),
            column("Images", "string", 1, "Images referenced by each container in the template."),
            column("Selector", "string", 1, "Label selector for pods."),
        ],
        Columns::StatefulSet => vec![
            name,
            column("Ready", "string", 0, "Number of the pod with ready state"),
            age,
            column("Containers", "string", 1, "Names of each container in the template."),
            column("Images", "string", 1, "Images referenced by each container in the template."),
        ],
        Columns::Job => vec![
            name,
            column("Status", "string", 0, "Status of the job."),
            column("Completions", "string", 0, "The completion status of the job."),
            column("Duration", "string", 0, "Time required to complete the job."),
            age,
            column("Containers", "string", 1, "Names of each container in the template."),
            column("Images", "string", 1, "Images referenced by each container in the template."),
            column("Selector", "string", 1, "Label selector for pods."),
        ],
        Columns::Event => vec![
            column("Last Seen", "string", 0, "The time at which the most recent occurrence of this event was recorded."),
            column("Type", "string", 0, "Type of this event (Normal, Warning)."),
            column("Reason", "string", 0, "Why the action was taken."),
            column("Object", "string", 0, "The object this Event is about."),
            column("Subobject", "string", 1, "The field of the object this Event is about."),
            column("Source", "string", 1, "The component reporting this event."),
            column("Message", "string", 0, "A human-readable description of the status of this operation."),
            column("First Seen", "string", 1, "The time at which the event was first recorded."),
            column("Count", "string", 1, "The number of times this event has occurred."),
            column("Name", "string", 1, "Name of the event."),
        ],
        Columns::Service => vec![
            name,
            column("Type", "string", 0, "The type of the service."),
            column("Cluster-IP", "string", 0, "The cluster IP of the service."),
            column("External-IP", "string", 0, "The external IP of the service."),
            column("Port(s)", "string", 0, "The ports of the service."),
            age,
            column("Selector", "string", 1, "The label selector of the service."),
        ],
        Columns::Endpoints => vec![
            name,
            column("Endpoints", "string", 0, "Endpoints of the service."),
            age,
        ],
        Columns::EndpointSlice => vec![
            name,
            column("AddressType", "string", 0, "Type of address in the endpoint slice."),
            column("Ports", "string", 0, "Ports of the endpoint slice."),
            column("Endpoints", "string", 0, "Endpoints of the endpoint slice."),
            age,
        ],
        Columns::PersistentVolumeClaim => vec![
            name,
            column("Status", "string", 0, "The phase of the claim."),
            column("Volume", "string", 0, "The volume bound to the claim."),
            column("Capacity", "string", 0, "The capacity of the bound volume."),
            column("Access Modes", "string", 0, "The access modes of the bound volume."),
            column("StorageClass", "string", 0, "The storage class of the claim."),
            column("VolumeAttributesClass", "string", 0, "The volume attributes class of the claim."),
            age,
            column("VolumeMode", "string", 1, "The volume mode of the claim."),
        ],
        Columns::PersistentVolume => vec![
            name,
            column("Capacity", "string", 0, "The capacity of the volume."),
            column("Access Modes", "string", 0, "The access modes of the volume."),
            column("Reclaim Policy", "string", 0, "What happens to the volume once its claim is deleted."),
            column("Status", "string", 0, "The phase of the volume."),
            column("Claim", "string", 0, "The claim bound to the volume."),
            column("StorageClass", "string", 0, "The storage class of the volume."),
            column("VolumeAttributesClass", "string", 0, "The volume attributes class of the volume."),
            column("Reason", "string", 0, "Why the volume is in its phase."),
            age,
            column("VolumeMode", "string", 1, "The volume mode of the volume."),
        ],
        Columns::StorageClass => vec![
            name,
            column("Provisioner", "string", 0, "The provisioner of the class."),
            column("ReclaimPolicy", "string", 0, "The reclaim policy of the class's volumes."),
            column("VolumeBindingMode", "string", 0, "When claims of the class bind."),
            column("AllowVolumeExpansion", "string", 0, "Whether volumes of the class may grow."),
            age,
        ],
        Columns::ControllerRevision => vec![
            name,
            column("Controller", "string", 0, "Controller of the object."),
            column("Revision", "integer", 0, "Revision of the ControllerRevision."),
            age,
        ],
        Columns::PodDisruptionBudget => vec![
            name,
            column("Min Available", "string", 0, "The minimum number of pods that must be available."),
            column("Max Unavailable", "string", 0, "The maximum number of pods that may be unavailable."),
            column("Allowed Disruptions", "integer", 0, "Calculated number of pods that may be disrupted at this time."),
            age,
        ],
    }
}

fn since(timestamp: &Value, now: DateTime<Utc>) -> Option<String> {
    timestamp
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| human_duration((now - t.with_timezone(&Utc)).num_seconds()))
}

/// kubectl's `printPod`: READY, STATUS (waiting/terminated reasons, Init:..., Completed,
/// NotReady, Terminating), RESTARTS with the time of the last restart.
fn pod_cells(pod: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let status = &pod["status"];
    let spec = &pod["spec"];
    let total = spec["containers"].as_array().map_or(0, Vec::len);
    let mut ready = 0;
    let mut restarts: i64 = 0;
    let mut last_restart: Option<DateTime<Utc>> = None;
    let mut note_restart = |c: &Value, restarts: &mut i64| {
        *restarts += c["restartCount"].as_i64().unwrap_or(0);
        if let Some(t) = c["lastState"]["terminated"]["finishedAt"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        {
            let t = t.with_timezone(&Utc);
            if last_restart.is_none_or(|l| l < t) {
                last_restart = Some(t);
            }
        }
    };
    let mut reason = status["reason"]
        .as_str()
        .filter(|r| !r.is_empty())
        .or_else(|| status["phase"].as_str())
        .unwrap_or("Pending")
        .to_string();
    let init_specs: &[Value] = spec["initContainers"].as_array().map_or(&[], Vec::as_slice);
    let sidecar = |name: &Value| {
        init_specs
            .iter()
            .any(|s| s["name"] == *name && s["restartPolicy"] == "Always")
    };
    // Sidecars count among the pod's containers (READY n/m) and keep their restarts.
    let total = total + init_specs.iter().filter(|s| sidecar(&s["name"])).count();
    let mut sidecar_restarts: i64 = 0;
    let mut sidecar_last_restart: Option<DateTime<Utc>> = None;
    let mut initializing = false;
    for (i, c) in status["initContainerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        note_restart(c, &mut restarts);
        let is_sidecar = sidecar(&c["name"]);
        if is_sidecar {
            sidecar_restarts += c["restartCount"].as_i64().unwrap_or(0);
            if let Some(t) = c["lastState"]["terminated"]["finishedAt"]
                .as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            {
                let t = t.with_timezone(&Utc);
                if sidecar_last_restart.is_none_or(|l| l < t) {
                    sidecar_last_restart = Some(t);
                }
            }
        }
        let terminated = &c["state"]["terminated"];
        let waiting = &c["state"]["waiting"];
        if terminated.is_object() && terminated["exitCode"].as_i64() == Some(0) {
            continue;
        }
        if is_sidecar && c["started"] == json!(true) {
            if c["ready"] == json!(true) {
                ready += 1;
            }
            continue;
        }
        reason = if terminated.is_object() {
            match terminated["reason"].as_str().filter(|r| !r.is_empty()) {
                Some(r) => format!("Init:{r}"),
                None => match terminated["signal"].as_i64().filter(|s| *s != 0) {
                    Some(s) => format!("Init:Signal:{s}"),
                    None => format!(
                        "Init:ExitCode:{}",
                        terminated["exitCode"].as_i64().unwrap_or(0)
                    ),
                },
            }
        } else if let Some(r) = waiting["reason"]
            .as_str()
            .filter(|r| !r.is_empty() && *r != "PodInitializing")
        {
            format!("Init:{r}")
        } else {
            format!("Init:{i}/{}", init_specs.len())
        };
        initializing = true;
        break;
    }
    let initialized = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Initialized" && c["status"] == "True");
    if !initializing || initialized {
        restarts = sidecar_restarts;
        last_restart = sidecar_last_restart;
        let mut has_running = false;
        let containers: Vec<&Value> = status["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .collect();
        for c in containers.iter().rev() {
            restarts += c["restartCount"].as_i64().unwrap_or(0);
            if let Some(t) = c["lastState"]["terminated"]["finishedAt"]
                .as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            {
                let t = t.with_timezone(&Utc);
                if last_restart.is_none_or(|l| l < t) {
                    last_restart = Some(t);
                }
            }
            let state = &c["state"];
            let waiting = state["waiting"]["reason"]
                .as_str()
                .filter(|r| !r.is_empty());
            let terminated = &state["terminated"];
            if let Some(r) = waiting {
                reason = r.to_string();
            } else if let Some(r) = terminated["reason"].as_str().filter(|r| !r.is_empty()) {
                reason = r.to_string();
            } else if terminated.is_object() {
                reason = match terminated["signal"].as_i64().filter(|s| *s != 0) {
                    Some(s) => format!("Signal:{s}"),
                    None => format!("ExitCode:{}", terminated["exitCode"].as_i64().unwrap_or(0)),
                };
            } else if c["ready"] == json!(true) && state["running"].is_object() {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            let pod_ready = status["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            reason = if pod_ready { "Running" } else { "NotReady" }.to_string();
        }
    }
    let phase = status["phase"].as_str().unwrap_or_default();
    if !pod["metadata"]["deletionTimestamp"].is_null() {
        if status["reason"] == "NodeLost" {
            reason = "Unknown".into();
        } else if phase != "Succeeded" && phase != "Failed" {
            reason = "Terminating".into();
        }
    }
    let restarts_text = match last_restart {
        Some(t) if restarts != 0 => format!(
            "{restarts} ({} ago)",
            human_duration((now - t).num_seconds())
        ),
        _ => restarts.to_string(),
    };
    let or_none = |v: &Value| {
        v.as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or("<none>")
            .to_string()
    };
    let ip = status["podIPs"][0]["ip"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| or_none(&status["podIP"]));
    let gates = spec["readinessGates"].as_array().filter(|g| !g.is_empty());
    let readiness_gates = match gates {
        None => "<none>".to_string(),
        Some(gates) => {
            let met = gates
                .iter()
                .filter(|g| {
                    status["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == g["conditionType"] && c["status"] == "True")
                })
                .count();
            format!("{met}/{}", gates.len())
        }
    };
    vec![
        json!(pod["metadata"]["name"]),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts_text),
        json!(age(pod, now)),
        json!(ip),
        json!(or_none(&spec["nodeName"])),
        json!(or_none(&status["nominatedNodeName"])),
        json!(readiness_gates),
    ]
}

/// CONTAINERS, IMAGES and SELECTOR of a controller's pod template.
fn template_cells(object: &Value) -> [Value; 3] {
    let containers = object["spec"]["template"]["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let field = |f: &str| {
        containers
            .iter()
            .map(|c| c[f].as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    [
        json!(field("name")),
        json!(field("image")),
        json!(super::workloads::format_selector(
            &object["spec"]["selector"]
        )),
    ]
}

/// NAME STATUS COMPLETIONS DURATION AGE (+ wide), as kubectl's printer.
fn job_cells(object: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let [containers, images, selector] = template_cells(object);
    let status = &object["status"];
    let time = |v: &Value| {
        v.as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    let has = |kind: &str| {
        status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == kind && c["status"] == "True")
    };
    let state = [
        "Complete",
        "Failed",
        "Suspended",
        "FailureTarget",
        "SuccessCriteriaMet",
    ]
    .into_iter()
    .find(|k| has(k))
    .unwrap_or("Running");
    let succeeded = int(&status["succeeded"]);
    let completions = match object["spec"]["completions"].as_i64() {
        Some(n) => format!("{succeeded}/{n}"),
        None => format!(
            "{succeeded}/1 of {}",
            object["spec"]["parallelism"].as_i64().unwrap_or(1)
        ),
    };
    let duration = match time(&status["startTime"]) {
        Some(start) => {
            let end = time(&status["completionTime"]).unwrap_or(now);
            human_duration((end - start).num_seconds())
        }
        None => String::new(),
    };
    vec![
        json!(object["metadata"]["name"].as_str().unwrap_or_default()),
        json!(state),
        json!(completions),
        json!(duration),
        json!(age(object, now)),
        containers,
        images,
        selector,
    ]
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn event_cells(event: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let first = since(&event["firstTimestamp"], now)
        .or_else(|| since(&event["eventTime"], now))
        .unwrap_or_else(|| "<unknown>".to_string());
    let mut last = since(&event["lastTimestamp"], now).unwrap_or_else(|| first.clone());
    let mut count = event["count"].as_i64().unwrap_or(0);
    if event["series"].is_object() {
        last = since(&event["series"]["lastObservedTime"], now).unwrap_or(last);
        count = int(&event["series"]["count"]);
    } else if count == 0 {
        count = 1;
    }
    let involved = &event["involvedObject"];
    let kind = involved["kind"].as_str().unwrap_or_default().to_lowercase();
    let target = match involved["name"].as_str().filter(|n| !n.is_empty()) {
        Some(n) => format!("{kind}/{n}"),
        None => kind,
    };
    let source = {
        let component = event["source"]["component"]
            .as_str()
            .filter(|s| !s.is_empty())
            .or_else(|| event["reportingComponent"].as_str())
            .unwrap_or_default();
        let host = event["source"]["host"]
            .as_str()
            .filter(|s| !s.is_empty())
            .or_else(|| event["reportingInstance"].as_str())
            .unwrap_or_default();
        if host.is_empty() {
            component.to_string()
        } else {
            format!("{component}, {host}")
        }
    };
    vec![
        json!(last),
        json!(event["type"]),
        json!(event["reason"]),
        json!(target),
        json!(involved["fieldPath"].as_str().unwrap_or_default()),
        json!(source),
        json!(event["message"].as_str().unwrap_or_default().trim()),
        json!(first),
        json!(count.to_string()),
        json!(event["metadata"]["name"]),
    ]
}

fn node_cells(node: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let ready = node["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("Unknown");
    let mut status = match ready {
        "True" => "Ready".to_string(),
        _ => "NotReady".to_string(),
    };
    if node["spec"]["unschedulable"] == json!(true) {
        status.push_str(",SchedulingDisabled");
    }
    let labels = node["metadata"]["labels"].as_object();
    let roles: Vec<&str> = labels
        .map(|l| {
            l.keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .filter(|r| !r.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let roles = if roles.is_empty() {
        "<none>".to_string()
    } else {
        roles.join(",")
    };
    let address = |kind: &str| {
        node["status"]["addresses"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["type"] == kind))
            .and_then(|x| x["address"].as_str())
            .unwrap_or("<none>")
            .to_string()
    };
    let info = &node["status"]["nodeInfo"];
    let text = |v: &Value| {
        v.as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or("<unknown>")
            .to_string()
    };
    vec![
        json!(node["metadata"]["name"]),
        json!(status),
        json!(roles),
        json!(age(node, now)),
        json!(text(&info["kubeletVersion"])),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(text(&info["osImage"])),
        json!(text(&info["kernelVersion"])),
        json!(text(&info["containerRuntimeVersion"])),
    ]
}

fn cells(columns: Columns, object: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let name = json!(object["metadata"]["name"]);
    match columns {
        Columns::Node => node_cells(object, now),
        Columns::Namespace => {
            let phase = object["status"]["phase"].as_str().unwrap_or("Active");
            vec![name, json!(phase), json!(age(object, now))]
        }
        Columns::ConfigMap => {
            let count = ["data", "binaryData"]
                .iter()
                .map(|f| object[*f].as_object().map_or(0, |m| m.len()))
                .sum::<usize>();
            vec![name, json!(count), json!(age(object, now))]
        }
        Columns::Secret => {
            let count = object["data"].as_object().map_or(0, |m| m.len());
            let kind = object["type"].as_str().unwrap_or("Opaque");
            vec![name, json!(kind), json!(count), json!(age(object, now))]
        }
        Columns::Pod => pod_cells(object, now),
        Columns::Deployment => {
            let [containers, images, selector] = template_cells(object);
            let status = &object["status"];
            let desired = object["spec"]["replicas"].as_i64().unwrap_or(1);
            vec![
                name,
                json!(format!("{}/{desired}", int(&status["readyReplicas"]))),
                json!(int(&status["updatedReplicas"])),
                json!(int(&status["availableReplicas"])),
                json!(age(object, now)),
                containers,
                images,
                selector,
            ]
        }
        Columns::ReplicaSet => {
            let [containers, images, selector] = template_cells(object);
            let status = &object["status"];
            vec![
                name,
                json!(object["spec"]["replicas"].as_i64().unwrap_or(1)),
                json!(int(&status["replicas"])),
                json!(int(&status["readyReplicas"])),
                json!(age(object, now)),
                containers,
                images,
                selector,
            ]
        }
        Columns::Job => job_cells(object, now),
        Columns::CronJob => {
            let job = json!({"spec": object["spec"]["jobTemplate"]["spec"]});
            let [containers, images, selector] = template_cells(&job);
            let spec = &object["spec"];
            let last = object["status"]["lastScheduleTime"]
                .as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map_or_else(
                    || "<none>".to_string(),
                    |t| human_duration((now - t.with_timezone(&Utc)).num_seconds()),
                );
            vec![
                name,
                json!(spec["schedule"].as_str().unwrap_or_default()),
                json!(spec["timeZone"].as_str().unwrap_or("<none>")),
                json!(spec["suspend"].as_bool().unwrap_or(false)),
                json!(object["status"]["active"].as_array().map_or(0, Vec::len)),
                json!(last),
                json!(age(object, now)),
                containers,
                images,
                selector,
            ]
        }
        Columns::DaemonSet => {
            let [containers, images, selector] = template_cells(object);
            let status = &object["status"];
            let node_selector = object["spec"]["template"]["spec"]["nodeSelector"]
                .as_object()
                .filter(|m| !m.is_empty())
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_else(|| "<none>".into());
            vec![
                name,
                json!(int(&status["desiredNumberScheduled"])),
                json!(int(&status["currentNumberScheduled"])),
                json!(int(&status["numberReady"])),
                json!(int(&status["updatedNumberScheduled"])),
                json!(int(&status["numberAvailable"])),
                json!(node_selector),
                json!(age(object, now)),
                containers,
                images,
                selector,
            ]
        }
        Columns::StatefulSet => {
            let [containers, images, _] = template_cells(object);
            let desired = object["spec"]["replicas"].as_i64().unwrap_or(1);
            vec![
                name,
                json!(format!(
                    "{}/{desired}",
                    int(&object["status"]["readyReplicas"])
                )),
                json!(age(object, now)),
                containers,
                images,
            ]
        }
        Columns::Event => event_cells(object, now),
        Columns::Service => {
            let mut row = services::service_cells(object).to_vec();
            row.push(json!(age(object, now)));
            let selector = object["spec"]["selector"]
                .as_object()
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_else(|| "<none>".into());
            row.push(json!(selector));
            row
        }
        Columns::Endpoints => vec![
            name,
            json!(services::endpoints_cell(object)),
            json!(age(object, now)),
        ],
        Columns::EndpointSlice => {
            let [address_type, ports, endpoints] = services::slice_cells(object);
            vec![
                name,
                address_type,
                ports,
                endpoints,
                json!(age(object, now)),
            ]
        }
        Columns::PersistentVolumeClaim => {
            let bound = object["status"]["phase"] == "Bound";
            let shown = |v: &Value| if bound { text(v) } else { String::new() };
            let status = if object["metadata"]["deletionTimestamp"].is_null() {
                text(&object["status"]["phase"])
            } else {
                "Terminating".into()
            };
            vec![
                name,
                json!(status),
                json!(shown(&object["spec"]["volumeName"])),
                json!(shown(&object["status"]["capacity"]["storage"])),
                json!(if bound {
                    access_modes(&object["status"]["accessModes"])
                } else {
                    String::new()
                }),
                json!(text(&object["spec"]["storageClassName"])),
                json!("<unset>"),
                json!(age(object, now)),
                json!(text(&object["spec"]["volumeMode"])),
            ]
        }
        Columns::PersistentVolume => {
            let claim = &object["spec"]["claimRef"];
            let claim = if claim.is_object() {
                format!("{}/{}", text(&claim["namespace"]), text(&claim["name"]))
            } else {
                String::new()
            };
            vec![
                name,
                json!(text(&object["spec"]["capacity"]["storage"])),
                json!(access_modes(&object["spec"]["accessModes"])),
                json!(text(&object["spec"]["persistentVolumeReclaimPolicy"])),
                json!(if object["metadata"]["deletionTimestamp"].is_null() {
                    text(&object["status"]["phase"])
                } else {
                    "Terminating".into()
                }),
                json!(claim),
                json!(text(&object["spec"]["storageClassName"])),
                json!("<unset>"),
                json!(text(&object["status"]["reason"])),
                json!(age(object, now)),
                json!(text(&object["spec"]["volumeMode"])),
            ]
        }
        Columns::StorageClass => {
            let default = object["metadata"]["annotations"]
                [crate::model::storage::DEFAULT_CLASS_ANNOTATION]
                == "true";
            let shown = if default {
                format!("{} (default)", text(&object["metadata"]["name"]))
            } else {
                text(&object["metadata"]["name"])
            };
            vec![
                json!(shown),
                json!(text(&object["provisioner"])),
                json!(text(&object["reclaimPolicy"])),
                json!(text(&object["volumeBindingMode"])),
                json!(object["allowVolumeExpansion"]
                    .as_bool()
                    .unwrap_or(false)
                    .to_string()),
                json!(age(object, now)),
            ]
        }
        Columns::ControllerRevision => vec![
            name,
            json!(controller_name(object)),
            json!(int(&object["revision"])),
            json!(age(object, now)),
        ],
        Columns::PodDisruptionBudget => {
            let shown = |v: &Value| match v {
                Value::Null => "N/A".to_string(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            vec![
                name,
                json!(shown(&object["spec"]["minAvailable"])),
                json!(shown(&object["spec"]["maxUnavailable"])),
                json!(int(&object["status"]["disruptionsAllowed"])),
                json!(age(object, now)),
            ]
        }
    }
}

/// kubectl's CONTROLLER of a ControllerRevision: `statefulset.apps/web`, or `<none>`.
fn controller_name(object: &Value) -> String {
    let Some(owner) = object["metadata"]["ownerReferences"]
        .as_array()
        .and_then(|refs| refs.iter().find(|r| r["controller"] == json!(true)))
    else {
        return "<none>".into();
    };
    let api_version = owner["apiVersion"].as_str().unwrap_or_default();
    let kind = owner["kind"].as_str().unwrap_or_default().to_lowercase();
    let kind = match api_version.rsplit_once('/') {
        Some((group, _)) if !group.is_empty() => format!("{kind}.{group}"),
        _ => kind,
    };
    format!("{kind}/{}", text(&owner["name"]))
}

/// A string field, or empty.
fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// kubectl's short access modes: `RWO,RWOP`.
fn access_modes(modes: &Value) -> String {
    modes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|m| match m {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn row_object(object: &Value, include: IncludeObject) -> Option<Value> {
    match include {
        IncludeObject::None => None,
        IncludeObject::Object => Some(object.clone()),
        IncludeObject::Metadata => Some(json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": object["metadata"],
        })),
    }
}

/// A Table of `objects` of kind `info`.
pub fn table(
    info: &ResourceInfo,
    api_version: &str,
    objects: &[Value],
    resource_version: &str,
    include: IncludeObject,
    now: DateTime<Utc>,
) -> Value {
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut row = json!({"cells": cells(info.columns, o, now)});
            if let Some(obj) = row_object(o, include) {
                row["object"] = obj;
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": api_version,
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": column_definitions(info.columns),
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn human_durations_match_kubernetes() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(125), "2m5s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 240), "3h4m");
        assert_eq!(human_duration(20 * 3600), "20h");
        assert_eq!(human_duration(50 * 3600), "2d2h");
        assert_eq!(human_duration(400 * 86400), "400d");
        assert_eq!(human_duration(3 * 365 * 86400), "3y");
    }

    fn pod(status: Value) -> Value {
        json!({
            "metadata": {"name": "p", "creationTimestamp": "2024-05-01T10:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": status,
        })
    }

    fn status_cells(status: Value) -> Vec<Value> {
        let now = DateTime::parse_from_rfc3339("2024-05-01T10:05:00Z")
            .unwrap()
            .with_timezone(&Utc);
        pod_cells(&pod(status), now)
    }

    #[test]
    fn pod_rows_follow_kubectl_print_pod() {
        let running = json!({"running": {"startedAt": "2024-05-01T10:00:01Z"}});
        let cells = status_cells(json!({
            "phase": "Running", "podIP": "10.0.0.9",
            "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 0, "state": running},
                {"name": "b", "ready": false, "restartCount": 3,
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                 "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2024-05-01T10:04:50Z"}}},
            ],
        }));
        assert_eq!(
            cells,
            vec![
                json!("p"),
                json!("1/2"),
                json!("CrashLoopBackOff"),
                json!("3 (10s ago)"),
                json!("5m"),
                json!("10.0.0.9"),
                json!("n1"),
                json!("<none>"),
                json!("<none>"),
            ]
        );
        let cells = status_cells(json!({"phase": "Pending", "containerStatuses": [
            {"name": "a", "state": {"waiting": {"reason": "ContainerCreating"}}},
        ]}));
        assert_eq!(cells[2], "ContainerCreating");
        let cells = status_cells(json!({"phase": "Succeeded", "containerStatuses": [
            {"name": "a", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
        ]}));
        assert_eq!((&cells[1], &cells[2]), (&json!("0/2"), &json!("Completed")));
        let cells = status_cells(json!({"phase": "Failed", "containerStatuses": [
            {"name": "a", "state": {"terminated": {"exitCode": 2}}},
        ]}));
        assert_eq!(cells[2], "ExitCode:2");
        let cells = status_cells(json!({"phase": "Pending", "initContainerStatuses": [
            {"name": "i", "state": {"running": {}}},
        ]}));
        assert_eq!(cells[2], "Init:0/0");
        assert_eq!(status_cells(json!({"phase": "Pending"}))[2], "Pending");
        let mut deleting = pod(json!({"phase": "Running"}));
        deleting["metadata"]["deletionTimestamp"] = json!("2024-05-01T10:04:00Z");
        assert_eq!(pod_cells(&deleting, Utc::now())[2], "Terminating");
    }

    #[test]
    fn init_and_sidecar_rows_follow_kubectl_print_pod() {
        let now = DateTime::parse_from_rfc3339("2024-05-01T10:05:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let cells = |status: Value| {
            let mut p = pod(status);
            p["spec"]["containers"] = json!([{"name": "a"}]);
            p["spec"]["initContainers"] =
                json!([{"name": "i1"}, {"name": "s", "restartPolicy": "Always"}, {"name": "i2"}]);
            let c = pod_cells(&p, now);
            (c[1].clone(), c[2].clone(), c[3].clone())
        };
        let done =
            json!({"name": "i1", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}});
        let waiting = |name: &str, reason: &str| json!({"name": name, "state": {"waiting": {"reason": reason}}});
        let sidecar_up = json!({"name": "s", "state": {"running": {}}, "started": true, "ready": true, "restartCount": 1,
            "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2024-05-01T10:04:00Z"}}});
        let app_waiting = json!([waiting("a", "PodInitializing")]);
        let (ready, status, _) = cells(json!({"phase": "Pending", "initContainerStatuses": [
            waiting("i1", "PodInitializing"), waiting("s", "PodInitializing"), waiting("i2", "PodInitializing")],
            "containerStatuses": app_waiting}));
        assert_eq!((ready, status), (json!("0/2"), json!("Init:0/3")));
        let (ready, status, restarts) = cells(
            json!({"phase": "Pending", "initContainerStatuses": [
            done, sidecar_up, {"name": "i2", "state": {"running": {}}}], "containerStatuses": app_waiting}),
        );
        assert_eq!((ready, status), (json!("1/2"), json!("Init:2/3")));
        assert_eq!(restarts, "1 (60s ago)");
        let (_, status, _) = cells(json!({"phase": "Pending", "initContainerStatuses": [
            done, sidecar_up, {"name": "i2", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}],
            "containerStatuses": app_waiting}));
        assert_eq!(status, "Init:Error");
        let (_, status, restarts) = cells(json!({"phase": "Pending", "initContainerStatuses": [
            done, sidecar_up, {"name": "i2", "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}],
            "containerStatuses": app_waiting}));
        assert_eq!(
            (status, restarts),
            (json!("Init:CrashLoopBackOff"), json!("4 (60s ago)"))
        );
        // Initialized: the app containers' reasons, and only the sidecars' restarts.
        let init_done = json!([done, sidecar_up, {"name": "i2", "restartCount": 3,
            "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]);
        let initialized = json!([{"type": "Initialized", "status": "True"}]);
        let (ready, status, restarts) =
            cells(json!({"phase": "Pending", "conditions": initialized,
            "initContainerStatuses": init_done, "containerStatuses": app_waiting}));
        assert_eq!(
            (ready, status, restarts),
            (json!("1/2"), json!("PodInitializing"), json!("1 (60s ago)"))
        );
        let (ready, status, _) = cells(json!({"phase": "Running", "conditions": initialized,
            "initContainerStatuses": init_done,
            "containerStatuses": [{"name": "a", "ready": true, "state": {"running": {}}}]}));
        assert_eq!((ready, status), (json!("2/2"), json!("Running")));
    }

    #[test]
    fn event_rows_name_the_object_and_source() {
        let now = DateTime::parse_from_rfc3339("2024-05-01T10:05:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let event = json!({
            "metadata": {"name": "p.1"},
            "involvedObject": {"kind": "Pod", "name": "web-1"},
            "type": "Warning", "reason": "BackOff", "message": " Back-off restarting \n",
            "source": {"component": "kubelet", "host": "n1"},
            "firstTimestamp": "2024-05-01T10:00:00Z", "lastTimestamp": "2024-05-01T10:04:30Z",
        });
        assert_eq!(
            event_cells(&event, now),
            vec![
                json!("30s"),
                json!("Warning"),
                json!("BackOff"),
                json!("pod/web-1"),
                json!(""),
                json!("kubelet, n1"),
                json!("Back-off restarting"),
                json!("5m"),
                json!("1"),
                json!("p.1"),
            ]
        );
        assert_eq!(
            column_definitions(Columns::Event).len(),
            event_cells(&event, now).len()
        );
        for columns in [
            Columns::Pod,
            Columns::Deployment,
            Columns::ReplicaSet,
            Columns::Job,
            Columns::CronJob,
            Columns::DaemonSet,
            Columns::StatefulSet,
        ] {
            let object = json!({"metadata": {"name": "x"}, "spec": {}, "status": {}});
            assert_eq!(
                column_definitions(columns).len(),
                cells(columns, &object, now).len(),
                "{columns:?}"
            );
        }
    }

    #[test]
    fn secret_rows_show_type_and_data_count() {
        let now = DateTime::parse_from_rfc3339("2024-05-01T10:05:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let secret = json!({
            "metadata": {"name": "regcred", "creationTimestamp": "2024-05-01T10:00:00Z"},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": "e30="},
        });
        assert_eq!(
            cells(Columns::Secret, &secret, now),
            vec![
                json!("regcred"),
                json!("kubernetes.io/dockerconfigjson"),
                json!(1),
                json!("5m")
            ]
        );
        let untyped = json!({"metadata": {"name": "x"}});
        assert_eq!(
            cells(Columns::Secret, &untyped, now)[1..3],
            [json!("Opaque"), json!(0)]
        );
        assert_eq!(column_definitions(Columns::Secret).len(), 4);
    }

    #[test]
    fn negotiates_table_from_kubectl_accept() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "accept",
            HeaderValue::from_static(
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json",
            ),
        );
        assert_eq!(negotiate(&headers), Some("meta.k8s.io/v1"));
        headers.insert("accept", HeaderValue::from_static("application/json"));
        assert_eq!(negotiate(&headers), None);
    }
}
