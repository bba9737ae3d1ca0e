//! The pod network end to end: a 3-replica Deployment spread over 3 testnet nodes gets one
//! address per pod from its node's pod CIDR (real CNI plugins), `kubectl get pods -o wide`
//! shows it, a pod on n1 reaches the pods on n2 and n3 by IP (host routes between the nodes),
//! and a pod resolves through its node's gateway. Pods cannot reach any agent: the p2p port
//! (QUIC) and the API of their own node and of the others are refused by the agent's nftables
//! rules, while pod-to-pod and pod-to-Service connections work.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde_json::Value;

use super::workloads::apply;
use crate::support::*;

const START: Duration = Duration::from_secs(90);

const WEB: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 3
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      terminationGracePeriodSeconds: 1
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector:
              matchLabels:
                app: web
            topologyKey: kubernetes.io/hostname
      containers:
      - name: httpd
        image: shoal.test/busybox:1
        command: ["sh", "-c", "mkdir -p /tmp/www && echo hello-from-$(hostname) > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"]
"#;

/// One `web` pod as the API shows it.
#[derive(Debug)]
struct WebPod {
    name: String,
    node: String,
    ip: Ipv4Addr,
    host_ip: String,
}

fn web_pods(ctx: &str) -> Result<Vec<WebPod>, String> {
    let out = kubectl(ctx, &["get", "pods", "-l", "app=web", "-o", "json"])?;
    let list: Value = serde_json::from_str(&out).map_err(|e| format!("bad JSON: {e}"))?;
    let items = list["items"].as_array().ok_or("no items")?;
    let mut pods = Vec::new();
    for p in items {
        let name = p["metadata"]["name"].as_str().unwrap_or("").to_string();
        let st = &p["status"];
        if st["phase"] != "Running" || st["containerStatuses"][0]["ready"] != true {
            return Err(format!("{name} is not running yet: {st}"));
        }
        let ip = st["podIP"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("{name} has no podIP: {st}"))?;
        if st["podIPs"][0]["ip"] != st["podIP"] {
            return Err(format!("{name}: podIPs does not match podIP: {st}"));
        }
        pods.push(WebPod {
            name,
            node: p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
            ip,
            host_ip: st["hostIP"].as_str().unwrap_or("").to_string(),
        });
    }
    if pods.len() != 3 {
        return Err(format!("want 3 web pods, have {pods:?}"));
    }
    Ok(pods)
}

/// Node name → its pod CIDR (`spec.podCIDR`).
fn pod_cidrs(ctx: &str) -> Result<BTreeMap<String, Ipv4Net>, String> {
    let out = kubectl(ctx, &["get", "nodes", "-o", "json"])?;
    let list: Value = serde_json::from_str(&out).map_err(|e| format!("bad JSON: {e}"))?;
    let mut cidrs = BTreeMap::new();
    for n in list["items"].as_array().ok_or("no items")? {
        let name = n["metadata"]["name"].as_str().unwrap_or("").to_string();
        let cidr = n["spec"]["podCIDR"]
            .as_str()
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("{name} has no podCIDR yet"))?;
        cidrs.insert(name, cidr);
    }
    Ok(cidrs)
}

/// `ip ARGS` inside node `node`'s network namespace.
fn ip_in(node: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &format!("shoal-{node}"), "ip"])
        .args(args)
        .output()
        .expect("ip netns exec");
    assert!(out.status.success(), "ip {args:?} in {node}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn pods_get_addresses_from_their_node_and_reach_each_other_across_nodes() {
    let tn = Testnet::up(3);
    let cidrs = eventually(
        "every node holds a pod CIDR",
        Duration::from_secs(30),
        || {
            let c = pod_cidrs("n1")?;
            (c.len() == 3).then_some(c).ok_or("not 3 nodes".into())
        },
    );
    apply("n1", WEB);
    let pods = eventually("3 web pods running with addresses", START, || {
        web_pods("n1")
    });

    // One pod per node, each address distinct and inside its own node's pod CIDR.
    let nodes: BTreeSet<&str> = pods.iter().map(|p| p.node.as_str()).collect();
    assert_eq!(nodes.len(), 3, "spread over the 3 nodes: {pods:?}");
    let ips: BTreeSet<Ipv4Addr> = pods.iter().map(|p| p.ip).collect();
    assert_eq!(ips.len(), 3, "distinct addresses: {pods:?}");
    for p in &pods {
        let cidr = cidrs[&p.node];
        assert!(
            cidr.contains(&p.ip),
            "{} on {} has {} outside {cidr}",
            p.name,
            p.node,
            p.ip
        );
        assert_ne!(p.ip, cidr.hosts().next().unwrap(), "not the gateway");
        assert_eq!(p.host_ip, node_ip(&p.node), "hostIP is the node's address");
    }
    let wide = kubectl_ok("n2", &["get", "pods", "-o", "wide"]);
    for p in &pods {
        let row = wide
            .lines()
            .find(|l| l.starts_with(&p.name))
            .unwrap_or_else(|| panic!("{} in {wide}", p.name));
        assert!(
            row.contains(&p.ip.to_string()),
            "-o wide shows the IP: {row}"
        );
    }

    // Each node carries its gateway on shoal0 and routes the others' CIDRs via their address.
    for node in &tn.nodes {
        let cidr = cidrs[node];
        let gateway = cidr.hosts().next().unwrap();
        assert!(
            ip_in(node, &["-4", "addr", "show", "dev", "shoal0"])
                .contains(&format!("inet {gateway}/{}", cidr.prefix_len())),
            "{node}'s bridge carries {gateway}"
        );
        let routes = ip_in(node, &["route", "show", "proto", "77"]);
        for other in tn.others(&[node]) {
            let want = format!("{} via {}", cidrs[&other], node_ip(&other));
            assert!(routes.contains(&want), "{node} routes {want}: {routes}");
        }
    }

    // From the pod on n1 to the pods on n2 and n3, by IP.
    let from = pods.iter().find(|p| p.node == "n1").unwrap();
    for to in pods.iter().filter(|p| p.node != "n1") {
        let url = format!("http://{}:8080/", to.ip);
        let body = eventually(
            &format!("{} reaches {url}", from.name),
            Duration::from_secs(30),
            || {
                // busybox's own timeout: Debian's static wget crashes on `-T`.
                kubectl(
                    "n1",
                    &[
                        "exec", &from.name, "--", "timeout", "5", "wget", "-q", "-O", "-", &url,
                    ],
                )
            },
        );
        assert_eq!(
            body.trim(),
            format!("hello-from-{}", to.name),
            "the answer comes from the pod on {}",
            to.node
        );
    }

    // The pod resolves through its node: the DNS server on the node's gateway.
    let resolv = kubectl_ok("n1", &["exec", &from.name, "--", "cat", "/etc/resolv.conf"]);
    let gateway = cidrs["n1"].hosts().next().unwrap();
    assert!(
        resolv.starts_with(&format!("nameserver {gateway}\n")),
        "{resolv}"
    );
    assert!(
        resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv}"
    );

    // Pod to Service works (the firewall below must not get in its way).
    kubectl_ok(
        "n1",
        &[
            "expose",
            "deployment",
            "web",
            "--port",
            "80",
            "--target-port",
            "8080",
        ],
    );
    let body = eventually(
        &format!("{} reaches Service web", from.name),
        Duration::from_secs(30),
        || {
            kubectl(
                "n1",
                &[
                    "exec",
                    &from.name,
                    "--",
                    "timeout",
                    "5",
                    "wget",
                    "-q",
                    "-O",
                    "-",
                    "http://web.default.svc.cluster.local/",
                ],
            )
        },
    );
    assert!(body.starts_with("hello-from-web-"), "{body}");

    // Pods never reach an agent. The API of the pod's own node (input) and of another node
    // (forwarded) refuse the connection (TCP reset)...
    for node in ["n1", "n2"] {
        let url = format!("http://{}:6443/", node_ip(node));
        let refused = eventually(
            &format!("{}'s API refused to {}", node, from.name),
            Duration::from_secs(30),
            || match kubectl(
                "n1",
                &[
                    "exec", &from.name, "--", "timeout", "5", "wget", "-q", "-O", "-", &url,
                ],
            ) {
                Err(e) if e.contains("Connection refused") => Ok(e),
                other => Err(format!("not refused: {other:?}")),
            },
        );
        assert!(refused.contains("Connection refused"), "{refused}");
    }
    // ... and their p2p port (QUIC over UDP) answers a QUIC packet from the host's network,
    // but a pod gets ICMP port unreachable: the same probe from the pod's network namespace.
    let pod_netns = netns_of(&from.ip);
    for node in ["n1", "n2"] {
        let p2p: std::net::SocketAddr = format!("{}:7946", node_ip(node)).parse().unwrap();
        assert_eq!(
            quic_probe(None, p2p),
            Ok(()),
            "{node}'s p2p port answers the host"
        );
        let from_pod = quic_probe(Some(&pod_netns), p2p);
        assert!(
            matches!(&from_pod, Err(e) if e.contains("refused")),
            "{node}'s p2p port refused to the pod: {from_pod:?}"
        );
    }
    // The rules that did it, in the node's table.
    let rules = Command::new("ip")
        .args([
            "netns", "exec", "shoal-n1", "nft", "list", "chain", "ip", "shoal",
        ])
        .arg("pods-to-agent")
        .output()
        .expect("nft");
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(
        rules.contains("udp . 7946") && rules.contains("tcp . 6443"),
        "{rules}"
    );
    kubectl_ok("n1", &["delete", "service", "web"]);
    kubectl_ok("n1", &["delete", "deployment", "web"]);
}

/// The network namespace (`/proc/PID/ns/net`) of the pod with address `ip`: that of a process
/// of the pod (the testnet's agents share the host's pid namespace).
fn netns_of(ip: &Ipv4Addr) -> String {
    let out = Command::new("pgrep")
        .args(["-f", "httpd -f -p 8080"])
        .output()
        .expect("pgrep");
    let want = format!("inet {ip}/");
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let ns = format!("/proc/{pid}/ns/net");
        let addrs = Command::new("nsenter")
            .args([&format!("--net={ns}"), "ip", "-4", "-o", "addr"])
            .output();
        if let Ok(a) = addrs {
            if String::from_utf8_lossy(&a.stdout).contains(&want) {
                return ns;
            }
        }
    }
    panic!("no process of the pod with address {ip}");
}

/// Sends a QUIC long-header packet of an unknown version (1,200 bytes, as an Initial must be)
/// to `to` from network namespace `netns` (else the test's own): a QUIC server answers with a
/// Version Negotiation packet (`Ok`); `Err` says what happened instead (`refused` when an
/// ICMP port unreachable came back, a timeout when nothing did).
fn quic_probe(netns: Option<&str>, to: std::net::SocketAddr) -> Result<(), String> {
    let netns = netns.map(str::to_string);
    std::thread::spawn(move || {
        if let Some(ns) = netns {
            let f = std::fs::File::open(&ns).map_err(|e| format!("{ns}: {e}"))?;
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("setns {ns}: {e}"))?;
        }
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        socket.connect(to).map_err(|e| e.to_string())?;
        socket
            .set_read_timeout(Some(Duration::from_secs(1)))
            .map_err(|e| e.to_string())?;
        let mut packet = vec![0u8; 1200];
        packet[0] = 0xc0; // long header, fixed bit
        packet[1..5].copy_from_slice(&0x1a2a_3a4a_u32.to_be_bytes()); // a reserved version
        packet[5] = 8; // destination connection id: 8 bytes
        packet[6..14].copy_from_slice(b"shoal-ci");
        packet[14] = 8; // source connection id: 8 bytes
        packet[15..23].copy_from_slice(b"attacker");
        let mut last = String::new();
        for _ in 0..3 {
            socket.send(&packet).map_err(|e| e.to_string())?;
            let mut buf = [0u8; 1500];
            match socket.recv(&mut buf) {
                // Version Negotiation: long header, version 0.
                Ok(n) if n >= 5 && buf[0] & 0x80 != 0 && buf[1..5] == [0; 4] => return Ok(()),
                Ok(n) => last = format!("an answer of {n} bytes that is not Version Negotiation"),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return Err(format!("refused: {e}"))
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    })
    .join()
    .expect("probe thread")
}
