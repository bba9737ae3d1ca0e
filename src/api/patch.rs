//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and Kubernetes strategic
//! merge patch (lists of maps merge by a per-field key, `$patch`, `$retainKeys`,
//! `$setElementOrder/` and `$deleteFromPrimitiveList/` directives). Kind-independent: the
//! caller passes the list merge keys of its kind.

use serde_json::{Map, Value};

/// Which patch a request carries, from its `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Json,
    StrategicMerge,
}

impl PatchKind {
    pub const ACCEPTED: &'static str =
        "application/json-patch+json, application/merge-patch+json, \
         application/strategic-merge-patch+json, application/apply-patch+yaml";

    /// Why a PATCH with `content_type` is refused (415), with the types accepted. Server-side
    /// apply (`application/apply-patch+yaml`) is served on objects (`apply.rs`), not on
    /// subresources: there it is refused by name.
    pub fn refusal(content_type: &str) -> String {
        let media = content_type.to_ascii_lowercase();
        if media.starts_with("application/apply-patch+yaml") {
            "server-side apply (application/apply-patch+yaml) is served on objects, not on this \
             subresource: use a merge or strategic merge patch here"
                .to_string()
        } else if media.starts_with("application/apply-patch") {
            format!(
                "server-side apply is served as application/apply-patch+yaml only, not \
                 {content_type:?}"
            )
        } else {
            format!(
                "PATCH content type {content_type:?} is not supported; use one of {}",
                Self::ACCEPTED
            )
        }
    }

    pub fn from_content_type(content_type: &str) -> Option<Self> {
        let media = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match media.as_str() {
            "application/merge-patch+json" => Some(PatchKind::Merge),
            "application/json-patch+json" => Some(PatchKind::Json),
            "application/strategic-merge-patch+json" => Some(PatchKind::StrategicMerge),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatchError {
    #[error("invalid patch: {0}")]
    Malformed(String),
    #[error("the json patch test operation failed at {0}")]
    TestFailed(String),
    #[error("json patch path {0} does not exist")]
    MissingPath(String),
    /// Too many operations, or copies adding up past their bound (413).
    #[error("{0}")]
    TooLarge(String),
}

impl PatchError {
    /// The API's answer: 413 for a patch too large in effect, 400 for the rest.
    pub fn to_api(&self) -> super::status::ApiError {
        match self {
            PatchError::TooLarge(m) => super::status::ApiError::EffectTooLarge(m.clone()),
            e => super::status::ApiError::BadRequest(e.to_string()),
        }
    }
}

/// Most operations in one JSON patch (Kubernetes' `maxJSONPatchOperations`).
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// Most bytes (as JSON) that the `copy` operations of one JSON patch may add up to: each copy
/// can double the object, so 30 of them in a small body would otherwise ask for gigabytes.
pub const MAX_JSON_PATCH_COPIED_BYTES: usize = 3 << 20;

/// Merge keys of lists of maps for strategic merge patch: given the dotted path of a list
/// field (e.g. `spec.template.spec.containers`), the key its elements merge on (`name`).
pub type MergeKeys = fn(&str) -> Option<&'static str>;

/// No list merges by key: every list is replaced (ConfigMap, Namespace, ...).
pub fn no_merge_keys(_path: &str) -> Option<&'static str> {
    None
}

pub fn apply(
    kind: PatchKind,
    target: &Value,
    patch: &Value,
    keys: MergeKeys,
) -> Result<Value, PatchError> {
    match kind {
        PatchKind::Merge => {
            if !patch.is_object() {
                return Err(PatchError::Malformed(
                    "a merge patch must be a JSON object".into(),
                ));
            }
            Ok(merge_patch(target, patch))
        }
        PatchKind::Json => json_patch(target, patch),
        PatchKind::StrategicMerge => {
            if !patch.is_object() {
                return Err(PatchError::Malformed(
                    "a strategic merge patch must be a JSON object".into(),
                ));
            }
            strategic_merge(target, patch, keys, "")
        }
    }
}

/// RFC 7386 (the `json-patch` crate's `merge`): objects merge recursively, `null` deletes,
/// everything else replaces.
pub fn merge_patch(target: &Value, patch: &Value) -> Value {
    let mut doc = target.clone();
    json_patch::merge(&mut doc, patch);
    doc
}

/// RFC 6902 operations (add, remove, replace, move, copy, test) through the `json-patch` crate:
/// JSON pointers as RFC 6901 has them (an array index is `0` or has no leading zero), all or
/// nothing.
pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    if !patch.is_array() {
        return Err(PatchError::Malformed(
            "a json patch must be a JSON array".into(),
        ));
    }
    let ops: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| PatchError::Malformed(e.to_string()))?;
    if ops.0.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(PatchError::TooLarge(format!(
            "The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {}",
            ops.0.len()
        )));
    }
    // One operation at a time on a copy (all or nothing: the copy is dropped on error), so
    // each `copy` is weighed before it runs.
    let mut doc = target.clone();
    let mut copied = 0usize;
    for (i, op) in ops.0.iter().enumerate() {
        if let json_patch::PatchOperation::Copy(c) = op {
            if let Some(source) = doc.pointer(c.from.as_str()) {
                copied = copied.saturating_add(json_len(source));
                if copied > MAX_JSON_PATCH_COPIED_BYTES {
                    return Err(PatchError::TooLarge(format!(
                        "the copy operations of a JSON patch may add at most {MAX_JSON_PATCH_COPIED_BYTES} bytes; operation {i} passes that"
                    )));
                }
            }
        }
        json_patch::patch_unsafe(&mut doc, std::slice::from_ref(op))
            .map_err(|e| op_error(i, op, e))?;
    }
    Ok(doc)
}

/// The answer to a failed operation `op` (number `index` of the patch): its from-path named for a failed copy or move, a
/// test of a path that names nothing failing as a test.
fn op_error(
    index: usize,
    op: &json_patch::PatchOperation,
    e: json_patch::PatchError,
) -> PatchError {
    use json_patch::{PatchErrorKind, PatchOperation};
    let from = match op {
        PatchOperation::Copy(op) => op.from.to_string(),
        PatchOperation::Move(op) => op.from.to_string(),
        _ => e.path.to_string(),
    };
    match e.kind {
        PatchErrorKind::TestFailed | PatchErrorKind::InvalidPointer
            if matches!(op, PatchOperation::Test(_)) =>
        {
            PatchError::TestFailed(e.path.to_string())
        }
        PatchErrorKind::InvalidFromPointer => PatchError::MissingPath(from),
        PatchErrorKind::InvalidPointer => PatchError::MissingPath(e.path.to_string()),
        kind => PatchError::Malformed(format!(
            "operation '/{index}' failed at path '{}': {kind}",
            e.path
        )),
    }
}

/// The length of `value` written as compact JSON, without writing it.
fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Removes every `$`-directive from a value that is stored as is (an added subtree).
fn strip_directives(value: &Value) -> Value {
    match value {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

/// Strategic merge of `patch` into `target` at dotted `path`.
pub fn strategic_merge(
    target: &Value,
    patch: &Value,
    keys: MergeKeys,
    path: &str,
) -> Result<Value, PatchError> {
    let Value::Object(patch_map) = patch else {
        return Ok(strip_directives(patch));
    };
    match patch_map.get("$patch").and_then(Value::as_str) {
        Some("replace") => return Ok(strip_directives(patch)),
        Some("delete") => return Ok(Value::Null),
        Some("merge") | None => {}
        Some(other) => {
            return Err(PatchError::Malformed(format!(
                "unknown $patch directive {other:?}"
            )))
        }
    }
    let mut result = match target {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    if let Some(retain) = patch_map.get("$retainKeys") {
        let retain: Vec<&str> = retain
            .as_array()
            .ok_or_else(|| PatchError::Malformed("$retainKeys must be a list".into()))?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        result.retain(|k, _| retain.contains(&k.as_str()));
    }
    for (key, value) in patch_map {
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            let drop: Vec<&Value> = value
                .as_array()
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            if let Some(Value::Array(list)) = result.get_mut(field) {
                list.retain(|item| !drop.contains(&item));
            }
            continue;
        }
        if key.starts_with('$') {
            continue;
        }
        let field_path = join(path, key);
        if value.is_null() {
            result.remove(key);
            continue;
        }
        let current = result.get(key).cloned().unwrap_or(Value::Null);
        let merged = match value {
            Value::Object(_) => strategic_merge(&current, value, keys, &field_path)?,
            Value::Array(items) => merge_list(&current, items, keys, &field_path)?,
            other => other.clone(),
        };
        if merged.is_null() {
            result.remove(key);
        } else {
            result.insert(key.clone(), merged);
        }
    }
    // `$setElementOrder/<field>` reorders a merged list after the merge.
    for (key, order) in patch_map {
        if let Some(field) = key.strip_prefix("$setElementOrder/") {
            if let (Some(Value::Array(list)), Some(order)) =
                (result.get_mut(field), order.as_array())
            {
                reorder(list, order, keys(&join(path, field)));
            }
        }
    }
    Ok(Value::Object(result))
}

fn key_of<'a>(item: &'a Value, merge_key: &str) -> Option<&'a Value> {
    item.as_object().and_then(|m| m.get(merge_key))
}

fn merge_list(
    current: &Value,
    items: &[Value],
    keys: MergeKeys,
    path: &str,
) -> Result<Value, PatchError> {
    let Some(merge_key) = keys(path) else {
        // Lists without a merge key are replaced; a `$patch: replace` marker is dropped.
        let items: Vec<Value> = items
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .map(strip_directives)
            .collect();
        return Ok(Value::Array(items));
    };
    if items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        let kept = items
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .map(strip_directives)
            .collect();
        return Ok(Value::Array(kept));
    }
    let mut list: Vec<Value> = current.as_array().cloned().unwrap_or_default();
    for item in items {
        let Some(id) = key_of(item, merge_key).cloned() else {
            return Err(PatchError::Malformed(format!(
                "an element of {path} lacks its merge key {merge_key:?}"
            )));
        };
        let position = list
            .iter()
            .position(|existing| key_of(existing, merge_key) == Some(&id));
        let deleting = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (position, deleting) {
            (Some(i), true) => {
                list.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => list[i] = strategic_merge(&list[i], item, keys, path)?,
            (None, false) => list.push(strip_directives(item)),
        }
    }
    Ok(Value::Array(list))
}

fn reorder(list: &mut [Value], order: &[Value], merge_key: Option<&str>) {
    let rank = |item: &Value| {
        let id = match merge_key {
            Some(k) => key_of(item, k),
            None => Some(item),
        };
        id.and_then(|id| {
            order.iter().position(|o| match merge_key {
                Some(k) => key_of(o, k) == Some(id),
                None => o == id,
            })
        })
        .unwrap_or(usize::MAX)
    };
    list.sort_by_key(|item| rank(item));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn containers_key(path: &str) -> Option<&'static str> {
        (path == "spec.containers").then_some("name")
    }

    #[test]
    fn merge_patch_rfc7386() {
        let target = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        let patch = json!({"a": "z", "c": {"f": null}});
        assert_eq!(
            merge_patch(&target, &patch),
            json!({"a": "z", "c": {"d": "e"}})
        );
        assert_eq!(
            merge_patch(&json!({"a": [1, 2]}), &json!({"a": [3]})),
            json!({"a": [3]})
        );
    }

    #[test]
    fn json_patch_operations() {
        let target = json!({"data": {"a": "1"}, "list": [1, 2]});
        let patch = json!([
            {"op": "add", "path": "/data/b", "value": "2"},
            {"op": "replace", "path": "/data/a", "value": "x"},
            {"op": "remove", "path": "/list/0"},
            {"op": "add", "path": "/list/-", "value": 9},
            {"op": "copy", "from": "/data/b", "path": "/data/c"},
            {"op": "move", "from": "/data/c", "path": "/data/d"},
            {"op": "test", "path": "/data/d", "value": "2"},
            {"op": "add", "path": "/data/with~1slash", "value": "s"},
        ]);
        let out = json_patch(&target, &patch).unwrap();
        assert_eq!(
            out,
            json!({"data": {"a": "x", "b": "2", "d": "2", "with/slash": "s"}, "list": [2, 9]})
        );
    }

    #[test]
    fn json_patch_errors() {
        let target = json!({"a": 1});
        assert!(matches!(
            json_patch(&target, &json!({})),
            Err(PatchError::Malformed(_))
        ));
        assert!(matches!(
            json_patch(
                &target,
                &json!([{"op": "replace", "path": "/b", "value": 1}])
            ),
            Err(PatchError::MissingPath(_))
        ));
        assert!(matches!(
            json_patch(&target, &json!([{"op": "test", "path": "/a", "value": 2}])),
            Err(PatchError::TestFailed(_))
        ));
        assert!(json_patch(&target, &json!([{"op": "nope", "path": "/a"}])).is_err());
    }

    #[test]
    fn json_patch_refuses_array_indexes_with_leading_zeros() {
        // RFC 6901: an array index is `0` or digits without a leading zero; "01" names nothing.
        let target = json!({"list": [1, 2, 3]});
        for op in [
            json!({"op": "replace", "path": "/list/01", "value": 9}),
            json!({"op": "remove", "path": "/list/01"}),
            json!({"op": "add", "path": "/list/01", "value": 9}),
        ] {
            assert!(
                matches!(json_patch(&target, &json!([op])), Err(PatchError::MissingPath(ref p)) if p == "/list/01"),
                "{op}"
            );
        }
        assert_eq!(
            json_patch(
                &target,
                &json!([{"op": "test", "path": "/list/01", "value": 2}])
            ),
            Err(PatchError::TestFailed("/list/01".into()))
        );
        assert_eq!(
            json_patch(
                &target,
                &json!([{"op": "replace", "path": "/list/1", "value": 9}])
            )
            .unwrap(),
            json!({"list": [1, 9, 3]})
        );
    }

    #[test]
    fn doubling_copies_are_refused_before_they_add_up() {
        // 40 doublings of a 1 KiB string would be a terabyte; the 12th passes 3 MiB.
        let target = json!({"data": {"x0": "y".repeat(1024)}});
        let ops: Vec<Value> = (0..40)
            .map(|i| json!({"op": "copy", "from": "/data", "path": format!("/data/x{}", i + 1)}))
            .collect();
        let refused = json_patch(&target, &Value::Array(ops)).unwrap_err();
        assert!(
            matches!(&refused, PatchError::TooLarge(m) if m.contains("operation 11")),
            "{refused:?}"
        );
        assert_eq!(
            refused.to_api().code(),
            axum::http::StatusCode::PAYLOAD_TOO_LARGE
        );
        // Copies under the bound still work.
        let two = json!([{"op": "copy", "from": "/data/x0", "path": "/data/a"},
                         {"op": "copy", "from": "/data/x0", "path": "/data/b"}]);
        let done = json_patch(&target, &two).unwrap();
        assert_eq!(done["data"]["b"], done["data"]["x0"]);
    }

    #[test]
    fn too_many_operations_are_refused_as_kubernetes_refuses_them() {
        let ops: Vec<Value> = (0..=MAX_JSON_PATCH_OPERATIONS)
            .map(|_| json!({"op": "test", "path": "/a", "value": 1}))
            .collect();
        assert_eq!(
            json_patch(&json!({"a": 1}), &Value::Array(ops)),
            Err(PatchError::TooLarge(
                "The allowed maximum operations in a JSON patch is 10000, got 10001".into()
            ))
        );
    }

    #[test]
    fn a_failing_operation_is_named_by_its_index() {
        let target = json!({"a": {"b": 1}});
        let patch = json!([{"op": "add", "path": "/c", "value": 2},
                           {"op": "move", "from": "/a", "path": "/a/x"}]);
        let e = json_patch(&target, &patch).unwrap_err();
        assert!(
            matches!(&e, PatchError::Malformed(m) if m.starts_with("operation '/1' failed at path '/a/x'")),
            "{e:?}"
        );
    }

    #[test]
    fn a_failed_copy_or_move_names_its_from_path() {
        let target = json!({"a": 1});
        for op in ["copy", "move"] {
            assert_eq!(
                json_patch(
                    &target,
                    &json!([{"op": op, "from": "/missing", "path": "/b"}])
                ),
                Err(PatchError::MissingPath("/missing".into())),
                "{op}"
            );
        }
    }

    #[test]
    fn strategic_merge_maps_like_merge_patch() {
        let target = json!({"data": {"a": "1", "b": "2"}, "metadata": {"name": "x"}});
        let patch = json!({"data": {"a": "9", "b": null, "c": "3"}});
        let out = apply(PatchKind::StrategicMerge, &target, &patch, no_merge_keys).unwrap();
        assert_eq!(
            out,
            json!({"data": {"a": "9", "c": "3"}, "metadata": {"name": "x"}})
        );
    }

    #[test]
    fn strategic_merge_patch_directives_for_maps() {
        let target = json!({"data": {"a": "1", "b": "2"}, "keep": 1});
        let replace = json!({"data": {"$patch": "replace", "z": "26"}});
        assert_eq!(
            strategic_merge(&target, &replace, no_merge_keys, "").unwrap(),
            json!({"data": {"z": "26"}, "keep": 1})
        );
        let delete = json!({"data": {"$patch": "delete"}});
        assert_eq!(
            strategic_merge(&target, &delete, no_merge_keys, "").unwrap(),
            json!({"keep": 1})
        );
        let retain = json!({"data": {"$retainKeys": ["a"], "a": "5"}});
        assert_eq!(
            strategic_merge(&target, &retain, no_merge_keys, "").unwrap(),
            json!({"data": {"a": "5"}, "keep": 1})
        );
    }

    #[test]
    fn strategic_merge_lists_by_key() {
        let target = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}
        ], "args": ["x", "y"]}});
        let patch = json!({"spec": {
            "containers": [{"name": "b", "image": "b:2"}, {"name": "c", "image": "c:1"}, {"name": "a", "$patch": "delete"}],
            "$setElementOrder/containers": [{"name": "c"}, {"name": "b"}],
            "$deleteFromPrimitiveList/args": ["x"],
        }});
        let out = strategic_merge(&target, &patch, containers_key, "").unwrap();
        assert_eq!(
            out,
            json!({"spec": {"containers": [
            {"name": "c", "image": "c:1"}, {"name": "b", "image": "b:2"}
        ], "args": ["y"]}})
        );
    }

    #[test]
    fn strategic_merge_lists_without_key_replace() {
        let target = json!({"spec": {"finalizers": ["a", "b"]}});
        let patch = json!({"spec": {"finalizers": ["c"]}});
        assert_eq!(
            strategic_merge(&target, &patch, no_merge_keys, "").unwrap(),
            json!({"spec": {"finalizers": ["c"]}})
        );
    }

    #[test]
    fn patch_kinds_from_content_type() {
        assert_eq!(
            PatchKind::from_content_type("application/merge-patch+json"),
            Some(PatchKind::Merge)
        );
        assert_eq!(
            PatchKind::from_content_type("application/strategic-merge-patch+json; charset=utf-8"),
            Some(PatchKind::StrategicMerge)
        );
        assert_eq!(
            PatchKind::from_content_type("application/json-patch+json"),
            Some(PatchKind::Json)
        );
        assert_eq!(PatchKind::from_content_type("text/plain"), None);
    }
}
