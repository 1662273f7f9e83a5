//! The tamper-evidence RPCs: checkpoints, blocks and proofs (`docs/PROOFS.md`).
//!
//! Every read is scoped to the tenant named in the request: a tenant's stream number
//! comes from its own state, so no request can reach another tenant's chain.
//!
//! Every read but a replica read (`trail-replica-read`) runs on the shard's leader after
//! its read barrier (`ShardHandle::read_barrier`), like `GetEvent` and `Query`: a proof
//! of an acknowledged event is always found, and a checkpoint is never older than one a
//! client was already given. The storage work runs on the blocking pool under the
//! node's query permits (`api/query.rs`), so proofs, block reads and `ListStreams`
//! share the bound on scans with queries.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tonic::Status;
use trail_proto::v1;

use crate::node::{Node, BLOCK_STREAMS_MAX};
use crate::query::ReadError;
use crate::shard::proofs::{self, ProofError, StoredCheckpoint};
use crate::shard::ShardHandle;

use super::convert::{barrier_status, read_status, tenant_argument};

/// Blocks one `ListBlocks` call keeps in its channel (each up to ~1 MiB with events).
const LIST_BLOCKS_BUFFER: usize = 2;
/// Blocks one read step of a `ListBlocks` stream takes from the store: with events a
/// block is up to ~1 MiB, without it ~200 bytes. A step holds a query permit and a
/// blocking thread for a few ms at most, and never waits for the client.
const LIST_BLOCKS_STEP_WITH_EVENTS: usize = 2;
const LIST_BLOCKS_STEP_HEADERS: usize = 256;
/// A stream whose client takes no block for this long is ended with DEADLINE_EXCEEDED,
/// so that clients that stop reading cannot hold every stream permit.
pub const BLOCK_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

pub type BlockStream = Pin<Box<dyn Stream<Item = Result<v1::Block, Status>> + Send + 'static>>;

/// Where a read is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadAt {
    /// The shard's leader, after its read barrier: sees every acknowledged write.
    Leader,
    /// This node's replica as it is now (`trail-replica-read`): may lag.
    Replica,
}

impl ReadAt {
    pub fn of<T>(request: &tonic::Request<T>) -> ReadAt {
        if super::headers::is_replica_read(request) {
            ReadAt::Replica
        } else {
            ReadAt::Leader
        }
    }
}

/// What a proof read needs of the node: the shard, the permits its storage work runs
/// under, and where it is served. `Node` gives one per request; tests build their own
/// around a shard.
#[derive(Clone)]
pub struct ProofReads {
    pub shard: ShardHandle,
    /// The node's query permits (`Node::query_permits`).
    pub permits: Arc<Semaphore>,
    pub at: ReadAt,
}

impl ProofReads {
    fn for_tenant(node: &Node, tenant_id: &str, at: ReadAt) -> Result<ProofReads, Status> {
        Ok(ProofReads {
            shard: node.router.shard_for(tenant_id)?,
            permits: node.query_permits.clone(),
            at,
        })
    }

    /// The read barrier of a leader read; nothing for a replica read.
    async fn barrier(&self) -> Result<(), Status> {
        match self.at {
            ReadAt::Leader => self.shard.read_barrier().await.map_err(barrier_status),
            ReadAt::Replica => Ok(()),
        }
    }

    async fn blocking<T, F>(&self, work: F) -> Result<T, Status>
    where
        F: FnOnce() -> Result<T, ProofError> + Send + 'static,
        T: Send + 'static,
    {
        blocking(&self.permits, work).await
    }
}

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

/// Runs `work` on the blocking pool under one of `permits` (the node's query permits):
/// proof and chain reads wait their turn with queries instead of taking every
/// blocking thread.
async fn blocking<T, F>(permits: &Arc<Semaphore>, work: F) -> Result<T, Status>
where
    F: FnOnce() -> Result<T, ProofError> + Send + 'static,
    T: Send + 'static,
{
    let permit = permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| Status::unavailable("node is shutting down"))?;
    tokio::task::spawn_blocking(move || {
        // The permit lives as long as the read, even if the caller goes away.
        let _permit = permit;
        work()
    })
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
    let mut streams = blocking(&node.query_permits, move || {
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
    at: ReadAt,
) -> Result<v1::GetCheckpointResponse, Status> {
    let tenant_id = tenant_argument(&request.tenant_id)?;
    let reads = ProofReads::for_tenant(node, &tenant_id, at)?;
    let checkpoint = checkpoint_at(&reads, &tenant_id, &request).await?;
    Ok(v1::GetCheckpointResponse {
        checkpoint: Some(to_checkpoint(checkpoint)),
        verifier_key: node.signer.verifier_key(),
    })
}

/// `GetCheckpoint` of a tenant of `reads.shard`.
pub async fn checkpoint_at(
    reads: &ProofReads,
    tenant_id: &str,
    request: &v1::GetCheckpointRequest,
) -> Result<StoredCheckpoint, Status> {
    reads.barrier().await?;
    let shard = &reads.shard;
    let stream_index = request.stream_index;
    let tree_size = request.tree_size;
    if request.seal_now && tree_size == 0 {
        // Two Raft rounds only when the latest checkpoint does not cover everything.
        let keyspaces = shard.keyspaces.clone();
        let tenant = tenant_id.to_string();
        let state = reads
            .blocking(move || proofs::stream_of(&keyspaces, &tenant, stream_index))
            .await?;
        let chain = &state.chain;
        if !chain.open.is_empty() || chain.checkpointed_size < chain.blocks.len() {
            seal_now(shard, tenant_id).await?;
        }
    }
    let keyspaces = shard.keyspaces.clone();
    let tenant_id = tenant_id.to_string();
    reads
        .blocking(move || {
            let state = proofs::stream_of(&keyspaces, &tenant_id, stream_index)?;
            proofs::checkpoint(&keyspaces, &state, tree_size)?.ok_or_else(|| {
                ProofError::NotFound(if tree_size == 0 {
                    format!(
                        "stream {tenant_id}/{stream_index} has no checkpoint yet; ask with \
                         seal_now"
                    )
                } else {
                    format!(
                        "stream {tenant_id}/{stream_index} has no checkpoint of tree size \
                         {tree_size}"
                    )
                })
            })
        })
        .await
}

pub async fn get_block(
    node: &Node,
    request: v1::GetBlockRequest,
    at: ReadAt,
) -> Result<v1::Block, Status> {
    let tenant_id = tenant_argument(&request.tenant_id)?;
    let reads = ProofReads::for_tenant(node, &tenant_id, at)?;
    block_at(&reads, &tenant_id, &request).await
}

/// `GetBlock` of a tenant of `reads.shard`.
pub async fn block_at(
    reads: &ProofReads,
    tenant_id: &str,
    request: &v1::GetBlockRequest,
) -> Result<v1::Block, Status> {
    reads.barrier().await?;
    let keyspaces = reads.shard.keyspaces.clone();
    let tenant_id = tenant_id.to_string();
    let request = request.clone();
    reads
        .blocking(move || {
            let state = proofs::stream_of(&keyspaces, &tenant_id, request.stream_index)?;
            let block = proofs::block(&keyspaces, state.stream_no, request.block_index)?
                .ok_or_else(|| {
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
    at: ReadAt,
) -> Result<BlockStream, Status> {
    let tenant_id = tenant_argument(&request.tenant_id)?;
    let reads = ProofReads::for_tenant(node, &tenant_id, at)?;
    blocks_at(
        &reads,
        &node.block_stream_permits,
        &tenant_id,
        &request,
        BLOCK_STREAM_IDLE_TIMEOUT,
    )
    .await
}

/// `ListBlocks` of a tenant of `reads.shard`, as one of at most `streams` permits.
///
/// The stream is produced by a task that reads a bounded step of blocks on the blocking
/// pool (under a query permit), then awaits room in the channel in async code: a client
/// that does not read holds no thread, only its buffered blocks and its stream permit,
/// and after `idle_timeout` without taking a block its stream ends with
/// DEADLINE_EXCEEDED (never a silent end, which would look complete).
pub async fn blocks_at(
    reads: &ProofReads,
    streams: &Arc<Semaphore>,
    tenant_id: &str,
    request: &v1::ListBlocksRequest,
    idle_timeout: Duration,
) -> Result<BlockStream, Status> {
    reads.barrier().await?;
    let stream_permit = streams.clone().try_acquire_owned().map_err(|_| {
        Status::resource_exhausted(format!(
            "this node serves at most {BLOCK_STREAMS_MAX} ListBlocks streams at once, and \
             all are open; retry later"
        ))
    })?;
    let state = {
        let keyspaces = reads.shard.keyspaces.clone();
        let tenant_id = tenant_id.to_string();
        let stream_index = request.stream_index;
        reads
            .blocking(move || proofs::stream_of(&keyspaces, &tenant_id, stream_index))
            .await?
    };
    let to = if request.to_block == 0 {
        u64::MAX
    } else {
        request.to_block
    };
    let step = if request.with_events {
        LIST_BLOCKS_STEP_WITH_EVENTS
    } else {
        LIST_BLOCKS_STEP_HEADERS
    };
    let (sender, receiver) = mpsc::channel(LIST_BLOCKS_BUFFER);
    let (ended, end_status) = oneshot::channel::<Status>();
    let feed = BlockFeed {
        reads: reads.clone(),
        stream_no: state.stream_no,
        next: request.from_block,
        to,
        with_events: request.with_events,
        step,
    };
    tokio::spawn(async move {
        // The stream permit is released when the feed ends, however it ends.
        let _stream_permit = stream_permit;
        if let Some(status) = feed.run(sender, idle_timeout).await {
            let _ = ended.send(status);
        }
    });
    let blocks = tokio_stream::wrappers::ReceiverStream::new(receiver);
    // After the last block: the status the feed ended with, if it did not finish.
    let end = futures::stream::once(async move { end_status.await.ok().map(Err) })
        .filter_map(std::future::ready);
    Ok(Box::pin(blocks.chain(end)))
}

/// The producer of one `ListBlocks` stream.
struct BlockFeed {
    reads: ProofReads,
    stream_no: u32,
    /// The next block index to read.
    next: u64,
    /// Stop before this block index.
    to: u64,
    with_events: bool,
    /// Blocks per read step.
    step: usize,
}

impl BlockFeed {
    /// Sends the blocks until the range ends, a read fails (sent as the last item), the
    /// client goes away, or it takes nothing for `idle_timeout` (returned).
    async fn run(
        mut self,
        sender: mpsc::Sender<Result<v1::Block, Status>>,
        idle_timeout: Duration,
    ) -> Option<Status> {
        while self.next < self.to {
            let keyspaces = self.reads.shard.keyspaces.clone();
            let (stream_no, from, to, with_events, step) = (
                self.stream_no,
                self.next,
                self.to,
                self.with_events,
                self.step,
            );
            let read = self
                .reads
                .blocking(move || {
                    Ok(read_step(
                        &keyspaces,
                        stream_no,
                        from,
                        to,
                        with_events,
                        step,
                    ))
                })
                .await;
            let messages = match read {
                Ok(messages) => messages,
                Err(status) => vec![Err(status)],
            };
            if messages.is_empty() {
                return None;
            }
            for message in messages {
                let stop = match &message {
                    Ok(block) => {
                        self.next = block.block_index.saturating_add(1);
                        false
                    }
                    Err(_) => true,
                };
                match tokio::time::timeout(idle_timeout, sender.send(message)).await {
                    Ok(Ok(())) => {}
                    // The client went away.
                    Ok(Err(_)) => return None,
                    Err(_) => {
                        tracing::info!(
                            shard = self.reads.shard.shard,
                            stream_no = self.stream_no,
                            next_block = self.next,
                            idle_timeout_s = idle_timeout.as_secs(),
                            "list blocks stream dropped: its client stopped reading"
                        );
                        return Some(Status::deadline_exceeded(format!(
                            "the client took no block for {}s; the stream was ended at \
                             block {}: ask again from there",
                            idle_timeout.as_secs(),
                            self.next
                        )));
                    }
                }
                if stop {
                    return None;
                }
            }
        }
        None
    }
}

/// Up to `step` blocks from `from` (before `to`), as stored: the auditor's feed, no
/// checks (the client checks everything and names what is wrong). A read error is the
/// last message.
fn read_step(
    keyspaces: &crate::storage::ShardKeyspaces,
    stream_no: u32,
    from: u64,
    to: u64,
    with_events: bool,
    step: usize,
) -> Vec<Result<v1::Block, Status>> {
    let mut messages = Vec::with_capacity(step.min(LIST_BLOCKS_STEP_HEADERS));
    for item in proofs::blocks_raw(keyspaces, stream_no, from, to).take(step) {
        let message = item.map_err(read_status).and_then(|(index, record)| {
            // A header that does not decode is served as stored, without events: the
            // auditor names it.
            let header = crate::ledger::BlockHeader::decode(&record.header).ok();
            let events = match &header {
                Some(header) if with_events && header.count > 0 => {
                    proofs::block_events_raw(keyspaces, stream_no, header).map_err(read_status)?
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
        let failed = message.is_err();
        messages.push(message);
        if failed {
            break;
        }
    }
    messages
}

pub async fn get_proof(
    node: &Node,
    request: v1::GetProofRequest,
    at: ReadAt,
) -> Result<v1::GetProofResponse, Status> {
    let tenant_id = tenant_argument(&request.tenant_id)?;
    if request.event_id.is_empty() {
        return Err(Status::invalid_argument("event_id: is required"));
    }
    let reads = ProofReads::for_tenant(node, &tenant_id, at)?;
    proof_at(&reads, &tenant_id, &request).await
}

/// `GetProof` of a tenant of `reads.shard`.
pub async fn proof_at(
    reads: &ProofReads,
    tenant_id: &str,
    request: &v1::GetProofRequest,
) -> Result<v1::GetProofResponse, Status> {
    reads.barrier().await?;
    let attempt = || {
        let keyspaces = reads.shard.keyspaces.clone();
        let tenant_id = tenant_id.to_string();
        let event_id = request.event_id.clone();
        let tree_size = request.tree_size;
        reads.blocking(move || {
            match proofs::inclusion(&keyspaces, &tenant_id, &event_id, tree_size) {
                // Kept apart from the other errors: the caller seals on demand.
                Err(ProofError::NotCovered { stream, seq }) => Ok(Err((stream, seq))),
                other => other.map(Ok),
            }
        })
    };
    let proof = match attempt().await? {
        Ok(proof) => proof,
        // Not sealed or not checkpointed yet: seal and sign now, then prove.
        Err(_) if request.tree_size == 0 => {
            seal_now(&reads.shard, tenant_id).await?;
            attempt()
                .await?
                .map_err(|(stream, seq)| proof_status(ProofError::NotCovered { stream, seq }))?
        }
        Err((stream, seq)) => return Err(proof_status(ProofError::NotCovered { stream, seq })),
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
    at: ReadAt,
) -> Result<v1::GetConsistencyProofResponse, Status> {
    let tenant_id = tenant_argument(&request.tenant_id)?;
    let reads = ProofReads::for_tenant(node, &tenant_id, at)?;
    consistency_at(&reads, &tenant_id, &request).await
}

/// `GetConsistencyProof` of a tenant of `reads.shard`.
pub async fn consistency_at(
    reads: &ProofReads,
    tenant_id: &str,
    request: &v1::GetConsistencyProofRequest,
) -> Result<v1::GetConsistencyProofResponse, Status> {
    reads.barrier().await?;
    let keyspaces = reads.shard.keyspaces.clone();
    let tenant_id = tenant_id.to_string();
    let request = request.clone();
    let (proof, to) = reads
        .blocking(move || {
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
