//! Rolling update of a Deployment on the netns testnet (issue 6): per round a template change
//! (`kubectl set env`), then the wall time of `kubectl rollout status` until it returns, while
//! a sampler lists the pods every ~200 ms for the least ready count (and the most pods) seen.
//! The same samples give the pod start time of this run (first listed → first listed Ready),
//! from which the rollout's theoretical minimum is computed. Reports; asserts nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::Value;

use crate::kube::Kubectl;
use crate::stats::{self, row};

fn manifest(name: &str, replicas: usize) -> String {
    format!(
        r#"{{"apiVersion": "apps/v1", "kind": "Deployment",
  "metadata": {{"name": "{name}"}},
  "spec": {{"replicas": {replicas}, "selector": {{"matchLabels": {{"app": "{name}"}}}},
    "template": {{"metadata": {{"labels": {{"app": "{name}"}}}},
      "spec": {{"terminationGracePeriodSeconds": 1,
        "containers": [{{"name": "main", "image": "shoal.test/busybox:1", "command": ["sleep", "3600"],
          "env": [{{"name": "ROUND", "value": "0"}}]}}]}}}}}}}}"#
    )
}

/// What the sampler saw during one rollout.
#[derive(Default)]
struct Seen {
    samples: usize,
    min_ready: Option<usize>,
    max_pods: usize,
    /// Per pod: first listed, first listed Ready (since the sampler started).
    pods: BTreeMap<String, (Duration, Option<Duration>)>,
}

fn sample(k: Arc<Kubectl>, app: String, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>) {
    let t0 = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if let Ok(pods) = k.pods(&app) {
            let at = t0.elapsed();
            let ready = pods.iter().filter(|p| p.1).count();
            let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
            s.samples += 1;
            s.min_ready = Some(s.min_ready.map_or(ready, |m| m.min(ready)));
            s.max_pods = s.max_pods.max(pods.len());
            for (name, is_ready) in pods {
                let e = s.pods.entry(name).or_insert((at, None));
                if is_ready && e.1.is_none() {
                    e.1 = Some(at);
                }
            }
        }
        thread::sleep(Duration::from_millis(200));
    }
}

fn wait_ready(k: &Kubectl, app: &str, n: usize, timeout: Duration) -> Result<Duration> {
    let t0 = Instant::now();
    loop {
        let pods = k.pods(app)?;
        if pods.len() == n && pods.iter().all(|p| p.1) {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > timeout {
            bail!("{app}: not {n} ready pods after {timeout:?}: {pods:?}");
        }
        thread::sleep(Duration::from_millis(200));
    }
}

pub async fn run(scripts: &Path, nodes: usize, replicas: usize, rounds: usize) -> Result<String> {
    let k = Arc::new(Kubectl::new(scripts));
    let name = format!("roll-{:05x}", rand::random::<u32>() & 0xfffff);
    let file = std::env::temp_dir().join(format!("{name}.json"));
    std::fs::write(&file, manifest(&name, replicas))?;
    k.run(&["apply", "-f", &file.to_string_lossy()])?;
    let _ = std::fs::remove_file(&file);
    let created = wait_ready(&k, &name, replicas, Duration::from_secs(300))?;
    let d: Value = serde_json::from_str(&k.run(&["get", "deploy", &name, "-o", "json"])?)?;
    let surge = d["spec"]["strategy"]["rollingUpdate"]["maxSurge"].clone();
    let unavailable = d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"].clone();
    // Kubernetes' fenceposts: surge rounded up, unavailable down.
    let pct = |v: &Value| {
        v.as_str()
            .and_then(|s| s.trim_end_matches('%').parse::<usize>().ok())
    };
    let max_surge = pct(&surge).map_or(0, |p| (replicas * p).div_ceil(100));
    let max_unavailable = pct(&unavailable).map_or(0, |p| replicas * p / 100);
    let min_ready_allowed = replicas - max_unavailable;

    let mut walls = Vec::new();
    let mut mins = Vec::new();
    let mut starts = Vec::new();
    let mut lines = Vec::new();
    for round in 1..=rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let sampler = {
            let (k, app, stop, seen) = (k.clone(), name.clone(), stop.clone(), seen.clone());
            thread::spawn(move || sample(k, app, stop, seen))
        };
        // The sampler sees the old pods first (one sample takes ~0.45 s: kubectl's start-up).
        let deadline = Instant::now() + Duration::from_secs(30);
        while seen.lock().unwrap_or_else(|p| p.into_inner()).samples == 0 {
            if Instant::now() > deadline {
                stop.store(true, Ordering::Relaxed);
                bail!("the sampler got no pod list in 30 s");
            }
            thread::sleep(Duration::from_millis(20));
        }
        let t0 = Instant::now();
        k.run(&[
            "set",
            "env",
            &format!("deployment/{name}"),
            &format!("ROUND={round}"),
        ])?;
        let status = k.run(&[
            "rollout",
            "status",
            &format!("deployment/{name}"),
            "--timeout=300s",
        ]);
        let wall = t0.elapsed();
        stop.store(true, Ordering::Relaxed);
        let _ = sampler.join();
        status?;
        let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        let first_seen = seen.pods.values().map(|p| p.0).min().unwrap_or_default();
        // New pods: those not there in the first sample; start = first listed → first Ready.
        let round_starts: Vec<Duration> = seen
            .pods
            .values()
            .filter(|p| p.0 > first_seen)
            .filter_map(|(listed, ready)| Some(ready.as_ref()?.saturating_sub(*listed)))
            .collect();
        let min_ready = seen.min_ready.unwrap_or(0);
        lines.push(format!(
            "| {round} | {:.2} s | {min_ready} | {} | {} | {} |",
            wall.as_secs_f64(),
            seen.max_pods,
            round_starts.len(),
            seen.samples
        ));
        walls.push(wall);
        mins.push(min_ready);
        starts.extend(round_starts);
    }
    let _ = k.run(&["delete", "deployment", &name, "--wait=false"]);

    let wall = stats::summarize(&walls);
    let start = stats::summarize(&starts);
    let mut sorted_mins = mins.clone();
    sorted_mins.sort();
    let median_min = sorted_mins.get(sorted_mins.len() / 2).copied().unwrap_or(0);
    let batches_surge = replicas.div_ceil(max_surge.max(1));
    let batches_both = replicas.div_ceil((max_surge + max_unavailable).max(1));
    let start_p50 = start.as_ref().map(|s| s.p50 / 1000.0).unwrap_or_default();
    let mut out = vec![
        format!(
            "## Rolling update: {replicas} replicas on {nodes} testnet nodes, {rounds} rollouts"
        ),
        String::new(),
        format!(
            "maxSurge {surge} → {max_surge}, maxUnavailable {unavailable} → {max_unavailable} \
             (at least {min_ready_allowed} ready allowed); first {replicas} pods ready in {:.1} s",
            created.as_secs_f64()
        ),
        String::new(),
        "| round | `rollout status` wall | least ready seen | most pods seen | new pods timed | samples |".into(),
        "|---|---|---|---|---|---|".into(),
    ];
    out.extend(lines);
    out.push(String::new());
    out.push(stats::HEADER.into());
    out.push(row("`rollout status` wall time", wall));
    out.push(row("pod start (listed → Ready, 200 ms sampling)", start));
    out.push(String::new());
    out.push(format!(
        "Least ready count: median {median_min} over rounds (all rounds: {mins:?}; allowed ≥ {min_ready_allowed})."
    ));
    out.push(format!(
        "Theoretical minimum from this run's pod start p50 ({:.2} s): replicas/maxSurge = {batches_surge} batches → {:.2} s; \
         replicas/(maxSurge+maxUnavailable) = {batches_both} waves → {:.2} s.",
        start_p50,
        start_p50 * batches_surge as f64,
        start_p50 * batches_both as f64,
    ));
    Ok(out.join("\n"))
}
