//! The `trail.v1.Trail` gRPC service: converts requests and answers, and calls the
//! node's API for the work (ingest in `ingest.rs`, queries in `query.rs`, proofs in
//! `proofs.rs`, forwarding in `forward.rs`).

use std::pin::Pin;

use futures::Stream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use trail_proto::v1::{self, trail_server::Trail};

use crate::ledger::{stream_name, validate_tenant_id, BATCH_EVENTS_MAX};
use crate::node::cluster::LEADER_HEADER;
use crate::node::{actor::GetNodeStatus, Node};
use crate::shard::reader::{self, TAIL_LIMIT_MAX};

use super::convert::{
    barrier_status, consistency_argument, event_id_argument, read_by, read_status,
    status_of_event_error, tenant_argument, to_stored_event,
};
use super::forward::{self, forward_read, forward_to_leader};
use super::headers;
use super::ingest::{self, BatchError};
use super::{auth, keys};
use super::{proofs, query};
use crate::access::Role;

/// Batches a `RecordStream` may have in processing at once (per stream).
const STREAM_BATCHES_IN_FLIGHT_MAX: usize = 1;
const TAIL_LIMIT_DEFAULT: usize = 100;

pub struct TrailService {
    node: Node,
}

// The codec counts a batch's events before decoding it, against the same bound.
const _: () = assert!(BATCH_EVENTS_MAX == trail_proto::codec::RECORD_BATCH_EVENTS_MAX);

impl TrailService {
    pub fn new(node: Node) -> TrailService {
        TrailService { node }
    }
}

/// A batch refused whole: INVALID_ARGUMENT for its size, INTERNAL when the forwarding
/// task failed.
fn batch_status(error: BatchError) -> Status {
    match error {
        BatchError::Empty | BatchError::TooManyEvents { .. } => {
            Status::invalid_argument(error.to_string())
        }
        BatchError::ForwardingFailed => Status::internal(error.to_string()),
    }
}

/// The caller's `authorization` value, passed on with the parts of a batch forwarded
/// to other leaders.
fn authorization_of<T>(request: &Request<T>) -> Option<String> {
    request
        .metadata()
        .get(auth::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string)
}

type RecordStreamOut =
    Pin<Box<dyn Stream<Item = Result<v1::RecordBatchResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Trail for TrailService {
    async fn record(
        &self,
        request: Request<v1::RecordRequest>,
    ) -> Result<Response<v1::RecordResponse>, Status> {
        let tenant = request
            .get_ref()
            .event
            .as_ref()
            .map(|event| event.tenant_id.clone())
            .unwrap_or_default();
        auth::authorize(
            &self.node,
            request.metadata(),
            Role::Ingest,
            Some(&tenant),
            "record events",
        )?;
        if validate_tenant_id(&tenant).is_ok() {
            forward_to_leader!(self, request, &tenant, record);
        }
        let forwarded = headers::was_forwarded(&request);
        let authorization = authorization_of(&request);
        let event = request
            .into_inner()
            .event
            .ok_or_else(|| Status::invalid_argument("event: is required"))?;
        let response =
            ingest::record_batch(&self.node, vec![event], forwarded, authorization.as_deref())
                .await
                .map_err(batch_status)?
                .response;
        let outcome = response
            .outcomes
            .into_iter()
            .next()
            .and_then(|outcome| outcome.outcome)
            .expect("one outcome for one event");
        match outcome {
            v1::record_outcome::Outcome::Receipt(receipt) => {
                Ok(Response::new(v1::RecordResponse {
                    receipt: Some(receipt),
                }))
            }
            v1::record_outcome::Outcome::Error(error) => {
                let mut status = status_of_event_error(&error);
                if response.retry_after_ms > 0 {
                    if let Ok(value) = response.retry_after_ms.to_string().parse() {
                        status.metadata_mut().insert("retry-after-ms", value);
                    }
                }
                Err(status)
            }
        }
    }

    async fn record_batch(
        &self,
        request: Request<v1::RecordBatchRequest>,
    ) -> Result<Response<v1::RecordBatchResponse>, Status> {
        let principal = auth::caller(&self.node, request.metadata())?;
        auth::authorize_tenants(
            &principal,
            request
                .get_ref()
                .events
                .iter()
                .map(|event| event.tenant_id.as_str()),
        )?;
        let forwarded = headers::was_forwarded(&request);
        let authorization = authorization_of(&request);
        let recorded = ingest::record_batch(
            &self.node,
            request.into_inner().events,
            forwarded,
            authorization.as_deref(),
        )
        .await
        .map_err(batch_status)?;
        let mut response = Response::new(recorded.response);
        if let Some(value) = recorded.sole_leader.and_then(|leader| leader.parse().ok()) {
            response.metadata_mut().insert(LEADER_HEADER, value);
        }
        Ok(response)
    }

    type RecordStreamStream = RecordStreamOut;

    async fn record_stream(
        &self,
        request: Request<Streaming<v1::RecordBatchRequest>>,
    ) -> Result<Response<Self::RecordStreamStream>, Status> {
        // Authenticated once, when the stream opens; each batch's tenants are
        // authorized as it arrives.
        let principal = auth::caller(&self.node, request.metadata())?;
        let forwarded = headers::was_forwarded(&request);
        let authorization = authorization_of(&request);
        let mut incoming = request.into_inner();
        let node = self.node.clone();
        // One response per request batch, in order. The channel bound is the stream's
        // pipelining depth; a slow reader stops us reading more batches.
        let (sender, receiver) = tokio::sync::mpsc::channel(STREAM_BATCHES_IN_FLIGHT_MAX);
        tokio::spawn(async move {
            while let Some(batch) = incoming.next().await {
                let response = match batch {
                    Ok(batch) => match auth::authorize_tenants(
                        &principal,
                        batch.events.iter().map(|event| event.tenant_id.as_str()),
                    ) {
                        Ok(()) => ingest::record_batch(
                            &node,
                            batch.events,
                            forwarded,
                            authorization.as_deref(),
                        )
                        .await
                        .map(|recorded| recorded.response)
                        .map_err(batch_status),
                        Err(status) => Err(status),
                    },
                    Err(status) => Err(status),
                };
                let stop = response.is_err();
                if sender.send(response).await.is_err() || stop {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn get_event(
        &self,
        request: Request<v1::GetEventRequest>,
    ) -> Result<Response<v1::GetEventResponse>, Status> {
        let tenant_id = tenant_argument(&request.get_ref().tenant_id)?;
        auth::authorize(
            &self.node,
            request.metadata(),
            Role::Read,
            Some(&tenant_id),
            "read events",
        )?;
        let consistency = consistency_argument(request.get_ref().consistency)?;
        forward_read!(self, request, &tenant_id, consistency, get_event);
        let replica_read = headers::is_replica_read(&request) || !consistency.needs_barrier();
        let request = request.into_inner();
        event_id_argument(&request.event_id)?;
        let shard = self.node.router.shard_for(&tenant_id)?;
        if !replica_read {
            shard.read_barrier().await.map_err(barrier_status)?;
        }
        let keyspaces = shard.keyspaces.clone();
        let event_id = request.event_id.clone();
        let tenant_for_read = tenant_id.clone();
        let found = query::gated_read(&self.node, move || {
            reader::get_event(&keyspaces, &tenant_for_read, &event_id)
        })
        .await
        .map_err(Status::unavailable)?
        .map_err(read_status)?;
        match found {
            Some(event) => Ok(Response::new(v1::GetEventResponse {
                event: Some(to_stored_event(event)),
            })),
            None => Err(Status::not_found(format!(
                "event_id: no event {:?} in tenant {tenant_id}",
                request.event_id
            ))),
        }
    }

    async fn tail(
        &self,
        request: Request<v1::TailRequest>,
    ) -> Result<Response<v1::TailResponse>, Status> {
        let tenant_id = tenant_argument(&request.get_ref().tenant_id)?;
        auth::authorize(
            &self.node,
            request.metadata(),
            Role::Read,
            Some(&tenant_id),
            "tail events",
        )?;
        let consistency = consistency_argument(request.get_ref().consistency)?;
        forward_read!(self, request, &tenant_id, consistency, tail);
        let replica_read = headers::is_replica_read(&request) || !consistency.needs_barrier();
        let request = request.into_inner();
        let first_stream = stream_name(&tenant_id, 0);
        if !request.stream.is_empty() && request.stream != first_stream {
            return Err(Status::invalid_argument(format!(
                "stream: {:?} is not a stream of tenant {tenant_id}; use {first_stream:?} or leave it empty",
                request.stream
            )));
        }
        let limit = match request.limit as usize {
            0 => TAIL_LIMIT_DEFAULT,
            limit if limit > TAIL_LIMIT_MAX => {
                return Err(Status::invalid_argument(format!(
                    "limit: {limit} is too large; use 1 to {TAIL_LIMIT_MAX} (0 means {TAIL_LIMIT_DEFAULT})"
                )))
            }
            limit => limit,
        };
        let shard = self.node.router.shard_for(&tenant_id)?;
        if !replica_read {
            shard.read_barrier().await.map_err(barrier_status)?;
        }
        let keyspaces = shard.keyspaces.clone();
        let after_seq = request.after_seq;
        let (events, last_seq) = query::gated_read(&self.node, move || {
            reader::tail(&keyspaces, &tenant_id, after_seq, limit)
        })
        .await
        .map_err(Status::unavailable)?
        .map_err(read_status)?;
        Ok(Response::new(v1::TailResponse {
            events: events.into_iter().map(to_stored_event).collect(),
            last_seq,
        }))
    }

    async fn status(
        &self,
        request: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        // Any key may learn where the node is, the cluster map (clients route batches
        // by it) and the checkpoint key (auditors verify with it); the node's internals
        // (shards, data directory, memory) are for admins.
        let principal = auth::caller(&self.node, request.metadata())?;
        let config = &self.node.config;
        if principal
            .authorize(Role::Admin, None, "read the node's status")
            .is_err()
        {
            return Ok(Response::new(v1::StatusResponse {
                node_id: config.node_id,
                version: env!("CARGO_PKG_VERSION").to_string(),
                grpc_addr: config.grpc_addr.to_string(),
                http_addr: config.http_addr.to_string(),
                verifier_key: self.node.signer.verifier_key(),
                cluster: self.node.router.map().map(|map| map.to_proto()),
                ..v1::StatusResponse::default()
            }));
        }
        let status = self
            .node
            .actor
            .send(GetNodeStatus)
            .await
            .map_err(|_| Status::unavailable("node is shutting down"))?;
        let memory = crate::api::process_memory();
        Ok(Response::new(v1::StatusResponse {
            node_id: config.node_id,
            version: env!("CARGO_PKG_VERSION").to_string(),
            data_dir: config.data_dir.display().to_string(),
            events: status.shards.iter().map(|shard| shard.events).sum(),
            shards: status
                .shards
                .into_iter()
                .map(|shard| {
                    let progress = self.node.index.progress(shard.shard);
                    let read = |value: Option<&std::sync::atomic::AtomicU64>| {
                        value.map_or(0, |value| value.load(std::sync::atomic::Ordering::Relaxed))
                    };
                    v1::ShardStatus {
                        shard_id: shard.shard,
                        leader_node_id: shard.leader.unwrap_or(0),
                        term: shard.term,
                        last_log_index: shard.last_log_index,
                        last_applied_index: shard.last_applied_index,
                        events: shard.events,
                        streams: shard.streams as u32,
                        queue_bytes: shard.queue_bytes,
                        dedup_rebuilt_ids: shard.dedup_rebuilt_ids,
                        role: shard.role,
                        indexed_index: read(progress.as_deref().map(|p| &p.indexed_through)),
                        index_lag_ms: read(progress.as_deref().map(|p| &p.lag_ms)),
                        index_rebuild_remaining: read(
                            progress.as_deref().map(|p| &p.rebuild_remaining),
                        ),
                        replicas: shard
                            .replicas
                            .iter()
                            .map(|replica| v1::ReplicaStatus {
                                node_id: replica.node_id,
                                matched_index: replica.matched_index,
                                lag_entries: shard
                                    .last_log_index
                                    .saturating_sub(replica.matched_index),
                            })
                            .collect(),
                    }
                })
                .collect(),
            uptime_ms: status.uptime_ms,
            rss_bytes: memory.rss_bytes,
            peak_rss_bytes: memory.peak_rss_bytes,
            grpc_addr: config.grpc_addr.to_string(),
            http_addr: config.http_addr.to_string(),
            verifier_key: self.node.signer.verifier_key(),
            cluster: self.node.router.map().map(|map| map.to_proto()),
        }))
    }

    async fn query(
        &self,
        request: Request<v1::QueryRequest>,
    ) -> Result<Response<v1::QueryResponse>, Status> {
        let tenant = request.get_ref().tenant_id.clone();
        let principal = auth::authorize(
            &self.node,
            request.metadata(),
            Role::Read,
            Some(&tenant),
            "query events",
        )?;
        let consistency = consistency_argument(request.get_ref().consistency)?;
        forward_read!(self, request, &tenant, consistency, query);
        let by = read_by(&self.node, &request, &principal);
        query::query(&self.node, request.into_inner(), &by)
            .await
            .map(Response::new)
    }

    async fn count(
        &self,
        request: Request<v1::CountRequest>,
    ) -> Result<Response<v1::CountResponse>, Status> {
        let tenant = request.get_ref().tenant_id.clone();
        let principal = auth::authorize(
            &self.node,
            request.metadata(),
            Role::Read,
            Some(&tenant),
            "count events",
        )?;
        let consistency = consistency_argument(request.get_ref().consistency)?;
        forward_read!(self, request, &tenant, consistency, count);
        let by = read_by(&self.node, &request, &principal);
        query::count(&self.node, request.into_inner(), &by)
            .await
            .map(Response::new)
    }

    async fn record_export(
        &self,
        request: Request<v1::RecordExportRequest>,
    ) -> Result<Response<v1::RecordExportResponse>, Status> {
        let tenant = request.get_ref().tenant_id.clone();
        let principal = auth::authorize(
            &self.node,
            request.metadata(),
            Role::Audit,
            Some(&tenant),
            "export events",
        )?;
        forward_to_leader!(self, request, &tenant, record_export);
        let by = read_by(&self.node, &request, &principal);
        query::record_export(&self.node, request.into_inner(), &by)
            .await
            .map(Response::new)
    }

    async fn reindex(
        &self,
        request: Request<v1::ReindexRequest>,
    ) -> Result<Response<v1::ReindexResponse>, Status> {
        auth::authorize(
            &self.node,
            request.metadata(),
            Role::Admin,
            None,
            "reindex the node",
        )?;
        tracing::info!("reindex requested");
        self.node
            .index
            .request_reindex()
            .map_err(|running| Status::failed_precondition(running.to_string()))?;
        let events = self
            .node
            .router
            .shards()
            .iter()
            .map(|shard| {
                shard
                    .counters
                    .events_total
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .sum();
        Ok(Response::new(v1::ReindexResponse { events }))
    }

    async fn list_streams(
        &self,
        request: Request<v1::ListStreamsRequest>,
    ) -> Result<Response<v1::ListStreamsResponse>, Status> {
        // The cursor is a tenant id (the last one of the previous page): ingest's rule,
        // so it never becomes an oversized storage key.
        auth::authorize(
            &self.node,
            request.metadata(),
            Role::Audit,
            None,
            "list every tenant's streams",
        )?;
        let after = &request.get_ref().after_tenant_id;
        if !after.is_empty() {
            validate_tenant_id(after).map_err(|error| {
                Status::invalid_argument(format!("after_tenant_id: {}", error.message))
            })?;
        }
        proofs::list_streams(&self.node, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_checkpoint(
        &self,
        request: Request<v1::GetCheckpointRequest>,
    ) -> Result<Response<v1::GetCheckpointResponse>, Status> {
        let tenant = request.get_ref().tenant_id.clone();
        auth::authorize(
            &self.node,
            request.metadata(),
            Role::Audit,
            Some(&tenant),
            "read checkpoints",
        )?;
        forward_to_leader!(self, request, &tenant, get_checkpoint);
        let at = proofs::ReadAt::of(&request);
        proofs::get_checkpoint(&self.node, request.into_inner(), at)
            .await
            .map(Response::new)
    }

    async fn get_block(
        &self,
        request: Request<v1::GetBlockRequest>,
    ) -> Result<Response<v1::GetBlockResponse>, Status> {
        let tenant = request.get_ref().tenant_id.clone();
        auth::authorize(
            &self.node,
            request.metadata(),
            Role::Audit,
            Some(&tenant),
            "read blocks",
        )?;
        forward_to_leader!(self, request, &tenant, get_block);
        let at = proofs::ReadAt::of(&request);
        let block = proofs::get_block(&self.node, request.into_inner(), at).await?;
        Ok(Response::new(v1::GetBlockResponse { block: Some(block) }))
    }

    type ListBlocksStream = proofs::BlockStream;

    async fn list_blocks(
        &self,
        request: Request<v1::ListBlocksRequest>,
    ) -> Result<Response<Self::ListBlocksStream>, Status> {
        let tenant = request.get_ref().tenant_id.clone();
        auth::authorize(
            &self.node,
            request.metadata(),
            Role::Audit,
            Some(&tenant),
            "read blocks",
        )?;
        let forwarded = headers::was_forwarded(&request);
        if let Some(target) = forward::target(&self.node, &tenant, forwarded) {
            let response = forward::call(
                &self.node,
                target,
                request,
                |mut client, request| async move { client.list_blocks(request).await },
            )
            .await?;
            let (metadata, blocks, extensions) = response.into_parts();
            let blocks: Self::ListBlocksStream = Box::pin(blocks);
            return Ok(Response::from_parts(metadata, blocks, extensions));
        }
        let at = proofs::ReadAt::of(&request);
        proofs::list_blocks(&self.node, request.into_inner(), at)
            .await
            .map(Response::new)
    }

    async fn get_proof(
        &self,
        request: Request<v1::GetProofRequest>,
    ) -> Result<Response<v1::GetProofResponse>, Status> {
        let tenant = request.get_ref().tenant_id.clone();
        auth::authorize(
            &self.node,
            request.metadata(),
            Role::Audit,
            Some(&tenant),
            "read proofs",
        )?;
        event_id_argument(&request.get_ref().event_id)?;
        forward_to_leader!(self, request, &tenant, get_proof);
        let at = proofs::ReadAt::of(&request);
        proofs::get_proof(&self.node, request.into_inner(), at)
            .await
            .map(Response::new)
    }

    async fn cluster_init(
        &self,
        request: Request<v1::ClusterInitRequest>,
    ) -> Result<Response<v1::ClusterInitResponse>, Status> {
        auth::authorize(
            &self.node,
            request.metadata(),
            Role::Admin,
            None,
            "initialize the cluster",
        )?;
        super::cluster::init(&self.node, request).await
    }

    async fn create_api_key(
        &self,
        request: Request<v1::CreateApiKeyRequest>,
    ) -> Result<Response<v1::CreateApiKeyResponse>, Status> {
        keys::create(&self.node, request).await
    }

    async fn list_api_keys(
        &self,
        request: Request<v1::ListApiKeysRequest>,
    ) -> Result<Response<v1::ListApiKeysResponse>, Status> {
        keys::list(&self.node, request).await
    }

    async fn revoke_api_key(
        &self,
        request: Request<v1::RevokeApiKeyRequest>,
    ) -> Result<Response<v1::RevokeApiKeyResponse>, Status> {
        keys::revoke(&self.node, request).await
    }

    async fn get_consistency_proof(
        &self,
        request: Request<v1::GetConsistencyProofRequest>,
    ) -> Result<Response<v1::GetConsistencyProofResponse>, Status> {
        let tenant = request.get_ref().tenant_id.clone();
        auth::authorize(
            &self.node,
            request.metadata(),
            Role::Audit,
            Some(&tenant),
            "read proofs",
        )?;
        forward_to_leader!(self, request, &tenant, get_consistency_proof);
        let at = proofs::ReadAt::of(&request);
        proofs::get_consistency_proof(&self.node, request.into_inner(), at)
            .await
            .map(Response::new)
    }
}
