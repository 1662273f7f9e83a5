//! The turmoil harness: three simulated hosts ("n1".."n3"), each a node running one
//! replica of each of [`GROUPS`] openraft groups on the Raft harness's in-memory disks
//! (`raft/store.rs`, the node's ledger apply code), talking real tonic gRPC over
//! turmoil's simulated TCP: the Raft transport (`transport.rs`, one service per node,
//! every message naming its group and target node) and the client API, the wire
//! protocol's `trail.v1.Trail` (`api.rs`). Client hosts record batches with same-id
//! retries and read linearizably (`client.rs`).
//!
//! Faults, drawn by the seed: turmoil's own message latency and link failures (a
//! failure breaks a TCP connection: turmoil does not retransmit), partitions of a node
//! from the others, held messages between two nodes, and host crash (with the disk
//! crash model: unsynced writes lost, a torn tail kept) and bounce. A safety phase
//! with faults is followed by a liveness phase that heals everything and requires
//! every event to be acknowledged and every group to converge within a bound. The
//! Raft harness's checkers run on every group (`raft/check.rs`).
//!
//! Determinism: turmoil runs every host on one thread, each on a paused current-thread
//! runtime; `Builder::rng_seed` seeds turmoil's network and, with `--cfg
//! tokio_unstable` (`.cargo/config.toml`), each host runtime's own RNG. openraft's
//! `thread_rng` is the Raft harness's seeded one. tonic's and hyper's timers are tokio's,
//! so they run on the hosts' virtual clocks. Trace lines are stamped with turmoil's
//! elapsed time, set by the driver before each step.

mod api;
mod client;
mod io;
mod transport;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::{BasicNode, Config, SnapshotPolicy};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tonic::transport::Server;
use trail_proto::v1::trail_server::TrailServer;

use crate::raft::check::{Checker, Trace};
use crate::raft::store::Disk;
use crate::raft::{core_stopped, metrics_summary, published_metrics, rt, Failure, Raft};
use api::TrailApi;
use client::{Client, ClientStats};
use transport::pb::raft_transport_server::RaftTransportServer;
use transport::{Groups, NetworkFactory, Peers, TransportService};

/// Nodes (simulated hosts) in the cluster; each hosts one replica of every group.
pub const NODES: u64 = 3;
/// Raft groups (shards); tenants are routed to them by `ledger::routing`.
pub const GROUPS: u64 = 2;
/// Virtual epoch of the run: `ingested_at` and event times count from here.
pub const EPOCH_NS: i64 = 1_700_000_000_000_000_000;
/// How long the liveness phase may take, in virtual time.
pub const LIVENESS_BOUND: Duration = Duration::from_secs(12);
/// One turmoil step: every host runs this much virtual time.
const TICK: Duration = Duration::from_millis(1);
/// The sampler checks every replica's metrics every this many steps.
const SAMPLE_EVERY_STEPS: u64 = 2;

/// The node's clock inside a simulated host: the simulation's elapsed time.
pub fn now_ns() -> i64 {
    let elapsed = ::turmoil::sim_elapsed().unwrap_or_default();
    EPOCH_NS + i64::try_from(elapsed.as_nanos()).unwrap_or(i64::MAX / 2)
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub keep_trace: bool,
}

/// Everything a seed decides.
#[derive(Debug, Clone)]
pub struct Plan {
    pub heartbeat_ms: u64,
    pub election_ms: (u64, u64),
    pub max_payload_entries: u64,
    pub snapshot_every: u64,
    pub logs_kept: u64,
    pub fsync_latency_us: (u64, u64),
    /// turmoil's per-message latency.
    pub latency_ms: (u64, u64),
    /// turmoil's link failure and repair rates of the safety phase.
    pub fail_rate: f64,
    pub repair_rate: f64,
    pub backoff: Duration,
    pub clients: usize,
    pub tenants: usize,
    pub batch_events_max: usize,
    pub block_events_max: u32,
    pub read_rate: f64,
    pub think_ms: (u64, u64),
    pub client_timeout: Duration,
    pub safety_ms: u64,
    pub fault_every_ms: (u64, u64),
    pub crash_rate: f64,
    pub bounce_rate: f64,
    pub partition_rate: f64,
    pub hold_rate: f64,
}

impl Plan {
    fn draw(rng: &mut StdRng) -> Plan {
        let heartbeat_ms = rng.gen_range(50..=100);
        let election_min = heartbeat_ms * rng.gen_range(4..=6);
        let latency_low = rng.gen_range(1..=2);
        Plan {
            heartbeat_ms,
            election_ms: (election_min, election_min * 2),
            max_payload_entries: rng.gen_range(1..=32),
            snapshot_every: rng.gen_range(4..=40),
            logs_kept: rng.gen_range(0..=8),
            fsync_latency_us: (rng.gen_range(50..=500), rng.gen_range(500..=4_000)),
            latency_ms: (latency_low, rng.gen_range(latency_low + 1..=15)),
            fail_rate: rng.gen_range(0.0..0.002),
            repair_rate: rng.gen_range(0.05..0.5),
            backoff: Duration::from_millis(rng.gen_range(20..=200)),
            clients: rng.gen_range(1..=2),
            tenants: rng.gen_range(2..=6),
            batch_events_max: rng.gen_range(1..=5),
            block_events_max: rng.gen_range(1..=8),
            read_rate: rng.gen_range(0.05..0.3),
            think_ms: (rng.gen_range(1..=5), rng.gen_range(10..=60)),
            client_timeout: Duration::from_millis(rng.gen_range(400..=1_500)),
            safety_ms: rng.gen_range(1_500..=3_000),
            fault_every_ms: (rng.gen_range(50..=150), rng.gen_range(200..=500)),
            crash_rate: rng.gen_range(0.1..0.3),
            bounce_rate: rng.gen_range(0.05..0.2),
            partition_rate: rng.gen_range(0.1..0.3),
            hold_rate: rng.gen_range(0.05..0.2),
        }
    }

    fn raft_config(&self) -> Arc<Config> {
        let config = Config {
            cluster_name: "sim".to_string(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_ms.0,
            election_timeout_max: self.election_ms.1,
            install_snapshot_timeout: 1_000,
            max_payload_entries: self.max_payload_entries,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.logs_kept,
            ..Default::default()
        };
        Arc::new(config.validate().expect("the plan's Raft config is valid"))
    }
}

#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub trace_hash: String,
    pub trace_events: u64,
    pub virtual_ms: u64,
    pub events_sent: usize,
    pub crashes: u64,
    pub bounces: u64,
    pub partitions: u64,
    pub holds: u64,
    pub reads_checked: u64,
    pub leaders: usize,
    pub misroutes_refused: u64,
    pub clients: Vec<ClientStats>,
    pub trace: Vec<String>,
}

/// What a node's software needs; shared by its incarnations.
struct NodeCtx {
    node: u64,
    config: Arc<Config>,
    plan: Plan,
    /// This node's disk of each group.
    disks: BTreeMap<u64, Disk>,
    checkers: BTreeMap<u64, Checker>,
    /// The groups running now (emptied by a crash).
    groups: Groups,
    /// Set once node 1 has initialized the groups (at its first start).
    initialized: Arc<AtomicBool>,
}

fn host(node: u64) -> String {
    format!("n{node}")
}

/// One incarnation of a node: open every group's disk, start its replicas, serve gRPC.
async fn node_main(ctx: Arc<NodeCtx>) -> ::turmoil::Result {
    let node = ctx.node;
    let listener = ::turmoil::net::TcpListener::bind(("0.0.0.0", io::GRPC_PORT)).await?;
    let peers = Peers {
        from: node,
        channels: Arc::new(
            (1..=NODES)
                .filter(|peer| *peer != node)
                .map(|peer| (peer, io::channel(&host(peer), ctx.plan.client_timeout)))
                .collect(),
        ),
        backoff: ctx.plan.backoff,
    };
    let mut started = Vec::new();
    for (group, disk) in &ctx.disks {
        let incarnation = disk.lock().incarnation;
        let (log, sm) = disk
            .open(incarnation, ctx.checkers[group].clone())
            .map_err(|corrupt| format!("node {node} group {group}: {corrupt}"))?;
        let network = NetworkFactory {
            group: *group,
            peers: peers.clone(),
        };
        let raft = Raft::new(node, ctx.config.clone(), network, log, sm).await?;
        tokio::spawn(disk.clone().run_syncer());
        ctx.groups
            .lock()
            .expect("groups lock")
            .insert(*group, raft.clone());
        ctx.checkers[group].record(&format!(
            "start node {node} group {group} incarnation {incarnation}"
        ));
        started.push(raft);
    }
    if node == 1 && !ctx.initialized.swap(true, Ordering::SeqCst) {
        let members: BTreeMap<u64, BasicNode> = (1..=NODES)
            .map(|member| (member, BasicNode::new(host(member))))
            .collect();
        for raft in &started {
            raft.initialize(members.clone()).await?;
        }
    }
    let api = TrailApi {
        node,
        groups: ctx.groups.clone(),
        disks: ctx.disks.clone(),
        block_events_max: ctx.plan.block_events_max,
    };
    let transport = TransportService {
        node,
        groups: ctx.groups.clone(),
    };
    Server::builder()
        .add_service(RaftTransportServer::new(transport))
        .add_service(TrailServer::new(api))
        .serve_with_incoming(io::incoming(listener))
        .await?;
    Ok(())
}

/// The run's shared state, as the driver sees it.
struct Cluster {
    plan: Plan,
    /// turmoil's link failure rate now (0 in the liveness phase).
    fail_rate: f64,
    trace: Arc<Mutex<Trace>>,
    checkers: BTreeMap<u64, Checker>,
    nodes: BTreeMap<u64, Arc<NodeCtx>>,
    down: BTreeSet<u64>,
    crashes: u64,
    bounces: u64,
    partitions: u64,
    holds: u64,
}

impl Cluster {
    fn record(&self, line: &str) {
        self.trace.lock().expect("trace lock").record(line);
    }

    fn violation(&self) -> Option<String> {
        self.checkers.values().find_map(Checker::violation)
    }

    /// A host crash: its runtime and every task on it are dropped at once, and each of
    /// its disks loses its unsynced writes (a seeded prefix survives).
    ///
    /// The host is cut off from every other host while its tasks are dropped, so the
    /// FINs and RSTs its sockets send on drop are lost (as a machine that loses power
    /// sends none). Their order is the order tokio drops the tasks in, which depends on
    /// process-wide task ids (other runs in the process, other threads): sent, they
    /// would draw turmoil's RNG in that order and make the run depend on what ran
    /// before it. The links get back the state their faults give them.
    fn crash(&mut self, sim: &mut ::turmoil::Sim<'_>, node: u64, links: &[(u64, LinkFault)]) {
        sim.set_fail_rate(0.0);
        let others = self.other_hosts(node);
        for other in &others {
            sim.partition(host(node), other.as_str());
        }
        sim.crash(host(node));
        for other in &others {
            let fault = links
                .iter()
                .find(|(peer, _)| host(*peer) == *other)
                .map(|(_, fault)| *fault);
            match fault {
                Some(LinkFault::Partition) => {}
                Some(LinkFault::Hold) => sim.hold(host(node), other.as_str()),
                None => sim.repair(host(node), other.as_str()),
            }
        }
        sim.set_fail_rate(self.fail_rate);
        let ctx = &self.nodes[&node];
        ctx.groups.lock().expect("groups lock").clear();
        let mut lost = 0;
        for disk in ctx.disks.values() {
            let before = disk.lock().lost_on_crash;
            disk.crash();
            lost += disk.lock().lost_on_crash - before;
        }
        self.crashes += 1;
        self.record(&format!("crash node {node} ({lost} unsynced writes lost)"));
    }

    /// Every host but `node`'s: the other nodes and the clients.
    fn other_hosts(&self, node: u64) -> Vec<String> {
        let mut hosts: Vec<String> = (1..=NODES)
            .filter(|other| *other != node)
            .map(host)
            .collect();
        hosts.extend((0..self.plan.clients).map(|id| format!("c{id}")));
        hosts
    }

    /// The leader of `group`, as the highest term's view says.
    fn leader(&self, group: u64) -> Option<u64> {
        self.nodes
            .values()
            .filter_map(|ctx| ctx.groups.lock().expect("groups lock").get(&group).cloned())
            .filter_map(|raft| published_metrics(&raft))
            .map(|metrics| (metrics.current_term, metrics.current_leader))
            .max()
            .and_then(|(_, leader)| leader)
    }

    /// Every replica's metrics through its group's checker; a trace line on change.
    fn sample(&self, last_seen: &mut BTreeMap<(u64, u64), String>) {
        for (node, ctx) in &self.nodes {
            let groups: Vec<(u64, Raft)> = ctx
                .groups
                .lock()
                .expect("groups lock")
                .iter()
                .map(|(group, raft)| (*group, raft.clone()))
                .collect();
            for (group, raft) in groups {
                let checker = &self.checkers[&group];
                if core_stopped(&raft) {
                    checker.fail(format!(
                        "node {node} group {group}: Raft core stopped while running"
                    ));
                    continue;
                }
                let Some(metrics) = published_metrics(&raft) else {
                    continue;
                };
                let summary = metrics_summary(&metrics);
                if last_seen.get(&(*node, group)) != Some(&summary) {
                    checker.record(&format!("node {node} group {group}: {summary}"));
                    last_seen.insert((*node, group), summary);
                }
                let disk = ctx.disks[&group].lock();
                let result = checker.on_metrics(
                    disk.incarnation,
                    &metrics,
                    |index| disk.log_id_at(index),
                    disk.last_log_index(),
                    disk.purged.map(|log_id| log_id.index),
                );
                drop(disk);
                checker.check(result);
            }
        }
    }

    /// Every replica of every group runs, agrees on its leader and applied the same.
    fn converged(&self) -> bool {
        for group in 1..=GROUPS {
            let mut applied = BTreeSet::new();
            let mut leaders = BTreeSet::new();
            for ctx in self.nodes.values() {
                let raft = ctx.groups.lock().expect("groups lock").get(&group).cloned();
                let Some(metrics) = raft.as_ref().and_then(published_metrics) else {
                    return false;
                };
                applied.insert(metrics.last_applied);
                leaders.insert(metrics.current_leader);
            }
            if applied.len() != 1 || leaders.len() != 1 || leaders.contains(&None) {
                return false;
            }
        }
        true
    }
}

/// A scheduled end of a fault.
enum Heal {
    Restart(u64),
    Repair(u64),
    Release(u64, u64),
}

/// What a fault does to a link now.
#[derive(Clone, Copy)]
enum LinkFault {
    Partition,
    Hold,
}

/// The faulted links of `node`, by peer node, as the pending heals say.
fn link_faults(heals: &[(Duration, Heal)], node: u64) -> Vec<(u64, LinkFault)> {
    let mut faults = Vec::new();
    for (_, heal) in heals {
        match heal {
            Heal::Repair(cut) if *cut == node => {
                faults.extend(
                    (1..=NODES)
                        .filter(|peer| *peer != node)
                        .map(|peer| (peer, LinkFault::Partition)),
                );
            }
            Heal::Repair(cut) => faults.push((*cut, LinkFault::Partition)),
            Heal::Release(a, b) if *a == node => faults.push((*b, LinkFault::Hold)),
            Heal::Release(a, b) if *b == node => faults.push((*a, LinkFault::Hold)),
            _ => {}
        }
    }
    // A partition wins over a hold on the same link.
    faults.sort_by_key(|(peer, fault)| (*peer, matches!(fault, LinkFault::Hold)));
    faults
}

/// Runs one seed.
pub fn run(seed: u64, options: &Options) -> Result<Report, Failure> {
    rt::begin_run(seed);
    let result = run_inner(seed, options);
    rt::begin_run(0);
    result
}

fn run_inner(seed: u64, options: &Options) -> Result<Report, Failure> {
    let mut rng = StdRng::seed_from_u64(seed);
    let plan = Plan::draw(&mut rng);
    let now_us = Arc::new(AtomicU64::new(0));
    let trace = Arc::new(Mutex::new(Trace::with_shared_clock(
        options.keep_trace,
        now_us.clone(),
    )));
    let checkers: BTreeMap<u64, Checker> = (1..=GROUPS)
        .map(|group| (group, Checker::with_trace(trace.clone())))
        .collect();
    trace
        .lock()
        .expect("trace lock")
        .record(&format!("seed {seed} turmoil {plan:?}"));
    let config = plan.raft_config();
    let initialized = Arc::new(AtomicBool::new(false));
    let mut nodes = BTreeMap::new();
    for node in 1..=NODES {
        let disks: BTreeMap<u64, Disk> = (1..=GROUPS)
            .map(|group| {
                let disk = Disk::new(node, rng.gen(), plan.fsync_latency_us, None, false, false);
                (group, disk)
            })
            .collect();
        let ctx = NodeCtx {
            node,
            config: config.clone(),
            plan: plan.clone(),
            disks,
            checkers: checkers.clone(),
            groups: Arc::new(Mutex::new(BTreeMap::new())),
            initialized: initialized.clone(),
        };
        nodes.insert(node, Arc::new(ctx));
    }
    let mut sim = ::turmoil::Builder::new()
        .rng_seed(rng.gen())
        .tick_duration(TICK)
        .simulation_duration(Duration::from_secs(3_600))
        .min_message_latency(Duration::from_millis(plan.latency_ms.0))
        .max_message_latency(Duration::from_millis(plan.latency_ms.1))
        .fail_rate(plan.fail_rate)
        .repair_rate(plan.repair_rate)
        .tcp_capacity(65_536)
        .build();
    for (node, ctx) in &nodes {
        let ctx = ctx.clone();
        sim.host(host(*node), move || node_main(ctx.clone()));
    }
    let draining = Arc::new(AtomicBool::new(false));
    let mut client_stats = Vec::new();
    for id in 0..plan.clients {
        let stats = Arc::new(Mutex::new(ClientStats::default()));
        client_stats.push(stats.clone());
        let client = Client {
            id,
            seed: rng.gen(),
            plan: plan.clone(),
            checkers: checkers.clone(),
            draining: draining.clone(),
            stats,
        };
        sim.client(format!("c{id}"), client.run());
    }
    let mut cluster = Cluster {
        fail_rate: plan.fail_rate,
        plan: plan.clone(),
        trace: trace.clone(),
        checkers: checkers.clone(),
        nodes,
        down: BTreeSet::new(),
        crashes: 0,
        bounces: 0,
        partitions: 0,
        holds: 0,
    };
    let mut fault_rng = StdRng::seed_from_u64(rng.gen());
    let result = drive(&mut sim, &mut cluster, &mut fault_rng, &now_us, &draining);
    let virtual_ms = u64::try_from(sim.elapsed().as_millis()).unwrap_or(u64::MAX);
    let result = result.and_then(|()| {
        for (group, checker) in &cluster.checkers {
            let guards: Vec<_> = cluster
                .nodes
                .values()
                .map(|ctx| ctx.disks[group].lock())
                .collect();
            let stores: Vec<(u64, &trail_node::ledger::MemoryStore)> = guards
                .iter()
                .map(|disk| (disk.node, &disk.sm.store))
                .collect();
            checker
                .check_final(&stores, "sim.trail")
                .map_err(|error| format!("group {group}: {error}"))?;
        }
        Ok(())
    });
    if let Err(message) = &result {
        cluster.record(&format!("VIOLATION {message}"));
    }
    let (trace_hash, trace_events, lines) = {
        let mut trace = trace.lock().expect("trace lock");
        (trace.hash(), trace.count(), trace.take_lines())
    };
    // Dropping the simulation drops every host's runtime and task while the harness's
    // thread-local state (openraft's seeded RNG) still belongs to this run.
    drop(sim);
    if let Err(message) = result {
        return Err(Failure {
            seed,
            message,
            trace_hash,
            virtual_ms,
            trace: lines,
        });
    }
    let clients: Vec<ClientStats> = client_stats
        .iter()
        .map(|stats| *stats.lock().expect("stats"))
        .collect();
    let events_sent = cluster
        .checkers
        .values()
        .map(|checker| checker.sent_and_acked().0)
        .sum();
    Ok(Report {
        seed,
        trace_hash,
        trace_events,
        virtual_ms,
        events_sent,
        crashes: cluster.crashes,
        bounces: cluster.bounces,
        partitions: cluster.partitions,
        holds: cluster.holds,
        reads_checked: cluster.checkers.values().map(Checker::reads_checked).sum(),
        leaders: cluster.checkers.values().map(Checker::leaders_seen).sum(),
        misroutes_refused: clients.iter().map(|stats| stats.misroutes_refused).sum(),
        clients,
        trace: lines,
    })
}

/// Steps the simulation through the safety and liveness phases.
fn drive(
    sim: &mut ::turmoil::Sim<'_>,
    cluster: &mut Cluster,
    rng: &mut StdRng,
    now_us: &AtomicU64,
    draining: &AtomicBool,
) -> Result<(), String> {
    let safety_end = Duration::from_millis(cluster.plan.safety_ms);
    let mut next_fault = Duration::from_millis(
        rng.gen_range(cluster.plan.fault_every_ms.0..=cluster.plan.fault_every_ms.1),
    );
    let mut heals: Vec<(Duration, Heal)> = Vec::new();
    let mut liveness_deadline: Option<Duration> = None;
    let mut last_seen = BTreeMap::new();
    let mut steps = 0u64;
    loop {
        let elapsed = sim.elapsed();
        now_us.store(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
        let clients_done = sim
            .step()
            .map_err(|error| format!("a host failed: {error}"))?;
        steps += 1;
        if steps.is_multiple_of(SAMPLE_EVERY_STEPS) {
            cluster.sample(&mut last_seen);
        }
        if let Some(message) = cluster.violation() {
            return Err(message);
        }
        let elapsed = sim.elapsed();
        // Heal what is due (in the order the faults were made).
        let mut index = 0;
        while index < heals.len() {
            if heals[index].0 > elapsed {
                index += 1;
                continue;
            }
            let (_, heal) = heals.remove(index);
            heal_one(sim, cluster, heal);
        }
        if liveness_deadline.is_none() && elapsed >= next_fault && elapsed < safety_end {
            inject_fault(sim, cluster, rng, &mut heals);
            next_fault = elapsed
                + Duration::from_millis(
                    rng.gen_range(cluster.plan.fault_every_ms.0..=cluster.plan.fault_every_ms.1),
                );
        }
        if liveness_deadline.is_none() && elapsed >= safety_end {
            cluster.record("liveness phase: heal everything, restart every node");
            for (_, heal) in std::mem::take(&mut heals) {
                heal_one(sim, cluster, heal);
            }
            sim.set_fail_rate(0.0);
            cluster.fail_rate = 0.0;
            for node in std::mem::take(&mut cluster.down) {
                cluster.record(&format!("restart node {node}"));
                sim.bounce(host(node));
            }
            draining.store(true, Ordering::SeqCst);
            liveness_deadline = Some(elapsed + LIVENESS_BOUND);
        }
        if let Some(deadline) = liveness_deadline {
            if clients_done && cluster.converged() {
                return Ok(());
            }
            if elapsed >= deadline {
                let (sent, acked) = cluster
                    .checkers
                    .values()
                    .map(Checker::sent_and_acked)
                    .fold((0, 0), |(s, a), (s2, a2)| (s + s2, a + a2));
                return Err(format!(
                    "liveness: after {} s of healed cluster, {acked} of {sent} events \
                     acknowledged, clients done: {clients_done}, converged: {}",
                    LIVENESS_BOUND.as_secs(),
                    cluster.converged()
                ));
            }
        }
    }
}

fn heal_one(sim: &mut ::turmoil::Sim<'_>, cluster: &mut Cluster, heal: Heal) {
    match heal {
        Heal::Restart(node) => {
            if cluster.down.remove(&node) {
                cluster.record(&format!("restart node {node}"));
                sim.bounce(host(node));
            }
        }
        Heal::Repair(node) => {
            cluster.record(&format!("repair the links of node {node}"));
            for other in 1..=NODES {
                if other != node {
                    sim.repair(host(node), host(other));
                }
            }
        }
        Heal::Release(a, b) => {
            cluster.record(&format!("release messages between nodes {a} and {b}"));
            sim.release(host(a), host(b));
        }
    }
}

/// One fault of the safety phase, and when it heals.
fn inject_fault(
    sim: &mut ::turmoil::Sim<'_>,
    cluster: &mut Cluster,
    rng: &mut StdRng,
    heals: &mut Vec<(Duration, Heal)>,
) {
    let plan = cluster.plan.clone();
    let nodes: Vec<u64> = (1..=NODES).collect();
    let now = sim.elapsed();
    let roll: f64 = rng.gen();
    // A node, the leader of a group half of the time.
    let group = rng.gen_range(1..=GROUPS);
    let victim = match cluster.leader(group) {
        Some(leader) if rng.gen_bool(0.5) => leader,
        _ => *nodes.choose(rng).expect("nodes"),
    };
    let mut threshold = plan.crash_rate;
    if roll < threshold {
        // At most one node down at a time: the other two keep a quorum.
        if cluster.down.is_empty() {
            cluster.crash(sim, victim, &link_faults(heals, victim));
            cluster.down.insert(victim);
            let downtime = Duration::from_millis(rng.gen_range(20..=1_000));
            heals.push((now + downtime, Heal::Restart(victim)));
        }
        return;
    }
    threshold += plan.bounce_rate;
    if roll < threshold {
        if !cluster.down.contains(&victim) {
            cluster.crash(sim, victim, &link_faults(heals, victim));
            cluster.bounces += 1;
            cluster.record(&format!("restart node {victim} at once (bounce)"));
            sim.bounce(host(victim));
        }
        return;
    }
    threshold += plan.partition_rate;
    if roll < threshold {
        cluster.record(&format!("partition node {victim} from the other nodes"));
        for other in &nodes {
            if *other != victim {
                sim.partition(host(victim), host(*other));
            }
        }
        cluster.partitions += 1;
        let heal_after = Duration::from_millis(rng.gen_range(50..=1_500));
        heals.push((now + heal_after, Heal::Repair(victim)));
        return;
    }
    threshold += plan.hold_rate;
    if roll < threshold {
        let other = *nodes
            .iter()
            .filter(|node| **node != victim)
            .collect::<Vec<_>>()
            .choose(rng)
            .copied()
            .expect("two nodes or more");
        cluster.record(&format!("hold messages between nodes {victim} and {other}"));
        sim.hold(host(victim), host(other));
        cluster.holds += 1;
        let release_after = Duration::from_millis(rng.gen_range(20..=500));
        heals.push((now + release_after, Heal::Release(victim, other)));
    }
}
