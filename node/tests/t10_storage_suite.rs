//! openraft's own conformance suite against the fjall-backed log store and state
//! machine.
//!
//! Steps: for every test in `openraft::testing::Suite`, open a fresh node database in a
//! temporary directory, open shard 1's log store and state machine on it, and let the
//! suite drive them (votes, appends, truncation, purging, applying, snapshots).

use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;
use trail_node::consensus::{StorageError, TypeConfig};
use trail_node::storage::{LogStore, NodeStore, StateMachine};

struct FjallBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for FjallBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = TempDir::new().expect("temporary directory");
        let store = NodeStore::open(dir.path()).expect("open node store");
        let keyspaces = store.shard(1).expect("open shard keyspaces");
        let state_machine = StateMachine::open(&store, &keyspaces, None)?;
        let log_store = LogStore::open(&store, &keyspaces, state_machine.applied.clone())?;
        Ok((dir, log_store, state_machine))
    }
}

#[test]
#[allow(clippy::result_large_err)] // openraft's StorageError, as the suite returns it
fn fjall_storage_passes_openraft_suite() -> Result<(), StorageError> {
    Suite::test_all(FjallBuilder)?;
    Ok(())
}
