//! Disruption budgets and evictions (what `kubectl drain` uses): policy/v1
//! PodDisruptionBudget validation and its status computed on read from the pods as served
//! (pure: [`budget`]), and the `pods/{name}/eviction` subresource, which deletes a pod only
//! when no budget forbids it — else 429, as Kubernetes answers, and the client retries.
//! Evictions through one agent are serialized, so parallel evictions (kubectl evicts a node's
//! pods at once) see each other's deletions; across agents in a partition a budget holds on
//! a best-effort basis (`docs/api.md`).

use std::collections::BTreeMap;
use std::sync::Mutex;

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{json, Value};

use super::body::media_type;
use super::objects::{self, json_response, Target};
use super::proto;
use super::resources::{self, ResourceInfo};
use super::status::{ApiError, Cause};
use super::workloads::selector_matches;
use super::ApiState;

/// Serializes the check-then-delete of evictions on this agent.
static EVICTIONS: Mutex<()> = Mutex::new(());

pub const PDB_KIND: &str = "PodDisruptionBudget";

pub fn is_pdb(info: &ResourceInfo) -> bool {
    info.group == "policy" && info.kind == PDB_KIND
}

/// `minAvailable` / `maxUnavailable`: an integer, or a percentage `"N%"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntOrPercent {
    Int(i64),
    Percent(i64),
}

impl IntOrPercent {
    pub fn parse(v: &Value) -> Option<IntOrPercent> {
        match v {
            Value::Number(n) => n.as_i64().filter(|n| *n >= 0).map(IntOrPercent::Int),
            Value::String(s) => {
                let p = s.strip_suffix('%')?.parse::<i64>().ok()?;
                (0..=100).contains(&p).then_some(IntOrPercent::Percent(p))
            }
            _ => None,
        }
    }

    /// Kubernetes' `GetScaledValueFromIntOrPercent(.., total, roundUp=true)`.
    fn scaled(self, total: i64) -> i64 {
        match self {
            IntOrPercent::Int(n) => n,
            IntOrPercent::Percent(p) => (p * total + 99) / 100,
        }
    }
}

fn cause(reason: &str, field: &str, message: String) -> Cause {
    Cause {
        reason: reason.into(),
        field: field.into(),
        message,
    }
}

/// Semantic checks of a PodDisruptionBudget (Kubernetes' `ValidatePodDisruptionBudgetSpec`).
/// A budget with neither `minAvailable` nor `maxUnavailable` is refused (what it would mean
/// is not written down anywhere clients could rely on).
pub fn validate(pdb: &Value) -> Vec<Cause> {
    let spec = &pdb["spec"];
    let mut causes = Vec::new();
    let mut any = false;
    for field in ["minAvailable", "maxUnavailable"] {
        let v = &spec[field];
        if v.is_null() {
            continue;
        }
        any = true;
        if IntOrPercent::parse(v).is_none() {
            causes.push(cause(
                "FieldValueInvalid",
                &format!("spec.{field}"),
                format!("Invalid value: {v}: must be a non-negative integer or a percentage between 0% and 100%"),
            ));
        }
    }
    if !spec["minAvailable"].is_null() && !spec["maxUnavailable"].is_null() {
        causes.push(cause(
            "FieldValueInvalid",
            "spec",
            "Invalid value: minAvailable and maxUnavailable cannot be both set".into(),
        ));
    }
    if !any {
        causes.push(cause(
            "FieldValueRequired",
            "spec.minAvailable",
            "Required value: one of minAvailable or maxUnavailable".into(),
        ));
    }
    if let Some(p) = spec["unhealthyPodEvictionPolicy"].as_str() {
        if !["IfHealthyBudget", "AlwaysAllow"].contains(&p) {
            causes.push(cause(
                "FieldValueNotSupported",
                "spec.unhealthyPodEvictionPolicy",
                format!("Unsupported value: {p:?}: supported values: \"AlwaysAllow\", \"IfHealthyBudget\""),
            ));
        }
    }
    let selector = &spec["selector"];
    for (i, e) in selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let field = format!("spec.selector.matchExpressions[{i}]");
        let values = e["values"].as_array().map_or(0, Vec::len);
        match e["operator"].as_str().unwrap_or_default() {
            "In" | "NotIn" if values == 0 => causes.push(cause(
                "FieldValueRequired",
                &format!("{field}.values"),
                "Required value: must be specified when `operator` is 'In' or 'NotIn'".into(),
            )),
            "Exists" | "DoesNotExist" if values > 0 => causes.push(cause(
                "FieldValueForbidden",
                &format!("{field}.values"),
                "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
                    .into(),
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => causes.push(cause(
                "FieldValueNotSupported",
                &format!("{field}.operator"),
                format!("Unsupported value: {other:?}: supported values: \"In\", \"NotIn\", \"Exists\", \"DoesNotExist\""),
            )),
        }
    }
    causes
}

fn labels_of(object: &Value) -> BTreeMap<String, String> {
    object["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect()
}

/// Whether `pdb` covers `pod` (same namespace, selector matches).
pub fn covers(pdb: &Value, pod: &Value) -> bool {
    pdb["metadata"]["namespace"] == pod["metadata"]["namespace"]
        && selector_matches(&pdb["spec"]["selector"], &labels_of(pod))
}

/// Whether a served pod is Ready and not being deleted.
pub fn healthy(pod: &Value) -> bool {
    pod["metadata"]["deletionTimestamp"].is_null()
        && pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// A budget's numbers, as its status shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    pub expected: i64,
    pub desired_healthy: i64,
    pub current_healthy: i64,
    pub disruptions_allowed: i64,
    /// Why the numbers could not be computed (then no disruption is allowed).
    pub error: Option<String>,
}

/// The controllers' scale a budget with a percentage or `maxUnavailable` counts from: per
/// pod, its Deployment's `spec.replicas` when its ReplicaSet has one, else its
/// ReplicaSet's (Kubernetes' finders, for the kinds shoal scales).
pub struct Scales {
    /// ReplicaSet uid → (replicas, owning Deployment uid).
    pub replicasets: BTreeMap<String, (i64, Option<String>)>,
    /// Deployment uid → replicas.
    pub deployments: BTreeMap<String, i64>,
}

fn controller_ref(object: &Value) -> Option<(&str, &str)> {
    object["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"] == true)
        .and_then(|r| Some((r["kind"].as_str()?, r["uid"].as_str()?)))
}

/// The status numbers of `pdb` over the served pods of its namespace (Kubernetes' disruption
/// controller): with an integer `minAvailable` the pods expected are the pods selected;
/// otherwise the scale of their controllers.
pub fn budget(pdb: &Value, pods: &[Value], scales: &Scales) -> Budget {
    let spec = &pdb["spec"];
    let selected: Vec<&Value> = pods.iter().filter(|p| covers(pdb, p)).collect();
    let current_healthy = selected.iter().filter(|p| healthy(p)).count() as i64;
    let min = IntOrPercent::parse(&spec["minAvailable"]);
    let max = IntOrPercent::parse(&spec["maxUnavailable"]);
    let from_controllers = || -> Result<i64, String> {
        let mut seen: BTreeMap<String, i64> = BTreeMap::new();
        for p in &selected {
            let name = p["metadata"]["name"].as_str().unwrap_or_default();
            let (kind, uid) = controller_ref(p).ok_or_else(|| {
                format!("found no controllers for pod {name:?} (a percentage or maxUnavailable needs a scalable controller)")
            })?;
            let (key, replicas) = match (kind, scales.replicasets.get(uid)) {
                ("ReplicaSet", Some((replicas, deployment))) => match deployment
                    .as_ref()
                    .and_then(|d| Some((d, scales.deployments.get(d)?)))
                {
                    Some((d, r)) => (format!("Deployment/{d}"), *r),
                    None => (format!("ReplicaSet/{uid}"), *replicas),
                },
                _ => {
                    return Err(format!(
                        "found no scalable controller for pod {name:?} ({kind} has no scale)"
                    ))
                }
            };
            seen.insert(key, replicas);
        }
        Ok(seen.values().sum())
    };
    let computed = match (min, max) {
        (Some(IntOrPercent::Int(n)), None) => Ok((selected.len() as i64, n)),
        (Some(pct), None) => from_controllers().map(|e| (e, pct.scaled(e))),
        (None, Some(m)) => from_controllers().map(|e| (e, (e - m.scaled(e)).max(0))),
        _ => Err("the budget sets neither minAvailable nor maxUnavailable".to_string()),
    };
    match computed {
        Ok((expected, desired)) => {
            let allowed = current_healthy - desired;
            Budget {
                expected,
                desired_healthy: desired,
                current_healthy,
                disruptions_allowed: if expected <= 0 || allowed <= 0 {
                    0
                } else {
                    allowed
                },
                error: None,
            }
        }
        Err(e) => Budget {
            expected: 0,
            desired_healthy: 0,
            current_healthy,
            disruptions_allowed: 0,
            error: Some(e),
        },
    }
}

/// `pdb` with its status as served.
pub fn with_status(mut pdb: Value, pods: &[Value], scales: &Scales) -> Value {
    let b = budget(&pdb, pods, scales);
    let (status, reason, message) = match (&b.error, b.disruptions_allowed > 0) {
        (Some(e), _) => ("False", "SyncFailed", e.clone()),
        (None, true) => ("True", "SufficientPods", String::new()),
        (None, false) => ("False", "InsufficientPods", String::new()),
    };
    let since = pdb["metadata"]["creationTimestamp"].clone();
    pdb["status"] = json!({
        "observedGeneration": pdb["metadata"]["generation"].as_i64().unwrap_or(1),
        "expectedPods": b.expected,
        "desiredHealthy": b.desired_healthy,
        "currentHealthy": b.current_healthy,
        "disruptionsAllowed": b.disruptions_allowed,
        "conditions": [{
            "type": "DisruptionAllowed",
            "status": status,
            "reason": reason,
            "message": message,
            "observedGeneration": pdb["metadata"]["generation"].as_i64().unwrap_or(1),
            "lastTransitionTime": since,
        }],
    });
    pdb
}

/// What an eviction of `pod` decides against the budgets of its namespace (served, with
/// status): `Ok` to delete, or the error to answer.
pub fn decide(pod: &Value, budgets: &[Value]) -> Result<(), ApiError> {
    let phase = pod["status"]["phase"].as_str().unwrap_or_default();
    // Kubernetes' `canIgnorePDB`: ended, not yet running, or already going.
    if matches!(phase, "Succeeded" | "Failed" | "Pending")
        || !pod["metadata"]["deletionTimestamp"].is_null()
    {
        return Ok(());
    }
    let covering: Vec<&Value> = budgets.iter().filter(|b| covers(b, pod)).collect();
    let pdb = match covering.as_slice() {
        [] => return Ok(()),
        [one] => *one,
        _ => {
            return Err(ApiError::Internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.".into(),
            ))
        }
    };
    let status = &pdb["status"];
    let int = |f: &str| status[f].as_i64().unwrap_or(0);
    if !healthy(pod) {
        let policy = pdb["spec"]["unhealthyPodEvictionPolicy"]
            .as_str()
            .unwrap_or("IfHealthyBudget");
        let budget_healthy =
            int("currentHealthy") >= int("desiredHealthy") && int("desiredHealthy") > 0;
        if policy == "AlwaysAllow" || budget_healthy {
            return Ok(());
        }
    }
    if int("disruptionsAllowed") > 0 {
        return Ok(());
    }
    let name = pdb["metadata"]["name"].as_str().unwrap_or_default();
    Err(ApiError::TooManyRequests {
        message: "Cannot evict pod as it would violate the pod's disruption budget.".into(),
        causes: vec![Cause {
            reason: "DisruptionBudget".into(),
            field: String::new(),
            message: format!(
                "The disruption budget {name} needs {} healthy pods and has {} currently",
                int("desiredHealthy"),
                int("currentHealthy")
            ),
        }],
    })
}

/// The Eviction in a request body (JSON or protobuf), checked against the pod of the path.
fn eviction_body(headers: &HeaderMap, body: &Bytes, name: &str) -> Result<Value, ApiError> {
    let eviction: Value = match media_type(headers, "application/json").as_str() {
        "application/vnd.kubernetes.protobuf" => proto::decode_as(body, proto::EVICTION)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?,
        "application/json" | "" | "*/*" => serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("the body is not a valid Eviction: {e}")))?,
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "application/json, application/vnd.kubernetes.protobuf (got {other})"
            )))
        }
    };
    if !eviction.is_object() {
        return Err(ApiError::BadRequest(
            "the body must be an Eviction object".into(),
        ));
    }
    if let Some(kind) = eviction["kind"].as_str().filter(|k| !k.is_empty()) {
        let version = eviction["apiVersion"].as_str().unwrap_or_default();
        if kind != "Eviction" || !["policy/v1", "policy/v1beta1", ""].contains(&version) {
            return Err(ApiError::BadRequest(format!(
                "the body must be a policy/v1 Eviction, not {version} {kind}"
            )));
        }
    }
    let body_name = eviction["metadata"]["name"].as_str().unwrap_or_default();
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::BadRequest(format!(
            "name in URL does not match name in Eviction object ({body_name} != {name})"
        )));
    }
    Ok(eviction)
}

fn pods_info() -> &'static ResourceInfo {
    resources::RESOURCES
        .iter()
        .find(|r| r.group.is_empty() && r.plural == "pods")
        .unwrap_or(&resources::RESOURCES[0])
}

fn pdb_info() -> &'static ResourceInfo {
    resources::RESOURCES
        .iter()
        .find(|r| is_pdb(r))
        .unwrap_or(&resources::RESOURCES[0])
}

/// The controllers' scale in `namespace` (for budgets' status).
pub fn scales(state: &ApiState, namespace: Option<&str>) -> Scales {
    let replicas = |o: &Value| o["spec"]["replicas"].as_i64().unwrap_or(1);
    let uid = |o: &Value| {
        o["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    Scales {
        replicasets: state
            .backend
            .list_objects("replicasets.apps", namespace)
            .iter()
            .map(|rs| {
                let deployment = controller_ref(rs)
                    .filter(|(k, _)| *k == "Deployment")
                    .map(|(_, u)| u.to_string());
                (uid(rs), (replicas(rs), deployment))
            })
            .collect(),
        deployments: state
            .backend
            .list_objects("deployments.apps", namespace)
            .iter()
            .map(|d| (uid(d), replicas(d)))
            .collect(),
    }
}

/// `POST .../pods/{name}/eviction`.
pub fn handle(
    state: &ApiState,
    target: &Target,
    name: &str,
    query: &BTreeMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let eviction = eviction_body(headers, body, name)?;
    let namespace = target.namespace.as_deref();
    let options = match &eviction["deleteOptions"] {
        Value::Null => json!({}),
        o => o.clone(),
    };
    let dry = objects::dry_run(query)
        || options["dryRun"]
            .as_array()
            .is_some_and(|d| d.iter().any(|v| v == "All"));
    let _serial = EVICTIONS.lock().unwrap_or_else(|p| p.into_inner());
    let pod = objects::find(state, pods_info(), namespace, name)
        .ok_or_else(|| ApiError::not_found("pods", name))?;
    let budgets: Vec<Value> = objects::list_all(state, pdb_info(), namespace);
    decide(&pod, &budgets)?;
    objects::delete_one(state, pods_info(), namespace, name, &options, dry)?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "code": 201,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, app: &str, ready: bool, rs: Option<&str>) -> Value {
        let mut p = json!({
            "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
            "status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        });
        if let Some(rs) = rs {
            p["metadata"]["ownerReferences"] =
                json!([{"kind": "ReplicaSet", "uid": rs, "controller": true}]);
        }
        p
    }

    fn pdb(spec: Value) -> Value {
        json!({"metadata": {"name": "web-pdb", "namespace": "default", "generation": 1}, "spec": spec})
    }

    fn scales() -> Scales {
        Scales {
            replicasets: BTreeMap::from([("rs1".to_string(), (3, Some("d1".to_string())))]),
            deployments: BTreeMap::from([("d1".to_string(), 4)]),
        }
    }

    fn pods() -> Vec<Value> {
        vec![
            pod("a", "web", true, Some("rs1")),
            pod("b", "web", true, Some("rs1")),
            pod("c", "web", false, Some("rs1")),
            pod("x", "db", true, None),
        ]
    }

    #[test]
    fn budgets_count_as_kubernetes() {
        let sel = json!({"matchLabels": {"app": "web"}});
        let b = budget(
            &pdb(json!({"minAvailable": 1, "selector": sel})),
            &pods(),
            &scales(),
        );
        assert_eq!(
            (
                b.expected,
                b.desired_healthy,
                b.current_healthy,
                b.disruptions_allowed
            ),
            (3, 1, 2, 1)
        );
        let b = budget(
            &pdb(json!({"minAvailable": 2, "selector": sel})),
            &pods(),
            &scales(),
        );
        assert_eq!(b.disruptions_allowed, 0);
        // Percentages and maxUnavailable count the Deployment's scale (4).
        let b = budget(
            &pdb(json!({"minAvailable": "50%", "selector": sel})),
            &pods(),
            &scales(),
        );
        assert_eq!(
            (b.expected, b.desired_healthy, b.disruptions_allowed),
            (4, 2, 0)
        );
        let b = budget(
            &pdb(json!({"maxUnavailable": 1, "selector": sel})),
            &pods(),
            &scales(),
        );
        assert_eq!(
            (b.expected, b.desired_healthy, b.disruptions_allowed),
            (4, 3, 0)
        );
        let b = budget(
            &pdb(json!({"maxUnavailable": "100%", "selector": sel})),
            &pods(),
            &scales(),
        );
        assert_eq!((b.desired_healthy, b.disruptions_allowed), (0, 2));
        // A bare pod has no scale: no disruption allowed, and the status says why.
        let b = budget(
            &pdb(json!({"maxUnavailable": 1, "selector": {"matchLabels": {"app": "db"}}})),
            &pods(),
            &scales(),
        );
        assert_eq!(b.disruptions_allowed, 0);
        assert!(b.error.unwrap().contains("no controllers"));
        // An empty selector selects every pod of the namespace; a null one none.
        let b = budget(
            &pdb(json!({"minAvailable": 0, "selector": {}})),
            &pods(),
            &scales(),
        );
        assert_eq!((b.expected, b.current_healthy), (4, 3));
        let b = budget(&pdb(json!({"minAvailable": 0})), &pods(), &scales());
        assert_eq!((b.expected, b.disruptions_allowed), (0, 0));
        let served = with_status(
            pdb(json!({"minAvailable": 1, "selector": sel})),
            &pods(),
            &scales(),
        );
        assert_eq!(served["status"]["disruptionsAllowed"], 1);
        assert_eq!(
            served["status"]["conditions"][0]["reason"],
            "SufficientPods"
        );
    }

    #[test]
    fn evictions_respect_the_budget() {
        let sel = json!({"matchLabels": {"app": "web"}});
        let tight = with_status(
            pdb(json!({"minAvailable": 2, "selector": sel})),
            &pods(),
            &scales(),
        );
        let loose = with_status(
            pdb(json!({"minAvailable": 1, "selector": sel})),
            &pods(),
            &scales(),
        );
        let ready = &pods()[0];
        let refused = decide(ready, std::slice::from_ref(&tight)).unwrap_err();
        assert_eq!(refused.code(), StatusCode::TOO_MANY_REQUESTS);
        let status = refused.to_status();
        assert_eq!(status["reason"], "TooManyRequests");
        assert_eq!(
            status["details"]["causes"][0]["message"],
            "The disruption budget web-pdb needs 2 healthy pods and has 2 currently"
        );
        assert!(decide(ready, std::slice::from_ref(&loose)).is_ok());
        // Not covered, pending, or unready while the budget is healthy: no budget applies.
        assert!(decide(&pods()[3], std::slice::from_ref(&tight)).is_ok());
        let mut pending = ready.clone();
        pending["status"]["phase"] = json!("Pending");
        assert!(decide(&pending, std::slice::from_ref(&tight)).is_ok());
        assert!(decide(&pods()[2], std::slice::from_ref(&tight)).is_ok());
        // Two budgets over one pod: refused as Kubernetes does.
        let two = [loose.clone(), loose];
        assert_eq!(
            decide(ready, &two).unwrap_err().code(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn budgets_are_validated() {
        let fields = |spec: Value| -> Vec<String> {
            validate(&pdb(spec)).into_iter().map(|c| c.field).collect()
        };
        assert!(fields(json!({"minAvailable": "30%", "selector": {}})).is_empty());
        assert_eq!(fields(json!({"selector": {}})), ["spec.minAvailable"]);
        assert_eq!(
            fields(json!({"minAvailable": 1, "maxUnavailable": 1})),
            ["spec"]
        );
        assert_eq!(fields(json!({"minAvailable": -1})), ["spec.minAvailable"]);
        assert_eq!(
            fields(json!({"maxUnavailable": "120%"})),
            ["spec.maxUnavailable"]
        );
        assert_eq!(
            fields(json!({"maxUnavailable": "x"})),
            ["spec.maxUnavailable"]
        );
        assert_eq!(
            fields(json!({"minAvailable": 1, "unhealthyPodEvictionPolicy": "Never"})),
            ["spec.unhealthyPodEvictionPolicy"]
        );
        assert_eq!(
            fields(
                json!({"minAvailable": 1, "selector": {"matchExpressions": [{"key": "a", "operator": "In"}]}})
            ),
            ["spec.selector.matchExpressions[0].values"]
        );
    }

    #[test]
    fn eviction_bodies_are_checked() {
        let headers = HeaderMap::new();
        let ok =
            Bytes::from(r#"{"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":"p"}}"#);
        assert!(eviction_body(&headers, &ok, "p").is_ok());
        assert!(eviction_body(&headers, &ok, "q").is_err());
        let wrong = Bytes::from(r#"{"apiVersion":"v1","kind":"Pod"}"#);
        assert!(eviction_body(&headers, &wrong, "p").is_err());
        assert!(eviction_body(&headers, &Bytes::from("[1]"), "p").is_err());
        assert!(eviction_body(&headers, &Bytes::from("\u{0}garbage"), "p").is_err());
    }
}
