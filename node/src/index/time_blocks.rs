//! The time index's blocks: a stream's entries (`occurred_at, seq`, and the event's
//! 19-byte summary, `summary.rs`) in runs of up to [`BLOCK_ENTRIES_MAX`], one fjall key
//! per run rather than one per event.
//!
//! One key per event makes the time index the largest part of the indexer's cost that
//! can be taken out (docs/bench/history/ingest-with-indexing.md, "where the indexer's
//! CPU goes, five terms, the time index in blocks"): every key is a memtable insert,
//! journal bytes, and a flush and compactions of its own.
//!
//! Invariant: a stream's blocks do not overlap. Each block is keyed by its **last**
//! position (`storage::tindex_key`), so blocks in key order are in position order, and
//! the block that holds (or would hold) a position is the first one whose key is not
//! below it. The indexer keeps the invariant when it writes ([`plan`]): entries past
//! the stream's last block make new blocks; an entry that arrives late (below the last
//! block's end: `occurred_at` out of order across commits, or an event indexed again
//! after a crash) is merged into the block that would hold it, which is rewritten
//! under the same key (its last position does not change), split in two or more when
//! it grows past the maximum. No key is ever deleted but by a rebuild.
//!
//! A walk ([`Walk`]) reads the blocks that can hold a position of a range, in order,
//! and yields their entries in order.

use fjall::Keyspace;

use super::summary::SUMMARY_BYTES;
use crate::query::ReadError;
use crate::storage::{tindex_key, tindex_key_decode};

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

/// Above every key of the stream (keys are 20 bytes).
fn stream_end(stream_no: u32) -> Vec<u8> {
    let mut end = stream_no.to_be_bytes().to_vec();
    end.extend([0xFF; 17]);
    end
}

fn block_key(stream_no: u32, last: &Entry) -> [u8; 20] {
    tindex_key(stream_no, last.occurred_at_ns, last.seq)
}

/// The keys and values to write for `entries`, new to one stream's blocks (any order,
/// duplicates allowed). Reads the blocks late entries fall into.
pub fn plan(
    keyspace: &Keyspace,
    stream_no: u32,
    mut entries: Vec<Entry>,
) -> anyhow::Result<Vec<([u8; 20], Vec<u8>)>> {
    entries.sort_unstable_by_key(Entry::position);
    entries.dedup_by_key(|entry| entry.position());
    let stream_end = stream_end(stream_no);
    let mut writes = Vec::new();
    let mut rest = &entries[..];
    while let Some(first) = rest.first() {
        // The block that would hold `first`: the first whose last position is not below.
        let from = tindex_key(stream_no, first.occurred_at_ns, first.seq);
        let holder = keyspace
            .range(from.to_vec()..stream_end.clone())
            .next()
            .map(|guard| guard.into_inner())
            .transpose()?;
        let Some((key, value)) = holder else {
            // Past the last block: new blocks.
            push_blocks(&mut writes, stream_no, rest);
            break;
        };
        let end = tindex_key_decode(&key, stream_no).ok_or_else(|| {
            anyhow::anyhow!("time index of stream {stream_no}: bad key {key:02x?}")
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
        push_blocks(&mut writes, stream_no, &merged);
        rest = &rest[taken..];
    }
    Ok(writes)
}

/// Blocks of `entries` (in position order), at most [`BLOCK_ENTRIES_MAX`] each.
fn push_blocks(writes: &mut Vec<([u8; 20], Vec<u8>)>, stream_no: u32, entries: &[Entry]) {
    for chunk in entries.chunks(BLOCK_ENTRIES_MAX) {
        let last = chunk.last().expect("chunks are not empty");
        writes.push((block_key(stream_no, last), encode(chunk)));
    }
}

/// The entries of one stream with positions in `[low, high)`, in order (newest first
/// when `descending`).
pub struct Walk {
    blocks: Box<dyn Iterator<Item = fjall::Guard>>,
    stream_no: u32,
    low: (i64, u64),
    high: (i64, u64),
    descending: bool,
    /// The current block's entries in the walk's order, and the next one's index.
    current: Vec<Entry>,
    next: usize,
    /// A first block to read before `blocks` (the descending walk's block holding
    /// `high`).
    first: Option<fjall::Guard>,
    done: bool,
}

impl Walk {
    pub fn new(
        keyspace: &Keyspace,
        stream_no: u32,
        low: (i64, u64),
        high: (i64, u64),
        descending: bool,
    ) -> Walk {
        let low_key = tindex_key(stream_no, low.0, low.1).to_vec();
        let high_key = tindex_key(stream_no, high.0, high.1).to_vec();
        let stream_end = stream_end(stream_no);
        let (blocks, first): (Box<dyn Iterator<Item = fjall::Guard>>, _) = if descending {
            // The block holding `high` ends at or after it; those ending in [low, high)
            // follow, last first.
            let first = keyspace.range(high_key.clone()..stream_end).next();
            (Box::new(keyspace.range(low_key..high_key).rev()), first)
        } else {
            // From the block holding `low` on, until one ends at or after `high`.
            (Box::new(keyspace.range(low_key..stream_end)), None)
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

    fn load(&mut self, guard: fjall::Guard) -> Result<(), ReadError> {
        let (key, value) = guard.into_inner()?;
        let corrupt = |reason: String| ReadError::Corrupt {
            location: format!("time index of stream {}", self.stream_no),
            reason,
        };
        let end = tindex_key_decode(&key, self.stream_no)
            .ok_or_else(|| corrupt(format!("key {key:02x?} is not a time-index key")))?;
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
            let guard = match self.first.take() {
                Some(guard) => guard,
                None if self.done => return None,
                None => self.blocks.next()?,
            };
            if let Err(error) = self.load(guard) {
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
    use fjall::{Database, KeyspaceCreateOptions};
    use proptest::prelude::*;

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
            let dir = tempfile::tempdir().unwrap();
            let db = Database::builder(dir.path()).open().unwrap();
            let keyspace = db.keyspace("tindex", KeyspaceCreateOptions::default).unwrap();
            // Two neighbouring streams with the same positions.
            let streams = [1u32, 2];
            let mut model: std::collections::BTreeMap<(u32, i64, u64), Entry> =
                Default::default();
            for (round_no, round) in rounds.into_iter().enumerate() {
                let mut batch = db.batch();
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
                    for (key, value) in plan(&keyspace, stream_no, new).unwrap() {
                        batch.insert(&keyspace, key, value);
                    }
                }
                batch.commit().unwrap();
                for stream_no in [0u32, 1, 2, 3] {
                    // Blocks in key order are in position order and do not overlap.
                    let mut last_end = None;
                    for guard in keyspace.prefix(stream_no.to_be_bytes()) {
                        let (key, value) = guard.into_inner().unwrap();
                        let end = tindex_key_decode(&key, stream_no).unwrap();
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
                        let ascending: Vec<Entry> = Walk::new(&keyspace, stream_no, low, high, false)
                            .collect::<Result<_, _>>()
                            .unwrap();
                        prop_assert_eq!(&ascending, &expected, "ascending {:?}..{:?}", low, high);
                        let mut descending: Vec<Entry> = Walk::new(&keyspace, stream_no, low, high, true)
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
