//! What a client can make a node hold or do is bounded (issue 26, item 3), measured on
//! the node's process (/proc/<pid>/status):
//!
//! 1. a 32 MiB `RecordBatch` of empty events is refused (INVALID_ARGUMENT naming
//!    `events`) before it is decoded: the node's peak RSS grows by less than 192 MiB
//!    (decoding it would take ~6 GB);
//! 2. request bytes in flight are bounded per node: with `--inflight-request-mib 32`,
//!    a stream holding a 24 MiB message leaves no room for a 16 MiB batch
//!    (RESOURCE_EXHAUSTED with `retry-after-ms`), which goes through once the stream
//!    ends;
//! 3. 600 `ListBlocks` streams whose client reads nothing, plus reads beside them, pin
//!    no threads: the node's thread count stays under 200 and an event is still
//!    acknowledged within 5 s;
//! 4. ids in reads are validated as ingest does (INVALID_ARGUMENT naming the field, not
//!    INTERNAL from the storage engine); a read of an unknown tenant does not create
//!    it; a reindex while one runs is refused, and the indexes are whole afterwards.

use std::time::{Duration, Instant};

use prost::bytes::BufMut;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::Status;
use trail_node::ledger::routing::is_reserved_tenant;
use trail_proto::v1;
use trail_proto::v1::trail_client::TrailClient;
use trail_tests::{events_of, Authorization, GrpcClient, Traild};

/// A field of /proc/<pid>/status, in its unit (kB for memory).
fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// Sends request bytes as they are, and decodes the answer as `R`.
#[derive(Default)]
struct RawCodec<R>(std::marker::PhantomData<R>);

struct RawEncoder;
struct AnswerDecoder<R>(std::marker::PhantomData<R>);

impl<R: Message + Default + Send + 'static> Codec for RawCodec<R> {
    type Encode = Vec<u8>;
    type Decode = R;
    type Encoder = RawEncoder;
    type Decoder = AnswerDecoder<R>;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> AnswerDecoder<R> {
        AnswerDecoder(std::marker::PhantomData)
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl<R: Message + Default> Decoder for AnswerDecoder<R> {
    type Item = R;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<R>, Status> {
        R::decode(buf)
            .map(Some)
            .map_err(|error| Status::internal(error.to_string()))
    }
}

/// `RecordBatch` with a body of raw bytes.
async fn raw_record_batch(
    channel: Channel,
    body: Vec<u8>,
) -> Result<v1::RecordBatchResponse, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("channel ready");
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/trail.v1.Trail/RecordBatch");
    let mut request = tonic::Request::new(body);
    request.metadata_mut().insert(
        trail_tests::AUTHORIZATION,
        trail_tests::bearer(trail_tests::TEST_ADMIN_TOKEN)
            .parse()
            .expect("an ASCII header"),
    );
    grpc.unary(
        request,
        path,
        RawCodec::<v1::RecordBatchResponse>::default(),
    )
    .await
    .map(tonic::Response::into_inner)
}

async fn channel(node: &Traild) -> Channel {
    tonic::transport::Endpoint::from_shared(node.endpoint())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_32_mib_batch_of_empty_events_is_refused_before_it_is_decoded() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let node = Traild::start(dir.path(), &[]).await;
    let pid = node.pid().expect("running");
    let peak_before_kib = proc_status(pid, "VmHWM:");

    // Field 1 (events), length 0: two bytes per event, just under the 32 MiB limit.
    let message_bytes_max: usize = 32 << 20;
    let events = (message_bytes_max - 64) / 2;
    let body = [0x0a_u8, 0x00].repeat(events);
    let refused = raw_record_batch(channel(&node).await, body)
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().starts_with("events: "),
        "names the field: {refused:?}"
    );

    let peak_after_kib = proc_status(pid, "VmHWM:");
    let grown_mib = (peak_after_kib.saturating_sub(peak_before_kib)) >> 10;
    println!(
        "peak RSS {} MiB -> {} MiB (+{grown_mib} MiB) for a {} MiB batch of {events} empty events",
        peak_before_kib >> 10,
        peak_after_kib >> 10,
        message_bytes_max >> 20
    );
    assert!(
        grown_mib < 192,
        "the node's peak RSS grew by {grown_mib} MiB: the batch was materialized"
    );
    // Still serving.
    let mut client = node.client().await.expect("connect");
    let response = client
        .record_batch(v1::RecordBatchRequest {
            events: events_of("ten_a", "after", 3),
        })
        .await
        .expect("a good batch")
        .into_inner();
    assert_eq!(response.accepted, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bytes_in_flight_are_bounded_per_node() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let node = Traild::start(dir.path(), &["--inflight-request-mib", "32"]).await;

    // A RecordStream whose one message (24 MiB; its event is refused, request_id too
    // long) keeps its bytes while the stream stays open.
    let mut big = trail_tests::event("ten_a", "big-1");
    big.request_id = "r".repeat(24 << 20);
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    sender
        .send(v1::RecordBatchRequest { events: vec![big] })
        .await
        .unwrap();
    let mut streaming = node.client().await.expect("connect");
    let mut answers = streaming
        .record_stream(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .expect("stream opened")
        .into_inner();
    let first = answers
        .message()
        .await
        .expect("an answer")
        .expect("one message");
    assert_eq!(first.rejected, 1);

    // 16 MiB more does not fit in 32.
    let mut medium = trail_tests::event("ten_a", "medium-1");
    medium.request_id = "r".repeat(16 << 20);
    let body = v1::RecordBatchRequest {
        events: vec![medium],
    }
    .encode_to_vec();
    let refused = raw_record_batch(channel(&node).await, body.clone())
        .await
        .expect_err("over the budget");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused.metadata().get("retry-after-ms").is_some(),
        "a retry hint: {refused:?}"
    );

    // The stream ends: its bytes are given back, and the batch is taken (and its one
    // event refused for its request id, not for the budget).
    drop(sender);
    while answers.message().await.ok().flatten().is_some() {}
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match raw_record_batch(channel(&node).await, body.clone()).await {
            Ok(answer) => {
                assert_eq!(answer.rejected, 1);
                break;
            }
            Err(status)
                if status.code() == tonic::Code::ResourceExhausted && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("after the stream ended: {status:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_block_streams_pin_no_threads_and_ingest_still_acks() {
    const CONNECTIONS: usize = 6;
    const STREAMS_PER_CONNECTION: usize = 100;
    let dir = tempfile::tempdir().expect("temporary directory");
    let node = Traild::start(dir.path(), &["--block-events", "8", "--shards", "1"]).await;
    let pid = node.pid().expect("running");
    let mut client = node.client().await.expect("connect");
    // ~500 blocks of 8 events: far more than HTTP/2 windows and channels hold.
    for part in 0..4 {
        let response = client
            .record_batch(v1::RecordBatchRequest {
                events: events_of("ten_blocks", &format!("b{part}"), 1_000),
            })
            .await
            .expect("batch")
            .into_inner();
        assert_eq!(response.accepted, 1_000);
    }
    let threads_before = proc_status(pid, "Threads:");

    let mut held = Vec::new();
    let mut refused = 0usize;
    for _ in 0..CONNECTIONS {
        let mut client =
            TrailClient::with_interceptor(channel(&node).await, Authorization::admin());
        for _ in 0..STREAMS_PER_CONNECTION {
            let request = v1::ListBlocksRequest {
                tenant_id: "ten_blocks".into(),
                with_events: true,
                ..Default::default()
            };
            match tokio::time::timeout(Duration::from_secs(10), client.list_blocks(request)).await {
                Ok(Ok(stream)) => held.push(stream.into_inner()),
                Ok(Err(status)) if status.code() == tonic::Code::ResourceExhausted => refused += 1,
                Ok(Err(status)) => panic!("ListBlocks: {status:?}"),
                Err(_) => panic!("ListBlocks did not answer within 10 s"),
            }
        }
    }
    // Reads beside them.
    for index in 0..50 {
        let got = tokio::time::timeout(
            Duration::from_secs(5),
            client.get_event(v1::GetEventRequest {
                tenant_id: "ten_blocks".into(),
                event_id: format!("b0-ten_blocks-{index}"),
                ..Default::default()
            }),
        )
        .await;
        assert!(
            matches!(got, Ok(Ok(_))),
            "GetEvent beside idle streams, within 5 s: {got:?}"
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let threads = proc_status(pid, "Threads:");

    let started = Instant::now();
    let acked = tokio::time::timeout(
        Duration::from_secs(5),
        client.record(v1::RecordRequest {
            event: Some(trail_tests::event("ten_blocks", "while-idle-1")),
        }),
    )
    .await;
    let ack_ms = started.elapsed().as_millis();
    println!(
        "{} streams open, {refused} refused; threads {threads_before} -> {threads}; ack in \
         {ack_ms} ms",
        held.len()
    );
    assert!(
        matches!(acked, Ok(Ok(_))),
        "an event beside idle streams was not acknowledged within 5 s: {acked:?}"
    );
    assert!(
        threads < 200,
        "{threads} threads with {} idle streams open",
        held.len()
    );
    drop(held);
}

/// A node with 20,000 events of `ten_known`.
async fn node_with_events(dir: &std::path::Path) -> (Traild, GrpcClient) {
    let node = Traild::start(dir, &[]).await;
    let mut client = node.client().await.expect("connect");
    for part in 0..4 {
        let response = client
            .record_batch(v1::RecordBatchRequest {
                events: events_of("ten_known", &format!("k{part}"), 5_000),
            })
            .await
            .expect("batch")
            .into_inner();
        assert_eq!(response.accepted, 5_000);
    }
    (node, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_in_reads_are_validated_as_ingest_does() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let node = Traild::start(dir.path(), &[]).await;
    let mut client = node.client().await.expect("connect");
    client
        .record_batch(v1::RecordBatchRequest {
            events: events_of("ten_known", "k", 3),
        })
        .await
        .expect("batch");

    // Ids longer than a storage key may be: named, INVALID_ARGUMENT.
    let long = "x".repeat(70_000);
    let status = client
        .get_event(v1::GetEventRequest {
            tenant_id: "ten_known".into(),
            event_id: long.clone(),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("event_id: "), "{status:?}");
    let status = client
        .get_proof(v1::GetProofRequest {
            tenant_id: "ten_known".into(),
            event_id: long.clone(),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("event_id: "), "{status:?}");
    let status = client
        .list_streams(v1::ListStreamsRequest {
            after_tenant_id: long.clone(),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with("after_tenant_id: "),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_of_an_unknown_tenant_does_not_create_it() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (node, mut client) = node_with_events(dir.path()).await;

    // Reads of a tenant with no events: empty answers, and the tenant stays unknown.
    let page = client
        .query(v1::QueryRequest {
            tenant_id: "ten_ghost".into(),
            ..Default::default()
        })
        .await
        .expect("query")
        .into_inner();
    assert!(page.events.is_empty());
    let counted = client
        .count(v1::CountRequest {
            tenant_id: "ten_ghost".into(),
            ..Default::default()
        })
        .await
        .expect("count")
        .into_inner();
    assert_eq!(counted.count, 0);
    let exported = client
        .record_export(v1::RecordExportRequest {
            tenant_id: "ten_ghost".into(),
            format: "jsonl".into(),
            ..Default::default()
        })
        .await
        .expect("export record")
        .into_inner();
    assert!(exported.receipt.is_none(), "{exported:?}");
    let streams = client
        .list_streams(v1::ListStreamsRequest::default())
        .await
        .expect("list streams")
        .into_inner()
        .streams;
    // The node's own streams (`_access`: the API keys) are listed beside the tenants'.
    let tenants: Vec<&str> = streams
        .iter()
        .map(|s| s.tenant_id.as_str())
        .filter(|tenant| !is_reserved_tenant(tenant))
        .collect();
    assert_eq!(tenants, ["ten_known"], "a read created a tenant");
    // A known tenant's read is still recorded in its log.
    client
        .query(v1::QueryRequest {
            tenant_id: "ten_known".into(),
            ..Default::default()
        })
        .await
        .expect("query");
    let status = node.status().await;
    assert_eq!(
        trail_tests::tenant_events(&status),
        20_001,
        "the known tenant's read is recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reindex_while_one_runs_is_refused_and_the_indexes_come_back() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (node, mut client) = node_with_events(dir.path()).await;

    // A reindex while one runs is refused, naming the reason.
    client
        .reindex(v1::ReindexRequest {})
        .await
        .expect("first reindex");
    let second = client
        .reindex(v1::ReindexRequest {})
        .await
        .expect_err("second refused");
    assert_eq!(second.code(), tonic::Code::FailedPrecondition, "{second:?}");
    assert!(
        second.message().contains("reindex is running"),
        "{second:?}"
    );
    // Then it finishes, and the indexes answer without reading the store.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = node.status().await;
        let rebuilding: u64 = status
            .shards
            .iter()
            .map(|shard| shard.index_rebuild_remaining)
            .sum();
        let lagging = status.shards.iter().any(|shard| shard.index_lag_ms > 0);
        if rebuilding == 0 && !lagging {
            let page = client
                .query(v1::QueryRequest {
                    tenant_id: "ten_known".into(),
                    filter: Some(v1::QueryFilter {
                        // Ids of 16 bytes, "k0-ten_known-100" to 999: usr_2.
                        actor_id: "usr_2".into(),
                        ..Default::default()
                    }),
                    limit: 1_000,
                    ..Default::default()
                })
                .await
                .expect("query")
                .into_inner();
            if !page.events.is_empty() && page.tail_events == 0 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the indexes did not come back within 60 s: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And a new reindex is accepted once it is done.
    client
        .reindex(v1::ReindexRequest {})
        .await
        .expect("a reindex after the last one finished");
}
