//! The model of table `ip shoal` — chains (hooked or not) with their rules as nft text, the
//! four verdict maps' elements, the session-affinity sets — and [`build`], which computes it
//! from the desired state. The layout follows kube-proxy's nftables mode; pods' host ports
//! (chain `hostports`, before the Services) follow the CNI `portmap` plugin.

use std::collections::{BTreeMap, BTreeSet};

use super::names::{affinity_set, endpoint_chain, service_chain};
use super::{Backend, Desired, HostPortRule, ServicePort};

/// The verdict maps and their declarations (fixed: created by [`super::full`], only their
/// elements change afterwards).
pub const MAPS: &[(&str, &str)] = &[
    (
        SERVICE_IPS,
        "type ipv4_addr . inet_proto . inet_service : verdict ;",
    ),
    (
        SERVICE_NODEPORTS,
        "type inet_proto . inet_service : verdict ;",
    ),
    (
        NO_ENDPOINT_SERVICES,
        "type ipv4_addr . inet_proto . inet_service : verdict ;",
    ),
    (
        NO_ENDPOINT_NODEPORTS,
        "type inet_proto . inet_service : verdict ;",
    ),
];

/// ClusterIP . protocol . port → `goto svc-…` (ports with endpoints).
pub const SERVICE_IPS: &str = "service-ips";
/// protocol . nodePort → `goto ext-…`, matched on traffic to any local address.
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
/// ClusterIP . protocol . port → `goto reject-chain` (ports without endpoints).
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
/// protocol . nodePort → `goto reject-chain`.
pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";

/// The packet mark that asks `masquerading` (postrouting) to masquerade a connection.
const MASQ_MARK: &str = "0x00004000";

/// One chain: its base-chain declaration (`type … hook … priority …`) if hooked, and its rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    pub hook: Option<String>,
    pub rules: Vec<String>,
}

/// The whole table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub chains: BTreeMap<String, Chain>,
    /// Map name → element key → verdict, for each of [`MAPS`].
    pub maps: BTreeMap<String, BTreeMap<String, String>>,
    /// Session-affinity sets: name → timeout in seconds.
    pub sets: BTreeMap<String, u32>,
}

impl Ruleset {
    /// Service ports with a ClusterIP rule (with or without endpoints).
    pub fn service_ips(&self) -> usize {
        self.map_len(SERVICE_IPS) + self.map_len(NO_ENDPOINT_SERVICES)
    }

    fn map_len(&self, map: &str) -> usize {
        self.maps.get(map).map_or(0, BTreeMap::len)
    }

    fn chain(&mut self, name: &str, hook: Option<&str>, rules: Vec<String>) {
        self.chains.insert(
            name.to_string(),
            Chain {
                hook: hook.map(str::to_string),
                rules,
            },
        );
    }

    fn element(&mut self, map: &str, key: String, verdict: String) -> bool {
        let elements = self.maps.entry(map.to_string()).or_default();
        if elements.contains_key(&key) {
            return false; // a conflicting port already holds it: first (in sort order) wins
        }
        elements.insert(key, verdict);
        true
    }
}

/// Pods' host ports: `<node address>:hostPort` → `<pod IP>:containerPort` (jumped from
/// `nat-prerouting` and `nat-output` before the Services).
pub const HOST_PORTS: &str = "hostports";

/// The rules of [`HOST_PORTS`]: per host port, a connection from the pod to itself (hairpin)
/// is marked for masquerading (else its replies would not come back through the DNAT), then
/// DNATed. A port without `hostIP` matches every local address except loopback (as NodePorts
/// do). Sorted; a later rule conflicting with an earlier one (same port and protocol,
/// overlapping address) is left out: the scheduler never places two such pods on one node.
fn host_port_rules(ports: &[HostPortRule]) -> Vec<String> {
    let mut sorted: Vec<HostPortRule> = ports
        .iter()
        .copied()
        .filter(|p| p.host_port != 0 && p.container_port != 0)
        .collect();
    sorted.sort();
    sorted.dedup();
    let mut kept: Vec<HostPortRule> = Vec::new();
    let mut rules = Vec::new();
    for p in sorted {
        let overlaps = |q: &HostPortRule| {
            q.protocol == p.protocol
                && q.host_port == p.host_port
                && (q.host_ip.is_none() || p.host_ip.is_none() || q.host_ip == p.host_ip)
        };
        if kept.iter().any(overlaps) {
            continue;
        }
        kept.push(p);
        let proto = p.protocol.nft();
        let to = match p.host_ip {
            Some(ip) => format!("ip daddr {ip}"),
            None => "fib daddr type local ip daddr != 127.0.0.0/8".to_string(),
        };
        let matched = format!("{to} {proto} dport {}", p.host_port);
        rules.push(format!(
            "{matched} ip saddr {} jump mark-for-masquerade",
            p.pod_ip
        ));
        rules.push(format!(
            "{matched} dnat to {}:{}",
            p.pod_ip, p.container_port
        ));
    }
    rules
}

/// Pods to this node's agent, at any local address (jumped from `filter-input`).
pub const POD_TO_AGENT: &str = "pods-to-agent";
/// Pods to any node's advertised agent endpoints (jumped from `filter-forward`).
pub const POD_TO_AGENTS: &str = "pods-to-agents";

/// The rules of [`POD_TO_AGENT`] and [`POD_TO_AGENTS`] (`None` for an empty list: nft refuses
/// an empty anonymous set).
fn pod_firewall(node: &super::NodeFacts) -> (Option<String>, Option<String>) {
    let local: BTreeSet<String> = node
        .agent_ports
        .iter()
        .filter(|(_, port)| *port != 0)
        .map(|(proto, port)| format!("{} . {port}", proto.nft()))
        .collect();
    let all: BTreeSet<String> = node
        .agents
        .iter()
        .filter(|(ip, _, port)| *port != 0 && !ip.is_unspecified())
        .map(|(ip, proto, port)| format!("{ip} . {} . {port}", proto.nft()))
        .collect();
    let set = |elements: BTreeSet<String>| elements.into_iter().collect::<Vec<_>>().join(", ");
    (
        (!local.is_empty()).then(|| {
            format!(
                "meta l4proto . th dport {{ {} }} goto reject-chain",
                set(local)
            )
        }),
        (!all.is_empty()).then(|| {
            format!(
                "ip daddr . meta l4proto . th dport {{ {} }} goto reject-chain",
                set(all)
            )
        }),
    )
}

/// The static part: hooked chains, dispatch, the no-endpoint checks, masquerading.
fn base(desired: &Desired) -> Ruleset {
    let mut r = Ruleset::default();
    for (name, _) in MAPS {
        r.maps.insert(name.to_string(), BTreeMap::new());
    }
    // Numeric priorities: nft 1.0.6 accepts `dstnat` only at prerouting (-100 = dstnat,
    // 100 = srcnat).
    let nat = |hook: &str, priority: &str| {
        format!("type nat hook {hook} priority {priority} ; policy accept ;")
    };
    // Just before the conntrack-confirming filter hooks, as kube-proxy: -10 = filter - 10.
    let filter = |hook: &str| format!("type filter hook {hook} priority -10 ; policy accept ;");
    let s = |x: &str| vec![x.to_string()];
    let dispatch = vec![format!("jump {HOST_PORTS}"), "jump services".to_string()];
    r.chain(
        "nat-prerouting",
        Some(&nat("prerouting", "-100")),
        dispatch.clone(),
    );
    r.chain("nat-output", Some(&nat("output", "-100")), dispatch);
    r.chain(HOST_PORTS, None, host_port_rules(&desired.host_ports));
    r.chain(
        "nat-postrouting",
        Some(&nat("postrouting", "100")),
        s("jump masquerading"),
    );
    let node = &desired.node;
    // Pods never reach an agent (issue 16): its p2p port takes peers before admission and its
    // API takes unauthenticated clients; pods have no business with either (no in-cluster
    // API config). Every packet, not only `ct state new`: a flow opened before the table was
    // applied must not stay open. Rejected (TCP reset, ICMP port unreachable), so a pod fails
    // at once instead of hanging.
    let (to_agent, to_agents) = pod_firewall(node);
    let mut input = Vec::new();
    if let Some(rule) = &to_agent {
        input.push(format!(
            "ip saddr {} jump {POD_TO_AGENT}",
            node.cluster_cidr
        ));
        r.chain(POD_TO_AGENT, None, vec![rule.clone()]);
    }
    input.push("ct state new jump nodeport-endpoints-check".into());
    input.push("ct state new jump service-endpoints-check".into());
    r.chain("filter-input", Some(&filter("input")), input);
    let mut forward = Vec::new();
    if let Some(rule) = &to_agents {
        forward.push(format!(
            "ip saddr {} jump {POD_TO_AGENTS}",
            node.cluster_cidr
        ));
        r.chain(POD_TO_AGENTS, None, vec![rule.clone()]);
    }
    forward.push("ct state new jump service-endpoints-check".into());
    r.chain("filter-forward", Some(&filter("forward")), forward);
    r.chain(
        "filter-output",
        Some(&filter("output")),
        s("ct state new jump service-endpoints-check"),
    );
    r.chain(
        "services",
        None,
        vec![
            format!("ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}"),
            format!("fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @{SERVICE_NODEPORTS}"),
        ],
    );
    r.chain(
        "service-endpoints-check",
        None,
        s(&format!(
            "ip daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}"
        )),
    );
    r.chain(
        "nodeport-endpoints-check",
        None,
        s(&format!("fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}")),
    );
    r.chain(
        "reject-chain",
        None,
        vec![
            "meta l4proto tcp reject with tcp reset".into(),
            "reject".into(),
        ],
    );
    r.chain(
        "mark-for-masquerade",
        None,
        s(&format!("meta mark set meta mark | {MASQ_MARK}")),
    );
    r.chain(
        "masquerading",
        None,
        vec![
            // Pod egress leaving the cluster's pod network.
            format!(
                "ip saddr {} ip daddr != {} masquerade fully-random",
                node.pod_cidr, node.cluster_cidr
            ),
            // Connections marked on the way in (NodePort, off-cluster clients, hairpin).
            format!("meta mark & {MASQ_MARK} == 0 return"),
            format!("meta mark set meta mark ^ {MASQ_MARK}"),
            "masquerade fully-random".into(),
        ],
    );
    r
}

/// The ruleset that `desired` asks for. Deterministic: the same input, in any order, gives
/// the same model. Ports without a ClusterIP (headless), with port 0, and later ports that
/// collide with an earlier one's ClusterIP:port or nodePort (in `namespace/name/…` order) are
/// left out.
pub fn build(desired: &Desired) -> Ruleset {
    let mut r = base(desired);
    let mut ports: Vec<ServicePort> = desired
        .ports
        .iter()
        .map(|sp| {
            let mut sp = sp.clone();
            sp.backends.retain(|b| b.port != 0);
            sp.backends.sort();
            sp.backends.dedup_by_key(|b| (b.ip, b.port));
            sp
        })
        .collect();
    ports.sort();
    let mut seen = BTreeSet::new();
    for sp in &ports {
        if seen.insert(sp.id()) {
            service_port(&mut r, desired, sp);
        }
    }
    r
}

fn service_port(r: &mut Ruleset, desired: &Desired, sp: &ServicePort) {
    let Some(cip) = sp.cluster_ip else {
        return;
    };
    if sp.port == 0 {
        return;
    }
    let id = sp.id();
    let proto = sp.protocol.nft();
    let all: Vec<Backend> = sp.backends.clone(); // normalised by `build`
    let local: Vec<Backend> = all.iter().copied().filter(|b| b.local).collect();

    let svc = service_chain("svc", &id);
    let svl = service_chain("svl", &id);
    let ext = service_chain("ext", &id);
    // Off-cluster sources reaching the ClusterIP are masqueraded so replies return here.
    let masq_offcluster = format!(
        "ip daddr {cip} {proto} dport {} ip saddr != {} jump mark-for-masquerade",
        sp.port, desired.node.cluster_cidr
    );

    let ip_key = format!("{cip} . {proto} . {}", sp.port);
    let internal = if sp.internal_local { &local } else { &all };
    let (map, verdict) = if internal.is_empty() {
        (NO_ENDPOINT_SERVICES, "goto reject-chain".to_string())
    } else {
        (
            SERVICE_IPS,
            format!("goto {}", if sp.internal_local { &svl } else { &svc }),
        )
    };
    if !r.element(map, ip_key, verdict) {
        return; // the ClusterIP:port belongs to another port
    }

    let mut used: Vec<Backend> = Vec::new();
    if !all.is_empty() {
        r.chain(&svc, None, balance(&id, sp, &all, &masq_offcluster));
        used.extend(&all);
    }
    let needs_local = sp.internal_local || (sp.external_local && sp.node_port.is_some());
    if needs_local && !local.is_empty() {
        r.chain(&svl, None, balance(&id, sp, &local, &masq_offcluster));
    }

    if let Some(node_port) = sp.node_port.filter(|p| *p != 0) {
        let np_key = format!("{proto} . {node_port}");
        let external = if sp.external_local { &local } else { &all };
        if external.is_empty() {
            r.element(NO_ENDPOINT_NODEPORTS, np_key, "goto reject-chain".into());
        } else if r.element(SERVICE_NODEPORTS, np_key, format!("goto {ext}")) {
            let rules = if sp.external_local {
                // The node's own connections to its NodePort have no client address to keep:
                // masquerade them and use every endpoint, as kube-proxy does.
                let mut rules = vec!["fib saddr type local jump mark-for-masquerade".to_string()];
                if !all.is_empty() {
                    rules.push(format!("fib saddr type local goto {svc}"));
                }
                rules.push(format!("goto {svl}"));
                rules
            } else {
                vec![
                    "jump mark-for-masquerade".to_string(),
                    format!("goto {svc}"),
                ]
            };
            r.chain(&ext, None, rules);
        }
    }

    for b in used {
        let chain = endpoint_chain(&id, b.ip, b.port);
        let mut rules = vec![format!("ip saddr {} jump mark-for-masquerade", b.ip)];
        if let Some(timeout) = sp.affinity_timeout {
            let set = affinity_set(&id, b.ip, b.port, timeout);
            rules.push(format!("update @{set} {{ ip saddr }}"));
            r.sets.insert(set, timeout);
        }
        rules.push(format!("meta l4proto {proto} dnat to {}:{}", b.ip, b.port));
        r.chain(&chain, None, rules);
    }
}

/// A service chain's rules: the off-cluster masquerade check, session affinity (a client seen
/// recently goes back to its endpoint), then a uniformly random endpoint.
fn balance(id: &str, sp: &ServicePort, backends: &[Backend], masq: &str) -> Vec<String> {
    let mut rules = vec![masq.to_string()];
    if let Some(timeout) = sp.affinity_timeout {
        for b in backends {
            rules.push(format!(
                "ip saddr @{} goto {}",
                affinity_set(id, b.ip, b.port, timeout),
                endpoint_chain(id, b.ip, b.port)
            ));
        }
    }
    let arms: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{i} : goto {}", endpoint_chain(id, b.ip, b.port)))
        .collect();
    rules.push(format!(
        "numgen random mod {} vmap {{ {} }}",
        backends.len(),
        arms.join(", ")
    ));
    rules
}
