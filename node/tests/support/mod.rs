//! What the node's integration tests share: a sample event, and a single-replica shard
//! opened on a real store and elected. Each test file takes what it needs (`mod
//! support;`), so a function one file leaves unused is not dead code.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use trail_node::clock::SystemClock;
use trail_node::ledger::{ActorKind, EventRecord, Outcome};
use trail_node::shard::{
    self, BatchLimits, SealerSettings, ShardHandle, ShardSettings, ShardTasks,
};
use trail_node::storage::NodeStore;

/// Event `evt_<number>` of `tenant_id`: a user reading a document, its time set by
/// `number`.
pub fn event(tenant_id: &str, number: u64) -> EventRecord {
    EventRecord {
        event_id: format!("evt_{number}"),
        tenant_id: tenant_id.to_string(),
        actor_kind: ActorKind::User,
        actor_id: "user_1".into(),
        actor_email: String::new(),
        actor_name: String::new(),
        action: "doc.read".into(),
        resource_type: "doc".into(),
        resource_id: format!("doc_{number}"),
        outcome: Outcome::Success,
        occurred_at_ns: 1_700_000_000_000_000_000 + number as i64,
        request_id: String::new(),
        session_id: String::new(),
        ip_address: String::new(),
        user_agent: String::new(),
        metadata_json: String::new(),
        subject_id: String::new(),
    }
}

/// Shard 1 of a node store in `dir`, alone in its group, once it leads. Its sealer's
/// timers are far off (10 minutes): a test seals when it asks to.
pub async fn open_single_shard(dir: &TempDir, cluster_name: &str) -> (ShardHandle, ShardTasks) {
    let store = NodeStore::open(dir.path()).expect("open node store");
    let settings = ShardSettings {
        node_id: 1,
        cluster_name: cluster_name.into(),
        snapshot_logs_since_last: 1_000,
        raft_timing: Default::default(),
        limits: BatchLimits::default(),
        sealer: SealerSettings {
            node_id: 1,
            seal_interval: Duration::from_secs(600),
            checkpoint_interval: Duration::from_secs(600),
            origin: "trail.test".into(),
        },
        signer: Arc::new(
            trail_node::node::key::load_or_create(dir.path(), "trail.test").expect("key"),
        ),
        publisher: None,
        peers: trail_node::consensus::network::Peers::none(1),
    };
    let alone = std::collections::BTreeMap::from([(1, "127.0.0.1:1".to_string())]);
    let (handle, tasks) = shard::open(&store, 1, &settings, &alone, 0, Arc::new(SystemClock))
        .await
        .expect("open shard");
    handle
        .raft
        .wait(Some(Duration::from_secs(30)))
        .state(
            openraft::ServerState::Leader,
            "single replica elects itself",
        )
        .await
        .expect("leader");
    (handle, tasks)
}
