//! Jobs, CronJobs and DaemonSets end to end on one testnet, with the real kubectl and runc:
//! exact completions, Indexed Jobs, backoffLimit, a one-minute CronJob under Forbid, and a
//! DaemonSet that follows a node started later.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::workloads::apply;
use crate::support::*;

fn job(name: &str, spec: &str, command: &str) -> String {
    format!(
        r#"apiVersion: batch/v1
kind: Job
metadata:
  name: {name}
spec:
{spec}
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: shoal.test/busybox:1
        command: ["sh", "-c", {command:?}]
"#
    )
}

fn get_json(ctx: &str, args: &[&str]) -> Result<Value, String> {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    let out = kubectl(ctx, &all)?;
    serde_json::from_str(&out).map_err(|e| format!("bad JSON: {e}: {out}"))
}

fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().cloned().unwrap_or_default()
}

fn wait_for(ctx: &str, what: &str, condition: &str) {
    kubectl_ok(
        ctx,
        &[
            "wait",
            &format!("--for=condition={condition}"),
            what,
            "--timeout=150s",
        ],
    );
}

#[test]
fn jobs_cronjobs_and_daemonsets() {
    let net = Testnet::up(3);
    let ctx = net.nodes[0].as_str();

    // A Job of 5 completions, 2 at a time: exactly 5 succeed, never more than 2 run.
    apply(
        ctx,
        &job(
            "five",
            "  completions: 5\n  parallelism: 2",
            "echo done; sleep 1",
        ),
    );
    // One that always fails: backoffLimit 1 → Failed after 2 pods.
    apply(
        ctx,
        &job("doomed", "  backoffLimit: 1", "echo failing; exit 3"),
    );
    // An Indexed Job: every index once, each told its index.
    apply(
        ctx,
        &job(
            "indexed",
            "  completions: 3\n  parallelism: 3\n  completionMode: Indexed",
            "echo index=$JOB_COMPLETION_INDEX",
        ),
    );
    always(
        "at most 2 pods of job five run",
        Duration::from_secs(4),
        || {
            let pods = get_json(ctx, &["pods", "-l", "job-name=five"])?;
            let running = items(&pods)
                .iter()
                .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
                .count();
            if running > 2 {
                return Err(format!("{running} running"));
            }
            Ok(())
        },
    );
    wait_for(ctx, "job/five", "complete");
    let five = get_json(ctx, &["job", "five"]).unwrap();
    assert_eq!(five["status"]["succeeded"], 5, "{five}");
    let pods = items(&get_json(ctx, &["pods", "-l", "job-name=five"]).unwrap());
    assert_eq!(pods.len(), 5, "one pod per completion");
    assert!(pods.iter().all(|p| p["status"]["phase"] == "Succeeded"));
    let table = kubectl_ok(ctx, &["get", "jobs", "five"]);
    assert!(
        table.contains("Complete") && table.contains("5/5"),
        "kubectl get jobs: {table}"
    );

    wait_for(ctx, "job/indexed", "complete");
    let indexed = get_json(ctx, &["job", "indexed"]).unwrap();
    assert_eq!(indexed["status"]["completedIndexes"], "0-2", "{indexed}");
    let mut seen = BTreeSet::new();
    for p in items(&get_json(ctx, &["pods", "-l", "job-name=indexed"]).unwrap()) {
        let name = p["metadata"]["name"].as_str().unwrap();
        let index = p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
            .as_str()
            .unwrap()
            .to_string();
        let logs = kubectl_ok(ctx, &["logs", name]);
        assert_eq!(logs.trim(), format!("index={index}"), "{name}");
        seen.insert(index);
    }
    assert_eq!(seen.len(), 3, "every index exactly once");

    wait_for(ctx, "job/doomed", "failed");
    let doomed = get_json(ctx, &["job", "doomed"]).unwrap();
    assert_eq!(doomed["status"]["failed"], 2, "{doomed}");
    let failed = doomed["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Failed")
        .cloned()
        .unwrap();
    assert_eq!(failed["reason"], "BackoffLimitExceeded");

    // A DaemonSet: one pod on each node; `rollout status` follows it.
    apply(
        ctx,
        r#"apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
spec:
  selector:
    matchLabels:
      app: agent
  template:
    metadata:
      labels:
        app: agent
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: shoal.test/busybox:1
        command: ["sh", "-c", "while true; do sleep 1; done"]
"#,
    );
    kubectl_ok(ctx, &["rollout", "status", "ds/agent", "--timeout=150s"]);
    let per_node = |want: usize| -> Result<BTreeSet<String>, String> {
        let pods = items(&get_json(ctx, &["pods", "-l", "app=agent"])?);
        let nodes: BTreeSet<String> = pods
            .iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .filter_map(|p| p["spec"]["nodeName"].as_str().map(String::from))
            .collect();
        if pods.len() != want || nodes.len() != want {
            return Err(format!(
                "want {want} pods on {want} nodes: {nodes:?} of {}",
                pods.len()
            ));
        }
        Ok(nodes)
    };
    eventually(
        "a daemon pod on each of 3 nodes",
        Duration::from_secs(60),
        || per_node(3),
    );
    // A fourth node joins later and gets its pod.
    let testnet = repo().join("testnet");
    let out = Command::new("bash")
        .arg("-c")
        .arg("source \"$0/lib.sh\" && write_kubeconfig n1 n2 n3 n4")
        .arg(&testnet)
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    script("start.sh", &["n4"]);
    let nodes = eventually("a daemon pod on n4 too", Duration::from_secs(150), || {
        per_node(4)
    });
    assert!(nodes.contains("n4"));
    let ds = get_json(ctx, &["ds", "agent"]).unwrap();
    assert_eq!(ds["status"]["desiredNumberScheduled"], 4, "{ds}");

    // A CronJob every minute whose Jobs outlast the minute: Forbid keeps one at a time.
    apply(
        ctx,
        r#"apiVersion: batch/v1
kind: CronJob
metadata:
  name: tick
spec:
  schedule: "* * * * *"
  concurrencyPolicy: Forbid
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          terminationGracePeriodSeconds: 1
          containers:
          - name: main
            image: shoal.test/busybox:1
            command: ["sh", "-c", "sleep 70"]
"#,
    );
    let active_jobs = || -> Result<Vec<Value>, String> {
        let jobs = items(&get_json(ctx, &["jobs"])?);
        Ok(jobs
            .into_iter()
            .filter(|j| {
                j["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("tick-"))
            })
            .collect())
    };
    let first = eventually("the CronJob's first Job", Duration::from_secs(75), || {
        let jobs = active_jobs()?;
        jobs.first()
            .cloned()
            .ok_or_else(|| "no Job yet".to_string())
    });
    let name = first["metadata"]["name"].as_str().unwrap().to_string();
    let scheduled = first["metadata"]["annotations"]
        ["batch.kubernetes.io/cronjob-scheduled-timestamp"]
        .as_str()
        .unwrap()
        .to_string();
    let minutes = chrono::DateTime::parse_from_rfc3339(&scheduled)
        .unwrap()
        .timestamp()
        / 60;
    assert_eq!(
        name,
        format!("tick-{minutes}"),
        "the name is the scheduled minute"
    );
    // For the next 80 s (a schedule passes while the first Job runs): never two active.
    always(
        "Forbid: at most one active Job",
        Duration::from_secs(80),
        || {
            let jobs = active_jobs()?;
            let active = jobs
                .iter()
                .filter(|j| {
                    !j["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == "Complete" || c["type"] == "Failed")
                })
                .count();
            if active > 1 {
                return Err(format!("{active} active Jobs"));
            }
            Ok(())
        },
    );
    let second = eventually(
        "a second Job after the first ended",
        Duration::from_secs(60),
        || {
            let jobs = active_jobs()?;
            if jobs.len() >= 2 {
                Ok(jobs)
            } else {
                Err(format!("{} Jobs", jobs.len()))
            }
        },
    );
    assert!(second
        .iter()
        .any(|j| j["metadata"]["name"] == name.as_str()));
    let cj = get_json(ctx, &["cronjob", "tick"]).unwrap();
    assert!(cj["status"]["lastScheduleTime"].is_string(), "{cj}");
    drop(net);
}
