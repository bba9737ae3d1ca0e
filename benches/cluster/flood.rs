//! The API under a flood of idle unauthenticated connections (issue 16): authenticated
//! requests per second and their p99 on node 0, with no flood and then while `idle` TLS
//! connections that never send a request are held open (each re-opened as soon as the server
//! closes it), from many loopback source addresses; plus the agent's RSS in both phases.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::cluster::{self, Cluster};

pub struct Params {
    /// Idle connections held open during the flood.
    pub idle: usize,
    /// Concurrent authenticated clients, each one request after another.
    pub clients: usize,
    /// Seconds per phase.
    pub secs: u64,
}

struct Phase {
    requests: usize,
    failed: usize,
    p50_ms: f64,
    p99_ms: f64,
    rss_mib: f64,
    /// Flood connections open, sampled every 100 ms: the median.
    open_median: usize,
    /// Flood connections opened in the phase (re-opens after the server closed them).
    opened: usize,
}

/// A TLS client config trusting only the cluster CA.
fn tls(ca_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    shoal::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.context("cluster CA")?)?;
    }
    Ok(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// One flood connection slot: connect from `source`, finish the TLS handshake, send nothing,
/// wait for the server to close it; again, until `stop`.
async fn hold_idle(
    target: SocketAddr,
    source: IpAddr,
    tls: Arc<rustls::ClientConfig>,
    open: Arc<AtomicUsize>,
    opened: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) {
    use tokio::io::AsyncReadExt;
    let name = rustls::pki_types::ServerName::IpAddress(target.ip().into());
    while !stop.load(Ordering::Relaxed) {
        let attempt = async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(source, 0))?;
            let tcp = socket.connect(target).await?;
            let mut stream = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name.clone(), tcp)
                .await?;
            opened.fetch_add(1, Ordering::Relaxed);
            open.fetch_add(1, Ordering::Relaxed);
            let mut buf = [0u8; 512];
            loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await
                {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    _ => {}
                }
            }
            open.fetch_sub(1, Ordering::Relaxed);
            anyhow::Ok(())
        };
        if attempt.await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn measure(
    c: &dyn Cluster,
    p: &Params,
    open: &Arc<AtomicUsize>,
    opened: &Arc<AtomicUsize>,
) -> Result<Phase> {
    let base = c.api_url(0);
    let pid = c.pid(0).context("node 0 has no pid")?;
    let opened0 = opened.load(Ordering::Relaxed);
    let until = Instant::now() + Duration::from_secs(p.secs);
    let mut clients = Vec::new();
    for _ in 0..p.clients {
        let api = c.api().clone();
        let base = base.clone();
        clients.push(tokio::spawn(async move {
            let mut times = Vec::new();
            let mut failed = 0usize;
            while Instant::now() < until {
                let t = Instant::now();
                match api.list_configmaps(&base).await {
                    Ok(()) => times.push(t.elapsed().as_secs_f64() * 1e3),
                    Err(_) => failed += 1,
                }
            }
            (times, failed)
        }));
    }
    let mut open_samples = Vec::new();
    let mut rss_max = 0u64;
    while Instant::now() < until {
        open_samples.push(open.load(Ordering::Relaxed));
        rss_max = rss_max.max(cluster::status_kib(pid, "VmRSS").unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut times = Vec::new();
    let mut failed = 0;
    for client in clients {
        let (t, f) = client.await?;
        times.extend(t);
        failed += f;
    }
    times.sort_by(f64::total_cmp);
    open_samples.sort_unstable();
    let pct = |q: f64| {
        if times.is_empty() {
            f64::NAN
        } else {
            times[((times.len() - 1) as f64 * q).round() as usize]
        }
    };
    Ok(Phase {
        requests: times.len(),
        failed,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        rss_mib: rss_max as f64 / 1024.0,
        open_median: open_samples
            .get(open_samples.len() / 2)
            .copied()
            .unwrap_or(0),
        opened: opened.load(Ordering::Relaxed) - opened0,
    })
}

pub async fn run(c: &dyn Cluster, label: &str, p: &Params) -> Result<String> {
    cluster::wait_all_alive(c, &cluster::all(c), Duration::from_secs(60)).await?;
    let base = c.api_url(0);
    let target: SocketAddr = base
        .trim_start_matches("https://")
        .parse()
        .with_context(|| format!("api address of {base}"))?;
    let open = Arc::new(AtomicUsize::new(0));
    let opened = Arc::new(AtomicUsize::new(0));
    let quiet = measure(c, p, &open, &opened).await?;

    let tls = tls(&c.api().ca_pem)?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut holders = Vec::new();
    for i in 0..p.idle {
        // 127.0.1.0 – 127.0.4.255: four connections per source address at 1,000.
        let source = IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            1 + (i / 250 % 4) as u8,
            (i % 250) as u8 + 1,
        ));
        holders.push(tokio::spawn(hold_idle(
            target,
            source,
            tls.clone(),
            open.clone(),
            opened.clone(),
            stop.clone(),
        )));
    }
    // Let the flood build up before measuring.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let flooded = measure(c, p, &open, &opened).await?;
    stop.store(true, Ordering::Relaxed);
    for h in holders {
        let _ = h.await;
    }

    let rps = |ph: &Phase| ph.requests as f64 / p.secs as f64;
    let ratio = rps(&flooded) / rps(&quiet);
    let mut out = format!(
        "### API under {} idle unauthenticated connections ({label}, node 0, {} clients, {} s per phase)\n\n\
         | phase | requests/s | failed | p50 ms | p99 ms | agent RSS MiB (max) | flood connections open (median) | flood connections opened |\n\
         |---|---|---|---|---|---|---|---|\n",
        p.idle, p.clients, p.secs
    );
    for (name, ph) in [("none", &quiet), ("flood", &flooded)] {
        out += &format!(
            "| {name} | {:.0} | {} | {:.1} | {:.1} | {:.1} | {} | {} |\n",
            rps(ph),
            ph.failed,
            ph.p50_ms,
            ph.p99_ms,
            ph.rss_mib,
            ph.open_median,
            ph.opened
        );
    }
    out += &format!(
        "\nRESULT api-flood {label} idle={} rps_none={:.0} rps_flood={:.0} ratio={ratio:.2} p99_none_ms={:.1} p99_flood_ms={:.1} rss_none_mib={:.1} rss_flood_mib={:.1} failed_flood={}\n",
        p.idle,
        rps(&quiet),
        rps(&flooded),
        quiet.p99_ms,
        flooded.p99_ms,
        quiet.rss_mib,
        flooded.rss_mib,
        flooded.failed
    );
    Ok(out)
}
