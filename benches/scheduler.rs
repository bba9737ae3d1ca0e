//! Scheduler throughput in the pure core: placements per second for 50,000 pending pods
//! (500 Deployments of 100 replicas, CPU/memory requests) on 5,000 nodes, one thread.
//!
//! Each run is one full `sched::reconcile` from a snapshot in which every Deployment already
//! has its ReplicaSet and its pods and no pod is bound: the reconcile parses every object,
//! confirms the controllers have nothing to do, and binds every pod (filters, scoring,
//! per-owner spread). Prints a Markdown table with the median of several runs and a `RESULT`
//! line.
//!
//! `cargo bench --bench scheduler [-- PODS NODES RUNS]`

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use serde_json::json;
use shoal::model::{NodeRecord, NodeSystemInfo};
use shoal::sched::{reconcile, LeaderCtx, Liveness, Snapshot};

const PER_DEPLOYMENT: usize = 100;

fn node(i: usize) -> NodeRecord {
    let name = format!("node-{i:05}");
    let mut labels = BTreeMap::new();
    labels.insert("zone".to_string(), format!("z{}", i % 3));
    NodeRecord {
        name: name.clone(),
        uid: format!("uid-{name}"),
        peer_id: String::new(),
        p2p_addr: String::new(),
        api_addr: String::new(),
        internal_ip: String::new(),
        created: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
        labels,
        capacity: [("cpu", "16"), ("memory", "64Gi"), ("pods", "110")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        system: NodeSystemInfo::default(),
    }
}

fn deployment(i: usize) -> serde_json::Value {
    let name = format!("app-{i:04}");
    let cpu = ["50m", "100m", "250m"][i % 3];
    let memory = ["64Mi", "128Mi", "256Mi"][i % 3];
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default", "uid": format!("00000000-0000-4000-8000-{i:012}"), "generation": 1},
        "spec": {"replicas": PER_DEPLOYMENT, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "c", "image": "shoal.test/busybox:1",
                                       "command": ["sleep", "3600"],
                                       "resources": {"requests": {"cpu": cpu, "memory": memory}}}]}}}
    })
}

fn ctx(seed: u64) -> LeaderCtx {
    LeaderCtx {
        node: "node-00000".into(),
        epoch: 1,
        view: 1,
        now: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
        seed,
    }
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let pods = args.first().copied().unwrap_or(50_000);
    let nodes = args.get(1).copied().unwrap_or(5_000);
    let runs = args.get(2).copied().unwrap_or(5).max(1);

    // Controllers first (no nodes): ReplicaSets and pods exist, nothing is bound.
    let mut s = Snapshot {
        deployments: (0..pods.div_ceil(PER_DEPLOYMENT)).map(deployment).collect(),
        ..Snapshot::default()
    };
    let created = reconcile(&s, &ctx(0));
    s = s.after(&created);
    s.scheduling.clear();
    s.nodes = (0..nodes).map(node).collect();
    s.liveness = s
        .nodes
        .iter()
        .map(|n| (n.name.clone(), Liveness::Alive))
        .collect();
    eprintln!(
        "{} deployments, {} pods, {} nodes; {runs} runs",
        s.deployments.len(),
        s.pods.len(),
        s.nodes.len()
    );

    let mut times = Vec::new();
    let mut placed = 0;
    for run in 0..runs {
        let start = Instant::now();
        let plan = reconcile(&s, &ctx(run as u64 + 1));
        let took = start.elapsed();
        placed = plan.counts().2;
        eprintln!("run {run}: {placed} placements in {took:?}");
        assert_eq!(plan.counts().0, 0, "the controllers had nothing to do");
        times.push(took);
    }
    times.sort();
    let median: Duration = times[times.len() / 2];
    let rate = placed as f64 / median.as_secs_f64();
    println!(
        "| pods | nodes | placements | median reconcile | placements/s (median) | min | max |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {placed} | {:.2} s | {rate:.0} | {:.2} s | {:.2} s |",
        s.pods.len(),
        s.nodes.len(),
        median.as_secs_f64(),
        times[0].as_secs_f64(),
        times[times.len() - 1].as_secs_f64()
    );
    println!();
    println!(
        "RESULT scheduler: {rate:.0} placements/s ({placed} pods on {} nodes, one thread, median of {runs}; goal >= 2000/s)",
        s.nodes.len()
    );
}
