//! What queries and reads share, below both the indexes (`index/`) and the shard's
//! query and reads (`shard/`), so that neither imports the other's types: the filters
//! and their order, the cursor that continues a query, the node secrets behind cursors
//! and index terms, and the read error (docs/QUERY.md).

pub mod cursor;
pub mod cursor_key;
pub mod filter;
pub mod read_error;

pub use filter::{ActionMatch, Filters, Order};
pub use read_error::ReadError;
