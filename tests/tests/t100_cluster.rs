//! Cluster acceptance: three `traild` processes, 16 data shards x 3 replicas, `kill -9`
//! of a node and of a shard leader under load, and writes that need a majority.
//!
//! `cluster_survives_kill9_of_a_node_and_of_a_leader`, in steps:
//! 1. start three nodes sharing node 1's checkpoint key, `ClusterInit{16, 3}`;
//! 2. six producers send batches of 100 workload events (300 tenants, `ten_0001` with
//!    ~30% of them and `ten_0002` with ~5%) through all three nodes in turn; what is not
//!    acknowledged is sent again with the same event ids (a batch gives up and fails
//!    the test after 60 s); every receipt is remembered;
//! 3. mid-stream: `kill -9` node 3, keep ingesting, restart it; then `kill -9` the node
//!    (1 or 2) leading the heavy tenant's shard (or another shard), keep ingesting,
//!    restart it. The producers are held back at each step, so both kills land while
//!    events are in flight;
//! 4. wait until every shard's replicas applied their leader's whole log (the default
//!    run snapshots every 32 entries and leaders purge their logs, so node 3 catches up
//!    by installing snapshots: checked from its log);
//! 5. compare the replicas, each read on its own node (`trail-replica-read`, no
//!    forwarding), a shard at a time while the shard's applied index is the same on all
//!    three before and after the reads: every acknowledged event is there once, at its
//!    receipt's seq with its leaf hash; each tenant's seqs are 1..=n with the same
//!    events on all three; the sealed blocks (headers, hashes) are the same; resending
//!    acknowledged events through each node answers the original receipts;
//! 6. `trailctl verify` of four tenants (the heavy one included) against each node, with
//!    the cluster's key pinned.
//!
//! N = 20,000 events by default; `TRAIL_CLUSTER_EVENTS` and `TRAIL_CLUSTER_SEED` change
//! it. The 500,000-event variant is ignored by default:
//!
//!     cargo build --release -p trail-node --bin traild -p trail-client --bin trailctl
//!     TRAIL_CLUSTER_EVENTS=500000 cargo test --release -p trail-tests --test t100_cluster -- --ignored --nocapture
//!
//! `writes_need_a_majority`, in steps:
//! 0. REST reads of 16 tenants (one per shard) through every node: the nodes that do
//!    not lead a tenant's shard forward to the one that does;
//! 1. start and initialize the cluster; record events of 16 tenants (one per shard);
//! 2. `kill -9` node 3: writes through nodes 1 and 2 are acknowledged and every
//!    acknowledged event reads back through both;
//! 3. `kill -9` node 2: a batch, a single `Record` and a `Tail` through node 1 answer
//!    UNAVAILABLE within 40 s (the times are printed) and nothing is acknowledged;
//! 4. restart node 2: the same events (same ids) are acknowledged, once each; restart
//!    node 3; every replica holds every acknowledged event at its seq (as in step 5
//!    above).
//!
//! The tests run one at a time (a lock), since each takes the machine's cores. Node logs
//! are `<dir>/node<i>/traild.log`; the directory is kept when a test fails.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use trail_client::workload::Workload;
use trail_node::ledger::routing::shard_for_tenant;
use trail_proto::v1;
use trail_tests::cluster::{
    record_until_acked, remember, tenants_per_shard, Acked, AckedMap, NodeClient, Retries,
    BATCH_RETRY_TIMEOUT, TAIL_PAGE_EVENTS,
};
use trail_tests::{event, events_of, run_checked, Cluster, GrpcClient, Traild};

const NODES: usize = 3;
const SHARDS: u32 = 16;
const REPLICAS: u32 = 3;
const EVENTS_DEFAULT: u64 = 20_000;
const EVENTS_LARGE_DEFAULT: u64 = 500_000;
const SEED_DEFAULT: u64 = 100;
/// The workload's 1,000 tenants are folded onto this many.
const TENANTS: u64 = 300;
const HEAVY_TENANT: &str = "ten_0001";
const PRODUCERS: usize = 6;
const BATCH_EVENTS: usize = 100;
/// Deadline of one RPC from a producer (nodes give up forwarding after 30 s).
const RPC_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait for the acknowledged count to reach the next step (more for large
/// runs: see [`step_timeout`]).
const STEP_TIMEOUT_MIN: Duration = Duration::from_secs(120);
/// A killed node stays down at least this long, while events are acknowledged.
const DOWN_MIN: Duration = Duration::from_secs(3);
/// How long every shard may take to have a leader all nodes agree on.
const LEADERS_TIMEOUT: Duration = Duration::from_secs(30);
/// With two of three nodes down, a write must fail within this.
const NO_MAJORITY_ANSWER_MAX: Duration = Duration::from_secs(40);
/// Attempts to read a shard's replicas while the shard is still.
const STILL_READ_ATTEMPTS: usize = 20;
const VERIFY_TIMEOUT: Duration = Duration::from_secs(300);

/// Raft entries between snapshots (`--snapshot-logs-since-last`): small runs snapshot
/// often, so restarted nodes also catch up by installing one.
const SNAPSHOT_INTERVAL_SMALL_RUN: u64 = 32;
const SNAPSHOT_INTERVAL_LARGE_RUN: u64 = 2_000;

/// One cluster at a time on this machine.
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_survives_kill9_of_a_node_and_of_a_leader() {
    survive_kills(env_u64("TRAIL_CLUSTER_EVENTS", EVENTS_DEFAULT)).await;
}

/// The same with 500,000 events (see the file's doc comment for the command).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "large: 500,000 events; run in release with -- --ignored"]
async fn cluster_survives_kill9_of_a_node_and_of_a_leader_large() {
    survive_kills(env_u64("TRAIL_CLUSTER_EVENTS", EVENTS_LARGE_DEFAULT)).await;
}

async fn survive_kills(total: u64) {
    let _one_at_a_time = ONE_CLUSTER_AT_A_TIME.lock().await;
    let seed = env_u64("TRAIL_CLUSTER_SEED", SEED_DEFAULT);
    let started = Instant::now();
    let log = |what: &str| eprintln!("[{:>6.1} s] {what}", started.elapsed().as_secs_f64());
    log(&format!(
        "{total} events, seed {seed} (TRAIL_CLUSTER_EVENTS, TRAIL_CLUSTER_SEED)"
    ));

    // Small runs build snapshots often, so the restarted nodes catch up from a
    // snapshot (the leaders purge their logs after each one) as well as from the log.
    let snapshot_interval = if total <= EVENTS_DEFAULT {
        SNAPSHOT_INTERVAL_SMALL_RUN.to_string()
    } else {
        SNAPSHOT_INTERVAL_LARGE_RUN.to_string()
    };
    let mut cluster =
        Cluster::start_with_args(NODES, &["--snapshot-logs-since-last", &snapshot_interval]).await;
    log(&format!("3 nodes started in {}", cluster.dir().display()));
    let map = cluster.init(SHARDS, REPLICAS).await;
    assert_eq!((map.shards, map.replicas), (SHARDS, REPLICAS));
    assert_eq!(map.nodes.len(), NODES);
    for (node_id, status) in cluster.statuses().await {
        assert_eq!(
            status.verifier_key, map.verifier_key,
            "node {node_id} signs with another key than the cluster map's"
        );
    }
    log("cluster initialized");
    cluster.wait_leaders(SHARDS, LEADERS_TIMEOUT).await;
    log("every shard has a leader all nodes know");

    let feed = Arc::new(Feed::new(seed, total));
    let run = Arc::new(Run::default());
    let mut producers = Vec::new();
    for producer in 0..PRODUCERS {
        let clients = cluster.clients(&cluster.node_ids(), RPC_TIMEOUT);
        let feed = feed.clone();
        let run = run.clone();
        producers.push(tokio::spawn(async move {
            let result = produce(producer, clients, &feed, &run).await;
            if let Err(error) = &result {
                run.fail(format!("producer {producer}: {error}"));
            }
            result
        }));
    }

    // Kill node 3 mid-stream; restart it after events were acknowledged without it.
    feed.open_to(total * 30 / 100);
    run.wait_acked(total * 15 / 100, step_timeout(total)).await;
    let killed_at = Instant::now();
    let acked_at_kill = run.acked_count();
    cluster.node_mut(3).kill9();
    log(&format!("kill -9 node 3 at {acked_at_kill} acknowledged"));
    feed.open_to(total * 50 / 100);
    run.wait_acked(total * 35 / 100, step_timeout(total)).await;
    tokio::time::sleep(DOWN_MIN.saturating_sub(killed_at.elapsed())).await;
    let restarting = Instant::now();
    cluster.node_mut(3).spawn().await;
    log(&format!(
        "node 3 restarted ({} acknowledged while it was down; restart took {:.1} s)",
        run.acked_count() - acked_at_kill,
        restarting.elapsed().as_secs_f64()
    ));

    // Kill the leader of a shard (node 1 or 2) mid-stream, and restart it.
    feed.open_to(total * 75 / 100);
    run.wait_acked(total * 55 / 100, step_timeout(total)).await;
    let (leader, shard) = leader_to_kill(&cluster).await;
    let killed_at = Instant::now();
    let acked_at_kill = run.acked_count();
    cluster.node_mut(leader).kill9();
    log(&format!(
        "kill -9 node {leader}, leader of shard {shard} (heavy tenant's: {}), at \
         {acked_at_kill} acknowledged",
        shard_for_tenant(HEAVY_TENANT, SHARDS)
    ));
    feed.open_to(total * 90 / 100);
    run.wait_acked(total * 75 / 100, step_timeout(total)).await;
    tokio::time::sleep(DOWN_MIN.saturating_sub(killed_at.elapsed())).await;
    let restarting = Instant::now();
    cluster.node_mut(leader).spawn().await;
    log(&format!(
        "node {leader} restarted ({} acknowledged while it was down; restart took {:.1} s)",
        run.acked_count() - acked_at_kill,
        restarting.elapsed().as_secs_f64()
    ));
    feed.open_to(total);

    for producer in producers {
        let result = producer.await.expect("producer task");
        if let Err(error) = result {
            panic!("{error}");
        }
    }
    let acked = std::mem::take(&mut *run.acked.lock().expect("acked lock"));
    log(&format!(
        "ingest done: {} events acknowledged; retried (count, first message) by reason: {:#?}",
        acked.len(),
        run.retries.by_reason()
    ));
    assert_eq!(
        acked.len() as u64,
        total,
        "every event is acknowledged once"
    );

    let converging = Instant::now();
    cluster
        .wait_converged(SHARDS, converge_timeout(total))
        .await;
    log(&format!(
        "replicas converged in {:.1} s",
        converging.elapsed().as_secs_f64()
    ));
    let installs: Vec<(u64, usize)> = (1..=NODES as u64)
        .map(|node_id| (node_id, snapshot_installs(cluster.node(node_id))))
        .collect();
    log(&format!("snapshots installed (node, count): {installs:?}"));
    if total <= EVENTS_DEFAULT {
        assert!(
            installs[NODES - 1].1 > 0,
            "node 3 was down for thousands of events with snapshots every \
             {SNAPSHOT_INTERVAL_SMALL_RUN} entries, yet caught up without installing one"
        );
    }

    let checking = Instant::now();
    let per_tenant = check_replicas(&cluster, &acked).await;
    log(&format!(
        "replicas compared in {:.1} s: {} tenants, {} events on each of 3 nodes; heaviest: {:?}",
        checking.elapsed().as_secs_f64(),
        per_tenant.len(),
        per_tenant.values().sum::<u64>(),
        heaviest(&per_tenant, 3)
    ));

    check_dedup(&cluster, &acked).await;
    log("resent events answered their original receipts through every node");

    let verifying = Instant::now();
    let mut tenants: Vec<String> = heaviest(&per_tenant, 2)
        .into_iter()
        .map(|(tenant, _)| tenant)
        .collect();
    let lightest = per_tenant
        .iter()
        .min_by_key(|(_, count)| **count)
        .map(|(tenant, _)| tenant.clone())
        .expect("tenants");
    tenants.push(lightest);
    let in_killed_shard = per_tenant
        .keys()
        .find(|tenant| shard_for_tenant(tenant, SHARDS) == shard && !tenants.contains(tenant))
        .cloned();
    tenants.extend(in_killed_shard);
    for node_id in 1..=NODES as u64 {
        let printed = trailctl_verify(cluster.node(node_id), &map.verifier_key, &tenants).await;
        log(&format!(
            "trailctl verify against node {node_id}:\n{}",
            printed.trim_end()
        ));
    }
    log(&format!(
        "trailctl verify {tenants:?} passed against every node in {:.1} s",
        verifying.elapsed().as_secs_f64()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_need_a_majority() {
    let _one_at_a_time = ONE_CLUSTER_AT_A_TIME.lock().await;
    let started = Instant::now();
    let log = |what: &str| eprintln!("[{:>6.1} s] {what}", started.elapsed().as_secs_f64());
    let mut cluster = Cluster::start(NODES).await;
    cluster.init(SHARDS, REPLICAS).await;
    cluster.wait_leaders(SHARDS, LEADERS_TIMEOUT).await;
    log(&format!(
        "cluster of 3 initialized in {}",
        cluster.dir().display()
    ));

    let tenants = tenants_per_shard("maj", SHARDS, 1);
    let clients = cluster.clients(&cluster.node_ids(), RPC_TIMEOUT);
    let retries = Retries::default();
    let mut acked = AckedMap::new();
    let batch = |round: &str, per_tenant: usize| -> Vec<v1::Event> {
        tenants
            .iter()
            .flat_map(|tenant| events_of(tenant, round, per_tenant))
            .collect()
    };

    check_rest_through_every_node(&cluster, &clients, &retries).await;
    log("REST: every node answered every tenant's queries (forwarded to the leaders)");

    // All three up.
    let events = batch("a", 5);
    let receipts = record_until_acked(&clients, &mut 0, &events, &retries, |_, _, _| {})
        .await
        .unwrap_or_else(|error| panic!("with 3 nodes up: {error}"));
    remember(&mut acked, &events, &receipts).expect("first receipts");

    // One node down: writes and reads still succeed through the two others.
    cluster.node_mut(3).kill9();
    let killed_at = Instant::now();
    let two = &clients[..2];
    let events = batch("b", 5);
    let receipts = record_until_acked(two, &mut 0, &events, &retries, |_, _, _| {})
        .await
        .unwrap_or_else(|error| panic!("with node 3 down: {error}"));
    remember(&mut acked, &events, &receipts).expect("receipts with node 3 down");
    log(&format!(
        "node 3 down: {} events acknowledged through nodes 1 and 2, {:.1} s after the kill",
        events.len(),
        killed_at.elapsed().as_secs_f64()
    ));
    for (index, client) in two.iter().enumerate() {
        let problems = read_back(client.client.clone(), &tenants, &acked).await;
        assert!(
            problems.is_empty(),
            "node 3 down: reading through node {}: {problems:#?}",
            index + 1
        );
    }
    log("node 3 down: every acknowledged event reads back through nodes 1 and 2");

    // Two nodes down: node 1 answers UNAVAILABLE within a bound, and acknowledges none.
    cluster.node_mut(2).kill9();
    let patient = cluster
        .clients(&[1], Duration::from_secs(90))
        .pop()
        .expect("one client")
        .client;
    let lonely_events = batch("c", 1);
    let single = event(&tenants[0], "c-single");
    let (batch_result, record_result, tail_result) = tokio::join!(
        timed({
            let mut client = patient.clone();
            let events = lonely_events.clone();
            async move { client.record_batch(v1::RecordBatchRequest { events }).await }
        }),
        timed({
            let mut client = patient.clone();
            let event = single.clone();
            async move {
                client
                    .record(v1::RecordRequest { event: Some(event) })
                    .await
            }
        }),
        timed({
            let mut client = patient.clone();
            let tenant = tenants[1].clone();
            async move {
                client
                    .tail(v1::TailRequest {
                        tenant_id: tenant,
                        after_seq: 0,
                        limit: 10,
                        stream: String::new(),
                        ..v1::TailRequest::default()
                    })
                    .await
            }
        }),
    );
    let (batch_elapsed, batch_response) = batch_result;
    let (record_elapsed, record_response) = record_result;
    let (tail_elapsed, tail_response) = tail_result;
    log(&format!(
        "nodes 2 and 3 down: node 1 answered RecordBatch in {:.1} s, Record in {:.1} s, \
         Tail in {:.1} s",
        batch_elapsed.as_secs_f64(),
        record_elapsed.as_secs_f64(),
        tail_elapsed.as_secs_f64()
    ));
    let response = batch_response
        .unwrap_or_else(|status| panic!("two nodes down: RecordBatch failed as a whole: {status}"))
        .into_inner();
    assert!(
        batch_elapsed < NO_MAJORITY_ANSWER_MAX,
        "two nodes down: RecordBatch took {batch_elapsed:?}"
    );
    assert_eq!(response.outcomes.len(), lonely_events.len());
    for (event, outcome) in lonely_events.iter().zip(&response.outcomes) {
        match &outcome.outcome {
            Some(v1::record_outcome::Outcome::Error(error)) => assert_eq!(
                error.code,
                "UNAVAILABLE",
                "two nodes down: {} of tenant {} (shard {}): {error:?}",
                event.event_id,
                event.tenant_id,
                shard_for_tenant(&event.tenant_id, SHARDS)
            ),
            other => panic!(
                "two nodes down: {} of tenant {} (shard {}) was not refused: {other:?}",
                event.event_id,
                event.tenant_id,
                shard_for_tenant(&event.tenant_id, SHARDS)
            ),
        }
    }
    match record_response {
        Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable, "Record: {status}"),
        Ok(response) => panic!("two nodes down: Record was acknowledged: {response:?}"),
    }
    assert!(
        record_elapsed < NO_MAJORITY_ANSWER_MAX,
        "Record took {record_elapsed:?}"
    );
    match tail_response {
        Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable, "Tail: {status}"),
        Ok(response) => panic!(
            "two nodes down: a Tail through node 1 passed the read barrier without a \
             majority: {response:?}"
        ),
    }
    assert!(
        tail_elapsed < NO_MAJORITY_ANSWER_MAX,
        "Tail took {tail_elapsed:?}"
    );
    // An eventual read needs no majority: node 1's replica answers what it applied.
    let page = patient
        .clone()
        .tail(v1::TailRequest {
            tenant_id: tenants[1].clone(),
            limit: 10,
            consistency: v1::ReadConsistency::Eventual as i32,
            ..v1::TailRequest::default()
        })
        .await
        .unwrap_or_else(|status| panic!("two nodes down: an eventual Tail failed: {status}"))
        .into_inner();
    assert!(
        !page.events.is_empty(),
        "two nodes down: eventual Tail empty"
    );
    for stored in &page.events {
        let event_id = &stored.event.as_ref().expect("event").event_id;
        let ack = acked
            .get(event_id)
            .unwrap_or_else(|| panic!("eventual Tail: {event_id} was never acknowledged"));
        assert_eq!((ack.seq, &ack.leaf_hash), (stored.seq, &stored.leaf_hash));
    }
    log(&format!(
        "nodes 2 and 3 down: an eventual Tail through node 1 answered {} events from its replica",
        page.events.len()
    ));

    // Node 2 back: the same events are acknowledged, once each.
    let restarting = Instant::now();
    cluster.node_mut(2).spawn().await;
    let mut retried = lonely_events.clone();
    retried.push(single);
    let receipts = record_until_acked(two, &mut 0, &retried, &retries, |_, _, _| {})
        .await
        .unwrap_or_else(|error| panic!("after node 2 restarted: {error}"));
    remember(&mut acked, &retried, &receipts).expect("receipts after node 2 restarted");
    let deduplicated = receipts
        .iter()
        .filter(|receipt| receipt.deduplicated)
        .count();
    log(&format!(
        "node 2 restarted: the {} refused events acknowledged {:.1} s later ({deduplicated} \
         had been committed meanwhile and came back as duplicates)",
        retried.len(),
        restarting.elapsed().as_secs_f64()
    ));
    for (index, client) in two.iter().enumerate() {
        let problems = read_back(client.client.clone(), &tenants, &acked).await;
        assert!(
            problems.is_empty(),
            "after node 2 restarted: reading through node {}: {problems:#?}",
            index + 1
        );
    }

    // Node 3 back: every replica holds everything acknowledged.
    cluster.node_mut(3).spawn().await;
    cluster
        .wait_converged(SHARDS, Duration::from_secs(60))
        .await;
    let per_tenant = check_replicas(&cluster, &acked).await;
    assert_eq!(per_tenant.values().sum::<u64>(), acked.len() as u64);
    log(&format!(
        "node 3 restarted: {} events on every replica; retried (count, first message) by \
         reason: {:#?}",
        acked.len(),
        retries.by_reason()
    ));

    // Last, since reads append audit records to the tenants' logs.
    let clients = cluster.clients(&cluster.node_ids(), RPC_TIMEOUT);
    check_eventual_reads(&clients, &tenants, &acked).await;
    log("eventual reads: every node answered from its own replica, cursors crossed nodes");
}

/// Eventual reads through every node, each answered by the node's own replica (no
/// `trail-leader` in the answer: nothing forwarded): a tenant's `auth.login` events,
/// paged two at a time with each page from the next node and the cursor the previous
/// node sealed, are exactly the acknowledged ones; every node counts them alike.
/// Called once every replica applied everything acknowledged.
async fn check_eventual_reads(clients: &[NodeClient], tenants: &[String], acked: &AckedMap) {
    let eventual = v1::ReadConsistency::Eventual as i32;
    let filter = v1::QueryFilter {
        action: "auth.login".into(),
        ..v1::QueryFilter::default()
    };
    let not_forwarded = |node: u64, what: &str, metadata: &tonic::metadata::MetadataMap| {
        assert!(
            metadata.get("trail-leader").is_none(),
            "{what} through node {node} was forwarded to {:?}",
            metadata.get("trail-leader")
        );
    };
    for tenant in tenants {
        let expected: BTreeSet<&str> = acked
            .iter()
            .filter(|(_, ack)| &ack.tenant == tenant)
            .map(|(event_id, _)| event_id.as_str())
            .collect();
        let mut listed = Vec::new();
        let mut cursor = String::new();
        for page_number in 0.. {
            let node = &clients[page_number % clients.len()];
            let what = format!("eventual query of {tenant}, page {page_number}");
            let response = node
                .client
                .clone()
                .query(v1::QueryRequest {
                    tenant_id: tenant.clone(),
                    filter: Some(filter.clone()),
                    limit: 2,
                    cursor: cursor.clone(),
                    consistency: eventual,
                    ..v1::QueryRequest::default()
                })
                .await
                .unwrap_or_else(|status| panic!("{what} through node {}: {status}", node.node_id));
            not_forwarded(node.node_id, &what, response.metadata());
            let page = response.into_inner();
            listed.extend(
                page.events
                    .iter()
                    .filter_map(|stored| stored.event.as_ref())
                    .map(|event| event.event_id.clone()),
            );
            if page.next_cursor.is_empty() {
                break;
            }
            cursor = page.next_cursor;
        }
        let unique: BTreeSet<&str> = listed.iter().map(String::as_str).collect();
        assert_eq!(
            unique.len(),
            listed.len(),
            "{tenant}: paging repeated an event"
        );
        assert_eq!(
            unique, expected,
            "{tenant}: eventual pages across the nodes"
        );
        for node in clients {
            let response = node
                .client
                .clone()
                .count(v1::CountRequest {
                    tenant_id: tenant.clone(),
                    filter: Some(filter.clone()),
                    consistency: eventual,
                })
                .await
                .unwrap_or_else(|status| {
                    panic!(
                        "eventual count of {tenant} through node {}: {status}",
                        node.node_id
                    )
                });
            not_forwarded(node.node_id, "eventual count", response.metadata());
            assert_eq!(
                response.into_inner().count,
                expected.len() as u64,
                "{tenant}: eventual count through node {}",
                node.node_id
            );
        }
    }
}

// --- Producing ---

/// The events to send: a seeded workload, handed out a batch at a time up to a gate
/// the test opens step by step.
struct Feed {
    source: Mutex<(Workload, u64)>,
    total: u64,
    gate: AtomicU64,
}

enum Take {
    Batch(Vec<v1::Event>),
    Wait,
    Done,
}

impl Feed {
    fn new(seed: u64, total: u64) -> Feed {
        Feed {
            source: Mutex::new((Workload::new(seed, total), 0)),
            total,
            gate: AtomicU64::new(0),
        }
    }

    fn open_to(&self, gate: u64) {
        self.gate.store(gate.min(self.total), Ordering::SeqCst);
    }

    fn take(&self) -> Take {
        let mut source = self.source.lock().expect("feed lock");
        let (workload, handed_out) = &mut *source;
        if *handed_out >= self.total {
            return Take::Done;
        }
        let gate = self.gate.load(Ordering::SeqCst);
        let count = (BATCH_EVENTS as u64)
            .min(self.total - *handed_out)
            .min(gate.saturating_sub(*handed_out));
        if count == 0 {
            return Take::Wait;
        }
        *handed_out += count;
        let mut events = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let mut event = workload.next_event();
            event.tenant_id = fold_tenant(&event.tenant_id);
            events.push(event);
        }
        Take::Batch(events)
    }
}

/// `ten_NNNN` of the workload's 1,000 tenants onto [`TENANTS`]; `ten_0001`, the
/// workload's whale, stays the heaviest.
fn fold_tenant(tenant: &str) -> String {
    let number: u64 = tenant
        .strip_prefix("ten_")
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| panic!("workload tenant {tenant:?} is not ten_NNNN"));
    format!("ten_{:04}", (number - 1) % TENANTS + 1)
}

/// What the producers share with the test.
#[derive(Default)]
struct Run {
    acked: Mutex<AckedMap>,
    acked_count: AtomicU64,
    /// Outcomes that were retried.
    retries: Retries,
    failure: Mutex<Option<String>>,
}

impl Run {
    fn acked_count(&self) -> u64 {
        self.acked_count.load(Ordering::SeqCst)
    }

    fn fail(&self, error: String) {
        self.failure
            .lock()
            .expect("failure lock")
            .get_or_insert(error);
    }

    /// Waits until `count` events are acknowledged; fails when a producer failed or
    /// the count is not reached within `timeout`.
    async fn wait_acked(&self, count: u64, timeout: Duration) {
        let started = Instant::now();
        while self.acked_count() < count {
            if let Some(error) = self.failure.lock().expect("failure lock").clone() {
                panic!("{error}");
            }
            assert!(
                started.elapsed() < timeout,
                "only {} of the {count} events wanted were acknowledged after {timeout:?}",
                self.acked_count()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn produce(
    producer: usize,
    clients: Vec<NodeClient>,
    feed: &Feed,
    run: &Run,
) -> Result<(), String> {
    let mut next_node = producer;
    loop {
        let events = match feed.take() {
            Take::Done => return Ok(()),
            Take::Wait => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            Take::Batch(events) => events,
        };
        let receipts = record_until_acked(
            &clients,
            &mut next_node,
            &events,
            &run.retries,
            |_, _, _| {},
        )
        .await?;
        let mut acked = run.acked.lock().expect("acked lock");
        remember(&mut acked, &events, &receipts)?;
        run.acked_count.store(acked.len() as u64, Ordering::SeqCst);
    }
}

// --- Cluster state ---

/// Reads every tenant of `acked` on every node's own replica, a shard at a time while
/// the shard is still, and checks the replicas against each other and against the
/// receipts (see [`Cluster::check_replicas`]). Returns the event count of each tenant.
async fn check_replicas(cluster: &Cluster, acked: &AckedMap) -> BTreeMap<String, u64> {
    let tenants: BTreeSet<String> = acked.values().map(|a| a.tenant.clone()).collect();
    cluster
        .check_replicas(
            SHARDS,
            &tenants,
            acked,
            &HashSet::new(),
            STILL_READ_ATTEMPTS,
        )
        .await
        .per_tenant
}

/// A node (1 or 2) that leads a data shard, preferring the heavy tenant's shard.
async fn leader_to_kill(cluster: &Cluster) -> (u64, u32) {
    let heavy_shard = shard_for_tenant(HEAVY_TENANT, SHARDS);
    let mut led = Vec::new();
    for node_id in [1, 2] {
        for shard in cluster.led_by(node_id).await {
            led.push((node_id, shard));
        }
    }
    led.iter()
        .find(|(_, shard)| *shard == heavy_shard)
        .or_else(|| led.first())
        .copied()
        .expect("nodes 1 and 2 lead no data shard")
}

/// Resends acknowledged events through each node: each answers its original receipt.
async fn check_dedup(cluster: &Cluster, acked: &AckedMap) {
    let mut sample: Vec<(&String, &Acked)> = acked.iter().collect();
    sample.sort_by(|a, b| a.0.cmp(b.0));
    sample.truncate(300);
    let clients = cluster.clients(&cluster.node_ids(), RPC_TIMEOUT);
    let retries = Retries::default();
    for (node_index, chunk) in sample.chunks(100).enumerate() {
        // Each exactly as first sent: a retry (another body under the id is refused).
        let events: Vec<v1::Event> = chunk
            .iter()
            .map(|(_, expected)| expected.event.clone())
            .collect();
        let mut next_node = node_index;
        let receipts =
            record_until_acked(&clients, &mut next_node, &events, &retries, |_, _, _| {})
                .await
                .unwrap_or_else(|error| panic!("resending acknowledged events: {error}"));
        for ((event_id, expected), receipt) in chunk.iter().zip(receipts) {
            assert!(
                receipt.deduplicated,
                "resent {event_id} was recorded again: {receipt:?}"
            );
            assert_eq!(
                (receipt.seq, &receipt.leaf_hash),
                (expected.seq, &expected.leaf_hash),
                "resent {event_id}"
            );
        }
    }
}

/// Reads every tenant through `client` (forwarded to the leader, behind its read
/// barrier), retrying UNAVAILABLE for a while; returns the problems found.
async fn read_back(mut client: GrpcClient, tenants: &[String], acked: &AckedMap) -> Vec<String> {
    let mut problems = Vec::new();
    for tenant in tenants {
        let started = Instant::now();
        let page = loop {
            let request = v1::TailRequest {
                tenant_id: tenant.clone(),
                after_seq: 0,
                limit: TAIL_PAGE_EVENTS,
                stream: String::new(),
                ..v1::TailRequest::default()
            };
            match client.tail(request).await {
                Ok(page) => break page.into_inner(),
                Err(status)
                    if status.code() == tonic::Code::Unavailable
                        && started.elapsed() < BATCH_RETRY_TIMEOUT =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(status) => panic!("Tail of {tenant}: {status}"),
            }
        };
        let mut stored = HashMap::new();
        for (position, event) in page.events.iter().enumerate() {
            let event_id = event
                .event
                .as_ref()
                .map(|event| event.event_id.clone())
                .unwrap_or_default();
            if event.seq != position as u64 + 1 {
                problems.push(format!("{tenant}: seq {} at {}", event.seq, position + 1));
            }
            if stored.insert(event_id.clone(), event.seq).is_some() {
                problems.push(format!("{tenant}: {event_id} stored twice"));
            }
        }
        for (event_id, expected) in acked.iter().filter(|(_, a)| a.tenant == *tenant) {
            match stored.get(event_id) {
                Some(&seq) if seq == expected.seq => {}
                other => problems.push(format!(
                    "{tenant}: acknowledged {event_id} at seq {}, read {other:?}",
                    expected.seq
                )),
            }
        }
    }
    problems
}

// --- Helpers ---

/// Runs `trailctl --endpoint <node> verify --tenant T... --key K`, asserts it passes,
/// and returns what it printed.
async fn trailctl_verify(node: &Traild, key: &str, tenants: &[String]) -> String {
    let mut args = vec!["verify", "--quiet", "--key", key];
    for tenant in tenants {
        args.extend(["--tenant", tenant.as_str()]);
    }
    run_checked(node.trailctl(&args), VERIFY_TIMEOUT).await
}

/// Runs `call` and measures how long it took to answer.
async fn timed<F, T>(call: F) -> (Duration, T)
where
    F: std::future::Future<Output = T>,
{
    let started = Instant::now();
    let result = call.await;
    (started.elapsed(), result)
}

/// `prefix_N` tenants, the first found for each data shard, in shard order.
/// Any node answers REST reads of any tenant: records 3 events for one tenant per
/// shard, then reads each tenant's list, count and one event through every node. The
/// nodes that do not lead the shard forward the request (`trail-leader` in the answer
/// names the leader's REST base). The tenants here are not the test's others: their
/// reads are audited (`audit_log.read` events of their own).
async fn check_rest_through_every_node(
    cluster: &Cluster,
    clients: &[NodeClient],
    retries: &Retries,
) {
    let tenants = tenants_per_shard("rest", SHARDS, 1);
    let events: Vec<v1::Event> = tenants
        .iter()
        .flat_map(|tenant| events_of(tenant, "r", 3))
        .collect();
    let receipts = record_until_acked(clients, &mut 0, &events, retries, |_, _, _| {})
        .await
        .unwrap_or_else(|error| panic!("REST check events: {error}"));
    let mut acked = AckedMap::new();
    remember(&mut acked, &events, &receipts).expect("REST check receipts");
    let bases: Vec<String> = cluster
        .nodes
        .iter()
        .map(|node| format!("http://{}:{}", node.host, node.http_port))
        .collect();
    let mut forwarded = 0;
    for node in &cluster.nodes {
        for tenant in &tenants {
            let expected: BTreeSet<&str> = acked
                .iter()
                .filter(|(_, ack)| &ack.tenant == tenant)
                .map(|(event_id, _)| event_id.as_str())
                .collect();
            let (host, port) = (node.host.clone(), node.http_port);
            let paths = [
                format!("/api/v1/tenants/{tenant}/audit-logs?limit=1000"),
                format!("/api/v1/tenants/{tenant}/audit-logs/count"),
                format!(
                    "/api/v1/tenants/{tenant}/audit-logs/{}",
                    expected.first().expect("events")
                ),
            ];
            let responses = tokio::task::spawn_blocking(move || {
                paths
                    .iter()
                    .map(|path| (path.clone(), trail_tests::http_get(&host, port, path)))
                    .collect::<Vec<_>>()
            })
            .await
            .expect("HTTP task");
            for (path, response) in &responses {
                assert_eq!(
                    response.status, 200,
                    "GET {path} through {}:{port}: {}",
                    node.host, response.body
                );
                if let Some(leader) = response.header("trail-leader") {
                    assert!(
                        bases.iter().any(|base| base == leader),
                        "GET {path}: trail-leader {leader:?} is no node's REST base {bases:?}"
                    );
                    forwarded += 1;
                }
            }
            let page: serde_json::Value =
                serde_json::from_str(&responses[0].1.body).expect("JSON page");
            let mut listed = BTreeSet::new();
            for event in page["events"].as_array().expect("events") {
                let event_id = event["event_id"].as_str().expect("event_id");
                if event["action"] != "audit_log.read" {
                    listed.insert(event_id.to_string());
                }
            }
            let expected: BTreeSet<String> = expected.iter().map(|id| id.to_string()).collect();
            assert_eq!(listed, expected, "{tenant} listed through node port {port}");
            let count: serde_json::Value =
                serde_json::from_str(&responses[1].1.body).expect("JSON count");
            assert!(
                count["count"].as_u64().expect("count") >= 3,
                "{tenant}: count through port {port}: {count}"
            );
            let event: serde_json::Value =
                serde_json::from_str(&responses[2].1.body).expect("JSON event");
            assert_eq!(event["tenant_id"], tenant.as_str());
        }
    }
    // Each tenant has one leader; the two other nodes forward its three reads.
    assert!(
        forwarded >= tenants.len() * 3,
        "only {forwarded} of {} REST reads were forwarded",
        tenants.len() * 3 * cluster.nodes.len()
    );
}

/// The `count` tenants with the most events.
fn heaviest(per_tenant: &BTreeMap<String, u64>, count: usize) -> Vec<(String, u64)> {
    let mut sorted: Vec<(String, u64)> = per_tenant
        .iter()
        .map(|(tenant, events)| (tenant.clone(), *events))
        .collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    sorted.truncate(count);
    sorted
}

/// How long a step of the ingest may take: 20% of the events at 500 events/s at
/// least (a debug build on 2 cores does about that).
fn step_timeout(total: u64) -> Duration {
    STEP_TIMEOUT_MIN.max(Duration::from_secs(total / 5 / 500))
}

/// How long replicas may take to catch up: a minute, more for large runs (a restarted
/// node may have to catch up on a few hundred thousand events).
fn converge_timeout(total: u64) -> Duration {
    Duration::from_secs(60.max(total / 5_000))
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Err(_) => default,
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a whole number")),
    }
}

/// How many snapshots `node` installed, from its log.
fn snapshot_installs(node: &Traild) -> usize {
    let log = node.data_dir.join("traild.log");
    std::fs::read_to_string(&log)
        .unwrap_or_else(|error| panic!("{}: {error}", log.display()))
        .matches("installed a snapshot")
        .count()
}
