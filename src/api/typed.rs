//! Field checks of workload objects against the `k8s_openapi` types instead of a hand-written
//! schema: decoding through `serde_ignored` collects unknown fields (Kubernetes-style paths such
//! as `spec.template.spec.containers[0].imagee`, pruned from the value) and
//! `serde_path_to_error` names the field of a type error.

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::resources::{SchemaReport, Workload};

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

fn render(steps: &[Step]) -> String {
    let mut out = String::new();
    for step in steps {
        match step {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn ignored_steps(path: &serde_ignored::Path) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut cursor = path;
    loop {
        match cursor {
            serde_ignored::Path::Root => break,
            serde_ignored::Path::Seq { parent, index } => {
                steps.push(Step::Index(*index));
                cursor = parent;
            }
            serde_ignored::Path::Map { parent, key } => {
                steps.push(Step::Key(key.clone()));
                cursor = parent;
            }
            serde_ignored::Path::Some { parent }
            | serde_ignored::Path::NewtypeStruct { parent }
            | serde_ignored::Path::NewtypeVariant { parent } => cursor = parent,
        }
    }
    steps.reverse();
    steps
}

fn error_path(path: &serde_path_to_error::Path) -> String {
    let steps: Vec<Step> = path
        .iter()
        .filter_map(|segment| match segment {
            serde_path_to_error::Segment::Seq { index } => Some(Step::Index(*index)),
            serde_path_to_error::Segment::Map { key } => Some(Step::Key(key.clone())),
            serde_path_to_error::Segment::Enum { variant } => Some(Step::Key(variant.clone())),
            serde_path_to_error::Segment::Unknown => None,
        })
        .collect();
    render(&steps)
}

fn remove_at(value: &mut Value, steps: &[Step]) {
    let Some((last, parents)) = steps.split_last() else {
        return;
    };
    let mut cursor = value;
    for step in parents {
        let next = match (step, cursor) {
            (Step::Key(k), Value::Object(m)) => m.get_mut(k),
            (Step::Index(i), Value::Array(a)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(n) => cursor = n,
            None => return,
        }
    }
    if let (Step::Key(k), Value::Object(m)) = (last, cursor) {
        m.remove(k);
    }
}

fn check_as<T: DeserializeOwned>(object: &mut Value) -> SchemaReport {
    let mut unknown: Vec<Vec<Step>> = Vec::new();
    let mut report = SchemaReport::default();
    {
        let mut note = |path: serde_ignored::Path| unknown.push(ignored_steps(&path));
        let deserializer = serde_ignored::Deserializer::new(&*object, &mut note);
        if let Err(e) = serde_path_to_error::deserialize::<_, T>(deserializer) {
            let path = error_path(e.path());
            let inner = e.into_inner();
            report.type_errors.push(if path.is_empty() {
                inner.to_string()
            } else {
                format!("{path}: {inner}")
            });
        }
    }
    for steps in &unknown {
        remove_at(object, steps);
        report.unknown.push(render(steps));
    }
    report
}

/// Unknown fields (pruned from `object`) and type errors of a workload object.
pub fn check(workload: Workload, object: &mut Value) -> SchemaReport {
    use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
    use k8s_openapi::api::core::v1::Pod;
    match workload {
        Workload::Pod => check_as::<Pod>(object),
        Workload::ReplicaSet => check_as::<ReplicaSet>(object),
        Workload::Deployment => check_as::<Deployment>(object),
        Workload::Job => check_as::<k8s_openapi::api::batch::v1::Job>(object),
        Workload::CronJob => check_as::<k8s_openapi::api::batch::v1::CronJob>(object),
        Workload::DaemonSet => check_as::<k8s_openapi::api::apps::v1::DaemonSet>(object),
        Workload::StatefulSet => check_as::<k8s_openapi::api::apps::v1::StatefulSet>(object),
    }
}

/// Unknown fields (pruned) and type errors of a `v1` Service.
pub fn check_service(object: &mut Value) -> SchemaReport {
    check_as::<k8s_openapi::api::core::v1::Service>(object)
}

/// Checks an `autoscaling/v1` Scale body.
pub fn check_scale(object: &mut Value) -> SchemaReport {
    check_as::<k8s_openapi::api::autoscaling::v1::Scale>(object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(container: Value) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [container]},
                },
            },
        })
    }

    #[test]
    fn unknown_fields_get_kubernetes_paths_and_are_pruned() {
        let mut d = deployment(json!({"name": "c", "imagee": "x", "image": "busybox"}));
        d["spec"]["bogus"] = json!(true);
        d["metadata"]["nope"] = json!(1);
        let report = check(Workload::Deployment, &mut d);
        assert!(report.type_errors.is_empty(), "{report:?}");
        let mut unknown = report.unknown.clone();
        unknown.sort();
        assert_eq!(
            unknown,
            vec![
                "metadata.nope".to_string(),
                "spec.bogus".to_string(),
                "spec.template.spec.containers[0].imagee".to_string(),
            ]
        );
        assert!(d["spec"]["template"]["spec"]["containers"][0]
            .get("imagee")
            .is_none());
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["image"],
            "busybox"
        );
        assert!(d["spec"].get("bogus").is_none());
    }

    #[test]
    fn type_errors_name_the_field() {
        let mut d = deployment(json!({"name": "c", "image": "busybox"}));
        d["spec"]["replicas"] = json!("three");
        let report = check(Workload::Deployment, &mut d);
        assert_eq!(report.type_errors.len(), 1);
        assert!(
            report.type_errors[0].starts_with("spec.replicas: invalid type"),
            "{report:?}"
        );
        let mut d = deployment(
            json!({"name": "c", "image": "busybox", "ports": [{"containerPort": "80"}]}),
        );
        let report = check(Workload::Deployment, &mut d);
        assert!(
            report.type_errors[0]
                .starts_with("spec.template.spec.containers[0].ports[0].containerPort:"),
            "{report:?}"
        );
    }

    #[test]
    fn numeric_quantities_and_known_fields_pass() {
        let mut pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "creationTimestamp": null},
            "spec": {"containers": [{"name": "c", "image": "i",
                "resources": {"requests": {"cpu": 1, "memory": "64Mi"}}}]},
            "status": {},
        });
        let report = check(Workload::Pod, &mut pod);
        assert_eq!(report, SchemaReport::default());
    }
}
