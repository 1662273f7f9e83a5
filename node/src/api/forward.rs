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
use crate::ledger::validate::FieldError;
use crate::node::cluster::{FORWARDED_HEADER, LEADER_HEADER};
use crate::node::Node;
use trail_proto::v1;

use super::query::ParamError;

/// The client address a forwarding node saw (trusted from peer nodes only).
pub const FORWARDED_FOR_HEADER: &str = "trail-forwarded-for";
/// How long a forwarded call may take at most (the caller's own deadline usually ends
/// it first: dropping the call cancels the forwarded one).
const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The leader a request is forwarded to.
pub struct Target {
    pub node: NodeId,
    pub endpoint: String,
    pub client: TrailClient<Channel>,
}

/// Request metadata asking for this node's own replica, as it is now: no forwarding
/// and no read barrier (a follower's copy may lag). For operators and tests that
/// compare replicas; `GetEvent`, `Tail` and the block reads honour it.
pub const REPLICA_READ_HEADER: &str = "trail-replica-read";

/// Whether the request must be served where it is: forwarded once already, or a read
/// of this replica.
pub fn was_forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED_HEADER) || is_replica_read(request)
}

pub fn is_replica_read<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(REPLICA_READ_HEADER)
}

/// How fresh a read must be: `ReadConsistency` in gRPC, `consistency=` in REST.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// On the shard's leader after a read-index check: every write acknowledged before
    /// the read began is seen.
    #[default]
    Strong,
    /// On the replica of the node asked, as far as it has applied; forwarded to the
    /// leader only by a node without a replica of the shard.
    Eventual,
}

impl Consistency {
    pub fn from_wire(value: i32) -> Result<Consistency, FieldError> {
        match v1::ReadConsistency::try_from(value) {
            Ok(v1::ReadConsistency::Unspecified | v1::ReadConsistency::Strong) => {
                Ok(Consistency::Strong)
            }
            Ok(v1::ReadConsistency::Eventual) => Ok(Consistency::Eventual),
            Err(_) => Err(FieldError::new(
                "consistency",
                format!("unknown value {value}: expected STRONG (the default) or EVENTUAL"),
            )),
        }
    }

    /// The REST parameter: absent, `strong` or `eventual`, any case.
    pub fn from_rest(text: &str) -> Result<Consistency, ParamError> {
        if text.is_empty() || text.eq_ignore_ascii_case("strong") {
            Ok(Consistency::Strong)
        } else if text.eq_ignore_ascii_case("eventual") {
            Ok(Consistency::Eventual)
        } else {
            Err(ParamError {
                parameter: "consistency".into(),
                message: format!(
                    "{:?} is not accepted; use strong (the default: the leader answers, \
                     read-your-writes) or eventual (any replica answers, may lag)",
                    text.chars().take(64).collect::<String>()
                ),
            })
        }
    }

    /// Whether the read waits for the shard's read barrier (it then runs on the leader).
    pub fn needs_barrier(self) -> bool {
        self == Consistency::Strong
    }
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
    for key in [super::audit::ACTOR_HEADER, "user-agent"] {
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
        let forwarded = $crate::api::forward::was_forwarded(&$request);
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
