//! The node side of the pod network: once this node holds a pod CIDR, bridge `shoal0` is up
//! and carries the CIDR's gateway address (the pods' default route, where the node's DNS
//! listens), forwarding is on (`net.ipv4.ip_forward`, `net.bridge.bridge-nf-call-iptables`),
//! and every other node's pod CIDR is routed via that node's internal IP (routes tagged with
//! protocol [`ROUTE_PROTOCOL`], so ours are found and stale ones deleted). Re-planned after
//! document changes (at most every [`MIN_INTERVAL`], and only when the node CIDRs or addresses
//! changed or the last round found a problem) and every [`TICK`]. The decisions
//! (`desired_routes`, `plan_routes`, `plan_bridge`, the `ip -j` parsers) are pure; the shell
//! runs iproute2's `ip`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;

use crate::model::network::{self, BRIDGE};
use crate::state::Shared;

/// The route protocol number of our routes (`ip route show proto 77`); unused by the
/// reserved protocols in iproute2's `rt_protos`.
pub const ROUTE_PROTOCOL: u8 = 77;
/// At most one round this often, however fast the document changes.
const MIN_INTERVAL: Duration = Duration::from_millis(500);
/// A round at least this often (repairs routes or addresses someone removed).
const TICK: Duration = Duration::from_secs(10);
/// The sysctls a node with pods needs, in its network namespace.
pub const SYSCTLS: [(&str, &str); 2] = [
    ("/proc/sys/net/ipv4/ip_forward", "1"),
    ("/proc/sys/net/bridge/bridge-nf-call-iptables", "1"),
];

/// Whether this agent gives pods the CNI network and programs the node: not when it
/// advertises a loopback address (agents sharing one host namespace in tests would fight over
/// `shoal0` and the routes) or when `SHOAL_POD_NETWORK=off`.
pub fn pod_network_enabled(advertise: IpAddr) -> bool {
    let off = std::env::var("SHOAL_POD_NETWORK").is_ok_and(|v| v == "off" || v == "0");
    !off && !advertise.is_loopback()
}

/// A route to another node's pod CIDR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub dst: Ipv4Net,
    pub via: Ipv4Addr,
}

/// What to change: routes to add or re-point (`ip route replace`), and ours to delete.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoutePlan {
    pub replace: Vec<Route>,
    pub delete: Vec<Ipv4Net>,
}

impl RoutePlan {
    pub fn is_empty(&self) -> bool {
        self.replace.is_empty() && self.delete.is_empty()
    }
}

/// The routes this node wants: every other node with a pod CIDR and a usable internal IP.
/// Returns them with the nodes left out and why.
pub fn desired_routes(
    me: &str,
    pod_cidrs: &BTreeMap<String, String>,
    internal_ips: &BTreeMap<String, String>,
) -> (BTreeMap<Ipv4Net, Ipv4Addr>, Vec<String>) {
    let mut routes = BTreeMap::new();
    let mut skipped = Vec::new();
    for (node, cidr) in pod_cidrs {
        if node == me {
            continue;
        }
        let Some(dst) = network::parse_cidr(cidr) else {
            skipped.push(format!("{node}: bad pod CIDR {cidr:?}"));
            continue;
        };
        let via = internal_ips
            .get(node)
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
        match via {
            Some(via) if !via.is_loopback() && !via.is_unspecified() => {
                routes.insert(dst, via);
            }
            _ => skipped.push(format!(
                "{node}: no usable IPv4 internal IP ({:?})",
                internal_ips.get(node).map(String::as_str).unwrap_or("")
            )),
        }
    }
    (routes, skipped)
}

/// Desired routes vs ours in the table (`current`, protocol [`ROUTE_PROTOCOL`] only).
pub fn plan_routes(desired: &BTreeMap<Ipv4Net, Ipv4Addr>, current: &[Route]) -> RoutePlan {
    let have: BTreeSet<Route> = current.iter().copied().collect();
    let replace = desired
        .iter()
        .map(|(&dst, &via)| Route { dst, via })
        .filter(|r| !have.contains(r) || current.iter().filter(|c| c.dst == r.dst).count() > 1)
        .collect();
    let delete: BTreeSet<Ipv4Net> = current
        .iter()
        .filter(|c| !desired.contains_key(&c.dst))
        .map(|c| c.dst)
        .collect();
    RoutePlan {
        replace,
        delete: delete.into_iter().collect(),
    }
}

/// What the bridge's IPv4 addresses must become: `gateway/prefix` of the pod CIDR, nothing
/// else (the gateway of a CIDR the node lost is removed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BridgePlan {
    pub add: Option<Ipv4Net>,
    pub delete: Vec<Ipv4Net>,
}

/// The bridge address for `pod_cidr` and the changes from `current`.
pub fn plan_bridge(pod_cidr: Ipv4Net, current: &[Ipv4Net]) -> Option<BridgePlan> {
    let gateway = network::gateway(&pod_cidr.to_string())?;
    let want = Ipv4Net::new(gateway, pod_cidr.prefix_len()).ok()?;
    Some(BridgePlan {
        add: (!current.contains(&want)).then_some(want),
        delete: current.iter().filter(|a| **a != want).copied().collect(),
    })
}

/// `ip -j -4 route show proto N`: the routes with a gateway (others are not ours to manage).
pub fn parse_routes(json: &str) -> Result<Vec<Route>, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("ip route output: {e}"))?;
    let list = v
        .as_array()
        .ok_or_else(|| "ip route output is not a list".to_string())?;
    Ok(list
        .iter()
        .filter_map(|r| {
            Some(Route {
                dst: r["dst"].as_str()?.parse().ok()?,
                via: r["gateway"].as_str()?.parse().ok()?,
            })
        })
        .collect())
}

/// `ip -j -4 addr show dev D`: the interface's IPv4 addresses with their prefixes.
pub fn parse_addrs(json: &str) -> Result<Vec<Ipv4Net>, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("ip addr output: {e}"))?;
    let list = v
        .as_array()
        .ok_or_else(|| "ip addr output is not a list".to_string())?;
    Ok(list
        .iter()
        .flat_map(|itf| itf["addr_info"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["family"] == "inet")
        .filter_map(|a| {
            let ip: Ipv4Addr = a["local"].as_str()?.parse().ok()?;
            Ipv4Net::new(ip, u8::try_from(a["prefixlen"].as_u64()?).ok()?).ok()
        })
        .collect())
}

/// Runs `ip ARGS`; its stdout, or stderr as the error.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e} (install iproute2)", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Bridge up with the gateway address of `pod_cidr`, and the sysctls.
fn ensure_bridge(pod_cidr: Ipv4Net) -> Result<Vec<String>, String> {
    let mut done = Vec::new();
    if ip(&["link", "show", "dev", BRIDGE]).is_err() {
        ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        done.push(format!("created bridge {BRIDGE}"));
    }
    ip(&["link", "set", BRIDGE, "up"])?;
    let current = parse_addrs(&ip(&["-j", "-4", "addr", "show", "dev", BRIDGE])?)?;
    let plan = plan_bridge(pod_cidr, &current)
        .ok_or_else(|| format!("pod CIDR {pod_cidr} has no room for a gateway"))?;
    for old in &plan.delete {
        ip(&["addr", "del", &old.to_string(), "dev", BRIDGE])?;
        done.push(format!("removed {old} from {BRIDGE}"));
    }
    if let Some(add) = plan.add {
        ip(&["addr", "add", &add.to_string(), "dev", BRIDGE])?;
        done.push(format!("{BRIDGE} carries {add}"));
    }
    for (path, value) in SYSCTLS {
        let now = std::fs::read_to_string(path).map_err(|e| {
            format!("{path}: {e} (forwarding between pods and nodes needs it; for bridge-nf-call-iptables: modprobe br_netfilter)")
        })?;
        if now.trim() != value {
            std::fs::write(path, value).map_err(|e| format!("writing {value} to {path}: {e}"))?;
            done.push(format!("{path} = {value}"));
        }
    }
    Ok(done)
}

/// Our routes to the other nodes' pod CIDRs, made to match `desired`.
fn sync_routes(desired: &BTreeMap<Ipv4Net, Ipv4Addr>) -> (Vec<String>, Vec<String>) {
    let proto = ROUTE_PROTOCOL.to_string();
    let current =
        match ip(&["-j", "-4", "route", "show", "proto", &proto]).and_then(|o| parse_routes(&o)) {
            Ok(c) => c,
            Err(e) => return (Vec::new(), vec![e]),
        };
    let plan = plan_routes(desired, &current);
    let (mut done, mut errors) = (Vec::new(), Vec::new());
    for dst in &plan.delete {
        match ip(&["route", "del", &dst.to_string(), "proto", &proto]) {
            Ok(_) => done.push(format!("deleted route {dst}")),
            Err(e) => errors.push(e),
        }
    }
    for r in &plan.replace {
        let (dst, via) = (r.dst.to_string(), r.via.to_string());
        match ip(&["route", "replace", &dst, "via", &via, "proto", &proto]) {
            Ok(_) => done.push(format!("route {dst} via {via}")),
            // A next hop that is not on a directly connected network: the nodes do not share
            // an L2 segment (see docs/networking.md, "Larger networks").
            Err(e) => errors.push(e),
        }
    }
    (done, errors)
}

/// What a round programs from: every node's pod CIDR and internal IP.
type RoundInputs = (BTreeMap<String, String>, BTreeMap<String, String>);

/// What the last round reported, so each problem is logged once, and what it programmed from.
#[derive(Default)]
struct Logged {
    errors: BTreeSet<String>,
    /// The inputs of the last round that ran `ip`, and when it ran.
    last: Option<(RoundInputs, std::time::Instant)>,
}

/// Whether a round may leave the node as it is: its inputs are those of the last round that
/// ran, which reported no problem less than [`TICK`] ago. Every document change used to run
/// four `ip` processes per node (at most every [`MIN_INTERVAL`]): during a burst of pods,
/// whose status writes change the documents constantly, 40 processes a second on 5 nodes for
/// routes that never changed. A change of the inputs, a problem, or the tick still re-checks
/// (and repairs) everything.
fn unchanged(last: Option<(&RoundInputs, Duration)>, inputs: &RoundInputs, clean: bool) -> bool {
    clean && last.is_some_and(|(prev, age)| prev == inputs && age < TICK)
}

impl Logged {
    fn report(&mut self, errors: Vec<String>) {
        let now: BTreeSet<String> = errors.into_iter().collect();
        for e in now.difference(&self.errors) {
            tracing::error!("pod network: {e}");
        }
        self.errors = now;
    }
}

fn round(shared: &Shared, logged: &mut Logged) {
    let me = shared.node_name.as_str();
    let (pod_cidrs, internal_ips) = shared.read(|doc| {
        let ips: BTreeMap<String, String> = doc
            .nodes()
            .into_iter()
            .map(|n| (n.name, n.internal_ip))
            .collect();
        (doc.pod_cidrs(), ips)
    });
    let inputs = (pod_cidrs, internal_ips);
    let last = logged.last.as_ref().map(|(i, at)| (i, at.elapsed()));
    if unchanged(last, &inputs, logged.errors.is_empty()) {
        return;
    }
    logged.last = Some((inputs.clone(), std::time::Instant::now()));
    let (pod_cidrs, internal_ips) = inputs;
    let mut errors = Vec::new();
    if let Some(mine) = pod_cidrs.get(me) {
        match network::parse_cidr(mine).ok_or_else(|| format!("bad pod CIDR {mine:?}")) {
            Ok(cidr) => match ensure_bridge(cidr) {
                Ok(done) => done
                    .iter()
                    .for_each(|d| tracing::info!(cidr = %cidr, "pod network: {d}")),
                Err(e) => errors.push(e),
            },
            Err(e) => errors.push(e),
        }
    }
    let (desired, skipped) = desired_routes(me, &pod_cidrs, &internal_ips);
    let (done, route_errors) = sync_routes(&desired);
    done.iter().for_each(|d| tracing::info!("pod network: {d}"));
    errors.extend(route_errors);
    errors.extend(
        skipped
            .into_iter()
            .map(|s| format!("no route to the pods of {s}")),
    );
    logged.report(errors);
}

/// Runs until `stop` resolves.
pub async fn run(shared: Arc<Shared>, stop: impl std::future::Future<Output = ()>) {
    let logged = Arc::new(std::sync::Mutex::new(Logged::default()));
    super::rounds(&shared, stop, MIN_INTERVAL, TICK, || {
        let (s, l) = (shared.clone(), logged.clone());
        async move {
            let _ = tokio::task::spawn_blocking(move || {
                let mut l = l.lock().unwrap_or_else(|p| p.into_inner());
                round(&s, &mut l)
            })
            .await;
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }
    fn ip4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn routes_to_every_other_node_with_a_cidr_and_an_address() {
        let cidrs = map(&[
            ("n1", "10.244.0.0/24"),
            ("n2", "10.244.1.0/24"),
            ("n3", "10.244.2.0/24"),
            ("n4", "10.244.3.0/24"),
            ("n5", "10.244.4.1/24"),
        ]);
        let ips = map(&[
            ("n1", "10.77.0.11"),
            ("n2", "10.77.0.12"),
            ("n3", "127.0.0.1"),
            ("n5", "10.77.0.15"),
        ]);
        let (routes, skipped) = desired_routes("n1", &cidrs, &ips);
        assert_eq!(
            routes,
            BTreeMap::from([(net("10.244.1.0/24"), ip4("10.77.0.12"))]),
            "not to itself, not via loopback, not without an address, not a bad CIDR"
        );
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert!(skipped.iter().any(|s| s.starts_with("n3:")));
        assert!(skipped.iter().any(|s| s.starts_with("n4:")));
        assert!(skipped.iter().any(|s| s.starts_with("n5: bad pod CIDR")));
    }

    #[test]
    fn rounds_with_the_same_inputs_and_no_problem_are_skipped_until_the_tick() {
        let a: RoundInputs = (
            map(&[("n1", "10.244.0.0/24")]),
            map(&[("n1", "10.77.0.11")]),
        );
        let mut b = a.clone();
        b.1.insert("n2".into(), "10.77.0.12".into());
        let soon = Duration::from_millis(600);
        assert!(unchanged(Some((&a, soon)), &a, true));
        assert!(!unchanged(None, &a, true), "the first round runs");
        assert!(!unchanged(Some((&a, soon)), &b, true), "inputs changed");
        assert!(
            !unchanged(Some((&a, soon)), &a, false),
            "a problem is retried"
        );
        assert!(!unchanged(Some((&a, TICK)), &a, true), "the tick re-checks");
    }

    #[test]
    fn plan_adds_moves_and_deletes() {
        let desired = BTreeMap::from([
            (net("10.244.1.0/24"), ip4("10.77.0.12")),
            (net("10.244.2.0/24"), ip4("10.77.0.13")),
            (net("10.244.5.0/24"), ip4("10.77.0.15")),
        ]);
        let current = [
            // Kept as is.
            Route {
                dst: net("10.244.1.0/24"),
                via: ip4("10.77.0.12"),
            },
            // The CIDR moved to another node.
            Route {
                dst: net("10.244.2.0/24"),
                via: ip4("10.77.0.99"),
            },
            // A deleted node's.
            Route {
                dst: net("10.244.9.0/24"),
                via: ip4("10.77.0.19"),
            },
        ];
        let plan = plan_routes(&desired, &current);
        assert_eq!(
            plan.replace,
            vec![
                Route {
                    dst: net("10.244.2.0/24"),
                    via: ip4("10.77.0.13")
                },
                Route {
                    dst: net("10.244.5.0/24"),
                    via: ip4("10.77.0.15")
                },
            ]
        );
        assert_eq!(plan.delete, vec![net("10.244.9.0/24")]);
        // Applying the plan converges: nothing left to do.
        let after: Vec<Route> = desired
            .iter()
            .map(|(&dst, &via)| Route { dst, via })
            .collect();
        assert!(plan_routes(&desired, &after).is_empty());
        assert_eq!(
            plan_routes(&BTreeMap::new(), &after).delete.len(),
            3,
            "no nodes: all ours go"
        );
    }

    #[test]
    fn bridge_carries_exactly_the_gateway() {
        let cidr = net("10.244.3.0/24");
        assert_eq!(
            plan_bridge(cidr, &[]),
            Some(BridgePlan {
                add: Some(net("10.244.3.1/24")),
                delete: vec![]
            })
        );
        assert_eq!(
            plan_bridge(cidr, &[net("10.244.3.1/24")]),
            Some(BridgePlan::default())
        );
        // The node lost its first CIDR: the old gateway goes.
        assert_eq!(
            plan_bridge(cidr, &[net("10.244.7.1/24"), net("10.244.3.1/24")]),
            Some(BridgePlan {
                add: None,
                delete: vec![net("10.244.7.1/24")]
            })
        );
        assert_eq!(plan_bridge(net("10.244.3.0/31"), &[]), None);
    }

    #[test]
    fn parses_ip_json() {
        let routes = r#"[{"dst":"10.244.5.0/24","gateway":"10.9.0.3","dev":"d0","flags":["linkdown"]},{"dst":"10.244.6.0/24","dev":"d0"},{"dst":"default","gateway":"10.9.0.1"}]"#;
        assert_eq!(
            parse_routes(routes).unwrap(),
            vec![Route {
                dst: net("10.244.5.0/24"),
                via: ip4("10.9.0.3")
            }]
        );
        assert_eq!(parse_routes("[]").unwrap(), vec![]);
        assert!(parse_routes("Error").is_err());
        assert!(parse_routes("{}").is_err());
        let addrs = r#"[{"ifindex":4,"ifname":"shoal0","addr_info":[{"family":"inet","local":"10.244.3.1","prefixlen":24},{"family":"inet6","local":"fe80::1","prefixlen":64}]}]"#;
        assert_eq!(parse_addrs(addrs).unwrap(), vec![net("10.244.3.1/24")]);
        assert_eq!(parse_addrs("[]").unwrap(), vec![]);
        assert!(parse_addrs("nope").is_err());
    }

    #[test]
    fn loopback_agents_get_no_pod_network() {
        assert!(!pod_network_enabled("127.0.0.1".parse().unwrap()));
    }
}
