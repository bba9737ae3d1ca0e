//! Cluster DNS end to end: busybox pods on two nodes resolve a Service by all four name forms
//! (through their resolv.conf's search list, from their node's DNS server at the pod gateway)
//! to its ClusterIP; unknown names and names outside the cluster fail with NXDOMAIN at once; a
//! Service created later resolves, and stops resolving once deleted. On the same testnet, a
//! StatefulSet behind a headless Service: its pods come up in order with their own hostnames
//! and DNS names (`db-1.db`), a deleted pod comes back under its name, and scaling down
//! removes the highest ordinal first. Then a StatefulSet with volumeClaimTemplates: each pod
//! gets its own local-path claim, and what web-1 wrote is there after its pod is deleted and
//! after its node's agent restarts; bad claims wait with an event or are refused (422); a
//! claim of policy Delete has its directory removed once released.

use std::collections::{BTreeMap, BTreeSet};
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
    statefulset_volumes();
    for node in ["n1", "n3"] {
        let log = agent_log(node);
        assert!(
            log.contains("DNS: serving"),
            "{node} logs where it serves:\n{log}"
        );
    }
    statefulset_survives_power_loss();
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
    for (name, pod) in &pods {
        eventually(&format!("{name}.db resolves in {client}"), WAIT, || {
            resolves_to(client, &format!("{name}.db"), &pod.2)
        });
    }
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

    // describe, restart, history and undo (ControllerRevisions).
    let described = kubectl_ok("n1", &["describe", "statefulset", "db"]);
    assert!(
        described.contains("Replicas:") && described.contains("Pods Status:"),
        "{described}"
    );
    let first = revision_labels()
        .into_iter()
        .next()
        .expect("a revision label");
    let history = kubectl_ok("n1", &["rollout", "history", "statefulset/db"]);
    assert_eq!(history_revisions(&history), ["1"], "{history}");
    kubectl_ok("n1", &["rollout", "restart", "statefulset/db"]);
    kubectl_ok(
        "n1",
        &["rollout", "status", "statefulset/db", "--timeout=180s"],
    );
    let restarted = revision_labels();
    assert_eq!(restarted.len(), 1, "{restarted:?}");
    assert!(!restarted.contains(&first), "{restarted:?}");
    let history = kubectl_ok("n1", &["rollout", "history", "statefulset/db"]);
    assert_eq!(history_revisions(&history), ["1", "2"], "{history}");
    let shown = kubectl_ok(
        "n1",
        &["rollout", "history", "statefulset/db", "--revision=2"],
    );
    assert!(
        shown.contains("kubectl.kubernetes.io/restartedAt"),
        "{shown}"
    );
    let revisions = kubectl_ok("n1", &["get", "controllerrevisions"]);
    assert!(
        revisions
            .lines()
            .next()
            .unwrap_or_default()
            .contains("CONTROLLER")
            && revisions.contains(&format!("{first} "))
            && revisions.contains("statefulset.apps/db"),
        "{revisions}"
    );
    let undone = kubectl_ok(
        "n1",
        &["rollout", "undo", "statefulset/db", "--to-revision=1"],
    );
    assert!(undone.contains("rolled back"), "{undone}");
    kubectl_ok(
        "n1",
        &["rollout", "status", "statefulset/db", "--timeout=180s"],
    );
    eventually("every db pod back at the first revision", WAIT, || {
        let labels = revision_labels();
        let pods = db_pods()?;
        (labels == BTreeSet::from([first.clone()])
            && pods.len() == 3
            && pods.values().all(|p| !p.1))
        .then_some(())
        .ok_or(format!("{labels:?} {pods:?}"))
    });
    let history = kubectl_ok("n1", &["rollout", "history", "statefulset/db"]);
    assert_eq!(history_revisions(&history), ["2", "3"], "{history}");

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

/// The `controller-revision-hash` labels of the db pods.
fn revision_labels() -> BTreeSet<String> {
    kubectl_ok(
        "n1",
        &[
            "get",
            "pods",
            "-l",
            "app=db",
            "-o",
            r#"jsonpath={range .items[*]}{.metadata.labels.controller-revision-hash}{"\n"}{end}"#,
        ],
    )
    .lines()
    .filter(|l| !l.trim().is_empty())
    .map(|l| l.trim().to_string())
    .collect()
}

const STATEFULSET_WEB: &str = r#"{"apiVersion": "apps/v1", "kind": "StatefulSet",
    "metadata": {"name": "web"},
    "spec": {"replicas": 3, "serviceName": "web", "podManagementPolicy": "Parallel",
             "selector": {"matchLabels": {"app": "web-data"}},
             "template": {"metadata": {"labels": {"app": "web-data"}},
                          "spec": {"terminationGracePeriodSeconds": 1,
                                   "containers": [{"name": "main", "image": "shoal.test/busybox:1",
                                                   "command": ["sleep", "3600"],
                                                   "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}},
             "volumeClaimTemplates": [{"metadata": {"name": "data"},
                 "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}}}]}}"#;

fn claim(name: &str, extra: &str) -> String {
    format!(
        r#"{{"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {{"name": "{name}"}},
            "spec": {{"accessModes": ["ReadWriteOnce"], "resources": {{"requests": {{"storage": "{}"}}}}{extra}}}}}"#,
        if name == "huge" { "100Ti" } else { "16Mi" }
    )
}

fn claim_pod(name: &str, claim: &str) -> String {
    format!(
        r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "{name}"}},
            "spec": {{"terminationGracePeriodSeconds": 1,
                      "containers": [{{"name": "main", "image": "shoal.test/busybox:1", "command": ["sleep", "3600"],
                                       "volumeMounts": [{{"name": "v", "mountPath": "/data"}}]}}],
                      "volumes": [{{"name": "v", "persistentVolumeClaim": {{"claimName": "{claim}"}}}}]}}}}"#
    )
}

/// (uid, node, Ready) of a pod as served.
fn pod_state(name: &str) -> Result<(String, String, bool), String> {
    let out = kubectl(
        "n1",
        &[
            "get",
            "pod",
            name,
            "-o",
            r#"jsonpath={.metadata.uid} {.spec.nodeName} {.status.conditions[?(@.type=="Ready")].status} {.metadata.deletionTimestamp}"#,
        ],
    )?;
    let parts: Vec<&str> = out.split_whitespace().collect();
    match parts.as_slice() {
        [uid, node, ready] => Ok((uid.to_string(), node.to_string(), *ready == "True")),
        _ => Err(format!("pod {name}: {out}")),
    }
}

/// The events of object `name` as `reason: message` lines.
fn events_of(name: &str) -> String {
    let out = kubectl("n1", &["get", "events", "-o", "json"]).unwrap_or_default();
    let list: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["involvedObject"]["name"] == name)
        .map(|e| {
            format!(
                "{}: {}",
                e["reason"].as_str().unwrap_or(""),
                e["message"].as_str().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn read_data(pod: &str) -> Result<String, String> {
    let out = exec("n1", pod, &["cat", "/data/f"]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .ok_or_else(|| text(&out))
}

/// Waits until `pod` is re-created (a uid other than `old_uid`) and Ready; its node.
fn recreated(pod: &str, old_uid: &str) -> String {
    eventually(
        &format!("{pod} re-created and Ready"),
        WAIT,
        || match pod_state(pod)? {
            (uid, node, true) if uid != old_uid => Ok(node),
            other => Err(format!("{other:?}")),
        },
    )
}

/// volumeClaimTemplates and local-path volumes (docs/workloads.md, "Persistent volumes").
fn statefulset_volumes() {
    apply("n1", STATEFULSET_WEB);
    kubectl_ok(
        "n1",
        &["rollout", "status", "statefulset/web", "--timeout=180s"],
    );
    let pvcs = kubectl_ok("n1", &["get", "pvc"]);
    for i in 0..3 {
        let row = pvcs
            .lines()
            .find(|l| l.starts_with(&format!("data-web-{i} ")))
            .unwrap_or_else(|| panic!("no claim data-web-{i}:\n{pvcs}"));
        assert!(
            row.contains("Bound")
                && row.contains("64Mi")
                && row.contains("RWO")
                && row.contains("local-path"),
            "{row}"
        );
    }
    let header = pvcs.lines().next().unwrap_or_default();
    assert!(
        header.contains("STATUS") && header.contains("VOLUME") && header.contains("ACCESS MODES"),
        "{pvcs}"
    );
    let pvs = kubectl_ok("n1", &["get", "pv"]);
    assert!(
        pvs.contains("default/data-web-1") && pvs.contains("Delete") && pvs.contains("Bound"),
        "{pvs}"
    );
    let sc = kubectl_ok("n1", &["get", "sc"]);
    assert!(
        sc.contains("local-path (default)")
            && sc.contains("shoal.io/local-path")
            && sc.contains("WaitForFirstConsumer"),
        "{sc}"
    );

    // web-1 writes; the file is in its volume's directory on its node.
    let (uid, node, _) = pod_state("web-1").expect("web-1");
    let out = exec("n1", "web-1", &["sh", "-c", "echo hello-web-1 > /data/f"]);
    assert!(out.status.success(), "{}", text(&out));
    let volume = kubectl_ok(
        "n1",
        &[
            "get",
            "pvc",
            "data-web-1",
            "-o",
            "jsonpath={.spec.volumeName}",
        ],
    );
    let dir = run_dir()
        .join(&node)
        .join("data/local-path")
        .join(format!("{}_default_data-web-1", volume.trim()));
    assert_eq!(
        std::fs::read_to_string(dir.join("f"))
            .unwrap_or_default()
            .trim(),
        "hello-web-1",
        "{}",
        dir.display()
    );

    // The pod is deleted: its successor is on the same node, with the data.
    kubectl_ok("n1", &["delete", "pod", "web-1", "--wait=false"]);
    let again = recreated("web-1", &uid);
    assert_eq!(again, node, "web-1 stays with its volume");
    assert_eq!(read_data("web-1").as_deref(), Ok("hello-web-1"));

    // Its node's agent restarts; then the pod is deleted again and mounts the volume anew.
    script("restart.sh", &[&node]);
    eventually("the restarted agent serves again", WAIT, || {
        kubectl(&node, &["get", "pods"]).map(|_| ())
    });
    eventually("web-1 still reads its data", WAIT, || {
        read_data("web-1").and_then(|d| (d == "hello-web-1").then_some(()).ok_or(d))
    });
    let (uid, _, _) = pod_state("web-1").expect("web-1");
    kubectl_ok("n1", &["delete", "pod", "web-1", "--wait=false"]);
    assert_eq!(recreated("web-1", &uid), node);
    assert_eq!(read_data("web-1").as_deref(), Ok("hello-web-1"));
    // Scaled down, the claims stay.
    kubectl_ok("n1", &["scale", "statefulset", "web", "--replicas=1"]);
    eventually("web scaled to 1", WAIT, || {
        let pods = kubectl("n1", &["get", "pods", "-l", "app=web-data", "-o", "name"])?;
        (pods.trim() == "pod/web-0").then_some(()).ok_or(pods)
    });
    let pvcs = kubectl_ok("n1", &["get", "pvc"]);
    assert!(
        pvcs.contains("data-web-2") && pvcs.contains("data-web-1"),
        "{pvcs}"
    );

    // What shoal cannot honour is refused, naming the field.
    for (extra, field) in [
        (r#", "volumeMode": "Block""#, "spec.volumeMode"),
        (
            r#", "dataSource": {"kind": "PersistentVolumeClaim", "name": "data-web-0"}"#,
            "spec.dataSource",
        ),
        (
            r#", "selector": {"matchLabels": {"a": "b"}}"#,
            "spec.selector",
        ),
    ] {
        let err = super::workloads::kubectl_stdin("n1", &["apply"], &claim("bad", extra))
            .expect_err("refused");
        assert!(
            err.contains(field) && err.contains("is invalid"),
            "{field}: {err}"
        );
    }
    let rwx = claim("bad", "").replace("ReadWriteOnce", "ReadWriteMany");
    let err = super::workloads::kubectl_stdin("n1", &["apply"], &rwx).expect_err("refused");
    assert!(err.contains("spec.accessModes"), "{err}");

    // A claim larger than any node, and one of an unknown class: Pending, with an event.
    apply("n1", &claim("huge", ""));
    apply("n1", &claim("odd", r#", "storageClassName": "fast""#));
    apply("n1", &claim_pod("huge-user", "huge"));
    apply("n1", &claim_pod("odd-user", "odd"));
    eventually("huge has a ProvisioningFailed event", WAIT, || {
        let ev = events_of("huge");
        ev.contains("ProvisioningFailed: no node can provision it")
            .then_some(())
            .ok_or(ev)
    });
    eventually("odd has a ProvisioningFailed event", WAIT, || {
        let ev = events_of("odd");
        ev.contains(r#"storageclass.storage.k8s.io "fast" not found"#)
            .then_some(())
            .ok_or(ev)
    });
    let pvcs = kubectl_ok("n1", &["get", "pvc", "huge", "odd"]);
    assert_eq!(pvcs.matches("Pending").count(), 2, "{pvcs}");
    let ev = events_of("huge-user");
    assert!(ev.contains("did not have enough free storage"), "{ev}");

    // Reclaim policy Delete: the claim deleted, its node removes the directory and the volume.
    apply("n1", &claim("scratch", ""));
    apply("n1", &claim_pod("scratch-user", "scratch"));
    let node = eventually("scratch-user Ready", WAIT, || {
        match pod_state("scratch-user")? {
            (_, node, true) => Ok(node),
            other => Err(format!("{other:?}")),
        }
    });
    let volume = kubectl_ok(
        "n1",
        &["get", "pvc", "scratch", "-o", "jsonpath={.spec.volumeName}"],
    );
    let volume = volume.trim().to_string();
    let dir = run_dir()
        .join(&node)
        .join("data/local-path")
        .join(format!("{volume}_default_scratch"));
    assert!(dir.is_dir(), "{}", dir.display());
    // In use: the claim deleted stays Terminating (pvc-protection), and its volume deleted
    // stays Terminating while the claim exists (pv-protection); both go once the pod does.
    let finalizers = kubectl_ok(
        "n1",
        &[
            "get",
            "pvc",
            "scratch",
            "-o",
            "jsonpath={.metadata.finalizers}",
        ],
    );
    assert!(
        finalizers.contains("kubernetes.io/pvc-protection"),
        "{finalizers}"
    );
    kubectl_ok("n1", &["delete", "pvc", "scratch", "--wait=false"]);
    kubectl_ok("n1", &["delete", "pv", &volume, "--wait=false"]);
    // A pod placed after the deletions: the leader that placed it has seen them.
    apply(
        "n1",
        r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "barrier"},
            "spec": {"terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": "shoal.test/busybox:1", "command": ["sleep", "3600"]}]}}"#,
    );
    eventually("barrier placed", WAIT, || match pod_state("barrier") {
        Ok((_, node, _)) if !node.is_empty() => Ok(()),
        other => Err(format!("{other:?}")),
    });
    let row = kubectl_ok("n1", &["get", "pvc", "scratch"]);
    assert!(row.contains("Terminating"), "{row}");
    let row = kubectl_ok("n1", &["get", "pv", &volume]);
    assert!(row.contains("Terminating"), "{row}");
    assert!(dir.is_dir(), "{}", dir.display());
    assert!(matches!(pod_state("scratch-user"), Ok((_, _, true))));
    kubectl_ok("n1", &["delete", "pod", "scratch-user", "barrier"]);
    eventually(
        "the released volume is deleted with its directory",
        WAIT,
        || {
            let pvs = kubectl("n1", &["get", "pv", "-o", "name"])?;
            let pvcs = kubectl("n1", &["get", "pvc", "-o", "name"])?;
            (!pvs.contains(&volume)
                && !dir.exists()
                && !pvcs
                    .lines()
                    .any(|l| l.trim() == "persistentvolumeclaim/scratch"))
            .then_some(())
            .ok_or(format!("{pvs} {pvcs} {}", dir.exists()))
        },
    );
}

/// A StatefulSet pod's node loses power (`testnet/kill.sh`: agent and containers killed at
/// once) and boots again (`testnet/start.sh`): while it is down its identity is not re-created
/// anywhere else (fencing, docs/workloads.md "What a partition guarantees (StatefulSets)"), and
/// after the boot the same pod runs on the same node with the data its volume held.
fn statefulset_survives_power_loss() {
    kubectl_ok("n1", &["scale", "statefulset", "web", "--replicas=3"]);
    kubectl_ok(
        "n1",
        &["rollout", "status", "statefulset/web", "--timeout=180s"],
    );
    // An ordinal whose node is not n1 (n1 serves this test's kubectl).
    let (pod, uid, node) = (0..3)
        .map(|i| format!("web-{i}"))
        .find_map(|pod| match pod_state(&pod) {
            Ok((uid, node, true)) if node != "n1" => Some((pod, uid, node)),
            _ => None,
        })
        .expect("a Ready web pod on n2 or n3");
    let out = exec(
        "n1",
        &pod,
        &["sh", "-c", "echo power-loss > /data/f && sync"],
    );
    assert!(out.status.success(), "{}", text(&out));

    script("kill.sh", &[&node]);
    eventually(&format!("{node} NotReady"), WAIT, || {
        let rows = nodes_via("n1")?;
        match rows.get(&node) {
            Some(row) if row.status.starts_with("NotReady") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    // Well past failure detection and several leader rounds: still the one pod, on its node.
    always(
        &format!("{pod} is not re-created while {node} is down"),
        Duration::from_secs(20),
        || match pod_state(&pod) {
            Ok((u, n, _)) if u == uid && n == node => Ok(()),
            Ok(other) => Err(format!("{pod} is now {other:?}")),
            // Not listed at all would mean deleted: the identity is released.
            Err(e) => Err(e),
        },
    );

    script("start.sh", &[&node]);
    let (u, n) = eventually(
        &format!("{pod} Ready again after the boot"),
        WAIT,
        || match pod_state(&pod)? {
            (u, n, true) => Ok((u, n)),
            other => Err(format!("{other:?}")),
        },
    );
    assert_eq!(n, node, "{pod} stays with its volume");
    assert_eq!(u, uid, "the same pod: its identity never moved");
    eventually(
        &format!("{pod} reads what it wrote before the power loss"),
        WAIT,
        || read_data(&pod).and_then(|d| (d == "power-loss").then_some(()).ok_or(d)),
    );
}
