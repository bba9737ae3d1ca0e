//! A thin client of one cluster's agents: status, configmap writes, configmap watch streams.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Deserialize;
use tokio::sync::mpsc;

/// One member as a node's `/shoal/v1/status` reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct Member {
    pub name: String,
    pub state: String,
}

/// The part of `/shoal/v1/status` the benchmarks read.
#[derive(Debug, Clone, Deserialize)]
pub struct Status {
    pub members: Vec<Member>,
}

impl Status {
    pub fn state_of(&self, name: &str) -> Option<&str> {
        self.members
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.state.as_str())
    }
    pub fn alive(&self) -> usize {
        self.members.iter().filter(|m| m.state == "alive").count()
    }
}

/// A configmap event seen on one node's watch stream.
#[derive(Debug)]
pub struct Seen {
    pub node: usize,
    pub name: String,
    pub at: Instant,
}

/// An HTTPS client that trusts only the cluster CA (`ca_pem`).
pub fn cluster_client(ca_pem: &[u8]) -> Result<reqwest::Client> {
    let ca = reqwest::Certificate::from_pem(ca_pem).context("cluster CA")?;
    shoal::install_crypto_provider();
    Ok(reqwest::Client::builder()
        .tls_certs_only([ca])
        .connect_timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(8)
        .build()?)
}

/// HTTPS client trusting the cluster CA, authenticated with the admin token.
#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    token: String,
    /// The cluster CA, for clients other than `client` (the API flood's raw connections).
    pub ca_pem: Vec<u8>,
}

impl Api {
    pub fn new(ca_pem: &[u8], token: &str) -> Result<Self> {
        Ok(Self {
            client: cluster_client(ca_pem)?,
            token: token.trim().to_string(),
            ca_pem: ca_pem.to_vec(),
        })
    }

    /// Lists the default namespace's configmaps (a cheap authenticated read).
    pub async fn list_configmaps(&self, base: &str) -> Result<()> {
        self.client
            .get(format!("{base}/api/v1/namespaces/default/configmaps"))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(10))
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        Ok(())
    }

    pub async fn status(&self, base: &str) -> Result<Status> {
        let resp = self
            .client
            .get(format!("{base}/shoal/v1/status"))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(2))
            .send()
            .await?
            .error_for_status()?;
        Ok(resp.json().await?)
    }

    pub async fn create_configmap(&self, base: &str, name: &str) -> Result<()> {
        let body = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": name },
            "data": { "payload": "x".repeat(64) },
        });
        self.client
            .post(format!("{base}/api/v1/namespaces/default/configmaps"))
            .bearer_auth(&self.token)
            .json(&body)
            .timeout(Duration::from_secs(10))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// Open a configmap watch on `base` and forward every ADDED event, reopening the stream if the
    /// server ends it. Returns once the first stream's response headers arrived.
    pub async fn watch_configmaps(
        &self,
        node: usize,
        base: String,
        tx: mpsc::UnboundedSender<Seen>,
    ) -> Result<tokio::task::JoinHandle<()>> {
        let url = format!("{base}/api/v1/namespaces/default/configmaps?watch=true");
        let first = self
            .open(&url)
            .await
            .with_context(|| format!("watch {url}"))?;
        let api = self.clone();
        Ok(tokio::spawn(async move {
            let mut resp = Some(first);
            loop {
                let r = match resp.take() {
                    Some(r) => r,
                    None => match api.open(&url).await {
                        Ok(r) => r,
                        Err(e) => {
                            eprintln!("watch {url}: {e:#}; retrying");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        }
                    },
                };
                if forward(node, r, &tx).await.is_err() {
                    return; // receiver gone: the benchmark is over
                }
            }
        }))
    }

    async fn open(&self, url: &str) -> Result<reqwest::Response> {
        Ok(self
            .client
            .get(url)
            .bearer_auth(&self.token)
            .send()
            .await?
            .error_for_status()?)
    }
}

/// Read newline-delimited watch events until the stream ends; Err when the receiver is gone.
async fn forward(
    node: usize,
    mut resp: reqwest::Response,
    tx: &mpsc::UnboundedSender<Seen>,
) -> Result<(), ()> {
    let mut buf: Vec<u8> = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let at = Instant::now();
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let Ok(ev) = serde_json::from_slice::<serde_json::Value>(&line) else {
                continue;
            };
            if ev["type"] != "ADDED" {
                continue;
            }
            if let Some(name) = ev["object"]["metadata"]["name"].as_str() {
                tx.send(Seen {
                    node,
                    name: name.to_string(),
                    at,
                })
                .map_err(|_| ())?;
            }
        }
    }
    Ok(())
}
