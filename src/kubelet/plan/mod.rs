//! The kubelet's pure planner: from the pods this node should run, what its runtime observes,
//! the status it last recorded and the time, the actions to take (create a sandbox, start,
//! kill, remove) and the status records and events to write. Deterministic: no clock, no I/O.
//!
//! **Invariant**: a copy is stopped only because the merged document says so (the pod is not
//! desired here any more: deleted, bound elsewhere, another uid) — the planner never sees the
//! membership view at all.

pub mod image;
pub mod outcome;
pub mod probe;
mod status;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, Utc};
use k8s_openapi::api::core::v1::{Container, Pod};

use crate::model::backoff::Backoff;
use crate::model::observed::{AttemptState, ObservedAttempt, ObservedPod};
use crate::model::workload::{EventReason, EventType, PodStatusRecord};

pub use outcome::{Ledger, Outcome, PullRecord};
pub use status::{container_status, pod_phase, pod_phase_with_init};

/// Container restarts: the first is immediate, then 10 s doubling up to 5 min (Kubernetes').
pub const RESTART_BACKOFF: Backoff = Backoff::KUBELET;
/// Seconds between repeated SIGKILLs of a copy being stopped.
pub const KILL_REPEAT: i64 = 5;
/// A container that ran this long resets its back-off.
pub const BACKOFF_RESET: i64 = 600;

/// A pod this node should run, keyed by its binding id (or uid for `spec.nodeName` pods).
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredPod {
    pub key: String,
    pub pod: Pod,
}

impl DesiredPod {
    pub fn namespace(&self) -> String {
        self.pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into())
    }
    pub fn name(&self) -> String {
        self.pod.metadata.name.clone().unwrap_or_default()
    }
    pub fn uid(&self) -> String {
        self.pod.metadata.uid.clone().unwrap_or_default()
    }
    /// `spec.hostname` and `spec.subdomain`, where set (non-empty).
    pub fn host_names(&self) -> (Option<String>, Option<String>) {
        let spec = self.pod.spec.as_ref();
        let set = |v: Option<&String>| v.filter(|s| !s.is_empty()).cloned();
        (
            set(spec.and_then(|s| s.hostname.as_ref())),
            set(spec.and_then(|s| s.subdomain.as_ref())),
        )
    }
    /// `spec.hostNetwork`.
    pub fn host_network(&self) -> bool {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false)
    }
    /// `spec.dnsPolicy` and `spec.dnsConfig`.
    pub fn dns(&self) -> crate::model::network::PodDns {
        let spec = self.pod.spec.as_ref();
        let config = spec.and_then(|s| s.dns_config.as_ref());
        crate::model::network::PodDns {
            policy: spec.and_then(|s| s.dns_policy.clone()).unwrap_or_default(),
            nameservers: config
                .and_then(|c| c.nameservers.clone())
                .unwrap_or_default(),
            searches: config.and_then(|c| c.searches.clone()).unwrap_or_default(),
            options: config
                .and_then(|c| c.options.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|o| Some((o.name.clone().filter(|n| !n.is_empty())?, o.value.clone())))
                .collect(),
        }
    }
    pub fn grace_seconds(&self) -> u64 {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .and_then(|g| u64::try_from(g).ok())
            .unwrap_or(30)
    }
    /// The grace period of its deletion in progress (`metadata.deletionTimestamp` set: the
    /// pod is terminating), `metadata.deletionGracePeriodSeconds` or else its own; `None`
    /// while it is not being deleted.
    pub fn deletion_grace(&self) -> Option<i64> {
        self.pod.metadata.deletion_timestamp.as_ref()?;
        let grace = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .unwrap_or_else(|| i64::try_from(self.grace_seconds()).unwrap_or(30));
        // Bounded: any integer may come through the API, and the stop's timers add it.
        Some(grace.clamp(0, i64::from(u32::MAX)))
    }
    pub fn is_terminating(&self) -> bool {
        self.pod.metadata.deletion_timestamp.is_some()
    }
    pub fn restart_policy(&self) -> &str {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            .unwrap_or("Always")
    }
    /// The app containers (`spec.containers`).
    pub fn containers(&self) -> &[Container] {
        self.pod
            .spec
            .as_ref()
            .map(|s| s.containers.as_slice())
            .unwrap_or(&[])
    }
    /// The init containers (`spec.initContainers`), in their order; sidecars among them.
    pub fn init_containers(&self) -> &[Container] {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_deref())
            .unwrap_or(&[])
    }
    /// Every container the kubelet runs for the pod: the init containers in their order,
    /// then the app containers. Names are unique across both (admission).
    pub fn all_containers(&self) -> impl Iterator<Item = &Container> {
        self.init_containers().iter().chain(self.containers())
    }
    /// The containers whose probes run: the app containers and the sidecars (admission
    /// refuses probes on the other init containers).
    pub fn probed_containers(&self) -> impl Iterator<Item = &Container> {
        self.init_containers()
            .iter()
            .filter(|c| is_sidecar(c))
            .chain(self.containers())
    }
}

/// Whether an init container is a native sidecar (`restartPolicy: Always`): started in its
/// init order, kept running and restarted whatever the pod's policy, stopped after the app
/// containers.
pub fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Signal {
    Term,
    Kill,
}

impl Signal {
    pub fn as_runc(self) -> &'static str {
        match self {
            Signal::Term => "TERM",
            Signal::Kill => "KILL",
        }
    }
}

/// The object an event is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventTarget {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    CreateSandbox {
        key: String,
    },
    StartContainer {
        key: String,
        container: String,
        restart: u32,
    },
    /// Signal an attempt. With `Signal::Term`, the container's preStop hook (if any) runs
    /// first, bounded by `grace` seconds (the whole stop's budget, as in Kubernetes).
    KillContainer {
        key: String,
        container: String,
        restart: u32,
        signal: Signal,
        grace: i64,
        pre_stop: Option<Result<probe::Handler, String>>,
    },
    RemovePod {
        key: String,
    },
    /// Stop the sandbox (network released) and leave the containers: they are killed and the
    /// pod gets a new sandbox in the next rounds. For a pod whose address is outside the
    /// node's current pod CIDR.
    StopSandbox {
        key: String,
    },
    WriteStatus {
        namespace: String,
        name: String,
        record: PodStatusRecord,
    },
    DeleteStatus {
        namespace: String,
        name: String,
    },
    /// A terminating pod's containers have all stopped here: remove the pod object from the
    /// cluster document (if it still is this uid, being deleted) with its binding, which
    /// ends its graceful deletion (`docs/workloads.md`, "Deleting pods").
    FinalizeDeletion {
        namespace: String,
        name: String,
        uid: String,
    },
    Event {
        target: EventTarget,
        event_type: EventType,
        reason: EventReason,
        message: String,
    },
}

/// Whether a container's image can be used, as the kubelet's pull tracker reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageState {
    Ready,
    /// Being pulled: the container waits as `ContainerCreating`.
    Pulling,
    /// Cannot be used now: the waiting reason (`ErrImagePull`, `ImagePullBackOff`,
    /// `ErrImageNeverPull`, `InvalidImageName`) and message.
    Unavailable {
        reason: String,
        message: String,
    },
}

/// Everything one planning round sees.
pub struct Inputs<'a> {
    pub desired: &'a BTreeMap<String, DesiredPod>,
    pub observed: &'a BTreeMap<String, ObservedPod>,
    /// The image of each container, by `(pod key, container name)`: ready, being pulled, or
    /// unavailable (a container missing here waits as if its image were being pulled).
    pub images: &'a BTreeMap<(String, String), ImageState>,
    /// This node's status records, by `(namespace, name)`.
    pub recorded: &'a BTreeMap<(String, String), PodStatusRecord>,
    /// Actions still being carried out: pod keys (sandbox, removal) and `key/container`
    /// (start, kill). No new action for what is busy this round.
    pub busy: &'a BTreeSet<String>,
    pub node_ip: &'a str,
    /// Whether pods get the CNI network (then a sandbox needs the node's pod CIDR).
    pub pod_network: bool,
    /// The node's current pod CIDR (`None` until it holds one).
    pub pod_cidr: Option<&'a str>,
    /// Sandbox operations that failed, by pod key ([`Ledger::sandbox_failures`]).
    pub sandbox_failures: &'a BTreeMap<String, SandboxFailure>,
    /// The probes of the running attempts and their results so far.
    pub probes: &'a probe::Tracker,
    pub now: DateTime<Utc>,
}

/// A failed sandbox operation, as the [`Ledger`] counts it: retried after
/// [`sandbox_retry_delay`], its message shown on the waiting containers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxFailure {
    pub message: String,
    pub at: DateTime<Utc>,
    /// Failures in a row.
    pub attempts: u32,
}

/// Longest wait between two sandbox creation attempts.
pub const MAX_SANDBOX_RETRY: i64 = 30;

/// Sandbox retries: 1 s doubling up to [`MAX_SANDBOX_RETRY`].
pub const SANDBOX_BACKOFF: Backoff = Backoff {
    initial: 1,
    max: MAX_SANDBOX_RETRY,
};

/// Seconds before the next sandbox attempt after `attempts` failures in a row: 1, 2, 4 … 30.
pub fn sandbox_retry_delay(attempts: u32) -> i64 {
    SANDBOX_BACKOFF.after(attempts.max(1))
}

/// The waiting message of a pod whose node has no pod CIDR yet.
pub fn network_not_ready() -> String {
    format!("network not ready: {}", crate::model::observed::NO_POD_CIDR)
}

/// The planner's memory between rounds (rebuilt from the restart counts after an agent
/// restart): current back-off per container, when each stopping pod's next SIGKILL is due
/// and when each container killed for a failed probe began stopping, and when each failing
/// probe was last reported.
#[derive(Clone, Debug, Default)]
pub struct Planner {
    backoff: BTreeMap<(String, String), i64>,
    /// Pods being stopped (no longer desired here, or terminating): when the next SIGKILL
    /// is due, and whether one was sent already.
    stopping: BTreeMap<String, (DateTime<Utc>, bool)>,
    /// Attempts being killed for a failed liveness/startup probe: (pod key, container,
    /// restart) → when the stop began and its grace period.
    container_stops: BTreeMap<(String, String, u32), (DateTime<Utc>, i64)>,
    /// Attempts of stopping pods that got their preStop + SIGTERM: (pod key, container,
    /// restart).
    signalled: BTreeSet<(String, String, u32)>,
    /// Last `Unhealthy` event per (pod key, container, probe).
    unhealthy: BTreeMap<(String, String, probe::ProbeKind), DateTime<Utc>>,
}

/// The waiting message of the pod's first container (its first init container, if any) in a
/// status.
fn first_waiting_message(status: &serde_json::Value, desired: &DesiredPod) -> Option<String> {
    let first = desired.all_containers().next()?;
    status::container_entry(status, &first.name)?["state"]["waiting"]["message"]
        .as_str()
        .map(str::to_string)
}

/// Most sandbox creations queued or running at once on a node. Sandboxes beyond it wait for a
/// later round (each finished action wakes one), so a pod whose sandbox is ready gets its
/// containers started next instead of queueing behind every other pod's sandbox: with 60 pods
/// bound at once, the first ran only after all 60 sandboxes had been made.
pub const MAX_SANDBOX_STARTS: usize = 4;

/// Sandbox work queued or running for desired pods (busy under the pod's own key).
fn sandbox_work_in_flight(input: &Inputs) -> usize {
    input
        .desired
        .keys()
        .filter(|k| input.busy.contains(*k))
        .count()
}

/// Takes one unit of `budget`, if any is left.
fn take(budget: &mut usize) -> bool {
    let had = *budget > 0;
    *budget = budget.saturating_sub(1);
    had
}

/// The busy-set entry of a container action.
pub fn container_busy_key(key: &str, container: &str) -> String {
    format!("{key}/{container}")
}

/// Whether the pod or any of its containers has an action in flight.
fn pod_busy(busy: &BTreeSet<String>, key: &str) -> bool {
    let prefix = format!("{key}/");
    busy.contains(key)
        || busy
            .range(prefix.clone()..)
            .next()
            .is_some_and(|k| k.starts_with(&prefix))
}

/// The back-off after `restarts` restarts when nothing better is known.
pub fn backoff_for(restarts: u32) -> i64 {
    RESTART_BACKOFF.after(restarts)
}

fn next_backoff(current: i64) -> i64 {
    RESTART_BACKOFF.next(current)
}

/// Whether `policy` restarts a container that exited with `code`.
pub fn should_restart(policy: &str, code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => code != 0,
        _ => true,
    }
}

/// What the planner decided for one container this round.
pub(crate) struct ContainerPlan {
    /// Start this restart number now.
    pub start: Option<u32>,
    /// Waiting in back-off for this many seconds.
    pub backoff: Option<i64>,
    /// The image cannot be used: (waiting reason, message).
    pub image_missing: Option<(String, String)>,
    /// The image is being pulled.
    pub pulling: bool,
}

impl ContainerPlan {
    /// Nothing to do this round: waiting for its turn, or running, or exited for good.
    fn held() -> Self {
        ContainerPlan {
            start: None,
            backoff: None,
            image_missing: None,
            pulling: false,
        }
    }
}

/// The init containers' plans and whether the app containers may run.
struct InitPlan {
    plans: BTreeMap<String, ContainerPlan>,
    initialized: bool,
}

/// Whether the pod will run nothing more (its policy is not `Always`): every app container
/// exited for good, or a regular init container failed under `Never`.
fn pod_done(desired: &DesiredPod, observed: Option<&ObservedPod>) -> bool {
    let policy = desired.restart_policy();
    let Some(o) = observed.filter(|_| policy != "Always") else {
        return false;
    };
    let exit_code = |c: &Container| match o.containers.get(&c.name).map(|oc| &oc.latest.state) {
        Some(AttemptState::Exited(e)) => Some(e.exit_code),
        _ => None,
    };
    let init_failed = policy == "Never"
        && desired
            .init_containers()
            .iter()
            .filter(|c| !is_sidecar(c))
            .any(|c| exit_code(c).is_some_and(|code| code != 0));
    let apps_over = !desired.containers().is_empty()
        && desired
            .containers()
            .iter()
            .all(|c| exit_code(c).is_some_and(|code| !should_restart(policy, code)));
    init_failed || apps_over
}

impl Planner {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn plan(&mut self, input: &Inputs) -> Vec<Action> {
        let mut actions = Vec::new();
        // Sandbox work in flight (busy under a desired pod's own key) counts against the
        // budget, so a burst's sandboxes are made a few at a time and the containers of pods
        // whose sandbox is ready start without waiting behind all of them.
        let mut sandbox_budget = MAX_SANDBOX_STARTS.saturating_sub(sandbox_work_in_flight(input));
        for (key, desired) in input.desired {
            match desired.deletion_grace() {
                Some(grace) => self.plan_terminating(input, key, desired, grace, &mut actions),
                None => self.plan_desired(input, key, desired, &mut sandbox_budget, &mut actions),
            }
        }
        for (key, observed) in input.observed {
            if !input.desired.contains_key(key) {
                let grace = i64::try_from(observed.meta.grace_seconds).unwrap_or(30);
                self.plan_stop(input, key, observed, grace, &mut actions);
            }
        }
        self.stopping.retain(|k, _| {
            input.observed.contains_key(k)
                && input.desired.get(k).is_none_or(DesiredPod::is_terminating)
        });
        let stopping = &self.stopping;
        self.signalled.retain(|(k, _, _)| stopping.contains_key(k));
        self.backoff
            .retain(|(k, _), _| input.desired.contains_key(k));
        self.unhealthy
            .retain(|(k, _, _), _| input.desired.contains_key(k));
        self.container_stops.retain(|(k, c, r), _| {
            input
                .observed
                .get(k)
                .and_then(|o| o.containers.get(c))
                .is_some_and(|oc| {
                    oc.latest.restart == *r && !matches!(oc.latest.state, AttemptState::Exited(_))
                })
        });
        // Status records of pods no longer here.
        let here: BTreeSet<(String, String)> = input
            .desired
            .values()
            .map(|d| (d.namespace(), d.name()))
            .collect();
        for (ns, name) in input.recorded.keys() {
            if !here.contains(&(ns.clone(), name.clone())) {
                actions.push(Action::DeleteStatus {
                    namespace: ns.clone(),
                    name: name.clone(),
                });
            }
        }
        #[cfg(test)]
        check_invariants(input, &actions);
        actions
    }

    fn plan_desired(
        &mut self,
        input: &Inputs,
        key: &str,
        desired: &DesiredPod,
        sandbox_budget: &mut usize,
        actions: &mut Vec<Action>,
    ) {
        let busy = input.busy.contains(key);
        let observed = input.observed.get(key);
        let container_busy =
            |name: &str| busy || input.busy.contains(&container_busy_key(key, name));
        let target = EventTarget {
            namespace: desired.namespace(),
            name: desired.name(),
            uid: desired.uid(),
        };
        let recorded = input
            .recorded
            .get(&(target.namespace.clone(), target.name.clone()));
        let policy = desired.restart_policy();
        let init = self.plan_init(input, desired, observed, &container_busy, actions);
        let mut plans = init.plans;
        for c in desired.containers() {
            let plan = if init.initialized {
                let latest = observed
                    .and_then(|o| o.containers.get(&c.name))
                    .map(|oc| &oc.latest);
                self.plan_container(input, key, c, latest, policy, container_busy(&c.name))
            } else {
                // Held back until every init container is done.
                ContainerPlan::held()
            };
            plans.insert(c.name.clone(), plan);
        }

        let sandbox_alive = observed.is_some_and(|o| o.sandbox.is_some());
        let network = observed.and_then(|o| o.network.as_ref());
        // A hostNetwork pod uses the node's network: no attachment, no pod CIDR needed.
        let pod_network = input.pod_network && !desired.host_network();
        let attached = !pod_network || network.is_some_and(|n| n.address.is_some());
        // The address is from a CIDR the node no longer holds (it lost a claim race).
        let stale = pod_network
            && sandbox_alive
            && match (network, input.pod_cidr) {
                (Some(n), Some(cidr)) => n.address.is_some() && !n.within(cidr),
                _ => false,
            };
        let sandbox_ready = sandbox_alive && attached && !stale;
        let waiting_for_cidr = pod_network && input.pod_cidr.is_none() && !sandbox_ready;
        let failure = input.sandbox_failures.get(key);
        let retry_due = failure
            .is_none_or(|f| input.now >= f.at + Duration::seconds(sandbox_retry_delay(f.attempts)));
        let may_create = !waiting_for_cidr && retry_due;
        if !busy {
            let wants_start = plans.values().any(|p| p.start.is_some());
            let running: Vec<(String, u32)> = observed
                .map(|o| {
                    o.containers
                        .iter()
                        .filter(|(_, c)| matches!(c.latest.state, AttemptState::Running { .. }))
                        .map(|(n, c)| (n.clone(), c.latest.restart))
                        .collect()
                })
                .unwrap_or_default();
            if stale && !retry_due {
                // A stop that failed (its DEL) waits for its retry.
            } else if stale {
                actions.push(Action::Event {
                    target: target.clone(),
                    event_type: EventType::Normal,
                    reason: EventReason::SandboxChanged,
                    message: "Pod sandbox changed, it will be killed and re-created.".into(),
                });
                actions.push(Action::StopSandbox {
                    key: key.to_string(),
                });
            } else if sandbox_alive && !attached {
                // A sandbox whose network attach failed (or predates the pod network).
                if may_create && take(sandbox_budget) {
                    actions.push(Action::CreateSandbox {
                        key: key.to_string(),
                    });
                }
            } else if !sandbox_alive && (wants_start || !running.is_empty()) {
                if running.is_empty() {
                    if may_create && take(sandbox_budget) {
                        actions.push(Action::CreateSandbox {
                            key: key.to_string(),
                        });
                    }
                } else {
                    // The sandbox died (or was stopped: a stale address) under running
                    // containers: restart the pod cleanly.
                    for (container, restart) in running {
                        actions.push(Action::KillContainer {
                            key: key.into(),
                            container,
                            restart,
                            signal: Signal::Kill,
                            grace: 0,
                            pre_stop: None,
                        });
                    }
                }
            } else if sandbox_alive {
                for (name, plan) in &plans {
                    if let (Some(restart), false) = (plan.start, container_busy(name)) {
                        actions.push(Action::StartContainer {
                            key: key.into(),
                            container: name.clone(),
                            restart,
                        });
                    }
                }
            }
        }
        if let Some(o) = observed {
            self.plan_probes(input, desired, o, &target, actions);
        }
        let sandbox_message = if sandbox_ready {
            None
        } else if waiting_for_cidr {
            Some(network_not_ready())
        } else {
            failure.map(|f| f.message.clone())
        };

        let status = status::pod_status(
            desired,
            observed,
            &plans,
            input,
            recorded,
            sandbox_message.as_deref(),
            init.initialized,
        );
        let now_says = first_waiting_message(&status, desired);
        if waiting_for_cidr && now_says.as_deref() == sandbox_message.as_deref() {
            let was = recorded.and_then(|r| first_waiting_message(&r.status, desired));
            if was != now_says {
                actions.push(Action::Event {
                    target: target.clone(),
                    event_type: EventType::Warning,
                    reason: EventReason::NetworkNotReady,
                    message: network_not_ready(),
                });
            }
        }
        // Events on transitions of a container's waiting reason.
        let old = recorded.map(|r| &r.status);
        for c in desired.all_containers() {
            let new_reason = status::waiting_reason(&status, &c.name);
            let old_reason = old.and_then(|o| status::waiting_reason(o, &c.name));
            let plan = &plans[&c.name];
            if new_reason == old_reason {
                continue;
            }
            match new_reason.as_deref() {
                Some("CrashLoopBackOff") | Some("RunContainerError") => {
                    actions.push(Action::Event {
                        target: target.clone(),
                        event_type: EventType::Warning,
                        reason: EventReason::BackOff,
                        message: format!(
                            "Back-off restarting failed container {} in pod {}_{}({})",
                            c.name, target.name, target.namespace, target.uid
                        ),
                    })
                }
                Some("ImagePullBackOff") => {
                    actions.push(Action::Event {
                        target: target.clone(),
                        event_type: EventType::Normal,
                        reason: EventReason::BackOff,
                        message: format!(
                            "Back-off pulling image \"{}\"",
                            c.image.as_deref().unwrap_or_default()
                        ),
                    });
                    actions.push(Action::Event {
                        target: target.clone(),
                        event_type: EventType::Warning,
                        reason: EventReason::Failed,
                        message: "Error: ImagePullBackOff".into(),
                    });
                }
                // A container whose ConfigMap/Secret (or key) is missing (`kubelet::config`).
                Some("CreateContainerConfigError") => actions.push(Action::Event {
                    target: target.clone(),
                    event_type: EventType::Warning,
                    reason: EventReason::Failed,
                    message: format!(
                        "Error: {}",
                        plan.image_missing
                            .as_ref()
                            .map(|(_, m)| m.as_str())
                            .unwrap_or_default()
                    ),
                }),
                Some("ErrImageNeverPull") => actions.push(Action::Event {
                    target: target.clone(),
                    event_type: EventType::Warning,
                    reason: EventReason::ErrImageNeverPull,
                    message: plan
                        .image_missing
                        .as_ref()
                        .map(|(_, m)| m.clone())
                        .unwrap_or_default(),
                }),
                _ => {}
            }
        }
        let record = PodStatusRecord {
            binding: key.to_string(),
            pod_uid: target.uid.clone(),
            status,
        };
        if recorded != Some(&record) {
            actions.push(Action::WriteStatus {
                namespace: target.namespace,
                name: target.name,
                record,
            });
        }
    }

    /// The start, back-off or wait of one container whose turn it is, under `policy` (the
    /// pod's for app containers; see [`Planner::plan_init`] for init containers).
    fn plan_container(
        &mut self,
        input: &Inputs,
        key: &str,
        c: &Container,
        latest: Option<&ObservedAttempt>,
        policy: &str,
        busy: bool,
    ) -> ContainerPlan {
        let (image_missing, pulling) = match input.images.get(&(key.to_string(), c.name.clone())) {
            Some(ImageState::Ready) => (None, false),
            Some(ImageState::Unavailable { reason, message }) => {
                (Some((reason.clone(), message.clone())), false)
            }
            Some(ImageState::Pulling) | None => (None, true),
        };
        let mut plan = ContainerPlan::held();
        match latest.map(|a| (&a.state, a.restart)) {
            None => {
                if image_missing.is_some() {
                    plan.image_missing = image_missing;
                } else if pulling {
                    plan.pulling = true;
                } else {
                    plan.start = Some(0);
                }
            }
            Some((AttemptState::Exited(exit), restart))
                if should_restart(policy, exit.exit_code) =>
            {
                let bkey = (key.to_string(), c.name.clone());
                let mut delay = *self.backoff.get(&bkey).unwrap_or(&backoff_for(restart));
                let ran = exit
                    .started_at
                    .map(|s| exit.finished_at - s)
                    .unwrap_or_default();
                if ran >= Duration::seconds(BACKOFF_RESET) {
                    delay = 0;
                }
                if image_missing.is_some() {
                    plan.image_missing = image_missing;
                } else if pulling {
                    plan.pulling = true;
                } else if input.now >= exit.finished_at + Duration::seconds(delay) {
                    plan.start = Some(restart + 1);
                    if !busy {
                        self.backoff.insert(bkey, next_backoff(delay));
                    }
                } else {
                    plan.backoff = Some(delay);
                }
            }
            Some(_) => {}
        }
        plan
    }

    /// The init containers, in order (Kubernetes' rules): each starts once every one before it
    /// is done — a regular init container when it exited 0, a sidecar (`restartPolicy:
    /// Always`) when it runs and its startup probe passed. A failed regular init container is
    /// restarted with back-off unless the pod's policy is `Never` (then the pod fails); a
    /// sidecar is restarted whatever the pod's policy, until the pod is done: then the live
    /// sidecars are stopped, the last first. An init container already started is planned
    /// even if one before it is down again (the sequence is not re-run from scratch). The pod
    /// is initialized once the sequence is done, or once any app container has started (so a
    /// sidecar's restart never holds the app containers back again).
    fn plan_init(
        &mut self,
        input: &Inputs,
        desired: &DesiredPod,
        observed: Option<&ObservedPod>,
        container_busy: &dyn Fn(&str) -> bool,
        actions: &mut Vec<Action>,
    ) -> InitPlan {
        let key = desired.key.as_str();
        let policy = desired.restart_policy();
        let init_policy = if policy == "Never" {
            "Never"
        } else {
            "OnFailure"
        };
        let latest = |name: &str| {
            observed
                .and_then(|o| o.containers.get(name))
                .map(|oc| &oc.latest)
        };
        let app_started = desired
            .containers()
            .iter()
            .any(|c| latest(&c.name).is_some());
        let done = pod_done(desired, observed);
        let mut plans = BTreeMap::new();
        let mut sequence_done = true;
        let mut live_sidecars = Vec::new();
        for c in desired.init_containers() {
            let attempt = latest(&c.name);
            let sidecar = is_sidecar(c);
            let plan = if (sequence_done || attempt.is_some()) && !(sidecar && done) {
                let policy = if sidecar { "Always" } else { init_policy };
                self.plan_container(input, key, c, attempt, policy, container_busy(&c.name))
            } else {
                ContainerPlan::held()
            };
            plans.insert(c.name.clone(), plan);
            let finished = match attempt.map(|a| (&a.state, a.restart)) {
                Some((AttemptState::Running { .. }, restart)) if sidecar => {
                    live_sidecars.push((c, restart));
                    input.probes.verdict(key, c, restart).started
                }
                Some((AttemptState::Exited(e), _)) => !sidecar && e.exit_code == 0,
                _ => false,
            };
            sequence_done &= finished;
        }
        if done {
            self.stop_sidecars(input, desired, &live_sidecars, container_busy, actions);
        }
        InitPlan {
            plans,
            initialized: sequence_done || app_started,
        }
    }

    /// Stops the running sidecars of a pod that is done, one at a time and the last first
    /// (preStop and SIGTERM, SIGKILL after the pod's grace period, again every
    /// [`KILL_REPEAT`] s): Kubernetes' order, which keeps a proxy or log shipper up until the
    /// containers after it have stopped.
    fn stop_sidecars(
        &mut self,
        input: &Inputs,
        desired: &DesiredPod,
        live: &[(&Container, u32)],
        container_busy: &dyn Fn(&str) -> bool,
        actions: &mut Vec<Action>,
    ) {
        let key = desired.key.as_str();
        let mut stopping = false;
        for (c, restart) in live {
            let skey = (key.to_string(), c.name.clone(), *restart);
            let Some((since, grace)) = self.container_stops.get(&skey).copied() else {
                continue;
            };
            stopping = true;
            if input.now >= since + Duration::seconds(grace) && !container_busy(&c.name) {
                let next = input.now - Duration::seconds(grace) + Duration::seconds(KILL_REPEAT);
                self.container_stops.insert(skey, (next, grace));
                actions.push(kill(key, &c.name, *restart));
            }
        }
        let Some((c, restart)) = live.last().filter(|_| !stopping) else {
            return;
        };
        if container_busy(&c.name) {
            return;
        }
        let grace = i64::try_from(desired.grace_seconds()).unwrap_or(30);
        self.container_stops.insert(
            (key.to_string(), c.name.clone(), *restart),
            (input.now, grace),
        );
        actions.push(Action::Event {
            target: EventTarget {
                namespace: desired.namespace(),
                name: desired.name(),
                uid: desired.uid(),
            },
            event_type: EventType::Normal,
            reason: EventReason::Killing,
            message: format!("Stopping container {}", c.name),
        });
        actions.push(first_stop(
            key,
            &c.name,
            *restart,
            grace,
            probe::pre_stop_of(c),
        ));
    }

    /// A desired pod being deleted (`metadata.deletionTimestamp`): its containers get
    /// `grace` seconds from the first round that sees it (preStop, SIGTERM, then SIGKILL), a
    /// shorter grace of a later `DELETE` brings the SIGKILL forward, and once nothing runs
    /// (nothing started here, or every container exited) the pod object is removed. Nothing
    /// is started or restarted for it, and its status record is left as it was.
    fn plan_terminating(
        &mut self,
        input: &Inputs,
        key: &str,
        desired: &DesiredPod,
        grace: i64,
        actions: &mut Vec<Action>,
    ) {
        if pod_busy(input.busy, key) {
            return;
        }
        match input.observed.get(key) {
            Some(observed) if observed.containers.values().any(is_live) => {
                self.plan_stop(input, key, observed, grace, actions);
            }
            _ => actions.push(Action::FinalizeDeletion {
                namespace: desired.namespace(),
                name: desired.name(),
                uid: desired.uid(),
            }),
        }
    }

    /// Stops every live container of `observed` (preStop and SIGTERM, then SIGKILL after
    /// `grace` seconds and again every [`KILL_REPEAT`] s), and removes the pod once nothing
    /// runs. A stop under way keeps its SIGKILL time, or an earlier one if `grace` from now
    /// is shorter.
    fn plan_stop(
        &mut self,
        input: &Inputs,
        key: &str,
        observed: &ObservedPod,
        grace: i64,
        actions: &mut Vec<Action>,
    ) {
        if pod_busy(input.busy, key) {
            return;
        }
        let live: Vec<(&String, u32)> = observed
            .containers
            .iter()
            .filter(|(_, c)| is_live(c))
            .map(|(n, c)| (n, c.latest.restart))
            .collect();
        if live.is_empty() {
            actions.push(Action::RemovePod { key: key.into() });
            return;
        }
        let target = EventTarget {
            namespace: observed.meta.namespace.clone(),
            name: observed.meta.name.clone(),
            uid: observed.meta.uid.clone(),
        };
        let hooks = &observed.meta.hooks;
        let deadline = Duration::try_seconds(grace)
            .and_then(|d| input.now.checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let due = match self.stopping.get(key) {
            None => None,
            // A shorter grace (a second `DELETE`) brings the first SIGKILL forward.
            Some(&(due, true)) => Some((due, true)),
            Some(&(due, false)) => Some((due.min(deadline), false)),
        };
        match due {
            Some((due, _)) if input.now >= due => {
                // SIGKILL now, and again every 5 s while anything survives it.
                let next = input.now + Duration::seconds(KILL_REPEAT);
                self.stopping.insert(key.into(), (next, true));
                for (name, restart) in live {
                    actions.push(kill(key, name, restart));
                }
            }
            Some((due, true)) => {
                self.stopping.insert(key.into(), (due, true));
            }
            due => {
                let due = due.map_or(deadline, |(d, _)| d);
                self.stopping.insert(key.into(), (due, false));
                // The app (and regular init) containers first; then the sidecars, the last
                // first, each once the ones after it have stopped, within what is left of
                // the grace period.
                let sidecars = &observed.meta.sidecars;
                let others: Vec<(&String, u32)> = live
                    .iter()
                    .filter(|(n, _)| !sidecars.contains(n))
                    .copied()
                    .collect();
                let stage = if others.is_empty() {
                    sidecars
                        .iter()
                        .rev()
                        .find_map(|s| live.iter().find(|(n, _)| *n == s))
                        .copied()
                        .into_iter()
                        .collect()
                } else {
                    others
                };
                let left = (due - input.now).num_seconds();
                for (name, restart) in stage {
                    if !self.signalled.insert((key.into(), name.clone(), restart)) {
                        continue;
                    }
                    actions.push(Action::Event {
                        target: target.clone(),
                        event_type: EventType::Normal,
                        reason: EventReason::Killing,
                        message: format!("Stopping container {name}"),
                    });
                    let pre_stop = hooks
                        .iter()
                        .find(|c| &c.name == name)
                        .and_then(probe::pre_stop_of);
                    actions.push(first_stop(key, name, restart, left, pre_stop));
                }
            }
        }
    }

    /// Unhealthy events for failing probes (on the first failure of a run of failures, then at
    /// most every [`probe::UNHEALTHY_REPEAT`] s), and the restart of a running attempt whose
    /// liveness or startup probe failed: Killing event, preStop + SIGTERM, SIGKILL after the
    /// grace period (the probe's own, else the pod's), again every 5 s. The attempt then exits
    /// and restarts under the restart policy like any other exit.
    fn plan_probes(
        &mut self,
        input: &Inputs,
        desired: &DesiredPod,
        observed: &ObservedPod,
        target: &EventTarget,
        actions: &mut Vec<Action>,
    ) {
        let key = desired.key.as_str();
        for c in desired.probed_containers() {
            let Some(oc) = observed.containers.get(&c.name) else {
                continue;
            };
            if !matches!(oc.latest.state, AttemptState::Running { .. }) {
                continue;
            }
            let restart = oc.latest.restart;
            let verdict = input.probes.verdict(key, c, restart);
            for (kind, since, message) in &verdict.failing {
                let k = (key.to_string(), c.name.clone(), *kind);
                let report = self.unhealthy.get(&k).is_none_or(|last| {
                    *last < *since
                        || input.now - *last >= Duration::seconds(probe::UNHEALTHY_REPEAT)
                });
                if report {
                    self.unhealthy.insert(k, input.now);
                    actions.push(Action::Event {
                        target: target.clone(),
                        event_type: EventType::Warning,
                        reason: EventReason::Unhealthy,
                        message: format!("{} probe failed: {message}", kind.title()),
                    });
                }
            }
            let Some((kind, _)) = &verdict.kill else {
                continue;
            };
            if input.busy.contains(key) || input.busy.contains(&container_busy_key(key, &c.name)) {
                continue;
            }
            let skey = (key.to_string(), c.name.clone(), restart);
            match self.container_stops.get(&skey).copied() {
                None => {
                    let grace = verdict
                        .kill_grace
                        .unwrap_or_else(|| i64::try_from(desired.grace_seconds()).unwrap_or(30));
                    self.container_stops.insert(skey, (input.now, grace));
                    actions.push(Action::Event {
                        target: target.clone(),
                        event_type: EventType::Normal,
                        reason: EventReason::Killing,
                        message: format!(
                            "Container {} failed {} probe, will be restarted",
                            c.name,
                            kind.lower()
                        ),
                    });
                    actions.push(first_stop(
                        key,
                        &c.name,
                        restart,
                        grace,
                        probe::pre_stop_of(c),
                    ));
                }
                Some((since, grace)) if input.now >= since + Duration::seconds(grace) => {
                    self.container_stops.insert(
                        skey,
                        (
                            input.now - Duration::seconds(grace) + Duration::seconds(KILL_REPEAT),
                            grace,
                        ),
                    );
                    actions.push(kill(key, &c.name, restart));
                }
                Some(_) => {}
            }
        }
    }
}

/// Whether a container's latest attempt has not exited.
fn is_live(c: &crate::model::observed::ObservedContainer) -> bool {
    !matches!(c.latest.state, AttemptState::Exited(_))
}

/// Whether the kubelet's [`Action::FinalizeDeletion`] of pod `uid` removes `current` (the
/// pod object now in the document under its name): only that same pod, still being deleted
/// — never a pod re-created under the name since, nor one whose deletion was undone.
pub fn finalizes(current: Option<&serde_json::Value>, uid: &str) -> bool {
    current.is_some_and(|pod| {
        pod["metadata"]["uid"] == uid && !pod["metadata"]["deletionTimestamp"].is_null()
    })
}

/// The first step of stopping an attempt: preStop hook and SIGTERM, or SIGKILL at once with a
/// grace period of 0.
fn first_stop(
    key: &str,
    container: &str,
    restart: u32,
    grace: i64,
    pre_stop: Option<Result<probe::Handler, String>>,
) -> Action {
    if grace <= 0 {
        return kill(key, container, restart);
    }
    Action::KillContainer {
        key: key.into(),
        container: container.into(),
        restart,
        signal: Signal::Term,
        grace,
        pre_stop,
    }
}

fn kill(key: &str, container: &str, restart: u32) -> Action {
    Action::KillContainer {
        key: key.into(),
        container: container.into(),
        restart,
        signal: Signal::Kill,
        grace: 0,
        pre_stop: None,
    }
}

/// What every plan must satisfy, checked after every round in tests (as iroh-gossip checks its
/// protocol state after every event): no runtime action for what is busy, at most one runtime
/// action per pod or container, actions only for pods this node has, one status write per pod.
#[cfg(test)]
fn check_invariants(input: &Inputs, actions: &[Action]) {
    let mut runtime = BTreeSet::new();
    let mut statuses = BTreeSet::new();
    for action in actions {
        let busy_key = match action {
            Action::CreateSandbox { key }
            | Action::StopSandbox { key }
            | Action::RemovePod { key } => Some((key, key.clone())),
            Action::StartContainer { key, container, .. }
            | Action::KillContainer { key, container, .. } => {
                Some((key, container_busy_key(key, container)))
            }
            Action::WriteStatus {
                namespace, name, ..
            } => {
                assert!(
                    statuses.insert((namespace, name)),
                    "two status writes for {namespace}/{name}: {actions:?}"
                );
                None
            }
            Action::DeleteStatus { .. } | Action::Event { .. } => None,
            Action::FinalizeDeletion {
                namespace, name, ..
            } => {
                assert!(
                    input.desired.values().any(|d| d.is_terminating()
                        && &d.namespace() == namespace
                        && &d.name() == name),
                    "a finalization of a pod that is not terminating here: {action:?}"
                );
                None
            }
        };
        let Some((key, busy_key)) = busy_key else {
            continue;
        };
        assert!(
            input.desired.contains_key(key) || input.observed.contains_key(key),
            "an action for a pod neither desired nor observed here: {action:?}"
        );
        assert!(
            !input.busy.contains(&busy_key),
            "an action for {busy_key}, which is busy: {action:?}"
        );
        assert!(
            runtime.insert(busy_key.clone()),
            "two runtime actions for {busy_key} in one round: {actions:?}"
        );
        if let Action::StartContainer { key, container, .. } = action {
            let d = &input.desired[key];
            assert!(
                d.all_containers().any(|c| &c.name == container),
                "a start of a container the pod does not have: {action:?}"
            );
        }
    }
    let creating = actions
        .iter()
        .filter(|a| matches!(a, Action::CreateSandbox { .. }))
        .count();
    let in_flight = sandbox_work_in_flight(input);
    assert!(
        creating == 0 || creating + in_flight <= MAX_SANDBOX_STARTS,
        "{creating} sandbox creations with {in_flight} in flight: over {MAX_SANDBOX_STARTS}"
    );
}
