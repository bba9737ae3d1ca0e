//! The resource table: every kind the API serves is one [`ResourceInfo`] entry (discovery,
//! OpenAPI, routing, validation and Tables all read it), plus the field schemas used for
//! `fieldValidation` and type checks.

use serde_json::Value;

use super::patch::{no_merge_keys, MergeKeys};

/// The shape of a JSON value, as much as the server checks. `null` is accepted everywhere.
#[derive(Debug)]
pub enum Schema {
    /// Anything, not inspected (free-form or not yet modelled).
    Any,
    String,
    Bool,
    Int,
    /// A fixed set of fields; others are unknown.
    Object(&'static [(&'static str, Schema)]),
    /// A map from string keys to values of one schema.
    MapOf(&'static Schema),
    ListOf(&'static Schema),
}

/// How names of a kind are validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 subdomain: most kinds.
    Subdomain,
    /// RFC 1123 label: namespaces, services.
    Label,
}

/// Which Table columns a kind gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Columns {
    Node,
    Namespace,
    ConfigMap,
    Secret,
    Pod,
    Deployment,
    ReplicaSet,
    Job,
    CronJob,
    DaemonSet,
    StatefulSet,
    Event,
    Service,
    Endpoints,
    EndpointSlice,
    PodDisruptionBudget,
    PersistentVolumeClaim,
    PersistentVolume,
    StorageClass,
    ControllerRevision,
}

/// Workload kinds: decoded through `k8s_openapi` types, defaulted, validated and given a
/// status computed on read (`workloads.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Pod,
    ReplicaSet,
    Deployment,
    Job,
    CronJob,
    DaemonSet,
    StatefulSet,
}

/// A subresource served under `.../{name}/{sub}`.
#[derive(Debug)]
pub struct Subresource {
    pub name: &'static str,
    /// `(group, version, kind)` of what it serves, when not the parent's kind.
    pub kind: Option<(&'static str, &'static str, &'static str)>,
    pub verbs: &'static [&'static str],
}

/// Where a kind's objects live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// Node records plus the local membership view (`Backend::nodes`).
    Nodes,
    /// Whole JSON objects in the replicated store (`Backend::*_object`).
    Objects,
    /// Events from every node's status document (`Backend::events`), read-only.
    Events,
    /// Computed on read from the stored Services and the pods as served (Endpoints,
    /// EndpointSlices: `services.rs`), read-only.
    Computed,
    /// CPU and memory use measured by the nodes (`metrics.k8s.io`: `usage.rs`), read-only and
    /// served apart from the generic verbs.
    Usage,
}

pub struct ResourceInfo {
    /// API group; empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub short_names: &'static [&'static str],
    /// Discovery categories (`all` makes `kubectl get all` list the kind).
    pub categories: &'static [&'static str],
    pub namespaced: bool,
    pub verbs: &'static [&'static str],
    pub name_rule: NameRule,
    pub schema: &'static Schema,
    pub merge_keys: MergeKeys,
    pub columns: Columns,
    pub storage: Storage,
    pub workload: Option<Workload>,
    pub subresources: &'static [Subresource],
}

impl ResourceInfo {
    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The resource key used by the backend: the plural, group-qualified unless core.
    pub fn backend_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `Deployment.apps` or `Pod`: how Kubernetes names the kind in messages.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.to_string()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    pub fn subresource(&self, name: &str) -> Option<&'static Subresource> {
        self.subresources.iter().find(|s| s.name == name)
    }

    pub fn allows(&self, verb: &str) -> bool {
        self.verbs.contains(&verb)
    }

    /// Path prefix of this kind's group version: `/api/v1` or `/apis/g/v`.
    pub fn group_version_path(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }
}

const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
/// Namespaces: no `deletecollection` (as in Kubernetes).
const NAMESPACE_VERBS: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];
const READ_VERBS: &[&str] = &["get", "list", "watch"];
const USAGE_VERBS: &[&str] = &["get", "list"];

/// `metadata` of every object (ObjectMeta).
pub static OBJECT_META: Schema = Schema::Object(&[
    ("name", Schema::String),
    ("generateName", Schema::String),
    ("namespace", Schema::String),
    ("selfLink", Schema::String),
    ("uid", Schema::String),
    ("resourceVersion", Schema::String),
    ("generation", Schema::Int),
    ("creationTimestamp", Schema::String),
    ("deletionTimestamp", Schema::String),
    ("deletionGracePeriodSeconds", Schema::Int),
    ("labels", Schema::MapOf(&Schema::String)),
    ("annotations", Schema::MapOf(&Schema::String)),
    ("ownerReferences", Schema::ListOf(&Schema::Any)),
    ("finalizers", Schema::ListOf(&Schema::String)),
    ("managedFields", Schema::ListOf(&Schema::Any)),
]);

static CONFIG_MAP: Schema = Schema::Object(&[
    ("apiVersion", Schema::String),
    ("kind", Schema::String),
    ("metadata", Schema::Any),
    ("data", Schema::MapOf(&Schema::String)),
    ("binaryData", Schema::MapOf(&Schema::String)),
    ("immutable", Schema::Bool),
]);

static SECRET: Schema = Schema::Object(&[
    ("apiVersion", Schema::String),
    ("kind", Schema::String),
    ("metadata", Schema::Any),
    ("data", Schema::MapOf(&Schema::String)),
    ("stringData", Schema::MapOf(&Schema::String)),
    ("type", Schema::String),
    ("immutable", Schema::Bool),
]);

static NAMESPACE: Schema = Schema::Object(&[
    ("apiVersion", Schema::String),
    ("kind", Schema::String),
    ("metadata", Schema::Any),
    (
        "spec",
        Schema::Object(&[("finalizers", Schema::ListOf(&Schema::String))]),
    ),
    (
        "status",
        Schema::Object(&[
            ("phase", Schema::String),
            ("conditions", Schema::ListOf(&Schema::Any)),
        ]),
    ),
]);

static FREE_FORM: Schema = Schema::Any;

/// `apps/v1` ControllerRevision (`data` is free-form: the patch a controller records).
static CONTROLLER_REVISION: Schema = Schema::Object(&[
    ("apiVersion", Schema::String),
    ("kind", Schema::String),
    ("metadata", Schema::Any),
    ("data", Schema::Any),
    ("revision", Schema::Int),
]);

/// `status`, read only (the controllers write it).
const STATUS: Subresource = Subresource {
    name: "status",
    kind: None,
    verbs: &["get"],
};

/// `meta/v1` LabelSelector.
const LABEL_SELECTOR: Schema = Schema::Object(&[
    ("matchLabels", Schema::MapOf(&Schema::String)),
    (
        "matchExpressions",
        Schema::ListOf(&Schema::Object(&[
            ("key", Schema::String),
            ("operator", Schema::String),
            ("values", Schema::ListOf(&Schema::String)),
        ])),
    ),
]);

/// `policy/v1` PodDisruptionBudget (`minAvailable` and `maxUnavailable` are int-or-string).
static POD_DISRUPTION_BUDGET: Schema = Schema::Object(&[
    ("apiVersion", Schema::String),
    ("kind", Schema::String),
    ("metadata", Schema::Any),
    (
        "spec",
        Schema::Object(&[
            ("minAvailable", Schema::Any),
            ("maxUnavailable", Schema::Any),
            ("selector", LABEL_SELECTOR),
            ("unhealthyPodEvictionPolicy", Schema::String),
        ]),
    ),
    ("status", Schema::Any),
]);

/// `status` (read) and `scale` (autoscaling/v1 `Scale`) of Deployments, ReplicaSets and
/// StatefulSets.
static WORKLOAD_SUBRESOURCES: &[Subresource] = &[
    STATUS,
    Subresource {
        name: "scale",
        kind: Some(("autoscaling", "v1", "Scale")),
        verbs: &["get", "patch", "update"],
    },
];

/// `status` (read) alone: Jobs, CronJobs, DaemonSets and the other kinds whose status the
/// controllers write.
static STATUS_ONLY: &[Subresource] = &[STATUS];

/// Strategic-merge keys of Pod, ReplicaSet and Deployment lists (Kubernetes'
/// `patchMergeKey` tags); a Deployment's or ReplicaSet's pod template is a pod spec.
pub fn workload_merge_keys(path: &str) -> Option<&'static str> {
    if path == "metadata.ownerReferences" || path == "spec.template.metadata.ownerReferences" {
        return Some("uid");
    }
    if path == "status.conditions" {
        return Some("type");
    }
    let pod = path
        .strip_prefix("spec.template.spec.")
        .or_else(|| path.strip_prefix("spec."))?;
    let container_list = |p: &str| -> Option<&'static str> {
        match p {
            "ports" => Some("containerPort"),
            "env" => Some("name"),
            "volumeMounts" => Some("mountPath"),
            "volumeDevices" => Some("devicePath"),
            "resizePolicy" => Some("resourceName"),
            _ => None,
        }
    };
    match pod {
        "containers" | "initContainers" | "ephemeralContainers" => Some("name"),
        "volumes" | "imagePullSecrets" | "resourceClaims" | "schedulingGates" => Some("name"),
        "hostAliases" => Some("ip"),
        "topologySpreadConstraints" => Some("topologyKey"),
        other => {
            let (parent, field) = other.split_once('.')?;
            match parent {
                "containers" | "initContainers" | "ephemeralContainers" => container_list(field),
                _ => None,
            }
        }
    }
}

/// A CronJob's strategic-merge keys: its Job template's pod template is a pod template.
pub fn cronjob_merge_keys(path: &str) -> Option<&'static str> {
    match path.strip_prefix("spec.jobTemplate.") {
        Some(rest) => workload_merge_keys(rest),
        None => workload_merge_keys(path),
    }
}

/// Every kind served. Adding a kind is one entry here (plus its schema).
pub static RESOURCES: &[ResourceInfo] = &[
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "nodes",
        singular: "node",
        kind: "Node",
        short_names: &["no"],
        categories: &[],
        namespaced: false,
        verbs: &["delete", "get", "list", "patch", "update", "watch"],
        name_rule: NameRule::Subdomain,
        schema: &FREE_FORM,
        merge_keys: no_merge_keys,
        columns: Columns::Node,
        storage: Storage::Nodes,
        workload: None,
        subresources: &[],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        short_names: &["ns"],
        categories: &[],
        namespaced: false,
        verbs: NAMESPACE_VERBS,
        name_rule: NameRule::Label,
        schema: &NAMESPACE,
        merge_keys: no_merge_keys,
        columns: Columns::Namespace,
        storage: Storage::Objects,
        workload: None,
        subresources: &[],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "configmaps",
        singular: "configmap",
        kind: "ConfigMap",
        short_names: &["cm"],
        categories: &[],
        namespaced: true,
        verbs: ALL_VERBS,
        name_rule: NameRule::Subdomain,
        schema: &CONFIG_MAP,
        merge_keys: no_merge_keys,
        columns: Columns::ConfigMap,
        storage: Storage::Objects,
        workload: None,
        subresources: &[],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "secrets",
        singular: "secret",
        kind: "Secret",
        short_names: &[],
        categories: &[],
        namespaced: true,
        verbs: ALL_VERBS,
        name_rule: NameRule::Subdomain,
        schema: &SECRET,
        merge_keys: no_merge_keys,
        columns: Columns::Secret,
        storage: Storage::Objects,
        workload: None,
        subresources: &[],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "pods",
        singular: "pod",
        kind: "Pod",
        short_names: &["po"],
        categories: &["all"],
        namespaced: true,
        verbs: ALL_VERBS,
        name_rule: NameRule::Subdomain,
        schema: &FREE_FORM,
        merge_keys: workload_merge_keys,
        columns: Columns::Pod,
        storage: Storage::Objects,
        workload: Some(Workload::Pod),
        subresources: &[
            STATUS,
            Subresource {
                name: "log",
                kind: None,
                verbs: &["get"],
            },
            Subresource {
                name: "exec",
                kind: Some(("", "v1", "PodExecOptions")),
                verbs: &["get", "create"],
            },
            // `kubectl drain` finds evictions here (group, version and kind must be set).
            Subresource {
                name: "eviction",
                kind: Some(("policy", "v1", "Eviction")),
                verbs: &["create"],
            },
        ],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        short_names: &["ev"],
        categories: &[],
        namespaced: true,
        verbs: READ_VERBS,
        name_rule: NameRule::Subdomain,
        schema: &FREE_FORM,
        merge_keys: no_merge_keys,
        columns: Columns::Event,
        storage: Storage::Events,
        workload: None,
        subresources: &[],
    },
    ResourceInfo {
        group: "apps",
        version: "v1",
        plural: "deployments",
        singular: "deployment",
        kind: "Deployment",
        short_names: &["deploy"],
        categories: &["all"],
        namespaced: true,
        verbs: ALL_VERBS,
        name_rule: NameRule::Subdomain,
        schema: &FREE_FORM,
        merge_keys: workload_merge_keys,
        columns: Columns::Deployment,
        storage: Storage::Objects,
        workload: Some(Workload::Deployment),
        subresources: WORKLOAD_SUBRESOURCES,
    },
    ResourceInfo {
        group: "apps",
        version: "v1",
        plural: "replicasets",
        singular: "replicaset",
        kind: "ReplicaSet",
        short_names: &["rs"],
        categories: &["all"],
        namespaced: true,
        verbs: ALL_VERBS,
        name_rule: NameRule::Subdomain,
        schema: &FREE_FORM,
        merge_keys: workload_merge_keys,
        columns: Columns::ReplicaSet,
        storage: Storage::Objects,
        workload: Some(Workload::ReplicaSet),
        subresources: WORKLOAD_SUBRESOURCES,
    },
    ResourceInfo {
        group: "apps",
        version: "v1",
        plural: "daemonsets",
        singular: "daemonset",
        kind: "DaemonSet",
        short_names: &["ds"],
        categories: &["all"],
        namespaced: true,
        verbs: ALL_VERBS,
        name_rule: NameRule::Subdomain,
        schema: &FREE_FORM,
        merge_keys: workload_merge_keys,
        columns: Columns::DaemonSet,
        storage: Storage::Objects,
        workload: Some(Workload::DaemonSet),
        subresources: STATUS_ONLY,
    },
    ResourceInfo {
        group: "apps",
        version: "v1",
        plural: "statefulsets",
        singular: "statefulset",
        kind: "StatefulSet",
        short_names: &["sts"],
        categories: &["all"],
        namespaced: true,
        verbs: ALL_VERBS,
        name_rule: NameRule::Subdomain,
        schema: &FREE_FORM,
        merge_keys: workload_merge_keys,
        columns: Columns::StatefulSet,
        storage: Storage::Objects,
        workload: Some(Workload::StatefulSet),
        subresources: WORKLOAD_SUBRESOURCES,
    },
    // Written by the StatefulSet and DaemonSet controllers (`sched::revisions`); users may
    // write them too, as in Kubernetes (`api::revisions`).
    ResourceInfo {
        group: "apps",
        version: "v1",
        plural: "controllerrevisions",
        singular: "controllerrevision",
        kind: "ControllerRevision",
        short_names: &[],
        categories: &[],
        namespaced: true,
        verbs: ALL_VERBS,
        name_rule: NameRule::Subdomain,
        schema: &CONTROLLER_REVISION,
        merge_keys: service_merge_keys,
        columns: Columns::ControllerRevision,
        storage: Storage::Objects,
        workload: None,
        subresources: &[],
    },
    ResourceInfo {
        group: "batch",
        version: "v1",
        plural: "jobs",
        singular: "job",
        kind: "Job",
        short_names: &[],
        categories: &["all"],
        namespaced: true,
        verbs: ALL_VERBS,
        name_rule: NameRule::Subdomain,
        schema: &FREE_FORM,
        merge_keys: workload_merge_keys,
        columns: Columns::Job,
        storage: Storage::Objects,
        workload: Some(Workload::Job),
        subresources: STATUS_ONLY,
    },
    ResourceInfo {
        group: "batch",
        version: "v1",
        plural: "cronjobs",
        singular: "cronjob",
        kind: "CronJob",
        short_names: &["cj"],
        categories: &["all"],
        namespaced: true,
        verbs: ALL_VERBS,
        name_rule: NameRule::Subdomain,
        schema: &FREE_FORM,
        merge_keys: cronjob_merge_keys,
        columns: Columns::CronJob,
        storage: Storage::Objects,
        workload: Some(Workload::CronJob),
        subresources: STATUS_ONLY,
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "services",
        singular: "service",
        kind: "Service",
        short_names: &["svc"],
        categories: &["all"],
        namespaced: true,
        verbs: ALL_VERBS,
        name_rule: NameRule::Label,
        // Checked through `k8s_openapi`'s Service (`typed::check_service`).
        schema: &FREE_FORM,
        merge_keys: service_merge_keys,
        columns: Columns::Service,
        storage: Storage::Objects,
        workload: None,
        subresources: STATUS_ONLY,
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "endpoints",
        singular: "endpoints",
        kind: "Endpoints",
        short_names: &["ep"],
        categories: &[],
        namespaced: true,
        verbs: READ_VERBS,
        name_rule: NameRule::Subdomain,
        schema: &FREE_FORM,
        merge_keys: no_merge_keys,
        columns: Columns::Endpoints,
        storage: Storage::Computed,
        workload: None,
        subresources: &[],
    },
    ResourceInfo {
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        singular: "endpointslice",
        kind: "EndpointSlice",
        short_names: &[],
        categories: &[],
        namespaced: true,
        verbs: READ_VERBS,
        name_rule: NameRule::Subdomain,
        schema: &FREE_FORM,
        merge_keys: no_merge_keys,
        columns: Columns::EndpointSlice,
        storage: Storage::Computed,
        workload: None,
        subresources: &[],
    },
    // `kubectl top nodes`. Served by `usage.rs` as plain lists (no Table columns).
    ResourceInfo {
        group: "metrics.k8s.io",
        version: "v1beta1",
        plural: "nodes",
        singular: "",
        kind: "NodeMetrics",
        short_names: &[],
        categories: &[],
        namespaced: false,
        verbs: USAGE_VERBS,
        name_rule: NameRule::Subdomain,
        schema: &FREE_FORM,
        merge_keys: no_merge_keys,
        columns: Columns::Namespace,
        storage: Storage::Usage,
        workload: None,
        subresources: &[],
    },
    // `kubectl top pods`.
    ResourceInfo {
        group: "metrics.k8s.io",
        version: "v1beta1",
        plural: "pods",
        singular: "",
        kind: "PodMetrics",
        short_names: &[],
        categories: &[],
        namespaced: true,
        verbs: USAGE_VERBS,
        name_rule: NameRule::Subdomain,
        schema: &FREE_FORM,
        merge_keys: no_merge_keys,
        columns: Columns::Namespace,
        storage: Storage::Usage,
        workload: None,
        subresources: &[],
    },
    ResourceInfo {
        group: "policy",
        version: "v1",
        plural: "poddisruptionbudgets",
        singular: "poddisruptionbudget",
        kind: "PodDisruptionBudget",
        short_names: &["pdb"],
        categories: &[],
        namespaced: true,
        verbs: ALL_VERBS,
        name_rule: NameRule::Subdomain,
        schema: &POD_DISRUPTION_BUDGET,
        merge_keys: no_merge_keys,
        columns: Columns::PodDisruptionBudget,
        storage: Storage::Objects,
        workload: None,
        subresources: STATUS_ONLY,
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "persistentvolumeclaims",
        singular: "persistentvolumeclaim",
        kind: "PersistentVolumeClaim",
        short_names: &["pvc"],
        categories: &[],
        namespaced: true,
        verbs: ALL_VERBS,
        name_rule: NameRule::Subdomain,
        schema: &FREE_FORM,
        merge_keys: no_merge_keys,
        columns: Columns::PersistentVolumeClaim,
        storage: Storage::Objects,
        workload: None,
        subresources: STATUS_ONLY,
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "persistentvolumes",
        singular: "persistentvolume",
        kind: "PersistentVolume",
        short_names: &["pv"],
        categories: &[],
        namespaced: false,
        verbs: ALL_VERBS,
        name_rule: NameRule::Subdomain,
        schema: &FREE_FORM,
        merge_keys: no_merge_keys,
        columns: Columns::PersistentVolume,
        storage: Storage::Objects,
        workload: None,
        subresources: STATUS_ONLY,
    },
    ResourceInfo {
        group: "storage.k8s.io",
        version: "v1",
        plural: "storageclasses",
        singular: "storageclass",
        kind: "StorageClass",
        short_names: &["sc"],
        categories: &[],
        namespaced: false,
        verbs: ALL_VERBS,
        name_rule: NameRule::Subdomain,
        schema: &FREE_FORM,
        merge_keys: no_merge_keys,
        columns: Columns::StorageClass,
        storage: Storage::Objects,
        workload: None,
        subresources: &[],
    },
];

/// Strategic-merge keys of a Service (`ports` merge by `port`, as Kubernetes' tags say).
pub fn service_merge_keys(path: &str) -> Option<&'static str> {
    match path {
        "spec.ports" => Some("port"),
        "metadata.ownerReferences" => Some("uid"),
        _ => None,
    }
}

pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

#[cfg(test)]
pub fn by_plural(plural: &str) -> Option<&'static ResourceInfo> {
    RESOURCES.iter().find(|r| r.plural == plural)
}

/// Group versions served, in table order: `("", "v1")`, `("apps", "v1")`, ...
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

pub fn in_group_version<'a>(
    group: &'a str,
    version: &'a str,
) -> impl Iterator<Item = &'static ResourceInfo> + 'a {
    RESOURCES
        .iter()
        .filter(move |r| r.group == group && r.version == version)
}

/// What schema checking found: unknown fields (pruned from the value) and type errors.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SchemaReport {
    pub unknown: Vec<String>,
    pub type_errors: Vec<String>,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn check(value: &mut Value, schema: &Schema, path: &str, report: &mut SchemaReport) {
    let mismatch = |expected: &str, report: &mut SchemaReport, v: &Value| {
        report
            .type_errors
            .push(format!("{path}: expected {expected}, got {}", type_name(v)));
    };
    match (schema, &mut *value) {
        (_, Value::Null) | (Schema::Any, _) => {}
        (Schema::String, Value::String(_)) | (Schema::Bool, Value::Bool(_)) => {}
        (Schema::Int, Value::Number(n)) if n.is_i64() || n.is_u64() => {}
        (Schema::String, v) => mismatch("string", report, v),
        (Schema::Bool, v) => mismatch("boolean", report, v),
        (Schema::Int, v) => mismatch("integer", report, v),
        (Schema::Object(fields), Value::Object(map)) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                match fields.iter().find(|(name, _)| *name == key) {
                    Some((_, sub)) => {
                        if let Some(v) = map.get_mut(&key) {
                            check(v, sub, &join(path, &key), report);
                        }
                    }
                    None => {
                        report.unknown.push(join(path, &key));
                        map.remove(&key);
                    }
                }
            }
        }
        (Schema::MapOf(sub), Value::Object(map)) => {
            for (key, v) in map.iter_mut() {
                check(v, sub, &join(path, key), report);
            }
        }
        (Schema::ListOf(sub), Value::Array(items)) => {
            for (i, v) in items.iter_mut().enumerate() {
                check(v, sub, &format!("{path}[{i}]"), report);
            }
        }
        (Schema::Object(_) | Schema::MapOf(_), v) => mismatch("object", report, v),
        (Schema::ListOf(_), v) => mismatch("array", report, v),
    }
}

/// Checks `object` (a whole object of kind `info`) against its schema and ObjectMeta, pruning
/// unknown fields in place.
pub fn check_schema(info: &ResourceInfo, object: &mut Value) -> SchemaReport {
    let mut report = SchemaReport::default();
    check(object, info.schema, "", &mut report);
    if let Some(meta) = object.get_mut("metadata") {
        check(meta, &OBJECT_META, "metadata", &mut report);
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_is_consistent() {
        for r in RESOURCES {
            assert_eq!(
                find(r.group, r.version, r.plural).map(|f| f.kind),
                Some(r.kind)
            );
            assert!(r.allows("get"));
        }
        assert_eq!(
            group_versions(),
            vec![
                ("", "v1"),
                ("apps", "v1"),
                ("batch", "v1"),
                ("discovery.k8s.io", "v1"),
                ("metrics.k8s.io", "v1beta1"),
                ("policy", "v1"),
                ("storage.k8s.io", "v1")
            ]
        );
        assert_eq!(
            by_plural("storageclasses").unwrap().backend_resource(),
            crate::model::storage::STORAGE_CLASSES
        );
        assert_eq!(
            by_plural("persistentvolumeclaims")
                .unwrap()
                .backend_resource(),
            crate::model::storage::PVCS
        );
        let deploy = by_plural("deployments").unwrap();
        assert_eq!(
            deploy.backend_resource(),
            crate::model::workload::DEPLOYMENTS
        );
        assert_eq!(deploy.qualified_kind(), "Deployment.apps");
        assert_eq!(
            by_plural("controllerrevisions").unwrap().backend_resource(),
            crate::model::workload::CONTROLLER_REVISIONS
        );
        assert_eq!(
            by_plural("replicasets").unwrap().backend_resource(),
            crate::model::workload::REPLICASETS
        );
        assert_eq!(
            by_plural("configmaps").unwrap().backend_resource(),
            "configmaps"
        );
        assert_eq!(by_plural("secrets").unwrap().backend_resource(), "secrets");
    }

    #[test]
    fn workload_merge_keys_follow_kubernetes_tags() {
        assert_eq!(workload_merge_keys("spec.containers"), Some("name"));
        assert_eq!(
            workload_merge_keys("spec.template.spec.containers"),
            Some("name")
        );
        assert_eq!(
            workload_merge_keys("spec.template.spec.containers.ports"),
            Some("containerPort")
        );
        assert_eq!(workload_merge_keys("spec.containers.env"), Some("name"));
        assert_eq!(workload_merge_keys("spec.containers.args"), None);
        assert_eq!(workload_merge_keys("spec.tolerations"), None);
        assert_eq!(workload_merge_keys("metadata.ownerReferences"), Some("uid"));
    }

    #[test]
    fn schema_prunes_unknown_fields_and_reports_types() {
        let info = by_plural("configmaps").unwrap();
        let mut obj = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "x", "bogus": 1, "creationTimestamp": null},
            "data": {"a": "1", "b": 2},
            "extra": true,
        });
        let report = check_schema(info, &mut obj);
        assert_eq!(
            report.unknown,
            vec!["extra".to_string(), "metadata.bogus".to_string()]
        );
        assert_eq!(
            report.type_errors,
            vec!["data.b: expected string, got number".to_string()]
        );
        assert!(obj.get("extra").is_none());
    }
}
