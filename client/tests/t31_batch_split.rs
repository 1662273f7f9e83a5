//! The SDK splits a batch of several tenants by shard leader.
//!
//! Steps, each against fake nodes served in-process on loopback ports whose `Status`
//! reports a cluster map of 4 shards and the leader of each (shared, so a test can
//! move a leadership): send a mixed batch, plain and pre-encoded, through a client
//! given node 1 only, and check each node received exactly the events of the shards it
//! leads, in one request, and the receipts come back in the order sent; let a leader
//! answer its part UNAVAILABLE and check the part is resent through the list with the
//! same event ids and every event is answered once; leave a shard without a leader and
//! check its events go to the current endpoint; answer `Status` without a cluster map
//! and check a mixed batch is one request; let a leader's answer name another node in
//! `trail-leader` after a leadership moved and check the client fetches the map again
//! and sends the moved shard's events to the new leader. Every test is bounded to 10 s.
//!
//! The fake nodes do not forward (`tests/` runs a real cluster); they record what they
//! received, which pins where the client sends each event.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};
use trail_client::{Client, ClientOptions, EncodedBatch, Event, RecordBatchResponse, RetryPolicy};
use trail_proto::v1::record_outcome::Outcome;
use trail_proto::v1::trail_server::{Trail, TrailServer};
use trail_proto::v1::{
    Block, ClusterInitRequest, ClusterInitResponse, ClusterMap, ClusterNode, GetBlockRequest,
    GetBlockResponse, GetCheckpointRequest, GetCheckpointResponse, GetConsistencyProofRequest,
    GetConsistencyProofResponse, GetEventRequest, GetEventResponse, GetProofRequest,
    GetProofResponse, ListBlocksRequest, ListStreamsRequest, ListStreamsResponse, Receipt,
    RecordBatchRequest, RecordOutcome, RecordRequest, RecordResponse, ShardStatus, StatusRequest,
    StatusResponse, TailRequest, TailResponse,
};

const TEST_TIME_MAX: Duration = Duration::from_secs(10);
const LEADER_HEADER: &str = "trail-leader";
const SHARDS: u32 = 4;

/// Two tenants per shard of 4, by the server's placement (`shard_for_tenant` in
/// node/src/ledger/routing.rs, computed once and pinned here):
/// 1 + (first 8 bytes of SHA-256(tenant), big-endian) % 4.
const TENANTS_BY_SHARD: [(u32, [&str; 2]); 4] = [
    (1, ["ten_0006", "ten_0007"]),
    (2, ["ten_0001", "ten_0002"]),
    (3, ["ten_0005", "ten_0008"]),
    (4, ["ten_0014", "ten_0021"]),
];

fn shard_of(tenant_id: &str) -> u32 {
    for (shard, tenants) in TENANTS_BY_SHARD {
        if tenants.contains(&tenant_id) {
            return shard;
        }
    }
    panic!("tenant {tenant_id} is not in the test's table");
}

/// The (tenant, event id) of each event of one RecordBatch received.
type Received = Vec<(String, String)>;

/// What every fake node of a cluster reports: the map, and the leader of each shard
/// (index `shard - 1`; 0 = no leader).
#[derive(Default)]
struct ClusterState {
    map: Option<ClusterMap>,
    leaders: Vec<u64>,
}

/// One fake node: what it saw and how it misbehaves.
#[derive(Clone)]
struct FakeNode {
    node_id: u64,
    cluster: Arc<Mutex<ClusterState>>,
    status_calls: Arc<AtomicUsize>,
    /// Each RecordBatch received: (tenant, event id) of its events, refused ones
    /// included.
    batches: Arc<Mutex<Vec<Received>>>,
    /// RecordBatch answers UNAVAILABLE this many more times.
    batches_unavailable: Arc<AtomicUsize>,
    /// Named in `trail-leader` on RecordBatch answers.
    leader_hint: Arc<Mutex<Option<String>>>,
}

impl FakeNode {
    fn new(node_id: u64, cluster: Arc<Mutex<ClusterState>>) -> FakeNode {
        FakeNode {
            node_id,
            cluster,
            status_calls: Arc::default(),
            batches: Arc::default(),
            batches_unavailable: Arc::default(),
            leader_hint: Arc::default(),
        }
    }

    fn status_calls(&self) -> usize {
        self.status_calls.load(Ordering::SeqCst)
    }

    fn batches(&self) -> Vec<Received> {
        self.batches.lock().unwrap().clone()
    }

    /// The tenants of every event received, over all batches, sorted.
    fn tenants_received(&self) -> Vec<String> {
        let mut tenants: Vec<String> = self
            .batches()
            .into_iter()
            .flatten()
            .map(|(tenant, _)| tenant)
            .collect();
        tenants.sort();
        tenants
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
    ) -> Result<Response<trail_proto::v1::RecordBatchResponse>, Status> {
        let events = request.into_inner().events;
        let received: Received = events
            .iter()
            .map(|event| (event.tenant_id.clone(), event.event_id.clone()))
            .collect();
        self.batches.lock().unwrap().push(received);
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
                    stream: format!("node-{}", self.node_id),
                    ..Receipt::default()
                })),
            })
            .collect();
        let mut response = Response::new(trail_proto::v1::RecordBatchResponse {
            outcomes,
            accepted: events.len() as u32,
            ..trail_proto::v1::RecordBatchResponse::default()
        });
        if let Some(leader) = self.leader_hint.lock().unwrap().as_deref() {
            response
                .metadata_mut()
                .insert(LEADER_HEADER, MetadataValue::try_from(leader).unwrap());
        }
        Ok(response)
    }

    type RecordStreamStream = BoxStream<trail_proto::v1::RecordBatchResponse>;

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
        unimplemented()
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

    /// Reports every shard (3 nodes, 3 replicas: each node hosts all), as the leader
    /// of those it leads and as a follower naming the leader of the others, plus the
    /// metadata shard 0, which the client must ignore.
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        self.status_calls.fetch_add(1, Ordering::SeqCst);
        let cluster = self.cluster.lock().unwrap();
        let mut shards = vec![ShardStatus {
            shard_id: 0,
            leader_node_id: self.node_id,
            role: "leader".to_string(),
            term: 1,
            ..ShardStatus::default()
        }];
        for (index, &leader) in cluster.leaders.iter().enumerate() {
            let role = if leader == self.node_id {
                "leader"
            } else {
                "follower"
            };
            shards.push(ShardStatus {
                shard_id: index as u32 + 1,
                leader_node_id: leader,
                role: role.to_string(),
                term: 1,
                ..ShardStatus::default()
            });
        }
        Ok(Response::new(StatusResponse {
            node_id: self.node_id,
            shards,
            cluster: cluster.map.clone(),
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
        _: Request<ListBlocksRequest>,
    ) -> Result<Response<Self::ListBlocksStream>, Status> {
        unimplemented()
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
        _: Request<trail_proto::v1::CreateApiKeyRequest>,
    ) -> Result<Response<trail_proto::v1::CreateApiKeyResponse>, Status> {
        unimplemented()
    }

    async fn list_api_keys(
        &self,
        _: Request<trail_proto::v1::ListApiKeysRequest>,
    ) -> Result<Response<trail_proto::v1::ListApiKeysResponse>, Status> {
        unimplemented()
    }

    async fn revoke_api_key(
        &self,
        _: Request<trail_proto::v1::RevokeApiKeyRequest>,
    ) -> Result<Response<trail_proto::v1::RevokeApiKeyResponse>, Status> {
        unimplemented()
    }
}

/// A fake node serving on a loopback port until the test ends.
struct Served {
    address: SocketAddr,
    node: FakeNode,
    _stop: oneshot::Sender<()>,
    _task: JoinHandle<()>,
}

impl Served {
    fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }
}

async fn serve_on(listener: tokio::net::TcpListener, node: FakeNode) -> Served {
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
        _stop: stop,
        _task: task,
    }
}

/// Three fake nodes of one cluster of 4 shards; `leaders[s - 1]` leads shard `s`.
async fn cluster(leaders: [u64; 4]) -> (Vec<Served>, Arc<Mutex<ClusterState>>) {
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let nodes = listeners
        .iter()
        .enumerate()
        .map(|(index, listener)| ClusterNode {
            node_id: index as u64 + 1,
            grpc_addr: listener.local_addr().unwrap().to_string(),
            peer_addr: String::new(),
        })
        .collect();
    let state = Arc::new(Mutex::new(ClusterState {
        map: Some(ClusterMap {
            cluster_id: "trail-test".to_string(),
            nodes,
            shards: SHARDS,
            replicas: 3,
            epoch: 1,
            ..ClusterMap::default()
        }),
        leaders: leaders.to_vec(),
    }));
    let mut served = Vec::new();
    for (index, listener) in listeners.into_iter().enumerate() {
        let node = FakeNode::new(index as u64 + 1, state.clone());
        served.push(serve_on(listener, node).await);
    }
    (served, state)
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

/// Two events of each tenant, the tenants interleaved: ten_0006, ten_0001, ..., then
/// again. Event ids are set, so the test knows them.
fn mixed_events(tag: &str) -> Vec<Event> {
    let mut events = Vec::new();
    for round in 0..2 {
        for (_, tenants) in TENANTS_BY_SHARD {
            for tenant_id in tenants {
                events.push(Event {
                    event_id: format!("{tag}-{tenant_id}-{round}"),
                    tenant_id: tenant_id.to_string(),
                    action: "auth.login".to_string(),
                    ..Event::default()
                });
            }
        }
    }
    events
}

/// The tenants of the shards `node_id` leads, twice each (two events per tenant), sorted.
fn tenants_led_by(leaders: [u64; 4], node_id: u64) -> Vec<String> {
    let mut tenants = Vec::new();
    for (shard, shard_tenants) in TENANTS_BY_SHARD {
        if leaders[(shard - 1) as usize] == node_id {
            for tenant_id in shard_tenants {
                tenants.push(tenant_id.to_string());
                tenants.push(tenant_id.to_string());
            }
        }
    }
    tenants.sort();
    tenants
}

/// Every event answered once, with a receipt for it, in the order sent.
fn assert_receipts_in_order(response: &RecordBatchResponse, sent: &[Event]) {
    assert_eq!(response.outcomes.len(), sent.len());
    for (outcome, event) in response.outcomes.iter().zip(sent) {
        match &outcome.outcome {
            Some(Outcome::Receipt(receipt)) => {
                assert_eq!(
                    (receipt.event_id.as_str(), receipt.tenant_id.as_str()),
                    (event.event_id.as_str(), event.tenant_id.as_str())
                );
            }
            other => panic!("expected a receipt for {}, got {other:?}", event.event_id),
        }
    }
    assert_eq!(
        (response.accepted, response.rejected),
        (sent.len() as u32, 0)
    );
}

#[tokio::test]
async fn a_mixed_batch_goes_to_each_shards_leader() {
    bounded(async {
        let leaders = [1, 2, 3, 2];
        let (nodes, _state) = cluster(leaders).await;
        // The client is given node 1 only: it connects to 2 and 3 from the map.
        let client = Client::connect_with(&nodes[0].endpoint(), options())
            .await
            .unwrap();

        let sent = mixed_events("plain");
        let response = client.record_batch(sent.clone()).await.unwrap();
        assert_receipts_in_order(&response, &sent);
        for (node, node_id) in nodes.iter().zip(1..) {
            assert_eq!(
                node.node.tenants_received(),
                tenants_led_by(leaders, node_id),
                "node {node_id}"
            );
            assert_eq!(node.node.batches().len(), 1, "node {node_id}: one part");
        }
        // Each part keeps the batch's order.
        let part_two: Vec<String> = nodes[1].node.batches()[0]
            .iter()
            .map(|(_, event_id)| event_id.clone())
            .collect();
        let expected_two: Vec<String> = sent
            .iter()
            .filter(|event| leaders[(shard_of(&event.tenant_id) - 1) as usize] == 2)
            .map(|event| event.event_id.clone())
            .collect();
        assert_eq!(part_two, expected_two);
        // The receipts say which node recorded each event.
        for (outcome, event) in response.outcomes.iter().zip(&sent) {
            let Some(Outcome::Receipt(receipt)) = &outcome.outcome else {
                panic!("receipt expected");
            };
            let leader = leaders[(shard_of(&event.tenant_id) - 1) as usize];
            assert_eq!(receipt.stream, format!("node-{leader}"));
        }

        // The pre-encoded path splits the same way, and the map is not fetched again.
        let sent_encoded = mixed_events("encoded");
        let batch = EncodedBatch::new(sent_encoded.clone());
        let response = client.record_batch_encoded(&batch).await.unwrap();
        assert_receipts_in_order(&response, &sent_encoded);
        for (node, node_id) in nodes.iter().zip(1..) {
            let batches = node.node.batches();
            assert_eq!(batches.len(), 2, "node {node_id}");
            let mut tenants: Vec<String> = batches[1]
                .iter()
                .map(|(tenant, _)| tenant.clone())
                .collect();
            tenants.sort();
            assert_eq!(tenants, tenants_led_by(leaders, node_id), "node {node_id}");
        }
        assert_eq!(nodes[0].node.status_calls(), 1);
        assert_eq!(client.retry_stats().request_retries, 0);
        assert_eq!(client.retry_stats().event_retries, 0);
    })
    .await;
}

#[tokio::test]
async fn a_leader_refusing_its_part_is_bypassed_through_the_list() {
    bounded(async {
        let leaders = [1, 2, 3, 2];
        let (nodes, _state) = cluster(leaders).await;
        nodes[2].node.batches_unavailable.store(1, Ordering::SeqCst);
        let client = Client::connect_with(&nodes[0].endpoint(), options())
            .await
            .unwrap();

        let sent = mixed_events("refused");
        let response = client.record_batch(sent.clone()).await.unwrap();
        assert_receipts_in_order(&response, &sent);

        // Node 3 got its part once and refused it; the resend went to the listed node
        // with the same event ids. Node 2's part was not resent.
        let refused = nodes[2].node.batches();
        assert_eq!(refused.len(), 1);
        assert_eq!(nodes[1].node.batches().len(), 1);
        let at_one = nodes[0].node.batches();
        assert_eq!(at_one.len(), 2, "its own part and node 3's resent");
        let resent = at_one
            .iter()
            .find(|batch| batch == &&refused[0])
            .expect("node 3's part resent to node 1 as it was");
        assert!(resent.iter().all(|(tenant, _)| shard_of(tenant) == 3));
        assert_eq!(client.retry_stats().request_retries, 1);

        // Every event answered exactly once: receipts carry distinct event ids.
        let mut ids: Vec<&str> = response
            .outcomes
            .iter()
            .map(|outcome| match &outcome.outcome {
                Some(Outcome::Receipt(receipt)) => receipt.event_id.as_str(),
                other => panic!("receipt expected, got {other:?}"),
            })
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), sent.len());
    })
    .await;
}

#[tokio::test]
async fn events_of_a_shard_without_a_leader_go_to_the_current_endpoint() {
    bounded(async {
        // Shard 4 is electing: no node names a leader for it.
        let leaders = [2, 2, 3, 0];
        let (nodes, _state) = cluster(leaders).await;
        let client = Client::connect_with(&nodes[0].endpoint(), options())
            .await
            .unwrap();

        let sent = mixed_events("leaderless");
        let response = client.record_batch(sent.clone()).await.unwrap();
        assert_receipts_in_order(&response, &sent);
        assert_eq!(nodes[1].node.tenants_received(), tenants_led_by(leaders, 2));
        assert_eq!(nodes[2].node.tenants_received(), tenants_led_by(leaders, 3));
        // Node 1 leads nothing: it got only shard 4's events, to forward.
        assert_eq!(nodes[0].node.tenants_received(), tenants_led_by(leaders, 0));
        assert_eq!(nodes[0].node.batches().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_single_node_gets_whole_batches() {
    bounded(async {
        let state = Arc::new(Mutex::new(ClusterState::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let single = serve_on(listener, FakeNode::new(1, state)).await;
        let client = Client::connect_with(&single.endpoint(), options())
            .await
            .unwrap();

        let sent = mixed_events("single");
        let response = client.record_batch(sent.clone()).await.unwrap();
        assert_receipts_in_order(&response, &sent);
        let batches = single.node.batches();
        assert_eq!(batches.len(), 1, "one request, not split");
        let ids: Vec<&str> = batches[0].iter().map(|(_, id)| id.as_str()).collect();
        let expected: Vec<&str> = sent.iter().map(|event| event.event_id.as_str()).collect();
        assert_eq!(ids, expected);

        let batch = EncodedBatch::new(mixed_events("single-encoded"));
        client.record_batch_encoded(&batch).await.unwrap();
        assert_eq!(single.node.batches().len(), 2);
        // Asked once whether it is a cluster.
        assert_eq!(single.node.status_calls(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_leader_naming_another_makes_the_client_fetch_the_map_again() {
    bounded(async {
        let leaders_before = [1, 2, 3, 2];
        let (nodes, state) = cluster(leaders_before).await;
        let client = Client::connect_with(&nodes[0].endpoint(), options())
            .await
            .unwrap();
        client.record_batch(mixed_events("first")).await.unwrap();
        assert_eq!(nodes[2].node.batches().len(), 1);
        let fetches_before = nodes[0].node.status_calls();
        assert_eq!(fetches_before, 1);

        // Shard 3's leadership moves to node 2; node 3 still takes what it is sent
        // (a real node would forward it) and names the new leader.
        let leaders_after = [1, 2, 2, 2];
        state.lock().unwrap().leaders = leaders_after.to_vec();
        *nodes[2].node.leader_hint.lock().unwrap() = Some(nodes[1].endpoint());
        // Fetches start at most once a second.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        client.record_batch(mixed_events("stale")).await.unwrap();
        assert_eq!(nodes[2].node.batches().len(), 2, "sent by the stale map");

        // The fetch runs in the background; wait for it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while nodes[0].node.status_calls() == fetches_before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no new fetch of the shard map"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Round two of the fetch asks nodes 2 and 3 too; give it time to publish.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while nodes[1].node.status_calls() < 2 || nodes[2].node.status_calls() < 2 {
            assert!(tokio::time::Instant::now() < deadline, "round two missing");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;

        let sent = mixed_events("fresh");
        let response = client.record_batch(sent.clone()).await.unwrap();
        assert_receipts_in_order(&response, &sent);
        assert_eq!(nodes[2].node.batches().len(), 2, "node 3 leads nothing now");
        let newest = nodes[1].node.batches().last().cloned().unwrap();
        let mut tenants: Vec<String> = newest.into_iter().map(|(tenant, _)| tenant).collect();
        tenants.sort();
        assert_eq!(tenants, tenants_led_by(leaders_after, 2));
    })
    .await;
}
