//! `RecordStream`: batches sent on one stream are answered one response per batch, in
//! order; a duplicate inside the stream is deduplicated; a bad batch ends the stream
//! with INVALID_ARGUMENT after the good ones were answered.
//!
//! Steps: start `traild`; open a stream; send three batches (the third repeats an id of
//! the first); read three responses and check counts and seqs; send an empty batch and
//! check the stream ends with an error naming `events`.

use trail_proto::v1;
use trail_tests::{event, Traild};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_on_a_stream_are_answered_in_order() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let node = Traild::start(dir.path(), &[]).await;
    let mut client = node.client().await.expect("connect");

    let batches = vec![
        v1::RecordBatchRequest {
            events: (0..10).map(|i| event("ten_s", &format!("a{i}"))).collect(),
        },
        v1::RecordBatchRequest {
            events: (0..5).map(|i| event("ten_s", &format!("b{i}"))).collect(),
        },
        v1::RecordBatchRequest {
            events: vec![event("ten_s", "a3"), event("ten_s", "c0")],
        },
        v1::RecordBatchRequest { events: vec![] },
    ];
    let mut responses = client
        .record_stream(tokio_stream::iter(batches))
        .await
        .expect("stream opens")
        .into_inner();

    let first = responses.message().await.unwrap().expect("first response");
    assert_eq!(first.accepted, 10);
    let second = responses.message().await.unwrap().expect("second response");
    assert_eq!(second.accepted, 5);
    let Some(v1::record_outcome::Outcome::Receipt(last_of_second)) = &second.outcomes[4].outcome
    else {
        panic!("second batch acknowledged");
    };
    assert_eq!(last_of_second.seq, 15, "stream order is request order");
    let third = responses.message().await.unwrap().expect("third response");
    assert_eq!((third.accepted, third.deduplicated), (1, 1));
    let Some(v1::record_outcome::Outcome::Receipt(repeat)) = &third.outcomes[0].outcome else {
        panic!("duplicate acknowledged");
    };
    assert_eq!(repeat.seq, 4, "a3 keeps its original seq");

    let error = responses
        .message()
        .await
        .expect_err("the empty batch ends the stream");
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert!(error.message().starts_with("events"), "{}", error.message());
}
