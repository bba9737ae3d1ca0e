//! The HorizontalPodAutoscaler's arithmetic (autoscaling/v2), pure: the spec shoal supports
//! ([`parse_spec`], which names every field it does not), the replica count a metric asks for
//! ([`propose`], Kubernetes' `desired = ceil(current * usage / target)` with its 10 % tolerance
//! and its treatment of pods without metrics), and the stabilisation of recommendations over
//! a window ([`stabilize`]; scale-down 300 s by default, as Kubernetes).
//!
//! Supported: `Resource` metrics for `cpu` and `memory` with targets of type `Utilization`
//! (percent of the pods' requests) and `AverageValue`; `minReplicas` / `maxReplicas`;
//! `behavior.scaleUp|scaleDown.stabilizationWindowSeconds`. Not supported, refused by field:
//! other metric types (`Pods`, `Object`, `External`, `ContainerResource`), `Value` targets,
//! scaling `policies` and `selectPolicy`, `tolerance`.

use chrono::{DateTime, Utc};
use serde_json::Value;

/// Kubernetes' `--horizontal-pod-autoscaler-tolerance`: no change while usage is within 10 %
/// of the target.
pub const TOLERANCE: f64 = 0.1;
/// Kubernetes' default scale-down stabilisation window.
pub const DEFAULT_SCALE_DOWN_WINDOW_SECONDS: i64 = 300;
/// Kubernetes' limit on `stabilizationWindowSeconds` (one hour).
pub const MAX_WINDOW_SECONDS: i64 = 3600;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resource {
    Cpu,
    Memory,
}

impl Resource {
    pub fn name(self) -> &'static str {
        match self {
            Resource::Cpu => "cpu",
            Resource::Memory => "memory",
        }
    }
}

/// What a metric aims at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Percent of the pods' requests, on average.
    Utilization(i64),
    /// Per pod on average: millicores for cpu, bytes for memory.
    AverageValue(i64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricSpec {
    pub resource: Resource,
    pub target: Target,
}

/// The supported part of `spec` of a HorizontalPodAutoscaler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// `scaleTargetRef`: kind (`Deployment`, `ReplicaSet`, `StatefulSet`) and name.
    pub target_kind: String,
    pub target_name: String,
    pub min_replicas: i64,
    pub max_replicas: i64,
    pub metrics: Vec<MetricSpec>,
    pub scale_up_window: i64,
    pub scale_down_window: i64,
}

/// A field error: path and message, as the API's 422 lists them.
pub type FieldError = (String, String);

/// Reads and checks an HPA `spec` (autoscaling/v2).
pub fn parse_spec(spec: &Value) -> Result<Spec, Vec<FieldError>> {
    let mut errs: Vec<FieldError> = Vec::new();
    let mut err = |p: &str, m: String| errs.push((p.to_string(), m));
    let target = &spec["scaleTargetRef"];
    let target_kind = target["kind"].as_str().unwrap_or_default().to_string();
    let target_name = target["name"].as_str().unwrap_or_default().to_string();
    if !matches!(
        target_kind.as_str(),
        "Deployment" | "ReplicaSet" | "StatefulSet"
    ) {
        err(
            "spec.scaleTargetRef.kind",
            format!(
                "Unsupported value: {target_kind:?}: supported values: \"Deployment\", \"ReplicaSet\", \"StatefulSet\""
            ),
        );
    }
    if target_name.is_empty() {
        err("spec.scaleTargetRef.name", "Required value".into());
    }
    let api_version = target["apiVersion"].as_str().unwrap_or("apps/v1");
    if api_version != "apps/v1" {
        err(
            "spec.scaleTargetRef.apiVersion",
            format!("Unsupported value: {api_version:?}: supported values: \"apps/v1\""),
        );
    }
    let min_replicas = match &spec["minReplicas"] {
        Value::Null => 1,
        v => match v.as_i64() {
            Some(n) if n >= 1 => n,
            _ => {
                err(
                    "spec.minReplicas",
                    format!("Invalid value: {v}: must be greater than or equal to 1"),
                );
                1
            }
        },
    };
    let max_replicas = match spec["maxReplicas"].as_i64() {
        Some(n) if n >= 1 && n >= min_replicas => n.min(super::MAX_REPLICAS),
        Some(n) => {
            err(
                "spec.maxReplicas",
                format!("Invalid value: {n}: must be greater than or equal to `minReplicas` ({min_replicas}) and 1"),
            );
            min_replicas
        }
        None => {
            err("spec.maxReplicas", "Required value".into());
            min_replicas
        }
    };
    let mut metrics = Vec::new();
    match &spec["metrics"] {
        // Kubernetes' default: 80 % CPU utilisation.
        Value::Null => metrics.push(MetricSpec {
            resource: Resource::Cpu,
            target: Target::Utilization(80),
        }),
        Value::Array(list) => {
            for (i, m) in list.iter().enumerate() {
                match parse_metric(m, &format!("spec.metrics[{i}]")) {
                    Ok(m) => metrics.push(m),
                    Err(mut e) => errs.append(&mut e),
                }
            }
        }
        _ => errs.push(("spec.metrics".into(), "must be a list".into())),
    }
    let mut window = |dir: &str, default: i64| -> i64 {
        let b = &spec["behavior"][dir];
        let path = format!("spec.behavior.{dir}");
        if let Some(obj) = b.as_object() {
            for key in obj.keys() {
                if key != "stabilizationWindowSeconds" {
                    errs.push((
                        format!("{path}.{key}"),
                        "Forbidden: not supported by shoal (only stabilizationWindowSeconds)"
                            .into(),
                    ));
                }
            }
        }
        match &b["stabilizationWindowSeconds"] {
            Value::Null => default,
            v => match v.as_i64() {
                Some(n) if (0..=MAX_WINDOW_SECONDS).contains(&n) => n,
                _ => {
                    errs.push((
                        format!("{path}.stabilizationWindowSeconds"),
                        format!("Invalid value: {v}: must be between 0 and {MAX_WINDOW_SECONDS}"),
                    ));
                    default
                }
            },
        }
    };
    let scale_up_window = window("scaleUp", 0);
    let scale_down_window = window("scaleDown", DEFAULT_SCALE_DOWN_WINDOW_SECONDS);
    if let Some(b) = spec["behavior"].as_object() {
        for key in b.keys() {
            if key != "scaleUp" && key != "scaleDown" {
                errs.push((
                    format!("spec.behavior.{key}"),
                    "Forbidden: not supported by shoal".into(),
                ));
            }
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(Spec {
        target_kind,
        target_name,
        min_replicas,
        max_replicas,
        metrics,
        scale_up_window,
        scale_down_window,
    })
}

fn parse_metric(m: &Value, path: &str) -> Result<MetricSpec, Vec<FieldError>> {
    let kind = m["type"].as_str().unwrap_or_default();
    if kind != "Resource" {
        return Err(vec![(
            format!("{path}.type"),
            format!("Unsupported value: {kind:?}: supported values: \"Resource\""),
        )]);
    }
    let r = &m["resource"];
    let resource = match r["name"].as_str() {
        Some("cpu") => Resource::Cpu,
        Some("memory") => Resource::Memory,
        other => {
            return Err(vec![(
                format!("{path}.resource.name"),
                format!(
                    "Unsupported value: {:?}: supported values: \"cpu\", \"memory\"",
                    other.unwrap_or_default()
                ),
            )])
        }
    };
    let t = &r["target"];
    let tpath = format!("{path}.resource.target");
    let target = match t["type"].as_str() {
        Some("Utilization") => match t["averageUtilization"].as_i64() {
            Some(n) if n > 0 => Target::Utilization(n),
            _ => {
                return Err(vec![(
                    format!("{tpath}.averageUtilization"),
                    "Required value: must be a positive integer".into(),
                )])
            }
        },
        Some("AverageValue") => {
            let q = t["averageValue"]
                .as_str()
                .map(str::to_string)
                .or_else(|| t["averageValue"].as_i64().map(|n| n.to_string()));
            let parsed = q.as_deref().and_then(|q| quantity(resource, q));
            match parsed {
                Some(n) if n > 0 => Target::AverageValue(n),
                _ => {
                    return Err(vec![(
                        format!("{tpath}.averageValue"),
                        "Required value: must be a positive quantity".into(),
                    )])
                }
            }
        }
        other => {
            return Err(vec![(
                format!("{tpath}.type"),
                format!(
                    "Unsupported value: {:?}: supported values: \"Utilization\", \"AverageValue\"",
                    other.unwrap_or_default()
                ),
            )])
        }
    };
    Ok(MetricSpec { resource, target })
}

/// A quantity in the unit the metric compares in: millicores for cpu, bytes for memory.
pub fn quantity(resource: Resource, q: &str) -> Option<i64> {
    let n = match resource {
        Resource::Cpu => crate::model::quantity::parse_milli(q).ok()?,
        Resource::Memory => crate::model::quantity::parse_units(q).ok()?,
    };
    i64::try_from(n).ok()
}

/// One pod of the target, as the leader sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodSample {
    pub ready: bool,
    /// Usage (millicores, bytes) from the pod's node summary; `None`: no sample.
    pub cpu_milli: Option<i64>,
    pub memory_bytes: Option<i64>,
    /// The sum of the containers' requests; `None` when a container has none.
    pub cpu_request_milli: Option<i64>,
    pub memory_request_bytes: Option<i64>,
}

impl PodSample {
    fn usage(&self, r: Resource) -> Option<i64> {
        match r {
            Resource::Cpu => self.cpu_milli,
            Resource::Memory => self.memory_bytes,
        }
    }
    fn request(&self, r: Resource) -> Option<i64> {
        match r {
            Resource::Cpu => self.cpu_request_milli,
            Resource::Memory => self.memory_request_bytes,
        }
    }
}

/// What one metric says: the replicas it asks for and its current value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proposal {
    pub replicas: i64,
    /// The current average utilisation (percent of requests), for Utilization targets.
    pub utilization: Option<i64>,
    /// The current average per pod (millicores or bytes).
    pub average: i64,
}

/// Why a metric gave no proposal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetricError {
    /// No pod of the target has a sample yet.
    NoMetrics,
    /// A pod with a sample has no request for the resource (Utilization needs them).
    MissingRequest(Resource),
}

impl std::fmt::Display for MetricError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricError::NoMetrics => write!(f, "no metrics returned from resource metrics API"),
            MetricError::MissingRequest(r) => write!(f, "missing request for {}", r.name()),
        }
    }
}

/// The replicas `metric` asks for, given `current` replicas and the target's pods, as
/// Kubernetes computes them: from the ready pods with samples, `ceil(n * usage / target)`
/// unless within the tolerance; pods without a sample (and, for cpu, unready pods) count as
/// using nothing when that would scale up, and missing ones as using their target when it
/// would scale down, and if that evens out or reverses the direction nothing changes.
pub fn propose(
    metric: &MetricSpec,
    current: i64,
    pods: &[PodSample],
) -> Result<Proposal, MetricError> {
    let r = metric.resource;
    let mut measured: Vec<&PodSample> = Vec::new();
    let mut missing: Vec<&PodSample> = Vec::new();
    let mut unready: Vec<&PodSample> = Vec::new();
    for p in pods {
        match p.usage(r) {
            None => missing.push(p),
            Some(_) if r == Resource::Cpu && !p.ready => unready.push(p),
            Some(_) => measured.push(p),
        }
    }
    if measured.is_empty() {
        return Err(MetricError::NoMetrics);
    }
    // (usage sum, the sum it is compared with): requests for Utilization, the target times
    // the pod count for AverageValue. The ratio is usage / that.
    let totals = |set: &[(i64, &PodSample)]| -> Result<(i128, i128), MetricError> {
        let mut usage: i128 = 0;
        let mut base: i128 = 0;
        for (u, p) in set {
            usage += *u as i128;
            base += match metric.target {
                Target::Utilization(pct) => {
                    p.request(r).ok_or(MetricError::MissingRequest(r))? as i128 * pct as i128 / 100
                }
                Target::AverageValue(v) => v as i128,
            };
        }
        Ok((usage, base))
    };
    let sampled: Vec<(i64, &PodSample)> = measured
        .iter()
        .map(|p| (p.usage(r).unwrap_or(0), *p))
        .collect();
    let (usage, base) = totals(&sampled)?;
    let ratio = ratio(usage, base);
    let n = sampled.len() as i64;
    let average = (usage / n as i128) as i64;
    let utilization = match metric.target {
        Target::Utilization(_) => {
            let requests: i128 = sampled
                .iter()
                .map(|(_, p)| p.request(r).unwrap_or(0) as i128)
                .sum();
            Some(if requests == 0 {
                0
            } else {
                (usage * 100 / requests) as i64
            })
        }
        Target::AverageValue(_) => None,
    };
    let keep = Proposal {
        replicas: current,
        utilization,
        average,
    };
    let rebalance = !missing.is_empty() || (ratio > 1.0 && !unready.is_empty());
    if !rebalance {
        if (ratio - 1.0).abs() <= TOLERANCE {
            return Ok(keep);
        }
        return Ok(Proposal {
            replicas: ceil(ratio * n as f64),
            ..keep
        });
    }
    let mut all = sampled.clone();
    if ratio < 1.0 {
        // Missing pods count as using exactly their target (no scale-down on their account).
        for p in &missing {
            let at_target = match metric.target {
                Target::Utilization(pct) => {
                    (p.request(r).ok_or(MetricError::MissingRequest(r))? as i128 * pct as i128
                        / 100) as i64
                }
                Target::AverageValue(v) => v,
            };
            all.push((at_target, *p));
        }
    } else {
        // Missing and unready pods count as using nothing (no scale-up on their account).
        for p in missing.iter().chain(unready.iter()) {
            if matches!(metric.target, Target::Utilization(_)) && p.request(r).is_none() {
                return Err(MetricError::MissingRequest(r));
            }
            all.push((0, *p));
        }
    }
    let (usage2, base2) = totals(&all)?;
    let ratio2 = self::ratio(usage2, base2);
    if (ratio2 - 1.0).abs() <= TOLERANCE || (ratio2 > 1.0) != (ratio > 1.0) {
        return Ok(keep);
    }
    Ok(Proposal {
        replicas: ceil(ratio2 * all.len() as f64),
        ..keep
    })
}

fn ratio(usage: i128, base: i128) -> f64 {
    if base <= 0 {
        return if usage > 0 { f64::MAX } else { 1.0 };
    }
    usage as f64 / base as f64
}

fn ceil(x: f64) -> i64 {
    let c = x.ceil();
    if c >= super::MAX_REPLICAS as f64 {
        super::MAX_REPLICAS
    } else {
        c as i64
    }
}

/// A recommendation remembered for stabilisation: when, and how many replicas.
pub type Recommendation = (DateTime<Utc>, i64);

/// Kubernetes' stabilisation: the count to scale to, given the raw proposal `proposed` now,
/// the earlier raw proposals `history`, and `current`: no lower than the lowest proposal of the
/// scale-up window (never scale up on a short spike when the window is set), no higher than
/// the highest of the scale-down window (never scale down until the whole window asked for
/// less). Returns it and whether the scale-down window held the count up.
pub fn stabilize(
    spec: &Spec,
    history: &[Recommendation],
    now: DateTime<Utc>,
    current: i64,
    proposed: i64,
) -> (i64, bool) {
    let mut up = proposed;
    let mut down = proposed;
    for (at, n) in history {
        let age = (now - *at).num_milliseconds();
        if age < spec.scale_up_window * 1000 {
            up = up.min(*n);
        }
        if age < spec.scale_down_window * 1000 {
            down = down.max(*n);
        }
    }
    let mut out = current;
    if out < up {
        out = up;
    }
    let held = out > down && down < current && proposed < current;
    if out > down {
        out = down;
    }
    (out, held || (proposed < out && out == current))
}

/// Drops what no window needs any more.
pub fn prune(spec: &Spec, history: &mut Vec<Recommendation>, now: DateTime<Utc>) {
    let keep = spec.scale_up_window.max(spec.scale_down_window) * 1000;
    history.retain(|(at, _)| (now - *at).num_milliseconds() < keep);
}

/// `n` within `[min, max]`, and the ScalingLimited reason when it was not.
pub fn limit(spec: &Spec, n: i64) -> (i64, Option<&'static str>) {
    if n > spec.max_replicas {
        (spec.max_replicas, Some("TooManyReplicas"))
    } else if n < spec.min_replicas {
        (spec.min_replicas, Some("TooFewReplicas"))
    } else {
        (n, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cpu(pct: i64) -> MetricSpec {
        MetricSpec {
            resource: Resource::Cpu,
            target: Target::Utilization(pct),
        }
    }

    fn pod(usage: i64, request: i64) -> PodSample {
        PodSample {
            ready: true,
            cpu_milli: Some(usage),
            cpu_request_milli: Some(request),
            memory_bytes: Some(0),
            memory_request_bytes: None,
        }
    }

    #[test]
    fn desired_is_ceil_of_current_times_ratio_outside_the_tolerance() {
        // 2 pods at 90 % of 100m, target 50 %: ceil(2 * 1.8) = 4.
        let p = propose(&cpu(50), 2, &[pod(90, 100), pod(90, 100)]).unwrap();
        assert_eq!(p.replicas, 4);
        assert_eq!(p.utilization, Some(90));
        // 54 % against 50 %: within 10 %, no change.
        let p = propose(&cpu(50), 2, &[pod(54, 100), pod(54, 100)]).unwrap();
        assert_eq!(p.replicas, 2);
        // Idle: ceil(3 * 0.02) = 1.
        let p = propose(&cpu(50), 3, &[pod(1, 100), pod(1, 100), pod(1, 100)]).unwrap();
        assert_eq!(p.replicas, 1);
    }

    #[test]
    fn average_value_targets_compare_per_pod() {
        let m = MetricSpec {
            resource: Resource::Memory,
            target: Target::AverageValue(100 << 20),
        };
        let pods = [
            PodSample {
                ready: true,
                memory_bytes: Some(300 << 20),
                ..PodSample::default()
            },
            PodSample {
                ready: true,
                memory_bytes: Some(100 << 20),
                ..PodSample::default()
            },
        ];
        let p = propose(&m, 2, &pods).unwrap();
        assert_eq!(p.replicas, 4);
        assert_eq!(p.average, 200 << 20);
        assert_eq!(p.utilization, None);
    }

    #[test]
    fn missing_requests_and_samples_are_errors_or_conservative() {
        let no_req = PodSample {
            ready: true,
            cpu_milli: Some(10),
            ..PodSample::default()
        };
        assert_eq!(
            propose(&cpu(50), 1, &[no_req]),
            Err(MetricError::MissingRequest(Resource::Cpu))
        );
        assert_eq!(
            propose(&cpu(50), 1, &[PodSample::default()]),
            Err(MetricError::NoMetrics)
        );
        // Scale-up with a pod not yet sampled: it counts as idle. 2 at 100 %, 1 missing,
        // target 50 %: ratio 200/150 = 1.33, ceil(3 * 1.33) = 4.
        let missing = PodSample {
            cpu_request_milli: Some(100),
            ready: true,
            ..PodSample::default()
        };
        let p = propose(&cpu(50), 3, &[pod(100, 100), pod(100, 100), missing]).unwrap();
        assert_eq!(p.replicas, 4);
        // Scale-down with a pod missing: it counts at target; 2 at 10 %, 1 missing at 50 %:
        // 70/150 → ceil(3 * 0.47) = 2.
        let p = propose(&cpu(50), 3, &[pod(10, 100), pod(10, 100), missing]).unwrap();
        assert_eq!(p.replicas, 2);
        // An unready pod with a sample does not push a scale-up.
        let unready = PodSample {
            ready: false,
            ..pod(100, 100)
        };
        let p = propose(&cpu(50), 2, &[pod(56, 100), unready]).unwrap();
        assert_eq!(
            p.replicas, 2,
            "56 % alone would ask for 2.24 → 3; with 0 it is 28 %"
        );
    }

    fn spec(up: i64, down: i64) -> Spec {
        Spec {
            target_kind: "Deployment".into(),
            target_name: "d".into(),
            min_replicas: 1,
            max_replicas: 10,
            metrics: vec![cpu(50)],
            scale_up_window: up,
            scale_down_window: down,
        }
    }

    #[test]
    fn scale_down_waits_for_the_whole_window() {
        let t0: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let s = spec(0, 300);
        let secs = |n| t0 + chrono::Duration::seconds(n);
        let history = vec![(t0, 5), (secs(100), 2)];
        assert_eq!(stabilize(&s, &history, secs(200), 5, 1), (5, true));
        // t0's 5 left the window at 300 s: the highest left is 2.
        assert_eq!(stabilize(&s, &history, secs(301), 5, 1).0, 2);
        // Scale-up is immediate with no up window.
        assert_eq!(stabilize(&s, &history, secs(200), 5, 8), (8, false));
        // An up window keeps the lowest recent proposal.
        let s = spec(60, 0);
        assert_eq!(stabilize(&s, &[(secs(150), 3)], secs(200), 2, 8).0, 3);
    }

    #[test]
    fn limits_clamp_and_say_why() {
        let s = spec(0, 0);
        assert_eq!(limit(&s, 12), (10, Some("TooManyReplicas")));
        assert_eq!(limit(&s, 0), (1, Some("TooFewReplicas")));
        assert_eq!(limit(&s, 4), (4, None));
    }

    #[test]
    fn specs_kubectl_autoscale_writes_parse_and_unsupported_fields_are_named() {
        let ok = json!({
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "minReplicas": 1, "maxReplicas": 5,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 50}}},
                {"type": "Resource", "resource": {"name": "memory",
                "target": {"type": "AverageValue", "averageValue": "64Mi"}}}],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 10}}
        });
        let s = parse_spec(&ok).unwrap();
        assert_eq!(s.metrics[1].target, Target::AverageValue(64 << 20));
        assert_eq!((s.scale_up_window, s.scale_down_window), (0, 10));
        let bad = json!({
            "scaleTargetRef": {"kind": "Job", "name": "j"},
            "maxReplicas": 0,
            "metrics": [{"type": "Pods"}, {"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Value", "value": "1"}}}],
            "behavior": {"scaleUp": {"policies": [], "stabilizationWindowSeconds": 5000}}
        });
        let errs: Vec<String> = parse_spec(&bad)
            .unwrap_err()
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(
            errs,
            [
                "spec.scaleTargetRef.kind",
                "spec.maxReplicas",
                "spec.metrics[0].type",
                "spec.metrics[1].resource.target.type",
                "spec.behavior.scaleUp.policies",
                "spec.behavior.scaleUp.stabilizationWindowSeconds",
            ]
        );
    }

    proptest::proptest! {
        /// Within the tolerance nothing changes; above it the proposal grows, below it shrinks,
        /// and it never leaves [0, MAX_REPLICAS].
        #[test]
        fn proposals_follow_the_ratio(
            usages in proptest::collection::vec(0i64..4000, 1..20),
            target in 1i64..200,
        ) {
            let pods: Vec<PodSample> = usages.iter().map(|u| pod(*u, 1000)).collect();
            let n = pods.len() as i64;
            let p = propose(&cpu(target), n, &pods).unwrap();
            let ratio = usages.iter().sum::<i64>() as f64 * 100.0 / (1000.0 * target as f64 * n as f64);
            if (ratio - 1.0).abs() <= TOLERANCE {
                proptest::prop_assert_eq!(p.replicas, n);
            } else if ratio > 1.0 {
                proptest::prop_assert!(p.replicas >= n);
            } else {
                proptest::prop_assert!(p.replicas <= n);
            }
            proptest::prop_assert!((0..=super::super::MAX_REPLICAS).contains(&p.replicas));
        }

        /// Stabilisation never goes outside [lowest up-window proposal, highest down-window
        /// proposal] around the current count, and a scale-down never undercuts a recent
        /// higher recommendation.
        #[test]
        fn stabilized_counts_respect_the_windows(
            hist in proptest::collection::vec((0i64..600, 0i64..20), 0..10),
            current in 0i64..20, proposed in 0i64..20, down in 0i64..400,
        ) {
            let t0: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
            let now = t0 + chrono::Duration::seconds(600);
            let s = spec(0, down);
            let history: Vec<Recommendation> =
                hist.iter().map(|(t, n)| (t0 + chrono::Duration::seconds(*t), *n)).collect();
            let (out, _) = stabilize(&s, &history, now, current, proposed);
            let recent_max = history.iter()
                .filter(|(at, _)| (now - *at).num_seconds() < down)
                .map(|(_, n)| *n).chain([proposed]).max().unwrap();
            if proposed >= current {
                proptest::prop_assert_eq!(out, proposed);
            } else {
                proptest::prop_assert_eq!(out, recent_max.min(current));
            }
        }
    }
}
