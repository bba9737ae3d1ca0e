//! The agent: creates or joins a cluster in its data dir, then runs the network actor, the
//! API server and the node registrar until shutdown. `shoal init` and `shoal agent` call in here.

mod backend;
mod controllers;
mod datadir;
pub mod dns;
mod exec;
pub mod images;
mod init;
mod ipam;
mod metrics;
pub(crate) mod node_info;
pub mod proxy;
pub mod routes;
pub mod secrets;
pub mod services;
mod settings;
pub mod shared;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use automerge::ActorId;

pub use backend::{AgentBackend, BackupFile, BACKUP_FORMAT};
pub use datadir::{DataDir, DataDirError};
pub use init::{init_cluster, InitOptions, InitOutput};
pub use settings::{AgentSettings, DnsUpstream};
use shared::Shared;

use crate::net::{self, NetConfig};
use crate::security::{self, ClusterIdentity, JoinToken};
use crate::state::{ClusterDoc, DocStore, StateError, StatusDoc, Wal};

/// Status documents saved in `D/status/`; unreadable files are reported and skipped (peers
/// hold replicas, anti-entropy brings them back).
fn load_status_docs(dir: &DataDir) -> std::collections::BTreeMap<String, StatusDoc> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir.path("status")) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("cbor") {
            continue;
        }
        match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| StatusDoc::decode(&b, ActorId::random()).map_err(|e| e.to_string()))
        {
            Ok(doc) => {
                out.insert(doc.owner().to_string(), doc);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), %e, "skipping unreadable status document")
            }
        }
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Net(#[from] net::NetError),
    #[error(transparent)]
    Security(#[from] security::SecurityError),
    #[error("configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Other(String),
}

/// What `shoal agent` was asked to do on this start.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub data_dir: std::path::PathBuf,
    pub name: Option<String>,
    pub join: Vec<SocketAddr>,
    pub token: Option<JoinToken>,
    pub listen_p2p: Option<SocketAddr>,
    pub listen_api: Option<SocketAddr>,
    pub advertise: Option<std::net::IpAddr>,
    /// Registries reachable over plain HTTP (checked `host[:port]`); replaces the stored list
    /// when not empty.
    pub insecure_registries: Vec<String>,
    /// `--dns-upstream` values; replace the stored setting when not empty.
    pub dns_upstreams: Vec<DnsUpstream>,
    /// `--pod-pids-limit`; replaces the stored setting when given.
    pub pod_pids_limit: Option<i64>,
    /// `--allow-host-path` prefixes; replace the stored list when not empty.
    pub allowed_host_paths: Vec<std::path::PathBuf>,
    /// `--metrics-addr`: also serve `GET /metrics` in plain HTTP there (not saved).
    pub metrics_addr: Option<SocketAddr>,
}

/// Prepares the data dir for this start: a first start of a joiner writes the identity from
/// the token; later starts reuse what is there. Flags override stored settings.
fn prepare(opts: &RunOptions) -> Result<(DataDir, AgentSettings, ClusterIdentity), AgentError> {
    let dir = DataDir::new(&opts.data_dir);
    let mut settings = dir.settings()?.unwrap_or_default();
    if let Some(n) = &opts.name {
        settings.name = n.clone();
    }
    if !opts.join.is_empty() {
        settings.join = opts.join.clone();
    }
    if let Some(a) = opts.listen_p2p {
        settings.listen_p2p = a;
    }
    if let Some(a) = opts.listen_api {
        settings.listen_api = a;
    }
    if let Some(a) = opts.advertise {
        settings.advertise = Some(a);
    }
    if !opts.insecure_registries.is_empty() {
        settings.insecure_registries = opts.insecure_registries.clone();
    }
    if let Some(n) = opts.pod_pids_limit {
        settings.pod_pids_limit = n;
    }
    if !opts.dns_upstreams.is_empty() {
        settings.dns_upstreams =
            DnsUpstream::setting(&opts.dns_upstreams).map_err(AgentError::Config)?;
    }
    if !opts.allowed_host_paths.is_empty() {
        for p in &opts.allowed_host_paths {
            if !p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
                return Err(AgentError::Config(format!(
                    "--allow-host-path {}: must be an absolute path without '..'",
                    p.display()
                )));
            }
        }
        settings.allowed_host_paths = opts.allowed_host_paths.clone();
    }
    if settings.name.is_empty() {
        settings.name = node_info::hostname();
    }
    if !crate::model::is_dns1123_subdomain(&settings.name) {
        return Err(AgentError::Config(format!(
            "node name {:?} is not a DNS-1123 subdomain",
            settings.name
        )));
    }
    let identity = if dir.is_initialized() {
        let identity = dir.identity()?;
        if let Some(t) = &opts.token {
            if t.cluster_id != identity.cluster_id
                || t.secret != identity.secret
                || t.generation != identity.generation
            {
                return Err(AgentError::Config(format!(
                    "data dir {} belongs to cluster {} generation {}; the token is for cluster {} generation {} (use a fresh data dir to join another cluster)",
                    opts.data_dir.display(), identity.cluster_id, identity.generation, t.cluster_id, t.generation
                )));
            }
        }
        identity
    } else {
        let token = opts.token.clone().ok_or_else(|| {
            AgentError::Config(format!("{} is not a shoal data dir: run `shoal init` there, or join with --join ADDR --token TOKEN", opts.data_dir.display()))
        })?;
        if settings.join.is_empty() {
            return Err(AgentError::Config(
                "joining needs at least one --join ADDR (any member's p2p address)".into(),
            ));
        }
        dir.create()?;
        let identity = token.into_identity();
        dir.write_identity(&identity)?;
        dir.write(
            "join-token",
            format!("{}\n", identity.join_token()).as_bytes(),
            0o600,
        )?;
        identity
    };
    dir.write_settings(&settings)?;
    Ok((dir, settings, identity))
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    opts: RunOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let (dir, settings, identity) = prepare(&opts)?;
    let _lock = dir.lock()?;
    let key = dir.node_key()?;
    let peer_id = key.public().to_peer_id();
    // A fresh actor id at every start: a crash may have lost changes that peers already hold,
    // and reusing an actor with a shorter history would produce duplicate sequence numbers.
    let actor = ActorId::random();
    let store = DocStore::new(dir.root());
    let doc = store
        .load(actor.clone())?
        .unwrap_or_else(|| ClusterDoc::empty(actor));
    let wal = Wal::new(store.wal_path());
    let advertise = settings.advertise_ip();
    tracing::info!(node = %settings.name, %peer_id, cluster = %identity.cluster_id, generation = identity.generation, %advertise, "agent starting");

    let mut status = load_status_docs(&dir);
    status
        .entry(settings.name.clone())
        .or_insert_with(|| StatusDoc::empty(&settings.name, 0, ActorId::random()));
    let (shared, local_rx) = Shared::new(settings.name.clone(), identity, doc, wal, status);
    let shared = Arc::new(shared);
    shared.set_saved_bytes(
        std::fs::metadata(store.path())
            .map(|m| m.len())
            .unwrap_or(0),
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let mut net_config = NetConfig::new(settings.listen_p2p, advertise);
    net_config.join = settings.join.clone();
    let net_task = tokio::spawn(net::run(
        key,
        shared.clone(),
        net_config,
        dir.root().to_path_buf(),
        local_rx,
        stopped(stop_rx.clone()),
    ));

    let puller = match crate::runtime::image::ImageStore::open(&dir.root().join("images")) {
        Ok(store) => {
            let peers = images::ClusterPeers::new(shared.clone(), dir.root().to_path_buf());
            let config = crate::runtime::image::pull::PullConfig::with_env_proxies(
                settings.insecure_registries.clone(),
            );
            let puller = crate::runtime::image::pull::Puller::new(store, config, Arc::new(peers));
            puller.set_metrics(shared.metrics.clone());
            Some(puller)
        }
        Err(e) => {
            tracing::error!(%e, "opening the image store failed: this node cannot run pods");
            None
        }
    };
    let images_task = puller.clone().map(|puller| {
        tokio::spawn(images::run(
            shared.clone(),
            puller,
            dir.root().to_path_buf(),
            images::GcConfig::from_env(),
            stopped(stop_rx.clone()),
        ))
    });

    let api_task = {
        let shared = shared.clone();
        let dir = dir.clone();
        let settings = settings.clone();
        let stop = stopped(stop_rx.clone());
        let puller = puller.clone();
        tokio::spawn(async move {
            serve_api(shared, dir, settings, peer_id.to_string(), puller, stop).await
        })
    };

    let metrics_task = match opts.metrics_addr {
        Some(addr) => Some(tokio::spawn(metrics::serve_plain(
            shared.clone(),
            metrics::bind(addr).await?,
            stopped(stop_rx.clone()),
        ))),
        None => None,
    };
    let controllers_task = tokio::spawn(controllers::run(shared.clone(), stopped(stop_rx.clone())));
    let ipam_task = tokio::spawn(ipam::run(shared.clone(), stopped(stop_rx.clone())));
    // Re-allocates Services that lost an address to a concurrent allocation (leader only).
    let services_task = tokio::spawn(services::run(shared.clone(), stopped(stop_rx.clone())));
    // The pod network: the node's bridge, sysctls and routes to the other nodes' pods.
    let pod_network = routes::pod_network_enabled(advertise);
    let routes_task =
        pod_network.then(|| tokio::spawn(routes::run(shared.clone(), stopped(stop_rx.clone()))));
    if !pod_network {
        tracing::warn!(%advertise, "pod network off (loopback address or SHOAL_POD_NETWORK=off): pods get no IP of their own");
    }
    // Service load balancing (nftables) comes with the pod network: agents sharing one host's
    // network namespace (loopback tests) must not fight over one table.
    let proxy_task =
        pod_network.then(|| tokio::spawn(proxy::run(shared.clone(), stopped(stop_rx.clone()))));
    // The node's DNS server listens at the pod gateway, so it too comes with the pod network.
    let dns_task = pod_network.then(|| {
        tokio::spawn(dns::run(
            shared.clone(),
            dns::upstreams(&settings.dns_upstreams),
            stopped(stop_rx.clone()),
        ))
    });

    let kubelet_task = tokio::spawn(crate::kubelet::run(
        shared.clone(),
        crate::kubelet::KubeletConfig {
            runtime: crate::runtime::RuntimeConfig {
                host_path_prefixes: settings.allowed_host_paths.clone(),
                ..crate::runtime::RuntimeConfig::from_env(dir.root(), &settings.name, pod_network)
                    .with_pod_pids_limit(settings.pod_pids_limit)
            },
            node_ip: advertise.to_string(),
            puller,
        },
        stopped(stop_rx.clone()),
    ));

    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = kubelet_task.await;
    if let Some(t) = images_task {
        let _ = t.await;
    }
    let _ = controllers_task.await;
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    let _ = ipam_task.await;
    let _ = services_task.await;
    if let Some(t) = dns_task {
        let _ = t.await;
    }
    if let Some(t) = proxy_task {
        let _ = t.await;
    }
    if let Some(t) = routes_task {
        let _ = t.await;
    }
    let api = api_task
        .await
        .map_err(|e| AgentError::Other(e.to_string()))?;
    let net = net_task
        .await
        .map_err(|e| AgentError::Other(e.to_string()))?;
    api?;
    net?;
    Ok(())
}

/// Waits for the cluster metadata (a joiner gets it by its first sync), registers this node,
/// issues the API certificate from the cluster CA, and serves the API.
async fn serve_api(
    shared: Arc<Shared>,
    dir: DataDir,
    settings: AgentSettings,
    peer_id: String,
    puller: Option<Arc<crate::runtime::image::pull::Puller>>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let mut changes = shared.subscribe();
    let meta = loop {
        if let Some(meta) = shared.doc().meta()? {
            break meta;
        }
        tracing::info!("waiting for the cluster state from a member");
        let _ = tokio::time::timeout(Duration::from_secs(5), changes.changed()).await;
    };
    if meta.cluster_id != shared.identity.cluster_id
        || meta.generation != shared.identity.generation
    {
        return Err(AgentError::Config(format!(
            "the document is of cluster {} generation {}, this node of {} generation {}",
            meta.cluster_id,
            meta.generation,
            shared.identity.cluster_id,
            shared.identity.generation
        )));
    }
    let ca_key = security::open(&shared.identity, "ca-key", &meta.ca_key_sealed)?;
    let ca = security::CertPair {
        cert_pem: meta.ca_cert_pem.clone(),
        key_pem: String::from_utf8_lossy(&ca_key).into_owned(),
    };
    dir.write("tls/ca.crt", meta.ca_cert_pem.as_bytes(), 0o644)?;
    let advertise = settings.advertise_ip();
    let mut ips = vec![advertise];
    if !settings.listen_api.ip().is_unspecified() {
        ips.push(settings.listen_api.ip());
    }
    let server = security::issue_server_cert(&ca, &settings.name, &ips)?;
    dir.write("tls/server.crt", server.cert_pem.as_bytes(), 0o644)?;
    dir.write("tls/server.key", server.key_pem.as_bytes(), 0o600)?;

    let api_addr = SocketAddr::new(advertise, settings.listen_api.port());
    let p2p_addr = format!(
        "/ip4/{}/udp/{}/quic-v1/p2p/{peer_id}",
        advertise,
        settings.listen_p2p.port()
    );
    let peer_id_for_status = peer_id.clone();
    let register = {
        let shared = shared.clone();
        let name = settings.name.clone();
        move || {
            let existing = shared.doc().node(&name).ok().flatten();
            let record = node_info::record(
                &name,
                &peer_id,
                &p2p_addr,
                &api_addr.to_string(),
                advertise,
                existing.as_ref(),
            );
            if let Err(e) = shared.write(|d| d.put_node(&record)) {
                tracing::error!(%e, "registering this node failed");
            }
        }
    };
    register();
    // The node's own status document records each agent start (a real transition).
    let started = serde_json::json!({"version": crate::VERSION, "started": chrono::Utc::now().to_rfc3339(), "peer": peer_id_for_status});
    if let Err(e) = shared.write_status(|d| d.put("agent", &started)) {
        tracing::error!(%e, "writing the status document failed");
    }

    let tls = crate::api::tls_config(server.cert_pem.as_bytes(), server.key_pem.as_bytes())
        .map_err(|e| AgentError::Other(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(settings.listen_api)
        .await
        .map_err(|e| {
            AgentError::Config(format!("binding the API on {}: {e}", settings.listen_api))
        })?;
    tracing::info!(addr = %settings.listen_api, "API listening");
    let backend: Arc<dyn crate::api::Backend> = Arc::new(AgentBackend::new(
        shared.clone(),
        dir.root().to_path_buf(),
        puller,
    ));

    // Re-register if someone deleted this node's record while it is alive.
    let registrar = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            register();
        }
    });
    let result = crate::api::serve(
        listener,
        Arc::new(tls),
        backend,
        crate::api::ApiConfig::default(),
        stop,
    )
    .await;
    registrar.abort();
    result.map_err(|e| AgentError::Other(format!("API server: {e}")))
}
