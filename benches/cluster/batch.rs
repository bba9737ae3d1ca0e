//! Issue 18's figures on the netns testnet: Job throughput beside as many bare pods, a
//! DaemonSet's rolling update, and I/O on a local-path volume beside the host directory that
//! backs it. Reports; asserts nothing.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};

use crate::kube::{poll_until, Kube, Kubectl, IMAGE};
use crate::stats::{self, row};

/// A pod spec running `true` once (restartPolicy Never), the trivial container of a Job.
fn trivial_spec() -> Value {
    json!({
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 1,
        "containers": [{ "name": "main", "image": IMAGE, "command": ["true"] }],
    })
}

/// Pods in `default` labelled `selector` that Succeeded, and how many there are.
async fn succeeded(kube: &Kube, selector: &str) -> Result<(usize, usize)> {
    let (_, pods) = kube.list_pods(0, selector).await?;
    let done = pods.iter().filter(|p| p.phase == "Succeeded").count();
    Ok((done, pods.len()))
}

/// Deletes what `kubectl delete ARGS` names and waits until no pod of `selector` is left.
async fn clean(kube: &Kube, k: &Kubectl, args: &[&str], selector: &str) -> Result<()> {
    let mut all = vec!["delete", "--wait=false", "--ignore-not-found"];
    all.extend_from_slice(args);
    k.run(&all)?;
    let gone = poll_until(
        Duration::from_millis(500),
        Duration::from_secs(300),
        || async {
            match kube.list_pods(0, selector).await {
                Ok((_, pods)) if pods.is_empty() => Some(()),
                _ => None,
            }
        },
    )
    .await;
    if gone.is_none() {
        bail!("pods of {selector} still listed 300 s after `kubectl delete {args:?}`");
    }
    Ok(())
}

/// One Job of `completions` trivial pods (`parallelism` at a time) from POST to
/// `status.succeeded == completions`, beside `completions` bare pods of the same container
/// POSTed directly (16 requests in flight) until all Succeeded; `rounds` of each, alternating.
pub async fn jobs(
    kube: &Kube,
    completions: usize,
    parallelism: usize,
    rounds: usize,
    scripts: &Path,
) -> Result<String> {
    let k = Kubectl::new(scripts);
    let timeout = Duration::from_secs(120 + completions as u64);
    let mut job_walls = Vec::new();
    let mut pod_walls = Vec::new();
    let mut lines = Vec::new();
    for round in 1..=rounds {
        let name = format!("tp-{:05x}", rand::random::<u32>() & 0xfffff);
        let job = json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": { "name": name },
            "spec": {
                "completions": completions, "parallelism": parallelism, "backoffLimit": 100,
                "template": { "spec": trivial_spec() },
            },
        });
        let t0 = Instant::now();
        kube.post(0, "/apis/batch/v1/namespaces/default/jobs", &job)
            .await?;
        let path = format!("/apis/batch/v1/namespaces/default/jobs/{name}");
        let done = poll_until(Duration::from_millis(250), timeout, || async {
            let j = kube.get(0, &path).await.ok()?;
            (j["status"]["succeeded"].as_u64() == Some(completions as u64)).then_some(())
        })
        .await;
        let job_wall = t0.elapsed();
        let selector = format!("job-name={name}");
        if done.is_none() {
            let (ok, all) = succeeded(kube, &selector).await.unwrap_or_default();
            bail!("job {name}: {ok} of {completions} succeeded ({all} pods) after {timeout:?}");
        }
        job_walls.push(job_wall);
        clean(kube, &k, &["job", &name], &selector).await?;

        let app = format!("bare-{name}");
        let labels = json!({ "bench": app });
        let t0 = Instant::now();
        let posted: Vec<Result<Value>> = stream::iter(0..completions)
            .map(|i| {
                let body = json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": { "name": format!("{app}-{i}"), "labels": labels },
                    "spec": trivial_spec(),
                });
                async move {
                    kube.post(i % kube.nodes, "/api/v1/namespaces/default/pods", &body)
                        .await
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        if let Some(Err(e)) = posted.into_iter().find(Result::is_err) {
            return Err(e.context("creating the bare pods"));
        }
        let selector = format!("bench={app}");
        let done = poll_until(Duration::from_millis(250), timeout, || async {
            let (ok, _) = succeeded(kube, &selector).await.ok()?;
            (ok == completions).then_some(())
        })
        .await;
        let pod_wall = t0.elapsed();
        if done.is_none() {
            let (ok, all) = succeeded(kube, &selector).await.unwrap_or_default();
            bail!("bare pods: {ok} of {completions} succeeded ({all} listed) after {timeout:?}");
        }
        pod_walls.push(pod_wall);
        clean(kube, &k, &["pods", "-l", &selector], &selector).await?;
        lines.push(format!(
            "| {round} | {:.1} s | {:.1} s | {:.2} |",
            job_wall.as_secs_f64(),
            pod_wall.as_secs_f64(),
            job_wall.as_secs_f64() / pod_wall.as_secs_f64()
        ));
    }
    let median = |v: &[Duration]| stats::summarize(v).map_or(0.0, |s| s.p50 / 1000.0);
    let (job_p50, pod_p50) = (median(&job_walls), median(&pod_walls));
    let mut out = vec![
        format!(
            "## Job throughput: {completions} completions of a trivial container on {} testnet nodes, beside {completions} bare pods",
            kube.nodes
        ),
        String::new(),
        format!(
            "The Job runs `parallelism: {parallelism}`; the bare pods are POSTed 16 at a time, round-robin over the nodes. \
             Wall: POST → `status.succeeded == {completions}` (Job), POST of the first → all listed `Succeeded` (pods)."
        ),
        String::new(),
        "| round | Job | bare pods | ratio |".into(),
        "|---|---|---|---|".into(),
    ];
    out.extend(lines);
    out.push(String::new());
    out.push(stats::HEADER.into());
    out.push(row("Job wall", stats::summarize(&job_walls)));
    out.push(row("bare pods wall", stats::summarize(&pod_walls)));
    out.push(format!(
        "\nRESULT job_throughput testnet completions={completions} job_p50_s={job_p50:.1} pods_p50_s={pod_p50:.1} job_per_s={:.1} pods_per_s={:.1} ratio={:.2}\n",
        completions as f64 / job_p50.max(1e-9),
        completions as f64 / pod_p50.max(1e-9),
        job_p50 / pod_p50.max(1e-9),
    ));
    Ok(out.join("\n"))
}

/// A DaemonSet on every node; per round a template change (`kubectl set env`) and the wall
/// time of `kubectl rollout status` until every node runs the new template.
pub async fn daemonset(kube: &Kube, scripts: &Path, rounds: usize) -> Result<String> {
    let k = Kubectl::new(scripts);
    let name = format!("ds-{:05x}", rand::random::<u32>() & 0xfffff);
    let ds = json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": { "name": name },
        "spec": {
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{ "name": "main", "image": IMAGE, "command": ["sleep", "3600"],
                                     "env": [{ "name": "ROUND", "value": "0" }] }],
                },
            },
        },
    });
    let t0 = Instant::now();
    kube.post(0, "/apis/apps/v1/namespaces/default/daemonsets", &ds)
        .await?;
    let target = format!("daemonset/{name}");
    k.run(&["rollout", "status", &target, "--timeout=300s"])?;
    let created = t0.elapsed();
    let mut walls = Vec::new();
    let mut lines = Vec::new();
    for round in 1..=rounds {
        let t0 = Instant::now();
        k.run(&["set", "env", &target, &format!("ROUND={round}")])?;
        k.run(&["rollout", "status", &target, "--timeout=300s"])?;
        let wall = t0.elapsed();
        let pods = k.pods(&name)?;
        lines.push(format!(
            "| {round} | {:.2} s | {} |",
            wall.as_secs_f64(),
            pods.iter().filter(|p| p.1).count()
        ));
        walls.push(wall);
    }
    let _ = k.run(&["delete", &target, "--wait=false"]);
    let p50 = stats::summarize(&walls).map_or(0.0, |s| s.p50 / 1000.0);
    let mut out = vec![
        format!(
            "## DaemonSet rolling update on {} testnet nodes ({rounds} template changes, maxUnavailable 1)",
            kube.nodes
        ),
        String::new(),
        format!(
            "First roll-out (POST → `rollout status` done): {:.1} s.",
            created.as_secs_f64()
        ),
        String::new(),
        "| round | `set env` → `rollout status` done | Ready pods after |".into(),
        "|---|---|---|".into(),
    ];
    out.extend(lines);
    out.push(String::new());
    out.push(stats::HEADER.into());
    out.push(row("rollout wall", stats::summarize(&walls)));
    out.push(format!(
        "\nRESULT daemonset_rollout testnet nodes={} rounds={rounds} p50_s={p50:.2} per_node_s={:.2}\n",
        kube.nodes,
        p50 / kube.nodes.max(1) as f64
    ));
    Ok(out.join("\n"))
}

/// `sh` script timing a `dd` (uptime before and after, 10 ms resolution): prints `start end`.
fn timed_dd(args: &str) -> String {
    format!("read a _ < /proc/uptime; dd {args} 2>/dev/null || exit 1; read b _ < /proc/uptime; echo $a $b")
}

fn seconds(out: &str) -> Result<f64> {
    let v: Vec<f64> = out
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("uptime pair: {out:?}"))?;
    match v.as_slice() {
        [a, b] if b >= a => Ok((b - a).max(0.01)),
        _ => bail!("uptime pair: {out:?}"),
    }
}

fn drop_caches() -> Result<()> {
    // SAFETY of the figure: without this the read would come from the page cache.
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").context("drop_caches (root needed)")
}

/// Sequential write (`conv=fsync`) and cold read of `size_mib` MiB with busybox `dd`, in a pod
/// on a local-path claim and on the host in the directory that backs the claim, alternating,
/// `runs` times each.
pub async fn volume_io(
    kube: &Kube,
    scripts: &Path,
    size_mib: usize,
    runs: usize,
) -> Result<String> {
    let k = Kubectl::new(scripts);
    let name = format!("io-{:05x}", rand::random::<u32>() & 0xfffff);
    let claim = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": { "name": name },
        "spec": { "accessModes": ["ReadWriteOnce"],
                  "resources": { "requests": { "storage": format!("{}Mi", size_mib * 2) } } },
    });
    kube.post(
        0,
        "/api/v1/namespaces/default/persistentvolumeclaims",
        &claim,
    )
    .await?;
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "labels": { "bench": name } },
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{ "name": "main", "image": IMAGE, "command": ["sleep", "3600"],
                             "volumeMounts": [{ "name": "v", "mountPath": "/data" }] }],
            "volumes": [{ "name": "v", "persistentVolumeClaim": { "claimName": name } }],
        },
    });
    kube.post(0, "/api/v1/namespaces/default/pods", &pod)
        .await?;
    let node = poll_until(
        Duration::from_millis(250),
        Duration::from_secs(120),
        || async {
            let (_, pods) = kube.list_pods(0, &format!("bench={name}")).await.ok()?;
            let p = pods.into_iter().next()?;
            p.ready.then_some(p.node).flatten()
        },
    )
    .await
    .with_context(|| format!("pod {name} not Ready in 120 s"))?;
    let claim = kube
        .get(
            0,
            &format!("/api/v1/namespaces/default/persistentvolumeclaims/{name}"),
        )
        .await?;
    let volume = claim["spec"]["volumeName"]
        .as_str()
        .context("claim has no volumeName")?;
    let dir = kube
        .run_dir()
        .join(&node)
        .join("data/local-path")
        .join(format!("{volume}_default_{name}"));
    if !dir.is_dir() {
        bail!("the claim's directory {} is missing", dir.display());
    }
    let write = |path: &str| {
        timed_dd(&format!(
            "if=/dev/zero of={path}/f bs=1M count={size_mib} conv=fsync"
        ))
    };
    let read = |path: &str| timed_dd(&format!("if={path}/f of=/dev/null bs=1M"));
    let in_pod = |script: String| -> Result<f64> {
        seconds(&k.run(&["exec", &name, "--", "sh", "-c", &script])?)
    };
    let on_host = |script: String| -> Result<f64> {
        let out = std::process::Command::new("busybox")
            .args(["sh", "-c", &script])
            .output()
            .context("busybox (apt-get install busybox-static)")?;
        if !out.status.success() {
            bail!("host dd: {}", String::from_utf8_lossy(&out.stderr));
        }
        seconds(&String::from_utf8_lossy(&out.stdout))
    };
    let host_dir = dir.to_string_lossy().into_owned();
    let (mut pw, mut pr, mut hw, mut hr) = (vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        pw.push(in_pod(write("/data"))?);
        drop_caches()?;
        pr.push(in_pod(read("/data"))?);
        hw.push(on_host(write(&host_dir))?);
        drop_caches()?;
        hr.push(on_host(read(&host_dir))?);
    }
    let _ = std::fs::remove_file(dir.join("f"));
    let _ = k.run(&["delete", "pod", &name, "--wait=false"]);
    let _ = k.run(&["delete", "pvc", &name, "--wait=false"]);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mibs = |secs: f64| size_mib as f64 / secs;
    let (pw, pr, hw, hr) = (
        mibs(median(&mut pw)),
        mibs(median(&mut pr)),
        mibs(median(&mut hw)),
        mibs(median(&mut hr)),
    );
    let out = [
        format!("## Local volume I/O: {size_mib} MiB with busybox dd, in a pod on a local-path claim beside the host directory behind it ({runs} runs each, alternating; node {node})"),
        String::new(),
        "Write: `dd if=/dev/zero bs=1M conv=fsync`; read: `dd of=/dev/null bs=1M` after `drop_caches`. Medians; time from /proc/uptime (10 ms).".into(),
        String::new(),
        "| | pod on PVC | host directory | pod / host |".into(),
        "|---|---|---|---|".into(),
        format!("| write MiB/s | {pw:.0} | {hw:.0} | {:.2} |", pw / hw),
        format!("| read MiB/s | {pr:.0} | {hr:.0} | {:.2} |", pr / hr),
        format!(
            "\nRESULT volume_io testnet size_mib={size_mib} write_ratio={:.2} read_ratio={:.2} goal_ratio=0.95 met={}\n",
            pw / hw,
            pr / hr,
            pw / hw >= 0.95 && pr / hr >= 0.95
        ),
    ];
    Ok(out.join("\n"))
}
