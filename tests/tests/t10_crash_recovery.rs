//! An acknowledged event survives `kill -9`: it is present exactly once after restart,
//! and every stream's seqs stay gap-free.
//!
//! Steps, repeated for several kill points on the same data directory:
//! 1. start `traild` (or restart it on the data left by the previous round);
//! 2. run concurrent producers sending batches to many tenants, remembering every
//!    receipt they got back;
//! 3. `kill -9` the node after a round-specific delay, mid-stream;
//! 4. restart it and check: every acknowledged event reads back with its receipt's seq
//!    and leaf hash; each tenant's stream is seqs 1..=n with no gap and no event id
//!    twice; resending acknowledged events returns the original receipts as duplicates.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use trail_proto::v1;
use trail_tests::{event, Traild};

const PRODUCERS: usize = 8;
const TENANTS: usize = 12;
const BATCH_EVENTS: usize = 50;
/// Delays after which the node is killed, one per round.
const KILL_POINTS_MS: [u64; 4] = [150, 400, 900, 1_600];

#[derive(Debug, Clone, PartialEq)]
struct Acked {
    tenant: String,
    seq: u64,
    leaf_hash: Vec<u8>,
    /// As sent: a retry sends it again as it was.
    event: v1::Event,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_events_survive_kill_9() {
    let dir = tempfile::tempdir().expect("temporary directory");
    // A short snapshot interval, so that snapshots are built and the log purged while
    // the node is being killed.
    let mut node = Traild::start(
        dir.path(),
        &["--shards", "3", "--snapshot-logs-since-last", "40"],
    )
    .await;
    let acked: Arc<Mutex<BTreeMap<String, Acked>>> = Arc::default();

    for (round, kill_after_ms) in KILL_POINTS_MS.iter().enumerate() {
        let mut producers = Vec::new();
        for producer in 0..PRODUCERS {
            let client = node.client().await.expect("connect");
            let acked = acked.clone();
            producers.push(tokio::spawn(async move {
                let mut client = client;
                for batch_no in 0.. {
                    let events: Vec<v1::Event> = (0..BATCH_EVENTS)
                        .map(|index| {
                            let tenant = format!("ten_{:02}", (producer + index) % TENANTS);
                            event(
                                &tenant,
                                &format!("r{round}-p{producer}-b{batch_no}-e{index}"),
                            )
                        })
                        .collect();
                    let request = v1::RecordBatchRequest {
                        events: events.clone(),
                    };
                    let Ok(response) = client.record_batch(request).await else {
                        return;
                    };
                    let mut acked = acked.lock().unwrap();
                    for (outcome, event) in response.into_inner().outcomes.into_iter().zip(events) {
                        if let Some(v1::record_outcome::Outcome::Receipt(receipt)) = outcome.outcome
                        {
                            acked.insert(
                                receipt.event_id.clone(),
                                Acked {
                                    tenant: receipt.tenant_id,
                                    seq: receipt.seq,
                                    leaf_hash: receipt.leaf_hash,
                                    event,
                                },
                            );
                        }
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(*kill_after_ms)).await;
        node.kill9();
        for producer in producers {
            let _ = producer.await;
        }
        node.restart().await;
        let acked_now = acked.lock().unwrap().clone();
        assert!(
            !acked_now.is_empty(),
            "round {round}: nothing was acknowledged before the kill"
        );
        check(&node, &acked_now).await;
        eprintln!("round {round}: killed after {kill_after_ms} ms, {} events acknowledged so far, all present", acked_now.len());
    }
}

async fn check(node: &Traild, acked: &BTreeMap<String, Acked>) {
    let mut client = node.client().await.expect("connect");

    // Every tenant's stream: seqs 1..=n, gap-free, each event id once.
    let mut stored: BTreeMap<String, (String, u64, Vec<u8>)> = BTreeMap::new();
    for tenant_index in 0..TENANTS {
        let tenant = format!("ten_{tenant_index:02}");
        let mut after_seq = 0;
        let mut seen = BTreeSet::new();
        loop {
            let page = client
                .tail(v1::TailRequest {
                    tenant_id: tenant.clone(),
                    after_seq,
                    limit: 1_000,
                    stream: String::new(),
                    ..v1::TailRequest::default()
                })
                .await
                .expect("tail")
                .into_inner();
            if page.events.is_empty() {
                assert_eq!(
                    after_seq, page.last_seq,
                    "{tenant}: tail ended before last_seq"
                );
                break;
            }
            for stored_event in page.events {
                after_seq += 1;
                assert_eq!(stored_event.seq, after_seq, "{tenant}: seq gap");
                let event_id = stored_event.event.as_ref().unwrap().event_id.clone();
                assert!(
                    seen.insert(event_id.clone()),
                    "{tenant}: {event_id} stored twice"
                );
                stored.insert(
                    event_id,
                    (tenant.clone(), stored_event.seq, stored_event.leaf_hash),
                );
            }
        }
    }

    // Every acknowledged event is there, where its receipt said.
    for (event_id, expected) in acked {
        let (tenant, seq, leaf_hash) = stored
            .get(event_id)
            .unwrap_or_else(|| panic!("acknowledged event {event_id} is missing after restart"));
        assert_eq!(tenant, &expected.tenant);
        assert_eq!(*seq, expected.seq, "{event_id}: seq changed");
        assert_eq!(
            leaf_hash, &expected.leaf_hash,
            "{event_id}: leaf hash changed"
        );
    }

    // Retrying acknowledged events deduplicates to the original receipts.
    let sample: Vec<(&String, &Acked)> = acked.iter().take(200).collect();
    let events: Vec<v1::Event> = sample
        .iter()
        .map(|(_, acked)| acked.event.clone())
        .collect();
    let response = client
        .record_batch(v1::RecordBatchRequest { events })
        .await
        .expect("retry batch")
        .into_inner();
    assert_eq!(response.deduplicated as usize, sample.len());
    for (outcome, (event_id, expected)) in response.outcomes.into_iter().zip(sample) {
        let Some(v1::record_outcome::Outcome::Receipt(receipt)) = outcome.outcome else {
            panic!("retry of {event_id} was not acknowledged");
        };
        assert!(receipt.deduplicated);
        assert_eq!(receipt.seq, expected.seq);
        assert_eq!(receipt.leaf_hash, expected.leaf_hash);
    }
}
