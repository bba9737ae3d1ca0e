//! The proxy's shell: programs this node's Service load balancing and its pods' host ports
//! into nftables table `ip shoal` with the `nft` program. Once the node's membership view has settled and its pod
//! CIDR is known, it replaces the table once ([`crate::proxy::full`]), then after every change
//! (debounced [`DEBOUNCE`]) applies only the difference ([`crate::proxy::diff`]), falling back
//! to a full replace if a difference fails; every [`VERIFY`] it checks that the table is still
//! there (someone may have flushed the ruleset) and rebuilds it if not.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::services;
use crate::model::host_port;
use crate::model::network::BRIDGE;
use crate::model::workload::{keys, PodStatusRecord, PODS};
use crate::model::MemberState;
use crate::model::NodeRecord;
use crate::proxy::{self, Change, Desired, HostPortRule, NodeFacts, Protocol, Ruleset, TABLE};
use crate::sched::settle::Settle;
use crate::state::Shared;

/// After a change, wait this long for the rest of a burst before planning.
const DEBOUNCE: Duration = Duration::from_millis(5);
/// Longest wait for the rest of a burst, however long rounds take
/// ([`services::pause_after`]).
const MAX_PAUSE: Duration = Duration::from_millis(500);
/// A round at least this often (it costs a plan; nft runs only if something differs).
const TICK: Duration = Duration::from_secs(1);
/// How often the table's presence is checked.
const VERIFY: Duration = Duration::from_secs(60);
/// Longest an `nft` run may take.
const NFT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("running {program}: {source} (install Debian's nftables package)")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("nft {args} failed: {stderr}")]
    Failed { args: String, stderr: String },
    #[error("nft {args} took longer than {NFT_TIMEOUT:?}; killed")]
    Timeout { args: String },
}

/// The `nft` program, run as a child process.
#[derive(Clone, Debug)]
pub struct Nft {
    program: String,
    prefix: Vec<String>,
}

impl Default for Nft {
    fn default() -> Self {
        Nft {
            program: "nft".into(),
            prefix: Vec::new(),
        }
    }
}

impl Nft {
    /// `nft` inside network namespace `netns` (`ip netns exec NETNS nft`), for tests and
    /// benchmarks that program namespaces they created.
    pub fn in_netns(netns: &str) -> Self {
        Nft {
            program: "ip".into(),
            prefix: vec!["netns".into(), "exec".into(), netns.into(), "nft".into()],
        }
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String, NftError> {
        let shown = args.join(" ");
        let mut child = Command::new(&self.program)
            .args(&self.prefix)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| NftError::Spawn {
                program: self.program.clone(),
                source,
            })?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A write error shows up as nft's own failure below.
            let _ = pipe.write_all(text.as_bytes());
        }
        // Reading both pipes to the end, with a watchdog that kills a hung nft.
        let pid = child.id();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if done_rx.recv_timeout(NFT_TIMEOUT).is_err() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                return true;
            }
            false
        });
        let out = child.wait_with_output();
        let _ = done_tx.send(());
        let killed = watchdog.join().unwrap_or(false);
        let out = out.map_err(|source| NftError::Spawn {
            program: self.program.clone(),
            source,
        })?;
        if killed {
            return Err(NftError::Timeout { args: shown });
        }
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            // nft echoes the whole offending line; keep the message readable.
            let stderr: String = stderr.trim().chars().take(2000).collect();
            return Err(NftError::Failed {
                args: shown,
                stderr,
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `script` as one transaction (`nft -f -`).
    pub fn apply(&self, script: &str) -> Result<(), NftError> {
        self.run(&["-f", "-"], Some(script)).map(|_| ())
    }

    /// Whether table `ip shoal` exists with its dispatch rules in place (a flushed table or
    /// ruleset reads as false).
    pub fn table_intact(&self) -> bool {
        self.run(&["list", "chain", "ip", TABLE, "services"], None)
            .is_ok_and(|out| out.contains("@service-ips"))
    }

    /// Deletes table `ip shoal`; `Ok(false)` if there was none.
    pub fn delete_table(&self) -> Result<bool, NftError> {
        if self.run(&["list", "table", "ip", TABLE], None).is_err() {
            return Ok(false);
        }
        self.run(&["delete", "table", "ip", TABLE], None)
            .map(|_| true)
    }
}

/// This node's network facts: the cluster CIDR (metadata) and its own pod CIDR (its claim),
/// this agent's ports and every node's advertised agent endpoints; `None` until both CIDRs
/// are known.
fn node_facts(shared: &Shared, agent_ports: &[(Protocol, u16)]) -> Option<NodeFacts> {
    let (meta, pod_cidrs, nodes) = shared.read(|doc| (doc.meta(), doc.pod_cidrs(), doc.nodes()));
    let meta = meta.ok().flatten()?;
    let cluster_cidr = crate::model::network::parse_cidr(&meta.cluster_cidr)?;
    let pod_cidr = pod_cidrs
        .get(&shared.node_name)
        .and_then(|c| crate::model::network::parse_cidr(c))?;
    Some(NodeFacts {
        cluster_cidr,
        pod_cidr,
        bridge: BRIDGE.to_string(),
        agent_ports: agent_ports.to_vec(),
        agents: nodes.iter().flat_map(agent_endpoints).collect(),
    })
}

/// A node record's agent endpoints: the p2p address (`/ip4/A/udp/P/quic-v1`, UDP) and the API
/// address (`A:P`, TCP); what does not parse as IPv4 is left out.
pub fn agent_endpoints(node: &NodeRecord) -> Vec<(Ipv4Addr, Protocol, u16)> {
    let mut out = Vec::new();
    let parts: Vec<&str> = node.p2p_addr.split('/').collect();
    if let ["", "ip4", ip, "udp", port, ..] = parts.as_slice() {
        if let (Ok(ip), Ok(port)) = (ip.parse(), port.parse()) {
            out.push((ip, Protocol::Udp, port));
        }
    }
    if let Ok(api) = node.api_addr.parse::<SocketAddrV4>() {
        out.push((*api.ip(), Protocol::Tcp, api.port()));
    }
    out
}

/// The ruleset this node should have now.
pub fn desired(shared: &Shared, node: NodeFacts) -> Ruleset {
    let snapshot = services::snapshot(shared);
    let ports = proxy::service_ports(&snapshot.services, &snapshot.endpoints, &shared.node_name);
    proxy::build(&Desired {
        node,
        ports,
        host_ports: host_ports(shared),
    })
}

/// The host ports of the pods this node runs: those its own status records give an address
/// (not ended), each pod object read by name (same uid); `hostNetwork` pods listen on the node
/// itself and need no rule. Reads only this node's pods, never the whole cluster's.
fn host_ports(shared: &Shared) -> Vec<HostPortRule> {
    let me = shared.node_name.as_str();
    let records: Vec<(String, String, Arc<PodStatusRecord>)> = shared.read_status(|docs| {
        let Some(doc) = docs.get(me) else {
            return Vec::new();
        };
        doc.shared_entries::<PodStatusRecord>(keys::POD_STATUS_PREFIX)
            .into_iter()
            .filter_map(|(key, record)| {
                let (ns, name) = keys::split(&key, keys::POD_STATUS_PREFIX)?;
                Some((ns.to_string(), name.to_string(), record))
            })
            .collect()
    });
    let mut out = Vec::new();
    shared.read(|doc| {
        for (ns, name, record) in &records {
            let Some(pod_ip) = record.status["podIP"]
                .as_str()
                .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            if matches!(
                record.status["phase"].as_str(),
                Some("Succeeded" | "Failed")
            ) {
                continue;
            }
            let Ok(Some(pod)) = doc.get_object(PODS, Some(ns), name) else {
                continue;
            };
            if pod["metadata"]["uid"].as_str() != Some(record.pod_uid.as_str())
                || pod["spec"]["hostNetwork"] == serde_json::Value::Bool(true)
            {
                continue;
            }
            out.extend(
                host_port::of_spec(&pod["spec"])
                    .into_iter()
                    .map(|hp| HostPortRule {
                        protocol: hp.protocol,
                        host_ip: hp.host_ip,
                        host_port: hp.port,
                        pod_ip,
                        container_port: hp.container_port,
                    }),
            );
        }
    });
    out
}

/// The loop's state between rounds.
struct Proxy {
    shared: Arc<Shared>,
    nft: Nft,
    started: Instant,
    settle: Settle,
    epoch: (u64, Instant),
    applied: Option<Ruleset>,
    waiting_logged: bool,
    /// The last failure logged, so a persistent one (no `nft`) is logged once, not per round.
    last_error: Option<String>,
    last_verify: Instant,
    /// This agent's own ports, refused to pods.
    agent_ports: Vec<(Protocol, u16)>,
}

impl Proxy {
    fn settled(&mut self) -> bool {
        let view = self.shared.view();
        if view.epoch != self.epoch.0 {
            self.epoch = (view.epoch, Instant::now());
        }
        let peers = view
            .members
            .iter()
            .filter(|m| m.name != self.shared.node_name && m.state == MemberState::Alive)
            .count();
        self.settle
            .may_act(self.started.elapsed(), self.epoch.1.elapsed(), peers)
    }

    /// One round: plan, and apply what differs.
    async fn round(&mut self) {
        if !self.settled() {
            return;
        }
        let Some(facts) = node_facts(&self.shared, &self.agent_ports) else {
            if !self.waiting_logged {
                tracing::info!("proxy: waiting for this node's pod CIDR");
                self.waiting_logged = true;
            }
            return;
        };
        if self.applied.is_some() && self.last_verify.elapsed() >= VERIFY {
            self.last_verify = Instant::now();
            let nft = self.nft.clone();
            let intact = tokio::task::spawn_blocking(move || nft.table_intact())
                .await
                .unwrap_or(false);
            if !intact {
                tracing::warn!("proxy: table ip {TABLE} is missing or was flushed; rebuilding it");
                self.applied = None;
            }
        }
        let planned = Instant::now();
        let shared = self.shared.clone();
        let Ok(desired) = tokio::task::spawn_blocking(move || desired(&shared, facts)).await else {
            tracing::error!("proxy: planning failed");
            return;
        };
        let change = match &self.applied {
            Some(applied) => proxy::diff(applied, &desired),
            None => proxy::full(&desired),
        };
        if change.is_empty() {
            return;
        }
        let planning = planned.elapsed();
        match self.apply(&change).await {
            Ok(took) => {
                log_applied(&change, &desired, planning, took);
                self.shared
                    .metrics
                    .proxy_sync
                    .observe((planning + took).as_secs_f64());
                self.applied = Some(desired);
                self.last_error = None;
            }
            Err(e) if !change.full => {
                tracing::warn!(%e, "proxy: incremental update failed; replacing the whole table");
                let whole = proxy::full(&desired);
                match self.apply(&whole).await {
                    Ok(took) => {
                        log_applied(&whole, &desired, planning, took);
                        let synced = planning + took;
                        self.shared.metrics.proxy_sync.observe(synced.as_secs_f64());
                        self.applied = Some(desired);
                        self.last_error = None;
                    }
                    Err(e) => self.failed(e),
                }
            }
            Err(e) => self.failed(e),
        }
    }

    /// A full replace failed: nothing is known about the table; the next round (at most
    /// [`TICK`] later) tries a full replace again.
    fn failed(&mut self, e: NftError) {
        let text = e.to_string();
        if self.last_error.as_deref() != Some(text.as_str()) {
            tracing::error!(%e, "proxy: replacing table ip {TABLE} failed; Services do not work on this node until it succeeds");
            self.last_error = Some(text);
        }
        self.applied = None;
    }

    async fn apply(&self, change: &Change) -> Result<Duration, NftError> {
        let nft = self.nft.clone();
        let script = change.script.clone();
        let started = Instant::now();
        tokio::task::spawn_blocking(move || nft.apply(&script))
            .await
            .unwrap_or_else(|e| {
                Err(NftError::Failed {
                    args: "-f -".into(),
                    stderr: e.to_string(),
                })
            })?;
        Ok(started.elapsed())
    }
}

fn log_applied(change: &Change, desired: &Ruleset, planning: Duration, took: Duration) {
    tracing::info!(
        full = change.full,
        service_ports = desired.service_ips(),
        chains_written = change.chains_written,
        chains_deleted = change.chains_deleted,
        elements = change.elements,
        planning_us = planning.as_micros() as u64,
        nft_us = took.as_micros() as u64,
        "proxy rules applied"
    );
}

/// Runs until `stop` resolves. `agent_ports`: this agent's listening ports (p2p, API,
/// metrics), which pods may not reach.
pub async fn run(
    shared: Arc<Shared>,
    agent_ports: Vec<(Protocol, u16)>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut proxy = Proxy {
        shared: shared.clone(),
        nft: Nft::default(),
        started: Instant::now(),
        settle: Settle::default(),
        epoch: (u64::MAX, Instant::now()),
        applied: None,
        waiting_logged: false,
        last_error: None,
        last_verify: Instant::now(),
        agent_ports,
    };
    let mut changes = shared.subscribe();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut took = Duration::ZERO;
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => return,
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                tokio::time::sleep(services::pause_after(took, DEBOUNCE, MAX_PAUSE)).await;
                changes.borrow_and_update();
            }
            _ = tick.tick() => {}
        }
        let started = Instant::now();
        proxy.round().await;
        took = started.elapsed();
    }
}
