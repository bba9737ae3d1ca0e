//! Cluster DNS end to end: busybox pods on two nodes resolve a Service by all four name forms
//! (through their resolv.conf's search list, from their node's DNS server at the pod gateway)
//! to its ClusterIP; unknown names and names outside the cluster fail with NXDOMAIN at once; a
//! Service created later resolves, and stops resolving once deleted. On the same testnet, a
//! StatefulSet behind a headless Service: its pods come up in order with their own hostnames
//! and DNS names (`db-1.db`), a deleted pod comes back under its name, and scaling down
//! removes the highest ordinal first.

use std::collections::BTreeMap;
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
    statefulset_identities(clients[1].0);
    for node in ["n1", "n3"] {
        let log = agent_log(node);
        assert!(
            log.contains("DNS: serving"),
            "{node} logs where it serves:\n{log}"
        );
    }
}

const HEADLESS_DB: &str = r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"},
    "spec": {"clusterIP": "None", "selector": {"app": "db"}, "ports": [{"name": "tcp", "port": 5432}]}}"#;

const STATEFULSET_DB: &str = r#"{"apiVersion": "apps/v1", "kind": "StatefulSet",
    "metadata": {"name": "db"},
    "spec": {"replicas": 3, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
             "template": {"metadata": {"labels": {"app": "db"}},
                          "spec": {"terminationGracePeriodSeconds": 1,
                                   "containers": [{"name": "main", "image": "shoal.test/busybox:1",
                                                   "command": ["sleep", "3600"]}]}}}}"#;

/// One pod of the StatefulSet as served: (uid, terminating, pod IP, creation time, Ready since).
type DbPod = (String, bool, String, String, String);

/// The StatefulSet's pods as served, by name.
fn db_pods() -> Result<BTreeMap<String, DbPod>, String> {
    let out = kubectl("n1", &["get", "pods", "-l", "app=db", "-o", "json"])?;
    let list: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| format!("bad JSON: {e}: {out}"))?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
            let ready = p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready" && c["status"] == "True")
                .map(|c| s(&c["lastTransitionTime"]))
                .unwrap_or_default();
            (
                s(&p["metadata"]["name"]),
                (
                    s(&p["metadata"]["uid"]),
                    !p["metadata"]["deletionTimestamp"].is_null(),
                    s(&p["status"]["podIP"]),
                    s(&p["metadata"]["creationTimestamp"]),
                    ready,
                ),
            )
        })
        .collect())
}

/// A StatefulSet of 3 (OrderedReady) behind the headless Service `db`, seen from `client`.
fn statefulset_identities(client: &str) {
    apply("n1", HEADLESS_DB);
    apply("n1", STATEFULSET_DB);
    kubectl_ok(
        "n1",
        &["rollout", "status", "statefulset/db", "--timeout=180s"],
    );
    let pods = db_pods().expect("listing db pods");
    let names: Vec<&String> = pods.keys().collect();
    assert_eq!(names, ["db-0", "db-1", "db-2"], "{pods:?}");
    // OrderedReady: each pod was created no earlier than its predecessor became Ready.
    for (before, after) in [("db-0", "db-1"), ("db-1", "db-2")] {
        let ready = &pods[before].4;
        let created = &pods[after].3;
        assert!(!ready.is_empty(), "{before} is Ready: {pods:?}");
        assert!(
            created >= ready,
            "{after} created {created}, before {before} was Ready ({ready})"
        );
    }
    let table = kubectl_ok("n1", &["get", "statefulset", "db"]);
    assert!(table.contains("READY") && table.contains("3/3"), "{table}");

    // Its own hostname and name in /etc/hosts; its DNS name from another pod.
    let host = text(&exec("n1", "db-1", &["hostname"]));
    assert_eq!(host.trim(), "db-1");
    let hosts = text(&exec("n1", "db-1", &["cat", "/etc/hosts"]));
    let ip1 = pods["db-1"].2.clone();
    assert!(
        hosts.contains(&format!("{ip1}\tdb-1.db.default.svc.cluster.local\tdb-1")),
        "{hosts}"
    );
    eventually(&format!("db-1.db resolves in {client}"), WAIT, || {
        resolves_to(client, "db-1.db", &ip1)
    });
    // The Service's name answers every ready pod.
    eventually(&format!("db answers every pod in {client}"), WAIT, || {
        let out = text(&exec(
            "n1",
            client,
            &["nslookup", "-type=a", "db.default.svc.cluster.local"],
        ));
        pods.values()
            .all(|p| out.contains(&format!("Address: {}", p.2)))
            .then_some(())
            .ok_or(out)
    });

    // A deleted pod comes back under its name (a new uid), once the old one is gone.
    let old_uid = pods["db-1"].0.clone();
    kubectl_ok("n1", &["delete", "pod", "db-1", "--wait=false"]);
    eventually("db-1 re-created and Ready", WAIT, || {
        let pods = db_pods()?;
        match pods.get("db-1") {
            Some((uid, false, _, _, ready)) if *uid != old_uid && !ready.is_empty() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    kubectl_ok(
        "n1",
        &["rollout", "status", "statefulset/db", "--timeout=120s"],
    );

    // Scale to 1: db-2 goes before db-1 is touched.
    kubectl_ok("n1", &["scale", "statefulset", "db", "--replicas=1"]);
    eventually("db scaled to db-0 alone", WAIT, || {
        let pods = db_pods()?;
        let alive = |n: &str| pods.get(n).is_some_and(|p| !p.1);
        assert!(
            alive("db-1") || !pods.contains_key("db-2"),
            "db-1 went while db-2 was still there: {pods:?}"
        );
        let names: Vec<&String> = pods.keys().collect();
        (names == ["db-0"]).then_some(()).ok_or(format!("{pods:?}"))
    });
    let table = kubectl_ok("n1", &["get", "statefulset", "db"]);
    assert!(table.contains("1/1"), "{table}");
}
