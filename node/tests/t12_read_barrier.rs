//! The linearizable read barrier (`ShardHandle::read_barrier`) on a real single-replica
//! shard: reads that pass it see every acknowledged write, it answers a replica that is
//! not running with a retryable error, and what it costs per read.
//!
//! Steps: open shard 1 of a node store in a temporary directory (openraft over fjall,
//! its batcher and sealer), let it elect itself, acknowledge writes through the batcher,
//! then pass the barrier and read the tenant's tail. The cost is printed (run with
//! `--nocapture`, in a debug and a release build): the barrier alone on an idle shard,
//! a read with and without it, and the barrier while writes are in flight.

mod support;

use std::time::{Duration, Instant};

use support::{event, open_single_shard};
use tempfile::TempDir;
use trail_node::shard::reader;
use trail_node::shard::{ReadBarrierError, ShardHandle};

async fn write(handle: &ShardHandle, tenant_id: &str, numbers: std::ops::Range<u64>) {
    let events = numbers.map(|number| event(tenant_id, number)).collect();
    let receipts = handle
        .submit(events)
        .expect("queued")
        .await
        .expect("answered")
        .expect("acknowledged");
    assert!(!receipts.is_empty());
}

fn last_seq(handle: &ShardHandle, tenant_id: &str) -> u64 {
    reader::tail(&handle.keyspaces, tenant_id, 0, 1)
        .expect("tail")
        .1
}

fn micros(total: Duration, calls: u32) -> f64 {
    total.as_secs_f64() * 1e6 / f64::from(calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_after_the_barrier_see_acknowledged_writes_and_it_is_cheap() {
    let dir = TempDir::new().expect("temporary directory");
    let (handle, tasks) = open_single_shard(&dir, "barrier-test").await;
    let tenant = "ten_barrier";

    for round in 0..20u64 {
        write(&handle, tenant, round * 5..round * 5 + 5).await;
        handle.read_barrier().await.expect("the leader passes");
        let metrics = handle.raft.metrics().borrow().clone();
        let applied = handle.applied.applied_index();
        assert!(
            applied >= metrics.last_log_index,
            "passed with applied {applied:?} below the log's last index {:?}",
            metrics.last_log_index
        );
        assert_eq!(last_seq(&handle, tenant), round * 5 + 5);
    }

    // The cost on an idle shard.
    const CALLS: u32 = 2_000;
    for _ in 0..100 {
        handle.read_barrier().await.unwrap();
    }
    let started = Instant::now();
    for _ in 0..CALLS {
        handle.read_barrier().await.unwrap();
    }
    let barrier = started.elapsed();
    let started = Instant::now();
    for _ in 0..CALLS {
        std::hint::black_box(last_seq(&handle, tenant));
    }
    let read = started.elapsed();
    let started = Instant::now();
    for _ in 0..CALLS {
        handle.read_barrier().await.unwrap();
        std::hint::black_box(last_seq(&handle, tenant));
    }
    let both = started.elapsed();

    // While writes are in flight the barrier also waits for them to apply.
    let writer = tokio::spawn({
        let handle = handle.clone();
        async move {
            for round in 0..50u64 {
                write(&handle, "ten_writer", round * 20..round * 20 + 20).await;
            }
        }
    });
    let mut under_load = Duration::ZERO;
    let mut loaded_calls = 0u32;
    while !writer.is_finished() {
        let started = Instant::now();
        handle.read_barrier().await.unwrap();
        under_load += started.elapsed();
        loaded_calls += 1;
    }
    writer.await.expect("writer");

    println!(
        "read barrier ({} build): {:.1} µs per call on an idle shard; a tail read {:.1} µs \
         alone, {:.1} µs after the barrier; {:.1} µs per call during writes ({loaded_calls} calls)",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        micros(barrier, CALLS),
        micros(read, CALLS),
        micros(both, CALLS),
        micros(under_load, loaded_calls.max(1)),
    );

    // A replica whose Raft has stopped answers retryably (UNAVAILABLE at the API).
    let _ = tasks.stop_batcher.send(());
    let _ = tasks.stop_sealer.send(());
    handle.raft.shutdown().await.expect("shutdown");
    let error = handle.read_barrier().await.expect_err("stopped");
    assert!(
        matches!(error, ReadBarrierError::Unavailable { shard: 1, .. }),
        "{error:?}"
    );
}
