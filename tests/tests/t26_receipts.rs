//! Receipts through the SDK: a retry is deduplicated, a reused id is refused.
//!
//! Steps:
//! 1. start `traild`; record a batch through the SDK (`trail_client::Client`) of events
//!    of several shapes (no resource, no subject, an explicit subject, nanoseconds,
//!    metadata, no event id: the node picks one);
//! 2. record the same events again: every one comes back `deduplicated` with its first
//!    seq and leaf hash, none refused: the SDK recomputed each receipt's leaf hash from
//!    the event it sent (`expected_leaf_hash`) and found it equal;
//! 3. record events under the same ids with one field changed each: every one is
//!    refused `ALREADY_EXISTS` on `event_id`, naming the first seq and leaf hash, and
//!    the stream holds each event once.

use trail_proto::v1;
use trail_proto::v1::record_outcome::Outcome;
use trail_tests::{event, Traild};

const TENANT: &str = "ten_receipts";

fn shapes() -> Vec<v1::Event> {
    let mut events = Vec::new();
    events.push(event(TENANT, "plain"));
    let mut no_resource = event(TENANT, "no-resource");
    no_resource.resource = None;
    events.push(no_resource);
    let mut subject = event(TENANT, "subject");
    subject.subject_id = "usr_subject".into();
    events.push(subject);
    let mut nanos = event(TENANT, "nanos");
    nanos.occurred_at.as_mut().unwrap().nanos = 123_456_789;
    events.push(nanos);
    let mut sparse = event(TENANT, "sparse");
    sparse.ip_address.clear();
    sparse.user_agent.clear();
    sparse.metadata_json.clear();
    sparse.actor.as_mut().unwrap().email.clear();
    sparse.actor.as_mut().unwrap().r#type = v1::ActorType::Service as i32;
    sparse.result = v1::Result::Denied as i32;
    events.push(sparse);
    events
}

fn receipts(response: &v1::RecordBatchResponse) -> Vec<v1::Receipt> {
    response
        .outcomes
        .iter()
        .map(|outcome| match &outcome.outcome {
            Some(Outcome::Receipt(receipt)) => receipt.clone(),
            other => panic!("expected a receipt, got {other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_deduplicated_and_reused_ids_refused() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let node = Traild::start(dir.path(), &[]).await;
    let sdk = node.sdk().await.expect("connect");

    let events = shapes();
    let first = sdk.record_batch(events.clone()).await.expect("record");
    assert_eq!(first.accepted as usize, events.len(), "{first:?}");
    let first = receipts(&first);
    assert!(first.iter().all(|receipt| receipt.ingested_at_ns > 0));

    // The SDK gave each event an id; send them again exactly as recorded.
    let mut again: Vec<v1::Event> = events.clone();
    for (event, receipt) in again.iter_mut().zip(&first) {
        event.event_id = receipt.event_id.clone();
    }
    let retried = sdk.record_batch(again.clone()).await.expect("retry");
    assert_eq!(
        (retried.deduplicated as usize, retried.rejected),
        (events.len(), 0),
        "{retried:?}"
    );
    for (receipt, original) in receipts(&retried).iter().zip(&first) {
        assert!(receipt.deduplicated);
        assert_eq!(
            (receipt.seq, &receipt.leaf_hash),
            (original.seq, &original.leaf_hash)
        );
    }

    // The same ids for other events: one field changed in each.
    let mut reused = again.clone();
    reused[0].action = "auth.logout".into();
    reused[1].metadata_json = r#"{"test":false}"#.into();
    reused[2].subject_id = "usr_other".into();
    reused[3].occurred_at.as_mut().unwrap().nanos += 1;
    reused[4].result = v1::Result::Failure as i32;
    let refused = sdk.record_batch(reused).await.expect("record");
    assert_eq!(refused.rejected as usize, events.len(), "{refused:?}");
    for (outcome, original) in refused.outcomes.iter().zip(&first) {
        let Some(Outcome::Error(error)) = &outcome.outcome else {
            panic!("expected a refusal, got {outcome:?}");
        };
        assert_eq!(
            (error.code.as_str(), error.field.as_str()),
            ("ALREADY_EXISTS", "event_id")
        );
        assert!(
            error.message.contains(&format!("seq {}", original.seq))
                && error.message.contains(&hex::encode(&original.leaf_hash)),
            "the refusal names the first event: {}",
            error.message
        );
    }

    // Through the plain `Record` call too, as a status.
    let mut client = node.client().await.expect("connect");
    let mut one = again[0].clone();
    one.action = "auth.logout".into();
    let status = client
        .record(v1::RecordRequest { event: Some(one) })
        .await
        .expect_err("a reused id is refused");
    assert_eq!(status.code(), tonic::Code::AlreadyExists, "{status:?}");

    let status = node.status().await;
    assert_eq!(
        trail_tests::tenant_events(&status) as usize,
        events.len(),
        "each event recorded once"
    );
}
