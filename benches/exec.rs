//! What one exec into a running container costs, four ways side by side in the same run:
//! `runc exec` (what exec probes used before), `nsenter -t <pid> -a` (util-linux: namespaces and
//! root only, no cgroup, user or capability change — the floor of any per-call process), and
//! shoal's direct join (`runtime::nsexec`: cgroups, namespaces, root, user, capabilities).
//! Shoal's path twice: as a first exec into the container (reading runc's files and opening
//! its namespaces and cgroups each call) and attached once (what the prober does: the opened
//! container kept while its init lives). Each runs `true` (busybox) in a busybox container made
//! by the real runc, `CALLS` times, one after another; CPU is the user + system time of the
//! bench process and its reaped children (`getrusage` SELF + CHILDREN), wall is per call. Prints a Markdown table of medians of `ROUNDS` rounds and `RESULT` lines;
//! the probe goal (issue 20: ≤ 2% of a core for 100 pods with a 1 s exec probe) is 0.2 ms of
//! CPU per call.
//!
//! Needs root, runc and /bin/busybox (Debian's busybox-static).
//!
//! `cargo bench --bench exec [-- CALLS ROUNDS]`

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shoal::runtime::nsexec;
use shoal::runtime::pods::StartOutcome;
use shoal::runtime::{ImageInfo, PodMeta, Runtime, RuntimeConfig};

/// CPU (user + system) of this process's threads and of its reaped children: the caller's
/// own share counts (shoal's direct join reads and opens in the caller; `runc exec` and
/// `nsenter` do that work in their own processes).
fn cpu() -> Duration {
    let of = |who| {
        // SAFETY: getrusage fills the struct it is given.
        let usage = unsafe {
            let mut u: nix::libc::rusage = std::mem::zeroed();
            nix::libc::getrusage(who, &mut u);
            u
        };
        let tv = |t: nix::libc::timeval| {
            Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
        };
        tv(usage.ru_utime) + tv(usage.ru_stime)
    };
    of(nix::libc::RUSAGE_SELF) + of(nix::libc::RUSAGE_CHILDREN)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn layer(dir: &Path) -> PathBuf {
    let layer = dir.join("layer");
    for d in ["bin", "proc", "dev", "sys", "etc", "tmp"] {
        std::fs::create_dir_all(layer.join(d)).expect("layer dir");
    }
    std::fs::copy("/bin/busybox", layer.join("bin/busybox"))
        .expect("/bin/busybox (apt-get install busybox-static)");
    for applet in ["sh", "true", "sleep"] {
        std::os::unix::fs::symlink("busybox", layer.join("bin").join(applet)).expect("applet");
    }
    layer
}

/// Per-call CPU and wall of `calls` runs of `run` (each waits for its process).
fn measure(calls: usize, mut run: impl FnMut()) -> (f64, f64) {
    let (cpu0, t0) = (cpu(), Instant::now());
    for _ in 0..calls {
        run();
    }
    let per = |d: Duration| d.as_secs_f64() * 1000.0 / calls as f64;
    (per(cpu() - cpu0), per(t0.elapsed()))
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let calls = args.first().copied().unwrap_or(200);
    let rounds = args.get(1).copied().unwrap_or(5);
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = RuntimeConfig {
        data_dir: tmp.path().join("data"),
        runtime_binary: PathBuf::from("runc"),
        runc_root: tmp.path().join("runc"),
        cgroup_parent: format!("/shoal-exec-bench-{}", std::process::id()),
        shoal_binary: PathBuf::from(env!("CARGO_BIN_EXE_shoal")),
        cni: None,
        host_path_prefixes: Vec::new(),
        limits: shoal::runtime::bundle::NodeLimits {
            pids_limit: Some(shoal::runtime::DEFAULT_POD_PIDS_LIMIT),
            memory_swap_limit: false,
            capability_bound: None,
            deny_privileged: false,
        },
    };
    let rt = Runtime::new(config.clone());
    let key = "bench-exec";
    let meta = PodMeta {
        key: key.into(),
        namespace: "default".into(),
        name: "exec".into(),
        uid: "u-1".into(),
        grace_seconds: 1,
        created_at: chrono::Utc::now(),
        hooks: Vec::new(),
        sidecars: Vec::new(),
        hostname: None,
        subdomain: None,
        host_network: false,
        dns: Default::default(),
    };
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "exec", "namespace": "default", "uid": "u-1"},
        "spec": {"containers": [{"name": "c", "command": ["sleep", "3600"],
            "securityContext": {"runAsUser": 1000,
                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}]}
    }))
    .expect("pod");
    let container = pod.spec.as_ref().expect("spec").containers[0].clone();
    let image = ImageInfo {
        reference: "bench/busybox:1".into(),
        cmd: vec!["sh".into()],
        layers: vec![layer(tmp.path())],
        ..Default::default()
    };
    rt.create_sandbox(&meta, None).expect("sandbox");
    let started = rt
        .start_container(key, &pod, &container, &image, 0)
        .expect("start");
    assert!(
        matches!(started, StartOutcome::Started { .. }),
        "{started:?}"
    );
    let id = shoal::runtime::pods::container_id(key, "c", 0);
    let join = nsexec::read(&config.runc_root, &id).expect("the container is joinable");
    let pid = join.pid.to_string();
    let argv = vec!["true".to_string()];
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let ok = |s: std::process::ExitStatus, what: &str| assert!(s.success(), "{what}: {s}");
    let mut rows: Vec<(&str, Vec<f64>, Vec<f64>)> = Vec::new();
    let attached = nsexec::attached(&config.runc_root, &id).expect("attached");
    for name in ["runc exec", "nsenter -a", "shoal direct", "shoal attached"] {
        let (mut cpu, mut wall) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let (c, w) = match name {
                "runc exec" => measure(calls, || {
                    let s = std::process::Command::new("runc")
                        .arg("--root")
                        .arg(&config.runc_root)
                        .args(["exec", &id, "true"])
                        .status()
                        .expect("runc exec");
                    ok(s, name);
                }),
                "nsenter -a" => measure(calls, || {
                    let s = std::process::Command::new("nsenter")
                        .args(["-t", &pid, "-a", "true"])
                        .status()
                        .expect("nsenter");
                    ok(s, name);
                }),
                "shoal attached" => measure(calls, || {
                    let s = tokio
                        .block_on(async {
                            nsexec::spawn_in(&attached, &argv)
                                .await
                                .expect("spawn")
                                .wait()
                                .await
                        })
                        .expect("attached exec");
                    ok(s, name);
                }),
                _ => measure(calls, || {
                    let s = tokio
                        .block_on(async {
                            nsexec::spawn(&join, &argv)
                                .await
                                .expect("spawn")
                                .wait()
                                .await
                        })
                        .expect("direct exec");
                    ok(s, name);
                }),
            };
            cpu.push(c);
            wall.push(w);
        }
        rows.push((name, cpu, wall));
    }
    let _ = rt.remove_pod(key, Duration::from_secs(5));
    for m in shoal::runtime::runc::cgroup_mounts() {
        let _ = std::fs::remove_dir(m.join(config.cgroup_parent.trim_start_matches('/')));
    }
    println!("| exec path | CPU per call (ms) | wall per call (ms) | 100 probes/s (% of a core) |");
    println!("|---|---|---|---|");
    let mut results = Vec::new();
    for (name, cpu, wall) in rows {
        let (c, w) = (median(cpu), median(wall));
        println!("| {name} | {c:.2} | {w:.2} | {:.1} |", c * 100.0 / 10.0);
        results.push((name, c));
    }
    println!();
    let runc = results[0].1;
    for (name, c) in &results {
        println!(
            "RESULT exec path={} cpu_ms={c:.3} vs_runc={:.3} calls={calls} rounds={rounds}",
            name.replace(' ', "_"),
            c / runc
        );
    }
}
