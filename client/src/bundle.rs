//! The inclusion proof bundle `trail-proof-v1` (docs/PROOFS.md): one event, its block
//! header, two audit paths and a signed checkpoint, in a JSON document that verifies
//! offline with nothing but the pinned verifier key. Pure: no I/O.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::block::{block_hash, BlockHeader, BlockHeaderError};
use crate::checkpoint::{split_stream, Checkpoint, CheckpointError};
use crate::event::{event_leaf_hash, CanonicalEvent, EventDecodeError};
use crate::note::VerifierKey;
use crate::verify::{verify_inclusion, VerifyError};

/// The bundle's `format` value.
pub const BUNDLE_FORMAT_V1: &str = "trail-proof-v1";

/// Most hashes an audit path can hold: one per level of a tree of 2^64 leaves.
const PATH_HASHES_MAX: usize = 64;

/// A `trail-proof-v1` document, field for field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofBundle {
    pub format: String,
    pub tenant_id: String,
    pub stream: String,
    pub event_id: String,
    pub seq: u64,
    /// Standard base64 of the canonical event bytes.
    pub event: String,
    /// The event's position in its block.
    pub leaf_index: u64,
    /// Standard base64 of the block header bytes.
    pub block_header: String,
    /// Hex hashes, RFC 9162 audit path of the event's leaf in the block tree.
    pub block_path: Vec<String>,
    /// Hex hashes, RFC 9162 audit path of the block hash in the stream tree.
    pub tree_path: Vec<String>,
    /// The signed checkpoint note, verbatim.
    pub checkpoint: String,
}

/// The parts of a proof, as bytes, to build a bundle from.
#[derive(Debug, Clone, Copy)]
pub struct BundleParts<'a> {
    pub tenant_id: &'a str,
    pub stream: &'a str,
    pub event_id: &'a str,
    pub seq: u64,
    pub event: &'a [u8],
    pub leaf_index: u64,
    pub block_header: &'a [u8],
    pub block_path: &'a [Vec<u8>],
    pub tree_path: &'a [Vec<u8>],
    pub checkpoint_note: &'a str,
}

impl ProofBundle {
    /// Encodes the parts as a bundle; nothing is checked (see [`verify_bundle`]).
    pub fn from_parts(parts: BundleParts<'_>) -> ProofBundle {
        ProofBundle {
            format: BUNDLE_FORMAT_V1.to_string(),
            tenant_id: parts.tenant_id.to_string(),
            stream: parts.stream.to_string(),
            event_id: parts.event_id.to_string(),
            seq: parts.seq,
            event: BASE64.encode(parts.event),
            leaf_index: parts.leaf_index,
            block_header: BASE64.encode(parts.block_header),
            block_path: parts.block_path.iter().map(hex::encode).collect(),
            tree_path: parts.tree_path.iter().map(hex::encode).collect(),
            checkpoint: parts.checkpoint_note.to_string(),
        }
    }

    /// Parses a bundle document; unknown fields are refused.
    pub fn from_json(text: &str) -> Result<ProofBundle, ProofError> {
        serde_json::from_str(text).map_err(|error| ProofError::Json {
            reason: error.to_string(),
        })
    }

    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).expect("a bundle serializes")
    }
}

/// What a verified bundle proves: this event is at `seq` of `stream`, in block
/// `block_index`, under the signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedEvent {
    pub event: CanonicalEvent,
    pub leaf_hash: [u8; 32],
    pub header: BlockHeader,
    pub block_hash: [u8; 32],
    pub leaf_index: u64,
    pub checkpoint: Checkpoint,
}

/// Why a bundle was rejected: the first failed step, naming what failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("bundle is not valid trail-proof-v1 JSON: {reason}")]
    Json { reason: String },
    #[error("bundle format is {found:?}, expected \"trail-proof-v1\"")]
    Format { found: String },
    #[error("bundle field {field} is invalid: {reason}")]
    Field { field: String, reason: String },
    // Step 1.
    #[error("{0}")]
    Checkpoint(CheckpointError),
    #[error("bundle stream {stream:?} is not \"{tenant_id}/<stream index>\"")]
    StreamNotTenants { stream: String, tenant_id: String },
    #[error(
        "checkpoint origin {origin:?} is for stream {checkpoint_stream}, not the bundle's {stream}"
    )]
    CheckpointStream {
        origin: String,
        checkpoint_stream: String,
        stream: String,
    },
    // Step 2.
    #[error("event bytes do not decode: {0}")]
    Event(EventDecodeError),
    #[error("event belongs to tenant {event}, not {bundle}")]
    EventTenant { event: String, bundle: String },
    #[error("event's {field} is {event:?}, the bundle says {bundle:?}")]
    EventField {
        field: &'static str,
        event: String,
        bundle: String,
    },
    // Step 3.
    #[error("block header does not decode: {0}")]
    Header(BlockHeaderError),
    #[error("block header is for stream {header}, not {bundle}")]
    HeaderStream { header: String, bundle: String },
    #[error("seq {seq} is not in the block, which holds seqs {first_seq}..={last_seq}")]
    SeqOutsideBlock {
        seq: u64,
        first_seq: u64,
        last_seq: u64,
    },
    #[error("leaf_index is {leaf_index}, but seq {seq} is at position {expected} of a block starting at seq {first_seq}")]
    LeafIndex {
        leaf_index: u64,
        seq: u64,
        first_seq: u64,
        expected: u64,
    },
    // Step 4.
    #[error("block path does not lead to the block's merkle root: {0}")]
    BlockPath(VerifyError),
    // Step 5.
    #[error(
        "block {block_index} is not covered by the checkpoint, whose tree has {tree_size} blocks"
    )]
    BlockNotCovered { block_index: u64, tree_size: u64 },
    #[error("tree path does not lead to the checkpoint's root (tree size {tree_size}): {error}")]
    TreePath { tree_size: u64, error: VerifyError },
}

fn field_error(field: impl Into<String>, reason: impl Into<String>) -> ProofError {
    ProofError::Field {
        field: field.into(),
        reason: reason.into(),
    }
}

fn decode_base64(field: &str, text: &str) -> Result<Vec<u8>, ProofError> {
    BASE64
        .decode(text)
        .map_err(|error| field_error(field, format!("not standard base64: {error}")))
}

fn decode_path(field: &str, hashes: &[String]) -> Result<Vec<[u8; 32]>, ProofError> {
    if hashes.len() > PATH_HASHES_MAX {
        return Err(field_error(
            field,
            format!(
                "{} hashes, more than the {PATH_HASHES_MAX} of any tree",
                hashes.len()
            ),
        ));
    }
    let mut path = Vec::with_capacity(hashes.len());
    for (position, text) in hashes.iter().enumerate() {
        let mut hash = [0u8; 32];
        if text.len() != 64 || hex::decode_to_slice(text, &mut hash).is_err() {
            return Err(field_error(
                format!("{field}[{position}]"),
                format!("{text:?} is not 64 hex digits"),
            ));
        }
        path.push(hash);
    }
    Ok(path)
}

/// Verifies a bundle under the pinned key, in the documented order; the first failure
/// is returned:
///
/// 1. the checkpoint's signature verifies under `key`, its origin ends in `/{stream}`,
///    and `stream` is `{tenant_id}/{index}`;
/// 2. the event bytes decode, with the bundle's tenant, stream, event id and seq;
/// 3. the header decodes, for the bundle's stream, with the seq in its range at
///    `leaf_index`;
/// 4. `block_path` leads from the event's leaf to the header's merkle root;
/// 5. `tree_path` leads from the block hash to the checkpoint's root.
pub fn verify_bundle(bundle: &ProofBundle, key: &VerifierKey) -> Result<VerifiedEvent, ProofError> {
    if bundle.format != BUNDLE_FORMAT_V1 {
        return Err(ProofError::Format {
            found: bundle.format.clone(),
        });
    }

    // Step 1.
    let checkpoint =
        Checkpoint::from_note(&bundle.checkpoint, key).map_err(ProofError::Checkpoint)?;
    let stream_is_tenants = match split_stream(&bundle.stream) {
        Some((tenant_id, _)) => tenant_id == bundle.tenant_id,
        None => false,
    };
    if !stream_is_tenants {
        return Err(ProofError::StreamNotTenants {
            stream: bundle.stream.clone(),
            tenant_id: bundle.tenant_id.clone(),
        });
    }
    if checkpoint.stream != bundle.stream {
        return Err(ProofError::CheckpointStream {
            origin: checkpoint.origin.clone(),
            checkpoint_stream: checkpoint.stream.clone(),
            stream: bundle.stream.clone(),
        });
    }

    // Step 2.
    let event_bytes = decode_base64("event", &bundle.event)?;
    let event = CanonicalEvent::decode(&event_bytes).map_err(ProofError::Event)?;
    if event.tenant_id != bundle.tenant_id {
        return Err(ProofError::EventTenant {
            event: event.tenant_id.clone(),
            bundle: bundle.tenant_id.clone(),
        });
    }
    if event.stream != bundle.stream {
        return Err(ProofError::EventField {
            field: "stream",
            event: event.stream.clone(),
            bundle: bundle.stream.clone(),
        });
    }
    if event.event_id != bundle.event_id {
        return Err(ProofError::EventField {
            field: "event_id",
            event: event.event_id.clone(),
            bundle: bundle.event_id.clone(),
        });
    }
    if event.seq != bundle.seq {
        return Err(ProofError::EventField {
            field: "seq",
            event: event.seq.to_string(),
            bundle: bundle.seq.to_string(),
        });
    }

    // Step 3.
    let header_bytes = decode_base64("block_header", &bundle.block_header)?;
    let header = BlockHeader::decode(&header_bytes).map_err(ProofError::Header)?;
    if header.stream != bundle.stream {
        return Err(ProofError::HeaderStream {
            header: header.stream.clone(),
            bundle: bundle.stream.clone(),
        });
    }
    if bundle.seq < header.first_seq || bundle.seq > header.last_seq() {
        return Err(ProofError::SeqOutsideBlock {
            seq: bundle.seq,
            first_seq: header.first_seq,
            last_seq: header.last_seq(),
        });
    }
    let expected_leaf_index = bundle.seq - header.first_seq;
    if bundle.leaf_index != expected_leaf_index {
        return Err(ProofError::LeafIndex {
            leaf_index: bundle.leaf_index,
            seq: bundle.seq,
            first_seq: header.first_seq,
            expected: expected_leaf_index,
        });
    }

    // Step 4.
    let block_path = decode_path("block_path", &bundle.block_path)?;
    let leaf_hash = event_leaf_hash(&event_bytes);
    verify_inclusion(
        &leaf_hash,
        bundle.leaf_index,
        u64::from(header.count),
        &block_path,
        &header.merkle_root,
    )
    .map_err(ProofError::BlockPath)?;

    // Step 5.
    let tree_path = decode_path("tree_path", &bundle.tree_path)?;
    let hash = block_hash(&header_bytes);
    if header.block_index >= checkpoint.tree_size {
        return Err(ProofError::BlockNotCovered {
            block_index: header.block_index,
            tree_size: checkpoint.tree_size,
        });
    }
    verify_inclusion(
        &hash,
        header.block_index,
        checkpoint.tree_size,
        &tree_path,
        &checkpoint.root_hash,
    )
    .map_err(|error| ProofError::TreePath {
        tree_size: checkpoint.tree_size,
        error,
    })?;

    Ok(VerifiedEvent {
        event,
        leaf_hash,
        header,
        block_hash: hash,
        leaf_index: bundle.leaf_index,
        checkpoint,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::checkpoint::format_time;
    use crate::event::tests::vector_event;
    use crate::note::tests::{sign_note, test_signing_key, test_verifier_key};
    use crate::verify::merkle_root;
    use ed25519_dalek::SigningKey;

    /// A test ledger: `blocks_count` blocks of `per_block` events of one tenant's stream.
    pub(crate) struct TestLedger {
        pub(crate) stream: String,
        pub(crate) headers: Vec<Vec<u8>>,
        pub(crate) events: Vec<Vec<Vec<u8>>>,
        pub(crate) signing: SigningKey,
    }

    pub(crate) fn test_event(tenant_id: &str, seq: u64) -> CanonicalEvent {
        CanonicalEvent {
            stream: format!("{tenant_id}/0"),
            seq,
            ingested_at: 1_735_689_603_000_000_000 + seq as i64,
            tenant_id: tenant_id.to_string(),
            event_id: format!("evt_{seq}"),
            ..vector_event()
        }
    }

    impl TestLedger {
        pub(crate) fn new(tenant_id: &str, block_sizes: &[u32]) -> TestLedger {
            let stream = format!("{tenant_id}/0");
            let mut headers = Vec::new();
            let mut events = Vec::new();
            let mut prev_block_hash = [0u8; 32];
            let mut next_seq = 1;
            for (block_index, &count) in block_sizes.iter().enumerate() {
                let mut block_events = Vec::new();
                for seq in next_seq..next_seq + u64::from(count) {
                    block_events.push(test_event(tenant_id, seq).encode());
                }
                let leaves: Vec<[u8; 32]> = block_events
                    .iter()
                    .map(|bytes| event_leaf_hash(bytes))
                    .collect();
                let header = BlockHeader {
                    stream: stream.clone(),
                    block_index: block_index as u64,
                    prev_block_hash,
                    merkle_root: merkle_root(&leaves),
                    first_seq: next_seq,
                    count,
                    sealed_at: 1_735_689_604_000_000_000 + block_index as i64,
                }
                .encode();
                prev_block_hash = block_hash(&header);
                next_seq += u64::from(count);
                headers.push(header);
                events.push(block_events);
            }
            TestLedger {
                stream,
                headers,
                events,
                signing: test_signing_key(9),
            }
        }

        pub(crate) fn key(&self) -> VerifierKey {
            test_verifier_key("trail.local", &self.signing)
        }

        /// The signed checkpoint of the first `tree_size` blocks.
        pub(crate) fn checkpoint_note(&self, tree_size: usize) -> String {
            let hashes: Vec<[u8; 32]> = self.headers[..tree_size]
                .iter()
                .map(|header| block_hash(header))
                .collect();
            let (last_seq, time_ns) = match self.headers[..tree_size].last() {
                Some(bytes) => {
                    let header = BlockHeader::decode(bytes).unwrap();
                    (header.last_seq(), header.sealed_at)
                }
                None => (0, 0),
            };
            let text = format!(
                "trail.local/{}\n{tree_size}\n{}\nseq {last_seq}\ntime {}\n",
                self.stream,
                BASE64.encode(merkle_root(&hashes)),
                format_time(time_ns)
            );
            sign_note(&text, "trail.local", &self.signing)
        }

        /// The bundle of the event at `(block, position)` under the checkpoint of all
        /// blocks, with proofs from the reference model.
        pub(crate) fn bundle(&self, block: usize, position: usize) -> ProofBundle {
            let leaves: Vec<[u8; 32]> = self.events[block]
                .iter()
                .map(|bytes| event_leaf_hash(bytes))
                .collect();
            let hashes: Vec<[u8; 32]> = self
                .headers
                .iter()
                .map(|header| block_hash(header))
                .collect();
            let block_path: Vec<Vec<u8>> = reference_path(&leaves, position)
                .iter()
                .map(|hash| hash.to_vec())
                .collect();
            let tree_path: Vec<Vec<u8>> = reference_path(&hashes, block)
                .iter()
                .map(|hash| hash.to_vec())
                .collect();
            let event = CanonicalEvent::decode(&self.events[block][position]).unwrap();
            let note = self.checkpoint_note(self.headers.len());
            ProofBundle::from_parts(BundleParts {
                tenant_id: &event.tenant_id,
                stream: &event.stream,
                event_id: &event.event_id,
                seq: event.seq,
                event: &self.events[block][position],
                leaf_index: position as u64,
                block_header: &self.headers[block],
                block_path: &block_path,
                tree_path: &tree_path,
                checkpoint_note: &note,
            })
        }
    }

    /// RFC 9162 PATH(m, D[n]), recursively.
    pub(crate) fn reference_path(leaves: &[[u8; 32]], index: usize) -> Vec<[u8; 32]> {
        if leaves.len() <= 1 {
            return Vec::new();
        }
        let mut split = 1;
        while split * 2 < leaves.len() {
            split *= 2;
        }
        if index < split {
            let mut path = reference_path(&leaves[..split], index);
            path.push(merkle_root(&leaves[split..]));
            path
        } else {
            let mut path = reference_path(&leaves[split..], index - split);
            path.push(merkle_root(&leaves[..split]));
            path
        }
    }

    fn ledger() -> TestLedger {
        TestLedger::new("ten_a", &[4, 3, 5, 1, 2])
    }

    #[test]
    fn every_event_of_a_ledger_has_a_verifying_bundle() {
        let ledger = ledger();
        for block in 0..ledger.headers.len() {
            for position in 0..ledger.events[block].len() {
                let bundle = ledger.bundle(block, position);
                let json = bundle.to_json_pretty();
                let parsed = ProofBundle::from_json(&json).unwrap();
                assert_eq!(parsed, bundle);
                let verified = verify_bundle(&parsed, &ledger.key()).unwrap();
                assert_eq!(verified.header.block_index, block as u64);
                assert_eq!(verified.leaf_index, position as u64);
                assert_eq!(verified.checkpoint.tree_size, 5);
            }
        }
    }

    #[test]
    fn the_wrong_key_is_named() {
        let ledger = ledger();
        let bundle = ledger.bundle(1, 1);
        let other = test_verifier_key("trail.local", &test_signing_key(10));
        let error = verify_bundle(&bundle, &other).unwrap_err();
        assert!(matches!(error, ProofError::Checkpoint(_)), "{error}");
        assert!(
            error.to_string().contains("has no signature by key"),
            "{error}"
        );

        // A checkpoint re-signed by another key under the pinned key's name and key id is
        // a bad signature.
        let mut forged = bundle.clone();
        let key = ledger.key();
        let forger = test_signing_key(11);
        let text = forged.checkpoint.split_once("\n\n").unwrap().0.to_string() + "\n";
        let forged_note = sign_note(&text, "trail.local", &forger);
        let forged_payload = BASE64
            .decode(forged_note.trim_end().rsplit_once(' ').unwrap().1)
            .unwrap();
        let mut payload = key.key_id().to_be_bytes().to_vec();
        payload.extend_from_slice(&forged_payload[4..]);
        forged.checkpoint = format!("{text}\n\u{2014} trail.local {}\n", BASE64.encode(payload));
        assert_eq!(
            verify_bundle(&forged, &key).unwrap_err().to_string(),
            format!(
                "checkpoint signature does not verify under key {}",
                key.short()
            )
        );
    }

    #[test]
    fn a_bundle_for_another_tenant_is_rejected() {
        let ledger = ledger();
        let mut bundle = ledger.bundle(0, 2);
        // Claim the event for tenant ten_b: the stream no longer fits the tenant.
        bundle.tenant_id = "ten_b".to_string();
        assert!(matches!(
            verify_bundle(&bundle, &ledger.key()),
            Err(ProofError::StreamNotTenants { .. })
        ));
        // Claim it with ten_b's stream: the checkpoint is for ten_a's.
        bundle.stream = "ten_b/0".to_string();
        assert!(matches!(
            verify_bundle(&bundle, &ledger.key()),
            Err(ProofError::CheckpointStream { .. })
        ));

        // ten_b's genuine bundle, with ten_a's event bytes swapped in.
        let other = TestLedger::new("ten_b", &[4, 3]);
        let mut mixed = other.bundle(0, 2);
        mixed.event = ledger.bundle(0, 2).event;
        let error = verify_bundle(&mixed, &other.key()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "event belongs to tenant ten_a, not ten_b"
        );
    }

    #[test]
    fn a_flipped_bit_in_the_event_bytes_is_caught() {
        let ledger = ledger();
        let bundle = ledger.bundle(2, 3);
        let event_bytes = BASE64.decode(&bundle.event).unwrap();
        for position in 0..event_bytes.len() {
            for bit in 0..8 {
                let mut flipped = event_bytes.clone();
                flipped[position] ^= 1 << bit;
                let mut tampered = bundle.clone();
                tampered.event = BASE64.encode(&flipped);
                assert!(
                    verify_bundle(&tampered, &ledger.key()).is_err(),
                    "byte {position} bit {bit}"
                );
            }
        }
        // A flip inside the action text decodes and is caught by the block path.
        let action_at = event_bytes
            .windows(b"auth.login".len())
            .position(|window| window == b"auth.login")
            .unwrap();
        let mut flipped = event_bytes.clone();
        flipped[action_at] ^= 0x20;
        let mut tampered = bundle.clone();
        tampered.event = BASE64.encode(&flipped);
        let error = verify_bundle(&tampered, &ledger.key()).unwrap_err();
        assert!(matches!(error, ProofError::BlockPath(_)), "{error}");
        assert!(error
            .to_string()
            .starts_with("block path does not lead to the block's merkle root"));
    }

    #[test]
    fn header_and_path_edits_are_caught() {
        let ledger = ledger();
        let key = ledger.key();
        let bundle = ledger.bundle(2, 3);

        // A header edit keeps the block path valid (the root is untouched) but changes the
        // block hash, so the tree path fails.
        let header_bytes = BASE64.decode(&bundle.block_header).unwrap();
        let mut header = BlockHeader::decode(&header_bytes).unwrap();
        header.sealed_at += 1;
        let mut edited = bundle.clone();
        edited.block_header = BASE64.encode(header.encode());
        assert!(matches!(
            verify_bundle(&edited, &key),
            Err(ProofError::TreePath { .. })
        ));

        let mut index = bundle.clone();
        index.leaf_index += 1;
        assert!(matches!(
            verify_bundle(&index, &key),
            Err(ProofError::LeafIndex { .. })
        ));

        let mut block_path = bundle.clone();
        block_path.block_path[0] = "00".repeat(32);
        assert!(matches!(
            verify_bundle(&block_path, &key),
            Err(ProofError::BlockPath(_))
        ));

        let mut tree_path = bundle.clone();
        tree_path.tree_path.pop();
        assert!(matches!(
            verify_bundle(&tree_path, &key),
            Err(ProofError::TreePath { .. })
        ));

        let mut bad_hex = bundle.clone();
        bad_hex.tree_path[1] = "zz".to_string();
        assert_eq!(
            verify_bundle(&bad_hex, &key).unwrap_err().to_string(),
            "bundle field tree_path[1] is invalid: \"zz\" is not 64 hex digits"
        );

        let mut format = bundle.clone();
        format.format = "trail-proof-v2".to_string();
        assert!(matches!(
            verify_bundle(&format, &key),
            Err(ProofError::Format { .. })
        ));

        let mut seq = bundle.clone();
        seq.seq += 1;
        assert!(matches!(
            verify_bundle(&seq, &key),
            Err(ProofError::EventField { field: "seq", .. })
        ));

        // A checkpoint of a smaller tree does not cover the last block.
        let mut stale = ledger.bundle(4, 0);
        stale.checkpoint = ledger.checkpoint_note(4);
        assert!(matches!(
            verify_bundle(&stale, &key),
            Err(ProofError::BlockNotCovered {
                block_index: 4,
                tree_size: 4
            })
        ));
    }

    #[test]
    fn unknown_json_fields_are_refused() {
        let ledger = ledger();
        let json = ledger.bundle(0, 0).to_json_pretty();
        let extended = json.replacen('{', "{\"extra\": 1,", 1);
        assert!(matches!(
            ProofBundle::from_json(&extended),
            Err(ProofError::Json { .. })
        ));
    }
}
