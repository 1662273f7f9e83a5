//! Installs: a received snapshot replaces a shard's whole state, crash-safe as one
//! step; and the checks of the dedup index at open, which rebuild it from the events
//! into a fresh keyspace the way an install loads one.
//!
//! An install verifies the snapshot (its file, and that it is of this cluster, group
//! and a later state: `snapshot_name.rs`), makes the file durable under its final
//! name, marks the install in `sm_meta`, then loads the records; the last batch records
//! the new applied id and removes the mark, and a state machine that opens on a mark
//! finishes the install first. The event ids always load into a fresh keyspace, never
//! a cleared one (`dedup.rs`).

use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use fjall::PersistMode;

use super::dedup::{DedupIndex, KEY_DEDUP_KEYSPACE, KEY_FRONTIER};
use super::faults::StorageBug;
use super::migrate::put_dedup_layout;
use super::snapshot_file::{
    check_snapshot_file, format_error, keep_snapshot_file, read_chunk, read_header, read_snapshot,
    read_u8, write_snapshot_fjall, TAG_CHAIN, TAG_DEDUP, TAG_END, TAG_EVENTS, TAG_TENANTS,
};
use super::snapshot_name::check_install;
use super::state_machine::{
    load_ledger, read_meta, read_state_machine, write_state_machine, Inner, KEY_SNAPSHOT,
};
use super::{decode_position, dedup_key, event_key, position_value, FeedRuns};
use crate::consensus::{SnapshotMeta, StorageError};
use crate::ledger::event::StoredEvent;
use crate::ledger::TenantState;

/// Present while a received snapshot replaces the state (see `Inner::install`).
pub(super) const KEY_INSTALLING: &[u8] = b"installing";
/// Records per fjall batch while installing a snapshot.
const INSTALL_BATCH_RECORDS_MAX: usize = 10_000;
/// Events whose ids the check at open looks up in the dedup index
/// (`Inner::check_dedup_index`): a few per stream, over at most this many.
const DEDUP_PROBES_MAX: usize = 64;

impl Inner {
    /// Replaces the whole state with a received snapshot and makes it current.
    ///
    /// Crash-safe as one step: clearing a keyspace is durable at once in fjall (a new
    /// table version, outside the journal's order) and the records load in several
    /// batches, so a crash in between would leave a cleared or half-loaded state under
    /// the old applied id, which re-applying the log on top of would silently diverge.
    /// So the snapshot file is made durable under its final name first, then an
    /// `installing` marker; the last batch records the applied id, the snapshot pointer
    /// and removes the marker; and [`StateMachine::open`](super::StateMachine::open) finishes an install it finds
    /// marked. The log store purges the covered log only after that last batch
    /// (`AppliedProgress`), so the log is there for as long as the old state might be.
    pub(super) fn install(
        &mut self,
        meta: &SnapshotMeta,
        file: std::fs::File,
    ) -> Result<(), StorageError> {
        let path = self.begin_install(meta, file)?;
        self.load_snapshot(meta, &path)?;
        self.publish_missing_checkpoints();
        Ok(())
    }

    /// Has the publisher append every checkpoint of the shard's streams that the
    /// checkpoint directory lacks (`publish.rs`): the ones an installed snapshot
    /// carries, and at open any a crash or a failed sync lost. Queued before any
    /// checkpoint applied after it, so each stream's lines stay in tree-size order.
    pub(super) fn publish_missing_checkpoints(&self) {
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
        let faults = &self.keyspaces.faults;
        faults.crash_point("install.file_kept");
        if !faults.planted(StorageBug::InstallSkipsMarker) {
            self.keyspaces
                .sm_meta
                .insert(
                    KEY_INSTALLING,
                    bincode::serialize(meta).expect("meta serializes"),
                )
                .map_err(write_snapshot_fjall)?;
        }
        self.db
            .persist(PersistMode::SyncAll)
            .map_err(write_snapshot_fjall)?;
        faults.crash_point("install.marked");
        Ok(path)
    }

    /// Finishes an install a crash interrupted (see [`Inner::install`]).
    pub(super) fn finish_interrupted_install(&mut self) -> Result<(), StorageError> {
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
        let faults = &keyspaces.faults;
        faults.crash_point("install.cleared");

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
                    if !faults.planted(StorageBug::ClearDedupOnInstall) {
                        ids.add(&key, &value).map_err(write_snapshot_fjall)?;
                    }
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
                faults.crash_point("install.records");
            }
        }
        ids.finish().map_err(write_snapshot_fjall)?;
        faults.crash_point("install.ids_ingested");
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
        faults.crash_point("install.committed");
        self.db
            .persist(PersistMode::SyncAll)
            .map_err(write_snapshot_fjall)?;
        faults.crash_point("install.durable");
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
    pub(super) fn set_current_snapshot(
        &self,
        meta: &SnapshotMeta,
    ) -> Result<Option<PathBuf>, StorageError> {
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

// The dedup index at open: checked against the events, rebuilt from them if it lost
// ids, and the ids after its frontier put back in the overlay.
impl Inner {
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
    pub(super) fn check_dedup_index(&mut self) -> Result<(), StorageError> {
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
        self.keyspaces.faults.crash_point("dedup_rebuild.ingested");
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
    pub(super) fn rebuild_dedup_overlay(&mut self) -> Result<(), StorageError> {
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
}

#[cfg(test)]
mod tests {
    use fjall::PersistMode;
    use openraft::storage::RaftStateMachine;
    use tempfile::TempDir;

    use super::*;
    use crate::consensus::LogId;
    use crate::storage::snapshot_name::{SnapshotName, SnapshotStamp};
    use crate::storage::state_machine::test_support::{
        append, build_snapshot, contents, dedup_contents, four_tenants, ids_found, open, receive,
        tenant_numbers,
    };
    use crate::storage::state_machine::{StateMachine, KEY_APPLIED};
    use crate::storage::NodeStore;

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

        let mut reopened = StateMachine::open(&store, &keyspaces, None).expect("reopen");
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
                &source_store,
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
            let mut target =
                StateMachine::open_stamped(&store, &keyspaces, None, stamp("trail", 1, 3)).unwrap();
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
