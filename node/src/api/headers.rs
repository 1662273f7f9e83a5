//! The request headers (REST) and metadata keys (gRPC) the API reads and writes, and
//! the checks on them every surface makes: who the caller says it is, whether a request
//! was forwarded by a peer node already, whether it asks for this node's own replica.
//! A module of their own so that forwarding, the audit of reads and the services all
//! use them without importing each other.

use tonic::Request;

use crate::node::cluster::FORWARDED_HEADER;

/// The header (REST) or metadata key (gRPC) naming who reads.
pub const ACTOR_HEADER: &str = "x-trail-actor";

/// The client address a forwarding node saw (trusted from peer nodes only).
pub const FORWARDED_FOR_HEADER: &str = "trail-forwarded-for";
/// Request metadata asking for this node's own replica, as it is now: no forwarding
/// and no read barrier (a follower's copy may lag). For operators and tests that
/// compare replicas; `GetEvent`, `Tail` and the block reads honour it.
pub const REPLICA_READ_HEADER: &str = "trail-replica-read";

/// Whether the request must be served where it is: forwarded once already, or a read
/// of this replica.
pub fn was_forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED_HEADER) || is_replica_read(request)
}

pub fn is_replica_read<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(REPLICA_READ_HEADER)
}
