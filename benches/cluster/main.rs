//! Cluster benchmarks: change propagation, failure detection after kill -9 (and Serf's, for
//! comparison), false deaths at idle, the idle cost of an agent, and workloads on the testnet
//! (pod start beside bare runc, failover of a Deployment, a burst of pods). Each subcommand starts its
//! own loopback agents (or uses an up netns testnet), prints a markdown section with the figures
//! on stdout and a `RESULT ...` line per figure that `benches/run.sh` collects. Nothing here
//! asserts on time: it measures and reports.
//!
//! Run through `benches/run.sh [quick|full]` (`just bench`); by hand:
//! `target/release/deps/cluster-* --bin target/release/shoal --work /tmp/b propagation --agents 50`.

mod api;
mod batch;
mod cluster;
mod failure;
mod flood;
mod idle;
mod kube;
mod lo;
mod probes;
mod propagation;
mod rollout;
mod runc;
mod serf;
mod stats;
mod testnet;
mod workloads;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::cluster::Cluster;

#[derive(Parser)]
#[command(about = "shoal cluster benchmarks (see benches/run.sh)")]
struct Cli {
    /// The shoal binary the agents run (a private copy, so concurrent builds cannot swap it).
    #[arg(long, default_value = "target/release/shoal")]
    bin: PathBuf,
    /// Scratch directory for data dirs, logs and the pid file.
    #[arg(long, default_value = "/tmp/shoal-bench")]
    work: PathBuf,
    #[command(subcommand)]
    what: What,
}

#[derive(Args, Clone)]
struct Where {
    /// Number of loopback agents to start (ignored with --testnet).
    #[arg(long, default_value_t = 5)]
    agents: usize,
    /// Use the netns testnet already up under this `testnet/` directory instead of loopback.
    #[arg(long)]
    testnet: Option<PathBuf>,
    /// Number of testnet nodes (with --testnet).
    #[arg(long, default_value_t = 5)]
    nodes: usize,
}

#[derive(Subcommand)]
enum What {
    /// POST configmaps round-robin over the nodes; time the ADDED event on every node's watch.
    Propagation {
        #[command(flatten)]
        at: Where,
        #[arg(long, default_value_t = 200)]
        writes: usize,
        /// Writes per second (open loop).
        #[arg(long, default_value_t = 5.0)]
        rate: f64,
    },
    /// kill -9 a node, time until every survivor reports it dead; restart; repeat.
    Detection {
        #[command(flatten)]
        at: Where,
        #[arg(long, default_value_t = 10)]
        kills: usize,
    },
    /// Count suspicions and deaths in an idle cluster where nobody is killed.
    FalseDeaths {
        #[command(flatten)]
        at: Where,
        #[arg(long, default_value_t = 600)]
        secs: u64,
    },
    /// RSS, CPU and bytes/s per node, idle and at --rate writes/s.
    Idle {
        #[command(flatten)]
        at: Where,
        #[arg(long, default_value_t = 60)]
        secs: u64,
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
    },
    /// Authenticated requests/s on node 0 with no flood, then while --idle unauthenticated TLS
    /// connections are held open from many loopback addresses.
    ApiFlood {
        #[command(flatten)]
        at: Where,
        #[arg(long, default_value_t = 1000)]
        idle: usize,
        #[arg(long, default_value_t = 4)]
        clients: usize,
        #[arg(long, default_value_t = 10)]
        secs: u64,
    },
    /// The detection procedure against Serf agents on loopback.
    Serf {
        #[arg(long, default_value_t = 5)]
        agents: usize,
        #[arg(long, default_value_t = 10)]
        kills: usize,
        #[arg(long, default_value = "serf")]
        serf_bin: PathBuf,
    },
    /// Bare pods one after another: POST → Running on a watch, beside bare `runc run --detach`.
    PodStart {
        #[command(flatten)]
        on: OnTestnet,
        #[arg(long, default_value_t = 50)]
        pods: usize,
        /// Pods (and runc runs) before the measured ones, not counted.
        #[arg(long, default_value_t = 2)]
        warmup: usize,
    },
    /// Only the bare-runc baseline of pod-start (no cluster needed).
    RuncStart {
        #[arg(long, default_value_t = 50)]
        runs: usize,
    },
    /// A Deployment; kill a node running replicas, time until all run elsewhere; restart; repeat.
    Failover {
        #[command(flatten)]
        on: OnTestnet,
        #[arg(long, default_value_t = 6)]
        replicas: usize,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// CPU of n1's agent with --pods httpd pods: no probes, 1 s httpGet, 1 s exec + httpGet.
    Probes {
        #[command(flatten)]
        on: OnTestnet,
        #[arg(long, default_value_t = 100)]
        pods: usize,
        /// Seconds per measuring window.
        #[arg(long, default_value_t = 20)]
        secs: u64,
        #[arg(long, default_value_t = 3)]
        windows: usize,
    },
    /// Rolling updates of a Deployment: `rollout status` wall time and least ready count.
    Rollout {
        #[command(flatten)]
        on: OnTestnet,
        #[arg(long, default_value_t = 30)]
        replicas: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// A Deployment of --pods replicas from POST to all Running, then delete to no container;
    /// beside it, as many bare `runc run --detach` containers started 8 at a time.
    Burst {
        #[command(flatten)]
        on: OnTestnet,
        #[arg(long, default_value_t = 300)]
        pods: usize,
        /// Give up waiting (for Running, then for deletion) after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// A Job of --completions trivial pods beside as many bare pods, from POST to all Succeeded.
    Jobs {
        #[command(flatten)]
        on: OnTestnet,
        #[arg(long, default_value_t = 500)]
        completions: usize,
        /// Pods of the Job at a time (default: all of them, like the bare pods).
        #[arg(long)]
        parallelism: Option<usize>,
        #[arg(long, default_value_t = 1)]
        rounds: usize,
    },
    /// A DaemonSet on every node: `rollout status` wall time after each template change.
    Daemonset {
        #[command(flatten)]
        on: OnTestnet,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// dd write and read in a pod on a local-path claim beside the host directory behind it.
    VolumeIo {
        #[command(flatten)]
        on: OnTestnet,
        #[arg(long, default_value_t = 1024)]
        size_mib: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
}

/// The workload benchmarks need the netns testnet (runc roots, images, testnet scripts).
#[derive(Args, Clone)]
struct OnTestnet {
    /// The `testnet/` directory of an up testnet.
    #[arg(long, default_value = "testnet")]
    testnet: PathBuf,
    #[arg(long, default_value_t = 5)]
    nodes: usize,
}

async fn open(cli: &Cli, at: &Where, scenario: &str) -> Result<(Box<dyn Cluster>, String)> {
    Ok(match &at.testnet {
        Some(dir) => (
            Box::new(testnet::Testnet::open(dir, at.nodes)?),
            "netns testnet".to_string(),
        ),
        None => {
            let root = cli.work.join(scenario);
            (
                Box::new(lo::Loopback::start(&cli.bin, &root, "a", at.agents).await?),
                "loopback".to_string(),
            )
        }
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; this harness is driven by benches/run.sh instead.
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    if args.len() == 1 {
        eprintln!("cluster benchmarks: run `benches/run.sh quick` (or `just bench`); `--help` for the subcommands");
        return Ok(());
    }
    let cli = Cli::parse_from(args);
    let report = match &cli.what {
        What::Propagation { at, writes, rate } => {
            let (c, label) = open(&cli, at, "propagation").await?;
            propagation::run(
                c.as_ref(),
                &label,
                &propagation::Params {
                    writes: *writes,
                    rate: *rate,
                },
            )
            .await?
        }
        What::Detection { at, kills } => {
            let (mut c, label) = open(&cli, at, "detection").await?;
            failure::detection(c.as_mut(), &label, *kills).await?
        }
        What::FalseDeaths { at, secs } => {
            let (c, label) = open(&cli, at, "false-deaths").await?;
            failure::false_deaths(c.as_ref(), &label, *secs).await?
        }
        What::Idle { at, secs, rate } => {
            let (c, label) = open(&cli, at, "idle").await?;
            idle::run(c.as_ref(), &label, *secs, *rate).await?
        }
        What::ApiFlood {
            at,
            idle,
            clients,
            secs,
        } => {
            let (c, label) = open(&cli, at, "api-flood").await?;
            flood::run(
                c.as_ref(),
                &label,
                &flood::Params {
                    idle: *idle,
                    clients: *clients,
                    secs: *secs,
                },
            )
            .await?
        }
        What::Serf {
            agents,
            kills,
            serf_bin,
        } => serf::detection(serf_bin, &cli.work.join("serf"), *agents, *kills).await?,
        What::PodStart { on, pods, warmup } => {
            let kube = kube::Kube::open(&on.testnet, on.nodes)?;
            let work = cli.work.join("pod-start");
            std::fs::create_dir_all(&work)?;
            workloads::pod_start(&kube, &work, *pods, *warmup).await?
        }
        What::RuncStart { runs } => {
            let work = cli.work.join("runc-start");
            std::fs::create_dir_all(&work)?;
            workloads::runc_only(&work, *runs).await?
        }
        What::Failover {
            on,
            replicas,
            rounds,
        } => {
            workloads::failover(
                &kube::Kube::open(&on.testnet, on.nodes)?,
                *replicas,
                *rounds,
            )
            .await?
        }
        What::Probes {
            on,
            pods,
            secs,
            windows,
        } => {
            let kube = kube::Kube::open(&on.testnet, on.nodes)?;
            probes::overhead(&kube, &on.testnet, *pods, *secs, *windows).await?
        }
        What::Rollout {
            on,
            replicas,
            rounds,
        } => rollout::run(&on.testnet, on.nodes, *replicas, *rounds).await?,
        What::Burst { on, pods, timeout } => {
            let work = cli.work.join("burst");
            std::fs::create_dir_all(&work)?;
            let kube = kube::Kube::open(&on.testnet, on.nodes)?;
            workloads::burst(&kube, &work, *pods, *timeout).await?
        }
        What::Jobs {
            on,
            completions,
            parallelism,
            rounds,
        } => {
            let kube = kube::Kube::open(&on.testnet, on.nodes)?;
            let parallelism = parallelism.unwrap_or(*completions);
            batch::jobs(&kube, *completions, parallelism, *rounds, &on.testnet).await?
        }
        What::Daemonset { on, rounds } => {
            let kube = kube::Kube::open(&on.testnet, on.nodes)?;
            batch::daemonset(&kube, &on.testnet, *rounds).await?
        }
        What::VolumeIo { on, size_mib, runs } => {
            let kube = kube::Kube::open(&on.testnet, on.nodes)?;
            batch::volume_io(&kube, &on.testnet, *size_mib, *runs).await?
        }
    };
    println!("{report}");
    Ok(())
}
