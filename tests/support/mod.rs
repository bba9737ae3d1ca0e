//! Helpers for the end-to-end layer: the testnet scripts, kubectl and `shoal` per context,
//! and polling a condition until a deadline (never a bare sleep).
#![allow(dead_code)]

pub mod registry;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Deadline for anything that needs the cluster to react (failure detection, convergence,
/// leader change). Generous: CI machines are slow and share two cores.
pub const REACT: Duration = Duration::from_secs(120);
/// How long an invariant ("never appears") is observed after it could first have been broken.
pub const OBSERVE: Duration = Duration::from_secs(10);

/// One testnet at a time on a machine: the scripts share netns names, the bridge and
/// `testnet/run`. Tests also run with `--test-threads=1`; this lock makes that not matter.
static TESTNET_LOCK: Mutex<()> = Mutex::new(());

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn shoal_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shoal"))
}

pub fn run_dir() -> PathBuf {
    repo().join("testnet/run")
}

pub fn kubeconfig() -> PathBuf {
    run_dir().join("kubeconfig")
}

pub fn node_ip(node: &str) -> String {
    let k: u32 = node
        .strip_prefix('n')
        .and_then(|k| k.parse().ok())
        .unwrap_or_else(|| panic!("bad node name {node}"));
    format!("10.77.0.{}", 10 + k)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(what: &str, out: &Output) -> String {
    format!(
        "{what}: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// Fails (never skips) when the end-to-end layer cannot run here, naming what is missing.
/// `testnet/prereqs.sh` installs missing packages with apt-get first.
pub fn require_prerequisites() {
    let uid = Command::new("id").arg("-u").output().expect("run `id -u`");
    assert_eq!(
        text(&uid.stdout).trim(),
        "0",
        "the end-to-end tests need root (network namespaces, bridge, cgroups); run them as root"
    );
    let out = Command::new(repo().join("testnet/prereqs.sh"))
        .output()
        .expect("run testnet/prereqs.sh");
    assert!(
        out.status.success(),
        "missing prerequisite for the end-to-end tests\n{}",
        describe("testnet/prereqs.sh", &out)
    );
    for tool in ["ip", "kubectl", "nsenter", "curl"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            found,
            "missing prerequisite for the end-to-end tests: `{tool}`"
        );
    }
}

/// Runs `testnet/<script>` with the test's binary; returns its output or a description of the failure.
pub fn try_script(script: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Output, String> {
    let mut cmd = Command::new(repo().join("testnet").join(script));
    cmd.args(args).env("SHOAL_BIN", shoal_bin()).env(
        "RUST_LOG",
        std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
    );
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run testnet/{script}: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(describe(
            &format!("testnet/{script} {}", args.join(" ")),
            &out,
        ))
    }
}

pub fn script(script: &str, args: &[&str]) -> Output {
    script_env(script, args, &[])
}

pub fn script_env(script: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    try_script(script, args, env).unwrap_or_else(|e| panic!("{e}\n{}", log_tails(40)))
}

/// The last `lines` lines of every node's agent log, for failure messages.
pub fn log_tails(lines: usize) -> String {
    let mut all = String::new();
    let Ok(entries) = std::fs::read_dir(run_dir()) else {
        return all;
    };
    let mut dirs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    dirs.sort();
    for dir in dirs {
        let log = dir.join("agent.log");
        if let Ok(body) = std::fs::read_to_string(&log) {
            let tail: Vec<&str> = body.lines().rev().take(lines).collect();
            all.push_str(&format!("---- tail of {}\n", log.display()));
            for line in tail.into_iter().rev() {
                all.push_str(line);
                all.push('\n');
            }
        }
    }
    all
}

pub fn agent_log(node: &str) -> String {
    std::fs::read_to_string(run_dir().join(node).join("agent.log")).unwrap_or_default()
}

/// Polls `check` until it returns `Ok`, or panics at the deadline with the last error and
/// the agents' logs.
pub fn eventually<T>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => {
                panic!(
                    "timed out after {within:?} waiting for: {what}\nlast: {e}\n{}",
                    log_tails(40)
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// Checks that `check` holds on every poll for `during` (an invariant, e.g. "never admitted").
pub fn always(what: &str, during: Duration, mut check: impl FnMut() -> Result<(), String>) {
    let end = Instant::now() + during;
    while Instant::now() < end {
        if let Err(e) = check() {
            panic!("invariant broken: {what}\n{e}\n{}", log_tails(40));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A running testnet. Holding it holds the machine-wide testnet lock; dropping it (also while
/// unwinding from a failed assertion) tears everything down with `testnet/down.sh`.
pub struct Testnet {
    pub nodes: Vec<String>,
    _lock: MutexGuard<'static, ()>,
    /// The machine-wide lock (other checkouts, benchmarks, a person's `flock` shell): released
    /// after `Drop` has torn the testnet down.
    _machine_lock: nix::fcntl::Flock<std::fs::File>,
}

/// The file every user of the (singleton) testnet locks: tests of other work trees, the
/// benchmarks, and people (`flock /run/lock/shoal-testnet.lock testnet/up.sh 5`).
pub const MACHINE_LOCK: &str = "/run/lock/shoal-testnet.lock";

/// Waits for the machine-wide testnet lock (exclusive `flock`).
fn machine_lock() -> nix::fcntl::Flock<std::fs::File> {
    let _ = std::fs::create_dir_all("/run/lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(MACHINE_LOCK)
        .unwrap_or_else(|e| panic!("open {MACHINE_LOCK}: {e}"));
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("flock {MACHINE_LOCK}: {e}"))
}

impl Testnet {
    pub fn up(n: usize) -> Testnet {
        Self::up_with(n, &[])
    }

    pub fn up_with(n: usize, env: &[(&str, &str)]) -> Testnet {
        let lock = TESTNET_LOCK
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let machine = machine_lock();
        require_prerequisites();
        let mut tn = Testnet {
            nodes: Vec::new(),
            _lock: lock,
            _machine_lock: machine,
        };
        tn.relaunch(n, env);
        tn
    }

    /// (Re)starts a fresh testnet of `n` nodes in place (`up.sh` tears down the old one).
    pub fn relaunch(&mut self, n: usize, env: &[(&str, &str)]) {
        let mut env = env.to_vec();
        env.push(("UP_TIMEOUT", "240"));
        script_env("up.sh", &[&n.to_string()], &env);
        self.nodes = (1..=n).map(|k| format!("n{k}")).collect();
    }

    pub fn down(&self) {
        script("down.sh", &[]);
    }

    pub fn others(&self, except: &[&str]) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| !except.contains(&n.as_str()))
            .cloned()
            .collect()
    }
}

impl Drop for Testnet {
    fn drop(&mut self) {
        if let Err(e) = try_script("down.sh", &[], &[]) {
            eprintln!("testnet/down.sh failed during cleanup: {e}");
        }
    }
}

/// `kubectl --kubeconfig testnet/run/kubeconfig --context CTX ARGS...`
pub fn kubectl(ctx: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig())
        .args(["--context", ctx, "--request-timeout=10s"])
        .args(args)
        .output()
        .map_err(|e| format!("cannot run kubectl: {e}"))?;
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(describe(
            &format!("kubectl --context {ctx} {}", args.join(" ")),
            &out,
        ))
    }
}

/// `kubectl ... create -f -` of a ConfigMap (JSON manifest on stdin). `kubectl create configmap`
/// would send protobuf, which is a separate API feature; this exercises the replicated state.
pub fn create_configmap(ctx: &str, name: &str, data: &[(&str, &str)]) -> Result<String, String> {
    use std::io::Write;
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    let manifest = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default"},
        "data": data,
    });
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig())
        .args([
            "--context",
            ctx,
            "--request-timeout=10s",
            "create",
            "-f",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run kubectl: {e}"))?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(manifest.to_string().as_bytes())
        .map_err(|e| format!("write manifest: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("kubectl: {e}"))?;
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(describe(
            &format!("kubectl --context {ctx} create -f - (ConfigMap {name})"),
            &out,
        ))
    }
}

pub fn create_configmap_ok(ctx: &str, name: &str, data: &[(&str, &str)]) {
    create_configmap(ctx, name, data).unwrap_or_else(|e| panic!("{e}\n{}", log_tails(40)));
}

pub fn kubectl_ok(ctx: &str, args: &[&str]) -> String {
    kubectl(ctx, args).unwrap_or_else(|e| panic!("{e}\n{}", log_tails(40)))
}

/// One row of `kubectl get nodes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub status: String,
    pub roles: String,
}

/// `kubectl get nodes` through CTX: node name -> (STATUS, ROLES).
pub fn nodes_via(ctx: &str) -> Result<BTreeMap<String, NodeRow>, String> {
    let out = kubectl(ctx, &["get", "nodes", "--no-headers"])?;
    let mut rows = BTreeMap::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 3 {
            return Err(format!("unexpected `get nodes` row via {ctx}: {line:?}"));
        }
        rows.insert(
            cols[0].to_string(),
            NodeRow {
                status: cols[1].to_string(),
                roles: cols[2].to_string(),
            },
        );
    }
    Ok(rows)
}

/// Ok when CTX lists exactly `ready` as Ready and `not_ready` as NotReady (and nothing else).
pub fn expect_view(ctx: &str, ready: &[String], not_ready: &[String]) -> Result<(), String> {
    let rows = nodes_via(ctx)?;
    let mut want = BTreeMap::new();
    for n in ready {
        want.insert(n.clone(), "Ready");
    }
    for n in not_ready {
        want.insert(n.clone(), "NotReady");
    }
    let got: BTreeMap<String, &str> = rows
        .iter()
        .map(|(k, v)| (k.clone(), v.status.as_str()))
        .collect();
    if got == want {
        Ok(())
    } else {
        Err(format!("via {ctx}: got {got:?}, want {want:?}"))
    }
}

/// `shoal status -o json --kubeconfig K --context CTX`, parsed.
pub fn status(ctx: &str) -> Result<Value, String> {
    let out = Command::new(shoal_bin())
        .args(["status", "-o", "json"])
        .arg("--kubeconfig")
        .arg(kubeconfig())
        .args(["--context", ctx])
        .output()
        .map_err(|e| format!("cannot run shoal status: {e}"))?;
    if !out.status.success() {
        return Err(describe(&format!("shoal status --context {ctx}"), &out));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "shoal status --context {ctx}: not JSON ({e}): {}",
            text(&out.stdout)
        )
    })
}

/// The leader CTX names, from `shoal status` and from the ROLES column; Err if they differ.
pub fn leader_via(ctx: &str) -> Result<String, String> {
    let st = status(ctx)?;
    let from_status = st["leader"]
        .as_str()
        .ok_or_else(|| format!("no leader in status via {ctx}: {st}"))?
        .to_string();
    let rows = nodes_via(ctx)?;
    let with_role: Vec<&String> = rows
        .iter()
        .filter(|(_, r)| r.roles.split(',').any(|x| x == "leader"))
        .map(|(n, _)| n)
        .collect();
    if with_role != vec![&from_status] {
        return Err(format!(
            "via {ctx}: status says leader {from_status}, ROLES column says {with_role:?}"
        ));
    }
    Ok(from_status)
}

/// Ok(leader) when every node of `group` names the same leader, and it is in `group`.
pub fn agreed_leader(group: &[String]) -> Result<String, String> {
    let mut seen = BTreeMap::new();
    for n in group {
        seen.insert(n.clone(), leader_via(n)?);
    }
    let leaders: std::collections::BTreeSet<&String> = seen.values().collect();
    match leaders.into_iter().collect::<Vec<_>>().as_slice() {
        [one] if group.contains(one) => Ok((*one).clone()),
        _ => Err(format!("leaders named by {group:?}: {seen:?}")),
    }
}

/// HTTPS request to NODE's API with curl (cluster CA): returns (status code, body).
pub fn curl_api(
    node: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Path>,
) -> (u16, String) {
    curl_api_with(&[], node, method, path, token, body)
}

/// As `curl_api`, with extra curl options first (e.g. `--http1.1`).
pub fn curl_api_with(
    opts: &[&str],
    node: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Path>,
) -> (u16, String) {
    let ca = run_dir().join("n1/data/tls/ca.crt");
    let mut cmd = Command::new("curl");
    cmd.args(opts)
        .args([
            "-sS",
            "--max-time",
            "60",
            "-X",
            method,
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
        ])
        .arg("--cacert")
        .arg(&ca)
        .args(["-H", "Content-Type: application/json"]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if let Some(b) = body {
        cmd.arg("--data-binary").arg(format!("@{}", b.display()));
    }
    cmd.arg(format!("https://{}:6443{path}", node_ip(node)));
    let out = cmd.output().expect("run curl");
    let all = text(&out.stdout);
    let (body, code) = all.rsplit_once('\n').unwrap_or(("", all.as_str()));
    let body = if body.is_empty() {
        text(&out.stderr)
    } else {
        body.to_string()
    };
    let code = code.trim().parse().unwrap_or_else(|_| {
        panic!(
            "curl {method} {path} on {node}: no status code\n{}",
            describe("curl", &out)
        )
    });
    (code, body)
}

pub fn admin_token() -> String {
    std::fs::read_to_string(run_dir().join("n1/data/admin-token"))
        .expect("read testnet/run/n1/data/admin-token")
        .trim()
        .to_string()
}

pub fn join_token() -> String {
    std::fs::read_to_string(run_dir().join("join-token"))
        .expect("read testnet/run/join-token")
        .trim()
        .to_string()
}

/// Whether the agent of NODE is alive (pid file and the process).
pub fn agent_alive(node: &str) -> bool {
    let Ok(pid) = std::fs::read_to_string(run_dir().join(node).join("agent.pid")) else {
        return false;
    };
    Path::new(&format!("/proc/{}", pid.trim())).exists()
        && !std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
            .map(|s| s.split_whitespace().nth(2) == Some("Z"))
            .unwrap_or(true)
}

/// The REVISION column of `kubectl rollout history`.
pub fn history_revisions(history: &str) -> Vec<String> {
    history
        .lines()
        .skip_while(|l| !l.starts_with("REVISION"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}
