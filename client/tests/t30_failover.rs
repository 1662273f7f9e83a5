//! The SDK against several nodes: failover along the endpoint list, and leader hints.
//!
//! Steps, each against fake nodes served in-process on loopback ports: kill the
//! current node between calls and check the calls go on through the next one, with
//! the retry counted; connect with the first endpoint unreachable; connect with none
//! reachable and check the error names each; let a node name another as a tenant's
//! leader (in a response, then in an error) and count where the tenant's next calls
//! land, and that a failed leader is forgotten; answer a batch with UNAVAILABLE and
//! check its resend on the other node carries the same event ids; break a block
//! stream and check it reopens on the other node where it stopped; run `trailctl`
//! with an endpoint list. Every test is bounded to 10 s.
//!
//! The fake nodes are not the real server (`tests/` runs a real cluster); they pin
//! the client's side of the protocol.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status};
use trail_client::{Client, ClientOptions, EncodedBatch, Error, Event, RetryPolicy};
use trail_proto::v1::record_outcome::Outcome;
use trail_proto::v1::trail_server::{Trail, TrailServer};
use trail_proto::v1::{
    Block, ClusterInitRequest, ClusterInitResponse, CreateApiKeyRequest, CreateApiKeyResponse,
    GetBlockRequest, GetBlockResponse, GetCheckpointRequest, GetCheckpointResponse,
    GetConsistencyProofRequest, GetConsistencyProofResponse, GetEventRequest, GetEventResponse,
    GetProofRequest, GetProofResponse, ListApiKeysRequest, ListApiKeysResponse, ListBlocksRequest,
    ListStreamsRequest, ListStreamsResponse, Receipt, RecordBatchRequest, RecordBatchResponse,
    RecordOutcome, RecordRequest, RecordResponse, RevokeApiKeyRequest, RevokeApiKeyResponse,
    StatusRequest, StatusResponse, TailRequest, TailResponse,
};

const TEST_TIME_MAX: Duration = Duration::from_secs(10);
/// Blocks a fake node's stream has.
const BLOCKS: u64 = 5;
const LEADER_HEADER: &str = "trail-leader";

/// What a fake node saw and how it misbehaves.
#[derive(Clone, Default)]
struct FakeNode {
    /// Every RPC received.
    calls: Arc<AtomicUsize>,
    /// Named as the tenant's leader in `trail-leader` on Tail and RecordBatch answers.
    leader_hint: Arc<Mutex<Option<String>>>,
    /// Tail answers this error (with the hint, if any) instead.
    refuse_tail: Arc<Mutex<Option<Code>>>,
    /// RecordBatch answers UNAVAILABLE this many more times.
    batches_unavailable: Arc<AtomicUsize>,
    /// The event ids of each RecordBatch received, refused ones included.
    batches: Arc<Mutex<Vec<Vec<String>>>>,
    /// The next ListBlocks stream breaks with UNAVAILABLE after this many blocks.
    break_list_after: Arc<Mutex<Option<usize>>>,
    /// `from_block` of each ListBlocks received.
    list_from: Arc<Mutex<Vec<u64>>>,
}

impl FakeNode {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn count(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }

    fn set_hint(&self, leader: Option<&str>) {
        *self.leader_hint.lock().unwrap() = leader.map(str::to_string);
    }

    fn hinted<T>(&self, mut response: Response<T>) -> Response<T> {
        if let Some(leader) = self.leader_hint.lock().unwrap().as_deref() {
            response
                .metadata_mut()
                .insert(LEADER_HEADER, MetadataValue::try_from(leader).unwrap());
        }
        response
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("fake node"))
}

#[tonic::async_trait]
impl Trail for FakeNode {
    async fn record(&self, _: Request<RecordRequest>) -> Result<Response<RecordResponse>, Status> {
        unimplemented()
    }

    async fn record_batch(
        &self,
        request: Request<RecordBatchRequest>,
    ) -> Result<Response<RecordBatchResponse>, Status> {
        self.count();
        let events = request.into_inner().events;
        let ids: Vec<String> = events.iter().map(|event| event.event_id.clone()).collect();
        self.batches.lock().unwrap().push(ids);
        let refuse = self
            .batches_unavailable
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok();
        if refuse {
            return Err(Status::unavailable("fake node: leader lost"));
        }
        let outcomes = events
            .iter()
            .map(|event| RecordOutcome {
                outcome: Some(Outcome::Receipt(Receipt {
                    event_id: event.event_id.clone(),
                    tenant_id: event.tenant_id.clone(),
                    ..Receipt::default()
                })),
            })
            .collect();
        Ok(self.hinted(Response::new(RecordBatchResponse {
            outcomes,
            accepted: events.len() as u32,
            ..RecordBatchResponse::default()
        })))
    }

    type RecordStreamStream = BoxStream<RecordBatchResponse>;

    async fn record_stream(
        &self,
        _: Request<tonic::Streaming<RecordBatchRequest>>,
    ) -> Result<Response<Self::RecordStreamStream>, Status> {
        unimplemented()
    }

    async fn get_event(
        &self,
        _: Request<GetEventRequest>,
    ) -> Result<Response<GetEventResponse>, Status> {
        unimplemented()
    }

    async fn tail(&self, _: Request<TailRequest>) -> Result<Response<TailResponse>, Status> {
        self.count();
        let refusal = *self.refuse_tail.lock().unwrap();
        if let Some(code) = refusal {
            let mut status = Status::new(code, "fake node: not the leader");
            if let Some(leader) = self.leader_hint.lock().unwrap().as_deref() {
                status
                    .metadata_mut()
                    .insert(LEADER_HEADER, MetadataValue::try_from(leader).unwrap());
            }
            return Err(status);
        }
        Ok(self.hinted(Response::new(TailResponse::default())))
    }

    async fn query(
        &self,
        _: Request<trail_proto::v1::QueryRequest>,
    ) -> Result<Response<trail_proto::v1::QueryResponse>, Status> {
        unimplemented()
    }

    async fn count(
        &self,
        _: Request<trail_proto::v1::CountRequest>,
    ) -> Result<Response<trail_proto::v1::CountResponse>, Status> {
        unimplemented()
    }

    async fn record_export(
        &self,
        _: Request<trail_proto::v1::RecordExportRequest>,
    ) -> Result<Response<trail_proto::v1::RecordExportResponse>, Status> {
        unimplemented()
    }

    async fn reindex(
        &self,
        _: Request<trail_proto::v1::ReindexRequest>,
    ) -> Result<Response<trail_proto::v1::ReindexResponse>, Status> {
        unimplemented()
    }

    async fn list_streams(
        &self,
        _: Request<ListStreamsRequest>,
    ) -> Result<Response<ListStreamsResponse>, Status> {
        unimplemented()
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        self.count();
        Ok(Response::new(StatusResponse {
            node_id: 1,
            ..StatusResponse::default()
        }))
    }

    async fn get_checkpoint(
        &self,
        _: Request<GetCheckpointRequest>,
    ) -> Result<Response<GetCheckpointResponse>, Status> {
        unimplemented()
    }

    async fn get_block(
        &self,
        _: Request<GetBlockRequest>,
    ) -> Result<Response<GetBlockResponse>, Status> {
        unimplemented()
    }

    type ListBlocksStream = BoxStream<Block>;

    async fn list_blocks(
        &self,
        request: Request<ListBlocksRequest>,
    ) -> Result<Response<Self::ListBlocksStream>, Status> {
        self.count();
        let request = request.into_inner();
        self.list_from.lock().unwrap().push(request.from_block);
        let end = if request.to_block == 0 {
            BLOCKS
        } else {
            request.to_block.min(BLOCKS)
        };
        let mut blocks: Vec<Result<Block, Status>> = (request.from_block..end)
            .map(|block_index| {
                Ok(Block {
                    block_index,
                    ..Block::default()
                })
            })
            .collect();
        if let Some(after) = self.break_list_after.lock().unwrap().take() {
            blocks.truncate(after);
            blocks.push(Err(Status::unavailable("fake node: stopping")));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(blocks))))
    }

    async fn get_proof(
        &self,
        _: Request<GetProofRequest>,
    ) -> Result<Response<GetProofResponse>, Status> {
        unimplemented()
    }

    async fn get_consistency_proof(
        &self,
        _: Request<GetConsistencyProofRequest>,
    ) -> Result<Response<GetConsistencyProofResponse>, Status> {
        unimplemented()
    }

    async fn cluster_init(
        &self,
        _: Request<ClusterInitRequest>,
    ) -> Result<Response<ClusterInitResponse>, Status> {
        unimplemented()
    }

    async fn create_api_key(
        &self,
        _: Request<CreateApiKeyRequest>,
    ) -> Result<Response<CreateApiKeyResponse>, Status> {
        unimplemented()
    }

    async fn list_api_keys(
        &self,
        _: Request<ListApiKeysRequest>,
    ) -> Result<Response<ListApiKeysResponse>, Status> {
        unimplemented()
    }

    async fn revoke_api_key(
        &self,
        _: Request<RevokeApiKeyRequest>,
    ) -> Result<Response<RevokeApiKeyResponse>, Status> {
        unimplemented()
    }
}

/// A fake node serving on a loopback port until killed.
struct Served {
    address: SocketAddr,
    node: FakeNode,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Served {
    fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Stops the node: the port is closed and every connection to it goes away.
    async fn kill(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.expect("fake node stopped");
    }
}

async fn serve(node: FakeNode) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let served = node.clone();
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TrailServer::new(served))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    Served {
        address,
        node,
        stop: Some(stop),
        task,
    }
}

/// An endpoint nobody listens on: connecting is refused at once.
async fn dead_endpoint() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{address}")
}

/// Short timeouts and backoff, so a failing test fails fast.
fn options() -> ClientOptions {
    ClientOptions {
        rpc_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        retry: RetryPolicy {
            attempts_max: 4,
            backoff_base_ms: 5,
            backoff_cap_ms: 20,
        },
        ..ClientOptions::default()
    }
}

async fn bounded<F>(test: F)
where
    F: Future<Output = ()>,
{
    tokio::time::timeout(TEST_TIME_MAX, test)
        .await
        .expect("test took longer than 10 s");
}

fn events(tenant_id: &str, count: usize) -> Vec<Event> {
    (0..count)
        .map(|_| Event {
            tenant_id: tenant_id.to_string(),
            action: "auth.login".to_string(),
            ..Event::default()
        })
        .collect()
}

#[tokio::test]
async fn a_killed_node_fails_over_to_the_next() {
    bounded(async {
        let mut first = serve(FakeNode::default()).await;
        let second = serve(FakeNode::default()).await;
        let list = format!("{},{}", first.endpoint(), second.endpoint());
        let client = Client::connect_with(&list, options()).await.unwrap();
        for _ in 0..5 {
            client.status().await.unwrap();
        }
        assert_eq!((first.node.calls(), second.node.calls()), (5, 0));
        assert_eq!(client.retry_stats().request_retries, 0);

        first.kill().await;
        for _ in 0..5 {
            client.status().await.expect("served by the second node");
        }
        assert_eq!((first.node.calls(), second.node.calls()), (5, 5));
        // One failed attempt on the dead node; the next calls go to the second first.
        assert_eq!(client.retry_stats().request_retries, 1);
        // Clones share the current endpoint.
        client.clone().status().await.unwrap();
        assert_eq!(second.node.calls(), 6);
        assert_eq!(client.retry_stats().request_retries, 1);
    })
    .await;
}

#[tokio::test]
async fn connect_skips_an_unreachable_endpoint() {
    bounded(async {
        let live = serve(FakeNode::default()).await;
        // A bare host:port is taken as http://.
        let list = format!("{}, {}", dead_endpoint().await, live.address);
        let client = Client::connect_with(&list, options()).await.unwrap();
        client.status().await.unwrap();
        client.tail("ten_a", 0, 10).await.unwrap();
        assert_eq!(live.node.calls(), 2);
        assert_eq!(client.retry_stats().request_retries, 0);
    })
    .await;
}

#[tokio::test]
async fn no_reachable_endpoint_names_every_one() {
    bounded(async {
        let dead = [dead_endpoint().await, dead_endpoint().await];
        let list = dead.join(",");
        let error = Client::connect_with(&list, options()).await.unwrap_err();
        let message = error.to_string();
        match &error {
            Error::ConnectAll { failures } => {
                let named: Vec<&str> = failures.iter().map(|f| f.endpoint.as_str()).collect();
                assert_eq!(named, vec![dead[0].as_str(), dead[1].as_str()]);
                for failure in failures {
                    assert!(!failure.reason.is_empty());
                }
            }
            other => panic!("expected ConnectAll, got {other:?}"),
        }
        for endpoint in &dead {
            assert!(message.contains(endpoint.as_str()), "{message}");
        }
        assert!(message.contains("refused"), "{message}");
        assert!(error.is_connection_failure());

        // One endpoint fails as it always did.
        let single = Client::connect_with(&dead[0], options()).await.unwrap_err();
        assert!(matches!(single, Error::Connect { .. }), "{single:?}");

        // A malformed entry is named, before anything is dialled.
        let bad = format!("{},http://bad host:1", dead[0]);
        match Client::connect_with(&bad, options()).await {
            Err(Error::InvalidEndpoint { endpoint, .. }) => {
                assert_eq!(endpoint, "http://bad host:1")
            }
            other => panic!("expected InvalidEndpoint, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn a_named_leader_gets_the_tenants_requests() {
    bounded(async {
        let listed = serve(FakeNode::default()).await;
        let mut leader = serve(FakeNode::default()).await;
        listed.node.set_hint(Some(&leader.endpoint()));
        // The leader is not in the list: the client connects to it when named.
        let client = Client::connect_with(&listed.endpoint(), options())
            .await
            .unwrap();

        client.tail("ten_a", 0, 10).await.unwrap();
        assert_eq!((listed.node.calls(), leader.node.calls()), (1, 0));
        client.tail("ten_a", 0, 10).await.unwrap();
        client.tail("ten_a", 0, 10).await.unwrap();
        assert_eq!((listed.node.calls(), leader.node.calls()), (1, 2));
        // Calls about no tenant, and other tenants' first calls, go to the list.
        client.status().await.unwrap();
        client.tail("ten_b", 0, 10).await.unwrap();
        assert_eq!((listed.node.calls(), leader.node.calls()), (3, 2));

        // A batch of one tenant follows the hint too; a mixed batch does not (the
        // fake node's Status has no cluster map, so the client asks for it once and
        // does not split).
        client.record_batch(events("ten_d", 2)).await.unwrap();
        client.record_batch(events("ten_d", 2)).await.unwrap();
        assert_eq!((listed.node.calls(), leader.node.calls()), (4, 3));
        let mut mixed = events("ten_d", 1);
        mixed.extend(events("ten_e", 1));
        client.record_batch(mixed).await.unwrap();
        assert_eq!((listed.node.calls(), leader.node.calls()), (6, 3));

        // The leader dies: its tenants go back to the list, and the listed node
        // naming the dead leader again during that call is not followed.
        leader.kill().await;
        client.tail("ten_a", 0, 10).await.unwrap();
        assert_eq!((listed.node.calls(), leader.node.calls()), (7, 3));
        assert_eq!(client.retry_stats().request_retries, 1);
        listed.node.set_hint(None);
        client.tail("ten_a", 0, 10).await.unwrap();
        assert_eq!((listed.node.calls(), leader.node.calls()), (8, 3));
        assert_eq!(client.retry_stats().request_retries, 1);
    })
    .await;
}

#[tokio::test]
async fn an_error_naming_the_leader_is_retried_there() {
    bounded(async {
        let listed = serve(FakeNode::default()).await;
        let leader = serve(FakeNode::default()).await;
        listed.node.set_hint(Some(&leader.endpoint()));
        *listed.node.refuse_tail.lock().unwrap() = Some(Code::FailedPrecondition);
        let client = Client::connect_with(&listed.endpoint(), options())
            .await
            .unwrap();

        client.tail("ten_c", 0, 10).await.expect("redirected");
        assert_eq!((listed.node.calls(), leader.node.calls()), (1, 1));
        assert_eq!(client.retry_stats().request_retries, 1);
        client.tail("ten_c", 0, 10).await.unwrap();
        assert_eq!((listed.node.calls(), leader.node.calls()), (1, 2));

        // Without a hint the same refusal is final.
        listed.node.set_hint(None);
        let refused = client.tail("ten_other", 0, 10).await.unwrap_err();
        assert!(
            matches!(&refused, Error::Rpc(status) if status.code() == Code::FailedPrecondition),
            "{refused:?}"
        );
        assert_eq!(listed.node.calls(), 2);
    })
    .await;
}

#[tokio::test]
async fn a_batch_retried_on_another_node_keeps_its_event_ids() {
    bounded(async {
        let first = serve(FakeNode::default()).await;
        let second = serve(FakeNode::default()).await;
        first.node.batches_unavailable.store(1, Ordering::SeqCst);
        let list = format!("{},{}", first.endpoint(), second.endpoint());
        let client = Client::connect_with(&list, options()).await.unwrap();

        let response = client.record_batch(events("ten_a", 3)).await.unwrap();
        assert_eq!((response.accepted, response.rejected), (3, 0));
        let sent_first = first.node.batches.lock().unwrap().clone();
        let sent_second = second.node.batches.lock().unwrap().clone();
        assert_eq!((sent_first.len(), sent_second.len()), (1, 1));
        assert_eq!(sent_first[0].len(), 3);
        assert!(sent_first[0].iter().all(|id| !id.is_empty()));
        assert_eq!(sent_first[0], sent_second[0]);
        assert_eq!(client.retry_stats().request_retries, 1);

        // The pre-encoded path, now failing over from the second node to the first.
        second.node.batches_unavailable.store(1, Ordering::SeqCst);
        let batch = EncodedBatch::new(events("ten_b", 2));
        let response = client.record_batch_encoded(&batch).await.unwrap();
        assert_eq!(response.accepted, 2);
        let refused = second.node.batches.lock().unwrap()[1].clone();
        let accepted = first.node.batches.lock().unwrap()[1].clone();
        assert_eq!(refused, accepted);
        let expected: Vec<String> = batch
            .decode()
            .unwrap()
            .into_iter()
            .map(|event| event.event_id)
            .collect();
        assert_eq!(accepted, expected);
        assert_eq!(client.retry_stats().request_retries, 2);
    })
    .await;
}

#[tokio::test]
async fn a_broken_block_stream_reopens_on_the_next_node() {
    bounded(async {
        let first = serve(FakeNode::default()).await;
        let second = serve(FakeNode::default()).await;
        *first.node.break_list_after.lock().unwrap() = Some(2);
        let list = format!("{},{}", first.endpoint(), second.endpoint());
        let client = Client::connect_with(&list, options()).await.unwrap();

        let blocks: Vec<u64> = client
            .list_blocks("ten_a", 0, 0, 0, false)
            .await
            .unwrap()
            .map(|block| block.expect("every block").block_index)
            .collect()
            .await;
        assert_eq!(blocks, (0..BLOCKS).collect::<Vec<u64>>());
        assert_eq!(*first.node.list_from.lock().unwrap(), vec![0]);
        assert_eq!(*second.node.list_from.lock().unwrap(), vec![2]);
        assert_eq!(client.retry_stats().request_retries, 1);
    })
    .await;
}

#[tokio::test]
async fn trailctl_takes_an_endpoint_list() {
    bounded(async {
        let live = serve(FakeNode::default()).await;
        let list = format!("{},{}", dead_endpoint().await, live.endpoint());
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_trailctl"))
                .args([
                    "--endpoint",
                    &list,
                    "--rpc-timeout-s",
                    "2",
                    "status",
                    "--json",
                ])
                .output()
                .expect("run trailctl")
        })
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{stderr}");
        assert_eq!(live.node.calls(), 1);

        let dead = format!("{},{}", dead_endpoint().await, dead_endpoint().await);
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_trailctl"))
                .args(["--endpoint", &dead, "status"])
                .output()
                .expect("run trailctl")
        })
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("cannot connect to any endpoint"),
            "{stderr}"
        );
    })
    .await;
}
