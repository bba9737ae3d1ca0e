//! From Services and their endpoints (`model::service`) to the proxy's input: one
//! [`ServicePort`] per port of every Service that has a ClusterIP, with the endpoints that
//! should receive traffic on this node.

use std::collections::BTreeMap;

use super::{Backend, ServicePort};
use crate::model::service::{self, Endpoint, Service, ServiceType};

/// The endpoints of one Service port: the ready ones; if there are none, those still serving
/// while terminating (Kubernetes' terminating-endpoint fallback, so a rolling replacement
/// does not refuse connections while the old pods drain).
fn backends(sp: &service::ServicePort, endpoints: &[Endpoint], node: &str) -> Vec<Backend> {
    let pick = |e: &Endpoint| -> Option<Backend> {
        let p = e
            .ports
            .iter()
            .find(|p| p.name == sp.name && p.protocol == sp.protocol)?;
        Some(Backend {
            ip: e.ip,
            port: p.port,
            local: !node.is_empty() && e.node == node,
        })
    };
    let ready: Vec<Backend> = endpoints
        .iter()
        .filter(|e| e.ready)
        .filter_map(pick)
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    endpoints
        .iter()
        .filter(|e| e.serving && e.terminating)
        .filter_map(pick)
        .collect()
}

/// Every port of every Service with a ClusterIP (ExternalName and headless Services have
/// nothing to program), as seen from node `node`.
pub fn service_ports(
    services: &[Service],
    endpoints: &BTreeMap<(String, String), Vec<Endpoint>>,
    node: &str,
) -> Vec<ServicePort> {
    let none = Vec::new();
    let mut out = Vec::new();
    for s in services {
        if s.kind == ServiceType::ExternalName {
            continue;
        }
        let Some(cluster_ip) = s.cluster_ip else {
            continue;
        };
        let eps = endpoints.get(&s.key()).unwrap_or(&none);
        for sp in &s.ports {
            out.push(ServicePort {
                namespace: s.namespace.clone(),
                name: s.name.clone(),
                port_name: sp.name.clone(),
                protocol: sp.protocol,
                cluster_ip: Some(cluster_ip),
                port: sp.port,
                node_port: sp.node_port.filter(|_| s.kind.has_node_ports()),
                affinity_timeout: s.session_affinity_client_ip,
                external_local: s.external_traffic_local,
                internal_local: s.internal_traffic_local,
                backends: backends(sp, eps, node),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use core::net::Ipv4Addr;

    use super::*;
    use crate::model::service::{EndpointPort, TargetPort};

    fn svc(kind: ServiceType) -> Service {
        Service {
            namespace: "default".into(),
            name: "web".into(),
            uid: "u".into(),
            created: chrono::DateTime::UNIX_EPOCH,
            kind,
            cluster_ip: Some(Ipv4Addr::new(10, 96, 0, 10)),
            ports: vec![
                service::ServicePort {
                    name: "http".into(),
                    protocol: service::Protocol::Tcp,
                    port: 80,
                    target_port: TargetPort::Number(8080),
                    node_port: Some(30080),
                },
                service::ServicePort {
                    name: "dns".into(),
                    protocol: service::Protocol::Udp,
                    port: 53,
                    target_port: TargetPort::Number(53),
                    node_port: None,
                },
            ],
            selector: None,
            session_affinity_client_ip: Some(60),
            external_traffic_local: false,
            internal_traffic_local: false,
            publish_not_ready: false,
        }
    }

    fn ep(last: u8, node: &str, ready: bool, terminating: bool) -> Endpoint {
        Endpoint {
            ip: Ipv4Addr::new(10, 244, 0, last),
            node: node.into(),
            pod: format!("p{last}"),
            pod_uid: format!("u{last}"),
            ready,
            serving: ready || terminating,
            terminating,
            hostname: None,
            ports: vec![EndpointPort {
                name: "http".into(),
                protocol: service::Protocol::Tcp,
                port: 8080,
            }],
        }
    }

    #[test]
    fn ready_endpoints_per_port_with_locality() {
        let eps = BTreeMap::from([(
            ("default".to_string(), "web".to_string()),
            vec![
                ep(1, "n1", true, false),
                ep(2, "n2", true, false),
                ep(3, "n1", false, false),
            ],
        )]);
        let ports = service_ports(&[svc(ServiceType::NodePort)], &eps, "n1");
        assert_eq!(ports.len(), 2);
        let http = &ports[0];
        assert_eq!(
            (http.port, http.node_port, http.affinity_timeout),
            (80, Some(30080), Some(60))
        );
        assert_eq!(
            http.backends,
            vec![
                Backend {
                    ip: Ipv4Addr::new(10, 244, 0, 1),
                    port: 8080,
                    local: true
                },
                Backend {
                    ip: Ipv4Addr::new(10, 244, 0, 2),
                    port: 8080,
                    local: false
                },
            ]
        );
        assert!(ports[1].backends.is_empty(), "no pod serves the udp port");
        let cluster_ip_only = service_ports(&[svc(ServiceType::ClusterIP)], &eps, "n1");
        assert_eq!(cluster_ip_only[0].node_port, None);
    }

    #[test]
    fn terminating_endpoints_only_when_nothing_is_ready() {
        let key = ("default".to_string(), "web".to_string());
        let eps = BTreeMap::from([(
            key.clone(),
            vec![ep(1, "n1", false, true), ep(2, "n2", false, false)],
        )]);
        let ports = service_ports(&[svc(ServiceType::ClusterIP)], &eps, "n1");
        assert_eq!(ports[0].backends.len(), 1);
        let eps = BTreeMap::from([(
            key,
            vec![ep(1, "n1", false, true), ep(2, "n2", true, false)],
        )]);
        let ports = service_ports(&[svc(ServiceType::ClusterIP)], &eps, "n1");
        assert_eq!(ports[0].backends[0].ip, Ipv4Addr::new(10, 244, 0, 2));
    }

    #[test]
    fn headless_and_external_name_are_skipped() {
        let mut headless = svc(ServiceType::ClusterIP);
        headless.cluster_ip = None;
        let ports = service_ports(
            &[headless, svc(ServiceType::ExternalName)],
            &BTreeMap::new(),
            "n1",
        );
        assert!(ports.is_empty());
    }
}
