//! Reads of a stream's chain: checkpoints, blocks, inclusion and consistency proofs.
//!
//! Proofs are built from committed state and checked on the way out (a block's events
//! must hash to its root), so a damaged store answers DATA_LOSS instead of a proof that
//! cannot verify. `ListBlocks` is the exception on purpose: it is the auditor's feed and
//! serves the stored bytes as they are, so that `trailctl verify` sees, and names,
//! whatever was changed.
//!
//! Cost: a proof reads its block's events (at most `block_events` records) and O(log n)
//! nodes of the stream tree ([`StoredTree`]): apply keeps the roots of the tree's perfect
//! subtrees beside the blocks (`ShardKeyspaces::subtree_roots`), so an inclusion or consistency proof
//! reads at most two nodes per level (~60 point reads for a million blocks) instead of
//! every block hash of the stream. Each proof is checked against the checkpoint's root
//! (RFC 9162 verification) before it is served: a damaged node answers DATA_LOSS.
//! Streams sealed before the subtree roots were kept have none stored; their nodes are
//! hashed from the blocks below them, which costs what a proof cost before.

use crate::ledger::event::DecodeError;
use crate::ledger::merkle::{
    inclusion_proof, node_hash, try_consistency_proof, try_inclusion_proof, try_root_of,
    verify_consistency, verify_inclusion, SubtreeSource,
};
use crate::ledger::{block_hash, leaf_hash, BlockHeader, BlockRecord, CheckpointBody, TenantState};
use crate::storage::{ShardKeyspaces, StoredValue};

use super::reader::{canonical, get_event, tenant_state};
use crate::query::ReadError;

/// A recorded checkpoint.
#[derive(Debug, Clone)]
pub struct StoredCheckpoint {
    pub body: CheckpointBody,
    pub note: String,
}

/// A sealed block, decoded and checked against its key.
#[derive(Debug, Clone)]
pub struct SealedBlock {
    pub record: BlockRecord,
    pub header: BlockHeader,
}

#[derive(Debug)]
pub struct InclusionProof {
    pub event: Vec<u8>,
    pub stream: String,
    pub seq: u64,
    pub leaf_index: u32,
    pub block: SealedBlock,
    pub block_path: Vec<[u8; 32]>,
    pub tree_path: Vec<[u8; 32]>,
    pub checkpoint: StoredCheckpoint,
}

/// Why a proof could not be given (besides storage errors).
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("{0}")]
    NotFound(String),
    /// The event is recorded but no block or no checkpoint covers it yet.
    #[error("event {seq} of {stream} is not covered by a checkpoint yet")]
    NotCovered { stream: String, seq: u64 },
    #[error("{0}")]
    BadRequest(String),
}

fn corrupt(location: String, reason: impl Into<String>) -> ReadError {
    ReadError::Corrupt {
        location,
        reason: reason.into(),
    }
}

pub fn stream_of(
    keyspaces: &ShardKeyspaces,
    tenant_id: &str,
    stream_index: u32,
) -> Result<TenantState, ProofError> {
    if stream_index != 0 {
        return Err(ProofError::NotFound(format!(
            "stream {tenant_id}/{stream_index} does not exist (tenants have one stream, index 0)"
        )));
    }
    tenant_state(keyspaces, tenant_id)?
        .ok_or_else(|| ProofError::NotFound(format!("tenant {tenant_id} has no events")))
}

/// Up to `limit` tenants of the shard with ids after `after`, in id order.
pub fn tenants_after(
    keyspaces: &ShardKeyspaces,
    after: &str,
    limit: usize,
) -> Result<Vec<(String, TenantState)>, ReadError> {
    let mut tenants = Vec::new();
    for record in keyspaces.tenant_records_after(after).take(limit) {
        let (key, value) = record?;
        let tenant_id = String::from_utf8_lossy(&key).into_owned();
        let state = TenantState::decode(&value).ok_or_else(|| {
            corrupt(
                format!("tenant {tenant_id}"),
                "the tenant state does not decode",
            )
        })?;
        tenants.push((tenant_id, state));
    }
    Ok(tenants)
}

/// The checkpoint of exactly `tree_size`, or the latest one when `tree_size` is 0.
pub fn checkpoint(
    keyspaces: &ShardKeyspaces,
    state: &TenantState,
    tree_size: u64,
) -> Result<Option<StoredCheckpoint>, ReadError> {
    let stream_no = state.stream_no;
    let found = if tree_size == 0 {
        keyspaces.latest_checkpoint_note(stream_no)?
    } else {
        keyspaces
            .checkpoint_note(stream_no, tree_size)?
            .map(|value| (tree_size, value))
    };
    let Some((size, value)) = found else {
        return Ok(None);
    };
    let location = format!("checkpoint {size} of stream {stream_no}");
    let note =
        String::from_utf8(value.to_vec()).map_err(|_| corrupt(location.clone(), "not UTF-8"))?;
    let body = CheckpointBody::parse_note(&note)
        .map_err(|error| corrupt(location.clone(), error.to_string()))?;
    if body.tree_size != size {
        return Err(corrupt(
            location,
            format!("note says size {}", body.tree_size),
        ));
    }
    Ok(Some(StoredCheckpoint { body, note }))
}

pub fn block(
    keyspaces: &ShardKeyspaces,
    stream_no: u32,
    block_index: u64,
) -> Result<Option<SealedBlock>, ReadError> {
    let Some(bytes) = keyspaces.block_record(stream_no, block_index)? else {
        return Ok(None);
    };
    decode_block(stream_no, block_index, &bytes).map(Some)
}

fn decode_block(stream_no: u32, block_index: u64, bytes: &[u8]) -> Result<SealedBlock, ReadError> {
    let location = format!("block {block_index} of stream {stream_no}");
    let record =
        BlockRecord::decode(bytes).map_err(|error| corrupt(location.clone(), error.to_string()))?;
    let header = BlockHeader::decode(&record.header)
        .map_err(|error| corrupt(location.clone(), error.to_string()))?;
    if header.block_index != block_index {
        return Err(corrupt(
            location,
            format!("header says block {}", header.block_index),
        ));
    }
    Ok(SealedBlock { record, header })
}

/// The canonical bytes of a block's events, as stored (no checks beyond expanding a
/// compressed value).
pub fn block_events_raw(
    keyspaces: &ShardKeyspaces,
    stream_no: u32,
    header: &BlockHeader,
) -> Result<Vec<Vec<u8>>, ReadError> {
    keyspaces
        .event_values(stream_no, header.first_seq..=header.last_seq())
        .map(|item| {
            let (seq, value) = item?;
            let canonical =
                canonical(keyspaces, || format!("stream {stream_no} seq {seq}"), value)?;
            Ok(canonical.into_vec())
        })
        .collect()
}

/// Sealed blocks `from..to` of a stream, in order, as stored (each header is decoded
/// for its seq range only).
pub fn blocks_raw(
    keyspaces: &ShardKeyspaces,
    stream_no: u32,
    from: u64,
    to: u64,
) -> impl Iterator<Item = Result<(u64, BlockRecord), ReadError>> + '_ {
    keyspaces
        .block_records(stream_no, from, to)
        .map(move |item| {
            let (index, value) = item?;
            let location = format!("block {index} of stream {stream_no}");
            if value.len() < 64 {
                return Err(corrupt(location, "record shorter than its hashes"));
            }
            // Served as stored: the hash fields are the store's, the header its bytes.
            Ok((
                index,
                BlockRecord {
                    block_hash: value[..32].try_into().expect("32 bytes"),
                    tree_root_after: value[32..64].try_into().expect("32 bytes"),
                    header: value[64..].to_vec(),
                },
            ))
        })
}

/// The block hashes of blocks `0..tree_size`, each checked against its header: O(n)
/// reads. Proofs read a [`StoredTree`] instead; this is the reference tests compare it
/// with.
pub fn all_block_hashes(
    keyspaces: &ShardKeyspaces,
    stream_no: u32,
    tree_size: u64,
) -> Result<Vec<[u8; 32]>, ReadError> {
    let mut hashes = Vec::with_capacity(usize::try_from(tree_size).unwrap_or(0).min(1 << 20));
    for (expected, item) in (0..).zip(blocks_raw(keyspaces, stream_no, 0, tree_size)) {
        let (index, record) = item?;
        if index != expected {
            return Err(corrupt(
                format!("block {expected} of stream {stream_no}"),
                format!("missing; next stored is {index}"),
            ));
        }
        if block_hash(&record.header) != record.block_hash {
            return Err(corrupt(
                format!("block {index} of stream {stream_no}"),
                DecodeError::Checksum.to_string(),
            ));
        }
        hashes.push(record.block_hash);
    }
    if hashes.len() as u64 != tree_size {
        return Err(corrupt(
            format!("stream {stream_no}"),
            format!(
                "{} blocks stored, checkpoint covers {tree_size}",
                hashes.len()
            ),
        ));
    }
    Ok(hashes)
}

/// A stream's tree as the store keeps it: the block hashes (level 0, each checked
/// against its header) and the roots of perfect subtrees of 2, 4, 8, ... blocks, kept
/// under the block that completes each (`ShardKeyspaces::subtree_roots`). Counts its point reads.
pub struct StoredTree<'a> {
    keyspaces: &'a ShardKeyspaces,
    stream_no: u32,
    reads: std::cell::Cell<u64>,
}

impl<'a> StoredTree<'a> {
    pub fn new(keyspaces: &'a ShardKeyspaces, stream_no: u32) -> StoredTree<'a> {
        StoredTree {
            keyspaces,
            stream_no,
            reads: std::cell::Cell::new(0),
        }
    }

    /// Point reads of the keyspace so far.
    pub fn reads(&self) -> u64 {
        self.reads.get()
    }

    /// Counts one point read of the chain.
    fn count_read(&self) {
        self.reads.set(self.reads.get() + 1);
    }

    /// The hash of block `index`, checked against its header.
    fn leaf(&self, index: u64) -> Result<[u8; 32], ReadError> {
        let location = || format!("block {index} of stream {}", self.stream_no);
        self.count_read();
        let value = self
            .keyspaces
            .block_record(self.stream_no, index)?
            .ok_or_else(|| corrupt(location(), "missing under a checkpoint"))?;
        let record =
            BlockRecord::decode(&value).map_err(|error| corrupt(location(), error.to_string()))?;
        if block_hash(&record.header) != record.block_hash {
            return Err(corrupt(location(), DecodeError::Checksum.to_string()));
        }
        Ok(record.block_hash)
    }
}

impl SubtreeSource for StoredTree<'_> {
    type Error = ReadError;

    fn perfect_root(&self, level: u32, index: u64) -> Result<[u8; 32], ReadError> {
        if level == 0 {
            return self.leaf(index);
        }
        // Subtree (level, index) is completed by its last block.
        let last_block = ((index + 1) << level) - 1;
        self.count_read();
        let found: Option<StoredValue> =
            self.keyspaces.subtree_roots(self.stream_no, last_block)?;
        let Some(value) = found else {
            // A stream sealed before subtree roots were kept: hash the two halves.
            return Ok(node_hash(
                &self.perfect_root(level - 1, 2 * index)?,
                &self.perfect_root(level - 1, 2 * index + 1)?,
            ));
        };
        let expected_len = 32 * last_block.trailing_ones() as usize;
        let position = 32 * (level as usize - 1);
        if value.len() != expected_len || position + 32 > value.len() {
            return Err(corrupt(
                format!(
                    "subtree roots of block {last_block} of stream {}",
                    self.stream_no
                ),
                format!("{} bytes, expected {expected_len}", value.len()),
            ));
        }
        Ok(value[position..position + 32].try_into().expect("32 bytes"))
    }
}

/// The index of the sealed block holding `seq`, if it is sealed.
fn block_of_seq(
    keyspaces: &ShardKeyspaces,
    stream_no: u32,
    seq: u64,
) -> Result<Option<u64>, ReadError> {
    Ok(keyspaces.block_of_seq(stream_no, seq)?)
}

/// Inclusion proof of `(tenant, event_id)` in the checkpoint of `tree_size` (0: the
/// latest).
pub fn inclusion(
    keyspaces: &ShardKeyspaces,
    tenant_id: &str,
    event_id: &str,
    tree_size: u64,
) -> Result<InclusionProof, ProofError> {
    let state = stream_of(keyspaces, tenant_id, 0)?;
    let read = get_event(keyspaces, tenant_id, event_id)?.ok_or_else(|| {
        ProofError::NotFound(format!("event {event_id} of tenant {tenant_id} not found"))
    })?;
    let stream = read.stored.stream.clone();
    let seq = read.stored.seq;
    let not_covered = || ProofError::NotCovered {
        stream: stream.clone(),
        seq,
    };
    let block_index = block_of_seq(keyspaces, state.stream_no, seq)?.ok_or_else(not_covered)?;
    let checkpoint = match checkpoint(keyspaces, &state, tree_size)? {
        Some(checkpoint) => checkpoint,
        None if tree_size == 0 => return Err(not_covered()),
        None => {
            return Err(ProofError::NotFound(format!(
                "stream {stream} has no checkpoint of tree size {tree_size}"
            )))
        }
    };
    if checkpoint.body.tree_size <= block_index {
        return Err(if tree_size == 0 {
            not_covered()
        } else {
            ProofError::BadRequest(format!(
                "event {event_id} is in block {block_index}, after the checkpoint of tree \
                 size {tree_size}; ask for a later checkpoint"
            ))
        });
    }
    let block = block(keyspaces, state.stream_no, block_index)?.ok_or_else(|| {
        corrupt(
            format!("stream {stream}"),
            format!("block {block_index} is missing"),
        )
    })?;
    let location = format!("block {block_index} of stream {stream}");
    let events = block_events_raw(keyspaces, state.stream_no, &block.header)?;
    if events.len() != block.header.count as usize {
        return Err(corrupt(
            location,
            format!(
                "{} events stored, header says {}",
                events.len(),
                block.header.count
            ),
        )
        .into());
    }
    let leaves: Vec<[u8; 32]> = events.iter().map(|bytes| leaf_hash(bytes)).collect();
    if crate::ledger::merkle::root_of(&leaves) != block.header.merkle_root {
        return Err(corrupt(location, "events do not hash to the block's root").into());
    }
    // The block was found by the seq's index entry; a header whose seqs do not hold
    // the seq is damage, not a proof of another event.
    if seq < block.header.first_seq || seq > block.header.last_seq() {
        return Err(corrupt(
            location,
            format!(
                "the index finds seq {seq} here, the header holds seqs {}..={}",
                block.header.first_seq,
                block.header.last_seq()
            ),
        )
        .into());
    }
    let leaf_index = seq - block.header.first_seq;
    assert!(
        leaf_index < leaves.len() as u64,
        "tree size: inclusion proof of seq {seq} at leaf {leaf_index} of a block of {} events",
        leaves.len()
    );
    let block_path = inclusion_proof(leaves.as_slice(), leaf_index, leaves.len() as u64);
    if block_hash(&block.record.header) != block.record.block_hash {
        return Err(corrupt(location, DecodeError::Checksum.to_string()).into());
    }
    let tree_size = checkpoint.body.tree_size;
    assert!(
        block_index < tree_size,
        "tree size: inclusion proof of block {block_index} in the checkpoint of tree size \
         {tree_size} of stream {stream}"
    );
    let tree = StoredTree::new(keyspaces, state.stream_no);
    let tree_path = try_inclusion_proof(&tree, block_index, tree_size)?;
    if !verify_inclusion(
        &block.record.block_hash,
        block_index,
        tree_size,
        &tree_path,
        &checkpoint.body.root,
    ) {
        return Err(corrupt(
            format!("stream {stream}"),
            "the stream tree's stored nodes do not lead to the checkpoint's root",
        )
        .into());
    }
    Ok(InclusionProof {
        event: events[leaf_index as usize].clone(),
        stream,
        seq,
        leaf_index: u32::try_from(leaf_index).expect("blocks hold at most 65,536 events"),
        block,
        block_path,
        tree_path,
        checkpoint,
    })
}

/// Consistency proof between the stream trees of `from_size` and the checkpoint of
/// `to_size` (0: the latest).
pub fn consistency(
    keyspaces: &ShardKeyspaces,
    tenant_id: &str,
    stream_index: u32,
    from_size: u64,
    to_size: u64,
) -> Result<(Vec<[u8; 32]>, StoredCheckpoint), ProofError> {
    let state = stream_of(keyspaces, tenant_id, stream_index)?;
    let to = checkpoint(keyspaces, &state, to_size)?.ok_or_else(|| {
        ProofError::NotFound(if to_size == 0 {
            format!("stream {tenant_id}/{stream_index} has no checkpoint yet")
        } else {
            format!("stream {tenant_id}/{stream_index} has no checkpoint of tree size {to_size}")
        })
    })?;
    if from_size > to.body.tree_size {
        return Err(ProofError::BadRequest(format!(
            "from_size {from_size} is larger than the checkpoint's tree size {}",
            to.body.tree_size
        )));
    }
    let tree = StoredTree::new(keyspaces, state.stream_no);
    let to_size = to.body.tree_size;
    assert!(
        from_size <= to_size,
        "tree size: consistency proof from size {from_size} to the checkpoint of size \
         {to_size} of stream {tenant_id}/{stream_index}"
    );
    let proof = try_consistency_proof(&tree, from_size, to_size)?;
    // Checked before it is served: the old tree's root from the store, then the proof
    // from it to the checkpoint's root.
    let from_root = try_root_of(&tree, from_size)?;
    let to_root = if from_size == to_size {
        to.body.root
    } else {
        try_root_of(&tree, to_size)?
    };
    if to_root != to.body.root
        || !verify_consistency(from_size, to_size, &from_root, &to.body.root, &proof)
    {
        return Err(corrupt(
            format!("stream {tenant_id}/{stream_index}"),
            "the stream tree's stored nodes do not lead to the checkpoint's root",
        )
        .into());
    }
    Ok((proof, to))
}
