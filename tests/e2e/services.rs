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

/// A pod's uid, node, pod IP and container restarts.
type Identity = (String, String, String, u64);

/// What an upgrade must not change of a `web` pod: its [`Identity`], by name.
fn web_identity() -> Result<BTreeMap<String, Identity>, String> {
    let list = get_json("n1", &["pods", "-l", "app=web"])?;
    let mut out = BTreeMap::new();
    for p in list["items"].as_array().ok_or("no items")? {
        let restarts = p["status"]["containerStatuses"].as_array().map_or(0, |cs| {
            cs.iter().filter_map(|c| c["restartCount"].as_u64()).sum()
        });
        out.insert(
            p["metadata"]["name"].as_str().unwrap_or("").to_string(),
            (
                p["metadata"]["uid"].as_str().unwrap_or("").to_string(),
                p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
                p["status"]["podIP"].as_str().unwrap_or("").to_string(),
                restarts,
            ),
        );
    }
    Ok(out)
}

/// Issue 19: `testnet/upgrade.sh n2` with n2's agent down 20 s (far longer than failure
/// detection): n2 goes NotReady, but its planned-restart hold keeps its pod where it is. No
/// pod moves (names, uids, nodes, IPs), no container restarts (runc's list on n2 and
/// restartCount), and request loops through the NodePort on n1 (from the host) and through
/// the ClusterIP (from a pod on n1) lose no request. A node killed without the announcement
/// still fails over: `a_service_balances_over_ready_pods_on_every_node_and_follows_a_dead_node`
/// and `workloads::killed_node_is_replaced_and_returns_to_the_exact_count`.
#[test]
fn a_planned_restart_moves_no_pod_and_loses_no_request() {
    let tn = Testnet::up(3);
    // The web Deployment, its NodePort Service and the client pod on n1.
    let docs: Vec<&str> = APP.split("\n---\n").collect();
    apply("n1", &[docs[0], docs[1], docs[3]].join("\n---\n"));
    eventually("3 web pods running", START, web_pods);
    eventually("the client pod runs", START, || {
        let p = get_json("n1", &["pod", "client"])?;
        (p["status"]["phase"] == "Running")
            .then_some(())
            .ok_or(format!("{}", p["status"]))
    });
    let before = eventually("3 web pods Ready on 3 nodes", START, || {
        let ids = web_identity()?;
        let ready = web_pods()?;
        let nodes: std::collections::BTreeSet<&String> = ready.values().collect();
        (ids.len() == 3 && nodes.len() == 3 && ids.values().all(|(_, _, ip, _)| !ip.is_empty()))
            .then_some(ids.clone())
            .ok_or(format!("{ids:?}"))
    });
    let svc = get_json("n1", &["service", "web"]).unwrap();
    let node_port = svc["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .expect("nodePort");
    let np = format!("http://{}:{node_port}/", node_ip("n1"));
    let cip = format!("http://{}/", cluster_ip("web").unwrap());
    let answers_all = |url: &str| {
        let want: std::collections::BTreeSet<String> = before.keys().cloned().collect();
        let mut got = std::collections::BTreeSet::new();
        for _ in 0..30 {
            got.insert(host_get(url)?);
        }
        (got == want)
            .then_some(())
            .ok_or(format!("answers {got:?}"))
    };
    eventually("the NodePort on n1 answers from all 3 pods", REACT, || {
        answers_all(&np)
    });
    let victim = "n2";
    let containers_before = super::workloads::runc_running(victim);
    assert!(!containers_before.is_empty(), "no containers on {victim}");

    // The ClusterIP loop in the client pod on n1, until /tmp/stop exists.
    let loop_script = format!(
        "rm -f /tmp/stop; ok=0; bad=0; while [ ! -f /tmp/stop ]; do \
         if timeout 5 wget -q -O /dev/null {cip}; then ok=$((ok+1)); else bad=$((bad+1)); fi; \
         sleep 0.1; done; echo ok=$ok bad=$bad"
    );
    let pod_loop = std::thread::spawn(move || {
        kubectl("n1", &["exec", "client", "--", "sh", "-c", &loop_script])
    });
    // The NodePort loop from the host, until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let host_loop = {
        let (stop, np) = (stop.clone(), np.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u64, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match host_get(&np) {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e),
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (ok, failed)
        })
    };

    // The upgrade of n2, agent down 20 s; watched through n1 meanwhile.
    let mut upgrade = Command::new(repo().join("testnet/upgrade.sh"))
        .arg(victim)
        .env("NEW_BIN", shoal_bin())
        .env("SHOAL_BIN", shoal_bin())
        .env("UPGRADE_DOWN", "20")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run testnet/upgrade.sh");
    let (mut saw_not_ready, mut changed) = (false, Vec::new());
    while upgrade.try_wait().expect("upgrade.sh").is_none() {
        if let Ok(rows) = nodes_via("n1") {
            saw_not_ready |= rows.get(victim).is_some_and(|r| r.status == "NotReady");
        }
        if let Ok(now) = web_identity() {
            if now.len() != before.len()
                || now.iter().any(|(name, (uid, node, ip, _))| {
                    before
                        .get(name)
                        .is_none_or(|b| (&b.0, &b.1, &b.2) != (uid, node, ip))
                })
            {
                changed.push(format!("{now:?}"));
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = upgrade.wait_with_output().expect("upgrade.sh");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "testnet/upgrade.sh {victim}: {}\n{log}\n{}",
        out.status,
        log_tails(40)
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (host_ok, host_failed) = host_loop.join().expect("host loop");
    kubectl_ok("n1", &["exec", "client", "--", "touch", "/tmp/stop"]);
    let pod_out = pod_loop.join().expect("pod loop").expect("ClusterIP loop");
    eprintln!(
        "upgrade of {victim}: NodePort from the host: {host_ok} answered, {} failed; \
         ClusterIP from a pod: {}",
        host_failed.len(),
        pod_out.trim()
    );
    assert!(
        saw_not_ready,
        "{victim} never read NotReady through n1: the test did not outlast failure detection"
    );
    assert!(
        changed.is_empty(),
        "pods moved during the upgrade: before {before:?}, seen {changed:?}"
    );
    assert!(
        agent_log(victim).contains("planned restart announced"),
        "no announcement in {victim}'s log"
    );
    // After: same pods everywhere, no restarts, the same containers on n2.
    eventually("the same 3 web pods, all Ready", REACT, || {
        let now = web_identity()?;
        web_pods()?;
        (now == before)
            .then_some(())
            .ok_or(format!("before {before:?}, now {now:?}"))
    });
    assert!(before.values().all(|(_, _, _, r)| *r == 0), "{before:?}");
    let containers_after = super::workloads::runc_running(victim);
    assert!(
        containers_before.is_subset(&containers_after),
        "containers on {victim} before {containers_before:?}, after {containers_after:?}"
    );
    assert!(host_ok > 0, "the host loop made no request");
    assert!(
        host_failed.is_empty(),
        "NodePort requests lost: {host_failed:?}"
    );
    let pod_bad = pod_out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("bad="))
        .unwrap_or("?");
    assert_eq!(pod_bad, "0", "ClusterIP requests lost: {pod_out}");
    drop(tn);
}
