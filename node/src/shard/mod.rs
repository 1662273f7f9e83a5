//! A shard: one Raft group (openraft over fjall), its group-commit batcher, its reads,
//! and the actor that owns its lifecycle.

pub mod actor;
pub mod batcher;
pub mod cursor;
pub mod proofs;
pub mod query;
pub mod reader;
pub mod sealer;

use std::collections::BTreeMap;
use std::sync::Arc;

use openraft::BasicNode;
use tokio::sync::oneshot;

use crate::clock::Clock;
use crate::consensus::{self, network::LocalOnlyNetwork, NodeId, Raft};
use crate::ledger::routing::ShardId;
use crate::ledger::EventRecord;
use crate::ledger::NoteSigner;
use crate::storage::publish::Publisher;
use crate::storage::state_machine::ShardCounters;
use crate::storage::{LogStore, NodeStore, ShardKeyspaces, StateMachine};
pub use batcher::{BatchLimits, IngestError, IngestQueue, IngestReply};
pub use sealer::{Sealer, SealerSettings};

/// Settings a shard is opened with.
#[derive(Clone)]
pub struct ShardSettings {
    pub node_id: NodeId,
    pub advertise_addr: String,
    pub cluster_name: String,
    pub snapshot_logs_since_last: u64,
    pub limits: BatchLimits,
    pub sealer: SealerSettings,
    pub signer: Arc<NoteSigner>,
    pub publisher: Option<Publisher>,
}

/// Everything the data path needs to reach a shard. Cheap to clone.
#[derive(Clone)]
pub struct ShardHandle {
    pub shard: ShardId,
    pub raft: Raft,
    pub queue: IngestQueue,
    pub keyspaces: ShardKeyspaces,
    pub counters: Arc<ShardCounters>,
    pub sealer: Arc<Sealer>,
}

impl ShardHandle {
    pub fn submit(
        &self,
        events: Vec<EventRecord>,
    ) -> Result<oneshot::Receiver<IngestReply>, IngestError> {
        self.queue.submit(events)
    }
}

/// The background work of a shard, owned by its actor.
pub struct ShardTasks {
    pub batcher: tokio::task::JoinHandle<()>,
    pub stop_batcher: oneshot::Sender<()>,
    pub sealer: tokio::task::JoinHandle<()>,
    pub stop_sealer: oneshot::Sender<()>,
}

/// Opens a shard's storage, starts its Raft group (a single-replica group on first
/// start) and its batcher. Must run on the multi-thread runtime: openraft spawns its
/// tasks where it is created.
pub async fn open(
    store: &NodeStore,
    shard: ShardId,
    settings: &ShardSettings,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<(ShardHandle, ShardTasks)> {
    let keyspaces = store.shard(shard)?;
    let log_store = LogStore::open(store.db.clone(), &keyspaces, store.syncer.clone())?;
    let state_machine =
        StateMachine::open(store.db.clone(), &keyspaces, settings.publisher.clone())?;
    let counters = state_machine.counters.clone();
    let config = Arc::new(consensus::raft_config(
        &format!("{}-shard-{shard}", settings.cluster_name),
        settings.snapshot_logs_since_last,
    ));
    let raft = Raft::new(
        settings.node_id,
        config,
        LocalOnlyNetwork,
        log_store,
        state_machine,
    )
    .await?;
    if !raft.is_initialized().await? {
        let mut members = BTreeMap::new();
        members.insert(
            settings.node_id,
            BasicNode {
                addr: settings.advertise_addr.clone(),
            },
        );
        raft.initialize(members).await?;
    }
    let (queue, receiver) = batcher::queue(shard, settings.limits);
    let (stop_batcher, stop_signal) = oneshot::channel();
    let batcher = tokio::spawn(batcher::run(
        shard,
        raft.clone(),
        clock.clone(),
        settings.limits,
        receiver,
        stop_signal,
    ));
    let sealer = Arc::new(Sealer::new(
        shard,
        raft.clone(),
        clock,
        settings.signer.clone(),
        settings.sealer.clone(),
    ));
    let (stop_sealer, stop_signal) = oneshot::channel();
    let sealer_task = tokio::spawn(sealer::run(sealer.clone(), counters.clone(), stop_signal));
    let handle = ShardHandle {
        shard,
        raft,
        queue,
        keyspaces,
        counters,
        sealer,
    };
    Ok((
        handle,
        ShardTasks {
            batcher,
            stop_batcher,
            sealer: sealer_task,
            stop_sealer,
        },
    ))
}
