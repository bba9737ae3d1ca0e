//! ControllerRevisions as users may write them (`docs/api.md`, "ControllerRevisions"): as in
//! Kubernetes (`ValidateControllerRevision`), `data` is required, `revision` is not negative,
//! and `data` never changes once written. The StatefulSet and DaemonSet controllers write
//! their own (`sched::revisions`). Pure.

use serde_json::Value;

use super::resources::ResourceInfo;
use super::status::Cause;

pub fn is_revision(info: &ResourceInfo) -> bool {
    info.group == "apps" && info.kind == "ControllerRevision"
}

/// Semantic checks of a ControllerRevision; `old`: the stored one on update.
pub fn validate(revision: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    if revision["data"].is_null() {
        causes.push(Cause {
            reason: "FieldValueRequired".into(),
            field: "data".into(),
            message: "Required value".into(),
        });
    }
    if let Some(n) = revision["revision"].as_i64().filter(|n| *n < 0) {
        causes.push(Cause {
            reason: "FieldValueInvalid".into(),
            field: "revision".into(),
            message: format!("Invalid value: {n}: must be greater than or equal to 0"),
        });
    }
    if old.is_some_and(|old| old["data"] != revision["data"]) {
        causes.push(Cause {
            reason: "FieldValueInvalid".into(),
            field: "data".into(),
            message: "Invalid value: field is immutable".into(),
        });
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn data_is_required_and_immutable_and_revision_not_negative() {
        let fields = |c: Vec<Cause>| c.into_iter().map(|c| c.field).collect::<Vec<_>>();
        let ok = json!({"data": {"spec": {}}, "revision": 1});
        assert!(validate(&ok, None).is_empty());
        assert!(validate(&json!({"data": {"spec": {}}, "revision": 2}), Some(&ok)).is_empty());
        assert_eq!(
            fields(validate(&json!({"revision": -1}), None)),
            ["data", "revision"]
        );
        assert_eq!(
            fields(validate(
                &json!({"data": {"x": 1}, "revision": 1}),
                Some(&ok)
            )),
            ["data"]
        );
    }
}
