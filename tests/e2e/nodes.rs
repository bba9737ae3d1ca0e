//! Node operations end to end on one testnet, with the real kubectl: `label` / `annotate`
//! node and a nodeSelector that follows the label, `taint` (NoSchedule repels, a toleration
//! admits, removal with `-`; NoExecute evicts), `cordon`, `drain` against a
//! PodDisruptionBudget (refused while it would break the budget, then done, the pods running
//! elsewhere) and `uncordon`; then placement constraints: a topology spread constraint that
//! holds a pod back while a node is cordoned and spreads over all three once it is not, a
//! required node affinity that pins pods to the labelled node, and what is refused (an unknown
//! operator, `--cascade=orphan`).

use std::time::Duration;

use serde_json::Value;

use super::workloads::{apply, kubectl_stdin};
use crate::support::*;

const WAIT: Duration = Duration::from_secs(150);

fn get_json(ctx: &str, args: &[&str]) -> Result<Value, String> {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    let out = kubectl(ctx, &all)?;
    serde_json::from_str(&out).map_err(|e| format!("bad JSON: {e}: {out}"))
}

fn pod(name: &str, spec_extra: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: {name}}}
spec:
  terminationGracePeriodSeconds: 1
{spec_extra}
  containers:
  - name: main
    image: shoal.test/busybox:1
    command: ["sleep", "3600"]
"#
    )
}

/// `(phase, node, ready)` of a pod.
fn pod_state(ctx: &str, name: &str) -> Result<(String, String, bool), String> {
    let p = get_json(ctx, &["pod", name])?;
    let ready = p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    Ok((
        p["status"]["phase"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        p["spec"]["nodeName"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        ready,
    ))
}

fn running_on(ctx: &str, name: &str, node: &str) -> Result<(), String> {
    match pod_state(ctx, name)? {
        (phase, n, true) if phase == "Running" && n == node => Ok(()),
        other => Err(format!("pod {name}: {other:?}, want Running on {node}")),
    }
}

/// Nodes of the Running, ready pods labelled `app=web`, or an error unless there are `n`.
fn web_nodes(ctx: &str, n: usize) -> Result<Vec<String>, String> {
    app_nodes(ctx, "web", n)
}

/// Nodes of the Running, ready pods labelled `app=<app>`, or an error unless there are `n`.
fn app_nodes(ctx: &str, app: &str, n: usize) -> Result<Vec<String>, String> {
    let list = get_json(ctx, &["pods", "-l", &format!("app={app}")])?;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    let mut nodes = Vec::new();
    for p in &items {
        let ready = p["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        if p["status"]["phase"] != "Running" || !ready {
            return Err(format!(
                "{} is {} (ready {ready})",
                p["metadata"]["name"], p["status"]["phase"]
            ));
        }
        nodes.push(
            p["spec"]["nodeName"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    if nodes.len() != n {
        return Err(format!("{} {app} pods, want {n}: {nodes:?}", nodes.len()));
    }
    nodes.sort();
    Ok(nodes)
}

const WEB: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: shoal.test/busybox:1
        command: ["sleep", "3600"]
        volumeMounts: [{name: scratch, mountPath: /scratch}]
      volumes:
      - name: scratch
        emptyDir: {}
"#;

/// Three replicas, at most one more per node than on the emptiest node (hard), and preferably
/// not beside each other.
const SPREAD: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: spread
spec:
  replicas: 3
  selector:
    matchLabels: {app: spread}
  template:
    metadata:
      labels: {app: spread}
    spec:
      terminationGracePeriodSeconds: 1
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule,
         labelSelector: {matchLabels: {app: spread}}}
      affinity:
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            podAffinityTerm:
              topologyKey: kubernetes.io/hostname
              labelSelector: {matchLabels: {app: spread}}
      containers:
      - name: main
        image: shoal.test/busybox:1
        command: ["sleep", "3600"]
"#;

/// Two replicas that must run on a node labelled `disk=ssd` (n3).
const PINNED: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: pinned
spec:
  replicas: 2
  selector:
    matchLabels: {app: pinned}
  template:
    metadata:
      labels: {app: pinned}
    spec:
      terminationGracePeriodSeconds: 1
      affinity:
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms:
            - matchExpressions: [{key: disk, operator: In, values: [ssd]}]
      containers:
      - name: main
        image: shoal.test/busybox:1
        command: ["sleep", "3600"]
"#;

fn budget(min_available: u32) -> String {
    format!(
        r#"apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: web
spec:
  minAvailable: {min_available}
  selector:
    matchLabels: {{app: web}}
"#
    )
}

#[test]
fn labels_taints_cordon_and_drain() {
    let net = Testnet::up(3);
    let ctx = net.nodes[0].as_str();

    // Labels and annotations; a nodeSelector follows the label.
    kubectl_ok(ctx, &["label", "node", "n3", "disk=ssd"]);
    kubectl_ok(ctx, &["annotate", "node", "n3", "team=infra"]);
    let shown = kubectl_ok(ctx, &["get", "node", "n3", "--show-labels"]);
    assert!(shown.contains("disk=ssd"), "{shown}");
    let n3 = get_json("n2", &["node", "n3"]).unwrap();
    assert_eq!(n3["metadata"]["annotations"]["team"], "infra", "{n3}");
    assert_eq!(n3["metadata"]["labels"]["kubernetes.io/hostname"], "n3");
    let refused = kubectl(
        ctx,
        &[
            "label",
            "node",
            "n3",
            "kubernetes.io/hostname=elsewhere",
            "--overwrite",
        ],
    )
    .unwrap_err();
    assert!(refused.contains("set by the node itself"), "{refused}");
    apply(ctx, &pod("picky", "  nodeSelector: {disk: ssd}"));
    eventually("picky runs on the labelled node", WAIT, || {
        running_on(ctx, "picky", "n3")
    });

    // NoSchedule: the taint repels, a toleration admits, removing it lets the pod in.
    kubectl_ok(ctx, &["taint", "nodes", "n2", "dedicated=gpu:NoSchedule"]);
    let n2 = get_json(ctx, &["node", "n2"]).unwrap();
    assert_eq!(n2["spec"]["taints"][0]["key"], "dedicated", "{n2}");
    let bad = kubectl(ctx, &["taint", "nodes", "n2", "other=x:Sometimes"]).unwrap_err();
    assert!(bad.to_lowercase().contains("effect"), "{bad}");
    let pin_n2 = "  nodeSelector: {kubernetes.io/hostname: n2}";
    apply(
        ctx,
        &pod(
            "tolerant",
            &format!("{pin_n2}\n  tolerations:\n  - {{key: dedicated, operator: Equal, value: gpu, effect: NoSchedule}}"),
        ),
    );
    apply(ctx, &pod("repelled", pin_n2));
    eventually("the tolerant pod runs on the tainted node", WAIT, || {
        running_on(ctx, "tolerant", "n2")
    });
    eventually(
        "the other one is unschedulable, naming the taint",
        WAIT,
        || {
            let p = get_json(ctx, &["pod", "repelled"])?;
            let why = p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "PodScheduled")
                .map(|c| c["message"].to_string())
                .unwrap_or_default();
            if why.contains("untolerated taint {dedicated: gpu}") && p["spec"]["nodeName"].is_null()
            {
                Ok(())
            } else {
                Err(format!("repelled: {p}"))
            }
        },
    );
    kubectl_ok(ctx, &["taint", "nodes", "n2", "dedicated=gpu:NoSchedule-"]);
    eventually("without the taint the pod is placed", WAIT, || {
        running_on(ctx, "repelled", "n2")
    });

    // NoExecute: pods that do not tolerate it leave the node.
    kubectl_ok(ctx, &["taint", "nodes", "n3", "maintenance=now:NoExecute"]);
    eventually("the NoExecute taint evicts picky", WAIT, || {
        match kubectl(ctx, &["get", "pod", "picky"]) {
            Err(e) if e.contains("NotFound") || e.contains("not found") => Ok(()),
            other => Err(format!("picky still there: {other:?}")),
        }
    });
    kubectl_ok(ctx, &["taint", "nodes", "n3", "maintenance-"]);
    kubectl_ok(
        ctx,
        // A deleted pod stays Terminating through its grace (busybox's sleep ignores SIGTERM):
        // a short grace, and kubectl waits until both are gone, so the drain below meets only
        // the budget.
        &["delete", "pod", "tolerant", "repelled", "--grace-period=1"],
    );

    // Cordon: the node shows SchedulingDisabled and gets no new pods.
    kubectl_ok(ctx, &["cordon", "n2"]);
    eventually("n2 shows SchedulingDisabled", WAIT, || {
        let rows = nodes_via("n3")?;
        match rows.get("n2") {
            Some(r) if r.status == "Ready,SchedulingDisabled" => Ok(()),
            other => Err(format!("n2: {other:?}")),
        }
    });
    apply(ctx, WEB);
    let nodes = eventually("3 web pods run off the cordoned node", WAIT, || {
        web_nodes(ctx, 3)
    });
    assert!(!nodes.contains(&"n2".to_string()), "{nodes:?}");

    // Uncordon, and make the pods spread over all three nodes.
    kubectl_ok(ctx, &["uncordon", "n2"]);
    let n2 = get_json(ctx, &["node", "n2"]).unwrap();
    assert!(n2["spec"]["unschedulable"].is_null(), "{n2}");
    kubectl_ok(ctx, &["scale", "deployment", "web", "--replicas=4"]);
    let nodes = eventually("a web pod runs on the uncordoned node", WAIT, || {
        let nodes = web_nodes(ctx, 4)?;
        if nodes.contains(&"n2".to_string()) {
            Ok(nodes)
        } else {
            Err(format!("none on n2: {nodes:?}"))
        }
    });
    assert!(nodes.contains(&"n2".to_string()));

    // A budget that allows no disruption: drain refuses to evict (kubectl retries on 429
    // until its timeout) and leaves the pods running.
    apply(ctx, &budget(4));
    eventually("the budget's status is computed", WAIT, || {
        let b = get_json(ctx, &["pdb", "web"])?;
        let s = &b["status"];
        if s["currentHealthy"] == 4 && s["desiredHealthy"] == 4 && s["disruptionsAllowed"] == 0 {
            Ok(())
        } else {
            Err(format!("{s}"))
        }
    });
    let refused = kubectl(
        ctx,
        &[
            "drain",
            "n2",
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=12s",
        ],
    )
    .unwrap_err();
    assert!(
        refused.contains("disruption budget"),
        "drain should be refused by the budget: {refused}"
    );
    let nodes = web_nodes(ctx, 4).unwrap();
    assert!(nodes.contains(&"n2".to_string()), "{nodes:?}");

    // Room for one disruption at a time: the drain completes, the pods run elsewhere.
    apply(ctx, &budget(3));
    let out = kubectl_ok(
        ctx,
        &[
            "drain",
            "n2",
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=150s",
        ],
    );
    assert!(out.contains("drained"), "{out}");
    let nodes = eventually("4 web pods run off the drained node", WAIT, || {
        web_nodes(ctx, 4)
    });
    assert!(!nodes.contains(&"n2".to_string()), "{nodes:?}");
    let rows = nodes_via(ctx).unwrap();
    assert_eq!(rows["n2"].status, "Ready,SchedulingDisabled");

    kubectl_ok(ctx, &["uncordon", "n2"]);
    let rows = nodes_via(ctx).unwrap();
    assert_eq!(rows["n2"].status, "Ready");

    // Topology spread: with n2 cordoned it still counts as a domain (nodeTaintsPolicy Ignore),
    // so n1 and n3 take one pod each and the third waits, saying why; uncordoned, n2 takes it.
    kubectl_ok(ctx, &["cordon", "n2"]);
    apply(ctx, SPREAD);
    eventually("two spread pods run, the third waits for n2", WAIT, || {
        let list = get_json(ctx, &["pods", "-l", "app=spread"])?;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        let waiting: Vec<String> = items
            .iter()
            .filter(|p| p["spec"]["nodeName"].is_null())
            .flat_map(|p| {
                p["status"]["conditions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter(|c| c["type"] == "PodScheduled")
            .map(|c| c["message"].as_str().unwrap_or_default().to_string())
            .collect();
        let mut running: Vec<&str> = items
            .iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .filter_map(|p| p["spec"]["nodeName"].as_str())
            .collect();
        running.sort();
        let want = "0/3 nodes are available: 1 node(s) were unschedulable, 2 node(s) didn't match pod topology spread constraints.";
        match (items.len(), running.as_slice(), waiting.as_slice()) {
            (3, ["n1", "n3"], [why]) if why == want => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    kubectl_ok(ctx, &["uncordon", "n2"]);
    let nodes = eventually("the spread pods run one per node", WAIT, || {
        app_nodes(ctx, "spread", 3)
    });
    assert_eq!(nodes, ["n1", "n2", "n3"]);

    // Required node affinity pins pods to the labelled node.
    apply(ctx, PINNED);
    let nodes = eventually("the pinned pods run on n3", WAIT, || {
        app_nodes(ctx, "pinned", 2)
    });
    assert_eq!(nodes, ["n3", "n3"]);

    // Refused, never ignored: an operator Kubernetes does not know, an orphaning delete.
    let bad = PINNED
        .replace("name: pinned\n", "name: bad\n")
        .replace("operator: In", "operator: Near");
    let refused = kubectl_stdin(ctx, &["apply"], &bad).unwrap_err();
    assert!(
        refused.contains("operator") && refused.contains("not a valid selector operator"),
        "{refused}"
    );
    let refused =
        kubectl(ctx, &["delete", "deployment", "pinned", "--cascade=orphan"]).unwrap_err();
    assert!(refused.contains("propagationPolicy"), "{refused}");
    kubectl_ok(ctx, &["delete", "deployment", "pinned", "spread"]);
    drop(net);
}
