//! The node actor: owns the registry of shard actors, answers status, and stops the
//! shards in order on shutdown.

use std::collections::BTreeMap;
use std::time::Instant;

use actix::prelude::*;

use crate::ledger::routing::ShardId;
use crate::shard::actor::{GetShardStatus, ShardActor, ShardStatus, StopShard};
use crate::shard::{ShardHandle, ShardTasks};

pub struct NodeActor {
    shards: BTreeMap<ShardId, Addr<ShardActor>>,
    started_at: Instant,
}

impl NodeActor {
    pub fn new(shards: BTreeMap<ShardId, Addr<ShardActor>>) -> NodeActor {
        NodeActor {
            shards,
            started_at: Instant::now(),
        }
    }
}

impl Actor for NodeActor {
    type Context = Context<Self>;
}

#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub uptime_ms: u64,
    pub shards: Vec<ShardStatus>,
}

#[derive(Message)]
#[rtype(result = "NodeStatus")]
pub struct GetNodeStatus;

impl Handler<GetNodeStatus> for NodeActor {
    type Result = ResponseFuture<NodeStatus>;

    fn handle(&mut self, _: GetNodeStatus, _: &mut Context<Self>) -> Self::Result {
        let shards: Vec<Addr<ShardActor>> = self.shards.values().cloned().collect();
        let uptime_ms = self.started_at.elapsed().as_millis() as u64;
        Box::pin(async move {
            let mut statuses = Vec::with_capacity(shards.len());
            for shard in shards {
                if let Ok(status) = shard.send(GetShardStatus).await {
                    statuses.push(status);
                }
            }
            NodeStatus {
                uptime_ms,
                shards: statuses,
            }
        })
    }
}

/// Starts actors for shards opened after the node started (a cluster's data shards).
#[derive(Message)]
#[rtype(result = "()")]
pub struct AddShards(pub Vec<(ShardHandle, ShardTasks)>);

impl Handler<AddShards> for NodeActor {
    type Result = ();

    fn handle(&mut self, AddShards(opened): AddShards, _: &mut Context<Self>) {
        for (handle, tasks) in opened {
            let shard = handle.shard;
            self.shards
                .entry(shard)
                .or_insert_with(|| ShardActor::new(handle, tasks).start());
        }
    }
}

/// Stop every shard (each acks what it has queued first).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopNode;

impl Handler<StopNode> for NodeActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: StopNode, _: &mut Context<Self>) -> Self::Result {
        let shards: Vec<Addr<ShardActor>> =
            std::mem::take(&mut self.shards).into_values().collect();
        Box::pin(async move {
            let stops: Vec<_> = shards.iter().map(|shard| shard.send(StopShard)).collect();
            for stop in stops {
                let _ = stop.await;
            }
        })
    }
}
