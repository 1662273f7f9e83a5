//! Everything openraft: the type configuration, Raft settings and the peer network.
//!
//! openraft is pinned at `=0.9.25` (older 0.9 releases can commit without a quorum,
//! openraft #1802). Its types stay inside this module and `storage`, so a move to 0.10
//! touches these two places only.

pub mod network;

use std::time::Duration;

use crate::ledger::{LedgerCommand, LedgerResponse};

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Trail's Raft types: entries carry ledger commands; snapshots are files.
    pub TypeConfig:
        D = LedgerCommand,
        R = LedgerResponse,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub type Snapshot = openraft::storage::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type LogState = openraft::storage::LogState<TypeConfig>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, openraft::BasicNode>;

/// A group's Raft timers, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTiming {
    pub heartbeat_ms: u64,
    pub election_ms: (u64, u64),
}

impl Default for RaftTiming {
    /// Timing for a node that hosts many groups.
    ///
    /// openraft 0.9 does not coalesce heartbeats: every group sends its own. At the
    /// default 50 ms heartbeat, 200 groups with 2 followers each would be 8,000 RPCs/s at
    /// idle; at 500 ms it is 800/s. Elections must be well above the heartbeat.
    fn default() -> RaftTiming {
        RaftTiming {
            heartbeat_ms: 500,
            election_ms: (1_500, 3_000),
        }
    }
}

/// The Raft configuration of a group with `timing` (a node's default, or the faster
/// timers of the simulation's real-disk mode).
pub fn raft_config(
    cluster_name: &str,
    snapshot_logs_since_last: u64,
    timing: RaftTiming,
) -> openraft::Config {
    let config = openraft::Config {
        cluster_name: cluster_name.to_string(),
        heartbeat_interval: timing.heartbeat_ms,
        election_timeout_min: timing.election_ms.0,
        election_timeout_max: timing.election_ms.1,
        install_snapshot_timeout: 10_000,
        // A Trail entry is a group-committed batch of up to a few thousand events, so a
        // few hundred entries per AppendEntries is plenty.
        max_payload_entries: 64,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_logs_since_last),
        max_in_snapshot_log_to_keep: 0,
        ..Default::default()
    };
    config.validate().expect("raft timing is valid")
}

/// How long a client write may wait for its commit before the caller gives up.
pub const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
