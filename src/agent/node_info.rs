//! Facts about the host for the node record: OS, kernel, capacity, runtime version.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::model::{NodeRecord, NodeSystemInfo};

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_lowercase())
        .unwrap_or_else(|_| "localhost".into())
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "Linux".into())
}

fn memory_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

fn runtime_version() -> String {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(probe_runtime_version).clone()
}

fn probe_runtime_version() -> String {
    std::process::Command::new("runc")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(2))
                .map(|v| format!("runc://{v}"))
        })
        .unwrap_or_else(|| "runc://unknown".into())
}

/// This node's record; keeps uid and creation time of an existing record of the same peer.
pub fn record(
    name: &str,
    peer_id: &str,
    p2p_addr: &str,
    api_addr: &str,
    ip: IpAddr,
    existing: Option<&NodeRecord>,
) -> NodeRecord {
    let same = existing.filter(|r| r.peer_id == peer_id);
    let mut capacity = BTreeMap::new();
    capacity.insert(
        "cpu".to_string(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .to_string(),
    );
    capacity.insert("memory".to_string(), format!("{}Ki", memory_kib()));
    capacity.insert("pods".to_string(), "110".to_string());
    let mut labels = BTreeMap::new();
    labels.insert("kubernetes.io/hostname".to_string(), name.to_string());
    labels.insert("kubernetes.io/os".to_string(), "linux".to_string());
    labels.insert("kubernetes.io/arch".to_string(), arch().to_string());
    NodeRecord {
        name: name.to_string(),
        uid: same
            .map(|r| r.uid.clone())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        peer_id: peer_id.to_string(),
        p2p_addr: p2p_addr.to_string(),
        api_addr: api_addr.to_string(),
        internal_ip: ip.to_string(),
        created: same.map(|r| r.created).unwrap_or_else(chrono::Utc::now),
        labels,
        capacity,
        system: NodeSystemInfo {
            os_image: os_image(),
            kernel_version: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            architecture: arch().to_string(),
            operating_system: "linux".into(),
            container_runtime_version: runtime_version(),
            shoal_version: crate::VERSION.to_string(),
            machine_id: std::fs::read_to_string("/etc/machine-id")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            local_path_root: String::new(),
        },
    }
}

/// Adds this node's local-path storage to its record: the root and, as capacity
/// (`storage::CAPACITY_KEY`), the size of the file system holding it.
pub fn with_local_path(record: &mut NodeRecord, root: &std::path::Path) {
    record.system.local_path_root = root.display().to_string();
    if let Ok(s) = nix::sys::statvfs::statvfs(root) {
        let bytes = s.blocks().saturating_mul(s.fragment_size());
        record.capacity.insert(
            crate::model::storage::CAPACITY_KEY.to_string(),
            bytes.to_string(),
        );
    }
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}
