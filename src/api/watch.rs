//! `?watch=true` streams: newline-delimited JSON events (ADDED, MODIFIED, DELETED) computed by
//! diffing snapshots whenever `Backend::changes()` ticks. Ends at `timeoutSeconds` (or the
//! configured maximum), on shutdown, or when the client goes away.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use chrono::Utc;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::objects::list_all;
use super::resources::ResourceInfo;
use super::selectors::{FieldSelector, LabelSelector};
use super::table::{self, IncludeObject};
use super::ApiState;

pub struct WatchRequest {
    pub info: &'static ResourceInfo,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    /// Start after this version: only objects written later are sent initially. `None` sends
    /// every current object as ADDED.
    pub resource_version: Option<String>,
    pub timeout_seconds: Option<u64>,
    /// Table apiVersion when the client asked for Tables.
    pub table: Option<&'static str>,
    pub include: IncludeObject,
}

struct Watcher {
    state: ApiState,
    request: WatchRequest,
    changes: tokio::sync::watch::Receiver<u64>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    known: BTreeMap<(String, String), Value>,
    pending: VecDeque<Bytes>,
    deadline: Instant,
    started: bool,
}

fn object_key(object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    (
        meta["namespace"].as_str().unwrap_or_default().to_string(),
        meta["name"].as_str().unwrap_or_default().to_string(),
    )
}

fn newer_than(object: &Value, version: &str) -> bool {
    let have = object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse::<u64>().ok());
    match (have, version.parse::<u64>()) {
        (Some(have), Ok(since)) => have > since,
        _ => false,
    }
}

impl Watcher {
    fn snapshot(&self) -> BTreeMap<(String, String), Value> {
        let r = &self.request;
        list_all(&self.state, r.info, r.namespace.as_deref())
            .into_iter()
            .filter(|o| r.labels.matches(o) && r.fields.matches(o))
            .map(|o| (object_key(&o), o))
            .collect()
    }

    fn push(&mut self, kind: &str, object: &Value) {
        let object = match self.request.table {
            Some(table_version) => {
                let rv = object["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default();
                table::table(
                    self.request.info,
                    table_version,
                    std::slice::from_ref(object),
                    rv,
                    self.request.include,
                    Utc::now(),
                )
            }
            None => object.clone(),
        };
        let mut line =
            serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
        line.push(b'\n');
        self.pending.push_back(Bytes::from(line));
    }

    fn start(&mut self) {
        self.changes.borrow_and_update();
        let current = self.snapshot();
        let since = self.request.resource_version.clone();
        for object in current.values() {
            match &since {
                None => self.push("ADDED", object),
                Some(v) if newer_than(object, v) => self.push("MODIFIED", object),
                Some(_) => {}
            }
        }
        self.known = current;
    }

    fn diff(&mut self) {
        let current = self.snapshot();
        let previous = std::mem::take(&mut self.known);
        for (key, object) in &current {
            match previous.get(key) {
                None => self.push("ADDED", object),
                Some(old) if old != object => self.push("MODIFIED", object),
                Some(_) => {}
            }
        }
        for (key, object) in &previous {
            if !current.contains_key(key) {
                self.push("DELETED", object);
            }
        }
        self.known = current;
    }

    /// The next chunk to send, or `None` when the watch ends.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(chunk) = self.pending.pop_front() {
                return Some(chunk);
            }
            if !self.started {
                self.started = true;
                self.start();
                continue;
            }
            let shutdown = &mut self.shutdown;
            let changed = tokio::select! {
                _ = tokio::time::sleep_until(self.deadline) => false,
                _ = async { let _ = shutdown.wait_for(|stopping| *stopping).await; } => false,
                changed = self.changes.changed() => changed.is_ok(),
            };
            if !changed {
                return None;
            }
            self.diff();
        }
    }
}

/// The streaming response of a watch request.
pub fn respond(state: ApiState, request: WatchRequest) -> Response {
    let max = state.config.max_watch;
    let duration = request
        .timeout_seconds
        .map(std::time::Duration::from_secs)
        .map_or(max, |t| t.min(max));
    let watcher = Watcher {
        changes: state.backend.changes(),
        shutdown: state.shutdown.clone(),
        state,
        request,
        known: BTreeMap::new(),
        pending: VecDeque::new(),
        deadline: Instant::now() + duration,
        started: false,
    };
    let stream = futures::stream::unfold(watcher, |mut watcher| async move {
        let chunk = watcher.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), watcher))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}
