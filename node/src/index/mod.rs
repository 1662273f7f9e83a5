//! Secondary indexes, built behind the log (docs/QUERY.md, "Indexes").
//!
//! Apply writes one small feed key per batch (`sN.feed`: which seqs of which streams
//! it appended). One indexer thread per node reads the feeds of all shards, takes those
//! events from the batches apply handed over (`storage::recent`) or else reads them
//! from the store, and builds two derived indexes in bulk:
//!
//! - the time index `sN.tindex`: each stream's `(occurred_at, seq)` positions with the
//!   event's filter fields summarized in 19 bytes (`summary.rs`), in blocks of up to 64
//!   keyed by their last position (`time_blocks.rs`): a tenant's events in
//!   `occurred_at` order as one range scan that tests filters without reading events,
//!   for unselective queries and deep keyset pages;
//! - one tantivy index per node (`<data dir>/index`), one document per event with the
//!   tenant-scoped filter terms and the position as fast fields, for selective filters
//!   and counts.
//!
//! Every `commit_interval` it makes them durable together: the time-index keys (with
//! an fsync), then the tantivy commit, whose payload names, per shard, the last feed
//! key it covers. Then it reloads the searcher and publishes a [`Visible`]: the searcher
//! and, per stream, the first seq it does not hold. Queries read the indexes below that
//! seq and the store's events from it on (the tail), so an acknowledged event is never
//! missing from a result. Last, it deletes the feed keys it covered.
//!
//! After a crash the indexer resumes after the payload's feed key; time-index entries
//! are idempotent (an entry written again is merged into its block), and tantivy
//! documents are only added above each stream's watermark. A missing or unreadable
//! index, an index of another format, or a shard whose state was replaced by a
//! snapshot is rebuilt from the store.

mod backlog;
mod handle;
mod indexer;
mod merge;
pub mod schema;
pub mod search;
pub mod summary;
pub mod time_blocks;

pub use handle::{IndexConfig, IndexProgress, NodeIndex, ReindexRunning, Visible};
pub use indexer::shard_documents;
pub use schema::{stream_value, Fields, Terms};
