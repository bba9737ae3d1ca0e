//! The cluster DNS zone: what each name under the cluster domain answers, built from the
//! Services and their ready endpoints ([`ServiceEntry`]). Pure; rebuilt whole on every change.

use std::collections::{BTreeMap, BTreeSet};

use core::net::Ipv4Addr;

use crate::model::service::{Endpoint, Protocol, Service, ServiceType};

/// A named port of a Service (or of one endpoint of a headless Service), for SRV records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedPort {
    /// The port's name (a DNS label); unnamed ports get no SRV record.
    pub name: String,
    /// `TCP`, `UDP` or `SCTP` (any case).
    pub protocol: String,
    pub port: u16,
}

/// One ready endpoint of a headless Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeadlessEndpoint {
    pub ip: Ipv4Addr,
    /// The pod's hostname when its subdomain is the Service's name: the endpoint is also
    /// `<hostname>.<service>.<ns>.svc.<domain>` (a StatefulSet's `web-0.web...`).
    pub hostname: Option<String>,
    /// The endpoint's ports (the pods' target ports), by name.
    pub ports: Vec<NamedPort>,
}

/// What a Service's name resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceTarget {
    /// A ClusterIP (also NodePort and LoadBalancer) Service: its ClusterIP.
    ClusterIp(Ipv4Addr),
    /// A headless Service (`clusterIP: None`): its ready endpoints.
    Headless(Vec<HeadlessEndpoint>),
    /// An `ExternalName` Service: a CNAME to this name.
    ExternalName(String),
}

/// One Service as the zone sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    pub namespace: String,
    pub name: String,
    pub target: ServiceTarget,
    /// The Service's ports (for a ClusterIP Service, the SRV records carry these).
    pub ports: Vec<NamedPort>,
}

/// One record of the zone (the owner name is the key it is stored under).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ZoneRecord {
    A(Ipv4Addr),
    /// Target name, lowercase, without the trailing dot.
    Cname(String),
    /// `0 <weight> port target` (target lowercase, without the trailing dot).
    Srv {
        weight: u16,
        port: u16,
        target: String,
    },
}

/// The zone: every name under the cluster domain that exists, with its records. Names are
/// lowercase, dot-separated, without the trailing dot. A name with no records but with names
/// below it (an "empty non-terminal", e.g. `NS.svc.cluster.local`) exists with an empty set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Zone {
    domain: String,
    serial: u32,
    names: BTreeMap<String, BTreeSet<ZoneRecord>>,
}

/// The lowercase dashed form of an address used as an endpoint's name: `10-244-1-5`.
pub fn dashed(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("{a}-{b}-{c}-{d}")
}

/// A DNS label we are willing to publish: 1–63 of `[a-z0-9-]` (after lowercasing). Anything
/// else (which validation should have refused already) is left out of the zone.
fn is_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A name for a CNAME target: dot-separated labels of printable ASCII without spaces,
/// at most 253 characters, a trailing dot allowed.
fn cname_target(text: &str) -> Option<String> {
    let name = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_graphic()));
    ok.then_some(name)
}

impl Zone {
    /// The zone of `domain` (e.g. `cluster.local`) holding `services`. `serial` is the SOA
    /// serial (the caller bumps it on every rebuild). Entries with names that are not DNS
    /// labels are skipped.
    pub fn build(domain: &str, serial: u32, services: &[ServiceEntry]) -> Zone {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let mut zone = Zone {
            domain,
            serial,
            names: BTreeMap::new(),
        };
        zone.names.insert(zone.domain.clone(), BTreeSet::new());
        for service in services {
            zone.add_service(service);
        }
        zone
    }

    fn add_service(&mut self, service: &ServiceEntry) {
        let namespace = service.namespace.to_ascii_lowercase();
        let name = service.name.to_ascii_lowercase();
        if !is_label(&namespace) || !is_label(&name) {
            return;
        }
        let fqdn = format!("{name}.{namespace}.svc.{}", self.domain);
        let srv_name = |port: &NamedPort| -> Option<String> {
            let pname = port.name.to_ascii_lowercase();
            let proto = port.protocol.to_ascii_lowercase();
            (is_label(&pname) && is_label(&proto)).then(|| format!("_{pname}._{proto}.{fqdn}"))
        };
        match &service.target {
            ServiceTarget::ClusterIp(ip) => {
                self.add(&fqdn, ZoneRecord::A(*ip));
                for port in &service.ports {
                    if let Some(owner) = srv_name(port) {
                        let srv = ZoneRecord::Srv {
                            weight: 100,
                            port: port.port,
                            target: fqdn.clone(),
                        };
                        self.add(&owner, srv);
                    }
                }
            }
            ServiceTarget::Headless(endpoints) => {
                self.add_empty(&fqdn);
                let weight = (100 / endpoints.len().max(1)).max(1) as u16;
                for endpoint in endpoints {
                    // The pod's own name when it has one (its SRV target too), else its
                    // dashed address.
                    let label = endpoint
                        .hostname
                        .as_deref()
                        .map(str::to_ascii_lowercase)
                        .filter(|h| is_label(h))
                        .unwrap_or_else(|| dashed(endpoint.ip));
                    let host = format!("{label}.{fqdn}");
                    self.add(&fqdn, ZoneRecord::A(endpoint.ip));
                    self.add(&host, ZoneRecord::A(endpoint.ip));
                    for port in &endpoint.ports {
                        if let Some(owner) = srv_name(port) {
                            let srv = ZoneRecord::Srv {
                                weight,
                                port: port.port,
                                target: host.clone(),
                            };
                            self.add(&owner, srv);
                        }
                    }
                }
            }
            ServiceTarget::ExternalName(target) => match cname_target(target) {
                Some(target) => self.add(&fqdn, ZoneRecord::Cname(target)),
                None => self.add_empty(&fqdn),
            },
        }
    }

    /// Adds a record at `owner` and makes every name between it and the domain exist.
    fn add(&mut self, owner: &str, record: ZoneRecord) {
        self.add_empty(owner);
        if let Some(set) = self.names.get_mut(owner) {
            set.insert(record);
        }
    }

    fn add_empty(&mut self, owner: &str) {
        let mut name = owner;
        loop {
            self.names.entry(name.to_string()).or_default();
            if name == self.domain {
                break;
            }
            match name.split_once('.') {
                Some((_, parent)) => name = parent,
                None => break,
            }
        }
    }

    /// Whether both zones hold the same names and records (serials aside).
    pub fn same_records(&self, other: &Zone) -> bool {
        self.domain == other.domain && self.names == other.names
    }

    /// The cluster domain (lowercase, no trailing dot).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// The records of `name` (lowercase, no trailing dot): `None` if the name does not exist,
    /// an empty set if it exists without records.
    pub fn lookup(&self, name: &str) -> Option<&BTreeSet<ZoneRecord>> {
        self.names.get(name)
    }

    /// Whether `name` (lowercase, no trailing dot) is the cluster domain or below it.
    pub fn is_inside(&self, name: &str) -> bool {
        name == self.domain
            || name
                .strip_suffix(self.domain.as_str())
                .is_some_and(|rest| rest.ends_with('.'))
    }

    /// How many names the zone holds (the domain itself included).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// The zone's view of the Services the data path uses (`agent::services::snapshot`):
/// ClusterIP, NodePort and LoadBalancer Services by their ClusterIP, headless ones by their
/// ready endpoints, ExternalName ones by the name in `external_names` (`(namespace, name)` →
/// `spec.externalName`; one without it is left out).
pub fn entries(
    services: &[Service],
    endpoints: &BTreeMap<(String, String), Vec<Endpoint>>,
    external_names: &BTreeMap<(String, String), String>,
) -> Vec<ServiceEntry> {
    let named = |name: &str, protocol: Protocol, port: u16| NamedPort {
        name: name.to_string(),
        protocol: protocol.as_str().to_string(),
        port,
    };
    services
        .iter()
        .filter_map(|service| {
            let key = service.key();
            let target = match (service.kind, service.cluster_ip) {
                (ServiceType::ExternalName, _) => {
                    ServiceTarget::ExternalName(external_names.get(&key)?.clone())
                }
                (_, Some(ip)) => ServiceTarget::ClusterIp(ip),
                (_, None) => ServiceTarget::Headless(
                    endpoints
                        .get(&key)
                        .into_iter()
                        .flatten()
                        .filter(|e| e.ready)
                        .map(|e| HeadlessEndpoint {
                            ip: e.ip,
                            hostname: e.hostname.clone(),
                            ports: e
                                .ports
                                .iter()
                                .map(|p| named(&p.name, p.protocol, p.port))
                                .collect(),
                        })
                        .collect(),
                ),
            };
            Some(ServiceEntry {
                namespace: service.namespace.clone(),
                name: service.name.clone(),
                target,
                ports: service
                    .ports
                    .iter()
                    .map(|p| named(&p.name, p.protocol, p.port))
                    .collect(),
            })
        })
        .collect()
}
