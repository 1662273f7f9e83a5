//! Bounds on what the network can make the node hold, below the gRPC service:
//!
//! - [`InflightBytesLayer`]: request bytes held at once, per node. Each gRPC message's
//!   length is read from its 5-byte prefix as it arrives, and that many bytes are taken
//!   from the node's budget before the message is buffered; when the budget is spent
//!   the request is answered RESOURCE_EXHAUSTED with a `retry-after-ms` hint (as a full
//!   ingest queue is) and its bytes are never buffered. A unary request keeps its bytes
//!   until it is answered; a streaming one keeps those of its latest message.
//! - [`limit_connections`]: client connections open at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures::Stream;
use http_body::{Body as HttpBody, Frame};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::Status;

use crate::config::GRPC_MESSAGE_BYTES_MAX;

/// The retry hint of a request refused for the in-flight budget: about the time the
/// node takes to ack and drop a few batches of ~5 MB.
pub const INFLIGHT_RETRY_AFTER_MS: u32 = 200;

/// Bytes of a gRPC message prefix: a compression flag and a big-endian u32 length.
const GRPC_PREFIX_BYTES: usize = 5;

/// The node's request-byte budget, shared by every connection.
#[derive(Clone)]
pub struct InflightBytesLayer {
    budget: Arc<Semaphore>,
    bytes_max: usize,
}

impl InflightBytesLayer {
    pub fn new(bytes_max: usize) -> InflightBytesLayer {
        InflightBytesLayer {
            budget: Arc::new(Semaphore::new(bytes_max)),
            bytes_max,
        }
    }

    /// Bytes taken now (for tests and metrics).
    pub fn held_bytes(&self) -> usize {
        self.bytes_max - self.budget.available_permits()
    }
}

impl<S> tower::Layer<S> for InflightBytesLayer {
    type Service = InflightBytes<S>;

    fn layer(&self, inner: S) -> InflightBytes<S> {
        InflightBytes {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct InflightBytes<S> {
    inner: S,
    layer: InflightBytesLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, ResBody> tower::Service<http::Request<Body>> for InflightBytes<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let held: Held = Arc::default();
        let layer = self.layer.clone();
        let body_held = held.clone();
        let request = request.map(move |body| {
            Body::new(CountedBody {
                inner: body,
                layer,
                held: body_held,
                prefix: [0; GRPC_PREFIX_BYTES],
                prefix_len: 0,
                payload_left: 0,
            })
        });
        let answered = self.inner.call(request);
        Box::pin(async move {
            let response = answered.await;
            // A unary request (its body read to the end before it was answered) is done
            // with its bytes; a streaming one keeps its latest message's until the next
            // one arrives or the stream ends.
            let mut held = held.lock().expect("held bytes lock");
            if held.body_ended {
                held.permit.take();
            }
            response
        })
    }
}

/// The budget taken by a request's latest message.
type Held = Arc<Mutex<HeldBytes>>;

#[derive(Default)]
struct HeldBytes {
    permit: Option<OwnedSemaphorePermit>,
    /// The request body was read to its end.
    body_ended: bool,
}

/// A request body that takes each message's bytes from the budget when its prefix
/// arrives.
struct CountedBody {
    inner: Body,
    layer: InflightBytesLayer,
    held: Held,
    prefix: [u8; GRPC_PREFIX_BYTES],
    prefix_len: usize,
    payload_left: usize,
}

impl CountedBody {
    /// Follows the message framing through `data`; takes the budget of each message
    /// whose prefix completes.
    fn account(&mut self, data: &Bytes) -> Result<(), Status> {
        let mut rest: &[u8] = data;
        while rest.has_remaining() {
            if self.payload_left > 0 {
                let skipped = self.payload_left.min(rest.len());
                rest.advance(skipped);
                self.payload_left -= skipped;
                continue;
            }
            let taken = (GRPC_PREFIX_BYTES - self.prefix_len).min(rest.len());
            self.prefix[self.prefix_len..self.prefix_len + taken].copy_from_slice(&rest[..taken]);
            rest.advance(taken);
            self.prefix_len += taken;
            if self.prefix_len < GRPC_PREFIX_BYTES {
                continue;
            }
            self.prefix_len = 0;
            let length = u32::from_be_bytes(self.prefix[1..].try_into().expect("4 bytes")) as usize;
            self.payload_left = length;
            if length > GRPC_MESSAGE_BYTES_MAX {
                // Refused here, before it is buffered, with the code gRPC gives a message
                // over the limit (tonic's decoder would say OUT_OF_RANGE once it has it).
                return Err(Status::resource_exhausted(format!(
                    "the message is {length} bytes; at most {GRPC_MESSAGE_BYTES_MAX} are \
                     accepted (a batch holds at most 10,000 events: split it)"
                )));
            }
            let bytes = length + GRPC_PREFIX_BYTES;
            // The previous message of a stream is decoded by now.
            let mut held = self.held.lock().expect("held bytes lock");
            held.permit.take();
            let permit = u32::try_from(bytes)
                .ok()
                .filter(|_| bytes <= self.layer.bytes_max)
                .and_then(|bytes| self.layer.budget.clone().try_acquire_many_owned(bytes).ok());
            match permit {
                Some(permit) => held.permit = Some(permit),
                None => return Err(over_budget(bytes, self.layer.bytes_max)),
            }
        }
        Ok(())
    }
}

fn over_budget(bytes: usize, bytes_max: usize) -> Status {
    tracing::warn!(
        request_bytes = bytes,
        inflight_bytes_max = bytes_max,
        "request refused: the node's in-flight request bytes are spent"
    );
    let mut status = Status::resource_exhausted(format!(
        "the node holds its maximum of request bytes in flight ({} MiB; this message is {} \
         bytes); retry after {INFLIGHT_RETRY_AFTER_MS} ms",
        bytes_max >> 20,
        bytes
    ));
    status.metadata_mut().insert(
        "retry-after-ms",
        INFLIGHT_RETRY_AFTER_MS.to_string().parse().expect("digits"),
    );
    status
}

impl HttpBody for CountedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(None) => {
                self.held.lock().expect("held bytes lock").body_ended = true;
                return Poll::Ready(None);
            }
            other => return other,
        };
        if frame.is_trailers() {
            self.held.lock().expect("held bytes lock").body_ended = true;
        }
        if let Some(data) = frame.data_ref() {
            if let Err(status) = self.account(data) {
                return Poll::Ready(Some(Err(status)));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Accepted connections of the client listener, at most `connections_max` open at
/// once: one over it is closed at once (its client sees the connection refused and
/// retries, as after a restart) rather than left waiting in the accept queue.
pub fn limit_connections<S>(
    accepted: S,
    connections_max: usize,
) -> impl Stream<Item = std::io::Result<LimitedConnection>>
where
    S: Stream<Item = std::io::Result<tokio::net::TcpStream>>,
{
    use futures::StreamExt;
    let slots = Arc::new(Semaphore::new(connections_max));
    accepted.filter_map(move |accepted| {
        let slot = slots.clone().try_acquire_owned();
        futures::future::ready(match (accepted, slot) {
            (Err(error), _) => Some(Err(error)),
            (Ok(stream), Ok(slot)) => Some(Ok(LimitedConnection {
                stream,
                _slot: slot,
            })),
            (Ok(stream), Err(_)) => {
                tracing::warn!(
                    peer = ?stream.peer_addr().ok(),
                    connections_max,
                    "connection refused: the node has its maximum of client connections open"
                );
                None
            }
        })
    })
}

/// A client connection holding its slot until it closes.
pub struct LimitedConnection {
    stream: tokio::net::TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for LimitedConnection {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl tokio::io::AsyncRead for LimitedConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for LimitedConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(messages: &[usize]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for &length in messages {
            bytes.push(0);
            bytes.extend_from_slice(&(length as u32).to_be_bytes());
            bytes.extend(std::iter::repeat_n(7u8, length));
        }
        bytes
    }

    fn counted(layer: &InflightBytesLayer) -> CountedBody {
        CountedBody {
            inner: Body::empty(),
            layer: layer.clone(),
            held: Arc::default(),
            prefix: [0; GRPC_PREFIX_BYTES],
            prefix_len: 0,
            payload_left: 0,
        }
    }

    #[test]
    fn a_message_takes_its_bytes_when_its_prefix_arrives_even_split() {
        let layer = InflightBytesLayer::new(1_000);
        let mut body = counted(&layer);
        let bytes = framed(&[100, 300]);
        // Split inside the first prefix and inside the second message.
        for chunk in [&bytes[..3], &bytes[3..50], &bytes[50..110], &bytes[110..]] {
            body.account(&Bytes::copy_from_slice(chunk)).unwrap();
        }
        // The stream's latest message only.
        assert_eq!(layer.held_bytes(), 305);
        drop(body);
        assert_eq!(layer.held_bytes(), 0);
    }

    #[test]
    fn a_message_over_the_budget_is_refused_with_a_retry_hint() {
        let layer = InflightBytesLayer::new(1_000);
        let mut first = counted(&layer);
        first
            .account(&Bytes::from(framed(&[600])[..GRPC_PREFIX_BYTES].to_vec()))
            .unwrap();
        let mut second = counted(&layer);
        let refused = second.account(&Bytes::from(framed(&[600]))).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.metadata().get("retry-after-ms").is_some());
        drop(first);
        second = counted(&layer);
        second.account(&Bytes::from(framed(&[600]))).unwrap();
    }
}
