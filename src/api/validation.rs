//! Validation of incoming objects: `apiVersion`/`kind` against the URL, field types and
//! unknown fields per `fieldValidation` (Strict, Warn, Ignore), object names, and the
//! Secret rules (`stringData` folded into `data`, keys, base64, sizes, docker config types).

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::{json, Value};

use super::resources::{self, NameRule, ResourceInfo};
use super::status::{ApiError, Cause};
use super::typed;
use crate::model::secret;
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

/// Checks field types and unknown fields (pruned), then the kind's own rules (Secrets:
/// [`admit_secret`]); returns warnings for `Warn`.
pub fn validate_fields(
    info: &ResourceInfo,
    object: &mut Value,
    query: &Query,
) -> Result<Vec<String>, ApiError> {
    let mode = field_validation(query)?;
    let report = match info.workload {
        Some(workload) => typed::check(workload, object),
        None if info.group.is_empty() && info.kind == "Service" => typed::check_service(object),
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
    let warnings = match mode {
        FieldValidation::Strict if !unknown.is_empty() => {
            return Err(ApiError::BadRequest(format!(
                "{prefix}: strict decoding error: {}",
                unknown.join(", ")
            )))
        }
        FieldValidation::Warn => unknown,
        _ => Vec::new(),
    };
    if info.group.is_empty() && info.kind == "Secret" {
        admit_secret(info, object)?;
    }
    Ok(warnings)
}

/// What Kubernetes shows instead of a Secret's value in an error.
const REDACTED: &str = "\"<secret contents redacted>\"";

fn cause(reason: &str, field: String, message: String) -> Cause {
    Cause {
        reason: reason.into(),
        field,
        message,
    }
}

/// Keys a Secret of a built-in type must hold (Kubernetes' `ValidateSecret`).
fn required_keys(secret_type: &str) -> &'static [&'static str] {
    match secret_type {
        secret::TYPE_DOCKER_CONFIG_JSON => &[secret::KEY_DOCKER_CONFIG_JSON],
        secret::TYPE_DOCKERCFG => &[secret::KEY_DOCKERCFG],
        "kubernetes.io/ssh-auth" => &["ssh-privatekey"],
        "kubernetes.io/tls" => &["tls.crt", "tls.key"],
        _ => &[],
    }
}

/// Secrets as Kubernetes stores them, on create, update and patch: `stringData` is merged into
/// `data` (base64, its values winning) and dropped, `type` defaults to `Opaque`; then every
/// key must be a valid config key, every value valid base64, the total at most 1 MiB, and the
/// docker config types must hold their key with a JSON config (`auths` for
/// `kubernetes.io/dockerconfigjson`). Errors are 422s naming the field, never the value.
pub fn admit_secret(info: &ResourceInfo, object: &mut Value) -> Result<(), ApiError> {
    let Some(map) = object.as_object_mut() else {
        return Ok(());
    };
    if let Some(Value::Object(plain)) = map.remove("stringData") {
        let data = map.entry("data").or_insert_with(|| json!({}));
        if data.is_null() {
            *data = json!({});
        }
        if let Some(data) = data.as_object_mut() {
            for (key, value) in plain {
                let text = value.as_str().unwrap_or_default();
                let encoded = base64::engine::general_purpose::STANDARD.encode(text);
                data.insert(key, json!(encoded));
            }
        }
    }
    let secret_type = match map.get("type") {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        _ => {
            map.insert("type".into(), json!(secret::TYPE_OPAQUE));
            secret::TYPE_OPAQUE.to_string()
        }
    };
    let mut causes = Vec::new();
    let mut decoded = BTreeMap::new();
    let mut total = 0usize;
    for (key, value) in map
        .get("data")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let field = format!("data[{key}]");
        if let Some(message) = secret::config_key_error(key) {
            let message = format!("Invalid value: {key:?}: {message}");
            causes.push(cause("FieldValueInvalid", field.clone(), message));
        }
        match secret::decode_data_value(value.as_str().unwrap_or_default()) {
            Ok(bytes) => {
                total += bytes.len();
                decoded.insert(key.as_str(), bytes);
            }
            Err(e) => causes.push(cause(
                "FieldValueInvalid",
                field,
                format!("Invalid value: {REDACTED}: {e}"),
            )),
        }
    }
    if total > secret::MAX_SECRET_SIZE {
        causes.push(cause(
            "FieldValueTooLong",
            "data".into(),
            format!(
                "Too long: must have at most {} bytes",
                secret::MAX_SECRET_SIZE
            ),
        ));
    }
    for key in required_keys(&secret_type) {
        let field = format!("data[{key}]");
        let present = map["data"].get(*key).is_some();
        match decoded.get(key) {
            _ if !present => {
                causes.push(cause("FieldValueRequired", field, "Required value".into()))
            }
            Some(bytes)
                if [secret::TYPE_DOCKER_CONFIG_JSON, secret::TYPE_DOCKERCFG]
                    .contains(&secret_type.as_str()) =>
            {
                if let Err(e) = secret::docker_config_auths(&secret_type, bytes) {
                    causes.push(cause(
                        "FieldValueInvalid",
                        field,
                        format!("Invalid value: {REDACTED}: {e}"),
                    ));
                }
            }
            _ => {}
        }
    }
    if causes.is_empty() {
        return Ok(());
    }
    let meta = &map["metadata"];
    let name = meta["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .or_else(|| meta["generateName"].as_str())
        .unwrap_or_default();
    Err(ApiError::Invalid {
        kind: info.qualified_kind(),
        name: name.to_string(),
        causes,
    })
}

/// Kubernetes' message for a name that is not an RFC 1123 subdomain.
pub(super) const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
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

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn admit(mut secret: Value) -> Result<Value, Vec<Cause>> {
        let info = resources::by_plural("secrets").unwrap();
        check_type_meta(info, &mut secret).unwrap();
        match validate_fields(info, &mut secret, &Query::new()) {
            Ok(_) => Ok(secret),
            Err(ApiError::Invalid { causes, .. }) => Err(causes),
            Err(other) => panic!("not a 422: {other}"),
        }
    }

    fn fields(causes: &[Cause]) -> Vec<&str> {
        causes.iter().map(|c| c.field.as_str()).collect()
    }

    #[test]
    fn secrets_fold_string_data_and_default_their_type() {
        let secret = admit(json!({
            "metadata": {"name": "s"},
            "data": {"a": b64("old"), "b": b64("keep")},
            "stringData": {"a": "new", "c": "plain"},
        }))
        .unwrap();
        assert_eq!(
            secret["data"],
            json!({"a": b64("new"), "b": b64("keep"), "c": b64("plain")})
        );
        assert!(secret.get("stringData").is_none());
        assert_eq!(secret["type"], "Opaque");
        let only_string = admit(json!({"metadata": {"name": "s"}, "stringData": {"k": "v"}}));
        assert_eq!(only_string.unwrap()["data"], json!({"k": b64("v")}));
        let typed = admit(json!({"metadata": {"name": "s"}, "type": "example.com/custom"}));
        assert_eq!(typed.unwrap()["type"], "example.com/custom");
    }

    #[test]
    fn secret_keys_values_and_docker_configs_are_checked() {
        let causes = admit(json!({
            "metadata": {"name": "s"},
            "data": {"bad/key": b64("x"), "ok": "not base64!", "..dots": b64("y")},
        }))
        .unwrap_err();
        assert_eq!(
            fields(&causes),
            vec!["data[..dots]", "data[bad/key]", "data[ok]"]
        );
        assert!(causes[2].message.contains("<secret contents redacted>"));
        assert!(!causes[2].message.contains("not base64!"));

        let docker = |config: &str| {
            json!({
                "metadata": {"name": "regcred"},
                "type": "kubernetes.io/dockerconfigjson",
                "data": {".dockerconfigjson": b64(config)},
            })
        };
        assert!(admit(docker(r#"{"auths": {"r:5000": {"auth": "dTpw"}}}"#)).is_ok());
        for bad in [r#"{"r:5000": {}}"#, "hunter2 {", r#"{"auths": "x"}"#] {
            let causes = admit(docker(bad)).unwrap_err();
            assert_eq!(fields(&causes), vec!["data[.dockerconfigjson]"], "{bad}");
            assert!(!causes[0].message.contains("hunter2"));
        }
        let missing = admit(
            json!({"metadata": {"name": "r"}, "type": "kubernetes.io/dockerconfigjson",
            "stringData": {"config.json": "{}"}}),
        )
        .unwrap_err();
        assert_eq!(fields(&missing), vec!["data[.dockerconfigjson]"]);
        assert_eq!(missing[0].message, "Required value");
        let legacy = json!({"metadata": {"name": "r"}, "type": "kubernetes.io/dockercfg",
            "stringData": {".dockercfg": r#"{"r:5000": {"auth": "dTpw"}}"#}});
        assert!(admit(legacy).is_ok());
        let tls = admit(
            json!({"metadata": {"name": "t"}, "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": "c"}}),
        )
        .unwrap_err();
        assert_eq!(fields(&tls), vec!["data[tls.key]"]);
        let big = "a".repeat(secret::MAX_SECRET_SIZE + 1);
        let causes =
            admit(json!({"metadata": {"name": "s"}, "stringData": {"big": big}})).unwrap_err();
        assert_eq!(fields(&causes), vec!["data"]);
    }

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
