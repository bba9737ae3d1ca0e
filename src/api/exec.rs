//! `kubectl exec` (`GET/POST /api/v1/namespaces/{ns}/pods/{name}/exec`): the query
//! (`command` repeated, `container`, `stdin`, `stdout`, `stderr`, `tty`) checked against the
//! pod (an unknown pod or container is a plain HTTP error), the upgrade, then a session opened
//! through [`Backend::exec`](super::Backend::exec) (its errors are a `Status` on the error
//! channel), then
//! Kubernetes' WebSocket channel protocol (`v5.channel.k8s.io`, `v4.channel.k8s.io`): every
//! binary message starts with a channel byte — 0 stdin, 1 stdout, 2 stderr, 3 the final
//! `Status`, 4 terminal resize, and (v5) 255 "close this channel". The framing functions are
//! public because the agent speaks the same protocol as a client when it relays a session to
//! the node that runs the pod.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::objects::find_stored;
use super::resources;
use super::status::ApiError;
use super::ApiState;

/// The WebSocket subprotocols we speak, preferred first.
pub const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// Most bytes of one command line (all arguments together).
const MAX_COMMAND_BYTES: usize = 64 << 10;
/// Most bytes of one WebSocket message accepted from the client.
const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// What to run, and which streams the client attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecRequest {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// From the client to the process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecInput {
    Stdin(Bytes),
    /// The client closed its stdin (v5's close signal).
    CloseStdin,
    Resize {
        width: u16,
        height: u16,
    },
}

/// From the process to the client; `Exit` is the last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecOutput {
    Stdout(Bytes),
    Stderr(Bytes),
    Exit(ExecExit),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecExit {
    /// The process exited with this code (128 + N for a signal).
    Code(i32),
    /// The session failed (the command could not be started, the node went away...).
    Error(String),
}

/// A running session: send input, receive output until [`ExecOutput::Exit`] (or the channel
/// closes, which reads as an error).
pub struct ExecSession {
    pub input: mpsc::Sender<ExecInput>,
    pub output: mpsc::Receiver<ExecOutput>,
}

/// The exec query of a request: every `command` value in order, the container asked for, and
/// the streams (`[stdin, stdout, stderr, tty]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecQuery {
    pub command: Vec<String>,
    pub container: Option<String>,
    pub flags: [bool; 4],
}

/// The exec query of a request URI.
pub fn parse_query(uri: &Uri) -> Result<ExecQuery, ApiError> {
    let mut command = Vec::new();
    let mut container = None;
    let mut flags = [false; 4];
    let mut bytes = 0usize;
    for (k, v) in form_pairs(uri.query().unwrap_or("")) {
        let on = matches!(v.as_str(), "true" | "1" | "True");
        match k.as_str() {
            "command" => {
                bytes += v.len() + 1;
                command.push(v);
            }
            "container" if !v.is_empty() => container = Some(v),
            "stdin" => flags[0] = on,
            "stdout" => flags[1] = on,
            "stderr" => flags[2] = on,
            "tty" => flags[3] = on,
            _ => {}
        }
    }
    if command.is_empty() || command[0].is_empty() {
        return Err(ApiError::BadRequest(
            "you must specify at least one command for the container".into(),
        ));
    }
    if bytes > MAX_COMMAND_BYTES {
        return Err(ApiError::BadRequest(format!(
            "the command is longer than {MAX_COMMAND_BYTES} bytes"
        )));
    }
    if !(flags[0] || flags[1] || flags[2]) {
        return Err(ApiError::BadRequest(
            "you must specify at least 1 of stdin, stdout, stderr".into(),
        ));
    }
    if flags[3] && flags[2] {
        // As Kubernetes: with a terminal, stderr is merged into stdout.
        flags[2] = false;
    }
    Ok(ExecQuery {
        command,
        container,
        flags,
    })
}

/// `application/x-www-form-urlencoded` pairs (the `form_urlencoded` crate), keeping repeated
/// keys; invalid escapes stay as they are.
fn form_pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

/// The final `Status` (channel 3) for an exit, as the kubelet writes it.
pub fn exit_status(exit: &ExecExit, command: &[String]) -> Value {
    match exit {
        ExecExit::Code(0) => json!({"metadata": {}, "status": "Success"}),
        ExecExit::Code(code) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!(
                "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
                command.join(" ")
            ),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        ExecExit::Error(message) => json!({
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": "InternalError",
        }),
    }
}

/// The exit a final `Status` stands for (the relay's side of [`exit_status`]).
pub fn exit_of_status(status: &Value) -> ExecExit {
    if status["status"] == "Success" {
        return ExecExit::Code(0);
    }
    if status["reason"] == "NonZeroExitCode" {
        let code = status["details"]["causes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["reason"] == "ExitCode")
            .and_then(|c| c["message"].as_str())
            .and_then(|m| m.parse().ok());
        if let Some(code) = code {
            return ExecExit::Code(code);
        }
    }
    ExecExit::Error(
        status["message"]
            .as_str()
            .unwrap_or("the exec session failed")
            .to_string(),
    )
}

/// One server → client message.
pub fn encode_output(out: &ExecOutput, command: &[String]) -> Vec<u8> {
    let (channel, payload): (u8, Vec<u8>) = match out {
        ExecOutput::Stdout(b) => (1, b.to_vec()),
        ExecOutput::Stderr(b) => (2, b.to_vec()),
        ExecOutput::Exit(e) => (3, exit_status(e, command).to_string().into_bytes()),
    };
    let mut msg = Vec::with_capacity(payload.len() + 1);
    msg.push(channel);
    msg.extend_from_slice(&payload);
    msg
}

/// One server → client message, read by a relaying client. `None`: not an output message.
pub fn decode_output(msg: &[u8]) -> Option<ExecOutput> {
    let (&channel, payload) = msg.split_first()?;
    match channel {
        1 => Some(ExecOutput::Stdout(Bytes::copy_from_slice(payload))),
        2 => Some(ExecOutput::Stderr(Bytes::copy_from_slice(payload))),
        3 => {
            let status: Value = serde_json::from_slice(payload).ok()?;
            Some(ExecOutput::Exit(exit_of_status(&status)))
        }
        _ => None,
    }
}

/// One client → server message. `None`: ignored (an empty message, another channel).
pub fn decode_input(msg: &[u8]) -> Option<ExecInput> {
    let (&channel, payload) = msg.split_first()?;
    match channel {
        0 => Some(ExecInput::Stdin(Bytes::copy_from_slice(payload))),
        4 => {
            let size: Value = serde_json::from_slice(payload).ok()?;
            let dim = |k: &str| {
                size[k]
                    .as_u64()
                    .and_then(|n| u16::try_from(n).ok())
                    .unwrap_or(0)
            };
            Some(ExecInput::Resize {
                width: dim("Width"),
                height: dim("Height"),
            })
        }
        255 if payload.first() == Some(&0) => Some(ExecInput::CloseStdin),
        _ => None,
    }
}

/// One client → server message, as a relaying client sends it.
pub fn encode_input(input: &ExecInput) -> Vec<u8> {
    match input {
        ExecInput::Stdin(b) => {
            let mut msg = Vec::with_capacity(b.len() + 1);
            msg.push(0);
            msg.extend_from_slice(b);
            msg
        }
        ExecInput::CloseStdin => vec![255, 0],
        ExecInput::Resize { width, height } => {
            let mut msg = vec![4];
            msg.extend_from_slice(
                json!({"Width": width, "Height": height})
                    .to_string()
                    .as_bytes(),
            );
            msg
        }
    }
}

/// The exec route. Not a WebSocket request (kubectl falls back to SPDY only when the
/// WebSocket upgrade fails, which it does not here): 400 saying so.
pub(super) async fn handle(
    State(state): State<ApiState>,
    Path((namespace, name)): Path<(String, String)>,
    uri: Uri,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let ExecQuery {
        command,
        container,
        flags: [stdin, stdout, stderr, tty],
    } = parse_query(&uri)?;
    let info = resources::find("", "v1", "pods").ok_or(ApiError::NoRoute)?;
    let pod =
        find_stored(&state, info, Some(&namespace), &name).ok_or_else(|| ApiError::NotFound {
            resource: "pods".into(),
            name: name.clone(),
        })?;
    let container = pick_container(&pod, container)?;
    let slot = state.exec_sessions.clone().try_acquire_owned().map_err(|_| {
        ApiError::TooManyRequests {
            message: format!(
                "this node serves at most {} exec sessions at once; retry later or through another node",
                state.config.max_exec_sessions
            ),
            causes: vec![],
        }
    })?;
    let upgrade = upgrade.map_err(|_| {
        ApiError::BadRequest(
            "exec needs a WebSocket upgrade with subprotocol v5.channel.k8s.io or v4.channel.k8s.io (SPDY is not supported)".into(),
        )
    })?;
    let req = ExecRequest {
        namespace,
        pod: name,
        container,
        command: command.clone(),
        stdin,
        stdout,
        stderr,
        tty,
    };
    let upgrade = upgrade
        .protocols(PROTOCOLS)
        .max_message_size(MAX_MESSAGE_BYTES);
    if upgrade.selected_protocol().is_none() {
        return Err(ApiError::BadRequest(format!(
            "exec needs one of the WebSocket subprotocols {}",
            PROTOCOLS.join(", ")
        )));
    }
    Ok(upgrade
        .on_upgrade(move |socket| async move {
            // Errors of opening the session go on the error channel: answered as HTTP errors,
            // kubectl would take them for a failed upgrade and retry with SPDY, hiding them.
            let session = state.backend.exec(req).await;
            serve(socket, session, command, state.config.exec_idle_timeout).await;
            drop(slot);
        })
        .into_response())
}

/// The container to run in: the one asked for (checked), else the pod's only one, else the
/// first (kubectl names the default itself and says so).
fn pick_container(pod: &Value, asked: Option<String>) -> Result<String, ApiError> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let containers: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    match asked {
        Some(c) if containers.contains(&c.as_str()) => Ok(c),
        Some(c) => Err(ApiError::BadRequest(format!(
            "container {c} is not valid for pod {name}"
        ))),
        None => containers
            .first()
            .map(|c| c.to_string())
            .ok_or_else(|| ApiError::BadRequest(format!("pod {name} has no containers"))),
    }
}

/// Pumps one session over the socket until the process exits, the client goes away, or
/// nothing has passed either way for `idle` (the session then ends as the client's going away
/// does, with an error status saying why).
/// After the exit status the socket closes with 1000 "normal closure": kubectl reads any other
/// close as an error of the streams.
async fn serve(
    mut socket: WebSocket,
    session: Result<ExecSession, super::BackendError>,
    command: Vec<String>,
    idle: std::time::Duration,
) {
    let ExecSession { input, mut output } = match session {
        Ok(s) => s,
        Err(e) => {
            let out = ExecOutput::Exit(ExecExit::Error(e.to_string()));
            let _ = socket
                .send(Message::Binary(encode_output(&out, &command).into()))
                .await;
            close(socket).await;
            return;
        }
    };
    let mut active = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(active + idle) => {
                let _ = input.send(ExecInput::CloseStdin).await;
                let why = format!(
                    "the exec session was idle (no input or output) for {} s and was ended",
                    idle.as_secs()
                );
                let out = ExecOutput::Exit(ExecExit::Error(why));
                let _ = socket
                    .send(Message::Binary(encode_output(&out, &command).into()))
                    .await;
                break;
            }
            out = output.recv() => {
                active = tokio::time::Instant::now();
                let out = out.unwrap_or_else(|| ExecOutput::Exit(ExecExit::Error(
                    "the exec session ended without an exit status".into(),
                )));
                let last = matches!(out, ExecOutput::Exit(_));
                let msg = encode_output(&out, &command);
                if socket.send(Message::Binary(msg.into())).await.is_err() || last {
                    break;
                }
            }
            msg = socket.recv() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    active = tokio::time::Instant::now();
                    if let Some(i) = decode_input(&b) {
                        // A full input channel means the process is not reading: wait.
                        if input.send(i).await.is_err() {
                            // The process side is gone; its exit status follows on `output`.
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    // The client went away: dropping the input ends the session (the backend
                    // kills the process when its input closes and stdin was not attached).
                    let _ = input.send(ExecInput::CloseStdin).await;
                    return;
                }
                Some(Ok(_)) => {}
            },
        }
    }
    close(socket).await;
}

async fn close(mut socket: WebSocket) {
    let _ = socket
        .send(Message::Close(Some(axum::extract::ws::CloseFrame {
            code: axum::extract::ws::close_code::NORMAL,
            reason: "".into(),
        })))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_keeps_every_command_argument_in_order() {
        let uri: Uri = "/api/v1/namespaces/d/pods/p/exec?command=sh&command=-c&command=echo%20hi%26%26exit+3&container=c&stdout=true&stderr=true"
            .parse()
            .unwrap();
        let q = parse_query(&uri).unwrap();
        assert_eq!(q.command, ["sh", "-c", "echo hi&&exit 3"]);
        assert_eq!(q.container.as_deref(), Some("c"));
        assert_eq!(q.flags, [false, true, true, false]);
        let tty: Uri = "/x?command=sh&stdin=true&stdout=true&stderr=true&tty=true"
            .parse()
            .unwrap();
        assert_eq!(parse_query(&tty).unwrap().flags, [true, true, false, true]);
    }

    #[test]
    fn query_errors() {
        for q in ["/x?stdout=true", "/x?command=&stdout=true", "/x?command=ls"] {
            let uri: Uri = q.parse().unwrap();
            assert!(parse_query(&uri).is_err(), "{q}");
        }
        let pairs = form_pairs("a=%zz%4&b=a%2Fb+c&b=2&flag");
        assert_eq!(
            pairs,
            [("a", "%zz%4"), ("b", "a/b c"), ("b", "2"), ("flag", "")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }

    #[test]
    fn frames_round_trip() {
        let cmd = vec!["sh".to_string()];
        for out in [
            ExecOutput::Stdout(Bytes::from_static(b"out")),
            ExecOutput::Stderr(Bytes::from_static(b"err")),
            ExecOutput::Exit(ExecExit::Code(0)),
            ExecOutput::Exit(ExecExit::Code(3)),
            ExecOutput::Exit(ExecExit::Error("boom".into())),
        ] {
            assert_eq!(decode_output(&encode_output(&out, &cmd)), Some(out));
        }
        for input in [
            ExecInput::Stdin(Bytes::from_static(b"in")),
            ExecInput::CloseStdin,
            ExecInput::Resize {
                width: 80,
                height: 24,
            },
        ] {
            assert_eq!(decode_input(&encode_input(&input)), Some(input));
        }
        assert_eq!(decode_input(&[]), None);
        assert_eq!(decode_input(&[9, 1]), None);
        assert_eq!(decode_output(&[3, b'{']), None);
    }

    #[test]
    fn non_zero_exit_reads_as_kubectl_expects() {
        let s = exit_status(
            &ExecExit::Code(3),
            &["sh".into(), "-c".into(), "exit 3".into()],
        );
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
        assert_eq!(
            s["message"],
            "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3"
        );
    }
}
