//! Forwarding in a cluster: any node takes any request and sends it on to the leader
//! of the tenant's shard, once. A forwarded request carries `trail-forwarded` and is
//! served where it lands (a node that lost the leadership meanwhile answers
//! `UNAVAILABLE`, and the SDK retries); the response names the leader in `trail-leader`
//! so the SDK can go there directly.

use std::future::Future;
use std::net::SocketAddr;

use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use trail_proto::v1::trail_client::TrailClient;

use crate::consensus::NodeId;
use crate::node::cluster::{FORWARDED_HEADER, LEADER_HEADER};
use crate::node::Node;

use super::headers::{ACTOR_HEADER, FORWARDED_FOR_HEADER};
use super::params::Consistency;

/// How long a forwarded call may take at most (the caller's own deadline usually ends
/// it first: dropping the call cancels the forwarded one).
const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The leader a request is forwarded to.
pub struct Target {
    pub node: NodeId,
    pub endpoint: String,
    pub client: TrailClient<Channel>,
}

/// Whether a read is answered by this node's own replica, not forwarded: an eventual
/// read of a tenant whose shard has a replica here.
pub fn replica_here(node: &Node, tenant_id: &str, consistency: Consistency) -> bool {
    consistency == Consistency::Eventual && node.router.shard_for(tenant_id).is_ok()
}

/// Where a request for `tenant_id` must go, if not here: `None` on a single node, for
/// a request that was forwarded already, when this node leads the tenant's shard, or
/// when no leader is known (served here: the answer is a retryable error).
pub fn target(node: &Node, tenant_id: &str, forwarded: bool) -> Option<Target> {
    let forwarder = node.forwarder.as_ref()?;
    if forwarded {
        return None;
    }
    let shard = node.router.shard_id_for(tenant_id)?;
    let leader = node.router.leader_of(shard)?;
    if leader == forwarder.node() {
        return None;
    }
    Some(Target {
        node: leader,
        endpoint: forwarder.endpoint(leader)?,
        client: forwarder.client(leader)?,
    })
}

/// The request as it is sent on: the same message and caller identity, marked as
/// forwarded by this node, with the caller's address.
pub fn onward<T>(node: &Node, request: Request<T>) -> Request<T> {
    let remote = request.remote_addr();
    let forwarded_for = request
        .metadata()
        .get(FORWARDED_FOR_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    let (metadata, _, message) = request.into_parts();
    let mut onward = Request::new(message);
    // The caller's token goes on: the leader authenticates the request again.
    for key in [ACTOR_HEADER, "user-agent", super::auth::AUTHORIZATION] {
        if let Some(value) = metadata.get(key) {
            onward.metadata_mut().insert(key, value.clone());
        }
    }
    let from = node.config.node_id.to_string();
    onward.metadata_mut().insert(
        FORWARDED_HEADER,
        MetadataValue::try_from(from.as_str()).expect("digits"),
    );
    let client = forwarded_for.or_else(|| remote.map(|addr| addr.to_string()));
    if let Some(client) = client.and_then(|text| MetadataValue::try_from(text.as_str()).ok()) {
        onward.metadata_mut().insert(FORWARDED_FOR_HEADER, client);
    }
    onward.set_timeout(FORWARD_TIMEOUT);
    onward
}

/// Sends `request` to `target` with `call` and names the leader in the response.
pub async fn call<T, R, F, Fut>(
    node: &Node,
    target: Target,
    request: Request<T>,
    call: F,
) -> Result<Response<R>, Status>
where
    F: FnOnce(TrailClient<Channel>, Request<T>) -> Fut,
    Fut: Future<Output = Result<Response<R>, Status>>,
{
    if let Some(forwarder) = &node.forwarder {
        forwarder
            .counters
            .grpc_requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let onward = onward(node, request);
    let mut response = call(target.client, onward).await.map_err(|status| {
        let mut status = unreachable_leader(target.node, status);
        insert_leader(status.metadata_mut(), &target.endpoint);
        status
    })?;
    insert_leader(response.metadata_mut(), &target.endpoint);
    Ok(response)
}

/// A leader that could not be reached: retryable, naming the node.
pub fn unreachable_leader(node: NodeId, status: Status) -> Status {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
            Status::unavailable(format!(
                "forwarded to node {node}, the shard's leader: {}",
                status.message()
            ))
        }
        _ => status,
    }
}

fn insert_leader(metadata: &mut tonic::metadata::MetadataMap, endpoint: &str) {
    if let Ok(value) = MetadataValue::try_from(endpoint) {
        metadata.insert(LEADER_HEADER, value);
    }
}

/// The caller's address for the audit record of a read: the one a peer node forwarded
/// on its behalf, else the connection's.
pub fn client_addr<T>(node: &Node, request: &Request<T>) -> Option<SocketAddr> {
    let forwarded_for = request
        .metadata()
        .get(FORWARDED_FOR_HEADER)
        .and_then(|value| value.to_str().ok());
    trusted_client_addr(node, forwarded_for, request.remote_addr())
}

/// `forwarded_for` (a `trail-forwarded-for` value) when the connection comes from a
/// node of the cluster, else the connection's address `remote`.
pub fn trusted_client_addr(
    node: &Node,
    forwarded_for: Option<&str>,
    remote: Option<SocketAddr>,
) -> Option<SocketAddr> {
    let forwarded_for = forwarded_for.and_then(|text| text.parse::<SocketAddr>().ok());
    match (forwarded_for, &node.forwarder, remote) {
        (Some(original), Some(forwarder), Some(remote)) if forwarder.is_peer_ip(remote.ip()) => {
            Some(original)
        }
        _ => remote,
    }
}

/// Forwards a tenant-scoped unary call to its shard leader when this node is not it;
/// otherwise falls through to the local handling that follows.
macro_rules! forward_to_leader {
    ($service:expr, $request:ident, $tenant:expr, $method:ident) => {
        let forwarded = $crate::api::headers::was_forwarded(&$request);
        if let Some(target) = $crate::api::forward::target(&$service.node, $tenant, forwarded) {
            return $crate::api::forward::call(
                &$service.node,
                target,
                $request,
                |mut client, request| async move { client.$method(request).await },
            )
            .await;
        }
    };
}
pub(crate) use forward_to_leader;

/// [`forward_to_leader!`] for a read asked with `consistency`: an eventual read of a
/// shard with a replica here is served here.
macro_rules! forward_read {
    ($service:expr, $request:ident, $tenant:expr, $consistency:expr, $method:ident) => {
        if !$crate::api::forward::replica_here(&$service.node, $tenant, $consistency) {
            $crate::api::forward::forward_to_leader!($service, $request, $tenant, $method);
        }
    };
}
pub(crate) use forward_read;
