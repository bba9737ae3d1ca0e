//! The node's DNS server, the shell around `crate::dns`: UDP and TCP on port 53 of the
//! gateway address of this node's pod subnet (bound with `IP_FREEBIND`, so before the bridge
//! has the address, and re-bound when the subnet changes), the zone rebuilt from the replica
//! after document changes and swapped whole, names outside the cluster domain relayed to the
//! upstream servers. See `docs/networking.md` ("DNS").

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::dns::{self, Decision, Transport, Zone, MAX_QUERY};
use crate::metrics::{DnsAnswer, Metrics};
use crate::model::network::{self, CLUSTER_DOMAIN, DNS_PORT};
use crate::model::service::SERVICES;
use crate::state::Shared;

/// Concurrent TCP connections; more wait in the kernel's backlog.
const MAX_TCP_CONNECTIONS: usize = 64;
/// Queries being forwarded at once; beyond this, forwarded names get SERVFAIL at once.
const MAX_FORWARDS: usize = 256;
/// How long one upstream server gets to answer before the next is tried...
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(1);
/// ...and how long a forwarded query may take in all before it gets SERVFAIL.
const FORWARD_BUDGET: Duration = Duration::from_secs(2);
/// A TCP connection with no complete query for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Largest upstream reply relayed (over TCP; UDP replies are bounded by the datagram).
const MAX_UPSTREAM_REPLY: usize = 65535;
/// Document changes are batched this long before the zone is rebuilt.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// Longest wait for the rest of a burst, however long zone builds take
/// ([`super::services::pause_after`]).
const MAX_PAUSE: Duration = Duration::from_secs(1);
/// The zone and the listening address are re-checked at least this often.
const TICK: Duration = Duration::from_secs(10);
/// After a failed bind, the next attempt waits this long.
const REBIND_DELAY: Duration = Duration::from_secs(2);

/// The upstream servers: explicit, or the host's `/etc/resolv.conf` nameservers that are not
/// loopback (a loopback resolver of the host is unreachable from pods' point of view and,
/// inside a network namespace, usually from the agent's too).
pub fn upstreams(configured: &Option<Vec<SocketAddr>>) -> Vec<SocketAddr> {
    match configured {
        Some(list) => list.clone(),
        None => std::fs::read_to_string("/etc/resolv.conf")
            .map(|text| resolv_conf_nameservers(&text))
            .unwrap_or_default(),
    }
}

/// The non-loopback `nameserver` lines of a `resolv.conf`, on port 53.
pub fn resolv_conf_nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then_some(())?;
            let ip: IpAddr = words.next()?.parse().ok()?; // a scoped `fe80::1%eth0` is skipped
            (!ip.is_loopback() && !ip.is_unspecified()).then(|| SocketAddr::new(ip, DNS_PORT))
        })
        .collect()
}

/// The DNS role of the agent: serves at this node's gateway address until `stop` resolves.
pub async fn run(shared: Arc<Shared>, upstreams: Vec<SocketAddr>, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let mut changes = shared.subscribe();
    let mut serial: u32 = 0;
    let (zone_tx, zone_rx) = watch::channel(Arc::new(build_zone(&shared, serial)));
    let upstreams: Arc<[SocketAddr]> = upstreams.into();
    if upstreams.is_empty() {
        tracing::info!("DNS: no upstream servers; names outside {CLUSTER_DOMAIN} get NXDOMAIN");
    } else {
        tracing::info!(upstreams = ?upstreams, "DNS: names outside {CLUSTER_DOMAIN} are forwarded");
    }
    let mut serving: Option<(SocketAddr, watch::Sender<bool>, tokio::task::JoinHandle<()>)> = None;
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        changes.borrow_and_update();
        let started = tokio::time::Instant::now();
        let zone = build_zone(&shared, serial.wrapping_add(1));
        let took = started.elapsed();
        let changed = !zone_rx.borrow().same_records(&zone);
        if changed {
            serial = serial.wrapping_add(1);
            let _ = zone_tx.send(Arc::new(zone));
        }
        let wanted = gateway(&shared).map(|ip| SocketAddr::new(ip.into(), DNS_PORT));
        let current = serving.as_ref().map(|(addr, _, _)| *addr);
        let dead = serving
            .as_ref()
            .is_some_and(|(_, _, task)| task.is_finished());
        if (wanted != current || dead) && retry_at.is_none_or(|t| t <= tokio::time::Instant::now())
        {
            if let Some((old, stop_tx, task)) = serving.take() {
                let _ = stop_tx.send(true);
                let _ = task.await;
                if wanted.is_some() && wanted != Some(old) {
                    tracing::info!(%old, "DNS: the pod subnet changed; rebinding");
                }
            }
            if let Some(addr) = wanted {
                match bind(addr) {
                    Ok(sockets) => {
                        tracing::info!(%addr, "DNS: serving");
                        let (stop_tx, stop_rx) = watch::channel(false);
                        let task = tokio::spawn(serve(
                            sockets,
                            zone_rx.clone(),
                            upstreams.clone(),
                            shared.metrics.clone(),
                            async move {
                                let mut rx = stop_rx;
                                let _ = rx.wait_for(|s| *s).await;
                            },
                        ));
                        serving = Some((addr, stop_tx, task));
                        retry_at = None;
                    }
                    Err(e) => {
                        tracing::error!(%addr, %e, "DNS: cannot listen; retrying");
                        retry_at = Some(tokio::time::Instant::now() + REBIND_DELAY);
                    }
                }
            }
        }
        let wake = retry_at.unwrap_or_else(|| tokio::time::Instant::now() + TICK);
        tokio::select! {
            _ = &mut stop => break,
            r = changes.changed() => if r.is_err() { break },
            _ = tokio::time::sleep_until(wake) => {}
        }
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(super::services::pause_after(took, DEBOUNCE, MAX_PAUSE)) => {}
        }
    }
    if let Some((_, stop_tx, task)) = serving {
        let _ = stop_tx.send(true);
        let _ = task.await;
    }
}

/// The gateway of this node's pod subnet, once it has one.
fn gateway(shared: &Shared) -> Option<std::net::Ipv4Addr> {
    let cidr = shared.read(|d| d.pod_cidrs()).remove(&shared.node_name)?;
    network::gateway(&cidr)
}

/// The zone of this node's replica now.
fn build_zone(shared: &Shared, serial: u32) -> Zone {
    let snapshot = super::services::snapshot(shared);
    let external_names: BTreeMap<(String, String), String> = shared
        .read(|d| d.list_objects(SERVICES, None))
        .into_iter()
        .filter_map(|(_, s)| {
            let name = s.pointer("/spec/externalName")?.as_str()?.to_string();
            let key = (
                s.pointer("/metadata/namespace")?.as_str()?.to_string(),
                s.pointer("/metadata/name")?.as_str()?.to_string(),
            );
            Some((key, name))
        })
        .collect();
    let entries = dns::entries(&snapshot.services, &snapshot.endpoints, &external_names);
    Zone::build(CLUSTER_DOMAIN, serial, &entries)
}

/// A UDP socket and a TCP listener on `addr`, bound with `IP_FREEBIND` (the address may be
/// assigned later) and `SO_REUSEADDR` (a restarted agent rebinds at once).
pub fn bind(addr: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = Domain::for_address(addr);
    let freebind = |socket: &Socket| match addr {
        SocketAddr::V4(_) => socket.set_freebind_v4(true),
        SocketAddr::V6(_) => socket.set_freebind_v6(true),
    };
    let udp = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    freebind(&udp)?;
    udp.set_reuse_address(true)?;
    udp.set_nonblocking(true)?;
    udp.bind(&addr.into())?;
    let tcp = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    freebind(&tcp)?;
    tcp.set_reuse_address(true)?;
    tcp.set_nonblocking(true)?;
    tcp.bind(&addr.into())?;
    tcp.listen(128)?;
    Ok((
        UdpSocket::from_std(udp.into())?,
        TcpListener::from_std(tcp.into())?,
    ))
}

/// Serves DNS on the sockets of [`bind`] until `shutdown` resolves: answers from the latest
/// zone in `zone`, relays other names to `upstreams` (none: NXDOMAIN).
pub async fn serve(
    (udp, tcp): (UdpSocket, TcpListener),
    zone: watch::Receiver<Arc<Zone>>,
    upstreams: Arc<[SocketAddr]>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let udp = Arc::new(udp);
    let forwards = Arc::new(Semaphore::new(MAX_FORWARDS));
    let connections = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    let mut tasks = JoinSet::new();
    let mut buf = vec![0u8; MAX_QUERY + 1];
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            r = udp.recv_from(&mut buf) => match r {
                Ok((n, peer)) => metrics.dns_query(on_datagram(&buf[..n.min(MAX_QUERY + 1)], peer, &udp, &zone, &upstreams, &forwards, &mut tasks)),
                Err(e) => tracing::debug!(%e, "DNS: UDP receive"),
            },
            r = tcp.accept(), if connections.available_permits() > 0 => match r {
                Ok((stream, _)) => {
                    if let Ok(permit) = connections.clone().try_acquire_owned() {
                        let zone = zone.clone();
                        let upstreams = upstreams.clone();
                        let metrics = metrics.clone();
                        tasks.spawn(async move {
                            let _permit = permit;
                            let _ = tcp_connection(stream, zone, upstreams, metrics).await;
                        });
                    }
                }
                Err(e) => tracing::debug!(%e, "DNS: TCP accept"),
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    tasks.shutdown().await;
}

/// The kind of answer a decision gives, for the query counter: the reply's RCODE and
/// answer count, or forwarded.
pub fn answer_kind(decision: &Decision) -> DnsAnswer {
    match decision {
        Decision::Reply(bytes) if bytes.len() >= 12 => {
            let answers = u16::from_be_bytes([bytes[6], bytes[7]]);
            match bytes[3] & 0x0f {
                0 if answers > 0 => DnsAnswer::Answer,
                0 => DnsAnswer::NoData,
                3 => DnsAnswer::NxDomain,
                _ => DnsAnswer::Error,
            }
        }
        Decision::Forward => DnsAnswer::Forwarded,
        Decision::Reply(_) | Decision::Drop => DnsAnswer::Error,
    }
}

/// One UDP query: answered in place, or forwarded on a task of its own.
fn on_datagram(
    query: &[u8],
    peer: SocketAddr,
    udp: &Arc<UdpSocket>,
    zone: &watch::Receiver<Arc<Zone>>,
    upstreams: &Arc<[SocketAddr]>,
    forwards: &Arc<Semaphore>,
    tasks: &mut JoinSet<()>,
) -> DnsAnswer {
    let decision = {
        let zone = zone.borrow().clone();
        dns::respond(query, &zone, Transport::Udp, !upstreams.is_empty())
    };
    let kind = answer_kind(&decision);
    match decision {
        Decision::Reply(bytes) => {
            let _ = udp.try_send_to(&bytes, peer);
        }
        Decision::Drop => {}
        Decision::Forward => {
            let query = query.to_vec();
            match forwards.clone().try_acquire_owned() {
                Ok(permit) => {
                    let udp = udp.clone();
                    let upstreams = upstreams.clone();
                    tasks.spawn(async move {
                        let _permit = permit;
                        let reply = forward(&query, &upstreams, Transport::Udp).await;
                        if let Some(reply) = reply.or_else(|| dns::servfail(&query)) {
                            let _ = udp.send_to(&reply, peer).await;
                        }
                    });
                }
                Err(_) => {
                    if let Some(reply) = dns::servfail(&query) {
                        let _ = udp.try_send_to(&reply, peer);
                    }
                }
            }
        }
    }
    kind
}

/// One TCP connection: length-prefixed queries answered in order until the client closes,
/// is idle for [`TCP_IDLE`], or sends something too long.
async fn tcp_connection(
    mut stream: TcpStream,
    zone: watch::Receiver<Arc<Zone>>,
    upstreams: Arc<[SocketAddr]>,
    metrics: Arc<Metrics>,
) -> io::Result<()> {
    loop {
        let Ok(query) = tokio::time::timeout(TCP_IDLE, read_framed(&mut stream, MAX_QUERY)).await
        else {
            return Ok(());
        };
        let query = query?;
        let decision = {
            let zone = zone.borrow().clone();
            dns::respond(&query, &zone, Transport::Tcp, !upstreams.is_empty())
        };
        metrics.dns_query(answer_kind(&decision));
        let reply = match decision {
            Decision::Reply(bytes) => bytes,
            Decision::Drop => return Ok(()),
            Decision::Forward => match forward(&query, &upstreams, Transport::Tcp).await {
                Some(reply) => reply,
                None => match dns::servfail(&query) {
                    Some(reply) => reply,
                    None => return Ok(()),
                },
            },
        };
        write_framed(&mut stream, &reply).await?;
    }
}

async fn read_framed(stream: &mut TcpStream, max: usize) -> io::Result<Vec<u8>> {
    let len = stream.read_u16().await? as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "message too long",
        ));
    }
    let mut message = vec![0u8; len];
    stream.read_exact(&mut message).await?;
    Ok(message)
}

async fn write_framed(stream: &mut TcpStream, message: &[u8]) -> io::Result<()> {
    let len = u16::try_from(message.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "message too long"))?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
}

/// Relays `query` to the upstream servers in turn (each [`UPSTREAM_TIMEOUT`], all within
/// [`FORWARD_BUDGET`]) under a fresh random id; the first reply that matches the query comes
/// back with the client's id. `None`: nobody answered.
async fn forward(query: &[u8], upstreams: &[SocketAddr], transport: Transport) -> Option<Vec<u8>> {
    let client_id = u16::from_be_bytes([*query.first()?, *query.get(1)?]);
    let attempt = async {
        for upstream in upstreams {
            let id: u16 = rand::random();
            let relayed = dns::with_id(query, id)?;
            let exchange = async {
                match transport {
                    Transport::Udp => exchange_udp(&relayed, *upstream).await,
                    Transport::Tcp => exchange_tcp(&relayed, *upstream).await,
                }
            };
            match tokio::time::timeout(UPSTREAM_TIMEOUT, exchange).await {
                Ok(Ok(reply)) => return dns::with_id(&reply, client_id),
                Ok(Err(e)) => tracing::debug!(%upstream, %e, "DNS: upstream failed"),
                Err(_) => tracing::debug!(%upstream, "DNS: upstream timed out"),
            }
        }
        None
    };
    tokio::time::timeout(FORWARD_BUDGET, attempt)
        .await
        .ok()
        .flatten()
}

/// One exchange over UDP from a fresh (randomly numbered) port, connected to the upstream so
/// nobody else's datagrams arrive; replies that do not match the query are ignored.
async fn exchange_udp(query: &[u8], upstream: SocketAddr) -> io::Result<Vec<u8>> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; MAX_UPSTREAM_REPLY];
    loop {
        let n = socket.recv(&mut buf).await?;
        if dns::upstream_reply_matches(query, &buf[..n]) {
            return Ok(buf[..n].to_vec());
        }
    }
}

async fn exchange_tcp(query: &[u8], upstream: SocketAddr) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await?;
    write_framed(&mut stream, query).await?;
    let reply = read_framed(&mut stream, MAX_UPSTREAM_REPLY).await?;
    if dns::upstream_reply_matches(query, &reply) {
        Ok(reply)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "reply does not match the query",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_upstreams_skip_loopback() {
        let text = "# generated\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch example.com\nnameserver ::1\nnameserver fe80::1%eth0\nnameserver bogus\noptions ndots:2\n";
        assert_eq!(
            resolv_conf_nameservers(text),
            vec!["10.0.0.2:53".parse::<SocketAddr>().unwrap()]
        );
    }
}
