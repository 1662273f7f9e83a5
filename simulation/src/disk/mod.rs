//! The real-disk mode: the node's own shard (`trail_node::shard::open`: openraft over
//! `node/src/storage` on fjall, its batcher and sealer, its peer network) on three
//! replicas, each in a temporary data directory, under a seeded workload and fault
//! schedule.
//!
//! Nothing here re-implements node code: the replicas are what `traild` runs, the
//! network is the node's `consensus::network` over an in-memory [`PeerTransport`]
//! (`transport.rs`) that hands each message to the target's `RaftService`, and clients
//! submit through the shard's ingest queue. Faults: replica crashes (every handle
//! dropped and the data directory opened again, as a process restart), partitions, lost
//! and delayed messages, snapshots taken often so that a replica that was down catches
//! up by an install.
//!
//! Checkers, during the run and at its end:
//! - every receipt of an event already acknowledged is the original receipt, marked
//!   deduplicated (a replica that forgot an id appends the event again);
//! - after the cluster heals and converges, every replica holds every acknowledged
//!   event exactly once, at its acknowledged seq with its acknowledged leaf hash, found
//!   by its id (the dedup index), and every tenant's seqs are gap-free;
//! - every replica holds the same events and the same tenant states (chain heads).
//!
//! Not deterministic: fjall and the node's storage run threads of their own and the
//! clock is real, so a seed replays its schedule of decisions (the same RNG draws), not
//! its interleavings. Most failures reproduce from their seed within a few runs.
//!
//! [`PeerTransport`]: trail_node::consensus::network::PeerTransport

pub mod transport;

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use trail_node::clock::SystemClock;
use trail_node::consensus::network::{Groups, Peers, RaftService};
use trail_node::consensus::{NodeId, RaftTiming};
use trail_node::ledger::{EventRecord, LeafHash, NoteSigner};
use trail_node::shard::{
    self, reader, BatchLimits, IngestError, SealerSettings, ShardHandle, ShardSettings, ShardTasks,
};
use trail_node::storage::faults::{CrashPointReached, StorageBug, StoreFaults, CRASH_POINTS};
use trail_node::storage::NodeStore;

use transport::{Faults, Router};

const SHARD: u32 = 1;
/// How long the healed cluster may take to converge or to acknowledge a batch: far
/// above what it needs (well under a second), so that a slow, shared machine (CI runs
/// four seeds at once beside other tests) is not taken for a stuck cluster.
const HEALED_PATIENCE: Duration = Duration::from_secs(60);
const CLUSTER: &str = "sim-disk";

/// What a run may be asked to change.
#[derive(Debug, Clone, Default)]
pub struct DiskOptions {
    /// Overrides the seed's length of the fault phase (ms).
    pub safety_ms: Option<u64>,
    pub keep_trace: bool,
    /// A bug planted in every replica's storage code.
    pub planted: Option<StorageBug>,
}

/// Everything a seed decides.
#[derive(Debug, Clone)]
pub struct DiskPlan {
    pub replicas: usize,
    pub timing: RaftTiming,
    pub snapshot_every: u64,
    pub clients: usize,
    pub tenants: usize,
    pub batch_events_max: usize,
    pub resend_rate: f64,
    pub safety_ms: u64,
    pub fault_every_ms: (u64, u64),
    pub crash_rate: f64,
    pub partition_rate: f64,
    pub snapshot_rate: f64,
    pub down_ms: (u64, u64),
    pub drop: f64,
    pub delay_us: (u64, u64),
    pub block_events_max: u32,
    /// Probability that a replica's incarnation has a crash point of the storage code
    /// armed (`storage/faults.rs`): it dies there, at a pass drawn by the seed.
    pub crash_point_rate: f64,
}

impl DiskPlan {
    pub fn from_seed(seed: u64, options: &DiskOptions) -> DiskPlan {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x6469_736b);
        DiskPlan {
            replicas: 3,
            timing: RaftTiming {
                heartbeat_ms: 50,
                election_ms: (200, 400),
            },
            snapshot_every: rng.gen_range(5..40),
            clients: rng.gen_range(2..=4),
            tenants: rng.gen_range(1..=4),
            batch_events_max: rng.gen_range(1..=12),
            resend_rate: rng.gen_range(0.05..0.3),
            safety_ms: options.safety_ms.unwrap_or(rng.gen_range(1_500..3_000)),
            fault_every_ms: (50, rng.gen_range(150..500)),
            crash_rate: rng.gen_range(0.2..0.6),
            partition_rate: rng.gen_range(0.0..0.3),
            snapshot_rate: rng.gen_range(0.1..0.5),
            down_ms: (20, rng.gen_range(100..800)),
            drop: if rng.gen_bool(0.5) {
                rng.gen_range(0.0..0.05)
            } else {
                0.0
            },
            delay_us: (0, rng.gen_range(0..3_000)),
            block_events_max: rng.gen_range(2..=16),
            crash_point_rate: if rng.gen_bool(0.8) {
                rng.gen_range(0.3..1.0)
            } else {
                0.0
            },
        }
    }
}

/// A replica's process: its store and its shard, while it runs.
struct Running {
    store: NodeStore,
    faults: StoreFaults,
    handle: ShardHandle,
    tasks: ShardTasks,
    groups: Groups,
}

struct Replica {
    node: NodeId,
    dir: PathBuf,
    running: Option<Running>,
    /// When a replica that is down starts again.
    restart_at: Option<Instant>,
    restarts: u64,
    /// Starts so far, the first included (each incarnation draws its own crash points).
    incarnations: u64,
}

/// An acknowledged event: where it was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ack {
    seq: u64,
    leaf_hash: LeafHash,
    /// A receipt said the event was appended (not deduplicated).
    appended: bool,
}

/// What clients learned, shared by them and the checkers.
#[derive(Default)]
struct Book {
    /// `(tenant, event id)` -> its receipt.
    acked: BTreeMap<(String, String), Ack>,
    /// Batches sent so far (what a client may send again).
    sent: Vec<Vec<EventRecord>>,
    /// Violations seen during the run.
    violations: Vec<String>,
    /// The tenant states a replica opened with, by applied index: the ledger is
    /// deterministic, so every replica that opens at an index must hold the same.
    opened: BTreeMap<u64, (NodeId, [u8; 32])>,
    trace: Vec<String>,
    appended: u64,
    deduplicated: u64,
    refused: u64,
    /// Replicas that died at a crash point, by point.
    crash_points: BTreeMap<&'static str, u64>,
}

#[derive(Clone)]
struct Shared {
    book: Arc<Mutex<Book>>,
    handles: Arc<Mutex<BTreeMap<NodeId, ShardHandle>>>,
    started: Instant,
}

impl Shared {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().expect("book lock")
    }

    fn trace(&self, line: String) {
        let at = self.started.elapsed().as_millis();
        self.book().trace.push(format!("{at:>6} ms {line}"));
    }

    /// Compares the state machine a replica opens with what any replica opened with at
    /// the same applied index (an install that a crash interrupted and that nothing
    /// finishes shows here: its replica opens at its old index with another state).
    fn check_opened(&self, node: NodeId, store: &NodeStore) -> anyhow::Result<()> {
        let recorded = store.recorded_state(SHARD)?;
        let Some(applied) = recorded.applied_index else {
            return Ok(());
        };
        // Opening finishes a marked install: the state before that is no state.
        if recorded.install_marked {
            return Ok(());
        }
        let mut digest = Sha256::new();
        for (tenant, state) in &recorded.tenants {
            digest.update((tenant.len() as u64).to_be_bytes());
            digest.update(tenant.as_bytes());
            digest.update((state.len() as u64).to_be_bytes());
            digest.update(state);
        }
        let digest: [u8; 32] = digest.finalize().into();
        let mut book = self.book();
        match book.opened.get(&applied) {
            Some(&(first, seen)) if seen != digest => {
                let violation = format!(
                    "node {node} opened at applied index {applied} with tenant states unlike those node {first} opened with at that index ({} tenants)",
                    recorded.tenants.len()
                );
                book.trace.push(violation.clone());
                book.violations.push(violation);
            }
            Some(_) => {}
            None => {
                book.opened.insert(applied, (node, digest));
            }
        }
        Ok(())
    }

    fn handles(&self) -> Vec<(NodeId, ShardHandle)> {
        self.handles
            .lock()
            .expect("handles lock")
            .iter()
            .map(|(&node, handle)| (node, handle.clone()))
            .collect()
    }
}

/// The outcome of one seed: a summary, or the first violation with the run's trace.
pub fn run_seed(seed: u64, options: &DiskOptions) -> Result<String, (String, Vec<String>)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    quiet_crash_points();
    runtime.block_on(run(seed, options))
}

/// A crash point that fires panics (`storage/faults.rs`): that is a replica dying where
/// the seed said, not a failure, so its panic prints nothing.
fn quiet_crash_points() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<CrashPointReached>().is_none() {
                previous(info);
            }
        }));
    });
}

async fn run(seed: u64, options: &DiskOptions) -> Result<String, (String, Vec<String>)> {
    let plan = DiskPlan::from_seed(seed, options);
    let root = TempDir::new().expect("temporary directory");
    let signer = Arc::new(
        trail_node::node::key::load_or_create(root.path(), "trail.sim").expect("signing key"),
    );
    let router = Router::new(seed);
    let members: BTreeSet<NodeId> = (1..=plan.replicas as NodeId).collect();
    let mut replicas: Vec<Replica> = members
        .iter()
        .map(|&node| Replica {
            node,
            dir: root.path().join(format!("node-{node}")),
            running: None,
            restart_at: None,
            restarts: 0,
            incarnations: 0,
        })
        .collect();
    let shared = Shared {
        book: Arc::default(),
        handles: Arc::default(),
        started: Instant::now(),
    };
    let context = Context {
        plan: plan.clone(),
        signer,
        planted: options.planted,
        seed,
        healed: Default::default(),
        router: router.clone(),
        members: members.clone(),
        shared: shared.clone(),
    };
    for replica in &mut replicas {
        if let Err(error) = context.start(replica).await {
            return Err((
                format!("replica {} does not start: {error:#}", replica.node),
                shared.book().trace.clone(),
            ));
        }
    }

    // The fault phase: clients write while replicas crash and the network misbehaves.
    let deadline = Instant::now() + Duration::from_millis(plan.safety_ms);
    let mut clients = Vec::new();
    for client in 0..plan.clients {
        let shared = shared.clone();
        let plan = plan.clone();
        clients.push(tokio::spawn(run_client(
            client, seed, plan, shared, deadline,
        )));
    }
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6661_756c_7473);
    while Instant::now() < deadline {
        let pause = rng.gen_range(plan.fault_every_ms.0..=plan.fault_every_ms.1);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if let Err(error) = context.fault_step(&mut replicas, &mut rng).await {
            return Err((error, shared.book().trace.clone()));
        }
    }
    for client in clients {
        let _ = client.await;
    }

    // Heal: every replica up, no faults, then wait for the replicas to agree.
    let failed = |message: String| (message, shared.book().trace.clone());
    context.heal(&mut replicas).await.map_err(failed)?;
    converge(&replicas).await.map_err(failed)?;
    // Every acknowledged batch once more, at the leader: each must come back as its
    // original receipts.
    resend_acknowledged(&shared).await.map_err(failed)?;
    converge(&replicas).await.map_err(failed)?;
    check_replicas(&replicas, &shared).map_err(failed)?;
    let violations = shared.book().violations.clone();
    if let Some(first) = violations.first() {
        return Err(failed(first.clone()));
    }
    for replica in &mut replicas {
        stop(replica, &router).await;
    }
    let book = shared.book();
    let restarts: u64 = replicas.iter().map(|replica| replica.restarts).sum();
    let (delivered, lost) = router.counts();
    let crash_points: Vec<String> = book
        .crash_points
        .iter()
        .map(|(point, count)| format!("{point} x{count}"))
        .collect();
    let summary = format!(
        "{} events acknowledged ({} appended, {} deduplicated, {} refused), {restarts} restarts, died at crash points: [{}], {delivered} messages ({lost} lost)",
        book.acked.len(),
        book.appended,
        book.deduplicated,
        book.refused,
        crash_points.join(", "),
    );
    if options.keep_trace {
        for line in &book.trace {
            println!("{line}");
        }
    }
    Ok(summary)
}

/// What starting and crashing replicas needs.
struct Context {
    plan: DiskPlan,
    signer: Arc<NoteSigner>,
    planted: Option<StorageBug>,
    seed: u64,
    /// Set at the heal: crash points no longer fire.
    healed: std::sync::atomic::AtomicBool,
    router: Router,
    members: BTreeSet<NodeId>,
    shared: Shared,
}

impl Context {
    /// Opens the replica's data directory and starts its shard, as `traild` does. A
    /// replica that dies at a crash point while it opens is down again (its restart
    /// scheduled), which is no error.
    async fn start(&self, replica: &mut Replica) -> anyhow::Result<()> {
        let healed = self.healed.load(std::sync::atomic::Ordering::Relaxed);
        replica.incarnations += 1;
        let armed = {
            let mut rng = StdRng::seed_from_u64(
                self.seed ^ (replica.node << 32) ^ (replica.incarnations << 40),
            );
            (!healed && rng.gen_bool(self.plan.crash_point_rate)).then(|| {
                let (point, passes_max) = CRASH_POINTS[rng.gen_range(0..CRASH_POINTS.len())];
                (point, rng.gen_range(1..=passes_max))
            })
        };
        let faults = StoreFaults::new(self.planted, armed);
        let store = open_store(&replica.dir, faults.clone()).await?;
        self.shared.check_opened(replica.node, &store)?;
        let peers = Peers::over(
            CLUSTER.to_string(),
            replica.node,
            self.router.transport(replica.node, self.members.clone()),
        );
        let settings = ShardSettings {
            node_id: replica.node,
            cluster_name: CLUSTER.into(),
            snapshot_logs_since_last: self.plan.snapshot_every,
            raft_timing: self.plan.timing,
            limits: BatchLimits {
                block_events_max: self.plan.block_events_max,
                ..BatchLimits::default()
            },
            sealer: SealerSettings {
                node_id: replica.node,
                seal_interval: Duration::from_millis(150),
                checkpoint_interval: Duration::from_millis(400),
                origin: "trail.sim".into(),
            },
            signer: self.signer.clone(),
            publisher: None,
            peers,
        };
        let members: BTreeMap<NodeId, String> = self
            .members
            .iter()
            .map(|&node| (node, format!("sim-{node}")))
            .collect();
        let opening = shard::open(&store, SHARD, &settings, &members, 0, Arc::new(SystemClock));
        let (handle, tasks) = match AssertUnwindSafe(opening).catch_unwind().await {
            Ok(opened) => opened?,
            Err(panic) => match panic.downcast_ref::<CrashPointReached>() {
                Some(CrashPointReached(point)) => {
                    drop(store);
                    *self.shared.book().crash_points.entry(point).or_default() += 1;
                    replica.restart_at =
                        Some(Instant::now() + Duration::from_millis(self.plan.down_ms.0));
                    self.shared.trace(format!(
                        "node {} died at crash point {point} while opening",
                        replica.node
                    ));
                    return Ok(());
                }
                None => std::panic::resume_unwind(panic),
            },
        };
        let groups = Groups::default();
        groups.insert(SHARD, handle.raft.clone());
        self.router.attach(
            replica.node,
            Arc::new(RaftService {
                cluster_id: CLUSTER.into(),
                node: replica.node,
                groups: groups.clone(),
            }),
        );
        self.shared
            .handles
            .lock()
            .expect("handles lock")
            .insert(replica.node, handle.clone());
        replica.running = Some(Running {
            store,
            faults,
            handle,
            tasks,
            groups,
        });
        replica.restart_at = None;
        self.shared.trace(format!("node {} up", replica.node));
        Ok(())
    }

    /// Stops a replica that died at a crash point or of a fatal Raft error, and
    /// schedules its restart.
    async fn bury_if_dead(&self, replica: &mut Replica) {
        let died = replica.running.as_ref().and_then(|running| {
            let fatal = running
                .handle
                .raft
                .metrics()
                .borrow()
                .running_state
                .is_err();
            running
                .faults
                .crashed_at()
                .map(|point| {
                    *self.shared.book().crash_points.entry(point).or_default() += 1;
                    format!("at crash point {point}")
                })
                .or(fatal.then(|| "of a fatal Raft error".to_string()))
        });
        if let Some(how) = died {
            self.take_down(replica, self.plan.down_ms.0).await;
            self.shared
                .trace(format!("node {} died {how}", replica.node));
        }
    }

    /// Stops a replica as a process crash does, to start again after `down_ms`.
    async fn take_down(&self, replica: &mut Replica, down_ms: u64) {
        self.shared
            .handles
            .lock()
            .expect("handles lock")
            .remove(&replica.node);
        stop(replica, &self.router).await;
        replica.restart_at = Some(Instant::now() + Duration::from_millis(down_ms));
    }

    /// Starts a replica that was down again.
    async fn restart(&self, replica: &mut Replica) -> Result<(), String> {
        self.start(replica)
            .await
            .map_err(|error| format!("replica {} does not restart: {error:#}", replica.node))?;
        replica.restarts += 1;
        Ok(())
    }

    /// Every replica up with crash points off, and no network faults.
    async fn heal(&self, replicas: &mut [Replica]) -> Result<(), String> {
        self.router.set_faults(Faults::default());
        self.healed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.shared.trace("heal".into());
        for replica in replicas.iter_mut() {
            if let Some(running) = &replica.running {
                running.faults.disarm();
            }
            self.bury_if_dead(replica).await;
            if replica.running.is_none() {
                self.restart(replica).await?;
            }
        }
        Ok(())
    }

    /// One step of the fault schedule.
    async fn fault_step(&self, replicas: &mut [Replica], rng: &mut StdRng) -> Result<(), String> {
        let now = Instant::now();
        for replica in replicas.iter_mut() {
            self.bury_if_dead(replica).await;
            if replica.restart_at.is_some_and(|at| at <= now) {
                self.restart(replica).await?;
            }
        }
        let down = replicas
            .iter()
            .filter(|replica| replica.running.is_none())
            .count();
        if down == 0 && rng.gen_bool(self.plan.crash_rate) {
            let victim = rng.gen_range(0..replicas.len());
            let replica = &mut replicas[victim];
            let down_ms = rng.gen_range(self.plan.down_ms.0..=self.plan.down_ms.1);
            self.take_down(replica, down_ms).await;
            self.shared
                .trace(format!("node {} crashed, down {down_ms} ms", replica.node));
        }
        let mut faults = self.router.faults();
        faults.drop = self.plan.drop;
        faults.delay_us = self.plan.delay_us;
        if faults.partition.is_some() {
            if rng.gen_bool(0.5) {
                faults.partition = None;
                self.shared.trace("partition healed".into());
            }
        } else if rng.gen_bool(self.plan.partition_rate) {
            let alone = rng.gen_range(1..=self.plan.replicas as NodeId);
            faults.partition = Some(BTreeSet::from([alone]));
            self.shared.trace(format!("node {alone} partitioned off"));
        }
        self.router.set_faults(faults);
        if rng.gen_bool(self.plan.snapshot_rate) {
            let running: Vec<&Replica> = replicas
                .iter()
                .filter(|replica| replica.running.is_some())
                .collect();
            if !running.is_empty() {
                let replica = running[rng.gen_range(0..running.len())];
                let raft = &replica.running.as_ref().expect("running").handle.raft;
                let _ = raft.trigger().snapshot().await;
                self.shared.trace(format!("node {} snapshot", replica.node));
            }
        }
        Ok(())
    }
}

/// Opens a data directory, waiting for the handles of the previous incarnation to be
/// gone (fjall refuses a directory another handle still holds).
async fn open_store(dir: &std::path::Path, faults: StoreFaults) -> anyhow::Result<NodeStore> {
    let mut attempts = 0;
    loop {
        match NodeStore::open_with_faults(dir, 4 << 20, faults.clone()) {
            Ok(store) => return Ok(store),
            Err(error) if attempts < 100 && format!("{error:#}").contains("in use") => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// A process crash: the replica's tasks stop where they are, every handle is dropped.
async fn stop(replica: &mut Replica, router: &Router) {
    router.detach(replica.node);
    let Some(running) = replica.running.take() else {
        return;
    };
    running.groups.remove(SHARD);
    running.tasks.sealer.abort();
    running.tasks.batcher.abort();
    let _ = running.handle.raft.shutdown().await;
    drop(running.handle);
    drop(running.store);
}

/// One client: new batches, and now and then a batch sent before (a retry), until the
/// deadline.
async fn run_client(client: usize, seed: u64, plan: DiskPlan, shared: Shared, deadline: Instant) {
    let mut rng = StdRng::seed_from_u64(seed ^ (client as u64 + 1).wrapping_mul(0x9e37_79b9));
    let mut next_id = 0u64;
    while Instant::now() < deadline {
        let resend = {
            let book = shared.book();
            if !book.sent.is_empty() && rng.gen_bool(plan.resend_rate) {
                Some(book.sent[rng.gen_range(0..book.sent.len())].clone())
            } else {
                None
            }
        };
        let batch = match resend {
            Some(batch) => batch,
            None => {
                let tenant = format!("tenant-{}", rng.gen_range(0..plan.tenants));
                let count = rng.gen_range(1..=plan.batch_events_max);
                let batch: Vec<EventRecord> = (0..count)
                    .map(|_| {
                        next_id += 1;
                        crate::raft::client::event(
                            &tenant,
                            &format!("c{client}-{next_id}"),
                            &mut rng,
                        )
                    })
                    .collect();
                shared.book().sent.push(batch.clone());
                batch
            }
        };
        submit(&shared, batch, Duration::from_secs(2)).await;
        let think = rng.gen_range(0..20);
        tokio::time::sleep(Duration::from_millis(think)).await;
    }
}

/// Sends `batch` to the replica that leads, trying each running replica until one
/// answers or `patience` passes; checks and records the receipts. Whether it was
/// acknowledged.
async fn submit(shared: &Shared, batch: Vec<EventRecord>, patience: Duration) -> bool {
    let until = Instant::now() + patience;
    while Instant::now() < until {
        let handles = shared.handles();
        let leader = handles
            .iter()
            .find(|(node, handle)| handle.raft.metrics().borrow().current_leader == Some(*node));
        let Some((_, handle)) = leader.or(handles.first()) else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let reply = match handle.submit(batch.clone()) {
            Ok(reply) => reply,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        match tokio::time::timeout(Duration::from_secs(1), reply).await {
            Ok(Ok(Ok(receipts))) => {
                record(shared, &batch, &receipts);
                return true;
            }
            Ok(Ok(Err(IngestError::Busy { .. } | IngestError::Unavailable { .. })))
            | Ok(Err(_))
            | Err(_) => {
                shared.book().refused += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    false
}

fn record(shared: &Shared, batch: &[EventRecord], receipts: &[trail_node::ledger::ApplyReceipt]) {
    let mut book = shared.book();
    if receipts.len() != batch.len() {
        let violation = format!("{} receipts for a batch of {}", receipts.len(), batch.len());
        book.violations.push(violation);
        return;
    }
    for (event, receipt) in batch.iter().zip(receipts) {
        let key = (event.tenant_id.clone(), event.event_id.clone());
        let ack = Ack {
            seq: receipt.seq,
            leaf_hash: receipt.leaf_hash,
            appended: false,
        };
        if receipt.conflict {
            let violation = format!(
                "event {}/{} sent again unchanged was answered as a conflicting reuse of its id",
                key.0, key.1
            );
            book.violations.push(violation);
        }
        match book.acked.get_mut(&key) {
            // Receipts of one event reach their clients in any order (a retry's
            // deduplicated receipt may come before the original one), but all name the
            // same position, and only one says the event was appended.
            Some(first) if first.seq != ack.seq || first.leaf_hash != ack.leaf_hash => {
                let violation =
                    format!(
                    "event {}/{} acknowledged at seq {}, then answered at seq {}{}: recorded twice",
                    key.0,
                    key.1,
                    first.seq,
                    ack.seq,
                    if first.leaf_hash != ack.leaf_hash { " with another leaf hash" } else { "" }
                );
                book.trace.push(violation.clone());
                book.violations.push(violation);
            }
            Some(first) if first.appended && !receipt.deduplicated => {
                let violation = format!(
                    "event {}/{} was answered as appended twice (seq {})",
                    key.0, key.1, ack.seq
                );
                book.trace.push(violation.clone());
                book.violations.push(violation);
            }
            Some(first) => {
                first.appended |= !receipt.deduplicated;
                book.deduplicated += 1;
            }
            None => {
                if receipt.deduplicated {
                    book.deduplicated += 1;
                } else {
                    book.appended += 1;
                }
                book.acked.insert(
                    key,
                    Ack {
                        appended: !receipt.deduplicated,
                        ..ack
                    },
                );
            }
        }
    }
}

/// Sends every acknowledged batch again; each must be answered with its receipts.
async fn resend_acknowledged(shared: &Shared) -> Result<(), String> {
    let batches: Vec<Vec<EventRecord>> = {
        let book = shared.book();
        book.sent
            .iter()
            .filter(|batch| {
                batch.iter().all(|event| {
                    book.acked
                        .contains_key(&(event.tenant_id.clone(), event.event_id.clone()))
                })
            })
            .cloned()
            .collect()
    };
    for batch in batches {
        if !submit(shared, batch, HEALED_PATIENCE).await {
            return Err(format!(
                "the healed cluster did not acknowledge a batch within {HEALED_PATIENCE:?}"
            ));
        }
    }
    Ok(())
}

/// Waits until every replica has applied the leader's whole log.
async fn converge(replicas: &[Replica]) -> Result<(), String> {
    let until = Instant::now() + HEALED_PATIENCE;
    loop {
        let metrics: Vec<_> = replicas
            .iter()
            .filter_map(|replica| replica.running.as_ref())
            .map(|running| running.handle.raft.metrics().borrow().clone())
            .collect();
        let leader = metrics
            .iter()
            .find(|metrics| metrics.current_leader == Some(metrics.id));
        if let Some(leader) = leader {
            let last = leader.last_log_index;
            if metrics
                .iter()
                .all(|metrics| metrics.last_applied.map(|id| id.index) == last)
            {
                return Ok(());
            }
        }
        if Instant::now() > until {
            let states: Vec<String> = metrics
                .iter()
                .map(|metrics| {
                    format!(
                        "node {}: {:?}, leader {:?}, last log {:?}, applied {:?}",
                        metrics.id,
                        metrics.state,
                        metrics.current_leader,
                        metrics.last_log_index,
                        metrics.last_applied.map(|id| id.index)
                    )
                })
                .collect();
            return Err(format!(
                "the healed cluster did not converge within {HEALED_PATIENCE:?}: {}",
                states.join("; ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One replica's events: `(tenant, seq)` -> `(event id, leaf hash)`, and its tenants'
/// states.
type Contents = (
    BTreeMap<(String, u64), (String, LeafHash)>,
    BTreeMap<String, String>,
);

/// The end-of-run checks on every replica.
fn check_replicas(replicas: &[Replica], shared: &Shared) -> Result<(), String> {
    let book = shared.book();
    let tenants: BTreeSet<String> = book
        .acked
        .keys()
        .map(|(tenant, _)| tenant.clone())
        .collect();
    let mut first: Option<(NodeId, Contents)> = None;
    for replica in replicas {
        let running = replica
            .running
            .as_ref()
            .expect("every replica runs after the heal");
        let keyspaces = &running.handle.keyspaces;
        let node = replica.node;
        let mut events = BTreeMap::new();
        let mut states = BTreeMap::new();
        for tenant in &tenants {
            let state = reader::tenant_state(keyspaces, tenant)
                .map_err(|error| format!("node {node}: tenant {tenant}: {error}"))?;
            states.insert(tenant.clone(), format!("{state:?}"));
            let mut after = 0;
            let mut ids = BTreeSet::new();
            loop {
                let (page, _last) = reader::tail(keyspaces, tenant, after, reader::TAIL_LIMIT_MAX)
                    .map_err(|error| format!("node {node}: tenant {tenant}: {error}"))?;
                let Some(last) = page.last() else { break };
                after = last.stored.seq;
                for event in page {
                    let id = event.stored.event.event_id.clone();
                    if !ids.insert(id.clone()) {
                        return Err(format!(
                            "node {node}: tenant {tenant}: event {id} is recorded twice (again at seq {})",
                            event.stored.seq
                        ));
                    }
                    events.insert((tenant.clone(), event.stored.seq), (id, event.leaf_hash));
                }
            }
        }
        for ((tenant, id), ack) in &book.acked {
            let found = reader::get_event(keyspaces, tenant, id)
                .map_err(|error| format!("node {node}: event {tenant}/{id}: {error}"))?;
            match found {
                None => {
                    let stored = events.iter().find(|(_, (stored_id, _))| stored_id == id);
                    return Err(match stored {
                        Some(((_, seq), _)) => format!(
                            "node {node}: event {tenant}/{id} is stored at seq {seq} but its id is not found (the dedup index forgot it)"
                        ),
                        None => format!(
                            "node {node}: acknowledged event {tenant}/{id} (seq {}) is missing",
                            ack.seq
                        ),
                    });
                }
                Some(event) if event.stored.seq != ack.seq || event.leaf_hash != ack.leaf_hash => {
                    return Err(format!(
                        "node {node}: event {tenant}/{id} acknowledged at seq {}, found at seq {}{}",
                        ack.seq,
                        event.stored.seq,
                        if event.leaf_hash != ack.leaf_hash { " with another leaf hash" } else { "" }
                    ));
                }
                Some(_) => {}
            }
        }
        match &first {
            None => first = Some((node, (events, states))),
            Some((first_node, (first_events, first_states))) => {
                if *first_states != states {
                    return Err(format!(
                        "node {node} and node {first_node} hold different tenant states"
                    ));
                }
                if *first_events != events {
                    let differing = first_events
                        .iter()
                        .find(|(key, value)| events.get(*key) != Some(*value))
                        .map(|(key, _)| key.clone())
                        .or_else(|| {
                            events
                                .keys()
                                .find(|key| !first_events.contains_key(*key))
                                .cloned()
                        });
                    return Err(format!(
                        "node {node} and node {first_node} hold different events (first at {differing:?})"
                    ));
                }
            }
        }
    }
    Ok(())
}
