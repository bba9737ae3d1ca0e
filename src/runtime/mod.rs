//! Container execution on this node: the node-local image store (`image`), OCI bundles, the
//! runc driver, and the per-container monitor (`shim`) and per-pod sandbox processes that
//! outlive the agent. Shell code: the decisions are made by `crate::kubelet`'s pure planner.
//!
//! Files (see `docs/workloads.md`, "Runtime"):
//!
//! ```text
//! <data>/pods/<pod key>/pod.json                       PodMeta (written by the kubelet)
//! <data>/pods/<pod key>/sandbox.json                   pid + start time of `shoal sandbox`
//! <data>/pods/<pod key>/network.json                   the pod's CNI attachment (network::PodNetwork)
//! <data>/cni/networks/shoal/                           host-local's leases of this node
//! <data>/pods/<pod key>/etc/{hosts,hostname,resolv.conf}, shm/, volumes/<name>/
//! <data>/pods/<pod key>/logs/<container>/<restart>.log CRI log lines (+ `.1` rotated)
//! <data>/pods/<pod key>/containers/<container>/<restart>/
//!     shim.json (ShimSpec), config.json + rootfs/ (the OCI bundle), upper/ work/ (overlay),
//!     shim.pid, container.pid, started.json, exit.json, runc.log, shim.log
//! ```

pub mod bundle;
pub mod image;
pub mod leases;
pub mod logs;
pub mod mountinfo;
pub mod netlink;
pub mod network;
pub mod nsexec;
pub mod observe;
pub mod orphans;
pub mod pods;
pub mod runc;
pub mod runc_version;
pub mod sandbox;
pub mod seccomp;
pub mod shim;
pub mod usage;
pub mod volumes;

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

pub use crate::model::observed::{ExitRecord, PodMeta, ProcessRecord};
pub use observe::{AttemptState, ObservedAttempt, ObservedContainer, ObservedPod};
pub use pods::Runtime;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Runc(String),
    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },
    /// The container cannot run as configured (`runAsNonRoot` with a root user): Kubernetes'
    /// `CreateContainerConfigError`.
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Spawn(String),
    #[error("image: {0}")]
    Image(String),
    /// A CNI plugin failed (the message names the plugin and what it said).
    #[error("network: {0}")]
    Network(String),
    /// The pod network cannot be set up yet (no pod CIDR): retried, the pod waits.
    #[error("network not ready: {0}")]
    NetworkNotReady(String),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// How this node runs containers. Built once by the agent (`RuntimeConfig::from_env`).
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// The agent's data dir (`<data>/pods`, `<data>/images` live below it).
    pub data_dir: PathBuf,
    /// The OCI runtime binary (`runc`, or anything with its command line such as `crun`).
    pub runtime_binary: PathBuf,
    /// `--root` of every runtime invocation (one per agent).
    pub runc_root: PathBuf,
    /// cgroup parent of this node's pods, relative to the hierarchy root (`/shoal/<node>`).
    pub cgroup_parent: String,
    /// The `shoal` binary started as `shoal shim` / `shoal sandbox`.
    pub shoal_binary: PathBuf,
    /// The pod network (CNI plugins); `None`: pods get a network namespace with only `lo`
    /// and the host's `resolv.conf` (agents advertising a loopback address, tests).
    pub cni: Option<network::CniConfig>,
    /// Where hostPath volumes may point (`shoal agent --allow-host-path`); empty: nowhere.
    pub host_path_prefixes: Vec<PathBuf>,
    /// Node-wide container limits (pids) and what the host's cgroups support (swap).
    pub limits: bundle::NodeLimits,
}

/// `shoal agent --pod-pids-limit`'s default: the most processes (threads count) one container
/// may have, like the kubelet's `podPidsLimit`. Enough for any ordinary server, too few for a
/// fork bomb to exhaust the host's pid space (`kernel.pid_max` is 4 million on 64-bit hosts).
pub const DEFAULT_POD_PIDS_LIMIT: i64 = 4096;

/// Most bytes read from any small state file the runtime wrote (pod.json, exit.json...).
pub const MAX_STATE_FILE: u64 = 1 << 20;

impl RuntimeConfig {
    /// From the environment: `SHOAL_RUNTIME` (default `runc`), `SHOAL_RUNC_ROOT` (default
    /// `<data>/runc`), `SHOAL_CGROUP_PARENT` (an absolute cgroupfs path such as
    /// `/sys/fs/cgroup/unified/shoal-testnet/n1`, or a path relative to the hierarchy root;
    /// default `/shoal/<node>`), `SHOAL_CNI_PATH` (see [`network::CniConfig::from_env`]). The
    /// shoal binary is the running executable. `pod_network`: whether pods get CNI networking.
    pub fn from_env(data_dir: &Path, node: &str, pod_network: bool) -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let runtime_binary = PathBuf::from(var("SHOAL_RUNTIME").unwrap_or_else(|| "runc".into()));
        let runc_root = var("SHOAL_RUNC_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| data_dir.join("runc"));
        let cgroup_parent = match var("SHOAL_CGROUP_PARENT") {
            Some(p) => runc::cgroup_relative(&p, &runc::cgroup_mounts()),
            None => format!("/shoal/{node}"),
        };
        RuntimeConfig {
            data_dir: data_dir.to_path_buf(),
            runtime_binary,
            runc_root,
            cgroup_parent,
            shoal_binary: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("shoal")),
            cni: pod_network.then(|| network::CniConfig::from_env(data_dir)),
            host_path_prefixes: Vec::new(),
            limits: bundle::NodeLimits {
                pids_limit: Some(DEFAULT_POD_PIDS_LIMIT),
                memory_swap_limit: runc::swap_accounting(Path::new("/sys/fs/cgroup")),
                capability_bound: std::fs::read_to_string("/proc/self/status")
                    .ok()
                    .and_then(|s| crate::model::security_context::parse_cap_bound(&s)),
                deny_privileged: false,
            },
        }
    }

    /// The same with `--deny-privileged`: privileged containers are refused.
    pub fn with_deny_privileged(mut self, deny: bool) -> Self {
        self.limits.deny_privileged = deny;
        self
    }

    /// The same with `--pod-pids-limit` (0 or less: none).
    pub fn with_pod_pids_limit(mut self, limit: i64) -> Self {
        self.limits.pids_limit = (limit > 0).then_some(limit);
        self
    }

    pub fn pods_dir(&self) -> PathBuf {
        self.data_dir.join("pods")
    }
}

impl ProcessRecord {
    /// The record of process `pid` as it is now, if it exists.
    pub fn of(pid: i32) -> Option<Self> {
        proc_start_time(pid).map(|start_time| ProcessRecord { pid, start_time })
    }
    pub fn this_process() -> Option<Self> {
        Self::of(std::process::id() as i32)
    }
    /// Whether the process still runs (same pid, same start time, not a zombie).
    pub fn alive(&self) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        match parse_stat(&stat) {
            Some((state, start)) => start == self.start_time && state != 'Z' && state != 'X',
            None => false,
        }
    }
}

/// `(state, start time)` from a `/proc/<pid>/stat` line (the command may contain spaces and
/// parentheses: fields are counted after the last `)`).
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // state is field 3; starttime is field 22 → 19 more fields after state.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

pub fn proc_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(_, start)| start)
}

/// `started.json`: written by the shim once `runc start` returned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartedRecord {
    pub pid: i32,
    pub started_at: DateTime<Utc>,
}

/// Writes JSON atomically (temp file + rename; no fsync: these files describe processes that
/// do not survive a host crash either).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), RuntimeError> {
    let bytes = serde_json::to_vec(value).map_err(|e| RuntimeError::Invalid {
        what: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Reads a small JSON state file; `Ok(None)` if it does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, RuntimeError> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_STATE_FILE)
        .read_to_end(&mut bytes)
        .map_err(io_err(path))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| RuntimeError::Invalid {
            what: path.display().to_string(),
            reason: e.to_string(),
        })
}

/// A name used as a path component or runc id part: `[A-Za-z0-9_.-]`, 1..=128 bytes, not `.`/`..`.
pub fn check_component(what: &str, s: &str) -> Result<(), RuntimeError> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::Invalid {
            what: what.into(),
            reason: format!("{s:?} is not a safe name"),
        })
    }
}

/// What a container is started from: the image's config and its unpacked layers (bottom
/// first). Supplied by the image store (`image`), or by tests.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImageInfo {
    pub reference: String,
    pub digest: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub layers: Vec<PathBuf>,
}

/// Niceness of the agent's threads: above the container work it starts, so membership probes,
/// the API and replication keep answering while a node starts hundreds of containers at once
/// (a starved agent misses probes, is declared dead, and its pods fail over needlessly).
pub const AGENT_NICE: i32 = -5;

/// Niceness of the kubelet's runtime work (runc, CNI plugins, spawning sandboxes and shims):
/// below the agent's threads (membership, replication, the API), so a burst of pod starts
/// cannot delay a probe's ack; the containers themselves run at 0.
pub const RUNTIME_WORK_NICE: i32 = 5;

/// Niceness of the agent's network thread (membership probes and acks, replication), and of
/// the agent's autogroup where autogroup scheduling is on.
pub const NETWORK_NICE: i32 = -10;

/// Sets the nice value of this process's *autogroup*. With Linux's `CONFIG_SCHED_AUTOGROUP` on
/// (the default of most distributions), every session is a scheduling group and the groups
/// share the CPU equally whatever their threads' niceness: an agent at −5 would get no more
/// than one container's session (each sandbox, shim and container calls `setsid`), and a
/// burst of a hundred starting pods would starve it. The group's own nice value is what
/// weighs against the other sessions. No-op (logged) without autogroup or privilege.
pub fn set_autogroup_nice(nice: i32) {
    if let Err(e) = std::fs::write("/proc/self/autogroup", nice.to_string()) {
        tracing::debug!(nice, error = %e, "setting the autogroup's nice value failed");
    }
}

/// Sets the calling thread's niceness (Linux: per thread; threads and processes created
/// afterwards inherit it). Failure (no privilege) is logged and otherwise ignored.
pub fn set_niceness(nice: i32) {
    // SAFETY: setpriority has no memory-safety preconditions; `0` names the calling thread.
    let rc = unsafe { nix::libc::setpriority(nix::libc::PRIO_PROCESS, 0, nice) };
    if rc != 0 {
        tracing::debug!(nice, error = %std::io::Error::last_os_error(), "setpriority failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_the_command() {
        let line =
            "123 (a) b) c) S 1 123 123 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat(line), Some(('S', 987654)));
        let spaced = "4242 (sle ep) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 3559115 1654784 1";
        assert_eq!(parse_stat(spaced), Some(('S', 3559115)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = ProcessRecord::this_process().expect("own stat");
        assert!(me.alive());
        let other = ProcessRecord {
            pid: me.pid,
            start_time: me.start_time + 1,
        };
        assert!(!other.alive());
    }

    #[test]
    fn components() {
        assert!(check_component("x", "3f2a-b_c.d").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(129)] {
            assert!(check_component("x", bad).is_err(), "{bad:?}");
        }
    }
}
