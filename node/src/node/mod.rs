//! Starting and stopping a node: storage, shards, actors, and the routing table the
//! API reads.

pub mod actor;
pub mod cursor_key;
pub mod key;

use std::collections::BTreeMap;
use std::sync::Arc;

use actix::prelude::*;

use crate::clock::Clock;
use crate::config::NodeConfig;
use crate::index::{IndexConfig, NodeIndex};
use crate::ledger::routing::{shard_for_tenant, ShardId};
use crate::ledger::NoteSigner;
use crate::shard::actor::ShardActor;
use crate::shard::cursor::CursorKey;
use crate::shard::{self, SealerSettings, ShardHandle, ShardSettings};
use crate::storage::publish::Publisher;
use crate::storage::NodeStore;
use actor::NodeActor;
use std::time::Duration;

/// `tenant -> shard`, with a handle per local shard. Immutable on a single node; the
/// cluster work refreshes it from the metadata group.
pub struct Router {
    shard_count: u32,
    shards: BTreeMap<ShardId, ShardHandle>,
}

impl Router {
    pub fn shard_for(&self, tenant_id: &str) -> &ShardHandle {
        let shard = shard_for_tenant(tenant_id, self.shard_count);
        self.shards
            .get(&shard)
            .expect("every data shard is hosted on a single node")
    }

    pub fn shards(&self) -> impl Iterator<Item = &ShardHandle> {
        self.shards.values()
    }
}

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
    /// Authenticates query cursors (`<data dir>/cursor.key`).
    pub cursor_key: Arc<CursorKey>,
    /// Query scans running at once; more wait their turn (`api/query.rs`).
    pub query_permits: Arc<tokio::sync::Semaphore>,
    /// The secondary indexes, built behind the log (`index/`).
    pub index: NodeIndex,
}

impl Node {
    /// Stops the shards in order, then makes everything durable.
    pub async fn stop(&self) -> anyhow::Result<()> {
        self.actor.send(actor::StopNode).await?;
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || index.stop()).await?;
        let db = self.store.db.clone();
        tokio::task::spawn_blocking(move || db.persist(fjall::PersistMode::SyncAll)).await??;
        Ok(())
    }
}

const KEY_SHARD_COUNT: &[u8] = b"shard_count";
const KEY_FORMAT: &[u8] = b"format";
/// The on-disk format this build reads and writes. 1: events without blocks (first
/// builds); 2: blocks, stream trees and checkpoints; 3: the index feed and time index
/// (a format-2 directory is upgraded in place: its indexes are built at start; an
/// older traild refuses a format-3 one, since it would not feed the indexes).
const DATA_FORMAT: u32 = 3;
const DATA_FORMAT_UPGRADABLE: u32 = 2;

/// Opens storage and every shard on the current (multi-thread) runtime, then starts the
/// actors on `arbiter` (an actix thread).
pub async fn start(
    config: NodeConfig,
    clock: Arc<dyn Clock>,
    arbiter: &ArbiterHandle,
) -> anyhow::Result<Node> {
    let store = NodeStore::open(&config.data_dir)?;
    let shard_count = check_shard_count(&store, config.shards)?;
    let tamper = &config.tamper;
    let signer = Arc::new(key::load_or_create(
        &config.data_dir,
        &tamper.checkpoint_origin,
    )?);
    let cursor_key = Arc::new(cursor_key::load_or_create(&config.data_dir)?);
    let publisher = Publisher::start(&tamper.checkpoint_dir).map_err(|error| {
        anyhow::anyhow!(
            "checkpoint_dir {}: {error}",
            tamper.checkpoint_dir.display()
        )
    })?;
    let settings = ShardSettings {
        node_id: config.node_id,
        advertise_addr: config.grpc_addr.to_string(),
        cluster_name: "trail".to_string(),
        snapshot_logs_since_last: config.snapshot_logs_since_last,
        limits: config.limits,
        sealer: SealerSettings {
            node_id: config.node_id,
            seal_interval: Duration::from_millis(tamper.seal_interval_ms),
            checkpoint_interval: Duration::from_millis(tamper.checkpoint_interval_ms),
            origin: tamper.checkpoint_origin.clone(),
        },
        signer: signer.clone(),
        publisher: Some(publisher.clone()),
    };
    let mut handles = BTreeMap::new();
    let mut opened = Vec::new();
    for shard_id in 1..=shard_count {
        let (handle, tasks) = shard::open(&store, shard_id, &settings, clock.clone()).await?;
        handles.insert(shard_id, handle.clone());
        opened.push((shard_id, handle, tasks));
    }
    for handle in handles.values() {
        handle
            .raft
            .wait(Some(std::time::Duration::from_secs(30)))
            .state(
                openraft::ServerState::Leader,
                "single-replica shard elects itself",
            )
            .await?;
    }

    let shard_keyspaces: Vec<_> = handles
        .values()
        .map(|handle| handle.keyspaces.clone())
        .collect();
    let index = NodeIndex::open(
        &store.db,
        &shard_keyspaces,
        IndexConfig::new(&config.data_dir),
    )?;

    let (sender, receiver) = tokio::sync::oneshot::channel();
    arbiter.spawn(async move {
        let mut shard_actors = BTreeMap::new();
        for (shard_id, handle, tasks) in opened {
            shard_actors.insert(shard_id, ShardActor::new(handle, tasks).start());
        }
        let _ = sender.send(NodeActor::new(shard_actors).start());
    });
    let actor = receiver.await?;
    Ok(Node {
        config: Arc::new(config.clone()),
        router: Arc::new(Router {
            shard_count,
            shards: handles,
        }),
        actor,
        store,
        clock,
        signer,
        publisher,
        cursor_key,
        query_permits: Arc::new(tokio::sync::Semaphore::new(
            crate::api::query::QUERIES_IN_FLIGHT_MAX,
        )),
        index,
    })
}

/// Tenants are placed by `hash % shard count`, so the count is fixed at first start.
fn check_shard_count(store: &NodeStore, requested: Option<u32>) -> anyhow::Result<u32> {
    const SHARDS_DEFAULT: u32 = 4;
    let meta = store
        .db
        .keyspace("node", fjall::KeyspaceCreateOptions::default)?;
    let format = match meta.get(KEY_FORMAT)? {
        Some(bytes) => Some(u32::from_be_bytes(bytes.as_ref().try_into()?)),
        None => None,
    };
    match meta.get(KEY_SHARD_COUNT)? {
        None => {
            let shards = requested.unwrap_or(SHARDS_DEFAULT);
            meta.insert(KEY_FORMAT, DATA_FORMAT.to_be_bytes())?;
            meta.insert(KEY_SHARD_COUNT, shards.to_be_bytes())?;
            store.db.persist(fjall::PersistMode::SyncAll)?;
            Ok(shards)
        }
        Some(bytes) => {
            let found = format.unwrap_or(1);
            if found == DATA_FORMAT_UPGRADABLE {
                meta.insert(KEY_FORMAT, DATA_FORMAT.to_be_bytes())?;
                store.db.persist(fjall::PersistMode::SyncAll)?;
                tracing::info!(from = found, to = DATA_FORMAT, "upgraded the data format");
            } else if found != DATA_FORMAT {
                anyhow::bail!(
                    "data_dir {}: written in data format {found}; this traild reads format \
                     {DATA_FORMAT}. Start with a new --data-dir (format {found} was a \
                     pre-release layout without blocks and checkpoints)",
                    store.data_dir.display()
                );
            }
            let stored = u32::from_be_bytes(bytes.as_ref().try_into()?);
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
