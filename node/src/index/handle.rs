//! The index's handle, what the rest of the node uses: [`NodeIndex`] opens (or
//! rebuilds) the index and starts the indexer thread, adds shards, hands queries the
//! committed searcher and watermarks ([`Visible`]), reports each shard's progress
//! (`status`, ingest backpressure), and runs reindexes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tantivy::indexer::IndexWriterOptions;
use tantivy::{Index, IndexWriter, ReloadPolicy, TantivyDocument};

use super::backlog::{last_feed_key, streams_of};
use super::indexer::{Indexer, ShardIndexer};
use super::merge::{SegmentRanges, TimeMergePolicy};
use super::schema::{self, Fields, Terms};
use super::search::IndexView;
use crate::ledger::routing::ShardId;
use crate::query::cursor_key::load_or_create_secret;
use crate::storage::{NodeStore, ShardKeyspaces};

/// tantivy's indexing arena (its minimum is 15 MB).
const WRITER_MEMORY_BYTES: usize = 48 << 20;
/// Shards `add_shard` opened that the indexer thread has not taken up yet. It takes
/// them at the top of every loop (every 20-160 ms when idle), and a node holds at most
/// `config::SHARDS_MAX` (256) shards, so this bound is only met if the thread is gone.
const ADDED_SHARDS_QUEUED_MAX: usize = 256;
const TERM_KEY_FILE: &str = "term.key";
pub(super) const PAYLOAD_VERSION: u32 = 1;

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
    pub(super) shared: Arc<Shared>,
}

pub(super) struct Shared {
    pub(super) fields: Fields,
    pub(super) terms: Terms,
    pub(super) visible: RwLock<Arc<Visible>>,
    /// Every shard `add_shard` opened, taken up by the indexer or not yet.
    pub(super) progress: RwLock<BTreeMap<ShardId, Arc<IndexProgress>>>,
    /// Held through `add_shard`, so that a shard is opened once.
    pub(super) adding: Mutex<()>,
    /// Shards `add_shard` opened, for the indexer thread to take up at the top of its
    /// loop (at most `ADDED_SHARDS_QUEUED_MAX`).
    pub(super) added: Mutex<Vec<ShardIndexer>>,
    /// Per shard the last commit payload names that the indexer does not index (yet):
    /// the last feed key covered. Every commit carries these on, so that a shard added
    /// after a restart resumes where it was rather than being rebuilt.
    pub(super) resume_points: Mutex<BTreeMap<ShardId, u64>>,
    pub(super) stop: AtomicBool,
    /// Set when the indexer thread ends; every shard's [`IndexProgress`] holds it.
    pub(super) indexer_stopped: Arc<AtomicBool>,
    pub(super) reindex: AtomicBool,
    pub(super) thread: Mutex<Option<JoinHandle<()>>>,
}

/// The tantivy commit payload.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Payload {
    pub(super) version: u32,
    pub(super) format: u32,
    /// Per shard, the last feed key covered. A shard missing here is rebuilt.
    pub(super) shards: BTreeMap<ShardId, u64>,
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
        let mut indexer = Indexer::new(
            store,
            writer,
            fields,
            terms,
            reader,
            config.clone(),
            segment_ranges,
        );
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

    pub(super) fn publish(&self, visible: Visible) {
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
