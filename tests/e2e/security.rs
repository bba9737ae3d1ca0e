//! Resources and security context end to end, with the real runc and kubectl on a one-node
//! testnet: a container allocating past its memory limit is OOMKilled and reported so; cpu,
//! memory, swap and pids limits are what the container's cgroup shows; runAsUser, groups,
//! capabilities, no_new_privs, the default seccomp profile, a read-only root and privileged
//! are what the container's process sees; runAsNonRoot and escaping paths are refused.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use super::workloads::apply;
use crate::support::*;

/// Pods start, run a few commands and end well within this.
const DONE: Duration = Duration::from_secs(90);

const IMAGE: &str = "shoal.test/busybox:1";

fn pod(name: &str, script: &str, extra: Value) -> Value {
    let mut container = json!({"name": "main", "image": IMAGE, "command": ["sh", "-c", script]});
    for (k, v) in extra["container"].as_object().into_iter().flatten() {
        container[k] = v.clone();
    }
    let mut spec = json!({"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
        "containers": [container]});
    for (k, v) in extra["pod"].as_object().into_iter().flatten() {
        spec[k] = v.clone();
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})
}

fn apply_all(pods: &[Value]) {
    for pod in pods {
        apply("n1", &pod.to_string());
    }
}

fn get_pod(name: &str) -> Result<Value, String> {
    let out = kubectl("n1", &["get", "pod", name, "-o", "json"])?;
    serde_json::from_str(&out).map_err(|e| format!("bad JSON: {e}: {out}"))
}

/// The output of each pod once it ended (phase Succeeded or Failed).
fn outputs_when_done(names: &[&str]) -> BTreeMap<String, String> {
    eventually("the pods ran to completion", DONE, || {
        let mut out = BTreeMap::new();
        for name in names {
            let pod = get_pod(name)?;
            let phase = pod["status"]["phase"].as_str().unwrap_or_default();
            if phase != "Succeeded" && phase != "Failed" {
                return Err(format!("{name} is {phase}: {}", pod["status"]));
            }
            out.insert(name.to_string(), kubectl("n1", &["logs", name])?);
        }
        Ok(out)
    })
}

/// The value of `Key:` in a `/proc/self/status` dump.
fn status_field<'a>(dump: &'a str, key: &str) -> &'a str {
    dump.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key} in {dump}"))
}

fn cap_eff(dump: &str) -> u64 {
    u64::from_str_radix(status_field(dump, "CapEff"), 16).expect("CapEff is hex")
}

const CAP_CHOWN: u32 = 0;
const CAP_KILL: u32 = 5;
const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;
const CAP_SYS_ADMIN: u32 = 21;

/// Prints what the tests look at: status lines, and whether a user namespace, a mount and a
/// write to `/` are allowed.
const PROBE: &str = "grep -E '^(Cap|Seccomp|NoNewPrivs)' /proc/self/status; \
    unshare -U true 2>/dev/null && echo userns=ok || echo userns=denied; \
    touch /x 2>/dev/null && echo root=rw || echo root=ro; \
    echo hi > /dev/shm/x && echo shm=rw || echo shm=ro";

#[test]
fn memory_past_the_limit_is_oomkilled_and_limits_reach_the_cgroup() {
    let _tn = Testnet::up(1);
    let limits = json!({"container": {"resources": {
        "requests": {"cpu": "100m", "memory": "32Mi"},
        "limits": {"cpu": "250m", "memory": "32Mi"}}}});
    let mut oom = pod("oom", "head -c 200m /dev/zero | tail", limits.clone());
    oom["spec"]["restartPolicy"] = json!("Always");
    // cgroup v1 files first, then v2's; whichever exist.
    let show = "for f in cpu/cpu.cfs_quota_us cpu/cpu.cfs_period_us memory/memory.limit_in_bytes \
        memory/memory.memsw.limit_in_bytes pids/pids.max cpu.max memory.max memory.swap.max pids.max; \
        do [ -f /sys/fs/cgroup/$f ] && echo \"$f=$(cat /sys/fs/cgroup/$f)\"; done; true";
    apply_all(&[oom, pod("limits", show, limits)]);

    // The OOM kill is reported as Kubernetes does, and the container restarts (Always).
    let terminated = eventually("oom is OOMKilled and restarted", DONE, || {
        let pod = get_pod("oom")?;
        let cs = &pod["status"]["containerStatuses"][0];
        let last = &cs["lastState"]["terminated"];
        if last["reason"] == "OOMKilled" && cs["restartCount"].as_u64().unwrap_or(0) >= 1 {
            Ok(last.clone())
        } else {
            Err(format!("status: {}", pod["status"]))
        }
    });
    assert_eq!(terminated["exitCode"], 137, "{terminated}");

    let out = outputs_when_done(&["limits"]);
    let files: BTreeMap<&str, &str> = out["limits"]
        .lines()
        .filter_map(|l| l.split_once('='))
        .collect();
    let mem = 32 * 1024 * 1024;
    if let Some(quota) = files.get("cpu/cpu.cfs_quota_us") {
        // cgroup v1 (this machine: hybrid, runc uses the v1 controllers).
        assert_eq!(*quota, "25000", "{files:?}");
        assert_eq!(files["cpu/cpu.cfs_period_us"], "100000");
        assert_eq!(files["memory/memory.limit_in_bytes"], mem.to_string());
        if let Some(memsw) = files.get("memory/memory.memsw.limit_in_bytes") {
            assert_eq!(*memsw, mem.to_string(), "no swap past the limit");
        }
        assert_eq!(files["pids/pids.max"], "4096");
    } else {
        assert_eq!(files["cpu.max"], "25000 100000", "{files:?}");
        assert_eq!(files["memory.max"], mem.to_string());
        if let Some(swap) = files.get("memory.swap.max") {
            assert_eq!(*swap, "0", "no swap past the limit");
        }
        assert_eq!(files["pids.max"], "4096");
    }
}

#[test]
fn security_context_is_what_the_process_gets_and_escapes_are_refused() {
    let _tn = Testnet::up(1);
    apply_all(&[
        pod("default", PROBE, json!({})),
        pod(
            "ids",
            "id",
            json!({"pod": {"securityContext": {"runAsUser": 1000, "runAsGroup": 3000,
                "supplementalGroups": [4000]}}}),
        ),
        pod(
            "caps",
            PROBE,
            json!({"container": {"securityContext": {"readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["NET_RAW", "CAP_CHOWN"], "add": ["NET_ADMIN"]}}}}),
        ),
        pod(
            "unconfined",
            PROBE,
            json!({"pod": {"securityContext": {"seccompProfile": {"type": "Unconfined"}}}}),
        ),
        pod(
            "privileged",
            PROBE,
            json!({"container": {"securityContext": {"privileged": true}}}),
        ),
        pod(
            "nonroot",
            "echo ran",
            json!({"pod": {"securityContext": {"runAsNonRoot": true}}}),
        ),
    ]);
    let out = outputs_when_done(&["default", "ids", "caps", "unconfined", "privileged"]);

    // The default container: Docker's capabilities, no new privileges, the seccomp filter on
    // (it, not a capability, stops an unprivileged user namespace), a writable root.
    let d = &out["default"];
    let eff = cap_eff(d);
    assert!(
        eff & (1 << CAP_CHOWN) != 0 && eff & (1 << CAP_NET_RAW) != 0,
        "{d}"
    );
    assert!(
        eff & (1 << CAP_SYS_ADMIN) == 0 && eff & (1 << CAP_NET_ADMIN) == 0,
        "{d}"
    );
    assert_eq!(status_field(d, "NoNewPrivs"), "1", "{d}");
    assert_eq!(status_field(d, "Seccomp"), "2", "{d}");
    assert!(d.contains("userns=denied") && d.contains("root=rw"), "{d}");

    let ids = &out["ids"];
    assert!(
        ids.contains("uid=1000") && ids.contains("gid=3000") && ids.contains("4000"),
        "{ids}"
    );

    let c = &out["caps"];
    let eff = cap_eff(c);
    assert!(eff & (1 << CAP_NET_ADMIN) != 0, "added: {c}");
    assert!(
        eff & (1 << CAP_NET_RAW) == 0 && eff & (1 << CAP_CHOWN) == 0,
        "dropped: {c}"
    );
    assert!(eff & (1 << CAP_KILL) != 0, "kept: {c}");
    assert!(
        c.contains("root=ro") && c.contains("shm=rw"),
        "read-only root: {c}"
    );

    let u = &out["unconfined"];
    assert_eq!(status_field(u, "Seccomp"), "0", "{u}");
    assert!(u.contains("userns=ok"), "without the filter it works: {u}");

    let p = &out["privileged"];
    assert_eq!(status_field(p, "Seccomp"), "0", "{p}");
    assert_eq!(status_field(p, "NoNewPrivs"), "0", "{p}");
    assert!(cap_eff(p) & (1 << CAP_SYS_ADMIN) != 0, "{p}");

    // runAsNonRoot with an image that runs as root never starts, with Kubernetes' message.
    eventually("nonroot is refused with the reason", DONE, || {
        let pod = get_pod("nonroot")?;
        let waiting = &pod["status"]["containerStatuses"][0]["state"]["waiting"];
        let message =
            "container has runAsNonRoot and image will run as root (pod: \"nonroot_default(";
        if waiting["reason"] == "CreateContainerConfigError"
            && waiting["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(message))
        {
            Ok(())
        } else {
            Err(format!("status: {}", pod["status"]))
        }
    });
    let logs = kubectl("n1", &["logs", "nonroot"]).unwrap_or_default();
    assert!(!logs.contains("ran"), "nonroot ran: {logs}");

    // Specs that try to escape are refused at admission, naming the field.
    for (name, extra, field) in [
        (
            "fdcwd",
            json!({"container": {"workingDir": "/proc/self/fd/7"}}),
            "spec.containers[0].workingDir",
        ),
        (
            "procmount",
            json!({"pod": {"volumes": [{"name": "v", "emptyDir": {}}]},
                   "container": {"volumeMounts": [{"name": "v", "mountPath": "/proc/1/root"}]}}),
            "spec.containers[0].volumeMounts[0].mountPath",
        ),
        (
            "escalate",
            json!({"container": {"securityContext": {"privileged": true,
                "allowPrivilegeEscalation": false}}}),
            "spec.containers[0].securityContext",
        ),
    ] {
        let manifest = pod(name, "true", extra).to_string();
        let err = kubectl_apply_err(&manifest);
        assert!(
            err.contains(field) && err.contains("Invalid"),
            "{name}: {err}"
        );
    }
}

/// `kubectl apply` of a manifest that must be refused; the error text.
fn kubectl_apply_err(manifest: &str) -> String {
    let file = run_dir().join("security-refused.json");
    std::fs::write(&file, manifest).expect("writing the manifest");
    match kubectl("n1", &["apply", "-f", &file.display().to_string()]) {
        Ok(out) => panic!("accepted: {out}\n{manifest}"),
        Err(e) => e,
    }
}
