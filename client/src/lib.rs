//! Trail's Rust client SDK.
//!
//! [`Client`] talks to a Trail node over gRPC. Its batch ingest
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

mod client;
mod encoded_batch;
mod error;
pub mod json;
mod retry;
pub mod verify;
pub mod workload;

pub use client::{Client, ClientOptions, RetryStats};
pub use encoded_batch::EncodedBatch;
pub use error::{code_name, Error, Result};
pub use retry::RetryPolicy;
pub use trail_proto::v1::{
    Event, EventError, Receipt, RecordBatchResponse, StatusResponse, StoredEvent, TailResponse,
};

/// The server refuses batches larger than this (see `RecordBatch` in `trail.proto`).
pub const BATCH_EVENTS_MAX: usize = 10_000;
