//! Full audit of one stream from its bytes alone (docs/PROOFS.md, "Full audit"). Pure:
//! no I/O; the caller feeds blocks in order and then the signed checkpoint.
//!
//! For each block the [`Auditor`] checks, in this order: the header decodes and names the
//! audited stream, its index (dense from 0) and its link to the previous block; its first
//! seq follows the previous block's last; every event decodes, belongs to the stream and
//! its tenant and carries the seq of its position (gap-free from 1); the header's count
//! is the number of events; the events' leaf hashes give the header's merkle root. Then
//! the block hash joins the stream tree. [`Auditor::finish`] compares the stream tree with
//! the checkpoint: size, root, and its `seq` and `time` lines against the last block.
//!
//! Memory: one block's events are handled at a time and not kept; the auditor keeps
//! O(log blocks) hashes, so a stream of any length costs the same.

use std::fmt;

use crate::block::{block_hash, BlockHeader, BlockHeaderError};
use crate::checkpoint::{format_time, split_stream, Checkpoint};
use crate::event::{event_leaf_hash, CanonicalEventRef, EventDecodeError};
use crate::verify::{RootBuilder, EMPTY_TREE_ROOT};

/// Where an audit failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditLocation {
    /// Block `block_index` (its position in the stream), with the seqs its header claims
    /// when the header decoded.
    Block {
        block_index: u64,
        seqs: Option<(u64, u64)>,
    },
    /// The comparison with the checkpoint of `tree_size` blocks.
    Checkpoint { tree_size: u64 },
}

impl fmt::Display for AuditLocation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuditLocation::Block {
                block_index,
                seqs: Some((first, last)),
            } if first == last => write!(formatter, "block {block_index} (seq {first})"),
            AuditLocation::Block {
                block_index,
                seqs: Some((first, last)),
            } => write!(
                formatter,
                "block {block_index} (seqs {first}\u{2013}{last})"
            ),
            AuditLocation::Block {
                block_index,
                seqs: None,
            } => write!(formatter, "block {block_index}"),
            AuditLocation::Checkpoint { tree_size } => {
                write!(formatter, "checkpoint (tree size {tree_size})")
            }
        }
    }
}

/// What was wrong, one variant per check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditFailure {
    #[error("header does not decode: {0}")]
    HeaderDecode(BlockHeaderError),
    #[error("header names stream {found}")]
    HeaderStream { found: String },
    #[error("header says block index {found}: block indexes must run densely from 0")]
    BlockIndex { found: u64 },
    #[error("prev_block_hash is {}, not 32 zero bytes", hex::encode(.found))]
    FirstPrevHash { found: [u8; 32] },
    #[error(
        "prev_block_hash {} is not the hash of block {previous_index} ({}): \
         block {previous_index} was altered or this block does not follow it",
        hex::encode(.found),
        hex::encode(.expected)
    )]
    PrevHash {
        found: [u8; 32],
        expected: [u8; 32],
        previous_index: u64,
    },
    #[error("header starts at seq {first_seq}: {}", missing("seq", *.expected, .first_seq - 1))]
    SeqsMissingBefore { first_seq: u64, expected: u64 },
    #[error(
        "header starts at seq {first_seq}, but seqs up to {} are in earlier blocks: \
         seqs are duplicated",
        .expected - 1
    )]
    SeqsRepeated { first_seq: u64, expected: u64 },
    #[error("event at position {position} (where seq {seq} belongs) does not decode: {error}")]
    EventDecode {
        position: u32,
        seq: u64,
        error: EventDecodeError,
    },
    #[error("event seq {seq} names stream {found}")]
    EventStream { seq: u64, found: String },
    #[error("event seq {seq} belongs to tenant {found}")]
    EventTenant { seq: u64, found: String },
    #[error("seq {seq} is missing: position {position} holds seq {found} (an event was deleted)")]
    SeqMissing { seq: u64, position: u32, found: u64 },
    #[error(
        "seq {found} is stored again at position {position}, where seq {expected} belongs: \
         an event is duplicated"
    )]
    SeqDuplicated {
        found: u64,
        position: u32,
        expected: u64,
    },
    #[error(
        "seq {found} is stored at position {position}, where seq {expected} belongs \
         (seq {expected} is at position {expected_position}): events are out of order"
    )]
    SeqOutOfPlace {
        found: u64,
        position: u32,
        expected: u64,
        expected_position: u32,
    },
    #[error(
        "header counts {header_count} events but {stored} are stored: {}",
        missing("seq", *.first_missing, *.last_missing)
    )]
    EventsMissing {
        header_count: u32,
        stored: u64,
        first_missing: u64,
        last_missing: u64,
    },
    #[error("header counts {header_count} events but {stored} are stored: extra events after seq {last_seq}")]
    EventsExtra {
        header_count: u32,
        stored: u64,
        last_seq: u64,
    },
    #[error(
        "merkle root of the {events} stored events does not match the header: \
         an event in this block (or the header's root) was altered"
    )]
    MerkleRoot { events: u32 },
    #[error("the checkpoint is for stream {found}")]
    CheckpointStream { found: String },
    #[error(
        "the checkpoint covers {tree_size} blocks but the node served {blocks}: \
         {} (the store is truncated)",
        missing("block", *.blocks, .tree_size - 1)
    )]
    BlocksMissing { tree_size: u64, blocks: u64 },
    #[error("the node served {blocks} blocks, more than the {tree_size} the checkpoint covers")]
    BlocksExtra { tree_size: u64, blocks: u64 },
    #[error(
        "the stream tree root over the {blocks} block hashes is {}, the signed checkpoint says {}",
        hex::encode(.computed),
        hex::encode(.signed)
    )]
    RootMismatch {
        blocks: u64,
        computed: [u8; 32],
        signed: [u8; 32],
    },
    #[error("the checkpoint's seq line says {signed}, the last block ends at seq {last_seq}")]
    SeqLine { signed: u64, last_seq: u64 },
    #[error("the checkpoint's time line says {signed}, the last block was sealed at {sealed_at}")]
    TimeLine { signed: String, sealed_at: String },
}

/// "seq 7 is missing" or "seqs 7–9 are missing".
fn missing(noun: &str, first: u64, last: u64) -> String {
    if first == last {
        format!("{noun} {first} is missing")
    } else {
        format!("{noun}s {first}\u{2013}{last} are missing")
    }
}

/// The first failure of an audit: stream, place and what failed, e.g. "stream acme/0
/// block 17 (seqs 17409–18432): merkle root of the 1024 stored events does not match the
/// header: an event in this block (or the header's root) was altered".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stream {stream} {location}: {failure}")]
pub struct AuditError {
    pub stream: String,
    pub location: AuditLocation,
    /// Boxed: some failures carry two hashes, and errors are rare.
    pub failure: Box<AuditFailure>,
}

/// What one block added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockAudited {
    pub block_index: u64,
    pub first_seq: u64,
    pub count: u32,
    pub block_hash: [u8; 32],
}

/// A completed audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSummary {
    pub stream: String,
    pub blocks: u64,
    pub events: u64,
    pub root: [u8; 32],
    pub last_seq: u64,
}

/// A failed block check: the seqs the header claims (when it decoded), and what failed.
type BlockFailure = (Option<(u64, u64)>, AuditFailure);

/// The streaming full-audit state machine of one stream.
#[derive(Debug, Clone)]
pub struct Auditor {
    stream: String,
    tenant_id: String,
    /// Index the next block must have: blocks fed so far.
    next_block_index: u64,
    /// Seq the next event must have.
    next_seq: u64,
    /// The previous block's hash; zeros before block 0.
    prev_block_hash: [u8; 32],
    last_sealed_at: Option<i64>,
    stream_tree: RootBuilder,
    /// Set by the first failure; every later call returns it again.
    failed: Option<AuditError>,
}

impl Auditor {
    /// An audit of `stream` (`{tenant_id}/{index}`) from block 0. A name of another
    /// shape has no tenant, so no event can belong to it and the first block fails.
    pub fn new(stream: &str) -> Auditor {
        let tenant_id = match split_stream(stream) {
            Some((tenant_id, _)) => tenant_id.to_string(),
            None => String::new(),
        };
        Auditor {
            stream: stream.to_string(),
            tenant_id,
            next_block_index: 0,
            next_seq: 1,
            prev_block_hash: [0; 32],
            last_sealed_at: None,
            stream_tree: RootBuilder::new(),
            failed: None,
        }
    }

    /// Blocks accepted so far.
    pub fn blocks(&self) -> u64 {
        self.next_block_index
    }

    /// Events accepted so far.
    pub fn events(&self) -> u64 {
        self.next_seq - 1
    }

    /// The stream tree root over the blocks accepted so far.
    pub fn root(&self) -> [u8; 32] {
        self.stream_tree.root()
    }

    /// Checks the next block: its header bytes and its events' canonical bytes in seq
    /// order. After a failure the auditor stays failed.
    pub fn feed_block<E>(
        &mut self,
        header_bytes: &[u8],
        events: &[E],
    ) -> Result<BlockAudited, AuditError>
    where
        E: AsRef<[u8]>,
    {
        if let Some(failed) = &self.failed {
            return Err(failed.clone());
        }
        let block_index = self.next_block_index;
        let outcome = self.check_block(header_bytes, events);
        match outcome {
            Ok(audited) => Ok(audited),
            Err((seqs, failure)) => {
                let error = AuditError {
                    stream: self.stream.clone(),
                    location: AuditLocation::Block { block_index, seqs },
                    failure: Box::new(failure),
                };
                self.failed = Some(error.clone());
                Err(error)
            }
        }
    }

    fn check_block<E>(
        &mut self,
        header_bytes: &[u8],
        events: &[E],
    ) -> Result<BlockAudited, BlockFailure>
    where
        E: AsRef<[u8]>,
    {
        let header = BlockHeader::decode(header_bytes)
            .map_err(|error| (None, AuditFailure::HeaderDecode(error)))?;
        let seqs = Some((header.first_seq, header.last_seq()));
        let fail = |failure: AuditFailure| (seqs, failure);

        if header.stream != self.stream {
            return Err(fail(AuditFailure::HeaderStream {
                found: header.stream.clone(),
            }));
        }
        if header.block_index != self.next_block_index {
            return Err(fail(AuditFailure::BlockIndex {
                found: header.block_index,
            }));
        }
        if header.prev_block_hash != self.prev_block_hash {
            if self.next_block_index == 0 {
                return Err(fail(AuditFailure::FirstPrevHash {
                    found: header.prev_block_hash,
                }));
            }
            return Err(fail(AuditFailure::PrevHash {
                found: header.prev_block_hash,
                expected: self.prev_block_hash,
                previous_index: self.next_block_index - 1,
            }));
        }
        if header.first_seq > self.next_seq {
            return Err(fail(AuditFailure::SeqsMissingBefore {
                first_seq: header.first_seq,
                expected: self.next_seq,
            }));
        }
        if header.first_seq < self.next_seq {
            return Err(fail(AuditFailure::SeqsRepeated {
                first_seq: header.first_seq,
                expected: self.next_seq,
            }));
        }

        // Events, in position order; only the running root is kept.
        let header_count = u64::from(header.count);
        let mut block_tree = RootBuilder::new();
        for (position, bytes) in events.iter().enumerate() {
            let position_u64 = position as u64;
            if position_u64 >= header_count {
                return Err(fail(AuditFailure::EventsExtra {
                    header_count: header.count,
                    stored: events.len() as u64,
                    last_seq: header.last_seq(),
                }));
            }
            let position_u32 = u32::try_from(position).expect("below the header's u32 count");
            let expected = header.first_seq + position_u64;
            let event = CanonicalEventRef::decode(bytes.as_ref()).map_err(|error| {
                fail(AuditFailure::EventDecode {
                    position: position_u32,
                    seq: expected,
                    error,
                })
            })?;
            if event.stream != self.stream {
                return Err(fail(AuditFailure::EventStream {
                    seq: event.seq,
                    found: event.stream.to_string(),
                }));
            }
            if event.tenant_id != self.tenant_id {
                return Err(fail(AuditFailure::EventTenant {
                    seq: event.seq,
                    found: event.tenant_id.to_string(),
                }));
            }
            if event.seq != expected {
                return Err(fail(misplaced_seq(
                    event.seq,
                    expected,
                    position_u32,
                    &events[position + 1..],
                )));
            }
            block_tree.push(event_leaf_hash(bytes.as_ref()));
        }
        let stored = events.len() as u64;
        if stored < header_count {
            return Err(fail(AuditFailure::EventsMissing {
                header_count: header.count,
                stored,
                first_missing: header.first_seq + stored,
                last_missing: header.last_seq(),
            }));
        }
        if block_tree.root() != header.merkle_root {
            return Err(fail(AuditFailure::MerkleRoot {
                events: header.count,
            }));
        }

        let hash = block_hash(header_bytes);
        self.stream_tree.push(hash);
        self.prev_block_hash = hash;
        self.next_block_index += 1;
        self.next_seq = header.last_seq() + 1;
        self.last_sealed_at = Some(header.sealed_at);
        Ok(BlockAudited {
            block_index: header.block_index,
            first_seq: header.first_seq,
            count: header.count,
            block_hash: hash,
        })
    }

    /// Compares the blocks fed so far with the signed checkpoint (whose signature the
    /// caller verified): same stream, as many blocks, the same root, and the `seq` and
    /// `time` lines of the last block.
    pub fn finish(&self, checkpoint: &Checkpoint) -> Result<AuditSummary, AuditError> {
        if let Some(failed) = &self.failed {
            return Err(failed.clone());
        }
        let fail = |failure: AuditFailure| AuditError {
            stream: self.stream.clone(),
            location: AuditLocation::Checkpoint {
                tree_size: checkpoint.tree_size,
            },
            failure: Box::new(failure),
        };
        if checkpoint.stream != self.stream {
            return Err(fail(AuditFailure::CheckpointStream {
                found: checkpoint.stream.clone(),
            }));
        }
        let blocks = self.next_block_index;
        if checkpoint.tree_size > blocks {
            return Err(fail(AuditFailure::BlocksMissing {
                tree_size: checkpoint.tree_size,
                blocks,
            }));
        }
        if checkpoint.tree_size < blocks {
            return Err(fail(AuditFailure::BlocksExtra {
                tree_size: checkpoint.tree_size,
                blocks,
            }));
        }
        let root = self.stream_tree.root();
        if root != checkpoint.root_hash {
            return Err(fail(AuditFailure::RootMismatch {
                blocks,
                computed: root,
                signed: checkpoint.root_hash,
            }));
        }
        let last_seq = self.events();
        if checkpoint.last_seq != last_seq {
            return Err(fail(AuditFailure::SeqLine {
                signed: checkpoint.last_seq,
                last_seq,
            }));
        }
        // An empty stream has no last block, so its time line says nothing checkable.
        if let Some(sealed_at) = self.last_sealed_at {
            if checkpoint.time_ns != sealed_at {
                return Err(fail(AuditFailure::TimeLine {
                    signed: checkpoint.time_text(),
                    sealed_at: format_time(sealed_at),
                }));
            }
        }
        assert!(blocks > 0 || root == EMPTY_TREE_ROOT);
        Ok(AuditSummary {
            stream: self.stream.clone(),
            blocks,
            events: last_seq,
            root,
            last_seq,
        })
    }
}

/// Names what a wrong seq at `position` means: seen before (duplicated), expected seq
/// later in the block (out of order), or expected seq nowhere in the block (missing).
/// Runs once, on the failure path, so decoding the rest of the block again is fine.
fn misplaced_seq<E>(found: u64, expected: u64, position: u32, rest: &[E]) -> AuditFailure
where
    E: AsRef<[u8]>,
{
    // Every seq below `expected` was already accepted, in order.
    if found < expected {
        return AuditFailure::SeqDuplicated {
            found,
            position,
            expected,
        };
    }
    for (offset, bytes) in rest.iter().enumerate() {
        let Ok(later) = CanonicalEventRef::decode(bytes.as_ref()) else {
            continue;
        };
        if later.seq == expected {
            return AuditFailure::SeqOutOfPlace {
                found,
                position,
                expected,
                expected_position: position + 1 + offset as u32,
            };
        }
    }
    AuditFailure::SeqMissing {
        seq: expected,
        position,
        found,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::tests::{test_event, TestLedger};
    use crate::verify::merkle_root;

    fn ledger() -> TestLedger {
        TestLedger::new("acme", &[4, 3, 5, 1, 2])
    }

    fn checkpoint(ledger: &TestLedger, tree_size: usize) -> Checkpoint {
        Checkpoint::from_note(&ledger.checkpoint_note(tree_size), &ledger.key()).unwrap()
    }

    /// Feeds every block; returns the first error, if any.
    fn audit(
        ledger: &TestLedger,
        headers: &[Vec<u8>],
        events: &[Vec<Vec<u8>>],
    ) -> Result<AuditSummary, AuditError> {
        let mut auditor = Auditor::new(&ledger.stream);
        for (header, block_events) in headers.iter().zip(events) {
            auditor.feed_block(header, block_events)?;
        }
        auditor.finish(&checkpoint(ledger, ledger.headers.len()))
    }

    #[test]
    fn a_genuine_stream_audits() {
        let ledger = ledger();
        let summary = audit(&ledger, &ledger.headers, &ledger.events).unwrap();
        assert_eq!(summary.blocks, 5);
        assert_eq!(summary.events, 15);
        assert_eq!(summary.last_seq, 15);
    }

    #[test]
    fn an_empty_stream_audits_against_an_empty_checkpoint() {
        let ledger = TestLedger::new("acme", &[]);
        let summary = audit(&ledger, &[], &[]).unwrap();
        assert_eq!(summary.root, EMPTY_TREE_ROOT);
    }

    #[test]
    fn an_altered_event_is_reported_with_its_block() {
        let ledger = ledger();
        let mut events = ledger.events.clone();
        // Flip a bit in the action text of seq 9 (block 2, position 1).
        let bytes = &mut events[2][1];
        let action_at = bytes
            .windows(b"auth.login".len())
            .position(|window| window == b"auth.login")
            .unwrap();
        bytes[action_at] ^= 0x01;
        let error = audit(&ledger, &ledger.headers, &events).unwrap_err();
        assert_eq!(
            error.to_string(),
            "stream acme/0 block 2 (seqs 8\u{2013}12): merkle root of the 5 stored events does \
             not match the header: an event in this block (or the header's root) was altered"
        );
        assert_eq!(
            error.location,
            AuditLocation::Block {
                block_index: 2,
                seqs: Some((8, 12))
            }
        );
    }

    #[test]
    fn a_flipped_length_byte_fails_decoding_at_its_position() {
        let ledger = ledger();
        let mut events = ledger.events.clone();
        events[1][2][4] ^= 0x80;
        let error = audit(&ledger, &ledger.headers, &events).unwrap_err();
        assert!(
            matches!(
                *error.failure,
                AuditFailure::EventDecode {
                    position: 2,
                    seq: 7,
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn swapped_events_are_out_of_order() {
        let ledger = ledger();
        let mut events = ledger.events.clone();
        events[2].swap(1, 3);
        let error = audit(&ledger, &ledger.headers, &events).unwrap_err();
        assert_eq!(
            *error.failure,
            AuditFailure::SeqOutOfPlace {
                found: 11,
                position: 1,
                expected: 9,
                expected_position: 3
            }
        );
    }

    #[test]
    fn a_deleted_event_is_missing() {
        let ledger = ledger();
        // From the middle of a block.
        let mut events = ledger.events.clone();
        events[0].remove(1);
        let error = audit(&ledger, &ledger.headers, &events).unwrap_err();
        assert_eq!(
            *error.failure,
            AuditFailure::SeqMissing {
                seq: 2,
                position: 1,
                found: 3
            }
        );
        assert!(error.to_string().contains("seq 2 is missing"), "{error}");

        // The last of a block.
        let mut events = ledger.events.clone();
        events[1].pop();
        let error = audit(&ledger, &ledger.headers, &events).unwrap_err();
        assert_eq!(
            error.to_string(),
            "stream acme/0 block 1 (seqs 5\u{2013}7): header counts 3 events but 2 are stored: \
             seq 7 is missing"
        );
    }

    #[test]
    fn a_duplicated_event_is_named() {
        let ledger = ledger();
        let mut events = ledger.events.clone();
        let copy = events[2][0].clone();
        events[2][1] = copy;
        let error = audit(&ledger, &ledger.headers, &events).unwrap_err();
        assert_eq!(
            *error.failure,
            AuditFailure::SeqDuplicated {
                found: 8,
                position: 1,
                expected: 9
            }
        );
    }

    #[test]
    fn an_event_of_another_stream_or_tenant_is_named() {
        let ledger = ledger();
        let mut events = ledger.events.clone();
        events[0][0] = test_event("other", 1).encode();
        let error = audit(&ledger, &ledger.headers, &events).unwrap_err();
        assert!(
            matches!(*error.failure, AuditFailure::EventStream { seq: 1, .. }),
            "{error}"
        );

        let mut foreign = test_event("acme", 1);
        foreign.tenant_id = "other".to_string();
        events[0][0] = foreign.encode();
        let error = audit(&ledger, &ledger.headers, &events).unwrap_err();
        assert!(
            matches!(*error.failure, AuditFailure::EventTenant { seq: 1, .. }),
            "{error}"
        );
    }

    #[test]
    fn a_header_edit_breaks_the_chain_at_the_next_block() {
        let ledger = ledger();
        let mut headers = ledger.headers.clone();
        let mut header = BlockHeader::decode(&headers[1]).unwrap();
        header.sealed_at += 1;
        headers[1] = header.encode();
        let error = audit(&ledger, &headers, &ledger.events).unwrap_err();
        assert!(
            matches!(
                *error.failure,
                AuditFailure::PrevHash {
                    previous_index: 1,
                    ..
                }
            ),
            "{error}"
        );
        assert_eq!(
            error.location,
            AuditLocation::Block {
                block_index: 2,
                seqs: Some((8, 12))
            }
        );

        // The last block has no successor: the checkpoint's root catches it.
        let mut headers = ledger.headers.clone();
        let mut header = BlockHeader::decode(&headers[4]).unwrap();
        header.sealed_at += 1;
        headers[4] = header.encode();
        let error = audit(&ledger, &headers, &ledger.events).unwrap_err();
        assert!(
            matches!(*error.failure, AuditFailure::RootMismatch { .. }),
            "{error}"
        );
        assert_eq!(error.location, AuditLocation::Checkpoint { tree_size: 5 });
    }

    #[test]
    fn a_rewritten_block_with_a_fixed_up_root_breaks_the_chain() {
        let ledger = ledger();
        let mut events = ledger.events.clone();
        let mut headers = ledger.headers.clone();
        let mut altered = test_event("acme", 6);
        altered.action = "auth.logout".to_string();
        events[1][1] = altered.encode();
        let mut header = BlockHeader::decode(&headers[1]).unwrap();
        let leaves: Vec<[u8; 32]> = events[1]
            .iter()
            .map(|bytes| event_leaf_hash(bytes))
            .collect();
        header.merkle_root = merkle_root(&leaves);
        headers[1] = header.encode();
        let error = audit(&ledger, &headers, &events).unwrap_err();
        assert!(
            matches!(
                *error.failure,
                AuditFailure::PrevHash {
                    previous_index: 1,
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn header_fields_must_follow_on() {
        let ledger = ledger();
        let edit = |block: usize, change: &dyn Fn(&mut BlockHeader)| {
            let mut headers = ledger.headers.clone();
            let mut header = BlockHeader::decode(&headers[block]).unwrap();
            change(&mut header);
            headers[block] = header.encode();
            *audit(&ledger, &headers, &ledger.events)
                .unwrap_err()
                .failure
        };
        assert!(matches!(
            edit(0, &|header| header.stream = "acme/1".to_string()),
            AuditFailure::HeaderStream { .. }
        ));
        assert!(matches!(
            edit(0, &|header| header.block_index = 1),
            AuditFailure::BlockIndex { found: 1 }
        ));
        assert!(matches!(
            edit(0, &|header| header.prev_block_hash = [1; 32]),
            AuditFailure::FirstPrevHash { .. }
        ));
        assert!(matches!(
            edit(0, &|header| header.first_seq = 2),
            AuditFailure::SeqsMissingBefore {
                first_seq: 2,
                expected: 1
            }
        ));
        assert!(matches!(
            edit(0, &|header| header.count = 3),
            AuditFailure::EventsExtra {
                header_count: 3,
                ..
            }
        ));
        assert!(matches!(
            edit(0, &|header| header.count = 5),
            AuditFailure::SeqMissing { .. } | AuditFailure::EventsMissing { .. }
        ));
        assert!(matches!(
            edit(0, &|header| header.merkle_root = [0; 32]),
            AuditFailure::MerkleRoot { events: 4 }
        ));

        let mut headers = ledger.headers.clone();
        headers[0] = vec![2];
        let error = audit(&ledger, &headers, &ledger.events).unwrap_err();
        assert!(matches!(*error.failure, AuditFailure::HeaderDecode(_)));
        assert_eq!(error.to_string(), "stream acme/0 block 0: header does not decode: unknown block header version 2 (this client knows version 1)");
    }

    #[test]
    fn a_deleted_or_repeated_block_is_caught() {
        let ledger = ledger();
        let mut headers = ledger.headers.clone();
        let mut events = ledger.events.clone();
        headers.remove(1);
        events.remove(1);
        let error = audit(&ledger, &headers, &events).unwrap_err();
        assert!(
            matches!(*error.failure, AuditFailure::BlockIndex { found: 2 }),
            "{error}"
        );

        let mut auditor = Auditor::new(&ledger.stream);
        auditor
            .feed_block(&ledger.headers[0], &ledger.events[0])
            .unwrap();
        let error = auditor
            .feed_block(&ledger.headers[0], &ledger.events[0])
            .unwrap_err();
        assert!(
            matches!(*error.failure, AuditFailure::BlockIndex { found: 0 }),
            "{error}"
        );
        // The auditor stays failed.
        assert_eq!(
            auditor
                .feed_block(&ledger.headers[1], &ledger.events[1])
                .unwrap_err(),
            error
        );
    }

    #[test]
    fn a_truncated_stream_falls_short_of_the_checkpoint() {
        let ledger = ledger();
        let error = audit(&ledger, &ledger.headers[..3], &ledger.events[..3]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "stream acme/0 checkpoint (tree size 5): the checkpoint covers 5 blocks but the node \
             served 3: blocks 3\u{2013}4 are missing (the store is truncated)"
        );
    }

    #[test]
    fn checkpoint_lines_must_match_the_last_block() {
        let ledger = ledger();
        let mut auditor = Auditor::new(&ledger.stream);
        for (header, events) in ledger.headers.iter().zip(&ledger.events) {
            auditor.feed_block(header, events).unwrap();
        }
        let good = checkpoint(&ledger, 5);
        assert!(auditor.finish(&good).is_ok());

        let seq = Checkpoint {
            last_seq: 16,
            ..good.clone()
        };
        assert_eq!(
            *auditor.finish(&seq).unwrap_err().failure,
            AuditFailure::SeqLine {
                signed: 16,
                last_seq: 15
            }
        );
        let time = Checkpoint {
            time_ns: good.time_ns + 1,
            ..good.clone()
        };
        assert!(matches!(
            *auditor.finish(&time).unwrap_err().failure,
            AuditFailure::TimeLine { .. }
        ));
        let smaller = checkpoint(&ledger, 4);
        assert!(matches!(
            *auditor.finish(&smaller).unwrap_err().failure,
            AuditFailure::BlocksExtra {
                tree_size: 4,
                blocks: 5
            }
        ));
        let other = Checkpoint {
            stream: "acme/1".to_string(),
            ..good.clone()
        };
        assert!(matches!(
            *auditor.finish(&other).unwrap_err().failure,
            AuditFailure::CheckpointStream { .. }
        ));
        let root = Checkpoint {
            root_hash: [0; 32],
            ..good
        };
        assert!(matches!(
            *auditor.finish(&root).unwrap_err().failure,
            AuditFailure::RootMismatch { blocks: 5, .. }
        ));
    }
}
