//! The seam between the API and the agent: everything the API needs from the cluster.
//! The agent implements it over the replicated document and the membership view; unit tests
//! implement it in memory.

use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use std::collections::BTreeMap;

pub use crate::model::image::ImageSummary;
use crate::model::image::{BlobStream, FetchThrough, PullEvent, PullRequest};
pub use crate::model::logs::{LogRequest, LogStream};
use crate::model::workload::{Binding, SchedulingRecord};
pub use crate::model::MemberStatus;
use crate::model::{NodeView, Readiness};

/// Addresses one stored object. `resource` is the lower-case plural, qualified by its API group
/// unless it is in the core group: `configmaps`, `namespaces`, `deployments.apps`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    pub resource: String,
    /// `None` for cluster-scoped resources (namespaces, nodes).
    pub namespace: Option<String>,
    pub name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("state unavailable: {0}")]
    Unavailable(String),
    /// The node's disk is full: the write was not made (HTTP 507).
    #[error("insufficient storage: {0}")]
    InsufficientStorage(String),
}

/// Replication with one peer as the last digest exchange with it showed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerReplication {
    /// Documents whose heads differed from the peer's.
    pub differing_documents: u64,
    /// How long the documents have differed (0 when they agreed); `None` if they never agreed.
    pub lag_ms: Option<u64>,
    /// A state transfer (chunked snapshot) in progress with this peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<StateTransfer>,
}

/// A chunked snapshot transfer in progress (`state::transfer`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateTransfer {
    /// `sending` or `receiving`.
    pub direction: String,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// The serving agent's view: served at `/shoal/v1/status` and printed by `shoal status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub node: String,
    pub cluster_id: String,
    pub generation: u64,
    /// Local epoch counter: bumps whenever this agent's live set changes.
    pub epoch: u64,
    /// Hash of the live set; agents with equal `view` share the same view.
    pub view: String,
    pub leader: Option<String>,
    pub members: Vec<MemberStatus>,
    /// Heads of the replicated document, hex; equal heads mean equal state.
    pub heads: Vec<String>,
    /// Size of the cluster document as last saved to disk.
    pub doc_bytes: u64,
    pub admitted_peers: Vec<String>,
    /// Status documents held (one per node seen).
    #[serde(default)]
    pub status_docs: u64,
    /// Replication with each peer, by node name.
    #[serde(default)]
    pub replication: BTreeMap<String, PeerReplication>,
}

/// What the API needs from the agent. Implementations are cheap to call from request handlers
/// (they read in-memory state; writes are applied locally and replicated in the background).
pub trait Backend: Send + Sync + 'static {
    /// The name of the node serving the API.
    fn node_name(&self) -> String;
    /// Every node record with this agent's readiness view.
    fn nodes(&self) -> Vec<NodeView>;
    /// Removes a node's record (`kubectl delete node`). The node, if alive, re-registers.
    fn delete_node(&self, name: &str) -> Result<(), BackendError>;
    /// All objects of `resource`, in `namespace` if given, else in every namespace.
    fn list_objects(&self, resource: &str, namespace: Option<&str>) -> Vec<Value>;
    fn get_object(&self, key: &ObjectKey) -> Option<Value>;
    /// Stores `object` as a whole under `key`, replacing what was there.
    fn put_object(&self, key: &ObjectKey, object: Value) -> Result<(), BackendError>;
    /// Removes the object; returns what was stored.
    fn delete_object(&self, key: &ObjectKey) -> Result<Option<Value>, BackendError>;
    /// Stores the object `complete` makes from every stored object of `resource` (all
    /// namespaces), holding the store's write lock from the read to the write, so that what
    /// it chooses from them (a free ClusterIP or NodePort) cannot race another write through
    /// this backend. Nothing is stored when `complete` fails. Returns what was stored.
    fn put_object_with(
        &self,
        key: &ObjectKey,
        resource: &str,
        complete: &mut dyn FnMut(Vec<Value>) -> Result<Value, super::ApiError>,
    ) -> Result<Value, super::ApiError> {
        let object = complete(self.list_objects(resource, None))?;
        self.put_object(key, object.clone())?;
        Ok(object)
    }
    /// The Service address range (`shoal init --service-cidr`).
    fn service_cidr(&self) -> String {
        crate::model::network::DEFAULT_SERVICE_CIDR.to_string()
    }
    /// Whether `token` is a valid bearer token of this cluster.
    fn authenticate(&self, token: &str) -> bool;
    fn status(&self) -> AgentStatus;
    /// A snapshot of the whole replicated state (`shoal backup`).
    fn backup(&self) -> Result<Vec<u8>, BackendError>;
    /// Ticks whenever the state or the membership view changed (drives `watch=true`).
    fn changes(&self) -> tokio::sync::watch::Receiver<u64>;
    /// The agent's metrics handle (the API counts its requests and watches in it).
    fn metrics(&self) -> Option<std::sync::Arc<crate::metrics::Metrics>> {
        None
    }
    /// Every alive node's CPU and memory use (`metrics.k8s.io`), gathered from the nodes.
    fn usage(&self) -> BoxFuture<'static, Result<Vec<super::usage::NodeUsage>, BackendError>> {
        Box::pin(async {
            Err(BackendError::Unavailable(
                "resource usage is not measured here".into(),
            ))
        })
    }
    /// This node's own use over its last sampling window.
    fn local_usage(&self) -> Option<super::usage::NodeUsage> {
        None
    }
    /// `GET /metrics`: the content type and exposition for a scraper sending `accept`.
    fn scrape_metrics(&self, _accept: Option<&str>) -> Option<(&'static str, String)> {
        None
    }

    // ---- workloads (docs/workloads.md); defaults serve a backend without any ----

    /// Bindings, pod status records and scheduling records: what the API needs to compute the
    /// status of pods, ReplicaSets and Deployments on read.
    fn workload_view(&self) -> WorkloadView {
        WorkloadView::default()
    }
    /// Events (Kubernetes `Event` JSON) from every node's status document.
    fn events(&self, _namespace: Option<&str>) -> Vec<Value> {
        Vec::new()
    }
    /// Opens a `kubectl exec` session in a running container, on this node or (relayed) on
    /// the node that runs the pod. An error here comes before any output; the API sends it
    /// as the session's final `Status`.
    fn exec(
        &self,
        _req: super::exec::ExecRequest,
    ) -> BoxFuture<'static, Result<super::exec::ExecSession, BackendError>> {
        Box::pin(async { Err(BackendError::Unavailable("exec is not served here".into())) })
    }
    /// Opens one `kubectl port-forward` connection to a port inside a pod, on this node or
    /// (relayed) on the node that runs the pod. An error here (nothing listens on the port...)
    /// is what the client reads on its error stream.
    fn port_forward(
        &self,
        _req: super::portforward::ForwardRequest,
    ) -> BoxFuture<'static, Result<super::portforward::ForwardSession, BackendError>> {
        Box::pin(async {
            Err(BackendError::Unavailable(
                "port-forward is not served here".into(),
            ))
        })
    }
    /// Streams a container's log, from this node or (proxied) from the node that runs the pod.
    fn pod_logs(&self, _req: LogRequest) -> BoxFuture<'static, Result<LogStream, BackendError>> {
        Box::pin(async { Err(BackendError::Unavailable("logs are not served here".into())) })
    }
    /// Loads an image archive (OCI layout or `docker save` tar, already on local disk) into this
    /// node's image store.
    fn import_image(
        &self,
        _archive: std::path::PathBuf,
    ) -> BoxFuture<'static, Result<Vec<ImageSummary>, BackendError>> {
        Box::pin(async { Err(BackendError::Unavailable("no image store here".into())) })
    }
    /// Images in this node's store.
    fn images(&self) -> Vec<ImageSummary> {
        Vec::new()
    }
    /// Where the API may write uploaded image archives before [`Backend::import_image`]
    /// (same file system as the image store); `None`: imports are refused with 503.
    fn upload_dir(&self) -> Option<std::path::PathBuf> {
        None
    }
    /// Pulls an image into this node's store (from peers or its registry), reporting progress.
    /// The stream's last event is [`PullEvent::Done`] or [`PullEvent::Error`]; the API ends the
    /// response there (and reports an error of its own if the stream ends without either).
    fn pull_image(&self, req: PullRequest) -> BoxStream<'static, PullEvent> {
        let _ = req;
        Box::pin(futures::stream::once(async {
            PullEvent::Error {
                message: "this node cannot pull images".into(),
            }
        }))
    }
    /// Removes an image reference (or, given `name@sha256:...`, every reference to that
    /// manifest) from this node's store. [`BackendError::NotFound`] when the store does not
    /// hold it; [`BackendError::Conflict`] ("image is in use by container X") while a container
    /// runs from it.
    fn remove_image(&self, reference: &str) -> BoxFuture<'static, Result<(), BackendError>> {
        let _ = reference;
        Box::pin(async { Err(BackendError::Unavailable("no image store here".into())) })
    }
    /// Blob `sha256:<hex>` for a peer, when this node holds it or is downloading it; `None`:
    /// not here. `hex` is 64 lower-case hex digits (checked by the API).
    fn serve_blob(&self, hex: &str) -> Option<BlobStream> {
        let _ = hex;
        None
    }
    /// As the seed of blob `sha256:<hex>`: fetches it from the registry named by `req` (or joins
    /// the download already running) and streams it to the asking peer.
    fn fetch_through(
        &self,
        hex: &str,
        req: FetchThrough,
    ) -> BoxFuture<'static, Result<BlobStream, BackendError>> {
        let _ = (hex, req);
        Box::pin(async { Err(BackendError::Unavailable("no image store here".into())) })
    }
    /// Whether `token` (already [authenticated](Backend::authenticate)) is the cluster-internal
    /// token that agents use to call each other, rather than a user's token. Routes that bypass
    /// user authorization (the blob routes) are served to internal callers only.
    fn is_internal(&self, token: &str) -> bool {
        let _ = token;
        false
    }
}

pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Workload records, as merged on the serving agent (see `docs/workloads.md`).
#[derive(Clone, Debug, Default)]
pub struct WorkloadView {
    /// `(namespace, pod)` → the winning binding.
    pub bindings: BTreeMap<(String, String), Binding>,
    /// `(namespace, pod)` → status records for that pod from every node's status document,
    /// as `(node, record)`. Only the one whose `binding` matches the binding is current.
    pub pod_status: crate::model::workload::PodStatusRecords,
    /// `(namespace, pod)` → why the leader could not place it (latest first when several).
    pub scheduling: BTreeMap<(String, String), Vec<SchedulingRecord>>,
    /// Readiness of every known node in the serving agent's view.
    pub node_readiness: BTreeMap<String, Readiness>,
}
