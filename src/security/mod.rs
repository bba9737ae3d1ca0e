//! Cluster secrets and the trust they anchor: the cluster identity, join tokens, admission
//! proofs between peers, sealing of secret values stored in the document, and the cluster CA.

mod admission;
mod ca;
mod identity;
mod seal;
mod secrets;

pub use admission::{admission_proof, verify_admission, AdmissionClaim};
pub use ca::{issue_server_cert, new_ca, CertPair};
pub use identity::{token_hash, ClusterIdentity, JoinToken};
pub use seal::{open, seal};
pub use secrets::{open_secret, seal_secret, SEALED_FIELD};

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("malformed join token: {0}")]
    BadToken(&'static str),
    #[error("admission proof does not verify")]
    BadProof,
    #[error("sealed value does not open (wrong cluster secret or corrupt data)")]
    Unseal,
    #[error("certificate: {0}")]
    Cert(String),
}

/// Derives a purpose-bound 32-byte key from the cluster secret (HKDF-SHA256).
fn derive_key(secret: &[u8; 32], purpose: &str) -> [u8; 32] {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"shoal/v1"), secret);
    let mut out = [0u8; 32];
    // 32 bytes is always a valid HKDF-SHA256 output length.
    hk.expand(purpose.as_bytes(), &mut out)
        .expect("32-byte HKDF output");
    out
}
