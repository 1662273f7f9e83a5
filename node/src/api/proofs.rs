//! The tamper-evidence RPCs: checkpoints, blocks and proofs (`docs/PROOFS.md`).
//!
//! Every read is scoped to the tenant named in the request: a tenant's stream number
//! comes from its own state, so no request can reach another tenant's chain.

use std::pin::Pin;

use futures::Stream;
use tonic::Status;
use trail_proto::v1;

use crate::node::Node;
use crate::shard::proofs::{self, ProofError, StoredCheckpoint};
use crate::shard::reader::ReadError;
use crate::shard::ShardHandle;

use super::grpc::{read_status, tenant_argument};

/// Blocks one `ListBlocks` call keeps in its channel (each up to ~1 MiB with events).
const LIST_BLOCKS_BUFFER: usize = 4;

pub type BlockStream = Pin<Box<dyn Stream<Item = Result<v1::Block, Status>> + Send + 'static>>;

fn proof_status(error: ProofError) -> Status {
    match error {
        // These RPCs exist to let a tenant's auditor find damage: name the record of the
        // tenant's own stream that failed (every read here is scoped to that stream),
        // where other reads only say that a record can not be served.
        ProofError::Read(ReadError::Corrupt { location, reason }) => {
            tracing::error!(%location, %reason, "proof read found a corrupt record");
            Status::data_loss(format!(
                "{location}: {reason}: the stored records failed their integrity checks"
            ))
        }
        ProofError::Read(error) => read_status(error),
        ProofError::NotFound(message) => Status::not_found(message),
        ProofError::BadRequest(message) => Status::invalid_argument(message),
        ProofError::NotCovered { .. } => Status::failed_precondition(error.to_string()),
    }
}

async fn blocking<T, F>(work: F) -> Result<T, Status>
where
    F: FnOnce() -> Result<T, ProofError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| Status::internal("read task failed"))?
        .map_err(proof_status)
}

fn to_checkpoint(checkpoint: StoredCheckpoint) -> v1::Checkpoint {
    let body = checkpoint.body;
    let stream = body
        .origin
        .split_once('/')
        .map(|(_, stream)| stream.to_string())
        .unwrap_or_default();
    v1::Checkpoint {
        note: checkpoint.note,
        stream,
        tree_size: body.tree_size,
        root_hash: body.root.to_vec(),
        last_seq: body.last_seq,
    }
}

fn to_block(block: proofs::SealedBlock, events: Vec<Vec<u8>>) -> v1::Block {
    v1::Block {
        block_index: block.header.block_index,
        first_seq: block.header.first_seq,
        count: block.header.count,
        block_hash: block.record.block_hash.to_vec(),
        header: block.record.header,
        events,
    }
}

async fn seal_now(shard: &ShardHandle, tenant_id: &str) -> Result<(), Status> {
    shard.sealer.seal_now(tenant_id).await.map_err(|error| {
        tracing::warn!(%error, "seal on demand failed");
        Status::unavailable(format!("{error}; retry"))
    })
}

const LIST_STREAMS_DEFAULT: usize = 1_000;
const LIST_STREAMS_MAX: usize = 10_000;

pub async fn list_streams(
    node: &Node,
    request: v1::ListStreamsRequest,
) -> Result<v1::ListStreamsResponse, Status> {
    let limit = match request.limit as usize {
        0 => LIST_STREAMS_DEFAULT,
        limit if limit > LIST_STREAMS_MAX => {
            return Err(Status::invalid_argument(format!(
                "limit: {limit} is too large; use 1 to {LIST_STREAMS_MAX} (0 means {LIST_STREAMS_DEFAULT})"
            )))
        }
        limit => limit,
    };
    let shards: Vec<ShardHandle> = node.router.shards();
    let after = request.after_tenant_id;
    let mut streams = blocking(move || {
        let mut streams = Vec::new();
        for shard in &shards {
            for (tenant_id, state) in proofs::tenants_after(&shard.keyspaces, &after, limit + 1)? {
                streams.push(v1::StreamInfo {
                    stream: crate::ledger::stream_name(&tenant_id, 0),
                    tenant_id,
                    shard_id: shard.shard,
                    last_seq: state.next_seq - 1,
                    blocks: state.chain.blocks.len(),
                    checkpointed_size: state.chain.checkpointed_size,
                });
            }
        }
        Ok(streams)
    })
    .await?;
    streams.sort_by(|a, b| a.tenant_id.cmp(&b.tenant_id));
    let more = streams.len() > limit;
    streams.truncate(limit);
    let next_after_tenant_id = if more {
        streams
            .last()
            .map(|last| last.tenant_id.clone())
            .unwrap_or_default()
    } else {
        String::new()
    };
    Ok(v1::ListStreamsResponse {
        streams,
        next_after_tenant_id,
    })
}

pub async fn get_checkpoint(
    node: &Node,
    request: v1::GetCheckpointRequest,
) -> Result<v1::GetCheckpointResponse, Status> {
    let tenant_id = tenant_argument(&request.tenant_id)?;
    let shard = node.router.shard_for(&tenant_id)?;
    if request.seal_now && request.tree_size == 0 {
        // Two Raft rounds only when the latest checkpoint does not cover everything.
        let keyspaces = shard.keyspaces.clone();
        let tenant = tenant_id.clone();
        let state =
            blocking(move || proofs::stream_of(&keyspaces, &tenant, request.stream_index)).await?;
        let chain = &state.chain;
        if !chain.open.is_empty() || chain.checkpointed_size < chain.blocks.len() {
            seal_now(&shard, &tenant_id).await?;
        }
    }
    let keyspaces = shard.keyspaces.clone();
    let checkpoint = blocking(move || {
        let state = proofs::stream_of(&keyspaces, &tenant_id, request.stream_index)?;
        proofs::checkpoint(&keyspaces, &state, request.tree_size)?.ok_or_else(|| {
            ProofError::NotFound(if request.tree_size == 0 {
                format!(
                    "stream {tenant_id}/{} has no checkpoint yet; ask with seal_now",
                    request.stream_index
                )
            } else {
                format!(
                    "stream {tenant_id}/{} has no checkpoint of tree size {}",
                    request.stream_index, request.tree_size
                )
            })
        })
    })
    .await?;
    Ok(v1::GetCheckpointResponse {
        checkpoint: Some(to_checkpoint(checkpoint)),
        verifier_key: node.signer.verifier_key(),
    })
}

pub async fn get_block(node: &Node, request: v1::GetBlockRequest) -> Result<v1::Block, Status> {
    let tenant_id = tenant_argument(&request.tenant_id)?;
    let keyspaces = node.router.shard_for(&tenant_id)?.keyspaces.clone();
    blocking(move || {
        let state = proofs::stream_of(&keyspaces, &tenant_id, request.stream_index)?;
        let block =
            proofs::block(&keyspaces, state.stream_no, request.block_index)?.ok_or_else(|| {
                ProofError::NotFound(format!(
                    "stream {tenant_id}/{} has no sealed block {} ({} sealed)",
                    request.stream_index,
                    request.block_index,
                    state.chain.blocks.len()
                ))
            })?;
        let events = if request.with_events {
            proofs::block_events_raw(&keyspaces, state.stream_no, &block.header)?
        } else {
            Vec::new()
        };
        Ok(to_block(block, events))
    })
    .await
}

pub async fn list_blocks(
    node: &Node,
    request: v1::ListBlocksRequest,
) -> Result<BlockStream, Status> {
    let tenant_id = tenant_argument(&request.tenant_id)?;
    let keyspaces = node.router.shard_for(&tenant_id)?.keyspaces.clone();
    let state = {
        let keyspaces = keyspaces.clone();
        let tenant_id = tenant_id.clone();
        blocking(move || proofs::stream_of(&keyspaces, &tenant_id, request.stream_index)).await?
    };
    let to = if request.to_block == 0 {
        u64::MAX
    } else {
        request.to_block
    };
    let (sender, receiver) = tokio::sync::mpsc::channel(LIST_BLOCKS_BUFFER);
    // The auditor's feed: blocks and events exactly as stored, no checks (the client
    // checks everything and names what is wrong).
    tokio::task::spawn_blocking(move || {
        for item in proofs::blocks_raw(&keyspaces, state.stream_no, request.from_block, to) {
            let message = item.map_err(read_status).and_then(|(index, record)| {
                // A header that does not decode is served as stored, without events:
                // the auditor names it.
                let header = crate::ledger::BlockHeader::decode(&record.header).ok();
                let events = match &header {
                    Some(header) if request.with_events && header.count > 0 => {
                        proofs::block_events_raw(&keyspaces, state.stream_no, header)
                            .map_err(read_status)?
                    }
                    _ => Vec::new(),
                };
                Ok(v1::Block {
                    block_index: index,
                    first_seq: header.as_ref().map_or(0, |header| header.first_seq),
                    count: header.as_ref().map_or(0, |header| header.count),
                    block_hash: record.block_hash.to_vec(),
                    header: record.header,
                    events,
                })
            });
            let stop = message.is_err();
            if sender.blocking_send(message).is_err() || stop {
                return;
            }
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(
        receiver,
    )))
}

pub async fn get_proof(
    node: &Node,
    request: v1::GetProofRequest,
) -> Result<v1::GetProofResponse, Status> {
    let tenant_id = tenant_argument(&request.tenant_id)?;
    if request.event_id.is_empty() {
        return Err(Status::invalid_argument("event_id: is required"));
    }
    let shard = node.router.shard_for(&tenant_id)?;
    let attempt = || {
        let keyspaces = shard.keyspaces.clone();
        let tenant_id = tenant_id.clone();
        let event_id = request.event_id.clone();
        tokio::task::spawn_blocking(move || {
            proofs::inclusion(&keyspaces, &tenant_id, &event_id, request.tree_size)
        })
    };
    let first = attempt()
        .await
        .map_err(|_| Status::internal("read task failed"))?;
    let proof = match first {
        // Not sealed or not checkpointed yet: seal and sign now, then prove.
        Err(ProofError::NotCovered { .. }) if request.tree_size == 0 => {
            seal_now(&shard, &tenant_id).await?;
            attempt()
                .await
                .map_err(|_| Status::internal("read task failed"))?
                .map_err(proof_status)?
        }
        other => other.map_err(proof_status)?,
    };
    Ok(v1::GetProofResponse {
        event: proof.event,
        stream: proof.stream,
        seq: proof.seq,
        leaf_index: proof.leaf_index,
        block: Some(to_block(proof.block, Vec::new())),
        block_path: proof.block_path.iter().map(|hash| hash.to_vec()).collect(),
        tree_path: proof.tree_path.iter().map(|hash| hash.to_vec()).collect(),
        checkpoint: Some(to_checkpoint(proof.checkpoint)),
    })
}

pub async fn get_consistency_proof(
    node: &Node,
    request: v1::GetConsistencyProofRequest,
) -> Result<v1::GetConsistencyProofResponse, Status> {
    let tenant_id = tenant_argument(&request.tenant_id)?;
    let keyspaces = node.router.shard_for(&tenant_id)?.keyspaces.clone();
    let (proof, to) = blocking(move || {
        proofs::consistency(
            &keyspaces,
            &tenant_id,
            request.stream_index,
            request.from_size,
            request.to_size,
        )
    })
    .await?;
    Ok(v1::GetConsistencyProofResponse {
        proof: proof.iter().map(|hash| hash.to_vec()).collect(),
        to: Some(to_checkpoint(to)),
    })
}
