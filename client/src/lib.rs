//! Trail's Rust client SDK.
//!
//! [`Client`] talks to a Trail node, or to the nodes of a cluster with failover, over
//! gRPC. Its batch ingest
//! ([`Client::record_batch`]) is safe to retry: every event gets a client-side
//! idempotency key (`event_id`) before the first send, so a resend after a timeout or a
//! load refusal is deduplicated by the server rather than recorded twice.
//!
//! ```no_run
//! # async fn example() -> trail_client::Result<()> {
//! let client = trail_client::Client::connect("http://127.0.0.1:7400").await?;
//! let line = r#"{"tenant_id":"ten_0001","action":"auth.login","result":"SUCCESS"}"#;
//! let event = trail_client::json::parse_event(line)?;
//! let response = client.record_batch(vec![event]).await?;
//! println!("accepted {}", response.accepted);
//! # Ok(())
//! # }
//! ```
//!
//! Modules: [`json`] converts between the workload's JSON lines and wire messages,
//! [`workload`] generates the benchmark workload in-process.
//!
//! Tamper evidence (docs/PROOFS.md), pure and independent of the server's code:
//! [`note`] verifies C2SP signed notes under a pinned [`note::VerifierKey`],
//! [`checkpoint`] parses the checkpoints they carry, [`event`] and [`block`] decode the
//! canonical event and block header bytes, [`verify`] checks RFC 9162 proofs and builds
//! roots, [`bundle`] verifies `trail-proof-v1` inclusion proof bundles offline,
//! [`audit`] recomputes a whole stream block by block, and [`export`] writes and
//! verifies `trail-export-v1` exports (records with a proof bundle, complete for a time
//! range).

pub mod audit;
mod batch_split;
pub mod block;
pub mod bundle;
pub mod checkpoint;
mod client;
mod encoded_batch;
mod endpoint_set;
mod error;
pub mod event;
pub mod export;
pub mod json;
mod leader_cache;
pub mod note;
mod retry;
mod shard_map;
mod shard_map_cache;
pub mod verify;
pub mod workload;

pub use client::{BlockStream, Client, ClientOptions, RetryStats};
pub use encoded_batch::EncodedBatch;
pub use error::{code_name, ConnectFailure, Error, Result};
pub use retry::RetryPolicy;
pub use trail_proto::v1::{
    Block, Event, EventError, GetCheckpointResponse, GetConsistencyProofResponse, GetProofResponse,
    Receipt, RecordBatchResponse, StatusResponse, StoredEvent, TailResponse,
};

/// The server refuses batches larger than this (see `RecordBatch` in `trail.proto`).
pub const BATCH_EVENTS_MAX: usize = 10_000;
