//! `containers[].ports[].hostPort`: what a pod asks of its node's ports, read the same way by
//! admission (defaulting and validation), the scheduler (Kubernetes' NodePorts filter: two
//! pods wanting the same port, protocol and overlapping host address never share a node) and
//! the proxy (the DNAT rules that carry `<node address>:hostPort` to the pod). Pure.

// `core::net` holds only the address value types (no sockets, no I/O).
use core::net::Ipv4Addr;

use serde_json::Value;

use super::service::Protocol;

/// Most host ports read from one pod spec (bounds user input).
const MAX_PORTS: usize = 256;

/// One port a pod wants on its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPort {
    pub protocol: Protocol,
    /// `hostIP`; `None` (unset or `0.0.0.0`) is every address of the node.
    pub host_ip: Option<Ipv4Addr>,
    pub port: u16,
    pub container_port: u16,
}

impl HostPort {
    /// Whether `self` and `other` cannot be on one node (Kubernetes' `HostPortInfo`): same
    /// protocol and port, and host addresses that overlap (an unset one overlaps all).
    pub fn conflicts(&self, other: &HostPort) -> bool {
        self.protocol == other.protocol
            && self.port == other.port
            && match (self.host_ip, other.host_ip) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

/// The host ports of a pod spec (JSON, as stored): every container's and init container's
/// `ports[]` with a non-zero `hostPort` (init containers: only sidecars keep theirs while the
/// pod runs, but Kubernetes counts them all). Entries that do not parse are left out.
pub fn of_spec(spec: &Value) -> Vec<HostPort> {
    ["containers", "initContainers"]
        .iter()
        .flat_map(|l| spec[*l].as_array().into_iter().flatten())
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .take(MAX_PORTS)
        .filter_map(|p| {
            let port = u16::try_from(p["hostPort"].as_u64()?)
                .ok()
                .filter(|p| *p != 0)?;
            let container_port = u16::try_from(p["containerPort"].as_u64()?).ok()?;
            let protocol = Protocol::parse(p["protocol"].as_str().unwrap_or("TCP"))?;
            let host_ip = match p["hostIP"].as_str().unwrap_or_default() {
                "" => None,
                ip => Some(ip.parse::<Ipv4Addr>().ok()?).filter(|ip| !ip.is_unspecified()),
            };
            Some(HostPort {
                protocol,
                host_ip,
                port,
                container_port,
            })
        })
        .collect()
}

/// Whether any two of `ports` conflict.
pub fn any_conflict(ports: &[HostPort]) -> bool {
    ports
        .iter()
        .enumerate()
        .any(|(i, a)| ports[i + 1..].iter().any(|b| a.conflicts(b)))
}

/// Kubernetes' defaulting: on a `hostNetwork` pod a port without `hostPort` gets
/// `hostPort = containerPort`.
pub fn default_spec(spec: &mut Value) {
    if spec["hostNetwork"] != Value::Bool(true) {
        return;
    }
    for list in ["containers", "initContainers"] {
        for c in spec[list].as_array_mut().into_iter().flatten() {
            for p in c["ports"].as_array_mut().into_iter().flatten() {
                let unset = p["hostPort"].is_null() || p["hostPort"].as_i64() == Some(0);
                if unset && p["containerPort"].is_number() && p.is_object() {
                    p["hostPort"] = p["containerPort"].clone();
                }
            }
        }
    }
}

/// A refused field: `(path, message)`.
pub type Problem = (String, String);

/// Admission checks of the pod's host ports: `hostIP` an IPv4 address (shoal's network is
/// IPv4), TCP or UDP only (SCTP host ports are not programmed), `hostPort` equal to
/// `containerPort` on a `hostNetwork` pod, and no `hostPort`/protocol/`hostIP` twice in the
/// pod (Kubernetes' `AccumulateUniqueHostPorts`).
pub fn validate(spec: &Value, path: &str) -> Vec<Problem> {
    let mut out = Vec::new();
    let host_network = spec["hostNetwork"] == Value::Bool(true);
    let mut seen: Vec<HostPort> = Vec::new();
    for list in ["containers", "initContainers"] {
        for (i, c) in spec[list].as_array().into_iter().flatten().enumerate() {
            for (j, p) in c["ports"].as_array().into_iter().flatten().enumerate() {
                let field = format!("{path}.{list}[{i}].ports[{j}]");
                let host_port = p["hostPort"].as_i64().unwrap_or(0);
                let container_port = p["containerPort"].as_i64().unwrap_or(0);
                if host_network && host_port != 0 && host_port != container_port {
                    out.push((
                        format!("{field}.hostPort"),
                        format!(
                            "Invalid value: {host_port}: must match `containerPort` when `hostNetwork` is true"
                        ),
                    ));
                }
                let host_ip = p["hostIP"].as_str().unwrap_or_default();
                if !host_ip.is_empty() && host_ip.parse::<Ipv4Addr>().is_err() {
                    out.push((
                        format!("{field}.hostIP"),
                        format!("Invalid value: {host_ip:?}: must be a valid IPv4 address (shoal's pod network is IPv4 only)"),
                    ));
                }
                if host_port == 0 {
                    continue;
                }
                let protocol = p["protocol"].as_str().unwrap_or("TCP");
                if protocol == "SCTP" {
                    out.push((
                        format!("{field}.protocol"),
                        "Unsupported value: \"SCTP\": supported values: \"TCP\", \"UDP\" (with hostPort)".into(),
                    ));
                }
                if let Some(hp) = of_spec(&serde_json::json!({"containers": [{"ports": [p]}]}))
                    .into_iter()
                    .next()
                {
                    let exact = |q: &HostPort| {
                        q.protocol == hp.protocol && q.port == hp.port && q.host_ip == hp.host_ip
                    };
                    if seen.iter().any(exact) {
                        out.push((
                            format!("{field}.hostPort"),
                            format!("Duplicate value: \"{}/{}\"", hp.port, hp.protocol.as_str()),
                        ));
                    }
                    seen.push(hp);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn hp(protocol: Protocol, ip: Option<[u8; 4]>, port: u16) -> HostPort {
        HostPort {
            protocol,
            host_ip: ip.map(Ipv4Addr::from),
            port,
            container_port: 80,
        }
    }

    #[test]
    fn reads_ports_with_host_ports() {
        let spec = json!({"containers": [{"name": "a", "ports": [
            {"containerPort": 80, "hostPort": 8080},
            {"containerPort": 53, "hostPort": 53, "protocol": "UDP", "hostIP": "10.0.0.1"},
            {"containerPort": 81},
            {"containerPort": 82, "hostPort": 0, "hostIP": "0.0.0.0"},
            {"containerPort": 83, "hostPort": 8083, "hostIP": "0.0.0.0"}]}],
            "initContainers": [{"name": "s", "ports": [{"containerPort": 9, "hostPort": 9}]}]});
        assert_eq!(
            of_spec(&spec),
            [
                HostPort {
                    protocol: Protocol::Tcp,
                    host_ip: None,
                    port: 8080,
                    container_port: 80
                },
                HostPort {
                    protocol: Protocol::Udp,
                    host_ip: Some(Ipv4Addr::new(10, 0, 0, 1)),
                    port: 53,
                    container_port: 53
                },
                HostPort {
                    protocol: Protocol::Tcp,
                    host_ip: None,
                    port: 8083,
                    container_port: 83
                },
                HostPort {
                    protocol: Protocol::Tcp,
                    host_ip: None,
                    port: 9,
                    container_port: 9
                },
            ]
        );
    }

    #[test]
    fn conflicts_as_kubernetes_counts_them() {
        let any = hp(Protocol::Tcp, None, 80);
        assert!(any.conflicts(&hp(Protocol::Tcp, Some([10, 0, 0, 1]), 80)));
        assert!(!any.conflicts(&hp(Protocol::Udp, None, 80)));
        assert!(!any.conflicts(&hp(Protocol::Tcp, None, 81)));
        assert!(!hp(Protocol::Tcp, Some([10, 0, 0, 1]), 80).conflicts(&hp(
            Protocol::Tcp,
            Some([10, 0, 0, 2]),
            80
        )));
        assert!(any_conflict(&[any, hp(Protocol::Udp, None, 80), any]));
        assert!(!any_conflict(&[any, hp(Protocol::Udp, None, 80)]));
    }

    #[test]
    fn host_network_defaults_and_checks() {
        let mut spec = json!({"hostNetwork": true, "containers": [{"name": "a", "ports": [
            {"containerPort": 80}, {"containerPort": 81, "hostPort": 0}]}]});
        default_spec(&mut spec);
        assert_eq!(spec["containers"][0]["ports"][0]["hostPort"], 80);
        assert_eq!(spec["containers"][0]["ports"][1]["hostPort"], 81);
        let mut pod_net = json!({"containers": [{"name": "a", "ports": [{"containerPort": 80}]}]});
        default_spec(&mut pod_net);
        assert!(pod_net["containers"][0]["ports"][0]["hostPort"].is_null());

        let bad = json!({"hostNetwork": true, "containers": [
            {"name": "a", "ports": [{"containerPort": 80, "hostPort": 8080},
                                    {"containerPort": 90, "hostPort": 90, "hostIP": "fe80::1"}]},
            {"name": "b", "ports": [{"containerPort": 90, "hostPort": 90, "protocol": "SCTP"},
                                    {"containerPort": 91, "hostPort": 91}]},
            {"name": "c", "ports": [{"containerPort": 91, "hostPort": 91}]}]});
        let fields: Vec<String> = validate(&bad, "spec").into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "spec.containers[0].ports[0].hostPort",
                "spec.containers[0].ports[1].hostIP",
                "spec.containers[1].ports[0].protocol",
                "spec.containers[2].ports[0].hostPort",
            ]
        );
    }

    proptest! {
        /// Conflict is symmetric, and a port always conflicts with itself and with the same
        /// port on every address.
        #[test]
        fn conflict_is_symmetric(
            a in (0u8..3, proptest::option::of(0u8..3), 1u16..4),
            b in (0u8..3, proptest::option::of(0u8..3), 1u16..4),
        ) {
            let proto = |p: u8| [Protocol::Tcp, Protocol::Udp, Protocol::Sctp][p as usize];
            let x = hp(proto(a.0), a.1.map(|o| [10, 0, 0, o]), a.2);
            let y = hp(proto(b.0), b.1.map(|o| [10, 0, 0, o]), b.2);
            prop_assert_eq!(x.conflicts(&y), y.conflicts(&x));
            prop_assert!(x.conflicts(&x));
            let any_address = HostPort { host_ip: None, ..x };
            prop_assert!(x.conflicts(&any_address));
        }
    }
}
