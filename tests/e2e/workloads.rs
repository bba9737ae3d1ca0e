//! Workloads end to end: Deployments and bare pods applied with the real kubectl, run by the
//! real runc on every testnet node, surviving container deaths, node deaths, partitions and
//! agent restarts with exactly the desired number of copies.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// Time to get pods Running after a change (image present, nodes healthy).
const START: Duration = Duration::from_secs(60);

fn deployment(name: &str, replicas: u32, command: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  labels:
    app: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: {name}
  template:
    metadata:
      labels:
        app: {name}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: main
        image: shoal.test/busybox:1
        command: ["sh", "-c", {command:?}]
        resources:
          requests:
            cpu: 10m
            memory: 8Mi
"#
    )
}

const TICKER: &str =
    "echo hello from $HOSTNAME; i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done";

/// `kubectl apply -f -` (or another verb taking `-f -`) with `manifest` on stdin.
pub(super) fn kubectl_stdin(ctx: &str, verb: &[&str], manifest: &str) -> Result<String, String> {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig())
        .args(["--context", ctx, "--request-timeout=10s"])
        .args(verb)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run kubectl: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(manifest.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(format!(
            "kubectl {}: {}\n{}",
            verb.join(" "),
            text(&out.stdout),
            text(&out.stderr)
        ))
    }
}

pub(super) fn apply(ctx: &str, manifest: &str) {
    kubectl_stdin(ctx, &["apply"], manifest).unwrap_or_else(|e| panic!("{e}"));
}

/// A pod as the API shows it.
#[derive(Clone, Debug)]
struct PodRow {
    name: String,
    phase: String,
    node: String,
    ready: bool,
    restarts: u64,
    container_id: String,
    deleting: bool,
}

fn pods_via(ctx: &str, selector: &str) -> Result<Vec<PodRow>, String> {
    let out = kubectl(ctx, &["get", "pods", "-l", selector, "-o", "json"])?;
    let list: Value = serde_json::from_str(&out).map_err(|e| format!("bad JSON: {e}: {out}"))?;
    let items = list["items"].as_array().ok_or("no items")?;
    Ok(items
        .iter()
        .map(|p| {
            let cs = &p["status"]["containerStatuses"][0];
            PodRow {
                name: p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                phase: p["status"]["phase"].as_str().unwrap_or("").to_string(),
                node: p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
                ready: cs["ready"].as_bool().unwrap_or(false),
                restarts: cs["restartCount"].as_u64().unwrap_or(0),
                container_id: cs["containerID"].as_str().unwrap_or("").to_string(),
                deleting: !p["metadata"]["deletionTimestamp"].is_null(),
            }
        })
        .collect())
}

/// Exactly `n` pods match, all Running and ready, on nodes among `allowed`.
fn expect_running(
    ctx: &str,
    selector: &str,
    n: usize,
    allowed: &[String],
) -> Result<Vec<PodRow>, String> {
    let pods = pods_via(ctx, selector)?;
    let running: Vec<&PodRow> = pods
        .iter()
        .filter(|p| p.phase == "Running" && p.ready && !p.deleting)
        .collect();
    if pods.len() != n || running.len() != n {
        return Err(format!("want {n} running via {ctx}, have {pods:?}"));
    }
    if let Some(p) = pods.iter().find(|p| !allowed.contains(&p.node)) {
        return Err(format!(
            "{} runs on {} (allowed {allowed:?})",
            p.name, p.node
        ));
    }
    Ok(pods)
}

/// Container ids runc knows on `node` (its own runc root).
fn runc_list(node: &str) -> Vec<String> {
    let root = run_dir().join(node).join("runc");
    let out = Command::new("runc")
        .arg("--root")
        .arg(&root)
        .args(["list", "-q"])
        .output()
        .expect("run runc list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
        .collect()
}

/// runc containers that are running on `node`.
pub(super) fn runc_running(node: &str) -> BTreeSet<String> {
    let root = run_dir().join(node).join("runc");
    let out = Command::new("runc")
        .arg("--root")
        .arg(&root)
        .args(["list", "-f", "json"])
        .output()
        .expect("run runc list");
    let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    list.as_array()
        .map(|a| {
            a.iter()
                .filter(|c| c["status"] == "running")
                .filter_map(|c| c["id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Running containers per node, summed over `nodes`.
fn running_total(nodes: &[String]) -> (usize, BTreeMap<String, usize>) {
    let per: BTreeMap<String, usize> = nodes
        .iter()
        .map(|n| (n.clone(), runc_running(n).len()))
        .collect();
    (per.values().sum(), per)
}

fn runc_id(container_id: &str) -> String {
    container_id
        .split_once("://")
        .map(|(_, id)| id.to_string())
        .unwrap_or_else(|| container_id.to_string())
}

#[test]
fn deployment_runs_logs_restarts_scales_and_deletes() {
    let tn = Testnet::up(3);
    let manifest = deployment("web", 3, TICKER);
    apply("n1", &manifest);
    // A second apply of the same file is a no-op patch, not an error.
    apply("n1", &manifest);

    let pods = eventually("3 web pods Running", START, || {
        expect_running("n2", "app=web", 3, &tn.nodes)
    });
    let nodes: BTreeSet<&str> = pods.iter().map(|p| p.node.as_str()).collect();
    assert!(
        nodes.len() >= 2,
        "3 replicas on 3 empty nodes must spread over several, got {pods:?}"
    );
    let wide = kubectl_ok("n3", &["get", "deploy,rs,pods", "-o", "wide"]);
    for needle in [
        "deployment.apps/web",
        "3/3",
        "replicaset.apps/web-",
        "Running",
    ] {
        assert!(
            wide.contains(needle),
            "`get -o wide` lacks {needle}:\n{wide}"
        );
    }

    // Logs, through a node that does not run the pod.
    let pod = &pods[0];
    let via = tn.others(&[&pod.node])[0].clone();
    let logs = eventually("logs of a web pod", START, || {
        let l = kubectl(&via, &["logs", &pod.name])?;
        if l.contains("hello from") && l.contains("tick") {
            Ok(l)
        } else {
            Err(format!("logs so far: {l:?}"))
        }
    });
    assert!(logs.contains(&format!("hello from {}", pod.name)), "{logs}");

    // A container killed by hand on its host is restarted; RESTARTS counts up.
    let id = runc_id(&pod.container_id);
    assert!(!id.is_empty(), "no containerID in status: {pod:?}");
    let root = run_dir().join(&pod.node).join("runc");
    let killed = Command::new("runc")
        .arg("--root")
        .arg(&root)
        .args(["kill", &id, "KILL"])
        .status()
        .expect("runc kill");
    assert!(killed.success(), "runc kill {id} on {} failed", pod.node);
    eventually("the killed container restarted (RESTARTS 1)", START, || {
        let rows = pods_via("n1", "app=web")?;
        let row = rows
            .iter()
            .find(|p| p.name == pod.name)
            .ok_or("pod vanished")?;
        if row.restarts >= 1 && row.phase == "Running" && row.ready {
            Ok(())
        } else {
            Err(format!("{row:?}"))
        }
    });
    let previous = kubectl_ok(&via, &["logs", &pod.name, "--previous"]);
    assert!(previous.contains("hello from"), "--previous: {previous}");

    // Scale up, then down: exactly the desired count, also as runc sees it.
    kubectl_ok("n2", &["scale", "deploy/web", "--replicas=5"]);
    eventually("5 web pods Running", START, || {
        expect_running("n1", "app=web", 5, &tn.nodes)
    });
    kubectl_ok("n3", &["scale", "deploy/web", "--replicas=2"]);
    eventually("exactly 2 web pods and 2 containers", START, || {
        expect_running("n1", "app=web", 2, &tn.nodes)?;
        let (total, per) = running_total(&tn.nodes);
        if total == 2 {
            Ok(())
        } else {
            Err(format!("running containers: {per:?}"))
        }
    });

    // Delete: nothing left on any node.
    kubectl_stdin("n1", &["delete", "--wait=true"], &manifest).unwrap_or_else(|e| panic!("{e}"));
    eventually("no pods and no containers left", START, || {
        let pods = pods_via("n2", "app=web")?;
        if !pods.is_empty() {
            return Err(format!("pods left: {pods:?}"));
        }
        let left: BTreeMap<&String, Vec<String>> = tn
            .nodes
            .iter()
            .map(|n| (n, runc_list(n)))
            .filter(|(_, l)| !l.is_empty())
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("runc still lists {left:?}"))
        }
    });
}

#[test]
fn killed_node_is_replaced_and_returns_to_the_exact_count() {
    let tn = Testnet::up(3);
    apply("n1", &deployment("fo", 4, TICKER));
    let pods = eventually("4 fo pods Running", START, || {
        expect_running("n1", "app=fo", 4, &tn.nodes)
    });
    // Kill a node that runs at least one replica and is not n1 (we watch through n1).
    let victim = pods
        .iter()
        .map(|p| p.node.clone())
        .find(|n| n != "n1")
        .expect("4 replicas on 3 nodes must use a node other than n1");
    script("kill.sh", &[&victim]);
    let survivors = tn.others(&[&victim]);
    eventually("4 fo pods Running on the survivors", REACT, || {
        expect_running("n1", "app=fo", 4, &survivors)
    });
    script("start.sh", &[&victim]);
    eventually(
        "exactly 4 fo pods and 4 containers after the node returns",
        REACT,
        || {
            expect_running("n1", "app=fo", 4, &tn.nodes)?;
            let (total, per) = running_total(&tn.nodes);
            if total == 4 {
                Ok(())
            } else {
                Err(format!("running containers: {per:?}"))
            }
        },
    );
}

#[test]
fn partition_heals_to_the_exact_count() {
    let tn = Testnet::up(3);
    apply("n1", &deployment("pt", 3, TICKER));
    eventually("3 pt pods Running", START, || {
        expect_running("n1", "app=pt", 3, &tn.nodes)
    });
    script("partition.sh", &["n1 n2", "n3"]);
    let majority = vec!["n1".to_string(), "n2".to_string()];
    // Each side heals itself: the majority runs 3 on its nodes.
    eventually(
        "the majority side runs 3 pt pods on its nodes",
        REACT,
        || expect_running("n1", "app=pt", 3, &majority),
    );
    script("heal.sh", &[]);
    eventually(
        "exactly 3 pt pods and 3 containers after the heal",
        REACT,
        || {
            for ctx in &tn.nodes {
                expect_running(ctx, "app=pt", 3, &tn.nodes)?;
            }
            let (total, per) = running_total(&tn.nodes);
            if total == 3 {
                Ok(())
            } else {
                Err(format!("running containers: {per:?}"))
            }
        },
    );
}

#[test]
fn agent_restart_keeps_containers_running() {
    let tn = Testnet::up(2);
    apply("n1", &deployment("keep", 2, TICKER));
    let before = eventually("2 keep pods Running", START, || {
        expect_running("n1", "app=keep", 2, &tn.nodes)
    });
    let node = before[0].node.clone();
    let running_before = runc_running(&node);
    assert!(!running_before.is_empty());
    script("restart.sh", &[&node]);
    eventually("the restarted agent serves again", REACT, || {
        kubectl(&node, &["get", "pods", "-l", "app=keep"]).map(|_| ())
    });
    // Adopted, not restarted: same containers, RESTARTS unchanged, for a while.
    always("containers survive the agent restart", OBSERVE, || {
        let now = runc_running(&node);
        if !running_before.is_subset(&now) {
            return Err(format!("before {running_before:?}, now {now:?}"));
        }
        let rows = pods_via(&node, "app=keep")?;
        if rows.iter().any(|p| p.restarts > 0) {
            return Err(format!("restarted: {rows:?}"));
        }
        Ok(())
    });
    eventually("still exactly 2 keep pods Running", START, || {
        expect_running(&node, "app=keep", 2, &tn.nodes)
    });
}

#[test]
fn bad_manifests_are_refused_and_bad_commands_end_clearly() {
    let _tn = Testnet::up(1);
    let cases = [
        (
            deployment("neg", 1, "true").replace("replicas: 1", "replicas: -1"),
            "spec.replicas",
        ),
        (
            deployment("noimg", 1, "true").replace("image: shoal.test/busybox:1", "image: \"\""),
            "image",
        ),
        (deployment("Bad_Name", 1, "true"), "metadata.name"),
        (
            deployment("unk", 1, "true")
                .replace("image: shoal.test", "imagee: x\n        image: shoal.test"),
            "imagee",
        ),
    ];
    for (manifest, field) in cases {
        match kubectl_stdin("n1", &["apply"], &manifest) {
            Ok(out) => panic!("accepted an invalid manifest ({field}): {out}\n{manifest}"),
            Err(e) => assert!(e.contains(field), "error does not name {field}: {e}"),
        }
    }
    let listed = kubectl_ok("n1", &["get", "deploy", "-o", "name"]);
    assert!(
        listed.trim().is_empty(),
        "invalid objects were stored: {listed}"
    );

    // A command that does not exist ends in a clear status, not a stuck pod.
    kubectl_ok(
        "n1",
        &[
            "run",
            "nocmd",
            "--image=shoal.test/busybox:1",
            "--restart=Never",
            "--command",
            "--",
            "/no/such/binary",
        ],
    );
    eventually("nocmd reports why it cannot run", START, || {
        let pod: Value =
            serde_json::from_str(&kubectl("n1", &["get", "pod", "nocmd", "-o", "json"])?)
                .map_err(|e| e.to_string())?;
        let cs = &pod["status"]["containerStatuses"][0];
        let term = &cs["state"]["terminated"];
        let waiting = &cs["state"]["waiting"];
        let text = format!(
            "{} {} {}",
            term["reason"], term["message"], waiting["reason"]
        );
        let failed = pod["status"]["phase"] == "Failed" && text.contains("/no/such/binary");
        if failed || text.contains("StartError") || text.contains("RunContainerError") {
            Ok(())
        } else {
            Err(format!("status: {}", pod["status"]))
        }
    });
    // A pod that fits nowhere stays Pending with an event saying why.
    kubectl_ok(
        "n1",
        &[
            "run",
            "huge",
            "--image=shoal.test/busybox:1",
            "--overrides",
            r#"{"spec":{"containers":[{"name":"huge","image":"shoal.test/busybox:1","resources":{"requests":{"cpu":"1000"}}}]}}"#,
        ],
    );
    eventually(
        "huge is Pending with a FailedScheduling event",
        START,
        || {
            let events = kubectl(
                "n1",
                &[
                    "get",
                    "events",
                    "--field-selector",
                    "involvedObject.name=huge",
                ],
            )?;
            let phase = kubectl(
                "n1",
                &["get", "pod", "huge", "-o", "jsonpath={.status.phase}"],
            )?;
            if phase == "Pending"
                && events.contains("FailedScheduling")
                && events.contains("Insufficient cpu")
            {
                Ok(())
            } else {
                Err(format!("phase {phase}, events {events}"))
            }
        },
    );
}
