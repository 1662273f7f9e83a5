//! [`Cluster`]: `traild` processes forming one cluster, and what the cluster tests
//! share: clients of its nodes, recording events until each is acknowledged (and
//! remembering the receipts), waiting for leaders and for the replicas to converge,
//! and comparing the replicas, each read on its own node (`trail-replica-read`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_stream::StreamExt;
use tonic::transport::Channel;
use trail_node::ledger::routing::shard_for_tenant;
use trail_proto::v1;
use trail_proto::v1::trail_client::TrailClient;

use crate::{replica_read, Authorization, GrpcClient, NodeSpec, Traild};

/// How long `ClusterInit` is retried while the metadata group elects its leader.
const CLUSTER_INIT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the nodes may take, once all started, to elect the metadata group's
/// leader, which creates the first admin key, and to read it from their replicas.
const ADMIN_KEY_TIMEOUT: Duration = Duration::from_secs(60);
/// A batch not acknowledged in full within this fails [`record_until_acked`].
pub const BATCH_RETRY_TIMEOUT: Duration = Duration::from_secs(60);
/// Events of one `Tail` page.
pub const TAIL_PAGE_EVENTS: u32 = 1_000;
/// Problems listed in a failure message at most.
const PROBLEMS_MAX: usize = 30;

/// `traild` processes forming one cluster: node `i` (1-based) is `nodes[i - 1]`, with
/// its data directory and `traild.log` under one temporary directory. The nodes share
/// node 1's checkpoint key, as `trailctl dev-cluster up` arranges. When a test panics
/// the directory is kept (and named on stderr) so the logs can be read;
/// `TRAIL_TEST_KEEP=1` keeps it always.
pub struct Cluster {
    /// Dropped (killed) before `dir` is removed.
    pub nodes: Vec<Traild>,
    dir: Option<tempfile::TempDir>,
}

impl Cluster {
    /// Starts `count` nodes on loopback: see [`Cluster::start_on`].
    pub async fn start(count: usize) -> Cluster {
        Cluster::start_with_args(count, &[]).await
    }

    /// Starts `count` nodes on loopback, each with the `traild` flags `args` too.
    pub async fn start_with_args(count: usize, args: &[&str]) -> Cluster {
        let specs = (0..count)
            .map(|_| NodeSpec {
                args: args.iter().map(|arg| arg.to_string()).collect(),
                ..NodeSpec::loopback()
            })
            .collect();
        Cluster::start_on("trail-cluster-", specs).await
    }

    /// Starts a node per spec with the same `--peers` (each node's gRPC and peer
    /// address) and its own `--peer-addr`, in a new temporary directory
    /// named `dir_prefix...`: node 1 first, then the others with a copy of its
    /// `node.key`. Does not initialize the cluster.
    pub async fn start_on(dir_prefix: &str, specs: Vec<NodeSpec>) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix(dir_prefix)
            .tempdir()
            .expect("temporary directory");
        let peers: Vec<String> = specs
            .iter()
            .enumerate()
            .map(|(index, spec)| {
                format!(
                    "{}={}:{}/{}:{}",
                    index + 1,
                    spec.host,
                    spec.grpc_port,
                    spec.host,
                    spec.peer_port
                )
            })
            .collect();
        let peers = peers.join(",");
        let mut nodes = Vec::with_capacity(specs.len());
        for (index, spec) in specs.iter().enumerate() {
            let node_id = index + 1;
            let data_dir = dir.path().join(format!("node{node_id}"));
            std::fs::create_dir_all(&data_dir).expect("create a node's data directory");
            let mut args = vec![
                "--node-id".to_string(),
                node_id.to_string(),
                "--peers".to_string(),
                peers.clone(),
                "--peer-addr".to_string(),
                format!("{}:{}", spec.host, spec.peer_port),
            ];
            args.extend(spec.args.iter().cloned());
            nodes.push(Traild::logged(&data_dir, spec, &args));
        }
        let mut cluster = Cluster {
            nodes,
            dir: Some(dir),
        };
        // Node 1 creates the checkpoint key at its first start; every node of a
        // cluster signs with it, so it is copied before the others first start.
        cluster.nodes[0].spawn().await;
        let key = cluster.nodes[0].data_dir.join("node.key");
        assert!(key.exists(), "node 1 serves but has no {}", key.display());
        for node in &cluster.nodes[1..] {
            std::fs::copy(&key, node.data_dir.join("node.key")).expect("copy node.key");
        }
        for node in &mut cluster.nodes[1..] {
            node.launch();
        }
        for node in &mut cluster.nodes[1..] {
            node.wait_ready().await;
        }
        // The first admin key exists once the metadata group (a majority of the
        // nodes) has a leader; every node reads it from its own replica.
        for node in &cluster.nodes {
            node.wait_admin(ADMIN_KEY_TIMEOUT).await;
        }
        cluster
    }

    /// Where the nodes' data directories (and logs) are.
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("the directory lives as long as the cluster")
            .path()
    }

    /// Node `node_id` (1-based).
    pub fn node(&self, node_id: u64) -> &Traild {
        &self.nodes[node_id as usize - 1]
    }

    pub fn node_mut(&mut self, node_id: u64) -> &mut Traild {
        &mut self.nodes[node_id as usize - 1]
    }

    /// The ids of all nodes, running or not.
    pub fn node_ids(&self) -> Vec<u64> {
        (1..=self.nodes.len() as u64).collect()
    }

    /// The ids of the nodes whose process runs.
    pub fn running(&self) -> Vec<u64> {
        (1..=self.nodes.len() as u64)
            .filter(|&node_id| self.node(node_id).is_running())
            .collect()
    }

    /// Clients of `node_ids` that connect on first use (and again after a restart),
    /// each RPC with deadline `timeout`.
    pub fn clients(&self, node_ids: &[u64], timeout: Duration) -> Vec<NodeClient> {
        node_ids
            .iter()
            .map(|&node_id| NodeClient {
                node_id,
                client: lazy_client(&self.node(node_id).endpoint(), timeout),
            })
            .collect()
    }

    /// `ClusterInit` through node 1, retried while the metadata group elects (it
    /// answers UNAVAILABLE meanwhile, or DEADLINE_EXCEEDED while data shards elect).
    pub async fn init(&self, shards: u32, replicas: u32) -> v1::ClusterMap {
        let started = Instant::now();
        let mut last_error = String::new();
        while started.elapsed() < CLUSTER_INIT_TIMEOUT {
            if let Ok(mut client) = self.node(1).client().await {
                let request = v1::ClusterInitRequest { shards, replicas };
                match client.cluster_init(request).await {
                    Ok(response) => {
                        return response
                            .into_inner()
                            .map
                            .expect("ClusterInit answers the map")
                    }
                    Err(status)
                        if matches!(
                            status.code(),
                            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                        ) =>
                    {
                        last_error = format!("{:?}: {}", status.code(), status.message());
                    }
                    Err(status) => panic!("cluster init: {status}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        panic!("cluster init did not succeed within {CLUSTER_INIT_TIMEOUT:?}: {last_error}");
    }

    /// Every running node's `Status`, by node id.
    pub async fn statuses(&self) -> Vec<(u64, v1::StatusResponse)> {
        let mut statuses = Vec::new();
        for node_id in self.running() {
            statuses.push((node_id, self.node(node_id).status().await));
        }
        statuses
    }

    /// Every running node's `Status`, or a description of the first that did not
    /// answer.
    pub async fn try_statuses(&self) -> Result<Vec<(u64, v1::StatusResponse)>, String> {
        let mut statuses = Vec::new();
        for node_id in self.running() {
            match self.node(node_id).try_status().await {
                Ok(status) => statuses.push((node_id, status)),
                Err(error) => return Err(format!("node {node_id}: {error}")),
            }
        }
        Ok(statuses)
    }

    /// The data shards `node_id` says it leads (none when it does not answer).
    pub async fn led_by(&self, node_id: u64) -> Vec<u32> {
        match self.node(node_id).try_status().await {
            Ok(status) => status
                .shards
                .iter()
                .filter(|shard| shard.shard_id != 0 && shard.role == "leader")
                .map(|shard| shard.shard_id)
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Waits until every running node answers, has a replica of every data shard of
    /// the map and knows the shard's leader, which is a running node that says it
    /// leads.
    pub async fn wait_leaders(&self, shards: u32, timeout: Duration) {
        let started = Instant::now();
        loop {
            let running = self.running();
            let statuses = self.try_statuses().await.unwrap_or_default();
            let mut missing = Vec::new();
            for shard in 1..=shards {
                let leaders: Vec<u64> = statuses
                    .iter()
                    .filter(|(_, status)| {
                        status
                            .shards
                            .iter()
                            .any(|s| s.shard_id == shard && s.role == "leader")
                    })
                    .map(|(node_id, _)| *node_id)
                    .collect();
                let agreed = statuses.len() == running.len()
                    && leaders.len() == 1
                    && statuses.iter().all(|(_, status)| {
                        status
                            .shards
                            .iter()
                            .any(|s| s.shard_id == shard && s.leader_node_id == leaders[0])
                    });
                if !agreed || !running.contains(&leaders[0]) {
                    missing.push(shard);
                }
            }
            if missing.is_empty() {
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "shards {missing:?} have no leader all running nodes agree on after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until every running node answers and, for every shard (the metadata
    /// group and data shards `1..=shards`), the leader reports no replica behind and
    /// every node's replica applied the leader's last log index.
    pub async fn wait_converged(&self, shards: u32, timeout: Duration) {
        let started = Instant::now();
        loop {
            let lagging = match self.try_statuses().await {
                Ok(statuses) => lagging_shards(&statuses, shards),
                Err(error) => vec![error],
            };
            if lagging.is_empty() {
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "replicas did not converge within {timeout:?}: {lagging:#?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The (node, last applied, last log) index of `shard` on each running node.
    pub async fn shard_indexes(&self, shard: u32) -> Vec<(u64, u64, u64)> {
        let statuses = self
            .try_statuses()
            .await
            .unwrap_or_else(|error| panic!("status while comparing replicas: {error}"));
        let mut indexes = Vec::new();
        for (node_id, status) in statuses {
            let found = status.shards.iter().find(|s| s.shard_id == shard);
            let (applied, last) =
                found.map_or((0, 0), |s| (s.last_applied_index, s.last_log_index));
            indexes.push((node_id, applied, last));
        }
        indexes
    }

    /// Reads every one of `tenants` on every node's own replica, a shard at a time
    /// while the shard is still (same applied and last log index on all nodes before
    /// and after the reads, at most `still_read_attempts` tries), and checks the
    /// replicas against each other and against the receipts: the replicas hold the
    /// same events (every field) and sealed blocks; each tenant's seqs are `1..=n`
    /// without gaps or repeats and the blocks cover a prefix of them; every event
    /// stored is acknowledged at its receipt's seq, stream and leaf hash, or one of
    /// `tried` (sent without acknowledgement: on every replica or on none); every
    /// acknowledged event is stored once. Fails listing the problems.
    pub async fn check_replicas(
        &self,
        shards: u32,
        tenants: &BTreeSet<String>,
        acked: &AckedMap,
        tried: &HashSet<String>,
        still_read_attempts: usize,
    ) -> ReplicaCheck {
        let mut by_shard: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
        for tenant in tenants {
            by_shard
                .entry(shard_for_tenant(tenant, shards))
                .or_default()
                .insert(tenant.clone());
        }
        let node_ids = self.node_ids();
        let clients = self.clients(&node_ids, Duration::from_secs(60));
        let mut comparison = Comparison {
            acked,
            tried,
            found: HashMap::with_capacity(acked.len()),
            tried_found: 0,
            problems: Vec::new(),
        };
        let mut per_tenant = BTreeMap::new();
        for (&shard, shard_tenants) in &by_shard {
            let streams = self
                .read_shard_still(&clients, shard, shard_tenants, still_read_attempts)
                .await;
            for (tenant, replicas) in shard_tenants.iter().zip(streams) {
                comparison.tenant(tenant, &node_ids, &replicas);
                per_tenant.insert(tenant.clone(), replicas[0].rows.len() as u64);
            }
        }
        let mut problems = comparison.problems;
        for (event_id, expected) in acked {
            match comparison.found.get(event_id.as_str()) {
                Some(1) => {}
                Some(count) => problems.push(format!(
                    "acknowledged event {event_id} of {} found {count} times",
                    expected.tenant
                )),
                None => problems.push(format!(
                    "acknowledged event {event_id} of {} (seq {}) is on no replica",
                    expected.tenant, expected.seq
                )),
            }
        }
        let shown: Vec<&String> = problems.iter().take(PROBLEMS_MAX).collect();
        assert!(
            problems.is_empty(),
            "{} problems comparing replicas (first {}): {shown:#?}",
            problems.len(),
            shown.len()
        );
        ReplicaCheck {
            per_tenant,
            acked_found: comparison.found.len(),
            tried_found: comparison.tried_found,
        }
    }

    /// Each tenant's stream on each node, read while `shard` does not move.
    async fn read_shard_still(
        &self,
        clients: &[NodeClient],
        shard: u32,
        tenants: &BTreeSet<String>,
        attempts: usize,
    ) -> Vec<Vec<ReplicaStream>> {
        let mut last_indexes = Vec::new();
        for _ in 0..attempts {
            let before = self.shard_indexes(shard).await;
            let same = before
                .iter()
                .all(|(_, applied, last)| (*applied, *last) == (before[0].1, before[0].2));
            if same {
                let mut streams = Vec::with_capacity(tenants.len());
                for tenant in tenants {
                    let mut replicas = Vec::with_capacity(clients.len());
                    for client in clients {
                        replicas.push(read_replica_stream(client.client.clone(), tenant).await);
                    }
                    streams.push(replicas);
                }
                let after = self.shard_indexes(shard).await;
                if after == before {
                    return streams;
                }
                eprintln!("shard {shard} moved during the read: {before:?} -> {after:?}; again");
                last_indexes = after;
            } else {
                last_indexes = before;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!(
            "shard {shard} did not hold still on all replicas for a read in {attempts} \
             attempts: (node, applied, last log) {last_indexes:?}"
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill9();
        }
        let keep = std::thread::panicking()
            || std::env::var("TRAIL_TEST_KEEP").is_ok_and(|value| value == "1");
        if keep {
            if let Some(dir) = self.dir.take() {
                let path = dir.keep();
                eprintln!(
                    "cluster data and logs kept in {} (node<i>/traild.log)",
                    path.display()
                );
            }
        }
    }
}

/// The shards (0, the metadata group, and `1..=shards`) whose replicas are not all
/// caught up with their one leader, each described.
fn lagging_shards(statuses: &[(u64, v1::StatusResponse)], shards: u32) -> Vec<String> {
    let mut lagging = Vec::new();
    for shard in 0..=shards {
        let views: Vec<(u64, &v1::ShardStatus)> = statuses
            .iter()
            .filter_map(|(node_id, status)| {
                status
                    .shards
                    .iter()
                    .find(|s| s.shard_id == shard)
                    .map(|s| (*node_id, s))
            })
            .collect();
        let leaders: Vec<&(u64, &v1::ShardStatus)> =
            views.iter().filter(|(_, s)| s.role == "leader").collect();
        let describe = || {
            views
                .iter()
                .map(|(node_id, s)| {
                    format!(
                        "node {node_id}: {} leader={} term={} log={} applied={} replicas={:?}",
                        s.role,
                        s.leader_node_id,
                        s.term,
                        s.last_log_index,
                        s.last_applied_index,
                        s.replicas
                            .iter()
                            .map(|r| (r.node_id, r.matched_index))
                            .collect::<Vec<_>>()
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        if views.len() != statuses.len() || leaders.len() != 1 {
            lagging.push(format!("shard {shard}: {}", describe()));
            continue;
        }
        let leader = leaders[0].1;
        let behind = views.iter().any(|(_, s)| {
            s.last_applied_index != leader.last_log_index
                || s.last_log_index != leader.last_log_index
        }) || leader.replicas.iter().any(|r| r.lag_entries != 0);
        if behind {
            lagging.push(format!("shard {shard}: {}", describe()));
        }
    }
    lagging
}

// --- Clients and recording ---

/// A client of node `node_id`.
#[derive(Clone)]
pub struct NodeClient {
    pub node_id: u64,
    pub client: GrpcClient,
}

/// A gRPC client of `endpoint` that connects on first use (and again after a
/// restart), each RPC with deadline `timeout`, calling as the admin.
pub fn lazy_client(endpoint: &str, timeout: Duration) -> GrpcClient {
    let channel = Channel::from_shared(endpoint.to_string())
        .expect("valid endpoint")
        .connect_timeout(Duration::from_secs(2))
        .timeout(timeout)
        .connect_lazy();
    TrailClient::with_interceptor(channel, Authorization::admin())
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// What a receipt said about an event, and the event as it was sent (a retry must
/// send it again as it was: another event under the same id is refused).
#[derive(Debug, Clone, PartialEq)]
pub struct Acked {
    pub tenant: String,
    pub stream: String,
    pub seq: u64,
    pub leaf_hash: Vec<u8>,
    pub event: v1::Event,
}

/// Receipts by event id.
pub type AckedMap = HashMap<String, Acked>;

/// Adds receipts to `acked`; an event acknowledged before must get the same receipt.
pub fn remember(
    acked: &mut AckedMap,
    events: &[v1::Event],
    receipts: &[v1::Receipt],
) -> Result<(), String> {
    for (event, receipt) in events.iter().zip(receipts) {
        let now = Acked {
            tenant: event.tenant_id.clone(),
            stream: receipt.stream.clone(),
            seq: receipt.seq,
            leaf_hash: receipt.leaf_hash.clone(),
            event: event.clone(),
        };
        if let Some(before) = acked.get(&event.event_id) {
            if *before != now {
                return Err(format!(
                    "{} acknowledged twice with different receipts: {before:?} then {now:?}",
                    event.event_id
                ));
            }
            continue;
        }
        acked.insert(event.event_id.clone(), now);
    }
    Ok(())
}

/// Outcomes retried, by reason: how many, and the first message.
#[derive(Default)]
pub struct Retries {
    by_reason: Mutex<BTreeMap<String, (u64, String)>>,
}

impl Retries {
    pub fn add(&self, reason: &str, count: u64, message: &str) {
        let mut by_reason = self.by_reason.lock().expect("retries lock");
        let entry = by_reason
            .entry(reason.to_string())
            .or_insert_with(|| (0, message.to_string()));
        entry.0 += count;
    }

    /// (count, first message) by reason, so far.
    pub fn by_reason(&self) -> BTreeMap<String, (u64, String)> {
        self.by_reason.lock().expect("retries lock").clone()
    }
}

/// Sends `events` until each is acknowledged, the events not acknowledged again with
/// the same ids, to the next of `clients` each time (starting at `next_node`);
/// `on_receipt(event index, node id, receipt)` hears of each receipt as it arrives.
/// Retries UNAVAILABLE and RESOURCE_EXHAUSTED outcomes and failed RPCs (counted in
/// `retries`). Returns the receipts in `events` order. Fails on an outcome that is
/// not retryable, a receipt for another event, or after [`BATCH_RETRY_TIMEOUT`].
pub async fn record_until_acked<F>(
    clients: &[NodeClient],
    next_node: &mut usize,
    events: &[v1::Event],
    retries: &Retries,
    mut on_receipt: F,
) -> Result<Vec<v1::Receipt>, String>
where
    F: FnMut(usize, u64, &v1::Receipt),
{
    let started = Instant::now();
    let mut receipts: Vec<Option<v1::Receipt>> = vec![None; events.len()];
    let mut pending: Vec<usize> = (0..events.len()).collect();
    let mut last_problem = String::new();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let NodeClient {
            node_id,
            mut client,
        } = clients[*next_node % clients.len()].clone();
        *next_node += 1;
        let request = v1::RecordBatchRequest {
            events: pending.iter().map(|&index| events[index].clone()).collect(),
        };
        let mut wait = Duration::from_millis(100);
        match client.record_batch(request).await {
            Ok(response) => {
                let response = response.into_inner();
                if response.outcomes.len() != pending.len() {
                    return Err(format!(
                        "node {node_id} answered {} outcomes for {} events",
                        response.outcomes.len(),
                        pending.len()
                    ));
                }
                let mut still_pending = Vec::new();
                for (index, outcome) in pending.iter().copied().zip(response.outcomes) {
                    let sent = &events[index];
                    match outcome.outcome {
                        Some(v1::record_outcome::Outcome::Receipt(receipt)) => {
                            if receipt.event_id != sent.event_id
                                || receipt.tenant_id != sent.tenant_id
                                || receipt.seq == 0
                            {
                                return Err(format!(
                                    "node {node_id}: receipt {receipt:?} for event {} of {}",
                                    sent.event_id, sent.tenant_id
                                ));
                            }
                            on_receipt(index, node_id, &receipt);
                            receipts[index] = Some(receipt);
                        }
                        Some(v1::record_outcome::Outcome::Error(error))
                            if error.code == "UNAVAILABLE"
                                || error.code == "RESOURCE_EXHAUSTED" =>
                        {
                            last_problem = format!(
                                "node {node_id}: {} {}: {}",
                                sent.event_id, error.code, error.message
                            );
                            retries.add(&error.code, 1, &last_problem);
                            still_pending.push(index);
                        }
                        other => {
                            return Err(format!(
                                "node {node_id}: event {} of {} was refused: {other:?}",
                                sent.event_id, sent.tenant_id
                            ))
                        }
                    }
                }
                pending = still_pending;
                wait = wait.max(Duration::from_millis(u64::from(
                    response.retry_after_ms.min(1_000),
                )));
            }
            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                return Err(format!("node {node_id}: batch refused: {status}"));
            }
            Err(status) => {
                last_problem = format!(
                    "node {node_id}: RecordBatch {:?}: {}",
                    status.code(),
                    status.message()
                );
                retries.add(
                    &format!("rpc {:?}", status.code()),
                    pending.len() as u64,
                    &last_problem,
                );
            }
        }
        if pending.is_empty() {
            return Ok(receipts
                .into_iter()
                .map(|receipt| receipt.expect("every event has its receipt"))
                .collect());
        }
        if started.elapsed() > BATCH_RETRY_TIMEOUT {
            return Err(format!(
                "{} of {} events (first: {} of {}) not acknowledged after {attempts} attempts \
                 in {BATCH_RETRY_TIMEOUT:?}; last problem: {last_problem}",
                pending.len(),
                events.len(),
                events[pending[0]].event_id,
                events[pending[0]].tenant_id
            ));
        }
        tokio::time::sleep(wait).await;
    }
}

// --- Comparing replicas ---

/// What [`Cluster::check_replicas`] found.
#[derive(Debug)]
pub struct ReplicaCheck {
    /// Events of each tenant (the same on every replica).
    pub per_tenant: BTreeMap<String, u64>,
    /// Acknowledged events found (once, on every replica).
    pub acked_found: usize,
    /// Tried events found (on every replica).
    pub tried_found: usize,
}

/// One stored event, as compared between replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    seq: u64,
    event_id: String,
    stream: String,
    leaf_hash: Vec<u8>,
    /// A hash of the whole stored event (payload, ingested_at, ...).
    content: u64,
}

/// A tenant's stream on one replica.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ReplicaStream {
    rows: Vec<Row>,
    last_seq: u64,
    blocks: Vec<v1::Block>,
}

/// A tenant's events and sealed blocks on the asked node's own replica.
async fn read_replica_stream(mut client: GrpcClient, tenant: &str) -> ReplicaStream {
    let mut rows = Vec::new();
    let mut last_seq;
    loop {
        let after_seq = rows.len() as u64;
        let page = client
            .tail(replica_read(v1::TailRequest {
                tenant_id: tenant.to_string(),
                after_seq,
                limit: TAIL_PAGE_EVENTS,
                stream: String::new(),
                ..v1::TailRequest::default()
            }))
            .await
            .unwrap_or_else(|status| panic!("replica Tail of {tenant}: {status}"))
            .into_inner();
        last_seq = page.last_seq;
        if page.events.is_empty() {
            break;
        }
        for stored in page.events {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            // Every field of the stored event (prost messages print them all).
            format!("{stored:?}").hash(&mut hasher);
            rows.push(Row {
                seq: stored.seq,
                event_id: stored
                    .event
                    .as_ref()
                    .map(|event| event.event_id.clone())
                    .unwrap_or_default(),
                stream: stored.stream,
                leaf_hash: stored.leaf_hash,
                content: hasher.finish(),
            });
        }
        // A replica that answers the same seqs again would loop forever.
        assert!(
            rows.last().is_some_and(|row| row.seq > after_seq),
            "replica Tail of {tenant} after seq {after_seq} did not move forward"
        );
    }
    let blocks = client
        .list_blocks(replica_read(v1::ListBlocksRequest {
            tenant_id: tenant.to_string(),
            stream_index: 0,
            from_block: 0,
            to_block: 0,
            with_events: false,
        }))
        .await
        .unwrap_or_else(|status| panic!("replica ListBlocks of {tenant}: {status}"))
        .into_inner()
        .collect::<Result<Vec<v1::Block>, tonic::Status>>()
        .await
        .unwrap_or_else(|status| panic!("replica ListBlocks of {tenant}: {status}"));
    ReplicaStream {
        rows,
        last_seq,
        blocks,
    }
}

/// The replicas compared so far, against the receipts.
struct Comparison<'a> {
    acked: &'a AckedMap,
    tried: &'a HashSet<String>,
    /// How often each acknowledged event was found (on the first replica).
    found: HashMap<&'a str, u64>,
    tried_found: usize,
    problems: Vec<String>,
}

impl<'a> Comparison<'a> {
    /// Compares one tenant's replicas (`replicas[i]` on node `node_ids[i]`).
    fn tenant(&mut self, tenant: &str, node_ids: &[u64], replicas: &[ReplicaStream]) {
        let problems = &mut self.problems;
        let first = &replicas[0];
        let first_node = node_ids[0];
        for (node_id, replica) in node_ids.iter().zip(replicas).skip(1) {
            if replica.rows != first.rows {
                let difference = first
                    .rows
                    .iter()
                    .zip(&replica.rows)
                    .find(|(a, b)| a != b)
                    .map(|(a, b)| format!("node {first_node} has {a:?}, node {node_id} has {b:?}"))
                    .unwrap_or_default();
                problems.push(format!(
                    "{tenant}: node {node_id} holds {} events, node {first_node} {}; first \
                     difference: {difference}",
                    replica.rows.len(),
                    first.rows.len()
                ));
            }
            if replica.blocks != first.blocks {
                problems.push(format!(
                    "{tenant}: node {node_id} has {} sealed blocks, node {first_node} {}; first \
                     different block index: {:?}",
                    replica.blocks.len(),
                    first.blocks.len(),
                    first
                        .blocks
                        .iter()
                        .zip(&replica.blocks)
                        .position(|(a, b)| a != b)
                ));
            }
        }
        for (node_id, replica) in node_ids.iter().zip(replicas) {
            if replica.last_seq != replica.rows.len() as u64 {
                problems.push(format!(
                    "{tenant} on node {node_id}: last_seq {} but {} events read",
                    replica.last_seq,
                    replica.rows.len()
                ));
            }
            let mut next_first_seq = 1;
            for block in &replica.blocks {
                if block.first_seq != next_first_seq || block.count == 0 {
                    problems.push(format!(
                        "{tenant} on node {node_id}: block {} starts at seq {} with {} events, \
                         expected to start at {next_first_seq}",
                        block.block_index, block.first_seq, block.count
                    ));
                    break;
                }
                next_first_seq += u64::from(block.count);
            }
            if next_first_seq - 1 > replica.rows.len() as u64 {
                problems.push(format!(
                    "{tenant} on node {node_id}: blocks cover seq {} but the stream ends at {}",
                    next_first_seq - 1,
                    replica.rows.len()
                ));
            }
        }
        let mut ids = BTreeSet::new();
        for (position, row) in first.rows.iter().enumerate() {
            if row.seq != position as u64 + 1 {
                problems.push(format!(
                    "{tenant}: seq {} at position {} (gap or disorder)",
                    row.seq,
                    position + 1
                ));
            }
            if !ids.insert(row.event_id.as_str()) {
                problems.push(format!("{tenant}: {} stored twice", row.event_id));
            }
            match self.acked.get_key_value(&row.event_id) {
                None if self.tried.contains(&row.event_id) => self.tried_found += 1,
                None => problems.push(format!(
                    "{tenant}: {} at seq {} was never acknowledged (nor tried without \
                     acknowledgement)",
                    row.event_id, row.seq
                )),
                Some((event_id, expected)) => {
                    if expected.tenant != tenant
                        || expected.seq != row.seq
                        || expected.leaf_hash != row.leaf_hash
                        || expected.stream != row.stream
                    {
                        problems.push(format!(
                            "{tenant}: {} stored at seq {} ({}), acknowledged as {expected:?}",
                            row.event_id, row.seq, row.stream
                        ));
                    }
                    *self.found.entry(event_id.as_str()).or_default() += 1;
                }
            }
        }
    }
}

/// `per_shard` tenants on each of `shards` data shards (`{prefix}_{n}`, the first found
/// for each shard), by shard.
pub fn tenants_per_shard(prefix: &str, shards: u32, per_shard: usize) -> Vec<String> {
    let mut by_shard: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let mut number = 0;
    while by_shard.len() < shards as usize
        || by_shard.values().any(|tenants| tenants.len() < per_shard)
    {
        let tenant = format!("{prefix}_{number}");
        let tenants = by_shard
            .entry(shard_for_tenant(&tenant, shards))
            .or_default();
        if tenants.len() < per_shard {
            tenants.push(tenant);
        }
        number += 1;
    }
    by_shard.into_values().flatten().collect()
}
