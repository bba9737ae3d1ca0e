//! The cluster identity (id, generation, secret) and the join token that carries it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::SecurityError;

/// What makes a host a member: the cluster's id, its generation (bumped by every restore) and
/// the secret every member holds. Persisted in the data dir; never written to the document.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterIdentity {
    pub cluster_id: String,
    pub generation: u64,
    pub secret: [u8; 32],
}

impl std::fmt::Debug for ClusterIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterIdentity")
            .field("cluster_id", &self.cluster_id)
            .field("generation", &self.generation)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl ClusterIdentity {
    pub fn generate() -> Self {
        let mut rng = rand::rngs::OsRng;
        let mut id = [0u8; 8];
        rng.fill_bytes(&mut id);
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        ClusterIdentity {
            cluster_id: hex::encode(id),
            generation: 1,
            secret,
        }
    }

    pub fn join_token(&self) -> JoinToken {
        JoinToken {
            cluster_id: self.cluster_id.clone(),
            generation: self.generation,
            secret: self.secret,
        }
    }

    pub(super) fn key(&self, purpose: &str) -> [u8; 32] {
        super::derive_key(&self.secret, purpose)
    }

    /// The bearer token agents use on each other's APIs (log proxying): derived from the
    /// cluster secret, so every member knows it and nobody else can compute it.
    pub fn internal_api_token(&self) -> String {
        format!("shoal-internal.{}", hex::encode(self.key("api:internal")))
    }
}

/// `shoal1.<cluster id>.<generation>.<secret, base64url>`: handed to joining hosts.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub cluster_id: String,
    pub generation: u64,
    pub secret: [u8; 32],
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "JoinToken({}, generation {}, <secret>)",
            self.cluster_id, self.generation
        )
    }
}

impl JoinToken {
    pub fn into_identity(self) -> ClusterIdentity {
        ClusterIdentity {
            cluster_id: self.cluster_id,
            generation: self.generation,
            secret: self.secret,
        }
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "shoal1.{}.{}.{}",
            self.cluster_id,
            self.generation,
            URL_SAFE_NO_PAD.encode(self.secret)
        )
    }
}

impl std::str::FromStr for JoinToken {
    type Err = SecurityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.len() > 256 {
            return Err(SecurityError::BadToken("too long"));
        }
        let mut parts = s.split('.');
        if parts.next() != Some("shoal1") {
            return Err(SecurityError::BadToken(
                "expected it to start with `shoal1.`",
            ));
        }
        let cluster_id = parts
            .next()
            .ok_or(SecurityError::BadToken("missing cluster id"))?;
        if cluster_id.len() != 16 || !cluster_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SecurityError::BadToken("cluster id must be 16 hex digits"));
        }
        let generation = parts
            .next()
            .and_then(|g| g.parse::<u64>().ok())
            .ok_or(SecurityError::BadToken("missing or bad generation"))?;
        let secret = parts
            .next()
            .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
            .ok_or(SecurityError::BadToken(
                "secret must be 32 bytes of base64url",
            ))?;
        if parts.next().is_some() {
            return Err(SecurityError::BadToken("trailing fields"));
        }
        Ok(JoinToken {
            cluster_id: cluster_id.to_ascii_lowercase(),
            generation,
            secret,
        })
    }
}

/// Hash under which API bearer tokens are stored in the document (never the token itself).
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips() {
        let id = ClusterIdentity::generate();
        let text = id.join_token().to_string();
        let back: JoinToken = text.parse().unwrap();
        assert_eq!(back.into_identity(), id);
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in [
            "",
            "shoal1",
            "shoal2.0011223344556677.1.AAAA",
            "shoal1.zz.1.AAAA",
            "shoal1.0011223344556677.x.AAAA",
            "shoal1.0011223344556677.1.AAAA",
            "shoal1.0011223344556677.1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.extra",
        ] {
            assert!(bad.parse::<JoinToken>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let id = ClusterIdentity::generate();
        let shown = format!("{id:?}");
        assert!(!shown.contains(&URL_SAFE_NO_PAD.encode(id.secret)));
        assert!(shown.contains("redacted"));
    }
}
