//! Names and addresses every part of the pod network agrees on: the node bridge and the pod
//! interface, the gateway of a node's pod subnet (also where the node's DNS server listens),
//! the cluster DNS domain and a pod's `resolv.conf`, the Service address defaults and the
//! NodePort range. Pure: no I/O.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use ipnet::Ipv4Net;

/// The Linux bridge in each node's network namespace that pods' veths attach to.
pub const BRIDGE: &str = "shoal0";
/// The pod's side of its veth.
pub const POD_IFNAME: &str = "eth0";
/// The CNI network name (host-local keeps its leases under this name).
pub const CNI_NETWORK: &str = "shoal";
/// The cluster DNS domain: Services are `NAME.NAMESPACE.svc.cluster.local`.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// Default Service address space (`shoal init --service-cidr`); Kubernetes' own default.
pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/12";
/// NodePorts are allocated from here, as Kubernetes' default `--service-node-port-range`.
pub const NODE_PORT_RANGE: RangeInclusive<u16> = 30000..=32767;
/// The port the node's DNS server answers on (UDP and TCP), at the gateway address.
pub const DNS_PORT: u16 = 53;

/// Parses `a.b.c.d/p` without host bits.
pub fn parse_cidr(cidr: &str) -> Option<Ipv4Net> {
    let net: Ipv4Net = cidr.parse().ok()?;
    (net.trunc() == net).then_some(net)
}

/// The gateway of a node's pod subnet: its first host address (the bridge's address, the pods'
/// default route, and the address the node's DNS server listens on).
pub fn gateway(pod_cidr: &str) -> Option<Ipv4Addr> {
    let net = parse_cidr(pod_cidr)?;
    if net.prefix_len() > 30 {
        return None;
    }
    Some(Ipv4Addr::from(u32::from(net.network()) + 1))
}

/// The `resolv.conf` of a pod in `namespace` whose node's DNS server is at `nameserver`
/// (Kubernetes' `ClusterFirst` policy).
pub fn resolv_conf(namespace: &str, nameserver: Ipv4Addr) -> String {
    format!(
        "nameserver {nameserver}\nsearch {namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\noptions ndots:5\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_is_the_first_host() {
        assert_eq!(gateway("10.244.3.0/24"), Some(Ipv4Addr::new(10, 244, 3, 1)));
        assert_eq!(
            gateway("10.244.0.16/28"),
            Some(Ipv4Addr::new(10, 244, 0, 17))
        );
        assert_eq!(gateway("10.244.3.1/24"), None, "host bits set");
        assert_eq!(gateway("10.244.3.0/31"), None, "no room for hosts");
        assert_eq!(gateway("nonsense"), None);
    }

    #[test]
    fn resolv_conf_searches_the_namespace_first() {
        let conf = resolv_conf("shop", Ipv4Addr::new(10, 244, 3, 1));
        assert_eq!(
            conf,
            "nameserver 10.244.3.1\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
        );
    }
}
