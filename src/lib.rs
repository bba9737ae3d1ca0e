//! shoal: a masterless container orchestrator.
//!
//! Every host runs the same agent (`shoal agent`). Code map (see `docs/ARCHITECTURE.md`, whose
//! layer order `tests/tidy.rs` enforces on every import):
//!
//! - [`model`]: plain resource types (node records, views, workload records) shared by all roles.
//! - [`state`]: the replicated automerge document: typed reads/writes, persistence, sync, compaction.
//! - [`membership`]: SWIM-like failure detection (pure core) and the epoch view with its scheduler
//!   leader.
//! - [`sched`]: the scheduler leader's placement and controllers (pure).
//! - [`kubelet`]: pod lifecycle planning (pure) and its loop over the runtime.
//! - [`runtime`]: image store, OCI bundles, runc, per-container shims and pod sandboxes.
//! - [`sim`]: deterministic many-node simulator of the pure cores.
//! - [`security`]: cluster secret, join tokens, admission proofs, sealing, the cluster CA.
//! - [`proxy`]: Service load balancing: the nftables rule planner (pure; its shell is `agent/proxy.rs`).
//! - [`net`]: the libp2p swarm (QUIC): admission, membership messages, state push and sync (shell).
//! - [`api`]: the Kubernetes-shaped HTTPS API served by every agent.
//! - [`metrics`]: the agent's Prometheus metrics (registry, handle, encodings).
//! - [`dns`]: cluster DNS: the zone of Service names and the answer to one query (pure).
//! - [`agent`]: wires the shells together and runs them until shutdown.
//! - [`cli`]: the `shoal` command line.

pub mod agent;
pub mod api;
pub mod cli;
pub mod dns;
pub mod kubelet;
pub mod membership;
pub mod metrics;
pub mod model;
pub mod net;
pub mod proxy;
pub mod runtime;
pub mod sched;
pub mod security;
pub mod sim;
pub mod state;

/// Installs ring as the process's rustls crypto provider (idempotent). Every HTTPS client
/// (reqwest, the registry client) needs one; call it before building any.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The version reported by `/version`, node info and `shoal --version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
