//! The ledger logic, free of I/O: what an event is, how it is validated, encoded and
//! hashed, where it goes, and how a committed entry changes a shard's state. The node
//! and the simulation drive this same code.

pub mod apply;
pub mod block;
pub mod checkpoint;
pub mod event;
pub mod memory;
pub mod merkle;
pub mod recheck;
pub mod routing;
pub mod validate;

pub use apply::{
    stream_name, ApplyReceipt, CheckpointDue, CheckpointNote, Ledger, LedgerCommand, LedgerLookup,
    LedgerResponse, LedgerWrite, RecordedLeaf, StreamChain, TenantState,
};
pub use block::{block_hash, BlockHeader, BlockRecord, BLOCK_EVENTS_DEFAULT};
pub use checkpoint::{CheckpointBody, NoteSigner, NoteVerifier};
pub use event::{leaf_hash, ActorKind, EventRecord, LeafHash, Outcome, StoredEvent};
pub use memory::{MemoryStore, Replaced};
pub use validate::{validate_event, validate_tenant_id, FieldError, BATCH_EVENTS_MAX};
