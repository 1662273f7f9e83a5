//! A replica's disk, in memory, with a crash model; and the openraft log store and
//! state machine over it.
//!
//! The disk is one journal, as the node's fjall database is (the Raft log, the vote and
//! the state machine share it): every change is made at once in memory and recorded,
//! with what it replaced, in the list of unsynced changes. An fsync empties that list
//! and calls the `LogFlushed` callbacks waiting for it. A crash keeps a seeded prefix
//! of the unsynced changes (a torn journal tail) and takes back the rest, newest first.
//!
//! The state machine drives `trail_node::ledger::Ledger` exactly as
//! `node/src/storage/state_machine.rs` does: apply every entry of the call, seal the
//! batch, execute the writes together with the applied id as one atomic change, then
//! `batch_committed`. It does not fsync: the entries are durable in the log already.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, StorageIOError,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use trail_node::ledger::merkle::root_of;
use trail_node::ledger::{
    block_hash, leaf_hash, BlockHeader, BlockRecord, Ledger, LedgerResponse, LedgerWrite,
    MemoryStore, Replaced, TenantState,
};

use super::check::Checker;
use super::{
    Entry, LogId, LogState, PlantedBug, SimConfig, Snapshot, SnapshotMeta, StorageError,
    StoredMembership, Vote,
};

/// With `skip-seq`, a tenant whose next seq is a multiple of this skips one.
const SKIP_SEQ_EVERY: u64 = 7;

#[derive(Clone)]
pub struct Disk {
    inner: Arc<Mutex<DiskState>>,
    /// Wakes the syncer after an append.
    notify: Arc<tokio::sync::Notify>,
}

pub struct DiskState {
    pub node: u64,
    /// Bumped by every crash; stores of an older incarnation refuse to work.
    pub incarnation: u64,
    pub log: BTreeMap<u64, Entry>,
    pub purged: Option<LogId>,
    pub vote: Option<Vote>,
    pub committed: Option<LogId>,
    pub sm: SmState,
    /// The in-memory ledger of the running state machine (rebuilt on restart).
    pub ledger: Ledger,
    /// The current snapshot; made durable (fsynced) when it is set.
    pub snapshot: Option<(SnapshotMeta, Vec<u8>)>,
    snapshots_built: u64,
    /// Changes since the last fsync, oldest first, each with what it replaced.
    unsynced: Vec<Undo>,
    /// `LogFlushed` callbacks waiting for the next fsync.
    waiting: Vec<LogFlushed<SimConfig>>,
    rng: StdRng,
    fsync_latency_us: (u64, u64),
    pub planted: Option<PlantedBug>,
    /// With `seal-order`, this replica seals blocks with two leaves swapped.
    pub seal_order_victim: bool,
    /// The log reader returns whatever entries of a range exist, as
    /// `node/src/storage/log_store.rs` does, instead of only the run that starts at the
    /// range's start (see `Options::gapped_log_reads`).
    pub gapped_log_reads: bool,
    pub fsyncs: u64,
    pub lost_on_crash: u64,
}

#[derive(Clone, Default)]
pub struct SmState {
    pub store: MemoryStore,
    pub applied: Option<LogId>,
    pub membership: StoredMembership,
    /// The applied id before the last apply batch (what `apply-twice-after-restart`
    /// wrongly restarts from).
    pub batch_start: Option<LogId>,
}

enum Undo {
    LogPut(u64, Option<Entry>),
    LogRemoved(Vec<Entry>),
    Purged(Vec<Entry>, Option<LogId>),
    Vote(Option<Vote>),
    Committed(Option<LogId>),
    Apply {
        replaced: Vec<Replaced>,
        applied: Option<LogId>,
        membership: StoredMembership,
        batch_start: Option<LogId>,
    },
}

impl Disk {
    pub fn new(
        node: u64,
        seed: u64,
        fsync_latency_us: (u64, u64),
        planted: Option<PlantedBug>,
        seal_order_victim: bool,
        gapped_log_reads: bool,
    ) -> Disk {
        Disk {
            inner: Arc::new(Mutex::new(DiskState {
                node,
                incarnation: 0,
                log: BTreeMap::new(),
                purged: None,
                vote: None,
                committed: None,
                sm: SmState::default(),
                ledger: Ledger::default(),
                snapshot: None,
                snapshots_built: 0,
                unsynced: Vec::new(),
                waiting: Vec::new(),
                rng: StdRng::seed_from_u64(seed),
                fsync_latency_us,
                planted,
                seal_order_victim,
                gapped_log_reads,
                fsyncs: 0,
                lost_on_crash: 0,
            })),
            notify: Arc::new(tokio::sync::Notify::new()),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, DiskState> {
        self.inner.lock().expect("disk lock")
    }

    /// The fsync: every change so far is durable; waiting appends are acknowledged.
    pub fn sync(&self) {
        let waiting = {
            let mut disk = self.lock();
            disk.unsynced.clear();
            disk.fsyncs += 1;
            std::mem::take(&mut disk.waiting)
        };
        for callback in waiting {
            callback.log_io_completed(Ok(()));
        }
    }

    fn fsync_latency(&self) -> Duration {
        let mut disk = self.lock();
        let (low, high) = disk.fsync_latency_us;
        Duration::from_micros(disk.rng.gen_range(low..=high))
    }

    /// The syncer of one incarnation: an fsync shortly after each append (appends that
    /// arrive meanwhile share it), as `node/src/storage/syncer.rs` groups them.
    pub async fn run_syncer(self) {
        loop {
            self.notify.notified().await;
            let latency = self.fsync_latency();
            tokio::time::sleep(latency).await;
            self.sync();
        }
    }

    /// With `ack-before-fsync`: the journal is flushed on a timer only.
    pub async fn run_lazy_flusher(self, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            self.sync();
        }
    }

    /// A crash: the unsynced tail of the journal is lost, except a seeded prefix of it
    /// (what happened to reach the disk). Returns the new incarnation.
    pub fn crash(&self) -> u64 {
        let mut disk = self.lock();
        let unsynced = std::mem::take(&mut disk.unsynced);
        let keep = disk.rng.gen_range(0..=unsynced.len());
        disk.lost_on_crash += (unsynced.len() - keep) as u64;
        for undo in unsynced.into_iter().skip(keep).rev() {
            disk.undo(undo);
        }
        disk.waiting.clear();
        disk.incarnation += 1;
        disk.ledger = Ledger::default();
        disk.incarnation
    }

    /// The stores of incarnation `incarnation`, as a restart opens them.
    pub fn open(&self, incarnation: u64, checker: Checker) -> (LogStore, StateMachine) {
        {
            let mut disk = self.lock();
            assert_eq!(disk.incarnation, incarnation, "opened by its incarnation");
            // As `StateMachine::open`: the ledger is rebuilt from the stored tenants.
            disk.ledger = Ledger::from_tenants(disk.sm.store.tenants.clone());
            if disk.planted == Some(PlantedBug::ApplyTwiceAfterRestart) && incarnation > 0 {
                // The bug: the applied id is forgotten and the last batch is applied
                // again on top of its own writes.
                let start = disk.sm.batch_start;
                let purged = disk.purged.map(|log_id| log_id.index);
                let behind_purge = match (start, purged) {
                    (_, None) => false,
                    (None, Some(_)) => true,
                    (Some(start), Some(purged)) => start.index < purged,
                };
                if !behind_purge && start != disk.sm.applied {
                    disk.sm.applied = start;
                }
            }
        }
        {
            let disk = self.lock();
            checker.record(&format!(
                "replica {} opens its disk: vote {:?}, log {:?}..={:?}, committed {:?}, \
                 applied {:?}, snapshot {:?}",
                disk.node,
                disk.vote,
                disk.purged.map(|log_id| log_id.index),
                disk.last_log_index(),
                disk.committed.map(|log_id| log_id.index),
                disk.sm.applied.map(|log_id| log_id.index),
                disk.snapshot
                    .as_ref()
                    .map(|(meta, _)| meta.snapshot_id.clone()),
            ));
        }
        let log = LogStore {
            disk: self.clone(),
            incarnation,
            checker: checker.clone(),
        };
        let sm = StateMachine {
            disk: self.clone(),
            incarnation,
            checker,
        };
        (log, sm)
    }
}

impl DiskState {
    fn undo(&mut self, undo: Undo) {
        match undo {
            Undo::LogPut(index, previous) => match previous {
                Some(entry) => {
                    self.log.insert(index, entry);
                }
                None => {
                    self.log.remove(&index);
                }
            },
            Undo::LogRemoved(entries) => {
                for entry in entries {
                    self.log.insert(entry.log_id.index, entry);
                }
            }
            Undo::Purged(entries, previous) => {
                for entry in entries {
                    self.log.insert(entry.log_id.index, entry);
                }
                self.purged = previous;
            }
            Undo::Vote(previous) => self.vote = previous,
            Undo::Committed(previous) => self.committed = previous,
            Undo::Apply {
                replaced,
                applied,
                membership,
                batch_start,
            } => {
                for replaced in replaced.into_iter().rev() {
                    self.sm.store.undo(replaced);
                }
                self.sm.applied = applied;
                self.sm.membership = membership;
                self.sm.batch_start = batch_start;
            }
        }
    }

    fn last_log_id(&self) -> Option<LogId> {
        self.log
            .last_key_value()
            .map(|(_, entry)| entry.log_id)
            .or(self.purged)
    }

    pub fn log_id_at(&self, index: u64) -> Option<LogId> {
        self.log.get(&index).map(|entry| entry.log_id)
    }

    pub fn last_log_index(&self) -> Option<u64> {
        self.last_log_id().map(|log_id| log_id.index)
    }

    /// A tenant's last seq as this replica's state machine has applied it.
    pub fn last_seq(&self, tenant: &str) -> u64 {
        self.ledger
            .tenant(tenant)
            .map_or(0, |state| state.next_seq - 1)
    }
}

fn stale(verb: ErrorVerb) -> StorageError {
    StorageError::IO {
        source: StorageIOError::new(
            ErrorSubject::Store,
            verb,
            AnyError::error("store of a crashed incarnation"),
        ),
    }
}

#[derive(Clone)]
pub struct LogStore {
    disk: Disk,
    incarnation: u64,
    checker: Checker,
}

impl LogStore {
    /// The disk, unless a crash ended this incarnation.
    fn lock(&self, verb: ErrorVerb) -> Result<MutexGuard<'_, DiskState>, Box<StorageError>> {
        let disk = self.disk.lock();
        if disk.incarnation != self.incarnation {
            return Err(Box::new(stale(verb)));
        }
        Ok(disk)
    }
}

impl RaftLogReader<SimConfig> for LogStore {
    async fn try_get_log_entries<RB>(&mut self, range: RB) -> Result<Vec<Entry>, StorageError>
    where
        RB: RangeBounds<u64> + Clone + Debug + OptionalSend,
    {
        let disk = self.lock(ErrorVerb::Read).map_err(|e| *e)?;
        Ok(disk
            .log
            .range(range)
            .map(|(_, entry)| entry.clone())
            .collect())
    }

    /// What replication sends: only the entries that follow `start` without a gap.
    /// openraft 0.9.25's replication stream sends what this returns after `prev` without
    /// checking that the first entry is `start`; a stale stream whose node purged the
    /// head of the range (seed 28399) would send entries that do not follow `prev`, and
    /// the follower appends them after a hole.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let disk = self.lock(ErrorVerb::Read).map_err(|e| *e)?;
        let mut entries: Vec<Entry> = Vec::new();
        for (index, entry) in disk.log.range(start..end) {
            if !disk.gapped_log_reads && *index != start + entries.len() as u64 {
                break;
            }
            entries.push(entry.clone());
        }
        Ok(entries)
    }
}

impl RaftLogStorage<SimConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState, StorageError> {
        let disk = self.lock(ErrorVerb::Read).map_err(|e| *e)?;
        Ok(LogState {
            last_purged_log_id: disk.purged,
            last_log_id: disk.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    /// Durable before it returns: the vote goes through an fsync.
    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        {
            let mut disk = self.lock(ErrorVerb::Write).map_err(|e| *e)?;
            let previous = disk.vote.replace(*vote);
            disk.unsynced.push(Undo::Vote(previous));
        }
        let latency = self.disk.fsync_latency();
        tokio::time::sleep(latency).await;
        self.disk.sync();
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.lock(ErrorVerb::Read).map_err(|e| *e)?.vote)
    }

    /// Not fsynced on its own (as in the node): it rides on the next fsync.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let mut disk = self.lock(ErrorVerb::Write).map_err(|e| *e)?;
        let previous = std::mem::replace(&mut disk.committed, committed);
        disk.unsynced.push(Undo::Committed(previous));
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.lock(ErrorVerb::Read).map_err(|e| *e)?.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<SimConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let ack_now = {
            let mut disk = self.lock(ErrorVerb::Write).map_err(|e| *e)?;
            let mut range = None;
            let node = disk.node;
            for entry in entries {
                let index = entry.log_id.index;
                // Log invariant: no holes. An entry follows the one before it (or the
                // purged prefix, or starts the log).
                let before = disk
                    .log
                    .range(..index)
                    .next_back()
                    .map(|(index, _)| *index)
                    .or(disk.purged.map(|log_id| log_id.index));
                if before.is_some_and(|before| before + 1 != index) {
                    self.checker.fail(format!(
                        "log hole: replica {node} appends {} after index {before:?}",
                        entry.log_id
                    ));
                }
                let (first, _) = range.get_or_insert((entry.log_id, entry.log_id));
                range = Some((*first, entry.log_id));
                let previous = disk.log.insert(index, entry);
                disk.unsynced.push(Undo::LogPut(index, previous));
            }
            if let Some((first, last)) = range {
                self.checker.record(&format!(
                    "replica {} log append {first}..={last}",
                    disk.node
                ));
            }
            if disk.planted == Some(PlantedBug::AckBeforeFsync) {
                true
            } else {
                disk.waiting.push(callback);
                self.disk.notify.notify_one();
                return Ok(());
            }
        };
        if ack_now {
            // The bug: the entries are acknowledged as durable before any fsync.
            callback.log_io_completed(Ok(()));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut disk = self.lock(ErrorVerb::Write).map_err(|e| *e)?;
        let removed: Vec<Entry> = disk.log.split_off(&log_id.index).into_values().collect();
        self.checker.record(&format!(
            "replica {} log truncate {log_id}.. ({} entries)",
            disk.node,
            removed.len()
        ));
        disk.unsynced.push(Undo::LogRemoved(removed));
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut disk = self.lock(ErrorVerb::Write).map_err(|e| *e)?;
        let kept = disk.log.split_off(&(log_id.index + 1));
        let removed: Vec<Entry> = std::mem::replace(&mut disk.log, kept)
            .into_values()
            .collect();
        let previous = disk.purged.replace(log_id);
        self.checker.record(&format!(
            "replica {} log purge ..={log_id} ({} entries)",
            disk.node,
            removed.len()
        ));
        disk.unsynced.push(Undo::Purged(removed, previous));
        Ok(())
    }
}

pub struct StateMachine {
    disk: Disk,
    incarnation: u64,
    checker: Checker,
}

impl StateMachine {
    /// The disk, unless a crash ended this incarnation.
    fn lock(&self, verb: ErrorVerb) -> Result<MutexGuard<'_, DiskState>, Box<StorageError>> {
        let disk = self.disk.lock();
        if disk.incarnation != self.incarnation {
            return Err(Box::new(stale(verb)));
        }
        Ok(disk)
    }
}

/// What a snapshot holds: the whole ledger store, the applied id and the membership.
#[derive(Serialize, Deserialize)]
struct SnapshotImage {
    events: Vec<((u32, u64), Vec<u8>)>,
    dedup: Vec<((u32, String), (u32, u64))>,
    tenants: Vec<(String, TenantState)>,
    blocks: Vec<((u32, u64), Vec<u8>)>,
    checkpoints: Vec<((u32, u64), String)>,
    applied: Option<LogId>,
    membership: StoredMembership,
}

impl SnapshotImage {
    fn of(sm: &SmState) -> SnapshotImage {
        let store = &sm.store;
        SnapshotImage {
            events: store
                .events
                .iter()
                .map(|(key, value)| (*key, value.clone()))
                .collect(),
            dedup: store
                .dedup
                .iter()
                .map(|(key, value)| (key.clone(), *value))
                .collect(),
            tenants: store
                .tenants
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
            blocks: store
                .blocks
                .iter()
                .map(|(key, record)| (*key, record.encode()))
                .collect(),
            checkpoints: store
                .checkpoints
                .iter()
                .map(|(key, note)| (*key, note.clone()))
                .collect(),
            applied: sm.applied,
            membership: sm.membership.clone(),
        }
    }

    fn into_store(self) -> Result<MemoryStore, String> {
        let mut blocks = BTreeMap::new();
        for (key, bytes) in self.blocks {
            let record = BlockRecord::decode(&bytes).map_err(|error| error.to_string())?;
            blocks.insert(key, record);
        }
        Ok(MemoryStore {
            events: self.events.into_iter().collect(),
            dedup: self.dedup.into_iter().collect(),
            tenants: self.tenants.into_iter().collect(),
            blocks,
            checkpoints: self.checkpoints.into_iter().collect(),
        })
    }
}

/// Feeds one write into the digest of an entry's effects.
fn digest_write(hasher: &mut Sha256, write: &LedgerWrite) {
    match write {
        LedgerWrite::Event {
            stream_no,
            seq,
            canonical,
        } => {
            hasher.update([1]);
            hasher.update(stream_no.to_be_bytes());
            hasher.update(seq.to_be_bytes());
            hasher.update(leaf_hash(canonical));
        }
        LedgerWrite::Dedup {
            tenant_no,
            event_id,
            stream_no,
            seq,
        } => {
            hasher.update([2]);
            hasher.update(tenant_no.to_be_bytes());
            hasher.update((event_id.len() as u64).to_be_bytes());
            hasher.update(event_id.as_bytes());
            hasher.update(stream_no.to_be_bytes());
            hasher.update(seq.to_be_bytes());
        }
        LedgerWrite::Tenant { tenant_id, state } => {
            hasher.update([3]);
            hasher.update(tenant_id.as_bytes());
            hasher.update(bincode::serialize(state).expect("tenant state serializes"));
        }
        LedgerWrite::Block {
            stream_no,
            block_index,
            last_seq,
            record,
        } => {
            hasher.update([4]);
            hasher.update(stream_no.to_be_bytes());
            hasher.update(block_index.to_be_bytes());
            hasher.update(last_seq.to_be_bytes());
            hasher.update(record.encode());
        }
        LedgerWrite::Checkpoint {
            stream_no,
            tree_size,
            note,
            ..
        } => {
            hasher.update([5]);
            hasher.update(stream_no.to_be_bytes());
            hasher.update(tree_size.to_be_bytes());
            hasher.update(note.as_bytes());
        }
    }
}

/// `seal-order`: the block's Merkle root (and so its hash) is computed over its leaves
/// with the first two swapped.
fn reorder_block(record: &mut BlockRecord, writes: &[LedgerWrite], store: &MemoryStore) {
    let Ok(mut header) = BlockHeader::decode(&record.header) else {
        return;
    };
    if header.count < 2 {
        return;
    }
    let stream_no_of_block = writes.iter().find_map(|write| match write {
        LedgerWrite::Block {
            stream_no,
            record: other,
            ..
        } if other.header == record.header => Some(*stream_no),
        _ => None,
    });
    let Some(stream_no) = stream_no_of_block else {
        return;
    };
    let mut leaves = Vec::new();
    for seq in header.first_seq..=header.last_seq() {
        let in_batch = writes.iter().find_map(|write| match write {
            LedgerWrite::Event {
                stream_no: number,
                seq: s,
                canonical,
            } if *number == stream_no && *s == seq => Some(leaf_hash(canonical)),
            _ => None,
        });
        match in_batch.or_else(|| store.events.get(&(stream_no, seq)).map(|c| leaf_hash(c))) {
            Some(leaf) => leaves.push(leaf),
            None => return,
        }
    }
    leaves.swap(0, 1);
    header.merkle_root = root_of(&leaves);
    record.header = header.encode();
    record.block_hash = block_hash(&record.header);
}

impl RaftStateMachine<SimConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let disk = self.lock(ErrorVerb::Read).map_err(|e| *e)?;
        Ok((disk.sm.applied, disk.sm.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<LedgerResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut guard = self.lock(ErrorVerb::Write).map_err(|e| *e)?;
        let disk = &mut *guard;
        let node = disk.node;
        let undo_applied = disk.sm.applied;
        let undo_membership = disk.sm.membership.clone();
        let undo_batch_start = disk.sm.batch_start;
        let mut writes: Vec<LedgerWrite> = Vec::new();
        let mut responses = Vec::new();

        if disk.planted == Some(PlantedBug::SkipSeq) {
            // The bug: at the start of a batch, a tenant whose next seq is a multiple of
            // SKIP_SEQ_EVERY moves on by one.
            let mut bumped = false;
            let mut tenants = disk.sm.store.tenants.clone();
            for (tenant_id, state) in tenants.iter_mut() {
                if state.next_seq % SKIP_SEQ_EVERY == 0 && state.chain.open.is_empty() {
                    state.next_seq += 1;
                    bumped = true;
                    writes.push(LedgerWrite::Tenant {
                        tenant_id: tenant_id.clone(),
                        state: state.clone(),
                    });
                }
            }
            if bumped {
                disk.ledger = Ledger::from_tenants(tenants);
            }
        }

        let mut first_index = None;
        for entry in entries {
            let log_id = entry.log_id;
            first_index.get_or_insert(log_id.index);
            if let Some(applied) = disk.sm.applied {
                if log_id.index <= applied.index {
                    self.checker.fail(format!(
                        "replica {node} applies {log_id} after {applied}: out of order"
                    ));
                }
            }
            let start = writes.len();
            let mut entry_digest = Sha256::new();
            entry_digest.update(log_id.leader_id.term.to_be_bytes());
            entry_digest.update(log_id.leader_id.node_id.to_be_bytes());
            entry_digest.update(log_id.index.to_be_bytes());
            let response = match &entry.payload {
                EntryPayload::Blank => {
                    entry_digest.update([0]);
                    LedgerResponse::default()
                }
                EntryPayload::Normal(command) => {
                    entry_digest.update([1]);
                    entry_digest.update(bincode::serialize(command).expect("commands serialize"));
                    let DiskState { ledger, sm, .. } = &mut *disk;
                    match ledger.apply(&sm.store, command, &mut writes) {
                        Ok(response) => response,
                        Err(never) => match never {},
                    }
                }
                EntryPayload::Membership(membership) => {
                    entry_digest.update([2]);
                    entry_digest.update(format!("{membership:?}").as_bytes());
                    disk.sm.membership = StoredMembership::new(Some(log_id), membership.clone());
                    LedgerResponse::default()
                }
            };
            let mut effects = Sha256::new();
            for write in &writes[start..] {
                digest_write(&mut effects, write);
            }
            effects.update(bincode::serialize(&response).expect("responses serialize"));
            self.checker.check(self.checker.on_apply(
                node,
                log_id,
                entry_digest.finalize().into(),
                effects.finalize().into(),
            ));
            responses.push(response);
            disk.sm.applied = Some(log_id);
        }

        disk.ledger.seal_batch(&mut writes);
        if disk.planted == Some(PlantedBug::SealOrder) && disk.seal_order_victim {
            let snapshot = writes.clone();
            for write in writes.iter_mut() {
                if let LedgerWrite::Block { record, .. } = write {
                    reorder_block(record, &snapshot, &disk.sm.store);
                }
            }
        }
        let mut replaced = Vec::with_capacity(writes.len());
        for write in writes {
            self.checker
                .check(self.checker.on_write(node, &write, &disk.sm.store));
            replaced.push(disk.sm.store.execute(write));
        }
        if let (Some(first), Some(last)) = (first_index, disk.sm.applied) {
            self.checker.record(&format!(
                "replica {node} applies {first}..={} ({} writes)",
                last.index,
                replaced.len()
            ));
        }
        disk.sm.batch_start = undo_applied;
        disk.unsynced.push(Undo::Apply {
            replaced,
            applied: undo_applied,
            membership: undo_membership,
            batch_start: undo_batch_start,
        });
        disk.ledger.batch_committed();
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        let mut disk = self.disk.lock();
        disk.snapshots_built += 1;
        // Taken between applies, so it matches the applied id (as the node's fjall
        // snapshot view does).
        SnapshotBuilder {
            image: SnapshotImage::of(&disk.sm),
            sequence: disk.snapshots_built,
            disk: self.disk.clone(),
            incarnation: self.incarnation,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let snapshot_error = |message: String| StorageError::IO {
            source: StorageIOError::new(
                ErrorSubject::Snapshot(None),
                ErrorVerb::Read,
                AnyError::error(message),
            ),
        };
        let image: SnapshotImage = bincode::deserialize(&bytes)
            .map_err(|error| snapshot_error(format!("snapshot does not decode: {error}")))?;
        if image.applied != meta.last_log_id {
            return Err(snapshot_error(
                "snapshot does not match its metadata".to_string(),
            ));
        }
        let membership = image.membership.clone();
        let store = image.into_store().map_err(snapshot_error)?;
        {
            let mut disk = self.lock(ErrorVerb::Write).map_err(|e| *e)?;
            let node = disk.node;
            self.checker.record(&format!(
                "replica {node} installs snapshot {} ({} events)",
                meta.snapshot_id,
                store.events.len()
            ));
            self.checker.check(self.checker.on_install(node, &store));
            disk.ledger = Ledger::from_tenants(store.tenants.clone());
            disk.sm = SmState {
                store,
                applied: meta.last_log_id,
                membership,
                batch_start: meta.last_log_id,
            };
            disk.snapshot = Some((meta.clone(), bytes));
        }
        // As the node: the installed state and the snapshot pointer are fsynced.
        self.disk.sync();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let disk = self.lock(ErrorVerb::Read).map_err(|e| *e)?;
        Ok(disk.snapshot.as_ref().map(|(meta, bytes)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(bytes.clone())),
        }))
    }
}

pub struct SnapshotBuilder {
    image: SnapshotImage,
    sequence: u64,
    disk: Disk,
    incarnation: u64,
}

impl RaftSnapshotBuilder<SimConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let snapshot_id = match self.image.applied {
            Some(log_id) => format!(
                "{}-{}-{}",
                log_id.leader_id.term, log_id.index, self.sequence
            ),
            None => format!("0-0-{}", self.sequence),
        };
        let meta = SnapshotMeta {
            last_log_id: self.image.applied,
            last_membership: self.image.membership.clone(),
            snapshot_id,
        };
        let bytes = bincode::serialize(&self.image).expect("snapshot serializes");
        {
            let mut disk = self.disk.lock();
            if disk.incarnation != self.incarnation {
                return Err(stale(ErrorVerb::Write));
            }
            disk.snapshot = Some((meta.clone(), bytes.clone()));
        }
        // The snapshot and its pointer are durable before the log they replace is
        // purged (the node fsyncs both).
        self.disk.sync();
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}
