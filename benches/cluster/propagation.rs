//! Change propagation: POST a configmap on one node, time the ADDED event on every node's watch.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::mpsc;

use crate::cluster::Cluster;
use crate::stats::{self, row};

pub struct Params {
    pub writes: usize,
    /// Writes per second, open loop (a write does not wait for the previous one to spread).
    pub rate: f64,
}

pub async fn run(c: &dyn Cluster, label: &str, p: &Params) -> Result<String> {
    let n = c.len();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watches = Vec::new();
    for i in 0..n {
        watches.push(
            c.api()
                .watch_configmaps(i, c.api_url(i), tx.clone())
                .await?,
        );
    }
    drop(tx);
    // Let the streams settle (and drain ADDED events for objects that already exist).
    tokio::time::sleep(Duration::from_secs(1)).await;
    while rx.try_recv().is_ok() {}

    let run_id = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
            & 0xffffff
    );
    let mut sent: HashMap<String, Instant> = HashMap::new();
    let mut seen: HashMap<String, Vec<Option<Instant>>> = HashMap::new();
    let mut posts = Vec::new();
    let gap = Duration::from_secs_f64(1.0 / p.rate);
    let start = Instant::now();
    for k in 0..p.writes {
        let writer = k % n;
        let name = format!("bench-{run_id}-{k}");
        let at = start + gap * k as u32;
        tokio::time::sleep_until(at.into()).await;
        let t0 = Instant::now();
        sent.insert(name.clone(), t0);
        let api = c.api().clone();
        let url = c.api_url(writer);
        posts.push(tokio::spawn(async move {
            let r = api.create_configmap(&url, &name).await;
            (r, t0.elapsed())
        }));
        while let Ok(s) = rx.try_recv() {
            record(&mut seen, n, s);
        }
    }
    // Collect until every write reached every node, or 15 s after the last write.
    let deadline = Instant::now() + Duration::from_secs(15);
    while sent
        .keys()
        .filter(|k| seen.get(*k).is_some_and(|v| v.iter().all(Option::is_some)))
        .count()
        < p.writes
    {
        match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
            Ok(Some(s)) => record(&mut seen, n, s),
            _ => break,
        }
    }
    for w in &watches {
        w.abort();
    }
    let mut post_lat = Vec::new();
    let mut post_err = 0;
    for h in posts {
        match h.await? {
            (Ok(()), d) => post_lat.push(d),
            (Err(e), _) => {
                post_err += 1;
                eprintln!("POST failed: {e:#}");
            }
        }
    }
    let mut all_nodes = Vec::new();
    let mut per_node = Vec::new();
    let mut missing = 0;
    for (name, t0) in &sent {
        let Some(v) = seen.get(name) else {
            missing += n;
            continue;
        };
        let arrivals: Vec<Duration> = v
            .iter()
            .flatten()
            .map(|t| t.saturating_duration_since(*t0))
            .collect();
        missing += n - arrivals.len();
        if arrivals.len() == n {
            all_nodes.push(*arrivals.iter().max().unwrap_or(&Duration::ZERO));
        }
        per_node.extend(arrivals);
    }
    let s_all = stats::summarize(&all_nodes);
    let mut out =
        format!(
        "### Change propagation, {label}: {n} nodes, {} writes at {}/s over {n} writers\n\n{}\n",
        p.writes, p.rate, stats::HEADER
    );
    out += &format!(
        "{}\n",
        row("POST latency (writer)", stats::summarize(&post_lat))
    );
    out += &format!(
        "{}\n",
        row(
            "arrival at one node (all node×write pairs)",
            stats::summarize(&per_node)
        )
    );
    out += &format!(
        "{}\n",
        row("**propagation to every node** (max over nodes)", s_all)
    );
    out += &format!(
        "\nmissing (node, write) arrivals after 15 s: {missing}; failed POSTs: {post_err}\n"
    );
    if let Some(s) = s_all {
        out += &format!(
            "\nRESULT propagation {label} n={n} p50_ms={:.0} p99_ms={:.0} goal_p99_ms=250 met={}\n",
            s.p50,
            s.p99,
            s.p99 <= 250.0 && missing == 0
        );
    }
    Ok(out)
}

fn record(seen: &mut HashMap<String, Vec<Option<Instant>>>, n: usize, s: crate::api::Seen) {
    let slot = &mut seen.entry(s.name).or_insert_with(|| vec![None; n])[s.node];
    if slot.is_none() {
        *slot = Some(s.at);
    }
}
