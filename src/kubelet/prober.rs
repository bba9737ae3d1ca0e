//! The prober shell: runs the probes the pure [`Tracker`] says are due, concurrently and each
//! under its timeout, and feeds their outcomes back (a changed verdict wakes the kubelet
//! round). Also runs lifecycle hooks for the kubelet. Handlers: exec into the container (joined
//! directly by `runtime::nsexec`, or through `runc exec` for what that path refuses); httpGet
//! (hyper, one connection per probe) and tcpSocket to the pod's IP, or, when pods have no
//! network of their own, from inside the sandbox's network namespace (a short-lived thread that
//! `setns`es there and connects).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, Notify, Semaphore};

use super::plan::outcome::Outcome;
use super::plan::probe::{Handler, ProbeRun, RunningAttempt, Tracker};
use super::plan::DesiredPod;
use crate::runtime::{AttemptState, ObservedPod, RuntimeConfig};

/// At most this many probes run at once (the rest wait for a slot, then run).
pub const MAX_PARALLEL_PROBES: usize = 32;
/// Output of an exec probe or hook kept in its failure message.
pub const MAX_OUTPUT: usize = 1024;

/// Where a container's handlers run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The runc id of the attempt (exec).
    pub container_id: String,
    /// The pod's IP (network handlers), when pods get the pod network.
    pub ip: Option<Ipv4Addr>,
    /// The sandbox's network namespace, when they do not: connections start inside it.
    pub netns: Option<PathBuf>,
}

/// Where the handlers of attempt `restart` of `container` in `pod` run.
pub fn target(config: &RuntimeConfig, pod: &ObservedPod, container: &str, restart: u32) -> Target {
    Target {
        container_id: crate::runtime::pods::container_id(&pod.meta.key, container, restart),
        ip: pod.network.as_ref().and_then(|n| n.address).map(|a| a.ip),
        // Without the pod network, and for a hostNetwork pod (the sandbox is then in the
        // node's namespace): from inside the sandbox's namespace, to its loopback.
        netns: match (&config.cni, pod.sandbox) {
            (None, Some(s)) => Some(PathBuf::from(format!("/proc/{}/ns/net", s.pid))),
            (Some(_), Some(s)) if pod.meta.host_network => {
                Some(PathBuf::from(format!("/proc/{}/ns/net", s.pid)))
            }
            _ => None,
        },
    }
}

#[derive(Default)]
struct State {
    tracker: Tracker,
    targets: BTreeMap<(String, String), Target>,
}

/// The node's probes: the tracker and where each container's probes go, shared by the
/// kubelet round and the prober loop.
pub struct Probes {
    state: Mutex<State>,
    changed: Notify,
}

impl Default for Probes {
    fn default() -> Self {
        Probes {
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        }
    }
}

impl Probes {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tracks the probes of every running attempt of a desired pod (called each round).
    pub fn sync(
        &self,
        config: &RuntimeConfig,
        desired: &BTreeMap<String, DesiredPod>,
        observed: &BTreeMap<String, ObservedPod>,
    ) {
        let mut running = Vec::new();
        let mut targets = BTreeMap::new();
        for (key, d) in desired {
            let Some(o) = observed.get(key) else { continue };
            for c in d.probed_containers() {
                let probed = c.startup_probe.is_some()
                    || c.liveness_probe.is_some()
                    || c.readiness_probe.is_some();
                let Some(oc) = o.containers.get(&c.name).filter(|_| probed) else {
                    continue;
                };
                if let AttemptState::Running { started_at } = oc.latest.state {
                    running.push(RunningAttempt {
                        pod: key.clone(),
                        container: c.clone(),
                        restart: oc.latest.restart,
                        started_at,
                    });
                    targets.insert(
                        (key.clone(), c.name.clone()),
                        target(config, o, &c.name, oc.latest.restart),
                    );
                }
            }
        }
        let mut s = self.state();
        s.tracker.sync(&running);
        s.targets = targets;
        drop(s);
        self.changed.notify_one();
    }

    /// A copy of the tracker for one planning round.
    pub fn snapshot(&self) -> Tracker {
        self.state().tracker.clone()
    }
}

/// Runs due probes until the task is dropped; `wake` gets a message whenever a verdict the
/// planner reads changed.
pub async fn run(probes: Arc<Probes>, config: RuntimeConfig, wake: mpsc::Sender<()>) {
    let permits = Arc::new(Semaphore::new(MAX_PARALLEL_PROBES));
    let config = Arc::new(config);
    loop {
        let now = chrono::Utc::now();
        let (runs, next) = {
            let mut s = probes.state();
            let runs: Vec<(ProbeRun, Option<Target>)> = s
                .tracker
                .due(now)
                .into_iter()
                .map(|r| {
                    let t = s.targets.get(&(r.id.pod.clone(), r.id.container.clone()));
                    let t = t.cloned();
                    (r, t)
                })
                .collect();
            (runs, s.tracker.next_due())
        };
        for (run, target) in runs {
            let (probes, config, wake, permits) = (
                probes.clone(),
                config.clone(),
                wake.clone(),
                permits.clone(),
            );
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await;
                let timeout = Duration::from_secs(u64::try_from(run.timeout).unwrap_or(1));
                let outcome = match (&run.handler, &target) {
                    (Err(e), _) => Err(e.clone()),
                    (Ok(_), None) => Err("the container is not running".into()),
                    (Ok(h), Some(t)) => run_handler(&config, h, t, timeout).await,
                };
                let changed = probes
                    .state()
                    .tracker
                    .record(&run.id, outcome, chrono::Utc::now());
                probes.changed.notify_one();
                if changed {
                    let _ = wake.try_send(());
                }
            });
        }
        let wait = next
            .map(|t| (t - chrono::Utc::now()).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            _ = probes.changed.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// A preStop hook to run before SIGTERM, bounded by the stop's grace period.
pub struct PreStop {
    pub handler: Result<Handler, String>,
    pub target: Target,
    pub grace: i64,
    pub pod: super::plan::EventTarget,
    pub container: String,
    pub handle: tokio::runtime::Handle,
}

impl PreStop {
    /// Runs the hook (blocking: called from the kubelet's blocking action); a failure or a
    /// hook outliving the grace period is reported for a `FailedPreStopHook` event.
    pub fn run(self, config: &RuntimeConfig) -> Option<Outcome> {
        let budget = Duration::from_secs(u64::try_from(self.grace).unwrap_or(0));
        let result = match &self.handler {
            Err(e) => Err(e.clone()),
            Ok(h) => self
                .handle
                .block_on(run_handler(config, h, &self.target, budget)),
        };
        let error = result.err()?;
        let hook = match &self.handler {
            Ok(Handler::Exec { command }) => format!("Exec lifecycle hook ({command:?})"),
            Ok(Handler::Http { path, .. }) => format!("HTTP lifecycle hook ({path})"),
            _ => "Lifecycle hook".to_string(),
        };
        Some(Outcome::PreStopFailed {
            target: self.pod,
            container: self.container,
            hook,
            error,
        })
    }
}

/// Runs a probe or hook handler against `target`, within `timeout`. `Err`: why it failed, as
/// the `Unhealthy` and hook events show it.
pub async fn run_handler(
    config: &RuntimeConfig,
    handler: &Handler,
    target: &Target,
    timeout: Duration,
) -> Result<(), String> {
    match handler {
        Handler::Exec { command } => exec(config, &target.container_id, command, timeout).await,
        Handler::Http {
            scheme,
            host,
            port,
            path,
            headers,
        } => {
            if !scheme.eq_ignore_ascii_case("HTTP") {
                return Err(format!("scheme {scheme} is not supported (HTTP only)"));
            }
            http_get(target, host.as_deref(), *port, path, headers, timeout).await
        }
        Handler::Tcp { host, port } => {
            let addr = address(target, host.as_deref(), *port).await?;
            connect(target, addr, timeout)
                .await
                .map(drop)
                .map_err(|e| format!("dial tcp {addr}: {e}"))
        }
    }
}

fn truncate(out: &[u8]) -> String {
    let text = String::from_utf8_lossy(&out[..out.len().min(MAX_OUTPUT)]);
    let mut text = text.trim().to_string();
    if out.len() > MAX_OUTPUT {
        text.push_str(" …(truncated)");
    }
    text
}

/// Reads at most `MAX_OUTPUT + 1` bytes of `from` and drains (drops) the rest, so a probe that
/// prints without end costs a pipe buffer, not memory.
async fn read_bounded(from: Option<impl tokio::io::AsyncRead + Unpin>) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let Some(mut from) = from else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = (MAX_OUTPUT + 1).saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// The exit status and the bounded (see [`read_bounded`]) outputs of a process.
async fn bounded_output(
    stdout: Option<impl tokio::io::AsyncRead + Unpin>,
    stderr: Option<impl tokio::io::AsyncRead + Unpin>,
    wait: impl std::future::Future<Output = std::io::Result<std::process::ExitStatus>>,
) -> std::io::Result<std::process::Output> {
    let (stdout, stderr, status) = tokio::join!(read_bounded(stdout), read_bounded(stderr), wait);
    Ok(std::process::Output {
        status: status?,
        stdout,
        stderr,
    })
}

/// `command` run in container `id`, its outputs bounded: joined directly
/// (`runtime::nsexec`); a container that path cannot join gets `runc exec`. Dropping the
/// future kills the process.
async fn run_in(
    config: &RuntimeConfig,
    id: &str,
    command: &[String],
) -> Result<std::process::Output, String> {
    use crate::runtime::nsexec;
    let program = command.first().map_or("", |c| c.as_str());
    let joined = match nsexec::attached(&config.runc_root, id) {
        Ok(attached) => nsexec::spawn_in(&attached, command)
            .await
            .map_err(|e| match e {
                nsexec::SpawnError::Exec(e) => Err(format!("exec: {program:?}: {e}")),
                join => Ok(join.to_string()),
            }),
        Err(Ok(refused)) => Err(Ok(refused.to_string())),
        Err(Err(e)) => Err(Ok(format!("joining the container: {e}"))),
    };
    match joined {
        Ok(mut child) => {
            let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
            bounded_output(stdout, stderr, child.wait())
                .await
                .map_err(|e| format!("exec: {program:?}: {e}"))
        }
        Err(Err(exec_failed)) => Err(exec_failed),
        Err(Ok(why)) => {
            tracing::debug!(id, %why, "exec probe through runc exec");
            let mut cmd = tokio::process::Command::new(&config.runtime_binary);
            cmd.arg("--root")
                .arg(&config.runc_root)
                .arg("exec")
                .arg(id)
                .args(command)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            let via = config.runtime_binary.display().to_string();
            let mut child = cmd.spawn().map_err(|e| format!("{via}: {e}"))?;
            let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
            bounded_output(stdout, stderr, child.wait())
                .await
                .map_err(|e| format!("{via}: {e}"))
        }
    }
}

/// `command` in the container; exit code 0 succeeds.
async fn exec(
    config: &RuntimeConfig,
    id: &str,
    command: &[String],
    timeout: Duration,
) -> Result<(), String> {
    let shown = command.join(" ");
    match tokio::time::timeout(timeout, run_in(config, id, command)).await {
        Err(_) => Err(format!(
            "command \"{shown}\" timed out after {}s",
            timeout.as_secs()
        )),
        Ok(Err(e)) => Err(e),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let mut all = out.stdout;
            all.extend_from_slice(&out.stderr);
            let code = out
                .status
                .code()
                .map_or_else(|| "a signal".to_string(), |c| c.to_string());
            let text = truncate(&all);
            Err(if text.is_empty() {
                format!("command \"{shown}\" exited with {code}")
            } else {
                format!("command \"{shown}\" exited with {code}: {text}")
            })
        }
    }
}

/// The address a network handler connects to: `host` (an IP, or a name resolved by the
/// node), else the pod's IP, else (no pod network) the pod's loopback.
async fn address(target: &Target, host: Option<&str>, port: u16) -> Result<SocketAddr, String> {
    match host {
        Some(h) => {
            if let Ok(ip) = h.parse::<IpAddr>() {
                return Ok(SocketAddr::new(ip, port));
            }
            let name = format!("{h}:{port}");
            tokio::net::lookup_host(name.clone())
                .await
                .map_err(|e| format!("resolving {name}: {e}"))?
                .next()
                .ok_or_else(|| format!("{name} has no address"))
        }
        None => match (target.ip, &target.netns) {
            (Some(ip), _) => Ok(SocketAddr::new(ip.into(), port)),
            (None, Some(_)) => Ok(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port)),
            (None, None) => Err("the pod has no IP yet".into()),
        },
    }
}

/// A TCP connection to `addr`, from the sandbox's network namespace when the target has one.
async fn connect(
    target: &Target,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<tokio::net::TcpStream, String> {
    let Some(netns) = target.netns.clone() else {
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Err(_) => Err("i/o timeout".into()),
            Ok(r) => r.map_err(|e| format!("connect: {e}")),
        };
    };
    // A socket belongs to the namespace it is created in: a fresh thread (never a pool thread,
    // its namespace would stay changed) enters the sandbox's and connects there.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("probe-netns".into())
        .spawn(move || {
            let result = (|| -> Result<std::net::TcpStream, String> {
                let ns =
                    std::fs::File::open(&netns).map_err(|e| format!("{}: {e}", netns.display()))?;
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("entering the pod's network namespace: {e}"))?;
                let stream = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::TimedOut {
                        "i/o timeout".to_string()
                    } else {
                        format!("connect: {e}")
                    }
                })?;
                stream
                    .set_nonblocking(true)
                    .map_err(|e| format!("connect: {e}"))?;
                Ok(stream)
            })();
            let _ = tx.send(result);
        })
        .map_err(|e| format!("starting a probe thread: {e}"))?;
    let stream = rx
        .await
        .map_err(|_| "the probe thread ended early".to_string())??;
    tokio::net::TcpStream::from_std(stream).map_err(|e| format!("connect: {e}"))
}

/// GET `path`; a status in 200–399 succeeds (redirects are not followed: a 3xx is a success,
/// as in Kubernetes for a redirect to another host).
async fn http_get(
    target: &Target,
    host: Option<&str>,
    port: u16,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<(), String> {
    let addr = address(target, host, port).await?;
    let url = format!("http://{addr}{path}");
    let attempt = async {
        let stream = connect(target, addr, timeout)
            .await
            .map_err(|e| format!("dial tcp {addr}: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        let conn = tokio::spawn(conn);
        let mut req = hyper::Request::get(path)
            .header(hyper::header::USER_AGENT, "kube-probe/1.31")
            .header(hyper::header::ACCEPT, "*/*");
        let mut has_host = false;
        for (name, value) in headers {
            has_host |= name.eq_ignore_ascii_case("host");
            req = req.header(name.as_str(), value.as_str());
        }
        if !has_host {
            req = req.header(hyper::header::HOST, addr.to_string());
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("bad request: {e}"))?;
        let result = sender.send_request(req).await.map_err(|e| e.to_string());
        conn.abort();
        let status = result?.status().as_u16();
        if (200..400).contains(&status) {
            Ok(())
        } else {
            Err(format!("HTTP probe failed with statuscode: {status}"))
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => Err(format!(
            "Get \"{url}\": context deadline exceeded (timeout {}s)",
            timeout.as_secs()
        )),
        Ok(Err(e)) if e.starts_with("HTTP probe failed") => Err(e),
        Ok(Err(e)) => Err(format!("Get \"{url}\": {e}")),
        Ok(Ok(())) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> Target {
        Target {
            container_id: "none".into(),
            ip: Some(Ipv4Addr::LOCALHOST),
            netns: None,
        }
    }

    fn config() -> RuntimeConfig {
        RuntimeConfig::from_env(std::path::Path::new("/nonexistent"), "n1", false)
    }

    /// A one-shot HTTP server answering `status`; returns its port and the request it saw.
    async fn server(status: u16) -> (u16, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let h = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
            s.write_all(reply.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&buf[..n]).to_string()
        });
        (port, h)
    }

    #[tokio::test]
    async fn http_status_ranges_and_headers() {
        let (port, seen) = server(302).await;
        let h = Handler::Http {
            scheme: "HTTP".into(),
            host: None,
            port,
            path: "/healthz".into(),
            headers: vec![("X-Probe".into(), "yes".into())],
        };
        let t = Duration::from_secs(2);
        assert_eq!(run_handler(&config(), &h, &local(), t).await, Ok(()));
        let req = seen.await.unwrap().to_lowercase();
        assert!(req.starts_with("get /healthz http/1.1"), "{req}");
        assert!(req.contains("x-probe: yes") && req.contains("user-agent: kube-probe/"));
        let (port, _) = server(503).await;
        let h = Handler::Http {
            scheme: "HTTP".into(),
            host: None,
            port,
            path: "/".into(),
            headers: vec![],
        };
        assert_eq!(
            run_handler(&config(), &h, &local(), t).await,
            Err("HTTP probe failed with statuscode: 503".into())
        );
    }

    #[tokio::test]
    async fn tcp_connects_and_reports_refusals() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let t = Duration::from_secs(2);
        let h = Handler::Tcp { host: None, port };
        assert_eq!(run_handler(&config(), &h, &local(), t).await, Ok(()));
        drop(l);
        let err = run_handler(&config(), &h, &local(), t).await.unwrap_err();
        assert!(
            err.starts_with(&format!("dial tcp 127.0.0.1:{port}: connect:")),
            "{err}"
        );
        let no_ip = Target {
            ip: None,
            ..local()
        };
        assert_eq!(
            run_handler(&config(), &h, &no_ip, t).await,
            Err("the pod has no IP yet".into())
        );
    }

    #[test]
    fn output_is_read_bounded() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut cmd = tokio::process::Command::new("sh");
        // 64 MiB on stdout, a little on stderr, then a failure.
        cmd.args(["-c", "head -c 67108864 /dev/zero; echo oops >&2; exit 3"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let out = rt
            .block_on(async {
                let mut child = cmd.spawn().unwrap();
                let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
                bounded_output(stdout, stderr, child.wait()).await
            })
            .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout.len(), MAX_OUTPUT + 1);
        assert_eq!(out.stderr, b"oops\n");
    }

    #[test]
    fn output_is_truncated() {
        let long = vec![b'x'; MAX_OUTPUT * 2];
        let t = truncate(&long);
        assert!(t.ends_with("(truncated)") && t.len() < MAX_OUTPUT + 20);
        assert_eq!(truncate(b" ok \n"), "ok");
    }
}
