//! [`Runtime`]: the operations the kubelet carries out on this node — create a pod's sandbox,
//! start a container attempt under its shim, signal a container, remove a pod — and the scan
//! of what runs. Blocking code (short file writes and runtime invocations): the kubelet calls
//! it from blocking tasks.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod};

use super::network::{Cni, PodNetwork, NETWORK_RECORD, NO_POD_CIDR};
use super::observe::{observe_all, ObservedPod};
use super::runc::{self, OciRuntime, RuncCli};
use super::sandbox::SANDBOX_RECORD;
use super::shim::{ShimSpec, EXIT, SHIM_SPEC};
use super::{
    bundle, check_component, io_err, read_json, volumes, write_json, ImageInfo, PodMeta,
    ProcessRecord, RuntimeConfig, RuntimeError,
};

/// How a started shim reported.
#[derive(Debug)]
pub enum StartOutcome {
    /// The container runs; `exit` reaches EOF when its shim exits.
    Started { exit: ChildStdout },
    /// The container could not be started (the attempt's `exit.json` says why).
    Failed { message: String },
}

pub struct Runtime {
    pub config: RuntimeConfig,
    runc: Arc<dyn OciRuntime>,
}

/// The runc id of one attempt.
pub fn container_id(pod_key: &str, container: &str, restart: u32) -> String {
    format!("{pod_key}-{container}-{restart}")
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Self {
        let runc = Arc::new(RuncCli::new(&config.runtime_binary, &config.runc_root));
        Runtime { config, runc }
    }

    /// With another runtime driver (tests).
    pub fn with_driver(config: RuntimeConfig, runc: Arc<dyn OciRuntime>) -> Self {
        Runtime { config, runc }
    }

    pub fn pod_dir(&self, key: &str) -> PathBuf {
        self.config.pods_dir().join(key)
    }

    pub fn attempt_dir(&self, key: &str, container: &str, restart: u32) -> PathBuf {
        self.pod_dir(key)
            .join("containers")
            .join(container)
            .join(restart.to_string())
    }

    /// What runs on this node now.
    pub fn observe(&self) -> BTreeMap<String, ObservedPod> {
        observe_all(&self.config.pods_dir())
    }

    /// What runs on this node now of the pods `keys` (`None`: nothing of it is left).
    pub fn observe_some<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a String>,
    ) -> Vec<(String, Option<ObservedPod>)> {
        let dir = self.config.pods_dir();
        keys.into_iter()
            .filter(|k| check_component("pod key", k).is_ok())
            .map(|k| (k.clone(), super::observe::observe_one(&dir, k)))
            .collect()
    }

    /// Creates the pod dir (meta, `/etc` files, shm, volumes, logs), starts its sandbox and,
    /// with the pod network on, attaches it (CNI ADD) with an address from `pod_cidr`, the
    /// node's current pod CIDR (refused with [`RuntimeError::NetworkNotReady`] while there is
    /// none). Idempotent: a live, attached sandbox is returned as is; a live one whose attach
    /// failed earlier is attached now.
    pub fn create_sandbox(
        &self,
        meta: &PodMeta,
        pod_cidr: Option<&str>,
    ) -> Result<ProcessRecord, RuntimeError> {
        check_component("pod key", &meta.key)?;
        let dir = self.pod_dir(&meta.key);
        let cidr = match (&self.config.cni, pod_cidr) {
            (None, _) => None,
            // The node's network: no attachment (the cluster DNS, for
            // `ClusterFirstWithHostNet`, is at the gateway of the node's pod CIDR if it has one).
            (Some(_), c) if meta.host_network => {
                let live = read_json::<ProcessRecord>(&dir.join(SANDBOX_RECORD))?
                    .filter(ProcessRecord::alive);
                return match live {
                    Some(rec) => Ok(rec),
                    None => {
                        let gateway = c.and_then(crate::model::network::gateway);
                        self.start_sandbox(meta, &dir, gateway)
                    }
                };
            }
            (Some(_), None) => return Err(RuntimeError::NetworkNotReady(NO_POD_CIDR.into())),
            (Some(_), Some(c)) => {
                Some(
                    crate::model::network::parse_cidr(c).ok_or_else(|| RuntimeError::Invalid {
                        what: "pod CIDR".into(),
                        reason: format!("{c:?} is not an IPv4 CIDR"),
                    })?,
                )
            }
        };
        let live =
            read_json::<ProcessRecord>(&dir.join(SANDBOX_RECORD))?.filter(ProcessRecord::alive);
        let started = Instant::now();
        let sandbox = match live {
            Some(rec) => rec,
            None => self.start_sandbox(
                meta,
                &dir,
                cidr.and_then(|c| crate::model::network::gateway(&c.to_string())),
            )?,
        };
        let spawned = started.elapsed();
        if let (Some(cni), Some(cidr)) = (&self.config.cni, cidr) {
            self.attach(&Cni::new(cni.clone()), &meta.key, &dir, sandbox, cidr)?;
            // Its own names at its address in `/etc/hosts`, as Kubernetes writes them.
            let address = read_json::<PodNetwork>(&dir.join(NETWORK_RECORD))?
                .and_then(|n| n.address)
                .map(|a| a.ip);
            if let Some(ip) = address {
                let hosts = dir.join("etc").join("hosts");
                std::fs::write(&hosts, meta.etc_hosts(Some(ip))).map_err(io_err(&hosts))?;
            }
        }
        tracing::debug!(
            key = %meta.key,
            spawn_ms = spawned.as_millis() as u64,
            attach_ms = (started.elapsed() - spawned).as_millis() as u64,
            "sandbox ready"
        );
        Ok(sandbox)
    }

    /// Starts the sandbox of `meta` with its `/etc` files; `cluster_dns`: the node's DNS server
    /// (the gateway of its pod CIDR), when pods get the pod network.
    fn start_sandbox(
        &self,
        meta: &PodMeta,
        dir: &Path,
        cluster_dns: Option<std::net::Ipv4Addr>,
    ) -> Result<ProcessRecord, RuntimeError> {
        for sub in ["etc", "shm", "volumes", "logs", "containers"] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        let hostname = match meta.host_network {
            // The node's UTS namespace too, as Kubernetes does for hostNetwork pods.
            true => nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| meta.hostname()),
            false => meta.hostname(),
        };
        let etc = dir.join("etc");
        let write = |name: &str, bytes: &[u8]| {
            let p = etc.join(name);
            std::fs::write(&p, bytes).map_err(io_err(&p))
        };
        let host_file = |path: &str| {
            let bytes = std::fs::read(path).unwrap_or_default();
            String::from_utf8_lossy(&bytes[..bytes.len().min(64 << 10)]).into_owned()
        };
        write("hostname", format!("{hostname}\n").as_bytes())?;
        match meta.host_network {
            // The node's own `/etc/hosts`, as Kubernetes gives hostNetwork pods.
            true => write("hosts", host_file("/etc/hosts").as_bytes())?,
            false => write("hosts", meta.etc_hosts(None).as_bytes())?,
        }
        // `dnsPolicy`/`dnsConfig` (model::network::pod_resolv_conf): the node's DNS server on
        // the gateway (ClusterFirst), the node's own file (Default, or no pod network), or
        // only the pod's dnsConfig (None).
        write(
            "resolv.conf",
            crate::model::network::pod_resolv_conf(
                &meta.dns,
                meta.host_network,
                &meta.namespace,
                cluster_dns,
                &host_file("/etc/resolv.conf"),
            )
            .as_bytes(),
        )?;
        write_json(&dir.join("pod.json"), meta)?;
        // A stale attachment record (of a sandbox that is gone) describes nothing any more.
        let _ = std::fs::remove_file(dir.join(NETWORK_RECORD));
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "--dir".as_ref(),
            dir.as_os_str(),
            "--hostname".as_ref(),
            hostname.as_ref(),
        ];
        if meta.host_network {
            args.push("--host-network".as_ref());
        }
        let (_, line) = self.spawn_helper("sandbox", &args)?;
        if line != "ready" {
            return Err(RuntimeError::Spawn(format!(
                "sandbox of {}/{}: {line}",
                meta.namespace, meta.name
            )));
        }
        read_json::<ProcessRecord>(&dir.join(SANDBOX_RECORD))?
            .ok_or_else(|| RuntimeError::Spawn("the sandbox wrote no record".into()))
    }

    /// CNI ADD of the sandbox's network namespace unless `network.json` already records an
    /// address from `cidr`. The record is written first without an address, so a crash during
    /// ADD still leads to a DEL; a failed ADD is undone with a DEL (CNI spec) and reported.
    fn attach(
        &self,
        cni: &Cni,
        key: &str,
        dir: &Path,
        sandbox: ProcessRecord,
        cidr: ipnet::Ipv4Net,
    ) -> Result<(), RuntimeError> {
        let record = dir.join(NETWORK_RECORD);
        let cidr_s = cidr.to_string();
        let netns = PathBuf::from(format!("/proc/{}/ns/net", sandbox.pid));
        match read_json::<PodNetwork>(&record)? {
            Some(n) if n.address.is_some() && n.within(&cidr_s) => return Ok(()),
            Some(n) if n.address.is_some() => {
                return Err(RuntimeError::Network(format!(
                    "the sandbox has address {} from {}, outside this node's pod CIDR {cidr_s}: it must be re-created",
                    n.address.map(|a| a.ip.to_string()).unwrap_or_default(),
                    n.cidr
                )))
            }
            // An attempt that did not finish: undo what it may have done.
            Some(n) => self.detach(cni, &n, Some(&netns))?,
            None => {}
        }
        let mut net = PodNetwork {
            cidr: cidr_s,
            container_id: key.to_string(),
            address: None,
            result: None,
        };
        write_json(&record, &net)?;
        match cni.add(key, &netns, cidr) {
            Ok((address, result)) => {
                net.address = Some(address);
                net.result = Some(result);
                write_json(&record, &net)
            }
            Err(e) => {
                if let Err(undo) = self.detach(cni, &net, Some(&netns)) {
                    tracing::warn!(%undo, %key, "undoing a failed CNI ADD");
                }
                Err(e)
            }
        }
    }

    /// CNI DEL of a recorded attachment, then the record goes.
    fn detach(
        &self,
        cni: &Cni,
        net: &PodNetwork,
        netns: Option<&Path>,
    ) -> Result<(), RuntimeError> {
        let cidr =
            crate::model::network::parse_cidr(&net.cidr).ok_or_else(|| RuntimeError::Invalid {
                what: NETWORK_RECORD.into(),
                reason: format!("bad CIDR {:?}", net.cidr),
            })?;
        cni.del(&net.container_id, netns.filter(|p| p.exists()), cidr)
    }

    /// Releases a pod's network (CNI DEL; the namespace may be gone) and removes
    /// `network.json`. Nothing to do without a record or without the pod network.
    fn release_network(
        &self,
        key: &str,
        sandbox: Option<ProcessRecord>,
    ) -> Result<(), RuntimeError> {
        let Some(cni) = &self.config.cni else {
            return Ok(());
        };
        let record = self.pod_dir(key).join(NETWORK_RECORD);
        let Some(net) = read_json::<PodNetwork>(&record).ok().flatten() else {
            let _ = std::fs::remove_file(&record);
            return Ok(());
        };
        let netns = sandbox.map(|s| PathBuf::from(format!("/proc/{}/ns/net", s.pid)));
        self.detach(&Cni::new(cni.clone()), &net, netns.as_deref())?;
        match std::fs::remove_file(&record) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&record)(e)),
            _ => Ok(()),
        }
    }

    /// Stops the pod's sandbox (its network released first) and leaves its containers: the
    /// kubelet then kills them and makes a new sandbox (a pod whose address is outside the
    /// node's current pod CIDR is re-created this way).
    pub fn stop_sandbox(&self, key: &str, timeout: Duration) -> Result<(), RuntimeError> {
        check_component("pod key", key)?;
        let dir = self.pod_dir(key);
        let sandbox =
            read_json::<ProcessRecord>(&dir.join(SANDBOX_RECORD))?.filter(ProcessRecord::alive);
        self.release_network(key, sandbox)?;
        if let Some(sandbox) = sandbox {
            stop_process(sandbox, Instant::now() + timeout);
        }
        Ok(())
    }

    /// [`Runtime::start_container_with`] with the container's literal env and its emptyDir
    /// volumes only (callers without the kubelet's resolved configuration).
    pub fn start_container(
        &self,
        key: &str,
        pod: &Pod,
        container: &Container,
        image: &ImageInfo,
        restart: u32,
    ) -> Result<StartOutcome, RuntimeError> {
        let config = bundle::ResolvedConfig::literal(pod, container);
        self.start_container_with(key, pod, container, image, restart, &config)
    }

    /// Writes the bundle of attempt `restart` of `container` (its volumes prepared, its env as
    /// `config` resolved it) and starts its shim; returns when the shim reports the container
    /// started (or failed to). With Secret material in `config`, the OCI config is written to
    /// the pod's memory dir and `config.json` links to it.
    pub fn start_container_with(
        &self,
        key: &str,
        pod: &Pod,
        container: &Container,
        image: &ImageInfo,
        restart: u32,
        config: &bundle::ResolvedConfig,
    ) -> Result<StartOutcome, RuntimeError> {
        check_component("pod key", key)?;
        check_component("container name", &container.name)?;
        let pod_dir = self.pod_dir(key);
        let sandbox = read_json::<ProcessRecord>(&pod_dir.join(SANDBOX_RECORD))?
            .filter(ProcessRecord::alive)
            .ok_or_else(|| RuntimeError::Spawn("the pod's sandbox is not running".into()))?;
        let attempt = self.attempt_dir(key, &container.name, restart);
        if attempt.exists() {
            return Err(RuntimeError::Spawn(format!(
                "attempt {} exists already",
                attempt.display()
            )));
        }
        for sub in ["rootfs", "upper", "work"] {
            let p = attempt.join(sub);
            std::fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        let logs = pod_dir.join("logs").join(&container.name);
        std::fs::create_dir_all(&logs).map_err(io_err(&logs))?;
        let cgroups_path = runc::container_cgroup(&self.config.cgroup_parent, key, &container.name);
        let prepared = volumes::prepare(&pod_dir, &config.volumes, &self.config.host_path_prefixes);
        let spec = prepared.and_then(|prepared| {
            bundle::build_spec(&bundle::BundleInput {
                pod,
                container,
                image,
                pod_dir: &pod_dir,
                sandbox_pid: sandbox.pid,
                cgroups_path: cgroups_path.clone(),
                limits: self.config.limits,
                env: &config.env,
                volumes: &prepared,
            })
        });
        let spec = match spec {
            Ok(s) => s,
            Err(e) => {
                // A bad spec is a start error of this attempt, recorded like runc's.
                let message = e.to_string();
                write_json(
                    &attempt.join(EXIT),
                    &super::ExitRecord {
                        exit_code: super::shim::START_ERROR_CODE,
                        signal: None,
                        reason: "StartError".into(),
                        message: Some(message.clone()),
                        started_at: None,
                        finished_at: chrono::Utc::now(),
                        oom_killed: false,
                    },
                )?;
                return Ok(StartOutcome::Failed { message });
            }
        };
        let config_path = attempt.join("config.json");
        let written = match config.sensitive {
            // runc reads config.json through the link; its state dir holds no process env.
            true => {
                let bundles = volumes::memory_dir(&pod_dir)?.join("bundles");
                std::fs::create_dir_all(&bundles).map_err(io_err(&bundles))?;
                let file = bundles.join(format!("{}-{restart}.json", container.name));
                std::os::unix::fs::symlink(&file, &config_path).map_err(io_err(&config_path))?;
                file
            }
            false => config_path,
        };
        spec.save(&written).map_err(|e| RuntimeError::Invalid {
            what: written.display().to_string(),
            reason: e.to_string(),
        })?;
        let shim = ShimSpec {
            id: container_id(key, &container.name, restart),
            runtime: self.config.runtime_binary.clone(),
            runc_root: self.config.runc_root.clone(),
            layers: image.layers.clone(),
            log_file: logs.join(format!("{restart}.log")),
            cgroups_path,
        };
        write_json(&attempt.join(SHIM_SPEC), &shim)?;
        let (stdout, line) =
            self.spawn_helper("shim", &["--attempt".as_ref(), attempt.as_os_str()])?;
        if line == "started" {
            Ok(StartOutcome::Started { exit: stdout })
        } else {
            let message = line.strip_prefix("failed: ").unwrap_or(&line).to_string();
            Ok(StartOutcome::Failed { message })
        }
    }

    /// Runs `shoal <what> ARGS` (the sandbox or a shim), which forks its long-lived process and
    /// exits; returns the forked process's stdout and the first line it wrote there.
    fn spawn_helper(
        &self,
        what: &str,
        args: &[&std::ffi::OsStr],
    ) -> Result<(ChildStdout, String), RuntimeError> {
        let binary = &self.config.shoal_binary;
        let mut child = Command::new(binary)
            .arg(what)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| RuntimeError::Spawn(format!("{} {what}: {e}", binary.display())))?;
        let mut stdout = child
            .stdout
            .take()
            .ok_or_else(|| RuntimeError::Spawn("no stdout".into()))?;
        let status = child
            .wait()
            .map_err(|e| RuntimeError::Spawn(e.to_string()))?;
        if !status.success() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return Err(RuntimeError::Spawn(format!(
                "shoal {what}: {status}: {}",
                err.trim()
            )));
        }
        let line = read_line(&mut stdout);
        Ok((stdout, line))
    }

    /// Sends `signal` (`TERM`, `KILL`) to a container attempt; one that is gone already is fine.
    pub fn kill_container(
        &self,
        key: &str,
        container: &str,
        restart: u32,
        signal: &str,
    ) -> Result<(), RuntimeError> {
        if self
            .attempt_dir(key, container, restart)
            .join(EXIT)
            .exists()
        {
            return Ok(());
        }
        match self
            .runc
            .kill(&container_id(key, container, restart), signal)
        {
            Ok(()) => Ok(()),
            Err(RuntimeError::Runc(m))
                if m.contains("not running")
                    || m.contains("does not exist")
                    || m.contains("not found") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Stops what is left of a pod (SIGKILL to its containers, waits up to `timeout` for their
    /// shims to record the exits, SIGTERM to its sandbox), deletes leftover runc containers and
    /// the pod's cgroups, and removes the pod dir.
    pub fn remove_pod(&self, key: &str, timeout: Duration) -> Result<(), RuntimeError> {
        check_component("pod key", key)?;
        let dir = self.pod_dir(key);
        let Some(meta) = read_json::<PodMeta>(&dir.join("pod.json")).ok().flatten() else {
            return remove_dir(&dir);
        };
        let pod = super::observe::observe_pod(&dir, meta);
        let mut waiting = Vec::new();
        for (name, c) in &pod.containers {
            if !matches!(c.latest.state, super::AttemptState::Exited(_)) {
                self.kill_container(key, name, c.latest.restart, "KILL")?;
                waiting.push(self.attempt_dir(key, name, c.latest.restart));
            }
        }
        let deadline = Instant::now() + timeout;
        while waiting.iter().any(|a| {
            matches!(
                super::observe::attempt_state(a),
                super::AttemptState::Running { .. } | super::AttemptState::Creating
            )
        }) && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        // The address goes back to host-local before the namespace does (DEL also works
        // once it is gone, but then the veth's removal is left to the kernel).
        self.release_network(key, pod.sandbox)?;
        if let Some(sandbox) = pod.sandbox {
            stop_process(sandbox, deadline);
        }
        let prefix = format!("{key}-");
        for entry in self.runc.list().unwrap_or_default() {
            if entry.id.starts_with(&prefix) {
                self.runc.delete(&entry.id, true)?;
            }
        }
        runc::remove_pod_cgroups(&self.config.cgroup_parent, key);
        remove_dir(&dir)
    }

    /// The ids of the runc containers under this node's root (none if `runc list` fails).
    pub fn runc_list_ids(&self) -> Vec<String> {
        match self.runc.list() {
            Ok(list) => list.into_iter().map(|e| e.id).collect(),
            Err(e) => {
                tracing::debug!(%e, "runc list");
                Vec::new()
            }
        }
    }

    /// `runc delete --force ID`.
    pub fn runc_delete_force(&self, id: &str) -> Result<(), RuntimeError> {
        self.runc.delete(id, true)
    }

    /// Removes the dir of pod `key` (unmounting its tmpfs volumes first).
    pub fn remove_dir_of(&self, key: &str) -> Result<(), RuntimeError> {
        check_component("pod key", key)?;
        remove_dir(&self.pod_dir(key))
    }

    /// runc containers under this node's root that no pod dir accounts for (left by a crash
    /// between `runc create` and the pod's removal): force-deleted. Returns their ids.
    pub fn sweep_orphans(&self) -> Result<Vec<String>, RuntimeError> {
        let pods = self.observe();
        let mut known = BTreeSet::new();
        for (key, pod) in &pods {
            for (name, c) in &pod.containers {
                known.insert(container_id(key, name, c.latest.restart));
            }
        }
        let mut removed = Vec::new();
        for entry in self.runc.list()? {
            if !known.contains(&entry.id) {
                self.runc.delete(&entry.id, true)?;
                removed.push(entry.id);
            }
        }
        Ok(removed)
    }

    /// Drops attempt dirs older than the one before the latest (their logs stay until the pod
    /// goes, rotated by the shim).
    pub fn prune_attempts(&self, key: &str, container: &str, latest: u32) {
        let dir = self.pod_dir(key).join("containers").join(container);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for e in entries.flatten() {
            if let Some(n) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
                if n + 1 < latest {
                    let _ = std::fs::remove_dir_all(e.path());
                    let _ = std::fs::remove_file(
                        self.pod_dir(key)
                            .join("logs")
                            .join(container)
                            .join(format!("{n}.log")),
                    );
                    let _ = std::fs::remove_file(
                        self.pod_dir(key)
                            .join("logs")
                            .join(container)
                            .join(format!("{n}.log.1")),
                    );
                }
            }
        }
    }
}

/// SIGTERM, then SIGKILL if it still lives at `deadline`.
fn stop_process(process: ProcessRecord, deadline: Instant) {
    let pid = nix::unistd::Pid::from_raw(process.pid);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    while process.alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if process.alive() {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
}

/// Removes a pod dir, unmounting its tmpfs volumes and memory dir first (their contents
/// vanish with the mounts).
fn remove_dir(dir: &Path) -> Result<(), RuntimeError> {
    if dir.exists() {
        volumes::unmount_all(dir)?;
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(dir)(e)),
    }
}

/// One line (at most 4 KiB) from a child's stdout; what was read if it ends early.
fn read_line(from: &mut ChildStdout) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 4096 {
        match from.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => break,
            Ok(1) => line.push(byte[0]),
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let s = String::from_utf8_lossy(&line).trim().to_string();
    if s.is_empty() {
        "exited without a report".into()
    } else {
        s
    }
}
