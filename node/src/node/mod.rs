//! Starting and stopping a node: storage, shards, actors, and the routing table the
//! API reads.

pub mod actor;
pub mod cluster;
pub mod key;
pub mod keys;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use actix::prelude::*;

use crate::access::key::NODE_CREDENTIAL_LABEL;
use crate::access::quota::Quotas;
use crate::access::{KeyDirectory, Token};
use crate::clock::Clock;
use crate::config::NodeConfig;
use crate::consensus::network::{Groups, Peers};
use crate::consensus::NodeId;
use crate::index::{IndexConfig, NodeIndex};
use crate::ledger::routing::{is_reserved_tenant, shard_for_tenant, ShardId};
use crate::ledger::NoteSigner;
use crate::query::cursor::CursorKey;
use crate::query::cursor_key;
use crate::shard::actor::ShardActor;
use crate::shard::{self, SealerSettings, ShardHandle, ShardSettings};
use crate::storage::publish::Publisher;
use crate::storage::NodeStore;
use actor::{AddShards, NodeActor};
use cluster::{ClusterMap, Forwarder, META_SHARD};
use std::time::Duration;

/// `tenant -> shard`, with a handle per local replica. Fixed on a single node; in a
/// cluster it is empty until the cluster map arrives (`cluster init`), then holds the
/// map and the replicas this node hosts.
pub struct Router {
    node_id: NodeId,
    table: RwLock<Arc<RouteTable>>,
}

#[derive(Default)]
struct RouteTable {
    /// Data shards; 0 while a cluster is not initialized.
    shard_count: u32,
    /// Local replicas, the metadata group (shard 0) included.
    shards: BTreeMap<ShardId, ShardHandle>,
    map: Option<ClusterMap>,
}

/// Why a tenant's request cannot be served here.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    #[error(
        "the cluster has no data shards yet: run `trailctl cluster init --shards N \
         --replicas 3` once"
    )]
    NotInitialized,
    #[error("shard {shard} has no replica on node {node} (replicas: {replicas:?})")]
    NotHosted {
        shard: ShardId,
        node: NodeId,
        replicas: Vec<NodeId>,
    },
}

impl From<RouteError> for tonic::Status {
    fn from(error: RouteError) -> tonic::Status {
        match error {
            RouteError::NotInitialized => tonic::Status::failed_precondition(error.to_string()),
            RouteError::NotHosted { .. } => tonic::Status::unavailable(error.to_string()),
        }
    }
}

impl Router {
    fn new(node_id: NodeId, table: RouteTable) -> Router {
        Router {
            node_id,
            table: RwLock::new(Arc::new(table)),
        }
    }

    fn table(&self) -> Arc<RouteTable> {
        self.table.read().expect("router lock").clone()
    }

    /// The data shard of a tenant, if the shards exist; shard 0 for the node's own
    /// streams (`_access`, `_cluster`), which every node hosts.
    pub fn shard_id_for(&self, tenant_id: &str) -> Option<ShardId> {
        if is_reserved_tenant(tenant_id) {
            return Some(META_SHARD);
        }
        let table = self.table();
        (table.shard_count > 0).then(|| shard_for_tenant(tenant_id, table.shard_count))
    }

    /// This node's replica of the tenant's shard.
    pub fn shard_for(&self, tenant_id: &str) -> Result<ShardHandle, RouteError> {
        let table = self.table();
        let shard = self.hosted_in(&table, tenant_id)?;
        Ok(table.shards[&shard].clone())
    }

    /// The id of this node's replica of the tenant's shard: [`Router::shard_for`]
    /// without cloning a handle (ingest routes every event of a batch).
    pub fn hosted_shard_for(&self, tenant_id: &str) -> Result<ShardId, RouteError> {
        self.hosted_in(&self.table(), tenant_id)
    }

    fn hosted_in(&self, table: &RouteTable, tenant_id: &str) -> Result<ShardId, RouteError> {
        if is_reserved_tenant(tenant_id) && table.shards.contains_key(&META_SHARD) {
            return Ok(META_SHARD);
        }
        if table.shard_count == 0 {
            return Err(RouteError::NotInitialized);
        }
        let shard = shard_for_tenant(tenant_id, table.shard_count);
        if table.shards.contains_key(&shard) {
            return Ok(shard);
        }
        Err(RouteError::NotHosted {
            shard,
            node: self.node_id,
            replicas: table
                .map
                .as_ref()
                .map_or_else(Vec::new, |map| map.replicas_of(shard).to_vec()),
        })
    }

    /// Every local replica (the metadata group first, in a cluster).
    pub fn shards(&self) -> Vec<ShardHandle> {
        self.table().shards.values().cloned().collect()
    }

    pub fn local(&self, shard: ShardId) -> Option<ShardHandle> {
        self.table().shards.get(&shard).cloned()
    }

    pub fn map(&self) -> Option<ClusterMap> {
        self.table().map.clone()
    }

    /// The node that leads `shard`, as far as this node knows: its own replica's view,
    /// else the shard's preferred leader.
    pub fn leader_of(&self, shard: ShardId) -> Option<NodeId> {
        let table = self.table();
        match table.shards.get(&shard) {
            Some(handle) => handle.raft.metrics().borrow().current_leader,
            None => table
                .map
                .as_ref()
                .and_then(|map| map.replicas_of(shard).first().copied()),
        }
    }

    fn install(&self, map: ClusterMap, opened: Vec<ShardHandle>) {
        let mut table = self.table.write().expect("router lock");
        let mut shards = table.shards.clone();
        for handle in opened {
            shards.insert(handle.shard, handle);
        }
        *table = Arc::new(RouteTable {
            shard_count: map.shards,
            shards,
            map: Some(map),
        });
    }
}

/// Query scans running at once on the blocking pool; more wait for a permit. A scan is
/// CPU-bound (up to ~0.1 s of one core, see `EXAMINED_PER_REQUEST_MAX`), so a few per
/// core keep the machine busy without starving ingest's apply of blocking threads.
/// `api/query.rs` takes these permits.
pub const QUERIES_IN_FLIGHT_MAX: usize = 8;

/// `ListBlocks` streams open at once per node; more are refused (RESOURCE_EXHAUSTED).
/// Each holds at most its buffer and one step of blocks (~4 MiB with events), so
/// together ~128 MiB at worst, and no thread while it waits for its client
/// (`api/proofs.rs`).
pub const BLOCK_STREAMS_MAX: usize = 32;

/// A started node: the API's view of it.
#[derive(Clone)]
pub struct Node {
    pub config: Arc<NodeConfig>,
    pub router: Arc<Router>,
    pub actor: Addr<NodeActor>,
    pub store: NodeStore,
    pub clock: Arc<dyn Clock>,
    pub signer: Arc<NoteSigner>,
    pub publisher: Publisher,
    /// Authenticates query cursors: `<data dir>/cursor.key` on a single node, derived
    /// from the shared checkpoint key in a cluster.
    pub cursor_key: Arc<CursorKey>,
    /// Query scans running at once; more wait their turn (`api/query.rs`).
    pub query_permits: Arc<tokio::sync::Semaphore>,
    /// `ListBlocks` streams open at once; more are refused (`api/proofs.rs`).
    pub block_stream_permits: Arc<tokio::sync::Semaphore>,
    /// The secondary indexes, built behind the log (`index/`).
    pub index: NodeIndex,
    /// In a cluster: the clients this node forwards requests to shard leaders with.
    pub forwarder: Option<Forwarder>,
    /// The Raft groups the node's transport service delivers to.
    pub groups: Groups,
    /// The API keys, as this node's replica of shard 0 records them (`access/`).
    pub keys: Arc<KeyDirectory>,
    /// Every tenant's ingest quota, charged where its events reach its shard.
    pub quotas: Arc<Quotas>,
}

impl Node {
    /// Stops the shards in order, then makes everything durable.
    pub async fn stop(&self) -> anyhow::Result<()> {
        self.actor.send(actor::StopNode).await?;
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || index.stop()).await?;
        let db = self.store.store_db();
        tokio::task::spawn_blocking(move || db.sync_all()).await??;
        Ok(())
    }
}

/// What a cluster's cursor key is derived under (`NoteSigner::derive_secret`).
const CLUSTER_CURSOR_KEY_LABEL: &[u8] = b"query-cursor";

/// The on-disk format this build reads and writes. 1: events without blocks (first
/// builds); 2: blocks, stream trees and checkpoints; 3: the index feed and time index
/// (a format-2 directory is upgraded in place: its indexes are built at start; an
/// older traild refuses a format-3 one, since it would not feed the indexes).
const DATA_FORMAT: u32 = 3;
const DATA_FORMAT_UPGRADABLE: u32 = 2;

/// Opens storage and every local shard replica on the current (multi-thread) runtime,
/// then starts the actors on `arbiter` (an actix thread). In a cluster, the data
/// shards open when the cluster map is known: at start if it was stored before, else
/// once `cluster init` wrote it ([`watch_cluster_map`]).
pub async fn start(
    config: NodeConfig,
    clock: Arc<dyn Clock>,
    arbiter: &ArbiterHandle,
) -> anyhow::Result<Node> {
    let store = NodeStore::open_with_cache(&config.data_dir, config.cache_bytes)?;
    let shard_count = check_layout(&store, &config)?;
    let tamper = &config.tamper;
    let signer = Arc::new(key::load_or_create(
        &config.data_dir,
        &tamper.checkpoint_origin,
    )?);
    // In a cluster every node must open the cursors any node sealed (the next page may
    // go to a new leader, or to a replica for an eventual read): the key is derived
    // from the checkpoint key they share. A single node keeps its own file.
    let cursor_key = Arc::new(if config.cluster.is_some() {
        CursorKey::from_bytes(signer.derive_secret(CLUSTER_CURSOR_KEY_LABEL))
    } else {
        cursor_key::load_or_create(&config.data_dir)?
    });
    let publisher = Publisher::start(&tamper.checkpoint_dir).map_err(|error| {
        anyhow::anyhow!(
            "checkpoint_dir {}: {error}",
            tamper.checkpoint_dir.display()
        )
    })?;
    let peers = match &config.cluster {
        None => Peers::none(config.node_id),
        Some(cluster) => {
            Peers::connect_lazy(&cluster.cluster_id, config.node_id, &cluster.raft_addrs)?
        }
    };
    let settings = ShardSettings {
        node_id: config.node_id,
        cluster_name: config
            .cluster
            .as_ref()
            .map_or_else(|| "trail".to_string(), |cluster| cluster.cluster_id.clone()),
        snapshot_logs_since_last: config.snapshot_logs_since_last,
        raft_timing: crate::consensus::RaftTiming::default(),
        limits: config.limits,
        sealer: SealerSettings {
            node_id: config.node_id,
            seal_interval: Duration::from_millis(tamper.seal_interval_ms),
            checkpoint_interval: Duration::from_millis(tamper.checkpoint_interval_ms),
            origin: tamper.checkpoint_origin.clone(),
        },
        signer: signer.clone(),
        publisher: Some(publisher.clone()),
        peers,
    };
    let groups = Groups::default();
    let mut opened = Vec::new();
    let mut table = RouteTable::default();
    match &config.cluster {
        None => {
            let alone = BTreeMap::from([(config.node_id, config.grpc_addr.to_string())]);
            // Shard 0 holds the node's own streams (the API keys), as in a cluster.
            for shard_id in std::iter::once(META_SHARD).chain(1..=shard_count) {
                opened.push(
                    shard::open(&store, shard_id, &settings, &alone, 0, clock.clone()).await?,
                );
            }
            for (handle, _) in &opened {
                handle
                    .raft
                    .wait(Some(Duration::from_secs(30)))
                    .state(
                        openraft::ServerState::Leader,
                        "single-replica shard elects itself",
                    )
                    .await?;
            }
            table.shard_count = shard_count;
        }
        Some(cluster) => {
            let meta = shard::open(
                &store,
                META_SHARD,
                &settings,
                &cluster.peers,
                0,
                clock.clone(),
            )
            .await?;
            let map = cluster::read_map(&meta.0.keyspaces)?;
            opened.push(meta);
            if let Some(map) = map {
                check_map(&map, &config, &signer)?;
                opened.extend(open_data_shards(&store, &map, &settings, &clock).await?);
                table.shard_count = map.shards;
                table.map = Some(map);
            }
        }
    }
    for (handle, _) in &opened {
        groups.insert(handle.shard, handle.raft.clone());
        table.shards.insert(handle.shard, handle.clone());
    }

    let shard_keyspaces: Vec<_> = opened
        .iter()
        .map(|(handle, _)| handle.keyspaces.clone())
        .collect();
    let index = NodeIndex::open(
        &store,
        &shard_keyspaces,
        IndexConfig {
            commit_interval: Duration::from_millis(config.index_commit_ms),
            off: config.index_off,
            ..IndexConfig::new(&config.data_dir)
        },
    )?;
    for (handle, _) in &opened {
        attach_index_gate(&index, handle);
    }

    let (sender, receiver) = tokio::sync::oneshot::channel();
    arbiter.spawn(async move {
        let mut shard_actors = BTreeMap::new();
        for (handle, tasks) in opened {
            shard_actors.insert(handle.shard, ShardActor::new(handle, tasks).start());
        }
        let _ = sender.send(NodeActor::new(shard_actors).start());
    });
    let actor = receiver.await?;
    let node_credential = Token::node_credential(signer.derive_secret(NODE_CREDENTIAL_LABEL));
    let node = Node {
        forwarder: config
            .cluster
            .as_ref()
            .map(|cluster| Forwarder::new(config.node_id, &cluster.peers, &node_credential)),
        keys: keys::new_directory(&node_credential),
        quotas: Arc::new(Quotas::new(config.tenant_quota)),
        config: Arc::new(config.clone()),
        router: Arc::new(Router::new(config.node_id, table)),
        actor,
        store,
        clock,
        signer,
        publisher,
        cursor_key,
        query_permits: Arc::new(tokio::sync::Semaphore::new(QUERIES_IN_FLIGHT_MAX)),
        block_stream_permits: Arc::new(tokio::sync::Semaphore::new(BLOCK_STREAMS_MAX)),
        index,
        groups,
    };
    {
        let refreshing = node.clone();
        tokio::task::spawn_blocking(move || keys::refresh(&refreshing)).await??;
    }
    // A single node leads its shard 0 by now: its first admin key exists before it
    // serves. A cluster's is created by whichever node leads shard 0 first, and its
    // leadership may move while it tries: `keep_current` tries again.
    match keys::bootstrap_admin_key(&node).await {
        Ok(_) => {}
        Err(error) if config.cluster.is_some() => {
            tracing::info!(%error, "the first admin key is not created yet; retrying");
        }
        Err(error) => return Err(error),
    }
    tokio::spawn(keys::keep_current(node.clone()));
    if config.cluster.is_some() {
        if node.router.map().is_none() {
            tokio::spawn(watch_cluster_map(node.clone(), settings));
        }
        tokio::spawn(balance_leaders(node.clone()));
    }
    Ok(node)
}

/// Moves leaderships back to the shards' preferred replicas (the first of each in the
/// map), so leaders are spread over the nodes: after a node rejoins, elections have
/// left them wherever they were won. openraft 0.9 has no leadership transfer and no
/// pre-vote, so the preferred replica calls an election itself, and only where it
/// cannot lose or disturb anything: its shard has been idle for a whole round (its log
/// did not grow, so it holds everything the leader has) and it applied all of it. One
/// shard per round; a busy shard keeps its leader until it quiets down.
async fn balance_leaders(node: Node) {
    const ROUND: Duration = Duration::from_secs(10);
    let mut last_seen: BTreeMap<ShardId, Option<u64>> = BTreeMap::new();
    loop {
        tokio::time::sleep(ROUND).await;
        let Some(map) = node.router.map() else {
            continue;
        };
        let mut elected = false;
        for shard in map.shards_on(node.config.node_id) {
            if map.replicas_of(shard).first() != Some(&node.config.node_id) {
                continue;
            }
            let Some(handle) = node.router.local(shard) else {
                continue;
            };
            let metrics = handle.raft.metrics().borrow().clone();
            let previous = last_seen.insert(shard, metrics.last_log_index);
            let follows_another = metrics.state == openraft::ServerState::Follower
                && metrics
                    .current_leader
                    .is_some_and(|leader| leader != node.config.node_id);
            let idle = previous == Some(metrics.last_log_index);
            let applied_all = metrics.last_log_index.is_some()
                && metrics.last_applied.map(|log_id| log_id.index) == metrics.last_log_index;
            if follows_another && idle && applied_all && !elected {
                tracing::info!(
                    shard,
                    "taking back the preferred leadership of an idle shard"
                );
                let _ = handle.raft.trigger().elect().await;
                elected = true;
            }
        }
    }
}

/// Opens this node's replicas of the map's data shards.
async fn open_data_shards(
    store: &NodeStore,
    map: &ClusterMap,
    settings: &ShardSettings,
    clock: &Arc<dyn Clock>,
) -> anyhow::Result<Vec<(ShardHandle, shard::ShardTasks)>> {
    let mut opened = Vec::new();
    for shard_id in map.shards_on(settings.node_id) {
        let members: BTreeMap<NodeId, String> = map
            .replicas_of(shard_id)
            .iter()
            .map(|node| (*node, map.nodes[node].clone()))
            .collect();
        opened.push(
            shard::open(
                store,
                shard_id,
                settings,
                &members,
                map.epoch,
                clock.clone(),
            )
            .await?,
        );
    }
    Ok(opened)
}

/// Lets the shard's batcher wait for the index (a shard the index has).
fn attach_index_gate(index: &NodeIndex, handle: &ShardHandle) {
    if let Some(progress) = index.progress(handle.shard) {
        handle.index_gate.attach(progress);
    }
}

/// A node that joins must agree with the map on the cluster's nodes and checkpoint key.
fn check_map(map: &ClusterMap, config: &NodeConfig, signer: &NoteSigner) -> anyhow::Result<()> {
    let cluster = config.cluster.as_ref().expect("checked in a cluster");
    if map.cluster_id != cluster.cluster_id {
        anyhow::bail!(
            "cluster_id: this node says {:?}, the cluster map says {:?}",
            cluster.cluster_id,
            map.cluster_id
        );
    }
    if map.nodes != cluster.peers {
        anyhow::bail!(
            "peers: this node's --peers {:?} differ from the cluster map's nodes {:?}; \
             start every node with the same list",
            cluster.peers,
            map.nodes
        );
    }
    // A map recorded before peer listeners existed names none: its nodes use the
    // default peer addresses.
    if !map.raft_nodes.is_empty() && map.raft_nodes != cluster.raft_addrs {
        anyhow::bail!(
            "peers: this node's peer addresses {:?} differ from the cluster map's {:?}; \
             start every node with the same --peers list",
            cluster.raft_addrs,
            map.raft_nodes
        );
    }
    let key = signer.verifier_key();
    if map.verifier_key != key {
        anyhow::bail!(
            "checkpoint key: this node signs with {key}, the cluster with {}; every node \
             of a cluster signs checkpoints with the same key: copy node.key from the data \
             directory of a node of the cluster into {} before starting this one",
            map.verifier_key,
            config.data_dir.display()
        );
    }
    Ok(())
}

/// Waits for the cluster map to appear in the local replica of shard 0, then opens
/// this node's data shards and starts serving them.
async fn watch_cluster_map(node: Node, settings: ShardSettings) {
    const POLL: Duration = Duration::from_millis(300);
    let Some(meta) = node.router.local(META_SHARD) else {
        return;
    };
    let map = loop {
        tokio::time::sleep(POLL).await;
        let keyspaces = meta.keyspaces.clone();
        match tokio::task::spawn_blocking(move || cluster::read_map(&keyspaces)).await {
            Ok(Ok(Some(map))) => break map,
            Ok(Ok(None)) => continue,
            Ok(Err(error)) => {
                tracing::error!(%error, "reading the cluster map; stopping the node");
                std::process::exit(70);
            }
            Err(_) => return,
        }
    };
    if let Err(error) = check_map(&map, &node.config, &node.signer) {
        tracing::error!("{error:#}; stopping the node");
        std::process::exit(78);
    }
    let opened = match open_data_shards(&node.store, &map, &settings, &node.clock).await {
        Ok(opened) => opened,
        Err(error) => {
            tracing::error!("opening the data shards of the cluster map: {error:#}; stopping");
            std::process::exit(70);
        }
    };
    for (handle, _) in &opened {
        let index = node.index.clone();
        let keyspaces = handle.keyspaces.clone();
        let added = tokio::task::spawn_blocking(move || index.add_shard(&keyspaces))
            .await
            .map_err(anyhow::Error::from)
            .and_then(|added| added);
        if let Err(error) = added {
            tracing::error!(
                shard = handle.shard,
                "indexing a new shard: {error:#}; stopping"
            );
            std::process::exit(70);
        }
        attach_index_gate(&node.index, handle);
        node.groups.insert(handle.shard, handle.raft.clone());
    }
    let handles: Vec<ShardHandle> = opened.iter().map(|(handle, _)| handle.clone()).collect();
    tracing::info!(
        shards = map.shards,
        replicas = map.replicas,
        local = handles.len(),
        "cluster map received; data shards open"
    );
    node.router.install(map, handles);
    let _ = node.actor.send(AddShards(opened)).await;
}

/// A data directory is either a single node's or a cluster node's, for good: the
/// single node's shards are single-replica groups placed by its own shard count.
/// Returns the single node's shard count (0 in a cluster).
fn check_layout(store: &NodeStore, config: &NodeConfig) -> anyhow::Result<u32> {
    let meta = store.node_meta()?;
    let stored_cluster = meta.cluster_id()?;
    let has_shards = meta.has_shard_count()?;
    match (&config.cluster, stored_cluster) {
        (None, None) => check_shard_count(store, config.shards),
        (None, Some(cluster_id)) => anyhow::bail!(
            "data_dir {}: holds a replica of cluster {cluster_id:?}; start it with --node-id \
             and --peers as before",
            config.data_dir.display()
        ),
        (Some(cluster), stored) => {
            if has_shards {
                anyhow::bail!(
                    "data_dir {}: holds a single node's data; a cluster node needs a new \
                     --data-dir (moving a single node's tenants into a cluster is not \
                     supported yet)",
                    config.data_dir.display()
                );
            }
            if config.shards.is_some() {
                anyhow::bail!(
                    "shards: in a cluster the data shards are created by `trailctl cluster \
                     init --shards N`; start without --shards"
                );
            }
            match stored {
                Some(stored) if stored != cluster.cluster_id => anyhow::bail!(
                    "cluster_id: this data directory belongs to cluster {stored:?}, not {:?}",
                    cluster.cluster_id
                ),
                Some(_) => {}
                None => {
                    meta.set_data_format(DATA_FORMAT)?;
                    meta.set_cluster_id(&cluster.cluster_id)?;
                    store.store_db().sync_all()?;
                }
            }
            Ok(0)
        }
    }
}

/// Tenants are placed by `hash % shard count`, so the count is fixed at first start.
fn check_shard_count(store: &NodeStore, requested: Option<u32>) -> anyhow::Result<u32> {
    const SHARDS_DEFAULT: u32 = 4;
    let meta = store.node_meta()?;
    let format = meta.data_format()?;
    match meta.has_shard_count()? {
        false => {
            let shards = requested.unwrap_or(SHARDS_DEFAULT);
            meta.set_data_format(DATA_FORMAT)?;
            meta.set_shard_count(shards)?;
            store.store_db().sync_all()?;
            Ok(shards)
        }
        true => {
            let found = format.unwrap_or(1);
            if found == DATA_FORMAT_UPGRADABLE {
                meta.set_data_format(DATA_FORMAT)?;
                store.store_db().sync_all()?;
                tracing::info!(from = found, to = DATA_FORMAT, "upgraded the data format");
            } else if found != DATA_FORMAT {
                anyhow::bail!(
                    "data_dir {}: written in data format {found}; this traild reads format \
                     {DATA_FORMAT}. Start with a new --data-dir (format {found} was a \
                     pre-release layout without blocks and checkpoints)",
                    store.data_dir.display()
                );
            }
            let stored = meta
                .shard_count()?
                .ok_or_else(|| anyhow::anyhow!("shard_count: recorded, then not found"))?;
            let shards = requested.unwrap_or(stored);
            if stored != shards {
                anyhow::bail!(
                    "shards: this data directory was created with {stored} shards; \
                     starting with {shards} would move tenants between shards. \
                     Start without --shards, or with --shards {stored}"
                );
            }
            Ok(stored)
        }
    }
}
