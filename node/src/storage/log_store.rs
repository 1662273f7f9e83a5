//! The Raft log of one shard on fjall (`RaftLogStorage`).
//!
//! Durability: `append` writes the entries into the shared journal (visible to readers
//! at once) and hands the `LogFlushed` callback to the [`Syncer`], which calls it only
//! after the fsync that covers them. Votes are fsynced before `save_vote` returns.
//!
//! Two rules about crashes that openraft 0.9.25 does not keep by itself (found by the
//! simulation, docs/SIMULATION.md "Bugs found"):
//!
//! - **Reads never skip a missing entry** (seed 28399). A leader's replication stream
//!   can outlive its leadership and read a range whose head this node has since purged;
//!   openraft sends whatever comes back after the range's `prev_log_id`, so entries
//!   after a gap would land after a hole in the follower's log. Replication's reads
//!   (`limited_get_log_entries`) return only the entries that follow the range's start
//!   without a gap, nothing when the start is missing; other reads return one gap-free
//!   run (openraft's conformance suite requires them to skip a missing head).
//! - **The log is never purged in the journal beyond what the state machine has
//!   applied** (seed 11974). openraft purges the log a received snapshot covers as soon
//!   as it hands the snapshot to the state machine, before the install is done. The log
//!   and the state machine share fjall's journal, and a crash keeps a prefix of it: a
//!   purge journaled first could survive a crash that loses the install, leaving a log
//!   purged past the applied state, which the replica can never catch up from. So a
//!   purge beyond the state machine's [`AppliedProgress`] takes effect at once for
//!   openraft (reads, `get_log_state`) but is journaled only once the state machine has
//!   reached it, after the install's batch. An append that would leave a hole in the
//!   journaled log until then (the first entries after the snapshot) waits for it.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fjall::{Database, Keyspace, PersistMode};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, StorageIOError};

use super::{AppliedProgress, NodeStore, ShardKeyspaces, Syncer};
use crate::consensus::{Entry, LogId, LogState, NodeId, StorageError, TypeConfig, Vote};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"purged";

/// How often an append that waits for a snapshot install says so in the log.
const WAIT_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Bounds of [`Unread`], per shard: apply takes the entries within milliseconds of
/// their commit (a leader has 2 proposals in flight, each at most ~2 MiB, the
/// batcher's bound), so these are only reached when apply lags or entries are never
/// applied; a node hosting hundreds of shards keeps at most this each.
const UNREAD_ENTRIES_MAX: usize = 16;
const UNREAD_BYTES_MAX: usize = 8 << 20;

#[derive(Clone)]
pub struct LogStore {
    db: Database,
    log: Keyspace,
    meta: Keyspace,
    syncer: Syncer,
    /// The state machine's applied index: how far the journal may be purged.
    applied: Arc<AppliedProgress>,
    state: Arc<Mutex<State>>,
    compaction: Arc<Compaction>,
}

/// Reclaiming the disk of purged entries. The log keeps entry values in blob files
/// (KV separation); a purge only writes tombstones, and fjall drops a blob file once
/// a compaction of the keys finds every value in it dead. The log's key tree is small
/// (a key and a pointer per entry) and nothing else compacts it often, so after a
/// purge the log compacts it itself, off the caller's thread, at most once per
/// [`COMPACTION_INTERVAL_MIN`]. Without it a single node kept every purged entry's
/// bytes (~175 bytes/event).
#[derive(Default)]
struct Compaction {
    running: std::sync::atomic::AtomicBool,
    last: Mutex<Option<std::time::Instant>>,
}

const COMPACTION_INTERVAL_MIN: Duration = Duration::from_secs(10);

/// Where a log read's run of entries may begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    /// At the range's start, or nowhere.
    Exact,
    /// At the first entry present in the range.
    FirstPresent,
}

struct State {
    /// What openraft sees: the last purged id (which may be ahead of the journal, see
    /// `pending_purge`) and the last entry's id, or the last purged id when the log is
    /// empty. Kept in memory so that `get_log_state` does not decode a (large) entry.
    log: LogState,
    /// The last purge written to the journal.
    journaled_purge: Option<LogId>,
    /// A purge openraft asked for that is not journaled yet: the state machine has not
    /// reached it. Entries up to it are already invisible to readers.
    pending_purge: Option<LogId>,
    unread: Unread,
}

/// The latest appended entries, as they were appended, until a read takes them.
///
/// openraft reads every committed entry back from the log to apply it, on its core
/// task. Decoding a batch of events again costs as much as encoding it (~2% of a
/// node's CPU under ingest). The entries appended last are kept here, consecutive,
/// and [`RaftLogReader::try_get_log_entries`] (the read that apply makes) moves them
/// out when it asks for a range they cover; any other read, or a range they do not
/// cover, reads the journaled log as before. They always equal what the log holds:
/// truncates and purges drop them like the log's keys.
#[derive(Default)]
struct Unread {
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl Unread {
    fn push(&mut self, entry: Entry, bytes: usize) {
        let follows = self
            .entries
            .back()
            .is_none_or(|(last, _)| last.log_id.index + 1 == entry.log_id.index);
        if !follows {
            self.clear();
        }
        self.entries.push_back((entry, bytes));
        self.bytes += bytes;
        while self.entries.len() > UNREAD_ENTRIES_MAX || self.bytes > UNREAD_BYTES_MAX {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) -> Option<Entry> {
        let (entry, bytes) = self.entries.pop_front()?;
        self.bytes -= bytes;
        Some(entry)
    }

    fn pop_back(&mut self) -> Option<Entry> {
        let (entry, bytes) = self.entries.pop_back()?;
        self.bytes -= bytes;
        Some(entry)
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(entry, _)| entry.log_id.index)
    }

    fn last_index(&self) -> Option<u64> {
        self.entries.back().map(|(entry, _)| entry.log_id.index)
    }

    /// Drops the entries from `index` on (a truncate).
    fn truncate(&mut self, index: u64) {
        while self.last_index().is_some_and(|last| last >= index) {
            self.pop_back();
        }
    }

    /// Drops the entries up to `index`, inclusive (a purge).
    fn purge(&mut self, index: u64) {
        while self.first_index().is_some_and(|first| first <= index) {
            self.pop_front();
        }
    }

    /// The entries `[start, end)` if all of them are here, moved out (with those
    /// before them); `None` (and nothing taken) otherwise.
    fn take(&mut self, start: u64, end: u64) -> Option<Vec<Entry>> {
        let covered = start < end
            && self.first_index().is_some_and(|first| first <= start)
            && self.last_index().is_some_and(|last| last + 1 >= end);
        if !covered {
            return None;
        }
        if let Some(before) = start.checked_sub(1) {
            self.purge(before);
        }
        let mut taken = Vec::with_capacity((end - start) as usize);
        while self.first_index().is_some_and(|first| first < end) {
            taken.extend(self.pop_front());
        }
        Some(taken)
    }
}

impl State {
    /// Entries at or below this index are purged, as openraft sees it.
    fn first_readable(&self) -> u64 {
        self.log
            .last_purged_log_id
            .map_or(0, |purged| purged.index + 1)
    }
}

impl LogStore {
    /// Opens the log of a shard of `store` (its `keyspaces`) whose state machine
    /// reports to `applied` (`StateMachine::applied`); appends are made durable by
    /// `store`'s fsync thread.
    pub fn open(
        store: &NodeStore,
        keyspaces: &ShardKeyspaces,
        applied: Arc<AppliedProgress>,
    ) -> Result<LogStore, StorageError> {
        let log = keyspaces.raft_log.clone();
        let meta = keyspaces.raft_meta.clone();
        let last_purged_log_id: Option<LogId> = read_meta(&meta, KEY_PURGED)?;
        let last_entry = match log.last_key_value() {
            None => None,
            Some(guard) => {
                let (_, value) = guard.into_inner().map_err(read_logs)?;
                Some(decode_entry(&value)?.log_id)
            }
        };
        let state = State {
            log: LogState {
                last_purged_log_id,
                last_log_id: last_entry.max(last_purged_log_id),
            },
            journaled_purge: last_purged_log_id,
            pending_purge: None,
            unread: Unread::default(),
        };
        Ok(LogStore {
            db: store.db.clone(),
            log,
            meta,
            syncer: store.syncer.clone(),
            applied,
            state: Arc::new(Mutex::new(state)),
            compaction: Arc::default(),
        })
    }

    /// Starts a compaction of the log's keys on its own thread, unless one runs or
    /// ran less than [`COMPACTION_INTERVAL_MIN`] ago (see [`Compaction`]).
    fn compact_purged(&self) {
        use std::sync::atomic::Ordering;
        {
            let mut last = self.compaction.last.lock().expect("compaction lock");
            if last.is_some_and(|at| at.elapsed() < COMPACTION_INTERVAL_MIN)
                || self.compaction.running.swap(true, Ordering::AcqRel)
            {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        let log = self.log.clone();
        let compaction = self.compaction.clone();
        let spawned = std::thread::Builder::new()
            .name("log-compaction".into())
            .spawn(move || {
                // The purge's tombstones are in the memtable: flush them first, so the
                // compaction finds them. fjall (3.1.13) counts the values a compaction
                // drops and removes the blob files left dead at the next one, hence two
                // (measured: 7 blob files stay after one, 2 after the second).
                let compacted = log
                    .rotate_memtable_and_wait()
                    .and_then(|()| log.major_compact())
                    .and_then(|()| log.major_compact());
                if let Err(error) = compacted {
                    tracing::warn!(%error, "compacting the purged Raft log failed");
                }
                compaction.running.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            self.compaction.running.store(false, Ordering::Release);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("log state lock")
    }

    /// The purge openraft asked for that still waits for the state machine, if any.
    pub fn pending_purge(&self) -> Option<LogId> {
        self.lock().pending_purge
    }

    /// Whether the entry at `index` is in the journal, whatever openraft sees (a purge
    /// may wait for the state machine). For the crash-rule tests
    /// (`node/tests/t11_log_store_crash_rules.rs`), which check what reaches the journal
    /// and when.
    #[doc(hidden)]
    pub fn journaled_entry(&self, index: u64) -> Result<bool, StorageError> {
        self.log
            .contains_key(index.to_be_bytes())
            .map_err(read_logs)
    }

    /// The purged id as journaled (see [`LogStore::journaled_entry`]).
    #[doc(hidden)]
    pub fn journaled_purge(&self) -> Result<Option<LogId>, StorageError> {
        read_meta(&self.meta, KEY_PURGED)
    }

    /// A run of consecutive entries of `[start, end)`, cut at the first missing entry.
    /// With `Head::Exact` the run must begin at `start` (else it is empty); with
    /// `Head::FirstPresent` it begins at the first entry present in the range. Entries
    /// below `first_readable` are purged: never returned.
    fn contiguous_entries(
        &self,
        first_readable: u64,
        start: u64,
        end: Bound<u64>,
        head: Head,
    ) -> Result<Vec<Entry>, StorageError> {
        let mut entries: Vec<Entry> = Vec::new();
        let start = match head {
            Head::Exact if start < first_readable => return Ok(entries),
            Head::Exact => start,
            Head::FirstPresent => start.max(first_readable),
        };
        let end = match end {
            Bound::Included(index) => Bound::Included(index.to_be_bytes()),
            Bound::Excluded(index) => Bound::Excluded(index.to_be_bytes()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut expected = start;
        for guard in self.log.range((Bound::Included(start.to_be_bytes()), end)) {
            let (key, value) = guard.into_inner().map_err(read_logs)?;
            let index = key_index(&key)?;
            if index != expected && !(entries.is_empty() && head == Head::FirstPresent) {
                break;
            }
            let entry = decode_entry(&value)?;
            if entry.log_id.index != index {
                return Err(io_error(
                    ErrorSubject::Log(entry.log_id),
                    ErrorVerb::Read,
                    &LogCorrupt("a log entry is stored under another index"),
                ));
            }
            expected = index + 1;
            entries.push(entry);
        }
        Ok(entries)
    }

    /// Journals the pending purge if the state machine has reached it.
    fn purge_if_reached(&self, state: &mut State) -> Result<(), StorageError> {
        if let Some(pending) = state.pending_purge {
            if self.applied.reached(pending.index) {
                self.journal_purge(state, pending)?;
            }
        }
        Ok(())
    }

    /// Removes the log up to `log_id` (inclusive) and records it, in one batch.
    fn journal_purge(&self, state: &mut State, log_id: LogId) -> Result<(), StorageError> {
        let bytes = bincode::serialize(&log_id)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, &e))?;
        let mut batch = self.db.batch();
        batch.insert(&self.meta, KEY_PURGED, bytes);
        for guard in self.log.range(..=log_id.index.to_be_bytes()) {
            let key = guard.key().map_err(write_logs)?;
            batch.remove(&self.log, key);
        }
        batch.commit().map_err(write_logs)?;
        self.compact_purged();
        state.journaled_purge = Some(log_id);
        if state.pending_purge.is_some_and(|pending| pending <= log_id) {
            state.pending_purge = None;
        }
        Ok(())
    }

    /// The end of the log as journaled: the last stored entry's index, or the last
    /// journaled purge's when it is higher.
    fn journaled_end(&self, state: &State) -> Result<Option<u64>, StorageError> {
        let last_key = match self.log.last_key_value() {
            None => None,
            Some(guard) => Some(key_index(&guard.key().map_err(read_logs)?)?),
        };
        Ok(last_key.max(state.journaled_purge.map(|purged| purged.index)))
    }

    /// Before appending entries from `first_index` on: if a purge still waits for the
    /// state machine and the entries would not follow the journaled log (they follow a
    /// snapshot being installed), wait until the install is in the journal and journal
    /// the purge first. Journaled before the install, the entries could survive a crash
    /// that loses it and leave a hole the replica can neither fill nor apply across.
    async fn order_after_pending_purge(&self, first_index: u64) -> Result<(), StorageError> {
        loop {
            let pending = {
                let mut state = self.lock();
                self.purge_if_reached(&mut state)?;
                let Some(pending) = state.pending_purge else {
                    return Ok(());
                };
                let follows = self
                    .journaled_end(&state)?
                    .map_or(first_index == 0, |end| first_index <= end + 1);
                if follows {
                    return Ok(());
                }
                pending
            };
            tracing::info!(
                %pending,
                first_index,
                "append waits for the state machine to reach a deferred purge"
            );
            match tokio::time::timeout(WAIT_WARNING_INTERVAL, self.applied.wait_for(pending.index))
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(failed)) => {
                    return Err(io_error(ErrorSubject::Logs, ErrorVerb::Write, &failed))
                }
                Err(_) => tracing::warn!(
                    %pending,
                    applied = ?self.applied.applied_index(),
                    "still waiting for the state machine to install a snapshot before appending"
                ),
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    /// The consecutive entries of `range` from the first one present, cut at the first
    /// missing entry after it; purged entries are never returned. openraft allows
    /// missing entries here, and its callers that need the whole range check what they
    /// got (`get_log_entries`, re-applying the committed log); `limited_get_log_entries`,
    /// which replication uses, is stricter.
    async fn try_get_log_entries<RB>(&mut self, range: RB) -> Result<Vec<Entry>, StorageError>
    where
        RB: RangeBounds<u64> + Clone + Debug + OptionalSend,
    {
        let start = match range.start_bound() {
            Bound::Included(index) => *index,
            Bound::Excluded(index) => index + 1,
            Bound::Unbounded => 0,
        };
        let end = range.end_bound().cloned();
        let first_readable = {
            let mut state = self.lock();
            let first_readable = state.first_readable();
            let end_exclusive = match end {
                Bound::Included(index) => index.checked_add(1),
                Bound::Excluded(index) => Some(index),
                Bound::Unbounded => None,
            };
            if let Some(end_exclusive) = end_exclusive {
                if let Some(entries) = state.unread.take(start.max(first_readable), end_exclusive) {
                    return Ok(entries);
                }
            }
            first_readable
        };
        self.contiguous_entries(first_readable, start, end, Head::FirstPresent)
    }

    /// What replication sends after `prev_log_id = start - 1`: only the entries that
    /// follow `start` without a gap; nothing when `start` itself is missing or purged.
    /// openraft 0.9.25 sends what this returns without checking that it begins at
    /// `start` (an empty answer becomes a heartbeat); a stale replication stream whose
    /// node purged the head of the range would otherwise send entries that do not follow
    /// `prev_log_id`, and the follower would append them after a hole (seed 28399).
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let first_readable = self.lock().first_readable();
        self.contiguous_entries(first_readable, start, Bound::Excluded(end), Head::Exact)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState, StorageError> {
        Ok(self.lock().log.clone())
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let bytes = bincode::serialize(vote)
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, &e))?;
        self.meta.insert(KEY_VOTE, bytes).map_err(write_vote)?;
        // A vote must be on disk before the reply that depends on it leaves the node.
        let db = self.db.clone();
        let synced = super::pool::run(move || db.persist(PersistMode::SyncAll)).await;
        if let Err(error) = synced {
            tracing::error!(%error, "fsync of a vote failed; stopping the node");
            std::process::exit(74);
        }
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        read_meta(&self.meta, KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not fsynced on its own: it rides on the next append's fsync, and a lost
        // committed id only means re-applying from the state machine's applied id.
        let bytes = bincode::serialize(&committed)
            .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, &e))?;
        self.meta.insert(KEY_COMMITTED, bytes).map_err(write_logs)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(read_meta::<Option<LogId>>(&self.meta, KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if let Some(first) = entries.first() {
            self.order_after_pending_purge(first.log_id.index).await?;
        }
        let mut batch = self.db.batch();
        let mut sizes = Vec::with_capacity(entries.len());
        // Contiguity is openraft's to keep (and the conformance suite appends with gaps
        // on purpose), so it is not asserted here.
        for entry in &entries {
            let bytes = bincode::serialize(entry)
                .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, &e))?;
            sizes.push(bytes.len());
            batch.insert(&self.log, entry.log_id.index.to_be_bytes(), bytes);
        }
        batch.commit().map_err(write_logs)?;
        {
            let mut state = self.lock();
            if let Some(last) = entries.last() {
                state.log.last_log_id = Some(last.log_id);
            }
            for (entry, bytes) in entries.into_iter().zip(sizes) {
                state.unread.push(entry, bytes);
            }
        }
        self.syncer
            .after_sync(move || callback.log_io_completed(Ok(())));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut state = self.lock();
        self.purge_if_reached(&mut state)?;
        let mut batch = self.db.batch();
        for guard in self.log.range(log_id.index.to_be_bytes()..) {
            let key = guard.key().map_err(write_logs)?;
            batch.remove(&self.log, key);
        }
        batch.commit().map_err(write_logs)?;
        state.unread.truncate(log_id.index);
        let first_readable = state.first_readable();
        let previous = match log_id.index.checked_sub(1) {
            Some(index) if index >= first_readable => {
                match self.log.get(index.to_be_bytes()).map_err(read_logs)? {
                    Some(value) => Some(decode_entry(&value)?.log_id),
                    None => None,
                }
            }
            _ => None,
        };
        state.log.last_log_id = previous.or(state.log.last_purged_log_id);
        Ok(())
    }

    /// Purged at once as openraft sees it; journaled once the state machine has applied
    /// up to `log_id` (see the module doc). Purges the snapshot policy asks for are
    /// never above the applied index, so only a received snapshot's purge waits.
    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut state = self.lock();
        if state.log.last_purged_log_id >= Some(log_id) {
            return Ok(());
        }
        state.log.last_purged_log_id = Some(log_id);
        if state.log.last_log_id < Some(log_id) {
            state.log.last_log_id = Some(log_id);
        }
        state.unread.purge(log_id.index);
        let target = state
            .pending_purge
            .map_or(log_id, |pending| pending.max(log_id));
        if self.applied.reached(target.index) {
            return self.journal_purge(&mut state, target);
        }
        tracing::info!(
            purge = %target,
            applied = ?self.applied.applied_index(),
            "log purge deferred until the state machine reaches it"
        );
        state.pending_purge = Some(target);
        Ok(())
    }
}

fn decode_entry(bytes: &[u8]) -> Result<Entry, StorageError> {
    bincode::deserialize(bytes).map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, &e))
}

/// The log index a `raft_log` key names.
fn key_index(key: &[u8]) -> Result<u64, StorageError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| {
        io_error(
            ErrorSubject::Logs,
            ErrorVerb::Read,
            &LogCorrupt("a log key is not 8 bytes"),
        )
    })?;
    Ok(u64::from_be_bytes(bytes))
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct LogCorrupt(&'static str);

fn read_meta<T: serde::de::DeserializeOwned>(
    meta: &Keyspace,
    key: &[u8],
) -> Result<Option<T>, StorageError> {
    match meta.get(key).map_err(read_logs)? {
        None => Ok(None),
        Some(bytes) => bincode::deserialize(&bytes)
            .map(Some)
            .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Read, &e)),
    }
}

fn io_error<E>(subject: ErrorSubject<NodeId>, verb: ErrorVerb, error: &E) -> StorageError
where
    E: std::error::Error + 'static,
{
    StorageError::IO {
        source: StorageIOError::new(subject, verb, AnyError::new(error)),
    }
}

fn read_logs(error: fjall::Error) -> StorageError {
    io_error(ErrorSubject::Logs, ErrorVerb::Read, &error)
}

fn write_logs(error: fjall::Error) -> StorageError {
    io_error(ErrorSubject::Logs, ErrorVerb::Write, &error)
}

fn write_vote(error: fjall::Error) -> StorageError {
    io_error(ErrorSubject::Vote, ErrorVerb::Write, &error)
}

pub(crate) fn storage_io_error<E>(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    error: &E,
) -> StorageError
where
    E: std::error::Error + 'static,
{
    io_error(subject, verb, error)
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn indexes(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|entry| entry.log_id.index).collect()
    }

    fn unread(range: std::ops::Range<u64>) -> Unread {
        let mut unread = Unread::default();
        for index in range {
            unread.push(entry(index), 100);
        }
        unread
    }

    #[test]
    fn unread_entries_are_taken_once_and_only_when_covered() {
        let mut unread = unread(5..10);
        assert!(unread.take(4, 7).is_none(), "starts before the first");
        assert!(unread.take(8, 11).is_none(), "ends after the last");
        assert!(unread.take(7, 7).is_none(), "empty range");
        assert_eq!(indexes(&unread.take(6, 8).unwrap()), [6, 7]);
        // Taken, with the entry before them: those reads go to the log now.
        assert_eq!(unread.first_index(), Some(8));
        assert!(unread.take(6, 8).is_none());
        assert_eq!(indexes(&unread.take(8, 10).unwrap()), [8, 9]);
        assert_eq!((unread.entries.len(), unread.bytes), (0, 0));
    }

    #[test]
    fn unread_entries_follow_truncates_purges_and_gaps() {
        let mut unread = unread(5..10);
        unread.truncate(8);
        assert_eq!(unread.last_index(), Some(7));
        unread.purge(5);
        assert_eq!(unread.first_index(), Some(6));
        assert_eq!(unread.bytes, 200);
        // Appended after the truncate: follows 7.
        unread.push(entry(8), 100);
        assert_eq!(indexes(&unread.take(6, 9).unwrap()), [6, 7, 8]);
        // An append that does not follow the last entry starts over.
        let mut unread = unread_with_gap();
        assert_eq!(unread.first_index(), Some(20));
        assert!(unread.take(5, 21).is_none());
        assert_eq!(indexes(&unread.take(20, 21).unwrap()), [20]);
    }

    fn unread_with_gap() -> Unread {
        let mut unread = unread(5..10);
        unread.push(entry(20), 100);
        unread
    }

    #[test]
    fn unread_entries_are_bounded() {
        let mut unread = unread(0..(UNREAD_ENTRIES_MAX as u64 + 10));
        assert_eq!(unread.entries.len(), UNREAD_ENTRIES_MAX);
        assert_eq!(unread.first_index(), Some(10));
        unread.push(entry(UNREAD_ENTRIES_MAX as u64 + 10), UNREAD_BYTES_MAX);
        assert_eq!(
            unread.entries.len(),
            1,
            "one entry over the bytes bound stays alone"
        );
        assert_eq!(unread.bytes, UNREAD_BYTES_MAX);
    }
}
