//! Jobs, CronJobs and DaemonSets end to end on one testnet, with the real kubectl and runc:
//! exact completions, Indexed Jobs, backoffLimit, a one-minute CronJob under Forbid and across a
//! leader kill, an Indexed Job across a partition, and DaemonSets that follow a node started
//! later and node labels, with a rolling update kept within maxUnavailable.

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

    // A CronJob of short Jobs, checked at the end across a leader kill.
    apply(
        ctx,
        r#"apiVersion: batch/v1
kind: CronJob
metadata:
  name: beat
spec:
  schedule: "* * * * *"
  concurrencyPolicy: Allow
  successfulJobsHistoryLimit: 50
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          terminationGracePeriodSeconds: 1
          containers:
          - name: main
            image: shoal.test/busybox:1
            command: ["true"]
"#,
    );
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

    // podFailurePolicy: exit code 42 fails the Job at once, whatever its backoffLimit.
    apply(
        ctx,
        &job(
            "fatal",
            "  backoffLimit: 6\n  podFailurePolicy:\n    rules:\n    - action: FailJob\n      onExitCodes:\n        containerName: main\n        operator: In\n        values: [42]",
            "exit 42",
        ),
    );
    // backoffLimitPerIndex 0: index 1 fails for good, the others complete; the Job fails.
    apply(
        ctx,
        &job(
            "per-index",
            "  completions: 3\n  parallelism: 3\n  completionMode: Indexed\n  backoffLimitPerIndex: 0",
            "[ $JOB_COMPLETION_INDEX != 1 ]",
        ),
    );
    wait_for(ctx, "job/fatal", "failed");
    let fatal = get_json(ctx, &["job", "fatal"]).unwrap();
    let condition = fatal["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Failed")
        .cloned()
        .unwrap();
    assert_eq!(condition["reason"], "PodFailurePolicy", "{fatal}");
    assert!(
        condition["message"]
            .as_str()
            .unwrap()
            .contains("failed with exit code 42 matching FailJob rule at index 0"),
        "{condition}"
    );
    assert_eq!(fatal["status"]["failed"], 1, "one pod, no retry: {fatal}");
    wait_for(ctx, "job/per-index", "failed");
    let per_index = get_json(ctx, &["job", "per-index"]).unwrap();
    assert_eq!(per_index["status"]["failedIndexes"], "1", "{per_index}");
    assert_eq!(
        per_index["status"]["completedIndexes"], "0,2",
        "{per_index}"
    );
    let reasons: Vec<&str> = per_index["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["type"] == "Failed")
        .filter_map(|c| c["reason"].as_str())
        .collect();
    assert_eq!(reasons, ["FailedIndexes"], "{per_index}");

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
    // A selector that does not match the template is refused, naming the field.
    let mismatched = r#"{"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "stray"},
        "spec": {"selector": {"matchLabels": {"app": "stray"}},
                 "template": {"metadata": {"labels": {"app": "other"}},
                              "spec": {"containers": [{"name": "main", "image": "shoal.test/busybox:1"}]}}}}"#;
    let err = super::workloads::kubectl_stdin(ctx, &["apply"], mismatched).expect_err("refused");
    assert!(
        err.contains("is invalid") && err.contains("spec.template.metadata.labels"),
        "{err}"
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

    // Rolling updates: with maxUnavailable 1 (the default) at every sample at least 3 of the 4
    // nodes have an available pod (Ready, not terminating); with maxSurge 1 and maxUnavailable
    // 0 all 4 always have one. Every pod ends on the new template.
    let roll = |round: &str, min_available: usize| {
        kubectl_ok(ctx, &["set", "env", "ds/agent", &format!("ROUND={round}")]);
        let rollout = std::thread::spawn({
            let ctx = ctx.to_string();
            move || kubectl(&ctx, &["rollout", "status", "ds/agent", "--timeout=150s"])
        });
        while !rollout.is_finished() {
            let Ok(pods) = get_json(ctx, &["pods", "-l", "app=agent"]) else {
                continue;
            };
            let pods = items(&pods);
            let available: BTreeSet<&str> = pods
                .iter()
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                .filter(|p| {
                    p["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
                .filter_map(|p| p["spec"]["nodeName"].as_str())
                .collect();
            assert!(
                available.len() >= min_available,
                "round {round}: fewer than {min_available} nodes served: {available:?}"
            );
        }
        rollout.join().unwrap().expect("rollout status ds/agent");
        eventually(
            &format!("every daemon pod runs ROUND={round}"),
            Duration::from_secs(60),
            || {
                let pods = items(&get_json(ctx, &["pods", "-l", "app=agent"])?);
                let updated = pods
                    .iter()
                    .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                    .filter(|p| p["spec"]["containers"][0]["env"][0]["value"] == round)
                    .count();
                (updated == 4 && pods.len() == 4)
                    .then_some(())
                    .ok_or(format!("{updated} of {} updated", pods.len()))
            },
        );
    };
    roll("1", 3);
    kubectl_ok(
        ctx,
        &[
            "patch",
            "ds/agent",
            "--type=merge",
            "-p",
            r#"{"spec": {"updateStrategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}}}"#,
        ],
    );
    roll("2", 4);

    // History (ControllerRevisions): the first template and the two rounds are revisions 1-3
    // (the strategy change is not a template change); undo to 1 brings the first template
    // back on every node, as revision 4.
    let history = kubectl_ok(ctx, &["rollout", "history", "ds/agent"]);
    assert_eq!(history_revisions(&history), ["1", "2", "3"], "{history}");
    let shown = kubectl_ok(ctx, &["rollout", "history", "ds/agent", "--revision=3"]);
    assert!(shown.contains("ROUND:") && shown.contains('2'), "{shown}");
    let undone = kubectl_ok(ctx, &["rollout", "undo", "ds/agent", "--to-revision=1"]);
    assert!(undone.contains("rolled back"), "{undone}");
    kubectl_ok(ctx, &["rollout", "status", "ds/agent", "--timeout=150s"]);
    eventually(
        "every daemon pod back at the first template",
        Duration::from_secs(150),
        || {
            let pods = items(&get_json(ctx, &["pods", "-l", "app=agent"])?);
            let first = pods
                .iter()
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                .filter(|p| p["spec"]["containers"][0]["env"].is_null())
                .count();
            (pods.len() == 4 && first == 4).then_some(()).ok_or(format!(
                "{first} of {} pods at the first template",
                pods.len()
            ))
        },
    );
    let history = kubectl_ok(ctx, &["rollout", "history", "ds/agent"]);
    assert_eq!(history_revisions(&history), ["2", "3", "4"], "{history}");
    let table = kubectl_ok(ctx, &["get", "controllerrevisions"]);
    assert!(
        table.contains("daemonset.apps/agent") && table.contains("REVISION"),
        "{table}"
    );

    // A DaemonSet with a nodeSelector follows node labels: a label added gets the node a pod,
    // a label removed takes it away.
    apply(
        ctx,
        r#"apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: edge
spec:
  selector:
    matchLabels:
      app: edge
  template:
    metadata:
      labels:
        app: edge
    spec:
      nodeSelector:
        shoal.test/edge: "yes"
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: shoal.test/busybox:1
        command: ["sh", "-c", "while true; do sleep 1; done"]
"#,
    );
    let edge_nodes = |want: &[&str]| -> Result<(), String> {
        let pods = items(&get_json(ctx, &["pods", "-l", "app=edge"])?);
        let nodes: BTreeSet<&str> = pods
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter_map(|p| p["spec"]["nodeName"].as_str())
            .collect();
        let want: BTreeSet<&str> = want.iter().copied().collect();
        (nodes == want && pods.len() == want.len())
            .then_some(())
            .ok_or(format!("edge pods on {nodes:?} ({} pods)", pods.len()))
    };
    always(
        "no edge pod without the label",
        Duration::from_secs(3),
        || edge_nodes(&[]),
    );
    kubectl_ok(ctx, &["label", "node", "n2", "n3", "shoal.test/edge=yes"]);
    eventually("edge pods on n2 and n3", Duration::from_secs(60), || {
        edge_nodes(&["n2", "n3"])
    });
    kubectl_ok(ctx, &["label", "node", "n2", "shoal.test/edge-"]);
    eventually("the edge pod leaves n2", Duration::from_secs(60), || {
        edge_nodes(&["n3"])
    });

    // An Indexed Job whose pods run across a partition that cuts the leader off: after the
    // heal every index is counted once (docs/workloads.md, "What a partition guarantees").
    apply(
        ctx,
        &job(
            "split",
            "  completions: 4\n  parallelism: 4\n  completionMode: Indexed",
            "sleep 12; echo index=$JOB_COMPLETION_INDEX",
        ),
    );
    eventually(
        "4 pods of job split running",
        Duration::from_secs(60),
        || {
            let pods = items(&get_json(ctx, &["pods", "-l", "job-name=split"])?);
            let running = pods
                .iter()
                .filter(|p| p["status"]["phase"] == "Running")
                .count();
            (running == 4)
                .then_some(())
                .ok_or(format!("{running} running"))
        },
    );
    let all: Vec<String> = ["n1", "n2", "n3", "n4"].map(String::from).to_vec();
    let leader = eventually("one leader", Duration::from_secs(30), || {
        agreed_leader(&all)
    });
    let rest: Vec<&str> = ["n1", "n2", "n3", "n4"]
        .into_iter()
        .filter(|n| *n != leader)
        .collect();
    script("partition.sh", &[&leader, &rest.join(" ")]);
    // Both sides elect a leader of their own; the minority side sees the others dead.
    eventually(
        "a leader on the majority side",
        Duration::from_secs(30),
        || {
            let group: Vec<String> = rest.iter().map(|n| n.to_string()).collect();
            agreed_leader(&group).and_then(|l| {
                (l != leader)
                    .then_some(l)
                    .ok_or("still the old leader".into())
            })
        },
    );
    std::thread::sleep(Duration::from_secs(5));
    script("heal.sh", &[]);
    wait_for(ctx, "job/split", "complete");
    always(
        "job split counts each index once",
        Duration::from_secs(5),
        || {
            let split = get_json(ctx, &["job", "split"])?;
            (split["status"]["succeeded"] == 4 && split["status"]["completedIndexes"] == "0-3")
                .then_some(())
                .ok_or(format!("{}", split["status"]))
        },
    );

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

    // Across a leader kill: the CronJob of short Jobs got its Job for every minute, the first
    // ones from the old leader, the next from the new one.
    kubectl_ok(ctx, &["delete", "cronjob", "tick"]);
    let beat_minutes = |ctx: &str| -> Result<BTreeSet<i64>, String> {
        Ok(items(&get_json(ctx, &["jobs"])?)
            .iter()
            .filter_map(|j| {
                j["metadata"]["name"]
                    .as_str()?
                    .strip_prefix("beat-")?
                    .parse()
                    .ok()
            })
            .collect())
    };
    let first = eventually("beat's first Job", Duration::from_secs(5), || {
        beat_minutes(ctx)?
            .into_iter()
            .next()
            .ok_or_else(|| "no Job yet".to_string())
    });
    let leader = eventually("one leader", Duration::from_secs(30), || {
        agreed_leader(&all)
    });
    let survivor = ["n1", "n2", "n3", "n4"]
        .into_iter()
        .find(|n| *n != leader)
        .unwrap();
    script("kill.sh", &[&leader]);
    let killed_at = chrono::Utc::now().timestamp() / 60;
    let seen = eventually(
        "beat's Job for the minute after the kill",
        Duration::from_secs(180),
        || {
            let minutes = beat_minutes(survivor)?;
            minutes
                .contains(&(killed_at + 1))
                .then_some(minutes.clone())
                .ok_or(format!("{minutes:?}, killed in minute {killed_at}"))
        },
    );
    let expected: BTreeSet<i64> = (first..=killed_at + 1).collect();
    assert!(
        expected.is_subset(&seen),
        "a Job for every minute from {first}: {seen:?}"
    );
    drop(net);
}
