//! The Raft transport as a tonic service: one `RaftTransport` service per node, shared
//! by every group the node hosts, and one channel per peer node shared by every group
//! that talks to it (the shape of openraft 0.10's `openraft-multi`, DESIGN.md
//! "Cluster").
//!
//! Every request carries `(group_id, target_node)`; the receiver refuses a message for
//! a node it is not or a group it does not host (openraft: "connecting to a wrong node
//! can lead to data inconsistency"), and the sender sees the refusal as `Unreachable`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
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
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::raft::{Raft, SimConfig};

pub mod pb {
    tonic::include_proto!("trail.sim.v1");
}

use pb::raft_transport_client::RaftTransportClient;
use pb::raft_transport_server::RaftTransport;
use pb::{RaftReply, RaftRequest};

/// The groups one node hosts, as its transport service finds them. Emptied when the
/// node crashes; filled as its groups start.
pub type Groups = Arc<Mutex<BTreeMap<u64, Raft>>>;

/// The receiving side: one per node.
pub struct TransportService {
    pub node: u64,
    pub groups: Groups,
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Status> {
    bincode::deserialize(bytes)
        .map_err(|error| Status::invalid_argument(format!("payload does not decode: {error}")))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serialize(value).expect("openraft messages serialize")
}

impl TransportService {
    /// The group the message is for, if it is for this node and this node hosts it.
    fn group(&self, request: &RaftRequest) -> Result<Raft, Status> {
        if request.target_node != self.node {
            return Err(Status::invalid_argument(format!(
                "message for node {} reached node {}",
                request.target_node, self.node
            )));
        }
        let groups = self.groups.lock().expect("groups lock");
        groups.get(&request.group_id).cloned().ok_or_else(|| {
            Status::not_found(format!(
                "node {} hosts no group {}",
                self.node, request.group_id
            ))
        })
    }
}

#[tonic::async_trait]
impl RaftTransport for TransportService {
    async fn append_entries(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let request = request.into_inner();
        let raft = self.group(&request)?;
        let rpc: AppendEntriesRequest<SimConfig> = decode(&request.payload)?;
        let result = raft.append_entries(rpc).await;
        Ok(Response::new(RaftReply {
            payload: encode(&result),
        }))
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let request = request.into_inner();
        let raft = self.group(&request)?;
        let rpc: VoteRequest<u64> = decode(&request.payload)?;
        let result = raft.vote(rpc).await;
        Ok(Response::new(RaftReply {
            payload: encode(&result),
        }))
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let request = request.into_inner();
        let raft = self.group(&request)?;
        let rpc: InstallSnapshotRequest<SimConfig> = decode(&request.payload)?;
        let result = raft.install_snapshot(rpc).await;
        Ok(Response::new(RaftReply {
            payload: encode(&result),
        }))
    }
}

/// One node's channels to its peers, shared by all its groups.
#[derive(Clone)]
pub struct Peers {
    pub from: u64,
    pub channels: Arc<BTreeMap<u64, Channel>>,
    pub backoff: Duration,
}

/// The sending side of one group on one node.
pub struct NetworkFactory {
    pub group: u64,
    pub peers: Peers,
}

pub struct Connection {
    group: u64,
    target: u64,
    peers: Peers,
}

impl RaftNetworkFactory<SimConfig> for NetworkFactory {
    type Network = Connection;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Connection {
        Connection {
            group: self.group,
            target,
            peers: self.peers.clone(),
        }
    }
}

#[derive(Debug)]
struct TransportError(String);

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TransportError {}

impl Connection {
    /// Sends one request; the reply is the receiver's openraft result.
    async fn call<Req, Resp, E, F, Fut>(
        &self,
        rpc: &Req,
        option: &RPCOption,
        send: F,
    ) -> Result<Resp, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
        F: FnOnce(RaftTransportClient<Channel>, RaftRequest) -> Fut,
        Fut: Future<Output = Result<Response<RaftReply>, Status>>,
    {
        let Some(channel) = self.peers.channels.get(&self.target).cloned() else {
            return Err(RPCError::Unreachable(Unreachable::new(&TransportError(
                format!("no channel to node {}", self.target),
            ))));
        };
        let request = RaftRequest {
            group_id: self.group,
            target_node: self.target,
            from_node: self.peers.from,
            payload: encode(rpc),
        };
        let client = RaftTransportClient::new(channel);
        let sent = tokio::time::timeout(option.hard_ttl(), send(client, request)).await;
        let reply = match sent {
            Err(_elapsed) => {
                return Err(RPCError::Network(NetworkError::new(&TransportError(
                    "deadline exceeded".to_string(),
                ))));
            }
            // Refused, reset, not connected, or the channel's own deadline: the peer is
            // unreachable for now (openraft backs off, instead of retrying at once).
            Ok(Err(status)) => {
                return Err(RPCError::Unreachable(Unreachable::new(&TransportError(
                    format!("{}: {}", status.code(), status.message()),
                ))));
            }
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let result: Result<Resp, RaftError<u64, E>> = bincode::deserialize(&reply.payload)
            .map_err(|error| {
                RPCError::Network(NetworkError::new(&TransportError(format!(
                    "reply does not decode: {error}"
                ))))
            })?;
        result.map_err(|error| {
            RPCError::RemoteError(openraft::error::RemoteError::new(self.target, error))
        })
    }
}

impl RaftNetwork<SimConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<SimConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call(&rpc, &option, |mut client, request| async move {
            client.append_entries(request).await
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<SimConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        self.call(&rpc, &option, |mut client, request| async move {
            client.install_snapshot(request).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call(&rpc, &option, |mut client, request| async move {
            client.vote(request).await
        })
        .await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.peers.backoff))
    }
}

/// Sends a message meant for `(group, target)` to `node` instead: it must be refused.
/// Returns the refusal's status code, or `None` if the message was taken.
pub async fn probe_misroute(
    channel: Channel,
    group: u64,
    target: u64,
    from: u64,
) -> Option<tonic::Code> {
    let vote = VoteRequest::<u64>::new(openraft::Vote::new(0, from), None);
    let request = RaftRequest {
        group_id: group,
        target_node: target,
        from_node: from,
        payload: encode(&vote),
    };
    let mut client = RaftTransportClient::new(channel);
    match client.vote(request).await {
        Ok(_) => None,
        Err(status) => Some(status.code()),
    }
}
