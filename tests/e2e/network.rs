//! The pod network end to end: a 3-replica Deployment spread over 3 testnet nodes gets one
//! address per pod from its node's pod CIDR (real CNI plugins), `kubectl get pods -o wide`
//! shows it, a pod on n1 reaches the pods on n2 and n3 by IP (host routes between the nodes),
//! and a pod resolves through its node's gateway.

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
    kubectl_ok("n1", &["delete", "deployment", "web"]);
}
