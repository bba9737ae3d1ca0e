//! Pod-CIDR allocation across real agents on loopback (no root needed): agents started at
//! once each claim a distinct node subnet of the cluster CIDR, every agent serves the same
//! `spec.podCIDR`s through the API, and `shoal init` refuses bad settings.

mod loopback;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use loopback::{poll, shoal_bin, Cluster};

/// `kubectl get nodes` through one agent's kubeconfig: node name → `spec.podCIDR`.
fn pod_cidrs(kubeconfig: &Path) -> Option<BTreeMap<String, String>> {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args([
            "get",
            "nodes",
            "-o",
            r#"jsonpath={range .items[*]}{.metadata.name}={.spec.podCIDR}{"\n"}{end}"#,
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .filter(|(_, cidr)| !cidr.is_empty())
            .map(|(n, c)| (n.to_string(), c.to_string()))
            .collect(),
    )
}

/// The log's lines that report a claim, without terminal colours.
fn claim_lines(log: &str) -> Vec<String> {
    log.lines()
        .map(|l| {
            let mut out = String::new();
            let mut rest = l;
            while let Some(i) = rest.find('\u{1b}') {
                out += &rest[..i];
                rest = rest[i..].split_once('m').map_or("", |(_, r)| r);
            }
            out + rest
        })
        .filter(|l| l.contains("pod CIDR claimed"))
        .collect()
}

#[test]
fn agents_started_together_claim_distinct_pod_cidrs() {
    let c = Cluster::start(5);
    let names: BTreeSet<String> = c.nodes.iter().map(|n| n.name.clone()).collect();
    let agreed = poll(
        "every agent shows the same 5 pod CIDRs",
        Duration::from_secs(60),
        || {
            let views: Vec<BTreeMap<String, String>> = c
                .nodes
                .iter()
                .map(|n| pod_cidrs(&n.kubeconfig))
                .collect::<Option<_>>()?;
            let first = views[0].clone();
            (first.keys().cloned().collect::<BTreeSet<_>>() == names
                && views.iter().all(|v| *v == first))
            .then_some(first)
        },
    );
    let distinct: BTreeSet<&String> = agreed.values().collect();
    assert_eq!(distinct.len(), 5, "{agreed:?}");
    for cidr in agreed.values() {
        let (addr, mask) = cidr.split_once('/').unwrap();
        assert_eq!(mask, "24", "{cidr}");
        assert!(
            addr.starts_with("10.244.") && addr.ends_with(".0"),
            "{cidr}"
        );
    }
    // Each agent logged its claim once it held it (a claim lost to a concurrent claimer is
    // logged as a warning, not as claimed).
    for node in &c.nodes {
        let log = c.log(node);
        let claimed = claim_lines(&log);
        let want = format!("cidr={}", agreed[&node.name]);
        assert!(
            !claimed.is_empty() && claimed.iter().all(|l| l.contains(&want)),
            "{}: no {want:?} in {claimed:?}",
            node.name
        );
    }

    // A restarted agent keeps its subnet (same node key, so same record uid and claim).
    let mut c = c;
    c.restart(2);
    let want = format!("pod CIDR claimed cidr={}", agreed["n3"]);
    poll(
        "the restarted n3 holds its old pod CIDR",
        Duration::from_secs(60),
        || {
            let log = c.log(&c.nodes[2]);
            let claimed = claim_lines(&log);
            let now = pod_cidrs(&c.nodes[2].kubeconfig)?;
            (claimed.len() == 2 && claimed.iter().all(|l| l.contains(&want)) && now == agreed)
                .then_some(())
        },
    );
}

#[test]
fn init_refuses_bad_pod_cidr_settings() {
    for (extra, want) in [
        (
            &["--cluster-cidr", "fd00::/48"][..],
            "IPv6 pod networks are not supported yet",
        ),
        (
            &["--cluster-cidr", "10.244.1.0/16"][..],
            "host bits are set",
        ),
        (&["--node-cidr-mask", "16"][..], "/17 to /28"),
        (
            &["--cluster-cidr", "10.0.0.0/8", "--node-cidr-mask", "30"][..],
            "/9 to /28",
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("n1");
        let out = Command::new(shoal_bin())
            .arg("init")
            .arg("--data-dir")
            .arg(&dir)
            .args(["--name", "n1"])
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} was accepted");
        assert!(stderr.contains(want), "{extra:?}: {stderr}");
        assert!(
            !dir.join("cluster.cbor").exists(),
            "{extra:?} left a cluster"
        );
    }
    // Good settings are accepted.
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(shoal_bin())
        .arg("init")
        .arg("--data-dir")
        .arg(tmp.path().join("n1"))
        .args([
            "--name",
            "n1",
            "--cluster-cidr",
            "10.50.0.0/20",
            "--node-cidr-mask",
            "26",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
