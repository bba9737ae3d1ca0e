//! The proxy's rules in a real kernel: network namespaces this test creates (a "node" with a
//! bridge, three "pods" running busybox `httpd`, a client pod, and an "outside" host on a
//! separate link), table `ip shoal` programmed with the real `nft` through the same code the
//! agent uses (`agent::proxy::Nft`, `proxy::full`/`diff`). Needs root, `ip`, `nft` and
//! `busybox`; a missing one fails the test by name.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use shoal::agent::proxy::Nft;
use shoal::proxy::{self, Backend, Desired, NodeFacts, Protocol, Ruleset, ServicePort};

const CIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const NODE_PORT: u16 = 30080;
/// The node's address on the "outside" link, and the outside host's.
const NODE_OUT: &str = "192.168.77.1";
const OUTSIDE: &str = "192.168.77.2";

fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if !out.status.success() {
        return Err(format!(
            "{}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn must(args: &[&str]) -> String {
    sh(args).unwrap_or_else(|e| panic!("{e}"))
}

fn require_tools() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "tests/proxy.rs needs root (network namespaces, nftables)"
    );
    for tool in ["ip", "ss", "nft", "busybox"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success()),
            "tests/proxy.rs needs `{tool}` (apt-get install iproute2 nftables busybox)"
        );
    }
}

/// A node namespace with bridge `shoal0` (10.244.1.1/24), pods p1..p3 serving their name on
/// :8080, a client pod p4, and an outside host on 192.168.77.0/24 (no route to pods).
struct Lab {
    prefix: String,
    servers: Vec<Child>,
    dir: tempfile::TempDir,
}

static LABS: AtomicU32 = AtomicU32::new(0);

impl Lab {
    fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn exec(&self, ns: &str, args: &[&str]) -> Result<String, String> {
        let ns = self.ns(ns);
        let mut all = vec!["ip", "netns", "exec", ns.as_str()];
        all.extend_from_slice(args);
        sh(&all)
    }

    fn pod_ip(i: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, 1, 10 + i)
    }

    fn new() -> Lab {
        require_tools();
        let n = LABS.fetch_add(1, Ordering::SeqCst);
        let lab = Lab {
            prefix: format!("shpx{}{n}-", std::process::id() % 100000),
            servers: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        };
        let mut lab = lab;
        for ns in ["node", "p1", "p2", "p3", "p4", "out"] {
            must(&["ip", "netns", "add", &lab.ns(ns)]);
            lab.exec(ns, &["ip", "link", "set", "lo", "up"]).unwrap();
        }
        let node = lab.ns("node");
        let x = |args: &[&str]| lab.exec("node", args).unwrap();
        x(&["ip", "link", "add", "shoal0", "type", "bridge"]);
        x(&["ip", "addr", "add", "10.244.1.1/24", "dev", "shoal0"]);
        x(&["ip", "link", "set", "shoal0", "up"]);
        x(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        x(&["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"]);
        for i in 1..=4u8 {
            let pod = lab.ns(&format!("p{i}"));
            let host_if = format!("vp{i}");
            x(&[
                "ip", "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns",
                &pod,
            ]);
            x(&["ip", "link", "set", &host_if, "master", "shoal0", "up"]);
            // As the CNI bridge plugin's `hairpinMode: true`: a pod reaching itself through
            // its Service leaves and re-enters the bridge by the same port.
            x(&[
                "ip",
                "link",
                "set",
                &host_if,
                "type",
                "bridge_slave",
                "hairpin",
                "on",
            ]);
            let p = |args: &[&str]| lab.exec(&format!("p{i}"), args).unwrap();
            p(&[
                "ip",
                "addr",
                "add",
                &format!("{}/24", Lab::pod_ip(i)),
                "dev",
                "eth0",
            ]);
            p(&["ip", "link", "set", "eth0", "up"]);
            p(&["ip", "route", "add", "default", "via", "10.244.1.1"]);
        }
        x(&[
            "ip",
            "link",
            "add",
            "vout",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &lab.ns("out"),
        ]);
        x(&[
            "ip",
            "addr",
            "add",
            &format!("{NODE_OUT}/24"),
            "dev",
            "vout",
        ]);
        x(&["ip", "link", "set", "vout", "up"]);
        let o = |args: &[&str]| lab.exec("out", args).unwrap();
        o(&["ip", "addr", "add", &format!("{OUTSIDE}/24"), "dev", "eth0"]);
        o(&["ip", "link", "set", "eth0", "up"]);
        // The node's default route points at the outside host (as a real node's uplink).
        x(&["ip", "route", "add", "default", "via", OUTSIDE]);
        // The outside host reaches Services through the node, but has no route to pods.
        o(&["ip", "route", "add", "10.96.0.0/12", "via", NODE_OUT]);
        // Servers: pods p1..p3 serve their name; the outside host serves "outside".
        for (ns, body) in [("p1", "p1"), ("p2", "p2"), ("p3", "p3"), ("out", "outside")] {
            let root = lab.dir.path().join(ns);
            std::fs::create_dir_all(&root).unwrap();
            std::fs::write(root.join("index.html"), format!("{body}\n")).unwrap();
            let child = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &lab.ns(ns),
                    "busybox",
                    "httpd",
                    "-f",
                    "-p",
                    "8080",
                    "-h",
                ])
                .arg(&root)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            lab.servers.push(child);
        }
        let _ = node;
        // Wait until every server answers directly.
        for (ns, addr) in [
            ("p4", Lab::pod_ip(1).to_string()),
            ("p4", Lab::pod_ip(2).to_string()),
            ("p4", Lab::pod_ip(3).to_string()),
            ("node", OUTSIDE.to_string()),
        ] {
            let url = format!("http://{addr}:8080/");
            let mut ok = false;
            for _ in 0..100 {
                if lab
                    .exec(
                        ns,
                        &["timeout", "3", "busybox", "wget", "-q", "-O", "-", &url],
                    )
                    .is_ok()
                {
                    ok = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(ok, "server at {url} never answered");
        }
        lab
    }

    fn nft(&self) -> Nft {
        Nft::in_netns(&self.ns("node"))
    }

    fn facts() -> NodeFacts {
        NodeFacts {
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
            bridge: "shoal0".into(),
            // Pods refused on the agent's ports (the scripts must pass the real nft; Service
            // traffic must not suffer from them).
            agent_ports: vec![(Protocol::Udp, 7946), (Protocol::Tcp, 6443)],
            agents: vec![
                (OUTSIDE.parse().unwrap(), Protocol::Udp, 7946),
                (OUTSIDE.parse().unwrap(), Protocol::Tcp, 6443),
            ],
        }
    }

    /// A GET from `ns`: the body, or the error (wget's message).
    fn get(&self, ns: &str, url: &str) -> Result<String, String> {
        self.exec(
            ns,
            &["timeout", "5", "busybox", "wget", "-q", "-O", "-", url],
        )
        .map(|b| b.trim().to_string())
    }

    fn spread(&self, ns: &str, url: &str, n: usize) -> BTreeMap<String, usize> {
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            let body = self
                .get(ns, url)
                .unwrap_or_else(|e| panic!("GET {url} from {ns}: {e}"));
            *seen.entry(body).or_insert(0) += 1;
        }
        seen
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in ["node", "p1", "p2", "p3", "p4", "out"] {
            let _ = sh(&["ip", "netns", "del", &self.ns(ns)]);
        }
    }
}

fn web(backends: &[u8], node_port: bool) -> ServicePort {
    ServicePort {
        namespace: "default".into(),
        name: "web".into(),
        port_name: "".into(),
        protocol: Protocol::Tcp,
        cluster_ip: Some(CIP),
        port: 80,
        node_port: node_port.then_some(NODE_PORT),
        affinity_timeout: None,
        external_local: false,
        internal_local: false,
        backends: backends
            .iter()
            .map(|i| Backend {
                ip: Lab::pod_ip(*i),
                port: 8080,
                local: true,
            })
            .collect(),
    }
}

fn rules(ports: Vec<ServicePort>) -> Ruleset {
    proxy::build(&Desired {
        node: Lab::facts(),
        ports,
        host_ports: Vec::new(),
    })
}

/// Applies the step the agent would: a diff from `applied`, or a full replace.
fn apply(lab: &Lab, applied: Option<&Ruleset>, desired: &Ruleset) {
    let change = match applied {
        Some(a) => proxy::diff(a, desired),
        None => proxy::full(desired),
    };
    lab.nft()
        .apply(&change.script)
        .unwrap_or_else(|e| panic!("{e}\nscript:\n{}", change.script));
}

const URL: &str = "http://10.96.0.10:80/";

#[test]
fn cluster_ip_spreads_follows_endpoints_and_refuses_when_empty() {
    let lab = Lab::new();
    let three = rules(vec![web(&[1, 2, 3], false)]);
    apply(&lab, None, &three);

    let seen = lab.spread("p4", URL, 60);
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["p1", "p2", "p3"],
        "{seen:?}"
    );
    // From the node itself (output hook) too.
    assert_eq!(lab.spread("node", URL, 30).len(), 3);

    // Remove p3: incremental update, no more traffic to it.
    let two = rules(vec![web(&[1, 2], false)]);
    apply(&lab, Some(&three), &two);
    let seen = lab.spread("p4", URL, 40);
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["p1", "p2"], "{seen:?}");

    // No endpoints: refused (TCP reset), not a timeout.
    let none = rules(vec![web(&[], false)]);
    apply(&lab, Some(&two), &none);
    for ns in ["p4", "node"] {
        let err = lab
            .get(ns, URL)
            .expect_err("a Service without endpoints must refuse");
        assert!(err.contains("refused"), "from {ns}: {err}");
    }

    // Back to one endpoint (chains re-created by a diff).
    let one = rules(vec![web(&[2], false)]);
    apply(&lab, Some(&none), &one);
    assert_eq!(lab.spread("p4", URL, 5).keys().collect::<Vec<_>>(), ["p2"]);
}

#[test]
fn hairpin_nodeport_outside_clients_and_pod_egress() {
    let lab = Lab::new();
    let r = rules(vec![web(&[1, 2, 3], true)]);
    apply(&lab, None, &r);

    // A pod reaching itself through its Service (masqueraded hairpin).
    let only_p1 = rules(vec![web(&[1], true)]);
    apply(&lab, Some(&r), &only_p1);
    assert_eq!(lab.get("p1", URL).as_deref(), Ok("p1"));
    apply(&lab, Some(&only_p1), &r);

    // NodePort from the outside host, and from the node to its own addresses.
    let np = format!("http://{NODE_OUT}:{NODE_PORT}/");
    assert_eq!(lab.spread("out", &np, 40).len(), 3);
    assert_eq!(
        lab.spread("node", &format!("http://10.244.1.1:{NODE_PORT}/"), 20)
            .len(),
        3
    );
    // The ClusterIP from outside the cluster CIDR.
    assert_eq!(lab.spread("out", URL, 30).len(), 3);
    // A NodePort without endpoints is refused.
    let empty = rules(vec![web(&[], true)]);
    apply(&lab, Some(&r), &empty);
    let err = lab.get("out", &np).expect_err("no endpoints");
    assert!(err.contains("refused"), "{err}");

    // Pod egress leaving the cluster CIDR is masqueraded: the outside host has no route back
    // to pods, so the answer arrives only through the node's address.
    assert_eq!(
        lab.get("p4", &format!("http://{OUTSIDE}:8080/")).as_deref(),
        Ok("outside")
    );
}

#[test]
fn session_affinity_sticks_to_one_endpoint() {
    let lab = Lab::new();
    let mut p = web(&[1, 2, 3], false);
    p.affinity_timeout = Some(600);
    let sticky = rules(vec![p.clone()]);
    apply(&lab, None, &sticky);
    let seen = lab.spread("p4", URL, 20);
    assert_eq!(seen.len(), 1, "one client, one endpoint: {seen:?}");
    // A new timeout swaps the sets in a diff.
    p.affinity_timeout = Some(60);
    let shorter = rules(vec![p]);
    apply(&lab, Some(&sticky), &shorter);
    assert_eq!(lab.spread("p4", URL, 10).len(), 1);
    apply(&lab, Some(&shorter), &rules(vec![]));
}

#[test]
fn established_connections_survive_a_full_replace() {
    let lab = Lab::new();
    // A plain TCP server in p2 behind a second Service port (9000).
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("p2"),
            "busybox",
            "nc",
            "-l",
            "-p",
            "9000",
        ])
        // Held open: busybox nc ends the connection when its stdin ends.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = mpsc::channel();
    let out = server.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut tcp = web(&[2], false);
    tcp.name = "tcp".into();
    tcp.cluster_ip = Some(Ipv4Addr::new(10, 96, 0, 11));
    tcp.port = 9000;
    tcp.backends[0].port = 9000;
    let before = rules(vec![tcp.clone()]);
    apply(&lab, None, &before);
    // Wait for nc to listen (a probe connection would use up the one it accepts).
    let listening = (0..250).any(|_| {
        let up = lab
            .exec("p2", &["ss", "-Hltn", "sport = :9000"])
            .is_ok_and(|out| !out.trim().is_empty());
        if !up {
            std::thread::sleep(Duration::from_millis(20));
        }
        up
    });
    assert!(listening, "busybox nc never listened on :9000 in p2");
    let mut client = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("p4"),
            "busybox",
            "nc",
            "10.96.0.11",
            "9000",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = client.stdin.take().unwrap();
    writeln!(stdin, "before").unwrap();
    let got = lines.recv_timeout(Duration::from_secs(5));
    assert_eq!(got.as_deref(), Ok("before"));

    // An agent restart: the whole table replaced, even with that endpoint gone from it.
    tcp.backends.clear();
    let after = rules(vec![tcp]);
    apply(&lab, None, &after);
    assert!(lab.nft().table_intact());
    writeln!(stdin, "after").unwrap();
    let got = lines.recv_timeout(Duration::from_secs(5));
    assert_eq!(
        got.as_deref(),
        Ok("after"),
        "the established connection was cut"
    );
    // New connections see the new rules.
    let err = lab
        .exec("p4", &["busybox", "nc", "-w", "2", "10.96.0.11", "9000"])
        .expect_err("no endpoints now");
    assert!(err.contains("refused"), "{err}");
    drop(stdin);
    let _ = client.kill();
    let _ = client.wait();
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn a_flushed_ruleset_is_detected_and_cleanup_removes_the_table() {
    let lab = Lab::new();
    let nft = lab.nft();
    assert!(!nft.table_intact());
    assert!(!nft.delete_table().unwrap(), "nothing to delete yet");
    apply(&lab, None, &rules(vec![web(&[1], true)]));
    assert!(nft.table_intact());
    lab.exec("node", &["nft", "flush", "table", "ip", "shoal"])
        .unwrap();
    assert!(!nft.table_intact(), "a flushed table reads as broken");
    apply(&lab, None, &rules(vec![web(&[1], true)]));
    assert!(nft.table_intact());
    assert!(nft.delete_table().unwrap());
    assert!(lab
        .exec("node", &["nft", "list", "table", "ip", "shoal"])
        .is_err());
    // A broken script is an error naming nft's complaint, and changes nothing.
    apply(&lab, None, &rules(vec![web(&[1], true)]));
    let err = nft.apply("add rule ip shoal services bogus\n").unwrap_err();
    assert!(err.to_string().contains("bogus"), "{err}");
    assert!(nft.table_intact());
    // `shoal network cleanup`, what an operator runs on a real host, removes it too.
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("node"),
            env!("CARGO_BIN_EXE_shoal"),
        ])
        .args(["network", "cleanup"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.contains("deleted"), "{said}");
    assert!(lab
        .exec("node", &["nft", "list", "table", "ip", "shoal"])
        .is_err());
}
