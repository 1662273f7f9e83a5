//! A simulated node's client API: the real `trail.v1.Trail` gRPC service (the wire
//! protocol's messages, `trail_node::ledger::validate_event`, tenant routing), with
//! `RecordBatch` and `Tail` served by the node's Raft groups. Every other method
//! answers `UNIMPLEMENTED`: the simulation drives writes and linearizable reads.
//!
//! A replica that does not lead its group answers `UNAVAILABLE` with the leader it
//! knows in the `x-trail-leader` metadata, so the client can go there.

use std::collections::BTreeMap;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};
use trail_node::ledger::routing::shard_for_tenant;
use trail_node::ledger::{validate_event, LedgerCommand};
use trail_proto::v1;
use trail_proto::v1::trail_server::Trail;

use super::transport::Groups;
use super::{now_ns, GROUPS};
use crate::raft::store::Disk;

/// The metadata key naming the leader a non-leader knows of.
pub const LEADER_KEY: &str = "x-trail-leader";
/// A linearizable read waits at most this long for the replica to apply its log.
const READ_APPLY_WAIT: Duration = Duration::from_millis(1_000);

pub struct TrailApi {
    pub node: u64,
    pub groups: Groups,
    /// This node's disk of each group (reads wait on its applied index).
    pub disks: BTreeMap<u64, Disk>,
    pub block_events_max: u32,
}

fn not_leader(leader: Option<u64>) -> Status {
    let mut status = Status::unavailable("not the leader of the tenant's group");
    if let Some(leader) = leader {
        let value = MetadataValue::try_from(leader.to_string()).expect("digits");
        status.metadata_mut().insert(LEADER_KEY, value);
    }
    status
}

/// The group of a tenant, as every node routes it.
pub fn group_of(tenant_id: &str) -> u64 {
    u64::from(shard_for_tenant(tenant_id, GROUPS as u32))
}

impl TrailApi {
    fn raft(&self, group: u64) -> Result<crate::raft::Raft, Status> {
        let groups = self.groups.lock().expect("groups lock");
        groups
            .get(&group)
            .cloned()
            .ok_or_else(|| Status::unavailable(format!("group {group} is not running here")))
    }
}

#[tonic::async_trait]
impl Trail for TrailApi {
    async fn record(
        &self,
        _request: Request<v1::RecordRequest>,
    ) -> Result<Response<v1::RecordResponse>, Status> {
        Err(Status::unimplemented("the simulation records batches"))
    }

    /// Validates the batch (all of one tenant's group) and proposes it as one entry.
    async fn record_batch(
        &self,
        request: Request<v1::RecordBatchRequest>,
    ) -> Result<Response<v1::RecordBatchResponse>, Status> {
        let now = now_ns();
        let mut records = Vec::new();
        for mut event in request.into_inner().events {
            let record = validate_event(&mut event, now, || format!("sim-{}", self.node))
                .map_err(|error| Status::invalid_argument(error.to_string()))?;
            records.push(record);
        }
        let Some(first) = records.first() else {
            return Err(Status::invalid_argument("events: at least one is required"));
        };
        let group = group_of(&first.tenant_id);
        if records
            .iter()
            .any(|record| group_of(&record.tenant_id) != group)
        {
            return Err(Status::invalid_argument(
                "events: the simulation takes one group per batch",
            ));
        }
        let raft = self.raft(group)?;
        let command = LedgerCommand::Append {
            ingested_at_ns: now,
            block_events_max: self.block_events_max,
            events: records.clone(),
        };
        let response = match raft.client_write(command).await {
            Ok(response) => response.data,
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                return Err(not_leader(forward.leader_id));
            }
            Err(error) => return Err(Status::unavailable(error.to_string())),
        };
        let mut outcomes = Vec::with_capacity(records.len());
        let mut deduplicated = 0;
        for (record, receipt) in records.iter().zip(response.receipts) {
            deduplicated += u32::from(receipt.deduplicated);
            outcomes.push(v1::RecordOutcome {
                outcome: Some(v1::record_outcome::Outcome::Receipt(v1::Receipt {
                    event_id: record.event_id.clone(),
                    tenant_id: record.tenant_id.clone(),
                    stream: receipt.stream,
                    seq: receipt.seq,
                    leaf_hash: receipt.leaf_hash.to_vec(),
                    deduplicated: receipt.deduplicated,
                    ingested_at_ns: receipt.ingested_at_ns,
                })),
            });
        }
        Ok(Response::new(v1::RecordBatchResponse {
            accepted: outcomes.len() as u32 - deduplicated,
            deduplicated,
            outcomes,
            rejected: 0,
            retry_after_ms: 0,
        }))
    }

    type RecordStreamStream = futures::stream::Empty<Result<v1::RecordBatchResponse, Status>>;

    async fn record_stream(
        &self,
        _request: Request<Streaming<v1::RecordBatchRequest>>,
    ) -> Result<Response<Self::RecordStreamStream>, Status> {
        Err(Status::unimplemented("the simulation records batches"))
    }

    async fn get_event(
        &self,
        _request: Request<v1::GetEventRequest>,
    ) -> Result<Response<v1::GetEventResponse>, Status> {
        Err(Status::unimplemented("not simulated"))
    }

    async fn cluster_init(
        &self,
        _request: Request<v1::ClusterInitRequest>,
    ) -> Result<Response<v1::ClusterInitResponse>, Status> {
        Err(Status::unimplemented("the simulation's groups are fixed"))
    }

    async fn create_api_key(
        &self,
        _request: Request<v1::CreateApiKeyRequest>,
    ) -> Result<Response<v1::CreateApiKeyResponse>, Status> {
        Err(Status::unimplemented(
            "the simulation has no access control",
        ))
    }

    async fn list_api_keys(
        &self,
        _request: Request<v1::ListApiKeysRequest>,
    ) -> Result<Response<v1::ListApiKeysResponse>, Status> {
        Err(Status::unimplemented(
            "the simulation has no access control",
        ))
    }

    async fn revoke_api_key(
        &self,
        _request: Request<v1::RevokeApiKeyRequest>,
    ) -> Result<Response<v1::RevokeApiKeyResponse>, Status> {
        Err(Status::unimplemented(
            "the simulation has no access control",
        ))
    }

    /// A linearizable read of the tenant's last seq (no events: the simulation checks
    /// what a read sees, not how the node pages). The replica confirms its leadership
    /// with a quorum, then waits until it has applied its whole log as it was then
    /// (openraft's read log id alone is not enough after a leader restart: seed 495 of
    /// the Raft harness).
    async fn tail(
        &self,
        request: Request<v1::TailRequest>,
    ) -> Result<Response<v1::TailResponse>, Status> {
        let tenant_id = request.into_inner().tenant_id;
        let group = group_of(&tenant_id);
        let raft = self.raft(group)?;
        let disk = self.disks[&group].clone();
        let read_log_id = match raft.get_read_log_id().await {
            Ok((read_log_id, _)) => read_log_id,
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
                return Err(not_leader(forward.leader_id));
            }
            Err(error) => return Err(Status::unavailable(error.to_string())),
        };
        let needed = read_log_id
            .map_or(0, |log_id| log_id.index)
            .max(disk.lock().last_log_index().unwrap_or(0));
        let deadline = tokio::time::Instant::now() + READ_APPLY_WAIT;
        loop {
            let (applied, last_seq) = {
                let disk = disk.lock();
                let applied = disk.sm.applied.map_or(0, |log_id| log_id.index);
                (applied, disk.last_seq(&tenant_id))
            };
            if applied >= needed {
                return Ok(Response::new(v1::TailResponse {
                    events: Vec::new(),
                    last_seq,
                }));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Status::unavailable("the replica did not catch up in time"));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    async fn status(
        &self,
        _request: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        Err(Status::unimplemented("not simulated"))
    }

    async fn query(
        &self,
        _request: Request<v1::QueryRequest>,
    ) -> Result<Response<v1::QueryResponse>, Status> {
        Err(Status::unimplemented("not simulated"))
    }

    async fn count(
        &self,
        _request: Request<v1::CountRequest>,
    ) -> Result<Response<v1::CountResponse>, Status> {
        Err(Status::unimplemented("not simulated"))
    }

    async fn record_export(
        &self,
        _request: Request<v1::RecordExportRequest>,
    ) -> Result<Response<v1::RecordExportResponse>, Status> {
        Err(Status::unimplemented("not simulated"))
    }

    async fn reindex(
        &self,
        _request: Request<v1::ReindexRequest>,
    ) -> Result<Response<v1::ReindexResponse>, Status> {
        Err(Status::unimplemented("not simulated"))
    }

    async fn list_streams(
        &self,
        _request: Request<v1::ListStreamsRequest>,
    ) -> Result<Response<v1::ListStreamsResponse>, Status> {
        Err(Status::unimplemented("not simulated"))
    }

    async fn get_checkpoint(
        &self,
        _request: Request<v1::GetCheckpointRequest>,
    ) -> Result<Response<v1::GetCheckpointResponse>, Status> {
        Err(Status::unimplemented("not simulated"))
    }

    async fn get_block(
        &self,
        _request: Request<v1::GetBlockRequest>,
    ) -> Result<Response<v1::GetBlockResponse>, Status> {
        Err(Status::unimplemented("not simulated"))
    }

    type ListBlocksStream = futures::stream::Empty<Result<v1::Block, Status>>;

    async fn list_blocks(
        &self,
        _request: Request<v1::ListBlocksRequest>,
    ) -> Result<Response<Self::ListBlocksStream>, Status> {
        Err(Status::unimplemented("not simulated"))
    }

    async fn get_proof(
        &self,
        _request: Request<v1::GetProofRequest>,
    ) -> Result<Response<v1::GetProofResponse>, Status> {
        Err(Status::unimplemented("not simulated"))
    }

    async fn get_consistency_proof(
        &self,
        _request: Request<v1::GetConsistencyProofRequest>,
    ) -> Result<Response<v1::GetConsistencyProofResponse>, Status> {
        Err(Status::unimplemented("not simulated"))
    }
}
