//! The connection to a Trail node and its RPCs.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use trail_proto::v1::trail_client::TrailClient;
use trail_proto::v1::{
    Event, GetEventRequest, Receipt, RecordBatchResponse, RecordRequest, StatusRequest,
    StatusResponse, StoredEvent, TailRequest, TailResponse,
};

use crate::encoded_batch::{assign_missing_event_ids, encode_events, EncodedBatch};
use crate::error::{root_cause, Error, Result};
use crate::retry::{is_retryable_status, BatchProgress, RetryPolicy};

/// Largest response the client accepts. A full `Tail` page is 1,000 events of ~1 KiB
/// and a 10,000-event batch response ~1 MiB of receipts; 64 MiB leaves room for growth
/// while still refusing a runaway response.
const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;

const RECORD_BATCH_PATH: &str = "/trail.v1.Trail/RecordBatch";

/// Connection and retry settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientOptions {
    /// Deadline of one RPC attempt; sent to the server as `grpc-timeout` too.
    pub rpc_timeout: Duration,
    /// How long to wait for the TCP (and HTTP/2) connection.
    pub connect_timeout: Duration,
    pub retry: RetryPolicy,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            rpc_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
        }
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

/// A connection to one Trail node. Cheap to clone; clones share the HTTP/2 connection,
/// which multiplexes concurrent calls.
#[derive(Clone, Debug)]
pub struct Client {
    channel: Channel,
    trail: TrailClient<Channel>,
    options: ClientOptions,
    counters: Arc<RetryCounters>,
}

impl Client {
    /// Connects with [`ClientOptions::default`]. `endpoint` is a URI such as
    /// `http://127.0.0.1:7400`; a bare `host:port` is taken as `http://host:port`.
    pub async fn connect(endpoint: &str) -> Result<Client> {
        Client::connect_with(endpoint, ClientOptions::default()).await
    }

    pub async fn connect_with(endpoint: &str, options: ClientOptions) -> Result<Client> {
        let uri = if endpoint.contains("://") {
            endpoint.to_string()
        } else {
            format!("http://{endpoint}")
        };
        let configured = Endpoint::from_shared(uri.clone())
            .map_err(|transport| Error::InvalidEndpoint {
                endpoint: endpoint.to_string(),
                reason: root_cause(&transport),
            })?
            .connect_timeout(options.connect_timeout)
            // Pings keep idle connections through NATs and load balancers and detect a
            // dead peer within interval + timeout instead of at the next RPC deadline.
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        let channel = configured
            .connect()
            .await
            .map_err(|transport| Error::Connect {
                endpoint: uri,
                reason: root_cause(&transport),
                transport,
            })?;
        let trail = TrailClient::new(channel.clone()).max_decoding_message_size(RESPONSE_BYTES_MAX);
        Ok(Client {
            channel,
            trail,
            options,
            counters: Arc::new(RetryCounters::default()),
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
    /// Fails only when no attempt got an answer at all, or on a request-level error
    /// that is not transient (e.g. INVALID_ARGUMENT for the whole batch).
    pub async fn record_batch(&self, mut events: Vec<Event>) -> Result<RecordBatchResponse> {
        assign_missing_event_ids(&mut events);
        let body = encode_events(events.iter());
        self.drive_record_batch(body, events.len(), Some(events))
            .await
    }

    /// [`Client::record_batch`] for a batch encoded ahead of time.
    pub async fn record_batch_encoded(&self, batch: &EncodedBatch) -> Result<RecordBatchResponse> {
        self.drive_record_batch(batch.body(), batch.len(), None)
            .await
    }

    /// The retry loop. `events` may be `None` until a resend of a subset needs them;
    /// they are then decoded from `first_body`.
    async fn drive_record_batch(
        &self,
        first_body: Bytes,
        events_count: usize,
        events_given: Option<Vec<Event>>,
    ) -> Result<RecordBatchResponse> {
        if events_count == 0 {
            return Ok(RecordBatchResponse::default());
        }
        let mut events = events_given;
        let mut progress = BatchProgress::new(events_count);
        let mut attempt: u32 = 0;
        loop {
            let body = if attempt == 0 || progress.pending().len() == events_count {
                first_body.clone()
            } else {
                let decoded = events_or_decode(&mut events, &first_body)?;
                encode_events(progress.pending().iter().map(|&index| &decoded[index]))
            };
            let sent = self.send_record_batch(body).await;
            attempt += 1;
            let request_failure = match sent {
                Ok(response) => {
                    progress.merge(response)?;
                    None
                }
                Err(status) if is_retryable_status(&status) => Some(status),
                Err(status) => {
                    return self.abandon_batch(progress, status, &mut events, &first_body)
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
    async fn send_record_batch(&self, body: Bytes) -> Result<RecordBatchResponse, Status> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone())
            .max_decoding_message_size(RESPONSE_BYTES_MAX);
        grpc.ready()
            .await
            .map_err(|error| Status::unavailable(format!("channel not ready: {error}")))?;
        let mut request = Request::new(body);
        request.set_timeout(self.options.rpc_timeout);
        let response = grpc
            .unary(
                request,
                PathAndQuery::from_static(RECORD_BATCH_PATH),
                RawBatchCodec,
            )
            .await?;
        Ok(response.into_inner())
    }

    /// Records one event, retrying transient failures. The server's refusal of the
    /// event (INVALID_ARGUMENT naming the field) is returned as [`Error::Rpc`].
    pub async fn record(&self, mut event: Event) -> Result<Receipt> {
        if event.event_id.is_empty() {
            event.event_id = uuid::Uuid::new_v4().to_string();
        }
        let response = self
            .call_with_retries(|mut trail, timeout| {
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
            .call_with_retries(|mut trail, timeout| {
                let mut request = Request::new(GetEventRequest {
                    tenant_id: tenant_id.to_string(),
                    event_id: event_id.to_string(),
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
            Err(status) => Err(Error::Rpc(status)),
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
        })
        .await
    }

    /// [`Client::tail`] with every field of the request, e.g. a named stream.
    pub async fn tail_request(&self, tail: TailRequest) -> Result<TailResponse> {
        let response = self
            .call_with_retries(|mut trail, timeout| {
                let mut request = Request::new(tail.clone());
                request.set_timeout(timeout);
                async move { trail.tail(request).await }
            })
            .await?;
        Ok(response)
    }

    /// The node's identity, memory and per-shard consensus state.
    pub async fn status(&self) -> Result<StatusResponse> {
        let response = self
            .call_with_retries(|mut trail, timeout| {
                let mut request = Request::new(StatusRequest {});
                request.set_timeout(timeout);
                async move { trail.status(request).await }
            })
            .await?;
        Ok(response)
    }

    /// Runs a unary call, retrying transient failures with backoff. Safe for the reads
    /// and for `Record`, whose event carries its idempotency key.
    async fn call_with_retries<T, F, Fut>(&self, mut call: F) -> Result<T, Status>
    where
        F: FnMut(TrailClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut attempt: u32 = 0;
        loop {
            let outcome = call(self.trail.clone(), self.options.rpc_timeout).await;
            attempt += 1;
            match outcome {
                Ok(response) => return Ok(response.into_inner()),
                Err(status)
                    if is_retryable_status(&status)
                        && attempt < self.options.retry.attempts_max =>
                {
                    self.counters
                        .request_retries
                        .fetch_add(1, Ordering::Relaxed);
                    let delay =
                        self.options
                            .retry
                            .backoff_delay(attempt - 1, 0, rand::random::<f64>());
                    tokio::time::sleep(delay).await;
                }
                Err(status) => return Err(status),
            }
        }
    }
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
