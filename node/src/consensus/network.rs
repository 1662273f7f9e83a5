//! The Raft peer network.
//!
//! A single node runs single-replica groups, which never send RPCs. The cluster work
//! replaces this with one tonic service per node carrying `(group_id, target_node)`;
//! until then every peer is reported `Unreachable` (never `NetworkError`, which makes
//! openraft retry and log in a loop).

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetwork, RaftNetworkFactory};

use super::{NodeId, TypeConfig};

#[derive(Debug, Clone, Default)]
pub struct LocalOnlyNetwork;

#[derive(Debug, Clone)]
pub struct NoPeer {
    target: NodeId,
}

#[derive(Debug, thiserror::Error)]
#[error("node {target} is not reachable: this node runs single-replica groups only")]
struct NoPeerError {
    target: NodeId,
}

impl NoPeer {
    fn unreachable<E>(&self) -> RPCError<NodeId, BasicNode, E>
    where
        E: std::error::Error,
    {
        RPCError::Unreachable(Unreachable::new(&NoPeerError {
            target: self.target,
        }))
    }
}

impl RaftNetworkFactory<TypeConfig> for LocalOnlyNetwork {
    type Network = NoPeer;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> NoPeer {
        NoPeer { target }
    }
}

impl RaftNetwork<TypeConfig> for NoPeer {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }
}
