//! Workload benchmarks on the netns testnet: pod start (with bare `runc run` side by side),
//! failover of a Deployment after kill -9 of a node, and a burst of pods from apply to Running
//! and back to no container. They measure and report; nothing asserts on time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rand::Rng;
use serde_json::json;
use tokio::sync::mpsc;

use crate::kube::{poll_until, Kube, PodEvent, PodInfo};
use crate::runc::{find_busybox, Bundle};
use crate::stats::{self, row};

/// A short random tag so names never collide with a previous run's leftovers.
fn run_tag() -> String {
    format!("{:05x}", rand::thread_rng().gen_range(0..0xfffff))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn opt_s(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.2} s", d.as_secs_f64()))
        .unwrap_or_else(|| "not reached".to_string())
}

/// Pods per node, `n1: 3, n2: 4, …`.
fn spread(pods: &[PodInfo]) -> String {
    let mut per: BTreeMap<String, usize> = BTreeMap::new();
    for p in pods {
        *per.entry(p.node.clone().unwrap_or_else(|| "unbound".into()))
            .or_default() += 1;
    }
    per.iter()
        .map(|(n, c)| format!("{n}: {c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Wait until no runc container is left on any node but those of `before` (taken when the
/// benchmark started); the time it took, or None.
async fn wait_runc_back(
    kube: &Kube,
    before: &BTreeSet<String>,
    timeout: Duration,
) -> Option<Duration> {
    let t0 = Instant::now();
    poll_until(Duration::from_millis(100), timeout, || async {
        kube.runc_all()
            .ok()?
            .is_subset(before)
            .then(|| t0.elapsed())
    })
    .await
}

/// How many containers outside `before` are still there (for the report when cleanup timed out).
fn runc_left(kube: &Kube, before: &BTreeSet<String>) -> usize {
    kube.runc_all()
        .map(|now| now.difference(before).count())
        .unwrap_or(0)
}

// ---- pod start -----------------------------------------------------------------------------

/// Per pod: when the watch first showed it bound, Running, and Running with every container ready.
#[derive(Default, Clone, Copy)]
struct Start {
    bound: Option<Duration>,
    running: Option<Duration>,
    ready: Option<Duration>,
}

/// Wait on the watch for pod `name` to be Running (and ready, up to `ready_grace` more).
async fn await_start(
    rx: &mut mpsc::UnboundedReceiver<PodEvent>,
    name: &str,
    t0: Instant,
    timeout: Duration,
    ready_grace: Duration,
) -> (Start, Option<PodInfo>) {
    let mut s = Start::default();
    let mut last = None;
    loop {
        let limit = match s.running {
            Some(r) => (r + ready_grace).min(timeout),
            None => timeout,
        };
        let left = limit.saturating_sub(t0.elapsed());
        let ev = match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) | Err(_) => return (s, last),
        };
        if ev.pod.name != name || ev.kind == "DELETED" {
            continue;
        }
        let at = ev.at.saturating_duration_since(t0);
        if ev.pod.node.is_some() {
            s.bound.get_or_insert(at);
        }
        if ev.pod.running() {
            s.running.get_or_insert(at);
            if ev.pod.ready {
                s.ready.get_or_insert(at);
                return (s, Some(ev.pod));
            }
        }
        last = Some(ev.pod);
    }
}

/// Create `warmup + pods` bare pods one after another through n1; per pod, time from just before
/// the POST until the watch (opened on n1 beforehand) shows it Running. Interleaved with the same
/// number of `runc run --detach` of an equivalent bundle.
pub async fn pod_start(kube: &Kube, work: &Path, pods: usize, warmup: usize) -> Result<String> {
    let tag = run_tag();
    let selector = format!("bench=ps-{tag}");
    let labels = json!({ "bench": format!("ps-{tag}") });
    let before = kube.runc_all()?;
    let mut bundle = Bundle::build(&work.join("bundle"), &find_busybox()?)?;

    let (rv, _) = kube.list_pods(0, &selector).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let watch = kube.watch_pods(0, &selector, &rv, tx).await?;

    let mut starts: Vec<Start> = Vec::new();
    let mut runc_times = Vec::new();
    let mut failed = Vec::new();
    let mut consecutive_failures = 0;
    let mut names = Vec::new();
    for i in 0..warmup + pods {
        let id = format!("rb-{tag}-{i}");
        match bundle.run(&id) {
            Ok(d) if i >= warmup => runc_times.push(d),
            Ok(_) => {}
            Err(e) => eprintln!("runc baseline {i}: {e:#}"),
        }
        while rx.try_recv().is_ok() {} // stale events of earlier pods
        let name = format!("ps-{tag}-{i}");
        let t0 = Instant::now();
        if let Err(e) = kube.create_pod(0, &name, &labels).await {
            failed.push(format!("{name}: {e:#}"));
            consecutive_failures += 1;
        } else {
            names.push(name.clone());
            let (s, last) = await_start(
                &mut rx,
                &name,
                t0,
                Duration::from_secs(60),
                Duration::from_secs(3),
            )
            .await;
            eprintln!(
                "{name}: bound {:?} running {:?} ready {:?}",
                s.bound, s.running, s.ready
            );
            if s.running.is_none() {
                failed.push(format!(
                    "{name}: not Running within 60 s (last seen: {last:?})"
                ));
                consecutive_failures += 1;
            } else {
                consecutive_failures = 0;
                if i >= warmup {
                    starts.push(s);
                }
            }
        }
        if consecutive_failures >= 3 {
            eprintln!("3 pods in a row did not start: giving up");
            break;
        }
    }
    watch.abort();
    let (_, placed) = kube.list_pods(0, &selector).await.unwrap_or_default();

    // Clean up: delete every pod, time until no container of theirs is left on any node.
    let t_del = Instant::now();
    for name in &names {
        if let Err(e) = kube.delete_pod(0, name).await {
            eprintln!("{e:#}");
        }
    }
    let deleted = wait_runc_back(kube, &before, Duration::from_secs(120))
        .await
        .map(|_| t_del.elapsed());
    let left = runc_left(kube, &before);
    let mut runc_remove = Vec::new();
    for i in 0..warmup + pods {
        let t = Instant::now();
        if bundle.remove(&format!("rb-{tag}-{i}")).is_ok() {
            runc_remove.push(t.elapsed());
        }
    }
    drop(bundle);

    let running: Vec<Duration> = starts.iter().filter_map(|s| s.running).collect();
    let bound: Vec<Duration> = starts.iter().filter_map(|s| s.bound).collect();
    let ready: Vec<Duration> = starts.iter().filter_map(|s| s.ready).collect();
    let sr = stats::summarize(&running);
    let sb = stats::summarize(&runc_times);
    let mut out = format!(
        "### Pod start, image present, netns testnet: {} nodes, {pods} bare pods one after another (+{warmup} warm-up), watch on n1\n\n{}\n",
        kube.nodes,
        stats::HEADER
    );
    out += &format!(
        "{}\n",
        row(
            "POST → bound (`spec.nodeName` on the watch)",
            stats::summarize(&bound)
        )
    );
    out += &format!("{}\n", row("**POST → `Running` on the watch**", sr));
    out += &format!(
        "{}\n",
        row(
            "POST → Running and every container ready",
            stats::summarize(&ready)
        )
    );
    out += &format!(
        "{}\n",
        row("bare `runc run --detach`, same machine, interleaved", sb)
    );
    out += &format!(
        "{}\n",
        row(
            "(bare `runc kill` + `runc delete --force`)",
            stats::summarize(&runc_remove)
        )
    );
    out += &format!("\npods per node: {}\n", spread(&placed));
    out += &format!(
        "\ndelete all {} pods → no container of theirs left on any node (`runc list`): {}{}\n",
        names.len(),
        opt_s(deleted),
        if deleted.is_none() {
            format!(" within 120 s ({left} containers left)")
        } else {
            String::new()
        }
    );
    if !failed.is_empty() {
        out += &format!("\nfailed: {}\n", failed.len());
        for f in failed.iter().take(5) {
            out += &format!("- {f}\n");
        }
    }
    match (sr, sb) {
        (Some(s), Some(b)) => {
            out += &format!(
                "\nshoal / bare runc: p50 {:.1}×, p99 {:.1}×\n",
                s.p50 / b.p50,
                s.p99 / b.p99
            );
            out += &format!(
                "\nRESULT pod_start testnet n={} p50_ms={:.0} p99_ms={:.0} runc_p50_ms={:.0} runc_p99_ms={:.0} goal_p50_ms=150 goal_p99_ms=400 met={}\n",
                s.n, s.p50, s.p99, b.p50, b.p99,
                s.p50 <= 150.0 && s.p99 <= 400.0 && failed.is_empty()
            );
        }
        _ => {
            out += &format!(
                "\nRESULT pod_start testnet n=0 failed={} met=false\n",
                failed.len()
            );
        }
    }
    Ok(out)
}

// ---- failover ------------------------------------------------------------------------------

/// What one failover round observed, times since just before the kill.
#[derive(Default)]
struct Round {
    dead_on_n1: Option<Duration>,
    rebound: Option<Duration>,
    running: Option<Duration>,
}

/// Poll n1 every 50 ms until `replicas` pods of `selector` are Running off `victim`.
async fn await_failover(
    kube: &Kube,
    selector: &str,
    replicas: usize,
    victim: usize,
    t0: Instant,
    timeout: Duration,
) -> Round {
    let vname = kube.node_name(victim);
    let mut r = Round::default();
    while t0.elapsed() < timeout {
        let (members, pods) = futures::join!(kube.members(0), kube.list_pods(0, selector));
        let now = t0.elapsed();
        if let Ok(ms) = members {
            if ms
                .iter()
                .any(|(n, s)| n == &vname && (s == "dead" || s == "left"))
            {
                r.dead_on_n1.get_or_insert(now);
            }
        }
        if let Ok((_, pods)) = pods {
            let off: Vec<&PodInfo> = pods
                .iter()
                .filter(|p| p.node.as_deref().is_some_and(|n| n != vname))
                .collect();
            if off.len() == pods.len() && pods.len() >= replicas {
                r.rebound.get_or_insert(now);
            }
            if off.iter().filter(|p| p.running()).count() >= replicas {
                r.running = Some(now);
                return r;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    r
}

/// Exactly `replicas` pods Running (seen on n1) and, when given, `want_runc` containers over all
/// nodes besides those of `before`.
async fn await_exact(
    kube: &Kube,
    selector: &str,
    replicas: usize,
    want_runc: Option<(usize, &BTreeSet<String>)>,
    timeout: Duration,
) -> Option<Duration> {
    let t0 = Instant::now();
    poll_until(Duration::from_millis(100), timeout, || async {
        let (_, pods) = kube.list_pods(0, selector).await.ok()?;
        let ok = pods.len() == replicas
            && pods.iter().all(|p| p.running())
            && want_runc.is_none_or(|(w, before)| runc_left(kube, before) == w);
        ok.then(|| t0.elapsed())
    })
    .await
}

/// The count of containers besides those of `before` once two samples 500 ms apart agree (None
/// if it never settles).
async fn settled_runc_new(
    kube: &Kube,
    before: &BTreeSet<String>,
    timeout: Duration,
) -> Option<usize> {
    let mut prev = runc_left(kube, before);
    poll_until(Duration::from_millis(500), timeout, || {
        let now = Some(runc_left(kube, before));
        let same = now == Some(prev);
        if let Some(n) = now {
            prev = n;
        }
        async move { same.then_some(prev) }
    })
    .await
}

/// A Deployment of `replicas`; per round kill (`testnet/kill.sh`) a node other than n1 that runs
/// replicas, time until all replicas are Running on survivors (seen on n1), restart it and wait
/// for exactly `replicas` pods and containers before the next round.
pub async fn failover(kube: &Kube, replicas: usize, rounds: usize) -> Result<String> {
    if kube.nodes < 2 {
        bail!("failover needs at least 2 nodes");
    }
    let tag = run_tag();
    let name = format!("fo-{tag}");
    let selector = format!("app={name}");
    let before = kube.runc_all()?;
    kube.create_deployment(0, &name, replicas).await?;
    let initial = await_exact(kube, &selector, replicas, None, Duration::from_secs(120)).await;
    // Containers of the deployment once it runs (one per pod, plus a sandbox container per pod if
    // the runtime makes one): what "exactly the desired count" means on the nodes.
    let want_runc = match initial {
        Some(_) => settled_runc_new(kube, &before, Duration::from_secs(30)).await,
        None => None,
    };
    let mut failover_times = Vec::new();
    let mut detect = Vec::new();
    let mut rebound = Vec::new();
    let mut exact = Vec::new();
    let mut notes = Vec::new();
    if initial.is_none() {
        notes.push(format!(
            "the deployment never reached {replicas} Running pods and containers within 120 s"
        ));
    }
    let mut done = 0;
    for r in 0..rounds {
        if initial.is_none() {
            break;
        }
        let (_, pods) = kube.list_pods(0, &selector).await?;
        let candidates: Vec<usize> = (1..kube.nodes)
            .filter(|&i| {
                pods.iter()
                    .any(|p| p.node.as_deref() == Some(kube.node_name(i).as_str()))
            })
            .collect();
        let Some(&victim) = candidates.get(r % candidates.len().max(1)) else {
            notes.push(format!(
                "round {r}: no node other than n1 runs a replica; skipped"
            ));
            continue;
        };
        let on_victim = pods
            .iter()
            .filter(|p| p.node.as_deref() == Some(kube.node_name(victim).as_str()))
            .count();
        let t0 = Instant::now();
        kube.script("kill.sh", victim)?;
        let round = await_failover(
            kube,
            &selector,
            replicas,
            victim,
            t0,
            Duration::from_secs(60),
        )
        .await;
        eprintln!(
            "round {r}: killed {} ({on_victim} replicas): dead on n1 {:?}, rebound {:?}, running {:?}",
            kube.node_name(victim),
            round.dead_on_n1,
            round.rebound,
            round.running
        );
        match round.running {
            Some(d) => failover_times.push(d),
            None => notes.push(format!(
                "round {r}: {} killed, replicas not all Running elsewhere within 60 s",
                kube.node_name(victim)
            )),
        }
        detect.extend(round.dead_on_n1);
        rebound.extend(round.rebound);
        kube.script("start.sh", victim)?;
        let t1 = Instant::now();
        kube.wait_all_alive(Duration::from_secs(60)).await?;
        match await_exact(
            kube,
            &selector,
            replicas,
            want_runc.map(|w| (w, &before)),
            Duration::from_secs(60),
        )
        .await
        {
            Some(_) => exact.push(t1.elapsed()),
            None => notes.push(format!(
                "round {r}: after restarting {}, not exactly {replicas} pods Running and containers within 60 s",
                kube.node_name(victim)
            )),
        }
        done += 1;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    kube.delete_deployment(0, &name).await.ok();
    let cleaned = wait_runc_back(kube, &before, Duration::from_secs(120)).await;
    let left = runc_left(kube, &before);

    let s = stats::summarize(&failover_times);
    let mut out = format!(
        "### Failover after kill -9 of a node, netns testnet: {} nodes, Deployment of {replicas}, {done} rounds, n1's API polled every 50 ms\n\n{}\n",
        kube.nodes,
        stats::HEADER
    );
    out += &format!(
        "{}\n",
        row(
            "kill → n1 reports the victim dead",
            stats::summarize(&detect)
        )
    );
    out += &format!(
        "{}\n",
        row(
            "kill → no replica bound to the victim",
            stats::summarize(&rebound)
        )
    );
    out += &format!(
        "{}\n",
        row("**kill → all replicas Running on survivors**", s)
    );
    out += &format!(
        "{}\n",
        row(
            "restart → exactly the replicas Running, containers = replicas",
            stats::summarize(&exact)
        )
    );
    out += &format!(
        "\ncreate → {replicas} Running (initial): {}; runc containers of the deployment: {}; delete → no container left: {}\n",
        opt_s(initial),
        want_runc.map(|w| w.to_string()).unwrap_or_else(|| "?".into()),
        opt_s(cleaned)
    );
    if cleaned.is_none() {
        out += &format!(
            "- {left} containers of the deployment still on the nodes 120 s after the delete\n"
        );
    }
    for n in notes.iter().take(10) {
        out += &format!("- {n}\n");
    }
    match s {
        Some(s) => {
            out += &format!(
                "\nRESULT failover testnet n={} p50_ms={:.0} p99_ms={:.0} goal_p50_ms=3000 goal_p99_ms=5000 met={}\n",
                s.n, s.p50, s.p99,
                s.p50 <= 3000.0 && s.p99 <= 5000.0 && s.n == done
            )
        }
        None => out += "\nRESULT failover testnet n=0 met=false\n",
    }
    Ok(out)
}

// ---- burst ---------------------------------------------------------------------------------

/// POST a Deployment of `pods` replicas; poll n1 every 250 ms until all are Running; delete it and
/// time until no container is left on any node.
pub async fn burst(kube: &Kube, work: &Path, pods: usize, timeout_secs: u64) -> Result<String> {
    let tag = run_tag();
    let name = format!("burst-{tag}");
    let selector = format!("app={name}");
    let before = kube.runc_all()?;
    let timeout = Duration::from_secs(timeout_secs);
    let mut created = None;
    let mut scheduled = None;
    let mut first_running = None;
    let mut half = None;
    let mut ninety = None;
    let mut all = None;
    let mut last: Vec<PodInfo> = Vec::new();
    let mut list_errors = 0;
    // Issue 13's figures: pods moved to another node, suspicions and deaths of (live) nodes
    // in the agents' logs, the most sandbox processes alive at once.
    let suspicions_before = kube.log_lines("member suspect");
    let deaths_before = kube.log_lines("member down");
    let mut homes: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let mut peak_sandboxes = kube.sandbox_processes();
    let t0 = Instant::now();
    kube.create_deployment(0, &name, pods).await?;
    while t0.elapsed() < timeout {
        peak_sandboxes = peak_sandboxes.max(kube.sandbox_processes());
        match kube.list_pods(0, &selector).await {
            Ok((_, list)) => {
                let now = t0.elapsed();
                for p in &list {
                    if let Some(node) = &p.node {
                        let seen = homes.entry(p.name.clone()).or_default();
                        if seen.last() != Some(node) {
                            seen.push(node.clone());
                        }
                    }
                }
                let running = list.iter().filter(|p| p.running()).count();
                if list.len() >= pods {
                    created.get_or_insert(now);
                }
                if list.len() >= pods && list.iter().all(|p| p.node.is_some()) {
                    scheduled.get_or_insert(now);
                }
                if running >= 1 {
                    first_running.get_or_insert(now);
                }
                if running * 2 >= pods {
                    half.get_or_insert(now);
                }
                if running * 10 >= pods * 9 {
                    ninety.get_or_insert(now);
                }
                last = list;
                if running >= pods {
                    all = Some(now);
                    break;
                }
            }
            Err(e) => {
                list_errors += 1;
                eprintln!("list: {e:#}");
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let containers = runc_left(kube, &before);
    let moved = homes
        .values()
        .map(|h| h.len().saturating_sub(1))
        .sum::<usize>();
    let suspicions = kube
        .log_lines("member suspect")
        .saturating_sub(suspicions_before);
    let deaths = kube.log_lines("member down").saturating_sub(deaths_before);
    eprintln!("burst: all running {all:?}, {containers} containers, {moved} moves, {suspicions} suspicions, {deaths} deaths, peak {peak_sandboxes} sandboxes");

    let t1 = Instant::now();
    kube.delete_deployment(0, &name).await?;
    let mut pods_gone = None;
    let mut runc_gone = None;
    let delete_timeout = timeout.min(Duration::from_secs(180));
    while t1.elapsed() < delete_timeout && (pods_gone.is_none() || runc_gone.is_none()) {
        if pods_gone.is_none() {
            if let Ok((_, list)) = kube.list_pods(0, &selector).await {
                if list.is_empty() {
                    pods_gone = Some(t1.elapsed());
                }
            }
        }
        if runc_gone.is_none() && kube.runc_all().is_ok_and(|now| now.is_subset(&before)) {
            runc_gone = Some(t1.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The peer, on the same machine right after: as many bare runc containers (the same
    // busybox `sleep`, a network namespace each), started 8 at a time as one kubelet's
    // actions are (`MAX_PARALLEL_ACTIONS`), then removed.
    let peer = {
        let mut bundle = Bundle::build(&work.join("bundle"), &find_busybox()?)?;
        let took = bundle.run_parallel(&format!("rb-{tag}"), pods, RUNC_PEER_PARALLEL)?;
        drop(bundle);
        took
    };
    eprintln!("burst: bare runc {pods} in {peer:?}");

    let mut out = format!(
        "### Burst, netns testnet: a Deployment of {pods} pods on {} nodes, n1's API polled every 250 ms\n\n| measure | time |\n|---|---|\n",
        kube.nodes
    );
    out += &format!("| POST → all {pods} pods exist | {} |\n", opt_s(created));
    out += &format!("| POST → all bound to a node | {} |\n", opt_s(scheduled));
    out += &format!("| POST → first Running | {} |\n", opt_s(first_running));
    out += &format!("| POST → 50 % Running | {} |\n", opt_s(half));
    out += &format!("| POST → 90 % Running | {} |\n", opt_s(ninety));
    out += &format!("| **POST → all Running** | {} |\n", opt_s(all));
    out += &format!(
        "| the peer: {pods} bare `runc run --detach`, {RUNC_PEER_PARALLEL} at a time | {} |\n",
        opt_s(Some(peer))
    );
    out += &format!("| DELETE → no pod listed | {} |\n", opt_s(pods_gone));
    out += &format!(
        "| **DELETE → no container on any node** (`runc list`) | {} |\n",
        opt_s(runc_gone)
    );
    if runc_gone.is_none() {
        out += &format!(
            "\n{} containers of the burst still on the nodes {} s after the delete\n",
            runc_left(kube, &before),
            delete_timeout.as_secs()
        );
    }
    out += &format!(
        "| pods moved to another node (goal 0) | {moved} |\n| suspicions / deaths of live nodes in the agents' logs (goal 0) | {suspicions} / {deaths} |\n| peak sandbox processes (goal ≤ {pods}) | {peak_sandboxes} |\n"
    );
    out += &format!(
        "\nRunning at the end: {} of {pods}; containers at the end: {containers}; pods per node: {}; failed list requests: {list_errors}\n",
        last.iter().filter(|p| p.running()).count(),
        spread(&last)
    );
    let rate = |d: Option<Duration>| d.map(|d| pods as f64 / d.as_secs_f64());
    if let Some(r) = rate(all) {
        out += &format!("\nthroughput: {r:.1} pods/s to Running\n");
    }
    out += &format!(
        "\nRESULT burst testnet pods={pods} all_running_ms={} runc_peer_ms={:.0} pods_per_s={} delete_to_no_container_ms={} moved={moved} suspicions={suspicions} deaths={deaths} peak_sandboxes={peak_sandboxes}\n",
        all.map(|d| format!("{:.0}", ms(d))).unwrap_or_else(|| "none".into()),
        ms(peer),
        rate(all).map(|r| format!("{r:.1}")).unwrap_or_else(|| "none".into()),
        runc_gone.map(|d| format!("{:.0}", ms(d))).unwrap_or_else(|| "none".into()),
    );
    Ok(out)
}

/// How many bare-runc containers the burst's peer starts at once.
const RUNC_PEER_PARALLEL: usize = 8;

// ---- bare runc alone -------------------------------------------------------------------------

/// The bare-runc half of `pod_start` alone (no cluster needed): `runs` containers started one
/// after another with `runc run --detach`, all removed at the end.
pub async fn runc_only(work: &Path, runs: usize) -> Result<String> {
    let tag = run_tag();
    let mut bundle = Bundle::build(&work.join("bundle"), &find_busybox()?)?;
    let mut started = Vec::new();
    for i in 0..runs {
        started.push(bundle.run(&format!("rb-{tag}-{i}"))?);
    }
    let mut removed = Vec::new();
    for i in 0..runs {
        let t = Instant::now();
        bundle.remove(&format!("rb-{tag}-{i}"))?;
        removed.push(t.elapsed());
    }
    let s = stats::summarize(&started);
    let mut out = format!(
        "### Bare runc, {runs} containers one after another\n\n{}\n",
        stats::HEADER
    );
    out += &format!("{}\n", row("`runc run --detach`", s));
    out += &format!(
        "{}\n",
        row(
            "`runc kill` + `runc delete --force`",
            stats::summarize(&removed)
        )
    );
    if let Some(s) = s {
        out += &format!(
            "\nRESULT runc_start n={} p50_ms={:.0} p99_ms={:.0}\n",
            s.n, s.p50, s.p99
        );
    }
    Ok(out)
}
