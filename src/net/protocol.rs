//! The wire protocol between agents: one request-response protocol (`/shoal/1`) carried over
//! libp2p QUIC streams, CBOR-encoded (cbor4ii). Every message other than `Admit` is refused
//! until the sender has been admitted.

use serde::{Deserialize, Serialize};

use crate::membership;
use crate::security::AdmissionClaim;
use crate::state::DocId;

/// Most documents one digest may list.
pub const MAX_DIGEST_DOCS: usize = 16384 + 1;

/// A document at a version. The cluster document is at version 0; a status document's
/// version goes up each time its owner re-bases it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocRef {
    pub id: DocId,
    pub version: u64,
}

/// One line of an anti-entropy digest: a document and a hash of its heads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocDigest {
    pub doc: DocRef,
    pub heads: u64,
}

pub const PROTOCOL: &str = "/shoal/1";
/// Largest request or response accepted from a peer (a first sync of a large document).
pub const MAX_MESSAGE_BYTES: u64 = 32 << 20;
/// Most changes carried by one push.
pub const MAX_PUSH_CHANGES: usize = 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Proof that the sender holds the cluster secret, bound to both peer ids and its name.
    Admit {
        claim: AdmissionClaim,
        proof: serde_bytes_vec::Bytes,
        p2p_addr: String,
    },
    /// A membership (failure detector) message.
    Gossip(membership::Message),
    /// Fast path: automerge changes just made locally to one document.
    Push {
        doc: DocRef,
        changes: Vec<serde_bytes_vec::Bytes>,
    },
    /// Anti-entropy, step 1: what the sender holds; the receiver answers with what differs.
    Digest { docs: Vec<DocDigest> },
    /// Anti-entropy, step 2: one automerge sync message for one document.
    Sync {
        doc: DocRef,
        message: serde_bytes_vec::Bytes,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    Admitted {
        claim: AdmissionClaim,
        proof: serde_bytes_vec::Bytes,
        p2p_addr: String,
    },
    Ok,
    /// The documents whose heads or versions differ between the two peers.
    Digest {
        differ: Vec<DocId>,
    },
    /// The reply in a sync exchange, if the responder has anything to say; `doc` carries the
    /// responder's version (higher than the sender's: the sender resets and re-syncs).
    Sync {
        doc: DocRef,
        message: Option<serde_bytes_vec::Bytes>,
    },
    Refused {
        reason: String,
    },
}

/// Byte strings encoded as CBOR byte strings (not arrays of integers).
pub mod serde_bytes_vec {
    use serde::{Deserialize, Serialize};

    /// Bytes on the wire as a CBOR byte string (not an array of numbers), through `serde_bytes`;
    /// logged by length only.
    #[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(transparent)]
    pub struct Bytes(#[serde(with = "serde_bytes")] pub Vec<u8>);

    impl std::fmt::Debug for Bytes {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "<{} bytes>", self.0.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_round_trips_as_cbor_bytes() {
        let doc = DocRef {
            id: DocId::Cluster,
            version: 0,
        };
        let req = Request::Push {
            doc,
            changes: vec![serde_bytes_vec::Bytes(vec![1, 2, 3])],
        };
        let enc = cbor4ii::serde::to_vec(Vec::new(), &req).unwrap();
        assert!(
            enc.len() < 64,
            "bytes must encode compactly: {} bytes",
            enc.len()
        );
        let back: Request = cbor4ii::serde::from_slice(&enc).unwrap();
        assert!(matches!(back, Request::Push { changes, .. } if changes[0].0 == vec![1, 2, 3]));
        assert!(cbor4ii::serde::from_slice::<Request>(&[0xff, 0x13]).is_err());
    }

    #[test]
    fn bytes_are_one_cbor_byte_string() {
        let enc =
            cbor4ii::serde::to_vec(Vec::new(), &serde_bytes_vec::Bytes(vec![1, 2, 3])).unwrap();
        assert_eq!(enc, [0x43, 1, 2, 3], "major type 2, length 3");
        let back: serde_bytes_vec::Bytes = cbor4ii::serde::from_slice(&enc).unwrap();
        assert_eq!(back.0, [1, 2, 3]);
    }
}
