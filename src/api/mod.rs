//! The Kubernetes-shaped HTTPS API every agent serves, so the real `kubectl` works against any
//! node: discovery, OpenAPI v3, Tables, nodes, generic stored objects (create, get, list,
//! replace, patch, delete, watch), workloads (Pods, ReplicaSets, Deployments with `scale`,
//! pod logs, events) and shoal's own `/shoal/v1` routes (status, backup, images), with
//! bearer-token auth on every route, bounded connections, header and body sizes, and request
//! timeouts.
//!
//! Code map: [`serve`] and [`tls_config`] (`server.rs`) run the TLS accept loop; `router.rs`
//! maps paths to handlers; `resources.rs` is the data-driven table of kinds that discovery,
//! OpenAPI, validation and Tables read; `objects.rs` implements the verbs over [`Backend`];
//! `body.rs` reads bodies with a size limit and decodes JSON, YAML and (`proto.rs`) the
//! protobuf kubectl's typed clients send; `validation.rs` checks kinds, fields and names
//! (`typed.rs` decodes workloads through `k8s_openapi` types to find unknown fields and type
//! errors); `admission.rs` defaults and validates workloads; `workloads.rs` computes their
//! status on read from [`WorkloadView`]; `services.rs` defaults, validates and allocates
//! Services and computes Endpoints and EndpointSlices on read; `scale.rs` serves the `scale`
//! subresource, `logs.rs`
//! pod logs and `images.rs` image import, listing, pulls (NDJSON progress), removal and the
//! internal-only blob routes peers fetch from; `nodes.rs` renders Node objects; `usage.rs`
//! serves `metrics.k8s.io` (NodeMetrics, PodMetrics for `kubectl top`); `metrics.rs` serves
//! `/metrics` and counts requests;
//! `watch.rs` streams events by diffing snapshots (computed status included);
//! `discovery.rs` and `openapi.rs` describe the table to clients; `patch.rs`,
//! `selectors.rs`, `table.rs`, `status.rs` and `graceful.rs` (what a pod's `DELETE` does:
//! remove it, mark it terminating, or shorten its pending deletion) are pure helpers.
//! `exec.rs` and `portforward.rs` serve the streaming subresources (port-forward over the
//! pure SPDY/3.1 codec of `spdy.rs`).
//!
//! **Architecture Invariant:** everything the API knows about the cluster comes through the
//! [`Backend`] trait; the API never touches the replicated document or the network directly.
//!
//! **Architecture Invariant:** the status of Pods, ReplicaSets and Deployments is never stored
//! by the API; a `status` sent by a user is dropped, and reads compute it.

pub mod admission;
mod apply;
mod auth;
mod backend;
mod body;
mod changelog;
mod connections;
mod discovery;
mod eviction;
pub mod exec;
mod graceful;
mod images;
mod logs;
mod metrics;
mod nodes;
mod objects;
mod openapi;
pub mod patch;
mod pod_security;
pub mod portforward;
mod proto;
mod resources;
mod revisions;
mod router;
mod scale;
pub mod selectors;
mod server;
mod services;
pub mod spdy;
mod status;
mod storage;
mod table;
mod typed;
pub mod usage;
mod validation;
mod watch;
pub mod workloads;

use std::sync::Arc;
use std::time::Duration;

pub use backend::{
    AgentStatus, Backend, BackendError, BoxFuture, ImageSummary, LogRequest, LogStream,
    MemberStatus, ObjectKey, PeerReplication, StateTransfer, WorkloadView,
};
pub use nodes::node_object;
pub use server::{serve, tls_config};
pub use status::{ApiError, Cause};

/// Limits and timeouts of the API server. Every size that comes from a client is bounded here.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Largest request body accepted; larger bodies get 413. Kubernetes uses 3 MiB.
    pub max_body_bytes: usize,
    /// Concurrent connections (TLS handshakes included); further clients wait in the backlog.
    pub max_connections: usize,
    /// Concurrent connections from one source address; more are closed as they arrive.
    pub max_connections_per_address: usize,
    /// Concurrent connections that have not yet made an authenticated request (TLS handshakes
    /// included); more wait for a slot up to `handshake_timeout`, then are closed.
    pub max_unauthenticated: usize,
    /// A connection with no authenticated request this long after it opened is closed.
    pub unauthenticated_timeout: Duration,
    /// An authenticated connection with no request in flight this long is closed.
    pub idle_timeout: Duration,
    /// Exec sessions open at once on this node (relayed ones count on both nodes); more get
    /// 429.
    pub max_exec_sessions: usize,
    /// An exec session with no byte in either direction this long is ended (the kubelet's
    /// `streamingConnectionIdleTimeout`, 4 h by default).
    pub exec_idle_timeout: Duration,
    /// Largest request head (HTTP/1 buffer and HTTP/2 header list); at least 8 KiB.
    pub max_header_bytes: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_streams_per_connection: u32,
    /// Time allowed for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time allowed to receive a request head (HTTP/1).
    pub header_timeout: Duration,
    /// Time allowed for a non-watch request.
    pub request_timeout: Duration,
    /// Longest a watch stays open when the client gives no `timeoutSeconds`.
    pub max_watch: Duration,
    /// How long shutdown waits for open connections before aborting them.
    pub shutdown_grace: Duration,
    /// Largest image archive accepted by `POST /shoal/v1/images/import` (not bound by
    /// `max_body_bytes`).
    pub max_image_bytes: u64,
    /// Time allowed to receive an image archive (instead of `request_timeout`).
    pub image_upload_timeout: Duration,
    /// Changes kept per kind by the change log (`changelog.rs`): a watch or an exact list
    /// from a resourceVersion older than this window gets 410 Gone.
    pub watch_window: usize,
    /// Longest time between BOOKMARK events of a watch with `allowWatchBookmarks`.
    pub bookmark_interval: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_body_bytes: 3 * 1024 * 1024,
            max_connections: 1024,
            max_connections_per_address: 256,
            max_unauthenticated: 128,
            unauthenticated_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_exec_sessions: 256,
            exec_idle_timeout: Duration::from_secs(4 * 3600),
            max_header_bytes: 64 * 1024,
            max_streams_per_connection: 250,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            max_watch: Duration::from_secs(1800),
            shutdown_grace: Duration::from_secs(10),
            max_image_bytes: 4 << 30,
            image_upload_timeout: Duration::from_secs(30 * 60),
            watch_window: 4096,
            bookmark_interval: Duration::from_secs(60),
        }
    }
}

/// What every handler gets.
#[derive(Clone)]
pub(crate) struct ApiState {
    pub backend: Arc<dyn Backend>,
    pub config: Arc<ApiConfig>,
    pub versions: Arc<objects::ResourceVersions>,
    /// This node's log of recent changes: list resourceVersions, watches, exact reads.
    pub log: Arc<changelog::ChangeLog>,
    /// Becomes `true` when the server shuts down; open watches end.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// The exec sessions this node may serve at once (`ApiConfig::max_exec_sessions`).
    pub exec_sessions: Arc<tokio::sync::Semaphore>,
}
