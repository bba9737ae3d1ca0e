//! Node taints and pod tolerations (Kubernetes' `core/v1` rules, pure): parsing them from
//! JSON, validating them (the API refuses what Kubernetes refuses), and whether a pod's
//! tolerations tolerate a node's taints — shared by the API, the scheduler and the leader's
//! `NoExecute` evictions.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::names::{is_label_value, is_qualified_name};

/// The taint a cordoned node (`spec.unschedulable`) stands for: pods that tolerate it may
/// still be placed there (DaemonSet pods do).
pub const UNSCHEDULABLE_KEY: &str = "node.kubernetes.io/unschedulable";

/// Most taints on one node, tolerations on one pod (bounds user input).
pub const MAX_TAINTS: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Effect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

impl Effect {
    pub const ALL: [&'static str; 3] = ["NoSchedule", "PreferNoSchedule", "NoExecute"];

    pub fn parse(s: &str) -> Option<Effect> {
        match s {
            "NoSchedule" => Some(Effect::NoSchedule),
            "PreferNoSchedule" => Some(Effect::PreferNoSchedule),
            "NoExecute" => Some(Effect::NoExecute),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Effect::NoSchedule => "NoSchedule",
            Effect::PreferNoSchedule => "PreferNoSchedule",
            Effect::NoExecute => "NoExecute",
        }
    }
}

/// A node taint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: Effect,
    /// When a `NoExecute` taint was added (set by the API server): `tolerationSeconds` count
    /// from it.
    pub time_added: Option<DateTime<Utc>>,
}

impl Taint {
    /// A taint as JSON (`kubectl get node -o yaml`).
    pub fn to_json(&self) -> Value {
        let mut v = json!({"key": self.key, "effect": self.effect.as_str()});
        if !self.value.is_empty() {
            v["value"] = json!(self.value);
        }
        if let Some(t) = self.time_added {
            v["timeAdded"] = json!(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        }
        v
    }

    /// Kubernetes' wording in scheduling failures: `{key: value}`.
    pub fn shown(&self) -> String {
        format!("{{{}: {}}}", self.key, self.value)
    }
}

/// One problem with a taint or toleration list: (field path, message as Kubernetes says it).
pub type Problem = (String, String);

/// Parses and validates `spec.taints` of a Node (Kubernetes' `validateNodeTaints`): a
/// qualified key, a label-value value, one of the three effects, no two taints with the same
/// key and effect. `path` is the field path of the list.
pub fn parse_taints(list: &Value, path: &str) -> Result<Vec<Taint>, Vec<Problem>> {
    let items = match list {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        _ => return Err(vec![(path.to_string(), "must be a list".into())]),
    };
    let mut problems = Vec::new();
    if items.len() > MAX_TAINTS {
        problems.push((
            path.to_string(),
            format!(
                "Too many: {}: must have at most {MAX_TAINTS} items",
                items.len()
            ),
        ));
        return Err(problems);
    }
    let mut taints: Vec<Taint> = Vec::new();
    for (i, t) in items.iter().enumerate() {
        let at = |f: &str| format!("{path}[{i}].{f}");
        if !t.is_object() {
            problems.push((format!("{path}[{i}]"), "must be an object".into()));
            continue;
        }
        if let Some(unknown) = t
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k.as_str())
            .find(|k| !["key", "value", "effect", "timeAdded"].contains(k))
        {
            problems.push((at(unknown), "field not declared in schema".into()));
        }
        let key = t["key"].as_str().unwrap_or_default();
        if key.is_empty() {
            problems.push((at("key"), "Required value".into()));
        } else if !is_qualified_name(key) {
            problems.push((
                at("key"),
                format!("Invalid value: {key:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (with an optional DNS subdomain prefix and '/')"),
            ));
        }
        let value = match &t["value"] {
            Value::Null => "",
            Value::String(s) => s.as_str(),
            other => {
                problems.push((
                    at("value"),
                    format!("Invalid value: {other}: must be a string"),
                ));
                ""
            }
        };
        if !is_label_value(value) {
            problems.push((
                at("value"),
                format!("Invalid value: {value:?}: a valid label must be an empty string or consist of at most 63 alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"),
            ));
        }
        let effect = match t["effect"].as_str().unwrap_or_default() {
            "" => {
                problems.push((at("effect"), "Required value".into()));
                None
            }
            e => match Effect::parse(e) {
                Some(e) => Some(e),
                None => {
                    problems.push((
                        at("effect"),
                        format!(
                            "Unsupported value: {e:?}: supported values: \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\""
                        ),
                    ));
                    None
                }
            },
        };
        let time_added = match &t["timeAdded"] {
            Value::Null => None,
            Value::String(s) => match DateTime::parse_from_rfc3339(s) {
                Ok(t) => Some(t.with_timezone(&Utc)),
                Err(_) => {
                    problems.push((
                        at("timeAdded"),
                        format!("Invalid value: {s:?}: must be an RFC 3339 time"),
                    ));
                    None
                }
            },
            other => {
                problems.push((
                    at("timeAdded"),
                    format!("Invalid value: {other}: must be a time"),
                ));
                None
            }
        };
        let Some(effect) = effect else { continue };
        if taints.iter().any(|o| o.key == key && o.effect == effect) {
            problems.push((
                format!("{path}[{i}]"),
                format!(
                    "Duplicate value: \"{key}:{}\": taints must be unique by key and effect pair",
                    effect.as_str()
                ),
            ));
            continue;
        }
        taints.push(Taint {
            key: key.to_string(),
            value: value.to_string(),
            effect,
            time_added,
        });
    }
    if problems.is_empty() {
        Ok(taints)
    } else {
        Err(problems)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    Equal,
    Exists,
}

/// A pod toleration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Toleration {
    /// Empty (with `Exists`): every key.
    pub key: String,
    pub operator: Operator,
    pub value: String,
    /// `None`: every effect.
    pub effect: Option<Effect>,
    /// `NoExecute` only: how long the pod stays once the taint is there (`None`: for ever).
    pub seconds: Option<i64>,
}

impl Toleration {
    /// Kubernetes' `ToleratesTaint`.
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if self.effect.is_some_and(|e| e != taint.effect) {
            return false;
        }
        if !self.key.is_empty() && self.key != taint.key {
            return false;
        }
        match self.operator {
            Operator::Exists => true,
            Operator::Equal => self.value == taint.value,
        }
    }
}

/// Checks a pod's `spec.tolerations` (Kubernetes' `validateTolerations`); `path` is the
/// field path of the list.
pub fn validate_tolerations(list: &Value, path: &str) -> Vec<Problem> {
    let items = match list {
        Value::Null => return Vec::new(),
        Value::Array(items) => items,
        _ => return vec![(path.to_string(), "must be a list".into())],
    };
    let mut problems = Vec::new();
    if items.len() > MAX_TAINTS {
        problems.push((
            path.to_string(),
            format!(
                "Too many: {}: must have at most {MAX_TAINTS} items",
                items.len()
            ),
        ));
        return problems;
    }
    for (i, t) in items.iter().enumerate() {
        let at = |f: &str| format!("{path}[{i}].{f}");
        let key = t["key"].as_str().unwrap_or_default();
        let operator = t["operator"].as_str().unwrap_or_default();
        let value = t["value"].as_str().unwrap_or_default();
        if !key.is_empty() && !is_qualified_name(key) {
            problems.push((
                at("key"),
                format!("Invalid value: {key:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (with an optional DNS subdomain prefix and '/')"),
            ));
        }
        if key.is_empty() && operator != "Exists" {
            problems.push((
                at("operator"),
                format!("Invalid value: {operator:?}: operator must be Exists when `key` is empty, which means \"match all values and all keys\""),
            ));
        }
        match operator {
            "" | "Equal" => {
                if !is_label_value(value) {
                    problems.push((
                        at("value"),
                        format!("Invalid value: {value:?}: a valid label must be an empty string or consist of at most 63 alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"),
                    ));
                }
            }
            "Exists" => {
                if !value.is_empty() {
                    problems.push((
                        at("operator"),
                        format!("Invalid value: {value:?}: value must be empty when `operator` is 'Exists'"),
                    ));
                }
            }
            other => problems.push((
                at("operator"),
                format!("Unsupported value: {other:?}: supported values: \"Equal\", \"Exists\""),
            )),
        }
        let effect = t["effect"].as_str().unwrap_or_default();
        if !effect.is_empty() && Effect::parse(effect).is_none() {
            problems.push((
                at("effect"),
                format!(
                    "Unsupported value: {effect:?}: supported values: \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\""
                ),
            ));
        }
        if !t["tolerationSeconds"].is_null() {
            if t["tolerationSeconds"].as_i64().is_none() {
                problems.push((
                    at("tolerationSeconds"),
                    format!(
                        "Invalid value: {}: must be an integer",
                        t["tolerationSeconds"]
                    ),
                ));
            } else if effect != "NoExecute" {
                problems.push((
                    at("effect"),
                    format!("Invalid value: {effect:?}: effect must be 'NoExecute' when `tolerationSeconds` is set"),
                ));
            }
        }
    }
    problems
}

/// A pod's tolerations, read leniently (what validation refused never reaches here; anything
/// malformed is skipped).
pub fn tolerations(spec: &Value) -> Vec<Toleration> {
    spec["tolerations"]
        .as_array()
        .into_iter()
        .flatten()
        .take(MAX_TAINTS)
        .filter_map(|t| {
            let operator = match t["operator"].as_str().unwrap_or("Equal") {
                "Exists" => Operator::Exists,
                "Equal" | "" => Operator::Equal,
                _ => return None,
            };
            let effect = match t["effect"].as_str().unwrap_or_default() {
                "" => None,
                e => Some(Effect::parse(e)?),
            };
            Some(Toleration {
                key: t["key"].as_str().unwrap_or_default().to_string(),
                operator,
                value: t["value"].as_str().unwrap_or_default().to_string(),
                effect,
                seconds: t["tolerationSeconds"].as_i64(),
            })
        })
        .collect()
}

/// Whether `tolerations` tolerate `taint`.
pub fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| t.tolerates(taint))
}

/// The first taint of `effects` that `tolerations` do not tolerate.
pub fn first_untolerated<'t>(
    taints: &'t [Taint],
    tolerations: &[Toleration],
    effects: &[Effect],
) -> Option<&'t Taint> {
    taints
        .iter()
        .find(|t| effects.contains(&t.effect) && !tolerated(tolerations, t))
}

/// The taint standing for `spec.unschedulable`.
pub fn unschedulable_taint() -> Taint {
    Taint {
        key: UNSCHEDULABLE_KEY.into(),
        value: String::new(),
        effect: Effect::NoSchedule,
        time_added: None,
    }
}

/// What a node's `NoExecute` taints mean for a pod on it: `None` when it may stay for ever,
/// else the time from which it must go (Kubernetes' taint manager): at once for an
/// untolerated taint, else the earliest `start + tolerationSeconds` over the taints whose
/// every matching toleration is bounded (the smallest bound counts), where `start` is the
/// later of the taint's `timeAdded` and `bound`, the time the pod was placed on the node (a
/// pod placed on a node that already had the taint gets its whole `tolerationSeconds`, as
/// Kubernetes counts from when it sees the pod there).
pub fn no_execute_deadline(
    taints: &[Taint],
    tolerations: &[Toleration],
    bound: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    let mut deadline: Option<DateTime<Utc>> = None;
    for taint in taints.iter().filter(|t| t.effect == Effect::NoExecute) {
        let matching: Vec<&Toleration> =
            tolerations.iter().filter(|t| t.tolerates(taint)).collect();
        let at = if matching.is_empty() {
            DateTime::UNIX_EPOCH
        } else if matching.iter().any(|t| t.seconds.is_none()) {
            continue;
        } else {
            let seconds = matching
                .iter()
                .filter_map(|t| t.seconds)
                .min()
                .unwrap_or(0)
                .clamp(0, 10 * 365 * 86_400);
            let added = taint.time_added.unwrap_or(DateTime::UNIX_EPOCH);
            added.max(bound.unwrap_or(added)) + chrono::Duration::seconds(seconds)
        };
        deadline = Some(deadline.map_or(at, |d| d.min(at)));
    }
    deadline
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn taint(key: &str, value: &str, effect: Effect) -> Taint {
        Taint {
            key: key.into(),
            value: value.into(),
            effect,
            time_added: None,
        }
    }

    fn tol(v: Value) -> Toleration {
        tolerations(&json!({"tolerations": [v]})).pop().unwrap()
    }

    #[test]
    fn tolerations_match_as_kubernetes() {
        let t = taint("dedicated", "gpu", Effect::NoSchedule);
        assert!(tol(json!({"key": "dedicated", "value": "gpu"})).tolerates(&t));
        assert!(tol(
            json!({"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"})
        )
        .tolerates(&t));
        assert!(!tol(json!({"key": "dedicated", "value": "cpu"})).tolerates(&t));
        assert!(
            !tol(json!({"key": "dedicated", "value": "gpu", "effect": "NoExecute"})).tolerates(&t)
        );
        assert!(tol(json!({"key": "dedicated", "operator": "Exists"})).tolerates(&t));
        assert!(!tol(json!({"key": "other", "operator": "Exists"})).tolerates(&t));
        // An empty key with Exists tolerates everything (of its effect, if given).
        assert!(tol(json!({"operator": "Exists"})).tolerates(&t));
        assert!(tol(json!({"operator": "Exists", "effect": "NoSchedule"})).tolerates(&t));
        assert!(!tol(json!({"operator": "Exists", "effect": "PreferNoSchedule"})).tolerates(&t));
    }

    #[test]
    fn taints_are_validated() {
        let ok = parse_taints(
            &json!([{"key": "k", "value": "v", "effect": "NoSchedule"},
                    {"key": "k", "effect": "NoExecute", "timeAdded": "2026-01-01T00:00:00Z"}]),
            "spec.taints",
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(
            ok[0].to_json(),
            json!({"key": "k", "value": "v", "effect": "NoSchedule"})
        );
        let fields = |v: Value| -> Vec<String> {
            parse_taints(&v, "spec.taints")
                .unwrap_err()
                .into_iter()
                .map(|(f, _)| f)
                .collect()
        };
        assert_eq!(
            fields(json!([{"key": "k", "effect": "Sometimes"}])),
            ["spec.taints[0].effect"]
        );
        assert_eq!(fields(json!([{"key": "k"}])), ["spec.taints[0].effect"]);
        assert_eq!(
            fields(json!([{"effect": "NoSchedule"}])),
            ["spec.taints[0].key"]
        );
        assert_eq!(
            fields(json!([{"key": "k", "value": "a b", "effect": "NoSchedule"}])),
            ["spec.taints[0].value"]
        );
        assert_eq!(
            fields(
                json!([{"key": "k", "effect": "NoSchedule"}, {"key": "k", "value": "x", "effect": "NoSchedule"}])
            ),
            ["spec.taints[1]"]
        );
        assert_eq!(
            fields(json!([{"key": "k", "effect": "NoSchedule", "extra": 1}])),
            ["spec.taints[0].extra"]
        );
        assert_eq!(fields(json!("x")), ["spec.taints"]);
        assert_eq!(
            fields(json!(vec![json!({}); MAX_TAINTS + 1])),
            ["spec.taints"]
        );
    }

    #[test]
    fn tolerations_are_validated() {
        let fields = |v: Value| -> Vec<String> {
            validate_tolerations(&v, "spec.tolerations")
                .into_iter()
                .map(|(f, _)| f)
                .collect()
        };
        assert!(fields(json!([{"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}])).is_empty());
        assert!(fields(json!([{"operator": "Exists"}])).is_empty());
        assert_eq!(
            fields(json!([{"operator": "Equal"}])),
            ["spec.tolerations[0].operator"]
        );
        assert_eq!(
            fields(json!([{"key": "k", "operator": "Exists", "value": "v"}])),
            ["spec.tolerations[0].operator"]
        );
        assert_eq!(
            fields(json!([{"key": "k", "operator": "Gt"}])),
            ["spec.tolerations[0].operator"]
        );
        assert_eq!(
            fields(json!([{"key": "k", "effect": "Never"}])),
            ["spec.tolerations[0].effect"]
        );
        assert_eq!(
            fields(json!([{"key": "k", "effect": "NoSchedule", "tolerationSeconds": 5}])),
            ["spec.tolerations[0].effect"]
        );
    }

    #[test]
    fn no_execute_deadlines() {
        let added = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let secs = chrono::Duration::seconds;
        let mut t = taint("k", "v", Effect::NoExecute);
        t.time_added = Some(added);
        let taints = vec![t, taint("soft", "", Effect::NoSchedule)];
        assert_eq!(
            no_execute_deadline(&taints, &[], None),
            Some(DateTime::UNIX_EPOCH)
        );
        // Untolerated: at once, however late the pod came.
        assert_eq!(
            no_execute_deadline(&taints, &[], Some(added + secs(500))),
            Some(DateTime::UNIX_EPOCH)
        );
        let forever = tol(json!({"key": "k", "operator": "Exists"}));
        assert_eq!(
            no_execute_deadline(&taints, std::slice::from_ref(&forever), None),
            None
        );
        let bounded = tol(
            json!({"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}),
        );
        let bounded_ = std::slice::from_ref(&bounded);
        assert_eq!(
            no_execute_deadline(&taints, bounded_, None),
            Some(added + secs(30))
        );
        // A pod placed before the taint was added counts from the taint...
        assert_eq!(
            no_execute_deadline(&taints, bounded_, Some(added - secs(3600))),
            Some(added + secs(30))
        );
        // ...one placed after it from its placement: its whole tolerationSeconds.
        assert_eq!(
            no_execute_deadline(&taints, bounded_, Some(added + secs(100))),
            Some(added + secs(130))
        );
        // A taint without timeAdded counts from the placement.
        let mut undated = taints.clone();
        undated[0].time_added = None;
        assert_eq!(
            no_execute_deadline(&undated, bounded_, Some(added)),
            Some(added + secs(30))
        );
        // An unbounded toleration of the same taint wins.
        assert_eq!(
            no_execute_deadline(&taints, &[bounded, forever], Some(added)),
            None
        );
        assert_eq!(no_execute_deadline(&taints[1..], &[], None), None);
    }

    fn arb_taint() -> impl Strategy<Value = Taint> {
        (
            prop::sample::select(vec!["a", "b", "c"]),
            prop::sample::select(vec!["", "x", "y"]),
            prop::sample::select(vec![
                Effect::NoSchedule,
                Effect::PreferNoSchedule,
                Effect::NoExecute,
            ]),
        )
            .prop_map(|(k, v, e)| taint(k, v, e))
    }

    fn arb_toleration() -> impl Strategy<Value = Toleration> {
        (
            prop::sample::select(vec!["", "a", "b"]),
            any::<bool>(),
            prop::sample::select(vec!["", "x", "y"]),
            prop::option::of(prop::sample::select(vec![
                Effect::NoSchedule,
                Effect::PreferNoSchedule,
                Effect::NoExecute,
            ])),
        )
            .prop_map(|(k, exists, v, effect)| Toleration {
                key: k.into(),
                operator: if exists || k.is_empty() {
                    Operator::Exists
                } else {
                    Operator::Equal
                },
                value: if exists || k.is_empty() {
                    String::new()
                } else {
                    v.into()
                },
                effect,
                seconds: None,
            })
    }

    proptest! {
        /// Tolerating is monotone: more tolerations never untolerate a taint; the wildcard
        /// tolerates everything; a toleration only ever tolerates taints of its key and effect.
        #[test]
        fn toleration_laws(taints in prop::collection::vec(arb_taint(), 0..6),
                           tols in prop::collection::vec(arb_toleration(), 0..4),
                           extra in arb_toleration()) {
            let effects = [Effect::NoSchedule, Effect::NoExecute];
            let mut more = tols.clone();
            more.push(extra.clone());
            if first_untolerated(&taints, &tols, &effects).is_none() {
                prop_assert!(first_untolerated(&taints, &more, &effects).is_none());
            }
            let all = tol(json!({"operator": "Exists"}));
            prop_assert!(first_untolerated(&taints, &[all], &effects).is_none());
            for t in &taints {
                if extra.tolerates(t) {
                    prop_assert!(extra.key.is_empty() || extra.key == t.key);
                    prop_assert!(extra.effect.is_none_or(|e| e == t.effect));
                }
            }
        }
    }
}
