//! Pod Security admission at the API, the shell of [`crate::model::pod_security`]: a
//! namespace's `pod-security.kubernetes.io/*` labels are checked when it is written; a pod is
//! checked against its namespace's `enforce` level (refused, 403, with Kubernetes' message),
//! `warn` level (HTTP `Warning` headers) and `audit` level (the agent's log) when created or
//! when its images change; the pod template of a workload is checked against `enforce` and
//! `warn` and answered with warnings, as Kubernetes does (the controllers' pods are refused
//! later, when they are created: `sched::Working::put_pod`).

use serde_json::Value;

use super::backend::ObjectKey;
use super::resources::{ResourceInfo, Workload};
use super::status::{ApiError, Cause};
use super::ApiState;
use crate::model::pod_security::{self, Policy};

/// The policy of `namespace` as stored (no namespace object: none). Labels that do not parse
/// (written before this check, or by another path) fail closed, as Kubernetes:
/// `restricted:latest` for every mode.
pub fn namespace_policy(state: &ApiState, namespace: &str) -> Policy {
    let ns = state.backend.get_object(&ObjectKey {
        resource: "namespaces".into(),
        namespace: None,
        name: namespace.into(),
    });
    let labels = ns
        .as_ref()
        .map_or(&Value::Null, |n| &n["metadata"]["labels"]);
    Policy::fail_closed(labels)
}

/// The namespace's own labels, checked when it is created or updated.
fn namespace_causes(object: &Value) -> Vec<Cause> {
    match Policy::from_labels(&object["metadata"]["labels"]) {
        Ok(_) => Vec::new(),
        Err(errors) => errors
            .into_iter()
            .map(|e| Cause {
                reason: "FieldValueInvalid".into(),
                field: format!("metadata.labels[{}]", e.key),
                message: format!("Invalid value: {:?}: {}", e.value, e.message),
            })
            .collect(),
    }
}

/// Whether a pod update is one Kubernetes checks: the number of containers or any image
/// changed (the rest of a pod's spec cannot change).
fn significant_update(new: &Value, old: &Value) -> bool {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .any(|list| {
            let images = |pod: &Value| -> Vec<Value> {
                pod["spec"][list]
                    .as_array()
                    .map(|cs| cs.iter().map(|c| c["image"].clone()).collect())
                    .unwrap_or_default()
            };
            images(new) != images(old)
        })
}

/// Checks a write; `Ok` carries the warnings to send with the answer.
pub fn admit(
    state: &ApiState,
    info: &ResourceInfo,
    object: &Value,
    old: Option<&Value>,
    name: &str,
) -> Result<Vec<String>, ApiError> {
    if info.plural == "namespaces" {
        let causes = namespace_causes(object);
        if causes.is_empty() {
            return Ok(Vec::new());
        }
        return Err(ApiError::Invalid {
            kind: info.qualified_kind(),
            name: name.to_string(),
            causes,
        });
    }
    let Some(workload) = info.workload else {
        return Ok(Vec::new());
    };
    let namespace = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default");
    let policy = namespace_policy(state, namespace);
    let mut warnings = Vec::new();
    if workload == Workload::Pod {
        if old.is_some_and(|old| !significant_update(object, old)) {
            return Ok(warnings);
        }
        let (meta, spec) = (&object["metadata"], &object["spec"]);
        let refused = pod_security::evaluate(policy.enforce, meta, spec);
        if !refused.is_empty() {
            return Err(ApiError::Forbidden(format!(
                "pods \"{name}\" is forbidden: {}",
                pod_security::forbidden_message(policy.enforce, &refused)
            )));
        }
        let warned = pod_security::evaluate(policy.warn, meta, spec);
        if !warned.is_empty() {
            warnings.push(pod_security::warning_message(policy.warn, &warned));
        }
        let audited = pod_security::evaluate(policy.audit, meta, spec);
        if !audited.is_empty() {
            // shoal keeps no audit log: the agent's log is where audit violations go.
            tracing::info!(
                namespace,
                pod = name,
                policy = %policy.audit,
                violations = %pod_security::describe(&audited),
                "pod security audit: a pod violates the namespace's audit level"
            );
        }
        return Ok(warnings);
    }
    // A workload's pod template: warnings for the enforce and warn levels (its pods are
    // refused when the controller creates them).
    let template = template_of(workload, object);
    let (meta, spec) = (&template["metadata"], &template["spec"]);
    let mut levels = vec![policy.enforce];
    if policy.warn != policy.enforce {
        levels.push(policy.warn);
    }
    for lv in levels {
        let violations = pod_security::evaluate(lv, meta, spec);
        if !violations.is_empty() {
            warnings.push(pod_security::warning_message(lv, &violations));
        }
    }
    Ok(warnings)
}

fn template_of(workload: Workload, object: &Value) -> &Value {
    match workload {
        Workload::CronJob => &object["spec"]["jobTemplate"]["spec"]["template"],
        _ => &object["spec"]["template"],
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn namespace_labels_are_refused_with_the_field_named() {
        let causes = namespace_causes(&json!({"metadata": {"labels": {
            "pod-security.kubernetes.io/enforce": "strict", "app": "x"}}}));
        assert_eq!(causes.len(), 1);
        assert_eq!(
            causes[0].field,
            "metadata.labels[pod-security.kubernetes.io/enforce]"
        );
        assert_eq!(
            causes[0].message,
            "Invalid value: \"strict\": must be one of privileged, baseline, restricted"
        );
        assert!(namespace_causes(&json!({"metadata": {}})).is_empty());
    }

    #[test]
    fn stored_labels_that_do_not_parse_fail_closed() {
        let p = Policy::fail_closed(&json!({"pod-security.kubernetes.io/enforce": "bogus"}));
        assert_eq!(p.enforce.to_string(), "restricted:latest");
        assert_eq!(p.audit.to_string(), "restricted:latest");
        assert_eq!(Policy::fail_closed(&Value::Null), Policy::default());
    }

    #[test]
    fn only_image_changes_make_a_pod_update_significant() {
        let pod = |image: &str, label: &str| {
            json!({"metadata": {"labels": {"a": label}},
                   "spec": {"containers": [{"name": "c", "image": image}]}})
        };
        assert!(!significant_update(&pod("a", "1"), &pod("a", "2")));
        assert!(significant_update(&pod("b", "1"), &pod("a", "1")));
    }
}
