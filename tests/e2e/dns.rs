//! Cluster DNS end to end: busybox pods on two nodes resolve a Service by all four name forms
//! (through their resolv.conf's search list, from their node's DNS server at the pod gateway)
//! to its ClusterIP; unknown names and names outside the cluster fail with NXDOMAIN at once; a
//! Service created later resolves, and stops resolving once deleted.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::workloads::apply;
use crate::support::*;

/// Time for a pod to start, or for a change to reach a node's zone.
const WAIT: Duration = Duration::from_secs(60);

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `kubectl exec POD -- ARGS` through `ctx`: the output, whatever the exit code.
fn exec(ctx: &str, pod: &str, args: &[&str]) -> Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig())
        .args(["--context", ctx, "--request-timeout=20s", "exec", pod, "--"])
        .args(args)
        .output()
        .expect("running kubectl exec")
}

fn service(name: &str) -> String {
    format!(
        r#"{{"apiVersion": "v1", "kind": "Service", "metadata": {{"name": "{name}"}},
            "spec": {{"selector": {{"app": "{name}"}},
                      "ports": [{{"name": "http", "port": 80, "targetPort": 8080}}]}}}}"#
    )
}

fn client_pod(name: &str, node: &str) -> String {
    format!(
        r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "{name}"}},
            "spec": {{"nodeName": "{node}", "terminationGracePeriodSeconds": 1,
                      "containers": [{{"name": "main", "image": "shoal.test/busybox:1",
                                       "command": ["sleep", "3600"]}}]}}}}"#
    )
}

fn cluster_ip(ctx: &str, name: &str) -> String {
    eventually(&format!("Service {name} has a ClusterIP"), WAIT, || {
        let ip = kubectl(
            ctx,
            &["get", "svc", name, "-o", "jsonpath={.spec.clusterIP}"],
        )?;
        (!ip.trim().is_empty())
            .then(|| ip.trim().to_string())
            .ok_or_else(|| "no clusterIP yet".to_string())
    })
}

/// `ping -c 1 NAME` in `pod`: busybox's ping resolves with the C library's `getaddrinfo`,
/// which applies resolv.conf's search list and `ndots:5` as any program would (busybox's
/// `nslookup` only searches for names without a dot). Ok(output) if it shows `(ip)`; whether
/// the ClusterIP answers the ping does not matter.
fn resolves_to(pod: &str, name: &str, ip: &str) -> Result<String, String> {
    let out = exec("n1", pod, &["ping", "-c", "1", "-W", "1", name]);
    let shown = text(&out);
    shown
        .contains(&format!("({ip})"))
        .then(|| shown.clone())
        .ok_or(shown)
}

#[test]
fn pods_resolve_services_by_every_name_form() {
    let _tn = Testnet::up(3);
    apply("n1", &service("web"));
    let ip = cluster_ip("n1", "web");
    let clients = [("dns-client-1", "n1"), ("dns-client-3", "n3")];
    for (pod, node) in clients {
        apply("n1", &client_pod(pod, node));
    }
    for (pod, _) in clients {
        eventually(&format!("pod {pod} Running"), WAIT, || {
            let phase = kubectl("n1", &["get", "pod", pod, "-o", "jsonpath={.status.phase}"])?;
            (phase == "Running").then_some(()).ok_or(phase)
        });
    }

    for (pod, node) in clients {
        // The pod asks its own node's server, at its subnet's gateway.
        let conf = text(&exec("n1", pod, &["cat", "/etc/resolv.conf"]));
        assert!(
            conf.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
            "{pod}: {conf}"
        );
        let nameserver = conf
            .lines()
            .find_map(|l| l.strip_prefix("nameserver "))
            .unwrap_or_else(|| panic!("{pod}: no nameserver in {conf}"))
            .trim()
            .to_string();
        let cidr = kubectl_ok(
            "n1",
            &["get", "node", node, "-o", "jsonpath={.spec.podCIDR}"],
        );
        let gateway = cidr.trim().split('/').next().unwrap_or_default();
        let gateway: std::net::Ipv4Addr = gateway.parse().expect("a podCIDR");
        let gateway = std::net::Ipv4Addr::from(u32::from(gateway) + 1);
        assert_eq!(nameserver, gateway.to_string(), "{pod} on {node}");

        for name in [
            "web",
            "web.default",
            "web.default.svc",
            "web.default.svc.cluster.local",
        ] {
            eventually(&format!("{name} resolves in {pod}"), WAIT, || {
                resolves_to(pod, name, &ip)
            });
        }
        // And as a DNS client shows it: the full name, the ClusterIP.
        let out = text(&exec(
            "n1",
            pod,
            &["nslookup", "-type=a", "web.default.svc.cluster.local"],
        ));
        assert!(out.contains(&format!("Address: {ip}")), "{pod}: {out}");

        // Unknown names, inside and outside the cluster domain, fail with NXDOMAIN at once
        // (the testnet runs with --dns-upstream none). The bound is generous: kubectl exec
        // takes part of it; a resolver timeout would take 5 s per try.
        for name in [
            "no-such-service",
            "no-such-service.default.svc.cluster.local",
            "example.com",
        ] {
            let started = Instant::now();
            let out = exec("n1", pod, &["nslookup", "-type=a", name]);
            let took = started.elapsed();
            assert!(!out.status.success(), "{pod} {name}: {}", text(&out));
            assert!(
                text(&out).contains("NXDOMAIN"),
                "{pod} {name}: {}",
                text(&out)
            );
            assert!(took < Duration::from_secs(5), "{pod} {name} took {took:?}");
            // getaddrinfo walks the whole search list (A and AAAA for each of 4 names).
            let started = Instant::now();
            let out = exec("n1", pod, &["ping", "-c", "1", "-W", "1", name]);
            let took = started.elapsed();
            assert!(
                text(&out).contains("bad address"),
                "{pod} {name}: {}",
                text(&out)
            );
            assert!(
                took < Duration::from_secs(5),
                "{pod} {name} (ping) took {took:?}"
            );
        }

        // SRV for the named port.
        let out = text(&exec(
            "n1",
            pod,
            &[
                "nslookup",
                "-type=srv",
                "_http._tcp.web.default.svc.cluster.local",
            ],
        ));
        assert!(
            out.contains("80 web.default.svc.cluster.local"),
            "{pod}: {out}"
        );
    }

    // A Service created now resolves everywhere; deleted, it stops resolving.
    apply("n3", &service("late"));
    let late = cluster_ip("n1", "late");
    for (pod, _) in clients {
        eventually(&format!("late resolves in {pod}"), WAIT, || {
            resolves_to(pod, "late", &late)
        });
    }
    kubectl_ok("n1", &["delete", "svc", "late"]);
    for (pod, _) in clients {
        eventually(&format!("late is gone in {pod}"), WAIT, || {
            let out = text(&exec(
                "n1",
                pod,
                &["nslookup", "-type=a", "late.default.svc.cluster.local"],
            ));
            out.contains("NXDOMAIN").then_some(()).ok_or(out)
        });
    }
    for node in ["n1", "n3"] {
        let log = agent_log(node);
        assert!(
            log.contains("DNS: serving"),
            "{node} logs where it serves:\n{log}"
        );
    }
}
