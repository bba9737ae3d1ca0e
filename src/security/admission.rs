//! Admission proofs: a peer proves it holds the cluster secret, bound to both authenticated
//! libp2p peer ids and to the node name it claims, so a proof seen once cannot be replayed by
//! another peer, to another peer, or for another name.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::{ClusterIdentity, SecurityError};

type HmacSha256 = Hmac<Sha256>;

/// What a peer claims about itself when it asks to be admitted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmissionClaim {
    pub cluster_id: String,
    pub generation: u64,
    pub node_name: String,
    /// The prover's peer id, as authenticated by the QUIC TLS handshake.
    pub prover: String,
    /// The peer id of the node the proof is addressed to.
    pub verifier: String,
}

impl AdmissionClaim {
    fn mac(&self, identity: &ClusterIdentity) -> HmacSha256 {
        let mut mac =
            HmacSha256::new_from_slice(&identity.key("admission")).expect("any key length");
        for field in [
            self.cluster_id.as_bytes(),
            self.node_name.as_bytes(),
            self.prover.as_bytes(),
            self.verifier.as_bytes(),
        ] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field);
        }
        mac.update(&self.generation.to_be_bytes());
        mac
    }
}

pub fn admission_proof(identity: &ClusterIdentity, claim: &AdmissionClaim) -> Vec<u8> {
    claim.mac(identity).finalize().into_bytes().to_vec()
}

/// Constant-time check of `proof` for `claim` under our own identity.
pub fn verify_admission(
    identity: &ClusterIdentity,
    claim: &AdmissionClaim,
    proof: &[u8],
) -> Result<(), SecurityError> {
    claim
        .mac(identity)
        .verify_slice(proof)
        .map_err(|_| SecurityError::BadProof)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim() -> AdmissionClaim {
        AdmissionClaim {
            cluster_id: "c".into(),
            generation: 1,
            node_name: "n1".into(),
            prover: "A".into(),
            verifier: "B".into(),
        }
    }

    #[test]
    fn proof_verifies_only_for_its_exact_claim() {
        let id = ClusterIdentity::generate();
        let proof = admission_proof(&id, &claim());
        assert!(verify_admission(&id, &claim(), &proof).is_ok());
        let other_prover = AdmissionClaim {
            prover: "C".into(),
            ..claim()
        };
        let other_verifier = AdmissionClaim {
            verifier: "C".into(),
            ..claim()
        };
        let other_name = AdmissionClaim {
            node_name: "n2".into(),
            ..claim()
        };
        let other_gen = AdmissionClaim {
            generation: 2,
            ..claim()
        };
        for c in [other_prover, other_verifier, other_name, other_gen] {
            assert!(
                verify_admission(&id, &c, &proof).is_err(),
                "replayed for {c:?}"
            );
        }
    }

    #[test]
    fn another_clusters_secret_fails() {
        let ours = ClusterIdentity::generate();
        let theirs = ClusterIdentity {
            cluster_id: ours.cluster_id.clone(),
            ..ClusterIdentity::generate()
        };
        let proof = admission_proof(&theirs, &claim());
        assert!(verify_admission(&ours, &claim(), &proof).is_err());
        assert!(verify_admission(&ours, &claim(), b"short").is_err());
    }
}
