//! The Raft harness: real openraft 0.9 groups running the real ledger apply code, in
//! one process, on one paused current-thread tokio runtime, under network faults and
//! crashes, with the checkers running all the time.
//!
//! A seed decides the whole run ([`Plan`]): the number of replicas (3 or 5), Raft
//! timing, snapshot policy, fsync latency, network fault rates, the client workload and
//! the fault schedule. A run is a safety phase (faults on), then a liveness phase:
//! every fault healed, every replica restarted, and every event any client sent
//! (acknowledged or with an unknown outcome) must be acknowledged, and the replicas
//! converge, within a bound of virtual time. Then the final checks compare every
//! replica's store against the oracle and each other.
//!
//! Determinism: virtual time only (tokio's paused clock; openraft's `Instant` is
//! tokio's), one thread, seeded RNGs everywhere, including openraft's
//! (`rt::SimRuntime::thread_rng`), and no `HashMap` iteration. Two runs of a seed give
//! the same trace hash (`tests/determinism.rs`).

pub mod check;
pub(crate) mod client;
pub mod net;
pub mod record;
mod repair;
pub mod rt;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::{BasicNode, Config, SnapshotPolicy};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use trail_node::ledger::{LedgerCommand, LedgerResponse, NoteSigner};

use check::Checker;
use client::{Client, ClientStats};
use net::{Filter, NetStats, NetworkFactory, Router};
use rt::{NodeKey, SimRuntime};
use store::Disk;

openraft::declare_raft_types!(
    /// The simulation's Raft types: the node's entries and responses, snapshots in
    /// memory, and the seeded runtime.
    pub SimConfig:
        D = LedgerCommand,
        R = LedgerResponse,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<SimConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = SimRuntime,
);

pub type Raft = openraft::Raft<SimConfig>;
pub type Entry = openraft::Entry<SimConfig>;
pub type LogId = openraft::LogId<u64>;
pub type Vote = openraft::Vote<u64>;
pub type StoredMembership = openraft::StoredMembership<u64, BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<u64, BasicNode>;
pub type Snapshot = openraft::storage::Snapshot<SimConfig>;
pub type StorageError = openraft::StorageError<u64>;
pub type LogState = openraft::storage::LogState<SimConfig>;
pub type Metrics = openraft::RaftMetrics<u64, BasicNode>;

/// Bugs the harness can plant, to show its checkers catch them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PlantedBug {
    /// The log store calls `LogFlushed` when the entries are written, before any
    /// fsync (which then happens on a timer).
    AckBeforeFsync,
    /// On restart the state machine forgets its applied id and applies its last batch
    /// again, on top of that batch's own writes.
    ApplyTwiceAfterRestart,
    /// The state machine skips a seq now and then.
    SkipSeq,
    /// One replica seals blocks with two leaves swapped.
    SealOrder,
    /// Reads are answered by the replica the client believes leads, from its state
    /// machine, without confirming leadership (no read index).
    StaleRead,
    /// A replica opens its disk without verifying checksums (and reads without
    /// checking them): a flipped bit is served and applied.
    SkipChecksum,
    /// An fsync error is logged, the appends waiting for it are acknowledged and the
    /// replica keeps running; what the failed fsync covered is lost at the next crash.
    FsyncErrorIgnored,
    /// A wiped replica comes back empty as a voter, without leaving the membership
    /// first (its empty vote can be given twice in a term).
    WipeInPlace,
}

impl PlantedBug {
    pub const ALL: [PlantedBug; 8] = [
        PlantedBug::AckBeforeFsync,
        PlantedBug::ApplyTwiceAfterRestart,
        PlantedBug::SkipSeq,
        PlantedBug::SealOrder,
        PlantedBug::StaleRead,
        PlantedBug::SkipChecksum,
        PlantedBug::FsyncErrorIgnored,
        PlantedBug::WipeInPlace,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PlantedBug::AckBeforeFsync => "ack-before-fsync",
            PlantedBug::ApplyTwiceAfterRestart => "apply-twice-after-restart",
            PlantedBug::SkipSeq => "skip-seq",
            PlantedBug::SealOrder => "seal-order",
            PlantedBug::StaleRead => "stale-read",
            PlantedBug::SkipChecksum => "skip-checksum",
            PlantedBug::FsyncErrorIgnored => "fsync-error-ignored",
            PlantedBug::WipeInPlace => "wipe-in-place",
        }
    }

    pub fn parse(name: &str) -> Option<PlantedBug> {
        PlantedBug::ALL.into_iter().find(|bug| bug.name() == name)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub keep_trace: bool,
    pub planted: Option<PlantedBug>,
    /// Overrides the seed's safety-phase length (virtual milliseconds).
    pub safety_ms: Option<u64>,
    /// Reads wait only for openraft 0.9's `get_read_log_id`, not for the leader's last
    /// log index. Not linearizable after a leader restarts as leader of its term with
    /// a committed index below what it had acknowledged (seed 495 finds it; see
    /// `tests/regressions.rs`).
    pub openraft_read_index: bool,
    /// The log reader returns whatever entries of a range exist (as the node's fjall
    /// log store does), not only those that follow the range's start without a gap.
    /// openraft 0.9.25 then lets a stale replication stream send entries that do not
    /// follow `prev_log_id` (seed 28399; see `tests/regressions.rs`).
    pub gapped_log_reads: bool,
    /// The log store purges as soon as openraft asks (as the node's fjall log store
    /// does), even beyond what the state machine has installed: a crash between the
    /// purge and the install leaves a log the replica cannot recover from (seed 11974;
    /// see `tests/regressions.rs`).
    pub eager_purge: bool,
    /// A snapshot install is two journal changes (the installed state, then the
    /// current-snapshot pointer), as the node's state machine writes them: a crash
    /// between them leaves a state machine applied beyond its snapshot, and openraft
    /// purges the log up to it at startup (seed 11974; see `tests/regressions.rs`).
    pub split_install: bool,
    /// No disk faults (no bit flips, fsync errors or wipes): a seed runs as it did
    /// before disk faults existed, so the seeds of `tests/regressions.rs` found then
    /// replay as they were found. The crash model (lost unsynced writes, a torn tail)
    /// stays.
    pub no_disk_faults: bool,
}

/// Everything a seed decides.
#[derive(Debug, Clone)]
pub struct Plan {
    pub replicas: usize,
    pub heartbeat_ms: u64,
    pub election_ms: (u64, u64),
    pub max_payload_entries: u64,
    pub snapshot_every: u64,
    pub logs_kept: u64,
    pub fsync_latency_us: (u64, u64),
    /// Network faults of the safety phase: loss, duplication, one-way delay.
    pub drop: f64,
    pub duplicate: f64,
    pub delay_us: (u64, u64),
    pub backoff: Duration,
    pub clients: usize,
    pub tenants: usize,
    pub batch_events_max: usize,
    pub block_events_max: u32,
    pub seal_rate: f64,
    pub read_rate: f64,
    pub think_ms: (u64, u64),
    pub client_timeout: Duration,
    pub safety_ms: u64,
    pub fault_every_ms: (u64, u64),
    pub crash_rate: f64,
    pub power_failure_rate: f64,
    pub partition_rate: f64,
    pub lazy_flush_ms: u64,
    pub disk: DiskFaults,
}

/// The disk faults of a seed, drawn from their own RNG (so a seed's other draws are
/// what they were before these faults existed). Swarm testing: each kind is on in
/// about two seeds of three, at a rate of its own.
#[derive(Debug, Clone)]
pub struct DiskFaults {
    /// Per restart in the safety phase: one bit of one stored record flips while the
    /// replica is down.
    pub bit_flip_rate: f64,
    /// Per fault step: the next fsync of a running replica fails.
    pub fsync_error_rate: f64,
    /// Per fault step: a replica's disk is lost; it is replaced by an empty one.
    pub wipe_rate: f64,
}

impl DiskFaults {
    /// No disk faults at all (`Options::no_disk_faults`).
    pub const NONE: DiskFaults = DiskFaults {
        bit_flip_rate: 0.0,
        fsync_error_rate: 0.0,
        wipe_rate: 0.0,
    };

    fn draw(seed: u64, planted: Option<PlantedBug>) -> DiskFaults {
        let mut rng = StdRng::seed_from_u64(rt::splitmix64(seed ^ 0x4449_534b_4641_554c));
        let mut rate = |low: f64, high: f64, forced: bool| {
            let on = rng.gen_bool(0.65);
            let rate = rng.gen_range(low..high);
            if on || forced {
                rate
            } else {
                0.0
            }
        };
        DiskFaults {
            bit_flip_rate: rate(0.05, 0.3, planted == Some(PlantedBug::SkipChecksum)),
            fsync_error_rate: rate(0.02, 0.08, planted == Some(PlantedBug::FsyncErrorIgnored)),
            wipe_rate: rate(0.01, 0.05, planted == Some(PlantedBug::WipeInPlace)),
        }
    }
}

impl Plan {
    fn draw(rng: &mut StdRng, disk: DiskFaults) -> Plan {
        let heartbeat_ms = rng.gen_range(30..=80);
        let election_min = heartbeat_ms * rng.gen_range(3..=5);
        let delay_high = rng.gen_range(500..=6_000);
        Plan {
            replicas: *[3, 3, 5].choose(rng).expect("non-empty"),
            heartbeat_ms,
            election_ms: (election_min, election_min * 2),
            max_payload_entries: rng.gen_range(1..=32),
            snapshot_every: rng.gen_range(4..=40),
            logs_kept: rng.gen_range(0..=8),
            fsync_latency_us: (rng.gen_range(50..=500), rng.gen_range(500..=4_000)),
            drop: rng.gen_range(0.0..0.3),
            duplicate: rng.gen_range(0.0..0.1),
            delay_us: (rng.gen_range(50..=500), delay_high),
            backoff: Duration::from_micros(rng.gen_range(20_000..=200_000)),
            clients: rng.gen_range(1..=3),
            tenants: rng.gen_range(1..=5),
            batch_events_max: rng.gen_range(1..=6),
            block_events_max: rng.gen_range(1..=8),
            seal_rate: rng.gen_range(0.02..0.15),
            read_rate: rng.gen_range(0.05..0.3),
            think_ms: (rng.gen_range(1..=5), rng.gen_range(10..=60)),
            client_timeout: Duration::from_millis(rng.gen_range(300..=1_500)),
            safety_ms: rng.gen_range(2_000..=4_000),
            fault_every_ms: (rng.gen_range(30..=100), rng.gen_range(150..=500)),
            crash_rate: rng.gen_range(0.1..0.4),
            power_failure_rate: rng.gen_range(0.02..0.15),
            partition_rate: rng.gen_range(0.1..0.4),
            lazy_flush_ms: rng.gen_range(30..=200),
            disk,
        }
    }

    /// The safety phase's network: delay (so reordering), loss and duplication.
    fn network(&self, drop: f64) -> Vec<Filter> {
        vec![
            Filter::Delay {
                min_us: self.delay_us.0,
                max_us: self.delay_us.1,
            },
            Filter::Drop(drop),
            Filter::Duplicate(self.duplicate),
        ]
    }

    fn raft_config(&self) -> Arc<Config> {
        let config = Config {
            cluster_name: "sim".to_string(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_ms.0,
            election_timeout_max: self.election_ms.1,
            install_snapshot_timeout: 500,
            max_payload_entries: self.max_payload_entries,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.logs_kept,
            ..Default::default()
        };
        Arc::new(config.validate().expect("the plan's Raft config is valid"))
    }
}

/// A replica's metrics, once its Raft core has published them (until then they are
/// `RaftMetrics::new_initial`, with a default vote, not what the replica holds).
pub(crate) fn published_metrics(raft: &Raft) -> Option<Metrics> {
    let metrics = raft.metrics();
    if !metrics.has_changed().unwrap_or(true) {
        return None;
    }
    let current = metrics.borrow().clone();
    Some(current)
}

/// A replica's role, term, leader and log positions, as the trace records each change.
pub(crate) fn metrics_summary(metrics: &Metrics) -> String {
    format!(
        "{:?} term {} leader {:?} log {:?} applied {:?} snapshot {:?} purged {:?}",
        metrics.state,
        metrics.current_term,
        metrics.current_leader,
        metrics.last_log_index,
        metrics.last_applied.map(|log_id| log_id.index),
        metrics.snapshot.map(|log_id| log_id.index),
        metrics.purged.map(|log_id| log_id.index),
    )
}

/// A running replica whose Raft core ended (a panic drops the metrics sender without a
/// last report) is a failure.
pub(crate) fn core_stopped(raft: &Raft) -> bool {
    raft.metrics().has_changed().is_err()
}

/// The network of the liveness phase: no loss, no duplication, short delays.
const HEALED: Filter = Filter::Delay {
    min_us: 100,
    max_us: 2_000,
};

/// How long the liveness phase may take, in virtual time.
pub const LIVENESS_BOUND: Duration = Duration::from_secs(12);
/// The sampler's step: every replica's metrics are checked this often.
const STEP: Duration = Duration::from_millis(2);

#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub trace_hash: String,
    pub trace_events: u64,
    pub replicas: usize,
    pub virtual_ms: u64,
    pub events_sent: usize,
    pub crashes: u64,
    pub power_failures: u64,
    pub partitions: u64,
    pub reads_checked: u64,
    pub leaders: usize,
    pub terms_with_several_leaders: usize,
    pub unsynced_writes_lost: u64,
    pub fsyncs: u64,
    pub disk: DiskFaultStats,
    pub net: NetStats,
    pub clients: Vec<ClientStats>,
    pub trace: Vec<String>,
}

/// How often each disk fault happened in a run.
#[derive(Debug, Default, Clone, Copy)]
pub struct DiskFaultStats {
    /// Bits flipped in stored records while a replica was down.
    pub bit_flips: u64,
    /// Restarts refused because the scrub found a corrupt record.
    pub corruptions_detected: u64,
    /// fsyncs that failed (each stopped its replica).
    pub fsync_errors: u64,
    /// Disks lost and replaced by empty ones.
    pub wipes: u64,
    /// Replicas repaired: removed, wiped, back as a learner, promoted.
    pub repairs: u64,
}

#[derive(Debug, Clone)]
pub struct Failure {
    pub seed: u64,
    pub message: String,
    pub trace_hash: String,
    pub virtual_ms: u64,
    pub trace: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {}: {} (at {} ms virtual, trace {})",
            self.seed, self.message, self.virtual_ms, self.trace_hash
        )
    }
}

/// Runs one seed on a fresh paused current-thread runtime on this thread.
pub fn run(seed: u64, options: &Options) -> Result<Report, Failure> {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_time().start_paused(true);
    // tokio's own RNG (unbiased `select!`, e.g. in openraft's replication backoff)
    // comes from the seed too; `.cargo/config.toml` sets the cfg for the workspace.
    #[cfg(tokio_unstable)]
    builder.rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()));
    let runtime = builder.build().expect("a current-thread runtime builds");
    rt::begin_run(seed);
    let result = runtime.block_on(Cluster::run(seed, options.clone()));
    drop(runtime);
    rt::begin_run(0);
    result
}

struct Cluster {
    plan: Plan,
    config: Arc<Config>,
    checker: Checker,
    router: Router,
    disks: Vec<Disk>,
    planted: Option<PlantedBug>,
    counters: Mutex<Counters>,
    /// Replicas being repaired (at most one at a time: a minority), and the tasks
    /// repairing them.
    repairs: Mutex<Repairs>,
}

#[derive(Default)]
struct Counters {
    crashes: u64,
    power_failures: u64,
    partitions: u64,
    disk: DiskFaultStats,
}

#[derive(Default)]
struct Repairs {
    nodes: BTreeSet<u64>,
    /// Replicas that must stay down until their repair has wiped their disk and started
    /// them (after that, a crash is restarted as any other).
    held_down: BTreeSet<u64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Cluster {
    fn nodes(&self) -> Vec<u64> {
        (1..=self.plan.replicas as u64).collect()
    }

    fn disk(&self, node: u64) -> &Disk {
        &self.disks[(node - 1) as usize]
    }

    /// Starts (or restarts) a replica on what its disk holds. A replica whose scrub
    /// finds a corrupt record refuses to start, and its repair begins: false.
    async fn start(self: &Arc<Self>, node: u64) -> bool {
        let disk = self.disk(node).clone();
        let incarnation = disk.lock().incarnation;
        let key = NodeKey { node, incarnation };
        let (log, sm) = match disk.open(incarnation, self.checker.clone()) {
            Ok(stores) => stores,
            Err(corrupt) => {
                self.checker
                    .record(&format!("replica {node} refuses to start: {corrupt}"));
                self.counters
                    .lock()
                    .expect("counters")
                    .disk
                    .corruptions_detected += 1;
                self.begin_repair(node);
                return false;
            }
        };
        let network = NetworkFactory {
            from: node,
            router: self.router.clone(),
        };
        let started = rt::within(key, Raft::new(node, self.config.clone(), network, log, sm)).await;
        let raft = match started {
            Ok(raft) => raft,
            Err(error) => {
                // What a crash left on the disk must always be startable.
                self.checker.fail(format!(
                    "replica {node} does not start on its own disk: {error}"
                ));
                return false;
            }
        };
        if self.planted == Some(PlantedBug::AckBeforeFsync) {
            let every = Duration::from_millis(self.plan.lazy_flush_ms);
            rt::spawn_in(key, disk.clone().run_lazy_flusher(every));
        } else {
            rt::spawn_in(key, disk.clone().run_syncer());
        }
        self.router.set_node(node, Some((key, raft)));
        self.checker
            .record(&format!("start replica {node} incarnation {incarnation}"));
        true
    }

    /// A replica incarnation must stop at once (an fsync error): it crashes.
    fn on_fatal(&self, key: NodeKey, reason: &str) {
        let running = self.router.node(key.node).map(|(running, _)| running);
        if running != Some(key) {
            return;
        }
        self.checker.record(&format!(
            "replica {}: {reason}: the replica stops",
            key.node
        ));
        self.crash(key.node);
        self.counters.lock().expect("counters").crashes += 1;
    }

    /// The replica is down for its repair: nothing else may start it.
    fn is_held_down(&self, node: u64) -> bool {
        self.repairs
            .lock()
            .expect("repairs")
            .held_down
            .contains(&node)
    }

    fn any_repairing(&self) -> bool {
        !self.repairs.lock().expect("repairs").nodes.is_empty()
    }

    /// Crashes a replica: its tasks stop at once and its disk loses unsynced writes.
    fn crash(&self, node: u64) -> bool {
        let Some((key, raft)) = self.router.node(node) else {
            return false;
        };
        self.router.set_node(node, None);
        drop(raft);
        let tasks = rt::kill(key);
        let lost_before = self.disk(node).lock().lost_on_crash;
        self.disk(node).crash();
        let lost = self.disk(node).lock().lost_on_crash - lost_before;
        self.checker.record(&format!(
            "crash replica {node} ({tasks} tasks stopped, {lost} unsynced writes lost)"
        ));
        true
    }

    async fn run(seed: u64, options: Options) -> Result<Report, Failure> {
        let mut rng = StdRng::seed_from_u64(seed);
        let disk_faults = if options.no_disk_faults {
            DiskFaults::NONE
        } else {
            DiskFaults::draw(seed, options.planted)
        };
        let mut plan = Plan::draw(&mut rng, disk_faults);
        if let Some(safety_ms) = options.safety_ms {
            plan.safety_ms = safety_ms;
        }
        let checker = Checker::new(options.keep_trace);
        checker.record(&format!("seed {seed} {plan:?}"));
        if let Some(bug) = options.planted {
            checker.record(&format!("planted bug {}", bug.name()));
        }
        let router = Router::new(
            rng.gen(),
            plan.network(plan.drop),
            plan.backoff,
            checker.clone(),
        );
        let victim = rng.gen_range(1..=plan.replicas as u64);
        let disks = (1..=plan.replicas as u64)
            .map(|node| {
                Disk::new(
                    node,
                    rng.gen(),
                    plan.fsync_latency_us,
                    options.planted,
                    node == victim,
                    options.gapped_log_reads,
                )
            })
            .collect::<Vec<Disk>>();
        for disk in &disks {
            let mut disk = disk.lock();
            disk.eager_purge = options.eager_purge;
            disk.split_install = options.split_install;
        }
        let cluster = Arc::new(Cluster {
            config: plan.raft_config(),
            plan,
            checker: checker.clone(),
            router,
            disks,
            planted: options.planted,
            counters: Mutex::new(Counters::default()),
            repairs: Mutex::new(Repairs::default()),
        });
        let weak = Arc::downgrade(&cluster);
        rt::set_fatal_handler(Some(Rc::new(move |key, reason| {
            if let Some(cluster) = weak.upgrade() {
                cluster.on_fatal(key, &reason);
            }
        })));
        for node in cluster.nodes() {
            cluster.start(node).await;
        }
        let members: BTreeMap<u64, BasicNode> = cluster
            .nodes()
            .into_iter()
            .map(|node| (node, BasicNode::new(format!("sim-{node}"))))
            .collect();
        let (key, raft) = cluster.router.node(1).expect("replica 1 runs");
        rt::within(key, raft.initialize(members))
            .await
            .expect("a fresh group initializes");

        let key_bytes: [u8; 32] = Sha256::digest(seed.to_be_bytes()).into();
        let signer = Arc::new(
            NoteSigner::new(
                "sim.trail",
                ed25519_dalek::SigningKey::from_bytes(&key_bytes),
            )
            .expect("valid key name"),
        );
        let start = tokio::time::Instant::now();
        let draining = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for id in 0..cluster.plan.clients {
            let client = Client {
                id,
                router: cluster.router.clone(),
                checker: checker.clone(),
                disks: cluster.disks.clone(),
                signer: signer.clone(),
                plan: cluster.plan.clone(),
                draining: draining.clone(),
                stale_reads: options.planted == Some(PlantedBug::StaleRead),
                openraft_read_index: options.openraft_read_index,
                seed: rng.gen(),
                start,
            };
            clients.push(tokio::spawn(client.run()));
        }
        let faults_on = Arc::new(AtomicBool::new(true));
        let faults = tokio::spawn(Cluster::inject_faults(
            cluster.clone(),
            rng.gen(),
            faults_on.clone(),
        ));

        let safety_end = start + Duration::from_millis(cluster.plan.safety_ms);
        let mut liveness_deadline = None;
        let mut last_seen: BTreeMap<u64, String> = BTreeMap::new();
        let result = loop {
            tokio::time::sleep(STEP).await;
            cluster.sample(&mut last_seen);
            if let Some(message) = checker.violation() {
                break Err(message);
            }
            let now = tokio::time::Instant::now();
            if now >= safety_end {
                faults_on.store(false, Ordering::SeqCst);
            }
            // The fault schedule stops at its next step (never in the middle of a
            // restart); then the liveness phase starts.
            if liveness_deadline.is_none() && now >= safety_end && faults.is_finished() {
                checker.record("liveness phase: heal everything, restart every replica");
                cluster.router.set_filters(vec![HEALED]);
                for node in cluster.nodes() {
                    cluster.disk(node).disarm_fsync_error();
                    if cluster.router.node(node).is_none() && !cluster.is_held_down(node) {
                        cluster.start(node).await;
                    }
                }
                draining.store(true, Ordering::SeqCst);
                liveness_deadline = Some(now + LIVENESS_BOUND);
            }
            if let Some(deadline) = liveness_deadline {
                let clients_done = clients.iter().all(|client| client.is_finished());
                if clients_done && cluster.converged() {
                    break Ok(());
                }
                if now >= deadline {
                    let (sent, acked) = checker.sent_and_acked();
                    break Err(format!(
                        "liveness: after {} s of healed cluster, {acked} of {sent} events \
                         acknowledged, clients done: {clients_done}, converged: {}",
                        LIVENESS_BOUND.as_secs(),
                        cluster.converged()
                    ));
                }
            }
        };
        let virtual_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let result = result.and_then(|()| {
            let guards: Vec<_> = cluster.disks.iter().map(|disk| disk.lock()).collect();
            // No replica holds a corrupt record at the end: each one found was repaired
            // away. (Not with `skip-checksum`: that bug must be caught by what the
            // corrupt data does, not by the harness's own checksums.)
            if options.planted != Some(PlantedBug::SkipChecksum) {
                for disk in &guards {
                    disk.scrub().map_err(|corrupt| {
                        format!("replica {} at the end: {corrupt}", disk.node)
                    })?;
                }
            }
            let stores: Vec<(u64, &trail_node::ledger::MemoryStore)> = guards
                .iter()
                .map(|disk| (disk.node, &disk.sm.store))
                .collect();
            checker.check_final(&stores, signer.name())
        });
        if let Err(message) = &result {
            checker.fail(message.clone());
        }
        faults.abort();
        rt::set_fatal_handler(None);
        for task in std::mem::take(&mut cluster.repairs.lock().expect("repairs").tasks) {
            task.abort();
        }
        let mut client_stats = Vec::new();
        for client in clients {
            if client.is_finished() {
                client_stats.push(client.await.unwrap_or_default());
            } else {
                client.abort();
            }
        }
        let (trace_hash, trace_events, trace) = {
            let mut trace = checker.trace.lock().expect("trace lock");
            (trace.hash(), trace.count(), trace.take_lines())
        };
        if let Err(message) = result {
            return Err(Failure {
                seed,
                message,
                trace_hash,
                virtual_ms,
                trace,
            });
        }
        let counters = cluster.counters.lock().expect("counters lock");
        let mut disk_stats = counters.disk;
        disk_stats.fsync_errors = cluster
            .disks
            .iter()
            .map(|disk| disk.lock().fsync_errors)
            .sum();
        Ok(Report {
            seed,
            trace_hash,
            trace_events,
            replicas: cluster.plan.replicas,
            virtual_ms,
            events_sent: checker.sent_and_acked().0,
            crashes: counters.crashes,
            power_failures: counters.power_failures,
            partitions: counters.partitions,
            reads_checked: checker.reads_checked(),
            leaders: checker.leaders_seen(),
            terms_with_several_leaders: checker.terms_with_several_leaders(),
            unsynced_writes_lost: cluster
                .disks
                .iter()
                .map(|disk| disk.lock().lost_on_crash)
                .sum(),
            fsyncs: cluster.disks.iter().map(|disk| disk.lock().fsyncs).sum(),
            disk: disk_stats,
            net: cluster.router.stats(),
            clients: client_stats,
            trace,
        })
    }

    /// One step of the sampler: every running replica's metrics through the checker,
    /// and a trace line whenever a replica's role, term, leader or progress changes.
    fn sample(&self, last_seen: &mut BTreeMap<u64, String>) {
        for node in self.nodes() {
            let Some((key, raft)) = self.router.node(node) else {
                continue;
            };
            if core_stopped(&raft) {
                self.checker.fail(format!(
                    "replica {node}: Raft core stopped (panicked or exited) while running"
                ));
                continue;
            }
            let Some(metrics) = published_metrics(&raft) else {
                continue;
            };
            let summary = metrics_summary(&metrics);
            if last_seen.get(&node) != Some(&summary) {
                self.checker.record(&format!("replica {node}: {summary}"));
                last_seen.insert(node, summary);
            }
            let disk = self.disk(node).lock();
            let result = self.checker.on_metrics(
                key.incarnation,
                &metrics,
                |index| disk.log_id_at(index),
                disk.last_log_index(),
                disk.purged.map(|log_id| log_id.index),
            );
            drop(disk);
            self.checker.check(result);
        }
    }

    /// The leader, as the running replicas' metrics say (the highest term's view).
    fn leader(&self) -> Option<u64> {
        self.nodes()
            .into_iter()
            .filter_map(|node| self.router.node(node))
            .filter_map(|(_, raft)| published_metrics(&raft))
            .map(|metrics| (metrics.current_term, metrics.current_leader))
            .max()
            .and_then(|(_, leader)| leader)
    }

    /// Every replica runs, agrees on one leader, and has applied the same log id; no
    /// repair is under way and every replica is a voter again.
    fn converged(&self) -> bool {
        if self.any_repairing() {
            return false;
        }
        let all: BTreeSet<u64> = self.nodes().into_iter().collect();
        let mut applied = BTreeSet::new();
        let mut leaders = BTreeSet::new();
        for node in self.nodes() {
            let Some(metrics) = self
                .router
                .node(node)
                .and_then(|(_, raft)| published_metrics(&raft))
            else {
                return false;
            };
            let membership = metrics.membership_config.membership();
            let voters: BTreeSet<u64> = membership.voter_ids().collect();
            if voters != all || membership.get_joint_config().len() != 1 {
                return false;
            }
            applied.insert(metrics.last_applied);
            leaders.insert(metrics.current_leader);
        }
        applied.len() == 1 && leaders.len() == 1 && !leaders.contains(&None)
    }

    /// The fault schedule of the safety phase.
    async fn inject_faults(cluster: Arc<Cluster>, seed: u64, on: Arc<AtomicBool>) {
        let mut rng = StdRng::seed_from_u64(seed);
        // Disk faults draw from their own RNG: the other faults of a seed stay as they
        // were drawn before disk faults existed.
        let mut disk_rng = StdRng::seed_from_u64(rt::splitmix64(seed ^ 0x4449_534b));
        let plan = cluster.plan.clone();
        let nodes = cluster.nodes();
        let mut down_until: BTreeMap<u64, tokio::time::Instant> = BTreeMap::new();
        let mut partition_until: Option<tokio::time::Instant> = None;
        while on.load(Ordering::SeqCst) {
            let wait = rng.gen_range(plan.fault_every_ms.0..=plan.fault_every_ms.1);
            tokio::time::sleep(Duration::from_millis(wait)).await;
            if !on.load(Ordering::SeqCst) {
                break;
            }
            let now = tokio::time::Instant::now();
            let due: Vec<u64> = down_until
                .iter()
                .filter(|(_, until)| **until <= now)
                .map(|(node, _)| *node)
                .collect();
            for node in due {
                down_until.remove(&node);
                // A replica down for its repair is started by its repair.
                if cluster.is_held_down(node) || cluster.router.node(node).is_some() {
                    continue;
                }
                cluster.maybe_flip_bit(node, &mut disk_rng);
                cluster.start(node).await;
            }
            // A replica an fsync error stopped comes back after a while too.
            for node in &nodes {
                let down = cluster.router.node(*node).is_none();
                if down && !down_until.contains_key(node) && !cluster.is_held_down(*node) {
                    let downtime = Duration::from_millis(disk_rng.gen_range(10..=1_000));
                    down_until.insert(*node, now + downtime);
                }
            }
            cluster.inject_disk_faults(&mut disk_rng, &mut down_until);
            if partition_until.is_some_and(|until| until <= now) {
                partition_until = None;
                cluster.router.remove_filters(Filter::is_cut);
            }
            let roll: f64 = rng.gen();
            let mut threshold = plan.crash_rate;
            if roll < threshold {
                // Crash a replica, the leader half of the time.
                let node = match cluster.leader() {
                    Some(leader) if rng.gen_bool(0.5) => leader,
                    _ => *nodes.choose(&mut rng).expect("replicas"),
                };
                if cluster.crash(node) {
                    cluster.counters.lock().expect("counters").crashes += 1;
                    let downtime = rng.gen_range(10..=1_000);
                    down_until.insert(node, now + Duration::from_millis(downtime));
                }
                continue;
            }
            threshold += plan.power_failure_rate;
            if roll < threshold {
                cluster
                    .checker
                    .record("power failure: every replica crashes");
                cluster.counters.lock().expect("counters").power_failures += 1;
                let downtime = rng.gen_range(5..=300);
                for node in &nodes {
                    if cluster.crash(*node) {
                        cluster.counters.lock().expect("counters").crashes += 1;
                    }
                    down_until.insert(*node, now + Duration::from_millis(downtime));
                }
                continue;
            }
            threshold += plan.partition_rate;
            if roll < threshold && partition_until.is_none() {
                let filter = if rng.gen_bool(0.5) {
                    // Isolate one replica, often the leader.
                    let node = match cluster.leader() {
                        Some(leader) if rng.gen_bool(0.6) => leader,
                        _ => *nodes.choose(&mut rng).expect("replicas"),
                    };
                    Filter::Isolate(node)
                } else {
                    Filter::Partition(
                        nodes
                            .iter()
                            .copied()
                            .filter(|_| rng.gen_bool(0.5))
                            .collect(),
                    )
                };
                cluster.router.add_filter(filter);
                cluster.counters.lock().expect("counters").partitions += 1;
                partition_until = Some(now + Duration::from_millis(rng.gen_range(50..=1_500)));
                continue;
            }
            if rng.gen_bool(0.2) {
                // The loss rate changes.
                let drop = rng.gen_range(0.0..=plan.drop);
                cluster
                    .router
                    .remove_filters(|filter| matches!(filter, Filter::Drop(_)));
                cluster.router.add_filter(Filter::Drop(drop));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planted_bug_names_round_trip() {
        for bug in PlantedBug::ALL {
            assert_eq!(PlantedBug::parse(bug.name()), Some(bug));
        }
        assert_eq!(PlantedBug::parse("nope"), None);
    }
}
