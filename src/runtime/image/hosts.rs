//! Per-registry trust and mirrors as operators lay them out for Docker and containerd.
//!
//! A certs directory (`--registry-certs-dir`, default `/etc/shoal/certs.d`) holds one
//! directory per registry, named `host` or `host:port` exactly as the registry appears in
//! image references (Docker's `certs.d` layout, which containerd reads too):
//!
//! ```text
//! /etc/shoal/certs.d/registry.local:5000/ca.crt        CA certificate(s), PEM (any *.crt)
//! /etc/shoal/certs.d/registry.local:5000/client.cert   client certificate chain, PEM
//! /etc/shoal/certs.d/registry.local:5000/client.key    its private key, PEM
//! ```
//!
//! Every `*.crt` is trusted for connections to that registry only, on top of the system roots;
//! a `*.crt` that is itself the certificate the registry presents (Docker's self-signed recipe:
//! a CA certificate used as the server's own) is *pinned* (see [`super::tls`]). A `NAME.cert`
//! needs its `NAME.key` (and the reverse), as Docker requires. containerd's `hosts.toml` is
//! not read: its presence is reported (mirrors are configured with `--registry-mirror`).
//! Other files are ignored, as Docker ignores them.
//!
//! Parsing ([`parse_host_dir`]) is pure; [`load_host`] reads the files. A file that does not
//! parse is an error naming it, never a silent fallback to the system roots only.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest as _, Sha256};

/// Files read per registry directory at most, and their size: a certs directory is small.
const MAX_FILES: usize = 64;
const MAX_FILE_BYTES: u64 = 1 << 20;

/// The trust material of one registry.
#[derive(Debug)]
pub struct RegistryTls {
    /// The directory it came from (for messages).
    pub dir: PathBuf,
    /// Certificates from the `*.crt` files: extra roots, and pinned server certificates.
    pub roots: Vec<CertificateDer<'static>>,
    /// The client certificate chain and key (`NAME.cert` + `NAME.key`).
    pub client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    /// Whether a containerd `hosts.toml` was there (not read).
    pub has_hosts_toml: bool,
    /// sha256 over the files read: a changed directory builds a new client.
    pub fingerprint: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertsError {
    #[error("{0}: no PEM certificate in it")]
    NoCertificate(PathBuf),
    #[error("{0}: not a PEM certificate file: {1}")]
    BadCertificate(PathBuf, String),
    #[error("{0}: not a PEM private key: {1}")]
    BadKey(PathBuf, String),
    #[error("{0}: missing its key {1} (a client certificate needs NAME.cert and NAME.key)")]
    MissingKey(PathBuf, PathBuf),
    #[error("{0}: missing its certificate {1} (a client key needs NAME.cert and NAME.key)")]
    MissingCert(PathBuf, PathBuf),
    #[error("{0}: more than one client certificate ({1}); keep one NAME.cert/NAME.key pair")]
    ManyClients(PathBuf, String),
    #[error("{0}: {1}")]
    Io(PathBuf, String),
}

/// Parses the files of registry directory `dir` (file name and content). `Ok(None)` when no
/// file there carries trust material.
pub fn parse_host_dir(
    dir: &Path,
    files: &[(String, Vec<u8>)],
) -> Result<Option<RegistryTls>, CertsError> {
    let mut files: Vec<&(String, Vec<u8>)> = files.iter().collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut hasher = Sha256::new();
    let mut roots = Vec::new();
    let mut certs = Vec::new();
    let mut keys = Vec::new();
    let mut has_hosts_toml = false;
    for (name, bytes) in &files {
        let path = dir.join(name);
        if name.ends_with(".crt") {
            roots.extend(pem_certs(&path, bytes)?);
        } else if let Some(stem) = name.strip_suffix(".cert") {
            certs.push((stem.to_string(), path, bytes));
        } else if let Some(stem) = name.strip_suffix(".key") {
            keys.push((stem.to_string(), path, bytes));
        } else if name == "hosts.toml" {
            has_hosts_toml = true;
        } else {
            continue;
        }
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    }
    for (stem, path, _) in &certs {
        if !keys.iter().any(|(k, _, _)| k == stem) {
            return Err(CertsError::MissingKey(
                path.clone(),
                dir.join(format!("{stem}.key")),
            ));
        }
    }
    for (stem, path, _) in &keys {
        if !certs.iter().any(|(c, _, _)| c == stem) {
            return Err(CertsError::MissingCert(
                path.clone(),
                dir.join(format!("{stem}.cert")),
            ));
        }
    }
    if certs.len() > 1 {
        let names: Vec<String> = certs.iter().map(|(s, _, _)| format!("{s}.cert")).collect();
        return Err(CertsError::ManyClients(dir.to_path_buf(), names.join(", ")));
    }
    let client = match certs.first() {
        None => None,
        Some((stem, cert_path, cert_bytes)) => {
            let chain = pem_certs(cert_path, cert_bytes)?;
            let (_, key_path, key_bytes) = keys
                .iter()
                .find(|(k, _, _)| k == stem)
                .expect("checked above: every cert has its key");
            let key = PrivateKeyDer::from_pem_slice(key_bytes)
                .map_err(|e| CertsError::BadKey(key_path.clone(), e.to_string()))?;
            Some((chain, key))
        }
    };
    if roots.is_empty() && client.is_none() && !has_hosts_toml {
        return Ok(None);
    }
    Ok(Some(RegistryTls {
        dir: dir.to_path_buf(),
        roots,
        client,
        has_hosts_toml,
        fingerprint: hasher.finalize().into(),
    }))
}

fn pem_certs(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, CertsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| CertsError::BadCertificate(path.to_path_buf(), e.to_string()))?;
    if certs.is_empty() {
        return Err(CertsError::NoCertificate(path.to_path_buf()));
    }
    Ok(certs)
}

/// The trust material for registry `host` (`host` or `host:port`): from the first of `dirs`
/// that has a directory for it. `Ok(None)`: none has one (the system roots alone apply).
pub fn load_host(dirs: &[PathBuf], host: &str) -> Result<Option<RegistryTls>, CertsError> {
    // A registry name never holds a path separator or a dot-only name (reference grammar),
    // but the check keeps a hostile name from leaving the certs directory.
    if host.is_empty() || host.contains('/') || host == "." || host == ".." {
        return Ok(None);
    }
    for base in dirs {
        let dir = base.join(host);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(CertsError::Io(dir, e.to_string())),
        };
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| CertsError::Io(dir.clone(), e.to_string()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !(name.ends_with(".crt")
                || name.ends_with(".cert")
                || name.ends_with(".key")
                || name == "hosts.toml")
            {
                continue;
            }
            if files.len() == MAX_FILES {
                return Err(CertsError::Io(
                    dir.clone(),
                    format!("more than {MAX_FILES} certificate and key files"),
                ));
            }
            let path = entry.path();
            let len = std::fs::metadata(&path)
                .map_err(|e| CertsError::Io(path.clone(), e.to_string()))?
                .len();
            if len > MAX_FILE_BYTES {
                return Err(CertsError::Io(
                    path,
                    format!("{len} bytes: larger than {MAX_FILE_BYTES}"),
                ));
            }
            let bytes = std::fs::read(&path).map_err(|e| CertsError::Io(path, e.to_string()))?;
            files.push((name, bytes));
        }
        return parse_host_dir(&dir, &files);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(name: &str) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    fn files(list: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        list.iter()
            .map(|(n, b)| (n.to_string(), b.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn ca_files_and_a_client_pair_are_read() {
        let (ca, _) = self_signed("ca");
        let (ca2, _) = self_signed("ca2");
        let (cert, key) = self_signed("client");
        let got = parse_host_dir(
            Path::new("/c/r:5000"),
            &files(&[
                ("ca.crt", &ca),
                ("extra.crt", &ca2),
                ("client.cert", &cert),
                ("client.key", &key),
                ("README", "ignored"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(got.roots.len(), 2);
        let (chain, _) = got.client.unwrap();
        assert_eq!(chain.len(), 1);
        assert!(!got.has_hosts_toml);
    }

    #[test]
    fn nothing_relevant_is_none() {
        assert!(
            parse_host_dir(Path::new("/c/r"), &files(&[("notes.txt", "x")]))
                .unwrap()
                .is_none()
        );
        assert!(parse_host_dir(Path::new("/c/r"), &[]).unwrap().is_none());
    }

    #[test]
    fn corrupt_and_incomplete_files_are_named() {
        let (cert, key) = self_signed("client");
        let dir = Path::new("/c/r");
        assert_eq!(
            parse_host_dir(dir, &files(&[("ca.crt", "not pem")])).unwrap_err(),
            CertsError::NoCertificate(dir.join("ca.crt"))
        );
        let broken = "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            parse_host_dir(dir, &files(&[("ca.crt", broken)])).unwrap_err(),
            CertsError::BadCertificate(p, _) if p == dir.join("ca.crt")
        ));
        assert_eq!(
            parse_host_dir(dir, &files(&[("client.cert", &cert)])).unwrap_err(),
            CertsError::MissingKey(dir.join("client.cert"), dir.join("client.key"))
        );
        assert_eq!(
            parse_host_dir(dir, &files(&[("client.key", &key)])).unwrap_err(),
            CertsError::MissingCert(dir.join("client.key"), dir.join("client.cert"))
        );
        assert!(matches!(
            parse_host_dir(dir, &files(&[("client.cert", &cert), ("client.key", "junk")]))
                .unwrap_err(),
            CertsError::BadKey(p, _) if p == dir.join("client.key")
        ));
        assert!(matches!(
            parse_host_dir(
                dir,
                &files(&[
                    ("a.cert", &cert),
                    ("a.key", &key),
                    ("b.cert", &cert),
                    ("b.key", &key)
                ])
            )
            .unwrap_err(),
            CertsError::ManyClients(..)
        ));
    }

    #[test]
    fn fingerprint_follows_the_content_not_the_listing_order() {
        let (ca, _) = self_signed("ca");
        let (ca2, _) = self_signed("ca2");
        let dir = Path::new("/c/r");
        let a = parse_host_dir(dir, &files(&[("a.crt", &ca), ("b.crt", &ca2)]))
            .unwrap()
            .unwrap();
        let b = parse_host_dir(dir, &files(&[("b.crt", &ca2), ("a.crt", &ca)]))
            .unwrap()
            .unwrap();
        let c = parse_host_dir(dir, &files(&[("a.crt", &ca2), ("b.crt", &ca)]))
            .unwrap()
            .unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_ne!(a.fingerprint, c.fingerprint);
    }

    #[test]
    fn first_dir_with_the_host_wins_and_hostile_names_are_not_paths() {
        let t = tempfile::tempdir().unwrap();
        let (ca, _) = self_signed("ca");
        let one = t.path().join("one");
        let two = t.path().join("two");
        std::fs::create_dir_all(two.join("r:5000")).unwrap();
        std::fs::write(two.join("r:5000/ca.crt"), &ca).unwrap();
        let got = load_host(&[one.clone(), two.clone()], "r:5000")
            .unwrap()
            .unwrap();
        assert_eq!(got.dir, two.join("r:5000"));
        assert!(load_host(&[one, two.clone()], "other").unwrap().is_none());
        assert!(load_host(std::slice::from_ref(&two), "..")
            .unwrap()
            .is_none());
        assert!(load_host(&[two], "r:5000/../x").unwrap().is_none());
    }
}
