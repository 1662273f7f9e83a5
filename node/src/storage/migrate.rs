//! Migrations of a shard's earlier on-disk layouts, run when its state machine opens.
//!
//! The event-id index used to live in the node database (`sN.dedup`, as text before
//! data layout 2, then packed); it is now in the dedup database behind the log
//! (`dedup.rs`). A shard records which layout its ids are in (`dedup_keys` in
//! `sm_meta`), and one whose ids are still in the node database has them moved once.

use fjall::{Keyspace, PersistMode};

use super::dedup::{DedupIndex, KEY_FRONTIER};
use super::state_machine::{read_meta, read_state_machine, write_state_machine, Inner};
use crate::consensus::StorageError;

/// The layout of the event-id index: absent in a shard of a node that kept every event
/// id as text in the node database, 2 once they were packed (`storage::dedup_key`),
/// [`DEDUP_KEYS_BEHIND_LOG`] once they are in the dedup database (`dedup.rs`).
const KEY_DEDUP_KEYS: &[u8] = b"dedup_keys";
const DEDUP_KEYS_BEHIND_LOG: u32 = 3;

impl Inner {
    /// Moves a shard's event ids out of the node database, where apply used to write
    /// them (`sN.dedup`, packed, or as text before data layout 2), into the dedup
    /// database, once: in sorted runs of ingested tables, then the layout and a
    /// frontier covering every applied event are recorded, then the old keyspace is
    /// deleted. A crash before the layout is recorded moves them again (a key has one
    /// value, so twice is harmless).
    pub(super) fn move_dedup_index(&mut self) -> Result<(), StorageError> {
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
}

/// Records in `batch` that the shard's ids are in the dedup database, all of them up
/// to `frontier`.
pub(super) fn put_dedup_layout(
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

#[cfg(test)]
mod tests {
    use fjall::PersistMode;
    use openraft::storage::RaftStateMachine;
    use openraft::EntryPayload;
    use tempfile::TempDir;

    use super::*;
    use crate::ledger::{LedgerCommand, TenantState};
    use crate::storage::dedup_key;
    use crate::storage::state_machine::test_support::{append, contents, dedup_contents, open};

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
}
