//! `traild`: runs one Trail node.
//!
//! Threads: a multi-thread tokio runtime for gRPC, openraft and the data path; one actix
//! thread for the actors (node, shards) and the HTTP endpoint; fjall's workers; one
//! fsync thread.

use std::sync::Arc;

use actix_web::{web, App, HttpServer};
use clap::Parser;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use trail_node::api::limits::{limit_connections, InflightBytesLayer};
use trail_node::api::{grpc::TrailService, http};
use trail_node::clock::SystemClock;
use trail_node::config::{Flags, LogFormat, NodeConfig, GRPC_MESSAGE_BYTES_MAX};
use trail_node::consensus::network::RaftService;
use trail_node::node;
use trail_proto::v1::trail_server::TrailServer;

/// glibc malloc spent ~15% of the node's CPU in malloc_consolidate under ingest (many
/// short-lived event buffers across threads); mimalloc does not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// gRPC requests in progress per client connection; more wait in HTTP/2 flow control.
const GRPC_REQUESTS_PER_CONNECTION_MAX: usize = 64;

/// HTTP/2 streams a client may open per connection (SETTINGS_MAX_CONCURRENT_STREAMS):
/// twice the requests served at once, so a pipelining client keeps its connection
/// busy; more are refused by the client's own HTTP/2 stack, not queued here.
const GRPC_STREAMS_PER_CONNECTION_MAX: u32 = 2 * GRPC_REQUESTS_PER_CONNECTION_MAX as u32;

/// Client connections open at once (api/limits.rs). Each costs a file descriptor and
/// ~100 KiB of HTTP/2 state: 1,024 is ~100 MB, and the default soft limit of open
/// files is 1,024 too (raise both together; the store needs descriptors of its own).
const GRPC_CONNECTIONS_MAX: usize = 1_024;

/// Longest time a gRPC request may take to be answered (a streaming one: until its
/// response starts). The slowest legitimate ones wait seconds (an ack under
/// backpressure, a read barrier across an election); past this the client is answered
/// CANCELLED ("Timeout expired") and retries, and the request's memory is freed.
const GRPC_REQUEST_TIME_MAX: std::time::Duration = std::time::Duration::from_secs(120);

/// REST connections open at once on the HTTP worker (actix's default is 25,000): as
/// many as gRPC's, for the same reasons (GRPC_CONNECTIONS_MAX).
const HTTP_CONNECTIONS_MAX: usize = 1_024;

/// Time a REST client has to send its request line and headers (slowloris).
const HTTP_REQUEST_HEAD_TIME_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// An idle keep-alive REST connection is closed after this.
const HTTP_KEEP_ALIVE_IDLE_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// Largest REST request body read: every route is a GET and takes none.
const HTTP_BODY_BYTES_MAX: usize = 4 << 10;

/// Largest block of request headers (HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE): ours are a
/// few hundred bytes (actor, user agent, forwarding marks); hyper's default is 16 MiB.
const GRPC_HEADER_LIST_BYTES_MAX: u32 = 64 << 10;

fn main() -> std::process::ExitCode {
    without_transparent_huge_pages();
    let flags = Flags::parse();
    let config = match NodeConfig::resolve(flags) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("traild: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    init_logging(&config);

    match run(config) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("traild: {error:#}");
            std::process::ExitCode::from(1)
        }
    }
}

/// Log lines go to stderr. Colours only when stderr is a terminal: in a file or a pipe
/// (`traild 2> node.log`, systemd, a container runtime) escape codes are noise to grep
/// and to log shippers. `--log-format json` writes one JSON object per line.
fn init_logging(config: &NodeConfig) {
    use std::io::IsTerminal;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

/// Turns transparent huge pages off for this process, unless `MIMALLOC_ALLOW_THP` says
/// otherwise. mimalloc asks for them on its arenas (`MADV_HUGEPAGE`), so the first
/// touch of each 2 MiB region has the kernel zero a whole huge page: at a cold start
/// that is ~75% of the node's CPU, and the first calls wait 40-80 ms instead of
/// ~10. Regular pages cost a fault per 4 KiB touched and more TLB misses (steady
/// ingest takes ~8% more CPU per event), but fewer calls stall and peak RSS is a
/// sixth lower (docs/bench/history/ack-latency.md, "A cold node's first calls:
/// transparent huge pages"). mimalloc does the same when
/// `MIMALLOC_ALLOW_THP=0`, but reads that before `main`, so it cannot be set here.
fn without_transparent_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_THP_DISABLE) takes plain integers and only sets a flag of
    // this process's memory map; on failure huge pages stay as they were (harmless).
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

fn run(config: NodeConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("trail-worker")
        .build()?;

    // The actors' thread: an actix System, stopped at the end of shutdown.
    let (handles_sender, handles_receiver) = std::sync::mpsc::channel();
    let actix_thread = std::thread::Builder::new()
        .name("trail-actors".into())
        .spawn(move || {
            let system = actix_rt::System::new();
            let _ =
                handles_sender.send((actix_rt::System::current(), actix_rt::Arbiter::current()));
            system.run()
        })?;
    let (system, arbiter) = handles_receiver.recv()?;

    let result = runtime.block_on(serve(config, arbiter));
    system.stop();
    let _ = actix_thread.join();
    result
}

async fn serve(config: NodeConfig, arbiter: actix_rt::ArbiterHandle) -> anyhow::Result<()> {
    let grpc_listener = TcpListener::bind(config.grpc_addr)
        .await
        .map_err(|error| anyhow::anyhow!("grpc_addr {}: {error}", config.grpc_addr))?;
    let http_listener = std::net::TcpListener::bind(config.http_addr)
        .map_err(|error| anyhow::anyhow!("http_addr {}: {error}", config.http_addr))?;
    // A cluster node's Raft transport has a listener of its own; a single node has none.
    let peer_listener = match config.peer_addr {
        None => None,
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|error| anyhow::anyhow!("peer_addr {addr}: {error}"))?,
        ),
    };

    let node = node::start(config.clone(), Arc::new(SystemClock), &arbiter).await?;
    let shard_count = node.router.shards().len();

    // HTTP runs on the actix thread.
    let (http_sender, http_receiver) = tokio::sync::oneshot::channel();
    let http_node = node.clone();
    arbiter.spawn(async move {
        let data = web::Data::new(http_node);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                // Every route is a GET: no body is read; one that is would be cut here.
                .app_data(web::PayloadConfig::new(HTTP_BODY_BYTES_MAX))
                .configure(http::configure)
        })
        .workers(1)
        .max_connections(HTTP_CONNECTIONS_MAX)
        .client_request_timeout(HTTP_REQUEST_HEAD_TIME_MAX)
        .keep_alive(HTTP_KEEP_ALIVE_IDLE_MAX)
        .disable_signals()
        .listen(http_listener)
        .map(|server| server.run());
        match server {
            Ok(server) => {
                let _ = http_sender.send(Ok(server.handle()));
                let _ = server.await;
            }
            Err(error) => {
                let _ = http_sender.send(Err(error));
            }
        }
    });
    let http_handle = http_receiver.await??;

    let service = TrailServer::new(TrailService::new(node.clone()))
        .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX);
    let inflight = InflightBytesLayer::new(config.inflight_request_bytes);
    let (stop_grpc, grpc_stopped) = tokio::sync::oneshot::channel::<()>();
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            // Requests decoded and waiting for their shards, per connection: with batches
            // of ~5 MB this bounds one connection's share of memory to ~320 MB before the
            // shard queues' own byte budgets apply.
            .concurrency_limit_per_connection(GRPC_REQUESTS_PER_CONNECTION_MAX)
            .max_concurrent_streams(GRPC_STREAMS_PER_CONNECTION_MAX)
            .http2_max_header_list_size(GRPC_HEADER_LIST_BYTES_MAX)
            .timeout(GRPC_REQUEST_TIME_MAX)
            // A peer that stops answering pings (gone, or a half-open connection) is
            // dropped within 30 s, and its connection slot freed.
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
            // Request bytes held over all connections (--inflight-request-mib).
            .layer(inflight)
            .add_service(service)
            .serve_with_incoming_shutdown(
                limit_connections(incoming_nodelay(grpc_listener), GRPC_CONNECTIONS_MAX),
                async {
                    let _ = grpc_stopped.await;
                },
            ),
    );
    // Raft from the other nodes only: never on the client port.
    let (stop_peer, peer_stopped) = tokio::sync::oneshot::channel::<()>();
    let peer = match (peer_listener, &config.cluster) {
        (Some(listener), Some(cluster)) => Some(tokio::spawn(
            tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
                .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
                .add_service(
                    RaftService {
                        cluster_id: cluster.cluster_id.clone(),
                        node: config.node_id,
                        groups: node.groups.clone(),
                    }
                    .into_server(),
                )
                .serve_with_incoming_shutdown(incoming_nodelay(listener), async {
                    let _ = peer_stopped.await;
                }),
        )),
        _ => None,
    };

    let shards = match (&config.cluster, node.router.map()) {
        (None, _) => format!("{} shards", shard_count.saturating_sub(1)),
        (Some(_), Some(map)) => format!(
            "cluster node, {} of {} data shards here",
            shard_count.saturating_sub(1),
            map.shards
        ),
        (Some(_), None) => {
            "cluster node, waiting for `trailctl cluster init` (metadata shard only)".to_string()
        }
    };
    // The banner is for a person on stdout; with `--log-format json` it is one log
    // event like every other line, so a shipper reading both streams gets JSON only.
    if config.log_format == LogFormat::Json {
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            node_id = config.node_id,
            shards = %shards,
            data_dir = %config.data_dir.display(),
            grpc_addr = %config.grpc_addr,
            http_addr = %config.http_addr,
            peer_addr = ?config.peer_addr,
            "ready"
        );
    } else {
        println!(
            "traild {} node {}: {shards}, data in {}",
            env!("CARGO_PKG_VERSION"),
            config.node_id,
            config.data_dir.display()
        );
        println!("  gRPC  {}", config.grpc_addr);
        println!(
            "  HTTP  http://{} (REST /api/v1/tenants/{{tenant}}/audit-logs, /health, /metrics)",
            config.http_addr
        );
        if let Some(addr) = config.peer_addr {
            println!("  peer  {addr} (Raft from the other nodes; keep it on a private network)");
        }
        let token_file = node::keys::admin_token_path(&config.data_dir);
        if token_file.exists() {
            println!(
                "  admin token in {} (trailctl --token-file {0}; keep it secret)",
                token_file.display()
            );
        }
        println!("ready");
    }

    wait_for_signal().await;
    tracing::info!("shutting down: acknowledging queued events, then flushing");
    // Shards first: they stop taking events and ack what they hold, so the RPCs still
    // running get their answers before the server closes.
    let stopped = node.stop().await;
    let _ = stop_grpc.send(());
    let _ = grpc.await;
    let _ = stop_peer.send(());
    if let Some(peer) = peer {
        let _ = peer.await;
    }
    http_handle.stop(true).await;
    stopped?;
    if config.log_format == LogFormat::Json {
        tracing::info!("stopped");
    } else {
        println!("stopped");
    }
    Ok(())
}

async fn wait_for_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Accepted gRPC connections with Nagle's algorithm off. tonic's `tcp_nodelay` applies
/// only to listeners it binds itself; on ours, small responses waited for the peer's
/// delayed ACK (~40 ms per request on a reused connection).
fn incoming_nodelay(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}
