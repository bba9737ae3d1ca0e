//! What the scheduler reads from a pod spec, parsed once per pod: resource requests (actual,
//! and Kubernetes' non-zero defaults used for scoring), where it may run (nodeSelector and
//! required node affinity: [`NodePlacement`], shared with the DaemonSet controller), and its
//! [`Constraints`]: preferred node affinity, pod affinity and anti-affinity terms (required and
//! preferred) and topology spread constraints. Admission (`model::affinity`) refuses what is
//! not parsed here.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::model::quantity::{parse_milli, parse_units};
pub use crate::model::selector::LabelSelector;
use crate::model::selector::{NodeSelector, NodeSelectorTerm};

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

/// The pod's effective requests, as Kubernetes counts them with native sidecars: the app
/// containers' sum plus the sidecars' (init containers with `restartPolicy: Always`, which run
/// beside them), or, if more, the largest of what runs at once during init (each regular init
/// container with the sidecars started before it). Returns `(actual, non-zero for scoring)`.
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
    let mut sidecars = (Resources::default(), Resources::default());
    let mut init_peak = (Resources::default(), Resources::default());
    for c in spec["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .take(MAX_ITEMS)
    {
        let (a, n) = container_requests(c);
        if c["restartPolicy"] == "Always" {
            sidecars = (sidecars.0.add(a), sidecars.1.add(n));
            init_peak = (init_peak.0.max(sidecars.0), init_peak.1.max(sidecars.1));
        } else {
            init_peak = (
                init_peak.0.max(sidecars.0.add(a)),
                init_peak.1.max(sidecars.1.add(n)),
            );
        }
    }
    (
        sum.0.add(sidecars.0).max(init_peak.0),
        sum.1.add(sidecars.1).max(init_peak.1),
    )
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

/// Where a pod may run: `spec.nodeSelector` and
/// `affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution` (terms ORed, the
/// requirements of a term ANDed), both against the node's labels and name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodePlacement {
    selector: Vec<(String, String)>,
    required: Option<NodeSelector>,
}

/// The part of a pod spec [`NodePlacement`] reads, as a key: pods with the same key may run on
/// the same nodes (the scheduler caches a node mask per key).
pub type PlacementKey = (Vec<(String, String)>, String);

fn required_node_affinity(spec: &Value) -> &Value {
    &spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
}

impl NodePlacement {
    pub fn of(spec: &Value) -> NodePlacement {
        NodePlacement {
            selector: node_selector(spec).unwrap_or_default(),
            required: NodeSelector::parse(required_node_affinity(spec)),
        }
    }

    /// `None` when the pod may run on any node.
    pub fn key(spec: &Value) -> Option<PlacementKey> {
        let selector = node_selector(spec);
        let required = required_node_affinity(spec);
        if selector.is_none() && !required.is_object() {
            return None;
        }
        let text = if required.is_object() {
            required.to_string()
        } else {
            String::new()
        };
        Some((selector.unwrap_or_default(), text))
    }

    /// Whether the node `name` with `labels` (`kubernetes.io/hostname` included) may run the pod.
    pub fn matches(&self, labels: &BTreeMap<String, String>, name: &str) -> bool {
        self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self
                .required
                .as_ref()
                .is_none_or(|r| r.matches(labels, name))
    }
}

/// A pod affinity or anti-affinity term: pods matching `selector` (in `namespaces`) in the
/// same `topology_key` domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodAffinityTerm {
    pub selector: LabelSelector,
    /// `None`: every namespace (an empty `namespaceSelector`).
    pub namespaces: Option<BTreeSet<String>>,
    pub topology_key: String,
}

/// The required pod anti-affinity terms are the ones this module parsed first.
pub type AntiAffinityTerm = PodAffinityTerm;

impl PodAffinityTerm {
    pub fn applies_to_namespace(&self, ns: &str) -> bool {
        self.namespaces.as_ref().is_none_or(|s| s.contains(ns))
    }

    /// Whether a pod in `namespace` with `labels` is one the term selects.
    pub fn selects(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        self.applies_to_namespace(namespace) && self.selector.matches(labels)
    }

    /// A term of a pod in `namespace` with `labels` (for `matchLabelKeys` /
    /// `mismatchLabelKeys`). A null selector selects nothing: `None`.
    fn parse(t: &Value, namespace: &str, labels: &BTreeMap<String, String>) -> Option<Self> {
        let selector = LabelSelector::parse(&t["labelSelector"])?.with_label_keys(
            labels,
            &t["matchLabelKeys"],
            &t["mismatchLabelKeys"],
        );
        let topology_key = t["topologyKey"].as_str()?.to_string();
        let listed: BTreeSet<String> = t["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .take(MAX_ITEMS)
            .filter_map(|n| n.as_str().map(str::to_string))
            .collect();
        let all = t["namespaceSelector"].as_object().is_some_and(|m| {
            m.values().all(|v| {
                v.is_null()
                    || v.as_object().is_some_and(|o| o.is_empty())
                    || v.as_array().is_some_and(|a| a.is_empty())
            })
        });
        let namespaces = if all {
            None
        } else if listed.is_empty() {
            Some(BTreeSet::from([namespace.to_string()]))
        } else {
            Some(listed)
        };
        Some(PodAffinityTerm {
            selector,
            namespaces,
            topology_key,
        })
    }
}

/// One of `spec.topologySpreadConstraints`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpreadConstraint {
    pub max_skew: i64,
    pub topology_key: String,
    /// `whenUnsatisfiable: DoNotSchedule` (a filter); else `ScheduleAnyway` (a score).
    pub hard: bool,
    /// `None`: a null selector, which matches no pod.
    pub selector: Option<LabelSelector>,
    /// `minDomains` (1 when unset).
    pub min_domains: usize,
    /// `nodeAffinityPolicy: Honor` (the default): only nodes the pod may run on count.
    pub honor_affinity: bool,
    /// `nodeTaintsPolicy: Honor` (default `Ignore`): only nodes whose taints it tolerates count.
    pub honor_taints: bool,
}

impl SpreadConstraint {
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector.as_ref().is_some_and(|s| s.matches(labels))
    }
}

/// What ties a pod's placement to other pods and to preferences: everything but
/// [`NodePlacement`] and resources.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Constraints {
    pub anti_required: Vec<PodAffinityTerm>,
    pub affinity_required: Vec<PodAffinityTerm>,
    pub affinity_preferred: Vec<(i64, PodAffinityTerm)>,
    pub anti_preferred: Vec<(i64, PodAffinityTerm)>,
    pub node_preferred: Vec<(i64, NodeSelectorTerm)>,
    pub spread: Vec<SpreadConstraint>,
}

fn weighted<T>(list: &Value, field: &str, parse: impl Fn(&Value) -> Option<T>) -> Vec<(i64, T)> {
    list.as_array()
        .into_iter()
        .flatten()
        .take(MAX_ITEMS)
        .filter_map(|t| Some((t["weight"].as_i64()?.clamp(0, 100), parse(&t[field])?)))
        .collect()
}

impl Constraints {
    /// Whether `spec` has anything [`Constraints::parse`] reads (cheap: no parsing).
    pub fn present(spec: &Value) -> bool {
        let a = &spec["affinity"];
        !a["podAffinity"].is_null()
            || !a["podAntiAffinity"].is_null()
            || !a["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"].is_null()
            || spec["topologySpreadConstraints"]
                .as_array()
                .is_some_and(|c| !c.is_empty())
    }

    /// The constraints of a pod in `namespace` with `labels`.
    pub fn parse(spec: &Value, namespace: &str, labels: &BTreeMap<String, String>) -> Self {
        let a = &spec["affinity"];
        let terms = |v: &Value| -> Vec<PodAffinityTerm> {
            v.as_array()
                .into_iter()
                .flatten()
                .take(MAX_ITEMS)
                .filter_map(|t| PodAffinityTerm::parse(t, namespace, labels))
                .collect()
        };
        let term = |t: &Value| PodAffinityTerm::parse(t, namespace, labels);
        const REQUIRED: &str = "requiredDuringSchedulingIgnoredDuringExecution";
        const PREFERRED: &str = "preferredDuringSchedulingIgnoredDuringExecution";
        let spread = spec["topologySpreadConstraints"]
            .as_array()
            .into_iter()
            .flatten()
            .take(MAX_ITEMS)
            .filter_map(|c| {
                Some(SpreadConstraint {
                    max_skew: c["maxSkew"].as_i64()?.max(1),
                    topology_key: c["topologyKey"].as_str()?.to_string(),
                    hard: c["whenUnsatisfiable"] == "DoNotSchedule",
                    selector: LabelSelector::parse(&c["labelSelector"])
                        .map(|s| s.with_label_keys(labels, &c["matchLabelKeys"], &Value::Null)),
                    min_domains: c["minDomains"]
                        .as_u64()
                        .and_then(|m| usize::try_from(m).ok())
                        .unwrap_or(1),
                    honor_affinity: c["nodeAffinityPolicy"] != "Ignore",
                    honor_taints: c["nodeTaintsPolicy"] == "Honor",
                })
            })
            .collect();
        Constraints {
            anti_required: terms(&a["podAntiAffinity"][REQUIRED]),
            affinity_required: terms(&a["podAffinity"][REQUIRED]),
            affinity_preferred: weighted(&a["podAffinity"][PREFERRED], "podAffinityTerm", term),
            anti_preferred: weighted(&a["podAntiAffinity"][PREFERRED], "podAffinityTerm", term),
            node_preferred: weighted(&a["nodeAffinity"][PREFERRED], "preference", |t| {
                t.is_object().then(|| NodeSelectorTerm::parse(t))
            }),
            spread,
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Constraints::default()
    }

    /// Whether the pod's placement depends on other pods' (so the round tracks placed pods).
    pub fn between_pods(&self) -> bool {
        self.binds_others() || !self.spread.is_empty()
    }

    /// Whether these terms bind other pods' placement too (Kubernetes' symmetry): required
    /// anti-affinity filters, required affinity (weight 1) and preferred terms score.
    pub fn binds_others(&self) -> bool {
        !self.anti_required.is_empty()
            || !self.affinity_required.is_empty()
            || !self.affinity_preferred.is_empty()
            || !self.anti_preferred.is_empty()
    }
}

/// `spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution` of a pod in
/// `namespace`. Terms with a null selector select nothing and are dropped.
pub fn anti_affinity(spec: &Value, namespace: &str) -> Vec<AntiAffinityTerm> {
    Constraints::parse(spec, namespace, &BTreeMap::new()).anti_required
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
    fn sidecars_add_to_the_app_containers_and_to_the_init_containers_after_them() {
        let cpu = |m: &str| json!({"resources": {"requests": {"cpu": m}}});
        let mut sidecar = cpu("300m");
        sidecar["restartPolicy"] = json!("Always");
        // Init: 500m alone, then the sidecar (300m) beside the 1 CPU one = 1300m; after
        // init: 200m of app + 300m of sidecar = 500m.
        let spec = json!({
            "containers": [cpu("200m")],
            "initContainers": [cpu("500m"), sidecar.clone(), cpu("1")],
        });
        assert_eq!(pod_requests(&spec).0.cpu, 1300);
        let spec = json!({
            "containers": [cpu("2")],
            "initContainers": [cpu("500m"), sidecar, cpu("1")],
        });
        assert_eq!(
            pod_requests(&spec).0.cpu,
            2300,
            "the sidecar runs beside the app"
        );
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

    #[test]
    fn placement_ands_the_selector_and_ors_required_terms() {
        let spec = json!({"nodeSelector": {"disk": "ssd"}, "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n9"]}]}]}}}});
        let p = NodePlacement::of(&spec);
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(p.matches(&labels(&[("disk", "ssd"), ("zone", "a")]), "n1"));
        assert!(p.matches(&labels(&[("disk", "ssd")]), "n9"));
        assert!(!p.matches(&labels(&[("disk", "ssd"), ("zone", "b")]), "n1"));
        assert!(!p.matches(&labels(&[("zone", "a")]), "n1"));
        assert!(NodePlacement::key(&json!({})).is_none());
        assert!(NodePlacement::of(&json!({})).matches(&BTreeMap::new(), "n1"));
        assert_ne!(
            NodePlacement::key(&spec),
            NodePlacement::key(&json!({"nodeSelector": {"disk": "ssd"}}))
        );
    }

    #[test]
    fn constraints_read_every_kind_of_term() {
        let spec = json!({"affinity": {
            "nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 7, "preference": {"matchExpressions": [{"key": "zone", "operator": "Exists"}]}}]},
            "podAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}],
                "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 3, "podAffinityTerm": {"labelSelector": {}, "topologyKey": "zone"}}]},
            "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 50, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "web"}},
                 "matchLabelKeys": ["rev"], "topologyKey": "kubernetes.io/hostname"}}]}},
            "topologySpreadConstraints": [{"maxSkew": 2, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": {"app": "web"}}, "minDomains": 3, "nodeTaintsPolicy": "Honor"}]});
        assert!(Constraints::present(&spec));
        assert!(!Constraints::present(
            &json!({"affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}})
        ));
        let own: BTreeMap<String, String> = [("app", "web"), ("rev", "1")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let c = Constraints::parse(&spec, "prod", &own);
        assert_eq!(c.node_preferred.len(), 1);
        assert_eq!(c.node_preferred[0].0, 7);
        assert_eq!(c.affinity_required.len(), 1);
        assert_eq!(c.affinity_preferred[0].0, 3);
        let (w, anti) = &c.anti_preferred[0];
        assert_eq!(*w, 50);
        assert!(anti.selects("prod", &own));
        let mut other_rev = own.clone();
        other_rev.insert("rev".into(), "2".into());
        assert!(
            !anti.selects("prod", &other_rev),
            "matchLabelKeys pins the pod's own rev"
        );
        assert!(!anti.selects("dev", &own));
        let sc = &c.spread[0];
        assert!(sc.hard && sc.honor_affinity && sc.honor_taints);
        assert_eq!((sc.max_skew, sc.min_domains), (2, 3));
        assert!(sc.selects(&own));
        assert!(c.binds_others());
    }
}
