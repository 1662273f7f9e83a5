//! The `trail.v1.Trail` gRPC service.
//!
//! Ingest: validate every event (a bad event rejects that event only, naming its index,
//! field and rule), group the good ones by shard, queue them, and answer once each
//! shard acknowledged its part (durable and applied).

use std::collections::BTreeMap;
use std::pin::Pin;

use futures::Stream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use trail_proto::v1::{self, trail_server::Trail};

use crate::ledger::validate::validate_event_id;
use crate::ledger::{
    stream_name, validate_event, validate_tenant_id, ApplyReceipt, EventRecord, FieldError,
    BATCH_EVENTS_MAX,
};
use crate::node::cluster::LEADER_HEADER;
use crate::node::{actor::GetNodeStatus, Node};
use crate::shard::reader::{self, TAIL_LIMIT_MAX};
use crate::shard::IngestError;

use super::convert::{
    barrier_status, read_by, read_status, tenant_argument, to_receipt, to_stored_event,
};
use super::forward::{self, forward_read, forward_to_leader, Consistency};
use super::{proofs, query};

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

    /// Records a batch; never fails as a whole except for a malformed batch. In a
    /// cluster, the events of shards led elsewhere go to their leaders (one call per
    /// leader node, unless the batch was forwarded here already).
    /// Validates, routes and records `events`; forwards those of shards led elsewhere.
    /// Also returns the endpoint of the one leader every event was forwarded to, if
    /// so (named in `trail-leader`, so the SDK goes there next time).
    async fn record_events(
        &self,
        events: Vec<v1::Event>,
        forwarded: bool,
    ) -> Result<(v1::RecordBatchResponse, Option<String>), Status> {
        if events.is_empty() {
            return Err(Status::invalid_argument(
                "events: the batch is empty; send 1 to 10000 events",
            ));
        }
        if events.len() > BATCH_EVENTS_MAX {
            return Err(Status::invalid_argument(format!(
                "events: the batch has {} events; at most {BATCH_EVENTS_MAX} are accepted per request",
                events.len()
            )));
        }
        let now_ns = self.node.clock.now_ns();
        let mut outcomes: Vec<Option<v1::record_outcome::Outcome>> = vec![None; events.len()];
        // Shard -> (request positions, events), in request order within each shard.
        let mut by_shard: BTreeMap<u32, (Vec<usize>, Vec<EventRecord>)> = BTreeMap::new();
        // Leader node -> (request positions, events), for shards led elsewhere.
        let mut by_leader: BTreeMap<u64, (forward::Target, Vec<usize>, Vec<v1::Event>)> =
            BTreeMap::new();
        for (index, mut event) in events.into_iter().enumerate() {
            if self.node.forwarder.is_some() && validate_tenant_id(&event.tenant_id).is_ok() {
                if let Some(target) = forward::target(&self.node, &event.tenant_id, forwarded) {
                    let entry = by_leader
                        .entry(target.node)
                        .or_insert_with(|| (target, Vec::new(), Vec::new()));
                    entry.1.push(index);
                    entry.2.push(event);
                    continue;
                }
            }
            match validate_event(&mut event, now_ns, || ulid::Ulid::new().to_string()) {
                Err(error) => outcomes[index] = Some(rejected(index, &event.event_id, &error)),
                Ok(record) => {
                    match self.node.router.hosted_shard_for(&record.tenant_id) {
                        Ok(shard) => {
                            let entry = by_shard.entry(shard).or_default();
                            entry.0.push(index);
                            entry.1.push(record);
                        }
                        Err(error) => {
                            outcomes[index] = Some(v1::record_outcome::Outcome::Error(
                                event_error(index, &record.event_id, &Status::from(error)),
                            ));
                        }
                    }
                }
            }
        }

        let sole_leader = match by_leader.values().next() {
            Some((target, positions, _))
                if by_leader.len() == 1 && positions.len() == outcomes.len() =>
            {
                Some(target.endpoint.clone())
            }
            _ => None,
        };
        if let Some(forwarder) = &self.node.forwarder {
            let forwarded_events: usize = by_leader
                .values()
                .map(|(_, positions, _)| positions.len())
                .sum();
            forwarder.counters.batch_events.fetch_add(
                forwarded_events as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        let forwarded_parts = by_leader.len();
        let remote = by_leader
            .into_values()
            .map(|(target, positions, events)| {
                let request =
                    forward::onward(&self.node, Request::new(v1::RecordBatchRequest { events }));
                async move {
                    let node = target.node;
                    let mut client = target.client;
                    let response = client.record_batch(request).await;
                    (node, positions, response)
                }
            })
            .collect::<futures::stream::FuturesUnordered<_>>()
            .collect::<Vec<_>>();

        let mut waiting = Vec::with_capacity(by_shard.len());
        let mut retry_after_ms = 0u32;
        for (shard, (positions, records)) in by_shard {
            let ids: Vec<(String, String)> = records
                .iter()
                .map(|record| (record.event_id.clone(), record.tenant_id.clone()))
                .collect();
            // Submitting never waits: a full queue answers at once (Busy).
            let submitted = match self.node.router.local(shard) {
                Some(handle) => handle.submit(records),
                // Routed above, removed since (a shard moved away): the retry finds
                // where it went.
                None => Err(IngestError::Unavailable {
                    shard,
                    reason: "the shard left this node while the batch was routed".into(),
                }),
            };
            waiting.push((shard, positions, ids, submitted));
        }
        // Forwarded parts run beside the local ones; a call this node serves alone (a
        // single node's every call) spawns nothing.
        let remote = (forwarded_parts > 0).then(|| tokio::spawn(remote));
        for (shard, positions, ids, submitted) in waiting {
            let reply = match submitted {
                Err(error) => Err(error),
                Ok(receiver) => receiver.await.unwrap_or_else(|_| {
                    Err(IngestError::Unavailable {
                        shard,
                        reason: "shard stopped before acknowledging; outcome unknown".into(),
                    })
                }),
            };
            match reply {
                Ok(receipts) => {
                    for ((position, (event_id, tenant_id)), receipt) in
                        positions.into_iter().zip(ids).zip(receipts)
                    {
                        outcomes[position] =
                            Some(receipt_outcome(position, event_id, tenant_id, receipt));
                    }
                }
                Err(error) => {
                    if let IngestError::Busy {
                        retry_after_ms: hint,
                        ..
                    } = &error
                    {
                        retry_after_ms = retry_after_ms.max(*hint);
                    }
                    for (position, (event_id, _)) in positions.into_iter().zip(ids) {
                        outcomes[position] = Some(failed(position, &event_id, &error));
                    }
                }
            }
        }

        let remote = match remote {
            Some(task) => task
                .await
                .map_err(|_| Status::internal("forwarding task failed"))?,
            None => Vec::new(),
        };
        for (node, positions, response) in remote {
            match response {
                Ok(response) => {
                    let response = response.into_inner();
                    retry_after_ms = retry_after_ms.max(response.retry_after_ms);
                    for (position, outcome) in positions.into_iter().zip(response.outcomes) {
                        let mut outcome = outcome.outcome;
                        if let Some(v1::record_outcome::Outcome::Error(error)) = &mut outcome {
                            error.index = position as u32;
                        }
                        outcomes[position] = outcome;
                    }
                }
                Err(status) => {
                    let status = forward::unreachable_leader(node, status);
                    for position in positions {
                        outcomes[position] = Some(v1::record_outcome::Outcome::Error(event_error(
                            position, "", &status,
                        )));
                    }
                }
            }
        }

        let mut response = v1::RecordBatchResponse {
            retry_after_ms,
            ..Default::default()
        };
        for (index, outcome) in outcomes.into_iter().enumerate() {
            // A leader that answered fewer outcomes than it was sent broke the protocol.
            let outcome = outcome.unwrap_or_else(|| {
                v1::record_outcome::Outcome::Error(event_error(
                    index,
                    "",
                    &Status::unavailable("the shard leader gave no outcome for this event; retry"),
                ))
            });
            match &outcome {
                v1::record_outcome::Outcome::Receipt(receipt) if receipt.deduplicated => {
                    response.deduplicated += 1
                }
                v1::record_outcome::Outcome::Receipt(_) => response.accepted += 1,
                v1::record_outcome::Outcome::Error(_) => response.rejected += 1,
            }
            response.outcomes.push(v1::RecordOutcome {
                outcome: Some(outcome),
            });
        }
        Ok((response, sole_leader))
    }
}

/// The outcome of an event the shard applied: its receipt, or ALREADY_EXISTS when its
/// id was recorded before with another body (a reuse of the id, not a retry: answering
/// `deduplicated` would tell the producer that this event is in the ledger).
fn receipt_outcome(
    position: usize,
    event_id: String,
    tenant_id: String,
    receipt: ApplyReceipt,
) -> v1::record_outcome::Outcome {
    if receipt.conflict {
        return v1::record_outcome::Outcome::Error(v1::EventError {
            index: position as u32,
            message: format!(
                "event_id {event_id:?} was recorded before with a different event (stream {}, \
                 seq {}, leaf hash {}): a retry must send the same event; a new event needs \
                 a new id",
                receipt.stream,
                receipt.seq,
                hex::encode(receipt.leaf_hash)
            ),
            event_id,
            code: "ALREADY_EXISTS".into(),
            field: "event_id".into(),
        });
    }
    v1::record_outcome::Outcome::Receipt(to_receipt(event_id, tenant_id, receipt))
}

fn rejected(index: usize, event_id: &str, error: &FieldError) -> v1::record_outcome::Outcome {
    v1::record_outcome::Outcome::Error(v1::EventError {
        index: index as u32,
        event_id: event_id.to_string(),
        code: "INVALID_ARGUMENT".into(),
        field: error.field.to_string(),
        message: error.to_string(),
    })
}

/// An event's error from a status (routing, forwarding).
fn event_error(index: usize, event_id: &str, status: &Status) -> v1::EventError {
    let code = match status.code() {
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        _ => "UNAVAILABLE",
    };
    v1::EventError {
        index: index as u32,
        event_id: event_id.to_string(),
        code: code.into(),
        field: String::new(),
        message: status.message().to_string(),
    }
}

fn failed(index: usize, event_id: &str, error: &IngestError) -> v1::record_outcome::Outcome {
    let code = match error {
        IngestError::Busy { .. } => "RESOURCE_EXHAUSTED",
        IngestError::Unavailable { .. } => "UNAVAILABLE",
    };
    v1::record_outcome::Outcome::Error(v1::EventError {
        index: index as u32,
        event_id: event_id.to_string(),
        code: code.into(),
        field: String::new(),
        message: error.to_string(),
    })
}

fn status_of_event_error(error: &v1::EventError) -> Status {
    let status = match error.code.as_str() {
        "INVALID_ARGUMENT" => Status::invalid_argument(error.message.clone()),
        "RESOURCE_EXHAUSTED" => Status::resource_exhausted(error.message.clone()),
        "FAILED_PRECONDITION" => Status::failed_precondition(error.message.clone()),
        "ALREADY_EXISTS" => Status::already_exists(error.message.clone()),
        _ => Status::unavailable(error.message.clone()),
    };
    status
}

/// An event id a read names: ingest's rule (an id no event can have never becomes a
/// storage key), INVALID_ARGUMENT naming `event_id`.
fn event_id_argument(event_id: &str) -> Result<(), Status> {
    validate_event_id("event_id", event_id)
        .map_err(|error| Status::invalid_argument(error.to_string()))
}

fn consistency_argument(value: i32) -> Result<Consistency, Status> {
    Consistency::from_wire(value).map_err(|error| Status::invalid_argument(error.to_string()))
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
        if validate_tenant_id(&tenant).is_ok() {
            forward_to_leader!(self, request, &tenant, record);
        }
        let forwarded = forward::was_forwarded(&request);
        let event = request
            .into_inner()
            .event
            .ok_or_else(|| Status::invalid_argument("event: is required"))?;
        let (response, _) = self.record_events(vec![event], forwarded).await?;
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
        let forwarded = forward::was_forwarded(&request);
        let (response, sole_leader) = self
            .record_events(request.into_inner().events, forwarded)
            .await?;
        let mut response = Response::new(response);
        if let Some(value) = sole_leader.and_then(|leader| leader.parse().ok()) {
            response.metadata_mut().insert(LEADER_HEADER, value);
        }
        Ok(response)
    }

    type RecordStreamStream = RecordStreamOut;

    async fn record_stream(
        &self,
        request: Request<Streaming<v1::RecordBatchRequest>>,
    ) -> Result<Response<Self::RecordStreamStream>, Status> {
        let forwarded = forward::was_forwarded(&request);
        let mut incoming = request.into_inner();
        let service = TrailService {
            node: self.node.clone(),
        };
        // One response per request batch, in order. The channel bound is the stream's
        // pipelining depth; a slow reader stops us reading more batches.
        let (sender, receiver) = tokio::sync::mpsc::channel(STREAM_BATCHES_IN_FLIGHT_MAX);
        tokio::spawn(async move {
            while let Some(batch) = incoming.next().await {
                let response = match batch {
                    Ok(batch) => service
                        .record_events(batch.events, forwarded)
                        .await
                        .map(|(response, _)| response),
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
        let consistency = consistency_argument(request.get_ref().consistency)?;
        forward_read!(self, request, &tenant_id, consistency, get_event);
        let replica_read = forward::is_replica_read(&request) || !consistency.needs_barrier();
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
        let consistency = consistency_argument(request.get_ref().consistency)?;
        forward_read!(self, request, &tenant_id, consistency, tail);
        let replica_read = forward::is_replica_read(&request) || !consistency.needs_barrier();
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
        _request: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        let status = self
            .node
            .actor
            .send(GetNodeStatus)
            .await
            .map_err(|_| Status::unavailable("node is shutting down"))?;
        let memory = crate::api::process_memory();
        let config = &self.node.config;
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
        let consistency = consistency_argument(request.get_ref().consistency)?;
        forward_read!(self, request, &tenant, consistency, query);
        let by = read_by(&self.node, &request);
        query::query(&self.node, request.into_inner(), &by)
            .await
            .map(Response::new)
    }

    async fn count(
        &self,
        request: Request<v1::CountRequest>,
    ) -> Result<Response<v1::CountResponse>, Status> {
        let tenant = request.get_ref().tenant_id.clone();
        let consistency = consistency_argument(request.get_ref().consistency)?;
        forward_read!(self, request, &tenant, consistency, count);
        let by = read_by(&self.node, &request);
        query::count(&self.node, request.into_inner(), &by)
            .await
            .map(Response::new)
    }

    async fn record_export(
        &self,
        request: Request<v1::RecordExportRequest>,
    ) -> Result<Response<v1::RecordExportResponse>, Status> {
        let tenant = request.get_ref().tenant_id.clone();
        forward_to_leader!(self, request, &tenant, record_export);
        let by = read_by(&self.node, &request);
        query::record_export(&self.node, request.into_inner(), &by)
            .await
            .map(Response::new)
    }

    async fn reindex(
        &self,
        _request: Request<v1::ReindexRequest>,
    ) -> Result<Response<v1::ReindexResponse>, Status> {
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
        let forwarded = forward::was_forwarded(&request);
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
        super::cluster::init(&self.node, request).await
    }

    async fn get_consistency_proof(
        &self,
        request: Request<v1::GetConsistencyProofRequest>,
    ) -> Result<Response<v1::GetConsistencyProofResponse>, Status> {
        let tenant = request.get_ref().tenant_id.clone();
        forward_to_leader!(self, request, &tenant, get_consistency_proof);
        let at = proofs::ReadAt::of(&request);
        proofs::get_consistency_proof(&self.node, request.into_inner(), at)
            .await
            .map(Response::new)
    }
}
