//! Trail's Rust client SDK.
//!
//! [`Client`] talks to a Trail node, or to the nodes of a cluster with failover, over
//! gRPC. Its batch ingest
//! ([`Client::record_batch`]) is safe to retry: every event gets a client-side
//! idempotency key (`event_id`) before the first send, so a resend after a timeout or a
//! load refusal is deduplicated by the server rather than recorded twice.
//!
//! Every request carries an API key's token (`authorization: Bearer <token>`): the
//! one in [`ClientOptions::token`], else the one in `TRAIL_TOKEN`. A node writes its
//! first admin key's token to `<data dir>/admin.token`; [`Token`] never shows its
//! secret in errors, logs or `Debug` output. A node that refuses the key answers
//! [`Error::Unauthenticated`] or [`Error::PermissionDenied`], never retried.
//!
//! ```no_run
//! # async fn example() -> trail_client::Result<()> {
//! let token = trail_client::Token::from_file("trail-data/admin.token".as_ref())?;
//! let options = trail_client::ClientOptions::default().with_token(token);
//! let client = trail_client::Client::connect_with("http://127.0.0.1:7400", options).await?;
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
mod token;
pub mod verify;
pub mod workload;

pub use client::{BlockStream, Client, ClientOptions, RetryStats};
pub use encoded_batch::EncodedBatch;
pub use error::{code_name, ConnectFailure, Error, Result};
pub use retry::RetryPolicy;
pub use token::{Token, TOKEN_ENV};
pub use trail_proto::v1::{
    ApiKey, Block, CreateApiKeyRequest, CreateApiKeyResponse, Event, EventError,
    GetCheckpointResponse, GetConsistencyProofResponse, GetProofResponse, Receipt,
    RecordBatchResponse, Role, StatusResponse, StoredEvent, TailResponse,
};

/// The server refuses batches larger than this (see `RecordBatch` in `trail.proto`).
pub const BATCH_EVENTS_MAX: usize = 10_000;
