//! Pulling images: from peers that hold the blobs, else from the image's registry through the
//! OCI distribution API (`oci-client`), with every blob verified against its digest before the
//! store takes it.
//!
//! Where a blob comes from, in order:
//! 1. this node's store;
//! 2. a download of the same blob already running on this node (joined, not repeated);
//! 3. peers that advertise the blob (status documents), rendezvous-ordered by digest;
//! 4. the blob's *seed*: the alive member ranked first by rendezvous hash of the digest. Every
//!    node that wants the blob asks the seed, which downloads it from the registry once and
//!    streams it to all of them as it arrives (fetch-through);
//! 5. the registry itself (also the fallback when a peer fails or sends bad bytes).
//!
//! Content addressing makes any source trustworthy after verification: a blob whose sha256 or
//! size is wrong is discarded and fetched from the next source, never stored or run.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, watch};

use super::registry::Endpoint;
use super::{ImageError, ImageStore, ResolvedImage};

pub use crate::model::image::{BlobStream, Credentials, FetchThrough, PullEvent, PullRequest};

/// Node-level pull settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PullConfig {
    /// Registries (`host` or `host:port`) reached over plain HTTP. All others need HTTPS with
    /// a certificate the system roots (or the registry's certs directory) trust.
    pub insecure_registries: Vec<String>,
    /// Certs directories in Docker's `certs.d` layout, first match wins (see [`super::hosts`]).
    pub certs_dirs: Vec<PathBuf>,
    /// Mirrors by registry (`docker.io`, `host:port` as in image references): base URLs
    /// (`https://mirror:5000`) tried in order before the registry itself.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Proxies for registry requests (peers are always reached directly).
    pub https_proxy: Option<String>,
    pub http_proxy: Option<String>,
    /// Hosts reached without the proxy, comma-separated, as in `NO_PROXY`.
    pub no_proxy: Option<String>,
}

impl PullConfig {
    /// `insecure_registries`, with the proxies of the process environment (`HTTPS_PROXY`,
    /// `HTTP_PROXY`, `NO_PROXY`, or their lower-case forms), as container runtimes do.
    pub fn with_env_proxies(insecure_registries: Vec<String>) -> PullConfig {
        let env = |upper: &str| {
            std::env::var(upper)
                .or_else(|_| std::env::var(upper.to_ascii_lowercase()))
                .ok()
                .filter(|v| !v.trim().is_empty())
        };
        PullConfig {
            insecure_registries,
            certs_dirs: Vec::new(),
            mirrors: BTreeMap::new(),
            https_proxy: env("HTTPS_PROXY"),
            http_proxy: env("HTTP_PROXY"),
            no_proxy: env("NO_PROXY"),
        }
    }
}

/// A member that may serve blobs: its API base URL, e.g. `https://10.77.0.12:6443`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub node: String,
    pub url: String,
}

/// An authenticated HTTPS client for the peers' APIs (cluster CA, internal token).
#[derive(Clone, Debug)]
pub struct PeerClient {
    pub client: reqwest::Client,
    pub token: String,
}

/// Where peers' blobs and tags are, as this node sees the cluster. Implemented by the agent
/// over the membership view and the status documents; [`NoPeers`] for a node alone.
pub trait Peers: Send + Sync {
    /// Alive peers that advertise blob `sha256:<hex>`, best first.
    fn holders(&self, hex: &str) -> Vec<Peer>;
    /// The seed of blob `hex` (alive member ranked first by rendezvous hash); `None` when that
    /// is this node or when this node is alone.
    fn seed(&self, hex: &str) -> Option<Peer>;
    /// Manifest digests that alive peers have stored for the normalised reference `named`
    /// (e.g. `host:5000/app:1`), most common first: the fallback when the registry is down.
    fn tag_holders(&self, named: &str) -> Vec<(Peer, String)>;
    fn client(&self) -> Option<PeerClient>;
}

/// No peers: every blob comes from the registry.
pub struct NoPeers;

impl Peers for NoPeers {
    fn holders(&self, _hex: &str) -> Vec<Peer> {
        Vec::new()
    }
    fn seed(&self, _hex: &str) -> Option<Peer> {
        None
    }
    fn tag_holders(&self, _named: &str) -> Vec<(Peer, String)> {
        Vec::new()
    }
    fn client(&self) -> Option<PeerClient> {
        None
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The registry answered with an error (its reason as given: `manifest unknown`,
    /// `unauthorized: authentication required`, ...).
    #[error("{0}")]
    Registry(String),
    /// The registry could not be reached and no peer could stand in.
    #[error("{0}")]
    Unreachable(String),
    /// A plain-HTTP registry not listed as insecure.
    #[error(
        "registry {0} answers only over plain HTTP; list it with --insecure-registry to allow that"
    )]
    Insecure(String),
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    Digest {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{0}")]
    Unsupported(String),
    /// This node's registry configuration cannot be used (a corrupt certs directory file...).
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] ImageError),
}

impl PullError {
    /// Whether the fault lies with the request (a bad reference, missing credentials...).
    pub fn is_caller_error(&self) -> bool {
        match self {
            PullError::Store(e) => e.is_caller_error(),
            PullError::Unreachable(_) | PullError::Config(_) => false,
            _ => true,
        }
    }
}

/// How long a source may stay silent mid-transfer before the next source is tried.
const STALL: Duration = Duration::from_secs(30);
/// Connection timeout for registries.
const CONNECT: Duration = Duration::from_secs(10);
/// Blobs fetched (and layers unpacked) at once per pull.
const PARALLEL_BLOBS: usize = 4;
/// Holders tried per blob before the seed and the registry.
const MAX_HOLDERS: usize = 2;
/// Progress events per blob are at most this frequent.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// Manifest media types asked of registries, indexes first.
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Layer media types this node unpacks (the compression is sniffed from the bytes).
const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
];

const CONFIG_TYPES: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

impl Clone for PullError {
    /// Downloads are shared between pulls, and so are their errors (an I/O error of the
    /// store is carried as its message).
    fn clone(&self) -> Self {
        match self {
            PullError::Registry(m) => PullError::Registry(m.clone()),
            PullError::Unreachable(m) => PullError::Unreachable(m.clone()),
            PullError::Insecure(m) => PullError::Insecure(m.clone()),
            PullError::Digest {
                what,
                expected,
                actual,
            } => PullError::Digest {
                what: what.clone(),
                expected: expected.clone(),
                actual: actual.clone(),
            },
            PullError::Unsupported(m) => PullError::Unsupported(m.clone()),
            PullError::Config(m) => PullError::Config(m.clone()),
            PullError::Store(e) => PullError::Store(match e {
                ImageError::UnsafeLayer(m) => ImageError::UnsafeLayer(m.clone()),
                ImageError::DigestMismatch {
                    what,
                    expected,
                    actual,
                } => ImageError::DigestMismatch {
                    what: what.clone(),
                    expected: expected.clone(),
                    actual: actual.clone(),
                },
                ImageError::TooLarge(m) => ImageError::TooLarge(m.clone()),
                ImageError::Unsupported(m) => ImageError::Unsupported(m.clone()),
                other => ImageError::Corrupt(other.to_string()),
            }),
        }
    }
}

/// The state of one blob download, watched by every pull (and peer) waiting for it.
#[derive(Clone, Debug)]
enum DlState {
    Running {
        /// Bumps when a source failed and the next one starts (into a fresh file).
        attempt: u32,
        path: PathBuf,
        written: u64,
        total: Option<u64>,
        source: String,
    },
    Done(Result<(), PullError>),
}

type Inflight = Arc<watch::Sender<DlState>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Manifest,
    Blob,
}

#[derive(Clone, Debug)]
enum Source {
    Holder(Peer),
    Seed(Peer),
    /// `Ctx::endpoints[i]`: a mirror, or the registry itself (the last).
    Registry(usize),
}

impl Source {
    fn metric(&self) -> crate::metrics::PullSource {
        match self {
            Source::Holder(_) => crate::metrics::PullSource::Peer,
            Source::Seed(_) => crate::metrics::PullSource::Seed,
            Source::Registry(_) => crate::metrics::PullSource::Registry,
        }
    }

    fn label(&self, ctx: &Ctx) -> String {
        match self {
            Source::Holder(p) => format!("peer {}", p.node),
            Source::Seed(p) => format!("seed {}", p.node),
            Source::Registry(i) => match ctx.endpoints.get(*i) {
                Some(e) if e.mirror => format!("mirror {}", e.host),
                _ => "registry".into(),
            },
        }
    }
}

/// One pull's registry access.
struct Ctx {
    /// The reference, normalised (for fetch-through requests to seeds).
    reference: String,
    /// It without its digest: the key peers advertise tags under.
    named: String,
    oci_ref: oci_client::Reference,
    /// The repository path at the registry (`library/busybox` on Docker Hub).
    repository: String,
    /// The registry's mirrors in order, then the registry itself (never empty).
    endpoints: Vec<Endpoint>,
    credentials: Option<Credentials>,
    /// Whether seeds may be asked (not when this node serves a fetch-through: no loops).
    allow_seed: bool,
}

impl std::fmt::Debug for Puller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Puller")
            .field("store", &self.store.dir())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A registry's HTTP client and the fingerprint of the TLS settings it was built with.
type CachedClient = (Option<[u8; 32]>, reqwest::Client);

/// One node's puller: shares downloads between concurrent pulls and with peers.
pub struct Puller {
    store: ImageStore,
    config: PullConfig,
    peers: Arc<dyn Peers>,
    inflight: Mutex<HashMap<String, Inflight>>,
    changed: watch::Sender<u64>,
    /// Pulls hold it shared; garbage collection exclusively (a half-pulled image's layers are
    /// not yet named by the index).
    gc_lock: tokio::sync::RwLock<()>,
    /// Where downloaded bytes are counted by source (the agent's metrics).
    metrics: std::sync::OnceLock<Arc<crate::metrics::Metrics>>,
    /// One HTTP client per registry host, with the fingerprint of the certs directory it was
    /// built from (a changed directory builds a new one; connections are kept otherwise).
    clients: Mutex<HashMap<String, CachedClient>>,
}

impl Puller {
    pub fn new(store: ImageStore, config: PullConfig, peers: Arc<dyn Peers>) -> Arc<Puller> {
        // The registry client's TLS needs a process-wide rustls provider.
        crate::install_crypto_provider();
        Arc::new(Puller {
            store,
            config,
            peers,
            inflight: Mutex::new(HashMap::new()),
            changed: watch::channel(0).0,
            gc_lock: tokio::sync::RwLock::new(()),
            metrics: std::sync::OnceLock::new(),
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// Counts downloaded bytes in `metrics` from now on (once; later calls are ignored).
    pub fn set_metrics(&self, metrics: Arc<crate::metrics::Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    pub fn store(&self) -> &ImageStore {
        &self.store
    }

    pub fn config(&self) -> &PullConfig {
        &self.config
    }

    /// Bumped whenever the store's images change (pull, import, removal, GC).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn notify_changed(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Held exclusively while images are removed, so no pull is between fetching a layer and
    /// naming its image.
    pub async fn exclusive(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.gc_lock.write().await
    }

    fn inflight(&self) -> std::sync::MutexGuard<'_, HashMap<String, Inflight>> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ctx(&self, req: &PullRequest, allow_seed: bool) -> Result<Arc<Ctx>, PullError> {
        let r = super::reference::parse(&req.reference)
            .map_err(|e| PullError::Store(ImageError::InvalidReference(e)))?;
        let oci_ref = r.oci();
        let registry = oci_ref.resolve_registry().to_string();
        let mut endpoints = Vec::new();
        let mirrors = self
            .config
            .mirrors
            .get(oci_ref.registry())
            .or_else(|| self.config.mirrors.get(&registry));
        for url in mirrors.into_iter().flatten() {
            let Some((scheme, host)) = url.split_once("://") else {
                continue;
            };
            match self.client_for(host, scheme == "https") {
                Ok(client) => endpoints.push(Endpoint::new(
                    url.trim_end_matches('/').to_string(),
                    host.trim_end_matches('/').to_string(),
                    true,
                    client,
                    None,
                )),
                Err(e) => tracing::error!(mirror = %url, error = %e,
                    "registry mirror skipped: its TLS configuration cannot be used"),
            }
        }
        let insecure = self.config.insecure_registries.contains(&registry);
        let scheme = if insecure { "http" } else { "https" };
        let client = self.client_for(&registry, !insecure).inspect_err(
            |e| tracing::error!(%registry, error = %e, "registry TLS configuration cannot be used"),
        )?;
        endpoints.push(Endpoint::new(
            format!("{scheme}://{registry}"),
            registry.clone(),
            false,
            client,
            req.credentials.clone(),
        ));
        Ok(Arc::new(Ctx {
            reference: r.to_string(),
            named: r.named(),
            repository: oci_ref.repository().to_string(),
            oci_ref,
            endpoints,
            credentials: req.credentials.clone(),
            allow_seed,
        }))
    }

    /// The HTTP client for registry (or mirror) `host`: with its certs directory's roots, pins
    /// and client certificate when `tls` and it has one.
    fn client_for(&self, host: &str, tls: bool) -> Result<reqwest::Client, PullError> {
        let material = if tls {
            super::hosts::load_host(&self.config.certs_dirs, host)
                .map_err(|e| PullError::Config(format!("registry {host}: {e}")))?
        } else {
            None
        };
        let fingerprint = material.as_ref().map(|m| m.fingerprint);
        let key = format!("{}://{host}", if tls { "https" } else { "http" });
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((f, c)) = clients.get(&key) {
            if *f == fingerprint {
                return Ok(c.clone());
            }
        }
        if let Some(m) = &material {
            if m.has_hosts_toml {
                tracing::warn!(dir = %m.dir.display(),
                    "hosts.toml is not read by shoal: its certificates (*.crt, NAME.cert/NAME.key) \
                     are; configure mirrors with --registry-mirror");
            }
            tracing::info!(%host, dir = %m.dir.display(), roots = m.roots.len(),
                client_certificate = m.client.is_some(), "registry certificates loaded");
        }
        let client = super::tls::client(self.client_builder()?, material.as_ref())
            .map_err(|e| PullError::Config(format!("registry {host}: {e}")))?;
        clients.insert(key, (fingerprint, client.clone()));
        Ok(client)
    }

    /// Timeouts and proxies common to every registry client.
    fn client_builder(&self) -> Result<reqwest::ClientBuilder, PullError> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(CONNECT)
            .read_timeout(STALL)
            .user_agent(concat!("shoal/", env!("CARGO_PKG_VERSION")));
        let no_proxy = || {
            self.config
                .no_proxy
                .as_deref()
                .and_then(reqwest::NoProxy::from_string)
        };
        let bad = |e: reqwest::Error| PullError::Config(format!("registry proxy: {e}"));
        if let Some(p) = &self.config.https_proxy {
            b = b.proxy(reqwest::Proxy::https(p).map_err(bad)?.no_proxy(no_proxy()));
        }
        if let Some(p) = &self.config.http_proxy {
            b = b.proxy(reqwest::Proxy::http(p).map_err(bad)?.no_proxy(no_proxy()));
        }
        Ok(b)
    }

    /// Pulls `req.reference` (fetching only the blobs this node lacks) and returns it ready
    /// to run. A tag is resolved at the registry; when the registry cannot be reached, peers
    /// that hold the tag stand in. Progress goes to `progress` when given.
    pub async fn pull(
        self: &Arc<Self>,
        req: &PullRequest,
        progress: Option<mpsc::UnboundedSender<PullEvent>>,
    ) -> Result<ResolvedImage, PullError> {
        let ctx = self.ctx(req, true)?;
        let _pulling = self.gc_lock.read().await;
        let emit = |e: PullEvent| {
            if let Some(p) = &progress {
                let _ = p.send(e);
            }
        };
        let top_hex = match ctx.oci_ref.digest() {
            Some(d) => {
                let hex = digest_hex(d)?;
                self.fetch(&ctx, &hex, None, Kind::Manifest, None).await?;
                hex
            }
            None => self.resolve_tag(&ctx).await?,
        };
        let manifest_hex = self.platform_manifest(&ctx, &top_hex).await?;
        let manifest: oci_spec::image::ImageManifest = parse_json(
            &self.store.read_small_blob(&manifest_hex)?,
            "image manifest",
        )?;
        let config_desc = manifest.config();
        if !CONFIG_TYPES.contains(&config_desc.media_type().to_string().as_str()) {
            return Err(PullError::Unsupported(format!(
                "{}: not a container image (config media type {})",
                ctx.reference,
                config_desc.media_type()
            )));
        }
        let config_hex = digest_hex(config_desc.digest().as_ref())?;
        let mut blobs = vec![(format!("sha256:{config_hex}"), config_desc.size())];
        let mut layers = Vec::new();
        for l in manifest.layers() {
            let mt = l.media_type().to_string();
            if !LAYER_TYPES.contains(&mt.as_str()) {
                return Err(PullError::Unsupported(format!(
                    "{}: layer media type {mt} is not supported",
                    ctx.reference
                )));
            }
            let hex = digest_hex(l.digest().as_ref())?;
            blobs.push((format!("sha256:{hex}"), l.size()));
            layers.push((hex, l.size()));
        }
        emit(PullEvent::Resolved {
            digest: format!("sha256:{manifest_hex}"),
            blobs,
        });
        self.fetch(
            &ctx,
            &config_hex,
            Some(config_desc.size()),
            Kind::Blob,
            progress.as_ref(),
        )
        .await?;
        let config: oci_spec::image::ImageConfiguration =
            parse_json(&self.store.read_small_blob(&config_hex)?, "image config")?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != layers.len() {
            return Err(PullError::Store(ImageError::Corrupt(format!(
                "{}: the manifest has {} layers but the config {} diff ids",
                ctx.reference,
                layers.len(),
                diff_ids.len()
            ))));
        }
        // Fetch and unpack each layer as soon as it is here, several at once.
        let jobs = layers
            .into_iter()
            .zip(diff_ids.iter().cloned())
            .map(|((hex, size), diff)| {
                let ctx = ctx.clone();
                let progress = progress.clone();
                let this = self.clone();
                async move {
                    this.fetch(&ctx, &hex, Some(size), Kind::Blob, progress.as_ref())
                        .await?;
                    let diff_hex = digest_hex(&diff)?;
                    let store = this.store.clone();
                    tokio::task::spawn_blocking(move || store.ensure_layer(&hex, &diff_hex))
                        .await
                        .map_err(|e| PullError::Store(ImageError::Corrupt(e.to_string())))??;
                    Ok::<(), PullError>(())
                }
            });
        let results: Vec<Result<(), PullError>> = futures::stream::iter(jobs)
            .buffer_unordered(PARALLEL_BLOBS)
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        emit(PullEvent::Unpacking);
        let store = self.store.clone();
        let reference = ctx.reference.clone();
        let mhex = manifest_hex.clone();
        let summary = tokio::task::spawn_blocking(move || store.tag(&reference, &mhex))
            .await
            .map_err(|e| PullError::Store(ImageError::Corrupt(e.to_string())))??;
        self.notify_changed();
        let resolved = self.store.resolve(&ctx.reference)?;
        emit(PullEvent::Done { image: summary });
        Ok(resolved)
    }

    /// The manifest digest a tag names: asked of the registry, else (registry unreachable) of
    /// the peers that hold the tag.
    async fn resolve_tag(self: &Arc<Self>, ctx: &Arc<Ctx>) -> Result<String, PullError> {
        let what = ctx.reference.clone();
        let tag = ctx.oci_ref.tag().unwrap_or("latest");
        let mut registry_err = None;
        for ep in &ctx.endpoints {
            match ep
                .manifest(
                    &ctx.repository,
                    tag,
                    MANIFEST_TYPES,
                    super::archive::MAX_JSON_BYTES,
                    &what,
                )
                .await
            {
                Ok(bytes) => {
                    let hex = sha256_hex(&bytes);
                    if !self.store.has_blob(&hex) {
                        let path = self.store.download_path(&hex);
                        tokio::fs::write(&path, &bytes)
                            .await
                            .map_err(|e| PullError::Store(ImageError::io(&path, e)))?;
                        self.store.commit_blob(&hex, &path)?;
                    }
                    return Ok(hex);
                }
                Err(e) => {
                    if ep.mirror {
                        tracing::info!(reference = %what, mirror = %ep.host, error = %e,
                            "mirror failed to resolve the tag; trying the next endpoint");
                    }
                    registry_err = Some(e);
                }
            }
        }
        let registry_err = registry_err
            .unwrap_or_else(|| PullError::Unreachable(format!("{what}: no registry endpoint")));
        if !matches!(registry_err, PullError::Unreachable(_)) {
            return Err(registry_err);
        }
        for (peer, digest) in self.peers.tag_holders(&ctx.named) {
            let Ok(hex) = digest_hex(&digest) else {
                continue;
            };
            tracing::info!(reference = %what, peer = %peer.node, %digest, error = %registry_err,
                "registry unreachable: using the tag as a peer has it");
            if self
                .fetch(ctx, &hex, None, Kind::Manifest, None)
                .await
                .is_ok()
            {
                return Ok(hex);
            }
        }
        Err(registry_err)
    }

    /// Follows an index to this host's platform manifest (fetching it); a manifest is itself.
    async fn platform_manifest(
        self: &Arc<Self>,
        ctx: &Arc<Ctx>,
        hex: &str,
    ) -> Result<String, PullError> {
        let bytes = self.store.read_small_blob(hex)?;
        let v: serde_json::Value = parse_json(&bytes, "manifest")?;
        if v.get("schemaVersion").and_then(|s| s.as_u64()) == Some(1) {
            return Err(PullError::Unsupported(format!(
                "{}: Docker schema 1 manifests are not supported",
                ctx.reference
            )));
        }
        if v.get("manifests").is_none() {
            return Ok(hex.to_string());
        }
        let index: oci_spec::image::ImageIndex = parse_json(&bytes, "image index")?;
        let arch = super::archive::host_arch();
        let mut seen = Vec::new();
        let mut chosen = None;
        for m in index.manifests() {
            let Some(p) = m.platform() else { continue };
            let (os, a) = (p.os().to_string(), p.architecture().to_string());
            seen.push(format!("{os}/{a}"));
            if os == "linux" && a == arch {
                let variant_ok = match (arch, p.variant().as_deref()) {
                    ("arm64", Some(v)) => v == "v8",
                    _ => true,
                };
                if variant_ok && chosen.is_none() {
                    chosen = Some(m.digest().to_string());
                }
            }
        }
        let Some(child) = chosen else {
            return Err(PullError::Unsupported(format!(
                "{}: no linux/{arch} image in the index (it has: {})",
                ctx.reference,
                seen.join(", ")
            )));
        };
        let child_hex = digest_hex(&child)?;
        self.fetch(ctx, &child_hex, None, Kind::Manifest, None)
            .await?;
        Ok(child_hex)
    }

    /// Makes blob `hex` present: already here, joined, or downloaded (peers, seed, registry).
    async fn fetch(
        self: &Arc<Self>,
        ctx: &Arc<Ctx>,
        hex: &str,
        size: Option<u64>,
        kind: Kind,
        progress: Option<&mpsc::UnboundedSender<PullEvent>>,
    ) -> Result<(), PullError> {
        let digest = format!("sha256:{hex}");
        let emit = |done: u64, total: u64, source: String| {
            if let Some(p) = progress {
                let _ = p.send(PullEvent::Blob {
                    digest: digest.clone(),
                    done,
                    total,
                    source,
                });
            }
        };
        if self.store.has_blob(hex) {
            let n = size.unwrap_or(0);
            emit(n, n, "local".into());
            return Ok(());
        }
        let mut rx = self.start_or_join(ctx, hex, size, kind).subscribe();
        let mut last = std::time::Instant::now() - PROGRESS_EVERY;
        let mut last_source = "registry".to_string();
        loop {
            let state = rx.borrow_and_update().clone();
            match state {
                DlState::Running {
                    written,
                    total,
                    source,
                    ..
                } => {
                    if source != last_source || last.elapsed() >= PROGRESS_EVERY {
                        last = std::time::Instant::now();
                        last_source = source.clone();
                        emit(written, total.or(size).unwrap_or(0), source);
                    }
                }
                DlState::Done(Ok(())) => {
                    let n = size.unwrap_or(0);
                    emit(n, n, last_source);
                    return Ok(());
                }
                DlState::Done(Err(e)) => return Err(e),
            }
            if rx.changed().await.is_err() {
                return if self.store.has_blob(hex) {
                    Ok(())
                } else {
                    Err(PullError::Unreachable(format!(
                        "the download of {digest} stopped"
                    )))
                };
            }
        }
    }

    /// The running download of `hex`, or a new one (spawned: it finishes even if the pull that
    /// started it is dropped, for the other pulls and peers waiting on it).
    fn start_or_join(
        self: &Arc<Self>,
        ctx: &Arc<Ctx>,
        hex: &str,
        size: Option<u64>,
        kind: Kind,
    ) -> Inflight {
        let mut map = self.inflight();
        if let Some(tx) = map.get(hex) {
            return tx.clone();
        }
        let initial = if self.store.has_blob(hex) {
            DlState::Done(Ok(()))
        } else {
            DlState::Running {
                attempt: 0,
                path: PathBuf::new(),
                written: 0,
                total: size,
                source: "queued".into(),
            }
        };
        let done = matches!(initial, DlState::Done(_));
        let tx = Arc::new(watch::channel(initial).0);
        if done {
            return tx;
        }
        map.insert(hex.to_string(), tx.clone());
        drop(map);
        let this = self.clone();
        let ctx = ctx.clone();
        let hex = hex.to_string();
        let tx2 = tx.clone();
        tokio::spawn(async move {
            let result = this.download(&ctx, &hex, size, kind, &tx2).await;
            tx2.send_replace(DlState::Done(result));
            this.inflight().remove(&hex);
        });
        tx
    }

    /// Tries each source in turn until one delivers the right bytes.
    async fn download(
        &self,
        ctx: &Ctx,
        hex: &str,
        size: Option<u64>,
        kind: Kind,
        tx: &watch::Sender<DlState>,
    ) -> Result<(), PullError> {
        let mut sources: Vec<Source> = self
            .peers
            .holders(hex)
            .into_iter()
            .take(MAX_HOLDERS)
            .map(Source::Holder)
            .collect();
        if ctx.allow_seed && kind == Kind::Blob && size.is_some() {
            if let Some(seed) = self.peers.seed(hex) {
                let held = sources
                    .iter()
                    .any(|s| matches!(s, Source::Holder(p) if p.node == seed.node));
                if !held {
                    sources.push(Source::Seed(seed));
                }
            }
        }
        sources.extend((0..ctx.endpoints.len()).map(Source::Registry));
        let mut last_err = None;
        for (attempt, source) in sources.iter().enumerate() {
            let path = self.store.download_path(hex);
            tx.send_replace(DlState::Running {
                attempt: attempt as u32,
                path: path.clone(),
                written: 0,
                total: size,
                source: source.label(ctx),
            });
            let result = self
                .download_from(ctx, source, hex, size, kind, &path, tx)
                .await;
            match result {
                Ok(()) => {
                    self.store.commit_blob(hex, &path)?;
                    return Ok(());
                }
                Err(e) => {
                    let _ = tokio::fs::remove_file(&path).await;
                    let last =
                        matches!(source, Source::Registry(i) if *i + 1 == ctx.endpoints.len());
                    if !last {
                        tracing::info!(blob = %hex, source = %source.label(ctx), error = %e,
                            "blob source failed; trying the next");
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err
            .unwrap_or_else(|| PullError::Unreachable(format!("no source for sha256:{hex}"))))
    }

    #[allow(clippy::too_many_arguments)]
    async fn download_from(
        &self,
        ctx: &Ctx,
        source: &Source,
        hex: &str,
        size: Option<u64>,
        kind: Kind,
        path: &Path,
        tx: &watch::Sender<DlState>,
    ) -> Result<(), PullError> {
        let digest = format!("sha256:{hex}");
        let what = format!("{} {digest} from {}", ctx.reference, source.label(ctx));
        let limit = size.unwrap_or(super::archive::MAX_JSON_BYTES);
        let mut stream: futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>> =
            match source {
                Source::Holder(p) => self.peer_stream(p, hex, None).await?,
                Source::Seed(p) => {
                    let body = FetchThrough {
                        reference: ctx.reference.clone(),
                        size: size.unwrap_or(0),
                        credentials: ctx.credentials.clone(),
                    };
                    self.peer_stream(p, hex, Some(&body)).await?
                }
                Source::Registry(i) => {
                    let ep = ctx.endpoints.get(*i).ok_or_else(|| {
                        PullError::Unreachable(format!("{what}: no registry endpoint {i}"))
                    })?;
                    match kind {
                        Kind::Manifest => {
                            let bytes = ep
                                .manifest(&ctx.repository, &digest, MANIFEST_TYPES, limit, &what)
                                .await?;
                            futures::stream::once(async move { Ok(bytes::Bytes::from(bytes)) })
                                .boxed()
                        }
                        Kind::Blob => ep.blob(&ctx.repository, &digest, &what).await?,
                    }
                }
            };
        let mut file = tokio::fs::File::create(path)
            .await
            .map_err(|e| PullError::Store(ImageError::io(path, e)))?;
        let mut hasher = Sha256::new();
        let mut written: u64 = 0;
        loop {
            let chunk = match tokio::time::timeout(STALL, stream.next()).await {
                Err(_) => {
                    return Err(PullError::Unreachable(format!(
                        "{what}: no data for {}s",
                        STALL.as_secs()
                    )))
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(PullError::Unreachable(format!("{what}: {e}"))),
                Ok(Some(Ok(b))) => b,
            };
            written += chunk.len() as u64;
            if written > limit {
                return Err(PullError::Digest {
                    what,
                    expected: format!("{digest} of {limit} bytes"),
                    actual: format!("more than {limit} bytes"),
                });
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| PullError::Store(ImageError::io(path, e)))?;
            tx.send_modify(|s| {
                if let DlState::Running { written: w, .. } = s {
                    *w = written;
                }
            });
        }
        file.sync_all()
            .await
            .map_err(|e| PullError::Store(ImageError::io(path, e)))?;
        let actual = hex::encode(hasher.finalize());
        if actual != hex || size.is_some_and(|s| s != written) {
            return Err(PullError::Digest {
                what,
                expected: digest,
                actual: format!("sha256:{actual} ({written} bytes)"),
            });
        }
        if let Some(m) = self.metrics.get() {
            m.image_pull_bytes(source.metric(), written);
        }
        Ok(())
    }

    /// A blob from a peer's API: `GET` (held there) or `POST .../fetch` (fetch-through).
    async fn peer_stream(
        &self,
        peer: &Peer,
        hex: &str,
        fetch: Option<&FetchThrough>,
    ) -> Result<futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>, PullError> {
        let pc = self
            .peers
            .client()
            .ok_or_else(|| PullError::Unreachable("no client for peers".into()))?;
        let url = format!("{}/shoal/v1/blobs/sha256:{hex}", peer.url);
        let req = match fetch {
            None => pc.client.get(url),
            Some(body) => pc.client.post(format!("{url}/fetch")).json(body),
        };
        let resp = tokio::time::timeout(STALL, req.bearer_auth(&pc.token).send())
            .await
            .map_err(|_| PullError::Unreachable(format!("peer {}: no answer", peer.node)))?
            .map_err(|e| PullError::Unreachable(format!("peer {}: {e}", peer.node)))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            return Err(PullError::Unreachable(format!(
                "peer {}: HTTP {status}: {}",
                peer.node,
                body.chars().take(300).collect::<String>()
            )));
        }
        Ok(resp
            .bytes_stream()
            .map(|r| r.map_err(std::io::Error::other))
            .boxed())
    }

    /// A blob for a peer: held (complete) or being downloaded on this node (streamed as it
    /// arrives). `None`: not here.
    pub fn serve_blob(self: &Arc<Self>, hex: &str) -> Option<BlobStream> {
        if !super::reference::is_sha256_hex(hex) {
            return None;
        }
        if let Some(path) = self.store.blob_file(hex) {
            let size = std::fs::metadata(&path).ok().map(|m| m.len());
            return Some(BlobStream {
                size,
                body: tail(self.clone(), hex.to_string(), None),
            });
        }
        let tx = self.inflight().get(hex).cloned()?;
        let size = match &*tx.borrow() {
            DlState::Running { total, .. } => *total,
            DlState::Done(_) => None,
        };
        Some(BlobStream {
            size,
            body: tail(self.clone(), hex.to_string(), Some(tx.subscribe())),
        })
    }

    /// As the seed of `hex`: fetches the blob from the registry of `req.reference` (or joins
    /// the running download) and streams it as it arrives. Never asks another seed.
    pub async fn fetch_through(
        self: &Arc<Self>,
        hex: &str,
        req: &FetchThrough,
    ) -> Result<BlobStream, PullError> {
        if !super::reference::is_sha256_hex(hex) {
            return Err(PullError::Store(ImageError::InvalidReference(format!(
                "bad digest sha256:{hex}"
            ))));
        }
        if req.size == 0 || req.size > super::unpack::MAX_LAYER_BYTES {
            return Err(PullError::Unsupported(format!(
                "blob size {} is out of range",
                req.size
            )));
        }
        if let Some(b) = self.serve_blob(hex) {
            return Ok(b);
        }
        let ctx = self.ctx(
            &PullRequest {
                reference: req.reference.clone(),
                credentials: req.credentials.clone(),
            },
            false,
        )?;
        let tx = self.start_or_join(&ctx, hex, Some(req.size), Kind::Blob);
        Ok(BlobStream {
            size: Some(req.size),
            body: tail(self.clone(), hex.to_string(), Some(tx.subscribe())),
        })
    }
}

/// Streams blob `hex`: from the store, or (given the download's state) from the file being
/// downloaded, following it as it grows. Fails if the download fails or switches source.
fn tail(
    puller: Arc<Puller>,
    hex: String,
    rx: Option<watch::Receiver<DlState>>,
) -> futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>> {
    struct St {
        puller: Arc<Puller>,
        hex: String,
        rx: Option<watch::Receiver<DlState>>,
        file: Option<tokio::fs::File>,
        attempt: Option<u32>,
        pos: u64,
        finished: bool,
    }
    async fn read_some(
        file: &mut tokio::fs::File,
        max: u64,
    ) -> std::io::Result<Option<bytes::Bytes>> {
        let mut buf = vec![0u8; max.min(256 * 1024) as usize];
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        Ok(Some(bytes::Bytes::from(buf)))
    }
    let st = St {
        puller,
        hex,
        rx,
        file: None,
        attempt: None,
        pos: 0,
        finished: false,
    };
    futures::stream::unfold(st, |mut st| async move {
        if st.finished {
            return None;
        }
        let fail = |mut st: St, msg: String| {
            st.finished = true;
            Some((Err(std::io::Error::other(msg)), st))
        };
        loop {
            let state = match &mut st.rx {
                Some(rx) => rx.borrow_and_update().clone(),
                None => DlState::Done(Ok(())),
            };
            match state {
                DlState::Running {
                    attempt,
                    path,
                    written,
                    ..
                } => {
                    if st.attempt.is_some_and(|a| a != attempt) {
                        return fail(st, "the download switched to another source".into());
                    }
                    if st.file.is_none() && !path.as_os_str().is_empty() {
                        match tokio::fs::File::open(&path).await {
                            Ok(f) => {
                                st.file = Some(f);
                                st.attempt = Some(attempt);
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(e) => return fail(st, e.to_string()),
                        }
                    }
                    if let Some(f) = st.file.as_mut().filter(|_| st.pos < written) {
                        match read_some(f, written - st.pos).await {
                            Ok(Some(b)) => {
                                st.pos += b.len() as u64;
                                return Some((Ok(b), st));
                            }
                            Ok(None) => {}
                            Err(e) => return fail(st, e.to_string()),
                        }
                    }
                    let changed = match &mut st.rx {
                        Some(rx) => rx.changed().await.is_ok(),
                        None => false,
                    };
                    if !changed && st.puller.store.blob_file(&st.hex).is_none() {
                        return fail(st, "the download stopped".into());
                    }
                    if !changed {
                        st.rx = None;
                    }
                }
                DlState::Done(Err(e)) => return fail(st, e.to_string()),
                DlState::Done(Ok(())) => {
                    if st.file.is_none() {
                        let Some(p) = st.puller.store.blob_file(&st.hex) else {
                            return fail(st, "the blob vanished".into());
                        };
                        match tokio::fs::File::open(&p).await {
                            Ok(f) => st.file = Some(f),
                            Err(e) => return fail(st, e.to_string()),
                        }
                        if st.pos > 0 {
                            let pos = st.pos;
                            if let Some(f) = st.file.as_mut() {
                                if let Err(e) = f.seek(std::io::SeekFrom::Start(pos)).await {
                                    return fail(st, e.to_string());
                                }
                            }
                        }
                    }
                    let f = st.file.as_mut()?;
                    return match read_some(f, u64::MAX).await {
                        Ok(Some(b)) => {
                            st.pos += b.len() as u64;
                            Some((Ok(b), st))
                        }
                        Ok(None) => None,
                        Err(e) => fail(st, e.to_string()),
                    };
                }
            }
        }
    })
    .boxed()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `sha256:<hex>` → `<hex>`, refusing other algorithms and malformed digests.
fn digest_hex(d: &str) -> Result<String, PullError> {
    match d.strip_prefix("sha256:") {
        Some(h) if super::reference::is_sha256_hex(h) => Ok(h.to_string()),
        _ => Err(PullError::Unsupported(format!(
            "digest {d:?}: only sha256 digests are supported"
        ))),
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, PullError> {
    serde_json::from_slice(bytes)
        .map_err(|e| PullError::Store(ImageError::Corrupt(format!("{what}: {e}"))))
}
