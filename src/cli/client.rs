//! A small HTTPS client for shoal's own routes, configured from the kubeconfig.

use std::path::Path;

use anyhow::{anyhow, bail, Context};

use super::kubeconfig;
use super::ClientArgs;

/// A client for the server the kubeconfig context names, with its bearer token.
struct Connection {
    client: reqwest::Client,
    target: kubeconfig::Target,
}

fn connect(args: &ClientArgs, timeout: std::time::Duration) -> anyhow::Result<Connection> {
    connect_with(args, |b| b.timeout(timeout))
}

/// A connection whose client `timeouts` configures.
fn connect_with(
    args: &ClientArgs,
    timeouts: impl FnOnce(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
) -> anyhow::Result<Connection> {
    let file = kubeconfig::path(args.kubeconfig.as_deref());
    let target = kubeconfig::load(&file, args.context.as_deref())?;
    let mut builder = timeouts(reqwest::Client::builder());
    if let Some(pem) = &target.ca_pem {
        let ca = reqwest::Certificate::from_pem(pem).context("the kubeconfig's CA is not PEM")?;
        builder = builder.tls_certs_only([ca]);
    }
    if target.insecure {
        builder = builder.danger_accept_invalid_certs(true);
    }
    Ok(Connection {
        client: builder.build()?,
        target,
    })
}

impl Connection {
    /// Sends `req` with the bearer token; a non-success status becomes an error naming the
    /// server's reason. The body is left to the caller.
    async fn response(
        &self,
        mut req: reqwest::RequestBuilder,
        path: &str,
    ) -> anyhow::Result<reqwest::Response> {
        if let Some(t) = &self.target.token {
            req = req.bearer_auth(t);
        }
        let server = &self.target.server;
        let resp = req.send().await.map_err(|e| anyhow!("{server}: {e}"))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.bytes().await.unwrap_or_default();
            // A Kubernetes Status names the problem in `message`.
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| {
                    v.get("message")
                        .and_then(|m| m.as_str())
                        .map(str::to_string)
                })
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            bail!("{server}{path}: {status}: {message}");
        }
        Ok(resp)
    }

    async fn send(&self, req: reqwest::RequestBuilder, path: &str) -> anyhow::Result<Vec<u8>> {
        let resp = self.response(req, path).await?;
        Ok(resp.bytes().await?.to_vec())
    }
}

pub async fn get(args: &ClientArgs, path: &str) -> anyhow::Result<Vec<u8>> {
    let c = connect(args, std::time::Duration::from_secs(30))?;
    let req = c.client.get(format!("{}{path}", c.target.server));
    c.send(req, path).await
}

/// POSTs the file at `file` as the body, streamed from disk.
pub async fn post_file(
    args: &ClientArgs,
    path: &str,
    file: &Path,
    content_type: &str,
) -> anyhow::Result<Vec<u8>> {
    let c = connect(args, std::time::Duration::from_secs(3600))?;
    let f = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("opening {}", file.display()))?;
    let len = f.metadata().await?.len();
    let req = c
        .client
        .post(format!("{}{path}", c.target.server))
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .header(reqwest::header::CONTENT_LENGTH, len)
        .body(reqwest::Body::from(f));
    c.send(req, path).await
}

/// DELETEs `path` (query included) and returns the answer's body.
pub async fn delete(args: &ClientArgs, path: &str) -> anyhow::Result<Vec<u8>> {
    let c = connect(args, std::time::Duration::from_secs(60))?;
    let req = c.client.delete(format!("{}{path}", c.target.server));
    c.send(req, path).await
}

/// How long a streamed answer may stay silent before the client gives up.
const STREAM_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// POSTs `body` as JSON and returns the response once its status is a success, for the caller
/// to read as it streams. There is no overall deadline: only connecting (30 s) and each read
/// (10 min of silence) are bounded.
pub async fn post_json_streaming<T: serde::Serialize + ?Sized>(
    args: &ClientArgs,
    path: &str,
    body: &T,
) -> anyhow::Result<reqwest::Response> {
    let c = connect_with(args, |b| {
        b.connect_timeout(std::time::Duration::from_secs(30))
            .read_timeout(STREAM_IDLE_TIMEOUT)
    })?;
    let req = c
        .client
        .post(format!("{}{path}", c.target.server))
        .json(body);
    c.response(req, path).await
}
