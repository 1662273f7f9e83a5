//! The canonical events of a shard's latest apply batches, held for the indexer.
//!
//! The indexer indexes every event apply writes, a fraction of a second later. Reading
//! them back from the store cost it more than half of its thread (lsm block parsing,
//! skiplist walks, expanding compressed values); apply already has the canonical bytes
//! in hand. So apply hands each committed batch over here under its feed key, and the
//! indexer takes the batch of the feed key it reads, falling back to the store for a
//! batch that is not here (dropped to stay in bounds, or applied before a restart).
//! Bounded in bytes: apply drops the oldest batch to make room and never waits.

use std::collections::VecDeque;
use std::sync::Mutex;

/// Bytes of canonical events held per shard: ~20,000 workload events, more than a
/// second of a busy shard's ingest, while the indexer runs ~0.5 s behind.
pub const RECENT_BYTES_MAX: usize = 8 << 20;
/// What one held event costs beyond its bytes (its place in the batch).
const EVENT_OVERHEAD_BYTES: usize = 40;

/// One apply batch's events: `(stream_no, seq, canonical)` in apply order.
pub type Batch = Vec<(u32, u64, Vec<u8>)>;

#[derive(Debug)]
pub struct RecentBatches {
    inner: Mutex<Recent>,
    bytes_max: usize,
}

#[derive(Debug, Default)]
struct Recent {
    /// `(feed key, events, bytes)`, oldest first; keys increase.
    batches: VecDeque<(u64, Batch, usize)>,
    bytes: usize,
}

impl Default for RecentBatches {
    fn default() -> RecentBatches {
        RecentBatches::with_bytes_max(RECENT_BYTES_MAX)
    }
}

impl RecentBatches {
    pub fn with_bytes_max(bytes_max: usize) -> RecentBatches {
        RecentBatches {
            inner: Mutex::new(Recent::default()),
            bytes_max,
        }
    }

    /// Holds a committed batch under its feed key, dropping the oldest ones to stay
    /// in bounds (a batch larger than the bound is not held).
    pub fn push(&self, key: u64, events: Batch) {
        let bytes: usize = events
            .iter()
            .map(|(_, _, canonical)| canonical.len() + EVENT_OVERHEAD_BYTES)
            .sum();
        if events.is_empty() || bytes > self.bytes_max {
            return;
        }
        let mut recent = self.inner.lock().expect("recent batches lock");
        if recent.batches.back().is_some_and(|(last, ..)| *last >= key) {
            // Not after the last one (a state replaced under it): start over.
            recent.batches.clear();
            recent.bytes = 0;
        }
        while recent.bytes + bytes > self.bytes_max {
            let Some((_, _, dropped)) = recent.batches.pop_front() else {
                break;
            };
            recent.bytes -= dropped;
        }
        recent.bytes += bytes;
        recent.batches.push_back((key, events, bytes));
    }

    /// The batch of feed key `key`, if held. Batches of earlier keys go too: the
    /// indexer reads the feed in key order, so it is past them.
    pub fn take(&self, key: u64) -> Option<Batch> {
        let mut recent = self.inner.lock().expect("recent batches lock");
        while let Some((front, ..)) = recent.batches.front() {
            if *front > key {
                return None;
            }
            let (front, events, bytes) = recent.batches.pop_front().expect("a front batch");
            recent.bytes -= bytes;
            if front == key {
                return Some(events);
            }
        }
        None
    }

    pub fn clear(&self) {
        let mut recent = self.inner.lock().expect("recent batches lock");
        recent.batches.clear();
        recent.bytes = 0;
    }

    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        let recent = self.inner.lock().expect("recent batches lock");
        (recent.batches.len(), recent.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(seqs: std::ops::Range<u64>, bytes: usize) -> Batch {
        seqs.map(|seq| (1, seq, vec![0u8; bytes])).collect()
    }

    #[test]
    fn batches_are_taken_by_feed_key_within_bounds() {
        let event = 100 + EVENT_OVERHEAD_BYTES;
        let recent = RecentBatches::with_bytes_max(10 * event);
        recent.push(5, batch(1..4, 100));
        recent.push(7, batch(4..8, 100));
        assert_eq!(recent.held(), (2, 7 * event));
        // Full: the oldest goes to make room.
        recent.push(9, batch(8..12, 100));
        assert_eq!(recent.held(), (2, 8 * event));
        assert_eq!(recent.take(5), None, "dropped");
        // A key between batches: none, and nothing after it is lost.
        assert_eq!(recent.take(6), None);
        assert_eq!(recent.take(7).unwrap().len(), 4);
        assert_eq!(recent.take(9).unwrap()[0].1, 8);
        assert_eq!(recent.held(), (0, 0));
        // Too large for the bound: not held.
        recent.push(11, batch(12..30, 100));
        assert_eq!(recent.take(11), None);
        // Taking a later key passes over earlier batches.
        recent.push(12, batch(30..31, 100));
        recent.push(13, batch(31..32, 100));
        assert_eq!(recent.take(13).unwrap()[0].1, 31);
        assert_eq!(recent.held(), (0, 0));
        // A key not after the last held (a replaced state) starts over.
        recent.push(20, batch(1..2, 100));
        recent.push(15, batch(1..3, 100));
        assert_eq!(recent.held(), (1, 2 * event));
        recent.clear();
        assert_eq!(recent.held(), (0, 0));
    }
}
