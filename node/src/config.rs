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
/// Raft log kept on disk (was never purged at the cluster's interval: 191 bytes/event
/// at 10 M events). Every 100 rather than 500: more of the log is deleted before its
/// memtable is flushed, and the node wrote ~10% fewer bytes per event (1.06 against
/// 1.17-1.19 GB per 1 M events at 64 x 20 in flight), with an ack p99 ~5 ms lower on
/// this disk (docs/BENCHMARKS.md, "Ack latency at 64 in flight").
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
        # one node of three; then once: trailctl cluster init --shards 16 --replicas 3\n\n\
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
    /// each node, e.g. `1=10.0.0.7:7400,2=10.0.0.8:7400,3=10.0.0.9:7400`. The metadata
    /// group (shard 0) gets a replica on each; `trailctl cluster init` then creates the
    /// data shards. Without it the node runs alone.
    #[arg(long, env = "TRAIL_PEERS", value_name = "ID=HOST:PORT,...")]
    pub peers: Option<String>,
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
    /// For benchmarks only: run without the indexer thread, to measure what indexing
    /// costs ingest. Queries then read every event from the store and are refused once
    /// a stream has more than 200,000 events.
    #[arg(long, hide = true)]
    pub bench_index_off: bool,
    /// Log filter, e.g. "info" or "trail_node=debug" (RUST_LOG also works).
    #[arg(long, env = "TRAIL_LOG")]
    pub log: Option<String>,
}

/// The same settings as a TOML file; every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    grpc_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
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
    index_commit_ms: Option<u64>,
    index_hold_lag_ms: Option<u64>,
    cache_mib: Option<u64>,
    log: Option<String>,
}

/// Resolved configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
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
    /// `--bench-index-off`: no indexer thread.
    pub index_off: bool,
    pub log: String,
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
}

pub const SHARDS_MAX: u32 = 256;

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

/// Parses `1=host:port,2=host:port`: ids 1 or more, each once, addresses `host:port`.
pub fn parse_peers(text: &str) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut peers = BTreeMap::new();
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
        let addr = addr.trim();
        let port_ok = addr
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok {
            anyhow::bail!("peers: {item:?}: {addr:?} is not HOST:PORT");
        }
        if peers.insert(id, addr.to_string()).is_some() {
            anyhow::bail!("peers: node id {id} is listed twice");
        }
    }
    if peers.is_empty() {
        anyhow::bail!("peers: the list is empty; give ID=HOST:PORT for every node");
    }
    Ok(peers)
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
        let cluster = match flags.peers.or(file.peers) {
            None => None,
            Some(text) => {
                let peers = parse_peers(&text)?;
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
                Some(ClusterConfig { cluster_id, peers })
            }
        };
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
            grpc_addr: flags
                .grpc_addr
                .or(file.grpc_addr)
                .unwrap_or_else(|| "127.0.0.1:7400".parse().expect("valid default")),
            http_addr: flags
                .http_addr
                .or(file.http_addr)
                .unwrap_or_else(|| "127.0.0.1:7401".parse().expect("valid default")),
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
            index_off: flags.bench_index_off,
            log: flags.log.or(file.log).unwrap_or_else(|| {
                "info,openraft=warn,actix_server=warn,fjall=warn,lsm_tree=warn".to_string()
            }),
        })
    }
}
