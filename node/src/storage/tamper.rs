//! Raw edits of one tenant's stream in a stopped node's database, for the tamper tests
//! (`tests/tests/t80_tamper.rs`): they damage records on purpose (flip a byte of an
//! event, rewrite a block header, drop the last blocks) and check that verification
//! names the damage. The key layouts stay private to `storage/`; the tests name
//! streams, seqs and block indexes. Never used by the node: it panics on any failure,
//! as a test wants.

use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use super::{chain_key, event_key, CHAIN_BLOCK, CHAIN_BLOCK_END};
use crate::ledger::TenantState;

/// One tenant's stream in a stopped node's database.
pub struct StoppedStream {
    db: Database,
    events: Keyspace,
    chain: Keyspace,
    stream_no: u32,
}

impl StoppedStream {
    /// Opens `<data_dir>/db` (the node must be stopped: it holds the directory's lock)
    /// and finds the shard of `1..=shards` holding `tenant` and its stream number.
    pub fn open(data_dir: &Path, shards: u32, tenant: &str) -> StoppedStream {
        let db = Database::builder(data_dir.join("db"))
            .open()
            .expect("open the stopped node's database");
        let keyspace = |name: String| {
            db.keyspace(&name, KeyspaceCreateOptions::default)
                .unwrap_or_else(|error| panic!("keyspace {name}: {error}"))
        };
        for shard in 1..=shards {
            let tenants = keyspace(format!("s{shard}.tenants"));
            let Some(bytes) = tenants.get(tenant.as_bytes()).expect("read tenants") else {
                continue;
            };
            let state: TenantState = bincode::deserialize(&bytes).expect("TenantState");
            return StoppedStream {
                events: keyspace(format!("s{shard}.events")),
                chain: keyspace(format!("s{shard}.chain")),
                stream_no: state.stream_no,
                db,
            };
        }
        panic!("tenant {tenant} is on no shard");
    }

    /// The stored records of the stream's sealed blocks, in block index order.
    pub fn block_records(&self) -> Vec<Vec<u8>> {
        let from = chain_key(CHAIN_BLOCK, self.stream_no, 0);
        let to = chain_key(CHAIN_BLOCK, self.stream_no, u64::MAX);
        self.chain
            .range(from..=to)
            .map(|guard| {
                let (_, value) = guard.into_inner().expect("read chain");
                value.to_vec()
            })
            .collect()
    }

    /// The stored value of event `seq` (panics when there is none).
    pub fn event(&self, seq: u64) -> Vec<u8> {
        self.events
            .get(event_key(self.stream_no, seq))
            .expect("read event")
            .unwrap_or_else(|| panic!("no event at seq {seq}"))
            .to_vec()
    }

    pub fn set_event(&self, seq: u64, bytes: &[u8]) {
        self.events
            .insert(event_key(self.stream_no, seq), bytes)
            .expect("write event");
    }

    pub fn remove_event(&self, seq: u64) {
        self.events
            .remove(event_key(self.stream_no, seq))
            .expect("remove event");
    }

    /// The stored record of block `index` (panics when there is none).
    pub fn block_record(&self, index: u64) -> Vec<u8> {
        self.chain
            .get(chain_key(CHAIN_BLOCK, self.stream_no, index))
            .expect("read block")
            .expect("block exists")
            .to_vec()
    }

    pub fn set_block_record(&self, index: u64, bytes: &[u8]) {
        self.chain
            .insert(chain_key(CHAIN_BLOCK, self.stream_no, index), bytes)
            .expect("write block");
    }

    /// Removes block `index`, which ends at `last_seq`: its record and its end (the
    /// key that finds the block of a seq). Its events stay.
    pub fn remove_block(&self, index: u64, last_seq: u64) {
        self.chain
            .remove(chain_key(CHAIN_BLOCK_END, self.stream_no, last_seq))
            .expect("remove block end");
        self.chain
            .remove(chain_key(CHAIN_BLOCK, self.stream_no, index))
            .expect("remove block");
    }

    /// Makes the edits durable and closes the database.
    pub fn close(self) {
        self.db
            .persist(PersistMode::SyncAll)
            .expect("persist the edits");
    }
}
