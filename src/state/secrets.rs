//! Secrets between the document and their readers: the API's backend seals a Secret when it
//! is written and opens it when it is read (`crate::security::seal_secret`); the kubelet reads
//! Secrets through [`get_secret`]. A Secret that does not open is logged by name (never by
//! value) and read as missing.

use serde_json::Value;

use super::Shared;
use crate::security::ClusterIdentity;

/// The backend resource Secrets are stored under.
pub const SECRETS: &str = "secrets";

/// The stored form of `object` for `resource` (sealed for Secrets).
pub fn to_stored(
    identity: &ClusterIdentity,
    resource: &str,
    namespace: Option<&str>,
    name: &str,
    object: &Value,
) -> Value {
    if resource != SECRETS {
        return object.clone();
    }
    crate::security::seal_secret(identity, namespace.unwrap_or_default(), name, object)
}

/// The plain form of a stored object of `resource`; `None` for a Secret that does not open.
pub fn from_stored(
    identity: &ClusterIdentity,
    resource: &str,
    namespace: Option<&str>,
    name: &str,
    stored: Value,
) -> Option<Value> {
    if resource != SECRETS {
        return Some(stored);
    }
    let namespace = namespace.unwrap_or_default();
    match crate::security::open_secret(identity, namespace, name, stored) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(%namespace, secret = %name, %e, "a stored Secret does not open");
            None
        }
    }
}

/// The plain Secret `namespace/name` from the merged document, if it exists and opens.
pub fn get_secret(shared: &Shared, namespace: &str, name: &str) -> Option<Value> {
    let stored = shared
        .read(|d| d.get_object(SECRETS, Some(namespace), name))
        .ok()
        .flatten()?;
    from_stored(&shared.identity, SECRETS, Some(namespace), name, stored)
}
