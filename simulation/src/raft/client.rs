//! The client workload: appends with retries (same event ids after an unknown outcome),
//! seals and signed checkpoints, and reads that must be linearizable.
//!
//! A client knows the replicas, caches the one it believes leads, and sends each
//! request as a task of that replica's incarnation (so a crash loses it). A request
//! that times out, or whose replica crashed, has an unknown outcome: its events stay
//! pending and are sent again, with the same ids, until they are acknowledged.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use trail_node::ledger::{
    ActorKind, CheckpointBody, CheckpointNote, EventRecord, LedgerCommand, LedgerResponse,
    NoteSigner, Outcome,
};

use super::check::Checker;
use super::net::Router;
use super::rt::spawn_in;
use super::store::Disk;
use super::Plan;

/// Batches awaiting an acknowledgement, per client, at most.
const PENDING_BATCHES_MAX: usize = 4;
/// Virtual epoch of the run: `ingested_at` and seal times count from here.
pub const EPOCH_NS: i64 = 1_700_000_000_000_000_000;

pub struct Client {
    pub id: usize,
    pub router: Router,
    pub checker: Checker,
    pub disks: Vec<Disk>,
    pub signer: Arc<NoteSigner>,
    pub plan: Plan,
    /// Set when the liveness phase starts: no new work, only the pending retries.
    pub draining: Arc<AtomicBool>,
    pub stale_reads: bool,
    /// Trust openraft's `get_read_log_id` alone (see [`super::Options`]).
    pub openraft_read_index: bool,
    pub seed: u64,
    pub start: tokio::time::Instant,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct ClientStats {
    pub appends_acked: u64,
    pub unknown_outcomes: u64,
    pub retries: u64,
    pub seals: u64,
    pub checkpoints: u64,
    pub reads: u64,
}

enum Outcome2 {
    Acked(LedgerResponse),
    NotLeader(Option<u64>),
    Unknown,
}

impl Client {
    fn now_ns(&self) -> i64 {
        EPOCH_NS + i64::try_from(self.start.elapsed().as_nanos()).unwrap_or(i64::MAX / 2)
    }

    fn pick(&self, leader: Option<u64>, rng: &mut StdRng) -> u64 {
        leader.unwrap_or_else(|| rng.gen_range(1..=self.plan.replicas as u64))
    }

    async fn submit(
        &self,
        target: u64,
        command: LedgerCommand,
        what: &str,
        leader: &mut Option<u64>,
    ) -> Outcome2 {
        let Some((key, raft)) = self.router.node(target) else {
            *leader = None;
            return Outcome2::Unknown;
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        drop(spawn_in(key, async move {
            let _ = tx.send(raft.client_write(command).await);
        }));
        let outcome = match tokio::time::timeout(self.plan.client_timeout, rx).await {
            Ok(Ok(Ok(response))) => {
                *leader = Some(target);
                Outcome2::Acked(response.data)
            }
            Ok(Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))))) => {
                *leader = forward.leader_id;
                Outcome2::NotLeader(forward.leader_id)
            }
            _ => {
                *leader = None;
                Outcome2::Unknown
            }
        };
        let text = match &outcome {
            Outcome2::Acked(_) => "acked".to_string(),
            Outcome2::NotLeader(to) => format!("not leader (-> {to:?})"),
            Outcome2::Unknown => "unknown outcome".to_string(),
        };
        self.checker
            .record(&format!("client {} {what} via {target}: {text}", self.id));
        outcome
    }

    pub async fn run(self) -> ClientStats {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut stats = ClientStats::default();
        let mut leader: Option<u64> = None;
        let mut pending: Vec<Vec<EventRecord>> = Vec::new();
        let mut next_event = 0u64;
        loop {
            let draining = self.draining.load(Ordering::SeqCst);
            if draining && pending.is_empty() {
                return stats;
            }
            let think = rng.gen_range(self.plan.think_ms.0..=self.plan.think_ms.1);
            tokio::time::sleep(Duration::from_millis(think)).await;
            let retry = !pending.is_empty()
                && (draining || pending.len() >= PENDING_BATCHES_MAX || rng.gen_bool(0.4));
            if retry {
                let index = rng.gen_range(0..pending.len());
                stats.retries += 1;
                let events = pending[index].clone();
                if self.append(&events, &mut rng, &mut leader).await {
                    pending.swap_remove(index);
                    stats.appends_acked += 1;
                } else {
                    stats.unknown_outcomes += 1;
                }
                continue;
            }
            let roll: f64 = rng.gen();
            if roll < self.plan.seal_rate {
                stats.seals += 1;
                stats.checkpoints += self.seal(&mut rng, &mut leader).await;
            } else if roll < self.plan.seal_rate + self.plan.read_rate {
                stats.reads += 1;
                self.read(&mut rng, &mut leader).await;
            } else {
                let count = rng.gen_range(1..=self.plan.batch_events_max);
                let mut events = Vec::with_capacity(count);
                for _ in 0..count {
                    let tenant = format!("ten_{}", rng.gen_range(0..self.plan.tenants));
                    let id = format!("c{}-{next_event}", self.id);
                    next_event += 1;
                    self.checker.on_sent(&tenant, &id);
                    events.push(event(&tenant, &id, &mut rng));
                }
                if self.append(&events, &mut rng, &mut leader).await {
                    stats.appends_acked += 1;
                } else {
                    stats.unknown_outcomes += 1;
                    pending.push(events);
                }
            }
        }
    }

    /// Proposes one batch; true when acknowledged (receipts go to the oracle).
    async fn append(
        &self,
        events: &[EventRecord],
        rng: &mut StdRng,
        leader: &mut Option<u64>,
    ) -> bool {
        let command = LedgerCommand::Append {
            ingested_at_ns: self.now_ns(),
            block_events_max: self.plan.block_events_max,
            events: events.to_vec(),
        };
        let target = self.pick(*leader, rng);
        let what = format!("append {} events", events.len());
        let Outcome2::Acked(response) = self.submit(target, command, &what, leader).await else {
            return false;
        };
        if response.receipts.len() != events.len() {
            self.checker.fail(format!(
                "{} receipts for {} events",
                response.receipts.len(),
                events.len()
            ));
            return true;
        }
        for (event, receipt) in events.iter().zip(&response.receipts) {
            if receipt.stream != format!("{}/0", event.tenant_id) {
                self.checker.fail(format!(
                    "receipt for {}/{} names stream {}",
                    event.tenant_id, event.event_id, receipt.stream
                ));
            }
            self.checker.check(self.checker.on_ack(
                &event.tenant_id,
                &event.event_id,
                receipt.seq,
                receipt.leaf_hash,
            ));
        }
        true
    }

    /// Seals old open blocks (of all tenants, or of one) and proposes signed
    /// checkpoints for what the seal reports; returns the checkpoints proposed.
    async fn seal(&self, rng: &mut StdRng, leader: &mut Option<u64>) -> u64 {
        let now = self.now_ns();
        let tenant_id = rng
            .gen_bool(0.3)
            .then(|| format!("ten_{}", rng.gen_range(0..self.plan.tenants)));
        let age_ns = rng.gen_range(0..200_000_000i64);
        let command = LedgerCommand::Seal {
            sealed_at_ns: now,
            opened_at_or_before_ns: now - age_ns,
            tenant_id,
        };
        let target = self.pick(*leader, rng);
        let Outcome2::Acked(response) = self.submit(target, command, "seal", leader).await else {
            return 0;
        };
        if response.checkpoints_due.is_empty() {
            return 0;
        }
        let notes: Vec<CheckpointNote> = response
            .checkpoints_due
            .into_iter()
            .map(|due| CheckpointNote {
                note: self.signer.sign(&CheckpointBody {
                    origin: format!("sim.trail/{}", due.stream),
                    tree_size: due.tree_size,
                    root: due.root,
                    last_seq: due.last_seq,
                    time_ns: due.sealed_at_ns,
                }),
                tenant_id: due.tenant_id,
            })
            .collect();
        let count = notes.len() as u64;
        let target = self.pick(*leader, rng);
        self.submit(
            target,
            LedgerCommand::Checkpoint { notes },
            "checkpoint",
            leader,
        )
        .await;
        count
    }

    /// Reads a tenant's last seq from the replica believed to lead. Linearizable: the
    /// replica confirms its leadership with a quorum (`get_read_log_id`), then waits
    /// until it has applied its whole log as it was then. With `stale-read` it answers
    /// from its state machine at once.
    async fn read(&self, rng: &mut StdRng, leader: &mut Option<u64>) {
        let tenant = format!("ten_{}", rng.gen_range(0..self.plan.tenants));
        let target = self.pick(*leader, rng);
        let Some((key, raft)) = self.router.node(target) else {
            *leader = None;
            return;
        };
        let floor = self.checker.acked_max_seq(&tenant);
        let disk = self.disks[(target - 1) as usize].clone();
        let stale = self.stale_reads;
        let openraft_only = self.openraft_read_index;
        let wait_limit = self.plan.client_timeout;
        let tenant_for_task = tenant.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        drop(spawn_in(key, async move {
            let answer: Result<u64, Option<u64>> = if stale {
                Ok(disk.lock().last_seq(&tenant_for_task))
            } else {
                match raft.get_read_log_id().await {
                    Ok((read_log_id, _)) => {
                        // openraft 0.9's read log id is max(committed, the term's first
                        // entry). A leader that crashed and came back as leader of the
                        // same term (openraft restores it from its committed vote) may
                        // know a committed index below what it acknowledged before the
                        // crash (the committed id is not fsynced). Every acknowledged
                        // write is in the confirmed leader's log, so waiting for its last
                        // log index is always enough.
                        let mut needed = read_log_id.map_or(0, |log_id| log_id.index);
                        if !openraft_only {
                            needed = needed.max(disk.lock().last_log_index().unwrap_or(0));
                        }
                        let deadline = tokio::time::Instant::now() + wait_limit;
                        loop {
                            let (applied, seen) = {
                                let disk = disk.lock();
                                let applied = disk.sm.applied.map_or(0, |log_id| log_id.index);
                                (applied, disk.last_seq(&tenant_for_task))
                            };
                            if applied >= needed {
                                break Ok(seen);
                            }
                            if tokio::time::Instant::now() >= deadline {
                                break Err(None);
                            }
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                    Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
                        Err(forward.leader_id)
                    }
                    Err(_) => Err(None),
                }
            };
            let _ = tx.send(answer);
        }));
        match tokio::time::timeout(self.plan.client_timeout, rx).await {
            Ok(Ok(Ok(seen))) => {
                self.checker.record(&format!(
                    "client {} read {tenant} via {target}: seq {seen} (floor {floor})",
                    self.id
                ));
                self.checker
                    .check(self.checker.on_read(target, &tenant, floor, seen));
            }
            Ok(Ok(Err(forward))) => {
                *leader = forward;
                self.checker.record(&format!(
                    "client {} read {tenant} via {target}: not leader (-> {forward:?})",
                    self.id
                ));
            }
            _ => {
                *leader = None;
                self.checker.record(&format!(
                    "client {} read {tenant} via {target}: no answer",
                    self.id
                ));
            }
        }
    }
}

pub(crate) fn event(tenant: &str, event_id: &str, rng: &mut StdRng) -> EventRecord {
    let user = rng.gen_range(0..5u32);
    EventRecord {
        event_id: event_id.to_string(),
        tenant_id: tenant.to_string(),
        actor_kind: ActorKind::User,
        actor_id: format!("usr_{user}"),
        actor_email: String::new(),
        actor_name: String::new(),
        action: ["auth.login", "doc.read", "doc.delete"][rng.gen_range(0..3)].to_string(),
        resource_type: "session".to_string(),
        resource_id: format!("ses_{}", rng.gen_range(0..1000u32)),
        outcome: if rng.gen_bool(0.9) {
            Outcome::Success
        } else {
            Outcome::Failure
        },
        occurred_at_ns: EPOCH_NS + i64::from(rng.gen_range(0..1_000_000u32)),
        request_id: String::new(),
        session_id: String::new(),
        ip_address: String::new(),
        user_agent: String::new(),
        metadata_json: String::new(),
        subject_id: format!("usr_{user}"),
    }
}
