//! `ClusterInit`: the metadata group's leader records the cluster map (the data shards
//! and their replicas); every node opens its replicas when the map reaches its own
//! replica of shard 0 (`node::watch_cluster_map`).

use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};
use trail_proto::v1;

use super::forward;
use crate::node::cluster::{read_map, ClusterMap};
use crate::node::Node;

/// How long `cluster init` waits for the data shards to elect leaders.
/// Opening a shard takes ~0.1-0.3 s (its keyspaces, its Raft group), so 200 shards
/// on a node take up to a minute.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

pub async fn init(
    node: &Node,
    request: Request<v1::ClusterInitRequest>,
) -> Result<Response<v1::ClusterInitResponse>, Status> {
    let Some(cluster) = &node.config.cluster else {
        return Err(Status::failed_precondition(
            "this node runs alone (started without --peers): its shards exist already",
        ));
    };
    if let Some(target) = super::meta::leader_elsewhere(node, &request)? {
        return forward::call(node, target, request, |mut client, request| async move {
            client.cluster_init(request).await
        })
        .await;
    }
    let meta = super::meta::replica(node)?;
    let wanted = request.into_inner();
    let map = ClusterMap::place(
        &cluster.cluster_id,
        &cluster.peers,
        &cluster.raft_addrs,
        wanted.shards,
        wanted.replicas,
        &node.signer.verifier_key(),
    )
    .map_err(Status::invalid_argument)?;
    let record = map.to_record(node.clock.now_ns(), "trailctl cluster init");
    let receipt = super::meta::propose(node, record, "the map").await?;
    let keyspaces = meta.keyspaces.clone();
    let stored = tokio::task::spawn_blocking(move || read_map(&keyspaces))
        .await
        .map_err(|_| Status::internal("read task failed"))?
        .map_err(|error| Status::internal(error.to_string()))?
        .ok_or_else(|| Status::internal("the acknowledged map is not in shard 0"))?;
    if receipt.deduplicated && (stored.shards, stored.replicas) != (map.shards, map.replicas) {
        return Err(Status::failed_precondition(format!(
            "the cluster was initialized already with {} shards x {} replicas; changing \
             them is not supported yet",
            stored.shards, stored.replicas
        )));
    }
    wait_ready(node, &stored).await?;
    Ok(Response::new(v1::ClusterInitResponse {
        map: Some(stored.to_proto()),
        created: !receipt.deduplicated,
    }))
}

/// Waits until this node opened its replicas and each knows a leader.
async fn wait_ready(node: &Node, map: &ClusterMap) -> Result<(), Status> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let local = map.shards_on(node.config.node_id);
        let ready = node.router.map().is_some()
            && local
                .iter()
                .all(|&shard| node.router.leader_of(shard).is_some());
        if ready {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Status::deadline_exceeded(format!(
                "the map is recorded, but not every data shard elected a leader within \
                 {READY_TIMEOUT:?}; `trailctl status` shows which"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
