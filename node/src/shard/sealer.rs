//! The leader's sealer: closes open blocks on a timer and signs checkpoints, both
//! through the Raft log so every replica seals and records identically.
//!
//! A round proposes `Seal` (blocks opened at least `seal_interval` ago), reads from its
//! response which streams grew past their last checkpoint, signs a checkpoint for each
//! one not checkpointed within `checkpoint_interval`, and proposes them as one
//! `Checkpoint` entry. A round runs only when something happened (events were applied,
//! or the last round left open blocks or throttled checkpoints), so an idle shard
//! proposes nothing. `seal_now` runs a forced round for one tenant: a proof or an
//! audit gets a checkpoint covering every event recorded before it asked, in two Raft
//! rounds (a few ms).
//!
//! Budget: a checkpoint is one Ed25519 signature (~20 µs) and ~250 bytes in the log and
//! in the checkpoint directory; with the default 10 s interval, 1,000 busy tenants make
//! 100 checkpoints/s per shard at most.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, Mutex};

use crate::clock::Clock;
use crate::consensus::{NodeId, Raft, CLIENT_WRITE_TIMEOUT};
use crate::ledger::{
    CheckpointBody, CheckpointDue, CheckpointNote, LedgerCommand, LedgerResponse, NoteSigner,
};
use crate::storage::state_machine::ShardCounters;

/// Most checkpoint notes in one log entry (~250 bytes each).
const NOTES_PER_ENTRY_MAX: usize = 1_000;

#[derive(Debug, Clone)]
pub struct SealerSettings {
    pub node_id: NodeId,
    pub seal_interval: Duration,
    pub checkpoint_interval: Duration,
    pub origin: String,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("sealing shard {shard}: {reason}")]
pub struct SealError {
    pub shard: u32,
    pub reason: String,
}

pub struct Sealer {
    shard: u32,
    raft: Raft,
    clock: Arc<dyn Clock>,
    signer: Arc<NoteSigner>,
    settings: SealerSettings,
    /// One round at a time; holds when each tenant was last checkpointed (by this
    /// leader: a new leader starts afresh, which costs at most one extra checkpoint).
    state: Mutex<RoundState>,
}

#[derive(Default)]
struct RoundState {
    last_checkpoint_ns: HashMap<String, i64>,
}

/// What a round left to do later.
struct RoundOutcome {
    pending: bool,
}

impl Sealer {
    pub fn new(
        shard: u32,
        raft: Raft,
        clock: Arc<dyn Clock>,
        signer: Arc<NoteSigner>,
        settings: SealerSettings,
    ) -> Sealer {
        Sealer {
            shard,
            raft,
            clock,
            signer,
            settings,
            state: Mutex::new(RoundState::default()),
        }
    }

    pub fn signer(&self) -> &NoteSigner {
        &self.signer
    }

    /// Seals `tenant_id`'s open block and records a checkpoint covering all of its
    /// events, whatever the timers say. Returns when both are applied.
    pub async fn seal_now(&self, tenant_id: &str) -> Result<(), SealError> {
        let mut state = self.state.lock().await;
        let now = self.clock.now_ns();
        let response = self
            .propose(LedgerCommand::Seal {
                sealed_at_ns: now,
                opened_at_or_before_ns: i64::MAX,
                tenant_id: Some(tenant_id.to_string()),
            })
            .await?;
        self.checkpoint(&mut state, response.checkpoints_due, now, true)
            .await?;
        Ok(())
    }

    async fn round(&self) -> Result<RoundOutcome, SealError> {
        let mut state = self.state.lock().await;
        let now = self.clock.now_ns();
        let seal_interval_ns = duration_ns(self.settings.seal_interval);
        let response = self
            .propose(LedgerCommand::Seal {
                sealed_at_ns: now,
                opened_at_or_before_ns: now.saturating_sub(seal_interval_ns),
                tenant_id: None,
            })
            .await?;
        let throttled = self
            .checkpoint(&mut state, response.checkpoints_due, now, false)
            .await?;
        Ok(RoundOutcome {
            pending: response.open_blocks > 0 || throttled > 0,
        })
    }

    /// Signs and records the due checkpoints (all of them when `force`, otherwise those
    /// not checkpointed within the interval). Returns how many were held back.
    async fn checkpoint(
        &self,
        state: &mut RoundState,
        due: Vec<CheckpointDue>,
        now: i64,
        force: bool,
    ) -> Result<usize, SealError> {
        let interval_ns = duration_ns(self.settings.checkpoint_interval);
        let mut throttled = 0;
        let mut notes = Vec::new();
        for due in due {
            let last = state.last_checkpoint_ns.get(&due.tenant_id).copied();
            if !force && last.is_some_and(|last| now.saturating_sub(last) < interval_ns) {
                throttled += 1;
                continue;
            }
            let body = CheckpointBody {
                origin: format!("{}/{}", self.settings.origin, due.stream),
                tree_size: due.tree_size,
                root: due.root,
                last_seq: due.last_seq,
                time_ns: due.sealed_at_ns,
            };
            notes.push(CheckpointNote {
                note: self.signer.sign(&body),
                tenant_id: due.tenant_id,
            });
        }
        for chunk in notes.chunks(NOTES_PER_ENTRY_MAX) {
            let response = self
                .propose(LedgerCommand::Checkpoint {
                    notes: chunk.to_vec(),
                })
                .await?;
            if response.checkpoints_skipped > 0 {
                tracing::warn!(
                    shard = self.shard,
                    skipped = response.checkpoints_skipped,
                    "checkpoints skipped at apply (stale or not matching the stream)"
                );
            }
            for note in chunk {
                state.last_checkpoint_ns.insert(note.tenant_id.clone(), now);
            }
        }
        Ok(throttled)
    }

    async fn propose(&self, command: LedgerCommand) -> Result<LedgerResponse, SealError> {
        match tokio::time::timeout(CLIENT_WRITE_TIMEOUT, self.raft.client_write(command)).await {
            Err(_) => Err(self.error("timed out waiting for the log".into())),
            Ok(Err(error)) => Err(self.error(error.to_string())),
            Ok(Ok(response)) => match response.data.refused {
                Some(reason) => Err(self.error(format!("refused at apply: {reason}"))),
                None => Ok(response.data),
            },
        }
    }

    fn error(&self, reason: String) -> SealError {
        SealError {
            shard: self.shard,
            reason,
        }
    }

    fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.settings.node_id)
    }
}

fn duration_ns(duration: Duration) -> i64 {
    i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX)
}

/// The timer loop: a round whenever there is something to seal or checkpoint.
pub async fn run(
    sealer: Arc<Sealer>,
    counters: Arc<ShardCounters>,
    mut stop: oneshot::Receiver<()>,
) {
    // Tick at half the seal interval, so a block is sealed between 1x and 1.5x of it.
    let mut ticker = tokio::time::interval(sealer.settings.seal_interval / 2);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen_events = counters.events_total.load(Ordering::Relaxed);
    let mut pending = true;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = ticker.tick() => {}
        }
        let events = counters.events_total.load(Ordering::Relaxed);
        if (events == seen_events && !pending) || !sealer.is_leader() {
            continue;
        }
        seen_events = events;
        match sealer.round().await {
            Ok(outcome) => pending = outcome.pending,
            Err(error) => {
                tracing::warn!(%error, "sealing round failed; retrying on the next tick");
                pending = true;
            }
        }
    }
}
