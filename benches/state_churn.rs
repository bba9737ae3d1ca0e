//! State under churn: 10,000 pods' worth of objects plus 100,000 status transitions.
//!
//! Measures document size on disk, load time, and CPU per received sync message / pushed
//! change, for two layouts:
//! - `single`: everything in the cluster document (status transitions update it in place);
//!   no history bounding at all — the baseline of the brief.
//! - `split`: objects in the cluster document, status in per-node status documents that their
//!   owner re-bases when history outgrows the state (what shoal does).
//!
//! `cargo bench --bench state_churn [-- PODS TRANSITIONS NODES]`; prints a Markdown table.

use std::time::{Duration, Instant};

use automerge::sync;
use automerge::ActorId;
use serde_json::json;
use shoal::state::{ClusterDoc, Replica, StatusDoc};

fn pod(i: usize, node: usize) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("web-{i:05}"), "namespace": "default", "uid": format!("00000000-0000-4000-8000-{i:012}"),
                     "labels": {"app": "web", "pod-template-hash": "5d9c8b7f6"}, "creationTimestamp": "2026-11-29T07:00:00Z"},
        "spec": {"nodeName": format!("n{node}"), "containers": [{"name": "web", "image": "shoal.test/busybox:1",
                 "command": ["httpd", "-f", "-p", "8080"], "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}
    })
}

fn status(i: usize, t: usize) -> serde_json::Value {
    let phase = ["Pending", "Running", "Running", "Failed"][t % 4];
    json!({"phase": phase, "podIP": format!("10.244.{}.{}", i / 250, i % 250), "restartCount": t,
           "containerStatuses": [{"name": "web", "ready": phase == "Running", "restartCount": t}]})
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

/// Brings `b` in sync with `a` through the sync protocol.
fn sync_all(a: &mut Replica, sa: &mut sync::State, b: &mut Replica, sb: &mut sync::State) {
    for _ in 0..64 {
        let m1 = a.generate_sync(sa);
        if let Some(m) = &m1 {
            b.receive_sync(sb, m).unwrap();
        }
        let m2 = b.generate_sync(sb);
        if let Some(m) = &m2 {
            a.receive_sync(sa, m).unwrap();
        }
        if m1.is_none() && m2.is_none() {
            return;
        }
    }
}

/// Median/p99 cost on a replica of receiving one sync message carrying one new transition,
/// and of applying one pushed change.
fn per_message_costs(
    writer: &mut Replica,
    mut write: impl FnMut(&mut Replica, usize),
    samples: usize,
) -> (Duration, Duration, Duration) {
    let mut reader = Replica::load(&writer.save(), ActorId::random()).unwrap();
    let (mut sw, mut sr) = (sync::State::new(), sync::State::new());
    sync_all(writer, &mut sw, &mut reader, &mut sr);
    let mut sync_costs = Vec::new();
    for k in 0..samples {
        write(writer, k);
        let msg = writer.generate_sync(&mut sw).expect("a change to send");
        let t = Instant::now();
        reader.receive_sync(&mut sr, &msg).unwrap();
        let reply = reader.generate_sync(&mut sr);
        sync_costs.push(t.elapsed());
        if let Some(r) = reply {
            writer.receive_sync(&mut sw, &r).unwrap();
        }
        sync_all(writer, &mut sw, &mut reader, &mut sr);
    }
    let mut push_costs = Vec::new();
    for k in 0..samples {
        let before = writer.heads();
        write(writer, samples + k);
        let changes = writer.changes_since(&before);
        let t = Instant::now();
        reader.apply_pushed(&changes).unwrap();
        push_costs.push(t.elapsed());
    }
    (
        median(sync_costs.clone()),
        p99(sync_costs),
        median(push_costs),
    )
}

fn load_time(bytes: &[u8]) -> Duration {
    let runs: Vec<Duration> = (0..5)
        .map(|_| {
            let t = Instant::now();
            let r = Replica::load(bytes, ActorId::random()).unwrap();
            std::hint::black_box(r.len());
            t.elapsed()
        })
        .collect();
    median(runs)
}

fn kib(n: usize) -> String {
    format!("{:.0} KiB", n as f64 / 1024.0)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let pods = args.first().copied().unwrap_or(10_000);
    let transitions = args.get(1).copied().unwrap_or(100_000);
    let nodes = args.get(2).copied().unwrap_or(5);
    eprintln!("state_churn: {pods} pods, {transitions} status transitions, {nodes} nodes");

    // ---- single document, no bounding ----
    let t = Instant::now();
    let mut single = ClusterDoc::empty(ActorId::random());
    for i in 0..pods {
        single
            .put_object(
                "pods",
                Some("default"),
                &format!("web-{i:05}"),
                &pod(i, i % nodes),
            )
            .unwrap();
    }
    for t in 0..transitions {
        let i = t % pods;
        single
            .put_object(
                "podstatus",
                Some("default"),
                &format!("web-{i:05}"),
                &status(i, t / pods + t),
            )
            .unwrap();
    }
    let single_build = t.elapsed();
    let single_bytes = single.save();
    let single_fresh = single.rebuild(ActorId::random(), |_| true).unwrap().save();
    let single_load = load_time(&single_bytes);
    let (single_sync, single_sync_p99, single_push) = per_message_costs(
        &mut single,
        |r, k| {
            let i = k % pods;
            r.put_typed(
                &format!("obj/podstatus/default/web-{i:05}"),
                &status(i, 1_000_000 + k),
            )
            .unwrap();
        },
        200,
    );

    // ---- split: objects in the cluster document, status in owner-re-based status docs ----
    let t = Instant::now();
    let mut cluster = ClusterDoc::empty(ActorId::random());
    for i in 0..pods {
        cluster
            .put_object(
                "pods",
                Some("default"),
                &format!("web-{i:05}"),
                &pod(i, i % nodes),
            )
            .unwrap();
    }
    let mut status_docs: Vec<StatusDoc> = (0..nodes)
        .map(|n| StatusDoc::empty(&format!("n{n}"), 0, ActorId::random()))
        .collect();
    let mut rebases = 0;
    for t in 0..transitions {
        let i = t % pods;
        let d = &mut status_docs[i % nodes];
        d.put(&format!("pod/default/web-{i:05}"), &status(i, t / pods + t))
            .unwrap();
        if t % 256 == 0 && d.needs_rebase() {
            *d = d.rebased(ActorId::random()).unwrap();
            rebases += 1;
        }
    }
    let split_build = t.elapsed();
    let cluster_bytes = cluster.save();
    let cluster_fresh = cluster.rebuild(ActorId::random(), |_| true).unwrap().save();
    let status_bytes: Vec<Vec<u8>> = status_docs.iter_mut().map(|d| d.save()).collect();
    let status_fresh: usize = status_docs
        .iter()
        .map(|d| d.rebuild(ActorId::random(), |_| true).unwrap().save().len())
        .sum();
    let split_total: usize =
        cluster_bytes.len() + status_bytes.iter().map(|b| b.len()).sum::<usize>();
    let split_fresh = cluster_fresh.len() + status_fresh;
    let split_load =
        load_time(&cluster_bytes) + status_bytes.iter().map(|b| load_time(b)).sum::<Duration>();
    let mut sd = StatusDoc::empty("n0", 0, ActorId::random());
    for (k, v) in status_docs[0].entries::<serde_json::Value>("") {
        sd.put(&k, &v).unwrap();
    }
    let (split_sync, split_sync_p99, split_push) = per_message_costs(
        &mut sd,
        |r, k| {
            let i = (k * nodes) % pods;
            r.put_typed(
                &format!("pod/default/web-{i:05}"),
                &status(i, 1_000_000 + k),
            )
            .unwrap();
        },
        200,
    );

    println!("| layout | build | size on disk | fresh size | size / fresh | load | sync msg received (p50 / p99) | pushed change applied (p50) |");
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| single document, no bounding | {:.1} s | {} | {} | {:.2}× | {} | {} / {} | {} |",
        single_build.as_secs_f64(),
        kib(single_bytes.len()),
        kib(single_fresh.len()),
        single_bytes.len() as f64 / single_fresh.len() as f64,
        ms(single_load),
        ms(single_sync),
        ms(single_sync_p99),
        ms(single_push)
    );
    println!(
        "| cluster doc + {nodes} status docs, owner re-base ({rebases} re-bases) | {:.1} s | {} ({} + {}) | {} | {:.2}× | {} | {} / {} | {} |",
        split_build.as_secs_f64(), kib(split_total), kib(cluster_bytes.len()), kib(split_total - cluster_bytes.len()), kib(split_fresh),
        split_total as f64 / split_fresh as f64, ms(split_load), ms(split_sync), ms(split_sync_p99), ms(split_push)
    );
}
