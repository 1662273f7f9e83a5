//! A replica's disk, in memory, with a crash model; and the openraft log store and
//! state machine over it.
//!
//! The disk is one journal, as the node's fjall database is (the Raft log, the vote and
//! the state machine share it): every change is made at once in memory and recorded,
//! with what it replaced, in the list of unsynced changes. An fsync empties that list
//! and calls the `LogFlushed` callbacks waiting for it. A crash keeps a seeded prefix
//! of the unsynced changes (a torn journal tail) and takes back the rest, newest first.
//!
//! Disk faults on restart: every record carries a checksum (`raft/record.rs`) and a
//! replica scrubs its disk when it opens it; a flipped bit makes it refuse to start (the
//! harness then repairs it: out of the membership, wiped, back as a learner, promoted).
//! An fsync error stops the replica at once ([`rt::fatal`]): the appends waiting for
//! that fsync are never acknowledged, and the crash model takes back the unsynced tail.
//! A wipe gives the replica an empty disk and a new incarnation.
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
use super::record::{self, LogRecord, RecordKey};
use super::rt::{self, NodeKey};
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
    pub log: BTreeMap<u64, LogRecord>,
    pub purged: Option<LogId>,
    pub vote: Option<Vote>,
    pub committed: Option<LogId>,
    pub sm: SmState,
    /// The in-memory ledger of the running state machine (rebuilt on restart).
    pub ledger: Ledger,
    /// The current snapshot; made durable (fsynced) when it is set.
    pub snapshot: Option<StoredSnapshot>,
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
    /// The log store purges what openraft asks at once, as `node/src/storage/log_store.rs`
    /// does, instead of deferring a purge the state machine has not reached yet (see
    /// `Options::eager_purge`).
    pub eager_purge: bool,
    /// A snapshot install is two journal changes, the installed state and then the
    /// snapshot pointer, as `node/src/storage/state_machine.rs` writes them, instead of
    /// one (see `Options::split_install`).
    pub split_install: bool,
    /// A purge deferred until the state machine has applied or installed up to it.
    pending_purge: Option<LogId>,
    pub fsyncs: u64,
    pub lost_on_crash: u64,
    /// The next fsync fails (a disk fault the harness arms).
    pub fsync_error_armed: bool,
    pub fsync_errors: u64,
    /// With `fsync-error-ignored`: changes whose fsync failed. The kernel dropped their
    /// dirty pages: they are visible until the next crash, which loses them whatever
    /// fsyncs succeeded in between.
    failed_fsync: Vec<Undo>,
}

/// A snapshot as stored: its metadata, its bytes and the bytes' checksum.
#[derive(Clone)]
pub struct StoredSnapshot {
    pub meta: SnapshotMeta,
    pub bytes: Vec<u8>,
    pub checksum: u64,
}

impl StoredSnapshot {
    fn new(meta: SnapshotMeta, bytes: Vec<u8>) -> StoredSnapshot {
        let checksum = record::checksum(&bytes);
        StoredSnapshot {
            meta,
            bytes,
            checksum,
        }
    }
}

/// Where a bit flipped, for the trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flipped {
    LogEntry(u64),
    Record(RecordKey),
    Snapshot,
}

#[derive(Clone, Default)]
pub struct SmState {
    pub store: MemoryStore,
    pub applied: Option<LogId>,
    pub membership: StoredMembership,
    /// The applied id before the last apply batch (what `apply-twice-after-restart`
    /// wrongly restarts from).
    pub batch_start: Option<LogId>,
    /// Each record's checksum, taken when it was written.
    pub checksums: BTreeMap<RecordKey, u64>,
}

impl SmState {
    /// The state of an installed snapshot: every record's checksum taken anew.
    fn installed(store: MemoryStore, applied: Option<LogId>, membership: StoredMembership) -> Self {
        let mut checksums = BTreeMap::new();
        for key in RecordKey::all(&store) {
            let checksum = key.checksum(&store).expect("a listed record exists");
            checksums.insert(key, checksum);
        }
        SmState {
            store,
            applied,
            membership,
            batch_start: applied,
            checksums,
        }
    }
}

enum Undo {
    LogPut(u64, Option<LogRecord>),
    LogRemoved(Vec<LogRecord>),
    Purged(Vec<LogRecord>, Option<LogId>),
    Vote(Option<Vote>),
    Committed(Option<LogId>),
    /// A snapshot built; its fsync follows at once, so this is taken back only when
    /// that fsync fails.
    Snapshot(Option<StoredSnapshot>),
    /// A snapshot installed: the state machine's whole state (records, applied id,
    /// membership) and the current-snapshot pointer, replaced in one atomic change.
    /// Two changes would let a crash keep one without the other: a state machine
    /// applied beyond its current snapshot (openraft then purges the log to the applied
    /// id at startup, and the purged entries are in no snapshot) or a snapshot beyond
    /// the applied id; either breaks openraft's `purged <= snapshot <= committed`.
    Installed(Box<SmState>, Option<StoredSnapshot>),
    Apply {
        replaced: Vec<Replaced>,
        checksums: Vec<(RecordKey, Option<u64>)>,
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
                eager_purge: false,
                split_install: false,
                pending_purge: None,
                fsyncs: 0,
                lost_on_crash: 0,
                fsync_error_armed: false,
                fsync_errors: 0,
                failed_fsync: Vec::new(),
            })),
            notify: Arc::new(tokio::sync::Notify::new()),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, DiskState> {
        self.inner.lock().expect("disk lock")
    }

    /// The fsync: every change so far is durable; waiting appends are acknowledged.
    ///
    /// False when the fsync failed: the replica has stopped ([`rt::fatal`] crashed it,
    /// from inside the caller's task) and the caller must not go on. Nothing waiting
    /// for that fsync is acknowledged.
    #[must_use]
    pub fn sync(&self) -> bool {
        let waiting = {
            let mut disk = self.lock();
            if disk.fsync_error_armed {
                disk.fsync_error_armed = false;
                disk.fsync_errors += 1;
                if disk.planted == Some(PlantedBug::FsyncErrorIgnored) {
                    // The bug: the error is logged, the waiting appends acknowledged, and
                    // the fsync retried later; the changes it covered are not on disk.
                    let failed = std::mem::take(&mut disk.unsynced);
                    disk.failed_fsync.extend(failed);
                    std::mem::take(&mut disk.waiting)
                } else {
                    let key = NodeKey {
                        node: disk.node,
                        incarnation: disk.incarnation,
                    };
                    drop(disk);
                    rt::fatal(key, "fsync error".to_string());
                    return false;
                }
            } else {
                disk.unsynced.clear();
                disk.fsyncs += 1;
                std::mem::take(&mut disk.waiting)
            }
        };
        for callback in waiting {
            callback.log_io_completed(Ok(()));
        }
        true
    }

    /// After a failed fsync: the replica is stopped, and this task with it.
    async fn stopped() {
        std::future::pending::<()>().await;
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
            if !self.sync() {
                return Disk::stopped().await;
            }
        }
    }

    /// With `ack-before-fsync`: the journal is flushed on a timer only.
    pub async fn run_lazy_flusher(self, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            if !self.sync() {
                return Disk::stopped().await;
            }
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
        // With `fsync-error-ignored`: what a failed fsync covered was never written.
        let failed = std::mem::take(&mut disk.failed_fsync);
        disk.lost_on_crash += failed.len() as u64;
        for undo in failed.into_iter().rev() {
            disk.undo(undo);
        }
        disk.waiting.clear();
        disk.pending_purge = None;
        disk.incarnation += 1;
        disk.ledger = Ledger::default();
        disk.incarnation
    }

    /// The stores of incarnation `incarnation`, as a restart opens them; an error names
    /// the first corrupt record the scrub found (the replica must not start on it).
    pub fn open(
        &self,
        incarnation: u64,
        checker: Checker,
    ) -> Result<(LogStore, StateMachine), String> {
        {
            let mut disk = self.lock();
            assert_eq!(disk.incarnation, incarnation, "opened by its incarnation");
            if disk.planted != Some(PlantedBug::SkipChecksum) {
                disk.scrub()?;
            }
            // What any crash leaves must be a state openraft can start on.
            checker.check(disk.startable());
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
                    .map(|snapshot| snapshot.meta.snapshot_id.clone()),
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
        Ok((log, sm))
    }

    /// The disk is lost and replaced by an empty one (after the replica left the
    /// membership). Returns the new incarnation.
    pub fn wipe(&self) -> u64 {
        let mut disk = self.lock();
        disk.incarnation += 1;
        disk.log.clear();
        disk.purged = None;
        disk.vote = None;
        disk.committed = None;
        disk.sm = SmState::default();
        disk.ledger = Ledger::default();
        disk.snapshot = None;
        disk.unsynced.clear();
        disk.waiting.clear();
        disk.failed_fsync.clear();
        disk.fsync_error_armed = false;
        disk.pending_purge = None;
        disk.incarnation
    }

    /// Bit rot while the replica is down: one bit of one stored record (a log entry, a
    /// state-machine record or the snapshot, drawn by `rng`) flips; its checksum stays.
    pub fn flip_bit(&self, rng: &mut StdRng) -> Option<Flipped> {
        let mut disk = self.lock();
        let log_len = disk.log.len();
        let records_len = disk.sm.checksums.len();
        let snapshot_len = usize::from(disk.snapshot.is_some());
        let total = log_len + records_len + snapshot_len;
        if total == 0 {
            return None;
        }
        let pick = rng.gen_range(0..total);
        if pick < log_len {
            let index = *disk.log.keys().nth(pick).expect("in range");
            let record = disk.log.get_mut(&index).expect("present");
            return record.flip_bit(rng).then_some(Flipped::LogEntry(index));
        }
        if pick < log_len + records_len {
            let key = disk
                .sm
                .checksums
                .keys()
                .nth(pick - log_len)
                .expect("in range")
                .clone();
            let flipped = key.flip_bit(&mut disk.sm.store, rng);
            return flipped.then_some(Flipped::Record(key));
        }
        let snapshot = disk.snapshot.as_mut().expect("counted");
        record::flip_in_place(&mut snapshot.bytes, rng).then_some(Flipped::Snapshot)
    }

    /// Arms an fsync error: the next fsync of this disk fails.
    pub fn arm_fsync_error(&self) {
        self.lock().fsync_error_armed = true;
    }

    pub fn disarm_fsync_error(&self) {
        self.lock().fsync_error_armed = false;
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
            Undo::LogRemoved(records) => {
                for record in records {
                    self.log.insert(record.entry.log_id.index, record);
                }
            }
            Undo::Purged(records, previous) => {
                for record in records {
                    self.log.insert(record.entry.log_id.index, record);
                }
                self.purged = previous;
            }
            Undo::Vote(previous) => self.vote = previous,
            Undo::Snapshot(previous) => self.snapshot = previous,
            Undo::Installed(previous, snapshot) => {
                self.sm = *previous;
                self.snapshot = snapshot;
            }
            Undo::Committed(previous) => self.committed = previous,
            Undo::Apply {
                replaced,
                checksums,
                applied,
                membership,
                batch_start,
            } => {
                for replaced in replaced.into_iter().rev() {
                    self.sm.store.undo(replaced);
                }
                for (key, previous) in checksums.into_iter().rev() {
                    match previous {
                        Some(checksum) => self.sm.checksums.insert(key, checksum),
                        None => self.sm.checksums.remove(&key),
                    };
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
            .map(|(_, record)| record.entry.log_id)
            .or(self.purged)
    }

    /// Removes the log up to `log_id` (inclusive), as one journal change.
    fn purge_log(&mut self, log_id: LogId, checker: &Checker) {
        let kept = self.log.split_off(&(log_id.index + 1));
        let removed: Vec<LogRecord> = std::mem::replace(&mut self.log, kept)
            .into_values()
            .collect();
        let previous = self.purged.replace(log_id);
        checker.record(&format!(
            "replica {} log purge ..={log_id} ({} entries)",
            self.node,
            removed.len()
        ));
        self.unsynced.push(Undo::Purged(removed, previous));
    }

    /// A deferred purge, once the state machine has reached it: journaled after the
    /// change that reached it, so no crash keeps the purge without that change.
    fn purge_when_reached(&mut self, checker: &Checker) {
        let Some(pending) = self.pending_purge else {
            return;
        };
        if self
            .sm
            .applied
            .is_some_and(|applied| applied.index >= pending.index)
        {
            self.pending_purge = None;
            self.purge_log(pending, checker);
        }
    }

    /// What openraft 0.9.25 requires of the disk it starts on (`StorageHelper::
    /// get_initial_state`, then `RaftState::validate`: `purged <= snapshot <=
    /// committed`), stated as what a store must keep true across any crash:
    ///
    /// - the current snapshot covers the purged log (a purge is never durable without
    ///   the snapshot that covers it; with no snapshot, openraft builds one from the
    ///   state machine, which must then have applied the purged log);
    /// - the current snapshot is not beyond the state machine's applied id;
    /// - a state machine applied beyond the end of its log has that applied id as its
    ///   current snapshot: openraft purges the log to the applied id at startup
    ///   ("snapshot is installed but logs are not cleaned"), and those entries must be
    ///   in the snapshot it sends to replicas that lag.
    ///
    /// A debug build of openraft panics on the first two (`validit`); a release build
    /// starts and runs on an invalid state, so the harness checks them itself.
    pub fn startable(&self) -> Result<(), String> {
        let node = self.node;
        let applied = self.sm.applied;
        let snapshot = self.snapshot.as_ref().map(|s| s.meta.last_log_id);
        let index = |log_id: Option<LogId>| log_id.map(|log_id| log_id.index);
        // What openraft purges to at startup.
        let purge_upto = if self.last_log_id() < applied {
            applied
        } else {
            self.purged
        };
        let covered = match snapshot {
            Some(snapshot) => snapshot,
            None if purge_upto.is_some() => applied,
            None => None,
        };
        if index(purge_upto) > index(covered) {
            return Err(format!(
                "replica {node}'s disk after a crash: the log is purged (or openraft purges \
                 it at startup) to {:?}, but its snapshot covers only {:?} (state machine \
                 applied {:?}, log ends at {:?}): purged entries in no snapshot",
                index(purge_upto),
                index(covered),
                index(applied),
                self.last_log_index(),
            ));
        }
        if index(snapshot.flatten()) > index(applied) {
            return Err(format!(
                "replica {node}'s disk after a crash: its snapshot is at {:?}, beyond the \
                 state machine's applied {:?}",
                index(snapshot.flatten()),
                index(applied),
            ));
        }
        Ok(())
    }

    pub fn log_id_at(&self, index: u64) -> Option<LogId> {
        self.log.get(&index).map(|record| record.entry.log_id)
    }

    /// Verifies every stored record against its checksum, as a replica does when it
    /// opens its disk; names the first corrupt one.
    pub fn scrub(&self) -> Result<(), String> {
        for (index, record) in &self.log {
            if !record.is_intact() {
                return Err(format!("log entry {index} fails its checksum"));
            }
        }
        if self.sm.checksums.len() != RecordKey::all(&self.sm.store).len() {
            return Err("state machine records and checksums differ in number".to_string());
        }
        for (key, checksum) in &self.sm.checksums {
            if key.checksum(&self.sm.store) != Some(*checksum) {
                return Err(format!("state machine record {key:?} fails its checksum"));
            }
        }
        if let Some(snapshot) = &self.snapshot {
            if record::checksum(&snapshot.bytes) != snapshot.checksum {
                return Err(format!(
                    "snapshot {} fails its checksum",
                    snapshot.meta.snapshot_id
                ));
            }
        }
        Ok(())
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

    /// A log entry as read: its checksum is verified first (as the node's fjall block
    /// reads are). The replica scrubbed its disk when it opened it and bits flip only
    /// while it is down, so a mismatch here means the harness let a corrupt record
    /// through: a violation.
    fn read(&self, disk: &DiskState, record: &LogRecord) -> Entry {
        if disk.planted != Some(PlantedBug::SkipChecksum) && !record.is_intact() {
            self.checker.fail(format!(
                "replica {} read log entry {} that fails its checksum (corrupt data served)",
                disk.node, record.entry.log_id.index
            ));
        }
        record.entry.clone()
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
            .map(|(_, record)| self.read(&disk, record))
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
        for (index, record) in disk.log.range(start..end) {
            if !disk.gapped_log_reads && *index != start + entries.len() as u64 {
                break;
            }
            entries.push(self.read(&disk, record));
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
        if !self.disk.sync() {
            Disk::stopped().await;
        }
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
                let previous = disk.log.insert(index, LogRecord::new(entry));
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
        let removed: Vec<LogRecord> = disk.log.split_off(&log_id.index).into_values().collect();
        self.checker.record(&format!(
            "replica {} log truncate {log_id}.. ({} entries)",
            disk.node,
            removed.len()
        ));
        disk.unsynced.push(Undo::LogRemoved(removed));
        Ok(())
    }

    /// openraft 0.9.25 purges the log a received snapshot covers as soon as it hands
    /// the snapshot to the state machine (`install_full_snapshot` pushes `PurgeLog` with
    /// no condition), before the state machine has installed it. Journaled first, the
    /// purge can survive a crash (or an fsync error) that loses the install: the disk
    /// then lacks entries its state machine never applied, and the replica cannot
    /// catch up (seed 11974; `tests/regressions.rs`). So a purge beyond what the state
    /// machine has reached waits for it.
    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut disk = self.lock(ErrorVerb::Write).map_err(|e| *e)?;
        let reached = disk
            .sm
            .applied
            .is_some_and(|applied| applied.index >= log_id.index);
        if disk.eager_purge || reached {
            disk.purge_log(log_id, &self.checker);
            return Ok(());
        }
        self.checker.record(&format!(
            "replica {} log purge ..={log_id} deferred: state machine at {:?}",
            disk.node,
            disk.sm.applied.map(|applied| applied.index)
        ));
        let pending = disk
            .pending_purge
            .map_or(log_id, |pending| pending.max(log_id));
        disk.pending_purge = Some(pending);
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
            subtree_roots,
        } => {
            hasher.update([4]);
            hasher.update(stream_no.to_be_bytes());
            hasher.update(block_index.to_be_bytes());
            hasher.update(last_seq.to_be_bytes());
            hasher.update(record.encode());
            hasher.update(subtree_roots.concat());
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
        let mut checksums = Vec::with_capacity(writes.len());
        for write in writes {
            self.checker
                .check(self.checker.on_write(node, &write, &disk.sm.store));
            let key = RecordKey::of(&write);
            replaced.push(disk.sm.store.execute(write));
            // The record's checksum, taken as it is written.
            let checksum = key.checksum(&disk.sm.store).expect("just written");
            let previous = disk.sm.checksums.insert(key.clone(), checksum);
            checksums.push((key, previous));
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
            checksums,
            applied: undo_applied,
            membership: undo_membership,
            batch_start: undo_batch_start,
        });
        disk.ledger.batch_committed();
        disk.purge_when_reached(&self.checker);
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
            // One journal change: the installed state and the snapshot pointer (see
            // `Undo::Installed`); then the purge that waited for it.
            let installed = SmState::installed(store, meta.last_log_id, membership);
            let previous_sm = std::mem::replace(&mut disk.sm, installed);
            let previous_snapshot = disk
                .snapshot
                .replace(StoredSnapshot::new(meta.clone(), bytes));
            if disk.split_install {
                // The state first (the pointer still the old one), then the pointer.
                disk.unsynced.push(Undo::Installed(
                    Box::new(previous_sm),
                    previous_snapshot.clone(),
                ));
                disk.unsynced.push(Undo::Snapshot(previous_snapshot));
            } else {
                disk.unsynced
                    .push(Undo::Installed(Box::new(previous_sm), previous_snapshot));
            }
            disk.purge_when_reached(&self.checker);
        }
        // As the node: the installed state and the snapshot pointer are fsynced.
        if !self.disk.sync() {
            Disk::stopped().await;
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let disk = self.lock(ErrorVerb::Read).map_err(|e| *e)?;
        if let Some(snapshot) = &disk.snapshot {
            let intact = record::checksum(&snapshot.bytes) == snapshot.checksum;
            if disk.planted != Some(PlantedBug::SkipChecksum) && !intact {
                self.checker.fail(format!(
                    "replica {} read snapshot {} that fails its checksum (corrupt data served)",
                    disk.node, snapshot.meta.snapshot_id
                ));
            }
        }
        Ok(disk.snapshot.as_ref().map(|snapshot| Snapshot {
            meta: snapshot.meta.clone(),
            snapshot: Box::new(Cursor::new(snapshot.bytes.clone())),
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
            let previous = disk
                .snapshot
                .replace(StoredSnapshot::new(meta.clone(), bytes.clone()));
            disk.unsynced.push(Undo::Snapshot(previous));
        }
        // The snapshot and its pointer are durable before the log they replace is
        // purged (the node fsyncs both).
        if !self.disk.sync() {
            Disk::stopped().await;
        }
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}
