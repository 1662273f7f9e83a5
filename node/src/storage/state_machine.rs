//! The state machine of one shard on fjall (`RaftStateMachine`): executes the ledger's
//! writes and builds snapshots.
//!
//! Apply writes the events, the changed tenant states and the applied log id in one
//! atomic fjall batch, then records the new event ids in the shard's dedup overlay
//! (they reach the dedup database behind the log: `dedup.rs`). No fsync of its own: the entries it applies
//! are already durable in the Raft log (same journal), and after a crash openraft
//! re-applies from the persisted applied id. Apply runs on the blocking pool: a batch of
//! 1,000 events is a few milliseconds of CPU, too long for an async worker.
//!
//! The rest of the state machine's work has files of its own: the snapshot file format
//! (`snapshot_file.rs`), installs of received snapshots and the dedup index's checks
//! at open (`install.rs`), and the migrations of earlier layouts (`migrate.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fjall::{Database, Keyspace};
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder};

use super::applied::AppliedProgress;
use super::dedup::DedupIndex;
use super::event_codec::Encoder;
use super::log_store::storage_io_error;
use super::publish::Publisher;
use super::snapshot_file::{
    format_error, read_snapshot, write_snapshot, write_snapshot_file, Records,
};
use super::snapshot_name::{SnapshotName, SnapshotStamp};
use super::{
    chain_key, decode_position, dedup_key, event_key, position_value, FeedRuns, NodeStore,
    ShardKeyspaces, CHAIN_BLOCK, CHAIN_BLOCK_END, CHAIN_CHECKPOINT, CHAIN_SUBTREES,
};
use crate::consensus::{
    Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use crate::ledger::event::StoredEvent;
use crate::ledger::routing::ShardId;
use crate::ledger::{
    leaf_hash, BlockRecord, Ledger, LedgerLookup, LedgerResponse, LedgerWrite, NoteVerifier,
    RecordedLeaf, TenantState,
};

pub(super) const KEY_APPLIED: &[u8] = b"applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";
pub(super) const KEY_SNAPSHOT: &[u8] = b"snapshot";

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

pub(super) struct Inner {
    pub(super) db: Database,
    pub(super) keyspaces: ShardKeyspaces,
    pub(super) ledger: Ledger,
    pub(super) last_applied: Option<LogId>,
    pub(super) last_membership: StoredMembership,
    pub(super) counters: Arc<ShardCounters>,
    pub(super) applied: Arc<AppliedProgress>,
    pub(super) snapshots_built: u64,
    /// Publishes recorded checkpoints outside the store.
    pub(super) publisher: Option<Publisher>,
    /// The cluster, group and epoch this replica's snapshots carry and installs check.
    pub(super) stamp: SnapshotStamp,
    /// Compresses event values under the shard's newest dictionary (`event_codec.rs`).
    pub(super) encoder: Encoder,
    /// The writes of the apply in progress; empty between applies, its capacity kept
    /// (up to [`APPLY_WRITES_KEPT_MAX`]).
    pub(super) writes: Vec<LedgerWrite>,
    /// The checkpoint key apply checks notes' signatures with (`None`: not checked).
    pub(super) note_verifier: Option<Arc<NoteVerifier>>,
}

impl StateMachine {
    /// Opens a single node's replica (cluster `trail`, epoch 0).
    pub fn open(
        store: &NodeStore,
        keyspaces: &ShardKeyspaces,
        publisher: Option<Publisher>,
    ) -> Result<StateMachine, StorageError> {
        let stamp = SnapshotStamp {
            cluster: "trail".to_string(),
            shard: keyspaces.shard,
            epoch: 0,
        };
        Self::open_stamped(store, keyspaces, publisher, stamp)
    }

    /// Opens a replica whose snapshots carry `stamp` (and which refuses to install one
    /// of another cluster or group, or an earlier epoch: `storage::snapshot_name`).
    /// `keyspaces` are `store`'s, of the shard `stamp` names.
    pub fn open_stamped(
        store: &NodeStore,
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
            db: store.db.clone(),
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
        if !inner
            .keyspaces
            .faults
            .planted(super::faults::StorageBug::OverlayNotRebuiltAtOpen)
        {
            inner.rebuild_dedup_overlay()?;
        }
        inner.remove_stale_snapshot_files()?;
        inner.publish_missing_checkpoints();
        inner.publish_counters();
        Ok(StateMachine {
            inner: Arc::new(Mutex::new(inner)),
            counters,
            applied,
        })
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
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
        keyspaces.faults.crash_point("apply.committed");
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
    pub(super) fn put_applied(&self, batch: &mut fjall::OwnedWriteBatch) {
        let sm_meta = &self.keyspaces.sm_meta;
        let applied = bincode::serialize(&self.last_applied).expect("log id serializes");
        let membership = bincode::serialize(&self.last_membership).expect("membership serializes");
        batch.insert(sm_meta, KEY_APPLIED, applied);
        batch.insert(sm_meta, KEY_MEMBERSHIP, membership);
    }

    /// Publishes the counters and the applied index. Called only after the batch that
    /// applied it is committed to the journal.
    pub(super) fn publish_counters(&self) {
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

    pub(super) fn current_snapshot_meta(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        read_meta(&self.keyspaces.sm_meta, KEY_SNAPSHOT)
    }

    pub(super) fn snapshot_path(&self, meta: &SnapshotMeta) -> PathBuf {
        self.keyspaces
            .snapshot_dir
            .join(format!("{}.snap", meta.snapshot_id))
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

pub(super) fn load_ledger(tenants: &Keyspace) -> Result<Ledger, StorageError> {
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

/// A shard's state machine as its store holds it, read without opening it (which
/// would finish an interrupted install and start the dedup index's work). For
/// checkers: the simulation compares replicas that opened at the same applied index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedState {
    pub applied_index: Option<u64>,
    /// An install was interrupted; opening the state machine finishes it.
    pub install_marked: bool,
    /// Each tenant's recorded state, as stored.
    pub tenants: BTreeMap<String, Vec<u8>>,
}

impl NodeStore {
    /// Shard `shard`'s [`RecordedState`].
    pub fn recorded_state(&self, shard: ShardId) -> Result<RecordedState, StorageError> {
        let open = |name: &str| {
            self.db
                .keyspace(
                    &format!("s{shard}.{name}"),
                    fjall::KeyspaceCreateOptions::default,
                )
                .map_err(read_state_machine)
        };
        let sm_meta = open("sm_meta")?;
        let applied: Option<LogId> = read_meta(&sm_meta, KEY_APPLIED)?.flatten();
        let install_marked = sm_meta
            .contains_key(super::install::KEY_INSTALLING)
            .map_err(read_state_machine)?;
        let mut tenants = BTreeMap::new();
        for guard in open("tenants")?.iter() {
            let (key, value) = guard.into_inner().map_err(read_state_machine)?;
            tenants.insert(String::from_utf8_lossy(&key).into_owned(), value.to_vec());
        }
        Ok(RecordedState {
            applied_index: applied.map(|log_id| log_id.index),
            install_marked,
            tenants,
        })
    }
}

pub(super) fn read_meta<T: serde::de::DeserializeOwned>(
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

pub(super) fn read_state_machine(error: fjall::Error) -> StorageError {
    storage_io_error(ErrorSubject::StateMachine, ErrorVerb::Read, &error)
}

pub(super) fn write_state_machine(error: fjall::Error) -> StorageError {
    storage_io_error(ErrorSubject::StateMachine, ErrorVerb::Write, &error)
}

/// What the state machine's unit tests share (here and in `install.rs`, `migrate.rs`
/// and `snapshot_file.rs`): entries of sample events, a shard on a temporary
/// directory, snapshots built and received, keyspace contents.
#[cfg(test)]
pub(super) mod test_support {
    use openraft::{CommittedLeaderId, EntryPayload};
    use tempfile::TempDir;

    use super::*;
    use crate::ledger::{ActorKind, EventRecord, LedgerCommand, Outcome};
    use crate::storage::NodeStore;

    pub(crate) fn append(index: u64, tenant_id: &str, numbers: std::ops::Range<u64>) -> Entry {
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

    pub(crate) fn open(dir: &TempDir) -> (NodeStore, ShardKeyspaces, StateMachine) {
        let store = NodeStore::open(dir.path()).expect("node store");
        let keyspaces = store.shard(1).expect("keyspaces");
        let sm = StateMachine::open(&store, &keyspaces, None).expect("state machine");
        (store, keyspaces, sm)
    }

    /// A snapshot of `sm` as it is now.
    pub(crate) async fn build_snapshot(sm: &mut StateMachine) -> Snapshot {
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap()
    }

    /// A built snapshot's data as the receiving side gets it over the network.
    pub(crate) async fn receive(
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

    pub(crate) fn contents(keyspace: &Keyspace) -> Vec<(Vec<u8>, Vec<u8>)> {
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
    pub(crate) fn dedup_contents(index: &DedupIndex) -> Vec<(Vec<u8>, Vec<u8>)> {
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

    /// Entries of 10 events each over four tenants, `events` in all, numbered from
    /// `first` (event ids `evt_<number>`), log indexes from `index`.
    pub(crate) fn four_tenants(index: u64, first: u64, events: u64) -> Vec<Entry> {
        (0..events / 10)
            .map(|n| {
                let start = first + n * 10;
                append(index + n, &format!("ten_{}", n % 4), start..start + 10)
            })
            .collect()
    }

    /// Ids of `entries`' events found in the dedup index (overlay or keyspace).
    pub(crate) fn ids_found(
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

    pub(crate) fn tenant_numbers(sm: &StateMachine) -> Vec<(String, u32)> {
        sm.lock()
            .ledger
            .tenants()
            .map(|(tenant, state)| (tenant.to_string(), state.tenant_no))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use fjall::PersistMode;
    use tempfile::TempDir;

    use super::super::dedup::{GENERATION_IDS, KEY_FRONTIER};
    use super::super::snapshot_file::SNAPSHOT_MAGIC;
    use super::test_support::{append, build_snapshot, contents, open};
    use super::*;

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
}
