//! `kubectl port-forward` on the agent: a forward to a pod of this node is a TCP connection
//! made inside the pod's network namespace to `localhost:PORT` (as the kubelet does, so a
//! server bound to the pod's loopback is reachable), from a short-lived thread that enters the
//! sandbox's namespace; a forward to a pod on another node is relayed to that node's API over a
//! WebSocket (the channel protocol `v5.channel.k8s.io`, one socket per forwarded connection, its
//! close signal carrying the client's half-close). Either way the API gets a
//! [`ForwardSession`]: input and output channels.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::exec::{connect_websocket, pod_route, RemoteError};
use crate::api::portforward::{
    ForwardInput, ForwardOutput, ForwardRequest, ForwardSession, CHANNEL_PROTOCOLS, QUEUE,
};
use crate::api::BackendError;
use crate::runtime::RuntimeConfig;
use crate::state::Shared;

/// Connecting to the port inside the pod.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read from the pod at once.
const READ_CHUNK: usize = 32 << 10;
/// Most bytes of a relayed error message kept.
const MAX_ERROR: usize = 64 << 10;

/// Opens a forward for `req` wherever the pod runs.
pub async fn open(
    shared: Arc<Shared>,
    runtime: RuntimeConfig,
    req: ForwardRequest,
) -> Result<ForwardSession, BackendError> {
    let Some((node, api_addr)) = pod_route(&shared, &req.namespace, &req.pod)? else {
        return local(runtime, req).await;
    };
    let token = shared.identity.internal_api_token();
    remote(&api_addr, &runtime, &token, &req)
        .await
        .map_err(|e| e.into_backend(&node))
}

/// A connection to `localhost:PORT` in the network namespace of the pod's sandbox.
async fn local(config: RuntimeConfig, req: ForwardRequest) -> Result<ForwardSession, BackendError> {
    let tcp = tokio::task::spawn_blocking(move || connect_in_pod(&config, &req))
        .await
        .map_err(|e| BackendError::Invalid(format!("port-forward: {e}")))??;
    let tcp =
        tokio::net::TcpStream::from_std(tcp).map_err(|e| BackendError::Invalid(e.to_string()))?;
    let (in_tx, in_rx) = mpsc::channel(QUEUE);
    let (out_tx, out_rx) = mpsc::channel(QUEUE);
    tokio::spawn(pump(tcp, in_rx, out_tx));
    Ok(ForwardSession {
        input: in_tx,
        output: out_rx,
    })
}

/// Finds the pod's live sandbox, opens its network namespace and connects there (IPv4
/// loopback, then IPv6, as the kubelet's runtimes do).
fn connect_in_pod(
    config: &RuntimeConfig,
    req: &ForwardRequest,
) -> Result<std::net::TcpStream, BackendError> {
    let pods = crate::runtime::observe::observe_all(&config.pods_dir());
    let sandbox = pods
        .values()
        .find(|p| p.meta.namespace == req.namespace && p.meta.name == req.pod)
        .and_then(|p| p.sandbox)
        .ok_or_else(|| {
            BackendError::Invalid(format!(
                "pod {}/{} has no running sandbox on this node",
                req.namespace, req.pod
            ))
        })?;
    let path = format!("/proc/{}/ns/net", sandbox.pid);
    let netns = std::fs::File::open(&path)
        .map_err(|e| BackendError::Invalid(format!("opening {path}: {e}")))?;
    // Opened, then checked again: the namespace is the sandbox's, not a reused pid's.
    if !sandbox.alive() {
        return Err(BackendError::Invalid(format!(
            "the sandbox of pod {}/{} has exited",
            req.namespace, req.pod
        )));
    }
    let port = req.port;
    // A socket belongs to the namespace it is made in: a fresh thread (never a pool thread,
    // its namespace would stay changed) enters the pod's and connects there.
    let stream = std::thread::Builder::new()
        .name("portforward-netns".into())
        .spawn(move || -> Result<std::net::TcpStream, String> {
            nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("entering the pod's network namespace: {e}"))?;
            let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            let stream = std::net::TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT)
                .or_else(|e4| {
                    std::net::TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT).map_err(|e6| {
                        format!(
                            "nothing accepts connections on localhost:{port} in the pod: dial tcp4 {v4}: {e4}; dial tcp6 {v6}: {e6}"
                        )
                    })
                })?;
            stream.set_nonblocking(true).map_err(|e| e.to_string())?;
            Ok(stream)
        })
        .map_err(|e| BackendError::Invalid(format!("starting a thread: {e}")))?
        .join()
        .map_err(|_| BackendError::Invalid("the port-forward thread failed".into()))?
        .map_err(BackendError::Invalid)?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Copies between the session and the pod connection, each direction on its own: the pod's
/// end of stream (or a failure) ends the forward; the client's `Close` half-closes the pod
/// connection; the client dropping its input without `Close` aborts.
async fn pump(
    tcp: tokio::net::TcpStream,
    mut input: mpsc::Receiver<ForwardInput>,
    output: mpsc::Sender<ForwardOutput>,
) {
    let (mut rd, mut wr) = tcp.into_split();
    // Ends when the session drops its input: the forward is over.
    let to_pod = async move {
        let (mut broken, mut closed) = (false, false);
        while let Some(i) = input.recv().await {
            match i {
                // A pod that stopped reading: the rest is dropped, its output still flows.
                ForwardInput::Data(b) if !broken && !closed => {
                    broken = wr.write_all(&b).await.is_err()
                }
                ForwardInput::Data(_) => {}
                ForwardInput::Close if !closed => {
                    closed = true;
                    let _ = wr.shutdown().await;
                }
                ForwardInput::Close => {}
            }
        }
    };
    let from_pod = async move {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let data = Bytes::copy_from_slice(&buf[..n]);
                    if output.send(ForwardOutput::Data(data)).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    tokio::select! {
        _ = to_pod => {}
        _ = from_pod => {}
    }
}

/// A forward relayed to the agent at `api_addr` over the channel protocol.
async fn remote(
    api_addr: &str,
    runtime: &RuntimeConfig,
    token: &str,
    req: &ForwardRequest,
) -> Result<ForwardSession, RemoteError> {
    let path = format!(
        "/api/v1/namespaces/{}/pods/{}/portforward?ports={}",
        req.namespace, req.pod, req.port
    );
    let ws = connect_websocket(
        api_addr,
        &runtime.data_dir,
        token,
        &path,
        CHANNEL_PROTOCOLS[0],
    )
    .await?;
    let (mut sink, mut stream) = ws.split();
    let (in_tx, mut in_rx) = mpsc::channel::<ForwardInput>(QUEUE);
    let (out_tx, out_rx) = mpsc::channel(QUEUE);
    // Client → pod, until the session drops its input (the forward is over): then the
    // socket closes, which ends the forward on the other node.
    let writer = async move {
        let mut closed = false;
        while let Some(i) = in_rx.recv().await {
            let msg = match i {
                _ if closed => continue,
                ForwardInput::Data(b) => {
                    let mut m = Vec::with_capacity(b.len() + 1);
                    m.push(0u8);
                    m.extend_from_slice(&b);
                    m
                }
                // v5's close signal for channel 0, the data channel.
                ForwardInput::Close => {
                    closed = true;
                    vec![255, 0]
                }
            };
            if sink.send(Message::Binary(msg.into())).await.is_err() {
                break;
            }
        }
        let _ = sink.send(Message::Close(None)).await;
    };
    // Pod → client: the port prefix (2 bytes) of each channel is skipped; the error channel's
    // text is passed on when the socket closes.
    let node = api_addr.to_string();
    let reader = async move {
        let mut prefix = [2usize, 2usize];
        let mut error = Vec::new();
        let mut broke = None;
        while let Some(msg) = stream.next().await {
            let b = match msg {
                Ok(Message::Binary(b)) => b,
                Ok(Message::Close(_)) => break,
                Ok(_) => continue,
                Err(e) => {
                    broke = Some(e.to_string());
                    break;
                }
            };
            let Some((&channel, payload)) = b.split_first() else {
                continue;
            };
            let Some(skip) = prefix.get_mut(channel as usize) else {
                continue;
            };
            let n = (*skip).min(payload.len());
            *skip -= n;
            let payload = &payload[n..];
            if payload.is_empty() {
                continue;
            }
            if channel == 0 {
                let data = ForwardOutput::Data(Bytes::copy_from_slice(payload));
                if out_tx.send(data).await.is_err() {
                    return;
                }
            } else if error.len() < MAX_ERROR {
                error.extend_from_slice(payload);
            }
        }
        if !error.is_empty() {
            let text = String::from_utf8_lossy(&error).into_owned();
            let _ = out_tx.send(ForwardOutput::Error(text)).await;
        } else if let Some(e) = broke {
            let text = format!("the connection to the node running the pod ({node}) broke: {e}");
            let _ = out_tx.send(ForwardOutput::Error(text)).await;
        }
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = reader => {}
            _ = writer => {}
        }
    });
    Ok(ForwardSession {
        input: in_tx,
        output: out_rx,
    })
}
