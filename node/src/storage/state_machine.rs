//! The state machine of one shard on fjall (`RaftStateMachine`): executes the ledger's
//! writes and keeps snapshots.
//!
//! Apply writes the events, the changed tenant states and the applied log id in one
//! atomic fjall batch, then records the new event ids in the shard's dedup overlay
//! (they reach the dedup database behind the log: `dedup.rs`). No fsync of its own: the entries it applies
//! are already durable in the Raft log (same journal), and after a crash openraft
//! re-applies from the persisted applied id. Apply runs on the blocking pool: a batch of
//! 1,000 events is a few milliseconds of CPU, too long for an async worker.

use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fjall::{Database, Keyspace, PersistMode, Readable};
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder};
use sha2::{Digest, Sha256};

use super::applied::AppliedProgress;
use super::dedup::{DedupIndex, KEY_DEDUP_KEYSPACE, KEY_FRONTIER};
use super::event_codec::Encoder;
use super::log_store::storage_io_error;
use super::publish::Publisher;
use super::snapshot_name::{check_install, SnapshotName, SnapshotStamp};
use super::{
    chain_key, decode_position, dedup_key, event_key, position_value, FeedRuns, ShardKeyspaces,
    CHAIN_BLOCK, CHAIN_BLOCK_END, CHAIN_CHECKPOINT, CHAIN_SUBTREES,
};
use crate::consensus::{
    Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use crate::ledger::event::StoredEvent;
use crate::ledger::{
    leaf_hash, BlockRecord, Ledger, LedgerLookup, LedgerResponse, LedgerWrite, NoteVerifier,
    RecordedLeaf, TenantState,
};

const KEY_APPLIED: &[u8] = b"applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";
const KEY_SNAPSHOT: &[u8] = b"snapshot";
/// Present while a received snapshot replaces the state (see `Inner::install`).
const KEY_INSTALLING: &[u8] = b"installing";
/// The layout of the event-id index: absent in a shard of a node that kept every event
/// id as text in the node database, 2 once they were packed (`storage::dedup_key`),
/// [`DEDUP_KEYS_BEHIND_LOG`] once they are in the dedup database (`dedup.rs`).
const KEY_DEDUP_KEYS: &[u8] = b"dedup_keys";
const DEDUP_KEYS_BEHIND_LOG: u32 = 3;

/// Writes per fjall batch during apply (~3 per event): bounds the memory of one batch
/// when openraft hands over many entries at once.
const APPLY_WRITES_MAX: usize = 60_000;
/// Capacity of the write buffer kept from one apply to the next (168 bytes each, so
/// ~1.3 MiB per shard at most). A buffer allocated per apply came from fresh pages
/// each time (the allocator returns large blocks to the system between applies):
/// zeroing them and growing the vector was ~2.5% of the node's CPU at 64 x 20, all on
/// the apply thread (docs/bench/history/ack-latency.md, "Ack latency at 64 in flight:
/// the p99 is the CPU queue").
const APPLY_WRITES_KEPT_MAX: usize = 8_192;
/// Records per fjall batch while installing a snapshot.
const INSTALL_BATCH_RECORDS_MAX: usize = 10_000;
/// Events whose ids the check at open looks up in the dedup index
/// (`Inner::check_dedup_index`): a few per stream, over at most this many.
const DEDUP_PROBES_MAX: usize = 64;

const SNAPSHOT_MAGIC: &[u8; 8] = b"TRAILSNP";
const SNAPSHOT_VERSION: u32 = 2;
const TAG_EVENTS: u8 = 1;
const TAG_DEDUP: u8 = 2;
const TAG_TENANTS: u8 = 3;
const TAG_CHAIN: u8 = 4;
/// The snapshot of a single-replica group: its metadata only, no records (see
/// [`write_snapshot_file`]). Never installed.
const TAG_NO_RECORDS: u8 = 0xFE;
const TAG_END: u8 = 0xFF;

/// Counters readers can see without taking the state machine's lock.
#[derive(Debug, Default)]
pub struct ShardCounters {
    pub events_total: AtomicU64,
    pub tenants: AtomicU64,
    pub last_applied_index: AtomicU64,
    /// Event ids put back into the dedup index at open because a probe found the
    /// index missing ids it must hold (0: the index was whole). `status` shows it.
    pub dedup_rebuilt_ids: AtomicU64,
    /// Committed entries apply refused (`ledger::recheck`): forged or corrupt; nothing
    /// of them was applied. Exported in `/metrics`.
    pub entries_refused: AtomicU64,
}

#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Mutex<Inner>>,
    pub counters: Arc<ShardCounters>,
    /// The applied index once it is in the journal: the log store purges no further,
    /// and linearizable reads wait on it.
    pub applied: Arc<AppliedProgress>,
}

struct Inner {
    db: Database,
    keyspaces: ShardKeyspaces,
    ledger: Ledger,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    counters: Arc<ShardCounters>,
    applied: Arc<AppliedProgress>,
    snapshots_built: u64,
    /// Publishes recorded checkpoints outside the store.
    publisher: Option<Publisher>,
    /// The cluster, group and epoch this replica's snapshots carry and installs check.
    stamp: SnapshotStamp,
    /// Compresses event values under the shard's newest dictionary (`event_codec.rs`).
    encoder: Encoder,
    /// The writes of the apply in progress; empty between applies, its capacity kept
    /// (up to [`APPLY_WRITES_KEPT_MAX`]).
    writes: Vec<LedgerWrite>,
    /// The checkpoint key apply checks notes' signatures with (`None`: not checked).
    note_verifier: Option<Arc<NoteVerifier>>,
}

impl StateMachine {
    /// Opens a single node's replica (cluster `trail`, epoch 0).
    pub fn open(
        db: Database,
        keyspaces: &ShardKeyspaces,
        publisher: Option<Publisher>,
    ) -> Result<StateMachine, StorageError> {
        let stamp = SnapshotStamp {
            cluster: "trail".to_string(),
            shard: keyspaces.shard,
            epoch: 0,
        };
        Self::open_stamped(db, keyspaces, publisher, stamp)
    }

    /// Opens a replica whose snapshots carry `stamp` (and which refuses to install one
    /// of another cluster or group, or an earlier epoch: `storage::snapshot_name`).
    pub fn open_stamped(
        db: Database,
        keyspaces: &ShardKeyspaces,
        publisher: Option<Publisher>,
        stamp: SnapshotStamp,
    ) -> Result<StateMachine, StorageError> {
        assert_eq!(stamp.shard, keyspaces.shard, "a stamp names its own shard");
        std::fs::create_dir_all(keyspaces.snapshot_dir.as_ref()).map_err(write_snapshot)?;
        let last_applied: Option<LogId> = read_meta(&keyspaces.sm_meta, KEY_APPLIED)?.flatten();
        let last_membership: StoredMembership =
            read_meta(&keyspaces.sm_meta, KEY_MEMBERSHIP)?.unwrap_or_default();
        let ledger = load_ledger(&keyspaces.tenants)?;
        let counters = Arc::new(ShardCounters::default());
        let applied = Arc::new(AppliedProgress::new(
            last_applied.map(|log_id| log_id.index),
        ));
        let mut inner = Inner {
            db,
            keyspaces: keyspaces.clone(),
            ledger,
            last_applied,
            last_membership,
            counters: counters.clone(),
            applied: applied.clone(),
            snapshots_built: 0,
            publisher,
            stamp,
            encoder: Encoder::default(),
            writes: Vec::new(),
            note_verifier: None,
        };
        inner.finish_interrupted_install()?;
        inner.move_dedup_index()?;
        inner.check_dedup_index()?;
        inner.rebuild_dedup_overlay()?;
        inner.remove_stale_snapshot_files()?;
        inner.publish_missing_checkpoints();
        inner.publish_counters();
        Ok(StateMachine {
            inner: Arc::new(Mutex::new(inner)),
            counters,
            applied,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("state machine lock")
    }

    /// From now on, apply refuses a checkpoint entry whose notes are not signed with
    /// this key (the node's; in a cluster the key every node shares).
    pub fn check_notes_with(&self, verifier: NoteVerifier) {
        self.lock().note_verifier = Some(Arc::new(verifier));
    }

    /// The applied id and the current snapshot's last log id, as stored.
    pub fn applied_and_snapshot(&self) -> Result<(Option<LogId>, Option<LogId>), StorageError> {
        let inner = self.lock();
        let snapshot = inner.current_snapshot_meta()?;
        Ok((
            inner.last_applied,
            snapshot.and_then(|meta| meta.last_log_id),
        ))
    }
}

impl Inner {
    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<Vec<LedgerResponse>, StorageError> {
        let mut responses = Vec::with_capacity(entries.len());
        let mut writes = std::mem::take(&mut self.writes);
        debug_assert!(writes.is_empty(), "every apply commits all its writes");
        for entry in entries {
            let log_id = entry.log_id;
            if let Some(applied) = self.last_applied {
                assert!(
                    log_id.index > applied.index,
                    "entries apply in log order, once"
                );
            }
            match entry.payload {
                EntryPayload::Blank => responses.push(LedgerResponse::default()),
                EntryPayload::Normal(command) => {
                    let lookup = Lookup {
                        events: &self.keyspaces.events,
                        codec: &self.keyspaces.codec,
                        dedup: &self.keyspaces.dedup,
                        chain: &self.keyspaces.chain,
                        note_verifier: self.note_verifier.as_deref(),
                    };
                    let response =
                        self.ledger
                            .apply(&lookup, &command, &mut writes)
                            .map_err(|error| {
                                storage_io_error(
                                    ErrorSubject::Apply(log_id),
                                    ErrorVerb::Read,
                                    &error,
                                )
                            })?;
                    if let Some(reason) = &response.refused {
                        self.counters
                            .entries_refused
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            shard = self.keyspaces.shard,
                            index = log_id.index,
                            reason = reason.as_str(),
                            "committed entry refused at apply; nothing of it applied"
                        );
                    }
                    responses.push(response);
                }
                EntryPayload::Membership(membership) => {
                    self.last_membership = StoredMembership::new(Some(log_id), membership);
                    responses.push(LedgerResponse::default());
                }
            }
            self.last_applied = Some(log_id);
            if writes.len() >= APPLY_WRITES_MAX {
                self.commit(&mut writes)?;
            }
        }
        self.commit(&mut writes)?;
        writes.shrink_to(APPLY_WRITES_KEPT_MAX);
        self.writes = writes;
        Ok(responses)
    }

    /// Commits the pending writes with the applied id and membership, atomically.
    fn commit(&mut self, writes: &mut Vec<LedgerWrite>) -> Result<(), StorageError> {
        self.ledger.seal_batch(writes);
        if let Err(error) = self.encoder.refresh(&self.keyspaces.codec) {
            // Values are then stored as they are, which is always readable.
            tracing::warn!(shard = self.keyspaces.shard, %error, "event compression is off");
        }
        let keyspaces = &self.keyspaces;
        let mut batch = self.db.batch();
        let mut published = Vec::new();
        let mut feed = FeedRuns::default();
        let mut recent = Vec::new();
        let mut ids = Vec::new();
        for write in writes.drain(..) {
            match write {
                LedgerWrite::Event {
                    stream_no,
                    seq,
                    canonical,
                } => {
                    feed.add(stream_no, seq);
                    let compressed = self.encoder.encode(&canonical);
                    let value = compressed.as_deref().unwrap_or(&canonical);
                    batch.insert(&keyspaces.events, event_key(stream_no, seq), value);
                    recent.push((stream_no, seq, canonical));
                }
                // Behind the log: recorded in the overlay once the batch is committed.
                LedgerWrite::Dedup {
                    tenant_no,
                    event_id,
                    stream_no,
                    seq,
                } => ids.push((
                    dedup_key(tenant_no, &event_id),
                    position_value(stream_no, seq),
                )),
                LedgerWrite::Tenant { tenant_id, state } => {
                    batch.insert(&keyspaces.tenants, tenant_id.into_bytes(), state.encode())
                }
                LedgerWrite::Block {
                    stream_no,
                    block_index,
                    last_seq,
                    record,
                    subtree_roots,
                } => {
                    batch.insert(
                        &keyspaces.chain,
                        chain_key(CHAIN_BLOCK, stream_no, block_index),
                        record.encode(),
                    );
                    if !subtree_roots.is_empty() {
                        batch.insert(
                            &keyspaces.chain,
                            chain_key(CHAIN_SUBTREES, stream_no, block_index),
                            subtree_roots.concat(),
                        );
                    }
                    batch.insert(
                        &keyspaces.chain,
                        chain_key(CHAIN_BLOCK_END, stream_no, last_seq),
                        block_index.to_be_bytes(),
                    );
                }
                LedgerWrite::Checkpoint {
                    stream_no,
                    tree_size,
                    tenant_id,
                    stream_index,
                    note,
                } => {
                    batch.insert(
                        &keyspaces.chain,
                        chain_key(CHAIN_CHECKPOINT, stream_no, tree_size),
                        note.as_bytes(),
                    );
                    published.push((tenant_id, stream_index, tree_size, note));
                }
            }
        }
        let applied = self.last_applied.map_or(0, |log_id| log_id.index);
        if !feed.is_empty() {
            batch.insert(&keyspaces.feed, applied.to_be_bytes(), feed.encode());
        }
        self.put_applied(&mut batch);
        batch.commit().map_err(write_state_machine)?;
        keyspaces.dedup.record(ids, || self.ledger.frontier());
        keyspaces.recent.push(applied, recent);
        if let Some(publisher) = &self.publisher {
            for (tenant_id, stream_index, tree_size, note) in published {
                publisher.publish(&tenant_id, stream_index, tree_size, note);
            }
        }
        self.ledger.batch_committed();
        self.publish_counters();
        let events = self.ledger.events_total();
        if keyspaces.codec.claim_training(events) {
            self.start_training(events);
        }
        Ok(())
    }

    /// Trains the shard's event dictionary on a thread of its own (1-3 s of one core,
    /// at the lowest CPU priority: ingest goes first); apply takes it up when it is
    /// durable.
    fn start_training(&self, events: u64) {
        let keyspaces = self.keyspaces.clone();
        let spawned = std::thread::Builder::new()
            .name("trail-codec".into())
            .spawn(move || {
                // SAFETY: plain syscalls on this thread's own id; a failure leaves the
                // thread at its normal priority, which is harmless.
                unsafe {
                    let thread = libc::gettid() as libc::id_t;
                    libc::setpriority(libc::PRIO_PROCESS, thread, 19);
                }
                let started = std::time::Instant::now();
                let codec = &keyspaces.codec;
                match codec.train(&keyspaces, events) {
                    Ok(Some(id)) => tracing::info!(
                        shard = keyspaces.shard,
                        dictionary = id,
                        ms = started.elapsed().as_millis() as u64,
                        "events are compressed under a dictionary trained on them"
                    ),
                    Ok(None) => {}
                    Err(error) => tracing::warn!(
                        shard = keyspaces.shard,
                        %error,
                        "could not train an event dictionary; events stay as they are"
                    ),
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "could not start the dictionary training thread");
        }
    }

    /// Adds the applied id and membership to `batch`, so they commit with the state.
    fn put_applied(&self, batch: &mut fjall::OwnedWriteBatch) {
        let sm_meta = &self.keyspaces.sm_meta;
        let applied = bincode::serialize(&self.last_applied).expect("log id serializes");
        let membership = bincode::serialize(&self.last_membership).expect("membership serializes");
        batch.insert(sm_meta, KEY_APPLIED, applied);
        batch.insert(sm_meta, KEY_MEMBERSHIP, membership);
    }

    /// Publishes the counters and the applied index. Called only after the batch that
    /// applied it is committed to the journal.
    fn publish_counters(&self) {
        self.applied
            .publish(self.last_applied.map(|log_id| log_id.index));
        self.counters
            .events_total
            .store(self.ledger.events_total(), Ordering::Relaxed);
        self.counters
            .tenants
            .store(self.ledger.tenant_count() as u64, Ordering::Relaxed);
        self.counters.last_applied_index.store(
            self.last_applied.map_or(0, |log_id| log_id.index),
            Ordering::Relaxed,
        );
    }

    /// Deletes snapshot files a crash left behind (half-written `.snap.tmp`, or a
    /// previous snapshot whose deletion did not happen): only the current one is kept.
    fn remove_stale_snapshot_files(&self) -> Result<(), StorageError> {
        let current = self
            .current_snapshot_meta()?
            .map(|meta| self.snapshot_path(&meta));
        let entries =
            std::fs::read_dir(self.keyspaces.snapshot_dir.as_ref()).map_err(read_snapshot)?;
        for entry in entries {
            let path = entry.map_err(read_snapshot)?.path();
            if Some(&path) != current.as_ref() {
                tracing::info!(path = %path.display(), "removing stale snapshot file");
                std::fs::remove_file(&path).map_err(write_snapshot)?;
            }
        }
        Ok(())
    }

    fn current_snapshot_meta(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        read_meta(&self.keyspaces.sm_meta, KEY_SNAPSHOT)
    }

    fn snapshot_path(&self, meta: &SnapshotMeta) -> PathBuf {
        self.keyspaces
            .snapshot_dir
            .join(format!("{}.snap", meta.snapshot_id))
    }

    /// Replaces the whole state with a received snapshot and makes it current.
    ///
    /// Crash-safe as one step: clearing a keyspace is durable at once in fjall (a new
    /// table version, outside the journal's order) and the records load in several
    /// batches, so a crash in between would leave a cleared or half-loaded state under
    /// the old applied id, which re-applying the log on top of would silently diverge.
    /// So the snapshot file is made durable under its final name first, then an
    /// `installing` marker; the last batch records the applied id, the snapshot pointer
    /// and removes the marker; and [`StateMachine::open`] finishes an install it finds
    /// marked. The log store purges the covered log only after that last batch
    /// (`AppliedProgress`), so the log is there for as long as the old state might be.
    fn install(&mut self, meta: &SnapshotMeta, file: std::fs::File) -> Result<(), StorageError> {
        let path = self.begin_install(meta, file)?;
        self.load_snapshot(meta, &path)?;
        self.publish_missing_checkpoints();
        Ok(())
    }

    /// Has the publisher append every checkpoint of the shard's streams that the
    /// checkpoint directory lacks (`publish.rs`): the ones an installed snapshot
    /// carries, and at open any a crash or a failed sync lost. Queued before any
    /// checkpoint applied after it, so each stream's lines stay in tree-size order.
    fn publish_missing_checkpoints(&self) {
        if let Some(publisher) = &self.publisher {
            publisher.publish_missing(self.keyspaces.clone());
        }
    }

    /// The durable part before any state is replaced: the verified snapshot file under
    /// its final name, then the `installing` marker. Returns the file's path.
    fn begin_install(
        &mut self,
        meta: &SnapshotMeta,
        mut file: std::fs::File,
    ) -> Result<PathBuf, StorageError> {
        use std::io::Seek;
        file.seek(std::io::SeekFrom::Start(0))
            .map_err(read_snapshot)?;
        check_install(
            &self.stamp,
            self.last_applied,
            &meta.snapshot_id,
            meta.last_log_id,
        )
        .map_err(|problem| format_error(format!("refusing to install: {problem}")))?;
        check_snapshot_file(&mut file, meta)?;
        let path = self.snapshot_path(meta);
        keep_snapshot_file(&mut file, &path)?;
        self.keyspaces
            .sm_meta
            .insert(
                KEY_INSTALLING,
                bincode::serialize(meta).expect("meta serializes"),
            )
            .map_err(write_snapshot_fjall)?;
        self.db
            .persist(PersistMode::SyncAll)
            .map_err(write_snapshot_fjall)?;
        Ok(path)
    }

    /// Moves a shard's event ids out of the node database, where apply used to write
    /// them (`sN.dedup`, packed, or as text before data layout 2), into the dedup
    /// database, once: in sorted runs of ingested tables, then the layout and a
    /// frontier covering every applied event are recorded, then the old keyspace is
    /// deleted. A crash before the layout is recorded moves them again (a key has one
    /// value, so twice is harmless).
    fn move_dedup_index(&mut self) -> Result<(), StorageError> {
        let meta = &self.keyspaces.sm_meta;
        let layout = read_meta::<u32>(meta, KEY_DEDUP_KEYS)?;
        let legacy_name = format!("s{}.dedup", self.keyspaces.shard);
        let legacy = if self.db.keyspace_exists(&legacy_name) {
            Some(
                self.db
                    .keyspace(&legacy_name, fjall::KeyspaceCreateOptions::default)
                    .map_err(read_state_machine)?,
            )
        } else {
            None
        };
        if layout != Some(DEDUP_KEYS_BEHIND_LOG) {
            let started = std::time::Instant::now();
            let mut load = DedupIndex::bulk_load(self.keyspaces.dedup.keyspace());
            for guard in legacy.iter().flat_map(|legacy| legacy.iter()) {
                let (key, value) = guard.into_inner().map_err(read_state_machine)?;
                load.add(&key, &value).map_err(write_state_machine)?;
            }
            let moved = load.loaded;
            load.finish().map_err(write_state_machine)?;
            let mut batch = self.db.batch();
            put_dedup_layout(&mut batch, meta, &self.ledger.frontier());
            batch.commit().map_err(write_state_machine)?;
            self.db
                .persist(PersistMode::SyncAll)
                .map_err(write_state_machine)?;
            if moved > 0 {
                tracing::info!(
                    shard = self.keyspaces.shard,
                    entries = moved,
                    ms = started.elapsed().as_millis() as u64,
                    "event ids moved to the dedup database"
                );
            }
        }
        if let Some(legacy) = legacy {
            self.db
                .delete_keyspace(legacy)
                .map_err(write_state_machine)?;
        }
        Ok(())
    }

    /// The frontier the dedup index's ingested ids cover, per stream (`dedup.rs`):
    /// empty when none is recorded.
    fn recorded_dedup_frontier(&self) -> Result<BTreeMap<u32, u64>, StorageError> {
        let recorded = match self
            .keyspaces
            .sm_meta
            .get(KEY_FRONTIER)
            .map_err(read_state_machine)?
        {
            Some(bytes) => super::dedup::decode_frontier(&bytes)
                .ok_or_else(|| format_error("bad dedup frontier"))?,
            None => Vec::new(),
        };
        Ok(recorded.into_iter().collect())
    }

    /// Every stream of the shard as `(tenant_no, stream_no, next_seq)` (a copy, so the
    /// caller may read the store while it walks them).
    fn streams(&self) -> Vec<(u32, u32, u64)> {
        self.ledger
            .tenants()
            .map(|(_, state)| (state.tenant_no, state.stream_no, state.next_seq))
            .collect()
    }

    /// Calls `each` with the dedup key and position of every event of `stream_no`
    /// (tenant `tenant_no`) with a seq in `seqs`, in seq order.
    fn for_each_event_id(
        &self,
        tenant_no: u32,
        stream_no: u32,
        seqs: std::ops::Range<u64>,
        mut each: impl FnMut(Vec<u8>, super::dedup::Position) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let range = event_key(stream_no, seqs.start)..event_key(stream_no, seqs.end);
        for guard in self.keyspaces.events.range(range) {
            let (key, value) = guard.into_inner().map_err(read_state_machine)?;
            let (stream_no, seq) =
                decode_position(&key).ok_or_else(|| format_error("bad event key"))?;
            let canonical = self
                .keyspaces
                .codec
                .canonical(value)
                .map_err(|error| read_state_machine(error.into()))?;
            let stored = StoredEvent::decode_canonical(&canonical)
                .map_err(|error| format_error(format!("bad stored event: {error}")))?;
            each(
                dedup_key(tenant_no, &stored.event.event_id),
                position_value(stream_no, seq),
            )?;
        }
        Ok(())
    }

    /// Checks the dedup index against the events it must hold (those below the
    /// recorded frontier) before the node answers anything from it: up to
    /// [`DEDUP_PROBES_MAX`] events spread over the streams and their seqs are looked up
    /// in the keyspace. An index that lost ids (a fault of the storage engine, or a
    /// data directory written by a version whose snapshot installs cleared the
    /// keyspace: `dedup.rs`) would answer "new" for an acknowledged event id, and a
    /// retry would be recorded twice. On any miss the index is rebuilt from the
    /// events, into a fresh keyspace, and `status` says so. Cost at open: one event
    /// read and one lookup per probe (a few ms).
    fn check_dedup_index(&mut self) -> Result<(), StorageError> {
        let recorded = self.recorded_dedup_frontier()?;
        let streams: Vec<(u32, u32, u64)> = self
            .ledger
            .tenants()
            .filter_map(|(_, state)| {
                let covered_end = recorded.get(&state.stream_no).copied().unwrap_or(1);
                (covered_end > 1).then_some((state.tenant_no, state.stream_no, covered_end))
            })
            .collect();
        if streams.is_empty() {
            return Ok(());
        }
        let probes_per_stream = (DEDUP_PROBES_MAX / streams.len()).clamp(1, 3);
        let stream_step = streams
            .len()
            .div_ceil(DEDUP_PROBES_MAX / probes_per_stream)
            .max(1);
        let mut missing = None;
        'streams: for &(tenant_no, stream_no, covered_end) in streams.iter().step_by(stream_step) {
            let last = covered_end - 1;
            let mut seqs = vec![1, last, last.div_ceil(2)];
            seqs.truncate(probes_per_stream);
            seqs.dedup();
            for seq in seqs {
                let mut found = true;
                self.for_each_event_id(tenant_no, stream_no, seq..seq + 1, |key, position| {
                    let ingested = self
                        .keyspaces
                        .dedup
                        .get_ingested(&key)
                        .map_err(read_state_machine)?;
                    found = ingested == Some(position);
                    Ok(())
                })?;
                if !found {
                    missing = Some((stream_no, seq));
                    break 'streams;
                }
            }
        }
        let Some((stream_no, seq)) = missing else {
            return Ok(());
        };
        tracing::warn!(
            shard = self.keyspaces.shard,
            stream_no,
            seq,
            "the dedup index misses the id of a recorded event; rebuilding it from the events"
        );
        let started = std::time::Instant::now();
        let rebuilt = self.rebuild_dedup_index()?;
        self.counters
            .dedup_rebuilt_ids
            .store(rebuilt, Ordering::Relaxed);
        tracing::warn!(
            shard = self.keyspaces.shard,
            ids = rebuilt,
            ms = started.elapsed().as_millis() as u64,
            "dedup index rebuilt from the events"
        );
        Ok(())
    }

    /// Loads the id of every applied event into a fresh dedup keyspace, records it
    /// (with a frontier covering every event) and drops the old one. Returns the ids
    /// loaded. Crash-safe: until the batch naming the fresh keyspace is durable the old
    /// one stays current, and the next open deletes the fresh one and checks again.
    fn rebuild_dedup_index(&mut self) -> Result<u64, StorageError> {
        let dedup = self.keyspaces.dedup.clone();
        let _replacing = dedup.begin_replace();
        let fresh = dedup.fresh_keyspace().map_err(write_state_machine)?;
        let mut load = DedupIndex::bulk_load(fresh.clone());
        for (tenant_no, stream_no, next_seq) in self.streams() {
            self.for_each_event_id(tenant_no, stream_no, 1..next_seq, |key, position| {
                load.add(&key, &position).map_err(write_state_machine)
            })?;
        }
        let loaded = load.loaded;
        load.finish().map_err(write_state_machine)?;
        let mut batch = self.db.batch();
        put_dedup_layout(&mut batch, &self.keyspaces.sm_meta, &self.ledger.frontier());
        batch.insert(
            &self.keyspaces.sm_meta,
            KEY_DEDUP_KEYSPACE,
            fresh.name().as_bytes(),
        );
        batch.commit().map_err(write_state_machine)?;
        self.db
            .persist(PersistMode::SyncAll)
            .map_err(write_state_machine)?;
        dedup.replace_keyspace(fresh).map_err(write_state_machine)?;
        Ok(loaded)
    }

    /// Puts the ids of the events applied at or after the recorded frontier back in
    /// the overlay (`dedup.rs`), read from the events themselves, and queues them for
    /// ingestion.
    fn rebuild_dedup_overlay(&mut self) -> Result<(), StorageError> {
        let recorded = self.recorded_dedup_frontier()?;
        let mut ids = Vec::new();
        for (tenant_no, stream_no, next_seq) in self.streams() {
            let from = recorded.get(&stream_no).copied().unwrap_or(1);
            self.for_each_event_id(tenant_no, stream_no, from..next_seq, |key, position| {
                ids.push((key, position));
                Ok(())
            })?;
        }
        if ids.is_empty() {
            return Ok(());
        }
        tracing::info!(
            shard = self.keyspaces.shard,
            ids = ids.len(),
            "event ids not yet in the dedup index put back in memory"
        );
        let frontier = self.ledger.frontier();
        self.keyspaces.dedup.record(ids, || frontier.clone());
        self.keyspaces.dedup.seal_open(frontier);
        Ok(())
    }

    /// Finishes an install a crash interrupted (see [`Inner::install`]).
    fn finish_interrupted_install(&mut self) -> Result<(), StorageError> {
        let Some(meta) = read_meta::<SnapshotMeta>(&self.keyspaces.sm_meta, KEY_INSTALLING)? else {
            return Ok(());
        };
        tracing::warn!(
            snapshot = %meta.snapshot_id,
            "finishing the install of a snapshot that a crash interrupted"
        );
        let path = self.snapshot_path(&meta);
        let mut file = std::fs::File::open(&path).map_err(read_snapshot)?;
        check_snapshot_file(&mut file, &meta)?;
        self.load_snapshot(&meta, &path)
    }

    /// Replaces the state with the (verified) snapshot file at `path`; idempotent.
    fn load_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        path: &std::path::Path,
    ) -> Result<(), StorageError> {
        let previous = self.current_snapshot_meta()?;
        let keyspaces = self.keyspaces.clone();
        // No ingestion of the replaced state's ids may land in the new keyspace.
        let _replacing = keyspaces.dedup.begin_replace();
        // The ids load into a fresh keyspace, never a cleared one: fjall replays a
        // clear over tables ingested after it at every open (`dedup.rs`).
        let fresh_ids = keyspaces
            .dedup
            .fresh_keyspace()
            .map_err(write_snapshot_fjall)?;
        keyspaces.events.clear().map_err(write_snapshot_fjall)?;
        keyspaces.tenants.clear().map_err(write_snapshot_fjall)?;
        keyspaces.chain.clear().map_err(write_snapshot_fjall)?;
        // The indexes describe the replaced state: the feed's pending entries go, and a
        // reset entry (with the installed state) makes the indexer rebuild the shard.
        keyspaces.feed.clear().map_err(write_snapshot_fjall)?;
        keyspaces.recent.clear();

        let file = std::fs::File::open(path).map_err(read_snapshot)?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        read_header(&mut reader)?;
        let mut batch = self.db.batch();
        let mut records = 0usize;
        // The ids go to the dedup database in ingested runs; the frontier recorded
        // with them covers every event of the installed state.
        let mut ids = DedupIndex::bulk_load(fresh_ids.clone());
        let mut frontier = Vec::new();
        loop {
            let tag = read_u8(&mut reader)?;
            if tag == TAG_END {
                break;
            }
            let key = read_chunk(&mut reader)?;
            let value = read_chunk(&mut reader)?;
            let keyspace = match tag {
                TAG_EVENTS => &keyspaces.events,
                TAG_DEDUP => {
                    ids.add(&key, &value).map_err(write_snapshot_fjall)?;
                    continue;
                }
                TAG_TENANTS => {
                    let state = TenantState::decode(&value)
                        .ok_or_else(|| format_error("bad tenant state in snapshot"))?;
                    frontier.push((state.stream_no, state.next_seq));
                    &keyspaces.tenants
                }
                TAG_CHAIN => &keyspaces.chain,
                _ => unreachable!("verified before"),
            };
            batch.insert(keyspace, key, value);
            records += 1;
            if records.is_multiple_of(INSTALL_BATCH_RECORDS_MAX) {
                std::mem::replace(&mut batch, self.db.batch())
                    .commit()
                    .map_err(write_snapshot_fjall)?;
            }
        }
        ids.finish().map_err(write_snapshot_fjall)?;
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        let applied = self.last_applied.map_or(0, |log_id| log_id.index);
        put_dedup_layout(&mut batch, &keyspaces.sm_meta, &frontier);
        batch.insert(
            &keyspaces.sm_meta,
            KEY_DEDUP_KEYSPACE,
            fresh_ids.name().as_bytes(),
        );
        batch.insert(
            &keyspaces.feed,
            applied.to_be_bytes(),
            FeedRuns::reset().encode(),
        );
        self.put_applied(&mut batch);
        batch.insert(
            &keyspaces.sm_meta,
            KEY_SNAPSHOT,
            bincode::serialize(meta).expect("meta serializes"),
        );
        batch.remove(&keyspaces.sm_meta, KEY_INSTALLING);
        batch.commit().map_err(write_snapshot_fjall)?;
        self.db
            .persist(PersistMode::SyncAll)
            .map_err(write_snapshot_fjall)?;
        keyspaces
            .dedup
            .replace_keyspace(fresh_ids)
            .map_err(write_snapshot_fjall)?;
        if let Some(previous) = previous {
            if previous.snapshot_id != meta.snapshot_id {
                let _ = std::fs::remove_file(self.snapshot_path(&previous));
            }
        }

        self.ledger = load_ledger(&keyspaces.tenants)?;
        self.publish_counters();
        tracing::info!(
            snapshot = %meta.snapshot_id,
            records,
            "installed a snapshot"
        );
        Ok(())
    }

    /// Points the shard at a new snapshot, and returns the file of the one it pointed
    /// at before, if another. The caller makes the pointer durable and then deletes
    /// that file, both without this lock (`SnapshotBuilder::build_snapshot`).
    fn set_current_snapshot(&self, meta: &SnapshotMeta) -> Result<Option<PathBuf>, StorageError> {
        let previous = self.current_snapshot_meta()?;
        self.keyspaces
            .sm_meta
            .insert(
                KEY_SNAPSHOT,
                bincode::serialize(meta).expect("meta serializes"),
            )
            .map_err(write_snapshot_fjall)?;
        Ok(previous
            .filter(|previous| previous.snapshot_id != meta.snapshot_id)
            .map(|previous| self.snapshot_path(&previous)))
    }
}

/// Answers apply's lookups from committed fjall state.
struct Lookup<'a> {
    events: &'a Keyspace,
    codec: &'a super::EventCodec,
    dedup: &'a DedupIndex,
    chain: &'a Keyspace,
    note_verifier: Option<&'a NoteVerifier>,
}

impl LedgerLookup for Lookup<'_> {
    type Error = fjall::Error;

    fn note_verifier(&self) -> Option<&NoteVerifier> {
        self.note_verifier
    }

    fn find_event_id(
        &self,
        tenant_no: u32,
        event_id: &str,
    ) -> Result<Option<(u32, u64)>, fjall::Error> {
        let value = self.dedup.get(&dedup_key(tenant_no, event_id))?;
        Ok(value.map(|bytes| decode_position(&bytes).expect("dedup values are 12 bytes")))
    }

    fn recorded_leaf(&self, stream_no: u32, seq: u64) -> Result<RecordedLeaf, fjall::Error> {
        let value = self
            .events
            .get(event_key(stream_no, seq))?
            .expect("a dedup entry points at a stored event");
        let canonical = self.codec.canonical(value)?;
        let stored = StoredEvent::decode_canonical(&canonical).map_err(|error| {
            fjall::Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("stored event {stream_no}/{seq}: {error}"),
            ))
        })?;
        Ok(RecordedLeaf {
            leaf_hash: leaf_hash(&canonical),
            ingested_at_ns: stored.ingested_at_ns,
        })
    }

    fn tree_root_after(
        &self,
        stream_no: u32,
        block_index: u64,
    ) -> Result<Option<[u8; 32]>, fjall::Error> {
        let Some(bytes) = self
            .chain
            .get(chain_key(CHAIN_BLOCK, stream_no, block_index))?
        else {
            return Ok(None);
        };
        // A damaged record gives no root, so the checkpoint is skipped, not recorded.
        Ok(BlockRecord::decode(&bytes)
            .ok()
            .map(|record| record.tree_root_after))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let inner = self.lock();
        Ok((inner.last_applied, inner.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<LedgerResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let inner = self.inner.clone();
        // On the storage pool, never behind reads (`pool.rs`).
        let applied = super::pool::run(move || {
            inner
                .lock()
                .expect("state machine lock")
                .apply_entries(entries)
        })
        .await;
        if applied.is_err() {
            self.applied.fail();
        }
        applied
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        let mut inner = self.lock();
        inner.snapshots_built += 1;
        // The fjall snapshots are taken here, between applies, so they match the applied
        // id; the overlay's ids before the dedup database's snapshot, so that an id
        // ingested in between is in one of them (or both), never in neither.
        let dedup_overlay = inner.keyspaces.dedup.overlay_view();
        SnapshotBuilder {
            // The keyspace the view is read from: an install that replaces it later
            // leaves this handle (and so its tables) alive until the build is done.
            dedup_keyspace: inner.keyspaces.dedup.keyspace(),
            dedup_view: inner.keyspaces.dedup.db.snapshot(),
            dedup_overlay: Arc::new(dedup_overlay),
            view: inner.db.snapshot(),
            keyspaces: inner.keyspaces.clone(),
            last_applied: inner.last_applied,
            last_membership: inner.last_membership.clone(),
            sequence: inner.snapshots_built,
            stamp: inner.stamp.clone(),
            state_machine: self.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let dir = self.lock().keyspaces.snapshot_dir.clone();
        let file = tempfile::tempfile_in(dir.as_ref()).map_err(write_snapshot)?;
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let file = snapshot.into_std().await;
        let inner = self.inner.clone();
        let meta = meta.clone();
        let installed = super::pool::run(move || {
            inner
                .lock()
                .expect("state machine lock")
                .install(&meta, file)
        })
        .await;
        if installed.is_err() {
            self.applied.fail();
        }
        installed
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        // The file is opened under the lock: a snapshot built meanwhile replaces the
        // pointer under the same lock and deletes the file it pointed to after it, and
        // a file open before its deletion stays readable. Opened after the lock was
        // let go, it could be gone, and the error stopped the whole Raft group (seen
        // in the kill -9 cluster test: `Read Snapshot(None)`, no such file).
        let (meta, file) = {
            let inner = self.lock();
            match inner.current_snapshot_meta()? {
                None => return Ok(None),
                Some(meta) => {
                    let file =
                        std::fs::File::open(inner.snapshot_path(&meta)).map_err(read_snapshot)?;
                    (meta, file)
                }
            }
        };
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        }))
    }
}

/// Builds a snapshot file from a consistent fjall view, off the apply path.
pub struct SnapshotBuilder {
    view: fjall::Snapshot,
    /// The event-id index: the dedup database's view, and the ids not yet in it.
    dedup_view: fjall::Snapshot,
    dedup_overlay: Arc<super::dedup::OverlayView>,
    dedup_keyspace: Keyspace,
    keyspaces: ShardKeyspaces,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    sequence: u64,
    stamp: SnapshotStamp,
    state_machine: StateMachine,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let snapshot_id =
            SnapshotName::new(&self.stamp, self.last_applied, self.sequence).to_string();
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshot_id,
        };
        let path = self
            .keyspaces
            .snapshot_dir
            .join(format!("{}.snap", meta.snapshot_id));
        let view = self.view.clone();
        let dedup = (
            self.dedup_view.clone(),
            self.dedup_overlay.clone(),
            self.dedup_keyspace.clone(),
        );
        let keyspaces = self.keyspaces.clone();
        let meta_for_file = meta.clone();
        let path_for_file = path.clone();
        let membership = self.last_membership.membership();
        let records =
            if membership.voter_ids().count() == 1 && membership.learner_ids().count() == 0 {
                Records::None
            } else {
                Records::All
            };
        tokio::task::spawn_blocking(move || {
            write_snapshot_file(
                &path_for_file,
                &meta_for_file,
                (&view, &dedup.0, &dedup.1, &dedup.2),
                &keyspaces,
                records,
            )
        })
        .await
        .expect("snapshot writer does not panic")?;

        let state_machine = self.state_machine.clone();
        let meta_for_pointer = meta.clone();
        let syncer = self.keyspaces.syncer.clone();
        let file = tokio::task::spawn_blocking(move || {
            // Opened under the lock that replacing the pointer takes: see
            // `get_current_snapshot`.
            let (file, replaced) = {
                let inner = state_machine.lock();
                let replaced = inner.set_current_snapshot(&meta_for_pointer)?;
                (std::fs::File::open(&path).map_err(read_snapshot)?, replaced)
            };
            // The pointer must be durable before the log it replaces can be purged
            // (openraft purges once this returns), and before the file it pointed to
            // is deleted. Neither under the state machine's lock, which every apply of
            // the shard takes: through the fsync thread, the wait holds no lock (an
            // fsync under `Database::persist` held fjall's journal lock, stalling the
            // writes of every shard at each snapshot), and an unlink on a file system
            // mounted with `discard` waited up to 90 ms for the device. Readers that
            // opened the old file keep it until they close it; a crash before the
            // unlink leaves it to `remove_stale_snapshot_files`.
            if !syncer.wait() {
                return Err(write_snapshot(std::io::Error::other(
                    "the fsync thread is gone",
                )));
            }
            if let Some(replaced) = replaced {
                let _ = std::fs::remove_file(replaced);
            }
            Ok(file)
        })
        .await
        .expect("snapshot pointer does not panic")?;
        let file = tokio::fs::File::from_std(file);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

/// What a snapshot file holds besides its metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Records {
    /// The whole state: what a replica that installs it needs.
    All,
    /// Nothing: the group has one replica, so no other replica will ever install it,
    /// and a snapshot is only what lets the Raft log be purged. The state it stands
    /// for is the store itself (applied up to at least its last log id). Writing the
    /// whole state instead costs a full copy of the shard per snapshot, which is why
    /// single nodes used to keep their whole Raft log (191 bytes/event at 10 M).
    None,
}

/// Snapshot file, version 2: magic, version, bincode meta, then tagged records
/// (`tag u8, key len u32 BE, key, value len u32 BE, value`) or the no-records tag, an
/// end tag, and the SHA-256 of everything before it, so a torn or damaged snapshot is
/// never installed.
fn write_snapshot_file(
    path: &std::path::Path,
    meta: &SnapshotMeta,
    (view, dedup_view, dedup_overlay, dedup_keyspace): (
        &fjall::Snapshot,
        &fjall::Snapshot,
        &super::dedup::OverlayView,
        &Keyspace,
    ),
    keyspaces: &ShardKeyspaces,
    records: Records,
) -> Result<(), StorageError> {
    let temporary = path.with_extension("snap.tmp");
    let file = std::fs::File::create(&temporary).map_err(write_snapshot)?;
    let mut writer = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
    };
    writer.write_all(SNAPSHOT_MAGIC).map_err(write_snapshot)?;
    writer
        .write_all(&SNAPSHOT_VERSION.to_be_bytes())
        .map_err(write_snapshot)?;
    let meta_bytes = bincode::serialize(meta).expect("meta serializes");
    write_chunk(&mut writer, &meta_bytes)?;
    let keyspaces_written = match records {
        Records::All => vec![
            (TAG_EVENTS, view, &keyspaces.events),
            (TAG_DEDUP, dedup_view, dedup_keyspace),
            (TAG_TENANTS, view, &keyspaces.tenants),
            (TAG_CHAIN, view, &keyspaces.chain),
        ],
        Records::None => {
            writer
                .write_all(&[TAG_NO_RECORDS])
                .map_err(write_snapshot)?;
            Vec::new()
        }
    };
    if records == Records::All {
        for (key, position) in dedup_overlay.entries() {
            writer.write_all(&[TAG_DEDUP]).map_err(write_snapshot)?;
            write_chunk(&mut writer, key)?;
            write_chunk(&mut writer, position)?;
        }
    }
    for (tag, view, keyspace) in keyspaces_written {
        for guard in view.iter(keyspace) {
            let (key, value) = guard.into_inner().map_err(write_snapshot_fjall)?;
            // Events travel as their canonical encoding: the dictionary that may
            // compress one here is this replica's own.
            let value = match tag {
                TAG_EVENTS => keyspaces
                    .codec
                    .canonical(value)
                    .map_err(|error| write_snapshot_fjall(error.into()))?,
                _ => super::event_codec::Canonical::Stored(value),
            };
            writer.write_all(&[tag]).map_err(write_snapshot)?;
            write_chunk(&mut writer, &key)?;
            write_chunk(&mut writer, &value)?;
        }
    }
    writer.write_all(&[TAG_END]).map_err(write_snapshot)?;
    let digest = writer.hasher.clone().finalize();
    let mut inner = writer.inner;
    inner.write_all(&digest).map_err(write_snapshot)?;
    let file = inner
        .into_inner()
        .map_err(|error| write_snapshot(error.into_error()))?;
    file.sync_all().map_err(write_snapshot)?;
    std::fs::rename(&temporary, path).map_err(write_snapshot)?;
    // The name must be durable before the pointer to it (`set_current_snapshot`) is.
    sync_parent_dir(path)
}

/// Checks magic, version, record framing and the trailing checksum; returns the meta
/// and whether the file holds records.
fn verify_snapshot_file(file: &mut std::fs::File) -> Result<(SnapshotMeta, Records), StorageError> {
    let mut reader = HashingReader {
        inner: BufReader::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
    };
    let meta = read_header(&mut reader)?;
    let mut records = Records::All;
    loop {
        let tag = read_u8(&mut reader)?;
        match tag {
            TAG_END => break,
            TAG_NO_RECORDS => records = Records::None,
            TAG_EVENTS | TAG_DEDUP | TAG_TENANTS | TAG_CHAIN if records == Records::All => {
                read_chunk(&mut reader)?;
                read_chunk(&mut reader)?;
            }
            _ => return Err(format_error("unknown record tag")),
        }
    }
    let computed = reader.hasher.clone().finalize();
    let mut stored = [0u8; 32];
    reader
        .inner
        .read_exact(&mut stored)
        .map_err(read_snapshot)?;
    if computed.as_slice() != stored {
        return Err(format_error("snapshot checksum mismatch"));
    }
    Ok((meta, records))
}

/// Verifies a snapshot file and that it is the one `meta` describes.
fn check_snapshot_file(file: &mut std::fs::File, meta: &SnapshotMeta) -> Result<(), StorageError> {
    let (bytes_meta, records) = verify_snapshot_file(file)?;
    if bytes_meta.last_log_id != meta.last_log_id || bytes_meta.snapshot_id != meta.snapshot_id {
        return Err(format_error("snapshot file does not match its metadata"));
    }
    if records == Records::None {
        return Err(format_error(format!(
            "snapshot {} was built by a single-replica group and holds no records; \
             refusing to install it",
            meta.snapshot_id
        )));
    }
    Ok(())
}

/// Copies a received snapshot to `path`, durably: written to a temporary name, synced,
/// renamed, and the directory synced so that the name survives a crash too.
fn keep_snapshot_file(
    source: &mut std::fs::File,
    path: &std::path::Path,
) -> Result<(), StorageError> {
    use std::io::Seek;
    source
        .seek(std::io::SeekFrom::Start(0))
        .map_err(read_snapshot)?;
    let temporary = path.with_extension("snap.tmp");
    let mut target = std::fs::File::create(&temporary).map_err(write_snapshot)?;
    std::io::copy(source, &mut target).map_err(write_snapshot)?;
    target.sync_all().map_err(write_snapshot)?;
    std::fs::rename(&temporary, path).map_err(write_snapshot)?;
    sync_parent_dir(path)
}

/// Makes a file's creation or rename in its directory durable.
fn sync_parent_dir(path: &std::path::Path) -> Result<(), StorageError> {
    let dir = path.parent().expect("snapshot files live in a directory");
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(write_snapshot)
}

fn read_header(reader: &mut impl Read) -> Result<SnapshotMeta, StorageError> {
    let mut magic = [0u8; 8];
    reader.read_exact(&mut magic).map_err(read_snapshot)?;
    if &magic != SNAPSHOT_MAGIC {
        return Err(format_error("not a Trail snapshot"));
    }
    let mut version = [0u8; 4];
    reader.read_exact(&mut version).map_err(read_snapshot)?;
    if u32::from_be_bytes(version) != SNAPSHOT_VERSION {
        return Err(format_error("unknown snapshot version"));
    }
    let meta_bytes = read_chunk(reader)?;
    bincode::deserialize(&meta_bytes).map_err(|_| format_error("bad snapshot metadata"))
}

fn write_chunk(writer: &mut impl Write, bytes: &[u8]) -> Result<(), StorageError> {
    let length = u32::try_from(bytes.len()).expect("keys and values are below 4 GiB");
    writer
        .write_all(&length.to_be_bytes())
        .map_err(write_snapshot)?;
    writer.write_all(bytes).map_err(write_snapshot)
}

/// Largest key or value a snapshot record may claim, so a damaged length can not make
/// the reader allocate gigabytes.
const SNAPSHOT_CHUNK_BYTES_MAX: usize = 64 << 20;

fn read_chunk(reader: &mut impl Read) -> Result<Vec<u8>, StorageError> {
    let mut length = [0u8; 4];
    reader.read_exact(&mut length).map_err(read_snapshot)?;
    let length = u32::from_be_bytes(length) as usize;
    if length > SNAPSHOT_CHUNK_BYTES_MAX {
        return Err(format_error("snapshot record too large"));
    }
    let mut bytes = vec![0u8; length];
    reader.read_exact(&mut bytes).map_err(read_snapshot)?;
    Ok(bytes)
}

fn read_u8(reader: &mut impl Read) -> Result<u8, StorageError> {
    let mut byte = [0u8; 1];
    reader.read_exact(&mut byte).map_err(read_snapshot)?;
    Ok(byte[0])
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.hasher.update(&bytes[..written]);
        Ok(written)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buffer)?;
        self.hasher.update(&buffer[..read]);
        Ok(read)
    }
}

/// Records in `batch` that the shard's ids are in the dedup database, all of them up
/// to `frontier`.
fn put_dedup_layout(
    batch: &mut fjall::OwnedWriteBatch,
    sm_meta: &Keyspace,
    frontier: &super::dedup::Frontier,
) {
    let layout = bincode::serialize(&DEDUP_KEYS_BEHIND_LOG).expect("u32 serializes");
    batch.insert(sm_meta, KEY_DEDUP_KEYS, layout);
    batch.insert(
        sm_meta,
        KEY_FRONTIER,
        super::dedup::encode_frontier(frontier),
    );
}

fn load_ledger(tenants: &Keyspace) -> Result<Ledger, StorageError> {
    let mut states = Vec::new();
    for guard in tenants.iter() {
        let (key, value) = guard.into_inner().map_err(read_state_machine)?;
        let tenant_id =
            String::from_utf8(key.to_vec()).map_err(|_| format_error("tenant id is not UTF-8"))?;
        let state = TenantState::decode(&value).ok_or_else(|| format_error("bad tenant state"))?;
        states.push((tenant_id, state));
    }
    Ok(Ledger::from_tenants(states))
}

fn read_meta<T: serde::de::DeserializeOwned>(
    meta: &Keyspace,
    key: &[u8],
) -> Result<Option<T>, StorageError> {
    match meta.get(key).map_err(read_state_machine)? {
        None => Ok(None),
        Some(bytes) => bincode::deserialize(&bytes)
            .map(Some)
            .map_err(|_| format_error("bad state machine metadata")),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SnapshotFormatError(String);

fn format_error(message: impl Into<String>) -> StorageError {
    storage_io_error(
        ErrorSubject::Snapshot(None),
        ErrorVerb::Read,
        &SnapshotFormatError(message.into()),
    )
}

fn read_state_machine(error: fjall::Error) -> StorageError {
    storage_io_error(ErrorSubject::StateMachine, ErrorVerb::Read, &error)
}

fn write_state_machine(error: fjall::Error) -> StorageError {
    storage_io_error(ErrorSubject::StateMachine, ErrorVerb::Write, &error)
}

fn write_snapshot_fjall(error: fjall::Error) -> StorageError {
    storage_io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, &error)
}

fn write_snapshot(error: std::io::Error) -> StorageError {
    storage_io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, &error)
}

fn read_snapshot(error: std::io::Error) -> StorageError {
    storage_io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, &error)
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};
    use tempfile::TempDir;

    use super::super::dedup::GENERATION_IDS;
    use super::*;
    use crate::ledger::{ActorKind, EventRecord, LedgerCommand, Outcome};
    use crate::storage::NodeStore;

    fn append(index: u64, tenant_id: &str, numbers: std::ops::Range<u64>) -> Entry {
        let events = numbers
            .map(|number| EventRecord {
                event_id: format!("evt_{number}"),
                tenant_id: tenant_id.to_string(),
                actor_kind: ActorKind::User,
                actor_id: "user_1".into(),
                actor_email: String::new(),
                actor_name: String::new(),
                action: "doc.read".into(),
                resource_type: "doc".into(),
                resource_id: format!("doc_{number}"),
                outcome: Outcome::Success,
                occurred_at_ns: 1_700_000_000_000_000_000 + number as i64,
                request_id: String::new(),
                session_id: String::new(),
                ip_address: String::new(),
                user_agent: String::new(),
                metadata_json: String::new(),
                subject_id: String::new(),
            })
            .collect();
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(LedgerCommand::Append {
                ingested_at_ns: 1_700_000_000_000_000_000,
                block_events_max: 4,
                events,
            }),
        }
    }

    fn open(dir: &TempDir) -> (NodeStore, ShardKeyspaces, StateMachine) {
        let store = NodeStore::open(dir.path()).expect("node store");
        let keyspaces = store.shard(1).expect("keyspaces");
        let sm = StateMachine::open(store.db.clone(), &keyspaces, None).expect("state machine");
        (store, keyspaces, sm)
    }

    /// A snapshot of `sm` as it is now.
    async fn build_snapshot(sm: &mut StateMachine) -> Snapshot {
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap()
    }

    /// A built snapshot's data as the receiving side gets it over the network.
    async fn receive(
        target: &mut StateMachine,
        mut data: Box<tokio::fs::File>,
    ) -> Box<tokio::fs::File> {
        let mut receiving = target.begin_receiving_snapshot().await.unwrap();
        tokio::io::copy(&mut data, &mut *receiving).await.unwrap();
        tokio::io::AsyncWriteExt::flush(&mut *receiving)
            .await
            .unwrap();
        receiving
    }

    fn contents(keyspace: &Keyspace) -> Vec<(Vec<u8>, Vec<u8>)> {
        keyspace
            .iter()
            .map(|guard| {
                let (key, value) = guard.into_inner().expect("read");
                (key.to_vec(), value.to_vec())
            })
            .collect()
    }

    /// Every recorded id of a shard as `(key, value)`: the dedup keyspace's and the
    /// overlay's, sorted.
    fn dedup_contents(index: &DedupIndex) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut all = contents(&index.keyspace());
        let view = index.overlay_view();
        all.extend(
            view.entries()
                .map(|(key, value)| (key.to_vec(), value.to_vec())),
        );
        all.sort();
        all.dedup();
        all
    }

    /// A shard written when apply kept the ids in the node database (as text before
    /// layout 2): they move to the dedup database when it opens, packed, the old
    /// keyspace goes, and a retried event is still found.
    #[tokio::test]
    async fn ids_an_earlier_layout_kept_in_the_node_database_move_at_open() {
        let dir = TempDir::new().unwrap();
        let uuid = "0f8fad5b-d9cb-469f-a165-70867728950e";
        let mut entry = append(1, "ten_a", 0..3);
        let EntryPayload::Normal(LedgerCommand::Append { events, .. }) = &mut entry.payload else {
            unreachable!()
        };
        events[0].event_id = uuid.to_string();
        {
            let (store, keyspaces, mut sm) = open(&dir);
            sm.apply(vec![entry.clone()]).await.unwrap();
            // Back to the earlier layout: the ids in `s1.dedup` of the node database,
            // the UUID as text, and no layout marker or frontier.
            let legacy = store
                .db
                .keyspace("s1.dedup", fjall::KeyspaceCreateOptions::default)
                .unwrap();
            for (key, value) in dedup_contents(&keyspaces.dedup) {
                let key = match key[4] {
                    0x01 => {
                        let mut text = key[..4].to_vec();
                        text.extend_from_slice(uuid.as_bytes());
                        text
                    }
                    _ => key,
                };
                legacy.insert(key, value).unwrap();
            }
            keyspaces.sm_meta.remove(KEY_DEDUP_KEYS).unwrap();
            keyspaces.sm_meta.remove(KEY_FRONTIER).unwrap();
            store.db.persist(PersistMode::SyncAll).unwrap();
        }
        let (store, keyspaces, mut sm) = open(&dir);
        let tenant = keyspaces.tenants.get("ten_a").unwrap().expect("tenant");
        let tenant_no = TenantState::decode(&tenant).expect("state").tenant_no;
        assert_eq!(keyspaces.dedup.overlay_len(), 0, "moved, not rebuilt");
        let keys: Vec<Vec<u8>> = contents(&keyspaces.dedup.keyspace())
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        assert_eq!(keys.len(), 3);
        assert!(keys.contains(&dedup_key(tenant_no, uuid)), "{keys:?}");
        assert!(keys.contains(&dedup_key(tenant_no, "evt_1")));
        assert_eq!(
            read_meta::<u32>(&keyspaces.sm_meta, KEY_DEDUP_KEYS).unwrap(),
            Some(DEDUP_KEYS_BEHIND_LOG)
        );
        assert!(
            !store.db.keyspace_exists("s1.dedup"),
            "the old keyspace is gone"
        );
        // The same events again: all three deduplicated.
        let mut again = entry;
        again.log_id.index = 2;
        let responses = sm.apply(vec![again]).await.unwrap();
        let receipts = &responses[0].receipts;
        assert_eq!(receipts.len(), 3);
        assert!(
            receipts.iter().all(|receipt| receipt.deduplicated),
            "{receipts:?}"
        );
    }

    /// Ids reach the dedup keyspace in generations, and the frontier recorded after
    /// each covers them; ids the overlay held when the node stopped (or crashed) are
    /// put back from the events at the next open, so retries are still answered with
    /// their first receipts.
    #[tokio::test]
    async fn ids_behind_the_log_survive_a_restart_and_reach_the_keyspace() {
        let dir = TempDir::new().unwrap();
        // Two and a half generations, in entries of 8 events (a generation is sealed
        // at the first commit that fills it: these fill it exactly).
        let per_entry = 8u64;
        let count = (5 * GENERATION_IDS as u64 / 2) / per_entry * per_entry;
        let entries: Vec<Entry> = (0..count / per_entry)
            .map(|n| append(n + 1, "ten_a", n * per_entry..(n + 1) * per_entry))
            .collect();
        let first_receipts = {
            let (store, keyspaces, mut sm) = open(&dir);
            let mut responses = Vec::new();
            for entry in &entries {
                responses.extend(sm.apply([entry.clone()]).await.unwrap());
            }
            keyspaces.dedup.wait_ingested();
            let in_keyspace = contents(&keyspaces.dedup.keyspace()).len();
            assert_eq!(
                in_keyspace,
                2 * GENERATION_IDS,
                "two sealed generations ingested"
            );
            assert_eq!(
                keyspaces.dedup.overlay_len() as u64,
                count - 2 * GENERATION_IDS as u64
            );
            let frontier = keyspaces
                .sm_meta
                .get(KEY_FRONTIER)
                .unwrap()
                .expect("frontier");
            let frontier = super::super::dedup::decode_frontier(&frontier).unwrap();
            assert_eq!(frontier.len(), 1);
            assert_eq!(frontier[0].1, 2 * GENERATION_IDS as u64 + 1);
            store.db.persist(PersistMode::SyncAll).unwrap();
            responses
        };
        let (_store, keyspaces, mut sm) = open(&dir);
        keyspaces.dedup.wait_ingested();
        assert_eq!(
            keyspaces.dedup.overlay_len(),
            0,
            "the rest was put back and ingested"
        );
        assert_eq!(contents(&keyspaces.dedup.keyspace()).len() as u64, count);
        // Every event again: each answered with its first receipt.
        let retries: Vec<Entry> = entries
            .iter()
            .enumerate()
            .map(|(n, entry)| {
                let mut entry = entry.clone();
                entry.log_id.index = count / per_entry + 1 + n as u64;
                entry
            })
            .collect();
        let responses = sm.apply(retries).await.unwrap();
        for (first, again) in first_receipts.iter().zip(&responses) {
            for (first, again) in first.receipts.iter().zip(&again.receipts) {
                assert!(again.deduplicated);
                assert_eq!((first.seq, first.leaf_hash), (again.seq, again.leaf_hash));
            }
        }
    }

    /// Entries of 10 events each over four tenants, `events` in all, numbered from
    /// `first` (event ids `evt_<number>`), log indexes from `index`.
    fn four_tenants(index: u64, first: u64, events: u64) -> Vec<Entry> {
        (0..events / 10)
            .map(|n| {
                let start = first + n * 10;
                append(index + n, &format!("ten_{}", n % 4), start..start + 10)
            })
            .collect()
    }

    /// Ids of `entries`' events found in the dedup index (overlay or keyspace).
    fn ids_found(
        keyspaces: &ShardKeyspaces,
        ledger_tenants: &[(String, u32)],
        entries: &[Entry],
    ) -> usize {
        let mut found = 0;
        for entry in entries {
            let EntryPayload::Normal(LedgerCommand::Append { events, .. }) = &entry.payload else {
                continue;
            };
            for event in events {
                let tenant_no = ledger_tenants
                    .iter()
                    .find(|(tenant, _)| *tenant == event.tenant_id)
                    .map(|(_, number)| *number)
                    .expect("tenant");
                if keyspaces
                    .dedup
                    .get(&dedup_key(tenant_no, &event.event_id))
                    .unwrap()
                    .is_some()
                {
                    found += 1;
                }
            }
        }
        found
    }

    fn tenant_numbers(sm: &StateMachine) -> Vec<(String, u32)> {
        sm.lock()
            .ledger
            .tenants()
            .map(|(tenant, state)| (tenant.to_string(), state.tenant_no))
            .collect()
    }

    /// A replica that installed a snapshot keeps its event ids across restarts: the
    /// install's ids, and those ingested after it. (The install used to clear the
    /// dedup keyspace and then ingest into it; fjall replays the clear at every open
    /// over the tables ingested after it, so the reopened replica held none of them,
    /// answered a retry as a new event and forked its stream from the other replicas.)
    #[tokio::test]
    async fn an_installed_replica_keeps_its_event_ids_across_restarts() {
        let source_dir = TempDir::new().unwrap();
        let (_source_store, _source_keyspaces, mut source) = open(&source_dir);
        let installed = four_tenants(1, 0, 200);
        let first_receipts = source.apply(installed.clone()).await.unwrap();
        let snapshot = build_snapshot(&mut source).await;

        let dir = TempDir::new().unwrap();
        let after_install = four_tenants(21, 1_000, 300);
        {
            let (store, keyspaces, mut replica) = open(&dir);
            let receiving = receive(&mut replica, snapshot.snapshot).await;
            replica
                .install_snapshot(&snapshot.meta, receiving)
                .await
                .unwrap();
            keyspaces.dedup.wait_ingested();
            assert_eq!(contents(&keyspaces.dedup.keyspace()).len(), 200);
            // The installed records reach tables while the journal still holds the
            // install's clears, which every open replays (vendor/fjall/PATCHES.md,
            // patch 6): they must not drop these tables.
            for keyspace in [&keyspaces.events, &keyspaces.tenants, &keyspaces.chain] {
                keyspace.rotate_memtable_and_wait().unwrap();
            }
            store.db.persist(PersistMode::SyncAll).unwrap();
        }
        {
            let (store, keyspaces, mut replica) = open(&dir);
            let tenants = tenant_numbers(&replica);
            assert_eq!(tenants.len(), 4, "the installed tenants");
            assert_eq!(
                contents(&keyspaces.events).len(),
                200,
                "the installed events"
            );
            assert_eq!(
                ids_found(&keyspaces, &tenants, &installed),
                200,
                "after a restart"
            );
            assert_eq!(contents(&keyspaces.dedup.keyspace()).len(), 200);
            assert_eq!(
                replica.counters.dedup_rebuilt_ids.load(Ordering::Relaxed),
                0
            );
            // A retry of an installed event gets its first receipt, not a new seq.
            let mut retry = installed[3].clone();
            retry.log_id.index = 21;
            let again = replica.apply([retry]).await.unwrap();
            for (first, again) in first_receipts[3].receipts.iter().zip(&again[0].receipts) {
                assert!(again.deduplicated);
                assert_eq!((first.seq, first.leaf_hash), (again.seq, again.leaf_hash));
            }
            // More events after the install, their ids ingested (generations of
            // GENERATION_IDS in tests: 300 ids seal one).
            let mut more = after_install.clone();
            for entry in &mut more {
                entry.log_id.index += 1;
            }
            replica.apply(more).await.unwrap();
            keyspaces.dedup.seal_open(replica.lock().ledger.frontier());
            keyspaces.dedup.wait_ingested();
            store.db.persist(PersistMode::SyncAll).unwrap();
        }
        let (_store, keyspaces, replica) = open(&dir);
        keyspaces.dedup.wait_ingested();
        let tenants = tenant_numbers(&replica);
        assert_eq!(ids_found(&keyspaces, &tenants, &installed), 200);
        assert_eq!(ids_found(&keyspaces, &tenants, &after_install), 300);
        assert_eq!(contents(&keyspaces.dedup.keyspace()).len(), 500);
        assert_eq!(
            replica.counters.dedup_rebuilt_ids.load(Ordering::Relaxed),
            0
        );
        let names: Vec<String> = keyspaces
            .dedup
            .db
            .list_keyspace_names()
            .iter()
            .map(|name| name.to_string())
            .filter(|name| name.starts_with("s1.dedup"))
            .collect();
        assert_eq!(
            names,
            vec!["s1.dedup.1".to_string()],
            "the replaced keyspace is gone"
        );
    }

    /// An index that lost ids it must hold (here: every one, as a clear in the
    /// storage engine would do) is found at open by the probes and rebuilt from the
    /// events; `dedup_rebuilt_ids` says so, and a retry is deduplicated again.
    #[tokio::test]
    async fn an_index_missing_ids_is_rebuilt_from_the_events_at_open() {
        let dir = TempDir::new().unwrap();
        let entries = four_tenants(1, 0, 300);
        let first_receipts = {
            let (store, keyspaces, mut sm) = open(&dir);
            let receipts = sm.apply(entries.clone()).await.unwrap();
            keyspaces.dedup.seal_open(sm.lock().ledger.frontier());
            keyspaces.dedup.wait_ingested();
            assert_eq!(contents(&keyspaces.dedup.keyspace()).len(), 300);
            // Lose them: remove each id from the keyspace.
            for (key, _) in contents(&keyspaces.dedup.keyspace()) {
                keyspaces.dedup.keyspace().remove(key).unwrap();
            }
            keyspaces.dedup.db.persist(PersistMode::SyncAll).unwrap();
            store.db.persist(PersistMode::SyncAll).unwrap();
            receipts
        };
        let (_store, keyspaces, mut sm) = open(&dir);
        assert_eq!(sm.counters.dedup_rebuilt_ids.load(Ordering::Relaxed), 300);
        assert_eq!(contents(&keyspaces.dedup.keyspace()).len(), 300);
        let mut retry = entries[7].clone();
        retry.log_id.index = 31;
        let again = sm.apply([retry]).await.unwrap();
        for (first, again) in first_receipts[7].receipts.iter().zip(&again[0].receipts) {
            assert!(again.deduplicated);
            assert_eq!((first.seq, first.leaf_hash), (again.seq, again.leaf_hash));
        }
    }

    /// A generation that is not full is sealed once it is old enough, so that a shard
    /// with little traffic does not keep its ids in memory.
    #[tokio::test]
    async fn a_generation_is_sealed_when_old_even_if_not_full() {
        let dir = TempDir::new().unwrap();
        let (_store, keyspaces, mut sm) = open(&dir);
        sm.apply([append(1, "ten_a", 0..10)]).await.unwrap();
        keyspaces.dedup.wait_ingested();
        assert_eq!(keyspaces.dedup.overlay_len(), 10, "young: kept");
        keyspaces
            .dedup
            .set_generation_age_max(std::time::Duration::ZERO);
        sm.apply([append(2, "ten_a", 10..12)]).await.unwrap();
        keyspaces.dedup.wait_ingested();
        assert_eq!(keyspaces.dedup.overlay_len(), 0);
        assert_eq!(contents(&keyspaces.dedup.keyspace()).len(), 12);
    }

    /// Once the shard has trained a dictionary, apply stores events compressed, and
    /// reads, dedup hits and leaf hashes see the canonical bytes.
    #[tokio::test]
    async fn events_after_a_trained_dictionary_are_compressed_and_read_back_alike() {
        let dir = TempDir::new().unwrap();
        let (_store, keyspaces, mut sm) = open(&dir);
        let first = super::super::event_codec::TRAIN_AT_EVENTS[0];
        let entries: Vec<Entry> = (0..first / 500)
            .map(|batch| append(batch + 1, "ten_a", batch * 500..(batch + 1) * 500))
            .collect();
        sm.apply(entries).await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while keyspaces.codec.dictionaries() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "a dictionary is trained"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let index = first / 500 + 1;
        let responses = sm
            .apply([append(index, "ten_a", first..first + 100)])
            .await
            .unwrap();
        let receipt = &responses[0].receipts[7];
        let tenant = keyspaces.tenants.get("ten_a").unwrap().expect("tenant");
        let stream_no = TenantState::decode(&tenant).expect("state").stream_no;
        let value = keyspaces
            .events
            .get(event_key(stream_no, receipt.seq))
            .unwrap()
            .expect("stored");
        assert_eq!(value[0], super::super::event_codec::TAG_ZSTD, "compressed");
        let event_id = format!("evt_{}", first + 7);
        let read = crate::shard::reader::get_event(&keyspaces, "ten_a", &event_id)
            .unwrap()
            .expect("found");
        assert_eq!(read.leaf_hash, receipt.leaf_hash);
        assert_eq!(read.stored.event.event_id, event_id);
        // A retry is answered from the compressed event: the same receipt.
        let retried = sm
            .apply([append(index + 1, "ten_a", first + 7..first + 8)])
            .await
            .unwrap();
        assert!(retried[0].receipts[0].deduplicated);
        assert_eq!(retried[0].receipts[0].leaf_hash, receipt.leaf_hash);
    }

    /// Clearing a keyspace is durable at once in fjall and the records load in several
    /// batches, so a crash inside an install leaves a cleared or half-loaded state under
    /// the old applied id. The state machine finishes such an install when it opens.
    #[tokio::test]
    async fn an_interrupted_install_is_finished_when_the_state_machine_opens() {
        let source_dir = TempDir::new().unwrap();
        let (_source_store, source_keyspaces, mut source) = open(&source_dir);
        source
            .apply([append(1, "ten_a", 0..5), append(2, "ten_b", 5..8)])
            .await
            .unwrap();
        let snapshot = build_snapshot(&mut source).await;
        let meta = snapshot.meta.clone();

        let dir = TempDir::new().unwrap();
        let (store, keyspaces, mut target) = open(&dir);
        target.apply([append(1, "ten_c", 100..103)]).await.unwrap();
        {
            // The install's durable first steps, then a crash: one keyspace cleared,
            // nothing loaded, the applied id still the old one.
            let file = snapshot.snapshot.into_std().await;
            let mut inner = target.lock();
            inner.begin_install(&meta, file).unwrap();
            inner.keyspaces.events.clear().unwrap();
        }
        drop(target);
        assert_eq!(
            read_meta::<Option<LogId>>(&keyspaces.sm_meta, KEY_APPLIED)
                .unwrap()
                .flatten()
                .map(|log_id| log_id.index),
            Some(1)
        );

        let mut reopened = StateMachine::open(store.db.clone(), &keyspaces, None).expect("reopen");
        assert_eq!(reopened.applied_state().await.unwrap().0, meta.last_log_id);
        assert_eq!(reopened.applied.applied_index(), Some(2));
        assert_eq!(
            dedup_contents(&keyspaces.dedup),
            dedup_contents(&source_keyspaces.dedup)
        );
        for (installed, original) in [
            (&keyspaces.events, &source_keyspaces.events),
            (&keyspaces.tenants, &source_keyspaces.tenants),
            (&keyspaces.chain, &source_keyspaces.chain),
        ] {
            assert_eq!(contents(installed), contents(original));
        }
        assert!(!keyspaces.sm_meta.contains_key(KEY_INSTALLING).unwrap());
        let current = reopened
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("current");
        assert_eq!(current.meta, meta);

        // An install that runs to its end leaves no marker either.
        let again = build_snapshot(&mut source).await;
        let receiving = receive(&mut reopened, again.snapshot).await;
        reopened
            .install_snapshot(&again.meta, receiving)
            .await
            .unwrap();
        assert!(!keyspaces.sm_meta.contains_key(KEY_INSTALLING).unwrap());
        assert_eq!(
            contents(&keyspaces.events),
            contents(&source_keyspaces.events)
        );
    }

    /// A single-replica group's snapshot holds no records (nobody will install it; it
    /// lets the log be purged) and an install of one is refused; once the group has a
    /// second member, snapshots hold the whole state again.
    #[tokio::test]
    async fn a_single_replica_snapshot_holds_no_records_and_is_never_installed() {
        let dir = TempDir::new().unwrap();
        let (_store, keyspaces, mut source) = open(&dir);
        let members = |ids: &[u64]| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
            payload: EntryPayload::Membership(openraft::Membership::new(
                vec![ids.iter().copied().collect()],
                None,
            )),
        };
        source.apply([members(&[1])]).await.unwrap();
        let mut events = append(2, "ten_a", 0..500);
        source.apply([events.clone()]).await.unwrap();
        let single = build_snapshot(&mut source).await;
        let single_bytes = std::fs::metadata(
            keyspaces
                .snapshot_dir
                .join(format!("{}.snap", single.meta.snapshot_id)),
        )
        .expect("the snapshot file")
        .len();
        assert!(
            single_bytes < 1_000,
            "a record-less snapshot of {single_bytes} bytes"
        );

        let target_dir = TempDir::new().unwrap();
        let (_target_store, target_keyspaces, mut target) = open(&target_dir);
        let receiving = receive(&mut target, single.snapshot).await;
        let error = target
            .install_snapshot(&single.meta, receiving)
            .await
            .expect_err("a record-less snapshot is never installed");
        assert!(error.to_string().contains("holds no records"), "{error}");
        assert!(contents(&target_keyspaces.events).is_empty());

        let mut three = members(&[1, 2, 3]);
        three.log_id.index = 3;
        events.log_id.index = 4;
        source.apply([three]).await.unwrap();
        let full = build_snapshot(&mut source).await;
        let receiving = receive(&mut target, full.snapshot).await;
        target
            .install_snapshot(&full.meta, receiving)
            .await
            .unwrap();
        assert_eq!(contents(&target_keyspaces.events).len(), 500);
    }

    /// A new snapshot replaces the old one: the pointer names it, the old file is
    /// deleted once the pointer is durable, and a reader that opened the old one
    /// before still reads it whole.
    #[tokio::test]
    async fn a_new_snapshot_replaces_the_file_of_the_one_before() {
        let dir = TempDir::new().unwrap();
        let (_store, keyspaces, mut sm) = open(&dir);
        sm.apply([append(1, "ten_a", 0..10)]).await.unwrap();
        let first = build_snapshot(&mut sm).await;
        let mut first_data = sm.get_current_snapshot().await.unwrap().unwrap().snapshot;
        let files = || {
            let mut names: Vec<String> = std::fs::read_dir(keyspaces.snapshot_dir.as_ref())
                .unwrap()
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        assert_eq!(files(), vec![format!("{}.snap", first.meta.snapshot_id)]);

        sm.apply([append(2, "ten_a", 10..20)]).await.unwrap();
        let second = build_snapshot(&mut sm).await;
        assert_ne!(first.meta.snapshot_id, second.meta.snapshot_id);
        assert_eq!(files(), vec![format!("{}.snap", second.meta.snapshot_id)]);
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, second.meta);

        // Both handles of the first snapshot were opened before its file was deleted.
        let mut from_build = Vec::new();
        let mut first_snapshot = first.snapshot;
        tokio::io::AsyncReadExt::read_to_end(&mut *first_snapshot, &mut from_build)
            .await
            .unwrap();
        let mut from_current = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut *first_data, &mut from_current)
            .await
            .unwrap();
        assert!(from_build.starts_with(SNAPSHOT_MAGIC));
        assert_eq!(from_build, from_current);
    }

    /// A snapshot names its cluster, shard and epoch; one of another cluster or shard,
    /// or of an earlier epoch, is refused before anything changes.
    #[tokio::test]
    async fn snapshots_of_another_group_or_an_earlier_epoch_are_refused() {
        let stamp = |cluster: &str, shard, epoch| SnapshotStamp {
            cluster: cluster.to_string(),
            shard,
            epoch,
        };
        let cases = [
            (stamp("trail", 2, 3), "not built from shard 1"),
            (stamp("other", 1, 3), "built in cluster \"other\""),
            (stamp("trail", 1, 2), "stale: built in epoch 2"),
        ];
        for (source_stamp, reason) in cases {
            let source_dir = TempDir::new().unwrap();
            let source_store = NodeStore::open(source_dir.path()).expect("node store");
            let source_keyspaces = source_store.shard(source_stamp.shard).expect("keyspaces");
            let mut source = StateMachine::open_stamped(
                source_store.db.clone(),
                &source_keyspaces,
                None,
                source_stamp.clone(),
            )
            .unwrap();
            source.apply([append(1, "ten_a", 0..5)]).await.unwrap();
            let snapshot = build_snapshot(&mut source).await;
            let name: SnapshotName = snapshot.meta.snapshot_id.parse().unwrap();
            assert_eq!(name.stamp, source_stamp);

            let dir = TempDir::new().unwrap();
            let store = NodeStore::open(dir.path()).expect("node store");
            let keyspaces = store.shard(1).expect("keyspaces");
            let mut target = StateMachine::open_stamped(
                store.db.clone(),
                &keyspaces,
                None,
                stamp("trail", 1, 3),
            )
            .unwrap();
            target.apply([append(1, "ten_c", 100..103)]).await.unwrap();
            let before = contents(&keyspaces.events);
            let receiving = receive(&mut target, snapshot.snapshot).await;
            let error = target
                .install_snapshot(&snapshot.meta, receiving)
                .await
                .expect_err("refused");
            assert!(error.to_string().contains(reason), "{reason}: {error}");
            assert_eq!(contents(&keyspaces.events), before);
            assert!(!keyspaces.sm_meta.contains_key(KEY_INSTALLING).unwrap());
        }
    }
}
