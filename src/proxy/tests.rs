//! Unit and property tests of the proxy core: golden scripts for known inputs, and an
//! interpreter of the scripts (strict like the kernel: no rule into a missing chain, no
//! deleting a chain or set something still refers to, no duplicate or missing elements) that
//! checks `diff(applied, desired)` applied to `applied` gives exactly `desired`.

use core::net::Ipv4Addr;
use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn node() -> NodeFacts {
    NodeFacts {
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        pod_cidr: "10.244.1.0/24".parse().unwrap(),
        bridge: "shoal0".into(),
        agent_ports: vec![(Protocol::Udp, 7946), (Protocol::Tcp, 6443)],
        agents: vec![
            (Ipv4Addr::new(10, 77, 0, 12), Protocol::Udp, 7946),
            (Ipv4Addr::new(10, 77, 0, 11), Protocol::Udp, 7946),
            (Ipv4Addr::new(10, 77, 0, 11), Protocol::Tcp, 6443),
            (Ipv4Addr::new(10, 77, 0, 12), Protocol::Tcp, 6443),
        ],
    }
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, last)
}

fn port(name: &str, cip: u8, backends: &[(u8, bool)]) -> ServicePort {
    ServicePort {
        namespace: "default".into(),
        name: name.into(),
        port_name: "http".into(),
        protocol: Protocol::Tcp,
        cluster_ip: Some(Ipv4Addr::new(10, 96, 0, cip)),
        port: 80,
        node_port: None,
        affinity_timeout: None,
        external_local: false,
        internal_local: false,
        backends: backends
            .iter()
            .map(|(last, local)| Backend {
                ip: ip(*last),
                port: 8080,
                local: *local,
            })
            .collect(),
    }
}

fn desired(ports: Vec<ServicePort>) -> Desired {
    Desired {
        node: node(),
        ports,
        host_ports: Vec::new(),
    }
}

// --- the interpreter ---------------------------------------------------------------------------

/// Names a rule or verdict refers to: chains after `goto`/`jump`, sets after `@`.
fn references(text: &str) -> Vec<String> {
    let words: Vec<&str> = text
        .split([' ', ',', '{', '}'])
        .filter(|w| !w.is_empty())
        .collect();
    let mut out = Vec::new();
    for (i, w) in words.iter().enumerate() {
        if (*w == "goto" || *w == "jump") && i + 1 < words.len() {
            out.push(words[i + 1].to_string());
        }
        if let Some(set) = w.strip_prefix('@') {
            out.push(set.to_string());
        }
    }
    out
}

fn referenced(r: &Ruleset, name: &str) -> bool {
    r.chains
        .values()
        .flat_map(|c| c.rules.iter())
        .chain(r.maps.values().flat_map(|m| m.values()))
        .any(|t| references(t).iter().any(|x| x == name))
}

fn braces(rest: &str) -> Result<&str, String> {
    rest.trim()
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .map(str::trim)
        .ok_or_else(|| format!("expected {{ … }}: {rest}"))
}

/// Applies `script` to `state` (`None`: the table does not exist), as one transaction: an
/// error leaves `state` as it was.
fn interpret(state: &Option<Ruleset>, script: &str) -> Result<Option<Ruleset>, String> {
    let mut table = state.clone();
    for line in script.lines() {
        let words: Vec<&str> = line.splitn(5, ' ').collect();
        let err = |why: &str| format!("{why}: {line}");
        if words.len() < 3 || words[2] != "ip" {
            return Err(err("not ip family"));
        }
        let what = (words[0], words[1]);
        if what.1 == "table" {
            match what.0 {
                "add" => {
                    table.get_or_insert_with(Ruleset::default);
                }
                "delete" => {
                    table.take().ok_or_else(|| err("no table"))?;
                }
                _ => return Err(err("unknown")),
            }
            continue;
        }
        let r = table.as_mut().ok_or_else(|| err("no table"))?;
        if words.len() < 5 && !(what == ("add", "chain") || what.0 == "delete" || what.0 == "flush")
        {
            return Err(err("short"));
        }
        if words[3] != TABLE {
            return Err(err("wrong table"));
        }
        let (name, rest) = match words[4].split_once(' ') {
            Some((n, rest)) => (n, rest),
            None => (words[4], ""),
        };
        match what {
            ("add", "map") => {
                if r.maps.insert(name.into(), BTreeMap::new()).is_some() {
                    return Err(err("map exists"));
                }
            }
            ("add", "set") => {
                let timeout = rest
                    .rsplit("timeout ")
                    .next()
                    .and_then(|t| t.split('s').next())
                    .and_then(|t| t.parse().ok())
                    .ok_or_else(|| err("no timeout"))?;
                if r.sets.insert(name.into(), timeout).is_some() {
                    return Err(err("set exists"));
                }
            }
            ("delete", "set") => {
                if referenced(r, name) {
                    return Err(err("set in use"));
                }
                r.sets.remove(name).ok_or_else(|| err("no set"))?;
            }
            ("add", "chain") => {
                let hook = if rest.is_empty() {
                    None
                } else {
                    Some(braces(rest)?.to_string())
                };
                if r.chains.contains_key(name) {
                    return Err(err("chain exists"));
                }
                r.chains.insert(
                    name.into(),
                    Chain {
                        hook,
                        rules: vec![],
                    },
                );
            }
            ("flush", "chain") => {
                r.chains
                    .get_mut(name)
                    .ok_or_else(|| err("no chain"))?
                    .rules
                    .clear();
            }
            ("delete", "chain") => {
                let chain = r.chains.get(name).ok_or_else(|| err("no chain"))?;
                if !chain.rules.is_empty() {
                    return Err(err("chain not empty"));
                }
                if referenced(r, name) {
                    return Err(err("chain in use"));
                }
                r.chains.remove(name);
            }
            ("add", "rule") => {
                for x in references(rest) {
                    if !r.chains.contains_key(&x)
                        && !r.sets.contains_key(&x)
                        && !r.maps.contains_key(&x)
                    {
                        return Err(err(&format!("refers to missing {x}")));
                    }
                }
                r.chains
                    .get_mut(name)
                    .ok_or_else(|| err("no chain"))?
                    .rules
                    .push(rest.to_string());
            }
            ("add", "element") => {
                for item in braces(rest)?.split(", ") {
                    let (k, v) = item.split_once(" : ").ok_or_else(|| err("no verdict"))?;
                    for x in references(v) {
                        if !r.chains.contains_key(&x) {
                            return Err(err(&format!("refers to missing {x}")));
                        }
                    }
                    let map = r.maps.get_mut(name).ok_or_else(|| err("no map"))?;
                    if map.insert(k.into(), v.into()).is_some() {
                        return Err(err("element exists"));
                    }
                }
            }
            ("delete", "element") => {
                for k in braces(rest)?.split(", ") {
                    let map = r.maps.get_mut(name).ok_or_else(|| err("no map"))?;
                    map.remove(k).ok_or_else(|| err("no element"))?;
                }
            }
            _ => return Err(err("unknown command")),
        }
    }
    Ok(table)
}

// --- golden and unit tests ---------------------------------------------------------------------

#[test]
fn one_service_with_two_endpoints_golden() {
    let r = build(&desired(vec![port("web", 10, &[(6, false), (5, true)])]));
    let svc = service_chain("svc", "default/web/tcp/http");
    let ep5 = endpoint_chain("default/web/tcp/http", ip(5), 8080);
    let ep6 = endpoint_chain("default/web/tcp/http", ip(6), 8080);
    assert_eq!(
        r.chains[&svc].rules,
        vec![
            "ip daddr 10.96.0.10 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade"
                .to_string(),
            format!("numgen random mod 2 vmap {{ 0 : goto {ep5}, 1 : goto {ep6} }}"),
        ]
    );
    assert_eq!(
        r.chains[&ep5].rules,
        vec![
            "ip saddr 10.244.1.5 jump mark-for-masquerade".to_string(),
            "meta l4proto tcp dnat to 10.244.1.5:8080".to_string(),
        ]
    );
    assert_eq!(
        r.maps["service-ips"],
        BTreeMap::from([("10.96.0.10 . tcp . 80".to_string(), format!("goto {svc}"))])
    );
    assert!(r.maps["no-endpoint-services"].is_empty());
    let script = full(&r).script;
    assert!(script.starts_with(
        "add table ip shoal\ndelete table ip shoal\nadd table ip shoal\nadd map ip shoal service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }\n"
    ));
    assert!(script.contains(
        "add chain ip shoal nat-prerouting { type nat hook prerouting priority -100 ; policy accept ; }\n"
    ));
    assert!(script.contains(&format!(
        "add element ip shoal service-ips {{ 10.96.0.10 . tcp . 80 : goto {svc} }}\n"
    )));
    assert!(script.contains(
        "add rule ip shoal masquerading ip saddr 10.244.1.0/24 ip daddr != 10.244.0.0/16 masquerade fully-random\n"
    ));
}

#[test]
fn host_ports_dnat_to_the_pod_before_the_services() {
    let mut d = desired(vec![]);
    let rule = |proto, host_ip: Option<[u8; 4]>, host_port, pod, container_port| HostPortRule {
        protocol: proto,
        host_ip: host_ip.map(Ipv4Addr::from),
        host_port,
        pod_ip: ip(pod),
        container_port,
    };
    d.host_ports = vec![
        rule(Protocol::Tcp, None, 8080, 5, 80),
        rule(Protocol::Udp, Some([192, 0, 2, 1]), 53, 6, 5353),
        // Conflicts with the first (any address, same port and protocol): left out.
        rule(Protocol::Tcp, Some([192, 0, 2, 1]), 8080, 7, 80),
    ];
    let r = build(&d);
    assert_eq!(
        r.chains["nat-prerouting"].rules,
        ["jump hostports", "jump services"]
    );
    assert_eq!(
        r.chains["nat-output"].rules,
        ["jump hostports", "jump services"]
    );
    assert_eq!(
        r.chains[HOST_PORTS].rules,
        [
            "fib daddr type local ip daddr != 127.0.0.0/8 tcp dport 8080 ip saddr 10.244.1.5 jump mark-for-masquerade",
            "fib daddr type local ip daddr != 127.0.0.0/8 tcp dport 8080 dnat to 10.244.1.5:80",
            "ip daddr 192.0.2.1 udp dport 53 ip saddr 10.244.1.6 jump mark-for-masquerade",
            "ip daddr 192.0.2.1 udp dport 53 dnat to 10.244.1.6:5353",
        ]
    );
    // No host ports: the chain is there, empty.
    assert!(build(&desired(vec![])).chains[HOST_PORTS].rules.is_empty());
}

#[test]
fn pods_are_refused_on_the_agent_ports_of_every_node() {
    let r = build(&desired(vec![]));
    assert_eq!(
        r.chains["filter-input"].rules,
        vec![
            "ip saddr 10.244.0.0/16 jump pods-to-agent",
            "ct state new jump nodeport-endpoints-check",
            "ct state new jump service-endpoints-check",
        ]
    );
    assert_eq!(
        r.chains["pods-to-agent"].rules,
        vec!["meta l4proto . th dport { tcp . 6443, udp . 7946 } goto reject-chain"]
    );
    assert_eq!(r.chains["pods-to-agent"].hook, None);
    assert_eq!(
        r.chains["filter-forward"].rules,
        vec![
            "ip saddr 10.244.0.0/16 jump pods-to-agents",
            "ct state new jump service-endpoints-check",
        ]
    );
    // Sorted and deduplicated: the same node list in any order gives the same rule.
    assert_eq!(
        r.chains["pods-to-agents"].rules,
        vec![
            "ip daddr . meta l4proto . th dport { 10.77.0.11 . tcp . 6443, 10.77.0.11 . udp . 7946, \
             10.77.0.12 . tcp . 6443, 10.77.0.12 . udp . 7946 } goto reject-chain"
        ]
    );
    let mut shuffled = desired(vec![]);
    shuffled.node.agents.reverse();
    shuffled.node.agents.push(shuffled.node.agents[0]);
    assert_eq!(build(&shuffled), r);
    // Nothing to refuse (port 0, unspecified addresses): no chain, no jump (nft refuses an
    // empty anonymous set).
    let mut none = desired(vec![]);
    none.node.agent_ports = vec![(Protocol::Udp, 0)];
    none.node.agents = vec![(Ipv4Addr::UNSPECIFIED, Protocol::Tcp, 6443)];
    let r = build(&none);
    assert!(!r.chains.contains_key("pods-to-agent"));
    assert!(!r.chains.contains_key("pods-to-agents"));
    assert_eq!(r.chains["filter-input"].rules.len(), 2);
    assert_eq!(r.chains["filter-forward"].rules.len(), 1);
    // A node joining rewrites the one chain, nothing else.
    let mut joined = desired(vec![]);
    joined
        .node
        .agents
        .push((Ipv4Addr::new(10, 77, 0, 13), Protocol::Udp, 7946));
    let change = diff(&build(&desired(vec![])), &build(&joined));
    assert_eq!(change.chains_written, 1, "{}", change.script);
    assert!(change
        .script
        .starts_with("flush chain ip shoal pods-to-agents\n"));
}

#[test]
fn removing_an_endpoint_rewrites_one_chain_and_deletes_one() {
    let before = build(&desired(vec![port("web", 10, &[(5, true), (6, false)])]));
    let after = build(&desired(vec![port("web", 10, &[(5, true)])]));
    let svc = service_chain("svc", "default/web/tcp/http");
    let ep5 = endpoint_chain("default/web/tcp/http", ip(5), 8080);
    let ep6 = endpoint_chain("default/web/tcp/http", ip(6), 8080);
    let change = diff(&before, &after);
    assert_eq!(
        change.script,
        format!(
            "flush chain ip shoal {svc}\n\
             add rule ip shoal {svc} ip daddr 10.96.0.10 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade\n\
             add rule ip shoal {svc} numgen random mod 1 vmap {{ 0 : goto {ep5} }}\n\
             flush chain ip shoal {ep6}\n\
             delete chain ip shoal {ep6}\n"
        )
    );
    assert_eq!(
        (
            change.chains_written,
            change.chains_deleted,
            change.elements
        ),
        (1, 1, 0)
    );
    assert!(!change.full);
}

#[test]
fn no_endpoints_rejects_and_nodeport_too() {
    let mut p = port("empty", 11, &[]);
    p.node_port = Some(30080);
    let r = build(&desired(vec![p]));
    assert!(r.maps["service-ips"].is_empty());
    assert_eq!(
        r.maps["no-endpoint-services"]["10.96.0.11 . tcp . 80"],
        "goto reject-chain"
    );
    assert_eq!(
        r.maps["no-endpoint-nodeports"]["tcp . 30080"],
        "goto reject-chain"
    );
    assert!(!r
        .chains
        .keys()
        .any(|c| c.starts_with("svc-") || c.starts_with("ep-")));
}

#[test]
fn nodeport_marks_for_masquerade_and_local_policy_keeps_the_source() {
    let mut p = port("np", 12, &[(5, true), (6, false)]);
    p.node_port = Some(30001);
    let ext = service_chain("ext", "default/np/tcp/http");
    let svc = service_chain("svc", "default/np/tcp/http");
    let r = build(&desired(vec![p.clone()]));
    assert_eq!(
        r.maps["service-nodeports"]["tcp . 30001"],
        format!("goto {ext}")
    );
    assert_eq!(
        r.chains[&ext].rules,
        vec![
            "jump mark-for-masquerade".to_string(),
            format!("goto {svc}")
        ]
    );
    p.external_local = true;
    let r = build(&desired(vec![p.clone()]));
    let svl = service_chain("svl", "default/np/tcp/http");
    assert_eq!(r.chains[&ext].rules.last(), Some(&format!("goto {svl}")));
    assert!(
        r.chains[&svl].rules[1].contains("mod 1"),
        "only the local endpoint"
    );
    p.backends.retain(|b| !b.local);
    let r = build(&desired(vec![p]));
    assert_eq!(
        r.maps["no-endpoint-nodeports"]["tcp . 30001"],
        "goto reject-chain"
    );
    assert!(
        r.maps["service-ips"].contains_key("10.96.0.12 . tcp . 80"),
        "ClusterIP still balances"
    );
}

#[test]
fn session_affinity_adds_sets_and_sticky_rules() {
    let mut p = port("sticky", 13, &[(5, true), (6, true)]);
    p.affinity_timeout = Some(600);
    let r = build(&desired(vec![p.clone()]));
    assert_eq!(r.sets.len(), 2);
    assert!(r.sets.values().all(|t| *t == 600));
    let svc = &r.chains[&service_chain("svc", "default/sticky/tcp/http")];
    assert!(
        svc.rules[1].starts_with("ip saddr @aff-"),
        "{:?}",
        svc.rules
    );
    let ep = &r.chains[&endpoint_chain("default/sticky/tcp/http", ip(5), 8080)];
    assert!(ep.rules[1].starts_with("update @aff-"), "{:?}", ep.rules);
    // A new timeout replaces the sets: new ones added first, old ones deleted last.
    p.affinity_timeout = Some(60);
    let r2 = build(&desired(vec![p]));
    let change = diff(&r, &r2);
    let after = interpret(&Some(r), &change.script).unwrap();
    assert_eq!(after, Some(r2));
}

#[test]
fn conflicting_ports_first_in_order_wins() {
    let a = port("a", 20, &[(5, true)]);
    let mut b = port("b", 20, &[(6, true)]);
    b.node_port = Some(30002);
    let r = build(&desired(vec![b.clone(), a.clone()]));
    assert_eq!(
        r.maps["service-ips"]["10.96.0.20 . tcp . 80"],
        format!("goto {}", service_chain("svc", "default/a/tcp/http"))
    );
    assert!(
        r.maps["service-nodeports"].is_empty(),
        "b lost its ClusterIP, so it is left out"
    );
    assert_eq!(interpret(&None, &full(&r).script).unwrap(), Some(r));
}

#[test]
fn headless_and_zero_ports_are_skipped() {
    let mut h = port("headless", 1, &[(5, true)]);
    h.cluster_ip = None;
    let mut z = port("zero", 2, &[(5, true)]);
    z.port = 0;
    let r = build(&desired(vec![h, z]));
    assert_eq!(r, build(&desired(vec![])));
}

#[test]
fn one_change_among_a_thousand_services_is_a_small_script() {
    let many = |n: usize, moved: bool| {
        desired(
            (0..n)
                .map(|i| {
                    let mut p = port(&format!("s{i}"), 0, &[(5, true), (6, false)]);
                    p.cluster_ip = Some(Ipv4Addr::from(0x0a60_0000 + i as u32));
                    if moved && i == n / 2 {
                        p.backends[1].ip = ip(7);
                    }
                    p
                })
                .collect(),
        )
    };
    for n in [10, 1000] {
        let change = diff(&build(&many(n, false)), &build(&many(n, true)));
        assert_eq!(
            change.script.lines().count(),
            8,
            "n={n}:\n{}",
            change.script
        );
    }
}

#[test]
fn a_changed_node_cidr_rewrites_masquerading_in_place() {
    let a = build(&desired(vec![port("web", 10, &[(5, true)])]));
    let mut d = desired(vec![port("web", 10, &[(5, true)])]);
    d.node.pod_cidr = "10.244.9.0/24".parse().unwrap();
    let b = build(&d);
    let change = diff(&a, &b);
    assert!(
        change
            .script
            .starts_with("flush chain ip shoal masquerading\n"),
        "{}",
        change.script
    );
    assert_eq!(interpret(&Some(a), &change.script).unwrap(), Some(b));
}

// --- properties --------------------------------------------------------------------------------

fn arb_port() -> impl Strategy<Value = ServicePort> {
    (
        (0usize..2, 0usize..4, 0usize..2, 0usize..3),
        (
            prop::option::of(0u8..4),
            prop::sample::select(vec![80u16, 443]),
            prop::option::of(30000u16..30003),
        ),
        (
            prop::sample::select(vec![None, Some(60u32), Some(10800)]),
            any::<bool>(),
            any::<bool>(),
        ),
        prop::collection::vec(
            (
                0u8..5,
                prop::sample::select(vec![80u16, 8080]),
                any::<bool>(),
            ),
            0..5,
        ),
    )
        .prop_map(
            |((ns, name, pname, proto), (cip, p, np), (aff, el, il), backends)| ServicePort {
                namespace: ["default", "shop"][ns].into(),
                name: format!("s{name}"),
                port_name: ["", "http"][pname].into(),
                protocol: [Protocol::Tcp, Protocol::Udp, Protocol::Sctp][proto],
                cluster_ip: cip.map(|c| Ipv4Addr::new(10, 96, 0, c)),
                port: p,
                node_port: np,
                affinity_timeout: aff,
                external_local: el,
                internal_local: il,
                backends: backends
                    .into_iter()
                    .map(|(last, port, local)| Backend {
                        ip: ip(last),
                        port,
                        local,
                    })
                    .collect(),
            },
        )
}

fn arb_host_port() -> impl Strategy<Value = HostPortRule> {
    (
        any::<bool>(),
        proptest::option::of(1u8..3),
        8080u16..8083,
        1u8..6,
        80u16..82,
    )
        .prop_map(
            |(udp, host_ip, host_port, pod, container_port)| HostPortRule {
                protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
                host_ip: host_ip.map(|o| Ipv4Addr::new(192, 0, 2, o)),
                host_port,
                pod_ip: ip(pod),
                container_port,
            },
        )
}

fn arb_desired() -> impl Strategy<Value = Desired> {
    (
        prop::collection::vec(arb_port(), 0..8),
        any::<bool>(),
        0usize..3,
        0usize..5,
        prop::collection::vec(arb_host_port(), 0..5),
    )
        .prop_map(|(ports, other_cidr, local, agents, host_ports)| {
            let mut d = desired(ports);
            d.host_ports = host_ports;
            if other_cidr {
                d.node.pod_cidr = "10.244.2.0/24".parse().unwrap();
            }
            // No agent ports at all (no firewall chains), some, or all of them.
            d.node.agent_ports.truncate(local);
            d.node.agents.truncate(agents);
            d
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn full_builds_exactly_the_model(d in arb_desired()) {
        let r = build(&d);
        prop_assert_eq!(interpret(&None, &full(&r).script), Ok(Some(r.clone())));
        // Over an existing table too (the restart case).
        let other = build(&desired(vec![port("old", 99, &[(9, true)])]));
        prop_assert_eq!(interpret(&Some(other), &full(&r).script), Ok(Some(r)));
    }

    #[test]
    fn diff_turns_applied_into_desired(a in arb_desired(), b in arb_desired()) {
        let (ra, rb) = (build(&a), build(&b));
        let change = diff(&ra, &rb);
        prop_assert_eq!(interpret(&Some(ra.clone()), &change.script), Ok(Some(rb.clone())));
        prop_assert!(diff(&rb, &rb).is_empty(), "no change, no script");
    }

    #[test]
    fn order_does_not_matter(d in arb_desired(), seed in any::<u64>()) {
        let mut shuffled = d.clone();
        let n = shuffled.ports.len();
        for i in 0..n {
            let j = (seed.wrapping_mul(i as u64 + 7) % n as u64) as usize;
            shuffled.ports.swap(i, j);
        }
        for p in &mut shuffled.ports {
            p.backends.reverse();
        }
        shuffled.host_ports.reverse();
        prop_assert_eq!(build(&d), build(&shuffled));
    }
}
