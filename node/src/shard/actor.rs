//! The shard actor: owns a shard's lifecycle (supervision, status, orderly stop). It is
//! the control plane only; events flow through [`ShardHandle`] without touching actix.

use std::time::Duration;

use actix::prelude::*;
use openraft::ServerState;

use super::batcher::DRAIN_TIMEOUT;
use super::{ShardHandle, ShardTasks};
use crate::ledger::routing::ShardId;

/// How often the actor checks that its Raft group and batcher are alive.
const SUPERVISE_INTERVAL: Duration = Duration::from_secs(1);

pub struct ShardActor {
    handle: ShardHandle,
    tasks: Option<ShardTasks>,
}

impl ShardActor {
    pub fn new(handle: ShardHandle, tasks: ShardTasks) -> ShardActor {
        ShardActor {
            handle,
            tasks: Some(tasks),
        }
    }

    /// A Raft group that stopped on a storage error, or a batcher that died, leaves the
    /// shard unable to ack anything: stop the node loudly rather than limp on. A
    /// restart recovers from the durable log.
    fn supervise(&mut self) {
        let metrics = self.handle.raft.metrics().borrow().clone();
        if let Err(fatal) = &metrics.running_state {
            tracing::error!(shard = self.handle.shard, error = %fatal, "raft group stopped; stopping the node");
            std::process::exit(70);
        }
        if let Some(tasks) = &self.tasks {
            if tasks.batcher.is_finished() {
                tracing::error!(
                    shard = self.handle.shard,
                    "batcher ended unexpectedly; stopping the node"
                );
                std::process::exit(70);
            }
        }
    }
}

impl Actor for ShardActor {
    type Context = Context<Self>;

    fn started(&mut self, context: &mut Context<Self>) {
        context.run_interval(SUPERVISE_INTERVAL, |actor, _| actor.supervise());
    }
}

/// A point-in-time view of a shard for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardStatus {
    pub shard: ShardId,
    pub role: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: u64,
    pub last_applied_index: u64,
    pub events: u64,
    pub streams: u64,
    pub queue_bytes: u64,
    /// Event ids the dedup index got back at open (`StateMachine::check_dedup_index`).
    pub dedup_rebuilt_ids: u64,
    /// On a leader: every replica's matched log index (itself included).
    pub replicas: Vec<ReplicaProgress>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaProgress {
    pub node_id: u64,
    pub matched_index: u64,
}

#[derive(Message)]
#[rtype(result = "ShardStatus")]
pub struct GetShardStatus;

impl Handler<GetShardStatus> for ShardActor {
    type Result = MessageResult<GetShardStatus>;

    fn handle(&mut self, _: GetShardStatus, _: &mut Context<Self>) -> Self::Result {
        let metrics = self.handle.raft.metrics().borrow().clone();
        let counters = &self.handle.counters;
        let role = match metrics.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        MessageResult(ShardStatus {
            shard: self.handle.shard,
            role: role.to_string(),
            leader: metrics.current_leader,
            term: metrics.current_term,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            last_applied_index: metrics.last_applied.map_or(0, |log_id| log_id.index),
            events: counters
                .events_total
                .load(std::sync::atomic::Ordering::Relaxed),
            streams: counters.tenants.load(std::sync::atomic::Ordering::Relaxed),
            queue_bytes: self.handle.queue.depth_bytes() as u64,
            dedup_rebuilt_ids: counters
                .dedup_rebuilt_ids
                .load(std::sync::atomic::Ordering::Relaxed),
            replicas: metrics
                .replication
                .iter()
                .flat_map(|replication| replication.iter())
                .map(|(node_id, matched)| ReplicaProgress {
                    node_id: *node_id,
                    matched_index: matched.map_or(0, |log_id| log_id.index),
                })
                .collect(),
        })
    }
}

/// Stop taking events, ack what is queued, then stop the Raft group.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopShard;

impl Handler<StopShard> for ShardActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: StopShard, _: &mut Context<Self>) -> Self::Result {
        let tasks = self.tasks.take();
        let raft = self.handle.raft.clone();
        let shard = self.handle.shard;
        Box::pin(
            async move {
                if let Some(tasks) = tasks {
                    // A round cut short leaves at most a proposal in the log, which
                    // applies (or not) like any other: nothing half-done.
                    let _ = tasks.stop_sealer.send(());
                    tasks.sealer.abort();
                    let _ = tasks.stop_batcher.send(());
                    if tokio::time::timeout(DRAIN_TIMEOUT, tasks.batcher)
                        .await
                        .is_err()
                    {
                        tracing::warn!(shard, "queue did not drain in time");
                    }
                }
                if let Err(error) = raft.shutdown().await {
                    tracing::warn!(shard, %error, "raft shutdown");
                }
            }
            .into_actor(self)
            .map(|_, actor, context| {
                tracing::info!(shard = actor.handle.shard, "shard stopped");
                context.stop();
            }),
        )
    }
}
