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
    let file = kubeconfig::path(args.kubeconfig.as_deref());
    let target = kubeconfig::load(&file, args.context.as_deref())?;
    let mut builder = reqwest::Client::builder().timeout(timeout);
    if let Some(pem) = &target.ca_pem {
        builder = builder.tls_certs_only([
            reqwest::Certificate::from_pem(pem).context("the kubeconfig's CA is not PEM")?,
        ]);
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
    async fn send(&self, mut req: reqwest::RequestBuilder, path: &str) -> anyhow::Result<Vec<u8>> {
        if let Some(t) = &self.target.token {
            req = req.bearer_auth(t);
        }
        let server = &self.target.server;
        let resp = req.send().await.map_err(|e| anyhow!("{server}: {e}"))?;
        let status = resp.status();
        let body = resp.bytes().await?;
        if !status.is_success() {
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
        Ok(body.to_vec())
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
