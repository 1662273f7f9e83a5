//! Which node leads each data shard of a cluster, as the nodes' `Status` answers said,
//! and which shard a tenant's events go to. Pure bookkeeping with no I/O, so the merge
//! rules and the placement function are unit-tested directly.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use trail_proto::v1::{ClusterMap, StatusResponse};

/// Data shards a map may have: the server's own bound (`CLUSTER_SHARDS_MAX` in
/// node/src/node/cluster.rs). One entry is ~40 bytes, so a full map is ~40 KiB.
pub(crate) const SHARDS_MAX: u32 = 1_024;

/// Nodes a map may name. A cluster has 3 or 5 nodes; 64 leaves room for a larger one
/// while refusing a runaway answer.
pub(crate) const NODES_MAX: usize = 64;

/// A [`ShardStatus`](trail_proto::v1::ShardStatus) role naming the reporting node as
/// the shard's leader.
const ROLE_LEADER: &str = "leader";

/// The part of a tenant id that decides its shard: the first 8 bytes of its SHA-256,
/// big-endian. Kept per event by [`crate::EncodedBatch`] (8 bytes instead of the id),
/// so the shard under any shard count is one remainder away.
pub(crate) fn tenant_key(tenant_id: &str) -> u64 {
    let digest = Sha256::digest(tenant_id.as_bytes());
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(prefix)
}

/// The data shard (1..=`shards`) of the tenant whose [`tenant_key`] is `key`. The same
/// function as the server's `shard_for_tenant` (node/src/ledger/routing.rs); the test
/// vectors below pin it.
pub(crate) fn shard_of_key(key: u64, shards: u32) -> u32 {
    assert!(shards > 0, "a cluster has at least one data shard");
    let shard_index = key % u64::from(shards);
    1 + u32::try_from(shard_index).expect("a remainder below a u32 fits in a u32")
}

/// The leader of one shard, and how we know.
#[derive(Clone, Debug)]
struct LeaderReport {
    endpoint: Arc<str>,
    /// The Raft term the report was made in: a later term is newer knowledge.
    term: u64,
    /// Reported by the leader itself (role "leader"), not by a follower.
    self_reported: bool,
}

/// A cluster's nodes and the leader of each data shard, where known.
#[derive(Clone, Debug)]
pub(crate) struct ShardMap {
    cluster_id: String,
    shards: u32,
    /// Node id and gRPC endpoint (`http://` + the node's `grpc_addr`) of every node.
    nodes: Vec<(u64, Arc<str>)>,
    /// The leader of shard `s` at index `s - 1`.
    leaders: Vec<Option<LeaderReport>>,
    /// The endpoints in `leaders`, once each: the nodes batches are sent to.
    leading: Vec<Arc<str>>,
}

impl ShardMap {
    /// A map of `cluster`'s nodes with no leader known yet. `None` when the map is one
    /// the client does not split batches by: no shards, or more shards or nodes than
    /// the bounds.
    pub(crate) fn new(cluster: &ClusterMap) -> Option<ShardMap> {
        if !(1..=SHARDS_MAX).contains(&cluster.shards) {
            tracing::debug!(
                shards = cluster.shards,
                "not splitting batches: the cluster's shard count is out of range"
            );
            return None;
        }
        if cluster.nodes.is_empty() || cluster.nodes.len() > NODES_MAX {
            tracing::debug!(
                nodes = cluster.nodes.len(),
                "not splitting batches: the cluster's node count is out of range"
            );
            return None;
        }
        let mut nodes = Vec::with_capacity(cluster.nodes.len());
        for node in &cluster.nodes {
            if node.grpc_addr.is_empty() {
                continue;
            }
            let endpoint = format!("http://{}", node.grpc_addr.trim_end_matches('/'));
            nodes.push((node.node_id, Arc::from(endpoint.as_str())));
        }
        let shards_count = cluster.shards as usize;
        Some(ShardMap {
            cluster_id: cluster.cluster_id.clone(),
            shards: cluster.shards,
            nodes,
            leaders: vec![None; shards_count],
            leading: Vec::new(),
        })
    }

    pub(crate) fn shards(&self) -> u32 {
        self.shards
    }

    /// Every node's endpoint.
    pub(crate) fn node_endpoints(&self) -> impl Iterator<Item = &Arc<str>> {
        self.nodes.iter().map(|(_, endpoint)| endpoint)
    }

    /// The endpoint of the node that answered `status`, if it is in the map.
    pub(crate) fn endpoint_of(&self, node_id: u64) -> Option<&Arc<str>> {
        self.nodes
            .iter()
            .find(|(known, _)| *known == node_id)
            .map(|(_, endpoint)| endpoint)
    }

    /// Whether `status` comes from a node of the same cluster and shard count: only
    /// then are its shard reports about the same shards.
    pub(crate) fn accepts(&self, status: &StatusResponse) -> bool {
        status.cluster.as_ref().is_some_and(|cluster| {
            cluster.cluster_id == self.cluster_id && cluster.shards == self.shards
        })
    }

    /// Folds in the shard reports of one node's `Status`. A node reports the shards
    /// it hosts: as their leader (role "leader"), or as a replica naming the leader
    /// it follows. Per shard, a report of a later Raft term replaces an earlier one;
    /// at the same term the leader's own report replaces a follower's.
    pub(crate) fn merge_status(&mut self, status: &StatusResponse) {
        if !self.accepts(status) {
            return;
        }
        for shard in &status.shards {
            let Some(index) = shard
                .shard_id
                .checked_sub(1)
                .map(|index| index as usize)
                .filter(|&index| index < self.leaders.len())
            else {
                // Shard 0 is the metadata group; no events go there.
                continue;
            };
            let self_reported = shard.role == ROLE_LEADER;
            let node_id = if self_reported {
                status.node_id
            } else {
                shard.leader_node_id
            };
            if node_id == 0 {
                continue;
            }
            let Some(endpoint) = self.endpoint_of(node_id).cloned() else {
                continue;
            };
            let report = LeaderReport {
                endpoint,
                term: shard.term,
                self_reported,
            };
            let replaces = match &self.leaders[index] {
                None => true,
                Some(known) => {
                    report.term > known.term
                        || (report.term == known.term && self_reported && !known.self_reported)
                }
            };
            if replaces {
                self.leaders[index] = Some(report);
            }
        }
        // At most SHARDS_MAX x NODES_MAX comparisons, once per Status answer.
        self.leading.clear();
        for report in self.leaders.iter().flatten() {
            if !self.leading.contains(&report.endpoint) {
                self.leading.push(report.endpoint.clone());
            }
        }
        assert!(self.leading.len() <= self.nodes.len());
    }

    /// The endpoints of the nodes leading some shard, once each.
    pub(crate) fn leader_endpoints(&self) -> &[Arc<str>] {
        &self.leading
    }

    /// The endpoint of the node leading `shard`, if known.
    pub(crate) fn leader_of_shard(&self, shard: u32) -> Option<&Arc<str>> {
        let index = shard.checked_sub(1)? as usize;
        let report = self.leaders.get(index)?.as_ref()?;
        Some(&report.endpoint)
    }

    /// The node id of the leader of `shard`, if known.
    #[cfg(test)]
    fn leader_node_of_shard(&self, shard: u32) -> Option<u64> {
        let endpoint = self.leader_of_shard(shard)?;
        let (node_id, _) = self.nodes.iter().find(|(_, known)| known == endpoint)?;
        Some(*node_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trail_proto::v1::{ClusterNode, ShardStatus};

    fn shard_for_tenant(tenant_id: &str, shards: u32) -> u32 {
        shard_of_key(tenant_key(tenant_id), shards)
    }

    #[test]
    fn placement_matches_the_server() {
        // Computed once with the server's function (node/src/ledger/routing.rs,
        // `shard_for_tenant`), cross-checked with Python's hashlib:
        // 1 + int.from_bytes(sha256(tenant).digest()[:8], "big") % shards.
        // A change here moves tenants away from their shard's leader.
        let vectors: [(&str, [u32; 6]); 6] = [
            ("ten_0001", [1, 3, 2, 3, 2, 130]),
            ("ten_0002", [1, 3, 2, 4, 2, 210]),
            ("ten_0005", [1, 1, 3, 4, 7, 7]),
            ("ten_0006", [1, 2, 1, 4, 5, 245]),
            ("acme", [1, 1, 1, 3, 1, 161]),
            ("ten_é", [1, 1, 1, 3, 9, 57]),
        ];
        let shard_counts = [1, 3, 4, 7, 16, 256];
        for (tenant_id, expected) in vectors {
            for (shards, shard) in shard_counts.iter().zip(expected) {
                assert_eq!(
                    shard_for_tenant(tenant_id, *shards),
                    shard,
                    "tenant {tenant_id} with {shards} shards"
                );
            }
        }
    }

    fn cluster(shards: u32) -> ClusterMap {
        ClusterMap {
            cluster_id: "trail".to_string(),
            nodes: (1..=3)
                .map(|node_id| ClusterNode {
                    node_id,
                    grpc_addr: format!("10.0.0.{node_id}:7400"),
                    peer_addr: String::new(),
                })
                .collect(),
            shards,
            replicas: 3,
            ..ClusterMap::default()
        }
    }

    fn report(shard_id: u32, role: &str, leader_node_id: u64, term: u64) -> ShardStatus {
        ShardStatus {
            shard_id,
            role: role.to_string(),
            leader_node_id,
            term,
            ..ShardStatus::default()
        }
    }

    fn status(node_id: u64, shards: Vec<ShardStatus>) -> StatusResponse {
        StatusResponse {
            node_id,
            shards,
            cluster: Some(cluster(4)),
            ..StatusResponse::default()
        }
    }

    #[test]
    fn leaders_come_from_followers_and_leaders() {
        let mut map = ShardMap::new(&cluster(4)).unwrap();
        assert_eq!(map.leader_of_shard(1), None);
        map.merge_status(&status(
            1,
            vec![
                report(0, "leader", 1, 1),
                report(1, "leader", 1, 2),
                report(2, "follower", 2, 2),
                report(3, "follower", 0, 2),
            ],
        ));
        assert_eq!(
            map.leader_of_shard(1).map(|e| &**e),
            Some("http://10.0.0.1:7400")
        );
        assert_eq!(map.leader_node_of_shard(2), Some(2));
        assert_eq!(map.leader_of_shard(3), None);
        assert_eq!(map.leader_of_shard(0), None);
        assert_eq!(map.leader_of_shard(5), None);
        map.merge_status(&status(
            3,
            vec![report(3, "leader", 3, 2), report(4, "follower", 3, 2)],
        ));
        assert_eq!(map.leader_node_of_shard(3), Some(3));
        assert_eq!(map.leader_node_of_shard(4), Some(3));
        let leading: Vec<&str> = map.leader_endpoints().iter().map(|e| &**e).collect();
        assert_eq!(
            leading,
            vec![
                "http://10.0.0.1:7400",
                "http://10.0.0.2:7400",
                "http://10.0.0.3:7400"
            ]
        );
    }

    #[test]
    fn a_leaders_own_report_wins_at_the_same_term_and_a_later_term_wins() {
        let mut map = ShardMap::new(&cluster(4)).unwrap();
        // A follower still naming the old leader, then the new leader itself.
        map.merge_status(&status(1, vec![report(1, "follower", 2, 5)]));
        map.merge_status(&status(3, vec![report(1, "leader", 3, 5)]));
        assert_eq!(map.leader_node_of_shard(1), Some(3));
        // A follower's report of the same term does not replace the leader's own.
        map.merge_status(&status(2, vec![report(1, "follower", 2, 5)]));
        assert_eq!(map.leader_node_of_shard(1), Some(3));
        // A later term does: the leadership moved since.
        map.merge_status(&status(2, vec![report(1, "follower", 1, 6)]));
        assert_eq!(map.leader_node_of_shard(1), Some(1));
        // An earlier term does not.
        map.merge_status(&status(3, vec![report(1, "leader", 3, 5)]));
        assert_eq!(map.leader_node_of_shard(1), Some(1));
    }

    #[test]
    fn reports_of_other_clusters_and_unknown_nodes_are_ignored() {
        let mut map = ShardMap::new(&cluster(4)).unwrap();
        let mut other = status(1, vec![report(1, "leader", 1, 9)]);
        other.cluster.as_mut().unwrap().cluster_id = "other".to_string();
        map.merge_status(&other);
        let mut resharded = status(1, vec![report(1, "leader", 1, 9)]);
        resharded.cluster.as_mut().unwrap().shards = 8;
        map.merge_status(&resharded);
        map.merge_status(&status(1, vec![report(1, "follower", 9, 9)]));
        assert_eq!(map.leader_of_shard(1), None);
    }

    #[test]
    fn maps_beyond_the_bounds_are_not_used() {
        assert!(ShardMap::new(&cluster(0)).is_none());
        assert!(ShardMap::new(&cluster(SHARDS_MAX + 1)).is_none());
        assert!(ShardMap::new(&cluster(SHARDS_MAX)).is_some());
        let mut crowded = cluster(4);
        crowded.nodes = (1..=NODES_MAX as u64 + 1)
            .map(|node_id| ClusterNode {
                node_id,
                grpc_addr: format!("10.0.1.{node_id}:7400"),
                peer_addr: String::new(),
            })
            .collect();
        assert!(ShardMap::new(&crowded).is_none());
    }
}
