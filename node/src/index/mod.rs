//! Secondary indexes, built behind the log (docs/QUERY.md, "Indexes").
//!
//! Apply writes one small feed key per batch (`sN.feed`: which seqs of which streams
//! it appended). One indexer thread per node reads the feeds of all shards, takes those
//! events from the batches apply handed over (`storage::recent`) or else reads them
//! from the store, and builds two derived indexes in bulk:
//!
//! - the time index `sN.tindex`: each stream's `(occurred_at, seq)` positions with the
//!   event's filter fields summarized in 19 bytes (`summary.rs`), in blocks of up to 64
//!   keyed by their last position (`time_blocks.rs`): a tenant's events in
//!   `occurred_at` order as one range scan that tests filters without reading events,
//!   for unselective queries and deep keyset pages;
//! - one tantivy index per node (`<data dir>/index`), one document per event with the
//!   tenant-scoped filter terms and the position as fast fields, for selective filters
//!   and counts.
//!
//! Every `commit_interval` it makes them durable together: the time-index keys (with
//! an fsync), then the tantivy commit, whose payload names, per shard, the last feed
//! key it covers. Then it reloads the searcher and publishes a [`Visible`]: the searcher
//! and, per stream, the first seq it does not hold. Queries read the indexes below that
//! seq and the store's events from it on (the tail), so an acknowledged event is never
//! missing from a result. Last, it deletes the feed keys it covered.
//!
//! After a crash the indexer resumes after the payload's feed key; time-index entries
//! are idempotent (an entry written again is merged into its block), and tantivy
//! documents are only added above each stream's watermark. A missing or unreadable
//! index, an index of another format, or a shard whose state was replaced by a
//! snapshot is rebuilt from the store.

mod merge;
pub mod schema;
pub mod search;
pub mod summary;
pub mod time_blocks;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tantivy::index::SegmentId;
use tantivy::indexer::IndexWriterOptions;
use tantivy::query::RangeQuery;
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use crate::ledger::routing::ShardId;
use crate::ledger::{StoredEvent, TenantState};
use crate::query::cursor_key::load_or_create_secret;
use crate::storage::{FeedRuns, NodeStore, ShardKeyspaces, StoreDb, Syncer};
use merge::{SegmentRanges, TimeMergePolicy};
pub use schema::{stream_value, Fields, Terms};
use search::{IndexView, SegmentColumns};

/// Events read and indexed per shard per round, so one busy shard cannot starve the
/// others nor delay a due commit by much. The lag is reported, and a due commit made,
/// between rounds: at the ~30k events/s one indexer thread managed beside saturating
/// ingest on 2 cores, 4 busy shards x 20,000 made rounds of ~2.5 s, so the lag that
/// ingest backpressure reads was seconds old and commits came late.
const EVENTS_PER_ROUND_MAX: u64 = 4_000;
/// Documents between commits at most: bounds the time-index keys held for the next
/// commit (39 bytes each) and the work redone after a crash.
const DOCS_PER_COMMIT_MAX: u64 = 200_000;
/// tantivy's indexing arena (its minimum is 15 MB).
const WRITER_MEMORY_BYTES: usize = 48 << 20;
/// Shards `add_shard` opened that the indexer thread has not taken up yet. It takes
/// them at the top of every loop (every 20-160 ms when idle), and a node holds at most
/// `config::SHARDS_MAX` (256) shards, so this bound is only met if the thread is gone.
const ADDED_SHARDS_QUEUED_MAX: usize = 256;
/// The longest pause of an idle indexer (see `IndexConfig::idle_pause`): the most a
/// first event after a quiet spell waits beyond the commit interval.
const IDLE_POLL_MAX: Duration = Duration::from_millis(160);
const TERM_KEY_FILE: &str = "term.key";
const PAYLOAD_VERSION: u32 = 1;

#[derive(Debug, Clone)]
pub struct IndexConfig {
    pub dir: PathBuf,
    /// How often new events become visible in the indexes (tantivy commit + reload
    /// costs ~11–16 ms here; DESIGN.md).
    pub commit_interval: Duration,
    /// How often the indexer looks at the feeds when it has nothing to do.
    pub poll_interval: Duration,
    /// No indexer thread (`traild --bench-index-off`): nothing is indexed, queries read
    /// the store, ingest is never held.
    pub off: bool,
    /// Request-id buckets, as bits (`schema::REQUEST_BUCKET_BITS`). Fixed for the life
    /// of an index: only tests set another.
    pub request_bucket_bits: u32,
}

impl IndexConfig {
    pub fn new(data_dir: &Path) -> IndexConfig {
        IndexConfig {
            dir: data_dir.join("index"),
            commit_interval: Duration::from_millis(500),
            poll_interval: Duration::from_millis(20),
            off: false,
            request_bucket_bits: schema::REQUEST_BUCKET_BITS,
        }
    }

    /// The pause after `empty_rounds` rounds in a row that found nothing: the poll
    /// interval, doubling up to [`IDLE_POLL_MAX`]. An idle node with 200 shards spent
    /// 3.5% of a core polling every shard's feed every 20 ms.
    fn idle_pause(&self, empty_rounds: u32) -> Duration {
        self.poll_interval
            .saturating_mul(1 << empty_rounds.min(8))
            .min(IDLE_POLL_MAX.max(self.poll_interval))
    }
}

/// What queries read: one committed searcher and, per shard and stream, the first seq
/// that is not in it (the tail starts there). Streams not listed start their tail at 1.
pub struct Visible {
    pub view: IndexView,
    pub tail_from: BTreeMap<ShardId, HashMap<u32, u64>>,
}

impl Visible {
    pub fn tail_from(&self, shard: ShardId, stream_no: u32) -> u64 {
        self.tail_from
            .get(&shard)
            .and_then(|streams| streams.get(&stream_no))
            .copied()
            .unwrap_or(1)
    }
}

/// Per shard, for `status`.
#[derive(Debug, Default)]
pub struct IndexProgress {
    /// The last feed key (applied log index) the visible indexes cover.
    pub indexed_through: AtomicU64,
    /// How long the oldest event not yet visible has waited, in ms (0 when none).
    pub lag_ms: AtomicU64,
    /// Events of a rebuild still to index (0 when not rebuilding).
    pub rebuild_remaining: AtomicU64,
    /// The node's indexer thread ended (stopped, or failed): nothing will lower the
    /// lag. One flag for the node, shared by every shard's progress, also those added
    /// after the thread ended.
    pub indexer_stopped: Arc<AtomicBool>,
}

impl IndexProgress {
    /// Whether ingest should wait for the indexer (`shard::batcher::IndexGate`): it is
    /// running, not rebuilding (a rebuild of a large store takes minutes, while the
    /// node keeps ingesting), and its lag is over `lag_ms_max`.
    pub fn holds_ingest(&self, lag_ms_max: u64) -> bool {
        self.paces_ingest() && self.lag_ms.load(Ordering::Relaxed) > lag_ms_max
    }

    /// Whether ingest paces itself by the lag at all: the indexer is running and not
    /// rebuilding.
    pub fn paces_ingest(&self) -> bool {
        !self.indexer_stopped.load(Ordering::Relaxed)
            && self.rebuild_remaining.load(Ordering::Relaxed) == 0
    }
}

/// A reindex was asked for while one runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a reindex is running{}; wait until `status` shows index_rebuild_remaining 0 on every shard, then ask again",
    .events_remaining.map_or(" (not started yet)".to_string(), |events| format!(" ({events} events still to index)")))]
pub struct ReindexRunning {
    /// Events still to index over every shard; `None`: asked for, not started yet.
    pub events_remaining: Option<u64>,
}

/// The node's secondary indexes: the handle queries use.
#[derive(Clone)]
pub struct NodeIndex {
    shared: Arc<Shared>,
}

struct Shared {
    fields: Fields,
    terms: Terms,
    visible: RwLock<Arc<Visible>>,
    /// Every shard `add_shard` opened, taken up by the indexer or not yet.
    progress: RwLock<BTreeMap<ShardId, Arc<IndexProgress>>>,
    /// Held through `add_shard`, so that a shard is opened once.
    adding: Mutex<()>,
    /// Shards `add_shard` opened, for the indexer thread to take up at the top of its
    /// loop (at most `ADDED_SHARDS_QUEUED_MAX`).
    added: Mutex<Vec<ShardIndexer>>,
    /// Per shard the last commit payload names that the indexer does not index (yet):
    /// the last feed key covered. Every commit carries these on, so that a shard added
    /// after a restart resumes where it was rather than being rebuilt.
    resume_points: Mutex<BTreeMap<ShardId, u64>>,
    stop: AtomicBool,
    /// Set when the indexer thread ends; every shard's [`IndexProgress`] holds it.
    indexer_stopped: Arc<AtomicBool>,
    reindex: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// The tantivy commit payload.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Payload {
    version: u32,
    format: u32,
    /// Per shard, the last feed key covered. A shard missing here is rebuilt.
    shards: BTreeMap<ShardId, u64>,
}

impl NodeIndex {
    /// Opens (or creates, or rebuilds) the index and starts the indexer thread. Call it
    /// after the shards' state machines opened and before they apply anything new.
    pub fn open(
        store: &NodeStore,
        shards: &[ShardKeyspaces],
        config: IndexConfig,
    ) -> anyhow::Result<NodeIndex> {
        let (schema, fields) = Fields::schema();
        std::fs::create_dir_all(&config.dir)?;
        let key = load_or_create_secret(
            &config.dir.join(TERM_KEY_FILE),
            "index term key",
            "delete the index directory to rebuild the index under a new key",
        )?;
        let existing = if config.dir.join("meta.json").exists() {
            open_existing(&config.dir, &schema)
        } else {
            Err(String::new())
        };
        let (index, payload) = match existing {
            Ok(found) => found,
            Err(reason) => {
                if !reason.is_empty() {
                    tracing::warn!(dir = %config.dir.display(), %reason, "rebuilding the query index");
                }
                remove_index_files(&config.dir)?;
                let index = Index::create_in_dir(&config.dir, schema.clone())?;
                (index, Payload::default())
            }
        };
        let writer: IndexWriter<TantivyDocument> = index.writer_with_options(
            IndexWriterOptions::builder()
                .memory_budget_per_thread(WRITER_MEMORY_BYTES)
                .num_worker_threads(1)
                .num_merge_threads(1)
                .build(),
        )?;
        let segment_ranges = SegmentRanges::default();
        writer.set_merge_policy(Box::new(TimeMergePolicy::new(segment_ranges.clone())));
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;

        let terms = Terms::with_request_buckets(&key, config.request_bucket_bits);
        let shared = Arc::new(Shared {
            fields,
            terms: terms.clone(),
            // No shard yet: every stream's tail starts at 1.
            visible: RwLock::new(Arc::new(Visible {
                view: IndexView::new(reader.searcher(), &mut HashMap::new())?,
                tail_from: BTreeMap::new(),
            })),
            progress: RwLock::new(BTreeMap::new()),
            adding: Mutex::new(()),
            added: Mutex::new(Vec::new()),
            resume_points: Mutex::new(payload.shards),
            stop: AtomicBool::new(false),
            indexer_stopped: Arc::default(),
            reindex: AtomicBool::new(false),
            thread: Mutex::new(None),
        });
        let handle = NodeIndex { shared };
        let mut indexer = Indexer {
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
            config: config.clone(),
            uncommitted: 0,
            columns: HashMap::new(),
            segment_ranges,
        };
        // The shards known at start are added like any other, and taken up here rather
        // than by the thread, so that the first queries already see their watermarks.
        for keyspaces in shards {
            handle.add_shard(keyspaces)?;
            indexer.take_added(&handle)?;
        }
        handle.publish(indexer.visible()?);
        if config.off {
            tracing::warn!("the indexer is off (--bench-index-off): queries read the store");
            handle.shared.indexer_stopped.store(true, Ordering::Relaxed);
            return Ok(handle);
        }
        let thread_handle = handle.clone();
        let thread = std::thread::Builder::new()
            .name("trail-indexer".into())
            .spawn(move || {
                indexer.run(&thread_handle);
                // Whether it stopped or failed, ingest must not wait for it any more.
                thread_handle
                    .shared
                    .indexer_stopped
                    .store(true, Ordering::Relaxed);
            })?;
        *handle.shared.thread.lock().expect("indexer thread lock") = Some(thread);
        Ok(handle)
    }

    /// Adds a shard to the running index (a shard this node opened after the index);
    /// a shard it already has is left as it is. The shard resumes after the feed key
    /// the last commit payload names for it (its documents from before a restart are
    /// kept, never added twice), or else is indexed from the store, its old documents
    /// deleted. The indexer thread takes it up within one loop; until then, and until
    /// the shard's first commit, its queries read its events from the store (the tail).
    pub fn add_shard(&self, keyspaces: &ShardKeyspaces) -> anyhow::Result<()> {
        let _adding = self.shared.adding.lock().expect("add shard lock");
        if self.progress(keyspaces.shard).is_some() {
            return Ok(());
        }
        anyhow::ensure!(
            !self.shared.stop.load(Ordering::SeqCst),
            "shard {}: the index is stopped",
            keyspaces.shard
        );
        let queued = self.shared.added.lock().expect("added shards lock").len();
        anyhow::ensure!(
            queued < ADDED_SHARDS_QUEUED_MAX,
            "shard {}: {queued} added shards wait for the indexer thread; it is not running",
            keyspaces.shard
        );
        let resume = self
            .shared
            .resume_points
            .lock()
            .expect("resume points lock")
            .get(&keyspaces.shard)
            .copied();
        let shard = ShardIndexer::open(keyspaces, resume, &self.shared.indexer_stopped)?;
        let progress = shard.progress.clone();
        self.shared
            .added
            .lock()
            .expect("added shards lock")
            .push(shard);
        self.shared
            .progress
            .write()
            .expect("progress lock")
            .insert(keyspaces.shard, progress);
        Ok(())
    }

    pub fn fields(&self) -> &Fields {
        &self.shared.fields
    }

    pub fn terms(&self) -> &Terms {
        &self.shared.terms
    }

    /// The indexes as of their last commit.
    pub fn visible(&self) -> Arc<Visible> {
        self.shared.visible.read().expect("visible lock").clone()
    }

    /// The shard's indexing progress; `None` for a shard never added.
    pub fn progress(&self, shard: ShardId) -> Option<Arc<IndexProgress>> {
        self.shared
            .progress
            .read()
            .expect("progress lock")
            .get(&shard)
            .cloned()
    }

    /// Waits until the visible indexes cover everything the shards have applied (their
    /// feeds hold nothing newer than the last commit, and every stream's watermark is
    /// past its last event); false on timeout. Shards never added count as caught up.
    /// For tests, benchmarks and `reindex`.
    pub fn wait_caught_up(&self, shards: &[ShardKeyspaces], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let visible = self.visible();
            let caught_up = shards.iter().all(|keyspaces| {
                let Some(progress) = self.progress(keyspaces.shard) else {
                    return true;
                };
                let indexed = progress.indexed_through.load(Ordering::SeqCst);
                // The watermarks too: a rebuild's last events are counted as indexed
                // before the commit that makes them visible.
                progress.rebuild_remaining.load(Ordering::SeqCst) == 0
                    && last_feed_key(keyspaces).is_ok_and(|last| last <= indexed)
                    && streams_of(keyspaces).is_ok_and(|streams| {
                        streams.iter().all(|&(stream_no, next_seq)| {
                            visible.tail_from(keyspaces.shard, stream_no) >= next_seq
                        })
                    })
            });
            if caught_up {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Rebuilds every shard's indexes from the store, online: until a shard is done,
    /// its queries read its events from the store (or are refused while that is too
    /// much); `status` shows the progress. Shards added later are covered if they were
    /// added before the call; the documents of shards the payload names but this node
    /// has not added are deleted, and such a shard is rebuilt when it is added.
    ///
    /// Refused while one runs (asked for and not yet started, or a shard still
    /// rebuilding, also after a restart): each reindex deletes every shard's documents,
    /// so calls repeated faster than a rebuild would keep the indexes empty.
    pub fn request_reindex(&self) -> Result<(), ReindexRunning> {
        let remaining = || {
            self.shared
                .progress
                .read()
                .expect("progress lock")
                .values()
                .map(|progress| progress.rebuild_remaining.load(Ordering::SeqCst))
                .sum::<u64>()
        };
        let events_remaining = remaining();
        if events_remaining > 0 {
            return Err(ReindexRunning {
                events_remaining: Some(events_remaining),
            });
        }
        // The indexer clears the flag only once every shard's reset is done (and its
        // `rebuild_remaining` set), so a call never sees neither.
        self.shared
            .reindex
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .map(|_| ())
            .map_err(|_| ReindexRunning {
                events_remaining: None,
            })
    }

    /// Commits what is indexed and stops the thread (orderly shutdown).
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let thread = self
            .shared
            .thread
            .lock()
            .expect("indexer thread lock")
            .take();
        if let Some(thread) = thread {
            if thread.join().is_err() {
                tracing::error!("the indexer thread panicked");
            }
        }
    }

    fn publish(&self, visible: Visible) {
        *self.shared.visible.write().expect("visible lock") = Arc::new(visible);
    }
}

fn open_existing(dir: &Path, schema: &tantivy::schema::Schema) -> Result<(Index, Payload), String> {
    let index = Index::open_in_dir(dir).map_err(|error| error.to_string())?;
    if index.schema() != *schema {
        return Err("the index has another schema".into());
    }
    let metas = index.load_metas().map_err(|error| error.to_string())?;
    let payload = match metas.payload {
        None => Payload::default(),
        Some(text) => serde_json::from_str::<Payload>(&text).map_err(|error| error.to_string())?,
    };
    if payload.version != PAYLOAD_VERSION || payload.format != schema::INDEX_FORMAT {
        if metas.segments.is_empty() {
            return Ok((index, Payload::default()));
        }
        return Err(format!(
            "the index is of format {}/{}; this node writes {}/{}",
            payload.version,
            payload.format,
            PAYLOAD_VERSION,
            schema::INDEX_FORMAT
        ));
    }
    Ok((index, payload))
}

/// Removes tantivy's files, keeping the term key.
fn remove_index_files(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name() != TERM_KEY_FILE {
            let path = entry.path();
            if path.is_dir() {
                std::fs::remove_dir_all(path)?;
            } else {
                std::fs::remove_file(path)?;
            }
        }
    }
    Ok(())
}

/// The indexer thread's state.
struct Indexer {
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
struct ShardIndexer {
    id: ShardId,
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
    progress: Arc<IndexProgress>,
    /// The payload's feed key it was opened to resume after; `None`: rebuilt.
    resumed_after: Option<u64>,
}

impl ShardIndexer {
    /// `resume`: the payload's feed key for this shard; `None` rebuilds the shard. Runs
    /// on any thread: the indexer thread does not touch the shard until it takes it up.
    fn open(
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

/// How far ahead of the other streams a rebuild reads one stream, in ingest time.
const REBUILD_STEP_NS: i64 = 1_000_000_000;

/// A rebuild's events still to index, per stream, taken in ingest-time order across
/// the streams (to within [`REBUILD_STEP_NS`]), as they were indexed live: the index's
/// segments then hold spans of time (`merge.rs`), where stream after stream would put
/// years into every segment.
#[derive(Debug, Default)]
struct Backlog {
    /// `(ingested_at of the next event, or i64::MIN before the stream is read;
    /// stream_no; first seq to index; end, exclusive)`, the earliest on top.
    streams: BinaryHeap<Reverse<(i64, u32, u64, u64)>>,
}

impl Backlog {
    fn push(&mut self, stream_no: u32, from: u64, to: u64) {
        if from < to {
            self.streams.push(Reverse((i64::MIN, stream_no, from, to)));
        }
    }

    /// A stream taken and not finished, to be read on from `from`, whose next event
    /// was ingested at `at`.
    fn put_back(&mut self, at: i64, stream_no: u32, from: u64, to: u64) {
        self.streams.push(Reverse((at, stream_no, from, to)));
    }

    fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Sets the ingest time of the streams not read yet to `first_at(stream_no, from)`
    /// (left unread when that finds no event: the read reports it).
    fn learn(
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
    fn earliest(&self) -> Option<i64> {
        self.streams.peek().map(|Reverse((at, ..))| *at)
    }

    fn events(&self) -> u64 {
        self.streams
            .iter()
            .map(|Reverse((_, _, from, to))| to - from)
            .sum()
    }

    /// The stream to read next, and the ingest time to read it up to (exclusive).
    fn take(&mut self) -> Option<((i64, u32, u64, u64), i64)> {
        let Reverse(next) = self.streams.pop()?;
        let others = self
            .streams
            .peek()
            .map_or(i64::MAX, |Reverse((at, ..))| *at);
        Some((next, others.max(next.0).saturating_add(REBUILD_STEP_NS)))
    }
}

/// `ingested_at` of an event of a shard; `None` when the store does not hold it.
fn ingested_at(
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

/// `(stream_no, next_seq)` of every stream of a shard.
fn streams_of(keyspaces: &ShardKeyspaces) -> anyhow::Result<Vec<(u32, u64)>> {
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
fn reset_through(keyspaces: &ShardKeyspaces, through: u64) -> anyhow::Result<bool> {
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
fn last_feed_key(keyspaces: &ShardKeyspaces) -> anyhow::Result<u64> {
    keyspaces.last_feed_index()
}

impl Indexer {
    fn run(mut self, handle: &NodeIndex) {
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
    fn take_added(&mut self, handle: &NodeIndex) -> anyhow::Result<bool> {
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
    fn visible(&mut self) -> anyhow::Result<Visible> {
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
