//! Services, the pure part: a stored `v1` Service read into [`Service`] ([`parse`]), the
//! endpoints it selects among pods as served ([`endpoints`]), ClusterIP and NodePort choice
//! without a central allocator ([`pick_cluster_ip`], [`pick_node_port`]) and the deterministic
//! winner when two Services hold one address after a merge ([`resolve_conflicts`]). No I/O
//! and no clocks: the API, the proxy and DNS all read Services through here
//! (`docs/networking.md`, "Services and endpoints").

use core::net::Ipv4Addr;
use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use ipnet::Ipv4Net;
use serde_json::Value;

use super::network::NODE_PORT_RANGE;

/// The backend resource Services are stored under (`ClusterDoc::list_objects`).
pub const SERVICES: &str = "services";

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

/// `spec.type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
    ExternalName,
}

impl ServiceType {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ClusterIP" => ServiceType::ClusterIP,
            "NodePort" => ServiceType::NodePort,
            "LoadBalancer" => ServiceType::LoadBalancer,
            "ExternalName" => ServiceType::ExternalName,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::ExternalName => "ExternalName",
        }
    }

    /// Whether the type carries NodePorts (NodePort and LoadBalancer).
    pub fn has_node_ports(self) -> bool {
        matches!(self, ServiceType::NodePort | ServiceType::LoadBalancer)
    }
}

/// A port's protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            "SCTP" => Protocol::Sctp,
            _ => return None,
        })
    }

    /// As Kubernetes spells it: `TCP`, `UDP`, `SCTP`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// The nft `inet_proto` keyword (the name in `/etc/protocols`): `tcp`, `udp`, `sctp`.
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// `spec.ports[].targetPort`: a number, or the name of a container port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

/// One of `spec.ports`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePort {
    /// Empty when the Service has a single unnamed port.
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub target_port: TargetPort,
    pub node_port: Option<u16>,
}

/// A Service as the data path needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub created: DateTime<Utc>,
    pub kind: ServiceType,
    /// `None` for a headless Service (`clusterIP: None`) and an ExternalName one.
    pub cluster_ip: Option<Ipv4Addr>,
    pub ports: Vec<ServicePort>,
    /// `None` (or empty in the object): endpoints are not computed from pods.
    pub selector: Option<BTreeMap<String, String>>,
    /// `sessionAffinity: ClientIP`, with its timeout in seconds.
    pub session_affinity_client_ip: Option<u32>,
    /// `externalTrafficPolicy: Local`.
    pub external_traffic_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_traffic_local: bool,
    /// `publishNotReadyAddresses`.
    pub publish_not_ready: bool,
}

impl Service {
    /// `(namespace, name)`.
    pub fn key(&self) -> (String, String) {
        (self.namespace.clone(), self.name.clone())
    }

    /// Whether the Service is headless (`clusterIP: None`, or no address at all).
    pub fn is_headless(&self) -> bool {
        self.cluster_ip.is_none()
    }
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn port_number(v: &Value) -> Option<u16> {
    v.as_u64()
        .and_then(|n| u16::try_from(n).ok())
        .filter(|n| *n > 0)
}

fn parse_port(index: usize, p: &Value) -> Result<ServicePort, String> {
    let port = port_number(&p["port"])
        .ok_or_else(|| format!("spec.ports[{index}].port: missing or out of range"))?;
    let protocol = match p["protocol"].as_str() {
        None => Protocol::Tcp,
        Some(s) => Protocol::parse(s)
            .ok_or_else(|| format!("spec.ports[{index}].protocol: unknown protocol {s:?}"))?,
    };
    let target_port =
        match &p["targetPort"] {
            Value::Null => TargetPort::Number(port),
            Value::String(s) => match s.parse::<u16>() {
                Ok(n) if n > 0 => TargetPort::Number(n),
                _ if s.is_empty() => TargetPort::Number(port),
                _ => TargetPort::Name(s.clone()),
            },
            other => TargetPort::Number(port_number(other).ok_or_else(|| {
                format!("spec.ports[{index}].targetPort: not a port number or name")
            })?),
        };
    Ok(ServicePort {
        name: p["name"].as_str().unwrap_or_default().to_string(),
        protocol,
        port,
        target_port,
        node_port: port_number(&p["nodePort"]),
    })
}

/// Reads a stored (already validated and defaulted) Service. Tolerant of what Kubernetes
/// defaults (missing type, protocol, targetPort), strict only where the data path would
/// otherwise guess: a port without a valid number, an unknown type or protocol.
pub fn parse(service: &Value) -> Result<Service, String> {
    let namespace = text(service, "/metadata/namespace").to_string();
    let name = text(service, "/metadata/name").to_string();
    if name.is_empty() {
        return Err("metadata.name: missing".into());
    }
    let spec = &service["spec"];
    let kind = match spec["type"].as_str() {
        None | Some("") => ServiceType::ClusterIP,
        Some(s) => ServiceType::parse(s).ok_or_else(|| format!("spec.type: unknown type {s:?}"))?,
    };
    let cluster_ip = match (kind, spec["clusterIP"].as_str()) {
        (ServiceType::ExternalName, _) | (_, None | Some("" | "None")) => None,
        (_, Some(ip)) => Some(
            ip.parse::<Ipv4Addr>()
                .map_err(|_| format!("spec.clusterIP: {ip:?} is not an IPv4 address"))?,
        ),
    };
    let ports = spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, p)| parse_port(i, p))
        .collect::<Result<Vec<_>, _>>()?;
    let selector: BTreeMap<String, String> = spec["selector"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
        .collect();
    let session_affinity_client_ip = (spec["sessionAffinity"] == "ClientIP").then(|| {
        spec.pointer("/sessionAffinityConfig/clientIP/timeoutSeconds")
            .and_then(Value::as_u64)
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
    });
    let created = DateTime::parse_from_rfc3339(text(service, "/metadata/creationTimestamp"))
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
    Ok(Service {
        namespace,
        name,
        uid: text(service, "/metadata/uid").to_string(),
        created,
        kind,
        cluster_ip,
        ports,
        selector: (!selector.is_empty()).then_some(selector),
        session_affinity_client_ip,
        external_traffic_local: spec["externalTrafficPolicy"] == "Local",
        internal_traffic_local: spec["internalTrafficPolicy"] == "Local",
        publish_not_ready: spec["publishNotReadyAddresses"] == true,
    })
}

/// One port of an endpoint: the Service port's name and protocol, the pod's port number.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// One pod behind a Service (EndpointSlice semantics).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    /// The node the pod runs on (empty if unknown).
    pub node: String,
    pub pod: String,
    pub pod_uid: String,
    /// Receives traffic: serving and not terminating (or `publishNotReadyAddresses`).
    pub ready: bool,
    /// The pod's `Ready` condition is `True`.
    pub serving: bool,
    /// The pod has a `deletionTimestamp`.
    pub terminating: bool,
    /// The Service's ports this pod serves, in the Service's port order (a named targetPort
    /// the pod does not declare leaves that port out).
    pub ports: Vec<EndpointPort>,
    /// The pod's `spec.hostname` when its `spec.subdomain` is this Service's name (as
    /// Kubernetes' endpoint controllers set it): the DNS name
    /// `<hostname>.<service>.<ns>.svc.<domain>` of a headless Service's endpoint.
    pub hostname: Option<String>,
}

fn labels(pod: &Value) -> BTreeMap<&str, &str> {
    pod["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
        .collect()
}

fn is_pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// The container port named `name` with `protocol` (Kubernetes' `podutil.FindPort`).
fn find_named_port(pod: &Value, name: &str, protocol: Protocol) -> Option<u16> {
    pod["spec"]["containers"]
        .as_array()?
        .iter()
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .find(|p| p["name"] == name && p["protocol"].as_str().unwrap_or("TCP") == protocol.as_str())
        .and_then(|p| port_number(&p["containerPort"]))
}

/// The endpoints of `service` among `pods` as served (`api::workloads::pod_view`: computed
/// `status.podIP`, the `Ready` condition, `spec.nodeName`): pods of its namespace that its
/// selector matches, with an IPv4 `podIP`, not `Succeeded` or `Failed`. Sorted by address,
/// then pod name. A Service without a selector has none (its endpoints are not computed).
pub fn endpoints(service: &Service, pods: &[Value]) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = pods
        .iter()
        .filter(|p| selects(service, p))
        .filter(|p| !matches!(text(p, "/status/phase"), "Succeeded" | "Failed"))
        .filter_map(|p| endpoint_of(service, p))
        .collect();
    out.sort_by(|a, b| (a.ip, &a.pod).cmp(&(b.ip, &b.pod)));
    out
}

/// Whether `service`'s selector picks `pod` (same namespace, every selector label matches); a
/// Service without a selector picks none. Reads only the pod's metadata, so it may be given the
/// stored object as well as the served one.
pub fn selects(service: &Service, pod: &Value) -> bool {
    let Some(selector) = &service.selector else {
        return false;
    };
    if text(pod, "/metadata/namespace") != service.namespace {
        return false;
    }
    let have = labels(pod);
    selector
        .iter()
        .all(|(k, v)| have.get(k.as_str()) == Some(&v.as_str()))
}

fn endpoint_of(service: &Service, pod: &Value) -> Option<Endpoint> {
    let ip: Ipv4Addr = text(pod, "/status/podIP").parse().ok()?;
    let ports: Vec<EndpointPort> = service
        .ports
        .iter()
        .filter_map(|sp| {
            let port = match &sp.target_port {
                TargetPort::Number(n) => *n,
                TargetPort::Name(name) => find_named_port(pod, name, sp.protocol)?,
            };
            Some(EndpointPort {
                name: sp.name.clone(),
                protocol: sp.protocol,
                port,
            })
        })
        .collect();
    if ports.is_empty() && !service.ports.is_empty() {
        return None;
    }
    let serving = is_pod_ready(pod);
    let terminating = !pod["metadata"]["deletionTimestamp"].is_null();
    let hostname = (text(pod, "/spec/subdomain") == service.name)
        .then(|| text(pod, "/spec/hostname"))
        .filter(|h| !h.is_empty())
        .map(str::to_string);
    Some(Endpoint {
        hostname,
        ip,
        node: text(pod, "/spec/nodeName").to_string(),
        pod: text(pod, "/metadata/name").to_string(),
        pod_uid: text(pod, "/metadata/uid").to_string(),
        ready: service.publish_not_ready || (serving && !terminating),
        serving,
        terminating,
        ports,
    })
}

// ---- allocation ----

/// FNV-1a of `namespace/name` (and a salt): where a Service's search for a free address or
/// port starts, so Services created at the same moment on different agents mostly differ.
fn offset(namespace: &str, name: &str, salt: &str, modulo: u64) -> u64 {
    let key = format!("{namespace}/{name}/{salt}");
    u64::from(super::hash::fnv32a(key.as_bytes())) % modulo.max(1)
}

/// The addresses Services may get from `cidr`: every host address but the network address,
/// the broadcast address and the first host address (reserved, as Kubernetes reserves it
/// for `kubernetes.default`).
pub fn assignable(cidr: Ipv4Net) -> std::ops::RangeInclusive<u32> {
    let network = u32::from(cidr.network());
    let broadcast = u32::from(cidr.broadcast());
    if cidr.prefix_len() >= 30 {
        // Nothing left once .0, .1 and the broadcast address are out.
        #[allow(clippy::reversed_empty_ranges)]
        return 1..=0;
    }
    (network + 2)..=(broadcast - 1)
}

/// A free ClusterIP for `namespace/name` in `cidr`, not in `taken`: the first free one from
/// an offset hashed from the name, wrapping around. `None` when the range is full.
pub fn pick_cluster_ip(
    cidr: Ipv4Net,
    namespace: &str,
    name: &str,
    taken: &BTreeSet<Ipv4Addr>,
) -> Option<Ipv4Addr> {
    let range = assignable(cidr);
    let (start, end) = (*range.start(), *range.end());
    if start > end {
        return None;
    }
    let size = u64::from(end - start) + 1;
    let first = offset(namespace, name, "ip", size);
    // Walk at most `taken.len() + 1` steps: a free address is among them.
    let steps = (taken.len() as u64 + 1).min(size);
    (0..steps)
        .map(|i| Ipv4Addr::from(start + ((first + i) % size) as u32))
        .find(|ip| !taken.contains(ip))
}

/// A free NodePort in [`NODE_PORT_RANGE`] for port number `index` of `namespace/name`.
pub fn pick_node_port(
    namespace: &str,
    name: &str,
    index: usize,
    taken: &BTreeSet<u16>,
) -> Option<u16> {
    let start = *NODE_PORT_RANGE.start();
    let size = u64::from(*NODE_PORT_RANGE.end() - start) + 1;
    let first = offset(namespace, name, &format!("port{index}"), size);
    (0..size)
        .map(|i| start + ((first + i) % size) as u16)
        .find(|p| !taken.contains(p))
}

/// What two Services both hold after concurrent allocations merged.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Contested {
    ClusterIp(Ipv4Addr),
    NodePort(Protocol, u16),
}

/// A Service that lost `what` to `winner` (the older one, then the lower uid).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Conflict {
    pub what: Contested,
    pub winner: (String, String),
    pub loser: (String, String),
}

/// Who keeps a contested address: the Service created first, then the one with the lower
/// uid, then the lower namespace/name (same on every replica).
fn precedence(s: &Service) -> (DateTime<Utc>, &str, &str, &str) {
    (
        s.created,
        s.uid.as_str(),
        s.namespace.as_str(),
        s.name.as_str(),
    )
}

/// Settles Services that hold the same ClusterIP or the same NodePort (possible when two
/// agents allocated concurrently and their writes merged): the winner keeps it, a loser of a
/// ClusterIP is left out of the result (nothing routes to it or resolves to it until it gets
/// another address), a loser of a NodePort keeps its other ports but loses that NodePort.
/// Returns the Services the data path uses, in namespace/name order, and the conflicts.
pub fn resolve_conflicts(services: &[Service]) -> (Vec<Service>, Vec<Conflict>) {
    let mut ordered: Vec<&Service> = services.iter().collect();
    ordered.sort_by(|a, b| precedence(a).cmp(&precedence(b)));
    let mut ip_owner: BTreeMap<Ipv4Addr, (String, String)> = BTreeMap::new();
    let mut port_owner: BTreeMap<(Protocol, u16), (String, String)> = BTreeMap::new();
    let mut conflicts = Vec::new();
    let mut kept = Vec::new();
    for service in ordered {
        if let Some(ip) = service.cluster_ip {
            if let Some(winner) = ip_owner.get(&ip) {
                conflicts.push(Conflict {
                    what: Contested::ClusterIp(ip),
                    winner: winner.clone(),
                    loser: service.key(),
                });
                continue;
            }
            ip_owner.insert(ip, service.key());
        }
        let key = service.key();
        let mut service = service.clone();
        for port in service.ports.iter_mut() {
            let Some(node_port) = port.node_port else {
                continue;
            };
            match port_owner.get(&(port.protocol, node_port)) {
                Some(winner) if *winner != key => {
                    conflicts.push(Conflict {
                        what: Contested::NodePort(port.protocol, node_port),
                        winner: winner.clone(),
                        loser: key.clone(),
                    });
                    port.node_port = None;
                }
                _ => {
                    port_owner.insert((port.protocol, node_port), key.clone());
                }
            }
        }
        kept.push(service);
    }
    kept.sort_by_key(Service::key);
    conflicts.sort();
    (kept, conflicts)
}

/// A Service given a new ClusterIP or NodePort because it lost its own to a concurrent
/// allocation ([`resolve_conflicts`]): the object to write back and what to tell its owner.
#[derive(Clone, Debug, PartialEq)]
pub struct Repair {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub object: Value,
    pub message: String,
}

/// The rewrites that settle every conflict among stored Service `objects`: each loser gets
/// a free address (or NodePort) picked as at creation, avoiding everything held. Rewritten
/// objects get `resource_version`. Empty when nothing conflicts.
pub fn repairs(objects: &[Value], cidr: Ipv4Net, resource_version: &str) -> Vec<Repair> {
    let parsed: Vec<(Service, &Value)> = objects
        .iter()
        .filter_map(|o| parse(o).ok().map(|s| (s, o)))
        .collect();
    let services: Vec<Service> = parsed.iter().map(|(s, _)| s.clone()).collect();
    let (_, conflicts) = resolve_conflicts(&services);
    let mut taken_ips: BTreeSet<Ipv4Addr> = services.iter().filter_map(|s| s.cluster_ip).collect();
    let mut taken_ports: BTreeSet<u16> = services
        .iter()
        .flat_map(|s| s.ports.iter().filter_map(|p| p.node_port))
        .collect();
    let mut out: BTreeMap<(String, String), Repair> = BTreeMap::new();
    for conflict in conflicts {
        let Some((service, original)) = parsed.iter().find(|(s, _)| s.key() == conflict.loser)
        else {
            continue;
        };
        let repair = out.entry(service.key()).or_insert_with(|| Repair {
            namespace: service.namespace.clone(),
            name: service.name.clone(),
            uid: service.uid.clone(),
            object: (*original).clone(),
            message: String::new(),
        });
        let winner = format!("{}/{}", conflict.winner.0, conflict.winner.1);
        let note = match conflict.what {
            Contested::ClusterIp(ip) => {
                let Some(new) =
                    pick_cluster_ip(cidr, &service.namespace, &service.name, &taken_ips)
                else {
                    continue;
                };
                taken_ips.insert(new);
                repair.object["spec"]["clusterIP"] = Value::from(new.to_string());
                repair.object["spec"]["clusterIPs"] = Value::from(vec![new.to_string()]);
                format!("ClusterIP {ip} was allocated concurrently to {winner}, which keeps it; this Service now has {new}")
            }
            Contested::NodePort(protocol, port) => {
                let Some(index) = service
                    .ports
                    .iter()
                    .position(|p| p.protocol == protocol && p.node_port == Some(port))
                else {
                    continue;
                };
                let Some(new) =
                    pick_node_port(&service.namespace, &service.name, index, &taken_ports)
                else {
                    continue;
                };
                taken_ports.insert(new);
                repair.object["spec"]["ports"][index]["nodePort"] = Value::from(new);
                format!("NodePort {port}/{} was allocated concurrently to {winner}, which keeps it; this port now has {new}", protocol.as_str())
            }
        };
        if !repair.message.is_empty() {
            repair.message.push_str("; ");
        }
        repair.message.push_str(&note);
        repair.object["metadata"]["resourceVersion"] = Value::from(resource_version);
    }
    out.into_values()
        .filter(|r| !r.message.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(spec: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": "default", "name": "web", "uid": "u1",
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": spec,
        })
    }

    fn pod(name: &str, ip: &str, ready: bool, labels: Value) -> Value {
        json!({
            "metadata": {"namespace": "default", "name": name, "uid": format!("uid-{name}"),
                         "labels": labels},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [
                {"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]},
            "status": {"phase": "Running", "podIP": ip, "conditions": [
                {"type": "Ready", "status": if ready {"True"} else {"False"}}]},
        })
    }

    #[test]
    fn parse_defaults_and_fields() {
        let s = parse(&svc(json!({
            "type": "NodePort", "clusterIP": "10.96.0.10",
            "selector": {"app": "web"},
            "ports": [{"port": 80, "targetPort": "http", "nodePort": 30080},
                      {"name": "dns", "port": 53, "protocol": "UDP"}],
            "sessionAffinity": "ClientIP", "externalTrafficPolicy": "Local",
        })))
        .unwrap();
        assert_eq!(s.kind, ServiceType::NodePort);
        assert_eq!(s.cluster_ip, Some(Ipv4Addr::new(10, 96, 0, 10)));
        assert_eq!(s.ports[0].target_port, TargetPort::Name("http".into()));
        assert_eq!(s.ports[0].node_port, Some(30080));
        assert_eq!(s.ports[1].protocol, Protocol::Udp);
        assert_eq!(s.ports[1].target_port, TargetPort::Number(53));
        assert_eq!(s.session_affinity_client_ip, Some(DEFAULT_AFFINITY_TIMEOUT));
        assert!(s.external_traffic_local && !s.internal_traffic_local);
        assert_eq!(s.created.to_rfc3339(), "2026-01-01T00:00:00+00:00");
    }

    #[test]
    fn parse_headless_and_selectorless() {
        let s = parse(&svc(json!({"clusterIP": "None", "selector": {}}))).unwrap();
        assert!(s.is_headless());
        assert_eq!(s.selector, None);
        assert!(endpoints(&s, &[pod("a", "10.244.0.5", true, json!({}))]).is_empty());
        assert!(parse(&svc(json!({"ports": [{"port": 70000}]}))).is_err());
        assert!(parse(&svc(json!({"type": "Weird"}))).is_err());
        assert!(parse(&json!({"metadata": {}})).is_err());
        // A numeric string targetPort is a number.
        let s = parse(&svc(json!({"ports": [{"port": 80, "targetPort": "8080"}]}))).unwrap();
        assert_eq!(s.ports[0].target_port, TargetPort::Number(8080));
    }

    #[test]
    fn selects_by_namespace_and_every_label() {
        let s = parse(&svc(json!({"selector": {"app": "web", "tier": "fe"},
                                  "ports": [{"port": 80}]})))
        .unwrap();
        let pod = |ns: &str, labels: Value| json!({"metadata": {"namespace": ns, "name": "p", "labels": labels}});
        assert!(selects(
            &s,
            &pod("default", json!({"app": "web", "tier": "fe", "x": "y"}))
        ));
        assert!(!selects(&s, &pod("default", json!({"app": "web"}))));
        assert!(!selects(
            &s,
            &pod("other", json!({"app": "web", "tier": "fe"}))
        ));
        let none = parse(&svc(json!({"clusterIP": "None", "selector": {}}))).unwrap();
        assert!(!selects(&none, &pod("default", json!({"app": "web"}))));
    }

    #[test]
    fn endpoints_carry_the_hostname_of_pods_in_the_services_subdomain() {
        let s = parse(&svc(
            json!({"clusterIP": "None", "selector": {"app": "web"},
            "ports": [{"name": "h", "port": 80, "targetPort": 8080}]}),
        ))
        .unwrap();
        let mut named = pod("web-0", "10.244.1.2", true, json!({"app": "web"}));
        named["spec"]["hostname"] = json!("web-0");
        named["spec"]["subdomain"] = json!("web");
        let mut elsewhere = pod("web-1", "10.244.1.3", true, json!({"app": "web"}));
        elsewhere["spec"]["hostname"] = json!("web-1");
        elsewhere["spec"]["subdomain"] = json!("other");
        let eps = endpoints(&s, &[named, elsewhere]);
        assert_eq!(eps[0].hostname.as_deref(), Some("web-0"));
        assert_eq!(eps[1].hostname, None, "its subdomain is another Service");
    }

    #[test]
    fn endpoints_select_ready_and_not_ready_pods_sorted() {
        let s = parse(&svc(
            json!({"clusterIP": "10.96.0.10", "selector": {"app": "web"},
            "ports": [{"name": "h", "port": 80, "targetPort": "http"},
                      {"name": "m", "port": 9000, "targetPort": 9100}]}),
        ))
        .unwrap();
        let mut other_ns = pod("z", "10.244.0.1", true, json!({"app": "web"}));
        other_ns["metadata"]["namespace"] = json!("other");
        let mut failed = pod("f", "10.244.0.2", true, json!({"app": "web"}));
        failed["status"]["phase"] = json!("Failed");
        let mut no_ip = pod("n", "", true, json!({"app": "web"}));
        no_ip["status"]["podIP"] = Value::Null;
        let mut deleting = pod("d", "10.244.0.3", true, json!({"app": "web"}));
        deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        let pods = vec![
            pod("b", "10.244.1.9", false, json!({"app": "web"})),
            pod("a", "10.244.1.10", true, json!({"app": "web", "x": "y"})),
            pod("c", "10.244.1.1", true, json!({"app": "db"})),
            other_ns,
            failed,
            no_ip,
            deleting,
        ];
        let eps = endpoints(&s, &pods);
        let names: Vec<&str> = eps.iter().map(|e| e.pod.as_str()).collect();
        assert_eq!(names, ["d", "b", "a"]);
        assert!(eps[0].terminating && eps[0].serving && !eps[0].ready);
        assert!(!eps[1].ready && !eps[1].serving);
        assert!(eps[2].ready);
        assert_eq!(eps[2].node, "n1");
        assert_eq!(eps[2].pod_uid, "uid-a");
        assert_eq!(
            eps[2].ports,
            [
                EndpointPort {
                    name: "h".into(),
                    protocol: Protocol::Tcp,
                    port: 8080
                },
                EndpointPort {
                    name: "m".into(),
                    protocol: Protocol::Tcp,
                    port: 9100
                }
            ]
        );
    }

    #[test]
    fn named_port_missing_or_other_protocol_leaves_the_port_out() {
        let s = parse(&svc(json!({"selector": {"app": "web"},
            "ports": [{"name": "u", "port": 80, "protocol": "UDP", "targetPort": "http"}]})))
        .unwrap();
        // The pod's "http" port is TCP: no port, so no endpoint.
        assert!(endpoints(&s, &[pod("a", "10.244.0.5", true, json!({"app": "web"}))]).is_empty());
        let s = parse(&svc(
            json!({"selector": {"app": "web"}, "publishNotReadyAddresses": true,
            "ports": [{"name": "a", "port": 80, "targetPort": "nope"},
                      {"name": "b", "port": 81}]}),
        ))
        .unwrap();
        let eps = endpoints(&s, &[pod("a", "10.244.0.5", false, json!({"app": "web"}))]);
        assert_eq!(eps.len(), 1);
        assert!(eps[0].ready, "publishNotReadyAddresses makes it ready");
        assert_eq!(eps[0].ports.len(), 1);
        assert_eq!(eps[0].ports[0].name, "b");
    }

    #[test]
    fn cluster_ip_pick_skips_reserved_and_taken() {
        let cidr: Ipv4Net = "10.96.0.0/29".parse().unwrap();
        // Assignable: .2 to .6.
        let mut taken = BTreeSet::new();
        for _ in 0..5 {
            let ip = pick_cluster_ip(cidr, "default", "web", &taken).unwrap();
            let last = ip.octets()[3];
            assert!((2..=6).contains(&last), "{ip}");
            assert!(taken.insert(ip));
        }
        assert_eq!(pick_cluster_ip(cidr, "default", "web", &taken), None);
        assert_eq!(
            pick_cluster_ip("10.96.0.0/30".parse().unwrap(), "a", "b", &BTreeSet::new()),
            None
        );
        // Deterministic and name-dependent.
        let big: Ipv4Net = "10.96.0.0/12".parse().unwrap();
        let a = pick_cluster_ip(big, "default", "a", &BTreeSet::new());
        assert_eq!(a, pick_cluster_ip(big, "default", "a", &BTreeSet::new()));
        assert_ne!(a, pick_cluster_ip(big, "default", "b", &BTreeSet::new()));
    }

    #[test]
    fn node_port_pick_stays_in_range_and_skips_taken() {
        let mut taken = BTreeSet::new();
        let first = pick_node_port("default", "web", 0, &taken).unwrap();
        assert!(NODE_PORT_RANGE.contains(&first));
        taken.insert(first);
        let second = pick_node_port("default", "web", 0, &taken).unwrap();
        assert_ne!(first, second);
        let all: BTreeSet<u16> = NODE_PORT_RANGE.collect();
        assert_eq!(pick_node_port("default", "web", 0, &all), None);
    }

    fn service(name: &str, created: &str, uid: &str, ip: &str, node_port: Option<u16>) -> Service {
        let mut port = json!({"port": 80});
        if let Some(p) = node_port {
            port["nodePort"] = json!(p);
        }
        parse(&json!({
            "metadata": {"namespace": "default", "name": name, "uid": uid,
                         "creationTimestamp": created},
            "spec": {"type": "NodePort", "clusterIP": ip, "ports": [port]},
        }))
        .unwrap()
    }

    #[test]
    fn repairs_move_the_losers_only() {
        let object = |name: &str, created: &str, ip: &str, node_port: u16| {
            json!({"metadata": {"namespace": "default", "name": name, "uid": name,
                                "creationTimestamp": created, "resourceVersion": "1"},
                   "spec": {"type": "NodePort", "clusterIP": ip, "clusterIPs": [ip],
                            "ports": [{"port": 80, "protocol": "TCP", "nodePort": node_port}]}})
        };
        let cidr: Ipv4Net = "10.96.0.0/12".parse().unwrap();
        let objects = [
            object("old", "2026-01-01T00:00:00Z", "10.96.0.5", 30001),
            object("new", "2026-01-02T00:00:00Z", "10.96.0.5", 30002),
            object("late", "2026-01-03T00:00:00Z", "10.96.0.6", 30001),
        ];
        let repairs = repairs(&objects, cidr, "99");
        let names: Vec<&str> = repairs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["late", "new"]);
        let late = &repairs[0].object;
        assert_eq!(late["spec"]["clusterIP"], "10.96.0.6");
        let moved = late["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
        assert!(moved != 30001 && moved != 30002, "{moved}");
        assert!(
            repairs[0].message.contains("NodePort 30001/TCP"),
            "{}",
            repairs[0].message
        );
        let new = &repairs[1].object;
        let ip = new["spec"]["clusterIP"].as_str().unwrap();
        assert!(ip != "10.96.0.5" && ip != "10.96.0.6");
        assert_eq!(new["spec"]["clusterIPs"], json!([ip]));
        assert_eq!(new["metadata"]["resourceVersion"], "99");
        assert!(repairs[1].message.contains("default/old, which keeps it"));
        // Applied, nothing conflicts any more.
        let mut fixed = objects.to_vec();
        fixed[1] = new.clone();
        fixed[2] = late.clone();
        assert!(super::repairs(&fixed, cidr, "100").is_empty());
    }

    #[test]
    fn conflicts_go_to_the_older_then_lower_uid() {
        let a = service("a", "2026-01-01T00:00:02Z", "u-a", "10.96.0.5", Some(30001));
        let b = service("b", "2026-01-01T00:00:01Z", "u-b", "10.96.0.5", Some(30002));
        let c = service("c", "2026-01-01T00:00:03Z", "u-z", "10.96.0.6", Some(30002));
        let d = service("d", "2026-01-01T00:00:03Z", "u-y", "10.96.0.7", Some(30009));
        let e = service("e", "2026-01-01T00:00:03Z", "u-x", "10.96.0.7", Some(30010));
        for order in [
            vec![a.clone(), b.clone(), c.clone(), d.clone(), e.clone()],
            vec![e.clone(), d.clone(), c.clone(), b.clone(), a.clone()],
        ] {
            let (kept, conflicts) = resolve_conflicts(&order);
            let names: Vec<&str> = kept.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(names, ["b", "c", "e"]);
            assert_eq!(kept[1].ports[0].node_port, None, "c lost its NodePort to b");
            assert_eq!(kept[0].ports[0].node_port, Some(30002));
            let key = |n: &str| ("default".to_string(), n.to_string());
            assert_eq!(
                conflicts,
                vec![
                    Conflict {
                        what: Contested::ClusterIp(Ipv4Addr::new(10, 96, 0, 5)),
                        winner: key("b"),
                        loser: key("a")
                    },
                    Conflict {
                        what: Contested::ClusterIp(Ipv4Addr::new(10, 96, 0, 7)),
                        winner: key("e"),
                        loser: key("d")
                    },
                    Conflict {
                        what: Contested::NodePort(Protocol::Tcp, 30002),
                        winner: key("b"),
                        loser: key("c")
                    },
                ]
            );
        }
    }
}
