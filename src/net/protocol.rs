//! The wire protocol between agents: two request-response protocols carried over libp2p QUIC
//! streams, CBOR-encoded (cbor4ii). `/shoal/admit/1` carries only the admission exchange, in
//! messages of at most [`MAX_ADMIT_BYTES`]; `/shoal/1` carries everything else and is offered
//! only to admitted peers (`net::gate`). Every vector is bounded while decoding, before its
//! elements are allocated.

use serde::{Deserialize, Serialize};

use crate::membership;
use crate::security::AdmissionClaim;
use crate::state::transfer::{TransferId, CHUNK_BYTES};
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
/// The admission protocol, the only one open to peers that have not been admitted.
pub const ADMIT_PROTOCOL: &str = "/shoal/admit/1";
/// Largest admission request or response (a claim, a 32-byte proof and an address).
pub const MAX_ADMIT_BYTES: u64 = 4096;
/// Largest request or response accepted from a peer. No message needs more: a sync that would
/// is replaced by a chunked snapshot transfer (`state::transfer`).
pub const MAX_MESSAGE_BYTES: u64 = 32 << 20;
/// Most changes carried by one push.
pub const MAX_PUSH_CHANGES: usize = 1024;

/// Proof that the sender holds the cluster secret, bound to both peer ids and its name, and the
/// address it wants to be dialled at. Sent both ways on `/shoal/admit/1`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Admit {
    pub claim: AdmissionClaim,
    pub proof: serde_bytes_vec::Bytes,
    pub p2p_addr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdmitResponse {
    Admitted(Admit),
    Refused { reason: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// A membership (failure detector) message.
    Gossip(membership::Message),
    /// Fast path: automerge changes just made locally to one document.
    Push {
        doc: DocRef,
        #[serde(deserialize_with = "bounded::push_changes")]
        changes: Vec<serde_bytes_vec::Bytes>,
    },
    /// Anti-entropy, step 1: what the sender holds; the receiver answers with what differs.
    Digest {
        #[serde(deserialize_with = "bounded::digest_docs")]
        docs: Vec<DocDigest>,
    },
    /// Anti-entropy, step 2: one automerge sync message for one document.
    Sync {
        doc: DocRef,
        message: serde_bytes_vec::Bytes,
    },
    /// State transfer: the sender's sync for the cluster document would need one message above
    /// the limit (`state::transfer::MAX_SYNC_MESSAGE_BYTES`); it offers its snapshot file
    /// instead, to be fetched in chunks.
    Offer { id: TransferId },
    /// State transfer: the chunk of snapshot `id` at `offset` (at most `CHUNK_BYTES`).
    Fetch { id: TransferId, offset: u64 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    Ok,
    /// The documents whose heads or versions differ between the two peers.
    Digest {
        #[serde(deserialize_with = "bounded::digest_ids")]
        differ: Vec<DocId>,
    },
    /// The reply in a sync exchange, if the responder has anything to say; `doc` carries the
    /// responder's version (higher than the sender's: the sender resets and re-syncs).
    Sync {
        doc: DocRef,
        message: Option<serde_bytes_vec::Bytes>,
    },
    /// One chunk of a snapshot being transferred (at most `CHUNK_BYTES`, refused while
    /// decoding past that) and the CRC-32 of its bytes.
    Chunk {
        id: TransferId,
        offset: u64,
        #[serde(deserialize_with = "bounded::chunk_bytes")]
        bytes: serde_bytes_vec::Bytes,
        crc: u32,
    },
    Refused {
        reason: String,
    },
}

/// Vectors that refuse, while decoding, to grow past a bound: the element count is checked
/// before each element is decoded (and allocated), so a message of millions of tiny elements
/// costs its sender more than it costs us.
pub mod bounded {
    use std::marker::PhantomData;

    use serde::de::{Deserialize, Deserializer, Error, SeqAccess, Visitor};

    use super::{
        serde_bytes_vec::Bytes, DocDigest, CHUNK_BYTES, MAX_DIGEST_DOCS, MAX_PUSH_CHANGES,
    };
    use crate::state::DocId;

    struct Bounded<T> {
        max: usize,
        what: &'static str,
        _t: PhantomData<T>,
    }

    impl<'de, T: Deserialize<'de>> Visitor<'de> for Bounded<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "at most {} {}", self.max, self.what)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let hint = seq.size_hint().unwrap_or(0);
            if hint > self.max {
                return Err(A::Error::custom(format!(
                    "{hint} {} (at most {})",
                    self.what, self.max
                )));
            }
            // Not the hint: it is the sender's claim, not bytes received.
            let mut out = Vec::with_capacity(hint.min(64));
            while let Some(item) = seq.next_element()? {
                if out.len() == self.max {
                    return Err(A::Error::custom(format!(
                        "more than {} {}",
                        self.max, self.what
                    )));
                }
                out.push(item);
            }
            Ok(out)
        }
    }

    /// A vector of at most `max` elements, refused while decoding past it.
    pub fn vec<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
        max: usize,
        what: &'static str,
    ) -> Result<Vec<T>, D::Error> {
        d.deserialize_seq(Bounded {
            max,
            what,
            _t: PhantomData,
        })
    }

    pub fn push_changes<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<super::serde_bytes_vec::Bytes>, D::Error> {
        vec(d, MAX_PUSH_CHANGES, "pushed changes")
    }

    pub fn digest_docs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<DocDigest>, D::Error> {
        vec(d, MAX_DIGEST_DOCS, "digest lines")
    }

    pub fn digest_ids<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<DocId>, D::Error> {
        vec(d, MAX_DIGEST_DOCS, "differing documents")
    }

    /// A byte string of at most `max` bytes, its length checked before it is copied.
    struct BoundedBytes {
        max: usize,
        what: &'static str,
    }

    impl BoundedBytes {
        fn check<E: Error>(&self, len: usize) -> Result<(), E> {
            if len > self.max {
                return Err(E::custom(format!(
                    "{} of {len} bytes (at most {})",
                    self.what, self.max
                )));
            }
            Ok(())
        }
    }

    impl<'de> Visitor<'de> for BoundedBytes {
        type Value = Bytes;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a byte string of at most {} bytes", self.max)
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Bytes, E> {
            self.check(v.len())?;
            Ok(Bytes(v.to_vec()))
        }

        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
            self.check(v.len())?;
            Ok(Bytes(v))
        }
    }

    /// The bytes of a snapshot chunk: at most `CHUNK_BYTES`.
    pub fn chunk_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        d.deserialize_byte_buf(BoundedBytes {
            max: CHUNK_BYTES,
            what: "a snapshot chunk",
        })
    }
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

    /// A push of a million one-byte changes is refused while decoding, after the bound, not
    /// decoded into a million allocations and refused afterwards.
    #[test]
    fn oversized_vectors_are_refused_while_decoding() {
        let many = |n: usize| Request::Push {
            doc: DocRef {
                id: DocId::Cluster,
                version: 0,
            },
            changes: (0..n).map(|_| serde_bytes_vec::Bytes(vec![7])).collect(),
        };
        let ok = cbor4ii::serde::to_vec(Vec::new(), &many(MAX_PUSH_CHANGES)).unwrap();
        assert!(cbor4ii::serde::from_slice::<Request>(&ok).is_ok());
        let big = cbor4ii::serde::to_vec(Vec::new(), &many(1_000_000)).unwrap();
        let err = cbor4ii::serde::from_slice::<Request>(&big).unwrap_err();
        assert!(err.to_string().contains("pushed changes"), "{err}");
        // An indefinite-length array has no count up front: refused at element 1025.
        let mut indefinite = ok.clone();
        let at = indefinite
            .windows(3)
            .position(|w| w == [0x99, 0x04, 0x00])
            .expect("a definite array of 1024");
        indefinite.splice(at..at + 3, [0x9f]);
        indefinite.extend([0x41, 7, 0xff]);
        assert!(cbor4ii::serde::from_slice::<Request>(&indefinite).is_err());
        let docs = Request::Digest {
            docs: (0..MAX_DIGEST_DOCS + 1)
                .map(|i| DocDigest {
                    doc: DocRef {
                        id: DocId::Status(format!("n{i}")),
                        version: 0,
                    },
                    heads: 0,
                })
                .collect(),
        };
        let enc = cbor4ii::serde::to_vec(Vec::new(), &docs).unwrap();
        assert!(cbor4ii::serde::from_slice::<Request>(&enc).is_err());
    }

    /// A full snapshot chunk fits the message limit with room to spare and decodes; one byte
    /// more is refused while decoding, as is a chunk spelled as an array of numbers.
    #[test]
    fn snapshot_chunks_are_bounded_while_decoding() {
        let id = TransferId {
            generation: 1,
            total: 5 * CHUNK_BYTES as u64,
            tag: 7,
            doc: 0,
        };
        let chunk = |len: usize| Response::Chunk {
            id,
            offset: CHUNK_BYTES as u64,
            bytes: serde_bytes_vec::Bytes(vec![0xA5; len]),
            crc: 9,
        };
        let full = cbor4ii::serde::to_vec(Vec::new(), &chunk(CHUNK_BYTES)).unwrap();
        assert!(
            full.len() < CHUNK_BYTES + 128,
            "framing of {} bytes",
            full.len() - CHUNK_BYTES
        );
        assert!((full.len() as u64) < MAX_MESSAGE_BYTES / 16);
        match cbor4ii::serde::from_slice::<Response>(&full).unwrap() {
            Response::Chunk { bytes, crc, .. } => {
                assert_eq!(bytes.0.len(), CHUNK_BYTES);
                assert_eq!(crc, 9);
            }
            other => panic!("{other:?}"),
        }
        let over = cbor4ii::serde::to_vec(Vec::new(), &chunk(CHUNK_BYTES + 1)).unwrap();
        let err = cbor4ii::serde::from_slice::<Response>(&over).unwrap_err();
        assert!(err.to_string().contains("snapshot chunk"), "{err}");
        #[derive(Serialize)]
        enum Spelled {
            Chunk {
                id: TransferId,
                offset: u64,
                bytes: Vec<u8>,
                crc: u32,
            },
        }
        let numbers = Spelled::Chunk {
            id,
            offset: 0,
            bytes: vec![1, 2, 3],
            crc: 0,
        };
        let enc = cbor4ii::serde::to_vec(Vec::new(), &numbers).unwrap();
        assert!(cbor4ii::serde::from_slice::<Response>(&enc).is_err());
    }
}
