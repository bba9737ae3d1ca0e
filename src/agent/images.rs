//! The agent's image shell: which peers hold which blobs (advertised in each node's status
//! document), the seed of each blob (rendezvous hashing over the alive members), the puller's
//! view of the cluster ([`ClusterPeers`]), and garbage collection of unused images by disk
//! threshold.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::model::MemberState;
use crate::runtime::image::pull::{Peer, PeerClient, Peers, Puller};
use crate::runtime::image::{reference, ImageError, ImageStore};
use crate::state::Shared;

/// Status-document key of this node's [`ImageAdvert`].
pub const ADVERT_KEY: &str = "images";
/// Blobs advertised at most (the most recently used images' blobs first).
pub const MAX_ADVERT_BLOBS: usize = 4096;
/// The advert is refreshed at least this often, and garbage collection runs as often.
const PERIOD: Duration = Duration::from_secs(60);

/// What a node's image store holds, for its peers: named references → manifest digests, and
/// the blobs (hex digests) it can serve.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageAdvert {
    pub refs: BTreeMap<String, String>,
    pub blobs: Vec<String>,
}

/// The advert of `store` as it is now.
pub fn advert(store: &ImageStore) -> ImageAdvert {
    let refs: BTreeMap<String, String> = store
        .list()
        .into_iter()
        .map(|i| (i.reference, i.digest))
        .collect();
    let mut blobs: Vec<(std::time::SystemTime, String)> = store
        .blobs()
        .into_iter()
        .map(|(hex, modified)| (modified, hex))
        .collect();
    blobs.sort_by(|a, b| b.cmp(a));
    blobs.truncate(MAX_ADVERT_BLOBS);
    let mut blobs: Vec<String> = blobs.into_iter().map(|(_, h)| h).collect();
    blobs.sort();
    ImageAdvert { refs, blobs }
}

/// Writes this node's advert into its status document (only when it changed).
pub fn publish(shared: &Shared, store: &ImageStore) {
    let a = advert(store);
    if let Err(e) = shared.write_status(|d| d.put(ADVERT_KEY, &a)) {
        tracing::warn!(%e, "publishing the image advert");
    }
}

/// Rendezvous score of `node` for blob `hex`: every node computes the same ranking.
pub fn rendezvous(hex: &str, node: &str) -> u64 {
    let h = Sha256::new()
        .chain_update(hex.as_bytes())
        .chain_update([0])
        .chain_update(node.as_bytes())
        .finalize();
    u64::from_be_bytes(h[..8].try_into().unwrap_or([0; 8]))
}

/// An HTTPS client for other agents' APIs: trusts the cluster CA only.
pub fn cluster_client(data_dir: &Path) -> Result<reqwest::Client, String> {
    crate::install_crypto_provider();
    let ca = std::fs::read(data_dir.join("tls/ca.crt"))
        .map_err(|e| format!("reading the cluster CA: {e}"))?;
    let cert = reqwest::Certificate::from_pem(&ca).map_err(|e| format!("cluster CA: {e}"))?;
    reqwest::Client::builder()
        .tls_certs_only([cert])
        .connect_timeout(Duration::from_secs(3))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}

/// The puller's view of the cluster: alive members, their adverts and API addresses.
pub struct ClusterPeers {
    shared: Arc<Shared>,
    data_dir: PathBuf,
    client: OnceLock<reqwest::Client>,
}

impl ClusterPeers {
    pub fn new(shared: Arc<Shared>, data_dir: PathBuf) -> Self {
        ClusterPeers {
            shared,
            data_dir,
            client: OnceLock::new(),
        }
    }

    /// Alive members other than this node, with their API URL.
    fn alive_peers(&self) -> Vec<Peer> {
        let view = self.shared.view();
        let alive: BTreeSet<String> = view
            .members
            .iter()
            .filter(|m| m.state == MemberState::Alive && m.name != self.shared.node_name)
            .map(|m| m.name.clone())
            .collect();
        self.shared.read(|doc| {
            alive
                .into_iter()
                .filter_map(|name| {
                    let record = doc.node(&name).ok().flatten()?;
                    Some(Peer {
                        url: format!("https://{}", record.api_addr),
                        node: name,
                    })
                })
                .collect()
        })
    }

    fn adverts(&self) -> BTreeMap<String, ImageAdvert> {
        self.shared.read_status(|docs| {
            docs.iter()
                .filter(|(n, _)| **n != self.shared.node_name)
                .filter_map(|(n, d)| Some((n.clone(), d.get::<ImageAdvert>(ADVERT_KEY).ok()??)))
                .collect()
        })
    }
}

impl Peers for ClusterPeers {
    fn holders(&self, hex: &str) -> Vec<Peer> {
        let adverts = self.adverts();
        let mut out: Vec<Peer> = self
            .alive_peers()
            .into_iter()
            .filter(|p| {
                adverts
                    .get(&p.node)
                    .is_some_and(|a| a.blobs.binary_search(&hex.to_string()).is_ok())
            })
            .collect();
        out.sort_by_key(|p| std::cmp::Reverse(rendezvous(hex, &p.node)));
        out
    }

    fn seed(&self, hex: &str) -> Option<Peer> {
        let me = rendezvous(hex, &self.shared.node_name);
        self.alive_peers()
            .into_iter()
            .max_by_key(|p| rendezvous(hex, &p.node))
            .filter(|p| rendezvous(hex, &p.node) > me)
    }

    fn tag_holders(&self, named: &str) -> Vec<(Peer, String)> {
        let adverts = self.adverts();
        let peers = self.alive_peers();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        let mut found = Vec::new();
        for p in &peers {
            if let Some(d) = adverts.get(&p.node).and_then(|a| a.refs.get(named)) {
                *counts.entry(d.as_str()).or_default() += 1;
                found.push((p.clone(), d.clone()));
            }
        }
        found.sort_by_key(|(_, d)| std::cmp::Reverse(counts.get(d.as_str()).copied().unwrap_or(0)));
        found
    }

    fn client(&self) -> Option<PeerClient> {
        let client = match self.client.get() {
            Some(c) => c.clone(),
            None => match cluster_client(&self.data_dir) {
                Ok(c) => self.client.get_or_init(|| c).clone(),
                Err(e) => {
                    tracing::warn!(%e, "no client for peers' blobs");
                    return None;
                }
            },
        };
        Some(PeerClient {
            client,
            token: self.shared.identity.internal_api_token(),
        })
    }
}

/// Garbage collection thresholds, as the kubelet's: above `high_percent` of the image file
/// system used, remove least recently used unused images until below `low_percent`. Also
/// applied to the store's own size when `max_bytes` is set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcConfig {
    pub high_percent: u8,
    pub low_percent: u8,
    pub max_bytes: Option<u64>,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            high_percent: 85,
            low_percent: 80,
            max_bytes: None,
        }
    }
}

impl GcConfig {
    /// Defaults, overridden by `SHOAL_IMAGE_GC_HIGH_PERCENT`, `SHOAL_IMAGE_GC_LOW_PERCENT` and
    /// `SHOAL_IMAGE_STORE_MAX_BYTES`. Nonsense values are ignored with a warning.
    pub fn from_env() -> GcConfig {
        let mut c = GcConfig::default();
        let num = |k: &str| -> Option<u64> {
            let v = std::env::var(k).ok()?;
            match v.trim().parse::<u64>() {
                Ok(n) => Some(n),
                Err(_) => {
                    tracing::warn!(key = k, value = %v, "ignoring a non-numeric setting");
                    None
                }
            }
        };
        if let Some(h) = num("SHOAL_IMAGE_GC_HIGH_PERCENT").filter(|h| (1..=100).contains(h)) {
            c.high_percent = h as u8;
        }
        if let Some(l) = num("SHOAL_IMAGE_GC_LOW_PERCENT").filter(|l| *l < c.high_percent as u64) {
            c.low_percent = l as u8;
        }
        if c.low_percent >= c.high_percent {
            c.low_percent = c.high_percent.saturating_sub(5);
        }
        c.max_bytes = num("SHOAL_IMAGE_STORE_MAX_BYTES").filter(|n| *n > 0);
        c
    }
}

/// Unpacked layer dirs (diff id hex) that containers on this node use: every attempt's
/// `shim.json` under `<data>/pods` names its layers.
pub fn layers_in_use(data_dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let pods = data_dir.join("pods");
    let Ok(rd) = std::fs::read_dir(&pods) else {
        return out;
    };
    for pod in rd.flatten() {
        let Ok(cs) = std::fs::read_dir(pod.path().join("containers")) else {
            continue;
        };
        for c in cs.flatten() {
            let Ok(attempts) = std::fs::read_dir(c.path()) else {
                continue;
            };
            for a in attempts.flatten() {
                let spec = a.path().join(crate::runtime::shim::SHIM_SPEC);
                let Ok(bytes) = std::fs::read(&spec) else {
                    continue;
                };
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                    continue;
                };
                for l in v["layers"].as_array().into_iter().flatten() {
                    if let Some(name) = l
                        .as_str()
                        .and_then(|p| Path::new(p).file_name())
                        .and_then(|n| n.to_str())
                    {
                        out.insert(name.to_string());
                    }
                }
            }
        }
    }
    out
}

/// References of images whose layers are among `layers` (those containers use, from
/// [`layers_in_use`]), or that a pod bound here wants.
pub fn images_in_use(
    store: &ImageStore,
    layers: &BTreeSet<String>,
    wanted: &[String],
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for img in store.list() {
        let used = store
            .layer_ids(&img.reference)
            .map(|ids| ids.iter().any(|l| layers.contains(l)))
            .unwrap_or(false);
        if used {
            out.insert(img.reference.clone());
        }
    }
    for w in wanted {
        if let Ok(r) = reference::parse(w) {
            out.insert(r.index_key());
        }
    }
    out
}

/// Removes `reference` unless a container uses it (Kubernetes refuses the same).
pub async fn remove_image(
    puller: &Arc<Puller>,
    data_dir: &Path,
    reference: &str,
) -> Result<(), ImageError> {
    let _excl = puller.exclusive().await;
    let store = puller.store().clone();
    let data_dir = data_dir.to_path_buf();
    let reference = reference.to_string();
    let result = tokio::task::spawn_blocking(move || {
        let r = reference::parse(&reference).map_err(ImageError::InvalidReference)?;
        let layers = layers_in_use(&data_dir);
        let key = r.index_key();
        if images_in_use(&store, &layers, &[]).contains(&key) {
            return Err(ImageError::InUse(key));
        }
        store.remove_protecting(&reference, &layers)
    })
    .await
    .map_err(|e| ImageError::Corrupt(e.to_string()))?;
    if result.is_ok() {
        puller.notify_changed();
    }
    result
}

/// What one garbage collection did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub removed: Vec<String>,
    pub store_bytes_before: u64,
    pub store_bytes_after: u64,
}

/// Whether the image file system or the store is over its high threshold, and how far below
/// which level to go.
fn over(cfg: &GcConfig, store: &ImageStore) -> bool {
    if let Some(max) = cfg.max_bytes {
        if store.disk_bytes() > max {
            return true;
        }
    }
    disk_used_percent(store.dir()).is_some_and(|p| p > cfg.high_percent as f64)
}

fn under_low(cfg: &GcConfig, store: &ImageStore) -> bool {
    let size_ok = cfg.max_bytes.is_none_or(|max| {
        store.disk_bytes() <= max / cfg.high_percent.max(1) as u64 * cfg.low_percent as u64
    });
    let disk_ok = disk_used_percent(store.dir()).is_none_or(|p| p <= cfg.low_percent as f64);
    size_ok && disk_ok
}

/// Percentage of the file system holding `dir` that is used.
pub fn disk_used_percent(dir: &Path) -> Option<f64> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    let total = s.blocks() as f64 * s.fragment_size() as f64;
    let avail = s.blocks_available() as f64 * s.fragment_size() as f64;
    (total > 0.0).then(|| (total - avail) / total * 100.0)
}

/// One garbage collection: when over the high threshold, drops blobs no image names, then
/// removes unused images least recently used first until under the low threshold. Never an
/// image a container uses or a pod bound here wants.
pub async fn gc(
    puller: &Arc<Puller>,
    data_dir: &Path,
    cfg: &GcConfig,
    wanted: Vec<String>,
) -> Result<GcReport, ImageError> {
    let store = puller.store().clone();
    if !over(cfg, &store) {
        return Ok(GcReport::default());
    }
    let _excl = puller.exclusive().await;
    let data_dir = data_dir.to_path_buf();
    let cfg = cfg.clone();
    let report = tokio::task::spawn_blocking(move || {
        let mut report = GcReport {
            store_bytes_before: store.disk_bytes(),
            ..Default::default()
        };
        let protect = layers_in_use(&data_dir);
        store.sweep(&protect)?;
        let in_use = images_in_use(&store, &protect, &wanted);
        for (reference, _) in store.least_recently_used() {
            if under_low(&cfg, &store) {
                break;
            }
            if in_use.contains(&reference) {
                continue;
            }
            match store.remove_protecting(&reference, &protect) {
                Ok(()) => report.removed.push(reference),
                Err(e) => tracing::warn!(%e, %reference, "image garbage collection"),
            }
        }
        report.store_bytes_after = store.disk_bytes();
        Ok::<_, ImageError>(report)
    })
    .await
    .map_err(|e| ImageError::Corrupt(e.to_string()))??;
    if !report.removed.is_empty() || report.store_bytes_after != report.store_bytes_before {
        tracing::info!(removed = ?report.removed, before = report.store_bytes_before,
            after = report.store_bytes_after, "image garbage collection");
        puller.notify_changed();
    }
    Ok(report)
}

/// Keeps this node's advert current and collects garbage, until `shutdown`.
pub async fn run(
    shared: Arc<Shared>,
    puller: Arc<Puller>,
    data_dir: PathBuf,
    cfg: GcConfig,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    tokio::pin!(shutdown);
    let mut changed = puller.subscribe();
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let periodic = tokio::select! {
            _ = &mut shutdown => return,
            r = changed.changed() => { if r.is_err() { return; } false }
            _ = tick.tick() => true,
        };
        if periodic {
            let wanted: Vec<String> = crate::kubelet::desired_pods(&shared)
                .values()
                .flat_map(|d| {
                    d.all_containers()
                        .filter_map(|c| c.image.clone())
                        .collect::<Vec<_>>()
                })
                .collect();
            if let Err(e) = gc(&puller, &data_dir, &cfg, wanted).await {
                tracing::warn!(%e, "image garbage collection failed");
            }
        }
        let store = puller.store().clone();
        let shared2 = shared.clone();
        let _ = tokio::task::spawn_blocking(move || publish(&shared2, &store)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_is_stable_and_spreads() {
        assert_eq!(rendezvous("ab", "n1"), rendezvous("ab", "n1"));
        let nodes = ["n1", "n2", "n3", "n4", "n5"];
        let mut firsts = BTreeMap::new();
        for i in 0..500 {
            let hex = format!("{i:064x}");
            let top = nodes.iter().max_by_key(|n| rendezvous(&hex, n)).unwrap();
            *firsts.entry(*top).or_insert(0) += 1;
        }
        // Every node seeds some blobs, none most of them.
        assert_eq!(firsts.len(), 5, "{firsts:?}");
        assert!(firsts.values().all(|&c| c > 50 && c < 200), "{firsts:?}");
    }

    #[test]
    fn gc_config_defaults_match_the_kubelet() {
        let c = GcConfig::default();
        assert_eq!((c.high_percent, c.low_percent, c.max_bytes), (85, 80, None));
    }
}
