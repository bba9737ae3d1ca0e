//! `shoal init`: creates a cluster (identity, CA, admin token, document) in a data dir, or
//! restores one from a backup into a new cluster generation.

use std::path::PathBuf;

use automerge::ActorId;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;

use super::backend::{BackupFile, BACKUP_FORMAT};
use super::{AgentError, AgentSettings, DataDir};
use crate::model::ipam;
use crate::security::{self, token_hash, ClusterIdentity, JoinToken};
use crate::state::{ClusterDoc, ClusterMeta, DocStore};

#[derive(Clone, Debug, Default)]
pub struct InitOptions {
    pub data_dir: PathBuf,
    pub settings: AgentSettings,
    /// Restore from this backup file (needs the old cluster's token to open its secrets).
    pub restore: Option<PathBuf>,
    pub token: Option<JoinToken>,
    /// Pod address space (`--cluster-cidr`); `None`: the default, or on restore the backed-up
    /// cluster's.
    pub cluster_cidr: Option<String>,
    /// Per-node subnet prefix length (`--node-cidr-mask`); `None` as for `cluster_cidr`.
    pub node_cidr_mask: Option<u8>,
    /// Service address space (`--service-cidr`); `None` as for `cluster_cidr`.
    pub service_cidr: Option<String>,
}

/// Checks a Service CIDR: IPv4 `ADDRESS/PREFIX` without host bits, from /12 (Kubernetes'
/// largest) to /29 (five assignable addresses), not overlapping the pod CIDR.
pub fn check_service_cidr(cidr: &str, cluster_cidr: &str) -> Result<(), String> {
    let bad = |why: &str| format!("invalid service CIDR {cidr:?}: {why}");
    if cidr.contains(':') {
        return Err(bad("IPv6 Services are not supported yet; use IPv4"));
    }
    let net: ipnet::Ipv4Net = cidr
        .parse()
        .map_err(|_| bad("expected an IPv4 ADDRESS/PREFIX, e.g. 10.96.0.0/12"))?;
    if net.trunc() != net {
        return Err(bad(&format!(
            "host bits are set (did you mean {}?)",
            net.trunc()
        )));
    }
    if !(12..=29).contains(&net.prefix_len()) {
        return Err(bad("the prefix must be from /12 to /29"));
    }
    if let Some(pods) = crate::model::network::parse_cidr(cluster_cidr) {
        if pods.contains(&net.network()) || net.contains(&pods.network()) {
            return Err(bad(&format!("overlaps the cluster (pod) CIDR {pods}")));
        }
    }
    Ok(())
}

pub struct InitOutput {
    pub join_token: JoinToken,
    pub admin_token: String,
}

pub fn init_cluster(opts: &InitOptions) -> Result<InitOutput, AgentError> {
    let dir = DataDir::new(&opts.data_dir);
    if dir.is_initialized() {
        return Err(AgentError::Config(format!(
            "{} already holds a cluster; refusing to overwrite it",
            opts.data_dir.display()
        )));
    }
    if !crate::model::is_dns1123_subdomain(&opts.settings.name) {
        return Err(AgentError::Config(format!(
            "node name {:?} is not a DNS-1123 subdomain",
            opts.settings.name
        )));
    }
    let actor = ActorId::random();
    let (identity, mut doc, ca, old_pod_cidr) = match &opts.restore {
        None => {
            let identity = ClusterIdentity::generate();
            let ca = security::new_ca(&identity.cluster_id)?;
            (identity, ClusterDoc::empty(actor), ca, None)
        }
        Some(path) => restore(path, opts.token.as_ref(), actor)?,
    };
    let (default_cidr, default_mask, default_services) = old_pod_cidr.unwrap_or_else(|| {
        (
            ipam::DEFAULT_CLUSTER_CIDR.to_string(),
            ipam::DEFAULT_NODE_CIDR_MASK,
            crate::model::network::DEFAULT_SERVICE_CIDR.to_string(),
        )
    });
    let cluster_cidr = opts.cluster_cidr.clone().unwrap_or(default_cidr);
    let node_cidr_mask = opts.node_cidr_mask.unwrap_or(default_mask);
    let service_cidr = opts.service_cidr.clone().unwrap_or(default_services);
    ipam::PodCidrConfig::new(&cluster_cidr, node_cidr_mask)
        .map_err(|e| AgentError::Config(e.to_string()))?;
    check_service_cidr(&service_cidr, &cluster_cidr).map_err(AgentError::Config)?;
    let meta = ClusterMeta {
        cluster_id: identity.cluster_id.clone(),
        generation: identity.generation,
        created: chrono::Utc::now(),
        ca_cert_pem: ca.cert_pem.clone(),
        ca_key_sealed: security::seal(&identity, "ca-key", ca.key_pem.as_bytes()),
        cluster_cidr,
        node_cidr_mask,
        service_cidr,
    };
    doc.put_meta(&meta)?;
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let admin_token = URL_SAFE_NO_PAD.encode(raw);
    doc.add_token(&token_hash(&admin_token), "admin")?;

    dir.create()?;
    dir.write_identity(&identity)?;
    dir.write_settings(&opts.settings)?;
    dir.node_key()?;
    dir.write("tls/ca.crt", ca.cert_pem.as_bytes(), 0o644)?;
    dir.write("admin-token", format!("{admin_token}\n").as_bytes(), 0o600)?;
    let join_token = identity.join_token();
    dir.write("join-token", format!("{join_token}\n").as_bytes(), 0o600)?;
    DocStore::new(dir.root())
        .save(&mut doc)
        .map_err(|e| AgentError::Other(format!("saving the document: {e}")))?;
    Ok(InitOutput {
        join_token,
        admin_token,
    })
}

/// Opens a backup, checks it against the old cluster's token, and rebuilds its state into a
/// fresh document for the next generation: no history, no node records (the hosts are gone),
/// no old metadata, no pod-CIDR claims (their nodes are gone). The CA is kept, so existing
/// kubeconfigs keep trusting the API, and so are the pod-CIDR and Service-CIDR settings
/// (returned last). Services keep their ClusterIPs and NodePorts.
#[allow(clippy::type_complexity)]
fn restore(
    path: &PathBuf,
    token: Option<&JoinToken>,
    actor: ActorId,
) -> Result<
    (
        ClusterIdentity,
        ClusterDoc,
        security::CertPair,
        Option<(String, u8, String)>,
    ),
    AgentError,
> {
    let token = token.ok_or_else(|| AgentError::Config("--restore needs --token with the backed-up cluster's join token (it holds the secret that opens the backup's sealed values)".into()))?;
    let bytes = std::fs::read(path)
        .map_err(|e| AgentError::Config(format!("reading {}: {e}", path.display())))?;
    let file: BackupFile = cbor4ii::serde::from_slice(&bytes).map_err(|e| {
        AgentError::Config(format!("{} is not a shoal backup: {e}", path.display()))
    })?;
    if file.format != BACKUP_FORMAT {
        return Err(AgentError::Config(format!(
            "unsupported backup format {:?}",
            file.format
        )));
    }
    if file.cluster_id != token.cluster_id {
        return Err(AgentError::Config(format!(
            "the backup is of cluster {}, the token of cluster {}",
            file.cluster_id, token.cluster_id
        )));
    }
    let old = token.clone().into_identity();
    let old_doc = ClusterDoc::load(&file.document, ActorId::random())
        .map_err(|e| AgentError::Config(format!("the backup's document does not load: {e}")))?;
    let meta = old_doc
        .meta()?
        .ok_or_else(|| AgentError::Config("the backup has no cluster metadata".into()))?;
    let ca_key = security::open(&old, "ca-key", &meta.ca_key_sealed).map_err(|_| {
        AgentError::Config("the token does not open the backup (wrong cluster secret)".into())
    })?;
    let ca = security::CertPair {
        cert_pem: meta.ca_cert_pem.clone(),
        key_pem: String::from_utf8_lossy(&ca_key).into_owned(),
    };
    let generation = file.generation.max(meta.generation).max(token.generation) + 1;
    let identity = ClusterIdentity {
        cluster_id: old.cluster_id.clone(),
        generation,
        secret: old.secret,
    };
    let doc = old_doc.rebuild(actor, |key| {
        key != "meta"
            && key != crate::state::history::RECORD_KEY
            && !key.starts_with("node/")
            && !key.starts_with(ipam::CLAIM_PREFIX)
    })?;
    let pod_cidr = Some((
        meta.cluster_cidr.clone(),
        meta.node_cidr_mask,
        meta.service_cidr.clone(),
    ));
    Ok((identity, doc, ca, pod_cidr))
}

#[cfg(test)]
mod tests {
    use super::check_service_cidr;

    #[test]
    fn service_cidrs_are_checked() {
        assert!(check_service_cidr("10.96.0.0/12", "10.244.0.0/16").is_ok());
        assert!(check_service_cidr("10.0.0.0/29", "10.244.0.0/16").is_ok());
        for (cidr, why) in [
            (
                "10.96.0.1/12",
                "host bits are set (did you mean 10.96.0.0/12?)",
            ),
            ("10.0.0.0/8", "the prefix must be from /12 to /29"),
            ("10.0.0.0/30", "the prefix must be from /12 to /29"),
            ("fd00::/108", "IPv6 Services are not supported yet"),
            ("10.96.0.0", "expected an IPv4 ADDRESS/PREFIX"),
            (
                "10.244.0.0/20",
                "overlaps the cluster (pod) CIDR 10.244.0.0/16",
            ),
            (
                "10.240.0.0/12",
                "overlaps the cluster (pod) CIDR 10.244.0.0/16",
            ),
        ] {
            let err = check_service_cidr(cidr, "10.244.0.0/16").unwrap_err();
            assert!(err.contains(why), "{cidr}: {err}");
        }
    }
}
