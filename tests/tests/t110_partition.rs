//! A real network partition: three `traild` processes, each in a Linux network
//! namespace of its own, joined by a bridge; node 3's link is cut and restored.
//!
//! `partition_minority_stops_acking_majority_goes_on_then_converges`, in steps:
//! 1. skip (print `SKIPPED: ...`, pass) unless root and able to create namespaces,
//!    veth pairs and a bridge; every name carries the run's pid and a random tag, and a
//!    guard kills the nodes and deletes the namespaces and links even on panic;
//! 2. network: a bridge in the root namespace with address `10.a.b.254/24` (a random
//!    free `/24`), namespaces `n1..n3` with `10.a.b.1..3`, so this process's gRPC
//!    clients reach every node directly; each node runs as `ip netns exec NS traild`;
//! 3. start the nodes (node 1's checkpoint key copied to the others),
//!    `ClusterInit{8, 3}`, record 3,000 events of 32 tenants through all three nodes;
//! 4. partition: writers (one per shard) record events through nodes 1 and 2 without
//!    pause; node 3's bridge-side veth goes down. Right after, one batch with an event
//!    of every shard goes to node 1 (its answer time and outcomes are printed), and
//!    inside node 3's namespace `trailctl ingest` sends 40 events to node 3. Checked:
//!    the majority acknowledges events of every shard again within 30 s (the first ack
//!    and the longest wait per shard are printed); the minority client gets no
//!    acknowledgement and gives up (or is stopped after 40 s); node 3's applied indexes
//!    do not move while it is cut off (read with `trailctl status` in its namespace);
//! 5. heal: the link comes up; the writers go on through all three nodes for 5 s; then
//!    events go through node 3 alone, among them the mixed batch's unacknowledged ones
//!    (same ids); all replicas converge within 60 s (every node applied its shard
//!    leader's last index);
//! 6. every replica is read on its own node (`trail-replica-read`), a shard at a time
//!    while the shard holds still: every acknowledged event is there once at its
//!    receipt's seq, seqs are gap-free, the replicas hold the same events and blocks,
//!    and an event the minority client sent is on every replica once or on none.
//!
//! It takes about 50 s in debug on 2 cores. Node logs are `<dir>/node<i>/traild.log`;
//! the directory is kept when the test fails (or with `TRAIL_TEST_KEEP=1`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_stream::StreamExt;
use tonic::transport::Channel;
use trail_node::ledger::routing::shard_for_tenant;
use trail_proto::v1;
use trail_proto::v1::trail_client::TrailClient;
use trail_tests::{binary, event, replica_read};

const NODES: u64 = 3;
const SHARDS: u32 = 8;
const REPLICAS: u32 = 3;
/// The cut-off node.
const MINORITY_NODE: u64 = 3;
/// Every node has its own namespace, so all use the same ports.
const GRPC_PORT: u16 = 7400;
const HTTP_PORT: u16 = 7401;
const TENANTS_PER_SHARD: usize = 4;
const INGEST_EVENTS: usize = 3_000;
const INGEST_BATCH_EVENTS: usize = 100;
const INGEST_PRODUCERS: usize = 3;
/// Events of each probe tenant (one per shard) in one round of the writer.
const WRITER_EVENTS_PER_TENANT: usize = 2;
const MINORITY_EVENTS_PER_SHARD: usize = 5;
/// Deadline of one RPC from this process.
const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// A batch not acknowledged in full within this fails the test.
const BATCH_RETRY_TIMEOUT: Duration = Duration::from_secs(60);
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const CLUSTER_INIT_TIMEOUT: Duration = Duration::from_secs(60);
const LEADERS_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for node 3 to lead a data shard (its preferred ones come back
/// within a 10 s rebalancing round), so the partition cuts off a leader.
const MINORITY_LEADS_WAIT: Duration = Duration::from_secs(15);
/// The partition lasts at least this long.
const PARTITION_MIN: Duration = Duration::from_secs(15);
/// Every shard acknowledges through the majority again within this after the cut
/// (an election takes 1.5-3 s, plus client retries and a stale forward's deadline).
const MAJORITY_ACK_AFTER_PARTITION_MAX: Duration = Duration::from_secs(30);
/// The minority client's deadline per RPC attempt (it tries 10 times with backoff).
const MINORITY_CLIENT_RPC_TIMEOUT_S: u32 = 2;
/// The minority client is stopped after this.
const MINORITY_CLIENT_MAX: Duration = Duration::from_secs(40);
/// Node 3's applied indexes are read this long after the cut and again before the heal.
const MINORITY_SETTLE: Duration = Duration::from_secs(3);
const TRAILCTL_STATUS_TIMEOUT: Duration = Duration::from_secs(20);
/// The writer goes on through all three nodes for this long after the heal.
const HEALED_WRITE: Duration = Duration::from_secs(5);
/// A node answers a batch within this even when part of it goes to an unreachable
/// leader (it gives up forwarding after 30 s).
const MIXED_BATCH_ANSWER_MAX: Duration = Duration::from_secs(40);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts to read a shard's replicas while the shard is still.
const STILL_READ_ATTEMPTS: usize = 40;
const TAIL_PAGE_EVENTS: u32 = 1_000;
/// Problems listed in a failure message at most.
const PROBLEMS_MAX: usize = 30;
/// Tries at finding a `/24` the root namespace does not use.
const SUBNET_TRIES_MAX: usize = 20;

/// What a receipt said about an event.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Acked {
    tenant: String,
    stream: String,
    seq: u64,
    leaf_hash: Vec<u8>,
}

type AckedMap = HashMap<String, Acked>;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partition_minority_stops_acking_majority_goes_on_then_converges() {
    if !is_root() {
        println!("SKIPPED: t110_partition needs root (network namespaces, veth, bridge)");
        return;
    }
    let traild = binary("traild");
    let trailctl = binary("trailctl");
    let started = Instant::now();
    let log = |what: &str| eprintln!("[{:>6.1} s] {what}", started.elapsed().as_secs_f64());

    let mut lab = match Lab::create() {
        Ok(lab) => lab,
        Err(error) => {
            println!("SKIPPED: cannot build the test network: {error}");
            return;
        }
    };
    log(&format!(
        "network {}.0/24 (bridge {}, namespaces {:?}); data and logs in {}",
        lab.net.subnet,
        lab.net.bridge,
        lab.net.namespaces,
        lab.dir().display()
    ));

    // Step 3: start, initialize, ingest.
    lab.start_nodes(&traild).await;
    log("3 nodes serve");
    let map = lab.init().await;
    assert_eq!((map.shards, map.replicas), (SHARDS, REPLICAS));
    lab.wait_leaders(&[1, 2, 3], LEADERS_TIMEOUT).await;
    log("cluster initialized; every shard has a leader all nodes know");

    let tenants = tenants_by_shard();
    let retries = Retries::default();
    let all_clients = lazy_clients(&lab.endpoints(&[1, 2, 3]), RPC_TIMEOUT);
    let ingesting = Instant::now();
    let mut acked = ingest(&all_clients, &tenants, &retries).await;
    assert_eq!(
        acked.len(),
        INGEST_EVENTS,
        "every ingested event is acknowledged"
    );
    log(&format!(
        "{INGEST_EVENTS} events of {} tenants acknowledged through all nodes in {:.1} s",
        tenants.values().map(Vec::len).sum::<usize>(),
        ingesting.elapsed().as_secs_f64()
    ));

    let waiting = Instant::now();
    let mut minority_led = led_by(&lab, MINORITY_NODE).await;
    while minority_led.is_empty() && waiting.elapsed() < MINORITY_LEADS_WAIT {
        tokio::time::sleep(Duration::from_millis(500)).await;
        minority_led = led_by(&lab, MINORITY_NODE).await;
    }
    log(&format!(
        "node 3 leads data shards {minority_led:?} at the cut (waited {:.1} s for one)",
        waiting.elapsed().as_secs_f64()
    ));

    // Step 4: writers (one per shard) run through nodes 1 and 2, then node 3 is cut off.
    let probes: Vec<String> = (1..=SHARDS)
        .map(|shard| tenants[&shard][0].clone())
        .collect();
    let majority_clients = lazy_clients(&lab.endpoints(&[1, 2]), RPC_TIMEOUT);
    let during = Arc::new(Writer::default());
    let writers_started = Instant::now();
    let during_tasks = spawn_writers(&majority_clients, &probes, "during", &during);
    during
        .wait_every_shard_after(writers_started, BATCH_RETRY_TIMEOUT)
        .await;
    lab.net.set_link(MINORITY_NODE, false);
    let cut_at = Instant::now();
    log("partition: node 3's link is down");

    // One batch with events of every shard through node 1, sent right after the cut:
    // how long the node holds the answer for the part it forwards to the lost leader.
    let mixed_events: Vec<v1::Event> = probes
        .iter()
        .map(|tenant| event(tenant, &format!("mixed-{tenant}")))
        .collect();
    let mixed_batch = tokio::spawn(timed_record_batch(
        lazy_clients(&lab.endpoints(&[1]), MIXED_BATCH_ANSWER_MAX)
            .pop()
            .expect("one client"),
        mixed_events.clone(),
    ));

    let minority_events = minority_events(&tenants);
    let minority_file = lab.dir().join("minority.jsonl");
    write_jsonl(&minority_file, &minority_events);
    let minority_client = tokio::spawn(run_minority_client(
        trailctl.clone(),
        lab.net.namespace(MINORITY_NODE).to_string(),
        lab.node(MINORITY_NODE).endpoint(),
        minority_file,
        lab.dir().to_path_buf(),
    ));

    tokio::time::sleep(MINORITY_SETTLE).await;
    let frozen_before = minority_status(&lab, &trailctl).await;
    let first_acks = during
        .wait_every_shard_after(cut_at, MAJORITY_ACK_AFTER_PARTITION_MAX)
        .await;
    let delays: Vec<String> = first_acks
        .iter()
        .map(|(shard, at)| {
            let marker = if minority_led.contains(shard) {
                " (led by node 3)"
            } else {
                ""
            };
            format!(
                "shard {shard}{marker}: {:.2} s",
                at.duration_since(cut_at).as_secs_f64()
            )
        })
        .collect();
    log(&format!(
        "majority acknowledges every shard again; first ack after the cut: {}",
        delays.join(", ")
    ));

    let minority = minority_client.await.expect("minority client task");
    log(&format!(
        "minority client (trailctl ingest inside node 3's namespace) ended after {:.1} s: \
         {}; stdout: {:?}; stderr (last line): {:?}",
        minority.elapsed.as_secs_f64(),
        minority.ending,
        minority.stdout.trim(),
        minority.stderr.trim().lines().last().unwrap_or("")
    ));
    let (mixed_elapsed, mixed_result) = mixed_batch.await.expect("mixed batch task");
    let mut mixed_pending: Vec<v1::Event> = Vec::new();
    let mut mixed_receipts: Vec<(v1::Event, v1::Receipt)> = Vec::new();
    let mixed_summary = match mixed_result {
        Err(status) => {
            mixed_pending = mixed_events.clone();
            format!(
                "failed as a whole: {:?}: {}",
                status.code(),
                status.message()
            )
        }
        Ok(response) => {
            assert_eq!(response.outcomes.len(), mixed_events.len(), "mixed batch");
            let mut codes: BTreeMap<String, usize> = BTreeMap::new();
            let mut first_error = String::new();
            for (sent, outcome) in mixed_events.iter().zip(response.outcomes) {
                match outcome.outcome {
                    Some(v1::record_outcome::Outcome::Receipt(receipt)) => {
                        *codes.entry("receipt".to_string()).or_default() += 1;
                        mixed_receipts.push((sent.clone(), receipt));
                    }
                    Some(v1::record_outcome::Outcome::Error(error)) => {
                        assert!(
                            error.code == "UNAVAILABLE" || error.code == "RESOURCE_EXHAUSTED",
                            "mixed batch: {} refused for good: {error:?}",
                            sent.event_id
                        );
                        if !codes.contains_key(&error.code) {
                            first_error = format!("; first refusal: {}", error.message);
                        }
                        *codes.entry(error.code).or_default() += 1;
                        mixed_pending.push(sent.clone());
                    }
                    None => panic!("mixed batch: no outcome for {}", sent.event_id),
                }
            }
            format!("outcomes {codes:?}{first_error}")
        }
    };
    log(&format!(
        "a batch of all shards sent through node 1 right after the cut was answered in \
         {:.1} s: {mixed_summary}",
        mixed_elapsed.as_secs_f64()
    ));
    assert!(
        mixed_elapsed < MIXED_BATCH_ANSWER_MAX,
        "node 1 did not answer a batch within {MIXED_BATCH_ANSWER_MAX:?} of the cut"
    );
    tokio::time::sleep(PARTITION_MIN.saturating_sub(cut_at.elapsed())).await;
    let frozen_after = minority_status(&lab, &trailctl).await;
    check_minority_client(&minority, minority_events.len());
    check_frozen(&frozen_before, &frozen_after);
    log(&format!(
        "node 3 applied nothing while cut off: (shard, role, last log, applied) {:?} -> {:?}",
        frozen_before, frozen_after
    ));

    // Step 5: heal, write through all three nodes, converge.
    lab.net.set_link(MINORITY_NODE, true);
    let healed_at = Instant::now();
    during.stop.store(true, Ordering::SeqCst);
    let during_rounds = join_writers(during_tasks, "during the partition").await;
    log(&format!(
        "healed after {:.1} s of partition; the writers did {during_rounds} rounds meanwhile; \
         longest wait for an ack per shard while cut: {}",
        healed_at.duration_since(cut_at).as_secs_f64(),
        during.describe_gaps(cut_at, healed_at, &minority_led)
    ));
    let healed = Arc::new(Writer::default());
    let healed_tasks = spawn_writers(&all_clients, &probes, "healed", &healed);
    tokio::time::sleep(HEALED_WRITE).await;
    healed.stop.store(true, Ordering::SeqCst);
    let healed_rounds = join_writers(healed_tasks, "after the heal").await;
    let stopped_at = Instant::now();
    log(&format!(
        "after the heal: {healed_rounds} rounds through all nodes; first ack through node 3 \
         {}; longest wait for an ack per shard: {}",
        healed
            .first_ack_through(2)
            .map_or("none".to_string(), |at| format!(
                "{:.1} s after the heal",
                at.duration_since(healed_at).as_secs_f64()
            )),
        healed.describe_gaps(healed_at, stopped_at, &minority_led)
    ));

    // Node 3 serves again, and what the mixed batch left unacknowledged is recorded once.
    let node_3_alone = lazy_clients(&lab.endpoints(&[MINORITY_NODE]), RPC_TIMEOUT);
    let resending = Instant::now();
    let mut resent_events = mixed_pending.clone();
    for tenant in &probes {
        resent_events.push(event(tenant, &format!("node3-after-heal-{tenant}")));
    }
    let resent_receipts = record_until_acked(
        &node_3_alone,
        &mut 0,
        &resent_events,
        &retries,
        |_, _, _| {},
    )
    .await
    .unwrap_or_else(|error| panic!("through node 3 after the heal: {error}"));
    log(&format!(
        "through node 3 alone after the heal: {} events acknowledged in {:.1} s (the {} \
         the mixed batch left unacknowledged among them, {} as duplicates)",
        resent_events.len(),
        resending.elapsed().as_secs_f64(),
        mixed_pending.len(),
        resent_receipts
            .iter()
            .filter(|receipt| receipt.deduplicated)
            .count()
    ));
    remember(&mut acked, &resent_events, &resent_receipts)
        .unwrap_or_else(|error| panic!("{error}"));
    for (sent, receipt) in &mixed_receipts {
        remember(
            &mut acked,
            std::slice::from_ref(sent),
            std::slice::from_ref(receipt),
        )
        .unwrap_or_else(|error| panic!("{error}"));
    }
    for writer in [&during, &healed] {
        let writer_acked = writer.acked.lock().expect("acked lock");
        for (event_id, receipt) in writer_acked.iter() {
            assert!(
                acked.insert(event_id.clone(), receipt.clone()).is_none(),
                "{event_id} acknowledged by two writers"
            );
        }
    }
    log(&format!(
        "{} events acknowledged in all; writers retried (count, first message) by reason: \
         during {:#?}, after the heal {:#?}",
        acked.len(),
        during.retries.by_reason.lock().expect("retries lock"),
        healed.retries.by_reason.lock().expect("retries lock")
    ));

    lab.wait_converged(CONVERGE_TIMEOUT).await;
    log(&format!(
        "replicas converged {:.1} s after the heal",
        healed_at.elapsed().as_secs_f64()
    ));

    // Step 6: compare the replicas.
    let checking = Instant::now();
    let tried: HashSet<String> = minority_events
        .iter()
        .map(|event| event.event_id.clone())
        .collect();
    let found = check_replicas(&lab, &tenants, &acked, &tried).await;
    log(&format!(
        "replicas compared in {:.1} s: {} acknowledged events once on each of 3 nodes; of \
         the {} minority events, {} are on every replica and the rest on none",
        checking.elapsed().as_secs_f64(),
        found.acked,
        tried.len(),
        found.tried
    ));
    log(&format!("total {:.1} s", started.elapsed().as_secs_f64()));
}

// --- The network ---

/// Namespaces, veth pairs and a bridge, deleted on drop (whatever was created).
struct Net {
    /// `10.a.b`: node `i` is `10.a.b.i`, the bridge `10.a.b.254`.
    subnet: String,
    bridge: String,
    bridge_created: bool,
    /// Node `i`'s namespace at `i - 1`.
    namespaces: Vec<String>,
    namespaces_created: Vec<String>,
    /// The bridge-side end of node `i`'s veth pair at `i - 1`.
    host_veths: Vec<String>,
    host_veths_created: Vec<String>,
}

impl Net {
    fn create() -> Result<Net, String> {
        let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        let pid = std::process::id();
        let subnet = free_subnet()?;
        let mut net = Net {
            subnet,
            bridge: format!("trb{tag}"),
            bridge_created: false,
            namespaces: (1..=NODES)
                .map(|node_id| format!("trail-{pid}-{tag}-n{node_id}"))
                .collect(),
            namespaces_created: Vec::new(),
            host_veths: (1..=NODES)
                .map(|node_id| format!("trh{tag}{node_id}"))
                .collect(),
            host_veths_created: Vec::new(),
        };
        ip(&["link", "add", &net.bridge, "type", "bridge"])?;
        net.bridge_created = true;
        let bridge_address = format!("{}.254/24", net.subnet);
        ip(&["addr", "add", &bridge_address, "dev", &net.bridge])?;
        ip(&["link", "set", &net.bridge, "up"])?;
        for node_id in 1..=NODES {
            let index = node_id as usize - 1;
            let namespace = net.namespaces[index].clone();
            let host_veth = net.host_veths[index].clone();
            let inner_veth = format!("trn{tag}{node_id}");
            ip(&["netns", "add", &namespace])?;
            net.namespaces_created.push(namespace.clone());
            ip(&[
                "link",
                "add",
                &host_veth,
                "type",
                "veth",
                "peer",
                "name",
                &inner_veth,
            ])?;
            net.host_veths_created.push(host_veth.clone());
            ip(&["link", "set", &host_veth, "master", &net.bridge])?;
            ip(&["link", "set", &host_veth, "up"])?;
            ip(&["link", "set", &inner_veth, "netns", &namespace])?;
            ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
            let address = format!("{}/24", net.address(node_id));
            ip(&[
                "-n",
                &namespace,
                "addr",
                "add",
                &address,
                "dev",
                &inner_veth,
            ])?;
            ip(&["-n", &namespace, "link", "set", &inner_veth, "up"])?;
        }
        Ok(net)
    }

    fn address(&self, node_id: u64) -> String {
        format!("{}.{node_id}", self.subnet)
    }

    fn namespace(&self, node_id: u64) -> &str {
        &self.namespaces[node_id as usize - 1]
    }

    /// Node `node_id`'s port on the bridge up or down: down, it reaches nobody and
    /// nobody reaches it (packets are dropped, as on a cut cable).
    fn set_link(&self, node_id: u64, up: bool) {
        let host_veth = &self.host_veths[node_id as usize - 1];
        let state = if up { "up" } else { "down" };
        ip(&["link", "set", host_veth, state])
            .unwrap_or_else(|error| panic!("link of node {node_id} {state}: {error}"));
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end inside it and so its peer; the
        // explicit deletes cover a namespace still held open by a process.
        for namespace in &self.namespaces_created {
            if let Err(error) = ip(&["netns", "delete", namespace]) {
                eprintln!("cleanup: {error}");
            }
        }
        for host_veth in &self.host_veths_created {
            let _ = ip(&["link", "delete", host_veth]);
        }
        if self.bridge_created {
            if let Err(error) = ip(&["link", "delete", &self.bridge]) {
                eprintln!("cleanup: {error}");
            }
        }
    }
}

/// Runs `ip ARGS`; the error names the command and what `ip` said.
fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("ip {}: {error}", args.join(" ")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {} {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// A `10.a.b` with `a` in 200..250 that no address or route of the root namespace
/// mentions.
fn free_subnet() -> Result<String, String> {
    let mut used = String::new();
    for args in [["-4", "addr"], ["-4", "route"]] {
        let output = Command::new("ip")
            .args(args)
            .output()
            .map_err(|error| format!("ip {}: {error}", args.join(" ")))?;
        used.push_str(&String::from_utf8_lossy(&output.stdout));
    }
    for _ in 0..SUBNET_TRIES_MAX {
        let random = rand::random::<u32>();
        let subnet = format!("10.{}.{}", 200 + random % 50, (random >> 8) % 256);
        if !used.contains(&format!("{subnet}.")) {
            return Ok(subnet);
        }
    }
    Err(format!(
        "no free 10.x.y.0/24 found in {SUBNET_TRIES_MAX} tries"
    ))
}

fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .is_some_and(|effective| effective == "0")
}

// --- The nodes ---

/// One `traild` run as `ip netns exec NS traild ...`; `ip` execs `traild`, so the child's
/// pid is the node's.
struct NsNode {
    node_id: u64,
    namespace: String,
    address: String,
    data_dir: PathBuf,
    child: Option<Child>,
}

impl NsNode {
    fn endpoint(&self) -> String {
        format!("http://{}:{GRPC_PORT}", self.address)
    }

    fn spawn(&mut self, traild: &Path, peers: &str) {
        assert!(self.child.is_none(), "node {} runs already", self.node_id);
        std::fs::create_dir_all(&self.data_dir).expect("create the data directory");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.join("traild.log"))
            .expect("open traild.log");
        let stderr = log.try_clone().expect("clone the log file handle");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.namespace])
            .arg(traild)
            .arg("--node-id")
            .arg(self.node_id.to_string())
            .arg("--peers")
            .arg(peers)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--grpc-addr")
            .arg(format!("{}:{GRPC_PORT}", self.address))
            .arg("--http-addr")
            .arg(format!("{}:{HTTP_PORT}", self.address))
            .env(
                "TRAIL_LOG",
                std::env::var("TRAIL_TEST_LOG").unwrap_or_else(|_| "info".to_string()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .expect("start ip netns exec traild");
        self.child = Some(child);
    }

    async fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "node {} exited during startup: {status} (log: {})",
                        self.node_id,
                        self.data_dir.join("traild.log").display()
                    );
                }
            }
            if status_of(&self.endpoint()).await.is_ok() {
                return;
            }
            assert!(
                started.elapsed() < STARTUP_TIMEOUT,
                "node {} did not serve within {STARTUP_TIMEOUT:?}",
                self.node_id
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The network, the nodes in it and their data directory. Drop kills the nodes first,
/// then deletes the network; the directory is kept when the test panics.
struct Lab {
    nodes: Vec<NsNode>,
    net: Net,
    dir: Option<tempfile::TempDir>,
}

impl Lab {
    fn create() -> Result<Lab, String> {
        let net = Net::create()?;
        let dir = tempfile::Builder::new()
            .prefix("trail-partition-")
            .tempdir()
            .map_err(|error| format!("temporary directory: {error}"))?;
        let nodes = (1..=NODES)
            .map(|node_id| NsNode {
                node_id,
                namespace: net.namespace(node_id).to_string(),
                address: net.address(node_id),
                data_dir: dir.path().join(format!("node{node_id}")),
                child: None,
            })
            .collect();
        Ok(Lab {
            nodes,
            net,
            dir: Some(dir),
        })
    }

    fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("the directory lives as long as the lab")
            .path()
    }

    fn node(&self, node_id: u64) -> &NsNode {
        &self.nodes[node_id as usize - 1]
    }

    fn endpoints(&self, node_ids: &[u64]) -> Vec<String> {
        node_ids
            .iter()
            .map(|&node_id| self.node(node_id).endpoint())
            .collect()
    }

    /// Node 1 first; the others with a copy of its checkpoint key.
    async fn start_nodes(&mut self, traild: &Path) {
        let peers: Vec<String> = self
            .nodes
            .iter()
            .map(|node| format!("{}={}:{GRPC_PORT}", node.node_id, node.address))
            .collect();
        let peers = peers.join(",");
        self.nodes[0].spawn(traild, &peers);
        self.nodes[0].wait_ready().await;
        let key = self.nodes[0].data_dir.join("node.key");
        assert!(key.exists(), "node 1 serves but has no {}", key.display());
        for node in &mut self.nodes[1..] {
            std::fs::create_dir_all(&node.data_dir).expect("create the data directory");
            std::fs::copy(&key, node.data_dir.join("node.key")).expect("copy node.key");
            node.spawn(traild, &peers);
        }
        for node in &mut self.nodes[1..] {
            node.wait_ready().await;
        }
    }

    /// `ClusterInit` through node 1, retried while the groups elect.
    async fn init(&self) -> v1::ClusterMap {
        let started = Instant::now();
        let mut client = lazy_clients(&self.endpoints(&[1]), CLUSTER_INIT_TIMEOUT)
            .pop()
            .expect("one client");
        let mut last_error = String::new();
        while started.elapsed() < CLUSTER_INIT_TIMEOUT {
            let request = v1::ClusterInitRequest {
                shards: SHARDS,
                replicas: REPLICAS,
            };
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
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        panic!("cluster init did not succeed within {CLUSTER_INIT_TIMEOUT:?}: {last_error}");
    }

    /// The `Status` of each of `node_ids` that answers.
    async fn statuses(&self, node_ids: &[u64]) -> Vec<(u64, Result<v1::StatusResponse, String>)> {
        let mut statuses = Vec::with_capacity(node_ids.len());
        for &node_id in node_ids {
            statuses.push((node_id, status_of(&self.node(node_id).endpoint()).await));
        }
        statuses
    }

    /// Every node's `Status`, or a description of who did not answer.
    async fn all_statuses(&self) -> Result<Vec<(u64, v1::StatusResponse)>, String> {
        let mut answered = Vec::new();
        for (node_id, status) in self.statuses(&[1, 2, 3]).await {
            match status {
                Ok(status) => answered.push((node_id, status)),
                Err(error) => return Err(format!("node {node_id}: {error}")),
            }
        }
        Ok(answered)
    }

    /// Waits until each data shard has one leader among `node_ids` that all of them
    /// name.
    async fn wait_leaders(&self, node_ids: &[u64], timeout: Duration) {
        let started = Instant::now();
        loop {
            let mut missing = Vec::new();
            let statuses: Vec<(u64, v1::StatusResponse)> = self
                .statuses(node_ids)
                .await
                .into_iter()
                .filter_map(|(node_id, status)| status.ok().map(|status| (node_id, status)))
                .collect();
            for shard in 1..=SHARDS {
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
                let agreed = statuses.len() == node_ids.len()
                    && leaders.len() == 1
                    && statuses.iter().all(|(_, status)| {
                        status
                            .shards
                            .iter()
                            .any(|s| s.shard_id == shard && s.leader_node_id == leaders[0])
                    });
                if !agreed {
                    missing.push(shard);
                }
            }
            if missing.is_empty() {
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "shards {missing:?} have no leader nodes {node_ids:?} agree on after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until, for every shard, the leader reports no replica behind and every
    /// node's replica applied the leader's last log index.
    async fn wait_converged(&self, timeout: Duration) {
        let started = Instant::now();
        loop {
            let lagging = match self.all_statuses().await {
                Ok(statuses) => lagging_shards(&statuses),
                Err(error) => vec![error],
            };
            if lagging.is_empty() {
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "replicas did not converge within {timeout:?} of the heal: {lagging:#?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The (node, last applied, last log) index of `shard` on each node.
    async fn shard_indexes(&self, shard: u32) -> Vec<(u64, u64, u64)> {
        let statuses = self
            .all_statuses()
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
}

impl Drop for Lab {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        let keep = std::thread::panicking()
            || std::env::var("TRAIL_TEST_KEEP").is_ok_and(|value| value == "1");
        if keep {
            if let Some(dir) = self.dir.take() {
                let path = dir.keep();
                eprintln!(
                    "partition test data and logs kept in {} (node<i>/traild.log)",
                    path.display()
                );
            }
        }
        // Then `net` is dropped: the namespaces, veths and bridge are deleted.
    }
}

async fn status_of(endpoint: &str) -> Result<v1::StatusResponse, String> {
    let mut client = lazy_clients(&[endpoint.to_string()], RPC_TIMEOUT)
        .pop()
        .expect("one client");
    client
        .status(v1::StatusRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))
}

/// The data shards `node_id` says it leads.
async fn led_by(lab: &Lab, node_id: u64) -> Vec<u32> {
    match status_of(&lab.node(node_id).endpoint()).await {
        Ok(status) => status
            .shards
            .iter()
            .filter(|shard| shard.shard_id != 0 && shard.role == "leader")
            .map(|shard| shard.shard_id)
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// gRPC clients of `endpoints` that connect on first use.
fn lazy_clients(endpoints: &[String], timeout: Duration) -> Vec<TrailClient<Channel>> {
    endpoints
        .iter()
        .map(|endpoint| {
            let channel = Channel::from_shared(endpoint.clone())
                .expect("valid endpoint")
                .connect_timeout(Duration::from_secs(2))
                .timeout(timeout)
                .connect_lazy();
            TrailClient::new(channel)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20)
        })
        .collect()
}

// --- Producing ---

/// `TENANTS_PER_SHARD` tenants on each data shard.
fn tenants_by_shard() -> BTreeMap<u32, Vec<String>> {
    let mut by_shard: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let mut number = 0;
    while by_shard.len() < SHARDS as usize
        || by_shard
            .values()
            .any(|tenants| tenants.len() < TENANTS_PER_SHARD)
    {
        number += 1;
        let tenant = format!("part_{number:04}");
        let tenants = by_shard
            .entry(shard_for_tenant(&tenant, SHARDS))
            .or_default();
        if tenants.len() < TENANTS_PER_SHARD {
            tenants.push(tenant);
        }
    }
    by_shard
}

/// Outcomes retried, by reason: how many, and the first message.
#[derive(Default)]
struct Retries {
    by_reason: Mutex<BTreeMap<String, (u64, String)>>,
}

impl Retries {
    fn add(&self, reason: &str, count: u64, message: &str) {
        let mut by_reason = self.by_reason.lock().expect("retries lock");
        let entry = by_reason
            .entry(reason.to_string())
            .or_insert_with(|| (0, message.to_string()));
        entry.0 += count;
    }
}

/// Records `INGEST_EVENTS` events round-robin over all tenants, `INGEST_PRODUCERS`
/// batches in flight, each producer starting on another node.
async fn ingest(
    clients: &[TrailClient<Channel>],
    tenants: &BTreeMap<u32, Vec<String>>,
    retries: &Retries,
) -> AckedMap {
    let all: Vec<&String> = tenants.values().flatten().collect();
    let events: Vec<v1::Event> = (0..INGEST_EVENTS)
        .map(|index| event(all[index % all.len()], &format!("ingest-{index}")))
        .collect();
    let batches: Vec<&[v1::Event]> = events.chunks(INGEST_BATCH_EVENTS).collect();
    let mut acked = AckedMap::new();
    for (round, wave) in batches.chunks(INGEST_PRODUCERS).enumerate() {
        let mut sending = Vec::new();
        for (producer, batch) in wave.iter().enumerate() {
            let mut next_node = round + producer;
            sending.push(async move {
                let receipts =
                    record_until_acked(clients, &mut next_node, batch, retries, |_, _, _| {}).await;
                (batch, receipts)
            });
        }
        for (batch, receipts) in futures_join_all(sending).await {
            let receipts = receipts.unwrap_or_else(|error| panic!("ingest: {error}"));
            remember(&mut acked, batch, &receipts).unwrap_or_else(|error| panic!("{error}"));
        }
    }
    acked
}

/// Awaits all `futures` concurrently, results in order (no `futures` crate here).
async fn futures_join_all<F>(futures: Vec<F>) -> Vec<F::Output>
where
    F: std::future::Future,
{
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|context| {
        let mut pending = false;
        for (future, output) in pinned.iter_mut().zip(outputs.iter_mut()) {
            if output.is_some() {
                continue;
            }
            match future.as_mut().poll(context) {
                std::task::Poll::Ready(value) => *output = Some(value),
                std::task::Poll::Pending => pending = true,
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|output| output.expect("every future finished"))
        .collect()
}

/// Sends `events` until each is acknowledged, the events not acknowledged again with
/// the same ids, to the next node each time; `on_receipt(event index, client index,
/// receipt)` hears of each receipt as it arrives. Returns the receipts in `events`
/// order. Fails on an outcome that is not retryable, or after [`BATCH_RETRY_TIMEOUT`].
async fn record_until_acked<F>(
    clients: &[TrailClient<Channel>],
    next_node: &mut usize,
    events: &[v1::Event],
    retries: &Retries,
    mut on_receipt: F,
) -> Result<Vec<v1::Receipt>, String>
where
    F: FnMut(usize, usize, &v1::Receipt),
{
    let started = Instant::now();
    let mut receipts: Vec<Option<v1::Receipt>> = vec![None; events.len()];
    let mut pending: Vec<usize> = (0..events.len()).collect();
    let mut last_problem = String::new();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let node_index = *next_node % clients.len();
        *next_node += 1;
        let mut client = clients[node_index].clone();
        let request = v1::RecordBatchRequest {
            events: pending.iter().map(|&index| events[index].clone()).collect(),
        };
        let mut wait = Duration::from_millis(100);
        match client.record_batch(request).await {
            Ok(response) => {
                let response = response.into_inner();
                if response.outcomes.len() != pending.len() {
                    return Err(format!(
                        "client {node_index} answered {} outcomes for {} events",
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
                                    "client {node_index}: receipt {receipt:?} for event {} of {}",
                                    sent.event_id, sent.tenant_id
                                ));
                            }
                            on_receipt(index, node_index, &receipt);
                            receipts[index] = Some(receipt);
                        }
                        Some(v1::record_outcome::Outcome::Error(error))
                            if error.code == "UNAVAILABLE"
                                || error.code == "RESOURCE_EXHAUSTED" =>
                        {
                            last_problem = format!(
                                "client {node_index}: {} {}: {}",
                                sent.event_id, error.code, error.message
                            );
                            retries.add(&error.code, 1, &last_problem);
                            still_pending.push(index);
                        }
                        other => {
                            return Err(format!(
                                "client {node_index}: event {} of {} was refused: {other:?}",
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
                return Err(format!("client {node_index}: batch refused: {status}"));
            }
            Err(status) => {
                last_problem = format!(
                    "client {node_index}: RecordBatch {:?}: {}",
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

/// Adds receipts to `acked`; an event acknowledged before must get the same receipt.
fn remember(
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

/// The writers' acknowledgements, and their stop switch.
#[derive(Default)]
struct Writer {
    acked: Mutex<AckedMap>,
    /// (shard, client index, when) of each receipt.
    ack_times: Mutex<Vec<(u32, usize, Instant)>>,
    stop: AtomicBool,
    retries: Retries,
}

impl Writer {
    /// Waits until every data shard had a receipt after `since`; returns the first
    /// receipt's time of each. Fails after `timeout`, naming the shards still silent.
    async fn wait_every_shard_after(
        &self,
        since: Instant,
        timeout: Duration,
    ) -> BTreeMap<u32, Instant> {
        loop {
            let mut first: BTreeMap<u32, Instant> = BTreeMap::new();
            for &(shard, _, at) in self.ack_times.lock().expect("ack times lock").iter() {
                if at > since {
                    let entry = first.entry(shard).or_insert(at);
                    *entry = (*entry).min(at);
                }
            }
            if first.len() == SHARDS as usize {
                return first;
            }
            let silent: Vec<u32> = (1..=SHARDS)
                .filter(|shard| !first.contains_key(shard))
                .collect();
            assert!(
                since.elapsed() < timeout,
                "the writers acknowledged nothing of shards {silent:?} within {timeout:?}; \
                 retried (count, first message) by reason: {:#?}",
                self.retries.by_reason.lock().expect("retries lock")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// When a receipt first came through client `client_index`.
    fn first_ack_through(&self, client_index: usize) -> Option<Instant> {
        self.ack_times
            .lock()
            .expect("ack times lock")
            .iter()
            .filter(|(_, index, _)| *index == client_index)
            .map(|(_, _, at)| *at)
            .min()
    }

    /// Per shard, the longest time in `from..to` without a receipt.
    fn describe_gaps(&self, from: Instant, to: Instant, minority_led: &[u32]) -> String {
        let ack_times = self.ack_times.lock().expect("ack times lock");
        let mut described = Vec::new();
        for shard in 1..=SHARDS {
            let mut times: Vec<Instant> = ack_times
                .iter()
                .filter(|(s, _, at)| *s == shard && *at >= from && *at <= to)
                .map(|(_, _, at)| *at)
                .collect();
            times.sort();
            let mut previous = from;
            let mut longest = Duration::ZERO;
            for at in times.iter().copied().chain([to]) {
                longest = longest.max(at.duration_since(previous));
                previous = at;
            }
            let marker = if minority_led.contains(&shard) {
                " (led by node 3)"
            } else {
                ""
            };
            described.push(format!(
                "shard {shard}{marker}: {:.2} s",
                longest.as_secs_f64()
            ));
        }
        described.join(", ")
    }
}

/// One writer task per probe tenant (one per shard), each starting on another node.
fn spawn_writers(
    clients: &[TrailClient<Channel>],
    probes: &[String],
    prefix: &str,
    writer: &Arc<Writer>,
) -> Vec<tokio::task::JoinHandle<Result<u64, String>>> {
    probes
        .iter()
        .enumerate()
        .map(|(index, tenant)| {
            tokio::spawn(write_rounds(
                clients.to_vec(),
                index,
                tenant.clone(),
                prefix.to_string(),
                writer.clone(),
            ))
        })
        .collect()
}

/// Waits for stopped writers; the rounds they did in all.
async fn join_writers(tasks: Vec<tokio::task::JoinHandle<Result<u64, String>>>, when: &str) -> u64 {
    let mut rounds = 0;
    for task in tasks {
        rounds += task
            .await
            .expect("writer task")
            .unwrap_or_else(|error| panic!("writer {when}: {error}"));
    }
    rounds
}

/// Rounds of `WRITER_EVENTS_PER_TENANT` events of `tenant` until stopped, each round
/// acknowledged in full before the next; returns the rounds done.
async fn write_rounds(
    clients: Vec<TrailClient<Channel>>,
    first_node: usize,
    tenant: String,
    prefix: String,
    writer: Arc<Writer>,
) -> Result<u64, String> {
    let mut next_node = first_node;
    let mut round: u64 = 0;
    let shard = shard_for_tenant(&tenant, SHARDS);
    while !writer.stop.load(Ordering::SeqCst) {
        let events: Vec<v1::Event> = (0..WRITER_EVENTS_PER_TENANT)
            .map(|index| event(&tenant, &format!("{prefix}-{round}-{tenant}-{index}")))
            .collect();
        let receipts = record_until_acked(
            &clients,
            &mut next_node,
            &events,
            &writer.retries,
            |_, client_index, _| {
                writer.ack_times.lock().expect("ack times lock").push((
                    shard,
                    client_index,
                    Instant::now(),
                ));
            },
        )
        .await?;
        remember(
            &mut writer.acked.lock().expect("acked lock"),
            &events,
            &receipts,
        )?;
        round += 1;
    }
    Ok(round)
}

/// One `RecordBatch`, and how long its answer took.
async fn timed_record_batch(
    mut client: TrailClient<Channel>,
    events: Vec<v1::Event>,
) -> (Duration, Result<v1::RecordBatchResponse, tonic::Status>) {
    let started = Instant::now();
    let result = client
        .record_batch(v1::RecordBatchRequest { events })
        .await
        .map(tonic::Response::into_inner);
    (started.elapsed(), result)
}

// --- The minority side ---

/// `MINORITY_EVENTS_PER_SHARD` events of the first tenant of each shard.
fn minority_events(tenants: &BTreeMap<u32, Vec<String>>) -> Vec<v1::Event> {
    let mut events = Vec::new();
    for shard_tenants in tenants.values() {
        let tenant = &shard_tenants[0];
        for index in 0..MINORITY_EVENTS_PER_SHARD {
            events.push(event(tenant, &format!("minority-{tenant}-{index}")));
        }
    }
    events
}

fn write_jsonl(path: &Path, events: &[v1::Event]) {
    let mut text = String::new();
    for event in events {
        text.push_str(&trail_client::json::event_to_json(event).to_string());
        text.push('\n');
    }
    std::fs::write(path, text).expect("write the minority's events");
}

/// How the minority client ended.
struct MinorityRun {
    elapsed: Duration,
    /// `None`: stopped after `MINORITY_CLIENT_MAX`.
    exit_code: Option<i32>,
    ending: String,
    stdout: String,
    stderr: String,
}

/// `trailctl ingest` of `file` to node 3, inside node 3's namespace; stopped (by its
/// pid) after `MINORITY_CLIENT_MAX`.
async fn run_minority_client(
    trailctl: PathBuf,
    namespace: String,
    endpoint: String,
    file: PathBuf,
    dir: PathBuf,
) -> MinorityRun {
    let started = Instant::now();
    let mut child = tokio::process::Command::new("ip")
        .args(["netns", "exec", &namespace])
        .arg(&trailctl)
        .arg("--endpoint")
        .arg(&endpoint)
        .arg("--rpc-timeout-s")
        .arg(MINORITY_CLIENT_RPC_TIMEOUT_S.to_string())
        .args([
            "ingest",
            "--batch-size",
            "10",
            "--concurrency",
            "4",
            "--json",
            "-q",
        ])
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("minority.stdout")).expect("stdout file"))
        .stderr(std::fs::File::create(dir.join("minority.stderr")).expect("stderr file"))
        .kill_on_drop(true)
        .spawn()
        .expect("start trailctl in node 3's namespace");
    let (exit_code, ending) = match tokio::time::timeout(MINORITY_CLIENT_MAX, child.wait()).await {
        Ok(Ok(status)) => (status.code(), format!("exited with {status}")),
        Ok(Err(error)) => panic!("waiting for the minority client: {error}"),
        Err(_) => {
            let _ = child.kill().await;
            (None, format!("stopped after {MINORITY_CLIENT_MAX:?}"))
        }
    };
    MinorityRun {
        elapsed: started.elapsed(),
        exit_code,
        ending,
        stdout: std::fs::read_to_string(dir.join("minority.stdout")).unwrap_or_default(),
        stderr: std::fs::read_to_string(dir.join("minority.stderr")).unwrap_or_default(),
    }
}

/// The minority client must not have been told of a single recorded event.
fn check_minority_client(run: &MinorityRun, events: usize) {
    assert_ne!(
        run.exit_code,
        Some(0),
        "the minority client succeeded while node 3 was cut off: {}",
        run.stdout
    );
    if let Some(summary) = run.stdout.lines().find(|line| line.starts_with('{')) {
        let summary: serde_json::Value =
            serde_json::from_str(summary).expect("trailctl's JSON summary");
        assert_eq!(
            (
                summary["accepted"].as_u64(),
                summary["deduplicated"].as_u64()
            ),
            (Some(0), Some(0)),
            "node 3 acknowledged events while cut off ({events} sent): {summary}"
        );
    }
}

/// (shard, role, last log index, last applied index) of node 3's shards, read with
/// `trailctl status` inside its namespace.
async fn minority_status(lab: &Lab, trailctl: &Path) -> Vec<(u64, String, u64, u64)> {
    let output = tokio::process::Command::new("ip")
        .args(["netns", "exec", lab.net.namespace(MINORITY_NODE)])
        .arg(trailctl)
        .arg("--endpoint")
        .arg(lab.node(MINORITY_NODE).endpoint())
        .args(["--rpc-timeout-s", "5", "status", "--json"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(TRAILCTL_STATUS_TIMEOUT, output)
        .await
        .unwrap_or_else(|_| {
            panic!("trailctl status of node 3 took over {TRAILCTL_STATUS_TIMEOUT:?}")
        })
        .expect("run trailctl status in node 3's namespace");
    assert!(
        output.status.success(),
        "trailctl status of node 3 while cut off: {} {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let status: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("trailctl status --json");
    let mut shards = Vec::new();
    for shard in status["shards"].as_array().expect("shards in status") {
        shards.push((
            shard["shard_id"].as_u64().expect("shard_id"),
            shard["role"].as_str().unwrap_or_default().to_string(),
            shard["last_log_index"].as_u64().expect("last_log_index"),
            shard["last_applied_index"]
                .as_u64()
                .expect("last_applied_index"),
        ));
    }
    shards.sort();
    shards
}

/// Node 3 commits nothing while cut off: its applied index of every shard is the same.
fn check_frozen(before: &[(u64, String, u64, u64)], after: &[(u64, String, u64, u64)]) {
    let applied = |shards: &[(u64, String, u64, u64)]| -> Vec<(u64, u64)> {
        shards
            .iter()
            .map(|(shard, _, _, applied)| (*shard, *applied))
            .collect()
    };
    assert_eq!(
        applied(before),
        applied(after),
        "node 3 applied entries while cut off (shard, applied): before {before:?}, after {after:?}"
    );
}

// --- Comparing replicas ---

fn lagging_shards(statuses: &[(u64, v1::StatusResponse)]) -> Vec<String> {
    let mut lagging = Vec::new();
    for shard in 0..=SHARDS {
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

/// How many events of each kind were found (once on every replica).
struct Found {
    acked: usize,
    tried: usize,
}

/// Reads every tenant on every node's own replica, a shard at a time while the shard
/// is still, and checks the replicas against each other and against the receipts:
/// an event on a replica is either acknowledged (at its receipt's seq) or one the
/// minority client tried.
async fn check_replicas(
    lab: &Lab,
    tenants: &BTreeMap<u32, Vec<String>>,
    acked: &AckedMap,
    tried: &HashSet<String>,
) -> Found {
    let clients = lazy_clients(&lab.endpoints(&[1, 2, 3]), Duration::from_secs(60));
    let node_ids: Vec<u64> = (1..=NODES).collect();
    let mut problems = Vec::new();
    let mut found: HashMap<String, u64> = HashMap::new();
    let mut tried_found = 0;
    for (&shard, shard_tenants) in tenants {
        let tenant_set: BTreeSet<String> = shard_tenants.iter().cloned().collect();
        let streams = read_shard_still(lab, &clients, shard, &tenant_set).await;
        for (tenant, replicas) in tenant_set.iter().zip(streams) {
            tried_found += compare_tenant(
                tenant,
                &node_ids,
                &replicas,
                acked,
                tried,
                &mut found,
                &mut problems,
            );
        }
    }
    for (event_id, expected) in acked {
        match found.get(event_id) {
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
    Found {
        acked: found.len(),
        tried: tried_found,
    }
}

/// Each tenant's stream on each node, read while `shard` does not move.
async fn read_shard_still(
    lab: &Lab,
    clients: &[TrailClient<Channel>],
    shard: u32,
    tenants: &BTreeSet<String>,
) -> Vec<Vec<ReplicaStream>> {
    let mut last_indexes = Vec::new();
    for _ in 0..STILL_READ_ATTEMPTS {
        let before = lab.shard_indexes(shard).await;
        let same = before
            .iter()
            .all(|(_, applied, last)| (*applied, *last) == (before[0].1, before[0].2));
        if same {
            let mut streams = Vec::with_capacity(tenants.len());
            for tenant in tenants {
                let mut replicas = Vec::with_capacity(clients.len());
                for client in clients {
                    replicas.push(read_replica_stream(client.clone(), tenant).await);
                }
                streams.push(replicas);
            }
            let after = lab.shard_indexes(shard).await;
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
        "shard {shard} did not hold still on all replicas for a read in \
         {STILL_READ_ATTEMPTS} attempts: (node, applied, last log) {last_indexes:?}"
    );
}

/// A tenant's events and sealed blocks on the asked node's own replica.
async fn read_replica_stream(mut client: TrailClient<Channel>, tenant: &str) -> ReplicaStream {
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

/// Compares one tenant's replicas; returns how many minority events it holds.
fn compare_tenant(
    tenant: &str,
    node_ids: &[u64],
    replicas: &[ReplicaStream],
    acked: &AckedMap,
    tried: &HashSet<String>,
    found: &mut HashMap<String, u64>,
    problems: &mut Vec<String>,
) -> usize {
    let first = &replicas[0];
    for (node_id, replica) in node_ids.iter().zip(replicas).skip(1) {
        if replica.rows != first.rows {
            let difference = first
                .rows
                .iter()
                .zip(&replica.rows)
                .find(|(a, b)| a != b)
                .map(|(a, b)| format!("node 1 has {a:?}, node {node_id} has {b:?}"))
                .unwrap_or_default();
            problems.push(format!(
                "{tenant}: node {node_id} holds {} events, node 1 {}; first difference: \
                 {difference}",
                replica.rows.len(),
                first.rows.len()
            ));
        }
        if replica.blocks != first.blocks {
            problems.push(format!(
                "{tenant}: node {node_id} has {} sealed blocks, node 1 {}; first different \
                 block index: {:?}",
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
    let mut tried_here = 0;
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
        match acked.get(&row.event_id) {
            None if tried.contains(&row.event_id) => tried_here += 1,
            None => problems.push(format!(
                "{tenant}: {} at seq {} was never sent by this test's acknowledged writers \
                 nor by the minority client",
                row.event_id, row.seq
            )),
            Some(expected) => {
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
                *found.entry(row.event_id.clone()).or_default() += 1;
            }
        }
    }
    tried_here
}
