//! A small HTTPS client for shoal's own routes, configured from the kubeconfig.

use anyhow::{anyhow, bail, Context};

use super::kubeconfig;
use super::ClientArgs;

pub async fn get(args: &ClientArgs, path: &str) -> anyhow::Result<Vec<u8>> {
    let file = kubeconfig::path(args.kubeconfig.as_deref());
    let target = kubeconfig::load(&file, args.context.as_deref())?;
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(std::time::Duration::from_secs(30));
    if let Some(pem) = &target.ca_pem {
        builder = builder.tls_built_in_root_certs(false).add_root_certificate(
            reqwest::Certificate::from_pem(pem).context("the kubeconfig's CA is not PEM")?,
        );
    }
    if target.insecure {
        builder = builder.danger_accept_invalid_certs(true);
    }
    let client = builder.build()?;
    let mut req = client.get(format!("{}{path}", target.server));
    if let Some(t) = &target.token {
        req = req.bearer_auth(t);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| anyhow!("{}: {e}", target.server))?;
    let status = resp.status();
    let body = resp.bytes().await?;
    if !status.is_success() {
        bail!(
            "{}{path}: {status}: {}",
            target.server,
            String::from_utf8_lossy(&body)
        );
    }
    Ok(body.to_vec())
}
