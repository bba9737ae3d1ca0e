//! The kubelet shell's side of `config`: reads the ConfigMaps and Secrets desired pods refer
//! to from the merged document (Secrets opened, `state::secrets`), resolves every container's
//! configuration, marks the ones that cannot be resolved `CreateContainerConfigError` (they
//! wait and start by themselves once the objects appear), and re-renders the configMap/secret
//! volumes of running pods when their objects change.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::config::{self, ContainerConfig, NodeFacts, Objects, CONFIG_ERROR};
use super::plan::{DesiredPod, ImageState};
use crate::runtime::observe::ObservedPod;
use crate::runtime::volumes::VolumeSource;
use crate::runtime::Runtime;
use crate::state::shared::Shared;

/// The backend resource ConfigMaps are stored under.
const CONFIG_MAPS: &str = "configmaps";

/// Resolved configurations by `(pod key, container name)`.
pub type Configs = BTreeMap<(String, String), ContainerConfig>;

/// Marks a container as waiting with `CreateContainerConfigError` and `message` (it is not
/// started; the planner records the reason and a `Failed` event on the transition). Only a
/// container whose image is ready is marked: one still pulling shows that first.
pub fn config_error(
    states: &mut BTreeMap<(String, String), ImageState>,
    key: &str,
    container: &str,
    message: String,
) {
    let slot = (key.to_string(), container.to_string());
    if matches!(states.get(&slot), Some(ImageState::Ready)) {
        states.insert(
            slot,
            ImageState::Unavailable {
                reason: CONFIG_ERROR.into(),
                message,
            },
        );
    }
}

pub struct ObjectsShell {
    node_ip: String,
    host_path_prefixes: Vec<PathBuf>,
    local_path_root: PathBuf,
    /// Fingerprint of the configMap/secret volume contents last written, by pod key.
    rendered: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl ObjectsShell {
    pub fn new(
        node_ip: String,
        host_path_prefixes: Vec<PathBuf>,
        local_path_root: PathBuf,
    ) -> Self {
        ObjectsShell {
            node_ip,
            host_path_prefixes,
            local_path_root,
            rendered: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    fn facts(
        &self,
        shared: &Shared,
        observed: Option<&ObservedPod>,
        host_network: bool,
    ) -> NodeFacts {
        let record = shared.read(|d| d.node(&shared.node_name)).ok().flatten();
        let capacity = |k: &str| record.as_ref().and_then(|r| r.capacity.get(k).cloned());
        NodeFacts {
            node_name: shared.node_name.clone(),
            host_ip: self.node_ip.clone(),
            pod_ip: match host_network {
                true => Some(self.node_ip.clone()),
                false => observed
                    .and_then(|o| o.network.as_ref())
                    .and_then(|n| n.address.as_ref())
                    .map(|a| a.ip.to_string()),
            },
            cpu_milli: capacity("cpu")
                .and_then(|c| crate::model::quantity::parse_milli(&c).ok())
                .unwrap_or(1000),
            memory_bytes: capacity("memory")
                .and_then(|m| crate::model::quantity::parse_units(&m).ok())
                .unwrap_or(0),
            host_path_prefixes: self.host_path_prefixes.clone(),
            local_path_root: self.local_path_root.clone(),
        }
    }

    /// Resolves every desired container; those that fail are marked in `states`.
    pub fn resolve(
        &self,
        shared: &Shared,
        desired: &BTreeMap<String, DesiredPod>,
        observed: &BTreeMap<String, ObservedPod>,
        states: &mut BTreeMap<(String, String), ImageState>,
    ) -> Configs {
        let mut out = Configs::new();
        for (key, d) in desired {
            let objects = read_objects(shared, d);
            let facts = self.facts(shared, observed.get(key), d.host_network());
            for c in d.all_containers() {
                match config::resolve(&d.pod, c, &objects, &facts) {
                    Ok(cfg) => {
                        out.insert((key.clone(), c.name.clone()), cfg);
                    }
                    Err(message) => config_error(states, key, &c.name, message),
                }
            }
        }
        out
    }

    /// Re-renders the configMap/secret volumes of pods with a live sandbox whose contents
    /// changed since last written (skipping pods with an action in flight, which prepare
    /// their volumes themselves). Runs in a blocking task.
    pub fn refresh(
        &self,
        runtime: &Arc<Runtime>,
        observed: &BTreeMap<String, ObservedPod>,
        configs: &Configs,
        busy: &BTreeSet<String>,
    ) {
        let mut by_pod: BTreeMap<&str, BTreeMap<String, VolumeSource>> = BTreeMap::new();
        for ((key, _), cfg) in configs {
            let volumes = by_pod.entry(key.as_str()).or_default();
            for (name, v) in &cfg.volumes {
                if matches!(v, VolumeSource::Files { .. }) {
                    volumes.insert(name.clone(), v.clone());
                }
            }
        }
        let mut rendered = self.rendered.lock().unwrap_or_else(|p| p.into_inner());
        rendered.retain(|k, _| by_pod.contains_key(k.as_str()));
        for (key, volumes) in by_pod {
            let running = observed.get(key).is_some_and(|o| o.sandbox.is_some());
            let in_flight = busy
                .iter()
                .any(|b| b == key || b.starts_with(&format!("{key}/")));
            if volumes.is_empty() || !running || in_flight {
                continue;
            }
            let mut h = std::collections::hash_map::DefaultHasher::new();
            volumes.len().hash(&mut h);
            for (name, v) in &volumes {
                name.hash(&mut h);
                if let VolumeSource::Files { files, secret } = v {
                    secret.hash(&mut h);
                    for f in files {
                        (&f.path, &f.bytes, f.mode).hash(&mut h);
                    }
                }
            }
            let print = h.finish();
            if rendered.get(key) == Some(&print) {
                continue;
            }
            rendered.insert(key.to_string(), print);
            let rt = runtime.clone();
            let key = key.to_string();
            let marks = self.rendered.clone();
            tokio::task::spawn_blocking(move || {
                match crate::runtime::volumes::refresh(&rt.pod_dir(&key), &volumes) {
                    Ok(true) => tracing::info!(pod = %key, "volume contents updated"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(pod = %key, %e, "updating volume contents");
                        marks.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
                    }
                }
            });
        }
    }
}

/// The ConfigMaps and Secrets of the pod's namespace that it refers to.
fn read_objects(shared: &Shared, d: &DesiredPod) -> Objects {
    let (cms, secrets) = config::referenced(&d.pod);
    let ns = d.namespace();
    let mut objects = Objects::default();
    if !cms.is_empty() {
        shared.read(|doc| {
            for name in cms {
                if let Ok(Some(cm)) = doc.get_object(CONFIG_MAPS, Some(&ns), &name) {
                    objects
                        .config_maps
                        .insert(name, config::config_map_values(&cm));
                }
            }
        });
    }
    for name in secrets {
        if let Some(s) = crate::state::secrets::get_secret(shared, &ns, &name) {
            objects.secrets.insert(name, config::secret_values(&s));
        }
    }
    let claims = claim_names(&d.pod);
    if !claims.is_empty() {
        use crate::model::storage::{pv_name, Volume, PVCS, PVS};
        shared.read(|doc| {
            for name in claims {
                let Ok(Some(claim)) = doc.get_object(PVCS, Some(&ns), &name) else {
                    continue;
                };
                let uid = claim["metadata"]["uid"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let volume = doc
                    .get_object(PVS, None, &pv_name(&uid))
                    .ok()
                    .flatten()
                    .and_then(|v| Volume::of(&v));
                objects
                    .claims
                    .insert(name, config::ClaimVolume { uid, volume });
            }
        });
    }
    objects
}

/// The PersistentVolumeClaims a pod mounts.
pub fn claim_names(pod: &k8s_openapi::api::core::v1::Pod) -> Vec<String> {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.clone())
        .collect()
}
