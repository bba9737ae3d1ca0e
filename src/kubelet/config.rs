//! What a container is configured from besides its image: env from ConfigMaps, Secrets and the
//! pod itself (`env[].valueFrom`, `envFrom`), and the contents of its volumes (configMap,
//! secret, downwardAPI, projected, emptyDir, hostPath), resolved the way the Kubernetes kubelet
//! does. The downward API (env `fieldRef`/`resourceFieldRef` and downwardAPI volume items) is
//! one code path: [`field_ref`] and [`resource_field_ref`].
//! Pure: the objects and the node's facts come in, the resolved values (or the
//! `CreateContainerConfigError` message) go out. The shell (`kubelet::mod`) reads the
//! objects from the merged document.
//!
//! Values never appear in an error: messages name objects and keys only.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use base64::Engine;
use k8s_openapi::api::core::v1::{
    Container, DownwardAPIVolumeFile, KeyToPath, ObjectFieldSelector, Pod, ResourceFieldSelector,
    Volume,
};
use serde_json::Value;

use crate::model::container::{EnvEntry, HostPathType, VolumeFile, VolumeSource};
#[cfg(test)]
use crate::model::downward::go_quote;
use crate::model::downward::{check_field_path, format_map, FieldScope};

/// The waiting reason of a container whose configuration cannot be resolved.
pub const CONFIG_ERROR: &str = "CreateContainerConfigError";
/// Mode of configMap/secret volume files without `defaultMode` (Kubernetes' 0644).
pub const DEFAULT_MODE: u32 = 0o644;

/// One ConfigMap's or Secret's values (decoded bytes by key).
pub type Values = BTreeMap<String, Vec<u8>>;

/// The objects of the pod's namespace a container may refer to, by name.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub config_maps: BTreeMap<String, Values>,
    pub secrets: BTreeMap<String, Values>,
    /// The PersistentVolumeClaims the pod mounts, by name, with the volume bound to each.
    pub claims: BTreeMap<String, ClaimVolume>,
}

/// A PersistentVolumeClaim the pod mounts, as the kubelet resolves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimVolume {
    pub uid: String,
    /// Its volume (`None`: not bound yet).
    pub volume: Option<crate::model::storage::Volume>,
}

/// What the kubelet knows of the pod and its node beyond the pod object.
#[derive(Clone, Debug, Default)]
pub struct NodeFacts {
    pub node_name: String,
    pub host_ip: String,
    /// The pod's address, once its sandbox is attached.
    pub pod_ip: Option<String>,
    /// The node's allocatable CPU (millicores) and memory (bytes): `resourceFieldRef` of a
    /// limit the container does not set.
    pub cpu_milli: u64,
    pub memory_bytes: u64,
    /// `shoal agent --allow-host-path` prefixes.
    pub host_path_prefixes: Vec<PathBuf>,
    /// `shoal agent --local-path-dir`: where this node's local-path volumes live.
    pub local_path_root: PathBuf,
}

/// A container's resolved configuration.
pub use crate::model::container::ResolvedConfig as ContainerConfig;

/// Which kind of object a reference names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    ConfigMap,
    Secret,
}

impl Kind {
    fn lower(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configmap",
            Kind::Secret => "secret",
        }
    }
    fn title(self) -> &'static str {
        match self {
            Kind::ConfigMap => "ConfigMap",
            Kind::Secret => "Secret",
        }
    }
}

impl Objects {
    fn get(&self, kind: Kind, name: &str) -> Option<&Values> {
        match kind {
            Kind::ConfigMap => self.config_maps.get(name),
            Kind::Secret => self.secrets.get(name),
        }
    }
}

fn not_found(kind: Kind, name: &str) -> String {
    format!("{} {name:?} not found", kind.lower())
}

/// The decoded values of a stored ConfigMap (`data` as text, `binaryData` base64).
pub fn config_map_values(object: &Value) -> Values {
    let mut out = Values::new();
    for (k, v) in object["data"].as_object().into_iter().flatten() {
        out.insert(
            k.clone(),
            v.as_str().unwrap_or_default().as_bytes().to_vec(),
        );
    }
    for (k, v) in object["binaryData"].as_object().into_iter().flatten() {
        if let Ok(bytes) =
            base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or_default())
        {
            out.insert(k.clone(), bytes);
        }
    }
    out
}

/// The decoded values of a (plain) Secret's `data`.
pub fn secret_values(object: &Value) -> Values {
    object["data"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            let bytes = crate::model::secret::decode_data_value(v.as_str()?).ok()?;
            Some((k.clone(), bytes))
        })
        .collect()
}

/// The ConfigMaps and Secrets `pod` refers to (env, envFrom, volumes), by name.
pub fn referenced(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let mut cms = Vec::new();
    let mut secrets = Vec::new();
    let Some(spec) = &pod.spec else {
        return (cms, secrets);
    };
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        for e in c.env_from.iter().flatten() {
            if let Some(r) = &e.config_map_ref {
                cms.push(r.name.clone());
            }
            if let Some(r) = &e.secret_ref {
                secrets.push(r.name.clone());
            }
        }
        for e in c.env.iter().flatten() {
            let Some(from) = &e.value_from else { continue };
            if let Some(r) = &from.config_map_key_ref {
                cms.push(r.name.clone());
            }
            if let Some(r) = &from.secret_key_ref {
                secrets.push(r.name.clone());
            }
        }
    }
    for v in spec.volumes.iter().flatten() {
        if let Some(cm) = &v.config_map {
            cms.push(cm.name.clone());
        }
        if let Some(s) = &v.secret {
            secrets.extend(s.secret_name.clone());
        }
        for p in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(cm) = &p.config_map {
                cms.push(cm.name.clone());
            }
            if let Some(s) = &p.secret {
                secrets.push(s.name.clone());
            }
        }
    }
    cms.sort();
    cms.dedup();
    secrets.sort();
    secrets.dedup();
    (cms, secrets)
}

/// Kubernetes' `IsEnvVarName`: `[-._a-zA-Z][-._a-zA-Z0-9]*`.
pub fn is_env_var_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphabetic() || matches!(b, b'-' | b'.' | b'_') => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// Resolves `container`'s env and volumes. `Err` is the `CreateContainerConfigError` message.
pub fn resolve(
    pod: &Pod,
    container: &Container,
    objects: &Objects,
    node: &NodeFacts,
) -> Result<ContainerConfig, String> {
    let mut out = ContainerConfig::default();
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        let (kind, name, optional) = match (&source.config_map_ref, &source.secret_ref) {
            (Some(r), _) => (Kind::ConfigMap, &r.name, r.optional == Some(true)),
            (None, Some(r)) => (Kind::Secret, &r.name, r.optional == Some(true)),
            (None, None) => continue,
        };
        let Some(values) = objects.get(kind, name) else {
            if optional {
                continue;
            }
            return Err(not_found(kind, name));
        };
        let mut invalid = Vec::new();
        for (key, value) in values {
            let var = format!("{prefix}{key}");
            if !is_env_var_name(&var) {
                invalid.push(var);
                continue;
            }
            out.sensitive |= kind == Kind::Secret;
            out.env.push(EnvEntry {
                name: var,
                value: String::from_utf8_lossy(value).into_owned(),
                expand: false,
            });
        }
        if !invalid.is_empty() {
            out.skipped.push(format!(
                "Keys [{}] from the EnvFrom {} {namespace}/{name} were skipped since they are considered invalid environment variable names.",
                invalid.join(", "),
                kind.lower()
            ));
        }
    }
    for var in container.env.iter().flatten() {
        let Some(from) = &var.value_from else {
            out.env.push(EnvEntry {
                name: var.name.clone(),
                value: var.value.clone().unwrap_or_default(),
                expand: true,
            });
            continue;
        };
        let value = if let Some(r) = &from.config_map_key_ref {
            key_ref(
                objects,
                Kind::ConfigMap,
                namespace,
                &r.name,
                &r.key,
                r.optional,
            )?
        } else if let Some(r) = &from.secret_key_ref {
            let v = key_ref(
                objects,
                Kind::Secret,
                namespace,
                &r.name,
                &r.key,
                r.optional,
            )?;
            out.sensitive |= v.is_some();
            v
        } else if let Some(f) = &from.field_ref {
            check_field_path(&f.field_path, FieldScope::Env)
                .map_err(|e| format!("env {:?}: {e}", var.name))?;
            Some(field_ref(pod, f, node)?)
        } else if let Some(r) = &from.resource_field_ref {
            Some(resource_field_ref(container, r, node)?)
        } else {
            return Err(format!("env {:?}: valueFrom names no source", var.name));
        };
        // An optional reference that is missing leaves the variable out, as Kubernetes does.
        if let Some(value) = value {
            out.env.push(EnvEntry {
                name: var.name.clone(),
                value,
                expand: false,
            });
        }
    }
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    for vm in container.volume_mounts.iter().flatten() {
        let Some(volume) = volumes.iter().find(|v| v.name == vm.name) else {
            return Err(format!("volume {:?} is not defined in the pod", vm.name));
        };
        if out.volumes.contains_key(&vm.name) {
            continue;
        }
        let source = volume_source(pod, volume, objects, node)?;
        out.sensitive |= matches!(source, VolumeSource::Files { secret: true, .. });
        out.volumes.insert(vm.name.clone(), source);
    }
    Ok(out)
}

/// One `configMapKeyRef` / `secretKeyRef`; `None` when optional and missing.
fn key_ref(
    objects: &Objects,
    kind: Kind,
    namespace: &str,
    name: &str,
    key: &str,
    optional: Option<bool>,
) -> Result<Option<String>, String> {
    let optional = optional == Some(true);
    let Some(values) = objects.get(kind, name) else {
        return match optional {
            true => Ok(None),
            false => Err(not_found(kind, name)),
        };
    };
    match values.get(key) {
        Some(v) => Ok(Some(String::from_utf8_lossy(v).into_owned())),
        None if optional => Ok(None),
        None => Err(format!(
            "couldn't find key {key} in {} {namespace}/{name}",
            kind.title()
        )),
    }
}

/// `fieldRef`: the pod fields Kubernetes offers (downward API), for env and volumes alike
/// (callers check the path with [`check_field_path`] for their scope).
fn field_ref(pod: &Pod, f: &ObjectFieldSelector, node: &NodeFacts) -> Result<String, String> {
    let path = f.field_path.as_str();
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let subscript = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix("']"))
            .map(str::to_string)
    };
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_else(|| "default".into()),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => node.node_name.clone(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "status.hostIP" => node.host_ip.clone(),
        "status.podIP" => node.pod_ip.clone().unwrap_or_default(),
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        _ => {
            if let Some(k) = subscript("metadata.labels['") {
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(&k).cloned())
                    .unwrap_or_default()
            } else if let Some(k) = subscript("metadata.annotations['") {
                meta.annotations
                    .as_ref()
                    .and_then(|l| l.get(&k).cloned())
                    .unwrap_or_default()
            } else {
                return Err(format!("unsupported fieldRef fieldPath {path:?}"));
            }
        }
    };
    Ok(value)
}

/// `resourceFieldRef`: a limit or request of the container, divided by `divisor` (rounded up);
/// an unset limit is the node's allocatable amount, as in Kubernetes.
fn resource_field_ref(
    container: &Container,
    r: &ResourceFieldSelector,
    node: &NodeFacts,
) -> Result<String, String> {
    use crate::model::quantity::{parse_milli, parse_units};
    let resources = container.resources.as_ref();
    let get = |which: &str, res: &str| {
        let map = match which {
            "limits" => resources.and_then(|r| r.limits.as_ref()),
            _ => resources.and_then(|r| r.requests.as_ref()),
        };
        map.and_then(|m| m.get(res)).map(|q| q.0.clone())
    };
    let (which, res) = r
        .resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported resourceFieldRef resource {:?}", r.resource))?;
    let divisor = r.divisor.as_ref().map(|d| d.0.as_str()).unwrap_or("1");
    let bad = |e: crate::model::quantity::QuantityError| {
        format!("resourceFieldRef {:?}: {}", r.resource, e.0)
    };
    let set = get(which, res).or_else(|| match which {
        // A request that is not set is the limit (Kubernetes defaults it so).
        "requests" => get("limits", res),
        _ => None,
    });
    let (amount, unit) = match (which, res) {
        ("limits" | "requests", "cpu") => (
            match set {
                Some(q) => parse_milli(&q).map_err(bad)?,
                None if which == "limits" => node.cpu_milli,
                None => 0,
            },
            parse_milli(divisor).map_err(bad)?,
        ),
        ("limits" | "requests", "memory" | "ephemeral-storage") => (
            match set {
                Some(q) => parse_units(&q).map_err(bad)?,
                None if which == "limits" => node.memory_bytes,
                None => 0,
            },
            parse_units(divisor).map_err(bad)?,
        ),
        _ => {
            return Err(format!(
                "unsupported resourceFieldRef resource {:?}",
                r.resource
            ))
        }
    };
    if unit == 0 {
        return Err(format!(
            "resourceFieldRef {:?}: divisor is zero",
            r.resource
        ));
    }
    Ok(amount.div_ceil(unit).to_string())
}

/// Checks a volume file path (`items[].path`): relative, no `..`, not starting with `..`.
pub fn check_item_path(path: &str) -> Result<(), String> {
    let p = Path::new(path);
    if path.is_empty()
        || p.is_absolute()
        || path.starts_with("..")
        || p.components().any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(format!(
            "invalid volume item path {path:?}: must be relative, without '..' and not start with '..'"
        ));
    }
    Ok(())
}

fn mode_of(mode: Option<i32>, default: u32) -> Result<u32, String> {
    match mode {
        None => Ok(default),
        Some(m) if (0..=0o777).contains(&m) => Ok(m as u32),
        Some(m) => Err(format!("invalid file mode {m:o}: must be from 0 to 0777")),
    }
}

/// The files of one configMap/secret (all keys, or `items`).
fn files_of(
    kind: Kind,
    name: &str,
    values: Option<&Values>,
    items: Option<&Vec<KeyToPath>>,
    optional: bool,
    default_mode: u32,
) -> Result<Vec<VolumeFile>, String> {
    let Some(values) = values else {
        return match optional {
            true => Ok(Vec::new()),
            false => Err(not_found(kind, name)),
        };
    };
    let mut out = Vec::new();
    match items.filter(|i| !i.is_empty()) {
        None => {
            for (key, bytes) in values {
                check_item_path(key)?;
                out.push(VolumeFile {
                    path: key.clone(),
                    bytes: bytes.clone(),
                    mode: default_mode,
                });
            }
        }
        Some(items) => {
            for item in items {
                let Some(bytes) = values.get(&item.key) else {
                    if optional {
                        continue;
                    }
                    return Err(format!(
                        "{} references non-existent {} key: {}",
                        kind.lower(),
                        match kind {
                            Kind::ConfigMap => "config",
                            Kind::Secret => "secret",
                        },
                        item.key
                    ));
                };
                check_item_path(&item.path)?;
                out.push(VolumeFile {
                    path: item.path.clone(),
                    bytes: bytes.clone(),
                    mode: mode_of(item.mode, default_mode)?,
                });
            }
        }
    }
    Ok(out)
}

/// The files of a downwardAPI volume or projection: one per item, its value from the pod
/// (`fieldRef`) or from a container's resources (`resourceFieldRef`, whose `containerName` is
/// required here).
fn downward_files(
    pod: &Pod,
    items: Option<&Vec<DownwardAPIVolumeFile>>,
    node: &NodeFacts,
    default_mode: u32,
) -> Result<Vec<VolumeFile>, String> {
    let mut out = Vec::new();
    for item in items.into_iter().flatten() {
        check_item_path(&item.path)?;
        let value = match (&item.field_ref, &item.resource_field_ref) {
            (Some(f), None) => {
                check_field_path(&f.field_path, FieldScope::Volume)
                    .map_err(|e| format!("downwardAPI item {:?}: {e}", item.path))?;
                field_ref(pod, f, node)?
            }
            (None, Some(r)) => {
                let name = r.container_name.as_deref().unwrap_or_default();
                let container = pod
                    .spec
                    .iter()
                    .flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()))
                    .find(|c| c.name == name)
                    .ok_or_else(|| {
                        format!(
                            "downwardAPI item {:?}: resourceFieldRef names container {name:?}, which the pod does not have",
                            item.path
                        )
                    })?;
                resource_field_ref(container, r, node)?
            }
            _ => {
                return Err(format!(
                "downwardAPI item {:?}: exactly one of fieldRef and resourceFieldRef is required",
                item.path
            ))
            }
        };
        out.push(VolumeFile {
            path: item.path.clone(),
            bytes: value.into_bytes(),
            mode: mode_of(item.mode, default_mode)?,
        });
    }
    Ok(out)
}

fn volume_source(
    pod: &Pod,
    volume: &Volume,
    objects: &Objects,
    node: &NodeFacts,
) -> Result<VolumeSource, String> {
    if let Some(e) = &volume.empty_dir {
        let memory = e.medium.as_deref() == Some("Memory");
        let size_limit = match &e.size_limit {
            Some(q) => Some(
                crate::model::quantity::parse_units(&q.0)
                    .map_err(|err| format!("volume {:?}: sizeLimit: {}", volume.name, err.0))?,
            ),
            None => None,
        };
        return Ok(VolumeSource::EmptyDir { memory, size_limit });
    }
    if let Some(h) = &volume.host_path {
        let kind = HostPathType::parse(h.type_.as_deref().unwrap_or_default())
            .ok_or_else(|| format!("hostPath {:?}: unknown type {:?}", h.path, h.type_))?;
        let path = check_host_path(&h.path, &node.host_path_prefixes)?;
        return Ok(VolumeSource::HostPath { path, kind });
    }
    if let Some(cm) = &volume.config_map {
        let default = mode_of(cm.default_mode, DEFAULT_MODE)?;
        let files = files_of(
            Kind::ConfigMap,
            &cm.name,
            objects.get(Kind::ConfigMap, &cm.name),
            cm.items.as_ref(),
            cm.optional == Some(true),
            default,
        )?;
        return Ok(VolumeSource::Files {
            files,
            secret: false,
        });
    }
    if let Some(s) = &volume.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let default = mode_of(s.default_mode, DEFAULT_MODE)?;
        let files = files_of(
            Kind::Secret,
            &name,
            objects.get(Kind::Secret, &name),
            s.items.as_ref(),
            s.optional == Some(true),
            default,
        )?;
        return Ok(VolumeSource::Files {
            files,
            secret: true,
        });
    }
    if let Some(d) = &volume.downward_api {
        let default = mode_of(d.default_mode, DEFAULT_MODE)?;
        let files = downward_files(pod, d.items.as_ref(), node, default)?;
        return Ok(VolumeSource::Files {
            files,
            secret: false,
        });
    }
    if let Some(p) = &volume.projected {
        let default = mode_of(p.default_mode, DEFAULT_MODE)?;
        let mut files = Vec::new();
        let mut secret = false;
        for source in p.sources.iter().flatten() {
            if let Some(cm) = &source.config_map {
                files.extend(files_of(
                    Kind::ConfigMap,
                    &cm.name,
                    objects.get(Kind::ConfigMap, &cm.name),
                    cm.items.as_ref(),
                    cm.optional == Some(true),
                    default,
                )?);
            } else if let Some(s) = &source.secret {
                secret = true;
                files.extend(files_of(
                    Kind::Secret,
                    &s.name,
                    objects.get(Kind::Secret, &s.name),
                    s.items.as_ref(),
                    s.optional == Some(true),
                    default,
                )?);
            } else if let Some(d) = &source.downward_api {
                files.extend(downward_files(pod, d.items.as_ref(), node, default)?);
            } else {
                return Err(format!(
                    "volume {:?}: only configMap, secret and downwardAPI projections are supported",
                    volume.name
                ));
            }
        }
        return Ok(VolumeSource::Files { files, secret });
    }
    if let Some(c) = &volume.persistent_volume_claim {
        return claim_source(&c.claim_name, c.read_only == Some(true), objects, node);
    }
    Err(format!(
        "volume {:?}: only emptyDir, hostPath, configMap, secret, downwardAPI, projected and persistentVolumeClaim volumes are supported",
        volume.name
    ))
}

/// The directory of claim `name` on this node: only a volume bound to this node (its own
/// directory under its own root) is ever mounted; a claim bound elsewhere, or not yet, waits.
fn claim_source(
    name: &str,
    read_only: bool,
    objects: &Objects,
    node: &NodeFacts,
) -> Result<VolumeSource, String> {
    let claim = objects
        .claims
        .get(name)
        .ok_or_else(|| format!("persistentvolumeclaim {name:?} not found"))?;
    let volume = claim
        .volume
        .as_ref()
        .filter(|v| v.claim_uid == claim.uid)
        .ok_or_else(|| format!("persistentvolumeclaim {name:?} is not bound"))?;
    if volume.node != node.node_name {
        return Err(format!(
            "persistentvolumeclaim {name:?} is bound to volume {} on node {}, not this node",
            volume.name, volume.node
        ));
    }
    if node.local_path_root.as_os_str().is_empty() {
        return Err("this node has no local-path directory".into());
    }
    Ok(VolumeSource::Claim {
        path: node.local_path_root.join(volume.dir_name()),
        read_only,
    })
}

/// A hostPath's path if the node's policy allows it: absolute, without `.`/`..` components,
/// and at or below one of `prefixes` (component-wise). The runtime checks again after
/// resolving symlinks.
pub fn check_host_path(path: &str, prefixes: &[PathBuf]) -> Result<PathBuf, String> {
    let p = Path::new(path);
    if !p.is_absolute()
        || p.components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(format!(
            "hostPath {path:?} must be an absolute path without '.' or '..'"
        ));
    }
    if prefixes.iter().any(|prefix| p.starts_with(prefix)) {
        return Ok(p.to_path_buf());
    }
    let allowed = match prefixes.is_empty() {
        true => "none".to_string(),
        false => prefixes
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    };
    Err(format!(
        "hostPath {path:?} is not allowed on this node (allowed prefixes: {allowed}; see shoal agent --allow-host-path)"
    ))
}

#[cfg(test)]
mod tests;
