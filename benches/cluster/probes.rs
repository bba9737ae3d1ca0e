//! Probe overhead (issue 6): CPU of one testnet agent (n1) running the same N busybox `httpd`
//! pods without probes, with 1 s httpGet probes, and with 1 s exec + httpGet probes, phases
//! one after another in the same run. The agent's own CPU (utime + stime) and that of the
//! children it reaped (cutime + cstime: the `runc exec` processes of exec probes) are read from
//! `/proc/<agent pid>/stat` over a few windows each; medians reported. Measures, never asserts.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::kube::{poll_until, Kube, IMAGE};

/// Linux reports these times in USER_HZ, 100 on every mainstream architecture.
const HZ: f64 = 100.0;

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    None,
    Http,
    ExecHttp,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::None => "no probes",
            Variant::Http => "httpGet readiness, 1 s",
            Variant::ExecHttp => "exec liveness + httpGet readiness, 1 s each",
        }
    }
    fn tag(self) -> &'static str {
        match self {
            Variant::None => "none",
            Variant::Http => "http",
            Variant::ExecHttp => "exec",
        }
    }
    fn probes(self) -> &'static str {
        let http = "    readinessProbe:\n      httpGet:\n        path: /\n        port: 8080\n      periodSeconds: 1\n";
        let exec = "    livenessProbe:\n      exec:\n        command: [\"cat\", \"/tmp/www/index.html\"]\n      periodSeconds: 1\n";
        match self {
            Variant::None => "",
            Variant::Http => http,
            Variant::ExecHttp => {
                // Leaked once per run: a static for the format below.
                Box::leak(format!("{http}{exec}").into_boxed_str())
            }
        }
    }
}

/// `(own, children)` CPU ticks of `pid` (utime + stime, cutime + cstime).
fn ticks(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    (f.len() == 4).then(|| (f[0] + f[1], f[2] + f[3]))
}

fn kubectl(scripts: &Path, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(scripts.join("run/kubeconfig"))
        .args(["--context", "n1", "--request-timeout=60s"])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("kubectl")?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        std::io::Write::write_all(&mut pipe, text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn manifest(variant: Variant, run: &str, pods: usize) -> String {
    let mut out = String::new();
    for i in 0..pods {
        out.push_str(&format!(
            r#"---
apiVersion: v1
kind: Pod
metadata:
  name: pb-{run}-{tag}-{i}
  labels:
    bench: pb-{run}-{tag}
spec:
  nodeName: n1
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: {IMAGE}
    command: ["sh", "-c", "mkdir -p /tmp/www && echo ok > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"]
{probes}"#,
            tag = variant.tag(),
            probes = variant.probes(),
        ));
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

struct Phase {
    variant: Variant,
    own: Vec<f64>,
    children: Vec<f64>,
    start: Duration,
}

#[allow(clippy::too_many_arguments)]
async fn phase(
    kube: &Kube,
    scripts: &Path,
    pid: u32,
    variant: Variant,
    run: &str,
    pods: usize,
    secs: u64,
    windows: usize,
) -> Result<Phase> {
    let selector = format!("bench=pb-{run}-{}", variant.tag());
    let t0 = Instant::now();
    kubectl(
        scripts,
        &["apply", "-f", "-"],
        Some(&manifest(variant, run, pods)),
    )?;
    let ready = poll_until(Duration::from_secs(1), Duration::from_secs(600), || async {
        let (_, list) = kube.list_pods(0, &selector).await.ok()?;
        (list.len() == pods && list.iter().all(|p| p.running() && p.ready)).then_some(())
    })
    .await;
    if ready.is_none() {
        bail!(
            "{pods} pods ({}) not all ready on n1 within 600 s",
            variant.tag()
        );
    }
    let start = t0.elapsed();
    // Let the start-up work (pulls, starts, status writes) settle.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut own = Vec::new();
    let mut children = Vec::new();
    for _ in 0..windows {
        let a = ticks(pid).context("agent stat")?;
        let w0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let b = ticks(pid).context("agent stat")?;
        let wall = w0.elapsed().as_secs_f64();
        own.push((b.0 - a.0) as f64 / HZ / wall * 100.0);
        children.push((b.1 - a.1) as f64 / HZ / wall * 100.0);
    }
    kubectl(
        scripts,
        &["delete", "pods", "-l", &selector, "--wait=false"],
        None,
    )?;
    let prefix = "-httpd-";
    let gone = poll_until(Duration::from_secs(1), Duration::from_secs(300), || async {
        let (_, list) = kube.list_pods(0, &selector).await.ok()?;
        let ids = kube.runc_ids(0).ok()?;
        (list.is_empty() && !ids.iter().any(|id| id.contains(prefix))).then_some(())
    })
    .await;
    if gone.is_none() {
        bail!("the {} pods did not go within 300 s", variant.tag());
    }
    Ok(Phase {
        variant,
        own,
        children,
        start,
    })
}

/// Runs the three phases on n1 of the up testnet under `scripts`.
pub async fn overhead(
    kube: &Kube,
    scripts: &Path,
    pods: usize,
    secs: u64,
    windows: usize,
) -> Result<String> {
    let pid: u32 = std::fs::read_to_string(scripts.join("run/n1/agent.pid"))
        .context("n1's agent.pid (is the testnet up?)")?
        .trim()
        .parse()
        .context("agent.pid")?;
    let run = format!("{:04x}", std::process::id() & 0xffff);
    let mut phases = Vec::new();
    for variant in [Variant::None, Variant::Http, Variant::ExecHttp] {
        eprintln!("probes: {} × {}", pods, variant.label());
        phases.push(phase(kube, scripts, pid, variant, &run, pods, secs, windows).await?);
    }
    let mut out = format!(
        "### Probe overhead: one agent (testnet n1), {pods} busybox httpd pods, {windows} windows of {secs} s per phase, medians\n\n\
         | probes | agent CPU (% of a core) | + reaped children (runc exec) | total | probes/s | all {pods} ready after |\n|---|---|---|---|---|---|\n"
    );
    let base = median(phases[0].own.clone()) + median(phases[0].children.clone());
    let mut worst = 0.0f64;
    for p in &phases {
        let own = median(p.own.clone());
        let kids = median(p.children.clone());
        let rate = match p.variant {
            Variant::None => 0,
            Variant::Http => pods,
            Variant::ExecHttp => 2 * pods,
        };
        worst = worst.max(own + kids - base);
        out.push_str(&format!(
            "| {} | {own:.1} | {kids:.1} | {:.1} (+{:.1}) | {rate} | {:.0} s |\n",
            p.variant.label(),
            own + kids,
            own + kids - base,
            p.start.as_secs_f64()
        ));
    }
    out.push_str(&format!(
        "\nRESULT probes testnet pods={pods} overhead_pct={worst:.1} goal_pct=5 met={}\n",
        worst <= 5.0
    ));
    out.push('\n');
    Ok(out)
}
