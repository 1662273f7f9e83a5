//! tonic over turmoil's simulated TCP: a stream type both sides accept, a connector
//! for `Endpoint::connect_with_connector_lazy`, and the listener's stream of
//! connections for `Server::serve_with_incoming`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::TcpConnectInfo;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::Service;

/// The port every simulated node serves gRPC on (the Raft transport and `trail.v1`).
pub const GRPC_PORT: u16 = 7000;

/// A turmoil TCP stream as tonic's server and hyper's client want it.
pub struct SimStream(pub ::turmoil::net::TcpStream);

impl tonic::transport::server::Connected for SimStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        TcpConnectInfo {
            local_addr: self.0.local_addr().ok(),
            remote_addr: self.0.peer_addr().ok(),
        }
    }
}

impl AsyncRead for SimStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Connects a tonic channel through turmoil's TCP.
#[derive(Clone, Copy)]
pub struct SimConnector;

impl Service<Uri> for SimConnector {
    type Response = TokioIo<SimStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<SimStream>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(async move {
            let authority = uri
                .authority()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "uri has no host"))?
                .to_string();
            let stream = ::turmoil::net::TcpStream::connect(authority).await?;
            Ok(TokioIo::new(SimStream(stream)))
        })
    }
}

/// A lazily connected channel to `host`'s gRPC port. It reconnects after the peer
/// crashes. HTTP/2 keepalive finds a connection that a partition left dead (turmoil's
/// TCP does not retransmit, so such a connection never recovers by itself), and every
/// request has a deadline.
pub fn channel(host: &str, request_timeout: Duration) -> Channel {
    Endpoint::from_shared(format!("http://{host}:{GRPC_PORT}"))
        .expect("a valid uri")
        .connect_timeout(Duration::from_millis(500))
        .timeout(request_timeout)
        .http2_keep_alive_interval(Duration::from_millis(500))
        .keep_alive_timeout(Duration::from_millis(1_000))
        .keep_alive_while_idle(true)
        .connect_with_connector_lazy(SimConnector)
}

/// The connections a host accepts on its gRPC port.
pub fn incoming(
    listener: ::turmoil::net::TcpListener,
) -> impl Stream<Item = io::Result<SimStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| SimStream(stream));
        Some((accepted, listener))
    })
}
