//! Seeing the cluster (issue 19), on one 3-node testnet: `kubectl top nodes` and `kubectl top
//! pods --containers` through n1 for pods that run on n2 (relayed, as logs are) show a busy
//! loop using about a core and a pod holding 64 MiB using about that; every node's `/metrics`
//! passes `promtool check metrics`; after `testnet/kill.sh n2`, n1 counts n2's death.

use std::time::Duration;

use serde_json::Value;

use super::workloads::apply;
use crate::metrics::{promtool_check, sample};
use crate::support::*;

const PODS: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: busy
spec:
  nodeName: n2
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: shoal.test/busybox:1
    command: ["sh", "-c", "while :; do :; done"]
---
apiVersion: v1
kind: Pod
metadata:
  name: hold
spec:
  nodeName: n2
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: shoal.test/busybox:1
    # 64 MiB written to a memory-backed emptyDir: charged to the container's memory cgroup.
    command: ["sh", "-c", "dd if=/dev/zero of=/mem/fill bs=1048576 count=64 && sleep 3600"]
    volumeMounts:
    - name: mem
      mountPath: /mem
  volumes:
  - name: mem
    emptyDir:
      medium: Memory
      sizeLimit: 96Mi
"#;

/// `(cpu nanocores, memory bytes)` of the only container of `pod`, through `ctx`.
fn pod_usage(ctx: &str, pod: &str) -> Result<(f64, f64), String> {
    let path = format!("/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/{pod}");
    let out = kubectl(ctx, &["get", "--raw", &path])?;
    let v: Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
    let usage = &v["containers"][0]["usage"];
    let cpu = usage["cpu"]
        .as_str()
        .and_then(|c| c.strip_suffix('n'))
        .and_then(|c| c.parse::<f64>().ok())
        .ok_or_else(|| format!("no cpu: {out}"))?;
    let memory = usage["memory"]
        .as_str()
        .and_then(|m| m.strip_suffix("Ki"))
        .and_then(|m| m.parse::<f64>().ok())
        .ok_or_else(|| format!("no memory: {out}"))?;
    Ok((cpu, memory * 1024.0))
}

#[test]
fn kubectl_top_and_metrics() {
    let tn = Testnet::up(3);
    apply("n1", PODS);
    eventually("busy and hold running on n2", REACT, || {
        let out = kubectl(
            "n1",
            &[
                "get",
                "pods",
                "busy",
                "hold",
                "-o",
                "jsonpath={.items[*].status.phase}",
            ],
        )?;
        (out.split_whitespace().filter(|p| *p == "Running").count() == 2)
            .then_some(())
            .ok_or(out)
    });
    // Two samples (5 s apart) after the memory is written.
    let (busy, hold) = eventually(
        "usage of both pods served through n1",
        Duration::from_secs(60),
        || {
            let busy = pod_usage("n1", "busy")?;
            let hold = pod_usage("n1", "hold")?;
            (hold.1 >= 60.0 * 1048576.0)
                .then_some((busy, hold))
                .ok_or(format!("hold at {} bytes", hold.1))
        },
    );
    // A busy loop is one core less what other processes on this 2-core host take from it (about
    // a core on a quiet host; builds running beside the test take their share).
    eprintln!(
        "busy loop: {:.3} cores; 64 MiB holder: {:.1} MiB",
        busy.0 / 1e9,
        hold.1 / 1048576.0
    );
    assert!(
        (0.2e9..=1.15e9).contains(&busy.0),
        "busy loop at {} nanocores",
        busy.0
    );
    assert!(busy.1 < 16.0 * 1048576.0, "busy loop memory {}", busy.1);
    assert!(
        (60.0 * 1048576.0..=80.0 * 1048576.0).contains(&hold.1),
        "64 MiB holder at {} bytes",
        hold.1
    );
    assert!(hold.0 < 0.2e9, "64 MiB holder at {} nanocores", hold.0);

    // What kubectl top prints, through n3.
    let nodes = kubectl_ok("n3", &["top", "nodes", "--no-headers"]);
    for node in &tn.nodes {
        assert!(
            nodes
                .lines()
                .any(|l| l.split_whitespace().next() == Some(node.as_str())),
            "{node} missing from kubectl top nodes:\n{nodes}"
        );
    }
    let pods = kubectl_ok("n3", &["top", "pods", "--containers", "--no-headers"]);
    let row: Vec<&str> = pods
        .lines()
        .find(|l| l.starts_with("busy"))
        .unwrap_or_else(|| panic!("no busy row:\n{pods}"))
        .split_whitespace()
        .collect();
    assert_eq!(row[1], "main", "{pods}");
    let millicores: f64 = row[2].trim_end_matches('m').parse().expect("CPU(cores)");
    assert!((200.0..=1150.0).contains(&millicores), "{pods}");
    let hold_row = pods
        .lines()
        .find(|l| l.starts_with("hold"))
        .unwrap_or_else(|| panic!("no hold row:\n{pods}"));
    let mib: f64 = hold_row
        .split_whitespace()
        .nth(3)
        .and_then(|m| m.trim_end_matches("Mi").parse().ok())
        .expect("MEMORY(bytes)");
    assert!((60.0..=80.0).contains(&mib), "{pods}");

    // Every node's /metrics is well-formed.
    let token = admin_token();
    for node in &tn.nodes {
        let (code, text) = curl_api(node, "GET", "/metrics", Some(&token), None);
        assert_eq!(code, 200, "{node}: {text}");
        promtool_check(&format!("{node}'s /metrics"), &text);
        assert_eq!(
            sample(&text, "shoal_membership_members{state=\"alive\"}"),
            Some(3.0),
            "{node}"
        );
    }

    // n2 dies: n1 counts a death and sees one dead member.
    script("kill.sh", &["n2"]);
    eventually("n1 counts n2's death", REACT, || {
        let (_, text) = curl_api("n1", "GET", "/metrics", Some(&token), None);
        let deaths = sample(&text, "shoal_membership_deaths_total").unwrap_or(0.0);
        let dead = sample(&text, "shoal_membership_members{state=\"dead\"}").unwrap_or(0.0);
        (deaths >= 1.0 && dead == 1.0)
            .then_some(())
            .ok_or(format!("deaths {deaths}, dead {dead}"))
    });
}
