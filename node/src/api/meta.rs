//! Writes to the metadata group (shard 0): the cluster map (`cluster.rs`) and API key
//! changes (`keys.rs`) are events of its reserved streams, proposed at its leader; a
//! request that reaches another node goes on to the leader.

use tonic::{Request, Status};

use super::forward;
use crate::ledger::{ApplyReceipt, EventRecord};
use crate::node::cluster::META_SHARD;
use crate::node::Node;
use crate::shard::ShardHandle;

/// This node's replica of shard 0.
pub fn replica(node: &Node) -> Result<ShardHandle, Status> {
    node.router
        .local(META_SHARD)
        .ok_or_else(|| Status::internal("every node hosts the metadata group (shard 0)"))
}

/// The node that leads shard 0, if another than this one and `request` was not
/// forwarded here already: the request goes there.
pub fn leader_elsewhere<T>(
    node: &Node,
    request: &Request<T>,
) -> Result<Option<forward::Target>, Status> {
    let meta = replica(node)?;
    let leader = meta.raft.metrics().borrow().current_leader;
    let Some(leader) = leader else {
        return Err(Status::unavailable(
            "the metadata group (shard 0) has no leader yet: a majority of the nodes must be \
             running; retry",
        ));
    };
    if leader == node.config.node_id || super::headers::was_forwarded(request) {
        return Ok(None);
    }
    let Some(forwarder) = node.forwarder.as_ref() else {
        return Ok(None);
    };
    Ok(Some(forward::Target {
        node: leader,
        endpoint: forwarder.endpoint(leader).unwrap_or_default(),
        client: forwarder
            .client(leader)
            .ok_or_else(|| Status::internal("the metadata group's leader is not a peer"))?,
    }))
}

/// Proposes `event` at this node's replica of shard 0 (its leader), waits for its
/// receipt, then until this replica has applied it: a read of shard 0 here sees it.
pub async fn propose(node: &Node, event: EventRecord, what: &str) -> Result<ApplyReceipt, Status> {
    replica(node)?.record_applied(event).await.map_err(|error| {
        Status::unavailable(format!(
            "recording {what}: {error}; retry (it is idempotent)"
        ))
    })
}
