//! Why a read of stored events fails: shared by the shard's reads and queries
//! (`shard/`), the time index's walks (`index/`) and the API's status mapping (`api/`).

/// A failed read. `Corrupt` is never served as data; `IndexBehind` and `TooBroad` ask
/// the client to retry later or narrow the request.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StoreError),
    /// A stored record failed its checks: never served, always reported.
    #[error("corrupt record at {location}: {reason}")]
    Corrupt { location: String, reason: String },
    /// The query indexes are far behind the store (being rebuilt): answering would
    /// mean reading this many events of the stream one by one.
    #[error(
        "the query index is being built ({events} events of this stream not indexed yet); \
         retry shortly (`trailctl status` shows the progress)"
    )]
    IndexBehind { events: u64 },
    /// The filter's index terms are shared by more events than a request reads.
    #[error(
        "the filter matches more than {examined} candidate events to check; narrow it \
         (a time range, another field)"
    )]
    TooBroad { examined: u64 },
}
