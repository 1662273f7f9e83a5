//! trail-node: the Trail server.
//!
//! Layout (see docs/ARCHITECTURE.md):
//! - [`ledger`]: the ledger logic, free of I/O (validation, canonical encoding, apply).
//! - [`consensus`]: openraft types, settings and the peer network.
//! - [`storage`]: fjall-backed Raft log and state machine, fsync coalescing.
//! - [`query`]: filters, order, cursors and the read error, shared by reads and indexes.
//! - [`index`]: the secondary indexes behind the log.
//! - [`shard`]: a shard's group commit and its actor.
//! - [`node`]: the node actor, routing and startup.
//! - [`api`]: gRPC and HTTP.

pub mod access;
pub mod api;
pub mod clock;
pub mod config;
pub mod consensus;
pub mod index;
pub mod ledger;
pub mod node;
pub mod query;
pub mod secret_file;
pub mod shard;
pub mod storage;
