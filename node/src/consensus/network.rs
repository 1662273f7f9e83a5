//! The Raft peer network: one tonic service per node for the Raft traffic of every
//! group it hosts, and one HTTP/2 channel per peer node shared by every group that
//! talks to it (the shape of openraft 0.10's `openraft-multi`, DESIGN.md "Cluster").
//!
//! The service is served on a cluster node's peer listener (`--peer-addr`), never on
//! the client port; a single node serves none. Until peers authenticate each other
//! (mutual TLS), the peer listener must be on a private network: any sender that names
//! a member is believed.
//!
//! Every message carries `(cluster_id, group_id, target_node, from_node)`. The receiver
//! refuses a message for another cluster, a node it is not or a group it does not host
//! (openraft: connecting to a wrong node can lead to data inconsistency), and one whose
//! sender is not a voter or learner of the group's membership, or is not the node the
//! openraft request itself names (its vote's node). A refusal names none of the
//! receiver's ids (cluster id, node ids): the sender learns only what was wrong. The
//! sender reports the refusal, like a refused connection, as `Unreachable` (never
//! `NetworkError`, which makes openraft retry at once and log in a loop).
//!
//! A single node runs single-replica groups with no peers: they never send.
//!
//! The wire is a seam: [`PeerTransport`] carries one encoded message to a peer and
//! brings its reply back. `traild` uses [`GrpcTransport`] (tonic channels); the
//! simulation plugs in an in-memory router with faults that hands each message to the
//! target node's [`RaftService::handle`]. Everything above the wire (encoding, the
//! receiver's checks, openraft's calls, error mapping) is this module's, in both.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{Backoff, RPCOption};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetwork, RaftNetworkFactory};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};
use trail_proto::raft::raft_transport_client::RaftTransportClient;
use trail_proto::raft::raft_transport_server::{RaftTransport, RaftTransportServer};
use trail_proto::raft::{RaftReply, RaftRequest};

use super::{NodeId, Raft, TypeConfig};
use crate::ledger::routing::ShardId;

/// Largest Raft message accepted: `max_payload_entries` entries of a group-committed
/// batch each (a batch is bounded by `--batch-bytes-max`), or one snapshot chunk.
pub const RAFT_MESSAGE_BYTES_MAX: usize = 128 * 1024 * 1024;

/// How long a peer that refused or failed is left alone before the next attempt.
const UNREACHABLE_BACKOFF: Duration = Duration::from_millis(500);

/// The groups this node hosts, as its transport service finds them.
#[derive(Clone, Default)]
pub struct Groups {
    groups: Arc<RwLock<BTreeMap<ShardId, Raft>>>,
    /// Raft messages the transport service refused (exported in `/metrics`).
    refused: Arc<AtomicU64>,
}

impl Groups {
    pub fn insert(&self, group: ShardId, raft: Raft) {
        self.groups
            .write()
            .expect("groups lock")
            .insert(group, raft);
    }

    pub fn remove(&self, group: ShardId) {
        self.groups.write().expect("groups lock").remove(&group);
    }

    fn get(&self, group: ShardId) -> Option<Raft> {
        self.groups
            .read()
            .expect("groups lock")
            .get(&group)
            .cloned()
    }

    /// Raft messages refused since start: another cluster or node, a group not hosted
    /// here, a sender that is not a member.
    pub fn refused_total(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// The node an openraft request says it is from: the candidate of a vote, the leader
/// of an append or a snapshot.
pub trait Sender {
    fn sender(&self) -> Option<NodeId>;
}

impl Sender for VoteRequest<NodeId> {
    fn sender(&self) -> Option<NodeId> {
        self.vote.leader_id().voted_for()
    }
}

impl Sender for AppendEntriesRequest<TypeConfig> {
    fn sender(&self) -> Option<NodeId> {
        self.vote.leader_id().voted_for()
    }
}

impl Sender for InstallSnapshotRequest<TypeConfig> {
    fn sender(&self) -> Option<NodeId> {
        self.vote.leader_id().voted_for()
    }
}

/// This node's channels to its peers, shared by all its groups. Cheap to clone.
#[derive(Clone)]
pub struct Peers {
    inner: Arc<PeersInner>,
}

struct PeersInner {
    cluster_id: String,
    from: NodeId,
    transport: Arc<dyn PeerTransport>,
}

/// Which of the transport service's calls a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaftCall {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

/// A boxed future a [`PeerTransport`] answers with.
pub type TransportFuture =
    std::pin::Pin<Box<dyn Future<Output = Result<RaftReply, Status>> + Send>>;

/// How one node's Raft messages reach its peers: sends `request` (already addressed:
/// cluster, group, target and sending node) to node `target` and returns its reply, or
/// the status of a refusal or a failure to deliver. The deadline is the caller's.
pub trait PeerTransport: Send + Sync + 'static {
    /// Whether `target` is a node this transport can reach at all.
    fn knows(&self, target: NodeId) -> bool;

    fn send(
        &self,
        target: NodeId,
        call: RaftCall,
        request: RaftRequest,
        timeout: Duration,
    ) -> TransportFuture;
}

/// No peers: a single node's transport, which never sends.
struct NoPeers;

impl PeerTransport for NoPeers {
    fn knows(&self, _target: NodeId) -> bool {
        false
    }

    fn send(
        &self,
        target: NodeId,
        _call: RaftCall,
        _request: RaftRequest,
        _timeout: Duration,
    ) -> TransportFuture {
        Box::pin(std::future::ready(Err(Status::unavailable(format!(
            "node {target} is not a peer"
        )))))
    }
}

/// `traild`'s transport: one lazy HTTP/2 channel per peer node, shared by its groups.
pub struct GrpcTransport {
    channels: BTreeMap<NodeId, Channel>,
}

impl GrpcTransport {
    /// Lazy channels to every node of `addrs` but `from` (node id -> gRPC `host:port`);
    /// nothing connects until a group sends.
    pub fn connect_lazy(
        from: NodeId,
        addrs: &BTreeMap<NodeId, String>,
    ) -> anyhow::Result<GrpcTransport> {
        let mut channels = BTreeMap::new();
        for (&node, addr) in addrs {
            if node == from {
                continue;
            }
            let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|error| anyhow::anyhow!("peers: node {node} address {addr:?}: {error}"))?
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true)
                // A dead peer is noticed within interval + timeout, not at the next
                // deadline of every group's RPC.
                .http2_keep_alive_interval(Duration::from_secs(2))
                .keep_alive_timeout(Duration::from_secs(3))
                .keep_alive_while_idle(true);
            channels.insert(node, endpoint.connect_lazy());
        }
        Ok(GrpcTransport { channels })
    }
}

impl PeerTransport for GrpcTransport {
    fn knows(&self, target: NodeId) -> bool {
        self.channels.contains_key(&target)
    }

    fn send(
        &self,
        target: NodeId,
        call: RaftCall,
        request: RaftRequest,
        timeout: Duration,
    ) -> TransportFuture {
        let Some(channel) = self.channels.get(&target).cloned() else {
            return NoPeers.send(target, call, request, timeout);
        };
        Box::pin(async move {
            let mut client = RaftTransportClient::new(channel)
                .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX);
            let mut request = Request::new(request);
            request.set_timeout(timeout);
            let reply = match call {
                RaftCall::AppendEntries => client.append_entries(request).await,
                RaftCall::Vote => client.vote(request).await,
                RaftCall::InstallSnapshot => client.install_snapshot(request).await,
            };
            reply.map(Response::into_inner)
        })
    }
}

impl Peers {
    /// No peers: single-replica groups on one node.
    pub fn none(from: NodeId) -> Peers {
        Peers::over(String::new(), from, Arc::new(NoPeers))
    }

    /// Lazy gRPC channels to every other node (`addrs`: node id -> gRPC `host:port`);
    /// nothing connects until a group sends.
    pub fn connect_lazy(
        cluster_id: &str,
        from: NodeId,
        addrs: &BTreeMap<NodeId, String>,
    ) -> anyhow::Result<Peers> {
        let transport = GrpcTransport::connect_lazy(from, addrs)?;
        Ok(Peers::over(
            cluster_id.to_string(),
            from,
            Arc::new(transport),
        ))
    }

    /// The peers of node `from` of cluster `cluster_id`, reached through `transport`.
    pub fn over(cluster_id: String, from: NodeId, transport: Arc<dyn PeerTransport>) -> Peers {
        Peers {
            inner: Arc::new(PeersInner {
                cluster_id,
                from,
                transport,
            }),
        }
    }

    /// The network of one group on this node.
    pub fn group(&self, group: ShardId) -> GroupNetwork {
        GroupNetwork {
            group,
            peers: self.clone(),
        }
    }
}

/// The sending side of one group on one node.
#[derive(Clone)]
pub struct GroupNetwork {
    group: ShardId,
    peers: Peers,
}

/// One group's connection to one peer (a view of the shared channel).
pub struct Connection {
    group: ShardId,
    target: NodeId,
    peers: Peers,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetwork {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Connection {
        Connection {
            group: self.group,
            target,
            peers: self.peers.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

fn unreachable<E: std::error::Error>(reason: String) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Unreachable(Unreachable::new(&TransportError(reason)))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serialize(value).expect("openraft messages serialize")
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Status> {
    bincode::deserialize(bytes)
        .map_err(|error| Status::invalid_argument(format!("payload does not decode: {error}")))
}

impl Connection {
    /// Sends one request; the reply is the receiver's openraft result.
    async fn call<Req, Resp, E>(
        &self,
        rpc: &Req,
        option: &RPCOption,
        call: RaftCall,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let inner = &self.peers.inner;
        if !inner.transport.knows(self.target) {
            return Err(unreachable(format!(
                "node {} is not a peer of node {}",
                self.target, inner.from
            )));
        }
        let request = RaftRequest {
            cluster_id: inner.cluster_id.clone(),
            group_id: self.group,
            target_node: self.target,
            from_node: inner.from,
            payload: encode(rpc),
        };
        let sent = inner
            .transport
            .send(self.target, call, request, option.hard_ttl());
        let reply = match tokio::time::timeout(option.hard_ttl(), sent).await {
            Err(_elapsed) => {
                return Err(RPCError::Network(NetworkError::new(&TransportError(
                    format!("node {}: deadline exceeded", self.target),
                ))))
            }
            // Refused, reset, not connected, or refused by the receiver (not its
            // group or node): unreachable for now, and openraft backs off.
            Ok(Err(status)) => {
                return Err(unreachable(format!(
                    "node {}: {}: {}",
                    self.target,
                    status.code(),
                    status.message()
                )))
            }
            Ok(Ok(reply)) => reply,
        };
        let result: Result<Resp, RaftError<NodeId, E>> = bincode::deserialize(&reply.payload)
            .map_err(|error| {
                RPCError::Network(NetworkError::new(&TransportError(format!(
                    "node {}: reply does not decode: {error}",
                    self.target
                ))))
            })?;
        result.map_err(|error| {
            RPCError::RemoteError(openraft::error::RemoteError::new(self.target, error))
        })
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(&rpc, &option, RaftCall::AppendEntries).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(&rpc, &option, RaftCall::InstallSnapshot).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(&rpc, &option, RaftCall::Vote).await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(UNREACHABLE_BACKOFF))
    }
}

/// The receiving side: one per node.
pub struct RaftService {
    pub cluster_id: String,
    pub node: NodeId,
    pub groups: Groups,
}

impl RaftService {
    pub fn into_server(self) -> RaftTransportServer<RaftService> {
        RaftTransportServer::new(self)
            .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX)
    }

    /// The group the message is for, if it is for this cluster and node, this node
    /// hosts the group and the sender is one of the group's members. The refusals name
    /// none of this node's ids.
    fn group(&self, request: &RaftRequest) -> Result<Raft, Status> {
        if request.cluster_id != self.cluster_id {
            return Err(Status::failed_precondition("unknown cluster"));
        }
        if request.target_node != self.node {
            return Err(Status::failed_precondition("message for another node"));
        }
        let raft = self
            .groups
            .get(request.group_id)
            .ok_or_else(|| Status::not_found("no replica of that group here"))?;
        let member = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&request.from_node)
            .is_some();
        if !member {
            return Err(Status::permission_denied(
                "the sender is not a member of the group",
            ));
        }
        Ok(raft)
    }

    /// Counts and logs a refused message; the log names the sender's claims only.
    fn refused(&self, request: &RaftRequest, status: Status) -> Status {
        self.groups.refused.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            group = request.group_id,
            from_node = request.from_node,
            reason = status.message(),
            "raft message refused"
        );
        status
    }
}

impl RaftService {
    /// Decodes the openraft request of a message for a group here, runs it, and
    /// answers its result: what the gRPC service does with every message it receives,
    /// and what an in-memory transport calls directly.
    pub async fn handle(&self, call: RaftCall, request: RaftRequest) -> Result<RaftReply, Status> {
        match call {
            RaftCall::AppendEntries => {
                self.serve(
                    request,
                    |raft, rpc: AppendEntriesRequest<TypeConfig>| async move {
                        raft.append_entries(rpc).await
                    },
                )
                .await
            }
            RaftCall::Vote => {
                self.serve(request, |raft, rpc: VoteRequest<NodeId>| async move {
                    raft.vote(rpc).await
                })
                .await
            }
            RaftCall::InstallSnapshot => {
                self.serve(
                    request,
                    |raft, rpc: InstallSnapshotRequest<TypeConfig>| async move {
                        raft.install_snapshot(rpc).await
                    },
                )
                .await
            }
        }
    }

    async fn serve<Req, Out, F, Fut>(
        &self,
        request: RaftRequest,
        call: F,
    ) -> Result<RaftReply, Status>
    where
        Req: DeserializeOwned + Sender,
        Out: Serialize,
        F: FnOnce(Raft, Req) -> Fut,
        Fut: Future<Output = Out>,
    {
        let raft = self
            .group(&request)
            .map_err(|status| self.refused(&request, status))?;
        let rpc: Req = decode(&request.payload).map_err(|status| self.refused(&request, status))?;
        if rpc.sender() != Some(request.from_node) {
            return Err(self.refused(
                &request,
                Status::permission_denied("the request is not from the sending node"),
            ));
        }
        Ok(RaftReply {
            payload: encode(&call(raft, rpc).await),
        })
    }
}

#[tonic::async_trait]
impl RaftTransport for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        self.handle(RaftCall::AppendEntries, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        self.handle(RaftCall::Vote, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        self.handle(RaftCall::InstallSnapshot, request.into_inner())
            .await
            .map(Response::new)
    }
}
