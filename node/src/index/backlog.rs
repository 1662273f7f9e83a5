//! What the indexes do not hold yet, read from the store: a rebuild's backlog (every
//! stream's stored events, taken in ingest-time order across the streams) and the
//! shard's feed and streams as the indexer reads them.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::ledger::{StoredEvent, TenantState};
use crate::storage::{FeedRuns, ShardKeyspaces};

/// How far ahead of the other streams a rebuild reads one stream, in ingest time.
pub(super) const REBUILD_STEP_NS: i64 = 1_000_000_000;

/// A rebuild's events still to index, per stream, taken in ingest-time order across
/// the streams (to within [`REBUILD_STEP_NS`]), as they were indexed live: the index's
/// segments then hold spans of time (`merge.rs`), where stream after stream would put
/// years into every segment.
#[derive(Debug, Default)]
pub(super) struct Backlog {
    /// `(ingested_at of the next event, or i64::MIN before the stream is read;
    /// stream_no; first seq to index; end, exclusive)`, the earliest on top.
    streams: BinaryHeap<Reverse<(i64, u32, u64, u64)>>,
}

impl Backlog {
    pub(super) fn push(&mut self, stream_no: u32, from: u64, to: u64) {
        if from < to {
            self.streams.push(Reverse((i64::MIN, stream_no, from, to)));
        }
    }

    /// A stream taken and not finished, to be read on from `from`, whose next event
    /// was ingested at `at`.
    pub(super) fn put_back(&mut self, at: i64, stream_no: u32, from: u64, to: u64) {
        self.streams.push(Reverse((at, stream_no, from, to)));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Sets the ingest time of the streams not read yet to `first_at(stream_no, from)`
    /// (left unread when that finds no event: the read reports it).
    pub(super) fn learn(
        &mut self,
        mut first_at: impl FnMut(u32, u64) -> anyhow::Result<Option<i64>>,
    ) -> anyhow::Result<()> {
        if self.earliest() != Some(i64::MIN) {
            return Ok(());
        }
        let streams = std::mem::take(&mut self.streams).into_vec();
        for Reverse((at, stream_no, from, to)) in streams {
            let at = match at {
                i64::MIN => first_at(stream_no, from)?.unwrap_or(i64::MIN),
                at => at,
            };
            self.streams.push(Reverse((at, stream_no, from, to)));
        }
        Ok(())
    }

    /// The ingest time the backlog is at (`None` when done).
    pub(super) fn earliest(&self) -> Option<i64> {
        self.streams.peek().map(|Reverse((at, ..))| *at)
    }

    pub(super) fn events(&self) -> u64 {
        self.streams
            .iter()
            .map(|Reverse((_, _, from, to))| to - from)
            .sum()
    }

    /// The stream to read next, and the ingest time to read it up to (exclusive).
    pub(super) fn take(&mut self) -> Option<((i64, u32, u64, u64), i64)> {
        let Reverse(next) = self.streams.pop()?;
        let others = self
            .streams
            .peek()
            .map_or(i64::MAX, |Reverse((at, ..))| *at);
        Some((next, others.max(next.0).saturating_add(REBUILD_STEP_NS)))
    }
}

/// `ingested_at` of an event of a shard; `None` when the store does not hold it.
pub(super) fn ingested_at(
    keyspaces: &ShardKeyspaces,
    stream_no: u32,
    seq: u64,
) -> anyhow::Result<Option<i64>> {
    let Some(value) = keyspaces.event_value(stream_no, seq)? else {
        return Ok(None);
    };
    let value = keyspaces.codec.canonical(value)?;
    let stored = StoredEvent::decode_canonical(&value).map_err(|error| {
        anyhow::anyhow!(
            "shard {} stream {stream_no} seq {seq}: {error}",
            keyspaces.shard
        )
    })?;
    Ok(Some(stored.ingested_at_ns))
}

/// `(stream_no, next_seq)` of every stream of a shard.
pub(super) fn streams_of(keyspaces: &ShardKeyspaces) -> anyhow::Result<Vec<(u32, u64)>> {
    let mut streams = Vec::new();
    for record in keyspaces.tenant_records() {
        let (key, value) = record?;
        let state = TenantState::decode(&value).ok_or_else(|| {
            anyhow::anyhow!(
                "shard {}: tenant {} does not decode",
                keyspaces.shard,
                String::from_utf8_lossy(&key)
            )
        })?;
        streams.push((state.stream_no, state.next_seq));
    }
    Ok(streams)
}

/// Whether a feed key at or before `through` is a reset. Normally there is none: the
/// keys a commit covers are deleted after it (a crash in between leaves some).
pub(super) fn reset_through(keyspaces: &ShardKeyspaces, through: u64) -> anyhow::Result<bool> {
    for entry in keyspaces.feed_entries(..=through) {
        let (_, value) = entry?;
        if FeedRuns::decode(&value).is_some_and(|feed| feed.reset) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The last feed key of a shard (0 when the feed is empty): everything applied so far
/// that the indexes need is at or before it.
pub(super) fn last_feed_key(keyspaces: &ShardKeyspaces) -> anyhow::Result<u64> {
    keyspaces.last_feed_index()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rebuild_reads_streams_in_ingest_time_order() {
        let mut backlog = Backlog::default();
        backlog.push(1, 1, 100);
        backlog.push(2, 1, 1);
        backlog.push(3, 5, 50);
        assert_eq!(backlog.events(), 99 + 45, "an empty stream is not kept");
        // Unread streams first, read up to nothing: the read learns the stream's time.
        let ((at, stream, ..), until) = backlog.take().unwrap();
        assert_eq!((at, stream), (i64::MIN, 1));
        assert_eq!(until, i64::MIN + REBUILD_STEP_NS);
        backlog.put_back(7_000_000_000, 1, 1, 100);
        let ((at, stream, ..), _) = backlog.take().unwrap();
        assert_eq!((at, stream), (i64::MIN, 3));
        backlog.put_back(2_000_000_000, 3, 5, 50);
        // Now the earliest stream, read up to a step past the next one's time.
        let ((at, stream, from, to), until) = backlog.take().unwrap();
        assert_eq!((at, stream, from, to), (2_000_000_000, 3, 5, 50));
        assert_eq!(until, 7_000_000_000 + REBUILD_STEP_NS);
        // The last stream reads to its end.
        let ((_, stream, ..), until) = backlog.take().unwrap();
        assert_eq!((stream, until), (1, i64::MAX));
        assert!(backlog.is_empty());
    }

    #[test]
    fn a_rebuild_learns_the_times_of_its_unread_streams() {
        let mut backlog = Backlog::default();
        backlog.push(1, 1, 100);
        backlog.push(2, 4, 9);
        backlog.push(3, 1, 5);
        backlog
            .learn(|stream, from| {
                Ok(match stream {
                    1 => Some(7_000),
                    2 => Some(3_000 + from as i64),
                    _ => None,
                })
            })
            .unwrap();
        // A stream whose event is not found stays unread, to be reported by its read.
        assert_eq!(backlog.earliest(), Some(i64::MIN));
        let ((at, stream, ..), _) = backlog.take().unwrap();
        assert_eq!((at, stream), (i64::MIN, 3));
        let ((at, stream, from, to), until) = backlog.take().unwrap();
        assert_eq!((at, stream, from, to), (3_004, 2, 4, 9));
        assert_eq!(until, 7_000 + REBUILD_STEP_NS);
        // Learned streams are not read again.
        backlog.put_back(8_000, 2, 6, 9);
        backlog.learn(|_, _| panic!("nothing is unread")).unwrap();
        assert_eq!(backlog.earliest(), Some(7_000));
    }
}
