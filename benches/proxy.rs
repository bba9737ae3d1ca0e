//! Service load-balancing benchmarks, in network namespaces this bench creates (root):
//!
//! 1. **Data path**: HTTP requests/s and p50/p99 latency with `wrk` from a client pod to a
//!    busybox `httpd` pod, straight to the pod IP and through the ClusterIP (one endpoint, so
//!    the same pod serves both), runs interleaved, medians.
//! 2. **Rule update cost**: with 10, 100 and 1,000 Services (3 endpoints each) programmed, the
//!    time of one endpoint change — planning (`proxy::build` + `proxy::diff`) and `nft -f` —
//!    beside a full replace of the same table.
//!
//! 3. **Propagation** (`-- propagation ROUNDS`, on a running testnet, `testnet/run/kubeconfig`):
//!    a Service over 2 pods; one pod is labelled out of the selector and back in with
//!    `kubectl label` (one API write each); the time from just before the write until every
//!    node's `svc-` chain (read with `nft list chain` in each node namespace) has dropped or
//!    regained that endpoint. Includes kubectl's start-up, so it over-states a little.
//!
//! Prints Markdown and `RESULT` lines. `cargo bench --bench proxy [-- QUICK]`
//! (`benches/run.sh` runs it; it installs `wrk` with apt-get when missing).

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shoal::agent::proxy::Nft;
use shoal::proxy::{self, Backend, Desired, NodeFacts, Protocol, ServicePort};

fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if !out.status.success() {
        return Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn must(args: &[&str]) -> String {
    sh(args).unwrap_or_else(|e| panic!("{e}"))
}

struct Lab {
    prefix: String,
    servers: Vec<std::process::Child>,
    dir: std::path::PathBuf,
}

impl Lab {
    fn ns(&self, n: &str) -> String {
        format!("{}{n}", self.prefix)
    }

    fn x(&self, ns: &str, args: &[&str]) -> String {
        let ns = self.ns(ns);
        let mut all = vec!["ip", "netns", "exec", ns.as_str()];
        all.extend_from_slice(args);
        must(&all)
    }

    /// A node namespace with bridge shoal0 (10.244.1.1/24), a server pod (10.244.1.11) and a
    /// client pod (10.244.1.12).
    fn new() -> Lab {
        let mut lab = Lab {
            prefix: format!("shpb{}-", std::process::id() % 100000),
            servers: Vec::new(),
            dir: std::env::temp_dir().join(format!("shoal-proxy-bench-{}", std::process::id())),
        };
        for ns in ["node", "srv", "cli"] {
            must(&["ip", "netns", "add", &lab.ns(ns)]);
            lab.x(ns, &["ip", "link", "set", "lo", "up"]);
        }
        lab.x("node", &["ip", "link", "add", "shoal0", "type", "bridge"]);
        lab.x(
            "node",
            &["ip", "addr", "add", "10.244.1.1/24", "dev", "shoal0"],
        );
        lab.x("node", &["ip", "link", "set", "shoal0", "up"]);
        lab.x("node", &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        lab.x(
            "node",
            &["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"],
        );
        for (i, ns) in [(11, "srv"), (12, "cli")] {
            let peer = lab.ns(ns);
            let host_if = format!("v{ns}");
            lab.x(
                "node",
                &[
                    "ip", "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns",
                    &peer,
                ],
            );
            lab.x(
                "node",
                &["ip", "link", "set", &host_if, "master", "shoal0", "up"],
            );
            lab.x(
                ns,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("10.244.1.{i}/24"),
                    "dev",
                    "eth0",
                ],
            );
            lab.x(ns, &["ip", "link", "set", "eth0", "up"]);
            lab.x(ns, &["ip", "route", "add", "default", "via", "10.244.1.1"]);
        }
        std::fs::create_dir_all(&lab.dir).unwrap();
        std::fs::write(lab.dir.join("index.html"), "hello\n").unwrap();
        let exe = std::env::current_exe().unwrap();
        // Each server twice: the direct runs use one port, the ClusterIP runs (DNAT) another,
        // so a reused client port never gives a NATed connection the reply tuple of a direct
        // one still in conntrack (a clash the kernel resolves by dropping the SYN).
        let mut servers: Vec<Vec<String>> = Vec::new();
        for port in ["8080", "8082"] {
            // Connection per request: busybox httpd forks per connection, no keep-alive.
            servers.push(vec![
                "busybox".into(),
                "httpd".into(),
                "-f".into(),
                "-p".into(),
                port.into(),
                "-h".into(),
                lab.dir.display().to_string(),
            ]);
        }
        for port in ["8081", "8083"] {
            // Keep-alive: this bench's own minimal HTTP/1.1 server.
            servers.push(vec![
                exe.display().to_string(),
                "serve-http".into(),
                port.into(),
            ]);
        }
        servers.push(["iperf3", "-s", "-p", "5201"].map(String::from).to_vec());
        for argv in servers {
            lab.servers.push(
                Command::new("ip")
                    .args(["netns", "exec", &lab.ns("srv")])
                    .args(&argv)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            );
        }
        // Wait until all five listen.
        let ports = ["8080", "8081", "8082", "8083", "5201"];
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in ports {
            let filter = format!("sport = :{port}");
            while sh(&[
                "ip",
                "netns",
                "exec",
                &lab.ns("srv"),
                "ss",
                "-Hltn",
                &filter,
            ])
            .map_or(true, |out| out.trim().is_empty())
            {
                assert!(Instant::now() < deadline, "no server listens on :{port}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        lab
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in ["node", "srv", "cli"] {
            let _ = sh(&["ip", "netns", "del", &self.ns(ns)]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn facts() -> NodeFacts {
    NodeFacts {
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        pod_cidr: "10.244.1.0/24".parse().unwrap(),
        bridge: "shoal0".into(),
        agent_ports: Vec::new(),
        agents: Vec::new(),
    }
}

fn service(i: usize, endpoints: &[Ipv4Addr], port: u16) -> ServicePort {
    ServicePort {
        namespace: "bench".into(),
        name: format!("s{i}"),
        port_name: String::new(),
        protocol: Protocol::Tcp,
        cluster_ip: Some(Ipv4Addr::from(0x0a60_0000 + i as u32 + 10)),
        port: 80,
        node_port: Some(30000 + (i % 2700) as u16),
        affinity_timeout: None,
        external_local: false,
        internal_local: false,
        backends: endpoints
            .iter()
            .map(|ip| Backend {
                ip: *ip,
                port,
                local: true,
            })
            .collect(),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// `wrk` figures: requests/s, p50 and p99 latency in µs.
fn wrk(lab: &Lab, url: &str, secs: u32) -> (f64, f64, f64) {
    let out = lab.x(
        "cli",
        &[
            "wrk",
            "-t",
            "2",
            "-c",
            "8",
            "-d",
            &format!("{secs}s"),
            "--latency",
            url,
        ],
    );
    let value = |label: &str| -> f64 {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label} in wrk output:\n{out}"));
        let v = line.split_whitespace().nth(1).unwrap_or("");
        let (num, scale) = if let Some(n) = v.strip_suffix("us") {
            (n, 1.0)
        } else if let Some(n) = v.strip_suffix("ms") {
            (n, 1e3)
        } else if let Some(n) = v.strip_suffix('s') {
            (n, 1e6)
        } else {
            (v, 1.0)
        };
        num.parse::<f64>()
            .unwrap_or_else(|_| panic!("{label}: {line}"))
            * scale
    };
    if out.contains("Non-2xx") || out.contains("Socket errors") {
        eprintln!("wrk reported errors for {url}:\n{out}");
    }
    (value("Requests/sec:"), value("50%"), value("99%"))
}

/// A minimal keep-alive HTTP/1.1 server (one thread per connection): answers every request
/// with a 6-byte body. Run in the server namespace by the bench itself (`serve-http PORT`).
fn serve_http(port: u16) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind(("0.0.0.0", port)).unwrap();
    for conn in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let mut conn = conn;
            let _ = conn.set_nodelay(true);
            let mut buf = [0u8; 4096];
            let mut pending = Vec::new();
            loop {
                let n = match conn.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                    pending.drain(..end + 4);
                    let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nContent-Type: text/plain\r\n\r\nhello\n";
                    if conn.write_all(reply).is_err() {
                        return;
                    }
                }
            }
        });
    }
}

fn iperf3(lab: &Lab, addr: &str, secs: u32) -> f64 {
    let out = lab.x(
        "cli",
        &[
            "iperf3",
            "-c",
            addr,
            "-p",
            "5201",
            "-t",
            &secs.to_string(),
            "-J",
        ],
    );
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("iperf3 JSON: {e}: {out}"));
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("no receiver rate in {out}"))
        / 1e9
}

fn data_path(lab: &Lab, rounds: usize, secs: u32) {
    let server = Ipv4Addr::new(10, 244, 1, 11);
    let mut busybox = service(0, &[server], 8082);
    busybox.node_port = None;
    let mut keepalive = service(1, &[server], 8083);
    keepalive.node_port = None;
    let mut iperf = service(2, &[server], 5201);
    iperf.node_port = None;
    iperf.port = 5201;
    let r = proxy::build(&Desired {
        node: facts(),
        ports: vec![busybox, keepalive, iperf],
        host_ports: Vec::new(),
    });
    Nft::in_netns(&lab.ns("node"))
        .apply(&proxy::full(&r).script)
        .unwrap();
    // Warm-up, and a check that every path answers.
    for url in [
        "http://10.244.1.11:8080/",
        "http://10.96.0.10:80/",
        "http://10.244.1.11:8081/",
        "http://10.96.0.11:80/",
    ] {
        must(&[
            "ip",
            "netns",
            "exec",
            &lab.ns("cli"),
            "busybox",
            "wget",
            "-q",
            "-O",
            "/dev/null",
            url,
        ]);
    }
    let cases = [
        (
            "keep-alive HTTP",
            "http://10.244.1.11:8081/",
            "http://10.96.0.11:80/",
        ),
        (
            "new connection per request (busybox httpd)",
            "http://10.244.1.11:8080/",
            "http://10.96.0.10:80/",
        ),
    ];
    println!("#### Data path: client pod → server pod on the same node, straight to the pod IP vs through the ClusterIP (nftables DNAT to the same pod, the same server on a second port), {rounds} interleaved rounds, medians");
    println!();
    println!("| load | path | requests/s | p50 | p99 |");
    println!("|---|---|---|---|---|");
    let col = |v: &[(f64, f64, f64)], f: fn(&(f64, f64, f64)) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        median(&mut x)
    };
    let mut summary = Vec::new();
    for (what, direct_url, cip_url) in cases {
        wrk(lab, direct_url, 1);
        let (mut d, mut c) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            d.push(wrk(lab, direct_url, secs));
            c.push(wrk(lab, cip_url, secs));
            eprintln!(
                "{what} round {round}: direct {:?} clusterip {:?}",
                d[round], c[round]
            );
        }
        let (drps, d50, d99) = (col(&d, |t| t.0), col(&d, |t| t.1), col(&d, |t| t.2));
        let (crps, c50, c99) = (col(&c, |t| t.0), col(&c, |t| t.1), col(&c, |t| t.2));
        println!("| {what}, wrk {secs} s | pod IP | {drps:.0} | {d50:.0} µs | {d99:.0} µs |");
        println!("| {what}, wrk {secs} s | ClusterIP | {crps:.0} | {c50:.0} µs | {c99:.0} µs |");
        summary.push(format!(
            "{what}: ClusterIP {:.1}% of direct requests/s, p50 {:+.0} µs, p99 {:+.0} µs",
            100.0 * crps / drps,
            c50 - d50,
            c99 - d99
        ));
    }
    let (mut d, mut c) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        d.push(iperf3(lab, "10.244.1.11", secs));
        c.push(iperf3(lab, "10.96.0.12", secs));
        eprintln!(
            "iperf3 round {round}: direct {:.2} Gbit/s clusterip {:.2} Gbit/s",
            d[round], c[round]
        );
    }
    let (dg, cg) = (median(&mut d), median(&mut c));
    println!("| bulk TCP, iperf3 {secs} s | pod IP | {dg:.2} Gbit/s | | |");
    println!("| bulk TCP, iperf3 {secs} s | ClusterIP | {cg:.2} Gbit/s | | |");
    println!();
    summary.push(format!(
        "iperf3: ClusterIP {:.1}% of direct",
        100.0 * cg / dg
    ));
    println!(
        "RESULT proxy data path (goal ≥ 95% of direct, ≤ +10 µs p50): {}",
        summary.join("; ")
    );
    println!();
}

fn update_cost(lab: &Lab, sizes: &[usize], changes: usize) {
    let nft = Nft::in_netns(&lab.ns("node"));
    let ep = |k: u32| Ipv4Addr::from(0x0af4_0000 + k);
    println!("#### Rule update cost: one endpoint change with N Services programmed (3 endpoints each, NodePort), {changes} changes per size");
    println!();
    println!("| Services | plan (build + diff), median | nft -f of the diff, median | script lines | full replace (plan + nft) |");
    println!("|---|---|---|---|---|");
    let mut results = Vec::new();
    for &n in sizes {
        let mut current: Vec<ServicePort> = (0..n)
            .map(|i| {
                let base = 3 * i as u32 + 2;
                service(i, &[ep(base), ep(base + 1), ep(base + 2)], 8080)
            })
            .collect();
        let started = Instant::now();
        let mut applied = proxy::build(&Desired {
            node: facts(),
            ports: current.clone(),
            host_ports: Vec::new(),
        });
        nft.apply(&proxy::full(&applied).script).unwrap();
        let full_took = started.elapsed();
        let (mut plan, mut apply, mut lines) = (Vec::new(), Vec::new(), 0);
        for k in 0..changes {
            // One endpoint of one Service replaced by a new address.
            current[(k * 7919) % n].backends[2].ip = ep(200_000 + k as u32);
            let t0 = Instant::now();
            // What the agent does per change: plan from the whole desired state, diff, apply.
            let desired = proxy::build(&Desired {
                node: facts(),
                ports: current.clone(),
                host_ports: Vec::new(),
            });
            let change = proxy::diff(&applied, &desired);
            let t1 = Instant::now();
            nft.apply(&change.script).unwrap();
            let t2 = Instant::now();
            plan.push((t1 - t0).as_secs_f64() * 1e3);
            apply.push((t2 - t1).as_secs_f64() * 1e3);
            lines = change.script.lines().count();
            applied = desired;
        }
        let (p, a) = (median(&mut plan), median(&mut apply));
        println!(
            "| {n} | {p:.2} ms | {a:.2} ms | {lines} | {:.0} ms |",
            full_took.as_secs_f64() * 1e3
        );
        results.push((n, p + a));
        nft.delete_table().unwrap();
    }
    println!();
    let desc: Vec<String> = results
        .iter()
        .map(|(n, t)| format!("{n}: {t:.1} ms"))
        .collect();
    println!(
        "RESULT proxy rule update (plan + nft, median): {}",
        desc.join(", ")
    );
    println!();
}

const PROP_APP: &str = r#"{"apiVersion": "apps/v1", "kind": "Deployment",
 "metadata": {"name": "prop"},
 "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "prop"}},
  "template": {"metadata": {"labels": {"app": "prop", "svc": "prop"}},
   "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "httpd",
     "image": "shoal.test/busybox:1",
     "command": ["sh", "-c", "mkdir -p /tmp/w && echo ok > /tmp/w/index.html && exec httpd -f -p 8080 -h /tmp/w"]}]}}}}"#;
const PROP_SVC: &str = r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "prop"},
 "spec": {"selector": {"svc": "prop"}, "ports": [{"port": 80, "targetPort": 8080}]}}"#;

fn kubectl(args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    use std::io::Write;
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg("testnet/run/kubeconfig")
        .args(["--context", "n1"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("kubectl: {e}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let _ = pipe.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether every node's chain `chain` mentions (`want`) or lacks the endpoint `needle`.
fn all_nodes(nodes: usize, chain: &str, needle: &str, want: bool) -> bool {
    (1..=nodes).all(|k| {
        let ns = format!("shoal-n{k}");
        sh(&[
            "ip", "netns", "exec", &ns, "nft", "list", "chain", "ip", "shoal", chain,
        ])
        .is_ok_and(|out| out.contains(needle) == want)
    })
}

fn propagation(nodes: usize, rounds: usize) {
    kubectl(&["apply", "-f", "-"], Some(PROP_APP)).unwrap();
    kubectl(&["apply", "-f", "-"], Some(PROP_SVC)).unwrap();
    let chain = proxy::service_chain("svc", "default/prop/tcp/");
    let deadline = Instant::now() + Duration::from_secs(180);
    // Two running pods with addresses, both in every node's rules.
    let (pod, ip) = loop {
        assert!(Instant::now() < deadline, "the prop pods never ran");
        std::thread::sleep(Duration::from_millis(500));
        let Ok(out) = kubectl(&["get", "pods", "-l", "app=prop", "-o", "jsonpath={range .items[*]}{.metadata.name} {.status.podIP} {.status.phase}{\"\\n\"}{end}"], None) else {
            continue;
        };
        let running: Vec<Vec<&str>> = out
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|w| w.len() == 3 && w[2] == "Running")
            .collect();
        if running.len() == 2 && all_nodes(nodes, &chain, &format!("-{}/8080", running[1][1]), true)
        {
            break (running[0][0].to_string(), running[0][1].to_string());
        }
    };
    let needle = format!("-{ip}/8080");
    let mut times = Vec::new();
    for round in 0..rounds {
        for (label, want) in [("svc-", false), ("svc=prop", true)] {
            let t0 = Instant::now();
            kubectl(&["label", "pod", &pod, label, "--overwrite"], None).unwrap();
            let give_up = t0 + Duration::from_secs(30);
            while !all_nodes(nodes, &chain, &needle, want) {
                assert!(
                    Instant::now() < give_up,
                    "round {round}: rules never followed {label}"
                );
            }
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            eprintln!("round {round} {label}: {ms:.0} ms");
            times.push(ms);
        }
    }
    let _ = kubectl(&["delete", "deployment", "prop"], None);
    let _ = kubectl(&["delete", "service", "prop"], None);
    times.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| times[((times.len() as f64 - 1.0) * p).round() as usize];
    println!("#### Endpoint change → rules on every node ({nodes}-node testnet, {} changes: a pod labelled out of / into the selector)", times.len());
    println!();
    println!("| p50 | p90 | p99 | max |");
    println!("|---|---|---|---|");
    println!(
        "| {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms |",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );
    println!();
    println!(
        "RESULT proxy propagation on {nodes} nodes: p50 {:.0} ms, p99 {:.0} ms (goal p99 ≤ 500 ms)",
        pct(0.5),
        pct(0.99)
    );
    println!();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("serve-http") {
        serve_http(args.get(2).and_then(|p| p.parse().ok()).unwrap_or(8081));
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "propagation") {
        let rounds = args.get(i + 1).and_then(|r| r.parse().ok()).unwrap_or(20);
        propagation(5, rounds);
        return;
    }
    let quick = args.iter().any(|a| a == "QUICK");
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the proxy bench needs root (network namespaces, nftables)");
        std::process::exit(1);
    }
    for tool in ["ip", "nft", "busybox", "wrk", "iperf3"] {
        if sh(&["sh", "-c", &format!("command -v {tool}")]).is_err() {
            eprintln!(
                "the proxy bench needs `{tool}` (apt-get install iproute2 nftables busybox wrk iperf3)"
            );
            std::process::exit(1);
        }
    }
    let lab = Lab::new();
    let (rounds, secs) = if quick { (3, 3) } else { (5, 5) };
    data_path(&lab, rounds, secs);
    update_cost(&lab, &[10, 100, 1000], if quick { 10 } else { 30 });
}
