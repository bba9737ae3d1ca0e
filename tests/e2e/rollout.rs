//! Rolling updates end to end (real agents, runc and kubectl): a rollout from image A to image
//! B never has fewer than `replicas - maxUnavailable` ready pods (sampled every ~200 ms),
//! `rollout status` and `rollout history` work; a rollout to a broken image stalls without
//! taking down the old pods and hits its progress deadline; `rollout undo` recovers; pause,
//! resume and restart.
//!
//! Image A is `shoal.test/busybox:1`; image B is the same image by digest
//! (`shoal.test/busybox@sha256:…`, resolved by manifest digest), so the template differs while
//! every node already has the image; the broken image points at a port nothing listens on.
//! Pods get an exec readinessProbe that passes a second after the container starts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use serde_json::Value;

use super::workloads::apply;
use crate::support::*;

const IMAGE_A: &str = "shoal.test/busybox:1";
const BROKEN: &str = "127.0.0.1:1/e2e/broken:1";
const START: Duration = Duration::from_secs(60);

fn deployment(name: &str, replicas: u32, image: &str, extra_spec: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: {name}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 1
{extra_spec}  template:
    metadata:
      labels:
        app: {name}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: {image}
        command: ["sh", "-c", "sleep 1; touch /tmp/ready; exec sleep 3600"]
        readinessProbe:
          exec:
            command: ["cat", "/tmp/ready"]
          periodSeconds: 1
        resources:
          requests:
            cpu: 10m
            memory: 8Mi
"#
    )
}

/// Image B: image A by its manifest digest.
fn image_b() -> String {
    let (code, body) = curl_api("n1", "GET", "/shoal/v1/images", Some(&admin_token()), None);
    assert_eq!(code, 200, "{body}");
    let list: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let digest = list
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["reference"] == IMAGE_A)
        .and_then(|i| i["digest"].as_str())
        .unwrap_or_else(|| panic!("no {IMAGE_A} on n1: {body}"))
        .to_string();
    format!("shoal.test/busybox@{digest}")
}

/// One pod as the API shows it: (name, image, ready, waiting reason).
fn pods(ctx: &str, app: &str) -> Result<Vec<(String, String, bool, String)>, String> {
    let out = kubectl(
        ctx,
        &["get", "pods", "-l", &format!("app={app}"), "-o", "json"],
    )?;
    let list: Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
    Ok(list["items"]
        .as_array()
        .ok_or("no items")?
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            let ready = p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            let cs = &p["status"]["containerStatuses"][0];
            (
                p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                p["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                ready,
                cs["state"]["waiting"]["reason"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect())
}

fn all_ready(ctx: &str, app: &str, n: usize, image: &str) -> Result<(), String> {
    let pods = pods(ctx, app)?;
    let good = pods.iter().filter(|p| p.1 == image && p.2).count();
    if pods.len() == n && good == n {
        Ok(())
    } else {
        Err(format!("want {n} ready on {image}: {pods:?}"))
    }
}

/// Samples the ready and total pod counts of `app` every ~200 ms until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<(usize, usize)>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(ctx: &str, app: &str) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (ctx, app) = (ctx.to_string(), app.to_string());
        let thread = {
            let (stop, samples) = (stop.clone(), samples.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(p) = pods(&ctx, &app) {
                        let ready = p.iter().filter(|p| p.2).count();
                        samples.lock().unwrap().push((ready, p.len()));
                    }
                    thread::sleep(Duration::from_millis(200));
                }
            })
        };
        Sampler {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    /// Stops; returns (samples, least ready, most pods).
    fn finish(mut self) -> (usize, usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("sampler thread");
        }
        let s = self.samples.lock().unwrap();
        let min_ready = s.iter().map(|s| s.0).min().unwrap_or(0);
        let max_total = s.iter().map(|s| s.1).max().unwrap_or(0);
        (s.len(), min_ready, max_total)
    }
}

fn kubectl_status(ctx: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig())
        .args(["--context", ctx])
        .args(args)
        .output()
        .expect("run kubectl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn rollout_from_a_to_b_keeps_ready_pods_and_records_history() {
    let _tn = Testnet::up(3);
    let b = image_b();
    apply("n1", &deployment("roll", 4, IMAGE_A, ""));
    eventually("4 ready pods on image A", START, || {
        all_ready("n2", "roll", 4, IMAGE_A)
    });
    kubectl_ok(
        "n1",
        &[
            "annotate",
            "deployment/roll",
            "kubernetes.io/change-cause=to image B",
        ],
    );
    let sampler = Sampler::start("n3", "roll");
    kubectl_ok(
        "n1",
        &["set", "image", "deployment/roll", &format!("main={b}")],
    );
    let (ok, out) = kubectl_status(
        "n2",
        &["rollout", "status", "deployment/roll", "--timeout=90s"],
    );
    assert!(ok, "rollout status failed: {out}\n{}", log_tails(40));
    assert!(out.contains("successfully rolled out"), "{out}");
    eventually("4 ready pods on image B", START, || {
        all_ready("n2", "roll", 4, &b)
    });
    let (samples, min_ready, max_total) = sampler.finish();
    assert!(samples >= 5, "only {samples} samples");
    // replicas - maxUnavailable = 3; replicas + maxSurge = 5.
    assert!(
        min_ready >= 3,
        "ready dropped to {min_ready} during the rollout"
    );
    assert!(max_total <= 5, "{max_total} pods at once (maxSurge 1)");

    let history = kubectl_ok("n3", &["rollout", "history", "deployment/roll"]);
    let rows: Vec<Vec<&str>> = history
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(rows.iter().any(|r| r.first() == Some(&"1")), "{history}");
    assert!(
        rows.iter()
            .any(|r| r.first() == Some(&"2") && r[1..].join(" ") == "to image B"),
        "{history}"
    );
    let two = kubectl_ok(
        "n3",
        &["rollout", "history", "deployment/roll", "--revision=2"],
    );
    assert!(two.contains(&b), "{two}");
}

#[test]
fn broken_rollout_stalls_keeps_old_pods_and_undo_recovers() {
    let _tn = Testnet::up(3);
    apply(
        "n1",
        &deployment("stall", 4, IMAGE_A, "  progressDeadlineSeconds: 15\n"),
    );
    eventually("4 ready pods on image A", START, || {
        all_ready("n2", "stall", 4, IMAGE_A)
    });
    let sampler = Sampler::start("n3", "stall");
    kubectl_ok(
        "n1",
        &[
            "set",
            "image",
            "deployment/stall",
            &format!("main={BROKEN}"),
        ],
    );
    let broken = eventually("new pods fail to pull", START, || {
        let p = pods("n2", "stall")?;
        let failing: Vec<_> = p
            .iter()
            .filter(|p| p.1 == BROKEN)
            .filter(|p| p.3 == "ErrImagePull" || p.3 == "ImagePullBackOff")
            .collect();
        if failing.len() == 2 {
            Ok(p.clone())
        } else {
            Err(format!("{p:?}"))
        }
    });
    // The rollout makes no progress: status fails at the deadline.
    let (ok, out) = kubectl_status(
        "n2",
        &["rollout", "status", "deployment/stall", "--timeout=60s"],
    );
    assert!(!ok, "rollout status succeeded on a broken image: {out}");
    assert!(out.contains("exceeded its progress deadline"), "{out}");
    let (samples, min_ready, max_total) = sampler.finish();
    assert!(samples >= 5, "only {samples} samples");
    assert!(min_ready >= 3, "ready dropped to {min_ready}: {broken:?}");
    assert!(max_total <= 5, "{max_total} pods at once");
    let old_ready = pods("n2", "stall")
        .unwrap()
        .iter()
        .filter(|p| p.1 == IMAGE_A && p.2)
        .count();
    assert_eq!(
        old_ready, 3,
        "old pods kept (one given up for maxUnavailable)"
    );

    // Undo: back to image A, the broken pods go.
    let sampler = Sampler::start("n3", "stall");
    kubectl_ok("n1", &["rollout", "undo", "deployment/stall"]);
    let (ok, out) = kubectl_status(
        "n2",
        &["rollout", "status", "deployment/stall", "--timeout=60s"],
    );
    assert!(ok, "rollout status after undo: {out}\n{}", log_tails(40));
    eventually("4 ready on image A, nothing broken", START, || {
        all_ready("n2", "stall", 4, IMAGE_A)
    });
    let (_, min_ready, _) = sampler.finish();
    assert!(
        min_ready >= 3,
        "ready dropped to {min_ready} during the undo"
    );
    let d: Value =
        serde_json::from_str(&kubectl_ok("n1", &["get", "deploy", "stall", "-o", "json"])).unwrap();
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "3"
    );
}

#[test]
fn pause_resume_and_restart() {
    let _tn = Testnet::up(3);
    let b = image_b();
    apply("n1", &deployment("pr", 2, IMAGE_A, ""));
    eventually("2 ready pods", START, || all_ready("n2", "pr", 2, IMAGE_A));
    kubectl_ok("n1", &["rollout", "pause", "deployment/pr"]);
    kubectl_ok(
        "n1",
        &["set", "image", "deployment/pr", &format!("main={b}")],
    );
    kubectl_ok("n1", &["scale", "deployment/pr", "--replicas=3"]);
    // Scaling applies while paused, on the old template; no new ReplicaSet appears.
    eventually("3 ready pods on image A", START, || {
        all_ready("n2", "pr", 3, IMAGE_A)
    });
    always(
        "no new ReplicaSet while paused",
        Duration::from_secs(3),
        || {
            let rs = kubectl("n3", &["get", "rs", "-l", "app=pr", "-o", "name"])?;
            match rs.lines().count() {
                1 => Ok(()),
                n => Err(format!("{n} ReplicaSets: {rs}")),
            }
        },
    );
    let d: Value =
        serde_json::from_str(&kubectl_ok("n1", &["get", "deploy", "pr", "-o", "json"])).unwrap();
    assert_eq!(
        d["status"]["conditions"][1]["reason"], "DeploymentPaused",
        "{}",
        d["status"]
    );

    kubectl_ok("n1", &["rollout", "resume", "deployment/pr"]);
    let (ok, out) = kubectl_status(
        "n2",
        &["rollout", "status", "deployment/pr", "--timeout=60s"],
    );
    assert!(ok, "{out}");
    eventually("3 ready pods on image B", START, || {
        all_ready("n2", "pr", 3, &b)
    });

    let before: Vec<String> = pods("n2", "pr").unwrap().into_iter().map(|p| p.0).collect();
    kubectl_ok("n1", &["rollout", "restart", "deployment/pr"]);
    let (ok, out) = kubectl_status(
        "n2",
        &["rollout", "status", "deployment/pr", "--timeout=60s"],
    );
    assert!(ok, "{out}");
    eventually("3 new ready pods", START, || {
        all_ready("n2", "pr", 3, &b)?;
        let now: Vec<String> = pods("n2", "pr")?.into_iter().map(|p| p.0).collect();
        match now.iter().find(|n| before.contains(n)) {
            Some(old) => Err(format!("{old} survived the restart")),
            None => Ok(()),
        }
    });
}
