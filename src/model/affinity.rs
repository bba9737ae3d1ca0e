//! Admission checks of a pod spec's scheduling constraints, as Kubernetes' API server validates
//! them, plus what shoal cannot honour refused by name (never accepted and ignored):
//! `affinity` (node affinity, pod affinity and anti-affinity, required and preferred) and
//! `topologySpreadConstraints`. The scheduler (`sched::podspec`) parses what passes.

use std::collections::BTreeSet;

use serde_json::Value;

/// Most terms, requirements or values checked in one list (bounds user input; the scheduler
/// reads no more either).
const MAX_ITEMS: usize = 256;

/// A refused field: `(path, message)`; the message starts as Kubernetes' field errors do
/// (`Required value`, `Invalid value: …`, `Unsupported value: …`, `Forbidden: …`,
/// `Duplicate value: …`).
pub type Problem = (String, String);

fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn required(out: &mut Vec<Problem>, field: String, detail: &str) {
    let message = if detail.is_empty() {
        "Required value".to_string()
    } else {
        format!("Required value: {detail}")
    };
    out.push((field, message));
}

fn invalid(out: &mut Vec<Problem>, field: String, value: &Value, detail: &str) {
    out.push((field, format!("Invalid value: {}: {detail}", shown(value))));
}

fn items(v: &Value) -> impl Iterator<Item = (usize, &Value)> {
    v.as_array()
        .into_iter()
        .flatten()
        .take(MAX_ITEMS)
        .enumerate()
}

/// Which requirement list is being checked.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `metav1.LabelSelector.matchExpressions`: In, NotIn, Exists, DoesNotExist.
    Label,
    /// A node selector term's `matchExpressions`: those and Gt, Lt.
    NodeLabel,
    /// A node selector term's `matchFields`: `metadata.name` with In / NotIn, one value.
    NodeField,
}

fn requirement(e: &Value, path: &str, kind: Kind, out: &mut Vec<Problem>) {
    if !e.is_object() {
        invalid(out, path.to_string(), e, "must be an object");
        return;
    }
    let key = e["key"].as_str().unwrap_or_default();
    if key.is_empty() {
        required(out, format!("{path}.key"), "");
    } else if kind == Kind::NodeField && key != "metadata.name" {
        out.push((
            format!("{path}.key"),
            format!("Unsupported value: {key:?}: supported values: \"metadata.name\""),
        ));
    }
    let values = &e["values"];
    let count = values.as_array().map_or(0, Vec::len);
    if !values.is_null() && !values.is_array() {
        invalid(out, format!("{path}.values"), values, "must be a list");
    }
    for (i, v) in items(values) {
        if !v.is_string() {
            invalid(out, format!("{path}.values[{i}]"), v, "must be a string");
        }
    }
    let operator = &e["operator"];
    match operator.as_str().unwrap_or_default() {
        "" => required(out, format!("{path}.operator"), ""),
        "In" | "NotIn" => {
            if count == 0 {
                required(
                    out,
                    format!("{path}.values"),
                    "must be specified when `operator` is 'In' or 'NotIn'",
                );
            } else if kind == Kind::NodeField && count != 1 {
                invalid(
                    out,
                    format!("{path}.values"),
                    values,
                    "must be only one value when `operator` is 'In' or 'NotIn' for node field selector",
                );
            }
        }
        "Exists" | "DoesNotExist" if kind != Kind::NodeField => {
            if count > 0 {
                out.push((
                    format!("{path}.values"),
                    "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
                        .into(),
                ));
            }
        }
        "Gt" | "Lt" if kind == Kind::NodeLabel => {
            if count != 1 {
                required(
                    out,
                    format!("{path}.values"),
                    "must be specified single value when `operator` is 'Lt' or 'Gt'",
                );
            } else if values[0]
                .as_str()
                .and_then(|v| v.parse::<i64>().ok())
                .is_none()
            {
                invalid(
                    out,
                    format!("{path}.values[0]"),
                    &values[0],
                    "must be an integer when `operator` is 'Lt' or 'Gt'",
                );
            }
        }
        _ => invalid(
            out,
            format!("{path}.operator"),
            operator,
            "not a valid selector operator",
        ),
    }
}

/// A `metav1.LabelSelector` (null allowed: it selects nothing).
pub fn label_selector(sel: &Value, path: &str, out: &mut Vec<Problem>) {
    if sel.is_null() {
        return;
    }
    if !sel.is_object() {
        invalid(out, path.to_string(), sel, "must be an object");
        return;
    }
    if let Some(labels) = sel["matchLabels"].as_object() {
        for (k, v) in labels.iter().take(MAX_ITEMS) {
            if !v.is_string() {
                invalid(
                    out,
                    format!("{path}.matchLabels[{k}]"),
                    v,
                    "must be a string",
                );
            }
        }
    }
    for (i, e) in items(&sel["matchExpressions"]) {
        requirement(
            e,
            &format!("{path}.matchExpressions[{i}]"),
            Kind::Label,
            out,
        );
    }
}

/// A node selector term (`matchExpressions` on labels, `matchFields` on `metadata.name`).
fn node_selector_term(term: &Value, path: &str, out: &mut Vec<Problem>) {
    for (i, e) in items(&term["matchExpressions"]) {
        requirement(
            e,
            &format!("{path}.matchExpressions[{i}]"),
            Kind::NodeLabel,
            out,
        );
    }
    for (i, e) in items(&term["matchFields"]) {
        requirement(e, &format!("{path}.matchFields[{i}]"), Kind::NodeField, out);
    }
}

/// A preferred term's `weight`: 1–100.
fn weight(t: &Value, path: &str, out: &mut Vec<Problem>) {
    match t["weight"].as_i64() {
        Some(w) if (1..=100).contains(&w) => {}
        None if t["weight"].is_null() => required(out, format!("{path}.weight"), ""),
        _ => invalid(
            out,
            format!("{path}.weight"),
            &t["weight"],
            "must be in the range 1-100",
        ),
    }
}

/// `matchLabelKeys` / `mismatchLabelKeys`: label keys, none in both lists, none already in
/// the selector's expressions, and only with a selector.
fn label_keys(t: &Value, path: &str, lists: &[&str], out: &mut Vec<Problem>) {
    let in_selector: BTreeSet<&str> = items(&t["labelSelector"]["matchExpressions"])
        .filter_map(|(_, e)| e["key"].as_str())
        .collect();
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    for list in lists {
        let keys = &t[*list];
        if keys.as_array().is_none_or(|a| a.is_empty()) {
            continue;
        }
        if t["labelSelector"].is_null() {
            out.push((
                format!("{path}.{list}"),
                "Forbidden: must not be specified when labelSelector is not set".into(),
            ));
        }
        for (i, k) in items(keys) {
            let field = format!("{path}.{list}[{i}]");
            match k.as_str().unwrap_or_default() {
                "" => invalid(out, field, k, "must be a non-empty label key"),
                key if in_selector.contains(key) => invalid(
                    out,
                    field,
                    k,
                    "exists in both matchLabelKeys and labelSelector",
                ),
                key if !seen.insert(key) => out.push((field, format!("Duplicate value: {key:?}"))),
                _ => {}
            }
        }
    }
}

/// A pod (anti-)affinity term. Only an empty `namespaceSelector` (every namespace) is
/// supported: shoal's scheduler does not read namespaces' labels.
fn pod_affinity_term(t: &Value, path: &str, out: &mut Vec<Problem>) {
    if t["topologyKey"].as_str().unwrap_or_default().is_empty() {
        required(out, format!("{path}.topologyKey"), "can not be empty");
    }
    label_selector(&t["labelSelector"], &format!("{path}.labelSelector"), out);
    for (i, ns) in items(&t["namespaces"]) {
        if ns
            .as_str()
            .is_none_or(|n| !crate::model::is_dns1123_label(n))
        {
            invalid(
                out,
                format!("{path}.namespaces[{i}]"),
                ns,
                "must be a namespace name",
            );
        }
    }
    let ns_selector = &t["namespaceSelector"];
    let every = ns_selector.as_object().is_some_and(|m| {
        m.values().all(|v| {
            v.is_null()
                || v.as_object().is_some_and(|o| o.is_empty())
                || v.as_array().is_some_and(|a| a.is_empty())
        })
    });
    if !ns_selector.is_null() && !every {
        invalid(
            out,
            format!("{path}.namespaceSelector"),
            ns_selector,
            "shoal supports only an empty namespaceSelector (every namespace); list the namespaces in `namespaces` instead",
        );
    }
    label_keys(t, path, &["matchLabelKeys", "mismatchLabelKeys"], out);
}

fn node_affinity(na: &Value, path: &str, out: &mut Vec<Problem>) {
    let req = &na["requiredDuringSchedulingIgnoredDuringExecution"];
    if !req.is_null() {
        let rpath = format!("{path}.requiredDuringSchedulingIgnoredDuringExecution");
        let terms = &req["nodeSelectorTerms"];
        if terms.as_array().is_none_or(|t| t.is_empty()) {
            required(
                out,
                format!("{rpath}.nodeSelectorTerms"),
                "must have at least one node selector term",
            );
        }
        for (i, term) in items(terms) {
            node_selector_term(term, &format!("{rpath}.nodeSelectorTerms[{i}]"), out);
        }
    }
    let ppath = format!("{path}.preferredDuringSchedulingIgnoredDuringExecution");
    for (i, t) in items(&na["preferredDuringSchedulingIgnoredDuringExecution"]) {
        let tpath = format!("{ppath}[{i}]");
        weight(t, &tpath, out);
        if t["preference"].is_null() {
            required(out, format!("{tpath}.preference"), "");
        }
        node_selector_term(&t["preference"], &format!("{tpath}.preference"), out);
    }
}

fn pod_affinity(pa: &Value, path: &str, out: &mut Vec<Problem>) {
    let rpath = format!("{path}.requiredDuringSchedulingIgnoredDuringExecution");
    for (i, t) in items(&pa["requiredDuringSchedulingIgnoredDuringExecution"]) {
        pod_affinity_term(t, &format!("{rpath}[{i}]"), out);
    }
    let ppath = format!("{path}.preferredDuringSchedulingIgnoredDuringExecution");
    for (i, t) in items(&pa["preferredDuringSchedulingIgnoredDuringExecution"]) {
        let tpath = format!("{ppath}[{i}]");
        weight(t, &tpath, out);
        if t["podAffinityTerm"].is_null() {
            required(out, format!("{tpath}.podAffinityTerm"), "");
        } else {
            pod_affinity_term(
                &t["podAffinityTerm"],
                &format!("{tpath}.podAffinityTerm"),
                out,
            );
        }
    }
}

fn policy(c: &Value, field: &str, path: &str, out: &mut Vec<Problem>) {
    if let Some(p) = c[field].as_str() {
        if p != "Honor" && p != "Ignore" {
            out.push((
                format!("{path}.{field}"),
                format!("Unsupported value: {p:?}: supported values: \"Honor\", \"Ignore\""),
            ));
        }
    }
}

fn spread_constraints(list: &Value, path: &str, out: &mut Vec<Problem>) {
    let mut pairs: BTreeSet<(&str, &str)> = BTreeSet::new();
    for (i, c) in items(list) {
        let cpath = format!("{path}[{i}]");
        match c["maxSkew"].as_i64() {
            Some(s) if (1..=i64::from(i32::MAX)).contains(&s) => {}
            None if c["maxSkew"].is_null() => required(out, format!("{cpath}.maxSkew"), ""),
            _ => invalid(
                out,
                format!("{cpath}.maxSkew"),
                &c["maxSkew"],
                "must be greater than zero",
            ),
        }
        let key = c["topologyKey"].as_str().unwrap_or_default();
        if key.is_empty() {
            required(out, format!("{cpath}.topologyKey"), "can not be empty");
        }
        let when = c["whenUnsatisfiable"].as_str().unwrap_or_default();
        match when {
            "" => required(out, format!("{cpath}.whenUnsatisfiable"), ""),
            "DoNotSchedule" | "ScheduleAnyway" => {}
            other => out.push((
                format!("{cpath}.whenUnsatisfiable"),
                format!(
                    "Unsupported value: {other:?}: supported values: \"DoNotSchedule\", \"ScheduleAnyway\""
                ),
            )),
        }
        if !key.is_empty() && !when.is_empty() && !pairs.insert((key, when)) {
            out.push((
                format!("{cpath}.{{topologyKey, whenUnsatisfiable}}"),
                format!("Duplicate value: \"{{{key}, {when}}}\""),
            ));
        }
        let min = &c["minDomains"];
        if !min.is_null() {
            match min.as_i64() {
                Some(m) if (1..=i64::from(i32::MAX)).contains(&m) => {
                    if when == "ScheduleAnyway" {
                        invalid(
                            out,
                            format!("{cpath}.minDomains"),
                            min,
                            "can only use minDomains if whenUnsatisfiable=DoNotSchedule, not ScheduleAnyway",
                        );
                    }
                }
                _ => invalid(
                    out,
                    format!("{cpath}.minDomains"),
                    min,
                    "must be greater than zero",
                ),
            }
        }
        policy(c, "nodeAffinityPolicy", &cpath, out);
        policy(c, "nodeTaintsPolicy", &cpath, out);
        label_selector(&c["labelSelector"], &format!("{cpath}.labelSelector"), out);
        label_keys(c, &cpath, &["matchLabelKeys"], out);
    }
}

/// The problems of `spec.affinity` and `spec.topologySpreadConstraints` of the pod spec at
/// `path`.
pub fn validate(spec: &Value, path: &str) -> Vec<Problem> {
    let mut out = Vec::new();
    let affinity = &spec["affinity"];
    let apath = format!("{path}.affinity");
    if !affinity["nodeAffinity"].is_null() {
        node_affinity(
            &affinity["nodeAffinity"],
            &format!("{apath}.nodeAffinity"),
            &mut out,
        );
    }
    for kind in ["podAffinity", "podAntiAffinity"] {
        if !affinity[kind].is_null() {
            pod_affinity(&affinity[kind], &format!("{apath}.{kind}"), &mut out);
        }
    }
    spread_constraints(
        &spec["topologySpreadConstraints"],
        &format!("{path}.topologySpreadConstraints"),
        &mut out,
    );
    out
}

/// What a pod spec whose pods are bound to their node by their controller (a DaemonSet's)
/// may not ask: hard constraints between pods, which moving a pod could never meet.
pub fn refused_when_pinned(spec: &Value, path: &str) -> Vec<Problem> {
    let mut out = Vec::new();
    for kind in ["podAffinity", "podAntiAffinity"] {
        let hard = &spec["affinity"][kind]["requiredDuringSchedulingIgnoredDuringExecution"];
        if hard.as_array().is_some_and(|a| !a.is_empty()) {
            out.push((
                format!("{path}.affinity.{kind}.requiredDuringSchedulingIgnoredDuringExecution"),
                "Forbidden: not supported for DaemonSet pods by shoal (each is bound to its node; use nodeSelector or node affinity)".into(),
            ));
        }
    }
    if items(&spec["topologySpreadConstraints"])
        .any(|(_, c)| c["whenUnsatisfiable"] == "DoNotSchedule")
    {
        out.push((
            format!("{path}.topologySpreadConstraints"),
            "Forbidden: whenUnsatisfiable DoNotSchedule is not supported for DaemonSet pods by shoal (each is bound to its node)".into(),
        ));
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
            .map(|(f, m)| format!("{f}: {m}"))
            .collect()
    }

    #[test]
    fn valid_constraints_pass() {
        let spec = json!({
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]},
                                              {"key": "cores", "operator": "Gt", "values": ["4"]}],
                         "matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["n9"]}]}]},
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {"weight": 10, "preference": {"matchExpressions": [{"key": "zone", "operator": "Exists"}]}}],
                },
                "podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 100, "podAffinityTerm": {"topologyKey": "zone",
                        "labelSelector": {"matchLabels": {"app": "db"}}, "namespaceSelector": {}}}]},
                "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "web"}},
                     "matchLabelKeys": ["pod-template-hash"]}]},
            },
            "topologySpreadConstraints": [
                {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule", "minDomains": 3,
                 "labelSelector": {"matchLabels": {"app": "web"}}, "nodeTaintsPolicy": "Honor"},
                {"maxSkew": 2, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway"},
            ],
        });
        assert_eq!(fields(spec), Vec::<String>::new());
    }

    #[test]
    fn what_kubernetes_refuses_or_shoal_cannot_honour_is_named() {
        let spec = json!({
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "disk", "operator": "Near", "values": ["ssd"]},
                                              {"key": "cores", "operator": "Gt", "values": ["four"]},
                                              {"key": "x", "operator": "In"}],
                         "matchFields": [{"key": "metadata.uid", "operator": "In", "values": ["a"]}]}]},
                    "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 0, "preference": {}}],
                },
                "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 5, "podAffinityTerm": {"labelSelector": {"matchExpressions": [
                        {"key": "app", "operator": "Exists", "values": ["a"]}]},
                        "namespaceSelector": {"matchLabels": {"team": "a"}}}}]},
            },
            "topologySpreadConstraints": [
                {"maxSkew": 0, "topologyKey": "zone", "whenUnsatisfiable": "Sometimes", "nodeAffinityPolicy": "Maybe"},
                {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway", "minDomains": 2},
                {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"},
            ],
        });
        let na = "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0]";
        let pa = "spec.affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].podAffinityTerm";
        let ts = "spec.topologySpreadConstraints";
        assert_eq!(
            fields(spec),
            vec![
                format!("{na}.matchExpressions[0].operator: Invalid value: \"Near\": not a valid selector operator"),
                format!("{na}.matchExpressions[1].values[0]: Invalid value: \"four\": must be an integer when `operator` is 'Lt' or 'Gt'"),
                format!("{na}.matchExpressions[2].values: Required value: must be specified when `operator` is 'In' or 'NotIn'"),
                format!("{na}.matchFields[0].key: Unsupported value: \"metadata.uid\": supported values: \"metadata.name\""),
                "spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight: Invalid value: 0: must be in the range 1-100".to_string(),
                format!("{pa}.topologyKey: Required value: can not be empty"),
                format!("{pa}.labelSelector.matchExpressions[0].values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"),
                format!("{pa}.namespaceSelector: Invalid value: {{\"matchLabels\":{{\"team\":\"a\"}}}}: shoal supports only an empty namespaceSelector (every namespace); list the namespaces in `namespaces` instead"),
                format!("{ts}[0].maxSkew: Invalid value: 0: must be greater than zero"),
                format!("{ts}[0].whenUnsatisfiable: Unsupported value: \"Sometimes\": supported values: \"DoNotSchedule\", \"ScheduleAnyway\""),
                format!("{ts}[0].nodeAffinityPolicy: Unsupported value: \"Maybe\": supported values: \"Honor\", \"Ignore\""),
                format!("{ts}[1].minDomains: Invalid value: 2: can only use minDomains if whenUnsatisfiable=DoNotSchedule, not ScheduleAnyway"),
                format!("{ts}[2].{{topologyKey, whenUnsatisfiable}}: Duplicate value: \"{{zone, ScheduleAnyway}}\""),
            ]
        );
    }

    #[test]
    fn daemonset_pods_refuse_hard_constraints_between_pods() {
        let spec = json!({
            "affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"topologyKey": "zone", "labelSelector": {}}]}},
            "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}],
        });
        assert!(validate(&spec, "spec").is_empty());
        let refused: Vec<String> = refused_when_pinned(&spec, "spec")
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(
            refused,
            [
                "spec.affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution",
                "spec.topologySpreadConstraints"
            ]
        );
    }
}
