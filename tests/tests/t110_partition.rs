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

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use trail_node::ledger::routing::shard_for_tenant;
use trail_proto::v1;
use trail_tests::cluster::{
    record_until_acked, remember, AckedMap, NodeClient, Retries, BATCH_RETRY_TIMEOUT,
};
use trail_tests::{binary, event, events_of, run_checked, Cluster, GrpcClient, NodeSpec};

const NODES: u64 = 3;
const SHARDS: u32 = 8;
const REPLICAS: u32 = 3;
/// The cut-off node.
const MINORITY_NODE: u64 = 3;
/// Every node has its own namespace, so all use the same ports.
const GRPC_PORT: u16 = 7400;
const HTTP_PORT: u16 = 7401;
const PEER_PORT: u16 = 7402;
const TENANTS_PER_SHARD: usize = 4;
const INGEST_EVENTS: usize = 3_000;
const INGEST_BATCH_EVENTS: usize = 100;
const INGEST_PRODUCERS: usize = 3;
/// Events of each probe tenant (one per shard) in one round of the writer.
const WRITER_EVENTS_PER_TENANT: usize = 2;
const MINORITY_EVENTS_PER_SHARD: usize = 5;
/// Deadline of one RPC from this process.
const RPC_TIMEOUT: Duration = Duration::from_secs(5);
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
/// Tries at finding a `/24` the root namespace does not use.
const SUBNET_TRIES_MAX: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partition_minority_stops_acking_majority_goes_on_then_converges() {
    if !is_root() {
        println!("SKIPPED: t110_partition needs root (network namespaces, veth, bridge)");
        return;
    }
    binary("traild");
    binary("trailctl");
    let started = Instant::now();
    let log = |what: &str| eprintln!("[{:>6.1} s] {what}", started.elapsed().as_secs_f64());

    // Dropped after `cluster` (declared later): the nodes are killed first.
    let net = match Net::create() {
        Ok(net) => net,
        Err(error) => {
            println!("SKIPPED: cannot build the test network: {error}");
            return;
        }
    };
    log(&format!(
        "network {}.0/24 (bridge {}, namespaces {:?})",
        net.subnet, net.bridge, net.namespaces
    ));

    // Step 3: start, initialize, ingest.
    let specs = (1..=NODES).map(|node_id| net.node_spec(node_id)).collect();
    let cluster = Cluster::start_on("trail-partition-", specs).await;
    log(&format!(
        "3 nodes serve; data and logs in {}",
        cluster.dir().display()
    ));
    let map = cluster.init(SHARDS, REPLICAS).await;
    assert_eq!((map.shards, map.replicas), (SHARDS, REPLICAS));
    cluster.wait_leaders(SHARDS, LEADERS_TIMEOUT).await;
    log("cluster initialized; every shard has a leader all nodes know");

    let tenants = tenants_by_shard();
    let retries = Retries::default();
    let all_clients = cluster.clients(&[1, 2, 3], RPC_TIMEOUT);
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
    let mut minority_led = cluster.led_by(MINORITY_NODE).await;
    while minority_led.is_empty() && waiting.elapsed() < MINORITY_LEADS_WAIT {
        tokio::time::sleep(Duration::from_millis(500)).await;
        minority_led = cluster.led_by(MINORITY_NODE).await;
    }
    log(&format!(
        "node 3 leads data shards {minority_led:?} at the cut (waited {:.1} s for one)",
        waiting.elapsed().as_secs_f64()
    ));

    // Step 4: writers (one per shard) run through nodes 1 and 2, then node 3 is cut off.
    let probes: Vec<String> = (1..=SHARDS)
        .map(|shard| tenants[&shard][0].clone())
        .collect();
    let majority_clients = cluster.clients(&[1, 2], RPC_TIMEOUT);
    let during = Arc::new(Writer::default());
    let writers_started = Instant::now();
    let during_tasks = spawn_writers(&majority_clients, &probes, "during", &during);
    during
        .wait_every_shard_after(writers_started, BATCH_RETRY_TIMEOUT)
        .await;
    net.set_link(MINORITY_NODE, false);
    let cut_at = Instant::now();
    log("partition: node 3's link is down");

    // One batch with events of every shard through node 1, sent right after the cut:
    // how long the node holds the answer for the part it forwards to the lost leader.
    let mixed_events: Vec<v1::Event> = probes
        .iter()
        .map(|tenant| event(tenant, &format!("mixed-{tenant}")))
        .collect();
    let mixed_batch = tokio::spawn(timed_record_batch(
        cluster
            .clients(&[1], MIXED_BATCH_ANSWER_MAX)
            .pop()
            .expect("one client")
            .client,
        mixed_events.clone(),
    ));

    let minority_events = minority_events(&tenants);
    let minority_file = cluster.dir().join("minority.jsonl");
    write_jsonl(&minority_file, &minority_events);
    let minority_client = tokio::spawn(run_minority_client(
        cluster.node(MINORITY_NODE).trailctl(&[
            "--rpc-timeout-s",
            &MINORITY_CLIENT_RPC_TIMEOUT_S.to_string(),
            "ingest",
            "--batch-size",
            "10",
            "--concurrency",
            "4",
            "--json",
            "-q",
            &minority_file.display().to_string(),
        ]),
        cluster.dir().to_path_buf(),
    ));

    tokio::time::sleep(MINORITY_SETTLE).await;
    let frozen_before = minority_status(&cluster).await;
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
    let frozen_after = minority_status(&cluster).await;
    check_minority_client(&minority, minority_events.len());
    check_frozen(&frozen_before, &frozen_after);
    log(&format!(
        "node 3 applied nothing while cut off: (shard, role, last log, applied) {:?} -> {:?}",
        frozen_before, frozen_after
    ));

    // Step 5: heal, write through all three nodes, converge.
    net.set_link(MINORITY_NODE, true);
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
            .first_ack_through(MINORITY_NODE)
            .map_or("none".to_string(), |at| format!(
                "{:.1} s after the heal",
                at.duration_since(healed_at).as_secs_f64()
            )),
        healed.describe_gaps(healed_at, stopped_at, &minority_led)
    ));

    // Node 3 serves again, and what the mixed batch left unacknowledged is recorded once.
    let node_3_alone = cluster.clients(&[MINORITY_NODE], RPC_TIMEOUT);
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
        during.retries.by_reason(),
        healed.retries.by_reason()
    ));

    cluster.wait_converged(SHARDS, CONVERGE_TIMEOUT).await;
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
    let all_tenants: BTreeSet<String> = tenants.values().flatten().cloned().collect();
    let found = cluster
        .check_replicas(SHARDS, &all_tenants, &acked, &tried, STILL_READ_ATTEMPTS)
        .await;
    log(&format!(
        "replicas compared in {:.1} s: {} acknowledged events once on each of 3 nodes; of \
         the {} minority events, {} are on every replica and the rest on none",
        checking.elapsed().as_secs_f64(),
        found.acked_found,
        tried.len(),
        found.tried_found
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

    /// Node `node_id` run as `ip netns exec NS traild ...` on its address (`ip` execs
    /// `traild`, so the child's pid is the node's); every node has its own namespace,
    /// so all use the same ports.
    fn node_spec(&self, node_id: u64) -> NodeSpec {
        NodeSpec {
            host: self.address(node_id),
            grpc_port: GRPC_PORT,
            http_port: HTTP_PORT,
            peer_port: PEER_PORT,
            command_prefix: ["ip", "netns", "exec", self.namespace(node_id)]
                .map(String::from)
                .to_vec(),
            // The nodes listen on the test bridge's addresses, a private network of
            // this host: plaintext is what the test means (no TLS yet).
            args: vec!["--insecure-plaintext".to_string()],
        }
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

/// Records `INGEST_EVENTS` events round-robin over all tenants, `INGEST_PRODUCERS`
/// batches in flight, each producer starting on another node.
async fn ingest(
    clients: &[NodeClient],
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
/// The writers' acknowledgements, and their stop switch.
#[derive(Default)]
struct Writer {
    acked: Mutex<AckedMap>,
    /// (shard, node id, when) of each receipt.
    ack_times: Mutex<Vec<(u32, u64, Instant)>>,
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
                self.retries.by_reason()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// When a receipt first came through node `node_id`.
    fn first_ack_through(&self, node_id: u64) -> Option<Instant> {
        self.ack_times
            .lock()
            .expect("ack times lock")
            .iter()
            .filter(|(_, through, _)| *through == node_id)
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
    clients: &[NodeClient],
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
    clients: Vec<NodeClient>,
    first_node: usize,
    tenant: String,
    prefix: String,
    writer: Arc<Writer>,
) -> Result<u64, String> {
    let mut next_node = first_node;
    let mut round: u64 = 0;
    let shard = shard_for_tenant(&tenant, SHARDS);
    while !writer.stop.load(Ordering::SeqCst) {
        let events = events_of(
            &tenant,
            &format!("{prefix}-{round}"),
            WRITER_EVENTS_PER_TENANT,
        );
        let receipts = record_until_acked(
            &clients,
            &mut next_node,
            &events,
            &writer.retries,
            |_, node_id, _| {
                writer.ack_times.lock().expect("ack times lock").push((
                    shard,
                    node_id,
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
    mut client: GrpcClient,
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
    tenants
        .values()
        .flat_map(|shard_tenants| {
            events_of(&shard_tenants[0], "minority", MINORITY_EVENTS_PER_SHARD)
        })
        .collect()
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

/// Runs `command` (`trailctl ingest` to node 3, inside node 3's namespace) with its
/// output in `dir`; stopped (by its pid) after `MINORITY_CLIENT_MAX`.
async fn run_minority_client(command: Command, dir: PathBuf) -> MinorityRun {
    let started = Instant::now();
    let mut child = tokio::process::Command::from(command)
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
async fn minority_status(cluster: &Cluster) -> Vec<(u64, String, u64, u64)> {
    let command =
        cluster
            .node(MINORITY_NODE)
            .trailctl(&["--rpc-timeout-s", "5", "status", "--json"]);
    let stdout = run_checked(command, TRAILCTL_STATUS_TIMEOUT).await;
    let status: serde_json::Value = serde_json::from_str(&stdout).expect("trailctl status --json");
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
