//! `metav1.LabelSelector` (`matchLabels`, `matchExpressions`) parsed once from its JSON form and
//! matched against labels: the one matcher of the API (ReplicaSet and Deployment selectors) and
//! the scheduler (pod affinity terms, topology spread constraints), and `v1.NodeSelector` (the
//! terms of node affinity, whose requirements add `Gt` and `Lt` and `matchFields`): the one
//! node matcher of the scheduler and the DaemonSet controller. The string form of
//! `?labelSelector=` is `api::selectors`'.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// Most `matchLabels` entries, expressions or values read from one selector (bounds user input).
const MAX_ITEMS: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Exists,
    DoesNotExist,
    /// Node selector requirements only: the value, as an integer, is greater / less than.
    Gt(Option<i64>),
    Lt(Option<i64>),
    /// An operator Kubernetes does not know: the selector matches nothing.
    Invalid,
}

impl Op {
    /// The operator of a requirement (`{"key", "operator", "values"}`); `Gt` and `Lt` only
    /// where `numeric` (node selector terms).
    fn parse(e: &Value, numeric: bool) -> Op {
        let values = || -> BTreeSet<String> {
            e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .take(MAX_ITEMS)
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        };
        let first = || -> Option<i64> { e["values"].get(0)?.as_str()?.parse().ok() };
        match e["operator"].as_str() {
            Some("In") => Op::In(values()),
            Some("NotIn") => Op::NotIn(values()),
            Some("Exists") => Op::Exists,
            Some("DoesNotExist") => Op::DoesNotExist,
            Some("Gt") if numeric => Op::Gt(first()),
            Some("Lt") if numeric => Op::Lt(first()),
            _ => Op::Invalid,
        }
    }

    fn matches(&self, have: Option<&str>) -> bool {
        let number = have.and_then(|h| h.parse::<i64>().ok());
        match self {
            Op::In(vals) => have.is_some_and(|h| vals.contains(h)),
            Op::NotIn(vals) => have.is_none_or(|h| !vals.contains(h)),
            Op::Exists => have.is_some(),
            Op::DoesNotExist => have.is_none(),
            Op::Gt(v) => matches!((number, v), (Some(a), Some(b)) if a > *b),
            Op::Lt(v) => matches!((number, v), (Some(a), Some(b)) if a < *b),
            Op::Invalid => false,
        }
    }
}

/// Whether a node selector requirement (`matchExpressions` / `matchFields` of a node
/// selector term: `In`, `NotIn`, `Exists`, `DoesNotExist`, `Gt`, `Lt`) holds for `value`.
pub fn requirement_matches(req: &Value, value: Option<&str>) -> bool {
    Op::parse(req, true).matches(value)
}

/// One requirement: a key (a label, or a field for `matchFields`) and its operator.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

impl Requirement {
    fn parse(e: &Value, numeric: bool) -> Requirement {
        Requirement {
            key: e["key"].as_str().unwrap_or("").to_string(),
            op: Op::parse(e, numeric),
        }
    }
}

/// A node selector term: its `matchExpressions` (on the node's labels) and `matchFields` (on
/// `metadata.name`, the one field Kubernetes selects nodes by) ANDed. A term with neither
/// matches no node, as in Kubernetes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSelectorTerm {
    labels: Vec<Requirement>,
    fields: Vec<Requirement>,
}

impl NodeSelectorTerm {
    pub fn parse(term: &Value) -> NodeSelectorTerm {
        let list = |name: &str| -> Vec<Requirement> {
            term[name]
                .as_array()
                .into_iter()
                .flatten()
                .take(MAX_ITEMS)
                .map(|e| Requirement::parse(e, true))
                .collect()
        };
        NodeSelectorTerm {
            labels: list("matchExpressions"),
            fields: list("matchFields"),
        }
    }

    /// Whether the node `name` with `labels` (`kubernetes.io/hostname` included) matches.
    pub fn matches(&self, labels: &BTreeMap<String, String>, name: &str) -> bool {
        (!self.labels.is_empty() || !self.fields.is_empty())
            && self
                .labels
                .iter()
                .all(|r| r.op.matches(labels.get(&r.key).map(String::as_str)))
            && self
                .fields
                .iter()
                .all(|r| r.key == "metadata.name" && r.op.matches(Some(name)))
    }
}

/// A `v1.NodeSelector`: its `nodeSelectorTerms` ORed (no term: no node).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSelector {
    terms: Vec<NodeSelectorTerm>,
}

impl NodeSelector {
    /// `None` when `v` is null or not an object (no requirement at all).
    pub fn parse(v: &Value) -> Option<NodeSelector> {
        let obj = v.as_object()?;
        let terms = obj
            .get("nodeSelectorTerms")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .take(MAX_ITEMS)
            .map(NodeSelectorTerm::parse)
            .collect();
        Some(NodeSelector { terms })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>, name: &str) -> bool {
        self.terms.iter().any(|t| t.matches(labels, name))
    }
}

/// A set-based operator of a label requirement, as the string form of selectors
/// (`?labelSelector=`) writes them: Kubernetes' `labels.Parse` makes `k=v`/`k==v` an `In` of
/// one value and `k!=v` a `NotIn` of one value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// A `metav1.LabelSelector`. The default (no requirement) selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    match_labels: Vec<(String, String)>,
    exprs: Vec<(String, Op)>,
}

impl LabelSelector {
    /// `None` for a null (or non-object) selector, which selects nothing; an empty one selects
    /// everything.
    pub fn parse(v: &Value) -> Option<LabelSelector> {
        let obj = v.as_object()?;
        let match_labels = obj
            .get("matchLabels")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .take(MAX_ITEMS)
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
            .collect();
        let exprs = obj
            .get("matchExpressions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .take(MAX_ITEMS)
            .map(|e| {
                let key = e["key"].as_str().unwrap_or("").to_string();
                (key, Op::parse(e, false))
            })
            .collect();
        Some(LabelSelector {
            match_labels,
            exprs,
        })
    }

    /// Adds `key In (the pod's value)` for each of `match_keys` and `key NotIn (the pod's
    /// value)` for each of `mismatch_keys` that `labels` (the pod's own) has: Kubernetes'
    /// `matchLabelKeys` / `mismatchLabelKeys` of pod affinity terms and topology spread
    /// constraints (keys the pod lacks are ignored).
    pub fn with_label_keys(
        mut self,
        labels: &BTreeMap<String, String>,
        match_keys: &Value,
        mismatch_keys: &Value,
    ) -> LabelSelector {
        for (keys, same) in [(match_keys, true), (mismatch_keys, false)] {
            for key in keys.as_array().into_iter().flatten().take(MAX_ITEMS) {
                let Some((key, value)) = key.as_str().and_then(|k| labels.get_key_value(k)) else {
                    continue;
                };
                let values = BTreeSet::from([value.clone()]);
                let op = if same {
                    Op::In(values)
                } else {
                    Op::NotIn(values)
                };
                self.exprs.push((key.clone(), op));
            }
        }
        self
    }

    /// Adds the requirement `key operator values` (values are ignored by `Exists` and
    /// `DoesNotExist`).
    pub fn with(mut self, key: String, operator: Operator, values: BTreeSet<String>) -> Self {
        let op = match operator {
            Operator::In => Op::In(values),
            Operator::NotIn => Op::NotIn(values),
            Operator::Exists => Op::Exists,
            Operator::DoesNotExist => Op::DoesNotExist,
        };
        self.exprs.push((key, op));
        self
    }

    /// Whether the selector has no requirement (it selects everything).
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.exprs.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self
                .exprs
                .iter()
                .all(|(k, op)| op.matches(labels.get(k).map(String::as_str)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels() -> BTreeMap<String, String> {
        [("app", "web"), ("tier", "a")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn null_selects_nothing_and_empty_selects_everything() {
        assert!(LabelSelector::parse(&Value::Null).is_none());
        assert!(LabelSelector::parse(&json!({})).unwrap().matches(&labels()));
        assert!(LabelSelector::parse(&json!({}))
            .unwrap()
            .matches(&BTreeMap::new()));
    }

    #[test]
    fn labels_and_every_operator() {
        let sel = |v: Value| LabelSelector::parse(&v).unwrap().matches(&labels());
        assert!(sel(json!({"matchLabels": {"app": "web"}})));
        assert!(!sel(json!({"matchLabels": {"app": "db"}})));
        assert!(sel(
            json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]})
        ));
        assert!(!sel(
            json!({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["a"]}]})
        ));
        assert!(sel(
            json!({"matchExpressions": [{"key": "gone", "operator": "NotIn", "values": ["a"]}]})
        ));
        assert!(sel(
            json!({"matchExpressions": [{"key": "app", "operator": "Exists"}]})
        ));
        assert!(sel(
            json!({"matchExpressions": [{"key": "gone", "operator": "DoesNotExist"}]})
        ));
        assert!(!sel(
            json!({"matchExpressions": [{"key": "app", "operator": "Gt", "values": ["1"]}]})
        ));
    }

    #[test]
    fn node_selectors_or_their_terms_and_and_their_requirements() {
        let mut node = labels();
        node.insert("kubernetes.io/hostname".into(), "n1".into());
        let sel = |v: Value| NodeSelector::parse(&v).unwrap().matches(&node, "n1");
        assert!(NodeSelector::parse(&Value::Null).is_none());
        assert!(!sel(json!({"nodeSelectorTerms": []})), "no term: no node");
        assert!(
            !sel(json!({"nodeSelectorTerms": [{}]})),
            "an empty term: no node"
        );
        assert!(sel(json!({"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "app", "operator": "In", "values": ["db"]}]},
            {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]},
                                  {"key": "tier", "operator": "Exists"}]},
        ]})));
        assert!(!sel(json!({"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]},
                                  {"key": "tier", "operator": "DoesNotExist"}]},
        ]})));
        assert!(sel(json!({"nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]})));
        assert!(!sel(json!({"nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["n1"]}]}]})));
        assert!(!sel(json!({"nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.uid", "operator": "Exists"}]}]})));
    }

    #[test]
    fn label_keys_add_the_pods_own_values() {
        let pod = labels();
        let sel = LabelSelector::parse(&json!({"matchLabels": {"app": "web"}}))
            .unwrap()
            .with_label_keys(&pod, &json!(["tier", "absent"]), &json!(null));
        assert!(sel.matches(&pod));
        let mut other = pod.clone();
        other.insert("tier".into(), "b".into());
        assert!(!sel.matches(&other));
        let apart = LabelSelector::parse(&json!({})).unwrap().with_label_keys(
            &pod,
            &json!(null),
            &json!(["tier"]),
        );
        assert!(!apart.matches(&pod) && apart.matches(&other));
    }

    #[test]
    fn node_requirements_add_gt_and_lt() {
        let req = |op: &str, values: &[&str]| json!({"key": "k", "operator": op, "values": values});
        assert!(requirement_matches(&req("In", &["a", "b"]), Some("b")));
        assert!(!requirement_matches(&req("In", &["a"]), None));
        assert!(requirement_matches(&req("NotIn", &["a"]), None));
        assert!(requirement_matches(&req("Exists", &[]), Some("")));
        assert!(requirement_matches(&req("DoesNotExist", &[]), None));
        assert!(requirement_matches(&req("Gt", &["3"]), Some("4")));
        assert!(!requirement_matches(&req("Gt", &["3"]), Some("3")));
        assert!(requirement_matches(&req("Lt", &["3"]), Some("-1")));
        assert!(
            !requirement_matches(&req("Lt", &["x"]), Some("1")),
            "not a number"
        );
        assert!(!requirement_matches(&req("Lt", &["3"]), None));
        assert!(!requirement_matches(&req("Near", &["3"]), Some("3")));
    }
}
