//! ConfigMaps, Secrets and volumes end to end (issue 6), with the real kubectl and runc: values
//! reach a pod as env and as files (items, modes, subPath, read-only), a ConfigMap update
//! reaches the mounted file, a missing key makes the container wait with
//! `CreateContainerConfigError` until the object exists, `optional` starts without it,
//! emptyDir `Memory` is a tmpfs, hostPath follows the node's `--allow-host-path`, a Secret over
//! 1 MiB is refused, and a Secret's value is nowhere on the nodes' disks, in a backup or in the
//! agents' logs. Also what kubectl's typed verbs send in protobuf: `kubectl create deployment`,
//! `create job` and `--dry-run=server`. On the same testnet, the pod spec's network options
//! (issue 18, [`pod_network_options`]): a downwardAPI volume (refreshed on a label change),
//! `dnsPolicy: None` with `dnsConfig`, a `hostNetwork` pod and a `hostPort`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use serde_json::Value;

use super::workloads::apply;
use crate::support::*;

const START: Duration = Duration::from_secs(60);
/// The host dir the testnet's agents allow hostPath volumes under.
const HOST_DIR: &str = "/tmp/shoal-e2e-hostpath";

fn pod_json(ctx: &str, name: &str) -> Result<Value, String> {
    let out = kubectl(ctx, &["get", "pod", name, "-o", "json"])?;
    serde_json::from_str(&out).map_err(|e| e.to_string())
}

fn wait_running(name: &str) {
    eventually(&format!("pod {name} Running"), START, || {
        let p = pod_json("n1", name)?;
        let phase = p["status"]["phase"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        (phase == "Running")
            .then_some(())
            .ok_or(format!("{phase}: {}", p["status"]))
    });
}

/// `kubectl exec POD -- sh -c SCRIPT`: stdout, or the error with stderr.
fn sh(pod: &str, script: &str) -> Result<String, String> {
    kubectl("n1", &["exec", pod, "--", "sh", "-c", script]).map(|s| s.trim().to_string())
}

fn sh_ok(pod: &str, script: &str) -> String {
    sh(pod, script).unwrap_or_else(|e| panic!("{script}: {e}"))
}

/// The waiting state of a pod's first container.
fn waiting(name: &str) -> Result<(String, String), String> {
    let p = pod_json("n1", name)?;
    let w = &p["status"]["containerStatuses"][0]["state"]["waiting"];
    Ok((
        w["reason"].as_str().unwrap_or_default().to_string(),
        w["message"].as_str().unwrap_or_default().to_string(),
    ))
}

fn events_of(name: &str) -> String {
    kubectl(
        "n1",
        &[
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={name}"),
            "-o",
            "json",
        ],
    )
    .unwrap_or_default()
}

/// Files under `dir` (not crossing into other filesystems: tmpfs mounts are memory) whose
/// bytes contain any of `needles`.
fn files_containing(dir: &Path, needles: &[&[u8]]) -> Vec<PathBuf> {
    let dev = std::fs::metadata(dir).map(|m| m.dev()).unwrap_or(0);
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            if meta.dev() != dev {
                continue;
            }
            if meta.is_dir() {
                stack.push(e.path());
            } else if meta.is_file() {
                let bytes = std::fs::read(e.path()).unwrap_or_default();
                if needles
                    .iter()
                    .any(|n| bytes.windows(n.len()).any(|w| w == *n))
                {
                    found.push(e.path());
                }
            }
        }
    }
    found
}

fn pod_manifest() -> String {
    format!(
        r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "consumer", "labels": {{"app": "c"}}}},
  "spec": {{"nodeName": "n1", "terminationGracePeriodSeconds": 1,
    "containers": [{{"name": "main", "image": "shoal.test/busybox:1",
      "command": ["sh", "-c", "sleep 3600"],
      "envFrom": [{{"configMapRef": {{"name": "app-config"}}, "prefix": "CFG_"}}],
      "env": [
        {{"name": "MODE", "valueFrom": {{"configMapKeyRef": {{"name": "app-config", "key": "mode"}}}}}},
        {{"name": "PW", "valueFrom": {{"secretKeyRef": {{"name": "db", "key": "password"}}}}}},
        {{"name": "NOPE", "valueFrom": {{"secretKeyRef": {{"name": "absent", "key": "k", "optional": true}}}}}},
        {{"name": "POD", "valueFrom": {{"fieldRef": {{"fieldPath": "metadata.name"}}}}}},
        {{"name": "APP", "valueFrom": {{"fieldRef": {{"fieldPath": "metadata.labels['app']"}}}}}},
        {{"name": "NODE", "valueFrom": {{"fieldRef": {{"fieldPath": "spec.nodeName"}}}}}},
        {{"name": "COMBINED", "value": "$(MODE)-$(POD)"}}
      ],
      "volumeMounts": [
        {{"name": "cfg", "mountPath": "/cfg"}},
        {{"name": "items", "mountPath": "/items"}},
        {{"name": "sec", "mountPath": "/sec"}},
        {{"name": "mem", "mountPath": "/mem"}},
        {{"name": "host", "mountPath": "/host"}},
        {{"name": "host", "mountPath": "/host-ro", "readOnly": true}},
        {{"name": "cfg", "mountPath": "/etc/app.conf", "subPath": "app.conf"}}
      ]}}],
    "volumes": [
      {{"name": "cfg", "configMap": {{"name": "app-config"}}}},
      {{"name": "items", "configMap": {{"name": "app-config", "items": [{{"key": "mode", "path": "conf/mode", "mode": 256}}]}}}},
      {{"name": "sec", "secret": {{"secretName": "db", "defaultMode": 256}}}},
      {{"name": "mem", "emptyDir": {{"medium": "Memory", "sizeLimit": "8Mi"}}}},
      {{"name": "host", "hostPath": {{"path": "{HOST_DIR}/data", "type": "DirectoryOrCreate"}}}}
    ]}}}}"#
    )
}

#[test]
fn configmaps_and_secrets_reach_pods_and_secrets_stay_sealed() {
    let _ = std::fs::remove_dir_all(HOST_DIR);
    std::fs::create_dir_all(HOST_DIR).unwrap();
    let _tn = Testnet::up_with(2, &[("SHOAL_ALLOW_HOST_PATHS", HOST_DIR)]);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let secret_marker = format!("s3cr3t-{stamp:x}");
    let config_marker = format!("plain-{stamp:x}");
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("app.conf");
    std::fs::write(&conf, format!("setting = {config_marker}\n")).unwrap();

    kubectl_ok(
        "n1",
        &[
            "create",
            "configmap",
            "app-config",
            "--from-literal=mode=fast",
            &format!("--from-file=app.conf={}", conf.display()),
        ],
    );
    kubectl_ok(
        "n1",
        &[
            "create",
            "secret",
            "generic",
            "db",
            &format!("--from-literal=password={secret_marker}"),
        ],
    );
    // kubectl's typed verbs send protobuf (issue 17): a Deployment, a Job and a server dry run.
    kubectl_ok(
        "n2",
        &[
            "create",
            "deployment",
            "web",
            "--image=shoal.test/busybox:1",
            "--",
            "sleep",
            "3600",
        ],
    );
    kubectl_ok(
        "n1",
        &[
            "create",
            "job",
            "once",
            "--image=shoal.test/busybox:1",
            "--",
            "sh",
            "-c",
            "exit 0",
        ],
    );
    let dry = kubectl_ok(
        "n1",
        &[
            "create",
            "deployment",
            "dry",
            "--dry-run=server",
            "--image=shoal.test/busybox:1",
        ],
    );
    assert!(
        dry.contains("deployment.apps/dry created (server dry run)"),
        "{dry}"
    );
    // Every API read shows the plain object.
    let got = kubectl_ok(
        "n2",
        &["get", "secret", "db", "-o", "jsonpath={.data.password}"],
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(&secret_marker);
    assert_eq!(got.trim(), b64);

    apply("n1", &pod_manifest());
    wait_running("consumer");

    // Env: configMapKeyRef, secretKeyRef, optional missing, fieldRef, envFrom with prefix,
    // $(VAR) expansion of a literal.
    let env = sh_ok(
        "consumer",
        "echo $MODE $PW $POD $APP $NODE $CFG_mode $COMBINED ${NOPE-unset}",
    );
    assert_eq!(
        env,
        format!("fast {secret_marker} consumer c n1 fast fast-consumer unset")
    );
    // Files: all keys, items with a path and mode, a Secret with defaultMode, subPath.
    assert_eq!(sh_ok("consumer", "cat /cfg/mode"), "fast");
    assert_eq!(
        sh_ok("consumer", "cat /etc/app.conf"),
        format!("setting = {config_marker}")
    );
    assert_eq!(
        sh_ok(
            "consumer",
            "cat /items/conf/mode; echo; stat -L -c %a /items/conf/mode"
        ),
        "fast\n400"
    );
    assert_eq!(
        sh_ok(
            "consumer",
            "cat /sec/password; echo; stat -L -c %a /sec/password"
        ),
        format!("{secret_marker}\n400")
    );
    // configMap volumes are read-only; a readOnly mount refuses writes; hostPath writes land
    // on the host.
    let refused = sh("consumer", "echo x > /cfg/new").unwrap_err();
    assert!(refused.contains("Read-only file system"), "{refused}");
    sh_ok("consumer", "echo from-pod > /host/f");
    assert_eq!(
        std::fs::read_to_string(format!("{HOST_DIR}/data/f")).unwrap(),
        "from-pod\n"
    );
    let refused = sh("consumer", "echo x > /host-ro/g").unwrap_err();
    assert!(refused.contains("Read-only file system"), "{refused}");
    // emptyDir Memory and the Secret volume are tmpfs mounts.
    let mounts = sh_ok("consumer", "grep -E ' /(mem|sec) ' /proc/mounts");
    assert!(
        mounts.lines().filter(|l| l.contains("tmpfs")).count() == 2,
        "{mounts}"
    );
    assert!(
        mounts.contains("size=8192k"),
        "sizeLimit is the tmpfs size: {mounts}"
    );

    // An update reaches the mounted file (not the subPath mount, as in Kubernetes).
    kubectl_ok(
        "n1",
        &[
            "patch",
            "configmap",
            "app-config",
            "-p",
            &format!(r#"{{"data": {{"mode": "slow", "app.conf": "updated-{stamp:x}"}}}}"#),
        ],
    );
    eventually("the update reaches /cfg/mode", START, || {
        let m = sh("consumer", "cat /cfg/mode; echo; cat /items/conf/mode")?;
        (m == "slow\nslow").then_some(()).ok_or(m)
    });
    assert_eq!(
        sh_ok("consumer", "cat /etc/app.conf"),
        format!("setting = {config_marker}")
    );

    // A missing ConfigMap: CreateContainerConfigError with Kubernetes' message and a Failed
    // event; the pod starts once the ConfigMap exists.
    apply(
        "n1",
        r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "waiter"},
          "spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "shoal.test/busybox:1",
              "command": ["sh", "-c", "echo got $K; sleep 3600"],
              "env": [{"name": "K", "valueFrom": {"configMapKeyRef": {"name": "later", "key": "k"}}}]}]}}"#,
    );
    eventually("waiter waits on its ConfigMap", START, || {
        let w = waiting("waiter")?;
        (w == (
            "CreateContainerConfigError".to_string(),
            "configmap \"later\" not found".to_string(),
        ))
            .then_some(())
            .ok_or(format!("{w:?}"))
    });
    eventually("a Failed event says why", START, || {
        let e = events_of("waiter");
        e.contains(r#"Error: configmap \"later\" not found"#)
            .then_some(())
            .ok_or(e)
    });
    // The ConfigMap without the key: the message names the key.
    create_configmap_ok("n1", "later", &[("other", "x")]);
    eventually("waiter names the missing key", START, || {
        let (_, m) = waiting("waiter")?;
        (m == "couldn't find key k in ConfigMap default/later")
            .then_some(())
            .ok_or(m)
    });
    kubectl_ok(
        "n1",
        &[
            "patch",
            "configmap",
            "later",
            "-p",
            r#"{"data": {"k": "v"}}"#,
        ],
    );
    wait_running("waiter");
    assert_eq!(sh_ok("waiter", "echo $K"), "v");

    // hostPath outside the node's policy: the container waits, the message names the flag.
    apply(
        "n1",
        r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "badhost"},
          "spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "shoal.test/busybox:1",
              "command": ["sleep", "3600"], "volumeMounts": [{"name": "h", "mountPath": "/h"}]}],
            "volumes": [{"name": "h", "hostPath": {"path": "/etc"}}]}}"#,
    );
    eventually("badhost is refused its hostPath", START, || {
        let (r, m) = waiting("badhost")?;
        (r == "CreateContainerConfigError"
            && m.contains("\"/etc\" is not allowed")
            && m.contains("--allow-host-path"))
        .then_some(())
        .ok_or(format!("{r}: {m}"))
    });

    // A Secret over 1 MiB is refused with a 422 naming the limit.
    let big = tmp.path().join("big");
    std::fs::write(&big, vec![b'x'; 1024 * 1024 + 1]).unwrap();
    let err = kubectl(
        "n1",
        &[
            "create",
            "secret",
            "generic",
            "big",
            &format!("--from-file=blob={}", big.display()),
        ],
    )
    .unwrap_err();
    assert!(
        err.contains("Too long: must have at most 1048576 bytes"),
        "{err}"
    );

    // The Secret's value is in no node's data dir, runc state, log or backup (only in the pod's
    // tmpfs); the ConfigMap's value is, which shows the search would find a plain value.
    let backup = tmp.path().join("cluster.backup");
    let out = Command::new(shoal_bin())
        .args(["backup", "--output"])
        .arg(&backup)
        .arg("--kubeconfig")
        .arg(kubeconfig())
        .args(["--context", "n2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let secret_needles: [&[u8]; 2] = [secret_marker.as_bytes(), b64.as_bytes()];
    for node in ["n1", "n2"] {
        let dir = run_dir().join(node);
        let leaks = files_containing(&dir, &secret_needles);
        assert!(leaks.is_empty(), "the Secret's value is on disk: {leaks:?}");
    }
    // The pod's files are on disk for a ConfigMap (the search sees plain values there).
    assert!(
        !files_containing(
            &run_dir().join("n1"),
            &[format!("updated-{stamp:x}").as_bytes()]
        )
        .is_empty(),
        "the ConfigMap's volume file should be found on n1 (search sanity)"
    );
    let bytes = std::fs::read(&backup).unwrap();
    assert!(!secret_needles
        .iter()
        .any(|n| bytes.windows(n.len()).any(|w| w == *n)));
    // The backup's document, decoded (automerge compresses columns, so a byte search alone
    // proves little): the Secret is stored sealed, the ConfigMap plain.
    #[derive(serde::Deserialize)]
    struct BackupFile {
        #[serde(with = "serde_bytes")]
        document: Vec<u8>,
    }
    let file: BackupFile = cbor4ii::serde::from_slice(&bytes).unwrap();
    let doc = shoal::state::ClusterDoc::load(&file.document, automerge::ActorId::random()).unwrap();
    let stored = doc
        .get_object("secrets", Some("default"), "db")
        .unwrap()
        .expect("the Secret is in the backup");
    let text = stored.to_string();
    assert!(
        stored.get("data").is_none() && stored["sealed"].is_string(),
        "{text}"
    );
    assert!(!secret_needles
        .iter()
        .any(|n| text.contains(std::str::from_utf8(n).unwrap())));
    assert_eq!(stored["metadata"]["name"], "db");
    let cm = doc
        .get_object("configmaps", Some("default"), "app-config")
        .unwrap()
        .expect("the ConfigMap is in the backup");
    assert_eq!(cm["data"]["mode"], "slow", "ConfigMaps stay plain: {cm}");

    // The objects kubectl sent in protobuf run; the server dry run stored nothing.
    kubectl_ok(
        "n1",
        &["rollout", "status", "deployment/web", "--timeout=120s"],
    );
    kubectl_ok(
        "n2",
        &[
            "wait",
            "--for=condition=complete",
            "job/once",
            "--timeout=120s",
        ],
    );
    let err = kubectl("n2", &["get", "deployment", "dry"]).unwrap_err();
    assert!(err.contains("not found"), "{err}");

    pod_network_options();
}

/// `curl http://ADDR/` from node `node`'s network namespace (another host's view).
fn curl_from(node: &str, addr: &str) -> Result<String, String> {
    let out = Command::new("ip")
        .args(["netns", "exec", &format!("shoal-{node}")])
        .args(["curl", "-sS", "--max-time", "5", &format!("http://{addr}/")])
        .output()
        .map_err(|e| e.to_string())?;
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

/// A busybox httpd serving `text` on `port`.
fn httpd(text: &str, port: u16) -> String {
    format!(
        r#""command": ["sh", "-c", "mkdir -p /tmp/www && echo {text} > /tmp/www/index.html && exec httpd -f -p {port} -h /tmp/www"]"#
    )
}

/// Issue 18's pod network options, with the real kubectl and runc.
fn pod_network_options() {
    let n1 = node_ip("n1");
    // A downwardAPI volume: single fields, the whole labels map (sorted, quoted), a label by
    // key, a resource limit; then a label change reaches the file.
    apply(
        "n1",
        r#"{"apiVersion": "v1", "kind": "Pod",
          "metadata": {"name": "downward", "labels": {"tier": "front", "app": "dw"}},
          "spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "shoal.test/busybox:1",
              "command": ["sleep", "3600"], "resources": {"limits": {"memory": "64Mi"}},
              "volumeMounts": [{"name": "info", "mountPath": "/etc/info"}]}],
            "volumes": [{"name": "info", "downwardAPI": {"items": [
              {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
              {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
              {"path": "tier", "fieldRef": {"fieldPath": "metadata.labels['tier']"}},
              {"path": "mem", "resourceFieldRef": {"containerName": "main",
                "resource": "limits.memory", "divisor": "1Mi"}}]}}]}}"#,
    );
    // dnsPolicy None: exactly dnsConfig's resolv.conf.
    apply(
        "n1",
        r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "dnsnone"},
          "spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 1, "dnsPolicy": "None",
            "dnsConfig": {"nameservers": ["192.0.2.53"], "searches": ["corp.example"],
              "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]},
            "containers": [{"name": "main", "image": "shoal.test/busybox:1",
              "command": ["sleep", "3600"]}]}}"#,
    );
    // hostNetwork: the node's interfaces and address, reachable on the node's IP.
    apply(
        "n1",
        &format!(
            r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "hostnet", "labels": {{"app": "hostnet"}}}},
              "spec": {{"nodeName": "n1", "terminationGracePeriodSeconds": 1, "hostNetwork": true,
                "containers": [{{"name": "main", "image": "shoal.test/busybox:1", {},
                  "ports": [{{"containerPort": 18080}}]}}]}}}}"#,
            httpd("on-the-host", 18080)
        ),
    );
    apply(
        "n1",
        r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "hostnet"},
          "spec": {"selector": {"app": "hostnet"}, "ports": [{"port": 80, "targetPort": 18080}]}}"#,
    );
    // hostPort through the scheduler (pinned to n1 by its hostname label), and a second pod
    // wanting the same port there.
    let pinned = |name: &str, text: &str| {
        format!(
            r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "{name}"}},
              "spec": {{"nodeSelector": {{"kubernetes.io/hostname": "n1"}}, "terminationGracePeriodSeconds": 1,
                "containers": [{{"name": "main", "image": "shoal.test/busybox:1", {},
                  "ports": [{{"containerPort": 80, "hostPort": 18081}}]}}]}}}}"#,
            httpd(text, 80)
        )
    };
    apply("n1", &pinned("hp1", "via-host-port"));
    wait_running("hp1");
    apply("n1", &pinned("hp2", "second-pod"));
    for name in ["downward", "dnsnone", "hostnet"] {
        wait_running(name);
    }

    assert_eq!(sh_ok("downward", "cat /etc/info/name"), "downward");
    assert_eq!(
        sh_ok("downward", "cat /etc/info/labels"),
        "app=\"dw\"\ntier=\"front\""
    );
    assert_eq!(
        sh_ok("downward", "cat /etc/info/tier; echo; cat /etc/info/mem"),
        "front\n64"
    );
    kubectl_ok(
        "n1",
        &["label", "pod", "downward", "tier=back", "--overwrite"],
    );
    eventually(
        "the label change reaches the downwardAPI files",
        START,
        || {
            let got = sh("downward", "cat /etc/info/tier; echo; cat /etc/info/labels")?;
            (got == "back\napp=\"dw\"\ntier=\"back\"")
                .then_some(())
                .ok_or(got)
        },
    );

    assert_eq!(
        sh_ok("dnsnone", "cat /etc/resolv.conf"),
        "nameserver 192.0.2.53\nsearch corp.example\noptions edns0 ndots:2"
    );
    let err = kubectl(
        "n1",
        &[
            "run",
            "nodns",
            "--image=shoal.test/busybox:1",
            "--overrides",
            r#"{"spec": {"dnsPolicy": "None"}}"#,
        ],
    )
    .unwrap_err();
    assert!(err.contains("spec.dnsConfig: Required value"), "{err}");

    let hostnet = pod_json("n1", "hostnet").unwrap();
    assert_eq!(
        hostnet["status"]["podIP"],
        n1.as_str(),
        "{}",
        hostnet["status"]
    );
    assert_eq!(
        hostnet["spec"]["containers"][0]["ports"][0]["hostPort"],
        18080
    );
    let addrs = sh_ok("hostnet", "ip -4 addr");
    assert!(
        addrs.contains(&format!("inet {n1}/")),
        "the node's address: {addrs}"
    );
    assert!(addrs.contains("shoal0"), "the node's bridge: {addrs}");
    eventually(
        "the hostNetwork pod answers on the node's IP",
        START,
        || {
            let got = curl_from("n2", &format!("{n1}:18080"))?;
            (got == "on-the-host").then_some(()).ok_or(got)
        },
    );
    eventually("the Service's endpoint is the node's IP", START, || {
        let ep = kubectl(
            "n1",
            &[
                "get",
                "endpoints",
                "hostnet",
                "-o",
                "jsonpath={.subsets[0].addresses[0].ip}:{.subsets[0].ports[0].port}",
            ],
        )?;
        (ep == format!("{n1}:18080")).then_some(()).ok_or(ep)
    });
    // ClusterFirst on the host network is the node's own resolv.conf (Default).
    let resolv = sh_ok("hostnet", "cat /etc/resolv.conf");
    assert!(!resolv.contains("svc.cluster.local"), "{resolv}");

    eventually(
        "<node ip>:hostPort reaches the pod from another node",
        START,
        || {
            let got = curl_from("n2", &format!("{n1}:18081"))?;
            (got == "via-host-port").then_some(()).ok_or(got)
        },
    );
    eventually(
        "the second pod on the same hostPort stays Pending, saying why",
        START,
        || {
            let p = pod_json("n1", "hp2")?;
            let e = events_of("hp2");
            (p["status"]["phase"] == "Pending"
                && p["spec"]["nodeName"].is_null()
                && e.contains("FailedScheduling")
                && e.contains("didn't have free ports for the requested pod ports"))
            .then_some(())
            .ok_or(format!("{}: {e}", p["status"]))
        },
    );
    // Deleting the first frees the port: the second is placed and answers.
    kubectl_ok("n1", &["delete", "pod", "hp1", "--wait=true"]);
    wait_running("hp2");
    eventually("the port now reaches the second pod", START, || {
        let got = curl_from("n2", &format!("{n1}:18081"))?;
        (got == "second-pod").then_some(()).ok_or(got)
    });
}
