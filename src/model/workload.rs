//! Workload records exchanged between roles through the replicated documents: where the
//! scheduler leader bound a pod ([`Binding`], cluster document) and what the node running it
//! observed ([`PodStatusRecord`], [`SchedulingRecord`] and events, status documents).
//! See `docs/workloads.md` for who writes which key.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Resource names (the backend's `resource` strings) of the workload kinds.
pub const PODS: &str = "pods";
pub const REPLICASETS: &str = "replicasets.apps";
pub const DEPLOYMENTS: &str = "deployments.apps";
pub const JOBS: &str = "jobs.batch";
pub const DAEMONSETS: &str = "daemonsets.apps";
pub const CRONJOBS: &str = "cronjobs.batch";
pub const STATEFULSETS: &str = "statefulsets.apps";
/// The history of StatefulSets' and DaemonSets' templates (`sched::revisions`).
pub const CONTROLLER_REVISIONS: &str = "controllerrevisions.apps";

/// Annotation on controller-made pods: the replica slot (`0..replicas`) the pod fills.
pub const SLOT_ANNOTATION: &str = "shoal.io/slot";
/// Label on ReplicaSets and their pods: hash of the Deployment's pod template.
pub const TEMPLATE_HASH_LABEL: &str = "pod-template-hash";
/// Label every node carries: its name (what `topologyKey: kubernetes.io/hostname` means).
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// Where the scheduler leader placed one pod. Cluster document, key `bind/<ns>/<pod>`; written
/// only by an agent that believed itself the leader of `epoch`. A new placement of the same pod
/// replaces the value as a whole; concurrent placements (two leaders) resolve to the same
/// winner on every replica, and the node that lost stops its copy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The node that runs the pod.
    pub node: String,
    /// Identity of this placement (fresh for every placement). The kubelet keys its sandbox by
    /// it and status records carry it, so a pod moved away and back is never confused with
    /// its earlier copy.
    pub id: String,
    /// `metadata.uid` of the pod object placed; a binding for another uid is stale.
    pub pod_uid: String,
    /// The leader's epoch, view hash and name when it placed the pod.
    pub epoch: u64,
    pub view: u64,
    pub leader: String,
    pub at: DateTime<Utc>,
}

/// What a node observed of one pod it runs. Status document of that node, key
/// `pod/<ns>/<name>`. Written only on transitions (phase, container state, restart count,
/// readiness), never on a timer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PodStatusRecord {
    /// [`Binding::id`] this status belongs to (for pods with `spec.nodeName` set by the user:
    /// the pod uid).
    pub binding: String,
    pub pod_uid: String,
    /// A Kubernetes `PodStatus` as JSON (phase, conditions, containerStatuses, podIP, hostIP,
    /// startTime, reason, message).
    pub status: serde_json::Value,
}

/// Where a pod runs now, as `(node, placement id)`: its binding when that is for this pod's
/// uid, else the node the user named in `spec.nodeName` (placement id = the pod uid), else
/// nowhere.
pub fn placement(
    pod_uid: &str,
    user_node: &str,
    binding: Option<&Binding>,
) -> Option<(String, String)> {
    match binding.filter(|b| b.pod_uid == pod_uid) {
        Some(b) => Some((b.node.clone(), b.id.clone())),
        None if !user_node.is_empty() => Some((user_node.to_string(), pod_uid.to_string())),
        None => None,
    }
}

/// Every node's status record of each pod, by `(namespace, name)`: `(node, record)` pairs, the
/// records shared with the status documents' decode cache.
pub type PodStatusRecords =
    std::collections::BTreeMap<(String, String), Vec<(String, std::sync::Arc<PodStatusRecord>)>>;

/// The status record of a pod's current placement among `(node, record)` pairs from every
/// status document: the one written by the placed node for that placement id and pod uid.
/// Any other record is stale (an earlier placement, another uid) and ignored.
pub fn current_record<'a, R>(
    pod_uid: &str,
    placement: Option<&(String, String)>,
    records: impl IntoIterator<Item = &'a (String, R)>,
) -> Option<&'a PodStatusRecord>
where
    R: std::ops::Deref<Target = PodStatusRecord> + 'a,
{
    let (node, id) = placement?;
    records
        .into_iter()
        .find(|(n, r)| n == node && &r.binding == id && r.pod_uid == pod_uid)
        .map(|(_, r)| &**r)
}

/// From a Kubernetes `PodStatus` (JSON): `None` when the pod is not Ready, else
/// `Some(since)` with the Ready condition's `lastTransitionTime` (`None` if it has none).
pub fn ready_since(status: &serde_json::Value) -> Option<Option<DateTime<Utc>>> {
    let ready = status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready" && c["status"] == "True")?;
    Some(
        ready["lastTransitionTime"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc)),
    )
}

/// Why the leader could not place a pod. Status document of the leader that tried, key
/// `sched/<ns>/<name>`; deleted once the pod is bound. Shown as the pod's `PodScheduled=False`
/// condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulingRecord {
    pub pod_uid: String,
    /// `Unschedulable`.
    pub reason: String,
    /// e.g. `0/3 nodes are available: 3 Insufficient cpu.`
    pub message: String,
    pub at: DateTime<Utc>,
}

/// The object an event is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvolvedObject {
    /// `v1`, `apps/v1`.
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// The `type` of a Kubernetes Event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// Declares [`EventReason`] from one list: a variant's name is its Kubernetes spelling.
macro_rules! event_reasons {
    ($($reason:ident,)+) => {
        /// The `reason` of a Kubernetes Event. A variant's name is its Kubernetes spelling
        /// ([`EventReason::as_str`]), so `kubectl get events` shows what Kubernetes shows.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum EventReason {
            $($reason,)+
        }

        impl EventReason {
            pub const ALL: &'static [EventReason] = &[$(EventReason::$reason,)+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(EventReason::$reason => stringify!($reason),)+
                }
            }
        }
    };
}

event_reasons! {
    // default-scheduler
    Scheduled,
    FailedScheduling,
    // deployment-, replicaset-, daemonset-, job- and cronjob-controller
    ScalingReplicaSet,
    SuccessfulCreate,
    SuccessfulDelete,
    FailedCreate,
    TooManyMissedTimes,
    JobAlreadyActive,
    // taint manager
    TaintManagerEviction,
    // kubelet: sandbox and network
    SandboxChanged,
    FailedCreatePodSandBox,
    NetworkNotReady,
    // kubelet: images
    Pulling,
    Pulled,
    ErrImageNeverPull,
    // kubelet: containers
    Created,
    Started,
    Killing,
    Failed,
    BackOff,
    Unhealthy,
    FailedPreStopHook,
    InvalidEnvironmentVariableNames,
    // the leader's repair of Service allocation conflicts
    AllocationConflict,
    // the leader's local-path provisioner and the kubelet's volume mounts
    ProvisioningSucceeded,
    ProvisioningFailed,
    FailedMount,
}

impl std::fmt::Display for EventReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Builds a Kubernetes `v1` Event reported by `node`'s
/// `component` (`scheduler`, `kubelet`, `deployment-controller`...). Returns its name (unique
/// per object, reason and time) and the object to store under `keys::event`.
pub fn new_event(
    involved: &InvolvedObject,
    event_type: EventType,
    reason: EventReason,
    message: &str,
    component: &str,
    node: &str,
    now: DateTime<Utc>,
) -> (String, serde_json::Value) {
    let name = format!(
        "{}.{:x}",
        involved.name,
        now.timestamp_nanos_opt().unwrap_or_default()
    );
    let ts = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let micro = now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let event = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": name,
            "namespace": involved.namespace,
            "uid": uuid::Uuid::new_v4().to_string(),
            "creationTimestamp": ts,
        },
        "involvedObject": {
            "apiVersion": involved.api_version,
            "kind": involved.kind,
            "namespace": involved.namespace,
            "name": involved.name,
            "uid": involved.uid,
        },
        "type": event_type.as_str(),
        "reason": reason.as_str(),
        "message": message,
        "source": {"component": component, "host": node},
        "reportingComponent": component,
        "reportingInstance": node,
        "firstTimestamp": ts,
        "lastTimestamp": ts,
        "eventTime": micro,
        "count": 1,
    });
    (name, event)
}

/// Key prefixes.
pub mod keys {
    /// Cluster document: `bind/<ns>/<pod>` → [`super::Binding`].
    pub const BINDING_PREFIX: &str = "bind/";
    /// Status documents: `pod/<ns>/<name>` → [`super::PodStatusRecord`].
    pub const POD_STATUS_PREFIX: &str = "pod/";
    /// Status documents: `sched/<ns>/<name>` → [`super::SchedulingRecord`].
    pub const SCHEDULING_PREFIX: &str = "sched/";
    /// Status documents: `event/<ns>/<name>` → a Kubernetes `Event` as JSON.
    pub const EVENT_PREFIX: &str = "event/";

    pub fn binding(ns: &str, pod: &str) -> String {
        format!("{BINDING_PREFIX}{ns}/{pod}")
    }
    pub fn pod_status(ns: &str, pod: &str) -> String {
        format!("{POD_STATUS_PREFIX}{ns}/{pod}")
    }
    pub fn scheduling(ns: &str, pod: &str) -> String {
        format!("{SCHEDULING_PREFIX}{ns}/{pod}")
    }
    pub fn event(ns: &str, name: &str) -> String {
        format!("{EVENT_PREFIX}{ns}/{name}")
    }
    /// `(ns, name)` of a key under `prefix`.
    pub fn split<'a>(key: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
        key.strip_prefix(prefix)?.split_once('/')
    }
}

#[cfg(test)]
mod tests {
    use super::keys;

    #[test]
    fn keys_split_back() {
        let k = keys::binding("default", "web-abcde");
        assert_eq!(
            keys::split(&k, keys::BINDING_PREFIX),
            Some(("default", "web-abcde"))
        );
        assert_eq!(keys::split("pod/x", keys::POD_STATUS_PREFIX), None);
    }

    #[test]
    fn event_reasons_are_spelled_as_kubernetes_spells_them() {
        use super::{new_event, EventReason, EventType, InvolvedObject};
        for r in EventReason::ALL {
            assert_eq!(r.as_str(), format!("{r:?}"));
            assert_eq!(r.to_string(), r.as_str());
        }
        assert_eq!(
            EventReason::FailedCreatePodSandBox.as_str(),
            "FailedCreatePodSandBox"
        );
        let involved = InvolvedObject {
            api_version: "v1".into(),
            kind: "Pod".into(),
            namespace: "default".into(),
            name: "web".into(),
            uid: "u".into(),
        };
        let (_, event) = new_event(
            &involved,
            EventType::Warning,
            EventReason::BackOff,
            "m",
            "kubelet",
            "n1",
            chrono::DateTime::UNIX_EPOCH,
        );
        assert_eq!(event["reason"], "BackOff");
        assert_eq!(event["type"], "Warning");
    }
}
