//! Services in the API: Kubernetes' defaults and validation of a `v1` Service, ClusterIP and
//! NodePort allocation against the other stored Services (run by the backend under its write
//! lock, so no central allocator is needed), what an update keeps (clusterIP, allocated
//! NodePorts), and the read-only Endpoints and EndpointSlices computed on read from
//! `model::service::endpoints` over pods as served. Pure: objects in, objects or causes out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::status::Cause;
use crate::model::network::NODE_PORT_RANGE;
use crate::model::service::{self, Endpoint, Service, ServiceType};
use crate::model::{is_dns1123_label, is_dns1123_subdomain};

/// `endpointslice.kubernetes.io/managed-by` of the slices shoal computes.
pub const MANAGED_BY: &str = "shoal.io/endpoints";
/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

fn set_default(map: &mut Value, field: &str, default: Value) {
    if map.is_object() && map[field].is_null() {
        map[field] = default;
    }
}

fn is_headless(spec: &Value) -> bool {
    spec["clusterIP"] == "None"
}

/// `spec.type`, typed once: absent is ClusterIP (Kubernetes' default), an unknown one `None`
/// (validation refuses it).
fn service_type(spec: &Value) -> Option<ServiceType> {
    spec["type"]
        .as_str()
        .map_or(Some(ServiceType::ClusterIP), ServiceType::parse)
}

/// Whether `spec.type` carries NodePorts (NodePort, LoadBalancer).
fn has_node_ports(spec: &Value) -> bool {
    service_type(spec).is_some_and(ServiceType::has_node_ports)
}

fn is_external_name(spec: &Value) -> bool {
    service_type(spec) == Some(ServiceType::ExternalName)
}

/// Kubernetes' defaults of a Service (`SetDefaults_Service` and the registry's): type
/// ClusterIP, sessionAffinity None (ClientIP gets a 3 h timeout), per port protocol TCP and
/// targetPort = port, traffic policies Cluster, single-stack IPv4, `status.loadBalancer`.
pub fn default(object: &mut Value) {
    if !object["spec"].is_object() {
        object["spec"] = json!({});
    }
    let spec = &mut object["spec"];
    set_default(spec, "type", json!("ClusterIP"));
    set_default(spec, "sessionAffinity", json!("None"));
    if spec["sessionAffinity"] == "ClientIP" {
        let timeout = spec
            .pointer("/sessionAffinityConfig/clientIP/timeoutSeconds")
            .cloned()
            .filter(|t| !t.is_null())
            .unwrap_or(json!(service::DEFAULT_AFFINITY_TIMEOUT));
        spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": timeout}});
    }
    if let Some(ports) = spec["ports"].as_array_mut() {
        for port in ports.iter_mut().filter(|p| p.is_object()) {
            set_default(port, "protocol", json!("TCP"));
            let unset = match &port["targetPort"] {
                Value::Null => true,
                Value::String(s) => s.is_empty(),
                Value::Number(n) => n.as_u64() == Some(0),
                _ => false,
            };
            if unset {
                port["targetPort"] = port["port"].clone();
            }
        }
    }
    if !is_external_name(spec) {
        set_default(spec, "internalTrafficPolicy", json!("Cluster"));
        set_default(spec, "ipFamilies", json!(["IPv4"]));
        set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
    }
    if has_node_ports(spec) {
        set_default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if let Some(ip) = spec["clusterIP"].as_str().filter(|ip| !ip.is_empty()) {
        spec["clusterIPs"] = json!([ip]);
    }
    if !object["status"].is_object() {
        object["status"] = json!({"loadBalancer": {}});
    }
}

fn cause(reason: &str, field: String, message: String) -> Cause {
    Cause {
        reason: reason.into(),
        field,
        message,
    }
}

fn shown(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn invalid(field: String, value: &Value, detail: &str) -> Cause {
    cause(
        "FieldValueInvalid",
        field,
        format!("Invalid value: {}: {detail}", shown(value)),
    )
}

fn required(field: String) -> Cause {
    cause("FieldValueRequired", field, "Required value".into())
}

fn unsupported(field: String, value: &Value, supported: &[&str]) -> Cause {
    let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
    cause(
        "FieldValueNotSupported",
        field,
        format!(
            "Unsupported value: {}: supported values: {}",
            shown(value),
            list.join(", ")
        ),
    )
}

fn forbidden(field: String, detail: &str) -> Cause {
    cause("FieldValueForbidden", field, format!("Forbidden: {detail}"))
}

const PORT_RANGE_MSG: &str = "must be between 1 and 65535, inclusive";

fn valid_port(v: &Value) -> bool {
    v.as_u64().is_some_and(|n| (1..=65535).contains(&n))
}

/// IANA service names, what a named targetPort must be (Kubernetes' `IsValidPortName`).
fn port_name_error(name: &str) -> Option<&'static str> {
    if name.len() > 15 {
        return Some("must be no more than 15 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Some("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)");
    }
    if name.contains("--") {
        return Some("must not contain consecutive hyphens");
    }
    if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        return Some("must contain at least one letter (a-z)");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Some("must not begin or end with a hyphen");
    }
    None
}

/// A label key: an optional DNS subdomain prefix and a name of at most 63 characters.
fn label_key_ok(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    prefix.is_none_or(is_dns1123_subdomain) && label_value_ok(name) && !name.is_empty()
}

/// A label value: empty, or at most 63 alphanumerics, `-`, `_`, `.`, alphanumeric at both ends.
fn label_value_ok(value: &str) -> bool {
    let b = value.as_bytes();
    value.is_empty()
        || (value.len() <= 63
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric())
}

fn validate_ports(spec: &Value, causes: &mut Vec<Cause>) {
    let ports = spec["ports"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let kind = spec["type"].as_str().unwrap_or_default();
    if ports.is_empty() && !is_headless(spec) && !is_external_name(spec) {
        causes.push(required("spec.ports".into()));
    }
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    let mut node_ports = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let at = |f: &str| format!("spec.ports[{i}].{f}");
        let name = p["name"].as_str().unwrap_or_default();
        if name.is_empty() {
            if ports.len() > 1 {
                causes.push(required(at("name")));
            }
        } else if !is_dns1123_label(name) {
            causes.push(invalid(at("name"), &p["name"], super::admission::LABEL_MSG));
        } else if !names.insert(name.to_string()) {
            causes.push(cause(
                "FieldValueDuplicate",
                at("name"),
                format!("Duplicate value: {name:?}"),
            ));
        }
        if !valid_port(&p["port"]) {
            causes.push(invalid(at("port"), &p["port"], PORT_RANGE_MSG));
        }
        let protocol = p["protocol"].as_str().unwrap_or("TCP");
        if !["SCTP", "TCP", "UDP"].contains(&protocol) {
            causes.push(unsupported(
                at("protocol"),
                &p["protocol"],
                &["SCTP", "TCP", "UDP"],
            ));
        }
        if !numbers.insert((p["port"].as_u64(), protocol.to_string())) {
            causes.push(cause(
                "FieldValueDuplicate",
                format!("spec.ports[{i}]"),
                format!(
                    "Duplicate value: {}",
                    json!({"port": p["port"], "protocol": protocol})
                ),
            ));
        }
        match &p["targetPort"] {
            Value::String(s) if s.parse::<u64>().is_err() => {
                if let Some(why) = port_name_error(s) {
                    causes.push(invalid(at("targetPort"), &p["targetPort"], why));
                }
            }
            Value::String(s) if s.parse::<u64>().is_ok_and(|n| !(1..=65535).contains(&n)) => {
                causes.push(invalid(at("targetPort"), &p["targetPort"], PORT_RANGE_MSG));
            }
            Value::Number(_) if !valid_port(&p["targetPort"]) => {
                causes.push(invalid(at("targetPort"), &p["targetPort"], PORT_RANGE_MSG));
            }
            _ => {}
        }
        let node_port = &p["nodePort"];
        if node_port.is_null() || node_port.as_u64() == Some(0) {
            continue;
        }
        if !has_node_ports(spec) {
            causes.push(forbidden(
                at("nodePort"),
                &format!("may not be used when `type` is '{kind}'"),
            ));
        } else if !node_port
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .is_some_and(|n| NODE_PORT_RANGE.contains(&n))
        {
            causes.push(invalid(
                at("nodePort"),
                node_port,
                &format!(
                    "provided port is not in the valid range. The range of valid ports is {}-{}",
                    NODE_PORT_RANGE.start(),
                    NODE_PORT_RANGE.end()
                ),
            ));
        } else if !node_ports.insert((node_port.as_u64(), protocol.to_string())) {
            causes.push(cause(
                "FieldValueDuplicate",
                at("nodePort"),
                format!("Duplicate value: {node_port}"),
            ));
        }
    }
}

/// Validation that needs no other object (Kubernetes' `ValidateService`, the parts shoal
/// implements): type, ports, selector, clusterIP syntax, session affinity, traffic policies,
/// IPv4 only; on update (`old`), clusterIP and type ExternalName transitions.
pub fn validate(object: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    // Service names become DNS labels (`NAME.NS.svc`): RFC 1035, so they start with a letter.
    let name = &object["metadata"]["name"];
    if name
        .as_str()
        .and_then(|n| n.bytes().next())
        .is_some_and(|b| !b.is_ascii_lowercase())
    {
        causes.push(invalid(
            "metadata.name".into(),
            name,
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')",
        ));
    }
    let spec = &object["spec"];
    let kind = spec["type"].as_str().unwrap_or_default();
    const TYPES: &[&str] = &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
    if !TYPES.contains(&kind) {
        causes.push(unsupported("spec.type".into(), &spec["type"], TYPES));
    }
    validate_ports(spec, &mut causes);
    for (k, v) in spec["selector"].as_object().into_iter().flatten() {
        if !label_key_ok(k) {
            causes.push(invalid(
                "spec.selector".into(),
                &json!(k),
                "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
            ));
        }
        if !v.as_str().is_some_and(label_value_ok) {
            causes.push(invalid(
                "spec.selector".into(),
                v,
                "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
            ));
        }
    }
    let ip = spec["clusterIP"].as_str().unwrap_or_default();
    if is_external_name(spec) {
        if !ip.is_empty() {
            causes.push(forbidden(
                "spec.clusterIP".into(),
                "may not be set for ExternalName services",
            ));
        }
        let name = spec["externalName"].as_str().unwrap_or_default();
        if name.is_empty() {
            causes.push(required("spec.externalName".into()));
        } else if !is_dns1123_subdomain(name.trim_end_matches('.')) {
            causes.push(invalid(
                "spec.externalName".into(),
                &spec["externalName"],
                "must be a valid DNS name",
            ));
        }
    } else if !ip.is_empty() && ip != "None" && ip.parse::<Ipv4Addr>().is_err() {
        let detail = if ip.parse::<std::net::Ipv6Addr>().is_ok() {
            "IPv6 Services are not supported by shoal"
        } else {
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
        };
        causes.push(invalid(
            "spec.clusterIPs[0]".into(),
            &spec["clusterIP"],
            detail,
        ));
    }
    if ip == "None" && has_node_ports(spec) {
        causes.push(invalid(
            "spec.clusterIPs[0]".into(),
            &spec["clusterIP"],
            &format!("may not be set to 'None' for {kind} services"),
        ));
    }
    if let Some(ips) = spec["clusterIPs"].as_array() {
        if ips.len() > 1 {
            causes.push(invalid(
                "spec.clusterIPs".into(),
                &spec["clusterIPs"],
                "shoal supports single-stack IPv4 Services only",
            ));
        } else if ips
            .first()
            .is_some_and(|first| !ip.is_empty() && first != ip)
        {
            causes.push(invalid(
                "spec.clusterIPs".into(),
                &spec["clusterIPs"],
                "element [0] must match clusterIP",
            ));
        }
    }
    for family in spec["ipFamilies"].as_array().into_iter().flatten() {
        if family != "IPv4" {
            causes.push(unsupported("spec.ipFamilies".into(), family, &["IPv4"]));
        }
    }
    let affinity = &spec["sessionAffinity"];
    if !affinity.is_null() && affinity != "None" && affinity != "ClientIP" {
        causes.push(unsupported(
            "spec.sessionAffinity".into(),
            affinity,
            &["ClientIP", "None"],
        ));
    }
    let timeout = spec.pointer("/sessionAffinityConfig/clientIP/timeoutSeconds");
    if let Some(t) = timeout.filter(|t| !t.is_null()) {
        if !t.as_u64().is_some_and(|t| (1..=86400).contains(&t)) {
            causes.push(invalid(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds".into(),
                t,
                "must be greater than 0 and less than 86400",
            ));
        }
    }
    for field in ["internalTrafficPolicy", "externalTrafficPolicy"] {
        let v = &spec[field];
        if !v.is_null() && v != "Cluster" && v != "Local" {
            causes.push(unsupported(
                format!("spec.{field}"),
                v,
                &["Cluster", "Local"],
            ));
        }
    }
    if !spec["externalTrafficPolicy"].is_null() && !has_node_ports(spec) {
        causes.push(invalid(
            "spec.externalTrafficPolicy".into(),
            &spec["externalTrafficPolicy"],
            "may only be set for externally-accessible services",
        ));
    }
    if let Some(old) = old {
        let old_ip = old["spec"]["clusterIP"].as_str().unwrap_or_default();
        let released = is_external_name(spec) || is_external_name(&old["spec"]);
        if !released && !old_ip.is_empty() && ip != old_ip {
            causes.push(invalid(
                "spec.clusterIPs[0]".into(),
                &spec["clusterIP"],
                "may not change once set",
            ));
        }
    }
    causes
}

/// On update: what Kubernetes keeps when the new object leaves it out — the clusterIP
/// (unless the type becomes or leaves ExternalName), and the NodePorts allocated to ports
/// of the same number and protocol while the type still has NodePorts. Runs before
/// [`default`] and [`validate`].
pub fn carry_over(object: &mut Value, old: &Value) {
    if !object["spec"].is_object() {
        return;
    }
    let external = is_external_name(&object["spec"]) || is_external_name(&old["spec"]);
    let node_ports = has_node_ports(&object["spec"]);
    let spec = &mut object["spec"];
    if !external && spec["clusterIP"].as_str().unwrap_or_default().is_empty() {
        spec["clusterIP"] = old["spec"]["clusterIP"].clone();
        spec["clusterIPs"] = old["spec"]["clusterIPs"].clone();
    }
    let old_ports = old["spec"]["ports"].as_array().cloned().unwrap_or_default();
    for port in spec["ports"].as_array_mut().into_iter().flatten() {
        let same = |o: &&Value| {
            o["port"] == port["port"]
                && o["protocol"].as_str().unwrap_or("TCP")
                    == port["protocol"].as_str().unwrap_or("TCP")
        };
        let previous = old_ports.iter().find(same).map(|o| o["nodePort"].clone());
        let unset = port["nodePort"].is_null() || port["nodePort"] == 0;
        match previous {
            Some(n) if node_ports && unset && !n.is_null() => port["nodePort"] = n,
            // Left over from the NodePort the Service no longer is: released.
            Some(n) if !node_ports && port["nodePort"] == n => {
                if let Some(map) = port.as_object_mut() {
                    map.remove("nodePort");
                }
            }
            _ => {}
        }
    }
}

fn key_of(object: &Value) -> (String, String) {
    (
        object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

/// Gives `object` (defaulted and validated) its ClusterIP and NodePorts, checking requested
/// ones against `others` (every stored Service; the object's own stored version is ignored):
/// a requested address must be in `cidr` and free, a requested NodePort free; missing ones
/// are picked from a hash of the name (`model::service::pick_*`). The backend runs this
/// under its write lock.
pub fn allocate(object: &mut Value, others: &[Value], cidr: Ipv4Net) -> Result<(), Vec<Cause>> {
    let me = key_of(object);
    // What its stored version already holds stays its own, even if a concurrent allocation
    // elsewhere gave it to another Service too (the repair task settles that, not an update).
    let own = others.iter().find(|o| key_of(o) == me);
    let held_ip = own.and_then(|o| o["spec"]["clusterIP"].as_str().map(str::to_string));
    let held_ports: BTreeSet<u64> = own
        .into_iter()
        .flat_map(|o| o["spec"]["ports"].as_array().into_iter().flatten())
        .filter_map(|p| p["nodePort"].as_u64())
        .collect();
    let others: Vec<&Value> = others.iter().filter(|o| key_of(o) != me).collect();
    let taken_ips: BTreeSet<Ipv4Addr> = others
        .iter()
        .filter_map(|o| o["spec"]["clusterIP"].as_str()?.parse().ok())
        .collect();
    let mut taken_ports: BTreeSet<u16> = others
        .iter()
        .flat_map(|o| o["spec"]["ports"].as_array().into_iter().flatten())
        .filter_map(|p| p["nodePort"].as_u64().and_then(|n| u16::try_from(n).ok()))
        .collect();
    let mut causes = Vec::new();
    let spec = &mut object["spec"];
    let kind = service_type(spec);
    if kind != Some(ServiceType::ExternalName) {
        match spec["clusterIP"].as_str().unwrap_or_default() {
            "None" => {}
            "" => match service::pick_cluster_ip(cidr, &me.0, &me.1, &taken_ips) {
                Some(ip) => spec["clusterIP"] = json!(ip.to_string()),
                None => causes.push(cause(
                    "FieldValueInvalid",
                    "spec.clusterIPs".into(),
                    format!(
                        "Internal error: failed to allocate a serviceIP: range is full ({cidr})"
                    ),
                )),
            },
            requested => {
                let shown_list = json!([requested]);
                match requested.parse::<Ipv4Addr>() {
                    Ok(ip) if !service::assignable(cidr).contains(&u32::from(ip)) => {
                        causes.push(invalid(
                            "spec.clusterIPs".into(),
                            &shown_list,
                            &format!("failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {cidr}"),
                        ))
                    }
                    Ok(ip)
                        if taken_ips.contains(&ip) && held_ip.as_deref() != Some(requested) =>
                    {
                        causes.push(invalid(
                        "spec.clusterIPs".into(),
                        &shown_list,
                        &format!("failed to allocate IP {ip}: provided IP is already allocated"),
                    ))
                    }
                    _ => {}
                }
            }
        }
        if let Some(ip) = spec["clusterIP"].as_str().map(str::to_string) {
            spec["clusterIPs"] = json!([ip]);
        }
    }
    if kind.is_some_and(ServiceType::has_node_ports) {
        let ports = spec["ports"]
            .as_array_mut()
            .map(|p| p.as_mut_slice())
            .unwrap_or_default();
        // Requested ones first, so a picked one never takes a requested one.
        for (i, port) in ports.iter_mut().enumerate() {
            if let Some(n) = port["nodePort"].as_u64().filter(|n| *n != 0) {
                let n = u16::try_from(n).unwrap_or(0);
                if taken_ports.contains(&n) && !held_ports.contains(&u64::from(n)) {
                    causes.push(invalid(
                        format!("spec.ports[{i}].nodePort"),
                        &port["nodePort"],
                        "provided port is already allocated",
                    ));
                }
            }
        }
        for port in ports.iter().filter_map(|p| p["nodePort"].as_u64()) {
            taken_ports.extend(u16::try_from(port).ok());
        }
        for (i, port) in ports.iter_mut().enumerate() {
            if port["nodePort"].as_u64().is_some_and(|n| n != 0) {
                continue;
            }
            match service::pick_node_port(&me.0, &me.1, i, &taken_ports) {
                Some(n) => {
                    taken_ports.insert(n);
                    port["nodePort"] = json!(n);
                }
                None => causes.push(cause(
                    "FieldValueInvalid",
                    format!("spec.ports[{i}].nodePort"),
                    "Internal error: failed to allocate a nodePort: range is full".into(),
                )),
            }
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(causes)
    }
}

// ---- Endpoints and EndpointSlices, computed on read ----

fn rv(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn derived_uid(kind: &str, service_uid: &str, extra: &str) -> String {
    let h = hex::encode(&Sha256::digest(format!("shoal-{kind}/{service_uid}/{extra}"))[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Services with computed endpoints (a selector), with their endpoints and the
/// resourceVersion covering them: the Service's, raised to the newest of its pods' (which
/// cover their status, `workloads.rs`), so a watch started from a list sees later changes.
fn computed(services: &[Value], pods: &[Value]) -> Vec<(Value, Service, Vec<Endpoint>, u64)> {
    let rv_of_pod: BTreeMap<&str, u64> = pods
        .iter()
        .map(|p| (p["metadata"]["uid"].as_str().unwrap_or_default(), rv(p)))
        .collect();
    services
        .iter()
        .filter_map(|object| {
            let parsed = service::parse(object).ok()?;
            parsed.selector.as_ref()?;
            let eps = service::endpoints(&parsed, pods);
            let version = eps
                .iter()
                .filter_map(|e| rv_of_pod.get(e.pod_uid.as_str()).copied())
                .chain([rv(object)])
                .max()
                .unwrap_or(0);
            Some((object.clone(), parsed, eps, version))
        })
        .collect()
}

fn target_ref(s: &Service, e: &Endpoint) -> Value {
    json!({"kind": "Pod", "namespace": s.namespace, "name": e.pod, "uid": e.pod_uid})
}

fn port_json(p: &service::EndpointPort) -> Value {
    let mut v = json!({"port": p.port, "protocol": p.protocol.as_str()});
    if !p.name.is_empty() {
        v["name"] = json!(p.name);
    }
    v
}

fn meta(object: &Value, name: &str, uid: String, version: u64) -> Value {
    json!({
        "name": name,
        "namespace": object["metadata"]["namespace"],
        "uid": uid,
        "resourceVersion": version.to_string(),
        "creationTimestamp": object["metadata"]["creationTimestamp"],
    })
}

/// `v1` Endpoints of every Service with a selector: addresses grouped into subsets by port
/// set, not-ready ones under `notReadyAddresses`, terminating pods left out (unless the
/// Service publishes not-ready addresses), as Kubernetes' endpoints controller does.
pub fn endpoints_objects(services: &[Value], pods: &[Value]) -> Vec<Value> {
    computed(services, pods)
        .into_iter()
        .map(|(object, s, eps, version)| {
            let mut subsets: BTreeMap<Vec<service::EndpointPort>, (Vec<Value>, Vec<Value>)> =
                BTreeMap::new();
            for e in eps.iter().filter(|e| s.publish_not_ready || !e.terminating) {
                let mut address = json!({"ip": e.ip.to_string(), "targetRef": target_ref(&s, e)});
                if !e.node.is_empty() {
                    address["nodeName"] = json!(e.node);
                }
                if let Some(h) = &e.hostname {
                    address["hostname"] = json!(h);
                }
                let entry = subsets.entry(e.ports.clone()).or_default();
                if e.ready {
                    entry.0.push(address);
                } else {
                    entry.1.push(address);
                }
            }
            let uid = derived_uid("endpoints", &s.uid, "");
            let mut out = json!({
                "kind": "Endpoints",
                "apiVersion": "v1",
                "metadata": meta(&object, &s.name, uid, version),
            });
            if let Some(labels) = object["metadata"]["labels"].as_object() {
                out["metadata"]["labels"] = json!(labels);
            }
            let subsets: Vec<Value> = subsets
                .into_iter()
                .map(|(ports, (ready, not_ready))| {
                    let mut subset = json!({});
                    if !ready.is_empty() {
                        subset["addresses"] = json!(ready);
                    }
                    if !not_ready.is_empty() {
                        subset["notReadyAddresses"] = json!(not_ready);
                    }
                    if !ports.is_empty() {
                        subset["ports"] = ports.iter().map(port_json).collect();
                    }
                    subset
                })
                .collect();
            if !subsets.is_empty() {
                out["subsets"] = json!(subsets);
            }
            out
        })
        .collect()
}

/// `discovery.k8s.io/v1` EndpointSlices: one per Service and port set (an empty one for a
/// Service without endpoints), named `<service>-<hash of the port set>`, labelled
/// `kubernetes.io/service-name` and `endpointslice.kubernetes.io/managed-by`, owned by the
/// Service; every endpoint with its ready/serving/terminating conditions.
pub fn endpoint_slices(services: &[Value], pods: &[Value]) -> Vec<Value> {
    let mut out = Vec::new();
    for (object, s, eps, version) in computed(services, pods) {
        let mut groups: BTreeMap<Vec<service::EndpointPort>, Vec<&Endpoint>> = BTreeMap::new();
        for e in &eps {
            groups.entry(e.ports.clone()).or_default().push(e);
        }
        if groups.is_empty() {
            groups.insert(Vec::new(), Vec::new());
        }
        for (ports, members) in groups {
            let port_key: Vec<String> = ports
                .iter()
                .map(|p| format!("{}/{}/{}", p.name, p.protocol.as_str(), p.port))
                .collect();
            let digest = hex::encode(&Sha256::digest(port_key.join(",").as_bytes())[..3]);
            let suffix: String = digest.chars().take(5).collect();
            let name = format!("{}-{suffix}", s.name);
            let endpoints: Vec<Value> = members
                .iter()
                .map(|e| {
                    let mut v = json!({
                        "addresses": [e.ip.to_string()],
                        "conditions": {"ready": e.ready, "serving": e.serving, "terminating": e.terminating},
                        "targetRef": target_ref(&s, e),
                    });
                    if !e.node.is_empty() {
                        v["nodeName"] = json!(e.node);
                    }
                    if let Some(h) = &e.hostname {
                        v["hostname"] = json!(h);
                    }
                    v
                })
                .collect();
            let mut labels = object["metadata"]["labels"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            labels.insert(SERVICE_NAME_LABEL.into(), json!(s.name));
            labels.insert(
                "endpointslice.kubernetes.io/managed-by".into(),
                json!(MANAGED_BY),
            );
            let mut metadata = meta(
                &object,
                &name,
                derived_uid("endpointslice", &s.uid, &name),
                version,
            );
            metadata["generateName"] = json!(format!("{}-", s.name));
            metadata["labels"] = json!(labels);
            metadata["ownerReferences"] = json!([{
                "apiVersion": "v1", "kind": "Service", "name": s.name, "uid": s.uid,
                "controller": true, "blockOwnerDeletion": true,
            }]);
            let mut slice = json!({
                "kind": "EndpointSlice",
                "apiVersion": "discovery.k8s.io/v1",
                "metadata": metadata,
                "addressType": "IPv4",
                "endpoints": endpoints,
            });
            if !ports.is_empty() {
                slice["ports"] = ports.iter().map(port_json).collect();
            }
            out.push(slice);
        }
    }
    out
}

// ---- Table cells (kubectl's printers) ----

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// NAME TYPE CLUSTER-IP EXTERNAL-IP PORT(S) (AGE and SELECTOR added by the caller).
pub fn service_cells(object: &Value) -> [Value; 5] {
    let spec = &object["spec"];
    let kind = spec["type"].as_str().unwrap_or("ClusterIP");
    let cluster_ip = match text(&spec["clusterIP"]) {
        "" => "<none>",
        ip => ip,
    };
    let mut external: Vec<String> = spec["externalIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    let external = match kind {
        "ExternalName" => text(&spec["externalName"]).to_string(),
        "LoadBalancer" => {
            for ingress in object["status"]["loadBalancer"]["ingress"]
                .as_array()
                .into_iter()
                .flatten()
            {
                for f in ["ip", "hostname"] {
                    if let Some(v) = ingress[f].as_str() {
                        external.push(v.to_string());
                    }
                }
            }
            if external.is_empty() {
                "<pending>".to_string()
            } else {
                external.join(",")
            }
        }
        _ if external.is_empty() => "<none>".to_string(),
        _ => external.join(","),
    };
    let ports: Vec<String> = spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let protocol = p["protocol"].as_str().unwrap_or("TCP");
            match p["nodePort"].as_u64().filter(|n| *n != 0) {
                Some(n) => format!("{}:{n}/{protocol}", p["port"]),
                None => format!("{}/{protocol}", p["port"]),
            }
        })
        .collect();
    let ports = if ports.is_empty() {
        "<none>".to_string()
    } else {
        ports.join(",")
    };
    [
        object["metadata"]["name"].clone(),
        json!(kind),
        json!(cluster_ip),
        json!(external),
        json!(ports),
    ]
}

/// kubectl's `formatEndpoints`: up to 3 `ip:port` of ready addresses, then `+ N more...`.
pub fn endpoints_cell(object: &Value) -> String {
    let Some(subsets) = object["subsets"].as_array().filter(|s| !s.is_empty()) else {
        return "<none>".into();
    };
    let max = 3;
    let mut list = Vec::new();
    let mut count = 0;
    for subset in subsets {
        let addresses: Vec<&str> = subset["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["ip"].as_str())
            .collect();
        let ports: Vec<Option<u64>> = match subset["ports"].as_array() {
            Some(ports) if !ports.is_empty() => ports.iter().map(|p| p["port"].as_u64()).collect(),
            _ => vec![None],
        };
        for port in ports {
            count += addresses.len();
            for ip in &addresses {
                if list.len() < max {
                    list.push(match port {
                        Some(p) => format!("{ip}:{p}"),
                        None => ip.to_string(),
                    });
                }
            }
        }
    }
    let joined = list.join(",");
    if count > max {
        format!("{joined} + {} more...", count - max)
    } else {
        joined
    }
}

/// ADDRESSTYPE PORTS ENDPOINTS of an EndpointSlice (kubectl's printer).
pub fn slice_cells(object: &Value) -> [Value; 3] {
    let ports: Vec<String> = object["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["port"].as_u64().map(|n| n.to_string()))
        .collect();
    let addresses: Vec<&str> = object["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| e["addresses"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    let unset = |v: String| {
        if v.is_empty() {
            "<unset>".to_string()
        } else {
            v
        }
    };
    let shown = if addresses.len() > 3 {
        format!(
            "{} + {} more...",
            addresses[..3].join(","),
            addresses.len() - 3
        )
    } else {
        addresses.join(",")
    };
    [
        object["addressType"].clone(),
        json!(unset(ports.join(","))),
        json!(unset(shown)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"namespace": "default", "name": "web", "uid": "u",
                            "resourceVersion": "5", "creationTimestamp": "2026-01-01T00:00:00Z"},
               "spec": spec})
    }

    fn fields(causes: &[Cause]) -> Vec<String> {
        causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn defaults_follow_kubernetes() {
        let mut s = svc(json!({"type": "NodePort", "ports": [{"port": 80}],
                               "sessionAffinity": "ClientIP"}));
        default(&mut s);
        let spec = &s["spec"];
        assert_eq!(spec["ports"][0]["protocol"], "TCP");
        assert_eq!(spec["ports"][0]["targetPort"], 80);
        assert_eq!(spec["externalTrafficPolicy"], "Cluster");
        assert_eq!(spec["internalTrafficPolicy"], "Cluster");
        assert_eq!(spec["ipFamilies"], json!(["IPv4"]));
        assert_eq!(spec["ipFamilyPolicy"], "SingleStack");
        assert_eq!(
            spec["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"],
            10800
        );
        let mut c = svc(json!({"ports": [{"port": 80, "targetPort": "http"}]}));
        default(&mut c);
        assert_eq!(c["spec"]["type"], "ClusterIP");
        assert_eq!(c["spec"]["sessionAffinity"], "None");
        assert!(c["spec"]["externalTrafficPolicy"].is_null());
        assert_eq!(c["spec"]["ports"][0]["targetPort"], "http");
        assert!(validate(&c, None).is_empty(), "{:?}", validate(&c, None));
    }

    #[test]
    fn validation_uses_kubernetes_wording() {
        let mut s = svc(
            json!({"type": "NodePort", "selector": {"app": "web"}, "ports": [
                {"name": "a", "port": 70000},
                {"name": "b", "port": 81, "nodePort": 80},
                {"name": "b", "port": 82, "protocol": "ICMP", "targetPort": "Bad_Name"},
            ]}),
        );
        default(&mut s);
        assert_eq!(
            fields(&validate(&s, None)),
            [
                "spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive",
                // Defaulted from the port, as in Kubernetes.
                "spec.ports[0].targetPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
                "spec.ports[1].nodePort: Invalid value: 80: provided port is not in the valid range. The range of valid ports is 30000-32767",
                "spec.ports[2].name: Duplicate value: \"b\"",
                "spec.ports[2].protocol: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
                "spec.ports[2].targetPort: Invalid value: \"Bad_Name\": must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
            ]
        );
        let mut none = svc(json!({"selector": {"bad key!": "x"}}));
        default(&mut none);
        let f = fields(&validate(&none, None));
        assert_eq!(f[0], "spec.ports: Required value");
        assert!(
            f[1].starts_with("spec.selector: Invalid value: \"bad key!\""),
            "{f:?}"
        );
        let mut digit = svc(json!({"clusterIP": "None"}));
        digit["metadata"]["name"] = json!("1web");
        assert!(fields(&validate(&digit, None))[0]
            .starts_with("metadata.name: Invalid value: \"1web\": a DNS-1035 label"));
        let mut headless = svc(json!({"clusterIP": "None"}));
        default(&mut headless);
        assert!(validate(&headless, None).is_empty());
        let mut cluster = svc(json!({"ports": [{"port": 80, "nodePort": 30001}, {"port": 80}]}));
        default(&mut cluster);
        assert_eq!(
            fields(&validate(&cluster, None)),
            [
                "spec.ports[0].name: Required value",
                "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'",
                "spec.ports[1].name: Required value",
                "spec.ports[1]: Duplicate value: {\"port\":80,\"protocol\":\"TCP\"}",
            ]
        );
    }

    #[test]
    fn allocation_checks_requests_and_fills_in() {
        let cidr: Ipv4Net = "10.96.0.0/12".parse().unwrap();
        let mut other = svc(json!({"type": "NodePort", "clusterIP": "10.96.0.10",
                                    "ports": [{"port": 80, "nodePort": 30080}]}));
        other["metadata"]["name"] = json!("other");
        let mut s = svc(json!({"type": "NodePort", "clusterIP": "10.96.0.10",
                               "ports": [{"port": 80, "nodePort": 30080}]}));
        default(&mut s);
        let err = allocate(&mut s, std::slice::from_ref(&other), cidr).unwrap_err();
        assert_eq!(
            fields(&err),
            [
                "spec.clusterIPs: Invalid value: [\"10.96.0.10\"]: failed to allocate IP 10.96.0.10: provided IP is already allocated",
                "spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated",
            ]
        );
        let mut outside = svc(json!({"clusterIP": "10.0.0.1", "ports": [{"port": 80}]}));
        let err = allocate(&mut outside, &[], cidr).unwrap_err();
        assert!(
            err[0]
                .message
                .ends_with("The range of valid IPs is 10.96.0.0/12"),
            "{err:?}"
        );
        let mut fresh = svc(
            json!({"type": "NodePort", "ports": [{"port": 80}, {"port": 81, "nodePort": 30500}]}),
        );
        default(&mut fresh);
        // Its own stored version does not count as taken.
        let mut stored = fresh.clone();
        stored["spec"]["clusterIP"] = json!("10.96.0.20");
        allocate(&mut fresh, &[other.clone(), stored], cidr).unwrap();
        // An update keeps what its stored version holds, even when a concurrent allocation
        // gave the same to another Service (the repair task settles that).
        let mut updated = other.clone();
        updated["metadata"]["name"] = json!("web");
        default(&mut updated);
        let mut stored = updated.clone();
        stored["metadata"]["labels"] = json!({"v": "old"});
        allocate(&mut updated, &[other.clone(), stored], cidr).unwrap();
        let ip: Ipv4Addr = fresh["spec"]["clusterIP"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(cidr.contains(&ip) && ip != Ipv4Addr::new(10, 96, 0, 10));
        assert_eq!(fresh["spec"]["clusterIPs"], json!([ip.to_string()]));
        let np = fresh["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
        assert!((30000..=32767).contains(&np) && np != 30080 && np != 30500);
        assert_eq!(fresh["spec"]["ports"][1]["nodePort"], 30500);
    }

    #[test]
    fn updates_keep_cluster_ip_and_node_ports() {
        let old = svc(
            json!({"type": "NodePort", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                             "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}),
        );
        let mut new = svc(json!({"type": "NodePort", "ports": [{"port": 80}]}));
        carry_over(&mut new, &old);
        default(&mut new);
        assert_eq!(new["spec"]["clusterIP"], "10.96.0.10");
        assert_eq!(new["spec"]["ports"][0]["nodePort"], 30080);
        assert!(validate(&new, Some(&old)).is_empty());
        let mut moved = new.clone();
        moved["spec"]["clusterIP"] = json!("10.96.0.11");
        moved["spec"]["clusterIPs"] = json!(["10.96.0.11"]);
        assert_eq!(
            fields(&validate(&moved, Some(&old))),
            ["spec.clusterIPs[0]: Invalid value: \"10.96.0.11\": may not change once set"]
        );
        // Back to ClusterIP: the NodePort carried in from the old object is released.
        let mut cluster = old.clone();
        cluster["spec"]["type"] = json!("ClusterIP");
        carry_over(&mut cluster, &old);
        assert!(cluster["spec"]["ports"][0]["nodePort"].is_null());
    }

    fn pod(name: &str, ip: &str, ready: bool) -> Value {
        json!({"metadata": {"namespace": "default", "name": name, "uid": format!("uid-{name}"),
                            "labels": {"app": "web"}, "resourceVersion": "9"},
               "spec": {"nodeName": "n1"},
               "status": {"phase": "Running", "podIP": ip, "conditions": [
                   {"type": "Ready", "status": if ready {"True"} else {"False"}}]}})
    }

    #[test]
    fn endpoints_and_slices_are_computed() {
        let s = svc(
            json!({"selector": {"app": "web"}, "clusterIP": "10.96.0.10",
                           "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}),
        );
        let pods = [pod("a", "10.244.0.5", true), pod("b", "10.244.0.6", false)];
        let eps = endpoints_objects(std::slice::from_ref(&s), &pods);
        assert_eq!(eps.len(), 1);
        let e = &eps[0];
        assert_eq!(e["metadata"]["name"], "web");
        assert_eq!(e["metadata"]["resourceVersion"], "9");
        assert_eq!(e["subsets"][0]["addresses"][0]["ip"], "10.244.0.5");
        assert_eq!(e["subsets"][0]["addresses"][0]["nodeName"], "n1");
        assert_eq!(e["subsets"][0]["addresses"][0]["targetRef"]["name"], "a");
        assert_eq!(e["subsets"][0]["notReadyAddresses"][0]["ip"], "10.244.0.6");
        assert_eq!(
            e["subsets"][0]["ports"],
            json!([{"name": "http", "port": 8080, "protocol": "TCP"}])
        );
        assert_eq!(endpoints_cell(e), "10.244.0.5:8080");
        let slices = endpoint_slices(std::slice::from_ref(&s), &pods);
        assert_eq!(slices.len(), 1);
        let sl = &slices[0];
        assert_eq!(sl["metadata"]["labels"][SERVICE_NAME_LABEL], "web");
        assert_eq!(sl["endpoints"][1]["conditions"]["ready"], false);
        assert_eq!(slice_cells(sl)[1], "8080");
        assert_eq!(slice_cells(sl)[2], "10.244.0.5,10.244.0.6");
        // Nothing selected: Endpoints without subsets, one empty slice.
        let empty = endpoints_objects(std::slice::from_ref(&s), &[]);
        assert!(empty[0]["subsets"].is_null());
        assert_eq!(endpoints_cell(&empty[0]), "<none>");
        let slices = endpoint_slices(std::slice::from_ref(&s), &[]);
        assert_eq!(slice_cells(&slices[0])[2], "<unset>");
        // No selector: nothing computed.
        let manual = svc(json!({"ports": [{"port": 80}]}));
        assert!(endpoints_objects(&[manual], &pods).is_empty());
    }

    #[test]
    fn service_rows_show_ports_like_kubectl() {
        let s = svc(json!({"type": "NodePort", "clusterIP": "10.96.0.10",
            "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}, {"port": 53, "protocol": "UDP"}]}));
        let cells = service_cells(&s);
        assert_eq!(cells[1], "NodePort");
        assert_eq!(cells[2], "10.96.0.10");
        assert_eq!(cells[3], "<none>");
        assert_eq!(cells[4], "80:30080/TCP,53/UDP");
    }
}
