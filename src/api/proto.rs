//! Decoding of Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`),
//! which kubectl's typed clients send for built-in kinds (`kubectl create namespace`,
//! `kubectl create configmap`, `kubectl create secret`). A body is the `k8s\0` magic and a `runtime.Unknown` envelope
//! whose `raw` bytes are the object; objects decode to JSON through small per-kind descriptors
//! (field number -> JSON name and type). Responses are always JSON, which clients accept.

use base64::Engine;
use serde_json::{json, Map, Value};

/// How one protobuf field maps to JSON.
#[derive(Debug)]
pub enum Field {
    String,
    Int,
    Bool,
    /// `meta.v1.Time` (seconds, nanos) -> RFC 3339; the zero time -> omitted.
    Time,
    Message(&'static Message),
    RepeatedString,
    RepeatedMessage(&'static Message),
    MapStringString,
    MapStringBytes,
    /// `intstr.IntOrString` (type, intVal, strVal) -> a JSON number or string.
    IntOrString,
}

/// A message: (field number, JSON name, type); unknown numbers are skipped.
pub type Message = [(u32, &'static str, Field)];

pub static OWNER_REFERENCE: &Message = &[
    (1, "kind", Field::String),
    (3, "name", Field::String),
    (4, "uid", Field::String),
    (5, "apiVersion", Field::String),
    (6, "controller", Field::Bool),
    (7, "blockOwnerDeletion", Field::Bool),
];

pub static OBJECT_META: &Message = &[
    (1, "name", Field::String),
    (2, "generateName", Field::String),
    (3, "namespace", Field::String),
    (4, "selfLink", Field::String),
    (5, "uid", Field::String),
    (6, "resourceVersion", Field::String),
    (7, "generation", Field::Int),
    (8, "creationTimestamp", Field::Time),
    (9, "deletionTimestamp", Field::Time),
    (10, "deletionGracePeriodSeconds", Field::Int),
    (11, "labels", Field::MapStringString),
    (12, "annotations", Field::MapStringString),
    (
        13,
        "ownerReferences",
        Field::RepeatedMessage(OWNER_REFERENCE),
    ),
    (14, "finalizers", Field::RepeatedString),
];

pub static NAMESPACE: &Message = &[
    (1, "metadata", Field::Message(OBJECT_META)),
    (
        2,
        "spec",
        Field::Message(&[(1, "finalizers", Field::RepeatedString)]),
    ),
    (3, "status", Field::Message(&[(1, "phase", Field::String)])),
];

/// `meta/v1` DeleteOptions (in an Eviction, or the body of a DELETE).
pub static DELETE_OPTIONS: &Message = &[
    (1, "gracePeriodSeconds", Field::Int),
    (
        2,
        "preconditions",
        Field::Message(&[
            (1, "uid", Field::String),
            (2, "resourceVersion", Field::String),
        ]),
    ),
    (3, "orphanDependents", Field::Bool),
    (4, "propagationPolicy", Field::String),
    (5, "dryRun", Field::RepeatedString),
];

/// `policy/v1` Eviction (what `kubectl drain` posts to `pods/{name}/eviction`).
pub static EVICTION: &Message = &[
    (1, "metadata", Field::Message(OBJECT_META)),
    (2, "deleteOptions", Field::Message(DELETE_OPTIONS)),
];

/// `meta/v1` LabelSelector.
pub static LABEL_SELECTOR: &Message = &[
    (1, "matchLabels", Field::MapStringString),
    (
        2,
        "matchExpressions",
        Field::RepeatedMessage(&[
            (1, "key", Field::String),
            (2, "operator", Field::String),
            (3, "values", Field::RepeatedString),
        ]),
    ),
];

/// `policy/v1` PodDisruptionBudget (what `kubectl create pdb` sends).
pub static POD_DISRUPTION_BUDGET: &Message = &[
    (1, "metadata", Field::Message(OBJECT_META)),
    (
        2,
        "spec",
        Field::Message(&[
            (1, "minAvailable", Field::IntOrString),
            (2, "selector", Field::Message(LABEL_SELECTOR)),
            (3, "maxUnavailable", Field::IntOrString),
            (4, "unhealthyPodEvictionPolicy", Field::String),
        ]),
    ),
];

pub static CONFIG_MAP: &Message = &[
    (1, "metadata", Field::Message(OBJECT_META)),
    (2, "data", Field::MapStringString),
    (3, "binaryData", Field::MapStringBytes),
    (4, "immutable", Field::Bool),
];

/// `core/v1` Secret: `data` is bytes (base64 in JSON), `stringData` plain strings.
pub static SECRET: &Message = &[
    (1, "metadata", Field::Message(OBJECT_META)),
    (2, "data", Field::MapStringBytes),
    (3, "type", Field::String),
    (4, "stringData", Field::MapStringString),
    (5, "immutable", Field::Bool),
];

/// `core/v1` ServicePort.
static SERVICE_PORT: &Message = &[
    (1, "name", Field::String),
    (2, "protocol", Field::String),
    (3, "port", Field::Int),
    (4, "targetPort", Field::IntOrString),
    (5, "nodePort", Field::Int),
    (6, "appProtocol", Field::String),
];

/// `core/v1` Service (what `kubectl create service` sends).
pub static SERVICE: &Message = &[
    (1, "metadata", Field::Message(OBJECT_META)),
    (
        2,
        "spec",
        Field::Message(&[
            (1, "ports", Field::RepeatedMessage(SERVICE_PORT)),
            (2, "selector", Field::MapStringString),
            (3, "clusterIP", Field::String),
            (4, "type", Field::String),
            (5, "externalIPs", Field::RepeatedString),
            (7, "sessionAffinity", Field::String),
            (8, "loadBalancerIP", Field::String),
            (9, "loadBalancerSourceRanges", Field::RepeatedString),
            (10, "externalName", Field::String),
            (11, "externalTrafficPolicy", Field::String),
            (12, "healthCheckNodePort", Field::Int),
            (13, "publishNotReadyAddresses", Field::Bool),
            (
                14,
                "sessionAffinityConfig",
                Field::Message(&[(
                    1,
                    "clientIP",
                    Field::Message(&[(1, "timeoutSeconds", Field::Int)]),
                )]),
            ),
            (17, "ipFamilyPolicy", Field::String),
            (18, "clusterIPs", Field::RepeatedString),
            (19, "ipFamilies", Field::RepeatedString),
            (20, "allocateLoadBalancerNodePorts", Field::Bool),
            (21, "loadBalancerClass", Field::String),
            (22, "internalTrafficPolicy", Field::String),
            (23, "trafficDistribution", Field::String),
        ]),
    ),
];

/// The fields of `intstr.IntOrString`.
static INT_OR_STRING: &Message = &[
    (1, "type", Field::Int),
    (2, "intVal", Field::Int),
    (3, "strVal", Field::String),
];

pub const MAGIC: &[u8] = b"k8s\0";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid protobuf body: {0}")]
pub struct ProtoError(String);

fn err(what: &str) -> ProtoError {
    ProtoError(what.to_string())
}

struct Reader<'a> {
    buf: &'a [u8],
}

enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ProtoError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self
                .buf
                .split_first()
                .ok_or_else(|| err("truncated varint"))?;
            self.buf = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(err("varint too long"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        if n > self.buf.len() {
            return Err(err("truncated field"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// The next (field number, value), or `None` at the end.
    fn field(&mut self) -> Result<Option<(u32, Wire<'a>)>, ProtoError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).map_err(|_| err("field number out of range"))?;
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Wire::Fixed
            }
            2 => {
                let len =
                    usize::try_from(self.varint()?).map_err(|_| err("length out of range"))?;
                Wire::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Wire::Fixed
            }
            other => return Err(ProtoError(format!("unsupported wire type {other}"))),
        };
        Ok(Some((number, wire)))
    }
}

fn fields(buf: &[u8]) -> Result<Vec<(u32, Wire<'_>)>, ProtoError> {
    let mut reader = Reader { buf };
    let mut out = Vec::new();
    while let Some(f) = reader.field()? {
        out.push(f);
    }
    Ok(out)
}

fn text(bytes: &[u8]) -> Result<String, ProtoError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| err("string field is not UTF-8"))
}

fn map_entry(bytes: &[u8]) -> Result<(String, &[u8]), ProtoError> {
    let mut key = String::new();
    let mut value: &[u8] = &[];
    for (number, wire) in fields(bytes)? {
        match (number, wire) {
            (1, Wire::Bytes(b)) => key = text(b)?,
            (2, Wire::Bytes(b)) => value = b,
            _ => {}
        }
    }
    Ok((key, value))
}

fn time(bytes: &[u8]) -> Result<Option<String>, ProtoError> {
    let mut seconds = 0i64;
    for (number, wire) in fields(bytes)? {
        if let (1, Wire::Varint(v)) = (number, wire) {
            seconds = v as i64;
        }
    }
    if seconds == 0 {
        return Ok(None);
    }
    Ok(chrono::DateTime::from_timestamp(seconds, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)))
}

/// Decodes one message; empty strings, zero numbers and false are omitted like Go's omitempty.
pub fn decode_message(bytes: &[u8], message: &Message) -> Result<Value, ProtoError> {
    let mut out = Map::new();
    for (number, wire) in fields(bytes)? {
        let Some((_, name, kind)) = message.iter().find(|(n, _, _)| *n == number) else {
            continue;
        };
        let name = name.to_string();
        match (kind, wire) {
            (Field::String, Wire::Bytes(b)) if !b.is_empty() => {
                out.insert(name, json!(text(b)?));
            }
            (Field::Int, Wire::Varint(v)) if v != 0 => {
                out.insert(name, json!(v as i64));
            }
            (Field::Bool, Wire::Varint(v)) if v != 0 => {
                out.insert(name, json!(true));
            }
            (Field::Time, Wire::Bytes(b)) => {
                if let Some(t) = time(b)? {
                    out.insert(name, json!(t));
                }
            }
            (Field::Message(m), Wire::Bytes(b)) => {
                out.insert(name, decode_message(b, m)?);
            }
            (Field::RepeatedString, Wire::Bytes(b)) => {
                let list = out.entry(name).or_insert_with(|| json!([]));
                if let Some(items) = list.as_array_mut() {
                    items.push(json!(text(b)?));
                }
            }
            (Field::RepeatedMessage(m), Wire::Bytes(b)) => {
                let item = decode_message(b, m)?;
                if let Some(items) = out.entry(name).or_insert_with(|| json!([])).as_array_mut() {
                    items.push(item);
                }
            }
            (Field::MapStringString | Field::MapStringBytes, Wire::Bytes(b)) => {
                let (key, value) = map_entry(b)?;
                let value = match kind {
                    Field::MapStringBytes => {
                        json!(base64::engine::general_purpose::STANDARD.encode(value))
                    }
                    _ => json!(text(value)?),
                };
                if let Some(map) = out.entry(name).or_insert_with(|| json!({})).as_object_mut() {
                    map.insert(key, value);
                }
            }
            (Field::IntOrString, Wire::Bytes(b)) => {
                let v = decode_message(b, INT_OR_STRING)?;
                let value = match v["type"].as_i64() {
                    Some(1) => v["strVal"].clone(),
                    _ => json!(v["intVal"].as_i64().unwrap_or(0)),
                };
                if !value.is_null() {
                    out.insert(name, value);
                }
            }
            (Field::String | Field::Int | Field::Bool, _) => {}
            _ => {
                return Err(ProtoError(format!(
                    "field {number} has the wrong wire type"
                )))
            }
        }
    }
    Ok(Value::Object(out))
}

/// Decodes a whole body (magic + `runtime.Unknown`) of a kind described by `message`.
pub fn decode_object(body: &[u8], message: &Message) -> Result<Value, ProtoError> {
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| err("missing the k8s protobuf magic prefix"))?;
    let mut api_version = String::new();
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    for (number, wire) in fields(envelope)? {
        match (number, wire) {
            (1, Wire::Bytes(type_meta)) => {
                for (n, w) in fields(type_meta)? {
                    match (n, w) {
                        (1, Wire::Bytes(b)) => api_version = text(b)?,
                        (2, Wire::Bytes(b)) => kind = text(b)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(b)) => raw = b,
            _ => {}
        }
    }
    let mut object = decode_message(raw, message)?;
    if let Some(map) = object.as_object_mut() {
        map.insert("apiVersion".into(), json!(api_version));
        map.insert("kind".into(), json!(kind));
    }
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(number: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(number << 3 | 2) as u8, payload.len() as u8];
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn decodes_service_ports_with_int_or_string_target_ports() {
        let varint = |number: u32, v: u8| vec![(number << 3) as u8, v];
        let named = [varint(1, 1), field(3, b"http")].concat();
        let numbered = [varint(2, 90)].concat();
        let port =
            |p: u8, target: &[u8]| [field(2, b"TCP"), varint(3, p), field(4, target)].concat();
        let spec = [
            field(1, &port(80, &named)),
            field(1, &port(81, &numbered)),
            field(4, b"NodePort"),
        ]
        .concat();
        let raw = [field(1, &field(1, b"web")), field(2, &spec)].concat();
        let body = [MAGIC.to_vec(), field(2, &raw)].concat();
        let object = decode_object(&body, SERVICE).unwrap();
        assert_eq!(
            object["spec"],
            json!({"type": "NodePort", "ports": [
                {"protocol": "TCP", "port": 80, "targetPort": "http"},
                {"protocol": "TCP", "port": 81, "targetPort": 90}]})
        );
    }

    #[test]
    fn decodes_a_configmap_envelope() {
        let meta = [
            field(1, b"cm1"),
            field(2, b""),
            field(8, b""),
            field(11, &[field(1, b"k"), field(2, b"v")].concat()),
        ]
        .concat();
        let data = field(2, &[field(1, b"a"), field(2, b"1")].concat());
        let raw = [field(1, &meta), data, vec![4 << 3, 1]].concat();
        let type_meta = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta), field(2, &raw)].concat();
        let object = decode_object(&body, CONFIG_MAP).unwrap();
        assert_eq!(
            object,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm1", "labels": {"k": "v"}},
                   "data": {"a": "1"}, "immutable": true})
        );
    }

    #[test]
    fn decodes_a_secret_with_bytes_as_base64() {
        let meta = field(1, b"regcred");
        let data = field(
            2,
            &[field(1, b".dockerconfigjson"), field(2, b"{\"auths\":{}}")].concat(),
        );
        let string_data = field(4, &[field(1, b"user"), field(2, b"u")].concat());
        let raw = [
            field(1, &meta),
            data,
            field(3, b"kubernetes.io/dockerconfigjson"),
            string_data,
        ]
        .concat();
        let type_meta = [field(1, b"v1"), field(2, b"Secret")].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta), field(2, &raw)].concat();
        let object = decode_object(&body, SECRET).unwrap();
        assert_eq!(
            object,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "regcred"},
                   "data": {".dockerconfigjson": "eyJhdXRocyI6e319"},
                   "type": "kubernetes.io/dockerconfigjson", "stringData": {"user": "u"}})
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(decode_object(b"nope", CONFIG_MAP).is_err());
        assert!(decode_object(b"k8s\0\x0a\x50", CONFIG_MAP).is_err());
    }
}
