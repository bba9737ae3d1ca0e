//! The API's `Backend` implemented over the shared document and membership view.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::state::secrets;
use crate::state::Shared;
use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::api::{
    AgentStatus, Backend, BackendError, BoxFuture, LogRequest, LogStream, ObjectKey, WorkloadView,
};
use crate::model::workload::{keys, PodStatusRecord, SchedulingRecord};
use crate::model::{MemberState, NodeView, Readiness};
use crate::runtime::image::pull::{BlobStream, FetchThrough, PullEvent, PullRequest, Puller};
use crate::runtime::image::ImageError;
use crate::security::token_hash;
use crate::state::{ClusterDoc, StateError};
use futures::stream::BoxStream;

/// What `shoal backup` writes: the document plus enough to check it before a restore.
#[derive(Serialize, Deserialize)]
pub struct BackupFile {
    pub format: String,
    pub cluster_id: String,
    pub generation: u64,
    pub taken_at: chrono::DateTime<chrono::Utc>,
    pub taken_on: String,
    #[serde(with = "serde_bytes")]
    pub document: Vec<u8>,
}

pub const BACKUP_FORMAT: &str = "shoal-backup/1";

pub struct AgentBackend {
    pub shared: Arc<Shared>,
    /// The agent's data dir (pods' logs, the image store).
    pub data_dir: PathBuf,
    /// Client for other agents' APIs (log proxying), trusting the cluster CA only; built on
    /// first use because the CA file is written after the backend exists.
    peer_client: std::sync::OnceLock<reqwest::Client>,
    /// The node's image puller and store (`None` if the store could not be opened).
    puller: Option<Arc<Puller>>,
    /// This node's CPU and memory samples (`metrics.k8s.io`).
    usage: Option<Arc<super::usage::UsageStore>>,
}

impl AgentBackend {
    /// Serves `metrics.k8s.io` from `store` (this node's samples) and the other nodes'.
    pub fn with_usage(mut self, store: Arc<super::usage::UsageStore>) -> Self {
        self.usage = Some(store);
        self
    }

    pub fn new(shared: Arc<Shared>, data_dir: PathBuf, puller: Option<Arc<Puller>>) -> Self {
        AgentBackend {
            shared,
            data_dir,
            peer_client: std::sync::OnceLock::new(),
            puller,
            usage: None,
        }
    }

    fn puller(&self) -> Result<Arc<Puller>, BackendError> {
        self.puller
            .clone()
            .ok_or_else(|| BackendError::Unavailable("this node has no image store".into()))
    }

    fn peer_client(&self) -> Result<reqwest::Client, BackendError> {
        if let Some(c) = self.peer_client.get() {
            return Ok(c.clone());
        }
        let client =
            super::images::cluster_client(&self.data_dir).map_err(BackendError::Unavailable)?;
        Ok(self.peer_client.get_or_init(|| client).clone())
    }

    /// Streams the log of a pod this node runs.
    fn local_logs(&self, req: LogRequest) -> BoxFuture<'static, Result<LogStream, BackendError>> {
        let data_dir = self.data_dir.clone();
        Box::pin(async move {
            // Scanning the pod directories and opening files is blocking work.
            tokio::task::spawn_blocking(move || crate::kubelet::logs(&data_dir, &req))
                .await
                .map_err(|e| BackendError::Unavailable(format!("log reader: {e}")))?
                .map_err(log_err)
        })
    }

    /// Streams the log from the agent of `node` (its API, authenticated with the internal
    /// token).
    fn proxy_logs(
        &self,
        node: &str,
        req: LogRequest,
    ) -> BoxFuture<'static, Result<LogStream, BackendError>> {
        let record = self.shared.read(|d| d.node(node)).ok().flatten();
        let client = self.peer_client();
        let token = self.shared.identity.internal_api_token();
        let node = node.to_string();
        Box::pin(async move {
            let record = record.ok_or_else(|| {
                BackendError::Unavailable(format!("node {node} has no record (deleted?)"))
            })?;
            let client = client?;
            let url = format!(
                "https://{}/api/v1/namespaces/{}/pods/{}/log",
                record.api_addr, req.namespace, req.pod
            );
            let mut query: Vec<(&str, String)> = Vec::new();
            if let Some(c) = &req.container {
                query.push(("container", c.clone()));
            }
            for (k, on) in [
                ("follow", req.follow),
                ("previous", req.previous),
                ("timestamps", req.timestamps),
            ] {
                if on {
                    query.push((k, "true".into()));
                }
            }
            if let Some(n) = req.tail_lines {
                query.push(("tailLines", n.to_string()));
            }
            if let Some(n) = req.since_seconds {
                query.push(("sinceSeconds", n.to_string()));
            }
            if let Some(t) = &req.since_time {
                query.push(("sinceTime", t.clone()));
            }
            if let Some(n) = req.limit_bytes {
                query.push(("limitBytes", n.to_string()));
            }
            let resp = client
                .get(url)
                .query(&query)
                .bearer_auth(token)
                .send()
                .await
                .map_err(|e| BackendError::Unavailable(format!("node {node}: {e}")))?;
            if !resp.status().is_success() {
                let code = resp.status();
                let body = resp.text().await.unwrap_or_default();
                let message = serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(String::from))
                    .unwrap_or(body);
                return Err(match code.as_u16() {
                    404 => BackendError::NotFound(message),
                    400 => BackendError::Invalid(message),
                    _ => BackendError::Unavailable(format!("node {node}: {message}")),
                });
            }
            let stream = futures::StreamExt::map(resp.bytes_stream(), |r| {
                r.map_err(|e| std::io::Error::other(e.to_string()))
            });
            Ok(Box::pin(stream) as LogStream)
        })
    }
}

/// Nodes whose kubelet reports runtime pressure in its own status document.
pub fn pressured_nodes(shared: &Shared) -> BTreeMap<String, crate::model::RuntimePressure> {
    shared.read_status(|docs| {
        docs.iter()
            .filter_map(|(node, doc)| {
                let p = doc
                    .get::<crate::model::RuntimePressure>(crate::model::PRESSURE_KEY)
                    .ok()
                    .flatten()?;
                Some((node.clone(), p))
            })
            .collect()
    })
}

/// The planned restarts nodes announced in their own status documents (`model::RestartHold`).
/// Only the node's own document counts: a hold is read under the name of the document's
/// owner, never from the record's content.
pub fn restart_holds(shared: &Shared) -> BTreeMap<String, crate::model::RestartHold> {
    shared.read_status(|docs| {
        docs.iter()
            .filter_map(|(node, doc)| {
                let h = doc
                    .get::<crate::model::RestartHold>(crate::model::RESTART_HOLD_KEY)
                    .ok()
                    .flatten()?;
                Some((node.clone(), h))
            })
            .collect()
    })
}

/// The nodes as this agent sees them: records, pod CIDRs and readiness from its membership
/// view, runtime pressure from their status documents (the API's `Backend::nodes`).
pub fn node_views(shared: &Shared) -> Vec<NodeView> {
    let view = shared.view();
    let (records, mut pod_cidrs) = shared.read(|doc| (doc.nodes(), doc.pod_cidrs()));
    let mut pressure = pressured_nodes(shared);
    records
        .into_iter()
        .map(|record| {
            let state = view
                .members
                .iter()
                .find(|m| m.name == record.name)
                .map(|m| m.state);
            let readiness = if record.name == shared.node_name {
                Readiness::Ready
            } else {
                match state {
                    Some(MemberState::Alive) => Readiness::Ready,
                    Some(MemberState::Suspect) => Readiness::Suspect,
                    Some(MemberState::Dead | MemberState::Left) | None => Readiness::NotReady,
                }
            };
            let since = view
                .since
                .get(&record.name)
                .copied()
                .unwrap_or(record.created);
            let is_leader = view.leader.as_deref() == Some(record.name.as_str());
            let pod_cidr = pod_cidrs.remove(&record.name);
            let pressure = pressure.remove(&record.name);
            NodeView {
                record,
                readiness,
                since,
                is_leader,
                pod_cidr,
                pressure,
            }
        })
        .collect()
}

/// What pods' status is computed from on read (`api::workloads`): bindings, status and
/// scheduling records, node readiness. The API and the Service snapshot
/// (`agent::services`) both serve pods through it.
pub fn workload_view(shared: &Shared) -> WorkloadView {
    let bindings = shared.read(|d| d.bindings()).into_iter().collect();
    let mut pod_status = crate::model::workload::PodStatusRecords::new();
    let mut scheduling: BTreeMap<(String, String), Vec<SchedulingRecord>> = BTreeMap::new();
    shared.read_status(|docs| {
        for (node, doc) in docs.iter() {
            for (key, record) in doc.shared_entries::<PodStatusRecord>(keys::POD_STATUS_PREFIX) {
                if let Some((ns, name)) = keys::split(&key, keys::POD_STATUS_PREFIX) {
                    pod_status
                        .entry((ns.to_string(), name.to_string()))
                        .or_default()
                        .push((node.clone(), record));
                }
            }
            for (key, record) in doc.entries::<SchedulingRecord>(keys::SCHEDULING_PREFIX) {
                if let Some((ns, name)) = keys::split(&key, keys::SCHEDULING_PREFIX) {
                    scheduling
                        .entry((ns.to_string(), name.to_string()))
                        .or_default()
                        .push(record);
                }
            }
        }
    });
    for records in scheduling.values_mut() {
        records.sort_by_key(|r| std::cmp::Reverse(r.at));
    }
    let node_readiness = node_views(shared)
        .into_iter()
        .map(|n| (n.record.name, n.readiness))
        .collect();
    WorkloadView {
        bindings,
        pod_status,
        scheduling,
        node_readiness,
    }
}

fn log_err(e: crate::runtime::logs::LogError) -> BackendError {
    use crate::runtime::logs::LogError;
    match e {
        LogError::NotFound(m) => BackendError::NotFound(m),
        LogError::BadRequest(m) => BackendError::Invalid(m),
        other => BackendError::Unavailable(other.to_string()),
    }
}

fn state_err(e: StateError) -> BackendError {
    match e {
        StateError::TooLarge(n) => BackendError::Invalid(format!("object too large: {n} bytes")),
        StateError::NoSpace(m) => BackendError::InsufficientStorage(m),
        other => BackendError::Unavailable(other.to_string()),
    }
}

impl Backend for AgentBackend {
    fn node_name(&self) -> String {
        self.shared.node_name.clone()
    }

    fn nodes(&self) -> Vec<NodeView> {
        node_views(&self.shared)
    }

    fn delete_node(&self, name: &str) -> Result<(), BackendError> {
        match self
            .shared
            .write(|d| d.delete_node(name))
            .map_err(state_err)?
        {
            true => Ok(()),
            false => Err(BackendError::NotFound(format!("nodes \"{name}\""))),
        }
    }

    // Secrets are sealed on the way in and opened on the way out (`state::secrets`).
    fn list_objects(&self, resource: &str, namespace: Option<&str>) -> Vec<Value> {
        let id = &self.shared.identity;
        self.shared
            .read(|d| d.list_objects(resource, namespace))
            .into_iter()
            .filter_map(|(p, v)| {
                secrets::from_stored(id, resource, p.namespace.as_deref(), &p.name, v)
            })
            .collect()
    }

    fn get_object(&self, key: &ObjectKey) -> Option<Value> {
        let stored = self
            .shared
            .read(|d| d.get_object(&key.resource, key.namespace.as_deref(), &key.name))
            .ok()
            .flatten()?;
        secrets::from_stored(
            &self.shared.identity,
            &key.resource,
            key.namespace.as_deref(),
            &key.name,
            stored,
        )
    }

    fn put_object(&self, key: &ObjectKey, object: Value) -> Result<(), BackendError> {
        let stored = secrets::to_stored(
            &self.shared.identity,
            &key.resource,
            key.namespace.as_deref(),
            &key.name,
            &object,
        );
        self.shared
            .write(|d| d.put_object(&key.resource, key.namespace.as_deref(), &key.name, &stored))
            .map_err(state_err)
    }

    fn delete_object(&self, key: &ObjectKey) -> Result<Option<Value>, BackendError> {
        let old = self
            .shared
            .write(|d: &mut ClusterDoc| {
                let old = d.get_object(&key.resource, key.namespace.as_deref(), &key.name)?;
                if old.is_some() {
                    d.delete_object(&key.resource, key.namespace.as_deref(), &key.name)?;
                    // The placement goes with the pod: a ReplicaSet re-creates a deleted pod
                    // under the same name (names are functions of the slot), and that new pod
                    // is placed afresh (a cordoned or drained node gets it back no more than
                    // any other pod), never run on the old binding.
                    if let ("pods", Some(namespace)) = (key.resource.as_str(), &key.namespace) {
                        d.delete_binding(namespace, &key.name)?;
                    }
                }
                Ok(old)
            })
            .map_err(state_err)?;
        Ok(old.and_then(|v| {
            secrets::from_stored(
                &self.shared.identity,
                &key.resource,
                key.namespace.as_deref(),
                &key.name,
                v,
            )
        }))
    }

    fn put_object_with(
        &self,
        key: &ObjectKey,
        resource: &str,
        complete: &mut dyn FnMut(Vec<Value>) -> Result<Value, crate::api::ApiError>,
    ) -> Result<Value, crate::api::ApiError> {
        // Decided inside the write, under the document lock: an object written through this
        // agent in between is seen, and nothing is written when `complete` refuses.
        self.shared
            .write(|d: &mut ClusterDoc| {
                let id = &self.shared.identity;
                let others = d
                    .list_objects(resource, None)
                    .into_iter()
                    .filter_map(|(p, v)| {
                        secrets::from_stored(id, resource, p.namespace.as_deref(), &p.name, v)
                    })
                    .collect();
                match complete(others) {
                    Ok(object) => {
                        let (ns, name) = (key.namespace.as_deref(), &key.name);
                        let stored = secrets::to_stored(id, &key.resource, ns, name, &object);
                        d.put_object(&key.resource, ns, name, &stored)?;
                        Ok(Ok(object))
                    }
                    Err(e) => Ok(Err(e)),
                }
            })
            .map_err(|e| crate::api::ApiError::from(state_err(e)))?
    }

    fn service_cidr(&self) -> String {
        self.shared
            .read(|d| d.meta())
            .ok()
            .flatten()
            .map(|m| m.service_cidr)
            .unwrap_or_else(|| crate::model::network::DEFAULT_SERVICE_CIDR.to_string())
    }

    fn authenticate(&self, token: &str) -> bool {
        if token.is_empty() || token.len() > 512 {
            return false;
        }
        // Constant-time comparison of the internal token; API tokens are compared by hash.
        constant_time_eq(&self.shared.identity.internal_api_token(), token)
            || self
                .shared
                .read(|d| d.token_user(&token_hash(token)))
                .is_some()
    }

    fn status(&self) -> AgentStatus {
        let view = self.shared.view();
        let heads = self.shared.heads().iter().map(|h| h.to_string()).collect();
        let doc_bytes = self.shared.saved_bytes();
        AgentStatus {
            node: self.shared.node_name.clone(),
            cluster_id: self.shared.identity.cluster_id.clone(),
            generation: self.shared.identity.generation,
            epoch: view.epoch,
            view: format!("{:016x}", view.view_hash),
            leader: view.leader,
            members: view.members,
            heads,
            doc_bytes,
            admitted_peers: view.admitted,
            status_docs: self.shared.read_status(|docs| docs.len()) as u64,
            replication: super::metrics::replication(&self.shared),
        }
    }

    fn backup(&self) -> Result<Vec<u8>, BackendError> {
        let document = self.shared.save_doc();
        let file = BackupFile {
            format: BACKUP_FORMAT.to_string(),
            cluster_id: self.shared.identity.cluster_id.clone(),
            generation: self.shared.identity.generation,
            taken_at: chrono::Utc::now(),
            taken_on: self.shared.node_name.clone(),
            document,
        };
        cbor4ii::serde::to_vec(Vec::new(), &file)
            .map_err(|e| BackendError::Unavailable(e.to_string()))
    }

    fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.subscribe()
    }

    fn metrics(&self) -> Option<Arc<crate::metrics::Metrics>> {
        Some(self.shared.metrics.clone())
    }

    fn usage(&self) -> BoxFuture<'static, Result<Vec<crate::api::usage::NodeUsage>, BackendError>> {
        let shared = self.shared.clone();
        let store = self.usage.clone();
        let client = self.peer_client();
        Box::pin(async move {
            let store = store.ok_or_else(|| {
                BackendError::Unavailable("this node does not measure resource usage".into())
            })?;
            Ok(super::usage::gather(shared, store, client?).await)
        })
    }

    fn local_usage(&self) -> Option<crate::api::usage::NodeUsage> {
        self.usage.as_ref()?.report(&self.shared.node_name)
    }

    fn scrape_metrics(&self, accept: Option<&str>) -> Option<(&'static str, String)> {
        Some(super::metrics::scrape(&self.shared, accept))
    }

    fn workload_view(&self) -> WorkloadView {
        workload_view(&self.shared)
    }

    fn events(&self, namespace: Option<&str>) -> Vec<Value> {
        let prefix = match namespace {
            Some(ns) => format!("{}{ns}/", keys::EVENT_PREFIX),
            None => keys::EVENT_PREFIX.to_string(),
        };
        let mut out: Vec<Value> = self.shared.read_status(|docs| {
            docs.values()
                .flat_map(|doc| doc.entries::<Value>(&prefix).into_iter().map(|(_, v)| v))
                .collect()
        });
        let stamp = |v: &Value| {
            v.get("lastTimestamp")
                .and_then(|t| t.as_str())
                .unwrap_or("")
                .to_string()
        };
        out.sort_by_key(stamp);
        out
    }

    fn exec(
        &self,
        req: crate::api::exec::ExecRequest,
    ) -> BoxFuture<'static, Result<crate::api::exec::ExecSession, BackendError>> {
        let shared = self.shared.clone();
        let runtime =
            crate::runtime::RuntimeConfig::from_env(&self.data_dir, &shared.node_name, true);
        Box::pin(super::exec::open(shared, runtime, req))
    }

    fn port_forward(
        &self,
        req: crate::api::portforward::ForwardRequest,
    ) -> BoxFuture<'static, Result<crate::api::portforward::ForwardSession, BackendError>> {
        let shared = self.shared.clone();
        let runtime =
            crate::runtime::RuntimeConfig::from_env(&self.data_dir, &shared.node_name, true);
        Box::pin(super::portforward::open(shared, runtime, req))
    }

    fn pod_logs(&self, req: LogRequest) -> BoxFuture<'static, Result<LogStream, BackendError>> {
        match super::exec::pod_node(&self.shared, &req.namespace, &req.pod) {
            Err(e) => Box::pin(async move { Err(e) }),
            Ok(node) if node == self.shared.node_name => self.local_logs(req),
            Ok(node) => self.proxy_logs(&node, req),
        }
    }

    fn import_image(
        &self,
        archive: PathBuf,
    ) -> BoxFuture<'static, Result<Vec<crate::api::ImageSummary>, BackendError>> {
        let puller = self.puller();
        Box::pin(async move {
            let puller = puller?;
            let store = puller.store().clone();
            let imported = tokio::task::spawn_blocking(move || store.import(&archive))
                .await
                .map_err(|e| BackendError::Unavailable(format!("image import: {e}")))?;
            puller.notify_changed();
            imported.map_err(image_err)
        })
    }

    fn images(&self) -> Vec<crate::api::ImageSummary> {
        self.puller
            .as_ref()
            .map(|p| p.store().list())
            .unwrap_or_default()
    }

    fn upload_dir(&self) -> Option<PathBuf> {
        self.puller.as_ref().map(|p| p.store().upload_dir())
    }

    fn pull_image(&self, req: PullRequest) -> BoxStream<'static, PullEvent> {
        let puller = match self.puller() {
            Ok(p) => p,
            Err(e) => {
                let message = e.to_string();
                return Box::pin(futures::stream::once(async move {
                    PullEvent::Error { message }
                }));
            }
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let done_tx = tx.clone();
        tokio::spawn(async move {
            if let Err(e) = puller.pull(&req, Some(tx)).await {
                let _ = done_tx.send(PullEvent::Error {
                    message: e.to_string(),
                });
            }
        });
        Box::pin(tokio_stream_from(rx))
    }

    fn remove_image(&self, reference: &str) -> BoxFuture<'static, Result<(), BackendError>> {
        let puller = self.puller();
        let data_dir = self.data_dir.clone();
        let reference = reference.to_string();
        Box::pin(async move {
            let puller = puller?;
            super::images::remove_image(&puller, &data_dir, &reference)
                .await
                .map_err(|e| match e {
                    ImageError::NotFound(r) => BackendError::NotFound(format!("image {r}")),
                    ImageError::InUse(_) => BackendError::Conflict(e.to_string()),
                    other => image_err(other),
                })
        })
    }

    fn serve_blob(&self, hex: &str) -> Option<BlobStream> {
        self.puller.as_ref()?.serve_blob(hex)
    }

    fn fetch_through(
        &self,
        hex: &str,
        req: FetchThrough,
    ) -> BoxFuture<'static, Result<BlobStream, BackendError>> {
        let puller = self.puller();
        let hex = hex.to_string();
        Box::pin(async move {
            puller?
                .fetch_through(&hex, &req)
                .await
                .map_err(|e| match e.is_caller_error() {
                    true => BackendError::Invalid(e.to_string()),
                    false => BackendError::Unavailable(e.to_string()),
                })
        })
    }

    fn is_internal(&self, token: &str) -> bool {
        constant_time_eq(&self.shared.identity.internal_api_token(), token)
    }
}

fn image_err(e: ImageError) -> BackendError {
    match e.is_caller_error() {
        true => BackendError::Invalid(e.to_string()),
        false => BackendError::Unavailable(e.to_string()),
    }
}

/// A stream of what an unbounded channel receives, until every sender is gone.
fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::workload::Binding;
    use crate::security::ClusterIdentity;
    use crate::state::Wal;
    use automerge::ActorId;
    use serde_json::json;

    fn binding(node: &str, uid: &str) -> Binding {
        Binding {
            node: node.into(),
            id: format!("b-{uid}"),
            pod_uid: uid.into(),
            epoch: 1,
            view: 1,
            leader: "n1".into(),
            at: chrono::DateTime::UNIX_EPOCH,
        }
    }

    fn key(resource: &str, name: &str) -> ObjectKey {
        ObjectKey {
            resource: resource.into(),
            namespace: Some("default".into()),
            name: name.into(),
        }
    }

    #[test]
    fn deleting_a_pod_deletes_its_binding_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let identity = ClusterIdentity {
            cluster_id: "c".into(),
            generation: 1,
            secret: [7; 32],
        };
        let mut doc = ClusterDoc::empty(ActorId::random());
        for (name, uid) in [("web-1", "u1"), ("web-2", "u2")] {
            let pod = json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "default", "uid": uid}});
            doc.put_object("pods", Some("default"), name, &pod).unwrap();
            doc.put_binding("default", name, &binding("n2", uid))
                .unwrap();
        }
        // Another kind under a pod's name: deleting it leaves the pod's binding.
        doc.put_object("configmaps", Some("default"), "web-2", &json!({"data": {}}))
            .unwrap();
        let (shared, _pushed) = Shared::new(
            "n1".into(),
            identity,
            doc,
            Wal::new(dir.path().join("state.wal")),
            BTreeMap::new(),
        );
        let backend = AgentBackend::new(Arc::new(shared), dir.path().into(), None);

        let gone = backend.delete_object(&key("pods", "web-1")).unwrap();
        assert_eq!(gone.unwrap()["metadata"]["uid"], "u1");
        assert!(backend
            .delete_object(&key("configmaps", "web-2"))
            .unwrap()
            .is_some());
        // A pod that is not there: nothing deleted, no error.
        assert!(backend
            .delete_object(&key("pods", "web-3"))
            .unwrap()
            .is_none());

        let (web1, web2, pod2) = backend.shared.read(|d| {
            (
                d.binding("default", "web-1").unwrap(),
                d.binding("default", "web-2").unwrap(),
                d.get_object("pods", Some("default"), "web-2").unwrap(),
            )
        });
        assert_eq!(web1, None);
        assert_eq!(web2, Some(binding("n2", "u2")));
        assert!(pod2.is_some());
    }
}
