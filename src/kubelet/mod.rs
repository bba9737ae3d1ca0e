//! The kubelet role: runs the pods whose winning binding names this node. A pure planner
//! (desired pods + observed runtime state + time → actions and status transitions) and the
//! shell loop that feeds it and carries its actions out through `crate::runtime`.

pub mod config;
mod desired;
mod objects;
pub mod plan;
pub mod prober;
pub mod pulls;
mod volumes;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::{mpsc, Semaphore};

use crate::model::logs::{LogRequest, LogStream};
use crate::model::workload::{keys, EventReason, EventType, InvolvedObject, PodStatusRecord, PODS};
use crate::runtime::image::pull::Puller;
use crate::runtime::logs::{find_target, read_logs, LogError};
use crate::runtime::pods::StartOutcome;
use crate::runtime::{PodMeta, Runtime, RuntimeConfig};
use crate::state::shared::Shared;
use desired::DesiredIndex;
use plan::{Action, DesiredPod, Inputs, Ledger, Outcome, Planner};

/// At most this many runtime actions run at once.
pub const MAX_PARALLEL_ACTIONS: usize = 8;
/// A planning round runs at least this often.
const TICK: Duration = Duration::from_secs(1);
/// A round for a document change alone waits at least this long after the previous round
/// ended...
const CHANGE_ROUND_GAP: Duration = Duration::from_millis(50);
/// ...and at most this long.
const MAX_CHANGE_ROUND_GAP: Duration = Duration::from_millis(500);

/// The gap after a round that took `took` before a round for a document change alone: three
/// times what the round took within [`CHANGE_ROUND_GAP`]..[`MAX_CHANGE_ROUND_GAP`], so rounds
/// driven by other nodes' writes keep to a quarter of a core.
fn change_round_gap(took: Duration) -> Duration {
    (took * 3).clamp(CHANGE_ROUND_GAP, MAX_CHANGE_ROUND_GAP)
}
/// The whole runtime state (every pod dir) is read this often; rounds in between re-read only
/// the pods this kubelet acted on or whose shim exited since ([`Shell::touched`]). During a
/// burst a node runs several rounds a second, and reading every pod's files on each took a
/// fifth of the kubelet's time; what changes without an action or a shim exit (a process
/// killed from outside) is seen within this period.
const FULL_OBSERVE_EVERY: Duration = Duration::from_secs(1);
/// What no pod accounts for (`runtime::orphans`) is looked for this often, and at start.
const REAP_EVERY: Duration = Duration::from_secs(10);
/// Runtime actions queued or running (at most [`MAX_PARALLEL_ACTIONS`] run at once) above
/// which the node reports `RuntimePressure` and takes no new pods...
pub const PRESSURE_ON: usize = 64;
/// ...until it is back under this many.
pub const PRESSURE_OFF: usize = 16;

#[derive(Clone, Debug)]
pub struct KubeletConfig {
    pub runtime: RuntimeConfig,
    /// The node's address (`status.hostIP`).
    pub node_ip: String,
    /// Pulls images (and holds the node's image store); `None`: pods wait for their images.
    pub puller: Option<Arc<Puller>>,
    /// Where this node's local-path volumes live (`shoal agent --local-path-dir`).
    pub local_path_root: std::path::PathBuf,
}

/// The pods this node should run, from the merged document: those whose winning binding names
/// this node for the pod's current uid, and those whose `spec.nodeName` is this node. Keyed
/// by binding id (uid for `nodeName` pods). One-off readers use this; the kubelet's rounds
/// keep a [`DesiredIndex`] so unchanged records are not decoded again.
pub fn desired_pods(shared: &Shared) -> BTreeMap<String, DesiredPod> {
    desired_from(&mut DesiredIndex::new(), shared)
}

/// This round's desired pods through `index` (records whose bytes are unchanged reused).
fn desired_from(index: &mut DesiredIndex, shared: &Shared) -> BTreeMap<String, DesiredPod> {
    let (pods, bindings) = shared.read(|doc| (doc.raw_objects(PODS), doc.raw_bindings()));
    index.refresh(&shared.node_name, pods, bindings)
}

/// Outcomes of the shell's background work (runtime actions, pulls) for the planner's
/// [`Ledger`]: pushed when the work ends, before its busy mark is cleared, and taken by the next
/// round. At most one per action in flight or pull running.
#[derive(Clone, Default)]
pub struct Reports(Arc<Mutex<Vec<Outcome>>>);

impl Reports {
    pub fn push(&self, outcome: Outcome) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(outcome);
    }

    fn take(&self) -> Vec<Outcome> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

struct Shell {
    shared: Arc<Shared>,
    runtime: Arc<Runtime>,
    pulls: pulls::Pulls,
    node_ip: String,
    /// ConfigMaps and Secrets: resolution, config errors, volume updates.
    objects: objects::ObjectsShell,
    /// This round's resolved container configurations.
    configs: objects::Configs,
    planner: Planner,
    /// Pod objects and bindings decoded in earlier rounds.
    desired: DesiredIndex,
    /// The planner's count of what the shell's actions and pulls reported.
    ledger: Ledger,
    /// Outcomes of actions and pulls, for the next round.
    reports: Reports,
    busy: Arc<Mutex<BTreeSet<String>>>,
    permits: Arc<Semaphore>,
    wake_tx: mpsc::Sender<()>,
    probes: Arc<prober::Probes>,
    /// When orphans were last looked for (`None`: not yet, at start).
    last_reap: Option<std::time::Instant>,
    /// The runtime state as last read: wholly at [`Shell::last_full_observe`], and since for
    /// the pods [`Shell::touched`] named.
    observed: BTreeMap<String, crate::runtime::ObservedPod>,
    last_full_observe: Option<std::time::Instant>,
    /// Pods whose runtime state may have changed since it was last read: an action started or
    /// ended on them, or a container's shim exited. Filled by the actions' tasks.
    touched: Arc<Mutex<BTreeSet<String>>>,
    /// Whether this node reports runtime pressure (hysteresis between the two thresholds).
    pressured: bool,
    /// Removes this node's released local-path volumes (policy `Delete`).
    reclaimer: volumes::Reclaimer,
}

/// Runs the kubelet until `shutdown` resolves. Containers keep running after it returns.
pub async fn run(
    shared: Arc<Shared>,
    config: KubeletConfig,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    tokio::pin!(shutdown);
    let mut changes = shared.subscribe();
    if !holds_the_cluster(&shared, &mut changes, &mut shutdown).await {
        return;
    }
    let runtime = Arc::new(Runtime::new(config.runtime.clone()));
    if config.puller.is_none() {
        tracing::warn!("no image store: pods will wait for their images");
    }
    sweep_orphaned_containers(&runtime).await;
    let (wake_tx, mut wake_rx) = mpsc::channel(64);
    let probes = Arc::new(prober::Probes::default());
    let prober = tokio::spawn(prober::run(
        probes.clone(),
        config.runtime.clone(),
        wake_tx.clone(),
    ));
    let mut shell = Shell::new(shared, runtime, config, wake_tx, probes);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When the last round ended and what it took.
    let mut last_round: Option<(std::time::Instant, Duration)> = None;
    // The cluster document's heads when the last round began.
    let mut last_heads: Option<u64> = None;
    loop {
        let document_changed = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            _ = wake_rx.recv() => false,
            _ = changes.changed() => true,
            _ = tick.tick() => false,
        };
        // What a round reads from the documents is in the cluster document (pods, bindings,
        // their ConfigMaps and Secrets, the node's pod CIDR) and in this node's own status
        // records, which only this kubelet writes. A change of the status documents alone
        // (every pod status write of every node, during a burst several per second, this
        // kubelet's own included) gives the round nothing new: it waits for the tick, an
        // action that ended or a change of the cluster document.
        if document_changed && last_heads == Some(shell.shared.heads_digest()) {
            continue;
        }
        // Every write anywhere in the cluster changes the documents; during a burst that is a
        // round after every round. Rounds for a change alone keep a gap after the last one
        // (an action of this kubelet that ended, or the tick, still runs one at once).
        if let Some(wait) = last_round
            .filter(|_| document_changed)
            .map(|(end, took)| change_round_gap(took).saturating_sub(end.elapsed()))
            .filter(|w| !w.is_zero())
        {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(wait) => {}
                _ = wake_rx.recv() => {}
            }
        }
        while wake_rx.try_recv().is_ok() {}
        let started = std::time::Instant::now();
        last_heads = Some(shell.shared.heads_digest());
        shell.round().await;
        last_round = Some((std::time::Instant::now(), started.elapsed()));
    }
    prober.abort();
    tracing::info!("kubelet stopped (containers keep running)");
}

/// Waits until the document holds the cluster (a joiner waits for its first sync): an empty
/// document would make every running pod look deleted. False if `shutdown` came first.
async fn holds_the_cluster(
    shared: &Shared,
    changes: &mut tokio::sync::watch::Receiver<u64>,
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> bool {
    loop {
        if shared.read(|d| d.meta()).ok().flatten().is_some() {
            return true;
        }
        tokio::select! {
            _ = shutdown.as_mut() => return false,
            _ = tokio::time::timeout(TICK, changes.changed()) => {}
        }
    }
}

/// Deletes the runc containers no sandbox accounts for, once at start.
async fn sweep_orphaned_containers(runtime: &Arc<Runtime>) {
    let rt = runtime.clone();
    match tokio::task::spawn_blocking(move || rt.sweep_orphans()).await {
        Ok(Ok(ids)) if !ids.is_empty() => {
            tracing::info!(?ids, "deleted orphaned runc containers")
        }
        Ok(Err(e)) => tracing::warn!(%e, "runc list failed"),
        _ => {}
    }
}

impl Shell {
    fn new(
        shared: Arc<Shared>,
        runtime: Arc<Runtime>,
        config: KubeletConfig,
        wake_tx: mpsc::Sender<()>,
        probes: Arc<prober::Probes>,
    ) -> Shell {
        Shell {
            shared,
            runtime,
            pulls: pulls::Pulls::new(config.puller.clone()),
            objects: objects::ObjectsShell::new(
                config.node_ip.clone(),
                config.runtime.host_path_prefixes.clone(),
                config.local_path_root.clone(),
            ),
            configs: objects::Configs::new(),
            node_ip: config.node_ip,
            planner: Planner::new(),
            desired: DesiredIndex::new(),
            ledger: Ledger::default(),
            reports: Reports::default(),
            busy: Arc::new(Mutex::new(BTreeSet::new())),
            permits: Arc::new(Semaphore::new(MAX_PARALLEL_ACTIONS)),
            wake_tx,
            probes,
            last_reap: None,
            observed: BTreeMap::new(),
            last_full_observe: None,
            touched: Arc::new(Mutex::new(BTreeSet::new())),
            pressured: false,
            reclaimer: volumes::Reclaimer::new(config.local_path_root.clone()),
        }
    }
}

impl Shell {
    fn busy(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.busy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This node's current pod CIDR (only asked for when pods get the CNI network).
    fn pod_cidr(&self) -> Option<String> {
        self.runtime.config.cni.as_ref()?;
        self.shared
            .read(|d| d.pod_cidrs())
            .remove(self.shared.node_name.as_str())
    }

    async fn round(&mut self) {
        self.take_reports();
        let desired = desired_from(&mut self.desired, &self.shared);
        let pod_cidr = self.pod_cidr();
        let full = self
            .last_full_observe
            .is_none_or(|t| t.elapsed() >= FULL_OBSERVE_EVERY);
        if !self.observe(full).await {
            return;
        }
        let observed = std::mem::take(&mut self.observed);
        let images = self.images(&desired, &observed);
        self.probes.sync(&self.runtime.config, &desired, &observed);
        let probes = self.probes.snapshot();
        let busy = self.busy().clone();
        self.ledger.retain_pods(|k| desired.contains_key(k));
        let recorded = self.recorded();
        let actions = self.planner.plan(&Inputs {
            desired: &desired,
            observed: &observed,
            images: &images.states,
            recorded: &recorded,
            busy: &busy,
            node_ip: &self.node_ip,
            pod_network: self.runtime.config.cni.is_some(),
            pod_cidr: pod_cidr.as_deref(),
            sandbox_failures: self.ledger.sandbox_failures(),
            probes: &probes,
            now: chrono::Utc::now(),
        });
        tracing::debug!(
            desired = desired.len(),
            observed = observed.len(),
            actions = actions.len(),
            decoded_records = self.desired.decoded(),
            ?busy,
            "kubelet round"
        );
        for action in actions {
            tracing::debug!(?action, "kubelet action");
            self.execute(action, &desired, &observed, &images, pod_cidr.as_deref());
        }
        // Pods held back by the planner's sandbox budget are work queued as much as actions
        // waiting for a permit.
        let unstarted = desired
            .keys()
            .filter(|k| !busy.contains(*k) && observed.get(*k).is_none_or(|o| o.sandbox.is_none()))
            .count();
        if full {
            self.reap_orphans(&desired, &observed).await;
            self.reclaimer.tick(&self.shared, &desired);
        }
        self.observed = observed;
        self.report_pressure(unstarted);
    }

    /// Brings [`Shell::observed`] up to date: every pod dir if `full`, else the pods touched
    /// since the last read. False if the read could not run.
    async fn observe(&mut self, full: bool) -> bool {
        // Taken before reading: a pod touched while the read runs is read again next round.
        let touched = std::mem::take(&mut *self.touched.lock().unwrap_or_else(|p| p.into_inner()));
        let rt = self.runtime.clone();
        if full {
            let Ok(observed) = tokio::task::spawn_blocking(move || rt.observe()).await else {
                return false;
            };
            self.observed = observed;
            self.last_full_observe = Some(std::time::Instant::now());
        } else if !touched.is_empty() {
            let Ok(fresh) = tokio::task::spawn_blocking(move || rt.observe_some(&touched)).await
            else {
                return false;
            };
            for (key, pod) in fresh {
                match pod {
                    Some(pod) => self.observed.insert(key, pod),
                    None => self.observed.remove(&key),
                };
            }
        }
        true
    }

    /// Hands what the background work reported to the planner's ledger and records the
    /// events it makes of it.
    fn take_reports(&mut self) {
        let now = chrono::Utc::now();
        for outcome in self.reports.take() {
            for event in self.ledger.record(outcome, now) {
                self.record(event);
            }
        }
    }

    /// Every container's image (pulls started as due), with the configuration checks that
    /// hold a container back (`CreateContainerConfigError`) applied on top.
    fn images(
        &mut self,
        desired: &BTreeMap<String, DesiredPod>,
        observed: &BTreeMap<String, crate::runtime::ObservedPod>,
    ) -> pulls::Verdicts {
        let mut round = pulls::Round::new(
            &self.shared,
            observed,
            &mut self.ledger,
            &self.reports,
            &self.wake_tx,
            chrono::Utc::now(),
        );
        let mut verdicts = self.pulls.evaluate(&mut round, desired);
        for event in std::mem::take(&mut verdicts.events) {
            self.record(event);
        }
        self.configs = self
            .objects
            .resolve(&self.shared, desired, observed, &mut verdicts.states);
        // runAsNonRoot with an image that runs as root, a privileged container on a node that
        // refuses them: waits as CreateContainerConfigError.
        let deny_privileged = self.runtime.config.limits.deny_privileged;
        for (key, d) in desired {
            for c in d.all_containers() {
                if deny_privileged && crate::model::security_context::is_privileged(c) {
                    let message =
                        crate::model::security_context::privileged_denied_message(&c.name);
                    objects::config_error(&mut verdicts.states, key, &c.name, message);
                    continue;
                }
                let image = c.image.as_deref().and_then(|i| verdicts.ready.get(i));
                if let Some(message) =
                    image.and_then(|i| crate::runtime::bundle::non_root_violation(&d.pod, c, i))
                {
                    objects::config_error(&mut verdicts.states, key, &c.name, message);
                }
            }
        }
        let in_flight = self.busy().clone();
        self.objects
            .refresh(&self.runtime, observed, &self.configs, &in_flight);
        verdicts
    }

    /// This node's status records, by `(namespace, name)`.
    fn recorded(&self) -> BTreeMap<(String, String), PodStatusRecord> {
        self.shared.own_entries(keys::POD_STATUS_PREFIX)
    }

    /// Writes `RuntimePressure` to this node's status document when the backlog of runtime
    /// actions crosses [`PRESSURE_ON`], and removes it once it is under [`PRESSURE_OFF`].
    fn report_pressure(&mut self, unstarted: usize) {
        let backlog = self.busy().len() + unstarted;
        let pressured = if self.pressured {
            backlog >= PRESSURE_OFF
        } else {
            backlog > PRESSURE_ON
        };
        if pressured == self.pressured {
            return;
        }
        use crate::model::{RuntimePressure, PRESSURE_KEY};
        let result = if pressured {
            tracing::warn!(
                backlog,
                "runtime pressure: taking no new pods until the kubelet catches up"
            );
            let record = RuntimePressure {
                since: chrono::Utc::now(),
                backlog: u32::try_from(backlog).unwrap_or(u32::MAX),
            };
            self.shared
                .write_status(|d| d.put(PRESSURE_KEY, &record).map(|_| ()))
        } else {
            tracing::info!(backlog, "runtime pressure over");
            self.shared
                .write_status(|d| d.delete(PRESSURE_KEY).map(|_| ()))
        };
        match result {
            Ok(()) => self.pressured = pressured,
            Err(e) => tracing::warn!(%e, "writing the runtime pressure condition"),
        }
    }

    /// Removes what no pod accounts for (`runtime::orphans`), at start and every
    /// [`REAP_EVERY`]: never a key desired here, observed, or with an action in flight.
    async fn reap_orphans(
        &mut self,
        desired: &BTreeMap<String, DesiredPod>,
        observed: &BTreeMap<String, crate::runtime::ObservedPod>,
    ) {
        if self.last_reap.is_some_and(|t| t.elapsed() < REAP_EVERY) {
            return;
        }
        self.last_reap = Some(std::time::Instant::now());
        let mut known: BTreeSet<String> = desired.keys().cloned().collect();
        known.extend(observed.keys().cloned());
        known.extend(
            self.busy()
                .iter()
                .map(|k| k.split('/').next().unwrap_or(k).to_string()),
        );
        let rt = self.runtime.clone();
        if let Ok(reaped) = tokio::task::spawn_blocking(move || rt.reap(&known)).await {
            if !reaped.is_empty() {
                tracing::info!(
                    count = reaped.len(),
                    ?reaped,
                    "removed what no pod accounts for"
                );
            }
        }
    }

    fn execute(
        &self,
        action: Action,
        desired: &BTreeMap<String, DesiredPod>,
        observed: &BTreeMap<String, crate::runtime::ObservedPod>,
        images: &pulls::Verdicts,
        pod_cidr: Option<&str>,
    ) {
        match action {
            Action::WriteStatus {
                namespace,
                name,
                record,
            } => {
                let key = keys::pod_status(&namespace, &name);
                if let Err(e) = self.shared.write_status(|d| d.put(&key, &record)) {
                    tracing::warn!(%e, %namespace, %name, "writing pod status");
                }
            }
            Action::DeleteStatus { namespace, name } => {
                let key = keys::pod_status(&namespace, &name);
                if let Err(e) = self.shared.write_status(|d| d.delete(&key)) {
                    tracing::warn!(%e, %namespace, %name, "deleting pod status");
                }
            }
            Action::FinalizeDeletion {
                namespace,
                name,
                uid,
            } => self.finalize_deletion(&namespace, &name, &uid),
            event @ Action::Event { .. } => self.record(event),
            Action::CreateSandbox { key } => {
                if let Some(d) = desired.get(&key) {
                    self.create_sandbox(key, d, observed, pod_cidr);
                }
            }
            Action::StopSandbox { key } => self.stop_sandbox(key),
            Action::StartContainer {
                key,
                container,
                restart,
            } => {
                if let Some(d) = desired.get(&key) {
                    self.start_container(d, container, restart, images);
                }
            }
            Action::KillContainer {
                key,
                container,
                restart,
                signal,
                grace,
                pre_stop,
            } => {
                let hook = pre_stop.and_then(|h| {
                    let o = observed.get(&key)?;
                    Some(self.pre_stop(o, h, &container, restart, grace))
                });
                self.kill_container(key, container, restart, signal, hook);
            }
            Action::RemovePod { key } => self.remove_pod(key),
        }
    }

    /// Carries out [`Action::FinalizeDeletion`]: removes the pod object and its binding when
    /// [`plan::finalizes`] says the object is still that pod, being deleted.
    fn finalize_deletion(&self, namespace: &str, name: &str, uid: &str) {
        let done = self.shared.write(|d| {
            let current = d.get_object(PODS, Some(namespace), name)?;
            if !plan::finalizes(current.as_ref(), uid) {
                return Ok(false);
            }
            d.delete_object(PODS, Some(namespace), name)?;
            d.delete_binding(namespace, name)?;
            Ok(true)
        });
        match done {
            Ok(true) => tracing::info!(%namespace, %name, "terminated pod removed"),
            Ok(false) => {}
            Err(e) => tracing::warn!(%e, %namespace, %name, "removing a terminated pod"),
        }
    }

    /// Records an [`Action::Event`] in this node's status document.
    fn record(&self, event: Action) {
        if let Action::Event {
            target,
            event_type,
            reason,
            message,
        } = event
        {
            record_event(&self.shared, &target, event_type, reason, &message);
        }
    }

    fn create_sandbox(
        &self,
        key: String,
        d: &DesiredPod,
        observed: &BTreeMap<String, crate::runtime::ObservedPod>,
        pod_cidr: Option<&str>,
    ) {
        let (hostname, subdomain) = d.host_names();
        let meta = PodMeta {
            hostname,
            subdomain,
            host_network: d.host_network(),
            dns: d.dns(),
            key: key.clone(),
            namespace: d.namespace(),
            name: d.name(),
            uid: d.uid(),
            grace_seconds: d.grace_seconds(),
            created_at: observed
                .get(&key)
                .map(|o| o.meta.created_at)
                .unwrap_or_else(chrono::Utc::now),
            hooks: plan::probe::hooked_containers(d.probed_containers()),
            sidecars: d
                .init_containers()
                .iter()
                .filter(|c| plan::is_sidecar(c))
                .map(|c| c.name.clone())
                .collect(),
        };
        let target = event_target(d);
        let pod_cidr = pod_cidr.map(str::to_string);
        let reports = self.reports.clone();
        self.spawn(key.clone(), key.clone(), move |rt, _| {
            reports.push(match rt.create_sandbox(&meta, pod_cidr.as_deref()) {
                Ok(_) => Outcome::SandboxCreated { key },
                Err(e) => {
                    tracing::warn!(%e, pod = %meta.name, "creating the sandbox");
                    Outcome::SandboxFailed {
                        key,
                        target,
                        error: e.to_string(),
                    }
                }
            });
            None
        });
    }

    fn stop_sandbox(&self, key: String) {
        let reports = self.reports.clone();
        self.spawn(key.clone(), key.clone(), move |rt, _| {
            reports.push(
                match rt.runtime.stop_sandbox(&key, Duration::from_secs(10)) {
                    Ok(()) => Outcome::SandboxStopped { key },
                    Err(e) => {
                        tracing::warn!(%e, %key, "stopping a sandbox");
                        Outcome::SandboxStopFailed {
                            key,
                            error: e.to_string(),
                        }
                    }
                },
            );
            None
        });
    }

    fn start_container(
        &self,
        d: &DesiredPod,
        container: String,
        restart: u32,
        images: &pulls::Verdicts,
    ) {
        let Some(start) = self.container_start(d, container, restart, images) else {
            return;
        };
        let busy_key = plan::container_busy_key(&d.key, &start.container.name);
        let reports = self.reports.clone();
        self.spawn(busy_key, d.key.clone(), move |rt, shared| {
            let (outcome, exit) = start.run(rt, &shared);
            reports.push(outcome);
            exit
        });
    }

    /// What starting attempt `restart` of `container` needs, once its image and its
    /// configuration are ready (`None` before).
    fn container_start(
        &self,
        d: &DesiredPod,
        container: String,
        restart: u32,
        images: &pulls::Verdicts,
    ) -> Option<ContainerStart> {
        let c = d.all_containers().find(|c| c.name == container)?;
        let reference = c.image.clone().unwrap_or_default();
        Some(ContainerStart {
            key: d.key.clone(),
            pod: d.pod.clone(),
            image: images.ready.get(&reference).cloned()?,
            config: self.configs.get(&(d.key.clone(), container)).cloned()?,
            container: c.clone(),
            restart,
            pulled: images.pulled.contains(&reference),
            store: self.pulls.store().cloned(),
            target: event_target(d),
        })
    }

    /// The preStop hook of a container attempt about to be stopped.
    fn pre_stop(
        &self,
        o: &crate::runtime::ObservedPod,
        handler: Result<plan::probe::Handler, String>,
        container: &str,
        restart: u32,
        grace: i64,
    ) -> prober::PreStop {
        prober::PreStop {
            handler,
            target: prober::target(&self.runtime.config, o, container, restart),
            grace,
            pod: plan::EventTarget {
                namespace: o.meta.namespace.clone(),
                name: o.meta.name.clone(),
                uid: o.meta.uid.clone(),
            },
            container: container.to_string(),
            handle: tokio::runtime::Handle::current(),
        }
    }

    fn kill_container(
        &self,
        key: String,
        container: String,
        restart: u32,
        signal: plan::Signal,
        hook: Option<prober::PreStop>,
    ) {
        let busy_key = plan::container_busy_key(&key, &container);
        let reports = self.reports.clone();
        self.spawn(busy_key, key, move |rt, _| {
            if let Some(failed) = hook.and_then(|h| h.run(&rt.config)) {
                reports.push(failed);
            }
            if let Err(e) = rt.kill_container_attempt(&container, restart, signal) {
                tracing::warn!(%e, %container, "signalling a container");
            }
            None
        });
    }

    fn remove_pod(&self, key: String) {
        self.spawn(key.clone(), key.clone(), move |rt, _| {
            if let Err(e) = rt.runtime.remove_pod(&key, Duration::from_secs(10)) {
                tracing::warn!(%e, %key, "removing a pod");
            }
            None
        });
    }

    /// Runs a blocking runtime action for pod `key` (one at a time per `busy_key`, bounded
    /// overall). A returned shim pipe is watched: its EOF (the shim exited) wakes the loop.
    fn spawn(
        &self,
        busy_key: String,
        key: String,
        f: impl FnOnce(&PodRuntime, Arc<Shared>) -> Option<std::process::ChildStdout> + Send + 'static,
    ) {
        if !self.busy().insert(busy_key.clone()) {
            return;
        }
        let touched = self.touched.clone();
        let touch = move |key: &str| {
            touched
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key.to_string());
        };
        touch(&key);
        let pod = key.clone();
        let rt = PodRuntime {
            runtime: self.runtime.clone(),
            key,
        };
        let shared = self.shared.clone();
        let permits = self.permits.clone();
        let busy = self.busy.clone();
        let wake = self.wake_tx.clone();
        tokio::spawn(async move {
            let queued = std::time::Instant::now();
            let permit = permits.acquire_owned().await;
            let waited = queued.elapsed();
            let exit = tokio::task::spawn_blocking(move || {
                // Container work (runc, CNI plugins, the sandbox's first steps) runs below the
                // agent's own threads: a burst of starts must not starve membership probes.
                crate::runtime::set_niceness(crate::runtime::RUNTIME_WORK_NICE);
                let exit = f(&rt, shared);
                crate::runtime::set_niceness(crate::runtime::AGENT_NICE);
                exit
            })
            .await
            .ok()
            .flatten();
            drop(permit);
            // The pod-start trace: how long each action waited for a permit and ran.
            tracing::debug!(
                action = %busy_key,
                waited_ms = waited.as_millis() as u64,
                ran_ms = (queued.elapsed() - waited).as_millis() as u64,
                "kubelet action done"
            );
            busy.lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&busy_key);
            touch(&pod);
            let _ = wake.try_send(());
            if let Some(exit) = exit {
                if let Ok(mut pipe) = tokio::process::ChildStdout::from_std(exit) {
                    let mut sink = Vec::new();
                    let _ = tokio::io::AsyncReadExt::read_to_end(&mut pipe, &mut sink).await;
                }
                touch(&pod);
                let _ = wake.try_send(());
            }
        });
    }
}

/// One container attempt to start, with everything it needs (run on a blocking thread).
struct ContainerStart {
    key: String,
    pod: Pod,
    container: k8s_openapi::api::core::v1::Container,
    image: crate::runtime::ImageInfo,
    config: config::ContainerConfig,
    restart: u32,
    /// Whether this kubelet pulled the image (no "already present" event).
    pulled: bool,
    store: Option<crate::runtime::image::ImageStore>,
    target: plan::EventTarget,
}

impl ContainerStart {
    /// Starts the attempt; its outcome for the ledger and the shim's exit pipe if it runs.
    fn run(self, rt: &PodRuntime, shared: &Shared) -> (Outcome, Option<std::process::ChildStdout>) {
        let ContainerStart {
            key,
            pod,
            container: c,
            image,
            config,
            restart,
            pulled,
            store,
            target,
        } = self;
        if restart > 1 {
            rt.prune_attempts(&key, &c.name, restart);
        }
        if let Some(store) = &store {
            store.touch(image.digest.trim_start_matches("sha256:"));
        }
        match rt.start_container_with(&key, &pod, &c, &image, restart, &config) {
            Ok(StartOutcome::Started { exit }) => {
                let created = pod.metadata.creation_timestamp.as_ref();
                let created = created.map(|t| t.0.as_second());
                shared.metrics.container_started(restart, created);
                let started = Outcome::ContainerStarted {
                    target,
                    container: c.name,
                    image: image.reference.clone(),
                    pulled,
                    warnings: config.skipped.clone(),
                };
                (started, Some(exit))
            }
            Ok(StartOutcome::Failed { message }) => (
                Outcome::ContainerFailed {
                    target,
                    error: message,
                },
                None,
            ),
            Err(e) => {
                tracing::warn!(%e, container = %c.name, "starting a container");
                let error = e.to_string();
                (Outcome::ContainerFailed { target, error }, None)
            }
        }
    }
}

/// The runtime, for one pod.
struct PodRuntime {
    runtime: Arc<Runtime>,
    key: String,
}

impl std::ops::Deref for PodRuntime {
    type Target = Runtime;
    fn deref(&self) -> &Runtime {
        &self.runtime
    }
}

impl PodRuntime {
    fn kill_container_attempt(
        &self,
        container: &str,
        restart: u32,
        signal: plan::Signal,
    ) -> Result<(), crate::runtime::RuntimeError> {
        self.runtime
            .kill_container(&self.key, container, restart, signal.as_runc())
    }
}

/// The pod an event of `d` is about.
fn event_target(d: &DesiredPod) -> plan::EventTarget {
    plan::EventTarget {
        namespace: d.namespace(),
        name: d.name(),
        uid: d.uid(),
    }
}

fn record_event(
    shared: &Shared,
    target: &plan::EventTarget,
    event_type: EventType,
    reason: EventReason,
    message: &str,
) {
    shared.record_event(
        &InvolvedObject {
            api_version: "v1".into(),
            kind: "Pod".into(),
            namespace: target.namespace.clone(),
            name: target.name.clone(),
            uid: target.uid.clone(),
        },
        event_type,
        reason,
        message,
        "kubelet",
    );
}

/// `kubectl logs` on this node: finds the pod's dir under `<data>/pods` (the newest copy of
/// `namespace/pod` if there are several), picks the container (the only one if not named),
/// and streams its log as `req` asks.
pub fn logs(data_dir: &Path, req: &LogRequest) -> Result<LogStream, LogError> {
    let pods = crate::runtime::observe::observe_all(&data_dir.join("pods"));
    let pod = pods
        .values()
        .filter(|p| p.meta.namespace == req.namespace && p.meta.name == req.pod)
        .max_by_key(|p| p.meta.created_at)
        .ok_or_else(|| {
            LogError::NotFound(format!(
                "pod {}/{} does not run on this node",
                req.namespace, req.pod
            ))
        })?;
    let container = match &req.container {
        Some(c) => c.clone(),
        None if pod.containers.len() == 1 => {
            pod.containers.keys().next().cloned().unwrap_or_default()
        }
        None => {
            let names: Vec<&str> = pod.containers.keys().map(String::as_str).collect();
            return Err(LogError::BadRequest(format!(
                "a container name must be specified for pod {}, choose one of: [{}]",
                req.pod,
                names.join(" ")
            )));
        }
    };
    crate::runtime::check_component("container name", &container)
        .map_err(|e| LogError::BadRequest(e.to_string()))?;
    let target = find_target(
        &data_dir.join("pods").join(&pod.meta.key),
        &container,
        req.previous,
    )?;
    read_logs(target, req, chrono::Utc::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_for_changes_alone_keep_a_gap_of_three_times_their_cost() {
        let ms = Duration::from_millis;
        assert_eq!(change_round_gap(ms(2)), CHANGE_ROUND_GAP);
        assert_eq!(change_round_gap(ms(40)), ms(120));
        assert_eq!(change_round_gap(ms(900)), MAX_CHANGE_ROUND_GAP);
    }
}
