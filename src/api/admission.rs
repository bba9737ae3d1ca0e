//! Defaulting and semantic validation of workload objects (Pod, ReplicaSet, Deployment) as
//! Kubernetes' registry strategies do them on create and update. Pure: JSON in, JSON or
//! field-naming [`Cause`]s out.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::resources::Workload;
use super::status::Cause;
use super::validation::SUBDOMAIN_MSG;
use super::workloads::selector_matches;
use crate::model::image::default_pull_policy;
use crate::model::{is_dns1123_label, is_dns1123_subdomain, quantity};

/// Where the pod spec of a workload object is.
fn pod_spec_path(workload: Workload) -> &'static [&'static str] {
    match workload {
        Workload::Pod => &["spec"],
        Workload::ReplicaSet
        | Workload::Deployment
        | Workload::Job
        | Workload::DaemonSet
        | Workload::StatefulSet => &["spec", "template", "spec"],
        Workload::CronJob => &["spec", "jobTemplate", "spec", "template", "spec"],
    }
}

fn at_mut<'a>(value: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    let mut cursor = value;
    for p in path {
        cursor = cursor.as_object_mut()?.get_mut(*p)?;
    }
    Some(cursor)
}

fn set_default(map: &mut Value, field: &str, default: Value) {
    if let Some(m) = map.as_object_mut() {
        let slot = m.entry(field.to_string()).or_insert(Value::Null);
        if slot.is_null() {
            *slot = default;
        }
    }
}

fn default_container(c: &mut Value) {
    let image = c["image"].as_str().unwrap_or_default().to_string();
    if !image.is_empty() {
        set_default(c, "imagePullPolicy", json!(default_pull_policy(&image)));
    }
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    set_default(c, "resources", json!({}));
    for list in ["requests", "limits"] {
        if let Some(map) = c["resources"][list].as_object_mut() {
            // `cpu: 1` in YAML arrives as a number; Kubernetes stores quantities as strings.
            for v in map.values_mut() {
                if let Value::Number(n) = v {
                    *v = json!(n.to_string());
                }
            }
        }
    }
    if let Some(ports) = c["ports"].as_array_mut() {
        for p in ports {
            set_default(p, "protocol", json!("TCP"));
        }
    }
    default_probes(c);
}

/// Kubernetes' probe defaults (0 counts as unset), and `path: /`, `scheme: HTTP` for httpGet
/// handlers of probes and lifecycle hooks.
fn default_probes(c: &mut Value) {
    for kind in PROBES {
        let Some(probe) = c.get_mut(kind).filter(|p| p.is_object()) else {
            continue;
        };
        for (field, default) in [
            ("timeoutSeconds", 1),
            ("periodSeconds", 10),
            ("successThreshold", 1),
            ("failureThreshold", 3),
        ] {
            if probe[field].is_null() || probe[field] == 0 {
                probe[field] = json!(default);
            }
        }
        default_http_get(probe);
    }
    for hook in ["postStart", "preStop"] {
        if let Some(h) = at_mut(c, &["lifecycle", hook]) {
            default_http_get(h);
        }
    }
}

fn default_http_get(handler: &mut Value) {
    if let Some(http) = handler.get_mut("httpGet").filter(|h| h.is_object()) {
        set_default(http, "path", json!("/"));
        set_default(http, "scheme", json!("HTTP"));
    }
}

const PROBES: [&str; 3] = ["livenessProbe", "readinessProbe", "startupProbe"];

/// Kubernetes' `IsValidPortName` (IANA_SVC_NAME) messages for `name`.
fn port_name_errors(name: &str) -> Vec<&'static str> {
    let mut errors = Vec::new();
    if name.len() > 15 {
        errors.push("must be no more than 15 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        errors.push("must contain only alpha-numerics and '-'");
    }
    if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        errors.push("must contain at least one letter (a-z)");
    }
    if name.contains("--") {
        errors.push("must not contain consecutive hyphens");
    }
    if name.starts_with('-') || name.ends_with('-') {
        errors.push("must not begin or end with a hyphen");
    }
    errors
}

/// A handler's port: a number in 1–65535 or an IANA_SVC_NAME.
fn validate_port(port: &Value, field: String, causes: &mut Vec<Cause>) {
    match port {
        Value::Null => causes.push(required(field)),
        Value::String(name) if name.parse::<i64>().is_err() => {
            for msg in port_name_errors(name) {
                causes.push(invalid(field.clone(), port, msg));
            }
        }
        other => {
            let n = other
                .as_i64()
                .or_else(|| other.as_str().and_then(|s| s.parse().ok()));
            if !n.is_some_and(|n| (1..=65535).contains(&n)) {
                causes.push(invalid(
                    field,
                    port,
                    "must be between 1 and 65535, inclusive",
                ));
            }
        }
    }
}

/// Exactly one handler of `kinds`, each well-formed.
fn validate_handler(h: &Value, path: &str, kinds: &[&str], causes: &mut Vec<Cause>) {
    let given: Vec<&str> = kinds.iter().copied().filter(|k| !h[*k].is_null()).collect();
    match given.as_slice() {
        [] => causes.push(Cause {
            reason: "FieldValueRequired".into(),
            field: path.to_string(),
            message: "Required value: must specify a handler type".into(),
        }),
        [_] => {}
        [_, second, ..] => causes.push(Cause {
            reason: "FieldValueForbidden".into(),
            field: format!("{path}.{second}"),
            message: "Forbidden: may not specify more than 1 handler type".into(),
        }),
    }
    if !h["exec"].is_null() && h["exec"]["command"].as_array().is_none_or(Vec::is_empty) {
        causes.push(required(format!("{path}.exec.command")));
    }
    for kind in ["httpGet", "tcpSocket"] {
        if !h[kind].is_null() {
            validate_port(&h[kind]["port"], format!("{path}.{kind}.port"), causes);
        }
    }
    if let Some(scheme) = h["httpGet"]["scheme"].as_str() {
        if scheme != "HTTP" && scheme != "HTTPS" {
            causes.push(unsupported(
                format!("{path}.httpGet.scheme"),
                scheme,
                &["HTTP", "HTTPS"],
            ));
        }
    }
}

/// Probes and lifecycle hooks, as Kubernetes' `validateProbe` / `validateLifecycle` do.
fn validate_probes(c: &Value, path: &str, causes: &mut Vec<Cause>) {
    for kind in PROBES {
        let probe = &c[kind];
        if probe.is_null() {
            continue;
        }
        let ppath = format!("{path}.{kind}");
        validate_handler(
            probe,
            &ppath,
            &["exec", "httpGet", "tcpSocket", "grpc"],
            causes,
        );
        for field in [
            "initialDelaySeconds",
            "timeoutSeconds",
            "periodSeconds",
            "successThreshold",
            "failureThreshold",
        ] {
            if probe[field].as_i64().is_some_and(|v| v < 0) {
                causes.push(invalid(
                    format!("{ppath}.{field}"),
                    &probe[field],
                    "must be greater than or equal to 0",
                ));
            }
        }
        if kind != "readinessProbe" && probe["successThreshold"].as_i64().is_some_and(|v| v != 1) {
            causes.push(invalid(
                format!("{ppath}.successThreshold"),
                &probe["successThreshold"],
                "must be 1",
            ));
        }
        let grace = &probe["terminationGracePeriodSeconds"];
        if kind == "readinessProbe" && !grace.is_null() {
            causes.push(invalid(
                format!("{ppath}.terminationGracePeriodSeconds"),
                grace,
                "must not be set for readinessProbes",
            ));
        } else if grace.as_i64().is_some_and(|g| g <= 0) {
            causes.push(invalid(
                format!("{ppath}.terminationGracePeriodSeconds"),
                grace,
                "must be greater than 0",
            ));
        }
        if !probe["grpc"].is_null() {
            causes.push(unsupported(
                format!("{ppath}.grpc"),
                "grpc",
                &["exec", "httpGet", "tcpSocket"],
            ));
        }
    }
    for hook in ["postStart", "preStop"] {
        let h = &c["lifecycle"][hook];
        if !h.is_null() {
            validate_handler(
                h,
                &format!("{path}.lifecycle.{hook}"),
                &["exec", "httpGet", "tcpSocket", "sleep"],
                causes,
            );
        }
    }
}

fn default_pod_spec(spec: &mut Value) {
    // Before the containers' defaults: a hostNetwork pod's ports get hostPort = containerPort.
    crate::model::host_port::default_spec(spec);
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "enableServiceLinks", json!(true));
    for list in ["containers", "initContainers"] {
        if let Some(containers) = spec[list].as_array_mut() {
            containers.iter_mut().for_each(default_container);
        }
    }
}

/// Applies Kubernetes' defaults and drops `status` (set only by the system, computed on read).
pub fn default(workload: Workload, object: &mut Value) {
    if let Some(m) = object.as_object_mut() {
        m.remove("status");
    }
    if !object["spec"].is_object() {
        object["spec"] = json!({});
    }
    match workload {
        Workload::Pod => {}
        Workload::ReplicaSet => set_default(&mut object["spec"], "replicas", json!(1)),
        Workload::Deployment => {
            let spec = &mut object["spec"];
            set_default(spec, "replicas", json!(1));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "progressDeadlineSeconds", json!(600));
            set_default(spec, "strategy", json!({}));
            set_default(&mut spec["strategy"], "type", json!("RollingUpdate"));
            if spec["strategy"]["type"] == "RollingUpdate" {
                set_default(&mut spec["strategy"], "rollingUpdate", json!({}));
                let rolling = &mut spec["strategy"]["rollingUpdate"];
                set_default(rolling, "maxSurge", json!("25%"));
                set_default(rolling, "maxUnavailable", json!("25%"));
            }
        }
        Workload::Job => default_job(object),
        Workload::CronJob => {
            let spec = &mut object["spec"];
            set_default(spec, "concurrencyPolicy", json!("Allow"));
            set_default(spec, "suspend", json!(false));
            set_default(spec, "successfulJobsHistoryLimit", json!(3));
            set_default(spec, "failedJobsHistoryLimit", json!(1));
            if spec["jobTemplate"]["spec"].is_object() {
                let mut job = json!({"spec": spec["jobTemplate"]["spec"].take()});
                default_job(&mut job);
                spec["jobTemplate"]["spec"] = job["spec"].take();
            }
        }
        Workload::DaemonSet => {
            let spec = &mut object["spec"];
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "updateStrategy", json!({}));
            set_default(&mut spec["updateStrategy"], "type", json!("RollingUpdate"));
            if spec["updateStrategy"]["type"] == "RollingUpdate" {
                set_default(&mut spec["updateStrategy"], "rollingUpdate", json!({}));
                let rolling = &mut spec["updateStrategy"]["rollingUpdate"];
                set_default(rolling, "maxUnavailable", json!(1));
                set_default(rolling, "maxSurge", json!(0));
            }
        }
        Workload::StatefulSet => {
            let spec = &mut object["spec"];
            set_default(spec, "replicas", json!(1));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "podManagementPolicy", json!("OrderedReady"));
            set_default(spec, "updateStrategy", json!({}));
            set_default(&mut spec["updateStrategy"], "type", json!("RollingUpdate"));
            if spec["updateStrategy"]["type"] == "RollingUpdate" {
                set_default(&mut spec["updateStrategy"], "rollingUpdate", json!({}));
                set_default(
                    &mut spec["updateStrategy"]["rollingUpdate"],
                    "partition",
                    json!(0),
                );
            }
            set_default(spec, "persistentVolumeClaimRetentionPolicy", json!({}));
            let retention = &mut spec["persistentVolumeClaimRetentionPolicy"];
            set_default(retention, "whenDeleted", json!("Retain"));
            set_default(retention, "whenScaled", json!("Retain"));
            for t in spec["volumeClaimTemplates"]
                .as_array_mut()
                .into_iter()
                .flatten()
            {
                super::storage::default_claim(t);
            }
        }
    }
    if let Some(spec) = at_mut(object, pod_spec_path(workload)) {
        if spec.is_object() {
            default_pod_spec(spec);
        }
    }
}

/// Kubernetes' Job defaults: `parallelism` and `completions` 1 (when neither is set),
/// `backoffLimit` 6, `completionMode` NonIndexed, `suspend` false, and unless
/// `manualSelector`, a selector on the Job's uid with the pod labels it needs
/// (`batch.kubernetes.io/controller-uid`, `batch.kubernetes.io/job-name`, `controller-uid`,
/// `job-name`).
fn default_job(object: &mut Value) {
    let spec = &mut object["spec"];
    if spec["completions"].is_null() && spec["parallelism"].is_null() {
        set_default(spec, "completions", json!(1));
    }
    set_default(spec, "parallelism", json!(1));
    // With a per-index limit the Job-wide one is "none" (Kubernetes: MaxInt32).
    let backoff_limit = if spec["backoffLimitPerIndex"].is_null() {
        6
    } else {
        i32::MAX
    };
    set_default(spec, "backoffLimit", json!(backoff_limit));
    set_default(spec, "completionMode", json!("NonIndexed"));
    set_default(spec, "suspend", json!(false));
    // With a podFailurePolicy a replacement waits until the old pod ended (Kubernetes' rule).
    let replacement = if spec["podFailurePolicy"].is_null() {
        "TerminatingOrFailed"
    } else {
        "Failed"
    };
    set_default(spec, "podReplacementPolicy", json!(replacement));
    crate::sched::job::generate_selector(object);
}

/// A CronJob: its schedule and time zone parse, a known concurrency policy, and its Job
/// template is a valid Job (errors name `spec.jobTemplate.spec.…`).
fn validate_cronjob(object: &Value, causes: &mut Vec<Cause>) {
    let spec = &object["spec"];
    match spec["schedule"].as_str() {
        None | Some("") => causes.push(required("spec.schedule".into())),
        Some(schedule) => {
            if let Err(e) = crate::sched::cronjob::parse_schedule(schedule, None) {
                causes.push(invalid("spec.schedule".into(), &spec["schedule"], &e));
            }
        }
    }
    if let Some(tz) = spec["timeZone"].as_str() {
        if let Err(e) = crate::sched::cronjob::parse_schedule("* * * * *", Some(tz)) {
            causes.push(invalid("spec.timeZone".into(), &spec["timeZone"], &e));
        }
    }
    if let Some(policy) = spec["concurrencyPolicy"].as_str() {
        let supported = ["Allow", "Forbid", "Replace"];
        if !supported.contains(&policy) {
            causes.push(unsupported(
                "spec.concurrencyPolicy".into(),
                policy,
                &supported,
            ));
        }
    }
    for f in [
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ] {
        non_negative(object, f, causes);
    }
    if !spec["jobTemplate"]["spec"].is_object() {
        causes.push(required("spec.jobTemplate.spec".into()));
        return;
    }
    // The template as a Job of its own (its selector is made when the Job is).
    let mut job = json!({"metadata": {"uid": "template", "name": "template"}, "spec": spec["jobTemplate"]["spec"].clone()});
    crate::sched::job::generate_selector(&mut job);
    let mut inner = Vec::new();
    // Updates may change a CronJob's template (only new Jobs use it): no immutable fields.
    validate_job(&job, None, &mut inner);
    for mut c in inner {
        if let Some(rest) = c.field.strip_prefix("spec.") {
            c.field = format!("spec.jobTemplate.spec.{rest}");
        }
        causes.push(c);
    }
}

/// The `spec.updateStrategy.type` of a DaemonSet or StatefulSet (`RollingUpdate` when unset);
/// any other value is refused.
fn update_strategy_type<'a>(strategy: &'a Value, causes: &mut Vec<Cause>) -> &'a str {
    let kind = strategy["type"].as_str().unwrap_or("RollingUpdate");
    let supported = ["RollingUpdate", "OnDelete"];
    if !supported.contains(&kind) {
        causes.push(unsupported(
            "spec.updateStrategy.type".into(),
            kind,
            &supported,
        ));
    }
    kind
}

/// DaemonSet rules past the common controller ones: update strategy, no surge (refused, not
/// ignored), immutable selector.
fn validate_daemonset(object: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let strategy = &object["spec"]["updateStrategy"];
    let kind = update_strategy_type(strategy, causes);
    let rolling = &strategy["rollingUpdate"];
    let zero = |v: &Value| v.is_null() || v == &json!(0) || v == &json!("0%");
    for f in ["maxSurge", "maxUnavailable"] {
        let v = &rolling[f];
        let well_formed = match v {
            Value::Null => true,
            Value::Number(n) => n
                .as_i64()
                .is_some_and(|n| (0..=i64::from(i32::MAX)).contains(&n)),
            Value::String(p) => p
                .strip_suffix('%')
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| n <= 100),
            _ => false,
        };
        if !well_formed {
            causes.push(invalid(
                format!("spec.updateStrategy.rollingUpdate.{f}"),
                v,
                "must be a non-negative integer or a percentage from 0% to 100%",
            ));
        }
    }
    if kind == "RollingUpdate" && zero(&rolling["maxUnavailable"]) && zero(&rolling["maxSurge"]) {
        causes.push(invalid(
            "spec.updateStrategy.rollingUpdate.maxUnavailable".into(),
            &rolling["maxUnavailable"],
            "may not be 0 when `maxSurge` is 0",
        ));
    }
    for (field, message) in crate::model::affinity::refused_when_pinned(
        &object["spec"]["template"]["spec"],
        "spec.template.spec",
    ) {
        causes.push(field_cause(field, message));
    }
    if let Some(old) = old {
        if old["spec"]["selector"] != object["spec"]["selector"] {
            causes.push(invalid(
                "spec.selector".into(),
                &object["spec"]["selector"],
                "field is immutable",
            ));
        }
    }
}

/// A cause from a field error message written as Kubernetes writes them, its reason read
/// from the message's start.
fn field_cause(field: String, message: String) -> Cause {
    let reason = [
        ("Unsupported", "FieldValueNotSupported"),
        ("Required", "FieldValueRequired"),
        ("Forbidden", "FieldValueForbidden"),
        ("Duplicate", "FieldValueDuplicate"),
    ]
    .iter()
    .find(|(prefix, _)| message.starts_with(prefix))
    .map_or("FieldValueInvalid", |(_, reason)| reason);
    Cause {
        reason: reason.into(),
        field,
        message,
    }
}

/// What the Job controller does not do is refused rather than ignored.
fn validate_job(object: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = &object["spec"];
    for f in [
        "parallelism",
        "completions",
        "backoffLimit",
        "activeDeadlineSeconds",
        "ttlSecondsAfterFinished",
    ] {
        non_negative(object, f, causes);
    }
    if let Some(d) = spec["activeDeadlineSeconds"].as_i64() {
        if d == 0 {
            causes.push(invalid(
                "spec.activeDeadlineSeconds".into(),
                &spec["activeDeadlineSeconds"],
                "must be greater than 0",
            ));
        }
    }
    if spec["completions"].is_null() && spec["parallelism"].as_i64().unwrap_or(1) > 1 {
        causes.push(Cause {
            reason: "FieldValueRequired".into(),
            field: "spec.completions".into(),
            message: "Required value: shoal does not run work-queue Jobs (completions unset with parallelism > 1); set completions".into(),
        });
    }
    if spec["completions"].as_i64().unwrap_or(0) > crate::sched::job::MAX_COMPLETIONS {
        causes.push(invalid(
            "spec.completions".into(),
            &spec["completions"],
            "must be less than or equal to 100000",
        ));
    }
    if let Some(mode) = spec["completionMode"].as_str() {
        let supported = ["NonIndexed", "Indexed"];
        if !supported.contains(&mode) {
            causes.push(unsupported("spec.completionMode".into(), mode, &supported));
        }
    }
    if let Some(policy) = spec["podReplacementPolicy"].as_str() {
        let supported = ["Failed", "TerminatingOrFailed"];
        if !supported.contains(&policy) {
            causes.push(unsupported(
                "spec.podReplacementPolicy".into(),
                policy,
                &supported,
            ));
        } else if policy != "Failed" && !spec["podFailurePolicy"].is_null() {
            causes.push(unsupported(
                "spec.podReplacementPolicy".into(),
                policy,
                &["Failed"],
            ));
        }
    }
    if !spec["successPolicy"].is_null() {
        causes.push(Cause {
            reason: "FieldValueForbidden".into(),
            field: "spec.successPolicy".into(),
            message: "Forbidden: not supported by shoal's Job controller".into(),
        });
    }
    for f in ["backoffLimitPerIndex", "maxFailedIndexes"] {
        non_negative(object, f, causes);
    }
    let per_index = !spec["backoffLimitPerIndex"].is_null();
    if per_index && spec["completionMode"] != "Indexed" {
        causes.push(forbidden(
            "spec.backoffLimitPerIndex".into(),
            "requires indexed completion mode",
        ));
    }
    if !spec["maxFailedIndexes"].is_null() {
        if !per_index {
            causes.push(required_with(
                "spec.backoffLimitPerIndex",
                "when maxFailedIndexes is specified",
            ));
        } else if spec["maxFailedIndexes"].as_i64() > spec["completions"].as_i64() {
            causes.push(invalid(
                "spec.maxFailedIndexes".into(),
                &spec["maxFailedIndexes"],
                "must be less than or equal to completions",
            ));
        }
    }
    validate_pod_failure_policy(spec, per_index, causes);
    if let Some(m) = spec["managedBy"].as_str() {
        if m != "kubernetes.io/job-controller" {
            causes.push(unsupported(
                "spec.managedBy".into(),
                m,
                &["kubernetes.io/job-controller"],
            ));
        }
    }
    let selector = &spec["selector"];
    let labels: BTreeMap<String, String> = spec["template"]["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
        .collect();
    if !spec["template"].is_object() {
        causes.push(required("spec.template".into()));
        return;
    }
    if selector.is_null() {
        causes.push(required("spec.selector".into()));
    } else if !selector_matches(selector, &labels) {
        causes.push(Cause {
            reason: "FieldValueInvalid".into(),
            field: "spec.template.metadata.labels".into(),
            message: "Invalid value: `selector` does not match template `labels`".into(),
        });
    }
    let pod = &spec["template"]["spec"];
    validate_pod_spec(pod, "spec.template.spec", false, causes);
    let policy = pod["restartPolicy"].as_str().unwrap_or("Always");
    if !["OnFailure", "Never"].contains(&policy) {
        causes.push(unsupported(
            "spec.template.spec.restartPolicy".into(),
            policy,
            &["OnFailure", "Never"],
        ));
    }
    if let Some(old) = old {
        for f in ["selector", "template", "completionMode", "completions"] {
            if old["spec"][f] != spec[f] {
                causes.push(invalid(format!("spec.{f}"), &spec[f], "field is immutable"));
            }
        }
    }
}

/// `spec.podFailurePolicy`, by Kubernetes' rules (`validatePodFailurePolicy`).
fn validate_pod_failure_policy(spec: &Value, per_index: bool, causes: &mut Vec<Cause>) {
    let policy = &spec["podFailurePolicy"];
    if policy.is_null() {
        return;
    }
    let restart = spec["template"]["spec"]["restartPolicy"].as_str();
    if restart != Some("Never") {
        causes.push(invalid(
            "spec.template.spec.restartPolicy".into(),
            &spec["template"]["spec"]["restartPolicy"],
            "only \"Never\" is supported when podFailurePolicy is specified",
        ));
    }
    let Some(rules) = policy["rules"].as_array() else {
        causes.push(required("spec.podFailurePolicy.rules".into()));
        return;
    };
    if rules.len() > 20 {
        causes.push(Cause {
            reason: "FieldValueTooMany".into(),
            field: "spec.podFailurePolicy.rules".into(),
            message: format!("Too many: {}: must have at most 20 items", rules.len()),
        });
    }
    let containers: BTreeSet<&str> = ["containers", "initContainers"]
        .iter()
        .flat_map(|l| {
            spec["template"]["spec"][*l]
                .as_array()
                .into_iter()
                .flatten()
        })
        .filter_map(|c| c["name"].as_str())
        .collect();
    for (i, rule) in rules.iter().enumerate() {
        let path = format!("spec.podFailurePolicy.rules[{i}]");
        let actions = ["Count", "FailIndex", "FailJob", "Ignore"];
        match rule["action"].as_str() {
            None => causes.push(required(format!("{path}.action"))),
            Some("FailIndex") if !per_index => causes.push(forbidden(
                format!("{path}.action"),
                "requires the backoffLimitPerIndex to be set",
            )),
            Some(a) if !actions.contains(&a) => {
                causes.push(unsupported(format!("{path}.action"), a, &actions))
            }
            Some(_) => {}
        }
        let (codes, conditions) = (&rule["onExitCodes"], &rule["onPodConditions"]);
        match (codes.is_null(), conditions.is_null()) {
            (false, false) => causes.push(invalid(
                path.clone(),
                &Value::String("specifying both OnExitCodes and OnPodConditions".into()),
                "specifying both OnExitCodes and OnPodConditions is not supported",
            )),
            (true, true) => causes.push(invalid(
                path.clone(),
                &Value::Null,
                "specifying one of OnExitCodes and OnPodConditions is required",
            )),
            _ => {}
        }
        if !codes.is_null() {
            let cpath = format!("{path}.onExitCodes");
            if let Some(c) = codes["containerName"].as_str() {
                if !containers.contains(c) {
                    causes.push(invalid(
                        format!("{cpath}.containerName"),
                        &codes["containerName"],
                        "must be one of the container or initContainer names in the pod template",
                    ));
                }
            }
            let operator = codes["operator"].as_str().unwrap_or_default();
            if operator != "In" && operator != "NotIn" {
                causes.push(unsupported(
                    format!("{cpath}.operator"),
                    operator,
                    &["In", "NotIn"],
                ));
            }
            let values: Vec<Option<i64>> = codes["values"]
                .as_array()
                .into_iter()
                .flatten()
                .map(Value::as_i64)
                .collect();
            if values.is_empty() {
                causes.push(required(format!("{cpath}.values")));
            } else if values.len() > 255 {
                causes.push(Cause {
                    reason: "FieldValueTooMany".into(),
                    field: format!("{cpath}.values"),
                    message: format!("Too many: {}: must have at most 255 items", values.len()),
                });
            }
            let mut previous: Option<i64> = None;
            for (j, v) in values.iter().enumerate() {
                let field = format!("{cpath}.values[{j}]");
                let given = &codes["values"][j];
                match v {
                    None => causes.push(invalid(field, given, "must be an integer")),
                    Some(v) if i32::try_from(*v).is_err() => {
                        causes.push(invalid(field, given, "must be a 32-bit integer"))
                    }
                    Some(0) if operator == "In" => {
                        causes.push(invalid(field, given, "must not be 0 for the In operator"))
                    }
                    Some(v) if previous == Some(*v) => causes.push(Cause {
                        reason: "FieldValueDuplicate".into(),
                        field,
                        message: format!("Duplicate value: {v}"),
                    }),
                    Some(v) if previous.is_some_and(|p| p > *v) => {
                        causes.push(invalid(field, given, "must be ordered"))
                    }
                    Some(_) => {}
                }
                previous = v.or(previous);
            }
        }
        for (j, c) in conditions.as_array().into_iter().flatten().enumerate() {
            let cpath = format!("{path}.onPodConditions[{j}]");
            if c["type"].as_str().is_none_or(str::is_empty) {
                causes.push(required(format!("{cpath}.type")));
            }
            if let Some(st) = c["status"].as_str() {
                let supported = ["True", "False", "Unknown"];
                if !supported.contains(&st) {
                    causes.push(unsupported(format!("{cpath}.status"), st, &supported));
                }
            }
        }
    }
}

/// `Required value: <detail>` for `field`.
fn required_with(field: &str, detail: &str) -> Cause {
    Cause {
        reason: "FieldValueRequired".into(),
        field: field.to_string(),
        message: format!("Required value: {detail}"),
    }
}

fn required(field: String) -> Cause {
    Cause {
        reason: "FieldValueRequired".into(),
        field,
        message: "Required value".into(),
    }
}

/// `Invalid value: <value>: <detail>`, the value rendered as Kubernetes does (strings quoted).
fn invalid(field: String, value: &Value, detail: &str) -> Cause {
    let shown = match value {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    };
    Cause {
        reason: "FieldValueInvalid".into(),
        field,
        message: format!("Invalid value: {shown}: {detail}"),
    }
}

fn unsupported(field: String, value: &str, supported: &[&str]) -> Cause {
    let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
    Cause {
        reason: "FieldValueNotSupported".into(),
        field,
        message: format!(
            "Unsupported value: {value:?}: supported values: {}",
            list.join(", ")
        ),
    }
}

pub(crate) const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

fn parse_quantity(resource: &str, value: &str) -> Result<u64, quantity::QuantityError> {
    if resource == "cpu" {
        quantity::parse_milli(value)
    } else {
        quantity::parse_units(value)
    }
}

fn validate_resources(c: &Value, path: &str, causes: &mut Vec<Cause>) {
    let mut parsed: BTreeMap<(&str, String), u64> = BTreeMap::new();
    for list in ["requests", "limits"] {
        for (resource, v) in c["resources"][list].as_object().into_iter().flatten() {
            let field = format!("{path}.resources.{list}[{resource}]");
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => String::new(),
            };
            match parse_quantity(resource, &text) {
                Ok(q) => {
                    parsed.insert((list, resource.clone()), q);
                }
                Err(e) => causes.push(invalid(field, v, &e.to_string())),
            }
        }
    }
    for ((list, resource), request) in &parsed {
        if *list != "requests" {
            continue;
        }
        if let Some(limit) = parsed.get(&("limits", resource.clone())) {
            if request > limit {
                let limit_text = match &c["resources"]["limits"][resource.as_str()] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                causes.push(invalid(
                    format!("{path}.resources.requests"),
                    &c["resources"]["requests"][resource.as_str()],
                    &format!("must be less than or equal to {resource} limit of {limit_text}"),
                ));
            }
        }
    }
}

fn validate_container(
    c: &Value,
    path: &str,
    names: &mut BTreeSet<String>,
    causes: &mut Vec<Cause>,
) {
    let name = c["name"].as_str().unwrap_or_default();
    if name.is_empty() {
        causes.push(required(format!("{path}.name")));
    } else if !is_dns1123_label(name) {
        causes.push(invalid(format!("{path}.name"), &c["name"], LABEL_MSG));
    } else if !names.insert(name.to_string()) {
        causes.push(Cause {
            reason: "FieldValueDuplicate".into(),
            field: format!("{path}.name"),
            message: format!("Duplicate value: {name:?}"),
        });
    }
    if c["image"].as_str().is_none_or(|i| i.trim().is_empty()) {
        causes.push(required(format!("{path}.image")));
    }
    if let Some(policy) = c["imagePullPolicy"].as_str() {
        let supported = ["Always", "IfNotPresent", "Never"];
        if !supported.contains(&policy) {
            causes.push(unsupported(
                format!("{path}.imagePullPolicy"),
                policy,
                &supported,
            ));
        }
    }
    for (i, port) in c["ports"].as_array().into_iter().flatten().enumerate() {
        let ppath = format!("{path}.ports[{i}]");
        let container_port = &port["containerPort"];
        match container_port.as_i64() {
            Some(p) if (1..=65535).contains(&p) => {}
            Some(_) => causes.push(invalid(
                format!("{ppath}.containerPort"),
                container_port,
                "must be between 1 and 65535, inclusive",
            )),
            None => causes.push(required(format!("{ppath}.containerPort"))),
        }
        if let Some(host) = port["hostPort"].as_i64().filter(|p| *p != 0) {
            if !(1..=65535).contains(&host) {
                causes.push(invalid(
                    format!("{ppath}.hostPort"),
                    &port["hostPort"],
                    "must be between 1 and 65535, inclusive",
                ));
            }
        }
        if let Some(protocol) = port["protocol"].as_str() {
            let supported = ["SCTP", "TCP", "UDP"];
            if !supported.contains(&protocol) {
                causes.push(unsupported(
                    format!("{ppath}.protocol"),
                    protocol,
                    &supported,
                ));
            }
        }
    }
    validate_resources(c, path, causes);
    validate_probes(c, path, causes);
    // Escaping paths and securityContext fields shoal cannot run (docs/security.md).
    for r in crate::model::security_context::refusals(c) {
        causes.push(invalid(format!("{path}.{}", r.field), &r.value, &r.detail));
    }
}

/// Kubernetes' rules for an init container: `restartPolicy` is `Always` (a sidecar) or
/// unset; only a sidecar may have probes and lifecycle hooks (a regular init container runs to
/// completion, so they would never act).
fn validate_init_container(c: &Value, path: &str, causes: &mut Vec<Cause>) {
    match c["restartPolicy"].as_str() {
        None if c["restartPolicy"].is_null() => {}
        Some("Always") => return,
        Some(other) => causes.push(unsupported(
            format!("{path}.restartPolicy"),
            other,
            &["Always"],
        )),
        None => causes.push(invalid(
            format!("{path}.restartPolicy"),
            &c["restartPolicy"],
            "must be a string",
        )),
    }
    for field in PROBES.iter().chain(&["lifecycle"]) {
        if !c[*field].is_null() {
            causes.push(forbidden(
                format!("{path}.{field}"),
                "may not be set for init containers without restartPolicy=Always",
            ));
        }
    }
}

/// `Forbidden: <detail>`.
fn forbidden(field: String, detail: &str) -> Cause {
    Cause {
        reason: "FieldValueForbidden".into(),
        field,
        message: format!("Forbidden: {detail}"),
    }
}

fn validate_pod_spec(spec: &Value, path: &str, template: bool, causes: &mut Vec<Cause>) {
    let containers = spec["containers"].as_array().filter(|c| !c.is_empty());
    if containers.is_none() {
        causes.push(required(format!("{path}.containers")));
    }
    for r in crate::model::security_context::pod_refusals(spec) {
        causes.push(invalid(format!("{path}.{}", r.field), &r.value, &r.detail));
    }
    let mut names = BTreeSet::new();
    for (i, c) in containers.into_iter().flatten().enumerate() {
        let cpath = format!("{path}.containers[{i}]");
        validate_container(c, &cpath, &mut names, causes);
        if !c["restartPolicy"].is_null() {
            causes.push(forbidden(
                format!("{cpath}.restartPolicy"),
                "may not be set for non-init containers",
            ));
        }
    }
    for (i, c) in spec["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let cpath = format!("{path}.initContainers[{i}]");
        validate_container(c, &cpath, &mut names, causes);
        validate_init_container(c, &cpath, causes);
    }
    for (i, secret) in spec["imagePullSecrets"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let field = format!("{path}.imagePullSecrets[{i}].name");
        match secret["name"].as_str().unwrap_or_default() {
            "" => causes.push(required(field)),
            name if !is_dns1123_subdomain(name) => {
                causes.push(invalid(field, &secret["name"], SUBDOMAIN_MSG))
            }
            _ => {}
        }
    }
    for (i, v) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        let claim = &v["persistentVolumeClaim"];
        if !claim.is_null() {
            let field = format!("{path}.volumes[{i}].persistentVolumeClaim.claimName");
            match claim["claimName"].as_str().unwrap_or_default() {
                "" => causes.push(required(field)),
                name if !is_dns1123_subdomain(name) => {
                    causes.push(invalid(field, &claim["claimName"], SUBDOMAIN_MSG))
                }
                _ => {}
            }
        }
    }
    if let Some(policy) = spec["restartPolicy"].as_str() {
        let supported: &[&str] = if template {
            &["Always"]
        } else {
            &["Always", "OnFailure", "Never"]
        };
        if !supported.contains(&policy) {
            causes.push(unsupported(
                format!("{path}.restartPolicy"),
                policy,
                supported,
            ));
        }
    }
    for (field, message) in crate::model::taint::validate_tolerations(
        &spec["tolerations"],
        &format!("{path}.tolerations"),
    ) {
        causes.push(field_cause(field, message));
    }
    // Node affinity, pod (anti-)affinity and topology spread: what the scheduler cannot honour
    // is refused here (docs/workloads.md, "Placement").
    for (field, message) in crate::model::affinity::validate(spec, path) {
        causes.push(field_cause(field, message));
    }
    // The node's PID and IPC namespaces are never shared (hostNetwork is): refused, not ignored.
    for field in ["hostPID", "hostIPC"] {
        if spec[field] == Value::Bool(true) {
            causes.push(forbidden(
                format!("{path}.{field}"),
                "shoal does not share the node's PID or IPC namespace with pods (hostNetwork is supported)",
            ));
        }
    }
    // The downward API (downwardAPI volumes and projections, env field references),
    // dnsPolicy/dnsConfig, and host ports (docs/networking.md, "Pod network options").
    for (field, message) in crate::model::downward::validate(spec, path)
        .into_iter()
        .chain(crate::model::network::validate_dns(spec, path))
        .chain(crate::model::host_port::validate(spec, path))
    {
        causes.push(field_cause(field, message));
    }
    // `hostname` and `subdomain`: DNS labels (the pod's hostname and, with a headless Service
    // of that name, its DNS name `<hostname>.<subdomain>.<ns>.svc.<domain>`).
    for field in ["hostname", "subdomain"] {
        if let Some(v) = spec[field].as_str().filter(|v| !v.is_empty()) {
            if !is_dns1123_label(v) {
                causes.push(invalid(format!("{path}.{field}"), &spec[field], LABEL_MSG));
            }
        }
    }
    if let Some(grace) = spec["terminationGracePeriodSeconds"].as_i64() {
        if grace < 0 {
            causes.push(invalid(
                format!("{path}.terminationGracePeriodSeconds"),
                &spec["terminationGracePeriodSeconds"],
                "must be greater than or equal to 0",
            ));
        }
    }
}

/// An `int32` count or duration of a controller spec: 0 ..= 2147483647, as Kubernetes' types
/// have it (a larger value would overflow time arithmetic downstream).
fn non_negative(object: &Value, field: &str, causes: &mut Vec<Cause>) {
    let value = &object["spec"][field];
    let message = match value.as_i64() {
        Some(v) if v < 0 => "must be greater than or equal to 0",
        Some(v) if v > i64::from(i32::MAX) => "must be less than or equal to 2147483647",
        Some(_) => return,
        None if value.is_number() => "must be an integer between 0 and 2147483647",
        None => return,
    };
    causes.push(invalid(format!("spec.{field}"), value, message));
}

fn validate_controller(object: &Value, workload: Workload, causes: &mut Vec<Cause>) {
    non_negative(object, "replicas", causes);
    non_negative(object, "minReadySeconds", causes);
    let selector = &object["spec"]["selector"];
    let labels: BTreeMap<String, String> = object["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
        .collect();
    let empty_selector = selector["matchLabels"]
        .as_object()
        .is_none_or(|m| m.is_empty())
        && selector["matchExpressions"]
            .as_array()
            .is_none_or(|m| m.is_empty());
    if selector.is_null() {
        causes.push(required("spec.selector".into()));
    } else if empty_selector {
        let kind = match workload {
            Workload::Deployment => "deployment",
            Workload::DaemonSet => "daemonset",
            Workload::StatefulSet => "statefulset",
            _ => "replicaset",
        };
        causes.push(invalid(
            "spec.selector".into(),
            selector,
            &format!("empty selector is invalid for {kind}"),
        ));
    } else if !selector_matches(selector, &labels) {
        let shown: Vec<String> = labels.iter().map(|(k, v)| format!("{k:?}:{v:?}")).collect();
        causes.push(Cause {
            reason: "FieldValueInvalid".into(),
            field: "spec.template.metadata.labels".into(),
            message: format!(
                "Invalid value: map[string]string{{{}}}: `selector` does not match template `labels`",
                shown.join(", ")
            ),
        });
    }
    if !object["spec"]["template"].is_object() {
        causes.push(required("spec.template".into()));
        return;
    }
    if workload == Workload::Deployment {
        non_negative(object, "revisionHistoryLimit", causes);
        non_negative(object, "progressDeadlineSeconds", causes);
        if let Some(strategy) = object["spec"]["strategy"]["type"].as_str() {
            let supported = ["Recreate", "RollingUpdate"];
            if !supported.contains(&strategy) {
                causes.push(unsupported(
                    "spec.strategy.type".into(),
                    strategy,
                    &supported,
                ));
            }
        }
    }
    validate_pod_spec(
        &object["spec"]["template"]["spec"],
        "spec.template.spec",
        true,
        causes,
    );
}

const POD_UPDATE_FORBIDDEN: &str = "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/// A pod spec without the fields Kubernetes lets an update change.
fn mutable_pod_fields_only(spec: &Value) -> Value {
    let mut spec = spec.clone();
    if let Some(m) = spec.as_object_mut() {
        m.remove("activeDeadlineSeconds");
        m.remove("tolerations");
    }
    for list in ["containers", "initContainers"] {
        for c in spec[list].as_array_mut().into_iter().flatten() {
            if let Some(m) = c.as_object_mut() {
                m.remove("image");
                // Defaulted from the image; follows it.
                m.remove("imagePullPolicy");
            }
        }
    }
    spec
}

/// Semantic checks of a defaulted object; `old` is the stored object on update.
pub fn validate(workload: Workload, object: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    match workload {
        Workload::Pod => {
            validate_pod_spec(&object["spec"], "spec", false, &mut causes);
            if let Some(old) = old {
                if mutable_pod_fields_only(&old["spec"]) != mutable_pod_fields_only(&object["spec"])
                {
                    causes.push(Cause {
                        reason: "FieldValueForbidden".into(),
                        field: "spec".into(),
                        message: POD_UPDATE_FORBIDDEN.into(),
                    });
                }
            }
        }
        Workload::ReplicaSet | Workload::Deployment => {
            validate_controller(object, workload, &mut causes);
            if let Some(old) = old {
                let selector = &object["spec"]["selector"];
                if workload == Workload::Deployment && old["spec"]["selector"] != *selector {
                    causes.push(invalid(
                        "spec.selector".into(),
                        selector,
                        "field is immutable",
                    ));
                }
            }
        }
        Workload::Job => validate_job(object, old, &mut causes),
        Workload::CronJob => validate_cronjob(object, &mut causes),
        Workload::DaemonSet => {
            validate_controller(object, workload, &mut causes);
            validate_daemonset(object, old, &mut causes);
        }
        Workload::StatefulSet => {
            validate_controller(object, workload, &mut causes);
            validate_statefulset(object, old, &mut causes);
        }
    }
    causes
}

/// The spec fields of a StatefulSet an update may change (Kubernetes' list).
const STATEFULSET_MUTABLE: [&str; 6] = [
    "replicas",
    "ordinals",
    "template",
    "updateStrategy",
    "persistentVolumeClaimRetentionPolicy",
    "minReadySeconds",
];

/// StatefulSet rules past the common controller ones: management policy, update strategy and
/// partition, `serviceName` a DNS label, and what shoal does not do refused, naming the field
/// (`ordinals.start`; `maxUnavailable`; in `volumeClaimTemplates`, what a claim may not ask);
/// on update, the fields Kubernetes keeps immutable.
fn validate_statefulset(object: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = &object["spec"];
    non_negative(object, "revisionHistoryLimit", causes);
    if let Some(policy) = spec["podManagementPolicy"].as_str() {
        let supported = ["OrderedReady", "Parallel"];
        if !supported.contains(&policy) {
            causes.push(unsupported(
                "spec.podManagementPolicy".into(),
                policy,
                &supported,
            ));
        }
    }
    let strategy = &spec["updateStrategy"];
    let kind = update_strategy_type(strategy, causes);
    let rolling = &strategy["rollingUpdate"];
    if kind == "OnDelete" && !rolling.is_null() {
        causes.push(invalid(
            "spec.updateStrategy.rollingUpdate".into(),
            rolling,
            "only allowed for updateStrategy 'RollingUpdate'",
        ));
    }
    let partition = &rolling["partition"];
    match partition.as_i64() {
        Some(p) if p < 0 => causes.push(invalid(
            "spec.updateStrategy.rollingUpdate.partition".into(),
            partition,
            "must be greater than or equal to 0",
        )),
        Some(p) if p > i64::from(i32::MAX) => causes.push(invalid(
            "spec.updateStrategy.rollingUpdate.partition".into(),
            partition,
            "must be less than or equal to 2147483647",
        )),
        _ => {}
    }
    if !rolling["maxUnavailable"].is_null() {
        causes.push(forbidden(
            "spec.updateStrategy.rollingUpdate.maxUnavailable".into(),
            "not supported by shoal (Kubernetes' MaxUnavailableStatefulSet is alpha): StatefulSet rollouts replace one pod at a time",
        ));
    }
    let mut templates = BTreeSet::new();
    for (i, t) in spec["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let path = format!("spec.volumeClaimTemplates[{i}]");
        match t["metadata"]["name"].as_str().unwrap_or_default() {
            "" => causes.push(required(format!("{path}.metadata.name"))),
            name if !is_dns1123_subdomain(name) => causes.push(invalid(
                format!("{path}.metadata.name"),
                &t["metadata"]["name"],
                SUBDOMAIN_MSG,
            )),
            name if !templates.insert(name) => causes.push(Cause {
                reason: "FieldValueDuplicate".into(),
                field: format!("{path}.metadata.name"),
                message: format!("Duplicate value: {name:?}"),
            }),
            _ => {}
        }
        for c in super::storage::validate_claim(t, None) {
            causes.push(Cause {
                field: format!("{path}.{}", c.field),
                ..c
            });
        }
    }
    let retention = &spec["persistentVolumeClaimRetentionPolicy"];
    for field in ["whenDeleted", "whenScaled"] {
        if let Some(v) = retention[field].as_str() {
            if v != "Retain" {
                causes.push(unsupported(
                    format!("spec.persistentVolumeClaimRetentionPolicy.{field}"),
                    v,
                    &["Retain"],
                ));
            }
        }
    }
    if let Some(start) = spec["ordinals"]["start"].as_i64().filter(|s| *s != 0) {
        causes.push(forbidden(
            "spec.ordinals.start".into(),
            &format!("not supported by shoal (ordinals start at 0, not {start})"),
        ));
    }
    if let Some(service) = spec["serviceName"].as_str().filter(|s| !s.is_empty()) {
        if !is_dns1123_label(service) {
            causes.push(invalid(
                "spec.serviceName".into(),
                &spec["serviceName"],
                LABEL_MSG,
            ));
        }
    }
    if let Some(old) = old {
        let rest = |v: &Value| {
            let mut m = v["spec"].as_object().cloned().unwrap_or_default();
            for f in STATEFULSET_MUTABLE {
                m.remove(f);
            }
            m.retain(|_, v| !v.is_null());
            m
        };
        if rest(old) != rest(object) {
            causes.push(forbidden(
                "spec".into(),
                "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "shoal.test/busybox:1",
                        "ports": [{"containerPort": 80}],
                        "resources": {"requests": {"cpu": 1}}}]},
                },
            },
            "status": {"replicas": 99},
        })
    }

    fn fields(causes: &[Cause]) -> Vec<&str> {
        causes.iter().map(|c| c.field.as_str()).collect()
    }

    #[test]
    fn defaults_match_kubernetes() {
        let mut d = deployment();
        default(Workload::Deployment, &mut d);
        assert!(d.get("status").is_none());
        let spec = &d["spec"];
        assert_eq!(spec["replicas"], 1);
        assert_eq!(spec["revisionHistoryLimit"], 10);
        assert_eq!(spec["progressDeadlineSeconds"], 600);
        assert_eq!(
            spec["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
        );
        let pod = &spec["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Always");
        assert_eq!(pod["dnsPolicy"], "ClusterFirst");
        assert_eq!(pod["terminationGracePeriodSeconds"], 30);
        assert_eq!(pod["schedulerName"], "default-scheduler");
        assert_eq!(pod["securityContext"], json!({}));
        let c = &pod["containers"][0];
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
        assert_eq!(c["terminationMessagePolicy"], "File");
        assert_eq!(c["ports"][0]["protocol"], "TCP");
        assert_eq!(c["resources"]["requests"]["cpu"], "1");
        assert!(validate(Workload::Deployment, &d, None).is_empty());
        // Defaulting is idempotent and keeps what the user set.
        let mut again = d.clone();
        default(Workload::Deployment, &mut again);
        assert_eq!(again, d);
        let mut recreate = deployment();
        recreate["spec"]["strategy"] = json!({"type": "Recreate"});
        default(Workload::Deployment, &mut recreate);
        assert_eq!(recreate["spec"]["strategy"], json!({"type": "Recreate"}));
    }

    /// hostNetwork pods get hostPort = containerPort; downwardAPI, dnsConfig and host port
    /// mistakes are 422s naming the field, in a pod and in a template.
    #[test]
    fn pod_network_options_are_defaulted_and_checked() {
        let mut d = deployment();
        d["spec"]["template"]["spec"]["hostNetwork"] = json!(true);
        default(Workload::Deployment, &mut d);
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["ports"][0]["hostPort"], 80);
        assert!(validate(Workload::Deployment, &d, None).is_empty());

        let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"hostNetwork": true, "dnsPolicy": "None",
                "containers": [{"name": "c", "image": "i",
                    "ports": [{"containerPort": 80, "hostPort": 8080}]}],
                "volumes": [{"name": "info", "downwardAPI": {"items": [
                    {"path": "node", "fieldRef": {"fieldPath": "spec.nodeName"}}]}}]}});
        default(Workload::Pod, &mut pod);
        let causes = validate(Workload::Pod, &pod, None);
        assert_eq!(
            fields(&causes),
            [
                "spec.volumes[0].downwardAPI.items[0].fieldRef.fieldPath",
                "spec.dnsConfig",
                "spec.containers[0].ports[0].hostPort",
            ]
        );
        assert_eq!(causes[0].reason, "FieldValueNotSupported");
        assert_eq!(causes[1].reason, "FieldValueRequired");
        assert!(
            causes[2].message.contains("must match `containerPort`"),
            "{}",
            causes[2].message
        );
        let mut pid = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"hostPID": true, "hostIPC": false,
                "containers": [{"name": "c", "image": "i"}]}});
        default(Workload::Pod, &mut pid);
        assert_eq!(
            fields(&validate(Workload::Pod, &pid, None)),
            ["spec.hostPID"]
        );
    }

    /// `minReadySeconds` near `i64::MAX` once panicked the leader's round (scheduling stopped
    /// cluster-wide): it is refused at the API as Kubernetes' int32 field is, naming the field.
    #[test]
    fn int32_spec_fields_are_bounded() {
        for (value, message) in [
            (
                json!(i64::MAX - 1),
                "must be less than or equal to 2147483647",
            ),
            (
                json!(2147483648i64),
                "must be less than or equal to 2147483647",
            ),
            (
                json!(u64::MAX),
                "must be an integer between 0 and 2147483647",
            ),
            (json!(1.5), "must be an integer between 0 and 2147483647"),
            (json!(-1), "must be greater than or equal to 0"),
        ] {
            let mut d = deployment();
            default(Workload::Deployment, &mut d);
            d["spec"]["minReadySeconds"] = value.clone();
            let causes = validate(Workload::Deployment, &d, None);
            assert_eq!(fields(&causes), ["spec.minReadySeconds"], "{value}");
            assert!(
                causes[0].message.contains(message),
                "{value}: {:?}",
                causes[0]
            );
        }
        let mut d = deployment();
        default(Workload::Deployment, &mut d);
        d["spec"]["minReadySeconds"] = json!(2147483647);
        assert!(validate(Workload::Deployment, &d, None).is_empty());
    }

    #[test]
    fn pull_policy_follows_the_tag() {
        assert_eq!(default_pull_policy("busybox"), "Always");
        assert_eq!(default_pull_policy("busybox:latest"), "Always");
        assert_eq!(default_pull_policy("localhost:5000/busybox"), "Always");
        assert_eq!(default_pull_policy("shoal.test/busybox:1"), "IfNotPresent");
        assert_eq!(default_pull_policy("x@sha256:abcd"), "IfNotPresent");
    }

    #[test]
    fn init_containers_take_probes_and_hooks_only_as_sidecars() {
        let probe = json!({"exec": {"command": ["true"]}});
        let pod = json!({"metadata": {"name": "p"}, "spec": {
            "containers": [{"name": "a", "image": "i", "restartPolicy": "Always"}],
            "initContainers": [
                {"name": "i1", "image": "i", "readinessProbe": probe, "lifecycle": {"preStop": {"exec": {"command": ["true"]}}}},
                {"name": "i2", "image": "i", "restartPolicy": "OnFailure", "livenessProbe": probe},
                {"name": "s", "image": "i", "restartPolicy": "Always", "startupProbe": probe,
                 "readinessProbe": probe, "lifecycle": {"preStop": {"exec": {"command": ["true"]}}}},
            ],
        }});
        let causes = validate(Workload::Pod, &pod, None);
        assert_eq!(
            fields(&causes),
            vec![
                "spec.containers[0].restartPolicy",
                "spec.initContainers[0].readinessProbe",
                "spec.initContainers[0].lifecycle",
                "spec.initContainers[1].restartPolicy",
                "spec.initContainers[1].livenessProbe",
            ]
        );
        assert_eq!(
            causes[1].message,
            "Forbidden: may not be set for init containers without restartPolicy=Always"
        );
        assert_eq!(
            causes[3].message,
            "Unsupported value: \"OnFailure\": supported values: \"Always\""
        );
    }

    #[test]
    fn pull_policies_are_defaulted_per_container_and_checked() {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {
            "containers": [
                {"name": "a", "image": "busybox"},
                {"name": "b", "image": "10.77.0.1:5000/app:v2"},
                {"name": "c", "image": "app:latest", "imagePullPolicy": "Never"},
                {"name": "d", "image": "app@sha256:0123"},
            ],
            "initContainers": [{"name": "i", "image": "init:latest"}],
            "imagePullSecrets": [{"name": "regcred"}],
        }});
        default(Workload::Pod, &mut pod);
        let policy = |list: &str, i: usize| pod["spec"][list][i]["imagePullPolicy"].clone();
        assert_eq!(policy("containers", 0), "Always");
        assert_eq!(policy("containers", 1), "IfNotPresent");
        assert_eq!(policy("containers", 2), "Never");
        assert_eq!(policy("containers", 3), "IfNotPresent");
        assert_eq!(policy("initContainers", 0), "Always");
        assert!(validate(Workload::Pod, &pod, None).is_empty());

        let mut bad = pod.clone();
        bad["spec"]["containers"][0]["imagePullPolicy"] = json!("Sometimes");
        bad["spec"]["imagePullSecrets"] = json!([{"name": "regcred"}, {}, {"name": "Bad_Name"}]);
        let causes = validate(Workload::Pod, &bad, None);
        assert_eq!(
            fields(&causes),
            vec![
                "spec.containers[0].imagePullPolicy",
                "spec.imagePullSecrets[1].name",
                "spec.imagePullSecrets[2].name",
            ]
        );
        assert_eq!(
            causes[0].message,
            "Unsupported value: \"Sometimes\": supported values: \"Always\", \"IfNotPresent\", \"Never\""
        );
        assert_eq!(causes[1].message, "Required value");

        let mut d = deployment();
        d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("web");
        d["spec"]["template"]["spec"]["imagePullSecrets"] = json!([{"name": ""}]);
        default(Workload::Deployment, &mut d);
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "Always"
        );
        assert_eq!(
            fields(&validate(Workload::Deployment, &d, None)),
            vec!["spec.template.spec.imagePullSecrets[0].name"]
        );
    }

    #[test]
    fn invalid_deployments_name_their_fields() {
        let mut d = deployment();
        d["spec"]["replicas"] = json!(-1);
        d["spec"]["template"]["spec"]["containers"] = json!([
            {"name": "Bad_Name", "ports": [{"containerPort": 70000}],
             "resources": {"requests": {"cpu": "2", "memory": "lots"}, "limits": {"cpu": "1"}}},
            {"name": "ok", "image": "i"},
            {"name": "ok", "image": "i"},
        ]);
        d["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
        default(Workload::Deployment, &mut d);
        let causes = validate(Workload::Deployment, &d, None);
        assert_eq!(
            fields(&causes),
            vec![
                "spec.replicas",
                "spec.template.spec.containers[0].name",
                "spec.template.spec.containers[0].image",
                "spec.template.spec.containers[0].ports[0].containerPort",
                "spec.template.spec.containers[0].resources.requests[memory]",
                "spec.template.spec.containers[0].resources.requests",
                "spec.template.spec.containers[2].name",
                "spec.template.spec.restartPolicy",
            ]
        );
        assert_eq!(
            causes[0].message,
            "Invalid value: -1: must be greater than or equal to 0"
        );
        assert_eq!(causes[2].message, "Required value");
        assert_eq!(
            causes[5].message,
            "Invalid value: \"2\": must be less than or equal to cpu limit of 1"
        );
        assert_eq!(causes[6].message, "Duplicate value: \"ok\"");
        assert_eq!(
            causes[7].message,
            "Unsupported value: \"Never\": supported values: \"Always\""
        );
    }

    #[test]
    fn selectors_are_required_matching_and_immutable() {
        let mut d = deployment();
        d["spec"]["selector"] = Value::Null;
        default(Workload::Deployment, &mut d);
        assert_eq!(
            fields(&validate(Workload::Deployment, &d, None)),
            vec!["spec.selector"]
        );
        d["spec"]["selector"] = json!({"matchLabels": {"app": "db"}});
        let causes = validate(Workload::Deployment, &d, None);
        assert_eq!(fields(&causes), vec!["spec.template.metadata.labels"]);
        assert!(causes[0]
            .message
            .contains("`selector` does not match template `labels`"));
        let old = deployment();
        d["spec"]["template"]["metadata"]["labels"] = json!({"app": "db"});
        assert_eq!(
            fields(&validate(Workload::Deployment, &d, Some(&old))),
            vec!["spec.selector"]
        );
    }

    #[test]
    fn pods_need_containers_and_known_restart_policies() {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [], "restartPolicy": "Sometimes"}});
        default(Workload::Pod, &mut pod);
        let causes = validate(Workload::Pod, &pod, None);
        assert_eq!(
            fields(&causes),
            vec!["spec.containers", "spec.restartPolicy"]
        );
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}], "restartPolicy": "Never"}});
        default(Workload::Pod, &mut pod);
        assert!(validate(Workload::Pod, &pod, None).is_empty());
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");
        // Updates may change images, not the rest of the spec.
        let mut new_image = pod.clone();
        new_image["spec"]["containers"][0]["image"] = json!("j:2");
        assert!(validate(Workload::Pod, &new_image, Some(&pod)).is_empty());
        let mut new_command = pod.clone();
        new_command["spec"]["containers"][0]["command"] = json!(["sh"]);
        assert_eq!(
            fields(&validate(Workload::Pod, &new_command, Some(&pod))),
            vec!["spec"]
        );
    }

    #[test]
    fn escaping_paths_and_unrunnable_security_contexts_are_refused() {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {
            "securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "x"}},
            "containers": [{"name": "c", "image": "i", "workingDir": "/proc/self/fd/7",
                "volumeMounts": [{"name": "v", "mountPath": "/proc/1/root"}],
                "securityContext": {"privileged": true, "allowPrivilegeEscalation": false},
                "resources": {"requests": {"memory": "64Mi"}, "limits": {"memory": 1000}}}]}});
        default(Workload::Pod, &mut pod);
        let causes = validate(Workload::Pod, &pod, None);
        assert_eq!(
            fields(&causes),
            vec![
                "spec.securityContext.seccompProfile.type",
                "spec.containers[0].resources.requests",
                "spec.containers[0].workingDir",
                "spec.containers[0].volumeMounts[0].mountPath",
                "spec.containers[0].securityContext",
            ]
        );
        assert_eq!(
            causes[1].message,
            "Invalid value: \"64Mi\": must be less than or equal to memory limit of 1000"
        );
        assert!(causes[2]
            .message
            .starts_with("Invalid value: \"/proc/self/fd/7\": must not be under /proc"));
        assert!(causes[4]
            .message
            .ends_with("cannot set `allowPrivilegeEscalation` to false and `privileged` to true"));
    }

    #[test]
    fn probes_and_hooks_are_defaulted_and_checked() {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{
            "name": "c", "image": "i",
            "livenessProbe": {"httpGet": {"port": 70000}, "successThreshold": 2,
                "periodSeconds": -1},
            "readinessProbe": {"tcpSocket": {"port": "Web_Port"}},
            "startupProbe": {"exec": {"command": ["true"]}, "tcpSocket": {"port": 80}},
            "lifecycle": {"preStop": {}}}]}});
        default(Workload::Pod, &mut pod);
        let c = &pod["spec"]["containers"][0];
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/");
        assert_eq!(c["livenessProbe"]["httpGet"]["scheme"], "HTTP");
        assert_eq!(c["readinessProbe"]["timeoutSeconds"], 1);
        assert_eq!(c["readinessProbe"]["failureThreshold"], 3);
        let causes = validate(Workload::Pod, &pod, None);
        let p = "spec.containers[0]";
        let expect = [
            (
                format!("{p}.livenessProbe.httpGet.port"),
                "Invalid value: 70000: must be between 1 and 65535, inclusive",
            ),
            (
                format!("{p}.livenessProbe.periodSeconds"),
                "Invalid value: -1: must be greater than or equal to 0",
            ),
            (
                format!("{p}.livenessProbe.successThreshold"),
                "Invalid value: 2: must be 1",
            ),
            (
                format!("{p}.readinessProbe.tcpSocket.port"),
                "Invalid value: \"Web_Port\": must contain only alpha-numerics and '-'",
            ),
            (
                format!("{p}.startupProbe.tcpSocket"),
                "Forbidden: may not specify more than 1 handler type",
            ),
            (
                format!("{p}.lifecycle.preStop"),
                "Required value: must specify a handler type",
            ),
        ];
        for (field, message) in &expect {
            assert!(
                causes
                    .iter()
                    .any(|c| &c.field == field && c.message == *message),
                "{field}: {message} not in {causes:?}"
            );
        }
        assert_eq!(causes.len(), expect.len(), "{causes:?}");
        assert_eq!(
            port_name_errors("-9"),
            [
                "must contain at least one letter (a-z)",
                "must not begin or end with a hyphen"
            ]
        );
        assert!(port_name_errors("http-alt").is_empty());
    }

    fn batch_job() -> Value {
        json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "pi", "uid": "u-1"},
            "spec": {"template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "c", "image": "shoal.test/busybox:1"}]}}},
        })
    }

    #[test]
    fn jobs_are_defaulted_with_a_uid_selector_and_refuse_what_is_not_run() {
        let mut j = batch_job();
        default(Workload::Job, &mut j);
        assert_eq!(j["spec"]["completions"], 1);
        assert_eq!(j["spec"]["parallelism"], 1);
        assert_eq!(j["spec"]["backoffLimit"], 6);
        assert_eq!(j["spec"]["completionMode"], "NonIndexed");
        assert_eq!(
            j["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
            "u-1"
        );
        assert_eq!(
            j["spec"]["template"]["metadata"]["labels"]["job-name"],
            "pi"
        );
        assert!(validate(Workload::Job, &j, None).is_empty());
        let mut always = batch_job();
        always["spec"]["template"]["spec"]["restartPolicy"] = json!("Always");
        default(Workload::Job, &mut always);
        let causes = validate(Workload::Job, &always, None);
        assert_eq!(fields(&causes), vec!["spec.template.spec.restartPolicy"]);
        let mut unsupported = batch_job();
        unsupported["spec"]["successPolicy"] = json!({"rules": []});
        unsupported["spec"]["parallelism"] = json!(3);
        default(Workload::Job, &mut unsupported);
        assert_eq!(
            fields(&validate(Workload::Job, &unsupported, None)),
            vec!["spec.completions", "spec.successPolicy"]
        );
        let mut changed = j.clone();
        changed["spec"]["completions"] = json!(4);
        assert_eq!(
            fields(&validate(Workload::Job, &changed, Some(&j))),
            vec!["spec.completions"]
        );
    }

    #[test]
    fn pod_failure_policies_and_per_index_limits_are_checked_as_kubernetes_does() {
        let mut ok = batch_job();
        ok["spec"]["completionMode"] = json!("Indexed");
        ok["spec"]["completions"] = json!(4);
        ok["spec"]["backoffLimitPerIndex"] = json!(1);
        ok["spec"]["maxFailedIndexes"] = json!(2);
        ok["spec"]["podFailurePolicy"] = json!({"rules": [
            {"action": "FailJob", "onExitCodes": {"containerName": "c", "operator": "In", "values": [1, 42]}},
            {"action": "FailIndex", "onExitCodes": {"operator": "NotIn", "values": [0]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]});
        default(Workload::Job, &mut ok);
        assert_eq!(ok["spec"]["backoffLimit"], i32::MAX);
        assert_eq!(ok["spec"]["podReplacementPolicy"], "Failed");
        assert!(validate(Workload::Job, &ok, None).is_empty());

        let mut bad = batch_job();
        bad["spec"]["template"]["spec"]["restartPolicy"] = json!("OnFailure");
        bad["spec"]["maxFailedIndexes"] = json!(1);
        bad["spec"]["podFailurePolicy"] = json!({"rules": [
            {"action": "FailIndex", "onExitCodes": {"containerName": "nope", "operator": "In", "values": [0, 3, 2]}},
            {"action": "Restart", "onPodConditions": [{"type": "", "status": "Maybe"}]},
            {"action": "Count"},
        ]});
        default(Workload::Job, &mut bad);
        assert_eq!(
            fields(&validate(Workload::Job, &bad, None)),
            vec![
                "spec.backoffLimitPerIndex",
                "spec.template.spec.restartPolicy",
                "spec.podFailurePolicy.rules[0].action",
                "spec.podFailurePolicy.rules[0].onExitCodes.containerName",
                "spec.podFailurePolicy.rules[0].onExitCodes.values[0]",
                "spec.podFailurePolicy.rules[0].onExitCodes.values[2]",
                "spec.podFailurePolicy.rules[1].action",
                "spec.podFailurePolicy.rules[1].onPodConditions[0].type",
                "spec.podFailurePolicy.rules[1].onPodConditions[0].status",
                "spec.podFailurePolicy.rules[2]",
            ]
        );
        let mut not_indexed = batch_job();
        not_indexed["spec"]["backoffLimitPerIndex"] = json!(1);
        default(Workload::Job, &mut not_indexed);
        assert_eq!(
            fields(&validate(Workload::Job, &not_indexed, None)),
            vec!["spec.backoffLimitPerIndex"]
        );
    }

    fn statefulset() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "web"},
            "spec": {
                "serviceName": "web",
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "shoal.test/busybox:1"}]},
                },
            },
        })
    }

    #[test]
    fn statefulsets_are_defaulted_and_what_shoal_cannot_do_is_refused_by_field() {
        let mut s = statefulset();
        default(Workload::StatefulSet, &mut s);
        assert_eq!(s["spec"]["replicas"], 1);
        assert_eq!(s["spec"]["podManagementPolicy"], "OrderedReady");
        assert_eq!(
            s["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
        );
        assert_eq!(
            s["spec"]["persistentVolumeClaimRetentionPolicy"],
            json!({"whenDeleted": "Retain", "whenScaled": "Retain"})
        );
        assert!(validate(Workload::StatefulSet, &s, None).is_empty());
        for (patch, field) in [
            (
                json!({"volumeClaimTemplates": [{"metadata": {"name": "data"}}]}),
                "spec.volumeClaimTemplates[0].spec.accessModes",
            ),
            (
                json!({"volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                    "accessModes": ["ReadWriteOnce"], "volumeMode": "Block",
                    "resources": {"requests": {"storage": "1Gi"}}}}]}),
                "spec.volumeClaimTemplates[0].spec.volumeMode",
            ),
            (
                json!({"podManagementPolicy": "Random"}),
                "spec.podManagementPolicy",
            ),
            (
                json!({"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": -1}}}),
                "spec.updateStrategy.rollingUpdate.partition",
            ),
            (
                json!({"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 2}}}),
                "spec.updateStrategy.rollingUpdate.maxUnavailable",
            ),
            (
                json!({"updateStrategy": {"type": "OnDelete", "rollingUpdate": {"partition": 1}}}),
                "spec.updateStrategy.rollingUpdate",
            ),
            (json!({"ordinals": {"start": 5}}), "spec.ordinals.start"),
            (json!({"serviceName": "Web_1"}), "spec.serviceName"),
            (
                json!({"persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete"}}),
                "spec.persistentVolumeClaimRetentionPolicy.whenDeleted",
            ),
        ] {
            let mut bad = statefulset();
            for (k, v) in patch.as_object().unwrap() {
                bad["spec"][k] = v.clone();
            }
            default(Workload::StatefulSet, &mut bad);
            let causes = validate(Workload::StatefulSet, &bad, None);
            assert!(fields(&causes).contains(&field), "{field}: {causes:?}");
        }
        let mut vct = statefulset();
        vct["spec"]["volumeClaimTemplates"] = json!([{"metadata": {"name": "data"}, "spec": {
            "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]);
        default(Workload::StatefulSet, &mut vct);
        assert_eq!(
            vct["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"],
            "local-path"
        );
        assert!(validate(Workload::StatefulSet, &vct, None).is_empty());
        // Updates: replicas and the template may change, the service name may not.
        let mut scaled = s.clone();
        scaled["spec"]["replicas"] = json!(5);
        scaled["spec"]["template"]["spec"]["containers"][0]["image"] = json!("x:2");
        assert!(validate(Workload::StatefulSet, &scaled, Some(&s)).is_empty());
        let mut renamed = s.clone();
        renamed["spec"]["serviceName"] = json!("db");
        assert_eq!(
            fields(&validate(Workload::StatefulSet, &renamed, Some(&s))),
            ["spec"]
        );
    }

    #[test]
    fn pod_hostname_and_subdomain_are_dns_labels() {
        let mut pod = json!({"spec": {"containers": [{"name": "c", "image": "i"}],
            "hostname": "web-0", "subdomain": "web"}});
        assert!(validate(Workload::Pod, &pod, None).is_empty());
        pod["spec"]["hostname"] = json!("Web.0");
        pod["spec"]["subdomain"] = json!("a_b");
        assert_eq!(
            fields(&validate(Workload::Pod, &pod, None)),
            ["spec.hostname", "spec.subdomain"]
        );
    }
}
