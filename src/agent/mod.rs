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
mod portforward;
pub mod proxy;
pub mod routes;
pub mod services;
mod settings;
mod usage;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use automerge::ActorId;

use crate::state::Shared;
pub use backend::{AgentBackend, BackupFile, BACKUP_FORMAT};
pub use datadir::{DataDir, DataDirError};
pub use init::{init_cluster, InitOptions, InitOutput};
pub use settings::{parse_registry_mirror, AgentSettings, DnsUpstream, DEFAULT_REGISTRY_CERTS_DIR};

use crate::net::{self, NetConfig};
use crate::security::{self, ClusterIdentity, JoinToken};
use crate::state::{ClusterDoc, DocStore, StateError, StatusDoc, Wal};

/// Status documents saved in `S/status/`; unreadable files are reported and skipped (peers
/// hold replicas, anti-entropy brings them back).
fn load_status_docs(state_dir: &Path) -> std::collections::BTreeMap<String, StatusDoc> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(state_dir.join("status")) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("cbor") {
            continue;
        }
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(path = %path.display(), %e, "skipping unreadable status document");
                continue;
            }
        };
        let decoded = crate::state::open_file(&bytes).and_then(|payload| {
            StatusDoc::decode(payload, ActorId::random()).map_err(|e| e.to_string())
        });
        match decoded {
            Ok(doc) => {
                out.insert(doc.owner().to_string(), doc);
            }
            Err(e) => match crate::state::set_aside(&path, chrono::Utc::now()) {
                Ok(aside) => {
                    tracing::warn!(path = %path.display(), %e, aside = %aside.display(), "a damaged status document was moved aside; peers bring it back")
                }
                Err(io) => {
                    tracing::warn!(path = %path.display(), %e, %io, "skipping a damaged status document")
                }
            },
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
    /// `--registry-certs-dir`; replaces the stored list when not empty.
    pub registry_certs_dirs: Vec<std::path::PathBuf>,
    /// `--registry-mirror` (registry, mirror URL) pairs; replace the stored mirrors when not
    /// empty.
    pub registry_mirrors: Vec<(String, String)>,
    /// `--dns-upstream` values; replace the stored setting when not empty.
    pub dns_upstreams: Vec<DnsUpstream>,
    /// `--pod-pids-limit`; replaces the stored setting when given.
    pub pod_pids_limit: Option<i64>,
    /// `--allow-host-path` prefixes; replace the stored list when not empty.
    pub allowed_host_paths: Vec<std::path::PathBuf>,
    /// `--local-path-dir`; replaces the stored setting when given.
    pub local_path_dir: Option<std::path::PathBuf>,
    /// `--metrics-addr`: also serve `GET /metrics` in plain HTTP there (not saved).
    pub metrics_addr: Option<SocketAddr>,
    /// `--state-dir`; replaces the stored setting (the state files move) when given.
    pub state_dir: Option<std::path::PathBuf>,
    /// `--deny-privileged`; replaces the stored setting when given.
    pub deny_privileged: Option<bool>,
    /// `--restart-hold`: on a signal, announce a planned restart asking peers to hold this
    /// node's pods this long (zero: leave, the pods fail over at once). Not saved.
    pub restart_hold: std::time::Duration,
}

/// The directory of this node's local-path volumes (`--local-path-dir`, else
/// `<data dir>/local-path`), created if missing (mode 0700: only root walks into the volumes;
/// containers see their own volume alone, bind-mounted).
fn local_path_root(
    settings: &AgentSettings,
    data_dir: &Path,
) -> Result<std::path::PathBuf, AgentError> {
    let root = settings
        .local_path_dir
        .clone()
        .unwrap_or_else(|| data_dir.join("local-path"));
    std::fs::create_dir_all(&root)
        .and_then(|_| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))
        })
        .map_err(|e| AgentError::Config(format!("--local-path-dir {}: {e}", root.display())))?;
    Ok(root)
}

/// The files of the replicated state, relative to the state dir.
const STATE_FILES: [&str; 2] = ["state.automerge", "state.wal"];

/// Moves the replicated state from `from` to `to` (another file system, typically): each file
/// is copied and fsynced under its final name, then removed from `from`, so a crash midway
/// leaves a complete copy in one place or the other. Refuses when `to` already holds state.
fn move_state(from: &Path, to: &Path) -> Result<(), AgentError> {
    let io = |what: &Path, e: std::io::Error| {
        AgentError::Config(format!(
            "moving the state to {}: {}: {e}",
            to.display(),
            what.display()
        ))
    };
    std::fs::create_dir_all(to.join("status")).map_err(|e| io(to, e))?;
    if STATE_FILES.iter().any(|f| to.join(f).exists()) {
        return Err(AgentError::Config(format!(
            "--state-dir {} already holds a state (state.automerge or state.wal): empty it, or give the directory the state is in ({})",
            to.display(),
            from.display()
        )));
    }
    let mut files: Vec<PathBuf> = STATE_FILES.iter().map(PathBuf::from).collect();
    if let Ok(entries) = std::fs::read_dir(from.join("status")) {
        for e in entries.flatten() {
            if e.path().extension().and_then(|x| x.to_str()) == Some("cbor") {
                files.push(Path::new("status").join(e.file_name()));
            }
        }
    }
    for rel in &files {
        let src = from.join(rel);
        let bytes = match std::fs::read(&src) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&src, e)),
        };
        let dst = to.join(rel);
        crate::state::write_atomic(&dst, &bytes, 0o600).map_err(|e| io(&dst, e))?;
    }
    for rel in &files {
        let src = from.join(rel);
        match std::fs::remove_file(&src) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&src, e)),
            _ => {}
        }
    }
    crate::state::sync_parent(&from.join("state.automerge")).map_err(|e| io(from, e))?;
    tracing::info!(from = %from.display(), to = %to.display(), files = files.len(), "moved the replicated state");
    Ok(())
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
    if !opts.registry_certs_dirs.is_empty() {
        settings.registry_certs_dirs = opts.registry_certs_dirs.clone();
    }
    if !opts.registry_mirrors.is_empty() {
        settings.registry_mirrors.clear();
        for (registry, url) in &opts.registry_mirrors {
            settings
                .registry_mirrors
                .entry(registry.clone())
                .or_default()
                .push(url.clone());
        }
    }
    if let Some(n) = opts.pod_pids_limit {
        settings.pod_pids_limit = n;
    }
    if let Some(deny) = opts.deny_privileged {
        settings.deny_privileged = deny;
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
    if let Some(p) = &opts.local_path_dir {
        if !p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
            return Err(AgentError::Config(format!(
                "--local-path-dir {}: must be an absolute path without '..'",
                p.display()
            )));
        }
        settings.local_path_dir = Some(p.clone());
    }
    if let Some(p) = &opts.state_dir {
        if !p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
            return Err(AgentError::Config(format!(
                "--state-dir {}: must be an absolute path without '..'",
                p.display()
            )));
        }
        let to = (p.as_path() != dir.root()).then(|| p.clone());
        if to != settings.state_dir && dir.is_initialized() {
            let from = settings
                .state_dir
                .clone()
                .unwrap_or(dir.root().to_path_buf());
            let _lock = dir.lock()?;
            move_state(&from, p)?;
        }
        settings.state_dir = to;
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
    crate::runtime::network::CniMode::from_env().map_err(AgentError::Config)?;
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
    let state_dir = settings
        .state_dir
        .clone()
        .unwrap_or_else(|| dir.root().to_path_buf());
    std::fs::create_dir_all(state_dir.join("status")).map_err(|e| {
        AgentError::Config(format!(
            "creating the state dir {}: {e}",
            state_dir.display()
        ))
    })?;
    let store = DocStore::new(&state_dir);
    let loaded = store.load(actor.clone(), chrono::Utc::now())?;
    let damaged = loaded.set_aside.as_ref().map(|(aside, reason)| {
        format!(
            "its state file was damaged ({reason}) and was moved to {}",
            aside.display()
        )
    });
    let doc = loaded.doc.unwrap_or_else(|| ClusterDoc::empty(actor));
    // Where to fetch the state from when this node holds none (a joiner, or a node whose state
    // was damaged): the join addresses, then the members it knew last time.
    let mut join = settings.join.clone();
    for addr in read_known_peers(&state_dir) {
        if !join.contains(&addr) {
            join.push(addr);
        }
    }
    let needs_state = doc.meta()?.is_none();
    if needs_state && join.is_empty() {
        return Err(AgentError::Config(format!(
            "this node holds no cluster state ({}) and knows no member to fetch it from: start it with --join ADDR (any live member's p2p address) to resync it from its peers, or restore a backup (shoal init --restore) if no member is left",
            damaged.as_deref().unwrap_or("no state file in the state dir")
        )));
    }
    if let Some(d) = &damaged {
        tracing::warn!(node = %settings.name, "{d}; resyncing from a member (name and key kept)");
    }
    let resync = needs_state.then(|| Resync {
        reason: damaged.unwrap_or_else(|| "first start".into()),
        unmerged: loaded.unmerged,
        from: join.clone(),
    });
    let wal = Wal::new(store.wal_path());
    let advertise = settings.advertise_ip();
    tracing::info!(node = %settings.name, %peer_id, cluster = %identity.cluster_id, generation = identity.generation, %advertise, "agent starting");

    let mut status = load_status_docs(&state_dir);
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
    net_config.join = join;
    net_config.restart_hold = opts.restart_hold;
    let planned = net_config.planned.clone();
    // The tasks the node cannot serve without: if one ends or panics before shutdown, the
    // agent stops (exit non-zero, with the reason) instead of serving a frozen replica.
    let (failed_tx, mut failed_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let net_task = spawn_network(
        key,
        shared.clone(),
        net_config,
        state_dir.clone(),
        local_rx,
        stopped(stop_rx.clone()),
    )?;
    let net_task = supervise("the network actor", net_task, &failed_tx, &stop_rx);

    let puller = match crate::runtime::image::ImageStore::open(&dir.root().join("images")) {
        Ok(store) => {
            let peers = images::ClusterPeers::new(shared.clone(), dir.root().to_path_buf());
            let mut config = crate::runtime::image::pull::PullConfig::with_env_proxies(
                settings.insecure_registries.clone(),
            );
            config.certs_dirs = settings.registry_certs_dirs.clone();
            config.mirrors = settings.registry_mirrors.clone();
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
        let task = tokio::spawn(images::run(
            shared.clone(),
            puller,
            dir.root().to_path_buf(),
            images::GcConfig::from_env(),
            stopped(stop_rx.clone()),
        ));
        supervise("the image store", task, &failed_tx, &stop_rx)
    });

    // CPU and memory samples of this node's pods and host, for `metrics.k8s.io`.
    let usage_store = Arc::new(usage::UsageStore::default());
    let api_task = {
        let shared = shared.clone();
        let dir = dir.clone();
        let settings = settings.clone();
        let stop = stopped(stop_rx.clone());
        let puller = puller.clone();
        let state_dir = state_dir.clone();
        let usage = usage_store.clone();
        tokio::spawn(async move {
            let start = ApiStart {
                dir,
                state_dir,
                settings,
                peer_id,
                puller,
                resync,
                usage,
            };
            serve_api(shared, start, stop).await
        })
    };
    let api_task = supervise("the API server", api_task, &failed_tx, &stop_rx);

    let metrics_task = match opts.metrics_addr {
        Some(addr) => Some(supervise(
            "the metrics listener",
            tokio::spawn(metrics::serve_plain(
                shared.clone(),
                metrics::bind(addr).await?,
                stopped(stop_rx.clone()),
            )),
            &failed_tx,
            &stop_rx,
        )),
        None => None,
    };
    // The kubelet's cgroup parent (the same rule as its runtime config).
    let cgroup_parent =
        crate::runtime::RuntimeConfig::from_env(dir.root(), &settings.name, false).cgroup_parent;
    let usage_task = supervise(
        "the usage sampler",
        tokio::spawn(usage::run(
            shared.clone(),
            usage_store.clone(),
            cgroup_parent,
            stopped(stop_rx.clone()),
        )),
        &failed_tx,
        &stop_rx,
    );
    let controllers_task = supervise(
        "the controllers",
        tokio::spawn(controllers::run(shared.clone(), stopped(stop_rx.clone()))),
        &failed_tx,
        &stop_rx,
    );
    let ipam_task = supervise(
        "the pod CIDR allocator",
        tokio::spawn(ipam::run(shared.clone(), stopped(stop_rx.clone()))),
        &failed_tx,
        &stop_rx,
    );
    // Re-allocates Services that lost an address to a concurrent allocation (leader only).
    let services_task = supervise(
        "the Service address allocator",
        tokio::spawn(services::run(shared.clone(), stopped(stop_rx.clone()))),
        &failed_tx,
        &stop_rx,
    );
    // The pod network: the node's bridge, sysctls and routes to the other nodes' pods.
    let pod_network = routes::pod_network_enabled(advertise);
    let routes_task = pod_network.then(|| {
        supervise(
            "the pod routes",
            tokio::spawn(routes::run(shared.clone(), stopped(stop_rx.clone()))),
            &failed_tx,
            &stop_rx,
        )
    });
    if !pod_network {
        tracing::warn!(%advertise, "pod network off (loopback address or SHOAL_POD_NETWORK=off): pods get no IP of their own");
    }
    // Service load balancing (nftables) comes with the pod network: agents sharing one host's
    // network namespace (loopback tests) must not fight over one table.
    // It also keeps pods off the agent's own ports (p2p, API, metrics).
    let mut agent_ports = vec![
        (crate::proxy::Protocol::Udp, settings.listen_p2p.port()),
        (crate::proxy::Protocol::Tcp, settings.listen_api.port()),
    ];
    if let Some(metrics) = opts.metrics_addr {
        agent_ports.push((crate::proxy::Protocol::Tcp, metrics.port()));
    }
    let proxy_task = pod_network.then(|| {
        supervise(
            "the Service proxy",
            tokio::spawn(proxy::run(
                shared.clone(),
                agent_ports,
                stopped(stop_rx.clone()),
            )),
            &failed_tx,
            &stop_rx,
        )
    });
    // The node's DNS server listens at the pod gateway, so it too comes with the pod network.
    let dns_task = pod_network.then(|| {
        supervise(
            "the DNS server",
            tokio::spawn(dns::run(
                shared.clone(),
                dns::upstreams(&settings.dns_upstreams),
                stopped(stop_rx.clone()),
            )),
            &failed_tx,
            &stop_rx,
        )
    });

    let runtime = crate::runtime::RuntimeConfig {
        host_path_prefixes: settings.allowed_host_paths.clone(),
        ..crate::runtime::RuntimeConfig::from_env(dir.root(), &settings.name, pod_network)
            .with_pod_pids_limit(settings.pod_pids_limit)
            .with_deny_privileged(settings.deny_privileged)
    };
    // The runtime's version, once: a warning naming the escapes an old runc leaves open.
    let runtime_binary = runtime.runtime_binary.clone();
    tokio::task::spawn_blocking(move || warn_about_runc(&runtime_binary));
    let kubelet_task = tokio::spawn(crate::kubelet::run(
        shared.clone(),
        crate::kubelet::KubeletConfig {
            runtime,
            node_ip: advertise.to_string(),
            puller,
            local_path_root: local_path_root(&settings, dir.root())?,
        },
        stopped(stop_rx.clone()),
    ));
    let kubelet_task = supervise("the kubelet", kubelet_task, &failed_tx, &stop_rx);
    drop(failed_tx);

    tokio::pin!(shutdown);
    let failure = tokio::select! {
        _ = &mut shutdown => None,
        Some(reason) = failed_rx.recv() => Some(reason),
    };
    if failure.is_none() {
        planned.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    match &failure {
        None => tracing::info!("shutting down"),
        Some(reason) => tracing::error!(%reason, "stopping the agent"),
    }
    let _ = stop_tx.send(true);
    let _ = kubelet_task.await;
    if let Some(t) = images_task {
        let _ = t.await;
    }
    let _ = controllers_task.await;
    let _ = usage_task.await;
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
    let api = api_task.await.ok().flatten();
    let net = net_task.await.ok().flatten();
    if let Some(Err(e)) = api {
        return Err(e);
    }
    if let Some(reason) = failure {
        return Err(AgentError::Other(reason));
    }
    if let Some(Err(e)) = net {
        return Err(e.into());
    }
    Ok(())
}

/// Runs `round` now, then again after document changes (at most once per `min_interval`) and at
/// least every `tick`, until `stop` resolves or the change channel closes.
pub async fn rounds<F, Fut>(
    shared: &Shared,
    stop: impl std::future::Future<Output = ()>,
    min_interval: std::time::Duration,
    tick: std::time::Duration,
    mut round: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    tokio::pin!(stop);
    let mut changes = shared.subscribe();
    loop {
        let started = tokio::time::Instant::now();
        changes.borrow_and_update();
        round().await;
        tokio::select! {
            _ = &mut stop => return,
            r = changes.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(tick) => {}
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep_until(started + min_interval) => {}
        }
    }
}

/// What a supervised task's result says when it ended before shutdown.
trait TaskEnd {
    fn describe(&self) -> String;
}

impl TaskEnd for () {
    fn describe(&self) -> String {
        "ended unexpectedly".into()
    }
}

impl<E: std::fmt::Display> TaskEnd for Result<(), E> {
    fn describe(&self) -> String {
        match self {
            Ok(()) => "ended unexpectedly".into(),
            Err(e) => format!("failed: {e}"),
        }
    }
}

/// Watches `task`: if it ends (returns or panics) while `stopping` is still false, sends why
/// on `failed`. Resolves to the task's output (`None` if it panicked).
fn supervise<T: TaskEnd + Send + 'static>(
    name: &'static str,
    task: tokio::task::JoinHandle<T>,
    failed: &tokio::sync::mpsc::UnboundedSender<String>,
    stopping: &tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Option<T>> {
    let failed = failed.clone();
    let stopping = stopping.clone();
    tokio::spawn(async move {
        let result = task.await;
        let out = match result {
            Ok(out) => {
                if !*stopping.borrow() {
                    let _ = failed.send(format!("{name} {}", out.describe()));
                }
                Some(out)
            }
            Err(e) => {
                let why = if e.is_panic() {
                    let panic = e.into_panic();
                    panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".into())
                } else {
                    e.to_string()
                };
                let _ = failed.send(format!("{name} panicked: {why}"));
                None
            }
        };
        out
    })
}

/// A node that starts without the cluster state: why, where from, and its own logged writes
/// that sat on top of a damaged snapshot (applied again once the state is back).
struct Resync {
    reason: String,
    unmerged: Vec<Vec<u8>>,
    from: Vec<SocketAddr>,
}

/// How long a node without state waits for a member before it gives up (exit, non-zero).
fn resync_deadline() -> Duration {
    Duration::from_secs(
        std::env::var("SHOAL_RESYNC_TIMEOUT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(120),
    )
}

/// The file of members' p2p addresses this node knew last, to find a peer after losing its
/// state: a damaged state file takes the node records with it.
const KNOWN_PEERS: &str = "known-peers.json";

fn read_known_peers(state_dir: &Path) -> Vec<SocketAddr> {
    std::fs::read(state_dir.join(KNOWN_PEERS))
        .ok()
        .and_then(|b| serde_json::from_slice::<Vec<SocketAddr>>(&b).ok())
        .unwrap_or_default()
}

/// The p2p socket addresses of the other nodes in the document.
fn peer_addrs(shared: &Shared) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = shared
        .read(|d| d.nodes())
        .into_iter()
        .filter(|n| n.name != shared.node_name)
        .filter_map(|n| net::socket_addr(&n.p2p_addr))
        .collect();
    out.sort();
    out.dedup();
    out.truncate(64);
    out
}

/// Writes [`KNOWN_PEERS`] when the set of other nodes' addresses changed.
fn remember_peers(shared: &Shared, state_dir: &Path, last: &mut Vec<SocketAddr>) {
    let now = peer_addrs(shared);
    if now.is_empty() || now == *last {
        return;
    }
    let bytes = serde_json::to_vec(&now).unwrap_or_default();
    match crate::state::write_atomic(&state_dir.join(KNOWN_PEERS), &bytes, 0o600) {
        Ok(()) => *last = now,
        Err(e) => tracing::warn!(%e, "saving the known members' addresses failed"),
    }
}

/// Runs the network actor on a thread of its own, with its own single-threaded runtime at a
/// higher priority than the rest of the agent: a probe's ack must not wait behind the API,
/// the controllers or the kubelet (a starved agent is declared dead and its pods move, which
/// loads the next node: the storm of issue 13). Returns the actor's result when it ends.
fn spawn_network(
    key: libp2p::identity::Keypair,
    shared: Arc<Shared>,
    config: NetConfig,
    data_dir: std::path::PathBuf,
    local_rx: tokio::sync::mpsc::Receiver<crate::state::LocalChange>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<tokio::task::JoinHandle<Result<(), net::NetError>>, AgentError> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("shoal-net".into())
        .spawn(move || {
            crate::runtime::set_niceness(crate::runtime::NETWORK_NICE);
            let result = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(net::run(key, shared, config, data_dir, local_rx, shutdown)),
                Err(e) => Err(net::NetError::Thread(e.to_string())),
            };
            let _ = done_tx.send(result);
        })
        .map_err(|e| AgentError::Other(format!("starting the network thread: {e}")))?;
    // A panic on that thread drops the sender: reported like any other end of the actor.
    Ok(tokio::spawn(async move {
        done_rx
            .await
            .unwrap_or_else(|_| Err(net::NetError::Thread("the network thread panicked".into())))
    }))
}

/// What the API task needs besides the shared state.
struct ApiStart {
    dir: DataDir,
    state_dir: PathBuf,
    settings: AgentSettings,
    peer_id: libp2p::PeerId,
    puller: Option<Arc<crate::runtime::image::pull::Puller>>,
    resync: Option<Resync>,
    usage: Arc<usage::UsageStore>,
}

/// Waits for the cluster metadata (a joiner or a resyncing node gets it from a member, and
/// gives up after [`resync_deadline`]), registers this node, issues the API certificate from
/// the cluster CA, and serves the API.
async fn serve_api(
    shared: Arc<Shared>,
    start: ApiStart,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let ApiStart {
        dir,
        state_dir,
        settings,
        peer_id,
        puller,
        resync,
        usage,
    } = start;
    let mut changes = shared.subscribe();
    let mut waiting_since = tokio::time::Instant::now();
    let deadline = resync_deadline();
    // The agent stopping (another task failed: the network actor could not listen, say) ends
    // the wait at once instead of after the deadline.
    let stop = futures::FutureExt::shared(Box::pin(stop));
    let meta = loop {
        if let Some(meta) = shared.read(|d| d.meta())? {
            break meta;
        }
        // A chunked state transfer on its way: the deadline counts from its last progress.
        let receiving: Vec<(String, crate::metrics::Transfer)> = shared
            .metrics
            .transfers()
            .into_iter()
            .filter(|(_, t)| !t.sending)
            .collect();
        if let Some((from, t)) = receiving.first() {
            waiting_since = tokio::time::Instant::now();
            tracing::info!(member = %from, received_mib = t.done >> 20, total_mib = t.total >> 20, "waiting for the cluster state: receiving it in chunks");
            tokio::select! {
                _ = stop.clone() => return Ok(()),
                _ = tokio::time::timeout(Duration::from_secs(5), changes.changed()) => {}
            }
            continue;
        }
        if waiting_since.elapsed() >= deadline {
            let r = resync.as_ref();
            return Err(AgentError::Config(format!(
                "no member sent the cluster state within {} s ({}; tried {:?}): start the agent again once a member is up, with --join ADDR of a live member if these addresses are stale",
                deadline.as_secs(),
                r.map(|r| r.reason.as_str()).unwrap_or("no state"),
                r.map(|r| r.from.clone()).unwrap_or_default(),
            )));
        }
        tracing::info!("waiting for the cluster state from a member");
        tokio::select! {
            _ = stop.clone() => return Ok(()),
            _ = tokio::time::timeout(Duration::from_secs(5), changes.changed()) => {}
        }
    };
    if let Some(r) = resync {
        tracing::info!(reason = %r.reason, objects = shared.read(|d| d.len()), "received the cluster state from a member");
        if !r.unmerged.is_empty() {
            // This node's own logged writes from before the damage; their history came with
            // the state. Logged again and pushed like any local write.
            match shared.write(|d| d.apply_pushed(&r.unmerged)) {
                Ok(moved) => tracing::info!(
                    changes = r.unmerged.len(),
                    moved,
                    "applied this node's logged writes again after the resync"
                ),
                Err(e) => {
                    tracing::error!(%e, "applying this node's logged writes after the resync failed (they stay in the set-aside log)")
                }
            }
        }
    }
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
    let p2p_addr = net::p2p_addr(
        SocketAddr::new(advertise, settings.listen_p2p.port()),
        peer_id,
    )
    .to_string();
    let peer_id = peer_id.to_string();
    let peer_id_for_status = peer_id.clone();
    let local_path_root = local_path_root(&settings, dir.root())?;
    let register = {
        let shared = shared.clone();
        let name = settings.name.clone();
        let local_path_root = local_path_root.clone();
        move || {
            let existing = shared.read(|d| d.node(&name)).ok().flatten();
            let mut record = node_info::record(
                &name,
                &peer_id,
                &p2p_addr,
                &api_addr.to_string(),
                advertise,
                existing.as_ref(),
            );
            node_info::with_local_path(&mut record, &local_path_root);
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
    let backend: Arc<dyn crate::api::Backend> = Arc::new(
        AgentBackend::new(shared.clone(), dir.root().to_path_buf(), puller).with_usage(usage),
    );

    // Re-register if someone deleted this node's record while it is alive; remember the
    // members' addresses for a resync.
    let registrar = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            let mut known = read_known_peers(&state_dir);
            loop {
                tick.tick().await;
                register();
                remember_peers(&shared, &state_dir, &mut known);
            }
        })
    };
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

/// Runs `<runtime> --version` and logs a warning naming the container-escape CVEs its version
/// leaves open (`runtime::runc_version`); a runtime that is not runc, or does not run, is
/// logged and not checked.
fn warn_about_runc(binary: &std::path::Path) {
    let output = match std::process::Command::new(binary).arg("--version").output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => {
            tracing::warn!(runtime = %binary.display(), status = %o.status, "the container runtime's --version failed; its version is not checked");
            return;
        }
        Err(e) => {
            tracing::warn!(runtime = %binary.display(), %e, "the container runtime did not run; its version is not checked");
            return;
        }
    };
    let Some(version) = crate::runtime::runc_version::parse(&output) else {
        tracing::info!(runtime = %binary.display(), "the container runtime is not runc; its version is not checked");
        return;
    };
    match crate::runtime::runc_version::warning(&version) {
        Some(warning) => tracing::warn!(runtime = %binary.display(), "{warning}"),
        None => {
            tracing::info!(runtime = %binary.display(), version = %version.text, "runc version checked")
        }
    }
}
