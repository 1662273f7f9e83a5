//! `traild`'s configuration: flags, environment and an optional TOML file, in that order
//! of precedence. With none of them, one node with 4 shards keeps its data in
//! `./trail-data` and listens on 127.0.0.1:7400 (gRPC) and 127.0.0.1:7401 (HTTP).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use serde::Deserialize;

use crate::shard::BatchLimits;

/// Raft entries between snapshots on a single node: a single-replica group's snapshot
/// is only a marker (no other replica installs it), so it is cheap, and it bounds the
/// Raft log kept on disk (at the cluster's interval a single node's log holds 191
/// bytes/event at 10 M events). Every 100 rather than 500: more of the log is deleted
/// before its memtable is flushed, and the node wrote ~10% fewer bytes per event (1.06
/// against 1.17-1.19 GB per 1 M events at 64 x 20 in flight), with an ack p99 ~5 ms
/// lower on this disk (docs/bench/history/ack-latency.md, "Ack latency at 64 in flight: where
/// the p99 comes from").
pub const SNAPSHOT_LOGS_SINCE_LAST_SINGLE: u64 = 100;
/// Raft entries between snapshots in a cluster: each is a full copy of the shard.
pub const SNAPSHOT_LOGS_SINCE_LAST_CLUSTER: u64 = 20_000;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "traild",
    version,
    about = "Trail node: a tamper-evident, multi-tenant audit-log ledger",
    long_about = "Trail node: a tamper-evident, multi-tenant audit-log ledger.\n\n\
        With no arguments it runs a single node with embedded storage in ./trail-data,\n\
        gRPC on 127.0.0.1:7400 and HTTP (health, metrics) on 127.0.0.1:7401.\n\
        An acknowledged event is on disk (fsync) and survives kill -9 and power loss.",
    after_help = "Examples:\n  \
        traild                                   # single node, ./trail-data\n  \
        traild --data-dir /var/lib/trail --grpc-addr 0.0.0.0:7400\n  \
        traild --config trail.toml               # same keys as the flags, snake_case\n  \
        traild --node-id 1 --peers 1=10.0.0.7:7400,2=10.0.0.8:7400,3=10.0.0.9:7400\n  \
        # one node of three (Raft between them on port 7402, which must be on a\n  \
        # private network); then once: trailctl cluster init --shards 16 --replicas 3\n\n\
        Stop with SIGTERM or Ctrl-C: queued events are acknowledged and flushed first."
)]
pub struct Flags {
    /// TOML file with any of the settings below (flags win over the file).
    #[arg(long, env = "TRAIL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the node keeps its database and snapshots. Created if missing.
    #[arg(long, env = "TRAIL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the gRPC API (ingest, reads, status).
    #[arg(long, env = "TRAIL_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// Address of the HTTP endpoint (REST queries, /health, /metrics).
    #[arg(long, env = "TRAIL_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// This node's id in its cluster (stable across restarts).
    #[arg(long, env = "TRAIL_NODE_ID")]
    pub node_id: Option<u64>,
    /// Run as one node of a cluster: every node's id and gRPC address, the same list on
    /// each node, e.g. `1=10.0.0.7:7400,2=10.0.0.8:7400,3=10.0.0.9:7400`. A node's
    /// peer address (Raft) follows a `/`, e.g. `1=10.0.0.7:7400/10.0.0.7:7402`;
    /// without it it is the gRPC address's host, port + 2. The metadata group (shard
    /// 0) gets a replica on each; `trailctl cluster init` then creates the data shards.
    /// Without it the node runs alone and serves no Raft transport.
    #[arg(long, env = "TRAIL_PEERS", value_name = "ID=HOST:PORT[/HOST:PORT],...")]
    pub peers: Option<String>,
    /// Address of the peer listener of a cluster node: Raft traffic from the other
    /// nodes only, never clients; keep it on a private network [default: the gRPC
    /// address's host, port + 2, e.g. 127.0.0.1:7402]. Only with --peers.
    #[arg(long, env = "TRAIL_PEER_ADDR")]
    pub peer_addr: Option<SocketAddr>,
    /// Name of the cluster; every Raft message carries it and a node refuses messages
    /// of another cluster [default: trail].
    #[arg(long, env = "TRAIL_CLUSTER_ID")]
    pub cluster_id: Option<String>,
    /// Data shards hosted by this node [default: 4]. Fixed when the data directory is
    /// created: tenants are placed on shards by a hash of their id.
    #[arg(long)]
    pub shards: Option<u32>,
    /// Most events in one group-committed Raft entry.
    #[arg(long)]
    pub batch_events_max: Option<usize>,
    /// Raft entries in flight per shard (pipelining depth).
    #[arg(long)]
    pub proposals_in_flight_max: Option<usize>,
    /// Memory for queued, unacknowledged events per shard, in MiB. When full, ingest
    /// answers RESOURCE_EXHAUSTED with a retry hint.
    #[arg(long)]
    pub queue_mib_max: Option<usize>,
    /// Build a state-machine snapshot (and purge the Raft log) after this many Raft
    /// entries (an entry is a group-committed batch of up to --batch-events-max
    /// events) [default: 100 on a single node, where a snapshot is only a marker;
    /// 20000 in a cluster, where it is a copy of the shard a lagging replica installs].
    #[arg(long)]
    pub snapshot_logs_since_last: Option<u64>,
    /// Events that seal a block by size [default: 1024].
    #[arg(long)]
    pub block_events: Option<u32>,
    /// Seal a stream's open block once it is this old, in ms [default: 1000].
    #[arg(long)]
    pub seal_interval_ms: Option<u64>,
    /// Sign a new checkpoint of a growing stream at most this often, in ms
    /// [default: 10000]. A proof or audit asks for a fresh one whenever it needs it.
    #[arg(long)]
    pub checkpoint_interval_ms: Option<u64>,
    /// Where signed checkpoints are published: per stream, one append-only JSON-lines
    /// file per UTC day, never rewritten [default: <data-dir>/checkpoints]. Point it
    /// outside the store (another disk, a synced or WORM mount) so auditors can keep
    /// them.
    #[arg(long, env = "TRAIL_CHECKPOINT_DIR")]
    pub checkpoint_dir: Option<PathBuf>,
    /// Origin prefix of checkpoints and the name of the signing key: checkpoints are
    /// for "<origin>/<tenant>/<stream>" [default: trail.local]. Use a name you own.
    #[arg(long, env = "TRAIL_CHECKPOINT_ORIGIN")]
    pub checkpoint_origin: Option<String>,
    /// Record every query, count and export of a tenant's events as an
    /// `audit_log.read` / `audit_log.export` event in that tenant's own log, before
    /// answering [default: true].
    #[arg(long, value_name = "BOOL")]
    pub audit_reads: Option<bool>,
    /// How often newly applied events become visible to indexed queries, in ms
    /// [default: 500]. Each commit costs ~11-16 ms and makes a segment to merge later:
    /// a longer interval spends less CPU on indexing (events not yet indexed are still
    /// found: queries read them from the store).
    #[arg(long)]
    pub index_commit_ms: Option<u64>,
    /// Index lag, in ms, over which a shard holds ingest back until its indexes catch
    /// up; from 60% of it on, each proposal pauses a little first [default: twice
    /// --index-commit-ms plus 500]. Keeps queries fresh and fast under sustained ingest
    /// (they scan what is not yet indexed) at some cost in ingest throughput; 0 turns
    /// it off (the lag may then grow without bound).
    #[arg(long)]
    pub index_hold_lag_ms: Option<u64>,
    /// Memory for the storage's block cache, in MiB [default: 256]. Queries read
    /// events by position: blocks found here skip a read and a decompression. More
    /// helps when the recent history of busy tenants does not fit; 8 at least.
    #[arg(long, value_name = "MIB")]
    pub cache_mib: Option<u64>,
    /// Request bytes the node holds at once over all gRPC connections, in MiB
    /// [default: 256]. A request that would go over is answered RESOURCE_EXHAUSTED
    /// with a retry hint before its bytes are buffered. At least 32 (one message of
    /// the largest size accepted).
    #[arg(long, value_name = "MIB")]
    pub inflight_request_mib: Option<usize>,
    /// For benchmarks only: run without the indexer thread, to measure what indexing
    /// costs ingest. Queries then read every event from the store and are refused once
    /// a stream has more than 200,000 events.
    #[arg(long, hide = true)]
    pub bench_index_off: bool,
    /// Serve the client gRPC and HTTP listeners without TLS on an address that is not
    /// loopback. Without this flag `traild` refuses, because API keys would cross the
    /// network in the clear: use it only on a private network you trust (TLS on the
    /// client listeners is not built yet).
    #[arg(long, env = "TRAIL_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,
    /// Each tenant's ingest quota in events per second, with bursts of 2 s of it; over
    /// it a tenant's events are refused with RESOURCE_EXHAUSTED and a retry hint, so
    /// one tenant cannot take a shard from the others. 0: no limit [default: 100000].
    #[arg(long, value_name = "N")]
    pub tenant_events_per_sec: Option<u64>,
    /// Each tenant's ingest quota in MiB per second (event bytes as sent), with bursts
    /// of 2 s of it. 0: no limit [default: 64].
    #[arg(long, value_name = "MIB")]
    pub tenant_mib_per_sec: Option<u64>,
    /// Log filter, e.g. "info" or "trail_node=debug" (RUST_LOG also works).
    #[arg(long, env = "TRAIL_LOG")]
    pub log: Option<String>,
    /// Log lines on stderr: `text` for people (coloured only when stderr is a
    /// terminal) or `json`, one object per line for log shippers [default: text].
    #[arg(long, env = "TRAIL_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

/// How `traild` writes its log lines (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Readable lines: time, level, target, message, fields.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields` (with `message`),
    /// `target`, and the spans.
    Json,
}

/// The same settings as a TOML file; every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    grpc_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    peer_addr: Option<SocketAddr>,
    node_id: Option<u64>,
    peers: Option<String>,
    cluster_id: Option<String>,
    shards: Option<u32>,
    batch_events_max: Option<usize>,
    proposals_in_flight_max: Option<usize>,
    queue_mib_max: Option<usize>,
    snapshot_logs_since_last: Option<u64>,
    block_events: Option<u32>,
    seal_interval_ms: Option<u64>,
    checkpoint_interval_ms: Option<u64>,
    checkpoint_dir: Option<PathBuf>,
    checkpoint_origin: Option<String>,
    audit_reads: Option<bool>,
    tenant_events_per_sec: Option<u64>,
    tenant_mib_per_sec: Option<u64>,
    index_commit_ms: Option<u64>,
    index_hold_lag_ms: Option<u64>,
    cache_mib: Option<u64>,
    inflight_request_mib: Option<usize>,
    log: Option<String>,
    log_format: Option<LogFormat>,
}

/// Resolved configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The peer listener (Raft from the other nodes); only a cluster node has one.
    pub peer_addr: Option<SocketAddr>,
    pub node_id: u64,
    /// Set when the node is one of a cluster (`--peers`).
    pub cluster: Option<ClusterConfig>,
    /// `None`: what the data directory was created with, or 4 for a new one.
    pub shards: Option<u32>,
    pub limits: BatchLimits,
    pub snapshot_logs_since_last: u64,
    pub tamper: TamperSettings,
    /// Queries, counts and exports are recorded in the tenant's log (`api/audit.rs`).
    pub audit_reads: bool,
    pub index_commit_ms: u64,
    /// The storage's block cache (`--cache-mib`), in bytes.
    pub cache_bytes: u64,
    /// `--inflight-request-mib`, in bytes (api/limits.rs).
    pub inflight_request_bytes: usize,
    /// `--bench-index-off`: no indexer thread.
    pub index_off: bool,
    /// `--insecure-plaintext`: plaintext client listeners on non-loopback addresses.
    pub insecure_plaintext: bool,
    /// Every tenant's ingest quota (`--tenant-events-per-sec`, `--tenant-mib-per-sec`).
    pub tenant_quota: crate::access::quota::Quota,
    pub log: String,
    pub log_format: LogFormat,
}

/// Blocks, sealing and checkpoints (docs/PROOFS.md).
#[derive(Debug, Clone)]
pub struct TamperSettings {
    pub block_events_max: u32,
    pub seal_interval_ms: u64,
    pub checkpoint_interval_ms: u64,
    pub checkpoint_dir: PathBuf,
    pub checkpoint_origin: String,
}

/// The nodes of a cluster, as `--peers` lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub cluster_id: String,
    /// Node id -> its gRPC `host:port` (this node's own entry is what the others
    /// dial; it may differ from `--grpc-addr`, e.g. 0.0.0.0).
    pub peers: BTreeMap<u64, String>,
    /// Node id -> its peer listener's `host:port`, where the others send Raft
    /// messages (never the gRPC port).
    pub raft_addrs: BTreeMap<u64, String>,
}

/// The peer port when none is given: the gRPC port + 2 (7400 -> 7402; HTTP is + 1).
pub const PEER_PORT_OFFSET: u16 = 2;

pub const SHARDS_MAX: u32 = 256;

/// Largest gRPC message, either way. A batch of 10,000 events at the largest each
/// (~12 KiB: 128 B event id, 64 B tenant, 3 x 256 B actor id/name, subject, 320 B email,
/// 128 B action and resource type, 3 x 256 B resource/request/session ids, 1 KiB user
/// agent, 8 KiB metadata, plus tags) would be ~120 MB, so no limit admits every valid
/// batch; real batches are ~5 MB (10,000 events of ~500 B), and a larger one is split
/// by the SDK. The count of events is checked in the raw bytes before decoding
/// (trail-proto's codec), so the decoded size is at most a few times this.
pub const GRPC_MESSAGE_BYTES_MAX: usize = 32 << 20;

/// Request bytes in flight per node when not configured (`--inflight-request-mib`):
/// eight messages of the largest size, or ~50 batches of ~5 MB; decoded events take
/// ~2-3 times their wire size, so ingest holds well under 1 GB for requests.
pub const INFLIGHT_REQUEST_MIB_DEFAULT: usize = 256;

/// The block cache when not configured: fjall's default is 32 MiB, which at 10 M
/// events held a small share of the blocks queries read.
pub const CACHE_MIB_DEFAULT: u64 = 256;

/// The index lag over which ingest is held, for a commit interval: an indexer that
/// keeps up shows a lag of up to one interval plus its round and commit (~0.9 s at
/// 500 ms, measured at ~65k events/s), so pacing, which starts at 60% of the bound,
/// must start past that or it slows ingest that the indexer keeps up with.
fn default_index_hold_lag_ms(index_commit_ms: u64) -> u64 {
    2 * index_commit_ms + 500
}

/// The cluster's nodes as `--peers` lists them: node id -> gRPC address, and node id
/// -> peer (Raft) address.
pub type PeerList = (BTreeMap<u64, String>, BTreeMap<u64, String>);

/// `host:port` with a port, as `--peers` takes it.
fn is_host_port(addr: &str) -> bool {
    addr.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

/// The default peer address of a node reached at `grpc` (`host:port`): same host,
/// port + [`PEER_PORT_OFFSET`].
fn default_peer_addr(grpc: &str) -> Option<String> {
    let (host, port) = grpc.rsplit_once(':')?;
    let port = port.parse::<u16>().ok()?.checked_add(PEER_PORT_OFFSET)?;
    Some(format!("{host}:{port}"))
}

/// Parses `1=host:port,2=host:port/host:port`: ids 1 or more, each once, a gRPC
/// address `host:port` and optionally, after `/`, the peer address (default: the
/// gRPC host, port + 2).
pub fn parse_peers(text: &str) -> anyhow::Result<PeerList> {
    let mut peers = BTreeMap::new();
    let mut raft_addrs = BTreeMap::new();
    for item in text
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        let Some((id, addr)) = item.split_once('=') else {
            anyhow::bail!("peers: {item:?} is not ID=HOST:PORT (e.g. 1=10.0.0.7:7400)");
        };
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("peers: {item:?}: the node id {id:?} is not a number"))?;
        if id == 0 {
            anyhow::bail!("peers: {item:?}: node id 0 is reserved; use 1 or more");
        }
        let (addr, peer_addr) = match addr.split_once('/') {
            Some((addr, peer_addr)) => (addr.trim(), Some(peer_addr.trim())),
            None => (addr.trim(), None),
        };
        if !is_host_port(addr) {
            anyhow::bail!("peers: {item:?}: {addr:?} is not HOST:PORT");
        }
        let peer_addr = match peer_addr {
            Some(peer_addr) if is_host_port(peer_addr) => peer_addr.to_string(),
            Some(peer_addr) => {
                anyhow::bail!("peers: {item:?}: the peer address {peer_addr:?} is not HOST:PORT")
            }
            None => default_peer_addr(addr).ok_or_else(|| {
                anyhow::anyhow!(
                    "peers: {item:?}: port {} has no port + {PEER_PORT_OFFSET} for the peer \
                     address; give it after a '/' (ID=HOST:PORT/HOST:PORT)",
                    addr.rsplit_once(':').map_or("", |(_, port)| port)
                )
            })?,
        };
        if peer_addr == addr {
            anyhow::bail!(
                "peers: {item:?}: the peer address is the gRPC address; Raft is served on a \
                 port of its own"
            );
        }
        if peers.insert(id, addr.to_string()).is_some() {
            anyhow::bail!("peers: node id {id} is listed twice");
        }
        raft_addrs.insert(id, peer_addr);
    }
    if peers.is_empty() {
        anyhow::bail!("peers: the list is empty; give ID=HOST:PORT for every node");
    }
    Ok((peers, raft_addrs))
}

impl NodeConfig {
    pub fn resolve(flags: Flags) -> anyhow::Result<NodeConfig> {
        let file = match &flags.config {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|error| anyhow::anyhow!("config file {}: {error}", path.display()))?;
                toml::from_str(&text)
                    .map_err(|error| anyhow::anyhow!("config file {}: {error}", path.display()))?
            }
        };
        let defaults = BatchLimits::default();
        let shards = flags.shards.or(file.shards);
        if let Some(count) = shards {
            if count == 0 || count > SHARDS_MAX {
                anyhow::bail!("shards: {count} is out of range; use 1 to {SHARDS_MAX}");
            }
        }
        let batch_events_max = flags
            .batch_events_max
            .or(file.batch_events_max)
            .unwrap_or(defaults.batch_events_max);
        if !(1..=50_000).contains(&batch_events_max) {
            anyhow::bail!("batch_events_max: {batch_events_max} is out of range; use 1 to 50000");
        }
        let proposals_in_flight_max = flags
            .proposals_in_flight_max
            .or(file.proposals_in_flight_max)
            .unwrap_or(defaults.proposals_in_flight_max);
        if !(1..=64).contains(&proposals_in_flight_max) {
            anyhow::bail!(
                "proposals_in_flight_max: {proposals_in_flight_max} is out of range; use 1 to 64"
            );
        }
        let queue_mib_max = flags
            .queue_mib_max
            .or(file.queue_mib_max)
            .unwrap_or(defaults.queue_bytes_max >> 20);
        if !(1..=4_096).contains(&queue_mib_max) {
            anyhow::bail!("queue_mib_max: {queue_mib_max} is out of range; use 1 to 4096");
        }
        let node_id = flags.node_id.or(file.node_id).unwrap_or(1);
        if node_id == 0 {
            anyhow::bail!("node_id: 0 is reserved; use 1 or more");
        }
        let index_commit_ms = flags
            .index_commit_ms
            .or(file.index_commit_ms)
            .unwrap_or(500);
        if !(10..=60_000).contains(&index_commit_ms) {
            anyhow::bail!("index_commit_ms: {index_commit_ms} is out of range; use 10 to 60000");
        }
        let index_hold_lag_ms = flags
            .index_hold_lag_ms
            .or(file.index_hold_lag_ms)
            .unwrap_or_else(|| default_index_hold_lag_ms(index_commit_ms));
        if index_hold_lag_ms != 0 && index_hold_lag_ms <= index_commit_ms {
            anyhow::bail!(
                "index_hold_lag_ms: {index_hold_lag_ms} is not above index_commit_ms \
                 ({index_commit_ms}): events wait up to a commit interval to be indexed, so \
                 ingest would be held all the time; use more (default: twice \
                 index_commit_ms plus 500) or 0 to turn the hold off"
            );
        }
        let cache_mib = flags
            .cache_mib
            .or(file.cache_mib)
            .unwrap_or(CACHE_MIB_DEFAULT);
        if !(8..=1 << 20).contains(&cache_mib) {
            anyhow::bail!("cache_mib: {cache_mib} is out of range; use 8 to 1048576");
        }
        let inflight_request_mib = flags
            .inflight_request_mib
            .or(file.inflight_request_mib)
            .unwrap_or(INFLIGHT_REQUEST_MIB_DEFAULT);
        let inflight_request_mib_min = GRPC_MESSAGE_BYTES_MAX >> 20;
        if !(inflight_request_mib_min..=4_095).contains(&inflight_request_mib) {
            anyhow::bail!(
                "inflight_request_mib: {inflight_request_mib} is out of range; use \
                 {inflight_request_mib_min} (one message of the largest size) to 4095"
            );
        }
        let cluster = match flags.peers.or(file.peers) {
            None => None,
            Some(text) => {
                let (peers, raft_addrs) = parse_peers(&text)?;
                if !peers.contains_key(&node_id) {
                    anyhow::bail!(
                        "peers: this node's id {node_id} is not in the list {text:?}; \
                         set --node-id to this node's entry"
                    );
                }
                let cluster_id = flags
                    .cluster_id
                    .or(file.cluster_id)
                    .unwrap_or_else(|| "trail".to_string());
                if cluster_id.is_empty()
                    || cluster_id.len() > 64
                    || !cluster_id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
                {
                    anyhow::bail!(
                        "cluster_id: {cluster_id:?} must be 1 to 64 of A-Z a-z 0-9 - _ ."
                    );
                }
                Some(ClusterConfig {
                    cluster_id,
                    peers,
                    raft_addrs,
                })
            }
        };
        let grpc_addr = flags
            .grpc_addr
            .or(file.grpc_addr)
            .unwrap_or_else(|| "127.0.0.1:7400".parse().expect("valid default"));
        let peer_addr = match (&cluster, flags.peer_addr.or(file.peer_addr)) {
            (None, None) => None,
            (None, Some(_)) => anyhow::bail!(
                "peer_addr: only a cluster node (--peers) has a peer listener; a single node \
                 serves no Raft transport"
            ),
            (Some(_), Some(addr)) => Some(addr),
            (Some(_), None) => {
                let port = grpc_addr
                    .port()
                    .checked_add(PEER_PORT_OFFSET)
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "peer_addr: the gRPC port {} has no port + {PEER_PORT_OFFSET}; set \
                         --peer-addr",
                            grpc_addr.port()
                        )
                    })?;
                Some(SocketAddr::new(grpc_addr.ip(), port))
            }
        };
        if peer_addr == Some(grpc_addr) {
            anyhow::bail!(
                "peer_addr: {grpc_addr} is the gRPC address; Raft is served on a port of its own"
            );
        }
        let snapshot_logs_since_last = flags
            .snapshot_logs_since_last
            .or(file.snapshot_logs_since_last)
            .unwrap_or(if cluster.is_some() {
                SNAPSHOT_LOGS_SINCE_LAST_CLUSTER
            } else {
                SNAPSHOT_LOGS_SINCE_LAST_SINGLE
            });
        let block_events_max = flags
            .block_events
            .or(file.block_events)
            .unwrap_or(crate::ledger::BLOCK_EVENTS_DEFAULT);
        let block_events_limit = crate::ledger::block::BLOCK_EVENTS_MAX;
        if !(1..=block_events_limit).contains(&block_events_max) {
            anyhow::bail!(
                "block_events: {block_events_max} is out of range; use 1 to {block_events_limit}"
            );
        }
        let seal_interval_ms = flags
            .seal_interval_ms
            .or(file.seal_interval_ms)
            .unwrap_or(1_000);
        if !(10..=3_600_000).contains(&seal_interval_ms) {
            anyhow::bail!(
                "seal_interval_ms: {seal_interval_ms} is out of range; use 10 to 3600000"
            );
        }
        let checkpoint_interval_ms = flags
            .checkpoint_interval_ms
            .or(file.checkpoint_interval_ms)
            .unwrap_or(10_000);
        if !(10..=86_400_000).contains(&checkpoint_interval_ms) {
            anyhow::bail!(
                "checkpoint_interval_ms: {checkpoint_interval_ms} is out of range; \
                 use 10 to 86400000"
            );
        }
        let checkpoint_origin = flags
            .checkpoint_origin
            .or(file.checkpoint_origin)
            .unwrap_or_else(|| "trail.local".to_string());
        if checkpoint_origin.is_empty()
            || checkpoint_origin.len() > 200
            || !checkpoint_origin
                .chars()
                .all(|c| c.is_ascii_graphic() && c != '+')
        {
            anyhow::bail!(
                "checkpoint_origin: {checkpoint_origin:?} must be 1 to 200 printable ASCII \
                 characters without spaces or '+', e.g. audit.example.com"
            );
        }
        let http_addr = flags
            .http_addr
            .or(file.http_addr)
            .unwrap_or_else(|| "127.0.0.1:7401".parse().expect("valid default"));
        for (field, addr) in [("grpc_addr", grpc_addr), ("http_addr", http_addr)] {
            if !addr.ip().is_loopback() && !flags.insecure_plaintext {
                anyhow::bail!(
                    "{field}: {addr} is not a loopback address, and the client listeners \
                     have no TLS yet: API keys would cross the network in the clear. Serve on \
                     127.0.0.1 behind a TLS proxy, or pass --insecure-plaintext on a private \
                     network you trust"
                );
            }
        }
        let data_dir = flags
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("trail-data"));
        let checkpoint_dir = flags
            .checkpoint_dir
            .or(file.checkpoint_dir)
            .unwrap_or_else(|| data_dir.join("checkpoints"));
        Ok(NodeConfig {
            tamper: TamperSettings {
                block_events_max,
                seal_interval_ms,
                checkpoint_interval_ms,
                checkpoint_dir,
                checkpoint_origin,
            },
            data_dir,
            grpc_addr,
            peer_addr,
            http_addr,
            node_id,
            cluster,
            shards,
            limits: BatchLimits {
                batch_events_max,
                proposals_in_flight_max,
                queue_bytes_max: queue_mib_max << 20,
                block_events_max,
                index_hold_lag_ms,
                ..defaults
            },
            snapshot_logs_since_last,
            audit_reads: flags.audit_reads.or(file.audit_reads).unwrap_or(true),
            index_commit_ms,
            cache_bytes: cache_mib << 20,
            inflight_request_bytes: inflight_request_mib << 20,
            index_off: flags.bench_index_off,
            insecure_plaintext: flags.insecure_plaintext,
            tenant_quota: crate::access::quota::Quota {
                events_per_sec: flags
                    .tenant_events_per_sec
                    .or(file.tenant_events_per_sec)
                    .unwrap_or(100_000),
                bytes_per_sec: flags
                    .tenant_mib_per_sec
                    .or(file.tenant_mib_per_sec)
                    .unwrap_or(64)
                    .saturating_mul(1 << 20),
            },
            // actix-http logs each malformed request a client sends (a bad header, an
            // oversized head) as an ERROR of its dispatcher: a client could fill the log
            // at ERROR level with them, and none is the operator's to act on.
            log: flags.log.or(file.log).unwrap_or_else(|| {
                "info,openraft=warn,actix_server=warn,actix_http::h1::dispatcher=off,\
                 fjall=warn,lsm_tree=warn"
                    .to_string()
            }),
            log_format: flags.log_format.or(file.log_format).unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_name_each_nodes_peer_address_or_default_to_the_grpc_port_plus_two() {
        let (grpc, raft) =
            parse_peers("1=10.0.0.7:7400,2=10.0.0.8:7400/10.1.0.8:9000").expect("valid");
        assert_eq!(grpc[&1], "10.0.0.7:7400");
        assert_eq!(raft[&1], "10.0.0.7:7402");
        assert_eq!(grpc[&2], "10.0.0.8:7400");
        assert_eq!(raft[&2], "10.1.0.8:9000");
        let error = parse_peers("1=10.0.0.7:7400/10.0.0.7:7400").expect_err("same port");
        assert!(error.to_string().starts_with("peers:"), "{error}");
        let error = parse_peers("1=10.0.0.7:7400/nope").expect_err("no port");
        assert!(error.to_string().contains("peer address"), "{error}");
        let error = parse_peers("1=10.0.0.7:65535").expect_err("no port + 2");
        assert!(error.to_string().contains("'/'"), "{error}");
    }

    #[test]
    fn only_a_cluster_node_has_a_peer_listener() {
        let flags = |args: &[&str]| {
            NodeConfig::resolve(Flags::parse_from(
                std::iter::once("traild").chain(args.iter().copied()),
            ))
        };
        let single = flags(&[]).expect("single node");
        assert_eq!(single.peer_addr, None);
        let error = flags(&["--peer-addr", "127.0.0.1:7402"]).expect_err("single node");
        assert!(error.to_string().starts_with("peer_addr:"), "{error}");
        let node = flags(&[
            "--peers",
            "1=127.0.0.1:7400",
            "--grpc-addr",
            "0.0.0.0:7500",
            "--insecure-plaintext",
        ])
        .expect("cluster node");
        assert_eq!(node.peer_addr, Some("0.0.0.0:7502".parse().unwrap()));
        let error = flags(&[
            "--peers",
            "1=127.0.0.1:7400",
            "--peer-addr",
            "127.0.0.1:7400",
        ])
        .expect_err("the gRPC address");
        assert!(error.to_string().starts_with("peer_addr:"), "{error}");
    }

    #[test]
    fn plaintext_client_listeners_stay_on_loopback_unless_told_otherwise() {
        let flags = |args: &[&str]| {
            NodeConfig::resolve(Flags::parse_from(
                std::iter::once("traild").chain(args.iter().copied()),
            ))
        };
        for (flag, addr) in [
            ("--grpc-addr", "0.0.0.0:7400"),
            ("--http-addr", "10.0.0.7:7401"),
        ] {
            let error = flags(&[flag, addr]).expect_err("plaintext off loopback");
            let field = &flag[2..].replace('-', "_");
            assert!(
                error.to_string().starts_with(&format!("{field}: {addr}")),
                "{error}"
            );
            assert!(
                error.to_string().contains("--insecure-plaintext"),
                "{error}"
            );
            assert!(flags(&[flag, addr, "--insecure-plaintext"]).is_ok());
        }
        assert!(
            flags(&["--grpc-addr", "[::1]:7400"]).is_ok(),
            "IPv6 loopback"
        );
    }
}
