//! Label selectors (`=`, `==`, `!=`, `in`, `notin`, exists, `!key`) and field selectors
//! (`path=value`, `path!=value` over dotted JSON paths) applied to list and watch requests.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::status::ApiError;
use crate::model::selector::{self, Operator};

/// A parsed `labelSelector`, matched by the one label matcher of the model; the empty selector
/// matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(selector::LabelSelector);

/// Splits on commas that are not inside parentheses.
fn split_top_level(input: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, ch) in input.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&input[start..]);
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

fn bad(selector: &str, what: &str) -> ApiError {
    ApiError::BadRequest(format!(
        "unable to parse requirement: invalid selector {selector:?}: {what}"
    ))
}

fn parse_set(selector: &str, rest: &str) -> Result<BTreeSet<String>, ApiError> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| bad(selector, "expected a parenthesised set of values"))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

fn check_key(selector: &str, key: &str) -> Result<String, ApiError> {
    let key = key.trim();
    let valid = !key.is_empty()
        && key.len() <= 317
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    if valid {
        Ok(key.to_string())
    } else {
        Err(bad(selector, &format!("invalid label key {key:?}")))
    }
}

impl LabelSelector {
    pub fn parse(selector: &str) -> Result<Self, ApiError> {
        let mut parsed = selector::LabelSelector::default();
        let one = |value: &str| BTreeSet::from([value.trim().to_string()]);
        for part in split_top_level(selector) {
            let (key, operator, values) = if let Some(key) = part.strip_prefix('!') {
                (key, Operator::DoesNotExist, BTreeSet::new())
            } else if let Some((key, value)) = part.split_once("!=") {
                (key, Operator::NotIn, one(value))
            } else if let Some((key, value)) =
                part.split_once("==").or_else(|| part.split_once('='))
            {
                (key, Operator::In, one(value))
            } else if let Some((key, rest)) = part.split_once(" notin ") {
                (key, Operator::NotIn, parse_set(selector, rest)?)
            } else if let Some((key, rest)) = part.split_once(" in ") {
                (key, Operator::In, parse_set(selector, rest)?)
            } else {
                (part, Operator::Exists, BTreeSet::new())
            };
            parsed = parsed.with(check_key(selector, key)?, operator, values);
        }
        Ok(LabelSelector(parsed))
    }

    pub fn matches_labels(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.matches(labels)
    }

    /// Matches against `metadata.labels` of a JSON object.
    pub fn matches(&self, object: &Value) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let labels = object["metadata"]["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        self.matches_labels(&labels)
    }
}

/// A parsed `fieldSelector`: `metadata.name=x,status.phase!=Failed`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    /// (dotted path, value, negated)
    requirements: Vec<(String, String, bool)>,
}

impl FieldSelector {
    pub fn parse(selector: &str) -> Result<Self, ApiError> {
        let mut requirements = Vec::new();
        for part in split_top_level(selector) {
            let (path, value, negated) = if let Some((p, v)) = part.split_once("!=") {
                (p, v, true)
            } else if let Some((p, v)) = part.split_once("==") {
                (p, v, false)
            } else if let Some((p, v)) = part.split_once('=') {
                (p, v, false)
            } else {
                return Err(ApiError::BadRequest(format!(
                    "invalid field selector {selector:?}: {part:?} is not of the form field=value"
                )));
            };
            requirements.push((path.trim().to_string(), value.trim().to_string(), negated));
        }
        Ok(FieldSelector { requirements })
    }

    /// The name this selector pins with `metadata.name=X`, if any.
    pub fn pinned_name(&self) -> Option<&str> {
        self.requirements
            .iter()
            .find(|(p, _, neg)| p == "metadata.name" && !neg)
            .map(|(_, v, _)| v.as_str())
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.requirements.iter().all(|(path, want, negated)| {
            let mut cursor = object;
            for segment in path.split('.') {
                cursor = &cursor[segment];
            }
            let have = match cursor {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (have == *want) != *negated
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "labels": labels}, "status": {"phase": "Running"}})
    }

    #[test]
    fn label_equality_and_inequality() {
        let o = obj(json!({"app": "web", "tier": "front"}));
        assert!(LabelSelector::parse("app=web").unwrap().matches(&o));
        assert!(LabelSelector::parse("app==web,tier=front")
            .unwrap()
            .matches(&o));
        assert!(!LabelSelector::parse("app=db").unwrap().matches(&o));
        assert!(LabelSelector::parse("app!=db").unwrap().matches(&o));
        assert!(LabelSelector::parse("missing!=x").unwrap().matches(&o));
    }

    #[test]
    fn label_sets_and_existence() {
        let o = obj(json!({"app": "web"}));
        assert!(LabelSelector::parse("app in (web, db)")
            .unwrap()
            .matches(&o));
        assert!(!LabelSelector::parse("app notin (web,db)")
            .unwrap()
            .matches(&o));
        assert!(LabelSelector::parse("other notin (x)").unwrap().matches(&o));
        assert!(LabelSelector::parse("app").unwrap().matches(&o));
        assert!(!LabelSelector::parse("!app").unwrap().matches(&o));
        assert!(LabelSelector::parse("!nope,app in (web)")
            .unwrap()
            .matches(&o));
        assert!(LabelSelector::parse("").unwrap().matches(&json!({})));
    }

    #[test]
    fn bad_label_selectors_are_rejected() {
        assert!(LabelSelector::parse("app in web").is_err());
        assert!(LabelSelector::parse("a b c").is_err());
    }

    #[test]
    fn field_selectors_over_paths() {
        let o = obj(json!({}));
        let sel = FieldSelector::parse("metadata.name=a,status.phase!=Failed").unwrap();
        assert!(sel.matches(&o));
        assert_eq!(sel.pinned_name(), Some("a"));
        assert!(!FieldSelector::parse("metadata.name=b").unwrap().matches(&o));
        assert!(FieldSelector::parse("spec.nodeName=").unwrap().matches(&o));
        assert!(FieldSelector::parse("nonsense").is_err());
    }
}
