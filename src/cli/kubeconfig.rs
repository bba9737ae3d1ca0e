//! Reading and writing kubeconfig files, the same ones kubectl uses.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;

/// Where to reach one API server and how to authenticate.
pub struct Target {
    pub server: String,
    pub ca_pem: Option<Vec<u8>>,
    pub token: Option<String>,
    pub insecure: bool,
}

#[derive(Deserialize)]
struct Config {
    #[serde(default)]
    clusters: Vec<Named<Cluster>>,
    #[serde(default)]
    users: Vec<Named<User>>,
    #[serde(default)]
    contexts: Vec<Named<ContextEntry>>,
    #[serde(rename = "current-context", default)]
    current_context: String,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "user", alias = "context")]
    item: T,
}

#[derive(Deserialize)]
struct Cluster {
    server: String,
    #[serde(rename = "certificate-authority-data")]
    ca_data: Option<String>,
    #[serde(rename = "certificate-authority")]
    ca_file: Option<PathBuf>,
    #[serde(rename = "insecure-skip-tls-verify", default)]
    insecure: bool,
}

#[derive(Deserialize)]
struct User {
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<PathBuf>,
}

#[derive(Deserialize)]
struct ContextEntry {
    cluster: String,
    user: String,
}

/// `--kubeconfig`, else the first file of `$KUBECONFIG`, else `~/.kube/config`.
pub fn path(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("KUBECONFIG").and_then(|v| std::env::split_paths(&v).next()) {
        return p;
    }
    PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".kube/config")
}

pub fn load(path: &Path, context: Option<&str>) -> anyhow::Result<Target> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let config: Config = serde_yaml::from_str(&text)
        .with_context(|| format!("parsing kubeconfig {}", path.display()))?;
    let ctx_name = context.unwrap_or(&config.current_context);
    let ctx = config
        .contexts
        .iter()
        .find(|c| c.name == ctx_name)
        .ok_or_else(|| anyhow!("context {ctx_name:?} not found in {}", path.display()))?;
    let cluster = config
        .clusters
        .iter()
        .find(|c| c.name == ctx.item.cluster)
        .ok_or_else(|| anyhow!("cluster {:?} not found", ctx.item.cluster))?;
    let user = config.users.iter().find(|u| u.name == ctx.item.user);
    let ca_pem = match (&cluster.item.ca_data, &cluster.item.ca_file) {
        (Some(data), _) => Some(
            STANDARD
                .decode(data.trim())
                .context("certificate-authority-data is not base64")?,
        ),
        (None, Some(file)) => {
            Some(std::fs::read(file).with_context(|| format!("reading {}", file.display()))?)
        }
        _ => None,
    };
    let token = match user {
        Some(Named {
            item: User { token: Some(t), .. },
            ..
        }) => Some(t.clone()),
        Some(Named {
            item: User {
                token_file: Some(f),
                ..
            },
            ..
        }) => Some(std::fs::read_to_string(f)?.trim().to_string()),
        _ => None,
    };
    Ok(Target {
        server: cluster.item.server.trim_end_matches('/').to_string(),
        ca_pem,
        token,
        insecure: cluster.item.insecure,
    })
}

/// A kubeconfig with one context per `(name, server)`, all sharing the CA and admin token.
pub fn admin_kubeconfig(servers: &[(String, String)], ca_pem: &[u8], token: &str) -> String {
    let ca = STANDARD.encode(ca_pem);
    let mut out = String::from("apiVersion: v1\nkind: Config\nclusters:\n");
    for (name, server) in servers {
        out += &format!("- name: {name}\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n");
    }
    out += "users:\n- name: shoal-admin\n  user:\n";
    out += &format!("    token: {token}\n");
    out += "contexts:\n";
    for (name, _) in servers {
        out += &format!("- name: {name}\n  context:\n    cluster: {name}\n    user: shoal-admin\n");
    }
    out += &format!(
        "current-context: {}\n",
        servers.first().map(|s| s.0.as_str()).unwrap_or("")
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_what_it_reads() {
        let dir = tempfile::tempdir().unwrap();
        let text = admin_kubeconfig(
            &[
                ("n1".into(), "https://10.0.0.1:6443".into()),
                ("n2".into(), "https://10.0.0.2:6443".into()),
            ],
            b"PEM",
            "tok",
        );
        let path = dir.path().join("kc");
        std::fs::write(&path, text).unwrap();
        let t = load(&path, None).unwrap();
        assert_eq!(t.server, "https://10.0.0.1:6443");
        assert_eq!(t.token.as_deref(), Some("tok"));
        assert_eq!(t.ca_pem.as_deref(), Some(&b"PEM"[..]));
        assert_eq!(
            load(&path, Some("n2")).unwrap().server,
            "https://10.0.0.2:6443"
        );
        assert!(load(&path, Some("nope")).is_err());
    }
}
