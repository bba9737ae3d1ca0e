//! The `shoal` command line: `init`, `agent`, `status`, `backup` (and `--version`).

mod client;
mod image;
mod kubeconfig;
mod status;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::agent::{self, AgentError, AgentSettings, InitOptions, RunOptions};
use crate::security::JoinToken;

/// Exit code for bad configuration or usage (sysexits' EX_USAGE).
pub const EXIT_CONFIG: i32 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "shoal",
    version,
    about = "shoal: a masterless container orchestrator"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log line format on stderr: `text` for people, `json` (one object per line, with the
    /// span fields) for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SHOAL_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log levels, overall and per module, in `RUST_LOG` syntax (which it overrides), e.g.
    /// `info,shoal::net=debug,shoal::kubelet=warn`.
    #[arg(long, global = true, value_name = "DIRECTIVES", env = "SHOAL_LOG")]
    pub log: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The default levels: info, with the chatty networking crates at warn.
pub const DEFAULT_LOG: &str = "info,libp2p=warn,quinn=warn";

/// Sets up logging on stderr: `--log` (else `RUST_LOG`, else [`DEFAULT_LOG`]) as an
/// `EnvFilter`, lines formatted as `--log-format` says. Bad directives exit with a message.
pub fn init_logging(cli: &Cli) {
    let directives = cli
        .log
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| DEFAULT_LOG.to_string());
    let filter = match tracing_subscriber::EnvFilter::builder().parse(&directives) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: log levels {directives:?}: {e} (example: info,shoal::net=debug)");
            std::process::exit(EXIT_CONFIG);
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct ClientArgs {
    /// Path to the kubeconfig (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new cluster in a data dir (then run `shoal agent --data-dir` on it).
    Init {
        #[arg(long)]
        data_dir: PathBuf,
        /// This node's name (DNS-1123); defaults to the host name.
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value = "0.0.0.0:7946")]
        listen_p2p: SocketAddr,
        #[arg(long, default_value = "0.0.0.0:6443")]
        listen_api: SocketAddr,
        #[arg(long)]
        advertise: Option<IpAddr>,
        /// Seed the new cluster from a backup file; starts a new cluster generation.
        #[arg(long)]
        restore: Option<PathBuf>,
        /// With --restore: the backed-up cluster's join token.
        #[arg(long, env = "SHOAL_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// IPv4 pod address space, carved into one subnet per node [default: 10.244.0.0/16,
        /// or with --restore the backed-up cluster's]. Fixed for the cluster's life.
        #[arg(long)]
        cluster_cidr: Option<String>,
        /// Prefix length of each node's pod subnet, from the cluster CIDR's + 1 to 28
        /// [default: 24, or with --restore the backed-up cluster's].
        #[arg(long)]
        node_cidr_mask: Option<u8>,
        /// IPv4 Service address space ClusterIPs come from, /12 to /29, not overlapping the
        /// cluster CIDR [default: 10.96.0.0/12, or with --restore the backed-up cluster's].
        /// Fixed for the cluster's life.
        #[arg(long)]
        service_cidr: Option<String>,
    },
    /// Run the agent (first start of a joiner: --name, --join and --token).
    Agent {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        name: Option<String>,
        /// A member's p2p address (IP:PORT); repeatable.
        #[arg(long)]
        join: Vec<SocketAddr>,
        #[arg(long, env = "SHOAL_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[arg(long)]
        listen_p2p: Option<SocketAddr>,
        #[arg(long)]
        listen_api: Option<SocketAddr>,
        #[arg(long)]
        advertise: Option<IpAddr>,
        /// A registry (HOST or HOST:PORT) that may be pulled from over plain HTTP; repeatable
        /// (the env var takes a comma-separated list). Saved with the other settings.
        #[arg(
            long = "insecure-registry",
            value_name = "HOST[:PORT]",
            env = "SHOAL_INSECURE_REGISTRIES",
            value_delimiter = ',',
            value_parser = AgentSettings::parse_registry_host
        )]
        insecure_registry: Vec<String>,
        /// A certs directory in Docker's certs.d layout (DIR/HOST[:PORT]/ca.crt, client.cert,
        /// client.key); repeatable, the first holding a registry's directory wins. Default
        /// /etc/shoal/certs.d on first start; e.g. also /etc/docker/certs.d. Saved.
        #[arg(
            long = "registry-certs-dir",
            value_name = "DIR",
            env = "SHOAL_REGISTRY_CERTS_DIRS",
            value_delimiter = ','
        )]
        registry_certs_dir: Vec<std::path::PathBuf>,
        /// A mirror tried before a registry: REGISTRY=URL, e.g.
        /// docker.io=https://mirror.local:5000; repeatable (in order, per registry). The
        /// registry itself is the fallback. Saved.
        #[arg(
            long = "registry-mirror",
            value_name = "REGISTRY=URL",
            env = "SHOAL_REGISTRY_MIRRORS",
            value_delimiter = ',',
            value_parser = crate::agent::parse_registry_mirror
        )]
        registry_mirror: Vec<(String, String)>,
        /// Where the node's DNS server forwards names outside cluster.local: IP[:PORT]
        /// (repeatable, tried in order), `none` (answer NXDOMAIN at once) or `default` (the
        /// host's non-loopback /etc/resolv.conf nameservers, the initial setting). Saved.
        #[arg(
            long = "dns-upstream",
            value_name = "IP[:PORT]|none|default",
            env = "SHOAL_DNS_UPSTREAMS",
            value_delimiter = ',',
            value_parser = crate::agent::DnsUpstream::parse
        )]
        dns_upstream: Vec<crate::agent::DnsUpstream>,
        /// Most processes (threads count) one container may run, like the kubelet's
        /// podPidsLimit; 0 or less: unlimited. Default 4096 on first start. Saved.
        #[arg(
            long = "pod-pids-limit",
            value_name = "N",
            env = "SHOAL_POD_PIDS_LIMIT"
        )]
        pod_pids_limit: Option<i64>,
        /// A host path prefix hostPath volumes may use (repeatable; the env var takes a
        /// comma-separated list). Default: none, as any pod could otherwise read the host's
        /// files (the cluster secret included). Saved with the other settings.
        #[arg(
            long = "allow-host-path",
            value_name = "PREFIX",
            env = "SHOAL_ALLOW_HOST_PATHS",
            value_delimiter = ','
        )]
        allow_host_path: Vec<PathBuf>,
        /// Where this node keeps the directories of its local-path PersistentVolumes
        /// (default: `<data dir>/local-path`). Its file system's size is the node's
        /// local-path capacity. Saved with the other settings.
        #[arg(long, value_name = "DIR", env = "SHOAL_LOCAL_PATH_DIR")]
        local_path_dir: Option<PathBuf>,
        /// Also serve `GET /metrics` in plain HTTP (no TLS, no token) on this address, for a
        /// Prometheus on the host or a trusted network. The API serves it at `/metrics` too.
        #[arg(long, value_name = "IP:PORT", env = "SHOAL_METRICS_ADDR")]
        metrics_addr: Option<SocketAddr>,
        /// Refuse to run privileged containers on this node, whatever the API admitted
        /// (they wait with CreateContainerConfigError). `--deny-privileged=false` allows
        /// them again. Saved.
        #[arg(
            long = "deny-privileged",
            value_name = "BOOL",
            env = "SHOAL_DENY_PRIVILEGED",
            num_args = 0..=1,
            default_missing_value = "true"
        )]
        deny_privileged: Option<bool>,
        /// Where the replicated state lives (state.automerge, state.wal, status/), e.g. its own
        /// file system, so that container layers or volumes filling the data dir's cannot stop
        /// the node from accepting writes. An absolute path; saved. On a change the files move
        /// there. Default: the data dir.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// On SIGTERM or SIGINT, announce a planned restart (an upgrade): peers hold this
        /// node's pods (no failover) for up to this many seconds while it is away, 0 to 300.
        /// 0: leave at once, and the pods fail over as for a dead node. Not saved.
        #[arg(
            long = "restart-hold",
            value_name = "SECONDS",
            env = "SHOAL_RESTART_HOLD",
            default_value_t = crate::sched::liveness::DEFAULT_RESTART_HOLD.as_secs(),
            value_parser = clap::value_parser!(u64).range(0..=crate::sched::liveness::MAX_RESTART_HOLD.as_secs())
        )]
        restart_hold: u64,
    },
    /// Print the serving agent's view: members and their states, leader, epoch, document
    /// sizes, replication lag per peer (`-o json`: the status document as JSON).
    Status {
        #[command(flatten)]
        client: ClientArgs,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t = StatusFormat::Table)]
        output: StatusFormat,
    },
    /// The image store of the node the context points at (`ls`, `pull`, `import`, `rm`).
    Image {
        #[command(subcommand)]
        command: image::ImageCommand,
    },
    /// (internal) Monitor of one container attempt, started by the kubelet.
    #[command(hide = true)]
    Shim {
        #[arg(long)]
        attempt: PathBuf,
    },
    /// (internal) A pod's namespace holder, started by the kubelet.
    #[command(hide = true)]
    Sandbox {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        hostname: String,
        /// Stay in the node's network and UTS namespaces (`hostNetwork: true`).
        #[arg(long)]
        host_network: bool,
    },
    /// Write a snapshot of the cluster state, taken from the node the context points at.
    Backup {
        #[arg(long, short)]
        output: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove what the agent programmed into this host's network: `cleanup` deletes nftables
    /// table `ip shoal` (Service load balancing and masquerading). Run it after stopping the
    /// agent for good; a running agent re-creates the table within a minute.
    Network {
        #[command(subcommand)]
        command: NetworkCommand,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusFormat {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum NetworkCommand {
    /// Delete nftables table `ip shoal` (needs root and `nft`).
    Cleanup,
}

/// Runs the CLI; returns the process exit code.
pub fn main(cli: Cli) -> i32 {
    match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            let config_error = e
                .downcast_ref::<AgentError>()
                .is_some_and(|a| matches!(a, AgentError::Config(_) | AgentError::DataDir(_)))
                || e.downcast_ref::<crate::security::SecurityError>().is_some();
            eprintln!("error: {e:#}");
            if config_error {
                EXIT_CONFIG
            } else {
                1
            }
        }
    }
}

fn parse_token(token: Option<String>) -> anyhow::Result<Option<JoinToken>> {
    token
        .map(|t| t.parse::<JoinToken>().map_err(anyhow::Error::from))
        .transpose()
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init {
            data_dir,
            name,
            listen_p2p,
            listen_api,
            advertise,
            restore,
            token,
            cluster_cidr,
            node_cidr_mask,
            service_cidr,
        } => {
            let settings = AgentSettings {
                name: name.unwrap_or_else(crate::agent::node_info::hostname),
                listen_p2p,
                listen_api,
                advertise,
                join: Vec::new(),
                insecure_registries: Vec::new(),
                registry_certs_dirs: vec![crate::agent::DEFAULT_REGISTRY_CERTS_DIR.into()],
                registry_mirrors: Default::default(),
                dns_upstreams: None,
                pod_pids_limit: crate::runtime::DEFAULT_POD_PIDS_LIMIT,
                allowed_host_paths: Vec::new(),
                state_dir: None,
                deny_privileged: false,
                local_path_dir: None,
            };
            let token = parse_token(token)?;
            let out = agent::init_cluster(&InitOptions {
                data_dir: data_dir.clone(),
                settings: settings.clone(),
                restore,
                token,
                cluster_cidr,
                node_cidr_mask,
                service_cidr,
            })?;
            let server = format!(
                "https://{}",
                SocketAddr::new(settings.advertise_ip(), listen_api.port())
            );
            let ca = std::fs::read(data_dir.join("tls/ca.crt"))?;
            let kc = kubeconfig::admin_kubeconfig(
                &[(settings.name.clone(), server)],
                &ca,
                &out.admin_token,
            );
            crate::state::write_atomic(&data_dir.join("admin.kubeconfig"), kc.as_bytes(), 0o600)?;
            eprintln!(
                "cluster created in {} (node {}).",
                data_dir.display(),
                settings.name
            );
            eprintln!("start it:   shoal agent --data-dir {}", data_dir.display());
            eprintln!(
                "kubectl:    export KUBECONFIG={}",
                data_dir.join("admin.kubeconfig").display()
            );
            eprintln!("join hosts: shoal agent --data-dir DIR --name NAME --join <this host>:{} --token <the token below>", listen_p2p.port());
            println!("{}", out.join_token);
            Ok(())
        }
        Command::Agent {
            data_dir,
            name,
            join,
            token,
            listen_p2p,
            listen_api,
            advertise,
            insecure_registry,
            registry_certs_dir,
            registry_mirror,
            dns_upstream,
            pod_pids_limit,
            allow_host_path,
            local_path_dir,
            metrics_addr,
            deny_privileged,
            state_dir,
            restart_hold,
        } => {
            let opts = RunOptions {
                data_dir,
                name,
                join,
                token: parse_token(token)?,
                listen_p2p,
                listen_api,
                advertise,
                insecure_registries: insecure_registry,
                registry_certs_dirs: registry_certs_dir,
                registry_mirrors: registry_mirror,
                dns_upstreams: dns_upstream,
                pod_pids_limit,
                allowed_host_paths: allow_host_path,
                local_path_dir,
                metrics_addr,
                deny_privileged,
                state_dir,
                restart_hold: std::time::Duration::from_secs(restart_hold),
            };
            // Before any thread exists, so every runtime thread inherits it; the shim and the
            // sandbox go back to 0, so containers run at the default priority.
            crate::runtime::set_niceness(crate::runtime::AGENT_NICE);
            // The session's scheduling group too (it is what counts where autogroup is on).
            crate::runtime::set_autogroup_nice(crate::runtime::NETWORK_NICE);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(agent::run(opts, shutdown_signal()))?;
            Ok(())
        }
        Command::Status { client, output } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let body = rt.block_on(client::get(&client, "/shoal/v1/status"))?;
            if output == StatusFormat::Json {
                let value: serde_json::Value =
                    serde_json::from_slice(&body).context("status is not JSON")?;
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                let status: crate::api::AgentStatus =
                    serde_json::from_slice(&body).context("reading the agent's status")?;
                print!("{}", status::render(&status));
            }
            Ok(())
        }
        Command::Image { command } => image::run(command),
        Command::Shim { attempt } => std::process::exit(crate::runtime::shim::main(&attempt)),
        Command::Sandbox {
            dir,
            hostname,
            host_network,
        } => std::process::exit(crate::runtime::sandbox::main(&dir, &hostname, host_network)),
        Command::Network {
            command: NetworkCommand::Cleanup,
        } => {
            let deleted = agent::proxy::Nft::default().delete_table()?;
            let table = crate::proxy::TABLE;
            if deleted {
                eprintln!("deleted nftables table ip {table}");
            } else {
                eprintln!("no nftables table ip {table}: nothing to do");
            }
            Ok(())
        }
        Command::Backup { output, client } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let body = rt.block_on(client::get(&client, "/shoal/v1/backup"))?;
            crate::state::write_atomic(&output, &body, 0o600)
                .with_context(|| format!("writing {}", output.display()))?;
            eprintln!(
                "backup written to {} ({} bytes)",
                output.display(),
                body.len()
            );
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        }
        _ => std::future::pending().await,
    }
}
