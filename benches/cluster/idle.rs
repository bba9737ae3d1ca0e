//! Idle cost of an agent: RSS, CPU and bytes/s per node, idle and under a steady write rate.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::cluster::{self, Cluster};

struct Sample {
    rss_kib: u64,
    hwm_kib: u64,
    cpu_pct: f64,
    rx_bps: Option<f64>,
    tx_bps: Option<f64>,
}

fn ticks_per_sec() -> f64 {
    // Linux reports utime/stime in USER_HZ, 100 on every mainstream architecture.
    100.0
}

/// Measure every node over `secs`, posting `rate` configmaps per second (round-robin over the
/// nodes) meanwhile when `rate > 0`.
async fn phase(c: &dyn Cluster, secs: u64, rate: f64) -> Result<Vec<Sample>> {
    let n = c.len();
    let pids: Vec<Option<u32>> = (0..n).map(|i| c.pid(i)).collect();
    let cpu0: Vec<Option<u64>> = pids
        .iter()
        .map(|p| p.and_then(cluster::cpu_ticks))
        .collect();
    let net0: Vec<Option<(u64, u64)>> = (0..n).map(|i| c.net_bytes(i)).collect();
    let t0 = Instant::now();
    let dur = Duration::from_secs(secs);
    if rate > 0.0 {
        let gap = Duration::from_secs_f64(1.0 / rate);
        let id = format!(
            "{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis()
                & 0xffffff
        );
        let mut k = 0usize;
        let mut inflight = Vec::new();
        while t0.elapsed() < dur {
            tokio::time::sleep_until((t0 + gap * k as u32).into()).await;
            let api = c.api().clone();
            let url = c.api_url(k % n);
            let name = format!("load-{id}-{k}");
            inflight.push(tokio::spawn(async move {
                api.create_configmap(&url, &name).await
            }));
            k += 1;
        }
        let failed = futures::future::join_all(inflight)
            .await
            .into_iter()
            .filter(|r| !matches!(r, Ok(Ok(()))))
            .count();
        if failed > 0 {
            eprintln!("{failed} of {k} load writes failed");
        }
    } else {
        tokio::time::sleep(dur).await;
    }
    let el = t0.elapsed().as_secs_f64();
    let mut out = Vec::new();
    for i in 0..n {
        let pid = pids[i];
        let cpu = match (cpu0[i], pid.and_then(cluster::cpu_ticks)) {
            (Some(a), Some(b)) => (b - a) as f64 / ticks_per_sec() / el * 100.0,
            _ => f64::NAN,
        };
        let net = match (net0[i], c.net_bytes(i)) {
            (Some(a), Some(b)) => Some(((b.0 - a.0) as f64 / el, (b.1 - a.1) as f64 / el)),
            _ => None,
        };
        out.push(Sample {
            rss_kib: pid
                .and_then(|p| cluster::status_kib(p, "VmRSS:"))
                .unwrap_or(0),
            hwm_kib: pid
                .and_then(|p| cluster::status_kib(p, "VmHWM:"))
                .unwrap_or(0),
            cpu_pct: cpu,
            rx_bps: net.map(|x| x.0),
            tx_bps: net.map(|x| x.1),
        });
    }
    Ok(out)
}

fn fmt_bps(v: Option<f64>) -> String {
    v.map(|b| format!("{:.0}", b))
        .unwrap_or_else(|| "n/a".into())
}

pub async fn run(c: &dyn Cluster, label: &str, secs: u64, rate: f64) -> Result<String> {
    let n = c.len();
    eprintln!("idle: settling 10 s, then {secs} s idle and {secs} s at {rate} writes/s");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle = phase(c, secs, 0.0).await?;
    let load = phase(c, secs, rate).await?;
    let mut out = format!(
        "### Idle agent, {label}: {n} nodes, {secs} s idle then {secs} s at {rate} writes/s\n\n"
    );
    out += "| node | RSS MiB idle | RSS MiB loaded | peak RSS MiB | CPU % idle | CPU % loaded | rx B/s idle | tx B/s idle | rx B/s loaded | tx B/s loaded |\n";
    out += "|---|---|---|---|---|---|---|---|---|---|\n";
    let mib = |k: u64| k as f64 / 1024.0;
    for i in 0..n {
        let (a, b) = (&idle[i], &load[i]);
        out += &format!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {} | {} | {} | {} |\n",
            c.name(i),
            mib(a.rss_kib),
            mib(b.rss_kib),
            mib(b.hwm_kib),
            a.cpu_pct,
            b.cpu_pct,
            fmt_bps(a.rx_bps),
            fmt_bps(a.tx_bps),
            fmt_bps(b.rx_bps),
            fmt_bps(b.tx_bps)
        );
    }
    let max_rss = idle.iter().map(|s| mib(s.rss_kib)).fold(0.0, f64::max);
    let max_cpu = idle.iter().map(|s| s.cpu_pct).fold(0.0, f64::max);
    if idle.iter().all(|s| s.rx_bps.is_none()) {
        out += "\nPer-node bytes/s: not measurable on loopback (one `lo` for all agents); see the testnet run.\n";
    }
    out += &format!(
        "\nRESULT idle {label} n={n} max_rss_mib={max_rss:.1} max_cpu_pct={max_cpu:.2} goal_rss_mib=32 goal_cpu_pct=1 met={}\n",
        max_rss <= 32.0 && max_cpu <= 1.0
    );
    Ok(out)
}
