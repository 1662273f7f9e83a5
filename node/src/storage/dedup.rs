//! The event-id index (`sN.dedup`), built behind the log.
//!
//! Apply must know whether a `(tenant, event_id)` was recorded before, for every
//! event. Writing each new id into an LSM memtable and searching the memtable for each
//! one would be the largest part of apply: a random key per event, ~28% of the node's
//! CPU at 64 x 20 (docs/bench/history/ack-latency.md, "Event ids behind the log").
//! Here apply only records an applied id in memory, in the shard's [`Overlay`]; the ids
//! reach fjall in sorted runs written straight to table files (fjall's bulk
//! ingestion), so the keyspace's memtable stays empty and a lookup is a hash probe in
//! memory plus the tables' bloom filters.
//!
//! **Exactly once, across crashes.** Every id apply has recorded is in the overlay or
//! in the keyspace; an id leaves the overlay only once its table is durable. The
//! overlay is made of generations: the first commit that fills one to
//! [`GENERATION_IDS`] ids (or one a minute old) seals it with the shard's *frontier*
//! (per stream, the seq the next event gets) and hands it to the node's ingest
//! thread, which waits until the journal holding the applies is durable (an id must
//! never be durable in the index while its event could still be lost), ingests the
//! sorted run, then records the frontier in `sm_meta`.
//! At open (after a crash too) the state machine puts the ids of every event at or
//! after the recorded frontier back in the overlay, from the events themselves
//! (`install.rs`, `rebuild_dedup_overlay`). An id ingested
//! but not yet covered by the recorded frontier is then in both, which is harmless: a
//! key has one value.
//!
//! **Its own database.** fjall's ingestion holds the database's journal lock while it
//! fsyncs the new table and the version files; in the node's database that would stop
//! every Raft append and apply on every shard for the length of several fsyncs. The
//! index lives in a second fjall database (`<data dir>/dedup`) that nothing else
//! writes to, with one worker thread, and a [`Watchdog`] of its own: fjall deletes the
//! tables a compaction replaced only when it next collects old versions, and nothing
//! else in this database would make it do so once ingest stops.

use std::collections::{HashMap, VecDeque};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use fjall::{Database, Keyspace, KeyspaceCreateOptions};

use super::watchdog::{self, Watchdog};
use super::Syncer;

/// Ids per generation. A generation is one ingested run: 65,536 workload ids are a
/// ~1.5 MiB table. Smaller generations mean more fsyncs and more compactions of the
/// keyspace's first level; larger ones more memory and a longer rebuild after a crash.
pub const GENERATION_IDS: usize = if cfg!(test) { 256 } else { 65_536 };
/// A generation is sealed this long after its first id even if not full: a shard with
/// little traffic neither keeps its ids in memory for long nor has many to read back
/// after a restart.
const GENERATION_AGE_MAX: Duration = Duration::from_secs(60);
/// Sealed generations a shard may hold while the ingest thread catches up; apply waits
/// beyond this. With the open one, a shard's overlay holds at most
/// `(1 + SEALED_MAX) * GENERATION_IDS` ids (~70 bytes each: ~14 MiB).
const SEALED_MAX: usize = 2;
/// Generations waiting for the ingest thread, all shards.
const INGEST_QUEUE_MAX: usize = 1_024;
/// The dedup database's block cache: the bloom filter and index partitions the lookups
/// read (~1.3 bytes per id at fjall's 10 bits per key: 32 MiB holds those of ~25 M ids).
pub const CACHE_BYTES: u64 = 32 << 20;
/// The watchdog rotates a dedup keyspace's memtable at this size. Ingestion bypasses
/// the memtable: nothing writes to it today.
const MEMTABLE_BYTES_MAX: u64 = 8 << 20;

/// A dedup key (`storage::dedup_key`) and its value (`storage::position_value`).
pub type Position = [u8; 12];
type Ids = HashMap<Box<[u8]>, Position, foldhash::fast::RandomState>;

/// Per stream, the seq its next event gets: what a generation covers.
pub type Frontier = Vec<(u32, u64)>;

/// One shard's event-id index: the keyspace and the ids not yet in it.
///
/// **Never cleared.** A state that replaces the whole index (a snapshot install, a
/// rebuild at open) is loaded into a *fresh* keyspace (`sN.dedup.<generation>`) whose
/// name the final batch of the replacement records in `sm_meta`
/// ([`KEY_DEDUP_KEYSPACE`]); the old keyspace is deleted afterwards, and at open any
/// keyspace of the shard other than the recorded one is a leftover of an interrupted
/// replacement and deleted. `Keyspace::clear()` is not used here: fjall journals the
/// clear, ingested tables are not journaled, and fjall as published replays the clear
/// at every open over the tables ingested after it (vendor/fjall/PATCHES.md, patch 6,
/// fixes that; this index does not depend on the patch).
pub struct DedupIndex {
    /// The dedup database (snapshots of the keyspace are taken on it).
    pub(super) db: Database,
    /// The keyspace the ids are in; replaced whole by [`DedupIndex::replace_keyspace`].
    keyspace: RwLock<Keyspace>,
    /// The shard's `sm_meta` (node database), where the recorded frontier is.
    sm_meta: Keyspace,
    /// Rotates the keyspace's memtable (and forgets a replaced one).
    watchdog: Watchdog,
    overlay: Mutex<Overlay>,
    /// Signalled when a sealed generation was ingested (apply may wait for it).
    ingested: Condvar,
    /// Held by the ingest thread while it ingests one of this shard's generations and
    /// records its frontier, and by a snapshot install while it replaces the keyspace.
    ingesting: Mutex<()>,
    writer: IngestQueue,
}

#[derive(Default)]
struct Overlay {
    /// Ids applied since the last seal.
    open: Arc<Ids>,
    /// When the open generation got its first id.
    open_since: Option<Instant>,
    /// [`GENERATION_AGE_MAX`] unless a test set another.
    age_max: Option<Duration>,
    /// Sealed generations, oldest first, each waiting for (or in) its ingestion.
    sealed: VecDeque<Arc<Ids>>,
    /// Changes when the whole state is replaced (a snapshot install): a generation
    /// sealed before must not be ingested after.
    epoch: u64,
}

/// Where a generation's run goes and what to record once it is durable.
struct IngestJob {
    index: Arc<DedupIndex>,
    epoch: u64,
    ids: Arc<Ids>,
    frontier: Frontier,
}

/// The dedup ids a snapshot must carry besides the keyspace: those of the overlay.
pub struct OverlayView {
    generations: Vec<Arc<Ids>>,
}

impl OverlayView {
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], &Position)> + '_ {
        self.generations
            .iter()
            .flat_map(|ids| ids.iter().map(|(key, position)| (&key[..], position)))
    }
}

impl DedupIndex {
    fn overlay(&self) -> MutexGuard<'_, Overlay> {
        self.overlay.lock().expect("dedup overlay lock")
    }

    /// The keyspace the ingested ids are in now (a handle: cheap).
    pub(super) fn keyspace(&self) -> Keyspace {
        self.keyspace.read().expect("dedup keyspace lock").clone()
    }

    /// The position of an id in the keyspace alone (not the overlay).
    pub(super) fn get_ingested(&self, key: &[u8]) -> Result<Option<Position>, fjall::Error> {
        let keyspace = self.keyspace.read().expect("dedup keyspace lock");
        Ok(keyspace.get(key)?.map(|value| {
            value
                .as_ref()
                .try_into()
                .expect("dedup values are 12 bytes")
        }))
    }

    /// The position of a recorded id: in the overlay, or in the keyspace.
    pub(super) fn get(&self, key: &[u8]) -> Result<Option<Position>, fjall::Error> {
        {
            let overlay = self.overlay();
            let found = std::iter::once(&overlay.open)
                .chain(overlay.sealed.iter().rev())
                .find_map(|ids| ids.get(key));
            if let Some(position) = found {
                return Ok(Some(*position));
            }
        }
        self.get_ingested(key)
    }

    /// Records the ids of an apply batch that is committed to the journal. When the
    /// open generation is full (or [`GENERATION_AGE_MAX`] old) it is sealed with
    /// `frontier()` and queued for ingestion; a full one waits while the shard already
    /// has [`SEALED_MAX`] generations waiting.
    pub fn record(
        self: &Arc<Self>,
        ids: Vec<(Vec<u8>, Position)>,
        frontier: impl FnOnce() -> Frontier,
    ) {
        let mut overlay = self.overlay();
        if !ids.is_empty() {
            if overlay.open.is_empty() {
                overlay.open_since = Some(Instant::now());
            }
            Arc::make_mut(&mut overlay.open).extend(
                ids.into_iter()
                    .map(|(key, position)| (key.into_boxed_slice(), position)),
            );
        }
        let full = overlay.open.len() >= GENERATION_IDS;
        let age_max = overlay.age_max.unwrap_or(GENERATION_AGE_MAX);
        let aged = overlay
            .open_since
            .is_some_and(|since| since.elapsed() >= age_max)
            && overlay.sealed.len() < SEALED_MAX;
        if !full && !aged {
            return;
        }
        while overlay.sealed.len() >= SEALED_MAX {
            overlay = self.ingested.wait(overlay).expect("dedup overlay lock");
        }
        self.seal(overlay, frontier());
    }

    /// Seals whatever the open generation holds (at `frontier`) and queues it, without
    /// waiting: used after a rebuild, so a restart does not keep the ids in memory.
    pub fn seal_open(self: &Arc<Self>, frontier: Frontier) {
        let overlay = self.overlay();
        self.seal(overlay, frontier);
    }

    fn seal(self: &Arc<Self>, mut overlay: MutexGuard<'_, Overlay>, frontier: Frontier) {
        overlay.open_since = None;
        let ids = std::mem::take(&mut overlay.open);
        if ids.is_empty() {
            return;
        }
        overlay.sealed.push_back(ids.clone());
        let job = IngestJob {
            index: self.clone(),
            epoch: overlay.epoch,
            ids,
            frontier,
        };
        drop(overlay);
        self.writer.send(job);
    }

    /// Seals generations this long after their first id (tests).
    #[cfg(test)]
    pub fn set_generation_age_max(&self, age_max: Duration) {
        self.overlay().age_max = Some(age_max);
    }

    /// The overlay's ids as they are now (cheap: the generations are shared).
    pub fn overlay_view(&self) -> OverlayView {
        let overlay = self.overlay();
        OverlayView {
            generations: std::iter::once(overlay.open.clone())
                .chain(overlay.sealed.iter().cloned())
                .collect(),
        }
    }

    /// Ids in the overlay (metrics, tests).
    pub fn overlay_len(&self) -> usize {
        let overlay = self.overlay();
        overlay.open.len() + overlay.sealed.iter().map(|ids| ids.len()).sum::<usize>()
    }

    /// Forgets the overlay and waits for an ingestion in progress: the caller is about
    /// to replace the keyspace's contents (a fresh keyspace from
    /// [`DedupIndex::fresh_keyspace`], then [`DedupIndex::replace_keyspace`]), and holds
    /// the returned guard until it has (no ingestion of the replaced state may land in
    /// the new keyspace).
    pub fn begin_replace(&self) -> MutexGuard<'_, ()> {
        {
            let mut overlay = self.overlay();
            overlay.epoch += 1;
            overlay.open = Arc::default();
            overlay.open_since = None;
            overlay.sealed.clear();
        }
        self.ingested.notify_all();
        self.ingesting.lock().expect("dedup ingesting lock")
    }

    /// A new, empty keyspace for this shard's ids, named after the current one's
    /// generation plus one. One left by an interrupted replacement under that name is
    /// deleted first (it may hold part of a load).
    pub(super) fn fresh_keyspace(&self) -> fjall::Result<Keyspace> {
        let current = self.keyspace();
        let (shard_prefix, generation) = split_keyspace_name(&current.name()[..])
            .expect("a dedup keyspace name is sN.dedup[.generation]");
        let name = format!("{shard_prefix}.{}", generation + 1);
        if self.db.keyspace_exists(&name) {
            let leftover = self.db.keyspace(&name, dedup_keyspace_options)?;
            self.db.delete_keyspace(leftover)?;
        }
        self.db.keyspace(&name, dedup_keyspace_options)
    }

    /// Makes `fresh` the index's keyspace and deletes the one it replaces. The caller
    /// has durably recorded `fresh`'s name ([`KEY_DEDUP_KEYSPACE`]) and holds the guard
    /// of [`DedupIndex::begin_replace`].
    pub(super) fn replace_keyspace(&self, fresh: Keyspace) -> fjall::Result<()> {
        self.watchdog.watch(fresh.clone(), MEMTABLE_BYTES_MAX);
        let old = std::mem::replace(
            &mut *self.keyspace.write().expect("dedup keyspace lock"),
            fresh,
        );
        self.watchdog.unwatch(&old);
        // fjall removes the directory once the last handle is dropped: the snapshot
        // being built from the old keyspace, if any, keeps it until it is done.
        self.db.delete_keyspace(old)
    }

    /// A bulk load of ids into `keyspace` outside the ingest thread (the move of an
    /// earlier layout at open into the current keyspace, a snapshot install or a
    /// rebuild into a fresh one).
    pub(super) fn bulk_load(keyspace: Keyspace) -> BulkLoad {
        BulkLoad {
            keyspace,
            run: Vec::new(),
            loaded: 0,
        }
    }

    /// Waits until the overlay holds no sealed generation (tests).
    pub fn wait_ingested(&self) {
        let mut overlay = self.overlay();
        while !overlay.sealed.is_empty() {
            overlay = self.ingested.wait(overlay).expect("dedup overlay lock");
        }
    }
}

/// Ids loaded in bulk: keys of any earlier layout (text ids are packed), in any order,
/// ingested in sorted runs of up to `4 * GENERATION_IDS`.
pub struct BulkLoad {
    keyspace: Keyspace,
    run: Vec<(Box<[u8]>, Position)>,
    /// Ids added so far.
    pub loaded: u64,
}

impl BulkLoad {
    pub(super) fn add(&mut self, key: &[u8], value: &[u8]) -> fjall::Result<()> {
        let position = value.try_into().map_err(|_| {
            fjall::Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a dedup value is not 12 bytes",
            ))
        })?;
        let key = super::repacked_dedup_key(key).unwrap_or_else(|| key.to_vec());
        self.run.push((key.into_boxed_slice(), position));
        self.loaded += 1;
        if self.run.len() == 4 * GENERATION_IDS {
            self.ingest()?;
        }
        Ok(())
    }

    /// Ingests what is left; the ids are durable when this returns.
    pub(super) fn finish(mut self) -> fjall::Result<()> {
        self.ingest()
    }

    fn ingest(&mut self) -> fjall::Result<()> {
        self.run.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.run.dedup_by(|a, b| a.0 == b.0);
        for run in self.run.chunks(GENERATION_IDS) {
            let run = run.iter().map(|(key, value)| (&key[..], value));
            ingest_sorted(&self.keyspace, run)?;
        }
        self.run.clear();
        Ok(())
    }
}

/// The node's event-id database and its ingest thread.
#[derive(Clone)]
pub struct DedupStore {
    pub(super) db: Database,
    queue: IngestQueue,
    watchdog: Watchdog,
}

#[derive(Clone)]
struct IngestQueue {
    sender: mpsc::SyncSender<IngestJob>,
}

impl IngestQueue {
    fn send(&self, job: IngestJob) {
        if self.sender.send(job).is_err() {
            tracing::error!("the dedup ingest thread is gone; stopping the node");
            std::process::exit(74);
        }
    }
}

impl DedupStore {
    /// Opens (or creates) the database at `path` and starts the ingest thread, which
    /// waits on `syncer` for the node's journal before each ingestion, and the
    /// database's watchdog, which has replaced tables deleted within `gc_interval` of
    /// a compaction ([`watchdog::GC_INTERVAL`] on a node).
    pub fn open(
        path: &std::path::Path,
        syncer: Syncer,
        gc_interval: Duration,
    ) -> anyhow::Result<DedupStore> {
        let db = Database::builder(path)
            .cache_size(CACHE_BYTES)
            .worker_threads(1)
            .open();
        let db = super::opened(path, db)?;
        let watchdog = Watchdog::start(
            &db,
            watchdog::Bounds {
                // A few markers and a snapshot install's clears: nothing to bound.
                journal_bytes: u64::MAX,
                gc_interval,
            },
        );
        let (sender, receiver) = mpsc::sync_channel::<IngestJob>(INGEST_QUEUE_MAX);
        std::thread::Builder::new()
            .name("trail-dedup".into())
            .spawn(move || run_ingest(receiver, syncer))?;
        Ok(DedupStore {
            db,
            queue: IngestQueue { sender },
            watchdog,
        })
    }

    /// The index of shard `shard` with an empty overlay, in the keyspace its `sm_meta`
    /// names ([`KEY_DEDUP_KEYSPACE`]; `sN.dedup` when it names none); the frontier is
    /// recorded in the same `sm_meta`. The shard's other dedup keyspaces are leftovers
    /// of an interrupted replacement (or the replaced one of a crash just after it was
    /// recorded) and are deleted.
    pub(super) fn shard(&self, shard: u32, sm_meta: Keyspace) -> anyhow::Result<Arc<DedupIndex>> {
        let prefix = format!("s{shard}.dedup");
        let name = match sm_meta.get(KEY_DEDUP_KEYSPACE)? {
            Some(name) => String::from_utf8(name.to_vec())
                .ok()
                .filter(|name| {
                    split_keyspace_name(name)
                        .is_some_and(|(shard_prefix, _)| shard_prefix == prefix)
                })
                .ok_or_else(|| {
                    anyhow::anyhow!("shard {shard}: bad dedup keyspace name in sm_meta")
                })?,
            None => prefix.clone(),
        };
        for other in self.db.list_keyspace_names() {
            let other: &str = &other[..];
            let leftover = other != name
                && split_keyspace_name(other)
                    .is_some_and(|(shard_prefix, _)| shard_prefix == prefix);
            if leftover {
                tracing::info!(keyspace = other, "deleting a replaced dedup keyspace");
                let handle = self.db.keyspace(other, dedup_keyspace_options)?;
                self.db.delete_keyspace(handle)?;
            }
        }
        let keyspace = self.db.keyspace(&name, dedup_keyspace_options)?;
        self.watchdog.watch(keyspace.clone(), MEMTABLE_BYTES_MAX);
        Ok(Arc::new(DedupIndex {
            db: self.db.clone(),
            keyspace: RwLock::new(keyspace),
            sm_meta,
            watchdog: self.watchdog.clone(),
            overlay: Mutex::default(),
            ingested: Condvar::new(),
            ingesting: Mutex::new(()),
            writer: self.queue.clone(),
        }))
    }
}

/// Where the ingest thread records a shard's frontier once a generation is durable:
/// in the shard's `sm_meta` (`install.rs` reads it at open).
pub const KEY_FRONTIER: &[u8] = b"dedup_frontier";
/// The name of the shard's current dedup keyspace, in its `sm_meta`: recorded by the
/// batch that finishes replacing the index (absent: `sN.dedup`).
pub const KEY_DEDUP_KEYSPACE: &[u8] = b"dedup_keyspace";

/// `sN.dedup` (generation 0) or `sN.dedup.<generation>`: the shard's prefix and the
/// generation.
fn split_keyspace_name(name: &str) -> Option<(&str, u64)> {
    let dedup_end = name.find(".dedup")? + ".dedup".len();
    let (prefix, rest) = name.split_at(dedup_end);
    let shard = prefix.strip_prefix('s')?.strip_suffix(".dedup")?;
    if shard.is_empty() || !shard.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    match rest {
        "" => Some((prefix, 0)),
        _ => {
            let generation = rest.strip_prefix('.')?;
            if generation.is_empty() || !generation.bytes().all(|byte| byte.is_ascii_digit()) {
                return None;
            }
            Some((prefix, generation.parse().ok()?))
        }
    }
}

fn dedup_keyspace_options() -> KeyspaceCreateOptions {
    use fjall::config::{CompressionPolicy, PartitioningPolicy};
    KeyspaceCreateOptions::default()
        .data_block_compression_policy(CompressionPolicy::all(fjall::CompressionType::Lz4))
        // Nearly every lookup is of a new id, answered by the bloom filters
        // alone. Whole-table filters are MiBs on the deeper levels (a 64 MiB
        // table of ids has a ~2.7 MiB one) and fjall pins none of an ingested
        // table's: each lookup read and checksummed them from disk (11k
        // events/s at 6 M). Partitioned, a lookup reads one small block per
        // table, which stays in the cache.
        .filter_block_partitioning_policy(PartitioningPolicy::all(true))
        .index_block_partitioning_policy(PartitioningPolicy::all(true))
}

/// The recorded frontier: `None` when the shard has none yet.
pub fn decode_frontier(bytes: &[u8]) -> Option<Frontier> {
    bincode::deserialize(bytes).ok()
}

pub fn encode_frontier(frontier: &Frontier) -> Vec<u8> {
    bincode::serialize(frontier).expect("frontier serializes")
}

fn run_ingest(receiver: mpsc::Receiver<IngestJob>, syncer: Syncer) {
    while let Ok(job) = receiver.recv() {
        let index = job.index.clone();
        let _ingesting = index.ingesting.lock().expect("dedup ingesting lock");
        if index.overlay().epoch != job.epoch {
            continue;
        }
        // The applies that recorded these ids are in the journal; wait until it is
        // on disk, so no id is durable here while its event could still be lost.
        if !syncer.wait() {
            return;
        }
        let started = std::time::Instant::now();
        if let Err(error) = ingest(&index, &job) {
            tracing::error!(%error, "ingesting event ids failed; stopping the node");
            std::process::exit(74);
        }
        tracing::debug!(
            keyspace = %index.keyspace().name(),
            ids = job.ids.len(),
            ms = started.elapsed().as_millis() as u64,
            "event ids ingested"
        );
        let mut overlay = index.overlay();
        if overlay.epoch == job.epoch {
            let front = overlay.sealed.pop_front();
            debug_assert!(
                front.is_some_and(|front| Arc::ptr_eq(&front, &job.ids)),
                "generations are ingested in the order they were sealed"
            );
        }
        drop(overlay);
        index.ingested.notify_all();
    }
}

fn ingest(index: &DedupIndex, job: &IngestJob) -> anyhow::Result<()> {
    let mut run: Vec<(&[u8], &Position)> = job
        .ids
        .iter()
        .map(|(key, position)| (&key[..], position))
        .collect();
    run.sort_unstable_by(|a, b| a.0.cmp(b.0));
    ingest_sorted(&index.keyspace(), run)?;
    index
        .sm_meta
        .insert(KEY_FRONTIER, encode_frontier(&job.frontier))?;
    Ok(())
}

/// Writes `run`, in ascending key order, as new tables of `keyspace` (durable when this
/// returns).
fn ingest_sorted<'a>(
    keyspace: &Keyspace,
    run: impl IntoIterator<Item = (&'a [u8], &'a Position)>,
) -> fjall::Result<()> {
    let mut ingestion = keyspace.start_ingestion()?;
    for (key, position) in run {
        ingestion.write(key, &position[..])?;
    }
    ingestion.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// fjall journals a clear but not an ingestion, and replayed the clear at every
    /// open over the tables ingested after it (vendor/fjall/PATCHES.md, patch 6). Clear,
    /// then three keys written by ingestion, reopen: the three keys are there (0 without
    /// the patch), and a key cleared before is gone. The same with inserts flushed to a
    /// table (which kept its keys without the patch too) guards the patch's rule.
    #[test]
    fn fjall_keeps_tables_written_after_a_clear_across_reopens() {
        #[derive(Clone, Copy, Debug)]
        enum Write {
            Ingest,
            InsertAndFlush,
        }
        let reopened = |write: Write, clear_first: bool| {
            let dir = tempfile::tempdir().unwrap();
            {
                let db = Database::builder(dir.path()).open().unwrap();
                let keyspace = db.keyspace("ids", KeyspaceCreateOptions::default).unwrap();
                keyspace.insert("old", "x").unwrap();
                keyspace.rotate_memtable_and_wait().unwrap();
                if clear_first {
                    keyspace.clear().unwrap();
                }
                let position = [0u8; 12];
                match write {
                    Write::Ingest => {
                        let run = [&b"a"[..], b"b", b"c"].map(|key| (key, &position));
                        ingest_sorted(&keyspace, run).unwrap();
                    }
                    Write::InsertAndFlush => {
                        for key in ["a", "b", "c"] {
                            keyspace.insert(key, &position[..]).unwrap();
                        }
                        keyspace.rotate_memtable_and_wait().unwrap();
                    }
                }
                db.persist(fjall::PersistMode::SyncAll).unwrap();
            }
            let db = Database::builder(dir.path()).open().unwrap();
            let keyspace = db.keyspace("ids", KeyspaceCreateOptions::default).unwrap();
            let keys: Vec<Vec<u8>> = keyspace
                .iter()
                .map(|guard| guard.into_inner().unwrap().0.to_vec())
                .collect();
            keys
        };
        for write in [Write::Ingest, Write::InsertAndFlush] {
            let abc: Vec<Vec<u8>> = [b"a", b"b", b"c"].map(|key| key.to_vec()).into();
            assert_eq!(reopened(write, true), abc, "{write:?} after a clear");
            let mut all = abc.clone();
            all.push(b"old".to_vec());
            assert_eq!(reopened(write, false), all, "{write:?} without a clear");
        }
    }

    #[test]
    fn dedup_keyspace_names_carry_the_shard_and_a_generation() {
        assert_eq!(split_keyspace_name("s12.dedup"), Some(("s12.dedup", 0)));
        assert_eq!(split_keyspace_name("s12.dedup.7"), Some(("s12.dedup", 7)));
        for bad in [
            "s12.dedupx",
            "s.dedup",
            "s1.dedup.",
            "s1.dedup.x",
            "x1.dedup",
            "s1.events",
        ] {
            assert_eq!(split_keyspace_name(bad), None, "{bad}");
        }
    }

    /// Tables a compaction of the index replaced are deleted although no ingestion
    /// follows it (fjall deletes them only when it next collects old versions).
    #[test]
    fn tables_replaced_by_a_compaction_are_deleted_once_ingest_stops() {
        let dir = tempfile::tempdir().unwrap();
        let node_db = Database::builder(dir.path().join("db"))
            .manual_journal_persist(true)
            .open()
            .unwrap();
        let syncer = Syncer::start(node_db.clone(), &dir.path().join("db"));
        let sm_meta = node_db
            .keyspace("s1.sm_meta", KeyspaceCreateOptions::default)
            .unwrap();
        let store = DedupStore::open(
            &dir.path().join("dedup"),
            syncer,
            Duration::from_millis(100),
        )
        .unwrap();
        let index = store.shard(1, sm_meta).unwrap();
        // Four generations (each fills and seals itself), four tables.
        for generation in 0..4u32 {
            let ids = (0..GENERATION_IDS as u32)
                .map(|n| {
                    let mut key = 1u32.to_be_bytes().to_vec();
                    key.extend_from_slice(&(n * 4 + generation).to_be_bytes());
                    key.extend_from_slice(&[7; 12]);
                    (key, [generation as u8; 12])
                })
                .collect();
            index.record(ids, || vec![(1, 1)]);
        }
        index.wait_ingested();
        let tables = || {
            std::fs::read_dir(index.keyspace().path().join("tables"))
                .unwrap()
                .count()
        };
        // Without the watchdog the four replaced tables stay beside the compacted one
        // (checked: the loop below then times out).
        index.keyspace().major_compact().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while tables() > 1 {
            assert!(
                Instant::now() < deadline,
                "{} tables on disk, 1 live",
                tables()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            index.keyspace().len().unwrap(),
            4 * GENERATION_IDS,
            "every id is still there"
        );
    }
}
