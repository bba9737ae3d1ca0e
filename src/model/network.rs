//! Names and addresses every part of the pod network agrees on: the node bridge and the pod
//! interface, the gateway of a node's pod subnet (also where the node's DNS server listens),
//! the cluster DNS domain and a pod's `resolv.conf`, the Service address defaults and the
//! NodePort range, and a pod's `resolv.conf` for its `dnsPolicy`/`dnsConfig`
//! ([`pod_resolv_conf`]). Pure: no I/O.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

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

/// Most nameservers a `resolv.conf` takes (glibc's `MAXNS`; Kubernetes' limit).
pub const MAX_NAMESERVERS: usize = 3;
/// Most search domains (Kubernetes' `MaxDNSSearchPaths`).
pub const MAX_SEARCHES: usize = 32;
/// Most characters of the search list, spaces included (Kubernetes' `MaxDNSSearchListChars`).
pub const MAX_SEARCH_CHARS: usize = 2048;
/// The `dnsPolicy` values Kubernetes knows.
pub const DNS_POLICIES: &[&str] = &["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"];

/// A pod's DNS settings as the kubelet needs them to write its `resolv.conf`: `spec.dnsPolicy`
/// (empty is `ClusterFirst`) and `spec.dnsConfig` (empty lists when unset).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodDns {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub policy: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub searches: Vec<String>,
    /// `options[]`: name and optional value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<(String, Option<String>)>,
}

/// What a `resolv.conf` says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

impl ResolvConf {
    /// The `nameserver`, `search` (or `domain`) and `options` lines of a `resolv.conf` (the
    /// last `search`/`domain` line wins, as in glibc); anything else is ignored.
    pub fn parse(text: &str) -> Self {
        let mut out = ResolvConf::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => out.nameservers.extend(words.next().map(str::to_string)),
                Some("search" | "domain") => {
                    out.searches = words.map(str::to_string).collect();
                }
                Some("options") => out.options.extend(words.map(str::to_string)),
                _ => {}
            }
        }
        out
    }

    /// The file: `nameserver` lines, then `search` and `options` when not empty.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for ns in &self.nameservers {
            out.push_str(&format!("nameserver {ns}\n"));
        }
        if !self.searches.is_empty() {
            out.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }
}

fn dedup_in_order(items: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    items
        .into_iter()
        .filter(|i| seen.insert(i.clone()))
        .collect()
}

/// The `resolv.conf` of a pod, as the Kubernetes kubelet forms it (`GetPodDNS`):
///
/// - `ClusterFirst`: the cluster DNS (the node's DNS server at `cluster_dns`) with the
///   namespace's search path and `ndots:5` ([`resolv_conf`]); on a `hostNetwork` pod, or
///   without a cluster DNS (no pod network), the node's own file instead (`Default`).
/// - `ClusterFirstWithHostNet`: the cluster DNS, also for `hostNetwork` pods.
/// - `Default`: the node's `resolv.conf` (`node_resolv`).
/// - `None`: nothing but `dnsConfig`.
///
/// `dnsConfig` is then merged in: its nameservers and searches appended (duplicates dropped),
/// its options override the base's of the same name (sorted by name). The result keeps at most
/// [`MAX_NAMESERVERS`] nameservers and [`MAX_SEARCHES`] searches, as the kubelet trims them.
pub fn pod_resolv_conf(
    dns: &PodDns,
    host_network: bool,
    namespace: &str,
    cluster_dns: Option<Ipv4Addr>,
    node_resolv: &str,
) -> String {
    let cluster = match dns.policy.as_str() {
        "None" => None,
        "Default" => Some(false),
        "ClusterFirstWithHostNet" => Some(cluster_dns.is_some()),
        // ClusterFirst (and anything unknown, which admission refuses).
        _ => Some(!host_network && cluster_dns.is_some()),
    };
    let mut base = match (cluster, cluster_dns) {
        (None, _) => ResolvConf::default(),
        (Some(true), Some(ns)) => ResolvConf::parse(&resolv_conf(namespace, ns)),
        (Some(_), _) => ResolvConf::parse(node_resolv),
    };
    base.nameservers = dedup_in_order(
        base.nameservers
            .into_iter()
            .chain(dns.nameservers.iter().cloned())
            .collect(),
    );
    base.searches = dedup_in_order(
        base.searches
            .into_iter()
            .chain(
                dns.searches
                    .iter()
                    .map(|s| s.trim_end_matches('.').to_string()),
            )
            .filter(|s| !s.is_empty())
            .collect(),
    );
    if !dns.options.is_empty() {
        let mut options: std::collections::BTreeMap<String, Option<String>> = base
            .options
            .iter()
            .map(|o| match o.split_once(':') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (o.clone(), None),
            })
            .collect();
        for (name, value) in &dns.options {
            options.insert(name.clone(), value.clone().filter(|v| !v.is_empty()));
        }
        base.options = options
            .into_iter()
            .map(|(n, v)| match v {
                Some(v) if !v.is_empty() => format!("{n}:{v}"),
                _ => n,
            })
            .collect();
    }
    base.nameservers.truncate(MAX_NAMESERVERS);
    base.searches.truncate(MAX_SEARCHES);
    base.render()
}

/// Admission checks of `dnsPolicy` and `dnsConfig`, as Kubernetes' `validatePodDNSConfig`:
/// a known policy; `None` needs a `dnsConfig` with at least one nameserver; at most
/// [`MAX_NAMESERVERS`] nameservers, each an IP address; at most [`MAX_SEARCHES`] searches of
/// at most [`MAX_SEARCH_CHARS`] characters in all, each a DNS subdomain; every option named.
/// Returns `(field, message)` pairs.
pub fn validate_dns(spec: &serde_json::Value, path: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let policy = spec["dnsPolicy"].as_str().unwrap_or_default();
    if !policy.is_empty() && !DNS_POLICIES.contains(&policy) {
        let list: Vec<String> = DNS_POLICIES.iter().map(|p| format!("{p:?}")).collect();
        out.push((
            format!("{path}.dnsPolicy"),
            format!(
                "Unsupported value: {policy:?}: supported values: {}",
                list.join(", ")
            ),
        ));
    }
    let config = &spec["dnsConfig"];
    let field = |f: &str| format!("{path}.dnsConfig.{f}");
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|s| s.as_str().unwrap_or_default().to_string())
            .collect()
    };
    let nameservers = strings(&config["nameservers"]);
    if policy == "None" {
        if config.is_null() {
            out.push((
                format!("{path}.dnsConfig"),
                "Required value: must provide `dnsConfig` when `dnsPolicy` is None".into(),
            ));
        } else if nameservers.is_empty() {
            out.push((
                field("nameservers"),
                "Required value: must provide at least one DNS nameserver when `dnsPolicy` is None"
                    .into(),
            ));
        }
    }
    if config.is_null() {
        return out;
    }
    if nameservers.len() > MAX_NAMESERVERS {
        out.push((
            field("nameservers"),
            format!(
                "Invalid value: {:?}: must not have more than {MAX_NAMESERVERS} nameservers",
                nameservers
            ),
        ));
    }
    for (i, ns) in nameservers.iter().enumerate() {
        if ns.parse::<std::net::IpAddr>().is_err() {
            out.push((
                format!("{}[{i}]", field("nameservers")),
                format!("Invalid value: {ns:?}: must be a valid IP address"),
            ));
        }
    }
    let searches = strings(&config["searches"]);
    if searches.len() > MAX_SEARCHES {
        out.push((
            field("searches"),
            format!(
                "Invalid value: {searches:?}: must not have more than {MAX_SEARCHES} search paths"
            ),
        ));
    }
    let chars = searches.iter().map(String::len).sum::<usize>() + searches.len().saturating_sub(1);
    if chars > MAX_SEARCH_CHARS {
        out.push((
            field("searches"),
            format!(
                "Invalid value: {searches:?}: must not have more than {MAX_SEARCH_CHARS} characters (including spaces) in the search list"
            ),
        ));
    }
    for (i, s) in searches.iter().enumerate() {
        // A trailing dot is allowed (an absolute name).
        let name = s.strip_suffix('.').unwrap_or(s);
        if !super::is_dns1123_subdomain(name) {
            out.push((
                format!("{}[{i}]", field("searches")),
                format!("Invalid value: {s:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"),
            ));
        }
    }
    for (i, o) in config["options"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if o["name"].as_str().is_none_or(str::is_empty) {
            out.push((
                format!("{}[{i}].name", field("options")),
                "Required value: must not be empty".into(),
            ));
        }
    }
    out
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

    const NODE: &str = "# generated\nnameserver 192.0.2.53\nnameserver 192.0.2.54\nsearch corp.example\noptions edns0 ndots:2\n";

    fn dns(policy: &str) -> PodDns {
        PodDns {
            policy: policy.into(),
            ..PodDns::default()
        }
    }

    #[test]
    fn policies_pick_the_base() {
        let gw = Some(Ipv4Addr::new(10, 244, 3, 1));
        let cluster = resolv_conf("shop", Ipv4Addr::new(10, 244, 3, 1));
        let node = "nameserver 192.0.2.53\nnameserver 192.0.2.54\nsearch corp.example\noptions edns0 ndots:2\n";
        assert_eq!(pod_resolv_conf(&dns(""), false, "shop", gw, NODE), cluster);
        assert_eq!(
            pod_resolv_conf(&dns("ClusterFirst"), false, "shop", gw, NODE),
            cluster
        );
        // ClusterFirst on the host network is Default; ClusterFirstWithHostNet is cluster DNS.
        assert_eq!(
            pod_resolv_conf(&dns("ClusterFirst"), true, "shop", gw, NODE),
            node
        );
        assert_eq!(
            pod_resolv_conf(&dns("ClusterFirstWithHostNet"), true, "shop", gw, NODE),
            cluster
        );
        // Without a cluster DNS (no pod network) ClusterFirst falls back to the node's.
        assert_eq!(
            pod_resolv_conf(&dns("ClusterFirst"), false, "shop", None, NODE),
            node
        );
        assert_eq!(
            pod_resolv_conf(&dns("Default"), false, "shop", gw, NODE),
            node
        );
        assert_eq!(pod_resolv_conf(&dns("None"), false, "shop", gw, NODE), "");
    }

    #[test]
    fn dns_config_is_merged_as_kubernetes_does() {
        let gw = Some(Ipv4Addr::new(10, 244, 3, 1));
        let none = PodDns {
            policy: "None".into(),
            nameservers: vec!["1.1.1.1".into(), "8.8.8.8".into()],
            searches: vec!["a.example.".into(), "b.example".into()],
            options: vec![("ndots".into(), Some("2".into())), ("edns0".into(), None)],
        };
        assert_eq!(
            pod_resolv_conf(&none, false, "shop", gw, NODE),
            "nameserver 1.1.1.1\nnameserver 8.8.8.8\nsearch a.example b.example\noptions edns0 ndots:2\n"
        );
        let merged = PodDns {
            policy: "ClusterFirst".into(),
            nameservers: vec!["10.244.3.1".into(), "1.1.1.1".into(), "8.8.8.8".into()],
            searches: vec!["svc.cluster.local".into(), "extra.example".into()],
            options: vec![
                ("ndots".into(), Some("1".into())),
                ("single-request".into(), None),
            ],
        };
        assert_eq!(
            pod_resolv_conf(&merged, false, "shop", gw, NODE),
            "nameserver 10.244.3.1\nnameserver 1.1.1.1\nnameserver 8.8.8.8\n\
             search shop.svc.cluster.local svc.cluster.local cluster.local extra.example\n\
             options ndots:1 single-request\n",
            "duplicates dropped, options overridden by name"
        );
        // The node's two nameservers plus two more: only three are kept.
        let default = PodDns {
            policy: "Default".into(),
            nameservers: vec!["1.1.1.1".into(), "8.8.8.8".into()],
            ..PodDns::default()
        };
        let conf = ResolvConf::parse(&pod_resolv_conf(&default, false, "shop", gw, NODE));
        assert_eq!(conf.nameservers, ["192.0.2.53", "192.0.2.54", "1.1.1.1"]);
        assert_eq!(conf.options, ["edns0", "ndots:2"]);
    }

    #[test]
    fn dns_admission() {
        let fields = |spec: serde_json::Value| -> Vec<String> {
            validate_dns(&spec, "spec")
                .into_iter()
                .map(|(f, _)| f)
                .collect()
        };
        assert!(fields(serde_json::json!({"dnsPolicy": "ClusterFirst"})).is_empty());
        assert!(
            fields(serde_json::json!({"dnsPolicy": "None", "dnsConfig": {
            "nameservers": ["1.1.1.1", "2001:db8::1"], "searches": ["a.example."],
            "options": [{"name": "ndots", "value": "2"}]}}))
            .is_empty()
        );
        assert_eq!(
            fields(serde_json::json!({"dnsPolicy": "Custom"})),
            ["spec.dnsPolicy"]
        );
        assert_eq!(
            fields(serde_json::json!({"dnsPolicy": "None"})),
            ["spec.dnsConfig"]
        );
        assert_eq!(
            fields(serde_json::json!({"dnsPolicy": "None", "dnsConfig": {"searches": ["x"]}})),
            ["spec.dnsConfig.nameservers"]
        );
        let many: Vec<String> = (0..33).map(|i| format!("s{i}.example")).collect();
        let long: Vec<String> = (0..9).map(|i| format!("{i}{}", "a".repeat(250))).collect();
        assert_eq!(
            fields(serde_json::json!({"dnsConfig": {
                "nameservers": ["1.1.1.1", "1.1.1.2", "1.1.1.3", "not-an-ip"],
                "searches": many, "options": [{"value": "1"}]}})),
            [
                "spec.dnsConfig.nameservers",
                "spec.dnsConfig.nameservers[3]",
                "spec.dnsConfig.searches",
                "spec.dnsConfig.options[0].name"
            ]
        );
        let f = fields(serde_json::json!({"dnsConfig": {"searches": long}}));
        assert_eq!(f[0], "spec.dnsConfig.searches", "over 2048 characters");
        assert_eq!(
            fields(serde_json::json!({"dnsConfig": {"searches": ["Bad_Name"]}})),
            ["spec.dnsConfig.searches[0]"]
        );
    }
}
