//! `kubectl port-forward` (`GET/POST /api/v1/namespaces/{ns}/pods/{name}/portforward`): the pod
//! is checked (an unknown pod is a plain 404), then the connection is upgraded to one of
//! three transports, each opening one forward per client connection through
//! [`Backend::port_forward`](super::Backend::port_forward) (on this node, or relayed to the pod's):
//!
//! - **SPDY/3.1 tunnelled in WebSocket binary messages** (subprotocol
//!   `SPDY/3.1+portforward.k8s.io`, KEP-4006), what kubectl 1.30+ tries first;
//! - **SPDY/3.1 over a plain HTTP upgrade** (`Upgrade: SPDY/3.1`,
//!   `X-Stream-Protocol-Version: portforward.k8s.io`), kubectl's fallback and older clients';
//! - **the WebSocket channel protocol** (`v4.channel.k8s.io`, and `v5.channel.k8s.io` whose
//!   close signal half-closes a port's data channel), ports from the `ports` query, as the
//!   kubelet serves it to the Python and JavaScript clients; agents relay to each other with it.
//!
//! Over SPDY the client opens two streams per forwarded connection, headers `streamType`
//! (`error` or `data`), `port` and `requestID`; once both are there the forward starts. Pod bytes
//! go out on the data stream, a failure (nothing listening...) as text on the error stream, and
//! both streams end with FIN when the forward ends, as the kubelet does. A FIN from the client
//! half-closes the pod connection; a reset ends the forward.
//!
//! **Memory is bounded** by queues, not by SPDY windows (spdystream, the client library, neither
//! sends nor honours WINDOW_UPDATE, so neither do we): at most [`QUEUE`] messages wait per
//! direction and forward, frames are at most [`MAX_FRAME`] bytes, and a full queue stops the
//! reading of the client's connection (head-of-line, as in the kubelet) until the pod reads.

use std::collections::{BTreeMap, HashMap};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::objects::find_stored;
use super::resources;
use super::spdy::{self, Decoder, Encoder, Frame, Headers, FLAG_FIN};
use super::status::ApiError;
use super::ApiState;

/// KEP-4006: SPDY tunnelled over WebSocket.
pub const SPDY_TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// The stream protocol of the SPDY upgrade (`X-Stream-Protocol-Version`).
pub const STREAM_PROTOCOL: &str = "portforward.k8s.io";
/// The WebSocket channel protocols, preferred first.
pub const CHANNEL_PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// Messages queued per direction and forward (and frames towards the client per connection)
/// before the producer waits.
pub const QUEUE: usize = 64;
/// Largest SPDY frame accepted from a client (kubectl writes 32 KiB at most).
pub const MAX_FRAME: usize = 1 << 20;
/// Largest decompressed SPDY header block.
const MAX_HEADER_BLOCK: usize = 64 << 10;
/// Streams open at once on one SPDY connection (two per forwarded connection).
const MAX_STREAMS: usize = 512;
/// Ports in one WebSocket channel session.
const MAX_PORTS: usize = 32;
/// Bytes read from the pod (or client) at once.
const READ_CHUNK: usize = 32 << 10;

/// One forwarded connection to `port` in pod `namespace/pod`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardRequest {
    pub namespace: String,
    pub pod: String,
    pub port: u16,
}

/// From the client towards the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ForwardInput {
    Data(Bytes),
    /// The client will send nothing more (the pod connection is half-closed). Dropping the
    /// sender without it aborts the forward.
    Close,
}

/// From the pod towards the client; the channel closing is the pod's end of stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ForwardOutput {
    Data(Bytes),
    /// The forward failed (the port is not listening, the node went away...), said as the
    /// kubelet says it; the channel closes after it.
    Error(String),
}

/// An open forward: send input, receive output until the channel closes.
pub struct ForwardSession {
    pub input: mpsc::Sender<ForwardInput>,
    pub output: mpsc::Receiver<ForwardOutput>,
}

/// The forward `req` of pod `uid` failed: the error text the kubelet writes.
pub fn forward_error(req: &ForwardRequest, uid: &str, reason: &str) -> String {
    format!(
        "error forwarding port {} to pod {}/{}, uid {uid}: {reason}",
        req.port, req.namespace, req.pod
    )
}

/// The ports of a channel-protocol request: every `ports` (or the kubelet's `port`) value,
/// comma-separated lists allowed.
pub fn parse_ports(uri: &Uri) -> Result<Vec<u16>, ApiError> {
    let mut ports = Vec::new();
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        if k != "ports" && k != "port" {
            continue;
        }
        for p in v.split(',') {
            let port: u16 = p
                .trim()
                .parse()
                .map_err(|_| ApiError::BadRequest(format!("unable to parse {p:?} as a port")))?;
            if port == 0 {
                return Err(ApiError::BadRequest(format!("port {p:?} must be > 0")));
            }
            ports.push(port);
        }
    }
    if ports.is_empty() {
        return Err(ApiError::BadRequest(
            "query parameter \"ports\" is required".into(),
        ));
    }
    if ports.len() > MAX_PORTS {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_PORTS} ports can be forwarded at once"
        )));
    }
    Ok(ports)
}

// ---- the SPDY session core: client frames in, actions out ----

/// An event of a client's data stream, for its forward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    Data(Bytes),
    Fin,
    Reset,
}

/// What the shell does for a client frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send this frame to the client.
    Send(Frame),
    /// Both streams of a forwarded connection are open: start forwarding.
    Start { port: u16, data: u32, error: u32 },
    /// Give this to the forward that owns data stream `data` (queued until it starts).
    Deliver { data: u32, event: ClientEvent },
    /// The connection cannot go on: say GOAWAY with this status, then close.
    Fatal(u32),
}

#[derive(Default)]
struct Pair {
    port: u16,
    error: Option<u32>,
    data: Option<u32>,
}

/// The streams of one SPDY port-forward connection (server side). Pure: the shell feeds it
/// the client's frames and the ends of forwards.
#[derive(Default)]
pub struct Session {
    /// Pairs by request id.
    pairs: BTreeMap<String, Pair>,
    /// Open stream id → its request id and whether it is the data stream.
    streams: BTreeMap<u32, (String, bool)>,
    last_client_stream: u32,
    going_away: bool,
}

impl Session {
    pub fn on_frame(&mut self, frame: Frame) -> Vec<Action> {
        match frame {
            Frame::SynStream {
                stream_id, headers, ..
            } => self.on_syn_stream(stream_id, &headers),
            Frame::Data {
                stream_id,
                flags,
                data,
            } => match self.streams.get(&stream_id) {
                // Data on the error stream (clients only close it) or an unknown stream
                // (already ended) is dropped, as spdystream does.
                Some((_, true)) => {
                    let mut out = Vec::new();
                    if !data.is_empty() {
                        out.push(Action::Deliver {
                            data: stream_id,
                            event: ClientEvent::Data(data),
                        });
                    }
                    if flags & FLAG_FIN != 0 {
                        out.push(Action::Deliver {
                            data: stream_id,
                            event: ClientEvent::Fin,
                        });
                    }
                    out
                }
                _ => Vec::new(),
            },
            Frame::RstStream { stream_id, .. } => match self.streams.get(&stream_id) {
                Some((_, true)) => vec![Action::Deliver {
                    data: stream_id,
                    event: ClientEvent::Reset,
                }],
                _ => Vec::new(),
            },
            Frame::Ping { id } => vec![Action::Send(Frame::Ping { id })],
            Frame::GoAway { .. } => {
                self.going_away = true;
                Vec::new()
            }
            // Replies and headers from a client, settings, windows (not enforced, see the
            // module doc), unknown control frames: nothing to do.
            _ => Vec::new(),
        }
    }

    fn on_syn_stream(&mut self, id: u32, headers: &Headers) -> Vec<Action> {
        let reset = |status| {
            vec![Action::Send(Frame::RstStream {
                stream_id: id,
                status,
            })]
        };
        // Client streams are odd and increasing (SPDY/3.1 §2.3.2).
        if id.is_multiple_of(2) || id <= self.last_client_stream {
            return vec![Action::Fatal(spdy::goaway::PROTOCOL_ERROR)];
        }
        self.last_client_stream = id;
        if self.going_away || self.streams.len() >= MAX_STREAMS {
            return reset(spdy::rst::REFUSED_STREAM);
        }
        let get = |k: &str| {
            headers
                .get(k)
                .and_then(|v| v.first())
                .map(String::as_str)
                .unwrap_or("")
        };
        let Some(port) = get("port").parse::<u16>().ok().filter(|p| *p > 0) else {
            return reset(spdy::rst::PROTOCOL_ERROR);
        };
        let is_data = match get("streamtype") {
            "data" => true,
            "error" => false,
            _ => return reset(spdy::rst::PROTOCOL_ERROR),
        };
        // Old clients send no request id: pair by stream ids as the kubelet does (the error
        // stream, then the data stream two ids later).
        let request = match get("requestid") {
            "" if is_data => id.saturating_sub(2).to_string(),
            "" => id.to_string(),
            r => r.to_string(),
        };
        let pair = self.pairs.entry(request.clone()).or_default();
        let slot = if is_data {
            &mut pair.data
        } else {
            &mut pair.error
        };
        if slot.is_some() || (pair.port != 0 && pair.port != port) {
            return reset(spdy::rst::PROTOCOL_ERROR);
        }
        *slot = Some(id);
        pair.port = port;
        self.streams.insert(id, (request, is_data));
        let mut out = vec![Action::Send(Frame::SynReply {
            stream_id: id,
            flags: 0,
            headers: Headers::new(),
        })];
        if let (Some(data), Some(error)) = (pair.data, pair.error) {
            out.push(Action::Start { port, data, error });
        }
        out
    }

    /// The forward of data stream `data` has ended (both its streams were ended by us):
    /// forget the pair.
    pub fn forward_ended(&mut self, data: u32) {
        if let Some((request, _)) = self.streams.remove(&data) {
            if let Some(pair) = self.pairs.remove(&request) {
                if let Some(e) = pair.error {
                    self.streams.remove(&e);
                }
            }
        }
    }
}

// ---- the route ----

/// The port-forward route.
pub(super) async fn handle(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let info = resources::find("", "v1", "pods").ok_or(ApiError::NoRoute)?;
    let pod =
        find_stored(&state, info, Some(&namespace), &name).ok_or_else(|| ApiError::NotFound {
            resource: "pods".into(),
            name: name.clone(),
        })?;
    let uid = pod["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let target = Target {
        namespace,
        pod: name,
        uid,
    };
    let (mut parts, _body) = req.into_parts();
    let (websocket_asked, spdy_asked) = {
        let upgrade = header_has(&parts.headers, header::UPGRADE);
        (upgrade("websocket"), upgrade("spdy/3.1"))
    };
    if websocket_asked {
        let uri = parts.uri.clone();
        let ws = WebSocketUpgrade::from_request_parts(&mut parts, &state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("port-forward: {e}")))?;
        return websocket(state, target, &uri, ws);
    }
    if spdy_asked {
        return spdy_upgrade(state, target, &mut parts);
    }
    Err(ApiError::BadRequest(format!(
        "port-forward needs a connection upgrade: WebSocket with subprotocol {SPDY_TUNNEL_PROTOCOL} or {}, or SPDY/3.1",
        CHANNEL_PROTOCOLS.join(" or ")
    )))
}

/// Whom the forwards are for.
#[derive(Clone)]
struct Target {
    namespace: String,
    pod: String,
    uid: String,
}

impl Target {
    fn request(&self, port: u16) -> ForwardRequest {
        ForwardRequest {
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
            port,
        }
    }
}

/// Whether header `name` lists `token` (case-insensitive, comma-separated).
fn header_has(headers: &HeaderMap, name: header::HeaderName) -> impl Fn(&str) -> bool + '_ {
    move |token| {
        headers.get_all(&name).iter().any(|v| {
            v.to_str()
                .unwrap_or("")
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    }
}

fn websocket(
    state: ApiState,
    target: Target,
    uri: &Uri,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let mut offered = vec![SPDY_TUNNEL_PROTOCOL];
    offered.extend(CHANNEL_PROTOCOLS);
    let ws = ws.protocols(offered).max_message_size(MAX_FRAME + 64);
    let protocol = ws
        .selected_protocol()
        .and_then(|p| p.to_str().ok())
        .map(str::to_string);
    match protocol.as_deref() {
        Some(SPDY_TUNNEL_PROTOCOL) => Ok(ws
            .on_upgrade(move |socket| async move {
                let (ours, theirs) = tokio::io::duplex(2 * READ_CHUNK);
                let session = tokio::spawn(serve_spdy(ours, state, target));
                tunnel(socket, theirs).await;
                let _ = session.await;
            })
            .into_response()),
        Some(p) if CHANNEL_PROTOCOLS.contains(&p) => {
            let ports = parse_ports(uri)?;
            let v5 = p == CHANNEL_PROTOCOLS[0];
            Ok(ws
                .on_upgrade(move |socket| serve_channels(socket, state, target, ports, v5))
                .into_response())
        }
        _ => Err(ApiError::BadRequest(format!(
            "port-forward needs one of the WebSocket subprotocols {SPDY_TUNNEL_PROTOCOL}, {}",
            CHANNEL_PROTOCOLS.join(", ")
        ))),
    }
}

/// The SPDY/3.1 upgrade: 101 with the negotiated stream protocol, then SPDY on the raw
/// connection.
fn spdy_upgrade(
    state: ApiState,
    target: Target,
    parts: &mut axum::http::request::Parts,
) -> Result<Response, ApiError> {
    let offered = header_has(
        &parts.headers,
        header::HeaderName::from_static("x-stream-protocol-version"),
    );
    if !offered(STREAM_PROTOCOL) {
        let mut resp = (
            StatusCode::FORBIDDEN,
            format!("unable to upgrade: unable to negotiate protocol: the server accepts {STREAM_PROTOCOL}"),
        )
            .into_response();
        resp.headers_mut().insert(
            "x-accepted-stream-protocol-versions",
            HeaderValue::from_static(STREAM_PROTOCOL),
        );
        return Ok(resp);
    }
    let on_upgrade = parts
        .extensions
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or_else(|| {
            ApiError::BadRequest(
                "this connection cannot be upgraded (HTTP/2?): use HTTP/1.1".into(),
            )
        })?;
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => serve_spdy(TokioIo::new(upgraded), state, target).await,
            Err(e) => tracing::debug!(%e, "port-forward: the SPDY upgrade failed"),
        }
    });
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    h.insert(
        "x-stream-protocol-version",
        HeaderValue::from_static(STREAM_PROTOCOL),
    );
    Ok(resp)
}

/// Carries a byte stream in WebSocket binary messages (KEP-4006's tunnel) until either side
/// ends; each read of `io` is one message.
async fn tunnel(socket: WebSocket, io: tokio::io::DuplexStream) {
    let (mut sink, mut stream) = socket.split();
    let (mut rd, mut wr) = tokio::io::split(io);
    let up = async move {
        while let Some(Ok(msg)) = stream.next().await {
            let go_on = match msg {
                Message::Binary(b) => wr.write_all(&b).await.is_ok(),
                Message::Close(_) => false,
                _ => true,
            };
            if !go_on {
                break;
            }
        }
        let _ = wr.shutdown().await;
    };
    let down = async move {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink
                        .send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        close_normally(&mut sink).await;
    };
    // The client leaving ends the session (its reads see EOF); the session ending closes the
    // socket.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// Serves one SPDY connection: the reading loop runs [`Session`], one task writes frames, one
/// task per forwarded connection.
async fn serve_spdy<IO>(io: IO, state: ApiState, target: Target)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(io);
    let (frames, frames_rx) = mpsc::channel::<Frame>(QUEUE);
    let writer = tokio::spawn(write_frames(wr, frames_rx));
    let mut session = Session::default();
    let mut decoder = Decoder::new(MAX_FRAME, MAX_HEADER_BLOCK);
    let mut buf = BytesMut::with_capacity(2 * READ_CHUNK);
    // Per data stream: its queue (the receiver waits here until the forward starts).
    let mut queues: HashMap<u32, mpsc::Sender<ClientEvent>> = HashMap::new();
    let mut waiting: HashMap<u32, mpsc::Receiver<ClientEvent>> = HashMap::new();
    let mut forwards = tokio::task::JoinSet::new();
    'conn: loop {
        loop {
            let frame = match decoder.decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(%e, "port-forward: bad SPDY input");
                    let _ = frames
                        .send(goaway(&session, spdy::goaway::PROTOCOL_ERROR))
                        .await;
                    break 'conn;
                }
            };
            for action in session.on_frame(frame) {
                match action {
                    Action::Send(f) => {
                        if frames.send(f).await.is_err() {
                            break 'conn;
                        }
                    }
                    Action::Fatal(status) => {
                        let _ = frames.send(goaway(&session, status)).await;
                        break 'conn;
                    }
                    Action::Start { port, data, error } => {
                        let events = waiting.remove(&data).unwrap_or_else(|| {
                            let (tx, rx) = mpsc::channel(QUEUE);
                            queues.insert(data, tx);
                            rx
                        });
                        let out = SpdyOut {
                            frames: frames.clone(),
                            data,
                            error,
                        };
                        let (state, req, uid) =
                            (state.clone(), target.request(port), target.uid.clone());
                        forwards.spawn(async move {
                            forward(state, req, uid, events, out).await;
                            data
                        });
                    }
                    Action::Deliver { data, event } => {
                        let tx = queues.entry(data).or_insert_with(|| {
                            let (tx, rx) = mpsc::channel(QUEUE);
                            waiting.insert(data, rx);
                            tx
                        });
                        if waiting.contains_key(&data) {
                            // Not started yet (its error stream has not come): never wait here,
                            // the error stream's frame is behind this one.
                            if tx.try_send(event).is_err() {
                                let _ = frames
                                    .send(Frame::RstStream {
                                        stream_id: data,
                                        status: spdy::rst::PROTOCOL_ERROR,
                                    })
                                    .await;
                            }
                        } else {
                            // A full queue means the pod is not reading: wait (bounded memory).
                            let _ = tx.send(event).await;
                        }
                    }
                }
            }
        }
        if buf.capacity() - buf.len() < READ_CHUNK {
            buf.reserve(READ_CHUNK);
        }
        tokio::select! {
            n = rd.read_buf(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
            Some(Ok(data)) = forwards.join_next(), if !forwards.is_empty() => {
                session.forward_ended(data);
                queues.remove(&data);
            }
        }
    }
    // The client is gone: every forward ends (its pod connection is dropped).
    forwards.abort_all();
    drop(queues);
    drop(frames);
    let _ = writer.await;
}

fn goaway(session: &Session, status: u32) -> Frame {
    Frame::GoAway {
        last_good_stream_id: session.last_client_stream,
        status,
    }
}

async fn write_frames<W: AsyncWrite + Unpin>(mut wr: W, mut frames: mpsc::Receiver<Frame>) {
    let mut encoder = Encoder::new();
    let mut out = Vec::with_capacity(READ_CHUNK + 64);
    while let Some(frame) = frames.recv().await {
        out.clear();
        let fatal = matches!(frame, Frame::GoAway { .. });
        if let Err(e) = encoder.encode(&frame, &mut out) {
            tracing::warn!(%e, "port-forward: encoding a SPDY frame");
            break;
        }
        // Whatever else is queued goes in the same write.
        while out.len() < READ_CHUNK {
            match frames.try_recv() {
                Ok(f) => {
                    if encoder.encode(&f, &mut out).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        if wr.write_all(&out).await.is_err() || wr.flush().await.is_err() || fatal {
            break;
        }
    }
    let _ = wr.shutdown().await;
}

// ---- one forward, whatever the transport ----

/// Where a forward's output goes.
trait ForwardOut: Send + Sync + 'static {
    /// Pod bytes; false when the client side is gone.
    fn data(&self, b: Bytes) -> impl std::future::Future<Output = bool> + Send;
    fn error(&self, message: String) -> impl std::future::Future<Output = ()> + Send;
    /// The pod's end of stream (`reset`: the client ended the forward, say nothing more on
    /// the data stream).
    fn finish(&self, reset: bool) -> impl std::future::Future<Output = ()> + Send;
}

struct SpdyOut {
    frames: mpsc::Sender<Frame>,
    data: u32,
    error: u32,
}

impl ForwardOut for SpdyOut {
    async fn data(&self, b: Bytes) -> bool {
        let f = Frame::Data {
            stream_id: self.data,
            flags: 0,
            data: b,
        };
        self.frames.send(f).await.is_ok()
    }
    async fn error(&self, message: String) {
        let f = Frame::Data {
            stream_id: self.error,
            flags: 0,
            data: Bytes::from(message),
        };
        let _ = self.frames.send(f).await;
    }
    async fn finish(&self, reset: bool) {
        // As the kubelet: both streams are closed (FIN) when the forward ends; the client
        // reads its error stream to the end before it lets the connection go.
        let fin = |stream_id| Frame::Data {
            stream_id,
            flags: FLAG_FIN,
            data: Bytes::new(),
        };
        if !reset {
            let _ = self.frames.send(fin(self.data)).await;
        }
        let _ = self.frames.send(fin(self.error)).await;
    }
}

/// Runs one forward: opens it through the backend, then copies each way independently (a pod
/// that writes before it reads never blocks the other direction) until the pod's end of
/// stream, a failure, or the client's reset.
async fn forward<O: ForwardOut>(
    state: ApiState,
    req: ForwardRequest,
    uid: String,
    mut events: mpsc::Receiver<ClientEvent>,
    out: O,
) {
    let ForwardSession { input, mut output } = match state.backend.port_forward(req.clone()).await {
        Ok(s) => s,
        Err(e) => {
            out.error(forward_error(&req, &uid, &e.to_string())).await;
            out.finish(false).await;
            return;
        }
    };
    let to_pod = async move {
        let mut input = Some(input);
        while let Some(event) = events.recv().await {
            match event {
                ClientEvent::Data(b) => {
                    if let Some(i) = &input {
                        if i.send(ForwardInput::Data(b)).await.is_err() {
                            input = None;
                        }
                    }
                }
                // The input stays open (dropping it would abort) until the forward ends.
                ClientEvent::Fin => {
                    if let Some(i) = &input {
                        let _ = i.send(ForwardInput::Close).await;
                    }
                }
                ClientEvent::Reset => return,
            }
        }
    };
    let from_pod = async {
        while let Some(o) = output.recv().await {
            match o {
                ForwardOutput::Data(b) => {
                    if !out.data(b).await {
                        return;
                    }
                }
                ForwardOutput::Error(message) => out.error(message).await,
            }
        }
    };
    let reset = tokio::select! {
        _ = from_pod => false,
        _ = to_pod => true,
    };
    out.finish(reset).await;
}

// ---- the WebSocket channel protocol ----

struct ChannelOut {
    messages: mpsc::Sender<Vec<u8>>,
    index: u8,
}

impl ChannelOut {
    fn message(channel: u8, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(payload.len() + 1);
        m.push(channel);
        m.extend_from_slice(payload);
        m
    }
}

impl ForwardOut for ChannelOut {
    async fn data(&self, b: Bytes) -> bool {
        self.messages
            .send(Self::message(2 * self.index, &b))
            .await
            .is_ok()
    }
    async fn error(&self, message: String) {
        let m = Self::message(2 * self.index + 1, message.as_bytes());
        let _ = self.messages.send(m).await;
    }
    async fn finish(&self, _reset: bool) {
        // The socket closes once every port's forward has ended.
    }
}

/// Serves the channel protocol: per port `i`, channel `2i` carries data and `2i+1` errors,
/// each starting with the port (16 bits, little endian) as the kubelet writes it. One forward
/// per port; the socket closes (normal closure) when they have all ended.
async fn serve_channels(
    socket: WebSocket,
    state: ApiState,
    target: Target,
    ports: Vec<u16>,
    v5: bool,
) {
    let (mut sink, mut stream) = socket.split();
    let (messages, mut messages_rx) = mpsc::channel::<Vec<u8>>(QUEUE);
    let mut inputs = Vec::new();
    let mut forwards = tokio::task::JoinSet::new();
    for (i, port) in ports.iter().enumerate() {
        let i = i as u8; // at most MAX_PORTS
        for channel in [2 * i, 2 * i + 1] {
            let m = ChannelOut::message(channel, &port.to_le_bytes());
            if sink.send(Message::Binary(m.into())).await.is_err() {
                return;
            }
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        inputs.push(Some(tx));
        let out = ChannelOut {
            messages: messages.clone(),
            index: i,
        };
        forwards.spawn(forward(
            state.clone(),
            target.request(*port),
            target.uid.clone(),
            rx,
            out,
        ));
    }
    drop(messages);
    // Writing and reading run apart: a client that is not reading never stops its input.
    let write = async move {
        while let Some(m) = messages_rx.recv().await {
            if sink.send(Message::Binary(m.into())).await.is_err() {
                return;
            }
        }
        close_normally(&mut sink).await;
    };
    let read = async move {
        while let Some(Ok(msg)) = stream.next().await {
            let b = match msg {
                Message::Binary(b) => b,
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&channel, payload)) = b.split_first() else {
                continue;
            };
            let (index, event) = match channel {
                255 if v5 => match payload.first() {
                    Some(&c) if c.is_multiple_of(2) => (c / 2, ClientEvent::Fin),
                    _ => continue,
                },
                c if c.is_multiple_of(2) => {
                    (c / 2, ClientEvent::Data(Bytes::copy_from_slice(payload)))
                }
                _ => continue,
            };
            if let Some(Some(tx)) = inputs.get(index as usize) {
                // A full queue means the pod is not reading: wait (bounded memory).
                let _ = tx.send(event).await;
            }
        }
        // The client left: dropping the queues resets every forward.
        for tx in inputs.iter_mut().flatten() {
            let _ = tx.try_send(ClientEvent::Reset);
        }
    };
    tokio::select! {
        _ = write => {}
        _ = read => {}
    }
    forwards.abort_all();
}

/// Ends a WebSocket session with a normal close frame (the peer may already be gone).
async fn close_normally<S>(sink: &mut S)
where
    S: futures::Sink<Message> + Unpin,
{
    let _ = sink
        .send(Message::Close(Some(axum::extract::ws::CloseFrame {
            code: axum::extract::ws::close_code::NORMAL,
            reason: "".into(),
        })))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syn(id: u32, pairs: &[(&str, &str)]) -> Frame {
        Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            flags: 0,
            headers: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
                .collect(),
        }
    }

    fn reply(id: u32) -> Action {
        Action::Send(Frame::SynReply {
            stream_id: id,
            flags: 0,
            headers: Headers::new(),
        })
    }

    fn reset(id: u32, status: u32) -> Vec<Action> {
        vec![Action::Send(Frame::RstStream {
            stream_id: id,
            status,
        })]
    }

    #[test]
    fn a_pair_of_streams_starts_a_forward_and_routes_the_data_stream() {
        let mut s = Session::default();
        let err = s.on_frame(syn(
            1,
            &[("streamtype", "error"), ("port", "80"), ("requestid", "0")],
        ));
        assert_eq!(err, vec![reply(1)]);
        // The client closes its side of the error stream at once: nothing to do.
        let fin = Frame::Data {
            stream_id: 1,
            flags: FLAG_FIN,
            data: Bytes::new(),
        };
        assert_eq!(s.on_frame(fin), vec![]);
        let data = s.on_frame(syn(
            3,
            &[("streamtype", "data"), ("port", "80"), ("requestid", "0")],
        ));
        assert_eq!(
            data,
            vec![
                reply(3),
                Action::Start {
                    port: 80,
                    data: 3,
                    error: 1
                }
            ]
        );
        let bytes = Frame::Data {
            stream_id: 3,
            flags: FLAG_FIN,
            data: Bytes::from_static(b"GET /"),
        };
        assert_eq!(
            s.on_frame(bytes),
            vec![
                Action::Deliver {
                    data: 3,
                    event: ClientEvent::Data(Bytes::from_static(b"GET /"))
                },
                Action::Deliver {
                    data: 3,
                    event: ClientEvent::Fin
                }
            ]
        );
        assert_eq!(
            s.on_frame(Frame::RstStream {
                stream_id: 3,
                status: spdy::rst::CANCEL
            }),
            vec![Action::Deliver {
                data: 3,
                event: ClientEvent::Reset
            }]
        );
        s.forward_ended(3);
        assert!(s.streams.is_empty() && s.pairs.is_empty());
        // Frames for ended streams are dropped.
        assert_eq!(
            s.on_frame(Frame::RstStream {
                stream_id: 3,
                status: spdy::rst::CANCEL
            }),
            vec![]
        );
        assert_eq!(
            s.on_frame(Frame::Ping { id: 5 }),
            vec![Action::Send(Frame::Ping { id: 5 })]
        );
    }

    #[test]
    fn concurrent_pairs_are_told_apart_by_request_id() {
        let mut s = Session::default();
        s.on_frame(syn(
            1,
            &[("streamtype", "error"), ("port", "80"), ("requestid", "0")],
        ));
        s.on_frame(syn(
            3,
            &[("streamtype", "error"), ("port", "80"), ("requestid", "1")],
        ));
        let a = s.on_frame(syn(
            5,
            &[("streamtype", "data"), ("port", "80"), ("requestid", "1")],
        ));
        assert!(a.contains(&Action::Start {
            port: 80,
            data: 5,
            error: 3
        }));
        let b = s.on_frame(syn(
            7,
            &[("streamtype", "data"), ("port", "80"), ("requestid", "0")],
        ));
        assert!(b.contains(&Action::Start {
            port: 80,
            data: 7,
            error: 1
        }));
        // Without request ids, pairs go by stream ids (error n, data n + 2).
        s.on_frame(syn(9, &[("streamtype", "error"), ("port", "81")]));
        let c = s.on_frame(syn(11, &[("streamtype", "data"), ("port", "81")]));
        assert!(c.contains(&Action::Start {
            port: 81,
            data: 11,
            error: 9
        }));
    }

    #[test]
    fn bad_streams_are_reset_and_bad_ids_end_the_connection() {
        let mut s = Session::default();
        assert_eq!(
            s.on_frame(syn(1, &[("streamtype", "data")])),
            reset(1, spdy::rst::PROTOCOL_ERROR)
        );
        assert_eq!(
            s.on_frame(syn(3, &[("streamtype", "data"), ("port", "0")])),
            reset(3, spdy::rst::PROTOCOL_ERROR)
        );
        assert_eq!(
            s.on_frame(syn(5, &[("streamtype", "stdin"), ("port", "80")])),
            reset(5, spdy::rst::PROTOCOL_ERROR)
        );
        s.on_frame(syn(
            7,
            &[("streamtype", "data"), ("port", "80"), ("requestid", "9")],
        ));
        assert_eq!(
            s.on_frame(syn(
                9,
                &[("streamtype", "data"), ("port", "80"), ("requestid", "9")]
            )),
            reset(9, spdy::rst::PROTOCOL_ERROR),
            "a second data stream for one request"
        );
        assert_eq!(
            s.on_frame(syn(
                11,
                &[("streamtype", "error"), ("port", "81"), ("requestid", "9")]
            )),
            reset(11, spdy::rst::PROTOCOL_ERROR),
            "the error stream names another port"
        );
        assert_eq!(
            s.on_frame(syn(11, &[("streamtype", "error"), ("port", "80")])),
            vec![Action::Fatal(spdy::goaway::PROTOCOL_ERROR)],
            "a reused stream id"
        );
        assert_eq!(
            s.on_frame(syn(14, &[("streamtype", "error"), ("port", "80")])),
            vec![Action::Fatal(spdy::goaway::PROTOCOL_ERROR)],
            "an even (server) stream id"
        );
    }

    #[test]
    fn streams_beyond_the_limit_are_refused() {
        let mut s = Session::default();
        let mut id = 1;
        for n in 0..MAX_STREAMS {
            let kind = if n % 2 == 0 { "error" } else { "data" };
            let r = (n / 2).to_string();
            let a = s.on_frame(syn(
                id,
                &[("streamtype", kind), ("port", "80"), ("requestid", &r)],
            ));
            assert_eq!(a[0], reply(id));
            id += 2;
        }
        assert_eq!(
            s.on_frame(syn(
                id,
                &[("streamtype", "error"), ("port", "80"), ("requestid", "x")]
            )),
            reset(id, spdy::rst::REFUSED_STREAM)
        );
    }

    #[test]
    fn ports_come_from_the_query() {
        let uri: Uri = "/x?ports=80,8080&port=9".parse().unwrap();
        assert_eq!(parse_ports(&uri).unwrap(), vec![80, 8080, 9]);
        for q in ["/x", "/x?ports=0", "/x?ports=http", "/x?ports=70000"] {
            let uri: Uri = q.parse().unwrap();
            assert!(parse_ports(&uri).is_err(), "{q}");
        }
    }
}
