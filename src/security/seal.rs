//! Sealing: authenticated encryption (ChaCha20-Poly1305) of values the document must carry but
//! only members may read, with a key derived from the cluster secret.

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;

use super::{ClusterIdentity, SecurityError};

/// `nonce (12 bytes) || ciphertext+tag`. `purpose` binds the value to its use.
pub fn seal(identity: &ClusterIdentity, purpose: &str, plaintext: &[u8]) -> Vec<u8> {
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&identity.key(&format!("seal:{purpose}"))));
    let mut nonce = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let mut out = nonce.to_vec();
    // Encryption with a valid key and nonce cannot fail.
    out.extend(
        cipher
            .encrypt(Nonce::from_slice(&nonce), plaintext)
            .expect("chacha20poly1305 encrypt"),
    );
    out
}

pub fn open(
    identity: &ClusterIdentity,
    purpose: &str,
    sealed: &[u8],
) -> Result<Vec<u8>, SecurityError> {
    if sealed.len() < 12 + 16 {
        return Err(SecurityError::Unseal);
    }
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&identity.key(&format!("seal:{purpose}"))));
    let (nonce, body) = sealed.split_at(12);
    cipher
        .decrypt(Nonce::from_slice(nonce), body)
        .map_err(|_| SecurityError::Unseal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trip_and_tamper() {
        let id = ClusterIdentity::generate();
        let sealed = seal(&id, "ca-key", b"hello");
        assert_eq!(open(&id, "ca-key", &sealed).unwrap(), b"hello");
        assert!(open(&id, "other", &sealed).is_err());
        let mut bad = sealed.clone();
        bad[20] ^= 1;
        assert!(open(&id, "ca-key", &bad).is_err());
        assert!(open(&ClusterIdentity::generate(), "ca-key", &sealed).is_err());
        assert!(open(&id, "ca-key", &[1, 2, 3]).is_err());
    }
}
