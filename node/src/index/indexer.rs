//! The indexer thread: reads each shard's feed (or, rebuilding, its stored events in
//! ingest-time order: `backlog.rs`), adds the events to the tantivy writer and the
//! time index's pending entries, and every commit interval makes both durable and
//! visible, then deletes the feed keys it covered.

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tantivy::index::SegmentId;
use tantivy::query::RangeQuery;
use tantivy::{IndexReader, IndexWriter, TantivyDocument, Term};

use super::backlog::{
    ingested_at, last_feed_key, reset_through, streams_of, Backlog, REBUILD_STEP_NS,
};
use super::handle::{IndexConfig, IndexProgress, NodeIndex, Payload, Visible, PAYLOAD_VERSION};
use super::merge::SegmentRanges;
use super::schema::{self, stream_value, Fields, Terms};
use super::search::{IndexView, SegmentColumns};
use super::time_blocks;
use crate::ledger::routing::ShardId;
use crate::ledger::StoredEvent;
use crate::storage::{FeedRuns, NodeStore, ShardKeyspaces, StoreDb, Syncer};

/// Events read and indexed per shard per round, so one busy shard cannot starve the
/// others nor delay a due commit by much. The lag is reported, and a due commit made,
/// between rounds: at the ~30k events/s one indexer thread managed beside saturating
/// ingest on 2 cores, 4 busy shards x 20,000 made rounds of ~2.5 s, so the lag that
/// ingest backpressure reads was seconds old and commits came late.
const EVENTS_PER_ROUND_MAX: u64 = 4_000;
/// Documents between commits at most: bounds the time-index keys held for the next
/// commit (39 bytes each) and the work redone after a crash.
const DOCS_PER_COMMIT_MAX: u64 = 200_000;
/// The longest pause of an idle indexer (see `IndexConfig::idle_pause`): the most a
/// first event after a quiet spell waits beyond the commit interval.
const IDLE_POLL_MAX: Duration = Duration::from_millis(160);

impl IndexConfig {
    /// The pause after `empty_rounds` rounds in a row that found nothing: the poll
    /// interval, doubling up to [`IDLE_POLL_MAX`]. An idle node with 200 shards spent
    /// 3.5% of a core polling every shard's feed every 20 ms.
    fn idle_pause(&self, empty_rounds: u32) -> Duration {
        self.poll_interval
            .saturating_mul(1 << empty_rounds.min(8))
            .min(IDLE_POLL_MAX.max(self.poll_interval))
    }
}

/// The indexer thread's state.
pub(super) struct Indexer {
    db: StoreDb,
    /// Makes the time index's keys durable before each tantivy commit.
    syncer: Syncer,
    /// What the events added since the last commit made.
    pending: Pending,
    reader: IndexReader,
    shards: Vec<ShardIndexer>,
    config: IndexConfig,
    uncommitted: u64,
    /// The position columns of the visible segments, opened once each.
    columns: HashMap<SegmentId, Arc<SegmentColumns>>,
    /// The visible segments' `occurred_at` ranges, for the merge policy.
    segment_ranges: SegmentRanges,
}

/// The documents and time-index entries of the events added since the last commit.
struct Pending {
    writer: IndexWriter<TantivyDocument>,
    fields: Fields,
    terms: Terms,
    /// Time-index entries for the next commit: (position in `shards`, stream, entry).
    time_keys: Vec<(usize, u32, time_blocks::Entry)>,
}

impl Pending {
    /// Deletes the shard's documents at the next commit (those added since stay).
    fn delete_shard(&mut self, shard: ShardId) -> anyhow::Result<()> {
        self.writer
            .delete_query(Box::new(shard_documents(&self.fields, shard)))?;
        Ok(())
    }

    /// Adds one event of the shard at `position`: its document, its time-index entry,
    /// and the lag it makes.
    fn add(
        &mut self,
        position: usize,
        shard: &mut ShardIndexer,
        stream_no: u32,
        stored: &StoredEvent,
    ) -> anyhow::Result<()> {
        let (document, summary) =
            self.terms
                .document(&self.fields, shard.id, stream_no, stored.seq, &stored.event);
        self.writer.add_document(document)?;
        self.time_keys.push((
            position,
            stream_no,
            time_blocks::Entry {
                occurred_at_ns: stored.event.occurred_at_ns,
                seq: stored.seq,
                summary,
            },
        ));
        let oldest = shard.oldest_pending_ns.get_or_insert(stored.ingested_at_ns);
        *oldest = (*oldest).min(stored.ingested_at_ns);
        Ok(())
    }
}

/// One shard's part of the indexer.
pub(super) struct ShardIndexer {
    pub(super) id: ShardId,
    keyspaces: ShardKeyspaces,
    /// Feed keys up to this one are read (and their events added).
    read_through: u64,
    /// Feed keys up to this one are committed; the payload says so.
    committed_through: u64,
    /// Feed keys read since the last commit, deleted after it.
    read_keys: Vec<u64>,
    /// Per stream, the first seq not yet added to the writer.
    next: HashMap<u32, u64>,
    /// Per stream, the first seq not in the visible searcher.
    visible_next: HashMap<u32, u64>,
    /// Streams still to index from the store before the feed (a rebuild).
    backlog: Backlog,
    /// `ingested_at` of the oldest event added since the last commit.
    oldest_pending_ns: Option<i64>,
    pub(super) progress: Arc<IndexProgress>,
    /// The payload's feed key it was opened to resume after; `None`: rebuilt.
    resumed_after: Option<u64>,
}

impl ShardIndexer {
    /// `resume`: the payload's feed key for this shard; `None` rebuilds the shard. Runs
    /// on any thread: the indexer thread does not touch the shard until it takes it up.
    pub(super) fn open(
        keyspaces: &ShardKeyspaces,
        resume: Option<u64>,
        indexer_stopped: &Arc<AtomicBool>,
    ) -> anyhow::Result<ShardIndexer> {
        // A reset at or before the payload's key is a snapshot installed while this index
        // did not index the shard (a node that lost the shard and got it back): the state
        // the documents describe is gone, so the shard is rebuilt.
        let resume = match resume {
            Some(through) if reset_through(keyspaces, through)? => None,
            other => other,
        };
        // The feed's end first, then the streams: whatever apply adds in between is in
        // both, and the per-stream watermarks skip it the second time.
        let applied = last_feed_key(keyspaces)?;
        let streams = streams_of(keyspaces)?;
        let progress = Arc::new(IndexProgress {
            indexer_stopped: indexer_stopped.clone(),
            ..IndexProgress::default()
        });
        let mut shard = ShardIndexer {
            id: keyspaces.shard,
            keyspaces: keyspaces.clone(),
            read_through: 0,
            committed_through: 0,
            read_keys: Vec::new(),
            next: HashMap::new(),
            visible_next: HashMap::new(),
            backlog: Backlog::default(),
            oldest_pending_ns: None,
            progress,
            resumed_after: resume,
        };
        match resume {
            Some(through) => {
                // Indexed: every seq below the first one the unread feed names.
                let mut first_unread: HashMap<u32, u64> = HashMap::new();
                for entry in keyspaces.feed_entries(through + 1..) {
                    let (_, value) = entry?;
                    let feed = FeedRuns::decode(&value)
                        .ok_or_else(|| anyhow::anyhow!("shard {}: bad feed entry", shard.id))?;
                    if feed.reset {
                        // Handled when read: the whole shard is rebuilt then.
                        break;
                    }
                    for (stream_no, first_seq, _) in feed.runs {
                        first_unread.entry(stream_no).or_insert(first_seq);
                    }
                }
                for (stream_no, next_seq) in streams {
                    let next = first_unread.get(&stream_no).copied().unwrap_or(next_seq);
                    shard.next.insert(stream_no, next);
                }
                shard.read_through = through;
                shard.committed_through = through;
            }
            None => {
                // Everything in the store now is the backlog; the feed after it is new,
                // and the feed up to it is deleted once the backlog is committed.
                keyspaces.clear_time_index()?;
                for index in keyspaces.feed_indexes(..=applied) {
                    shard.read_keys.push(index?);
                }
                for (stream_no, next_seq) in streams {
                    shard.next.insert(stream_no, 1);
                    if next_seq > 1 {
                        shard.backlog.push(stream_no, 1, next_seq);
                    }
                }
                shard.read_through = applied;
                shard.committed_through = applied;
                let remaining = shard.backlog_events();
                shard
                    .progress
                    .rebuild_remaining
                    .store(remaining, Ordering::Relaxed);
                if remaining > 0 {
                    tracing::info!(
                        shard = shard.id,
                        events = remaining,
                        "indexing the shard's events"
                    );
                }
            }
        }
        shard.visible_next = shard.next.clone();
        shard
            .progress
            .indexed_through
            .store(shard.committed_through, Ordering::Relaxed);
        Ok(shard)
    }

    /// For a rebuild: every stream's events now in the store are the backlog (and the
    /// watermarks start at 1); the feed keys up to now are deleted once it is committed,
    /// and the feed after them is read as usual (skipping what the backlog covered).
    #[allow(clippy::type_complexity)]
    fn scan(keyspaces: &ShardKeyspaces) -> anyhow::Result<(HashMap<u32, u64>, Backlog, Vec<u64>)> {
        let applied = last_feed_key(keyspaces)?;
        let mut read_keys = Vec::new();
        for index in keyspaces.feed_indexes(..=applied) {
            read_keys.push(index?);
        }
        let mut next = HashMap::new();
        let mut backlog = Backlog::default();
        for (stream_no, next_seq) in streams_of(keyspaces)? {
            next.insert(stream_no, 1);
            backlog.push(stream_no, 1, next_seq);
        }
        Ok((next, backlog, read_keys))
    }

    /// `ingested_at` of the first event of the first feed entry not read yet.
    fn first_unread_ingested_at(&self) -> Option<i64> {
        let (_, value) = self
            .keyspaces
            .feed_entries(self.read_through + 1..)
            .next()?
            .ok()?;
        let &(stream_no, first_seq, _) = FeedRuns::decode(&value)?.runs.first()?;
        ingested_at(&self.keyspaces, stream_no, first_seq).ok()?
    }

    /// Reads when the next event of each rebuild stream not read yet was ingested.
    /// Until then such a stream sits at `i64::MIN` and holds the round's floor there, so
    /// the rebuild would only learn its times in the round it starts in (and a shard
    /// taken up in the indexer's last round before `stop` would not be committed).
    fn learn_backlog_times(&mut self) -> anyhow::Result<()> {
        let keyspaces = &self.keyspaces;
        self.backlog
            .learn(|stream_no, from| ingested_at(keyspaces, stream_no, from))
    }

    fn rebuilding(&self) -> bool {
        !self.backlog.is_empty()
    }

    fn backlog_events(&self) -> u64 {
        self.backlog.events()
    }
}

/// Every document of a shard: a range of the `stream` fast field, whose values are
/// `shard << 32 | stream_no` ([`stream_value`]). (A `shard` term in every document cost
/// ~2% of ingest throughput with indexing, for a query only deletes run.)
pub fn shard_documents(fields: &Fields, shard: ShardId) -> RangeQuery {
    RangeQuery::new(
        Bound::Included(Term::from_field_u64(fields.stream, stream_value(shard, 0))),
        Bound::Included(Term::from_field_u64(
            fields.stream,
            stream_value(shard, u32::MAX),
        )),
    )
}

impl Indexer {
    /// An indexer with no shard yet, over an open index's `writer` and `reader`.
    pub(super) fn new(
        store: &NodeStore,
        writer: IndexWriter<TantivyDocument>,
        fields: Fields,
        terms: Terms,
        reader: IndexReader,
        config: IndexConfig,
        segment_ranges: SegmentRanges,
    ) -> Indexer {
        Indexer {
            db: store.store_db(),
            syncer: store.syncer.clone(),
            pending: Pending {
                writer,
                fields,
                terms,
                time_keys: Vec::new(),
            },
            reader,
            shards: Vec::new(),
            config,
            uncommitted: 0,
            columns: HashMap::new(),
            segment_ranges,
        }
    }

    pub(super) fn run(mut self, handle: &NodeIndex) {
        let mut last_commit = Instant::now();
        let mut empty_rounds: u32 = 0;
        loop {
            let stopping = handle.shared.stop.load(Ordering::SeqCst);
            match self.take_added(handle) {
                Ok(false) => {}
                Ok(true) => match self.visible() {
                    Ok(visible) => handle.publish(visible),
                    Err(error) => {
                        tracing::error!(%error, "the indexer stopped");
                        return;
                    }
                },
                Err(error) => {
                    tracing::error!(%error, "the indexer stopped");
                    return;
                }
            }
            if handle.shared.reindex.load(Ordering::SeqCst) {
                let reset = self.forget_unadded(handle).and_then(|()| {
                    (0..self.shards.len())
                        .try_for_each(|position| self.reset_shard(position, handle))
                });
                if let Err(error) = reset {
                    tracing::error!(%error, "the indexer stopped");
                    return;
                }
                // Only now: `request_reindex` refuses while this is set.
                handle.shared.reindex.store(false, Ordering::SeqCst);
            }
            let added = match self.round(handle) {
                Ok(added) => added,
                Err(error) => {
                    // Derived state: stop indexing (queries still see everything through
                    // the tail, bounded), and say so loudly.
                    tracing::error!(%error, "the indexer stopped");
                    return;
                }
            };
            let something = self.uncommitted > 0
                || self
                    .shards
                    .iter()
                    .any(|shard| shard.read_through > shard.committed_through);
            let due = something
                && (stopping
                    || last_commit.elapsed() >= self.config.commit_interval
                    || self.uncommitted >= DOCS_PER_COMMIT_MAX);
            if due {
                if let Err(error) = self.commit(handle) {
                    tracing::error!(%error, "the indexer could not commit; it stopped");
                    return;
                }
                last_commit = Instant::now();
            }
            self.report_lag();
            if stopping {
                return;
            }
            if added == 0 {
                std::thread::sleep(self.config.idle_pause(empty_rounds));
                empty_rounds = empty_rounds.saturating_add(1);
            } else {
                empty_rounds = 0;
            }
        }
    }

    /// Takes up the shards `add_shard` opened. Returns whether there were any: the
    /// caller publishes their watermarks.
    pub(super) fn take_added(&mut self, handle: &NodeIndex) -> anyhow::Result<bool> {
        let added = std::mem::take(&mut *handle.shared.added.lock().expect("added shards lock"));
        let any = !added.is_empty();
        for shard in added {
            let carried = handle
                .shared
                .resume_points
                .lock()
                .expect("resume points lock")
                .remove(&shard.id);
            let position = self.shards.len();
            let resumed_after = shard.resumed_after;
            self.shards.push(shard);
            if resumed_after.is_none() {
                // Documents of the shard's earlier life (a rebuild cut short, a replaced
                // state) go at the next commit.
                let id = self.shards[position].id;
                self.pending.delete_shard(id)?;
            } else if resumed_after != carried {
                // A reindex deleted the shard's documents after `add_shard` read its
                // resume point.
                self.reset_shard(position, handle)?;
            }
        }
        Ok(any)
    }

    /// For a reindex: deletes the documents of the shards the payload names that were
    /// not added, and forgets where they were, so that each is rebuilt when added.
    fn forget_unadded(&mut self, handle: &NodeIndex) -> anyhow::Result<()> {
        let forgotten = std::mem::take(
            &mut *handle
                .shared
                .resume_points
                .lock()
                .expect("resume points lock"),
        );
        for id in forgotten.keys() {
            self.pending.delete_shard(*id)?;
        }
        Ok(())
    }

    /// Index lag, per shard: how long ago the oldest event not yet visible was
    /// ingested: the oldest one added since the last commit, or else the first one of
    /// the feed not read yet (one event read per shard).
    fn report_lag(&self) {
        let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
        for shard in &self.shards {
            let oldest = shard
                .oldest_pending_ns
                .or_else(|| shard.first_unread_ingested_at());
            let lag_ms = oldest.map_or(0, |oldest| {
                (now_ns.saturating_sub(oldest).max(0) / 1_000_000) as u64
            });
            shard.progress.lag_ms.store(lag_ms, Ordering::Relaxed);
        }
    }

    /// Reads and adds what is new in every shard, a bounded amount each. Returns the
    /// number of events added.
    fn round(&mut self, handle: &NodeIndex) -> anyhow::Result<u64> {
        // Rebuilding shards advance together in ingest time, so that a segment holds
        // one span of time of all of them (a small shard racing ahead of a whale's
        // would put months into every segment).
        for shard in &mut self.shards {
            shard.learn_backlog_times()?;
        }
        let floor = self
            .shards
            .iter()
            .filter_map(|shard| shard.backlog.earliest())
            .min()
            .unwrap_or(i64::MAX);
        let mut added = 0;
        for position in 0..self.shards.len() {
            added += self.shard_round(position, handle, floor)?;
        }
        Ok(added)
    }

    /// One round of a shard: its rebuild, as far as `floor` (the earliest ingest time
    /// any rebuild is at) allows, then what its feed holds.
    fn shard_round(
        &mut self,
        position: usize,
        handle: &NodeIndex,
        floor: i64,
    ) -> anyhow::Result<u64> {
        let mut budget = EVENTS_PER_ROUND_MAX;
        let mut added = 0;
        // A rebuild first: the feed describes only what comes after it.
        while budget > 0 {
            let Some(((at, stream_no, from, to), until)) = self.shards[position].backlog.take()
            else {
                break;
            };
            if at > floor.saturating_add(REBUILD_STEP_NS) {
                // Ahead of another shard's rebuild: that one catches up first.
                self.shards[position]
                    .backlog
                    .put_back(at, stream_no, from, to);
                break;
            }
            let (count, next_at) =
                self.add_events_until(position, stream_no, from, to, until, budget)?;
            budget -= count.max(1);
            added += count;
            let shard = &mut self.shards[position];
            if from + count < to {
                // Stopped at an event after `until` (its time), or out of budget.
                let at = next_at.unwrap_or(at);
                shard.backlog.put_back(at, stream_no, from + count, to);
            }
            shard
                .progress
                .rebuild_remaining
                .store(shard.backlog_events(), Ordering::Relaxed);
        }
        if self.shards[position].rebuilding() {
            return Ok(added);
        }
        let start = self.shards[position].read_through + 1;
        let mut entries = Vec::new();
        for entry in self.shards[position].keyspaces.feed_entries(start..) {
            let (key, value) = entry?;
            let feed = FeedRuns::decode(&value).ok_or_else(|| {
                anyhow::anyhow!("shard {}: bad feed entry {key}", self.shards[position].id)
            })?;
            let events: u64 = feed.runs.iter().map(|run| u64::from(run.2)).sum();
            entries.push((key, feed));
            if events >= budget {
                break;
            }
            budget -= events;
        }
        for (key, feed) in entries {
            if feed.reset {
                self.reset_shard(position, handle)?;
                let shard = &mut self.shards[position];
                shard.read_keys.push(key);
                shard.read_through = key;
                return Ok(added);
            }
            // The batch's events as apply handed them over, when still held.
            let mut held: HashMap<u32, Vec<(u64, Vec<u8>)>> = HashMap::new();
            for (stream_no, seq, canonical) in self.shards[position]
                .keyspaces
                .recent
                .take(key)
                .unwrap_or_default()
            {
                held.entry(stream_no).or_default().push((seq, canonical));
            }
            for (stream_no, first_seq, count) in feed.runs {
                let next = self.shards[position]
                    .next
                    .get(&stream_no)
                    .copied()
                    .unwrap_or(1);
                let end = first_seq + u64::from(count);
                if end <= next {
                    continue;
                }
                let from = next.max(first_seq);
                let events = held.get(&stream_no).map_or(&[][..], Vec::as_slice);
                added += match self.add_held(position, stream_no, from, end, events)? {
                    Some(count) => count,
                    None => self.add_events(position, stream_no, from, end)?,
                };
            }
            let shard = &mut self.shards[position];
            shard.read_keys.push(key);
            shard.read_through = key;
        }
        Ok(added)
    }

    /// Re-indexes a shard from the store (its state was replaced by a snapshot, or a
    /// reindex was asked for): its documents go at the next commit, and until then and
    /// while it rebuilds, queries read its events from the store (the tail), so nothing
    /// is missed. Time-index keys are kept: they are a function of the immutable events
    /// and are written again alike.
    fn reset_shard(&mut self, position: usize, handle: &NodeIndex) -> anyhow::Result<()> {
        let shard = &mut self.shards[position];
        tracing::info!(shard = shard.id, "re-indexing the shard from the store");
        shard.visible_next.clear();
        handle.publish(self.visible()?);
        let shard = &mut self.shards[position];
        self.pending.delete_shard(shard.id)?;
        let (next, backlog, read_keys) = ShardIndexer::scan(&shard.keyspaces)?;
        shard.next = next;
        shard.backlog = backlog;
        shard.read_keys.extend(read_keys);
        shard
            .progress
            .rebuild_remaining
            .store(shard.backlog_events(), Ordering::Relaxed);
        Ok(())
    }

    /// Adds seqs `from..end` of a stream. Returns how many.
    fn add_events(
        &mut self,
        position: usize,
        stream_no: u32,
        from: u64,
        end: u64,
    ) -> anyhow::Result<u64> {
        let (count, _) =
            self.add_events_until(position, stream_no, from, end, i64::MAX, u64::MAX)?;
        Ok(count)
    }

    /// Adds seqs from `from` on, up to `end` (exclusive), `budget` events at most, and
    /// stops before the first event ingested at or after `until`. Returns how many it
    /// added and, when it stopped at such an event, that event's `ingested_at`.
    fn add_events_until(
        &mut self,
        position: usize,
        stream_no: u32,
        from: u64,
        end: u64,
        until: i64,
        budget: u64,
    ) -> anyhow::Result<(u64, Option<i64>)> {
        let shard = &mut self.shards[position];
        let mut expected = from;
        let mut stopped_at = None;
        for item in shard.keyspaces.event_values(stream_no, from..end) {
            if expected - from >= budget {
                break;
            }
            let (_, value) = item?;
            let value = shard.keyspaces.codec.canonical(value)?;
            let stored = StoredEvent::decode_canonical(&value).map_err(|error| {
                anyhow::anyhow!(
                    "shard {} stream {stream_no} seq {expected}: {error}",
                    shard.id
                )
            })?;
            anyhow::ensure!(
                stored.seq == expected,
                "shard {} stream {stream_no}: expected seq {expected}, found {}",
                shard.id,
                stored.seq
            );
            if stored.ingested_at_ns >= until {
                stopped_at = Some(stored.ingested_at_ns);
                break;
            }
            self.pending.add(position, shard, stream_no, &stored)?;
            expected += 1;
        }
        anyhow::ensure!(
            expected == end || stopped_at.is_some() || expected - from >= budget,
            "shard {} stream {stream_no}: events {expected}..{end} are missing",
            shard.id
        );
        shard.next.insert(stream_no, expected);
        let count = expected - from;
        self.uncommitted += count;
        Ok((count, stopped_at))
    }

    /// Adds seqs `from..end` of a stream from `events`, the stream's events of an apply
    /// batch as apply handed them over (`storage::recent`), when they hold them all.
    /// Returns how many, or `None` when they do not: the caller reads the store.
    fn add_held(
        &mut self,
        position: usize,
        stream_no: u32,
        from: u64,
        end: u64,
        events: &[(u64, Vec<u8>)],
    ) -> anyhow::Result<Option<u64>> {
        // Apply appends a stream's seqs in order, so the run is one contiguous slice.
        let Some(start) = events.iter().position(|(seq, _)| *seq == from) else {
            return Ok(None);
        };
        let run = &events[start..];
        let wanted = (end - from) as usize;
        if run.len() < wanted || run[wanted - 1].0 != end - 1 {
            return Ok(None);
        }
        let shard = &mut self.shards[position];
        for (seq, canonical) in &run[..wanted] {
            let stored = StoredEvent::decode_canonical(canonical).map_err(|error| {
                anyhow::anyhow!("shard {} stream {stream_no} seq {seq}: {error}", shard.id)
            })?;
            anyhow::ensure!(
                stored.seq == *seq,
                "shard {} stream {stream_no}: held seq {seq} is seq {}",
                shard.id,
                stored.seq
            );
            self.pending.add(position, shard, stream_no, &stored)?;
        }
        shard.next.insert(stream_no, end);
        self.uncommitted += wanted as u64;
        Ok(Some(wanted as u64))
    }

    /// Makes the added events durable and visible, then drops the feed keys covered.
    fn commit(&mut self, handle: &NodeIndex) -> anyhow::Result<()> {
        // 1. Time keys, durable before the tantivy commit that names them covered.
        let mut batch = self.db.batch();
        let entries = &mut self.pending.time_keys;
        entries.sort_by_key(|(position, stream_no, _)| (*position, *stream_no));
        for run in entries.chunk_by(|a, b| (a.0, a.1) == (b.0, b.1)) {
            let (position, stream_no, _) = run[0];
            let keyspaces = &self.shards[position].keyspaces;
            let new = run.iter().map(|(_, _, entry)| *entry).collect();
            for (last, value) in time_blocks::plan(keyspaces, stream_no, new)? {
                keyspaces.insert_time_block(&mut batch, stream_no, last, value);
            }
        }
        batch.commit()?;
        entries.clear();
        // Through the fsync thread: `Database::persist` would hold the journal lock,
        // which every shard's appends and applies take, for the whole fsync, at every
        // commit (twice a second).
        anyhow::ensure!(self.syncer.wait(), "the fsync thread is gone");
        // 2. The documents, with what they cover: the shards not added carry on.
        let mut covered = handle
            .shared
            .resume_points
            .lock()
            .expect("resume points lock")
            .clone();
        for shard in &self.shards {
            if !shard.rebuilding() {
                covered.insert(shard.id, shard.read_through);
            }
        }
        let payload = Payload {
            version: PAYLOAD_VERSION,
            format: schema::INDEX_FORMAT,
            shards: covered,
        };
        let mut prepared = self.pending.writer.prepare_commit()?;
        prepared.set_payload(&serde_json::to_string(&payload)?);
        prepared.commit()?;
        self.reader.reload()?;
        // 3. Visible: the searcher and where each stream's tail starts.
        for shard in &mut self.shards {
            shard.visible_next = shard.next.clone();
        }
        handle.publish(self.visible()?);
        // 4. The feed keys now covered.
        let mut batch = self.db.batch();
        for shard in &mut self.shards {
            if !shard.rebuilding() {
                for key in shard.read_keys.drain(..) {
                    shard.keyspaces.remove_feed_entry(&mut batch, key);
                }
                shard.committed_through = shard.read_through;
            }
            shard
                .progress
                .indexed_through
                .store(shard.committed_through, Ordering::Relaxed);
        }
        batch.commit()?;
        self.uncommitted = 0;
        for shard in &mut self.shards {
            shard.oldest_pending_ns = None;
        }
        Ok(())
    }

    /// What queries see now: the reader's searcher (with its segments' columns) and
    /// the watermarks. Also tells the merge policy the segments' time ranges.
    pub(super) fn visible(&mut self) -> anyhow::Result<Visible> {
        let view = IndexView::new(self.reader.searcher(), &mut self.columns)?;
        self.segment_ranges.learn(view.ranges());
        Ok(Visible {
            view,
            tail_from: self
                .shards
                .iter()
                .map(|shard| (shard.id, shard.visible_next.clone()))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn an_idle_indexer_backs_off_to_a_bound() {
        let config = IndexConfig::new(Path::new("/nowhere"));
        let pauses: Vec<u128> = [0, 1, 2, 3, 4, 40]
            .iter()
            .map(|&rounds| config.idle_pause(rounds).as_millis())
            .collect();
        assert_eq!(pauses, [20, 40, 80, 160, 160, 160]);
    }
}
