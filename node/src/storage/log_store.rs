//! The Raft log of one shard on fjall (`RaftLogStorage`).
//!
//! Durability: `append` writes the entries into the shared journal (visible to readers
//! at once) and hands the `LogFlushed` callback to the [`Syncer`], which calls it only
//! after the fsync that covers them. Votes are fsynced before `save_vote` returns.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use fjall::{Database, Keyspace, PersistMode};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, StorageIOError};

use super::{ShardKeyspaces, Syncer};
use crate::consensus::{Entry, LogId, LogState, NodeId, StorageError, TypeConfig, Vote};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"purged";

#[derive(Clone)]
pub struct LogStore {
    db: Database,
    log: Keyspace,
    meta: Keyspace,
    syncer: Syncer,
    /// The last entry's id, or the last purged id when the log is empty. Kept in memory
    /// so that `get_log_state` does not decode a (large) entry.
    state: Arc<Mutex<LogState>>,
}

impl LogStore {
    pub fn open(
        db: Database,
        keyspaces: &ShardKeyspaces,
        syncer: Syncer,
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
        let state = LogState {
            last_purged_log_id,
            last_log_id: last_entry.or(last_purged_log_id),
        };
        Ok(LogStore {
            db,
            log,
            meta,
            syncer,
            state: Arc::new(Mutex::new(state)),
        })
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB>(&mut self, range: RB) -> Result<Vec<Entry>, StorageError>
    where
        RB: RangeBounds<u64> + Clone + Debug + OptionalSend,
    {
        let start = match range.start_bound() {
            Bound::Included(index) => *index,
            Bound::Excluded(index) => index + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(index) => Bound::Included(index.to_be_bytes()),
            Bound::Excluded(index) => Bound::Excluded(index.to_be_bytes()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut entries = Vec::new();
        for guard in self.log.range((Bound::Included(start.to_be_bytes()), end)) {
            let (_, value) = guard.into_inner().map_err(read_logs)?;
            entries.push(decode_entry(&value)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState, StorageError> {
        Ok(self.state.lock().expect("log state lock").clone())
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
        let synced = tokio::task::spawn_blocking(move || db.persist(PersistMode::SyncAll))
            .await
            .expect("fsync task does not panic");
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
        let mut batch = self.db.batch();
        let mut last = None;
        // Contiguity is openraft's to keep (and the conformance suite appends with gaps
        // on purpose), so it is not asserted here.
        for entry in entries {
            let bytes = bincode::serialize(&entry)
                .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, &e))?;
            batch.insert(&self.log, entry.log_id.index.to_be_bytes(), bytes);
            last = Some(entry.log_id);
        }
        batch.commit().map_err(write_logs)?;
        if let Some(last) = last {
            self.state.lock().expect("log state lock").last_log_id = Some(last);
        }
        self.syncer
            .after_sync(move || callback.log_io_completed(Ok(())));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = self.db.batch();
        for guard in self.log.range(log_id.index.to_be_bytes()..) {
            let key = guard.key().map_err(write_logs)?;
            batch.remove(&self.log, key);
        }
        batch.commit().map_err(write_logs)?;
        let previous = match log_id.index.checked_sub(1) {
            None => None,
            Some(index) => match self.log.get(index.to_be_bytes()).map_err(read_logs)? {
                Some(value) => Some(decode_entry(&value)?.log_id),
                None => None,
            },
        };
        let mut state = self.state.lock().expect("log state lock");
        state.last_log_id = previous.or(state.last_purged_log_id);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let bytes = bincode::serialize(&log_id)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, &e))?;
        let mut batch = self.db.batch();
        batch.insert(&self.meta, KEY_PURGED, bytes);
        for guard in self.log.range(..=log_id.index.to_be_bytes()) {
            let key = guard.key().map_err(write_logs)?;
            batch.remove(&self.log, key);
        }
        batch.commit().map_err(write_logs)?;
        let mut state = self.state.lock().expect("log state lock");
        state.last_purged_log_id = Some(log_id);
        if state
            .last_log_id
            .is_none_or(|last| last.index < log_id.index)
        {
            state.last_log_id = Some(log_id);
        }
        Ok(())
    }
}

fn decode_entry(bytes: &[u8]) -> Result<Entry, StorageError> {
    bincode::deserialize(bytes).map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, &e))
}

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
