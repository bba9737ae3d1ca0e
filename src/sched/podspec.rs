//! What the scheduler reads from a pod spec, parsed once per pod: resource requests (actual,
//! and Kubernetes' non-zero defaults used for scoring), nodeSelector, and required pod
//! anti-affinity terms with their label selectors.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::model::quantity::{parse_milli, parse_units};
pub use crate::model::selector::LabelSelector;

/// Scoring default for a container without a CPU request (Kubernetes: 100m).
pub const DEFAULT_MILLI_CPU: u64 = 100;
/// Scoring default for a container without a memory request (Kubernetes: 200 MiB).
pub const DEFAULT_MEMORY: u64 = 200 << 20;
/// Most containers, selector entries or terms read from one pod (bounds user input).
const MAX_ITEMS: usize = 256;

/// CPU in millicores, memory in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu: u64,
    pub memory: u64,
}

impl Resources {
    fn add(self, o: Resources) -> Resources {
        Resources {
            cpu: self.cpu.saturating_add(o.cpu),
            memory: self.memory.saturating_add(o.memory),
        }
    }
    fn max(self, o: Resources) -> Resources {
        Resources {
            cpu: self.cpu.max(o.cpu),
            memory: self.memory.max(o.memory),
        }
    }
}

/// A container's requests (limits stand in for missing requests, as in Kubernetes).
fn container_requests(c: &Value) -> (Resources, Resources) {
    let get = |name: &str, parse: fn(&str) -> Result<u64, _>| -> Option<u64> {
        let r = &c["resources"];
        let q = r["requests"][name].as_str().or(r["limits"][name].as_str());
        // Numbers are valid quantities too (`cpu: 1`).
        match q {
            Some(s) => parse(s).ok(),
            None => r["requests"][name]
                .as_f64()
                .or(r["limits"][name].as_f64())
                .and_then(|f| parse(&f.to_string()).ok()),
        }
    };
    let cpu = get("cpu", parse_milli);
    let memory = get("memory", parse_units);
    let actual = Resources {
        cpu: cpu.unwrap_or(0),
        memory: memory.unwrap_or(0),
    };
    let nonzero = Resources {
        cpu: cpu.filter(|&c| c > 0).unwrap_or(DEFAULT_MILLI_CPU),
        memory: memory.filter(|&m| m > 0).unwrap_or(DEFAULT_MEMORY),
    };
    (actual, nonzero)
}

/// The pod's effective requests: the sum over containers, or the largest init container if
/// that is more. Returns `(actual, non-zero for scoring)`.
pub fn pod_requests(spec: &Value) -> (Resources, Resources) {
    let mut sum = (Resources::default(), Resources::default());
    for c in spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .take(MAX_ITEMS)
    {
        let (a, n) = container_requests(c);
        sum = (sum.0.add(a), sum.1.add(n));
    }
    for c in spec["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .take(MAX_ITEMS)
    {
        let (a, n) = container_requests(c);
        sum = (sum.0.max(a), sum.1.max(n));
    }
    sum
}

/// `spec.nodeSelector` as sorted pairs (`None` when absent or empty).
pub fn node_selector(spec: &Value) -> Option<Vec<(String, String)>> {
    let m = spec["nodeSelector"].as_object()?;
    let pairs: Vec<(String, String)> = m
        .iter()
        .take(MAX_ITEMS)
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
        .collect();
    (!pairs.is_empty()).then_some(pairs)
}

/// A required pod anti-affinity term: no pod matching `selector` (in `namespaces`) may run
/// in the same `topology_key` domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AntiAffinityTerm {
    pub selector: LabelSelector,
    /// `None`: every namespace (an empty `namespaceSelector`).
    pub namespaces: Option<BTreeSet<String>>,
    pub topology_key: String,
}

impl AntiAffinityTerm {
    pub fn applies_to_namespace(&self, ns: &str) -> bool {
        self.namespaces.as_ref().is_none_or(|s| s.contains(ns))
    }
}

/// `spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution` of a pod in
/// `namespace`. Terms with a null selector select nothing and are dropped.
pub fn anti_affinity(spec: &Value, namespace: &str) -> Vec<AntiAffinityTerm> {
    spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .into_iter()
        .flatten()
        .take(MAX_ITEMS)
        .filter_map(|t| {
            let selector = LabelSelector::parse(&t["labelSelector"])?;
            let topology_key = t["topologyKey"].as_str()?.to_string();
            let listed: BTreeSet<String> = t["namespaces"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n.as_str().map(str::to_string))
                .collect();
            let all = t["namespaceSelector"].as_object().is_some_and(|m| {
                m.values()
                    .all(|v| v.as_object().is_some_and(|o| o.is_empty()) || v.is_null())
            });
            let namespaces = if all {
                None
            } else if listed.is_empty() {
                Some(BTreeSet::from([namespace.to_string()]))
            } else {
                Some(listed)
            };
            Some(AntiAffinityTerm {
                selector,
                namespaces,
                topology_key,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_sum_containers_default_to_limits_and_respect_init_containers() {
        let spec = json!({
            "containers": [
                {"resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
                {"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}},
                {},
            ],
            "initContainers": [{"resources": {"requests": {"cpu": "2"}}}],
        });
        let (actual, nonzero) = pod_requests(&spec);
        assert_eq!(
            actual.cpu, 2000,
            "init container's 2 CPUs exceed the 1250m sum"
        );
        assert_eq!(actual.memory, (64 << 20) + (1 << 30));
        assert_eq!(nonzero.cpu, 2000);
        assert_eq!(nonzero.memory, (64 << 20) + (1 << 30) + DEFAULT_MEMORY);
    }

    #[test]
    fn anti_affinity_terms_default_to_the_pods_namespace() {
        let spec = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"},
            {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone", "namespaceSelector": {}},
            {"topologyKey": "kubernetes.io/hostname"},
        ]}}});
        let terms = anti_affinity(&spec, "prod");
        assert_eq!(terms.len(), 2);
        assert!(terms[0].applies_to_namespace("prod") && !terms[0].applies_to_namespace("dev"));
        assert!(terms[1].applies_to_namespace("dev"));
    }
}
