//! The runtime with REAL runc, as root: a pod sandbox and its containers sharing localhost,
//! CRI logs, exit codes, a command that does not exist, adoption by a fresh runtime handle
//! (the agent restarted), and removal leaving `runc list` empty and no process behind; the pod
//! network with the real CNI plugins in a throwaway network namespace (addresses, pod to pod,
//! resolv.conf, leases released); exec into a container joined directly (`runtime::nsexec`) seeing
//! what `runc exec` sees. The image is a rootfs layer built from `/bin/busybox` (Debian's busybox-static).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Container, Pod};
use shoal::model::logs::LogRequest;
use shoal::runtime::logs::{find_target, read_logs};
use shoal::runtime::pods::StartOutcome;
use shoal::runtime::runc::{OciRuntime, RuncCli};
use shoal::runtime::{AttemptState, ImageInfo, PodMeta, Runtime, RuntimeConfig};

fn prerequisites() {
    let mut missing = Vec::new();
    if !nix_is_root() {
        missing.push("root (run the tests as root: runc needs it)".to_string());
    }
    if std::process::Command::new("runc")
        .arg("--version")
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        missing.push("runc on PATH (apt-get install runc)".into());
    }
    let busybox = std::fs::read("/bin/busybox").unwrap_or_default();
    if busybox.is_empty() || has_interpreter(&busybox) {
        missing.push("a static /bin/busybox (apt-get install busybox-static)".into());
    }
    assert!(
        missing.is_empty(),
        "tests/runtime.rs needs: {}",
        missing.join("; ")
    );
}

/// Whether a 64-bit ELF has a program interpreter (PT_INTERP): a static binary has none.
fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return true;
    };
    (0..phnum).any(|i| {
        elf.get(phoff + i * phentsize..phoff + i * phentsize + 4) == Some(&3u32.to_le_bytes()[..])
    })
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// One busybox layer.
fn busybox_layer(dir: &Path) -> PathBuf {
    let layer = dir.join("layer");
    for d in ["bin", "proc", "dev", "sys", "etc", "tmp", "www"] {
        std::fs::create_dir_all(layer.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", layer.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "echo", "cat", "sleep", "nc", "httpd", "wget", "seq", "ls", "hostname", "mkdir",
        "unshare",
    ] {
        std::os::unix::fs::symlink("busybox", layer.join("bin").join(applet)).unwrap();
    }
    layer
}

/// Tears everything down even when an assertion failed.
struct Cleanup {
    runtime_config: RuntimeConfig,
    keys: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let rt = Runtime::new(self.runtime_config.clone());
        for k in &self.keys {
            let _ = rt.remove_pod(k, Duration::from_secs(5));
        }
        let runc = RuncCli::new("runc", &self.runtime_config.runc_root);
        for e in runc.list().unwrap_or_default() {
            let _ = runc.delete(&e.id, true);
        }
        for m in shoal::runtime::runc::cgroup_mounts() {
            let _ = std::fs::remove_dir(
                m.join(self.runtime_config.cgroup_parent.trim_start_matches('/')),
            );
        }
    }
}

/// A runtime under `dir` with the real runc and no pod network.
fn runtime_config(dir: &Path) -> RuntimeConfig {
    RuntimeConfig {
        data_dir: dir.join("data"),
        runtime_binary: PathBuf::from("runc"),
        runc_root: dir.join("runc"),
        cgroup_parent: format!("/shoal-runtime-test-{}", std::process::id()),
        shoal_binary: PathBuf::from(env!("CARGO_BIN_EXE_shoal")),
        cni: None,
        host_path_prefixes: Vec::new(),
        limits: shoal::runtime::bundle::NodeLimits {
            pids_limit: Some(shoal::runtime::DEFAULT_POD_PIDS_LIMIT),
            memory_swap_limit: shoal::runtime::runc::swap_accounting(std::path::Path::new(
                "/sys/fs/cgroup",
            )),
            capability_bound: None,
            deny_privileged: false,
        },
    }
}

/// A runtime in a fresh directory with the real runc (checked first), the busybox image, and
/// the clean-up of pod `key`. Dropped in reverse: the clean-up runs before the directory goes.
fn fixture(key: &str) -> (tempfile::TempDir, RuntimeConfig, Cleanup, ImageInfo) {
    prerequisites();
    let tmp = tempfile::tempdir().unwrap();
    let image = busybox_image(busybox_layer(tmp.path()));
    let config = runtime_config(tmp.path());
    let cleanup = Cleanup {
        runtime_config: config.clone(),
        keys: vec![key.into()],
    };
    (tmp, config, cleanup, image)
}

/// The image of the busybox `layer`.
fn busybox_image(layer: PathBuf) -> ImageInfo {
    ImageInfo {
        reference: "test/busybox:1".into(),
        cmd: vec!["sh".into()],
        layers: vec![layer],
        ..Default::default()
    }
}

/// What the kubelet records of pod `name` (pod key `key`) in the default namespace.
fn pod_meta(key: &str, name: &str) -> PodMeta {
    PodMeta {
        key: key.into(),
        namespace: "default".into(),
        name: name.into(),
        uid: "u-1".into(),
        grace_seconds: 30,
        created_at: chrono::Utc::now(),
        hooks: Vec::new(),
        sidecars: Vec::new(),
        hostname: None,
        subdomain: None,
        host_network: false,
        dns: Default::default(),
    }
}

fn pod(name: &str, containers: serde_json::Value) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "default", "uid": "u-1"},
        "spec": {"containers": containers}
    }))
    .unwrap()
}

fn container(pod: &Pod, name: &str) -> Container {
    pod.spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .find(|c| c.name == name)
        .unwrap()
        .clone()
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn state(rt: &Runtime, key: &str, c: &str) -> Option<AttemptState> {
    rt.observe()
        .get(key)?
        .containers
        .get(c)
        .map(|c| c.latest.state.clone())
}

fn exited(rt: &Runtime, key: &str, c: &str) -> Option<shoal::runtime::ExitRecord> {
    match state(rt, key, c)? {
        AttemptState::Exited(e) => Some(e),
        _ => None,
    }
}

async fn logs(rt: &Runtime, key: &str, c: &str) -> String {
    let target = find_target(&rt.pod_dir(key), c, false).unwrap();
    let stream = read_logs(target, &LogRequest::default(), chrono::Utc::now()).unwrap();
    let parts: Vec<_> = stream.collect().await;
    parts
        .into_iter()
        .map(|p| String::from_utf8_lossy(&p.unwrap()).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_lifecycle_with_real_runc() {
    let key = "b-0001";
    let (_tmp, config, _cleanup, image) = fixture(key);
    let p = pod(
        "web",
        serde_json::json!([
            {"name": "server", "command": ["sh", "-c",
                "echo hello-from-server > /www/index.html && echo serving $(hostname) && exec httpd -f -p 127.0.0.1:8080 -h /www"]},
            {"name": "client", "command": ["sh", "-c",
                "for i in $(seq 1 200); do wget -q -O - http://127.0.0.1:8080/index.html && exit 0; sleep 0.05; done; exit 1"]},
            {"name": "fails", "command": ["sh", "-c", "echo bye >&2; exit 3"]},
            {"name": "missing", "command": ["/no/such/command"]}
        ]),
    );
    let rt = Runtime::new(config.clone());
    let meta = pod_meta(key, "web");
    let sandbox = rt.create_sandbox(&meta, None).expect("sandbox");
    assert!(sandbox.alive());
    assert_eq!(
        rt.create_sandbox(&meta, None).unwrap(),
        sandbox,
        "idempotent"
    );

    let start = |name: &str| {
        rt.start_container(key, &p, &container(&p, name), &image, 0)
            .expect(name)
    };
    let t0 = Instant::now();
    let server = start("server");
    eprintln!("server started in {:?}", t0.elapsed());
    assert!(matches!(server, StartOutcome::Started { .. }), "{server:?}");
    assert!(matches!(start("client"), StartOutcome::Started { .. }));
    assert!(matches!(start("fails"), StartOutcome::Started { .. }));
    match start("missing") {
        StartOutcome::Failed { message } => {
            assert!(message.contains("/no/such/command"), "{message}")
        }
        other => panic!("a missing command must fail to start: {other:?}"),
    }

    // The client reaches the server over the pod's shared loopback.
    let client = wait_for("the client to exit", Duration::from_secs(20), || {
        exited(&rt, key, "client")
    });
    assert_eq!(
        (client.exit_code, client.reason.as_str()),
        (0, "Completed"),
        "{client:?}"
    );
    assert!(logs(&rt, key, "client").await.contains("hello-from-server"));
    assert_eq!(
        logs(&rt, key, "server").await,
        "serving web\n",
        "hostname is the pod's name"
    );

    let fails = wait_for("exit 3", Duration::from_secs(10), || {
        exited(&rt, key, "fails")
    });
    assert_eq!((fails.exit_code, fails.reason.as_str()), (3, "Error"));
    let raw = std::fs::read_to_string(rt.pod_dir(key).join("logs/fails/0.log")).unwrap();
    assert!(raw.ends_with(" stderr F bye\n"), "CRI format: {raw}");

    let missing = exited(&rt, key, "missing").expect("recorded");
    assert_eq!(
        (missing.exit_code, missing.reason.as_str()),
        (128, "StartError")
    );
    assert!(missing
        .message
        .unwrap_or_default()
        .contains("/no/such/command"));

    // The agent "restarts": a fresh handle adopts what runs without touching it.
    let before = rt.observe().remove(key).unwrap();
    drop(rt);
    let rt = Runtime::new(config.clone());
    let after = rt.observe().remove(key).expect("adopted");
    assert_eq!(before, after);
    assert!(matches!(
        after.containers["server"].latest.state,
        AttemptState::Running { .. }
    ));
    assert_eq!(after.sandbox, Some(sandbox));
    assert!(rt.sweep_orphans().unwrap().is_empty(), "nothing orphaned");

    // SIGKILL (httpd as pid 1 of its namespace ignores SIGTERM).
    rt.kill_container(key, "server", 0, "KILL").unwrap();
    let server = wait_for("the server to die", Duration::from_secs(10), || {
        exited(&rt, key, "server")
    });
    assert_eq!((server.exit_code, server.signal), (137, Some(9)));

    // A restart is a new attempt with its own log.
    assert!(matches!(
        rt.start_container(key, &p, &container(&p, "fails"), &image, 1)
            .unwrap(),
        StartOutcome::Started { .. }
    ));
    wait_for("attempt 1", Duration::from_secs(10), || {
        exited(&rt, key, "fails")
    });
    let pod_now = rt.observe().remove(key).unwrap();
    assert_eq!(pod_now.containers["fails"].latest.restart, 1);
    assert_eq!(
        pod_now.containers["fails"]
            .previous
            .as_ref()
            .map(|a| a.restart),
        Some(0)
    );

    let shim_pids: Vec<i32> = ["server", "client", "fails"]
        .iter()
        .filter_map(|c| {
            let p = rt.attempt_dir(key, c, 0).join("shim.pid");
            serde_json::from_slice::<serde_json::Value>(&std::fs::read(p).ok()?).ok()?["pid"]
                .as_i64()
                .map(|p| p as i32)
        })
        .collect();
    assert_eq!(shim_pids.len(), 3);

    rt.remove_pod(key, Duration::from_secs(10)).unwrap();
    assert!(!rt.pod_dir(key).exists());
    assert!(!sandbox.alive(), "the sandbox is gone");
    let runc = RuncCli::new("runc", &config.runc_root);
    assert_eq!(runc.list().unwrap(), vec![], "runc list is empty");
    // A shim exits once its container is deleted; give it a moment to finish (it may still be
    // writing exit.json when removal returns on a loaded machine).
    for pid in shim_pids {
        let gone = || {
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .unwrap_or_default()
                    .contains(") Z")
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !gone() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            gone(),
            "shim {pid} still runs 10 s after its pod was removed"
        );
    }
}

/// The pod network with the REAL CNI plugins (`/usr/lib/cni`, Debian's
/// containernetworking-plugins): the test's thread moves into a fresh network namespace that
/// plays the node (everything it spawns — sandboxes, shims, plugins — lives there), so the
/// host's network is never touched.
#[test]
fn pods_get_addresses_and_reach_each_other_with_real_cni() {
    prerequisites();
    for plugin in ["bridge", "host-local"] {
        assert!(
            Path::new("/usr/lib/cni").join(plugin).is_file(),
            "tests/runtime.rs needs /usr/lib/cni/{plugin} (apt-get install containernetworking-plugins)"
        );
    }
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        pod_network_in_this_namespace(shoal::runtime::network::CniMode::Plugins);
    })
    .join()
    .expect("the pod network test failed (see above)");
}

/// The same with the agent's own netlink attachment (the default): same leases, same record,
/// pods reach each other, DEL releases.
#[test]
fn pods_get_addresses_and_reach_each_other_in_process() {
    prerequisites();
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        pod_network_in_this_namespace(shoal::runtime::network::CniMode::InProcess);
    })
    .join()
    .expect("the pod network test failed (see above)");
}

fn pod_network_in_this_namespace(mode: shoal::runtime::network::CniMode) {
    use shoal::runtime::network::{Cni, CniConfig, NETWORK_RECORD};
    use shoal::runtime::RuntimeError;
    let ip = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ip(&["link", "set", "lo", "up"]);
    let tmp = tempfile::tempdir().unwrap();
    let layer = busybox_layer(tmp.path());
    let cni = CniConfig {
        mode,
        plugin_path: vec![PathBuf::from("/usr/lib/cni")],
        ipam_dir: tmp.path().join("data/cni/networks"),
        timeout: Duration::from_secs(20),
    };
    let config = RuntimeConfig {
        // Both modes' tests run at once in this process: each its own cgroups.
        cgroup_parent: format!(
            "/shoal-runtime-net-test-{}-{}",
            std::process::id(),
            match mode {
                shoal::runtime::network::CniMode::Plugins => "plugins",
                shoal::runtime::network::CniMode::InProcess => "netlink",
            }
        ),
        cni: Some(cni.clone()),
        ..runtime_config(tmp.path())
    };
    let _cleanup = Cleanup {
        runtime_config: config.clone(),
        keys: vec!["net-a".into(), "net-b".into()],
    };
    let image = busybox_image(layer);
    let rt = Runtime::new(config.clone());
    let meta = |key: &str, name: &str| PodMeta {
        key: key.into(),
        namespace: "shop".into(),
        name: name.into(),
        uid: format!("u-{key}"),
        grace_seconds: 5,
        created_at: chrono::Utc::now(),
        hooks: Vec::new(),
        sidecars: Vec::new(),
        hostname: None,
        subdomain: None,
        host_network: false,
        dns: Default::default(),
    };
    let cidr = "10.244.3.0/24";

    // No pod CIDR yet: refused, clearly, and nothing is started.
    match rt.create_sandbox(&meta("net-a", "server"), None) {
        Err(e @ RuntimeError::NetworkNotReady(_)) => assert_eq!(
            e.to_string(),
            "network not ready: this node has no pod CIDR yet"
        ),
        other => panic!("a sandbox without a pod CIDR must wait: {other:?}"),
    }
    assert!(rt.observe().is_empty());

    let sandbox_a = rt
        .create_sandbox(&meta("net-a", "server"), Some(cidr))
        .expect("sandbox a");
    let net_a = rt.observe()["net-a"].network.clone().expect("network.json");
    let addr_a = net_a.address.expect("an address");
    assert_eq!(net_a.cidr, cidr);
    assert_eq!(addr_a.gateway.to_string(), "10.244.3.1");
    assert_eq!(addr_a.prefix, 24);
    assert!(net_a.within(cidr), "{addr_a:?}");
    assert_eq!(
        rt.create_sandbox(&meta("net-a", "server"), Some(cidr))
            .unwrap(),
        sandbox_a,
        "idempotent: same sandbox, no second ADD"
    );
    assert_eq!(rt.observe()["net-a"].network.as_ref(), Some(&net_a));
    // The pod resolves through its node: the DNS server on the gateway.
    assert_eq!(
        std::fs::read_to_string(rt.pod_dir("net-a").join("etc/resolv.conf")).unwrap(),
        "nameserver 10.244.3.1\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
    );
    // The node's bridge carries the gateway; the lease is host-local's, under the data dir.
    assert!(ip(&["-4", "addr", "show", "dev", "shoal0"]).contains("inet 10.244.3.1/24"));
    let lease = cni.ipam_dir.join("shoal").join(addr_a.ip.to_string());
    assert!(lease.is_file(), "{} exists", lease.display());
    // The plugins agree the attachment is as recorded.
    Cni::new(cni.clone())
        .check(
            &net_a,
            Path::new(&format!("/proc/{}/ns/net", sandbox_a.pid)),
        )
        .expect("CNI CHECK");

    let server = pod(
        "server",
        serde_json::json!([{"name": "httpd", "command": ["sh", "-c",
            "echo hello-across-pods > /www/index.html && exec httpd -f -p 8080 -h /www"]}]),
    );
    assert!(matches!(
        rt.start_container("net-a", &server, &container(&server, "httpd"), &image, 0)
            .unwrap(),
        StartOutcome::Started { .. }
    ));

    let sandbox_b = rt
        .create_sandbox(&meta("net-b", "client"), Some(cidr))
        .expect("sandbox b");
    let addr_b = rt.observe()["net-b"]
        .network
        .clone()
        .and_then(|n| n.address)
        .expect("b's address");
    assert_ne!(addr_a.ip, addr_b.ip, "every pod its own address");
    let url = format!("http://{}:8080/index.html", addr_a.ip);
    let client = pod(
        "client",
        serde_json::json!([{"name": "wget", "command": ["sh", "-c", format!(
            "for i in $(seq 1 100); do wget -q -O - {url} && exit 0; sleep 0.1; done; exit 1"
        )]}]),
    );
    assert!(matches!(
        rt.start_container("net-b", &client, &container(&client, "wget"), &image, 0)
            .unwrap(),
        StartOutcome::Started { .. }
    ));
    let done = wait_for("the client to exit", Duration::from_secs(30), || {
        exited(&rt, "net-b", "wget")
    });
    let log = std::fs::read_to_string(rt.pod_dir("net-b").join("logs/wget/0.log")).unwrap();
    assert_eq!(done.exit_code, 0, "pod b reached pod a at {url}: {log}");
    assert!(log.contains("hello-across-pods"), "{log}");

    // Stopping a sandbox (what the kubelet does to a pod outside the node's CIDR) releases its
    // address; removing a pod does too, and both are idempotent.
    rt.stop_sandbox("net-b", Duration::from_secs(5)).unwrap();
    assert!(!sandbox_b.alive());
    assert!(!rt.pod_dir("net-b").join(NETWORK_RECORD).exists());
    assert!(!cni
        .ipam_dir
        .join("shoal")
        .join(addr_b.ip.to_string())
        .exists());
    rt.stop_sandbox("net-b", Duration::from_secs(5)).unwrap();

    rt.remove_pod("net-a", Duration::from_secs(10)).unwrap();
    assert!(!sandbox_a.alive());
    assert!(!lease.exists(), "the address went back to host-local");
    rt.remove_pod("net-a", Duration::from_secs(10)).unwrap();

    // A DEL whose namespace is gone already still releases the lease.
    let sandbox_c = rt
        .create_sandbox(&meta("net-b", "client"), Some(cidr))
        .expect("sandbox c");
    let addr_c = rt.observe()["net-b"]
        .network
        .clone()
        .and_then(|n| n.address)
        .expect("c's address");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sandbox_c.pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for("the sandbox to die", Duration::from_secs(5), || {
        (!sandbox_c.alive()).then_some(())
    });
    rt.remove_pod("net-b", Duration::from_secs(10)).unwrap();
    assert!(!cni
        .ipam_dir
        .join("shoal")
        .join(addr_c.ip.to_string())
        .exists());
}

/// Exec probes and hooks join the container directly (`runtime::nsexec`): what a command sees
/// there — user, groups, capability sets, `no_new_privs`, cgroups, namespaces, root, working
/// directory, environment, umask, seccomp filter — is what `runc exec` gives it, for a root
/// container, a locked-down one and an unconfined one; the default seccomp profile denies a
/// user namespace both ways; exit codes come back, and a timeout's kill leaves nothing running
/// inside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_joins_the_container_as_runc_exec_does() {
    use shoal::runtime::nsexec;
    use tokio::io::AsyncReadExt;
    let key = "x-0001";
    let (_tmp, config, _cleanup, image) = fixture(key);
    let p = pod(
        "exec",
        serde_json::json!([
            {"name": "plain", "command": ["sleep", "300"]},
            {"name": "locked", "command": ["sleep", "300"], "workingDir": "/tmp",
             "env": [{"name": "FOO", "value": "bar baz"}],
             "securityContext": {"runAsUser": 1000, "runAsGroup": 1001,
                "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE", "KILL"]}}},
            {"name": "unconfined", "command": ["sleep", "300"],
             "securityContext": {"seccompProfile": {"type": "Unconfined"}}}
        ]),
    );
    let rt = Runtime::new(config.clone());
    let meta = pod_meta(key, "exec");
    rt.create_sandbox(&meta, None).expect("sandbox");
    for c in ["plain", "locked", "unconfined"] {
        let started = rt
            .start_container(key, &p, &container(&p, c), &image, 0)
            .expect(c);
        assert!(
            matches!(started, StartOutcome::Started { .. }),
            "{c}: {started:?}"
        );
    }
    let id = |c: &str| shoal::runtime::pods::container_id(key, c, 0);
    let script = "id; umask; ulimit -n; ulimit -Hn; pwd; hostname; env | sort; ls /; \
        grep -E '^(Cap|NoNewPrivs|Seccomp:)' /proc/self/status; cat /proc/self/cgroup; \
        for n in ipc uts net pid cgroup mnt; do readlink /proc/self/ns/$n; done; \
        test $$ -lt 100 && echo small-pid";
    let argv = |s: &str| vec!["sh".to_string(), "-c".to_string(), s.to_string()];
    let runc_exec = |c: &str, s: &str| {
        let out = std::process::Command::new("runc")
            .arg("--root")
            .arg(&config.runc_root)
            .args(["exec", &id(c)])
            .args(argv(s))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let direct = |c: &str, s: &str| {
        let join = nsexec::read(&config.runc_root, &id(c)).expect("joinable");
        let argv = argv(s);
        async move {
            let mut child = nsexec::spawn(&join, &argv).await.unwrap();
            let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
            let (mut o, mut e) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
            let (r1, r2, status) = tokio::join!(
                o.read_to_end(&mut stdout),
                e.read_to_end(&mut stderr),
                child.wait()
            );
            r1.unwrap();
            r2.unwrap();
            std::process::Output {
                status: status.unwrap(),
                stdout,
                stderr,
            }
        }
    };
    for c in ["plain", "locked", "unconfined"] {
        let (code, want) = runc_exec(c, script);
        assert_eq!(code, Some(0), "{c}: runc exec: {want}");
        let out = direct(c, script).await;
        let got = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{c}: {got} {:?}", out.stderr);
        assert_eq!(got, want, "{c}: direct exec and runc exec differ");
        assert!(
            got.contains("small-pid"),
            "{c}: inside the pid namespace: {got}"
        );
    }
    // The default profile (plain) denies a new user namespace; without a filter it is allowed.
    for (c, allowed) in [("plain", false), ("unconfined", true)] {
        let (code, out) = runc_exec(c, "unshare -U true");
        assert_eq!(code == Some(0), allowed, "{c}: runc exec: {out}");
        let out = direct(c, "unshare -U true").await;
        assert_eq!(out.status.success(), allowed, "{c}: direct: {out:?}");
    }
    let (_, plain) = runc_exec("plain", script);
    assert!(plain.contains("Seccomp:\t2"), "{plain}");
    let (_, locked) = runc_exec("locked", script);
    assert!(locked.contains("uid=1000 gid=1001"), "{locked}");
    assert!(
        locked.contains("NoNewPrivs:\t1") && locked.contains("FOO=bar baz"),
        "{locked}"
    );
    assert!(
        locked.contains("CapBnd:\t0000000000000420"),
        "KILL and NET_BIND_SERVICE: {locked}"
    );

    // Exit codes and a missing program.
    let out = direct("locked", "exit 7").await;
    assert_eq!(out.status.code(), Some(7));
    let join = nsexec::read(&config.runc_root, &id("plain")).unwrap();
    let err = match nsexec::spawn(&join, &["/no/such/program".to_string()]).await {
        Err(nsexec::SpawnError::Exec(e)) => e,
        other => panic!("a missing program: {:?}", other.map(|c| c.id())),
    };
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");

    // Dropping the child (a probe's timeout) kills it: nothing stays inside.
    let slow = nsexec::spawn(&join, &argv("exec sleep 77")).await.unwrap();
    let pid = slow.id();
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "sleep 77 runs"
    );
    drop(slow);
    let procs: Vec<PathBuf> = join
        .cgroups
        .iter()
        .map(|d| d.join("cgroup.procs"))
        .collect();
    wait_for(
        "the killed probe to leave the container",
        Duration::from_secs(10),
        || {
            let counts: Vec<usize> = procs
                .iter()
                .map(|p| {
                    std::fs::read_to_string(p)
                        .unwrap_or_default()
                        .lines()
                        .count()
                })
                .collect();
            counts.iter().all(|n| *n == 1).then_some(())
        },
    );

    rt.remove_pod(key, Duration::from_secs(10)).unwrap();
}
