//! Deterministic names and identities: the pod-template hash (FNV-32a over canonical JSON,
//! Kubernetes' safe alphabet), slot suffixes, uids derived from (owner uid, name), and the
//! rendezvous weight that breaks scheduling ties. Two leaders computing these from the same
//! input get the same strings, so their writes land on the same keys with the same content.

use serde_json::Value;
use sha2::{Digest, Sha256};

pub use crate::model::hash::fnv32a;

/// Kubernetes' alphabet for generated names (no vowels, no confusable characters).
pub const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// JSON with object keys sorted at every level and no whitespace, independent of how the
/// `serde_json` map type orders keys.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Kubernetes' `rand.SafeEncodeString`: every byte mapped into the safe alphabet.
pub fn safe_encode(s: &str) -> String {
    s.bytes()
        .map(|b| SAFE_ALPHABET[usize::from(b) % SAFE_ALPHABET.len()] as char)
        .collect()
}

/// `v` without its null members, at any depth. Kubernetes never stores a null (its objects pass
/// through Go structs), but clients send them: `kubectl rollout undo` and `kubectl create
/// deployment` put `metadata.creationTimestamp: null` in a pod template.
pub fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// The `pod-template-hash` of a pod template, as Kubernetes renders it (the decimal FNV-32a
/// value, safe-encoded: up to 10 characters).
pub fn template_hash(template: &Value) -> String {
    safe_encode(&fnv32a(canonical_json(template).as_bytes()).to_string())
}

/// First 8 bytes of SHA-256 over the parts, separated by NUL.
pub fn hash64(parts: &[&str]) -> u64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    let d = h.finalize();
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// A uid (UUID text form, version 4 / variant bits set) derived from the owner's uid and the
/// new object's name: two leaders creating the same object give it the same uid.
pub fn derived_uid(kind: &str, owner_uid: &str, name: &str) -> String {
    let mut h = Sha256::new();
    for p in ["shoal-uid", kind, owner_uid, name] {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    let d = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&d[..16]);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// `n` characters of the safe alphabet from a 64-bit value.
pub fn safe_suffix(mut v: u64, n: usize) -> String {
    let base = SAFE_ALPHABET.len() as u64;
    (0..n)
        .map(|_| {
            let c = SAFE_ALPHABET[(v % base) as usize] as char;
            v /= base;
            c
        })
        .collect()
}

/// splitmix64 finaliser: a cheap, well-mixed 64-bit permutation.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Rendezvous weight of (pod, node) from their precomputed hashes; the highest weight wins ties.
pub fn rendezvous(pod: u64, node: u64) -> u64 {
    mix64(pod ^ mix64(node))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn template_hash_ignores_key_order_and_uses_the_safe_alphabet() {
        let a = json!({"metadata": {"labels": {"app": "web", "tier": "x"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
        let b: Value = serde_json::from_str(
            r#"{"spec":{"containers":[{"image":"i","name":"c"}]},"metadata":{"labels":{"tier":"x","app":"web"}}}"#,
        )
        .unwrap();
        let h = template_hash(&a);
        assert_eq!(h, template_hash(&b));
        assert!(!h.is_empty() && h.len() <= 10);
        assert!(h.bytes().all(|c| SAFE_ALPHABET.contains(&c)), "{h}");
        let c = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "j"}]}});
        assert_ne!(h, template_hash(&c));
    }

    #[test]
    fn safe_encode_matches_kubernetes() {
        // SafeEncodeString("0123") maps bytes 48..51 modulo 27 (21..24) into the alphabet.
        assert_eq!(safe_encode("0123"), "4567");
    }

    #[test]
    fn derived_uids_are_stable_and_distinct() {
        let a = derived_uid("Pod", "owner", "web-1");
        assert_eq!(a, derived_uid("Pod", "owner", "web-1"));
        assert_ne!(a, derived_uid("Pod", "owner", "web-2"));
        assert_ne!(a, derived_uid("Pod", "other", "web-1"));
        assert!(uuid::Uuid::parse_str(&a).is_ok());
    }
}
