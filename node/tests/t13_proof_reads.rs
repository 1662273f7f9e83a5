//! The proof RPCs on a real single-replica shard (`api::proofs`): they pass the read
//! barrier, and `ListBlocks` streams hold no thread while their client does not read.
//!
//! `proof_reads_wait_for_a_lagging_state_machine`, in steps:
//! 1. open shard 1 of a node store in a temporary directory (openraft over fjall, its
//!    batcher and sealer), record events of a tenant and seal them into checkpoints;
//! 2. give the reads a handle whose applied index lags the log (the state machine of a
//!    restarted or newly elected leader that has not applied what it acknowledged):
//!    `GetCheckpoint`, `GetBlock`, `ListBlocks`, `GetProof` and `GetConsistencyProof`
//!    must all wait; a replica read answers at once;
//! 3. the applied index reaches the log: every read answers;
//! 4. the shard's Raft stops: every leader read answers UNAVAILABLE, never a local copy.
//!
//! `idle_list_blocks_streams_hold_no_thread_and_are_dropped`: 100 streams whose client
//! reads nothing leave the process's thread count as it was (each parked a blocking
//! thread before), a stream over the bound is refused, and an idle stream ends with
//! DEADLINE_EXCEEDED after its timeout and gives its permit back.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use support::{event, open_single_shard};
use tempfile::TempDir;
use tokio::sync::Semaphore;
use trail_node::api::proofs::{self, ProofReads, ReadAt};
use trail_node::shard::ShardHandle;
use trail_node::storage::AppliedProgress;
use trail_proto::v1;

const TENANT: &str = "ten_proofs";

/// Records `blocks` blocks of 3 events each, each sealed with its own checkpoint.
async fn record_blocks(handle: &ShardHandle, blocks: u64) {
    for block in 0..blocks {
        let events = (block * 3..block * 3 + 3)
            .map(|number| event(TENANT, number))
            .collect();
        handle
            .submit(events)
            .expect("queued")
            .await
            .expect("answered")
            .expect("acknowledged");
        handle.sealer.seal_now(TENANT).await.expect("sealed");
    }
}

fn reads(shard: &ShardHandle, at: ReadAt) -> ProofReads {
    ProofReads {
        shard: shard.clone(),
        permits: Arc::new(Semaphore::new(8)),
        at,
    }
}

/// The five tenant reads of the proof API, each to completion (`ListBlocks` read to
/// its end); the error of the first that fails.
async fn every_read(reads: ProofReads) -> Result<(), tonic::Status> {
    proofs::checkpoint_at(
        &reads,
        TENANT,
        &v1::GetCheckpointRequest {
            tenant_id: TENANT.into(),
            ..Default::default()
        },
    )
    .await?;
    proofs::block_at(
        &reads,
        TENANT,
        &v1::GetBlockRequest {
            tenant_id: TENANT.into(),
            block_index: 1,
            with_events: true,
            ..Default::default()
        },
    )
    .await?;
    let mut blocks = proofs::blocks_at(
        &reads,
        &Arc::new(Semaphore::new(1)),
        TENANT,
        &v1::ListBlocksRequest {
            tenant_id: TENANT.into(),
            ..Default::default()
        },
        Duration::from_secs(30),
    )
    .await?;
    while let Some(block) = blocks.next().await {
        block?;
    }
    proofs::proof_at(
        &reads,
        TENANT,
        &v1::GetProofRequest {
            tenant_id: TENANT.into(),
            event_id: "evt_4".into(),
            tree_size: 0,
        },
    )
    .await?;
    proofs::consistency_at(
        &reads,
        TENANT,
        &v1::GetConsistencyProofRequest {
            tenant_id: TENANT.into(),
            from_size: 1,
            ..Default::default()
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proof_reads_wait_for_a_lagging_state_machine() {
    let dir = TempDir::new().expect("temporary directory");
    let (handle, tasks) = open_single_shard(&dir, "proof-reads-test").await;
    record_blocks(&handle, 4).await;
    let last_log_index = handle.raft.metrics().borrow().last_log_index;

    // A state machine that has applied only the first entries of the log.
    let lagging = ShardHandle {
        applied: Arc::new(AppliedProgress::new(Some(1))),
        ..handle.clone()
    };
    let leader_reads = tokio::spawn(every_read(reads(&lagging, ReadAt::Leader)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !leader_reads.is_finished(),
        "a leader read answered from a state machine behind its log"
    );
    // A replica read is this replica as it is: it does not wait.
    tokio::time::timeout(
        Duration::from_secs(10),
        every_read(reads(&lagging, ReadAt::Replica)),
    )
    .await
    .expect("a replica read does not wait")
    .expect("a replica read answers");

    lagging.applied.publish(last_log_index);
    tokio::time::timeout(Duration::from_secs(10), leader_reads)
        .await
        .expect("the reads answer once the log is applied")
        .expect("task")
        .expect("every read answers");

    // A replica that can not confirm its leadership serves no leader read.
    let _ = tasks.stop_batcher.send(());
    let _ = tasks.stop_sealer.send(());
    handle.raft.shutdown().await.expect("shutdown");
    let status = every_read(reads(&handle, ReadAt::Leader))
        .await
        .expect_err("a stopped replica serves no leader read");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

fn thread_count() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .expect("Threads: line")
        .trim()
        .parse()
        .expect("a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_list_blocks_streams_hold_no_thread_and_are_dropped() {
    const STREAMS: usize = 100;
    let dir = TempDir::new().expect("temporary directory");
    let (handle, _tasks) = open_single_shard(&dir, "proof-reads-test").await;
    // More blocks than a stream's channel and one read step hold.
    record_blocks(&handle, 12).await;
    let reads = reads(&handle, ReadAt::Leader);
    let request = v1::ListBlocksRequest {
        tenant_id: TENANT.into(),
        with_events: true,
        ..Default::default()
    };
    // Warm the blocking pool up, so that its idle threads are counted before.
    every_read(reads.clone()).await.expect("reads");
    let threads_before = thread_count();

    let permits = Arc::new(Semaphore::new(STREAMS));
    let mut idle = Vec::new();
    for _ in 0..STREAMS {
        let stream =
            proofs::blocks_at(&reads, &permits, TENANT, &request, Duration::from_secs(600))
                .await
                .expect("a stream under the bound");
        idle.push(stream);
    }
    // Give every producer time to fill its channel and wait.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let threads_with_idle_streams = thread_count();
    println!(
        "threads: {threads_before} before, {threads_with_idle_streams} with {STREAMS} idle \
         ListBlocks streams"
    );
    assert!(
        threads_with_idle_streams < threads_before + 16,
        "{STREAMS} idle streams took threads: {threads_before} -> {threads_with_idle_streams}"
    );
    let refused = proofs::blocks_at(&reads, &permits, TENANT, &request, Duration::from_secs(1))
        .await
        .err()
        .expect("a stream over the bound is refused");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    drop(idle);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        permits.available_permits(),
        STREAMS,
        "closed streams free their permits"
    );

    // A client that stops reading: after the idle timeout its stream ends with
    // DEADLINE_EXCEEDED after the blocks it was sent, and its permit is free again.
    let mut stream = proofs::blocks_at(
        &reads,
        &permits,
        TENANT,
        &request,
        Duration::from_millis(300),
    )
    .await
    .expect("a stream");
    let first = stream.next().await.expect("a block").expect("block 0");
    assert_eq!(first.block_index, 0);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(
        permits.available_permits(),
        STREAMS,
        "an idle stream gives its permit back"
    );
    let mut received = 1;
    let mut ended = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(_) => received += 1,
            Err(status) => {
                ended = Some(status);
                break;
            }
        }
    }
    let status = ended.expect("an idle stream does not end as if complete");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(received < 12, "{received} blocks");
}

/// Proofs read O(log n) nodes of the stream tree, and equal the proofs built from every
/// block hash (the full read proofs cost before the subtree roots were kept): 150
/// blocks, every checkpoint size, inclusion of a spread of blocks and consistency from
/// every smaller size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_read_log_n_nodes_and_equal_full_read_proofs() {
    use trail_node::ledger::merkle::{consistency_proof, inclusion_proof};
    use trail_node::ledger::merkle::{try_consistency_proof, try_inclusion_proof};
    use trail_node::shard::proofs::{all_block_hashes, stream_of, StoredTree};

    const BLOCKS: u64 = 150;
    let dir = TempDir::new().expect("temporary directory");
    let (handle, _tasks) = open_single_shard(&dir, "proof-reads-test").await;
    record_blocks(&handle, BLOCKS).await;
    let keyspaces = handle.keyspaces.clone();
    let stream_no = stream_of(&keyspaces, TENANT, 0).expect("stream").stream_no;
    let hashes = all_block_hashes(&keyspaces, stream_no, BLOCKS).expect("block hashes");
    // Two reads per level at most, and the leaf itself.
    let reads_max = |tree_size: u64| 2 * u64::from(u64::BITS - tree_size.leading_zeros()) + 2;
    let mut most_reads = 0;
    for tree_size in 1..=BLOCKS {
        let leaves = &hashes[..tree_size as usize];
        for index in (0..tree_size).step_by(7).chain([tree_size - 1]) {
            let tree = StoredTree::new(&keyspaces, stream_no);
            let path = try_inclusion_proof(&tree, index, tree_size).expect("inclusion");
            assert_eq!(path, inclusion_proof(leaves, index, tree_size));
            assert!(
                tree.reads() <= reads_max(tree_size),
                "{} reads",
                tree.reads()
            );
            most_reads = most_reads.max(tree.reads());
        }
        for from_size in 0..=tree_size {
            let tree = StoredTree::new(&keyspaces, stream_no);
            let proof = try_consistency_proof(&tree, from_size, tree_size).expect("consistency");
            assert_eq!(proof, consistency_proof(leaves, from_size, tree_size));
            assert!(
                tree.reads() <= reads_max(tree_size),
                "{} reads",
                tree.reads()
            );
        }
    }
    println!("a proof in a tree of {BLOCKS} blocks read at most {most_reads} nodes");

    // The RPC's proofs verify against their checkpoint (checked by the server first).
    let reads = reads(&handle, ReadAt::Leader);
    let proof = proofs::proof_at(
        &reads,
        TENANT,
        &v1::GetProofRequest {
            tenant_id: TENANT.into(),
            event_id: "evt_7".into(),
            tree_size: 0,
        },
    )
    .await
    .expect("proof");
    assert_eq!(proof.checkpoint.expect("checkpoint").tree_size, BLOCKS);
    let block = proof.block.expect("block");
    let path: Vec<[u8; 32]> = proof
        .tree_path
        .iter()
        .map(|hash| hash.as_slice().try_into().expect("32 bytes"))
        .collect();
    assert_eq!(
        path,
        inclusion_proof(&hashes[..], block.block_index, BLOCKS),
        "the served path is the full-read one"
    );
}
