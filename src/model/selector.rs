//! `metav1.LabelSelector` (`matchLabels`, `matchExpressions`) parsed once from its JSON form and
//! matched against labels: the one matcher of the API (ReplicaSet and Deployment selectors) and
//! the scheduler (pod anti-affinity terms), and the requirements of node selector terms (node
//! affinity, which add `Gt` and `Lt`). The string form of `?labelSelector=` is
//! `api::selectors`'.

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

/// A `metav1.LabelSelector`.
#[derive(Clone, Debug, PartialEq, Eq)]
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
