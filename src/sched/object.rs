//! Read-only accessors over stored Kubernetes objects (JSON): name, namespace, uid, the
//! controller owner reference, and the metadata new objects get from a leader.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

pub fn name(v: &Value) -> &str {
    v["metadata"]["name"].as_str().unwrap_or("")
}

pub fn namespace(v: &Value) -> &str {
    v["metadata"]["namespace"].as_str().unwrap_or("default")
}

pub fn uid(v: &Value) -> &str {
    v["metadata"]["uid"].as_str().unwrap_or("")
}

/// The owner reference with `controller: true`: `(kind, uid)`.
pub fn controller(v: &Value) -> Option<(&str, &str)> {
    v["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"].as_bool() == Some(true))
        .and_then(|r| Some((r["kind"].as_str()?, r["uid"].as_str()?)))
}

/// An owner reference naming `owner` (a Deployment or ReplicaSet) as controller.
pub fn owner_reference(owner: &Value, kind: &str) -> Value {
    owner_reference_of(owner, "apps/v1", kind)
}

/// An owner reference naming `owner` (of `api_version`, `kind`) as controller.
pub fn owner_reference_of(owner: &Value, api_version: &str, kind: &str) -> Value {
    json!([{
        "apiVersion": api_version,
        "kind": kind,
        "name": name(owner),
        "uid": uid(owner),
        "controller": true,
        "blockOwnerDeletion": true,
    }])
}

/// Being deleted (`metadata.deletionTimestamp` set): a terminating pod, which its node's
/// kubelet removes once its containers have stopped. Controllers do not count it.
pub fn is_terminating(v: &Value) -> bool {
    !v["metadata"]["deletionTimestamp"].is_null()
}

/// A usable object: it has a name and a uid.
pub fn is_valid(v: &Value) -> bool {
    !name(v).is_empty() && !uid(v).is_empty()
}

/// `resourceVersion` a leader gives what it writes: microseconds since the epoch, the same
/// scale the API uses.
pub fn resource_version(now: DateTime<Utc>) -> String {
    now.timestamp_micros().max(0).to_string()
}

pub fn timestamp(now: DateTime<Utc>) -> String {
    now.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `metadata.labels` as string pairs (non-string values skipped).
pub fn labels(v: &Value) -> impl Iterator<Item = (&str, &str)> {
    v["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.iter())
        .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
}
