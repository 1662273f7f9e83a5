//! A shard: one Raft group (openraft over fjall), its group-commit batcher, its reads,
//! and the actor that owns its lifecycle.

pub mod actor;
pub mod batcher;
pub mod proofs;
pub mod query;
pub mod reader;
pub mod sealer;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::BasicNode;
use tokio::sync::oneshot;

use crate::clock::Clock;
use crate::consensus::{self, network::Peers, NodeId, Raft};
use crate::ledger::routing::ShardId;
use crate::ledger::NoteSigner;
use crate::ledger::{ApplyReceipt, EventRecord};
use crate::storage::publish::Publisher;
use crate::storage::snapshot_name::SnapshotStamp;
use crate::storage::state_machine::ShardCounters;
use crate::storage::{AppliedProgress, LogStore, NodeStore, ShardKeyspaces, StateMachine};
pub use batcher::{BatchLimits, IngestError, IngestQueue, IngestReply};
pub use sealer::{Sealer, SealerSettings};

/// Settings a shard is opened with.
#[derive(Clone)]
pub struct ShardSettings {
    pub node_id: NodeId,
    pub cluster_name: String,
    pub snapshot_logs_since_last: u64,
    pub raft_timing: consensus::RaftTiming,
    pub limits: BatchLimits,
    pub sealer: SealerSettings,
    pub signer: Arc<NoteSigner>,
    pub publisher: Option<Publisher>,
    /// The channels to the other nodes (none on a single node).
    pub peers: Peers,
}

/// Everything the data path needs to reach a shard. Cheap to clone.
#[derive(Clone)]
pub struct ShardHandle {
    pub shard: ShardId,
    pub raft: Raft,
    pub queue: IngestQueue,
    pub keyspaces: ShardKeyspaces,
    pub counters: Arc<ShardCounters>,
    /// The state machine's applied index (what linearizable reads wait for).
    pub applied: Arc<AppliedProgress>,
    pub sealer: Arc<Sealer>,
    /// Backpressure from the node's indexes, attached once the shard joined them.
    pub index_gate: batcher::IndexGate,
}

impl ShardHandle {
    pub fn submit(
        &self,
        events: Vec<EventRecord>,
    ) -> Result<oneshot::Receiver<IngestReply>, IngestError> {
        self.queue.submit(events)
    }

    /// Records one event of the node's own (the cluster map, a key change), waits for
    /// its receipt, then until this replica has applied it: a read here sees it.
    pub async fn record_applied(&self, event: EventRecord) -> Result<ApplyReceipt, IngestError> {
        let unknown = |reason: String| IngestError::Unavailable {
            shard: self.shard,
            reason,
        };
        let receipt = match self.submit(vec![event])?.await {
            Ok(Ok(mut receipts)) if receipts.len() == 1 => receipts.pop().expect("one receipt"),
            Ok(Ok(receipts)) => {
                return Err(unknown(format!(
                    "{} receipts for one event",
                    receipts.len()
                )))
            }
            Ok(Err(error)) => return Err(error),
            Err(_) => {
                return Err(unknown(
                    "the shard stopped before acknowledging; outcome unknown".into(),
                ))
            }
        };
        self.read_barrier()
            .await
            .map_err(|error| unknown(error.to_string()))?;
        Ok(receipt)
    }

    /// The barrier every leader read passes before it reads the shard's store
    /// (`Query`, `Count`, `GetEvent`, `Tail`): when it returns `Ok`, the store holds
    /// every write acknowledged before it was called. See [`read_barrier`].
    pub async fn read_barrier(&self) -> Result<(), ReadBarrierError> {
        self.read_barrier_within(READ_BARRIER_TIMEOUT).await
    }

    pub async fn read_barrier_within(&self, limit: Duration) -> Result<(), ReadBarrierError> {
        let raft = self.raft.clone();
        read_barrier(
            self.shard,
            async move {
                match raft.get_read_log_id().await {
                    Ok((read_log_id, _applied)) => Ok(Confirmed {
                        read_index: read_log_id.map(|log_id| log_id.index),
                        // Read after the confirmation: the log as it was then, or later.
                        last_log_index: raft.metrics().borrow().last_log_index,
                    }),
                    Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
                        Err(ReadBarrierError::NotLeader {
                            shard: self.shard,
                            leader: forward.leader_id,
                        })
                    }
                    Err(error) => Err(ReadBarrierError::Unavailable {
                        shard: self.shard,
                        reason: error.to_string(),
                    }),
                }
            },
            &self.applied,
            limit,
        )
        .await
    }
}

/// How long a read waits for leadership to be confirmed and the log to be applied.
pub const READ_BARRIER_TIMEOUT: Duration = Duration::from_secs(5);

/// A leader's confirmation of its leadership for a read.
#[derive(Debug, Clone, Copy)]
pub struct Confirmed {
    /// openraft's read index (`get_read_log_id`): max(committed, the term's first entry).
    pub read_index: Option<u64>,
    /// The leader's last log index, observed after the confirmation.
    pub last_log_index: Option<u64>,
}

/// Why a read could not pass the barrier. Every case maps to `UNAVAILABLE`: the read
/// may be retried (here, or at the leader named).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadBarrierError {
    #[error("this node does not lead shard {shard} (leader: {leader:?}); retry at the leader")]
    NotLeader {
        shard: ShardId,
        leader: Option<NodeId>,
    },
    #[error("shard {shard} is unavailable for reads: {reason}")]
    Unavailable { shard: ShardId, reason: String },
    #[error(
        "shard {shard} did not confirm its leadership and apply its log within {limit:?}; retry"
    )]
    Timeout { shard: ShardId, limit: Duration },
}

/// A linearizable read barrier: confirm leadership (`confirm`: a quorum still accepts
/// this leader), then wait until the local state machine has applied the leader's
/// whole log as it was at that point.
///
/// openraft's read index alone is not enough (seed 495 of the simulation,
/// docs/SIMULATION.md): the committed id is not fsynced, so a leader that crashed and
/// was restored as leader of its old term may know a committed index below writes it
/// acknowledged before the crash, and its read index can be below them. Every
/// acknowledged write is in the confirmed leader's log, so its last log index is always
/// enough. On a single-replica group with no write in flight, applied already equals the
/// last log index and the barrier costs one round trip to the Raft core.
pub async fn read_barrier<F>(
    shard: ShardId,
    confirm: F,
    applied: &AppliedProgress,
    limit: Duration,
) -> Result<(), ReadBarrierError>
where
    F: Future<Output = Result<Confirmed, ReadBarrierError>>,
{
    let barrier = async {
        let confirmed = confirm.await?;
        let needed = confirmed.read_index.max(confirmed.last_log_index);
        let Some(needed) = needed else {
            return Ok(());
        };
        if applied.reached(needed) {
            return Ok(());
        }
        applied
            .wait_for(needed)
            .await
            .map_err(|failed| ReadBarrierError::Unavailable {
                shard,
                reason: failed.to_string(),
            })
    };
    tokio::time::timeout(limit, barrier)
        .await
        .map_err(|_| ReadBarrierError::Timeout { shard, limit })?
}

/// The background work of a shard, owned by its actor.
pub struct ShardTasks {
    pub batcher: tokio::task::JoinHandle<()>,
    pub stop_batcher: oneshot::Sender<()>,
    pub sealer: tokio::task::JoinHandle<()>,
    pub stop_sealer: oneshot::Sender<()>,
}

/// Opens a shard's storage, starts its Raft group and its batcher. Must run on the
/// multi-thread runtime: openraft spawns its tasks where it is created.
///
/// On first start the group is initialized with `members` (node id -> gRPC address):
/// every replica does it with the same membership, which openraft allows (one leader
/// is elected; its log wins). `epoch` is the group's incarnation its snapshots carry
/// (`storage::snapshot_name`): 0 on a single node and for shard 0, the cluster map's
/// epoch for a data shard.
pub async fn open(
    store: &NodeStore,
    shard: ShardId,
    settings: &ShardSettings,
    members: &BTreeMap<NodeId, String>,
    epoch: u64,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<(ShardHandle, ShardTasks)> {
    let keyspaces = store.shard(shard)?;
    let stamp = SnapshotStamp {
        cluster: settings.cluster_name.clone(),
        shard,
        epoch,
    };
    let state_machine =
        StateMachine::open_stamped(store, &keyspaces, settings.publisher.clone(), stamp)?;
    // Every replica checks checkpoint notes against the key they are signed with.
    state_machine.check_notes_with(settings.signer.verifier());
    let mut log_store = LogStore::open(store, &keyspaces, state_machine.applied.clone())?;
    let (applied_id, snapshot_id) = state_machine.applied_and_snapshot()?;
    let log_state = openraft::storage::RaftLogStorage::get_log_state(&mut log_store).await?;
    crate::storage::check_startable(&log_state, applied_id, snapshot_id).map_err(|problem| {
        anyhow::anyhow!("shard {shard}: refusing to start on an inconsistent store: {problem}")
    })?;
    let counters = state_machine.counters.clone();
    let applied = state_machine.applied.clone();
    let config = Arc::new(consensus::raft_config(
        &format!("{}-shard-{shard}", settings.cluster_name),
        settings.snapshot_logs_since_last,
        settings.raft_timing,
    ));
    let raft = Raft::new(
        settings.node_id,
        config,
        settings.peers.group(shard),
        log_store,
        state_machine,
    )
    .await?;
    if !raft.is_initialized().await? {
        let members: BTreeMap<NodeId, BasicNode> = members
            .iter()
            .map(|(&node, addr)| (node, BasicNode { addr: addr.clone() }))
            .collect();
        raft.initialize(members).await?;
    }
    let (queue, receiver) = batcher::queue(shard, settings.limits);
    let (stop_batcher, stop_signal) = oneshot::channel();
    let index_gate = batcher::IndexGate::default();
    let batcher = tokio::spawn(batcher::run(
        shard,
        raft.clone(),
        clock.clone(),
        settings.limits,
        index_gate.clone(),
        receiver,
        stop_signal,
    ));
    let sealer = Arc::new(Sealer::new(
        shard,
        raft.clone(),
        clock,
        settings.signer.clone(),
        settings.sealer.clone(),
    ));
    let (stop_sealer, stop_signal) = oneshot::channel();
    let sealer_task = tokio::spawn(sealer::run(sealer.clone(), counters.clone(), stop_signal));
    let handle = ShardHandle {
        shard,
        raft,
        queue,
        keyspaces,
        counters,
        applied,
        sealer,
        index_gate,
    };
    Ok((
        handle,
        ShardTasks {
            batcher,
            stop_batcher,
            sealer: sealer_task,
            stop_sealer,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn confirmed(
        read_index: Option<u64>,
        last_log_index: Option<u64>,
    ) -> impl Future<Output = Result<Confirmed, ReadBarrierError>> {
        std::future::ready(Ok(Confirmed {
            read_index,
            last_log_index,
        }))
    }

    /// Seed 495: a leader restored after a crash confirms its leadership with a read
    /// index (its committed index) below writes it acknowledged before the crash; they
    /// are in its log. The read must wait for the log, not for the read index.
    #[tokio::test]
    async fn barrier_waits_for_the_last_log_index_not_the_read_index() {
        let applied = Arc::new(AppliedProgress::new(Some(5)));
        let barrier = tokio::spawn({
            let applied = applied.clone();
            async move {
                read_barrier(
                    1,
                    confirmed(Some(5), Some(9)),
                    &applied,
                    Duration::from_secs(10),
                )
                .await
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!barrier.is_finished(), "passed at the read index");
        applied.publish(Some(8));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!barrier.is_finished(), "passed below the last log index");
        applied.publish(Some(9));
        barrier.await.expect("task").expect("barrier passes");
    }

    #[tokio::test]
    async fn barrier_passes_at_once_when_the_log_is_applied() {
        let applied = AppliedProgress::new(Some(9));
        let limit = Duration::from_millis(1);
        read_barrier(1, confirmed(Some(9), Some(9)), &applied, limit)
            .await
            .expect("applied");
        read_barrier(1, confirmed(None, None), &AppliedProgress::new(None), limit)
            .await
            .expect("an empty log");
    }

    #[tokio::test]
    async fn barrier_fails_retryably() {
        let applied = AppliedProgress::new(Some(5));
        let limit = Duration::from_millis(30);
        let error = read_barrier(7, confirmed(Some(5), Some(6)), &applied, limit)
            .await
            .expect_err("never applied");
        assert!(matches!(error, ReadBarrierError::Timeout { shard: 7, .. }));

        let not_leader = std::future::ready(Err(ReadBarrierError::NotLeader {
            shard: 7,
            leader: Some(2),
        }));
        let error = read_barrier(7, not_leader, &applied, limit)
            .await
            .expect_err("not the leader");
        assert!(matches!(
            error,
            ReadBarrierError::NotLeader {
                leader: Some(2),
                ..
            }
        ));

        let never = std::future::pending::<Result<Confirmed, ReadBarrierError>>();
        let error = read_barrier(7, never, &applied, limit)
            .await
            .expect_err("no quorum");
        assert!(matches!(error, ReadBarrierError::Timeout { .. }));

        applied.fail();
        let error = read_barrier(7, confirmed(Some(5), Some(6)), &applied, limit)
            .await
            .expect_err("the state machine failed");
        assert!(matches!(error, ReadBarrierError::Unavailable { .. }));
    }
}
