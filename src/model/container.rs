//! What the kubelet resolves for a container before the runtime starts it, as plain values:
//! its env (`envFrom` then `env`, with `$(VAR)` expansion marked) and the volumes it mounts
//! (emptyDir, hostPath, files from ConfigMaps and Secrets). `kubelet::config` builds them; the
//! runtime's bundle and volume code carries them out.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Container, Pod};

/// What the kubelet resolved for one container from ConfigMaps, Secrets and the pod
/// (`kubelet::config`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResolvedConfig {
    /// `envFrom` then `env`, in order (later names override earlier ones).
    pub env: Vec<EnvEntry>,
    /// The pod's volumes this container mounts, by name.
    pub volumes: BTreeMap<String, VolumeSource>,
    /// Whether any value came from a Secret (its OCI config then stays in memory).
    pub sensitive: bool,
    /// Kubernetes' warnings for `envFrom` keys that are not valid env names (skipped).
    pub skipped: Vec<String>,
}

impl ResolvedConfig {
    /// The container's literal env and the pod's emptyDir volumes it mounts (no objects).
    pub fn literal(pod: &Pod, container: &Container) -> Self {
        let volumes = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .into_iter()
            .flatten()
            .filter(|v| {
                container
                    .volume_mounts
                    .iter()
                    .flatten()
                    .any(|m| m.name == v.name)
            })
            .filter_map(|v| {
                let e = v.empty_dir.as_ref()?;
                Some((
                    v.name.clone(),
                    VolumeSource::EmptyDir {
                        memory: e.medium.as_deref() == Some("Memory"),
                        size_limit: None,
                    },
                ))
            })
            .collect();
        ResolvedConfig {
            env: literal_env(container),
            volumes,
            sensitive: false,
            skipped: Vec::new(),
        }
    }
}

/// One variable of a container's env, in order. `expand`: a literal `value`, subject to
/// `$(VAR)` expansion; values from `valueFrom`/`envFrom` are taken as they are.
#[derive(Clone, PartialEq, Eq)]
pub struct EnvEntry {
    pub name: String,
    pub value: String,
    pub expand: bool,
}

impl std::fmt::Debug for EnvEntry {
    // Never the value: it may be a Secret's.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EnvEntry({})", self.name)
    }
}

/// A container's literal `env` (no `valueFrom`, which needs the kubelet's objects): for
/// callers without a resolved env.
pub fn literal_env(container: &Container) -> Vec<EnvEntry> {
    container
        .env
        .iter()
        .flatten()
        .filter(|v| v.value_from.is_none())
        .map(|v| EnvEntry {
            name: v.name.clone(),
            value: v.value.clone().unwrap_or_default(),
            expand: true,
        })
        .collect()
}

/// One file of a configMap/secret volume (`path` relative, checked by the kubelet).
#[derive(Clone, PartialEq, Eq)]
pub struct VolumeFile {
    pub path: String,
    pub bytes: Vec<u8>,
    pub mode: u32,
}

impl std::fmt::Debug for VolumeFile {
    // Never the bytes: they may be a Secret's.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}({} bytes, {:o})",
            self.path,
            self.bytes.len(),
            self.mode
        )
    }
}

/// `hostPath.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostPathType {
    /// `""`: no check.
    Unset,
    DirectoryOrCreate,
    Directory,
    FileOrCreate,
    File,
    Socket,
    CharDevice,
    BlockDevice,
}

impl HostPathType {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "" => HostPathType::Unset,
            "DirectoryOrCreate" => HostPathType::DirectoryOrCreate,
            "Directory" => HostPathType::Directory,
            "FileOrCreate" => HostPathType::FileOrCreate,
            "File" => HostPathType::File,
            "Socket" => HostPathType::Socket,
            "CharDevice" => HostPathType::CharDevice,
            "BlockDevice" => HostPathType::BlockDevice,
            _ => return None,
        })
    }
}

/// What one volume is made of (resolved by `kubelet::config`).
#[derive(Clone, Debug, PartialEq)]
pub enum VolumeSource {
    EmptyDir {
        memory: bool,
        size_limit: Option<u64>,
    },
    HostPath {
        path: PathBuf,
        kind: HostPathType,
    },
    /// configMap, secret or projected: files; `secret`: kept in the memory dir.
    Files {
        files: Vec<VolumeFile>,
        secret: bool,
    },
    /// A PersistentVolumeClaim's local-path directory on this node (created when missing).
    Claim {
        path: PathBuf,
        read_only: bool,
    },
}
