//! Backpressure: a shard whose queue is full answers RESOURCE_EXHAUSTED with a retry
//! hint instead of growing; the SDK backs off and resends with the same event ids;
//! every event ends up recorded exactly once.
//!
//! Steps:
//! 1. start `traild` with a tiny ingest queue (1 MiB per shard) and one proposal in
//!    flight per shard, so a burst must overflow it;
//! 2. send a burst of large batches concurrently through the raw gRPC client and check
//!    some events are refused with RESOURCE_EXHAUSTED and `retry_after_ms > 0`;
//! 3. send another burst through the SDK, which retries refused events;
//! 4. check every event of the SDK burst is acknowledged, and the node holds exactly
//!    the acknowledged events (no duplicates from the retries).

use std::collections::BTreeSet;

use trail_proto::v1;
use trail_tests::{event, Traild};

const PRODUCERS: usize = 24;
const BATCH_EVENTS: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_refuses_with_a_hint_and_the_sdk_retries_to_completion() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let node = Traild::start(
        dir.path(),
        &[
            "--shards",
            "1",
            "--queue-mib-max",
            "1",
            "--proposals-in-flight-max",
            "1",
        ],
    )
    .await;

    // 1. Raw burst: some refusals expected.
    let mut raw = Vec::new();
    for producer in 0..PRODUCERS {
        let mut client = node.client().await.expect("connect");
        raw.push(tokio::spawn(async move {
            let events: Vec<v1::Event> = (0..BATCH_EVENTS)
                .map(|index| event("ten_whale", &format!("raw-{producer}-{index}")))
                .collect();
            client
                .record_batch(v1::RecordBatchRequest { events })
                .await
                .expect("a refused batch is still answered per event")
                .into_inner()
        }));
    }
    let mut refused = 0;
    let mut accepted_raw = 0;
    for handle in raw {
        let response = handle.await.unwrap();
        accepted_raw += response.accepted as usize;
        for outcome in &response.outcomes {
            if let Some(v1::record_outcome::Outcome::Error(error)) = &outcome.outcome {
                assert_eq!(error.code, "RESOURCE_EXHAUSTED", "{error:?}");
                refused += 1;
            }
        }
        if response.rejected > 0 {
            assert!(
                response.retry_after_ms > 0,
                "a refusal carries a retry hint"
            );
        }
    }
    assert!(refused > 0, "the burst never filled the 1 MiB queue");

    // 2. SDK burst: refused events are retried until recorded.
    let sdk = node.sdk().await.expect("connect");
    let mut bursts = Vec::new();
    for producer in 0..PRODUCERS {
        let sdk = sdk.clone();
        bursts.push(tokio::spawn(async move {
            let events: Vec<v1::Event> = (0..BATCH_EVENTS)
                .map(|index| event("ten_whale", &format!("sdk-{producer}-{index}")))
                .collect();
            sdk.record_batch(events)
                .await
                .expect("the SDK gets every event through")
        }));
    }
    let mut acknowledged = BTreeSet::new();
    for handle in bursts {
        let response = handle.await.unwrap();
        assert_eq!(
            response.rejected,
            0,
            "retries exhausted: {:?}",
            response
                .outcomes
                .iter()
                .find(|o| matches!(o.outcome, Some(v1::record_outcome::Outcome::Error(_))))
        );
        for outcome in response.outcomes {
            if let Some(v1::record_outcome::Outcome::Receipt(receipt)) = outcome.outcome {
                acknowledged.insert(receipt.event_id);
            }
        }
    }
    assert_eq!(acknowledged.len(), PRODUCERS * BATCH_EVENTS);
    let stats = sdk.retry_stats();
    eprintln!("raw burst: {refused} refused; sdk retries: {stats:?}");

    // 3. Exactly the acknowledged events are stored.
    let status = node.status().await;
    assert_eq!(
        trail_tests::tenant_events(&status) as usize,
        accepted_raw + acknowledged.len()
    );
}
