//! The API's `Backend` implemented over the shared document and membership view.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::shared::Shared;
use crate::api::{AgentStatus, Backend, BackendError, ObjectKey};
use crate::model::{NodeView, Readiness};
use crate::security::token_hash;
use crate::state::{ClusterDoc, StateError};

/// What `shoal backup` writes: the document plus enough to check it before a restore.
#[derive(Serialize, Deserialize)]
pub struct BackupFile {
    pub format: String,
    pub cluster_id: String,
    pub generation: u64,
    pub taken_at: chrono::DateTime<chrono::Utc>,
    pub taken_on: String,
    #[serde(with = "crate::state::bytes_field")]
    pub document: Vec<u8>,
}

pub const BACKUP_FORMAT: &str = "shoal-backup/1";

pub struct AgentBackend {
    pub shared: Arc<Shared>,
}

fn state_err(e: StateError) -> BackendError {
    match e {
        StateError::TooLarge(n) => BackendError::Invalid(format!("object too large: {n} bytes")),
        other => BackendError::Unavailable(other.to_string()),
    }
}

impl Backend for AgentBackend {
    fn node_name(&self) -> String {
        self.shared.node_name.clone()
    }

    fn nodes(&self) -> Vec<NodeView> {
        let view = self.shared.view();
        let records = self.shared.doc().nodes();
        records
            .into_iter()
            .map(|record| {
                let state = view
                    .members
                    .iter()
                    .find(|m| m.name == record.name)
                    .map(|m| m.state.as_str());
                let readiness = if record.name == self.shared.node_name {
                    Readiness::Ready
                } else {
                    match state {
                        Some("alive") => Readiness::Ready,
                        Some("suspect") => Readiness::Suspect,
                        _ => Readiness::NotReady,
                    }
                };
                let since = view
                    .since
                    .get(&record.name)
                    .copied()
                    .unwrap_or(record.created);
                let is_leader = view.leader.as_deref() == Some(record.name.as_str());
                NodeView {
                    record,
                    readiness,
                    since,
                    is_leader,
                }
            })
            .collect()
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

    fn list_objects(&self, resource: &str, namespace: Option<&str>) -> Vec<Value> {
        self.shared
            .doc()
            .list_objects(resource, namespace)
            .into_iter()
            .map(|(_, v)| v)
            .collect()
    }

    fn get_object(&self, key: &ObjectKey) -> Option<Value> {
        self.shared
            .doc()
            .get_object(&key.resource, key.namespace.as_deref(), &key.name)
            .ok()
            .flatten()
    }

    fn put_object(&self, key: &ObjectKey, object: Value) -> Result<(), BackendError> {
        self.shared
            .write(|d| d.put_object(&key.resource, key.namespace.as_deref(), &key.name, &object))
            .map_err(state_err)
    }

    fn delete_object(&self, key: &ObjectKey) -> Result<Option<Value>, BackendError> {
        self.shared
            .write(|d: &mut ClusterDoc| {
                let old = d.get_object(&key.resource, key.namespace.as_deref(), &key.name)?;
                if old.is_some() {
                    d.delete_object(&key.resource, key.namespace.as_deref(), &key.name)?;
                }
                Ok(old)
            })
            .map_err(state_err)
    }

    fn authenticate(&self, token: &str) -> bool {
        !token.is_empty()
            && token.len() <= 512
            && self.shared.doc().token_user(&token_hash(token)).is_some()
    }

    fn status(&self) -> AgentStatus {
        let view = self.shared.view();
        let heads = self
            .shared
            .doc()
            .heads()
            .iter()
            .map(|h| h.to_string())
            .collect();
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
        }
    }

    fn backup(&self) -> Result<Vec<u8>, BackendError> {
        let document = self.shared.doc().save();
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
}
