//! Services end to end on the testnet (real runc pods, real kubectl, every agent programming
//! nftables in its node): a NodePort Service over 3 busybox `httpd` pods on 3 nodes balances
//! requests from a pod on n1 over all three, answers on every node's NodePort from the host,
//! never sends traffic to a pod that is not Ready, refuses connections to a Service without
//! endpoints, and stops using a killed node's pod. `kubectl port-forward` through one node
//! reaches the web pods of the others (pod/, deploy/ and svc/ targets, WebSocket and SPDY
//! transports, concurrent connections), and a port nothing listens on is reported.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::workloads::apply;
use crate::support::*;

const START: Duration = Duration::from_secs(90);

const APP: &str = r#"apiVersion: apps/v1
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
        svc: web
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
        command: ["sh", "-c", "mkdir -p /tmp/www && echo $(hostname) > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"]
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  type: NodePort
  selector:
    svc: web
  ports:
  - port: 80
    targetPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: nothing
spec:
  selector:
    svc: nothing-matches-this
  ports:
  - port: 80
    targetPort: 8080
---
apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  nodeName: n1
  terminationGracePeriodSeconds: 1
  containers:
  - name: sh
    image: shoal.test/busybox:1
    command: ["sleep", "3600"]
---
apiVersion: v1
kind: Pod
metadata:
  name: notready
  labels:
    svc: web
spec:
  nodeName: n2
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: shoal.test/busybox:1
    command: ["sh", "-c", "mkdir -p /tmp/www && echo notready > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"]
  - name: crash
    image: shoal.test/busybox:1
    command: ["sh", "-c", "exit 1"]
"#;

fn get_json(ctx: &str, args: &[&str]) -> Result<Value, String> {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    let out = kubectl(ctx, &all)?;
    serde_json::from_str(&out).map_err(|e| format!("bad JSON: {e}: {out}"))
}

/// `web` pod name → node, once all three run with an address.
fn web_pods() -> Result<BTreeMap<String, String>, String> {
    let list = get_json("n1", &["pods", "-l", "app=web"])?;
    let mut out = BTreeMap::new();
    for p in list["items"].as_array().ok_or("no items")? {
        let name = p["metadata"]["name"].as_str().unwrap_or("").to_string();
        if p["status"]["phase"] != "Running" || p["status"]["podIP"].as_str().is_none() {
            return Err(format!("{name} not running with an IP yet"));
        }
        out.insert(
            name,
            p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
        );
    }
    if out.len() != 3 {
        return Err(format!("want 3 web pods, have {out:?}"));
    }
    Ok(out)
}

/// `n` GETs of `url` from the client pod: each answer's body (or `ERR <message>`).
fn requests(url: &str, n: usize) -> Result<Vec<String>, String> {
    // busybox's wget crashes on `-T`; `timeout` bounds each request.
    let script =
        format!("for i in $(seq {n}); do timeout 5 wget -q -O - {url} 2>&1 || echo ERR; done");
    let out = kubectl("n1", &["exec", "client", "--", "sh", "-c", &script])?;
    Ok(out.lines().map(|l| l.trim().to_string()).collect())
}

fn tally(answers: &[String]) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for a in answers {
        *t.entry(a.clone()).or_insert(0) += 1;
    }
    t
}

fn cluster_ip(name: &str) -> Result<String, String> {
    let svc = get_json("n1", &["service", name])?;
    svc["spec"]["clusterIP"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{name} has no clusterIP: {svc}"))
}

/// A GET from the host (outside the cluster), with busybox.
fn host_get(url: &str) -> Result<String, String> {
    let out = Command::new("timeout")
        .args(["5", "busybox", "wget", "-q", "-O", "-", url])
        .output()
        .map_err(|e| format!("busybox wget: {e}"))?;
    if !out.status.success() {
        return Err(format!("{url}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn a_service_balances_over_ready_pods_on_every_node_and_follows_a_dead_node() {
    let tn = Testnet::up(3);
    apply("n1", APP);
    let pods = eventually("3 web pods running", START, web_pods);
    let nodes: std::collections::BTreeSet<&String> = pods.values().collect();
    assert_eq!(nodes.len(), 3, "one per node: {pods:?}");
    eventually("the client pod runs", START, || {
        let p = get_json("n1", &["pod", "client"])?;
        (p["status"]["phase"] == "Running")
            .then_some(())
            .ok_or(format!("{}", p["status"]))
    });
    // The not-ready pod serves (its httpd runs) but its second container crash-loops.
    let notready_ip = eventually(
        "the notready pod has an address and is not Ready",
        START,
        || {
            let p = get_json("n1", &["pod", "notready"])?;
            let ready = p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            match p["status"]["podIP"].as_str() {
                Some(ip) if !ready => Ok(ip.to_string()),
                _ => Err(format!("{}", p["status"])),
            }
        },
    );
    let direct = eventually("the notready pod's httpd answers by IP", START, || {
        requests(&format!("http://{notready_ip}:8080/"), 1)
    });
    assert_eq!(
        direct,
        ["notready"],
        "it does serve, so no traffic means the proxy left it out"
    );

    // 60 requests to the ClusterIP from n1 reach all three backends, never the not-ready pod.
    let cip = cluster_ip("web").unwrap();
    let url = format!("http://{cip}/");
    let answers = eventually(
        "60 requests to the ClusterIP reach all 3 pods",
        Duration::from_secs(30),
        || {
            let t = tally(&requests(&url, 60)?);
            let want: std::collections::BTreeSet<&String> = pods.keys().collect();
            let got: std::collections::BTreeSet<&String> = t.keys().collect();
            (got == want)
                .then_some(t.clone())
                .ok_or(format!("answers {t:?}"))
        },
    );
    assert!(!answers.contains_key("notready"));

    // The NodePort answers on every node, from the host (outside the cluster CIDR).
    let svc = get_json("n1", &["service", "web"]).unwrap();
    let node_port = svc["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .expect("a nodePort");
    for node in &tn.nodes {
        let np = format!("http://{}:{node_port}/", node_ip(node));
        let body = eventually(
            &format!("NodePort on {node}"),
            Duration::from_secs(30),
            || host_get(&np),
        );
        assert!(pods.contains_key(&body), "{np} answered {body:?}");
    }

    port_forward(&pods);

    // A Service whose selector matches nothing: no endpoints, connections refused.
    let eps = get_json("n1", &["endpoints", "nothing"]).unwrap();
    assert!(
        eps["subsets"].as_array().is_none_or(|s| s.is_empty()),
        "no endpoints: {eps}"
    );
    let nothing = format!("http://{}/", cluster_ip("nothing").unwrap());
    let refused = eventually("the empty Service refuses", Duration::from_secs(30), || {
        let out = kubectl(
            "n1",
            &[
                "exec",
                "client",
                "--",
                "sh",
                "-c",
                &format!("timeout 5 wget -q -O - {nothing} 2>&1; true"),
            ],
        )?;
        out.contains("refused").then_some(out.clone()).ok_or(out)
    });
    assert!(refused.contains("refused"));

    // Kill n3: within the failover time its pod leaves the endpoints everywhere and every
    // request succeeds on the survivors.
    let (dead_pod, _) = pods
        .iter()
        .find(|(_, n)| n.as_str() == "n3")
        .expect("a pod on n3");
    script("kill.sh", &["n3"]);
    eventually(
        "after n3 died: 30 requests all answered, none by its pod",
        REACT,
        || {
            let answers = requests(&url, 30)?;
            let t = tally(&answers);
            let ok = answers
                .iter()
                .all(|a| pods.contains_key(a) && a != dead_pod);
            ok.then_some(()).ok_or(format!("answers {t:?}"))
        },
    );
    kubectl_ok("n1", &["delete", "deployment", "web"]);
}

/// A running `kubectl port-forward` (its output in a log file), killed on drop.
struct PortForward {
    child: Child,
    log: std::path::PathBuf,
}

impl PortForward {
    /// Starts `kubectl --context ctx port-forward ARGS` and waits until it listens.
    fn start(ctx: &str, args: &[&str], env: &[(&str, &str)], name: &str) -> PortForward {
        let log = run_dir().join(format!("port-forward-{name}.log"));
        let file = std::fs::File::create(&log).expect("port-forward log");
        let child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig())
            .args(["--context", ctx, "-v=6", "port-forward"])
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("kubectl port-forward");
        let mut pf = PortForward { child, log };
        eventually(
            &format!("port-forward {name} listens"),
            Duration::from_secs(30),
            || {
                if let Ok(Some(status)) = pf.child.try_wait() {
                    panic!("port-forward {name} exited ({status}):\n{}", pf.output());
                }
                let out = pf.output();
                out.contains("Forwarding from 127.0.0.1")
                    .then_some(())
                    .ok_or(out)
            },
        );
        pf
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `request` on `conn` and reads the whole answer (the httpd closes after it); the body.
fn http_answer(mut conn: TcpStream, request: &[u8]) -> Result<String, String> {
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    conn.write_all(request).map_err(|e| format!("write: {e}"))?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)
        .map_err(|e| format!("read: {e} (after {answer:?})"))?;
    match answer.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
            Ok(body.trim().to_string())
        }
        _ => Err(format!("not a 200 answer: {answer:?}")),
    }
}

const GET: &[u8] = b"GET / HTTP/1.0\r\nHost: web\r\n\r\n";

fn connect_local(port: u16) -> Result<TcpStream, String> {
    TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))
}

fn fetch(port: u16) -> Result<String, String> {
    http_answer(connect_local(port)?, GET)
}

/// Port-forwards through n2 to the web pods of n3 and n1 and to n2's own, by pod, Deployment
/// and Service, over kubectl's default transport (SPDY tunnelled in WebSocket) and its SPDY
/// fallback; then to a port with nothing listening.
fn port_forward(pods: &BTreeMap<String, String>) {
    let on = |node: &str| {
        pods.iter()
            .find(|(_, n)| n.as_str() == node)
            .map(|(p, _)| p.clone())
            .unwrap_or_else(|| panic!("a web pod on {node}: {pods:?}"))
    };
    let (far, near) = (on("n3"), on("n2"));

    // A pod on another node, relayed: several connections one after the other...
    let pf = PortForward::start("n2", &[&format!("pod/{far}"), "18080:8080"], &[], "far");
    for _ in 0..3 {
        assert_eq!(fetch(18080).unwrap(), far, "{}", pf.output());
    }
    // ... and two at once: the first waits half-sent while the second is answered.
    let mut first = connect_local(18080).unwrap();
    first.write_all(b"GET / HTTP/1.0\r\n").unwrap();
    assert_eq!(fetch(18080).unwrap(), far, "{}", pf.output());
    assert_eq!(
        http_answer(first, b"Host: web\r\n\r\n").unwrap(),
        far,
        "{}",
        pf.output()
    );
    let out = pf.output();
    assert!(
        out.contains("Before WebSocket Upgrade Connection")
            && !out.contains("fallback to secondary dialer"),
        "kubectl used its default transport (SPDY tunnelled in WebSocket): {out}"
    );

    // The SPDY upgrade (kubectl's fallback), to the pod on the serving node itself.
    let spdy = PortForward::start(
        "n2",
        &[&format!("pod/{near}"), "18081:8080"],
        &[("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")],
        "spdy",
    );
    assert_eq!(fetch(18081).unwrap(), near, "{}", spdy.output());
    assert_eq!(fetch(18081).unwrap(), near, "{}", spdy.output());
    assert!(!spdy.output().contains("WebSocket"), "{}", spdy.output());
    drop(spdy);

    // kubectl resolves deploy/ and svc/ to a pod (and the Service port to its targetPort).
    let deploy = PortForward::start("n1", &["deploy/web", "18082:8080"], &[], "deploy");
    let body = fetch(18082).unwrap();
    assert!(pods.contains_key(&body), "{body:?}: {}", deploy.output());
    drop(deploy);
    let svc = PortForward::start("n2", &["svc/web", "18083:80"], &[], "svc");
    let body = fetch(18083).unwrap();
    assert!(pods.contains_key(&body), "{body:?}: {}", svc.output());
    drop(svc);

    // Nothing listens on port 81: the connection is closed without data and kubectl reports
    // the error it read on the error stream, then gives up as it does with Kubernetes.
    let mut dead = PortForward::start("n2", &[&format!("pod/{far}"), "18084:81"], &[], "dead");
    let got = http_answer(connect_local(18084).unwrap(), GET);
    assert!(
        got.is_err(),
        "an answer from a port nothing listens on: {got:?}"
    );
    let out = eventually(
        "kubectl reports the refused forward",
        Duration::from_secs(30),
        || {
            let out = dead.output();
            (out.contains("error forwarding port 81") && out.contains("refused"))
                .then_some(out.clone())
                .ok_or(out)
        },
    );
    let status = eventually(
        "kubectl port-forward exits",
        Duration::from_secs(30),
        || {
            dead.child
                .try_wait()
                .map_err(|e| e.to_string())?
                .ok_or_else(|| dead.output())
        },
    );
    assert!(!status.success(), "{out}");
    assert!(
        dead.output().contains("lost connection to pod"),
        "{}",
        dead.output()
    );

    // The first port-forward was not disturbed.
    assert_eq!(fetch(18080).unwrap(), far, "{}", pf.output());

    // attach is not supported: refused at once with the reason, not left hanging.
    let err = kubectl("n2", &["attach", "client"]).expect_err("attach is refused");
    assert!(err.contains("attach is not supported"), "{err}");
    eprintln!(
        "port-forward to a closed port, as kubectl printed it:\n{}\nkubectl attach: {err}",
        dead.output()
    );
}
