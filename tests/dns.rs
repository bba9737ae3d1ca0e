//! The node's DNS server (`agent::dns`) on loopback: busybox `nslookup` resolves Service names
//! and gets NXDOMAIN for others; TCP answers what UDP truncates; names outside the cluster
//! domain go to an upstream (a fake one in this test), fail with SERVFAIL when it is silent,
//! and get NXDOMAIN at once without one; garbage does not stop the server; a new zone is
//! served as soon as it is published.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket as StdUdp};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use shoal::agent::dns::{bind, serve};
use shoal::dns::{HeadlessEndpoint, NamedPort, ServiceEntry, ServiceTarget, Zone};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::watch;

fn busybox() -> &'static str {
    let ok = Command::new("busybox")
        .arg("true")
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "busybox not found: install Debian's busybox-static (nslookup is the DNS client of these tests)");
    "busybox"
}

/// A loopback address of its own for each server (all of 127/8 is loopback), so servers on
/// port 53 never collide with each other or with anything on 127.0.0.1.
fn loopback_addr(port: u16) -> SocketAddr {
    let r: u32 = rand::random();
    let ip = Ipv4Addr::new(127, 53, (r >> 8) as u8, (r as u8).max(1));
    SocketAddr::new(ip.into(), port)
}

fn zone(serial: u32, web_ip: Ipv4Addr, endpoints: usize) -> Zone {
    let endpoints = (0..endpoints)
        .map(|i| HeadlessEndpoint {
            hostname: None,
            ip: Ipv4Addr::new(10, 244, (i / 250) as u8, (i % 250) as u8 + 1),
            ports: vec![NamedPort {
                name: "pg".into(),
                protocol: "TCP".into(),
                port: 5432,
            }],
        })
        .collect();
    Zone::build(
        "cluster.local",
        serial,
        &[
            ServiceEntry {
                namespace: "shop".into(),
                name: "web".into(),
                target: ServiceTarget::ClusterIp(web_ip),
                ports: vec![NamedPort {
                    name: "http".into(),
                    protocol: "TCP".into(),
                    port: 80,
                }],
            },
            ServiceEntry {
                namespace: "shop".into(),
                name: "db".into(),
                target: ServiceTarget::Headless(endpoints),
                ports: Vec::new(),
            },
        ],
    )
}

struct Server {
    addr: SocketAddr,
    zone: watch::Sender<Arc<Zone>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    metrics: Arc<shoal::metrics::Metrics>,
}

async fn start(zone: Zone, upstreams: Vec<SocketAddr>) -> Server {
    let addr = loopback_addr(53);
    let sockets =
        bind(addr).unwrap_or_else(|e| panic!("binding {addr} (needs root for port 53): {e}"));
    let (zone_tx, zone_rx) = watch::channel(Arc::new(zone));
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let metrics = Arc::new(shoal::metrics::Metrics::new());
    let m = metrics.clone();
    let task = tokio::spawn(serve(sockets, zone_rx, upstreams.into(), m, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    Server {
        addr,
        zone: zone_tx,
        stop: stop_tx,
        task,
        metrics,
    }
}

impl Server {
    async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the server stops on shutdown")
            .expect("the server task does not panic");
    }
}

/// `busybox nslookup [-type=T] NAME SERVER` (blocking, run off the runtime): (success, output).
async fn nslookup(name: &str, qtype: Option<&str>, server: SocketAddr) -> (bool, String) {
    let mut args = vec!["nslookup".to_string()];
    if let Some(t) = qtype {
        args.push(format!("-type={t}"));
    }
    args.push(name.to_string());
    args.push(server.ip().to_string());
    let bin = busybox();
    let out = tokio::task::spawn_blocking(move || Command::new(bin).args(&args).output())
        .await
        .unwrap()
        .expect("running busybox nslookup");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn query(name: &str, qtype: RecordType) -> Message {
    let mut message = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    message
}

async fn ask_udp(server: SocketAddr, message: &Message) -> Message {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket
        .send_to(&message.to_vec().unwrap(), server)
        .await
        .unwrap();
    let mut buf = vec![0u8; 65535];
    let (n, _) = tokio::time::timeout(Duration::from_secs(10), socket.recv_from(&mut buf))
        .await
        .expect("a UDP reply within 10 s")
        .unwrap();
    let reply = Message::from_vec(&buf[..n]).expect("the reply decodes");
    assert_eq!(reply.metadata.id, message.metadata.id);
    reply
}

async fn ask_tcp(stream: &mut TcpStream, message: &Message) -> Message {
    let bytes = message.to_vec().unwrap();
    stream.write_u16(bytes.len() as u16).await.unwrap();
    stream.write_all(&bytes).await.unwrap();
    let len = stream.read_u16().await.unwrap() as usize;
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await.unwrap();
    let reply = Message::from_vec(&buf).expect("the reply decodes");
    assert_eq!(reply.metadata.id, message.metadata.id);
    reply
}

fn addresses(message: &Message) -> Vec<Ipv4Addr> {
    message
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nslookup_resolves_services_and_fails_other_names() {
    let server = start(zone(1, Ipv4Addr::new(10, 96, 0, 10), 2), Vec::new()).await;
    for name in ["web.shop.svc.cluster.local", "WEB.shop.svc.cluster.local."] {
        let (ok, out) = nslookup(name, None, server.addr).await;
        assert!(ok, "{name}: {out}");
        assert!(out.contains("Address: 10.96.0.10"), "{name}: {out}");
    }
    let (ok, out) = nslookup("db.shop.svc.cluster.local", Some("a"), server.addr).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("Address: 10.244.0.1") && out.contains("Address: 10.244.0.2"),
        "headless: {out}"
    );
    let (ok, out) = nslookup(
        "_http._tcp.web.shop.svc.cluster.local",
        Some("srv"),
        server.addr,
    )
    .await;
    assert!(ok, "{out}");
    assert!(out.contains("80 web.shop.svc.cluster.local"), "SRV: {out}");
    for name in [
        "nothing.shop.svc.cluster.local",
        "web.shop.svc.cluster.local.shop.svc.cluster.local",
        "example.com",
    ] {
        let started = Instant::now();
        let (ok, out) = nslookup(name, Some("a"), server.addr).await;
        assert!(!ok, "{name}: {out}");
        assert!(out.contains("NXDOMAIN"), "{name}: {out}");
        // A correctness bound (an answer, not a timeout), not a benchmark.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{name} took {:?}",
            started.elapsed()
        );
    }
    // The query counter saw the answers and the NXDOMAINs (nslookup may also ask AAAA).
    let text = server.metrics.encode(false);
    let count = |answer: &str| -> u64 {
        let prefix = format!("shoal_dns_queries_total{{answer=\"{answer}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert!(count("answer") >= 4, "{text}");
    assert!(count("nxdomain") >= 3, "{text}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_answers_what_udp_truncates() {
    let server = start(zone(1, Ipv4Addr::new(10, 96, 0, 10), 300), Vec::new()).await;
    let question = query("db.shop.svc.cluster.local.", RecordType::A);
    let udp = ask_udp(server.addr, &question).await;
    assert!(
        udp.metadata.truncation,
        "300 addresses do not fit 512 bytes"
    );
    assert!(udp.answers.is_empty());
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let tcp = ask_tcp(&mut stream, &question).await;
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 300);
    assert!(tcp.answers.iter().all(|r| r.ttl == shoal::dns::TTL));
    // The connection carries further queries.
    let aaaa = ask_tcp(
        &mut stream,
        &query("web.shop.svc.cluster.local.", RecordType::AAAA),
    )
    .await;
    assert_eq!(aaaa.metadata.response_code, ResponseCode::NoError);
    assert!(aaaa.answers.is_empty(), "no IPv6 addresses: no data");
    server.stop().await;
}

/// A fake upstream: answers every A question with 192.0.2.1 after `delay`, or never.
async fn fake_upstream(answer: bool) -> SocketAddr {
    let socket = UdpSocket::bind(loopback_addr(0)).await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
            if !answer {
                continue;
            }
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut r = Message::response(q.metadata.id, OpCode::Query);
            r.metadata.recursion_available = true;
            r.add_queries(q.queries.clone());
            if let Some(question) = q.queries.first() {
                r.add_answer(Record::from_rdata(
                    question.name().clone(),
                    60,
                    RData::A(A::new(192, 0, 2, 1)),
                ));
            }
            let _ = socket.send_to(&r.to_vec().unwrap(), peer).await;
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_names_are_forwarded_upstream() {
    let silent = fake_upstream(false).await;
    let answering = fake_upstream(true).await;
    // The silent server first: its timeout passes, then the next answers.
    let server = start(
        zone(1, Ipv4Addr::new(10, 96, 0, 10), 0),
        vec![silent, answering],
    )
    .await;
    let reply = ask_udp(server.addr, &query("Example.COM.", RecordType::A)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&reply), vec![Ipv4Addr::new(192, 0, 2, 1)]);
    assert_eq!(
        reply.queries[0].name().to_ascii(),
        "Example.COM.",
        "question as asked"
    );
    // Cluster names are never forwarded.
    let reply = ask_udp(
        server.addr,
        &query("web.shop.svc.cluster.local.", RecordType::A),
    )
    .await;
    assert_eq!(addresses(&reply), vec![Ipv4Addr::new(10, 96, 0, 10)]);
    let reply = ask_udp(
        server.addr,
        &query("x.shop.svc.cluster.local.", RecordType::A),
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    server.stop().await;

    // Only a silent upstream: SERVFAIL once the forwarding budget (2 s) is spent.
    let server = start(zone(1, Ipv4Addr::new(10, 96, 0, 10), 0), vec![silent]).await;
    let started = Instant::now();
    let reply = ask_udp(server.addr, &query("example.com.", RecordType::A)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_does_not_stop_the_server_and_new_zones_are_served() {
    let server = start(zone(1, Ipv4Addr::new(10, 96, 0, 10), 0), Vec::new()).await;
    let sender = StdUdp::bind("127.0.0.1:0").unwrap();
    for i in 0..200u32 {
        let len = (i as usize * 37) % 700;
        let junk: Vec<u8> = (0..len).map(|_| rand::random()).collect();
        let _ = sender.send_to(&junk, server.addr);
    }
    // TCP: a length beyond the limit, and a connection that sends half a message and closes.
    let mut long = TcpStream::connect(server.addr).await.unwrap();
    long.write_u16(60000).await.unwrap();
    long.write_all(&[0u8; 100]).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), long.read_to_end(&mut rest)).await;
    assert!(rest.is_empty(), "no answer to an over-long message");
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_u16(40).await.unwrap();
    half.write_all(&[1, 2, 3]).await.unwrap();
    drop(half);
    // A query with a header and a question that is cut short gets FORMERR.
    let bytes = query("web.shop.svc.cluster.local.", RecordType::A)
        .to_vec()
        .unwrap();
    sender.send_to(&bytes[..20], server.addr).unwrap();
    sender
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 512];
    loop {
        let (n, _) = sender.recv_from(&mut buf).expect("a FORMERR reply");
        let reply = Message::from_vec(&buf[..n]).unwrap();
        if reply.metadata.id == u16::from_be_bytes([bytes[0], bytes[1]]) {
            assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
            break;
        }
    }
    // Still serving.
    let reply = ask_udp(
        server.addr,
        &query("web.shop.svc.cluster.local.", RecordType::A),
    )
    .await;
    assert_eq!(addresses(&reply), vec![Ipv4Addr::new(10, 96, 0, 10)]);
    // A new zone is answered from at once.
    server
        .zone
        .send(Arc::new(zone(2, Ipv4Addr::new(10, 96, 0, 99), 0)))
        .unwrap();
    let reply = ask_udp(
        server.addr,
        &query("web.shop.svc.cluster.local.", RecordType::A),
    )
    .await;
    assert_eq!(addresses(&reply), vec![Ipv4Addr::new(10, 96, 0, 99)]);
    server.stop().await;
}
