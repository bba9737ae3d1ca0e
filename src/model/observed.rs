//! What the kubelet's runtime observes of a pod on this node, as plain values: the pod's meta
//! (`pod.json`), its sandbox process, its network attachment (`network.json`) and its
//! containers' attempts (`exit.json`). The runtime reads and writes them; the kubelet's pure
//! planner decides from them.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::network;

/// The message of a sandbox creation before the node holds a pod CIDR.
pub const NO_POD_CIDR: &str = "this node has no pod CIDR yet";

/// What the kubelet knows of a pod when it creates its sandbox; `pod.json` in the pod dir.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PodMeta {
    /// The binding id (or the pod uid for pods with `spec.nodeName`): the pod dir's name.
    pub key: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Seconds between SIGTERM and SIGKILL when the pod is stopped.
    pub grace_seconds: u64,
    pub created_at: DateTime<Utc>,
    /// The containers with a preStop hook (name, ports and lifecycle only), so the hook also
    /// runs when the pod is deleted from the document.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<k8s_openapi::api::core::v1::Container>,
    /// The pod's sidecars (init containers with `restartPolicy: Always`) in their init
    /// order, so a stop (also of a pod deleted from the document) stops them after the other
    /// containers, the last first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sidecars: Vec<String>,
    /// `spec.hostname` (the pod's hostname instead of its name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `spec.subdomain`: with it the pod's `/etc/hosts` names it
    /// `<hostname>.<subdomain>.<ns>.svc.<cluster domain>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdomain: Option<String>,
    /// `spec.hostNetwork`: the pod shares the node's network (and UTS) namespace; no pod
    /// network attachment, its IP is the node's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,
    /// `spec.dnsPolicy` and `spec.dnsConfig` (its `resolv.conf`, `network::pod_resolv_conf`).
    #[serde(default)]
    pub dns: network::PodDns,
}

impl PodMeta {
    /// The pod's hostname: `spec.hostname`, else its name, cut to 63 characters without a
    /// trailing `-` or `.` (as Kubernetes' kubelet does).
    pub fn hostname(&self) -> String {
        let name = self.hostname.as_deref().unwrap_or(&self.name);
        let cut: String = name.chars().take(63).collect();
        cut.trim_end_matches(['-', '.']).to_string()
    }

    /// The pod's fully qualified name when it has a subdomain:
    /// `<hostname>.<subdomain>.<ns>.svc.<domain>`.
    pub fn fqdn(&self) -> Option<String> {
        let sub = self.subdomain.as_deref().filter(|s| !s.is_empty())?;
        Some(format!(
            "{}.{sub}.{}.svc.{}",
            self.hostname(),
            self.namespace,
            network::CLUSTER_DOMAIN
        ))
    }

    /// `/etc/hosts` of the pod: localhost, and its own names at `ip` once it has an address
    /// (the fully qualified one first, as Kubernetes writes it), else at `127.0.1.1`.
    pub fn etc_hosts(&self, ip: Option<Ipv4Addr>) -> String {
        let host = self.hostname();
        let names = match self.fqdn() {
            Some(fqdn) => format!("{fqdn}\t{host}"),
            None => host,
        };
        let at = ip.map_or_else(|| "127.0.1.1".to_string(), |ip| ip.to_string());
        format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{at}\t{names}\n")
    }
}

/// `sandbox.json` / `shim.pid`: a process and its start time (clock ticks since boot, field 22
/// of `/proc/<pid>/stat`), so a reused pid is never taken for ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub pid: i32,
    pub start_time: u64,
}

/// `exit.json`: written by the shim (atomically) once the container is gone and deleted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The exit code, `128 + signal` when killed by a signal, 128 when it never started.
    pub exit_code: i32,
    pub signal: Option<i32>,
    /// `Completed`, `Error`, `OOMKilled`, `StartError`.
    pub reason: String,
    pub message: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: DateTime<Utc>,
    pub oom_killed: bool,
}

/// The address a pod got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodAddress {
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
}

/// `network.json`: written with `address: None` before the CNI ADD (so a crash in between
/// still leads to a DEL), and with the address and the plugin's result once it succeeded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PodNetwork {
    /// The pod CIDR the address was taken from (the node's at the time).
    pub cidr: String,
    /// The CNI container id (the pod key).
    pub container_id: String,
    #[serde(default)]
    pub address: Option<PodAddress>,
    /// The plugin's result (CHECK's `prevResult`).
    #[serde(default)]
    pub result: Option<Value>,
}

impl PodNetwork {
    /// Whether the pod's address belongs to `pod_cidr` (the node's current one).
    pub fn within(&self, pod_cidr: &str) -> bool {
        match (self.address, network::parse_cidr(pod_cidr)) {
            (Some(a), Some(net)) => self.cidr == pod_cidr && net.contains(&a.ip),
            _ => false,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ObservedPod {
    pub meta: PodMeta,
    /// The sandbox process, if it is alive.
    pub sandbox: Option<ProcessRecord>,
    /// The pod's network attachment (`network.json`), if any.
    pub network: Option<PodNetwork>,
    pub containers: BTreeMap<String, ObservedContainer>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ObservedContainer {
    pub latest: ObservedAttempt,
    pub previous: Option<ObservedAttempt>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ObservedAttempt {
    /// The restart count this attempt was started as (0 for the first).
    pub restart: u32,
    pub state: AttemptState,
}

#[derive(Clone, Debug, PartialEq)]
pub enum AttemptState {
    /// The shim runs but the container has not started yet.
    Creating,
    Running {
        started_at: DateTime<Utc>,
    },
    Exited(ExitRecord),
}

impl ObservedPod {
    /// Whether anything of the pod still runs (sandbox or a container that is not exited).
    pub fn anything_running(&self) -> bool {
        self.sandbox.is_some()
            || self
                .containers
                .values()
                .any(|c| !matches!(c.latest.state, AttemptState::Exited(_)))
    }
}
