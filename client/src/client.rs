//! The connection to a Trail node or cluster and its RPCs.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes};
use futures::Stream;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder, Streaming};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::{Code, Request, Status};
use trail_proto::v1::record_outcome::Outcome;
use trail_proto::v1::trail_client::TrailClient;
use trail_proto::v1::{
    ApiKey, Block, CountRequest, CreateApiKeyRequest, CreateApiKeyResponse, Event, GetBlockRequest,
    GetCheckpointRequest, GetCheckpointResponse, GetConsistencyProofRequest,
    GetConsistencyProofResponse, GetEventRequest, GetProofRequest, GetProofResponse,
    ListApiKeysRequest, ListBlocksRequest, ListStreamsRequest, ListStreamsResponse, QueryRequest,
    QueryResponse, Receipt, RecordBatchResponse, RecordRequest, RevokeApiKeyRequest, StatusRequest,
    StatusResponse, StoredEvent, TailRequest, TailResponse,
};

use crate::batch_split::{BatchSplit, PartAnswer};
use crate::encoded_batch::{
    assign_missing_event_ids, encode_events, event_ids_of, single_tenant, EncodedBatch,
};
use crate::endpoint_set::{names_another_leader, AuthChannel, EndpointSet, Route};
use crate::error::{Error, Result};
use crate::retry::{is_retryable_status, BatchProgress, RetryPolicy};
use crate::shard_map::{tenant_key, ShardMap};
use crate::shard_map_cache::{Known, ShardMapCache, FIRST_MAP_WAIT_MAX};
use crate::token::Token;

/// Largest response the client accepts. A full `Tail` page is 1,000 events of ~1 KiB
/// and a 10,000-event batch response ~1 MiB of receipts; 64 MiB leaves room for growth
/// while still refusing a runaway response.
pub(crate) const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;

const RECORD_BATCH_PATH: &str = "/trail.v1.Trail/RecordBatch";

/// The blocks of a [`Client::list_blocks`] call, in block order. Ends after the last
/// block asked for, or with one error.
pub type BlockStream = Pin<Box<dyn Stream<Item = Result<Block>> + Send>>;

/// Connection, credential and retry settings. `Debug` shows the token's key id only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientOptions {
    /// Deadline of one RPC attempt; sent to the server as `grpc-timeout` too.
    pub rpc_timeout: Duration,
    /// How long to wait for the TCP (and HTTP/2) connection.
    pub connect_timeout: Duration,
    pub retry: RetryPolicy,
    /// The API key every request carries (`authorization: Bearer <token>`). `None`:
    /// the one in `TRAIL_TOKEN`, if set; otherwise requests carry none, and the node
    /// answers UNAUTHENTICATED.
    pub token: Option<Token>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            rpc_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            token: None,
        }
    }
}

impl ClientOptions {
    /// These options with `token` as the credential.
    pub fn with_token(mut self, token: Token) -> ClientOptions {
        self.token = Some(token);
        self
    }
}

/// How often the SDK resent something, across all clones of a [`Client`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryStats {
    /// Whole requests resent after a transport error, UNAVAILABLE, RESOURCE_EXHAUSTED
    /// or a timeout.
    pub request_retries: u64,
    /// Events resent after a per-event RESOURCE_EXHAUSTED or UNAVAILABLE.
    pub event_retries: u64,
}

#[derive(Debug, Default)]
struct RetryCounters {
    request_retries: AtomicU64,
    event_retries: AtomicU64,
}

/// A connection to a Trail node, or to the nodes of a cluster. Cheap to clone; clones
/// share the connections (one HTTP/2 connection per node, which multiplexes concurrent
/// calls), the current endpoint, the leaders learned and the retry counters.
///
/// # Several endpoints
///
/// [`Client::connect`] takes a comma-separated list of endpoints, e.g.
/// `http://10.0.0.7:7400,http://10.0.0.8:7400,10.0.0.9:7400`. Connecting succeeds
/// when any of them answers; the first that does, in list order, becomes the current
/// endpoint. Every call goes to the current endpoint; when an attempt fails with a
/// transport error (connection refused or reset), a timeout or a retryable status
/// (UNAVAILABLE, RESOURCE_EXHAUSTED), the next endpoint in the list, round robin,
/// becomes current and the retry goes there, within the [`RetryPolicy`]'s attempts and
/// backoff. This holds for the reads, for [`Client::record`] and
/// [`Client::record_batch`] (a resent batch carries the same event ids, so a node that
/// got it before deduplicates it) and for reopening a [`Client::list_blocks`] stream.
/// Events a node refused one by one (a batch answered, some events UNAVAILABLE) are
/// resent without failing over: the node answered, so it is up.
///
/// # Leaders
///
/// Any node of a cluster serves any request, forwarding it to the leader of the
/// tenant's shard; it then names that leader in the response metadata `trail-leader`.
/// For requests about one tenant (the reads, and batches whose events all have the
/// same tenant), the client remembers that leader and sends the tenant's later
/// requests straight to it, connecting to it if it is not in the list. An error that
/// names another leader is retried there. A remembered leader that fails transiently
/// is forgotten, and the retry goes to the list. At most 10,000 tenants are remembered
/// (an arbitrary one is forgotten to make room) and at most 16 unlisted leaders are
/// connected to.
///
/// A batch of several tenants is split by shard leader. The client learns the
/// cluster's shard map from the nodes' `Status` (the shard count, each node's address,
/// and the leader each node reports for the shards it hosts), fetching it when the
/// first such batch is sent (that batch waits for it, at most 1 s) and again when it
/// is 30 s old, when a part's node names another leader in `trail-leader`, when a
/// part fails transiently or has events refused as UNAVAILABLE, or when some events'
/// shard has no known leader: at most once a second, one fetch at a time. Each event
/// goes to the leader of its tenant's shard (computed as the server does); the parts
/// are sent at once, each straight to its leader (connecting to it if it is not in
/// the list, within the same 16) and retried on its own as a whole batch is: same
/// event ids, events refused one by one resent alone, and a leader that fails
/// transiently or names another is left for the list, where the node forwards the
/// part. Events whose shard has no known leader go together to the current endpoint,
/// which forwards them. The response merges the parts' outcomes in the order given;
/// when a part gets no answer at all, its events carry the error (the call fails
/// only when no part got one). A single node (whose `Status` has no cluster map) gets
/// whole batches, as before.
#[derive(Clone, Debug)]
pub struct Client {
    endpoints: Arc<EndpointSet>,
    options: ClientOptions,
    counters: Arc<RetryCounters>,
    /// The shard map batches of several tenants are split by.
    shard_maps: Arc<ShardMapCache>,
}

/// A shard map and the routes to its leaders, for splitting batches.
struct ShardLeaders {
    map: Arc<ShardMap>,
    /// To the leaders the client can send to (listed, or within the bound on unlisted
    /// connections): at most `shard_map::NODES_MAX`.
    routes: Vec<Route>,
}

impl ShardLeaders {
    /// Groups a batch's events, given by their tenant keys, by shard leader.
    fn plan<I>(&self, tenant_keys: I) -> BatchSplit
    where
        I: Iterator<Item = u64>,
    {
        BatchSplit::plan(&self.map, tenant_keys, |endpoint| {
            self.routes.iter().any(|route| *route.node.uri == *endpoint)
        })
    }

    fn route(&self, uri: &str) -> Option<Route> {
        self.routes
            .iter()
            .find(|route| *route.node.uri == *uri)
            .cloned()
    }
}

/// What the retry loop needs to know about a part of a split batch.
struct SplitPart {
    /// Where the part goes first: its shards' leader, by the map (`None` for the
    /// events with no known leader, which go where an unsplit batch would).
    leader: Option<Route>,
}

impl Client {
    /// Connects with [`ClientOptions::default`]. `endpoint` is a URI such as
    /// `http://127.0.0.1:7400`, or several separated by commas (see [`Client`]); a bare
    /// `host:port` is taken as `http://host:port`.
    pub async fn connect(endpoint: &str) -> Result<Client> {
        Client::connect_with(endpoint, ClientOptions::default()).await
    }

    /// Connects to one endpoint or to the first reachable of a comma-separated list.
    ///
    /// Fails with [`Error::InvalidEndpoint`] naming an entry that is not a URI, with
    /// [`Error::Connect`] when the only endpoint cannot be reached, and with
    /// [`Error::ConnectAll`] naming every endpoint and its reason when none of several
    /// can.
    ///
    /// Without [`ClientOptions::token`], the token is taken from `TRAIL_TOKEN`; a
    /// malformed one there fails with [`Error::InvalidToken`].
    pub async fn connect_with(endpoint: &str, mut options: ClientOptions) -> Result<Client> {
        if options.token.is_none() {
            options.token = Token::from_env()?;
        }
        let endpoints = EndpointSet::connect(endpoint, options.clone()).await?;
        Ok(Client {
            endpoints: Arc::new(endpoints),
            options,
            counters: Arc::new(RetryCounters::default()),
            shard_maps: Arc::new(ShardMapCache::new()),
        })
    }

    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    pub fn retry_stats(&self) -> RetryStats {
        RetryStats {
            request_retries: self.counters.request_retries.load(Ordering::Relaxed),
            event_retries: self.counters.event_retries.load(Ordering::Relaxed),
        }
    }

    /// Records a batch of events (at most [`crate::BATCH_EVENTS_MAX`]).
    ///
    /// Events without an `event_id` get a UUID v4 first, so every resend is idempotent.
    /// The whole request is retried on transport errors, UNAVAILABLE,
    /// RESOURCE_EXHAUSTED and timeouts; events refused one by one with
    /// RESOURCE_EXHAUSTED or UNAVAILABLE are resent alone. The response has one
    /// outcome per event, in the order given, and counts over the final outcomes.
    /// Events whose retries ran out carry their last error.
    ///
    /// In a cluster, a batch of several tenants is split by shard leader and the parts
    /// are sent at once, each retried on its own (see [`Client`], "Leaders").
    ///
    /// Fails only when no attempt got an answer at all, or on a request-level error
    /// that is not transient (e.g. INVALID_ARGUMENT for the whole batch).
    pub async fn record_batch(&self, mut events: Vec<Event>) -> Result<RecordBatchResponse> {
        assign_missing_event_ids(&mut events);
        let tenant_id = single_tenant(&events);
        if tenant_id.is_none() && events.len() > 1 {
            let keys = events.iter().map(|event| tenant_key(&event.tenant_id));
            if let Some((split, leaders)) = self.split_by_leader(keys).await {
                return self
                    .record_split_events(events, &split, &leaders)
                    .await
                    .map_err(Error::classified);
            }
        }
        let body = encode_events(events.iter());
        self.drive_record_batch(body, events.len(), tenant_id.as_deref(), None, Some(events))
            .await
            .map_err(Error::classified)
    }

    /// [`Client::record_batch`] for a batch encoded ahead of time. A batch of several
    /// tenants is split as [`Client::record_batch`] splits it, by concatenating its
    /// events' encoded bytes: nothing is decoded.
    pub async fn record_batch_encoded(&self, batch: &EncodedBatch) -> Result<RecordBatchResponse> {
        if let Some(keys) = batch.tenant_keys() {
            if let Some((split, leaders)) = self.split_by_leader(keys).await {
                return self
                    .record_split_encoded(batch, &split, &leaders)
                    .await
                    .map_err(Error::classified);
            }
        }
        self.drive_record_batch(batch.body(), batch.len(), batch.tenant_id(), None, None)
            .await
            .map_err(Error::classified)
    }

    /// How to split a batch of several tenants, given each event's tenant key in batch
    /// order, and the routes to the leaders; `None` when the batch goes whole to the
    /// current endpoint (a single node, no map yet, or no leader known for any of its
    /// events).
    async fn split_by_leader<I>(&self, tenant_keys: I) -> Option<(BatchSplit, ShardLeaders)>
    where
        I: Iterator<Item = u64>,
    {
        let leaders = self.shard_leaders().await?;
        let split = leaders.plan(tenant_keys);
        if split.has_unrouted_events() {
            self.refresh_shard_map();
        }
        if !split.reaches_a_leader() {
            return None;
        }
        Some((split, leaders))
    }

    /// The shard map and routes to its leaders, to split a batch of several tenants
    /// by; `None` when batches are not split (a single node, or no map yet).
    ///
    /// Starts a fetch of the map when it is missing or old. The first batch waits for
    /// the first fetch, at most [`FIRST_MAP_WAIT_MAX`] and the RPC timeout; later
    /// batches use the map they find.
    async fn shard_leaders(&self) -> Option<ShardLeaders> {
        let mut changed = self.shard_maps.subscribe();
        let view = self.shard_maps.view(Instant::now());
        if view.stale {
            self.refresh_shard_map();
        }
        let map = match view.known {
            Known::Cluster(map) => map,
            Known::Unsplit => return None,
            Known::Unknown if !view.first_fetch_pending => return None,
            Known::Unknown => {
                let wait = self.options.rpc_timeout.min(FIRST_MAP_WAIT_MAX);
                let deadline = tokio::time::Instant::now() + wait;
                loop {
                    match tokio::time::timeout_at(deadline, changed.changed()).await {
                        Ok(Ok(())) => {}
                        // Waited long enough, or the cache is gone.
                        Ok(Err(_)) | Err(_) => return None,
                    }
                    let view = self.shard_maps.view(Instant::now());
                    match view.known {
                        Known::Cluster(map) => break map,
                        Known::Unsplit => return None,
                        Known::Unknown if !view.first_fetch_pending => return None,
                        Known::Unknown => continue,
                    }
                }
            }
        };
        let mut routes = Vec::new();
        for endpoint in map.leader_endpoints() {
            if let Some(route) = self.endpoints.route_to(endpoint) {
                routes.push(route);
            }
        }
        Some(ShardLeaders { map, routes })
    }

    /// Starts a fetch of the shard map in the background, unless one is under way or
    /// one started less than [`crate::shard_map_cache::REFRESH_INTERVAL_MIN`] ago.
    fn refresh_shard_map(&self) {
        if !self.shard_maps.begin_fetch(Instant::now()) {
            return;
        }
        let endpoints = self.endpoints.clone();
        let shard_maps = self.shard_maps.clone();
        let rpc_timeout = self.options.rpc_timeout;
        tokio::spawn(async move {
            crate::shard_map_cache::fetch(&endpoints, &shard_maps, rpc_timeout).await;
        });
    }

    /// Sends the parts of a split batch at once and merges their answers.
    async fn record_split_events(
        &self,
        events: Vec<Event>,
        split: &BatchSplit,
        leaders: &ShardLeaders,
    ) -> Result<RecordBatchResponse> {
        let mut parts_events: Vec<Vec<Event>> = split
            .parts()
            .iter()
            .map(|part| Vec::with_capacity(part.positions.len()))
            .collect();
        let part_of_events = split.part_of_events();
        for (event, part_index) in events.into_iter().zip(part_of_events) {
            parts_events[part_index].push(event);
        }
        let mut sends = Vec::with_capacity(parts_events.len());
        for (part, part_events) in split.parts().iter().zip(parts_events) {
            let body = encode_events(part_events.iter());
            let tenant_id = single_tenant(&part_events);
            let leader = part.leader.as_deref().and_then(|uri| leaders.route(uri));
            sends.push(self.drive_part(
                body,
                part_events.len(),
                tenant_id,
                leader,
                Some(part_events),
            ));
        }
        let mut answers = Vec::with_capacity(sends.len());
        for answer in futures::future::join_all(sends).await {
            answers.push(answer?);
        }
        split.merge(answers)
    }

    /// [`Client::record_split_events`] for a pre-encoded batch.
    async fn record_split_encoded(
        &self,
        batch: &EncodedBatch,
        split: &BatchSplit,
        leaders: &ShardLeaders,
    ) -> Result<RecordBatchResponse> {
        let mut sends = Vec::with_capacity(split.parts().len());
        for part in split.parts() {
            let body = batch.part_body(&part.positions);
            let leader = part.leader.as_deref().and_then(|uri| leaders.route(uri));
            sends.push(self.drive_part(body, part.positions.len(), None, leader, None));
        }
        let mut answers = Vec::with_capacity(sends.len());
        for answer in futures::future::join_all(sends).await {
            answers.push(answer?);
        }
        split.merge(answers)
    }

    /// One part of a split batch, through the retry loop. A part that got no answer
    /// (or a request-level error that is not transient) becomes
    /// [`PartAnswer::Failed`], naming its events, so the other parts' outcomes reach
    /// the caller.
    async fn drive_part(
        &self,
        body: Bytes,
        events_count: usize,
        tenant_id: Option<String>,
        leader: Option<Route>,
        events: Option<Vec<Event>>,
    ) -> Result<PartAnswer> {
        let sent = self
            .drive_record_batch(
                body.clone(),
                events_count,
                tenant_id.as_deref(),
                Some(SplitPart { leader }),
                events,
            )
            .await;
        match sent {
            Ok(response) => Ok(PartAnswer::Answered(response)),
            Err(Error::Rpc(status)) => Ok(PartAnswer::Failed {
                status,
                event_ids: event_ids_of(&body)?,
            }),
            Err(other) => Err(other),
        }
    }

    /// The retry loop. `events` may be `None` until a resend of a subset needs them;
    /// they are then decoded from `first_body`. `tenant_id` is the tenant of every
    /// event, if they share one. `split_part` is set for a part of a split batch: it
    /// goes to its shards' leader first, and signs of a stale shard map start a
    /// refresh.
    async fn drive_record_batch(
        &self,
        first_body: Bytes,
        events_count: usize,
        tenant_id: Option<&str>,
        split_part: Option<SplitPart>,
        events_given: Option<Vec<Event>>,
    ) -> Result<RecordBatchResponse> {
        if events_count == 0 {
            return Ok(RecordBatchResponse::default());
        }
        let in_split = split_part.is_some();
        // Dropped after the leader fails: the part's retries then go where an unsplit
        // batch's would, and the node there forwards them.
        let mut leader = split_part.and_then(|part| part.leader);
        let mut events = events_given;
        let mut progress = BatchProgress::new(events_count);
        let mut failed: Vec<Arc<str>> = Vec::new();
        let mut attempt: u32 = 0;
        loop {
            let whole = attempt == 0 || progress.pending().len() == events_count;
            // Which event of the batch each outcome of this attempt answers.
            let positions_sent: Vec<usize> = if whole {
                (0..events_count).collect()
            } else {
                progress.pending().to_vec()
            };
            let body = if whole {
                first_body.clone()
            } else {
                let decoded = events_or_decode(&mut events, &first_body)?;
                encode_events(progress.pending().iter().map(|&index| &decoded[index]))
            };
            let route = match &leader {
                Some(leader) => leader.clone(),
                None => self.endpoints.route(tenant_id),
            };
            let sent = self.send_record_batch(&route, body).await;
            attempt += 1;
            let request_failure = match sent {
                Ok(response) => {
                    self.endpoints
                        .learn_leader(tenant_id, &route, response.metadata(), &failed);
                    let moved = names_another_leader(response.metadata(), &route);
                    let mut answer = response.into_inner();
                    check_deduplicated_receipts(
                        &mut answer,
                        &positions_sent,
                        &mut events,
                        &first_body,
                    )?;
                    // A node that is not the leader the map named, or events refused
                    // as UNAVAILABLE (an election): the map may be stale.
                    if in_split && (moved || has_unavailable_event(&answer)) {
                        self.refresh_shard_map();
                    }
                    progress.merge(answer)?;
                    None
                }
                Err(status) => {
                    let mut retry = self.after_failure(tenant_id, &route, &status, &mut failed);
                    let moved = names_another_leader(status.metadata(), &route);
                    if in_split && (is_retryable_status(&status) || moved) {
                        self.refresh_shard_map();
                    }
                    if leader.is_some() && (retry || moved) {
                        // The map's leader failed or is not the leader: the request was
                        // not acted on there (or is deduplicated by its event ids), so
                        // resending it through the list is safe.
                        leader = None;
                        retry = true;
                    }
                    if !retry {
                        return self.abandon_batch(progress, status, &mut events, &first_body);
                    }
                    Some(status)
                }
            };
            if progress.is_done() {
                return Ok(progress.finish());
            }
            if attempt >= self.options.retry.attempts_max {
                return match request_failure {
                    Some(status) => self.abandon_batch(progress, status, &mut events, &first_body),
                    None => Ok(progress.finish()),
                };
            }
            if request_failure.is_some() {
                self.counters
                    .request_retries
                    .fetch_add(1, Ordering::Relaxed);
            } else {
                let resent = progress.pending().len() as u64;
                self.counters
                    .event_retries
                    .fetch_add(resent, Ordering::Relaxed);
            }
            let delay = self.options.retry.backoff_delay(
                attempt - 1,
                progress.retry_after_ms(),
                rand::random::<f64>(),
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// Ends a batch after a request-level failure: an error when nothing was answered,
    /// otherwise the partial response with the status on every unanswered event.
    fn abandon_batch(
        &self,
        mut progress: BatchProgress,
        status: Status,
        events: &mut Option<Vec<Event>>,
        first_body: &Bytes,
    ) -> Result<RecordBatchResponse> {
        if !progress.has_outcomes() {
            return Err(Error::Rpc(status));
        }
        let decoded = events_or_decode(events, first_body)?;
        progress.fail_pending(&status, |index| decoded[index].event_id.clone());
        Ok(progress.finish())
    }

    /// One `RecordBatch` attempt with a pre-encoded body.
    async fn send_record_batch(
        &self,
        route: &Route,
        body: Bytes,
    ) -> Result<tonic::Response<RecordBatchResponse>, Status> {
        let mut grpc = tonic::client::Grpc::new(route.node.channel.clone())
            .max_decoding_message_size(RESPONSE_BYTES_MAX);
        grpc.ready()
            .await
            .map_err(|error| Status::unavailable(format!("channel not ready: {error}")))?;
        let mut request = Request::new(body);
        request.set_timeout(self.options.rpc_timeout);
        grpc.unary(
            request,
            PathAndQuery::from_static(RECORD_BATCH_PATH),
            RawBatchCodec,
        )
        .await
    }

    /// Records one event, retrying transient failures. The server's refusal of the
    /// event (INVALID_ARGUMENT naming the field) is returned as [`Error::Rpc`].
    pub async fn record(&self, mut event: Event) -> Result<Receipt> {
        if event.event_id.is_empty() {
            event.event_id = uuid::Uuid::new_v4().to_string();
        }
        let tenant_id = event.tenant_id.clone();
        let response = self
            .call_with_retries(Some(&tenant_id), |mut trail, timeout| {
                let mut request = Request::new(RecordRequest {
                    event: Some(event.clone()),
                });
                request.set_timeout(timeout);
                async move { trail.record(request).await }
            })
            .await?;
        response
            .receipt
            .ok_or_else(|| Error::Protocol("Record answered without a receipt".to_string()))
    }

    /// Reads one event. NOT_FOUND becomes [`Error::NotFound`].
    pub async fn get_event(&self, tenant_id: &str, event_id: &str) -> Result<StoredEvent> {
        let found = self
            .call_with_retries(Some(tenant_id), |mut trail, timeout| {
                let mut request = Request::new(GetEventRequest {
                    tenant_id: tenant_id.to_string(),
                    event_id: event_id.to_string(),
                    ..GetEventRequest::default()
                });
                request.set_timeout(timeout);
                async move { trail.get_event(request).await }
            })
            .await;
        match found {
            Ok(response) => response
                .event
                .ok_or_else(|| Error::Protocol("GetEvent answered without an event".to_string())),
            Err(status) if status.code() == Code::NotFound => Err(Error::NotFound {
                tenant_id: tenant_id.to_string(),
                event_id: event_id.to_string(),
            }),
            Err(status) => Err(Error::from(status)),
        }
    }

    /// Events of the tenant's first stream with `seq > after_seq`, at most `limit`
    /// (0 = the server's default of 100; the server caps at 1,000).
    pub async fn tail(&self, tenant_id: &str, after_seq: u64, limit: u32) -> Result<TailResponse> {
        self.tail_request(TailRequest {
            tenant_id: tenant_id.to_string(),
            after_seq,
            limit,
            stream: String::new(),
            ..TailRequest::default()
        })
        .await
    }

    /// [`Client::tail`] with every field of the request, e.g. a named stream.
    pub async fn tail_request(&self, tail: TailRequest) -> Result<TailResponse> {
        let response = self
            .call_with_retries(Some(&tail.tenant_id), |mut trail, timeout| {
                let mut request = Request::new(tail.clone());
                request.set_timeout(timeout);
                async move { trail.tail(request).await }
            })
            .await?;
        Ok(response)
    }

    /// One page of a tenant's events matching a filter (docs/QUERY.md). Pass the
    /// response's `next_cursor` as the next request's `cursor`, with the same tenant,
    /// filter and order, until it comes back empty. A page may hold fewer than `limit`
    /// events, even none, when the node stopped at its bound on events examined per
    /// request (`partial`); the cursor then continues the scan. Retried like other reads;
    /// a refused filter or cursor is INVALID_ARGUMENT naming the field.
    pub async fn query(&self, query: QueryRequest) -> Result<QueryResponse> {
        let response = self
            .call_with_retries(Some(&query.tenant_id), |mut trail, timeout| {
                let mut request = Request::new(query.clone());
                request.set_timeout(timeout);
                async move { trail.query(request).await }
            })
            .await?;
        Ok(response)
    }

    /// How many of a tenant's events match a filter (from the node's indexes).
    pub async fn count(&self, count: CountRequest) -> Result<u64> {
        let response = self
            .call_with_retries(Some(&count.tenant_id), |mut trail, timeout| {
                let mut request = Request::new(count.clone());
                request.set_timeout(timeout);
                async move { trail.count(request).await }
            })
            .await?;
        Ok(response.count)
    }

    /// Records an export in the tenant's own log (`audit_log.export`: who, what it
    /// selects, the format) before it is read; the record's receipt, or `None` when the
    /// node does not record reads.
    pub async fn record_export(
        &self,
        tenant_id: &str,
        filter: trail_proto::v1::QueryFilter,
        format: &str,
    ) -> Result<Option<Receipt>> {
        let export = trail_proto::v1::RecordExportRequest {
            tenant_id: tenant_id.to_string(),
            filter: Some(filter),
            format: format.to_string(),
        };
        let response = self
            .call_with_retries(Some(tenant_id), |mut trail, timeout| {
                let mut request = Request::new(export.clone());
                request.set_timeout(timeout);
                async move { trail.record_export(request).await }
            })
            .await?;
        Ok(response.receipt)
    }

    /// Asks the node to rebuild its query indexes from its store; returns the number of
    /// events to index. Progress is in [`Client::status`].
    pub async fn reindex(&self) -> Result<u64> {
        let response = self
            .call_with_retries(None, |mut trail, timeout| {
                let mut request = Request::new(trail_proto::v1::ReindexRequest {});
                request.set_timeout(timeout);
                async move { trail.reindex(request).await }
            })
            .await?;
        Ok(response.events)
    }

    /// The node's identity, memory and per-shard consensus state.
    pub async fn status(&self) -> Result<StatusResponse> {
        let response = self
            .call_with_retries(None, |mut trail, timeout| {
                let mut request = Request::new(StatusRequest {});
                request.set_timeout(timeout);
                async move { trail.status(request).await }
            })
            .await?;
        Ok(response)
    }

    /// The signed checkpoint of a tenant's stream (`stream_index` 0 is the first): of
    /// exactly `tree_size` blocks, or the latest when `tree_size` is 0. With `seal_now`
    /// (and `tree_size` 0) the node first seals the open block and signs a checkpoint
    /// covering every event recorded so far. Nothing is verified here: the note is the
    /// authority, see [`crate::checkpoint::Checkpoint::from_note`].
    /// One page of the node's tenants' streams, in tenant id order.
    pub async fn list_streams(
        &self,
        after_tenant_id: &str,
        limit: u32,
    ) -> Result<ListStreamsResponse> {
        let response = self
            .call_with_retries(None, |mut trail, timeout| {
                let mut request = Request::new(ListStreamsRequest {
                    after_tenant_id: after_tenant_id.to_string(),
                    limit,
                });
                request.set_timeout(timeout);
                async move { trail.list_streams(request).await }
            })
            .await?;
        Ok(response)
    }

    pub async fn get_checkpoint(
        &self,
        tenant_id: &str,
        stream_index: u32,
        tree_size: u64,
        seal_now: bool,
    ) -> Result<GetCheckpointResponse> {
        let response = self
            .call_with_retries(Some(tenant_id), |mut trail, timeout| {
                let mut request = Request::new(GetCheckpointRequest {
                    tenant_id: tenant_id.to_string(),
                    stream_index,
                    tree_size,
                    seal_now,
                });
                request.set_timeout(timeout);
                async move { trail.get_checkpoint(request).await }
            })
            .await?;
        if response.checkpoint.is_none() {
            return Err(Error::Protocol(
                "GetCheckpoint answered without a checkpoint".to_string(),
            ));
        }
        Ok(response)
    }

    /// One sealed block: its header, and its events' canonical bytes when `with_events`.
    pub async fn get_block(
        &self,
        tenant_id: &str,
        stream_index: u32,
        block_index: u64,
        with_events: bool,
    ) -> Result<Block> {
        let response = self
            .call_with_retries(Some(tenant_id), |mut trail, timeout| {
                let mut request = Request::new(GetBlockRequest {
                    tenant_id: tenant_id.to_string(),
                    stream_index,
                    block_index,
                    with_events,
                });
                request.set_timeout(timeout);
                async move { trail.get_block(request).await }
            })
            .await?;
        response
            .block
            .ok_or_else(|| Error::Protocol("GetBlock answered without a block".to_string()))
    }

    /// Sealed blocks `from_block ..` (before `to_block`; 0 = through the last sealed
    /// block), in order, with their events' canonical bytes when `with_events`.
    ///
    /// A stream of millions of events outlives any deadline, so the call has none;
    /// instead each block must arrive within the RPC timeout. When the stream breaks on
    /// a transient failure (UNAVAILABLE, a dropped connection, a stalled stream), it is
    /// reopened after the last block received, up to the retry policy's attempts: the
    /// caller sees every block once, in order. Nothing is verified here (see
    /// [`crate::audit::Auditor`]).
    pub async fn list_blocks(
        &self,
        tenant_id: &str,
        stream_index: u32,
        from_block: u64,
        to_block: u64,
        with_events: bool,
    ) -> Result<BlockStream> {
        let request = ListBlocksRequest {
            tenant_id: tenant_id.to_string(),
            stream_index,
            from_block,
            to_block,
            with_events,
        };
        let (first, route) = self.open_list_blocks(&request).await?;
        let state = ListBlocksState {
            client: self.clone(),
            request,
            streaming: Some(first),
            route,
            blocks_received: 0,
            resumes: 0,
            done: false,
        };
        Ok(Box::pin(futures::stream::unfold(state, next_listed_block)))
    }

    /// Opens a `ListBlocks` stream; also returns where it goes, to fail over from
    /// there if the stream breaks.
    async fn open_list_blocks(
        &self,
        list: &ListBlocksRequest,
    ) -> Result<(Streaming<Block>, Route)> {
        let opened = self
            .call_routed(Some(&list.tenant_id), |mut trail, timeout| {
                // No grpc-timeout: it would bound the whole stream. Only the wait for the
                // response headers is bounded here, and each block's in the stream.
                let request = Request::new(list.clone());
                async move {
                    match tokio::time::timeout(timeout, trail.list_blocks(request)).await {
                        Ok(opened) => opened,
                        Err(_) => Err(Status::deadline_exceeded(format!(
                            "ListBlocks did not answer within {} s",
                            timeout.as_secs()
                        ))),
                    }
                }
            })
            .await?;
        Ok(opened)
    }

    /// The inclusion proof of one event, against the checkpoint of `tree_size` blocks or,
    /// with 0, the latest (the node seals and signs one first if none covers the event).
    /// NOT_FOUND becomes [`Error::NotFound`] when `tree_size` is 0. Nothing is verified here: see
    /// [`crate::bundle::verify_bundle`].
    pub async fn get_proof(
        &self,
        tenant_id: &str,
        event_id: &str,
        tree_size: u64,
    ) -> Result<GetProofResponse> {
        let found = self
            .call_with_retries(Some(tenant_id), |mut trail, timeout| {
                let mut request = Request::new(GetProofRequest {
                    tenant_id: tenant_id.to_string(),
                    event_id: event_id.to_string(),
                    tree_size,
                });
                request.set_timeout(timeout);
                async move { trail.get_proof(request).await }
            })
            .await;
        match found {
            Ok(response) => {
                if response.block.is_none() || response.checkpoint.is_none() {
                    return Err(Error::Protocol(
                        "GetProof answered without a block or a checkpoint".to_string(),
                    ));
                }
                Ok(response)
            }
            // With a tree size, NOT_FOUND may mean "no checkpoint of that size": the
            // server's message says which.
            Err(status) if status.code() == Code::NotFound && tree_size == 0 => {
                Err(Error::NotFound {
                    tenant_id: tenant_id.to_string(),
                    event_id: event_id.to_string(),
                })
            }
            Err(status) => Err(Error::from(status)),
        }
    }

    /// The RFC 9162 consistency proof between the stream trees of `from_size` and
    /// `to_size` blocks (0 = the latest checkpoint), with the signed checkpoint of the
    /// larger. Nothing is verified here: see [`crate::verify::verify_consistency`].
    pub async fn get_consistency_proof(
        &self,
        tenant_id: &str,
        stream_index: u32,
        from_size: u64,
        to_size: u64,
    ) -> Result<GetConsistencyProofResponse> {
        let response = self
            .call_with_retries(Some(tenant_id), |mut trail, timeout| {
                let mut request = Request::new(GetConsistencyProofRequest {
                    tenant_id: tenant_id.to_string(),
                    stream_index,
                    from_size,
                    to_size,
                });
                request.set_timeout(timeout);
                async move { trail.get_consistency_proof(request).await }
            })
            .await?;
        if response.to.is_none() {
            return Err(Error::Protocol(
                "GetConsistencyProof answered without a checkpoint".to_string(),
            ));
        }
        Ok(response)
    }

    /// Creates an API key (needs an admin key) and returns it with its token, which the
    /// node never shows again. Sent once, never retried: a retry after a lost answer
    /// would create a second key whose token nobody holds.
    pub async fn create_api_key(
        &self,
        create: CreateApiKeyRequest,
    ) -> Result<CreateApiKeyResponse> {
        let route = self.endpoints.route(None);
        let mut trail = route.node.trail.clone();
        let mut request = Request::new(create);
        request.set_timeout(self.options.rpc_timeout);
        let response = trail.create_api_key(request).await?.into_inner();
        if response.key.is_none() || response.token.is_empty() {
            return Err(Error::Protocol(
                "CreateApiKey answered without a key or a token".to_string(),
            ));
        }
        Ok(response)
    }

    /// The node's API keys (needs an admin key); revoked and expired ones too with
    /// `include_inactive`.
    pub async fn list_api_keys(&self, include_inactive: bool) -> Result<Vec<ApiKey>> {
        let response = self
            .call_with_retries(None, |mut trail, timeout| {
                let mut request = Request::new(ListApiKeysRequest { include_inactive });
                request.set_timeout(timeout);
                async move { trail.list_api_keys(request).await }
            })
            .await?;
        Ok(response.keys)
    }

    /// Revokes an API key (needs an admin key); every node refuses it within a
    /// second. Retried like the reads: revoking twice is revoking once.
    pub async fn revoke_api_key(&self, key_id: &str) -> Result<ApiKey> {
        let response = self
            .call_with_retries(None, |mut trail, timeout| {
                let mut request = Request::new(RevokeApiKeyRequest {
                    key_id: key_id.to_string(),
                });
                request.set_timeout(timeout);
                async move { trail.revoke_api_key(request).await }
            })
            .await?;
        response
            .key
            .ok_or_else(|| Error::Protocol("RevokeApiKey answered without a key".to_string()))
    }

    /// Runs a unary call, retrying transient failures with backoff, each attempt on
    /// the route [`EndpointSet::route`] picks for `tenant_id` (`None` for calls about no
    /// one tenant). Safe for the reads and for `Record`, whose event carries its
    /// idempotency key.
    async fn call_with_retries<T, F, Fut>(
        &self,
        tenant_id: Option<&str>,
        call: F,
    ) -> Result<T, Status>
    where
        F: FnMut(TrailClient<AuthChannel>, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let (response, _route) = self.call_routed(tenant_id, call).await?;
        Ok(response)
    }

    /// [`Client::call_with_retries`], also returning the route that answered.
    async fn call_routed<T, F, Fut>(
        &self,
        tenant_id_given: Option<&str>,
        mut call: F,
    ) -> Result<(T, Route), Status>
    where
        F: FnMut(TrailClient<AuthChannel>, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let tenant_id = tenant_id_given.filter(|tenant_id| !tenant_id.is_empty());
        let mut failed: Vec<Arc<str>> = Vec::new();
        let mut attempt: u32 = 0;
        loop {
            let route = self.endpoints.route(tenant_id);
            let outcome = call(route.node.trail.clone(), self.options.rpc_timeout).await;
            attempt += 1;
            let status = match outcome {
                Ok(response) => {
                    self.endpoints
                        .learn_leader(tenant_id, &route, response.metadata(), &failed);
                    return Ok((response.into_inner(), route));
                }
                Err(status) => status,
            };
            let retry = self.after_failure(tenant_id, &route, &status, &mut failed);
            if !retry || attempt >= self.options.retry.attempts_max {
                return Err(status);
            }
            self.counters
                .request_retries
                .fetch_add(1, Ordering::Relaxed);
            let delay = self
                .options
                .retry
                .backoff_delay(attempt - 1, 0, rand::random::<f64>());
            tokio::time::sleep(delay).await;
        }
    }

    /// After an attempt on `route` failed with `status`: fails over from a node that
    /// failed transiently, follows a leader the status names, and says whether the
    /// call is worth another attempt. `failed` collects the nodes that failed during
    /// this call (at most one entry per node).
    fn after_failure(
        &self,
        tenant_id: Option<&str>,
        route: &Route,
        status: &Status,
        failed: &mut Vec<Arc<str>>,
    ) -> bool {
        let retryable = is_retryable_status(status);
        if retryable {
            self.endpoints.report_failure(tenant_id, route);
            if !failed.contains(&route.node.uri) {
                failed.push(route.node.uri.clone());
            }
        }
        // A node that will not serve the tenant and names its leader: the request was
        // not acted on, so sending it there is safe whatever the status code.
        let redirected = self
            .endpoints
            .learn_leader(tenant_id, route, status.metadata(), failed);
        retryable || redirected
    }
}

/// Where a [`Client::list_blocks`] stream is.
struct ListBlocksState {
    client: Client,
    /// The original request; a reopened stream starts `blocks_received` later.
    request: ListBlocksRequest,
    streaming: Option<Streaming<Block>>,
    /// Where the open stream goes.
    route: Route,
    blocks_received: u64,
    /// Reopens so far, bounded by the retry policy's attempts.
    resumes: u32,
    done: bool,
}

/// The next block, reopening the stream after a transient failure.
async fn next_listed_block(mut state: ListBlocksState) -> Option<(Result<Block>, ListBlocksState)> {
    loop {
        if state.done {
            return None;
        }
        let next_block = state.request.from_block + state.blocks_received;
        let Some(streaming) = state.streaming.as_mut() else {
            if state.request.to_block != 0 && next_block >= state.request.to_block {
                return None;
            }
            let resumed = ListBlocksRequest {
                from_block: next_block,
                ..state.request.clone()
            };
            match state.client.open_list_blocks(&resumed).await {
                Ok((streaming, route)) => {
                    state.streaming = Some(streaming);
                    state.route = route;
                }
                Err(error) => {
                    state.done = true;
                    return Some((Err(error), state));
                }
            }
            continue;
        };
        let timeout = state.client.options.rpc_timeout;
        let received = match tokio::time::timeout(timeout, streaming.message()).await {
            Ok(received) => received,
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no block within {} s on the ListBlocks stream",
                timeout.as_secs()
            ))),
        };
        match received {
            Ok(Some(block)) => {
                state.blocks_received += 1;
                return Some((Ok(block), state));
            }
            Ok(None) => {
                state.done = true;
                return None;
            }
            Err(status)
                if is_retryable_status(&status)
                    && state.resumes + 1 < state.client.options.retry.attempts_max =>
            {
                state.streaming = None;
                // The reopened stream goes to the next endpoint (or, from a leader
                // that failed, to the list).
                state
                    .client
                    .endpoints
                    .report_failure(Some(&state.request.tenant_id), &state.route);
                state
                    .client
                    .counters
                    .request_retries
                    .fetch_add(1, Ordering::Relaxed);
                let delay = state.client.options.retry.backoff_delay(
                    state.resumes,
                    0,
                    rand::random::<f64>(),
                );
                state.resumes += 1;
                tokio::time::sleep(delay).await;
            }
            Err(status) => {
                state.done = true;
                return Some((Err(Error::from(status)), state));
            }
        }
    }
}

/// Whether a batch answer refused some event as UNAVAILABLE: its shard had no leader
/// where it was served (an election), so the leader may have moved.
fn has_unavailable_event(answer: &RecordBatchResponse) -> bool {
    answer.outcomes.iter().any(|outcome| {
        matches!(&outcome.outcome, Some(Outcome::Error(error)) if error.code == "UNAVAILABLE")
    })
}

/// The batch's events, decoding them from the first request body on first use.
fn events_or_decode<'a>(
    events: &'a mut Option<Vec<Event>>,
    first_body: &Bytes,
) -> Result<&'a [Event]> {
    if events.is_none() {
        let request = trail_proto::v1::RecordBatchRequest::decode(first_body.clone())
            .map_err(|error| Error::Protocol(format!("batch body does not decode: {error}")))?;
        *events = Some(request.events);
    }
    Ok(events.as_deref().unwrap_or_default())
}

/// Sends a pre-encoded `RecordBatchRequest` body as is and decodes the response.
#[derive(Clone, Copy, Debug, Default)]
struct RawBatchCodec;

#[derive(Debug)]
struct RawBodyEncoder;

#[derive(Debug)]
struct RecordBatchResponseDecoder;

impl Codec for RawBatchCodec {
    type Encode = Bytes;
    type Decode = RecordBatchResponse;
    type Encoder = RawBodyEncoder;
    type Decoder = RecordBatchResponseDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        RawBodyEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        RecordBatchResponseDecoder
    }
}

impl Encoder for RawBodyEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RecordBatchResponseDecoder {
    type Item = RecordBatchResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<RecordBatchResponse>, Status> {
        RecordBatchResponse::decode(src).map(Some).map_err(|error| {
            Status::internal(format!("RecordBatchResponse does not decode: {error}"))
        })
    }
}
/// Checks each deduplicated receipt of `answer` against the event it answers
/// (`sent[i]` is the batch position of outcome `i`): the leaf hash of the event as sent,
/// at the receipt's stream, seq and `ingested_at`, must be the receipt's. A receipt
/// that differs is not this event's (its id was recorded before with another event,
/// which a node refuses with ALREADY_EXISTS, or the receipt was altered on the way):
/// its outcome becomes ALREADY_EXISTS on `event_id` rather than a claim that the event
/// is in the ledger. The events are decoded from `first_body` only when a
/// deduplicated receipt comes (a retry), so a first send costs nothing here.
fn check_deduplicated_receipts(
    answer: &mut RecordBatchResponse,
    sent: &[usize],
    events: &mut Option<Vec<Event>>,
    first_body: &Bytes,
) -> Result<()> {
    use trail_proto::v1::record_outcome::Outcome;
    let checkable = |outcome: &trail_proto::v1::RecordOutcome| {
        matches!(&outcome.outcome, Some(Outcome::Receipt(receipt))
            if receipt.deduplicated && receipt.ingested_at_ns != 0)
    };
    if !answer.outcomes.iter().any(checkable) {
        return Ok(());
    }
    let decoded = events_or_decode(events, first_body)?;
    for (index, outcome) in answer.outcomes.iter_mut().enumerate() {
        let Some(Outcome::Receipt(receipt)) = &outcome.outcome else {
            continue;
        };
        if !receipt.deduplicated || receipt.ingested_at_ns == 0 {
            continue;
        }
        let Some(event) = sent.get(index).and_then(|&position| decoded.get(position)) else {
            continue;
        };
        let expected = crate::event::expected_leaf_hash(event, receipt);
        if expected.is_some_and(|expected| expected[..] == receipt.leaf_hash[..]) {
            continue;
        }
        let message = format!(
            "event_id {:?} is recorded (stream {}, seq {}) with a leaf hash that is not this \
             event's: the id was used before for a different event",
            receipt.event_id, receipt.stream, receipt.seq
        );
        let event_id = receipt.event_id.clone();
        answer.deduplicated = answer.deduplicated.saturating_sub(1);
        answer.rejected += 1;
        outcome.outcome = Some(Outcome::Error(trail_proto::v1::EventError {
            index: index as u32,
            event_id,
            code: "ALREADY_EXISTS".to_string(),
            field: "event_id".to_string(),
            message,
        }));
    }
    Ok(())
}
