//! `kubectl exec` on the agent: a session in a running container of this node is a `runc exec`
//! child (stdio piped, or a pseudo-terminal for `-t`); a session for a pod on another node is
//! relayed to that node's API over a WebSocket (the same channel protocol, the cluster CA, the
//! internal token). Either way the API gets an [`ExecSession`]: input and output channels.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::api::exec::{
    decode_output, encode_input, ExecExit, ExecInput, ExecOutput, ExecRequest, ExecSession,
    PROTOCOLS,
};
use crate::api::BackendError;
use crate::model::workload;
use crate::runtime::observe::AttemptState;
use crate::runtime::RuntimeConfig;
use crate::state::Shared;

/// Queued messages each way before the producer waits.
const QUEUE: usize = 64;
/// After the client hangs up: SIGTERM to the command, then SIGKILL this much later.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// Connecting to the node that runs the pod.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a session for `req` wherever the pod runs.
pub async fn open(
    shared: Arc<Shared>,
    runtime: RuntimeConfig,
    req: ExecRequest,
) -> Result<ExecSession, BackendError> {
    let Some((node, api_addr)) = pod_route(&shared, &req.namespace, &req.pod)? else {
        return local(runtime, req).await;
    };
    let token = shared.identity.internal_api_token();
    remote(&api_addr, &runtime.data_dir, &token, req)
        .await
        .map_err(|e| e.into_backend(&node))
}

/// Where a stream of pod `namespace/pod` (exec, port-forward) is served: `None` here, or the
/// node that runs it and that node's API address. A node without a record is unavailable (503).
pub(super) fn pod_route(
    shared: &Shared,
    namespace: &str,
    pod: &str,
) -> Result<Option<(String, String)>, BackendError> {
    let node = pod_node(shared, namespace, pod)?;
    if node == shared.node_name {
        return Ok(None);
    }
    let record = shared
        .read(|d| d.node(&node))
        .ok()
        .flatten()
        .ok_or_else(|| {
            BackendError::Unavailable(format!("node {node} has no record (deleted?)"))
        })?;
    Ok(Some((node, record.api_addr)))
}

/// The node a pod runs on: its binding, or `spec.nodeName` for pods placed by their author.
pub fn pod_node(shared: &Shared, namespace: &str, pod: &str) -> Result<String, BackendError> {
    shared.read(|doc| {
        let object = doc
            .get_object(workload::PODS, Some(namespace), pod)
            .ok()
            .flatten()
            .ok_or_else(|| BackendError::NotFound(format!("pods \"{pod}\"")))?;
        let binding = doc.binding(namespace, pod).ok().flatten();
        binding
            .map(|b| b.node)
            .or_else(|| {
                object
                    .pointer("/spec/nodeName")
                    .and_then(|n| n.as_str())
                    .map(String::from)
            })
            .ok_or_else(|| {
                BackendError::Invalid(format!(
                    "pod {namespace}/{pod} is not scheduled to a node yet"
                ))
            })
    })
}

/// The runc id of the running attempt of `container` in pod `namespace/pod` on this node.
fn running_container(config: &RuntimeConfig, req: &ExecRequest) -> Result<String, BackendError> {
    let pods = crate::runtime::observe::observe_all(&config.pods_dir());
    let pod = pods
        .values()
        .find(|p| p.meta.namespace == req.namespace && p.meta.name == req.pod)
        .ok_or_else(|| {
            BackendError::Invalid(format!(
                "pod {}/{} has no sandbox on this node yet",
                req.namespace, req.pod
            ))
        })?;
    let c = pod.containers.get(&req.container).ok_or_else(|| {
        BackendError::Invalid(format!(
            "container {} of pod {}/{} has not started",
            req.container, req.namespace, req.pod
        ))
    })?;
    match c.latest.state {
        AttemptState::Running { .. } => Ok(crate::runtime::pods::container_id(
            &pod.meta.key,
            &req.container,
            c.latest.restart,
        )),
        _ => Err(BackendError::Invalid(format!(
            "container {} is not running in pod {}/{}",
            req.container, req.namespace, req.pod
        ))),
    }
}

/// A `runc exec` child on this node.
async fn local(config: RuntimeConfig, req: ExecRequest) -> Result<ExecSession, BackendError> {
    let (config, req, id) = tokio::task::spawn_blocking(move || {
        let id = running_container(&config, &req);
        (config, req, id)
    })
    .await
    .map_err(|e| BackendError::Unavailable(format!("exec: {e}")))?;
    let id = id?;
    let mut cmd = tokio::process::Command::new(&config.runtime_binary);
    cmd.arg("--root").arg(&config.runc_root).arg("exec");
    // With a terminal: runc in the foreground with `--tty` makes the container's pty (its own
    // /dev/pts, so `tty` and job control work) and copies between it and runc's stdio, which
    // is our pty's slave. A resize goes to our pty, then SIGWINCH tells runc to copy the size.
    // (runc's --console-socket would hand over the container's pty directly, but only with
    // --detach, and then nobody could wait for the exit code.)
    let pty = if req.tty {
        let pty = nix::pty::openpty(None, None)
            .map_err(|e| BackendError::Unavailable(format!("openpty: {e}")))?;
        let slave = std::fs::File::from(pty.slave);
        let clone = |f: &std::fs::File| {
            f.try_clone()
                .map_err(|e| BackendError::Unavailable(format!("pty: {e}")))
        };
        cmd.arg("--tty");
        cmd.stdin(clone(&slave)?)
            .stdout(clone(&slave)?)
            .stderr(slave);
        Some(pty.master)
    } else {
        let pipe = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
        cmd.stdin(pipe(req.stdin))
            .stdout(pipe(req.stdout))
            .stderr(pipe(req.stderr));
        None
    };
    cmd.arg(&id).args(&req.command).kill_on_drop(true);
    let (in_tx, in_rx) = mpsc::channel(QUEUE);
    let (out_tx, out_rx) = mpsc::channel(QUEUE);
    if let Some(master) = pty {
        tokio::spawn(start_with_terminal(
            cmd,
            config.runtime_binary.clone(),
            master,
            req.stdin,
            in_rx,
            out_tx,
        ));
        return Ok(ExecSession {
            input: in_tx,
            output: out_rx,
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        BackendError::Unavailable(format!("{}: {e}", config.runtime_binary.display()))
    })?;
    let mut readers = tokio::task::JoinSet::new();
    if let Some(out) = child.stdout.take() {
        readers.spawn(pump(Box::new(out), out_tx.clone(), ExecOutput::Stdout));
    }
    if let Some(err) = child.stderr.take() {
        readers.spawn(pump(Box::new(err), out_tx.clone(), ExecOutput::Stderr));
    }
    let stdin = child
        .stdin
        .take()
        .map(|s| Box::new(s) as Box<dyn AsyncWrite + Send + Unpin>);
    tokio::spawn(supervise(child, readers, in_rx, stdin, None, out_tx));
    Ok(ExecSession {
        input: in_tx,
        output: out_rx,
    })
}

/// How long a session with a terminal waits for the client's first resize before it starts
/// the command anyway.
const FIRST_RESIZE_WAIT: Duration = Duration::from_secs(1);

/// Starts a command with a terminal once the client's terminal size is known: kubectl sends it
/// as soon as the session opens, and a command started before it arrives sees a terminal of
/// 0 × 0 (busybox `stty size` then fails). The size is set on our pty before `runc exec`
/// starts, which copies it to the container's terminal. Input that comes first is delivered
/// once the command runs; a client that hangs up before anything starts nothing.
async fn start_with_terminal(
    mut cmd: tokio::process::Command,
    binary: PathBuf,
    master: OwnedFd,
    stdin: bool,
    mut input: mpsc::Receiver<ExecInput>,
    out: mpsc::Sender<ExecOutput>,
) {
    let first = match tokio::time::timeout(FIRST_RESIZE_WAIT, input.recv()).await {
        Ok(None) => return,
        Ok(Some(ExecInput::Resize { width, height })) => {
            set_winsize(&master, width, height);
            None
        }
        Ok(Some(other)) => Some(other),
        Err(_) => None,
    };
    let child = cmd.spawn();
    drop(cmd); // closes our copies of the pty slave
    let fail = |message: String| async {
        let _ = out.send(ExecOutput::Exit(ExecExit::Error(message))).await;
    };
    let child = match child {
        Ok(child) => child,
        Err(e) => return fail(format!("{}: {e}", binary.display())).await,
    };
    let (read, mut write, fd) = match pty_halves(master, stdin) {
        Ok(halves) => halves,
        Err(e) => return fail(format!("pty: {e}")).await,
    };
    match first {
        Some(ExecInput::Stdin(bytes)) => {
            if let Some(w) = write.as_mut() {
                if w.write_all(&bytes).await.is_err() || w.flush().await.is_err() {
                    write = None;
                }
            }
        }
        Some(ExecInput::CloseStdin) => write = None,
        Some(ExecInput::Resize { .. }) | None => {}
    }
    let mut readers = tokio::task::JoinSet::new();
    readers.spawn(pump(read, out.clone(), ExecOutput::Stdout));
    supervise(child, readers, input, write, Some(fd), out).await;
}

/// The read and write halves of a pty master (blocking reads on tokio's blocking pool) and the
/// fd for resizes. Without stdin, nothing is written.
#[allow(clippy::type_complexity)]
fn pty_halves(
    master: OwnedFd,
    stdin: bool,
) -> std::io::Result<(
    Box<dyn AsyncRead + Send + Unpin>,
    Option<Box<dyn AsyncWrite + Send + Unpin>>,
    Arc<OwnedFd>,
)> {
    let resize = Arc::new(master.try_clone()?);
    let read = tokio::fs::File::from_std(std::fs::File::from(master.try_clone()?));
    let write = stdin
        .then(|| master.try_clone().map(std::fs::File::from))
        .transpose()?
        .map(|f| Box::new(tokio::fs::File::from_std(f)) as Box<dyn AsyncWrite + Send + Unpin>);
    drop(master);
    Ok((Box::new(read), write, resize))
}

/// Copies one output stream into the session until EOF (a pty reads EIO once the command
/// and everything holding the terminal have exited).
async fn pump(
    mut from: Box<dyn AsyncRead + Send + Unpin>,
    to: mpsc::Sender<ExecOutput>,
    wrap: fn(Bytes) -> ExecOutput,
) {
    let mut buf = vec![0u8; 32 << 10];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to
                    .send(wrap(Bytes::copy_from_slice(&buf[..n])))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Feeds input to the command, answers resizes, and reports the exit once the command has
/// exited and its output is drained. The client hanging up (input closed) terminates it.
async fn supervise(
    mut child: tokio::process::Child,
    mut readers: tokio::task::JoinSet<()>,
    mut input: mpsc::Receiver<ExecInput>,
    mut stdin: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    winsize: Option<Arc<OwnedFd>>,
    out: mpsc::Sender<ExecOutput>,
) {
    let mut hung_up = false;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            msg = input.recv(), if !hung_up => match msg {
                Some(ExecInput::Stdin(bytes)) => {
                    if let Some(w) = stdin.as_mut() {
                        if w.write_all(&bytes).await.is_err() || w.flush().await.is_err() {
                            stdin = None;
                        }
                    }
                }
                Some(ExecInput::CloseStdin) => stdin = None,
                Some(ExecInput::Resize { width, height }) => {
                    if let Some(fd) = &winsize {
                        set_winsize(fd, width, height);
                        if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                            let _ = nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(pid),
                                nix::sys::signal::Signal::SIGWINCH,
                            );
                        }
                    }
                }
                None => {
                    hung_up = true;
                    stdin = None;
                    terminate(&mut child).await;
                }
            },
        }
    };
    drop(stdin);
    // Output still buffered in the pipes is delivered, but a background process holding them
    // open does not keep the session alive for long.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while readers.join_next().await.is_some() {}
    })
    .await;
    readers.abort_all();
    let exit = match status {
        Ok(s) => {
            use std::os::unix::process::ExitStatusExt;
            ExecExit::Code(s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(9)))
        }
        Err(e) => ExecExit::Error(format!("waiting for the command: {e}")),
    };
    let _ = out.send(ExecOutput::Exit(exit)).await;
}

/// SIGTERM to `runc exec` (which forwards it to the command), SIGKILL after [`KILL_GRACE`].
async fn terminate(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(KILL_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = child.start_kill();
    }
}

fn set_winsize(fd: &OwnedFd, width: u16, height: u16) {
    let ws = nix::libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer; the fd is a pty master we own.
    unsafe {
        nix::libc::ioctl(fd.as_raw_fd(), nix::libc::TIOCSWINSZ, &ws);
    }
}

pub(super) enum RemoteError {
    /// The node answered with an error (pod not there, container not running...).
    Refused(String),
    /// The node could not be reached.
    Unreachable(String),
}

impl RemoteError {
    /// What the client is told: the node's own refusal as it gave it (400), an unreachable
    /// `node` as unavailable (503: retry later).
    pub(super) fn into_backend(self, node: &str) -> BackendError {
        match self {
            RemoteError::Refused(m) => BackendError::Invalid(m),
            RemoteError::Unreachable(m) => BackendError::Unavailable(format!(
                "node {node} (running the pod) is unreachable: {m}"
            )),
        }
    }
}

/// A WebSocket connected to `path_and_query` on the agent API at `api_addr` (`IP:PORT`), over
/// TLS trusting only the cluster CA, with the internal token, asking for subprotocol
/// `protocol`. Shared by the relays of exec and port-forward.
pub(super) async fn connect_websocket(
    api_addr: &str,
    data_dir: &Path,
    token: &str,
    path_and_query: &str,
    protocol: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    RemoteError,
> {
    let unreachable = |e: &dyn std::fmt::Display| RemoteError::Unreachable(e.to_string());
    let tls = tls_connector(data_dir).map_err(|e| unreachable(&e))?;
    let host = api_addr
        .rsplit_once(':')
        .map(|(h, _)| h.trim_matches(['[', ']']))
        .unwrap_or(api_addr)
        .to_string();
    let server_name = rustls::pki_types::ServerName::try_from(host)
        .map_err(|e| unreachable(&format!("server name of {api_addr}: {e}")))?;
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(api_addr).await?;
        let _ = tcp.set_nodelay(true);
        tls.connect(server_name, tcp).await
    };
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| unreachable(&"connection timed out"))?
        .map_err(|e| unreachable(&e))?;
    let url = format!("wss://{api_addr}{path_and_query}");
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| unreachable(&format!("URL {url}: {e}")))?;
    let headers = request.headers_mut();
    let value = |s: String| {
        s.parse()
            .map_err(|_| RemoteError::Unreachable("bad header value".into()))
    };
    headers.insert("authorization", value(format!("Bearer {token}"))?);
    headers.insert("sec-websocket-protocol", value(protocol.to_string())?);
    let (ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                let body = resp.body().as_deref().unwrap_or_default();
                let message = serde_json::from_slice::<serde_json::Value>(body)
                    .ok()
                    .and_then(|v| v["message"].as_str().map(String::from))
                    .unwrap_or_else(|| format!("HTTP {}", resp.status()));
                RemoteError::Refused(message)
            }
            other => unreachable(&other),
        })?;
    Ok(ws)
}

/// A session relayed to the agent at `api_addr` (`IP:PORT`).
async fn remote(
    api_addr: &str,
    data_dir: &Path,
    token: &str,
    req: ExecRequest,
) -> Result<ExecSession, RemoteError> {
    let path = format!(
        "/api/v1/namespaces/{}/pods/{}/exec?{}",
        req.namespace,
        req.pod,
        url_query(&req)
    );
    let ws = connect_websocket(api_addr, data_dir, token, &path, PROTOCOLS[0]).await?;
    let (in_tx, mut in_rx) = mpsc::channel::<ExecInput>(QUEUE);
    let (out_tx, out_rx) = mpsc::channel(QUEUE);
    tokio::spawn(async move {
        let (mut sink, mut stream) = ws.split();
        let mut input_open = true;
        loop {
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(Ok(Message::Binary(b))) => {
                        if let Some(out) = decode_output(&b) {
                            let last = matches!(out, ExecOutput::Exit(_));
                            if out_tx.send(out).await.is_err() || last {
                                break;
                            }
                        }
                    }
                    Some(Ok(Message::Close(_))) | None => {
                        let _ = out_tx.send(ExecOutput::Exit(ExecExit::Error(
                            "the node running the pod closed the session".into(),
                        ))).await;
                        break;
                    }
                    Some(Err(e)) => {
                        let _ = out_tx.send(ExecOutput::Exit(ExecExit::Error(format!(
                            "the session with the node running the pod failed: {e}"
                        )))).await;
                        break;
                    }
                    Some(Ok(_)) => {}
                },
                input = in_rx.recv(), if input_open => match input {
                    Some(i) => {
                        if sink.send(Message::Binary(encode_input(&i).into())).await.is_err() {
                            input_open = false;
                        }
                    }
                    None => {
                        // The client hung up: so do we; the node terminates the command.
                        let _ = sink.send(Message::Close(None)).await;
                        break;
                    }
                },
            }
        }
    });
    Ok(ExecSession {
        input: in_tx,
        output: out_rx,
    })
}

/// The exec query for `req`, form-encoded (`form_urlencoded`).
fn url_query(req: &ExecRequest) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for c in &req.command {
        query.append_pair("command", c);
    }
    query.append_pair("container", &req.container);
    for (k, on) in [
        ("stdin", req.stdin),
        ("stdout", req.stdout),
        ("stderr", req.stderr),
        ("tty", req.tty),
    ] {
        if on {
            query.append_pair(k, "true");
        }
    }
    query.finish()
}

/// TLS to other agents' APIs, trusting only the cluster CA.
fn tls_connector(data_dir: &Path) -> Result<tokio_rustls::TlsConnector, String> {
    crate::install_crypto_provider();
    let path: PathBuf = data_dir.join("tls/ca.crt");
    let pem = std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_round_trips_through_the_api_parser() {
        let req = ExecRequest {
            namespace: "d".into(),
            pod: "p".into(),
            container: "c 1".into(),
            command: vec!["sh".into(), "-c".into(), "echo a&b=c %2F ü".into()],
            stdin: true,
            stdout: true,
            stderr: false,
            tty: false,
        };
        let uri: axum::http::Uri = format!("/x?{}", url_query(&req)).parse().unwrap();
        let q = crate::api::exec::parse_query(&uri).unwrap();
        assert_eq!(q.command, req.command);
        assert_eq!(q.container.as_deref(), Some("c 1"));
        assert_eq!(q.flags, [true, true, false, false]);
    }
}
