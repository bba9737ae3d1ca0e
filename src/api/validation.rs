//! Validation of incoming objects: `apiVersion`/`kind` against the URL, field types and
//! unknown fields per `fieldValidation` (Strict, Warn, Ignore), and object names.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::resources::{self, NameRule, ResourceInfo};
use super::status::{ApiError, Cause};
use super::typed;
use crate::model::{is_dns1123_label, is_dns1123_subdomain};

type Query = BTreeMap<String, String>;

/// The body's `apiVersion` and `kind` must name the URL's kind; missing ones are filled in.
pub fn check_type_meta(info: &ResourceInfo, object: &mut Value) -> Result<(), ApiError> {
    let api_version = info.api_version();
    match object["apiVersion"].as_str() {
        None | Some("") => object["apiVersion"] = json!(api_version),
        Some(v) if v == api_version => {}
        Some(v) => {
            return Err(ApiError::BadRequest(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )))
        }
    }
    match object["kind"].as_str() {
        None | Some("") => object["kind"] = json!(info.kind),
        Some(k) if k == info.kind => {}
        Some(k) => {
            return Err(ApiError::BadRequest(format!(
                "{k} in version \"{api_version}\" cannot be handled as a {}: the kind in the data ({k}) does not match the URL ({})",
                info.kind, info.kind
            )))
        }
    }
    if !object["metadata"].is_object() && !object["metadata"].is_null() {
        return Err(ApiError::BadRequest("metadata must be an object".into()));
    }
    if object["metadata"].is_null() {
        object["metadata"] = json!({});
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

fn field_validation(query: &Query) -> Result<FieldValidation, ApiError> {
    match query.get("fieldValidation").map(String::as_str) {
        None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
        Some("Strict") => Ok(FieldValidation::Strict),
        Some("Ignore") => Ok(FieldValidation::Ignore),
        Some(other) => Err(ApiError::BadRequest(format!(
            "fieldValidation must be Ignore, Warn or Strict, not {other:?}"
        ))),
    }
}

/// Checks field types and unknown fields (pruned); returns warnings for `Warn`.
pub fn validate_fields(
    info: &ResourceInfo,
    object: &mut Value,
    query: &Query,
) -> Result<Vec<String>, ApiError> {
    let mode = field_validation(query)?;
    let report = match info.workload {
        Some(workload) => typed::check(workload, object),
        None => resources::check_schema(info, object),
    };
    let prefix = format!(
        "{} in version \"{}\" cannot be handled as a {}",
        info.kind,
        info.api_version(),
        info.kind
    );
    if !report.type_errors.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "{prefix}: {}",
            report.type_errors.join(", ")
        )));
    }
    let unknown: Vec<String> = report
        .unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    match mode {
        FieldValidation::Strict if !unknown.is_empty() => Err(ApiError::BadRequest(format!(
            "{prefix}: strict decoding error: {}",
            unknown.join(", ")
        ))),
        FieldValidation::Warn => Ok(unknown),
        _ => Ok(Vec::new()),
    }
}

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

pub fn validate_name(info: &ResourceInfo, name: &str) -> Result<(), ApiError> {
    if name.is_empty() {
        return Err(ApiError::Invalid {
            kind: info.qualified_kind(),
            name: String::new(),
            causes: vec![Cause {
                reason: "FieldValueRequired".into(),
                field: "metadata.name".into(),
                message: "Required value: name or generateName is required".into(),
            }],
        });
    }
    let (ok, message) = match info.name_rule {
        NameRule::Subdomain => (is_dns1123_subdomain(name), SUBDOMAIN_MSG),
        NameRule::Label => (is_dns1123_label(name), LABEL_MSG),
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            &info.qualified_kind(),
            name,
            "metadata.name",
            name,
            message,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated_per_rule() {
        let cm = resources::by_plural("configmaps").unwrap();
        let ns = resources::by_plural("namespaces").unwrap();
        assert!(validate_name(cm, "a.b-c").is_ok());
        assert!(validate_name(cm, "Bad_Name").is_err());
        assert!(validate_name(cm, "-a").is_err());
        assert!(validate_name(cm, "").is_err());
        assert!(validate_name(ns, "a.b").is_err());
        assert!(validate_name(ns, &"a".repeat(64)).is_err());
        assert!(validate_name(ns, "team-1").is_ok());
    }
}
