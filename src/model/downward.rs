//! The downward API's pure rules, shared by admission and the kubelet: which `fieldPath`s and
//! `resource`s env `fieldRef`/`resourceFieldRef` and downwardAPI volume items may name (as
//! Kubernetes' validation has them), how a whole labels/annotations map is written to a file
//! (Kubernetes' `fieldpath.FormatMap`), and the admission checks of downwardAPI volumes
//! (plain and projected) and env field references. The values themselves are resolved by
//! `kubelet::config`.

use std::collections::BTreeMap;

use serde_json::Value;

/// Where a `fieldRef` is used: Kubernetes offers different fields to env and to volumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldScope {
    Env,
    Volume,
}

/// The plain `fieldPath`s an env `fieldRef` may name (Kubernetes'
/// `validEnvDownwardAPIFieldPathExpressions`, without the IPv6 list forms), besides
/// `metadata.labels['KEY']` and `metadata.annotations['KEY']`.
pub const ENV_FIELD_PATHS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.hostIP",
    "status.podIP",
];
/// The plain `fieldPath`s a downwardAPI volume item may name (Kubernetes'
/// `validVolumeDownwardAPIFieldPathExpressions`), besides the subscripted forms.
pub const VOLUME_FIELD_PATHS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "metadata.labels",
    "metadata.annotations",
];
/// The `resource`s a `resourceFieldRef` may name.
pub const RESOURCE_FIELDS: &[&str] = &[
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
    "requests.cpu",
    "requests.memory",
    "requests.ephemeral-storage",
];

/// Whether `path` is a `fieldPath` Kubernetes offers in `scope`; `Err` says which ones are.
pub fn check_field_path(path: &str, scope: FieldScope) -> Result<(), String> {
    let plain = match scope {
        FieldScope::Env => ENV_FIELD_PATHS,
        FieldScope::Volume => VOLUME_FIELD_PATHS,
    };
    let subscripted = ["metadata.labels['", "metadata.annotations['"]
        .iter()
        .any(|prefix| {
            path.strip_prefix(prefix)
                .and_then(|r| r.strip_suffix("']"))
                .is_some_and(|key| !key.is_empty() && !key.contains('\''))
        });
    if plain.contains(&path) || subscripted {
        return Ok(());
    }
    Err(format!(
        "unsupported fieldPath {path:?}: supported values: {}, metadata.labels['KEY'], metadata.annotations['KEY']",
        plain.join(", ")
    ))
}

/// A whole labels/annotations map as the downward API writes it: `key="value"` lines in key
/// order, values quoted as Go's `%q` does, no newline after the last (Kubernetes'
/// `fieldpath.FormatMap`).
pub fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Go's `strconv.Quote`: a double-quoted string with `"`, `\\` and control characters escaped
/// (`\n`, `\t`, ..., `\xNN`, `\uNNNN`), printable characters as they are.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A refused field: `(path, message)`, messages as Kubernetes' field errors start.
pub type Problem = (String, String);

fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn not_supported(field: String, value: &str, supported: &[&str]) -> Problem {
    let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
    (
        field,
        format!(
            "Unsupported value: {value:?}: supported values: {}",
            list.join(", ")
        ),
    )
}

/// Kubernetes' message for a file mode out of range.
const MODE_MSG: &str = "must be a number between 0 and 0777 (octal), both inclusive";

fn check_mode(v: &Value, field: String, out: &mut Vec<Problem>) {
    if v.is_null() {
        return;
    }
    if !v.as_i64().is_some_and(|m| (0..=0o777).contains(&m)) {
        out.push((field, format!("Invalid value: {}: {MODE_MSG}", shown(v))));
    }
}

/// A volume item path: relative, no `..` component, not starting with `..`.
fn check_path(v: &Value, field: String, out: &mut Vec<Problem>) {
    let path = v.as_str().unwrap_or_default();
    if path.is_empty() {
        out.push((field, "Required value".into()));
        return;
    }
    let bad = if path.starts_with('/') {
        Some("must be a relative path")
    } else if path.starts_with("..") {
        Some("must not start with '..'")
    } else if path.split('/').any(|c| c == "..") {
        Some("must not contain '..'")
    } else {
        None
    };
    if let Some(detail) = bad {
        out.push((field, format!("Invalid value: {}: {detail}", shown(v))));
    }
}

/// The divisors Kubernetes accepts: `1m` and `1` for CPU, powers of 1000 and 1024 for the rest.
fn check_divisor(resource: &str, divisor: &Value, field: String, out: &mut Vec<Problem>) {
    let text = match divisor {
        Value::Null => return,
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    };
    let (allowed, kind): (&[&str], &str) = if resource.ends_with(".cpu") {
        (&["1m", "1"], "cpu")
    } else {
        (
            &[
                "1", "1k", "1M", "1G", "1T", "1P", "1E", "1Ki", "1Mi", "1Gi", "1Ti", "1Pi", "1Ei",
            ],
            if resource.ends_with(".memory") {
                "memory"
            } else {
                "local ephemeral storage"
            },
        )
    };
    if !allowed.contains(&text.as_str()) {
        out.push((
            field,
            format!(
                "Invalid value: {text:?}: only divisor's values {} are supported with the {kind} resource",
                allowed.join(", ")
            ),
        ));
    }
}

fn check_field_ref(r: &Value, field: String, scope: FieldScope, out: &mut Vec<Problem>) {
    if let Some(v) = r["apiVersion"].as_str().filter(|v| !v.is_empty()) {
        if v != "v1" {
            out.push(not_supported(format!("{field}.apiVersion"), v, &["v1"]));
        }
    }
    match r["fieldPath"].as_str().unwrap_or_default() {
        "" => out.push((format!("{field}.fieldPath"), "Required value".into())),
        path => {
            if check_field_path(path, scope).is_err() {
                let plain = match scope {
                    FieldScope::Env => ENV_FIELD_PATHS,
                    FieldScope::Volume => VOLUME_FIELD_PATHS,
                };
                let mut supported = plain.to_vec();
                supported.extend(["metadata.labels['KEY']", "metadata.annotations['KEY']"]);
                out.push(not_supported(
                    format!("{field}.fieldPath"),
                    path,
                    &supported,
                ));
            }
        }
    }
}

fn check_resource_ref(
    r: &Value,
    field: String,
    containers: Option<&BTreeMap<String, ()>>,
    out: &mut Vec<Problem>,
) {
    if let Some(names) = containers {
        match r["containerName"].as_str().unwrap_or_default() {
            "" => out.push((format!("{field}.containerName"), "Required value".into())),
            name if !names.contains_key(name) => out.push((
                format!("{field}.containerName"),
                format!("Invalid value: {name:?}: must name one of the pod's containers"),
            )),
            _ => {}
        }
    }
    match r["resource"].as_str().unwrap_or_default() {
        "" => out.push((format!("{field}.resource"), "Required value".into())),
        res if !RESOURCE_FIELDS.contains(&res) => out.push(not_supported(
            format!("{field}.resource"),
            res,
            RESOURCE_FIELDS,
        )),
        res => check_divisor(res, &r["divisor"], format!("{field}.divisor"), out),
    }
}

/// The items of a downwardAPI volume or projection at `field` (`….downwardAPI`).
fn check_items(d: &Value, field: &str, containers: &BTreeMap<String, ()>, out: &mut Vec<Problem>) {
    let mut paths = std::collections::BTreeSet::new();
    for (i, item) in d["items"].as_array().into_iter().flatten().enumerate() {
        let ipath = format!("{field}.items[{i}]");
        check_path(&item["path"], format!("{ipath}.path"), out);
        if let Some(p) = item["path"].as_str() {
            if !p.is_empty() && !paths.insert(p.to_string()) {
                out.push((format!("{ipath}.path"), format!("Duplicate value: {p:?}")));
            }
        }
        match (item["fieldRef"].is_null(), item["resourceFieldRef"].is_null()) {
            (false, false) => out.push((
                ipath.clone(),
                "Invalid value: \"resource\": fieldRef and resourceFieldRef can not be specified simultaneously".into(),
            )),
            (false, true) => check_field_ref(
                &item["fieldRef"],
                format!("{ipath}.fieldRef"),
                FieldScope::Volume,
                out,
            ),
            (true, false) => check_resource_ref(
                &item["resourceFieldRef"],
                format!("{ipath}.resourceFieldRef"),
                Some(containers),
                out,
            ),
            (true, true) => out.push((
                ipath.clone(),
                "Required value: one of fieldRef and resourceFieldRef is required".into(),
            )),
        }
        check_mode(&item["mode"], format!("{ipath}.mode"), out);
    }
}

/// Admission checks of a pod spec's downward API uses: downwardAPI volumes and `downwardAPI`
/// projections (item paths, field paths, resources and divisors, modes) and the containers'
/// env `fieldRef`/`resourceFieldRef`. `path` is the spec's field path (`spec`, …).
pub fn validate(spec: &Value, path: &str) -> Vec<Problem> {
    let mut out = Vec::new();
    let lists = ["containers", "initContainers"];
    let containers: BTreeMap<String, ()> = lists
        .iter()
        .flat_map(|l| spec[*l].as_array().into_iter().flatten())
        .filter_map(|c| Some((c["name"].as_str()?.to_string(), ())))
        .collect();
    for (i, v) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        let vpath = format!("{path}.volumes[{i}]");
        let d = &v["downwardAPI"];
        if !d.is_null() {
            let field = format!("{vpath}.downwardAPI");
            check_mode(&d["defaultMode"], format!("{field}.defaultMode"), &mut out);
            check_items(d, &field, &containers, &mut out);
        }
        let sources = v["projected"]["sources"].as_array();
        for (j, s) in sources.into_iter().flatten().enumerate() {
            if !s["downwardAPI"].is_null() {
                let field = format!("{vpath}.projected.sources[{j}].downwardAPI");
                check_items(&s["downwardAPI"], &field, &containers, &mut out);
            }
        }
    }
    for list in lists {
        for (i, c) in spec[list].as_array().into_iter().flatten().enumerate() {
            for (j, e) in c["env"].as_array().into_iter().flatten().enumerate() {
                let from = &e["valueFrom"];
                let epath = format!("{path}.{list}[{i}].env[{j}].valueFrom");
                if !from["fieldRef"].is_null() {
                    check_field_ref(
                        &from["fieldRef"],
                        format!("{epath}.fieldRef"),
                        FieldScope::Env,
                        &mut out,
                    );
                }
                if !from["resourceFieldRef"].is_null() {
                    let r = &from["resourceFieldRef"];
                    // In env, an empty containerName is the container itself.
                    let own = r["containerName"].as_str().is_none_or(str::is_empty);
                    let scope = (!own).then_some(&containers);
                    check_resource_ref(r, format!("{epath}.resourceFieldRef"), scope, &mut out);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(spec: Value) -> Vec<String> {
        validate(&spec, "spec")
            .into_iter()
            .map(|(f, _)| f)
            .collect()
    }

    #[test]
    fn good_specs_pass() {
        let spec = json!({"containers": [{"name": "c", "env": [
                {"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "M", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}}]}],
            "volumes": [{"name": "v", "downwardAPI": {"defaultMode": 0o644, "items": [
                {"path": "labels", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.labels"}},
                {"path": "a/b", "fieldRef": {"fieldPath": "metadata.annotations['x.io/y']"}, "mode": 0o400},
                {"path": "cpu", "resourceFieldRef": {"containerName": "c", "resource": "requests.cpu", "divisor": "1m"}}]}},
                {"name": "p", "projected": {"sources": [{"downwardAPI": {"items": [
                {"path": "n", "fieldRef": {"fieldPath": "metadata.name"}}]}}]}}]});
        assert_eq!(validate(&spec, "spec"), vec![]);
    }

    #[test]
    fn bad_items_are_named() {
        let spec = json!({"containers": [{"name": "c", "env": [
                {"name": "L", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels"}}},
                {"name": "R", "valueFrom": {"resourceFieldRef": {"resource": "limits.gpu"}}}]}],
            "volumes": [{"name": "v", "downwardAPI": {"defaultMode": 0o1777, "items": [
                {"path": "x", "fieldRef": {"fieldPath": "spec.nodeName"}},
                {"path": "../up", "fieldRef": {"fieldPath": "metadata.name"}},
                {"path": "both", "fieldRef": {"fieldPath": "metadata.name"},
                    "resourceFieldRef": {"containerName": "c", "resource": "limits.cpu"}},
                {"path": "none"},
                {"path": "r", "resourceFieldRef": {"resource": "limits.cpu", "divisor": "2m"}},
                {"path": "x", "fieldRef": {"apiVersion": "v2", "fieldPath": "metadata.uid"}, "mode": -1}]}},
                {"name": "p", "projected": {"sources": [{"downwardAPI": {"items": [
                {"path": "/abs", "fieldRef": {"fieldPath": "status.podIP"}}]}}]}}]});
        assert_eq!(
            fields(spec),
            [
                "spec.volumes[0].downwardAPI.defaultMode",
                "spec.volumes[0].downwardAPI.items[0].fieldRef.fieldPath",
                "spec.volumes[0].downwardAPI.items[1].path",
                "spec.volumes[0].downwardAPI.items[2]",
                "spec.volumes[0].downwardAPI.items[3]",
                "spec.volumes[0].downwardAPI.items[4].resourceFieldRef.containerName",
                "spec.volumes[0].downwardAPI.items[4].resourceFieldRef.divisor",
                "spec.volumes[0].downwardAPI.items[5].path",
                "spec.volumes[0].downwardAPI.items[5].fieldRef.apiVersion",
                "spec.volumes[0].downwardAPI.items[5].mode",
                "spec.volumes[1].projected.sources[0].downwardAPI.items[0].path",
                "spec.volumes[1].projected.sources[0].downwardAPI.items[0].fieldRef.fieldPath",
                "spec.containers[0].env[0].valueFrom.fieldRef.fieldPath",
                "spec.containers[0].env[1].valueFrom.resourceFieldRef.resource",
            ]
        );
    }

    #[test]
    fn whole_maps_are_sorted_and_quoted() {
        let map = BTreeMap::from([
            ("b".to_string(), "two\n".to_string()),
            ("a".to_string(), "\"one\"".to_string()),
        ]);
        assert_eq!(format_map(Some(&map)), "a=\"\\\"one\\\"\"\nb=\"two\\n\"");
    }
}
