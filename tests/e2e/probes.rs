//! Probes, preStop hooks and graceful termination end to end (issue 6), on one testnet node with
//! real runc and kubectl: a failing liveness probe restarts its container within
//! periodSeconds × failureThreshold + 1 s, with back-off on the repeat and the preStop hook
//! before SIGTERM; a readiness flip takes a pod out of its Service's endpoints and back without
//! a restart; a startup probe holds readiness back; a container ignoring SIGTERM is killed
//! after its grace period; a probe on port 70000 is refused by `kubectl apply`. Graceful
//! deletion (issue 17): a deleted pod is listed `Terminating` with its `deletionTimestamp`
//! while its container runs out its grace period, leaves its Service's endpoints at once and
//! is gone afterwards; `--grace-period=1` ends sooner, a second `DELETE` restarts nothing, and
//! `--force --grace-period=0` removes the pod from the API at once. Init containers and a
//! native sidecar (issue 18): they run in order before the app container (each appends to a
//! shared emptyDir, the app checks the order), with their statuses and logs; a failing init
//! container holds the app back and shows `Init:CrashLoopBackOff` / `Init:Error` in `kubectl
//! get pods`; probes on a regular init container are refused.

use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::workloads::apply;
use crate::support::*;

const START: Duration = Duration::from_secs(90);

/// Five pods and a Service, all on n1, applied at once so their timelines overlap.
const PODS: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: live
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: main
    image: shoal.test/busybox:1
    # Healthy for 5 s, then the probe's file goes. TERM is trapped (logged with its time);
    # `wait` on a background sleep lets the trap run at once.
    command: ["sh", "-c", "on_term() { echo term $(date +%s); exit 0; }; trap on_term TERM; touch /tmp/healthy; echo start $(date +%s); sleep 5; rm /tmp/healthy; echo removed $(date +%s); while true; do sleep 1 & wait $!; done"]
    livenessProbe:
      exec:
        command: ["cat", "/tmp/healthy"]
      periodSeconds: 1
      failureThreshold: 3
    lifecycle:
      preStop:
        exec:
          command: ["sh", "-c", "echo prestop $(date +%s) > /proc/1/fd/1"]
---
apiVersion: v1
kind: Pod
metadata:
  name: flip
  labels:
    app: flip
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: shoal.test/busybox:1
    command: ["sh", "-c", "mkdir -p /tmp/www && echo ok > /tmp/www/ready.html && exec httpd -f -p 8080 -h /tmp/www"]
    ports:
    - name: http
      containerPort: 8080
    readinessProbe:
      httpGet:
        path: /ready.html
        port: http
      periodSeconds: 1
      failureThreshold: 1
---
apiVersion: v1
kind: Service
metadata:
  name: flip
spec:
  selector:
    app: flip
  ports:
  - port: 80
    targetPort: 8080
---
apiVersion: v1
kind: Pod
metadata:
  name: slow
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: shoal.test/busybox:1
    command: ["sh", "-c", "sleep 8; touch /tmp/started; echo started $(date +%s); exec sleep 3600"]
    startupProbe:
      exec:
        command: ["cat", "/tmp/started"]
      periodSeconds: 1
      failureThreshold: 60
---
apiVersion: v1
kind: Pod
metadata:
  name: stubborn
spec:
  terminationGracePeriodSeconds: 3
  containers:
  - name: main
    image: shoal.test/busybox:1
    command: ["sh", "-c", "trap '' TERM; while true; do sleep 1; done"]
    livenessProbe:
      tcpSocket:
        port: 9
      initialDelaySeconds: 2
      periodSeconds: 1
      failureThreshold: 1
---
apiVersion: v1
kind: Pod
metadata:
  name: ignore
spec:
  terminationGracePeriodSeconds: 3
  containers:
  - name: main
    image: shoal.test/busybox:1
    command: ["sh", "-c", "trap '' TERM; while true; do sleep 1; done"]
---
apiVersion: v1
kind: Pod
metadata:
  name: grace
  labels:
    app: grace
spec:
  terminationGracePeriodSeconds: 8
  containers:
  - name: main
    image: shoal.test/busybox:1
    # TERM is logged and otherwise ignored: the container runs out its grace period.
    command: ["sh", "-c", "trap 'echo term' TERM; while true; do sleep 1 & wait $!; done"]
    ports:
    - containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: grace
spec:
  selector:
    app: grace
  ports:
  - port: 80
    targetPort: 8080
---
apiVersion: v1
kind: Pod
metadata:
  name: short
spec:
  terminationGracePeriodSeconds: 60
  containers:
  - name: main
    image: shoal.test/busybox:1
    command: ["sh", "-c", "trap 'echo term' TERM; while true; do sleep 1 & wait $!; done"]
---
apiVersion: v1
kind: Pod
metadata:
  name: forced
spec:
  terminationGracePeriodSeconds: 60
  containers:
  - name: main
    image: shoal.test/busybox:1
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1 & wait $!; done"]
---
apiVersion: v1
kind: Pod
metadata:
  name: badport
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: shoal.test/busybox:1
    command: ["sleep", "3600"]
    readinessProbe:
      tcpSocket:
        port: nope
      periodSeconds: 1
"#;

fn pod(name: &str) -> Result<Value, String> {
    let out = kubectl("n1", &["get", "pod", name, "-o", "json"])?;
    serde_json::from_str(&out).map_err(|e| format!("bad JSON: {e}: {out}"))
}

fn time(v: &Value) -> Result<DateTime<Utc>, String> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| format!("not a timestamp: {v}"))
}

fn condition(pod: &Value, kind: &str) -> String {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind)
        .and_then(|c| c["status"].as_str())
        .unwrap_or("")
        .to_string()
}

/// `(reason, message, firstTimestamp)` of the events about `pod`.
fn events(pod: &str) -> Result<Vec<(String, String, String)>, String> {
    let out = kubectl("n1", &["get", "events", "-o", "json"])?;
    let list: Value = serde_json::from_str(&out).map_err(|e| format!("bad JSON: {e}: {out}"))?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["involvedObject"]["name"] == pod)
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
            (s("reason"), s("message"), s("firstTimestamp"))
        })
        .collect())
}

/// The seconds value of the first log line `<word> <seconds>`.
fn logged(log: &str, word: &str) -> Option<i64> {
    log.lines()
        .find_map(|l| l.strip_prefix(&format!("{word} "))?.trim().parse().ok())
}

/// Ready addresses and not-ready addresses of an Endpoints object.
fn endpoints(name: &str) -> Result<(Vec<String>, Vec<String>), String> {
    let out = kubectl("n1", &["get", "endpoints", name, "-o", "json"])?;
    let ep: Value = serde_json::from_str(&out).map_err(|e| format!("bad JSON: {e}: {out}"))?;
    let ips = |k: &str| -> Vec<String> {
        ep["subsets"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s[k].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a["ip"].as_str().map(String::from))
            .collect()
    };
    Ok((ips("addresses"), ips("notReadyAddresses")))
}

fn restarts(p: &Value) -> u64 {
    p["status"]["containerStatuses"][0]["restartCount"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn probes_restart_gate_readiness_and_terminate_gracefully() {
    let _tn = Testnet::up(1);

    // (e) Bad input first: refused with Kubernetes' wording, nothing created.
    let bad = r#"apiVersion: v1
kind: Pod
metadata:
  name: badprobe
spec:
  containers:
  - name: main
    image: shoal.test/busybox:1
    livenessProbe:
      httpGet:
        port: 70000
"#;
    let err = super::workloads::kubectl_stdin("n1", &["apply"], bad)
        .expect_err("a probe on port 70000 must be refused");
    assert!(
        err.contains("spec.containers[0].livenessProbe.httpGet.port: Invalid value: 70000: must be between 1 and 65535, inclusive"),
        "unclear refusal: {err}"
    );
    assert!(kubectl("n1", &["get", "pod", "badprobe"]).is_err());

    apply("n1", PODS);

    // (c) The startup probe holds readiness back while the file is missing (8 s), though the
    // container runs.
    eventually("slow runs, not started, not ready", START, || {
        let p = pod("slow")?;
        let cs = &p["status"]["containerStatuses"][0];
        if cs["state"]["running"].is_null() {
            return Err(format!("not running yet: {cs}"));
        }
        if cs["started"] != false || cs["ready"] != false || condition(&p, "Ready") != "False" {
            return Err(format!(
                "expected started/ready false while starting up: {p}"
            ));
        }
        Ok(())
    });

    // (b) Readiness: ready, in the endpoints; a failing probe takes it out without a restart,
    // a passing one puts it back.
    let ip = eventually("flip is ready with an IP", START, || {
        let p = pod("flip")?;
        if condition(&p, "Ready") != "True" {
            return Err(format!("not ready: {}", p["status"]));
        }
        p["status"]["podIP"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| "no podIP".to_string())
    });
    eventually("flip's IP in its endpoints", REACT, || {
        match endpoints("flip")? {
            (ready, _) if ready == [ip.clone()] => Ok(()),
            other => Err(format!("endpoints {other:?}")),
        }
    });
    kubectl_ok("n1", &["exec", "flip", "--", "rm", "/tmp/www/ready.html"]);
    eventually("flip not ready, out of the ready endpoints", REACT, || {
        let p = pod("flip")?;
        let (ready, not_ready) = endpoints("flip")?;
        if condition(&p, "Ready") == "False" && ready.is_empty() && not_ready == [ip.clone()] {
            Ok(())
        } else {
            Err(format!(
                "Ready {}, endpoints {ready:?} / {not_ready:?}",
                condition(&p, "Ready")
            ))
        }
    });
    let unhealthy = events("flip").unwrap();
    assert!(
        unhealthy.iter().any(|(r, m, _)| r == "Unhealthy"
            && m.starts_with("Readiness probe failed: HTTP probe failed with statuscode: 404")),
        "no Unhealthy event for the failing readiness probe: {unhealthy:?}"
    );
    kubectl_ok(
        "n1",
        &[
            "exec",
            "flip",
            "--",
            "sh",
            "-c",
            "echo ok > /tmp/www/ready.html",
        ],
    );
    eventually(
        "flip ready again, back in the endpoints",
        REACT,
        || match endpoints("flip")? {
            (ready, _) if ready == [ip.clone()] => Ok(()),
            other => Err(format!("endpoints {other:?}")),
        },
    );
    assert_eq!(
        restarts(&pod("flip").unwrap()),
        0,
        "readiness never restarts"
    );

    // (c) continued: ready once the startup probe passes, not before the file exists.
    let p = eventually("slow becomes ready", START, || {
        let p = pod("slow")?;
        if condition(&p, "Ready") == "True" {
            Ok(p)
        } else {
            Err(format!("not ready: {}", p["status"]))
        }
    });
    let cs = &p["status"]["containerStatuses"][0];
    assert_eq!(cs["started"], true);
    assert_eq!(cs["restartCount"], 0);
    let started = logged(&kubectl_ok("n1", &["logs", "slow"]), "started").expect("started line");
    let ready_since = p["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .map(|c| time(&c["lastTransitionTime"]).unwrap())
        .unwrap();
    assert!(
        ready_since.timestamp() >= started,
        "Ready at {ready_since} before the startup file existed ({started})"
    );

    // A named port the container does not define: a clear failure, never ready.
    eventually("badport says why it is not ready", REACT, || {
        let ev = events("badport")?;
        ev.iter()
            .find(|(r, m, _)| r == "Unhealthy" && m.contains("\"nope\" is not a named port"))
            .map(|_| ())
            .ok_or_else(|| format!("events {ev:?}"))
    });
    assert_eq!(condition(&pod("badport").unwrap(), "Ready"), "False");

    // (d) A container ignoring SIGTERM is killed 3 s (its grace period) after its liveness
    // probe failed: exit code 137.
    let p = eventually("stubborn was killed and restarted", START, || {
        let p = pod("stubborn")?;
        let last = &p["status"]["containerStatuses"][0]["lastState"]["terminated"];
        if last.is_null() {
            return Err(format!("not restarted yet: {}", p["status"]));
        }
        Ok(p)
    });
    let last = &p["status"]["containerStatuses"][0]["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 137, "killed with SIGKILL: {last}");
    let ev = events("stubborn").unwrap();
    let killing = ev
        .iter()
        .find(|(r, m, _)| {
            r == "Killing" && m == "Container main failed liveness probe, will be restarted"
        })
        .unwrap_or_else(|| panic!("no Killing event: {ev:?}"));
    assert!(
        ev.iter().any(|(r, m, _)| r == "Unhealthy"
            && m.starts_with("Liveness probe failed: dial tcp ")
            && m.contains(":9: connect:")),
        "no Unhealthy event for the tcpSocket probe: {ev:?}"
    );
    let killed =
        time(&last["finishedAt"]).unwrap() - time(&Value::from(killing.2.clone())).unwrap();
    // The grace period is 3 s; timestamps have 1 s resolution and the SIGKILL comes with the
    // next planning round (1 s tick): 2..=5 s.
    assert!(
        (2..=5).contains(&killed.num_seconds()),
        "SIGKILL {killed} after the Killing event, grace period 3 s"
    );

    // (a) Liveness: restarted within periodSeconds × failureThreshold + 1 s of the first
    // failure, the preStop hook before SIGTERM; then again, with back-off.
    let p = eventually("live restarted once", START, || {
        let p = pod("live")?;
        if restarts(&p) >= 1 {
            Ok(p)
        } else {
            Err(format!("no restart yet: {}", p["status"]))
        }
    });
    let previous = kubectl_ok("n1", &["logs", "live", "--previous"]);
    let removed = logged(&previous, "removed").unwrap_or_else(|| panic!("log: {previous}"));
    let prestop = logged(&previous, "prestop").unwrap_or_else(|| panic!("no preStop: {previous}"));
    let term = logged(&previous, "term").unwrap_or_else(|| panic!("no TERM: {previous}"));
    let order: Vec<&str> = previous
        .lines()
        .filter_map(|l| l.split(' ').next())
        .filter(|w| ["prestop", "term"].contains(w))
        .collect();
    assert_eq!(
        order,
        ["prestop", "term"],
        "preStop runs before SIGTERM: {previous}"
    );
    assert!(prestop <= term);
    // The first failure comes at or after the removal, so bounding from the removal is
    // stricter. 3 × 1 s + 1 s, plus 1 s because both times are whole seconds from `date`.
    assert!(
        term - removed <= 3 + 1 + 1,
        "TERM {term} came {} s after the removal {removed}",
        term - removed
    );
    let first_exit =
        time(&p["status"]["containerStatuses"][0]["lastState"]["terminated"]["finishedAt"]);
    let ev = events("live").unwrap();
    assert!(
        ev.iter()
            .any(|(r, m, _)| r == "Unhealthy" && m.starts_with("Liveness probe failed: ")),
        "{ev:?}"
    );
    assert!(
        ev.iter().any(|(r, m, _)| r == "Killing"
            && m == "Container main failed liveness probe, will be restarted"),
        "{ev:?}"
    );
    // The second failure restarts it again, after a back-off of 10 s.
    let p = eventually("live restarted twice", START, || {
        let p = pod("live")?;
        if restarts(&p) >= 2 && !p["status"]["containerStatuses"][0]["state"]["running"].is_null() {
            Ok(p)
        } else {
            Err(format!("not restarted twice yet: {}", p["status"]))
        }
    });
    let cs = &p["status"]["containerStatuses"][0];
    let second_exit = time(&cs["lastState"]["terminated"]["finishedAt"]).unwrap();
    let third_start = time(&cs["state"]["running"]["startedAt"]).unwrap();
    assert!(first_exit.unwrap() < second_exit);
    assert!(
        (third_start - second_exit).num_seconds() >= 9,
        "back-off: restarted {} s after the second exit",
        (third_start - second_exit).num_seconds()
    );

    // Deleting a pod whose container ignores SIGTERM: it is SIGKILLed after its grace period
    // (3 s), not before, and not much later (the deletion reaches the kubelet within a round,
    // the SIGKILL comes with the round after the grace period: 1 s tick each).
    let p = pod("ignore").unwrap();
    let id = p["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .and_then(|c| c.strip_prefix("runc://"))
        .unwrap_or_else(|| panic!("no containerID: {}", p["status"]))
        .to_string();
    assert!(runc_running(&id), "ignore's container {id} runs");
    let t0 = Instant::now();
    kubectl_ok("n1", &["delete", "pod", "ignore", "--wait=false"]);
    eventually("ignore's container is gone", REACT, || {
        if runc_running(&id) {
            Err("still running".into())
        } else {
            Ok(())
        }
    });
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(2500) && took <= Duration::from_secs(10),
        "stopping ignore took {took:?} with a 3 s grace period"
    );

    deleted_pods_terminate_gracefully();
    init_containers_run_in_order();
}

/// The runc id of the first container of `p`.
fn container_id(p: &Value) -> String {
    p["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .and_then(|c| c.strip_prefix("runc://"))
        .unwrap_or_else(|| panic!("no containerID: {}", p["status"]))
        .to_string()
}

/// Whether pod `name` is gone from the API.
fn gone(name: &str) -> Result<(), String> {
    match kubectl("n1", &["get", "pod", name, "-o", "json"]) {
        Err(e) if e.contains("NotFound") || e.contains("not found") => Ok(()),
        Err(e) => Err(e),
        Ok(out) => Err(format!("{name} still listed: {out}")),
    }
}

/// Graceful deletion (issue 17), with the pods `grace`, `short` and `forced` of [`PODS`].
fn deleted_pods_terminate_gracefully() {
    let ip = eventually("grace runs, in its endpoints", START, || {
        let p = pod("grace")?;
        let ip = p["status"]["podIP"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        match endpoints("grace")? {
            (ready, _) if condition(&p, "Ready") == "True" && ready == [ip.clone()] => Ok(ip),
            other => Err(format!(
                "Ready {}, endpoints {other:?}",
                condition(&p, "Ready")
            )),
        }
    });
    let mut ids = Vec::new();
    for name in ["short", "forced"] {
        ids.push(eventually(&format!("{name} runs"), START, || {
            let p = pod(name)?;
            match p["status"]["containerStatuses"][0]["state"]["running"].is_null() {
                true => Err(format!("not running: {}", p["status"])),
                false => Ok(container_id(&p)),
            }
        }));
    }

    // DELETE answers the pod, now terminating; it stays listed with its deletion marks.
    let started = Instant::now();
    let (code, body) = curl_api(
        "n1",
        "DELETE",
        "/api/v1/namespaces/default/pods/grace",
        Some(&admin_token()),
        None,
    );
    assert_eq!(code, 200, "{body}");
    let reply: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(reply["kind"], "Pod", "{body}");
    assert_eq!(reply["metadata"]["deletionGracePeriodSeconds"], 8, "{body}");
    let since = reply["metadata"]["deletionTimestamp"].clone();
    assert!(time(&since).is_ok(), "{body}");
    // Out of the endpoints at once (the Endpoints object leaves terminating pods out).
    assert_eq!(
        endpoints("grace").unwrap(),
        (vec![], vec![]),
        "{ip} still an endpoint of grace"
    );
    let row = kubectl_ok("n1", &["get", "pod", "grace", "--no-headers"]);
    assert!(row.contains("Terminating"), "{row}");
    // A second DELETE restarts nothing.
    kubectl_ok("n1", &["delete", "pod", "grace", "--wait=false"]);
    let p = pod("grace").unwrap();
    assert_eq!(
        p["metadata"]["deletionTimestamp"], since,
        "{}",
        p["metadata"]
    );
    assert_eq!(p["metadata"]["deletionGracePeriodSeconds"], 8);

    // --grace-period=1: the container gets 1 s instead of its own 60 s.
    let short_started = Instant::now();
    kubectl_ok(
        "n1",
        &["delete", "pod", "short", "--grace-period=1", "--wait=false"],
    );
    let p = pod("short").unwrap();
    assert_eq!(
        p["metadata"]["deletionGracePeriodSeconds"], 1,
        "{}",
        p["metadata"]
    );
    // --force --grace-period=0: out of the API at once; its node stops the container.
    kubectl_ok(
        "n1",
        &["delete", "pod", "forced", "--force", "--grace-period=0"],
    );
    gone("forced").unwrap();
    eventually("forced's container stops", REACT, || {
        match runc_running(&ids[1]) {
            true => Err("still running".to_string()),
            false => Ok(()),
        }
    });

    eventually(
        "short is gone within its 1 s grace",
        Duration::from_secs(20),
        || gone("short"),
    );
    assert!(!runc_running(&ids[0]), "short's container still runs");
    let took = short_started.elapsed();
    assert!(took < Duration::from_secs(20), "short took {took:?}");

    // grace runs out its 8 s (TERM ignored), listed as terminating meanwhile, then goes.
    eventually("grace is gone", START, || gone("grace"));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(6),
        "grace left after {took:?}, before its 8 s grace period"
    );
}

/// Whether runc on n1 runs container `id`.
fn runc_running(id: &str) -> bool {
    let out = Command::new("runc")
        .arg("--root")
        .arg(run_dir().join("n1").join("runc"))
        .args(["state", id])
        .output()
        .expect("run runc state");
    let state: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    state["status"] == "running"
}

/// Two init containers around a sidecar whose startup probe waits for its own line: each
/// appends its name to the shared emptyDir, the app checks the order and then runs beside the
/// sidecar. `init-crash` and `init-never` have an init container that fails.
const INIT_PODS: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: init-order
spec:
  terminationGracePeriodSeconds: 1
  volumes:
  - name: work
    emptyDir: {}
  initContainers:
  - name: first
    image: shoal.test/busybox:1
    command: ["sh", "-c", "echo first | tee -a /work/order"]
    volumeMounts: [{name: work, mountPath: /work}]
  - name: proxy
    image: shoal.test/busybox:1
    restartPolicy: Always
    command: ["sh", "-c", "echo proxy >> /work/order; while true; do sleep 1; done"]
    volumeMounts: [{name: work, mountPath: /work}]
    startupProbe:
      exec:
        command: ["grep", "-q", "proxy", "/work/order"]
      periodSeconds: 1
  - name: second
    image: shoal.test/busybox:1
    command: ["sh", "-c", "echo second | tee -a /work/order"]
    volumeMounts: [{name: work, mountPath: /work}]
  containers:
  - name: app
    image: shoal.test/busybox:1
    command: ["sh", "-c", "echo app >> /work/order; echo order: $(cat /work/order); exec sleep 3600"]
    volumeMounts: [{name: work, mountPath: /work}]
---
apiVersion: v1
kind: Pod
metadata:
  name: init-crash
spec:
  terminationGracePeriodSeconds: 1
  initContainers:
  - name: ok
    image: shoal.test/busybox:1
    command: ["true"]
  - name: broken
    image: shoal.test/busybox:1
    command: ["sh", "-c", "echo broken; exit 3"]
  containers:
  - name: app
    image: shoal.test/busybox:1
    command: ["sleep", "3600"]
---
apiVersion: v1
kind: Pod
metadata:
  name: init-never
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  initContainers:
  - name: broken
    image: shoal.test/busybox:1
    command: ["sh", "-c", "exit 2"]
  containers:
  - name: app
    image: shoal.test/busybox:1
    command: ["sleep", "3600"]
"#;

/// `kubectl get pod <name>`'s STATUS column (the server's Table, as kubectl prints it).
fn status_column(name: &str) -> Result<String, String> {
    let row = kubectl("n1", &["get", "pod", name, "--no-headers"])?;
    row.split_whitespace()
        .nth(2)
        .map(str::to_string)
        .ok_or_else(|| format!("no STATUS column: {row}"))
}

/// The `initContainerStatuses` entry of `container` in `p`.
fn init_status<'a>(p: &'a Value, container: &str) -> &'a Value {
    p["status"]["initContainerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == container)
        .unwrap_or(&Value::Null)
}

/// Init containers and native sidecars (issue 18).
fn init_containers_run_in_order() {
    let bad = r#"apiVersion: v1
kind: Pod
metadata:
  name: badinit
spec:
  initContainers:
  - name: setup
    image: shoal.test/busybox:1
    readinessProbe:
      exec:
        command: ["true"]
  containers:
  - name: main
    image: shoal.test/busybox:1
"#;
    let err = super::workloads::kubectl_stdin("n1", &["apply"], bad)
        .expect_err("a probe on a regular init container must be refused");
    assert!(
        err.contains("spec.initContainers[0].readinessProbe: Forbidden: may not be set for init containers without restartPolicy=Always"),
        "unclear refusal: {err}"
    );
    assert!(kubectl("n1", &["get", "pod", "badinit"]).is_err());

    apply("n1", INIT_PODS);

    // Order: first, the sidecar (started once its startup probe saw its line), second, app.
    let p = eventually("init-order's app runs", START, || {
        let p = pod("init-order")?;
        match p["status"]["containerStatuses"][0]["state"]["running"].is_null() {
            true => Err(format!("app not running: {}", p["status"])),
            false => Ok(p),
        }
    });
    let log = eventually("init-order's app logs the order", START, || {
        let log = kubectl("n1", &["logs", "init-order", "-c", "app"])?;
        log.contains("order:").then_some(log.clone()).ok_or(log)
    });
    assert_eq!(log.trim(), "order: first proxy second app", "{log}");
    assert_eq!(
        kubectl_ok("n1", &["logs", "init-order", "-c", "first"]).trim(),
        "first"
    );
    assert_eq!(
        kubectl_ok("n1", &["logs", "init-order", "-c", "second"]).trim(),
        "second"
    );
    for name in ["first", "second"] {
        let s = init_status(&p, name);
        assert_eq!(s["state"]["terminated"]["exitCode"], 0, "{name}: {s}");
        assert_eq!(
            s["state"]["terminated"]["reason"], "Completed",
            "{name}: {s}"
        );
        assert_eq!(s["ready"], true, "{name}: {s}");
        assert_eq!(s["restartCount"], 0, "{name}: {s}");
    }
    let p = eventually("init-order is ready", START, || {
        let p = pod("init-order")?;
        match condition(&p, "Ready").as_str() {
            "True" => Ok(p),
            _ => Err(format!("not ready: {}", p["status"])),
        }
    });
    let sidecar = init_status(&p, "proxy");
    assert!(sidecar["state"]["running"].is_object(), "{sidecar}");
    assert_eq!(
        (&sidecar["started"], &sidecar["ready"]),
        (&true.into(), &true.into())
    );
    assert_eq!(condition(&p, "Initialized"), "True");
    assert_eq!(p["status"]["phase"], "Running");
    let row = kubectl_ok("n1", &["get", "pod", "init-order", "--no-headers"]);
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1..3], ["2/2", "Running"], "the sidecar counts: {row}");

    // A failing init container is restarted with back-off and holds the app back.
    eventually(
        "init-crash shows Init:CrashLoopBackOff",
        START,
        || match status_column("init-crash")?.as_str() {
            "Init:CrashLoopBackOff" => Ok(()),
            other => Err(other.to_string()),
        },
    );
    let p = pod("init-crash").unwrap();
    let broken = init_status(&p, "broken");
    assert!(broken["restartCount"].as_u64() >= Some(1), "{broken}");
    assert_eq!(broken["lastState"]["terminated"]["exitCode"], 3, "{broken}");
    assert_eq!(init_status(&p, "ok")["state"]["terminated"]["exitCode"], 0);
    let app = &p["status"]["containerStatuses"][0];
    assert_eq!(
        app["state"]["waiting"]["reason"], "PodInitializing",
        "{app}"
    );
    assert_eq!(app["restartCount"], 0, "{app}");
    assert_eq!(p["status"]["phase"], "Pending");
    assert_eq!(condition(&p, "Initialized"), "False");
    assert_eq!(
        kubectl_ok("n1", &["logs", "init-crash", "-c", "broken"]).trim(),
        "broken"
    );

    // Under restartPolicy Never the failure is final: Init:Error, phase Failed, no app.
    let p = eventually(
        "init-never shows Init:Error",
        START,
        || match status_column("init-never")?.as_str() {
            "Init:Error" => Ok(pod("init-never")?),
            other => Err(other.to_string()),
        },
    );
    assert_eq!(p["status"]["phase"], "Failed", "{}", p["status"]);
    let broken = init_status(&p, "broken");
    assert_eq!(broken["state"]["terminated"]["exitCode"], 2, "{broken}");
    assert_eq!(broken["restartCount"], 0, "{broken}");
    let app = &p["status"]["containerStatuses"][0];
    assert_eq!(
        app["state"]["waiting"]["reason"], "PodInitializing",
        "{app}"
    );
    kubectl_ok(
        "n1",
        &[
            "delete",
            "pod",
            "init-order",
            "init-crash",
            "init-never",
            "--wait=false",
        ],
    );
}
