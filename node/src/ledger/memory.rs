//! Committed ledger state held in maps: the in-memory storage seam. Unit tests and the
//! simulation run the ledger against it; the node runs it against fjall
//! (`storage::state_machine`), executing the same [`LedgerWrite`]s.

use std::collections::BTreeMap;
use std::convert::Infallible;

use super::apply::{LedgerLookup, LedgerWrite, RecordedLeaf, TenantState};
use super::block::BlockRecord;
use super::event::{leaf_hash, StoredEvent};

#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    /// `(stream_no, seq)` -> canonical event.
    pub events: BTreeMap<(u32, u64), Vec<u8>>,
    /// `(tenant_no, event_id)` -> `(stream_no, seq)`.
    pub dedup: BTreeMap<(u32, String), (u32, u64)>,
    pub tenants: BTreeMap<String, TenantState>,
    /// `(stream_no, block_index)` -> sealed block.
    pub blocks: BTreeMap<(u32, u64), BlockRecord>,
    /// `(stream_no, tree_size)` -> signed note.
    pub checkpoints: BTreeMap<(u32, u64), String>,
}

/// What a write replaced, so that a caller can take it back (a crash model) or assert
/// on it (events and dedup entries are never overwritten).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replaced {
    Event((u32, u64), Option<Vec<u8>>),
    Dedup((u32, String), Option<(u32, u64)>),
    Tenant(String, Option<TenantState>),
    Block((u32, u64), Option<BlockRecord>),
    Checkpoint((u32, u64), Option<String>),
}

impl MemoryStore {
    pub fn execute(&mut self, write: LedgerWrite) -> Replaced {
        match write {
            LedgerWrite::Event {
                stream_no,
                seq,
                canonical,
            } => {
                let key = (stream_no, seq);
                Replaced::Event(key, self.events.insert(key, canonical))
            }
            LedgerWrite::Dedup {
                tenant_no,
                event_id,
                stream_no,
                seq,
            } => {
                let key = (tenant_no, event_id);
                let previous = self.dedup.insert(key.clone(), (stream_no, seq));
                Replaced::Dedup(key, previous)
            }
            LedgerWrite::Tenant { tenant_id, state } => {
                let previous = self.tenants.insert(tenant_id.clone(), state);
                Replaced::Tenant(tenant_id, previous)
            }
            LedgerWrite::Block {
                stream_no,
                block_index,
                record,
                ..
            } => {
                let key = (stream_no, block_index);
                Replaced::Block(key, self.blocks.insert(key, record))
            }
            LedgerWrite::Checkpoint {
                stream_no,
                tree_size,
                note,
                ..
            } => {
                let key = (stream_no, tree_size);
                Replaced::Checkpoint(key, self.checkpoints.insert(key, note))
            }
        }
    }

    /// Takes a write back, restoring what it replaced.
    pub fn undo(&mut self, replaced: Replaced) {
        match replaced {
            Replaced::Event(key, None) => {
                self.events.remove(&key);
            }
            Replaced::Event(key, Some(previous)) => {
                self.events.insert(key, previous);
            }
            Replaced::Dedup(key, None) => {
                self.dedup.remove(&key);
            }
            Replaced::Dedup(key, Some(previous)) => {
                self.dedup.insert(key, previous);
            }
            Replaced::Tenant(tenant_id, None) => {
                self.tenants.remove(&tenant_id);
            }
            Replaced::Tenant(tenant_id, Some(previous)) => {
                self.tenants.insert(tenant_id, previous);
            }
            Replaced::Block(key, previous) => restore(&mut self.blocks, key, previous),
            Replaced::Checkpoint(key, previous) => restore(&mut self.checkpoints, key, previous),
        }
    }
}

fn restore<K: Ord, V>(map: &mut BTreeMap<K, V>, key: K, previous: Option<V>) {
    match previous {
        Some(value) => map.insert(key, value),
        None => map.remove(&key),
    };
}

impl LedgerLookup for MemoryStore {
    type Error = Infallible;

    fn find_event_id(
        &self,
        tenant_no: u32,
        event_id: &str,
    ) -> Result<Option<(u32, u64)>, Infallible> {
        Ok(self.dedup.get(&(tenant_no, event_id.to_string())).copied())
    }

    fn recorded_leaf(&self, stream_no: u32, seq: u64) -> Result<RecordedLeaf, Infallible> {
        let canonical = &self.events[&(stream_no, seq)];
        let stored = StoredEvent::decode_canonical(canonical).expect("stored events decode");
        Ok(RecordedLeaf {
            leaf_hash: leaf_hash(canonical),
            ingested_at_ns: stored.ingested_at_ns,
        })
    }

    fn tree_root_after(
        &self,
        stream_no: u32,
        block_index: u64,
    ) -> Result<Option<[u8; 32]>, Infallible> {
        Ok(self
            .blocks
            .get(&(stream_no, block_index))
            .map(|record| record.tree_root_after))
    }
}
