//! Secrets at rest: a Secret object's values (`data`, and any field that is not its identity)
//! are sealed into one `sealed` field before the object enters the replicated document, bound
//! to the Secret's namespace and name; reads open them again. The document (and so every
//! node's data dir, its history and `shoal backup`) only ever holds the ciphertext.
//!
//! Stored form: `{"apiVersion", "kind", "metadata", "type", "immutable", "sealed": "<base64>"}`
//! where `sealed` is `seal(identity, "secret:<namespace>/<name>", JSON of the other fields)`.

use base64::Engine;
use serde_json::{Map, Value};

use super::{open, seal, ClusterIdentity, SecurityError};

/// The field holding the sealed values.
pub const SEALED_FIELD: &str = "sealed";
/// Fields that stay readable: what lists, tables, selectors and watches need.
const PLAIN_FIELDS: &[&str] = &["apiVersion", "kind", "metadata", "type", "immutable"];

fn purpose(namespace: &str, name: &str) -> String {
    format!("secret:{namespace}/{name}")
}

/// The stored form of a plain Secret object (one already sealed is returned as it is).
pub fn seal_secret(
    identity: &ClusterIdentity,
    namespace: &str,
    name: &str,
    object: &Value,
) -> Value {
    let Some(map) = object.as_object() else {
        return object.clone();
    };
    if map.contains_key(SEALED_FIELD) {
        return object.clone();
    }
    let mut stored = Map::new();
    let mut secret = Map::new();
    for (k, v) in map {
        if PLAIN_FIELDS.contains(&k.as_str()) {
            stored.insert(k.clone(), v.clone());
        } else {
            secret.insert(k.clone(), v.clone());
        }
    }
    // Serializing a JSON map cannot fail.
    let plain = serde_json::to_vec(&Value::Object(secret)).unwrap_or_default();
    let sealed = seal(identity, &purpose(namespace, name), &plain);
    stored.insert(
        SEALED_FIELD.into(),
        Value::String(base64::engine::general_purpose::STANDARD.encode(sealed)),
    );
    Value::Object(stored)
}

/// The plain Secret object of a stored one (objects without a `sealed` field are returned as
/// they are). Fails when the sealed values do not open (another cluster's secret, another
/// namespace/name, or tampering).
pub fn open_secret(
    identity: &ClusterIdentity,
    namespace: &str,
    name: &str,
    stored: Value,
) -> Result<Value, SecurityError> {
    let Value::Object(mut map) = stored else {
        return Ok(stored);
    };
    let Some(sealed) = map.remove(SEALED_FIELD) else {
        return Ok(Value::Object(map));
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(sealed.as_str().unwrap_or_default())
        .map_err(|_| SecurityError::Unseal)?;
    let plain = open(identity, &purpose(namespace, name), &bytes)?;
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&plain) else {
        return Err(SecurityError::Unseal);
    };
    for (k, v) in fields {
        if !PLAIN_FIELDS.contains(&k.as_str()) {
            map.insert(k, v);
        }
    }
    Ok(Value::Object(map))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secret() -> Value {
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "db", "namespace": "prod", "labels": {"app": "x"}},
            "data": {"password": "c2VrcmV0LW1hcmtlcg=="}})
    }

    #[test]
    fn sealed_round_trip_keeps_metadata_readable_and_values_hidden() {
        let id = ClusterIdentity::generate();
        let stored = seal_secret(&id, "prod", "db", &secret());
        let text = stored.to_string();
        assert!(!text.contains("c2VrcmV0LW1hcmtlcg"), "{text}");
        assert!(!text.contains("password"), "keys are sealed too: {text}");
        assert_eq!(stored["metadata"]["labels"]["app"], "x");
        assert_eq!(stored["type"], "Opaque");
        assert!(stored.get("data").is_none());
        // Sealing twice is a no-op; opening gives the object back.
        assert_eq!(seal_secret(&id, "prod", "db", &stored), stored);
        assert_eq!(open_secret(&id, "prod", "db", stored).unwrap(), secret());
    }

    #[test]
    fn opening_fails_for_another_name_cluster_or_tampering() {
        let id = ClusterIdentity::generate();
        let stored = seal_secret(&id, "prod", "db", &secret());
        assert!(open_secret(&id, "prod", "other", stored.clone()).is_err());
        assert!(open_secret(&id, "dev", "db", stored.clone()).is_err());
        assert!(open_secret(&ClusterIdentity::generate(), "prod", "db", stored.clone()).is_err());
        let mut bad = stored.clone();
        let b64 = bad["sealed"].as_str().unwrap().to_string();
        let mut bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        bytes[20] ^= 1;
        bad["sealed"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
        assert!(open_secret(&id, "prod", "db", bad).is_err());
        let mut garbage = stored;
        garbage["sealed"] = json!("not base64!");
        assert!(open_secret(&id, "prod", "db", garbage).is_err());
        // A plain (legacy) object reads as it is.
        assert_eq!(open_secret(&id, "prod", "db", secret()).unwrap(), secret());
    }
}
