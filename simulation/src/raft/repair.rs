//! Disk faults on restart, and the repair of a replica whose disk is lost or corrupt.
//!
//! A replica is repaired the way DESIGN.md ("Cluster") replaces a node: it leaves the
//! membership *before* its disk is wiped, then comes back empty as a learner and is
//! promoted. The order matters: openraft keeps no record of a vote it gave once the disk
//! is gone, so a wiped replica that were still a voter could vote a second time in a
//! term it already voted in, and two leaders could be elected in that term
//! (`--planted-bug wipe-in-place` skips the membership steps).
//!
//! At most one replica is under repair at a time: a minority, so the others keep a
//! quorum once they are up, and the liveness phase requires the repair to finish.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, ChangeMembers};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use super::rt::spawn_in;
use super::{Cluster, PlantedBug, Raft};

/// How long one membership call to the leader may take before it is tried again.
const LEADER_CALL_TIMEOUT: Duration = Duration::from_millis(1_000);
/// The pause between two tries when there is no leader or a call failed.
const LEADER_RETRY: Duration = Duration::from_millis(50);

impl Cluster {
    /// At a restart in the safety phase: one bit of one stored record flips while the
    /// replica was down, drawn by the seed (only while no repair is under way).
    pub(super) fn maybe_flip_bit(&self, node: u64, rng: &mut StdRng) {
        if self.plan.disk.bit_flip_rate == 0.0 || !self.repairable() {
            return;
        }
        if !rng.gen_bool(self.plan.disk.bit_flip_rate) {
            return;
        }
        if let Some(flipped) = self.disk(node).flip_bit(rng) {
            self.checker
                .record(&format!("bit rot: replica {node} {flipped:?} flips a bit"));
            self.counters.lock().expect("counters").disk.bit_flips += 1;
        }
    }

    /// One fault step's disk faults: arm an fsync error on a running replica, or lose a
    /// replica's disk (it is then repaired).
    pub(super) fn inject_disk_faults(
        self: &Arc<Self>,
        rng: &mut StdRng,
        down_until: &mut BTreeMap<u64, tokio::time::Instant>,
    ) {
        let nodes = self.nodes();
        let faults = &self.plan.disk;
        if faults.fsync_error_rate > 0.0 && rng.gen_bool(faults.fsync_error_rate) {
            let node = *nodes.choose(rng).expect("replicas");
            if self.router.node(node).is_some() {
                self.checker
                    .record(&format!("disk: the next fsync of replica {node} fails"));
                self.disk(node).arm_fsync_error();
            }
        }
        if faults.wipe_rate > 0.0 && rng.gen_bool(faults.wipe_rate) && self.repairable() {
            let node = *nodes.choose(rng).expect("replicas");
            self.checker
                .record(&format!("disk: replica {node} loses its disk"));
            if self.crash(node) {
                self.counters.lock().expect("counters").crashes += 1;
            }
            down_until.remove(&node);
            self.counters.lock().expect("counters").disk.wipes += 1;
            self.begin_repair(node);
        }
    }

    /// A replica may lose its disk now and be repaired: no other repair is under way (so
    /// at most a minority is affected), and the group has committed an entry, so a
    /// majority holds its membership durably. Before that, the replica that initialized
    /// the group may hold its only copy: losing it loses the group, not a replica.
    fn repairable(&self) -> bool {
        !self.any_repairing() && self.checker.committed_beyond_bootstrap()
    }

    /// Starts the repair of a stopped replica (once).
    pub(super) fn begin_repair(self: &Arc<Self>, node: u64) {
        let mut repairs = self.repairs.lock().expect("repairs");
        if !repairs.nodes.insert(node) {
            return;
        }
        repairs.held_down.insert(node);
        let task = tokio::spawn(self.clone().repair(node));
        repairs.tasks.push(task);
    }

    /// Replaces replica `node`'s disk: out of the membership (committed), wiped, started
    /// empty, added as a learner, promoted to voter.
    async fn repair(self: Arc<Self>, node: u64) {
        let in_place = self.planted == Some(PlantedBug::WipeInPlace);
        let others: BTreeSet<u64> = self.nodes().into_iter().filter(|n| *n != node).collect();
        if !in_place {
            self.on_leader(
                &format!("repair {node}: remove from the membership"),
                |raft| {
                    let voters = others.clone();
                    async move {
                        raft.change_membership(ChangeMembers::ReplaceAllVoters(voters), false)
                            .await
                    }
                },
            )
            .await;
        }
        let incarnation = self.disk(node).wipe();
        self.checker.on_wipe(node);
        self.checker.record(&format!(
            "repair {node}: disk wiped, incarnation {incarnation}"
        ));
        self.repairs
            .lock()
            .expect("repairs")
            .held_down
            .remove(&node);
        self.start(node).await;
        if !in_place {
            self.on_leader(
                &format!("repair {node}: add as a learner"),
                |raft| async move {
                    raft.add_learner(node, BasicNode::new(format!("sim-{node}")), false)
                        .await
                },
            )
            .await;
            self.on_leader(
                &format!("repair {node}: promote to voter"),
                |raft| async move {
                    raft.change_membership(ChangeMembers::AddVoterIds([node].into()), false)
                        .await
                },
            )
            .await;
        }
        self.checker.record(&format!("repair {node}: done"));
        self.counters.lock().expect("counters").disk.repairs += 1;
        self.repairs.lock().expect("repairs").nodes.remove(&node);
    }

    /// Calls `call` on the replica that leads, as a task of its incarnation (a crash
    /// loses it), until it succeeds.
    async fn on_leader<F, Fut, T, E>(&self, what: &str, call: F)
    where
        F: Fn(Raft) -> Fut,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: Display + Send + 'static,
    {
        loop {
            let leader = self.leader();
            let running = leader.and_then(|leader| self.router.node(leader));
            if let (Some(leader), Some((key, raft))) = (leader, running) {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let future = call(raft);
                drop(spawn_in(key, async move {
                    let _ = tx.send(future.await);
                }));
                match tokio::time::timeout(LEADER_CALL_TIMEOUT, rx).await {
                    Ok(Ok(Ok(_))) => {
                        self.checker.record(&format!("{what} via {leader}: ok"));
                        return;
                    }
                    Ok(Ok(Err(error))) => {
                        self.checker
                            .record(&format!("{what} via {leader}: {error}"));
                    }
                    _ => {
                        self.checker
                            .record(&format!("{what} via {leader}: no answer"));
                    }
                }
            }
            tokio::time::sleep(LEADER_RETRY).await;
        }
    }
}
