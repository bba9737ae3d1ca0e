//! Decoding of Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`), which
//! kubectl's typed clients send for built-in kinds (`kubectl create deployment|job|cronjob|
//! service|configmap|secret|namespace|pdb`, `DeleteOptions`, evictions).
//!
//! A body is the `k8s\0` magic and a `runtime.Unknown` envelope whose `typeMeta` names the kind
//! and whose `raw` bytes are the object. The object's message is found by its apiVersion and kind
//! in descriptors compiled at build time from Kubernetes' own `.proto` files (vendored under
//! `k8s/`, see `k8s/README.md`; `build.rs` compiles them with protox), decoded with
//! prost-reflect, and turned into the JSON a client would have sent, following Kubernetes' JSON
//! conventions (below), so admission and validation see the same object either way. No kind is
//! decoded by hand. Responses are always JSON, which clients accept.
//!
//! JSON conventions (Kubernetes' `generated.proto` field names are the JSON names):
//! * a field on the wire is in the JSON, with its value, also `0` and `false` (a Go pointer
//!   field set to zero, such as `replicas: 0` or `automountServiceAccountToken: false`, is
//!   meaningful; a non-pointer zero means the same as an absent field in Kubernetes);
//! * an empty string is left out (Go's `omitempty`: Kubernetes reads `""` as unset);
//! * int64 as JSON numbers, bytes as base64, maps as objects, messages (even empty) as objects;
//! * the special types: `meta.v1.Time` (RFC 3339 seconds; the zero time is left out), `MicroTime`
//!   (RFC 3339 with microseconds), `Duration` (Go's duration text), `intstr.IntOrString` (a
//!   number or a string), `resource.Quantity` (its string), `runtime.RawExtension` and
//!   `meta.v1.FieldsV1` (the JSON they carry);
//! * a Go struct embedded inline (`json:",inline"`) is a field of its own in protobuf (a Probe's
//!   `handler`, a Volume's `volumeSource`, ...): its fields are merged into the parent, as JSON
//!   has them ([`INLINE`]).

use std::sync::LazyLock;

use base64::Engine;
use prost_reflect::{
    DescriptorPool, DynamicMessage, MapKey, MessageDescriptor, ReflectMessage, Value as Pb,
};
use serde_json::{json, Map, Value};

/// The descriptor set `build.rs` compiled from the vendored `.proto` files.
static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/k8s_descriptors.bin"));

static POOL: LazyLock<Result<DescriptorPool, String>> =
    LazyLock::new(|| DescriptorPool::decode(DESCRIPTORS).map_err(|e| e.to_string()));

pub const MAGIC: &[u8] = b"k8s\0";

/// The message of `meta/v1` DeleteOptions (the body of a DELETE, or in an Eviction).
pub const DELETE_OPTIONS: &str = "apimachinery.pkg.apis.meta.v1.DeleteOptions";
/// The message of `policy/v1` Eviction (what `kubectl drain` posts to `pods/{name}/eviction`).
pub const EVICTION: &str = "api.policy.v1.Eviction";

const UNKNOWN: &str = "apimachinery.pkg.runtime.Unknown";
const TIME: &str = "apimachinery.pkg.apis.meta.v1.Time";
const MICRO_TIME: &str = "apimachinery.pkg.apis.meta.v1.MicroTime";
const DURATION: &str = "apimachinery.pkg.apis.meta.v1.Duration";
const FIELDS_V1: &str = "apimachinery.pkg.apis.meta.v1.FieldsV1";
const INT_OR_STRING: &str = "apimachinery.pkg.util.intstr.IntOrString";
const QUANTITY: &str = "apimachinery.pkg.api.resource.Quantity";
const RAW_EXTENSION: &str = "apimachinery.pkg.runtime.RawExtension";

/// The protobuf fields that hold a Go struct embedded inline, whose fields JSON has in the
/// parent. Found by comparing every message-typed field of the vendored `.proto` files with the
/// JSON field names of the same type (k8s-openapi's, Kubernetes 1.33); check again when the
/// files are updated (`k8s/README.md`).
pub const INLINE: &[(&str, &str)] = &[
    ("api.core.v1.ConfigMapEnvSource", "localObjectReference"),
    ("api.core.v1.ConfigMapKeySelector", "localObjectReference"),
    ("api.core.v1.ConfigMapProjection", "localObjectReference"),
    ("api.core.v1.ConfigMapVolumeSource", "localObjectReference"),
    ("api.core.v1.EphemeralContainer", "ephemeralContainerCommon"),
    ("api.core.v1.PersistentVolumeSpec", "persistentVolumeSource"),
    ("api.core.v1.Probe", "handler"),
    ("api.core.v1.SecretEnvSource", "localObjectReference"),
    ("api.core.v1.SecretKeySelector", "localObjectReference"),
    ("api.core.v1.SecretProjection", "localObjectReference"),
    ("api.core.v1.Volume", "volumeSource"),
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("invalid protobuf body: {0}")]
    Invalid(String),
    /// The envelope names a kind shoal has no protobuf schema for (answered 415).
    #[error("protobuf bodies of kind {kind:?} (apiVersion {api_version:?}) are not supported")]
    UnsupportedKind { api_version: String, kind: String },
}

fn invalid(what: impl std::fmt::Display) -> ProtoError {
    ProtoError::Invalid(what.to_string())
}

fn pool() -> Result<&'static DescriptorPool, ProtoError> {
    POOL.as_ref()
        .map_err(|e| invalid(format!("the built-in Kubernetes descriptors: {e}")))
}

/// The protobuf package of a Kubernetes API group version, as the vendored files name them:
/// `v1` -> `api.core.v1`, `apps/v1` -> `api.apps.v1`, `discovery.k8s.io/v1` -> `api.discovery.v1`,
/// `metrics.k8s.io/v1beta1` -> `metrics.pkg.apis.metrics.v1beta1`, `meta.k8s.io/v1` ->
/// `apimachinery.pkg.apis.meta.v1`.
fn packages(api_version: &str) -> Vec<String> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let group = group.strip_suffix(".k8s.io").unwrap_or(group);
    match group {
        "" => vec![format!("api.core.{version}")],
        "meta" => vec![format!("apimachinery.pkg.apis.meta.{version}")],
        "metrics" => vec![format!("metrics.pkg.apis.metrics.{version}")],
        _ if group.contains('.') => vec![],
        _ => vec![format!("api.{group}.{version}")],
    }
}

/// The message descriptor of a kind, if shoal carries its schema.
pub fn message_of(api_version: &str, kind: &str) -> Option<MessageDescriptor> {
    let pool = pool().ok()?;
    if kind.is_empty() || !kind.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    packages(api_version)
        .into_iter()
        .find_map(|package| pool.get_message_by_name(&format!("{package}.{kind}")))
}

/// The envelope of a body: (apiVersion, kind, raw object bytes).
fn envelope(body: &[u8]) -> Result<(String, String, Vec<u8>), ProtoError> {
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| invalid("missing the k8s protobuf magic prefix"))?;
    let desc = pool()?
        .get_message_by_name(UNKNOWN)
        .ok_or_else(|| invalid("no runtime.Unknown descriptor"))?;
    let unknown = DynamicMessage::decode(desc, envelope).map_err(invalid)?;
    let text = |name: &str| {
        unknown
            .get_field_by_name(name)
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    };
    let encoding = text("contentEncoding");
    if !encoding.is_empty() {
        return Err(invalid(format!(
            "contentEncoding {encoding:?} is not supported"
        )));
    }
    let content_type = text("contentType");
    if !content_type.is_empty() && content_type != "application/vnd.kubernetes.protobuf" {
        return Err(invalid(format!(
            "contentType {content_type:?} of the raw object is not supported"
        )));
    }
    let (mut api_version, mut kind) = (String::new(), String::new());
    if let Some(Pb::Message(type_meta)) = unknown.get_field_by_name("typeMeta").as_deref() {
        let get = |name: &str| {
            type_meta
                .get_field_by_name(name)
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        };
        api_version = get("apiVersion");
        kind = get("kind");
    }
    let raw = match unknown.get_field_by_name("raw").as_deref() {
        Some(Pb::Bytes(b)) => b.to_vec(),
        _ => Vec::new(),
    };
    Ok((api_version, kind, raw))
}

/// Decodes a whole body (magic + `runtime.Unknown`) of the kind its envelope names, into the
/// object's JSON with `apiVersion` and `kind`. A kind without a schema is
/// [`ProtoError::UnsupportedKind`].
pub fn decode_object(body: &[u8]) -> Result<Value, ProtoError> {
    let (api_version, kind, raw) = envelope(body)?;
    let desc = message_of(&api_version, &kind).ok_or_else(|| ProtoError::UnsupportedKind {
        api_version: api_version.clone(),
        kind: kind.clone(),
    })?;
    object_json(desc, &raw, api_version, kind)
}

/// Decodes a whole body as the message named `message` (for bodies whose envelope may leave the
/// kind out, such as `DeleteOptions`).
pub fn decode_as(body: &[u8], message: &str) -> Result<Value, ProtoError> {
    let (api_version, kind, raw) = envelope(body)?;
    let desc = pool()?
        .get_message_by_name(message)
        .ok_or_else(|| invalid(format!("no descriptor for {message}")))?;
    object_json(desc, &raw, api_version, kind)
}

fn object_json(
    desc: MessageDescriptor,
    raw: &[u8],
    api_version: String,
    kind: String,
) -> Result<Value, ProtoError> {
    let message = DynamicMessage::decode(desc, raw).map_err(invalid)?;
    let mut object = message_json(&message)?;
    if let Some(map) = object.as_object_mut() {
        if !api_version.is_empty() {
            map.insert("apiVersion".into(), json!(api_version));
        }
        if !kind.is_empty() {
            map.insert("kind".into(), json!(kind));
        }
    }
    Ok(object)
}

/// A message as Kubernetes' JSON has it (see the module doc); `None` for what is left out.
fn message_json(message: &DynamicMessage) -> Result<Value, ProtoError> {
    let desc = message.descriptor();
    let int = |name: &str| {
        message
            .get_field_by_name(name)
            .and_then(|v| v.as_i64().or(v.as_i32().map(i64::from)))
            .unwrap_or(0)
    };
    let text = |name: &str| {
        message
            .get_field_by_name(name)
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    };
    let raw_json = |name: &str| -> Result<Value, ProtoError> {
        match message.get_field_by_name(name).as_deref() {
            Some(Pb::Bytes(b)) if !b.is_empty() => serde_json::from_slice(b)
                .map_err(|e| invalid(format!("{} does not hold JSON: {e}", desc.name()))),
            _ => Ok(Value::Null),
        }
    };
    Ok(match desc.full_name() {
        TIME => time(int("seconds"), 0, false)?,
        MICRO_TIME => time(int("seconds"), int("nanos"), true)?,
        DURATION => json!(go_duration(int("duration"))),
        QUANTITY => json!(text("string")),
        INT_OR_STRING => match int("type") {
            1 => json!(text("strVal")),
            _ => json!(int("intVal")),
        },
        RAW_EXTENSION => raw_json("raw")?,
        FIELDS_V1 => raw_json("Raw")?,
        _ => {
            let mut out = Map::new();
            for (field, value) in message.fields() {
                let value = value_json(value)?;
                let inline = INLINE.contains(&(desc.full_name(), field.name()));
                match value {
                    Value::Null => {}
                    Value::Object(fields) if inline => out.extend(fields),
                    value => {
                        out.insert(field.name().to_string(), value);
                    }
                }
            }
            Value::Object(out)
        }
    })
}

/// One value; `Null` for what the JSON leaves out (an empty string, the zero time).
fn value_json(value: &Pb) -> Result<Value, ProtoError> {
    Ok(match value {
        Pb::Bool(b) => json!(b),
        Pb::I32(n) | Pb::EnumNumber(n) => json!(n),
        Pb::I64(n) => json!(n),
        Pb::U32(n) => json!(n),
        Pb::U64(n) => json!(n),
        Pb::F32(n) => number(f64::from(*n))?,
        Pb::F64(n) => number(*n)?,
        Pb::String(s) if s.is_empty() => Value::Null,
        Pb::String(s) => json!(s),
        Pb::Bytes(b) if b.is_empty() => Value::Null,
        Pb::Bytes(b) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        Pb::Message(m) => message_json(m)?,
        Pb::List(items) => Value::Array(
            items
                .iter()
                .map(value_json)
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Pb::Map(entries) => {
            let mut out = Map::new();
            for (key, value) in entries {
                let key = match key {
                    MapKey::String(s) => s.clone(),
                    MapKey::Bool(b) => b.to_string(),
                    MapKey::I32(n) => n.to_string(),
                    MapKey::I64(n) => n.to_string(),
                    MapKey::U32(n) => n.to_string(),
                    MapKey::U64(n) => n.to_string(),
                };
                // A map keeps its entries' values as sent, also empty strings (a label's
                // value may be empty).
                let value = match value {
                    Pb::String(s) => json!(s),
                    Pb::Bytes(b) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
                    other => value_json(other)?,
                };
                out.insert(key, value);
            }
            Value::Object(out)
        }
    })
}

fn number(n: f64) -> Result<Value, ProtoError> {
    serde_json::Number::from_f64(n)
        .map(Value::Number)
        .ok_or_else(|| invalid("a floating-point field is not a finite number"))
}

/// `meta.v1.Time` (seconds) or `MicroTime` (with microseconds) as RFC 3339 UTC; the zero time
/// (Go's zero `metav1.Time`, sent for an unset `creationTimestamp`) is left out.
fn time(seconds: i64, nanos: i64, micro: bool) -> Result<Value, ProtoError> {
    if seconds == 0 && nanos == 0 {
        return Ok(Value::Null);
    }
    let nanos = u32::try_from(nanos).map_err(|_| invalid("a time's nanos are out of range"))?;
    let t = chrono::DateTime::from_timestamp(seconds, nanos)
        .ok_or_else(|| invalid("a time is out of range"))?;
    let format = if micro {
        chrono::SecondsFormat::Micros
    } else {
        chrono::SecondsFormat::Secs
    };
    Ok(json!(t.to_rfc3339_opts(format, true)))
}

/// A duration in nanoseconds as Go's `time.Duration.String()` writes it (`1h2m3.5s`, `1.5ms`).
fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    let frac = |value: u64, unit: u64| {
        let whole = value / unit;
        let rest = value % unit;
        if rest == 0 {
            whole.to_string()
        } else {
            let digits = unit.ilog10() as usize;
            let fraction = format!("{rest:0digits$}");
            format!("{whole}.{}", fraction.trim_end_matches('0'))
        }
    };
    if n < 1_000 {
        return format!("{sign}{n}ns");
    }
    if n < 1_000_000 {
        return format!("{sign}{}µs", frac(n, 1_000));
    }
    if n < 1_000_000_000 {
        return format!("{sign}{}ms", frac(n, 1_000_000));
    }
    let hours = n / 3_600_000_000_000;
    let minutes = n / 60_000_000_000 % 60;
    let seconds = frac(n % 60_000_000_000, 1_000_000_000);
    match (hours, minutes) {
        (0, 0) => format!("{sign}{seconds}s"),
        (0, m) => format!("{sign}{m}m{seconds}s"),
        (h, m) => format!("{sign}{h}h{m}m{seconds}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_reflect::prost::Message as _;

    /// A body kubectl 1.32 sent, captured with `-v=9` (`testdata/*.hex`).
    fn captured(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/src/api/proto/testdata/kubectl-create-{name}.hex",
            env!("CARGO_MANIFEST_DIR")
        );
        hex::decode(std::fs::read_to_string(path).unwrap().trim()).unwrap()
    }

    /// Wraps a message in the `k8s\0` + `runtime.Unknown` envelope.
    fn body(api_version: &str, kind: &str, message: &DynamicMessage) -> Vec<u8> {
        let pool = pool().unwrap();
        let mut type_meta = DynamicMessage::new(
            pool.get_message_by_name("apimachinery.pkg.runtime.TypeMeta")
                .unwrap(),
        );
        type_meta.set_field_by_name("apiVersion", Pb::String(api_version.into()));
        type_meta.set_field_by_name("kind", Pb::String(kind.into()));
        let mut unknown = DynamicMessage::new(pool.get_message_by_name(UNKNOWN).unwrap());
        unknown.set_field_by_name("typeMeta", Pb::Message(type_meta));
        unknown.set_field_by_name("raw", Pb::Bytes(message.encode_to_vec().into()));
        [MAGIC.to_vec(), unknown.encode_to_vec()].concat()
    }

    fn message(name: &str, fields: Value) -> DynamicMessage {
        fn build(desc: MessageDescriptor, fields: &Value) -> DynamicMessage {
            let mut m = DynamicMessage::new(desc.clone());
            for (name, value) in fields.as_object().unwrap() {
                let field = desc.get_field_by_name(name).unwrap();
                let v = match (field.kind(), value) {
                    (prost_reflect::Kind::Message(d), Value::Object(_)) if !field.is_map() => {
                        Pb::Message(build(d, value))
                    }
                    (prost_reflect::Kind::Message(d), Value::Array(items)) => Pb::List(
                        items
                            .iter()
                            .map(|i| Pb::Message(build(d.clone(), i)))
                            .collect(),
                    ),
                    (prost_reflect::Kind::Message(d), Value::Object(map)) => {
                        let value_desc = d.map_entry_value_field();
                        Pb::Map(
                            map.iter()
                                .map(|(k, v)| {
                                    let v = match value_desc.kind() {
                                        prost_reflect::Kind::Message(vd) => {
                                            Pb::Message(build(vd, v))
                                        }
                                        _ => Pb::String(v.as_str().unwrap().into()),
                                    };
                                    (MapKey::String(k.clone()), v)
                                })
                                .collect(),
                        )
                    }
                    (prost_reflect::Kind::String, Value::String(s)) => Pb::String(s.clone()),
                    (prost_reflect::Kind::String, Value::Array(items)) => Pb::List(
                        items
                            .iter()
                            .map(|i| Pb::String(i.as_str().unwrap().into()))
                            .collect(),
                    ),
                    (prost_reflect::Kind::Int32, v) => Pb::I32(v.as_i64().unwrap() as i32),
                    (prost_reflect::Kind::Int64, v) => Pb::I64(v.as_i64().unwrap()),
                    (prost_reflect::Kind::Bool, v) => Pb::Bool(v.as_bool().unwrap()),
                    (prost_reflect::Kind::Bytes, Value::String(s)) => {
                        Pb::Bytes(s.clone().into_bytes().into())
                    }
                    (kind, v) => panic!("test builder: {name}: {kind:?} from {v}"),
                };
                m.set_field(&field, v);
            }
            m
        }
        build(pool().unwrap().get_message_by_name(name).unwrap(), &fields)
    }

    #[test]
    fn every_served_kind_has_a_schema() {
        for info in super::super::resources::RESOURCES {
            assert!(
                message_of(&info.api_version(), info.kind).is_some(),
                "no protobuf message for {} {}",
                info.api_version(),
                info.kind
            );
        }
    }

    #[test]
    fn kubectl_create_deployment_decodes_to_its_json() {
        let object = decode_object(&captured("deployment")).unwrap();
        assert_eq!(
            object,
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "generation": 0, "labels": {"app": "web"}},
                "spec": {
                    "replicas": 0,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"generation": 0, "labels": {"app": "web"}},
                        "spec": {
                            "containers": [{
                                "name": "web", "image": "shoal.test/web:1",
                                "ports": [{"containerPort": 8080, "hostPort": 0}],
                                "resources": {},
                                "stdin": false, "stdinOnce": false, "tty": false,
                            }],
                            "hostNetwork": false, "hostPID": false, "hostIPC": false,
                        },
                    },
                    "strategy": {},
                    "minReadySeconds": 0,
                    "paused": false,
                },
                "status": {
                    "observedGeneration": 0, "replicas": 0, "updatedReplicas": 0,
                    "readyReplicas": 0, "availableReplicas": 0, "unavailableReplicas": 0,
                },
            })
        );
    }

    #[test]
    fn kubectl_create_job_and_cronjob_decode() {
        let job = decode_object(&captured("job")).unwrap();
        assert_eq!(
            (job["apiVersion"].as_str(), job["kind"].as_str()),
            (Some("batch/v1"), Some("Job"))
        );
        let container = &job["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["command"], json!(["sh", "-c", "exit 0"]));
        assert_eq!(container["image"], "shoal.test/busybox:1");
        assert_eq!(job["spec"]["template"]["spec"]["restartPolicy"], "Never");

        let cron = decode_object(&captured("cronjob")).unwrap();
        assert_eq!(cron["kind"], "CronJob");
        assert_eq!(cron["spec"]["schedule"], "*/5 * * * *");
        let template = &cron["spec"]["jobTemplate"]["spec"]["template"]["spec"];
        assert_eq!(template["containers"][0]["command"], json!(["true"]));
        assert_eq!(template["restartPolicy"], "OnFailure");
    }

    #[test]
    fn kubectl_create_service_pdb_and_secret_decode() {
        let svc = decode_object(&captured("service")).unwrap();
        assert_eq!(svc["spec"]["type"], "NodePort");
        assert_eq!(
            svc["spec"]["ports"],
            json!([{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 0}])
        );
        assert_eq!(svc["spec"]["selector"], json!({"app": "front"}));

        let pdb = decode_object(&captured("pdb")).unwrap();
        assert_eq!(pdb["apiVersion"], "policy/v1");
        assert_eq!(pdb["spec"]["minAvailable"], 1);
        assert_eq!(
            pdb["spec"]["selector"],
            json!({"matchLabels": {"app": "web"}})
        );

        let secret = decode_object(&captured("secret")).unwrap();
        // Bytes are base64 in JSON; an empty value stays (`--from-literal=empty=`).
        assert_eq!(secret["data"], json!({"user": "dQ==", "empty": ""}));
    }

    #[test]
    fn special_types_follow_kubernetes_json() {
        let pod = message(
            "api.core.v1.Pod",
            json!({
                "metadata": {"name": "p", "creationTimestamp": {"seconds": 1700000000},
                             "labels": {"empty": ""}},
                "spec": {
                    "containers": [{
                        "name": "c",
                        "resources": {"limits": {"cpu": {"string": "500m"}, "memory": {"string": "1Gi"}}},
                        "readinessProbe": {"handler": {"httpGet": {"port": {"type": 1, "strVal": "http"}}},
                                           "periodSeconds": 5},
                        "env": [{"name": "E", "valueFrom": {"configMapKeyRef": {
                            "localObjectReference": {"name": "cm"}, "key": "k"}}}],
                        "securityContext": {"runAsUser": 0, "allowPrivilegeEscalation": false},
                    }],
                    "automountServiceAccountToken": false,
                    "terminationGracePeriodSeconds": 0,
                    "volumes": [{"name": "v", "volumeSource": {"configMap": {
                        "localObjectReference": {"name": "cm"}, "defaultMode": 420}}}],
                },
            }),
        );
        let object = decode_object(&body("v1", "Pod", &pod)).unwrap();
        assert_eq!(
            object["metadata"]["creationTimestamp"],
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(object["metadata"]["labels"], json!({"empty": ""}));
        let c = &object["spec"]["containers"][0];
        assert_eq!(
            c["resources"]["limits"],
            json!({"cpu": "500m", "memory": "1Gi"})
        );
        // Inline Go structs are merged into their parent.
        assert_eq!(
            c["readinessProbe"],
            json!({"httpGet": {"port": "http"}, "periodSeconds": 5})
        );
        assert_eq!(
            c["env"][0]["valueFrom"],
            json!({"configMapKeyRef": {"name": "cm", "key": "k"}})
        );
        assert_eq!(
            object["spec"]["volumes"],
            json!([{"name": "v", "configMap": {"name": "cm", "defaultMode": 420}}])
        );
        // Zero and false of pointer fields are meaningful and kept.
        assert_eq!(
            c["securityContext"],
            json!({"runAsUser": 0, "allowPrivilegeEscalation": false})
        );
        assert_eq!(object["spec"]["automountServiceAccountToken"], false);
        assert_eq!(object["spec"]["terminationGracePeriodSeconds"], 0);

        let event = message(
            "api.core.v1.Event",
            json!({"metadata": {"name": "e"}, "eventTime": {"seconds": 1700000000, "nanos": 123456000}}),
        );
        let object = decode_object(&body("v1", "Event", &event)).unwrap();
        assert_eq!(object["eventTime"], "2023-11-14T22:13:20.123456Z");
    }

    #[test]
    fn delete_options_and_evictions_decode_by_their_message() {
        let options = message(
            DELETE_OPTIONS,
            json!({"gracePeriodSeconds": 0, "propagationPolicy": "Background", "dryRun": ["All"]}),
        );
        // client-go leaves the kind out of a DeleteOptions envelope at times.
        let value = decode_as(&body("", "", &options), DELETE_OPTIONS).unwrap();
        assert_eq!(
            value,
            json!({"gracePeriodSeconds": 0, "propagationPolicy": "Background", "dryRun": ["All"]})
        );
        let eviction = message(
            EVICTION,
            json!({"metadata": {"name": "p", "namespace": "default"},
                   "deleteOptions": {"gracePeriodSeconds": 5}}),
        );
        let value = decode_as(&body("policy/v1", "Eviction", &eviction), EVICTION).unwrap();
        assert_eq!(value["deleteOptions"], json!({"gracePeriodSeconds": 5}));
        assert_eq!(value["kind"], "Eviction");
    }

    #[test]
    fn unknown_kinds_are_named_and_garbage_is_invalid() {
        let cm = message("api.core.v1.ConfigMap", json!({"metadata": {"name": "x"}}));
        assert_eq!(
            decode_object(&body("stable.example.com/v1", "CronTab", &cm)),
            Err(ProtoError::UnsupportedKind {
                api_version: "stable.example.com/v1".into(),
                kind: "CronTab".into()
            })
        );
        assert!(matches!(
            decode_object(&body("v1", "NoSuchKind", &cm)),
            Err(ProtoError::UnsupportedKind { .. })
        ));
        assert!(matches!(
            decode_object(b"nope"),
            Err(ProtoError::Invalid(_))
        ));
        assert!(matches!(
            decode_object(b"k8s\0\x0a\x50"),
            Err(ProtoError::Invalid(_))
        ));
        let deployment = captured("deployment");
        for cut in 5..deployment.len() {
            // Any truncation is an error or a shorter object, never a panic.
            let _ = decode_object(&deployment[..cut]);
        }
    }

    #[test]
    fn inline_fields_exist_and_hold_messages() {
        let pool = pool().unwrap();
        for (message, field) in INLINE {
            let desc = pool.get_message_by_name(message).unwrap();
            let field = desc.get_field_by_name(field).unwrap();
            assert!(
                matches!(field.kind(), prost_reflect::Kind::Message(_)),
                "{message}"
            );
        }
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
        assert_eq!(go_duration(3_723_000_000_000), "1h2m3s");
        assert_eq!(go_duration(90_000_000_000), "1m30s");
        assert_eq!(go_duration(1_500_000), "1.5ms");
        assert_eq!(go_duration(-2_000), "-2µs");
        assert_eq!(go_duration(7), "7ns");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(tail in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode_object(&[MAGIC, &tail].concat());
            let _ = decode_as(&[MAGIC, &tail].concat(), DELETE_OPTIONS);
        }
    }
}
