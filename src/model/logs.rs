//! A pod log request (Kubernetes' PodLogOptions, parsed by the API) and the byte stream that
//! answers it (read by the kubelet from CRI log files, or proxied from the pod's node).

use serde::{Deserialize, Serialize};

/// `GET .../pods/{name}/log` parameters (Kubernetes' PodLogOptions).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRequest {
    pub namespace: String,
    pub pod: String,
    /// Defaults to the pod's only container; required when it has several.
    pub container: Option<String>,
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<u64>,
    pub since_seconds: Option<u64>,
    /// RFC 3339.
    pub since_time: Option<String>,
    pub limit_bytes: Option<u64>,
}

/// A byte stream of log output (already filtered and formatted as the request asked).
pub type LogStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send>>;
