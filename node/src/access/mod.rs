//! Access control: API keys with a role and a tenant scope, kept as ledger data, and
//! the check every request passes (docs/SECURITY.md).
//!
//! - `key.rs`: roles, scopes, tokens, and the `_access` events that create and revoke
//!   keys;
//! - `directory.rs`: the keys as this node's replica of shard 0 records them, and what
//!   a request's token is allowed;
//! - `quota.rs`: per-tenant ingest quotas (events/s, bytes/s), charged where a tenant's
//!   events are submitted to its shard.
//!
//! The API (`api/auth.rs`) authenticates every request against the directory and
//! authorizes it by the role and tenant its call needs.

pub mod directory;
pub mod key;
pub mod quota;

pub use directory::{AuthError, Denied, KeyDirectory, KeyRecord, Principal};
pub use key::{Role, Scope, Token};
