//! The time index's blocks: a stream's entries (`occurred_at, seq`, and the event's
//! 19-byte summary, `summary.rs`) in runs of up to [`BLOCK_ENTRIES_MAX`], one stored key
//! per run rather than one per event.
//!
//! One key per event makes the time index the largest part of the indexer's cost that
//! can be taken out (docs/bench/history/ingest-with-indexing.md, "where the indexer's
//! CPU goes, five terms, the time index in blocks"): every key is a memtable insert,
//! journal bytes, and a flush and compactions of its own.
//!
//! Invariant: a stream's blocks do not overlap. Each block is keyed by its **last**
//! position (`ShardKeyspaces::time_blocks`), so blocks in key order are in position
//! order, and the block that holds (or would hold) a position is the first one whose
//! key is not below it. The indexer keeps the invariant when it writes ([`plan`]): entries past
//! the stream's last block make new blocks; an entry that arrives late (below the last
//! block's end: `occurred_at` out of order across commits, or an event indexed again
//! after a crash) is merged into the block that would hold it, which is rewritten
//! under the same key (its last position does not change), split in two or more when
//! it grows past the maximum. No key is ever deleted but by a rebuild.
//!
//! A walk ([`Walk`]) reads the blocks that can hold a position of a range, in order,
//! and yields their entries in order.

use super::summary::SUMMARY_BYTES;
use crate::query::ReadError;
use crate::storage::{ShardKeyspaces, StoreError, TimeBlock};

/// Entries per block at most: 64 x 35 bytes, ~2 KiB before compression.
pub const BLOCK_ENTRIES_MAX: usize = 64;

const BLOCK_VERSION: u8 = 1;
const ENTRY_BYTES: usize = 8 + 8 + SUMMARY_BYTES;

/// One event in the time index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub occurred_at_ns: i64,
    pub seq: u64,
    pub summary: [u8; SUMMARY_BYTES],
}

impl Entry {
    pub fn position(&self) -> (i64, u64) {
        (self.occurred_at_ns, self.seq)
    }
}

/// `version, count, count x (occurred_at i64, seq u64, summary)`, big-endian.
pub fn encode(entries: &[Entry]) -> Vec<u8> {
    assert!(!entries.is_empty() && entries.len() <= BLOCK_ENTRIES_MAX);
    let mut out = Vec::with_capacity(2 + entries.len() * ENTRY_BYTES);
    out.push(BLOCK_VERSION);
    out.push(entries.len() as u8);
    for entry in entries {
        out.extend_from_slice(&entry.occurred_at_ns.to_be_bytes());
        out.extend_from_slice(&entry.seq.to_be_bytes());
        out.extend_from_slice(&entry.summary);
    }
    out
}

/// The entries of a block, or `None` when the value is not one.
pub fn decode(value: &[u8]) -> Option<Vec<Entry>> {
    let (&version, rest) = value.split_first()?;
    let (&count, body) = rest.split_first()?;
    if version != BLOCK_VERSION || count == 0 || body.len() != usize::from(count) * ENTRY_BYTES {
        return None;
    }
    Some(
        body.chunks_exact(ENTRY_BYTES)
            .map(|bytes| Entry {
                occurred_at_ns: i64::from_be_bytes(bytes[..8].try_into().expect("8 bytes")),
                seq: u64::from_be_bytes(bytes[8..16].try_into().expect("8 bytes")),
                summary: bytes[16..].try_into().expect("summary bytes"),
            })
            .collect(),
    )
}

/// A block to write: its last position (its key) and its encoding.
pub type BlockWrite = ((i64, u64), Vec<u8>);

/// The blocks to write for `entries`, new to one stream's blocks (any order,
/// duplicates allowed), each as its last position and its encoding. Reads the blocks
/// late entries fall into.
pub fn plan(
    keyspaces: &ShardKeyspaces,
    stream_no: u32,
    mut entries: Vec<Entry>,
) -> anyhow::Result<Vec<BlockWrite>> {
    entries.sort_unstable_by_key(Entry::position);
    entries.dedup_by_key(|entry| entry.position());
    let mut writes = Vec::new();
    let mut rest = &entries[..];
    while let Some(first) = rest.first() {
        // The block that would hold `first`: the first whose last position is not below.
        let holder = keyspaces
            .time_blocks(stream_no, first.position(), None)
            .next()
            .transpose()?;
        let Some((end, value)) = holder else {
            // Past the last block: new blocks.
            push_blocks(&mut writes, rest);
            break;
        };
        let end = end.ok_or_else(|| {
            anyhow::anyhow!("time index of stream {stream_no}: a key is not a time-index key")
        })?;
        let old = decode(&value).ok_or_else(|| {
            anyhow::anyhow!("time index of stream {stream_no}: bad block at {end:?}")
        })?;
        // Every entry up to the block's end goes into it (the block before ends below
        // `first`, so the merged block overlaps no other).
        let taken = rest.partition_point(|entry| entry.position() <= end);
        // New entries first: the stable sort keeps them ahead of an old one at the same
        // position, and the dedup keeps the first.
        let mut merged = rest[..taken].to_vec();
        merged.extend(old);
        merged.sort_by_key(Entry::position);
        merged.dedup_by_key(|entry| entry.position());
        // The last block keeps the old key: its last position is the old block's end.
        push_blocks(&mut writes, &merged);
        rest = &rest[taken..];
    }
    Ok(writes)
}

/// Blocks of `entries` (in position order), at most [`BLOCK_ENTRIES_MAX`] each.
fn push_blocks(writes: &mut Vec<BlockWrite>, entries: &[Entry]) {
    for chunk in entries.chunks(BLOCK_ENTRIES_MAX) {
        let last = chunk.last().expect("chunks are not empty");
        writes.push((last.position(), encode(chunk)));
    }
}

/// The entries of one stream with positions in `[low, high)`, in order (newest first
/// when `descending`).
pub struct Walk {
    blocks: Box<dyn Iterator<Item = Result<TimeBlock, StoreError>>>,
    stream_no: u32,
    low: (i64, u64),
    high: (i64, u64),
    descending: bool,
    /// The current block's entries in the walk's order, and the next one's index.
    current: Vec<Entry>,
    next: usize,
    /// A first block to read before `blocks` (the descending walk's block holding
    /// `high`).
    first: Option<Result<TimeBlock, StoreError>>,
    done: bool,
}

impl Walk {
    pub fn new(
        keyspaces: &ShardKeyspaces,
        stream_no: u32,
        low: (i64, u64),
        high: (i64, u64),
        descending: bool,
    ) -> Walk {
        type Blocks = Box<dyn Iterator<Item = Result<TimeBlock, StoreError>>>;
        let (blocks, first): (Blocks, _) = if descending {
            // The block holding `high` ends at or after it; those ending in [low, high)
            // follow, last first.
            let first = keyspaces.time_blocks(stream_no, high, None).next();
            let blocks = keyspaces.time_blocks(stream_no, low, Some(high)).rev();
            (Box::new(blocks), first)
        } else {
            // From the block holding `low` on, until one ends at or after `high`.
            (Box::new(keyspaces.time_blocks(stream_no, low, None)), None)
        };
        Walk {
            blocks,
            stream_no,
            low,
            high,
            descending,
            current: Vec::new(),
            next: 0,
            first,
            done: low >= high,
        }
    }

    fn load(&mut self, block: Result<TimeBlock, StoreError>) -> Result<(), ReadError> {
        let (end, value) = block?;
        let corrupt = |reason: String| ReadError::Corrupt {
            location: format!("time index of stream {}", self.stream_no),
            reason,
        };
        let end = end.ok_or_else(|| corrupt("a key is not a time-index key".into()))?;
        let mut entries =
            decode(&value).ok_or_else(|| corrupt(format!("the block ending at {end:?}")))?;
        if !self.descending && end >= self.high {
            // The last block this walk needs.
            self.done = true;
        }
        entries.retain(|entry| (self.low..self.high).contains(&entry.position()));
        if self.descending {
            entries.reverse();
        }
        self.current = entries;
        self.next = 0;
        Ok(())
    }
}

impl Iterator for Walk {
    type Item = Result<Entry, ReadError>;

    fn next(&mut self) -> Option<Result<Entry, ReadError>> {
        loop {
            if let Some(entry) = self.current.get(self.next) {
                self.next += 1;
                return Some(Ok(*entry));
            }
            let block = match self.first.take() {
                Some(block) => block,
                None if self.done => return None,
                None => self.blocks.next()?,
            };
            if let Err(error) = self.load(block) {
                self.done = true;
                self.current.clear();
                return Some(Err(error));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::NodeStore;
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;

    /// A shard of its own for each case, in one store: opening a store per case would
    /// be most of the test's time.
    fn fresh_shard() -> (&'static NodeStore, ShardKeyspaces) {
        static STORE: OnceLock<(tempfile::TempDir, NodeStore)> = OnceLock::new();
        static NEXT_SHARD: AtomicU32 = AtomicU32::new(0);
        let (_, store) = STORE.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let store = NodeStore::open(dir.path()).unwrap();
            (dir, store)
        });
        let shard = store
            .shard(NEXT_SHARD.fetch_add(1, Ordering::Relaxed))
            .unwrap();
        (store, shard)
    }

    fn entry(occurred_at_ns: i64, seq: u64) -> Entry {
        Entry {
            occurred_at_ns,
            seq,
            summary: [seq as u8; SUMMARY_BYTES],
        }
    }

    #[test]
    fn blocks_round_trip() {
        let entries: Vec<Entry> = (0..BLOCK_ENTRIES_MAX as u64)
            .map(|seq| entry(-5 + seq as i64, seq))
            .collect();
        assert_eq!(decode(&encode(&entries)), Some(entries.clone()));
        let mut bad = encode(&entries);
        bad.pop();
        assert_eq!(decode(&bad), None);
        assert_eq!(decode(&[0; 19]), None, "a per-event summary is not a block");
    }

    /// Rounds of entries (late, repeated, in any order) planned and written like the
    /// indexer's commits, on two streams side by side; after each round every walk
    /// (both directions, random ranges) yields exactly the model's entries in order,
    /// and a stream's blocks never overlap.
    #[derive(Debug, Clone)]
    struct Round(Vec<(u32, i64, u64)>);

    fn rounds() -> impl Strategy<Value = Vec<Round>> {
        // Few distinct times so positions tie on occurred_at; seqs from a small range
        // so rounds repeat entries (an event indexed again after a crash).
        let entry = (0u32..2, 0i64..40, 0u64..300);
        prop::collection::vec(prop::collection::vec(entry, 0..150).prop_map(Round), 1..6)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn walks_equal_the_model(
            rounds in rounds(),
            ranges in prop::collection::vec((0i64..45, 0u64..300, 0i64..45, 0u64..300), 8),
        ) {
            let (store, shard) = fresh_shard();
            // Two neighbouring streams with the same positions.
            let streams = [1u32, 2];
            let mut model: std::collections::BTreeMap<(u32, i64, u64), Entry> =
                Default::default();
            for (round_no, round) in rounds.into_iter().enumerate() {
                let mut batch = store.store_db().batch();
                for stream_no in streams {
                    let new: Vec<Entry> = round
                        .0
                        .iter()
                        .filter(|(stream, _, _)| streams[*stream as usize] == stream_no)
                        .map(|(_, time, seq)| {
                            // An entry written again carries this round's summary.
                            let mut entry = entry(*time, *seq);
                            entry.summary[0] = round_no as u8;
                            entry
                        })
                        .collect();
                    if new.is_empty() {
                        continue;
                    }
                    for entry in &new {
                        model.insert((stream_no, entry.occurred_at_ns, entry.seq), *entry);
                    }
                    for (last, value) in plan(&shard, stream_no, new).unwrap() {
                        shard.insert_time_block(&mut batch, stream_no, last, value);
                    }
                }
                batch.commit().unwrap();
                for stream_no in [0u32, 1, 2, 3] {
                    // Blocks in key order are in position order and do not overlap.
                    let mut last_end = None;
                    for block in shard.time_blocks(stream_no, (i64::MIN, 0), None) {
                        let (end, value) = block.unwrap();
                        let end = end.unwrap();
                        let entries = decode(&value).unwrap();
                        prop_assert_eq!(entries.last().unwrap().position(), end);
                        prop_assert!(entries.windows(2).all(|w| w[0].position() < w[1].position()));
                        if let Some(previous) = last_end {
                            prop_assert!(entries[0].position() > previous);
                        }
                        last_end = Some(end);
                    }
                    let mut all = vec![((i64::MIN, 0), (i64::MAX, u64::MAX))];
                    all.extend(ranges.iter().map(|(t0, s0, t1, s1)| ((*t0, *s0), (*t1, *s1))));
                    for (low, high) in all {
                        let expected: Vec<Entry> = model
                            .range((stream_no, low.0, low.1)..(stream_no, high.0, high.1).max((stream_no, low.0, low.1)))
                            .map(|(_, entry)| *entry)
                            .collect();
                        let ascending: Vec<Entry> = Walk::new(&shard, stream_no, low, high, false)
                            .collect::<Result<_, _>>()
                            .unwrap();
                        prop_assert_eq!(&ascending, &expected, "ascending {:?}..{:?}", low, high);
                        let mut descending: Vec<Entry> = Walk::new(&shard, stream_no, low, high, true)
                            .collect::<Result<_, _>>()
                            .unwrap();
                        descending.reverse();
                        prop_assert_eq!(&descending, &expected, "descending {:?}..{:?}", low, high);
                    }
                }
            }
        }
    }
}
