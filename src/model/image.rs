//! Image values every role shares: a stored image's summary, registry credentials, what a pull
//! asks for and reports, the fetch-through request between peers, a blob's byte stream, and the
//! default `imagePullPolicy` of an image reference. The puller that uses them is
//! `runtime::image::pull`; the API and the kubelet see only these.

use serde::{Deserialize, Serialize};

/// One image in a node's store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSummary {
    /// e.g. `shoal.test/busybox:1`.
    pub reference: String,
    /// `sha256:...` of the manifest.
    pub digest: String,
    /// Sum of the compressed layer sizes.
    pub size: u64,
}

/// Registry credentials (from a `kubernetes.io/dockerconfigjson` Secret or the CLI). Used as
/// HTTP basic auth, or exchanged for a bearer token when the registry asks for one.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ***)", self.username)
    }
}

/// What to pull.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    /// Any reference (`busybox`, `host:5000/repo:tag`, `repo@sha256:...`).
    pub reference: String,
    #[serde(default)]
    pub credentials: Option<Credentials>,
}

/// Progress of one pull, streamed to the CLI as JSON lines.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "camelCase")]
pub enum PullEvent {
    /// The manifest is known: the blobs to fetch (digest, size), config first.
    Resolved {
        digest: String,
        blobs: Vec<(String, u64)>,
    },
    /// Bytes of one blob received so far, and from where (`local`, `registry`, `peer nK`).
    Blob {
        digest: String,
        done: u64,
        total: u64,
        source: String,
    },
    /// All blobs are present; layers are being unpacked.
    Unpacking,
    Done {
        image: ImageSummary,
    },
    Error {
        message: String,
    },
}

/// The body of a fetch-through request to a blob's seed: enough to fetch it from the registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchThrough {
    /// The image's reference (its registry and repository hold the blob).
    pub reference: String,
    pub size: u64,
    #[serde(default)]
    pub credentials: Option<Credentials>,
}

/// A blob's bytes for a peer: its size (if known) and a stream of chunks.
pub struct BlobStream {
    pub size: Option<u64>,
    pub body: futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>,
}

/// `Always` for `:latest` or untagged images, else `IfNotPresent` (digests included).
pub fn default_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}
