//! The verbs over the resource table: create, get, list, replace, patch, delete (and watch via
//! `watch.rs`). The server owns the system metadata (uid, creationTimestamp, resourceVersion,
//! generation), validates names and fields, and stores whole objects through the backend.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{SecondsFormat, Utc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use std::sync::Arc;

use base64::Engine;

use super::backend::ObjectKey;
use super::body::{decode, media_type, read_body};
use super::changelog::{key_of, Expired, Snapshot};
use super::nodes;
use super::patch::{self, PatchKind};
use super::resources::{self, ResourceInfo, Storage, Workload};
use super::revisions;
use super::selectors::{FieldSelector, LabelSelector};
use super::status::{success_status, ApiError, Cause};
use super::storage;
use super::table::{self, IncludeObject};
use super::validation::{check_type_meta, validate_fields, validate_name};
use super::watch::{self, WatchRequest};
use super::workloads;
use super::{admission, apply, eviction, graceful, logs, pod_security, scale, services, ApiState};
use crate::model::storage::LOCAL_PATH;
use crate::model::Readiness;

/// Namespaces that exist even when nothing is stored for them.
pub const BUILTIN_NAMESPACES: &[&str] = &["default", "kube-system"];

/// Hands out resourceVersions: decimal microseconds since the epoch, strictly increasing in
/// this process and roughly ordered across agents.
#[derive(Debug, Default)]
pub struct ResourceVersions {
    last: AtomicU64,
}

impl ResourceVersions {
    pub fn next(&self) -> String {
        let now = u64::try_from(Utc::now().timestamp_micros()).unwrap_or(0);
        let previous = self
            .last
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                Some(last.saturating_add(1).max(now))
            })
            .unwrap_or(0);
        previous.saturating_add(1).max(now).to_string()
    }
}

/// A request resolved against the resource table.
pub struct Target {
    pub info: &'static ResourceInfo,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

type Query = BTreeMap<String, String>;

pub async fn handle(
    state: ApiState,
    method: Method,
    target: Target,
    query: Query,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let info = target.info;
    if let Some(sub) = &target.subresource {
        let sub = info.subresource(sub).ok_or(ApiError::NoRoute)?;
        let name = target.name.clone().unwrap_or_default();
        return match (sub.name, &method) {
            ("status", &Method::GET) => get(&state, &target, &name, &query, &headers),
            ("log", &Method::GET) => logs::respond(&state, &target, &name, &query).await,
            ("scale", _) => {
                scale::handle(&state, &method, &target, &name, &query, &headers, body).await
            }
            ("eviction", &Method::POST) => {
                let body = read_body(body, &headers, state.config.max_body_bytes).await?;
                eviction::handle(&state, &target, &name, &query, &headers, &body)
            }
            _ => Err(ApiError::MethodNotAllowed),
        };
    }
    let verb = match (&method, &target.name) {
        (&Method::GET, None) if is_true(query.get("watch")) => "watch",
        (&Method::GET, None) => "list",
        (&Method::POST, None) => "create",
        (&Method::GET, Some(_)) => "get",
        (&Method::PUT, Some(_)) => "update",
        (&Method::PATCH, Some(_)) => "patch",
        (&Method::DELETE, Some(_)) => "delete",
        (&Method::DELETE, None) => "deletecollection",
        _ => return Err(ApiError::MethodNotAllowed),
    };
    if !info.allows(verb) {
        return Err(ApiError::MethodNotAllowed);
    }
    if verb == "create" && info.namespaced && target.namespace.is_none() {
        return Err(ApiError::MethodNotAllowed);
    }
    let name = target.name.clone().unwrap_or_default();
    match verb {
        "watch" => Ok(watch::respond(
            state,
            watch_request(&target, &query, &headers)?,
        )),
        "list" => list(&state, &target, &query, &headers),
        "get" => get(&state, &target, &name, &query, &headers),
        "create" => {
            let body = read_body(body, &headers, state.config.max_body_bytes).await?;
            create(&state, &target, &query, &headers, &body)
        }
        "update" => {
            let body = read_body(body, &headers, state.config.max_body_bytes).await?;
            replace(&state, &target, &name, &query, &headers, &body)
        }
        "patch" => {
            let body = read_body(body, &headers, state.config.max_body_bytes).await?;
            patch(&state, &target, &name, &query, &headers, &body)
        }
        "deletecollection" => {
            let body = read_body(body, &headers, state.config.max_body_bytes).await?;
            delete_collection(&state, &target, &query, &body)
        }
        _ => {
            let body = read_body(body, &headers, state.config.max_body_bytes).await?;
            delete(&state, &target, &name, &query, &body)
        }
    }
}

pub fn is_true(value: Option<&String>) -> bool {
    value.is_some_and(|v| v == "true" || v == "1" || v == "True")
}

fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Who a write's fields belong to (`metadata.managedFields`, `api/apply.rs`).
pub enum FieldOwner {
    /// An ordinary write: `manager` owns what it changed (operation `Update`).
    Update {
        manager: String,
        subresource: &'static str,
    },
    /// A server-side apply: the apply core has already written `managedFields`.
    Applied,
}

impl FieldOwner {
    /// An ordinary write by the request's field manager.
    pub fn update(
        query: &Query,
        headers: &HeaderMap,
        subresource: &'static str,
    ) -> Result<Self, ApiError> {
        Ok(FieldOwner::Update {
            manager: field_manager(query, headers)?,
            subresource,
        })
    }
}

/// The longest field manager name Kubernetes accepts, in bytes.
const MAX_FIELD_MANAGER: usize = 128;

/// The request's field manager, as Kubernetes names it: the `fieldManager` parameter, else
/// the user agent up to its first `/` (`kubectl/v1.32.0 (linux/amd64) ...` is `kubectl`).
pub fn field_manager(query: &Query, headers: &HeaderMap) -> Result<String, ApiError> {
    match query.get("fieldManager").filter(|m| !m.is_empty()) {
        Some(manager) => {
            let problem = if manager.len() > MAX_FIELD_MANAGER {
                Some(format!(
                    "Too long: may not be more than {MAX_FIELD_MANAGER} bytes"
                ))
            } else if manager.chars().any(char::is_control) {
                Some(format!(
                    "Invalid value: {manager:?}: must only contain printable characters"
                ))
            } else {
                None
            };
            match problem {
                Some(message) => Err(options_invalid("fieldManager", message)),
                None => Ok(manager.clone()),
            }
        }
        None => {
            let agent = headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let prefix = agent.split('/').next().unwrap_or_default();
            Ok(prefix
                .chars()
                .filter(|c| !c.is_control())
                .take(MAX_FIELD_MANAGER)
                .collect())
        }
    }
}

/// A 422 on a request option (Kubernetes: `PatchOptions.meta.k8s.io "" is invalid`).
fn options_invalid(field: &str, message: String) -> ApiError {
    ApiError::Invalid {
        kind: "PatchOptions.meta.k8s.io".into(),
        name: String::new(),
        causes: vec![Cause {
            reason: if message.starts_with("Required") {
                "FieldValueRequired".into()
            } else {
                "FieldValueInvalid".into()
            },
            field: field.into(),
            message,
        }],
    }
}

/// Records `owner`'s fields in `object` (changed from `live`).
fn record_owner(
    info: &ResourceInfo,
    name: &str,
    live: Option<&Value>,
    object: &mut Value,
    owner: &FieldOwner,
) -> Result<(), ApiError> {
    let FieldOwner::Update {
        manager,
        subresource,
    } = owner
    else {
        return Ok(());
    };
    let api_version = info.api_version();
    let now = now_rfc3339();
    let request = apply::Update {
        manager,
        api_version: &api_version,
        now: &now,
        keys: info.merge_keys,
        subresource,
    };
    apply::record_update(live, object, &request).map_err(|e| ownership_error(info, name, e))
}

/// An error of `api/apply.rs` as Kubernetes answers it: 409 Conflict with one
/// `FieldManagerConflict` cause per field, 400 for what cannot be applied, 422 naming a
/// malformed `managedFields` entry.
fn ownership_error(info: &ResourceInfo, name: &str, error: apply::ApplyError) -> ApiError {
    match error {
        apply::ApplyError::Conflicts(ref conflicts) => ApiError::ApplyConflict {
            message: error.to_string(),
            causes: conflicts
                .iter()
                .map(|c| Cause {
                    reason: "FieldManagerConflict".into(),
                    field: apply::display(&c.path),
                    message: format!("conflict with {}", c.owner()),
                })
                .collect(),
        },
        apply::ApplyError::Invalid(message) => ApiError::BadRequest(message),
        apply::ApplyError::ManagedFields { field, message } => ApiError::Invalid {
            kind: info.qualified_kind(),
            name: name.to_string(),
            causes: vec![Cause {
                reason: "FieldValueInvalid".into(),
                field,
                message,
            }],
        },
    }
}

pub fn json_response(code: StatusCode, value: &Value) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn key(info: &ResourceInfo, namespace: Option<&str>, name: &str) -> ObjectKey {
    ObjectKey {
        resource: info.backend_resource(),
        namespace: if info.namespaced {
            namespace.map(str::to_string)
        } else {
            None
        },
        name: name.to_string(),
    }
}

/// The resource entry `is` picks (claims, volumes).
fn storage_info(is: fn(&ResourceInfo) -> bool) -> &'static ResourceInfo {
    resources::RESOURCES
        .iter()
        .find(|r| is(r))
        .unwrap_or(&resources::RESOURCES[0])
}

/// The built-in `local-path` StorageClass (not stored), created with the oldest node.
fn builtin_class(state: &ApiState) -> Value {
    let created = oldest_node_created(state).unwrap_or(chrono::DateTime::UNIX_EPOCH);
    crate::model::storage::builtin_class(created)
}

/// When the cluster's oldest node was created: the creation time of built-in objects.
fn oldest_node_created(state: &ApiState) -> Option<chrono::DateTime<Utc>> {
    state.backend.nodes().iter().map(|n| n.record.created).min()
}

/// A namespace that is not stored but always exists.
fn builtin_namespace(state: &ApiState, name: &str) -> Value {
    let created = oldest_node_created(state).unwrap_or_else(Utc::now);
    let digest = Sha256::digest(format!("shoal-namespace/{name}").as_bytes());
    let h = hex::encode(&digest[..16]);
    let uid = format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    );
    json!({
        "kind": "Namespace",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": uid,
            "resourceVersion": "1",
            "creationTimestamp": created.to_rfc3339_opts(SecondsFormat::Secs, true),
            "labels": {"kubernetes.io/metadata.name": name},
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    })
}

fn with_type_meta(info: &ResourceInfo, mut object: Value) -> Value {
    if let Some(map) = object.as_object_mut() {
        map.insert("kind".into(), json!(info.kind));
        map.insert("apiVersion".into(), json!(info.api_version()));
    }
    object
}

fn sort_key(object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    (
        meta["namespace"].as_str().unwrap_or_default().to_string(),
        meta["name"].as_str().unwrap_or_default().to_string(),
    )
}

/// Stored objects of `info`, with type meta but without computed status.
fn list_stored(state: &ApiState, info: &ResourceInfo, namespace: Option<&str>) -> Vec<Value> {
    state
        .backend
        .list_objects(
            &info.backend_resource(),
            if info.namespaced { namespace } else { None },
        )
        .into_iter()
        .map(|o| with_type_meta(info, o))
        .collect()
}

fn info_of(workload: Workload) -> &'static ResourceInfo {
    let plural = match workload {
        Workload::Pod => "pods",
        Workload::ReplicaSet => "replicasets",
        Workload::Deployment => "deployments",
        Workload::Job => "jobs",
        Workload::DaemonSet => "daemonsets",
        Workload::StatefulSet => "statefulsets",
        Workload::CronJob => "cronjobs",
    };
    resources::RESOURCES
        .iter()
        .find(|r| r.plural == plural)
        .unwrap_or(&resources::RESOURCES[0])
}

/// Workload objects as served: status computed on read (`workloads.rs`) from the backend's
/// workload view and the pods and ReplicaSets in `namespace` (every namespace if `None`).
fn with_status(
    state: &ApiState,
    workload: Workload,
    namespace: Option<&str>,
    objects: Vec<Value>,
) -> Vec<Value> {
    let view = state.backend.workload_view();
    if workload == Workload::Pod {
        return objects
            .iter()
            .map(|p| workloads::pod_view(p, &view))
            .collect();
    }
    let now = Utc::now();
    let pods: Vec<Value> = list_stored(state, info_of(Workload::Pod), namespace)
        .iter()
        .map(|p| workloads::pod_view(p, &view))
        .collect();
    let pods_of = workloads::by_controller(&pods);
    let no_pods = Vec::new();
    if workload == Workload::DaemonSet {
        let nodes: Vec<_> = state
            .backend
            .nodes()
            .into_iter()
            .map(|n| n.record)
            .collect();
        return objects
            .iter()
            .map(|d| {
                let uid = d["metadata"]["uid"].as_str().unwrap_or_default();
                workloads::daemonset_view(d, pods_of.get(uid).unwrap_or(&no_pods), &nodes, now)
            })
            .collect();
    }
    if workload == Workload::StatefulSet {
        return objects
            .iter()
            .map(|s| {
                let uid = s["metadata"]["uid"].as_str().unwrap_or_default();
                workloads::statefulset_view(s, pods_of.get(uid).unwrap_or(&no_pods), now)
            })
            .collect();
    }
    let job_view = |j: &Value| {
        let uid = j["metadata"]["uid"].as_str().unwrap_or_default();
        workloads::job_view(j, pods_of.get(uid).unwrap_or(&no_pods), now)
    };
    if workload == Workload::Job {
        return objects.iter().map(job_view).collect();
    }
    if workload == Workload::CronJob {
        let jobs: Vec<Value> = list_stored(state, info_of(Workload::Job), namespace)
            .iter()
            .map(job_view)
            .collect();
        let jobs_of = workloads::by_controller(&jobs);
        return objects
            .iter()
            .map(|c| {
                let uid = c["metadata"]["uid"].as_str().unwrap_or_default();
                workloads::cronjob_view(c, jobs_of.get(uid).unwrap_or(&no_pods))
            })
            .collect();
    }
    let rs_view = |rs: &Value| {
        let uid = rs["metadata"]["uid"].as_str().unwrap_or_default();
        workloads::replicaset_view(rs, pods_of.get(uid).unwrap_or(&no_pods), now)
    };
    if workload == Workload::ReplicaSet {
        return objects.iter().map(rs_view).collect();
    }
    let rss: Vec<Value> = list_stored(state, info_of(Workload::ReplicaSet), namespace)
        .iter()
        .map(rs_view)
        .collect();
    let rss_of = workloads::by_controller(&rss);
    objects
        .iter()
        .map(|d| {
            let uid = d["metadata"]["uid"].as_str().unwrap_or_default();
            let owned = rss_of.get(uid).map(Vec::as_slice).unwrap_or_default();
            workloads::deployment_view(d, owned, &pods_of, now)
        })
        .collect()
}

/// Events carry no resourceVersion of this server; theirs is the microsecond of their last
/// occurrence, so that watches started from a list see later ones.
fn event_object(info: &ResourceInfo, event: Value) -> Value {
    let mut event = with_type_meta(info, event);
    if event["metadata"]["resourceVersion"].as_str().is_none() {
        let last = ["lastTimestamp", "eventTime", "firstTimestamp"]
            .iter()
            .filter_map(|f| event[*f].as_str())
            .filter_map(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_micros())
            .max()
            .unwrap_or(0);
        event["metadata"]["resourceVersion"] = json!(last.max(0).to_string());
    }
    event
}

fn is_service(info: &ResourceInfo) -> bool {
    info.group.is_empty() && info.kind == "Service"
}

fn service_info() -> &'static ResourceInfo {
    resources::RESOURCES
        .iter()
        .find(|r| is_service(r))
        .unwrap_or(&resources::RESOURCES[0])
}

/// Endpoints or EndpointSlices, computed from the stored Services and the pods as served.
fn computed(state: &ApiState, info: &ResourceInfo, namespace: Option<&str>) -> Vec<Value> {
    let services = list_stored(state, service_info(), namespace);
    let pods = list_stored(state, info_of(Workload::Pod), namespace);
    let pods = with_status(state, Workload::Pod, namespace, pods);
    if info.kind == "Endpoints" {
        services::endpoints_objects(&services, &pods)
    } else {
        services::endpoint_slices(&services, &pods)
    }
}

/// Every object of `info` (in `namespace` if given), sorted by namespace and name.
pub fn list_all(state: &ApiState, info: &ResourceInfo, namespace: Option<&str>) -> Vec<Value> {
    let mut objects = match info.storage {
        Storage::Nodes => nodes::served(state),
        Storage::Objects => {
            let stored = list_stored(state, info, namespace);
            match info.workload {
                Some(w) => with_status(state, w, namespace, stored),
                None if storage::is_claim(info) => storage::with_claim_status(
                    stored,
                    &list_stored(state, storage_info(storage::is_volume), None),
                ),
                None if storage::is_volume(info) => storage::with_volume_status(
                    stored,
                    &list_stored(state, storage_info(storage::is_claim), None),
                ),
                None if eviction::is_pdb(info) => {
                    let pods = list_stored(state, info_of(Workload::Pod), namespace);
                    let pods = with_status(state, Workload::Pod, namespace, pods);
                    let scales = eviction::scales(state, namespace);
                    stored
                        .into_iter()
                        .map(|b| eviction::with_status(b, &pods, &scales))
                        .collect()
                }
                None => stored,
            }
        }
        Storage::Events => state
            .backend
            .events(namespace)
            .into_iter()
            .map(|e| event_object(info, e))
            .filter(|e| namespace.is_none_or(|ns| e["metadata"]["namespace"] == ns))
            .collect(),
        Storage::Computed => computed(state, info, namespace),
        // Measured, not stored: served by `usage.rs`.
        Storage::Usage => Vec::new(),
    };
    if storage::is_class(info) && !objects.iter().any(|o| o["metadata"]["name"] == LOCAL_PATH) {
        objects.push(builtin_class(state));
    }
    if info.plural == "namespaces" {
        for name in BUILTIN_NAMESPACES {
            if !objects.iter().any(|o| o["metadata"]["name"] == *name) {
                objects.push(builtin_namespace(state, name));
            }
        }
    }
    objects.sort_by_key(sort_key);
    objects
}

/// One object as served (computed status included), with this node's resourceVersion.
pub fn find(
    state: &ApiState,
    info: &ResourceInfo,
    namespace: Option<&str>,
    name: &str,
) -> Option<Value> {
    let key = (
        namespace
            .filter(|_| info.namespaced)
            .unwrap_or_default()
            .to_string(),
        name.to_string(),
    );
    state
        .log
        .with(
            &info.backend_resource(),
            || list_all(state, info, None),
            |log, _| log.get(&key),
        )
        .map(|o| (*o).clone())
}

/// Every object of `info` as served, at the position of this node's change log they are at
/// (the kind's log is refreshed first).
pub fn served(state: &ApiState, info: &ResourceInfo) -> Snapshot {
    state.log.with(
        &info.backend_resource(),
        || list_all(state, info, None),
        |log, position| Snapshot {
            position,
            objects: log.current(),
        },
    )
}

/// The objects of `info` as served at `position` (exact reads, continued lists).
fn served_at(
    state: &ApiState,
    info: &ResourceInfo,
    position: u64,
) -> Result<Vec<Arc<Value>>, Expired> {
    state.log.with(
        &info.backend_resource(),
        || list_all(state, info, None),
        |log, _| log.at(position),
    )
}

/// One object as stored (no computed status): the base of updates.
pub fn find_stored(
    state: &ApiState,
    info: &ResourceInfo,
    namespace: Option<&str>,
    name: &str,
) -> Option<Value> {
    match info.storage {
        Storage::Events => state
            .backend
            .events(namespace)
            .into_iter()
            .map(|e| event_object(info, e))
            .find(|e| e["metadata"]["name"] == name),
        Storage::Nodes => nodes::served(state)
            .into_iter()
            .find(|n| n["metadata"]["name"] == name),
        Storage::Computed => computed(state, info, namespace)
            .into_iter()
            .find(|o| o["metadata"]["name"] == name),
        Storage::Usage => None,
        Storage::Objects => state
            .backend
            .get_object(&key(info, namespace, name))
            .map(|o| with_type_meta(info, o))
            .or_else(|| {
                (info.plural == "namespaces" && BUILTIN_NAMESPACES.contains(&name))
                    .then(|| builtin_namespace(state, name))
            })
            .or_else(|| {
                (storage::is_class(info) && name == LOCAL_PATH).then(|| builtin_class(state))
            }),
    }
}

fn namespace_exists(state: &ApiState, namespace: &str) -> bool {
    BUILTIN_NAMESPACES.contains(&namespace)
        || state
            .backend
            .get_object(&ObjectKey {
                resource: "namespaces".into(),
                namespace: None,
                name: namespace.into(),
            })
            .is_some()
}

fn selectors(query: &Query) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))?;
    let fields = FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str))?;
    Ok((labels, fields))
}

fn watch_request(
    target: &Target,
    query: &Query,
    headers: &HeaderMap,
) -> Result<WatchRequest, ApiError> {
    let (labels, fields) = selectors(query)?;
    let send_initial_events = is_true(query.get("sendInitialEvents"));
    if send_initial_events
        && (query.get("resourceVersionMatch").map(String::as_str) != Some("NotOlderThan")
            || !is_true(query.get("allowWatchBookmarks")))
    {
        return Err(ApiError::BadRequest(
            "sendInitialEvents requires resourceVersionMatch=NotOlderThan and allowWatchBookmarks=true".into(),
        ));
    }
    if let Some(m) = query.get("resourceVersionMatch").filter(|m| !m.is_empty()) {
        if m != "NotOlderThan" || !send_initial_events {
            return Err(ApiError::BadRequest(format!(
                "resourceVersionMatch {m:?} is not supported for watch (only NotOlderThan with sendInitialEvents)"
            )));
        }
    }
    let timeout = match query.get("timeoutSeconds") {
        Some(t) => Some(
            t.parse::<u64>()
                .map_err(|_| ApiError::BadRequest(format!("invalid timeoutSeconds {t:?}")))?,
        ),
        None => None,
    };
    Ok(WatchRequest {
        info: target.info,
        namespace: target.namespace.clone(),
        labels,
        fields,
        resource_version: query
            .get("resourceVersion")
            .cloned()
            .filter(|rv| !rv.is_empty() && rv != "0"),
        timeout_seconds: timeout,
        table: table::negotiate(headers),
        include: IncludeObject::parse(query.get("includeObject").map(String::as_str)),
        bookmarks: is_true(query.get("allowWatchBookmarks")),
        send_initial_events,
    })
}

/// `continue` tokens: the resourceVersion of the first page and the last key it returned,
/// base64url of JSON (opaque to clients).
fn continue_token(rv: &str, last: &(String, String)) -> String {
    let token = json!({"rv": rv, "start": [last.0, last.1]});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

fn parse_continue(token: &str) -> Result<(String, (String, String)), ApiError> {
    let bad = || ApiError::BadRequest(format!("invalid continue token {token:?}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let rv = value["rv"].as_str().ok_or_else(bad)?.to_string();
    let ns = value["start"][0].as_str().ok_or_else(bad)?.to_string();
    let name = value["start"][1].as_str().ok_or_else(bad)?.to_string();
    Ok((rv, (ns, name)))
}

const CONTINUE_TOO_OLD: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.";

/// What a list reads: its objects (sorted by key), the resourceVersion they are at, and where
/// a continued list resumes (after this key).
type ListSource = (Vec<Arc<Value>>, u64, Option<(String, String)>);

/// See [`ListSource`].
fn list_source(
    state: &ApiState,
    info: &ResourceInfo,
    query: &Query,
) -> Result<ListSource, ApiError> {
    let rv = query.get("resourceVersion").filter(|v| !v.is_empty());
    let rv_match = query.get("resourceVersionMatch").filter(|v| !v.is_empty());
    let token = query.get("continue").filter(|v| !v.is_empty());
    if let Some(m) = rv_match {
        if !["Exact", "NotOlderThan"].contains(&m.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "resourceVersionMatch: Unsupported value: {m:?}: supported values: \"Exact\", \"NotOlderThan\""
            )));
        }
        if rv.is_none() {
            return Err(ApiError::BadRequest(
                "resourceVersionMatch is forbidden unless resourceVersion is provided".into(),
            ));
        }
    }
    if let Some(token) = token {
        if rv.is_some() || rv_match.is_some() {
            return Err(ApiError::BadRequest(
                "specifying resourceVersion is not allowed when using continue".into(),
            ));
        }
        let (rv, after) = parse_continue(token)?;
        let position = state
            .log
            .position(&rv)
            .ok_or_else(|| ApiError::Gone(CONTINUE_TOO_OLD.into()))?;
        let objects = served_at(state, info, position)
            .map_err(|_| ApiError::Gone(CONTINUE_TOO_OLD.into()))?;
        return Ok((objects, position, Some(after)));
    }
    let too_old = |rv: &str| {
        ApiError::Gone(format!(
            "too old resource version: {rv} (resourceVersions are per serving node and kept for a window; list again without one)"
        ))
    };
    match (rv.map(String::as_str), rv_match.map(String::as_str)) {
        (Some("0"), Some("Exact")) => Err(ApiError::BadRequest(
            "resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\"".into(),
        )),
        (Some(rv), Some("Exact")) => {
            let position = state.log.position(rv).ok_or_else(|| too_old(rv))?;
            if position > state.log.head() {
                return Err(too_old(rv));
            }
            let objects = served_at(state, info, position).map_err(|_| too_old(rv))?;
            Ok((objects, position, None))
        }
        (None | Some("0"), _) => {
            let snapshot = served(state, info);
            Ok((snapshot.objects, snapshot.position, None))
        }
        // Not older than `rv`: the current state is, when `rv` is this node's.
        (Some(rv), _) => {
            let position = state.log.position(rv).ok_or_else(|| too_old(rv))?;
            let snapshot = served(state, info);
            if position > snapshot.position {
                return Err(too_old(rv));
            }
            Ok((snapshot.objects, snapshot.position, None))
        }
    }
}

fn list(
    state: &ApiState,
    target: &Target,
    query: &Query,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let info = target.info;
    let (labels, fields) = selectors(query)?;
    let limit = match query.get("limit").filter(|v| !v.is_empty()) {
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| ApiError::BadRequest(format!("invalid limit {l:?}")))?,
        None => 0,
    };
    let (objects, position, after) = list_source(state, info, query)?;
    let namespace = target.namespace.as_deref().filter(|_| info.namespaced);
    let mut matching = objects.iter().filter(|o| {
        let key = key_of(o);
        namespace.is_none_or(|ns| key.0 == ns)
            && after.as_ref().is_none_or(|a| key > *a)
            && labels.matches(o)
            && fields.matches(o)
    });
    let items: Vec<Value> = match limit {
        0 => matching.by_ref().map(|o| (**o).clone()).collect(),
        n => matching.by_ref().take(n).map(|o| (**o).clone()).collect(),
    };
    let remaining = matching.count();
    let resource_version = state.log.rv(position);
    let mut metadata = json!({"resourceVersion": resource_version});
    if remaining > 0 {
        if let Some(last) = items.last() {
            metadata["continue"] = json!(continue_token(&resource_version, &key_of(last)));
            metadata["remainingItemCount"] = json!(remaining);
        }
    }
    let body = match table::negotiate(headers) {
        Some(table_version) => {
            let include = IncludeObject::parse(query.get("includeObject").map(String::as_str));
            let mut table = table::table(
                info,
                table_version,
                &items,
                &resource_version,
                include,
                Utc::now(),
            );
            table["metadata"] = metadata;
            table
        }
        None => json!({
            "kind": format!("{}List", info.kind),
            "apiVersion": info.api_version(),
            "metadata": metadata,
            "items": items,
        }),
    };
    Ok(json_response(StatusCode::OK, &body))
}

fn get(
    state: &ApiState,
    target: &Target,
    name: &str,
    query: &Query,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let info = target.info;
    let object = find(state, info, target.namespace.as_deref(), name)
        .ok_or_else(|| ApiError::not_found(info.plural, name))?;
    let body = match table::negotiate(headers) {
        Some(table_version) => {
            let include = IncludeObject::parse(query.get("includeObject").map(String::as_str));
            let rv = object["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            table::table(
                info,
                table_version,
                std::slice::from_ref(&object),
                &rv,
                include,
                Utc::now(),
            )
        }
        None => object,
    };
    Ok(json_response(StatusCode::OK, &body))
}

pub fn dry_run(query: &Query) -> bool {
    query.get("dryRun").is_some_and(|v| v == "All")
}

fn with_warnings(mut response: Response, warnings: &[String]) -> Response {
    for warning in warnings {
        let text = format!("299 - {:?}", warning);
        if let Ok(value) = HeaderValue::from_str(&text) {
            response.headers_mut().append("Warning", value);
        }
    }
    response
}

/// Namespace from the URL; the body may repeat it but not contradict it.
fn settle_namespace(target: &Target, object: &mut Value) -> Result<(), ApiError> {
    let meta = &mut object["metadata"];
    if !target.info.namespaced {
        if let Some(map) = meta.as_object_mut() {
            map.remove("namespace");
        }
        return Ok(());
    }
    let url_ns = target.namespace.clone().unwrap_or_default();
    match meta["namespace"].as_str() {
        None | Some("") => meta["namespace"] = json!(url_ns),
        Some(ns) if ns == url_ns => {}
        Some(_) => return Err(ApiError::BadRequest(
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
        )),
    }
    Ok(())
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .take(5)
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

fn create(
    state: &ApiState,
    target: &Target,
    query: &Query,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let owner = FieldOwner::update(query, headers, "")?;
    create_object(state, target, query, decode(headers, body)?, &owner)
}

/// Creates `object` (decoded from a create body, or made by a server-side apply).
fn create_object(
    state: &ApiState,
    target: &Target,
    query: &Query,
    mut object: Value,
    owner: &FieldOwner,
) -> Result<Response, ApiError> {
    let info = target.info;
    check_type_meta(info, &mut object)?;
    let mut warnings = validate_fields(info, &mut object, query)?;
    settle_namespace(target, &mut object)?;
    let mut name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if name.is_empty() {
        if let Some(prefix) = object["metadata"]["generateName"]
            .as_str()
            .filter(|p| !p.is_empty())
        {
            name = format!("{prefix}{}", random_suffix());
        }
    }
    validate_name(info, &name)?;
    if let Some(ns) = target.namespace.as_deref().filter(|_| info.namespaced) {
        if !namespace_exists(state, ns) {
            return Err(ApiError::not_found("namespaces", ns));
        }
    }
    // The uid exists before admission: a Job's selector and pod labels name it.
    let uid = uuid::Uuid::new_v4().to_string();
    if let Some(meta) = object["metadata"].as_object_mut() {
        meta.insert("uid".into(), json!(uid));
    }
    admit(info, &mut object, None, &name)?;
    warnings.extend(pod_security::admit(state, info, &object, None, &name)?);
    record_owner(info, &name, None, &mut object, owner)?;
    if find_stored(state, info, target.namespace.as_deref(), &name).is_some() {
        return Err(ApiError::AlreadyExists {
            resource: info.plural.into(),
            name,
        });
    }
    let meta = object["metadata"]
        .as_object_mut()
        .ok_or_else(|| ApiError::BadRequest("metadata must be an object".into()))?;
    meta.insert("name".into(), json!(name));
    meta.insert("uid".into(), json!(uid));
    meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
    meta.insert("resourceVersion".into(), json!(state.versions.next()));
    meta.insert("generation".into(), json!(1));
    for field in [
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
    ] {
        meta.remove(field);
    }
    if info.plural == "namespaces" {
        meta.entry("labels").or_insert_with(|| json!({}))["kubernetes.io/metadata.name"] =
            json!(name);
        if object["spec"]["finalizers"].is_null() {
            object["spec"] = json!({"finalizers": ["kubernetes"]});
        }
        object["status"] = json!({"phase": "Active"});
    }
    let dry = dry_run(query);
    let object = persist(
        state,
        info,
        key(info, target.namespace.as_deref(), &name),
        object,
        dry,
    )?;
    let object = as_served(state, info, target.namespace.as_deref(), &name, object, dry);
    Ok(with_warnings(
        json_response(StatusCode::CREATED, &object),
        &warnings,
    ))
}

/// What a write replies: the object as a read would now serve it (computed status, this
/// node's resourceVersion); for a dry run, the object with its status computed.
fn as_served(
    state: &ApiState,
    info: &ResourceInfo,
    namespace: Option<&str>,
    name: &str,
    stored: Value,
    dry: bool,
) -> Value {
    let stored = with_type_meta(info, stored);
    if dry {
        return match info.workload {
            Some(w) => with_status(state, w, namespace, vec![stored.clone()])
                .pop()
                .unwrap_or(stored),
            None => stored,
        };
    }
    find(state, info, namespace, name).unwrap_or(stored)
}

/// Defaults and validates workload objects (`admission.rs`); other kinds pass.
fn admit(
    info: &ResourceInfo,
    object: &mut Value,
    old: Option<&Value>,
    name: &str,
) -> Result<(), ApiError> {
    let causes = match info.workload {
        Some(workload) => {
            admission::default(workload, object);
            // Objects written by the controllers are stored as they made them: compare an
            // update with the old object defaulted the same way, so that changing only
            // labels or annotations of a controller's pod is not seen as a spec change.
            let old = old.map(|o| {
                let mut o = o.clone();
                admission::default(workload, &mut o);
                o
            });
            admission::validate(workload, object, old.as_ref())
        }
        None if is_service(info) => {
            if let Some(old) = old {
                services::carry_over(object, old);
            }
            services::default(object);
            services::validate(object, old)
        }
        None if eviction::is_pdb(info) => eviction::validate(object),
        None if storage::is_claim(info) => {
            storage::strip_served_volume_name(object);
            storage::default_claim(object);
            if old.is_none() {
                // Kubernetes' StorageObjectInUseProtection admission: kept while in use.
                crate::model::storage::with_finalizer(
                    object,
                    crate::model::storage::PVC_PROTECTION,
                );
            }
            storage::validate_claim(object, old)
        }
        None if storage::is_class(info) => {
            storage::default_class(object);
            storage::validate_class(object, old)
        }
        None if storage::is_volume(info) => storage::validate_volume(object, old),
        None if revisions::is_revision(info) => revisions::validate(object, old),
        None => return Ok(()),
    };
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Invalid {
            kind: info.qualified_kind(),
            name: name.to_string(),
            causes,
        })
    }
}

/// Carries the server-owned metadata of `existing` into `object`, bumps resourceVersion and,
/// when anything outside metadata and status changed, generation.
fn update_metadata(state: &ApiState, existing: &Value, object: &mut Value) {
    let changed_spec = {
        let strip = |v: &Value| {
            let mut v = v.clone();
            if let Some(m) = v.as_object_mut() {
                m.remove("metadata");
                m.remove("status");
            }
            v
        };
        strip(existing) != strip(object)
    };
    let old = &existing["metadata"];
    let generation = old["generation"].as_i64().unwrap_or(1) + i64::from(changed_spec);
    let meta = &mut object["metadata"];
    meta["uid"] = old["uid"].clone();
    meta["creationTimestamp"] = old["creationTimestamp"].clone();
    meta["generation"] = json!(generation);
    meta["resourceVersion"] = json!(state.versions.next());
    // A deletion in progress is the server's: an update neither starts, moves nor ends it.
    meta["deletionTimestamp"] = old["deletionTimestamp"].clone();
    meta["deletionGracePeriodSeconds"] = old["deletionGracePeriodSeconds"].clone();
    if let Some(map) = meta.as_object_mut() {
        map.retain(|_, v| !v.is_null());
    }
}

/// Shared tail of replace, patch and scale: checks, metadata, store. `existing` is the
/// stored object (without computed status).
#[allow(clippy::too_many_arguments)]
fn store_update(
    state: &ApiState,
    target: &Target,
    name: &str,
    existing: &Value,
    object: Value,
    query: &Query,
    owner: &FieldOwner,
    mut warnings: Vec<String>,
) -> Result<Response, ApiError> {
    let object = store(
        state,
        target,
        name,
        existing,
        object,
        query,
        owner,
        &mut warnings,
    )?;
    let namespace = target.namespace.as_deref();
    let object = as_served(state, target.info, namespace, name, object, dry_run(query));
    Ok(with_warnings(
        json_response(StatusCode::OK, &object),
        &warnings,
    ))
}

/// Checks, completes and stores an updated object; returns what was stored. Admission's
/// warnings are added to `warnings`; `owner`'s fields are recorded in `managedFields`.
#[allow(clippy::too_many_arguments)]
pub fn store(
    state: &ApiState,
    target: &Target,
    name: &str,
    existing: &Value,
    mut object: Value,
    query: &Query,
    owner: &FieldOwner,
    warnings: &mut Vec<String>,
) -> Result<Value, ApiError> {
    let info = target.info;
    settle_namespace(target, &mut object)?;
    let body_name = object["metadata"]["name"].as_str().unwrap_or_default();
    if body_name.is_empty() {
        object["metadata"]["name"] = json!(name);
    } else if body_name != name {
        return Err(ApiError::BadRequest(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    let wanted_rv = object["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default();
    let current_rv = existing["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default();
    // A client may send back the resourceVersion it read, which for workloads covers
    // computed status (`workloads.rs`).
    let served_rv = || {
        find(state, info, target.namespace.as_deref(), name).and_then(|o| {
            o["metadata"]["resourceVersion"]
                .as_str()
                .map(str::to_string)
        })
    };
    if !wanted_rv.is_empty() && wanted_rv != current_rv && served_rv().as_deref() != Some(wanted_rv)
    {
        return Err(ApiError::Conflict {
            resource: info.plural.into(),
            name: name.into(),
            message: "the object has been modified; please apply your changes to the latest version and try again".into(),
        });
    }
    if existing["immutable"] == json!(true) && existing.get("data") != object.get("data") {
        return Err(ApiError::invalid(
            info.kind,
            name,
            "data",
            "",
            "field is immutable when `immutable` is set",
        ));
    }
    if info.storage == Storage::Nodes {
        // Users' labels, annotations, taints and cordon, beside the node's own record.
        return nodes::store(state, name, &object, dry_run(query));
    }
    admit(info, &mut object, Some(existing), name)?;
    warnings.extend(pod_security::admit(
        state,
        info,
        &object,
        Some(existing),
        name,
    )?);
    record_owner(info, name, Some(existing), &mut object, owner)?;
    update_metadata(state, existing, &mut object);
    persist(
        state,
        info,
        key(info, target.namespace.as_deref(), name),
        object,
        dry_run(query),
    )
}

/// Stores `object` (unless `dry`) and returns it. A Service first gets its ClusterIP and
/// NodePorts, chosen against the other stored Services under the backend's write lock
/// (`services::allocate`); a dry run chooses them the same way without storing.
fn persist(
    state: &ApiState,
    info: &ResourceInfo,
    key: ObjectKey,
    object: Value,
    dry: bool,
) -> Result<Value, ApiError> {
    if !is_service(info) {
        if !dry {
            state.backend.put_object(&key, object.clone())?;
        }
        return Ok(object);
    }
    let range = state.backend.service_cidr();
    let cidr = crate::model::network::parse_cidr(&range)
        .ok_or_else(|| ApiError::Internal(format!("invalid service CIDR {range:?}")))?;
    let resource = info.backend_resource();
    let mut complete = |others: Vec<Value>| -> Result<Value, ApiError> {
        let mut completed = object.clone();
        services::allocate(&mut completed, &others, cidr).map_err(|causes| ApiError::Invalid {
            kind: info.qualified_kind(),
            name: key.name.clone(),
            causes,
        })?;
        Ok(completed)
    };
    if dry {
        complete(state.backend.list_objects(&resource, None))
    } else {
        state
            .backend
            .put_object_with(&key, &resource, &mut complete)
    }
}

fn replace(
    state: &ApiState,
    target: &Target,
    name: &str,
    query: &Query,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let info = target.info;
    let mut object = decode(headers, body)?;
    check_type_meta(info, &mut object)?;
    let warnings = validate_fields(info, &mut object, query)?;
    let existing = find_stored(state, info, target.namespace.as_deref(), name)
        .ok_or_else(|| ApiError::not_found(info.plural, name))?;
    let owner = FieldOwner::update(query, headers, "")?;
    store_update(
        state, target, name, &existing, object, query, &owner, warnings,
    )
}

fn patch(
    state: &ApiState,
    target: &Target,
    name: &str,
    query: &Query,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let info = target.info;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if media_type(headers, "") == "application/apply-patch+yaml" {
        return server_side_apply(state, target, name, query, body);
    }
    if query.contains_key("force") {
        return Err(options_invalid(
            "force",
            "Forbidden: may not be specified for non-apply patch".into(),
        ));
    }
    let owner = FieldOwner::update(query, headers, "")?;
    let kind = PatchKind::from_content_type(content_type)
        .ok_or_else(|| ApiError::UnsupportedMediaType(PatchKind::refusal(content_type)))?;
    let patch_body: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("the patch is not valid JSON: {e}")))?;
    let existing = find_stored(state, info, target.namespace.as_deref(), name)
        .ok_or_else(|| ApiError::not_found(info.plural, name))?;
    let base = workloads::patch_base(info.kind, &existing);
    let mut patched =
        patch::apply(kind, &base, &patch_body, info.merge_keys).map_err(|e| e.to_api())?;
    if !patched.is_object() {
        return Err(ApiError::BadRequest(
            "the patch does not leave an object".into(),
        ));
    }
    check_type_meta(info, &mut patched)?;
    let warnings = validate_fields(info, &mut patched, query)?;
    store_update(
        state, target, name, &existing, patched, query, &owner, warnings,
    )
}

/// A server-side apply (`PATCH` with `application/apply-patch+yaml`, `api/apply.rs`): creates
/// the object if absent, else merges it by field ownership; conflicts are `409` naming the
/// managers and fields unless `force=true`.
fn server_side_apply(
    state: &ApiState,
    target: &Target,
    name: &str,
    query: &Query,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let info = target.info;
    if info.storage == Storage::Nodes {
        return Err(ApiError::UnsupportedMediaType(
            "server-side apply is not supported for nodes: use kubectl label, annotate, taint \
             or cordon, or a merge patch"
                .into(),
        ));
    }
    if query.get("fieldManager").is_none_or(|m| m.is_empty()) {
        return Err(options_invalid(
            "fieldManager",
            "Required value: is required for apply patch".into(),
        ));
    }
    let manager = field_manager(query, &HeaderMap::new())?;
    let force = match query.get("force").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "force must be true or false, not {other:?}"
            )))
        }
    };
    let mut applied: Value = serde_yaml::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!(
            "error decoding YAML: the applied configuration is not valid YAML or JSON: {e}"
        ))
    })?;
    if !applied.is_object() {
        return Err(ApiError::BadRequest(
            "the applied configuration must be an object (a YAML mapping or a JSON object)".into(),
        ));
    }
    check_type_meta(info, &mut applied)?;
    match applied["metadata"]["name"].as_str() {
        Some(n) if n == name => {}
        Some(n) => {
            return Err(ApiError::BadRequest(format!(
                "the name of the applied object ({n}) does not match the name in the path ({name})"
            )))
        }
        None => applied["metadata"]["name"] = json!(name),
    }
    settle_namespace(target, &mut applied)?;
    // Types and unknown fields are checked (and unknown fields pruned) as for any write,
    // before ownership is computed, so that nobody owns a field that is not stored.
    let warnings = validate_fields(info, &mut applied, query)?;
    let existing = find_stored(state, info, target.namespace.as_deref(), name);
    let api_version = info.api_version();
    let now = now_rfc3339();
    let request = apply::Apply {
        manager: &manager,
        force,
        api_version: &api_version,
        now: &now,
        keys: info.merge_keys,
    };
    let base = existing
        .as_ref()
        .map(|e| workloads::patch_base(info.kind, e));
    let object = apply::apply(base.as_ref(), &applied, &request)
        .map_err(|e| ownership_error(info, name, e))?;
    let response = match existing {
        None => create_object(state, target, query, object, &FieldOwner::Applied)?,
        Some(existing) => {
            let mut object = object;
            check_type_meta(info, &mut object)?;
            let more = validate_fields(info, &mut object, query)?;
            store_update(
                state,
                target,
                name,
                &existing,
                object,
                query,
                &FieldOwner::Applied,
                more,
            )?
        }
    };
    Ok(with_warnings(response, &warnings))
}

/// `DeleteOptions` from the body (JSON, or protobuf as kubectl's typed clients send it)
/// merged with the query's `dryRun`.
fn delete_options(query: &Query, body: &Bytes) -> Result<(Value, bool), ApiError> {
    let options: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else if body.starts_with(super::proto::MAGIC) {
        super::proto::decode_as(body, super::proto::DELETE_OPTIONS)
            .map_err(|e| ApiError::BadRequest(format!("invalid DeleteOptions: {e}")))?
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("invalid DeleteOptions: {e}")))?
    };
    let dry = dry_run(query)
        || options["dryRun"]
            .as_array()
            .is_some_and(|d| d.iter().any(|v| v == "All"));
    Ok((options, dry))
}

/// The fields of `DeleteOptions` shoal cannot honour, refused rather than ignored (`docs/api.md`, "Deleting"): `dryRun` other than `All`;
/// `propagationPolicy` other than `Background` and `orphanDependents: true` (dependents are
/// always collected in the background); a `gracePeriodSeconds` that is not an integer.
/// Preconditions and a pod's grace period are honoured by [`delete_one`].
pub(super) fn delete_options_refusals(options: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let unsupported = |field: &str, value: &Value, supported: &str| Cause {
        reason: "FieldValueNotSupported".into(),
        field: field.into(),
        message: format!("Unsupported value: {value}: supported values: {supported}"),
    };
    match &options["dryRun"] {
        Value::Null => {}
        Value::Array(values) if values.iter().all(|v| v == "All") => {}
        other => causes.push(unsupported("dryRun", other, "\"All\"")),
    }
    let policy = &options["propagationPolicy"];
    if !policy.is_null() && policy != "Background" {
        causes.push(unsupported(
            "propagationPolicy",
            policy,
            "\"Background\" (shoal collects dependents in the background)",
        ));
    }
    match &options["orphanDependents"] {
        Value::Null | Value::Bool(false) => {}
        other => causes.push(unsupported(
            "orphanDependents",
            other,
            "false (shoal collects dependents in the background)",
        )),
    }
    let grace = &options["gracePeriodSeconds"];
    if !grace.is_null() && grace.as_i64().is_none() {
        causes.push(Cause {
            reason: "FieldValueInvalid".into(),
            field: "gracePeriodSeconds".into(),
            message: format!("Invalid value: {grace}: must be an integer number of seconds"),
        });
    }
    causes
}

/// Kinds whose DELETE answers the deleted object (Kubernetes' `ReturnDeletedObject`); the
/// others answer a success `Status`.
fn returns_deleted_object(info: &ResourceInfo) -> bool {
    info.group.is_empty() && matches!(info.kind, "Pod" | "Service" | "Namespace")
}

fn delete(
    state: &ApiState,
    target: &Target,
    name: &str,
    query: &Query,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let (options, dry) = delete_options(query, body)?;
    let deleted = delete_one(
        state,
        target.info,
        target.namespace.as_deref(),
        name,
        &options,
        dry,
    )?;
    // Kubernetes answers 202 for a deletion still pending when the client asked for
    // `orphanDependents: false` explicitly, 200 otherwise.
    let code = if deleted.pending && options["orphanDependents"] == json!(false) {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok(json_response(code, &deleted.reply))
}

/// What deleting one object did.
pub(super) struct Deleted {
    /// What DELETE answers for its kind.
    pub reply: Value,
    /// The object stays, terminating (a Pod's graceful deletion).
    pub pending: bool,
}

fn is_pod(info: &ResourceInfo) -> bool {
    info.group.is_empty() && info.kind == "Pod" && info.storage == Storage::Objects
}

/// Deletes one object; returns what DELETE answers for its kind.
pub(super) fn delete_one(
    state: &ApiState,
    info: &ResourceInfo,
    namespace: Option<&str>,
    name: &str,
    options: &Value,
    dry: bool,
) -> Result<Deleted, ApiError> {
    let existing = find_stored(state, info, namespace, name)
        .ok_or_else(|| ApiError::not_found(info.plural, name))?;
    let refused = delete_options_refusals(options);
    if !refused.is_empty() {
        return Err(ApiError::Invalid {
            kind: "DeleteOptions.meta.k8s.io".into(),
            name: String::new(),
            causes: refused,
        });
    }
    let served = find(state, info, namespace, name).unwrap_or_else(|| existing.clone());
    let uid = existing["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let preconditions = &options["preconditions"];
    let rv_of = |o: &Value| {
        o["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let uid_failed = preconditions["uid"]
        .as_str()
        .is_some_and(|want| want != uid);
    // The resourceVersion a client read here (this node's) or the stored one.
    let rv_failed = preconditions["resourceVersion"]
        .as_str()
        .is_some_and(|want| want != rv_of(&existing) && want != rv_of(&served));
    if uid_failed || rv_failed {
        return Err(ApiError::Conflict {
            resource: info.plural.into(),
            name: name.into(),
            message: "the precondition in DeleteOptions does not match the object".into(),
        });
    }
    if info.plural == "namespaces" && BUILTIN_NAMESPACES.contains(&name) {
        return Err(ApiError::Forbidden(format!(
            "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
        )));
    }
    if storage::is_class(info) && name == LOCAL_PATH {
        return Err(ApiError::Forbidden(format!(
            "storageclasses.storage.k8s.io \"{name}\" is forbidden: local-path is shoal's built-in StorageClass"
        )));
    }
    if is_pod(info) {
        let pod = PodDeletionRequest {
            namespace,
            name,
            existing: &existing,
            served: &served,
        };
        if let Some(pending) = delete_pod_gracefully(state, info, &pod, options, dry)? {
            return Ok(Deleted {
                reply: pending,
                pending: true,
            });
        }
    }
    if (storage::is_claim(info) || storage::is_volume(info))
        && !crate::model::storage::finalizers(&existing).is_empty()
    {
        // Kept, terminating, until the leader finds nothing holds it (`sched::volumes::release`).
        if !existing["metadata"]["deletionTimestamp"].is_null() {
            return Ok(Deleted {
                reply: served,
                pending: true,
            });
        }
        let mut marked = existing.clone();
        storage::mark_terminating(&mut marked, Utc::now());
        marked["metadata"]["resourceVersion"] = json!(state.versions.next());
        let stored = persist(state, info, key(info, namespace, name), marked, dry)?;
        return Ok(Deleted {
            reply: as_served(state, info, namespace, name, stored, dry),
            pending: true,
        });
    }
    if !dry {
        match info.storage {
            Storage::Nodes => {
                state.backend.delete_node(name)?;
                nodes::forget(state, name)?;
            }
            Storage::Events | Storage::Computed | Storage::Usage => {
                return Err(ApiError::MethodNotAllowed)
            }
            Storage::Objects => {
                if info.plural == "namespaces" {
                    delete_namespace_contents(state, name)?;
                }
                state.backend.delete_object(&key(info, namespace, name))?;
            }
        }
    }
    let reply = if returns_deleted_object(info) {
        served
    } else {
        let mut status = success_status(info.plural, name, Some(&uid));
        status["details"]["group"] = json!(info.group);
        status
    };
    Ok(Deleted {
        reply,
        pending: false,
    })
}

/// The pod a `DELETE` is about.
struct PodDeletionRequest<'a> {
    namespace: Option<&'a str>,
    name: &'a str,
    /// As stored.
    existing: &'a Value,
    /// As served (computed status).
    served: &'a Value,
}

/// Graceful deletion of a pod (`graceful.rs`): marks it terminating (or shortens its pending
/// deletion) and returns the object as now served, for its node's kubelet to stop its
/// containers and then remove it; `None` when it is to be removed at once (forced, never
/// placed, its node dead in this agent's view, ended, or its pending deletion cut to 0).
fn delete_pod_gracefully(
    state: &ApiState,
    info: &ResourceInfo,
    pod: &PodDeletionRequest,
    options: &Value,
    dry: bool,
) -> Result<Option<Value>, ApiError> {
    let view = state.backend.workload_view();
    let meta = &pod.existing["metadata"];
    let uid = meta["uid"].as_str().unwrap_or_default();
    let namespace = pod.namespace.unwrap_or("default");
    let binding = view
        .bindings
        .get(&(namespace.to_string(), pod.name.to_string()));
    let user_node = pod.existing["spec"]["nodeName"]
        .as_str()
        .unwrap_or_default();
    let placed_on = crate::model::workload::placement(uid, user_node, binding).map(|(n, _)| n);
    let placed_on_live_node = placed_on.as_ref().is_some_and(|node| {
        matches!(
            view.node_readiness.get(node),
            Some(Readiness::Ready | Readiness::Suspect)
        )
    });
    let fenced = crate::sched::statefulset::holds_identity(pod.existing)
        && !crate::sched::statefulset::identity_released(placed_on.as_deref(), |n| {
            view.node_readiness.contains_key(n)
        });
    let phase = pod.served["status"]["phase"].as_str().unwrap_or_default();
    let facts = graceful::PodFacts {
        fenced,
        placed_on_live_node,
        ended: matches!(phase, "Succeeded" | "Failed"),
    };
    let requested = options["gracePeriodSeconds"].as_i64();
    match graceful::decide(pod.existing, requested, facts, Utc::now()) {
        graceful::PodDeletion::Now => Ok(None),
        graceful::PodDeletion::Pending => Ok(Some(pod.served.clone())),
        graceful::PodDeletion::Mark {
            deletion_timestamp,
            grace,
        } => {
            let mut marked = pod.existing.clone();
            graceful::mark(&mut marked, deletion_timestamp, grace);
            marked["metadata"]["resourceVersion"] = json!(state.versions.next());
            let stored = persist(state, info, key(info, pod.namespace, pod.name), marked, dry)?;
            Ok(Some(as_served(
                state,
                info,
                pod.namespace,
                pod.name,
                stored,
                dry,
            )))
        }
    }
}

/// `DELETE` of a collection: every object matching the label and field selectors (in the
/// namespace of the path, if any) is deleted; the reply lists what was deleted.
fn delete_collection(
    state: &ApiState,
    target: &Target,
    query: &Query,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let info = target.info;
    let (labels, fields) = selectors(query)?;
    let (options, dry) = delete_options(query, body)?;
    let namespace = target.namespace.as_deref().filter(|_| info.namespaced);
    let snapshot = served(state, info);
    let mut deleted = Vec::new();
    for object in snapshot.objects.iter().filter(|o| {
        namespace.is_none_or(|ns| key_of(o).0 == ns) && labels.matches(o) && fields.matches(o)
    }) {
        let (ns, name) = key_of(object);
        let ns = Some(ns.as_str()).filter(|_| info.namespaced);
        match delete_one(state, info, ns, &name, &options, dry) {
            Ok(d) if returns_deleted_object(info) => deleted.push(d.reply),
            Ok(_) => deleted.push((**object).clone()),
            // Gone in between (another client, another node): not an error.
            Err(ApiError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let position = served(state, info).position;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", info.kind),
            "apiVersion": info.api_version(),
            "metadata": {"resourceVersion": state.log.rv(position)},
            "items": deleted,
        }),
    ))
}

/// Deleting a namespace deletes every object in it.
fn delete_namespace_contents(state: &ApiState, namespace: &str) -> Result<(), ApiError> {
    for info in resources::RESOURCES
        .iter()
        .filter(|r| r.namespaced && r.storage == Storage::Objects)
    {
        for object in state
            .backend
            .list_objects(&info.backend_resource(), Some(namespace))
        {
            if let Some(name) = object["metadata"]["name"].as_str() {
                state
                    .backend
                    .delete_object(&key(info, Some(namespace), name))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_options_shoal_cannot_honour_are_refused() {
        let refused = |options: Value| -> Vec<String> {
            delete_options_refusals(&options)
                .into_iter()
                .map(|c| format!("{}: {}", c.field, c.message))
                .collect()
        };
        for ok in [
            json!({}),
            json!({"propagationPolicy": "Background", "dryRun": ["All"]}),
            json!({"gracePeriodSeconds": 0}),
            json!({"gracePeriodSeconds": 1}),
            json!({"gracePeriodSeconds": 5, "orphanDependents": false}),
            json!({"preconditions": {"uid": "u"}}),
        ] {
            assert_eq!(refused(ok.clone()), Vec::<String>::new(), "{ok}");
        }
        assert_eq!(
            refused(json!({"gracePeriodSeconds": "soon"})),
            ["gracePeriodSeconds: Invalid value: \"soon\": must be an integer number of seconds"]
        );
        assert_eq!(
            refused(json!({"propagationPolicy": "Orphan", "orphanDependents": true, "dryRun": ["Some"]})),
            [
                "dryRun: Unsupported value: [\"Some\"]: supported values: \"All\"",
                "propagationPolicy: Unsupported value: \"Orphan\": supported values: \"Background\" (shoal collects dependents in the background)",
                "orphanDependents: Unsupported value: true: supported values: false (shoal collects dependents in the background)",
            ]
        );
        assert_eq!(refused(json!({"propagationPolicy": "Foreground"})).len(), 1);
    }

    #[test]
    fn resource_versions_increase() {
        let versions = ResourceVersions::default();
        let a: u64 = versions.next().parse().unwrap();
        let b: u64 = versions.next().parse().unwrap();
        assert!(b > a);
    }
}
